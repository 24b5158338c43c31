//! Signed transform URLs:
//!
//! ```text
//! /v1/tenants/{t}/buckets/{b}/render/{key}?w=400&h=300&fit=cover&g=center&fmt=webp&q=80
//!     &X-Strata-Expires=<unix s>&X-Strata-Key-Id=<16 hex>&X-Strata-Signature=<hex>
//! ```
//!
//! HMAC-SHA256, with the tenant's presigned-URL signing keys (same table,
//! same rotation and grace: [`crate::storage::presign`]), over a version
//! line distinct from presigned URLs' (a presign signature can never pass
//! here, nor the reverse), then tenant, bucket, the normalised key, the
//! canonical parameter string ([`super::params::Params::canonical`]),
//! expiry and key id, newline-separated (none of them can hold a newline).
//! Any change to any field — including a parameter spelled differently
//! but meaning something else — fails; the same transform spelled another
//! way (`width=` for `w=`) verifies, because the canonical form is signed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;

use crate::http::problem::ApiError;
use crate::storage::keys::ObjectKey;

type HmacSha256 = Hmac<Sha256>;

pub const EXPIRES: &str = "X-Strata-Expires";
pub const KEY_ID: &str = "X-Strata-Key-Id";
pub const SIGNATURE: &str = "X-Strata-Signature";

const VERSION_LINE: &str = "strata-render-v1";

/// What a signed render URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderClaims {
    pub tenant: String,
    pub bucket: String,
    pub key: ObjectKey,
    pub params: String,
    pub expires: u64,
    pub key_id: String,
}

impl RenderClaims {
    fn mac(&self, secret: &[u8]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(
            format!(
                "{VERSION_LINE}\n{}\n{}\n{}\n{}\n{}\n{}",
                self.tenant,
                self.bucket,
                self.key.as_str(),
                self.params,
                self.expires,
                self.key_id
            )
            .as_bytes(),
        );
        mac
    }

    pub fn sign(&self, secret: &[u8]) -> String {
        hex::encode(self.mac(secret).finalize().into_bytes())
    }

    /// Constant time (`verify_slice`).
    pub fn verify(&self, secret: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        self.mac(secret).verify_slice(&signature).is_ok()
    }
}

fn refused(detail: &str) -> ApiError {
    ApiError::Forbidden(format!("signed render URL refused: {detail}"))
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_key_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Verifies a signed render request; every failure is a 403 (an unknown
/// key id too: unlike presigned URLs, the route already names a bucket
/// that exists and a tampered key id is just tampering).
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    pool: &PgPool,
    grace: Duration,
    max_expiry: Duration,
    tenant: &str,
    bucket: &str,
    key: &ObjectKey,
    params: &str,
    expires: Option<&str>,
    key_id: Option<&str>,
    signature: Option<&str>,
) -> Result<(), ApiError> {
    let (Some(expires), Some(key_id), Some(signature)) = (expires, key_id, signature) else {
        return Err(refused(
            "it lacks X-Strata-Expires, X-Strata-Key-Id or X-Strata-Signature",
        ));
    };
    let expires: u64 = expires.parse().map_err(|_| refused("malformed expiry"))?;
    let now = now_unix();
    if expires <= now {
        return Err(refused("it has expired"));
    }
    if expires > now + max_expiry.as_secs() + 60 {
        return Err(refused("its expiry is beyond the allowed maximum"));
    }
    if !is_key_id(key_id) {
        return Err(refused("unknown signing key"));
    }
    let secret: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT secret FROM signing_keys
          WHERE id = $1
            AND (retired_at IS NULL OR retired_at + make_interval(secs => $2) > now())",
    )
    .bind(key_id)
    .bind(grace.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some(secret) = secret else {
        return Err(refused("unknown signing key"));
    };
    let claims = RenderClaims {
        tenant: tenant.to_string(),
        bucket: bucket.to_string(),
        key: key.clone(),
        params: params.to_string(),
        expires,
        key_id: key_id.to_string(),
    };
    if !claims.verify(&secret, signature) {
        return Err(refused("the signature does not match"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_signed() {
        let secret = [3u8; 32];
        let base = RenderClaims {
            tenant: "acme".into(),
            bucket: "photos".into(),
            key: ObjectKey::parse("a/b.jpg").expect("key"),
            params: "w=4&fit=cover&g=center&fmt=auto&q=80".into(),
            expires: 2_000_000_000,
            key_id: "0123456789abcdef".into(),
        };
        let signature = base.sign(&secret);
        assert!(base.verify(&secret, &signature));
        for variant in [
            RenderClaims {
                tenant: "acme2".into(),
                ..base.clone()
            },
            RenderClaims {
                bucket: "photos2".into(),
                ..base.clone()
            },
            RenderClaims {
                key: ObjectKey::parse("a/c.jpg").expect("key"),
                ..base.clone()
            },
            RenderClaims {
                params: "w=5&fit=cover&g=center&fmt=auto&q=80".into(),
                ..base.clone()
            },
            RenderClaims {
                expires: base.expires + 1,
                ..base.clone()
            },
            RenderClaims {
                key_id: "0123456789abcdee".into(),
                ..base.clone()
            },
        ] {
            assert!(!variant.verify(&secret, &signature), "{variant:?}");
        }
    }
}
