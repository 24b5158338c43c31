//! What the storage tests share: backends on the stack's real services, and
//! bodies to stream.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use strata_storage::{Backend, BackendKind, BlobKey, ByteStream, S3Backend, StorageArgs};

/// The bucket the S3 tests use (created by `S3Backend::connect`), apart from
/// the data bucket of a running data plane.
pub const TEST_BUCKET: &str = "strata-storage-tests";

/// A required variable of `.stack/env`: the tests run against the real
/// stack and fail, rather than skip, without it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the stack and `source .stack/env` (make test does both)")
    })
}

pub fn s3_args(bucket: &str) -> StorageArgs {
    StorageArgs {
        backend: BackendKind::S3,
        root: "unused".into(),
        s3_endpoint: Some(env("STRATA_S3_ENDPOINT")),
        s3_region: env("STRATA_S3_REGION"),
        s3_bucket: bucket.into(),
        s3_access_key_id: Some(env("STRATA_S3_ACCESS_KEY_ID")),
        s3_secret_access_key: Some(env("STRATA_S3_SECRET_ACCESS_KEY")),
    }
}

pub async fn s3_backend(bucket: &str) -> S3Backend {
    S3Backend::connect(&s3_args(bucket))
        .await
        .expect("connect to the stack's S3 server")
}

/// A raw SDK client, to look behind the backend (multipart uploads, ETags).
pub fn s3_client() -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(
        env("STRATA_S3_ACCESS_KEY_ID"),
        env("STRATA_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "strata-storage-tests",
    );
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(env("STRATA_S3_REGION")))
            .endpoint_url(env("STRATA_S3_ENDPOINT"))
            .credentials_provider(credentials)
            .force_path_style(true)
            .build(),
    )
}

/// One test's backend and its own key prefix (tests share the S3 bucket).
pub struct Ctx {
    pub backend: Arc<dyn Backend>,
    pub prefix: String,
    pub kind: &'static str,
    pub dir: Option<tempfile::TempDir>,
}

impl Ctx {
    pub async fn fs() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = strata_storage::FsBackend::open(dir.path().join("objects"))
            .await
            .expect("open fs backend");
        Self {
            backend: Arc::new(backend),
            prefix: unique_prefix(),
            kind: "fs",
            dir: Some(dir),
        }
    }

    pub async fn s3() -> Self {
        Self {
            backend: Arc::new(s3_backend(TEST_BUCKET).await),
            prefix: unique_prefix(),
            kind: "s3",
            dir: None,
        }
    }

    pub fn key(&self, rest: &str) -> BlobKey {
        BlobKey::parse(format!("{}/{rest}", self.prefix)).expect("valid test key")
    }

    /// Every blob under this test's prefix (all of them, in order).
    pub async fn list_all(&self) -> Vec<String> {
        self.backend
            .list(&format!("{}/", self.prefix), None, 10_000)
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.key.as_str()[self.prefix.len() + 1..].to_owned())
            .collect()
    }

    /// Removes what the test stored (the S3 bucket is shared).
    pub async fn cleanup(self) {
        let blobs = self
            .backend
            .list(&format!("{}/", self.prefix), None, 10_000)
            .await
            .expect("list");
        for blob in blobs {
            self.backend.delete(&blob.key).await.expect("delete");
        }
    }
}

pub fn unique_prefix() -> String {
    format!("test/{}", uuid::Uuid::new_v4().simple())
}

/// `data` as a body, in chunks of `chunk` bytes.
pub fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// `len` pseudo-random bytes, deterministic for a `seed`, in chunks of
/// `chunk`: slices of one random block at offsets that move with each chunk,
/// so a body of any size costs neither memory nor (unoptimised test build)
/// CPU, and misplaced or repeated parts of it show.
pub fn generated(len: u64, chunk: usize, seed: u64) -> ByteStream {
    const BLOCK: usize = 4 << 20;
    let chunk = chunk.clamp(1, BLOCK / 2);
    let mut state = seed | 1;
    let mut block = Vec::with_capacity(BLOCK + 8);
    while block.len() < BLOCK {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        block.extend_from_slice(&state.to_le_bytes());
    }
    let block = Bytes::from(block);
    let mut left = len;
    let mut index: usize = 0;
    Box::pin(futures::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = usize::try_from(left.min(chunk as u64)).expect("chunk fits usize");
        let offset = index.wrapping_mul(7_919) % (BLOCK - n);
        index += 1;
        left -= n as u64;
        std::task::Poll::Ready(Some(Ok(block.slice(offset..offset + n))))
    }))
}

/// Whether two streams hold the same bytes (chunked differently), without
/// holding either; returns the length.
pub async fn assert_same(mut a: ByteStream, mut b: ByteStream) -> u64 {
    let (mut left, mut right) = (Bytes::new(), Bytes::new());
    let mut offset = 0u64;
    loop {
        if left.is_empty() {
            left = a
                .next()
                .await
                .map(|c| c.expect("read chunk"))
                .unwrap_or_default();
        }
        if right.is_empty() {
            right = b
                .next()
                .await
                .map(|c| c.expect("read chunk"))
                .unwrap_or_default();
        }
        if left.is_empty() || right.is_empty() {
            assert!(
                left.is_empty() && right.is_empty(),
                "streams differ in length after {offset} bytes"
            );
            return offset;
        }
        let n = left.len().min(right.len());
        assert!(
            left[..n] == right[..n],
            "streams differ within bytes {offset}..{}",
            offset + n as u64
        );
        offset += n as u64;
        left = left.slice(n..);
        right = right.slice(n..);
    }
}

/// A body that yields `data` and then fails, as a client that goes away.
pub fn failing(data: Vec<u8>, chunk: usize) -> ByteStream {
    let good = body(&data, chunk);
    let bad = futures::stream::once(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        ))
    });
    Box::pin(good.chain(bad))
}

pub async fn read_all(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    out
}

/// SHA-256 and length of a stream, without holding it.
pub async fn digest(mut stream: ByteStream) -> (String, u64) {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("read chunk");
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (hex::encode(hasher.finalize()), len)
}
