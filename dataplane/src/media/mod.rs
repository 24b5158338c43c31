//! Image transforms (issue 11): `GET …/buckets/{b}/render/{key}` resizes,
//! crops and re-encodes an image object, and keeps the result as a
//! variant. Like pict-rs: variants keyed by (source, canonical processing
//! string), a single-flight waiter so concurrent identical requests make
//! one variant, and explicit limits set before decoding.
//!
//! - [`params`]: the query, validated and canonicalised;
//! - [`sign`]: signed render URLs (the tenant's presign keys);
//! - [`transform`]: decode with limits, orient, resize, encode;
//! - [`variants`]: variant rows and blobs, their removal with the source;
//! - [`routes`]: the handlers.
//!
//! A render is: authorise → resolve the source row → `format=auto` from
//! `Accept` → variant id from the source's strong ETag and the canonical
//! parameters → `If-None-Match` (304 before any work) → one flight per
//! variant id in this process, which serves the stored variant if there is
//! one, else takes a transform permit
//! (none free → 503 + `Retry-After`), the source's bytes (at most
//! `max_source_bytes`), the transform on a blocking thread under the time
//! budget, the blob and its row (only if the source is still that
//! version). Storing is best effort: the rendered bytes are served even
//! when keeping them fails.

pub mod params;
pub mod routes;
pub mod sign;
pub mod transform;
pub mod variants;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;

use crate::http::preconditions::{self, EntityTag, Requirement};
use crate::http::problem::{ApiError, ProblemKind, kind};
use crate::storage::StorageState;
use crate::storage::access::Access;
use crate::storage::keys::ObjectKey;
use crate::storage::store::{self, ObjectRow};
use params::{Format, Params};
use transform::{Limits, Rendered, TransformError};

/// `Retry-After` of a transform that ran out of time: a budget overrun
/// comes from load more often than from the image (sizes are bounded
/// before decoding), so a later try may well fit.
const TIMEOUT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Settings of the transform service (`--media-*` flags, `config.rs`).
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub limits: Limits,
    /// Longest one transform may take (decode + resize + encode): the
    /// request is answered (503) at this deadline, and the transform stops
    /// at its next check inside the stage it is in.
    pub time_budget: Duration,
    /// Transforms running at once in this process.
    pub concurrency: usize,
    /// `Retry-After` of the 503 when they are all busy.
    pub retry_after: Duration,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            time_budget: Duration::from_secs(10),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A flight's outcome, shared by every waiter (so it must be `Clone`).
#[derive(Debug, Clone)]
pub enum Failure {
    Problem(ProblemKind, String),
    Unavailable(String, Option<Duration>),
    Internal(String),
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Problem(kind, detail) if kind == kind::NOT_FOUND => {
                let _ = detail;
                ApiError::NotFound
            }
            Failure::Problem(kind, detail) => ApiError::Other { kind, detail },
            Failure::Unavailable(detail, retry_after) => ApiError::Unavailable {
                detail,
                retry_after,
            },
            Failure::Internal(message) => ApiError::internal(anyhow::anyhow!(message)),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Unavailable {
                detail,
                retry_after,
            } => Failure::Unavailable(detail, retry_after),
            ApiError::Other { kind, detail } => Failure::Problem(kind, detail),
            ApiError::NotFound => Failure::Problem(kind::NOT_FOUND, String::new()),
            other => Failure::Internal(other.to_string()),
        }
    }
}

impl From<TransformError> for Failure {
    fn from(error: TransformError) -> Self {
        let detail = error.to_string();
        match error {
            TransformError::NotAnImage | TransformError::Corrupt(_) => {
                Failure::Problem(kind::INVALID_IMAGE, detail)
            }
            TransformError::TooLarge(_) => Failure::Problem(kind::IMAGE_TOO_LARGE, detail),
            TransformError::Timeout => Failure::Unavailable(detail, Some(TIMEOUT_RETRY_AFTER)),
            TransformError::Encode(_) => Failure::Internal(detail),
        }
    }
}

