//! Buckets end to end: the Tenant and Bucket controllers (in-process, scoped
//! to the test's namespace, with the operator's RBAC, a catalog of the test's
//! own, the filesystem backend in a temporary directory) against the real
//! kube-apiserver and PostgreSQL.
//!
//! Object rows and blobs are seeded by hand where a test needs a non-empty
//! bucket: the operator only counts and deletes them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::PgPool;
use strata_api::{Bucket, BucketStatus, ConditionStatus, Tenant, TenantPhase};
use strata_db::Catalog;
use strata_operator::bucket::{self, BucketContext};
use strata_operator::controller;
use strata_operator::placement::TenantNames;
use strata_storage::{Backend, BlobKey, FsBackend};
use strata_tests::operator_support::{
    HarnessOptions, drop_tenant_storage, test_catalog, test_context, wait_deleted, wait_for_status,
};
use strata_tests::{TestNamespace, env, operator_client, with_database};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const GONE_TIMEOUT: Duration = Duration::from_secs(60);

/// Both controllers, the catalog and the backend of one test.
struct Harness {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    catalog: Catalog,
    backend: Arc<dyn Backend>,
    _root: tempfile::TempDir,
    _catalog_db: strata_tests::TestDb,
}

impl Harness {
    /// With the filesystem backend in a temporary directory.
    async fn start(ns: &TestNamespace) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn Backend> =
            Arc::new(FsBackend::open(root.path()).await.expect("fs backend"));
        Self::start_with(ns, backend, root).await
    }

    async fn start_with(
        ns: &TestNamespace,
        backend: Arc<dyn Backend>,
        root: tempfile::TempDir,
    ) -> Self {
        let (catalog_db, catalog) = test_catalog().await;
        // The controllers act with the operator's ClusterRole only, so a
        // missing RBAC rule fails here, not in a cluster.
        let base = test_context(
            operator_client().await,
            &ns.name,
            catalog.clone(),
            HarnessOptions::default(),
        );
        let mut buckets = BucketContext::new(base.clone(), backend.clone());
        buckets.usage_refresh = Duration::from_secs(2);
        let buckets = Arc::new(buckets);
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn({
                let (ns, stop) = (ns.name.clone(), stop.clone());
                async move { controller::run(base, Some(&ns), 4, stop.cancelled_owned()).await }
            }),
            tokio::spawn({
                let (ns, stop) = (ns.name.clone(), stop.clone());
                async move { bucket::run(buckets, Some(&ns), 4, stop.cancelled_owned()).await }
            }),
        ];
        Self {
            stop,
            tasks,
            catalog,
            backend,
            _root: root,
            _catalog_db: catalog_db,
        }
    }

    /// Blob keys under a prefix.
    async fn blobs(&self, prefix: &str) -> Vec<String> {
        self.backend
            .list(prefix, None, 10_000)
            .await
            .expect("list blobs")
            .into_iter()
            .map(|b| b.key.as_str().to_string())
            .collect()
    }

    async fn put_blob(&self, key: &str) {
        let body: strata_storage::ByteStream = Box::pin(futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b"bytes of an object"))
        }));
        self.backend
            .put(&BlobKey::from_stored(key), body, None)
            .await
            .expect("put blob");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn tenant(name: &str, policy: &str) -> Tenant {
    Tenant::new(
        name,
        serde_json::from_value(json!({
            "displayName": "Bucket test",
            "adminEmail": "admin@buckets.example",
            "deletionPolicy": policy,
        }))
        .expect("tenant spec"),
    )
}

fn bucket(name: &str, tenant: &str, spec_name: &str) -> Bucket {
    Bucket::new(
        name,
        serde_json::from_value(json!({"tenantRef": tenant, "name": spec_name})).expect("spec"),
    )
}

fn example_bucket(ns: &str) -> Bucket {
    let text = std::fs::read_to_string(strata_tests::repo_root().join("examples/bucket.yaml"))
        .expect("read example");
    let mut b: Bucket = serde_yaml::from_str(&text).expect("parse example");
    b.metadata.namespace = Some(ns.to_string());
    b
}

/// The tenant database, as the stack's admin (to seed and inspect rows).
async fn tenant_db(uid: &str) -> PgPool {
    let names = TenantNames::for_tenant(Uuid::parse_str(uid).expect("uid"));
    PgPool::connect(&with_database(
        &env("STRATA_DATABASE_URL"),
        names.database.as_str(),
    ))
    .await
    .expect("tenant db")
}

