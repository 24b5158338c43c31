//! PUT (upload or server-side copy), GET/HEAD, DELETE and list of objects.
//!
//! A write streams its bytes to a new blob first ([`super::upload`]); the
//! transaction that follows locks the key's row, re-evaluates the
//! preconditions against what is there *now*, flips the row to the new
//! blob, settles the quota reservation into usage, appends the outbox row
//! and marks the replaced blob for deletion — all or nothing. The old blob
//! is deleted after the commit; a crash in between leaves it to the
//! sweeper, never a row without its bytes.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::StorageState;
use super::access::Access;
use super::buckets::BucketInfo;
use super::content_type::{self, ContentType};
use super::keys::ObjectKey;
use super::quota::Reservation;
use super::serving;
use super::store::{self, BlobRef, NewObject, ObjectRow};
use super::upload::{self, IngestRequest};
use super::{MAX_USER_METADATA_BYTES, META_PREFIX};
use crate::cache::{CacheKey, EntryOptions, HybridCache, invalidation};
use crate::http::pagination::{CursorCodec, PageLimits, Position, QueryFingerprint, next_link};
use crate::http::preconditions::{self, Requirement};
use crate::http::problem::{ApiError, kind};

/// What a write carries besides the bytes, from its headers.
#[derive(Debug, Clone)]
pub struct WriteMeta {
    pub content_type: ContentType,
    pub user_metadata: Map<String, Value>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::invalid_parameter("header", name, "must be visible ASCII")
                    .with_kind(kind::INVALID_HEADER)
            })
        })
        .transpose()
}

/// Reads `Content-Type`, `Cache-Control`, `Content-Disposition` and
/// `x-strata-meta-*` (names of `a-z 0-9 - _`, values visible ASCII; all
/// together at most 2 KiB).
pub fn write_meta(headers: &HeaderMap) -> Result<WriteMeta, ApiError> {
    let content_type = ContentType::parse(header_str(headers, "content-type")?)?;
    let cache_control = header_str(headers, "cache-control")?
        .map(|v| {
            if v.len() > 256 {
                Err(
                    ApiError::invalid_parameter("header", "cache-control", "at most 256 bytes")
                        .with_kind(kind::INVALID_HEADER),
                )
            } else {
                Ok(v.trim().to_string())
            }
        })
        .transpose()?;
    let content_disposition = header_str(headers, "content-disposition")?
        .map(content_type::parse_disposition)
        .transpose()?;
    let mut user_metadata = Map::new();
    let mut total = 0;
    for (name, value) in headers {
        let Some(suffix) = name.as_str().strip_prefix(META_PREFIX) else {
            continue;
        };
        let value = value.to_str().map_err(|_| {
            ApiError::invalid_parameter("header", name.as_str(), "must be visible ASCII")
                .with_kind(kind::INVALID_HEADER)
        })?;
        if suffix.is_empty()
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ApiError::invalid_parameter(
                "header",
                name.as_str(),
                "metadata names are `x-strata-meta-` and 1 or more of a-z 0-9 - _",
            )
            .with_kind(kind::INVALID_HEADER));
        }
        total += suffix.len() + value.len();
        user_metadata.insert(suffix.to_string(), Value::String(value.to_string()));
    }
    if total > MAX_USER_METADATA_BYTES {
        return Err(ApiError::invalid_parameter(
            "header",
            "x-strata-meta-*",
            format!("user metadata exceeds {MAX_USER_METADATA_BYTES} bytes"),
        )
        .with_kind(kind::INVALID_HEADER));
    }
    Ok(WriteMeta {
        content_type,
        user_metadata,
        cache_control,
        content_disposition,
    })
}

/// The declared body length. Quotas reserve it as a signed byte count, and
/// a length past `i64::MAX` would wrap into a negative reservation (quota
/// handed back, usage driven down), so it is refused as too large.
pub(super) fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    header_str(headers, "content-length")?
        .map(|v| {
            let len = v.trim().parse::<u64>().map_err(|_| {
                ApiError::invalid_parameter("header", "content-length", "not a number")
                    .with_kind(kind::INVALID_HEADER)
            })?;
            if i64::try_from(len).is_err() {
                return Err(ApiError::PayloadTooLarge { limit: None });
            }
            Ok(len)
        })
        .transpose()
}