/// The 503 of a transform that ran out of time.
fn over_budget(settings: &MediaSettings) -> Failure {
    Failure::Unavailable(
        format!(
            "the transform exceeded its time budget ({} ms); retry later",
            settings.time_budget.as_millis()
        ),
        Some(TIMEOUT_RETRY_AFTER),
    )
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Rendered>, Failure>>>;

/// The transform service's state (one per process).
pub struct Media {
    pub settings: MediaSettings,
    permits: Arc<Semaphore>,
    flights: std::sync::Mutex<HashMap<String, Flight>>,
    /// Transforms run (tests: concurrent identical requests render once).
    renders: AtomicU64,
}

impl Media {
    pub fn new(settings: MediaSettings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            flights: std::sync::Mutex::new(HashMap::new()),
            renders: AtomicU64::new(0),
        }
    }

    pub fn renders(&self) -> u64 {
        self.renders.load(Ordering::Relaxed)
    }

    /// Transform slots taken now: a slot is held by the blocking thread
    /// until its work ends, even after its request was answered.
    pub fn slots_in_use(&self) -> usize {
        self.settings
            .concurrency
            .max(1)
            .saturating_sub(self.permits.available_permits())
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Media {
    fn default() -> Self {
        Self::new(MediaSettings::default())
    }
}

/// The strong ETag of a variant: derived from the source's ETag and the
/// canonical parameters (the variant id).
fn variant_tag(variant: &str) -> EntityTag {
    EntityTag::from_digest(false, &[variant.as_bytes()])
}

fn user_content_headers(headers: &mut HeaderMap, row: &ObjectRow, auto: bool) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::storage::serving::USER_CONTENT_CSP),
    );
    let cache = row.cache_control.as_deref().unwrap_or("max-age=300");
    if let Ok(value) = HeaderValue::from_str(cache) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    if auto {
        crate::http::compression::add_vary(headers, "accept");
    }
}

/// `GET …/render/{key}` once authorised: see the module documentation.
pub async fn render(
    storage: &StorageState,
    access: Access,
    key: ObjectKey,
    requested: Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !access.bucket.image_transforms {
        return Err(ApiError::Forbidden(
            "image transforms are not enabled on this bucket".into(),
        ));
    }
    let media = storage.media.clone();
    let row = {
        let mut conn = access.pool.acquire().await?;
        store::get(&mut conn, access.bucket.id, key.as_str(), false).await?
    }
    .ok_or(ApiError::NotFound)?;
    if row.size.max(0) as u64 > media.settings.limits.max_source_bytes {
        return Err(ApiError::Other {
            kind: kind::IMAGE_TOO_LARGE,
            detail: format!(
                "the source has {} bytes; at most {} are rendered",
                row.size, media.settings.limits.max_source_bytes
            ),
        });
    }
    let auto = requested.format == Format::Auto;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let params = requested.resolve(accept);
    let canonical = params.canonical();
    let variant = variants::variant_id(&row.key, &row.etag, &canonical);
    let etag = variant_tag(&variant);
    match preconditions::check(
        &Method::GET,
        headers,
        Some((&etag, Some(row.modified()))),
        Requirement::Optional,
    ) {
        Ok(()) => {}
        Err(ApiError::NotModified { .. }) => {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            preconditions::set_validators(response.headers_mut(), &etag, Some(row.modified()));
            user_content_headers(response.headers_mut(), &row, auto);
            return Ok(response);
        }
        Err(error) => return Err(error),
    }
    let (bytes, content_type) = produce(storage, &access, &row, &params, &variant).await?;
    let mut response = (StatusCode::OK, bytes).into_response();
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        out.insert(header::CONTENT_TYPE, value);
    }
    preconditions::set_validators(out, &etag, Some(row.modified()));
    user_content_headers(out, &row, auto);
    Ok(response)
}