async fn count(pool: &PgPool, sql: &str, bucket: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bucket)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn ready_tenant(ns: &TestNamespace, name: &str, policy: &str) -> Tenant {
    let tenants: Api<Tenant> = ns.api();
    tenants
        .create(&PostParams::default(), &tenant(name, policy))
        .await
        .expect("create tenant");
    wait_for_status(&tenants, name, READY_TIMEOUT, |s| {
        s.phase == Some(TenantPhase::Ready)
    })
    .await
}

async fn wait_bucket(
    api: &Api<Bucket>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&BucketStatus) -> bool,
) -> Bucket {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(b) = api.get(name).await {
            if b.status.as_ref().is_some_and(&check) {
                return b;
            }
            last = Some(b);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "timed out waiting for bucket {name}; last seen: {:#?}",
        last.map(|b| b.status)
    );
}

fn condition_is(s: &BucketStatus, type_: &str, state: ConditionStatus, reason: &str) -> bool {
    strata_api::condition::find(&s.conditions, type_)
        .is_some_and(|c| c.status == state && c.reason == reason)
}

fn is_ready(s: &BucketStatus) -> bool {
    condition_is(s, "Ready", ConditionStatus::True, "Ready")
}

async fn wait_bucket_gone(api: &Api<Bucket>, name: &str) {
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if api.get_opt(name).await.expect("get bucket").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = api.get_opt(name).await.expect("get bucket");
    panic!(
        "bucket {name} still exists: {:#?}",
        last.and_then(|b| b.status)
    );
}

async fn events_for(ns: &TestNamespace, name: &str) -> Vec<Event> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

