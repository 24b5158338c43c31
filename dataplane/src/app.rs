//! The HTTP application: routes, shared state and middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use strata_servicekit::{ReadinessCheck, probe_router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::gateway::{Gateway, rate_limits};
use crate::http::extract::accept_json;
use crate::http::{ApiError, HttpContext, finish_problems, request_id};

/// Longest a request may take before it is answered with 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Dependencies every handler may use: [`Services`] behind one `Arc`,
/// since axum clones the state for every extractor and middleware of every
/// request (a clone of the fields was about 7 % of a cached GET's CPU).
/// Read through `Deref`; `DerefMut` (copy on write) is for set-up code
/// that adjusts a state before serving it.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut Services {
        Arc::make_mut(&mut self.0)
    }
}

/// What [`AppState`] shares.
#[derive(Clone)]
pub struct Services {
    pub catalog: PgPool,
    pub redis: Option<redis::aio::ConnectionManager>,
    pub http: HttpContext,
    /// Tenant resolution, per-tenant pools and role permissions: what
    /// [`crate::tenancy::TenantContext`] needs.
    pub tenancy: crate::tenancy::Tenancy,
    /// The storage API: backend, bucket rules, antivirus, limits.
    pub storage: crate::storage::StorageState,
}

impl axum::extract::FromRef<AppState> for HttpContext {
    fn from_ref(state: &AppState) -> Self {
        state.http.clone()
    }
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
    let probes = probe_router(registry, readiness(state.clone()))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    // Each API adds its routes here (one `.merge` line each).
    let api = Router::new()
        .route(
            "/v1/openapi.json",
            axum::routing::get(crate::openapi::openapi_json),
        )
        .merge(crate::identity::routes())
        .merge(crate::documents::routes())
        .merge(crate::vectors::routes())
        .merge(crate::events::routes())
        // Whole answers of the rows that opt in (gateway::policy), inside
        // the rate limits and problem layers, outside JSON negotiation.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::gateway::output_cache::output_cache,
        ))
        .with_state(state.clone());
    Router::new()
        .merge(probes)
        // HTML and scripts for browsers, outside the API's problem+json layer.
        .merge(crate::docs::routes())
        .merge(api_router(api, max_body_bytes, state.http.gateway.clone()))
        // Object bodies: any type, streamed, longer than the API's limits.
        .merge(crate::storage::router(state.clone(), max_body_bytes))
        // Per-route body limits and timeouts from the policy table.
        .layer(middleware::from_fn(crate::gateway::policy::enforce))
        // A successful write drops what it made stale, on every replica,
        // before its answer leaves (cache::invalidation).
        .layer(middleware::from_fn_with_state(
            state.tenancy.cache.clone(),
            crate::cache::invalidation::invalidate_after_writes,
        ))
        // A request that recorded events wakes a dispatcher (events::hint).
        .layer(middleware::from_fn_with_state(
            state.redis.clone(),
            crate::events::hint::announce,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_id::make_span::<Body>))
        // Outermost, so the trace span and every response carry the id.
        .layer(middleware::from_fn(request_id::request_id))
}

/// The API routes (`/v1/…`) with what every API route shares: problem+json
/// on every error path (unknown paths included), 406 unless the request
/// accepts JSON, the body limit and the request timeout. The probes stay
/// outside: their plain-text answers are what orchestrators and scrapers
/// expect.
pub fn api_router(routes: Router, max_body_bytes: usize, gateway: Gateway) -> Router {
    routes
        // JSON only: a request that accepts none is 406 before any work
        // (matched routes only; unknown paths stay 404).
        .route_layer(middleware::from_fn(accept_json))
        .fallback(|| async { ApiError::NotFound })
        // Extractors that buffer (JSON) have axum's own 2 MB default; make
        // the configured limit the one in force for them too.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Inside finish_problems, so a 429 gets its request id too.
        .layer(middleware::from_fn_with_state(gateway, rate_limits))
        .layer(middleware::from_fn(finish_problems))
        // Brotli for JSON answers (and problems) to clients that prefer it.
        .layer(middleware::from_fn(crate::http::compression::compress_json))
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::{Request, header};
    use axum::routing::post;
    use sqlx::postgres::PgPoolOptions;
    use tower::ServiceExt;

    use super::*;
    use crate::http::extract::Json;

    fn app() -> Router {
        // Lazy: no connection is made unless /readyz is asked.
        let catalog = PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let http = HttpContext {
            auth: crate::http::auth::Authenticator::new(None, None),
            cursors: crate::http::pagination::CursorCodec::new(vec![0; 32], vec![]).expect("key"),
            gateway: Gateway::unlimited(),
        };
        let tenancy = crate::tenancy::Tenancy::new(
            catalog.clone(),
            crate::tenancy::TenancySettings::new(sqlx::postgres::PgConnectOptions::new()),
        );
        router(
            AppState::from(Services {
                storage: crate::storage::StorageState::unconfigured(catalog.clone()),
                catalog,
                redis: None,
                http,
                tenancy,
            }),
            Arc::new(Registry::default()),
            1024,
        )
    }

    async fn json(response: axum::response::Response) -> serde_json::Value {
        let bytes = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn unknown_paths_are_problems_with_the_request_id() {
        let response = app()
            .oneshot(
                Request::get("/v1/nothing")
                    .header("x-request-id", "req-42")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-request-id"], "req-42");
        assert!(
            response.headers()["server-timing"]
                .to_str()
                .is_ok_and(|v| v.starts_with("app;dur=")),
            "Server-Timing on every answer"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = json(response).await;
        assert_eq!(body["instance"], "req-42");
        assert_eq!(body["code"], "not-found");
        assert_eq!(body["type"], "https://strata.dev/problems/not-found");
    }

    #[tokio::test]
    async fn probes_keep_their_plain_answers() {
        let response = app()
            .oneshot(
                Request::get("/healthz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-request-id"));
        let body = to_bytes(response.into_body(), 1024).await.expect("body");
        assert_eq!(&body[..], b"ok\n");
    }

    #[tokio::test]
    async fn api_routes_get_limits_and_problems() {
        let routes = Router::new().route(
            "/v1/echo",
            post(|Json(value): Json<serde_json::Value>| async move { Json(value) }),
        );
        let app = api_router(routes, 16, Gateway::unlimited())
            .layer(middleware::from_fn(request_id::request_id));
        let response = app
            .clone()
            .oneshot(
                Request::post("/v1/echo")
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CONTENT_LENGTH, "100")
                    .body(Body::from("x".repeat(100)))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = json(response).await;
        assert_eq!(body["code"], "payload-too-large");
        assert!(body["instance"].is_string());

        let response = app
            .clone()
            .oneshot(
                Request::get("/v1/echo")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        assert_eq!(json(response).await["code"], "method-not-allowed");
    }

    #[tokio::test]
    async fn the_configured_limit_replaces_axums_default() {
        let routes = Router::new().route(
            "/v1/echo",
            post(|Json(value): Json<serde_json::Value>| async move {
                Json(value.as_str().map(str::len))
            }),
        );
        let app = api_router(routes, 3 << 20, Gateway::unlimited());
        let body = serde_json::to_vec(&"x".repeat(5 << 19)).expect("json");
        let response = app
            .oneshot(
                Request::post("/v1/echo")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "2.5 MiB under a 3 MiB limit"
        );
    }
}
