//! Documents API against the stack's PostgreSQL: a tenant provisioned
//! in-process, the operations called as their handlers call them, with the
//! data plane role's pool. `source .stack/env` first.

mod documents_support;

use axum::http::{Method, Uri};
use documents_support::{Tenant, body, headers, status};
use proptest::prelude::*;
use serde_json::{Value, json};
use strata_dataplane::documents::{bulk, collections, crud, filter, list};

fn uri(s: &str) -> Uri {
    s.parse().expect("uri")
}

async fn create(t: &Tenant, c: &str, id: &str, data: Value) -> (u16, axum::http::HeaderMap, Value) {
    let body_in: crud::CreateBody =
        serde_json::from_value(json!({"id": id, "data": data})).expect("body");
    match crud::create(&t.pool, c, &headers(&[]), body_in).await {
        Ok(r) => body(r).await,
        Err(e) => (e.kind().status.as_u16(), Default::default(), Value::Null),
    }
}

async fn code<
    F: std::future::Future<
            Output = Result<axum::response::Response, strata_dataplane::http::ApiError>,
        >,
>(
    f: F,
) -> (u16, Option<String>) {
    match f.await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("etag")
                .map(|v| v.to_str().unwrap_or("").to_string()),
        ),
        Err(e) => (
            axum::response::IntoResponse::into_response(e)
                .status()
                .as_u16(),
            None,
        ),
    }
}