fn current_of(
    row: Option<&ObjectRow>,
) -> Option<(crate::http::preconditions::EntityTag, Option<SystemTime>)> {
    row.map(|r| (r.entity_tag(), Some(r.modified())))
}

fn check_preconditions(
    method: &Method,
    headers: &HeaderMap,
    row: Option<&ObjectRow>,
) -> Result<(), ApiError> {
    let current = current_of(row);
    preconditions::check(
        method,
        headers,
        current.as_ref().map(|(tag, at)| (tag, *at)),
        Requirement::Optional,
    )
}

/// Whether the bucket accepts this type.
fn check_allowed(bucket: &BucketInfo, content_type: &ContentType) -> Result<(), ApiError> {
    if content_type::allowed(&bucket.allowed_content_types, &content_type.essence) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the bucket does not accept {} (allowed: {})",
            content_type.essence,
            bucket.allowed_content_types.join(", ")
        )))
    }
}

/// The limits of a presigned PUT.
fn presigned_limits(access: &Access, meta: &WriteMeta) -> Result<Option<u64>, ApiError> {
    let Some(claims) = &access.presigned else {
        return Ok(None);
    };
    if let Some(signed) = &claims.content_type
        && *signed != meta.content_type.value
    {
        return Err(ApiError::Forbidden(format!(
            "presigned URL refused: it allows Content-Type {signed} only"
        )));
    }
    Ok(claims.max_length)
}

/// The body of a PUT answer (and of HEAD-like metadata in lists).
fn object_response(status: StatusCode, row: &ObjectRow) -> Response {
    let mut response = (status, axum::Json(row.view())).into_response();
    preconditions::set_validators(
        response.headers_mut(),
        &row.entity_tag(),
        Some(row.modified()),
    );
    response
}

/// The commit of a new version (new blobs already stored): see the module
/// documentation. On `Err` the caller discards the new blobs.
#[allow(clippy::too_many_arguments)]
pub async fn commit_version(
    state: &StorageState,
    access: &Access,
    method: &Method,
    headers: &HeaderMap,
    mut new: NewObject,
    reservation: &mut Reservation,
) -> Result<(ObjectRow, bool), ApiError> {
    let bucket = &access.bucket;
    let mut tx = access.pool.begin().await?;
    // Two tries: a create that loses the insert race becomes an overwrite
    // of the winner (unless `If-None-Match: *` forbids it).
    let mut attempt = 0;
    let (row, created, replaced, usage) = loop {
        attempt += 1;
        // A write whose preconditions allow a create tries the insert
        // first: a create then costs one round trip, not a look and an
        // insert, and an overwrite the same two (the insert finds the key
        // taken and changes nothing, then the locked look).
        if attempt == 1
            && check_preconditions(method, headers, None).is_ok()
            && let Some(row) = store::insert(&mut tx, bucket, &new).await?
        {
            break (row, true, None, (new.size, 1));
        }
        let current = store::get(&mut tx, bucket.id, new.key.as_str(), true).await?;
        check_preconditions(method, headers, current.as_ref())?;
        match current {
            None => match store::insert(&mut tx, bucket, &new).await? {
                Some(row) => break (row, true, None, (new.size, 1)),
                None if attempt < 2 => {
                    // Someone else created it meanwhile: start over.
                    tx.rollback().await?;
                    tx = access.pool.begin().await?;
                    continue;
                }
                None => return Err(ApiError::PreconditionFailed),
            },
            Some(old) => {
                if new.owner.is_empty() {
                    new.owner = old.owner.clone();
                }
                let row = store::replace(&mut tx, bucket, &new).await?;
                let grace = state.settings.retired_blob_grace;
                store::doom_blobs(&mut tx, bucket.id, &old.blobs, grace).await?;
                // The old version's rendered variants are removed from this
                // write's `object.replaced` event (media::variants::StaleVariants).
                let usage = (new.size - old.size, 0);
                break (row, false, Some(old), usage);
            }
        }
    };
    let new_blobs: Vec<String> = new.blobs.iter().map(|b| b.key.clone()).collect();
    store::clear_intents(&mut tx, bucket.id, &new_blobs).await?;
    // The usage rows (tenant-wide, so every writer of the tenant queues on
    // them) are locked last: held for the settle and the commit only.
    reservation
        .settle(&mut tx, bucket, usage.0, usage.1)
        .await?;
    tx.commit().await?;
    reservation.settled();
    if let Some(old) = replaced {
        retire_blobs(state, &access.pool, bucket, &old.blobs).await;
    }
    Ok((row, created))
}

