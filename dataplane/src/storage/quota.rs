//! Quotas that hold under concurrency: bytes (and the object) are reserved
//! before they are streamed, and usage moves from reserved to committed in
//! the transaction that makes the object visible.
//!
//! `bucket_usage` has a row per bucket and one for the whole tenant (the
//! nil UUID). Every reservation, renewal, release and commit locks the
//! tenant row, then the bucket row (always in that order, so writers never
//! deadlock), checks `committed + reserved + new <= quota` for both, and
//! changes the counters and the `reservations` row in one transaction. Two
//! writers can therefore never both take the last byte.
//!
//! A reservation has a lease (`expires_at`), renewed while the body
//! streams. A writer that dies (SIGKILL, lost node) stops renewing; the
//! sweeper then releases its reservation ([`release_expired`]). A writer
//! that fails or whose client disconnects releases at once
//! ([`Reservation::release`], also attempted on drop).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use strata_storage::BlobKey;
use uuid::Uuid;

use super::buckets::BucketInfo;
use crate::http::problem::{ApiError, kind};

/// The `bucket_usage` row that holds the tenant's totals.
pub const TENANT_ROW: Uuid = Uuid::nil();

/// A quota reservation held by one write in flight.
#[derive(Debug)]
pub struct Reservation {
    pub id: Uuid,
    pub bucket_id: Uuid,
    pub bytes: i64,
    pub objects: i64,
    pool: PgPool,
    lease: Duration,
    /// Set once released or settled: nothing left to do on drop.
    done: bool,
    /// The blob whose intent was recorded with the reservation
    /// ([`Reservation::take_with_intent`]).
    intent: Option<String>,
}

#[derive(sqlx::FromRow, Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: i64,
    pub objects: i64,
    pub reserved_bytes: i64,
    pub reserved_objects: i64,
}

fn exceeded(what: &str) -> ApiError {
    ApiError::Other {
        kind: kind::QUOTA_EXCEEDED,
        detail: format!("storing this would exceed the {what}"),
    }
}

