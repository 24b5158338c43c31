//! Serving an object: the `Range` header (one range, suffix ranges
//! included; several ranges are answered with the whole object, which
//! RFC 9110 allows), streaming its blobs in order (a range may span blob
//! boundaries), and the headers that keep a browser from running it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use strata_storage::{Backend, BackendError, BlobKey, ByteRange, ByteStream};

use super::buckets::BucketInfo;
use super::content_type;
use super::store::ObjectRow;
use crate::http::compression::{self, AcceptEncoding, Choice};
use crate::http::preconditions::{EntityTag, set_validators};
use crate::http::problem::{ApiError, kind};

/// CSP of user content: no scripts, no plugins, no forms, in a sandbox
/// (a unique origin), whatever the type turns out to be.
pub const USER_CONTENT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'; sandbox";

/// A `Range` request, resolved against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) `Range`: the whole object.
    Full,
    /// Bytes `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// RFC 9110 §14: `bytes=a-b`, `bytes=a-`, `bytes=-n`. A malformed header,
/// another unit or several ranges are ignored (the whole object).
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return RangeRequest::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last n bytes.
        if !digits(last) {
            return RangeRequest::Full;
        }
        let Ok(n) = last.parse::<u64>() else {
            return RangeRequest::Full;
        };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: size.saturating_sub(n),
            end: size,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return RangeRequest::Full;
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Unsatisfiable;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(l) if l < start => return RangeRequest::Full,
            Ok(l) => l.saturating_add(1).min(size),
            Err(_) => size,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

/// `If-Range` (§13.1.5): the range applies only if the validator matches
/// (strong ETag comparison, or the exact Last-Modified date).
pub fn if_range_holds(headers: &HeaderMap, etag: &EntityTag, last_modified: &str) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return value
            .parse::<EntityTag>()
            .is_ok_and(|tag| tag.strong_eq(etag));
    }
    value == last_modified
}

