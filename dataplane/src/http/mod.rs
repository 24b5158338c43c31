//! The HTTP machinery both APIs share: problem+json errors, request ids,
//! extractors, conditional requests, pagination and authentication. The
//! database and storage APIs build their routes on these; nothing here
//! knows about documents or objects.

pub mod auth;
pub mod extract;
pub mod pagination;
pub mod preconditions;
pub mod problem;
pub mod request_id;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

pub use problem::{ApiError, FieldError, Problem};
pub use request_id::RequestId;

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
