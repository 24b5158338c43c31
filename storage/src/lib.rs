//! Where object bytes live. The data plane and the operator reach the byte
//! store only through [`Backend`]; object metadata, usage and events live in
//! the tenant database (see `dataplane::storage`).
//!
//! Locations ([`BlobKey`]) are derived from ids — tenant UID, bucket UID, a
//! fresh version id — never from names a user chose, so a hostile object key
//! cannot address anything in the backend, and a blob is written once and
//! never overwritten (an overwrite of an object is a new blob plus a metadata
//! flip, which is what makes it atomic).

pub mod antivirus;
pub mod fs;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

pub use fs::FsBackend;
pub use s3::S3Backend;

/// A body flowing to or from the backend, chunk by chunk: bodies are never
/// held whole in memory.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A blob's location inside the backend: `/`-separated segments of ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// A key from already-safe segments (ids, fixed words). Panics in debug
    /// builds on a key [`BlobKey::validate`] refuses (a segment that is
    /// empty, starts with `.` or holds `/` or `\\`); in release builds the
    /// backends refuse it on use.
    pub fn from_segments<'a>(segments: impl IntoIterator<Item = &'a str>) -> Self {
        let segments: Vec<&str> = segments.into_iter().collect();
        debug_assert!(segments.iter().all(|s| !s.contains('/')));
        let key = Self(segments.join("/"));
        debug_assert!(key.validate().is_ok(), "unsafe blob key {key:?}");
        key
    }

    /// A key read back from the backend or the database (made by
    /// [`BlobKey::from_segments`]; backends still validate it on use).
    pub fn from_stored(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// A key from untrusted text (a stored row, a listing, a test), checked
    /// like every backend checks a key before using it.
    pub fn parse(key: impl Into<String>) -> Result<Self, BackendError> {
        let key = Self(key.into());
        key.validate()?;
        Ok(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rules every backend enforces on every key, so that no key can
    /// leave the filesystem backend's root and both backends accept exactly
    /// the same keys: 1 to [`MAX_KEY_LEN`] bytes of `/`-separated segments,
    /// none empty (no leading, trailing or double `/`), none starting with
    /// `.` (which also rules out `.` and `..`; dot names are the fs
    /// backend's own), and no backslash, NUL or other control character.
    pub fn validate(&self) -> Result<(), BackendError> {
        let invalid = |why: &str| Err(BackendError::InvalidKey(format!("{why}: {:?}", self.0)));
        if self.0.is_empty() || self.0.len() > MAX_KEY_LEN {
            return invalid("key length out of range");
        }
        for segment in self.0.split('/') {
            if segment.is_empty() {
                return invalid("empty segment");
            }
            if segment.starts_with('.') {
                return invalid("segment starts with '.'");
            }
            if segment.chars().any(|c| c == '\\' || c.is_control()) {
                return invalid("backslash or control character");
            }
        }
        Ok(())
    }
}

/// The longest key a backend accepts, in bytes (S3's own limit).
pub const MAX_KEY_LEN: usize = 1024;

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bytes `start..end` (end exclusive) of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// The range's length; 0 when `end <= start`.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One blob as listed by [`Backend::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub key: BlobKey,
    pub size: u64,
    /// When it was last written (seconds since the Unix epoch), so a sweeper
    /// can leave blobs younger than an upload's lifetime alone.
    pub modified_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("blob not found")]
    NotFound,
    /// The body stream itself failed (client went away, a limit tripped in a
    /// stream adapter): not the backend's fault, and nothing is left behind.
    #[error("body stream failed: {0}")]
    Body(std::io::Error),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The range does not lie within the blob (callers check ranges against
    /// the size they stored, so this means the bytes and the metadata
    /// disagree).
    #[error("range not satisfiable: {0}")]
    InvalidRange(String),
    /// The key breaks [`BlobKey::validate`]'s rules: a bug in the caller
    /// (keys are made from ids), never retried.
    #[error("invalid blob key: {0}")]
    InvalidKey(String),
    /// The backend cannot be set up from the given [`StorageArgs`].
    #[error("storage configuration: {0}")]
    Config(String),
}

/// The SHA-256 of a whole body and its length in bytes, sent once the body
/// has ended (see [`Backend::put_hashed`]).
pub type BodyDigest = tokio::sync::oneshot::Receiver<([u8; 32], u64)>;

/// A byte store. Implementations: [`fs::FsBackend`] (the embedded default)
/// and [`s3::S3Backend`].
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Streams `body` to `key` and returns the number of bytes stored. The
    /// blob becomes visible only complete (never a prefix of it); when the
    /// body or the backend fails, nothing remains at `key`. `size_hint` is
    /// the exact length when the client sent `Content-Length`.
    async fn put(
        &self,
        key: &BlobKey,
        body: ByteStream,
        size_hint: Option<u64>,
    ) -> Result<u64, BackendError>;

    /// [`Self::put`] of a body that the caller hashes on its way in: once the
    /// body has ended, `sha256` receives its SHA-256 and the number of bytes
    /// it covers. A backend that must hash what it sends anyway (S3's SigV4
    /// payload signature) may use it instead of a pass of its own; the
    /// default ignores it.
    async fn put_hashed(
        &self,
        key: &BlobKey,
        body: ByteStream,
        size_hint: Option<u64>,
        sha256: BodyDigest,
    ) -> Result<u64, BackendError> {
        drop(sha256);
        self.put(key, body, size_hint).await
    }

    /// Streams a blob, or the given range of it (already checked against the
    /// blob's size by the caller).
    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, BackendError>;

    /// Copies a blob inside the backend without the bytes passing through us.
    async fn copy(&self, from: &BlobKey, to: &BlobKey) -> Result<(), BackendError>;

    /// Removes a blob; a missing blob is not an error (idempotent).
    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError>;

    /// Blobs under `prefix`, in key order, after `after`, at most `limit`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, BackendError>;

    /// Readiness: the store answers and the configured location exists.
    async fn check(&self) -> Result<(), BackendError>;

    /// Where blobs go, for status and logs (`file:///…` or `s3://bucket/…`;
    /// never credentials).
    fn describe(&self) -> String;

    /// Removes what interrupted puts left behind outside any key — the fs
    /// backend's temp files (last written more than `older_than` ago), S3's
    /// incomplete multipart uploads (started more than `older_than` ago);
    /// returns how many. A put that
    /// fails or is dropped cleans up after itself, so this only matters after
    /// a crash (SIGKILL, power loss). `older_than` must exceed the longest
    /// upload, or a live upload is cut short.
    async fn sweep_partial(&self, older_than: Duration) -> Result<u64, BackendError> {
        let _ = older_than;
        Ok(0)
    }

    /// Deletes every blob under `prefix` — a bucket's or a tenant's, e.g.
    /// `t/<tenant uid>/b/<bucket uid>/` — in one pass in key order, a few
    /// deletes at a time; returns how many. Blobs added behind the pass are
    /// not seen: stop writes first (the bucket's `deleting` state). The
    /// prefix must be a valid key followed by `/`, so that no typo (`""`,
    /// `t/`) can wipe more than one subtree of ids.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, BackendError> {
        use futures::{StreamExt, TryStreamExt};
        let parent = prefix.strip_suffix('/').ok_or_else(|| {
            BackendError::InvalidKey(format!("prefix {prefix:?} does not end with '/'"))
        })?;
        let parent = BlobKey::parse(parent)?;
        if !parent.as_str().contains('/') {
            return Err(BackendError::InvalidKey(format!(
                "prefix {prefix:?} is too short to delete"
            )));
        }
        let mut deleted = 0;
        let mut after: Option<BlobKey> = None;
        loop {
            let page = self.list(prefix, after.as_ref(), 1000).await?;
            let Some(last) = page.last() else {
                return Ok(deleted);
            };
            after = Some(last.key.clone());
            let n = page.len() as u64;
            futures::stream::iter(page)
                .map(|blob| async move { self.delete(&blob.key).await })
                .buffer_unordered(DELETE_CONCURRENCY)
                .try_collect::<()>()
                .await?;
            deleted += n;
        }
    }
}

