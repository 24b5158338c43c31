//! The vector API over HTTP, end to end: the real router and `AppState`
//! served on an ephemeral port, two tenants provisioned by the operator's
//! provisioner, credentials from accepting their invitations, and every
//! route of `/v1/tenants/{t}/collections/{c}/vectors…`, `…/search` and
//! `/v1/tenants/{t}/search` called with reqwest. Every error answer is
//! checked as a problem document (type, title, status, code, `instance` =
//! the `X-Request-Id` header) that leaks neither SQL nor the other tenant;
//! the outbox rows of vector writes and the HNSW index of a deleted
//! collection are checked in the tenant database. Needs `source .stack/env`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use support::{Body, Checked, Client, Server, Tenant, app_state, with_tenants, without_instance};

/// The server's body limit (`--max-body-bytes`), small so a 413 is cheap.
const MAX_BODY: usize = 1 << 20;

/// Vectors a collection holds before its HNSW index is built: the
/// server's default (10,000 three-dimensional vectors are ten requests).
const INDEX_THRESHOLD: usize = strata_dataplane::vectors::index::DEFAULT_INDEX_THRESHOLD as usize;

/// Words no body of this API may contain, besides the shared ones.
const EXTRA_LEAKS: &[&str] = &["embeddings", "hnsw."];

fn col(tenant: &str, rest: &str) -> String {
    format!("/v1/tenants/{tenant}/collections{rest}")
}

fn across(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/search")
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|hit| hit["id"].as_str().expect("id").to_string())
        .collect()
}

/// The tenant database as the stack's superuser (to read the outbox and
/// the catalog of indexes, which the API does not show).
async fn admin_on(tenant: &Tenant) -> sqlx::PgPool {
    let database = strata_operator::placement::TenantNames::for_tenant(tenant.id).database;
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&strata_tests::with_database(
            &strata_tests::env("STRATA_DATABASE_URL"),
            database.as_str(),
        ))
        .await
        .expect("admin pool")
}

#[tokio::test]
async fn vectors_api_over_http() {
    with_tenants("vectors-http", &["vha", "vhb"], scenario).await;
}

async fn scenario(catalog_url: String, _catalog: strata_db::Catalog, tenants: Vec<Tenant>) {
    let server = Server::start(app_state(&catalog_url), MAX_BODY).await;
    let client = Client::new(&server.base);
    let (a, b) = (&tenants[0], &tenants[1]);
    let api = Checked::new(client.clone(), b, EXTRA_LEAKS);
    let owner = client.accept_invitation(a).await;
    let b_owner = client.accept_invitation(b).await;
    let viewer = client.new_key(&a.name, &owner, "viewer").await;
    let ta = a.name.as_str();

    setup(&api, ta, &owner).await;
    credentials(&api, ta).await;
    crud(&api, ta, &owner).await;
    search(&api, ta, &owner).await;
    cross(&api, ta, &owner).await;
    validation(&api, ta, &owner).await;
    protocol(&api, ta, &owner).await;
    viewer_cannot_write(&api, ta, &owner, &viewer).await;
    isolation(&api, ta, &b.name, &owner, &b_owner).await;
    outbox(&api, a, &owner).await;
    index_dropped_with_collection(&api, a, &owner).await;
}

/// Collections (cosine 3-d twice, l2 3-d, cosine 4-d, one without vector
/// configuration) and a document to link.
async fn setup(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    for body in [
        json!({"name": "notes", "vector": {"dimension": 3, "metric": "cosine"}}),
        json!({"name": "other", "vector": {"dimension": 3, "metric": "cosine"}}),
        json!({"name": "euclid", "vector": {"dimension": 3, "metric": "l2"}}),
        json!({"name": "wide", "vector": {"dimension": 4, "metric": "cosine"}}),
        json!({"name": "plain"}),
    ] {
        let reply = c.json("POST", &col(ta, ""), key, body).await;
        api.ok(&reply, 201);
    }
    let doc = c
        .json(
            "PUT",
            &col(ta, "/notes/documents/doc1"),
            key,
            json!({"title": "Tea", "body": "warm the pot"}),
        )
        .await;
    api.ok(&doc, 201);
}

/// 401 without a credential or with a malformed one, on every route.
async fn credentials(api: &Checked, ta: &str) {
    let c = &api.client;
    let search = json!({"vector": [1, 0, 0]});
    for (method, path, body) in [
        (
            "POST",
            col(ta, "/notes/vectors"),
            json!({"vectors": [{"id": "x", "vector": [1, 0, 0]}]}),
        ),
        (
            "PUT",
            col(ta, "/notes/vectors"),
            json!({"vectors": [{"id": "x", "vector": [1, 0, 0]}]}),
        ),
        ("GET", col(ta, "/notes/vectors/x"), Value::Null),
        ("DELETE", col(ta, "/notes/vectors/x"), Value::Null),
        (
            "POST",
            col(ta, "/notes/vectors/delete"),
            json!({"ids": ["x"]}),
        ),
        ("POST", col(ta, "/notes/search"), search.clone()),
        (
            "POST",
            across(ta),
            json!({"collections": ["notes"], "vector": [1, 0, 0]}),
        ),
    ] {
        for auth in [None, Some("nonsense"), Some("sk_nope")] {
            let body = if body.is_null() {
                Body::None
            } else {
                Body::Json(body.clone())
            };
            let reply = c.send(method, &path, auth, body, &[]).await;
            api.problem(&reply, 401, "unauthenticated");
        }
    }
}

