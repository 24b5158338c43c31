//! Tenancy: which tenant a `/v1/tenants/{tenant}/…` request is for, whether
//! the caller may act in it, and the connections to that tenant's database.
//!
//! **Handlers use one extractor, [`TenantContext`]**:
//!
//! ```ignore
//! async fn create_doc(ctx: TenantContext, …) -> Result<…, ApiError> {
//!     ctx.require(Resource::Documents, Action::Write)?;     // 403 problem
//!     let mut tx = ctx.pool().begin().await?;                // the tenant's DB
//!     …
//! }
//! ```
//!
//! It resolves `{tenant}` in the catalog ([`catalog`]), authenticates the
//! bearer credential (JWT, or an API key looked up in the tenant's own
//! `api_keys` table), answers 404 for a credential of another tenant (the
//! same body as for a tenant that does not exist), applies the tenant's
//! state (suspended → 403, not ready → 503 with `Retry-After`), and loads the
//! permissions of the caller's role from the tenant's `roles` table. The
//! pool it hands out ([`TenantContext::pool`]) logs in as the data plane's
//! role into that tenant's database only, with `statement_timeout` and
//! `search_path = public, pg_temp` set at connect time ([`pools`]).
//!
//! Index DDL that needs the owner (HNSW, expression indexes, built
//! `CONCURRENTLY`) goes through [`TenantContext::owner_ddl`].
//!
//! Routes that take no credential (invitation accept) use
//! [`Tenancy::open`] directly: the same resolution and state rules, no auth.
//!
//! The permission matrix itself is [`crate::http::authz`]; the older
//! [`crate::http::tenancy::TenantScope`] checks a JWT's tenant claim only and
//! knows nothing of API keys or tenant state: use `TenantContext` instead.

pub mod catalog;
pub mod context;
pub mod pools;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

pub use catalog::{TenantInfo, TenantResolver};
pub use context::{OwnerConnection, TenantContext};
pub use pools::TenantPools;

use crate::cache::HybridCache;
pub use crate::http::authz::{Action, Permissions, Resource};
use crate::http::problem::ApiError;
use strata_db::TenantState;

/// How the data plane reaches tenant databases. Every limit is explicit;
/// [`TenancySettings::new`] has the defaults the flags document.
#[derive(Debug, Clone)]
pub struct TenancySettings {
    /// Login (user, password, TLS) for every tenant database; host, port
    /// and database name are replaced per tenant from the catalog.
    pub login: PgConnectOptions,
    /// Connections per tenant pool.
    pub pool_size: u32,
    /// Cap on connections to tenant databases across all pools: at most
    /// `max_connections / pool_size` pools are open at once (LRU).
    pub max_connections: u32,
    /// A pool unused this long is closed.
    pub pool_idle: Duration,
    /// A connection idle this long is closed (pools shrink to zero).
    pub connection_idle: Duration,
    /// Longest wait for a connection before the request gets a 503.
    pub acquire_timeout: Duration,
    /// `statement_timeout` of every tenant session.
    pub statement_timeout: Duration,
    /// How long a catalog answer (tenant → database, state) is reused.
    pub catalog_ttl: Duration,
    /// How long a role's permissions are reused.
    pub roles_ttl: Duration,
}

impl TenancySettings {
    pub fn new(login: PgConnectOptions) -> Self {
        Self {
            login,
            pool_size: 4,
            max_connections: 200,
            pool_idle: Duration::from_secs(300),
            connection_idle: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(15),
            catalog_ttl: Duration::from_secs(2),
            roles_ttl: Duration::from_secs(2),
        }
    }
}

/// The tenancy state shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Tenancy {
    pub resolver: Arc<TenantResolver>,
    pub pools: Arc<TenantPools>,
    pub(crate) roles: Arc<context::RoleCache>,
    /// The two-level cache (API-key rows here; handlers reach it through
    /// [`TenantContext::cache`]). Disabled unless [`Tenancy::with_cache`].
    pub cache: HybridCache,
    /// When this process last refreshed each key's `last_used_at` (the
    /// cached key row does not say).
    pub(crate) key_touches: Arc<moka::sync::Cache<String, ()>>,
}

