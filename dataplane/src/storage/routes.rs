//! Routes of the storage API and their handlers: authorise ([`super::access`]),
//! extract, then call the operation modules.
//!
//! | method | path (under `/v1/tenants/{tenant}`) | permission |
//! | --- | --- | --- |
//! | GET | `buckets/{b}` | buckets:read |
//! | GET | `buckets/{b}/objects` (list) | objects:read |
//! | PUT | `buckets/{b}/objects/{key}` (upload, or copy with `x-strata-copy-source`) | objects:write (+ objects:read of the source) |
//! | GET, HEAD | `buckets/{b}/objects/{key}` | objects:read, or a public bucket, or a presigned GET URL |
//! | DELETE | `buckets/{b}/objects/{key}` | objects:delete |
//! | POST | `buckets/{b}/presign` | objects:read (GET URLs), objects:write (PUT URLs) |
//! | POST, GET | `buckets/{b}/uploads` | objects:write, objects:read |
//! | GET, POST, DELETE | `buckets/{b}/uploads/{upload}` (parts, complete, abort) | objects:read, :write, :delete |
//! | PUT | `buckets/{b}/uploads/{upload}/parts/{part}` | objects:write |
//! | POST | `signing-keys/rotate` | buckets:manage |

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use tower_http::timeout::TimeoutLayer;

use super::access::{authorize, authorize_credential};
use super::keys::key_of_path;
use super::{multipart, objects, presign};
use crate::app::AppState;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::problem::ApiError;
use crate::http::{extract::accept_json, finish_problems};
use crate::tenancy::{Action, Resource};

/// The storage routes with their own layers: no JSON-only `Accept` rule on
/// object bodies, no body limit on streamed bodies (the JSON endpoints
/// keep `max_body_bytes`), a longer timeout, problem+json everywhere.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let timeout = state.storage.settings.request_timeout;
    let json = || middleware::from_fn(accept_json);
    Router::new()
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}",
            get(get_bucket).layer(json()),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/objects",
            get(list_objects).layer(json()),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/objects/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/presign",
            post(presign_url).layer(json()),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/uploads",
            post(create_upload).get(list_uploads).layer(json()),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}",
            get(list_parts)
                .post(complete_upload)
                .delete(abort_upload)
                .layer(json()),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}/parts/{part}",
            put(upload_part),
        )
        // Image transforms (issue 11).
        .merge(crate::media::routes::routes())
        .route(
            "/v1/tenants/{tenant}/signing-keys/rotate",
            post(rotate_signing_keys).layer(json()),
        )
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // Inside finish_problems, so a 429 gets its request id too.
        .layer(middleware::from_fn_with_state(
            state.http.gateway.clone(),
            crate::gateway::rate_limits,
        ))
        .layer(middleware::from_fn(finish_problems))
}

#[derive(Deserialize)]
struct BucketPath {
    tenant: String,
    bucket: String,
}

