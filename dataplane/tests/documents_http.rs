//! The documents API over HTTP, end to end: the real router and `AppState`
//! served on an ephemeral port, two tenants provisioned by the operator's
//! provisioner, credentials from accepting their invitations, and every
//! route of `/v1/tenants/{t}/collections…` called with reqwest. Every error
//! answer is checked as a problem document (type, title, status, code,
//! `instance` = the `X-Request-Id` header) that leaks neither SQL nor the
//! other tenant. Needs `source .stack/env`.

mod support;

use serde_json::{Value, json};
use support::{Body, Checked, Client, Server, Tenant, app_state, with_tenants, without_instance};

/// Bodies larger than this are refused by the server (413): the default
/// of `--max-body-bytes`.
const MAX_BODY: usize = 10 << 20;

/// Words no body of this API may contain, besides the shared ones.
const EXTRA_LEAKS: &[&str] = &["api_keys"];

fn col(tenant: &str, rest: &str) -> String {
    format!("/v1/tenants/{tenant}/collections{rest}")
}

#[tokio::test]
async fn documents_api_over_http() {
    with_tenants("documents-http", &["dha", "dhb"], scenario).await;
}

async fn scenario(catalog_url: String, catalog: strata_db::Catalog, tenants: Vec<Tenant>) {
    let server = Server::start(app_state(&catalog_url), MAX_BODY).await;
    let client = Client::new(&server.base);
    let (a, b) = (&tenants[0], &tenants[1]);
    let api = Checked::new(client.clone(), b, EXTRA_LEAKS);
    let owner = client.accept_invitation(a).await;
    let b_owner = client.accept_invitation(b).await;
    let viewer = client.new_key(&a.name, &owner, "viewer").await;
    let ta = a.name.as_str();

    credentials(&api, ta).await;
    collections(&api, ta, &owner).await;
    documents(&api, ta, &owner).await;
    strict(&api, ta, &owner).await;
    bulk(&api, ta, &owner).await;
    listing(&api, ta, &owner).await;
    protocol(&api, ta, &owner).await;
    viewer_cannot_write(&api, ta, &owner, &viewer).await;
    isolation(&api, a, b, &owner, &b_owner).await;
    hostile(&api, ta, &owner).await;
    replicas(&api, &catalog_url, ta, &owner).await;
    other_credentials(&api, ta, &b.name, &owner).await;
    delete_collection(&api, ta, &owner).await;
    tenant_states(&api, &catalog, a, &owner).await;
}

/// The tenant's state gates every route: suspended 403, not ready 503
/// with Retry-After (seen once the 200 ms catalog cache expires).
async fn tenant_states(api: &Checked, catalog: &strata_db::Catalog, a: &Tenant, key: &str) {
    use strata_db::TenantState;
    let c = &api.client;
    let path = col(&a.name, "/books/documents");
    for (state, status, code) in [
        (TenantState::Suspended, 403, "forbidden"),
        (TenantState::Provisioning, 503, "unavailable"),
        (TenantState::Failed, 503, "unavailable"),
    ] {
        catalog.set_state(a.id, state).await.expect("state");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        for (method, body) in [
            ("GET", Body::None),
            ("POST", Body::Json(json!({"data": {"title": "t"}}))),
        ] {
            let reply = c.send(method, &path, Some(key), body, &[]).await;
            api.problem(&reply, status, code);
            if status == 503 {
                assert!(reply.header("retry-after").is_some(), "{state:?}");
            }
        }
    }
    catalog
        .set_state(a.id, TenantState::Ready)
        .await
        .expect("ready");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(c.get(&path, key).await.status, 200);
}

/// 401 without a credential or with a malformed one, on every route.
async fn credentials(api: &Checked, ta: &str) {
    let c = &api.client;
    for path in [
        col(ta, ""),
        col(ta, "/books"),
        col(ta, "/books/documents"),
        col(ta, "/books/documents/x"),
    ] {
        let none = c.send("GET", &path, None, Body::None, &[]).await;
        api.problem(&none, 401, "unauthenticated");
        let bad = c
            .send("GET", &path, Some("nonsense"), Body::None, &[])
            .await;
        api.problem(&bad, 401, "unauthenticated");
        let basic = c
            .send(
                "GET",
                &path,
                None,
                Body::None,
                &[("authorization", "Basic YTpi")],
            )
            .await;
        api.problem(&basic, 401, "unauthenticated");
    }
    let write = c
        .send(
            "POST",
            &col(ta, ""),
            None,
            Body::Json(json!({"name": "x"})),
            &[],
        )
        .await;
    api.problem(&write, 401, "unauthenticated");

    // The client's request id is the instance when it is sane; otherwise
    // the server makes one.
    let mine = c
        .send(
            "GET",
            &col(ta, ""),
            None,
            Body::None,
            &[("x-request-id", "client-req-42")],
        )
        .await;
    let body = api.problem(&mine, 401, "unauthenticated");
    assert_eq!(body["instance"], "client-req-42");
    let hostile = "a b <script>";
    let replaced = c
        .send(
            "GET",
            &col(ta, ""),
            None,
            Body::None,
            &[("x-request-id", hostile)],
        )
        .await;
    let body = api.problem(&replaced, 401, "unauthenticated");
    assert_ne!(body["instance"], hostile);
}

