//! What the vector API accepts and answers, its limits, and the validation
//! of request bodies into trusted values. Nothing here touches the database.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::http::FieldError;

/// Most vectors in one upsert: bounds the statement's size and the time a
/// batch holds its row locks.
pub const MAX_BATCH: usize = 1000;
/// Longest vector id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest metadata object of one vector, serialised.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest metadata filter, serialised.
pub const MAX_FILTER_BYTES: usize = 4 * 1024;
/// Most ids in one delete-by-ids request.
pub const MAX_DELETE_IDS: usize = 1000;
/// Largest `k` of a search.
pub const MAX_K: u32 = 1000;
/// Default `k` when the request has none.
pub const DEFAULT_K: u32 = 10;
/// `ef_search` bounds (pgvector accepts 1..=1000).
pub const MAX_EF_SEARCH: u32 = 1000;
/// Default `ef_search` (pgvector's own is 40): on 100,000 clustered
/// vectors of 128 dimensions recall@10 was 0.956 at 40 and 0.975 at 64
/// (`bench/`), for little more time. Raised to `k` when `k` is larger,
/// since an HNSW scan returns at most `ef_search` rows per pass.
pub const DEFAULT_EF_SEARCH: u32 = 64;
/// Most collections in one cross-collection search (each is a query of its
/// own, run concurrently).
pub const MAX_CROSS_COLLECTIONS: usize = 16;
/// Candidates per collection in a cross-collection search: `k` times this,
/// capped at [`MAX_CANDIDATES`]. Oversampling makes up for each
/// collection's ANN misses before the global merge.
pub const CROSS_OVERSAMPLE: u32 = 4;
pub const MAX_CANDIDATES: u32 = 1000;
/// Most field errors listed in one 422 (a batch of 1000 bad vectors would
/// otherwise produce a huge problem document).
pub const MAX_FIELD_ERRORS: usize = 50;
/// pgvector's HNSW indexes `vector` columns of at most 2,000 dimensions;
/// larger collections are always searched exactly.
pub const MAX_INDEXED_DIMENSION: u32 = 2000;

/// A collection's distance metric, as stored in `collections.vector_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Cosine,
    L2,
    InnerProduct,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cosine" => Some(Self::Cosine),
            "l2" => Some(Self::L2),
            "inner_product" => Some(Self::InnerProduct),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::L2 => "l2",
            Self::InnerProduct => "inner_product",
        }
    }

    /// pgvector's distance operator: smaller is nearer for all three.
    pub fn operator(self) -> &'static str {
        match self {
            Self::Cosine => "<=>",
            Self::L2 => "<->",
            Self::InnerProduct => "<#>",
        }
    }

    /// The HNSW operator class matching [`Self::operator`].
    pub fn opclass(self) -> &'static str {
        match self {
            Self::Cosine => "vector_cosine_ops",
            Self::L2 => "vector_l2_ops",
            Self::InnerProduct => "vector_ip_ops",
        }
    }

    /// The score clients see, from pgvector's distance:
    /// - cosine: cosine similarity `1 - distance`, in [-1, 1], higher is nearer;
    /// - l2: the Euclidean distance itself, lower is nearer;
    /// - inner_product: the inner product `-(<#>)`, higher is nearer.
    pub fn score(self, distance: f64) -> f64 {
        match self {
            Self::Cosine => 1.0 - distance,
            Self::L2 => distance,
            Self::InnerProduct => -distance,
        }
    }

    /// What [`Self::score`] is, for the response.
    pub fn score_kind(self) -> &'static str {
        match self {
            Self::Cosine => "cosine_similarity",
            Self::L2 => "l2_distance",
            Self::InnerProduct => "inner_product",
        }
    }

    /// Whether a higher score is nearer.
    pub fn higher_is_nearer(self) -> bool {
        !matches!(self, Self::L2)
    }
}

/// `collections.vector_index`: where the collection's HNSW index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    None,
    Building,
    Ready,
    Failed,
}

