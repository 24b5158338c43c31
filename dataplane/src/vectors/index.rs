//! One HNSW index per collection, built in the background once the
//! collection is large enough.
//!
//! Why not index every collection at once: each partial index is one more
//! predicate the planner tests on every query of the `embeddings` table,
//! and a tenant with thousands of small collections would pay for that on
//! every search. Below [`VectorSettings::index_threshold`] vectors an exact
//! scan (through the primary key, `collection_id` first) is fast anyway.
//!
//! How: after an upsert, a collection whose `vector_index` is `none` (or
//! `failed`, retried at most once per [`RETRY_FAILED_AFTER`]) and that holds
//! at least the threshold is queued for this process's builder task. The
//! builder opens a connection as the tenant's owner (the data plane role
//! does not own `embeddings`), takes `pg_try_advisory_lock` for the
//! collection (one builder per collection across replicas; the others skip
//! it), and runs `CREATE INDEX CONCURRENTLY`, which does not block writes.
//! `collections.vector_index` goes `none → building → ready | failed`. A
//! build that died with its process leaves `building` and an invalid index
//! behind; the next builder to get the lock drops that index and starts
//! again, since a held lock is the only sign of a live build.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::model::{IndexState, VectorCollection, index_name};
use super::store;

/// Queued builds per process; past it a trigger is dropped (the next
/// upsert of that collection queues it again).
const QUEUE: usize = 1024;
/// A failed build is retried no sooner than this.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(600);
/// Defaults of [`VectorSettings`].
pub const DEFAULT_INDEX_THRESHOLD: i64 = 10_000;
pub const DEFAULT_MAX_SCAN_TUPLES: u32 = 20_000;
pub const DEFAULT_BUILD_MEMORY_MB: u32 = 256;
/// pgvector's defaults, used when the collection sets none.
pub const DEFAULT_M: i32 = 16;
pub const DEFAULT_EF_CONSTRUCTION: i32 = 64;

/// Tuning of the vector API (flags with environment fallbacks).
#[derive(clap::Args, Debug, Clone)]
pub struct VectorSettings {
    /// Vectors a collection must hold before it gets its HNSW index;
    /// smaller collections are searched exactly.
    #[arg(long = "vector-index-threshold", env = "STRATA_VECTOR_INDEX_THRESHOLD",
          default_value_t = DEFAULT_INDEX_THRESHOLD,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub index_threshold: i64,
    /// Most index tuples a filtered HNSW search visits (`hnsw.max_scan_tuples`)
    /// while looking for `k` rows that pass the filter.
    #[arg(long = "vector-max-scan-tuples", env = "STRATA_VECTOR_MAX_SCAN_TUPLES",
          default_value_t = DEFAULT_MAX_SCAN_TUPLES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_scan_tuples: u32,
    /// `maintenance_work_mem` of an index build, in MiB: an HNSW graph that
    /// does not fit is built far more slowly.
    #[arg(long = "vector-build-memory-mb", env = "STRATA_VECTOR_BUILD_MEMORY_MB",
          default_value_t = DEFAULT_BUILD_MEMORY_MB,
          value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub build_memory_mb: u32,
}

impl Default for VectorSettings {
    fn default() -> Self {
        Self {
            index_threshold: DEFAULT_INDEX_THRESHOLD,
            max_scan_tuples: DEFAULT_MAX_SCAN_TUPLES,
            build_memory_mb: DEFAULT_BUILD_MEMORY_MB,
        }
    }
}

impl VectorSettings {
    /// The settings from the environment alone (no flags), for when they
    /// are not part of the binary's parsed configuration.
    pub fn from_env() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: VectorSettings,
        }
        use clap::Parser as _;
        Ok(Only::try_parse_from(["strata-dataplane"])?.settings)
    }
}

/// Opens a connection running as the tenant's owner role. Its session
/// must never return to a pool in that state: it is closed after use.
pub type OwnerConnector =
    Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<PgConnection>> + Send + Sync>;

/// A connector from a pool into the tenant database and the owner role's
/// name: a connection detached from the pool (so it is closed, not
/// returned), then `SET ROLE`.
pub fn owner_connector(pool: PgPool, owner_role: String) -> OwnerConnector {
    Arc::new(move || {
        let pool = pool.clone();
        let owner = owner_role.clone();
        Box::pin(async move {
            let ident = strata_db::ident::Ident::new(owner)
                .map_err(|e| anyhow::anyhow!("owner role: {e}"))?;
            let mut conn = pool.acquire().await?.detach();
            sqlx::query(&format!("SET ROLE {}", ident.quoted()))
                .execute(&mut conn)
                .await?;
            Ok(conn)
        })
    })
}

/// What one build did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    Built,
    /// Another session holds the collection's build lock.
    Busy,
    /// Already `ready` with a valid index.
    AlreadyReady,
    /// Below the threshold, gone, or without a vector configuration.
    NotNeeded,
    /// More dimensions than HNSW indexes: searched exactly for good.
    NotIndexable,
    Failed,
}