/// Upsert (POST and PUT), get, delete one, delete by ids and by filter.
async fn crud(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let vectors = col(ta, "/notes/vectors");
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [
                {"id": "a", "vector": [1, 0, 0], "metadata": {"kind": "howto", "n": 1}, "document_id": "doc1"},
                {"id": "b", "vector": [0, 1, 0], "metadata": {"kind": "faq"}},
                {"id": "c", "vector": [0.9, 0.1, 0], "metadata": {"kind": "howto", "n": 3}},
                {"id": "d", "vector": [0, 0, 1]},
            ]}),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["upserted"], 4, "{body}");
    assert!(
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["version"] == 1),
        "{body}"
    );
    // PUT is the same upsert; an existing id is replaced with a new version.
    let reply = c
        .json(
            "PUT",
            &vectors,
            key,
            json!({"vectors": [{"id": "a", "vector": [1, 0.0, 0.0], "metadata": {"kind": "howto", "n": 2}, "document_id": "doc1"}]}),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["items"], json!([{"id": "a", "version": 2}]));

    let got = c.get(&col(ta, "/notes/vectors/a"), key).await;
    let body = api.ok(&got, 200);
    assert_eq!(body["id"], "a");
    assert_eq!(body["vector"], json!([1.0, 0.0, 0.0]));
    assert_eq!(body["metadata"], json!({"kind": "howto", "n": 2}));
    assert_eq!(body["document_id"], "doc1");
    assert_eq!(body["version"], 2);
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    let got = c.get(&col(ta, "/notes/vectors/d"), key).await;
    assert_eq!(api.ok(&got, 200)["metadata"], json!({}));

    // Delete one: 204, then 404.
    let reply = c
        .send(
            "DELETE",
            &col(ta, "/notes/vectors/d"),
            Some(key),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(reply.text.is_empty());
    for method in ["GET", "DELETE"] {
        let reply = c
            .send(
                method,
                &col(ta, "/notes/vectors/d"),
                Some(key),
                Body::None,
                &[],
            )
            .await;
        api.problem(&reply, 404, "not-found");
    }
    // By ids: only those that exist count.
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/vectors/delete"),
            key,
            json!({"ids": ["b", "nope"]}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 1}));
    // By filter (metadata containment).
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [
                {"id": "b", "vector": [0, 1, 0], "metadata": {"kind": "faq"}},
                {"id": "e", "vector": [0, 0.5, 0.5], "metadata": {"kind": "faq", "n": 5}},
            ]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/vectors/delete"),
            key,
            json!({"filter": {"kind": "faq"}}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 2}));
    for id in ["b", "e"] {
        let reply = c.get(&col(ta, &format!("/notes/vectors/{id}")), key).await;
        api.problem(&reply, 404, "not-found");
    }
    // `…/vectors/delete` read with GET is the vector whose id is `delete`.
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [{"id": "delete", "vector": [0, 0, 1]}]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c.get(&col(ta, "/notes/vectors/delete"), key).await;
    assert_eq!(api.ok(&reply, 200)["id"], "delete");
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/vectors/delete"),
            key,
            json!({"ids": ["delete"]}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 1}));
    // An id with characters that need escaping in a path.
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [{"id": "x/y z?", "vector": [0, 0, 1]}]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c.get(&col(ta, "/notes/vectors/x%2Fy%20z%3F"), key).await;
    assert_eq!(api.ok(&reply, 200)["id"], "x/y z?");
    let reply = c
        .send(
            "DELETE",
            &col(ta, "/notes/vectors/x%2Fy%20z%3F"),
            Some(key),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
}

