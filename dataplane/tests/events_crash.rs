//! Exactly-once effect under crashes: N documents are written while two
//! `strata-dataplane` processes dispatch (real binaries, `--dispatcher on`)
//! and are SIGKILLed and restarted over and over. Every event must reach
//! Redis and the webhook at least once; a receiver that dedupes on
//! `webhook-id` applies each exactly once; none is lost. Prints N, the
//! kills and the duplicates seen. Real PostgreSQL and Redis; needs
//! `source .stack/env`.

mod events_support;
mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use events_support::{Receiver, settings, subscribe};
use serde_json::json;
use strata_tests::process::{Running, free_port};
use support::{Client, Server, app_state, with_tenants};

const N: usize = 400;

async fn dispatcher(catalog_url: &str) -> Running {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata-dataplane"));
    command
        .env("STRATA_CATALOG_URL", catalog_url)
        .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
        .env("STRATA_DISPATCHER", "on")
        .env("STRATA_DISPATCH_SWEEP_SECONDS", "1")
        .env("STRATA_DISPATCH_BATCH", "25")
        .env("STRATA_DISPATCH_RETRY_BASE_MS", "100")
        .env("STRATA_DISPATCH_RETRY_CAP_MS", "1000")
        .env("STRATA_DISPATCH_MAX_ATTEMPTS", "100")
        .env("STRATA_WEBHOOK_ALLOW_HTTP", "true")
        .env("STRATA_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("STRATA_TENANT_CACHE_TTL_MS", "200")
        .env("RUST_LOG", "error");
    let mut running = Running::spawn(&mut command);
    running
        .wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(30),
        )
        .await;
    running
}

#[tokio::test]
async fn every_event_is_applied_once_across_sigkills() {
    with_tenants(
        "evcrash",
        &["cr"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            // The writer: the real router in process (no dispatcher of its own;
            // its requests publish hints on Redis after commit).
            let test_settings = settings();
            strata_dataplane::events::settings::install(test_settings);
            let mut state = app_state(&catalog_url);
            state.redis = Some(events_support::redis().await);
            let server = Server::start(state, 1 << 20).await;
            let api = Client::new(&server.base);
            let owner = api.accept_invitation(tenant).await;
            let t = format!("/v1/tenants/{}", tenant.name);
            let receiver = Receiver::start().await;
            let hook = api
                .json(
                    "POST",
                    &format!("{t}/webhooks"),
                    &owner,
                    json!({"url": receiver.url, "event_types": ["document.created"]}),
                )
                .await;
            assert_eq!(hook.status, 201, "{}", hook.text);
            let redis = subscribe(tenant.id).await;
            let made = api
                .json(
                    "POST",
                    &format!("{t}/collections"),
                    &owner,
                    json!({"name": "c"}),
                )
                .await;
            assert_eq!(made.status, 201);

            let mut procs = vec![
                dispatcher(&catalog_url).await,
                dispatcher(&catalog_url).await,
            ];
            let writing = Arc::new(AtomicBool::new(true));
            let writer = {
                let api = api.clone();
                let owner = owner.clone();
                let docs = format!("{t}/collections/c/documents");
                let writing = writing.clone();
                tokio::spawn(async move {
                    let ids: Vec<usize> = (0..N).collect();
                    for chunk in ids.chunks(4) {
                        let writes = chunk.iter().map(|i| {
                            api.json(
                                "POST",
                                &docs,
                                &owner,
                                json!({"id": format!("d{i}"), "data": {"i": i}}),
                            )
                        });
                        for reply in futures::future::join_all(writes).await {
                            assert_eq!(reply.status, 201, "{}", reply.text);
                        }
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                    writing.store(false, Ordering::SeqCst);
                })
            };
            // SIGKILL one dispatcher, restart it, alternate; two more rounds
            // after the writes end.
            let mut kills = 0;
            let mut after = 0;
            while after < 2 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                let victim = kills % 2;
                drop(std::mem::replace(
                    &mut procs[victim],
                    dispatcher(&catalog_url).await,
                ));
                kills += 1;
                if !writing.load(Ordering::SeqCst) {
                    after += 1;
                }
            }
            writer.await.expect("writer");

            let deadline = Instant::now() + Duration::from_secs(120);
            let expected: HashSet<String> = (0..N).map(|i| format!("d{i}")).collect();
            let doc_ids = |messages: &[serde_json::Value]| -> Vec<String> {
                messages
                    .iter()
                    .filter(|m| m["type"] == "document.created")
                    .filter_map(|m| m["data"]["id"].as_str().map(str::to_string))
                    .collect()
            };
            loop {
                let on_redis: HashSet<String> =
                    doc_ids(&redis.lock().expect("lock")).into_iter().collect();
                let applied: HashSet<String> = receiver
                    .applied()
                    .values()
                    .filter_map(|v| v["data"]["id"].as_str().map(str::to_string))
                    .collect();
                if on_redis.is_superset(&expected) && applied.is_superset(&expected) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "lost events: {} missing on Redis, {} missing at the webhook",
                    expected.difference(&on_redis).count(),
                    expected.difference(&applied).count()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Let in-flight redeliveries land before counting.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let redis_ids = doc_ids(&redis.lock().expect("lock"));
            let redis_dupes = redis_ids.len() - redis_ids.iter().collect::<HashSet<_>>().len();
            let got = receiver.got();
            let mut per_id: HashMap<&str, usize> = HashMap::new();
            for r in &got {
                *per_id.entry(r.id.as_str()).or_default() += 1;
            }
            let webhook_dupes: usize = per_id.values().map(|n| n - 1).sum();
            let applied = receiver.applied();
            assert_eq!(applied.len(), N, "each event applied exactly once");
            // Every applied event is a distinct document.
            let applied_ids: HashSet<&str> = applied
                .values()
                .filter_map(|v| v["data"]["id"].as_str())
                .collect();
            assert_eq!(applied_ids.len(), N);
            println!(
                "crash test: N={N} documents, {kills} SIGKILLs of 2 dispatcher processes; \
             Redis: {} messages, {redis_dupes} duplicates; webhook: {} deliveries, \
             {webhook_dupes} duplicates (deduped by webhook-id), {} applied",
                redis_ids.len(),
                got.len(),
                applied.len()
            );
            drop(procs);
        },
    )
    .await;
}
