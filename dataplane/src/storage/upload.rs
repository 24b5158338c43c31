//! Streaming an upload into one new blob, with every check on the way:
//! size limits (declared and counted), quota reservations (from
//! `Content-Length` up front, or chunk by chunk for chunked bodies), the
//! content type against the first bytes, SHA-256, and the antivirus scan
//! of the same bytes in parallel. Nothing here makes the blob visible:
//! the caller commits the metadata row when [`ingest`] returns `Ok`.
//!
//! The body is never held whole: a pump reads it chunk by chunk and hands
//! each chunk to the backend (and the scanner) through bounded channels,
//! so a slow backend slows the client down instead of filling memory.
//! When any check fails the pump ends the backend's stream with an error,
//! which makes the backend discard what it had (no partial blob), and the
//! blob intent recorded before the first byte lets the sweeper remove
//! anything a crash leaves behind.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use strata_storage::{BackendError, BlobKey, ByteStream};
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

use super::StorageState;
use super::antivirus::Verdict;
use super::buckets::BucketInfo;
use super::content_type::{self, ContentType, SNIFF_WINDOW};
use super::quota::Reservation;
use crate::http::problem::{ApiError, kind};

/// Chunked bodies reserve quota in steps of this many bytes.
pub const RESERVE_STEP: i64 = 8 << 20;

/// What went into the backend.
#[derive(Debug)]
pub struct Ingested {
    pub blob: BlobKey,
    /// What the client sent (quotas, `size`, `sha256` count this).
    pub size: i64,
    pub sha256: [u8; 32],
    /// `Some(("br", stored bytes))` when the blob holds the body compressed.
    pub stored: Option<(&'static str, i64)>,
}

/// One upload's parameters.
pub struct IngestRequest<'a> {
    pub bucket: &'a BucketInfo,
    pub blob: BlobKey,
    pub content_type: &'a ContentType,
    /// `Content-Length`, when the client sent one.
    pub declared_len: Option<u64>,
    /// Largest size accepted (the bucket's `max_object_size`, or the
    /// multipart part limit).
    pub max_size: Option<u64>,
    /// Check the first bytes against the declared type (not for parts
    /// after the first).
    pub check_head: bool,
    /// Store the body Brotli-compressed (a bucket with `compression` and a
    /// compressible type): the backend gets the encoder's output.
    pub compress: bool,
}

fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge { limit: Some(limit) }
}

/// Records that `blob` is about to be written (so a crash leaves a trail
/// the sweeper follows).
pub async fn record_intent<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    bucket: &BucketInfo,
    blob: &BlobKey,
    lease: Duration,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO blob_intents (bucket_id, blob_key, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3)) ON CONFLICT DO NOTHING",
    )
    .bind(bucket.id)
    .bind(blob.as_str())
    .bind(lease.as_secs_f64().max(1.0))
    .execute(executor)
    .await?;
    Ok(())
}

/// Removes an intent (in the commit transaction, or after the blob is gone).
pub async fn clear_intent<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    bucket_id: uuid::Uuid,
    blob: &str,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM blob_intents WHERE bucket_id = $1 AND blob_key = $2")
        .bind(bucket_id)
        .bind(blob)
        .execute(executor)
        .await?;
    Ok(())
}

/// Deletes a blob that will never be referenced, then its intent. When the
/// backend is down the intent stays and the sweeper retries.
pub async fn discard_blob(
    state: &StorageState,
    pool: &PgPool,
    bucket_id: uuid::Uuid,
    blob: &BlobKey,
) {
    match state.backend.delete(blob).await {
        Ok(()) => {
            if let Err(error) = clear_intent(pool, bucket_id, blob.as_str()).await {
                tracing::warn!(%error, "clearing a blob intent; the sweeper will");
            }
        }
        Err(error) => tracing::warn!(%error, "deleting an unused blob; the sweeper will"),
    }
}

/// Maps a backend failure to the client's answer: our 503 (never the
/// backend's words), unless the body itself failed (then the pump's error
/// says why).
pub fn backend_error(error: BackendError) -> ApiError {
    match error {
        BackendError::NotFound => {
            ApiError::internal(anyhow::anyhow!("blob missing in the backend"))
        }
        other => {
            tracing::warn!(error = %other, "object backend");
            ApiError::Unavailable {
                detail: "the object store is unavailable; retry later".into(),
                retry_after: Some(Duration::from_secs(2)),
            }
        }
    }
}

