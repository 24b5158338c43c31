//! The storage API (issue 9): buckets' objects under
//! `/v1/tenants/{tenant}/buckets/{bucket}/…`, streamed end to end between
//! the client and the byte store ([`strata_storage::Backend`]), with the
//! metadata, usage, reservations and outbox rows in the tenant database.
//!
//! One file per family of operations:
//! - [`buckets`]: bucket name → rules (`catalog.buckets`), cached;
//! - [`keys`]: what an object key may be (hostile keys are 400s);
//! - [`content_type`]: declared vs allowed vs sniffed types, safe serving;
//! - [`quota`]: reservations and usage counters (exact under concurrency);
//! - [`upload`]: streaming a body into a new blob with every check;
//! - [`store`]: the SQL of object rows, outbox rows included;
//! - [`objects`]: PUT/GET/HEAD/DELETE/copy/list of objects;
//! - [`serving`]: ranges and the headers an object is served with;
//! - [`access`]: who may do what (credentials, public buckets, presigned URLs);
//! - [`presign`], [`multipart`], [`lifecycle`], [`sweeper`].
//!
//! The routes are mounted outside the JSON-only API layer of
//! [`crate::app::api_router`]: object bodies are any type, may be far
//! larger than the JSON body limit and take longer than its timeout.

pub mod access;
pub mod antivirus;
pub mod buckets;
pub mod content_type;
pub mod keys;
pub mod lifecycle;
pub mod multipart;
pub mod objects;
pub mod presign;
pub mod quota;
pub mod routes;
pub mod serving;
pub mod store;
pub mod sweeper;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use strata_storage::{Backend, ByteStream};

pub use routes::router;

use antivirus::{Scanner, Verdict};
use buckets::BucketResolver;

/// Limits and switches of the storage API (from the config).
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Lease of quota reservations and blob intents, renewed while a body
    /// streams; what a killed process holds is reclaimed after it.
    pub lease: Duration,
    /// How long a bucket's rules are reused.
    pub bucket_ttl: Duration,
    /// Longest expiry a presigned URL may have.
    pub presign_max_expiry: Duration,
    /// How long a rotated signing key still verifies.
    pub presign_grace: Duration,
    /// Accept uploads the antivirus could not scan (default: refuse, 503).
    pub antivirus_fail_open: bool,
    /// How often the sweeper and the lifecycle worker run (0: never).
    pub sweep_interval: Duration,
    pub lifecycle_interval: Duration,
    /// Most rows one worker pass handles per bucket.
    pub batch: i64,
    /// Longest an object request may take (uploads of large bodies).
    pub request_timeout: Duration,
    /// How long the blobs of a replaced or deleted object outlive it, so
    /// that reads which started before the change finish whole: a read
    /// opens a multipart object's later blobs, and the S3 backend each
    /// segment of a long blob, only when the stream reaches them. The
    /// sweeper deletes them once due. Zero deletes them right after the
    /// commit. The bytes are not counted in usage meanwhile (Ceph RGW's
    /// garbage collection keeps deleted data for two hours by default for
    /// the same reason).
    pub retired_blob_grace: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            bucket_ttl: Duration::from_secs(2),
            presign_max_expiry: Duration::from_secs(7 * 24 * 3600),
            presign_grace: Duration::from_secs(7 * 24 * 3600),
            antivirus_fail_open: false,
            sweep_interval: Duration::from_secs(60),
            lifecycle_interval: Duration::from_secs(3600),
            batch: 500,
            request_timeout: Duration::from_secs(3600),
            retired_blob_grace: Duration::from_secs(300),
        }
    }
}

/// What the storage handlers share (cheap to clone).
#[derive(Clone)]
pub struct StorageState {
    pub backend: Arc<dyn Backend>,
    pub buckets: Arc<BucketResolver>,
    pub scanner: Option<Arc<dyn Scanner>>,
    pub settings: Arc<StorageSettings>,
    /// Image transforms: limits, permits, single flights (issue 11).
    pub media: Arc<crate::media::Media>,
}

impl StorageState {
    pub fn new(
        backend: Arc<dyn Backend>,
        catalog: PgPool,
        scanner: Option<Arc<dyn Scanner>>,
        settings: StorageSettings,
    ) -> Self {
        Self {
            backend,
            buckets: Arc::new(BucketResolver::new(catalog, settings.bucket_ttl)),
            scanner,
            settings: Arc::new(settings),
            media: Arc::new(crate::media::Media::default()),
        }
    }

    /// Caches bucket rules in `cache` (the two-level cache).
    pub fn with_cache(mut self, cache: crate::cache::HybridCache) -> Self {
        self.buckets = Arc::new((*self.buckets).clone().with_cache(cache));
        self
    }

    /// A state whose backend refuses everything (503): for processes and
    /// tests that do not serve objects.
    pub fn unconfigured(catalog: PgPool) -> Self {
        Self::new(
            Arc::new(NoBackend),
            catalog,
            None,
            StorageSettings::default(),
        )
    }

    /// Scans `body`; without a scanner configured nothing can be scanned.
    pub async fn scan(&self, body: ByteStream) -> Verdict {
        match &self.scanner {
            Some(scanner) => scanner.scan(body).await,
            None => Verdict::Failed("no antivirus scanner is configured".into()),
        }
    }
}

/// The backend of [`StorageState::unconfigured`].
struct NoBackend;

fn unavailable() -> strata_storage::BackendError {
    strata_storage::BackendError::Unavailable("no object backend configured".into())
}

#[async_trait::async_trait]
impl Backend for NoBackend {
    async fn put(
        &self,
        _key: &strata_storage::BlobKey,
        _body: ByteStream,
        _size_hint: Option<u64>,
    ) -> Result<u64, strata_storage::BackendError> {
        Err(unavailable())
    }
    async fn get(
        &self,
        _key: &strata_storage::BlobKey,
        _range: Option<strata_storage::ByteRange>,
    ) -> Result<ByteStream, strata_storage::BackendError> {
        Err(unavailable())
    }
    async fn copy(
        &self,
        _from: &strata_storage::BlobKey,
        _to: &strata_storage::BlobKey,
    ) -> Result<(), strata_storage::BackendError> {
        Err(unavailable())
    }
    async fn delete(
        &self,
        _key: &strata_storage::BlobKey,
    ) -> Result<(), strata_storage::BackendError> {
        Err(unavailable())
    }
    async fn list(
        &self,
        _prefix: &str,
        _after: Option<&strata_storage::BlobKey>,
        _limit: usize,
    ) -> Result<Vec<strata_storage::BlobInfo>, strata_storage::BackendError> {
        Err(unavailable())
    }
    async fn check(&self) -> Result<(), strata_storage::BackendError> {
        Err(unavailable())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// Most bytes of `x-strata-meta-*` names and values together (S3's 2 KiB).
pub const MAX_USER_METADATA_BYTES: usize = 2048;
/// Prefix of user metadata headers.
pub const META_PREFIX: &str = "x-strata-meta-";
/// Server-side copy: `PUT …/objects/{key}` with this header naming the
/// source (`<bucket>/<key>`, URL-encoded key) copies without the bytes
/// passing through the client.
pub const COPY_SOURCE_HEADER: &str = "x-strata-copy-source";
