//! Puts and gets stream: the process's peak RSS stays far below the size of
//! the blob. A test binary of its own, so that no other test's memory counts.
//!
//! Size: `STRATA_STORAGE_RSS_MIB` (default 128; the figure is 1024:
//! `STRATA_STORAGE_RSS_MIB=1024 cargo test -p strata-storage --test memory -- --nocapture`).

mod support;

use std::time::Instant;

use strata_storage::{Backend, BlobKey};
use support::{assert_same, generated};

/// The data plane's target while streaming 1 GiB.
const LIMIT_MIB: u64 = 150;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib / 1024
}

fn size_mib() -> u64 {
    std::env::var("STRATA_STORAGE_RSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

async fn stream_through(backend: &dyn Backend, what: &str) {
    let len = size_mib() << 20;
    let key = BlobKey::parse(format!("{}/big", support::unique_prefix())).expect("key");
    let started = Instant::now();
    let stored = backend
        .put(&key, generated(len, 64 * 1024, 11), None)
        .await
        .expect("put");
    let put_secs = started.elapsed().as_secs_f64();
    assert_eq!(stored, len);
    let after_put = peak_rss_mib();
    let started = Instant::now();
    let got_len = assert_same(
        backend.get(&key, None).await.expect("get"),
        generated(len, 64 * 1024, 11),
    )
    .await;
    let get_secs = started.elapsed().as_secs_f64();
    let after_get = peak_rss_mib();
    backend.delete(&key).await.expect("delete");
    let mib = (len >> 20) as f64;
    eprintln!(
        "{what}: {} MiB; put {:.1} s ({:.0} MiB/s), peak RSS {after_put} MiB; \
         get and compare {:.1} s ({:.0} MiB/s), peak RSS {after_get} MiB",
        len >> 20,
        put_secs,
        mib / put_secs,
        get_secs,
        mib / get_secs,
    );
    assert_eq!(got_len, len);
    assert!(
        after_get < LIMIT_MIB,
        "{what}: peak RSS {after_get} MiB streaming {} MiB",
        len >> 20
    );
}

// One test per backend, run one after the other in one test function so that
// the peak of one does not hide in the other's.
#[tokio::test]
async fn puts_and_gets_stream_in_bounded_memory() {
    let backend = support::s3_backend(support::TEST_BUCKET).await;
    stream_through(&backend, "s3").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = strata_storage::FsBackend::open(dir.path())
        .await
        .expect("open");
    stream_through(&backend, "fs").await;
}