fn lock_key_sql() -> &'static str {
    // 64-bit key from the collection id; per database, so per tenant.
    "hashtextextended('strata.vector_index:' || $1::text, 0)"
}

/// Whether a valid index of that name exists (`Some(valid)`), or none.
async fn index_validity(conn: &mut PgConnection, name: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
}

async fn set_state(
    conn: &mut PgConnection,
    collection: Uuid,
    state: IndexState,
) -> Result<(), sqlx::Error> {
    let state = match state {
        IndexState::None => "none",
        IndexState::Building => "building",
        IndexState::Ready => "ready",
        IndexState::Failed => "failed",
    };
    sqlx::query("UPDATE collections SET vector_index = $2 WHERE id = $1")
        .bind(collection)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops a collection's index (when the collection is deleted, or a build
/// failed). `CONCURRENTLY`, so searches and writes of other collections go
/// on; runs outside a transaction, on an owner connection.
pub async fn drop_index(conn: &mut PgConnection, collection: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {}",
        index_name(collection)
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// Builds the collection's index now, on `conn` (an owner connection, not
/// in a transaction). Safe to call from several processes at once.
pub async fn build(
    conn: &mut PgConnection,
    collection: Uuid,
    settings: &VectorSettings,
) -> anyhow::Result<BuildOutcome> {
    let locked: bool =
        sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({})", lock_key_sql()))
            .bind(collection)
            .fetch_one(&mut *conn)
            .await?;
    if !locked {
        return Ok(BuildOutcome::Busy);
    }
    let outcome = build_locked(conn, collection, settings).await;
    // Unlock on every path; if the connection itself broke, closing it
    // releases the lock anyway.
    let _ = sqlx::query(&format!("SELECT pg_advisory_unlock({})", lock_key_sql()))
        .bind(collection)
        .execute(&mut *conn)
        .await;
    outcome
}

async fn build_locked(
    conn: &mut PgConnection,
    id: Uuid,
    settings: &VectorSettings,
) -> anyhow::Result<BuildOutcome> {
    let Some(collection) = store::find_collection_by_id(&mut *conn, id).await? else {
        // Gone: an index left by a build that raced the deletion goes too.
        drop_index(conn, id).await?;
        return Ok(BuildOutcome::NotNeeded);
    };
    if !collection.indexable() {
        return Ok(BuildOutcome::NotIndexable);
    }
    let name = collection.index_name();
    let validity = index_validity(conn, &name).await?;
    if validity == Some(true) {
        // Built earlier (possibly by a process that died before recording
        // it): only the state is missing.
        if collection.index != IndexState::Ready {
            set_state(conn, id, IndexState::Ready).await?;
        }
        return Ok(BuildOutcome::AlreadyReady);
    }
    if !store::holds_at_least(&mut *conn, id, settings.index_threshold).await? {
        return Ok(BuildOutcome::NotNeeded);
    }
    set_state(conn, id, IndexState::Building).await?;
    let started = Instant::now();
    match create(conn, &collection, validity.is_some(), settings).await {
        Ok(()) => {
            set_state(conn, id, IndexState::Ready).await?;
            tracing::info!(collection = %id, seconds = started.elapsed().as_secs_f64(), "vector index ready");
            Ok(BuildOutcome::Built)
        }
        Err(error) => {
            tracing::warn!(collection = %id, error = %error, "vector index build failed");
            // An invalid index is still maintained on every write: drop it.
            if let Err(error) = drop_index(conn, id).await {
                tracing::warn!(collection = %id, error = %error, "dropping the failed vector index");
            }
            set_state(conn, id, IndexState::Failed).await?;
            Ok(BuildOutcome::Failed)
        }
    }
}

/// The DDL. Every spliced value is typed: the UUID, the dimension and the
/// HNSW parameters are numbers (the latter bounded by the table's CHECKs),
/// the operator class comes from an enum.
pub fn create_index_sql(collection: &VectorCollection) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY {name} ON embeddings USING hnsw ({expr} {ops}) \
         WITH (m = {m}, ef_construction = {ef}) WHERE collection_id = {id}",
        name = collection.index_name(),
        expr = collection.expression(),
        ops = collection.metric.opclass(),
        m = collection.hnsw_m.unwrap_or(DEFAULT_M),
        ef = collection
            .hnsw_ef_construction
            .unwrap_or(DEFAULT_EF_CONSTRUCTION),
        id = collection.id_literal(),
    )
}

