//! The outbox dispatcher: a task in each data plane replica (`--dispatcher
//! on`, the default).
//!
//! **Why a mode of the data plane, not a binary of its own**: it needs
//! exactly what the data plane already has — the catalog, the per-tenant
//! pools (LRU, data plane role), Redis — and nothing the data plane lacks;
//! running it in every replica means it scales with them and needs no
//! Deployment, leader election or RBAC of its own. Replicas share the work
//! through row locks, so running it in N replicas is safe; `--dispatcher
//! off` keeps it out of replicas that should only serve.
//!
//! **Finding work** without polling every tenant database: a request that
//! recorded events publishes a hint (the tenant name) on Redis after its
//! response ([`super::hint`]); every dispatcher subscribes and schedules
//! that tenant now. A sweep every `--dispatch-sweep-seconds` schedules
//! every ready tenant of the catalog, which catches what no hint announced
//! (a lost hint, the operator's events, a replica that was down). After
//! each run the dispatcher asks the tenant database when its next retry is
//! due and schedules itself for then.
//!
//! **One run of one tenant**: the outbox and the webhook deliveries are
//! worked on side by side, each in transactions that claim a bounded batch
//! with `FOR UPDATE SKIP LOCKED` (other replicas skip the claimed rows, so
//! no row is worked on twice at once) and hold the claim until the batch's
//! outcome is written:
//!
//! - outbox: publish the batch to Redis (one pipeline), hand it to the
//!   in-process sinks ([`super::sinks`], each in a savepoint), make one
//!   delivery row per matching webhook endpoint (`ON CONFLICT DO NOTHING`:
//!   once per event and endpoint), mark the rows dispatched, commit, then
//!   run what the sinks left for after the commit;
//! - deliveries: POST each (concurrently, each with its timeout), record
//!   every attempt, mark delivered or schedule the retry, commit.
//!
//! A crash anywhere before the commit rolls the claim back: the rows are
//! claimed again and published again (at least once; receivers dedupe on
//! the event id). A failure schedules a retry with exponential backoff and
//! full jitter, capped; after `--dispatch-max-attempts` the row is dead
//! (an admin lists and replays it, [`super::admin`]).
//!
//! **Maintenance** (per tenant, every 10 minutes, by whichever replica runs
//! it): dispatched events whose deliveries are all done are deleted after
//! `--event-retention-hours` (their deliveries and attempts go with them),
//! dead ones after 30 days, expired idempotency keys at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::envelope::OutboxRow;
use super::metrics::{TenantLabels, count, metrics};
use super::settings::EventSettings;
use super::sinks::Sink;
use super::webhooks::deliver::{self, Attempt, DeliveryRow};
use super::{hint, redis_sink, types};
use crate::tenancy::{Tenancy, TenantInfo};
use strata_db::TenantState;

/// How often one replica does a tenant's maintenance.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(600);
/// How often one replica refreshes a tenant's backlog gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(2);
/// Dead events and deliveries are kept this long for an admin to replay.
const DEAD_RETENTION_DAYS: i32 = 30;
/// A run that failed (database unreachable, …) is tried again after this.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// Longest stored error text.
const MAX_ERROR_LEN: usize = 500;

/// Cheap to clone; [`Dispatcher::spawn`] starts it.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    tenancy: Tenancy,
    catalog: PgPool,
    redis: Option<redis::aio::ConnectionManager>,
    /// For the hint subscription (pub/sub needs a connection of its own).
    redis_client: Option<redis::Client>,
    settings: EventSettings,
    http: reqwest::Client,
    sched: Mutex<Schedule>,
    wake: Notify,
    sweep_now: Notify,
    /// Per tenant: when gauges and maintenance last ran here.
    upkeep: Mutex<HashMap<String, Upkeep>>,
    /// In-process sinks, in the order they were added.
    sinks: Mutex<Vec<Arc<dyn Sink>>>,
}

