//! Throughput and latency of the data plane's REST API against the same
//! queries sent directly with sqlx, same data, same run.
//!
//! The data plane runs as its own process (`target/release/strata-dataplane`);
//! this process provisions a tenant in a catalog of its own (the operator's
//! provisioner, in-process), loads the data, starts the data plane on that
//! catalog, accepts the tenant's admin invitation through the API for an API
//! key, and then drives each scenario with a fixed number of HTTP/1.1
//! keep-alive clients, and beside it the same statement sent directly as the
//! data plane role on a pool of the same size:
//!
//! 1. `get`: a document by id, random among 10,000;
//! 2. `list`: `filter[category]=…&sort=price&limit=20` (`price` an indexed
//!    number field);
//! 3. `insert`: POST a document (direct: the same `INSERT … RETURNING`);
//! 4. `search`: top-10 in a 20,000 × 128 cosine collection with its HNSW
//!    index (direct: the same transaction and statements as the data plane's
//!    search).
//!
//! Each side runs twice per scenario, alternating (API, direct, API,
//! direct), so drift in the machine's load hits both. It also breaks the
//! API's cost down for `get` and `search`: the API with a JWT (no key
//! lookup) and, directly, the statements the API runs for the request (key
//! lookup, collection, query).
//!
//! `api-bench [SECONDS] [CONCURRENCY] [SCENARIOS]` (defaults 10, 16 and
//! `get,list,search,insert`; SECONDS per side and scenario), with the stack's env sourced, after
//! `cargo build --release -p strata-dataplane -p strata-bench`.
//! Everything it creates (catalog, tenant database and roles, files) is
//! removed at the end, also when it fails or is interrupted.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::{CLOCK_TICKS, cpu_ticks, peak_rss_kib};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use strata_dataplane::documents::store as docs;
use strata_dataplane::identity::keys;
use strata_dataplane::vectors::index::{self, BuildOutcome, VectorSettings};
use strata_dataplane::vectors::model::{
    DEFAULT_EF_SEARCH, SearchParams, ValidItem, VectorCollection,
};
use strata_dataplane::vectors::store as vstore;
use strata_operator::placement::TenantNames;
use strata_tests::process::{Running, free_port};
use strata_tests::{env, with_database};
use uuid::Uuid;

const DOCS: usize = 10_000;
const CATEGORIES: usize = 10;
const VECTORS: usize = 20_000;
const DIM: usize = 128;
const CLUSTERS: usize = 50;
const QUERIES: usize = 1_000;
const K: u32 = 10;
const PAGE: u32 = 20;
const MAX_SCAN_TUPLES: u32 = index::DEFAULT_MAX_SCAN_TUPLES;
const JWT_SECRET: &str = "api-bench-hs256-secret-0123456789abcdef";
const TENANT: &str = "api-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Get,
    List,
    Insert,
    Search,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Insert => "insert",
            Self::Search => "search",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Get => "document GET by id",
            Self::List => "filtered list page (20, sorted)",
            Self::Insert => "insert (POST document)",
            Self::Search => "vector search k=10 (HNSW)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Through the data plane with the API key.
    Api,
    /// Through the data plane with an HS256 JWT (no key lookup).
    ApiJwt,
    /// The query alone, directly.
    Direct,
    /// Directly, every statement the API runs for the request.
    DirectAsApi,
    /// The query alone, on a pool that does not ping a connection before
    /// handing it out (sqlx's `test_before_acquire`, on by default and in
    /// the data plane's pools: one more round trip per acquire).
    DirectNoPing,
}

