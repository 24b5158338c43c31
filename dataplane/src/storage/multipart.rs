//! Multipart uploads, with S3's rules: parts numbered 1 to 10,000, each
//! but the last at least 5 MiB, completed with the list of parts in
//! ascending order and the ETag each upload returned.
//!
//! Each part is streamed to its own blob (`<prefix>/u/<upload>/<n>-<id>`)
//! through the same pipeline as a PUT ([`super::upload`]), its quota
//! reserved while it streams and committed as bucket usage when it lands
//! (parts occupy storage). Completion makes the object out of the parts'
//! blobs in order — no copy — and adds the object to the count; parts not
//! named are dropped. Abort (by the client or the lifecycle worker) drops
//! every part.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::StorageState;
use super::access::Access;
use super::buckets::BucketInfo;
use super::content_type::{self, ContentType};
use super::keys::ObjectKey;
use super::objects::{self, discard_blobs};
use super::quota::{self, Reservation};
use super::store::{self, BlobRef, NewObject};
use super::upload::{self, IngestRequest};
use crate::http::FieldError;
use crate::http::pagination::{
    CursorCodec, Page, PageLimits, PageParams, Position, QueryFingerprint,
};
use crate::http::preconditions::EntityTag;
use crate::http::problem::ApiError;

pub const MAX_PARTS: i32 = 10_000;
/// Smallest part but the last (S3's rule).
pub const MIN_PART_SIZE: i64 = 5 << 20;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The key the object will have.
    pub key: String,
    pub content_type: Option<String>,
    /// User metadata (names of a-z 0-9 - _; at most 2 KiB in all).
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletePart {
    pub part_number: i32,
    /// The ETag the part's upload returned (quoted or not).
    pub etag: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// Ascending part numbers.
    pub parts: Vec<CompletePart>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct UploadRow {
    id: Uuid,
    key: String,
    content_type: String,
    user_metadata: Value,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    owner: String,
    created_us: i64,
}

const UPLOAD_COLUMNS: &str = "id, key, content_type, user_metadata, cache_control, \
    content_disposition, owner, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us";

#[derive(Debug, Clone, sqlx::FromRow)]
struct PartRow {
    part_number: i32,
    blob_key: String,
    size: i64,
    etag: String,
}

fn upload_view(row: &UploadRow, parts: Option<&[PartRow]>) -> Value {
    let mut view = json!({
        "upload_id": row.id,
        "key": row.key,
        "content_type": row.content_type,
        "metadata": row.user_metadata,
        "initiated_at_us": row.created_us,
    });
    if let Some(parts) = parts {
        view["parts"] = parts
            .iter()
            .map(|p| json!({"part_number": p.part_number, "size": p.size, "etag": quoted(&p.etag)}))
            .collect();
    }
    view
}

fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

fn parse_upload_id(id: &str) -> Result<Uuid, ApiError> {
    // Not a UUID: no such upload (the same 404 as an unknown one).
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

async fn lock_upload(
    conn: &mut sqlx::PgConnection,
    bucket: Uuid,
    id: Uuid,
    lock: bool,
) -> Result<UploadRow, ApiError> {
    let sql = format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket_id = $1 AND id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as(&sql)
        .bind(bucket)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)
}

async fn parts_of(
    conn: &mut sqlx::PgConnection,
    bucket: Uuid,
    upload: Uuid,
) -> Result<Vec<PartRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT part_number, blob_key, size, etag FROM upload_parts
          WHERE bucket_id = $1 AND upload_id = $2 ORDER BY part_number",
    )
    .bind(bucket)
    .bind(upload)
    .fetch_all(conn)
    .await?)
}

fn blob_refs(parts: &[PartRow]) -> Vec<BlobRef> {
    parts
        .iter()
        .map(|p| BlobRef {
            key: p.blob_key.clone(),
            size: p.size,
        })
        .collect()
}

