//! The tenant admin's view of its events, with no kubectl: the backlog
//! (`GET events/backlog`), dead-lettered events (`GET events/dead`) and
//! replay (`POST events/{event}/replay`, which revives the event if it is
//! dead and every dead webhook delivery of it).
//!
//! These routes, like the webhooks API, need `keys:manage` (owners and
//! admins): webhooks carry signing secrets and send the tenant's events
//! elsewhere, which is the same trust as minting credentials. (A
//! `webhooks` resource of its own needs the operator's seed to grow one.)

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::http::HttpContext;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::pagination::{Page, PageLimits, PageParams, Position, QueryFingerprint};
use crate::http::problem::ApiError;
use crate::tenancy::{Action, Resource, TenantContext};

/// 403 unless the caller may manage the tenant's integrations.
pub fn require_admin(ctx: &TenantContext) -> Result<(), ApiError> {
    ctx.require(Resource::Keys, Action::Manage)
}

/// A tenant's backlog.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    /// Events neither dispatched nor dead.
    pub pending_events: i64,
    /// Of those, events that failed at least once and wait for a retry.
    pub retrying_events: i64,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead-lettered events (Redis publication failed every attempt).
    pub dead_events: i64,
    /// Webhook deliveries not yet delivered nor dead.
    pub pending_deliveries: i64,
    /// Age of the oldest pending delivery, in seconds.
    pub oldest_pending_delivery_age_seconds: Option<f64>,
    /// Webhook deliveries that failed every attempt.
    pub dead_deliveries: i64,
}

pub async fn read_backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row: (i64, i64, Option<f64>, i64, i64, Option<f64>, i64) = sqlx::query_as(
        r#"SELECT
             (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL AND dead_at IS NULL),
             (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL AND dead_at IS NULL AND attempts > 0),
             (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox
               WHERE dispatched_at IS NULL AND dead_at IS NULL),
             (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL),
             (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'),
             (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM webhook_deliveries
               WHERE state = 'pending'),
             (SELECT count(*) FROM webhook_deliveries WHERE state = 'dead')"#,
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending_events: row.0,
        retrying_events: row.1,
        oldest_pending_age_seconds: row.2,
        dead_events: row.3,
        pending_deliveries: row.4,
        oldest_pending_delivery_age_seconds: row.5,
        dead_deliveries: row.6,
    })
}

/// Get the tenant's event backlog
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/events/backlog",
    operation_id = "getEventBacklog",
    tag = "events",
    responses(
        (status = 200, description = "Pending, retrying and dead events and webhook deliveries", body = Backlog),
        (status = 403, description = "The caller may not manage keys (owners and admins may)"),
    ),
)]
pub async fn backlog(ctx: TenantContext) -> Result<Json<Backlog>, ApiError> {
    require_admin(&ctx)?;
    Ok(Json(read_backlog(ctx.pool()).await?))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadEvent {
    /// The event id (what receivers saw as `id` / `webhook-id`).
    #[schema(value_type = String, example = "0193b5e2-7c41-7d0a-9f6e-3a1c2b4d5e6f")]
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "document.updated")]
    pub kind: String,
    pub aggregate_id: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub dead_at: String,
    #[serde(skip)]
    pub seq: i64,
}

/// List dead-lettered events
///
/// Events whose publication failed every attempt, oldest first. Dead
/// webhook deliveries are listed per endpoint
/// (`GET webhooks/{id}/deliveries?state=dead`).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/events/dead",
    operation_id = "listDeadEvents",
    tag = "events",
    params(PageParams),
    responses(
        (status = 200, description = "A page of dead events", body = Page<DeadEvent>),
        (status = 403, description = "The caller may not manage keys"),
    ),
)]
pub async fn list_dead(
    ctx: TenantContext,
    State(http): State<HttpContext>,
    Query(page): Query<PageParams>,
    uri: Uri,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let limit = PageLimits::DEFAULT.resolve(page.limit)?;
    let fingerprint =
        QueryFingerprint::of(&json!({"list": "dead-events", "tenant": ctx.tenant_id()}));
    let after: Option<Position<()>> = http
        .cursors
        .decode_param(page.cursor.as_deref(), &fingerprint)?;
    let after: i64 = after.and_then(|p| p.id.parse().ok()).unwrap_or(0);
    let rows: Vec<DeadEvent> = sqlx::query_as(&format!(
        "SELECT event_id AS id, topic AS kind, aggregate_id, attempts, last_error, \
                {} AS created_at, {} AS dead_at, id AS seq \
           FROM outbox WHERE dead_at IS NOT NULL AND id > $1 ORDER BY id LIMIT $2",
        crate::identity::ts("created_at"),
        crate::identity::ts("dead_at"),
    ))
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(ctx.pool())
    .await?;
    let page = Page::from_rows(rows, limit, &http.cursors, &fingerprint, |row| Position {
        keys: (),
        id: row.seq.to_string(),
    });
    Ok(page.into_response_for(&uri))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Whether the event itself was dead and is pending again.
    pub event: bool,
    /// How many dead webhook deliveries of it are pending again.
    pub deliveries: u64,
}

/// Replay a dead event
///
/// The event (if dead) and each of its dead webhook deliveries become
/// pending again with a fresh attempt budget; the dispatcher picks them up
/// at once. Receivers see the same event id (`webhook-id`).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/events/{event}/replay",
    operation_id = "replayEvent",
    tag = "events",
    params(("event" = String, Path, description = "The event id")),
    responses(
        (status = 202, description = "Pending again", body = Replayed),
        (status = 403, description = "The caller may not manage keys"),
        (status = 404, description = "No such event (or it was pruned)"),
        (status = 409, description = "Neither the event nor any of its deliveries is dead"),
    ),
)]
pub async fn replay_event(
    ctx: TenantContext,
    Path((_tenant, event)): Path<(String, String)>,
    Idempotent { key, .. }: Idempotent<axum::body::Bytes>,
) -> Result<Response, ApiError> {
    require_admin(&ctx)?;
    let Ok(event) = event.parse::<Uuid>() else {
        return Err(ApiError::NotFound);
    };
    let mut run = match idempotency::begin_for(&ctx, key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    let row: Option<(i64, bool)> =
        sqlx::query_as("SELECT id, dead_at IS NOT NULL FROM outbox WHERE event_id = $1 FOR UPDATE")
            .bind(event)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, dead)) = row else {
        return Err(ApiError::NotFound);
    };
    if dead {
        sqlx::query(
            "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, \
                    available_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    let deliveries = sqlx::query(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, dead_at = NULL, \
                next_attempt_at = now() WHERE outbox_id = $1 AND state = 'dead'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if !dead && deliveries == 0 {
        return Err(ApiError::Conflict(
            "neither the event nor any of its webhook deliveries is dead".into(),
        ));
    }
    tx.commit().await?;
    super::hint::mark();
    run.finish(
        (
            StatusCode::ACCEPTED,
            Json(Replayed {
                event: dead,
                deliveries,
            }),
        )
            .into_response(),
    )
    .await
}
