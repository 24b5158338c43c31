//! Extractors that reject bad input with problem+json instead of axum's
//! plain-text rejections (axum's `customize-extractor-error` pattern).
//!
//! Use `http::extract::{Json, Path, Query}` in handlers instead of axum's.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::problem::{ApiError, FieldError, kind};

/// A JSON body. Rejections: 415 without a JSON content type, 413 past the
/// body limit, 400 `invalid-json` for syntax errors (and nesting past
/// serde_json's recursion limit), 422 `validation-failed` with the JSON
/// pointer of the offending field when the shape is wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// `application/json` or any `application/*+json` (merge-patch, problem, …).
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Most media ranges read from one `Accept` header.
const MAX_MEDIA_RANGES: usize = 32;

/// 406 unless `Accept` admits JSON (`application/json`, `application/*`,
/// `*/*`, or any `+json` type), with a q-value above zero. No `Accept`
/// means anything goes (RFC 9110 §12.5.1). Too many ranges: only the first
/// [`MAX_MEDIA_RANGES`] are read.
pub fn require_json_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    let ranges = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_MEDIA_RANGES);
    for range in ranges {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let zero_q = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        let json = matches!(media.as_str(), "*/*" | "application/*" | "application/json")
            || (media.starts_with("application/") && media.ends_with("+json"));
        if json && !zero_q {
            return Ok(());
        }
    }
    Err(ApiError::NotAcceptable(
        "this resource is available as application/json only".into(),
    ))
}

/// [`require_json_accept`] as middleware, for routes that answer JSON only
/// (`route_layer(axum::middleware::from_fn(accept_json))`): the 406 comes
/// before the handler does any work.
pub async fn accept_json(request: Request, next: axum::middleware::Next) -> Response {
    match require_json_accept(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Turns a serde path (`items[2].name`) into an RFC 6901 pointer
/// (`/items/2/name`), escaping `~` and `/` in keys.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// Parses JSON bytes, classifying failures as the API reports them.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => value,
        Err(error) => {
            let pointer = pointer_of(error.path());
            return Err(classify(error.into_inner(), pointer));
        }
    };
    // Trailing bytes after the value are a syntax error, not ignored.
    deserializer
        .end()
        .map_err(|error| classify(error, String::new()))?;
    Ok(value)
}

fn classify(error: serde_json::Error, pointer: String) -> ApiError {
    match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::validation(vec![FieldError::new(pointer, error.to_string())])
        }
        // Syntax, EOF, and I/O (which cannot happen on a slice).
        _ => ApiError::bad_request(
            kind::INVALID_JSON,
            format!("the body is not valid JSON: {error}"),
        ),
    }
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: None }
    } else {
        ApiError::bad_request(kind::BAD_REQUEST, "the body could not be read")
    }
}

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(bytes_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters; a value that does not parse is a 400 naming it.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(error)) => Err(ApiError::bad_request(
                kind::INVALID_PARAMETER,
                error.body_text(),
            )),
            // A route/extractor mismatch is our bug, not the client's.
            Err(other) => Err(ApiError::internal(anyhow::anyhow!(
                "path extractor: {}",
                other.body_text()
            ))),
        }
    }
}

/// Query parameters; unknown shapes are a 400 `invalid-parameter`.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection: QueryRejection| {
                ApiError::bad_request(kind::INVALID_PARAMETER, rejection.body_text())
            })
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::{get, post};
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        tags: Vec<Tag>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct Tag {
        #[serde(rename = "a/b")]
        value: u32,
    }

    #[derive(Debug, Deserialize)]
    struct Page {
        limit: Option<u32>,
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/items",
                post(|Json(item): Json<Item>| async move { Json(item) }),
            )
            .route(
                "/items/{n}",
                get(|Path(n): Path<u32>, Query(page): Query<Page>| async move {
                    format!("{n}:{:?}", page.limit)
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64))
    }

    async fn send(request: Request) -> (StatusCode, serde_json::Value) {
        let response = app().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    fn post_json(content_type: Option<&str>, body: &str) -> Request {
        let mut builder = Request::post("/items");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body.to_string())).expect("request")
    }

    #[tokio::test]
    async fn valid_json_passes() {
        let (status, body) = send(post_json(
            Some("application/json; charset=utf-8"),
            r#"{"name":"x","tags":[]}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "x");
    }

    #[tokio::test]
    async fn rejections_are_problems() {
        let (status, body) = send(post_json(None, "{}")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "unsupported-media-type");

        let (status, body) = send(post_json(Some("text/plain"), "{}")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

        let (status, body) = send(post_json(Some("application/json"), "{\"name\":")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid-json");

        let (status, body) = send(post_json(
            Some("application/json"),
            r#"{"name":"x","tags":[]} x"#,
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "trailing garbage: {body}");

        let (status, body) = send(post_json(
            Some("application/merge-patch+json"),
            r#"{"name":"x","tags":[{"a/b":"no"}]}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["errors"][0]["pointer"], "/tags/0/a~1b");

        let (status, body) = send(post_json(Some("application/json"), r#"{"tags":[]}"#)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains("name"),
            "{body}"
        );

        let big = format!(r#"{{"name":"{}","tags":[]}}"#, "x".repeat(100));
        let (status, body) = send(post_json(Some("application/json"), &big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "payload-too-large");
    }

    #[tokio::test]
    async fn deep_nesting_is_a_400() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let bytes = format!(r#"{{"name":"x","tags":{deep}}}"#);
        assert!(parse_json::<serde_json::Value>(bytes.as_bytes()).is_ok());
        let deeper = "[".repeat(200);
        let error = parse_json::<serde_json::Value>(deeper.as_bytes()).expect_err("too deep");
        assert_eq!(error.kind(), kind::INVALID_JSON);
    }

    #[test]
    fn accept_negotiation() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().expect("value"));
            require_json_accept(&h).is_ok()
        };
        assert!(require_json_accept(&HeaderMap::new()).is_ok());
        for ok in [
            "application/json",
            "*/*",
            "text/html, application/*;q=0.1",
            "application/problem+json",
            "Application/JSON; charset=utf-8",
        ] {
            assert!(accept(ok), "{ok}");
        }
        for no in [
            "text/html",
            "application/xml",
            "application/json;q=0",
            "image/*",
        ] {
            assert!(!accept(no), "{no}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "text/plain".parse().expect("value"));
        let error = require_json_accept(&h).expect_err("406");
        assert_eq!(error.kind().status, StatusCode::NOT_ACCEPTABLE);
    }

    #[tokio::test]
    async fn path_and_query_rejections() {
        let (status, body) = send(
            Request::get("/items/abc")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid-parameter");

        let (status, body) = send(
            Request::get("/items/1?limit=-3")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid-parameter");
    }
}
