//! The Tenant controller: reconcile, error policy and the run loop
//! (in the shape of kube-rs' controller-rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use strata_api::{Bucket, Tenant, TenantPhase, TenantStatus};
use strata_db::{Catalog, TenantState};
use tracing::Instrument;
use uuid::Uuid;

use crate::cluster::Clusters;
use crate::conditions;
use crate::host::{EventKind, KubeHost, TenantHost};
use crate::metrics::Metrics;
use crate::provision::{self, Failure, ProvisionSettings, Provisioner, TenantInput};

pub const FINALIZER: &str = "strata.dev/tenant-cleanup";

/// How often a Ready tenant is checked again for drift.
const RESYNC: Duration = Duration::from_secs(600);
/// How often a tenant that needs a human (conflict, changed migration) is looked at.
const STUCK_RESYNC: Duration = Duration::from_secs(300);
/// How often a deleting tenant checks whether its Buckets are gone (their
/// deletion also wakes it, through the watch).
const BUCKETS_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Provision(#[from] Failure),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Tenant has no namespace or uid")]
    Incomplete,
    /// Deletion waits for the tenant's Buckets to be deleted first.
    #[error("waiting for Buckets to be deleted: {}", .0.join(", "))]
    BucketsRemaining(Vec<String>),
}

/// Capped exponential backoff per object, reset on success.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_secs(1);
    pub const CAP: Duration = Duration::from_secs(300);

    pub fn next(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = Self::BASE.saturating_mul(1u32 << (*n - 1).min(16));
        let capped = exp.min(Self::CAP);
        // ±10% jitter so many failing tenants do not retry in lockstep.
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        capped.mul_f64(jitter)
    }

    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// How often the catalog is compared with the Tenants that exist.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);
/// An entry must be unchanged this long before the sweeper acts on it, so a
/// Tenant created a moment ago (not yet in the watch cache) is never swept.
const SWEEP_GRACE: Duration = Duration::from_secs(120);

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub catalog: Catalog,
    pub clusters: Clusters,
    pub settings: ProvisionSettings,
    pub reporter: Reporter,
    pub metrics: Metrics,
    pub backoff: Backoff,
    /// Upper bound on the database work of one reconcile.
    pub reconcile_deadline: Duration,
}

/// Runs `work` under the reconcile deadline; past it the work is dropped
/// (its sessions end with it) and the step is reported as retryable.
async fn within_deadline<T>(
    deadline: Duration,
    step: provision::Step,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            step,
            reason: "DeadlineExceeded",
            message: format!("reconcile did not finish within {deadline:?}"),
            retryable: true,
        }),
    }
}

fn input(tenant: &Tenant) -> Result<TenantInput, Error> {
    let uid = tenant.uid().ok_or(Error::Incomplete)?;
    Ok(TenantInput {
        id: Uuid::parse_str(&uid).map_err(|_| Error::Incomplete)?,
        name: tenant.name_any(),
        namespace: tenant.namespace().ok_or(Error::Incomplete)?,
        spec: tenant.spec.clone(),
        rotation: provision::Rotation {
            requested: tenant
                .annotations()
                .get(strata_api::ROTATE_CREDENTIALS_ANNOTATION)
                .cloned(),
            done: tenant
                .status
                .as_ref()
                .and_then(|s| s.credentials_rotation.clone()),
        },
    })
}

pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = tenant.namespace().ok_or(Error::Incomplete)?;
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", tenant = %tenant.name_any(), namespace = %ns);
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply(t, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(t, &ctx).await,
        }
    })
    .map(|r| {
        r.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        })
    })
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

fn host_for(tenant: &Tenant, ctx: &Context) -> KubeHost {
    let ns = tenant.namespace().unwrap_or_default();
    KubeHost {
        secrets: Api::<Secret>::namespaced(ctx.client.clone(), &ns),
        tenant: tenant.clone(),
        recorder: Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
    }
}