/// Starts an upload on `conn` (the request's idempotency run: plain, or
/// the keyed transaction its record commits in).
pub async fn create(
    access: &Access,
    conn: &mut sqlx::PgConnection,
    body: CreateBody,
) -> Result<Response, ApiError> {
    let bucket = &access.bucket;
    bucket.writable_or_conflict()?;
    let mut errors = Vec::new();
    let key = ObjectKey::parse(&body.key)
        .map_err(|m| errors.push(FieldError::new("/key", format!("the object key {m}"))))
        .ok();
    let content_type = ContentType::parse(body.content_type.as_deref())
        .map_err(|_| errors.push(FieldError::new("/content_type", "not a valid media type")))
        .ok();
    // The same rules as headers on a PUT.
    let mut headers = HeaderMap::new();
    for (name, value) in &body.metadata {
        match (
            axum::http::HeaderName::from_bytes(format!("{}{name}", super::META_PREFIX).as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.insert(name, value);
            }
            _ => errors.push(FieldError::new(
                format!("/metadata/{name}"),
                "names of a-z 0-9 - _, values of visible ASCII",
            )),
        }
    }
    for (field, value) in [
        ("cache-control", &body.cache_control),
        ("content-disposition", &body.content_disposition),
    ] {
        if let Some(value) = value {
            match axum::http::HeaderValue::from_str(value) {
                Ok(value) => {
                    headers.insert(field, value);
                }
                Err(_) => errors.push(FieldError::new(
                    format!("/{}", field.replace('-', "_")),
                    "visible ASCII only",
                )),
            }
        }
    }
    let meta = objects::write_meta(&headers)
        .map_err(|e| errors.push(FieldError::new("/metadata", e.to_string())))
        .ok();
    let (Some(key), Some(content_type), Some(meta), true) =
        (key, content_type, meta, errors.is_empty())
    else {
        return Err(ApiError::validation(errors));
    };
    if !content_type::allowed(&bucket.allowed_content_types, &content_type.essence) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the bucket does not accept {}",
            content_type.essence
        )));
    }
    let id = Uuid::now_v7();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let row: UploadRow = sqlx::query_as(&format!(
        "INSERT INTO uploads (bucket_id, id, key, content_type, user_metadata, cache_control,
                              content_disposition, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {UPLOAD_COLUMNS}"
    ))
    .bind(bucket.id)
    .bind(id)
    .bind(key.as_str())
    .bind(&content_type.value)
    .bind(Value::Object(meta.user_metadata))
    .bind(&meta.cache_control)
    .bind(&meta.content_disposition)
    .bind(&access.actor)
    .fetch_one(&mut *tx)
    .await?;
    crate::events::record(
        &mut tx,
        crate::events::Event::new(
            crate::events::types::UPLOAD_CREATED,
            format!("{}/{id}", bucket.id),
        )
        .data(json!({"bucket": bucket.name, "key": row.key, "upload": id})),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(upload_view(&row, Some(&[]))),
    )
        .into_response())
}