/// Locks (creating if missing) the tenant's and the bucket's usage rows,
/// tenant first. Each row is one `SELECT … FOR UPDATE` (a single-shard
/// statement on Citus); only a missing row costs an insert and a second
/// look.
pub async fn lock_usage(
    conn: &mut PgConnection,
    bucket_id: Uuid,
) -> Result<(Usage, Usage), ApiError> {
    let mut rows = [Usage::default(); 2];
    for (i, id) in [TENANT_ROW, bucket_id].into_iter().enumerate() {
        let select = "SELECT bytes, objects, reserved_bytes, reserved_objects
                        FROM bucket_usage WHERE bucket_id = $1 FOR UPDATE";
        let found: Option<Usage> = sqlx::query_as(select)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        rows[i] = match found {
            Some(usage) => usage,
            None => {
                sqlx::query(
                    "INSERT INTO bucket_usage (bucket_id) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .execute(&mut *conn)
                .await?;
                sqlx::query_as(select)
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
    }
    Ok((rows[0], rows[1]))
}

/// A change of one usage row's counters.
#[derive(Debug, Clone, Copy, Default)]
struct Change {
    bytes: i64,
    objects: i64,
    reserved_bytes: i64,
    reserved_objects: i64,
}

impl Change {
    /// Reserved bytes and objects only.
    fn reserved(bytes: i64, objects: i64) -> Self {
        Self {
            reserved_bytes: bytes,
            reserved_objects: objects,
            ..Self::default()
        }
    }

    fn inverse(self) -> Self {
        Self {
            bytes: -self.bytes,
            objects: -self.objects,
            reserved_bytes: -self.reserved_bytes,
            reserved_objects: -self.reserved_objects,
        }
    }
}

/// What [`check_fits`] checks, for one row: `more` bytes/objects beyond
/// what is committed and reserved, minus `own` (the caller's reservation,
/// not someone else's headroom).
#[derive(Debug, Clone, Copy, Default)]
struct Check {
    more_bytes: i64,
    more_objects: i64,
    own_bytes: i64,
    own_objects: i64,
}

/// Checks and changes one usage row in one statement: the `UPDATE` locks
/// the row and evaluates its `WHERE` on the latest committed version
/// (READ COMMITTED re-checks a row it waited for), so the check and the
/// change are one atomic step — the same rule as [`check_fits`] under
/// [`lock_usage`], in one round trip instead of two or four. `false` when
/// the row is missing or the check fails: nothing changed, and the caller
/// takes the slow path, which creates rows and says which quota.
async fn try_row(
    conn: &mut PgConnection,
    id: Uuid,
    change: Change,
    check: Check,
    quota_bytes: Option<i64>,
    quota_objects: Option<i64>,
) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "UPDATE bucket_usage
            SET bytes = bytes + $2, objects = objects + $3,
                reserved_bytes = reserved_bytes + $4,
                reserved_objects = reserved_objects + $5, updated_at = now()
          WHERE bucket_id = $1
            AND ($6 <= 0 OR $8::bigint IS NULL
                 OR bytes::numeric + reserved_bytes - $7 + $6 <= $8)
            AND ($9 <= 0 OR $11::bigint IS NULL
                 OR objects::numeric + reserved_objects - $10 + $9 <= $11)",
    )
    .bind(id)
    .bind(change.bytes)
    .bind(change.objects)
    .bind(change.reserved_bytes)
    .bind(change.reserved_objects)
    .bind(check.more_bytes)
    .bind(check.own_bytes)
    .bind(quota_bytes)
    .bind(check.more_objects)
    .bind(check.own_objects)
    .bind(quota_objects)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// [`try_row`] on the tenant row, then the bucket row (the lock order of
/// [`lock_usage`]). When the bucket row refuses, the tenant row's change
/// is undone (its lock is ours) and `false` says: take the slow path.
async fn try_apply(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    change: Change,
    check: Check,
) -> Result<bool, ApiError> {
    let tenant = (bucket.tenant_quota_bytes, bucket.tenant_quota_objects);
    if !try_row(conn, TENANT_ROW, change, check, tenant.0, tenant.1).await? {
        return Ok(false);
    }
    let own = (bucket.quota_bytes, bucket.quota_objects);
    if try_row(conn, bucket.id, change, check, own.0, own.1).await? {
        return Ok(true);
    }
    let undo = Check::default();
    try_row(conn, TENANT_ROW, change.inverse(), undo, None, None).await?;
    Ok(false)
}

/// Applies `change` unconditionally to both rows (already locked).
async fn apply_locked(
    conn: &mut PgConnection,
    bucket_id: Uuid,
    change: Change,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE bucket_usage
            SET bytes = bytes + $2, objects = objects + $3,
                reserved_bytes = reserved_bytes + $4,
                reserved_objects = reserved_objects + $5, updated_at = now()
          WHERE bucket_id = ANY($1)",
    )
    .bind(vec![TENANT_ROW, bucket_id])
    .bind(change.bytes)
    .bind(change.objects)
    .bind(change.reserved_bytes)
    .bind(change.reserved_objects)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `bytes`/`objects` more (beyond what is committed and reserved,
/// minus `already` held by the caller) fit in the bucket's and the
/// tenant's quotas.
pub fn check_fits(
    bucket: &BucketInfo,
    tenant: &Usage,
    row: &Usage,
    bytes: i64,
    objects: i64,
) -> Result<(), ApiError> {
    let over = |quota: Option<i64>, used: i64, reserved: i64, more: i64| {
        more > 0 && quota.is_some_and(|q| used.saturating_add(reserved).saturating_add(more) > q)
    };
    if over(bucket.quota_bytes, row.bytes, row.reserved_bytes, bytes) {
        return Err(exceeded("bucket's quota of bytes"));
    }
    if over(
        bucket.quota_objects,
        row.objects,
        row.reserved_objects,
        objects,
    ) {
        return Err(exceeded("bucket's quota of objects"));
    }
    if over(
        bucket.tenant_quota_bytes,
        tenant.bytes,
        tenant.reserved_bytes,
        bytes,
    ) {
        return Err(exceeded("tenant's quota of bytes"));
    }
    if over(
        bucket.tenant_quota_objects,
        tenant.objects,
        tenant.reserved_objects,
        objects,
    ) {
        return Err(exceeded("tenant's quota of objects"));
    }
    Ok(())
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64().max(1.0)
}

impl Reservation {
    /// Reserves `bytes` and `objects` (413-like 507 `quota-exceeded` when
    /// they do not fit).
    pub async fn take(
        pool: &PgPool,
        bucket: &BucketInfo,
        bytes: i64,
        objects: i64,
        lease: Duration,
    ) -> Result<Self, ApiError> {
        Self::take_inner(pool, bucket, bytes, objects, lease, None).await
    }

    /// [`Self::take`], and in the same transaction the intent of `blob`
    /// (what [`super::upload::record_intent`] would record before the
    /// first byte): one commit fewer per upload. [`super::upload::ingest`]
    /// then records no intent of its own for that blob.
    pub async fn take_with_intent(
        pool: &PgPool,
        bucket: &BucketInfo,
        bytes: i64,
        objects: i64,
        lease: Duration,
        blob: &BlobKey,
    ) -> Result<Self, ApiError> {
        Self::take_inner(pool, bucket, bytes, objects, lease, Some(blob)).await
    }

    async fn take_inner(
        pool: &PgPool,
        bucket: &BucketInfo,
        bytes: i64,
        objects: i64,
        lease: Duration,
        intent: Option<&BlobKey>,
    ) -> Result<Self, ApiError> {
        let id = Uuid::now_v7();
        let mut tx = pool.begin().await?;
        if let Some(blob) = intent {
            super::upload::record_intent(&mut *tx, bucket, blob, lease).await?;
        }
        // The reservation row first: it touches no shared row, so the
        // usage rows stay locked only for the check, the change and the
        // commit.
        sqlx::query(
            "INSERT INTO reservations (bucket_id, id, bytes, objects, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(bucket.id)
        .bind(id)
        .bind(bytes)
        .bind(objects)
        .bind(lease_secs(lease))
        .execute(&mut *tx)
        .await?;
        let change = Change::reserved(bytes, objects);
        let check = Check {
            more_bytes: bytes,
            more_objects: objects,
            ..Check::default()
        };
        if !try_apply(&mut tx, bucket, change, check).await? {
            let (tenant, row) = lock_usage(&mut tx, bucket.id).await?;
            check_fits(bucket, &tenant, &row, bytes, objects)?;
            apply_locked(&mut tx, bucket.id, change).await?;
        }
        tx.commit().await?;
        Ok(Self {
            id,
            bucket_id: bucket.id,
            bytes,
            objects,
            pool: pool.clone(),
            lease,
            done: false,
            intent: intent.map(|blob| blob.as_str().to_string()),
        })
    }

    /// Whether [`Self::take_with_intent`] recorded `blob`'s intent.
    pub fn holds_intent(&self, blob: &BlobKey) -> bool {
        self.intent.as_deref() == Some(blob.as_str())
    }

    /// Reserves `more` bytes on top (chunked bodies), renewing the lease.
    /// Tries `wanted` (a round step, to spare round trips), and falls back
    /// to exactly `more` when the step does not fit.
    pub async fn grow(
        &mut self,
        bucket: &BucketInfo,
        more: i64,
        wanted: i64,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let (tenant, row) = lock_usage(&mut tx, bucket.id).await?;
        let step = if check_fits(bucket, &tenant, &row, wanted.max(more), 0).is_ok() {
            wanted.max(more)
        } else {
            check_fits(bucket, &tenant, &row, more, 0)?;
            more
        };
        apply_locked(&mut tx, bucket.id, Change::reserved(step, 0)).await?;
        sqlx::query(
            "UPDATE reservations SET bytes = bytes + $3,
                    expires_at = now() + make_interval(secs => $4)
              WHERE bucket_id = $1 AND id = $2",
        )
        .bind(self.bucket_id)
        .bind(self.id)
        .bind(step)
        .bind(lease_secs(self.lease))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.bytes += step;
        Ok(())
    }

    /// Extends the lease (and that of the blob intents of the write).
    pub async fn renew(&self, intents: &[String]) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE reservations SET expires_at = now() + make_interval(secs => $3)
              WHERE bucket_id = $1 AND id = $2",
        )
        .bind(self.bucket_id)
        .bind(self.id)
        .bind(lease_secs(self.lease))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE blob_intents SET expires_at = now() + make_interval(secs => $3)
              WHERE bucket_id = $1 AND blob_key = ANY($2)",
        )
        .bind(self.bucket_id)
        .bind(intents)
        .bind(lease_secs(self.lease))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Turns the reservation into committed usage inside the caller's
    /// transaction: `bytes`/`objects` are the real changes (an overwrite
    /// adds the new size minus the old one and no object). When the change
    /// exceeds what was reserved (the overwritten object vanished
    /// meanwhile) the quota is checked again under the lock.
    pub async fn settle(
        &mut self,
        conn: &mut PgConnection,
        bucket: &BucketInfo,
        bytes: i64,
        objects: i64,
    ) -> Result<(), ApiError> {
        // The reservation row first (no shared lock): what it still holds
        // is what this settle takes off the reserved counters. Gone means
        // the sweeper released it (lease expired): then nothing of it is
        // reserved any more, and the change is checked as a new one.
        let held: Option<(i64, i64)> = sqlx::query_as(
            "DELETE FROM reservations WHERE bucket_id = $1 AND id = $2 RETURNING bytes, objects",
        )
        .bind(self.bucket_id)
        .bind(self.id)
        .fetch_optional(&mut *conn)
        .await?;
        let (own_bytes, own_objects) = held.unwrap_or((0, 0));
        let change = Change {
            bytes,
            objects,
            reserved_bytes: -own_bytes,
            reserved_objects: -own_objects,
        };
        let check = Check {
            more_bytes: bytes,
            more_objects: objects,
            own_bytes,
            own_objects,
        };
        if try_apply(conn, bucket, change, check).await? {
            return Ok(());
        }
        let (mut tenant, mut row) = lock_usage(conn, bucket.id).await?;
        // Our own reservation is not "someone else's" headroom.
        for usage in [&mut tenant, &mut row] {
            usage.reserved_bytes -= own_bytes;
            usage.reserved_objects -= own_objects;
        }
        check_fits(bucket, &tenant, &row, bytes, objects)?;
        apply_locked(conn, bucket.id, change).await
    }

    /// Marks the reservation settled once the caller's transaction
    /// committed (a rolled-back settle leaves it to [`Self::release`]).
    pub fn settled(&mut self) {
        self.done = true;
    }

    /// Gives the reservation back (the write failed or was abandoned).
    pub async fn release(mut self) -> Result<(), ApiError> {
        self.done = true;
        release(&self.pool, self.bucket_id, self.id).await
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A cancelled request (client gone) drops its future mid-way: give
        // the reservation back in the background. If that fails too, the
        // lease runs out and the sweeper does it.
        let (pool, bucket, id) = (self.pool.clone(), self.bucket_id, self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(error) = release(&pool, bucket, id).await {
                    tracing::warn!(%error, "releasing a reservation; the sweeper will");
                }
            });
        }
    }
}