async fn wait_event(ns: &TestNamespace, name: &str, reason: &str) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events_for(ns, name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
        {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event on {name}: {:?}",
            events_for(ns, name)
                .await
                .iter()
                .map(|e| (e.reason.clone(), e.note.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn uid_of(b: &Bucket) -> Uuid {
    Uuid::parse_str(b.metadata.uid.as_deref().expect("uid")).expect("uuid")
}

async fn audit_actions(db: &PgPool, bucket: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE detail->>'bucketId' = $1::text ORDER BY id",
    )
    .bind(bucket)
    .fetch_all(db)
    .await
    .expect("audit")
}

/// The bucket's events in the tenant's outbox, in order: (type, version,
/// the `bucket` named in the data).
async fn outbox_events(db: &PgPool, bucket: Uuid) -> Vec<(String, Option<i64>, String)> {
    sqlx::query_as(
        "SELECT topic, (payload->>'version')::bigint, payload->'data'->>'bucket'
           FROM outbox WHERE aggregate_id = $1::text AND topic LIKE 'bucket.%' ORDER BY id",
    )
    .bind(bucket)
    .fetch_all(db)
    .await
    .expect("outbox")
}

/// Seeds `n` objects (rows and blobs), an upload with a part, a reservation
/// and a blob intent for a bucket, with its usage and the tenant's total.
async fn seed_objects(h: &Harness, db: &PgPool, bucket: Uuid, prefix: &str, n: i64) {
    for i in 0..n {
        let version = Uuid::new_v4();
        let key = format!("{prefix}/o/{version}");
        h.put_blob(&key).await;
        sqlx::query(
            "INSERT INTO objects (bucket_id, key, version_id, size, content_type, etag, blobs, owner)
             VALUES ($1, $2, $3, 18, 'text/plain', 'e', $4, 'test')",
        )
        .bind(bucket)
        .bind(format!("docs/{i}.txt"))
        .bind(version)
        .bind(json!([{ "key": key, "size": 18 }]))
        .execute(db)
        .await
        .expect("seed object");
    }
    let upload = Uuid::new_v4();
    let part_key = format!("{prefix}/p/{upload}/1");
    h.put_blob(&part_key).await;
    for sql in [
        "INSERT INTO uploads (bucket_id, id, key, content_type, owner) VALUES ($1, $2, 'big.bin', 'application/octet-stream', 'test')",
        "INSERT INTO upload_parts (bucket_id, upload_id, part_number, blob_key, size, etag) VALUES ($1, $2, 1, 'k', 18, 'e')",
        "INSERT INTO reservations (bucket_id, id, bytes, objects, expires_at) VALUES ($1, $2, 100, 1, now() + interval '1 hour')",
        "INSERT INTO blob_intents (bucket_id, blob_key, expires_at) VALUES ($1, $2::text, now() + interval '1 hour')",
    ] {
        sqlx::query(sql)
            .bind(bucket)
            .bind(upload)
            .execute(db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for id in [bucket, Uuid::nil()] {
        sqlx::query(
            "INSERT INTO bucket_usage (bucket_id, bytes, objects, reserved_bytes, reserved_objects)
             VALUES ($1, $2, $3, 100, 1)
             ON CONFLICT (bucket_id) DO UPDATE
                SET bytes = bucket_usage.bytes + EXCLUDED.bytes,
                    objects = bucket_usage.objects + EXCLUDED.objects,
                    reserved_bytes = bucket_usage.reserved_bytes + 100,
                    reserved_objects = bucket_usage.reserved_objects + 1",
        )
        .bind(id)
        .bind(18 * n)
        .bind(n)
        .execute(db)
        .await
        .expect("seed usage");
    }
}

async fn storage_rows(db: &PgPool, bucket: Uuid) -> i64 {
    let mut total = 0;
    for (table, _) in bucket::TENANT_STORAGE_TABLES
        .iter()
        .chain([&(bucket::USAGE_TABLE, "")])
    {
        total += count(
            db,
            &format!("SELECT count(*) FROM {table} WHERE bucket_id = $1"),
            bucket,
        )
        .await;
    }
    total
}

#[tokio::test]
async fn example_bucket_becomes_ready_with_rules_location_and_usage() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "acme", "Retain").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(&PostParams::default(), &example_bucket(&ns.name))
        .await
        .expect("apply example");
    let b = wait_bucket(&buckets, "acme-images", READY_TIMEOUT, is_ready).await;
    let id = uid_of(&b);
    let status = b.status.clone().expect("status");
    for type_ in [
        "TenantReady",
        "NameClaimed",
        "BackendReady",
        "UsageReported",
        "Ready",
    ] {
        let c = strata_api::condition::find(&status.conditions, type_)
            .unwrap_or_else(|| panic!("{type_} missing: {status:#?}"));
        assert_eq!(c.status, ConditionStatus::True, "{type_}: {c:?}");
        assert_eq!(c.observed_generation, b.metadata.generation, "{type_}");
    }
    assert_eq!(status.observed_generation, b.metadata.generation);
    assert_eq!(status.bucket_id, Some(id.to_string()));
    let prefix = format!("t/{tenant_uid}/b/{id}");
    assert_eq!(
        status.backend_bucket,
        Some(format!("{}/{prefix}", h.backend.describe())),
        "the location is the backend's plus the bucket's prefix, from UIDs"
    );
    assert!(
        status
            .backend_bucket
            .as_deref()
            .unwrap_or_default()
            .starts_with("file://"),
        "{status:?}"
    );
    assert_eq!(
        status.usage,
        Some(strata_api::bucket::BucketUsage {
            bytes: 0,
            objects: 0
        })
    );
    assert!(
        b.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&bucket::FINALIZER.to_string())
    );

    // The catalog entry holds the rules, as the data plane reads them.
    let (record, state) = h.catalog.bucket(id).await.expect("catalog").expect("entry");
    assert_eq!(state, strata_db::BucketState::Ready);
    assert_eq!(record.name, "acme-images");
    assert_eq!(record.tenant_id.to_string(), tenant_uid);
    assert_eq!(record.backend_prefix(), prefix);
    assert!(!record.public);
    assert_eq!(record.quota_bytes, Some(1_073_741_824));
    assert_eq!(record.quota_objects, Some(100_000));
    assert_eq!(record.max_object_size, Some(5_242_880));
    assert_eq!(record.allowed_content_types, ["image/*"]);
    assert_eq!(
        record.lifecycle,
        json!([{"prefix": "tmp/", "expireAfterDays": 7, "abortIncompleteMultipartUploadAfterDays": 1}])
    );
    assert!(record.image_transforms && record.antivirus_scan && !record.compression);
    let stored_prefix: String =
        sqlx::query_scalar("SELECT backend_prefix FROM catalog.buckets WHERE id = $1")
            .bind(id)
            .fetch_one(h.catalog.pool())
            .await
            .expect("prefix");
    assert_eq!(stored_prefix, prefix);

    // The usage row exists from the start; what the data plane counts shows
    // in the status and in `kubectl get buckets`.
    let db = tenant_db(&tenant_uid).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM bucket_usage WHERE bucket_id = $1",
            id
        )
        .await,
        1
    );
    sqlx::query("UPDATE bucket_usage SET bytes = 123456, objects = 7 WHERE bucket_id = $1")
        .bind(id)
        .execute(&db)
        .await
        .expect("seed usage");
    wait_bucket(&buckets, "acme-images", Duration::from_secs(30), |s| {
        s.usage
            .as_ref()
            .is_some_and(|u| u.bytes == 123456 && u.objects == 7)
    })
    .await;
    let out = std::process::Command::new(strata_tests::repo_root().join("hack/kubectl.sh"))
        .args(["get", "buckets", "-n", &ns.name, "-o", "wide"])
        .output()
        .expect("run kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "TENANT", "READY", "BYTES", "QUOTA", "OBJECTS", "AGE"
        ],
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..6],
        ["acme-images", "acme", "True", "123456", "1073741824", "7"],
        "{text}"
    );

    // A spec change reaches the catalog and is audited once per generation.
    buckets
        .patch(
            "acme-images",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"public": true, "quota": {"bytes": 2048}}})),
        )
        .await
        .expect("patch");
    let b = wait_bucket(&buckets, "acme-images", Duration::from_secs(30), |s| {
        s.observed_generation == Some(2)
            && s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2) || c.type_ == "UsageReported")
    })
    .await;
    assert_eq!(b.metadata.generation, Some(2));
    let (record, _) = h.catalog.bucket(id).await.expect("catalog").expect("entry");
    assert!(record.public);
    assert_eq!(record.quota_bytes, Some(2048));
    assert_eq!(record.generation, 2);
    assert_eq!(
        audit_actions(&db, id).await,
        ["bucket.configured", "bucket.configured"],
        "one audit entry per generation, however often it is reconciled"
    );
    // Each generation is announced once, to the tenant's webhooks and caches.
    assert_eq!(
        outbox_events(&db, id).await,
        [
            (
                "bucket.configured".to_string(),
                Some(1),
                "acme-images".to_string()
            ),
            (
                "bucket.configured".to_string(),
                Some(2),
                "acme-images".to_string()
            ),
        ]
    );
    wait_event(&ns, "acme-images", "Ready").await;
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}

