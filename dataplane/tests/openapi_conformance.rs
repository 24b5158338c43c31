//! The committed OpenAPI document (`docs/openapi.json`) against the real
//! API: one tenant provisioned by the operator's provisioner, every
//! documented operation called through the real router, and each answer
//! checked against the document: its status is one the operation lists,
//! its content type one the response lists, and its body validates against
//! the response's schema (JSON Schema 2020-12, which OpenAPI 3.1 schemas
//! are). The drift tests in `openapi` keep the file equal to what the
//! attributes generate; this keeps the attributes equal to what the
//! handlers answer, notably for bodies the handlers build as JSON values.
//! Needs `source .stack/env`.

mod storage_support;
mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::{Body, Client, Reply, Server, Tenant, with_tenants};

struct Spec {
    doc: Value,
    client: Client,
    /// `METHOD template` of every call made, to check coverage at the end.
    called: std::sync::Mutex<BTreeSet<String>>,
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |path, (name, value)| {
            path.replace(&format!("{{{name}}}"), value)
        })
}

impl Spec {
    fn new(client: Client) -> Self {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
                .expect("docs/openapi.json");
        Self {
            doc: serde_json::from_str(&text).expect("valid JSON"),
            client,
            called: Default::default(),
        }
    }

    /// Sends the request and checks the answer against the document.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: &str,
        template: &str,
        values: &[(&str, &str)],
        key: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
        expect: u16,
    ) -> Reply {
        let path = fill(template, values);
        let reply = self.client.send(method, &path, key, body, headers).await;
        assert_eq!(reply.status, expect, "{method} {path}: {}", reply.text);
        let template = template.split('?').next().unwrap_or_default();
        self.check(method, template, &reply);
        self.called
            .lock()
            .expect("lock")
            .insert(format!("{} {template}", method.to_lowercase()));
        reply
    }

    /// Where `instance` breaks `schema` (a schema of the document).
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        // The schema as the root, with the document's components beside it
        // so `#/components/schemas/…` resolves.
        let mut root = json!({ "allOf": [schema] });
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn check(&self, method: &str, template: &str, reply: &Reply) {
        let what = format!("{method} {template} → {}", reply.status);
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(operation.is_object(), "{what}: operation not documented");
        let response = &operation["responses"][reply.status.to_string()];
        assert!(
            response.is_object(),
            "{what}: status not documented ({})",
            reply.text
        );
        let content = response["content"].as_object();
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            assert!(
                reply.text.is_empty(),
                "{what}: undocumented body {}",
                reply.text
            );
            return;
        };
        let content_type = reply
            .header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let media = content
            .get(&content_type)
            .unwrap_or_else(|| panic!("{what}: content type {content_type} not documented"));
        let Some(schema) = media.get("schema") else {
            return;
        };
        let errors = self.errors(schema, &reply.json);
        assert!(
            errors.is_empty(),
            "{what}: body does not match the documented schema: {errors:?}\n{}",
            reply.text
        );
    }
}

#[tokio::test]
async fn the_api_answers_as_documented() {
    with_tenants("openapi-conformance", &["oac"], scenario).await;
}

