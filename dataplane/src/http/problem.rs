//! RFC 9457 problem details: the one error shape of the APIs.
//!
//! Every error a handler returns is an [`ApiError`]; it knows its
//! [`ProblemKind`] (status, stable `code`, title) from the [`PROBLEM_KINDS`]
//! table, which is also what the API documentation lists. The request id
//! (`instance`) is filled in by [`super::finish_problems`], which also turns
//! the bare error responses of axum and tower-http (405, 408, 413, …) into
//! problems, so clients see one format on every error path.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Problem `type` URIs are this prefix plus the kind's `code`.
pub const PROBLEM_TYPE_BASE: &str = "https://strata.dev/problems/";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One documented kind of problem. `code` is stable: clients may switch on
/// it, so a code is never renamed or reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemKind {
    pub code: &'static str,
    pub status: StatusCode,
    pub title: &'static str,
    /// When the API answers with it (for the documentation).
    pub description: &'static str,
}

impl ProblemKind {
    pub fn type_uri(&self) -> String {
        format!("{PROBLEM_TYPE_BASE}{}", self.code)
    }
}

macro_rules! kinds {
    ($($name:ident = ($code:literal, $status:ident, $title:literal, $desc:literal);)*) => {
        /// The problem kinds, by name, for use in code.
        pub mod kind {
            use super::ProblemKind;
            use axum::http::StatusCode;
            $(pub const $name: ProblemKind = ProblemKind {
                code: $code,
                status: StatusCode::$status,
                title: $title,
                description: $desc,
            };)*
        }
        /// Every problem kind the APIs produce, in status order.
        pub const PROBLEM_KINDS: &[ProblemKind] = &[$(kind::$name),*];
    };
}

kinds! {
    BAD_REQUEST = ("bad-request", BAD_REQUEST, "Bad request",
        "The request is malformed in a way no more specific kind describes.");
    INVALID_JSON = ("invalid-json", BAD_REQUEST, "Invalid JSON",
        "The body is not syntactically valid JSON, or nests deeper than the limit.");
    INVALID_PARAMETER = ("invalid-parameter", BAD_REQUEST, "Invalid parameter",
        "A path or query parameter is missing, malformed or out of range; `errors` names it.");
    INVALID_HEADER = ("invalid-header", BAD_REQUEST, "Invalid header",
        "A request header (for example If-Match) is malformed.");
    INVALID_CURSOR = ("invalid-cursor", BAD_REQUEST, "Invalid cursor",
        "The pagination cursor was not issued by this API, was altered, or belongs to another query.");
    UNAUTHENTICATED = ("unauthenticated", UNAUTHORIZED, "Unauthenticated",
        "No credential, or one that is malformed, expired, revoked or signed by an unknown key.");
    FORBIDDEN = ("forbidden", FORBIDDEN, "Forbidden",
        "The credential is valid but its role does not allow this action, or the tenant is suspended.");
    NOT_FOUND = ("not-found", NOT_FOUND, "Not found",
        "No such resource for this credential (also when it exists in another tenant).");
    METHOD_NOT_ALLOWED = ("method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed",
        "The resource does not support this method; `Allow` lists those it does.");
    NOT_ACCEPTABLE = ("not-acceptable", NOT_ACCEPTABLE, "Not acceptable",
        "The `Accept` header excludes every representation the resource has.");
    REQUEST_TIMEOUT = ("request-timeout", REQUEST_TIMEOUT, "Request timeout",
        "The request took longer than the server's limit.");
    CONFLICT = ("conflict", CONFLICT, "Conflict",
        "The request conflicts with the current state (for example the id already exists).");
    INVITATION_EXPIRED = ("invitation-expired", GONE, "Invitation expired",
        "The invitation token is valid but its expiry has passed; ask for a new invitation.");
    PRECONDITION_FAILED = ("precondition-failed", PRECONDITION_FAILED, "Precondition failed",
        "If-Match, If-None-Match or If-Unmodified-Since did not hold for the current version.");
    PAYLOAD_TOO_LARGE = ("payload-too-large", PAYLOAD_TOO_LARGE, "Payload too large",
        "The body exceeds the size limit.");
    RANGE_NOT_SATISFIABLE = ("range-not-satisfiable", RANGE_NOT_SATISFIABLE, "Range not satisfiable",
        "The `Range` starts past the end of the object; `Content-Range: bytes */<size>` gives its size.");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type",
        "The body's Content-Type is missing or not one the endpoint accepts.");
    VALIDATION_FAILED = ("validation-failed", UNPROCESSABLE_ENTITY, "Validation failed",
        "The body is well-formed but invalid; `errors` lists each field by JSON pointer.");
    INVALID_IMAGE = ("invalid-image", UNPROCESSABLE_ENTITY, "Invalid image",
        "The object to render is not an image in a supported format (JPEG, PNG, GIF, WebP), or is truncated or corrupt.");
    IMAGE_TOO_LARGE = ("image-too-large", UNPROCESSABLE_ENTITY, "Image too large",
        "The object to render exceeds the transform limits (bytes, width, height or pixel area, read from its header before decoding).");
    MALWARE_DETECTED = ("malware-detected", UNPROCESSABLE_ENTITY, "Malware detected",
        "The antivirus scan of the upload found malware; nothing was stored.");
    PRECONDITION_REQUIRED = ("precondition-required", PRECONDITION_REQUIRED, "Precondition required",
        "This resource requires a conditional write: send If-Match (or If-None-Match: * to create).");
    RATE_LIMITED = ("rate-limited", TOO_MANY_REQUESTS, "Too many requests",
        "A rate limit was reached; `Retry-After` says when to try again.");
    INTERNAL = ("internal", INTERNAL_SERVER_ERROR, "Internal error",
        "An unexpected error; the `instance` (request id) lets operators find it in the logs.");
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "Service unavailable",
        "A dependency is unavailable or the tenant is not ready yet; retry later.");
    QUOTA_EXCEEDED = ("quota-exceeded", INSUFFICIENT_STORAGE, "Quota exceeded",
        "Storing this would exceed the bucket's or the tenant's quota of bytes or objects.");
}

