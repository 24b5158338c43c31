//! `POST …/collections/{c}/bulk`: create, upsert and delete documents in
//! one transaction. All succeed or none: the first failing operation is
//! reported (its index in `errors[].pointer`) and nothing is written.
//!
//! ```json
//! {"operations": [
//!   {"op": "create", "id": "a", "data": {…}},
//!   {"op": "upsert", "id": "b", "data": {…}},
//!   {"op": "delete", "id": "c"}
//! ]}
//! ```
//!
//! At most [`MAX_OPERATIONS`] operations and [`MAX_BULK_BYTES`] of data
//! (413 beyond). `create` without an id gets a UUIDv7; `create` of an
//! existing id is 409; `delete` of a missing id is 404. In a collection
//! with `require_if_match`, operations carry no validators, so only
//! `create` (which never overwrites) is allowed: `upsert` and `delete`
//! are 428, as the same writes without If-Match are on the single
//! document routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Acquire, Postgres};

use super::crud::check_data;
use super::names::{collection_name, is_document_id};
use super::schema;
use super::store;
use crate::http::problem::{ApiError, FieldError, kind};

pub const MAX_OPERATIONS: usize = 1000;
pub const MAX_BULK_BYTES: usize = 8 << 20;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
#[schema(as = BulkOperation)]
pub enum Operation {
    Create { id: Option<String>, data: Value },
    Upsert { id: String, data: Value },
    Delete { id: String },
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BulkRequest)]
pub struct BulkBody {
    /// 1 to 1000 operations (8 MiB at most), applied in one transaction.
    #[schema(min_items = 1, max_items = 1000)]
    pub operations: Vec<Operation>,
}

fn at(i: usize, error: ApiError) -> ApiError {
    // Re-point field errors below the operation.
    match error {
        ApiError::Validation { errors, .. } => ApiError::validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(format!("/operations/{i}{}", e.pointer), e.message))
                .collect(),
        ),
        ApiError::Conflict(detail) => ApiError::Conflict(format!("operation {i}: {detail}")),
        other => other,
    }
}

pub async fn run<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    collection: &str,
    body: BulkBody,
) -> Result<Response, ApiError> {
    let collection = collection_name(collection)?;
    if body.operations.is_empty() || body.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::validation(vec![FieldError::new(
            "/operations",
            format!("1 to {MAX_OPERATIONS} operations"),
        )]));
    }
    let bytes: usize = body
        .operations
        .iter()
        .map(|op| match op {
            Operation::Create { data, .. } | Operation::Upsert { data, .. } => {
                serde_json::to_vec(data)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX)
            }
            Operation::Delete { .. } => 0,
        })
        .fold(0usize, usize::saturating_add);
    if bytes > MAX_BULK_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: Some(MAX_BULK_BYTES as u64),
        });
    }
    let mut tx = db.begin().await?;
    let coll = store::get_collection(&mut *tx, collection).await?;
    if coll.require_if_match
        && body
            .operations
            .iter()
            .any(|op| !matches!(op, Operation::Create { .. }))
    {
        return Err(ApiError::PreconditionRequired);
    }
    let compiled = coll
        .json_schema
        .as_ref()
        .map(|s| schema::compile(s, "/schema"))
        .transpose()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("stored schema does not compile")))?;
    let mut results = Vec::with_capacity(body.operations.len());
    for (i, op) in body.operations.iter().enumerate() {
        let bad_id = || ApiError::BadRequest {
            kind: kind::INVALID_PARAMETER,
            detail: format!("operation {i}: invalid document id"),
            errors: vec![FieldError::new(
                format!("/operations/{i}/id"),
                "1 to 128 of A-Z a-z 0-9 _ - . :",
            )],
        };
        match op {
            Operation::Create { id, data } => {
                let id = match id {
                    Some(id) if is_document_id(id) => id.clone(),
                    Some(_) => return Err(bad_id()),
                    None => uuid::Uuid::now_v7().to_string(),
                };
                check_data(&coll, compiled.as_ref(), data, "/data").map_err(|e| at(i, e))?;
                let doc = store::insert_document(&mut tx, &coll, &id, data)
                    .await?
                    .ok_or_else(|| {
                        at(
                            i,
                            ApiError::Conflict("a document with this id exists".into()),
                        )
                    })?;
                results.push(
                    json!({"op": "create", "id": doc.id, "version": doc.version, "status": 201}),
                );
            }
            Operation::Upsert { id, data } => {
                if !is_document_id(id) {
                    return Err(bad_id());
                }
                check_data(&coll, compiled.as_ref(), data, "/data").map_err(|e| at(i, e))?;
                let (doc, status) = match store::insert_document(&mut tx, &coll, id, data).await? {
                    Some(doc) => (doc, 201),
                    None => (store::update_document(&mut tx, &coll, id, data).await?, 200),
                };
                results.push(
                    json!({"op": "upsert", "id": doc.id, "version": doc.version, "status": status}),
                );
            }
            Operation::Delete { id } => {
                if !is_document_id(id) {
                    return Err(bad_id());
                }
                if !store::delete_document(&mut tx, &coll, id).await? {
                    return Err(ApiError::NotFound);
                }
                results.push(json!({"op": "delete", "id": id, "status": 204}));
            }
        }
    }
    tx.commit().await?;
    Ok((StatusCode::OK, axum::Json(json!({ "results": results }))).into_response())
}