/// The blobs of a version a committed change replaced or deleted: deleted
/// now when there is no grace, else left to the sweeper once their intents
/// are due ([`super::StorageSettings::retired_blob_grace`]).
pub async fn retire_blobs(
    state: &StorageState,
    pool: &sqlx::PgPool,
    bucket: &BucketInfo,
    blobs: &[BlobRef],
) {
    if state.settings.retired_blob_grace.is_zero() {
        discard_blobs(state, pool, bucket, blobs).await;
    }
}

/// Deletes blobs no row references any more (their intents are due, so a
/// failure here is retried by the sweeper).
pub async fn delete_blobs(state: &StorageState, access: &Access, blobs: &[BlobRef]) {
    discard_blobs(state, &access.pool, &access.bucket, blobs).await;
}

/// [`delete_blobs`] without an [`Access`] (workers).
pub async fn discard_blobs(
    state: &StorageState,
    pool: &sqlx::PgPool,
    bucket: &BucketInfo,
    blobs: &[BlobRef],
) {
    for blob in blobs {
        if !bucket.owns_blob(&blob.key) {
            continue;
        }
        let key = strata_storage::BlobKey::from_stored(blob.key.clone());
        upload::discard_blob(state, pool, bucket.id, &key).await;
    }
}

/// `PUT …/objects/{key}` with a body.
pub async fn put(
    state: &StorageState,
    access: Access,
    key: ObjectKey,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bucket = access.bucket.clone();
    bucket.writable_or_conflict()?;
    let meta = write_meta(headers)?;
    let signed_max = presigned_limits(&access, &meta)?;
    check_allowed(&bucket, &meta.content_type)?;
    let declared_len = declared_length(headers)?;
    let max_size = [bucket.max_object_size.map(|m| m.max(0) as u64), signed_max]
        .into_iter()
        .flatten()
        .min();
    if let (Some(len), Some(max)) = (declared_len, max_size)
        && len > max
    {
        return Err(ApiError::PayloadTooLarge { limit: Some(max) });
    }
    // A first look at the current row, before any byte is stored: for the
    // preconditions (checked again at commit), and for the object count
    // (an overwrite adds none), which only a quota of objects needs. An
    // upload with neither reserves one object, given back at commit if it
    // overwrote: one round trip fewer per upload.
    let conditional = preconditions::is_conditional(headers);
    let counted = bucket.quota_objects.is_some() || bucket.tenant_quota_objects.is_some();
    let existing = if conditional || counted {
        let mut conn = access.pool.acquire().await?;
        let existing = store::get(&mut conn, bucket.id, key.as_str(), false).await?;
        check_preconditions(method, headers, existing.as_ref())?;
        existing
    } else {
        None
    };
    let objects = i64::from(existing.is_none());
    // In i64 range: checked by declared_length.
    let bytes = declared_len.map_or(0, |l| l as i64);
    let blob = bucket.new_object_blob();
    let mut reservation = Reservation::take_with_intent(
        &access.pool,
        &bucket,
        bytes,
        objects,
        state.settings.lease,
        &blob,
    )
    .await?;
    let ingested = upload::ingest(
        state,
        &access.pool,
        IngestRequest {
            bucket: &bucket,
            blob,
            content_type: &meta.content_type,
            declared_len,
            max_size,
            check_head: true,
            compress: bucket.compression
                && crate::http::compression::compressible(&meta.content_type.essence),
        },
        &mut reservation,
        body,
    )
    .await;
    let ingested = match ingested {
        Ok(ingested) => ingested,
        Err(error) => {
            let _ = reservation.release().await;
            if error.kind() == kind::MALWARE_DETECTED {
                audit_infected(&access, &key, &error).await;
            }
            return Err(error);
        }
    };
    let version_id = Uuid::now_v7();
    let new = NewObject {
        key: key.clone(),
        version_id,
        size: ingested.size,
        content_type: meta.content_type.value.clone(),
        sha256: Some(ingested.sha256.to_vec()),
        etag: store::new_etag(&ingested.sha256, version_id),
        blobs: vec![BlobRef {
            key: ingested.blob.as_str().to_string(),
            // The blob's own size (what ranges over blobs count).
            size: ingested.stored.map_or(ingested.size, |(_, stored)| stored),
        }],
        user_metadata: meta.user_metadata,
        cache_control: meta.cache_control,
        content_disposition: meta.content_disposition,
        owner: access.actor.clone(),
        content_encoding: ingested.stored.map(|(encoding, _)| encoding.to_string()),
        stored_size: ingested.stored.map(|(_, stored)| stored),
    };
    match commit_version(state, &access, method, headers, new, &mut reservation).await {
        Ok((row, created)) => Ok(object_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &row,
        )),
        Err(error) => {
            upload::discard_blob(state, &access.pool, bucket.id, &ingested.blob).await;
            let _ = reservation.release().await;
            Err(error)
        }
    }
}