#[tokio::test]
async fn bucket_waits_for_its_tenant_then_becomes_ready() {
    let ns = TestNamespace::new().await;
    let _h = Harness::start(&ns).await;
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(
            &PostParams::default(),
            &bucket("early", "late", "early-bucket"),
        )
        .await
        .expect("create bucket");
    let b = wait_bucket(&buckets, "early", Duration::from_secs(30), |s| {
        condition_is(s, "TenantReady", ConditionStatus::False, "TenantNotFound")
    })
    .await;
    let status = b.status.expect("status");
    let ready = strata_api::condition::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, ConditionStatus::False);
    assert!(ready.message.contains("\"late\""), "{ready:?}");

    // The Tenant appears: the watch wakes the bucket once it is Ready.
    let t = ready_tenant(&ns, "late", "Delete").await;
    wait_bucket(&buckets, "early", Duration::from_secs(60), is_ready).await;
    buckets
        .delete("early", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "early").await;
    drop_tenant_storage(Uuid::parse_str(&t.metadata.uid.expect("uid")).expect("uid")).await;
}

#[tokio::test]
async fn a_second_bucket_with_the_same_name_gets_a_conflict_and_overwrites_nothing() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "acme", "Delete").await;
    let buckets: Api<Bucket> = ns.api();
    let mut first = bucket("first", "acme", "shared-name");
    first.spec.public = true;
    buckets
        .create(&PostParams::default(), &first)
        .await
        .expect("create first");
    let first = wait_bucket(&buckets, "first", READY_TIMEOUT, is_ready).await;
    buckets
        .create(
            &PostParams::default(),
            &bucket("second", "acme", "shared-name"),
        )
        .await
        .expect("create second");
    let second = wait_bucket(&buckets, "second", Duration::from_secs(30), |s| {
        condition_is(s, "NameClaimed", ConditionStatus::False, "NameConflict")
    })
    .await;
    let status = second.status.clone().expect("status");
    let ready = strata_api::condition::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::False, "NameConflict")
    );
    assert!(
        ready.message.contains(&format!("Bucket {}/first", ns.name)),
        "names the holder: {}",
        ready.message
    );
    wait_event(&ns, "second", "NameConflict").await;
    // The first bucket's entry is untouched; the second has none.
    let (record, _) = h
        .catalog
        .bucket(uid_of(&first))
        .await
        .expect("catalog")
        .expect("entry");
    assert!(record.public);
    assert!(
        h.catalog
            .bucket(uid_of(&second))
            .await
            .expect("catalog")
            .is_none()
    );

    // Deleting the loser touches nothing of the winner's.
    buckets
        .delete("second", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "second").await;
    assert!(
        h.catalog
            .bucket(uid_of(&first))
            .await
            .expect("catalog")
            .is_some()
    );
    drop_tenant_storage(Uuid::parse_str(&t.metadata.uid.expect("uid")).expect("uid")).await;
}

