//! The SQL of object rows. Every change appends an outbox row in the same
//! transaction (topic `object.*`, aggregate `<bucket id>/<key>`, payload
//! version, size and ETag — never the bytes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::buckets::BucketInfo;
use super::keys::ObjectKey;
use crate::http::preconditions::EntityTag;
use crate::http::problem::ApiError;

/// One blob of an object's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub key: String,
    pub size: i64,
}

/// An object row (kept by the cache for HEAD and 304 answers: see
/// `objects::read`).
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct ObjectRow {
    pub key: String,
    pub version_id: Uuid,
    pub size: i64,
    pub content_type: String,
    pub sha256: Option<Vec<u8>>,
    pub etag: String,
    pub blobs: sqlx::types::Json<Vec<BlobRef>>,
    pub user_metadata: Value,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub owner: String,
    /// `br` when the blobs hold the bytes Brotli-compressed (issue 11).
    pub content_encoding: Option<String>,
    /// What the blobs hold (compressed size), when it differs from `size`.
    pub stored_size: Option<i64>,
    pub created_us: i64,
    pub modified_us: i64,
}

pub const COLUMNS: &str = "key, version_id, size, content_type, sha256, etag, blobs, \
    user_metadata, cache_control, content_disposition, owner, content_encoding, stored_size, \
    (extract(epoch FROM created_at) * 1000000)::bigint AS created_us, \
    (extract(epoch FROM modified_at) * 1000000)::bigint AS modified_us";

fn time_of(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn rfc3339(us: i64) -> String {
    httpdate_rfc3339(time_of(us))
}

/// RFC 3339 UTC with microseconds, without a time crate.
fn httpdate_rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_micros()
    )
}

impl ObjectRow {
    pub fn entity_tag(&self) -> EntityTag {
        EntityTag::strong(self.etag.clone())
            .unwrap_or_else(|_| EntityTag::from_digest(false, &[self.etag.as_bytes()]))
    }

    pub fn modified(&self) -> SystemTime {
        time_of(self.modified_us)
    }

    /// The JSON description (PUT answers, HEAD-like metadata, lists).
    pub fn view(&self) -> Value {
        json!({
            "key": self.key,
            "size": self.size,
            "etag": self.entity_tag().to_string(),
            "content_type": self.content_type,
            "sha256": self.sha256.as_ref().map(hex::encode),
            "version_id": self.version_id,
            "metadata": self.user_metadata,
            "cache_control": self.cache_control,
            "content_disposition": self.content_disposition,
            "created_at": rfc3339(self.created_us),
            "modified_at": rfc3339(self.modified_us),
        })
    }
}

/// The ETag of a new version: content hash (or the parts' tags) and the
/// version id, so re-uploading the same bytes still changes the tag.
pub fn new_etag(content: &[u8], version: Uuid) -> String {
    EntityTag::from_digest(false, &[content, version.as_bytes()])
        .tag()
        .to_string()
}

pub async fn get(
    conn: &mut PgConnection,
    bucket: Uuid,
    key: &str,
    lock: bool,
) -> Result<Option<ObjectRow>, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM objects WHERE bucket_id = $1 AND key = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_as(&sql)
        .bind(bucket)
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// What a new version carries besides its bytes.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub key: ObjectKey,
    pub version_id: Uuid,
    pub size: i64,
    pub content_type: String,
    pub sha256: Option<Vec<u8>>,
    pub etag: String,
    pub blobs: Vec<BlobRef>,
    pub user_metadata: Map<String, Value>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub owner: String,
    /// `br` when the blobs hold the bytes compressed, with their size.
    pub content_encoding: Option<String>,
    pub stored_size: Option<i64>,
}

/// Inserts the row; `None` when the key exists (someone else created it
/// meanwhile: the unique primary key is what makes `If-None-Match: *`
/// race-safe).
pub async fn insert(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    new: &NewObject,
) -> Result<Option<ObjectRow>, ApiError> {
    let sql = format!(
        "INSERT INTO objects (bucket_id, key, version_id, size, content_type, sha256, etag,
                              blobs, user_metadata, cache_control, content_disposition, owner,
                              content_encoding, stored_size)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (bucket_id, key) DO NOTHING
         RETURNING {COLUMNS}"
    );
    let row: Option<ObjectRow> = bind_new(sqlx::query_as(&sql), bucket, new)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = &row {
        outbox(conn, bucket, "object.created", row).await?;
    }
    Ok(row)
}