/// Streams `body` into `request.blob` under `reservation` (already holding
/// `declared_len` bytes when it was given). On `Err` nothing is left in
/// the backend except what the intent covers.
pub async fn ingest(
    state: &StorageState,
    pool: &PgPool,
    request: IngestRequest<'_>,
    reservation: &mut Reservation,
    body: Body,
) -> Result<Ingested, ApiError> {
    if let (Some(len), Some(max)) = (request.declared_len, request.max_size)
        && len > max
    {
        return Err(too_large(max));
    }
    if !reservation.holds_intent(&request.blob) {
        record_intent(pool, request.bucket, &request.blob, state.settings.lease).await?;
    }

    let failure: Arc<Mutex<Option<ApiError>>> = Arc::new(Mutex::new(None));
    let (to_backend, backend_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let scan = request.bucket.antivirus_scan;
    let (to_scanner, scanner_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);

    // The body's hash, for a backend that signs what it sends (S3): only
    // when it stores the body as it came (not compressed).
    let (to_digest, digest) = tokio::sync::oneshot::channel();
    let outlets = Outlets {
        backend: to_backend,
        scanner: scan.then_some(to_scanner),
        digest: (!request.compress).then_some(to_digest),
    };
    let pump = pump(state, &request, reservation, body, outlets, failure.clone());
    let mut backend_stream: ByteStream = Box::pin(ReceiverStream::new(backend_rx));
    let mut size_hint = request.declared_len;
    if request.compress {
        // Streaming, bounded memory; the size is known only at the end.
        backend_stream = crate::http::compression::encode(
            backend_stream,
            crate::http::compression::STORED_QUALITY,
            request.declared_len,
            None,
        );
        size_hint = None;
    }
    let put = state
        .backend
        .put_hashed(&request.blob, backend_stream, size_hint, digest);
    let scanning = async {
        if scan {
            Some(state.scan(Box::pin(ReceiverStream::new(scanner_rx))).await)
        } else {
            drop(scanner_rx);
            None
        }
    };
    let (pumped, stored, verdict) = futures::join!(pump, put, scanning);

    let pump_error = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
    let outcome = match (pumped, stored) {
        (Ok(summary), Ok(size)) if pump_error.is_none() => {
            if request.compress {
                Ok(Summary {
                    stored: Some(size as i64),
                    ..summary
                })
            } else if size != summary.size as u64 {
                Err(ApiError::internal(anyhow::anyhow!(
                    "backend stored {size} bytes of {}",
                    summary.size
                )))
            } else {
                Ok(summary)
            }
        }
        (Err(error), _) => Err(error),
        (_, Err(BackendError::Body(_))) | (Ok(_), Ok(_)) => Err(pump_error.unwrap_or_else(|| {
            ApiError::internal(anyhow::anyhow!("upload stream ended with an error"))
        })),
        (_, Err(error)) => Err(pump_error.unwrap_or_else(|| backend_error(error))),
    };
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            // The backend discarded a failed stream; make sure anyway.
            discard_blob(state, pool, request.bucket.id, &request.blob).await;
            return Err(error);
        }
    };
    if let Some(verdict) = verdict {
        let refusal = match verdict {
            Verdict::Clean => None,
            Verdict::Infected(signature) => Some(ApiError::Other {
                kind: kind::MALWARE_DETECTED,
                detail: format!("the antivirus scan found {signature}; nothing was stored"),
            }),
            Verdict::Failed(reason) if !state.settings.antivirus_fail_open => {
                tracing::warn!(reason, "antivirus scan failed; refusing (fail closed)");
                Some(ApiError::Unavailable {
                    detail: "the antivirus scan could not be completed; nothing was stored".into(),
                    retry_after: Some(Duration::from_secs(5)),
                })
            }
            Verdict::Failed(reason) => {
                tracing::warn!(reason, "antivirus scan failed; accepting (fail open)");
                None
            }
        };
        if let Some(error) = refusal {
            discard_blob(state, pool, request.bucket.id, &request.blob).await;
            return Err(error);
        }
    }
    Ok(Ingested {
        blob: request.blob,
        size: summary.size,
        sha256: summary.sha256,
        stored: summary.stored.map(|stored| ("br", stored)),
    })
}

