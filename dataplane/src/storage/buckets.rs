//! Bucket name → rules, read from `catalog.buckets` (written by the
//! operator's Bucket reconcile) together with the tenant's storage quotas
//! (`catalog.tenants.quotas`), cached briefly like tenant resolution: the
//! TTL bounds how long a rule change or a deletion takes to reach every
//! replica. Unknown names are cached too.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use strata_storage::BlobKey;
use uuid::Uuid;

use crate::cache::{CacheKey, EntryOptions, HybridCache, Tag};
use crate::http::problem::ApiError;

/// One lifecycle rule (`catalog.buckets.lifecycle`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRule {
    #[serde(default)]
    pub prefix: String,
    pub expire_after_days: Option<i64>,
    pub abort_incomplete_multipart_upload_after_days: Option<i64>,
}

/// What the data plane knows about a bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketInfo {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `t/<tenant uid>/b/<bucket uid>`: every blob of the bucket is under it.
    pub backend_prefix: String,
    pub public: bool,
    pub quota_bytes: Option<i64>,
    pub quota_objects: Option<i64>,
    pub max_object_size: Option<i64>,
    pub allowed_content_types: Vec<String>,
    pub lifecycle: Vec<LifecycleRule>,
    pub antivirus_scan: bool,
    /// Compressible uploads are stored Brotli-compressed (issue 11).
    pub compression: bool,
    /// `GET …/render/{key}` serves image transforms (issue 11).
    pub image_transforms: bool,
    /// `false` while the operator empties the bucket (`deleting`): reads
    /// work, writes are refused.
    pub writable: bool,
    /// The tenant's `spec.quotas` (`storageBytes`, `objects`).
    pub tenant_quota_bytes: Option<i64>,
    pub tenant_quota_objects: Option<i64>,
}

impl BucketInfo {
    /// A fresh blob for one object version: `<prefix>/o/<uuid v7>`.
    pub fn new_object_blob(&self) -> BlobKey {
        let id = Uuid::now_v7().to_string();
        BlobKey::from_segments(self.prefix_segments().chain(["o", id.as_str()]))
    }

    /// A fresh blob for one part of a multipart upload.
    pub fn new_part_blob(&self, upload: Uuid, part: i32) -> BlobKey {
        let upload = upload.to_string();
        let leaf = format!("{part}-{}", Uuid::now_v7());
        BlobKey::from_segments(
            self.prefix_segments()
                .chain(["u", upload.as_str(), leaf.as_str()]),
        )
    }

    fn prefix_segments(&self) -> impl Iterator<Item = &str> {
        self.backend_prefix.split('/').filter(|s| !s.is_empty())
    }

