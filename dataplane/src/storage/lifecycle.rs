//! The lifecycle worker: each bucket's rules (`catalog.buckets.lifecycle`)
//! applied from our metadata, so it works the same on every backend:
//! objects under a prefix older than `expireAfterDays` are deleted,
//! multipart uploads older than `abortIncompleteMultipartUploadAfterDays`
//! are aborted.
//!
//! Bounded: at most `batch` objects and uploads per rule and pass (the
//! next pass continues). One worker per bucket at a time across replicas:
//! a session advisory lock on a connection that is closed afterwards
//! (never returned to the pool holding the lock; a dead process's lock
//! goes with its connection). Idempotent: each deletion re-checks the row
//! under its lock.

use sqlx::PgPool;
use uuid::Uuid;

use super::StorageState;
use super::buckets::BucketInfo;
use super::{multipart, objects, store};
use crate::app::AppState;
use crate::http::problem::ApiError;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleStats {
    pub expired: usize,
    pub aborted: usize,
    /// Buckets skipped because another worker held them.
    pub busy: usize,
}

/// Advisory lock keys: a namespace and the bucket.
fn lock_keys(bucket: Uuid) -> (i32, i32) {
    let bytes = bucket.as_bytes();
    let fold = bytes.chunks(4).fold(0u32, |acc, c| {
        acc ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]])
    });
    (0x5354_4c43, fold as i32)
}

/// Applies `bucket`'s rules once, if no other worker is on it.
pub async fn run_bucket(
    state: &StorageState,
    pool: &PgPool,
    bucket: &BucketInfo,
) -> Result<LifecycleStats, ApiError> {
    let mut stats = LifecycleStats::default();
    if bucket.lifecycle.is_empty() {
        return Ok(stats);
    }
    let mut guard = pool.acquire().await?;
    // Closed, not returned: the session lock cannot outlive this pass.
    guard.close_on_drop();
    let (ns, key) = lock_keys(bucket.id);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(ns)
        .bind(key)
        .fetch_one(&mut *guard)
        .await?;
    if !locked {
        stats.busy = 1;
        return Ok(stats);
    }
    let batch = state.settings.batch;
    for rule in &bucket.lifecycle {
        if let Some(days) = rule.expire_after_days.filter(|d| *d >= 0) {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT key FROM objects
                  WHERE bucket_id = $1 AND starts_with(key, $2)
                    AND modified_at < now() - make_interval(days => $3::int)
                  ORDER BY modified_at LIMIT $4",
            )
            .bind(bucket.id)
            .bind(&rule.prefix)
            .bind(days as i32)
            .bind(batch)
            .fetch_all(pool)
            .await?;
            for key in keys {
                if expire(state, pool, bucket, &key, days).await? {
                    stats.expired += 1;
                }
            }
        }
        if let Some(days) = rule
            .abort_incomplete_multipart_upload_after_days
            .filter(|d| *d >= 0)
        {
            for upload in multipart::stale_uploads(pool, bucket, &rule.prefix, days, batch).await? {
                match multipart::abort_upload(state, pool, bucket, upload).await {
                    Ok(()) => stats.aborted += 1,
                    // Completed or aborted meanwhile.
                    Err(ApiError::NotFound) => {}
                    Err(error) => return Err(error),
                }
            }
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(ns)
        .bind(key)
        .execute(&mut *guard)
        .await?;
    Ok(stats)
}

/// Deletes one object if it is still older than `days` (re-checked under
/// the row lock: a fresh overwrite survives).
async fn expire(
    state: &StorageState,
    pool: &PgPool,
    bucket: &BucketInfo,
    key: &str,
    days: i64,
) -> Result<bool, ApiError> {
    let mut tx = pool.begin().await?;
    let Some(row) = store::get(&mut tx, bucket.id, key, true).await? else {
        return Ok(false);
    };
    let still_old: bool = sqlx::query_scalar(
        "SELECT modified_at < now() - make_interval(days => $3::int)
           FROM objects WHERE bucket_id = $1 AND key = $2",
    )
    .bind(bucket.id)
    .bind(key)
    .bind(days as i32)
    .fetch_one(&mut *tx)
    .await?;
    if !still_old {
        return Ok(false);
    }
    objects::remove_locked(state, &mut tx, bucket, &row).await?;
    tx.commit().await?;
    objects::retire_blobs(state, pool, bucket, &row.blobs).await;
    Ok(true)
}

/// One pass over every bucket with rules.
pub async fn run_once(app: &AppState) -> Result<LifecycleStats, ApiError> {
    let state = &app.storage;
    let mut total = LifecycleStats::default();
    let tenants: std::collections::HashMap<Uuid, String> = state
        .buckets
        .tenants_with_buckets()
        .await?
        .into_iter()
        .collect();
    for bucket in state.buckets.all().await? {
        if bucket.lifecycle.is_empty() {
            continue;
        }
        let Some(name) = tenants.get(&bucket.tenant_id) else {
            continue;
        };
        let Ok(handle) = app.tenancy.open(name).await else {
            continue;
        };
        match run_bucket(state, &handle.pool, &bucket).await {
            Ok(stats) => {
                total.expired += stats.expired;
                total.aborted += stats.aborted;
                total.busy += stats.busy;
            }
            Err(error) => tracing::warn!(bucket = %bucket.id, %error, "lifecycle pass failed"),
        }
    }
    Ok(total)
}