#[tokio::test]
async fn crud_and_every_precondition() {
    let t = Tenant::provision().await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["n"]});
    t.collection(json!({"name": "things", "schema": schema}))
        .await;
    t.collection(json!({"name": "strict", "require_if_match": true}))
        .await;

    // Create: client id, server id, 409 on a taken id, 422 with pointers.
    let (s, h, doc) = create(&t, "things", "a1", json!({"n": 1})).await;
    assert_eq!(s, 201);
    let etag1 = h["etag"].to_str().expect("etag").to_string();
    assert_eq!(doc["version"], 1);
    let (s, _, _) = create(&t, "things", "a1", json!({"n": 1})).await;
    assert_eq!(s, 409);
    let server: crud::CreateBody = serde_json::from_value(json!({"data": {"n": 2}})).expect("b");
    let (s, _, doc) = body(
        crud::create(&t.pool, "things", &headers(&[]), server)
            .await
            .expect("create"),
    )
    .await;
    assert_eq!(s, 201);
    assert!(uuid::Uuid::parse_str(doc["id"].as_str().expect("id")).is_ok());
    let bad: crud::CreateBody =
        serde_json::from_value(json!({"id": "b", "data": {"n": "x", "tags": [1, "y", 2]}}))
            .expect("b");
    let error = crud::create(&t.pool, "things", &headers(&[]), bad)
        .await
        .expect_err("422");
    let problem = error.to_problem();
    assert_eq!(problem.status, 422);
    let pointers: Vec<&str> = problem.errors.iter().map(|e| e.pointer.as_str()).collect();
    for p in ["/data/n", "/data/tags/0", "/data/tags/2"] {
        assert!(pointers.contains(&p), "{pointers:?}");
    }
    // If-None-Match: * on an existing id: 412.
    let again: crud::CreateBody =
        serde_json::from_value(json!({"id": "a1", "data": {"n": 1}})).expect("b");
    assert_eq!(
        status(
            &crud::create(
                &t.pool,
                "things",
                &headers(&[("if-none-match", "*")]),
                again
            )
            .await
        ),
        412
    );

    // GET, 304, 404.
    let get = |h: Vec<(&'static str, String)>| {
        let pool = t.pool.clone();
        async move {
            let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            code(crud::get(
                &pool,
                "things",
                "a1",
                &Method::GET,
                &headers(&pairs),
            ))
            .await
        }
    };
    assert_eq!(get(vec![]).await, (200, Some(etag1.clone())));
    assert_eq!(get(vec![("if-none-match", etag1.clone())]).await.0, 304);
    assert_eq!(
        get(vec![("if-none-match", "\"other\"".into())]).await.0,
        200
    );
    assert_eq!(get(vec![("if-none-match", "garbage".into())]).await.0, 400);
    assert_eq!(
        code(crud::get(
            &t.pool,
            "things",
            "nope",
            &Method::GET,
            &headers(&[])
        ))
        .await
        .0,
        404
    );
    assert_eq!(
        code(crud::get(
            &t.pool,
            "nope",
            "a1",
            &Method::GET,
            &headers(&[])
        ))
        .await
        .0,
        404
    );

    // PUT with If-Match: stale 412, current 200 with a new ETag.
    let put = |h: Vec<(&'static str, String)>, data: Value, id: &'static str| {
        let pool = t.pool.clone();
        async move {
            let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            code(crud::replace(&pool, "things", id, &headers(&pairs), data)).await
        }
    };
    let (s, etag2) = put(vec![("if-match", etag1.clone())], json!({"n": 5}), "a1").await;
    assert_eq!(s, 200);
    let etag2 = etag2.expect("etag");
    assert_ne!(etag1, etag2);
    assert_eq!(
        put(vec![("if-match", etag1.clone())], json!({"n": 6}), "a1")
            .await
            .0,
        412
    );
    assert_eq!(
        put(vec![("if-match", "W/\"v2\"".into())], json!({"n": 6}), "a1")
            .await
            .0,
        412,
        "weak never matches If-Match"
    );
    assert_eq!(
        put(vec![("if-none-match", "*".into())], json!({"n": 6}), "a1")
            .await
            .0,
        412,
        "create-only on existing"
    );
    assert_eq!(
        put(vec![("if-none-match", "*".into())], json!({"n": 6}), "new1")
            .await
            .0,
        201
    );
    assert_eq!(
        put(vec![("if-match", "*".into())], json!({"n": 6}), "new2")
            .await
            .0,
        412,
        "If-Match on a missing doc"
    );
    assert_eq!(
        put(vec![], json!({"n": 7}), "new3").await.0,
        201,
        "PUT creates"
    );
    assert_eq!(put(vec![], json!({"n": "x"}), "new3").await.0, 422);
    assert_eq!(
        put(vec![], json!([1]), "new3").await.0,
        422,
        "data is an object"
    );
    assert_eq!(put(vec![], json!({"n": 1}), "bad id").await.0, 400);

    // Merge patch.
    let (s, etag3) = code(crud::patch(
        &t.pool,
        "things",
        "a1",
        &headers(&[("if-match", &etag2)]),
        json!({"tags": ["x"], "extra": {"k": 1}}),
    ))
    .await;
    assert_eq!(s, 200);
    let (_, _, doc) = body(
        crud::get(&t.pool, "things", "a1", &Method::GET, &headers(&[]))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        doc["data"],
        json!({"n": 5, "tags": ["x"], "extra": {"k": 1}})
    );
    assert_eq!(doc["version"], 3);
    assert_eq!(
        code(crud::patch(
            &t.pool,
            "things",
            "a1",
            &headers(&[]),
            json!({"n": null})
        ))
        .await
        .0,
        422,
        "removing a required field"
    );
    assert_eq!(
        code(crud::patch(
            &t.pool,
            "things",
            "zz",
            &headers(&[]),
            json!({"n": 1})
        ))
        .await
        .0,
        404
    );

    // Delete: stale 412, then 204, then 404.
    assert_eq!(
        code(crud::delete(
            &t.pool,
            "things",
            "a1",
            &headers(&[("if-match", &etag2)])
        ))
        .await
        .0,
        412
    );
    assert_eq!(
        code(crud::delete(
            &t.pool,
            "things",
            "a1",
            &headers(&[("if-match", &etag3.expect("e"))])
        ))
        .await
        .0,
        204
    );
    assert_eq!(
        code(crud::delete(&t.pool, "things", "a1", &headers(&[])))
            .await
            .0,
        404
    );
    // Re-created: the old ETag must not match the new document.
    let (_, h, _) = create(&t, "things", "a1", json!({"n": 1})).await;
    assert_ne!(h["etag"].to_str().expect("e"), etag1);
    assert_eq!(
        put(vec![("if-match", etag1.clone())], json!({"n": 1}), "a1")
            .await
            .0,
        412
    );

    // require_if_match: 428 without a condition, both ways through.
    let (s, _, _) = body(
        crud::replace(
            &t.pool,
            "strict",
            "s1",
            &headers(&[("if-none-match", "*")]),
            json!({}),
        )
        .await
        .expect("create"),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        code(crud::replace(
            &t.pool,
            "strict",
            "s1",
            &headers(&[]),
            json!({"a": 1})
        ))
        .await
        .0,
        428
    );
    assert_eq!(
        code(crud::replace(
            &t.pool,
            "strict",
            "s2",
            &headers(&[]),
            json!({"a": 1})
        ))
        .await
        .0,
        428
    );
    assert_eq!(
        code(crud::patch(
            &t.pool,
            "strict",
            "s1",
            &headers(&[]),
            json!({"a": 1})
        ))
        .await
        .0,
        428
    );
    assert_eq!(
        code(crud::delete(&t.pool, "strict", "s1", &headers(&[])))
            .await
            .0,
        428
    );
    assert_eq!(
        code(crud::delete(
            &t.pool,
            "strict",
            "s1",
            &headers(&[("if-match", "*")])
        ))
        .await
        .0,
        204
    );

    // Outbox: one row per write, with the version, never the data.
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT topic, aggregate_id, payload FROM outbox WHERE topic LIKE 'document.%' ORDER BY id",
    )
    .fetch_all(&t.pool)
    .await
    .expect("outbox");
    assert!(
        rows.iter()
            .any(|(topic, agg, p)| topic == "document.deleted"
                && agg.ends_with("/a1")
                && p["version"] == 3)
    );
    // The event's data is a summary (events::types), never the document.
    assert!(rows.iter().all(|(_, _, p)| {
        p["data"].as_object().is_some_and(|d| {
            d.keys()
                .all(|k| ["collection", "id", "version", "fields", "changed"].contains(&k.as_str()))
        })
    }));

    // Bulk: all or nothing.
    let ops = |v: Value| -> bulk::BulkBody { serde_json::from_value(v).expect("bulk") };
    let ok = bulk::run(
        &t.pool,
        "things",
        ops(json!({"operations": [
        {"op": "create", "id": "b1", "data": {"n": 1}},
        {"op": "upsert", "id": "a1", "data": {"n": 9}},
        {"op": "delete", "id": "new1"}]})),
    )
    .await;
    assert_eq!(status(&ok), 200);
    let failed = bulk::run(
        &t.pool,
        "things",
        ops(json!({"operations": [
        {"op": "create", "id": "b2", "data": {"n": 1}},
        {"op": "create", "id": "b3", "data": {"n": "bad"}}]})),
    )
    .await
    .expect_err("422");
    assert_eq!(
        failed.to_problem().errors[0].pointer,
        "/operations/1/data/n"
    );
    assert_eq!(
        code(crud::get(
            &t.pool,
            "things",
            "b2",
            &Method::GET,
            &headers(&[])
        ))
        .await
        .0,
        404,
        "rolled back"
    );
    let many: Vec<Value> = (0..=bulk::MAX_OPERATIONS)
        .map(|i| json!({"op": "delete", "id": format!("x{i}")}))
        .collect();
    assert_eq!(
        status(&bulk::run(&t.pool, "things", ops(json!({"operations": many}))).await),
        422
    );
    let big = "x".repeat(900_000);
    let huge: Vec<Value> = (0..10)
        .map(|i| json!({"op": "create", "id": format!("h{i}"), "data": {"s": big}}))
        .collect();
    assert_eq!(
        status(&bulk::run(&t.pool, "things", ops(json!({"operations": huge}))).await),
        413
    );
    assert_eq!(
        put(vec![], json!({"n": 1, "s": "x".repeat(1 << 20)}), "huge")
            .await
            .0,
        413
    );

    // Collections: get/304/update with If-Match/delete cascades.
    let (s, etag) = code(collections::get(
        &t.pool,
        "things",
        &Method::GET,
        &headers(&[]),
    ))
    .await;
    assert_eq!(s, 200);
    let etag = etag.expect("etag");
    assert_eq!(
        code(collections::get(
            &t.pool,
            "things",
            &Method::GET,
            &headers(&[("if-none-match", &etag)])
        ))
        .await
        .0,
        304
    );
    let upd: collections::UpdateBody = serde_json::from_value(json!({"schema": null})).expect("u");
    assert_eq!(
        status(
            &collections::update(
                &t.pool,
                "things",
                &headers(&[("if-match", "\"v0.0\"")]),
                upd
            )
            .await
        ),
        412
    );
    let upd: collections::UpdateBody = serde_json::from_value(json!({"schema": null})).expect("u");
    let updated = collections::update(&t.pool, "things", &headers(&[("if-match", &etag)]), upd)
        .await
        .expect("update");
    assert_eq!(updated.version, 2);
    assert!(updated.json_schema.is_none());
    let dup: collections::CreateBody =
        serde_json::from_value(json!({"name": "things"})).expect("c");
    assert_eq!(status(&collections::create(&t.pool, dup).await), 409);
    for bad in [
        json!({"name": "a b"}),
        json!({"name": "x", "schema": {"type": 5}}),
        json!({"name": "x", "vector": {"dimension": 0, "metric": "dot"}}),
        json!({"name": "x", "indexed_fields": [{"path": "a;b", "type": "number"}]}),
    ] {
        let b: collections::CreateBody = serde_json::from_value(bad.clone()).expect("c");
        assert_eq!(status(&collections::create(&t.pool, b).await), 422, "{bad}");
    }
    let deleted = collections::delete(&t.pool, "things", &headers(&[]))
        .await
        .expect("delete");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE collection_id = $1")
        .bind(deleted.id)
        .fetch_one(&t.pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn indexed_fields_use_their_expression_indexes() {
    let t = Tenant::provision().await;
    let c = t
        .collection(json!({"name": "idx", "indexed_fields": [
            {"path": "age", "type": "number"}, {"path": "profile.name", "type": "string"}, {"path": "ok", "type": "boolean"}]}))
        .await;
    let ops: Vec<Value> = (0..2000)
        .map(|i| json!({"op": "create", "id": format!("d{i:05}"), "data": {"age": i % 90, "profile": {"name": format!("n{}", i % 50)}, "ok": i % 2 == 0}}))
        .collect();
    for chunk in ops.chunks(bulk::MAX_OPERATIONS) {
        bulk::run(
            &t.pool,
            "idx",
            serde_json::from_value(json!({"operations": chunk})).expect("b"),
        )
        .await
        .expect("bulk");
    }
    sqlx::query("ANALYZE documents")
        .execute(&mut t.owner().await)
        .await
        .expect("analyze");
    let age_index =
        strata_dataplane::documents::indexes::index_name(c.id, &c.fields().expect("f")[0]);
    let name_index =
        strata_dataplane::documents::indexes::index_name(c.id, &c.fields().expect("f")[1]);

    let range = list::ListRequest {
        filter: Some(filter::parse_json(&json!({"age": {"gte": 10, "lt": 12}}), "").expect("f")),
        ..Default::default()
    };
    let plan = list::explain(&t.pool, "idx", &range)
        .await
        .expect("explain");
    assert!(
        plan.contains(&age_index),
        "range filter should use {age_index}:\n{plan}"
    );

    let sorted = list::ListRequest {
        sort: vec!["-profile.name".into()],
        ..Default::default()
    };
    let plan = list::explain(&t.pool, "idx", &sorted)
        .await
        .expect("explain");
    assert!(
        plan.contains(&name_index),
        "sort should use {name_index}:\n{plan}"
    );
    assert!(
        !plan.contains("Sort "),
        "the index gives the order:\n{plan}"
    );

    let eq = list::ListRequest {
        filter: Some(filter::parse_json(&json!({"profile.name": "n7"}), "").expect("f")),
        count: true,
        ..Default::default()
    };
    let plan = list::explain(&t.pool, "idx", &eq).await.expect("explain");
    assert!(
        plan.contains("documents_data_gin"),
        "equality uses the GIN index:\n{plan}"
    );

    // A type mismatch on an indexed field is a 400, not an empty answer.
    let mismatch = list::ListRequest {
        filter: Some(filter::parse_json(&json!({"age": {"gt": "x"}}), "").expect("f")),
        ..Default::default()
    };
    let result = list::list(&t.pool, &t.codec, "idx", mismatch, &uri("/x")).await;
    assert_eq!(status(&result), 400);

    // Results through the index are right, in order, paginated.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let request = list::ListRequest {
            filter: Some(
                filter::parse_json(&json!({"age": {"gte": 10, "lt": 12}}), "").expect("f"),
            ),
            sort: vec!["-age".into()],
            limit: Some(7),
            cursor: cursor.clone(),
            count: true,
        };
        let (s, h, page) = body(
            list::list(&t.pool, &t.codec, "idx", request, &uri("/docs?limit=7"))
                .await
                .expect("list"),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(page["total"], 46);
        for item in page["items"].as_array().expect("items") {
            seen.push((
                item["data"]["age"].as_i64().expect("age"),
                item["id"].as_str().expect("id").to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(h["link"].to_str().expect("link").contains("rel=\"next\""));
                cursor = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 46);
    let mut want = seen.clone();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, want);

    // Updating indexed fields drops and builds; deleting drops them all.
    let upd: collections::UpdateBody =
        serde_json::from_value(json!({"indexed_fields": [{"path": "age", "type": "number"}]}))
            .expect("u");
    let updated = collections::update(&t.pool, "idx", &headers(&[]), upd)
        .await
        .expect("update");
    collections::build_indexes(&mut t.owner().await, &updated)
        .await
        .expect("sync");
    let count = |prefix: String| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_class WHERE starts_with(relname::text, $1)",
            )
            .bind(prefix)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    let prefix = strata_dataplane::documents::indexes::name_prefix(c.id);
    assert_eq!(count(prefix.clone()).await, 1);
    collections::delete(&t.pool, "idx", &headers(&[]))
        .await
        .expect("delete");
    strata_dataplane::documents::indexes::drop_all(&mut t.owner().await, c.id)
        .await
        .expect("drop");
    assert_eq!(count(prefix).await, 0);
}

#[tokio::test]
async fn hostile_input_is_a_400_never_a_500() {
    let t = Tenant::provision().await;
    t.collection(json!({"name": "h", "indexed_fields": [{"path": "n", "type": "number"}]}))
        .await;
    create(&t, "h", "x", json!({"n": 1, "s": "a"})).await;
    let evil = "x'); DROP TABLE documents; --";
    let cases = [
        format!("filter[{}]=1", urlencode(evil)),
        format!(
            "filter[s]={}&filter[a.b][ne]={}",
            urlencode(evil),
            urlencode(evil)
        ),
        "filter[s][regex]=.*".to_string(),
        format!("sort={}", urlencode(evil)),
        "sort=a,b,c,d,e".to_string(),
        "filter[n][gt]=abc".to_string(),
        "limit=0".to_string(),
        "limit=100000".to_string(),
        "cursor=AAAA".to_string(),
        "count=maybe".to_string(),
        "unknown=1".to_string(),
        format!("filter[{}]=1", "a.".repeat(40)),
    ];
    for query in &cases {
        let request = list::parse_query_string(Some(query));
        let result = match request {
            Ok(r) => list::list(&t.pool, &t.codec, "h", r, &uri("/x"))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        let s = status(&result);
        // Injected SQL is just a value: eq on a string finds nothing (200).
        assert!(
            s == 400 || (s == 200 && query.starts_with("filter[s]=")),
            "{query}: {s}"
        );
    }
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&t.pool)
        .await
        .expect("still there");
    assert_eq!(tables, 1);
    // Ids and names.
    assert_eq!(
        code(crud::get(&t.pool, "h", evil, &Method::GET, &headers(&[])))
            .await
            .0,
        404
    );
    assert_eq!(
        code(crud::replace(&t.pool, "h", evil, &headers(&[]), json!({})))
            .await
            .0,
        400
    );
    assert_eq!(
        code(crud::get(&t.pool, evil, "x", &Method::GET, &headers(&[])))
            .await
            .0,
        404
    );
    // Nesting past the limit.
    let mut deep = json!({"s": "a"});
    for _ in 0..20 {
        deep = json!({"not": deep});
    }
    let body_in: list::QueryBody = serde_json::from_value(json!({"filter": deep})).expect("q");
    assert_eq!(status(&body_in.into_request()), 400);
    let mut doc = json!(1);
    for _ in 0..100 {
        doc = json!({"a": doc});
    }
    assert_eq!(
        code(crud::replace(&t.pool, "h", "deep", &headers(&[]), doc))
            .await
            .0,
        400
    );
    // A cursor reused with another filter or sort is a 400.
    for i in 0..5 {
        create(&t, "h", &format!("y{i}"), json!({"n": i})).await;
    }
    let first = list::parse_query_string(Some("limit=2&sort=n")).expect("q");
    let (_, _, page) = body(
        list::list(&t.pool, &t.codec, "h", first, &uri("/x"))
            .await
            .expect("page"),
    )
    .await;
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    for other in [
        "limit=2&sort=-n",
        "limit=2&sort=n&filter[n][gte]=0",
        "limit=2",
    ] {
        let q = list::parse_query_string(Some(&format!("{other}&cursor={cursor}"))).expect("q");
        assert_eq!(
            status(&list::list(&t.pool, &t.codec, "h", q, &uri("/x")).await),
            400,
            "{other}"
        );
    }
    let same =
        list::parse_query_string(Some(&format!("limit=3&sort=n&cursor={cursor}"))).expect("q");
    assert_eq!(
        status(&list::list(&t.pool, &t.codec, "h", same, &uri("/x")).await),
        200,
        "limit may change"
    );
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn paginates_10k_documents_while_others_are_inserted() {
    let t = Tenant::provision().await;
    t.collection(json!({"name": "big"})).await;
    // Batch inserts straight into the table: the test is about reading.
    let cid: uuid::Uuid = sqlx::query_scalar("SELECT id FROM collections WHERE name = 'big'")
        .fetch_one(&t.pool)
        .await
        .expect("id");
    sqlx::query("INSERT INTO documents (collection_id, id, data) SELECT $1, 'd' || lpad(g::text, 6, '0'), jsonb_build_object('g', g) FROM generate_series(1, 10000) g")
        .bind(cid)
        .execute(&t.pool)
        .await
        .expect("seed");
    let original: std::collections::BTreeSet<String> =
        (1..=10000).map(|g| format!("d{g:06}")).collect();
    let writer = {
        let pool = t.pool.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                // Ids that sort before, between and after the originals.
                sqlx::query("INSERT INTO documents (collection_id, id, data) SELECT $1, p || $2 || '-' || g, '{}'::jsonb FROM generate_series(1, 25) g, unnest(ARRAY['a', 'd0050', 'z']) p")
                    .bind(cid)
                    .bind(round.to_string())
                    .execute(&pool)
                    .await
                    .expect("concurrent insert");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let request = list::ListRequest {
            limit: Some(500),
            cursor: cursor.clone(),
            ..Default::default()
        };
        let (s, _, page) = body(
            list::list(&t.pool, &t.codec, "big", request, &uri("/x"))
                .await
                .expect("page"),
        )
        .await;
        assert_eq!(s, 200);
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("id").to_string();
            assert!(seen.insert(id.clone()), "duplicate {id}");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 200, "runaway pagination");
    }
    writer.await.expect("writer");
    let missing: Vec<&String> = original.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "gaps: {:?}",
        &missing[..missing.len().min(5)]
    );
}

