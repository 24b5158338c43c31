//! The clamd client against the stack's real clamd (`STRATA_CLAMD_ADDR`,
//! started by hack/stack.sh with a local signature for the EICAR string).

mod support;

use std::time::Duration;

use bytes::Bytes;
use strata_storage::antivirus::{ScanError, Scanner, Verdict};
use strata_storage::{Backend, BlobKey, FsBackend};
use support::{body, failing, read_all};

fn scanner() -> Scanner {
    Scanner::new(support::env("STRATA_CLAMD_ADDR"))
}

/// The EICAR test string, assembled at run time so that this source file is
/// not itself detected by scanners.
fn eicar() -> Vec<u8> {
    let head = r"X5O!P%@AP[4\PZX54(P^)7CC)7}";
    let tail = "$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    [head, tail].concat().into_bytes()
}

fn assert_eicar(verdict: &Verdict) {
    assert!(
        matches!(verdict, Verdict::Infected(name) if name.starts_with("Eicar-Test-Signature")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn ping() {
    scanner().ping().await.expect("PING");
}

#[tokio::test]
async fn eicar_is_infected() {
    assert_eicar(&scanner().scan_bytes(&eicar()).await);
}

#[tokio::test]
async fn clean_text_is_clean() {
    let text = b"Just a plain text file, nothing to see here.\n".repeat(1000);
    assert_eq!(scanner().scan_bytes(&text).await, Verdict::Clean);
    assert_eq!(scanner().scan_bytes(b"").await, Verdict::Clean);
}

/// Sent in pieces that split the signature, and after other data.
#[tokio::test]
async fn eicar_split_across_chunks_is_found() {
    let mut session = scanner().start().await.expect("start");
    session
        .send(&vec![b'a'; 100_000])
        .await
        .expect("send padding");
    for piece in eicar().chunks(5) {
        session.send(piece).await.expect("send piece");
    }
    session.send(b"").await.expect("an empty chunk is no end");
    session.send(b"trailing\n").await.expect("send");
    assert_eicar(&session.finish().await);
}

/// Past clamd's StreamMaxLength the answer is an error, never OK.
#[tokio::test]
async fn over_the_stream_limit_is_not_clean() {
    let limit: usize = support::env("STRATA_CLAMD_STREAM_MAX_LENGTH")
        .parse()
        .expect("STRATA_CLAMD_STREAM_MAX_LENGTH is a number");
    let mut session = scanner().start().await.expect("start");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    // Send until clamd hangs up (or well past the limit).
    while sent <= limit + (4 << 20) {
        if session.send(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let verdict = session.finish().await;
    eprintln!("after {sent} bytes: {verdict}");
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
}

/// Under the stream limit but over MaxFileSize: with AlertExceedsMax clamd
/// reports Heuristics.Limits.Exceeded (without it, it would say OK for bytes
/// it never scanned).
#[tokio::test]
async fn over_the_file_size_limit_is_not_clean() {
    let max_file: u64 = support::env("STRATA_CLAMD_MAX_FILE_SIZE")
        .parse()
        .expect("STRATA_CLAMD_MAX_FILE_SIZE is a number");
    let mut session = scanner().start().await.expect("start");
    let chunk = vec![b'y'; 1 << 20];
    let mut sent = 0u64;
    while sent <= max_file {
        session
            .send(&chunk)
            .await
            .expect("send under the stream limit");
        sent += chunk.len() as u64;
    }
    let verdict = session.finish().await;
    assert!(
        matches!(&verdict, Verdict::Unscannable(why) if why.contains("Heuristics.Limits.Exceeded")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn unreachable_clamd_is_unscannable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let scanner = Scanner::new(&addr);
    assert!(matches!(
        scanner.start().await.err(),
        Some(ScanError::Connect { .. })
    ));
    assert!(scanner.ping().await.is_err());
    let verdict = scanner.scan_bytes(b"anything").await;
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
}

/// A peer that accepts and never answers: the read timeout ends the wait.
#[tokio::test]
async fn silent_peer_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (conn, _) = listener.accept().await.expect("accept");
            held.push(conn);
        }
    });
    let scanner =
        Scanner::new(&addr).with_timeouts(Duration::from_secs(1), Duration::from_millis(300));
    let started = std::time::Instant::now();
    let verdict = scanner.scan_bytes(b"hello").await;
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.abort();
}

/// The data plane's path: the body goes to the backend while clamd scans it.
#[tokio::test]
async fn tee_scans_while_storing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FsBackend::open(dir.path()).await.expect("open");

    // Clean: stored whole, verdict Clean.
    let data = b"some clean content\n".repeat(200_000); // ~3.8 MB
    let key = BlobKey::parse("t/clean").expect("key");
    let (tee, scan) = scanner().tee(body(&data, 64 * 1024));
    let n = backend.put(&key, tee, None).await.expect("put");
    assert_eq!(n, data.len() as u64);
    assert_eq!(scan.verdict().await, Verdict::Clean);
    assert_eq!(
        read_all(backend.get(&key, None).await.expect("get")).await,
        data
    );

    // Infected: the bytes pass through unchanged, the verdict says no.
    let mut infected = b"header\n".repeat(10_000);
    infected.extend_from_slice(&eicar());
    let key = BlobKey::parse("t/infected").expect("key");
    let (tee, scan) = scanner().tee(body(&infected, 1000));
    backend.put(&key, tee, None).await.expect("put");
    assert_eicar(&scan.verdict().await);

    // A body that fails: the put fails and the verdict is not clean.
    let (tee, scan) = scanner().tee(failing(b"partial".repeat(1000), 100));
    assert!(
        backend
            .put(&BlobKey::parse("t/broken").expect("key"), tee, None)
            .await
            .is_err()
    );
    let verdict = scan.verdict().await;
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
}

/// clamd gone: the upload still flows (the caller decides), the verdict is
/// Unscannable.
#[tokio::test]
async fn tee_without_clamd_is_unscannable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let data = vec![9u8; 1 << 20];
    let (tee, scan) = Scanner::new(addr).tee(body(&data, 4096));
    assert_eq!(read_all(tee).await, data);
    let verdict = scan.verdict().await;
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
}

/// Over the limit while storing: the body is not held back, the verdict is
/// not clean.
#[tokio::test]
async fn tee_over_the_limit_is_unscannable() {
    let limit: u64 = support::env("STRATA_CLAMD_STREAM_MAX_LENGTH")
        .parse()
        .expect("number");
    let len = limit + (2 << 20);
    let (mut tee, scan) = scanner().tee(support::generated(len, 256 * 1024, 3));
    let mut seen = 0u64;
    while let Some(chunk) = futures::StreamExt::next(&mut tee).await {
        let chunk: Bytes = chunk.expect("chunk");
        seen += chunk.len() as u64;
    }
    assert_eq!(seen, len);
    let verdict = scan.verdict().await;
    eprintln!("{verdict}");
    assert!(matches!(verdict, Verdict::Unscannable(_)), "{verdict:?}");
}
