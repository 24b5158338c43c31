//! Tenant name → database, owner role and state, read from the platform
//! catalog (`catalog.tenants` joined with `catalog.clusters`) and cached
//! briefly. The short TTL bounds how long a suspension or deletion takes to
//! reach every replica; unknown names are cached too, so a client probing
//! random names costs the catalog one query per name per TTL at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use strata_db::TenantState;
use uuid::Uuid;

use crate::http::auth::is_tenant_name;
use crate::http::problem::ApiError;

/// What the data plane knows about a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: Uuid,
    pub name: String,
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

type Entry = (Instant, Option<Arc<TenantInfo>>);

pub struct TenantResolver {
    catalog: PgPool,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<String, Entry>>,
}

impl TenantResolver {
    pub fn new(catalog: PgPool, ttl: Duration, capacity: usize) -> Self {
        Self {
            catalog,
            ttl,
            capacity: capacity.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant named `name`, if it exists and is not detached or being
    /// deleted (both answer 404, like an unknown name).
    pub async fn resolve(&self, name: &str) -> Result<Option<Arc<TenantInfo>>, ApiError> {
        if !is_tenant_name(name) {
            return Ok(None);
        }
        if let Some(hit) = self.cached(name) {
            return Ok(hit);
        }
        let found = self.load(name).await?;
        self.store(name, found.clone());
        Ok(found)
    }

    /// Drops a cached answer (tests, and callers that know it changed).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, name: &str) -> Option<Option<Arc<TenantInfo>>> {
        let cache = self.lock();
        let (at, value) = cache.get(name)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    fn store(&self, name: &str, value: Option<Arc<TenantInfo>>) {
        let mut cache = self.lock();
        if cache.len() >= self.capacity && !cache.contains_key(name) {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            // Still full of fresh entries: start over rather than track
            // recency; every entry is at most one TTL from expiry anyway.
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(name.to_string(), (Instant::now(), value));
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
