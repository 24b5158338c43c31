//! Gateway behaviour across processes: rate limits (429 problems with the
//! IETF headers, one limit across two data-plane processes through Redis,
//! local limiting while Redis is down) and key revocation seen at once by a
//! second process. Real PostgreSQL, Redis and the `strata-dataplane`
//! binary; needs `source .stack/env`.

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
            // 3 per second per credential on each process, one Redis.
            let limits = [
                ("STRATA_REDIS_URL", redis_url.as_str()),
                ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "3"),
            ];
            let (a_proc, a) = dataplane(&catalog_url, &limits).await;
            let (b_proc, b) = dataplane(&catalog_url, &limits).await;
            let owner = a.accept_invitation(tenant).await;
            let viewer = a.new_key(&tenant.name, &owner, "viewer").await;
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            let mut allowed = 0;
            let mut refused = None;
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
            // Burst 3 (+1 if a cell came back while the loop ran); two
            // independent per-process limits would have let 6 through.
            assert!((3..=4).contains(&allowed), "allowed {allowed} of 12");
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
                Some("\"credential\";q=3;w=1, \"tenant\";q=1000;w=1")
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
            // Anonymous: the invitation (1), then the OpenAPI document (2),
            // then refused.
            let owner = c.accept_invitation(tenant).await;
            let doc = c
                .send("GET", "/v1/openapi.json", None, Body::None, &[])
                .await;
            assert_eq!(doc.status, 200);
            let refused = c
                .send("GET", "/v1/openapi.json", None, Body::None, &[])
                .await;
            assert_eq!(refused.status, 429, "{}", refused.text);
            assert_eq!(refused.header("ratelimit-policy"), Some("\"ip\";q=2;w=1"));
            // Two requests per second for the whole tenant, whatever the key.
            let collections = format!("/v1/tenants/{}/collections", tenant.name);
            let statuses: Vec<u16> = {
                let mut out = Vec::new();
                for _ in 0..3 {
                    out.push(c.get(&collections, &owner).await.status);
                }
                out
            };
            assert_eq!(statuses, [200, 200, 429], "tenant quota of 2");
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
            let mut statuses = Vec::new();
            for _ in 0..8 {
                statuses.push(c.get(&collections, &owner).await.status);
            }
            assert!(
                statuses.iter().all(|s| *s == 200 || *s == 429),
                "no 5xx without Redis: {statuses:?}"
            );
            // The local limiter (burst 4, a fresh count) still limits.
            let allowed = statuses.iter().filter(|s| **s == 200).count();
            assert!((4..=5).contains(&allowed), "{statuses:?}");
            assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        },
    )
    .await;
}