// ---- property test: the compiled filter + sort against hand-written SQL ----

#[derive(Debug, Clone)]
enum Leaf {
    Eq(&'static str, Value),
    Ne(&'static str, Value),
    Cmp(&'static str, &'static str, Value),
    In(&'static str, Vec<Value>),
    Exists(&'static str, bool),
    Prefix(&'static str),
    Contains(Value),
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Leaf),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

const PATHS: [&str; 3] = ["a", "b.c", "s"];

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..6).prop_map(|n| json!(n)),
        prop::sample::select(vec!["x", "xy", "y", "z"]).prop_map(|s| json!(s)),
        Just(Value::Null),
        any::<bool>().prop_map(|b| json!(b)),
    ]
}

fn leaf() -> impl Strategy<Value = Leaf> {
    let path = prop::sample::select(PATHS.to_vec());
    prop_oneof![
        (path.clone(), value()).prop_map(|(p, v)| Leaf::Eq(p, v)),
        (path.clone(), value()).prop_map(|(p, v)| Leaf::Ne(p, v)),
        (
            path.clone(),
            prop::sample::select(vec!["gt", "gte", "lt", "lte"]),
            prop_oneof![
                (0i64..6).prop_map(|n| json!(n)),
                prop::sample::select(vec!["x", "y"]).prop_map(|s| json!(s))
            ]
        )
            .prop_map(|(p, op, v)| {
                // `a` is an indexed number field: strings are refused (400).
                let v = if p == "a" && v.is_string() {
                    json!(2)
                } else {
                    v
                };
                Leaf::Cmp(p, op, v)
            }),
        (
            path.clone(),
            prop::collection::vec((0i64..6).prop_map(|n| json!(n)), 1..3)
        )
            .prop_map(|(p, v)| Leaf::In(p, v)),
        (path.clone(), any::<bool>()).prop_map(|(p, b)| Leaf::Exists(p, b)),
        path.prop_map(Leaf::Prefix),
        prop::sample::select(vec!["t1", "t2", "t3"]).prop_map(|s| Leaf::Contains(json!(s))),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    leaf()
        .prop_map(Node::Leaf)
        .prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(Node::And),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Node::Or),
                inner.prop_map(|n| Node::Not(Box::new(n))),
            ]
        })
}