/// When this replica last refreshed a tenant's gauges and maintained it
/// (`None`: never; the first run does both).
type Upkeep = (Option<Instant>, Option<Instant>);

#[derive(Default)]
struct Schedule {
    due: HashMap<String, Instant>,
    running: HashSet<String>,
    /// Hinted while running: run again right after.
    again: HashSet<String>,
}

/// `FOR UPDATE SKIP LOCKED` claim of due outbox rows.
const CLAIM_OUTBOX: &str = r#"
    SELECT id, event_id, topic, aggregate_id, payload,
           to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
           (extract(epoch FROM created_at) * 1000000)::int8 AS created_us,
           attempts
      FROM outbox
     WHERE dispatched_at IS NULL AND dead_at IS NULL AND available_at <= now()
     ORDER BY available_at, id
     LIMIT $1
       FOR UPDATE SKIP LOCKED"#;

/// The same for due webhook deliveries, with what a delivery needs.
const CLAIM_DELIVERIES: &str = r#"
    SELECT d.id AS delivery_id, d.attempts AS delivery_attempts,
           e.url, e.secret,
           CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END AS previous_secret,
           o.id, o.event_id, o.topic, o.aggregate_id, o.payload,
           to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
           (extract(epoch FROM o.created_at) * 1000000)::int8 AS created_us,
           o.attempts
      FROM webhook_deliveries d
      JOIN webhook_endpoints e ON e.id = d.endpoint_id
      JOIN outbox o ON o.id = d.outbox_id
     WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND e.enabled
     ORDER BY d.next_attempt_at, d.id
     LIMIT $1
       FOR UPDATE OF d SKIP LOCKED"#;

/// Whether [`CLAIM_DELIVERIES`] would find anything: one round trip where
/// the claim's transaction costs three, and nothing is due in most runs.
const DELIVERIES_DUE: &str = r#"
    SELECT EXISTS (
      SELECT 1 FROM webhook_deliveries d
        JOIN webhook_endpoints e ON e.id = d.endpoint_id
       WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND e.enabled)"#;

/// Seconds until the tenant's next retry is due (NULL: nothing pending).
const NEXT_DUE: &str = r#"
    SELECT extract(epoch FROM least(
             (SELECT min(available_at) FROM outbox
               WHERE dispatched_at IS NULL AND dead_at IS NULL),
             (SELECT min(d.next_attempt_at) FROM webhook_deliveries d
                JOIN webhook_endpoints e ON e.id = d.endpoint_id
               WHERE d.state = 'pending' AND e.enabled)
           ) - now())::float8"#;