/// A tenant that may serve requests, and a pool into its database.
#[derive(Clone)]
pub struct TenantHandle {
    pub tenant: Arc<TenantInfo>,
    pub pool: PgPool,
}

impl Tenancy {
    /// `catalog` reads `catalog.tenants` and `catalog.clusters` (the data
    /// plane's role has SELECT on those two tables only).
    pub fn new(catalog: PgPool, settings: TenancySettings) -> Self {
        Self {
            resolver: Arc::new(TenantResolver::new(catalog, settings.catalog_ttl)),
            roles: Arc::new(context::RoleCache::new(settings.roles_ttl)),
            pools: Arc::new(TenantPools::new(settings)),
            cache: HybridCache::disabled(),
            key_touches: Arc::new(
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(context::KEY_TOUCH_INTERVAL)
                    .build(),
            ),
        }
    }

    /// Uses `cache` for what tenancy caches (API-key rows) and hands it to
    /// handlers.
    pub fn with_cache(mut self, cache: HybridCache) -> Self {
        self.resolver = Arc::new((*self.resolver).clone().with_cache(cache.clone()));
        self.roles = Arc::new(self.roles.with_cache(cache.clone()));
        self.cache = cache;
        self
    }

    /// The tenant by name if it exists (any state but detached), without
    /// applying state rules. Invalid names are absent.
    pub async fn resolve(&self, name: &str) -> Result<Option<Arc<TenantInfo>>, ApiError> {
        self.resolver.resolve(name).await
    }

    /// Resolves `name`, applies the state rules (absent/detached/deleting
    /// → 404, suspended → 403, provisioning/failed → 503) and returns the
    /// tenant's pool. For routes without a credential; credentialed routes
    /// use [`TenantContext`], which authenticates before revealing state.
    pub async fn open(&self, name: &str) -> Result<TenantHandle, ApiError> {
        let tenant = self.resolve(name).await?.ok_or(ApiError::NotFound)?;
        state_gate(&tenant)?;
        let pool = self.pools.pool(&tenant)?;
        Ok(TenantHandle { tenant, pool })
    }
}

/// How long clients should wait while a tenant is not ready.
pub const NOT_READY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The answer a tenant's state gives before any data is touched.
pub fn state_gate(tenant: &TenantInfo) -> Result<(), ApiError> {
    match tenant.state {
        TenantState::Ready => Ok(()),
        TenantState::Suspended => Err(ApiError::Forbidden("the tenant is suspended".into())),
        TenantState::Provisioning | TenantState::Failed => Err(ApiError::Unavailable {
            detail: "the tenant is not ready yet; retry later".into(),
            retry_after: Some(NOT_READY_RETRY_AFTER),
        }),
        // Filtered out by the resolver; kept here so the match is total.
        TenantState::Detached | TenantState::Deleting => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn states_map_to_statuses() {
        let tenant = |state| TenantInfo {
            id: Uuid::nil(),
            name: "t".into(),
            state,
            cluster: "default".into(),
            database_name: "d".into(),
            owner_role: "o".into(),
            host: None,
            port: None,
            requests_per_second: None,
        };
        assert!(state_gate(&tenant(TenantState::Ready)).is_ok());
        let status = |state| {
            state_gate(&tenant(state))
                .expect_err("refused")
                .kind()
                .status
                .as_u16()
        };
        assert_eq!(status(TenantState::Suspended), 403);
        assert_eq!(status(TenantState::Provisioning), 503);
        assert_eq!(status(TenantState::Failed), 503);
        assert_eq!(status(TenantState::Deleting), 404);
        assert_eq!(status(TenantState::Detached), 404);
    }
}
