//! Routes of the documents API and their handlers: authenticate and
//! authorise through [`TenantContext`], extract, then call the operation
//! modules, which hold the logic and are written against a pool.
//!
//! | method | path (under `/v1/tenants/{tenant}`) | permission |
//! | --- | --- | --- |
//! | POST, GET | `collections` | collections:write, :read |
//! | GET, PATCH, DELETE | `collections/{c}` | collections:read, :write, :delete |
//! | POST, GET | `collections/{c}/documents` | documents:write, :read |
//! | GET, PUT, PATCH, DELETE | `collections/{c}/documents/{id}` | documents:read, :write, :write, :delete |
//! | POST | `collections/{c}/query` | documents:read |
//! | POST | `collections/{c}/bulk` | documents:write (and :delete with deletes) |

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::{bulk, collections, crud, indexes, list};
use crate::app::AppState;
use crate::http::HttpContext;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::pagination::PageParams;
use crate::http::preconditions::conditional_json;
use crate::tenancy::{Action, Resource, TenantContext};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/collections",
            post(create_collection).get(list_collections),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}",
            get(get_collection)
                .patch(update_collection)
                .delete(delete_collection),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/documents",
            post(create_document).get(list_documents),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/documents/{id}",
            get(get_document)
                .put(replace_document)
                .patch(patch_document)
                .delete(delete_document),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/query",
            post(query_documents),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/bulk",
            post(bulk_documents),
        )
    // JSON is the only representation: 406 for an Accept without it.
}