/// The flight for `variant`: joins one in progress or starts one.
async fn produce(
    storage: &StorageState,
    access: &Access,
    row: &ObjectRow,
    params: &Params,
    variant: &str,
) -> Result<(Bytes, String), ApiError> {
    let media = storage.media.clone();
    let flight_key = format!("{}/{variant}", access.bucket.id);
    let flight = {
        let mut flights = media.flights();
        match flights.get(&flight_key) {
            Some(flight) => flight.clone(),
            None => {
                let job = Job {
                    storage: storage.clone(),
                    pool: access.pool.clone(),
                    bucket: access.bucket.clone(),
                    row: row.clone(),
                    params: params.clone(),
                    variant: variant.to_string(),
                };
                let key = flight_key.clone();
                let owner = media.clone();
                // A task of its own: the variant is finished and stored
                // even if every waiting client goes away.
                let task = tokio::spawn(async move {
                    let result = job.run().await;
                    owner.flights().remove(&key);
                    result
                });
                let flight: Flight = async move {
                    match task.await {
                        Ok(result) => result,
                        Err(error) => Err(Failure::Internal(format!("render task: {error}"))),
                    }
                }
                .boxed()
                .shared();
                flights.insert(flight_key, flight.clone());
                flight
            }
        }
    };
    let rendered = flight.await.map_err(ApiError::from)?;
    Ok((
        Bytes::copy_from_slice(&rendered.bytes),
        rendered.content_type.to_string(),
    ))
}

/// One variant to make.
struct Job {
    storage: StorageState,
    pool: sqlx::PgPool,
    bucket: Arc<crate::storage::buckets::BucketInfo>,
    row: ObjectRow,
    params: Params,
    variant: String,
}

