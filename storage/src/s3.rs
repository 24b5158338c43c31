//! The S3 backend (aws-sdk-s3): every blob in one backend bucket, keyed by
//! its [`BlobKey`].
//!
//! Set up for S3-compatible servers (Garage, MinIO, Ceph) as much as for AWS:
//! path-style addressing, an explicit region, static credentials, and request
//! checksums / response validation only where the operation requires them
//! (the SDK's default since 2025 adds CRC trailers some servers refuse).
//!
//! Puts stream with bounded memory: a body of at most one part is buffered
//! and sent with PutObject (exact length, retryable); a longer one goes up as
//! a multipart upload, one part buffered while the previous one is sent, and
//! is aborted on any failure, so an interrupted put leaves nothing behind.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};

use crate::fs::check_length;
use crate::{
    Backend, BackendError, BlobInfo, BlobKey, BodyDigest, ByteRange, ByteStream, StorageArgs,
};

/// Part size of multipart uploads, and the largest body sent with a single
/// PutObject. One part is buffered while the previous one is in flight, so a
/// put holds about two parts in memory, whatever the blob's size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limits on multipart uploads.
const MAX_PARTS: u64 = 10_000;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The largest object CopyObject copies in one request (S3's limit); larger
/// ones are copied part by part with UploadPartCopy.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// A read of more than two of these goes as consecutive ranged GetObjects,
/// sent ahead while an earlier one streams (see [`S3Backend::get_segments`]).
const READ_SEGMENT: u64 = 16 * 1024 * 1024;
/// How many segment requests of a long read are in flight beyond the one
/// being streamed (two read a 1 GiB blob no faster than one: bench/README.md).
const READ_AHEAD: usize = 1;

#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    /// For `describe`, without any user info.
    endpoint: Option<String>,
    max_single_copy: u64,
}

