//! The two-level cache every cached path uses: L1 in process (`moka`,
//! bounded by bytes), L2 in Redis, one `get_or_create` for both.
//!
//! - **Reads**: L1 (fresh, its tags' generations current) → L2 (one
//!   pipelined round trip: the value and its tags' generations) → the
//!   factory. Concurrent callers of one key in a process share one L2 read
//!   and one factory call (single flight). Both levels are filled after.
//! - **Tags**: each tag has a generation counter (Redis `INCR`), and an
//!   entry records the generations of its tags when it was made;
//!   `invalidate_tag` bumps the counter, so it is O(1) however many keys
//!   carry the tag, and every entry made before is invalid from then on.
//! - **Across replicas, at once**: invalidations are published on
//!   [`CHANNEL`]; each replica's subscriber applies them to its L1 (and its
//!   view of tag generations) and acknowledges them, and the writer waits
//!   for every replica's acknowledgement (or for its lease to run out)
//!   before its write is answered ([`coherence`]). So an L1 hit needs no
//!   Redis round trip, and a write acknowledged to its client is seen by
//!   the very next read on any replica (a revoked key is refused at once).
//!   L1 serves only under a live lease: while the subscription is down, L1
//!   is cleared and bypassed, so nothing stale outlives its TTL.
//! - **Redis down**: every call has a short timeout and a failure opens a
//!   circuit for a few seconds; reads then go to the factory (the database)
//!   and requests keep working. Entries made with `serve_stale_for` are
//!   served past their freshness when the factory fails.
//!
//! Keys and tags are built by [`key`] only (conventions in
//! ARCHITECTURE.md, "Cache").

pub mod coherence;
pub mod invalidation;
pub mod key;
mod subscriber;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand::Rng as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

pub use key::{CacheKey, Tag};

/// The Redis channel invalidations travel on (one for all tenants: a
/// message names full keys and tags, which carry the tenant).
pub const CHANNEL: &str = "v1:cache:invalidate";

/// The envelope's format; bump it with the key version when it changes.
const FORMAT: u8 = 1;

/// Longest wait for an invalidation (longer than reads: it must not be lost
/// to a slow moment).
const INVALIDATION_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a failed invalidation is retried in the background.
const INVALIDATION_RETRY_FOR: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Off: every call runs its factory (the `--cache off` switch).
    pub enabled: bool,
    /// Off: no in-process level, every read goes to Redis first (the
    /// `--cache l2` switch, for measuring L2 alone).
    pub l1_enabled: bool,
    /// L1 bound, in bytes of encoded values.
    pub l1_max_bytes: u64,
    /// Values larger than this are not cached at all.
    pub max_value_bytes: usize,
    /// Longest wait for any Redis call.
    pub redis_timeout: Duration,
    /// How long Redis is left alone after a failure.
    pub breaker_cooldown: Duration,
    /// TTLs are shortened by up to this fraction, at random, so entries
    /// made together do not expire together.
    pub jitter: f64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_enabled: true,
            l1_max_bytes: 64 << 20,
            max_value_bytes: 1 << 20,
            redis_timeout: Duration::from_millis(50),
            breaker_cooldown: Duration::from_secs(5),
            jitter: 0.1,
        }
    }
}

/// Per-entry lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct EntryOptions {
    pub l1_ttl: Duration,
    pub l2_ttl: Duration,
    /// After its freshness, an L1 entry may still be served this long when
    /// the factory fails (zero: never).
    pub serve_stale_for: Duration,
    /// Kept in L1 only where every replica's invalidation reaches it at
    /// once, i.e. with Redis ([`coherence`]); without Redis another
    /// replica's change could not be heard, so the entry is never served
    /// from memory (API keys: a revoked key must be refused at once).
    pub strict: bool,
}

impl EntryOptions {
    pub const fn new(l1_ttl: Duration, l2_ttl: Duration) -> Self {
        Self {
            l1_ttl,
            l2_ttl,
            serve_stale_for: Duration::ZERO,
            strict: false,
        }
    }

    pub const fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    pub const fn serve_stale_for(mut self, window: Duration) -> Self {
        self.serve_stale_for = window;
        self
    }
}