/// `Location` of what a 201 created (RFC 9110 §10.2.2), as an absolute
/// path. Names and ids are of URL-safe characters only ([`super::names`]).
fn located(mut response: Response, location: String) -> Response {
    if response.status() == StatusCode::CREATED
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn collection_url(ctx: &TenantContext, collection: &str) -> String {
    format!("/v1/tenants/{}/collections/{collection}", ctx.tenant_name())
}

#[derive(Deserialize)]
struct CollectionPath {
    #[allow(dead_code)]
    tenant: String,
    collection: String,
}

#[derive(Deserialize)]
struct DocumentPath {
    #[allow(dead_code)]
    tenant: String,
    collection: String,
    id: String,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections",
    operation_id = "createCollection",
    tag = "collections",
    summary = "Create a collection",
    description = "Optionally with a JSON Schema for its documents, a vector configuration and indexed fields (their expression indexes are built before the answer).",
    request_body = collections::CreateBody,
    responses(
        (status = 201, description = "The collection; `Location` is its URL", body = crate::openapi::documents::CollectionView, headers(("ETag" = String), ("Location" = String))),
        (status = 409, description = "A collection of that name exists"),
        (status = 422, description = "Bad name, schema, vector configuration or indexed fields"),
    ),
)]
async fn create_collection(
    ctx: TenantContext,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<collections::CreateBody>>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Write)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let created = collections::create(run.db(), body).await?;
    let location = collection_url(&ctx, &created.name);
    let response = run
        .finish(located(
            collections::collection_response(StatusCode::CREATED, &created),
            location,
        ))
        .await?;
    // Index DDL runs on an owner connection, after the row is committed.
    if !created.fields()?.is_empty() {
        let mut owner = ctx.owner_ddl().await?;
        collections::build_indexes(&mut owner, &created).await?;
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/collections",
    operation_id = "listCollections",
    tag = "collections",
    summary = "List collections",
    description = "By name; pages of at most 500.",
    params(PageParams),
    responses(
        (status = 200, description = "A page of collections; `Link: rel=next` when there is more", body = crate::http::pagination::Page<crate::openapi::documents::CollectionView>, headers(("ETag" = String, description = "A digest of the page (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
        (status = 412, description = "A precondition does not hold"),
    ),
)]
async fn list_collections(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Query(page): Query<PageParams>,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Read)?;
    let page = collections::list(ctx.pool(), &http.cursors, ctx.tenant_id(), &page).await?;
    let response = page.into_response_for(&uri);
    Ok(conditional_json(response, &method, &headers).await)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/collections/{collection}",
    operation_id = "getCollection",
    tag = "collections",
    summary = "Get a collection",
    params(("If-None-Match" = Option<String>, Header, description = "Answer 304 if the current `ETag` is one of these")),
    responses(
        (status = 200, description = "The collection", body = crate::openapi::documents::CollectionView, headers(("ETag" = String, description = "The version (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn get_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Read)?;
    collections::get_cached(&ctx, &p.collection, &method, &headers).await
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/collections/{collection}",
    operation_id = "updateCollection",
    tag = "collections",
    summary = "Update a collection",
    description = "Its schema, indexed fields or `require_if_match`; absent fields stay. The vector configuration is fixed.",
    params(("If-Match" = Option<String>, Header, description = "Update only if the collection's current `ETag` is one of these (412 otherwise)")),
    request_body = collections::UpdateBody,
    responses(
        (status = 200, description = "The collection after the change", body = crate::openapi::documents::CollectionView, headers(("ETag" = String, description = "The version (strong)"))),
        (status = 412, description = "`If-Match` does not match"),
        (status = 422, description = "Bad schema or indexed fields"),
    ),
)]
async fn update_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<collections::UpdateBody>>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Write)?;
    let reindex = body.indexed_fields.is_some();
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let updated = collections::update(run.db(), &p.collection, &headers, body).await?;
    let response = run
        .finish(collections::collection_response(StatusCode::OK, &updated))
        .await?;
    if reindex {
        let mut owner = ctx.owner_ddl().await?;
        collections::build_indexes(&mut owner, &updated).await?;
    }
    Ok(response)
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/collections/{collection}",
    operation_id = "deleteCollection",
    tag = "collections",
    summary = "Delete a collection",
    description = "Its documents, vectors and indexes go with it.",
    params(("If-Match" = Option<String>, Header, description = "Delete only if the collection's current `ETag` is one of these (412 otherwise)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "`If-Match` does not match"),
    ),
)]
async fn delete_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Delete)?;
    let deleted = collections::delete(ctx.pool(), &p.collection, &headers).await?;
    let mut owner = ctx.owner_ddl().await?;
    indexes::drop_all(&mut owner, deleted.id).await?;
    // Its vectors went with the row; the HNSW index (partial, on
    // `embeddings`) would otherwise stay behind, empty, in every plan.
    crate::vectors::index::drop_index(&mut owner, deleted.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents",
    operation_id = "createDocument",
    tag = "documents",
    summary = "Create a document",
    description = "With your id or a server-chosen one. Checked against the collection's JSON Schema (every error listed with its pointer).",
    params(("If-None-Match" = Option<String>, Header, description = "`*`: create only (the default for POST)")),
    request_body = crud::CreateBody,
    responses(
        (status = 201, description = "The document; `Location` is its URL", body = super::store::Document, headers(("ETag" = String), ("Location" = String))),
        (status = 404, description = "No such collection"),
        (status = 409, description = "A document with this id exists"),
        (status = 413, description = "The document exceeds 1 MiB, or the body the limit"),
        (status = 422, description = "The document breaks the collection's schema, or is not an object"),
    ),
)]
async fn create_document(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<crud::CreateBody>>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let response = crud::create(run.db(), &p.collection, &headers, body).await?;
    let location = match response.extensions().get::<crud::Created>() {
        Some(crud::Created(id)) => {
            format!("{}/documents/{id}", collection_url(&ctx, &p.collection))
        }
        None => String::new(),
    };
    run.finish(located(response, location)).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents",
    operation_id = "listDocuments",
    tag = "documents",
    summary = "List documents",
    description = "Filtered with query parameters (`filter[year][gte]=2020`, `filter[status]=active` for equality; a value is read as JSON when it parses, `in`/`nin` take a JSON list; all ANDed), sorted, keyset-paginated. `POST …/query` takes the full filter language. Unknown parameters are a 400.",
    params(
        ("filter" = Option<Object>, Query, style = DeepObject, explode, description = "`filter[<path>]=<value>` (equality) or `filter[<path>][<op>]=<value>`, op one of `eq ne gt gte lt lte in nin exists prefix contains`"),
        ("sort" = Option<String>, Query, description = "Up to 4 comma-separated field paths, `-` for descending (`-year,title`); the id breaks ties"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page; valid only with the same filter and sort"),
        ("count" = Option<bool>, Query, description = "`true`: add `total`"),
    ),
    responses(
        (status = 200, description = "A page of documents; `Link: rel=next` when there is more", body = crate::http::pagination::Page<super::store::Document>, headers(("ETag" = String, description = "A digest of the page (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
        (status = 400, description = "A malformed filter, sort or parameter, or a cursor of another query"),
        (status = 412, description = "A precondition does not hold"),
    ),
)]
async fn list_documents(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Path(p): Path<CollectionPath>,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    let request = list::parse_query_string(uri.query())?;
    let response = list::list_cached(&ctx, &http.cursors, &p.collection, request, &uri).await?;
    Ok(conditional_json(response, &method, &headers).await)
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/query",
    operation_id = "queryDocuments",
    tag = "documents",
    summary = "Query documents",
    description = "The full filter language in a JSON body. The next page is the same request with `cursor` set to `next_cursor`.",
    request_body = list::QueryBody,
    responses(
        (status = 200, description = "A page of documents", body = crate::http::pagination::Page<super::store::Document>),
        (status = 400, description = "A malformed filter or sort (too deep, unknown operator, bad path), or a cursor of another query"),
    ),
)]
async fn query_documents(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Path(p): Path<CollectionPath>,
    uri: Uri,
    Json(body): Json<list::QueryBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    let mut response = list::list_cached(
        &ctx,
        &http.cursors,
        &p.collection,
        body.into_request()?,
        &uri,
    )
    .await?;
    // The next page is another POST with `next_cursor` in the body; a
    // `Link` (`…/query?cursor=…`) would invite a GET this route refuses.
    response.headers_mut().remove(header::LINK);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents/{id}",
    operation_id = "getDocument",
    tag = "documents",
    summary = "Get a document",
    params(("If-None-Match" = Option<String>, Header, description = "Answer 304 if the current `ETag` is one of these")),
    responses(
        (status = 200, description = "The document", body = super::store::Document, headers(("ETag" = String, description = "The version (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn get_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    crud::get_cached(&ctx, &p.collection, &p.id, &method, &headers).await
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents/{id}",
    operation_id = "replaceDocument",
    tag = "documents",
    summary = "Replace (or create) a document",
    description = "The body is the document's new data. Creates it when absent, unless `If-Match` is sent; `If-None-Match: *` creates only.",
    params(("If-Match" = Option<String>, Header, description = "Write only if the current `ETag` is one of these (412 otherwise); required when the collection says `require_if_match` (428)"), ("If-None-Match" = Option<String>, Header, description = "`*`: create only (412 if it exists)")),
    request_body(content = Object, description = "The document's data", content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = super::store::Document, headers(("ETag" = String, description = "The version (strong)"))),
        (status = 201, description = "Created", body = super::store::Document, headers(("ETag" = String), ("Location" = String))),
        (status = 412, description = "A precondition does not hold"),
        (status = 428, description = "The collection requires `If-Match`"),
        (status = 422, description = "The document breaks the collection's schema"),
    ),
)]
async fn replace_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    headers: HeaderMap,
    Json(data): Json<Value>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    let response = crud::replace(ctx.pool(), &p.collection, &p.id, &headers, data).await?;
    let location = format!("{}/documents/{}", collection_url(&ctx, &p.collection), p.id);
    Ok(located(response, location))
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents/{id}",
    operation_id = "patchDocument",
    tag = "documents",
    summary = "Merge-patch a document",
    description = "RFC 7396 JSON merge patch (`null` removes a member). `application/json-patch+json` is a 415.",
    params(("If-Match" = Option<String>, Header, description = "Write only if the current `ETag` is one of these (412 otherwise); required when the collection says `require_if_match` (428)")),
    request_body(content = Object, description = "A JSON merge patch", content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The patched document", body = super::store::Document, headers(("ETag" = String, description = "The version (strong)"))),
        (status = 412, description = "`If-Match` does not match"),
        (status = 428, description = "The collection requires `If-Match`"),
        (status = 422, description = "The result breaks the collection's schema"),
    ),
)]
async fn patch_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    headers: HeaderMap,
    Idempotent {
        key,
        inner: Json(patch),
    }: Idempotent<Json<Value>>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let response = crud::patch(run.db(), &p.collection, &p.id, &headers, patch).await?;
    run.finish(response).await
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/collections/{collection}/documents/{id}",
    operation_id = "deleteDocument",
    tag = "documents",
    summary = "Delete a document",
    params(("If-Match" = Option<String>, Header, description = "Write only if the current `ETag` is one of these (412 otherwise); required when the collection says `require_if_match` (428)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "`If-Match` does not match"),
        (status = 428, description = "The collection requires `If-Match`"),
    ),
)]
async fn delete_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Delete)?;
    crud::delete(ctx.pool(), &p.collection, &p.id, &headers).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/bulk",
    operation_id = "bulkDocuments",
    tag = "documents",
    summary = "Create, upsert and delete documents in one transaction",
    description = "All or nothing: the first failing operation's problem is the answer, its pointers under `/operations/<i>`. Deletes need the delete right too. In a `require_if_match` collection upserts and deletes are 428 (they carry no version).",
    request_body = bulk::BulkBody,
    responses(
        (status = 200, description = "One result per operation, in order", body = crate::openapi::documents::BulkResultsView),
        (status = 409, description = "A create's id exists"),
        (status = 413, description = "More than 1000 operations or 8 MiB"),
        (status = 422, description = "An operation's document is invalid"),
        (status = 428, description = "Upserts or deletes in a `require_if_match` collection"),
    ),
)]
async fn bulk_documents(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<bulk::BulkBody>>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    if body
        .operations
        .iter()
        .any(|op| matches!(op, bulk::Operation::Delete { .. }))
    {
        ctx.require(Resource::Documents, Action::Delete)?;
    }
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let response = bulk::run(run.db(), &p.collection, body).await?;
    run.finish(response).await
}
