//! The storage API's quotas under concurrency, race-safe creates,
//! presigned URLs, multipart uploads, the sweeper, the lifecycle worker
//! and the antivirus hook, against real services (PostgreSQL, the stack's
//! S3 server and clamd). Needs `source .stack/env`.

mod storage_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use storage_support::{
    Store, app_state, backend, bytes, create_bucket, set_tenant_quotas, settings,
};
use strata_dataplane::storage::StorageSettings;
use support::{Body, Checked, Client, Server, with_tenants};

fn obj(tenant: &str, bucket: &str, key: &str) -> String {
    format!("/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}")
}

async fn usage(client: &Client, tenant: &str, bucket: &str, key: &str) -> (i64, i64) {
    let reply = client
        .get(&format!("/v1/tenants/{tenant}/buckets/{bucket}"), key)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    (
        reply.json["usage"]["bytes"].as_i64().expect("bytes"),
        reply.json["usage"]["objects"].as_i64().expect("objects"),
    )
}

async fn listed_total(client: &Client, tenant: &str, bucket: &str, key: &str) -> (i64, i64) {
    let reply = client
        .get(
            &format!("/v1/tenants/{tenant}/buckets/{bucket}/objects?limit=1000"),
            key,
        )
        .await;
    let items = reply.json["items"].as_array().cloned().unwrap_or_default();
    (
        items.iter().map(|i| i["size"].as_i64().unwrap_or(0)).sum(),
        items.len() as i64,
    )
}

#[tokio::test]
async fn quotas_hold_under_concurrency_on_fs() {
    quotas(Store::Fs).await;
}

#[tokio::test]
async fn quotas_hold_under_concurrency_on_s3() {
    quotas(Store::S3).await;
}

async fn quotas(store: Store) {
    with_tenants(
        "storage-quota",
        &["stq"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(store).await;
            let server = Server::start(
                app_state(&catalog_url, tb.backend.clone(), None, settings()),
                1 << 20,
            )
            .await;
            let client = Client::new(&server.base);
            let t = &tenants[0];
            let admin = client.accept_invitation(t).await;
            // 10 objects of 1000 bytes fit; the byte quota would allow 15.
            create_bucket(
                &catalog,
                t.id,
                "quota",
                json!({"quota_objects": 10, "quota_bytes": 15_000}),
            )
            .await;
            let mut tasks = Vec::new();
            for i in 0..32 {
                let (client, admin, path) = (
                    client.clone(),
                    admin.clone(),
                    obj(&t.name, "quota", &format!("k{i}")),
                );
                tasks.push(tokio::spawn(async move {
                    client
                        .send(
                            "PUT",
                            &path,
                            Some(&admin),
                            Body::Raw(Some("application/octet-stream"), bytes(1000, i as u8)),
                            &[],
                        )
                        .await
                }));
            }
            let mut created = 0;
            for task in tasks {
                let reply = task.await.expect("task");
                match reply.status {
                    201 => created += 1,
                    507 => assert_eq!(reply.json["code"], "quota-exceeded", "{}", reply.text),
                    other => panic!("unexpected {other}: {}", reply.text),
                }
            }
            assert_eq!(created, 10);
            assert_eq!(usage(&client, &t.name, "quota", &admin).await, (10_000, 10));
            assert_eq!(
                listed_total(&client, &t.name, "quota", &admin).await,
                (10_000, 10)
            );
            // Overwrites of existing keys still work in a full bucket.
            let reply = client
                .send(
                    "PUT",
                    &obj(&t.name, "quota", "k0"),
                    Some(&admin),
                    Body::Raw(None, bytes(100, 1)),
                    &[],
                )
                .await;
            let status = reply.status;
            // k0 may or may not be among the 10; either outcome is consistent.
            assert!(status == 200 || status == 507, "{}", reply.text);

            // Bytes: 32 concurrent chunk-less uploads of 1500 bytes against 15000.
            create_bucket(&catalog, t.id, "bytes", json!({"quota_bytes": 15_000})).await;
            let mut tasks = Vec::new();
            for i in 0..32 {
                let (client, admin, path) = (
                    client.clone(),
                    admin.clone(),
                    obj(&t.name, "bytes", &format!("k{i}")),
                );
                tasks.push(tokio::spawn(async move {
                    client
                        .send(
                            "PUT",
                            &path,
                            Some(&admin),
                            Body::Raw(None, bytes(1500, i as u8)),
                            &[],
                        )
                        .await
                        .status
                }));
            }
            let mut created = 0;
            for task in tasks {
                if task.await.expect("task") == 201 {
                    created += 1;
                }
            }
            assert_eq!(created, 10);
            assert_eq!(usage(&client, &t.name, "bytes", &admin).await, (15_000, 10));

            // Tenant quotas across buckets.
            set_tenant_quotas(
                &catalog,
                t.id,
                json!({"storageBytes": 26_000, "objects": 100}),
            )
            .await;
            create_bucket(&catalog, t.id, "more", json!({})).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            let reply = client
                .send(
                    "PUT",
                    &obj(&t.name, "more", "a"),
                    Some(&admin),
                    Body::Raw(None, bytes(1000, 1)),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);
            let reply = client
                .send(
                    "PUT",
                    &obj(&t.name, "more", "b"),
                    Some(&admin),
                    Body::Raw(None, bytes(1000, 1)),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 507, "{}", reply.text);
            assert!(
                reply.json["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("tenant")),
                "{}",
                reply.text
            );
            drop(tb);
        },
    )
    .await;
}

#[tokio::test]
async fn concurrent_create_only_puts_have_one_winner() {
    with_tenants(
        "storage-race",
        &["str"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let server = Server::start(
                app_state(&catalog_url, tb.backend.clone(), None, settings()),
                1 << 20,
            )
            .await;
            let client = Client::new(&server.base);
            let t = &tenants[0];
            let admin = client.accept_invitation(t).await;
            create_bucket(&catalog, t.id, "race", json!({})).await;
            let mut tasks = Vec::new();
            for i in 0..16 {
                let (client, admin, path) =
                    (client.clone(), admin.clone(), obj(&t.name, "race", "one"));
                tasks.push(tokio::spawn(async move {
                    let reply = client
                        .send(
                            "PUT",
                            &path,
                            Some(&admin),
                            Body::Raw(Some("text/plain"), format!("writer {i}").into_bytes()),
                            &[("if-none-match", "*")],
                        )
                        .await;
                    (reply.status, i)
                }));
            }
            let mut winners = Vec::new();
            for task in tasks {
                let (status, i) = task.await.expect("task");
                match status {
                    201 => winners.push(i),
                    412 => {}
                    other => panic!("unexpected {other}"),
                }
            }
            assert_eq!(winners.len(), 1, "{winners:?}");
            let got = client.get(&obj(&t.name, "race", "one"), &admin).await;
            assert_eq!(got.text, format!("writer {}", winners[0]));
            assert_eq!(
                usage(&client, &t.name, "race", &admin).await,
                (got.text.len() as i64, 1)
            );
            drop(tb);
        },
    )
    .await;
}

async fn presign(
    client: &Client,
    tenant: &str,
    bucket: &str,
    key: &str,
    body: Value,
) -> support::Reply {
    client
        .json(
            "POST",
            &format!("/v1/tenants/{tenant}/buckets/{bucket}/presign"),
            key,
            body,
        )
        .await
}

/// The URL with one query parameter replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').expect("query");
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (n, v) in form_urlencoded::parse(query.as_bytes()) {
        out.append_pair(&n, if n == name { value } else { &v });
    }
    format!("{path}?{}", out.finish())
}

