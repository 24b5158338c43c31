//! Bearer credentials: JWTs and tenant API keys, turned into a [`Principal`].
//!
//! - JWT: HS256 with a configured secret (local use) or RS256/ES256 with a
//!   key from a JWKS (file or URL), chosen by the token's `kid`. The
//!   algorithm family is fixed by where the key came from, never by the
//!   token alone, which closes the classic "alg confusion" holes. Claims:
//!   `tenant`, `sub`, `role`; `exp` is required, `nbf` is checked, both with
//!   a small leeway; `aud`/`iss` when configured.
//! - API key: `sk_<key id>_<secret>`. The key id is visible so the store
//!   finds the row with one indexed read; only SHA-256 of the secret is
//!   stored and it is compared in constant time. Secrets are 256 random
//!   bits, so an unsalted fast hash is enough (no dictionary to attack).
//!
//! Every failure is the same 401 problem without saying which check failed
//! (unknown key id, bad secret, bad signature…), except "expired", which
//! clients need to know to refresh.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::problem::ApiError;

/// Longest `Authorization` value accepted (JWTs with many claims stay far
/// below this).
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;
/// Largest JWKS document accepted, and most keys taken from it.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
pub const MAX_JWKS_KEYS: usize = 100;

/// Who is calling, for which tenant, with which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub subject: String,
    /// A role name of the tenant's permission matrix (`viewer`, `admin`, …).
    pub role: String,
    pub credential_id: CredentialId,
}

/// Which credential authenticated the request (for audit and revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialId {
    /// The token's `jti` when it has one.
    Jwt {
        token_id: Option<String>,
    },
    ApiKey {
        key_id: String,
    },
}

/// The tenant in the path must be the credential's, and a mismatch is a 404
/// (not 403): a caller learns nothing about other tenants, not even that
/// they exist.
pub fn ensure_tenant(principal: &Principal, path_tenant: &str) -> Result<(), ApiError> {
    if principal.tenant == path_tenant {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

fn unauthenticated() -> ApiError {
    ApiError::Unauthenticated("the credential is missing, malformed or not valid".into())
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, like `catalog.tenants.name`, at most
/// 253 bytes (a Kubernetes object name).
pub fn is_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

/// `^[a-z][a-z0-9_-]{0,62}$`, like the tenant database's `roles.name`.
pub fn is_role_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

// ---- The Authorization header ----------------------------------------------

/// A bearer credential, classified by its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer<'a> {
    Jwt(&'a str),
    ApiKey(ApiKey<'a>),
}

/// Reads `Authorization: Bearer <credential>` (scheme case-insensitive,
/// RFC 9110 §11.1). Missing → 401 as well: every API route needs one.
pub fn parse_authorization(headers: &HeaderMap) -> Result<Bearer<'_>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or_else(|| {
        ApiError::Unauthenticated("send Authorization: Bearer <credential>".into())
    })?;
    if values.next().is_some() || value.len() > MAX_CREDENTIAL_LEN {
        return Err(unauthenticated());
    }
    let value = value.to_str().map_err(|_| unauthenticated())?;
    let (scheme, credential) = value.split_once(' ').ok_or_else(unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated());
    }
    let credential = credential.trim();
    if credential.starts_with(API_KEY_PREFIX) {
        return parse_api_key(credential)
            .map(Bearer::ApiKey)
            .ok_or_else(unauthenticated);
    }
    // A JWS compact serialisation: three base64url parts.
    let is_jwt = credential.split('.').count() == 3
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if is_jwt {
        Ok(Bearer::Jwt(credential))
    } else {
        Err(unauthenticated())
    }
}

// ---- API keys ----------------------------------------------------------------

pub const API_KEY_PREFIX: &str = "sk_";
/// Key ids are 16 lowercase hex digits (64 random bits: unique per tenant
/// in practice, and the unique index catches the rest).
pub const KEY_ID_LEN: usize = 16;
/// Secrets are 32 random bytes, base64url without padding.
pub const SECRET_LEN: usize = 43;