async fn write_status(
    api: &Api<Tenant>,
    name: &str,
    status: &TenantStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "Tenant",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn apply(tenant: Arc<Tenant>, ctx: &Context) -> Result<Action, Error> {
    let input = input(&tenant)?;
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &input.namespace);
    let host = host_for(&tenant, ctx);
    let generation = tenant.metadata.generation;
    let previous = tenant.status.as_ref();

    if tenant.spec.suspend {
        ctx.catalog
            .set_state(input.id, TenantState::Suspended)
            .await?;
        if previous.and_then(|s| s.phase) != Some(TenantPhase::Suspended) {
            host.event(
                EventKind::Normal,
                "Suspended",
                "Suspend",
                "Reconciliation suspended".into(),
            )
            .await;
        }
        write_status(
            &api,
            &input.name,
            &conditions::suspended(previous, generation),
        )
        .await?;
        ctx.metrics.outcome("suspended");
        return Ok(Action::await_change());
    }

    let result = within_deadline(ctx.reconcile_deadline, provision::Step::Cluster, async {
        let cluster =
            provision::resolve_cluster(&ctx.clusters, provision::cluster_name(&input.spec)).await?;
        Provisioner {
            settings: &ctx.settings,
            catalog: &ctx.catalog,
            cluster: &cluster,
            host: &host,
        }
        .provision(&input)
        .await
    })
    .await;
    if let Err(f) = &result
        && f.is_injected()
    {
        // Behave like a crash: nothing more is written.
        return Err(Error::Provision(f.clone()));
    }
    // A retryable failure waits a capped, growing delay; the status says how long.
    let retry_in = match &result {
        Err(f) if f.retryable => Some(ctx.backoff.next(&input.id.to_string())),
        _ => None,
    };
    let mut status = conditions::status_after(previous, generation, &input.id.to_string(), &result);
    if let Some(delay) = retry_in {
        conditions::note_retry(&mut status, delay);
    }
    write_status(&api, &input.name, &status).await?;
    match result {
        Ok(_) => {
            if previous.and_then(|s| s.phase) != Some(TenantPhase::Ready) {
                host.event(
                    EventKind::Normal,
                    "Ready",
                    "Provision",
                    "Tenant is ready".into(),
                )
                .await;
            }
            ctx.backoff.reset(&input.id.to_string());
            ctx.metrics.outcome("ready");
            Ok(Action::requeue(RESYNC))
        }
        Err(f) => {
            host.event(EventKind::Warning, f.reason, "Provision", f.to_string())
                .await;
            tracing::warn!(step = %f.step, reason = f.reason, message = %f.message, "provisioning failed");
            if let Some(delay) = retry_in {
                ctx.metrics.outcome("retry");
                Ok(Action::requeue(delay))
            } else {
                if let Err(e) = ctx.catalog.set_state(input.id, TenantState::Failed).await {
                    tracing::debug!(error = %e, "cannot mark tenant failed in catalog");
                }
                ctx.metrics.outcome("failed");
                Ok(Action::requeue(STUCK_RESYNC))
            }
        }
    }
}