#[tokio::test]
async fn retain_removes_the_entry_and_keeps_objects_and_bytes() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "keeper", "Retain").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(
            &PostParams::default(),
            &bucket("kept", "keeper", "kept-bucket"),
        )
        .await
        .expect("create");
    let b = wait_bucket(&buckets, "kept", READY_TIMEOUT, is_ready).await;
    let id = uid_of(&b);
    let prefix = format!("t/{tenant_uid}/b/{id}");
    let db = tenant_db(&tenant_uid).await;
    seed_objects(&h, &db, id, &prefix, 2).await;

    buckets
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "kept").await;
    assert!(
        h.catalog.bucket(id).await.expect("catalog").is_none(),
        "entry removed"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM objects WHERE bucket_id = $1", id).await,
        2,
        "metadata kept"
    );
    assert_eq!(h.blobs(&format!("{prefix}/")).await.len(), 3, "bytes kept");
    let released = wait_event(&ns, "kept", "Released").await;
    let note = released.note.unwrap_or_default();
    assert!(
        note.contains("Retain") && note.contains("2 objects"),
        "{note}"
    );
    assert_eq!(
        audit_actions(&db, id).await,
        ["bucket.configured", "bucket.retained"]
    );
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}

#[tokio::test]
async fn delete_removes_an_empty_bucket() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "doomed", "Delete").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(
            &PostParams::default(),
            &bucket("empty", "doomed", "empty-bucket"),
        )
        .await
        .expect("create");
    let b = wait_bucket(&buckets, "empty", READY_TIMEOUT, is_ready).await;
    let id = uid_of(&b);
    let db = tenant_db(&tenant_uid).await;
    buckets
        .delete("empty", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "empty").await;
    assert!(h.catalog.bucket(id).await.expect("catalog").is_none());
    assert_eq!(storage_rows(&db, id).await, 0, "usage row removed too");
    assert_eq!(
        audit_actions(&db, id).await,
        ["bucket.configured", "bucket.deleting", "bucket.deleted"]
    );
    let announced: Vec<String> = outbox_events(&db, id)
        .await
        .into_iter()
        .map(|(topic, _, bucket)| format!("{topic} {bucket}"))
        .collect();
    assert_eq!(
        announced,
        [
            "bucket.configured empty-bucket",
            "bucket.deleted empty-bucket"
        ]
    );
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}