impl IndexState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "building" => Some(Self::Building),
            "ready" => Some(Self::Ready),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A collection's vector configuration, read from the database. Every
/// field is server-derived (the id is server-generated and typed as a
/// UUID), which is what allows [`Self::id_literal`] and the dimension to
/// be written into SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorCollection {
    pub id: Uuid,
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub hnsw_m: Option<i32>,
    pub hnsw_ef_construction: Option<i32>,
    pub index: IndexState,
}

impl VectorCollection {
    /// `'<uuid>'`: the collection id as an SQL literal. Search SQL carries
    /// it inline rather than as `$n`: a generic plan (sqlx prepares and
    /// caches statements, and PostgreSQL switches to a generic plan after
    /// five executions) cannot prove `collection_id = $n` implies a partial
    /// index's `collection_id = '<uuid>'`, and would never use the index.
    /// Safe: a `Uuid` renders only as hex digits and dashes.
    pub fn id_literal(&self) -> String {
        format!("'{}'", self.id.hyphenated())
    }

    /// The indexed expression: the untyped column cast to this
    /// collection's dimension. Queries must spell it exactly like this for
    /// the planner to match the expression index.
    pub fn expression(&self) -> String {
        format!("(embedding::vector({}))", self.dimension)
    }

    /// Name of the collection's HNSW index (63-byte identifier limit: 16 +
    /// 32 hex digits).
    pub fn index_name(&self) -> String {
        index_name(self.id)
    }

    pub fn indexable(&self) -> bool {
        self.dimension <= MAX_INDEXED_DIMENSION
    }
}

pub fn index_name(collection: Uuid) -> String {
    format!("embeddings_hnsw_{}", collection.simple())
}

/// Collection names, as the collections table constrains them. Checked
/// before any query so hostile names are a 400, never a database error.
pub fn is_collection_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Vector ids: 1..=256 bytes without control characters (they appear in
/// paths, logs and JSON).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err("an id has 1 to 256 bytes");
    }
    if id.chars().any(char::is_control) {
        return Err("an id has no control characters");
    }
    Ok(())
}

// ---------------------------------------------------------------- requests

/// `PUT|POST …/collections/{c}/vectors`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub vectors: Vec<UpsertItem>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertItem {
    /// 1 to 256 bytes, no control characters; an existing id is replaced.
    #[schema(example = "pg-tips#0")]
    pub id: String,
    /// Kept as JSON values so each bad component is reported with its
    /// pointer (and non-finite placeholders are recognised, see
    /// [`super::nonfinite`]).
    #[schema(value_type = Vec<f64>, example = json!([0.9, 0.1, 0.0]))]
    pub vector: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub document_id: Option<String>,
}

/// An upsert item that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidItem {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Value,
    pub document_id: Option<String>,
}

/// `POST …/collections/{c}/vectors/delete`: exactly one of the two.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub ids: Option<Vec<String>>,
    /// Deletes the vectors whose metadata contains this object
    /// (`metadata @> filter`); `{}` is refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
}

/// What a search may add to each hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Include {
    Metadata,
    Document,
    Vector,
}

/// `POST …/collections/{c}/search`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query vector: the collection's dimension, finite components.
    #[schema(value_type = Vec<f64>, example = json!([1.0, 0.3, 0.0]))]
    pub vector: Vec<Value>,
    /// How many hits (1 to 1000, default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: Option<u32>,
    /// Only vectors whose metadata contains this object (`metadata @> filter`).
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"kind": "howto"}))]
    pub filter: Option<Value>,
    /// HNSW search breadth (1 to 1000; default 64, at least `k`). Higher:
    /// better recall, slower.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub ef_search: Option<u32>,
    /// What to add to each hit.
    #[serde(default)]
    pub include: Vec<Include>,
}

/// `POST /v1/tenants/{t}/search`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossSearchRequest {
    /// 1 to 16 collections of the same dimension and metric.
    #[schema(min_items = 1, max_items = 16)]
    pub collections: Vec<String>,
    #[schema(value_type = Vec<f64>)]
    pub vector: Vec<Value>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: Option<u32>,
    /// Only vectors whose metadata contains this object (`metadata @> filter`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub ef_search: Option<u32>,
    #[serde(default)]
    pub include: Vec<Include>,
}