/// A parsed `sk_<key id>_<secret>`. The secret is not `Debug`-printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey<'a> {
    pub key_id: &'a str,
    secret: &'a str,
}

impl std::fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ApiKey<'_> {
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(self.secret)
    }

    /// Constant-time comparison with the stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(self.secret_hash()[..].ct_eq(stored_hash))
    }
}

/// Exact lengths and alphabets: anything else is not a key of ours.
pub fn parse_api_key(credential: &str) -> Option<ApiKey<'_>> {
    let rest = credential.strip_prefix(API_KEY_PREFIX)?;
    // The secret's alphabet contains `_`, the key id's does not.
    let (key_id, secret) = rest.split_once('_')?;
    let key_id_ok = key_id.len() == KEY_ID_LEN
        && key_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (key_id_ok && secret_ok).then_some(ApiKey { key_id, secret })
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A freshly generated key: `token` is shown to the user once; only
/// `key_id` and `secret_hash` are stored.
pub struct NewApiKey {
    pub token: String,
    pub key_id: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

pub fn generate_api_key() -> NewApiKey {
    let mut rng = rand::rng();
    let mut id = [0u8; KEY_ID_LEN / 2];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey {
        token: format!("{API_KEY_PREFIX}{key_id}_{secret}"),
        secret_hash: hash_secret(&secret),
        key_id,
    }
}

/// What the store knows about a key.
#[derive(Debug, Clone)]
pub struct StoredApiKey {
    pub tenant: String,
    /// The member the key belongs to.
    pub subject: String,
    pub role: String,
    pub secret_hash: Vec<u8>,
    pub expires_at: Option<SystemTime>,
    pub revoked: bool,
}

/// Looks API keys up by id. Revocation must take effect at once on every
/// replica, so an implementation either reads the database or invalidates
/// its cache through the outbox.
#[async_trait::async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn find(&self, key_id: &str) -> anyhow::Result<Option<StoredApiKey>>;
}

/// Checks a presented key against its stored row.
pub fn verify_api_key(
    key: &ApiKey<'_>,
    stored: Option<&StoredApiKey>,
    now: SystemTime,
) -> Result<Principal, ApiError> {
    let Some(stored) = stored else {
        return Err(unauthenticated());
    };
    // Compare first, whatever the row says, so timing does not tell a
    // revoked key from a wrong secret.
    let secret_ok = key.matches(&stored.secret_hash);
    let expired = stored.expires_at.is_some_and(|at| at <= now);
    if !secret_ok || stored.revoked || expired || !is_role_name(&stored.role) {
        return Err(unauthenticated());
    }
    Ok(Principal {
        tenant: stored.tenant.clone(),
        subject: stored.subject.clone(),
        role: stored.role.clone(),
        credential_id: CredentialId::ApiKey {
            key_id: key.key_id.to_string(),
        },
    })
}

// ---- JWT ---------------------------------------------------------------------

/// Where RS256/ES256 keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// HS256 secret (local use). At least 32 bytes.
    pub hs256_secret: Option<Vec<u8>>,
    pub jwks: Option<JwksSource>,
    /// Accepted `aud` values; `None` disables the audience check.
    pub audience: Option<Vec<String>>,
    /// Accepted `iss` values; `None` disables the issuer check.
    pub issuer: Option<Vec<String>>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// Keys are re-read at least this often.
    pub jwks_max_age: Duration,
    /// An unknown `kid` triggers a re-read at most this often, so a flood of
    /// random kids cannot hammer the identity provider.
    pub jwks_min_refresh: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    #[error("JWT verification needs an HS256 secret or a JWKS")]
    NoKeys,
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The claims Strata reads. `exp`, `nbf`, `aud`, `iss` are validated by
/// jsonwebtoken (from the raw claims, so they need no field here).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    role: String,
    #[serde(default)]
    jti: Option<String>,
}

/// A verification key and the one algorithm it may be used with.
#[derive(Clone)]
struct VerifyKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// The key's algorithm: declared `alg` if any, else implied by its type.
/// Only RS256 and ES256 (P-256) are accepted from a JWKS.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(_) => None,
    }
}

