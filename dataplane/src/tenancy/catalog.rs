//! Tenant name → database, owner role and state, read from the platform
//! catalog (`catalog.tenants` joined with `catalog.clusters`) and cached
//! briefly in the two-level cache (key `v1:p:tenant:<catalog>:<name>`,
//! `<catalog>` a digest of the catalog's host, port and database). The catalog
//! is the operator's and has no outbox, so no event invalidates these
//! entries: the short TTL is what bounds how long a suspension or deletion
//! takes to reach every replica. Unknown names are cached too, so a client
//! probing random names costs the catalog one query per name per TTL at
//! most.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use strata_db::TenantState;
use uuid::Uuid;

use crate::cache::{CacheKey, EntryOptions, HybridCache, Tag};
use crate::http::auth::is_tenant_name;
use crate::http::problem::ApiError;

/// What the data plane knows about a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub id: Uuid,
    pub name: String,
    #[serde(with = "state_text")]
    pub state: TenantState,
    pub cluster: String,
    pub database_name: String,
    /// The role that owns the tenant database (`SET ROLE` target for DDL).
    pub owner_role: String,
    /// From `catalog.clusters`; `None` until the operator has recorded the
    /// cluster (the tenant cannot be served then: 503).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `spec.quotas.requestsPerSecond` of the Tenant: its request rate limit
    /// (`None`: the platform default).
    pub requests_per_second: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct CatalogRow {
    id: Uuid,
    name: String,
    state: String,
    cluster: String,
    database_name: String,
    owner_role: String,
    host: Option<String>,
    port: Option<i32>,
    requests_per_second: Option<i64>,
}

/// `TenantState` in the cache's envelope: its catalog spelling.
mod state_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use strata_db::TenantState;

    pub fn serialize<S: Serializer>(state: &TenantState, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(state.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<TenantState, D::Error> {
        let text = String::deserialize(input)?;
        TenantState::parse(&text).ok_or_else(|| D::Error::custom("unknown tenant state"))
    }
}

/// The tag every cached catalog answer carries.
pub fn catalog_tag() -> Tag {
    Tag::platform("tenants")
}

#[derive(Clone)]
pub struct TenantResolver {
    catalog: PgPool,
    /// Which catalog the answers come from, in their keys: deployments
    /// (or test catalogs) that share a Redis never share an answer — a
    /// name unknown to one catalog must not hide the tenant of another.
    catalog_scope: String,
    /// Both levels for the catalog TTL (`--tenant-cache-ttl-ms`).
    options: EntryOptions,
    cache: HybridCache,
}

impl TenantResolver {
    /// Without a cache until [`TenantResolver::with_cache`]: every call
    /// reads the catalog.
    pub fn new(catalog: PgPool, ttl: Duration) -> Self {
        let options = catalog.connect_options();
        let identity = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let digest = <sha2::Sha256 as sha2::Digest>::digest(identity.as_bytes());
        Self {
            catalog_scope: hex::encode(&digest[..8]),
            catalog,
            options: EntryOptions::new(ttl, ttl),
            cache: HybridCache::disabled(),
        }
    }

    pub fn with_cache(mut self, cache: HybridCache) -> Self {
        self.cache = cache;
        self
    }

    /// The tenant named `name`, if it exists and is not detached or being
    /// deleted (both answer 404, like an unknown name).
    pub async fn resolve(&self, name: &str) -> Result<Option<Arc<TenantInfo>>, ApiError> {
        if !is_tenant_name(name) {
            return Ok(None);
        }
        let key = self.key(name);
        self.cache
            .get_or_create(&key, &[catalog_tag()], self.options, || self.load(name))
            .await
    }

    fn key(&self, name: &str) -> CacheKey {
        CacheKey::platform("tenant")
            .id(&self.catalog_scope)
            .id(name)
            .build()
    }

    /// Drops a cached answer (tests, and callers that know it changed).
    pub async fn forget(&self, name: &str) {
        self.cache.remove(&self.key(name)).await;
    }

    async fn load(&self, name: &str) -> Result<Option<Arc<TenantInfo>>, ApiError> {
        let row: Option<CatalogRow> = sqlx::query_as(
            r#"SELECT t.id, t.name, t.state, t.cluster, t.database_name, t.owner_role,
                      c.host, c.port,
                      CASE WHEN jsonb_typeof(t.quotas -> 'requestsPerSecond') = 'number'
                           THEN (t.quotas ->> 'requestsPerSecond')::numeric::bigint
                      END AS requests_per_second
                 FROM catalog.tenants t
                 LEFT JOIN catalog.clusters c ON c.name = t.cluster
                WHERE t.name = $1 AND t.state NOT IN ('detached', 'deleting')"#,
        )
        .bind(name)
        .fetch_optional(&self.catalog)
        .await
        .map_err(catalog_error)?;
        let Some(CatalogRow {
            id,
            name,
            state,
            cluster,
            database_name,
            owner_role,
            host,
            port,
            requests_per_second,
        }) = row
        else {
            return Ok(None);
        };
        let Some(state) = TenantState::parse(&state) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "tenant {id}: unknown state {state:?} in the catalog"
            )));
        };
        Ok(Some(Arc::new(TenantInfo {
            id,
            name,
            state,
            cluster,
            database_name,
            owner_role,
            host,
            port: port.and_then(|p| u16::try_from(p).ok()),
            requests_per_second: requests_per_second.and_then(|r| u32::try_from(r).ok()),
        })))
    }
}

/// The catalog being unreachable is transient for the client (503), never
/// a 404: a tenant must not look deleted because a query failed.
fn catalog_error(error: sqlx::Error) -> ApiError {
    tracing::warn!(%error, "catalog lookup failed");
    ApiError::Unavailable {
        detail: "the platform catalog is unavailable; retry later".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}
