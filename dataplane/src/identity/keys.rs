//! API keys in the tenant's `api_keys` table.
//!
//! - Authentication ([`lookup`]): one read by primary key per request, no
//!   cache, so a revocation is refused by every replica at the next request.
//!   The secret is compared in constant time ([`crate::http::auth`]).
//!   `last_used_at` is written at most once a minute per key: the read says
//!   whether the stored time is older than that, and only then an UPDATE
//!   (guarded by the same condition, so replicas racing write once) runs in
//!   the background, off the request's path.
//! - `POST keys` (keys:write): `{name, role, expires_at?}` → 201 with the
//!   token, shown this once. A caller cannot mint a key whose role grants
//!   anything its own role does not (an admin cannot mint an owner key).
//! - `GET keys` (keys:read): paginated, no secrets.
//! - `DELETE keys/{id}` (keys:delete): revoked at once (204); keys of a
//!   role with more rights than the caller's are not the caller's to revoke
//!   (403), except the caller's own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::ts;
use crate::cache::{CacheKey, EntryOptions, HybridCache, invalidation};
use crate::events::{self, Event, types};
use crate::http::HttpContext;
use crate::http::auth::{
    CredentialId, KEY_ID_LEN, Principal, StoredApiKey, generate_api_key, is_role_name,
};
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::{self, Idempotent};
use crate::http::pagination::{Page, PageParams};
use crate::http::problem::{ApiError, FieldError};
use crate::tenancy::context::load_permissions;
use crate::tenancy::{Action, Resource, TenantContext};

/// How stale `last_used_at` may get before a request refreshes it.
const LAST_USED_GRANULARITY_SECONDS: i64 = 60;
/// Longest key name (as the table's CHECK).
const MAX_NAME_LEN: usize = 200;

/// How long an API-key row may be served from the cache. Revocation does
/// not wait for it: the revoking write returns only once every replica has
/// dropped the row (`cache::coherence`), and without Redis the row is
/// never kept in memory (`cache::EntryOptions::strict`); so this only
/// bounds the case where the revoking replica could not reach Redis.
const KEY_CACHE: EntryOptions =
    EntryOptions::new(Duration::from_secs(5), Duration::from_secs(60)).strict();

/// A key row as authentication needs it (what the cache holds).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    subject: Option<String>,
    role: String,
    secret_hash: Vec<u8>,
    expires: Option<f64>,
    revoked: bool,
}

impl KeyRecord {
    pub fn into_stored(self, tenant: &str, key_id: &str) -> StoredApiKey {
        StoredApiKey {
            tenant: tenant.to_string(),
            // A key minted by a caller who is not a member (a JWT caller,
            // or another member-less key) acts as itself.
            subject: self.subject.unwrap_or_else(|| format!("key:{key_id}")),
            role: self.role,
            secret_hash: self.secret_hash,
            expires_at: self.expires.map(epoch_to_system_time),
            revoked: self.revoked,
        }
    }
}

