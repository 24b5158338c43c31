//! The Bucket controller: a `Bucket` becomes a catalog entry (its rules, read
//! by the data plane) and a prefix in the storage backend, with status
//! conditions, the backend location and usage; deletion follows the owning
//! Tenant's `deletionPolicy` (in the shape of the Tenant controller in
//! [`crate::controller`]).
//!
//! What lives where: the rules in `catalog.buckets`; object metadata, uploads
//! and usage in the tenant database (tables of the data plane's storage
//! migration, each with a `bucket_id` column); bytes in the backend under
//! `t/<tenant uid>/b/<bucket uid>/`. The operator reaches the tenant database
//! as the tenant's owner role, like the provisioner.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sqlx::PgPool;
use strata_api::bucket::BucketUsage;
use strata_api::condition::set_condition;
use strata_api::{Bucket, BucketStatus, Condition, ConditionStatus, Tenant, TenantPhase};
use strata_db::{BucketClaim, BucketRecord, BucketState, backend_prefix};
use strata_storage::{Backend, BlobKey};
use tracing::Instrument;
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::controller::{Backoff, Context};
use crate::placement::{DatabasePerTenant, Placement};

pub const FINALIZER: &str = "strata.dev/bucket-cleanup";

/// Set to `"true"` on a Bucket whose tenant's policy is `Delete` to delete it
/// with its objects; without it a non-empty bucket is never deleted.
pub const FORCE_DELETE_ANNOTATION: &str = "strata.dev/force-delete";

/// The data plane's storage tables in the tenant database
/// (`migrations/tenant/0003_storage.sql`), in the order a forced deletion
/// empties them (children before parents), each with the columns that follow
/// `bucket_id` in its primary key. Deleting by key within one `bucket_id`
/// keeps every statement on one shard under Citus (where the tables are
/// distributed by `bucket_id`). `bucket_usage` is handled apart, last: see
/// [`drop_usage`].
pub const TENANT_STORAGE_TABLES: &[(&str, &str)] = &[
    ("upload_parts", "upload_id, part_number"),
    ("uploads", "id"),
    ("reservations", "id"),
    ("blob_intents", "blob_key"),
    ("variants", "source_key, variant"),
    ("objects", "key"),
];

/// The usage table; its nil-UUID row is the tenant's total.
pub const USAGE_TABLE: &str = "bucket_usage";

pub const TENANT_READY: &str = "TenantReady";
pub const NAME_CLAIMED: &str = "NameClaimed";
pub const BACKEND_READY: &str = "BackendReady";
pub const USAGE_REPORTED: &str = "UsageReported";
pub const READY: &str = "Ready";

/// How often a Ready bucket's usage is refreshed (the default of
/// [`BucketContext::usage_refresh`]).
pub const USAGE_REFRESH: Duration = Duration::from_secs(45);
/// How often a bucket waiting for its tenant looks again (Tenant changes
/// also wake it, through the watch).
const TENANT_WAIT: Duration = Duration::from_secs(30);
/// How often a bucket whose name another Bucket holds looks again.
const NAME_WAIT: Duration = Duration::from_secs(60);
/// How often a refused deletion (non-empty bucket) is checked again: the
/// objects may be deleted through the API meanwhile.
const NOT_EMPTY_RECHECK: Duration = Duration::from_secs(30);
/// Rows per DELETE and blobs per listing during a forced deletion: each
/// statement stays short, so the tenant's own traffic is not held up.
const BATCH: i64 = 1000;
/// Emptying rounds in one reconcile before it yields (late commits of
/// uploads that began before the bucket was marked `deleting`).
const EMPTY_ROUNDS: usize = 3;

/// Shared state of the Bucket controller: the Tenant controller's context
/// (clients, catalog, clusters) plus the backend.
pub struct BucketContext {
    pub base: Arc<Context>,
    pub backend: Arc<dyn Backend>,
    pub backoff: Backoff,
    /// How often a Ready bucket's usage is read again.
    pub usage_refresh: Duration,
}

