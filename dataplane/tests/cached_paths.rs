//! Cached paths of the two-level cache beyond API keys and documents
//! (`cache.rs` tests the cache itself, `gateway.rs` documents across two
//! processes): catalog answers on two "replicas" (two `HybridCache`s on
//! one private Redis) — bucket rules dropped everywhere by the operator's
//! `bucket.configured` event, tenant entries (which no event announces) by
//! their TTL — and vector search answers through the real router, dropped
//! by the writes that change them; object rows for HEAD and 304 answers.
//! Needs `source .stack/env`.

mod storage_support;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use strata_dataplane::cache::invalidation::tags_for_event;
use strata_dataplane::cache::{CacheSettings, HybridCache};
use strata_dataplane::storage::buckets::BucketResolver;
use strata_dataplane::tenancy::catalog::TenantResolver;
use strata_tests::process::PrivateRedis;
use support::{Body, Client, Server, app_state, with_tenants};

async fn replica(redis: &PrivateRedis) -> HybridCache {
    let client = redis::Client::open(redis.url.as_str()).expect("url");
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .expect("connect");
    let cache = HybridCache::new(CacheSettings::default(), Some(manager), None);
    cache.spawn_subscriber(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.l1_serving() {
        assert!(Instant::now() < deadline, "not subscribed within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache
}

/// The real router on a two-level cache over a private Redis (both live
/// as long as this value).
struct CachedServer {
    state: strata_dataplane::app::AppState,
    api: Client,
    _server: Server,
    _redis: PrivateRedis,
}

impl CachedServer {
    async fn start(catalog_url: &str) -> Self {
        Self::start_with(app_state(catalog_url)).await
    }

    async fn start_with(mut state: strata_dataplane::app::AppState) -> Self {
        let redis = PrivateRedis::start().await;
        state.tenancy = state.tenancy.clone().with_cache(replica(&redis).await);
        let server = Server::start(state.clone(), 1 << 20).await;
        Self {
            api: Client::new(&server.base),
            state,
            _server: server,
            _redis: redis,
        }
    }
}

#[tokio::test]
async fn bucket_rules_follow_the_operators_event_on_every_replica() {
    with_tenants(
        "catalog-cache",
        &["ccb"],
        |_catalog_url, catalog, tenants| async move {
            let redis = PrivateRedis::start().await;
            let tenant = &tenants[0];
            let id = storage_support::create_bucket(&catalog, tenant.id, "rules", json!({})).await;
            // A long TTL: only the event can make the change visible in time.
            let ttl = Duration::from_secs(60);
            let a =
                BucketResolver::new(catalog.pool().clone(), ttl).with_cache(replica(&redis).await);
            let cache_b = replica(&redis).await;
            let b = BucketResolver::new(catalog.pool().clone(), ttl).with_cache(cache_b.clone());
            let public = |r: &BucketResolver| {
                let r = r.clone();
                async move {
                    r.resolve(tenant.id, "rules")
                        .await
                        .expect("resolve")
                        .expect("bucket")
                        .public
                }
            };
            assert!(!public(&a).await && !public(&b).await);

            // The operator's catalog write: cached answers stay as they were…
            sqlx::query("UPDATE catalog.buckets SET public = true WHERE id = $1")
                .bind(id)
                .execute(catalog.pool())
                .await
                .expect("update");
            assert!(
                !public(&a).await && !public(&b).await,
                "served from the cache"
            );

            // …until its `bucket.configured` event is dispatched (the
            // dispatcher applies exactly this mapping), on one replica.
            let tags = tags_for_event(
                tenant.id,
                "bucket.configured",
                &id.to_string(),
                &json!({"bucket": "rules", "generation": 2}),
            );
            cache_b.invalidate_tags(&tags).await;
            assert!(public(&b).await, "the replica that invalidated");
            let deadline = Instant::now() + Duration::from_secs(2);
            while !public(&a).await {
                assert!(Instant::now() < deadline, "the other replica within 2 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }

            // Another tenant's event with the same bucket name changes nothing
            // here (tags carry the tenant).
            sqlx::query("UPDATE catalog.buckets SET public = false WHERE id = $1")
                .bind(id)
                .execute(catalog.pool())
                .await
                .expect("update");
            let other = tags_for_event(
                uuid::Uuid::new_v4(),
                "bucket.configured",
                &id.to_string(),
                &json!({"bucket": "rules"}),
            );
            cache_b.invalidate_tags(&other).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(public(&a).await && public(&b).await);
        },
    )
    .await;
}

#[tokio::test]
async fn tenant_resolution_is_cached_for_its_ttl_and_no_longer() {
    with_tenants(
        "catalog-cache",
        &["cct"],
        |_catalog_url, catalog, tenants| async move {
            let redis = PrivateRedis::start().await;
            let tenant = &tenants[0];
            let ttl = Duration::from_millis(400);
            let resolver =
                TenantResolver::new(catalog.pool().clone(), ttl).with_cache(replica(&redis).await);
            let state = || {
                let resolver = resolver.clone();
                async move {
                    resolver
                        .resolve(&tenant.name)
                        .await
                        .expect("resolve")
                        .map(|t| t.state.as_str())
                }
            };
            assert_eq!(state().await, Some("ready"));
            let changed = Instant::now();
            sqlx::query("UPDATE catalog.tenants SET state = 'suspended' WHERE id = $1")
                .bind(tenant.id)
                .execute(catalog.pool())
                .await
                .expect("suspend");
            assert_eq!(state().await, Some("ready"), "cached within the TTL");
            // Both levels expire with the TTL (L1 and L2 alike), so the change
            // shows within it plus the L2 TTL's jitter.
            let deadline = changed + ttl * 3;
            while state().await != Some("suspended") {
                assert!(Instant::now() < deadline, "not seen within 3 × TTL");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sqlx::query("UPDATE catalog.tenants SET state = 'ready' WHERE id = $1")
                .bind(tenant.id)
                .execute(catalog.pool())
                .await
                .expect("restore");
        },
    )
    .await;
}

#[tokio::test]
async fn vector_search_answers_are_cached_until_a_write_changes_them() {
    with_tenants(
        "catalog-cache",
        &["ccv"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let cached = CachedServer::start(&catalog_url).await;
            let (state, api) = (&cached.state, cached.api.clone());
            let owner = api.accept_invitation(tenant).await;
            let t = format!("/v1/tenants/{}", tenant.name);
            let made = api
                .json(
                    "POST",
                    &format!("{t}/collections"),
                    &owner,
                    json!({"name": "v", "vector": {"dimension": 2, "metric": "l2"}}),
                )
                .await;
            assert_eq!(made.status, 201, "{}", made.text);
            let upsert = |id: &str, v: [f64; 2]| {
                let (api, owner, path) = (
                    api.clone(),
                    owner.clone(),
                    format!("{t}/collections/v/vectors"),
                );
                let body = json!({"vectors": [{"id": id, "vector": v}]});
                async move {
                    let reply = api.json("POST", &path, &owner, body).await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                }
            };
            let ids = |path: String| {
                let (api, owner) = (api.clone(), owner.clone());
                async move {
                    let reply = api
                        .json("POST", &path, &owner, json!({"vector": [0.0, 0.0], "k": 5}))
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    reply.json["items"]
                        .as_array()
                        .expect("items")
                        .iter()
                        .map(|h| h["id"].as_str().expect("id").to_string())
                        .collect::<Vec<_>>()
                }
            };
            let one = format!("{t}/collections/v/search");
            let across = format!("{t}/search");
            let across_ids = || {
                let (api, owner, across) = (api.clone(), owner.clone(), across.clone());
                async move {
                    let reply = api
                        .json(
                            "POST",
                            &across,
                            &owner,
                            json!({"collections": ["v"], "vector": [0.0, 0.0], "k": 5}),
                        )
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    reply.json["items"].as_array().expect("items").len()
                }
            };
            upsert("a", [1.0, 0.0]).await;
            assert_eq!(ids(one.clone()).await, ["a"]);
            assert_eq!(across_ids().await, 1);

            // A change behind the API's back (no event, no invalidation): the
            // cached answers stay — this is what shows they are cached.
            let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
            sqlx::query("DELETE FROM embeddings WHERE id = 'a'")
                .execute(&pool)
                .await
                .expect("delete behind the API");
            assert_eq!(ids(one.clone()).await, ["a"], "served from the cache");
            assert_eq!(across_ids().await, 1, "served from the cache");

            // A write through the API drops both answers before it is acknowledged.
            upsert("b", [2.0, 0.0]).await;
            assert_eq!(ids(one.clone()).await, ["b"]);
            assert_eq!(across_ids().await, 1);
            // A different request is a different entry.
            let reply = api
                .json("POST", &one, &owner, json!({"vector": [0.0, 0.0], "k": 1}))
                .await;
            assert_eq!(reply.json["items"].as_array().map(Vec::len), Some(1));
        },
    )
    .await;
}

#[tokio::test]
async fn collection_rows_are_cached_for_reads_and_dropped_by_collection_events() {
    with_tenants(
        "catalog-cache",
        &["ccc"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let cached = CachedServer::start(&catalog_url).await;
            let (state, api) = (&cached.state, cached.api.clone());
            let owner = api.accept_invitation(tenant).await;
            let c = format!("/v1/tenants/{}/collections/books", tenant.name);
            let made = api
                .json(
                    "POST",
                    &format!("/v1/tenants/{}/collections", tenant.name),
                    &owner,
                    json!({"name": "books"}),
                )
                .await;
            assert_eq!(made.status, 201, "{}", made.text);
            let version = |api: Client, owner: String, c: String| async move {
                let got = api.get(&c, &owner).await;
                assert_eq!(got.status, 200, "{}", got.text);
                got.json["version"].as_i64().expect("version")
            };
            assert_eq!(version(api.clone(), owner.clone(), c.clone()).await, 1);

            // Behind the API's back: reads keep the cached row.
            let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
            sqlx::query("UPDATE collections SET version = 40 WHERE name = 'books'")
                .execute(&pool)
                .await
                .expect("update behind the API");
            assert_eq!(
                version(api.clone(), owner.clone(), c.clone()).await,
                1,
                "cached"
            );
            let listed = api.get(&format!("{c}/documents"), &owner).await;
            assert_eq!(listed.status, 200, "{}", listed.text);

            // A change through the API (`collection.updated`) drops it at once.
            let patched = api
                .json("PATCH", &c, &owner, json!({"require_if_match": true}))
                .await;
            assert_eq!(patched.status, 200, "{}", patched.text);
            assert_eq!(version(api.clone(), owner.clone(), c.clone()).await, 41);
        },
    )
    .await;
}

#[tokio::test]
async fn object_rows_come_from_the_cache_and_a_missing_blob_sends_the_read_to_the_database() {
    with_tenants(
        "catalog-cache",
        &["cco"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            let store = storage_support::backend(storage_support::Store::Fs).await;
            let state = storage_support::app_state(
                &catalog_url,
                store.backend.clone(),
                None,
                storage_support::settings(),
            );
            let cached = CachedServer::start_with(state).await;
            let (state, api) = (&cached.state, cached.api.clone());
            storage_support::create_bucket(&catalog, tenant.id, "files", json!({})).await;
            let owner = api.accept_invitation(tenant).await;
            let path = format!(
                "/v1/tenants/{}/buckets/files/objects/notes/a.txt",
                tenant.name
            );
            let send = |method: &'static str,
                        body: Option<&'static [u8]>,
                        headers: Vec<(&'static str, String)>| {
                let (api, owner, path) = (api.clone(), owner.clone(), path.clone());
                async move {
                    let body = match body {
                        Some(bytes) => Body::Raw(Some("text/plain"), bytes.to_vec()),
                        None => Body::None,
                    };
                    let headers: Vec<(&str, &str)> =
                        headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    api.send(method, &path, Some(&owner), body, &headers).await
                }
            };
            let etag = |reply: &support::Reply| reply.header("etag").expect("etag").to_string();

            let put = send("PUT", Some(b"one"), vec![]).await;
            assert_eq!(put.status, 201, "{}", put.text);
            let first = etag(&put);
            let head = send("HEAD", None, vec![]).await;
            assert_eq!((head.status, etag(&head)), (200, first.clone()));

            // A change behind the API's back (no event, no invalidation).
            let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
            sqlx::query("UPDATE objects SET etag = 'changed-behind' WHERE key = 'notes/a.txt'")
                .execute(&pool)
                .await
                .expect("update behind the API");
            // HEAD, a 304 and a body all come from the cached row.
            let head = send("HEAD", None, vec![]).await;
            assert_eq!(etag(&head), first, "HEAD served from the cache");
            let revalidated = send("GET", None, vec![("if-none-match", first.clone())]).await;
            assert_eq!(revalidated.status, 304, "304 from the cached row");
            assert_eq!(etag(&revalidated), first);
            let body = send("GET", None, vec![]).await;
            assert_eq!((body.status, body.text.as_str()), (200, "one"));
            assert_eq!(etag(&body), first, "the body's row comes from the cache");

            // What a write on another replica does before its invalidation
            // arrives: the row names other bytes and the old blob is
            // deleted. The cached row's blob is then missing, and the read
            // goes to the database instead of answering 200 with a broken
            // body.
            let other = format!(
                "/v1/tenants/{}/buckets/files/objects/notes/b.txt",
                tenant.name
            );
            let put_other = api
                .send(
                    "PUT",
                    &other,
                    Some(&owner),
                    Body::Raw(Some("text/plain"), b"two".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(put_other.status, 201, "{}", put_other.text);
            let old_blob: String = sqlx::query_scalar(
                "SELECT blobs -> 0 ->> 'key' FROM objects WHERE key = 'notes/a.txt'",
            )
            .fetch_one(&pool)
            .await
            .expect("old blob");
            sqlx::query(
                "UPDATE objects SET etag = 'replaced-behind', size = 3,
                        blobs = (SELECT blobs FROM objects WHERE key = 'notes/b.txt')
                  WHERE key = 'notes/a.txt'",
            )
            .execute(&pool)
            .await
            .expect("replace behind the API");
            store
                .backend
                .delete(&strata_storage::BlobKey::from_stored(old_blob))
                .await
                .expect("delete the old blob");
            let body = send("GET", None, vec![]).await;
            assert_eq!((body.status, body.text.as_str()), (200, "two"));
            assert_ne!(etag(&body), first, "the row read again from the database");

            // A write through the API drops the row before it is acknowledged.
            let put = send("PUT", Some(b"two"), vec![]).await;
            assert_eq!(put.status, 200, "{}", put.text);
            let second = etag(&put);
            let head = send("HEAD", None, vec![]).await;
            assert_eq!((head.status, etag(&head)), (200, second.clone()));
            assert_eq!(head.header("content-length"), Some("3"));
            let stale = send("GET", None, vec![("if-none-match", first.clone())]).await;
            assert_eq!((stale.status, stale.text.as_str()), (200, "two"));
            let fresh = send("GET", None, vec![("if-none-match", second.clone())]).await;
            assert_eq!(fresh.status, 304);

            // So does a deletion; a missing object is never cached.
            let deleted = send("DELETE", None, vec![]).await;
            assert_eq!(deleted.status, 204, "{}", deleted.text);
            assert_eq!(send("HEAD", None, vec![]).await.status, 404);
            assert_eq!(
                send("GET", None, vec![("if-none-match", second)])
                    .await
                    .status,
                404
            );
            let put = send("PUT", Some(b"three"), vec![]).await;
            assert_eq!(put.status, 201, "{}", put.text);
            assert_eq!(etag(&send("HEAD", None, vec![]).await), etag(&put));
        },
    )
    .await;
}