async fn collections(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let books = json!({
        "name": "books",
        "schema": {
            "type": "object",
            "required": ["title"],
            "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}
        },
        "indexed_fields": [{"path": "year", "type": "number"}]
    });
    let created = c.json("POST", &col(ta, ""), key, books.clone()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("location"), Some(col(ta, "/books").as_str()));
    assert_eq!(created.json["name"], "books");
    let etag = created.header("etag").expect("etag").to_string();
    // The Location is the collection.
    let got = c.get(&col(ta, "/books"), key).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("etag"), Some(etag.as_str()));
    assert_eq!(got.json["indexed_fields"][0]["path"], "year");
    let cached = c
        .send(
            "GET",
            &col(ta, "/books"),
            Some(key),
            Body::None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(cached.status, 304);
    assert!(cached.text.is_empty());

    // 409, 422 with pointers, 400, 415.
    let again = c.json("POST", &col(ta, ""), key, books).await;
    api.problem(&again, 409, "conflict");
    let bad_name = c
        .json("POST", &col(ta, ""), key, json!({"name": "no spaces!"}))
        .await;
    let body = api.problem(&bad_name, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/name"]);
    let bad_vector = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "v", "vector": {"dimension": 0, "metric": "hamming", "hnsw": {"m": 1}}}),
        )
        .await;
    let body = api.problem(&bad_vector, 422, "validation-failed");
    assert_eq!(
        Checked::pointers(&body),
        ["/vector/dimension", "/vector/metric", "/vector/hnsw/m"]
    );
    let bad_schema = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "s", "schema": {"type": "nonsense"}}),
        )
        .await;
    let body = api.problem(&bad_schema, 422, "validation-failed");
    assert!(
        Checked::pointers(&body)
            .iter()
            .all(|p| p.starts_with("/schema")),
        "{body}"
    );
    let bad_fields = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "f", "indexed_fields": [{"path": "a..b", "type": "number"}]}),
        )
        .await;
    let body = api.problem(&bad_fields, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/indexed_fields/0/path"]);
    let unknown_field = c
        .json("POST", &col(ta, ""), key, json!({"name": "u", "nmae": 1}))
        .await;
    api.problem(&unknown_field, 422, "validation-failed");
    let wrong_type = c.json("POST", &col(ta, ""), key, json!({"name": 5})).await;
    let body = api.problem(&wrong_type, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/name"]);
    let malformed = c
        .send(
            "POST",
            &col(ta, ""),
            Some(key),
            Body::Raw(Some("application/json"), b"{\"name\": ".to_vec()),
            &[],
        )
        .await;
    api.problem(&malformed, 400, "invalid-json");
    let trailing = c
        .send(
            "POST",
            &col(ta, ""),
            Some(key),
            Body::Raw(Some("application/json"), b"{\"name\": \"t\"} x".to_vec()),
            &[],
        )
        .await;
    api.problem(&trailing, 400, "invalid-json");
    // Nested past serde_json's recursion limit, where any JSON is accepted.
    let deep = format!(
        r#"{{"name": "d", "schema": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep = c
        .send(
            "POST",
            &col(ta, ""),
            Some(key),
            Body::Raw(Some("application/json"), deep.into_bytes()),
            &[],
        )
        .await;
    api.problem(&deep, 400, "invalid-json");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let reply = c
            .send(
                "POST",
                &col(ta, ""),
                Some(key),
                Body::Raw(content_type, br#"{"name": "t"}"#.to_vec()),
                &[],
            )
            .await;
        api.problem(&reply, 415, "unsupported-media-type");
    }

    // Update: If-Match (412 when stale), new ETag; 404 for unknown.
    let stale = c
        .send(
            "PATCH",
            &col(ta, "/books"),
            Some(key),
            Body::Json(json!({"require_if_match": false})),
            &[("if-match", "\"v0.0\"")],
        )
        .await;
    api.problem(&stale, 412, "precondition-failed");
    let updated = c
        .send(
            "PATCH",
            &col(ta, "/books"),
            Some(key),
            Body::Json(json!({"require_if_match": false})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_ne!(updated.header("etag"), Some(etag.as_str()));
    assert_eq!(updated.json["version"], 2);
    let bad_update = c
        .json(
            "PATCH",
            &col(ta, "/books"),
            key,
            json!({"indexed_fields": [{"path": "year", "type": "decimal"}]}),
        )
        .await;
    let body = api.problem(&bad_update, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/indexed_fields"]);
    for (method, body) in [
        ("GET", Body::None),
        ("PATCH", Body::Json(json!({}))),
        ("DELETE", Body::None),
    ] {
        let reply = c
            .send(method, &col(ta, "/nope"), Some(key), body, &[])
            .await;
        api.problem(&reply, 404, "not-found");
    }
    // A name that cannot exist is a 404 too, not a 400 echoing it.
    let weird = c.get(&col(ta, "/%27%3B%20DROP%20TABLE%20x"), key).await;
    api.problem(&weird, 404, "not-found");

    // The list: signed cursor, Link to the end, same as documents.
    for i in 0..5 {
        let reply = c
            .json("POST", &col(ta, ""), key, json!({"name": format!("c-{i}")}))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let mut names = Vec::new();
    let mut next = Some(col(ta, "?limit=2"));
    let mut pages = 0;
    while let Some(path) = next.take() {
        let page = c.get(&path, key).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        for item in page.json["items"].as_array().expect("items") {
            names.push(item["name"].as_str().expect("name").to_string());
        }
        next = page.next_link();
        match &next {
            Some(link) => {
                let cursor = page.json["next_cursor"].as_str().expect("cursor");
                assert!(link.ends_with(&format!("cursor={cursor}")), "{link}");
                assert!(link.contains("limit=2"), "{link}");
            }
            None => assert!(page.json["next_cursor"].is_null()),
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["books", "c-0", "c-1", "c-2", "c-3", "c-4"]);
    // An old-style name is not a cursor.
    let bad = c.get(&col(ta, "?cursor=c-1"), key).await;
    api.problem(&bad, 400, "invalid-cursor");
    for query in ["?limit=0", "?limit=501", "?limit=ten"] {
        let bad = c.get(&col(ta, query), key).await;
        api.problem(&bad, 400, "invalid-parameter");
    }
}

async fn documents(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let docs = col(ta, "/books/documents");
    let dune = json!({"title": "Dune", "year": 1965});
    let created = c
        .json("POST", &docs, key, json!({"id": "dune", "data": dune}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let location = created.header("location").expect("location").to_string();
    assert_eq!(location, format!("{docs}/dune"));
    let etag = created.header("etag").expect("etag").to_string();
    let got = c.get(&location, key).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert!(got.header("x-request-id").is_some());
    assert_eq!(got.json["data"], dune);
    assert_eq!(got.json["id"], "dune");
    assert_eq!(got.header("etag"), Some(etag.as_str()));
    let cached = c
        .send(
            "GET",
            &location,
            Some(key),
            Body::None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("etag"), Some(etag.as_str()));

    // Server-chosen id: the Location names it.
    let anon = c
        .json("POST", &docs, key, json!({"data": {"title": "Anon"}}))
        .await;
    assert_eq!(anon.status, 201, "{}", anon.text);
    let id = anon.json["id"].as_str().expect("id");
    assert_eq!(
        anon.header("location"),
        Some(format!("{docs}/{id}").as_str())
    );

    // 409 / 412 on an existing id; 422 with pointers; 400 for a bad id.
    let dup = c
        .json("POST", &docs, key, json!({"id": "dune", "data": dune}))
        .await;
    api.problem(&dup, 409, "conflict");
    let create_only = c
        .send(
            "POST",
            &docs,
            Some(key),
            Body::Json(json!({"id": "dune", "data": dune})),
            &[("if-none-match", "*")],
        )
        .await;
    api.problem(&create_only, 412, "precondition-failed");
    let invalid = c
        .json(
            "POST",
            &docs,
            key,
            json!({"id": "x", "data": {"year": "old"}}),
        )
        .await;
    let body = api.problem(&invalid, 422, "validation-failed");
    let pointers = Checked::pointers(&body);
    assert!(pointers.contains(&"/data/year".to_string()), "{body}");
    assert!(pointers.contains(&"/data".to_string()), "{body}");
    let not_object = c.json("POST", &docs, key, json!({"data": [1]})).await;
    let body = api.problem(&not_object, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/data"]);
    let bad_id = c
        .json(
            "POST",
            &docs,
            key,
            json!({"id": "../etc'; --", "data": {"title": "t"}}),
        )
        .await;
    let body = api.problem(&bad_id, 400, "invalid-parameter");
    assert_eq!(Checked::pointers(&body), ["/id"]);
    let missing_data = c.json("POST", &docs, key, json!({"id": "m"})).await;
    api.problem(&missing_data, 422, "validation-failed");

    // PUT: create (201 + Location), replace (200), preconditions.
    let emma = format!("{docs}/emma");
    let put = c
        .json("PUT", &emma, key, json!({"title": "Emma", "year": 1815}))
        .await;
    assert_eq!(put.status, 201, "{}", put.text);
    assert_eq!(put.header("location"), Some(emma.as_str()));
    let v1 = put.header("etag").expect("etag").to_string();
    let put = c
        .json("PUT", &emma, key, json!({"title": "Emma", "year": 1816}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert!(
        put.header("location").is_none(),
        "a replace creates nothing"
    );
    assert_eq!(put.json["version"], 2);
    let v2 = put.header("etag").expect("etag").to_string();
    assert_ne!(v1, v2);
    let only_create = c
        .send(
            "PUT",
            &emma,
            Some(key),
            Body::Json(json!({"title": "E"})),
            &[("if-none-match", "*")],
        )
        .await;
    api.problem(&only_create, 412, "precondition-failed");
    let stale = c
        .send(
            "PUT",
            &emma,
            Some(key),
            Body::Json(json!({"title": "E"})),
            &[("if-match", &v1)],
        )
        .await;
    api.problem(&stale, 412, "precondition-failed");
    let put = c
        .send(
            "PUT",
            &emma,
            Some(key),
            Body::Json(json!({"title": "Emma", "year": 1815})),
            &[("if-match", &v2)],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let v3 = put.header("etag").expect("etag").to_string();
    let invalid = c.json("PUT", &emma, key, json!({"year": 1})).await;
    let body = api.problem(&invalid, 422, "validation-failed");
    assert!(!Checked::pointers(&body).is_empty(), "{body}");
    let bad_header = c
        .send(
            "PUT",
            &emma,
            Some(key),
            Body::Json(json!({"title": "E"})),
            &[("if-match", "not-an-etag")],
        )
        .await;
    api.problem(&bad_header, 400, "invalid-header");
    let bad_put_id = c
        .json(
            "PUT",
            &format!("{docs}/bad%20id"),
            key,
            json!({"title": "t"}),
        )
        .await;
    api.problem(&bad_put_id, 400, "invalid-parameter");

    // PATCH: RFC 7396 merge, schema re-checked, preconditions, 404.
    let patched = c
        .send(
            "PATCH",
            &emma,
            Some(key),
            Body::Raw(
                Some("application/merge-patch+json"),
                br#"{"year": null, "tags": ["classic"], "meta": {"a": {"b": 1}}}"#.to_vec(),
            ),
            &[("if-match", &v3)],
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(
        patched.json["data"],
        json!({"title": "Emma", "tags": ["classic"], "meta": {"a": {"b": 1}}})
    );
    let v4 = patched.header("etag").expect("etag").to_string();
    let patched = c
        .json(
            "PATCH",
            &emma,
            key,
            json!({"meta": {"a": {"b": null, "c": 2}}}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json["data"]["meta"], json!({"a": {"c": 2}}));
    let stale = c
        .send(
            "PATCH",
            &emma,
            Some(key),
            Body::Json(json!({"x": 1})),
            &[("if-match", &v4)],
        )
        .await;
    api.problem(&stale, 412, "precondition-failed");
    let breaks_schema = c.json("PATCH", &emma, key, json!({"title": null})).await;
    let body = api.problem(&breaks_schema, 422, "validation-failed");
    assert!(!Checked::pointers(&body).is_empty(), "{body}");
    let ghost = c
        .json("PATCH", &format!("{docs}/ghost"), key, json!({"a": 1}))
        .await;
    api.problem(&ghost, 404, "not-found");

    // DELETE: preconditions, 204, then 404.
    let stale = c
        .send("DELETE", &emma, Some(key), Body::None, &[("if-match", &v1)])
        .await;
    api.problem(&stale, 412, "precondition-failed");
    let deleted = c.send("DELETE", &emma, Some(key), Body::None, &[]).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert!(deleted.text.is_empty());
    for method in ["GET", "DELETE"] {
        let gone = c.send(method, &emma, Some(key), Body::None, &[]).await;
        api.problem(&gone, 404, "not-found");
    }
    // Re-created: the old ETag does not match the new document.
    let put = c.json("PUT", &emma, key, json!({"title": "Emma"})).await;
    assert_eq!(put.status, 201);
    let stale = c
        .send("DELETE", &emma, Some(key), Body::None, &[("if-match", &v1)])
        .await;
    api.problem(&stale, 412, "precondition-failed");

    // Unknown collection, unknown document, ids that cannot exist.
    for path in [
        col(ta, "/nope/documents/dune"),
        col(ta, "/nope/documents"),
        format!("{docs}/nothing"),
        format!("{docs}/..%2F..%2Fkeys"),
        format!("{docs}/%27%20OR%201%3D1"),
    ] {
        let reply = c.get(&path, key).await;
        api.problem(&reply, 404, "not-found");
    }
    let nope = c
        .json(
            "POST",
            &col(ta, "/nope/documents"),
            key,
            json!({"data": {}}),
        )
        .await;
    api.problem(&nope, 404, "not-found");
}

/// A collection with `require_if_match`: writes without a validator 428.
async fn strict(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let created = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "strict", "require_if_match": true}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let col_etag = created.header("etag").expect("etag").to_string();
    let doc = col(ta, "/strict/documents/one");
    // Creating needs If-None-Match: *.
    let put = c.json("PUT", &doc, key, json!({"n": 1})).await;
    api.problem(&put, 428, "precondition-required");
    let put = c
        .send(
            "PUT",
            &doc,
            Some(key),
            Body::Json(json!({"n": 1})),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.text);
    assert_eq!(put.header("location"), Some(doc.as_str()));
    let etag = put.header("etag").expect("etag").to_string();
    for (method, body) in [
        ("PUT", Body::Json(json!({"n": 2}))),
        ("PATCH", Body::Json(json!({"n": 2}))),
        ("DELETE", Body::None),
    ] {
        let reply = c.send(method, &doc, Some(key), body, &[]).await;
        api.problem(&reply, 428, "precondition-required");
    }
    // Bulk operations carry no validators: only create is allowed here.
    let bulk = col(ta, "/strict/bulk");
    for op in [
        json!({"op": "upsert", "id": "one", "data": {"n": 9}}),
        json!({"op": "delete", "id": "one"}),
    ] {
        let reply = c
            .json(
                "POST",
                &bulk,
                key,
                json!({"operations": [{"op": "create", "id": "two", "data": {}}, op]}),
            )
            .await;
        api.problem(&reply, 428, "precondition-required");
    }
    let reply = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [{"op": "create", "id": "two", "data": {}}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [{"op": "create", "id": "one", "data": {}}]}),
        )
        .await;
    api.problem(&reply, 409, "conflict");
    let patched = c
        .send(
            "PATCH",
            &doc,
            Some(key),
            Body::Json(json!({"n": 2})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let etag = patched.header("etag").expect("etag").to_string();
    let deleted = c
        .send(
            "DELETE",
            &doc,
            Some(key),
            Body::None,
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    // The collection itself.
    let patch = c
        .json("PATCH", &col(ta, "/strict"), key, json!({"schema": null}))
        .await;
    api.problem(&patch, 428, "precondition-required");
    let delete = c
        .send("DELETE", &col(ta, "/strict"), Some(key), Body::None, &[])
        .await;
    api.problem(&delete, 428, "precondition-required");
    let delete = c
        .send(
            "DELETE",
            &col(ta, "/strict"),
            Some(key),
            Body::None,
            &[("if-match", &col_etag)],
        )
        .await;
    assert_eq!(delete.status, 204, "{}", delete.text);
    let gone = c.get(&col(ta, "/strict"), key).await;
    api.problem(&gone, 404, "not-found");
}

async fn bulk(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let bulk = col(ta, "/books/bulk");
    let ok = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [
                {"op": "create", "id": "b1", "data": {"title": "B1"}},
                {"op": "create", "data": {"title": "B2"}},
                {"op": "upsert", "id": "dune", "data": {"title": "Dune", "year": 1966}},
                {"op": "upsert", "id": "b3", "data": {"title": "B3"}},
                {"op": "delete", "id": "b1"}
            ]}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let statuses: Vec<u64> = ok.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [201, 201, 200, 201, 204]);
    let dune = c.get(&col(ta, "/books/documents/dune"), key).await;
    assert_eq!(dune.json["data"]["year"], 1966);

    // All or nothing: the failing operation is named, nothing is written.
    let conflict = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [
                {"op": "create", "id": "b4", "data": {"title": "B4"}},
                {"op": "create", "id": "b3", "data": {"title": "again"}}
            ]}),
        )
        .await;
    let body = api.problem(&conflict, 409, "conflict");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("operation 1"))
    );
    let b4 = c.get(&col(ta, "/books/documents/b4"), key).await;
    api.problem(&b4, 404, "not-found");
    let invalid = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [
                {"op": "create", "id": "b5", "data": {"title": "B5"}},
                {"op": "upsert", "id": "b6", "data": {"title": "B6", "year": "x"}}
            ]}),
        )
        .await;
    let body = api.problem(&invalid, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/operations/1/data/year"]);
    let missing = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [{"op": "delete", "id": "never"}]}),
        )
        .await;
    api.problem(&missing, 404, "not-found");
    let bad_id = c
        .json(
            "POST",
            &bulk,
            key,
            json!({"operations": [{"op": "delete", "id": "a b"}]}),
        )
        .await;
    let body = api.problem(&bad_id, 400, "invalid-parameter");
    assert_eq!(Checked::pointers(&body), ["/operations/0/id"]);
    for bad in [
        json!({"operations": []}),
        json!({"operations": [{"op": "explode", "id": "x"}]}),
        json!({"operations": [{"op": "create"}]}),
        json!({"ops": []}),
    ] {
        let reply = c.json("POST", &bulk, key, bad.clone()).await;
        api.problem(&reply, 422, "validation-failed");
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "delete", "id": format!("d{i}")}))
        .collect();
    let reply = c
        .json("POST", &bulk, key, json!({"operations": too_many}))
        .await;
    let body = api.problem(&reply, 422, "validation-failed");
    assert_eq!(Checked::pointers(&body), ["/operations"]);
    let nope = c
        .json(
            "POST",
            &col(ta, "/nope/bulk"),
            key,
            json!({"operations": [{"op": "delete", "id": "x"}]}),
        )
        .await;
    api.problem(&nope, 404, "not-found");
}

/// Follows `Link: rel="next"` from `first` to the end; the ids in order,
/// the pages, and the `total` of the first page.
async fn follow(api: &Checked, key: &str, first: &str) -> (Vec<String>, usize, Value) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut total = Value::Null;
    let mut next = Some(first.to_string());
    while let Some(path) = next.take() {
        let page = api.client.get(&path, key).await;
        assert_eq!(page.status, 200, "{path}: {}", page.text);
        if pages == 0 {
            total = page.json["total"].clone();
        }
        pages += 1;
        for item in page.json["items"].as_array().expect("items") {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        next = page.next_link();
        assert_eq!(next.is_some(), page.json["next_cursor"].is_string());
        assert!(pages < 100, "no end");
    }
    (ids, pages, total)
}

async fn listing(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let created = c
        .json(
            "POST",
            &col(ta, ""),
            key,
            json!({"name": "shelf", "indexed_fields": [{"path": "year", "type": "number"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let operations: Vec<Value> = (0..25)
        .map(|i| {
            json!({"op": "create", "id": format!("n{i:02}"), "data": {
                "title": format!("T{i}"),
                "year": 1900 + i,
                "genre": if i % 2 == 0 { "even" } else { "odd" },
                "tags": if i % 5 == 0 { json!(["five"]) } else { json!([]) },
            }})
        })
        .collect();
    let bulk = c
        .json(
            "POST",
            &col(ta, "/shelf/bulk"),
            key,
            json!({"operations": operations}),
        )
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text);
    let docs = col(ta, "/shelf/documents");
    let n = |is: &[usize]| -> Vec<String> { is.iter().map(|i| format!("n{i:02}")).collect() };

    // Everything, by id, default page size: one page.
    let (ids, pages, total) = follow(api, key, &docs).await;
    assert_eq!((ids.len(), pages), (25, 1));
    assert_eq!(ids, n(&(0..25).collect::<Vec<_>>()));
    assert!(total.is_null(), "no total unless asked");

    // Query-string filter, sort, limit, count; Link followed to the end.
    let (ids, pages, total) = follow(
        api,
        key,
        &format!("{docs}?filter[genre]=even&sort=-year&limit=4&count=true"),
    )
    .await;
    assert_eq!(total, 13);
    assert_eq!(pages, 4);
    assert_eq!(
        ids,
        n(&(0..25).rev().filter(|i| i % 2 == 0).collect::<Vec<_>>())
    );
    let (ids, _, total) = follow(
        api,
        key,
        &format!("{docs}?filter%5Byear%5D%5Bgte%5D=1910&filter[year][lt]=1915&limit=2&count=true"),
    )
    .await;
    assert_eq!(total, 5);
    assert_eq!(ids, n(&[10, 11, 12, 13, 14]));
    let (ids, _, _) = follow(
        api,
        key,
        &format!("{docs}?filter[tags][contains]=%22five%22&filter[title][prefix]=T1&sort=title"),
    )
    .await;
    assert_eq!(ids, n(&[10, 15]));
    let (ids, _, _) = follow(
        api,
        key,
        &format!("{docs}?filter[year][in]=[1901,1903,1999]&sort=genre,-year&limit=1"),
    )
    .await;
    assert_eq!(ids, n(&[3, 1]));
    // Injection in a value is just a value; prefix is not a LIKE pattern.
    for hostile in [
        "filter[title]=x%27%20OR%201%3D1%20--",
        "filter[title][prefix]=%25",
        "filter[title][prefix]=T_",
        "filter[title][prefix]=%5C",
    ] {
        let (ids, _, _) = follow(api, key, &format!("{docs}?{hostile}")).await;
        assert!(ids.is_empty(), "{hostile}: {ids:?}");
    }
    let count = c.get(&format!("{docs}?count=true&limit=1"), key).await;
    assert_eq!(count.json["total"], 25);
    assert_eq!(count.json["items"].as_array().map(Vec::len), Some(1));

    // Sort values of any size page to the end (the cursor carries them).
    for (i, size) in [3000usize, 50_000, 10, 20_000].iter().enumerate() {
        let reply = c
            .json(
                "PUT",
                &col(ta, &format!("/shelf/documents/long{i}")),
                key,
                json!({"long": format!("{i}{}", "x".repeat(*size)), "obj": {"v": "y".repeat(*size)}}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    for sort in ["long", "-long", "obj,long"] {
        let (ids, pages, _) = follow(
            api,
            key,
            &format!("{docs}?filter[long][exists]=true&sort={sort}&limit=1"),
        )
        .await;
        assert_eq!(pages, 4, "{sort}");
        let mut want = vec!["long0", "long1", "long2", "long3"];
        if sort == "-long" {
            want.reverse();
        }
        if sort == "obj,long" {
            want = vec!["long2", "long0", "long3", "long1"];
        }
        assert_eq!(ids, want, "{sort}");
    }
    // Such a cursor names its row: deleted since, the cursor is refused.
    let first = c
        .get(
            &format!("{docs}?filter[long][exists]=true&sort=long&limit=1"),
            key,
        )
        .await;
    let next = first.next_link().expect("next");
    assert!(next.len() < 400, "short cursor: {next}");
    let deleted = c
        .send(
            "DELETE",
            &format!("{docs}/long0"),
            Some(key),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    let reply = c.get(&next, key).await;
    api.problem(&reply, 400, "invalid-cursor");
    let bulk = c
        .json(
            "POST",
            &col(ta, "/shelf/bulk"),
            key,
            json!({"operations": (1..4).map(|i| json!({"op": "delete", "id": format!("long{i}")})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text);

    // POST …/query with a JSON filter; pages through next_cursor.
    let query = col(ta, "/shelf/query");
    let filter = json!({"or": [
        {"year": {"lt": 1903}},
        {"title": {"in": ["T20", "T21"]}},
        {"and": [{"genre": "odd"}, {"not": {"year": {"lte": 1922}}}]}
    ]});
    let mut ids = Vec::new();
    let mut cursor = Value::Null;
    let mut totals = Vec::new();
    loop {
        let page = c
            .json(
                "POST",
                &query,
                key,
                json!({"filter": filter, "sort": ["-year"], "limit": 2, "count": true, "cursor": cursor}),
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert!(page.next_link().is_none(), "no Link to GET a POST query");
        totals.push(page.json["total"].clone());
        for item in page.json["items"].as_array().expect("items") {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        cursor = page.json["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(ids, n(&[23, 21, 20, 2, 1, 0]));
    assert!(totals.iter().all(|t| *t == 6), "{totals:?}");

    // A cursor belongs to its query.
    let first = c
        .get(&format!("{docs}?filter[genre]=even&limit=2"), key)
        .await;
    let cursor = first.json["next_cursor"].as_str().expect("cursor");
    for other in [
        format!("{docs}?filter[genre]=odd&limit=2&cursor={cursor}"),
        format!("{docs}?filter[genre]=even&sort=-year&cursor={cursor}"),
        format!("{docs}?cursor={cursor}"),
        col(
            ta,
            &format!("/books/documents?filter[genre]=even&cursor={cursor}"),
        ),
        col(ta, &format!("?cursor={cursor}")),
        format!("{docs}?cursor=garbage"),
        format!("{docs}?cursor={}", "A".repeat(3000)),
    ] {
        let reply = c.get(&other, key).await;
        api.problem(&reply, 400, "invalid-cursor");
    }
    let reply = c.json("POST", &query, key, json!({"cursor": cursor})).await;
    api.problem(&reply, 400, "invalid-cursor");
    // The same cursor still works with its own query, at another page size.
    let reply = c
        .get(
            &format!("{docs}?filter[genre]=even&limit=3&cursor={cursor}"),
            key,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // Bad filters, sorts and parameters: 400, never 500.
    for bad in [
        "?filter[year][regex]=x",
        "?filter[a..b]=1",
        "?filter[year][in]=1",
        "?filter[year]=1&filter[year][gte]=2&unknown=1",
        "?filter=1",
        "?sort=a..b",
        "?sort=title;DROP%20TABLE%20documents",
        "?sort=a,b,c,d,e",
        "?limit=0",
        "?limit=1001",
        "?limit=-1",
        "?count=maybe",
        "?select=id",
    ] {
        let reply = c.get(&format!("{docs}{bad}"), key).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        let code = reply.json["code"].as_str().unwrap_or("").to_string();
        assert!(
            ["invalid-parameter", "bad-request"].contains(&code.as_str()),
            "{bad}: {code}"
        );
        api.problem(&reply, 400, &code);
    }
    for bad in [
        json!({"filter": {"year": {"bogus": 1}}}),
        json!({"filter": "year = 1; DROP TABLE documents"}),
        json!({"filter": {"and": []}}),
        json!({"filter": {"year": {"in": "1900"}}}),
        json!({"filter": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"a": 1}}}}}}}}}}}),
        json!({"filter": {"$where": 1}}),
        json!({"sort": ["x", "-"]}),
    ] {
        let reply = c.json("POST", &query, key, bad.clone()).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        let code = reply.json["code"].as_str().unwrap_or("").to_string();
        api.problem(&reply, 400, &code);
    }
    for bad in [json!({"limit": "ten"}), json!({"filters": {}})] {
        let reply = c.json("POST", &query, key, bad.clone()).await;
        api.problem(&reply, 422, "validation-failed");
    }
    let malformed = c
        .send(
            "POST",
            &query,
            Some(key),
            Body::Raw(Some("application/json"), b"{\"filter\": {".to_vec()),
            &[],
        )
        .await;
    api.problem(&malformed, 400, "invalid-json");
    let unknown = c
        .json("POST", &col(ta, "/nope/query"), key, json!({}))
        .await;
    api.problem(&unknown, 404, "not-found");
}

/// 405 with `Allow`, 406, 413, 415: what the framework answers, as problems.
async fn protocol(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    for (method, path, allowed) in [
        ("DELETE", col(ta, ""), vec!["GET", "POST"]),
        ("PUT", col(ta, "/books"), vec!["GET", "PATCH", "DELETE"]),
        ("PUT", col(ta, "/books/documents"), vec!["GET", "POST"]),
        (
            "POST",
            col(ta, "/books/documents/dune"),
            vec!["GET", "PUT", "PATCH", "DELETE"],
        ),
        ("GET", col(ta, "/books/query"), vec!["POST"]),
        ("GET", col(ta, "/books/bulk"), vec!["POST"]),
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
        for (method, path) in [
            ("GET", col(ta, "")),
            ("GET", col(ta, "/books/documents/dune")),
            ("GET", col(ta, "/books/documents")),
        ] {
            let reply = c
                .send(method, &path, Some(key), Body::None, &[("accept", accept)])
                .await;
            api.problem(&reply, 406, "not-acceptable");
        }
    }
    let post = c
        .send(
            "POST",
            &col(ta, "/books/query"),
            Some(key),
            Body::Json(json!({})),
            &[("accept", "text/csv")],
        )
        .await;
    api.problem(&post, 406, "not-acceptable");
    for accept in [
        "application/json",
        "application/*;q=0.5",
        "*/*",
        "application/problem+json",
    ] {
        let reply = c
            .send(
                "GET",
                &col(ta, "/books/documents/dune"),
                Some(key),
                Body::None,
                &[("accept", accept)],
            )
            .await;
        assert_eq!(reply.status, 200, "{accept}: {}", reply.text);
    }

    // Past the server's body limit, and a document past its own limit.
    let huge = format!(r#"{{"data": {{"s": "{}"}}}}"#, "x".repeat(MAX_BODY + 1));
    let reply = c
        .send(
            "POST",
            &col(ta, "/books/documents"),
            Some(key),
            Body::Raw(Some("application/json"), huge.into_bytes()),
            &[],
        )
        .await;
    api.problem(&reply, 413, "payload-too-large");
    let big = json!({"title": "big", "s": "x".repeat(1_100_000)});
    for (method, path, body) in [
        ("PUT", col(ta, "/books/documents/big"), big.clone()),
        ("PATCH", col(ta, "/books/documents/dune"), big.clone()),
        (
            "POST",
            col(ta, "/books/documents"),
            json!({"id": "big", "data": big}),
        ),
    ] {
        let reply = c.json(method, &path, key, body).await;
        api.problem(&reply, 413, "payload-too-large");
    }
    // Under the body limit, over the bulk request's own data limit.
    let chunk = "x".repeat(1_000_000);
    let operations: Vec<Value> = (0..9)
        .map(|i| json!({"op": "upsert", "id": format!("big{i}"), "data": {"title": "b", "s": chunk}}))
        .collect();
    let reply = c
        .json(
            "POST",
            &col(ta, "/books/bulk"),
            key,
            json!({"operations": operations}),
        )
        .await;
    let body = api.problem(&reply, 413, "payload-too-large");
    assert_eq!(
        body["detail"],
        format!("the body exceeds the limit of {} bytes", 8 << 20)
    );
    let reply = c
        .send(
            "PATCH",
            &col(ta, "/books/documents/dune"),
            Some(key),
            Body::Raw(Some("text/plain"), b"{}".to_vec()),
            &[],
        )
        .await;
    api.problem(&reply, 415, "unsupported-media-type");
    // JSON Patch is not merge patch.
    let reply = c
        .send(
            "PATCH",
            &col(ta, "/books/documents/dune"),
            Some(key),
            Body::Raw(
                Some("application/json-patch+json"),
                br#"[{"op": "remove", "path": "/title"}]"#.to_vec(),
            ),
            &[],
        )
        .await;
    api.problem(&reply, 415, "unsupported-media-type");
    let reply = c
        .send(
            "POST",
            &col(ta, "/books/bulk"),
            Some(key),
            Body::Raw(None, b"{\"operations\": []}".to_vec()),
            &[],
        )
        .await;
    api.problem(&reply, 415, "unsupported-media-type");
}

async fn viewer_cannot_write(api: &Checked, ta: &str, owner: &str, viewer: &str) {
    let c = &api.client;
    let read = c.get(&col(ta, "/books/documents/dune"), viewer).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let list = c.get(&col(ta, "/books/documents"), viewer).await;
    assert_eq!(list.status, 200);
    let query = c
        .json("POST", &col(ta, "/books/query"), viewer, json!({}))
        .await;
    assert_eq!(query.status, 200, "{}", query.text);
    let collections = c.get(&col(ta, ""), viewer).await;
    assert_eq!(collections.status, 200);
    for (method, path, body) in [
        ("POST", col(ta, ""), json!({"name": "mine"})),
        ("PATCH", col(ta, "/books"), json!({"schema": null})),
        ("DELETE", col(ta, "/books"), Value::Null),
        (
            "POST",
            col(ta, "/books/documents"),
            json!({"data": {"title": "t"}}),
        ),
        (
            "PUT",
            col(ta, "/books/documents/dune"),
            json!({"title": "t"}),
        ),
        (
            "PATCH",
            col(ta, "/books/documents/dune"),
            json!({"year": 1}),
        ),
        ("DELETE", col(ta, "/books/documents/dune"), Value::Null),
        (
            "POST",
            col(ta, "/books/bulk"),
            json!({"operations": [{"op": "delete", "id": "dune"}]}),
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
    // Nothing changed.
    let dune = c.get(&col(ta, "/books/documents/dune"), owner).await;
    assert_eq!(dune.json["version"], read.json["version"]);
    assert_eq!(dune.json["data"], read.json["data"]);
}

/// Tenant A's key on tenant B's ids: 404, the same body as nothing at all.
async fn isolation(api: &Checked, a: &Tenant, b: &Tenant, a_key: &str, b_key: &str) {
    let c = &api.client;
    let (ta, tb) = (a.name.as_str(), b.name.as_str());
    let made = c
        .json("POST", &col(tb, ""), b_key, json!({"name": "secret-b"}))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let made = c
        .json("POST", &col(tb, ""), b_key, json!({"name": "secret-c"}))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let doc = c
        .json(
            "PUT",
            &col(tb, "/secret-b/documents/s1"),
            b_key,
            json!({"owner": tb, "pin": 1234}),
        )
        .await;
    assert_eq!(doc.status, 201, "{}", doc.text);

    let nothing = c.get(&col(ta, "/nothing-here"), a_key).await;
    let reference = without_instance(api.problem(&nothing, 404, "not-found"));
    let probes: Vec<(&str, String, Body)> = vec![
        ("GET", col(tb, ""), Body::None),
        ("GET", col(tb, "/secret-b"), Body::None),
        ("PATCH", col(tb, "/secret-b"), Body::Json(json!({}))),
        ("DELETE", col(tb, "/secret-b"), Body::None),
        ("GET", col(tb, "/secret-b/documents"), Body::None),
        ("GET", col(tb, "/secret-b/documents/s1"), Body::None),
        (
            "PUT",
            col(tb, "/secret-b/documents/s1"),
            Body::Json(json!({"owner": "a"})),
        ),
        (
            "PATCH",
            col(tb, "/secret-b/documents/s1"),
            Body::Json(json!({"owner": "a"})),
        ),
        ("DELETE", col(tb, "/secret-b/documents/s1"), Body::None),
        (
            "POST",
            col(tb, "/secret-b/query"),
            Body::Json(json!({"filter": {"pin": 1234}})),
        ),
        (
            "POST",
            col(tb, "/secret-b/bulk"),
            Body::Json(json!({"operations": [{"op": "delete", "id": "s1"}]})),
        ),
        // B's ids under A's own path: not A's.
        ("GET", col(ta, "/secret-b"), Body::None),
        ("GET", col(ta, "/secret-b/documents/s1"), Body::None),
        ("DELETE", col(ta, "/secret-b/documents/s1"), Body::None),
        (
            "POST",
            col(ta, "/secret-b/query"),
            Body::Json(json!({"filter": {"pin": 1234}})),
        ),
    ];
    for (method, path, body) in probes {
        let reply = c.send(method, &path, Some(a_key), body, &[]).await;
        let body = api.problem(&reply, 404, "not-found");
        assert_eq!(without_instance(body), reference, "{method} {path}");
        assert!(!reply.text.contains("1234") && !reply.text.contains("secret"));
    }
    // A's list shows none of B's; B's document is untouched.
    let list = c.get(&col(ta, ""), a_key).await;
    assert!(!list.text.contains("secret"), "{}", list.text);
    let doc = c.get(&col(tb, "/secret-b/documents/s1"), b_key).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["version"], 1);
    // A cursor of B's collection list is not one of A's.
    let page = c.get(&col(tb, "?limit=1"), b_key).await;
    let cursor = page.json["next_cursor"].as_str().expect("cursor");
    let reply = c.get(&col(ta, &format!("?cursor={cursor}")), a_key).await;
    api.problem(&reply, 400, "invalid-cursor");
}

/// Input PostgreSQL itself refuses (U+0000 in text or jsonb) is the
/// client's error, named by pointer, never a 500.
async fn hostile(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let docs = col(ta, "/shelf/documents");
    let raw = |s: &str| Body::Raw(Some("application/json"), s.as_bytes().to_vec());
    for (method, path, body, pointer) in [
        (
            "PUT",
            format!("{docs}/nul"),
            r#"{"title": "a\u0000b"}"#,
            "/title",
        ),
        (
            "PUT",
            format!("{docs}/nul"),
            r#"{"a\u0000b": 1}"#,
            "/a\u{0}b",
        ),
        (
            "POST",
            docs.clone(),
            r#"{"data": {"t": ["\u0000"]}}"#,
            "/data/t/0",
        ),
        (
            "PATCH",
            format!("{docs}/n01"),
            r#"{"x": {"y": "\u0000"}}"#,
            "/x/y",
        ),
        (
            "POST",
            col(ta, "/shelf/bulk"),
            r#"{"operations": [{"op": "upsert", "id": "nul", "data": {"t": "\u0000"}}]}"#,
            "/operations/0/data/t",
        ),
        (
            "POST",
            col(ta, ""),
            r#"{"name": "x", "schema": {"title": "\u0000"}}"#,
            "/schema/title",
        ),
    ] {
        let reply = c.send(method, &path, Some(key), raw(body), &[]).await;
        let problem = api.problem(&reply, 422, "validation-failed");
        assert_eq!(
            Checked::pointers(&problem),
            [pointer],
            "{method} {path} {body}"
        );
    }
    for body in [
        r#"{"filter": {"title": "\u0000"}}"#,
        r#"{"filter": {"title": {"prefix": "\u0000"}}}"#,
        r#"{"filter": {"tags": {"contains": ["\u0000"]}}}"#,
        r#"{"filter": {"title": {"in": ["a", "\u0000"]}}}"#,
    ] {
        let reply = c
            .send("POST", &col(ta, "/shelf/query"), Some(key), raw(body), &[])
            .await;
        api.problem(&reply, 400, "invalid-parameter");
    }
    let reply = c
        .send(
            "POST",
            &col(ta, "/shelf/query"),
            Some(key),
            raw(r#"{"filter": {"title": "\ud800"}}"#),
            &[],
        )
        .await;
    api.problem(&reply, 400, "invalid-json");
    for query in [
        "?filter[title]=%00",
        "?filter[title][prefix]=a%00",
        "?filter[title][in]=[%22%5Cu0000%22]",
    ] {
        let reply = c.get(&format!("{docs}{query}"), key).await;
        api.problem(&reply, 400, "invalid-parameter");
    }
    let untouched = c.get(&format!("{docs}/n01"), key).await;
    assert_eq!(untouched.json["version"], 1);
}

/// A second data plane instance (another replica with the same config)
/// continues what the first started: cursors, ETags, Location.
async fn replicas(api: &Checked, catalog_url: &str, ta: &str, key: &str) {
    let second = Server::start(app_state(catalog_url), MAX_BODY).await;
    let two = Client::new(&second.base);
    let one = &api.client;
    let docs = col(ta, "/shelf/documents");
    let first = one
        .get(&format!("{docs}?filter[genre]=odd&sort=year&limit=5"), key)
        .await;
    let mut ids: Vec<String> = first.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    let mut next = first.next_link();
    while let Some(link) = next.take() {
        let page = two.get(&link, key).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for item in page.json["items"].as_array().expect("items") {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        next = page.next_link();
    }
    let want: Vec<String> = (0..25)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("n{i:02}"))
        .collect();
    assert_eq!(ids, want);
    let created = one
        .json("POST", &docs, key, json!({"data": {"title": "R"}}))
        .await;
    assert_eq!(created.status, 201);
    let location = created.header("location").expect("location");
    let etag = created.header("etag").expect("etag");
    let got = two.get(location, key).await;
    assert_eq!(got.header("etag"), Some(etag));
    let deleted = two
        .send(
            "DELETE",
            location,
            Some(key),
            Body::None,
            &[("if-match", etag)],
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
}

fn jwt(tenant: &str, role: &str, exp_from_now: i64, secret: &[u8]) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims =
        json!({"sub": "jwt-user", "tenant": tenant, "role": role, "exp": now + exp_from_now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

/// JWTs and a revoked key on the documents routes; HEAD and weak
/// validators on a document.
async fn other_credentials(api: &Checked, ta: &str, tb: &str, owner: &str) {
    let c = &api.client;
    let dune = col(ta, "/books/documents/dune");
    let editor = jwt(ta, "editor", 600, support::JWT_SECRET);
    let put = c
        .json(
            "PUT",
            &col(ta, "/books/documents/by-jwt"),
            &editor,
            json!({"title": "J"}),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.text);
    let viewer = jwt(ta, "viewer", 600, support::JWT_SECRET);
    let read = c.get(&dune, &viewer).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let write = c.json("PATCH", &dune, &viewer, json!({"year": 1})).await;
    api.problem(&write, 403, "forbidden");
    let nothing = c.get(&col(ta, "/nothing-here"), owner).await;
    let reference = without_instance(api.problem(&nothing, 404, "not-found"));
    for path in [col(tb, "/secret-b"), col(tb, "/secret-b/documents/s1")] {
        let crossed = c.get(&path, &editor).await;
        let body = api.problem(&crossed, 404, "not-found");
        assert_eq!(without_instance(body), reference);
    }
    for bad in [
        jwt(ta, "editor", -600, support::JWT_SECRET),
        jwt(ta, "editor", 600, b"another-secret-0123456789abcdef-xyz"),
    ] {
        let reply = c.get(&dune, &bad).await;
        api.problem(&reply, 401, "unauthenticated");
    }

    // A revoked key is refused at once.
    let made = c
        .json(
            "POST",
            &format!("/v1/tenants/{ta}/keys"),
            owner,
            json!({"name": "short-lived", "role": "editor"}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let key = made.json["key"].as_str().expect("key").to_string();
    let id = made.json["id"].as_str().expect("id").to_string();
    assert_eq!(c.get(&dune, &key).await.status, 200);
    let revoked = c
        .send(
            "DELETE",
            &format!("/v1/tenants/{ta}/keys/{id}"),
            Some(owner),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    let reply = c.get(&dune, &key).await;
    api.problem(&reply, 401, "unauthenticated");
    let reply = c.json("PUT", &dune, &key, json!({"title": "gone"})).await;
    api.problem(&reply, 401, "unauthenticated");

    // HEAD: the validators, no body; weak If-None-Match compares weakly.
    let got = c.get(&dune, owner).await;
    let etag = got.header("etag").expect("etag").to_string();
    let head = c.send("HEAD", &dune, Some(owner), Body::None, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert!(head.text.is_empty());
    let weak = format!("W/{etag}");
    for method in ["GET", "HEAD"] {
        let reply = c
            .send(
                method,
                &dune,
                Some(owner),
                Body::None,
                &[("if-none-match", &weak)],
            )
            .await;
        assert_eq!(reply.status, 304, "{method}");
    }
    // …but If-Match compares strongly: a weak tag never matches.
    let reply = c
        .send(
            "PATCH",
            &dune,
            Some(owner),
            Body::Json(json!({"year": 1965})),
            &[("if-match", &weak)],
        )
        .await;
    api.problem(&reply, 412, "precondition-failed");
    let head = c
        .send(
            "HEAD",
            &col(ta, "/books/documents/none"),
            Some(owner),
            Body::None,
            &[],
        )
        .await;
    assert_eq!(head.status, 404);
    assert!(head.text.is_empty());
}

async fn delete_collection(api: &Checked, ta: &str, key: &str) {
    let c = &api.client;
    let deleted = c
        .send("DELETE", &col(ta, "/books"), Some(key), Body::None, &[])
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    for path in [
        col(ta, "/books"),
        col(ta, "/books/documents"),
        col(ta, "/books/documents/dune"),
    ] {
        let reply = c.get(&path, key).await;
        api.problem(&reply, 404, "not-found");
    }
    let again = c
        .send("DELETE", &col(ta, "/books"), Some(key), Body::None, &[])
        .await;
    api.problem(&again, 404, "not-found");
    // The name is free again, with no documents.
    let created = c
        .json("POST", &col(ta, ""), key, json!({"name": "books"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let list = c.get(&col(ta, "/books/documents"), key).await;
    assert_eq!(list.json["items"], json!([]));
}
