//! Shapes of the documents API's responses that the handlers build as JSON
//! values (`Collection::view`, the bulk results), described for the
//! OpenAPI document. Request bodies and [`crate::documents::store::Document`]
//! derive their schemas where they are defined; these cannot, so
//! `tests::views_match_what_the_code_builds` checks them against real output.

use serde::Serialize;
use utoipa::ToSchema;

/// A collection.
#[derive(Serialize, ToSchema)]
#[schema(as = Collection)]
pub struct CollectionView {
    #[schema(format = "uuid")]
    pub id: String,
    /// 1 to 128 of `A-Z a-z 0-9 _ -`.
    #[schema(example = "articles")]
    pub name: String,
    /// The JSON Schema (draft 2020-12) every document must satisfy, if any.
    pub schema: Option<serde_json::Value>,
    pub vector: Option<VectorConfigView>,
    /// Fields with expression indexes for filters and sorts.
    pub indexed_fields: Vec<IndexedFieldView>,
    /// Writes to documents must send `If-Match` (428 otherwise).
    pub require_if_match: bool,
    /// Also the collection's `ETag`.
    pub version: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A collection's vector configuration (fixed at creation).
#[derive(Serialize, ToSchema)]
#[schema(as = VectorConfig)]
pub struct VectorConfigView {
    /// 1 to 16000; collections above 2000 are always searched exactly.
    #[schema(minimum = 1, maximum = 16000, example = 3)]
    pub dimension: i32,
    /// And so the search score: cosine similarity (higher is nearer),
    /// Euclidean distance (lower is nearer), inner product (higher is nearer).
    pub metric: crate::vectors::model::Metric,
    pub hnsw: HnswView,
}

/// HNSW build parameters of the collection's vector index; null: pgvector's
/// defaults (m 16, ef_construction 64).
#[derive(Serialize, ToSchema)]
#[schema(as = Hnsw)]
pub struct HnswView {
    #[schema(minimum = 2, maximum = 100)]
    pub m: Option<i32>,
    #[schema(minimum = 4, maximum = 1000)]
    pub ef_construction: Option<i32>,
}

/// An indexed field: a dotted path into the documents' `data` and the type
/// its values are indexed as (values of another type are not indexed).
#[derive(Serialize, ToSchema)]
#[schema(as = IndexedField)]
pub struct IndexedFieldView {
    #[schema(example = "year")]
    pub path: String,
    #[serde(rename = "type")]
    pub field_type: FieldTypeView,
}

/// `timestamp`: RFC 3339 strings, compared as text (use UTC, `Z`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = FieldType)]
pub enum FieldTypeView {
    String,
    Number,
    Boolean,
    Timestamp,
}

/// The outcome of a bulk request: one result per operation, in order. The
/// request is one transaction: either every operation applied or none
/// (then the answer is the first failure's problem, its pointer under
/// `/operations/<i>`).
#[derive(Serialize, ToSchema)]
#[schema(as = BulkResults)]
pub struct BulkResultsView {
    pub results: Vec<BulkResultView>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = BulkResult)]
pub struct BulkResultView {
    #[schema(example = "create")]
    pub op: BulkOpView,
    pub id: String,
    /// The document's new version (not for deletes).
    pub version: Option<i64>,
    /// What the single request would have answered: 201 created, 200
    /// replaced, 204 deleted.
    #[schema(example = 201)]
    pub status: u16,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = BulkOp)]
pub enum BulkOpView {
    Create,
    Upsert,
    Delete,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;
    use utoipa::openapi::{RefOr, Schema};

    use super::*;
    use crate::documents::store::Collection;

    fn property_names(schema: RefOr<Schema>) -> BTreeSet<String> {
        match schema {
            RefOr::T(Schema::Object(object)) => object.properties.keys().cloned().collect(),
            _ => panic!("not an object schema"),
        }
    }

    /// The documented collection has exactly the keys `Collection::view`
    /// writes, so a field added there without its documentation fails here.
    #[test]
    fn views_match_what_the_code_builds() {
        let collection = Collection {
            id: uuid::Uuid::nil(),
            name: "articles".into(),
            json_schema: None,
            vector_dimension: Some(3),
            vector_metric: Some("cosine".into()),
            hnsw_m: None,
            hnsw_ef_construction: None,
            version: 1,
            require_if_match: false,
            indexed_fields: serde_json::json!([{"path": "year", "type": "number"}]),
            created_us: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let view = collection.view();
        let built: BTreeSet<String> = view.as_object().expect("object").keys().cloned().collect();
        assert_eq!(built, property_names(CollectionView::schema()));
        let vector: BTreeSet<String> = view["vector"]
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(vector, property_names(VectorConfigView::schema()));
        let hnsw: BTreeSet<String> = view["vector"]["hnsw"]
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(hnsw, property_names(HnswView::schema()));
    }
}