/// The generic kind for a status, used for error responses that were not
/// produced by an [`ApiError`] (axum's 405, tower-http's 408/413, …).
pub fn kind_for_status(status: StatusCode) -> ProblemKind {
    PROBLEM_KINDS
        .iter()
        .find(|k| k.status == status)
        .copied()
        .unwrap_or(if status.is_server_error() {
            kind::INTERNAL
        } else {
            kind::BAD_REQUEST
        })
}

/// A field-level error: `pointer` is an RFC 6901 JSON pointer into the body
/// (or `#/query/<name>`, `#/path/<name>`, `#/header/<name>` for parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the body, or `#/query/<name>`,
    /// `#/path/<name>`, `#/header/<name>` for a parameter.
    #[schema(example = "/vector/3")]
    pub pointer: String,
    #[schema(example = "must be a finite number")]
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// The serialised problem document (RFC 9457), the body of every error
/// response (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://strata.dev/problems/<code>`; the kinds are listed in
    /// `docs/problems.md` and in this document's introduction.
    #[serde(rename = "type")]
    #[schema(
        format = "uri",
        example = "https://strata.dev/problems/validation-failed"
    )]
    pub type_: String,
    #[schema(example = "Validation failed")]
    pub title: String,
    /// The HTTP status, repeated.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong with this request, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "1 field is invalid")]
    pub detail: Option<String>,
    /// The request id (also the `x-request-id` response header): quote it
    /// when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0197a6f0-3b1c-7d2e-9f00-4c5d6e7f8a9b")]
    pub instance: Option<String>,
    /// The stable machine-readable kind: the last segment of `type`.
    #[schema(example = "validation-failed")]
    pub code: String,
    /// Field-level errors (400 `invalid-parameter`, 422 `validation-failed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn from_kind(kind: ProblemKind, detail: impl Into<Option<String>>) -> Self {
        Self {
            type_: kind.type_uri(),
            title: kind.title.into(),
            status: kind.status.as_u16(),
            detail: detail.into(),
            instance: None,
            code: kind.code.into(),
            errors: Vec::new(),
        }
    }

    /// The generic problem for a status (see [`kind_for_status`]).
    pub fn new(status: StatusCode, detail: impl Into<Option<String>>) -> Self {
        let mut problem = Self::from_kind(kind_for_status(status), detail);
        // Keep the real status even when only a generic kind matches it.
        problem.status = status.as_u16();
        problem
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn body(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail; an empty body is
        // still a valid (if unhelpful) error response.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.body();
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        // `finish_problems` finds the document here to add the request id.
        response.extensions_mut().insert(self);
        response
    }
}