/// Parses a JWKS document into usable keys by `kid`; keys without a kid or
/// of unsupported types are skipped (a JWKS may list encryption keys too).
fn parse_jwks(bytes: &[u8]) -> anyhow::Result<HashMap<String, VerifyKey>> {
    anyhow::ensure!(
        bytes.len() <= MAX_JWKS_BYTES,
        "JWKS larger than {MAX_JWKS_BYTES} bytes"
    );
    let set: JwkSet = serde_json::from_slice(bytes)?;
    let mut keys = HashMap::new();
    for jwk in set.keys.iter().take(MAX_JWKS_KEYS) {
        let (Some(kid), Some(algorithm)) = (&jwk.common.key_id, jwk_algorithm(jwk)) else {
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), VerifyKey { key, algorithm });
            }
            Err(error) => tracing::warn!(kid, %error, "skipping unusable JWKS key"),
        }
    }
    Ok(keys)
}

struct JwksState {
    keys: Arc<HashMap<String, VerifyKey>>,
    fetched_at: Option<Instant>,
}

/// JWKS keys by `kid`. Stale keys are served while a background task
/// re-reads the source (requests never wait on a slow identity provider for
/// a key we already have); an unknown kid re-reads in line, at most every
/// `min_refresh`. A failed re-read keeps the keys we had: an identity
/// provider hiccup must not log everyone out.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<JwksInner>,
}

struct JwksInner {
    source: JwksSource,
    http: reqwest::Client,
    state: tokio::sync::RwLock<JwksState>,
    /// Single flight: one re-read at a time; others wait and reuse it.
    refreshing: tokio::sync::Mutex<()>,
    /// A background refresh is under way.
    background: AtomicBool,
    max_age: Duration,
    min_refresh: Duration,
}

impl JwksCache {
    pub fn new(
        source: JwksSource,
        max_age: Duration,
        min_refresh: Duration,
    ) -> Result<Self, AuthConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(Self {
            inner: Arc::new(JwksInner {
                source,
                http,
                state: tokio::sync::RwLock::new(JwksState {
                    keys: Arc::new(HashMap::new()),
                    fetched_at: None,
                }),
                refreshing: tokio::sync::Mutex::new(()),
                background: AtomicBool::new(false),
                max_age,
                min_refresh,
            }),
        })
    }

    /// Reads the keys now (at startup), so a broken source shows in the logs
    /// before the first request; returns how many usable keys it has.
    pub async fn load(&self) -> anyhow::Result<usize> {
        let keys = parse_jwks(&self.inner.read_source().await?)?;
        let count = keys.len();
        let mut state = self.inner.state.write().await;
        state.keys = Arc::new(keys);
        state.fetched_at = Some(Instant::now());
        Ok(count)
    }

    async fn get(&self, kid: &str) -> Option<VerifyKey> {
        let inner = &self.inner;
        let (fetched_at, found) = {
            let state = inner.state.read().await;
            (state.fetched_at, state.keys.get(kid).cloned())
        };
        match (fetched_at, found) {
            (Some(at), Some(key)) => {
                // One background refresh at a time, not one per request.
                if at.elapsed() >= inner.max_age && !inner.background.swap(true, Ordering::AcqRel) {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        inner.refresh(inner.max_age).await;
                        inner.background.store(false, Ordering::Release);
                    });
                }
                Some(key)
            }
            (None, _) => {
                inner.refresh(inner.max_age).await;
                inner.state.read().await.keys.get(kid).cloned()
            }
            (Some(_), None) => {
                inner.refresh(inner.min_refresh).await;
                inner.state.read().await.keys.get(kid).cloned()
            }
        }
    }
}

