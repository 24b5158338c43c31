//! Outbox dispatch benchmark (issue 10).
//!
//! Ten tenants (provisioned in-process by the operator's provisioner, in a
//! catalog of their own). A load generator — this binary again, as a
//! separate process (`dispatch-bench generate …`) — writes events with the
//! data plane's own writer (`events::record_all`, transactions of 100)
//! as the data plane role. Two dispatchers take turns on the same data:
//!
//! - **data plane**: `events::Dispatcher`, the code the replicas run
//!   (claim `FOR UPDATE SKIP LOCKED`, envelope, Redis pipeline, webhook
//!   fan-out query, mark, backlog gauges), 8 tenants at a time;
//! - **baseline**: a minimal loop per tenant (8 at a time): claim 500
//!   rows `FOR UPDATE SKIP LOCKED`, `PUBLISH` each (one pipeline), mark
//!   them dispatched, commit — no envelope, fan-out, gauges or scheduler.
//!
//! Throughput: 100,000 events (10,000 per tenant) are written first, then
//! the dispatcher starts; events/s = events / (last message received −
//! start). Latency: the generator writes at a steady rate while the
//! dispatcher runs, publishing the data plane's wake-up hint after each
//! commit, and records each event's commit time; the benchmark's Redis
//! subscriber records each arrival: commit → received, p50/p99. The
//! baseline's latency is that of a loop polling every tenant every
//! millisecond (the best a poller can do).
//!
//! Usage (stack env sourced, release build):
//! `dispatch-bench [EVENTS] [LATENCY_RATE_PER_S] [LATENCY_SECONDS]`
//! (defaults 100000, 2000, 10).

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use strata_dataplane::events::{self, Dispatcher, Event, EventSettings};
use strata_dataplane::tenancy::{Tenancy, TenancySettings};
use strata_db::TenantState;
use strata_operator::host::LocalHost;
use strata_operator::provision::TenantInput;
use strata_tests::operator_support::{drop_tenant_storage, provision_local, test_catalog};
use strata_tests::{env, unique, with_database};
use uuid::Uuid;

const TENANTS: usize = 10;
const TX_EVENTS: usize = 100;
const CONCURRENCY: usize = 8;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn tenancy(catalog_url: &str) -> anyhow::Result<Tenancy> {
    let catalog = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy(catalog_url)?;
    let login = env("STRATA_DATAPLANE_DATABASE_URL").parse()?;
    Ok(Tenancy::new(
        catalog,
        TenancySettings {
            pool_size: 4,
            ..TenancySettings::new(login)
        },
    ))
}