#[derive(Deserialize)]
struct ObjectPath {
    tenant: String,
    bucket: String,
    #[allow(dead_code)]
    key: String,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}",
    operation_id = "getBucket",
    tag = "buckets",
    summary = "Get a bucket",
    description = "Its rules (as the Bucket resource set them) and its usage.",
    responses(
        (status = 200, description = "The bucket", body = crate::openapi::storage::BucketView, headers(("ETag" = String, description = "A digest of the answer (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn get_bucket(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Buckets,
        Action::Read,
    )
    .await?;
    let usage = super::quota::bucket_usage(&access.pool, access.bucket.id).await?;
    let stored_bytes = crate::media::variants::stored_bytes(&access.pool, access.bucket.id).await?;
    let b = &access.bucket;
    // ETag: a digest of the answer (rules and usage change it); no
    // Last-Modified: nothing records when usage last moved.
    let response = axum::Json(serde_json::json!({
        "name": b.name,
        "public": b.public,
        "writable": b.writable,
        "quota_bytes": b.quota_bytes,
        "quota_objects": b.quota_objects,
        "max_object_size": b.max_object_size,
        "allowed_content_types": b.allowed_content_types,
        "antivirus_scan": b.antivirus_scan,
        "compression": b.compression,
        "image_transforms": b.image_transforms,
        // `bytes` is what quotas count (what users sent, and variants);
        // `stored_bytes` what the blobs hold (compressed where stored so).
        "usage": {"bytes": usage.bytes, "objects": usage.objects, "stored_bytes": stored_bytes},
    }))
    .into_response();
    Ok(crate::http::preconditions::conditional_json(response, &method, &headers).await)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/objects",
    operation_id = "listObjects",
    tag = "objects",
    summary = "List objects",
    description = "In byte order of their keys, optionally under a prefix and grouped at a delimiter (`common_prefixes`); pages of at most 1000 entries and prefixes together.",
    params(objects::ListParams),
    responses(
        (status = 200, description = "A page; `Link: rel=next` when there is more", body = objects::ListPage, headers(("ETag" = String, description = "A digest of the page (strong)"))),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
    ),
)]
async fn list_objects(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    Query(params): Query<objects::ListParams>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Read,
    )
    .await?;
    let response = objects::list(access, &state.http.cursors, params, &uri).await?;
    // ETag: a digest of the page (no Last-Modified: see conditional_json).
    Ok(crate::http::preconditions::conditional_json(response, &method, &headers).await)
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}",
    operation_id = "putObject",
    tag = "objects",
    summary = "Upload (or copy) an object",
    description = "Streams the body (with `Content-Length` or chunked) to a new blob; the object appears, or replaces the previous version atomically, only once every byte is stored (and, in buckets that scan, found clean). With `x-strata-copy-source: <bucket>/<key>` the body is ignored and the source is copied inside the store. Presigned PUT URLs work without a credential.",
    params(
        ("key" = String, Path, description = "The object key, URL-encoded: 1 to 1024 bytes of UTF-8, no control characters or backslash, no leading `/`, no `.`/`..` or empty segments"),
        ("Content-Type" = Option<String>, Header, description = "Stored and served back; checked against the bucket's allowed types and the body's first bytes"),
        ("Cache-Control" = Option<String>, Header, description = "Stored and served back"),
        ("Content-Disposition" = Option<String>, Header, description = "Stored and served back (`attachment` is forced for active types)"),
        ("x-strata-meta-*" = Option<String>, Header, description = "User metadata, at most 2 KiB in all"),
        ("x-strata-copy-source" = Option<String>, Header, description = "Server-side copy from `<bucket>/<key>` of the same tenant"),
        ("If-Match" = Option<String>, Header, description = "Write only if the current `ETag` is one of these"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only (exactly one of concurrent creates wins)"),
        ("If-Unmodified-Since" = Option<String>, Header, description = "Write only if not modified since"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The object's bytes (any type)"),
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::storage::ObjectView, headers(("ETag" = String))),
        (status = 201, description = "Created", body = crate::openapi::storage::ObjectView, headers(("ETag" = String))),
        (status = 409, description = "The bucket is being deleted"),
        (status = 412, description = "A precondition does not hold"),
        (status = 413, description = "Larger than the bucket's maximum object size (or the presigned URL's limit)"),
        (status = 415, description = "Type not allowed by the bucket, or the first bytes are another format, or a polyglot"),
        (status = 422, description = "The antivirus scan found malware; nothing was stored"),
        (status = 507, description = "The bucket's or the tenant's quota would be exceeded"),
    ),
)]
async fn put_object(
    State(state): State<AppState>,
    Path(p): Path<ObjectPath>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of_path(uri.path())?;
    let access = authorize(
        &state,
        &method,
        &headers,
        uri.query(),
        &p.tenant,
        &p.bucket,
        Some(&key),
        Action::Write,
    )
    .await?;
    if let Some(source) = headers.get(super::COPY_SOURCE_HEADER) {
        if access.presigned.is_some() {
            return Err(ApiError::Forbidden("presigned URLs cannot copy".into()));
        }
        let (source_bucket, source_key) = objects::copy_source(source)?;
        // The caller must be able to read the source too.
        let source = authorize_credential(
            &state,
            &headers,
            &p.tenant,
            &source_bucket,
            Resource::Objects,
            Action::Read,
        )
        .await?;
        return objects::copy(
            &state.storage,
            access,
            &source.bucket,
            &source_key,
            key,
            &method,
            &headers,
        )
        .await;
    }
    objects::put(&state.storage, access, key, &method, &headers, body).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}",
    operation_id = "getObject",
    tag = "objects",
    summary = "Download an object",
    description = "Streams the bytes with the stored type, `Cache-Control`, `Content-Disposition` and `x-strata-meta-*`, always with `X-Content-Type-Options: nosniff` and a sandboxing CSP; active types (HTML, SVG, XML, JavaScript) as attachments. One `Range` (suffix ranges too) gives 206; several ranges give the whole object. No credential is needed in public buckets or with a presigned GET URL.",
    params(
        ("key" = String, Path, description = "The object key, URL-encoded"),
        ("Range" = Option<String>, Header, description = "`bytes=a-b`, `bytes=a-` or `bytes=-n`"),
        ("If-Range" = Option<String>, Header, description = "Apply `Range` only if this ETag or date is current"),
        ("If-Match" = Option<String>, Header, description = "412 unless the current `ETag` is one of these"),
        ("If-None-Match" = Option<String>, Header, description = "304 if the current `ETag` is one of these"),
        ("If-Modified-Since" = Option<String>, Header, description = "304 if not modified since"),
        ("If-Unmodified-Since" = Option<String>, Header, description = "412 if modified since"),
    ),
    security((), ("jwt" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The object's bytes, with its stored type", content_type = "application/octet-stream", headers(("ETag" = String), ("Last-Modified" = String), ("Content-Length" = u64))),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", headers(("Content-Range" = String))),
        (status = 304, description = "Not modified"),
        (status = 412, description = "A precondition does not hold"),
        (status = 416, description = "The range starts past the end; `Content-Range: bytes */<size>`"),
    ),
)]
async fn get_object(
    State(state): State<AppState>,
    Path(p): Path<ObjectPath>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = key_of_path(uri.path())?;
    let access = authorize(
        &state,
        &method,
        &headers,
        uri.query(),
        &p.tenant,
        &p.bucket,
        Some(&key),
        Action::Read,
    )
    .await?;
    objects::read(
        &state.storage,
        &state.tenancy.cache,
        access,
        key,
        &method,
        &headers,
    )
    .await
}

