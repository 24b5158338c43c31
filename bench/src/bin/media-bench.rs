//! Image thumbnails through the data plane's render route against
//! `vipsthumbnail` (libvips) in the same run, and Brotli throughput and
//! ratio at the qualities the data plane uses (issue 11).
//!
//! 1. A 4000×3000 JPEG (a synthetic picture — gradients, texture, edges —
//!    written as PPM and encoded by `vips` at Q 90) is uploaded `N` times
//!    under distinct keys to a bucket with `imageTransforms`; each render
//!    `?w=400&fmt=webp|jpeg|avif&q=80` is then a fresh transform (no stored
//!    variant). The release data plane runs as its own process on the fs
//!    backend; this process is the client (one request at a time).
//! 2. Beside each API render, `vipsthumbnail SRC --size 400x -o
//!    OUT.webp[Q=80]` (or `.jpg`, `.avif` — libheif with its default AV1
//!    encoder) as a fresh process per image, as a thumbnailing job runs
//!    it; sides alternate so drift hits both.
//! 3. The transform alone, in this process (`media::transform::render`,
//!    no HTTP, no storage): WebP, and AVIF at ravif speeds 6, 8 and 10,
//!    so the AVIF encoder's own cost is visible beside the decode/resize
//!    every format shares.
//! 4. Brotli, in-process: `compress_bytes` at the wire quality (5) and the
//!    stored quality (9) on a JSON corpus (generated records) and a text
//!    corpus (Debian's copyright files and licences).
//!
//! `media-bench [IMAGES]` (default 30 per format), stack env sourced, after
//! `cargo build --release -p strata-dataplane -p strata-bench --features
//! strata-dataplane/avif` (AVIF is an opt-in feature of the data plane;
//! without it the AVIF rows say so and are skipped). Needs `nasm` for
//! rav1e's assembly.

#[path = "../harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::{Setup, load, peak_rss_kib, percentile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_dataplane::http::compression::{
    STORED_QUALITY, WIRE_QUALITY, compress_bytes, decompress_bytes,
};
use uuid::Uuid;

const BUCKET: &str = "media";
const WIDTH: usize = 4000;
const HEIGHT: usize = 3000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let images: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(30);
    brotli_bench()?;
    harness::with_tenant("media-bench", move |setup| run(setup, images)).await
}

/// A photo-like 4000×3000 picture as binary PPM.
fn synthetic_ppm() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = format!("P6\n{WIDTH} {HEIGHT}\n255\n").into_bytes();
    out.reserve(WIDTH * HEIGHT * 3);
    let discs: Vec<(f64, f64, f64, [u8; 3])> = (0..40)
        .map(|_| {
            (
                rng.random_range(0.0..WIDTH as f64),
                rng.random_range(0.0..HEIGHT as f64),
                rng.random_range(50.0..600.0),
                [rng.random(), rng.random(), rng.random()],
            )
        })
        .collect();
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (fx, fy) = (x as f64, y as f64);
            let mut px = [
                (fx / WIDTH as f64 * 200.0) as u8,
                (fy / HEIGHT as f64 * 180.0) as u8,
                (((fx * 0.01).sin() + (fy * 0.013).cos()) * 50.0 + 110.0) as u8,
            ];
            for (cx, cy, r, colour) in &discs {
                if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                    px = *colour;
                }
            }
            // Grain, as in a photo.
            let grain: i16 = rng.random_range(-12..=12);
            for c in &mut px {
                *c = (i16::from(*c) + grain).clamp(0, 255) as u8;
            }
            out.extend_from_slice(&px);
        }
    }
    out
}

fn vips(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(args[0]).args(&args[1..]).status()?;
    anyhow::ensure!(status.success(), "{args:?}: {status}");
    Ok(())
}

struct Side {
    ms: Vec<f64>,
    bytes: u64,
}

impl Side {
    fn new() -> Self {
        Self {
            ms: Vec::new(),
            bytes: 0,
        }
    }
    fn p(&mut self, q: f64) -> f64 {
        percentile(&mut self.ms, q)
    }
}

