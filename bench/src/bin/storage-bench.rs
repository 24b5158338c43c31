//! Object storage through the data plane against the same operations sent
//! straight to the S3 server (issue 9), same run.
//!
//! The release data plane runs as its own process on the S3 backend (the
//! stack's Garage, `STRATA_STORAGE_BACKEND=s3`); this process provisions a
//! tenant in a catalog of its own, makes a bucket the way the operator does
//! (a `catalog.buckets` row), and drives:
//!
//! 1. one 1 GiB object, single stream: PUT then GET, through the API
//!    (`PUT/GET /v1/tenants/{t}/buckets/{b}/objects/{key}`, one HTTP/1.1
//!    request each) and directly with aws-sdk-s3 (a multipart upload of
//!    8 MiB parts, one at a time — the data plane's own backend does the
//!    same behind the API — and one GetObject), alternately, ROUNDS times;
//!    it runs first, on a fresh process, so the data plane's peak RSS
//!    (`VmHWM`) afterwards is that of streaming 1 GiB;
//! 2. 1 MiB objects from CONCURRENCY clients: PUT (a new key every time)
//!    and GET (random among 64 objects per side), API and direct alternately
//!    (API, direct, API, direct), SECONDS per side split in two.
//!
//! Bodies are printable bytes without any format signature, stamped every
//! 4 KiB with a run nonce and their offset, so no two blocks are alike and
//! Garage's block deduplication cannot skip a write.
//!
//! Two CPU topologies (`CPUS`):
//!
//! - `shared` (default): every process on every core. On a small machine
//!   the client, the data plane, PostgreSQL and Garage then compete for
//!   the same cores, so the ratio is that of each side's total CPU per GiB:
//!   it prices the data plane's work, not the throughput it leaves.
//! - `split`: Garage alone on the first half of the cores, everything else
//!   (this process and its data plane, PostgreSQL, Redis) on the other
//!   half — the S3 server on hardware of its own, as it is in any
//!   deployment (an external S3 service, or its own nodes). The ratio then
//!   says what going through the API costs in throughput when the S3
//!   server's resources are the same on both sides. The previous
//!   affinities are put back at the end, also on failure.
//!
//! `storage-bench [SECONDS] [CONCURRENCY] [BIG_MIB] [ROUNDS] [CPUS]`
//! (defaults 10, 16, 1024, 2, shared), stack env sourced, after
//! `cargo build --release -p strata-dataplane -p strata-bench`. Everything
//! it creates (catalog, tenant database and roles, blobs) is removed at the
//! end.

#[path = "../harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::StreamExt as _;
use harness::{Setup, cpu_ticks, load, median, peak_rss_kib, percentile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_tests::env;
use uuid::Uuid;

const MIB: usize = 1 << 20;
const SMALL: usize = MIB;
/// 1 MiB objects per side that GETs pick from.
const GET_POOL: usize = 64;
/// Part size of the direct multipart upload (the data plane's S3 backend
/// uses the same, `strata_storage::s3::PART_SIZE`).
const PART: usize = 8 * MIB;
const STAMP_EVERY: usize = 4096;
const BUCKET: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Api,
    Direct,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Api => "API",
            Self::Direct => "direct",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Get,
}

struct Ctx {
    http: reqwest::Client,
    /// `…/v1/tenants/<t>/buckets/bench/objects`.
    objects: String,
    auth: String,
    s3: S3,
    s3_bucket: String,
    /// Prefix of the direct side's keys in the data bucket.
    direct_prefix: String,
    nonce: u64,
    seq: AtomicU64,
    template: Vec<u8>,
    dataplane_pid: u32,
    garage_pid: Option<u32>,
}

/// CPU seconds spent during a run: data plane, Garage, PostgreSQL (every
/// `postgres` process, so the data plane's backends and the stack's
/// others alike: run it on a quiet stack), this process.
#[derive(Default, Clone, Copy)]
struct Cpu {
    dataplane: f64,
    garage: f64,
    postgres: f64,
    client: f64,
}