/// Deletes a reservation and takes its amounts off the reserved counters
/// (nothing when it is already gone: idempotent).
pub async fn release(pool: &PgPool, bucket_id: Uuid, id: Uuid) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    lock_usage(&mut tx, bucket_id).await?;
    let gone: Option<(i64, i64)> = sqlx::query_as(
        "DELETE FROM reservations WHERE bucket_id = $1 AND id = $2 RETURNING bytes, objects",
    )
    .bind(bucket_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((bytes, objects)) = gone {
        apply_locked(&mut tx, bucket_id, Change::reserved(-bytes, -objects)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Releases up to `limit` reservations whose lease ran out; returns how
/// many. Safe with several replicas: each is released under the usage
/// locks and a reservation can only be deleted once.
pub async fn release_expired(pool: &PgPool, limit: i64) -> Result<usize, ApiError> {
    let expired: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT bucket_id, id FROM reservations WHERE expires_at < now()
          ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    for (bucket, id) in &expired {
        release(pool, *bucket, *id).await?;
    }
    Ok(expired.len())
}

/// Committed usage of a bucket (bytes, objects).
pub async fn bucket_usage(pool: &PgPool, bucket_id: Uuid) -> Result<Usage, ApiError> {
    Ok(sqlx::query_as(
        "SELECT bytes, objects, reserved_bytes, reserved_objects
           FROM bucket_usage WHERE bucket_id = $1",
    )
    .bind(bucket_id)
    .fetch_optional(pool)
    .await?
    .unwrap_or_default())
}

/// Changes committed usage inside the caller's transaction (deletes,
/// multipart completion and abort). With `check`, growth beyond the quotas
/// is refused (507) under the same locks.
pub async fn adjust(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    bytes: i64,
    objects: i64,
    check: bool,
) -> Result<(), ApiError> {
    let change = Change {
        bytes,
        objects,
        ..Change::default()
    };
    let fast = Check {
        more_bytes: if check { bytes } else { 0 },
        more_objects: if check { objects } else { 0 },
        ..Check::default()
    };
    if try_apply(conn, bucket, change, fast).await? {
        return Ok(());
    }
    let (tenant, row) = lock_usage(conn, bucket.id).await?;
    if check {
        check_fits(bucket, &tenant, &row, bytes, objects)?;
    }
    apply_locked(conn, bucket.id, change).await
}
