//! Presigned URLs: a tenant's client asks the API for a URL that lets
//! whoever holds it GET (or PUT) one object until it expires, without a
//! credential.
//!
//! ```text
//! /v1/tenants/{t}/buckets/{b}/objects/{key}?X-Strata-Expires=<unix s>
//!     &X-Strata-Key-Id=<16 hex>[&X-Strata-Content-Type=…][&X-Strata-Max-Length=…]
//!     &X-Strata-Signature=<hex HMAC-SHA256>
//! ```
//!
//! The signature covers, newline-separated after a version line: tenant,
//! method, bucket, the normalised (decoded, validated) key, expiry, key
//! id, content type, max length — each field of the URL and the method
//! the request uses, so changing any of them (or using a GET URL to PUT)
//! fails. None of the fields can hold a newline (keys, types and names
//! refuse control characters), so the string is unambiguous.
//!
//! Keys are per tenant, 32 random bytes in the tenant database
//! (`signing_keys`), found by id: a URL of another tenant names a key this
//! tenant does not have, which answers 404 like any foreign credential.
//! Rotation retires the active key; a retired key verifies for the grace
//! period (at least the longest expiry, so no URL dies early). Expiry is
//! bounded by configuration, checked before the signature, and the MAC is
//! compared in constant time; any failure refuses the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;

use super::keys::ObjectKey;
use crate::http::problem::{ApiError, FieldError};

type HmacSha256 = Hmac<Sha256>;

pub const EXPIRES: &str = "X-Strata-Expires";
pub const KEY_ID: &str = "X-Strata-Key-Id";
pub const SIGNATURE: &str = "X-Strata-Signature";
pub const CONTENT_TYPE: &str = "X-Strata-Content-Type";
pub const MAX_LENGTH: &str = "X-Strata-Max-Length";

const VERSION_LINE: &str = "strata-presign-v1";

/// What a URL grants, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tenant: String,
    /// `GET` (HEAD allowed too) or `PUT`.
    pub method: String,
    pub bucket: String,
    pub key: ObjectKey,
    pub expires: u64,
    pub key_id: String,
    pub content_type: Option<String>,
    pub max_length: Option<u64>,
}

impl Claims {
    fn string_to_sign(&self) -> String {
        format!(
            "{VERSION_LINE}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant,
            self.method,
            self.bucket,
            self.key.as_str(),
            self.expires,
            self.key_id,
            self.content_type.as_deref().unwrap_or(""),
            self.max_length.map(|n| n.to_string()).unwrap_or_default(),
        )
    }

    fn mac(&self, secret: &[u8]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(self.string_to_sign().as_bytes());
        mac
    }

    pub fn sign(&self, secret: &[u8]) -> String {
        hex::encode(self.mac(secret).finalize().into_bytes())
    }

    /// Constant-time (hmac's `verify_slice` uses `subtle`).
    pub fn verify(&self, secret: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        self.mac(secret).verify_slice(&signature).is_ok()
    }

    /// The URL's path and query.
    pub fn url(&self, signature: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair(EXPIRES, &self.expires.to_string());
        query.append_pair(KEY_ID, &self.key_id);
        if let Some(content_type) = &self.content_type {
            query.append_pair(CONTENT_TYPE, content_type);
        }
        if let Some(max) = self.max_length {
            query.append_pair(MAX_LENGTH, &max.to_string());
        }
        query.append_pair(SIGNATURE, signature);
        format!(
            "/v1/tenants/{}/buckets/{}/objects/{}?{}",
            self.tenant,
            self.bucket,
            self.key.url_path(),
            query.finish()
        )
    }
}

/// The presign parameters of a request's query, if it has any.
#[derive(Debug, Clone, Default)]
pub struct UrlParams {
    pub expires: Option<String>,
    pub key_id: Option<String>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub max_length: Option<String>,
}

impl UrlParams {
    pub fn from_query(query: Option<&str>) -> Option<Self> {
        let query = query?;
        let mut params = Self::default();
        let mut any = false;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                EXPIRES => &mut params.expires,
                KEY_ID => &mut params.key_id,
                SIGNATURE => &mut params.signature,
                CONTENT_TYPE => &mut params.content_type,
                MAX_LENGTH => &mut params.max_length,
                _ => continue,
            };
            any = true;
            *slot = Some(value.into_owned());
        }
        any.then_some(params)
    }
}

