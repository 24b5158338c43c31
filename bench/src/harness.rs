//! Shared by the benchmarks in `src/bin` (included with `#[path]`):
//! one tenant provisioned in a catalog of its own, release data plane
//! processes on that catalog, latency percentiles, `/proc` readings, and
//! the cleanup that leaves nothing behind (also on failure and Ctrl-C).

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use strata_db::{Catalog, TenantState};
use strata_operator::host::{LocalHost, TenantHost};
use strata_operator::placement::TenantNames;
use strata_operator::provision::{self, TenantInput};
use strata_tests::operator_support::{drop_tenant_storage, provision_local, test_catalog};
use strata_tests::process::{Running, free_port};
use strata_tests::{env, repo_root, unique, with_database};
use uuid::Uuid;

/// What the benchmark body gets.
pub struct Setup {
    pub catalog: Catalog,
    pub catalog_name: String,
    pub tenant: Uuid,
    pub tenant_name: String,
    /// The admin's invitation token (accept it once for an API key).
    pub invite: String,
    pub dataplane_bin: PathBuf,
}

/// The release data plane binary, which must have been built.
pub fn dataplane_bin() -> anyhow::Result<PathBuf> {
    let target: PathBuf =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), Into::into);
    let bin = target.join("release/strata-dataplane");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build --release -p strata-dataplane -p strata-bench`",
        bin.display()
    );
    Ok(bin)
}

/// Provisions tenant `name` in a fresh catalog, runs `body` in a task (so
/// a failure, a panic or Ctrl-C still reaches the cleanup), then drops the
/// tenant database, roles, files and catalog and checks nothing is left.
pub async fn with_tenant<F, Fut>(name: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Setup) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let dataplane_bin = dataplane_bin()?;
    let (catalog_db, catalog) = test_catalog().await;
    let host = LocalHost {
        dir: std::env::temp_dir().join(unique("strata-bench-")),
    };
    let input = TenantInput {
        id: Uuid::new_v4(),
        name: name.into(),
        namespace: "bench".into(),
        spec: serde_json::from_value(
            json!({"displayName": "bench", "adminEmail": "bench@example.com"}),
        )?,
        rotation: Default::default(),
    };
    let tenant = input.id;
    let names = TenantNames::for_tenant(tenant);
    let host_dir = host.dir.clone();
    let catalog_name = catalog_db.name.clone();
    println!(
        "tenant {name} ({tenant}, database {}), catalog {catalog_name}",
        names.database.as_str()
    );
    let tenant_name = name.to_string();
    let mut work = tokio::spawn(async move {
        provision_local(&catalog, &host, &input)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        catalog.set_state(tenant, TenantState::Ready).await?;
        let invite = host
            .read_secret(&provision::invite_secret_name(&tenant_name))
            .await?
            .and_then(|s| s.get("token").map(str::to_string))
            .context("invite token")?;
        body(Setup {
            catalog,
            catalog_name,
            tenant,
            tenant_name,
            invite,
            dataplane_bin,
        })
        .await
    });
    let result = tokio::select! {
        r = &mut work => match r {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(anyhow::anyhow!("benchmark panicked")),
            Err(e) => Err(e.into()),
        },
        _ = tokio::signal::ctrl_c() => {
            work.abort();
            // Dropping the task's future stops the data plane processes.
            let _ = (&mut work).await;
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    drop_tenant_storage(tenant).await;
    let _ = std::fs::remove_dir_all(&host_dir);
    let catalog_name = catalog_db.name.clone();
    drop(catalog_db);
    let admin = PgPool::connect(&env("STRATA_DATABASE_URL")).await?;
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname = ANY($1) \
         UNION ALL SELECT rolname::text FROM pg_roles WHERE rolname = ANY($2)",
    )
    .bind(vec![names.database.as_str().to_string(), catalog_name])
    .bind(vec![
        names.role.as_str().to_string(),
        names.owner.as_str().to_string(),
    ])
    .fetch_all(&admin)
    .await?;
    admin.close().await;
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    result
}

/// A data plane process on the benchmark's catalog.
pub struct Dataplane {
    pub process: Running,
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub root: String,
}

/// Starts the release data plane on `catalog_name` with `envs` on top of
/// this process's environment (the stack's), and waits for `/readyz`.
pub async fn start_dataplane(
    setup: &Setup,
    label: &str,
    envs: &[(&str, String)],
) -> anyhow::Result<Dataplane> {
    let port = free_port();
    let mut command = Command::new(&setup.dataplane_bin);
    command
        .env(
            "STRATA_CATALOG_URL",
            with_database(&env("STRATA_DATAPLANE_DATABASE_URL"), &setup.catalog_name),
        )
        .env("STRATA_DATAPLANE_ADDR", format!("127.0.0.1:{port}"))
        .env("STRATA_LOG", "warn");
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut process = Running::spawn(&mut command);
    let pid = process.child.id();
    let root = format!("http://127.0.0.1:{port}");
    println!("data plane ({label}) pid {pid} on 127.0.0.1:{port}");
    process
        .wait_ready(&format!("{root}/readyz"), Duration::from_secs(60))
        .await;
    Ok(Dataplane { process, pid, root })
}

/// Accepts the admin invitation: `Bearer sk_…` for the admin's API key.
pub async fn accept_invite(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let accepted: Value = http
        .post(format!("{base}/invitations/accept"))
        .json(&json!({"token": token, "subject": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = accepted["key"]["key"]
        .as_str()
        .context("no key in the invitation answer")?;
    Ok(format!("Bearer {key}"))
}

/// Creates the collection `docs` through the API (`base` is the tenant's
/// URL), then loads `documents` (id, data) straight into the tenant
/// database as the data plane role, 1,000 rows a statement: the load is
/// not what is measured.
pub async fn load_docs_collection(
    http: &reqwest::Client,
    base: &str,
    auth: &str,
    setup: &Setup,
    documents: Vec<(String, Value)>,
) -> anyhow::Result<()> {
    let created = http
        .post(format!("{base}/collections"))
        .header("authorization", auth)
        .json(&json!({"name": "docs"}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().as_u16() == 201,
        "create collection: {}",
        created.status()
    );
    let names = TenantNames::for_tenant(setup.tenant);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&with_database(
            &env("STRATA_DATAPLANE_DATABASE_URL"),
            names.database.as_str(),
        ))
        .await
        .context("tenant database")?;
    let collection = strata_dataplane::documents::store::get_collection(&pool, "docs")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .id;
    let count = documents.len();
    for chunk in documents.chunks(1000) {
        let (ids, data): (Vec<&str>, Vec<&Value>) =
            chunk.iter().map(|(id, data)| (id.as_str(), data)).unzip();
        insert_documents(&pool, collection, &ids, &data).await?;
    }
    sqlx::query("ANALYZE documents").execute(&pool).await.ok();
    pool.close().await;
    println!("loaded {count} documents");
    Ok(())
}

/// Inserts documents straight into a collection's table, in one statement
/// (bulk loading for benchmarks; no events, no validation).
pub async fn insert_documents(
    pool: &sqlx::PgPool,
    collection: uuid::Uuid,
    ids: &[impl AsRef<str>],
    data: &[impl std::borrow::Borrow<Value>],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    let data: Vec<&Value> = data.iter().map(std::borrow::Borrow::borrow).collect();
    sqlx::query(
        "INSERT INTO documents (collection_id, id, data) \
         SELECT $1, u.id, u.data FROM unnest($2::text[], $3::jsonb[]) AS u(id, data)",
    )
    .bind(collection)
    .bind(&ids)
    .bind(&data)
    .execute(pool)
    .await?;
    Ok(())
}

/// Peak resident set (`VmHWM`) of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set (`VmRSS`) of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `USER_HZ`, the unit of `utime`/`stime`.
pub const CLOCK_TICKS: f64 = 100.0;

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: &str) -> u64 {
    stat_ticks(pid, false)
}

/// [`cpu_ticks`] plus what the process reaped from its exited children
/// (`cutime` + `cstime`).
pub fn cpu_ticks_with_children(pid: &str) -> u64 {
    stat_ticks(pid, true)
}

fn stat_ticks(pid: &str, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let own = field(11) + field(12);
    if children {
        own + field(13) + field(14)
    } else {
        own
    }
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Waits until the machine is quiet — under 10 % of all CPUs busy over a
/// quarter of a second — or 30 s have passed, and returns how long it
/// waited. Services keep working after a run (an S3 server settles block
/// references and metadata after large writes, PostgreSQL checkpoints):
/// a run started in that tail pays for the previous one's work, and in a
/// fixed order always the same side pays.
pub async fn settle() -> Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let (busy_before, total_before) = cpu_jiffies();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (busy, total) = cpu_jiffies();
        let share = busy.saturating_sub(busy_before) as f64
            / total.saturating_sub(total_before).max(1) as f64;
        if share < 0.10 {
            break;
        }
    }
    started.elapsed()
}

/// The 1-minute load average.
pub fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The `p` quantile (0..=1) of `values`, sorted in place.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i]
}

/// The median of a few values: the middle one, or the mean of the two
/// middle ones for an even count (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One measured run of a load generator against one data plane: answers,
/// wall time, client and server (`Server-Timing: app;dur`) latencies in
/// ms, the data plane's CPU ticks, the load average at the start, and a
/// tally by label (cache lookups, `Cache-Status`…). Runs of one variant
/// are merged across rounds.
#[derive(Default)]
pub struct LoadRun {
    pub count: usize,
    pub elapsed: Duration,
    pub client: Vec<f64>,
    pub server: Vec<f64>,
    pub cpu_ticks: u64,
    pub load: f64,
    pub tally: std::collections::BTreeMap<String, f64>,
}

impl LoadRun {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    pub fn merge(&mut self, other: LoadRun) {
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.client.extend(other.client);
        self.server.extend(other.server);
        self.cpu_ticks += other.cpu_ticks;
        self.load = self.load.max(other.load);
        for (k, v) in other.tally {
            *self.tally.entry(k).or_default() += v;
        }
    }
}

/// The data plane's own time for a request, ms (`Server-Timing: app;dur=`).
pub fn server_timing_ms(headers: &reqwest::header::HeaderMap) -> anyhow::Result<f64> {
    headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("dur=").nth(1))
        .and_then(|v| v.split([';', ',']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no Server-Timing app;dur")
}