/// An infected upload is audited (and announced) though nothing is stored.
async fn audit_infected(access: &Access, key: &ObjectKey, error: &ApiError) {
    let detail = serde_json::json!({
        "bucket": access.bucket.name,
        "key": key.as_str(),
        "reason": error.to_string(),
    });
    let result: Result<(), ApiError> = async {
        let mut tx = access.pool.begin().await?;
        sqlx::query(
            "INSERT INTO audit_events (actor, action, target, outcome, detail)
             VALUES ($1, 'object.infected', $2, 'failure', $3)",
        )
        .bind(&access.actor)
        .bind(format!("{}/{}", access.bucket.id, key.as_str()))
        .bind(&detail)
        .execute(&mut *tx)
        .await?;
        crate::events::record(
            &mut tx,
            crate::events::Event::new(
                crate::events::types::OBJECT_INFECTED,
                format!("{}/{}", access.bucket.id, key.as_str()),
            )
            .data(detail.clone()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "auditing an infected upload");
    }
}

/// `PUT …/objects/{key}` with `x-strata-copy-source: <bucket>/<key>`: the
/// source's blobs are copied inside the backend to new blobs of the
/// target (never shared: each version owns its blobs), with the source's
/// type and metadata.
pub async fn copy(
    state: &StorageState,
    access: Access,
    source_bucket: &BucketInfo,
    source_key: &ObjectKey,
    key: ObjectKey,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let bucket = access.bucket.clone();
    bucket.writable_or_conflict()?;
    let (source, existing) = {
        let mut conn = access.pool.acquire().await?;
        (
            store::get(&mut conn, source_bucket.id, source_key.as_str(), false).await?,
            store::get(&mut conn, bucket.id, key.as_str(), false).await?,
        )
    };
    let source = source.ok_or(ApiError::NotFound)?;
    check_preconditions(method, headers, existing.as_ref())?;
    let essence = source
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !content_type::allowed(&bucket.allowed_content_types, &essence) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the bucket does not accept {essence}"
        )));
    }
    if let Some(max) = bucket.max_object_size
        && source.size > max
    {
        return Err(ApiError::PayloadTooLarge {
            limit: Some(max as u64),
        });
    }
    let mut reservation = Reservation::take(
        &access.pool,
        &bucket,
        source.size,
        i64::from(existing.is_none()),
        state.settings.lease,
    )
    .await?;
    let mut copies = Vec::new();
    let mut failure = None;
    for blob in source.blobs.iter() {
        if !source_bucket.owns_blob(&blob.key) {
            failure = Some(ApiError::internal(anyhow::anyhow!(
                "object row names a blob outside its bucket"
            )));
            break;
        }
        let target = bucket.new_object_blob();
        if let Err(error) =
            upload::record_intent(&access.pool, &bucket, &target, state.settings.lease).await
        {
            failure = Some(error);
            break;
        }
        copies.push(BlobRef {
            key: target.as_str().to_string(),
            size: blob.size,
        });
        let from = strata_storage::BlobKey::from_stored(blob.key.clone());
        if let Err(error) = state.backend.copy(&from, &target).await {
            failure = Some(upload::backend_error(error));
            break;
        }
    }
    let version_id = Uuid::now_v7();
    let content_hash = source
        .sha256
        .clone()
        .unwrap_or_else(|| source.etag.as_bytes().to_vec());
    let new = NewObject {
        key,
        version_id,
        size: source.size,
        content_type: source.content_type.clone(),
        sha256: source.sha256.clone(),
        etag: store::new_etag(&content_hash, version_id),
        blobs: copies.clone(),
        user_metadata: source
            .user_metadata
            .as_object()
            .cloned()
            .unwrap_or_default(),
        cache_control: source.cache_control.clone(),
        content_disposition: source.content_disposition.clone(),
        owner: access.actor.clone(),
        // The blobs are copied byte for byte: stored the same way.
        content_encoding: source.content_encoding.clone(),
        stored_size: source.stored_size,
    };
    let result = match failure {
        Some(error) => Err(error),
        None => commit_version(state, &access, method, headers, new, &mut reservation).await,
    };
    match result {
        Ok((row, created)) => Ok(object_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &row,
        )),
        Err(error) => {
            delete_blobs(state, &access, &copies).await;
            let _ = reservation.release().await;
            Err(error)
        }
    }
}

