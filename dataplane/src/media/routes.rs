//! Routes of image transforms:
//!
//! | method | path (under `/v1/tenants/{tenant}`) | who |
//! | --- | --- | --- |
//! | GET, HEAD | `buckets/{b}/render/{key}` | objects:read; or a signed render URL; or, in a public bucket, a named preset the tenant allows |
//! | POST | `buckets/{b}/render-urls` | objects:read: issues a signed render URL |
//!
//! Presets: the tenant's config key `media.presets`, an object of name →
//! transform fields (`{"thumb": {"w": 200, "h": 200, "fit": "cover"}}`).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::{Params, RenderQuery};
use super::sign::{self, RenderClaims};
use crate::app::AppState;
use crate::http::extract::{Json, Path};
use crate::http::problem::{ApiError, FieldError};
use crate::storage::access::{Access, authorize_credential};
use crate::storage::keys::ObjectKey;
use crate::tenancy::{Action, Resource};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/render/{*key}",
            get(render),
        )
        .route(
            "/v1/tenants/{tenant}/buckets/{bucket}/render-urls",
            post(sign_url).layer(axum::middleware::from_fn(crate::http::extract::accept_json)),
        )
}

#[derive(Deserialize)]
struct RenderPath {
    tenant: String,
    bucket: String,
    #[allow(dead_code)]
    key: String,
}

#[derive(Deserialize)]
struct BucketPath {
    tenant: String,
    bucket: String,
}

fn render_key(uri: &Uri) -> Result<ObjectKey, ApiError> {
    let raw = uri
        .path()
        .split_once("/render/")
        .map(|(_, tail)| tail)
        .unwrap_or("");
    ObjectKey::from_raw_path(raw)
        .map_err(|m| ApiError::invalid_parameter("path", "key", format!("the object key {m}")))
}

fn missing() -> ApiError {
    ApiError::Unauthenticated("missing credential".into())
}

/// The tenant's named presets (`media.presets` in its config).
async fn presets(pool: &sqlx::PgPool) -> Result<BTreeMap<String, Value>, ApiError> {
    let value: Option<Value> =
        sqlx::query_scalar("SELECT value FROM config WHERE key = 'media.presets'")
            .fetch_optional(pool)
            .await?;
    Ok(value
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default())
}

