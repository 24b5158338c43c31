//! Collections: `POST collections`, `GET collections`, `GET|PATCH|DELETE
//! collections/{name}`. ETag per collection version; `If-Match` on PATCH
//! and DELETE. Indexed fields get their expression indexes after the row
//! is committed, built `CONCURRENTLY` as the owner ([`super::indexes`]).
//!
//! A collection's vector configuration (dimension, metric, HNSW
//! parameters) is fixed when it is created: its vectors, its HNSW index
//! (built on `vector(<dimension>)` with the metric's operator class) and
//! writes in flight were all checked against it. A `PATCH` that names
//! `vector` is 422 with the pointer `/vector`, whether or not the
//! collection holds vectors yet (a check that races concurrent upserts
//! would let a vector of the old dimension in); make a new collection.

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use uuid::Uuid;

use super::indexes::{self, fields_json, parse_fields};
use super::names::{collection_name, is_collection_name};
use super::schema;
use super::store::{self, Collection, NewCollection};
use crate::http::pagination::{
    CursorCodec, Page, PageLimits, PageParams, Position, QueryFingerprint,
};
use crate::http::preconditions::{self, Requirement};
use crate::http::problem::{ApiError, FieldError};

pub const LIMITS: PageLimits = PageLimits {
    default: 50,
    max: 500,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HnswRequest)]
pub struct Hnsw {
    pub m: Option<i32>,
    pub ef_construction: Option<i32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VectorConfigRequest)]
pub struct VectorConfig {
    #[schema(minimum = 1, maximum = 16000, example = 3)]
    pub dimension: i32,
    #[schema(value_type = crate::vectors::model::Metric)]
    pub metric: String,
    pub hnsw: Option<Hnsw>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateCollection)]
pub struct CreateBody {
    /// 1 to 128 of `A-Z a-z 0-9 _ -`, unique in the tenant.
    #[schema(example = "articles")]
    pub name: String,
    /// A JSON Schema (draft 2020-12, no remote `$ref`) every document must satisfy.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Set once: vectors of this collection have this dimension and metric.
    pub vector: Option<VectorConfig>,
    /// Up to 16 fields to index for filters and sorts.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::openapi::documents::IndexedFieldView>>)]
    pub indexed_fields: Option<Value>,
    /// Writes to documents must send `If-Match` (428 otherwise).
    #[serde(default)]
    pub require_if_match: bool,
}

/// `PATCH collections/{name}`: fields absent stay; `schema: null` removes.
/// The vector configuration cannot change (`vector` is 422).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateCollection)]
pub struct UpdateBody {
    // Read only to be refused with a pointer and a reason (not an
    // "unknown field"); not part of the schema.
    #[serde(default)]
    #[schema(ignore)]
    pub vector: Option<Value>,
    /// A new JSON Schema (existing documents are not re-checked); `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
    /// The new list of indexed fields (indexes are built and dropped to match).
    #[schema(value_type = Option<Vec<crate::openapi::documents::IndexedFieldView>>)]
    pub indexed_fields: Option<Value>,
    pub require_if_match: Option<bool>,
}

fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(d).map(Some)
}

/// When a collection's own settings last changed (its documents do not
/// count: they have their own validators).
fn modified(c: &Collection) -> Option<std::time::SystemTime> {
    preconditions::parse_rfc3339_utc(&c.updated_at)
}

pub fn collection_response(status: StatusCode, c: &Collection) -> Response {
    let mut response = (status, axum::Json(c.view())).into_response();
    preconditions::set_validators(response.headers_mut(), &c.etag(), modified(c));
    response
}

