//! The output cache (issue 13): a document list page served from the
//! output cache vs. the same page with the cache off, and the rate
//! limiter's cost per request, same data, same run.
//!
//! The route: `GET …/collections/docs/documents?limit=50`, the first page
//! of 50 documents (about 8 KB of JSON) of a 2,000-document collection.
//! Chosen because it is the most common cacheable read that does real
//! work on a miss (a keyset page query, 50 rows decoded and serialised, a
//! digest for the ETag), and because it is a *private* row: every hit is
//! authenticated and permission-checked (its tags' freshness needs no
//! Redis read: writes wait for every replica's acknowledgement instead,
//! `cache::coherence`).
//!
//! Three release data plane processes on the stack's Redis:
//!
//! | process | `STRATA_CACHE_MODE` | rate limits |
//! | --- | --- | --- |
//! | hit | `on` (output cache, L1 + Redis) | off (`…_RPS=0`) |
//! | off | `off` (the handler every time) | off |
//! | hit + limits | `on` | on, never reached (10^9 req/s; Redis GCRA) |
//!
//! `off` turns the whole two-level cache off, so it also reads the API
//! key's row from PostgreSQL on every request (a primary-key lookup) where
//! `on` has it in memory: that difference is in the ratio.
//!
//! The load generator is this process (the data planes are others):
//! CONCURRENCY HTTP/1.1 keep-alive clients sending the same GET back to
//! back, the processes in turn, twice (SECONDS per process split in two).
//! Reported: req/s, client p50/p99, the server's `Server-Timing: app;dur`
//! p50/p99, data plane CPU per request, and the `Cache-Status` of every
//! answer (so "hit" is checked, not assumed).
//!
//! `output-cache-bench [SECONDS] [CONCURRENCY]` (defaults 10, 16), stack
//! env sourced, after `cargo build --release -p strata-dataplane -p strata-bench`.

#[path = "../harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{
    Dataplane, LoadRun, Setup, cpu_ticks, load, peak_rss_kib, percentile, server_timing_ms,
};
use serde_json::json;

const DOCS: usize = 2_000;
const PAGE: &str = "limit=50";

struct Variant {
    label: &'static str,
    cache: &'static str,
    limits: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "output cache hit",
        cache: "on",
        limits: false,
    },
    Variant {
        label: "cache off",
        cache: "off",
        limits: false,
    },
    Variant {
        label: "output cache hit, rate limits on",
        cache: "on",
        limits: true,
    },
];

