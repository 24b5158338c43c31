//! [`TenantContext`]: the extractor every tenant route takes.
//!
//! The order of checks is fixed here, and each step only reveals what the
//! previous ones earned:
//!
//! 1. no credential, or a malformed one → 401 (whatever the path says);
//! 2. a JWT is verified (bad → 401); its `tenant` claim must name the path
//!    tenant, else 404;
//! 3. the path tenant is resolved in the catalog: absent, detached or being
//!    deleted → 404 (the same body as step 2's);
//! 4. an API key is looked up by id in *that tenant's* `api_keys` table:
//!    no such key → 404 (a key of another tenant reads like a missing
//!    tenant); wrong secret, expired or revoked → 401. An API key can only
//!    be checked in a database that serves (`ready` or `suspended`); for a
//!    tenant still provisioning or failed the answer is 503 before the key
//!    is checked, so such a tenant's *state* (not its data) is visible to a
//!    caller that presents any well-formed key;
//! 5. the state: suspended → 403, provisioning/failed → 503 + Retry-After;
//! 6. the role's permissions are read from the tenant's `roles` table
//!    (cached for `roles_ttl`); a role the tenant does not have grants
//!    nothing, so every `require` is 403. A JWT's `role` claim is used as
//!    it is: JWT callers need no `members` row (the identity provider is
//!    the authority for them); API keys carry the role they were minted with.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use uuid::Uuid;

use super::catalog::TenantInfo;
use super::{Tenancy, state_gate};
use crate::cache::{CacheKey, EntryOptions, HybridCache, Tag};
use crate::http::HttpContext;
use crate::http::auth::{Bearer, Principal, ensure_tenant, parse_authorization, verify_api_key};
use crate::http::authz::{self, Action, Permissions, Resource};
use crate::http::problem::ApiError;
use crate::identity::keys;
use strata_db::TenantState;

/// An authenticated caller of a tenant route, with a pool into the tenant's
/// database. Extract it in the handler's arguments (it must come before
/// the body extractor); it is computed once per request.
#[derive(Clone)]
pub struct TenantContext {
    tenant: Arc<TenantInfo>,
    principal: Principal,
    permissions: Permissions,
    pool: PgPool,
    cache: crate::cache::HybridCache,
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("tenant", &self.tenant.name)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl TenantContext {
    /// The catalog id of the tenant (stable; names can be reused).
    pub fn tenant_id(&self) -> Uuid {
        self.tenant.id
    }

    pub fn tenant_name(&self) -> &str {
        &self.tenant.name
    }

    pub fn tenant(&self) -> &TenantInfo {
        &self.tenant
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The caller's role's grants.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// A pool into the tenant's database (data plane role; statement
    /// timeout and search path already set). Use it for every query of
    /// the request; `pool().begin()` for transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The two-level cache (keys built with the tenant's id:
    /// `CacheKey::tenant(ctx.tenant_id(), …)`).
    pub fn cache(&self) -> &crate::cache::HybridCache {
        &self.cache
    }

    /// 403 problem unless the caller's role grants `action` on `resource`.
    pub fn require(&self, resource: Resource, action: Action) -> Result<(), ApiError> {
        authz::require(&self.principal, &self.permissions, resource, action)
    }

    pub fn allows(&self, resource: Resource, action: Action) -> bool {
        self.permissions.allows(resource, action)
    }

    /// A connection on which `SET ROLE <tenant owner>` has run, for DDL the
    /// data plane role may not do itself (indexes per collection). The data
    /// plane role is a member of the owner role WITH INHERIT FALSE, SET
    /// TRUE: it has none of the owner's rights until it asks. The session
    /// never goes back to the pool: it is closed when the value is dropped,
    /// so no later request can run as the owner. Check permissions first.
    pub async fn owner_ddl(&self) -> Result<OwnerConnection, ApiError> {
        OwnerConnection::open(&self.pool, &self.tenant.owner_role).await
    }
}

/// A tenant-database connection running as the tenant's owner role. Deref
/// to `PgConnection` (`&mut *conn` as an executor). Closed on drop.
pub struct OwnerConnection {
    conn: PoolConnection<sqlx::Postgres>,
}

impl OwnerConnection {
    async fn open(pool: &PgPool, owner_role: &str) -> Result<Self, ApiError> {
        // The name comes from the catalog (written by the operator), but it
        // is spliced as an identifier, so check its shape anyway.
        let ident = strata_db::ident::Ident::new(owner_role.to_string())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("owner role in the catalog: {e}")))?;
        let mut conn = pool.acquire().await?;
        // Closed rather than reset when dropped: a RESET ROLE that never
        // runs (cancelled future, error) must not leave an owner session in
        // the pool.
        conn.close_on_drop();
        sqlx::query(&format!("SET ROLE {}", ident.quoted()))
            .execute(&mut *conn)
            .await?;
        Ok(Self { conn })
    }
}