fn refused(detail: &str) -> ApiError {
    ApiError::Forbidden(format!("presigned URL refused: {detail}"))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a presigned request: the method it uses, the path's tenant,
/// bucket and key, and the URL's parameters. Returns the verified claims.
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    pool: &PgPool,
    grace: Duration,
    max_expiry: Duration,
    params: &UrlParams,
    tenant: &str,
    method: &str,
    bucket: &str,
    key: &ObjectKey,
) -> Result<Claims, ApiError> {
    let (Some(expires), Some(key_id), Some(signature)) =
        (&params.expires, &params.key_id, &params.signature)
    else {
        return Err(refused(
            "it lacks X-Strata-Expires, X-Strata-Key-Id or X-Strata-Signature",
        ));
    };
    let expires: u64 = expires.parse().map_err(|_| refused("malformed expiry"))?;
    let now = now_unix();
    if expires <= now {
        return Err(refused("it has expired"));
    }
    // A URL claiming a longer life than we ever issue was not ours.
    if expires > now + max_expiry.as_secs() + 60 {
        return Err(refused("its expiry is beyond the allowed maximum"));
    }
    if !is_key_id(key_id) {
        return Err(ApiError::NotFound);
    }
    let max_length = params
        .max_length
        .as_deref()
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| refused("malformed max length"))
        })
        .transpose()?;
    let secret: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT secret FROM signing_keys
          WHERE id = $1
            AND (retired_at IS NULL OR retired_at + make_interval(secs => $2) > now())",
    )
    .bind(key_id)
    .bind(grace.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    // A key this tenant does not have (another tenant's, or long retired):
    // the 404 of a foreign credential.
    let Some(secret) = secret else {
        return Err(ApiError::NotFound);
    };
    // HEAD reads what GET reads.
    let method = if method == "HEAD" { "GET" } else { method };
    let claims = Claims {
        tenant: tenant.to_string(),
        method: method.to_string(),
        bucket: bucket.to_string(),
        key: key.clone(),
        expires,
        key_id: key_id.clone(),
        content_type: params.content_type.clone(),
        max_length,
    };
    if !claims.verify(&secret, signature) {
        return Err(refused("the signature does not match"));
    }
    Ok(claims)
}

fn is_key_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The active key (newest), created on first use.
pub async fn signing_key(pool: &PgPool) -> Result<(String, Vec<u8>), ApiError> {
    let current: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, secret FROM signing_keys WHERE retired_at IS NULL
          ORDER BY created_at DESC, id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(current) = current {
        return Ok(current);
    }
    let (id, secret) = new_key();
    sqlx::query("INSERT INTO signing_keys (id, secret) VALUES ($1, $2)")
        .bind(&id)
        .bind(&secret)
        .execute(pool)
        .await?;
    Ok((id, secret))
}

fn new_key() -> (String, Vec<u8>) {
    let mut id = [0u8; 8];
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    (hex::encode(id), secret)
}

