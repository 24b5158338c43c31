//! The catalog answers the data plane caches in the two-level cache —
//! bucket rules and tenant resolution — on two "replicas" (two
//! `HybridCache`s on one private Redis) over a real catalog: bucket rules
//! are dropped everywhere by the operator's `bucket.configured` event,
//! tenant entries (which no event announces) by their TTL. Needs
//! `source .stack/env`.

mod storage_support;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use strata_dataplane::cache::invalidation::tags_for_event;
use strata_dataplane::cache::{CacheSettings, HybridCache};
use strata_dataplane::storage::buckets::BucketResolver;
use strata_dataplane::tenancy::catalog::TenantResolver;
use strata_tests::process::PrivateRedis;
use support::with_tenants;

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
