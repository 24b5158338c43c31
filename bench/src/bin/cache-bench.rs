//! Document GET by id through the API with the two-level cache's L1 hit,
//! its L2 (Redis) hit and the cache off (issue 12), and the rate limiter's
//! cost per request (issue 13), same data, same run.
//!
//! One tenant is provisioned in a catalog of its own with 10,000 documents
//! in one collection; four release data plane processes serve it, all on
//! the stack's Redis (`STRATA_REDIS_URL`):
//!
//! | process | `STRATA_CACHE_MODE` | rate limits |
//! | --- | --- | --- |
//! | L1 hit | `on` | off (`…_RPS=0`) |
//! | L2 hit | `l2` (no in-process level) | off |
//! | off | `off` (every read from PostgreSQL) | off |
//! | L1 hit + limits | `on` | on, never reached (10^9 req/s per tenant and per credential; in Redis) |
//!
//! Before each measured run the collection is touched (a `PATCH` that
//! changes nothing but bumps its cache tag, so every cached answer is
//! dropped) and every id is read once through that process, so L1 and L2
//! hold them all, made just now: a run shorter than their TTL (30 s)
//! measures hits only, not the refills of entries that expire mid-run (for
//! `off` it only warms connections). The
//! load generator is this process: CONCURRENCY HTTP/1.1 keep-alive clients
//! (reqwest) sending `GET …/collections/docs/documents/{id}` (id random of
//! 10,000) back to back, the four processes in turn, twice (SECONDS per
//! process split in two). Reported: req/s, client-side p50/p99, the
//! server's own time from `Server-Timing: app;dur=<ms>` p50/p99, data plane
//! CPU per request, and the L1/L2 hits and misses of document lookups from
//! each process's `/metrics` (so "L1 hit" is checked, not assumed).
//!
//! `cache-bench [SECONDS] [CONCURRENCY]` (defaults 10, 16), stack env
//! sourced, after `cargo build --release -p strata-dataplane -p strata-bench`.

#[path = "../harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use harness::{
    Dataplane, LoadRun, Setup, cpu_ticks, load, peak_rss_kib, percentile, server_timing_ms,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const DOCS: usize = 10_000;

struct Variant {
    label: &'static str,
    cache: &'static str,
    limits: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        label: "L1 hit (STRATA_CACHE_MODE=on)",
        cache: "on",
        limits: false,
    },
    Variant {
        label: "L2 hit (STRATA_CACHE_MODE=l2)",
        cache: "l2",
        limits: false,
    },
    Variant {
        label: "cache off (STRATA_CACHE_MODE=off)",
        cache: "off",
        limits: false,
    },
    Variant {
        label: "L1 hit, rate limits on",
        cache: "on",
        limits: true,
    },
];

fn doc_id(i: usize) -> String {
    format!("d{i:05}")
}

struct Target {
    dataplane: Dataplane,
    /// `…/collections/docs/documents`.
    documents: String,
}

/// `strata_cache_lookups_total{kind="document",…}` by `level/outcome`.
async fn document_lookups(
    http: &reqwest::Client,
    root: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http
        .get(format!("{root}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("strata_cache_lookups_total{") || !line.contains("kind=\"document\"") {
            continue;
        }
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        out.insert(format!("{} {}", label("level"), label("outcome")), value);
    }
    Ok(out)
}

async fn get_once(http: &reqwest::Client, url: &str, auth: &str) -> anyhow::Result<f64> {
    let r = http.get(url).header("authorization", auth).send().await?;
    let status = r.status();
    let server = server_timing_ms(r.headers())?;
    let body = r.bytes().await?;
    anyhow::ensure!(
        status.as_u16() == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(server)
}

/// Drops every cached answer of the collection on every process: a
/// `PATCH` that changes nothing still bumps the collection's tag.
async fn touch_collection(http: &reqwest::Client, base: &str, auth: &str) -> anyhow::Result<()> {
    let r = http
        .patch(format!("{base}/collections/docs"))
        .header("authorization", auth)
        .json(&json!({"require_if_match": false}))
        .send()
        .await?;
    let status = r.status();
    anyhow::ensure!(
        status.is_success(),
        "PATCH collection: HTTP {status}: {}",
        r.text().await?
    );
    Ok(())
}

/// Every id once, `concurrency` at a time.
async fn warm(
    http: &reqwest::Client,
    target: &Target,
    auth: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<f64>> = futures::stream::iter(0..DOCS)
        .map(|i| {
            let url = format!("{}/{}", target.documents, doc_id(i));
            async move { get_once(http, &url, auth).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(())
}

async fn drive(
    http: &reqwest::Client,
    target: &Target,
    auth: &str,
    concurrency: usize,
    time: Duration,
    seed: u64,
) -> anyhow::Result<LoadRun> {
    let before_lookups = document_lookups(http, &target.dataplane.root).await?;
    let pid = target.dataplane.pid.to_string();
    let load = load();
    let before = cpu_ticks(&pid);
    let started = Instant::now();
    let deadline = started + time;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let http = http.clone();
        let documents = target.documents.clone();
        let auth = auth.to_string();
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + w as u64);
            let (mut client, mut server) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let url = format!("{documents}/{}", doc_id(rng.random_range(0..DOCS)));
                let t = Instant::now();
                server.push(get_once(&http, &url, &auth).await?);
                client.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>((client, server))
        }));
    }
    let mut run = LoadRun {
        load,
        ..LoadRun::default()
    };
    for w in workers {
        let (client, server) = w.await??;
        run.count += client.len();
        run.client.extend(client);
        run.server.extend(server);
    }
    run.elapsed = started.elapsed();
    run.cpu_ticks = cpu_ticks(&pid).saturating_sub(before);
    let after = document_lookups(http, &target.dataplane.root).await?;
    for (k, v) in after {
        let d = v - before_lookups.get(&k).copied().unwrap_or(0.0);
        run.tally.insert(k, d);
    }
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    harness::with_tenant("cache-bench", move |setup| run(setup, seconds, concurrency)).await
}