/// A circuit breaker for Redis: after a failure, calls are skipped until
/// the cooldown is over, so an outage costs one timeout, not one per call.
pub struct Breaker {
    cooldown: Duration,
    epoch: Instant,
    open_until_ms: AtomicU64,
}

impl Breaker {
    pub fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn allows(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    pub fn trip(&self) {
        let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(self.now_ms().saturating_add(cooldown), Ordering::Relaxed);
    }

    pub fn reset(&self) {
        self.open_until_ms.store(0, Ordering::Relaxed);
    }
}

type AnyValue = Arc<dyn Any + Send + Sync>;

/// What a flight made: the value and its tags' generations.
type Made = (AnyValue, Vec<(Tag, u64)>);

/// An L2 read: the encoded value, and the generation of each tag.
type L2Reply = (Option<Vec<u8>>, Vec<Option<u64>>);

struct L1Entry {
    value: AnyValue,
    weight: u32,
    tags: Vec<(Tag, u64)>,
    fresh_until: Instant,
    stale_until: Instant,
    /// The subscription epoch it was made in (see [`Shared::epoch`]).
    epoch: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    level: &'static str,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

struct Metrics {
    lookups: Family<LookupLabels, Counter>,
    factory_seconds: Family<KindLabels, Histogram>,
    evictions: Counter,
    invalidations_received: Counter,
    acknowledgement_seconds: Histogram,
    unacknowledged: Counter,
    l1_bytes: Gauge,
}

impl Metrics {
    fn new(registry: Option<&mut Registry>) -> Self {
        let metrics = Self {
            lookups: Family::default(),
            factory_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
            }),
            evictions: Counter::default(),
            invalidations_received: Counter::default(),
            acknowledgement_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            unacknowledged: Counter::default(),
            l1_bytes: Gauge::default(),
        };
        if let Some(registry) = registry {
            let registry = registry.sub_registry_with_prefix("strata_cache");
            registry.register(
                "lookups",
                "Cache lookups by level (l1, l2), kind and outcome (hit, miss)",
                metrics.lookups.clone(),
            );
            registry.register(
                "factory_seconds",
                "Time to compute a missed value (the database), by kind",
                metrics.factory_seconds.clone(),
            );
            registry.register(
                "l1_evictions",
                "L1 entries evicted for size",
                metrics.evictions.clone(),
            );
            registry.register(
                "invalidations_received",
                "Invalidation messages received from other replicas",
                metrics.invalidations_received.clone(),
            );
            registry.register(
                "acknowledgement_seconds",
                "Time a write waited for every replica to acknowledge its invalidation",
                metrics.acknowledgement_seconds.clone(),
            );
            registry.register(
                "unacknowledged_invalidations",
                "Invalidations a replica did not acknowledge before its lease ran out",
                metrics.unacknowledged.clone(),
            );
            registry.register(
                "l1_bytes",
                "Bytes held by L1 (encoded size)",
                metrics.l1_bytes.clone(),
            );
        }
        metrics
    }

    fn lookup(&self, level: &'static str, kind: &'static str, hit: bool) {
        self.lookups
            .get_or_create(&LookupLabels {
                level,
                kind,
                outcome: if hit { "hit" } else { "miss" },
            })
            .inc();
    }
}

struct Shared {
    settings: CacheSettings,
    l1: moka::sync::Cache<String, Arc<L1Entry>>,
    redis: Option<ConnectionManager>,
    breaker: Breaker,
    invalidate_script: redis::Script,
    renew_script: redis::Script,
    /// Tag → generation, as last seen (Redis, or our own bumps).
    generations: Mutex<HashMap<Tag, u64>>,
    /// Key → the one computation in flight for it (its value, and the
    /// generations of its tags it was made with).
    flights: Mutex<HashMap<String, Arc<OnceCell<Made>>>>,
    /// Bumped whenever invalidations may have been missed (subscription
    /// lost or re-made): entries of an older epoch are never served.
    epoch: AtomicU64,
    /// This replica's lease and the acknowledgements it waits for; L1
    /// serves only under the lease.
    coherence: coherence::Coherence,
    metrics: Metrics,
}