async fn scenario(catalog_url: String, catalog: strata_db::Catalog, tenants: Vec<Tenant>) {
    // Objects need a real backend: the filesystem one, in a temp dir.
    let store = storage_support::backend(storage_support::Store::Fs).await;
    let state = storage_support::app_state(
        &catalog_url,
        store.backend.clone(),
        None,
        storage_support::settings(),
    );
    let events_state = state.clone();
    let server = Server::start(state, 10 << 20).await;
    let spec = Spec::new(Client::new(&server.base));
    let tenant = &tenants[0];
    let t = tenant.name.as_str();
    let none: &[(&str, &str)] = &[];

    // The checks can fail: a wrong body is caught through a `$ref`.
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    assert!(!spec.errors(&problem, &json!({"type": 1})).is_empty());
    assert!(
        spec.errors(
            &problem,
            &json!({"type": "https://strata.dev/problems/conflict", "title": "Conflict",
                    "status": 409, "code": "conflict"})
        )
        .is_empty()
    );

    spec.call("GET", "/v1/openapi.json", none, None, Body::None, &[], 200)
        .await;

    // Identity.
    let accept = "/v1/tenants/{tenant}/invitations/accept";
    let accepted = spec
        .call(
            "POST",
            accept,
            &[("tenant", t)],
            None,
            Body::Json(json!({"token": tenant.token})),
            &[],
            201,
        )
        .await;
    let owner = accepted.json["key"]["key"]
        .as_str()
        .expect("key")
        .to_string();
    let subject = accepted.json["subject"]
        .as_str()
        .expect("subject")
        .to_string();
    let key = Some(owner.as_str());
    spec.call(
        "POST",
        accept,
        &[("tenant", t)],
        None,
        Body::Json(json!({"token": tenant.token})),
        &[],
        404,
    )
    .await;
    let keys = "/v1/tenants/{tenant}/keys";
    let created = spec
        .call(
            "POST",
            keys,
            &[("tenant", t)],
            key,
            Body::Json(json!({"name": "ci", "role": "editor"})),
            &[],
            201,
        )
        .await;
    spec.call(
        "POST",
        keys,
        &[("tenant", t)],
        key,
        Body::Json(json!({"role": "no-such-role"})),
        &[],
        422,
    )
    .await;
    spec.call("GET", keys, &[("tenant", t)], None, Body::None, &[], 401)
        .await;
    spec.call("GET", keys, &[("tenant", t)], key, Body::None, &[], 200)
        .await;
    let key_id = created.json["id"].as_str().expect("id").to_string();
    spec.call(
        "DELETE",
        "/v1/tenants/{tenant}/keys/{id}",
        &[("tenant", t), ("id", &key_id)],
        key,
        Body::None,
        &[],
        204,
    )
    .await;
    let members = "/v1/tenants/{tenant}/members";
    spec.call("GET", members, &[("tenant", t)], key, Body::None, &[], 200)
        .await;
    let member = "/v1/tenants/{tenant}/members/{subject}";
    spec.call(
        "PATCH",
        member,
        &[("tenant", t), ("subject", &subject)],
        key,
        Body::Json(json!({"role": "owner"})),
        &[],
        200,
    )
    .await;
    spec.call(
        "DELETE",
        member,
        &[("tenant", t), ("subject", &subject)],
        key,
        Body::None,
        &[],
        409,
    )
    .await;

    // Collections.
    let collections = "/v1/tenants/{tenant}/collections";
    let collection = "/v1/tenants/{tenant}/collections/{collection}";
    let c = &[("tenant", t), ("collection", "articles")];
    let body = json!({
        "name": "articles",
        "schema": {"type": "object", "required": ["title"],
                   "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}},
        "vector": {"dimension": 3, "metric": "cosine"},
        "indexed_fields": [{"path": "year", "type": "number"}]
    });
    let made = spec
        .call(
            "POST",
            collections,
            &[("tenant", t)],
            key,
            Body::Json(body.clone()),
            &[],
            201,
        )
        .await;
    spec.call(
        "POST",
        collections,
        &[("tenant", t)],
        key,
        Body::Json(body),
        &[],
        409,
    )
    .await;
    spec.call(
        "POST",
        collections,
        &[("tenant", t)],
        key,
        Body::Raw(Some("text/plain"), b"{}".to_vec()),
        &[],
        415,
    )
    .await;
    spec.call(
        "GET",
        collections,
        &[("tenant", t)],
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call("GET", collection, c, key, Body::None, &[], 200)
        .await;
    let etag = made.header("etag").expect("etag").to_string();
    spec.call(
        "GET",
        collection,
        c,
        key,
        Body::None,
        &[("if-none-match", &etag)],
        304,
    )
    .await;
    spec.call(
        "GET",
        collection,
        &[("tenant", t), ("collection", "missing")],
        key,
        Body::None,
        &[],
        404,
    )
    .await;
    spec.call(
        "PATCH",
        collection,
        c,
        key,
        Body::Json(json!({"require_if_match": false})),
        &[],
        200,
    )
    .await;

    // Documents.
    let documents = "/v1/tenants/{tenant}/collections/{collection}/documents";
    let document = "/v1/tenants/{tenant}/collections/{collection}/documents/{id}";
    let d = &[("tenant", t), ("collection", "articles"), ("id", "pg")];
    spec.call(
        "POST",
        documents,
        c,
        key,
        Body::Json(json!({"id": "pg", "data": {"title": "Postgres", "year": 2024}})),
        &[],
        201,
    )
    .await;
    spec.call(
        "POST",
        documents,
        c,
        key,
        Body::Json(json!({"data": {"title": "Vectors", "year": 2025}})),
        &[],
        201,
    )
    .await;
    spec.call(
        "POST",
        documents,
        c,
        key,
        Body::Json(json!({"data": {"year": "x"}})),
        &[],
        422,
    )
    .await;
    let got = spec
        .call("GET", document, d, key, Body::None, &[], 200)
        .await;
    let etag = got.header("etag").expect("etag").to_string();
    spec.call(
        "PUT",
        document,
        d,
        key,
        Body::Json(json!({"title": "Postgres tips", "year": 2024})),
        &[("if-match", &etag)],
        200,
    )
    .await;
    spec.call(
        "PUT",
        document,
        &[("tenant", t), ("collection", "articles"), ("id", "new")],
        key,
        Body::Json(json!({"title": "New"})),
        &[],
        201,
    )
    .await;
    spec.call(
        "PATCH",
        document,
        d,
        key,
        Body::Raw(
            Some("application/merge-patch+json"),
            br#"{"tags": ["db"]}"#.to_vec(),
        ),
        &[("if-match", &etag)],
        412,
    )
    .await;
    spec.call(
        "PATCH",
        document,
        d,
        key,
        Body::Raw(
            Some("application/merge-patch+json"),
            br#"{"tags": ["db"]}"#.to_vec(),
        ),
        &[],
        200,
    )
    .await;
    spec.call(
        "GET",
        &format!("{documents}?filter[year][gte]=2020&sort=-year&count=true"),
        c,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "GET",
        &format!("{documents}?bogus=1"),
        c,
        key,
        Body::None,
        &[],
        400,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/collections/{collection}/query",
        c,
        key,
        Body::Json(json!({"filter": {"year": {"gte": 2020}}, "sort": ["-year"], "limit": 1})),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/collections/{collection}/bulk",
        c,
        key,
        Body::Json(json!({"operations": [
            {"op": "create", "id": "b1", "data": {"title": "Bulk"}},
            {"op": "upsert", "id": "b2", "data": {"title": "Bulk 2"}},
            {"op": "delete", "id": "b1"}
        ]})),
        &[],
        200,
    )
    .await;
    spec.call("DELETE", document, d, key, Body::None, &[], 204)
        .await;

    // Vectors.
    let vectors = "/v1/tenants/{tenant}/collections/{collection}/vectors";
    let vector = "/v1/tenants/{tenant}/collections/{collection}/vectors/{id}";
    spec.call(
        "POST",
        vectors,
        c,
        key,
        Body::Json(json!({"vectors": [
            {"id": "v1", "vector": [0.9, 0.1, 0.0], "metadata": {"kind": "howto"}, "document_id": "new"},
            {"id": "v2", "vector": [0.1, 0.9, 0.0], "metadata": {"kind": "news"}},
            {"id": "v3", "vector": [0.0, 0.1, 0.9], "metadata": {"kind": "news"}}
        ]})),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        vectors,
        c,
        key,
        Body::Raw(
            Some("application/json"),
            br#"{"vectors": [{"id": "bad", "vector": [NaN, 1, 2]}]}"#.to_vec(),
        ),
        &[],
        422,
    )
    .await;
    spec.call(
        "GET",
        vector,
        &[("tenant", t), ("collection", "articles"), ("id", "v1")],
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/collections/{collection}/search",
        c,
        key,
        Body::Json(
            json!({"vector": [1.0, 0.2, 0.0], "k": 2, "filter": {"kind": "howto"},
                          "include": ["metadata", "document", "vector"]}),
        ),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/search",
        &[("tenant", t)],
        key,
        Body::Json(json!({"collections": ["articles"], "vector": [1.0, 0.2, 0.0], "k": 2})),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/collections/{collection}/vectors/delete",
        c,
        key,
        Body::Json(json!({"filter": {"kind": "news"}})),
        &[],
        200,
    )
    .await;
    spec.call(
        "DELETE",
        vector,
        &[("tenant", t), ("collection", "articles"), ("id", "v1")],
        key,
        Body::None,
        &[],
        204,
    )
    .await;
    spec.call("DELETE", collection, c, key, Body::None, &[], 204)
        .await;

    // Storage: a bucket as the operator's reconcile writes it.
    storage_support::create_bucket(&catalog, tenant.id, "files", json!({})).await;
    let b = &[("tenant", t), ("bucket", "files")];
    let object = "/v1/tenants/{tenant}/buckets/{bucket}/objects/{key}";
    let o = &[("tenant", t), ("bucket", "files"), ("key", "docs/a.bin")];
    let octets = "application/octet-stream";
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/buckets/{bucket}",
        b,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "PUT",
        object,
        o,
        key,
        Body::Raw(Some(octets), b"0123456789".to_vec()),
        &[],
        201,
    )
    .await;
    spec.call(
        "PUT",
        object,
        o,
        key,
        Body::Raw(Some(octets), b"0123456789".to_vec()),
        &[],
        200,
    )
    .await;
    spec.call(
        "PUT",
        object,
        o,
        key,
        Body::Raw(Some(octets), b"x".to_vec()),
        &[("if-none-match", "*")],
        412,
    )
    .await;
    spec.call("GET", object, o, key, Body::None, &[], 200).await;
    spec.call(
        "GET",
        object,
        o,
        key,
        Body::None,
        &[("range", "bytes=2-4")],
        206,
    )
    .await;
    spec.call(
        "GET",
        object,
        o,
        key,
        Body::None,
        &[("range", "bytes=20-")],
        416,
    )
    .await;
    spec.call("HEAD", object, o, key, Body::None, &[], 200)
        .await;
    spec.call(
        "GET",
        object,
        &[("tenant", t), ("bucket", "files"), ("key", "none")],
        key,
        Body::None,
        &[],
        404,
    )
    .await;
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/buckets/{bucket}/objects?delimiter=/",
        b,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/buckets/{bucket}/presign",
        b,
        key,
        Body::Json(json!({"method": "GET", "key": "docs/a.bin"})),
        &[],
        200,
    )
    .await;
    // This bucket has no image transforms: a render is refused, as
    // documented (renders themselves: dataplane/tests/transforms.rs).
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/buckets/{bucket}/render/{key}?w=100",
        o,
        key,
        Body::None,
        &[],
        403,
    )
    .await;
    // A signed render URL.
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/buckets/{bucket}/render-urls",
        b,
        key,
        Body::Json(json!({"key": "docs/a.bin", "transform": {"w": 100}})),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/signing-keys/rotate",
        &[("tenant", t)],
        key,
        Body::Json(json!({})),
        &[],
        200,
    )
    .await;
    let uploads = "/v1/tenants/{tenant}/buckets/{bucket}/uploads";
    let created = spec
        .call(
            "POST",
            uploads,
            b,
            key,
            Body::Json(json!({"key": "big.bin"})),
            &[],
            201,
        )
        .await;
    let upload_id = created.json["upload_id"]
        .as_str()
        .expect("upload id")
        .to_string();
    let u = &[
        ("tenant", t),
        ("bucket", "files"),
        ("upload", upload_id.as_str()),
    ];
    let part = spec
        .call(
            "PUT",
            "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}/parts/{part}",
            &[
                ("tenant", t),
                ("bucket", "files"),
                ("upload", upload_id.as_str()),
                ("part", "1"),
            ],
            key,
            Body::Raw(Some(octets), b"part one".to_vec()),
            &[],
            200,
        )
        .await;
    let upload = "/v1/tenants/{tenant}/buckets/{bucket}/uploads/{upload}";
    spec.call("GET", uploads, b, key, Body::None, &[], 200)
        .await;
    spec.call("GET", upload, u, key, Body::None, &[], 200).await;
    spec.call(
        "POST",
        upload,
        u,
        key,
        Body::Json(json!({"parts": [{"part_number": 1, "etag": "\"wrong\""}]})),
        &[],
        422,
    )
    .await;
    spec.call(
        "POST",
        upload,
        u,
        key,
        Body::Json(json!({"parts": [{"part_number": 1, "etag": part.json["etag"]}]})),
        &[],
        201,
    )
    .await;
    let other = spec
        .call(
            "POST",
            uploads,
            b,
            key,
            Body::Json(json!({"key": "gone.bin"})),
            &[],
            201,
        )
        .await;
    let other_id = other.json["upload_id"]
        .as_str()
        .expect("upload id")
        .to_string();
    spec.call(
        "DELETE",
        upload,
        &[
            ("tenant", t),
            ("bucket", "files"),
            ("upload", other_id.as_str()),
        ],
        key,
        Body::None,
        &[],
        204,
    )
    .await;
    spec.call("DELETE", object, o, key, Body::None, &[], 204)
        .await;
    drop(store);

    events(&spec, &events_state, t, key).await;

    // Every documented operation was called at least once.
    let called = spec.called.lock().expect("lock").clone();
    for (path, item) in spec.doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            assert!(
                called.contains(&format!("{method} {path}")),
                "{method} {path} is documented but this test does not call it"
            );
        }
    }
}