/// The key `key_id` of the tenant whose pool this is, if it exists.
pub async fn lookup(pool: &PgPool, key_id: &str) -> Result<Option<KeyRecord>, ApiError> {
    Ok(sqlx::query_as(
        r#"SELECT subject, role, secret_hash,
                  extract(epoch FROM expires_at)::float8 AS expires,
                  revoked_at IS NOT NULL AS revoked
             FROM api_keys WHERE id = $1"#,
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await?)
}

/// [`lookup`] through the cache (tags in `cache::invalidation`); a missing
/// key is not cached.
pub async fn lookup_cached(
    cache: &HybridCache,
    tenant_id: Uuid,
    pool: &PgPool,
    key_id: &str,
) -> Result<Option<KeyRecord>, ApiError> {
    let key = CacheKey::tenant(tenant_id, "api-key").id(key_id).build();
    let tags = invalidation::api_key_tags(tenant_id, key_id);
    let found = cache
        .get_or_create(&key, &tags, KEY_CACHE, || async {
            lookup(pool, key_id).await?.ok_or(ApiError::NotFound)
        })
        .await;
    match found {
        Ok(record) => Ok(Some(record)),
        Err(ApiError::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

fn epoch_to_system_time(seconds: f64) -> SystemTime {
    if seconds <= 0.0 || !seconds.is_finite() {
        // Before 1970 (or -infinity): already expired.
        return UNIX_EPOCH;
    }
    UNIX_EPOCH
        .checked_add(Duration::from_secs_f64(seconds.min(1e12)))
        .unwrap_or(UNIX_EPOCH)
}

/// Records use of a key, in the background: a failure here must not fail
/// the request (the key was valid), so it is only logged.
pub fn touch_later(pool: PgPool, key_id: String) {
    tokio::spawn(async move {
        let result = sqlx::query(
            r#"UPDATE api_keys SET last_used_at = now()
                WHERE id = $1
                  AND (last_used_at IS NULL
                       OR last_used_at < now() - make_interval(secs => $2))"#,
        )
        .bind(&key_id)
        .bind(LAST_USED_GRANULARITY_SECONDS as f64)
        .execute(&pool)
        .await;
        if let Err(error) = result {
            tracing::warn!(key_id, %error, "could not record key use");
        }
    });
}

/// The audit actor of a principal: `key:<id>` or `jwt:<subject>` with the
/// subject, so an audit row says both who and with what.
pub(crate) fn actor(principal: &Principal) -> String {
    match &principal.credential_id {
        CredentialId::ApiKey { key_id } => format!("{} (key {key_id})", principal.subject),
        CredentialId::Jwt { .. } => format!("{} (jwt)", principal.subject),
    }
}

/// Writes one audit row in the caller's transaction.
pub(crate) async fn audit(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO audit_events (actor, action, target, outcome, detail) VALUES ($1, $2, $3, 'success', $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// RFC 3339 with a `T` and an explicit offset; PostgreSQL parses the rest
/// (and would also accept words like `infinity`, which we do not want).
pub(crate) fn is_rfc3339(value: &str) -> bool {
    let b = value.as_bytes();
    (20..=35).contains(&b.len())
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && (value.ends_with('Z') || {
            let tail = &b[b.len() - 6..];
            matches!(tail[0], b'+' | b'-') && tail[3] == b':'
        })
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b':' | b'T' | b'Z' | b'.' | b'+'))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people (at most 200 characters).
    #[serde(default)]
    #[schema(max_length = 200, example = "ci pipeline")]
    pub name: String,
    /// A role of the tenant (`viewer`, `editor`, `admin`, `owner`) whose
    /// rights the caller's role holds.
    #[schema(example = "editor")]
    pub role: String,
    /// RFC 3339 with an offset, in the future; unset: the key does not expire.
    #[serde(default)]
    #[schema(format = DateTime, example = "2030-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
}

/// A key as listed (never its secret).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyView {
    /// The key's id: the `<id>` of `sk_<id>_<secret>`.
    #[schema(example = "3f1c9a0b7d2e4f60")]
    pub id: String,
    pub name: String,
    pub role: String,
    /// The member the key belongs to, if its creator is a member.
    pub subject: Option<String>,
    pub created_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Refreshed at most once a minute.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

fn key_columns() -> String {
    format!(
        "id, name, role, subject, created_by, {} AS created_at, {} AS expires_at, {} AS last_used_at, {} AS revoked_at",
        ts("created_at"),
        ts("expires_at"),
        ts("last_used_at"),
        ts("revoked_at")
    )
}

/// The role must exist and grant nothing beyond the caller's role.
pub(crate) async fn check_grantable(
    ctx: &TenantContext,
    conn: &mut sqlx::PgConnection,
    role: &str,
    pointer: &str,
) -> Result<(), ApiError> {
    if !is_role_name(role) {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            "not a role name",
        )]));
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM roles WHERE name = $1)")
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            "no such role in this tenant",
        )]));
    }
    let wanted = load_permissions(&mut *conn, role).await?;
    if !wanted.is_subset_of(ctx.permissions()) {
        return Err(ApiError::Forbidden(format!(
            "role `{}` may not grant role `{role}`, which has rights it lacks",
            ctx.principal().role
        )));
    }
    Ok(())
}

