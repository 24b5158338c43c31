//! Shapes of the storage API's responses that the handlers build as JSON
//! values (`ObjectRow::view`, the upload views), described for the OpenAPI
//! document; `dataplane/tests/openapi_conformance.rs` checks real answers
//! against them.

use serde::Serialize;
use utoipa::ToSchema;

/// An object's metadata.
#[derive(Serialize, ToSchema)]
#[schema(as = Object)]
pub struct ObjectView {
    #[schema(example = "photos/cat.jpg")]
    pub key: String,
    pub size: i64,
    /// Strong; also the `ETag` header (content hash and version).
    pub etag: String,
    #[schema(example = "image/jpeg")]
    pub content_type: String,
    /// Hex SHA-256 of the bytes; null for objects made of multipart parts.
    pub sha256: Option<String>,
    #[schema(format = "uuid")]
    pub version_id: String,
    /// `x-strata-meta-*` without the prefix.
    pub metadata: std::collections::BTreeMap<String, String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub modified_at: String,
}

/// A bucket's rules and usage.
#[derive(Serialize, ToSchema)]
#[schema(as = Bucket)]
pub struct BucketView {
    pub name: String,
    pub public: bool,
    /// False while the bucket is being deleted (writes get 409).
    pub writable: bool,
    pub quota_bytes: Option<i64>,
    pub quota_objects: Option<i64>,
    pub max_object_size: Option<i64>,
    pub allowed_content_types: Vec<String>,
    pub antivirus_scan: bool,
    pub usage: UsageView,
}

/// Committed usage (parts of uploads in progress included in bytes).
#[derive(Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageView {
    pub bytes: i64,
    pub objects: i64,
}

/// The new signing key.
#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    pub key_id: String,
}

/// A multipart upload.
#[derive(Serialize, ToSchema)]
#[schema(as = Upload)]
pub struct UploadView {
    #[schema(format = "uuid")]
    pub upload_id: String,
    pub key: String,
    pub content_type: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Microseconds since the Unix epoch.
    pub initiated_at_us: i64,
    /// Its parts, in order (not in lists of uploads).
    pub parts: Option<Vec<PartView>>,
}

/// An uploaded part.
#[derive(Serialize, ToSchema)]
#[schema(as = Part)]
pub struct PartView {
    pub part_number: i32,
    pub size: i64,
    /// Quote it in the completion list.
    pub etag: String,
}

/// A page of uploads.
#[derive(Serialize, ToSchema)]
pub struct UploadPage {
    pub items: Vec<UploadView>,
    pub next_cursor: Option<String>,
}