impl S3Backend {
    /// A client for `args` (endpoint, region, static credentials), with the
    /// data bucket created if it does not exist yet.
    pub async fn connect(args: &StorageArgs) -> Result<Self, BackendError> {
        let (Some(key_id), Some(secret)) = (&args.s3_access_key_id, &args.s3_secret_access_key)
        else {
            return Err(BackendError::Config(
                "the s3 backend needs --s3-access-key-id and --s3-secret-access-key \
                 (STRATA_S3_ACCESS_KEY_ID, STRATA_S3_SECRET_ACCESS_KEY)"
                    .into(),
            ));
        };
        if args.s3_bucket.is_empty() {
            return Err(BackendError::Config("--s3-bucket is empty".into()));
        }
        let credentials = Credentials::new(key_id, secret, None, None, "strata-storage-args");
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(args.s3_region.clone()))
            .credentials_provider(credentials)
            // Bucket names in the host need DNS for every bucket; S3-compatible
            // servers are usually reached by one address.
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // A dead endpoint must fail a request (and a readiness check)
            // quickly. The read timeout runs until a response starts (for a
            // part: sending its 8 MiB and the server storing them); bodies
            // being streamed are guarded by the SDK's stalled stream
            // protection instead, never by a total timeout.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(endpoint) = &args.s3_endpoint {
            config = config.endpoint_url(endpoint);
        }
        let backend = Self {
            client: Client::from_conf(config.build()),
            bucket: args.s3_bucket.clone(),
            endpoint: args.s3_endpoint.as_deref().map(without_userinfo),
            max_single_copy: MAX_SINGLE_COPY,
        };
        backend.ensure_bucket(&args.s3_region).await?;
        Ok(backend)
    }

    /// Copies of objects larger than `bytes` use multipart UploadPartCopy in
    /// parts of `bytes` (at least 5 MiB). Default 5 GiB, S3's CopyObject
    /// limit; lowered by tests to exercise the multipart path.
    pub fn with_max_single_copy(mut self, bytes: u64) -> Self {
        self.max_single_copy = bytes.max(MIN_PART_SIZE);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn ensure_bucket(&self, region: &str) -> Result<(), BackendError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(sdk_error("HeadBucket", &self.bucket, e)),
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the one region that refuses a location constraint.
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created the storage bucket");
                Ok(())
            }
            // Created meanwhile by another replica.
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(sdk_error("CreateBucket", &self.bucket, e)),
        }
    }

    /// [`Backend::put`]; a body that fits one part is one PutObject, signed
    /// with the caller's hash of it when `sha256` brings one for exactly
    /// those bytes (a multipart upload's parts are hashed by the SDK: the
    /// body's hash is not theirs).
    async fn put_body(
        &self,
        key: &BlobKey,
        body: ByteStream,
        size_hint: Option<u64>,
        sha256: Option<BodyDigest>,
    ) -> Result<u64, BackendError> {
        key.validate()?;
        let part_size = part_size_for(size_hint);
        // Buffer up to one part: a body that ends by then is one PutObject
        // with its exact length.
        let mut parts = Parts::new(body, size_hint);
        let first = parts.next(part_size).await?;
        if first.len() <= PART_SIZE && parts.at_end().await? {
            let total = parts.read;
            check_length(size_hint, total)?;
            // Sent before the body's end, so it is here now (or never).
            let hash = match sha256 {
                Some(digest) => digest
                    .await
                    .ok()
                    .filter(|(_, len)| *len == total)
                    .map(|(hash, _)| hash),
                None => None,
            };
            self.put_single(key, first, hash).await?;
            return Ok(total);
        }
        self.put_multipart(key, first, parts, size_hint, part_size)
            .await
    }

    /// One PutObject. `sha256`, when given, is the body's hash: SigV4 signs
    /// it instead of hashing the body again, and the server still checks
    /// the body against it.
    async fn put_single(
        &self,
        key: &BlobKey,
        body: Bytes,
        sha256: Option<[u8; 32]>,
    ) -> Result<(), BackendError> {
        let len = body.len();
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .body(SdkByteStream::from(body))
            .customize();
        let request = match sha256 {
            Some(sha256) => request.interceptor(PrecomputedPayloadHash(hex::encode(sha256))),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|e| sdk_error("PutObject", key.as_str(), e))?;
        Ok(())
    }

    /// Multipart put of `first` and the rest of `parts`. On any error the
    /// upload is aborted before returning; if this future is dropped
    /// instead, [`AbortOnDrop`] aborts it.
    async fn put_multipart(
        &self,
        key: &BlobKey,
        first: Bytes,
        mut parts: Parts,
        size_hint: Option<u64>,
        part_size: usize,
    ) -> Result<u64, BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", key.as_str(), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BackendError::Unavailable("CreateMultipartUpload: no upload id".into()))?
            .to_owned();
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.as_str().to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = async {
            let (parts, total) = self
                .upload_parts(key, &upload_id, first, &mut parts, part_size)
                .await?;
            check_length(size_hint, total)?;
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error("CompleteMultipartUpload", key.as_str(), e))?;
            Ok(total)
        }
        .await;
        match result {
            Ok(total) => {
                guard.upload_id = None;
                Ok(total)
            }
            Err(e) => {
                // Abort now, not in the background: when put returns, nothing
                // of the upload may remain.
                guard.abort_now().await;
                Err(e)
            }
        }
    }

    /// Sends parts; while one is in flight the next one is read from the
    /// body, so memory stays at two parts. Returns the completed parts and
    /// the total length.
    async fn upload_parts(
        &self,
        key: &BlobKey,
        upload_id: &str,
        first: Bytes,
        parts: &mut Parts,
        part_size: usize,
    ) -> Result<(Vec<CompletedPart>, u64), BackendError> {
        let mut completed = Vec::new();
        let mut next = Some(first);
        let mut number: i32 = 0;
        while let Some(chunk) = next.take() {
            number += 1;
            if u64::try_from(number).unwrap_or(u64::MAX) > MAX_PARTS {
                return Err(BackendError::Body(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "body over {} bytes: more than {MAX_PARTS} parts",
                        MAX_PARTS * part_size as u64
                    ),
                )));
            }
            let upload = self.upload_part(key, upload_id, number, chunk);
            let read = async {
                if parts.at_end().await? {
                    Ok(None)
                } else {
                    parts.next(part_size).await.map(Some)
                }
            };
            // try_join: the first error (body or S3) wins and drops the other.
            let (part, following) = futures::future::try_join(upload, read).await?;
            completed.push(part);
            next = following;
        }
        Ok((completed, parts.read))
    }

    async fn upload_part(
        &self,
        key: &BlobKey,
        upload_id: &str,
        number: i32,
        chunk: Bytes,
    ) -> Result<CompletedPart, BackendError> {
        let len = chunk.len();
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .body(SdkByteStream::from(chunk))
            .send()
            .await
            .map_err(|e| sdk_error("UploadPart", key.as_str(), e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            .build())
    }

    /// One GetObject of the blob, or of the (non-empty) `range` of it,
    /// with the blob's whole size when the server says it
    /// (`Content-Range: bytes a-b/size`).
    async fn get_object(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<(ByteStream, Option<u64>), BackendError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end - 1)))
            .send()
            .await
            .map_err(|e| sdk_error("GetObject", key.as_str(), e))?;
        if let Some(range) = range {
            // S3 serves a range that runs past the end as far as it goes;
            // the caller asked for exact bytes, as the filesystem backend
            // gives.
            let got = out.content_length().and_then(|n| u64::try_from(n).ok());
            if got != Some(range.len()) {
                return Err(BackendError::InvalidRange(format!(
                    "bytes {}..{}: the blob is shorter",
                    range.start, range.end
                )));
            }
        }
        let size = out
            .content_range()
            .and_then(|value| value.rsplit_once('/'))
            .and_then(|(_, size)| size.parse().ok());
        Ok((body_stream(out.body), size))
    }

    /// What an empty range needs: HTTP cannot ask for zero bytes, but the
    /// blob must still exist and be long enough, as on the filesystem.
    async fn get_empty(&self, key: &BlobKey, range: ByteRange) -> Result<ByteStream, BackendError> {
        if range.start > range.end {
            return Err(BackendError::InvalidRange(format!(
                "bytes {}..{}",
                range.start, range.end
            )));
        }
        let size = self.head_size(key).await?;
        if range.end > size {
            return Err(BackendError::InvalidRange(format!(
                "bytes {}..{} of a blob of {size} bytes",
                range.start, range.end
            )));
        }
        Ok(Box::pin(futures::stream::empty()))
    }

    /// `range` as consecutive ranged GetObjects of [`READ_SEGMENT`] bytes.
    /// The first is sent at once (a missing blob fails here, before the
    /// caller answers); then [`READ_AHEAD`] more, and another each time one
    /// is finished, so the server works on the next segments — into the
    /// sockets' buffers, not our memory — while we pass the current one on.
    /// One stream would make the whole read wait on one request's pipeline
    /// (S3 transfer managers split reads the same way). Segments are of an
    /// immutable blob, so they always fit together.
    async fn get_segments(
        &self,
        key: &BlobKey,
        range: ByteRange,
    ) -> Result<ByteStream, BackendError> {
        let segments: Vec<ByteRange> = (range.start..range.end)
            .step_by(READ_SEGMENT as usize)
            .map(|start| ByteRange {
                start,
                end: start.saturating_add(READ_SEGMENT).min(range.end),
            })
            .collect();
        let mut later = segments.into_iter();
        let Some(first) = later.next() else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let (current, size) = self.get_object(key, Some(first)).await?;
        // What a single request would refuse before any byte: a range that
        // runs past the end.
        if size.is_some_and(|size| size < range.end) {
            return Err(BackendError::InvalidRange(format!(
                "bytes {}..{}: the blob is shorter",
                range.start, range.end
            )));
        }
        let (this, key) = (self.clone(), key.clone());
        // The request runs in a task of its own; dropping the handle (the
        // reader went away) cancels it.
        let send = move |segment: ByteRange| {
            let (this, key) = (this.clone(), key.clone());
            let (request, handle) = async move {
                this.get_object(&key, Some(segment))
                    .await
                    .map(|(body, _)| body)
            }
            .remote_handle();
            tokio::spawn(request);
            handle
        };
        let ahead: VecDeque<_> = later.by_ref().take(READ_AHEAD).map(&send).collect();
        let stream = futures::stream::unfold(
            (current, ahead, later, send),
            |(mut current, mut ahead, mut later, send)| async move {
                loop {
                    if let Some(chunk) = current.next().await {
                        return Some((chunk, (current, ahead, later, send)));
                    }
                    match ahead.pop_front()?.await {
                        Ok(stream) => {
                            current = stream;
                            ahead.extend(later.next().map(&send));
                        }
                        Err(error) => {
                            // The error is the stream's last item; the
                            // requests still ahead are cancelled.
                            let error = std::io::Error::other(error.to_string());
                            let done: ByteStream = Box::pin(futures::stream::empty());
                            return Some((Err(error), (done, VecDeque::new(), later, send)));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn head_size(&self, key: &BlobKey) -> Result<u64, BackendError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("HeadObject", key.as_str(), e))?;
        Ok(head
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0))
    }

    /// UploadPartCopy in parts of `max_single_copy`, for sources CopyObject
    /// refuses (over 5 GiB); aborted on failure like a put.
    async fn copy_multipart(
        &self,
        source: &str,
        to: &BlobKey,
        size: u64,
    ) -> Result<(), BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(to.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", to.as_str(), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BackendError::Unavailable("CreateMultipartUpload: no upload id".into()))?
            .to_owned();
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: to.as_str().to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let part_size = self.max_single_copy;
        let result = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut number = 0i32;
            while start < size {
                let end = (start + part_size).min(size);
                number += 1;
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to.as_str())
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={}-{}", start, end - 1))
                    .send()
                    .await
                    .map_err(|e| sdk_error("UploadPartCopy", to.as_str(), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(
                            out.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_owned),
                        )
                        .build(),
                );
                start = end;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(to.as_str())
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error("CompleteMultipartUpload", to.as_str(), e))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(e) => {
                guard.abort_now().await;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    async fn put(
        &self,
        key: &BlobKey,
        body: ByteStream,
        size_hint: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.put_body(key, body, size_hint, None).await
    }

    async fn put_hashed(
        &self,
        key: &BlobKey,
        body: ByteStream,
        size_hint: Option<u64>,
        sha256: BodyDigest,
    ) -> Result<u64, BackendError> {
        self.put_body(key, body, size_hint, Some(sha256)).await
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, BackendError> {
        key.validate()?;
        match range {
            Some(range) if range.is_empty() => self.get_empty(key, range).await,
            Some(range) if range.len() > 2 * READ_SEGMENT => self.get_segments(key, range).await,
            _ => Ok(self.get_object(key, range).await?.0),
        }
    }

    async fn copy(&self, from: &BlobKey, to: &BlobKey) -> Result<(), BackendError> {
        from.validate()?;
        to.validate()?;
        let source = format!("{}/{}", self.bucket, encode_key(from.as_str()));
        let size = self.head_size(from).await?;
        if size > self.max_single_copy {
            return self.copy_multipart(&source, to, size).await;
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(to.as_str())
            .copy_source(source)
            .send()
            .await
            .map_err(|e| sdk_error("CopyObject", from.as_str(), e))?;
        Ok(())
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
        key.validate()?;
        // S3 answers 204 for a missing key as well.
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match sdk_error("DeleteObject", key.as_str(), e) {
                BackendError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, BackendError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        while out.len() < limit {
            let want = i32::try_from((limit - out.len()).min(1000)).unwrap_or(1000);
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(want);
            request = match (&token, after) {
                (Some(token), _) => request.continuation_token(token),
                (None, Some(after)) => request.start_after(after.as_str()),
                (None, None) => request,
            };
            let page = request
                .send()
                .await
                .map_err(|e| sdk_error("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Ok(key) = BlobKey::parse(key) else {
                    // Not a key of ours (made by hand): skipped, as the
                    // filesystem backend skips names it does not own.
                    continue;
                };
                if out.len() >= limit {
                    break;
                }
                out.push(BlobInfo {
                    key,
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    modified_unix: object.last_modified().map_or(0, |t| t.secs()),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| match sdk_error("HeadBucket", &self.bucket, e) {
                BackendError::NotFound => {
                    BackendError::Unavailable(format!("bucket {} does not exist", self.bucket))
                }
                other => other,
            })?;
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("s3://{}/ at {endpoint}", self.bucket),
            None => format!("s3://{}/", self.bucket),
        }
    }

    async fn sweep_partial(&self, older_than: Duration) -> Result<u64, BackendError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut aborted = 0;
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut request = self.client.list_multipart_uploads().bucket(&self.bucket);
            if let Some((key, id)) = &markers {
                request = request.key_marker(key).upload_id_marker(id);
            }
            let page = request
                .send()
                .await
                .map_err(|e| sdk_error("ListMultipartUploads", &self.bucket, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                if upload.initiated().is_some_and(|t| t.secs() < cutoff) {
                    match self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                    {
                        Ok(_) => aborted += 1,
                        Err(e) => match sdk_error("AbortMultipartUpload", key, e) {
                            // Completed or aborted meanwhile.
                            BackendError::NotFound => {}
                            other => return Err(other),
                        },
                    }
                }
            }
            match (page.next_key_marker(), page.next_upload_id_marker()) {
                (Some(key), Some(id)) if page.is_truncated() == Some(true) => {
                    markers = Some((key.to_owned(), id.to_owned()));
                }
                _ => break,
            }
        }
        Ok(aborted)
    }
}

/// Aborts a multipart upload that did not complete: awaited on errors
/// ([`AbortOnDrop::abort_now`]), spawned when the put's future is dropped
/// (the client went away mid-upload).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    async fn abort_now(&mut self) {
        if let Some(id) = self.upload_id.take() {
            abort(&self.client, &self.bucket, &self.key, &id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        // Without a runtime (shutdown) the sweeper removes it later.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, bucket, key) =
                (self.client.clone(), self.bucket.clone(), self.key.clone());
            runtime.spawn(async move { abort(&client, &bucket, &key, &id).await });
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        // Left for `sweep_partial`; nothing of it is visible meanwhile.
        tracing::warn!(key, error = %DisplayErrorContext(&e), "aborting a multipart upload failed");
    }
}

/// A GetObject's body as the response's own chunks, as hyper read them: no
/// copy into a buffer of ours (and no fresh 256 KiB allocation per chunk).
fn body_stream(body: SdkByteStream) -> ByteStream {
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        let chunk = body.next().await?;
        Some((chunk.map_err(std::io::Error::other), body))
    }))
}

/// Has SigV4 sign a payload hash computed elsewhere (lowercase hex)
/// instead of hashing the body again. Set before signing on every attempt;
/// the SDK keeps its own runtime plugins per operation private, so this
/// goes through an interceptor.
#[derive(Debug)]
struct PrecomputedPayloadHash(String);

impl Intercept for PrecomputedPayloadHash {
    fn name(&self) -> &'static str {
        "PrecomputedPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// A body cut into parts, each in one buffer allocated at its final size
/// (a growing buffer would double, and copy, on its way to 8 MiB; two of
/// them at 16 MiB were most of a 1 GiB upload's peak memory).
struct Parts {
    body: ByteStream,
    /// What is left of the last chunk read: a chunk that crosses a part's
    /// end is split, its rest begins the next part.
    carry: Bytes,
    ended: bool,
    /// Bytes read from the body so far.
    read: u64,
    /// The announced length, if any: a part is not allocated larger than
    /// what is announced to remain (a 1 MiB object gets 1 MiB, not 8).
    size_hint: Option<u64>,
}

impl Parts {
    fn new(body: ByteStream, size_hint: Option<u64>) -> Self {
        Self {
            body,
            carry: Bytes::new(),
            ended: false,
            read: 0,
            size_hint,
        }
    }

    /// The next `size` bytes, or fewer where the body ends.
    async fn next(&mut self, size: usize) -> Result<Bytes, BackendError> {
        let taken = self.read - self.carry.len() as u64;
        let announced = self.size_hint.map(|n| n.saturating_sub(taken));
        let capacity = announced.map_or(size, |n| size.min(usize::try_from(n).unwrap_or(size)));
        let mut part = BytesMut::with_capacity(capacity);
        loop {
            let take = self.carry.len().min(size - part.len());
            part.extend_from_slice(&self.carry.split_to(take));
            if part.len() == size || !self.refill().await? {
                return Ok(part.freeze());
            }
        }
    }

    /// Whether the body has no more bytes (reads ahead one chunk to know).
    async fn at_end(&mut self) -> Result<bool, BackendError> {
        Ok(self.carry.is_empty() && !self.refill().await?)
    }

    /// Reads chunks until one is not empty; false at the body's end.
    async fn refill(&mut self) -> Result<bool, BackendError> {
        while self.carry.is_empty() && !self.ended {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    self.carry = chunk;
                }
                Some(Err(e)) => return Err(BackendError::Body(e)),
                None => self.ended = true,
            }
        }
        Ok(!self.carry.is_empty())
    }
}

/// 8 MiB, or more when the announced length would need over 10,000 parts.
fn part_size_for(size_hint: Option<u64>) -> usize {
    let needed = size_hint.map_or(0, |n| n.div_ceil(MAX_PARTS));
    let mib = 1024 * 1024;
    let rounded = needed.div_ceil(mib) * mib;
    usize::try_from(rounded).map_or(PART_SIZE, |n| n.max(PART_SIZE))
}

/// `x-amz-copy-source` is `bucket/key`, URL-encoded; `/` stays as it is.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn without_userinfo(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => endpoint.to_owned(),
    }
}

fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Maps an SDK error: 404 / NoSuchKey is NotFound (but a missing bucket is a
/// broken setup), 416 an invalid range, anything else Unavailable with the
/// error's chain (which never holds the credentials).
fn sdk_error<E>(op: &str, what: &str, err: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    match (status(&err), code.as_deref()) {
        (_, Some("NoSuchBucket")) => {
            BackendError::Unavailable(format!("{op} {what}: the bucket does not exist"))
        }
        (_, Some("NoSuchKey" | "NotFound" | "NoSuchUpload")) | (Some(404), _) => {
            BackendError::NotFound
        }
        (Some(416), _) | (_, Some("InvalidRange")) => {
            BackendError::InvalidRange(format!("{op} {what}"))
        }
        _ => BackendError::Unavailable(format!("{op} {what}: {}", DisplayErrorContext(&err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of uneven sizes, crossing part ends: every part but the last
    /// has exactly the part size, nothing is lost or repeated, the end is
    /// seen once the last byte is out, and the length counts every byte.
    #[tokio::test]
    async fn parts_cut_a_body_exactly() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 100, 333, 1000, 4096, 10_000] {
            for size in [64, 1000, 3000, 10_000, 20_000] {
                let chunks: Vec<std::io::Result<Bytes>> = data
                    .chunks(chunk)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    // An empty chunk now and then (a stream may yield one).
                    .flat_map(|c| [Ok(Bytes::new()), c])
                    .collect();
                let mut parts = Parts::new(Box::pin(futures::stream::iter(chunks)), Some(10_000));
                let mut joined = Vec::new();
                let mut count = 0;
                while !parts.at_end().await.expect("at_end") {
                    let part = parts.next(size).await.expect("part");
                    assert!(!part.is_empty());
                    joined.extend_from_slice(&part);
                    count += 1;
                    if !parts.at_end().await.expect("at_end") {
                        assert_eq!(part.len(), size, "chunk {chunk}, part {count}");
                    }
                }
                assert_eq!(joined, data, "chunk {chunk}, size {size}");
                assert_eq!(count, data.len().div_ceil(size));
                assert_eq!(parts.read, data.len() as u64);
            }
        }
        let failing: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("client went away")),
        ];
        let mut parts = Parts::new(Box::pin(futures::stream::iter(failing)), None);
        assert!(matches!(parts.next(10).await, Err(BackendError::Body(_))));
    }

    #[test]
    fn part_sizes() {
        assert_eq!(part_size_for(None), PART_SIZE);
        assert_eq!(part_size_for(Some(1 << 30)), PART_SIZE);
        // 200 GiB needs parts of at least 20.48 MiB: rounded up to 21 MiB.
        assert_eq!(part_size_for(Some(200 << 30)), 21 << 20);
    }

    #[test]
    fn copy_source_encoding() {
        assert_eq!(encode_key("t/a-b_c.d~/x"), "t/a-b_c.d~/x");
        assert_eq!(encode_key("a b?#%é"), "a%20b%3F%23%25%C3%A9");
    }

    #[test]
    fn endpoints_lose_user_info() {
        assert_eq!(without_userinfo("http://k:s@h:9000"), "http://h:9000");
        assert_eq!(without_userinfo("http://h:9000/p@x"), "http://h:9000/p@x");
        assert_eq!(
            without_userinfo("http://127.0.0.1:53900"),
            "http://127.0.0.1:53900"
        );
    }
}
