//! What only one backend has: S3's multipart paths, bucket creation and
//! sweeping, the filesystem's staging directory. Against the stack's Garage
//! (`source .stack/env`) and temp dirs.

mod support;

use std::time::Duration;

use strata_storage::{Backend, BackendError, BackendKind, BlobKey, FsBackend, StorageArgs};
use support::{body, digest, generated, read_all};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn s3_large_put_is_multipart() {
    let backend = support::s3_backend(support::TEST_BUCKET).await;
    let key = BlobKey::parse(format!("{}/mp", support::unique_prefix())).expect("key");
    backend
        .put(&key, generated(17 * MIB, 65_537, 7), Some(17 * MIB))
        .await
        .expect("put");
    let head = support::s3_client()
        .head_object()
        .bucket(support::TEST_BUCKET)
        .key(key.as_str())
        .send()
        .await
        .expect("head");
    // A multipart object's ETag ends in -<parts>: 8 + 8 + 1 MiB.
    assert!(
        head.e_tag()
            .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
        "{:?}",
        head.e_tag()
    );
    // And a body of exactly one part is a single PutObject.
    let single = BlobKey::parse(format!("{}/single", support::unique_prefix())).expect("key");
    backend
        .put(&single, generated(8 * MIB, 65_537, 7), None)
        .await
        .expect("put");
    let head = support::s3_client()
        .head_object()
        .bucket(support::TEST_BUCKET)
        .key(single.as_str())
        .send()
        .await
        .expect("head");
    assert!(
        head.e_tag().is_some_and(|t| !t.contains('-')),
        "{:?}",
        head.e_tag()
    );
    backend.delete(&key).await.expect("delete");
    backend.delete(&single).await.expect("delete");
}

/// A body's hash from the caller is what SigV4 signs for a single
/// PutObject (no second pass over the bytes), and the server still checks
/// the body against it: a wrong hash stores nothing. A hash that does not
/// cover the body's length is not used.
#[tokio::test]
async fn s3_put_hashed_signs_the_callers_hash_and_the_server_checks_it() {
    use sha2::{Digest, Sha256};
    let backend = support::s3_backend(support::TEST_BUCKET).await;
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8).collect();
    let right: [u8; 32] = Sha256::digest(&data).into();
    let wrong: [u8; 32] = Sha256::digest(b"other bytes").into();
    let len = data.len() as u64;
    let put = |key: &BlobKey, hash: [u8; 32], covers: u64| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send((hash, covers)).expect("send");
        let backend = &backend;
        let key = key.clone();
        let data = data.clone();
        async move {
            backend
                .put_hashed(&key, body(&data, 65_536), Some(len), rx)
                .await
        }
    };

    let good = BlobKey::parse(format!("{}/hashed", support::unique_prefix())).expect("key");
    assert_eq!(put(&good, right, len).await.expect("put"), len);
    assert_eq!(
        read_all(backend.get(&good, None).await.expect("get")).await,
        data
    );

    let bad = BlobKey::parse(format!("{}/tampered", support::unique_prefix())).expect("key");
    let refused = put(&bad, wrong, len).await;
    assert!(
        refused.is_err(),
        "a body that does not match its signed hash was stored"
    );
    assert!(matches!(
        backend.get(&bad, None).await.map(|_| ()),
        Err(BackendError::NotFound)
    ));

    // Not this body's length: the SDK hashes the body itself.
    let other = BlobKey::parse(format!("{}/other", support::unique_prefix())).expect("key");
    assert_eq!(put(&other, wrong, len - 1).await.expect("put"), len);
    for key in [&good, &other] {
        backend.delete(key).await.expect("delete");
    }
}

/// Copies over the single-request limit go part by part (UploadPartCopy);
/// the limit is lowered from 5 GiB to exercise that here.
#[tokio::test]
async fn s3_large_copy_is_multipart() {
    let backend = support::s3_backend(support::TEST_BUCKET)
        .await
        .with_max_single_copy(5 * MIB);
    let prefix = support::unique_prefix();
    let from = BlobKey::parse(format!("{prefix}/from")).expect("key");
    let to = BlobKey::parse(format!("{prefix}/to")).expect("key");
    let len = 12 * MIB + 3;
    backend
        .put(&from, generated(len, 100_000, 9), None)
        .await
        .expect("put");
    backend.copy(&from, &to).await.expect("copy");
    let want = digest(generated(len, 100_000, 9)).await;
    assert_eq!(
        digest(backend.get(&to, None).await.expect("get")).await,
        want
    );
    let head = support::s3_client()
        .head_object()
        .bucket(support::TEST_BUCKET)
        .key(to.as_str())
        .send()
        .await
        .expect("head");
    assert!(
        head.e_tag()
            .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
        "{:?}",
        head.e_tag()
    );
    backend.delete(&from).await.expect("delete");
    backend.delete(&to).await.expect("delete");
}

