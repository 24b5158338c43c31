//! Vector recall and latency: 100,000 clustered vectors of 128 dimensions in
//! a provisioned tenant, searched through the data plane's vector engine
//! (the same SQL the API runs), against brute-force exact search computed in
//! the same run. Reports recall@10 for single-collection search (one
//! 100,000-vector collection) and for the two-step cross-collection search
//! (the same vectors split over 8 collections), at several `ef_search`
//! values, and the latency of indexed search beside an exact scan in SQL.
//!
//! `cargo run --release -p strata-bench --bin vector-recall [N] [DIM]`
//! with the stack's env sourced.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use strata_dataplane::vectors::index::{self, BuildOutcome, VectorSettings};
use strata_dataplane::vectors::model::{SearchParams, ValidItem, VectorCollection};
use strata_dataplane::vectors::{search, store};
use strata_operator::host::LocalHost;
use strata_operator::placement::TenantNames;
use strata_operator::provision::{self, Provisioner, TenantInput};
use strata_tests::operator_support::{
    default_clusters, drop_tenant_storage, settings, test_catalog,
};
use strata_tests::{env, unique, with_database};
use uuid::Uuid;

const K: usize = 10;
const QUERIES: usize = 200;
const PARTS: usize = 8;
const CLUSTERS: usize = 100;
const SPREAD: f32 = 0.3;

struct Data {
    rng: StdRng,
    centres: Vec<Vec<f32>>,
}

impl Data {
    fn new(dim: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(42);
        let centres = (0..CLUSTERS)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        Self { rng, centres }
    }

    fn point(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..self.centres.len());
        let centre = self.centres[c].clone();
        centre
            .iter()
            .map(|x| {
                let u1: f32 = self.rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = self.rng.random_range(0.0..1.0);
                x + SPREAD * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    }
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    1.0 - dot / (na.sqrt() * nb.sqrt())
}

/// Exact top-k (collection part, id) by brute force in Rust.
fn exact(items: &[ValidItem], part_of: &[usize], q: &[f32]) -> Vec<(usize, String)> {
    let mut all: Vec<(f64, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (cosine_distance(&it.vector, q), i))
        .collect();
    all.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
    all.truncate(K);
    all.iter()
        .map(|(_, i)| (part_of[*i], items[*i].id.clone()))
        .collect()
}

async fn create(pool: &PgPool, name: &str, dim: usize) -> anyhow::Result<VectorCollection> {
    sqlx::query(
        "INSERT INTO collections (name, vector_dimension, vector_metric, hnsw_m, hnsw_ef_construction) \
         VALUES ($1, $2, 'cosine', 16, 64)",
    )
    .bind(name)
    .bind(i32::try_from(dim)?)
    .execute(pool)
    .await?;
    store::find_collection(pool, name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dim: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);

    let (_catalog_db, catalog) = test_catalog().await;
    let host = LocalHost {
        dir: std::env::temp_dir().join(unique("strata-vector-bench-")),
    };
    let input = TenantInput {
        id: Uuid::new_v4(),
        name: "vector-bench".into(),
        namespace: "bench".into(),
        spec: serde_json::from_value(
            serde_json::json!({"displayName": "Vector bench", "adminEmail": "b@example.com"}),
        )?,
        rotation: Default::default(),
    };
    let cluster = provision::resolve_cluster(&default_clusters(), "default")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Provisioner {
        settings: &settings(None),
        catalog: &catalog,
        cluster: &cluster,
        host: &host,
    }
    .provision(&input)
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let result = run(input.id, n, dim).await;
    drop_tenant_storage(input.id).await;
    result
}

async fn run(tenant: Uuid, n: usize, dim: usize) -> anyhow::Result<()> {
    let names = TenantNames::for_tenant(tenant);
    let url = with_database(
        &env("STRATA_DATAPLANE_DATABASE_URL"),
        names.database.as_str(),
    );
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .context("data plane role")?;
    let owner = index::owner_connector(pool.clone(), names.owner.as_str().to_string());

    let mut data = Data::new(dim);
    let items: Vec<ValidItem> = (0..n)
        .map(|i| ValidItem {
            id: format!("v{i}"),
            vector: data.point(),
            metadata: serde_json::json!({}),
            document_id: None,
        })
        .collect();
    let part_of: Vec<usize> = (0..n).map(|i| i % PARTS).collect();
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| data.point()).collect();

