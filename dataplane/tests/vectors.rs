//! The vector engine against the real PostgreSQL + pgvector, in a tenant
//! provisioned in-process and reached as the data plane role (the HNSW
//! DDL as the tenant's owner, as `owner_ddl` does).

mod vectors_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};
use strata_dataplane::http::ApiError;
use strata_dataplane::vectors::index::{self, BuildOutcome, IndexBuilder, VectorSettings};
use strata_dataplane::vectors::model::{
    CrossSearchRequest, IndexState, Metric, SearchParams, SearchRequest, UpsertRequest, ValidItem,
    VectorCollection, validate_upsert,
};
use strata_dataplane::vectors::{search, store};
use vectors_support::{Clustered, Tenant, exact_top_k};

fn settings(threshold: i64) -> VectorSettings {
    VectorSettings {
        index_threshold: threshold,
        ..VectorSettings::default()
    }
}

async fn build_now(t: &Tenant, c: &VectorCollection, threshold: i64) -> BuildOutcome {
    let mut conn: PgConnection = (t.connector())().await.expect("owner connection");
    let outcome = index::build(&mut conn, c.id, &settings(threshold))
        .await
        .expect("build");
    conn.close().await.expect("close");
    outcome
}

fn params(vector: Vec<f32>, k: u32) -> SearchParams {
    SearchParams {
        vector,
        k,
        filter: None,
        ef_search: 40.max(k),
        include_metadata: false,
        include_document: false,
        include_vector: false,
    }
}

fn field_pointers(error: &ApiError) -> Vec<String> {
    match error {
        ApiError::Validation { errors, .. } => errors.iter().map(|e| e.pointer.clone()).collect(),
        other => panic!("expected a 422, got {other:?}"),
    }
}