async fn pools(tenancy: &Tenancy, names: &[String]) -> anyhow::Result<Vec<PgPool>> {
    let mut pools = Vec::new();
    for name in names {
        let info = tenancy
            .resolve(name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .context("tenant")?;
        pools.push(
            tenancy
                .pools
                .pool(&info)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    Ok(pools)
}

fn event(i: usize) -> Event {
    Event::new("document.updated", format!("bench/{i}"))
        .version(2)
        .data(json!({"collection": "bench", "id": format!("d{i}"), "version": 2, "changed": ["title"]}))
}

/// `generate <catalog_url> <per_tenant> <rate_per_s|0> <out|-> <tenant>…`:
/// writes `per_tenant` events into each tenant in transactions of 100;
/// rate 0 = as fast as possible, no hints; otherwise paced, with a hint
/// after each commit and `<event id> <commit µs>` lines written to `out`.
async fn generate(args: &[String]) -> anyhow::Result<()> {
    let catalog_url = &args[0];
    let per_tenant: usize = args[1].parse()?;
    let rate: f64 = args[2].parse()?;
    let out = &args[3];
    let names: Vec<String> = args[4..].to_vec();
    let tenancy = tenancy(catalog_url)?;
    let pools = pools(&tenancy, &names).await?;
    let redis = if rate > 0.0 {
        let client = redis::Client::open(env("STRATA_REDIS_URL"))?;
        Some(redis::aio::ConnectionManager::new(client).await?)
    } else {
        None
    };
    let tx_size = if rate > 0.0 { 10 } else { TX_EVENTS };
    let mut commits: Vec<(Uuid, i64)> = Vec::new();
    let started = Instant::now();
    let mut written = 0usize;
    let mut i = 0usize;
    let rounds = per_tenant.div_ceil(tx_size);
    for _ in 0..rounds {
        for (t, pool) in pools.iter().enumerate() {
            let batch: Vec<Event> = (0..tx_size).map(|k| event(i + k)).collect();
            i += tx_size;
            let mut tx = pool.begin().await?;
            events::record_all(&mut tx, &batch).await?;
            tx.commit().await?;
            let at = now_us();
            written += batch.len();
            if let Some(redis) = &redis {
                commits.extend(batch.iter().map(|e| (e.id, at)));
                events::hint::publish(redis.clone(), names[t].clone()).await;
                let due = Duration::from_secs_f64(written as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    if out != "-" {
        let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
        for (id, at) in commits {
            writeln!(file, "{id} {at}")?;
        }
    }
    Ok(())
}

fn spawn_generator(
    catalog_url: &str,
    per_tenant: usize,
    rate: f64,
    out: &str,
    names: &[String],
) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("generate")
        .arg(catalog_url)
        .arg(per_tenant.to_string())
        .arg(rate.to_string())
        .arg(out)
        .args(names)
        .spawn()?)
}

/// Messages on the tenants' channels: count, and arrival time per event id.
struct Subscriber {
    count: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<HashMap<Uuid, i64>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn subscribe(ids: &[Uuid]) -> anyhow::Result<Subscriber> {
    let client = redis::Client::open(env("STRATA_REDIS_URL"))?;
    let mut pubsub = client.get_async_pubsub().await?;
    for id in ids {
        pubsub.subscribe(events::redis_sink::channel(*id)).await?;
    }
    let count = Arc::new(AtomicUsize::new(0));
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (c, a) = (count.clone(), arrivals.clone());
    let task = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let at = now_us();
            if let Ok(bytes) = message.get_payload::<Vec<u8>>()
                && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
                && let Some(id) = value["id"].as_str().and_then(|s| s.parse().ok())
            {
                a.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(id)
                    .or_insert(at);
            }
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(Subscriber {
        count,
        arrivals,
        task,
    })
}

/// The baseline: claim, publish, mark, commit, per tenant, until empty
/// (`poll`: forever, polling every millisecond).
async fn baseline(pools: Vec<PgPool>, ids: Vec<Uuid>, poll: bool) -> anyhow::Result<()> {
    let client = redis::Client::open(env("STRATA_REDIS_URL"))?;
    let redis = redis::aio::ConnectionManager::new(client).await?;
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for (pool, id) in pools.into_iter().zip(ids) {
        let redis = redis.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let channel = events::redis_sink::channel(id);
            loop {
                let permit = permits.acquire().await?;
                let mut tx = pool.begin().await?;
                let rows: Vec<(i64, Uuid, String, String, Value)> = sqlx::query_as(
                    "SELECT id, event_id, topic, aggregate_id, payload FROM outbox \
                      WHERE dispatched_at IS NULL AND dead_at IS NULL AND available_at <= now() \
                      ORDER BY available_at, id LIMIT 500 FOR UPDATE SKIP LOCKED",
                )
                .fetch_all(&mut *tx)
                .await?;
                if !rows.is_empty() {
                    let mut pipe = redis::pipe();
                    for (_, event_id, topic, aggregate, payload) in &rows {
                        let body = json!({"id": event_id, "type": topic, "aggregate": aggregate, "data": payload});
                        pipe.cmd("PUBLISH").arg(&channel).arg(body.to_string()).ignore();
                    }
                    let mut conn = redis.clone();
                    pipe.query_async::<()>(&mut conn).await?;
                    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                    sqlx::query("UPDATE outbox SET dispatched_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                drop(permit);
                if rows.len() < 500 {
                    if !poll {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn wait_for(sub: &Subscriber, want: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    while sub.count.load(Ordering::Relaxed) < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} messages",
            sub.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Instant::now())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latencies(out: &str, arrivals: &HashMap<Uuid, i64>) -> anyhow::Result<(Vec<f64>, usize)> {
    let text = std::fs::read_to_string(out)?;
    let mut ms = Vec::new();
    let mut missing = 0;
    for line in text.lines() {
        let (id, at) = line.split_once(' ').context("line")?;
        let id: Uuid = id.parse()?;
        let at: i64 = at.parse()?;
        match arrivals.get(&id) {
            Some(got) => ms.push((got - at) as f64 / 1000.0),
            None => missing += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms, missing))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.first().map(String::as_str) == Some("generate") {
        return runtime.block_on(generate(&args[1..]));
    }
    runtime.block_on(coordinate(&args))
}

async fn coordinate(args: &[String]) -> anyhow::Result<()> {
    let total: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rate: f64 = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2000.0);
    let seconds: f64 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(10.0);
    let per_tenant = total / TENANTS;
    let (catalog_db, catalog) = test_catalog().await;
    let host = LocalHost {
        dir: std::env::temp_dir().join(unique("strata-dispatch-bench-")),
    };
    let mut names = Vec::new();
    let mut ids = Vec::new();
    for i in 0..TENANTS {
        let input = TenantInput {
            id: Uuid::new_v4(),
            name: unique(&format!("db{i}")),
            namespace: "bench".into(),
            spec: serde_json::from_value(
                json!({"displayName": "dispatch bench", "adminEmail": "b@example.com"}),
            )?,
            rotation: Default::default(),
        };
        provision_local(&catalog, &host, &input)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        catalog.set_state(input.id, TenantState::Ready).await?;
        names.push(input.name.clone());
        ids.push(input.id);
    }
    let catalog_url = with_database(&env("STRATA_DATAPLANE_DATABASE_URL"), &catalog_db.name);
    let result = run(&catalog_url, &names, &ids, per_tenant, rate, seconds).await;
    for id in &ids {
        drop_tenant_storage(*id).await;
    }
    let _ = std::fs::remove_dir_all(&host.dir);
    drop(catalog_db);
    result
}

async fn run(
    catalog_url: &str,
    names: &[String],
    ids: &[Uuid],
    per_tenant: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<()> {
    let tenancy = tenancy(catalog_url)?;
    let catalog = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(catalog_url)?;
    let pools = pools(&tenancy, names).await?;
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(env("STRATA_REDIS_URL"))?).await?;
    let total = per_tenant * TENANTS;
    let preload = || -> anyhow::Result<()> {
        let status = spawn_generator(catalog_url, per_tenant, 0.0, "-", names)?.wait()?;
        anyhow::ensure!(status.success(), "generator failed");
        Ok(())
    };
    println!(
        "dispatch bench: {total} events across {TENANTS} tenants, {CONCURRENCY} tenants at a time"
    );
    let mut rates: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..2 {
        for side in ["data plane", "baseline"] {
            preload()?;
            let sub = subscribe(ids).await?;
            let start = Instant::now();
            let done = match side {
                "data plane" => {
                    let d = Dispatcher::new(
                        tenancy.clone(),
                        catalog.clone(),
                        Some(redis.clone()),
                        None,
                        EventSettings {
                            concurrency: CONCURRENCY,
                            sweep_interval: Duration::from_secs(3600),
                            ..EventSettings::default()
                        },
                    )?;
                    let task = d.spawn();
                    let done = wait_for(&sub, total, Duration::from_secs(600)).await?;
                    task.abort();
                    done
                }
                _ => {
                    baseline(pools.clone(), ids.to_vec(), false).await?;
                    wait_for(&sub, total, Duration::from_secs(600)).await?
                }
            };
            let elapsed = done.duration_since(start).as_secs_f64();
            let per_s = total as f64 / elapsed;
            println!(
                "  round {round} {side:>10}: {total} events in {elapsed:.2} s = {per_s:.0} events/s"
            );
            rates.entry(side).or_default().push(per_s);
            sub.task.abort();
        }
    }
    let best = |side: &str| rates[side].iter().copied().fold(0.0, f64::max);
    let (dp, base) = (best("data plane"), best("baseline"));
    println!(
        "throughput (best of 2): data plane {dp:.0} events/s, baseline {base:.0} events/s, ratio {:.2}",
        dp / base
    );

    // Latency at a steady rate.
    let latency_per_tenant = ((rate * seconds) as usize / TENANTS).max(10);
    for side in ["data plane", "baseline"] {
        let sub = subscribe(ids).await?;
        let (stop, task) = match side {
            "data plane" => {
                let d = Dispatcher::new(
                    tenancy.clone(),
                    catalog.clone(),
                    Some(redis.clone()),
                    Some(redis::Client::open(env("STRATA_REDIS_URL"))?),
                    EventSettings {
                        concurrency: CONCURRENCY,
                        ..EventSettings::default()
                    },
                )?;
                (None, d.spawn())
            }
            _ => {
                let pools = pools.clone();
                let ids = ids.to_vec();
                let task = tokio::spawn(async move {
                    let _ = baseline(pools, ids, true).await;
                });
                (Some(()), task)
            }
        };
        // Let the subscription and the dispatcher settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = std::env::temp_dir().join(unique("dispatch-bench-commits-"));
        let out = out.to_string_lossy().to_string();
        let status = spawn_generator(catalog_url, latency_per_tenant, rate, &out, names)?.wait()?;
        anyhow::ensure!(status.success(), "generator failed");
        tokio::time::sleep(Duration::from_secs(2)).await;
        task.abort();
        let _ = stop;
        let arrivals = sub
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        sub.task.abort();
        let (ms, missing) = latencies(&out, &arrivals)?;
        let _ = std::fs::remove_file(&out);
        println!(
            "latency {side:>10} at {rate:.0} events/s: {} events, commit → Redis received p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN),
            if missing > 0 {
                format!(" ({missing} not received)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
