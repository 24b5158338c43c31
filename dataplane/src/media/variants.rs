//! Rendered variants: one blob per (source version, canonical parameters)
//! under `<bucket prefix>/v/<variant>`, where `<variant>` is the hex
//! SHA-256 of the source's key, its strong ETag and the canonical string
//! — so a changed source can never serve an old variant, whatever the
//! timing of the cleanup, and two objects with the same bytes never share
//! a blob. A row in `variants` records each one (size counted in the
//! bucket's and the tenant's usage).
//!
//! Stale variants (their source replaced or deleted) are removed through
//! the outbox: [`StaleVariants`] is a dispatcher sink that, for each
//! `object.replaced` / `object.deleted` event, deletes the rows of that
//! source whose ETag is no longer the object's, gives their bytes back to
//! the usage, marks their blobs for deletion (due blob intents) in the
//! batch's transaction, and deletes the blobs after the commit; the
//! storage sweeper deletes any blob that step missed. Until then a stale
//! variant is unreachable (its id has the old ETag in it), so the delay
//! costs space, never correctness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use strata_storage::BlobKey;
use uuid::Uuid;

use crate::events::envelope::OutboxRow;
use crate::events::sinks::{AfterCommit, Sink};
use crate::http::problem::ApiError;
use crate::storage::StorageState;
use crate::storage::buckets::BucketInfo;
use crate::storage::store::BlobRef;
use crate::tenancy::TenantInfo;

/// A stored variant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VariantRow {
    pub blob_key: String,
    pub size: i64,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
}

/// The variant id of (source key, source ETag, canonical parameters).
/// The key is part of it: two objects with the same bytes (the same ETag)
/// must not share a blob, whose removal with one source would take the
/// other's variant (and whose flight would record only one of them).
pub fn variant_id(source_key: &str, source_etag: &str, canonical: &str) -> String {
    let mut hash = Sha256::new();
    hash.update((source_key.len() as u64).to_be_bytes());
    hash.update(source_key.as_bytes());
    hash.update((source_etag.len() as u64).to_be_bytes());
    hash.update(source_etag.as_bytes());
    hash.update(canonical.as_bytes());
    hex::encode(hash.finalize())
}

/// `<prefix>/v/<variant>`.
pub fn blob_key(bucket: &BucketInfo, variant: &str) -> BlobKey {
    BlobKey::from_segments(
        bucket
            .backend_prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .chain(["v", variant]),
    )
}

pub async fn find(
    pool: &PgPool,
    bucket: Uuid,
    source_key: &str,
    variant: &str,
) -> Result<Option<VariantRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT blob_key, size, content_type, width, height FROM variants
          WHERE bucket_id = $1 AND source_key = $2 AND variant = $3",
    )
    .bind(bucket)
    .bind(source_key)
    .bind(variant)
    .fetch_optional(pool)
    .await?)
}

/// What [`record`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The row is in and its bytes counted.
    Stored,
    /// Someone else recorded the same variant first (same bytes).
    AlreadyThere,
    /// The source changed meanwhile, or the quota is full: the blob must
    /// go.
    Discard,
}

/// Records a stored variant if its source is still the version it was
/// rendered from and the usage fits. The object row is share-locked, so a
/// write that changes the source waits for this commit; its event, and so
/// [`StaleVariants`], comes after and sees this row.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    pool: &PgPool,
    bucket: &BucketInfo,
    source_key: &str,
    source_etag: &str,
    variant: &str,
    params: &str,
    blob: &BlobKey,
    rendered: &super::transform::Rendered,
) -> Result<Recorded, ApiError> {
    let mut tx = pool.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT etag FROM objects WHERE bucket_id = $1 AND key = $2 FOR SHARE")
            .bind(bucket.id)
            .bind(source_key)
            .fetch_optional(&mut *tx)
            .await?;
    if current.as_deref() != Some(source_etag) {
        return Ok(Recorded::Discard);
    }
    let size = rendered.bytes.len() as i64;
    let inserted = sqlx::query(
        "INSERT INTO variants (bucket_id, source_key, variant, source_etag, params, blob_key,
                               size, content_type, width, height)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (bucket_id, source_key, variant) DO NOTHING",
    )
    .bind(bucket.id)
    .bind(source_key)
    .bind(variant)
    .bind(source_etag)
    .bind(params)
    .bind(blob.as_str())
    .bind(size)
    .bind(rendered.content_type)
    .bind(rendered.width as i32)
    .bind(rendered.height as i32)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        crate::storage::upload::clear_intent(&mut *tx, bucket.id, blob.as_str()).await?;
        tx.commit().await?;
        return Ok(Recorded::AlreadyThere);
    }
    // Variants count against storage use; a full quota means "serve it,
    // but do not keep it".
    if crate::storage::quota::adjust(&mut tx, bucket, size, 0, true)
        .await
        .is_err()
    {
        return Ok(Recorded::Discard);
    }
    crate::storage::upload::clear_intent(&mut *tx, bucket.id, blob.as_str()).await?;
    tx.commit().await?;
    Ok(Recorded::Stored)
}