pub async fn upload_part(
    state: &StorageState,
    access: Access,
    upload: &str,
    part: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bucket = access.bucket.clone();
    let upload_id = parse_upload_id(upload)?;
    let part_number = part
        .parse::<i32>()
        .ok()
        .filter(|n| (1..=MAX_PARTS).contains(n))
        .ok_or_else(|| ApiError::invalid_parameter("path", "part", "must be 1 to 10000"))?;
    bucket.writable_or_conflict()?;
    let upload_row = {
        let mut conn = access.pool.acquire().await?;
        lock_upload(&mut conn, bucket.id, upload_id, false).await?
    };
    let content_type = ContentType::parse(Some(&upload_row.content_type))?;
    let declared_len = super::objects::declared_length(headers)?;
    let max_size = bucket.max_object_size.map(|m| m.max(0) as u64);
    let mut reservation = Reservation::take(
        &access.pool,
        &bucket,
        // In i64 range: checked by declared_length.
        declared_len.map_or(0, |l| l as i64),
        0,
        state.settings.lease,
    )
    .await?;
    let ingested = match upload::ingest(
        state,
        &access.pool,
        IngestRequest {
            bucket: &bucket,
            blob: bucket.new_part_blob(upload_id, part_number),
            content_type: &content_type,
            declared_len,
            max_size,
            check_head: part_number == 1,
            compress: false,
        },
        &mut reservation,
        body,
    )
    .await
    {
        Ok(ingested) => ingested,
        Err(error) => {
            let _ = reservation.release().await;
            return Err(error);
        }
    };
    let etag = EntityTag::from_digest(
        false,
        &[&ingested.sha256, ingested.blob.as_str().as_bytes()],
    );
    let result: Result<Option<PartRow>, ApiError> = async {
        let mut tx = access.pool.begin().await?;
        // Locked: a concurrent complete or abort waits, or we see it gone.
        lock_upload(&mut tx, bucket.id, upload_id, true).await?;
        let old: Option<PartRow> = sqlx::query_as(
            "SELECT part_number, blob_key, size, etag FROM upload_parts
              WHERE bucket_id = $1 AND upload_id = $2 AND part_number = $3 FOR UPDATE",
        )
        .bind(bucket.id)
        .bind(upload_id)
        .bind(part_number)
        .fetch_optional(&mut *tx)
        .await?;
        let old_size = old.as_ref().map(|p| p.size).unwrap_or(0);
        reservation
            .settle(&mut tx, &bucket, ingested.size - old_size, 0)
            .await?;
        sqlx::query(
            "INSERT INTO upload_parts (bucket_id, upload_id, part_number, blob_key, size, etag)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (bucket_id, upload_id, part_number) DO UPDATE
                SET blob_key = excluded.blob_key, size = excluded.size, etag = excluded.etag,
                    created_at = now()",
        )
        .bind(bucket.id)
        .bind(upload_id)
        .bind(part_number)
        .bind(ingested.blob.as_str())
        .bind(ingested.size)
        .bind(etag.tag())
        .execute(&mut *tx)
        .await?;
        if let Some(old) = &old {
            // A part is never read: its old blob goes at once.
            let old = blob_refs(std::slice::from_ref(old));
            store::doom_blobs(&mut tx, bucket.id, &old, Duration::ZERO).await?;
        }
        store::clear_intents(&mut tx, bucket.id, &[ingested.blob.as_str().to_string()]).await?;
        tx.commit().await?;
        Ok(old)
    }
    .await;
    match result {
        Ok(old) => {
            reservation.settled();
            if let Some(old) = old {
                discard_blobs(state, &access.pool, &bucket, &blob_refs(&[old])).await;
            }
            let mut response = axum::Json(json!({
                "part_number": part_number,
                "size": ingested.size,
                "etag": etag.to_string(),
            }))
            .into_response();
            response
                .headers_mut()
                .insert(axum::http::header::ETAG, etag.header_value());
            Ok(response)
        }
        Err(error) => {
            upload::discard_blob(state, &access.pool, bucket.id, &ingested.blob).await;
            let _ = reservation.release().await;
            Err(error)
        }
    }
}

fn unquote(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag)
}

/// What a completion left to delete, already recorded in its transaction:
/// the parts it did not use (due at once) and the blobs of the version it
/// replaced (retired, due after the grace).
#[derive(Debug, Default)]
pub struct Leftovers {
    unused: Vec<BlobRef>,
    retired: Vec<BlobRef>,
}

