//! Gateway behaviour across processes: rate limits (429 problems with the
//! IETF headers, one limit across two data-plane processes through Redis,
//! local limiting while Redis is down) and key revocation seen at once by a
//! second process. Real PostgreSQL, Redis and the `strata-dataplane`
//! binary; needs `source .stack/env`.

mod storage_support;
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strata_dataplane::gateway::{Gateway, RateLimitSettings, RateLimiter, TrustedProxies};
use strata_tests::env;
use strata_tests::process::{PrivateRedis, Running, free_port};
use support::{Body, Checked, Client, Server, app_state, with_tenants};

/// A `strata-dataplane` process on the test's catalog.
async fn dataplane(catalog_url: &str, extra: &[(&str, &str)]) -> (Running, Client) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata-dataplane"));
    command
        .env("STRATA_CATALOG_URL", catalog_url)
        .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
        .env("STRATA_TENANT_CACHE_TTL_MS", "200")
        // Both processes must accept each other's cursors.
        .env(
            "STRATA_CURSOR_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("RUST_LOG", "warn");
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut running = Running::spawn(&mut command);
    let base = format!("http://127.0.0.1:{port}");
    running
        .wait_ready(&format!("{base}/readyz"), Duration::from_secs(30))
        .await;
    (running, Client::new(&base))
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_by_another_process() {
    with_tenants(
        "gateway",
        &["rev"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let unlimited = [("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0")];
            let (a_proc, a) = dataplane(&catalog_url, &unlimited).await;
            let (b_proc, b) = dataplane(&catalog_url, &unlimited).await;
            let owner = a.accept_invitation(tenant).await;
            let made = a
                .json(
                    "POST",
                    &format!("/v1/tenants/{}/keys", tenant.name),
                    &owner,
                    json!({"name": "doomed", "role": "viewer"}),
                )
                .await;
            assert_eq!(made.status, 201, "{}", made.text);
            let key = made.json["key"].as_str().expect("key").to_string();
            let id = made.json["id"].as_str().expect("id").to_string();
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            // Process B has seen (and would cache, if it cached keys) the key.
            for _ in 0..3 {
                assert_eq!(b.get(&collections, &key).await.status, 200);
            }
            let revoked = a
                .send(
                    "DELETE",
                    &format!("/v1/tenants/{}/keys/{id}", tenant.name),
                    Some(&owner),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(revoked.status, 204, "{}", revoked.text);
            // The very next request on the other process is refused.
            let reply = b.get(&collections, &key).await;
            let checked = Checked::new(b.clone(), tenant, &[]);
            checked.problem(&reply, 401, "unauthenticated");
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn one_limit_holds_across_two_processes_through_redis() {
    with_tenants(
        "gateway",
        &["rl"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let redis_url = env("STRATA_REDIS_URL");
            // 2 per second per credential on each process, one Redis.
            let limits = [
                ("STRATA_REDIS_URL", redis_url.as_str()),
                ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "2"),
            ];
            let (a_proc, a) = dataplane(&catalog_url, &limits).await;
            let (b_proc, b) = dataplane(&catalog_url, &limits).await;
            let owner = a.accept_invitation(tenant).await;
            let viewer = a.new_key(&tenant.name, &owner, "viewer").await;
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            let mut allowed = 0;
            let mut refused = None;
            let started = std::time::Instant::now();
            for n in 0..12 {
                let client = if n % 2 == 0 { &a } else { &b };
                let reply = client.get(&collections, &viewer).await;
                assert!(
                    reply.header("ratelimit-policy").is_some(),
                    "every limited response has the policy: {:?}",
                    reply.headers
                );
                match reply.status {
                    200 => allowed += 1,
                    429 => refused = Some(reply),
                    other => panic!("unexpected {other}: {}", reply.text),
                }
            }
            // GCRA: at most the burst (2) plus one per 500 ms elapsed, across
            // both processes; two independent limits would let 4 through
            // at once.
            let refills = (started.elapsed().as_millis() / 500) as usize;
            assert!(
                (2..=2 + refills).contains(&allowed),
                "allowed {allowed} of 12 in {:?}",
                started.elapsed()
            );
            let refused = refused.expect("a 429");
            let checked = Checked::new(a.clone(), tenant, &[]);
            checked.problem(&refused, 429, "rate-limited");
            let retry: u64 = refused
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            assert_eq!(
                refused.header("ratelimit-policy"),
                Some("\"credential\";q=2;w=1, \"tenant\";q=1000;w=1")
            );
            assert!(
                refused
                    .header("ratelimit")
                    .is_some_and(|v| v.starts_with("\"credential\";r=0;t=")),
                "{:?}",
                refused.header("ratelimit")
            );
            // The owner's key has its own credential quota.
            assert_eq!(b.get(&collections, &owner).await.status, 200);
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_tenants_own_quota_and_anonymous_callers_are_limited() {
    with_tenants(
        "gateway",
        &["q"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            sqlx::query("UPDATE catalog.tenants SET quotas = $2 WHERE id = $1")
                .bind(tenant.id)
                .bind(json!({"requestsPerSecond": 2}))
                .execute(catalog.pool())
                .await
                .expect("quota");
            let mut state = app_state(&catalog_url);
            state.http.gateway = Gateway {
                limiter: RateLimiter::new(
                    RateLimitSettings {
                        credential_rps: 100,
                        anonymous_rps: 2,
                        ..RateLimitSettings::default()
                    },
                    None,
                ),
                proxies: TrustedProxies::default(),
            };
            let server = Server::start(state, 1 << 20).await;
            let c = Client::new(&server.base);
            // Anonymous: a burst of 2 per address, one more every 500 ms.
            let started = std::time::Instant::now();
            let mut allowed = 0;
            let mut refused = None;
            for _ in 0..6 {
                let reply = c
                    .send("GET", "/v1/openapi.json", None, Body::None, &[])
                    .await;
                match reply.status {
                    200 => allowed += 1,
                    429 => refused = Some(reply),
                    other => panic!("unexpected {other}"),
                }
            }
            let refills = (started.elapsed().as_millis() / 500) as usize;
            assert!(
                (2..=2 + refills).contains(&allowed),
                "{allowed} allowed in {:?}",
                started.elapsed()
            );
            let refused = refused.expect("a 429");
            assert_eq!(refused.header("ratelimit-policy"), Some("\"ip\";q=2;w=1"));
            assert!(refused.header("retry-after").is_some());
            // The invitation is anonymous too; once the address's quota is
            // back it goes through.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let owner = c.accept_invitation(tenant).await;
            // Two requests per second for the whole tenant, whatever the key
            // (the credential's own limit is 100).
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            let started = std::time::Instant::now();
            let mut allowed = 0;
            let mut refused = None;
            for _ in 0..6 {
                let reply = c.get(&collections, &owner).await;
                match reply.status {
                    200 => allowed += 1,
                    429 => refused = Some(reply),
                    other => panic!("unexpected {other}: {}", reply.text),
                }
            }
            let refills = (started.elapsed().as_millis() / 500) as usize;
            assert!((2..=2 + refills).contains(&allowed), "{allowed} allowed");
            let refused = refused.expect("a 429");
            assert!(
                refused
                    .header("ratelimit")
                    .is_some_and(|v| v.starts_with("\"tenant\";r=0")),
                "{:?}",
                refused.header("ratelimit")
            );
        },
    )
    .await;
}

#[tokio::test]
async fn redis_down_means_local_limits_and_no_5xx() {
    with_tenants(
        "gateway",
        &["down"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let mut redis = PrivateRedis::start().await;
            let manager = redis::aio::ConnectionManager::new(
                redis::Client::open(redis.url.as_str()).expect("url"),
            )
            .await
            .expect("connect");
            let mut state = app_state(&catalog_url);
            state.http.gateway = Gateway {
                limiter: RateLimiter::new(
                    RateLimitSettings {
                        credential_rps: 4,
                        // Long enough that the request before the outage is
                        // counted in Redis even on a loaded machine (a
                        // timeout would count it locally, and the local
                        // count below would not start fresh).
                        redis_timeout: Duration::from_secs(2),
                        ..RateLimitSettings::unlimited()
                    },
                    Some(manager),
                ),
                proxies: TrustedProxies::default(),
            };
            let server = Server::start(state, 1 << 20).await;
            let c = Client::new(&server.base);
            let owner = c.accept_invitation(tenant).await;
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            assert_eq!(c.get(&collections, &owner).await.status, 200);
            // Redis goes away mid-flight.
            redis.stop();
            let started = std::time::Instant::now();
            let mut statuses = Vec::new();
            for _ in 0..12 {
                statuses.push(c.get(&collections, &owner).await.status);
            }
            assert!(
                statuses.iter().all(|s| *s == 200 || *s == 429),
                "no 5xx without Redis: {statuses:?}"
            );
            // The local limiter (burst 4, one more per 250 ms, a fresh
            // count) still limits.
            let refills = (started.elapsed().as_millis() / 250) as usize;
            let allowed = statuses.iter().filter(|s| **s == 200).count();
            assert!((4..=4 + refills).contains(&allowed), "{statuses:?}");
            assert!(statuses.contains(&429), "{statuses:?}");
        },
    )
    .await;
}

/// Two processes on one Redis: the cache (L1 in each, L2 shared) with
/// the invalidations of every write.
async fn cached_pair(catalog_url: &str) -> ((Running, Client), (Running, Client)) {
    let redis_url = env("STRATA_REDIS_URL");
    let settings = [
        ("STRATA_REDIS_URL", redis_url.as_str()),
        ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0"),
        ("STRATA_RATE_LIMIT_TENANT_RPS", "0"),
        // Not 50 ms: a loaded CI machine must not trip the circuit and
        // turn the hits these tests expect into misses.
        ("STRATA_CACHE_REDIS_TIMEOUT_MS", "1000"),
    ];
    (
        dataplane(catalog_url, &settings).await,
        dataplane(catalog_url, &settings).await,
    )
}

/// Creates `collection` with one document (`id`, `data`) through `c`, as
/// `key`; returns the document's path.
async fn collection_with_document(
    c: &Client,
    tenant: &support::Tenant,
    key: &str,
    collection: &str,
    id: &str,
    data: serde_json::Value,
) -> String {
    let base = format!("/v1/tenants/{}/collections", tenant.name);
    let made = c
        .json("POST", &base, key, json!({"name": collection}))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let doc = format!("{base}/{collection}/documents/{id}");
    let put = c.json("PUT", &doc, key, data).await;
    assert_eq!(put.status, 201, "{}", put.text);
    doc
}

/// A counter of a process's `/metrics`, summed over its label sets that
/// contain every one of `labels`.
async fn metric(client: &Client, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{}/metrics", client.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn with_redis_a_revoked_cached_key_is_refused_at_once_by_the_other_process() {
    with_tenants(
        "gateway",
        &["crev"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let ((a_proc, a), (b_proc, b)) = cached_pair(&catalog_url).await;
            let owner = a.accept_invitation(tenant).await;
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            for round in 0..20 {
                let made = a
                    .json(
                        "POST",
                        &format!("/v1/tenants/{}/keys", tenant.name),
                        &owner,
                        json!({"name": format!("doomed {round}"), "role": "viewer"}),
                    )
                    .await;
                assert_eq!(made.status, 201, "{}", made.text);
                let key = made.json["key"].as_str().expect("key").to_string();
                let id = made.json["id"].as_str().expect("id").to_string();
                // B caches the key row (L1).
                for _ in 0..3 {
                    assert_eq!(b.get(&collections, &key).await.status, 200);
                }
                let revoked = a
                    .send(
                        "DELETE",
                        &format!("/v1/tenants/{}/keys/{id}", tenant.name),
                        Some(&owner),
                        Body::None,
                        &[],
                    )
                    .await;
                assert_eq!(revoked.status, 204, "{}", revoked.text);
                let reply = b.get(&collections, &key).await;
                assert_eq!(reply.status, 401, "round {round}: {}", reply.text);
            }
            let hits = metric(
                &b,
                "strata_cache_lookups_total",
                &["level=\"l1\"", "kind=\"api-key\"", "outcome=\"hit\""],
            )
            .await;
            assert!(hits > 0.0, "the key rows were served from B's L1: {hits}");
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

/// An output-cache hit is served from memory: the API key's row and the
/// answer both come from L1, with no Redis round trip (no L2 lookup, and
/// no generation check: writes are acknowledged by every replica instead,
/// `cache::coherence`).
#[tokio::test]
async fn a_cached_answer_is_served_from_memory_without_asking_redis() {
    with_tenants(
        "gateway",
        &["memhit"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let ((a_proc, a), (b_proc, b)) = cached_pair(&catalog_url).await;
            let owner = a.accept_invitation(tenant).await;
            let viewer = a.new_key(&tenant.name, &owner, "viewer").await;
            let doc =
                collection_with_document(&a, tenant, &owner, "one", "d1", json!({"v": 1})).await;
            // B caches the key row and the answer.
            for _ in 0..2 {
                assert_eq!(b.get(&doc, &viewer).await.status, 200);
            }
            let l1_hits = || async {
                metric(
                    &b,
                    "strata_cache_lookups_total",
                    &["level=\"l1\"", "outcome=\"hit\""],
                )
                .await
            };
            // The key row's and the answer's (the tenant's catalog row and
            // role rows live 2 s in L1 and may be refilled meanwhile).
            let l2_lookups = || async {
                let lookups = "strata_cache_lookups_total";
                metric(&b, lookups, &["level=\"l2\"", "kind=\"response\""]).await
                    + metric(&b, lookups, &["level=\"l2\"", "kind=\"api-key\""]).await
            };
            let (l1_before, l2_before) = (l1_hits().await, l2_lookups().await);
            for n in 0..10 {
                let reply = b.get(&doc, &viewer).await;
                assert_eq!(reply.status, 200, "{}", reply.text);
                assert_eq!(
                    reply.header("cache-status"),
                    Some("strata; hit"),
                    "request {n}"
                );
            }
            let (l1_after, l2_after) = (l1_hits().await, l2_lookups().await);
            // The tenant's catalog row is an L1 hit too (resolution).
            assert!(
                l1_after - l1_before >= 20.0,
                "the key row and the answer, ten times: {}",
                l1_after - l1_before
            );
            assert!(l2_before > 0.0, "B filled its L1 through L2");
            assert_eq!(l2_after, l2_before, "neither read from Redis");
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_write_on_one_process_is_read_on_the_other_within_100_ms() {
    with_tenants(
        "gateway",
        &["cw"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let ((a_proc, a), (b_proc, b)) = cached_pair(&catalog_url).await;
            let owner = a.accept_invitation(tenant).await;
            let doc =
                collection_with_document(&a, tenant, &owner, "notes", "n1", json!({"v": 0})).await;
            let mut latencies = Vec::new();
            for v in 1..=300 {
                // B has the current version cached.
                let seen = b.get(&doc, &owner).await;
                assert_eq!(seen.status, 200, "{}", seen.text);
                let written = a.json("PUT", &doc, &owner, json!({"v": v})).await;
                assert_eq!(written.status, 200, "{}", written.text);
                // Visibility: from the acknowledgement to the start of the
                // first read on B that returns the write (0 when the very first
                // read does), so B's own response time does not count.
                let acknowledged = std::time::Instant::now();
                let visible_after = loop {
                    let sent = acknowledged.elapsed();
                    let read = b.get(&doc, &owner).await;
                    if read.json["data"]["v"] == v {
                        break sent;
                    }
                    assert!(
                        acknowledged.elapsed() < Duration::from_secs(2),
                        "write {v} not visible on B after 2 s: {}",
                        read.text
                    );
                };
                latencies.push(visible_after);
            }
            latencies.sort();
            let p99 = latencies[latencies.len() * 99 / 100];
            println!(
                "write on A visible on B (300 writes): p50 {:?}, p99 {:?}, max {:?}",
                latencies[latencies.len() / 2],
                p99,
                latencies[latencies.len() - 1]
            );
            assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
            let hits = metric(
                &b,
                "strata_cache_lookups_total",
                &["level=\"l1\"", "kind=\"document\"", "outcome=\"hit\""],
            )
            .await;
            assert!(hits > 0.0, "B served documents from L1");
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn two_hundred_concurrent_gets_of_a_cold_document_read_the_database_once_per_process() {
    with_tenants(
        "gateway",
        &["cs"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let ((a_proc, a), (b_proc, b)) = cached_pair(&catalog_url).await;
            let owner = a.accept_invitation(tenant).await;
            let doc =
                collection_with_document(&a, tenant, &owner, "hot", "d1", json!({"x": 1})).await;
            // Let the write's own invalidation reach both processes first: a
            // late one (a loaded machine) would rightly make an entry filled
            // before it stale, and a straggler would read again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for client in [&a, &b] {
                let before = metric(
                    client,
                    "strata_cache_factory_seconds_count",
                    &["kind=\"document\""],
                )
                .await;
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..200 {
                    let client = client.clone();
                    let doc = doc.clone();
                    let owner = owner.clone();
                    tasks.spawn(async move { client.get(&doc, &owner).await.status });
                }
                while let Some(status) = tasks.join_next().await {
                    assert_eq!(status.expect("task"), 200);
                }
                let after = metric(
                    client,
                    "strata_cache_factory_seconds_count",
                    &["kind=\"document\""],
                )
                .await;
                assert!(
                    after - before <= 1.0,
                    "{} database reads for 200 concurrent GETs",
                    after - before
                );
            }
            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_outbox_drops_what_a_writer_that_never_invalidated_left_cached() {
    with_tenants(
        "gateway",
        &["cb"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let redis_url = env("STRATA_REDIS_URL");
            let settings = [
                ("STRATA_REDIS_URL", redis_url.as_str()),
                ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0"),
                ("STRATA_DISPATCH_SWEEP_SECONDS", "1"),
            ];
            let (a_proc, a) = dataplane(&catalog_url, &settings).await;
            let owner = a.accept_invitation(tenant).await;
            let doc =
                collection_with_document(&a, tenant, &owner, "notes", "n1", json!({"v": 1})).await;
            assert_eq!(a.get(&doc, &owner).await.json["data"]["v"], 1);
            // A writer that committed and died before invalidating: the change
            // and its event, straight into the tenant database.
            let names = strata_operator::placement::TenantNames::for_tenant(tenant.id);
            let url = strata_tests::with_database(
                &env("STRATA_DATAPLANE_DATABASE_URL"),
                names.database.as_str(),
            );
            let db = sqlx::PgPool::connect(&url).await.expect("tenant db");
            let mut tx = db.begin().await.expect("tx");
            sqlx::query(
                "UPDATE documents SET data = '{\"v\": 2}', version = version + 1 \
             WHERE id = 'n1' AND collection_id = (SELECT id FROM collections WHERE name = 'notes')",
            )
            .execute(&mut *tx)
            .await
            .expect("update");
            strata_dataplane::events::record(
                &mut tx,
                strata_dataplane::events::Event::new("document.updated", "x/n1")
                    .data(json!({"collection": "notes", "id": "n1"})),
            )
            .await
            .expect("event");
            tx.commit().await.expect("commit");
            // Still cached; the dispatcher's sweep publishes the event and its
            // invalidation within a few seconds.
            let started = std::time::Instant::now();
            loop {
                let read = a.get(&doc, &owner).await;
                if read.json["data"]["v"] == 2 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "the outbox never invalidated: {}",
                    read.text
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("stale for {:?} after the commit", started.elapsed());
            a_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}

#[tokio::test]
async fn redis_killed_under_load_fails_no_request_and_caching_recovers() {
    with_tenants("gateway", &["ck"], |catalog_url, _catalog, tenants| async move {
        let tenant = &tenants[0];
        let mut redis = PrivateRedis::start().await;
        let settings = [
            ("STRATA_REDIS_URL", redis.url.as_str()),
            ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0"),
            ("STRATA_RATE_LIMIT_TENANT_RPS", "0"),
        ];
        let (proc_a, a) = dataplane(&catalog_url, &settings).await;
        let owner = a.accept_invitation(tenant).await;
        let base = format!("/v1/tenants/{}/collections", tenant.name);
        assert_eq!(a.json("POST", &base, &owner, json!({"name": "load"})).await.status, 201);
        let docs: Vec<String> = (0..20).map(|i| format!("{base}/load/documents/d{i}")).collect();
        for doc in &docs {
            assert_eq!(a.json("PUT", doc, &owner, json!({"x": 1})).await.status, 201);
        }
        // A document GET is answered by the output cache (`response`)
        // in front of the handler's own document cache (`document`):
        // an in-process hit of either counts.
        let hits = |client: Client| async move {
            let mut total = 0.0;
            for kind in ["kind=\"document\"", "kind=\"response\""] {
                total += metric(&client, "strata_cache_lookups_total", &["level=\"l1\"", kind, "outcome=\"hit\""]).await;
            }
            total
        };
        // Load: 8 clients reading the 20 documents in a loop, while Redis
        // is killed and, later, started again.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for worker in 0..8usize {
            let (c, docs, owner, stop) = (a.clone(), docs.clone(), owner.clone(), stop.clone());
            load.spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut n = worker;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = c.get(&docs[n % docs.len()], &owner).await;
                    if reply.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(reply.status);
                    }
                    n += 1;
                }
                (ok, failed)
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_outage = hits(a.clone()).await;
        assert!(before_outage > 0.0, "L1 serves before the outage");
        redis.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = hits(a.clone()).await;
        redis.restart().await;
        // Back: the subscriber reconnects (backoff up to 5 s) and L1 hits
        // resume.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let recovered = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = hits(a.clone()).await;
            if now > during + 100.0 {
                break now;
            }
            assert!(std::time::Instant::now() < deadline, "L1 hits did not resume after Redis came back");
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        while let Some(result) = load.join_next().await {
            let (o, f) = result.expect("worker");
            ok += o;
            failed.extend(f);
        }
        println!(
            "{ok} reads, {} failed; L1 hits: {before_outage} before, {during} after the outage, {recovered} after recovery",
            failed.len()
        );
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        proc_a.terminate(Duration::from_secs(20)).await;
    })
    .await;
}

/// A route's own limit (`expensive` in the policy table: search, bulk,
/// render) binds before the credential's: a burst of searches is refused
/// with the class's policy in the headers while the same key still reads
/// collections, and another key still searches.
#[tokio::test]
async fn a_routes_own_limit_applies() {
    with_tenants(
        "gateway",
        &["cls"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let class = strata_dataplane::gateway::policy::EXPENSIVE;
            let mut state = app_state(&catalog_url);
            state.http.gateway = Gateway {
                limiter: RateLimiter::new(
                    RateLimitSettings {
                        credential_rps: 1000,
                        tenant_rps: 10_000,
                        ..RateLimitSettings::default()
                    },
                    None,
                ),
                proxies: TrustedProxies::default(),
            };
            let server = Server::start(state, 1 << 20).await;
            let c = Client::new(&server.base);
            let owner = c.accept_invitation(tenant).await;
            let other = c.new_key(&tenant.name, &owner, "viewer").await;
            let search = format!("/v1/tenants/{}/search", tenant.name);
            let body = json!({"vector": [1.0, 0.0, 0.0], "collections": ["none"], "k": 1});
            // All at once, so the GCRA refills (per_second cells a second)
            // next to nothing during the burst.
            let burst = class.per_second as usize * 2;
            let replies = futures::future::join_all(
                (0..burst).map(|_| c.json("POST", &search, &owner, body.clone())),
            )
            .await;
            let mut refused = Vec::new();
            for reply in replies {
                assert_ne!(reply.status, 500, "{}", reply.text);
                assert!(
                    reply.header("ratelimit-policy").is_some_and(
                        |v| v.contains(&format!("\"{}\";q={}", class.name, class.per_second))
                    ),
                    "{:?}",
                    reply.headers
                );
                if reply.status == 429 {
                    refused.push(reply);
                }
            }
            let allowed = burst - refused.len();
            assert!(
                allowed >= class.per_second as usize && allowed < burst,
                "{allowed} of {burst} allowed"
            );
            for reply in &refused {
                assert_eq!(reply.json["code"], "rate-limited", "{}", reply.text);
                assert!(reply.header("retry-after").is_some());
                assert!(
                    reply
                        .header("ratelimit")
                        .is_some_and(|v| v.starts_with(&format!("\"{}\";r=0", class.name))),
                    "{:?}",
                    reply.headers
                );
            }
            // An ordinary route of the same key, and the class for another key.
            let read = c
                .get(&format!("/v1/tenants/{}/collections", tenant.name), &owner)
                .await;
            assert_eq!(read.status, 200, "{}", read.text);
            assert!(
                !read
                    .header("ratelimit-policy")
                    .unwrap_or("")
                    .contains(class.name)
            );
            let theirs = c.json("POST", &search, &other, body.clone()).await;
            assert_ne!(theirs.status, 429, "{}", theirs.text);
        },
    )
    .await;
}

/// `Cache-Control` from the policy table: public (with the declared age)
/// on the docs page, the OpenAPI document, public-bucket objects and
/// presigned URLs (never beyond the URL's expiry); private on everything
/// a credential read, the same object included. And the output cache never
/// crosses the line: an anonymous request never gets an authenticated
/// entry, a credentialed one never the public entry.
#[tokio::test]
async fn public_routes_are_public_and_authenticated_answers_private() {
    with_tenants(
        "gateway",
        &["pub"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            let t = &tenant.name;
            let store = storage_support::backend(storage_support::Store::S3).await;
            let mut state = storage_support::app_state(
                &catalog_url,
                store.backend.clone(),
                None,
                storage_support::settings(),
            );
            let client = redis::Client::open(env("STRATA_REDIS_URL")).expect("url");
            let manager = redis::aio::ConnectionManager::new(client.clone())
                .await
                .expect("redis");
            let cache = strata_dataplane::cache::HybridCache::new(
                strata_dataplane::cache::CacheSettings::default(),
                Some(manager),
                None,
            );
            cache.spawn_subscriber(client);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cache.l1_serving() {
                assert!(std::time::Instant::now() < deadline, "not subscribed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            state.tenancy.cache = cache;
            let server = Server::start(state, 1 << 20).await;
            let c = Client::new(&server.base);
            let key = c.accept_invitation(tenant).await;
            storage_support::create_bucket(&catalog, tenant.id, "open", json!({"public": true}))
                .await;
            storage_support::create_bucket(&catalog, tenant.id, "closed", json!({})).await;
            let cc =
                |reply: &support::Reply| reply.header("cache-control").unwrap_or("").to_string();
            for bucket in ["open", "closed"] {
                let put = c
                    .send(
                        "PUT",
                        &format!("/v1/tenants/{t}/buckets/{bucket}/objects/a.txt"),
                        Some(&key),
                        Body::Raw(Some("text/plain"), b"hello".to_vec()),
                        &[],
                    )
                    .await;
                assert_eq!(put.status, 201, "{}", put.text);
                assert!(cc(&put).starts_with("private"), "{}", cc(&put));
            }
            let open = format!("/v1/tenants/{t}/buckets/open/objects/a.txt");
            let anonymous = c.send("GET", &open, None, Body::None, &[]).await;
            assert_eq!(anonymous.status, 200, "{}", anonymous.text);
            assert_eq!(cc(&anonymous), "public, max-age=60");
            let head = c.send("HEAD", &open, None, Body::None, &[]).await;
            assert_eq!(cc(&head), "public, max-age=60");
            let not_modified = c
                .send(
                    "GET",
                    &open,
                    None,
                    Body::None,
                    &[("if-none-match", anonymous.header("etag").expect("etag"))],
                )
                .await;
            assert_eq!(not_modified.status, 304);
            assert_eq!(cc(&not_modified), "public, max-age=60");
            let authenticated = c.get(&open, &key).await;
            assert_eq!(authenticated.status, 200);
            assert!(
                cc(&authenticated).starts_with("private"),
                "{}",
                cc(&authenticated)
            );
            // A private bucket: 401 without a credential (no public header).
            let closed = format!("/v1/tenants/{t}/buckets/closed/objects/a.txt");
            let refused = c.send("GET", &closed, None, Body::None, &[]).await;
            assert_eq!(refused.status, 401);
            assert!(!cc(&refused).contains("public"));
            // Presigned: never beyond the URL's expiry.
            let signed = c
                .json(
                    "POST",
                    &format!("/v1/tenants/{t}/buckets/closed/presign"),
                    &key,
                    json!({"method": "GET", "key": "a.txt", "expires_in": 20}),
                )
                .await;
            assert_eq!(signed.status, 200, "{}", signed.text);
            let url = signed.json["url"].as_str().expect("url").to_string();
            let via_url = c.send("GET", &url, None, Body::None, &[]).await;
            assert_eq!(via_url.status, 200, "{}", via_url.text);
            let age: u64 = cc(&via_url)
                .strip_prefix("public, max-age=")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{}", cc(&via_url)));
            assert!(age <= 20, "max-age {age} beyond the URL's 20 s");
            // Documentation.
            for path in ["/docs", "/v1/openapi.json"] {
                let reply = c.send("GET", path, None, Body::None, &[]).await;
                assert_eq!(reply.status, 200, "{path}");
                assert_eq!(cc(&reply), "public, max-age=300", "{path}");
            }
            let shared = c
                .send("GET", "/v1/openapi.json", None, Body::None, &[])
                .await;
            assert_eq!(shared.header("cache-status"), Some("strata; hit"));
            // A credential on the public row never gets the shared entry.
            let with_key = c.get("/v1/openapi.json", &key).await;
            assert_eq!(with_key.status, 200);
            assert_ne!(with_key.header("cache-status"), Some("strata; hit"));
            // Authenticated answers: private, and their entries never go to
            // an anonymous request.
            let docs = format!("/v1/tenants/{t}/collections");
            for _ in 0..2 {
                let reply = c.get(&docs, &key).await;
                assert_eq!(reply.status, 200);
                assert!(cc(&reply).starts_with("private"), "{}", cc(&reply));
            }
            let anonymous = c.send("GET", &docs, None, Body::None, &[]).await;
            assert_eq!(anonymous.status, 401);
            assert_ne!(anonymous.header("cache-status"), Some("strata; hit"));
            let members = c.get(&format!("/v1/tenants/{t}/members"), &key).await;
            assert_eq!(cc(&members), "private, no-cache");
        },
    )
    .await;
}
