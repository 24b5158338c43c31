//! Authorisation: the tenant's permission matrix (`roles.permissions`, a
//! JSON object of resource → list of actions, seeded by the operator)
//! decides every request. Unknown resources and actions in the matrix are
//! ignored, so a newer operator can add entries before the data plane
//! knows them; anything not granted is denied.

use serde_json::Value;

use super::auth::Principal;
use super::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Collections,
    Documents,
    Vectors,
    Buckets,
    Objects,
    Keys,
    Members,
}

impl Resource {
    pub const ALL: [Resource; 7] = [
        Resource::Collections,
        Resource::Documents,
        Resource::Vectors,
        Resource::Buckets,
        Resource::Objects,
        Resource::Keys,
        Resource::Members,
    ];

    /// The key in the permission matrix (as in `operator/src/seed.rs`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Collections => "collections",
            Resource::Documents => "documents",
            Resource::Vectors => "vectors",
            Resource::Buckets => "buckets",
            Resource::Objects => "objects",
            Resource::Keys => "keys",
            Resource::Members => "members",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
    Manage,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Manage => "manage",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Action::Read),
            "write" => Some(Action::Write),
            "delete" => Some(Action::Delete),
            "manage" => Some(Action::Manage),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One role's grants, as a bit set per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Permissions([u8; Resource::ALL.len()]);

impl Permissions {
    /// Reads a `roles.permissions` value. Anything that is not an object of
    /// string arrays grants nothing (deny by default) rather than failing
    /// every request of the tenant.
    pub fn from_json(value: &Value) -> Self {
        let mut grants = [0u8; Resource::ALL.len()];
        let Some(matrix) = value.as_object() else {
            return Self(grants);
        };
        for resource in Resource::ALL {
            let actions = matrix
                .get(resource.as_str())
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(Action::parse);
            for action in actions {
                grants[resource.index()] |= action.bit();
            }
        }
        Self(grants)
    }

    pub fn allows(&self, resource: Resource, action: Action) -> bool {
        self.0[resource.index()] & action.bit() != 0
    }

    /// Whether every grant of `self` is also a grant of `other`: a role may
    /// only hand out (keys, member roles) what it holds itself.
    pub fn is_subset_of(&self, other: &Permissions) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// 403 unless the principal's role grants `action` on `resource`. Call it
/// after [`super::auth::ensure_tenant`]: a foreign tenant is a 404 first.
pub fn require(
    principal: &Principal,
    permissions: &Permissions,
    resource: Resource,
    action: Action,
) -> Result<(), ApiError> {
    if permissions.allows(resource, action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "role `{}` may not {} {}",
            principal.role,
            action.as_str(),
            resource.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::auth::CredentialId;

    #[test]
    fn matrix_from_the_seeded_shape() {
        let editor = Permissions::from_json(&json!({
            "collections": ["read"],
            "documents": ["read", "write", "delete"],
            "keys": [],
            "future-resource": ["read"],
            "objects": ["read", "fly"],
        }));
        assert!(editor.allows(Resource::Documents, Action::Write));
        assert!(editor.allows(Resource::Collections, Action::Read));
        assert!(!editor.allows(Resource::Collections, Action::Write));
        assert!(!editor.allows(Resource::Keys, Action::Read));
        assert!(
            !editor.allows(Resource::Vectors, Action::Read),
            "absent = none"
        );
        assert!(editor.allows(Resource::Objects, Action::Read));
        assert!(!editor.allows(Resource::Objects, Action::Manage));
    }

    #[test]
    fn malformed_matrices_grant_nothing() {
        for value in [
            json!(null),
            json!([]),
            json!("all"),
            json!({"documents": "write"}),
            json!({"documents": [1, true]}),
        ] {
            let permissions = Permissions::from_json(&value);
            for resource in Resource::ALL {
                for action in [Action::Read, Action::Write, Action::Delete, Action::Manage] {
                    assert!(!permissions.allows(resource, action), "{value}");
                }
            }
        }
    }

    #[test]
    fn require_is_a_403_naming_role_and_action() {
        let viewer = Principal {
            tenant: "acme".into(),
            subject: "v".into(),
            role: "viewer".into(),
            credential_id: CredentialId::Jwt { token_id: None },
        };
        let permissions = Permissions::from_json(&json!({"documents": ["read"]}));
        assert!(require(&viewer, &permissions, Resource::Documents, Action::Read).is_ok());
        let error = require(&viewer, &permissions, Resource::Documents, Action::Write)
            .expect_err("viewer cannot write");
        assert_eq!(error.kind().status.as_u16(), 403);
        assert_eq!(
            error.to_problem().detail.as_deref(),
            Some("role `viewer` may not write documents")
        );
    }
}