async fn run(setup: Setup, images: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let result = measure(&setup, images, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("media-bench-{}", Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("objects"))?;
    std::fs::create_dir_all(dir.join("vips"))?;
    Ok(dir)
}

async fn measure(setup: &Setup, images: usize, dir: &Path) -> anyhow::Result<()> {
    let ppm = dir.join("source.ppm");
    std::fs::write(&ppm, synthetic_ppm())?;
    let source = dir.join("source.jpg");
    vips(&[
        "vips",
        "copy",
        &ppm.display().to_string(),
        &format!("{}[Q=90]", source.display()),
    ])?;
    std::fs::remove_file(&ppm)?;
    let jpeg = std::fs::read(&source)?;
    println!(
        "source: {WIDTH}×{HEIGHT} JPEG Q90, {:.2} MiB",
        jpeg.len() as f64 / 1048576.0
    );

    let bucket_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO catalog.buckets (id, tenant_id, name, namespace, backend_prefix, public,
                allowed_content_types, lifecycle, antivirus_scan, image_transforms, state)
         VALUES ($1, $2, $3, 'bench', $4, false, '{}', '[]', false, true, 'ready')",
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
        "fs backend",
        &[
            ("STRATA_STORAGE_BACKEND", "fs".into()),
            (
                "STRATA_STORAGE_ROOT",
                dir.join("objects").display().to_string(),
            ),
            ("STRATA_RATE_LIMIT_TENANT_RPS", off()),
            ("STRATA_RATE_LIMIT_CREDENTIAL_RPS", off()),
            ("STRATA_RATE_LIMIT_ANONYMOUS_RPS", off()),
        ],
    )
    .await?;
    let pid = dataplane.pid;
    let http = reqwest::Client::builder().http1_only().build()?;
    let base = format!("{}/v1/tenants/{}", dataplane.root, setup.tenant_name);
    let auth = harness::accept_invite(&http, &base, &setup.invite).await?;
    let objects = format!("{base}/buckets/{BUCKET}/objects");
    let render = format!("{base}/buckets/{BUCKET}/render");
    // One source per render (three formats) and one for the warm-ups.
    for i in 0..images * 3 + 1 {
        http.put(format!("{objects}/src-{i}.jpg"))
            .header("authorization", &auth)
            .header("content-type", "image/jpeg")
            .body(jpeg.clone())
            .send()
            .await?
            .error_for_status()?;
    }
    let rss_loaded = peak_rss_kib(pid).unwrap_or(0);
    // One warm-up on each side.
    http.get(format!("{render}/src-{}.jpg?w=400&fmt=webp", images * 3))
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?;
    vips(&[
        "vipsthumbnail",
        &source.display().to_string(),
        "--size",
        "400x",
        "-o",
        &format!("{}/warm.webp[Q=80]", dir.join("vips").display()),
    ])?;
    println!(
        "load {:.1}; {images} images per format, alternating API and vipsthumbnail",
        load()
    );
    let mut key = 0;
    let avif_offered = {
        let probe = http
            .get(format!("{render}/src-{}.jpg?w=40&fmt=avif", images * 3))
            .header("authorization", &auth)
            .send()
            .await?;
        probe.status().is_success()
    };
    if !avif_offered {
        println!("avif: not offered by this data plane (built without the avif feature); skipped");
    }
    for (fmt, ext) in [("webp", "webp"), ("jpeg", "jpg"), ("avif", "avif")] {
        if fmt == "avif" && !avif_offered {
            continue;
        }
        let mut api = Side::new();
        let mut lib = Side::new();
        for i in 0..images {
            let url = format!("{render}/src-{key}.jpg?w=400&fmt={fmt}&q=80");
            key += 1;
            let started = Instant::now();
            let response = http
                .get(&url)
                .header("authorization", &auth)
                .send()
                .await?
                .error_for_status()?;
            let body = response.bytes().await?;
            api.ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if fmt == "avif" {
                anyhow::ensure!(body.get(4..12) == Some(b"ftypavif"), "not an AVIF file");
            }
            api.bytes += body.len() as u64;
            let out = dir.join("vips").join(format!("{i}.{ext}"));
            let started = Instant::now();
            vips(&[
                "vipsthumbnail",
                &source.display().to_string(),
                "--size",
                "400x",
                "-o",
                &format!("{}[Q=80]", out.display()),
            ])?;
            lib.ms.push(started.elapsed().as_secs_f64() * 1000.0);
            lib.bytes += std::fs::metadata(&out)?.len();
        }
        let (a50, a99, l50, l99) = (api.p(0.5), api.p(0.99), lib.p(0.5), lib.p(0.99));
        println!(
            "{fmt:>4} 400 px wide: API p50 {a50:.1} ms p99 {a99:.1} ms ({:.1} KiB avg) | vipsthumbnail p50 {l50:.1} ms p99 {l99:.1} ms ({:.1} KiB avg) | ratio p50 {:.2}× p99 {:.2}×",
            api.bytes as f64 / images as f64 / 1024.0,
            lib.bytes as f64 / images as f64 / 1024.0,
            a50 / l50,
            a99 / l99,
        );
    }
    println!(
        "data plane peak RSS: {:.1} MiB after uploads, {:.1} MiB after renders; load {:.1}",
        rss_loaded as f64 / 1024.0,
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        load()
    );
    drop(dataplane);
    in_process(&jpeg, images)?;
    Ok(())
}