fn param(url: &str, name: &str) -> String {
    let query = url.split_once('?').expect("query").1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .expect("param")
}

#[tokio::test]
async fn presigned_urls() {
    with_tenants("storage-presign", &["stp", "stq"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(Store::Fs).await;
        let server = Server::start(app_state(&catalog_url, tb.backend.clone(), None, settings()), 1 << 20).await;
        let client = Client::new(&server.base);
        let (a, b) = (&tenants[0], &tenants[1]);
        let admin = client.accept_invitation(a).await;
        let admin_b = client.accept_invitation(b).await;
        let viewer = client.new_key(&a.name, &admin, "viewer").await;
        let checked = Checked::new(client.clone(), b, &[]);
        create_bucket(&catalog, a.id, "shared", json!({})).await;
        create_bucket(&catalog, a.id, "other", json!({})).await;
        create_bucket(&catalog, b.id, "shared", json!({})).await;
        for bucket in ["shared", "other"] {
            for key in ["a b/doc.txt", "a b/doc2.txt"] {
                let path = obj(&a.name, bucket, &key.replace(' ', "%20"));
                let reply = client.send("PUT", &path, Some(&admin), Body::Raw(Some("text/plain"), format!("{bucket}:{key}").into_bytes()), &[]).await;
                assert_eq!(reply.status, 201, "{}", reply.text);
            }
        }

        let issued = presign(&client, &a.name, "shared", &viewer, json!({"method": "GET", "key": "a b/doc.txt", "expires_in": 300})).await;
        let issued = checked.ok(&issued, 200);
        let url = issued["url"].as_str().expect("url").to_string();
        assert_eq!(issued["method"], "GET");
        let got = client.send("GET", &url, None, Body::None, &[]).await;
        assert_eq!((got.status, got.text.as_str()), (200, "shared:a b/doc.txt"), "{url}");
        assert_eq!(client.send("HEAD", &url, None, Body::None, &[]).await.status, 200);
        // Method mismatch: a GET URL cannot PUT or DELETE.
        let reply = client.send("PUT", &url, None, Body::Raw(Some("text/plain"), b"evil".to_vec()), &[]).await;
        checked.problem(&reply, 403, "forbidden");
        assert_eq!(client.send("DELETE", &url, None, Body::None, &[]).await.status, 401);
        // Each signed field changed in turn.
        let tampered = [
            url.replacen(&format!("/tenants/{}/", a.name), &format!("/tenants/{}/", b.name), 1),
            url.replacen("/buckets/shared/", "/buckets/other/", 1),
            url.replacen("doc.txt", "doc2.txt", 1),
            with_param(&url, "X-Strata-Expires", &(param(&url, "X-Strata-Expires").parse::<u64>().expect("n") + 1).to_string()),
            with_param(&url, "X-Strata-Key-Id", "0123456789abcdef"),
            with_param(&url, "X-Strata-Signature", &"0".repeat(64)),
            format!("{url}&X-Strata-Content-Type=text%2Fplain"),
            format!("{url}&X-Strata-Max-Length=10"),
        ];
        for (i, bad) in tampered.iter().enumerate() {
            let reply = client.send("GET", bad, None, Body::None, &[]).await;
            assert!(reply.status == 403 || reply.status == 404, "tampered #{i} ({bad}) answered {}: {}", reply.status, reply.text);
            assert!(!reply.text.contains("doc.txt") || reply.status != 200);
        }
        // Tenant A's URL never reaches tenant B (404, as any foreign credential).
        let reply = client.send("GET", &tampered[0], None, Body::None, &[]).await;
        checked.problem(&reply, 404, "not-found");
        let _ = admin_b;
        // Expired (and expiry bounds).
        let short = checked.ok(&presign(&client, &a.name, "shared", &viewer, json!({"method": "GET", "key": "a b/doc.txt", "expires_in": 1})).await, 200);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let reply = client.send("GET", short["url"].as_str().expect("url"), None, Body::None, &[]).await;
        checked.problem(&reply, 403, "forbidden");
        let reply = presign(&client, &a.name, "shared", &viewer, json!({"method": "GET", "key": "x", "expires_in": 30 * 24 * 3600})).await;
        checked.problem(&reply, 422, "validation-failed");
        let reply = presign(&client, &a.name, "shared", &viewer, json!({"method": "DELETE", "key": "x"})).await;
        checked.problem(&reply, 422, "validation-failed");
        let reply = presign(&client, &a.name, "shared", &viewer, json!({"method": "GET", "key": "../x"})).await;
        checked.problem(&reply, 422, "validation-failed");
        // A viewer may not sign uploads.
        let reply = presign(&client, &a.name, "shared", &viewer, json!({"method": "PUT", "key": "up.txt"})).await;
        checked.problem(&reply, 403, "forbidden");

        // PUT URLs with constraints.
        let put_url = checked.ok(&presign(&client, &a.name, "shared", &admin, json!({"method": "PUT", "key": "up.txt", "content_type": "text/plain", "max_length": 10})).await, 200);
        let put_url = put_url["url"].as_str().expect("url").to_string();
        let reply = client.send("PUT", &put_url, None, Body::Raw(Some("text/html"), b"x".to_vec()), &[]).await;
        checked.problem(&reply, 403, "forbidden");
        let reply = client.send("PUT", &put_url, None, Body::Raw(Some("text/plain"), b"01234567890".to_vec()), &[]).await;
        checked.problem(&reply, 413, "payload-too-large");
        let reply = client.send("GET", &put_url, None, Body::None, &[]).await;
        checked.problem(&reply, 403, "forbidden");
        let reply = client.send("PUT", &put_url, None, Body::Raw(Some("text/plain"), b"uploaded".to_vec()), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(reply.json["content_type"], "text/plain");
        assert_eq!(client.get(&obj(&a.name, "shared", "up.txt"), &admin).await.text, "uploaded");

        // Rotation: old URLs verify during the grace period, new ones use the new key.
        let rotated = client.json("POST", &format!("/v1/tenants/{}/signing-keys/rotate", a.name), &admin, json!({})).await;
        let rotated = checked.ok(&rotated, 200);
        let new_id = rotated["key_id"].as_str().expect("id").to_string();
        assert_ne!(new_id, param(&url, "X-Strata-Key-Id"));
        assert_eq!(client.send("GET", &url, None, Body::None, &[]).await.status, 200, "grace period");
        let fresh = checked.ok(&presign(&client, &a.name, "shared", &viewer, json!({"method": "GET", "key": "a b/doc.txt"})).await, 200);
        assert_eq!(param(fresh["url"].as_str().expect("url"), "X-Strata-Key-Id"), new_id);
        let reply = client.json("POST", &format!("/v1/tenants/{}/signing-keys/rotate", a.name), &viewer, json!({})).await;
        checked.problem(&reply, 403, "forbidden");
        // Without a grace period, the rotated key no longer verifies.
        let strict = Server::start(
            app_state(&catalog_url, tb.backend.clone(), None, StorageSettings { presign_grace: Duration::ZERO, ..settings() }),
            1 << 20,
        )
        .await;
        let strict_client = Client::new(&strict.base);
        let reply = strict_client.send("GET", &url, None, Body::None, &[]).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
        let reply = strict_client.send("GET", fresh["url"].as_str().expect("url"), None, Body::None, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        drop(tb);
    })
    .await;
}

#[tokio::test]
async fn multipart_on_fs() {
    multipart(Store::Fs).await;
}

#[tokio::test]
async fn multipart_on_s3() {
    multipart(Store::S3).await;
}

async fn multipart(store: Store) {
    with_tenants("storage-multipart", &["stm"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(store).await;
        let server = Server::start(app_state(&catalog_url, tb.backend.clone(), None, settings()), 1 << 20).await;
        let client = Client::new(&server.base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        let other = Checked::new(client.clone(), t, &[]);
        let _ = other;
        create_bucket(&catalog, t.id, "parts", json!({})).await;
        let uploads = format!("/v1/tenants/{}/buckets/parts/uploads", t.name);
        let created = client.json("POST", &uploads, &admin, json!({"key": "big/file.bin", "content_type": "application/octet-stream", "metadata": {"origin": "test"}})).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.json["upload_id"].as_str().expect("id").to_string();
        let upload = format!("{uploads}/{id}");
        let part1 = bytes(5 << 20, 1);
        let part2 = bytes(1000, 2);
        let put_part = |n: u32, data: Vec<u8>| {
            let (client, admin, path) = (client.clone(), admin.clone(), format!("{upload}/parts/{n}"));
            async move { client.send("PUT", &path, Some(&admin), Body::Raw(None, data), &[]).await }
        };
        let r1 = put_part(1, part1.clone()).await;
        assert_eq!(r1.status, 200, "{}", r1.text);
        let r2 = put_part(2, bytes(10, 9)).await;
        assert_eq!(r2.status, 200, "{}", r2.text);
        // Re-sending a part replaces it.
        let r2 = put_part(2, part2.clone()).await;
        let (e1, e2) = (r1.json["etag"].as_str().expect("e1").to_string(), r2.json["etag"].as_str().expect("e2").to_string());
        assert_eq!(put_part(0, vec![1]).await.status, 400);
        assert_eq!(put_part(10_001, vec![1]).await.status, 400);
        let listed = client.get(&upload, &admin).await;
        assert_eq!(listed.status, 200, "{}", listed.text);
        assert_eq!(listed.json["parts"].as_array().map(Vec::len), Some(2));
        assert_eq!(listed.json["parts"][1]["size"], 1000);
        let all = client.get(&uploads, &admin).await;
        assert_eq!(all.json["items"].as_array().map(Vec::len), Some(1), "{}", all.text);
        // Parts count in usage while in progress.
        assert_eq!(usage(&client, &t.name, "parts", &admin).await, ((5 << 20) + 1000, 0));

        // Wrong ETag, wrong order, unknown part.
        for body in [
            json!({"parts": [{"part_number": 1, "etag": e1}, {"part_number": 2, "etag": "\"wrong\""}]}),
            json!({"parts": [{"part_number": 2, "etag": e2}, {"part_number": 1, "etag": e1}]}),
            json!({"parts": [{"part_number": 1, "etag": e1}, {"part_number": 3, "etag": e2}]}),
            json!({"parts": []}),
        ] {
            let reply = client.json("POST", &upload, &admin, body.clone()).await;
            assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        }
        // A too-small part before the last.
        let small = client.json("POST", &uploads, &admin, json!({"key": "small.bin"})).await;
        let small_upload = format!("{uploads}/{}", small.json["upload_id"].as_str().expect("id"));
        let s1 = client.send("PUT", &format!("{small_upload}/parts/1"), Some(&admin), Body::Raw(None, bytes(100, 1)), &[]).await;
        let s2 = client.send("PUT", &format!("{small_upload}/parts/2"), Some(&admin), Body::Raw(None, bytes(100, 2)), &[]).await;
        let reply = client.json("POST", &small_upload, &admin, json!({"parts": [
            {"part_number": 1, "etag": s1.json["etag"]}, {"part_number": 2, "etag": s2.json["etag"]}]})).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert!(reply.text.contains("5 MiB"), "{}", reply.text);
        assert_eq!(client.send("DELETE", &small_upload, Some(&admin), Body::None, &[]).await.status, 204);
        assert_eq!(client.get(&small_upload, &admin).await.status, 404);

        // Complete: the object is the parts in order.
        let done = client.json("POST", &upload, &admin, json!({"parts": [{"part_number": 1, "etag": e1}, {"part_number": 2, "etag": e2}]})).await;
        assert_eq!(done.status, 201, "{}", done.text);
        assert_eq!(done.json["size"], (5 << 20) + 1000);
        assert_eq!(done.json["metadata"]["origin"], "test");
        let path = obj(&t.name, "parts", "big/file.bin");
        let reply = storage_support::raw(&server.base, &format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {admin}"), b"").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), part1.len() + part2.len());
        assert!(reply.body[..part1.len()] == part1[..] && reply.body[part1.len()..] == part2[..]);
        // A range across the boundary between the parts.
        let boundary = part1.len();
        let reply = storage_support::raw(&server.base, &format!(
            "GET {path} HTTP/1.1\r\nAuthorization: Bearer {admin}\r\nRange: bytes={}-{}", boundary - 3, boundary + 2), b"").await;
        assert_eq!(reply.status, 206);
        let mut expected = part1[boundary - 3..].to_vec();
        expected.extend_from_slice(&part2[..3]);
        assert_eq!(reply.body, expected);
        assert_eq!(client.get(&upload, &admin).await.status, 404, "completed uploads are gone");
        assert_eq!(usage(&client, &t.name, "parts", &admin).await, ((5 << 20) + 1000, 1));
        // Deleting the object frees everything.
        assert_eq!(client.send("DELETE", &path, Some(&admin), Body::None, &[]).await.status, 204);
        assert_eq!(usage(&client, &t.name, "parts", &admin).await, (0, 0));
        drop(tb);
    })
    .await;
}

#[tokio::test]
async fn sweeper_and_lifecycle() {
    with_tenants("storage-workers", &["stw"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(Store::Fs).await;
        let state = app_state(&catalog_url, tb.backend.clone(), None, settings());
        let server = Server::start(state.clone(), 1 << 20).await;
        let client = Client::new(&server.base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        let bucket_id = create_bucket(&catalog, t.id, "work", json!({"lifecycle": [
            {"prefix": "tmp/", "expireAfterDays": 1, "abortIncompleteMultipartUploadAfterDays": 2}
        ]})).await;
        let pool = state.tenancy.open(&t.name).await.expect("tenant").pool;

        // A crash mid-upload: a reservation whose lease ran out and a blob
        // whose intent was never cleared.
        let prefix = strata_db::catalog::backend_prefix(t.id, bucket_id);
        let orphan = strata_storage::BlobKey::from_stored(format!("{prefix}/o/orphan"));
        tb.backend.put(&orphan, Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"left behind"))])), None).await.expect("put");
        let foreign = strata_storage::BlobKey::from_stored("t/someone-else/b/x/o/y".to_string());
        tb.backend.put(&foreign, Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"not ours"))])), None).await.expect("put");
        for key in [orphan.as_str(), foreign.as_str()] {
            sqlx::query("INSERT INTO blob_intents (bucket_id, blob_key, expires_at) VALUES ($1, $2, now() - interval '1 minute')")
                .bind(bucket_id).bind(key).execute(&pool).await.expect("intent");
        }
        sqlx::query("INSERT INTO bucket_usage (bucket_id, reserved_bytes, reserved_objects) VALUES ($1, 500, 1), ('00000000-0000-0000-0000-000000000000', 500, 1)
                     ON CONFLICT (bucket_id) DO UPDATE SET reserved_bytes = bucket_usage.reserved_bytes + 500, reserved_objects = bucket_usage.reserved_objects + 1")
            .bind(bucket_id).execute(&pool).await.expect("usage");
        sqlx::query("INSERT INTO reservations (bucket_id, id, bytes, objects, expires_at) VALUES ($1, gen_random_uuid(), 500, 1, now() - interval '1 second')")
            .bind(bucket_id).execute(&pool).await.expect("reservation");
        // A committed object stays.
        let reply = client.send("PUT", &obj(&t.name, "work", "keep.txt"), Some(&admin), Body::Raw(Some("text/plain"), b"keep".to_vec()), &[]).await;
        assert_eq!(reply.status, 201);

        let stats = strata_dataplane::storage::sweeper::sweep_once(&state).await.expect("sweep");
        assert_eq!(stats.reservations, 1);
        assert_eq!(stats.blobs, 1, "the foreign key is not deleted");
        assert!(matches!(tb.backend.get(&orphan, None).await, Err(strata_storage::BackendError::NotFound)));
        assert!(tb.backend.get(&foreign, None).await.is_ok(), "outside the bucket's prefix: untouched");
        let reserved: (i64, i64) = sqlx::query_as("SELECT reserved_bytes, reserved_objects FROM bucket_usage WHERE bucket_id = $1")
            .bind(bucket_id).fetch_one(&pool).await.expect("usage");
        assert_eq!(reserved, (0, 0));
        assert_eq!(client.get(&obj(&t.name, "work", "keep.txt"), &admin).await.text, "keep");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_intents").fetch_one(&pool).await.expect("count");
        assert_eq!(left, 0);

        // Lifecycle: old objects under the prefix expire, others stay.
        for key in ["tmp/old.txt", "tmp/new.txt", "old-but-kept.txt"] {
            let reply = client.send("PUT", &obj(&t.name, "work", key), Some(&admin), Body::Raw(Some("text/plain"), key.as_bytes().to_vec()), &[]).await;
            assert_eq!(reply.status, 201);
        }
        sqlx::query("UPDATE objects SET modified_at = now() - interval '2 days' WHERE key IN ('tmp/old.txt', 'old-but-kept.txt')")
            .execute(&pool).await.expect("age");
        let upload = client.json("POST", &format!("/v1/tenants/{}/buckets/work/uploads", t.name), &admin, json!({"key": "tmp/stale.bin"})).await;
        let upload_id = upload.json["upload_id"].as_str().expect("id").to_string();
        let part = client.send("PUT", &format!("/v1/tenants/{}/buckets/work/uploads/{upload_id}/parts/1", t.name), Some(&admin), Body::Raw(None, bytes(100, 1)), &[]).await;
        assert_eq!(part.status, 200);
        sqlx::query("UPDATE uploads SET created_at = now() - interval '3 days'").execute(&pool).await.expect("age");
        let stats = strata_dataplane::storage::lifecycle::run_once(&state).await.expect("lifecycle");
        assert_eq!((stats.expired, stats.aborted), (1, 1));
        assert_eq!(client.get(&obj(&t.name, "work", "tmp/old.txt"), &admin).await.status, 404);
        assert_eq!(client.get(&obj(&t.name, "work", "tmp/new.txt"), &admin).await.status, 200);
        assert_eq!(client.get(&obj(&t.name, "work", "old-but-kept.txt"), &admin).await.status, 200);
        assert_eq!(client.get(&format!("/v1/tenants/{}/buckets/work/uploads/{upload_id}", t.name), &admin).await.status, 404);
        let (bytes_used, objects) = usage(&client, &t.name, "work", &admin).await;
        assert_eq!((bytes_used, objects), listed_total(&client, &t.name, "work", &admin).await);
        // Idempotent: a second pass finds nothing.
        let again = strata_dataplane::storage::lifecycle::run_once(&state).await.expect("lifecycle");
        assert_eq!((again.expired, again.aborted), (0, 0));
        drop(tb);
    })
    .await;
}