/// Replaces the (locked) row of `new.key`.
pub async fn replace(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    new: &NewObject,
) -> Result<ObjectRow, ApiError> {
    let sql = format!(
        "UPDATE objects SET version_id = $3, size = $4, content_type = $5, sha256 = $6,
                etag = $7, blobs = $8, user_metadata = $9, cache_control = $10,
                content_disposition = $11, owner = $12, content_encoding = $13,
                stored_size = $14, modified_at = now()
          WHERE bucket_id = $1 AND key = $2
         RETURNING {COLUMNS}"
    );
    let row: ObjectRow = bind_new(sqlx::query_as(&sql), bucket, new)
        .fetch_one(&mut *conn)
        .await?;
    outbox(conn, bucket, "object.replaced", &row).await?;
    Ok(row)
}

fn bind_new<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, ObjectRow, sqlx::postgres::PgArguments>,
    bucket: &BucketInfo,
    new: &'q NewObject,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, ObjectRow, sqlx::postgres::PgArguments> {
    query
        .bind(bucket.id)
        .bind(new.key.as_str())
        .bind(new.version_id)
        .bind(new.size)
        .bind(&new.content_type)
        .bind(&new.sha256)
        .bind(&new.etag)
        .bind(sqlx::types::Json(&new.blobs))
        .bind(Value::Object(new.user_metadata.clone()))
        .bind(&new.cache_control)
        .bind(&new.content_disposition)
        .bind(&new.owner)
        .bind(&new.content_encoding)
        .bind(new.stored_size)
}

pub async fn delete(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    row: &ObjectRow,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM objects WHERE bucket_id = $1 AND key = $2")
        .bind(bucket.id)
        .bind(&row.key)
        .execute(&mut *conn)
        .await?;
    outbox(conn, bucket, "object.deleted", row).await
}

/// Blobs that are no longer referenced after this transaction: recorded as
/// intents due `after` from now. Due at once (`Duration::ZERO`), the caller
/// deletes them after the commit and the sweeper does if the process dies
/// first; due later (a replaced or deleted object's blobs, see
/// [`super::StorageSettings::retired_blob_grace`]), only the sweeper does.
pub async fn doom_blobs(
    conn: &mut PgConnection,
    bucket: Uuid,
    blobs: &[BlobRef],
    after: Duration,
) -> Result<(), ApiError> {
    let keys: Vec<&str> = blobs.iter().map(|b| b.key.as_str()).collect();
    sqlx::query(
        "INSERT INTO blob_intents (bucket_id, blob_key, expires_at)
         SELECT $1, k, now() + make_interval(secs => $3) FROM unnest($2::text[]) AS k
         ON CONFLICT (bucket_id, blob_key) DO UPDATE SET expires_at = excluded.expires_at",
    )
    .bind(bucket)
    .bind(&keys)
    .bind(after.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Clears intents of blobs now referenced by a committed row.
pub async fn clear_intents(
    conn: &mut PgConnection,
    bucket: Uuid,
    blobs: &[String],
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM blob_intents WHERE bucket_id = $1 AND blob_key = ANY($2)")
        .bind(bucket)
        .bind(blobs)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn outbox(
    conn: &mut PgConnection,
    bucket: &BucketInfo,
    topic: &'static str,
    row: &ObjectRow,
) -> Result<(), ApiError> {
    let event = crate::events::event::Event::new(topic, format!("{}/{}", bucket.id, row.key))
        .etag(&row.entity_tag())
        .data(json!({
            "bucket": bucket.name,
            "key": row.key,
            "version": row.version_id,
            "size": row.size,
        }));
    crate::events::event::record(conn, event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_767_225_599_000_000),
            "2025-12-31T23:59:59.000000Z"
        );
    }
}