impl Job {
    async fn run(self) -> Result<Arc<Rendered>, Failure> {
        // Looked up inside the flight: a request that missed the variant
        // just before another flight stored it and left must not render
        // it a second time.
        if let Some(stored) = self.stored().await? {
            return Ok(stored);
        }
        let media = self.storage.media.clone();
        let settings = media.settings.clone();
        let Ok(permit) = media.permits.clone().try_acquire_owned() else {
            return Err(Failure::Unavailable(
                "every image transform slot is busy; retry shortly".into(),
                Some(settings.retry_after),
            ));
        };
        let source = read_source(
            &self.storage,
            &self.bucket,
            &self.row,
            settings.limits.max_source_bytes,
        )
        .await
        .map_err(Failure::from)?;
        let params = self.params.clone();
        let limits = settings.limits;
        let deadline = Instant::now() + settings.time_budget;
        media.renders.fetch_add(1, Ordering::Relaxed);
        // The permit moves into the blocking task: a transform that
        // outlives its client (or the deadline below) still holds its slot
        // until the thread returns, so the bound on concurrent transforms
        // counts work, not requests.
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            transform::render(&source, &params, &limits, deadline)
        });
        // Answered at the deadline whatever stage the thread is in (some
        // cannot be interrupted; see `transform`).
        let rendered = match tokio::time::timeout_at(deadline.into(), work).await {
            Err(_) => {
                return Err(over_budget(&settings));
            }
            Ok(Err(error)) => {
                return Err(Failure::Internal(format!("transform task: {error}")));
            }
            Ok(Ok(Err(TransformError::Timeout))) => {
                return Err(over_budget(&settings));
            }
            Ok(Ok(result)) => Arc::new(result.map_err(Failure::from)?),
        };
        if let Err(error) = self.store(&rendered).await {
            tracing::warn!(%error, "keeping a rendered variant failed; served without it");
        }
        Ok(rendered)
    }

    /// The stored variant, if there is one whose blob can be read (a lost
    /// blob is re-rendered and re-stored).
    async fn stored(&self) -> Result<Option<Arc<Rendered>>, Failure> {
        let found = variants::find(&self.pool, self.bucket.id, &self.row.key, &self.variant)
            .await
            .map_err(Failure::from)?;
        let Some(stored) = found else {
            return Ok(None);
        };
        let content_type = match stored.content_type.as_str() {
            "image/jpeg" => "image/jpeg",
            "image/png" => "image/png",
            "image/webp" => "image/webp",
            "image/avif" => "image/avif",
            _ => return Ok(None),
        };
        if !self.bucket.owns_blob(&stored.blob_key) {
            return Ok(None);
        }
        let blob = strata_storage::BlobKey::from_stored(stored.blob_key.clone());
        match read_all(&self.storage, &blob, stored.size.max(0) as u64 + 1).await {
            Ok(bytes) => Ok(Some(Arc::new(Rendered {
                bytes: bytes.to_vec(),
                width: stored.width.max(0) as u32,
                height: stored.height.max(0) as u32,
                content_type,
            }))),
            Err(error) => {
                tracing::warn!(%error, "a stored variant cannot be read; rendering it again");
                Ok(None)
            }
        }
    }

    async fn store(&self, rendered: &Rendered) -> Result<(), ApiError> {
        let blob = variants::blob_key(&self.bucket, &self.variant);
        crate::storage::upload::record_intent(
            &self.pool,
            &self.bucket,
            &blob,
            self.storage.settings.lease,
        )
        .await?;
        let bytes = Bytes::copy_from_slice(&rendered.bytes);
        let body: strata_storage::ByteStream =
            Box::pin(futures::stream::iter([Ok::<_, std::io::Error>(bytes)]));
        if let Err(error) = self
            .storage
            .backend
            .put(&blob, body, Some(rendered.bytes.len() as u64))
            .await
        {
            // The intent lets the sweeper remove whatever was written.
            return Err(crate::storage::upload::backend_error(error));
        }
        let outcome = variants::record(
            &self.pool,
            &self.bucket,
            &self.row.key,
            &self.row.etag,
            &self.variant,
            &self.params.canonical(),
            &blob,
            rendered,
        )
        .await;
        match outcome {
            Ok(variants::Recorded::Stored | variants::Recorded::AlreadyThere) => Ok(()),
            Ok(variants::Recorded::Discard) | Err(_) => {
                crate::storage::upload::discard_blob(
                    &self.storage,
                    &self.pool,
                    self.bucket.id,
                    &blob,
                )
                .await;
                outcome.map(|_| ())
            }
        }
    }
}

/// The whole source object, refusing more than `limit` bytes (a row that
/// lies about its size cannot make us read more).
async fn read_source(
    storage: &StorageState,
    bucket: &crate::storage::buckets::BucketInfo,
    row: &ObjectRow,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let size = row.size.max(0) as u64;
    let stored = row
        .stored_size
        .unwrap_or_else(|| row.blobs.iter().map(|b| b.size.max(0)).sum())
        .max(0) as u64;
    let mut stream =
        crate::storage::serving::open_blobs(storage.backend.clone(), bucket, row, 0, stored)
            .await?;
    if row.content_encoding.as_deref() == Some("br") {
        stream = crate::http::compression::decode(stream);
    }
    let mut out = Vec::with_capacity(size.min(limit) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::warn!(error = %e, "reading a render source");
            ApiError::Unavailable {
                detail: "the object store is unavailable; retry later".into(),
                retry_after: Some(Duration::from_secs(2)),
            }
        })?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::Other {
                kind: kind::IMAGE_TOO_LARGE,
                detail: format!("the source exceeds {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A stored variant's bytes (at most `limit`).
async fn read_all(
    storage: &StorageState,
    blob: &strata_storage::BlobKey,
    limit: u64,
) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let mut stream = storage
        .backend
        .get(blob, None)
        .await
        .map_err(crate::storage::upload::backend_error)?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::internal(anyhow::anyhow!(
                "variant larger than recorded"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}