async fn cleanup(tenant: Arc<Tenant>, ctx: &Context) -> Result<Action, Error> {
    let input = input(&tenant)?;
    let host = host_for(&tenant, ctx);
    // Buckets first: each follows the tenant's policy, and needs the tenant
    // database (metadata) and catalog entry while it does.
    let remaining =
        crate::bucket::remove_tenant_buckets(&ctx.client, &input.namespace, &input.name).await?;
    if !remaining.is_empty() {
        let failure = Failure {
            step: provision::Step::Database,
            reason: "BucketsRemaining",
            message: format!(
                "the tenant's Buckets are being deleted first: {}",
                remaining.join(", ")
            ),
            retryable: true,
        };
        let previous = tenant.status.as_ref();
        let status = conditions::deletion_blocked(previous, tenant.metadata.generation, &failure);
        let before =
            previous.and_then(|s| strata_api::condition::find(&s.conditions, conditions::READY));
        if before
            .is_none_or(|c| c.reason != failure.reason || !c.message.contains(&failure.message))
        {
            host.event(
                EventKind::Normal,
                failure.reason,
                "Delete",
                failure.message.clone(),
            )
            .await;
            let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &input.namespace);
            write_status(&api, &input.name, &status).await?;
        }
        return Err(Error::BucketsRemaining(remaining));
    }
    let policy = match tenant.spec.deletion_policy {
        strata_api::DeletionPolicy::Retain => "Retain",
        strata_api::DeletionPolicy::Delete => "Delete",
    };
    let released = within_deadline(
        ctx.reconcile_deadline,
        provision::Step::Database,
        release(ctx, input.id, policy, provision::cluster_name(&input.spec)),
    )
    .await;
    let note = match released {
        Ok(note) => note,
        Err(f) => {
            // The finalizer stays until the release succeeds: nothing is
            // orphaned. The status and an Event say why, so a human can act
            // on what retrying cannot fix.
            host.event(EventKind::Warning, f.reason, "Delete", f.to_string())
                .await;
            let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &input.namespace);
            let status = conditions::deletion_blocked(
                tenant.status.as_ref(),
                tenant.metadata.generation,
                &f,
            );
            if let Err(e) = write_status(&api, &input.name, &status).await {
                tracing::debug!(error = %e, "cannot write deletion status");
            }
            return Err(f.into());
        }
    };
    host.event(EventKind::Normal, "Released", "Delete", note.into())
        .await;
    ctx.backoff.reset(&input.id.to_string());
    ctx.metrics.outcome("deleted");
    Ok(Action::await_change())
}

/// Applies a deletion policy to a tenant's database and catalog entry.
/// `Delete` works on the cluster the catalog recorded (where the database
/// really is), falling back to the one the spec names.
async fn release(
    ctx: &Context,
    id: Uuid,
    policy: &str,
    spec_cluster: &str,
) -> Result<&'static str, Failure> {
    if policy != "Delete" {
        provision::detach(&ctx.catalog, id).await?;
        return Ok("Database retained; catalog entry detached");
    }
    let recorded = ctx.catalog.cluster_of(id).await.map_err(|e| Failure {
        step: provision::Step::Catalog,
        reason: "CatalogUnavailable",
        message: e.to_string(),
        retryable: true,
    })?;
    let cluster =
        provision::resolve_cluster(&ctx.clusters, recorded.as_deref().unwrap_or(spec_cluster))
            .await?;
    provision::destroy(&ctx.catalog, &cluster, id).await?;
    Ok("Database, roles and catalog entry deleted")
}

/// What one pass of the catalog sweeper did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub detached: Vec<Uuid>,
    pub deleted: Vec<Uuid>,
    pub failed: Vec<Uuid>,
}

/// Converges the catalog with the Tenants that exist: an entry whose Tenant
/// is gone (deleted while no operator ran, or its finalizer removed by hand)
/// gets its recorded deletion policy applied. Only entries in `namespace`
/// (all when `None`), made by the controller, unchanged for `grace`, and
/// confirmed absent by a direct read are touched.
pub async fn sweep_catalog(
    ctx: &Context,
    existing: &std::collections::HashSet<Uuid>,
    namespace: Option<&str>,
    grace: Duration,
) -> Result<SweepReport, Error> {
    let mut report = SweepReport::default();
    for entry in ctx.catalog.kubernetes_entries().await? {
        if existing.contains(&entry.id)
            || entry.idle_seconds < grace.as_secs_f64()
            || namespace.is_some_and(|ns| ns != entry.namespace)
        {
            continue;
        }
        let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &entry.namespace);
        if let Some(t) = api.get_opt(&entry.name).await?
            && t.uid().as_deref() == Some(entry.id.to_string().as_str())
        {
            continue; // the watch cache lagged
        }
        match within_deadline(
            ctx.reconcile_deadline,
            provision::Step::Database,
            release(ctx, entry.id, &entry.deletion_policy, &entry.cluster),
        )
        .await
        {
            Ok(_) if entry.deletion_policy == "Delete" => report.deleted.push(entry.id),
            Ok(_) => report.detached.push(entry.id),
            Err(f) => {
                tracing::warn!(tenant = %entry.name, namespace = %entry.namespace, error = %f, "cannot release orphaned catalog entry");
                report.failed.push(entry.id);
            }
        }
        tracing::info!(tenant = %entry.name, namespace = %entry.namespace, policy = %entry.deletion_policy, "released catalog entry of a Tenant that no longer exists");
    }
    Ok(report)
}

pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::BucketsRemaining(_) = error {
        return Action::requeue(BUCKETS_WAIT);
    }
    let delay = ctx.backoff.next(&tenant.uid().unwrap_or_default());
    tracing::warn!(tenant = %tenant.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (tenants, secrets, buckets): (Api<Tenant>, Api<Secret>, Api<Bucket>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=strata-operator");
    // Reconcile on spec (generation) and finalizer changes only: our own status
    // writes would otherwise trigger a full pass per tenant for nothing. Deletion
    // bumps the generation, so cleanup still starts. Drift is caught by RESYNC.
    let (reader, writer) = reflector::store();
    let sweeper = tokio::spawn(sweep_periodically(
        ctx.clone(),
        reader.clone(),
        namespace.map(str::to_string),
    ));
    let tenants = watcher(tenants, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    Controller::for_stream(tenants, reader)
        .owns(secrets, owned)
        // A deleting tenant waits for its Buckets: their removal wakes it.
        // Only Buckets being deleted matter (their usage refreshes do not).
        .watches(buckets, watcher::Config::default(), |bucket: Bucket| {
            bucket
                .metadata
                .deletion_timestamp
                .as_ref()
                .and_then(|_| bucket.namespace())
                .map(|ns| ObjectRef::<Tenant>::new(&bucket.spec.tenant_ref).within(&ns))
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
        })
        .await;
    sweeper.abort();
}

/// Runs [`sweep_catalog`] every [`SWEEP_INTERVAL`], once the watch cache is
/// complete (an incomplete cache would make live Tenants look gone).
async fn sweep_periodically(
    ctx: Arc<Context>,
    reader: reflector::Store<Tenant>,
    namespace: Option<String>,
) {
    if reader.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let existing = reader
            .state()
            .iter()
            .filter_map(|t| t.uid().and_then(|u| Uuid::parse_str(&u).ok()))
            .collect();
        match sweep_catalog(&ctx, &existing, namespace.as_deref(), SWEEP_GRACE).await {
            Ok(report) if report != SweepReport::default() => {
                tracing::info!(?report, "catalog sweep")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "catalog sweep failed"),
        }
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
}

/// The reporter that names this controller in Events.
pub fn reporter(identity: &str) -> Reporter {
    Reporter {
        controller: "strata-operator".into(),
        instance: Some(identity.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let b = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| b.next("t")).collect();
        // ±10% jitter around 1, 2, 4, ... seconds, never above the cap (+10%).
        assert!(
            delays[0] >= Duration::from_millis(900) && delays[0] <= Duration::from_millis(1100)
        );
        assert!(
            delays[3] >= Duration::from_millis(7200) && delays[3] <= Duration::from_millis(8800)
        );
        assert!(delays.iter().all(|d| *d <= Backoff::CAP.mul_f64(1.1)));
        assert!(delays[11] >= Backoff::CAP.mul_f64(0.9), "reaches the cap");
        assert!(b.next("other") <= Duration::from_millis(1100), "per object");
        b.reset("t");
        assert!(
            b.next("t") <= Duration::from_millis(1100),
            "reset after success"
        );
    }
}