/// Transform fields from a JSON object (presets, the signing body).
fn fields_of(
    object: &BTreeMap<String, Value>,
    pointer: &str,
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in object {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(ApiError::validation(vec![FieldError::new(
                    format!("{pointer}/{name}"),
                    "a string or a number",
                )]));
            }
        };
        query.append_pair(name, &text);
    }
    let query = query.finish();
    let parsed = RenderQuery::parse(Some(&query))?;
    if parsed.preset.is_some() || parsed.signature.is_some() {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer.to_string(),
            "transform fields only",
        )]));
    }
    Ok(parsed.fields)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/render/{key}",
    operation_id = "renderImage",
    tag = "objects",
    summary = "Render an image (resize, crop, convert)",
    description = "Renders an image object of a bucket with `imageTransforms`: `w`/`width`, `h`/`height` (1 to 4096), `fit` (`cover` default, `contain`, `fill`, `inside`), `g`/`gravity` (`center`, `north`, …, `southwest`), `fmt`/`format` (`jpeg`, `png`, `webp`, `auto` — from `Accept`, with `Vary: Accept`; `avif` only where the data plane was built with the `avif` feature, else 400), `q`/`quality` (1 to 100, default 80). EXIF orientation is applied and metadata stripped; animations give their first frame. Results are kept as variants (keyed by the source's ETag and the canonical parameters) and made once under concurrent identical requests. Without a credential: a signed render URL (`POST …/render-urls`), or `preset=<name>` in a public bucket for presets the tenant allows (`media.presets` in its config).",
    params(
        ("key" = String, Path, description = "The object key, URL-encoded"),
        ("w" = Option<u32>, Query, description = "Output width"),
        ("h" = Option<u32>, Query, description = "Output height"),
        ("fit" = Option<String>, Query, description = "cover, contain, fill or inside"),
        ("g" = Option<String>, Query, description = "Gravity of cover crops and contain placement"),
        ("fmt" = Option<String>, Query, description = "jpeg, png, webp or auto; avif only in builds with the `avif` feature (otherwise 400)"),
        ("q" = Option<u8>, Query, description = "Quality, 1 to 100"),
        ("preset" = Option<String>, Query, description = "A named preset (public buckets, without a credential)"),
        ("If-None-Match" = Option<String>, Header, description = "304 if the variant's `ETag` is one of these"),
    ),
    security((), ("jwt" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The rendered image", content_type = "image/webp", headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
        (status = 403, description = "Signature invalid or expired, preset not allowed, or transforms disabled on the bucket"),
        (status = 422, description = "Not a decodable image (`invalid-image`), or over the limits (`image-too-large`)"),
        (status = 503, description = "Every transform slot is busy, or the time budget ran out; `Retry-After`"),
    ),
)]
async fn render(
    State(state): State<AppState>,
    Path(p): Path<RenderPath>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = render_key(&uri)?;
    let query = RenderQuery::parse(uri.query())?;
    let max_side = state.storage.media.settings.limits.max_output_side;
    let signed = query.signature.is_some() || query.expires.is_some() || query.key_id.is_some();
    let (access, params) = if headers.contains_key(header::AUTHORIZATION) {
        let access = authorize_credential(
            &state,
            &headers,
            &p.tenant,
            &p.bucket,
            Resource::Objects,
            Action::Read,
        )
        .await?;
        if query.preset.is_some() {
            let all = presets(&access.pool).await?;
            let params = preset_params(&all, &query, max_side)?;
            (access, params)
        } else {
            let params = Params::from_fields(&query.fields, max_side)?;
            (access, params)
        }
    } else if signed {
        let params = Params::from_fields(&query.fields, max_side)?;
        let handle = state.tenancy.open(&p.tenant).await?;
        let bucket = state
            .storage
            .buckets
            .resolve(handle.tenant.id, &p.bucket)
            .await?
            .ok_or(ApiError::NotFound)?;
        sign::verify(
            &handle.pool,
            state.storage.settings.presign_grace,
            state.storage.settings.presign_max_expiry,
            &p.tenant,
            &p.bucket,
            &key,
            &params.canonical(),
            query.expires.as_deref(),
            query.key_id.as_deref(),
            query.signature.as_deref(),
        )
        .await?;
        let actor = format!("signed-render:{}", query.key_id.clone().unwrap_or_default());
        (
            Access {
                pool: handle.pool,
                tenant: handle.tenant,
                bucket,
                actor,
                presigned: None,
                idempotency_scope: None,
            },
            params,
        )
    } else if query.preset.is_some() {
        // Public buckets only; anything else is the 401 of any request
        // without a credential (nothing about the tenant is revealed).
        let Ok(handle) = state.tenancy.open(&p.tenant).await else {
            return Err(missing());
        };
        let Ok(Some(bucket)) = state
            .storage
            .buckets
            .resolve(handle.tenant.id, &p.bucket)
            .await
        else {
            return Err(missing());
        };
        if !bucket.public {
            return Err(missing());
        }
        let all = presets(&handle.pool).await?;
        let params = preset_params(&all, &query, max_side)?;
        (
            Access {
                pool: handle.pool,
                tenant: handle.tenant,
                bucket,
                actor: "anonymous".into(),
                presigned: None,
                idempotency_scope: None,
            },
            params,
        )
    } else {
        return Err(missing());
    };
    super::render(&state.storage, access, key, params, &headers).await
}