/// Webhooks, deliveries, dead letters, backlog and replay (docs/events.md).
async fn events(spec: &Spec, state: &strata_dataplane::app::AppState, t: &str, key: Option<&str>) {
    use strata_dataplane::events::{Dispatcher, EventSettings};
    // A local endpoint (nothing listens there: every attempt fails).
    strata_dataplane::events::settings::install(EventSettings {
        allow_http: true,
        allow_private: true,
        ..EventSettings::default()
    });
    let hooks = "/v1/tenants/{tenant}/webhooks";
    let hook = "/v1/tenants/{tenant}/webhooks/{id}";
    let tv = &[("tenant", t)];
    let made = spec
        .call(
            "POST",
            hooks,
            tv,
            key,
            Body::Json(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["document.*"]})),
            &[],
            201,
        )
        .await;
    let id = made.json["id"].as_str().expect("id").to_string();
    let at = &[("tenant", t), ("id", id.as_str())];
    spec.call(
        "POST",
        hooks,
        tv,
        key,
        Body::Json(json!({"url": "https://127.0.0.1/"})),
        &[],
        201,
    )
    .await;
    spec.call("GET", hooks, tv, key, Body::None, &[], 200).await;
    spec.call("GET", hook, at, key, Body::None, &[], 200).await;
    spec.call(
        "PATCH",
        hook,
        at,
        key,
        Body::Json(json!({"description": "ci"})),
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/webhooks/{id}/rotate-secret",
        at,
        key,
        Body::Json(json!({"overlap_seconds": 60})),
        &[],
        200,
    )
    .await;
    // One attempt each, then dead.
    let dispatcher = Dispatcher::new(
        state.tenancy.clone(),
        state.catalog.clone(),
        None,
        None,
        EventSettings {
            max_attempts: 1,
            webhook_timeout: std::time::Duration::from_secs(1),
            allow_http: true,
            allow_private: true,
            ..EventSettings::default()
        },
    )
    .expect("dispatcher");
    dispatcher.run_tenant(t).await.expect("fan out");
    dispatcher.run_tenant(t).await.expect("deliver");
    let deliveries = "/v1/tenants/{tenant}/webhooks/{id}/deliveries?state=dead";
    let listed = spec
        .call("GET", deliveries, at, key, Body::None, &[], 200)
        .await;
    let items = listed.json["items"].as_array().expect("items").clone();
    assert!(items.len() >= 2, "{}", listed.text);
    let delivery = items[0]["id"].to_string();
    let one = &[
        ("tenant", t),
        ("id", id.as_str()),
        ("delivery", delivery.as_str()),
    ];
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}",
        one,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/replay",
        one,
        key,
        Body::None,
        &[],
        202,
    )
    .await;
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/events/backlog",
        tv,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    spec.call(
        "GET",
        "/v1/tenants/{tenant}/events/dead",
        tv,
        key,
        Body::None,
        &[],
        200,
    )
    .await;
    let event = items[1]["event_id"].as_str().expect("event id").to_string();
    let ev = &[("tenant", t), ("event", event.as_str())];
    spec.call(
        "POST",
        "/v1/tenants/{tenant}/events/{event}/replay",
        ev,
        key,
        Body::None,
        &[],
        202,
    )
    .await;
    spec.call("DELETE", hook, at, key, Body::None, &[], 204)
        .await;
}