#[tokio::test]
async fn delete_refuses_a_non_empty_bucket_until_forced_then_removes_rows_and_blobs() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "doomed", "Delete").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    for (name, spec_name) in [("full", "full-bucket"), ("neighbour", "neighbour-bucket")] {
        buckets
            .create(&PostParams::default(), &bucket(name, "doomed", spec_name))
            .await
            .expect("create");
    }
    let full = uid_of(&wait_bucket(&buckets, "full", READY_TIMEOUT, is_ready).await);
    let neighbour = uid_of(&wait_bucket(&buckets, "neighbour", READY_TIMEOUT, is_ready).await);
    let prefix = format!("t/{tenant_uid}/b/{full}");
    let neighbour_prefix = format!("t/{tenant_uid}/b/{neighbour}");
    let db = tenant_db(&tenant_uid).await;
    seed_objects(&h, &db, full, &prefix, 3).await;
    seed_objects(&h, &db, neighbour, &neighbour_prefix, 1).await;
    let neighbour_rows = storage_rows(&db, neighbour).await;

    // Refused: the condition says how many objects, and how to force it.
    buckets
        .delete("full", &DeleteParams::default())
        .await
        .expect("delete");
    let b = wait_bucket(&buckets, "full", Duration::from_secs(30), |s| {
        condition_is(s, "Ready", ConditionStatus::False, "BucketNotEmpty")
    })
    .await;
    let ready =
        strata_api::condition::find(&b.status.as_ref().expect("status").conditions, "Ready")
            .expect("Ready")
            .clone();
    assert!(ready.message.contains("3 objects"), "{}", ready.message);
    assert!(
        ready.message.contains(bucket::FORCE_DELETE_ANNOTATION),
        "{}",
        ready.message
    );
    let warning = wait_event(&ns, "full", "BucketNotEmpty").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap_or_default().contains("3 objects"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        buckets.get_opt("full").await.expect("get").is_some(),
        "still there"
    );
    let (_, state) = h
        .catalog
        .bucket(full)
        .await
        .expect("catalog")
        .expect("entry");
    assert_eq!(state, strata_db::BucketState::Ready, "still served");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM objects WHERE bucket_id = $1",
            full
        )
        .await,
        3
    );

    // Forced: every row and blob of this bucket goes, nothing of the neighbour's.
    buckets
        .patch(
            "full",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {bucket::FORCE_DELETE_ANNOTATION: "true"}}}),
            ),
        )
        .await
        .expect("annotate");
    wait_bucket_gone(&buckets, "full").await;
    assert!(h.catalog.bucket(full).await.expect("catalog").is_none());
    assert_eq!(
        storage_rows(&db, full).await,
        0,
        "every row of the bucket is gone"
    );
    assert!(
        h.blobs(&format!("{prefix}/")).await.is_empty(),
        "every blob is gone"
    );
    assert_eq!(storage_rows(&db, neighbour).await, neighbour_rows);
    assert_eq!(h.blobs(&format!("{neighbour_prefix}/")).await.len(), 2);
    let (bytes, objects, reserved): (i64, i64, i64) = sqlx::query_as(
        "SELECT bytes, objects, reserved_bytes FROM bucket_usage WHERE bucket_id = $1",
    )
    .bind(Uuid::nil())
    .fetch_one(&db)
    .await
    .expect("tenant usage");
    assert_eq!(
        (bytes, objects, reserved),
        (18, 1, 100),
        "the tenant's total no longer counts the deleted bucket"
    );
    let actions = audit_actions(&db, full).await;
    assert_eq!(
        actions,
        ["bucket.configured", "bucket.deleting", "bucket.deleted"]
    );
    let detail: serde_json::Value = sqlx::query_scalar(
        "SELECT detail FROM audit_events WHERE action = 'bucket.deleted' AND detail->>'bucketId' = $1::text",
    )
    .bind(full)
    .fetch_one(&db)
    .await
    .expect("audit detail");
    assert_eq!(detail["objectsRemoved"], 3);
    assert_eq!(detail["blobsRemoved"], 4);
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}

#[tokio::test]
async fn an_interrupted_forced_deletion_resumes_without_the_annotation() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "doomed", "Delete").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(
            &PostParams::default(),
            &bucket("half", "doomed", "half-bucket"),
        )
        .await
        .expect("create");
    let id = uid_of(&wait_bucket(&buckets, "half", READY_TIMEOUT, is_ready).await);
    let prefix = format!("t/{tenant_uid}/b/{id}");
    let db = tenant_db(&tenant_uid).await;
    seed_objects(&h, &db, id, &prefix, 4).await;
    // As if a forced deletion stopped half-way: marked `deleting`, some
    // rows and blobs already gone.
    h.catalog
        .set_bucket_state(id, strata_db::BucketState::Deleting)
        .await
        .expect("mark deleting");
    sqlx::query("DELETE FROM objects WHERE bucket_id = $1 AND key IN ('docs/0.txt', 'docs/1.txt')")
        .bind(id)
        .execute(&db)
        .await
        .expect("partial delete");
    let first = h.blobs(&format!("{prefix}/")).await.remove(0);
    h.backend
        .delete(&BlobKey::from_stored(first))
        .await
        .expect("partial blob delete");

    buckets
        .delete("half", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "half").await;
    assert_eq!(storage_rows(&db, id).await, 0);
    assert!(h.blobs(&format!("{prefix}/")).await.is_empty());
    assert!(h.catalog.bucket(id).await.expect("catalog").is_none());
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}

