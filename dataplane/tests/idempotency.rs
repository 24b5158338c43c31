//! `Idempotency-Key` on the APIs' POST and PATCH, through the real router
//! on real tenant databases: concurrent retries create one document, a
//! replay is the identical answer (marked `Idempotency-Replayed`), a key
//! reused for another request is 422, a retry while the first is in
//! flight is 409, keys are scoped to the credential, expire, and an error
//! stores nothing. Needs `source .stack/env`.

mod storage_support;
mod support;

use std::collections::HashMap;

use serde_json::json;
use sha2::Digest;
use support::{Body, Checked, Client, Server, app_state, with_tenants};

async fn post(
    api: &Client,
    path: &str,
    key: &str,
    idem: &str,
    body: serde_json::Value,
) -> support::Reply {
    api.send(
        "POST",
        path,
        Some(key),
        Body::Json(body),
        &[("idempotency-key", idem)],
    )
    .await
}

#[tokio::test]
async fn retries_are_safe() {
    with_tenants("idem", &["ik", "other"], |catalog_url, _catalog, tenants| async move {
        let tenant = &tenants[0];
        let state = app_state(&catalog_url);
        let server = Server::start(state.clone(), 1 << 20).await;
        let api = Client::new(&server.base);
        let checked = Checked::new(api.clone(), &tenants[1], &[]);
        let owner = api.accept_invitation(tenant).await;
        let t = format!("/v1/tenants/{}", tenant.name);
        let made = post(&api, &format!("{t}/collections"), &owner, "coll-1", json!({"name": "c"})).await;
        checked.ok(&made, 201);
        let docs = format!("{t}/collections/c/documents");

        // 12 concurrent requests with one key and no document id (each
        // would otherwise create a document of its own): one is created.
        let body = json!({"data": {"n": 1}});
        let replies = futures::future::join_all(
            (0..12).map(|_| post(&api, &docs, &owner, "doc-1", body.clone())),
        )
        .await;
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        for r in &replies {
            *statuses.entry(r.status).or_default() += 1;
        }
        assert!(statuses.keys().all(|s| [201, 409].contains(s)), "{statuses:?}");
        assert!(statuses.contains_key(&201), "{statuses:?}");
        for r in replies.iter().filter(|r| r.status == 409) {
            let problem = checked.problem(r, 409, "conflict");
            assert!(problem["detail"].as_str().expect("detail").contains("Idempotency-Key"));
        }
        let created: Vec<&support::Reply> = replies.iter().filter(|r| r.status == 201).collect();
        let first_body = created[0].text.clone();
        assert!(created.iter().all(|r| r.text == first_body), "all 201s are the same answer");
        let listed = api.get(&docs, &owner).await;
        assert_eq!(listed.json["items"].as_array().expect("items").len(), 1, "{}", listed.text);
        // The outbox has exactly one document.created.
        let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'document.created'")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(events, 1);

        // A replay: identical status, body and headers that matter, marked.
        let replay = post(&api, &docs, &owner, "doc-1", body.clone()).await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.text, first_body);
        assert_eq!(replay.header("idempotency-replayed"), Some("true"));
        assert_eq!(replay.header("etag"), created[0].header("etag"));
        assert_eq!(replay.header("location"), created[0].header("location"));
        assert!(created[0].header("idempotency-replayed").is_none() || created.len() > 1);

        // Same key, another body (or path): 422.
        let other = post(&api, &docs, &owner, "doc-1", json!({"data": {"n": 2}})).await;
        checked.problem(&other, 422, "validation-failed");
        let other_path = post(&api, &format!("{t}/collections"), &owner, "doc-1", body.clone()).await;
        checked.problem(&other_path, 422, "validation-failed");

        // Another credential has its own keys.
        let editor = api.new_key(&tenant.name, &owner, "editor").await;
        let theirs = post(&api, &docs, &editor, "doc-1", json!({"data": {"n": 3}})).await;
        checked.ok(&theirs, 201);
        assert!(theirs.header("idempotency-replayed").is_none());

        // In flight: the key's lock is held (as by a first request still
        // running) → 409 at once, not a wait.
        let key_id = owner.split('_').nth(1).expect("key id").to_string();
        let mut holder = pool.begin().await.expect("tx");
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(0x4944_4d50_i32)
            .bind(lock_key(&format!("key:{key_id}"), "doc-2"))
            .fetch_one(&mut *holder)
            .await
            .expect("lock");
        assert!(locked);
        let busy = post(&api, &docs, &owner, "doc-2", body.clone()).await;
        checked.problem(&busy, 409, "conflict");
        holder.rollback().await.expect("release");
        let free = post(&api, &docs, &owner, "doc-2", body.clone()).await;
        checked.ok(&free, 201);

        // An error stores nothing: the write rolled back, a retry runs.
        let bad = post(&api, &docs, &owner, "doc-3", json!({"id": "x", "data": [1]})).await;
        checked.problem(&bad, 422, "validation-failed");
        let good = post(&api, &docs, &owner, "doc-3", json!({"id": "x", "data": {}})).await;
        checked.ok(&good, 201);

        // PATCH takes keys too.
        let doc_x = format!("{docs}/x");
        let patch = |v: i64| {
            api.send("PATCH", &doc_x, Some(&owner), Body::Json(json!({"v": v})), &[("idempotency-key", "patch-1")])
        };
        let p1 = patch(1).await;
        checked.ok(&p1, 200);
        let p2 = patch(1).await;
        assert_eq!(p2.text, p1.text);
        assert_eq!(p2.header("idempotency-replayed"), Some("true"));
        let current = api.get(&format!("{docs}/x"), &owner).await;
        assert_eq!(current.json["version"], 2, "the replay did not write again");
        checked.problem(&patch(2).await, 422, "validation-failed");

        // A created key's secret is never stored: the replay says null.
        let k1 = post(&api, &format!("{t}/keys"), &owner, "key-1", json!({"name": "k", "role": "viewer"})).await;
        checked.ok(&k1, 201);
        assert!(k1.json["key"].as_str().is_some());
        let k2 = post(&api, &format!("{t}/keys"), &owner, "key-1", json!({"name": "k", "role": "viewer"})).await;
        assert_eq!(k2.status, 201);
        assert_eq!(k2.json["key"], serde_json::Value::Null);
        assert_eq!(k2.json["id"], k1.json["id"]);
        let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT response_body FROM idempotency_keys")
            .fetch_all(&pool)
            .await
            .expect("bodies");
        let secret = k1.json["key"].as_str().expect("key");
        assert!(stored.iter().all(|b| !String::from_utf8_lossy(b).contains(secret)));

        // A malformed key: 400.
        let long = "k".repeat(256);
        let bad_key = api
            .send("POST", &docs, Some(&owner), Body::Json(body.clone()), &[("idempotency-key", long.as_str())])
            .await;
        checked.problem(&bad_key, 400, "invalid-header");
        let on_put = api
            .send("PUT", &format!("{docs}/y"), Some(&owner), Body::Json(json!({})), &[("idempotency-key", "put")])
            .await;
        // PUT is idempotent by itself: the header is ignored there.
        checked.ok(&on_put, 201);
        assert!(on_put.header("idempotency-replayed").is_none());

        // Records expire (24 h by default); an expired one is ignored and
        // pruned.
        let expires: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM idempotency_keys WHERE key = 'doc-1' LIMIT 1",
        )
        .fetch_one(&pool)
        .await
        .expect("expiry");
        assert!((expires - 86_400.0).abs() < 5.0, "{expires}");
        sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'doc-1'")
            .execute(&pool)
            .await
            .expect("expire");
        let after = post(&api, &docs, &owner, "doc-1", json!({"data": {"n": 9}})).await;
        checked.ok(&after, 201);
        assert!(after.header("idempotency-replayed").is_none());
        sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
            .execute(&pool)
            .await
            .expect("expire all");
        let pruned = strata_dataplane::http::idempotency::prune(&pool).await.expect("prune");
        assert!(pruned >= 5, "{pruned}");
    })
    .await;
}