/// Outbox event types after which a source's variants may be stale.
const SOURCE_CHANGED: [&str; 2] = ["object.replaced", "object.deleted"];

/// Deletes the variants of `keys` in `bucket` whose source ETag is not the
/// object's current one (all of them for a deleted object), gives their
/// bytes back to the usage and marks their blobs for deletion (due
/// intents); returns the blobs. Idempotent: a second run finds nothing.
pub async fn remove_stale(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    keys: &[String],
) -> Result<Vec<BlobRef>, ApiError> {
    // A variant recorded concurrently for the current ETag is kept;
    // `record` share-locks the object row, so one for an older ETag has
    // committed before the write whose event brought us here.
    let removed: Vec<(String, i64)> = sqlx::query_as(
        "DELETE FROM variants v
          WHERE v.bucket_id = $1 AND v.source_key = ANY($2)
            AND v.source_etag IS DISTINCT FROM
                (SELECT o.etag FROM objects o WHERE o.bucket_id = $1 AND o.key = v.source_key)
         RETURNING v.blob_key, v.size",
    )
    .bind(bucket.id)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    if removed.is_empty() {
        return Ok(Vec::new());
    }
    let bytes: i64 = removed.iter().map(|(_, size)| size).sum();
    crate::storage::quota::adjust(conn, bucket, -bytes, 0, false).await?;
    let blobs: Vec<BlobRef> = removed
        .into_iter()
        .filter(|(key, _)| bucket.owns_blob(key))
        .map(|(key, size)| BlobRef { key, size })
        .collect();
    crate::storage::store::doom_blobs(conn, bucket.id, &blobs, std::time::Duration::ZERO).await?;
    Ok(blobs)
}

/// The dispatcher sink that removes stale variants (see the module
/// documentation); `main` adds it to the dispatcher.
pub struct StaleVariants {
    storage: StorageState,
}

impl StaleVariants {
    pub fn new(storage: StorageState) -> Arc<Self> {
        Arc::new(Self { storage })
    }
}

#[async_trait::async_trait]
impl Sink for StaleVariants {
    fn name(&self) -> &'static str {
        "variants"
    }

    fn wants(&self, rows: &[OutboxRow]) -> bool {
        rows.iter()
            .any(|row| SOURCE_CHANGED.contains(&row.topic.as_str()))
    }

    async fn apply(
        &self,
        tenant: &TenantInfo,
        pool: &PgPool,
        tx: &mut PgConnection,
        rows: &[OutboxRow],
    ) -> anyhow::Result<Option<AfterCommit>> {
        // (bucket id, bucket name) → source keys; the aggregate is
        // `<bucket id>/<key>`, the payload's data names the bucket.
        let mut sources: BTreeMap<(Uuid, String), BTreeSet<String>> = BTreeMap::new();
        for row in rows {
            if !SOURCE_CHANGED.contains(&row.topic.as_str()) {
                continue;
            }
            let Some((bucket, key)) = row.aggregate_id.split_once('/') else {
                continue;
            };
            let (Ok(bucket), Some(name)) = (
                Uuid::parse_str(bucket),
                row.payload["data"]["bucket"].as_str(),
            ) else {
                continue;
            };
            sources
                .entry((bucket, name.to_string()))
                .or_default()
                .insert(key.to_string());
        }
        let mut doomed = Vec::new();
        for ((id, name), keys) in sources {
            // A bucket that is gone, or whose name now belongs to another
            // bucket, took its variants with it (bucket deletion).
            let bucket = match self.storage.buckets.resolve(tenant.id, &name).await? {
                Some(bucket) if bucket.id == id => bucket,
                _ => continue,
            };
            let keys: Vec<String> = keys.into_iter().collect();
            let blobs = remove_stale(tx, &bucket, &keys).await?;
            if !blobs.is_empty() {
                doomed.push((bucket, blobs));
            }
        }
        if doomed.is_empty() {
            return Ok(None);
        }
        let storage = self.storage.clone();
        let pool = pool.clone();
        Ok(Some(
            async move {
                for (bucket, blobs) in doomed {
                    crate::storage::objects::discard_blobs(&storage, &pool, &bucket, &blobs).await;
                }
            }
            .boxed(),
        ))
    }
}

/// What a bucket's blobs hold: objects as stored (compressed where they
/// are) plus variants — the "storage use" beside the quota's byte count.
pub async fn stored_bytes(pool: &PgPool, bucket: Uuid) -> Result<i64, ApiError> {
    let (objects, variants): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(coalesce(stored_size, size)), 0)::bigint
                   FROM objects WHERE bucket_id = $1),
                (SELECT coalesce(sum(size), 0)::bigint FROM variants WHERE bucket_id = $1)",
    )
    .bind(bucket)
    .fetch_one(pool)
    .await?;
    Ok(objects + variants)
}
