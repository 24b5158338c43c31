//! One document: create (POST), get, replace (PUT), merge patch (PATCH,
//! RFC 7396), delete. Conditional requests follow RFC 9110 through
//! [`crate::http::preconditions`]: the document row is locked, its ETag
//! evaluated against `If-Match`/`If-None-Match`, and a collection with
//! `require_if_match` answers 428 to a write without either.
//!
//! - `POST …/documents` `{"id"?, "data"}`: 201; the id is a UUIDv7 unless
//!   given; an existing id is 409 (with `If-None-Match: *` too, 412).
//! - `PUT …/documents/{id}` with the data as body: replaces (200) or
//!   creates (201); `If-None-Match: *` makes it create-only (412 if it
//!   exists, race-safe through `ON CONFLICT DO NOTHING`).
//! - `PATCH …/documents/{id}`: merge patch of the data; 404 if absent;
//!   a JSON Patch (`application/json-patch+json`) is 415.
//! - `DELETE …/documents/{id}`: 204; 404 if absent.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{Acquire, PgPool, Postgres};

use super::names::{collection_name, document_id};
use super::schema;
use super::store::{self, Collection, Document};
use super::{MAX_DOCUMENT_BYTES, MAX_DOCUMENT_DEPTH};
use crate::cache::{CacheKey, EntryOptions, invalidation};
use crate::http::preconditions::{self, Requirement};
use crate::http::problem::{ApiError, FieldError, kind};
use crate::tenancy::TenantContext;

/// The id of the document a 201 created, as a response extension: the
/// handler, which knows the URL, turns it into `Location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created(pub String);

/// When a document last changed, for `Last-Modified` and the date
/// preconditions.
fn modified(doc: &Document) -> Option<std::time::SystemTime> {
    preconditions::parse_rfc3339_utc(&doc.updated_at)
}

/// The response for one document, with its ETag and Last-Modified.
pub fn document_response(status: StatusCode, doc: &Document, location: Option<String>) -> Response {
    let mut response = (status, axum::Json(doc)).into_response();
    preconditions::set_validators(response.headers_mut(), &doc.etag(), modified(doc));
    if status == StatusCode::CREATED {
        response.extensions_mut().insert(Created(doc.id.clone()));
    }
    if let Some(location) = location.and_then(|l| axum::http::HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a document's data: an object, within the size and depth
/// limits, valid against the collection's schema. `pointer` is where the
/// data sits in the request body.
pub fn check_data(
    collection: &Collection,
    compiled: Option<&schema::Schema>,
    data: &Value,
    pointer: &str,
) -> Result<(), ApiError> {
    if !data.is_object() {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            "a document is a JSON object",
        )]));
    }
    let size = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: Some(MAX_DOCUMENT_BYTES as u64),
        });
    }
    if depth(data) > MAX_DOCUMENT_DEPTH {
        return Err(ApiError::bad_request(
            kind::INVALID_JSON,
            format!("a document nests deeper than {MAX_DOCUMENT_DEPTH}"),
        ));
    }
    if let Some(at) = super::nul_pointer(data, pointer) {
        return Err(ApiError::validation(vec![FieldError::new(
            at,
            super::NUL_MESSAGE,
        )]));
    }
    match (compiled, &collection.json_schema) {
        (Some(schema), _) => schema.validate(data, pointer),
        (None, Some(raw)) => schema::compile(raw, "/schema")
            .map_err(|_| ApiError::internal(anyhow::anyhow!("stored schema does not compile")))?
            .validate(data, pointer),
        (None, None) => Ok(()),
    }
}

fn requirement(collection: &Collection) -> Requirement {
    if collection.require_if_match {
        Requirement::Required
    } else {
        Requirement::Optional
    }
}

fn current(
    doc: Option<&Document>,
) -> Option<(preconditions::EntityTag, Option<std::time::SystemTime>)> {
    doc.map(|d| (d.etag(), modified(d)))
}