fn to_json(node: &Node) -> Value {
    match node {
        Node::And(items) => json!({"and": items.iter().map(to_json).collect::<Vec<_>>()}),
        Node::Or(items) => json!({"or": items.iter().map(to_json).collect::<Vec<_>>()}),
        Node::Not(inner) => json!({"not": to_json(inner)}),
        Node::Leaf(leaf) => match leaf {
            Leaf::Eq(p, v) => json!({ *p: {"eq": v} }),
            Leaf::Ne(p, v) => json!({ *p: {"ne": v} }),
            Leaf::Cmp(p, op, v) => json!({ *p: { *op: v } }),
            Leaf::In(p, v) => json!({ *p: {"in": v} }),
            Leaf::Exists(p, b) => json!({ *p: {"exists": b} }),
            Leaf::Prefix(p) => json!({ *p: {"prefix": "x"} }),
            Leaf::Contains(v) => json!({"tags": {"contains": v}}),
        },
    }
}

fn lit(v: &Value) -> String {
    format!("'{}'::jsonb", v.to_string().replace('\'', "''"))
}

fn path_sql(p: &str) -> String {
    format!("(data #> '{{{}}}')", p.replace('.', ","))
}

/// The oracle: each operator written out by hand, in SQL with literals,
/// as a two-valued (never NULL) predicate.
fn to_sql(node: &Node) -> String {
    match node {
        Node::And(items) => format!(
            "({})",
            items.iter().map(to_sql).collect::<Vec<_>>().join(" AND ")
        ),
        Node::Or(items) => format!(
            "({})",
            items.iter().map(to_sql).collect::<Vec<_>>().join(" OR ")
        ),
        Node::Not(inner) => format!("(NOT {})", to_sql(inner)),
        Node::Leaf(leaf) => {
            let inner = match leaf {
                Leaf::Eq(p, v) => format!("{} = {}", path_sql(p), lit(v)),
                Leaf::Ne(p, v) => format!("NOT coalesce({} = {}, false)", path_sql(p), lit(v)),
                Leaf::Cmp(p, op, v) => {
                    let sym = match *op {
                        "gt" => ">",
                        "gte" => ">=",
                        "lt" => "<",
                        _ => "<=",
                    };
                    let kind = if v.is_number() { "number" } else { "string" };
                    format!(
                        "(jsonb_typeof({0}) = '{kind}' AND {0} {sym} {1})",
                        path_sql(p),
                        lit(v)
                    )
                }
                Leaf::In(p, vs) => format!(
                    "{} IN ({})",
                    path_sql(p),
                    vs.iter().map(lit).collect::<Vec<_>>().join(", ")
                ),
                Leaf::Exists(p, b) => format!("({} IS NOT NULL) = {b}", path_sql(p)),
                Leaf::Prefix(p) => format!(
                    "(jsonb_typeof({0}) = 'string' AND left({0} #>> '{{}}', 1) = 'x')",
                    path_sql(p)
                ),
                Leaf::Contains(v) => format!(
                    "(jsonb_typeof(data -> 'tags') = 'array' AND (data -> 'tags') @> {})",
                    lit(&json!([v]))
                ),
            };
            format!("coalesce(({inner}), false)")
        }
    }
}