/// Completes an upload on `conn` (the request's idempotency run). Returns
/// the answer and the completion's [`Leftovers`], which the caller hands
/// to [`discard`] once the run has committed — never before, or a
/// rolled-back run would lose the bytes of the object it kept.
pub async fn complete(
    state: &StorageState,
    access: &Access,
    conn: &mut sqlx::PgConnection,
    upload: &str,
    method: &Method,
    headers: &HeaderMap,
    body: CompleteBody,
) -> Result<(Response, Leftovers), ApiError> {
    let bucket = access.bucket.clone();
    let upload_id = parse_upload_id(upload)?;
    bucket.writable_or_conflict()?;
    if body.parts.is_empty() || body.parts.len() > MAX_PARTS as usize {
        return Err(ApiError::validation(vec![FieldError::new(
            "/parts",
            "list 1 to 10000 parts",
        )]));
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let upload_row = lock_upload(&mut tx, bucket.id, upload_id, true).await?;
    let stored = parts_of(&mut tx, bucket.id, upload_id).await?;
    let by_number: HashMap<i32, &PartRow> = stored.iter().map(|p| (p.part_number, p)).collect();
    let mut errors = Vec::new();
    let mut chosen: Vec<PartRow> = Vec::new();
    let mut previous = 0;
    for (i, part) in body.parts.iter().enumerate() {
        if part.part_number <= previous {
            errors.push(FieldError::new(
                format!("/parts/{i}/part_number"),
                "parts must be listed in ascending order, each once",
            ));
        }
        previous = part.part_number;
        match by_number.get(&part.part_number) {
            Some(found) if found.etag == unquote(&part.etag) => chosen.push((*found).clone()),
            Some(_) => errors.push(FieldError::new(
                format!("/parts/{i}/etag"),
                "does not match the part's ETag",
            )),
            None => errors.push(FieldError::new(
                format!("/parts/{i}/part_number"),
                "no such part was uploaded",
            )),
        }
    }
    if errors.is_empty() {
        let last = chosen.len().saturating_sub(1);
        for (i, part) in chosen.iter().enumerate() {
            if i != last && part.size < MIN_PART_SIZE {
                errors.push(FieldError::new(
                    format!("/parts/{i}"),
                    "every part but the last needs at least 5 MiB",
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let size: i64 = chosen.iter().map(|p| p.size).sum();
    if let Some(max) = bucket.max_object_size
        && size > max
    {
        return Err(ApiError::PayloadTooLarge {
            limit: Some(max as u64),
        });
    }
    let key = ObjectKey::parse(&upload_row.key)
        .map_err(|_| ApiError::internal(anyhow::anyhow!("stored upload key is invalid")))?;
    let current = store::get(&mut tx, bucket.id, key.as_str(), true).await?;
    let tag = |row: &store::ObjectRow| (row.entity_tag(), Some(row.modified()));
    let validators = current.as_ref().map(tag);
    crate::http::preconditions::check(
        method,
        headers,
        validators.as_ref().map(|(t, m)| (t, *m)),
        crate::http::preconditions::Requirement::Optional,
    )?;
    let version_id = Uuid::now_v7();
    let joined: String = chosen.iter().map(|p| p.etag.as_str()).collect();
    let new = NewObject {
        key,
        version_id,
        size,
        content_type: upload_row.content_type.clone(),
        sha256: None,
        etag: store::new_etag(joined.as_bytes(), version_id),
        blobs: blob_refs(&chosen),
        user_metadata: upload_row
            .user_metadata
            .as_object()
            .cloned()
            .unwrap_or_default(),
        cache_control: upload_row.cache_control.clone(),
        content_disposition: upload_row.content_disposition.clone(),
        owner: upload_row.owner.clone(),
        content_encoding: None,
        stored_size: None,
    };
    let unused: Vec<PartRow> = stored
        .iter()
        .filter(|p| !chosen.iter().any(|c| c.part_number == p.part_number))
        .cloned()
        .collect();
    let unused_bytes: i64 = unused.iter().map(|p| p.size).sum();
    let (row, created, retired) = match &current {
        None => {
            // The parts' bytes are in usage already; the object is new.
            quota::adjust(&mut tx, &bucket, -unused_bytes, 1, true).await?;
            let row = store::insert(&mut tx, &bucket, &new)
                .await?
                .ok_or(ApiError::PreconditionFailed)?;
            (row, true, Vec::new())
        }
        Some(old) => {
            quota::adjust(&mut tx, &bucket, -unused_bytes - old.size, 0, false).await?;
            let row = store::replace(&mut tx, &bucket, &new).await?;
            // The old version's rendered variants are removed from this
            // write's `object.replaced` event (media::variants::StaleVariants).
            (row, false, old.blobs.0.clone())
        }
    };
    let leftovers = Leftovers {
        unused: blob_refs(&unused),
        retired,
    };
    store::doom_blobs(&mut tx, bucket.id, &leftovers.unused, Duration::ZERO).await?;
    if !leftovers.retired.is_empty() {
        let grace = state.settings.retired_blob_grace;
        store::doom_blobs(&mut tx, bucket.id, &leftovers.retired, grace).await?;
    }
    delete_upload_rows(&mut tx, bucket.id, upload_id).await?;
    tx.commit().await?;
    let mut response = (
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(row.view()),
    )
        .into_response();
    crate::http::preconditions::set_validators(
        response.headers_mut(),
        &row.entity_tag(),
        Some(row.modified()),
    );
    Ok((response, leftovers))
}

/// After a completion's run committed: deletes the unused parts, and
/// retires the replaced version's blobs as every replace does (the
/// sweeper deletes whatever is left once due).
pub async fn discard(state: &StorageState, access: &Access, leftovers: &Leftovers) {
    objects::delete_blobs(state, access, &leftovers.unused).await;
    let (pool, bucket) = (&access.pool, &access.bucket);
    objects::retire_blobs(state, pool, bucket, &leftovers.retired).await;
}

async fn delete_upload_rows(
    conn: &mut sqlx::PgConnection,
    bucket: Uuid,
    upload: Uuid,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM upload_parts WHERE bucket_id = $1 AND upload_id = $2")
        .bind(bucket)
        .bind(upload)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM uploads WHERE bucket_id = $1 AND id = $2")
        .bind(bucket)
        .bind(upload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops an upload and its parts (client abort, lifecycle).
pub async fn abort_upload(
    state: &StorageState,
    pool: &PgPool,
    bucket: &BucketInfo,
    upload_id: Uuid,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    lock_upload(&mut tx, bucket.id, upload_id, true).await?;
    let parts = parts_of(&mut tx, bucket.id, upload_id).await?;
    let bytes: i64 = parts.iter().map(|p| p.size).sum();
    quota::adjust(&mut tx, bucket, -bytes, 0, false).await?;
    let blobs = blob_refs(&parts);
    store::doom_blobs(&mut tx, bucket.id, &blobs, Duration::ZERO).await?;
    delete_upload_rows(&mut tx, bucket.id, upload_id).await?;
    crate::events::record(
        &mut tx,
        crate::events::Event::new(
            crate::events::types::UPLOAD_ABORTED,
            format!("{}/{upload_id}", bucket.id),
        )
        .data(json!({"bucket": bucket.name, "parts": parts.len()})),
    )
    .await?;
    tx.commit().await?;
    discard_blobs(state, pool, bucket, &blobs).await;
    Ok(())
}

pub async fn abort(
    state: &StorageState,
    access: Access,
    upload: &str,
) -> Result<Response, ApiError> {
    let upload_id = parse_upload_id(upload)?;
    abort_upload(state, &access.pool, &access.bucket, upload_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_parts(access: Access, upload: &str) -> Result<Response, ApiError> {
    let upload_id = parse_upload_id(upload)?;
    let mut conn = access.pool.acquire().await?;
    let row = lock_upload(&mut conn, access.bucket.id, upload_id, false).await?;
    let parts = parts_of(&mut conn, access.bucket.id, upload_id).await?;
    Ok(axum::Json(upload_view(&row, Some(&parts))).into_response())
}

const UPLOAD_PAGES: PageLimits = PageLimits {
    default: 100,
    max: 1000,
};

pub async fn list_uploads(
    access: Access,
    codec: &CursorCodec,
    page: PageParams,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let limit = UPLOAD_PAGES.resolve(page.limit)?;
    let fingerprint = QueryFingerprint::of(&("uploads", access.bucket.id));
    let after: Option<Position<()>> = codec.decode_param(page.cursor.as_deref(), &fingerprint)?;
    let after = match after {
        Some(p) => Some(Uuid::parse_str(&p.id).map_err(|_| {
            ApiError::invalid_parameter("query", "cursor", "not a cursor of this list")
        })?),
        None => None,
    };
    let rows: Vec<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket_id = $1 AND ($2::uuid IS NULL OR id > $2)
          ORDER BY id LIMIT $3"
    ))
    .bind(access.bucket.id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&access.pool)
    .await?;
    let page = Page::from_rows(rows, limit, codec, &fingerprint, |row| Position {
        keys: (),
        id: row.id.to_string(),
    });
    let page = Page {
        items: page
            .items
            .iter()
            .map(|row| upload_view(row, None))
            .collect::<Vec<_>>(),
        next_cursor: page.next_cursor,
        total: None,
    };
    Ok(page.into_response_for(uri))
}

/// Uploads of `bucket` started before `days` ago (lifecycle).
pub async fn stale_uploads(
    pool: &PgPool,
    bucket: &BucketInfo,
    prefix: &str,
    days: i64,
    limit: i64,
) -> Result<Vec<Uuid>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM uploads
          WHERE bucket_id = $1 AND starts_with(key, $2)
            AND created_at < now() - make_interval(days => $3::int)
          ORDER BY created_at LIMIT $4",
    )
    .bind(bucket.id)
    .bind(prefix)
    .bind(days as i32)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
