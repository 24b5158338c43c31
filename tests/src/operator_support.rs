//! Runs the Tenant controller in-process for one test: scoped to the test's
//! namespace, with a platform catalog of its own, so tests run in parallel.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use prometheus_client::registry::Registry;
use strata_api::{Tenant, TenantStatus};
use strata_db::Catalog;
use strata_operator::cluster::{Clusters, NoNamedClusters, SecretClusters, SessionLimits};
use strata_operator::controller::{self, Backoff, Context};
use strata_operator::metrics::Metrics;
use strata_operator::provision::{ProvisionSettings, Step};
use tokio_util::sync::CancellationToken;

use crate::{TestDb, env};

/// Provisioning settings, as the controller uses them.
pub fn settings(fault_after: Option<Step>) -> ProvisionSettings {
    ProvisionSettings {
        origin: "kubernetes",
        api_base_url: Some("http://127.0.0.1:28080".into()),
        invite_ttl_hours: 168,
        fault_after,
    }
}

/// The stack's PostgreSQL as the only (default) cluster.
pub fn default_clusters() -> Clusters {
    clusters_at(&env("STRATA_DATABASE_URL"))
}

/// `url` as the only (default) cluster.
pub fn clusters_at(url: &str) -> Clusters {
    Clusters::new(
        Box::new(NoNamedClusters),
        url.to_string(),
        SessionLimits::default(),
    )
}

/// Provisions `t` on the stack's default cluster with the operator's own
/// provisioner, Secrets as files under `host` (as `strata-operator apply`
/// does): the way tests that need a real tenant database get one.
pub async fn provision_local(
    catalog: &Catalog,
    host: &strata_operator::host::LocalHost,
    t: &strata_operator::provision::TenantInput,
) -> Result<strata_operator::provision::Provisioned, strata_operator::provision::Failure> {
    let settings = settings(None);
    let cluster =
        strata_operator::provision::resolve_cluster(&default_clusters(), "default").await?;
    strata_operator::provision::Provisioner {
        settings: &settings,
        catalog,
        cluster: &cluster,
        host,
    }
    .provision(t)
    .await
}

/// A fresh platform catalog, opened the way the operator opens it.
pub async fn test_catalog() -> (TestDb, Catalog) {
    let db = TestDb::new().await;
    let catalog = strata_operator::platform::open(&env("STRATA_DATABASE_URL"), &db.name)
        .await
        .expect("open platform catalog");
    (db, catalog)
}

/// A running controller; stops when dropped.
pub struct OperatorHarness {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Knobs of a harness that tests turn.
#[derive(Clone, Copy, Debug)]
pub struct HarnessOptions {
    pub limits: SessionLimits,
    pub concurrency: u16,
    pub reconcile_deadline: Duration,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            limits: SessionLimits::default(),
            concurrency: 4,
            reconcile_deadline: Duration::from_secs(180),
        }
    }
}

/// The controller's context for a test: clusters are declared as
/// `strata-cluster-<name>` Secrets in the test's namespace (standing in for
/// the operator's namespace).
pub fn test_context(
    client: kube::Client,
    namespace: &str,
    catalog: Catalog,
    options: HarnessOptions,
) -> Arc<Context> {
    let mut registry = Registry::default();
    Arc::new(Context {
        clusters: Clusters::new(
            Box::new(SecretClusters {
                secrets: Api::namespaced(client.clone(), namespace),
            }),
            env("STRATA_DATABASE_URL"),
            options.limits,
        ),
        client,
        catalog,
        settings: settings(None),
        reporter: controller::reporter("test-operator"),
        metrics: Metrics::register(&mut registry),
        backoff: Backoff::default(),
        reconcile_deadline: options.reconcile_deadline,
    })
}

impl OperatorHarness {
    pub async fn start(client: kube::Client, namespace: &str, catalog: Catalog) -> Self {
        Self::start_with(client, namespace, catalog, HarnessOptions::default()).await
    }

    pub async fn start_with(
        client: kube::Client,
        namespace: &str,
        catalog: Catalog,
        options: HarnessOptions,
    ) -> Self {
        let ctx = test_context(client, namespace, catalog, options);
        let stop = CancellationToken::new();
        let ns = namespace.to_string();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            controller::run(ctx, Some(&ns), options.concurrency, shutdown).await
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for OperatorHarness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until `check` holds for the Tenant's status, or panics with the last one.
pub async fn wait_for_status(
    api: &Api<Tenant>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&TenantStatus) -> bool,
) -> Tenant {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(t) = api.get(name).await {
            if t.status.as_ref().is_some_and(&check) {
                return t;
            }
            last = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "timed out waiting for tenant {name}; last seen: {:#?}",
        last.map(|t| t.status)
    );
}

/// Drops a tenant's database and roles left behind by a test (Retain policy,
/// or a test that stops before deletion). Best effort.
pub async fn drop_tenant_storage(id: uuid::Uuid) {
    let names = strata_operator::placement::TenantNames::for_tenant(id);
    let Ok(admin) = sqlx::PgPool::connect(&env("STRATA_DATABASE_URL")).await else {
        return;
    };
    let _ = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        names.database.quoted()
    ))
    .execute(&admin)
    .await;
    for role in [&names.role, &names.owner] {
        let _ = sqlx::query(&format!("DROP OWNED BY {}", role.quoted()))
            .execute(&admin)
            .await;
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {}", role.quoted()))
            .execute(&admin)
            .await;
    }
    admin.close().await;
}

/// Waits until the Tenant is gone (its finalizer released), or panics.
pub async fn wait_deleted(api: &Api<Tenant>, name: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if api.get_opt(name).await.expect("get tenant").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("tenant {name} still exists after {timeout:?}: finalizer not released");
}

/// Whether a condition of the status has this status and reason.
pub fn has_condition(
    status: &TenantStatus,
    type_: &str,
    state: strata_api::ConditionStatus,
    reason: Option<&str>,
) -> bool {
    strata_api::condition::find(&status.conditions, type_)
        .is_some_and(|c| c.status == state && reason.is_none_or(|r| c.reason == r))
}
