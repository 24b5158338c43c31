//! `X-Request-Id`: accepted from the client when it looks sane, generated
//! (UUIDv7) otherwise, echoed on the response, recorded in the tracing span
//! and used as the problem `instance`.
//!
//! tower-http's `SetRequestIdLayer` keeps whatever the client sent; we want
//! to refuse ids that would pollute logs (control characters, megabytes), so
//! this is a small middleware of our own.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest accepted incoming id; a UUID is 36, a W3C trace id 32.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id, in the request's (and the response's) extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// An incoming id is kept if it is short and made of characters that are
/// safe in logs, headers and URLs.
pub fn is_acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The id for a request: the client's if acceptable, else a fresh one.
pub fn choose(incoming: Option<&HeaderValue>) -> RequestId {
    incoming
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_acceptable(id))
        .map(|id| RequestId(id.to_string()))
        .unwrap_or_else(RequestId::generate)
}

/// Middleware (outermost): settles the id, exposes it to inner layers in the
/// request's extensions and header, and echoes it on the response.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = choose(request.headers().get(&X_REQUEST_ID));
    let value = HeaderValue::from_str(id.as_str()).ok();
    if let Some(value) = &value {
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
    }
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Some(value) = value {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response.extensions_mut().insert(id);
    // W3C Server-Timing: the server's own time to the response head (a
    // streamed body's transfer not included), so clients and benchmarks
    // can tell server time from network and queueing.
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={millis:.3}")) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

/// Span for `TraceLayer::make_span_with`: every log line of a request carries
/// its id (and the tenant, once a handler records it).
pub fn make_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(RequestId::as_str)
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn acceptable_ids() {
        assert!(is_acceptable("0192f0c1-8a5e-7c3b-9d7e-1f2a3b4c5d6e"));
        assert!(is_acceptable("trace:abc.def_1"));
        assert!(!is_acceptable(""));
        assert!(!is_acceptable("has space"));
        assert!(!is_acceptable("new\nline"));
        assert!(!is_acceptable("quote\""));
        assert!(!is_acceptable(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(is_acceptable(&"a".repeat(MAX_REQUEST_ID_LEN)));
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let id = choose(None);
        let parsed = uuid::Uuid::parse_str(id.as_str()).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        let bad = HeaderValue::from_static("not ok!");
        assert_ne!(choose(Some(&bad)).as_str(), "not ok!");
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                get(|axum::Extension(id): axum::Extension<RequestId>| async move { id.0 }),
            )
            .layer(axum::middleware::from_fn(request_id))
    }

    #[tokio::test]
    async fn echoes_a_sane_incoming_id() {
        let response = app()
            .oneshot(
                Request::get("/")
                    .header("x-request-id", "client-id-1")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.headers()["x-request-id"], "client-id-1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"client-id-1");
    }

    #[tokio::test]
    async fn replaces_an_insane_incoming_id() {
        let response = app()
            .oneshot(
                Request::get("/")
                    .header("x-request-id", "a b")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let echoed = response.headers()["x-request-id"].to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(echoed).is_ok(), "{echoed}");
    }
}
