//! Routes of the vector API and their handlers: authenticate and authorise
//! through [`TenantContext`], parse, then call the engine ([`super::store`],
//! [`super::search`]), which is written against a pool.
//!
//! | method | path (under `/v1/tenants/{tenant}`) | permission |
//! | --- | --- | --- |
//! | PUT, POST | `collections/{c}/vectors` | vectors:write |
//! | GET, DELETE | `collections/{c}/vectors/{id}` | vectors:read, vectors:delete |
//! | POST | `collections/{c}/vectors/delete` (by ids or filter) | vectors:delete |
//! | POST | `collections/{c}/search` | vectors:read |
//! | POST | `search` (cross-collection) | vectors:read |
//!
//! `GET …/vectors/delete` reads the vector whose id is `delete`: the static
//! segment shadows `{id}` for every method, so it is routed back here.

use axum::Router;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::index::{IndexBuilder, VectorSettings, owner_connector};
use super::model::{
    CrossSearchRequest, DeleteRequest, DeleteResponse, Errors, MAX_DELETE_IDS, SearchRequest,
    SearchResponse, UpsertRequest, UpsertResponse, VectorCollection, check_filter, check_id,
    validate_upsert,
};
use super::{nonfinite, search, store};
use crate::app::AppState;
use crate::cache::{CacheKey, EntryOptions, Tag};
use crate::http::ApiError;
use crate::http::extract::{Json, Path, is_json_content_type, parse_json};
use crate::http::idempotency::{self, Idempotent};
use crate::tenancy::{Action, Resource, TenantContext};

pub fn routes() -> Router<AppState> {
    let settings = VectorSettings::from_env().unwrap_or_else(|error| {
        tracing::error!(error = %error, "vector settings from the environment; using defaults");
        VectorSettings::default()
    });
    routes_with(IndexBuilder::new(settings))
}

/// The routes with a given builder (tests set the threshold).
pub fn routes_with(builder: IndexBuilder) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/vectors",
            post(upsert).put(upsert),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/vectors/delete",
            post(delete_many).get(get_named_delete),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/vectors/{id}",
            get(get_one).delete(delete_one),
        )
        .route(
            "/v1/tenants/{tenant}/collections/{collection}/search",
            post(search_collection),
        )
        .route("/v1/tenants/{tenant}/search", post(search_across))
        .layer(Extension(builder))
}

#[derive(Deserialize)]
struct CollectionPath {
    #[allow(dead_code)]
    tenant: String,
    collection: String,
}

#[derive(Deserialize)]
struct VectorPath {
    #[allow(dead_code)]
    tenant: String,
    collection: String,
    id: String,
}

/// A JSON body where bare `NaN`/`Infinity` (invalid JSON that common
/// serialisers emit) become 422s with pointers rather than a 400.
fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if !is_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as application/json".into(),
        ));
    }
    match parse_json(body) {
        Ok(value) => Ok(value),
        Err(error) => match nonfinite::rewrite(body) {
            Some(rewritten) => parse_json(&rewritten).map_err(|_| error),
            None => Err(error),
        },
    }
}

async fn collection(ctx: &TenantContext, name: &str) -> Result<VectorCollection, ApiError> {
    store::find_collection(ctx.pool(), name).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/vectors",
    operation_id = "upsertVectors",
    tag = "vectors",
    summary = "Upsert vectors",
    description = "Inserts or replaces a batch (1 to 1000) in one transaction. Each vector has the collection's dimension and finite components (bare `NaN`/`Infinity` included: 422 with the component's pointer, never a 400); cosine collections refuse zero vectors. `PUT` on the same path does the same. Past a size threshold the collection's HNSW index is built in the background.",
    request_body = UpsertRequest,
    responses(
        (status = 200, description = "Each vector's id and new version", body = UpsertResponse),
        (status = 404, description = "No such collection"),
        (status = 422, description = "Wrong dimension, non-finite component, bad id or metadata; the collection has no vector configuration"),
    ),
)]
async fn upsert(
    ctx: TenantContext,
    Extension(builder): Extension<IndexBuilder>,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Idempotent { key, inner: body }: Idempotent<Bytes>,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Write)?;
    let request: UpsertRequest = parse_body(&headers, &body)?;
    let collection = collection(&ctx, &p.collection).await?;
    let items = validate_upsert(request, &collection).map_err(ApiError::validation)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let done = store::upsert(run.db(), &collection, &items).await?;
    let response = run
        .finish(
            Json(UpsertResponse {
                upserted: done.len(),
                items: done,
            })
            .into_response(),
        )
        .await?;
    // The write is committed: a failure to queue the index build is the
    // operators' concern (logged), not the client's.
    let connect = owner_connector(ctx.pool().clone(), ctx.tenant().owner_role.clone());
    if let Err(error) = builder
        .after_write(ctx.pool(), ctx.tenant_id(), &collection, connect)
        .await
    {
        tracing::warn!(collection = %collection.id, error = %error, "vector index check");
    }
    Ok(response)
}