/// Create an API key
///
/// The response's `key` (`sk_<id>_<secret>`) is shown this once; only its
/// hash is stored. Use it as `Authorization: Bearer <key>`.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/keys",
    operation_id = "createKey",
    tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The new key, with its secret", body = NewKeyView),
        (status = 403, description = "The caller may not manage keys, or the role has rights the caller's lacks"),
        (status = 422, description = "Unknown role, name too long, expiry not a future RFC 3339 time"),
    ),
)]
pub async fn create(
    ctx: TenantContext,
    Idempotent {
        key: idempotency_key,
        inner: Json(body),
    }: Idempotent<Json<CreateKey>>,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Keys, Action::Write)?;
    let mut errors = Vec::new();
    if body.name.chars().count() > MAX_NAME_LEN {
        errors.push(FieldError::new(
            "/name",
            format!("at most {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(at) = &body.expires_at
        && !is_rfc3339(at)
    {
        errors.push(FieldError::new(
            "/expires_at",
            "an RFC 3339 timestamp with an offset, e.g. 2030-01-01T00:00:00Z",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut run = match idempotency::begin_for(&ctx, idempotency_key).await? {
        Ok(run) => run,
        Err(replay) => return Ok(replay),
    };
    let mut tx = sqlx::Acquire::begin(run.db()).await?;
    check_grantable(&ctx, &mut tx, &body.role, "/role").await?;
    if let Some(at) = &body.expires_at {
        let future: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT $1::timestamptz > now()")
                .bind(at)
                .fetch_one(&mut *tx)
                .await;
        match future {
            Ok(true) => {}
            Ok(false) => {
                return Err(ApiError::validation(vec![FieldError::new(
                    "/expires_at",
                    "must be in the future",
                )]));
            }
            // 22007/22008: not a date PostgreSQL accepts (month 13, …).
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("22007" | "22008")) =>
            {
                return Err(ApiError::validation(vec![FieldError::new(
                    "/expires_at",
                    "not a valid timestamp",
                )]));
            }
            Err(other) => return Err(other.into()),
        }
    }
    let key = generate_api_key();
    let principal = ctx.principal();
    let view: KeyView = sqlx::query_as(&format!(
        r#"INSERT INTO api_keys (id, name, secret_hash, role, subject, created_by, expires_at)
           VALUES ($1, $2, $3, $4, (SELECT subject FROM members WHERE subject = $5), $6,
                   $7::timestamptz)
           RETURNING {}"#,
        key_columns()
    ))
    .bind(&key.key_id)
    .bind(&body.name)
    .bind(&key.secret_hash[..])
    .bind(&body.role)
    .bind(&principal.subject)
    .bind(actor(principal))
    .bind(&body.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &actor(principal),
        "key.created",
        &format!("key:{}", key.key_id),
        json!({ "role": body.role, "name": body.name }),
    )
    .await?;
    events::record(
        &mut tx,
        Event::new(types::KEY_CREATED, view.id.clone()).data(json!({
            "id": view.id, "name": view.name, "role": view.role, "subject": view.subject,
        })),
    )
    .await?;
    tx.commit().await?;
    let response = (
        StatusCode::CREATED,
        Json(NewKeyView {
            key: key.token,
            view,
        }),
    )
        .into_response();
    // The secret is never stored: a replay shows the key without it.
    run.finish_redacted(response, &["/key"]).await
}

/// The create response: the listing's fields plus the token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NewKeyView {
    /// `sk_<id>_<secret>`: shown once, stored only as a hash.
    #[schema(example = "sk_3f1c9a0b7d2e4f60_q8Xv0m2R5tLk9wZcYb1nHd4sJfE7uA6p")]
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// List API keys
///
/// Ordered by id; never shows secrets. Revoked and expired keys are listed
/// too (with `revoked_at` / `expires_at`).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/keys",
    operation_id = "listKeys",
    tag = "keys",
    params(PageParams),
    responses(
        (status = 200, description = "A page of keys; `Link: rel=next` when there is more", body = Page<KeyView>),
        (status = 400, description = "`limit` out of range or a cursor from another list"),
        (status = 403, description = "The caller may not read keys"),
    ),
)]
pub async fn list(
    ctx: TenantContext,
    axum::extract::State(http): axum::extract::State<HttpContext>,
    Query(page): Query<PageParams>,
    uri: Uri,
) -> Result<Response, ApiError> {
    ctx.require(Resource::Keys, Action::Read)?;
    let select = format!(
        "SELECT {} FROM api_keys WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
        key_columns()
    );
    super::list_page(&ctx, &http, page, &uri, "keys", &select, |row: &KeyView| {
        row.id.clone()
    })
    .await
}

fn is_key_id(id: &str) -> bool {
    id.len() == KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Revoke an API key
///
/// In force at once on every replica. A caller may revoke its own keys and
/// keys whose role grants nothing beyond its own.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/keys/{id}",
    operation_id = "revokeKey",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id (16 lowercase hex digits)")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 403, description = "The key's role has rights the caller lacks"),
    ),
)]
pub async fn revoke(
    ctx: TenantContext,
    Path((_tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require(Resource::Keys, Action::Delete)?;
    if !is_key_id(&id) {
        return Err(ApiError::NotFound);
    }
    let mut tx = ctx.pool().begin().await?;
    // FOR UPDATE: the rights check and the revocation see the same row.
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT role, subject FROM api_keys WHERE id = $1 FOR UPDATE")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((role, subject)) = row else {
        return Err(ApiError::NotFound);
    };
    let own = subject.as_deref() == Some(ctx.principal().subject.as_str())
        || matches!(&ctx.principal().credential_id, CredentialId::ApiKey { key_id } if *key_id == id);
    if !own {
        let rights = load_permissions(&mut *tx, &role).await?;
        if !rights.is_subset_of(ctx.permissions()) {
            return Err(ApiError::Forbidden(format!(
                "role `{}` may not revoke a key with role `{role}`",
                ctx.principal().role
            )));
        }
    }
    sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &actor(ctx.principal()),
        "key.revoked",
        &format!("key:{id}"),
        json!({ "role": role }),
    )
    .await?;
    events::record(
        &mut tx,
        Event::new(types::KEY_REVOKED, id.clone()).data(json!({"id": id, "role": role})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_rfc3339_with_offset() {
        for ok in [
            "2030-01-01T00:00:00Z",
            "2030-01-01T00:00:00.123Z",
            "2030-01-01T00:00:00+02:00",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "infinity",
            "2030-01-01",
            "2030-01-01 00:00:00Z",
            "2030-01-01T00:00:00",
            "tomorrow 2030-01-01T00:00:00Z",
            "",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn expiry_far_in_the_past_or_future_does_not_panic() {
        assert_eq!(epoch_to_system_time(-5.0), UNIX_EPOCH);
        assert_eq!(epoch_to_system_time(f64::INFINITY), UNIX_EPOCH);
        assert!(epoch_to_system_time(1e300) > UNIX_EPOCH);
    }
}