/// `connect` creates a missing bucket, and a second connect (another
/// replica) finds it.
#[tokio::test]
async fn s3_connect_creates_the_bucket() {
    let bucket = format!(
        "strata-storage-new-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let args = support::s3_args(&bucket);
    let backend = strata_storage::connect(&args).await.expect("connect");
    assert_eq!(
        backend.describe(),
        format!("s3://{bucket}/ at {}", support::env("STRATA_S3_ENDPOINT"))
    );
    let again = strata_storage::connect(&args).await.expect("connect again");
    again.check().await.expect("check");
    support::s3_client()
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("delete test bucket");
    assert!(matches!(
        again.check().await,
        Err(BackendError::Unavailable(_))
    ));
}

#[tokio::test]
async fn s3_misconfiguration_fails_at_connect() {
    let mut args = support::s3_args(support::TEST_BUCKET);
    args.s3_secret_access_key = None;
    assert!(matches!(
        strata_storage::connect(&args).await,
        Err(BackendError::Config(_))
    ));

    let mut args = support::s3_args(support::TEST_BUCKET);
    args.s3_secret_access_key = Some("s3cr3t-that-must-not-leak".into());
    let err = strata_storage::connect(&args)
        .await
        .err()
        .expect("wrong secret");
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err}");

    // Nothing listens there: a quick, clear failure.
    let port = closed_port().await;
    let mut args = support::s3_args(support::TEST_BUCKET);
    args.s3_endpoint = Some(format!("http://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    let err = strata_storage::connect(&args)
        .await
        .err()
        .expect("no server");
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !err.to_string()
            .contains(&support::env("STRATA_S3_SECRET_ACCESS_KEY")),
        "{err}"
    );
}

/// Multipart uploads of a crashed process are aborted by the sweeper; in a
/// bucket of its own, so that other tests' uploads in flight are safe.
#[tokio::test]
async fn s3_sweep_aborts_stale_uploads() {
    let bucket = "strata-storage-sweep-tests";
    let backend = support::s3_backend(bucket).await;
    let client = support::s3_client();
    let key = format!("{}/orphan", support::unique_prefix());
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .expect("create upload");
    client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(created.upload_id().expect("id"))
        .part_number(1)
        .body(vec![1u8; 1000].into())
        .send()
        .await
        .expect("upload part");
    // Younger than an hour: left alone.
    assert_eq!(
        backend
            .sweep_partial(Duration::from_secs(3600))
            .await
            .expect("sweep"),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(backend.sweep_partial(Duration::ZERO).await.expect("sweep") >= 1);
    let left = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list uploads");
    assert!(left.uploads().is_empty(), "{:?}", left.uploads());
}

#[tokio::test]
async fn fs_sweep_removes_stale_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FsBackend::open(dir.path()).await.expect("open");
    let orphan = backend.root().join(".tmp/put-orphan");
    std::fs::write(&orphan, b"half a blob").expect("write orphan");
    assert_eq!(
        backend
            .sweep_partial(Duration::from_secs(3600))
            .await
            .expect("sweep"),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        backend.sweep_partial(Duration::ZERO).await.expect("sweep"),
        1
    );
    assert!(!orphan.exists());
}

/// `connect` with the fs backend creates the root, and a relative root is
/// resolved once (a later chdir does not move the bytes).
#[tokio::test]
async fn fs_connect_creates_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("deep/er/objects");
    let args = StorageArgs {
        backend: BackendKind::Fs,
        root: root.clone(),
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_bucket: "unused".into(),
        s3_access_key_id: None,
        s3_secret_access_key: None,
    };
    let backend = strata_storage::connect(&args).await.expect("connect");
    assert_eq!(
        backend.describe(),
        format!("file://{}", root.canonicalize().expect("root").display())
    );
    let key = BlobKey::from_segments(["t", "tenant", "b", "bucket", "o", "v1"]);
    backend
        .put(&key, body(b"bytes", 2), Some(5))
        .await
        .expect("put");
    assert_eq!(
        std::fs::read(root.join("t/tenant/b/bucket/o/v1")).expect("file"),
        b"bytes"
    );
    assert_eq!(
        read_all(backend.get(&key, None).await.expect("get")).await,
        b"bytes"
    );
    // Deleting the last blob prunes the directories, but not the root.
    backend.delete(&key).await.expect("delete");
    let mut left: Vec<_> = std::fs::read_dir(&root)
        .expect("root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec![".tmp"]);
}

async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// A read of more than two segments (16 MiB each) goes as ranged
/// GetObjects, the next sent while the current one streams: whatever the
/// range, the bytes come back whole and in order, and a range past the end
/// is refused before any byte, as a single request would.
#[tokio::test]
async fn s3_long_reads_come_back_whole_across_segments() {
    let backend = support::s3_backend(support::TEST_BUCKET).await;
    let key = BlobKey::parse(format!("{}/long", support::unique_prefix())).expect("key");
    let len = 40 * MIB + 777;
    backend
        .put(&key, generated(len, 1_000_003, 9), Some(len))
        .await
        .expect("put");
    let whole = read_all(generated(len, 1_000_003, 9)).await;
    for (start, end) in [
        (0, len),
        (5 * MIB + 3, len - 1),
        (16 * MIB - 10, 16 * MIB + 33 * MIB / 2),
    ] {
        let range = strata_storage::ByteRange { start, end };
        let got = read_all(backend.get(&key, Some(range)).await.expect("get")).await;
        assert_eq!(got.len() as u64, end - start, "range {start}..{end}");
        assert!(
            got == whole[start as usize..end as usize],
            "range {start}..{end}: bytes differ"
        );
    }
    let past = strata_storage::ByteRange {
        start: 0,
        end: len + 1,
    };
    assert!(matches!(
        backend.get(&key, Some(past)).await,
        Err(BackendError::InvalidRange(_))
    ));
    backend.delete(&key).await.expect("delete");
}
