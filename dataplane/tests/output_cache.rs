//! The output cache (gateway::output_cache) across two `strata-dataplane`
//! processes sharing Redis: the vary-key matrix (tenants, roles,
//! Accept-Encoding, Accept, query order) never shares an entry, an
//! anonymous request is never served an authenticated answer, a write is
//! visible on the next GET on both processes, and a 304 comes from a hit.
//! Needs `source .stack/env`.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strata_tests::env;
use strata_tests::process::{Running, free_port};
use support::{Body, Client, Reply, with_tenants};

async fn dataplane(catalog_url: &str, redis_url: &str) -> (Running, Client) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata-dataplane"));
    command
        .env("STRATA_CATALOG_URL", catalog_url)
        .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
        .env("STRATA_TENANT_CACHE_TTL_MS", "200")
        .env("STRATA_REDIS_URL", redis_url)
        // The default 50 ms lets a loaded CI machine trip the circuit and
        // turn an expected hit into a miss; this test is about coherence.
        .env("STRATA_CACHE_REDIS_TIMEOUT_MS", "1000")
        .env("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0")
        .env("STRATA_RATE_LIMIT_TENANT_RPS", "0")
        .env("STRATA_RATE_LIMIT_ANONYMOUS_RPS", "0")
        .env(
            "STRATA_CURSOR_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("RUST_LOG", "warn");
    let mut running = Running::spawn(&mut command);
    let base = format!("http://127.0.0.1:{port}");
    running
        .wait_ready(&format!("{base}/readyz"), Duration::from_secs(30))
        .await;
    (running, Client::new(&base))
}

fn status(reply: &Reply) -> String {
    reply.header("cache-status").unwrap_or("-").to_string()
}

fn is_hit(reply: &Reply) -> bool {
    status(reply) == "strata; hit"
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.json["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn output_cache_varies_invalidates_and_revalidates() {
    with_tenants(
        "outcache",
        &["oa", "ob"],
        |catalog_url, _catalog, tenants| async move {
            let redis_url = env("STRATA_REDIS_URL");
            let (a_proc, a) = dataplane(&catalog_url, &redis_url).await;
            let (b_proc, b) = dataplane(&catalog_url, &redis_url).await;
            let mut keys = Vec::new();
            for tenant in &tenants {
                let owner = a.accept_invitation(tenant).await;
                let viewer = a.new_key(&tenant.name, &owner, "viewer").await;
                let base = format!("/v1/tenants/{}/collections", tenant.name);
                let made = a
                    .json("POST", &base, &owner, json!({"name": "books"}))
                    .await;
                assert_eq!(made.status, 201, "{}", made.text);
                let doc = a
                    .json(
                        "POST",
                        &format!("{base}/books/documents"),
                        &owner,
                        json!({"id": format!("{}-1", tenant.name), "data": {"t": 1}}),
                    )
                    .await;
                assert_eq!(doc.status, 201, "{}", doc.text);
                keys.push((tenant.name.clone(), owner, viewer));
            }

            // The matrix: each combination's first request is a miss (no
            // other combination's entry is served), its second (query
            // pairs in the other order) a hit with the same body.
            for (tenant, owner, viewer) in &keys {
                let docs = format!("/v1/tenants/{tenant}/collections/books/documents");
                for key in [owner, viewer] {
                    for encoding in ["br", "identity"] {
                        for accept in ["application/json", "*/*"] {
                            let headers = [("accept-encoding", encoding), ("accept", accept)];
                            let first = a
                                .send(
                                    "GET",
                                    &format!("{docs}?limit=10&count=true"),
                                    Some(key),
                                    Body::None,
                                    &headers,
                                )
                                .await;
                            assert_eq!(first.status, 200, "{}", first.text);
                            assert!(
                                !is_hit(&first),
                                "{tenant} {encoding} {accept}: served another's entry"
                            );
                            assert_eq!(ids(&first), [format!("{tenant}-1")]);
                            assert!(
                                first
                                    .header("cache-control")
                                    .is_some_and(|v| v.starts_with("private")),
                                "{:?}",
                                first.headers
                            );
                            let second = a
                                .send(
                                    "GET",
                                    &format!("{docs}?count=true&limit=10"),
                                    Some(key),
                                    Body::None,
                                    &headers,
                                )
                                .await;
                            assert!(is_hit(&second), "{}", status(&second));
                            assert!(second.header("age").is_some());
                            assert_eq!(second.text, first.text);
                        }
                    }
                }
                // Never to an anonymous request.
                let anonymous = a.send("GET", &docs, None, Body::None, &[]).await;
                assert_eq!(anonymous.status, 401, "{}", anonymous.text);
                assert!(!is_hit(&anonymous));
            }

            // A write on one process is visible on the next GET on both.
            let (tenant, owner, viewer) = &keys[0];
            let docs = format!("/v1/tenants/{tenant}/collections/books/documents");
            for client in [&a, &b, &a, &b] {
                let reply = client.get(&docs, viewer).await;
                assert_eq!(ids(&reply), [format!("{tenant}-1")]);
            }
            assert!(is_hit(&b.get(&docs, viewer).await), "b reads a's entry");
            let added = a
                .json("POST", &docs, owner, json!({"id": "z-2", "data": {"t": 2}}))
                .await;
            assert_eq!(added.status, 201, "{}", added.text);
            for client in [&b, &a] {
                let reply = client.get(&docs, viewer).await;
                assert_eq!(ids(&reply), [format!("{tenant}-1"), "z-2".to_string()]);
            }
            let removed = b
                .send(
                    "DELETE",
                    &format!("{docs}/z-2"),
                    Some(owner),
                    Body::None,
                    &[],
                )
                .await;
            assert!(
                removed.status == 204 || removed.status == 200,
                "{}",
                removed.text
            );
            for client in [&a, &b] {
                let reply = client.get(&docs, viewer).await;
                assert_eq!(ids(&reply), [format!("{tenant}-1")]);
            }

            // 304 from a hit.
            let fresh = a.get(&docs, viewer).await;
            let etag = fresh.header("etag").expect("ETag").to_string();
            let again = a
                .send(
                    "GET",
                    &docs,
                    Some(viewer),
                    Body::None,
                    &[("if-none-match", etag.as_str())],
                )
                .await;
            assert_eq!(again.status, 304, "{}", again.text);
            assert!(is_hit(&again), "{}", status(&again));
            assert_eq!(again.header("etag"), Some(etag.as_str()));

            // The OpenAPI document: public, shared by everyone.
            let spec = a
                .send("GET", "/v1/openapi.json", None, Body::None, &[])
                .await;
            assert_eq!(spec.status, 200);
            let spec = a
                .send("GET", "/v1/openapi.json", None, Body::None, &[])
                .await;
            assert!(is_hit(&spec), "{}", status(&spec));
            assert!(
                spec.header("cache-control")
                    .is_some_and(|v| v.starts_with("public, max-age=")),
                "{:?}",
                spec.headers
            );

            a_proc.terminate(Duration::from_secs(20)).await;
            b_proc.terminate(Duration::from_secs(20)).await;
        },
    )
    .await;
}