/// Plan text of the search SQL for `c`, as a *generic* plan of a prepared
/// statement (what sqlx's statement cache ends up running): the case a
/// `collection_id = $n` predicate would lose the partial index in.
async fn generic_plan(t: &Tenant, c: &VectorCollection, p: &SearchParams) -> String {
    let mut conn = t.pool.acquire().await.expect("conn");
    let sql = store::search_sql(c, false, p, p.k);
    let name = format!("s_{}", c.id.simple());
    sqlx::query(&format!("PREPARE {name}(real[]) AS {sql}"))
        .execute(&mut *conn)
        .await
        .expect("prepare");
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("generic");
    let vector = format!(
        "'{{{}}}'",
        p.vector
            .iter()
            .map(f32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({vector})"))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    for cleanup in [format!("DEALLOCATE {name}"), "RESET plan_cache_mode".into()] {
        sqlx::query(&cleanup)
            .execute(&mut *conn)
            .await
            .expect("cleanup");
    }
    rows.join("\n")
}

#[tokio::test]
async fn upsert_get_delete_and_validation() {
    let t = Tenant::provision().await;
    let c = t.collection("docs", 3, Metric::Cosine).await;

    // Documents link by id; the hit carries the document on request.
    sqlx::query("INSERT INTO documents (collection_id, id, data) VALUES ($1, 'doc-1', '{\"title\": \"one\"}')")
        .bind(c.id)
        .execute(&t.pool)
        .await
        .expect("document");
    let request: UpsertRequest = serde_json::from_value(json!({"vectors": [
        {"id": "a", "vector": [1, 0, 0], "metadata": {"tag": "x"}, "document_id": "doc-1"},
        {"id": "b", "vector": [0, 1, 0], "metadata": {"tag": "y"}},
        {"id": "c", "vector": [0.9, 0.1, 0]},
    ]}))
    .expect("shape");
    let items = validate_upsert(request, &c).expect("valid");
    let done = store::upsert(&t.pool, &c, &items).await.expect("upsert");
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|d| d.version == 1));

    // Replacing bumps the version.
    let again = store::upsert(&t.pool, &c, &items[..1])
        .await
        .expect("upsert");
    assert_eq!(again[0].version, 2);
    let got = store::get(&t.pool, &c, "a").await.expect("get");
    assert_eq!(got.vector, vec![1.0, 0.0, 0.0]);
    assert_eq!(got.metadata, json!({"tag": "x"}));
    assert_eq!(got.document_id.as_deref(), Some("doc-1"));
    assert!(matches!(
        store::get(&t.pool, &c, "nope").await,
        Err(ApiError::NotFound)
    ));

    // Search: cosine similarity, nearest first, with metadata and document.
    let mut p = params(vec![1.0, 0.0, 0.0], 2);
    p.include_metadata = true;
    p.include_document = true;
    let hits = search::search_one(&t.pool, &c, &p, 20_000)
        .await
        .expect("search");
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert!((hits[0].score - 1.0).abs() < 1e-6, "{hits:?}");
    assert_eq!(hits[0].document, Some(json!({"title": "one"})));
    assert_eq!(hits[1].document, Some(serde_json::Value::Null));
    let body = serde_json::to_value(&hits[0]).expect("json");
    assert_eq!(body["metadata"], json!({"tag": "x"}));

    // 422s with pointers: wrong length, out-of-range, zero cosine vector.
    let bad: UpsertRequest = serde_json::from_value(json!({"vectors": [
        {"id": "d", "vector": [1, 2]},
        {"id": "e", "vector": [1, 1e39, 0]},
        {"id": "f", "vector": [0, 0, 0]},
    ]}))
    .expect("shape");
    let errors = validate_upsert(bad, &c).expect_err("invalid");
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "/vectors/0/vector",
            "/vectors/1/vector/1",
            "/vectors/2/vector"
        ]
    );
    // NaN/Infinity as clients' serialisers write them: 422, not 400.
    let body = br#"{"vectors": [{"id": "g", "vector": [NaN, 1, -Infinity]}]}"#;
    assert!(serde_json::from_slice::<serde_json::Value>(body).is_err());
    let rewritten = strata_dataplane::vectors::nonfinite::rewrite(body).expect("rewritten");
    let request: UpsertRequest = serde_json::from_slice(&rewritten).expect("shape");
    let errors = validate_upsert(request, &c).expect_err("non-finite");
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/vectors/0/vector/0", "/vectors/0/vector/2"]);
    let wrong = search::single_params(
        serde_json::from_value::<SearchRequest>(json!({"vector": [1, 2, 3, 4]})).expect("shape"),
        &c,
    )
    .expect_err("wrong length");
    assert_eq!(field_pointers(&wrong), ["/vector"]);

    // Collections: hostile names are 400, missing 404, no vector config 409.
    for (name, status) in [("x'; DROP TABLE embeddings; --", 400), ("missing", 404)] {
        let error = store::find_collection(&t.pool, name).await.expect_err(name);
        assert_eq!(error.kind().status.as_u16(), status, "{name}");
    }
    sqlx::query("INSERT INTO collections (name) VALUES ('plain')")
        .execute(&t.pool)
        .await
        .expect("plain collection");
    let error = store::find_collection(&t.pool, "plain")
        .await
        .expect_err("plain");
    assert_eq!(error.kind().status.as_u16(), 409);

    // Delete by filter, then by ids.
    assert_eq!(
        store::delete_matching(&t.pool, &c, &json!({"tag": "y"}))
            .await
            .expect("delete"),
        1
    );
    assert_eq!(
        store::delete_ids(&t.pool, &c, &["a".into(), "zz".into()])
            .await
            .expect("delete"),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM embeddings WHERE collection_id = $1")
        .bind(c.id)
        .fetch_one(&t.pool)
        .await
        .expect("count");
    assert_eq!(left, 1);
}

#[tokio::test]
async fn indexed_collections_use_their_index_and_small_ones_scan_exactly() {
    let t = Tenant::provision().await;
    let threshold = 2000;
    let big = t.collection("big", 16, Metric::L2).await;
    let small = t.collection("small", 16, Metric::L2).await;
    let mut data = Clustered::new(1, 16, 8, 0.1);
    let big_items = data.items("b", 3000);
    let small_items = data.items("s", 100);
    t.insert(&big, &big_items).await;
    t.insert(&small, &small_items).await;
    t.analyze().await;

    // Below the threshold: no build, exact scan.
    assert_eq!(
        build_now(&t, &small, threshold).await,
        BuildOutcome::NotNeeded
    );
    let small = t.reload("small").await;
    assert_eq!(small.index, IndexState::None);
    let p = params(small_items[0].vector.clone(), 10);
    let plan = generic_plan(&t, &small, &p).await;
    assert!(
        !plan.contains("embeddings_hnsw_"),
        "small collection: {plan}"
    );

    // Past it: the background builder (as after a write) takes it from
    // none through building to ready.
    let builder = IndexBuilder::new(settings(threshold));
    builder
        .after_write(&t.pool, t.id, &big, t.connector())
        .await
        .expect("after write");
    let deadline = Instant::now() + Duration::from_secs(60);
    let big = loop {
        let c = t.reload("big").await;
        if c.index == IndexState::Ready {
            break c;
        }
        assert_ne!(c.index, IndexState::Failed);
        assert!(Instant::now() < deadline, "index not ready: {:?}", c.index);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        build_now(&t, &big, threshold).await,
        BuildOutcome::AlreadyReady
    );
    t.analyze().await;

    // A generic plan still uses the partial index: the id is a literal.
    let p = params(big_items[0].vector.clone(), 10);
    let plan = generic_plan(&t, &big, &p).await;
    assert!(
        plan.contains(&format!("Index Scan using {}", big.index_name())),
        "{plan}"
    );
    // And the small collection does not pick up the big one's index.
    let plan = generic_plan(&t, &small, &p).await;
    assert!(!plan.contains("hnsw"), "{plan}");

    // Writes go on while indexed; results stay right.
    let hits = search::search_one(&t.pool, &big, &p, 20_000)
        .await
        .expect("search");
    assert_eq!(hits[0].id, "b0");
    assert!(hits[0].distance.abs() < 1e-6);
    assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
}