/// Object rows in the cache (reads, see [`read`]): 30 s in L1, dropped on
/// every replica by the object's events (see cache::invalidation).
const OBJECT_CACHE: EntryOptions =
    EntryOptions::new(Duration::from_secs(30), Duration::from_secs(300));

/// GET or HEAD.
///
/// With the cache on, the row comes from it (no database round trip for
/// a hot object). A cached row can be a version that a write on another
/// replica has just replaced, whose blobs that write deletes before its
/// invalidation is acknowledged; the body's first blob is opened before
/// the status is chosen ([`serving::open_blobs`]), so such a row shows as
/// a missing blob, and the row is read again from the database, as writes
/// do. A read that overlaps a write may answer with either version; one
/// that starts after the write's answer sees the new one (the cache's
/// acknowledged invalidation).
pub async fn read(
    state: &StorageState,
    cache: &HybridCache,
    access: Access,
    key: ObjectKey,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if cache.is_enabled() {
        let row = cached_row(cache, &access, &key).await?;
        match answer(state, &access, &row, method, headers).await {
            Err(serving::Unserved::BlobMissing) => {}
            answered => return answered.map_err(ApiError::from),
        }
    }
    let row = {
        let mut conn = access.pool.acquire().await?;
        store::get(&mut conn, access.bucket.id, key.as_str(), false).await?
    }
    .ok_or(ApiError::NotFound)?;
    answer(state, &access, &row, method, headers)
        .await
        .map_err(ApiError::from)
}

/// The row of `key` through the cache; a missing object is never cached.
async fn cached_row(
    cache: &HybridCache,
    access: &Access,
    key: &ObjectKey,
) -> Result<ObjectRow, ApiError> {
    let tenant = access.tenant.id;
    let bucket = &access.bucket;
    let cache_key = CacheKey::tenant(tenant, "object")
        .id(bucket.id.to_string())
        .id(key.as_str())
        .build();
    let tags = invalidation::object_tags(tenant, &bucket.name, key.as_str());
    cache
        .get_or_create(&cache_key, &tags, OBJECT_CACHE, || async {
            let mut conn = access.pool.acquire().await?;
            store::get(&mut conn, bucket.id, key.as_str(), false)
                .await?
                .ok_or(ApiError::NotFound)
        })
        .await
}

