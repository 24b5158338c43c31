//! Database clusters the operator provisions on.
//!
//! Clusters are declared by the platform team, never by a tenant: the default
//! cluster comes from the operator's own flags, and every other one from a
//! `strata-cluster-<name>` Secret in the operator's namespace. A Tenant names
//! a cluster; it never carries a connection string.
//!
//! Who connects as whom (see ARCHITECTURE.md, "Privilege model"):
//! - the **admin** session (a superuser, or a role with CREATEROLE/CREATEDB)
//!   works on the maintenance database, and inside a tenant database only for
//!   superuser-only work (extensions, Citus node registration), always with
//!   `search_path = pg_catalog, pg_temp`;
//! - everything else inside a tenant database runs as that tenant's **owner**
//!   role, logged in directly (never `SET ROLE` from a more privileged session),
//!   so no function can `RESET ROLE` its way to more privilege.
//!
//! Every session has a `lock_timeout` and a `statement_timeout`, so a tenant
//! holding locks can delay its own reconcile, never anybody else's worker.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use strata_db::Ident;
use tokio::sync::{Mutex, OnceCell};

/// How long to wait for a connection before calling a cluster unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the cluster a Tenant without `spec.cluster` lives on.
pub const DEFAULT_CLUSTER: &str = "default";

/// Prefix of the Secrets (in the operator's namespace) that declare clusters.
pub const CLUSTER_SECRET_PREFIX: &str = "strata-cluster-";

/// The data plane's login role when a cluster declares none.
pub const DEFAULT_DATAPLANE_ROLE: &str = "strata_dataplane";

/// Bounds on every operator session, so that no tenant can hold a worker.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// How long a statement may wait for a lock (`lock_timeout`).
    pub lock_timeout: Duration,
    /// How long a statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(120),
        }
    }
}

impl SessionLimits {
    fn apply(&self, options: PgConnectOptions, search_path: &str) -> PgConnectOptions {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        options.options([
            ("lock_timeout", ms(self.lock_timeout)),
            ("statement_timeout", ms(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.statement_timeout),
            ),
            ("search_path", search_path.to_string()),
        ])
    }
}

/// A cluster as the platform team declared it. Deliberately not `Debug`.
pub struct ClusterSpec {
    /// Admin connection string.
    pub url: String,
    /// The data plane's login role on this cluster.
    pub dataplane_role: String,
    /// The data plane role's password, needed only on Citus clusters that
    /// authenticate nodes by password (written to `pg_dist_authinfo`).
    pub dataplane_password: Option<String>,
}

/// Where named clusters are declared.
#[async_trait]
pub trait ClusterSource: Send + Sync {
    /// The cluster called `name`; `None` when nobody declared it.
    async fn lookup(&self, name: &str) -> Result<Option<ClusterSpec>, String>;
}

/// Only the default cluster (offline `apply`, or an operator without a
/// cluster namespace).
pub struct NoNamedClusters;

#[async_trait]
impl ClusterSource for NoNamedClusters {
    async fn lookup(&self, _name: &str) -> Result<Option<ClusterSpec>, String> {
        Ok(None)
    }
}

/// Clusters declared as `strata-cluster-<name>` Secrets in the operator's own
/// namespace: keys `url` and, optionally, `dataplaneRole` and
/// `dataplanePassword` (see docs/clusters.md).
pub struct SecretClusters {
    pub secrets: kube::Api<k8s_openapi::api::core::v1::Secret>,
}

#[async_trait]
impl ClusterSource for SecretClusters {
    async fn lookup(&self, name: &str) -> Result<Option<ClusterSpec>, String> {
        let secret_name = format!("{CLUSTER_SECRET_PREFIX}{name}");
        let Some(secret) = self
            .secrets
            .get_opt(&secret_name)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8(v.0.clone()))
                .transpose()
                .map_err(|_| format!("Secret {secret_name}: key {key} is not UTF-8"))
        };
        let url = text("url")?.ok_or_else(|| format!("Secret {secret_name} has no key url"))?;
        let dataplane_role =
            text("dataplaneRole")?.unwrap_or_else(|| DEFAULT_DATAPLANE_ROLE.to_string());
        Ok(Some(ClusterSpec {
            url,
            dataplane_role,
            dataplane_password: text("dataplanePassword")?,
        }))
    }
}

/// One PostgreSQL (or Citus coordinator) cluster, reached with an admin role.
pub struct Cluster {
    /// The cluster's name: its stable identity in the catalog.
    pub id: String,
    admin: PgConnectOptions,
    pool: PgPool,
    limits: SessionLimits,
    /// The data plane's login role, granted access to every tenant database.
    pub dataplane_role: Ident,
    /// Passwords Citus nodes need to authenticate the admin and data-plane
    /// roles to each other (`pg_dist_authinfo`); unused on plain PostgreSQL.
    pub(crate) admin_password: Option<String>,
    pub(crate) dataplane_password: Option<String>,
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
    #[error("invalid data-plane role for cluster {cluster}: {reason}")]
    InvalidRole { cluster: String, reason: String },
    #[error("database cluster {cluster} is unreachable: {source}")]
    Unreachable {
        cluster: String,
        #[source]
        source: sqlx::Error,
    },
}

