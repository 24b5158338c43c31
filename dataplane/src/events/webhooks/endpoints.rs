//! The webhooks API (under `/v1/tenants/{tenant}`, `keys:manage`):
//!
//! | method | path | |
//! | --- | --- | --- |
//! | POST, GET | `webhooks` | register (201 with the secret), list |
//! | GET, PATCH, DELETE | `webhooks/{id}` | read, change (`If-Match`), delete |
//! | POST | `webhooks/{id}/rotate-secret` | new secret; the old one keeps signing for the overlap |
//! | GET | `webhooks/{id}/deliveries` | deliveries, newest first (`?state=`) |
//! | GET | `webhooks/{id}/deliveries/{delivery}` | one delivery with every attempt |
//! | POST | `webhooks/{id}/deliveries/{delivery}/replay` | a dead (or delivered) delivery again |
//!
//! A URL must be `https` (`http` only with `--webhook-allow-http`) and
//! resolve to public addresses only (`--webhook-allow-private` for local
//! use; see [`super::ssrf`]). At most [`MAX_ENDPOINTS`] per tenant.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::signing::generate_secret;
use super::ssrf::{check_resolves, check_url};
use crate::events::admin::require_admin;
use crate::events::settings;
use crate::events::types::is_filter;
use crate::http::HttpContext;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::pagination::{Page, PageLimits, Position, QueryFingerprint};
use crate::http::preconditions::{self, EntityTag, Requirement};
use crate::http::problem::{ApiError, FieldError};
use crate::identity::ts;
use crate::tenancy::TenantContext;

pub const MAX_ENDPOINTS: i64 = 20;
const MAX_FILTERS: usize = 64;
const MAX_DESCRIPTION: usize = 500;
/// Longest overlap of a rotation (the default is a day).
const MAX_OVERLAP_SECONDS: u64 = 7 * 86_400;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointView {
    #[schema(value_type = String, example = "0193b5e2-7c41-7d0a-9f6e-3a1c2b4d5e6f")]
    pub id: Uuid,
    #[schema(example = "https://hooks.example.com/strata")]
    pub url: String,
    pub description: String,
    /// Types (`document.updated`) or aggregates (`document.*`); empty: all.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Increases with every change; the `ETag` is derived from it.
    pub version: i64,
    /// Until when the previous secret still signs (after a rotation).
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn columns() -> String {
    format!(
        "id, url, description, event_types, enabled, version, \
         CASE WHEN previous_expires_at > now() THEN {} END AS previous_secret_expires_at, \
         {} AS created_at, {} AS updated_at",
        ts("previous_expires_at"),
        ts("created_at"),
        ts("updated_at")
    )
}

fn etag(view: &EndpointView) -> EntityTag {
    EntityTag::from_version(view.version)
}

fn respond(status: StatusCode, body: impl Serialize, view: &EndpointView) -> Response {
    let mut response = (status, Json(body)).into_response();
    preconditions::set_validators(response.headers_mut(), &etag(view), None);
    response
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://…` (http only when the data plane allows it).
    #[schema(example = "https://hooks.example.com/strata")]
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Types or `aggregate.*`; absent or empty: every event.
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// The create answer: the endpoint and its signing secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NewEndpointView {
    /// `whsec_<base64>`: verify `webhook-signature` with it.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
    #[serde(flatten)]
    pub endpoint: EndpointView,
}

async fn check_target(url: &str, errors: &mut Vec<FieldError>) {
    let policy = super::deliver::policy(&settings::current());
    match check_url(url, policy) {
        Ok(parsed) => {
            if let Err(reason) = check_resolves(&parsed, policy).await {
                errors.push(FieldError::new("/url", reason));
            }
        }
        Err(reason) => errors.push(FieldError::new("/url", format!("the URL {reason}"))),
    }
}

fn check_filters(filters: &[String], errors: &mut Vec<FieldError>) {
    if filters.len() > MAX_FILTERS {
        errors.push(FieldError::new(
            "/event_types",
            format!("at most {MAX_FILTERS}"),
        ));
    }
    for (i, f) in filters.iter().enumerate() {
        if !is_filter(f) {
            errors.push(FieldError::new(
                format!("/event_types/{i}"),
                "an event type (`document.updated`) or `<aggregate>.*`",
            ));
        }
    }
}

fn check_description(d: &str, errors: &mut Vec<FieldError>) {
    if d.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "/description",
            format!("at most {MAX_DESCRIPTION} characters"),
        ));
    }
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// Register a webhook endpoint
///
/// The answer carries the signing secret (also on a replay of the same
/// `Idempotency-Key`).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "The endpoint and its secret; `Location` is its URL", body = NewEndpointView, headers(("ETag" = String), ("Location" = String))),
        (status = 403, description = "The caller may not manage keys"),
        (status = 409, description = "The tenant has the most endpoints allowed"),
        (status = 422, description = "Not an allowed URL (scheme, non-public address), bad filters"),
    ),
)]
pub async fn create(
    ctx: TenantContext,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<CreateEndpoint>>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let mut errors = Vec::new();
    check_target(&body.url, &mut errors).await;
    check_filters(&body.event_types, &mut errors);
    check_description(&body.description, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    // Serialises creations, so the limit holds under concurrency.
    sqlx::query("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Err(ApiError::Conflict(format!(
            "a tenant has at most {MAX_ENDPOINTS} webhook endpoints"
        )));
    }
    let secret = generate_secret();
    let view: EndpointView = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (url, description, event_types, enabled, secret) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {}",
        columns()
    ))
    .bind(&body.url)
    .bind(&body.description)
    .bind(&body.event_types)
    .bind(body.enabled)
    .bind(&secret)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let location = format!("/v1/tenants/{}/webhooks/{}", ctx.tenant_name(), view.id);
    let mut response = respond(
        StatusCode::CREATED,
        NewEndpointView {
            secret,
            endpoint: view.clone(),
        },
        &view,
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    run.finish(response).await
}

