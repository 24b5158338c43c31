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

// ---------------------------------------------------------------------------
// Storage: the record lives in the tenant database's `idempotency_keys` and
// is written in the same transaction as the write it records.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::auth::{CredentialId, Principal};

/// The response header that marks a replay.
pub static IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Largest response body stored for replay; a larger response is not
/// recorded (its retry runs again, as without a key).
const MAX_STORED_BODY: usize = 1 << 20;

/// Response headers that are part of the answer (the rest — dates, request
/// ids, rate-limit headers — belong to the replay's own exchange).
const STORED_HEADERS: [header::HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
];

/// A POST/PATCH's key and the fingerprint of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub key: String,
    pub fingerprint: [u8; 32],
}

/// Body extractor that wraps another (`Json<T>`, `Bytes`): it reads the
/// `Idempotency-Key` (400 if malformed), fingerprints method, path, query
/// and the body bytes, then hands the same bytes to the inner extractor.
/// Without a key it is the inner extractor and nothing more.
pub struct Idempotent<T> {
    pub key: Option<Keyed>,
    pub inner: T,
}

impl<S, T> FromRequest<S> for Idempotent<T>
where
    S: Send + Sync,
    T: FromRequest<S>,
    T::Rejection: IntoResponse,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = idempotency_key(request.method(), request.headers())
            .map_err(IntoResponse::into_response)?;
        let Some(key) = key else {
            let inner = T::from_request(request, state)
                .await
                .map_err(IntoResponse::into_response)?;
            return Ok(Self { key: None, inner });
        };
        let method = request.method().clone();
        let uri = request.uri().clone();
        let version = request.version();
        let headers = request.headers().clone();
        let extensions = request.extensions().clone();
        let bytes = Bytes::from_request(request, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: None }.into_response()
            } else {
                ApiError::bad_request(kind::BAD_REQUEST, "the body could not be read")
                    .into_response()
            }
        })?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| uri.path());
        let fingerprint = fingerprint(&method, path, &bytes);
        let mut rebuilt = Request::new(Body::from(bytes));
        *rebuilt.method_mut() = method;
        *rebuilt.uri_mut() = uri;
        *rebuilt.version_mut() = version;
        *rebuilt.headers_mut() = headers;
        *rebuilt.extensions_mut() = extensions;
        let inner = T::from_request(rebuilt, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            key: Some(Keyed { key, fingerprint }),
            inner,
        })
    }
}

/// The scope of a credential's keys: the API key's id, or the JWT's
/// subject (a refreshed token of the same subject may retry). The tenant
/// is implicit: the record lives in the tenant's own database.
pub fn scope_of(principal: &Principal) -> String {
    match &principal.credential_id {
        CredentialId::ApiKey { key_id } => format!("key:{key_id}"),
        CredentialId::Jwt { .. } => format!("sub:{}", principal.subject),
    }
}

/// The write of one request, run under its key (or plainly without one).
/// Handlers:
///
/// ```ignore
/// let mut run = match idempotency::begin(ctx.pool(), scope_of(ctx.principal()), key, ttl).await? {
///     Ok(run) => run,
///     Err(replay) => return Ok(replay),
/// };
/// let response = crud::create(run.db(), …).await?;   // its BEGIN is a savepoint
/// run.finish(response).await
/// ```
///
/// With a key, [`begin`] opens the transaction the write runs in, takes a
/// transaction-scoped advisory lock on (scope, key) — held by a request in
/// flight, so a concurrent retry gets 409 at once instead of waiting — and
/// reads the record: same fingerprint → the stored response is replayed;
/// another fingerprint → 422. [`Run::finish`] stores a 2xx response in the
/// same transaction and commits: the write and its record commit together,
/// so a crash can leave neither half. An error response stores nothing
/// (the write rolled back, so a retry runs again).
pub struct Run {
    db: Db,
}

enum Db {
    Plain(PoolConnection<Postgres>),
    Keyed {
        tx: Transaction<'static, Postgres>,
        scope: String,
        keyed: Keyed,
        ttl: std::time::Duration,
    },
}

/// Advisory lock class of idempotency keys (the two-key form, apart from
/// the one-key locks migrations take).
const LOCK_CLASS: i32 = 0x4944_4d50; // "IDMP"