impl BucketContext {
    pub fn new(base: Arc<Context>, backend: Arc<dyn Backend>) -> Self {
        Self {
            base,
            backend,
            backoff: Backoff::default(),
            usage_refresh: USAGE_REFRESH,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Bucket has no namespace or uid")]
    Incomplete,
    /// Something outside our control must change first (objects in a bucket
    /// to delete); looked at again after `after`.
    #[error("{reason}: {message}")]
    Waiting {
        reason: &'static str,
        message: String,
        after: Duration,
    },
    /// A failure that retrying with backoff may fix.
    #[error("{reason}: {message}")]
    Retry {
        reason: &'static str,
        message: String,
    },
}

impl Error {
    fn retry(reason: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Retry {
            reason,
            message: e.to_string(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Waiting { reason, .. } | Self::Retry { reason, .. } => reason,
            Self::Kube(_) => "KubernetesUnavailable",
            Self::Catalog(_) => "CatalogUnavailable",
            Self::Finalizer(_) | Self::Incomplete => "Error",
        }
    }
}

/// A Bucket as the controller needs it.
struct Input {
    id: Uuid,
    name: String,
    namespace: String,
}

fn input(bucket: &Bucket) -> Result<Input, Error> {
    let uid = bucket.uid().ok_or(Error::Incomplete)?;
    Ok(Input {
        id: Uuid::parse_str(&uid).map_err(|_| Error::Incomplete)?,
        name: bucket.name_any(),
        namespace: bucket.namespace().ok_or(Error::Incomplete)?,
    })
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
        reason: reason.into(),
        message,
    }
}

fn ready_reason(status: Option<&BucketStatus>) -> Option<(ConditionStatus, String)> {
    status
        .and_then(|s| strata_api::condition::find(&s.conditions, READY))
        .map(|c| (c.status, c.reason.clone()))
}

async fn write_status(
    api: &Api<Bucket>,
    name: &str,
    status: &BucketStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "Bucket",
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

async fn event(ctx: &BucketContext, bucket: &Bucket, kind: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.base.client.clone(), ctx.base.reporter.clone());
    let event = Event {
        type_: kind,
        reason: reason.into(),
        note: Some(note),
        action: if bucket.metadata.deletion_timestamp.is_some() {
            "Delete".into()
        } else {
            "Reconcile".into()
        },
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &bucket.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

pub async fn reconcile(bucket: Arc<Bucket>, ctx: Arc<BucketContext>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = bucket.namespace().ok_or(Error::Incomplete)?;
    let api: Api<Bucket> = Api::namespaced(ctx.base.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", bucket = %bucket.name_any(), namespace = %ns);
    let result = finalizer(&api, FINALIZER, bucket, |event| async {
        match event {
            Finalizer::Apply(b) => apply(b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(b, &ctx).await,
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
    ctx.base
        .metrics
        .bucket_reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Why a Tenant cannot hold buckets yet, as (reason, message).
fn tenant_unready(tenant_ref: &str, tenant: Option<&Tenant>) -> Option<(&'static str, String)> {
    let Some(t) = tenant else {
        return Some((
            "TenantNotFound",
            format!("Tenant {tenant_ref:?} does not exist in this namespace; waiting for it"),
        ));
    };
    if t.metadata.deletion_timestamp.is_some() {
        return Some((
            "TenantDeleting",
            format!("Tenant {tenant_ref:?} is being deleted"),
        ));
    }
    let status = t.status.as_ref();
    let ready = status
        .and_then(|s| strata_api::condition::find(&s.conditions, "Ready"))
        .is_some_and(Condition::is_true);
    if ready && status.and_then(|s| s.phase) == Some(TenantPhase::Ready) {
        return None;
    }
    let phase = status
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    Some((
        "TenantNotReady",
        format!("Tenant {tenant_ref:?} is {phase}, not Ready; waiting for it"),
    ))
}

/// A session of the tenant's owner role in its database.
async fn tenant_pool(ctx: &BucketContext, tenant: Uuid) -> Result<PgPool, Error> {
    let catalog = &ctx.base.catalog;
    let brief = catalog.tenant_brief(tenant).await?.ok_or(Error::Retry {
        reason: "TenantNotCatalogued",
        message: format!("tenant {tenant} has no catalog entry"),
    })?;
    let password = catalog
        .stored_owner_password(tenant)
        .await?
        .ok_or(Error::Retry {
            reason: "TenantNotCatalogued",
            message: format!("tenant {tenant} has no owner credentials in the catalog"),
        })?;
    let cluster = crate::provision::resolve_cluster(&ctx.base.clusters, &brief.cluster)
        .await
        .map_err(|f| Error::retry("TenantDatabaseUnavailable", f))?;
    DatabasePerTenant { cluster: &cluster }
        .owner_pool(tenant, &password)
        .await
        .map_err(|e| Error::retry("TenantDatabaseUnavailable", e))
}

/// Whether the tenant database has `table` (the storage migration may not
/// have been applied to it yet).
async fn has_table(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("public.{table}"))
        .fetch_one(pool)
        .await
}

/// The bucket's usage from `bucket_usage`; `None` while the table does not exist.
async fn read_usage(pool: &PgPool, bucket: Uuid) -> Result<Option<BucketUsage>, sqlx::Error> {
    if !has_table(pool, "bucket_usage").await? {
        return Ok(None);
    }
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT bytes, objects FROM bucket_usage WHERE bucket_id = $1")
            .bind(bucket)
            .fetch_optional(pool)
            .await?;
    let (bytes, objects) = row.unwrap_or((0, 0));
    Ok(Some(BucketUsage { bytes, objects }))
}

/// Objects the bucket holds; 0 while the table does not exist.
async fn count_objects(pool: &PgPool, bucket: Uuid) -> Result<i64, sqlx::Error> {
    if !has_table(pool, "objects").await? {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM objects WHERE bucket_id = $1")
        .bind(bucket)
        .fetch_one(pool)
        .await
}

/// The tenant-database side of a live bucket: its `bucket_usage` row exists
/// (so the data plane's quota reservations update a row that is there, and
/// usage reads 0 from the start), the rules of this generation are audited
/// once, and its usage is read.
async fn tenant_side(
    pool: &PgPool,
    record: &BucketRecord,
    resource: &str,
) -> Result<Option<BucketUsage>, sqlx::Error> {
    if has_table(pool, "bucket_usage").await? {
        sqlx::query(
            "INSERT INTO bucket_usage (bucket_id) VALUES ($1) ON CONFLICT (bucket_id) DO NOTHING",
        )
        .bind(record.id)
        .execute(pool)
        .await?;
    }
    announce(
        pool,
        &AuditEvent {
            action: "bucket.configured".into(),
            target: format!("bucket/{}", record.name),
            outcome: Outcome::Success,
            detail: json!({
                "bucketId": record.id,
                "resource": format!("{}/{resource}", record.namespace),
                "generation": record.generation,
                "public": record.public,
                "quotaBytes": record.quota_bytes,
                "quotaObjects": record.quota_objects,
                "maxObjectSize": record.max_object_size,
                "allowedContentTypes": record.allowed_content_types,
                "lifecycle": record.lifecycle,
                "compression": record.compression,
                "imageTransforms": record.image_transforms,
                "antivirusScan": record.antivirus_scan,
            }),
            dedupe_key: Some(format!(
                "bucket:configured:{}:g{}",
                record.id, record.generation
            )),
        },
        record,
    )
    .await?;
    read_usage(pool, record.id).await
}

/// Audits a bucket change and, the first time its dedupe key is seen,
/// announces it in the tenant's outbox (`bucket.configured` once per
/// generation, `bucket.deleted` once), in one transaction: the data
/// plane's dispatcher delivers it to the tenant's webhooks and drops what
/// its caches hold under the old rules. The event carries the audit's
/// action as its type and the audit detail, less the Kubernetes resource
/// name, as its data (docs/events.md).
async fn announce(
    pool: &PgPool,
    audit: &AuditEvent,
    record: &BucketRecord,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if audit::record(&mut *tx, audit).await? {
        let mut data = audit.detail.clone();
        if let Some(fields) = data.as_object_mut() {
            fields.remove("resource");
            fields.insert("bucket".into(), record.name.clone().into());
        }
        let payload = json!({
            "version": record.generation,
            "etag": null,
            "data": data,
        });
        sqlx::query!(
            "INSERT INTO outbox (event_id, topic, aggregate_id, payload) VALUES ($1, $2, $3, $4)",
            Uuid::now_v7(),
            audit.action,
            record.id.to_string(),
            payload
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// `describe()` of the backend with the bucket's prefix after its location:
/// `file:///root/t/…/b/…`, or `s3://bucket/t/…/b/… at <endpoint>` (the S3
/// backend names its endpoint after the URL).
fn location(backend: &dyn Backend, prefix: &str) -> String {
    let described = backend.describe();
    let (url, rest) = match described.split_once(' ') {
        Some((url, rest)) => (url, format!(" {rest}")),
        None => (described.as_str(), String::new()),
    };
    format!("{}/{prefix}{rest}", url.trim_end_matches('/'))
}

async fn apply(bucket: Arc<Bucket>, ctx: &BucketContext) -> Result<Action, Error> {
    let input = input(&bucket)?;
    let api: Api<Bucket> = Api::namespaced(ctx.base.client.clone(), &input.namespace);
    let generation = bucket.metadata.generation;
    let previous = bucket.status.as_ref();
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.bucket_id = Some(input.id.to_string());
    let spec = &bucket.spec;

    // 1. The tenant: it must exist and be Ready.
    let tenants: Api<Tenant> = Api::namespaced(ctx.base.client.clone(), &input.namespace);
    let tenant = tenants.get_opt(&spec.tenant_ref).await?;
    if let Some((reason, message)) = tenant_unready(&spec.tenant_ref, tenant.as_ref()) {
        for type_ in [TENANT_READY, READY] {
            set_condition(
                &mut status.conditions,
                condition(
                    type_,
                    ConditionStatus::False,
                    reason,
                    message.clone(),
                    generation,
                ),
            );
        }
        write_status(&api, &input.name, &status).await?;
        if ready_reason(previous) != Some((ConditionStatus::False, reason.to_string())) {
            event(ctx, &bucket, EventType::Normal, reason, message).await;
        }
        ctx.base.metrics.bucket_outcome("waiting");
        return Ok(Action::requeue(TENANT_WAIT));
    }
    let tenant = tenant.ok_or(Error::Incomplete)?;
    let tenant_id = tenant
        .uid()
        .and_then(|u| Uuid::parse_str(&u).ok())
        .ok_or(Error::Incomplete)?;
    set_condition(
        &mut status.conditions,
        condition(
            TENANT_READY,
            ConditionStatus::True,
            "TenantReady",
            format!("Tenant {:?} is Ready", spec.tenant_ref),
            generation,
        ),
    );

    // 2. The catalog entry: rules for the data plane. Names come from UIDs.
    let record = BucketRecord {
        id: input.id,
        tenant_id,
        name: spec.name.clone(),
        namespace: input.namespace.clone(),
        public: spec.public,
        quota_bytes: spec.quota.bytes,
        quota_objects: spec.quota.objects,
        max_object_size: spec.max_object_size,
        allowed_content_types: spec.allowed_content_types.clone(),
        lifecycle: serde_json::to_value(&spec.lifecycle).unwrap_or_else(|_| json!([])),
        compression: spec.compression,
        image_transforms: spec.image_transforms,
        antivirus_scan: spec.antivirus_scan,
        generation: generation.unwrap_or(0),
    };
    if let BucketClaim::NameTaken { holder } = ctx.base.catalog.claim_bucket(&record).await? {
        let holder_name = api
            .list(&ListParams::default())
            .await?
            .into_iter()
            .find(|b| b.uid().as_deref() == Some(holder.to_string().as_str()))
            .map(|b| format!("Bucket {}/{}", input.namespace, b.name_any()))
            .unwrap_or_else(|| format!("bucket {holder}"));
        let message = format!(
            "bucket name {:?} of tenant {:?} is already used by {holder_name}; this Bucket is not served. \
             spec.name is immutable: delete this Bucket and create one with another name",
            spec.name, spec.tenant_ref
        );
        for type_ in [NAME_CLAIMED, READY] {
            set_condition(
                &mut status.conditions,
                condition(
                    type_,
                    ConditionStatus::False,
                    "NameConflict",
                    message.clone(),
                    generation,
                ),
            );
        }
        write_status(&api, &input.name, &status).await?;
        if ready_reason(previous) != Some((ConditionStatus::False, "NameConflict".into())) {
            event(ctx, &bucket, EventType::Warning, "NameConflict", message).await;
        }
        ctx.base.metrics.bucket_outcome("conflict");
        return Ok(Action::requeue(NAME_WAIT));
    }
    set_condition(
        &mut status.conditions,
        condition(
            NAME_CLAIMED,
            ConditionStatus::True,
            "NameClaimed",
            format!(
                "bucket name {:?} is recorded for this Bucket in the catalog",
                spec.name
            ),
            generation,
        ),
    );
    let prefix = record.backend_prefix();
    status.backend_bucket = Some(location(ctx.backend.as_ref(), &prefix));

    // 3. The tenant database (usage) and 4. the backend, under the deadline.
    let deadline = ctx.base.reconcile_deadline;
    let usage = tokio::time::timeout(deadline, async {
        let pool = tenant_pool(ctx, tenant_id).await?;
        let result = tenant_side(&pool, &record, &input.name).await;
        pool.close().await;
        result.map_err(|e| Error::retry("TenantDatabaseUnavailable", e))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::Retry {
            reason: "DeadlineExceeded",
            message: format!("the tenant database did not answer within {deadline:?}"),
        })
    });
    match &usage {
        Ok(Some(u)) => {
            status.usage = Some(u.clone());
            set_condition(
                &mut status.conditions,
                condition(
                    USAGE_REPORTED,
                    ConditionStatus::True,
                    "UsageRead",
                    "Usage read from the tenant database".into(),
                    generation,
                ),
            );
        }
        Ok(None) => set_condition(
            &mut status.conditions,
            condition(
                USAGE_REPORTED,
                ConditionStatus::Unknown,
                "StorageSchemaMissing",
                "the tenant database has no bucket_usage table yet".into(),
                generation,
            ),
        ),
        // Usage is information, not service: the bucket stays Ready.
        Err(e) => set_condition(
            &mut status.conditions,
            condition(
                USAGE_REPORTED,
                ConditionStatus::False,
                e.reason(),
                e.to_string(),
                generation,
            ),
        ),
    }
    let backend = tokio::time::timeout(deadline, ctx.backend.check())
        .await
        .unwrap_or_else(|_| {
            Err(strata_storage::BackendError::Unavailable(format!(
                "no answer within {deadline:?}"
            )))
        });
    let retry = match &backend {
        Ok(()) => {
            set_condition(
                &mut status.conditions,
                condition(
                    BACKEND_READY,
                    ConditionStatus::True,
                    "BackendReachable",
                    format!(
                        "Bytes are stored at {}",
                        location(ctx.backend.as_ref(), &prefix)
                    ),
                    generation,
                ),
            );
            set_condition(
                &mut status.conditions,
                condition(
                    READY,
                    ConditionStatus::True,
                    "Ready",
                    format!("Bucket {:?} is served", spec.name),
                    generation,
                ),
            );
            None
        }
        Err(e) => {
            let message = format!("storage backend {}: {e}", ctx.backend.describe());
            for type_ in [BACKEND_READY, READY] {
                set_condition(
                    &mut status.conditions,
                    condition(
                        type_,
                        ConditionStatus::False,
                        "BackendUnavailable",
                        message.clone(),
                        generation,
                    ),
                );
            }
            Some(ctx.backoff.next(&input.id.to_string()))
        }
    };
    write_status(&api, &input.name, &status).await?;
    match retry {
        None => {
            if ready_reason(previous).map(|(s, _)| s) != Some(ConditionStatus::True) {
                event(
                    ctx,
                    &bucket,
                    EventType::Normal,
                    "Ready",
                    format!(
                        "Bucket {:?} is ready at {}",
                        spec.name,
                        location(ctx.backend.as_ref(), &prefix)
                    ),
                )
                .await;
            }
            ctx.backoff.reset(&input.id.to_string());
            ctx.base.metrics.bucket_outcome("ready");
            Ok(Action::requeue(ctx.usage_refresh))
        }
        Some(delay) => {
            if ready_reason(previous) != Some((ConditionStatus::False, "BackendUnavailable".into()))
            {
                event(
                    ctx,
                    &bucket,
                    EventType::Warning,
                    "BackendUnavailable",
                    format!("storage backend {} is unavailable", ctx.backend.describe()),
                )
                .await;
            }
            ctx.base.metrics.bucket_outcome("retry");
            Ok(Action::requeue(delay))
        }
    }
}

/// The deletion policy that applies to a bucket: the Tenant's current spec
/// when it exists, else the policy the catalog recorded for the tenant.
fn policy_of(tenant: Option<&Tenant>, recorded: Option<&str>) -> &'static str {
    match tenant.map(|t| t.spec.deletion_policy) {
        Some(strata_api::DeletionPolicy::Delete) => "Delete",
        Some(strata_api::DeletionPolicy::Retain) => "Retain",
        None if recorded == Some("Delete") => "Delete",
        None => "Retain",
    }
}

async fn cleanup(bucket: Arc<Bucket>, ctx: &BucketContext) -> Result<Action, Error> {
    let input = input(&bucket)?;
    let result = release(&bucket, &input, ctx).await;
    match result {
        Ok(note) => {
            event(ctx, &bucket, EventType::Normal, "Released", note).await;
            ctx.backoff.reset(&input.id.to_string());
            ctx.base.metrics.bucket_outcome("deleted");
            Ok(Action::await_change())
        }
        Err(e) => {
            // The finalizer stays until the release succeeds; the status and
            // an Event say why.
            let api: Api<Bucket> = Api::namespaced(ctx.base.client.clone(), &input.namespace);
            let previous = bucket.status.as_ref();
            let mut status = previous.cloned().unwrap_or_default();
            let message = match &e {
                Error::Waiting { message, .. } => message.clone(),
                other => format!("deletion is waiting: {other}"),
            };
            set_condition(
                &mut status.conditions,
                condition(
                    READY,
                    ConditionStatus::False,
                    e.reason(),
                    message.clone(),
                    bucket.metadata.generation,
                ),
            );
            let changed = strata_api::condition::find(
                previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]),
                READY,
            )
            .is_none_or(|c| c.reason != e.reason() || c.message != message);
            if let Err(err) = write_status(&api, &input.name, &status).await {
                tracing::debug!(error = %err, "cannot write deletion status");
            }
            if changed {
                event(ctx, &bucket, EventType::Warning, e.reason(), message).await;
            }
            Err(e)
        }
    }
}

/// Applies the deletion policy; the note says what happened.
async fn release(bucket: &Bucket, input: &Input, ctx: &BucketContext) -> Result<String, Error> {
    let catalog = &ctx.base.catalog;
    let Some((record, state)) = catalog.bucket(input.id).await? else {
        // Never catalogued (tenant never Ready, name conflict), or a previous
        // run finished everything but releasing the finalizer.
        return Ok("No catalog entry; nothing to clean up".into());
    };
    let tenants: Api<Tenant> = Api::namespaced(ctx.base.client.clone(), &input.namespace);
    // Only the Tenant this entry belongs to counts (not a namesake created later).
    let tenant = tenants
        .get_opt(&bucket.spec.tenant_ref)
        .await?
        .filter(|t| t.uid().as_deref() == Some(record.tenant_id.to_string().as_str()));
    let brief = catalog.tenant_brief(record.tenant_id).await?;
    let policy = policy_of(
        tenant.as_ref(),
        brief.as_ref().map(|b| b.deletion_policy.as_str()),
    );
    let location = location(ctx.backend.as_ref(), &record.backend_prefix());
    let deadline = ctx.base.reconcile_deadline;

    if policy == "Retain" {
        // Bytes and metadata stay; only the entry (what the data plane
        // serves from) goes.
        let counted = tokio::time::timeout(deadline, async {
            let pool = tenant_pool(ctx, record.tenant_id).await?;
            let result = async {
                let usage = read_usage(&pool, record.id).await?;
                audit::record(
                    &pool,
                    &AuditEvent {
                        action: "bucket.retained".into(),
                        target: format!("bucket/{}", record.name),
                        outcome: Outcome::Success,
                        detail: json!({ "bucketId": record.id, "location": location, "usage": usage }),
                        dedupe_key: Some(format!("bucket:retained:{}", record.id)),
                    },
                )
                .await?;
                Ok::<_, sqlx::Error>(usage)
            }
            .await;
            pool.close().await;
            result.map_err(|e| Error::retry("TenantDatabaseUnavailable", e))
        })
        .await;
        let usage = match counted {
            Ok(Ok(usage)) => usage,
            // The tenant database may already be gone or unreachable: the
            // entry is removed all the same, so the name is free again.
            Ok(Err(e)) => {
                tracing::info!(error = %e, "retaining bucket without reading its usage");
                None
            }
            Err(_) => None,
        };
        catalog.delete_bucket(record.id).await?;
        let kept = match usage {
            Some(u) => format!("{} objects ({} bytes)", u.objects, u.bytes),
            None => "its objects".into(),
        };
        return Ok(format!(
            "Tenant deletion policy is Retain: catalog entry removed; {kept} are kept \
             (metadata in the tenant database, bytes at {location})"
        ));
    }

    // Delete.
    let tenant_deleting = tenant
        .as_ref()
        .is_some_and(|t| t.metadata.deletion_timestamp.is_some());
    let forced = bucket
        .annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v == "true")
        || tenant_deleting;
    let pool = tokio::time::timeout(deadline, tenant_pool(ctx, record.tenant_id))
        .await
        .map_err(|_| Error::retry("DeadlineExceeded", "tenant database did not answer"))??;
    let result = tokio::time::timeout(
        deadline,
        empty_and_remove(ctx, &pool, &record, state, forced, tenant_deleting),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::Retry {
            reason: "DeadlineExceeded",
            message: format!(
                "emptying did not finish within {deadline:?}; it continues where it stopped"
            ),
        })
    });
    pool.close().await;
    let removed = result?;
    Ok(format!(
        "Tenant deletion policy is Delete: removed {} objects, {} uploads and {} blobs at {location}; catalog entry removed",
        removed.objects, removed.uploads, removed.blobs
    ))
}

#[derive(Debug, Default)]
struct Removed {
    objects: u64,
    uploads: u64,
    blobs: u64,
}

/// `Delete`: refuses a non-empty bucket unless forced; then marks the entry
/// `deleting` (the data plane refuses writes from then on), removes every
/// metadata row and every blob under the prefix in bounded batches, and
/// finally the entry. Each part is idempotent and the `deleting` mark is the
/// commit point, so a run that stops anywhere converges when repeated.
async fn empty_and_remove(
    ctx: &BucketContext,
    pool: &PgPool,
    record: &BucketRecord,
    state: BucketState,
    forced: bool,
    tenant_deleting: bool,
) -> Result<Removed, Error> {
    let db = |e: sqlx::Error| Error::retry("TenantDatabaseUnavailable", e);
    if state == BucketState::Ready {
        let objects = count_objects(pool, record.id).await.map_err(db)?;
        if objects > 0 && !forced {
            return Err(Error::Waiting {
                reason: "BucketNotEmpty",
                message: format!(
                    "bucket {:?} holds {objects} object{}; the tenant's deletion policy is Delete, \
                     so they would be lost. Delete them, or annotate the Bucket {FORCE_DELETE_ANNOTATION}=\"true\" \
                     to delete them with it",
                    record.name,
                    if objects == 1 { "" } else { "s" }
                ),
                after: NOT_EMPTY_RECHECK,
            });
        }
        ctx.base
            .catalog
            .set_bucket_state(record.id, BucketState::Deleting)
            .await?;
        audit::record(
            pool,
            &AuditEvent {
                action: "bucket.deleting".into(),
                target: format!("bucket/{}", record.name),
                outcome: Outcome::Success,
                detail: json!({
                    "bucketId": record.id,
                    "objects": objects,
                    "forced": forced,
                    "tenantDeleting": tenant_deleting,
                }),
                dedupe_key: Some(format!("bucket:deleting:{}", record.id)),
            },
        )
        .await
        .map_err(db)?;
    }

    let mut removed = Removed::default();
    let mut emptied = false;
    for _ in 0..EMPTY_ROUNDS {
        for (table, key) in TENANT_STORAGE_TABLES {
            let n = delete_rows(pool, table, key, record.id).await.map_err(db)?;
            match *table {
                "objects" => removed.objects += n,
                "uploads" => removed.uploads += n,
                _ => {}
            }
        }
        removed.blobs += delete_blobs(ctx.backend.as_ref(), &record.backend_prefix()).await?;
        // An upload that began before the `deleting` mark reached the data
        // plane may have committed meanwhile: go round again until nothing is left.
        if count_objects(pool, record.id).await.map_err(db)? == 0
            && ctx
                .backend
                .list(&format!("{}/", record.backend_prefix()), None, 1)
                .await
                .map_err(|e| Error::retry("BackendUnavailable", e))?
                .is_empty()
        {
            emptied = true;
            break;
        }
    }
    if !emptied {
        return Err(Error::retry(
            "BucketStillReceiving",
            "objects kept appearing while the bucket was emptied; trying again",
        ));
    }
    drop_usage(pool, record.id).await.map_err(db)?;
    announce(
        pool,
        &AuditEvent {
            action: "bucket.deleted".into(),
            target: format!("bucket/{}", record.name),
            outcome: Outcome::Success,
            detail: json!({
                "bucketId": record.id,
                "objectsRemoved": removed.objects,
                "uploadsRemoved": removed.uploads,
                "blobsRemoved": removed.blobs,
            }),
            dedupe_key: Some(format!("bucket:deleted:{}", record.id)),
        },
        record,
    )
    .await
    .map_err(db)?;
    ctx.base.catalog.delete_bucket(record.id).await?;
    Ok(removed)
}

/// Deletes a bucket's rows of one storage table in batches of [`BATCH`];
/// a table that does not exist has none.
async fn delete_rows(
    pool: &PgPool,
    table: &str,
    key: &str,
    bucket: Uuid,
) -> Result<u64, sqlx::Error> {
    if !has_table(pool, table).await? {
        return Ok(0);
    }
    // `table` and `key` come from TENANT_STORAGE_TABLES, never from input.
    let sql = format!(
        "DELETE FROM public.{table} WHERE bucket_id = $1 AND ({key}) IN (
             SELECT {key} FROM public.{table} WHERE bucket_id = $1 LIMIT $2)"
    );
    let mut total = 0;
    loop {
        let n = sqlx::query(&sql)
            .bind(bucket)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Removes the bucket's `bucket_usage` row and takes what it counted
/// (committed and reserved) off the tenant's total (the nil-UUID row), in
/// one transaction, locking the tenant row first as the data plane does.
/// Run once nothing of the bucket is left, so the tenant's quota is freed
/// exactly once: a repeat finds no row and changes nothing.
async fn drop_usage(pool: &PgPool, bucket: Uuid) -> Result<(), sqlx::Error> {
    if !has_table(pool, USAGE_TABLE).await? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM bucket_usage WHERE bucket_id = $1 FOR UPDATE")
        .bind(Uuid::nil())
        .execute(&mut *tx)
        .await?;
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "DELETE FROM bucket_usage WHERE bucket_id = $1
         RETURNING bytes, objects, reserved_bytes, reserved_objects",
    )
    .bind(bucket)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((bytes, objects, reserved_bytes, reserved_objects)) = row {
        sqlx::query(
            "UPDATE bucket_usage
                SET bytes = greatest(bytes - $2, 0),
                    objects = greatest(objects - $3, 0),
                    reserved_bytes = greatest(reserved_bytes - $4, 0),
                    reserved_objects = greatest(reserved_objects - $5, 0),
                    updated_at = now()
              WHERE bucket_id = $1",
        )
        .bind(Uuid::nil())
        .bind(bytes)
        .bind(objects)
        .bind(reserved_bytes)
        .bind(reserved_objects)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Deletes every blob under the bucket's prefix, a listing page at a time.
async fn delete_blobs(backend: &dyn Backend, prefix: &str) -> Result<u64, Error> {
    let unavailable = |e| Error::retry("BackendUnavailable", e);
    // The trailing slash keeps the listing inside this bucket's prefix.
    let prefix = format!("{prefix}/");
    let mut after: Option<BlobKey> = None;
    let mut total = 0;
    loop {
        let page = backend
            .list(&prefix, after.as_ref(), BATCH as usize)
            .await
            .map_err(unavailable)?;
        for blob in &page {
            backend.delete(&blob.key).await.map_err(unavailable)?;
        }
        total += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == BATCH as usize => after = Some(last.key.clone()),
            _ => return Ok(total),
        }
    }
}

pub fn error_policy(bucket: Arc<Bucket>, error: &Error, ctx: Arc<BucketContext>) -> Action {
    if let Error::Waiting { after, .. } = error {
        return Action::requeue(*after);
    }
    let delay = ctx.backoff.next(&bucket.uid().unwrap_or_default());
    tracing::warn!(bucket = %bucket.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The Buckets of a tenant (same namespace, `spec.tenantRef`).
fn buckets_of<'a>(
    store: &'a Store<Bucket>,
    namespace: &'a str,
    tenant: &'a str,
) -> impl Iterator<Item = Arc<Bucket>> + 'a {
    store
        .state()
        .into_iter()
        .filter(move |b| b.namespace().as_deref() == Some(namespace) && b.spec.tenant_ref == tenant)
}

/// Called while a Tenant is being deleted: asks for the deletion of each of
/// its Buckets (each then follows the tenant's policy) and returns the names
/// of those that still exist. The tenant's database must stay until this is
/// empty: bucket deletion works in it.
pub async fn remove_tenant_buckets(
    client: &kube::Client,
    namespace: &str,
    tenant: &str,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<Bucket> = Api::namespaced(client.clone(), namespace);
    let mut remaining = Vec::new();
    for b in api.list(&ListParams::default()).await? {
        if b.spec.tenant_ref != tenant {
            continue;
        }
        if b.metadata.deletion_timestamp.is_none() {
            match api.delete(&b.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
        }
        remaining.push(b.name_any());
    }
    Ok(remaining)
}

/// Runs the Bucket controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<BucketContext>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.base.client.clone();
    let (buckets, tenants): (Api<Bucket>, Api<Tenant>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    // Reconcile on spec, finalizer and annotation (force-delete) changes, not
    // on our own status writes; usage is refreshed by requeueing.
    let (reader, writer) = reflector::store();
    let stream = watcher(buckets, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers)
                .combine(predicates::annotations),
            Default::default(),
        );
    let store = reader.clone();
    Controller::for_stream(stream, reader)
        // A Tenant that appears, becomes Ready or starts deleting wakes its buckets.
        .watches(
            tenants,
            watcher::Config::default(),
            move |tenant: Tenant| {
                let ns = tenant.namespace().unwrap_or_default();
                let name = tenant.name_any();
                buckets_of(&store, &ns, &name)
                    .map(|b| ObjectRef::from_obj(b.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "bucket reconcile error");
            }
        })
        .await;
}

/// The backend location a bucket's bytes have (for tests and tooling).
pub fn bucket_location(backend: &dyn Backend, tenant: Uuid, bucket: Uuid) -> String {
    location(backend, &backend_prefix(tenant, bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_prefers_the_live_tenant_then_the_catalog() {
        assert_eq!(policy_of(None, Some("Delete")), "Delete");
        assert_eq!(policy_of(None, Some("Retain")), "Retain");
        assert_eq!(policy_of(None, None), "Retain");
    }

    #[test]
    fn missing_tenant_waits_with_a_reason() {
        let (reason, message) = tenant_unready("acme", None).expect("unready");
        assert_eq!(reason, "TenantNotFound");
        assert!(message.contains("acme"));
    }

    #[test]
    fn storage_tables_are_the_migrations_in_dependency_order() {
        let sql = strata_db::migrations::TENANT
            .iter()
            .map(|m| m.sql.as_ref())
            .collect::<Vec<_>>()
            .join("\n");
        let names: Vec<&str> = TENANT_STORAGE_TABLES.iter().map(|(t, _)| *t).collect();
        for (table, key) in TENANT_STORAGE_TABLES.iter().chain([&(USAGE_TABLE, "")]) {
            let create = format!("CREATE TABLE {table} (");
            let start = sql
                .find(&create)
                .unwrap_or_else(|| panic!("no table {table} in the tenant migrations"));
            let body = &sql[start..];
            let body = &body[..body.find(")$sql$").unwrap_or(body.len())];
            assert!(body.contains("bucket_id "), "{table} has bucket_id");
            if !key.is_empty() {
                let pk = format!("PRIMARY KEY (bucket_id, {key})");
                assert!(body.contains(&pk), "{table}: {pk}");
            }
        }
        let pos = |t: &str| names.iter().position(|n| *n == t).expect("listed");
        assert!(pos("upload_parts") < pos("uploads"));
        assert!(
            pos("objects") == names.len() - 1,
            "objects last, after what points at them"
        );
    }
}