/// Deletes in flight in [`Backend::delete_prefix`]: enough to hide an S3
/// round trip, few enough not to crowd out the data plane's own requests.
const DELETE_CONCURRENCY: usize = 16;

/// The backend `args` select, checked once ([`Backend::check`]) so that a
/// misconfiguration fails at startup: the fs root is created if missing, the
/// S3 data bucket too (when the key may create buckets).
pub async fn connect(args: &StorageArgs) -> Result<Arc<dyn Backend>, BackendError> {
    let backend: Arc<dyn Backend> = match args.backend {
        BackendKind::Fs => Arc::new(FsBackend::open(&args.root).await?),
        BackendKind::S3 => Arc::new(S3Backend::connect(args).await?),
    };
    backend.check().await?;
    tracing::info!(backend = %backend.describe(), "storage backend ready");
    Ok(backend)
}

/// Which backend, from flags or the environment; shared by the operator and
/// the data plane so both address the same bytes.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// `fs` (a local directory, the embedded default) or `s3`.
    #[arg(
        long = "storage-backend",
        env = "STRATA_STORAGE_BACKEND",
        default_value = "fs"
    )]
    pub backend: BackendKind,
    /// Root directory of the `fs` backend.
    #[arg(
        long = "storage-root",
        env = "STRATA_STORAGE_ROOT",
        default_value = "./.stack/objects"
    )]
    pub root: std::path::PathBuf,
    /// S3 endpoint (path-style addressing is always used).
    #[arg(long = "s3-endpoint", env = "STRATA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(
        long = "s3-region",
        env = "STRATA_S3_REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,
    /// The one backend bucket every Strata bucket lives in, under its own
    /// prefix (`t/<tenant uid>/b/<bucket uid>/`).
    #[arg(
        long = "s3-bucket",
        env = "STRATA_S3_BUCKET",
        default_value = "strata-data"
    )]
    pub s3_bucket: String,
    #[arg(
        long = "s3-access-key-id",
        env = "STRATA_S3_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,
    #[arg(
        long = "s3-secret-access-key",
        env = "STRATA_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Fs,
    S3,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_ids_are_valid() {
        let key = BlobKey::from_segments(["t", "3f2a", "b", "9c1e", "v", "0192"]);
        assert_eq!(key.as_str(), "t/3f2a/b/9c1e/v/0192");
        assert!(key.validate().is_ok());
        assert!(BlobKey::parse("a b/ünï/100%/x?y#z").is_ok());
        assert!(BlobKey::parse("x".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        for key in [
            "", "/abs", "a/", "a//b", ".", "..", "../x", "a/../b", "a/./b", ".hidden", "a/.tmp",
            "a\\b", "a\0b", "a\tb", "a\u{7f}b",
        ] {
            assert!(
                matches!(BlobKey::parse(key), Err(BackendError::InvalidKey(_))),
                "{key:?}"
            );
        }
        assert!(BlobKey::parse("x".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(ByteRange { start: 3, end: 10 }.len(), 7);
        assert!(ByteRange { start: 5, end: 5 }.is_empty());
        assert!(ByteRange { start: 6, end: 5 }.is_empty());
    }
}
