//! Database clusters the operator provisions on: an admin connection per
//! cluster, kept for the life of the process, plus short-lived pools to single
//! tenant databases.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use strata_db::Ident;
use tokio::sync::{Mutex, OnceCell};

/// How long to wait for a connection before calling a cluster unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One PostgreSQL (or Citus coordinator) cluster, reached with an admin role.
pub struct Cluster {
    /// Stable, secret-free identity for the catalog (`default` or a Secret ref).
    pub id: String,
    admin: PgConnectOptions,
    pool: PgPool,
    /// Serialises template preparation within this process (an advisory lock
    /// does it across processes).
    pub(crate) template_lock: Mutex<bool>,
    /// Whether the cluster runs Citus (detected on first use).
    pub(crate) citus: OnceCell<bool>,
}

impl std::fmt::Debug for Cluster {
    // The connect options hold the admin password: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid database URL for cluster {cluster}: {reason}")]
    InvalidUrl { cluster: String, reason: String },
    #[error("database cluster {cluster} is unreachable: {source}")]
    Unreachable {
        cluster: String,
        #[source]
        source: sqlx::Error,
    },
}

impl Cluster {
    fn new(id: String, url: &str) -> Result<Self, ClusterError> {
        let admin = PgConnectOptions::from_str(url)
            .map_err(|e| ClusterError::InvalidUrl {
                cluster: id.clone(),
                reason: redact(&e.to_string(), url),
            })?
            .application_name("strata-operator")
            .log_statements(tracing::log::LevelFilter::Debug);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(admin.clone());
        Ok(Self {
            id,
            admin,
            pool,
            template_lock: Mutex::new(false),
            citus: OnceCell::new(),
        })
    }

    /// The admin pool on the cluster's maintenance database.
    pub fn admin(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the cluster answers.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Unreachable {
                cluster: self.id.clone(),
                source,
            })
    }

    /// Host and port clients use to reach the cluster.
    pub fn host_port(&self) -> (String, u16) {
        (self.admin.get_host().to_string(), self.admin.get_port())
    }

    /// Admin connect options for another database on the same cluster.
    pub fn options_for(&self, database: &str) -> PgConnectOptions {
        self.admin.clone().database(database)
    }

    /// A small pool on `database` whose sessions act as `role`, so everything
    /// they create is owned by the tenant's role.
    pub async fn pool_as(&self, database: &Ident, role: &Ident) -> Result<PgPool, sqlx::Error> {
        let set_role = format!("SET ROLE {}", role.quoted());
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| {
                let set_role = set_role.clone();
                Box::pin(async move {
                    sqlx::query(&set_role).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect_with(self.options_for(database.as_str()))
            .await
    }

    /// A small admin pool on `database`.
    pub async fn admin_pool_on(&self, database: &Ident) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(self.options_for(database.as_str()))
            .await
    }
}

/// Clusters by their connection URL, created on first use.
#[derive(Default)]
pub struct Clusters {
    by_url: Mutex<HashMap<[u8; 32], Arc<Cluster>>>,
}

impl Clusters {
    /// The cluster for `url`, keyed by a hash so the map never holds a readable
    /// password beyond the connect options themselves.
    pub async fn get(&self, id: &str, url: &str) -> Result<Arc<Cluster>, ClusterError> {
        let key: [u8; 32] = Sha256::digest(format!("{id}\n{url}")).into();
        let mut map = self.by_url.lock().await;
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let cluster = Arc::new(Cluster::new(id.to_string(), url)?);
        map.insert(key, cluster.clone());
        Ok(cluster)
    }
}

/// Removes the URL (which may hold a password) from an error message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "<url>")
}