fn check(
    method: &Method,
    headers: &HeaderMap,
    doc: Option<&Document>,
    requirement: Requirement,
) -> Result<(), ApiError> {
    let current = current(doc);
    preconditions::check(
        method,
        headers,
        current.as_ref().map(|(t, m)| (t, *m)),
        requirement,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
#[schema(as = CreateDocument)]
pub struct CreateBody {
    /// Your id (1 to 128 of `A-Z a-z 0-9 _ - . :`); absent: the server picks a UUIDv7.
    #[schema(example = "pg-tips")]
    pub id: Option<String>,
    /// The document (at most 1 MiB, 64 levels deep).
    #[schema(value_type = Object, example = json!({"title": "Postgres tips", "year": 2024}))]
    pub data: Value,
}

pub async fn create<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    collection: &str,
    headers: &HeaderMap,
    body: CreateBody,
) -> Result<Response, ApiError> {
    let collection = collection_name(collection)?;
    let id = match &body.id {
        Some(id) => document_id(id, "/id")?.to_string(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let mut tx = db.begin().await?;
    let coll = store::get_collection(&mut *tx, collection).await?;
    check_data(&coll, None, &body.data, "/data")?;
    // POST creates: only `If-None-Match: *` (or nothing) makes sense; an
    // If-Match names a version that cannot exist yet.
    check(&Method::POST, headers, None, Requirement::Optional)?;
    let create_only = headers.contains_key(header::IF_NONE_MATCH);
    let Some(doc) = store::insert_document(&mut tx, &coll, &id, &body.data).await? else {
        return Err(if create_only {
            ApiError::PreconditionFailed
        } else {
            ApiError::Conflict("a document with this id exists".into())
        });
    };
    tx.commit().await?;
    Ok(document_response(StatusCode::CREATED, &doc, None))
}

/// How long a document read is served from the cache. Writes invalidate
/// it before they answer (cache::invalidation), so this bounds only what a
/// crashed writer left, until the outbox dispatcher's invalidation.
const DOCUMENT_CACHE: EntryOptions =
    EntryOptions::new(Duration::from_secs(30), Duration::from_secs(300));

/// A document as the cache keeps it (with what its ETag derives from).
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct CachedDocument {
    id: String,
    data: Value,
    version: i64,
    created_us: i64,
    created_at: String,
    updated_at: String,
}

impl From<Document> for CachedDocument {
    fn from(d: Document) -> Self {
        Self {
            id: d.id,
            data: d.data,
            version: d.version,
            created_us: d.created_us,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

impl From<CachedDocument> for Document {
    fn from(d: CachedDocument) -> Self {
        Self {
            id: d.id,
            data: d.data,
            version: d.version,
            created_us: d.created_us,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// The document `id` of `collection`, if both exist (checked names).
async fn find(pool: &PgPool, collection: &str, id: &str) -> Result<Option<Document>, ApiError> {
    let coll = store::get_collection(pool, collection).await?;
    store::find_document(pool, coll.id, id, false).await
}

/// The answer to a GET of `doc`: 404 when there is none, whatever the
/// preconditions (RFC 9110 §13.2.1: they are ignored when the answer
/// without them would not be a 2xx), then preconditions (304, 412).
fn read_response(
    method: &Method,
    headers: &HeaderMap,
    doc: Option<Document>,
) -> Result<Response, ApiError> {
    let doc = doc.ok_or(ApiError::NotFound)?;
    check(method, headers, Some(&doc), Requirement::Optional)?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

/// The checked collection name and document id of a read (a malformed id
/// names nothing: 404).
fn read_names<'a>(collection: &'a str, id: &str) -> Result<&'a str, ApiError> {
    let collection = collection_name(collection)?;
    if !super::names::is_document_id(id) {
        return Err(ApiError::NotFound);
    }
    Ok(collection)
}

/// `GET …/documents/{id}` straight from the database.
pub async fn get(
    pool: &PgPool,
    collection: &str,
    id: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let collection = read_names(collection, id)?;
    read_response(method, headers, find(pool, collection, id).await?)
}

/// `GET …/documents/{id}`: from the cache (key and tags per tenant,
/// collection and id; see cache::invalidation), else the database.
pub async fn get_cached(
    ctx: &TenantContext,
    collection: &str,
    id: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let collection = read_names(collection, id)?;
    let tenant = ctx.tenant_id();
    let key = CacheKey::tenant(tenant, "document")
        .id(collection)
        .id(id)
        .build();
    let tags = invalidation::document_tags(tenant, collection, id);
    // A missing document is an error to the cache, so it is never cached.
    let found = ctx
        .cache()
        .get_or_create(&key, &tags, DOCUMENT_CACHE, || async {
            let doc = find(ctx.pool(), collection, id).await?;
            doc.map(CachedDocument::from).ok_or(ApiError::NotFound)
        })
        .await;
    let doc = match found {
        Ok(doc) => Some(Document::from(doc)),
        Err(ApiError::NotFound) => None,
        Err(error) => return Err(error),
    };
    read_response(method, headers, doc)
}

pub async fn replace(
    pool: &PgPool,
    collection: &str,
    id: &str,
    headers: &HeaderMap,
    data: Value,
) -> Result<Response, ApiError> {
    let collection = collection_name(collection)?;
    let id = document_id(id, "#/path/id")?;
    let mut tx = pool.begin().await?;
    let coll = store::get_collection(&mut *tx, collection).await?;
    check_data(&coll, None, &data, "")?;
    let doc = store::find_document(&mut *tx, coll.id, id, true).await?;
    check(&Method::PUT, headers, doc.as_ref(), requirement(&coll))?;
    let response = match doc {
        Some(_) => document_response(
            StatusCode::OK,
            &store::update_document(&mut tx, &coll, id, &data).await?,
            None,
        ),
        None => match store::insert_document(&mut tx, &coll, id, &data).await? {
            Some(doc) => document_response(StatusCode::CREATED, &doc, None),
            // Created by a concurrent request since our read: a create-only
            // PUT lost the race (412); a plain one may simply retry.
            None if headers.contains_key(header::IF_NONE_MATCH) => {
                return Err(ApiError::PreconditionFailed);
            }
            None => {
                return Err(ApiError::Conflict(
                    "the document was created concurrently; retry".into(),
                ));
            }
        },
    };
    tx.commit().await?;
    Ok(response)
}

/// RFC 7396: objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

pub async fn patch<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    collection: &str,
    id: &str,
    headers: &HeaderMap,
    patch: Value,
) -> Result<Response, ApiError> {
    // A JSON Patch (RFC 6902) is a list of operations: read as a merge
    // patch it would replace the document with that list.
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json-patch+json")) {
        return Err(ApiError::UnsupportedMediaType(
            "send a merge patch (RFC 7396) as application/merge-patch+json or application/json"
                .into(),
        ));
    }
    let collection = collection_name(collection)?;
    let id = document_id(id, "#/path/id")?;
    let mut tx = db.begin().await?;
    let coll = store::get_collection(&mut *tx, collection).await?;
    // Absent: 404 before any precondition (RFC 9110 §13.2.1).
    let doc = store::find_document(&mut *tx, coll.id, id, true)
        .await?
        .ok_or(ApiError::NotFound)?;
    check(&Method::PATCH, headers, Some(&doc), requirement(&coll))?;
    let mut data = doc.data;
    merge_patch(&mut data, &patch);
    check_data(&coll, None, &data, "")?;
    let doc = store::update_document(&mut tx, &coll, id, &data).await?;
    tx.commit().await?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

pub async fn delete(
    pool: &PgPool,
    collection: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let collection = collection_name(collection)?;
    if !super::names::is_document_id(id) {
        return Err(ApiError::NotFound);
    }
    let mut tx = pool.begin().await?;
    let coll = store::get_collection(&mut *tx, collection).await?;
    // Absent: 404 before any precondition (RFC 9110 §13.2.1).
    let doc = store::find_document(&mut *tx, coll.id, id, true)
        .await?
        .ok_or(ApiError::NotFound)?;
    check(&Method::DELETE, headers, Some(&doc), requirement(&coll))?;
    if !store::delete_document(&mut tx, &coll, id).await? {
        return Err(ApiError::NotFound);
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want);
        }
    }
}