fn preset_params(
    all: &BTreeMap<String, Value>,
    query: &RenderQuery,
    max_side: u32,
) -> Result<Params, ApiError> {
    let name = query.preset.as_deref().unwrap_or("");
    if !query.fields.is_empty() {
        return Err(ApiError::invalid_parameter(
            "query",
            "preset",
            "a preset takes no other transform parameters",
        ));
    }
    let Some(Value::Object(preset)) = all.get(name) else {
        return Err(ApiError::Forbidden(format!(
            "the tenant allows no preset named {name:?}"
        )));
    };
    let preset: BTreeMap<String, Value> = preset.clone().into_iter().collect();
    let fields = fields_of(&preset, "/preset").map_err(|_| {
        ApiError::internal(anyhow::anyhow!("the tenant's preset {name:?} is invalid"))
    })?;
    Params::from_fields(&fields, max_side)
}

/// `POST …/render-urls` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    /// The object key (not URL-encoded).
    #[schema(example = "photos/cat.jpg")]
    pub key: String,
    /// Transform fields as in the render query (`w`, `h`, `fit`, `g`,
    /// `fmt`, `q`, or their long names).
    #[serde(default)]
    #[schema(value_type = Object, example = json!({"w": 400, "fmt": "webp"}))]
    pub transform: BTreeMap<String, Value>,
    /// Seconds the URL stays valid (default 900; at most the configured
    /// maximum of presigned URLs).
    pub expires_in: Option<u64>,
}

/// A signed render URL.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignedRenderUrl {
    /// Path and query on this data plane (prefix its address).
    pub url: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/buckets/{bucket}/render-urls",
    operation_id = "signRenderUrl",
    tag = "objects",
    summary = "Issue a signed render URL",
    description = "A render URL that works without a credential until it expires: HMAC-SHA256 with the tenant's presigned-URL signing key over tenant, bucket, key, the canonical transform and the expiry. Changing any of them (or the signature) gives 403.",
    request_body = SignBody,
    responses(
        (status = 200, description = "The URL", body = SignedRenderUrl),
    ),
)]
async fn sign_url(
    State(state): State<AppState>,
    Path(p): Path<BucketPath>,
    headers: HeaderMap,
    crate::http::idempotency::Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: crate::http::idempotency::Idempotent<Json<SignBody>>,
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
    let key = ObjectKey::parse(&body.key).map_err(|m| {
        ApiError::validation(vec![FieldError::new("/key", format!("the object key {m}"))])
    })?;
    let fields = fields_of(&body.transform, "/transform")?;
    let params = Params::from_fields(&fields, state.storage.media.settings.limits.max_output_side)?;
    let max_expiry = state.storage.settings.presign_max_expiry;
    let expires_in = body.expires_in.unwrap_or(900.min(max_expiry.as_secs()));
    if expires_in == 0 || expires_in > max_expiry.as_secs() {
        return Err(ApiError::validation(vec![FieldError::new(
            "/expires_in",
            format!("must be between 1 and {} seconds", max_expiry.as_secs()),
        )]));
    }
    // A retry with the key gets the very URL the first request issued.
    let run = match access.begin_idempotent(idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let (key_id, secret) = crate::storage::presign::signing_key(&access.pool).await?;
    let claims = RenderClaims {
        tenant: access.tenant.name.clone(),
        bucket: access.bucket.name.clone(),
        key,
        params: params.canonical(),
        expires: sign::now_unix() + expires_in,
        key_id,
    };
    let signature = claims.sign(&secret);
    // Built in a block: the serializer is not `Send`, and the handler
    // awaits the idempotency record after this.
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in params.query_pairs() {
            query.append_pair(name, &value);
        }
        query.append_pair(sign::EXPIRES, &claims.expires.to_string());
        query.append_pair(sign::KEY_ID, &claims.key_id);
        query.append_pair(sign::SIGNATURE, &signature);
        query.finish()
    };
    let url = format!(
        "/v1/tenants/{}/buckets/{}/render/{}?{query}",
        claims.tenant,
        claims.bucket,
        claims.key.url_path(),
    );
    run.finish(
        axum::Json(SignedRenderUrl {
            url,
            expires_at: claims.expires,
        })
        .into_response(),
    )
    .await
}