impl Cpu {
    fn now(ctx: &Ctx) -> Self {
        let s = |ticks: u64| ticks as f64 / harness::CLOCK_TICKS;
        Self {
            dataplane: s(cpu_ticks(&ctx.dataplane_pid.to_string())),
            garage: ctx.garage_pid.map_or(0.0, |p| s(cpu_ticks(&p.to_string()))),
            postgres: s(postgres_ticks()),
            client: s(cpu_ticks("self")),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            dataplane: self.dataplane - before.dataplane,
            garage: self.garage - before.garage,
            postgres: self.postgres - before.postgres,
            client: self.client - before.client,
        }
    }

    fn add(&mut self, other: Self) {
        self.dataplane += other.dataplane;
        self.garage += other.garage;
        self.postgres += other.postgres;
        self.client += other.client;
    }
}

/// One measured run.
#[derive(Default)]
struct Run {
    bytes: u64,
    count: usize,
    elapsed: Duration,
    /// Per-request latency, ms.
    latency: Vec<f64>,
    cpu: Cpu,
    load: f64,
}

impl Run {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }

    fn merge(&mut self, other: Run) {
        self.bytes += other.bytes;
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.latency.extend(other.latency);
        self.cpu.add(other.cpu);
        self.load = self.load.max(other.load);
    }

    /// CPU seconds per GiB moved.
    fn cpu_per_gib(&self) -> Cpu {
        let gib = self.bytes as f64 / (1u64 << 30) as f64;
        Cpu {
            dataplane: self.cpu.dataplane / gib,
            garage: self.cpu.garage / gib,
            postgres: self.cpu.postgres / gib,
            client: self.cpu.client / gib,
        }
    }
}

/// `len` bytes from the template, stamped every 4 KiB with the run nonce,
/// the object's sequence number and the offset (printable, no signature).
fn payload(ctx: &Ctx, len: usize, seq: u64) -> Bytes {
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let n = (len - body.len()).min(ctx.template.len());
        body.extend_from_slice(&ctx.template[..n]);
    }
    let mut offset = 0;
    while offset + 40 <= len {
        let stamp = format!("{:016x}{seq:012x}{offset:012x}", ctx.nonce);
        body[offset..offset + 40].copy_from_slice(stamp.as_bytes());
        offset += STAMP_EVERY;
    }
    Bytes::from(body)
}

fn api_url(ctx: &Ctx, key: &str) -> String {
    format!("{}/{key}", ctx.objects)
}

fn direct_key(ctx: &Ctx, key: &str) -> String {
    format!("{}/{key}", ctx.direct_prefix)
}

async fn put(ctx: &Ctx, side: Side, key: &str, body: Bytes) -> anyhow::Result<()> {
    match side {
        Side::Api => {
            let r = ctx
                .http
                .put(api_url(ctx, key))
                .header("authorization", &ctx.auth)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await?;
            let status = r.status();
            let text = r.text().await?;
            anyhow::ensure!(status.as_u16() == 201, "PUT {key}: HTTP {status}: {text}");
            Ok(())
        }
        Side::Direct if body.len() <= PART => {
            ctx.s3
                .put_object()
                .bucket(&ctx.s3_bucket)
                .key(direct_key(ctx, key))
                .content_length(i64::try_from(body.len())?)
                .body(ByteStream::from(body))
                .send()
                .await
                .with_context(|| format!("PutObject {key}"))?;
            Ok(())
        }
        Side::Direct => put_multipart(ctx, key, body).await,
    }
}