/// What the workers share.
struct Ctx {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/v1/tenants/<tenant>`.
    base: String,
    key_auth: String,
    key_id: String,
    jwt_auth: String,
    pool: PgPool,
    pool_no_ping: PgPool,
    docs: Uuid,
    writes: Uuid,
    vectors: VectorCollection,
    queries: Vec<Vec<f32>>,
    /// The search request bodies of `queries`, serialised once.
    query_bodies: Vec<String>,
    dataplane_pid: u32,
}

fn doc_id(i: usize) -> String {
    format!("d{i:05}")
}

fn doc_data(rng: &mut StdRng) -> Value {
    json!({
        "category": format!("c{}", rng.random_range(0..CATEGORIES)),
        "price": rng.random_range(0..100_000),
        "title": format!("item {}", rng.random_range(0..1_000_000)),
        "tags": ["bench", "api"],
        "in_stock": rng.random_bool(0.5),
    })
}

/// The list query exactly as `documents::list` builds it for
/// `filter[category]=…&sort=price&limit=20` (an indexed number field).
fn list_sql() -> String {
    let price = "(CASE WHEN jsonb_typeof(data #> $2) = 'number' THEN (data #> $3)::numeric END)";
    let order = price.replace("$2", "$5").replace("$3", "$6");
    format!(
        "SELECT {}, ({price})::text FROM documents WHERE collection_id = $1 AND (data @> $4) \
         ORDER BY {order} ASC, id ASC LIMIT $7",
        docs::document_columns()
    )
}

fn insert_sql() -> String {
    format!(
        "INSERT INTO documents (collection_id, id, data) VALUES ($1, $2, $3) \
         ON CONFLICT (collection_id, id) DO NOTHING RETURNING {}",
        docs::document_columns()
    )
}

fn search_params(vector: &[f32]) -> SearchParams {
    SearchParams {
        vector: vector.to_vec(),
        k: K,
        filter: None,
        ef_search: DEFAULT_EF_SEARCH,
        include_metadata: false,
        include_document: false,
        include_vector: false,
    }
}

async fn expect_ok(response: reqwest::Response, want: u16) -> anyhow::Result<()> {
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status.as_u16() == want,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

fn api_err(e: strata_dataplane::http::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// One request of `scenario` on `side`.
async fn once(ctx: &Ctx, scenario: Scenario, side: Side, rng: &mut StdRng) -> anyhow::Result<()> {
    let auth = match side {
        Side::ApiJwt => &ctx.jwt_auth,
        _ => &ctx.key_auth,
    };
    let api = matches!(side, Side::Api | Side::ApiJwt);
    let pool = if side == Side::DirectNoPing {
        &ctx.pool_no_ping
    } else {
        &ctx.pool
    };
    if side == Side::DirectAsApi {
        // What `TenantContext` reads per request (roles are cached).
        keys::lookup(pool, &ctx.key_id)
            .await
            .map_err(api_err)?
            .context("key")?;
    }
    match scenario {
        Scenario::Get => {
            let id = doc_id(rng.random_range(0..DOCS));
            if api {
                let r = ctx
                    .http
                    .get(format!("{}/collections/docs/documents/{id}", ctx.base))
                    .header("authorization", auth)
                    .send()
                    .await?;
                expect_ok(r, 200).await
            } else {
                if side == Side::DirectAsApi {
                    docs::get_collection(pool, "docs").await.map_err(api_err)?;
                }
                docs::find_document(pool, ctx.docs, &id, false)
                    .await
                    .map_err(api_err)?
                    .context("document missing")?;
                Ok(())
            }
        }
        Scenario::List => {
            let category = format!("c{}", rng.random_range(0..CATEGORIES));
            if api {
                let r = ctx
                    .http
                    .get(format!(
                        "{}/collections/docs/documents?filter[category]={category}&sort=price&limit={PAGE}",
                        ctx.base
                    ))
                    .header("authorization", auth)
                    .send()
                    .await?;
                expect_ok(r, 200).await
            } else {
                if side == Side::DirectAsApi {
                    docs::get_collection(pool, "docs").await.map_err(api_err)?;
                }
                let path = vec!["price".to_string()];
                let rows = sqlx::query(&list_sql())
                    .persistent(false)
                    .bind(ctx.docs)
                    .bind(&path)
                    .bind(&path)
                    .bind(json!({ "category": category }))
                    .bind(&path)
                    .bind(&path)
                    .bind(i64::from(PAGE) + 1)
                    .fetch_all(pool)
                    .await?;
                anyhow::ensure!(rows.len() > PAGE as usize, "short page");
                Ok(())
            }
        }
        Scenario::Insert => {
            let data = doc_data(rng);
            if api {
                let r = ctx
                    .http
                    .post(format!("{}/collections/writes/documents", ctx.base))
                    .header("authorization", auth)
                    .json(&json!({ "data": data }))
                    .send()
                    .await?;
                expect_ok(r, 201).await
            } else {
                let id = Uuid::now_v7().to_string();
                let row: Option<docs::Document> = sqlx::query_as(&insert_sql())
                    .bind(ctx.writes)
                    .bind(&id)
                    .bind(&data)
                    .fetch_optional(pool)
                    .await?;
                row.context("not inserted")?;
                Ok(())
            }
        }
        Scenario::Search => {
            let q = rng.random_range(0..QUERIES);
            if api {
                let r = ctx
                    .http
                    .post(format!("{}/collections/vectors/search", ctx.base))
                    .header("authorization", auth)
                    .header("content-type", "application/json")
                    .body(ctx.query_bodies[q].clone())
                    .send()
                    .await?;
                expect_ok(r, 200).await
            } else {
                let collection = if side == Side::DirectAsApi {
                    vstore::find_collection(pool, "vectors")
                        .await
                        .map_err(api_err)?
                } else {
                    ctx.vectors.clone()
                };
                let hits = vstore::search(
                    pool,
                    &collection,
                    &search_params(&ctx.queries[q]),
                    K,
                    MAX_SCAN_TUPLES,
                )
                .await
                .map_err(api_err)?;
                anyhow::ensure!(hits.len() == K as usize, "{} hits", hits.len());
                Ok(())
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    count: usize,
    elapsed: Duration,
    micros: Vec<u32>,
    /// CPU clock ticks spent during the run by the data plane, the
    /// PostgreSQL backends serving the tenant database, and this process.
    cpu: Cpu,
}

#[derive(Default, Clone, Copy)]
struct Cpu {
    dataplane: u64,
    postgres: u64,
    client: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.micros.extend(other.micros);
        self.cpu.dataplane += other.cpu.dataplane;
        self.cpu.postgres += other.cpu.postgres;
        self.cpu.client += other.cpu.client;
    }

    /// CPU milliseconds per request: data plane, PostgreSQL, load generator.
    fn cpu_ms(&self) -> (f64, f64, f64) {
        let per = |ticks: u64| ticks as f64 * 1000.0 / CLOCK_TICKS / self.count as f64;
        (
            per(self.cpu.dataplane),
            per(self.cpu.postgres),
            per(self.cpu.client),
        )
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        self.micros.sort_unstable();
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let i = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.micros[i]) / 1000.0
    }
}

/// `concurrency` workers, each sending requests back to back for `time`.
/// The ticks of the data plane, of the tenant database's backends (the
/// stack's PostgreSQL runs on this machine) and of this process.
async fn cpu_now(ctx: &Ctx) -> anyhow::Result<(Cpu, Vec<i32>)> {
    let backends: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(&ctx.pool)
            .await?;
    Ok((
        Cpu {
            dataplane: cpu_ticks(&ctx.dataplane_pid.to_string()),
            postgres: backends.iter().map(|p| cpu_ticks(&p.to_string())).sum(),
            client: cpu_ticks("self"),
        },
        backends,
    ))
}

async fn drive(
    ctx: &Arc<Ctx>,
    scenario: Scenario,
    side: Side,
    concurrency: usize,
    time: Duration,
    seed: u64,
) -> anyhow::Result<Stats> {
    let (before, backends) = cpu_now(ctx).await?;
    let started = Instant::now();
    let deadline = started + time;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + w as u64);
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                once(&ctx, scenario, side, &mut rng).await?;
                micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut stats = Stats::default();
    for w in workers {
        let micros = w.await??;
        stats.count += micros.len();
        stats.micros.extend(micros);
    }
    stats.elapsed = started.elapsed();
    // The same backends as before (a backend that started during the run
    // is missed; the pools are warm, so there are none).
    stats.cpu = Cpu {
        dataplane: cpu_ticks(&ctx.dataplane_pid.to_string()).saturating_sub(before.dataplane),
        postgres: backends
            .iter()
            .map(|p| cpu_ticks(&p.to_string()))
            .sum::<u64>()
            .saturating_sub(before.postgres),
        client: cpu_ticks("self").saturating_sub(before.client),
    };
    Ok(stats)
}

fn clustered(rng: &mut StdRng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[rng.random_range(0..centres.len())];
    c.iter()
        .map(|x| x + rng.random_range(-0.3f32..0.3))
        .collect()
}

#[path = "harness.rs"]
mod harness;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    // Optional: only these scenarios (comma-separated: get,list,search,insert),
    // e.g. to profile one with `perf record -p <data plane pid>`.
    let only: Option<Vec<String>> = args
        .next()
        .map(|a| a.split(',').map(str::to_string).collect());
    if let Some(only) = &only {
        for name in only {
            anyhow::ensure!(
                ["get", "list", "search", "insert"].contains(&name.as_str()),
                "unknown scenario {name:?}: get, list, search or insert"
            );
        }
    }
    // Provisioning, the task that survives panics and Ctrl-C, and the
    // check that nothing is left behind: the benchmarks' shared harness.
    harness::with_tenant(TENANT, move |setup| async move {
        run(
            &setup.dataplane_bin,
            &setup.catalog_name,
            setup.tenant,
            &setup.invite,
            seconds,
            concurrency,
            only.as_deref(),
        )
        .await
    })
    .await
}

async fn run(
    dataplane_bin: &std::path::Path,
    catalog_name: &str,
    tenant: Uuid,
    invite_token: &str,
    seconds: u64,
    concurrency: usize,
    only: Option<&[String]>,
) -> anyhow::Result<()> {
    let pool_size = u32::try_from(concurrency)?;
    let port = free_port();
    let mut dataplane = Running::spawn(
        Command::new(dataplane_bin)
            .env(
                "STRATA_CATALOG_URL",
                with_database(&env("STRATA_DATAPLANE_DATABASE_URL"), catalog_name),
            )
            .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
            .env("STRATA_TENANT_POOL_SIZE", pool_size.to_string())
            // The benchmark measures what a request costs, not the limits
            // (cache-bench reports the rate limiter's own cost).
            .env("STRATA_RATE_LIMIT_CREDENTIAL_RPS", "0")
            .env("STRATA_RATE_LIMIT_TENANT_RPS", "0")
            .env("STRATA_JWT_HS256_SECRET", JWT_SECRET)
            .env("STRATA_LOG", "warn"),
    );
    let pid = dataplane.child.id();
    println!("data plane pid {pid} on 127.0.0.1:{port}");
    let root = format!("http://127.0.0.1:{port}");
    dataplane
        .wait_ready(&format!("{root}/readyz"), Duration::from_secs(60))
        .await;
    let base = format!("{root}/v1/tenants/{TENANT}");
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;

    // The admin's first API key, as a user gets it.
    let accepted: Value = http
        .post(format!("{base}/invitations/accept"))
        .json(&json!({"token": invite_token, "subject": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = accepted["key"]["key"]
        .as_str()
        .context("no key in the invitation answer")?
        .to_string();
    // `sk_<id>_<secret>`: the id is what the lookup reads.
    let key_id = accepted["key"]["id"]
        .as_str()
        .context("no key id in the invitation answer")?
        .to_string();
    let key_auth = format!("Bearer {key}");
    let claims = json!({
        "sub": "bench", "tenant": TENANT, "role": accepted["role"],
        "exp": jsonwebtoken::get_current_timestamp() + 24 * 3600,
    });
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?;
    let jwt_auth = format!("Bearer {jwt}");

    // Collections through the API (their indexes are DDL the data plane
    // runs as the tenant owner).
    let indexed = json!([{"path": "price", "type": "number"}]);
    for body in [
        json!({"name": "docs", "indexed_fields": indexed}),
        json!({"name": "writes", "indexed_fields": indexed}),
        json!({"name": "vectors", "vector": {"dimension": DIM, "metric": "cosine",
               "hnsw": {"m": 16, "ef_construction": 64}}}),
    ] {
        let r = http
            .post(format!("{base}/collections"))
            .header("authorization", &key_auth)
            .json(&body)
            .send()
            .await?;
        expect_ok(r, 201).await.context("create collection")?;
    }

    // The direct side: the data plane role on the tenant database, with
    // the session settings of the data plane's tenant pools.
    let names = TenantNames::for_tenant(tenant);
    let options: PgConnectOptions = with_database(
        &env("STRATA_DATAPLANE_DATABASE_URL"),
        names.database.as_str(),
    )
    .parse()?;
    let options = options.options([
        ("statement_timeout", "15000"),
        ("search_path", "public,pg_temp"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect_with(options.clone())
        .await
        .context("data plane role on the tenant database")?;
    let pool_no_ping = PgPoolOptions::new()
        .max_connections(pool_size)
        .test_before_acquire(false)
        .connect_lazy_with(options);

    // Data: loaded directly (bulk), the same rows for both sides.
    let started = Instant::now();
    let docs_id = docs::get_collection(&pool, "docs")
        .await
        .map_err(api_err)?
        .id;
    let writes_id = docs::get_collection(&pool, "writes")
        .await
        .map_err(api_err)?
        .id;
    let mut rng = StdRng::seed_from_u64(7);
    for chunk in (0..DOCS).collect::<Vec<_>>().chunks(1000) {
        let ids: Vec<String> = chunk.iter().map(|i| doc_id(*i)).collect();
        let data: Vec<Value> = chunk.iter().map(|_| doc_data(&mut rng)).collect();
        harness::insert_documents(&pool, docs_id, &ids, &data).await?;
    }
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let vectors = vstore::find_collection(&pool, "vectors")
        .await
        .map_err(api_err)?;
    let items: Vec<ValidItem> = (0..VECTORS)
        .map(|i| ValidItem {
            id: format!("v{i}"),
            vector: clustered(&mut rng, &centres),
            metadata: json!({"n": i}),
            document_id: None,
        })
        .collect();
    for chunk in items.chunks(1000) {
        vstore::upsert(&pool, &vectors, chunk)
            .await
            .map_err(api_err)?;
    }
    let owner = index::owner_connector(pool.clone(), names.owner.as_str().to_string());
    let mut conn = owner().await?;
    let settings = VectorSettings {
        index_threshold: 1000,
        ..VectorSettings::default()
    };
    let outcome = index::build(&mut conn, vectors.id, &settings).await?;
    sqlx::Connection::close(conn).await?;
    anyhow::ensure!(outcome == BuildOutcome::Built, "index build: {outcome:?}");
    sqlx::query("ANALYZE documents").execute(&pool).await.ok();
    sqlx::query("ANALYZE embeddings").execute(&pool).await.ok();
    let vectors = vstore::find_collection(&pool, "vectors")
        .await
        .map_err(api_err)?;
    println!(
        "loaded {DOCS} documents and {VECTORS} × {DIM} vectors, HNSW built, in {:.1?}",
        started.elapsed()
    );
    // The plan of the list page (the same for both sides), to read beside
    // its numbers.
    let path = vec!["price".to_string()];
    let plan: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, COSTS OFF) {}", list_sql()))
            .persistent(false)
            .bind(docs_id)
            .bind(&path)
            .bind(&path)
            .bind(json!({"category": "c3"}))
            .bind(&path)
            .bind(&path)
            .bind(i64::from(PAGE) + 1)
            .fetch_all(&pool)
            .await?;
    println!("plan of the list page query:\n  {}", plan.join("\n  "));
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| clustered(&mut rng, &centres))
        .collect();
    let query_bodies = queries
        .iter()
        .map(|q| json!({"vector": q, "k": K}).to_string())
        .collect();
    let ctx = Arc::new(Ctx {
        http,
        base,
        key_auth,
        key_id,
        jwt_auth,
        pool,
        pool_no_ping,
        docs: docs_id,
        writes: writes_id,
        vectors,
        queries,
        query_bodies,
        dataplane_pid: pid,
    });

    let half = Duration::from_secs(seconds).max(Duration::from_secs(2)) / 2;
    let warm = Duration::from_secs(1);
    let mut rows = Vec::new();
    // (scenario, side, stats) for the CPU table.
    let mut cpu_rows: Vec<(Scenario, &str, Stats)> = Vec::new();
    let mut seed = 1;
    for scenario in [
        Scenario::Get,
        Scenario::List,
        Scenario::Search,
        Scenario::Insert,
    ] {
        if only.is_some_and(|o| !o.iter().any(|n| n == scenario.name())) {
            continue;
        }
        // Warm both sides (connections, caches, plans), then alternate.
        drive(&ctx, scenario, Side::Api, concurrency, warm, 0).await?;
        drive(&ctx, scenario, Side::Direct, concurrency, warm, 0).await?;
        let (mut api, mut direct) = (Stats::default(), Stats::default());
        for _ in 0..2 {
            seed += 1;
            api.merge(drive(&ctx, scenario, Side::Api, concurrency, half, seed).await?);
            direct.merge(drive(&ctx, scenario, Side::Direct, concurrency, half, seed).await?);
        }
        let rss = peak_rss_kib(pid).unwrap_or(0);
        eprintln!(
            "{}: API {:.0} req/s, direct {:.0} req/s",
            scenario.label(),
            api.rate(),
            direct.rate()
        );
        let direct_rate = direct.rate();
        let mut extra = Vec::new();
        if matches!(scenario, Scenario::Get | Scenario::Search) {
            let jwt = drive(&ctx, scenario, Side::ApiJwt, concurrency, half, seed).await?;
            let replay = drive(&ctx, scenario, Side::DirectAsApi, concurrency, half, seed).await?;
            extra.push(("API, JWT (no key lookup)", jwt));
            extra.push(("direct, every statement the API runs", replay));
            drive(&ctx, scenario, Side::DirectNoPing, concurrency, warm, 0).await?;
            let no_ping =
                drive(&ctx, scenario, Side::DirectNoPing, concurrency, half, seed).await?;
            extra.push(("direct, the query, no ping on acquire", no_ping));
        }
        rows.push((
            scenario,
            api.rate(),
            api.percentile_ms(0.5),
            api.percentile_ms(0.99),
            direct_rate,
            direct.percentile_ms(0.5),
            direct.percentile_ms(0.99),
            rss,
        ));
        cpu_rows.push((scenario, "API, API key", api));
        cpu_rows.push((scenario, "direct, the query", direct));
        for (label, stats) in extra {
            cpu_rows.push((scenario, label, stats));
        }
    }

    println!(
        "\nconcurrency {concurrency}, pool {pool_size} connections on each side, {seconds} s per side and scenario\n"
    );
    println!(
        "| scenario | API req/s | API p50 ms | API p99 ms | direct req/s | direct p50 ms | direct p99 ms | API/direct | data plane VmHWM |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut direct_rates = Vec::new();
    for (scenario, api, a50, a99, direct, d50, d99, rss) in rows {
        direct_rates.push((scenario, direct));
        println!(
            "| {} | {api:.0} | {a50:.2} | {a99:.2} | {direct:.0} | {d50:.2} | {d99:.2} | {:.2} | {:.1} MiB |",
            scenario.label(),
            api / direct,
            rss as f64 / 1024.0,
        );
    }
    println!(
        "\nwhere the time goes: CPU per request (ms), from /proc utime+stime of the data plane, \
         the tenant database's PostgreSQL backends and the load generator\n\n\
         | scenario | side | req/s | ratio to direct | data plane | PostgreSQL | load generator |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for (scenario, label, stats) in &cpu_rows {
        let direct = direct_rates
            .iter()
            .find(|(s, _)| s == scenario)
            .map_or(f64::NAN, |(_, r)| *r);
        let (dp, pg, client) = stats.cpu_ms();
        println!(
            "| {} | {label} | {:.0} | {:.2} | {dp:.3} | {pg:.3} | {client:.3} |",
            scenario.label(),
            stats.rate(),
            stats.rate() / direct,
        );
    }
    println!(
        "\ndata plane peak RSS (VmHWM): {:.1} MiB",
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
    ctx.pool.close().await;
    ctx.pool_no_ping.close().await;
    drop(dataplane);
    Ok(())
}