#[tokio::test]
async fn filtered_search_returns_k_rows_when_k_match() {
    let t = Tenant::provision().await;
    let c = t.collection("filtered", 16, Metric::Cosine).await;
    let mut data = Clustered::new(2, 16, 8, 0.2);
    let items = data.items("v", 3000);
    t.insert(&c, &items).await;
    assert_eq!(build_now(&t, &c, 1000).await, BuildOutcome::Built);
    let c = t.reload("filtered").await;
    t.analyze().await;

    // 1% of the rows match. On a collection this small the planner scans
    // exactly when filtering (right, and exact); a large one is served by
    // its index, which this forces: with ef_search = k a plain HNSW scan
    // finds ~k/100 matching rows, the iterative scan keeps going until k
    // pass.
    let k = 10;
    let mut p = params(items[5].vector.clone(), k);
    p.ef_search = k;
    p.filter = Some(json!({"bucket": 7}));
    let matching: HashSet<String> = items
        .iter()
        .filter(|i| i.metadata["bucket"] == 7)
        .map(|i| i.id.clone())
        .collect();
    assert!(matching.len() >= k as usize);

    let mut tx = t.pool.begin().await.expect("tx");
    for off in ["enable_seqscan", "enable_bitmapscan", "enable_sort"] {
        sqlx::query(&format!("SET LOCAL {off} = off"))
            .execute(&mut *tx)
            .await
            .expect("planner setting");
    }
    let hits = store::search_in(&mut tx, &c, &p, k, 20_000)
        .await
        .expect("search");
    let sql = format!("EXPLAIN {}", store::search_sql(&c, true, &p, k));
    let plan: Vec<String> = sqlx::query_scalar(&sql)
        .bind(&p.vector)
        .bind(p.filter.as_ref())
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("Index Scan using {}", c.index_name())),
        "{plan}"
    );
    assert_eq!(hits.len(), k as usize, "plan:\n{plan}");
    assert!(hits.iter().all(|h| matching.contains(&h.id)));
    assert!(
        hits.windows(2).all(|w| w[0].distance <= w[1].distance),
        "re-sorted"
    );

    // The pitfall it avoids: the same scan without iterative scans.
    sqlx::query("SET LOCAL hnsw.iterative_scan = off")
        .execute(&mut *tx)
        .await
        .expect("off");
    let plain: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM ({}) s",
        store::search_sql(&c, true, &p, k)
    ))
    .bind(&p.vector)
    .bind(p.filter.as_ref())
    .fetch_all(&mut *tx)
    .await
    .expect("plain scan");
    assert!(
        plain.len() < k as usize,
        "without iterative scans: {}",
        plain.len()
    );
    tx.rollback().await.expect("rollback");

    // Unforced, the planner's own choice also returns k.
    let hits = search::search_one(&t.pool, &c, &p, 20_000)
        .await
        .expect("search");
    assert_eq!(hits.len(), k as usize);
}

