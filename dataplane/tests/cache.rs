//! The two-level cache against real Redis servers: two `HybridCache`s with
//! their own connections and subscribers stand for two replicas. Each test
//! runs on a private `redis-server` it may kill (needs the binary the
//! stack installs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use strata_dataplane::cache::{
    CacheError, CacheKey, CacheSettings, EntryOptions, HybridCache, Tag,
};
use strata_tests::process::PrivateRedis;
use uuid::Uuid;

#[derive(Debug)]
struct Failed;

impl From<CacheError> for Failed {
    fn from(_: CacheError) -> Self {
        Failed
    }
}

const LONG: EntryOptions = EntryOptions::new(Duration::from_secs(60), Duration::from_secs(60));

async fn replica(redis: &PrivateRedis) -> HybridCache {
    let client = redis::Client::open(redis.url.as_str()).expect("url");
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .expect("connect");
    let cache = HybridCache::new(CacheSettings::default(), Some(manager), None);
    cache.spawn_subscriber(client);
    wait_until("subscribed", || cache.l1_serving()).await;
    cache
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A factory that counts its calls and answers `value`.
fn counted(
    calls: &Arc<AtomicUsize>,
    value: &str,
) -> impl std::future::Future<Output = Result<String, Failed>> + use<> {
    let calls = calls.clone();
    let value = value.to_string();
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    }
}

fn doc_key(tenant: Uuid, id: &str) -> (CacheKey, Vec<Tag>) {
    let key = CacheKey::tenant(tenant, "document")
        .id("books")
        .id(id)
        .vary("role", "viewer")
        .build();
    let tags = vec![
        Tag::whole_tenant(tenant),
        Tag::tenant(tenant, "document", ["books", id]),
    ];
    (key, tags)
}