/// The transform alone (decode with shrink-on-load, resize, encode) in
/// this process: WebP beside AVIF at several ravif speeds.
fn in_process(jpeg: &[u8], images: usize) -> anyhow::Result<()> {
    use strata_dataplane::media::params::{AVIF, Params};
    use strata_dataplane::media::transform::{Limits, render};
    let mut cases = vec![("webp", 0u8)];
    if AVIF {
        cases.extend([("avif", 6), ("avif", 8), ("avif", 10)]);
    } else {
        println!("in-process avif: this media-bench was built without the avif feature");
    }
    for (fmt, speed) in cases {
        let fields = [
            ("w", "400".to_string()),
            ("fmt", fmt.to_string()),
            ("q", "80".to_string()),
        ]
        .into_iter()
        .collect();
        let params = Params::from_fields(&fields, 4096).map_err(|e| anyhow::anyhow!("{e}"))?;
        let limits = Limits {
            avif_speed: speed.max(1),
            ..Limits::default()
        };
        let mut side = Side::new();
        for _ in 0..images.max(3) {
            let started = Instant::now();
            let out = render(jpeg, &params, &limits, started + Duration::from_secs(60))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            side.ms.push(started.elapsed().as_secs_f64() * 1000.0);
            side.bytes += out.bytes.len() as u64;
        }
        let n = side.ms.len() as f64;
        println!(
            "in-process {fmt:>4}{}: p50 {:.1} ms p99 {:.1} ms ({:.1} KiB avg)",
            if fmt == "avif" {
                format!(" speed {speed:>2}")
            } else {
                String::new()
            },
            side.p(0.5),
            side.p(0.99),
            side.bytes as f64 / n / 1024.0,
        );
    }
    println!("load {:.1}", load());
    Ok(())
}

/// Brotli throughput and ratio on a JSON and a text corpus.
fn brotli_bench() -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut json = String::new();
    json.push('[');
    let mut i = 0u64;
    while json.len() < 8 << 20 {
        if i > 0 {
            json.push(',');
        }
        let name = format!(
            "{} {}",
            words[rng.random_range(0..words.len())],
            words[rng.random_range(0..words.len())]
        );
        json.push_str(
            &serde_json::json!({
                "id": Uuid::from_u128(rng.random()).to_string(),
                "seq": i,
                "name": name,
                "price": (rng.random_range(100..100_000) as f64) / 100.0,
                "in_stock": rng.random_bool(0.7),
                "tags": [words[rng.random_range(0..words.len())], words[rng.random_range(0..words.len())]],
                "created_at": format!("2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    rng.random_range(1..13), rng.random_range(1..29), rng.random_range(0..24),
                    rng.random_range(0..60), rng.random_range(0..60)),
            })
            .to_string(),
        );
        i += 1;
    }
    json.push(']');
    let mut text = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir("/usr/share/doc")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("copyright"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in files {
        text.extend(std::fs::read(file)?);
    }
    let mut licences: Vec<_> = std::fs::read_dir("/usr/share/common-licenses")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    licences.sort();
    for file in licences {
        text.extend(std::fs::read(file)?);
    }
    text.truncate(8 << 20);
    for (name, corpus) in [("JSON", json.into_bytes()), ("text", text)] {
        for quality in [WIRE_QUALITY, STORED_QUALITY] {
            let started = Instant::now();
            let mut rounds = 0;
            let mut packed = Vec::new();
            while rounds < 3 || started.elapsed() < Duration::from_secs(2) {
                packed = compress_bytes(&corpus, quality)?;
                rounds += 1;
            }
            let seconds = started.elapsed().as_secs_f64() / f64::from(rounds);
            let started = Instant::now();
            let unpacked = decompress_bytes(&packed, corpus.len() + 1)?;
            let unpack = started.elapsed().as_secs_f64();
            anyhow::ensure!(unpacked == corpus, "round trip");
            let mib = corpus.len() as f64 / 1048576.0;
            println!(
                "brotli q{quality} {name} ({mib:.1} MiB): compress {:.1} MiB/s, decompress {:.0} MiB/s, ratio {:.2} ({:.1}% of the input)",
                mib / seconds,
                mib / unpack,
                corpus.len() as f64 / packed.len() as f64,
                packed.len() as f64 * 100.0 / corpus.len() as f64,
            );
        }
    }
    Ok(())
}