/// A multipart upload of 8 MiB parts, one at a time.
async fn put_multipart(ctx: &Ctx, key: &str, body: Bytes) -> anyhow::Result<()> {
    let key = direct_key(ctx, key);
    let created = ctx
        .s3
        .create_multipart_upload()
        .bucket(&ctx.s3_bucket)
        .key(&key)
        .send()
        .await
        .context("CreateMultipartUpload")?;
    let upload = created.upload_id().context("no upload id")?.to_string();
    let mut parts = Vec::new();
    for (i, start) in (0..body.len()).step_by(PART).enumerate() {
        let chunk = body.slice(start..(start + PART).min(body.len()));
        let number = i32::try_from(i + 1)?;
        let done = ctx
            .s3
            .upload_part()
            .bucket(&ctx.s3_bucket)
            .key(&key)
            .upload_id(&upload)
            .part_number(number)
            .content_length(i64::try_from(chunk.len())?)
            .body(ByteStream::from(chunk))
            .send()
            .await
            .context("UploadPart")?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(done.e_tag().map(str::to_string))
                .build(),
        );
    }
    ctx.s3
        .complete_multipart_upload()
        .bucket(&ctx.s3_bucket)
        .key(&key)
        .upload_id(&upload)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .context("CompleteMultipartUpload")?;
    Ok(())
}

/// Reads the whole object, chunk by chunk; returns its length.
async fn get(ctx: &Ctx, side: Side, key: &str) -> anyhow::Result<u64> {
    let mut n = 0u64;
    match side {
        Side::Api => {
            let mut r = ctx
                .http
                .get(api_url(ctx, key))
                .header("authorization", &ctx.auth)
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 200, "GET {key}: HTTP {}", r.status());
            while let Some(chunk) = r.chunk().await? {
                n += chunk.len() as u64;
            }
        }
        Side::Direct => {
            let out = ctx
                .s3
                .get_object()
                .bucket(&ctx.s3_bucket)
                .key(direct_key(ctx, key))
                .send()
                .await
                .with_context(|| format!("GetObject {key}"))?;
            let mut body = out.body;
            while let Some(chunk) = body.next().await {
                n += chunk?.len() as u64;
            }
        }
    }
    Ok(n)
}

async fn delete(ctx: &Ctx, side: Side, key: &str) -> anyhow::Result<()> {
    match side {
        Side::Api => {
            let r = ctx
                .http
                .delete(api_url(ctx, key))
                .header("authorization", &ctx.auth)
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 204, "DELETE {key}: {}", r.status());
        }
        Side::Direct => {
            ctx.s3
                .delete_object()
                .bucket(&ctx.s3_bucket)
                .key(direct_key(ctx, key))
                .send()
                .await?;
        }
    }
    Ok(())
}

/// Every blob under `prefix` in the data bucket, deleted.
async fn delete_prefix(s3: &S3, bucket: &str, prefix: &str) -> anyhow::Result<usize> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let n = keys.len();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(keys)
        .map(|key| async move {
            s3.delete_object().bucket(bucket).key(key).send().await?;
            Ok::<(), anyhow::Error>(())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(n)
}

/// One 1 GiB transfer, timed.
async fn big_once(
    ctx: &Ctx,
    side: Side,
    key: &str,
    len: u64,
    body: Option<Bytes>,
) -> anyhow::Result<Run> {
    let load = load();
    let before = Cpu::now(ctx);
    let started = Instant::now();
    match body {
        Some(body) => put(ctx, side, key, body).await?,
        None => {
            let n = get(ctx, side, key).await?;
            anyhow::ensure!(n == len, "GET {key}: {n} bytes, want {len}");
        }
    }
    let elapsed = started.elapsed();
    Ok(Run {
        bytes: len,
        count: 1,
        elapsed,
        latency: vec![elapsed.as_secs_f64() * 1000.0],
        cpu: Cpu::now(ctx).since(before),
        load,
    })
}

/// `concurrency` clients doing `op` on 1 MiB objects back to back.
async fn drive(
    ctx: &Arc<Ctx>,
    side: Side,
    op: Op,
    concurrency: usize,
    time: Duration,
) -> anyhow::Result<Run> {
    let load = load();
    let before = Cpu::now(ctx);
    let started = Instant::now();
    let deadline = started + time;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut latency = Vec::new();
            let mut bytes = 0u64;
            while Instant::now() < deadline {
                let seq = ctx.seq.fetch_add(1, Ordering::Relaxed);
                // Generated before the clock starts: the body is the
                // client's data, not part of the transfer.
                let body = (op == Op::Put).then(|| payload(&ctx, SMALL, seq));
                let t = Instant::now();
                match body {
                    Some(body) => {
                        put(&ctx, side, &format!("p/{seq}"), body).await?;
                    }
                    None => {
                        let key = format!("g/{}", rng.random_range(0..GET_POOL));
                        let n = get(&ctx, side, &key).await?;
                        anyhow::ensure!(n == SMALL as u64, "short GET");
                    }
                }
                latency.push(t.elapsed().as_secs_f64() * 1000.0);
                bytes += SMALL as u64;
            }
            Ok::<_, anyhow::Error>((latency, bytes))
        }));
    }
    let mut run = Run {
        load,
        ..Run::default()
    };
    for w in workers {
        let (latency, bytes) = w.await??;
        run.count += latency.len();
        run.latency.extend(latency);
        run.bytes += bytes;
    }
    run.elapsed = started.elapsed();
    run.cpu = Cpu::now(ctx).since(before);
    Ok(run)
}

