//! Shared by the storage API tests: buckets made the way the operator's
//! Bucket reconcile makes them (a `catalog.buckets` row), both backends
//! (the filesystem in a temp dir, the stack's S3 server), the real router
//! with a `StorageState`, and a raw HTTP/1.1 client for what reqwest
//! would normalise away (`..` segments, chunked bodies, invalid UTF-8).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use strata_dataplane::app::AppState;
use strata_dataplane::storage::antivirus::Scanner;
use strata_dataplane::storage::{StorageSettings, StorageState};
use strata_storage::{Backend, BackendKind, StorageArgs};
use strata_tests::env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Which byte store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Fs,
    S3,
}

/// A backend for the test; the temp dir (fs) lives as long as the value.
pub struct TestBackend {
    pub backend: Arc<dyn Backend>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn backend(store: Store) -> TestBackend {
    match store {
        Store::Fs => {
            let dir = tempfile::tempdir().expect("tempdir");
            let args = StorageArgs {
                backend: BackendKind::Fs,
                root: dir.path().to_path_buf(),
                ..s3_args()
            };
            TestBackend {
                backend: strata_storage::connect(&args).await.expect("fs backend"),
                _dir: Some(dir),
            }
        }
        Store::S3 => TestBackend {
            backend: strata_storage::connect(&s3_args())
                .await
                .expect("s3 backend"),
            _dir: None,
        },
    }
}

fn s3_args() -> StorageArgs {
    StorageArgs {
        backend: BackendKind::S3,
        root: std::env::temp_dir(),
        s3_endpoint: Some(env("STRATA_S3_ENDPOINT")),
        s3_region: env("STRATA_S3_REGION"),
        // The test bucket: every blob key starts with a fresh tenant UID.
        s3_bucket: env("STRATA_S3_TEST_BUCKET"),
        s3_access_key_id: Some(env("STRATA_S3_ACCESS_KEY_ID")),
        s3_secret_access_key: Some(env("STRATA_S3_SECRET_ACCESS_KEY")),
    }
}

pub fn settings() -> StorageSettings {
    StorageSettings {
        bucket_ttl: Duration::from_millis(100),
        sweep_interval: Duration::ZERO,
        lifecycle_interval: Duration::ZERO,
        ..StorageSettings::default()
    }
}

/// The support `AppState` with a real storage state.
pub fn app_state(
    catalog_url: &str,
    backend: Arc<dyn Backend>,
    scanner: Option<Arc<dyn Scanner>>,
    settings: StorageSettings,
) -> AppState {
    let mut state = crate::support::app_state(catalog_url);
    state.storage = StorageState::new(backend, state.catalog.clone(), scanner, settings);
    state
}

/// A bucket row as the operator writes it; `rules` sets columns
/// (`public`, `quota_bytes`, `quota_objects`, `max_object_size`,
/// `allowed_content_types`, `lifecycle`, `antivirus_scan`, `state`).
pub async fn create_bucket(
    catalog: &strata_db::Catalog,
    tenant: Uuid,
    name: &str,
    rules: Value,
) -> Uuid {
    let id = Uuid::new_v4();
    let rule = |k: &str| rules.get(k).cloned().unwrap_or(Value::Null);
    let types: Vec<String> = rule("allowed_content_types")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO catalog.buckets (id, tenant_id, name, namespace, backend_prefix, public,
                quota_bytes, quota_objects, max_object_size, allowed_content_types, lifecycle,
                antivirus_scan, state)
         VALUES ($1, $2, $3, 'test', $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(strata_db::catalog::backend_prefix(tenant, id))
    .bind(rule("public").as_bool().unwrap_or(false))
    .bind(rule("quota_bytes").as_i64())
    .bind(rule("quota_objects").as_i64())
    .bind(rule("max_object_size").as_i64())
    .bind(types)
    .bind(
        rules
            .get("lifecycle")
            .cloned()
            .unwrap_or(serde_json::json!([])),
    )
    .bind(rule("antivirus_scan").as_bool().unwrap_or(false))
    .bind(rule("state").as_str().unwrap_or("ready"))
    .execute(catalog.pool())
    .await
    .expect("insert bucket");
    id
}

/// Sets tenant quotas (`storageBytes`, `objects`) in the catalog.
pub async fn set_tenant_quotas(catalog: &strata_db::Catalog, tenant: Uuid, quotas: Value) {
    sqlx::query("UPDATE catalog.tenants SET quotas = $2 WHERE id = $1")
        .bind(tenant)
        .bind(quotas)
        .execute(catalog.pool())
        .await
        .expect("quotas");
}

/// A raw answer.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends `head` (request line and headers, without the final blank line;
/// `Connection: close` is added) and `body` as they are, and reads the
/// whole answer.
pub async fn raw(base: &str, head: &str, body: &[u8]) -> RawReply {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    RawReply { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .unwrap_or("0")
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// `body` as HTTP/1.1 chunks of `chunk` bytes.
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Deterministic bytes (no signature a sniffer knows).
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    // Printable ASCII without `<`: no format signature, no markup.
    (0..n)
        .map(|i| {
            let b = ((i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) % 94) as u8 + 33;
            if b == b'<' { b'a' } else { b }
        })
        .collect()
}