impl CrossSearchRequest {
    /// The collections, and the search to run in each.
    pub fn into_parts(self) -> (Vec<String>, SearchRequest) {
        (
            self.collections,
            SearchRequest {
                vector: self.vector,
                k: self.k,
                filter: self.filter,
                ef_search: self.ef_search,
                include: self.include,
            },
        )
    }
}

/// A validated search, for one or several collections.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    pub vector: Vec<f32>,
    pub k: u32,
    pub filter: Option<Value>,
    pub ef_search: u32,
    pub include_metadata: bool,
    pub include_document: bool,
    pub include_vector: bool,
}

// --------------------------------------------------------------- responses

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpsertResponse {
    pub upserted: usize,
    pub items: Vec<UpsertedItem>,
}

#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UpsertedItem {
    pub id: String,
    pub version: i64,
}

#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Vector)]
pub struct StoredVector {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Value,
    pub document_id: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeleteResponse {
    pub deleted: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Hit {
    /// Set in cross-collection results only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    pub id: String,
    /// See [`Metric::score`].
    pub score: f64,
    #[serde(skip)]
    pub distance: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    /// The linked document's data (`null` when the vector links none, or
    /// the document does not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub metric: Metric,
    /// `cosine_similarity`, `l2_distance` or `inner_product`.
    #[schema(value_type = String, example = "cosine_similarity")]
    pub score: &'static str,
    /// `descending` (higher score is nearer) or `ascending` (l2).
    #[schema(value_type = String, example = "descending")]
    pub order: &'static str,
    pub items: Vec<Hit>,
}

impl SearchResponse {
    pub fn new(metric: Metric, items: Vec<Hit>) -> Self {
        Self {
            metric,
            score: metric.score_kind(),
            order: if metric.higher_is_nearer() {
                "descending"
            } else {
                "ascending"
            },
            items,
        }
    }
}

// -------------------------------------------------------------- validation

/// Collects field errors up to [`MAX_FIELD_ERRORS`].
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < MAX_FIELD_ERRORS {
            self.0.push(FieldError::new(pointer, message));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Checks one vector against the collection: its length, every component
/// a finite 32-bit float, and (cosine) a non-zero norm, since the cosine
/// distance of a zero vector is undefined (pgvector returns NaN).
pub fn check_vector(
    values: &[Value],
    dimension: u32,
    metric: Metric,
    pointer: &str,
    errors: &mut Errors,
) -> Option<Vec<f32>> {
    if values.len() != dimension as usize {
        errors.push(
            pointer,
            format!(
                "the collection's vectors have {dimension} dimensions, this one has {}",
                values.len()
            ),
        );
        return None;
    }
    let before = errors.0.len();
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let component = match value {
            Value::Number(n) => n.as_f64().map(|f| f as f32),
            _ => None,
        };
        match component {
            Some(f) if f.is_finite() => out.push(f),
            Some(_) => errors.push(
                format!("{pointer}/{i}"),
                "out of range for a 32-bit float (components must be finite)",
            ),
            None if super::nonfinite::is_placeholder(value) => errors.push(
                format!("{pointer}/{i}"),
                "NaN and Infinity are not allowed (components must be finite)",
            ),
            None => errors.push(format!("{pointer}/{i}"), "must be a number"),
        }
    }
    if errors.0.len() != before {
        return None;
    }
    if metric == Metric::Cosine && out.iter().all(|f| *f == 0.0) {
        errors.push(pointer, "a cosine collection cannot hold a zero vector");
        return None;
    }
    Some(out)
}

/// A metadata filter: a non-empty-or-empty JSON object matched by
/// containment (`metadata @> filter`), within [`MAX_FILTER_BYTES`].
pub fn check_filter(filter: &Value, pointer: &str, errors: &mut Errors) -> bool {
    if !filter.is_object() {
        errors.push(
            pointer,
            "a filter is a JSON object matched by containment (metadata @> filter)",
        );
        return false;
    }
    if filter.to_string().len() > MAX_FILTER_BYTES {
        errors.push(
            pointer,
            format!("a filter has at most {MAX_FILTER_BYTES} bytes"),
        );
        return false;
    }
    true
}

/// Validates an upsert batch against the collection. Every error is
/// listed (up to [`MAX_FIELD_ERRORS`]) with its JSON pointer.
pub fn validate_upsert(
    request: UpsertRequest,
    collection: &VectorCollection,
) -> Result<Vec<ValidItem>, Vec<FieldError>> {
    let mut errors = Errors::default();
    if request.vectors.is_empty() {
        errors.push("/vectors", "send at least one vector");
    }
    if request.vectors.len() > MAX_BATCH {
        errors.push(
            "/vectors",
            format!("at most {MAX_BATCH} vectors per request"),
        );
        return Err(errors.0);
    }
    let mut seen = std::collections::HashSet::with_capacity(request.vectors.len());
    let mut items = Vec::with_capacity(request.vectors.len());
    for (i, item) in request.vectors.into_iter().enumerate() {
        let base = format!("/vectors/{i}");
        if let Err(message) = check_id(&item.id) {
            errors.push(format!("{base}/id"), message);
        } else if !seen.insert(item.id.clone()) {
            // One statement cannot write the same row twice.
            errors.push(format!("{base}/id"), "the id appears twice in the batch");
        }
        if let Some(document_id) = &item.document_id
            && let Err(message) = check_id(document_id)
        {
            errors.push(format!("{base}/document_id"), message);
        }
        let metadata = match item.metadata {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(value @ Value::Object(_)) => {
                if value.to_string().len() > MAX_METADATA_BYTES {
                    errors.push(
                        format!("{base}/metadata"),
                        format!("metadata has at most {MAX_METADATA_BYTES} bytes"),
                    );
                }
                value
            }
            Some(_) => {
                errors.push(format!("{base}/metadata"), "metadata is a JSON object");
                Value::Null
            }
        };
        let vector = check_vector(
            &item.vector,
            collection.dimension,
            collection.metric,
            &format!("{base}/vector"),
            &mut errors,
        );
        if let Some(vector) = vector {
            items.push(ValidItem {
                id: item.id,
                vector,
                metadata,
                document_id: item.document_id,
            });
        }
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors.0)
    }
}

/// Validates the parts of a search request shared by both search forms.
pub fn validate_search(
    request: SearchRequest,
    dimension: u32,
    metric: Metric,
    errors: &mut Errors,
) -> Option<SearchParams> {
    let SearchRequest {
        vector,
        k,
        filter,
        ef_search,
        include,
    } = request;
    let k = k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        errors.push("/k", format!("k is between 1 and {MAX_K}"));
    }
    if let Some(ef) = ef_search
        && !(1..=MAX_EF_SEARCH).contains(&ef)
    {
        errors.push(
            "/ef_search",
            format!("ef_search is between 1 and {MAX_EF_SEARCH}"),
        );
    }
    if let Some(filter) = &filter {
        check_filter(filter, "/filter", errors);
    }
    let vector = check_vector(&vector, dimension, metric, "/vector", errors);
    if !errors.is_empty() {
        return None;
    }
    Some(SearchParams {
        vector: vector?,
        k,
        // `{}` matches everything: no filter at all (and no containment
        // test per row).
        filter: filter.filter(|f| f.as_object().is_some_and(|o| !o.is_empty())),
        // Below k the scan could not return k rows; iterative scans lift
        // that limit for filtered searches, but keep the first pass useful.
        ef_search: ef_search
            .unwrap_or(DEFAULT_EF_SEARCH)
            .max(k)
            .min(MAX_EF_SEARCH),
        include_metadata: include.contains(&Include::Metadata),
        include_document: include.contains(&Include::Document),
        include_vector: include.contains(&Include::Vector),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn collection(dimension: u32, metric: Metric) -> VectorCollection {
        VectorCollection {
            id: Uuid::nil(),
            name: "c".into(),
            dimension,
            metric,
            hnsw_m: None,
            hnsw_ef_construction: None,
            index: IndexState::None,
        }
    }

    fn upsert(body: Value, c: &VectorCollection) -> Result<Vec<ValidItem>, Vec<FieldError>> {
        validate_upsert(serde_json::from_value(body).expect("shape"), c)
    }

    #[test]
    fn valid_batches_pass() {
        let items = upsert(
            json!({"vectors": [{"id": "a", "vector": [1, 2.5, -3e-3], "metadata": {"x": 1}, "document_id": "d"}]}),
            &collection(3, Metric::L2),
        )
        .expect("valid");
        assert_eq!(items[0].vector, vec![1.0, 2.5, -0.003]);
        assert_eq!(items[0].metadata, json!({"x": 1}));
    }

    #[test]
    fn every_error_has_its_pointer() {
        let errors = upsert(
            json!({"vectors": [
                {"id": "a", "vector": [1, 2]},
                {"id": "a", "vector": [1, 1e39, "x"]},
                {"id": "", "vector": [0, 0, 0], "metadata": [1]},
            ]}),
            &collection(3, Metric::Cosine),
        )
        .expect_err("invalid");
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/vectors/0/vector",
                "/vectors/1/id",
                "/vectors/1/vector/1",
                "/vectors/1/vector/2",
                "/vectors/2/id",
                "/vectors/2/metadata",
                "/vectors/2/vector",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn batches_are_bounded() {
        let vectors: Vec<Value> = (0..=MAX_BATCH)
            .map(|i| json!({"id": i.to_string(), "vector": [1]}))
            .collect();
        let errors = upsert(json!({ "vectors": vectors }), &collection(1, Metric::L2))
            .expect_err("too many");
        assert_eq!(errors[0].pointer, "/vectors");
        let errors = upsert(json!({"vectors": []}), &collection(1, Metric::L2)).expect_err("none");
        assert_eq!(errors[0].pointer, "/vectors");
    }

    #[test]
    fn search_bounds() {
        let mut errors = Errors::default();
        let request = SearchRequest {
            vector: vec![json!(1), json!(0)],
            k: Some(5),
            filter: Some(json!({})),
            ef_search: None,
            include: vec![Include::Metadata],
        };
        let params = validate_search(request, 2, Metric::InnerProduct, &mut errors).expect("valid");
        assert_eq!(params.ef_search, DEFAULT_EF_SEARCH);
        assert_eq!(params.filter, None, "{{}} is no filter");
        assert!(params.include_metadata && !params.include_document);

        let mut errors = Errors::default();
        assert!(
            validate_search(
                SearchRequest {
                    vector: vec![json!(1)],
                    k: Some(0),
                    filter: Some(json!([1])),
                    ef_search: Some(5000),
                    include: vec![],
                },
                2,
                Metric::L2,
                &mut errors,
            )
            .is_none()
        );
        let pointers: Vec<&str> = errors.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/k", "/ef_search", "/filter", "/vector"]);
    }

    #[test]
    fn scores_are_natural() {
        assert!((Metric::Cosine.score(0.25) - 0.75).abs() < 1e-12);
        assert_eq!(Metric::L2.score(2.0), 2.0);
        assert_eq!(Metric::InnerProduct.score(-3.0), 3.0);
    }

    #[test]
    fn sql_fragments_come_from_typed_values() {
        let c = collection(128, Metric::Cosine);
        assert_eq!(c.id_literal(), "'00000000-0000-0000-0000-000000000000'");
        assert_eq!(c.expression(), "(embedding::vector(128))");
        assert!(c.index_name().len() <= 63);
        assert!(is_collection_name("docs_2-b"));
        for bad in ["", "a b", "x'; DROP TABLE t; --", &"a".repeat(129)] {
            assert!(!is_collection_name(bad), "{bad}");
        }
    }
}