fn s3_client() -> S3 {
    let credentials = Credentials::new(
        env("STRATA_S3_ACCESS_KEY_ID"),
        env("STRATA_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "storage-bench",
    );
    // As the data plane's backend configures it (strata_storage::s3).
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(env("STRATA_S3_REGION")))
        .credentials_provider(credentials)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .endpoint_url(env("STRATA_S3_ENDPOINT"))
        .build();
    S3::from_conf(config)
}

/// Both sides, the API first in even turns and the direct side in odd
/// ones, so neither always runs in the other's wake.
fn sides_in_turn(turn: usize) -> [Side; 2] {
    if turn.is_multiple_of(2) {
        [Side::Api, Side::Direct]
    } else {
        [Side::Direct, Side::Api]
    }
}

/// [`harness::settle`], saying how long it waited.
async fn settle_before(what: &str) {
    let waited = harness::settle().await;
    eprintln!("{what}: machine quiet after {:.1} s", waited.as_secs_f64());
}

/// CPU ticks of every `postgres` process, with what the postmaster reaped
/// (`cutime`, `cstime`): a backend that exits mid-run still counts.
fn postgres_ticks() -> u64 {
    processes_named(&["postgres"])
        .into_iter()
        .map(|pid| harness::cpu_ticks_with_children(&pid.to_string()))
        .sum()
}

/// The pids of every process whose command is one of `names`.
fn processes_named(names: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        names.contains(&comm.trim()).then_some(pid)
    })
    .collect()
}

/// The pid of the stack's Garage server, for its CPU time.
fn garage_pid() -> Option<u32> {
    processes_named(&["garage"]).first().copied()
}