impl std::ops::Deref for OwnerConnection {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for OwnerConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// How often a process refreshes an API key's `last_used_at`.
pub(crate) const KEY_TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// A role's permissions, in the two-level cache (`v1:t:<tenant>:role:<name>`)
/// for `roles_ttl`. Roles are seeded by the operator (`roles/v1`), which
/// writes no event for them: the TTL bounds how long a changed role takes
/// to apply everywhere. Which role a *credential* has is part of its key
/// row, invalidated at once by `key.*`/`member.*` events.
#[derive(Clone)]
pub(crate) struct RoleCache {
    options: EntryOptions,
    cache: HybridCache,
}

impl RoleCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            options: EntryOptions::new(ttl, ttl),
            cache: HybridCache::disabled(),
        }
    }

    pub(crate) fn with_cache(&self, cache: HybridCache) -> Self {
        Self {
            options: self.options,
            cache,
        }
    }

    pub(crate) async fn permissions(
        &self,
        tenant: Uuid,
        pool: &PgPool,
        role: &str,
    ) -> Result<Permissions, ApiError> {
        let key = CacheKey::tenant(tenant, "role").id(role).build();
        let tags = [Tag::whole_tenant(tenant), Tag::tenant(tenant, "roles", [])];
        self.cache
            .get_or_create(&key, &tags, self.options, || load_permissions(pool, role))
            .await
    }
}

/// A role's permissions; a role the tenant does not have grants nothing.
pub async fn load_permissions<'e, E>(executor: E, role: &str) -> Result<Permissions, ApiError>
where
    E: sqlx::PgExecutor<'e>,
{
    let value: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT permissions FROM roles WHERE name = $1")
            .bind(role)
            .fetch_optional(executor)
            .await?;
    Ok(value
        .as_ref()
        .map(Permissions::from_json)
        .unwrap_or_default())
}

impl FromRef<crate::app::AppState> for Tenancy {
    fn from_ref(state: &crate::app::AppState) -> Self {
        state.tenancy.clone()
    }
}

impl<S> FromRequestParts<S> for TenantContext
where
    HttpContext: FromRef<S>,
    Tenancy: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<TenantContext>() {
            return Ok(ctx.clone());
        }
        let path_tenant = path_tenant(parts, state).await?;
        let http = HttpContext::from_ref(state);
        let tenancy = Tenancy::from_ref(state);
        let ctx = authenticate(&parts.headers, &path_tenant, &http, &tenancy).await?;
        tracing::Span::current().record("tenant", ctx.tenant.name.as_str());
        parts.extensions.insert(ctx.clone());
        Ok(ctx)
    }
}

async fn path_tenant<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("path params: {}", e.body_text())))?;
    params
        .iter()
        .find(|(name, _)| *name == "tenant")
        .map(|(_, value)| value.to_string())
        // A route without {tenant}: a routing bug, not the client's.
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "TenantContext on a route without {{tenant}}"
            ))
        })
}

/// Steps 1–6 of the module documentation.
pub async fn authenticate(
    headers: &axum::http::HeaderMap,
    path_tenant: &str,
    http: &HttpContext,
    tenancy: &Tenancy,
) -> Result<TenantContext, ApiError> {
    let bearer = parse_authorization(headers)?;
    let jwt_principal = match &bearer {
        Bearer::Jwt(token) => {
            let principal = http.auth.verify_jwt(token).await?;
            ensure_tenant(&principal, path_tenant)?;
            Some(principal)
        }
        Bearer::ApiKey(_) => None,
    };
    let tenant = tenancy
        .resolve(path_tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (principal, pool) = match (bearer, jwt_principal) {
        (_, Some(principal)) => {
            state_gate(&tenant)?;
            (principal, tenancy.pools.pool(&tenant)?)
        }
        (Bearer::ApiKey(key), None) => {
            if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
                state_gate(&tenant)?;
            }
            let pool = tenancy.pools.pool(&tenant)?;
            let found = keys::lookup_cached(&tenancy.cache, tenant.id, &pool, key.key_id).await?;
            let Some(found) = found else {
                return Err(ApiError::NotFound);
            };
            let stored = found.into_stored(&tenant.name, key.key_id);
            let principal = verify_api_key(&key, Some(&stored), std::time::SystemTime::now())?;
            state_gate(&tenant)?;
            // The cached row does not say when the key was last used: this
            // process refreshes it at most once per interval per key (the
            // UPDATE itself skips a fresh one).
            let touch = format!("{}:{}", tenant.id, key.key_id);
            if tenancy.key_touches.get(&touch).is_none() {
                tenancy.key_touches.insert(touch, ());
                keys::touch_later(pool.clone(), key.key_id.to_string());
            }
            (principal, pool)
        }
        (Bearer::Jwt(_), None) => unreachable_jwt()?,
    };
    let permissions = tenancy
        .roles
        .permissions(tenant.id, &pool, &principal.role)
        .await?;
    // Counted once the tenant and the credential are known, on every
    // credential path (API extractor, storage, media); the gateway layer
    // writes the headers on the response (429 or not).
    crate::gateway::count_principal(
        &http.gateway,
        tenant.id,
        tenant.requests_per_second,
        &principal,
    )
    .await?;
    crate::cache::invalidation::set_tenant(tenant.id);
    Ok(TenantContext {
        tenant,
        principal,
        permissions,
        pool,
        cache: tenancy.cache.clone(),
    })
}

/// A JWT always produced a principal above; kept as an error, not a panic.
fn unreachable_jwt() -> Result<(Principal, PgPool), ApiError> {
    Err(ApiError::internal(anyhow::anyhow!(
        "JWT without a verified principal"
    )))
}
