//! Tenant provisioning benchmark.
//!
//! Creates N Tenants through the API server with a real `strata-operator`
//! process reconciling them, and measures time-to-Ready (p50/p95), throughput
//! and the operator's peak RSS (VmHWM). In the same run, a baseline does the
//! same database work as plain SQL in one psql script: per tenant a role, a
//! database from template1, `CREATE EXTENSION vector` and the tenant
//! migrations. Usage: `provision-bench [N] [CONCURRENCY]` (defaults 200, 4).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use strata_api::{Tenant, TenantPhase};
use strata_tests::process::{Running, free_port};
use strata_tests::{TestDb, TestNamespace, env, repo_root, unique};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Deletes the benchmark's Tenants and waits until the operator released them
/// all and the catalog holds no entry for them.
async fn clean_up(tenants: &Api<Tenant>, names: &[String], catalog: &TestDb) -> anyhow::Result<()> {
    for name in names {
        match tenants.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = tenants.list(&Default::default()).await?.items.len();
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog.tenants")
            .fetch_one(&catalog.pool)
            .await?;
        if left == 0 && entries == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "cleanup incomplete after 600 s: {left} Tenants, {entries} catalog entries left"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let concurrency: u16 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    // `make bench` builds the binaries first; the target dir may live outside the repo.
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), Into::into);
    let operator_bin = target.join("debug/strata-operator");
    anyhow::ensure!(
        operator_bin.exists(),
        "{} not built: run `make build`",
        operator_bin.display()
    );

    // --- Strata: through the API server and the operator.
    let ns = TestNamespace::new().await;
    let catalog = TestDb::new().await;
    let port = free_port();
    let mut operator = Running::spawn(
        Command::new(&operator_bin)
            .env("STRATA_DATABASE_URL", env("STRATA_DATABASE_URL"))
            .env("STRATA_PLATFORM_DATABASE", &catalog.name)
            .env("KUBECONFIG", env("STRATA_OPERATOR_KUBECONFIG"))
            .env("STRATA_OPERATOR_PROBE_ADDR", format!("127.0.0.1:{port}"))
            .env("STRATA_WATCH_NAMESPACE", &ns.name)
            .env("STRATA_CONCURRENCY", concurrency.to_string())
            .env("STRATA_LEADER_ELECTION", "false")
            .env("STRATA_LOG", "warn"),
    );
    operator
        .wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(60),
        )
        .await;
    let pid = operator.child.id();
    let tenants: Api<Tenant> = ns.api();
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let watch = watcher(tenants.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);
    let started = Instant::now();
    for name in &names {
        let spec = serde_json::from_value(serde_json::json!({
            "displayName": name, "adminEmail": format!("admin@{name}.example"), "deletionPolicy": "Delete"
        }))?;
        let mut t = Tenant::new(name, spec);
        t.metadata.namespace = Some(ns.name.clone());
        created.insert(name.clone(), Instant::now());
        tenants.create(&PostParams::default(), &t).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60 * 30);
    while ready.len() < n && Instant::now() < deadline {
        let Some(t) = tokio::time::timeout(Duration::from_secs(120), watch.try_next()).await??
        else {
            break;
        };
        let name = t.metadata.name.clone().unwrap_or_default();
        if t.status.as_ref().and_then(|s| s.phase) == Some(TenantPhase::Ready)
            && let Some(at) = created.get(&name)
        {
            ready.entry(name).or_insert_with(|| at.elapsed());
        }
    }
    let strata_total = started.elapsed();
    let peak = peak_rss_kib(pid);
    // Clean up (Delete policy drops the databases) while the operator runs,
    // whatever happened above; a benchmark leaves nothing behind.
    let cleaned = clean_up(&tenants, &names, &catalog).await;
    drop(operator);
    cleaned?;
    anyhow::ensure!(
        ready.len() == n,
        "only {} of {n} tenants became Ready",
        ready.len()
    );
    let mut times: Vec<f64> = ready.values().map(Duration::as_secs_f64).collect();
    times.sort_by(f64::total_cmp);

    // --- Baseline: the same database work as plain SQL in one psql script.
    let prefix = unique("bench_base_");
    let mut script = String::from("\\set ON_ERROR_STOP 1\n");
    let migrations: Vec<_> = {
        let mut files: Vec<_> = std::fs::read_dir(repo_root().join("migrations/tenant"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
    };
    let admin_url = env("STRATA_DATABASE_URL");
    for i in 0..n {
        let db = format!("{prefix}_{i}");
        script.push_str(&format!("\\connect {admin_url}\nCREATE ROLE {db} LOGIN PASSWORD 'x';\nCREATE DATABASE {db} OWNER {db} TEMPLATE template1;\n"));
        script.push_str(&format!(
            "\\connect {}\nCREATE EXTENSION vector;\nSET ROLE {db};\n",
            strata_tests::with_database(&admin_url, &db)
        ));
        for m in &migrations {
            script.push_str(&format!("\\i {}\n", m.display()));
        }
    }
    let script_path = std::env::temp_dir().join(format!("{prefix}.sql"));
    std::fs::write(&script_path, &script)?;
    let psql = format!("{}/psql", env("STRATA_PG_BIN_DIR"));
    let base_started = Instant::now();
    let out = Command::new(&psql)
        .args(["-X", "-q", "-f"])
        .arg(&script_path)
        .arg(&admin_url)
        .output()?;
    let baseline_total = base_started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut drop_script = String::new();
    for i in 0..n {
        drop_script.push_str(&format!(
            "DROP DATABASE {prefix}_{i} WITH (FORCE);\nDROP ROLE {prefix}_{i};\n"
        ));
    }
    std::fs::write(&script_path, drop_script)?;
    Command::new(&psql)
        .args(["-X", "-q", "-f"])
        .arg(&script_path)
        .arg(&admin_url)
        .output()?;
    let _ = std::fs::remove_file(&script_path);

    let per_tenant_baseline = baseline_total.as_secs_f64() / n as f64;
    let strata_rate = n as f64 / strata_total.as_secs_f64() * 60.0;
    let baseline_rate = n as f64 / baseline_total.as_secs_f64() * 60.0;
    println!("tenants: {n}, operator concurrency: {concurrency}");
    println!(
        "| measure | strata (API server + operator) | baseline (plain SQL, one script) | ratio |"
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| wall time | {:.1} s | {:.1} s | {:.2}x |",
        strata_total.as_secs_f64(),
        baseline_total.as_secs_f64(),
        strata_total.as_secs_f64() / baseline_total.as_secs_f64()
    );
    println!(
        "| throughput | {strata_rate:.0} tenants/min | {baseline_rate:.0} tenants/min | {:.2}x |",
        strata_rate / baseline_rate
    );
    println!(
        "| time-to-Ready p50 | {:.2} s | {per_tenant_baseline:.2} s per tenant (sequential) | |",
        percentile(&times, 0.5)
    );
    println!(
        "| time-to-Ready p95 | {:.2} s | | |",
        percentile(&times, 0.95)
    );
    println!(
        "| operator peak RSS | {} MiB | | |",
        peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
    );
    Ok(())
}