fn row(label: &str, side: Side, run: &mut Run, mib_s: f64, ratio: Option<f64>) -> String {
    let cpu = run.cpu_per_gib();
    let p50 = percentile(&mut run.latency, 0.5);
    let p99 = percentile(&mut run.latency, 0.99);
    format!(
        "| {label} | {} | {mib_s:.0} | {} | {p50:.1} | {p99:.1} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
        side.name(),
        ratio.map_or("–".into(), |r| format!("{r:.2}")),
        if side == Side::Api {
            format!("{:.2}", cpu.dataplane)
        } else {
            "–".into()
        },
        cpu.garage,
        cpu.postgres,
        cpu.client,
        run.load,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let big_mib: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let topology = match args.next().as_deref() {
        None | Some("shared") => None,
        Some("split") => Some(SplitCpus::apply()?),
        Some(other) => anyhow::bail!("CPUS is `shared` or `split`, not {other:?}"),
    };
    let label = topology.as_ref().map_or(
        "every process on every core".to_string(),
        SplitCpus::describe,
    );
    harness::with_tenant("storage-bench", move |setup| {
        run(setup, seconds, concurrency, big_mib, rounds, label)
    })
    .await
    // `topology` is dropped here: the affinities are put back.
}

/// The `split` topology: Garage's threads on `s3_cpus`, this process
/// (whose data plane child inherits it), PostgreSQL's and Redis's
/// processes on `other_cpus`. New PostgreSQL backends fork from the
/// postmaster, so they inherit its affinity. Set with util-linux's
/// `taskset` (every thread of a process with `-a`).
struct SplitCpus {
    s3_cpus: String,
    other_cpus: String,
    all_cpus: String,
    /// Every process pinned, to be given every core back.
    pinned: Vec<u32>,
}

impl SplitCpus {
    fn apply() -> anyhow::Result<Self> {
        let n = std::thread::available_parallelism()?.get();
        anyhow::ensure!(
            n >= 2,
            "the split topology needs two cores or more, not {n}"
        );
        let half = n / 2;
        let list = |from: usize, to: usize| format!("{from}-{}", to - 1);
        let mut split = Self {
            s3_cpus: list(0, half),
            other_cpus: list(half, n),
            all_cpus: list(0, n),
            pinned: Vec::new(),
        };
        let garage = garage_pid().context("no garage process to pin")?;
        split.pin(garage, CpuHalf::S3)?;
        let others = processes_named(&["postgres", "redis-server"])
            .into_iter()
            .chain([std::process::id()]);
        for pid in others {
            split.pin(pid, CpuHalf::Rest)?;
        }
        Ok(split)
    }

    /// Recorded before `taskset` runs, so a failed pin is undone too.
    fn pin(&mut self, pid: u32, half: CpuHalf) -> anyhow::Result<()> {
        self.pinned.push(pid);
        let cpus = match half {
            CpuHalf::S3 => &self.s3_cpus,
            CpuHalf::Rest => &self.other_cpus,
        };
        taskset(pid, cpus)
    }

    fn describe(&self) -> String {
        format!(
            "Garage on CPUs {}, the client, data plane, PostgreSQL and Redis on CPUs {}",
            self.s3_cpus, self.other_cpus
        )
    }
}

/// Which of the two sets of cores a process of the `split` topology gets.
#[derive(Clone, Copy)]
enum CpuHalf {
    S3,
    Rest,
}

impl Drop for SplitCpus {
    fn drop(&mut self) {
        for &pid in &self.pinned {
            if let Err(e) = taskset(pid, &self.all_cpus) {
                eprintln!("could not give pid {pid} every core back: {e:#}");
            }
        }
    }
}

fn taskset(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("run taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset {cpus} {pid}: {status}");
    Ok(())
}

async fn run(
    setup: Setup,
    seconds: u64,
    concurrency: usize,
    big_mib: usize,
    rounds: usize,
    topology: String,
) -> anyhow::Result<()> {
    let s3 = s3_client();
    let s3_bucket = env("STRATA_S3_BUCKET");
    let nonce: u64 = rand::rng().random();
    let direct_prefix = format!("storage-bench/{nonce:016x}");
    let tenant_prefix = format!("t/{}/", setup.tenant);
    let result = measure(
        &setup,
        s3.clone(),
        &s3_bucket,
        &direct_prefix,
        nonce,
        seconds,
        concurrency,
        big_mib,
        rounds,
        &topology,
    )
    .await;
    // The blobs of both sides, whatever happened.
    for prefix in [format!("{direct_prefix}/"), tenant_prefix] {
        match delete_prefix(&s3, &s3_bucket, &prefix).await {
            Ok(n) => println!("removed {n} blobs under {prefix}"),
            Err(e) => eprintln!("cleanup of {prefix}: {e:#}"),
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    setup: &Setup,
    s3: S3,
    s3_bucket: &str,
    direct_prefix: &str,
    nonce: u64,
    seconds: u64,
    concurrency: usize,
    big_mib: usize,
    rounds: usize,
    topology: &str,
) -> anyhow::Result<()> {
    // The bucket, as the operator's Bucket reconcile writes it.
    let bucket_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO catalog.buckets (id, tenant_id, name, namespace, backend_prefix, public,
                allowed_content_types, lifecycle, antivirus_scan, state)
         VALUES ($1, $2, $3, 'bench', $4, false, '{}', '[]', false, 'ready')",
    )
    .bind(bucket_id)
    .bind(setup.tenant)
    .bind(BUCKET)
    .bind(strata_db::catalog::backend_prefix(setup.tenant, bucket_id))
    .execute(setup.catalog.pool())
    .await
    .context("insert bucket")?;

    let off = || "0".to_string();
    let dataplane = harness::start_dataplane(
        setup,
        "S3 backend",
        &[
            ("STRATA_STORAGE_BACKEND", "s3".into()),
            ("STRATA_TENANT_POOL_SIZE", concurrency.to_string()),
            ("STRATA_RATE_LIMIT_TENANT_RPS", off()),
            ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", off()),
            ("STRATA_RATE_LIMIT_ANONYMOUS_RPS", off()),
        ],
    )
    .await?;
    let pid = dataplane.pid;
    let started_kib = peak_rss_kib(pid).unwrap_or(0);
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let base = format!("{}/v1/tenants/{}", dataplane.root, setup.tenant_name);
    let auth = harness::accept_invite(&http, &base, &setup.invite).await?;
    // Printable ASCII without `<`: no signature, no markup.
    let template: Vec<u8> = (0..MIB)
        .map(|i| {
            let b = ((i as u32).wrapping_mul(31) % 94) as u8 + 33;
            if b == b'<' { b'a' } else { b }
        })
        .collect();
    let garage_pid = garage_pid();
    let ctx = Arc::new(Ctx {
        http,
        objects: format!("{base}/buckets/{BUCKET}/objects"),
        auth,
        s3,
        s3_bucket: s3_bucket.to_string(),
        direct_prefix: direct_prefix.to_string(),
        nonce,
        seq: AtomicU64::new(0),
        template,
        dataplane_pid: pid,
        garage_pid,
    });
    println!(
        "data plane VmHWM after start {:.1} MiB; Garage pid {garage_pid:?}",
        started_kib as f64 / 1024.0
    );

    // 1. One big object, single stream, on the fresh process.
    let big = big_mib * MIB;
    let mut big_runs: Vec<(Side, Op, Run)> = Vec::new();
    for round in 0..rounds {
        // Each side goes first in every other round, and every transfer
        // starts on a quiet machine (harness::settle).
        let sides = sides_in_turn(round);
        for side in sides {
            let body = payload(&ctx, big, ctx.seq.fetch_add(1, Ordering::Relaxed));
            settle_before(&format!("round {round}: PUT {}", side.name())).await;
            let run = big_once(&ctx, side, "big", big as u64, Some(body)).await?;
            eprintln!(
                "round {round}: {big_mib} MiB PUT {}: {:.0} MiB/s",
                side.name(),
                run.mib_s()
            );
            big_runs.push((side, Op::Put, run));
        }
        for side in sides {
            settle_before(&format!("round {round}: GET {}", side.name())).await;
            let run = big_once(&ctx, side, "big", big as u64, None).await?;
            eprintln!(
                "round {round}: {big_mib} MiB GET {}: {:.0} MiB/s",
                side.name(),
                run.mib_s()
            );
            big_runs.push((side, Op::Get, run));
        }
        for side in [Side::Api, Side::Direct] {
            delete(&ctx, side, "big").await?;
        }
    }
    let big_peak = peak_rss_kib(pid).unwrap_or(0);

    // 2. 1 MiB objects, concurrently.
    let futures: Vec<_> = (0..GET_POOL)
        .flat_map(|i| [Side::Api, Side::Direct].map(|side| (i, side)))
        .map(|(i, side)| {
            let ctx = ctx.clone();
            async move {
                let body = payload(&ctx, SMALL, ctx.seq.fetch_add(1, Ordering::Relaxed));
                put(&ctx, side, &format!("g/{i}"), body).await
            }
        })
        .collect();
    futures::stream::iter(futures)
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let half = Duration::from_secs(seconds).max(Duration::from_secs(2)) / 2;
    let warm = Duration::from_secs(1);
    let mut small: Vec<(Op, Run, Run)> = Vec::new();
    for op in [Op::Put, Op::Get] {
        drive(&ctx, Side::Api, op, concurrency, warm).await?;
        drive(&ctx, Side::Direct, op, concurrency, warm).await?;
        let (mut api, mut direct) = (Run::default(), Run::default());
        for half_run in 0..2 {
            for side in sides_in_turn(half_run) {
                settle_before(&format!("1 MiB {op:?} {}", side.name())).await;
                let run = drive(&ctx, side, op, concurrency, half).await?;
                match side {
                    Side::Api => api.merge(run),
                    Side::Direct => direct.merge(run),
                }
            }
        }
        eprintln!(
            "1 MiB {op:?}: API {:.0} MiB/s, direct {:.0} MiB/s",
            api.mib_s(),
            direct.mib_s()
        );
        small.push((op, api, direct));
    }
    let total_peak = peak_rss_kib(pid).unwrap_or(0);

    println!(
        "\n{big_mib} MiB single stream ({rounds} rounds, API and direct alternately), \
         1 MiB objects from {concurrency} clients ({seconds} s per side), data plane on S3 (Garage); \
         {topology}\n"
    );
    println!(
        "| operation | side | MiB/s | API/direct | p50 ms | p99 ms | data plane CPU s/GiB | Garage CPU s/GiB | PostgreSQL CPU s/GiB | client CPU s/GiB | load (1 min) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for op in [Op::Put, Op::Get] {
        let rates = |side: Side| {
            median(
                big_runs
                    .iter()
                    .filter(|(s, o, _)| *s == side && *o == op)
                    .map(|(_, _, r)| r.mib_s())
                    .collect(),
            )
        };
        let (api_rate, direct_rate) = (rates(Side::Api), rates(Side::Direct));
        for side in [Side::Api, Side::Direct] {
            let mut merged = Run::default();
            for (_, _, r) in big_runs
                .iter_mut()
                .filter(|(s, o, _)| *s == side && *o == op)
            {
                merged.merge(std::mem::take(r));
            }
            let (rate, ratio) = match side {
                Side::Api => (api_rate, Some(api_rate / direct_rate)),
                Side::Direct => (direct_rate, None),
            };
            println!(
                "{}",
                row(
                    &format!("{big_mib} MiB {op:?} (median of {rounds})"),
                    side,
                    &mut merged,
                    rate,
                    ratio
                )
            );
        }
    }
    for (op, mut api, mut direct) in small {
        let ratio = api.mib_s() / direct.mib_s();
        let label = format!("1 MiB {op:?} × {concurrency}");
        let rate = api.mib_s();
        println!("{}", row(&label, Side::Api, &mut api, rate, Some(ratio)));
        let rate = direct.mib_s();
        println!("{}", row(&label, Side::Direct, &mut direct, rate, None));
    }
    println!(
        "\ndata plane peak RSS (VmHWM): {:.1} MiB after start, {:.1} MiB after the {big_mib} MiB \
         transfers, {:.1} MiB at the end",
        started_kib as f64 / 1024.0,
        big_peak as f64 / 1024.0,
        total_peak as f64 / 1024.0
    );
    drop(dataplane);
    Ok(())
}
