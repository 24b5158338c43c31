use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use kube::Client;
use prometheus_client::registry::Registry;
use strata_operator::bucket::{self, BucketContext};
use strata_operator::cluster::{Clusters, SecretClusters};
use strata_operator::config::{Cli, Command, RunArgs};
use strata_operator::controller::{self, Backoff, Context};
use strata_operator::{leader::LeaderElector, metrics::Metrics};
use strata_servicekit::{ReadinessCheck, probe_router, shutdown_signal};
use tokio_util::sync::CancellationToken;

/// How long the controllers may take to finish after SIGTERM.
const CONTROLLER_DRAIN: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    strata_servicekit::install_crypto_provider();
    match cli.command {
        Some(Command::Apply(args)) => strata_operator::offline::apply(&args).await,
        Some(Command::Run) | None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let db = args
        .db
        .clone()
        .context("--database-url (STRATA_DATABASE_URL) is required")?;
    let identity = args.identity();
    let catalog = strata_operator::platform::open(&db.database_url, &db.platform_database)
        .await
        .context("opening the platform catalog")?;
    let client = kube_client().await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready_pool = catalog.pool().clone();
    let readiness: ReadinessCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| format!("catalog: {e}"))
        }
        .boxed()
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.probe_addr)
        .await
        .with_context(|| format!("binding {}", args.probe_addr))?;
    tracing::info!(addr = %args.probe_addr, "serving /healthz, /readyz, /metrics");
    let probes = tokio::spawn(
        axum::serve(listener, probe_router(Arc::new(registry), readiness))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            shutdown.cancel();
        });
    }

    // Clusters are declared by the platform team in the operator's namespace.
    let cluster_namespace = args
        .cluster_namespace
        .clone()
        .unwrap_or_else(|| args.lease_namespace.clone());
    let clusters = Clusters::new(
        Box::new(SecretClusters {
            secrets: kube::Api::namespaced(client.clone(), &cluster_namespace),
        }),
        db.database_url.clone(),
        db.session_limits(),
    )
    .with_default_dataplane_role(db.dataplane_role.clone());
    // A misconfigured backend fails here, loudly, not at the first Bucket.
    let backend = strata_storage::connect(&args.storage)
        .await
        .context("connecting the storage backend")?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        catalog,
        clusters,
        reconcile_deadline: args.reconcile_deadline,
        settings: db.settings("kubernetes"),
        reporter: controller::reporter(&identity),
        metrics: metrics.clone(),
        backoff: Backoff::default(),
    });

    let elector = args.leader_election.then(|| {
        let leases = kube::Api::namespaced(client.clone(), &args.lease_namespace);
        LeaderElector::new(leases, &args.lease_name, &identity)
    });
    if let Some(elector) = &elector {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.cancelled() => {
                probes.await??;
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);
    tracing::info!(namespace = ?args.namespace, concurrency = args.concurrency, backend = %backend.describe(), "starting tenant and bucket controllers");
    let buckets = Arc::new(BucketContext::new(ctx.clone(), backend));
    let controller = futures::future::join(
        controller::run(
            ctx,
            args.namespace.as_deref(),
            args.concurrency,
            shutdown.clone().cancelled_owned(),
        ),
        bucket::run(
            buckets,
            args.namespace.as_deref(),
            args.concurrency,
            shutdown.clone().cancelled_owned(),
        ),
    )
    .map(|_| ());
    let lost = match &elector {
        Some(e) => e.hold().left_future(),
        None => std::future::pending().right_future(),
    };
    // Both futures are moved into the select: when `lost` wins, `controller`
    // is dropped before the branch runs, and with it the kube-runtime
    // Controller, whose reconcile tasks are aborted (not awaited) on drop.
    // After SIGTERM the controllers finish their running reconciles; a
    // controller whose watch never became ready (the signal came during its
    // first list) may wait for it forever, so the wait is bounded. Dropping
    // the controllers aborts what still runs: every reconcile is crash-safe.
    let drained = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(CONTROLLER_DRAIN).await;
        }
    };
    let stepped_down = tokio::select! {
        () = controller => None,
        down = lost => Some(down),
        () = drained => {
            tracing::warn!(after = ?CONTROLLER_DRAIN, "controllers still running after shutdown; stopping them");
            None
        }
    };
    metrics.leader.set(0);
    if let Some(down) = stepped_down {
        // No release: the lease is not known to be ours any more. Exit so a
        // fresh process (with fresh connections) competes again.
        tracing::error!(reason = ?down.reason, since_last_renewal = ?down.last_renewal.map(|t| t.elapsed()), "stopped leading; exiting");
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), probes).await;
        anyhow::bail!(
            "lost leadership ({:?}); exiting so a fresh replica can take over",
            down.reason
        );
    }
    if let Some(e) = &elector {
        // Graceful shutdown: the controller finished; hand the lease over
        // (bounded by the renew deadline inside `release`).
        e.release().await;
    }
    shutdown.cancel();
    probes.await??;
    tracing::info!("stopped");
    Ok(())
}

/// The Kubernetes client, from the kubeconfig or the in-cluster service
/// account, with every wait bounded: a dead API server shows up as an error,
/// not a request that hangs forever.
async fn kube_client() -> anyhow::Result<Client> {
    let mut config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration")?;
    config.connect_timeout = Some(Duration::from_secs(10));
    // Watches are closed by the server after 290 s (kube-runtime's default
    // timeoutSeconds); the read timeout must stay above that. Resetting it on
    // every write makes it count from the request, not from when a pooled
    // connection went idle.
    config.read_timeout = Some(Duration::from_secs(295));
    config.reset_reader_on_write = true;
    config.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("building the Kubernetes client")
}