/// The 416 answer, with `Content-Range: bytes */size`.
pub fn unsatisfiable(size: u64) -> Response {
    let mut response = ApiError::Other {
        kind: kind::RANGE_NOT_SATISFIABLE,
        detail: format!("the object has {size} bytes"),
    }
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// Why an object's body could not be opened.
#[derive(Debug)]
pub enum Unserved {
    /// The row names a blob the backend does not have: a row read from the
    /// cache while a newer version replaced it (and deleted its blobs), or
    /// a real loss. The caller reads the row again from the database.
    BlobMissing,
    /// Any other failure: the answer as it is.
    Failed(ApiError),
}

impl From<ApiError> for Unserved {
    fn from(error: ApiError) -> Self {
        Self::Failed(error)
    }
}

impl From<Unserved> for ApiError {
    fn from(unserved: Unserved) -> Self {
        match unserved {
            Unserved::BlobMissing => super::upload::backend_error(BackendError::NotFound),
            Unserved::Failed(error) => error,
        }
    }
}

/// Bytes `start..end` of the object's blobs (offsets count stored bytes).
/// The first blob is opened before this returns, so a missing blob is an
/// error here and not a `200` whose body breaks; each later blob opens when
/// the stream reaches it. Every blob key is checked against the bucket's
/// prefix first (rows are tenant-writable).
pub async fn open_blobs(
    backend: Arc<dyn Backend>,
    bucket: &BucketInfo,
    row: &ObjectRow,
    start: u64,
    end: u64,
) -> Result<ByteStream, Unserved> {
    let mut segments = Vec::new();
    let mut offset = 0u64;
    for blob in row.blobs.iter() {
        if !bucket.owns_blob(&blob.key) {
            return Err(ApiError::internal(anyhow::anyhow!(
                "object row names a blob outside its bucket"
            ))
            .into());
        }
        let size = blob.size.max(0) as u64;
        let (blob_start, blob_end) = (offset, offset + size);
        offset = blob_end;
        let (from, to) = (start.max(blob_start), end.min(blob_end));
        if from >= to {
            continue;
        }
        // Always an exact range, the whole blob too: the row knows each
        // blob's size, the backend then checks the blob has all of it, and
        // may split a long read (the S3 backend does).
        let range = ByteRange {
            start: from - blob_start,
            end: to - blob_start,
        };
        segments.push((BlobKey::from_stored(blob.key.clone()), Some(range)));
    }
    let mut segments = segments.into_iter();
    let Some((first_key, first_range)) = segments.next() else {
        return Ok(Box::pin(futures::stream::empty()));
    };
    let first = match backend.get(&first_key, first_range).await {
        Ok(stream) => stream,
        Err(BackendError::NotFound) => return Err(Unserved::BlobMissing),
        Err(error) => return Err(super::upload::backend_error(error).into()),
    };
    let rest = futures::stream::iter(segments)
        .then(move |(key, range)| {
            let backend = backend.clone();
            async move {
                backend
                    .get(&key, range)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }
        })
        .try_flatten();
    Ok(Box::pin(first.chain(rest)))
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The headers of an object's representation (GET, HEAD, 304).
pub fn object_headers(headers: &mut HeaderMap, row: &ObjectRow) {
    let essence = row
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    insert(headers, header::CONTENT_TYPE, &row.content_type);
    set_validators(headers, &row.entity_tag(), Some(row.modified()));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(USER_CONTENT_CSP),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-site"),
    );
    if let Some(value) =
        content_type::serving_disposition(&essence, row.content_disposition.as_deref(), &row.key)
    {
        insert(headers, header::CONTENT_DISPOSITION, &value);
    }
    if let Some(value) = &row.cache_control {
        insert(headers, header::CACHE_CONTROL, value);
    }
    if let Some(meta) = row.user_metadata.as_object() {
        for (name, value) in meta {
            if let (Ok(name), Some(value)) = (
                HeaderName::from_bytes(format!("{}{name}", super::META_PREFIX).as_bytes()),
                value.as_str(),
            ) {
                insert(headers, name, value);
            }
        }
    }
}

/// Whether an object has representations that differ by coding (so its
/// answers vary on `Accept-Encoding`), and whether its blobs hold Brotli.
fn codings(row: &ObjectRow) -> (bool, bool) {
    let stored_br = row.content_encoding.as_deref() == Some("br");
    let essence = compression::essence_of(&row.content_type);
    (stored_br || compression::compressible(&essence), stored_br)
}

/// The coding a GET of `row` would be answered with (issue 11): Brotli for
/// compressible types of at least [`compression::MIN_SIZE`] bytes (any
/// size when stored compressed) to clients that prefer it, never for a
/// `Range` (identity bytes) unless the client refuses identity.
pub fn negotiate(row: &ObjectRow, request_headers: &HeaderMap, ranged: bool) -> Choice {
    let (varies, stored_br) = codings(row);
    let size = row.size.max(0) as u64;
    let eligible = varies && (stored_br || size >= compression::MIN_SIZE) && !ranged;
    AcceptEncoding::from_headers(request_headers).choose(eligible)
}

/// The headers of a 304: the validators of the representation the client
/// would have got (weak when Brotli) and `Vary`.
pub fn not_modified_headers(headers: &mut HeaderMap, row: &ObjectRow, request_headers: &HeaderMap) {
    object_headers(headers, row);
    let ranged = request_headers.contains_key(header::RANGE);
    if codings(row).0 {
        compression::vary_accept_encoding(headers);
        if negotiate(row, request_headers, ranged) == Choice::Brotli {
            compression::mark_compressed(headers);
            headers.remove(header::CONTENT_ENCODING);
        }
    }
}

/// GET or HEAD of an object whose preconditions passed.
pub async fn respond(
    backend: Arc<dyn Backend>,
    bucket: &BucketInfo,
    row: &ObjectRow,
    method: &Method,
    request_headers: &HeaderMap,
) -> Result<Response, Unserved> {
    let size = row.size.max(0) as u64;
    let stored_size = row
        .stored_size
        .unwrap_or_else(|| row.blobs.iter().map(|b| b.size.max(0)).sum())
        .max(0) as u64;
    let (varies, stored_br) = codings(row);
    let last_modified = httpdate::fmt_http_date(row.modified());
    let range = if if_range_holds(request_headers, &row.entity_tag(), &last_modified) {
        parse_range(request_headers.get(header::RANGE), size)
    } else {
        RangeRequest::Full
    };
    let mut choice = negotiate(row, request_headers, range != RangeRequest::Full);
    // Compressing on the fly takes a permit of the wire budget; without
    // one the identity bytes go out (if the client takes them).
    let mut permit = None;
    if choice == Choice::Brotli && !stored_br {
        permit = compression::try_permit();
        if permit.is_none() && negotiate(row, request_headers, true) == Choice::Identity {
            choice = Choice::Identity;
        }
    }
    let brotli = match choice {
        Choice::Brotli => true,
        Choice::Identity => false,
        Choice::NotAcceptable => {
            return Err(
                ApiError::NotAcceptable("Accept-Encoding refuses identity and br".into()).into(),
            );
        }
    };
    // Brotli answers are whole: a Range is ignored (RFC 9110 allows it).
    let (status, start, end) = match (brotli, range) {
        (true, _) | (false, RangeRequest::Full) => (StatusCode::OK, 0, size),
        (false, RangeRequest::Partial { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end),
        (false, RangeRequest::Unsatisfiable) => return Ok(unsatisfiable(size)),
    };
    let body = if method == Method::HEAD || (start == end && !brotli) {
        Body::empty()
    } else if brotli && stored_br {
        Body::from_stream(open_blobs(backend, bucket, row, 0, stored_size).await?)
    } else if brotli {
        let stream = open_blobs(backend, bucket, row, 0, size).await?;
        Body::from_stream(compression::encode(
            stream,
            compression::WIRE_QUALITY,
            Some(size),
            permit,
        ))
    } else if stored_br {
        // Decompressed on the fly; a range is cut from the identity bytes.
        let stream = open_blobs(backend, bucket, row, 0, stored_size).await?;
        Body::from_stream(compression::slice(compression::decode(stream), start, end))
    } else {
        Body::from_stream(open_blobs(backend, bucket, row, start, end).await?)
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    object_headers(headers, row);
    if varies {
        compression::vary_accept_encoding(headers);
    }
    if brotli {
        compression::mark_compressed(headers);
        if stored_br {
            insert(headers, header::CONTENT_LENGTH, &stored_size.to_string());
        }
        return Ok(response);
    }
    insert(headers, header::CONTENT_LENGTH, &(end - start).to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        insert(
            headers,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> RangeRequest {
        parse_range(Some(&HeaderValue::from_str(value).expect("value")), size)
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(range("bytes=0-9", 100), Partial { start: 0, end: 10 });
        assert_eq!(
            range("bytes=90-", 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            range("bytes=90-500", 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            range("bytes=-10", 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(range("bytes=-500", 100), Partial { start: 0, end: 100 });
        assert_eq!(
            range("bytes=99-99", 100),
            Partial {
                start: 99,
                end: 100
            }
        );
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=5-1", 100), Full);
        assert_eq!(range("bytes=0-1,5-6", 100), Full);
        assert_eq!(range("items=0-1", 100), Full);
        assert_eq!(range("bytes=a-b", 100), Full);
        assert_eq!(range("bytes=", 100), Full);
        assert_eq!(parse_range(None, 100), Full);
    }
}
