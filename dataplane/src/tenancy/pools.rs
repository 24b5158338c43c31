//! Per-tenant connection pools in a bounded LRU.
//!
//! Every pool logs in as the data plane's own role (user and password of
//! `--tenant-database-url`) to the host and port the catalog records for
//! the tenant's cluster and to the tenant's database, so a pool can reach
//! that one database and nothing else the role was not granted.
//!
//! The cap on connections is structural: at most
//! `max_connections / pool_size` pools are open, each with at most
//! `pool_size` connections. Opening one more evicts the least recently used
//! pool, which is closed (requests still holding its connections finish;
//! a later acquire on it is a 503 with Retry-After). Pools unused for
//! `pool_idle` are closed on the next lookup, and idle connections close
//! after `connection_idle`, so quiet tenants cost nothing.
//!
//! Session settings are connect options, not statements, so no connection
//! is ever handed out without them: `statement_timeout` bounds every query
//! and `search_path = public,pg_temp` keeps `pg_temp` last (it is searched
//! first when unlisted). The values contain no spaces: sqlx splits the
//! `options` parameter on spaces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use super::TenancySettings;
use super::catalog::TenantInfo;
use crate::http::problem::ApiError;

/// Where a pool points; a tenant moved elsewhere gets a new pool.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    database: String,
}

struct Entry {
    pool: PgPool,
    target: Target,
    last_used: Instant,
}

pub struct TenantPools {
    settings: TenancySettings,
    max_pools: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    pools: HashMap<Uuid, Entry>,
    last_sweep: Instant,
}

/// Idle pools are looked for at most this often (on lookups).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl TenantPools {
    pub fn new(settings: TenancySettings) -> Self {
        let pool_size = settings.pool_size.max(1);
        let max_pools = (settings.max_connections / pool_size).max(1) as usize;
        Self {
            settings: TenancySettings {
                pool_size,
                ..settings
            },
            max_pools,
            inner: Mutex::new(Inner {
                pools: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Most pools open at once.
    pub fn max_pools(&self) -> usize {
        self.max_pools
    }

    /// Pools open now.
    pub fn open_pools(&self) -> usize {
        self.lock().pools.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's pool, created (lazily: no I/O here) on first use.
    pub fn pool(&self, tenant: &TenantInfo) -> Result<PgPool, ApiError> {
        let (Some(host), Some(port)) = (tenant.host.clone(), tenant.port) else {
            // The operator records the cluster before the tenant is ready;
            // a ready tenant without one is a catalog being repaired.
            return Err(ApiError::Unavailable {
                detail: "the tenant's database location is not known yet; retry later".into(),
                retry_after: Some(super::NOT_READY_RETRY_AFTER),
            });
        };
        let target = Target {
            host,
            port,
            database: tenant.database_name.clone(),
        };
        let mut inner = self.lock();
        let now = Instant::now();
        if now.duration_since(inner.last_sweep) >= SWEEP_EVERY {
            inner.last_sweep = now;
            let idle = self.settings.pool_idle;
            let stale: Vec<Uuid> = inner
                .pools
                .iter()
                .filter(|(_, e)| now.duration_since(e.last_used) >= idle)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                if let Some(entry) = inner.pools.remove(&id) {
                    close_later(entry.pool);
                }
            }
        }
        if let Some(entry) = inner.pools.get_mut(&tenant.id) {
            if entry.target == target {
                entry.last_used = now;
                return Ok(entry.pool.clone());
            }
            if let Some(old) = inner.pools.remove(&tenant.id) {
                close_later(old.pool);
            }
        }
        while inner.pools.len() >= self.max_pools {
            let Some(lru) = inner
                .pools
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(entry) = inner.pools.remove(&lru) {
                close_later(entry.pool);
            }
        }
        let pool = self.build(&target);
        inner.pools.insert(
            tenant.id,
            Entry {
                pool: pool.clone(),
                target,
                last_used: now,
            },
        );
        Ok(pool)
    }

    fn build(&self, target: &Target) -> PgPool {
        let s = &self.settings;
        let options: PgConnectOptions = s
            .login
            .clone()
            .host(&target.host)
            .port(target.port)
            .database(&target.database)
            .application_name("strata-dataplane")
            .options([
                (
                    "statement_timeout",
                    format!("{}", s.statement_timeout.as_millis()),
                ),
                ("search_path", "public,pg_temp".to_string()),
            ]);
        PgPoolOptions::new()
            .max_connections(s.pool_size)
            .min_connections(0)
            .acquire_timeout(s.acquire_timeout)
            .idle_timeout(Some(s.connection_idle))
            // Connections are reused across requests; a bounded lifetime
            // picks up role and server changes.
            .max_lifetime(Some(Duration::from_secs(30 * 60)))
            // No ping before every acquire: it doubled the round trips of a
            // request (bench/README.md, api-bench). A connection the server
            // dropped fails its one query (503, retryable) and is discarded;
            // idle ones are closed after `connection_idle` anyway.
            .test_before_acquire(false)
            .connect_lazy_with(options)
    }
}

/// Closes a pool in the background: `close` waits for borrowed connections
/// to come back, which must not hold the map's lock or the caller.
fn close_later(pool: PgPool) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { pool.close().await });
    }
}

