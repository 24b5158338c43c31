//! Events (issue 10): every state change of the APIs is announced exactly
//! once in effect, to Redis (cache busting) and to the tenant's webhooks.
//!
//! - [`event`]: the [`Event`] a write records and [`record`], which appends
//!   it to the tenant's `outbox` in the write's own transaction (so a change
//!   and its announcement commit or vanish together). Storage and every
//!   other API call [`record`]; the event types are listed in [`types`].
//! - [`hint`]: after a request that recorded events, a wake-up hint goes to
//!   Redis (`v1:dispatch:hints`) so a dispatcher looks at that tenant now.
//! - [`dispatcher`]: a task in each data plane replica (`--dispatcher on`)
//!   that claims due outbox rows `FOR UPDATE SKIP LOCKED` in bounded
//!   batches, publishes them to Redis, fans them out into webhook
//!   deliveries, delivers those, retries with capped exponential backoff
//!   and full jitter, dead-letters after N attempts and prunes.
//! - [`redis_sink`]: the channel scheme and message of the cache-bust feed.
//! - [`sinks`]: in-process consumers the dispatcher runs on each batch
//!   (media's stale-variant removal).
//! - [`webhooks`]: endpoints API, Standard Webhooks signing, SSRF policy,
//!   delivery.
//! - [`admin`]: the tenant admin's backlog, dead letters and replay.
//! - [`metrics`]: Prometheus metrics on the process registry.
//!
//! docs/events.md is the user-facing description (types, payloads, channel,
//! signatures, retries).

pub mod admin;
pub mod dispatcher;
pub mod envelope;
pub mod event;
pub mod hint;
pub mod metrics;
pub mod redis_sink;
pub mod settings;
pub mod sinks;
pub mod types;
pub mod webhooks;

use axum::Router;
use axum::routing::{get, post};

pub use dispatcher::Dispatcher;
pub use event::{Event, record, record_all};
pub use settings::{EventSettings, EventsArgs};

use crate::app::AppState;

/// The events routes (webhooks, backlog, dead letters, replay), to be
/// merged into the API router.
pub fn routes() -> Router<AppState> {
    use webhooks::endpoints as ep;
    Router::new()
        .route(
            "/v1/tenants/{tenant}/webhooks",
            post(ep::create).get(ep::list),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{id}",
            get(ep::get).patch(ep::update).delete(ep::remove),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{id}/rotate-secret",
            post(ep::rotate_secret),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{id}/deliveries",
            get(ep::list_deliveries),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}",
            get(ep::get_delivery),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/replay",
            post(ep::replay_delivery),
        )
        .route("/v1/tenants/{tenant}/events/backlog", get(admin::backlog))
        .route("/v1/tenants/{tenant}/events/dead", get(admin::list_dead))
        .route(
            "/v1/tenants/{tenant}/events/{event}/replay",
            post(admin::replay_event),
        )
}
