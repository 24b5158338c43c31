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
use crate::http::extract::{Json, Path, Query, accept_json};
use crate::http::pagination::PageParams;
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
        .route_layer(axum::middleware::from_fn(accept_json))
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

async fn create_collection(
    ctx: TenantContext,
    Json(body): Json<collections::CreateBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Write)?;
    let created = collections::create(ctx.pool(), body).await?;
    if !created.fields()?.is_empty() {
        let mut owner = ctx.owner_ddl().await?;
        collections::build_indexes(&mut owner, &created).await?;
    }
    let location = collection_url(&ctx, &created.name);
    Ok(located(
        collections::collection_response(StatusCode::CREATED, &created),
        location,
    ))
}

async fn list_collections(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Query(page): Query<PageParams>,
    uri: Uri,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Read)?;
    let page = collections::list(ctx.pool(), &http.cursors, ctx.tenant_id(), &page).await?;
    Ok(page.into_response_for(&uri))
}

async fn get_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Read)?;
    collections::get(ctx.pool(), &p.collection, &method, &headers).await
}

async fn update_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Json(body): Json<collections::UpdateBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Write)?;
    let reindex = body.indexed_fields.is_some();
    let updated = collections::update(ctx.pool(), &p.collection, &headers, body).await?;
    if reindex {
        let mut owner = ctx.owner_ddl().await?;
        collections::build_indexes(&mut owner, &updated).await?;
    }
    Ok(collections::collection_response(StatusCode::OK, &updated))
}

async fn delete_collection(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Collections, Action::Delete)?;
    let deleted = collections::delete(ctx.pool(), &p.collection, &headers).await?;
    let mut owner = ctx.owner_ddl().await?;
    indexes::drop_all(&mut owner, deleted.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_document(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Json(body): Json<crud::CreateBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    let response = crud::create(ctx.pool(), &p.collection, &headers, body).await?;
    let location = match response.extensions().get::<crud::Created>() {
        Some(crud::Created(id)) => {
            format!("{}/documents/{id}", collection_url(&ctx, &p.collection))
        }
        None => String::new(),
    };
    Ok(located(response, location))
}

async fn list_documents(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Path(p): Path<CollectionPath>,
    uri: Uri,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    let request = list::parse_query_string(uri.query())?;
    list::list(ctx.pool(), &http.cursors, &p.collection, request, &uri).await
}

async fn query_documents(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Path(p): Path<CollectionPath>,
    uri: Uri,
    Json(body): Json<list::QueryBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    let mut response = list::list(
        ctx.pool(),
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

async fn get_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Read)?;
    crud::get(ctx.pool(), &p.collection, &p.id, &method, &headers).await
}

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

async fn patch_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    headers: HeaderMap,
    Json(patch): Json<Value>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    crud::patch(ctx.pool(), &p.collection, &p.id, &headers, patch).await
}

async fn delete_document(
    ctx: TenantContext,
    Path(p): Path<DocumentPath>,
    headers: HeaderMap,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Delete)?;
    crud::delete(ctx.pool(), &p.collection, &p.id, &headers).await
}

async fn bulk_documents(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    Json(body): Json<bulk::BulkBody>,
) -> Result<Response, crate::http::ApiError> {
    ctx.require(Resource::Documents, Action::Write)?;
    if body
        .operations
        .iter()
        .any(|op| matches!(op, bulk::Operation::Delete { .. }))
    {
        ctx.require(Resource::Documents, Action::Delete)?;
    }
    bulk::run(ctx.pool(), &p.collection, body).await
}