/// HEAD is served by [`get_object`] (axum routes HEAD to GET handlers);
/// this only describes it.
#[utoipa::path(
    head,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}",
    operation_id = "headObject",
    tag = "objects",
    summary = "An object's headers",
    description = "What GET answers, without the body.",
    params(("key" = String, Path, description = "The object key, URL-encoded")),
    security((), ("jwt" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The object's headers", headers(("ETag" = String), ("Content-Length" = u64))),
        (status = 304, description = "Not modified"),
        (status = 412, description = "A precondition does not hold"),
    ),
)]
#[allow(dead_code)]
async fn head_object() {}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}",
    operation_id = "deleteObject",
    tag = "objects",
    summary = "Delete an object",
    params(
        ("key" = String, Path, description = "The object key, URL-encoded"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the current `ETag` is one of these"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "A precondition does not hold"),
    ),
)]
async fn delete_object(
    State(state): State<AppState>,
    Path(p): Path<ObjectPath>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = key_of_path(uri.path())?;
    let access = authorize(
        &state,
        &method,
        &headers,
        None,
        &p.tenant,
        &p.bucket,
        Some(&key),
        Action::Delete,
    )
    .await?;
    access.bucket.writable_or_conflict()?;
    objects::delete(&state.storage, access, key, &method, &headers).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/presign",
    operation_id = "presignUrl",
    tag = "objects",
    summary = "Issue a presigned URL",
    description = "A URL on this data plane that lets its holder GET (or PUT) one object until it expires, without a credential. Signed (HMAC-SHA256) over tenant, method, bucket, key, expiry, key id and the optional content type and length limit; a GET URL cannot PUT.",
    request_body = presign::PresignBody,
    responses(
        (status = 200, description = "The URL", body = presign::PresignedUrl),
    ),
)]
async fn presign_url(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    headers: HeaderMap,
    Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: Idempotent<Json<presign::PresignBody>>,
) -> Result<Response, ApiError> {
    let action = if body.method.eq_ignore_ascii_case("PUT") {
        Action::Write
    } else {
        Action::Read
    };
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        action,
    )
    .await?;
    // Issuing changes nothing, but a retry with the key gets the very URL
    // (and expiry) the first request issued.
    let run = match access.begin_idempotent(idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let url = presign::issue(
        &access.pool,
        state.storage.settings.presign_max_expiry,
        &access.tenant.name,
        &access.bucket.name,
        body,
    )
    .await?;
    run.finish(axum::Json(url).into_response()).await
}