#[tokio::test]
async fn cross_collection_search_merges_and_refuses_mixed_configurations() {
    let t = Tenant::provision().await;
    let mut data = Clustered::new(3, 8, 6, 0.15);
    let a = t.collection("a", 8, Metric::L2).await;
    let b = t.collection("b", 8, Metric::L2).await;
    let other_dim = t.collection("wide", 9, Metric::L2).await;
    let other_metric = t.collection("cos", 8, Metric::Cosine).await;
    let a_items = data.items("a", 400);
    let b_items = data.items("b", 400);
    t.insert(&a, &a_items).await;
    t.insert(&b, &b_items).await;
    // One indexed, one exact: the merge does not care.
    assert_eq!(build_now(&t, &a, 100).await, BuildOutcome::Built);
    let a = t.reload("a").await;

    let request = |names: &[&str]| -> CrossSearchRequest {
        serde_json::from_value(json!({
            "collections": names,
            "vector": a_items[3].vector,
            "k": 10,
        }))
        .expect("shape")
    };
    let error = search::cross_params(
        request(&["a", "wide", "cos"]).into_parts().1,
        &[a.clone(), other_dim, other_metric],
    )
    .expect_err("mixed");
    assert_eq!(field_pointers(&error), ["/collections/1", "/collections/2"]);

    let p = search::cross_params(request(&["a", "b"]).into_parts().1, &[a.clone(), b.clone()])
        .expect("same");
    let hits = search::search_many(&t.pool, &[a.clone(), b.clone()], &p, 20_000)
        .await
        .expect("search");
    let got: Vec<(String, String)> = hits
        .iter()
        .map(|h| (h.collection.clone().unwrap_or_default(), h.id.clone()))
        .collect();
    let want = exact_top_k(
        Metric::L2,
        &[("a", &a_items), ("b", &b_items)],
        &a_items[3].vector,
        10,
    );
    let overlap = got.iter().filter(|g| want.contains(g)).count();
    assert!(overlap >= 9, "got {got:?}\nwant {want:?}");
    assert_eq!(got[0], ("a".to_string(), "a3".to_string()));
}

/// Recall@10 against brute force, small enough for CI on two cores (the
/// 100,000 × 128 run is `bench/src/vector_recall.rs`).
#[tokio::test]
async fn recall_at_10_single_and_across_collections() {
    let t = Tenant::provision().await;
    let (dim, n, parts) = (32, 4000, 4);
    let mut data = Clustered::new(4, dim, 20, 0.25);
    let single = t.collection("single", dim as i32, Metric::Cosine).await;
    let items = data.items("v", n);
    t.insert(&single, &items).await;
    let mut split: Vec<(VectorCollection, Vec<ValidItem>)> = Vec::new();
    for (i, chunk) in items.chunks(n / parts).enumerate() {
        let c = t
            .collection(&format!("part{i}"), dim as i32, Metric::Cosine)
            .await;
        t.insert(&c, chunk).await;
        split.push((c, chunk.to_vec()));
    }
    let started = Instant::now();
    assert_eq!(build_now(&t, &single, 500).await, BuildOutcome::Built);
    for (c, _) in &split {
        assert_eq!(build_now(&t, c, 500).await, BuildOutcome::Built);
    }
    eprintln!("index builds: {:?}", started.elapsed());
    let single = t.reload("single").await;
    let mut parts_now = Vec::new();
    for (c, _) in &split {
        parts_now.push(t.reload(&c.name).await);
    }
    t.analyze().await;

    // Measured through the indexes, not an exact scan.
    let plan = generic_plan(&t, &single, &params(items[0].vector.clone(), 10)).await;
    assert!(plan.contains(&single.index_name()), "{plan}");
    let plan = generic_plan(&t, &parts_now[0], &params(items[0].vector.clone(), 40)).await;
    assert!(plan.contains(&parts_now[0].index_name()), "{plan}");

    let queries: Vec<Vec<f32>> = (0..50).map(|_| data.point().1).collect();
    let sets: Vec<(&str, &[ValidItem])> = split
        .iter()
        .map(|(c, i)| (c.name.as_str(), i.as_slice()))
        .collect();
    let (mut single_hits, mut cross_hits) = (0, 0);
    for q in &queries {
        let p = params(q.clone(), 10);
        let want: HashSet<String> = exact_top_k(Metric::Cosine, &[("single", &items)], q, 10)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let got = search::search_one(&t.pool, &single, &p, 20_000)
            .await
            .expect("search");
        single_hits += got.iter().filter(|h| want.contains(&h.id)).count();

        let want: HashSet<(String, String)> = exact_top_k(Metric::Cosine, &sets, q, 10)
            .into_iter()
            .collect();
        let got = search::search_many(&t.pool, &parts_now, &p, 20_000)
            .await
            .expect("cross");
        cross_hits += got
            .iter()
            .filter(|h| want.contains(&(h.collection.clone().unwrap_or_default(), h.id.clone())))
            .count();
    }
    let total = (queries.len() * 10) as f64;
    let (single_recall, cross_recall) = (single_hits as f64 / total, cross_hits as f64 / total);
    eprintln!("recall@10 single {single_recall:.3}, cross {cross_recall:.3}");
    assert!(single_recall >= 0.95, "single {single_recall}");
    assert!(cross_recall >= 0.95, "cross {cross_recall}");
}