fn lock_key(scope: &str, key: &str) -> i32 {
    let digest = Sha256::new()
        .chain_update(scope.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[derive(sqlx::FromRow)]
struct Record {
    request_hash: Vec<u8>,
    status_code: Option<i16>,
    response_headers: Option<serde_json::Value>,
    response_body: Option<Vec<u8>>,
}

fn replay(record: Record) -> Response {
    let status = record
        .status_code
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::new(Body::from(record.response_body.unwrap_or_default()));
    *response.status_mut() = status;
    if let Some(serde_json::Value::Object(headers)) = record.response_headers {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response.headers_mut().insert(
        IDEMPOTENCY_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}

/// See [`Run`]. `Ok(Err(response))` is a replay to answer with.
pub async fn begin(
    pool: &PgPool,
    scope: String,
    key: Option<Keyed>,
    ttl: std::time::Duration,
) -> Result<Result<Run, Response>, ApiError> {
    let Some(keyed) = key else {
        return Ok(Ok(Run {
            db: Db::Plain(pool.acquire().await?),
        }));
    };
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(&scope, &keyed.key))
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        ));
    }
    let record: Option<Record> = sqlx::query_as(
        "SELECT request_hash, status_code, response_headers, response_body \
           FROM idempotency_keys WHERE scope = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(&scope)
    .bind(&keyed.key)
    .fetch_optional(&mut *tx)
    .await?;
    let stored = record.map(|r| {
        let mut fingerprint = [0u8; 32];
        if r.request_hash.len() == 32 {
            fingerprint.copy_from_slice(&r.request_hash);
        }
        Stored::Completed {
            fingerprint,
            response: r,
        }
    });
    match decide(stored, &keyed.fingerprint)? {
        Decision::Execute => Ok(Ok(Run {
            db: Db::Keyed {
                tx,
                scope,
                keyed,
                ttl,
            },
        })),
        Decision::Replay(record) => Ok(Err(replay(record))),
    }
}

impl Run {
    /// The connection the write runs on: inside the keyed transaction (the
    /// write's own `begin()` is then a savepoint), or a plain pooled one.
    pub fn db(&mut self) -> &mut PgConnection {
        match &mut self.db {
            Db::Plain(conn) => conn,
            Db::Keyed { tx, .. } => tx,
        }
    }

    /// Stores a 2xx `response` under the key and commits; answers it.
    pub async fn finish(self, response: Response) -> Result<Response, ApiError> {
        self.finish_redacted(response, &[]).await
    }

    /// As [`Run::finish`], with the JSON members at `redact` (pointers)
    /// stored as `null`: one-time secrets (an API key) are never stored,
    /// so a replay says what was created but cannot show the secret again.
    pub async fn finish_redacted(
        self,
        response: Response,
        redact: &[&str],
    ) -> Result<Response, ApiError> {
        let Db::Keyed {
            mut tx,
            scope,
            keyed,
            ttl,
        } = self.db
        else {
            return Ok(response);
        };
        if !response.status().is_success() {
            tx.commit().await?;
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("reading the response: {e}")))?;
        if bytes.len() <= MAX_STORED_BODY {
            let mut headers = serde_json::Map::new();
            for name in &STORED_HEADERS {
                if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                    headers.insert(name.as_str().to_string(), value.into());
                }
            }
            let stored_body = if redact.is_empty() {
                bytes.to_vec()
            } else {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or_default();
                for pointer in redact {
                    if let Some(member) = value.pointer_mut(pointer) {
                        *member = serde_json::Value::Null;
                    }
                }
                serde_json::to_vec(&value).unwrap_or_default()
            };
            sqlx::query(
                "INSERT INTO idempotency_keys \
                   (scope, key, request_hash, status_code, response_headers, response_body, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) \
                 ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
                   status_code = EXCLUDED.status_code, response_headers = EXCLUDED.response_headers, \
                   response_body = EXCLUDED.response_body, created_at = now(), \
                   expires_at = EXCLUDED.expires_at",
            )
            .bind(&scope)
            .bind(&keyed.key)
            .bind(&keyed.fingerprint[..])
            .bind(parts.status.as_u16() as i16)
            .bind(serde_json::Value::Object(headers))
            .bind(stored_body)
            .bind(ttl.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Response::from_parts(parts, Body::from(bytes)))
    }
}

/// Deletes expired records (the dispatcher's maintenance calls it; an
/// expired record is ignored by [`begin`] even before it is pruned).
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN \
           (SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT 10000)",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// The period records are kept (`--idempotency-ttl-hours`).
pub fn ttl() -> std::time::Duration {
    crate::events::settings::current().idempotency_ttl
}

/// [`begin`] for a tenant route: the scope is the caller's credential.
pub async fn begin_for(
    ctx: &crate::tenancy::TenantContext,
    key: Option<Keyed>,
) -> Result<Result<Run, Response>, ApiError> {
    begin(ctx.pool(), scope_of(ctx.principal()), key, ttl()).await
}

/// The operations (OpenAPI ids) whose writes run under [`begin`]: every
/// POST and PATCH that changes something. Read-only POSTs (`query`,
/// `search`) change nothing, so a retry is already safe; they ignore the
/// header.
pub const OPERATIONS: &[&str] = &[
    "createCollection",
    "updateCollection",
    "createDocument",
    "patchDocument",
    "bulkDocuments",
    "upsertVectors",
    "deleteVectors",
    "createKey",
    "updateMember",
    "acceptInvitation",
    "createWebhook",
    "updateWebhook",
    "rotateWebhookSecret",
    "replayWebhookDelivery",
    "replayEvent",
    "presignUrl",
    "createUpload",
    "completeUpload",
    "rotateSigningKeys",
    "signRenderUrl",
];

/// Adds the `Idempotency-Key` header and its 409/422 answers to the
/// [`OPERATIONS`] of the OpenAPI document.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, RefOr, Required, ResponseBuilder, Type};
    for item in doc.paths.paths.values_mut() {
        for operation in [item.post.as_mut(), item.patch.as_mut()]
            .into_iter()
            .flatten()
        {
            let known = operation
                .operation_id
                .as_deref()
                .is_some_and(|id| OPERATIONS.contains(&id));
            if !known {
                continue;
            }
            operation.parameters.get_or_insert_with(Vec::new).push(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Makes a retry safe: the first response (2xx) is stored for 24 h and \
                             replayed, with `Idempotency-Replayed: true`, to a retry with the same \
                             key and the same request. 1 to 255 visible ASCII characters, scoped \
                             to the credential.",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .min_length(Some(1))
                            .max_length(Some(MAX_KEY_LEN)),
                    ))
                    .build(),
            );
            for (status, description) in [
                (
                    "409",
                    "A request with this `Idempotency-Key` is still being processed",
                ),
                (
                    "422",
                    "This `Idempotency-Key` was used for a different request",
                ),
            ] {
                let responses = &mut operation.responses.responses;
                match responses.get_mut(status) {
                    Some(RefOr::T(response)) => {
                        response.description =
                            format!("{}; or: {description}", response.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        responses.insert(
                            status.to_string(),
                            RefOr::T(ResponseBuilder::new().description(description).build()),
                        );
                    }
                }
            }
        }
    }
}