/// One GET: the server's time (ms) and the `Cache-Status`.
async fn get_once(http: &reqwest::Client, url: &str, auth: &str) -> anyhow::Result<(f64, String)> {
    let r = http.get(url).header("authorization", auth).send().await?;
    let status = r.status();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let server = server_timing_ms(r.headers())?;
    let cache = header("cache-status").unwrap_or_else(|| "-".into());
    let body = r.bytes().await?;
    anyhow::ensure!(
        status.as_u16() == 200 && body.len() > 1000,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((server, cache))
}

async fn drive(
    http: &reqwest::Client,
    dataplane: &Dataplane,
    url: &str,
    auth: &str,
    concurrency: usize,
    time: Duration,
) -> anyhow::Result<LoadRun> {
    // Warm: connections, and the entry where there is a cache.
    for _ in 0..concurrency {
        get_once(http, url, auth).await?;
    }
    let pid = dataplane.pid.to_string();
    let load = load();
    let before = cpu_ticks(&pid);
    let started = Instant::now();
    let deadline = started + time;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, url, auth) = (http.clone(), url.to_string(), auth.to_string());
        workers.push(tokio::spawn(async move {
            let (mut client, mut server) = (Vec::new(), Vec::new());
            let mut statuses: BTreeMap<String, f64> = BTreeMap::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (s, cache) = get_once(&http, &url, &auth).await?;
                client.push(t.elapsed().as_secs_f64() * 1000.0);
                server.push(s);
                *statuses.entry(cache).or_default() += 1.0;
            }
            Ok::<_, anyhow::Error>((client, server, statuses))
        }));
    }
    let mut run = LoadRun {
        load,
        ..LoadRun::default()
    };
    for w in workers {
        let (client, server, statuses) = w.await??;
        run.count += client.len();
        run.client.extend(client);
        run.server.extend(server);
        for (k, v) in statuses {
            *run.tally.entry(k).or_default() += v;
        }
    }
    run.elapsed = started.elapsed();
    run.cpu_ticks = cpu_ticks(&pid).saturating_sub(before);
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    harness::with_tenant("ocache-bench", move |setup| {
        run(setup, seconds, concurrency)
    })
    .await
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
    let mut dataplanes = Vec::new();
    for v in &VARIANTS {
        let rps = if v.limits { "1000000000" } else { "0" };
        dataplanes.push(
            harness::start_dataplane(
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
            .await?,
        );
    }
    let tenant_path = format!("/v1/tenants/{}", setup.tenant_name);
    let base = format!("{}{tenant_path}", dataplanes[0].root);
    let auth = harness::accept_invite(&http, &base, &setup.invite).await?;
    let documents = (0..DOCS)
        .map(|i| {
            let data = json!({
                "category": format!("c{}", i % 10),
                "price": (i * 7919) % 100_000,
                "title": format!("item {i}"),
                "tags": ["bench", "cache"],
                "in_stock": i % 2 == 0,
            });
            (format!("d{i:05}"), data)
        })
        .collect();
    harness::load_docs_collection(&http, &base, &auth, &setup, documents).await?;

    let half = Duration::from_secs(seconds).max(Duration::from_secs(2)) / 2;
    let mut runs: Vec<LoadRun> = VARIANTS.iter().map(|_| LoadRun::default()).collect();
    for _round in 0..2 {
        for (i, (dataplane, v)) in dataplanes.iter().zip(&VARIANTS).enumerate() {
            let url = format!(
                "{}{tenant_path}/collections/docs/documents?{PAGE}",
                dataplane.root
            );
            let run = drive(&http, dataplane, &url, &auth, concurrency, half).await?;
            eprintln!("{}: {:.0} req/s {:?}", v.label, run.rate(), run.tally);
            runs[i].merge(run);
        }
    }

    println!(
        "\ndocument list page (`?{PAGE}` of {DOCS}), {concurrency} clients, {seconds} s per process \
         (two runs each, alternating), release build, stack Redis\n"
    );
    println!(
        "| variant | req/s | × off | client p50 ms | client p99 ms | server p50 ms | server p99 ms | data plane CPU ms/req | Cache-Status | VmHWM | load (1 min) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    let off_rate = runs[1].rate();
    let mut summary = Vec::new();
    for ((run, v), dataplane) in runs.iter_mut().zip(&VARIANTS).zip(&dataplanes) {
        let rate = run.rate();
        let cpu_ms = run.cpu_ticks as f64 * 1000.0 / harness::CLOCK_TICKS / run.count as f64;
        let c50 = percentile(&mut run.client, 0.5);
        let c99 = percentile(&mut run.client, 0.99);
        let s50 = percentile(&mut run.server, 0.5);
        let s99 = percentile(&mut run.server, 0.99);
        let statuses: Vec<String> = run
            .tally
            .iter()
            .map(|(k, n)| format!("{k}: {n:.0}"))
            .collect();
        println!(
            "| {} | {rate:.0} | {:.2} | {c50:.2} | {c99:.2} | {s50:.3} | {s99:.3} | {cpu_ms:.3} | {} | {:.1} MiB | {:.1} |",
            v.label,
            rate / off_rate,
            statuses.join(", "),
            peak_rss_kib(dataplane.pid).unwrap_or(0) as f64 / 1024.0,
            run.load,
        );
        summary.push((rate, s50, cpu_ms));
    }
    let (hit, limited) = (summary[0], summary[2]);
    println!(
        "\nhit vs off: {:.2}× req/s (target ≥ 5×)\nrate limiter (Redis GCRA, per tenant and per \
         credential, never reached): {:+.1}% req/s, server p50 {:+.3} ms, data plane CPU {:+.3} ms per request",
        hit.0 / off_rate,
        (limited.0 / hit.0 - 1.0) * 100.0,
        limited.1 - hit.1,
        limited.2 - hit.2,
    );
    drop(dataplanes);
    Ok(())
}