/// The two-level cache (cheap to clone).
#[derive(Clone)]
pub struct HybridCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HybridCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridCache")
            .field("enabled", &self.shared.settings.enabled)
            .field("redis", &self.shared.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// What travels on [`CHANNEL`].
#[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
struct Invalidation {
    /// Keys to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    k: Vec<String>,
    /// Tags and their new generations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    t: Vec<(String, u64)>,
    /// The writer waiting for acknowledgements, and its sequence number.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    n: Option<String>,
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    v: u8,
    tags: &'a [(Tag, u64)],
    value: &'a T,
}

#[derive(serde::Deserialize)]
struct Envelope<T> {
    v: u8,
    tags: Vec<(String, u64)>,
    value: T,
}

impl Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl HybridCache {
    /// A cache; `redis` None: L1 only (one process). Call
    /// [`HybridCache::spawn_subscriber`] when there is Redis.
    pub fn new(
        settings: CacheSettings,
        redis: Option<ConnectionManager>,
        registry: Option<&mut Registry>,
    ) -> Self {
        let metrics = Metrics::new(registry);
        let evictions = metrics.evictions.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(settings.l1_max_bytes)
            .weigher(|_key: &String, entry: &Arc<L1Entry>| entry.weight)
            .eviction_listener(move |_key, _value, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let has_redis = redis.is_some();
        Self {
            shared: Arc::new(Shared {
                breaker: Breaker::new(settings.breaker_cooldown),
                invalidate_script: redis::Script::new(coherence::INVALIDATE_SCRIPT),
                renew_script: redis::Script::new(coherence::RENEW_SCRIPT),
                settings,
                l1,
                redis,
                generations: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                epoch: AtomicU64::new(0),
                // Without Redis there is no one to hear from: L1 is safe.
                coherence: coherence::Coherence::new(!has_redis),
                metrics,
            }),
        }
    }

    /// A cache that caches nothing (tests of other layers, `--cache off`).
    pub fn disabled() -> Self {
        Self::new(
            CacheSettings {
                enabled: false,
                ..CacheSettings::default()
            },
            None,
            None,
        )
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.settings.enabled
    }

    /// The value of `key`: from L1, L2, or `factory` (once per key across
    /// concurrent callers in this process). `tags` must be the same for
    /// every call with this key.
    pub async fn get_or_create<T, E, F, Fut>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        options: EntryOptions,
        factory: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        E: From<CacheError>,
        Fut: Future<Output = Result<T, E>>,
    {
        let shared = &self.shared;
        if !shared.settings.enabled {
            return factory().await;
        }
        let kind = key.kind();
        let stale = match self.l1_lookup::<T>(key, options) {
            L1Lookup::Fresh(value) => {
                shared.metrics.lookup("l1", kind, true);
                return Ok(value);
            }
            L1Lookup::Stale(value) => Some(value),
            L1Lookup::Miss => None,
        };
        shared.metrics.lookup("l1", kind, false);

        let flight = flight_key::<T>(key);
        let mut factory = Some(factory);
        let (mut result, led) = self
            .join_or_lead(&flight, key, tags, options, &mut factory)
            .await;
        // A flight this caller joined may have read before a bump that was
        // acknowledged before this caller arrived (a revoked key would pass
        // once): then it takes part in a new flight, which started after it
        // arrived. Known locally, because the bump was applied here before
        // it was acknowledged; unknowable while this replica cannot hear
        // invalidations, when only strict entries insist.
        let outdated = !led
            && matches!(&result, Ok((_, made_with))
                if (options.strict || self.l1_serving())
                    && !self.generations_current(made_with));
        if outdated {
            (result, _) = self
                .join_or_lead(&flight, key, tags, options, &mut factory)
                .await;
        }
        match result {
            Ok((value, _)) => value
                .downcast_ref::<T>()
                .cloned()
                .ok_or_else(|| E::from(CacheError::TypeMismatch(key.kind()))),
            Err(error) => match stale {
                Some(value) => {
                    tracing::warn!(
                        kind = key.kind(),
                        "serving a stale cache entry: the factory failed"
                    );
                    Ok(value)
                }
                None => Err(error),
            },
        }
    }

    /// Joins the flight of `flight` in progress, or leads a new one with
    /// `factory` (taken then); true when it led.
    async fn join_or_lead<T, E, F, Fut>(
        &self,
        flight: &str,
        key: &CacheKey,
        tags: &[Tag],
        options: EntryOptions,
        factory: &mut Option<F>,
    ) -> (Result<Made, E>, bool)
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let flights = &self.shared.flights;
        let cell = flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(flight.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let mut led = false;
        let result = cell
            .get_or_try_init(|| {
                led = true;
                let factory = factory.take().expect("a flight is led once per caller");
                self.fill::<T, E, F, Fut>(key, tags, options, factory)
            })
            .await
            .cloned();
        let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights
            .get(flight)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            flights.remove(flight);
        }
        (result, led)
    }

    /// Whether entries made with `options` may be kept in L1: strict ones
    /// only where another replica's change can be heard (with Redis).
    fn keeps_in_memory(&self, options: EntryOptions) -> bool {
        !options.strict || self.shared.redis.is_some()
    }

    /// L2, then the factory; fills both levels. Runs once per flight.
    async fn fill<T, E, F, Fut>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        options: EntryOptions,
        factory: F,
    ) -> Result<Made, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let shared = &self.shared;
        let kind = key.kind();
        // Generations are read before the data, so an invalidation that
        // lands in between leaves this entry already outdated, never fresh.
        let epoch = shared.epoch.load(Ordering::Acquire);
        let (from_l2, generations) = self.l2_read::<T>(key, tags).await;
        if let Some((value, weight)) = from_l2 {
            shared.metrics.lookup("l2", kind, true);
            let value: AnyValue = Arc::new(value);
            self.l1_insert(key, value.clone(), weight, &generations, options, epoch);
            return Ok((value, generations));
        }
        if shared.redis.is_some() {
            shared.metrics.lookup("l2", kind, false);
        }
        let started = Instant::now();
        let value = factory().await?;
        shared
            .metrics
            .factory_seconds
            .get_or_create(&KindLabels { kind })
            .observe(started.elapsed().as_secs_f64());
        let encoded = rmp_serde::to_vec(&EnvelopeRef {
            v: FORMAT,
            tags: &generations,
            value: &value,
        });
        let value: AnyValue = Arc::new(value);
        match encoded {
            Ok(bytes) if bytes.len() <= shared.settings.max_value_bytes => {
                let weight = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                self.l2_write(key, bytes, options.l2_ttl).await;
                self.l1_insert(key, value.clone(), weight, &generations, options, epoch);
            }
            Ok(_) => {} // too large to cache: served, not kept
            Err(error) => tracing::warn!(%error, kind, "cache: value not encodable"),
        }
        Ok((value, generations))
    }

    fn l1_lookup<T: Clone + 'static>(&self, key: &CacheKey, options: EntryOptions) -> L1Lookup<T> {
        let shared = &self.shared;
        let now = Instant::now();
        if !shared.settings.l1_enabled
            || !self.keeps_in_memory(options)
            || !shared.coherence.serving_at(now)
        {
            return L1Lookup::Miss;
        }
        let Some(entry) = shared.l1.get(key.as_str()) else {
            return L1Lookup::Miss;
        };
        let Some(value) = entry.value.downcast_ref::<T>().cloned() else {
            return L1Lookup::Miss;
        };
        let current = entry.epoch == shared.epoch.load(Ordering::Acquire)
            && self.generations_current(&entry.tags);
        if !current {
            // Invalidated (or possibly missed an invalidation): never
            // served, not even as stale when the factory fails — a deleted
            // document's factory fails with 404 and must not get the old
            // row back. `serve_stale_for` covers entries past their TTL.
            L1Lookup::Miss
        } else if now < entry.fresh_until {
            L1Lookup::Fresh(value)
        } else if now < entry.stale_until {
            L1Lookup::Stale(value)
        } else {
            L1Lookup::Miss
        }
    }

    fn generations_current(&self, tags: &[(Tag, u64)]) -> bool {
        let known = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A tag we no longer know (cleared after a lost subscription) is not
        // current: the entry is re-validated through L2.
        tags.iter()
            .all(|(tag, generation)| known.get(tag) == Some(generation))
    }

    fn l1_insert(
        &self,
        key: &CacheKey,
        value: AnyValue,
        weight: u32,
        tags: &[(Tag, u64)],
        options: EntryOptions,
        epoch: u64,
    ) {
        let shared = &self.shared;
        if !shared.settings.l1_enabled || !self.keeps_in_memory(options) {
            return;
        }
        if epoch != shared.epoch.load(Ordering::Acquire) {
            return; // invalidations may have been missed while it was made
        }
        let now = Instant::now();
        let fresh_until = now + self.jittered(options.l1_ttl);
        shared.l1.insert(
            key.as_str().to_string(),
            Arc::new(L1Entry {
                value,
                weight,
                tags: tags.to_vec(),
                fresh_until,
                stale_until: fresh_until + options.serve_stale_for,
                epoch,
            }),
        );
        shared
            .metrics
            .l1_bytes
            .set(i64::try_from(shared.l1.weighted_size()).unwrap_or(i64::MAX));
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let jitter = self.shared.settings.jitter.clamp(0.0, 0.5);
        if jitter == 0.0 || ttl.is_zero() {
            return ttl;
        }
        ttl.mul_f64(1.0 - rand::rng().random_range(0.0..jitter))
    }

    fn redis(&self) -> Option<ConnectionManager> {
        let redis = self.shared.redis.clone()?;
        self.shared.breaker.allows().then_some(redis)
    }

    async fn redis_call<R>(&self, call: impl Future<Output = redis::RedisResult<R>>) -> Option<R> {
        match tokio::time::timeout(self.shared.settings.redis_timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cache: Redis failed; using the database");
                self.shared.breaker.trip();
                None
            }
            Err(_) => {
                tracing::warn!("cache: Redis timed out; using the database");
                self.shared.breaker.trip();
                None
            }
        }
    }

    /// The value from L2 if valid, and the tags' current generations (from
    /// the same round trip, or as known locally when Redis is unavailable).
    async fn l2_read<T: DeserializeOwned>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
    ) -> (Option<(T, u32)>, Vec<(Tag, u64)>) {
        let Some(mut redis) = self.redis() else {
            return (None, self.local_generations(tags));
        };
        let mut pipe = redis::pipe();
        pipe.get(key.as_str());
        for tag in tags {
            pipe.get(tag.generation_key());
        }
        let reply: Option<L2Reply> = self
            .redis_call(async {
                let mut values: Vec<redis::Value> = pipe.query_async(&mut redis).await?;
                let first = if values.is_empty() {
                    redis::Value::Nil
                } else {
                    values.remove(0)
                };
                let bytes: Option<Vec<u8>> = redis::from_redis_value(first)?;
                let generations = values
                    .into_iter()
                    .map(redis::from_redis_value::<Option<u64>>)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((bytes, generations))
            })
            .await;
        let Some((bytes, fetched)) = reply else {
            return (None, self.local_generations(tags));
        };
        let generations: Vec<(Tag, u64)> = tags
            .iter()
            .cloned()
            .zip(fetched.into_iter().map(Option::unwrap_or_default))
            .collect();
        self.learn_generations(&generations);
        let value = bytes.and_then(|bytes| {
            let weight = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let envelope: Envelope<T> = rmp_serde::from_slice(&bytes).ok()?;
            let valid = envelope.v == FORMAT
                && envelope.tags.len() == generations.len()
                && envelope
                    .tags
                    .iter()
                    .zip(&generations)
                    .all(|((tag, g), (current, cg))| tag == current.as_str() && g == cg);
            valid.then_some((envelope.value, weight))
        });
        (value, generations)
    }

    async fn l2_write(&self, key: &CacheKey, bytes: Vec<u8>, ttl: Duration) {
        let Some(mut redis) = self.redis() else {
            return;
        };
        let ms = u64::try_from(self.jittered(ttl).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let _: Option<()> = self
            .redis_call(async {
                redis::cmd("SET")
                    .arg(key.as_str())
                    .arg(bytes)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut redis)
                    .await
            })
            .await;
    }

    fn local_generations(&self, tags: &[Tag]) -> Vec<(Tag, u64)> {
        let mut known = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        tags.iter()
            .map(|tag| (tag.clone(), *known.entry(tag.clone()).or_insert(0)))
            .collect()
    }

    /// Generations only move forward (messages may arrive out of order).
    fn learn_generations(&self, generations: &[(Tag, u64)]) {
        let mut known = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (tag, generation) in generations {
            let entry = known.entry(tag.clone()).or_insert(*generation);
            *entry = (*entry).max(*generation);
        }
    }

    /// Every entry carrying `tag`, on every replica, is invalid from now
    /// on (O(1): one counter). Call after the change committed.
    pub async fn invalidate_tag(&self, tag: &Tag) {
        self.invalidate_tags(std::slice::from_ref(tag)).await;
    }

    /// Bumps each tag's generation and tells every replica, in one Redis
    /// round trip (a script: `INCR` each, then `PUBLISH`), then waits until
    /// every replica with a live lease has applied it ([`coherence`]): on
    /// return, no replica serves an entry it made stale. Invalidations
    /// ignore the read circuit and get a longer timeout than reads: a slow
    /// moment must not lose one. When Redis cannot be reached, this replica
    /// bumps its own view at once and a background task keeps trying, so
    /// other replicas learn of it when Redis is back (they bypass L1
    /// meanwhile: their subscription and lease are down too).
    pub async fn invalidate_tags(&self, tags: &[Tag]) {
        if !self.shared.settings.enabled || tags.is_empty() {
            return;
        }
        if self.shared.redis.is_none() {
            self.bump_locally(tags);
            return;
        }
        if !self.try_invalidate(tags).await {
            self.bump_locally(tags);
            let cache = self.clone();
            let tags = tags.to_vec();
            tokio::spawn(async move { cache.retry_invalidation(tags).await });
        }
    }

    async fn try_invalidate(&self, tags: &[Tag]) -> bool {
        let shared = &self.shared;
        let Some(mut redis) = shared.redis.clone() else {
            return false;
        };
        // Registered before sending: an acknowledgement may arrive before
        // the script's answer does.
        let (seq, acknowledged) = shared.coherence.expect();
        let mut invocation = shared.invalidate_script.prepare_invoke();
        for tag in tags {
            invocation.key(tag.generation_key()).arg(tag.as_str());
        }
        invocation
            .key(coherence::REPLICAS)
            .arg(CHANNEL)
            .arg(&shared.coherence.id)
            .arg(seq);
        let call = invocation.invoke_async::<(Vec<u64>, Vec<(String, i64)>)>(&mut redis);
        let (generations, leases) = match tokio::time::timeout(INVALIDATION_TIMEOUT, call).await {
            Ok(Ok((generations, leases))) if generations.len() == tags.len() => {
                (generations, leases)
            }
            failed => {
                shared.coherence.forget(seq);
                match failed {
                    Ok(Err(error)) => tracing::warn!(
                        %error,
                        "cache: invalidation not sent; retrying in the background"
                    ),
                    Err(_) => {
                        tracing::warn!("cache: invalidation timed out; retrying in the background")
                    }
                    Ok(Ok(_)) => {} // a reply of the wrong shape: retried
                }
                return false;
            }
        };
        let bumped: Vec<(Tag, u64)> = tags.iter().cloned().zip(generations).collect();
        self.learn_generations(&bumped);
        let started = Instant::now();
        if !shared.coherence.wait(seq, acknowledged, leases).await {
            shared.metrics.unacknowledged.inc();
            tracing::warn!(
                "cache: a replica did not acknowledge an invalidation; waited for its lease to end"
            );
        }
        shared
            .metrics
            .acknowledgement_seconds
            .observe(started.elapsed().as_secs_f64());
        true
    }

    async fn retry_invalidation(&self, tags: Vec<Tag>) {
        let deadline = Instant::now() + INVALIDATION_RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        while Instant::now() < deadline {
            tokio::time::sleep(backoff).await;
            if self.try_invalidate(&tags).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tracing::error!(
            tags = tags.len(),
            "cache: invalidation abandoned; entries expire with their TTL"
        );
    }

    fn bump_locally(&self, tags: &[Tag]) {
        let mut known = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for tag in tags {
            *known.entry(tag.clone()).or_insert(0) += 1;
        }
    }

    /// Drops one key from both levels, on every replica.
    pub async fn remove(&self, key: &CacheKey) {
        if !self.shared.settings.enabled {
            return;
        }
        self.shared.l1.invalidate(key.as_str());
        let Some(mut redis) = self.shared.redis.clone() else {
            return;
        };
        let payload = serde_json::json!({ "k": [key.as_str()] }).to_string();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(key.as_str())
            .ignore()
            .publish(CHANNEL, payload)
            .ignore();
        let call = pipe.query_async::<()>(&mut redis);
        if !matches!(
            tokio::time::timeout(INVALIDATION_TIMEOUT, call).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("cache: key removal not sent to other replicas");
        }
    }

    /// Applies a message from [`CHANNEL`] (ours or another replica's), then
    /// acknowledges it to its writer, who is waiting for that.
    fn apply(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Invalidation>(payload) else {
            tracing::warn!("cache: unreadable invalidation message ignored");
            return;
        };
        self.shared.metrics.invalidations_received.inc();
        for key in &message.k {
            self.shared.l1.invalidate(key);
        }
        let generations: Vec<(Tag, u64)> = message
            .t
            .into_iter()
            .map(|(tag, g)| (Tag::from_wire(tag), g))
            .collect();
        self.learn_generations(&generations);
        if let (Some(writer), Some(seq)) = (message.from, message.n)
            && writer != self.shared.coherence.id
            && let Some(mut redis) = self.shared.redis.clone()
        {
            let ack = coherence::ack(&self.shared.coherence.id, &seq);
            tokio::spawn(async move {
                let publish = redis.publish::<_, _, ()>(coherence::own_channel(&writer), ack);
                // Lost: the writer waits for our lease to end instead.
                let _ = tokio::time::timeout(INVALIDATION_TIMEOUT, publish).await;
            });
        }
    }

    /// Renews this replica's lease; the renewal's barrier comes back
    /// through the subscription as `token` (see [`coherence`]).
    async fn renew_lease(&self, token: u64) {
        let shared = &self.shared;
        let Some(mut redis) = shared.redis.clone() else {
            return;
        };
        let lease = u64::try_from(coherence::LEASE.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = shared.renew_script.prepare_invoke();
        invocation
            .key(coherence::REPLICAS)
            .arg(&shared.coherence.id)
            .arg(lease)
            .arg(coherence::own_channel(&shared.coherence.id))
            .arg(coherence::barrier(token));
        let call = invocation.invoke_async::<()>(&mut redis);
        if let Ok(Err(error)) = tokio::time::timeout(INVALIDATION_TIMEOUT, call).await {
            tracing::debug!(%error, "cache: lease not renewed");
        }
    }

    /// Gives up the lease, so writers stop waiting for this replica.
    async fn withdraw(&self) {
        let Some(mut redis) = self.shared.redis.clone() else {
            return;
        };
        let call = redis.zrem::<_, _, ()>(coherence::REPLICAS, &self.shared.coherence.id);
        let _ = tokio::time::timeout(INVALIDATION_TIMEOUT, call).await;
    }

    /// Shutting down: stops serving from L1 and leaves the replicas'
    /// set, so writes stop waiting for this replica's acknowledgements.
    pub async fn leave(&self) {
        self.shared.coherence.leave();
        self.withdraw().await;
    }

    /// Invalidations may have been missed: nothing in L1 can be trusted.
    fn forget_everything(&self) {
        let shared = &self.shared;
        shared.coherence.suspend();
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        shared.l1.invalidate_all();
        shared
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        shared.metrics.l1_bytes.set(0);
    }

    /// Listens on [`CHANNEL`] until the process ends (reconnecting), so
    /// other replicas' invalidations reach this L1.
    pub fn spawn_subscriber(&self, client: redis::Client) -> tokio::task::JoinHandle<()> {
        tokio::spawn(subscriber::run(self.clone(), client))
    }

    /// Whether L1 serves now (false while the subscription or the lease
    /// is down).
    pub fn l1_serving(&self) -> bool {
        self.shared.coherence.serving()
    }
}

enum L1Lookup<T> {
    Fresh(T),
    Stale(T),
    Miss,
}

/// A flight per key *and* value type, so a cell always holds its caller's
/// type (one key used with two types would be a bug; it costs a miss, not
/// a wrong value).
fn flight_key<T: 'static>(key: &CacheKey) -> String {
    format!("{}#{}", key.as_str(), std::any::type_name::<T>())
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache: a {0} value had an unexpected type")]
    TypeMismatch(&'static str),
}

impl From<CacheError> for crate::http::ApiError {
    fn from(error: CacheError) -> Self {
        crate::http::ApiError::internal(anyhow::Error::new(error))
    }
}
