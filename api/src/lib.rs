//! Strata's Kubernetes API: the `Tenant` and `Bucket` custom resources of group
//! `strata.dev`, version `v1alpha1`.
//!
//! The Rust types are the source of truth. `crds/*.yaml` is generated from them
//! (`make crds`), and a test fails when the committed YAML drifts from the types.
//! Validation that the API server can enforce lives in the schema (ranges,
//! patterns) and in CEL rules (immutability), so bad input is refused at
//! admission with a message naming the field, before any controller sees it.

pub mod bucket;
pub mod condition;
pub mod tenant;

pub use bucket::{Bucket, BucketSpec, BucketStatus};
pub use condition::{Condition, ConditionStatus};
pub use tenant::{
    DeletionPolicy, ROTATE_CREDENTIALS_ANNOTATION, Tenant, TenantPhase, TenantSpec, TenantStatus,
};

use kube::CustomResourceExt;

/// API group of every Strata resource.
pub const GROUP: &str = "strata.dev";

/// The CRDs as one multi-document YAML stream, in a stable order.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in [Tenant::crd(), Bucket::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serialises to YAML"));
    }
    out
}

/// Path of the committed CRD file for a resource, relative to the repository root.
pub fn crd_file(plural: &str) -> String {
    format!("crds/{plural}.{GROUP}.yaml")
}

/// Each CRD with the file it is committed to.
pub fn crd_files() -> Vec<(String, String)> {
    [Tenant::crd(), Bucket::crd()]
        .into_iter()
        .map(|crd| {
            let file = crd_file(&crd.spec.names.plural);
            let yaml = serde_yaml::to_string(&crd).expect("CRD serialises to YAML");
            (file, yaml)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed YAML in `crds/` must be exactly what the Rust types generate:
    /// run `make crds` after changing a type.
    #[test]
    fn committed_crds_match_the_rust_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, yaml) in crd_files() {
            let committed = std::fs::read_to_string(root.join(&file))
                .unwrap_or_else(|e| panic!("{file} is missing ({e}); run `make crds`"));
            assert!(
                committed == yaml,
                "{file} is stale: the Rust types changed; run `make crds` and commit the result"
            );
        }
    }
}