#[derive(Deserialize)]
struct TenantPath {
    tenant: String,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/signing-keys/rotate",
    operation_id = "rotateSigningKeys",
    tag = "objects",
    summary = "Rotate the presigned URL signing key",
    description = "New URLs are signed with a new key; URLs signed with the previous ones keep working for the grace period.",
    responses(
        (status = 200, description = "The new key's id", body = crate::openapi::storage::RotatedKey),
    ),
)]
async fn rotate_signing_keys(
    State(state): State<AppState>,
    Path(p): Path<TenantPath>,
    headers: HeaderMap,
    Idempotent {
        key: idempotency_key,
        ..
    }: Idempotent<Bytes>,
) -> Result<Response, ApiError> {
    let ctx =
        crate::tenancy::context::authenticate(&headers, &p.tenant, &state.http, &state.tenancy)
            .await?;
    ctx.require(Resource::Buckets, Action::Manage)?;
    let mut run = match idempotency::begin_for(&ctx, idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let id = presign::rotate(run.db()).await?;
    run.finish(axum::Json(serde_json::json!({"key_id": id})).into_response())
        .await
}

#[derive(Deserialize)]
struct UploadPath {
    tenant: String,
    bucket: String,
    upload: String,
}

#[derive(Deserialize)]
struct PartPath {
    tenant: String,
    bucket: String,
    upload: String,
    part: String,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads",
    operation_id = "createUpload",
    tag = "uploads",
    summary = "Start a multipart upload",
    request_body = multipart::CreateBody,
    responses(
        (status = 201, description = "The upload", body = crate::openapi::storage::UploadView),
        (status = 409, description = "The bucket is being deleted"),
        (status = 415, description = "Type not allowed by the bucket"),
    ),
)]
async fn create_upload(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    headers: HeaderMap,
    Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: Idempotent<Json<multipart::CreateBody>>,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Write,
    )
    .await?;
    let mut run = match access.begin_idempotent(idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let response = multipart::create(&access, run.db(), body).await?;
    run.finish(response).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads",
    operation_id = "listUploads",
    tag = "uploads",
    summary = "List multipart uploads in progress",
    params(crate::http::pagination::PageParams),
    responses(
        (status = 200, description = "A page of uploads", body = crate::openapi::storage::UploadPage),
    ),
)]
async fn list_uploads(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    Query(page): Query<crate::http::pagination::PageParams>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Read,
    )
    .await?;
    multipart::list_uploads(access, &state.http.cursors, page, &uri).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}",
    operation_id = "listParts",
    tag = "uploads",
    summary = "An upload and its parts",
    params(("upload" = String, Path, description = "The upload id")),
    responses(
        (status = 200, description = "The upload with its parts in order", body = crate::openapi::storage::UploadView),
    ),
)]
async fn list_parts(
    State(state): State<AppState>,
    Path(p): Path<UploadPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Read,
    )
    .await?;
    multipart::list_parts(access, &p.upload).await
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}/parts/{part}",
    operation_id = "uploadPart",
    tag = "uploads",
    summary = "Upload one part",
    description = "Parts are numbered 1 to 10,000; every part but the last must have at least 5 MiB (checked at completion). Re-sending a part number replaces it. The part's quota is reserved while it streams.",
    params(
        ("upload" = String, Path, description = "The upload id"),
        ("part" = u32, Path, description = "1 to 10000"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The part's bytes"),
    responses(
        (status = 200, description = "The part's ETag (quote it when completing)", body = crate::openapi::storage::PartView, headers(("ETag" = String))),
        (status = 413, description = "Larger than the bucket's maximum object size"),
        (status = 507, description = "The bucket's or the tenant's quota would be exceeded"),
    ),
)]
async fn upload_part(
    State(state): State<AppState>,
    Path(p): Path<PartPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Write,
    )
    .await?;
    multipart::upload_part(&state.storage, access, &p.upload, &p.part, &headers, body).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}",
    operation_id = "completeUpload",
    tag = "uploads",
    summary = "Complete a multipart upload",
    description = "The parts, ascending, each with the ETag its upload returned, become the object (no copy: its bytes are the parts' blobs in order). Preconditions apply as for PUT.",
    params(
        ("upload" = String, Path, description = "The upload id"),
        ("If-Match" = Option<String>, Header, description = "Complete only if the key's current `ETag` is one of these"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key does not exist"),
    ),
    request_body = multipart::CompleteBody,
    responses(
        (status = 200, description = "Replaced an object", body = crate::openapi::storage::ObjectView),
        (status = 201, description = "Created the object", body = crate::openapi::storage::ObjectView),
        (status = 412, description = "A precondition does not hold"),
    ),
)]
async fn complete_upload(
    State(state): State<AppState>,
    Path(p): Path<UploadPath>,
    method: Method,
    headers: HeaderMap,
    Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: Idempotent<Json<multipart::CompleteBody>>,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Write,
    )
    .await?;
    let mut run = match access.begin_idempotent(idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let (response, leftovers) = multipart::complete(
        &state.storage,
        &access,
        run.db(),
        &p.upload,
        &method,
        &headers,
        body,
    )
    .await?;
    let response = run.finish(response).await?;
    multipart::discard(&state.storage, &access, &leftovers).await;
    Ok(response)
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}",
    operation_id = "abortUpload",
    tag = "uploads",
    summary = "Abort a multipart upload",
    description = "Its parts are deleted.",
    params(("upload" = String, Path, description = "The upload id")),
    responses((status = 204, description = "Aborted")),
)]
async fn abort_upload(
    State(state): State<AppState>,
    Path(p): Path<UploadPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = authorize_credential(
        &state,
        &headers,
        &p.tenant,
        &p.bucket,
        Resource::Objects,
        Action::Delete,
    )
    .await?;
    multipart::abort(&state.storage, access, &p.upload).await
}
