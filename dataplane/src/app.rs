//! The HTTP application: routes, shared state and middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use strata_servicekit::{ReadinessCheck, probe_router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::problem::Problem;

/// Dependencies every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub catalog: PgPool,
    pub redis: Option<redis::aio::ConnectionManager>,
}

/// Ready when the catalog and (if configured) Redis answer.
fn readiness(state: AppState) -> ReadinessCheck {
    Arc::new(move || {
        let state = state.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&state.catalog)
                .await
                .map_err(|e| format!("catalog: {e}"))?;
            if let Some(mut redis) = state.redis.clone() {
                let pong: String = redis::cmd("PING")
                    .query_async(&mut redis)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                if pong != "PONG" {
                    return Err(format!("redis answered {pong:?}"));
                }
            }
            Ok(())
        }
        .boxed()
    })
}

pub fn router(state: AppState, registry: Arc<Registry>, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(probe_router(registry, readiness(state)))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such resource".to_string()) })
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http())
}
