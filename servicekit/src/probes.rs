//! `/healthz` (the process is alive), `/readyz` (it can do its work: dependencies
//! answer) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;

/// Decides readiness: `Err(reason)` keeps the pod out of rotation.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct ProbeState {
    registry: Arc<Registry>,
    readiness: ReadinessCheck,
}

/// Routes for the probe and metrics endpoints.
pub fn probe_router(registry: Arc<Registry>, readiness: ReadinessCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ProbeState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    match (state.readiness)().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            )
        }
    }
}

async fn metrics(State(state): State<ProbeState>) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn readyz_follows_the_check_and_metrics_are_exposed() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("probe_test", "a test counter", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let check: ReadinessCheck = Arc::new(move || {
            let ok = flag.load(Ordering::SeqCst);
            Box::pin(async move { if ok { Ok(()) } else { Err("db down".into()) } })
        });
        let app = probe_router(Arc::new(registry), check);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = format!("http://{addr}");

        let r = reqwest::get(format!("{base}/readyz")).await.expect("get");
        assert_eq!(r.status(), 503);
        assert!(r.text().await.expect("body").contains("db down"));
        ready.store(true, Ordering::SeqCst);
        assert_eq!(
            reqwest::get(format!("{base}/readyz"))
                .await
                .expect("get")
                .status(),
            200
        );
        assert_eq!(
            reqwest::get(format!("{base}/healthz"))
                .await
                .expect("get")
                .status(),
            200
        );
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(metrics.contains("probe_test_total 1"), "{metrics}");
    }
}