#[tokio::test]
async fn deleting_a_tenant_deletes_its_buckets_first() {
    let ns = TestNamespace::new().await;
    let h = Harness::start(&ns).await;
    let t = ready_tenant(&ns, "gone", "Delete").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    for (name, spec_name) in [("one", "bucket-one"), ("two", "bucket-two")] {
        buckets
            .create(&PostParams::default(), &bucket(name, "gone", spec_name))
            .await
            .expect("create");
    }
    let one = uid_of(&wait_bucket(&buckets, "one", READY_TIMEOUT, is_ready).await);
    let two = uid_of(&wait_bucket(&buckets, "two", READY_TIMEOUT, is_ready).await);
    let db = tenant_db(&tenant_uid).await;
    // A non-empty bucket without the annotation: the tenant's own deletion
    // (policy Delete) is what forces it.
    let prefix = format!("t/{tenant_uid}/b/{one}");
    seed_objects(&h, &db, one, &prefix, 2).await;
    db.close().await;

    let tenants: Api<Tenant> = ns.api();
    tenants
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete tenant");
    wait_event(&ns, "gone", "BucketsRemaining").await;
    wait_deleted(&tenants, "gone", Duration::from_secs(90)).await;
    assert!(
        buckets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    for id in [one, two] {
        assert!(h.catalog.bucket(id).await.expect("catalog").is_none());
    }
    assert!(
        h.blobs(&format!("t/{tenant_uid}/")).await.is_empty(),
        "bytes deleted"
    );
    let names = TenantNames::for_tenant(Uuid::parse_str(&tenant_uid).expect("uid"));
    let admin = PgPool::connect(&env("STRATA_DATABASE_URL"))
        .await
        .expect("admin");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(names.database.as_str())
            .fetch_one(&admin)
            .await
            .expect("query");
    assert!(
        !exists,
        "the database is dropped after the buckets are gone"
    );
    admin.close().await;
}

#[tokio::test]
async fn forced_deletion_on_s3_removes_every_blob_under_the_prefix_only() {
    let ns = TestNamespace::new().await;
    let s3_bucket = strata_tests::TestBucket::new().await;
    let args = strata_storage::StorageArgs {
        backend: strata_storage::BackendKind::S3,
        root: std::path::PathBuf::new(),
        s3_endpoint: Some(env("STRATA_S3_ENDPOINT")),
        s3_region: env("STRATA_S3_REGION"),
        s3_bucket: s3_bucket.name.clone(),
        s3_access_key_id: Some(env("STRATA_S3_ACCESS_KEY_ID")),
        s3_secret_access_key: Some(env("STRATA_S3_SECRET_ACCESS_KEY")),
    };
    let backend = strata_storage::connect(&args).await.expect("s3 backend");
    let h = Harness::start_with(&ns, backend, tempfile::tempdir().expect("tempdir")).await;
    let t = ready_tenant(&ns, "doomed", "Delete").await;
    let tenant_uid = t.metadata.uid.clone().expect("uid");
    let buckets: Api<Bucket> = ns.api();
    buckets
        .create(&PostParams::default(), &bucket("s3", "doomed", "s3-bucket"))
        .await
        .expect("create");
    let b = wait_bucket(&buckets, "s3", READY_TIMEOUT, is_ready).await;
    let id = uid_of(&b);
    let prefix = format!("t/{tenant_uid}/b/{id}");
    let location = b.status.and_then(|s| s.backend_bucket).unwrap_or_default();
    assert!(
        location.starts_with(&format!("s3://{}/{prefix}", s3_bucket.name)),
        "{location}"
    );
    let db = tenant_db(&tenant_uid).await;
    seed_objects(&h, &db, id, &prefix, 3).await;
    // A blob whose key merely starts with the same characters is not this bucket's.
    let lookalike = format!("{prefix}x/o/1");
    h.put_blob(&lookalike).await;

    buckets
        .patch(
            "s3",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {bucket::FORCE_DELETE_ANNOTATION: "true"}}}),
            ),
        )
        .await
        .expect("annotate");
    buckets
        .delete("s3", &DeleteParams::default())
        .await
        .expect("delete");
    wait_bucket_gone(&buckets, "s3").await;
    assert!(h.blobs(&format!("{prefix}/")).await.is_empty());
    assert_eq!(h.blobs(&prefix).await, [lookalike]);
    assert_eq!(storage_rows(&db, id).await, 0);
    db.close().await;
    drop_tenant_storage(Uuid::parse_str(&tenant_uid).expect("uid")).await;
}