/// Top-k with the metric's score, filter, `ef_search`, includes.
async fn search(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let path = col(ta, "/notes/search");
    // Left: a [1,0,0] (doc1, howto), c [0.9,0.1,0] (howto).
    let more = c
        .json(
            "POST",
            &col(ta, "/notes/vectors"),
            key,
            json!({"vectors": [{"id": "f", "vector": [0.2, 1, 0], "metadata": {"kind": "faq"}}]}),
        )
        .await;
    api.ok(&more, 200);
    let reply = c
        .json("POST", &path, key, json!({"vector": [1, 0, 0], "k": 2}))
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["metric"], "cosine");
    assert_eq!(body["score"], "cosine_similarity");
    assert_eq!(body["order"], "descending");
    assert_eq!(ids(&body), ["a", "c"]);
    let first = body["items"][0]["score"].as_f64().expect("score");
    let second = body["items"][1]["score"].as_f64().expect("score");
    assert!((first - 1.0).abs() < 1e-6 && second < first, "{body}");
    // Nothing but id and score unless asked.
    assert_eq!(
        body["items"][0]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["id".to_string(), "score".to_string()])
    );
    // Default k (10) returns all three.
    let reply = c
        .json("POST", &path, key, json!({"vector": [0, 1, 0]}))
        .await;
    assert_eq!(ids(&api.ok(&reply, 200))[0], "f");

    // Filter, ef_search and includes.
    let reply = c
        .json(
            "POST",
            &path,
            key,
            json!({
                "vector": [0, 1, 0], "k": 5, "filter": {"kind": "howto"},
                "ef_search": 100, "include": ["metadata", "document"]
            }),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(ids(&body), ["c", "a"], "{body}");
    let a = &body["items"][1];
    assert_eq!(a["metadata"], json!({"kind": "howto", "n": 2}));
    assert_eq!(a["document_id"], "doc1");
    assert_eq!(
        a["document"],
        json!({"title": "Tea", "body": "warm the pot"})
    );
    let c_hit = &body["items"][0];
    assert_eq!(c_hit["metadata"], json!({"kind": "howto", "n": 3}));
    assert_eq!(c_hit["document"], Value::Null);
    // A filter nothing matches: no hits, not an error.
    let reply = c
        .json(
            "POST",
            &path,
            key,
            json!({"vector": [0, 1, 0], "filter": {"kind": "none"}}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200)["items"], json!([]));
    // The vector itself, on request.
    let reply = c
        .json(
            "POST",
            &path,
            key,
            json!({"vector": [1, 0, 0], "k": 1, "include": ["vector"]}),
        )
        .await;
    assert_eq!(
        api.ok(&reply, 200)["items"][0]["vector"],
        json!([1.0, 0.0, 0.0])
    );
    // l2: distance, ascending.
    let reply = c
        .json(
            "POST",
            &col(ta, "/euclid/vectors"),
            key,
            json!({"vectors": [
                {"id": "near", "vector": [1, 1, 1]},
                {"id": "far", "vector": [5, 5, 5]},
            ]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c
        .json(
            "POST",
            &col(ta, "/euclid/search"),
            key,
            json!({"vector": [1, 1, 2]}),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["score"], "l2_distance");
    assert_eq!(body["order"], "ascending");
    assert_eq!(ids(&body), ["near", "far"]);
    assert!((body["items"][0]["score"].as_f64().expect("score") - 1.0).abs() < 1e-6);
}

/// Cross-collection search: each hit names its collection, merged by score.
async fn cross(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let reply = c
        .json(
            "POST",
            &col(ta, "/other/vectors"),
            key,
            json!({"vectors": [
                {"id": "o1", "vector": [1, 0.05, 0], "metadata": {"kind": "howto"}},
                {"id": "o2", "vector": [0, 0, 1], "metadata": {"kind": "faq"}},
            ]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c
        .json(
            "POST",
            &across(ta),
            key,
            json!({"collections": ["notes", "other"], "vector": [1, 0, 0], "k": 3}),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["metric"], "cosine");
    let hits: Vec<(String, String)> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| {
            (
                h["collection"].as_str().expect("collection").to_string(),
                h["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("notes".to_string(), "a".to_string()),
            ("other".to_string(), "o1".to_string()),
            ("notes".to_string(), "c".to_string()),
        ],
        "{body}"
    );
    let scores: Vec<f64> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| h["score"].as_f64().expect("score"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // With a filter, ef_search and metadata.
    let reply = c
        .json(
            "POST",
            &across(ta),
            key,
            json!({
                "collections": ["other", "notes"], "vector": [0, 0, 1], "k": 2,
                "filter": {"kind": "faq"}, "ef_search": 80, "include": ["metadata"]
            }),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert_eq!(body["items"][0]["collection"], "other");
    assert_eq!(body["items"][0]["id"], "o2");
    assert_eq!(body["items"][0]["metadata"], json!({"kind": "faq"}));
    assert_eq!(body["items"][1]["id"], "f");
}

/// 422 with pointers (NaN/Infinity, wrong length, zero cosine vector,
/// ranges, mixed configurations, the fixed vector configuration), 400 for
/// syntax and names, 409 for a collection without vector configuration.
async fn validation(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let vectors = col(ta, "/notes/vectors");
    let raw = |method: &'static str, path: String, text: &'static str| async move {
        c.send(
            method,
            &path,
            Some(key),
            Body::Raw(Some("application/json"), text.as_bytes().to_vec()),
            &[],
        )
        .await
    };
    // Bare NaN / Infinity (what some serialisers emit): 422, each pointed.
    let reply = raw(
        "POST",
        vectors.clone(),
        r#"{"vectors": [{"id": "ok", "vector": [1, 0, 0]}, {"id": "x", "vector": [1, NaN, -Infinity]}, {"id": "y", "vector": [Infinity, 0, 0]}]}"#,
    )
    .await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(
        Checked::pointers(&body),
        [
            "/vectors/1/vector/1",
            "/vectors/1/vector/2",
            "/vectors/2/vector/0"
        ],
        "{body}"
    );
    // Nothing of the batch was written.
    let reply = c.get(&col(ta, "/notes/vectors/ok"), key).await;
    api.problem(&reply, 404, "not-found");
    // Past f32, a string, wrong lengths, a zero vector (cosine), a bad id.
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [
                {"id": "p", "vector": [1e39, 0, 0]},
                {"id": "q", "vector": ["1", 0, 0]},
                {"id": "r", "vector": [1, 0]},
                {"id": "s", "vector": [1, 0, 0, 0]},
                {"id": "t", "vector": [0, 0, 0]},
                {"id": "", "vector": [1, 0, 0]},
            ]}),
        )
        .await;
    let body = api.problem(&reply, 422, "validation-failed");
    let pointers = Checked::pointers(&body);
    for pointer in [
        "/vectors/0/vector/0",
        "/vectors/1/vector/0",
        "/vectors/2/vector",
        "/vectors/3/vector",
        "/vectors/4/vector",
        "/vectors/5/id",
    ] {
        assert!(pointers.iter().any(|p| p == pointer), "{pointer}: {body}");
    }
    let reply = c.json("POST", &vectors, key, json!({"vectors": []})).await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/vectors"], "{body}");
    let reply = c
        .json(
            "POST",
            &vectors,
            key,
            json!({"vectors": [{"id": "m", "vector": [1, 0, 0], "metadata": [1]}]}),
        )
        .await;
    api.problem(&reply, 422, "validation-failed");

    // Search: NaN, wrong length, k and ef_search out of range, a filter
    // that is not an object, an unknown include.
    let search = col(ta, "/notes/search");
    let reply = raw("POST", search.clone(), r#"{"vector": [NaN, 0, 1]}"#).await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/vector/0"], "{body}");
    let reply = c
        .json(
            "POST",
            &search,
            key,
            json!({"vector": [1, 0], "k": 0, "ef_search": 5000, "filter": "kind"}),
        )
        .await;
    let body = api.problem(&reply, 422, "validation-failed");
    let pointers = Checked::pointers(&body);
    for pointer in ["/vector", "/k", "/ef_search", "/filter"] {
        assert!(pointers.iter().any(|p| p == pointer), "{pointer}: {body}");
    }
    let reply = c
        .json(
            "POST",
            &search,
            key,
            json!({"vector": [1, 0, 0], "include": ["password"]}),
        )
        .await;
    assert!(
        matches!(reply.status, 400 | 422),
        "unknown include: {}",
        reply.text
    );
    api.no_leak(&reply);

    // Delete: exactly one of ids and filter; `{}` would delete everything.
    let delete = col(ta, "/notes/vectors/delete");
    for (body, pointer) in [
        (json!({"ids": ["a"], "filter": {"kind": "howto"}}), ""),
        (json!({}), ""),
        (json!({"filter": {}}), "/filter"),
        (json!({"ids": []}), "/ids"),
        (json!({"ids": ["a", ""]}), "/ids/1"),
    ] {
        let reply = c.json("POST", &delete, key, body.clone()).await;
        let problem = api.problem(&reply, 422, "validation-failed");
        assert!(
            Checked::pointers(&problem).iter().any(|p| p == pointer),
            "{body}: {problem}"
        );
    }
    let still = c.get(&col(ta, "/notes/vectors/a"), key).await;
    api.ok(&still, 200);

    // Cross-collection: mixed metric or dimension, none, duplicates, too many.
    for (names, pointer) in [
        (json!(["notes", "euclid"]), "/collections/1"),
        (json!(["notes", "wide"]), "/collections/1"),
        (json!([]), "/collections"),
        (json!(["notes", "notes"]), "/collections/1"),
    ] {
        let reply = c
            .json(
                "POST",
                &across(ta),
                key,
                json!({"collections": names, "vector": [1, 0, 0]}),
            )
            .await;
        let problem = api.problem(&reply, 422, "validation-failed");
        assert!(
            Checked::pointers(&problem).iter().any(|p| p == pointer),
            "{names}: {problem}"
        );
    }
    let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    let reply = c
        .json(
            "POST",
            &across(ta),
            key,
            json!({"collections": many, "vector": [1, 0, 0]}),
        )
        .await;
    api.problem(&reply, 422, "validation-failed");
    let reply = raw(
        "POST",
        across(ta),
        r#"{"collections": ["notes", "other"], "vector": [1, Infinity, 0]}"#,
    )
    .await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/vector/1"], "{body}");

    // A collection's vector configuration is fixed: 422 at /vector, for a
    // collection with vectors and one without alike.
    for name in ["notes", "wide"] {
        let reply = c
            .json(
                "PATCH",
                &col(ta, &format!("/{name}")),
                key,
                json!({"vector": {"dimension": 8, "metric": "l2"}}),
            )
            .await;
        let body = api.problem(&reply, 422, "validation-failed");
        assert_eq!(Checked::pointers(&body), ["/vector"], "{body}");
        let got = c.get(&col(ta, &format!("/{name}")), key).await;
        assert_eq!(api.ok(&got, 200)["version"], 1, "{name} unchanged");
    }

    // 400: syntax, nesting, unknown fields' syntax, hostile names.
    for text in [
        r#"{"vectors": [{"id": "a", "vector": [1, 0, 0]}"#,
        r#"{"vectors": [{"id": "a", "vector": [1, 0, 0]}]} trailing"#,
        "NaNa",
        "",
    ] {
        let reply = raw("POST", vectors.clone(), text).await;
        api.problem(&reply, 400, "invalid-json");
    }
    let deep = format!(
        r#"{{"vector": [1, 0, 0], "filter": {}1{}}}"#,
        r#"{"a": "#.repeat(200),
        "}".repeat(200)
    );
    let reply = c
        .send(
            "POST",
            &search,
            Some(key),
            Body::Raw(Some("application/json"), deep.into_bytes()),
            &[],
        )
        .await;
    api.problem(&reply, 400, "invalid-json");
    for name in [
        "bad;name",
        "x'%20OR%201=1--",
        "%C3%A9t%C3%A9",
        &"n".repeat(129),
    ] {
        for (method, path, body) in [
            (
                "POST",
                col(ta, &format!("/{name}/vectors")),
                json!({"vectors": [{"id": "a", "vector": [1, 0, 0]}]}),
            ),
            ("GET", col(ta, &format!("/{name}/vectors/a")), Value::Null),
            (
                "POST",
                col(ta, &format!("/{name}/search")),
                json!({"vector": [1, 0, 0]}),
            ),
        ] {
            let body = if body.is_null() {
                Body::None
            } else {
                Body::Json(body)
            };
            let reply = c.send(method, &path, Some(key), body, &[]).await;
            api.problem(&reply, 400, "invalid-parameter");
        }
    }
    let reply = c
        .json(
            "POST",
            &across(ta),
            key,
            json!({"collections": ["notes", "x' OR '1'='1"], "vector": [1, 0, 0]}),
        )
        .await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/collections/1"], "{body}");

    // 409: a collection without vector configuration.
    for (path, body) in [
        (
            col(ta, "/plain/vectors"),
            json!({"vectors": [{"id": "a", "vector": [1, 0, 0]}]}),
        ),
        (col(ta, "/plain/search"), json!({"vector": [1, 0, 0]})),
        (
            across(ta),
            json!({"collections": ["notes", "plain"], "vector": [1, 0, 0]}),
        ),
    ] {
        let reply = c.json("POST", &path, key, body).await;
        api.problem(&reply, 409, "conflict");
    }
    let reply = c.get(&col(ta, "/plain/vectors/a"), key).await;
    api.problem(&reply, 409, "conflict");
}

/// 405 with `Allow`, 406, 413, 415, and unknown routes: as problems.
async fn protocol(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    for (method, path, allowed) in [
        ("GET", col(ta, "/notes/vectors"), vec!["POST", "PUT"]),
        ("DELETE", col(ta, "/notes/vectors"), vec!["POST", "PUT"]),
        ("PUT", col(ta, "/notes/vectors/a"), vec!["GET", "DELETE"]),
        ("PATCH", col(ta, "/notes/vectors/a"), vec!["GET", "DELETE"]),
        ("DELETE", col(ta, "/notes/vectors/delete"), vec!["POST"]),
        ("GET", col(ta, "/notes/search"), vec!["POST"]),
        ("GET", across(ta), vec!["POST"]),
        ("PUT", across(ta), vec!["POST"]),
    ] {
        let reply = c.send(method, &path, Some(key), Body::None, &[]).await;
        api.problem(&reply, 405, "method-not-allowed");
        let allow = reply.header("allow").expect("Allow").to_string();
        for m in allowed {
            assert!(allow.contains(m), "{method} {path}: Allow {allow}");
        }
        assert!(!allow.contains(method), "{allow}");
    }

    for accept in ["text/html", "application/json;q=0", "image/*, text/plain"] {
        let reply = c
            .send(
                "GET",
                &col(ta, "/notes/vectors/a"),
                Some(key),
                Body::None,
                &[("accept", accept)],
            )
            .await;
        api.problem(&reply, 406, "not-acceptable");
        for (path, body) in [
            (col(ta, "/notes/search"), json!({"vector": [1, 0, 0]})),
            (
                across(ta),
                json!({"collections": ["notes"], "vector": [1, 0, 0]}),
            ),
            (
                col(ta, "/notes/vectors"),
                json!({"vectors": [{"id": "z", "vector": [1, 0, 0]}]}),
            ),
        ] {
            let reply = c
                .send(
                    "POST",
                    &path,
                    Some(key),
                    Body::Json(body),
                    &[("accept", accept)],
                )
                .await;
            api.problem(&reply, 406, "not-acceptable");
        }
    }
    // The refused upsert did no work.
    let reply = c.get(&col(ta, "/notes/vectors/z"), key).await;
    api.problem(&reply, 404, "not-found");
    for accept in ["application/json", "*/*", "application/problem+json"] {
        let reply = c
            .send(
                "GET",
                &col(ta, "/notes/vectors/a"),
                Some(key),
                Body::None,
                &[("accept", accept)],
            )
            .await;
        assert_eq!(reply.status, 200, "{accept}: {}", reply.text);
    }
    // Other API routes answer 406 too (the layer is the API router's).
    for path in [
        col(ta, ""),
        format!("/v1/tenants/{ta}/keys"),
        "/v1/openapi.json".to_string(),
    ] {
        let reply = c
            .send(
                "GET",
                &path,
                Some(key),
                Body::None,
                &[("accept", "text/html")],
            )
            .await;
        api.problem(&reply, 406, "not-acceptable");
    }
    // ...but not unknown paths (404) nor the docs page and probes.
    let reply = c
        .send(
            "GET",
            &format!("/v1/tenants/{ta}/nowhere"),
            Some(key),
            Body::None,
            &[("accept", "text/html")],
        )
        .await;
    api.problem(&reply, 404, "not-found");
    for path in ["/docs", "/healthz"] {
        let reply = c
            .send("GET", path, None, Body::None, &[("accept", "text/html")])
            .await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    }

    // 413: past the server's body limit.
    let vector: Vec<f64> = vec![0.5; 3];
    let items: Vec<Value> = (0..20_000)
        .map(|i| json!({"id": format!("big-{i}"), "vector": vector, "metadata": {"pad": "x".repeat(40)}}))
        .collect();
    let huge = json!({"vectors": items}).to_string();
    assert!(huge.len() > MAX_BODY);
    for path in [col(ta, "/notes/vectors"), col(ta, "/notes/search")] {
        let reply = c
            .send(
                "POST",
                &path,
                Some(key),
                Body::Raw(Some("application/json"), huge.clone().into_bytes()),
                &[],
            )
            .await;
        api.problem(&reply, 413, "payload-too-large");
    }
    // Under the body limit, over the batch's count: 422 at /vectors.
    let items: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("n{i}"), "vector": [1, 0, 0]}))
        .collect();
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/vectors"),
            key,
            json!({"vectors": items}),
        )
        .await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert!(
        Checked::pointers(&body).contains(&"/vectors".to_string()),
        "{body}"
    );

    // 415: not JSON, or no content type.
    for (path, content_type) in [
        (col(ta, "/notes/vectors"), Some("text/plain")),
        (col(ta, "/notes/vectors"), None),
        (
            col(ta, "/notes/search"),
            Some("application/x-www-form-urlencoded"),
        ),
        (col(ta, "/notes/vectors/delete"), Some("text/plain")),
        (across(ta), None),
    ] {
        let reply = c
            .send(
                "POST",
                &path,
                Some(key),
                Body::Raw(content_type, br#"{"vector": [1, 0, 0]}"#.to_vec()),
                &[],
            )
            .await;
        api.problem(&reply, 415, "unsupported-media-type");
    }
}

/// A viewer reads and searches; every write is 403 and changes nothing.
async fn viewer_cannot_write(api: &Checked, ta: &str, owner: &str, viewer: &str) {
    let c = &api.client;
    let before = c.get(&col(ta, "/notes/vectors/a"), viewer).await;
    let before = api.ok(&before, 200);
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/search"),
            viewer,
            json!({"vector": [1, 0, 0]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c
        .json(
            "POST",
            &across(ta),
            viewer,
            json!({"collections": ["notes", "other"], "vector": [1, 0, 0]}),
        )
        .await;
    api.ok(&reply, 200);
    for (method, path, body) in [
        (
            "POST",
            col(ta, "/notes/vectors"),
            json!({"vectors": [{"id": "a", "vector": [0, 1, 0]}]}),
        ),
        (
            "PUT",
            col(ta, "/notes/vectors"),
            json!({"vectors": [{"id": "v", "vector": [0, 1, 0]}]}),
        ),
        ("DELETE", col(ta, "/notes/vectors/a"), Value::Null),
        (
            "POST",
            col(ta, "/notes/vectors/delete"),
            json!({"ids": ["a"]}),
        ),
        (
            "POST",
            col(ta, "/notes/vectors/delete"),
            json!({"filter": {"kind": "howto"}}),
        ),
        // Refused before the body is read: even an invalid one.
        (
            "POST",
            col(ta, "/notes/vectors"),
            json!({"vectors": [{"id": "a", "vector": [1]}]}),
        ),
    ] {
        let body = if body.is_null() {
            Body::None
        } else {
            Body::Json(body)
        };
        let reply = c.send(method, &path, Some(viewer), body, &[]).await;
        api.problem(&reply, 403, "forbidden");
    }
    let after = c.get(&col(ta, "/notes/vectors/a"), owner).await;
    assert_eq!(api.ok(&after, 200), before);
    let reply = c.get(&col(ta, "/notes/vectors/v"), owner).await;
    api.problem(&reply, 404, "not-found");
}

/// Tenant A's key on tenant B's collections and vector ids: 404 with the
/// same body as a collection or vector that exists nowhere; B's data is
/// untouched and never appears.
async fn isolation(api: &Checked, ta: &str, tb: &str, a_key: &str, b_key: &str) {
    let c = &api.client;
    let made = c
        .json(
            "POST",
            &col(tb, ""),
            b_key,
            json!({"name": "secret-v", "vector": {"dimension": 3, "metric": "cosine"}}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let reply = c
        .json(
            "POST",
            &col(tb, "/secret-v/vectors"),
            b_key,
            json!({"vectors": [{"id": "b-only", "vector": [1, 0, 0], "metadata": {"pin": 4321}}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let nothing = c.get(&col(ta, "/nothing-here/vectors/none"), a_key).await;
    let reference = without_instance(api.problem(&nothing, 404, "not-found"));
    let upsert = json!({"vectors": [{"id": "b-only", "vector": [0, 1, 0]}]});
    let search = json!({"vector": [1, 0, 0], "include": ["metadata", "vector"]});
    let probes: Vec<(&str, String, Value)> = vec![
        // B's path with A's key.
        ("POST", col(tb, "/secret-v/vectors"), upsert.clone()),
        ("PUT", col(tb, "/secret-v/vectors"), upsert.clone()),
        ("GET", col(tb, "/secret-v/vectors/b-only"), Value::Null),
        ("DELETE", col(tb, "/secret-v/vectors/b-only"), Value::Null),
        (
            "POST",
            col(tb, "/secret-v/vectors/delete"),
            json!({"ids": ["b-only"]}),
        ),
        (
            "POST",
            col(tb, "/secret-v/vectors/delete"),
            json!({"filter": {"pin": 4321}}),
        ),
        ("POST", col(tb, "/secret-v/search"), search.clone()),
        (
            "POST",
            across(tb),
            json!({"collections": ["secret-v"], "vector": [1, 0, 0]}),
        ),
        // B's names and ids under A's own path: not A's.
        ("POST", col(ta, "/secret-v/vectors"), upsert.clone()),
        ("GET", col(ta, "/secret-v/vectors/b-only"), Value::Null),
        ("DELETE", col(ta, "/secret-v/vectors/b-only"), Value::Null),
        ("GET", col(ta, "/notes/vectors/b-only"), Value::Null),
        ("DELETE", col(ta, "/notes/vectors/b-only"), Value::Null),
        ("POST", col(ta, "/secret-v/search"), search.clone()),
        (
            "POST",
            col(ta, "/secret-v/vectors/delete"),
            json!({"ids": ["b-only"]}),
        ),
        (
            "POST",
            across(ta),
            json!({"collections": ["notes", "secret-v"], "vector": [1, 0, 0]}),
        ),
    ];
    for (method, path, body) in probes {
        let body = if body.is_null() {
            Body::None
        } else {
            Body::Json(body)
        };
        let reply = c.send(method, &path, Some(a_key), body, &[]).await;
        let problem = api.problem(&reply, 404, "not-found");
        assert_eq!(without_instance(problem), reference, "{method} {path}");
        assert!(
            !reply.text.contains("4321") && !reply.text.contains("secret"),
            "{}",
            reply.text
        );
    }
    // Deleting B's id through A's collection deletes nothing of B's.
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/vectors/delete"),
            a_key,
            json!({"ids": ["b-only"]}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 0}));
    // A's searches show none of B's vectors.
    let reply = c
        .json(
            "POST",
            &col(ta, "/notes/search"),
            a_key,
            json!({"vector": [1, 0, 0], "k": 100, "include": ["metadata"]}),
        )
        .await;
    let body = api.ok(&reply, 200);
    assert!(!body.to_string().contains("b-only") && !body.to_string().contains("4321"));
    // B's vector is untouched.
    let got = c.get(&col(tb, "/secret-v/vectors/b-only"), b_key).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json["version"], 1);
    assert_eq!(got.json["vector"], json!([1.0, 0.0, 0.0]));
}

/// Vector writes leave outbox rows in their transaction: topic, aggregate
/// `<collection id>/<vector id>`, payload the version only.
async fn outbox(api: &Checked, a: &Tenant, key: &str) {
    let c = &api.client;
    let ta = a.name.as_str();
    let got = c.get(&col(ta, "/other"), key).await;
    let other = api.ok(&got, 200)["id"]
        .as_str()
        .expect("collection id")
        .to_string();
    let admin = admin_on(a).await;
    let rows = |admin: sqlx::PgPool, prefix: String| async move {
        let rows: Vec<(String, String, Value)> = sqlx::query_as(
            "SELECT topic, aggregate_id, jsonb_build_object('version', payload -> 'version') FROM outbox \
             WHERE topic LIKE 'vector.%' AND starts_with(aggregate_id, $1) ORDER BY id",
        )
        .bind(prefix)
        .fetch_all(&admin)
        .await
        .expect("outbox");
        rows
    };
    let before = rows(admin.clone(), format!("{other}/")).await;
    assert_eq!(
        before,
        [
            (
                "vector.upserted".to_string(),
                format!("{other}/o1"),
                json!({"version": 1})
            ),
            (
                "vector.upserted".to_string(),
                format!("{other}/o2"),
                json!({"version": 1})
            ),
        ]
    );
    let reply = c
        .json(
            "PUT",
            &col(ta, "/other/vectors"),
            key,
            json!({"vectors": [{"id": "o1", "vector": [1, 0, 0]}]}),
        )
        .await;
    api.ok(&reply, 200);
    let reply = c
        .send(
            "DELETE",
            &col(ta, "/other/vectors/o1"),
            Some(key),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 204);
    let reply = c
        .json(
            "POST",
            &col(ta, "/other/vectors/delete"),
            key,
            json!({"filter": {"kind": "faq"}}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 1}));
    // A delete of nothing, and a refused write, leave no row.
    let reply = c
        .json(
            "POST",
            &col(ta, "/other/vectors/delete"),
            key,
            json!({"ids": ["o1"]}),
        )
        .await;
    assert_eq!(api.ok(&reply, 200), json!({"deleted": 0}));
    let after = rows(admin.clone(), format!("{other}/")).await;
    assert_eq!(
        after[2..],
        [
            (
                "vector.upserted".to_string(),
                format!("{other}/o1"),
                json!({"version": 2})
            ),
            (
                "vector.deleted".to_string(),
                format!("{other}/o1"),
                json!({"version": 2})
            ),
            (
                "vector.deleted".to_string(),
                format!("{other}/o2"),
                json!({"version": 1})
            ),
        ]
    );
    admin.close().await;
}

/// Past the threshold a collection gets its HNSW index (in the
/// background); deleting the collection drops it.
async fn index_dropped_with_collection(api: &Checked, a: &Tenant, key: &str) {
    let c = &api.client;
    let ta = a.name.as_str();
    let made = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "indexed", "vector": {"dimension": 3, "metric": "l2"}}),
        )
        .await;
    let id = api.ok(&made, 201)["id"]
        .as_str()
        .expect("id")
        .replace('-', "");
    let index = format!("embeddings_hnsw_{id}");
    let items: Vec<Value> = (0..INDEX_THRESHOLD)
        .map(|i| json!({"id": format!("i{i}"), "vector": [i as f64, 1.0, (i % 3) as f64]}))
        .collect();
    for batch in items.chunks(1000) {
        let reply = c
            .json(
                "POST",
                &col(ta, "/indexed/vectors"),
                key,
                json!({"vectors": batch}),
            )
            .await;
        api.ok(&reply, 200);
    }
    let admin = admin_on(a).await;
    let exists = |admin: sqlx::PgPool, index: String| async move {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname = $1",
        )
        .bind(index)
        .fetch_one(&admin)
        .await
        .expect("pg_indexes");
        n == 1
    };
    let mut built = false;
    for _ in 0..300 {
        if exists(admin.clone(), index.clone()).await {
            built = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(built, "{index} was not built");
    // Searches still answer while it is there.
    let reply = c
        .json(
            "POST",
            &col(ta, "/indexed/search"),
            key,
            json!({"vector": [3, 1, 0], "k": 1}),
        )
        .await;
    assert_eq!(ids(&api.ok(&reply, 200)), ["i3"]);
    // Wait for the build to finish (the state leaves `building`) so the
    // drop below is not racing it.
    for _ in 0..300 {
        let state: String =
            sqlx::query_scalar("SELECT vector_index FROM collections WHERE name = 'indexed'")
                .fetch_one(&admin)
                .await
                .expect("state");
        if state != "building" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = c
        .send("DELETE", &col(ta, "/indexed"), Some(key), Body::None, &[])
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(
        !exists(admin.clone(), index.clone()).await,
        "{index} outlived its collection"
    );
    for path in [col(ta, "/indexed/vectors/i1"), col(ta, "/indexed")] {
        let reply = c.get(&path, key).await;
        api.problem(&reply, 404, "not-found");
    }
    admin.close().await;
}