impl JwksInner {
    async fn read_source(&self) -> anyhow::Result<Vec<u8>> {
        match &self.source {
            JwksSource::File(path) => {
                let size = tokio::fs::metadata(path).await?.len();
                anyhow::ensure!(size <= MAX_JWKS_BYTES as u64, "JWKS file too large");
                Ok(tokio::fs::read(path).await?)
            }
            JwksSource::Url(url) => {
                let mut response = self.http.get(url).send().await?.error_for_status()?;
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    anyhow::ensure!(
                        body.len() + chunk.len() <= MAX_JWKS_BYTES,
                        "JWKS response too large"
                    );
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }

    /// Re-reads the source unless someone else did so within `min_interval`.
    async fn refresh(&self, min_interval: Duration) {
        let _flight = self.refreshing.lock().await;
        if let Some(at) = self.state.read().await.fetched_at
            && at.elapsed() < min_interval
        {
            return;
        }
        let result = match self.read_source().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(error) => Err(error),
        };
        let mut state = self.state.write().await;
        // Failed attempts count too, so a down provider is not retried on
        // every request.
        state.fetched_at = Some(Instant::now());
        match result {
            Ok(keys) => state.keys = Arc::new(keys),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "JWKS refresh failed; keeping previous keys"
            ),
        }
    }
}

pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<JwksCache>,
    settings: JwtSettings,
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Result<Self, AuthConfigError> {
        let hs256 = match &settings.hs256_secret {
            Some(secret) if secret.len() < 32 => return Err(AuthConfigError::ShortSecret),
            Some(secret) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let jwks = match &settings.jwks {
            Some(source) => Some(JwksCache::new(
                source.clone(),
                settings.jwks_max_age,
                settings.jwks_min_refresh,
            )?),
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(Self {
            hs256,
            jwks,
            settings,
        })
    }

    /// Loads the JWKS, if any (see [`JwksCache::load`]).
    pub async fn load_keys(&self) -> anyhow::Result<Option<usize>> {
        match &self.jwks {
            Some(jwks) => jwks.load().await.map(Some),
            None => Ok(None),
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.settings.audience {
            Some(audience) => {
                validation.set_audience(audience);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Verifies signature and claims and returns the principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(unauthenticated());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated())?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => VerifyKey {
                    key: key.clone(),
                    algorithm: Algorithm::HS256,
                },
                None => return Err(unauthenticated()),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let (Some(jwks), Some(kid)) = (&self.jwks, header.kid.as_deref()) else {
                    return Err(unauthenticated());
                };
                if kid.len() > 256 {
                    return Err(unauthenticated());
                }
                match jwks.get(kid).await {
                    Some(key) if key.algorithm == header.alg => key,
                    _ => return Err(unauthenticated()),
                }
            }
            _ => return Err(unauthenticated()),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm))
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::Unauthenticated("the token has expired".into())
                }
                _ => unauthenticated(),
            })?;
        let claims = data.claims;
        if !is_tenant_name(&claims.tenant)
            || !is_role_name(&claims.role)
            || claims.sub.is_empty()
            || claims.sub.len() > 256
        {
            return Err(unauthenticated());
        }
        Ok(Principal {
            tenant: claims.tenant,
            subject: claims.sub,
            role: claims.role,
            credential_id: CredentialId::Jwt {
                token_id: claims.jti,
            },
        })
    }
}

// ---- Both ----------------------------------------------------------------------

/// Turns the `Authorization` header into a principal.
#[derive(Clone)]
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    api_keys: Option<Arc<dyn ApiKeyStore>>,
}

impl Authenticator {
    pub fn new(jwt: Option<JwtVerifier>, api_keys: Option<Arc<dyn ApiKeyStore>>) -> Self {
        Self {
            jwt: jwt.map(Arc::new),
            api_keys,
        }
    }

