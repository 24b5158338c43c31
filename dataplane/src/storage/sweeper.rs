//! The sweeper: what interrupted writes leave behind is removed here.
//!
//! - Quota reservations whose lease ran out (their writer died or hung):
//!   released, so usage equals what is stored.
//! - Blob intents that are due: a blob recorded before its first byte and
//!   never referenced by a committed row (a crash mid-upload), or a blob a
//!   committed overwrite or delete replaced whose deletion after the
//!   commit did not happen. The blob is deleted, then the intent.
//! - The backend's own leftovers of interrupted puts (temp files, S3
//!   multipart uploads) older than twice the lease.
//!
//! Safe with several replicas: intents are claimed `FOR UPDATE SKIP
//! LOCKED`, reservations are released under the usage locks (each once).
//! Blob keys are checked against the bucket's prefix from the catalog and
//! against the rows that might still reference them before anything is
//! deleted: the tenant's login can write these tables.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use strata_storage::BlobKey;
use uuid::Uuid;

use super::StorageState;
use super::buckets::BucketInfo;
use super::quota;
use crate::app::AppState;
use crate::http::problem::ApiError;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    pub reservations: usize,
    pub blobs: usize,
}

/// One pass over one tenant's database.
pub async fn sweep_tenant(
    state: &StorageState,
    pool: &PgPool,
    buckets: &HashMap<Uuid, BucketInfo>,
) -> Result<SweepStats, ApiError> {
    let batch = state.settings.batch;
    let reservations = quota::release_expired(pool, batch).await?;
    let mut tx = pool.begin().await?;
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT bucket_id, blob_key FROM blob_intents WHERE expires_at < now()
          ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut blobs = 0;
    for (bucket_id, key) in due {
        let referenced: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM objects WHERE bucket_id = $1
                              AND blobs @> jsonb_build_array(jsonb_build_object('key', $2::text)))
                 OR EXISTS (SELECT 1 FROM upload_parts WHERE bucket_id = $1 AND blob_key = $2)",
        )
        .bind(bucket_id)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        let owned = buckets.get(&bucket_id).is_some_and(|b| b.owns_blob(&key));
        if owned && !referenced {
            if let Err(error) = state
                .backend
                .delete(&BlobKey::from_stored(key.clone()))
                .await
            {
                // Kept: the next pass retries.
                tracing::warn!(%error, "sweeper: deleting a blob");
                continue;
            }
            blobs += 1;
        }
        // Referenced (a commit won after all) or not ours: the intent goes,
        // the blob stays.
        sqlx::query("DELETE FROM blob_intents WHERE bucket_id = $1 AND blob_key = $2")
            .bind(bucket_id)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(SweepStats {
        reservations,
        blobs,
    })
}

/// One pass over every tenant that has buckets.
pub async fn sweep_once(app: &AppState) -> Result<SweepStats, ApiError> {
    let state = &app.storage;
    let mut by_tenant: HashMap<Uuid, HashMap<Uuid, BucketInfo>> = HashMap::new();
    for bucket in state.buckets.all().await? {
        by_tenant
            .entry(bucket.tenant_id)
            .or_default()
            .insert(bucket.id, bucket);
    }
    let mut total = SweepStats::default();
    for (tenant_id, name) in state.buckets.tenants_with_buckets().await? {
        let Ok(handle) = app.tenancy.open(&name).await else {
            continue;
        };
        let buckets = by_tenant.remove(&tenant_id).unwrap_or_default();
        match sweep_tenant(state, &handle.pool, &buckets).await {
            Ok(stats) => {
                total.reservations += stats.reservations;
                total.blobs += stats.blobs;
            }
            Err(error) => tracing::warn!(tenant = name, %error, "sweeper pass failed"),
        }
    }
    match state.backend.sweep_partial(state.settings.lease * 2).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "sweeper: removed partial uploads in the backend"),
        Err(error) => tracing::warn!(%error, "sweeper: backend partial uploads"),
    }
    if total != SweepStats::default() {
        tracing::info!(
            reservations = total.reservations,
            blobs = total.blobs,
            "sweeper pass"
        );
    }
    Ok(total)
}

/// Runs the sweeper and the lifecycle worker in the background, each at
/// its interval (0 disables it).
pub fn spawn_workers(app: AppState) {
    let settings = app.storage.settings.clone();
    if !settings.sweep_interval.is_zero() {
        let app = app.clone();
        tokio::spawn(every(settings.sweep_interval, move || {
            let app = app.clone();
            async move {
                if let Err(error) = sweep_once(&app).await {
                    tracing::warn!(%error, "sweeper");
                }
            }
        }));
    }
    if !settings.lifecycle_interval.is_zero() {
        tokio::spawn(every(settings.lifecycle_interval, move || {
            let app = app.clone();
            async move {
                if let Err(error) = super::lifecycle::run_once(&app).await {
                    tracing::warn!(%error, "lifecycle");
                }
            }
        }));
    }
}

async fn every<F, Fut>(interval: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        f().await;
    }
}