/// List webhook endpoints
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Every endpoint (at most 20), oldest first; never the secrets", body = Page<EndpointView>),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn list(ctx: TenantContext) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let items: Vec<EndpointView> = sqlx::query_as(&format!(
        "SELECT {} FROM webhook_endpoints ORDER BY created_at, id",
        columns()
    ))
    .fetch_all(ctx.pool())
    .await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
        total: None,
    })
    .into_response())
}

async fn find(ctx: &TenantContext, id: &str) -> Result<EndpointView, ApiError> {
    let id = endpoint_id(id)?;
    sqlx::query_as(&format!(
        "SELECT {} FROM webhook_endpoints WHERE id = $1",
        columns()
    ))
    .bind(id)
    .fetch_optional(ctx.pool())
    .await?
    .ok_or(ApiError::NotFound)
}

/// Get a webhook endpoint
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint (without its secret)", body = EndpointView, headers(("ETag" = String))),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn get(
    ctx: TenantContext,
    Path((_tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let view = find(&ctx, &id).await?;
    Ok(respond(StatusCode::OK, &view, &view))
}

/// Change a webhook endpoint
///
/// Absent fields stay. Disabling keeps its pending deliveries waiting;
/// enabling sends them.
#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/webhooks/{id}",
    operation_id = "updateWebhook",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint's id"),
        ("If-Match" = Option<String>, Header, description = "Change only if the current `ETag` is one of these (412 otherwise)"),
    ),
    request_body = UpdateEndpoint,
    responses(
        (status = 200, description = "The endpoint after the change", body = EndpointView, headers(("ETag" = String))),
        (status = 403, description = "The caller may not manage keys"),
        (status = 412, description = "`If-Match` does not match"),
        (status = 422, description = "Not an allowed URL, bad filters"),
    ),
)]
pub async fn update(
    ctx: TenantContext,
    Path((_tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<UpdateEndpoint>>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    let mut errors = Vec::new();
    if let Some(url) = &body.url {
        check_target(url, &mut errors).await;
    }
    if let Some(filters) = &body.event_types {
        check_filters(filters, &mut errors);
    }
    if let Some(d) = &body.description {
        check_description(d, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    let current: EndpointView = sqlx::query_as(&format!(
        "SELECT {} FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
        columns()
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let tag = etag(&current);
    preconditions::check(
        &Method::PATCH,
        &headers,
        Some((&tag, None)),
        Requirement::Optional,
    )?;
    let view: EndpointView = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET url = coalesce($2, url), \
                description = coalesce($3, description), \
                event_types = coalesce($4, event_types), enabled = coalesce($5, enabled), \
                version = version + 1, updated_at = now() \
          WHERE id = $1 RETURNING {}",
        columns()
    ))
    .bind(id)
    .bind(&body.url)
    .bind(&body.description)
    .bind(&body.event_types)
    .bind(body.enabled)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if body.enabled == Some(true) {
        // Waiting deliveries may be due: wake a dispatcher.
        crate::events::hint::mark();
    }
    run.finish(respond(StatusCode::OK, &view, &view)).await
}

/// Delete a webhook endpoint
///
/// Its deliveries and their attempts go with it.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn remove(
    ctx: TenantContext,
    Path((_tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(ctx.pool())
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Seconds the previous secret keeps signing (default 86400, at most
    /// 7 days; 0 ends it at once).
    pub overlap_seconds: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// The new `whsec_…` secret.
    pub secret: String,
    /// Until when the previous secret also signs.
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
}

/// Rotate a webhook endpoint's secret
///
/// Deliveries are signed with both secrets (two `v1,` signatures) until
/// the overlap ends, so receivers can switch without missing one.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks/{id}/rotate-secret",
    operation_id = "rotateWebhookSecret",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    request_body = RotateSecret,
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 403, description = "The caller may not manage keys"),
        (status = 422, description = "Overlap longer than 7 days"),
    ),
)]
pub async fn rotate_secret(
    ctx: TenantContext,
    Path((_tenant, id)): Path<(String, String)>,
    Idempotent {
        key,
        inner: Json(body),
    }: Idempotent<Json<RotateSecret>>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    let overlap = body.overlap_seconds.unwrap_or(86_400);
    if overlap > MAX_OVERLAP_SECONDS {
        return Err(ApiError::validation(vec![FieldError::new(
            "/overlap_seconds",
            format!("at most {MAX_OVERLAP_SECONDS}"),
        )]));
    }
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let secret = generate_secret();
    let expires: Option<Option<String>> = sqlx::query_scalar(&format!(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2, \
                previous_expires_at = now() + make_interval(secs => $3), \
                version = version + 1, updated_at = now() \
          WHERE id = $1 RETURNING CASE WHEN previous_expires_at > now() THEN {} END",
        ts("previous_expires_at")
    ))
    .bind(id)
    .bind(&secret)
    .bind(overlap as f64)
    .fetch_optional(run.db())
    .await?;
    let Some(previous_secret_expires_at) = expires else {
        return Err(ApiError::NotFound);
    };
    run.finish(
        Json(RotatedSecret {
            secret,
            previous_secret_expires_at,
        })
        .into_response(),
    )
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// The event id (`webhook-id` is `evt_` + its 32 hex digits).
    #[schema(value_type = String, example = "0193b5e2-7c41-7d0a-9f6e-3a1c2b4d5e6f")]
    pub event_id: Uuid,
    #[serde(rename = "event_type")]
    pub topic: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
}

fn delivery_columns() -> String {
    format!(
        "d.id, o.event_id, o.topic, d.state, d.attempts, d.last_status, d.last_error, \
         CASE WHEN d.state = 'pending' THEN {} END AS next_attempt_at, {} AS created_at, \
         {} AS delivered_at",
        ts("d.next_attempt_at"),
        ts("d.created_at"),
        ts("d.delivered_at"),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only deliveries in this state: `pending`, `delivered` or `dead`.
    pub state: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List an endpoint's deliveries
///
/// Newest first; each with its state, attempts and last outcome.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{id}/deliveries",
    operation_id = "listWebhookDeliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id"), DeliveryParams),
    responses(
        (status = 200, description = "A page of deliveries", body = Page<DeliveryView>),
        (status = 400, description = "Unknown state, `limit` out of range, a cursor of another list"),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn list_deliveries(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Path((_tenant, id)): Path<(String, String)>,
    Query(params): Query<DeliveryParams>,
    uri: Uri,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    if let Some(state) = &params.state
        && !matches!(state.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(ApiError::invalid_parameter(
            "query",
            "state",
            "pending, delivered or dead",
        ));
    }
    find(&ctx, &id.to_string()).await?;
    let limit = PageLimits::DEFAULT.resolve(params.limit)?;
    let fingerprint = QueryFingerprint::of(&json!({
        "list": "deliveries", "tenant": ctx.tenant_id(), "endpoint": id, "state": params.state,
    }));
    let before: Option<Position<()>> = http
        .cursors
        .decode_param(params.cursor.as_deref(), &fingerprint)?;
    let before: i64 = before.and_then(|p| p.id.parse().ok()).unwrap_or(i64::MAX);
    let rows: Vec<DeliveryView> = sqlx::query_as(&format!(
        "SELECT {} FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id \
          WHERE d.endpoint_id = $1 AND d.id < $2 AND ($3::text IS NULL OR d.state = $3) \
          ORDER BY d.id DESC LIMIT $4",
        delivery_columns()
    ))
    .bind(id)
    .bind(before)
    .bind(&params.state)
    .bind(i64::from(limit) + 1)
    .fetch_all(ctx.pool())
    .await?;
    let page = Page::from_rows(rows, limit, &http.cursors, &fingerprint, |row| Position {
        keys: (),
        id: row.id.to_string(),
    });
    Ok(page.into_response_for(&uri))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    #[schema(format = DateTime)]
    pub attempted_at: String,
    /// The receiver's HTTP status; absent when it did not answer.
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// Why there was no (successful) answer.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    /// Every attempt, oldest first.
    pub attempts_made: Vec<AttemptView>,
}

fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// Get a delivery with its attempts
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}",
    operation_id = "getWebhookDelivery",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint's id"),
        ("delivery" = i64, Path, description = "The delivery's id"),
    ),
    responses(
        (status = 200, description = "The delivery and every attempt (status, latency, error)", body = DeliveryDetail),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn get_delivery(
    ctx: TenantContext,
    Path((_tenant, id, delivery)): Path<(String, String, String)>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    let delivery = delivery_id(&delivery)?;
    let view: DeliveryView = sqlx::query_as(&format!(
        "SELECT {} FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id \
          WHERE d.endpoint_id = $1 AND d.id = $2",
        delivery_columns()
    ))
    .bind(id)
    .bind(delivery)
    .fetch_optional(ctx.pool())
    .await?
    .ok_or(ApiError::NotFound)?;
    let attempts: Vec<AttemptView> = sqlx::query_as(&format!(
        "SELECT {} AS attempted_at, status, latency_ms, error FROM webhook_attempts \
          WHERE delivery_id = $1 ORDER BY id",
        ts("attempted_at")
    ))
    .bind(delivery)
    .fetch_all(ctx.pool())
    .await?;
    Ok(Json(DeliveryDetail {
        delivery: view,
        attempts_made: attempts,
    }))
}

/// Replay a delivery
///
/// Sends the event to this endpoint again (a dead delivery gets a fresh
/// attempt budget; a delivered one is sent once more, with the same
/// `webhook-id`).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/replay",
    operation_id = "replayWebhookDelivery",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint's id"),
        ("delivery" = i64, Path, description = "The delivery's id"),
    ),
    responses(
        (status = 202, description = "Pending again", body = DeliveryView),
        (status = 403, description = "The caller may not manage keys"),
        (status = 409, description = "The delivery is still pending"),
    ),
)]
pub async fn replay_delivery(
    ctx: TenantContext,
    Path((_tenant, id, delivery)): Path<(String, String, String)>,
    Idempotent { key, .. }: Idempotent<axum::body::Bytes>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let id = endpoint_id(&id)?;
    let delivery = delivery_id(&delivery)?;
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(delivery)
    .fetch_optional(run.db())
    .await?;
    match state.as_deref() {
        None => return Err(ApiError::NotFound),
        Some("pending") => {
            return Err(ApiError::Conflict(
                "the delivery is still pending; it will be attempted".into(),
            ));
        }
        Some(_) => {}
    }
    let view: DeliveryView = sqlx::query_as(&format!(
        "WITH r AS (UPDATE webhook_deliveries SET state = 'pending', attempts = 0, dead_at = NULL, \
                      delivered_at = NULL, next_attempt_at = now() WHERE id = $1 RETURNING *) \
         SELECT {} FROM r AS d JOIN outbox o ON o.id = d.outbox_id",
        delivery_columns()
    ))
    .bind(delivery)
    .fetch_one(run.db())
    .await?;
    crate::events::hint::mark();
    run.finish((StatusCode::ACCEPTED, Json(view)).into_response())
        .await
}