/// The data plane's one error type. Handlers return `Result<_, ApiError>`
/// and use `?`; each variant maps to exactly one [`ProblemKind`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A 400 of a specific kind (`invalid-json`, `invalid-parameter`, …).
    #[error("{detail}")]
    BadRequest {
        kind: ProblemKind,
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Deliberately carries no detail: a 404 must read the same whether the
    /// resource is absent or belongs to another tenant.
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("payload too large")]
    PayloadTooLarge { limit: Option<u64> },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("validation failed: {detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("precondition required")]
    PreconditionRequired,
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// Never shown to the client: logged with the request id (the handler's
    /// span carries it), answered with a generic 500.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
    #[error("unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// A problem of a kind no other variant carries (storage: 416, 422
    /// `malware-detected`, 507), with its detail.
    #[error("{detail}")]
    Other { kind: ProblemKind, detail: String },
    /// Not an error but a 304 from precondition evaluation; a variant so
    /// handlers can stop with `?` like on every other precondition outcome.
    #[error("not modified")]
    NotModified {
        etag: Option<HeaderValue>,
        last_modified: Option<HeaderValue>,
    },
}

impl ApiError {
    pub fn bad_request(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A 400 `invalid-parameter` naming the parameter (`query`/`path`/`header`).
    pub fn invalid_parameter(location: &str, name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::BadRequest {
            kind: kind::INVALID_PARAMETER,
            detail: format!("{location} parameter `{name}`: {message}"),
            errors: vec![FieldError::new(format!("#/{location}/{name}"), message)],
        }
    }

    /// The same 400 as another (more specific) 400 kind; other errors are
    /// returned unchanged.
    pub fn with_kind(self, kind: ProblemKind) -> Self {
        match self {
            Self::BadRequest { detail, errors, .. } if kind.status == StatusCode::BAD_REQUEST => {
                Self::BadRequest {
                    kind,
                    detail,
                    errors,
                }
            }
            other => other,
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => "1 field is invalid".to_string(),
            n => format!("{n} fields are invalid"),
        };
        Self::Validation { detail, errors }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::BadRequest { kind, .. } => *kind,
            Self::Unauthenticated(_) => kind::UNAUTHENTICATED,
            Self::Forbidden(_) => kind::FORBIDDEN,
            Self::NotFound => kind::NOT_FOUND,
            Self::MethodNotAllowed => kind::METHOD_NOT_ALLOWED,
            Self::NotAcceptable(_) => kind::NOT_ACCEPTABLE,
            Self::Conflict(_) => kind::CONFLICT,
            Self::PreconditionFailed | Self::NotModified { .. } => kind::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => kind::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => kind::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => kind::VALIDATION_FAILED,
            Self::PreconditionRequired => kind::PRECONDITION_REQUIRED,
            Self::RateLimited { .. } => kind::RATE_LIMITED,
            Self::Internal(_) => kind::INTERNAL,
            Self::Unavailable { .. } => kind::UNAVAILABLE,
            Self::Other { kind, .. } => *kind,
        }
    }

    /// The client-facing detail. Internal errors say nothing about their cause.
    fn detail(&self) -> Option<String> {
        match self {
            Self::BadRequest { detail, .. } | Self::Validation { detail, .. } => {
                Some(detail.clone())
            }
            Self::Unauthenticated(d)
            | Self::Forbidden(d)
            | Self::NotAcceptable(d)
            | Self::Conflict(d)
            | Self::UnsupportedMediaType(d) => Some(d.clone()),
            Self::Unavailable { detail, .. } | Self::Other { detail, .. } => Some(detail.clone()),
            Self::NotFound => Some("no such resource".into()),
            Self::MethodNotAllowed => None,
            Self::PreconditionFailed => {
                Some("a precondition header does not match the current version".into())
            }
            Self::PreconditionRequired => {
                Some("send If-Match with the current ETag (or If-None-Match: * to create)".into())
            }
            Self::PayloadTooLarge { limit: Some(limit) } => {
                Some(format!("the body exceeds the limit of {limit} bytes"))
            }
            Self::PayloadTooLarge { limit: None } => Some("the body exceeds the limit".into()),
            Self::RateLimited { .. } => Some("too many requests; retry later".into()),
            Self::Internal(_) => Some("an unexpected error occurred; quote the instance id".into()),
            Self::NotModified { .. } => None,
        }
    }

    pub fn to_problem(&self) -> Problem {
        let problem = Problem::from_kind(self.kind(), self.detail());
        match self {
            Self::BadRequest { errors, .. } | Self::Validation { errors, .. } => {
                problem.with_errors(errors.clone())
            }
            _ => problem,
        }
    }
}