#[tokio::test]
async fn l1_then_l2_then_the_factory_once() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    let tenant = Uuid::new_v4();
    let (key, tags) = doc_key(tenant, "dune");
    let calls = Arc::new(AtomicUsize::new(0));
    let first = a
        .get_or_create(&key, &tags, LONG, || counted(&calls, "v1"))
        .await
        .expect("value");
    assert_eq!(first, "v1");
    // L1 on A, L2 on B: the factory is not called again.
    let again = a
        .get_or_create(&key, &tags, LONG, || counted(&calls, "other"))
        .await
        .expect("value");
    let on_b = b
        .get_or_create(&key, &tags, LONG, || counted(&calls, "other"))
        .await
        .expect("value");
    assert_eq!((again.as_str(), on_b.as_str()), ("v1", "v1"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_invalidation_reaches_the_other_replica_quickly() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    let tenant = Uuid::new_v4();
    let (key, tags) = doc_key(tenant, "dune");
    let mut latencies = Vec::new();
    for round in 0..1_000u32 {
        let version = round.to_string();
        // B has the current version in its L1.
        let seen = b
            .get_or_create(&key, &tags, LONG, || async {
                Ok::<_, Failed>(version.clone())
            })
            .await
            .expect("value");
        assert_eq!(seen, version);
        // A writes (the database now holds the next version) and
        // invalidates the document's tag.
        let next = (round + 1).to_string();
        a.invalidate_tag(&tags[1]).await;
        let started = Instant::now();
        loop {
            let now = b
                .get_or_create(&key, &tags, LONG, || async {
                    Ok::<_, Failed>(next.clone())
                })
                .await
                .expect("value");
            if now == next {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "round {round}: B still serves {now} after 1 s"
            );
            tokio::task::yield_now().await;
        }
        latencies.push(started.elapsed());
        // Next round's "database" answers `next`; make B cache it.
        let _ = b
            .get_or_create(&key, &tags, LONG, || async {
                Ok::<_, Failed>(next.clone())
            })
            .await;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "invalidation visible on the other replica: p50 {:?}, p99 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        p99,
        latencies[latencies.len() - 1]
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
}

#[tokio::test]
async fn two_hundred_concurrent_misses_make_one_factory_call() {
    let redis = PrivateRedis::start().await;
    let cache = replica(&redis).await;
    let (key, tags) = doc_key(Uuid::new_v4(), "cold");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let cache = cache.clone();
        let key = key.clone();
        let tags = tags.clone();
        let calls = calls.clone();
        tasks.spawn(async move {
            cache
                .get_or_create(&key, &tags, LONG, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // A slow database read, so the callers really overlap.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Failed>("cold".to_string())
                })
                .await
                .expect("value")
        });
    }
    while let Some(value) = tasks.join_next().await {
        assert_eq!(value.expect("task"), "cold");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn two_tenants_never_share_an_entry() {
    let redis = PrivateRedis::start().await;
    let cache = replica(&redis).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (key_a, tags_a) = doc_key(a, "same-id");
    let (key_b, tags_b) = doc_key(b, "same-id");
    let got_a = cache
        .get_or_create(&key_a, &tags_a, LONG, || async {
            Ok::<_, Failed>("tenant a".to_string())
        })
        .await
        .expect("a");
    let got_b = cache
        .get_or_create(&key_b, &tags_b, LONG, || async {
            Ok::<_, Failed>("tenant b".to_string())
        })
        .await
        .expect("b");
    assert_eq!((got_a.as_str(), got_b.as_str()), ("tenant a", "tenant b"));
    // Invalidating all of A leaves B's entry alone.
    cache.invalidate_tag(&Tag::whole_tenant(a)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let again_b = cache
        .get_or_create(&key_b, &tags_b, LONG, || counted(&calls, "refetched"))
        .await
        .expect("b");
    assert_eq!(again_b, "tenant b");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redis_down_keeps_answering_and_recovers_without_restart() {
    let mut redis = PrivateRedis::start().await;
    let cache = replica(&redis).await;
    let tenant = Uuid::new_v4();
    let (key, tags) = doc_key(tenant, "dune");
    let calls = Arc::new(AtomicUsize::new(0));
    cache
        .get_or_create(&key, &tags, LONG, || counted(&calls, "v"))
        .await
        .expect("value");
    redis.stop();
    // The subscription is gone: L1 is off, every read goes to the factory,
    // fast (bounded timeouts, then the open circuit) and without errors.
    wait_until("L1 off", || !cache.l1_serving()).await;
    let started = Instant::now();
    for _ in 0..50 {
        let value = cache
            .get_or_create(&key, &tags, LONG, || counted(&calls, "v"))
            .await
            .expect("answers without Redis");
        assert_eq!(value, "v");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 51, "no L1 while unsubscribed");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "50 reads took {:?}",
        started.elapsed()
    );
    // Redis back: the subscriber reconnects and caching resumes.
    redis.restart().await;
    wait_until("L1 back", || cache.l1_serving()).await;
    // The circuit may still be open for a moment; then hits resume.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = calls.load(Ordering::SeqCst);
        for _ in 0..2 {
            cache
                .get_or_create(&key, &tags, LONG, || counted(&calls, "v"))
                .await
                .expect("value");
        }
        if calls.load(Ordering::SeqCst) - before <= 1 {
            break; // the second read was a hit
        }
        assert!(Instant::now() < deadline, "hits did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_failing_factory_gets_the_stale_entry_only_when_marked() {
    let cache = HybridCache::new(CacheSettings::default(), None, None);
    let tenant = Uuid::new_v4();
    let short = EntryOptions::new(Duration::from_millis(50), Duration::from_millis(50));
    let (key, tags) = doc_key(tenant, "stale");
    cache
        .get_or_create(
            &key,
            &tags,
            short.serve_stale_for(Duration::from_secs(60)),
            || async { Ok::<_, Failed>("old".to_string()) },
        )
        .await
        .expect("value");
    let (plain, plain_tags) = doc_key(tenant, "plain");
    cache
        .get_or_create(&plain, &plain_tags, short, || async {
            Ok::<_, Failed>("old".to_string())
        })
        .await
        .expect("value");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let stale = cache
        .get_or_create(&key, &tags, short, || async { Err::<String, _>(Failed) })
        .await
        .expect("stale served");
    assert_eq!(stale, "old");
    assert!(
        cache
            .get_or_create(&plain, &plain_tags, short, || async {
                Err::<String, _>(Failed)
            })
            .await
            .is_err(),
        "not marked: the error stands"
    );
}

/// A write's invalidation returns once every replica applied it, so the
/// other replica's very next read, without any wait, misses its L1.
#[tokio::test]
async fn an_invalidation_is_seen_by_the_other_replicas_very_next_read() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    let tenant = Uuid::new_v4();
    let key = CacheKey::tenant(tenant, "api-key")
        .id("0123456789abcdef")
        .build();
    let tags = [Tag::tenant(tenant, "api-key", ["0123456789abcdef"])];
    let calls = Arc::new(AtomicUsize::new(0));
    for round in 0..200 {
        let strict = if round % 2 == 0 { LONG } else { LONG.strict() };
        b.get_or_create(&key, &tags, strict, || counted(&calls, "active"))
            .await
            .expect("value");
        let hit = calls.load(Ordering::SeqCst);
        b.get_or_create(&key, &tags, strict, || counted(&calls, "active"))
            .await
            .expect("value");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            hit,
            "round {round}: no L1 hit"
        );
        let before = calls.load(Ordering::SeqCst);
        // B has it in L1 now; A revokes, and B's next read, without any
        // wait for the pub/sub message, goes back to the database.
        a.invalidate_tag(&tags[0]).await;
        b.get_or_create(&key, &tags, strict, || counted(&calls, "revoked"))
            .await
            .expect("value");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 1,
            "round {round}: the read after the revocation was served from L1"
        );
    }
}

/// Under load (L1 hits, refills in flight), a change acknowledged to its
/// writer is what the other replica's next read returns, every time; and
/// the L1 hits cost no Redis round trip.
#[tokio::test]
async fn under_load_the_next_read_sees_an_acknowledged_change_and_hits_cost_no_redis_read() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    let tenant = Uuid::new_v4();
    let key = CacheKey::tenant(tenant, "api-key")
        .id("fedcba9876543210")
        .build();
    let tags = [Tag::tenant(tenant, "api-key", ["fedcba9876543210"])];
    let strict = LONG.strict();
    // The "database": its version, which a factory reads when it runs.
    let db = Arc::new(AtomicUsize::new(0));
    let read_db = |db: &Arc<AtomicUsize>| {
        let db = db.clone();
        move || async move { Ok::<_, Failed>(format!("v{}", db.load(Ordering::SeqCst))) }
    };
    b.get_or_create(&key, &tags, strict, read_db(&db))
        .await
        .expect("value");

    // 32 tasks keep B reading (and, after each change, refilling) the key,
    // so flights are in progress when A invalidates.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..32 {
        let (b, key, tags, db, stop, reads) = (
            b.clone(),
            key.clone(),
            tags.clone(),
            db.clone(),
            stop.clone(),
            reads.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                b.get_or_create(&key, &tags, strict, read_db(&db))
                    .await
                    .expect("value");
                reads.fetch_add(1, Ordering::Relaxed);
                // An L1 hit awaits nothing: let the runtime's other tasks
                // (the subscriber, the invalidations) run, as a server's
                // I/O would.
                tokio::task::yield_now().await;
            }
        }));
    }
    let read_calls = || async {
        let mut conn = redis_connection(&redis).await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("info");
        // Every command that reads a value or a generation.
        ["cmdstat_get:calls=", "cmdstat_mget:calls="]
            .iter()
            .map(|prefix| {
                info.lines()
                    .find_map(|line| line.strip_prefix(prefix))
                    .and_then(|rest| rest.split(',').next())
                    .map_or(0, |n| n.parse::<usize>().expect("calls"))
            })
            .sum::<usize>()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (redis_before, reads_before) = (read_calls().await, reads.load(Ordering::Relaxed));
    for round in 1..=100 {
        // Two changes back to back: after the first, the load refills the
        // key (flights reading Redis and the database) while the second
        // commits and its invalidation is acknowledged…
        db.store(2 * round - 1, Ordering::SeqCst);
        a.invalidate_tag(&tags[0]).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
        db.store(2 * round, Ordering::SeqCst);
        a.invalidate_tag(&tags[0]).await;
        // …so the next read must see the second: not from L1, not from a
        // flight that read Redis or the database before it.
        let seen = b
            .get_or_create(&key, &tags, strict, read_db(&db))
            .await
            .expect("value");
        assert_eq!(seen, format!("v{}", 2 * round), "round {round}");
    }
    let (redis_reads, done) = (
        read_calls().await - redis_before,
        reads.load(Ordering::Relaxed) - reads_before,
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    // Redis is read by refills (two changes a round), not by hits.
    assert!(done > 1000, "only {done} reads under load");
    assert!(
        redis_reads * 4 < done,
        "{redis_reads} Redis reads for {done} cache reads: hits went to Redis"
    );
}

async fn redis_connection(redis: &PrivateRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Redis' clock, in ms (what leases are measured in).
async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    seconds * 1000 + micros / 1000
}

/// A replica that holds a lease but never acknowledges (crashed, or cut
/// off) holds a write until its lease has run out, and no longer: by then
/// it has stopped serving from memory.
#[tokio::test]
async fn a_write_waits_for_a_silent_replica_until_its_lease_ends() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let mut conn = redis_connection(&redis).await;
    let lease_end = redis_now_ms(&mut conn).await + 600;
    let _: () = redis::cmd("ZADD")
        .arg(strata_dataplane::cache::coherence::REPLICAS)
        .arg(lease_end)
        .arg("silent")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    let tag = Tag::whole_tenant(Uuid::new_v4());
    a.invalidate_tag(&tag).await;
    let returned = redis_now_ms(&mut conn).await;
    assert!(
        returned >= lease_end,
        "returned at {returned}, before the silent lease's end {lease_end}"
    );
    // Leases that ran out are swept by the live replicas' renewals.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(strata_dataplane::cache::coherence::REPLICAS)
            .arg("silent")
            .query_async(&mut conn)
            .await
            .expect("ZSCORE");
        if score.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the ended lease was never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica that shuts down leaves the set of leases at once (writes stop
/// waiting for it) and stops serving from memory.
#[tokio::test]
async fn a_replica_that_leaves_stops_serving_and_is_not_waited_for() {
    let redis = PrivateRedis::start().await;
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    let conn = redis_connection(&redis).await;
    let members = || {
        let mut conn = conn.clone();
        async move {
            let count: usize = redis::cmd("ZCARD")
                .arg(strata_dataplane::cache::coherence::REPLICAS)
                .query_async(&mut conn)
                .await
                .expect("ZCARD");
            count
        }
    };
    assert_eq!(members().await, 2);
    b.leave().await;
    assert!(!b.l1_serving());
    assert_eq!(members().await, 1, "b left the set");
    // b's subscriber stopped renewing: it stays out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(members().await, 1);
    assert!(!b.l1_serving());
    a.invalidate_tag(&Tag::whole_tenant(Uuid::new_v4())).await;
    assert!(a.l1_serving());
}
