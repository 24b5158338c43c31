//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): the pure
//! part shared by both APIs — reading the header, fingerprinting the
//! request, and deciding what to do given what the store holds. Storing
//! keys (the tenant database's `idempotency_keys`, in the same transaction
//! as the write) is the caller's.
//!
//! Draft semantics: the same key with the same request replays the first
//! response; the same key with a different request is 422; a retry while
//! the first is still running is 409.

use axum::http::{HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

use super::problem::{ApiError, FieldError, kind};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest key accepted (UUIDs are 36; the draft sets no limit, so we do).
pub const MAX_KEY_LEN: usize = 255;

fn invalid(message: &str) -> ApiError {
    ApiError::BadRequest {
        kind: kind::INVALID_HEADER,
        detail: format!("Idempotency-Key: {message}"),
        errors: vec![FieldError::new("#/header/idempotency-key", message)],
    }
}

/// The key of a POST/PATCH, if sent. The draft defines the value as a
/// structured-field string (`"…"`); the bare token form many clients send
/// is accepted too. Visible ASCII only, at most [`MAX_KEY_LEN`] bytes.
pub fn idempotency_key(method: &Method, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("send one key"));
    }
    if method != Method::POST && method != Method::PATCH {
        return Err(invalid("only POST and PATCH take an idempotency key"));
    }
    let raw = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII"))?
        .trim();
    let key = match raw.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| invalid("unterminated quoted string"))?,
        None => raw,
    };
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    if valid {
        Ok(Some(key.to_string()))
    } else {
        Err(invalid("must be 1 to 255 visible ASCII characters"))
    }
}

/// What makes two requests "the same": method, path and body. Stored with
/// the key; a retry must match it.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [method.as_str().as_bytes(), path.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// What the store holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<R> {
    /// The first request is still running.
    InProgress { fingerprint: [u8; 32] },
    /// It finished with this response.
    Completed { fingerprint: [u8; 32], response: R },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<R> {
    /// First use: run the request (and record it under the key).
    Execute,
    /// A retry of a finished request: answer with its response.
    Replay(R),
}

pub fn decide<R>(stored: Option<Stored<R>>, request: &[u8; 32]) -> Result<Decision<R>, ApiError> {
    let mismatch = || ApiError::Validation {
        detail: "this Idempotency-Key was used for a different request".into(),
        errors: vec![FieldError::new(
            "#/header/idempotency-key",
            "reused with another method, path or body",
        )],
    };
    match stored {
        None => Ok(Decision::Execute),
        Some(Stored::InProgress { fingerprint }) if fingerprint != *request => Err(mismatch()),
        Some(Stored::InProgress { .. }) => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        )),
        Some(Stored::Completed { fingerprint, .. }) if fingerprint != *request => Err(mismatch()),
        Some(Stored::Completed { response, .. }) => Ok(Decision::Replay(response)),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                IDEMPOTENCY_KEY.clone(),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn header_forms() {
        let key = |v: &str| idempotency_key(&Method::POST, &headers(&[v]));
        assert_eq!(
            key("\"8e03978e-40d5\"").ok().flatten().as_deref(),
            Some("8e03978e-40d5")
        );
        assert_eq!(key("abc").ok().flatten().as_deref(), Some("abc"));
        assert_eq!(
            idempotency_key(&Method::POST, &HeaderMap::new()).ok(),
            Some(None)
        );
        for bad in [
            "\"",
            "\"abc",
            "\"\"",
            "a b",
            "a\\b",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            let error = key(bad).expect_err(bad);
            assert_eq!(error.kind(), kind::INVALID_HEADER, "{bad}");
        }
        assert!(idempotency_key(&Method::POST, &headers(&["a", "b"])).is_err());
        assert!(idempotency_key(&Method::PUT, &headers(&["a"])).is_err());
        assert!(idempotency_key(&Method::PATCH, &headers(&["a"])).is_ok());
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        let a = fingerprint(&Method::POST, "/v1/a", b"{}");
        assert_eq!(a, fingerprint(&Method::POST, "/v1/a", b"{}"));
        assert_ne!(a, fingerprint(&Method::PATCH, "/v1/a", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/v1/b", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/v1/a", b"{ }"));
        assert_ne!(
            fingerprint(&Method::POST, "/v1/a", b"b"),
            fingerprint(&Method::POST, "/v1/ab", b"")
        );
    }

    #[test]
    fn decisions() {
        let fp = fingerprint(&Method::POST, "/v1/a", b"{}");
        let other = fingerprint(&Method::POST, "/v1/a", b"{\"x\":1}");
        assert_eq!(decide::<u16>(None, &fp).ok(), Some(Decision::Execute));
        let done = Stored::Completed {
            fingerprint: fp,
            response: 201u16,
        };
        assert_eq!(
            decide(Some(done.clone()), &fp).ok(),
            Some(Decision::Replay(201))
        );
        assert_eq!(
            decide(Some(done), &other).expect_err("mismatch").kind(),
            kind::VALIDATION_FAILED
        );
        let running = Stored::<u16>::InProgress { fingerprint: fp };
        assert_eq!(
            decide(Some(running.clone()), &fp).expect_err("busy").kind(),
            kind::CONFLICT
        );
        assert_eq!(
            decide(Some(running), &other).expect_err("mismatch").kind(),
            kind::VALIDATION_FAILED
        );
    }
}