async fn create(
    conn: &mut PgConnection,
    collection: &VectorCollection,
    stale: bool,
    settings: &VectorSettings,
) -> Result<(), sqlx::Error> {
    if stale {
        // Left invalid by a build that died: CONCURRENTLY cannot resume it.
        drop_index(conn, collection.id).await?;
    }
    sqlx::query(&format!(
        "SET maintenance_work_mem = '{}MB'",
        settings.build_memory_mb
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&create_index_sql(collection))
        .execute(&mut *conn)
        .await?;
    // The planner picks the HNSW index over an exact scan by the
    // collection's estimated size; statistics older than the collection's
    // growth would keep it on the exact scan until autovacuum comes by.
    sqlx::query("ANALYZE embeddings")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One queued build.
struct Job {
    tenant: Uuid,
    collection: Uuid,
    connect: OwnerConnector,
}

/// The per-process builder: a queue and one tokio task that builds one
/// index at a time (an HNSW build keeps a core busy; the database server
/// is shared by every tenant). Started on first use.
#[derive(Clone)]
pub struct IndexBuilder {
    inner: Arc<BuilderInner>,
}

struct BuilderInner {
    settings: VectorSettings,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    /// Queued or building, so a busy collection is queued once.
    pending: Mutex<HashSet<(Uuid, Uuid)>>,
    /// When a build last failed here.
    failed: Mutex<HashMap<(Uuid, Uuid), Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IndexBuilder {
    pub fn new(settings: VectorSettings) -> Self {
        Self {
            inner: Arc::new(BuilderInner {
                settings,
                sender: Mutex::new(None),
                pending: Mutex::new(HashSet::new()),
                failed: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn settings(&self) -> &VectorSettings {
        &self.inner.settings
    }

    /// Called after writes: queues a build when the collection needs one.
    /// Cheap when it does not (a state check, then a bounded count).
    pub async fn after_write(
        &self,
        pool: &PgPool,
        tenant: Uuid,
        collection: &VectorCollection,
        connect: OwnerConnector,
    ) -> Result<(), sqlx::Error> {
        let key = (tenant, collection.id);
        let eligible = match collection.index {
            IndexState::None => true,
            IndexState::Failed => lock(&self.inner.failed)
                .get(&key)
                .is_none_or(|at| at.elapsed() >= RETRY_FAILED_AFTER),
            // `building` is re-checked by whoever gets the lock; a live
            // build holds it.
            IndexState::Building => !lock(&self.inner.pending).contains(&key),
            IndexState::Ready => false,
        };
        if !eligible || !collection.indexable() || lock(&self.inner.pending).contains(&key) {
            return Ok(());
        }
        if !store::holds_at_least(pool, collection.id, self.inner.settings.index_threshold).await? {
            return Ok(());
        }
        self.enqueue(Job {
            tenant,
            collection: collection.id,
            connect,
        });
        Ok(())
    }

    fn enqueue(&self, job: Job) {
        let key = (job.tenant, job.collection);
        if !lock(&self.inner.pending).insert(key) {
            return;
        }
        let sender = {
            let mut slot = lock(&self.inner.sender);
            slot.get_or_insert_with(|| self.spawn()).clone()
        };
        if sender.try_send(job).is_err() {
            // Full (or the task ended): the next write queues it again.
            lock(&self.inner.pending).remove(&key);
            tracing::warn!(collection = %key.1, "vector index queue full; build deferred");
        }
    }

    fn spawn(&self) -> mpsc::Sender<Job> {
        let (sender, mut receiver) = mpsc::channel::<Job>(QUEUE);
        // Weak: the task ends when the builder (and so the sender) is gone.
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(job) = receiver.recv().await {
                let Some(inner) = inner.upgrade() else { break };
                let key = (job.tenant, job.collection);
                let outcome = run(&job, &inner.settings).await;
                if matches!(outcome, Ok(BuildOutcome::Failed) | Err(_)) {
                    lock(&inner.failed).insert(key, Instant::now());
                }
                if let Err(error) = outcome {
                    tracing::warn!(collection = %job.collection, error = format!("{error:#}"), "vector index build");
                }
                lock(&inner.pending).remove(&key);
            }
        });
        sender
    }
}

async fn run(job: &Job, settings: &VectorSettings) -> anyhow::Result<BuildOutcome> {
    let mut conn = (job.connect)().await?;
    let outcome = build(&mut conn, job.collection, settings).await;
    // Closed, never reused: the session is the owner's.
    let _ = conn.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::model::Metric;

    #[test]
    fn ddl_is_built_from_typed_values() {
        let c = VectorCollection {
            id: Uuid::from_u128(7),
            name: "c".into(),
            dimension: 64,
            metric: Metric::L2,
            hnsw_m: Some(24),
            hnsw_ef_construction: None,
            index: IndexState::None,
        };
        assert_eq!(
            create_index_sql(&c),
            "CREATE INDEX CONCURRENTLY embeddings_hnsw_00000000000000000000000000000007 ON embeddings \
             USING hnsw ((embedding::vector(64)) vector_l2_ops) WITH (m = 24, ef_construction = 64) \
             WHERE collection_id = '00000000-0000-0000-0000-000000000007'"
        );
    }

    #[test]
    fn settings_default_from_an_empty_environment() {
        let s = VectorSettings::from_env().expect("parse");
        assert!(s.index_threshold >= 1);
    }
}