    /// Verifies a JWT alone. Tenant routes use this through
    /// [`crate::tenancy::TenantContext`], which looks API keys up in the
    /// tenant's own database (this authenticator has no tenant to look in).
    pub async fn verify_jwt(&self, token: &str) -> Result<Principal, ApiError> {
        match &self.jwt {
            Some(verifier) => verifier.verify(token).await,
            None => Err(unauthenticated()),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        match parse_authorization(headers)? {
            Bearer::Jwt(token) => match &self.jwt {
                Some(verifier) => verifier.verify(token).await,
                None => Err(unauthenticated()),
            },
            Bearer::ApiKey(key) => {
                let Some(store) = &self.api_keys else {
                    return Err(unauthenticated());
                };
                // A store failure is ours (500), not the client's (401).
                let stored = store.find(key.key_id).await.map_err(ApiError::Internal)?;
                verify_api_key(&key, stored.as_ref(), SystemTime::now())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");
    const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-private.pem");
    const EC_PEM: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-private.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> serde_json::Value {
        json!({
            "sub": "alice", "tenant": "acme", "role": "editor",
            "exp": now() + 600, "jti": "t-1",
        })
    }

    fn hs(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    fn signed(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PEM),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PEM),
            _ => Ok(EncodingKey::from_secret(SECRET)),
        }
        .expect("key");
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, claims, &key).expect("encode")
    }

    fn hs_verifier(f: impl FnOnce(&mut JwtSettings)) -> JwtVerifier {
        let mut settings = JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            ..JwtSettings::default()
        };
        f(&mut settings);
        JwtVerifier::new(settings).expect("verifier")
    }