// No spaces: libpq-style `-c` options are split on them.
/// The search path of admin sessions: built-ins first, temporary objects
/// last, nothing a tenant could have created.
const ADMIN_SEARCH_PATH: &str = "pg_catalog,pg_temp";
/// The search path of owner sessions (migrations create objects in `public`).
const OWNER_SEARCH_PATH: &str = "public,pg_temp";

impl Cluster {
    fn new(id: String, spec: &ClusterSpec, limits: SessionLimits) -> Result<Self, ClusterError> {
        let admin = PgConnectOptions::from_str(&spec.url)
            .map_err(|e| ClusterError::InvalidUrl {
                cluster: id.clone(),
                reason: redact(&e.to_string(), &spec.url),
            })?
            .application_name("strata-operator")
            .log_statements(tracing::log::LevelFilter::Debug);
        let dataplane_role =
            Ident::new(spec.dataplane_role.clone()).map_err(|e| ClusterError::InvalidRole {
                cluster: id.clone(),
                reason: e.to_string(),
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(limits.apply(admin.clone(), ADMIN_SEARCH_PATH));
        let admin_password = url::Url::parse(&spec.url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
            .map(|p| {
                percent_encoding::percent_decode_str(&p)
                    .decode_utf8_lossy()
                    .into_owned()
            });
        Ok(Self {
            id,
            admin,
            pool,
            limits,
            dataplane_role,
            admin_password,
            dataplane_password: spec.dataplane_password.clone(),
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

    /// The admin role's name.
    pub fn admin_user(&self) -> &str {
        self.admin.get_username()
    }

    /// Host and port clients use to reach the cluster.
    pub fn host_port(&self) -> (String, u16) {
        (self.admin.get_host().to_string(), self.admin.get_port())
    }

    /// Admin connect options for another database on the same cluster, with
    /// the session limits and the admin search path.
    pub fn options_for(&self, database: &str) -> PgConnectOptions {
        self.limits
            .apply(self.admin.clone().database(database), ADMIN_SEARCH_PATH)
    }

    /// A small pool on `database` logged in as `role` itself (not `SET ROLE`
    /// from the admin): whatever runs in it has that role's rights and no more.
    pub async fn pool_as(
        &self,
        database: &Ident,
        role: &Ident,
        password: &str,
    ) -> Result<PgPool, sqlx::Error> {
        let options = self.limits.apply(
            self.admin
                .clone()
                .database(database.as_str())
                .username(role.as_str())
                .password(password),
            OWNER_SEARCH_PATH,
        );
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
    }

    /// A one-connection admin pool on `database`, for superuser-only work.
    pub async fn admin_pool_on(&self, database: &Ident) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(self.options_for(database.as_str()))
            .await
    }
}

/// Clusters by name and declaration, created on first use.
pub struct Clusters {
    source: Box<dyn ClusterSource>,
    default_url: String,
    /// The data plane's login role on the default cluster.
    default_dataplane_role: String,
    limits: SessionLimits,
    by_key: Mutex<HashMap<[u8; 32], Arc<Cluster>>>,
}

impl Clusters {
    pub fn new(source: Box<dyn ClusterSource>, default_url: String, limits: SessionLimits) -> Self {
        Self {
            source,
            default_url,
            default_dataplane_role: DEFAULT_DATAPLANE_ROLE.to_string(),
            limits,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// The data plane's login role on the default cluster
    /// (`--dataplane-role`); named clusters declare theirs in their Secret.
    pub fn with_default_dataplane_role(mut self, role: impl Into<String>) -> Self {
        self.default_dataplane_role = role.into();
        self
    }

    /// The cluster called `name`. `Ok(None)` when nobody declared it.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Cluster>>, ClusterLookupError> {
        let spec = if name == DEFAULT_CLUSTER {
            ClusterSpec {
                url: self.default_url.clone(),
                dataplane_role: self.default_dataplane_role.clone(),
                dataplane_password: None,
            }
        } else {
            match self
                .source
                .lookup(name)
                .await
                .map_err(ClusterLookupError::Source)?
            {
                Some(spec) => spec,
                None => return Ok(None),
            }
        };
        // Keyed by a hash, so the map never holds a readable password beyond
        // the connect options; a changed declaration gives a fresh cluster.
        let key: [u8; 32] = Sha256::digest(format!(
            "{name}\n{}\n{}\n{}",
            spec.url,
            spec.dataplane_role,
            spec.dataplane_password.as_deref().unwrap_or_default()
        ))
        .into();
        let mut map = self.by_key.lock().await;
        if let Some(c) = map.get(&key) {
            return Ok(Some(c.clone()));
        }
        let cluster = Arc::new(
            Cluster::new(name.to_string(), &spec, self.limits)
                .map_err(ClusterLookupError::Invalid)?,
        );
        map.retain(|_, c| c.id != name);
        map.insert(key, cluster.clone());
        Ok(Some(cluster))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterLookupError {
    /// The declarations could not be read (API server unreachable): retry.
    #[error("cannot read cluster declarations: {0}")]
    Source(String),
    /// The declaration is malformed: a human must fix it.
    #[error(transparent)]
    Invalid(ClusterError),
}

/// Removes the URL (which may hold a password) from an error message.
fn redact(message: &str, url: &str) -> String {
    message.replace(url, "<url>")
}