fn retry_after(seconds: Duration) -> HeaderValue {
    // At least 1: `Retry-After: 0` invites a hot retry loop.
    HeaderValue::from(seconds.as_secs().max(1))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::NotModified {
            etag,
            last_modified,
        } = self
        {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            let headers = response.headers_mut();
            if let Some(etag) = etag {
                headers.insert(header::ETAG, etag);
            }
            if let Some(last_modified) = last_modified {
                headers.insert(header::LAST_MODIFIED, last_modified);
            }
            return response;
        }
        if let Self::Internal(error) = &self {
            // The span around the handler carries the request id, which is
            // also the problem's `instance`: that is how the two meet.
            tracing::error!(error = format!("{error:#}"), "internal error");
        }
        let mut response = self.to_problem().into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(_) => {
                // RFC 6750 §3: a 401 names the scheme the client should use.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"strata\""),
                );
            }
            Self::RateLimited {
                retry_after: Some(after),
            }
            | Self::Unavailable {
                retry_after: Some(after),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, retry_after(*after));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::body::to_bytes;

    use super::*;

    /// The statuses issue 8 requires a problem kind for.
    const REQUIRED_STATUSES: &[u16] = &[
        400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 428, 429, 500, 503,
    ];

    #[test]
    fn kinds_are_unique_documented_and_cover_every_required_status() {
        let codes: HashSet<_> = PROBLEM_KINDS.iter().map(|k| k.code).collect();
        assert_eq!(codes.len(), PROBLEM_KINDS.len(), "duplicate code");
        for kind in PROBLEM_KINDS {
            assert!(
                kind.code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}",
                kind.code
            );
            assert!(!kind.title.is_empty() && !kind.description.is_empty());
            assert!(kind.status.is_client_error() || kind.status.is_server_error());
            assert!(kind.type_uri().starts_with(PROBLEM_TYPE_BASE));
        }
        for status in REQUIRED_STATUSES {
            assert!(
                PROBLEM_KINDS.iter().any(|k| k.status.as_u16() == *status),
                "no problem kind for {status}"
            );
        }
    }

    #[test]
    fn generic_kind_for_a_status_is_the_first_of_that_status() {
        assert_eq!(kind_for_status(StatusCode::BAD_REQUEST), kind::BAD_REQUEST);
        assert_eq!(kind_for_status(StatusCode::NOT_FOUND), kind::NOT_FOUND);
        assert_eq!(kind_for_status(StatusCode::IM_A_TEAPOT), kind::BAD_REQUEST);
        assert_eq!(kind_for_status(StatusCode::BAD_GATEWAY), kind::INTERNAL);
        assert_eq!(Problem::new(StatusCode::BAD_GATEWAY, None).status, 502);
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn an_api_error_is_a_problem_document() {
        let error = ApiError::validation(vec![FieldError::new("/name", "must not be empty")]);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(response.extensions().get::<Problem>().is_some());
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({
                "type": "https://strata.dev/problems/validation-failed",
                "title": "Validation failed",
                "status": 422,
                "detail": "1 field is invalid",
                "code": "validation-failed",
                "errors": [{"pointer": "/name", "message": "must not be empty"}],
            })
        );
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let error = ApiError::internal(anyhow::anyhow!(
            "duplicate key value violates unique constraint \"secret_table_pkey\""
        ));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        let text = body.to_string();
        assert!(!text.contains("secret_table"), "{text}");
        assert_eq!(body["code"], "internal");
    }

    #[tokio::test]
    async fn status_specific_headers() {
        let response = ApiError::Unauthenticated("missing credential".into()).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));

        let response = ApiError::RateLimited {
            retry_after: Some(Duration::from_millis(200)),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");

        let response = ApiError::NotModified {
            etag: Some(HeaderValue::from_static("\"v3\"")),
            last_modified: None,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], "\"v3\"");
        assert!(!response.headers().contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn every_variant_maps_to_its_status() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::bad_request(kind::INVALID_CURSOR, "x"), 400),
            (
                ApiError::invalid_parameter("query", "limit", "too big"),
                400,
            ),
            (ApiError::Unauthenticated(String::new()), 401),
            (ApiError::Forbidden(String::new()), 403),
            (ApiError::NotFound, 404),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::NotAcceptable(String::new()), 406),
            (ApiError::Conflict(String::new()), 409),
            (ApiError::PreconditionFailed, 412),
            (ApiError::PayloadTooLarge { limit: Some(1) }, 413),
            (ApiError::UnsupportedMediaType(String::new()), 415),
            (ApiError::validation(vec![]), 422),
            (ApiError::PreconditionRequired, 428),
            (ApiError::RateLimited { retry_after: None }, 429),
            (ApiError::internal(anyhow::anyhow!("x")), 500),
            (
                ApiError::Unavailable {
                    detail: String::new(),
                    retry_after: None,
                },
                503,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.kind().status.as_u16(), status, "{error:?}");
            assert_eq!(error.to_problem().status, status);
        }
        let error = ApiError::invalid_parameter("query", "limit", "too big");
        assert_eq!(error.to_problem().errors[0].pointer, "#/query/limit");
    }
}