    let single = create(&pool, "all", dim).await?;
    let mut parts = Vec::new();
    for p in 0..PARTS {
        parts.push(create(&pool, &format!("part{p}"), dim).await?);
    }
    let started = Instant::now();
    for chunk in items.chunks(1000) {
        store::upsert(&pool, &single, chunk)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (p, collection) in parts.iter().enumerate() {
        let mine: Vec<ValidItem> = items
            .iter()
            .zip(&part_of)
            .filter(|(_, q)| **q == p)
            .map(|(i, _)| i.clone())
            .collect();
        for chunk in mine.chunks(1000) {
            store::upsert(&pool, collection, chunk)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    println!(
        "inserted 2 × {n} vectors of {dim} dims in {:.1?}",
        started.elapsed()
    );

    let settings = VectorSettings {
        index_threshold: 1000,
        ..VectorSettings::default()
    };
    let build = |c: Uuid| {
        let owner = owner.clone();
        let settings = settings.clone();
        async move {
            let mut conn: PgConnection = owner().await?;
            let t = Instant::now();
            let outcome = index::build(&mut conn, c, &settings).await?;
            conn.close().await?;
            anyhow::ensure!(outcome == BuildOutcome::Built, "build: {outcome:?}");
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    println!(
        "HNSW build (m=16, ef_construction=64), {n} vectors: {:.1?}",
        build(single.id).await?
    );
    let mut parts_total = Duration::ZERO;
    for c in &parts {
        parts_total += build(c.id).await?;
    }
    println!(
        "HNSW builds, {PARTS} collections of {}: {parts_total:.1?}",
        n / PARTS
    );
    let single = store::find_collection(&pool, "all")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reloaded = Vec::new();
    for c in &parts {
        reloaded.push(
            store::find_collection(&pool, &c.name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }

    let t = Instant::now();
    let truth: Vec<Vec<(usize, String)>> =
        queries.iter().map(|q| exact(&items, &part_of, q)).collect();
    println!(
        "brute force (Rust) for {QUERIES} queries: {:.1?}",
        t.elapsed()
    );

    println!("\nef_search | single recall@10 | p50 | p99 | cross (8) recall@10 | p50 | p99");
    for ef in [40u32, 64, 100, 200] {
        let (mut hits_single, mut hits_cross) = (0usize, 0usize);
        let (mut lat_single, mut lat_cross) = (Vec::new(), Vec::new());
        for (q, want) in queries.iter().zip(&truth) {
            let params = SearchParams {
                vector: q.clone(),
                k: K as u32,
                filter: None,
                ef_search: ef,
                include_metadata: false,
                include_document: false,
                include_vector: false,
            };
            let t = Instant::now();
            let got = search::search_one(&pool, &single, &params, 20_000)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            lat_single.push(t.elapsed());
            hits_single += got
                .iter()
                .filter(|h| want.iter().any(|(_, id)| *id == h.id))
                .count();
            let t = Instant::now();
            let got = search::search_many(&pool, &reloaded, &params, 20_000)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            lat_cross.push(t.elapsed());
            hits_cross += got
                .iter()
                .filter(|h| {
                    want.iter().any(|(p, id)| {
                        *id == h.id && h.collection.as_deref() == Some(reloaded[*p].name.as_str())
                    })
                })
                .count();
        }
        lat_single.sort();
        lat_cross.sort();
        let total = (QUERIES * K) as f64;
        println!(
            "{ef:>9} | {:>16.4} | {:>5.1?} | {:>5.1?} | {:>19.4} | {:>5.1?} | {:>5.1?}",
            hits_single as f64 / total,
            percentile(&lat_single, 0.5),
            percentile(&lat_single, 0.99),
            hits_cross as f64 / total,
            percentile(&lat_cross, 0.5),
            percentile(&lat_cross, 0.99),
        );
    }

    // Baseline: the same top-10 as an exact scan in SQL (index scans off).
    let mut lat_exact = Vec::new();
    for q in queries.iter().take(20) {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL enable_indexscan = off")
            .execute(&mut *tx)
            .await?;
        let params = SearchParams {
            vector: q.clone(),
            k: K as u32,
            filter: None,
            ef_search: 40,
            include_metadata: false,
            include_document: false,
            include_vector: false,
        };
        let t = Instant::now();
        store::search_in(&mut tx, &single, &params, K as u32, 20_000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lat_exact.push(t.elapsed());
        tx.rollback().await?;
    }
    lat_exact.sort();
    println!(
        "\nexact scan in SQL over {n} vectors (baseline): p50 {:.1?} p99 {:.1?}",
        percentile(&lat_exact, 0.5),
        percentile(&lat_exact, 0.99)
    );
    pool.close().await;
    Ok(())
}