struct Summary {
    size: i64,
    sha256: [u8; 32],
    /// Bytes the backend stored, when they differ (compressed).
    stored: Option<i64>,
}

/// Where the pump sends what it reads.
struct Outlets {
    backend: mpsc::Sender<std::io::Result<Bytes>>,
    scanner: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    /// The whole body's SHA-256 and length, sent before the backend's
    /// channel closes (see `Backend::put_hashed`).
    digest: Option<tokio::sync::oneshot::Sender<([u8; 32], u64)>>,
}

/// Reads the body and feeds the channels; every check happens here.
async fn pump(
    state: &StorageState,
    request: &IngestRequest<'_>,
    reservation: &mut Reservation,
    body: Body,
    outlets: Outlets,
    failure: Arc<Mutex<Option<ApiError>>>,
) -> Result<Summary, ApiError> {
    let Outlets {
        backend: to_backend,
        scanner: to_scanner,
        digest,
    } = outlets;
    let fail = |error: ApiError| {
        let message = error.to_string();
        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        std::io::Error::other(message)
    };
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut head: Vec<u8> = Vec::new();
    let mut head_checked = !request.check_head;
    let mut renewed = Instant::now();
    let intents = vec![request.blob.as_str().to_string()];
    let result: Result<(), std::io::Error> = async {
        loop {
            let chunk = match stream.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    // The client went away or the connection broke.
                    return Err(fail(ApiError::bad_request(
                        kind::BAD_REQUEST,
                        format!("the request body could not be read: {error}"),
                    )));
                }
            };
            size += chunk.len() as u64;
            if let Some(max) = request.max_size
                && size > max
            {
                return Err(fail(too_large(max)));
            }
            match request.declared_len {
                Some(len) if size > len => {
                    return Err(fail(ApiError::bad_request(
                        kind::BAD_REQUEST,
                        "the body is longer than its Content-Length",
                    )));
                }
                Some(_) => {}
                None if size as i64 > reservation.bytes => {
                    let more = size as i64 - reservation.bytes;
                    reservation
                        .grow(request.bucket, more, RESERVE_STEP)
                        .await
                        .map_err(&fail)?;
                    renewed = Instant::now();
                }
                None => {}
            }
            if renewed.elapsed() > state.settings.lease / 3 {
                reservation.renew(&intents).await.map_err(&fail)?;
                renewed = Instant::now();
            }
            if !head_checked {
                let take = (SNIFF_WINDOW - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= SNIFF_WINDOW {
                    content_type::check_head(request.content_type, &head).map_err(&fail)?;
                    head_checked = true;
                }
            }
            hasher.update(&chunk);
            if let Some(scanner) = &to_scanner {
                // A scanner that stopped reading has its verdict already
                // (or failed): the bytes still go to the backend.
                let _ = scanner.send(Ok(chunk.clone())).await;
            }
            if to_backend.send(Ok(chunk)).await.is_err() {
                // The backend stopped reading: its own error says why.
                return Ok(());
            }
        }
        if !head_checked {
            content_type::check_head(request.content_type, &head).map_err(&fail)?;
        }
        if let Some(len) = request.declared_len
            && size < len
        {
            return Err(fail(ApiError::bad_request(
                kind::BAD_REQUEST,
                "the body is shorter than its Content-Length",
            )));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let sha256: [u8; 32] = hasher.finalize().into();
            if let Some(digest) = digest {
                // `to_backend` is still open: the backend sees the digest
                // before the body's end.
                let _ = digest.send((sha256, size));
            }
            Ok(Summary {
                size: size as i64,
                sha256,
                stored: None,
            })
        }
        Err(error) => {
            let kind = error.kind();
            let message = error.to_string();
            // Both consumers see the failure: the backend discards the blob.
            let _ = to_backend
                .send(Err(std::io::Error::new(kind, message.clone())))
                .await;
            if let Some(scanner) = &to_scanner {
                let _ = scanner.send(Err(std::io::Error::new(kind, message))).await;
            }
            Err(failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| ApiError::internal(error)))
        }
    }
}

/// `tokio_stream::wrappers::ReceiverStream` without the dependency.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::Receiver;

    pub struct ReceiverStream<T>(Receiver<T>);

    impl<T> ReceiverStream<T> {
        pub fn new(rx: Receiver<T>) -> Self {
            Self(rx)
        }
    }

    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