async fn run(setup: Setup, seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var_os("STRATA_REDIS_URL").is_some(),
        "STRATA_REDIS_URL unset: source the stack's env"
    );
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let mut targets = Vec::new();
    for v in &VARIANTS {
        let rps = if v.limits { "1000000000" } else { "0" };
        let dataplane = harness::start_dataplane(
            &setup,
            v.label,
            &[
                ("STRATA_CACHE_MODE", v.cache.to_string()),
                ("STRATA_TENANT_POOL_SIZE", concurrency.to_string()),
                ("STRATA_RATE_LIMIT_TENANT_RPS", rps.to_string()),
                ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", rps.to_string()),
                ("STRATA_RATE_LIMIT_ANONYMOUS_RPS", rps.to_string()),
            ],
        )
        .await?;
        let documents = format!(
            "{}/v1/tenants/{}/collections/docs/documents",
            dataplane.root, setup.tenant_name
        );
        targets.push(Target {
            dataplane,
            documents,
        });
    }
    let base = format!(
        "{}/v1/tenants/{}",
        targets[0].dataplane.root, setup.tenant_name
    );
    let auth = harness::accept_invite(&http, &base, &setup.invite).await?;
    let mut rng = StdRng::seed_from_u64(7);
    let documents = (0..DOCS)
        .map(|i| {
            let data = json!({
                "category": format!("c{}", rng.random_range(0..10)),
                "price": rng.random_range(0..100_000),
                "title": format!("item {}", rng.random_range(0..1_000_000)),
                "tags": ["bench", "cache"],
                "in_stock": rng.random_bool(0.5),
            });
            (doc_id(i), data)
        })
        .collect();
    harness::load_docs_collection(&http, &base, &auth, &setup, documents).await?;

    let half = Duration::from_secs(seconds).max(Duration::from_secs(2)) / 2;
    let mut runs: Vec<LoadRun> = VARIANTS.iter().map(|_| LoadRun::default()).collect();
    for round in 0..2u64 {
        for (i, (target, v)) in targets.iter().zip(&VARIANTS).enumerate() {
            touch_collection(&http, &base, &auth).await?;
            warm(&http, target, &auth, concurrency).await?;
            let run = drive(
                &http,
                target,
                &auth,
                concurrency,
                half,
                round * 10 + i as u64,
            )
            .await?;
            eprintln!(
                "round {round}: {}: {:.0} req/s, lookups {:?}",
                v.label,
                run.rate(),
                run.tally
            );
            runs[i].merge(run);
        }
    }

    println!(
        "\ndocument GET by id (random of {DOCS}), {concurrency} clients, {seconds} s per process \
         (two runs each, alternating), release build, stack Redis\n"
    );
    println!(
        "| variant | req/s | × cache off | client p50 ms | client p99 ms | server p50 ms | server p99 ms | data plane CPU ms/req | document lookups (level outcome: count) | VmHWM | load (1 min) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    let off_rate = runs[2].rate();
    let mut summary = Vec::new();
    for ((run, v), target) in runs.iter_mut().zip(&VARIANTS).zip(&targets) {
        let rate = run.rate();
        let cpu_ms = run.cpu_ticks as f64 * 1000.0 / harness::CLOCK_TICKS / run.count as f64;
        let c50 = percentile(&mut run.client, 0.5);
        let c99 = percentile(&mut run.client, 0.99);
        let s50 = percentile(&mut run.server, 0.5);
        let s99 = percentile(&mut run.server, 0.99);
        let lookups: Vec<String> = run
            .tally
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(k, n)| format!("{k}: {n:.0}"))
            .collect();
        println!(
            "| {} | {rate:.0} | {:.2} | {c50:.2} | {c99:.2} | {s50:.3} | {s99:.3} | {cpu_ms:.3} | {} | {:.1} MiB | {:.1} |",
            v.label,
            rate / off_rate,
            if lookups.is_empty() {
                "none".to_string()
            } else {
                lookups.join(", ")
            },
            peak_rss_kib(target.dataplane.pid).unwrap_or(0) as f64 / 1024.0,
            run.load,
        );
        summary.push((rate, s50, cpu_ms));
    }
    let (on, limited) = (summary[0], summary[3]);
    println!(
        "\nrate limiter (Redis GCRA, per tenant and per credential, never reached): \
         {:+.1}% req/s, server p50 {:+.3} ms, data plane CPU {:+.3} ms per request",
        (limited.0 / on.0 - 1.0) * 100.0,
        limited.1 - on.1,
        limited.2 - on.2,
    );
    drop(targets);
    Ok(())
}