fn check_vector(v: &VectorConfig) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if !(1..=16000).contains(&v.dimension) {
        errors.push(FieldError::new("/vector/dimension", "1 to 16000"));
    }
    if !matches!(v.metric.as_str(), "cosine" | "l2" | "inner_product") {
        errors.push(FieldError::new(
            "/vector/metric",
            "cosine, l2 or inner_product",
        ));
    }
    if let Some(h) = &v.hnsw {
        if h.m.is_some_and(|m| !(2..=100).contains(&m)) {
            errors.push(FieldError::new("/vector/hnsw/m", "2 to 100"));
        }
        if h.ef_construction.is_some_and(|e| !(4..=1000).contains(&e)) {
            errors.push(FieldError::new("/vector/hnsw/ef_construction", "4 to 1000"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Creates the row (committed) and returns it; the caller then builds the
/// indexes with [`build_indexes`] on an owner connection.
pub async fn create<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    body: CreateBody,
) -> Result<Collection, ApiError> {
    if !is_collection_name(&body.name) {
        return Err(ApiError::validation(vec![FieldError::new(
            "/name",
            "1 to 128 of A-Z a-z 0-9 _ -",
        )]));
    }
    if let Some(s) = &body.schema {
        schema::compile(s, "/schema")?;
    }
    if let Some(v) = &body.vector {
        check_vector(v)?;
    }
    let fields = match &body.indexed_fields {
        Some(value) => parse_fields(value, "/indexed_fields")?,
        None => Vec::new(),
    };
    let mut tx = db.begin().await?;
    let hnsw = body.vector.as_ref().and_then(|v| v.hnsw.as_ref());
    let row = store::insert_collection(
        &mut tx,
        &NewCollection {
            name: &body.name,
            schema: body.schema.as_ref(),
            dimension: body.vector.as_ref().map(|v| v.dimension),
            metric: body.vector.as_ref().map(|v| v.metric.as_str()),
            hnsw_m: hnsw.and_then(|h| h.m),
            hnsw_ef_construction: hnsw.and_then(|h| h.ef_construction),
            require_if_match: body.require_if_match,
            indexed_fields: fields_json(&fields),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Brings the collection's expression indexes in line with its fields.
pub async fn build_indexes(
    owner: &mut PgConnection,
    collection: &Collection,
) -> Result<(), ApiError> {
    indexes::sync(owner, collection.id, &collection.fields()?).await
}

pub async fn get(
    pool: &PgPool,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let c = store::get_collection(pool, collection_name(name)?).await?;
    read_response(method, headers, &c)
}

/// `GET …/collections/{name}` of a tenant route: the row from the cache
/// ([`store::cached_collection`]).
pub async fn get_cached(
    ctx: &crate::tenancy::TenantContext,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let c = store::cached_collection(ctx, collection_name(name)?).await?;
    read_response(method, headers, &c)
}

fn read_response(
    method: &Method,
    headers: &HeaderMap,
    c: &Collection,
) -> Result<Response, ApiError> {
    let tag = c.etag();
    preconditions::check(
        method,
        headers,
        Some((&tag, modified(c))),
        Requirement::Optional,
    )?;
    Ok(collection_response(StatusCode::OK, c))
}

pub async fn update<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    name: &str,
    headers: &HeaderMap,
    body: UpdateBody,
) -> Result<Collection, ApiError> {
    let name = collection_name(name)?;
    let mut tx = db.begin().await?;
    let c = store::lock_collection(&mut tx, name)
        .await?
        .ok_or(ApiError::NotFound)?;
    let tag = c.etag();
    let requirement = if c.require_if_match {
        Requirement::Required
    } else {
        Requirement::Optional
    };
    preconditions::check(
        &Method::PATCH,
        headers,
        Some((&tag, modified(&c))),
        requirement,
    )?;
    if body.vector.is_some() {
        return Err(ApiError::validation(vec![FieldError::new(
            "/vector",
            "the vector configuration (dimension, metric, hnsw) is set when the collection \
             is created and cannot change; create a new collection",
        )]));
    }
    let schema = match &body.schema {
        Some(Some(s)) => {
            schema::compile(s, "/schema")?;
            Some(s.clone())
        }
        Some(None) => None,
        None => c.json_schema.clone(),
    };
    let fields = match &body.indexed_fields {
        Some(value) => fields_json(&parse_fields(value, "/indexed_fields")?),
        None => c.indexed_fields.clone(),
    };
    let row = store::update_collection(
        &mut tx,
        c.id,
        schema.as_ref(),
        body.require_if_match.unwrap_or(c.require_if_match),
        &fields,
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Deletes the row (documents and vectors cascade) and returns it; the
/// caller then drops its indexes with [`indexes::drop_all`].
pub async fn delete(
    pool: &PgPool,
    name: &str,
    headers: &HeaderMap,
) -> Result<Collection, ApiError> {
    let name = collection_name(name)?;
    let mut tx = pool.begin().await?;
    let c = store::lock_collection(&mut tx, name)
        .await?
        .ok_or(ApiError::NotFound)?;
    let tag = c.etag();
    let requirement = if c.require_if_match {
        Requirement::Required
    } else {
        Requirement::Optional
    };
    preconditions::check(
        &Method::DELETE,
        headers,
        Some((&tag, modified(&c))),
        requirement,
    )?;
    store::delete_collection(&mut tx, &c).await?;
    tx.commit().await?;
    Ok(c)
}

/// One page of collections by name, with the shared signed cursor (bound
/// to the tenant: a cursor of another list is a 400 `invalid-cursor`).
pub async fn list(
    pool: &PgPool,
    codec: &CursorCodec,
    tenant: Uuid,
    page: &PageParams,
) -> Result<Page<Value>, ApiError> {
    let limit = LIMITS.resolve(page.limit)?;
    let fingerprint = QueryFingerprint::of(&json!({"list": "collections", "tenant": tenant}));
    let after: Option<Position<()>> = codec.decode_param(page.cursor.as_deref(), &fingerprint)?;
    let rows = store::list_collections(pool, after.as_ref().map(|p| p.id.as_str()), limit).await?;
    let page = Page::from_rows(rows, limit, codec, &fingerprint, |c| Position {
        keys: (),
        id: c.name.clone(),
    });
    Ok(Page {
        items: page.items.iter().map(Collection::view).collect(),
        next_cursor: page.next_cursor,
        total: None,
    })
}