#[cfg(test)]
mod tests {
    use strata_db::TenantState;

    use super::*;

    fn tenant(n: u8) -> TenantInfo {
        TenantInfo {
            id: Uuid::from_bytes([n; 16]),
            name: format!("t{n}"),
            state: TenantState::Ready,
            cluster: "default".into(),
            database_name: format!("db{n}"),
            owner_role: format!("owner{n}"),
            host: Some("127.0.0.1".into()),
            port: Some(1),
            requests_per_second: None,
        }
    }

    fn pools(pool_size: u32, max_connections: u32) -> TenantPools {
        TenantPools::new(TenancySettings {
            pool_size,
            max_connections,
            ..TenancySettings::new(PgConnectOptions::new())
        })
    }

    #[tokio::test]
    async fn the_connection_cap_bounds_the_number_of_pools() {
        let pools = pools(4, 10);
        assert_eq!(
            pools.max_pools(),
            2,
            "10 / 4 pools of 4: at most 8 connections"
        );
        let first = pools.pool(&tenant(1)).expect("pool");
        pools.pool(&tenant(2)).expect("pool");
        // Touch 1 so 2 is the least recently used.
        std::thread::sleep(Duration::from_millis(2));
        pools.pool(&tenant(1)).expect("pool");
        pools.pool(&tenant(3)).expect("pool");
        assert_eq!(pools.open_pools(), 2);
        let inner = pools.lock();
        assert!(inner.pools.contains_key(&tenant(1).id));
        assert!(inner.pools.contains_key(&tenant(3).id));
        assert!(!inner.pools.contains_key(&tenant(2).id), "LRU evicted");
        drop(inner);
        assert!(!first.is_closed());
    }

    #[tokio::test]
    async fn a_moved_tenant_gets_a_new_pool_and_the_old_one_closes() {
        let pools = pools(2, 100);
        let before = pools.pool(&tenant(1)).expect("pool");
        let moved = TenantInfo {
            port: Some(2),
            ..tenant(1)
        };
        let after = pools.pool(&moved).expect("pool");
        assert_eq!(pools.open_pools(), 1);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !before.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("old pool closed");
        assert!(!after.is_closed());
    }

    #[tokio::test]
    async fn no_location_is_a_503() {
        let pools = pools(2, 100);
        let unknown = TenantInfo {
            host: None,
            ..tenant(1)
        };
        let error = pools.pool(&unknown).expect_err("no host");
        assert_eq!(error.kind().status.as_u16(), 503);
    }
}
