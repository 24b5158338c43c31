//! Events end to end, in process: writes through the real router record
//! events; a dispatcher (the data plane's own) publishes them to Redis and
//! to a real webhook receiver, signed (checked with a reference verifier
//! written from the Standard Webhooks specification); retries, backoff,
//! dead letters and replay against a receiver that fails, times out and
//! recovers. Real PostgreSQL and Redis; needs `source .stack/env`.

mod events_support;
mod support;

use std::time::Duration;

use events_support::{
    FAIL, HANG, OK, Receiver, eventually, settings, state_with_dispatcher, subscribe, verify,
};
use serde_json::{Value, json};
use support::{Body, Client, Server, app_state, with_tenants};

fn types(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn changes_reach_redis_and_signed_webhooks() {
    with_tenants(
        "events",
        &["ev"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let (state, dispatcher) =
                state_with_dispatcher(app_state(&catalog_url), settings()).await;
            let server = Server::start(state, 1 << 20).await;
            let api = Client::new(&server.base);
            let owner = api.accept_invitation(tenant).await;
            let redis = subscribe(tenant.id).await;
            let receiver = Receiver::start().await;
            let t = format!("/v1/tenants/{}", tenant.name);

            let hook = api
                .json(
                    "POST",
                    &format!("{t}/webhooks"),
                    &owner,
                    json!({"url": receiver.url, "event_types": ["document.*", "key.created"]}),
                )
                .await;
            assert_eq!(hook.status, 201, "{}", hook.text);
            let secret = hook.json["secret"].as_str().expect("secret").to_string();
            assert!(secret.starts_with("whsec_"));
            let hook_id = hook.json["id"].as_str().expect("id").to_string();
            // Listing never shows secrets.
            let listed = api.get(&format!("{t}/webhooks"), &owner).await;
            assert_eq!(listed.status, 200);
            assert!(!listed.text.contains(&secret));

            let created = api
                .json(
                    "POST",
                    &format!("{t}/collections"),
                    &owner,
                    json!({"name": "notes"}),
                )
                .await;
            assert_eq!(created.status, 201, "{}", created.text);
            let doc = api
                .json(
                    "POST",
                    &format!("{t}/collections/notes/documents"),
                    &owner,
                    json!({"id": "n1", "data": {"title": "a", "body": "x".repeat(1000)}}),
                )
                .await;
            assert_eq!(doc.status, 201, "{}", doc.text);
            let patched = api
                .json(
                    "PATCH",
                    &format!("{t}/collections/notes/documents/n1"),
                    &owner,
                    json!({"title": "b"}),
                )
                .await;
            assert_eq!(patched.status, 200, "{}", patched.text);
            let etag = patched.header("etag").expect("etag").to_string();
            let deleted = api
                .send(
                    "DELETE",
                    &format!("{t}/collections/notes/documents/n1"),
                    Some(&owner),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(deleted.status, 204);
            let key = api
                .json(
                    "POST",
                    &format!("{t}/keys"),
                    &owner,
                    json!({"name": "k", "role": "viewer"}),
                )
                .await;
            assert_eq!(key.status, 201);
            let key_secret = key.json["key"].as_str().expect("key").to_string();

            let want = [
                "collection.created",
                "document.created",
                "document.updated",
                "document.deleted",
                "key.created",
            ];
            eventually(Duration::from_secs(15), "every event on Redis", || {
                let seen = types(&redis.lock().expect("lock"));
                want.iter().all(|w| seen.iter().any(|s| s == w))
            })
            .await;
            let messages = redis.lock().expect("lock").clone();
            let updated = messages
                .iter()
                .find(|m| m["type"] == "document.updated")
                .expect("updated");
            assert_eq!(updated["aggregate"]["type"], "document");
            assert_eq!(updated["aggregate"]["version"], 2);
            assert_eq!(updated["aggregate"]["etag"], etag.as_str());
            assert!(
                updated["aggregate"]["id"]
                    .as_str()
                    .expect("id")
                    .ends_with("/n1")
            );
            assert_eq!(updated["data"]["changed"], json!(["title"]));
            assert_eq!(updated["data"]["collection"], "notes");
            assert_eq!(updated["tenant"]["name"], tenant.name.as_str());
            let created_event = messages
                .iter()
                .find(|m| m["type"] == "document.created")
                .expect("created");
            assert_eq!(created_event["data"]["fields"], json!(["body", "title"]));
            // Summaries, never the documents or secrets.
            for m in &messages {
                let text = m.to_string();
                assert!(
                    !text.contains(&"x".repeat(100)),
                    "document content in {text}"
                );
                assert!(!text.contains(&key_secret), "key secret in {text}");
            }

            // The webhook got the document events and key.created, not the
            // collection's; each signature verifies.
            eventually(Duration::from_secs(15), "webhook deliveries", || {
                receiver.applied().len() >= 4
            })
            .await;
            let got = receiver.got();
            let mut hook_types: Vec<String> = got
                .iter()
                .map(|r| r.json["type"].as_str().unwrap_or_default().to_string())
                .collect();
            hook_types.sort();
            hook_types.dedup();
            assert_eq!(
                hook_types,
                [
                    "document.created",
                    "document.deleted",
                    "document.updated",
                    "key.created"
                ]
            );
            for r in &got {
                verify(&secret, r).expect("signature");
                assert!(r.id.starts_with("evt_"), "{}", r.id);
                let event_id = r.json["id"].as_str().expect("event id").replace('-', "");
                assert_eq!(
                    r.id,
                    format!("evt_{event_id}"),
                    "webhook-id is the event id"
                );
                // A tampered body does not verify.
                let mut tampered = r.clone();
                tampered.body.push(b' ');
                assert!(verify(&secret, &tampered).is_err());
            }
            assert!(verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &got[0]).is_err());

            // Rotation: both secrets sign during the overlap.
            let rotated = api
                .json(
                    "POST",
                    &format!("{t}/webhooks/{hook_id}/rotate-secret"),
                    &owner,
                    json!({}),
                )
                .await;
            assert_eq!(rotated.status, 200, "{}", rotated.text);
            let new_secret = rotated.json["secret"].as_str().expect("secret").to_string();
            assert_ne!(new_secret, secret);
            let before = receiver.got().len();
            let doc = api
                .json(
                    "POST",
                    &format!("{t}/collections/notes/documents"),
                    &owner,
                    json!({"id": "n2", "data": {"a": 1}}),
                )
                .await;
            assert_eq!(doc.status, 201);
            eventually(Duration::from_secs(15), "delivery after rotation", || {
                receiver.got().len() > before
            })
            .await;
            let after = receiver.got()[before].clone();
            assert_eq!(after.signature.split(' ').count(), 2, "{}", after.signature);
            verify(&new_secret, &after).expect("new secret verifies");
            verify(&secret, &after).expect("old secret still verifies");
            // Ending the overlap: the old secret no longer signs.
            let rotated = api
                .json(
                    "POST",
                    &format!("{t}/webhooks/{hook_id}/rotate-secret"),
                    &owner,
                    json!({"overlap_seconds": 0}),
                )
                .await;
            let newest = rotated.json["secret"].as_str().expect("secret").to_string();
            let before = receiver.got().len();
            api.json(
                "POST",
                &format!("{t}/collections/notes/documents"),
                &owner,
                json!({"id": "n3", "data": {"a": 1}}),
            )
            .await;
            eventually(
                Duration::from_secs(15),
                "delivery after second rotation",
                || receiver.got().len() > before,
            )
            .await;
            let last = receiver.got()[before].clone();
            verify(&newest, &last).expect("newest verifies");
            assert!(verify(&new_secret, &last).is_err(), "overlap ended");

            // Every attempt is recorded for the tenant.
            let deliveries = api
                .get(&format!("{t}/webhooks/{hook_id}/deliveries"), &owner)
                .await;
            assert_eq!(deliveries.status, 200, "{}", deliveries.text);
            let items = deliveries.json["items"].as_array().expect("items").clone();
            assert!(items.len() >= 6, "{}", deliveries.text);
            assert!(items.iter().all(|d| d["state"] == "delivered"));
            let one = api
                .get(
                    &format!("{t}/webhooks/{hook_id}/deliveries/{}", items[0]["id"]),
                    &owner,
                )
                .await;
            assert_eq!(one.status, 200, "{}", one.text);
            assert_eq!(one.json["attempts_made"][0]["status"], 204);
            assert!(
                one.json["attempts_made"][0]["latency_ms"]
                    .as_i64()
                    .is_some()
            );

            // A viewer may not see webhooks.
            let viewer = api.new_key(&tenant.name, &owner, "viewer").await;
            assert_eq!(api.get(&format!("{t}/webhooks"), &viewer).await.status, 403);
            assert_eq!(
                api.get(&format!("{t}/events/backlog"), &viewer)
                    .await
                    .status,
                403
            );
            let backlog = api.get(&format!("{t}/events/backlog"), &owner).await;
            assert_eq!(backlog.status, 200, "{}", backlog.text);
            dispatcher.abort();
        },
    )
    .await;
}

#[tokio::test]
async fn retries_back_off_dead_letter_and_replay() {
    with_tenants(
        "events",
        &["rt"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let (state, dispatcher) =
                state_with_dispatcher(app_state(&catalog_url), settings()).await;
            let server = Server::start(state, 1 << 20).await;
            let api = Client::new(&server.base);
            let owner = api.accept_invitation(tenant).await;
            let receiver = Receiver::start().await;
            let t = format!("/v1/tenants/{}", tenant.name);
            let hook = api
                .json(
                    "POST",
                    &format!("{t}/webhooks"),
                    &owner,
                    json!({"url": receiver.url, "event_types": ["document.created"]}),
                )
                .await;
            assert_eq!(hook.status, 201, "{}", hook.text);
            let hook_id = hook.json["id"].as_str().expect("id").to_string();
            api.json(
                "POST",
                &format!("{t}/collections"),
                &owner,
                json!({"name": "c"}),
            )
            .await;

            // Fails twice (500), then hangs past the 1 s timeout: 4 attempts
            // (the configured maximum) and the delivery is dead.
            receiver.script(&[FAIL, FAIL]);
            receiver.set(HANG);
            let doc = api
                .json(
                    "POST",
                    &format!("{t}/collections/c/documents"),
                    &owner,
                    json!({"id": "d", "data": {}}),
                )
                .await;
            assert_eq!(doc.status, 201);
            let started = std::time::Instant::now();
            let dead_path = format!("{t}/webhooks/{hook_id}/deliveries?state=dead");
            let mut dead = Value::Null;
            while started.elapsed() < Duration::from_secs(30) {
                let reply = api.get(&dead_path, &owner).await;
                if reply.json["items"]
                    .as_array()
                    .is_some_and(|i| !i.is_empty())
                {
                    dead = reply.json["items"][0].clone();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(dead["state"], "dead", "no dead delivery: {dead}");
            assert_eq!(dead["attempts"], 4);
            let detail = api
                .get(
                    &format!("{t}/webhooks/{hook_id}/deliveries/{}", dead["id"]),
                    &owner,
                )
                .await;
            let attempts = detail.json["attempts_made"]
                .as_array()
                .expect("attempts")
                .clone();
            assert_eq!(attempts.len(), 4, "{}", detail.text);
            assert_eq!(attempts[0]["status"], 500);
            assert_eq!(attempts[1]["status"], 500);
            let last = attempts.last().expect("last");
            assert_eq!(last["status"], Value::Null, "{last}");
            assert!(
                last["error"].as_str().expect("error").contains("timed out"),
                "{last}"
            );
            assert!(
                last["latency_ms"].as_i64().expect("latency") >= 900,
                "{last}"
            );
            // Nothing more than the 4 attempts was made.
            assert_eq!(receiver.got().len(), 4);
            let backlog = api.get(&format!("{t}/events/backlog"), &owner).await;
            assert_eq!(backlog.json["dead_deliveries"], 1, "{}", backlog.text);
            assert_eq!(backlog.json["pending_deliveries"], 0, "{}", backlog.text);

            // Recovered receiver; the admin replays the event.
            receiver.set(OK);
            let event_id = receiver.got()[0].json["id"]
                .as_str()
                .expect("event id")
                .to_string();
            let replay = api
                .send(
                    "POST",
                    &format!("{t}/events/{event_id}/replay"),
                    Some(&owner),
                    Body::None,
                    &[("idempotency-key", "replay-1")],
                )
                .await;
            assert_eq!(replay.status, 202, "{}", replay.text);
            assert_eq!(replay.json, json!({"event": false, "deliveries": 1}));
            eventually(Duration::from_secs(15), "replayed delivery applied", || {
                receiver.applied().len() == 1
            })
            .await;
            let applied = receiver.applied();
            let (webhook_id, body) = applied.iter().next().expect("one");
            assert_eq!(body["data"]["id"], "d");
            assert!(
                receiver.got().iter().all(|r| &r.id == webhook_id),
                "same webhook-id on every attempt"
            );
            // Replaying what is not dead is a conflict; an unknown event 404.
            let again = api
                .send(
                    "POST",
                    &format!("{t}/events/{event_id}/replay"),
                    Some(&owner),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(again.status, 409, "{}", again.text);
            let unknown = api
                .send(
                    "POST",
                    &format!("{t}/events/{}/replay", uuid::Uuid::nil()),
                    Some(&owner),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(unknown.status, 404);
            // The same Idempotency-Key replays the first answer.
            let replayed = api
                .send(
                    "POST",
                    &format!("{t}/events/{event_id}/replay"),
                    Some(&owner),
                    Body::None,
                    &[("idempotency-key", "replay-1")],
                )
                .await;
            assert_eq!(replayed.status, 202);
            assert_eq!(replayed.header("idempotency-replayed"), Some("true"));
            dispatcher.abort();
        },
    )
    .await;
}

#[tokio::test]
async fn a_redis_outage_retries_then_dead_letters_and_replays() {
    with_tenants(
        "events",
        &["ro"],
        |catalog_url, _catalog, tenants| async move {
            let tenant = &tenants[0];
            let settings = settings();
            strata_dataplane::events::settings::install(settings.clone());
            let state = app_state(&catalog_url);
            let server = Server::start(state.clone(), 1 << 20).await;
            let api = Client::new(&server.base);
            let owner = api.accept_invitation(tenant).await;
            let t = format!("/v1/tenants/{}", tenant.name);
            let pool = state.tenancy.open(&tenant.name).await.expect("tenant").pool;
            // The dispatcher's Redis is a private server the test kills.
            let mut private = strata_tests::process::PrivateRedis::start().await;
            let client = redis::Client::open(private.url.as_str()).expect("client");
            let manager = redis::aio::ConnectionManager::new_with_config(
                client,
                redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(Duration::from_millis(300)))
                    .set_response_timeout(Some(Duration::from_millis(500))),
            )
            .await
            .expect("manager");
            let dispatcher = strata_dataplane::events::Dispatcher::new(
                state.tenancy.clone(),
                state.catalog.clone(),
                Some(manager),
                None,
                settings,
            )
            .expect("dispatcher");
            dispatcher
                .run_tenant(&tenant.name)
                .await
                .expect("first run");
            private.stop();
            let created = api
                .json(
                    "POST",
                    &format!("{t}/collections"),
                    &owner,
                    json!({"name": "c"}),
                )
                .await;
            assert_eq!(created.status, 201);
            // Each run fails to publish: the event is retried later (attempts,
            // error and a future available_at), then dead after 4 attempts.
            for attempt in 1..=4 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
                assert!(
                    dispatcher.run_tenant(&tenant.name).await.is_err(),
                    "attempt {attempt}"
                );
                let (attempts, error, later, dead): (i32, Option<String>, bool, bool) =
                    sqlx::query_as(
                        "SELECT attempts, last_error, available_at > now(), dead_at IS NOT NULL \
                   FROM outbox WHERE topic = 'collection.created'",
                    )
                    .fetch_one(&pool)
                    .await
                    .expect("row");
                assert_eq!(attempts, attempt);
                assert!(error.expect("error").starts_with("redis:"));
                assert_eq!(dead, attempt == 4, "attempt {attempt}");
                let _ = later;
            }
            let dead = api.get(&format!("{t}/events/dead"), &owner).await;
            assert_eq!(dead.status, 200, "{}", dead.text);
            let item = dead.json["items"][0].clone();
            assert_eq!(item["type"], "collection.created", "{}", dead.text);
            assert_eq!(item["attempts"], 4);
            let backlog = api.get(&format!("{t}/events/backlog"), &owner).await;
            assert_eq!(backlog.json["dead_events"], 1, "{}", backlog.text);
            // Redis is back; the admin replays; the next run publishes it.
            private.restart().await;
            let replay = api
                .send(
                    "POST",
                    &format!("{t}/events/{}/replay", item["id"].as_str().expect("id")),
                    Some(&owner),
                    Body::None,
                    &[],
                )
                .await;
            assert_eq!(replay.status, 202, "{}", replay.text);
            assert_eq!(replay.json["event"], true);
            let mut published = false;
            for _ in 0..20 {
                if dispatcher.run_tenant(&tenant.name).await.is_ok() {
                    published = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            assert!(published, "dispatched after the outage");
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
                    .fetch_one(&pool)
                    .await
                    .expect("count");
            assert_eq!(left, 0);
        },
    )
    .await;
}