/// The data plane's lock key, recomputed (SHA-256 of scope, NUL, key; the
/// first four bytes, big-endian).
fn lock_key(scope: &str, key: &str) -> i32 {
    let digest = sha2::Sha256::new()
        .chain_update(scope.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[tokio::test]
async fn vectors_and_webhooks_take_keys() {
    with_tenants(
        "idem",
        &["iv"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let server = Server::start(app_state(&catalog_url), 1 << 20).await;
            let api = Client::new(&server.base);
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
            let upsert = json!({"vectors": [{"id": "a", "vector": [1.0, 2.0]}]});
            let first = post(
                &api,
                &format!("{t}/collections/v/vectors"),
                &owner,
                "vec-1",
                upsert.clone(),
            )
            .await;
            assert_eq!(first.status, 200, "{}", first.text);
            let second = post(
                &api,
                &format!("{t}/collections/v/vectors"),
                &owner,
                "vec-1",
                upsert,
            )
            .await;
            assert_eq!(second.text, first.text);
            assert_eq!(second.header("idempotency-replayed"), Some("true"));
            let got = api
                .get(&format!("{t}/collections/v/vectors/a"), &owner)
                .await;
            assert_eq!(got.json["version"], 1, "upserted once");
        },
    )
    .await;
}

/// The storage API's POSTs take keys too: 8 concurrent retries of a
/// multipart create start one upload; completing with a key and retrying
/// replays the object's answer without a second completion (the upload is
/// gone by then); presigned and render URLs replay the very URL first
/// issued; a signing-key rotation retried rotates once; another body with
/// the same key is 422; presigned callers have no key scope.
#[tokio::test]
async fn storage_posts_take_keys() {
    use storage_support::{Store, backend, create_bucket, settings};
    with_tenants(
        "idem",
        &["is"],
        |catalog_url, catalog, tenants| async move {
            let tenant = &tenants[0];
            let tb = backend(Store::Fs).await;
            let state =
                storage_support::app_state(&catalog_url, tb.backend.clone(), None, settings());
            let server = Server::start(state.clone(), 1 << 20).await;
            let api = Client::new(&server.base);
            let owner = api.accept_invitation(tenant).await;
            create_bucket(&catalog, tenant.id, "keyed", json!({})).await;
            let b = format!("/v1/tenants/{}/buckets/keyed", tenant.name);
            let uploads = format!("{b}/uploads");

            let body = json!({"key": "one.bin", "content_type": "application/octet-stream"});
            let replies = futures::future::join_all(
                (0..8).map(|_| post(&api, &uploads, &owner, "up-1", body.clone())),
            )
            .await;
            let created: Vec<&support::Reply> =
                replies.iter().filter(|r| r.status == 201).collect();
            assert!(
                !created.is_empty(),
                "{:?}",
                replies
                    .iter()
                    .map(|r| (r.status, &r.text))
                    .collect::<Vec<_>>()
            );
            assert!(replies.iter().all(|r| [201, 409].contains(&r.status)));
            // Whichever answered 201 (the first, or replays of it) name one upload.
            let ids: std::collections::BTreeSet<&str> = created
                .iter()
                .map(|r| r.json["upload_id"].as_str().expect("id"))
                .collect();
            assert_eq!(ids.len(), 1, "{ids:?}");
            let listed = api.get(&uploads, &owner).await;
            assert_eq!(
                listed.json["items"].as_array().map(Vec::len),
                Some(1),
                "{}",
                listed.text
            );
            let again = post(&api, &uploads, &owner, "up-1", body.clone()).await;
            assert_eq!(again.status, 201);
            assert_eq!(again.header("idempotency-replayed"), Some("true"));
            assert_eq!(again.json["upload_id"], created[0].json["upload_id"]);
            let other = post(&api, &uploads, &owner, "up-1", json!({"key": "two.bin"})).await;
            assert_eq!(other.status, 422, "{}", other.text);

            // Complete once; the retry is the same answer, not a 404 for the
            // upload the first completion consumed.
            let upload = format!(
                "{uploads}/{}",
                created[0].json["upload_id"].as_str().expect("id")
            );
            let part = api
                .send(
                    "PUT",
                    &format!("{upload}/parts/1"),
                    Some(&owner),
                    Body::Raw(None, vec![7u8; 100]),
                    &[],
                )
                .await;
            assert_eq!(part.status, 200, "{}", part.text);
            let parts = json!({"parts": [{"part_number": 1, "etag": part.json["etag"]}]});
            let done = post(&api, &upload, &owner, "done-1", parts.clone()).await;
            assert_eq!(done.status, 201, "{}", done.text);
            let retried = post(&api, &upload, &owner, "done-1", parts.clone()).await;
            assert_eq!((retried.status, &retried.text), (201, &done.text));
            assert_eq!(retried.header("idempotency-replayed"), Some("true"));
            assert_eq!(retried.header("etag"), done.header("etag"));
            let unkeyed = api.json("POST", &upload, &owner, parts).await;
            assert_eq!(
                unkeyed.status, 404,
                "without a key the retry runs again: {}",
                unkeyed.text
            );
            let object = api.get(&format!("{b}/objects/one.bin"), &owner).await;
            assert_eq!(object.status, 200);
            assert_eq!(object.text.len(), 100);

            // Presigned and render URLs: the retry gets the very URL.
            let presign = json!({"method": "GET", "key": "one.bin", "expires_in": 60});
            let first = post(
                &api,
                &format!("{b}/presign"),
                &owner,
                "url-1",
                presign.clone(),
            )
            .await;
            assert_eq!(first.status, 200, "{}", first.text);
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let second = post(&api, &format!("{b}/presign"), &owner, "url-1", presign).await;
            assert_eq!(
                second.text, first.text,
                "same URL and expiry a second later"
            );
            let render = json!({"key": "one.bin", "transform": {"width": 10}});
            let signed = post(
                &api,
                &format!("{b}/render-urls"),
                &owner,
                "render-1",
                render.clone(),
            )
            .await;
            assert_eq!(signed.status, 200, "{}", signed.text);
            let resigned = post(
                &api,
                &format!("{b}/render-urls"),
                &owner,
                "render-1",
                render,
            )
            .await;
            assert_eq!(resigned.text, signed.text);

            // Rotation retried rotates once.
            let rotate = format!("/v1/tenants/{}/signing-keys/rotate", tenant.name);
            let rotated = post(&api, &rotate, &owner, "rot-1", serde_json::Value::Null).await;
            assert_eq!(rotated.status, 200, "{}", rotated.text);
            let again = post(&api, &rotate, &owner, "rot-1", serde_json::Value::Null).await;
            assert_eq!(again.text, rotated.text);
            let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
            let active: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys")
                .fetch_one(&pool)
                .await
                .expect("keys");
            let rotations: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE topic = 'signing_key.rotated'",
            )
            .fetch_one(&pool)
            .await
            .expect("events");
            assert_eq!(rotations, 1, "one rotation, one event");
            assert!(
                active <= 2,
                "{active} keys: the presign's first key and one rotation"
            );
        },
    )
    .await;
}