/// The answer to a GET or HEAD of `row`, after its preconditions.
async fn answer(
    state: &StorageState,
    access: &Access,
    row: &ObjectRow,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, serving::Unserved> {
    match check_preconditions(method, headers, Some(row)) {
        Ok(()) => {}
        Err(ApiError::NotModified { .. }) => {
            // 304 carries the headers a 200 would (RFC 9110 §15.4.5).
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            serving::not_modified_headers(response.headers_mut(), row, headers);
            response.headers_mut().remove(header::CONTENT_TYPE);
            return Ok(response);
        }
        Err(error) => return Err(error.into()),
    }
    serving::respond(state.backend.clone(), &access.bucket, row, method, headers).await
}

/// DELETE.
pub async fn delete(
    state: &StorageState,
    access: Access,
    key: ObjectKey,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let bucket = access.bucket.clone();
    let mut tx = access.pool.begin().await?;
    let row = store::get(&mut tx, bucket.id, key.as_str(), true)
        .await?
        .ok_or(ApiError::NotFound)?;
    check_preconditions(method, headers, Some(&row))?;
    remove_locked(state, &mut tx, &bucket, &row).await?;
    tx.commit().await?;
    retire_blobs(state, &access.pool, &bucket, &row.blobs).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes a locked row: usage, outbox, and its blobs retired (the caller
/// hands them to [`retire_blobs`] after the commit). Its rendered variants
/// go from the `object.deleted` event (media::variants::StaleVariants).
/// Shared with lifecycle expiry.
pub async fn remove_locked(
    state: &StorageState,
    conn: &mut sqlx::PgConnection,
    bucket: &BucketInfo,
    row: &ObjectRow,
) -> Result<(), ApiError> {
    store::delete(conn, bucket, row).await?;
    super::quota::adjust(conn, bucket, -row.size, -1, false).await?;
    let grace = state.settings.retired_blob_grace;
    store::doom_blobs(conn, bucket.id, &row.blobs, grace).await
}

/// `GET …/objects` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// Group keys that have this after the prefix into `common_prefixes`
    /// (usually `/`).
    pub delimiter: Option<String>,
    /// Page size (entries and prefixes together), 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListPage {
    /// Objects, in byte order of their keys.
    #[schema(value_type = Vec<crate::openapi::storage::ObjectView>)]
    pub items: Vec<Value>,
    /// Key prefixes up to and including the delimiter, each once.
    pub common_prefixes: Vec<String>,
    /// Absent or null on the last page.
    pub next_cursor: Option<String>,
}

const LIST_LIMITS: PageLimits = PageLimits {
    default: 100,
    max: 1000,
};

/// Where the next page starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Resume {
    /// Keys after this one.
    #[serde(rename = "a")]
    After,
    /// Keys from this one on (the successor of a common prefix).
    #[serde(rename = "f")]
    From,
}

/// The smallest string greater than every string starting with `prefix`
/// (byte order): its last character incremented.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub async fn list(
    access: Access,
    codec: &CursorCodec,
    params: ListParams,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let limit = LIST_LIMITS.resolve(params.limit)? as usize;
    let prefix = params.prefix.unwrap_or_default();
    let delimiter = params.delimiter.filter(|d| !d.is_empty());
    if prefix.len() > super::keys::MAX_KEY_BYTES || prefix.contains('\0') {
        return Err(ApiError::invalid_parameter(
            "query",
            "prefix",
            "at most 1024 bytes, no NUL",
        ));
    }
    if delimiter
        .as_ref()
        .is_some_and(|d| d.len() > 16 || d.contains('\0'))
    {
        return Err(ApiError::invalid_parameter(
            "query",
            "delimiter",
            "at most 16 bytes, no NUL",
        ));
    }
    let fingerprint = QueryFingerprint::of(&("objects", access.bucket.id, &prefix, &delimiter));
    let position: Option<Position<Resume>> =
        codec.decode_param(params.cursor.as_deref(), &fingerprint)?;
    let (mut start, mut inclusive) = match position {
        Some(p) => (p.id, matches!(p.keys, Resume::From)),
        None => (prefix.clone(), true),
    };
    let mut items: Vec<ObjectRow> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut last: Option<Position<Resume>> = None;
    let mut more = false;
    let mut conn = access.pool.acquire().await?;
    'scan: loop {
        let want = limit + 1 - items.len() - prefixes.len();
        let sql = format!(
            "SELECT {} FROM objects
              WHERE bucket_id = $1 AND starts_with(key, $2)
                AND (key > $3 OR ($4 AND key = $3))
              ORDER BY key LIMIT $5",
            store::COLUMNS
        );
        let rows: Vec<ObjectRow> = sqlx::query_as(&sql)
            .bind(access.bucket.id)
            .bind(&prefix)
            .bind(&start)
            .bind(inclusive)
            .bind(want as i64)
            .fetch_all(&mut *conn)
            .await?;
        let exhausted = rows.len() < want;
        for row in rows {
            if items.len() + prefixes.len() == limit {
                more = true;
                break 'scan;
            }
            let rest = &row.key[prefix.len()..];
            if let Some(delimiter) = &delimiter
                && let Some(at) = rest.find(delimiter.as_str())
            {
                let common = format!("{prefix}{}", &rest[..at + delimiter.len()]);
                match successor(&common) {
                    Some(next) => {
                        prefixes.push(common);
                        last = Some(Position {
                            keys: Resume::From,
                            id: next.clone(),
                        });
                        start = next;
                        inclusive = true;
                        continue 'scan;
                    }
                    None => {
                        prefixes.push(common);
                        break 'scan;
                    }
                }
            }
            last = Some(Position {
                keys: Resume::After,
                id: row.key.clone(),
            });
            start = row.key.clone();
            inclusive = false;
            items.push(row);
        }
        if exhausted {
            break;
        }
    }
    let next_cursor = if more {
        last.map(|p| codec.encode(&p, &fingerprint))
    } else {
        None
    };
    let page = ListPage {
        items: items.iter().map(ObjectRow::view).collect(),
        common_prefixes: prefixes,
        next_cursor,
    };
    let link = page.next_cursor.as_deref().and_then(|c| next_link(uri, c));
    let mut response = axum::Json(page).into_response();
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Parses `x-strata-copy-source`: `<bucket>/<key>` (the key URL-encoded
/// like in a path).
pub fn copy_source(value: &HeaderValue) -> Result<(String, ObjectKey), ApiError> {
    let bad = |message: &str| {
        ApiError::invalid_parameter("header", super::COPY_SOURCE_HEADER, message.to_string())
            .with_kind(kind::INVALID_HEADER)
    };
    let value = value.to_str().map_err(|_| bad("must be visible ASCII"))?;
    let value = value.trim().trim_start_matches('/');
    let (bucket, key) = value
        .split_once('/')
        .ok_or_else(|| bad("expected `<bucket>/<key>`"))?;
    let key = ObjectKey::from_raw_path(key).map_err(|m| bad(&format!("the source key {m}")))?;
    Ok((bucket.to_string(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors() {
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor(""), None);
    }

    #[test]
    fn a_length_past_i64_is_too_large_not_a_negative_reservation() {
        let length = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("content-length", HeaderValue::from_static(value));
            declared_length(&headers)
        };
        assert_eq!(
            length("9223372036854775807").ok(),
            Some(Some(i64::MAX as u64))
        );
        for huge in ["9223372036854775808", "18446744073709551615"] {
            assert!(matches!(
                length(huge),
                Err(ApiError::PayloadTooLarge { limit: None })
            ));
        }
        assert!(length("-1").is_err());
        assert_eq!(declared_length(&HeaderMap::new()).ok(), Some(None));
    }

    #[test]
    fn metadata_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-strata-meta-color", HeaderValue::from_static("blue"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/plain;charset=utf-8"),
        );
        let meta = write_meta(&headers).expect("meta");
        assert_eq!(meta.user_metadata["color"], "blue");
        assert_eq!(meta.content_type.value, "text/plain; charset=utf-8");
        headers.insert(
            "x-strata-meta-big",
            HeaderValue::from_str(&"x".repeat(3000)).expect("v"),
        );
        assert_eq!(
            write_meta(&headers).expect_err("too big").kind().status,
            400
        );
    }

    #[test]
    fn copy_sources() {
        let (bucket, key) = copy_source(&HeaderValue::from_static("photos/a%20b/c")).expect("ok");
        assert_eq!(bucket, "photos");
        assert_eq!(key.as_str(), "a b/c");
        assert!(copy_source(&HeaderValue::from_static("photos")).is_err());
        assert!(copy_source(&HeaderValue::from_static("photos/../x")).is_err());
    }
}