async fn read(ctx: TenantContext, collection_name: &str, id: &str) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Read)?;
    if check_id(id).is_err() {
        return Err(ApiError::NotFound);
    }
    let collection = collection(&ctx, collection_name).await?;
    Ok(Json(store::get(ctx.pool(), &collection, id).await?).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/collections/{collection}/vectors/{id}",
    operation_id = "getVector",
    tag = "vectors",
    summary = "Get a vector",
    description = "The vector with its metadata and linked document id. (`GET …/vectors/delete` reads the vector whose id is `delete`.)",
    responses(
        (status = 200, description = "The vector", body = super::model::StoredVector),
        (status = 404, description = "No such collection or vector"),
    ),
)]
async fn get_one(ctx: TenantContext, Path(p): Path<VectorPath>) -> Result<Response, ApiError> {
    read(ctx, &p.collection, &p.id).await
}

async fn get_named_delete(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
) -> Result<Response, ApiError> {
    read(ctx, &p.collection, "delete").await
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/collections/{collection}/vectors/{id}",
    operation_id = "deleteVector",
    tag = "vectors",
    summary = "Delete a vector",
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such collection or vector"),
    ),
)]
async fn delete_one(ctx: TenantContext, Path(p): Path<VectorPath>) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Delete)?;
    if check_id(&p.id).is_err() {
        return Err(ApiError::NotFound);
    }
    let collection = collection(&ctx, &p.collection).await?;
    match store::delete_ids(ctx.pool(), &collection, std::slice::from_ref(&p.id)).await? {
        0 => Err(ApiError::NotFound),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/vectors/delete",
    operation_id = "deleteVectors",
    tag = "vectors",
    summary = "Delete vectors by ids or by filter",
    description = "Exactly one of `ids` (1 to 1000) and `filter` (metadata containment; `{}` is refused).",
    request_body = DeleteRequest,
    responses(
        (status = 200, description = "How many vectors were deleted", body = DeleteResponse),
        (status = 404, description = "No such collection"),
        (status = 422, description = "Both or neither of `ids` and `filter`, an empty filter, a bad id"),
    ),
)]
async fn delete_many(
    ctx: TenantContext,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    Idempotent { key, inner: body }: Idempotent<Bytes>,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Delete)?;
    let request: DeleteRequest = parse_body(&headers, &body)?;
    let mut errors = Errors::default();
    match (&request.ids, &request.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_DELETE_IDS {
                errors.push("/ids", format!("1 to {MAX_DELETE_IDS} ids"));
            }
            for (i, id) in ids.iter().enumerate() {
                if let Err(message) = check_id(id) {
                    errors.push(format!("/ids/{i}"), message);
                }
            }
        }
        (None, Some(filter)) => {
            // `{}` would match every vector: deleting a whole collection's
            // vectors is not something to do by accident.
            if check_filter(filter, "/filter", &mut errors)
                && filter.as_object().is_some_and(|o| o.is_empty())
            {
                errors.push("/filter", "an empty filter would delete every vector");
            }
        }
        _ => errors.push("", "send exactly one of `ids` and `filter`"),
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors.0));
    }
    let collection = collection(&ctx, &p.collection).await?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let deleted = match (request.ids, request.filter) {
        (Some(ids), _) => store::delete_ids(run.db(), &collection, &ids).await?,
        (_, Some(filter)) => store::delete_matching(run.db(), &collection, &filter).await?,
        (None, None) => 0,
    };
    run.finish(Json(DeleteResponse { deleted }).into_response())
        .await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/collections/{collection}/search",
    operation_id = "searchVectors",
    tag = "vectors",
    summary = "Search a collection",
    description = "Top-k nearest vectors by the collection's metric, optionally filtered by metadata containment. Filtered searches still return k hits when k match. Scores are the metric's natural score: cosine similarity (higher is nearer), Euclidean distance (lower is nearer) or inner product (higher is nearer); `score` and `order` in the response say which.",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The hits, nearest first", body = SearchResponse),
        (status = 404, description = "No such collection"),
        (status = 422, description = "Wrong dimension, non-finite component, `k` or `ef_search` out of range, a filter that is not an object"),
    ),
)]
async fn search_collection(
    ctx: TenantContext,
    Extension(builder): Extension<IndexBuilder>,
    Path(p): Path<CollectionPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Read)?;
    let request: SearchRequest = parse_body(&headers, &body)?;
    cached_search(&ctx, &[p.collection.as_str()], &body, || async {
        let collection = collection(&ctx, &p.collection).await?;
        let params = search::single_params(request, &collection)?;
        let hits = search::search_one(
            ctx.pool(),
            &collection,
            &params,
            builder.settings().max_scan_tuples,
        )
        .await?;
        Ok(SearchResponse::new(collection.metric, hits))
    })
    .await
}

