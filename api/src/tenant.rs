//! The `Tenant` resource: one customer of the platform, realised as a database
//! on a PostgreSQL/Citus cluster plus its catalog entry, roles, config and invite.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, conditions_schema};

/// Annotation that asks for the tenant's database password to be rotated:
/// set it to a new value (e.g. a timestamp) and the operator replaces the
/// password in the role, the credentials Secret and (on Citus) the node
/// authentication rows together, then records the value in
/// `status.credentialsRotation`.
pub const ROTATE_CREDENTIALS_ANNOTATION: &str = "strata.dev/rotate-credentials";

/// Desired state of a tenant.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    namespaced,
    status = "TenantStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".status.databaseName"}"#,
    printcolumn = r#"{"name":"Schema","type":"integer","jsonPath":".status.schemaVersion","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The name becomes a label value and a catalog key: refuse at admission
    // what the operator could never provision.
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.cluster) == has(oldSelf.cluster) && (!has(self.cluster) || self.cluster == oldSelf.cluster)",
    "message": "spec.cluster is immutable: a tenant cannot move to another database cluster",
    "fieldPath": ".cluster",
}]))]
pub struct TenantSpec {
    /// Human-readable name shown in consoles.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// The first administrator, who receives the admin invitation.
    #[schemars(length(max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub admin_email: String,
    /// Name of the database cluster to provision on, as declared by the
    /// platform team (a `strata-cluster-<name>` Secret in the operator's
    /// namespace). Absent means the operator's default cluster. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub cluster: Option<String>,
    /// Limits enforced by the data plane.
    #[serde(default)]
    pub quotas: TenantQuotas,
    /// What happens to the tenant's database when the Tenant is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stops reconciliation and marks the tenant suspended.
    #[serde(default)]
    pub suspend: bool,
}

/// Tenant-wide limits. Absent means the platform default.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub storage_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub objects: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub collections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub requests_per_second: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the database; the catalog entry is marked detached.
    #[default]
    Retain,
    /// Drop the database, its roles and the catalog entry.
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TenantPhase {
    Pending,
    Provisioning,
    Ready,
    Failed,
    Suspended,
    Deleting,
}

/// Observed state of a tenant.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The tenant's identity in the catalog (the Tenant's UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// Number of the last applied tenant migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// Secret (same namespace) with the tenant's database credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The `strata.dev/rotate-credentials` value the last rotation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_rotation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<TenantEndpoints>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantEndpoints {
    /// `host:port/database` of the tenant database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Base URL of the data plane API for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}