/// Delay before retry number `attempt` (1-based): full jitter over an
/// exponential ceiling, `uniform(0, min(cap, base * 2^(attempt-1)))`, so
/// retries of many failed events spread out instead of arriving together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << attempt.saturating_sub(1).min(30))
        .unwrap_or(cap)
        .min(cap);
    let millis = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl Dispatcher {
    pub fn new(
        tenancy: Tenancy,
        catalog: PgPool,
        redis: Option<redis::aio::ConnectionManager>,
        redis_client: Option<redis::Client>,
        settings: EventSettings,
    ) -> anyhow::Result<Self> {
        let http = deliver::client(&settings)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tenancy,
                catalog,
                redis,
                redis_client,
                settings,
                http,
                sched: Mutex::new(Schedule::default()),
                wake: Notify::new(),
                sweep_now: Notify::new(),
                upkeep: Mutex::new(HashMap::new()),
                sinks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Adds an in-process sink ([`super::sinks`]) that sees every batch.
    pub fn with_sink(self, sink: Arc<dyn Sink>) -> Self {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
        self
    }

    fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.inner.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Schedules `tenant` now (a hint).
    pub fn hint(&self, tenant: &str) {
        {
            let mut s = self.sched();
            if s.running.contains(tenant) {
                s.again.insert(tenant.to_string());
            } else {
                s.due.insert(tenant.to_string(), Instant::now());
            }
        }
        self.inner.wake.notify_one();
    }

    fn schedule_at(&self, tenant: &str, at: Instant) {
        {
            let mut s = self.sched();
            let entry = s.due.entry(tenant.to_string()).or_insert(at);
            *entry = (*entry).min(at);
        }
        self.inner.wake.notify_one();
    }

    /// Starts the scheduler, the hint listener and the sweeper; they run
    /// until the process ends (or the returned handle is aborted).
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        if self.inner.redis_client.is_some() {
            tokio::spawn(self.clone().listen());
        }
        tokio::spawn(self.clone().sweep());
        tokio::spawn(self.schedule_loop())
    }

    async fn schedule_loop(self) {
        let permits = Arc::new(Semaphore::new(self.inner.settings.concurrency));
        loop {
            let now = Instant::now();
            let (ready, next) = {
                let mut s = self.sched();
                let ready: Vec<String> = s
                    .due
                    .iter()
                    .filter(|(name, at)| **at <= now && !s.running.contains(*name))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in &ready {
                    s.due.remove(name);
                    s.running.insert(name.clone());
                }
                let next = s
                    .due
                    .iter()
                    .filter(|(name, _)| !s.running.contains(*name))
                    .map(|(_, at)| *at)
                    .min();
                (ready, next)
            };
            for name in ready {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let next = this.run_tenant_logged(&name).await;
                    drop(permit);
                    this.finish(&name, next);
                });
            }
            let sleep = next
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn finish(&self, tenant: &str, next: Option<Instant>) {
        let next = {
            let mut s = self.sched();
            s.running.remove(tenant);
            if s.again.remove(tenant) {
                Some(Instant::now())
            } else {
                next
            }
        };
        match next {
            Some(at) => self.schedule_at(tenant, at),
            None => self.inner.wake.notify_one(),
        }
    }

    async fn listen(self) {
        let Some(client) = self.inner.redis_client.clone() else {
            return;
        };
        let mut delay = Duration::from_millis(500);
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(hint::HINT_CHANNEL).await {
                    Ok(()) => {
                        delay = Duration::from_millis(500);
                        // Hints sent while we were not subscribed are lost:
                        // sweep now rather than at the next interval.
                        self.inner.sweep_now.notify_one();
                        let mut messages = pubsub.into_on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(tenant) = message.get_payload::<String>() {
                                self.hint(&tenant);
                            }
                        }
                        tracing::warn!("dispatch hint subscription ended; reconnecting");
                    }
                    Err(error) => tracing::warn!(%error, "subscribing to dispatch hints"),
                },
                Err(error) => tracing::warn!(%error, "connecting to Redis for dispatch hints"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    async fn sweep(self) {
        loop {
            match self.ready_tenants().await {
                Ok(names) => {
                    let now = Instant::now();
                    for name in names {
                        self.schedule_at(&name, now);
                    }
                }
                Err(error) => tracing::warn!(%error, "dispatch sweep: reading the catalog"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.inner.settings.sweep_interval) => {}
                () = self.inner.sweep_now.notified() => {}
            }
        }
    }

    /// Tenants whose databases serve (the data plane role may read
    /// `catalog.tenants`).
    pub async fn ready_tenants(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM catalog.tenants WHERE state IN ('ready', 'suspended') ORDER BY name",
        )
        .fetch_all(&self.inner.catalog)
        .await
    }

    async fn run_tenant_logged(&self, name: &str) -> Option<Instant> {
        match self.run_tenant(name).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(
                    tenant = name,
                    error = format!("{error:#}"),
                    "dispatch run failed"
                );
                Some(Instant::now() + ERROR_RETRY)
            }
        }
    }

    /// One run of one tenant (see the module documentation); when it
    /// should run next. Public for tests and the benchmark.
    pub async fn run_tenant(&self, name: &str) -> anyhow::Result<Option<Instant>> {
        let Some(tenant) = self.inner.tenancy.resolve(name).await? else {
            return Ok(None);
        };
        if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
            return Ok(None);
        }
        let pool = self.inner.tenancy.pools.pool(&tenant)?;
        let (outbox, deliveries) = tokio::join!(
            self.dispatch_outbox(&tenant, &pool),
            self.deliver_webhooks(&tenant, &pool)
        );
        let more = outbox? | deliveries?;
        self.upkeep(&tenant, &pool).await?;
        if more {
            return Ok(Some(Instant::now()));
        }
        let seconds: Option<f64> = sqlx::query_scalar(NEXT_DUE).fetch_one(&pool).await?;
        Ok(seconds.map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
    }

    /// Outbox batches until none is left or the turn is over; `true` when
    /// work remains.
    async fn dispatch_outbox(&self, tenant: &TenantInfo, pool: &PgPool) -> anyhow::Result<bool> {
        let settings = &self.inner.settings;
        for _ in 0..settings.batches_per_turn {
            let mut tx = pool.begin().await?;
            let rows: Vec<OutboxRow> = sqlx::query_as(CLAIM_OUTBOX)
                .bind(i64::from(settings.batch))
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(false);
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let published = match &self.inner.redis {
                Some(redis) => {
                    let bodies: Vec<String> = rows
                        .iter()
                        .map(|r| r.body(tenant.id, &tenant.name))
                        .collect();
                    let mut redis = redis.clone();
                    redis_sink::publish(&mut redis, tenant.id, &bodies).await
                }
                None => Ok(()),
            };
            if let Err(error) = published {
                let error = truncate(format!("redis: {error}"));
                let dead = self.retry_outbox(&mut tx, &rows, &error).await?;
                tx.commit().await?;
                count("redis", "retry", (rows.len() - dead) as u64);
                count("redis", "dead", dead as u64);
                anyhow::bail!("publishing to Redis: {error}");
            }
            // In-process sinks, each in a savepoint: a failure retries the
            // batch as a Redis failure does (sinks are idempotent).
            let sinks = self.sinks();
            let mut after_commit = Vec::new();
            for sink in &sinks {
                if !sink.wants(&rows) {
                    continue;
                }
                let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
                match sink.apply(tenant, pool, &mut savepoint, &rows).await {
                    Ok(after) => {
                        savepoint.commit().await?;
                        after_commit.extend(after);
                    }
                    Err(error) => {
                        savepoint.rollback().await?;
                        let error = truncate(format!("{}: {error:#}", sink.name()));
                        let dead = self.retry_outbox(&mut tx, &rows, &error).await?;
                        tx.commit().await?;
                        count(sink.name(), "retry", (rows.len() - dead) as u64);
                        count(sink.name(), "dead", dead as u64);
                        anyhow::bail!("outbox sink {error}");
                    }
                }
            }
            self.fan_out(&mut tx, &rows).await?;
            sqlx::query(
                "UPDATE outbox SET dispatched_at = now(), attempts = attempts + 1, last_error = NULL \
                 WHERE id = ANY($1)",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            for work in after_commit {
                work.await;
            }
            for sink in &sinks {
                count(sink.name(), "ok", rows.len() as u64);
            }
            // The backup of the writers' own invalidation (cache::invalidation):
            // an event whose writer crashed before invalidating still drops
            // what it made stale, on every replica (at least once).
            let mut tags: Vec<_> = rows
                .iter()
                .flat_map(|r| {
                    crate::cache::invalidation::tags_for_event(
                        tenant.id,
                        &r.topic,
                        &r.aggregate_id,
                        // The outbox payload is {version, etag, data}.
                        &r.payload["data"],
                    )
                })
                .collect();
            tags.sort();
            tags.dedup();
            self.inner.tenancy.cache.invalidate_tags(&tags).await;
            let now = now_us();
            let m = metrics();
            for row in &rows {
                m.dispatch_latency
                    .observe((now - row.created_us).max(0) as f64 / 1e6);
            }
            if self.inner.redis.is_some() {
                count("redis", "ok", rows.len() as u64);
            }
            if rows.len() < settings.batch as usize {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One delivery row per (event, matching enabled endpoint).
    async fn fan_out(
        &self,
        tx: &mut sqlx::PgConnection,
        rows: &[OutboxRow],
    ) -> Result<(), sqlx::Error> {
        let endpoints: Vec<(Uuid, Vec<String>)> =
            sqlx::query_as("SELECT id, event_types FROM webhook_endpoints WHERE enabled")
                .fetch_all(&mut *tx)
                .await?;
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut outbox_ids = Vec::new();
        let mut endpoint_ids = Vec::new();
        for row in rows {
            for (endpoint, filters) in &endpoints {
                if types::matches(filters, &row.topic) {
                    outbox_ids.push(row.id);
                    endpoint_ids.push(*endpoint);
                }
            }
        }
        if outbox_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (outbox_id, endpoint_id) \
             SELECT * FROM unnest($1::int8[], $2::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&outbox_ids)
        .bind(&endpoint_ids)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Schedules the batch's retry (or dead-letters); how many died.
    async fn retry_outbox(
        &self,
        tx: &mut sqlx::PgConnection,
        rows: &[OutboxRow],
        error: &str,
    ) -> Result<usize, sqlx::Error> {
        let s = &self.inner.settings;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut delays = Vec::with_capacity(rows.len());
        let mut dead = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt = (row.attempts.max(0) as u32).saturating_add(1);
            delays.push(backoff(attempt, s.retry_base, s.retry_cap).as_secs_f64());
            dead.push(attempt >= s.max_attempts);
        }
        sqlx::query(
            "UPDATE outbox o SET attempts = o.attempts + 1, last_error = $2, \
                    available_at = now() + make_interval(secs => r.delay), \
                    dead_at = CASE WHEN r.dead THEN now() END \
               FROM unnest($1::int8[], $3::float8[], $4::bool[]) AS r(id, delay, dead) \
              WHERE o.id = r.id",
        )
        .bind(&ids)
        .bind(error)
        .bind(&delays)
        .bind(&dead)
        .execute(&mut *tx)
        .await?;
        Ok(dead.iter().filter(|d| **d).count())
    }

    /// Webhook delivery batches until none is due or the turn is over.
    async fn deliver_webhooks(&self, tenant: &TenantInfo, pool: &PgPool) -> anyhow::Result<bool> {
        let s = &self.inner.settings;
        let due: bool = sqlx::query_scalar(DELIVERIES_DUE).fetch_one(pool).await?;
        if !due {
            return Ok(false);
        }
        for _ in 0..s.batches_per_turn {
            let mut tx = pool.begin().await?;
            let rows: Vec<DeliveryRow> = sqlx::query_as(CLAIM_DELIVERIES)
                .bind(i64::from(s.delivery_batch))
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(false);
            }
            let policy = deliver::policy(s);
            let attempts: Vec<Attempt> = futures::future::join_all(
                rows.iter()
                    .map(|row| deliver::attempt(&self.inner.http, policy, tenant, row)),
            )
            .await;
            let mut ids = Vec::with_capacity(rows.len());
            let mut statuses = Vec::with_capacity(rows.len());
            let mut latencies = Vec::with_capacity(rows.len());
            let mut errors = Vec::with_capacity(rows.len());
            let mut states = Vec::with_capacity(rows.len());
            let mut delays = Vec::with_capacity(rows.len());
            let m = metrics();
            for (row, attempt) in rows.iter().zip(&attempts) {
                let number = (row.delivery_attempts.max(0) as u32).saturating_add(1);
                let state = if attempt.ok {
                    "delivered"
                } else if number >= s.max_attempts {
                    "dead"
                } else {
                    "pending"
                };
                let outcome = match state {
                    "delivered" => "ok",
                    "dead" => "dead",
                    _ => "retry",
                };
                count("webhook", outcome, 1);
                m.webhook_duration
                    .observe(f64::from(attempt.latency_ms) / 1000.0);
                ids.push(row.delivery_id);
                statuses.push(attempt.status);
                latencies.push(attempt.latency_ms);
                errors.push(attempt.error.clone().map(truncate));
                states.push(state);
                delays.push(backoff(number, s.retry_base, s.retry_cap).as_secs_f64());
            }
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, status, latency_ms, error) \
                 SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[])",
            )
            .bind(&ids)
            .bind(&statuses)
            .bind(&latencies)
            .bind(&errors)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, state = r.state, \
                        last_status = r.status, last_error = r.error, \
                        delivered_at = CASE WHEN r.state = 'delivered' THEN now() END, \
                        dead_at = CASE WHEN r.state = 'dead' THEN now() END, \
                        next_attempt_at = CASE WHEN r.state = 'pending' \
                            THEN now() + make_interval(secs => r.delay) ELSE d.next_attempt_at END \
                   FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[], $5::float8[]) \
                        AS r(id, state, status, error, delay) \
                  WHERE d.id = r.id",
            )
            .bind(&ids)
            .bind(&states)
            .bind(&statuses)
            .bind(&errors)
            .bind(&delays)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if rows.len() < s.delivery_batch as usize {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Backlog gauges (every few seconds) and maintenance (every 10 min).
    async fn upkeep(&self, tenant: &TenantInfo, pool: &PgPool) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        let (gauges, maintain) = {
            let mut map = self.inner.upkeep.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(tenant.name.clone()).or_insert((None, None));
            let due = |last: Option<Instant>, every: Duration| {
                last.is_none_or(|at| now.duration_since(at) >= every)
            };
            let gauges = due(entry.0, GAUGES_EVERY);
            let maintain = due(entry.1, MAINTENANCE_EVERY);
            if gauges {
                entry.0 = Some(now);
            }
            if maintain {
                entry.1 = Some(now);
            }
            (gauges, maintain)
        };
        if gauges {
            let backlog = super::admin::read_backlog(pool).await?;
            let labels = TenantLabels {
                tenant: tenant.name.clone(),
            };
            let m = metrics();
            m.pending.get_or_create(&labels).set(backlog.pending_events);
            m.oldest_pending_age
                .get_or_create(&labels)
                .set(backlog.oldest_pending_age_seconds.unwrap_or(0.0));
            m.dead
                .get_or_create(&labels)
                .set(backlog.dead_events + backlog.dead_deliveries);
        }
        if maintain {
            self.maintain(pool).await?;
        }
        Ok(())
    }

    /// Pruning (see the module documentation). Bounded per statement so a
    /// large backlog of old rows is worked off over several runs.
    pub async fn maintain(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let retention = self.inner.settings.retention.as_secs_f64();
        sqlx::query(
            "DELETE FROM outbox WHERE id IN ( \
                SELECT o.id FROM outbox o \
                 WHERE o.dispatched_at < now() - make_interval(secs => $1) \
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                                    WHERE d.outbox_id = o.id AND d.state <> 'delivered') \
                 LIMIT 10000)",
        )
        .bind(retention)
        .execute(pool)
        .await?;
        sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
              WHERE dead_at < now() - make_interval(days => $1) LIMIT 10000)",
        )
        .bind(DEAD_RETENTION_DAYS)
        .execute(pool)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
              WHERE state = 'dead' AND dead_at < now() - make_interval(days => $1) LIMIT 10000)",
        )
        .bind(DEAD_RETENTION_DAYS)
        .execute(pool)
        .await?;
        crate::http::idempotency::prune(pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_full_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        for attempt in 1..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20) - 1)).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= ceiling, "attempt {attempt}");
            }
        }
        // Full jitter: not always the ceiling.
        let draws: HashSet<Duration> = (0..50).map(|_| backoff(5, base, cap)).collect();
        assert!(draws.len() > 5);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        let s = "é".repeat(400);
        let t = truncate(s);
        assert!(t.len() <= MAX_ERROR_LEN);
    }
}