/// How long a search answer is reused: invalidation drops it at once, so
/// the TTLs only bound memory and a missed invalidation.
const SEARCH_CACHE: EntryOptions =
    EntryOptions::new(Duration::from_secs(30), Duration::from_secs(300));

/// Answers a search from the two-level cache, keyed by the collections and
/// the request body's digest (same bytes, same answer). Each collection's
/// tags drop it: `vector.*` (its vectors), `document.*` (hits carry the
/// linked documents) and `collection.*`. The caller has checked the
/// permission already; the answer does not depend on the role.
async fn cached_search<F, Fut>(
    ctx: &TenantContext,
    collections: &[&str],
    body: &[u8],
    search: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<SearchResponse, ApiError>>,
{
    let tenant = ctx.tenant_id();
    let mut key = CacheKey::tenant(tenant, "vector-search");
    for name in collections {
        key = key.id(name);
    }
    let key = key.vary("body", hex::encode(Sha256::digest(body))).build();
    let mut tags = vec![Tag::whole_tenant(tenant)];
    for name in collections {
        tags.push(Tag::tenant(tenant, "collection", [*name]));
        tags.push(Tag::tenant(tenant, "vectors", [*name]));
        tags.push(Tag::tenant(tenant, "documents", [*name]));
    }
    let json: String = ctx
        .cache()
        .get_or_create(&key, &tags, SEARCH_CACHE, || async {
            let answer = search().await?;
            serde_json::to_string(&answer).map_err(|e| ApiError::internal(anyhow::Error::new(e)))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/search",
    operation_id = "searchAcrossCollections",
    tag = "vectors",
    summary = "Search several collections",
    description = "Top-k over up to 16 collections of the same dimension and metric: candidates from each collection (oversampled), then a global merge and exact re-rank. Each hit names its `collection`.",
    request_body = CrossSearchRequest,
    responses(
        (status = 200, description = "The hits, nearest first, each with its collection", body = SearchResponse),
        (status = 404, description = "One of the collections does not exist"),
        (status = 422, description = "Mixed dimensions or metrics, no or too many collections, a bad vector"),
    ),
)]
async fn search_across(
    ctx: TenantContext,
    Extension(builder): Extension<IndexBuilder>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Vectors, Action::Read)?;
    let request: CrossSearchRequest = parse_body(&headers, &body)?;
    let (names, request) = request.into_parts();
    search::check_collection_names(&names)?;
    let keyed: Vec<&str> = names.iter().map(String::as_str).collect();
    cached_search(&ctx, &keyed, &body, || async {
        let mut collections = Vec::with_capacity(names.len());
        for name in &names {
            collections.push(collection(&ctx, name).await?);
        }
        let params = search::cross_params(request, &collections)?;
        let hits = search::search_many(
            ctx.pool(),
            &collections,
            &params,
            builder.settings().max_scan_tuples,
        )
        .await?;
        // Non-empty: `check_collection_names` requires at least one.
        let metric = collections
            .first()
            .map(|c| c.metric)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no collections")))?;
        Ok(SearchResponse::new(metric, hits))
    })
    .await
}
