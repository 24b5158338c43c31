//! The `Bucket` resource: storage for one tenant in the S3-compatible backend,
//! with its quota, size limit, allowed content types and lifecycle rules.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, conditions_schema};

/// Desired state of a bucket.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Bucket",
    plural = "buckets",
    shortname = "bk",
    namespaced,
    status = "BucketStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenantRef"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.usage.bytes"}"#,
    printcolumn = r#"{"name":"Quota","type":"integer","jsonPath":".spec.quota.bytes"}"#,
    printcolumn = r#"{"name":"Objects","type":"integer","jsonPath":".status.usage.objects","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.name == oldSelf.name", "message": "spec.name is immutable", "fieldPath": ".name"},
    {"rule": "self.tenantRef == oldSelf.tenantRef", "message": "spec.tenantRef is immutable", "fieldPath": ".tenantRef"},
]))]
pub struct BucketSpec {
    /// Name of the owning Tenant, in the same namespace. Immutable.
    #[schemars(length(min = 1, max = 253))]
    pub tenant_ref: String,
    /// The bucket's name as clients see it (S3 naming rules). Immutable.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub name: String,
    /// Objects may be read without credentials.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub quota: BucketQuota,
    /// Largest accepted object, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_object_size: Option<i64>,
    /// Accepted content types; `type/*` wildcards allowed. Empty accepts all.
    #[serde(default)]
    #[schemars(inner(regex(
        pattern = r"^(\*/\*|[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*))$"
    )))]
    pub allowed_content_types: Vec<String>,
    #[serde(default)]
    pub lifecycle: Vec<LifecycleRule>,
    /// Store compressible objects Brotli-compressed.
    #[serde(default)]
    pub compression: bool,
    /// Serve on-the-fly image transforms.
    #[serde(default)]
    pub image_transforms: bool,
    /// Scan uploads with the antivirus hook before accepting them.
    #[serde(default)]
    pub antivirus_scan: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub objects: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRule {
    /// Key prefix the rule applies to; empty means every object.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expire_after_days: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub abort_incomplete_multipart_upload_after_days: Option<i32>,
}

/// Observed state of a bucket.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Where the bucket's bytes live: the backend's location and the
    /// bucket's prefix in it (`s3://<backend bucket>/t/<tenant uid>/b/<bucket uid>`
    /// or `file:///<root>/t/<tenant uid>/b/<bucket uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_bucket: Option<String>,
    /// The bucket's identity in the catalog (the Bucket's UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<BucketUsage>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketUsage {
    pub bytes: i64,
    pub objects: i64,
}