/// Retires every active key and makes a new one, on `conn` (the request's
/// idempotency run); returns its id.
pub async fn rotate(conn: &mut sqlx::PgConnection) -> Result<String, ApiError> {
    let (id, secret) = new_key();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO signing_keys (id, secret) VALUES ($1, $2)")
        .bind(&id)
        .bind(&secret)
        .execute(&mut *tx)
        .await?;
    // Keys past any grace are of no use to anyone.
    sqlx::query("DELETE FROM signing_keys WHERE retired_at < now() - interval '30 days'")
        .execute(&mut *tx)
        .await?;
    crate::events::record(
        &mut tx,
        crate::events::Event::new(crate::events::types::SIGNING_KEY_ROTATED, id.clone())
            .data(serde_json::json!({"keyId": id})),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// `POST …/buckets/{bucket}/presign` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresignBody {
    /// `GET` or `PUT`.
    #[schema(example = "GET")]
    pub method: String,
    /// The object key (not URL-encoded).
    #[schema(example = "photos/cat.jpg")]
    pub key: String,
    /// Seconds the URL stays valid (default 900; at most the configured
    /// maximum).
    pub expires_in: Option<u64>,
    /// PUT only: the `Content-Type` the upload must declare.
    pub content_type: Option<String>,
    /// PUT only: the most bytes the upload may have.
    pub max_length: Option<u64>,
}

/// A presigned URL.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PresignedUrl {
    /// Path and query on this data plane (prefix its address).
    pub url: String,
    pub method: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Default life of a presigned URL.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(900);

/// Builds a signed URL for the caller (its permission checked by the route).
pub async fn issue(
    pool: &PgPool,
    max_expiry: Duration,
    tenant: &str,
    bucket: &str,
    body: PresignBody,
) -> Result<PresignedUrl, ApiError> {
    let method = body.method.to_ascii_uppercase();
    let mut errors = Vec::new();
    if method != "GET" && method != "PUT" {
        errors.push(FieldError::new("/method", "must be GET or PUT"));
    }
    let key = match ObjectKey::parse(&body.key) {
        Ok(key) => Some(key),
        Err(message) => {
            errors.push(FieldError::new("/key", format!("the object key {message}")));
            None
        }
    };
    let expires_in = body
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_EXPIRY.min(max_expiry));
    if expires_in.is_zero() || expires_in > max_expiry {
        errors.push(FieldError::new(
            "/expires_in",
            format!("must be between 1 and {} seconds", max_expiry.as_secs()),
        ));
    }
    if method == "GET" && (body.content_type.is_some() || body.max_length.is_some()) {
        errors.push(FieldError::new(
            "/method",
            "content_type and max_length constrain uploads: PUT only",
        ));
    }
    let content_type = match body.content_type.as_deref() {
        Some(declared) => match super::content_type::ContentType::parse(Some(declared)) {
            Ok(parsed) => Some(parsed.value),
            Err(_) => {
                errors.push(FieldError::new("/content_type", "not a valid media type"));
                None
            }
        },
        None => None,
    };
    let (Some(key), true) = (key, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let (key_id, secret) = signing_key(pool).await?;
    let claims = Claims {
        tenant: tenant.to_string(),
        method: method.clone(),
        bucket: bucket.to_string(),
        key,
        expires: now_unix() + expires_in.as_secs(),
        key_id,
        content_type,
        max_length: body.max_length,
    };
    let signature = claims.sign(&secret);
    Ok(PresignedUrl {
        url: claims.url(&signature),
        method,
        expires_at: claims.expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            tenant: "acme".into(),
            method: "GET".into(),
            bucket: "photos".into(),
            key: ObjectKey::parse("a b/c.txt").expect("key"),
            expires: 2_000_000_000,
            key_id: "0123456789abcdef".into(),
            content_type: None,
            max_length: None,
        }
    }

    #[test]
    fn every_field_is_signed() {
        let secret = [7u8; 32];
        let base = claims();
        let signature = base.sign(&secret);
        assert!(base.verify(&secret, &signature));
        assert!(!base.verify(&[8u8; 32], &signature));
        assert!(!base.verify(&secret, "zz"));
        let variants = [
            Claims {
                tenant: "acme2".into(),
                ..base.clone()
            },
            Claims {
                method: "PUT".into(),
                ..base.clone()
            },
            Claims {
                bucket: "photos2".into(),
                ..base.clone()
            },
            Claims {
                key: ObjectKey::parse("a b/d.txt").expect("key"),
                ..base.clone()
            },
            Claims {
                expires: base.expires + 1,
                ..base.clone()
            },
            Claims {
                key_id: "0123456789abcdee".into(),
                ..base.clone()
            },
            Claims {
                content_type: Some("text/plain".into()),
                ..base.clone()
            },
            Claims {
                max_length: Some(1),
                ..base.clone()
            },
        ];
        for variant in variants {
            assert!(!variant.verify(&secret, &signature), "{variant:?}");
        }
        let url = base.url(&signature);
        assert!(
            url.starts_with("/v1/tenants/acme/buckets/photos/objects/a%20b/c.txt?"),
            "{url}"
        );
        let params = UrlParams::from_query(url.split_once('?').map(|(_, q)| q)).expect("params");
        assert_eq!(params.signature.as_deref(), Some(signature.as_str()));
        assert!(UrlParams::from_query(Some("prefix=a")).is_none());
    }
}
