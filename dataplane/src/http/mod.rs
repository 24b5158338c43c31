//! The HTTP machinery both APIs share: problem+json errors, request ids,
//! extractors, conditional requests, pagination and authentication. The
//! database and storage APIs build their routes on these; nothing here
//! knows about documents or objects.

pub mod auth;
pub mod authz;
pub mod compression;
pub mod db_error;
pub mod extract;
pub mod idempotency;
pub mod pagination;
pub mod preconditions;
pub mod problem;
pub mod request_id;
pub mod tenancy;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

pub use problem::{ApiError, FieldError, Problem};
pub use request_id::RequestId;

/// What API handlers share, built once at startup from the config.
#[derive(Clone)]
pub struct HttpContext {
    pub auth: auth::Authenticator,
    pub cursors: pagination::CursorCodec,
    /// Rate limits (see [`crate::gateway`]).
    pub gateway: crate::gateway::Gateway,
}

/// Middleware for the API routes (inside [`request_id::request_id`]):
/// - fills the problem `instance` with the request id;
/// - turns bare error responses of the framework and of tower layers (405
///   from the method router, 408 from the timeout, 413 from the body limit)
///   into problem documents, keeping their headers (`Allow`, …).
pub async fn finish_problems(request: Request, next: Next) -> Response {
    let id = request.extensions().get::<RequestId>().cloned();
    let response = next.run(request).await;
    finish(response, id)
}

/// [`finish_problems`] for a response made outside that layer (the
/// gateway's own refusals).
pub fn finish_problem(response: Response, id: Option<RequestId>) -> Response {
    finish(response, id)
}

fn is_problem_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(problem::PROBLEM_JSON.as_bytes()))
}

fn finish(mut response: Response, id: Option<RequestId>) -> Response {
    let problem = match response.extensions_mut().remove::<Problem>() {
        Some(problem) => problem,
        None if response.status().as_u16() >= 400 && !is_problem_json(&response) => {
            let status = response.status();
            let detail = match status {
                StatusCode::PAYLOAD_TOO_LARGE => Some("the body exceeds the limit".to_string()),
                StatusCode::REQUEST_TIMEOUT => {
                    Some("the request took longer than the limit".to_string())
                }
                _ => None,
            };
            Problem::new(status, detail)
        }
        None => return response,
    };
    let problem = Problem {
        instance: id.map(|id| id.0),
        ..problem
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(problem::PROBLEM_JSON),
    );
    let body = problem.body();
    parts.extensions.insert(problem);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::to_bytes;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::timeout::TimeoutLayer;

    use super::*;

    async fn call(app: Router, uri: &str) -> (Response, serde_json::Value) {
        let response = app
            .oneshot(
                Request::get(uri)
                    .header("x-request-id", "rid-1")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 1 << 16).await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, Body::empty()), json)
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/error",
                get(|| async { ApiError::Conflict("taken".into()) }),
            )
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/teapot",
                get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(100),
            ))
            .layer(axum::middleware::from_fn(finish_problems))
            .layer(axum::middleware::from_fn(request_id::request_id))
    }

    #[tokio::test]
    async fn api_errors_get_the_request_id_as_instance() {
        let (response, body) = call(app(), "/error").await;
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(body["instance"], "rid-1");
        assert_eq!(body["detail"], "taken");
        assert_eq!(body["code"], "conflict");
        assert!(response.extensions().get::<Problem>().is_some());
    }

    #[tokio::test]
    async fn successes_are_untouched() {
        let (response, body) = call(app(), "/ok").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body, serde_json::Value::Null, "plain text, not JSON");
    }

    #[tokio::test]
    async fn bare_errors_become_problems_without_their_body() {
        let (response, body) = call(app(), "/teapot").await;
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            problem::PROBLEM_JSON
        );
        assert_eq!(body["status"], 418);
        assert_eq!(body["code"], "bad-request");
        assert!(!body.to_string().contains("stout"));
    }

    #[tokio::test]
    async fn timeouts_are_problems() {
        let (response, body) = call(app(), "/slow").await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["code"], "request-timeout");
        assert_eq!(body["instance"], "rid-1");
    }
}