/// The EICAR test string (split so this file is not itself flagged).
fn eicar() -> Vec<u8> {
    let mut s = String::from("X5O!P%@AP[4\\PZX54(P^)7CC)7}$");
    s.push_str("EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    s.into_bytes()
}

#[tokio::test]
async fn antivirus_with_the_real_clamd() {
    with_tenants(
        "storage-av",
        &["sav"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(Store::Fs).await;
            let clamd: Arc<dyn strata_dataplane::storage::antivirus::Scanner> = Arc::new(
                strata_storage::antivirus::Scanner::new(strata_tests::env("STRATA_CLAMD_ADDR")),
            );
            let server = Server::start(
                app_state(&catalog_url, tb.backend.clone(), Some(clamd), settings()),
                1 << 20,
            )
            .await;
            let client = Client::new(&server.base);
            let t = &tenants[0];
            let admin = client.accept_invitation(t).await;
            create_bucket(&catalog, t.id, "scanned", json!({"antivirus_scan": true})).await;
            let path = |k: &str| obj(&t.name, "scanned", k);
            let reply = client
                .send(
                    "PUT",
                    &path("eicar.txt"),
                    Some(&admin),
                    Body::Raw(Some("text/plain"), eicar()),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 422, "{}", reply.text);
            assert_eq!(reply.json["code"], "malware-detected");
            assert_eq!(client.get(&path("eicar.txt"), &admin).await.status, 404);
            assert_eq!(usage(&client, &t.name, "scanned", &admin).await, (0, 0));
            let pool = strata_dataplane::tenancy::Tenancy::open(
                &support::app_state(&catalog_url).tenancy,
                &t.name,
            )
            .await
            .expect("tenant")
            .pool;
            let audited: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events WHERE action = 'object.infected'",
            )
            .fetch_one(&pool)
            .await
            .expect("audit");
            assert_eq!(audited, 1);
            let reply = client
                .send(
                    "PUT",
                    &path("clean.txt"),
                    Some(&admin),
                    Body::Raw(Some("text/plain"), b"just text".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);

            // clamd unreachable: fail closed (503), or open when configured.
            let down: Arc<dyn strata_dataplane::storage::antivirus::Scanner> =
                Arc::new(strata_storage::antivirus::Scanner::new("127.0.0.1:1"));
            let closed = Server::start(
                app_state(
                    &catalog_url,
                    tb.backend.clone(),
                    Some(down.clone()),
                    settings(),
                ),
                1 << 20,
            )
            .await;
            let reply = Client::new(&closed.base)
                .send(
                    "PUT",
                    &path("x.txt"),
                    Some(&admin),
                    Body::Raw(Some("text/plain"), b"x".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 503, "{}", reply.text);
            assert_eq!(client.get(&path("x.txt"), &admin).await.status, 404);
            let open = Server::start(
                app_state(
                    &catalog_url,
                    tb.backend.clone(),
                    Some(down),
                    StorageSettings {
                        antivirus_fail_open: true,
                        ..settings()
                    },
                ),
                1 << 20,
            )
            .await;
            let reply = Client::new(&open.base)
                .send(
                    "PUT",
                    &path("x.txt"),
                    Some(&admin),
                    Body::Raw(Some("text/plain"), b"x".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);
            drop(tb);
        },
    )
    .await;
}

/// The data plane binary with its storage on `root` (fs), a short lease
/// and the sweeper every second.
fn dataplane(
    catalog_url: &str,
    root: &std::path::Path,
    port: u16,
) -> strata_tests::process::Running {
    strata_tests::process::Running::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_strata-dataplane"))
            .env("STRATA_CATALOG_URL", catalog_url)
            .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
            .env("STRATA_STORAGE_BACKEND", "fs")
            .env("STRATA_STORAGE_ROOT", root)
            .env("STRATA_UPLOAD_LEASE_SECONDS", "5")
            .env("STRATA_SWEEP_INTERVAL_SECONDS", "1")
            .env("STRATA_TENANT_CACHE_TTL_MS", "100")
            .env("STRATA_LOG", "warn"),
    )
}

#[tokio::test]
async fn sigkill_during_uploads_then_restart_leaves_usage_equal_to_stored() {
    use tokio::io::AsyncWriteExt;
    with_tenants("storage-kill", &["stk"], move |catalog_url, catalog, tenants| async move {
        let root = tempfile::tempdir().expect("tempdir");
        let port = strata_tests::process::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut first = dataplane(&catalog_url, root.path(), port);
        first.wait_ready(&format!("{base}/readyz"), Duration::from_secs(30)).await;
        let client = Client::new(&base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        let bucket = create_bucket(&catalog, t.id, "killed", json!({"quota_bytes": 100_000_000})).await;
        for i in 0..3 {
            let reply = client.send("PUT", &obj(&t.name, "killed", &format!("done/{i}")), Some(&admin), Body::Raw(None, bytes(10_000, i)), &[]).await;
            assert_eq!(reply.status, 201, "{}", reply.text);
        }
        // Four uploads in flight: half their bytes sent, then the process dies.
        let mut open = Vec::new();
        for i in 0..4 {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let head = format!(
                "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
                obj(&t.name, "killed", &format!("inflight/{i}")));
            stream.write_all(head.as_bytes()).await.expect("head");
            stream.write_all(&bytes(500_000, i)).await.expect("half");
            open.push(stream);
        }
        let pool = support::app_state(&catalog_url).tenancy.open(&t.name).await.expect("tenant").pool;
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.expect("count") }
        };
        for _ in 0..100 {
            if count("SELECT count(*) FROM reservations").await == 4 && count("SELECT count(*) FROM blob_intents").await == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count("SELECT count(*) FROM reservations").await, 4);
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.child.kill().expect("SIGKILL");
        let _ = first.child.wait();
        drop(open);

        // Restarted, its sweeper reclaims what the dead process held.
        let mut second = dataplane(&catalog_url, root.path(), port);
        second.wait_ready(&format!("{base}/readyz"), Duration::from_secs(30)).await;
        let mut clean = false;
        for _ in 0..100 {
            if count("SELECT count(*) FROM reservations").await == 0 && count("SELECT count(*) FROM blob_intents").await == 0 {
                clean = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(clean, "the sweeper released reservations and intents");
        for row in [bucket, uuid::Uuid::nil()] {
            let usage: (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT bytes, objects, reserved_bytes, reserved_objects FROM bucket_usage WHERE bucket_id = $1")
                .bind(row).fetch_one(&pool).await.expect("usage");
            let stored: (i64, i64) = sqlx::query_as("SELECT coalesce(sum(size), 0)::bigint, count(*) FROM objects")
                .fetch_one(&pool).await.expect("stored");
            assert_eq!(usage, (stored.0, stored.1, 0, 0), "usage of {row}");
            assert_eq!(stored, (30_000, 3));
        }
        // No orphaned bytes: the backend holds exactly the referenced blobs.
        let backend = strata_storage::connect(&strata_storage::StorageArgs {
            backend: strata_storage::BackendKind::Fs,
            root: root.path().to_path_buf(),
            s3_endpoint: None,
            s3_region: "x".into(),
            s3_bucket: "x".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
        })
        .await
        .expect("fs");
        let prefix = strata_db::catalog::backend_prefix(t.id, bucket);
        let listed = backend.list(&prefix, None, 1000).await.expect("list");
        let referenced: Vec<String> = sqlx::query_scalar("SELECT b->>'key' FROM objects, jsonb_array_elements(blobs) b ORDER BY 1")
            .fetch_all(&pool).await.expect("blobs");
        let mut keys: Vec<String> = listed.iter().map(|b| b.key.as_str().to_string()).collect();
        keys.sort();
        assert_eq!(keys, referenced);
        // What the killed puts staged is the backend's to clean (older than
        // twice the lease in the sweeper; at once here).
        backend.sweep_partial(Duration::ZERO).await.expect("partial");
        // The service works on.
        let reply = client.send("PUT", &obj(&t.name, "killed", "after"), Some(&admin), Body::Raw(None, bytes(10, 1)), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        drop(second);
    })
    .await;
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    with_tenants("storage-gone", &["stg"], move |catalog_url, catalog, tenants| async move {
        let tb = backend(Store::Fs).await;
        let state = app_state(&catalog_url, tb.backend.clone(), None, settings());
        let server = Server::start(state.clone(), 1 << 20).await;
        let client = Client::new(&server.base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        let bucket = create_bucket(&catalog, t.id, "gone", json!({"quota_bytes": 10_000_000})).await;
        let pool = state.tenancy.open(&t.name).await.expect("tenant").pool;
        let addr = server.base.trim_start_matches("http://").to_string();
        for (i, framing) in ["Content-Length: 1000000", "Transfer-Encoding: chunked"].iter().enumerate() {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let head = format!(
                "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n{framing}\r\n\r\n",
                obj(&t.name, "gone", &format!("half{i}")));
            stream.write_all(head.as_bytes()).await.expect("head");
            let half = bytes(300_000, 1);
            if i == 0 {
                stream.write_all(&half).await.expect("half");
            } else {
                stream.write_all(&storage_support::chunked(&half, 50_000)[..250_000]).await.expect("half");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(stream);
        }
        let mut clean = false;
        for _ in 0..50 {
            let (reservations, intents): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM reservations), (SELECT count(*) FROM blob_intents)")
                .fetch_one(&pool).await.expect("counts");
            if (reservations, intents) == (0, 0) {
                clean = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(clean, "reservations and intents released at once, no sweeper needed");
        let usage: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT bytes, objects, reserved_bytes, reserved_objects FROM bucket_usage WHERE bucket_id = $1")
            .bind(bucket).fetch_one(&pool).await.expect("usage");
        assert_eq!(usage, (0, 0, 0, 0));
        let prefix = strata_db::catalog::backend_prefix(t.id, bucket);
        assert!(tb.backend.list(&prefix, None, 10).await.expect("list").is_empty(), "no blob left");
        assert_eq!(client.get(&obj(&t.name, "gone", "half0"), &admin).await.status, 404);
        drop(tb);
    })
    .await;
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn large_bodies_stream_in_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_tenants("storage-large", &["stl"], move |catalog_url, catalog, tenants| async move {
        let root = tempfile::tempdir().expect("tempdir");
        let port = strata_tests::process::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut process = dataplane(&catalog_url, root.path(), port);
        process.wait_ready(&format!("{base}/readyz"), Duration::from_secs(30)).await;
        let client = Client::new(&base);
        let t = &tenants[0];
        let admin = client.accept_invitation(t).await;
        create_bucket(&catalog, t.id, "large", json!({})).await;
        let before = peak_rss_kib(process.child.id());
        const SIZE: usize = 128 << 20;
        let path = obj(&t.name, "large", "big.bin");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        stream.write_all(format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("head");
        let chunk = bytes(1 << 20, 3);
        for _ in 0..(SIZE >> 20) {
            stream.write_all(&chunk).await.expect("chunk");
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        // Download, counting bytes without keeping them.
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("get");
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(total > SIZE && total < SIZE + 4096, "{total}");
        let grown = peak_rss_kib(process.child.id()).saturating_sub(before);
        eprintln!("peak RSS before {before} KiB, grew by {grown} KiB for 128 MiB up and down");
        assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB while streaming 128 MiB each way");
        drop(process);
    })
    .await;
}

#[tokio::test]
async fn reads_under_way_finish_whole_across_a_replace_or_delete_on_fs() {
    reads_under_way(Store::Fs).await;
}

#[tokio::test]
async fn reads_under_way_finish_whole_across_a_replace_or_delete_on_s3() {
    reads_under_way(Store::S3).await;
}

/// A GET that started before an overwrite or a delete gets the whole old
/// version: the retired blobs (of a PUT, a DELETE and a multipart
/// completion that replaces) outlive the change by the grace, and the
/// sweeper deletes them once due. A multipart object's second blob and a
/// long blob's later S3 segments are opened only when the stream gets
/// there, long after the change; each first blob is bigger than what the
/// sockets' buffers hold, so the read really is under way.
async fn reads_under_way(store: Store) {
    with_tenants(
        "storage-under-way",
        &["suw"],
        move |catalog_url, catalog, tenants| async move {
            let tb = backend(store).await;
            let state = app_state(&catalog_url, tb.backend.clone(), None, settings());
            assert!(!state.storage.settings.retired_blob_grace.is_zero());
            let server = Server::start(state.clone(), 1 << 20).await;
            let client = Client::new(&server.base);
            let t = &tenants[0];
            let admin = client.accept_invitation(t).await;
            let bucket = create_bucket(&catalog, t.id, "live", json!({})).await;
            let pool = state.tenancy.open(&t.name).await.expect("tenant").pool;

            // A multipart object of two blobs, completed over a first
            // version (which it retires), and one long blob (read from S3
            // as several ranged GetObjects).
            let first = client
                .send(
                    "PUT",
                    &obj(&t.name, "live", "parts.bin"),
                    Some(&admin),
                    Body::Raw(None, b"first".to_vec()),
                    &[],
                )
                .await;
            assert_eq!(first.status, 201, "{}", first.text);
            let uploads = format!("/v1/tenants/{}/buckets/live/uploads", t.name);
            let created = client
                .json("POST", &uploads, &admin, json!({"key": "parts.bin"}))
                .await;
            assert_eq!(created.status, 201, "{}", created.text);
            let upload = format!(
                "{uploads}/{}",
                created.json["upload_id"].as_str().expect("id")
            );
            let (part1, part2) = (bytes(24 << 20, 1), bytes(1 << 20, 2));
            let mut etags = Vec::new();
            for (n, part) in [(1, &part1), (2, &part2)] {
                let reply = client
                    .send(
                        "PUT",
                        &format!("{upload}/parts/{n}"),
                        Some(&admin),
                        Body::Raw(None, part.clone()),
                        &[],
                    )
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.text);
                etags.push(json!({"part_number": n, "etag": reply.json["etag"]}));
            }
            let done = client
                .json("POST", &upload, &admin, json!({"parts": etags}))
                .await;
            assert_eq!(
                done.status, 200,
                "replaces the first version: {}",
                done.text
            );
            let mut multipart_body = part1.clone();
            multipart_body.extend_from_slice(&part2);
            let long = bytes(40 << 20, 3);
            let reply = client
                .send(
                    "PUT",
                    &obj(&t.name, "live", "long.bin"),
                    Some(&admin),
                    Body::Raw(None, long.clone()),
                    &[],
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);

            let http = reqwest::Client::new();
            for (key, expected, change) in [
                ("parts.bin", &multipart_body, "PUT"),
                ("long.bin", &long, "DELETE"),
            ] {
                let path = obj(&t.name, "live", key);
                let mut get = http
                    .get(format!("{}{path}", server.base))
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .expect("GET");
                assert_eq!(get.status(), 200, "{key}");
                let mut got = get
                    .chunk()
                    .await
                    .expect("first chunk")
                    .expect("a chunk")
                    .to_vec();
                let reply = match change {
                    "PUT" => {
                        client
                            .send(
                                "PUT",
                                &path,
                                Some(&admin),
                                Body::Raw(None, b"new".to_vec()),
                                &[],
                            )
                            .await
                    }
                    _ => {
                        client
                            .send("DELETE", &path, Some(&admin), Body::None, &[])
                            .await
                    }
                };
                assert!(
                    reply.status == 200 || reply.status == 204,
                    "{change} {key}: {}",
                    reply.text
                );
                // Not due yet: the sweeper leaves them.
                let swept = strata_dataplane::storage::sweeper::sweep_once(&state)
                    .await
                    .expect("sweep");
                assert_eq!(swept.blobs, 0, "{key}: retired blobs are not due yet");
                while let Some(chunk) = get
                    .chunk()
                    .await
                    .unwrap_or_else(|e| panic!("{key}: read cut after {} bytes: {e}", got.len()))
                {
                    got.extend_from_slice(&chunk);
                }
                assert_eq!(got.len(), expected.len(), "{key}: whole old version");
                assert!(got == *expected, "{key}: the old version's bytes");
            }
            assert_eq!(
                client
                    .get(&obj(&t.name, "live", "parts.bin"), &admin)
                    .await
                    .text,
                "new"
            );
            assert_eq!(
                client
                    .get(&obj(&t.name, "live", "long.bin"), &admin)
                    .await
                    .status,
                404
            );

            // Once due, the sweeper deletes the four retired blobs (the
            // first version's, the multipart version's two, the long
            // one); only the new version's blob stays.
            sqlx::query("UPDATE blob_intents SET expires_at = now() - interval '1 second'")
                .execute(&pool)
                .await
                .expect("due");
            let swept = strata_dataplane::storage::sweeper::sweep_once(&state)
                .await
                .expect("sweep");
            assert_eq!(swept.blobs, 4);
            let prefix = strata_db::catalog::backend_prefix(t.id, bucket);
            let left = tb.backend.list(&prefix, None, 10).await.expect("list");
            assert_eq!(left.len(), 1, "{left:?}");
            drop(tb);
        },
    )
    .await;
}