    fn jwks_verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            jwks: Some(JwksSource::File(JWKS.into())),
            ..JwtSettings::default()
        })
        .expect("verifier")
    }

    async fn rejected(verifier: &JwtVerifier, token: &str) -> bool {
        matches!(
            verifier.verify(token).await,
            Err(ApiError::Unauthenticated(_))
        )
    }

    #[tokio::test]
    async fn hs256_round_trip() {
        let principal = hs_verifier(|_| {})
            .verify(&hs(&claims()))
            .await
            .expect("valid");
        assert_eq!(
            principal,
            Principal {
                tenant: "acme".into(),
                subject: "alice".into(),
                role: "editor".into(),
                credential_id: CredentialId::Jwt {
                    token_id: Some("t-1".into())
                },
            }
        );
    }

    #[tokio::test]
    async fn time_claims_with_leeway() {
        let v = hs_verifier(|s| s.leeway = Duration::from_secs(30));
        let mut c = claims();
        c["exp"] = json!(now() - 10);
        assert!(v.verify(&hs(&c)).await.is_ok(), "within leeway");
        c["exp"] = json!(now() - 120);
        match v.verify(&hs(&c)).await {
            Err(ApiError::Unauthenticated(detail)) => assert!(detail.contains("expired")),
            other => panic!("{other:?}"),
        }
        let mut c = claims();
        c["nbf"] = json!(now() + 10);
        assert!(v.verify(&hs(&c)).await.is_ok(), "nbf within leeway");
        c["nbf"] = json!(now() + 120);
        assert!(rejected(&v, &hs(&c)).await, "not yet valid");
        // GHSA-h395-gr6q-cpjc: a string nbf must not be taken as absent.
        c["nbf"] = json!("99999999999");
        assert!(rejected(&v, &hs(&c)).await, "string nbf");
        let mut c = claims();
        c.as_object_mut().map(|o| o.remove("exp"));
        assert!(rejected(&v, &hs(&c)).await, "exp is required");
    }

    #[tokio::test]
    async fn claims_are_required_and_checked() {
        let v = hs_verifier(|_| {});
        for field in ["sub", "tenant", "role"] {
            let mut c = claims();
            c.as_object_mut().map(|o| o.remove(field));
            assert!(rejected(&v, &hs(&c)).await, "without {field}");
        }
        for (field, value) in [
            ("tenant", "Acme"),
            ("tenant", "a/b"),
            ("role", "Admin"),
            ("role", ""),
            ("sub", ""),
        ] {
            let mut c = claims();
            c[field] = json!(value);
            assert!(rejected(&v, &hs(&c)).await, "{field}={value}");
        }
    }

    #[tokio::test]
    async fn audience_and_issuer() {
        let v = hs_verifier(|s| {
            s.audience = Some(vec!["strata".into()]);
            s.issuer = Some(vec!["https://id.example".into()]);
        });
        let mut c = claims();
        assert!(rejected(&v, &hs(&c)).await, "missing aud/iss");
        c["aud"] = json!("strata");
        c["iss"] = json!("https://id.example");
        assert!(v.verify(&hs(&c)).await.is_ok());
        c["aud"] = json!("other");
        assert!(rejected(&v, &hs(&c)).await, "wrong aud");
        c["aud"] = json!("strata");
        c["iss"] = json!("https://evil.example");
        assert!(rejected(&v, &hs(&c)).await, "wrong iss");
    }

    #[tokio::test]
    async fn bad_signatures_and_algorithms() {
        let v = hs_verifier(|_| {});
        let other = jsonwebtoken::encode(
            &Header::default(),
            &claims(),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .expect("encode");
        assert!(rejected(&v, &other).await, "other secret");
        let token = hs(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(
                &json!({"sub":"alice","tenant":"other","role":"owner","exp":now()+600}),
            )
            .expect("json"),
        );
        parts[1] = &forged_claims;
        assert!(rejected(&v, &parts.join(".")).await, "altered claims");
        // alg=none.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{forged_claims}.");
        assert!(rejected(&v, &unsigned).await, "alg none");
        // HS512 is not on the list even with the right secret.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert!(rejected(&v, &hs512).await, "HS512");
        // An RS256 token when only HS256 is configured.
        assert!(rejected(&v, &signed(Algorithm::RS256, Some("rsa-1"), &claims())).await);
        assert!(rejected(&v, "not.a.jwt").await);
    }

    #[tokio::test]
    async fn jwks_rs256_and_es256() {
        let v = jwks_verifier();
        let p = v
            .verify(&signed(Algorithm::RS256, Some("rsa-1"), &claims()))
            .await
            .expect("rs256");
        assert_eq!(p.tenant, "acme");
        v.verify(&signed(Algorithm::ES256, Some("ec-1"), &claims()))
            .await
            .expect("es256");
        assert!(
            rejected(&v, &signed(Algorithm::RS256, Some("nope"), &claims())).await,
            "unknown kid"
        );
        assert!(
            rejected(&v, &signed(Algorithm::RS256, None, &claims())).await,
            "no kid"
        );
        // The EC key's kid with an RS256 token: the key decides the algorithm.
        assert!(
            rejected(&v, &signed(Algorithm::RS256, Some("ec-1"), &claims())).await,
            "kid/alg mismatch"
        );
        // HS256 is not accepted when only a JWKS is configured (no public key
        // may be used as an HMAC secret).
        assert!(rejected(&v, &hs(&claims())).await, "hs256 without secret");
    }

    #[test]
    fn jwks_parsing_skips_what_it_cannot_use() {
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-384", "kid": "p384",
             "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "ok", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse_jwks(&serde_json::to_vec(&doc).expect("json")).expect("parse");
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(&vec![b' '; MAX_JWKS_BYTES + 1]).is_err());
    }

    #[tokio::test]
    async fn jwks_url_refreshes_on_unknown_kid_at_a_bounded_rate() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let full = std::fs::read_to_string(JWKS).expect("fixture");
        let full: serde_json::Value = serde_json::from_str(&full).expect("json");
        // First the server publishes only the RSA key, later both.
        let only_rsa = json!({"keys": [full["keys"][0].clone()]});
        let hits = Arc::new(AtomicUsize::new(0));
        let serve_hits = hits.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let n = serve_hits.fetch_add(1, Ordering::SeqCst);
                let body = if n == 0 {
                    only_rsa.clone()
                } else {
                    full.clone()
                };
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut settings = JwtSettings {
            jwks: Some(JwksSource::Url(format!("http://{addr}/jwks"))),
            jwks_min_refresh: Duration::from_millis(300),
            ..JwtSettings::default()
        };
        settings.jwks_max_age = Duration::from_secs(3600);
        let v = JwtVerifier::new(settings).expect("verifier");
        v.verify(&signed(Algorithm::RS256, Some("rsa-1"), &claims()))
            .await
            .expect("rsa");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let ec = signed(Algorithm::ES256, Some("ec-1"), &claims());
        // Within min_refresh: unknown kid, no new fetch.
        assert!(rejected(&v, &ec).await);
        assert!(rejected(&v, &signed(Algorithm::RS256, Some("random"), &claims())).await);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        v.verify(&ec).await.expect("ec after refresh");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Known kids are served from the cache.
        v.verify(&ec).await.expect("cached");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        server.abort();
    }

    #[tokio::test]
    async fn stale_keys_are_served_while_refreshing_in_the_background() {
        let dir = std::env::temp_dir().join(format!("strata-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("jwks.json");
        std::fs::copy(JWKS, &path).expect("copy");
        let v = JwtVerifier::new(JwtSettings {
            jwks: Some(JwksSource::File(path.clone())),
            jwks_max_age: Duration::from_millis(100),
            jwks_min_refresh: Duration::from_secs(3600),
            ..JwtSettings::default()
        })
        .expect("verifier");
        assert_eq!(v.load_keys().await.expect("load"), Some(2));
        let rsa = signed(Algorithm::RS256, Some("rsa-1"), &claims());
        // The key is withdrawn from the source.
        std::fs::write(&path, r#"{"keys":[]}"#).expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Stale: still served, and a refresh starts behind it.
        v.verify(&rsa).await.expect("stale key served");
        let mut withdrawn = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if rejected(&v, &rsa).await {
                withdrawn = true;
                break;
            }
        }
        assert!(withdrawn, "the background refresh dropped the key");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_are_checked() {
        assert!(matches!(
            JwtVerifier::new(JwtSettings {
                hs256_secret: Some(b"short".to_vec()),
                ..JwtSettings::default()
            }),
            Err(AuthConfigError::ShortSecret)
        ));
        assert!(matches!(
            JwtVerifier::new(JwtSettings::default()),
            Err(AuthConfigError::NoKeys)
        ));
    }

    #[test]
    fn api_keys_parse_hash_and_compare() {
        let new = generate_api_key();
        assert!(new.token.starts_with("sk_"));
        assert_eq!(new.token.len(), 3 + KEY_ID_LEN + 1 + SECRET_LEN);
        assert!(
            !format!("{new:?}").contains(&new.token[20..]),
            "secret not in Debug"
        );
        let key = parse_api_key(&new.token).expect("parse");
        assert_eq!(key.key_id, new.key_id);
        assert!(key.matches(&new.secret_hash));
        assert!(!key.matches(&[0; 32]));
        assert!(!key.matches(&new.secret_hash[..31]), "length differs");
        assert!(!format!("{key:?}").contains(&new.token[20..]));
        let other = generate_api_key();
        assert_ne!(other.key_id, new.key_id);
        for bad in [
            "",
            "sk_",
            "pk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sk_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sk_0123456789abcde_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sk_0123456789abcdef_AAAA",
            "sk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
        ] {
            assert!(parse_api_key(bad).is_none(), "{bad}");
        }
        // The secret may contain `_`.
        assert!(
            parse_api_key("sk_0123456789abcdef_A_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .is_some()
        );
    }

    fn stored(hash: [u8; 32]) -> StoredApiKey {
        StoredApiKey {
            tenant: "acme".into(),
            subject: "bob".into(),
            role: "viewer".into(),
            secret_hash: hash.to_vec(),
            expires_at: None,
            revoked: false,
        }
    }

    #[test]
    fn api_key_verification() {
        let new = generate_api_key();
        let key = parse_api_key(&new.token).expect("parse");
        let now = SystemTime::now();
        let p = verify_api_key(&key, Some(&stored(new.secret_hash)), now).expect("valid");
        assert_eq!(p.role, "viewer");
        assert_eq!(
            p.credential_id,
            CredentialId::ApiKey {
                key_id: new.key_id.clone()
            }
        );
        assert!(verify_api_key(&key, None, now).is_err(), "unknown id");
        assert!(
            verify_api_key(&key, Some(&stored([0; 32])), now).is_err(),
            "wrong secret"
        );
        let mut revoked = stored(new.secret_hash);
        revoked.revoked = true;
        assert!(
            verify_api_key(&key, Some(&revoked), now).is_err(),
            "revoked"
        );
        let mut expired = stored(new.secret_hash);
        expired.expires_at = Some(now - Duration::from_secs(1));
        assert!(
            verify_api_key(&key, Some(&expired), now).is_err(),
            "expired"
        );
        expired.expires_at = Some(now + Duration::from_secs(60));
        assert!(
            verify_api_key(&key, Some(&expired), now).is_ok(),
            "not yet expired"
        );
    }

    fn auth_header(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn authorization_header_shapes() {
        let new = generate_api_key();
        assert!(matches!(
            parse_authorization(&auth_header(&format!("Bearer {}", new.token))),
            Ok(Bearer::ApiKey(_))
        ));
        assert!(matches!(
            parse_authorization(&auth_header(&format!("bearer {}", new.token))),
            Ok(Bearer::ApiKey(_))
        ));
        assert!(matches!(
            parse_authorization(&auth_header("Bearer a.b.c")),
            Ok(Bearer::Jwt("a.b.c"))
        ));
        for bad in [
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "Bearer",
            "Bearer ",
            "Bearer a.b",
            "Bearer a.b.c.d",
            "Bearer sk_x",
            "Bearer a.b.c$",
        ] {
            assert!(parse_authorization(&auth_header(bad)).is_err(), "{bad}");
        }
        assert!(parse_authorization(&HeaderMap::new()).is_err());
        let long = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_LEN));
        assert!(parse_authorization(&auth_header(&long)).is_err());
        let mut two = auth_header("Bearer a.b.c");
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer d.e.f"),
        );
        assert!(
            parse_authorization(&two).is_err(),
            "two Authorization headers"
        );
    }

    struct OneKey(String, StoredApiKey);

    #[async_trait::async_trait]
    impl ApiKeyStore for OneKey {
        async fn find(&self, key_id: &str) -> anyhow::Result<Option<StoredApiKey>> {
            Ok((key_id == self.0).then(|| self.1.clone()))
        }
    }

    #[tokio::test]
    async fn authenticator_dispatches_by_credential_shape() {
        let new = generate_api_key();
        let store = Arc::new(OneKey(new.key_id.clone(), stored(new.secret_hash)));
        let auth = Authenticator::new(Some(hs_verifier(|_| {})), Some(store));
        let p = auth
            .authenticate(&auth_header(&format!("Bearer {}", new.token)))
            .await
            .expect("key");
        assert_eq!(p.subject, "bob");
        let p = auth
            .authenticate(&auth_header(&format!("Bearer {}", hs(&claims()))))
            .await
            .expect("jwt");
        assert_eq!(p.subject, "alice");
        let unknown = generate_api_key();
        assert!(
            auth.authenticate(&auth_header(&format!("Bearer {}", unknown.token)))
                .await
                .is_err()
        );

        let keys_only = Authenticator::new(None, None);
        assert!(
            keys_only
                .authenticate(&auth_header(&format!("Bearer {}", hs(&claims()))))
                .await
                .is_err()
        );
    }

    #[test]
    fn tenant_mismatch_is_not_found() {
        let p = Principal {
            tenant: "acme".into(),
            subject: "alice".into(),
            role: "owner".into(),
            credential_id: CredentialId::Jwt { token_id: None },
        };
        assert!(ensure_tenant(&p, "acme").is_ok());
        let error = ensure_tenant(&p, "globex").expect_err("other tenant");
        assert!(matches!(error, ApiError::NotFound));
        assert_eq!(error.kind().status, axum::http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn names() {
        assert!(is_tenant_name("acme") && is_tenant_name("a-1") && is_tenant_name("0"));
        assert!(
            !is_tenant_name("")
                && !is_tenant_name("-a")
                && !is_tenant_name("a-")
                && !is_tenant_name("A")
        );
        assert!(!is_tenant_name(&"a".repeat(254)));
        assert!(is_role_name("viewer") && is_role_name("data_admin-2"));
        assert!(!is_role_name("1x") && !is_role_name("") && !is_role_name(&"a".repeat(64)));
    }
}