    /// Whether a blob key read from the tenant database is one of this
    /// bucket's. The tenant's own login may write its tables, so a row
    /// could name any key: nothing outside the prefix is ever read or
    /// deleted.
    pub fn owns_blob(&self, key: &str) -> bool {
        key.strip_prefix(self.backend_prefix.trim_end_matches('/'))
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| {
                !rest.is_empty() && rest.split('/').all(|s| !s.is_empty() && s != "..")
            })
    }

    pub fn writable_or_conflict(&self) -> Result<(), ApiError> {
        if self.writable {
            Ok(())
        } else {
            Err(ApiError::Conflict(
                "the bucket is being deleted; it accepts no writes".into(),
            ))
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    backend_prefix: String,
    public: bool,
    quota_bytes: Option<i64>,
    quota_objects: Option<i64>,
    max_object_size: Option<i64>,
    allowed_content_types: Vec<String>,
    lifecycle: serde_json::Value,
    antivirus_scan: bool,
    compression: bool,
    image_transforms: bool,
    state: String,
    tenant_quota_bytes: Option<i64>,
    tenant_quota_objects: Option<i64>,
}

impl From<Row> for BucketInfo {
    fn from(row: Row) -> Self {
        // Malformed rules (written by a newer operator?) apply none rather
        // than failing every request of the bucket.
        let lifecycle = serde_json::from_value(row.lifecycle).unwrap_or_default();
        Self {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            backend_prefix: row.backend_prefix,
            public: row.public,
            quota_bytes: row.quota_bytes,
            quota_objects: row.quota_objects,
            max_object_size: row.max_object_size,
            allowed_content_types: row.allowed_content_types,
            lifecycle,
            antivirus_scan: row.antivirus_scan,
            compression: row.compression,
            image_transforms: row.image_transforms,
            writable: row.state == "ready",
            tenant_quota_bytes: row.tenant_quota_bytes,
            tenant_quota_objects: row.tenant_quota_objects,
        }
    }
}

const SELECT: &str = r#"
    SELECT b.id, b.tenant_id, b.name, b.backend_prefix, b.public, b.quota_bytes,
           b.quota_objects, b.max_object_size, b.allowed_content_types, b.lifecycle,
           b.antivirus_scan, b.compression, b.image_transforms, b.state,
           CASE WHEN jsonb_typeof(t.quotas -> 'storageBytes') = 'number'
                THEN (t.quotas ->> 'storageBytes')::numeric::bigint END AS tenant_quota_bytes,
           CASE WHEN jsonb_typeof(t.quotas -> 'objects') = 'number'
                THEN (t.quotas ->> 'objects')::numeric::bigint END AS tenant_quota_objects
      FROM catalog.buckets b
      JOIN catalog.tenants t ON t.id = b.tenant_id"#;

/// Buckets by (tenant, name), in the two-level cache
/// (`v1:t:<tenant>:bucket:<name>`) for `bucket_ttl`, tagged `bucket:<name>`:
/// the operator's `bucket.configured`/`bucket.deleted` events drop them
/// (through the dispatcher), and the TTL bounds the wait before it runs.
#[derive(Clone)]
pub struct BucketResolver {
    catalog: PgPool,
    options: EntryOptions,
    cache: HybridCache,
}

/// S3 bucket naming, as the catalog's CHECK.
pub fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

impl BucketResolver {
    /// Without a cache until [`BucketResolver::with_cache`].
    pub fn new(catalog: PgPool, ttl: Duration) -> Self {
        Self {
            catalog,
            options: EntryOptions::new(ttl, ttl),
            cache: HybridCache::disabled(),
        }
    }

    pub fn with_cache(mut self, cache: HybridCache) -> Self {
        self.cache = cache;
        self
    }

    /// The bucket `name` of `tenant`, or `None` (unknown, or another
    /// tenant's: the same answer).
    pub async fn resolve(
        &self,
        tenant: Uuid,
        name: &str,
    ) -> Result<Option<Arc<BucketInfo>>, ApiError> {
        if !is_bucket_name(name) {
            return Ok(None);
        }
        let key = CacheKey::tenant(tenant, "bucket").id(name).build();
        let tags = [
            Tag::whole_tenant(tenant),
            Tag::tenant(tenant, "bucket", [name]),
        ];
        self.cache
            .get_or_create(&key, &tags, self.options, || async {
                let row: Option<Row> =
                    sqlx::query_as(&format!("{SELECT} WHERE b.tenant_id = $1 AND b.name = $2"))
                        .bind(tenant)
                        .bind(name)
                        .fetch_optional(&self.catalog)
                        .await?;
                Ok::<_, ApiError>(row.map(|r| Arc::new(BucketInfo::from(r))))
            })
            .await
    }

    /// Every bucket (for the workers), uncached.
    pub async fn all(&self) -> Result<Vec<BucketInfo>, ApiError> {
        let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} ORDER BY b.tenant_id, b.id"))
            .fetch_all(&self.catalog)
            .await?;
        Ok(rows.into_iter().map(BucketInfo::from).collect())
    }

    /// Tenant names that have buckets, with their ids (for the workers).
    pub async fn tenants_with_buckets(&self) -> Result<Vec<(Uuid, String)>, ApiError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT t.id, t.name FROM catalog.buckets b \
               JOIN catalog.tenants t ON t.id = b.tenant_id ORDER BY t.id",
        )
        .fetch_all(&self.catalog)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> BucketInfo {
        BucketInfo {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            name: "b".into(),
            backend_prefix: "t/1/b/2".into(),
            public: false,
            quota_bytes: None,
            quota_objects: None,
            max_object_size: None,
            allowed_content_types: vec![],
            lifecycle: vec![],
            antivirus_scan: false,
            compression: false,
            image_transforms: false,
            writable: true,
            tenant_quota_bytes: None,
            tenant_quota_objects: None,
        }
    }

    #[test]
    fn blobs_stay_under_the_prefix() {
        let b = bucket();
        let blob = b.new_object_blob();
        assert!(blob.as_str().starts_with("t/1/b/2/o/"));
        assert!(b.owns_blob(blob.as_str()));
        let part = b.new_part_blob(Uuid::nil(), 3);
        assert!(part.as_str().starts_with("t/1/b/2/u/"));
        assert!(b.owns_blob(part.as_str()));
        for foreign in [
            "t/1/b/22/o/x",
            "t/1/b/2",
            "t/1/b/2/",
            "t/1/b/2/../3/o/x",
            "t/9/b/2/o/x",
            "",
        ] {
            assert!(!b.owns_blob(foreign), "{foreign}");
        }
    }

    #[test]
    fn bucket_names() {
        assert!(is_bucket_name("photos"));
        assert!(is_bucket_name("a.b-c"));
        assert!(!is_bucket_name("ab"));
        assert!(!is_bucket_name("Photos"));
        assert!(!is_bucket_name("-ab"));
        assert!(!is_bucket_name(&"a".repeat(64)));
    }

    #[test]
    fn lifecycle_rules_parse() {
        let rules: Vec<LifecycleRule> = serde_json::from_value(serde_json::json!([
            {"prefix": "tmp/", "expireAfterDays": 1},
            {"abortIncompleteMultipartUploadAfterDays": 2}
        ]))
        .expect("rules");
        assert_eq!(rules[0].expire_after_days, Some(1));
        assert_eq!(rules[1].prefix, "");
    }
}