#[test]
fn filters_and_sorts_match_hand_written_sql() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t = rt.block_on(async {
        let t = Tenant::provision().await;
        t.collection(json!({"name": "p", "indexed_fields": [{"path": "a", "type": "number"}]}))
            .await;
        // A small, deliberately messy data set: types vary per field.
        let values = [
            json!(0),
            json!(1),
            json!(3),
            json!(5),
            json!("x"),
            json!("xy"),
            json!("y"),
            Value::Null,
            json!(true),
            json!([1]),
        ];
        let mut ops = Vec::new();
        for i in 0..120usize {
            let mut data = serde_json::Map::new();
            if i % 7 != 0 {
                data.insert("a".into(), values[i % values.len()].clone());
            }
            if i % 5 != 1 {
                data.insert("b".into(), json!({"c": values[(i / 3) % values.len()]}));
            }
            if i % 3 != 2 {
                data.insert("s".into(), values[(i * 7) % values.len()].clone());
            }
            if i % 4 == 0 {
                data.insert("tags".into(), json!([format!("t{}", i % 3 + 1), "t9"]));
            } else if i % 4 == 1 {
                data.insert("tags".into(), json!(format!("t{}", i % 3 + 1)));
            }
            ops.push(
                json!({"op": "create", "id": format!("r{i:03}"), "data": Value::Object(data)}),
            );
        }
        bulk::run(
            &t.pool,
            "p",
            serde_json::from_value(json!({"operations": ops})).expect("b"),
        )
        .await
        .expect("bulk");
        t
    });
    let cid: uuid::Uuid = rt
        .block_on(
            sqlx::query_scalar("SELECT id FROM collections WHERE name = 'p'").fetch_one(&t.pool),
        )
        .expect("id");
    let sorts = prop::sample::select(vec![
        vec![],
        vec!["a"],
        vec!["-a"],
        vec!["s", "-b.c"],
        vec!["-s"],
    ]);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    runner
        .run(&(node(), sorts, 1u32..40), |(node, sort, limit)| {
            let filter = filter::parse_json(&to_json(&node), "").expect("generated filters parse");
            // Through the API, page by page.
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let request = list::ListRequest {
                    filter: Some(filter.clone()),
                    sort: sort.iter().map(|s| s.to_string()).collect(),
                    limit: Some(limit),
                    cursor,
                    count: false,
                };
                let (_, _, page) = rt.block_on(async { body(list::list(&t.pool, &t.codec, "p", request, &uri("/x")).await.expect("list")).await });
                got.extend(page["items"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_string()));
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            // By hand: the oracle predicate, and the documented order.
            let order: Vec<String> = sort
                .iter()
                .map(|s| {
                    let (desc, p) = s.strip_prefix('-').map_or((false, *s), |p| (true, p));
                    let expr = if p == "a" {
                        "(CASE WHEN jsonb_typeof(data -> 'a') = 'number' THEN (data -> 'a')::numeric END)".to_string()
                    } else {
                        path_sql(p)
                    };
                    format!("{expr} {}", if desc { "DESC" } else { "ASC" })
                })
                .chain(std::iter::once(if sort.first().is_some_and(|s| s.starts_with('-')) { "id DESC".to_string() } else { "id ASC".to_string() }))
                .collect();
            let sql = format!(
                "SELECT id FROM documents WHERE collection_id = '{cid}' AND {} ORDER BY {}",
                to_sql(&node),
                order.join(", ")
            );
            let want: Vec<String> = rt.block_on(sqlx::query_scalar(&sql).fetch_all(&t.pool)).expect("oracle");
            prop_assert_eq!(got, want, "{}", sql);
            Ok(())
        })
        .expect("property");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary JSON never panics the parser; errors are 400s.
    #[test]
    fn the_filter_parser_never_panics(v in arbitrary_json()) {
        match filter::parse_json(&v, "/filter") {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.into_api().kind().status.as_u16(), 400),
        }
    }

    /// Nor do arbitrary query strings.
    #[test]
    fn the_query_string_parser_never_panics(s in "[a-z\\[\\]=&.,%0-9'\";-]{0,80}") {
        if let Err(e) = list::parse_query_string(Some(&s)) {
            prop_assert_eq!(e.kind().status.as_u16(), 400);
        }
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z.'\";]{0,8}".prop_map(Value::String),
        prop::sample::select(vec![
            "and", "or", "not", "eq", "in", "gt", "exists", "contains", "prefix"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(12, 200, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "and", "or", "not", "eq", "ne", "in", "nin", "gt", "lte", "exists",
                        "prefix", "contains", "a", "a.b", "x'y", ""
                    ])
                    .prop_map(String::from),
                    "[a-z.]{0,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
