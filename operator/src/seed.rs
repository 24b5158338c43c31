//! Seed data of a new tenant: the built-in roles with their permission matrix
//! and the tenant config defaults.
//!
//! Each seed set is applied once per tenant, in one transaction that also
//! records it in `seed_history`: re-seeding never duplicates rows and never
//! restores what the tenant has since changed or removed. A later release adds
//! a new seed set (e.g. `config/v2`) for new keys.

use serde_json::{Value, json};
use sqlx::PgPool;

/// Resources a permission applies to.
pub const RESOURCES: [&str; 7] = [
    "collections",
    "documents",
    "vectors",
    "buckets",
    "objects",
    "keys",
    "members",
];

/// The built-in roles: name, description and actions per resource.
pub fn builtin_roles() -> Vec<(&'static str, &'static str, Value)> {
    let all = |actions: &[&str]| -> Value {
        Value::Object(
            RESOURCES
                .iter()
                .map(|r| (r.to_string(), json!(actions)))
                .collect(),
        )
    };
    let full = ["read", "write", "delete", "manage"];
    let mut admin = all(&full);
    // Admins manage everything but cannot grant or remove ownership.
    admin["members"] = json!(["read", "write", "delete"]);
    let editor = json!({
        "collections": ["read"],
        "documents": ["read", "write", "delete"],
        "vectors": ["read", "write", "delete"],
        "buckets": ["read"],
        "objects": ["read", "write", "delete"],
        "keys": [],
        "members": ["read"],
    });
    let viewer = json!({
        "collections": ["read"],
        "documents": ["read"],
        "vectors": ["read"],
        "buckets": ["read"],
        "objects": ["read"],
        "keys": [],
        "members": ["read"],
    });
    vec![
        (
            "owner",
            "Full control, including ownership and deletion of the tenant",
            all(&full),
        ),
        (
            "admin",
            "Manages data, keys and members, but not ownership",
            admin,
        ),
        (
            "editor",
            "Reads and writes data in existing collections and buckets",
            editor,
        ),
        ("viewer", "Reads data", viewer),
    ]
}

/// Tenant config defaults: limits and feature switches.
pub fn config_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("limits.max_body_bytes", json!(10 * 1024 * 1024)),
        ("limits.max_document_bytes", json!(1024 * 1024)),
        ("limits.default_page_size", json!(50)),
        ("limits.max_page_size", json!(1000)),
        ("limits.max_image_pixels", json!(40_000_000)),
        ("limits.max_vector_dimension", json!(4096)),
        ("features.vectors", json!(true)),
        ("features.image_transforms", json!(true)),
        ("features.compression", json!(true)),
        ("features.antivirus", json!(false)),
        ("invitations.ttl_hours", json!(168)),
    ]
}

/// Applies the seed sets that this tenant has not had yet. Returns the names
/// of the sets applied now (empty when everything was already seeded).
pub async fn apply(pool: &PgPool) -> Result<Vec<&'static str>, sqlx::Error> {
    let mut applied = Vec::new();
    if apply_set(pool, "roles/v1", seed_roles).await? {
        applied.push("roles/v1");
    }
    if apply_set(pool, "config/v1", seed_config).await? {
        applied.push("config/v1");
    }
    Ok(applied)
}

type SeedFn = for<'c> fn(
    &'c mut sqlx::PgConnection,
) -> futures::future::BoxFuture<'c, Result<(), sqlx::Error>>;

async fn apply_set(pool: &PgPool, name: &str, seed: SeedFn) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Recording first takes the row lock: a concurrent seeder waits here, then
    // sees the row and does nothing.
    let fresh = sqlx::query!(
        "INSERT INTO seed_history (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        name
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if fresh {
        seed(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(fresh)
}

fn seed_roles(
    conn: &mut sqlx::PgConnection,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for (name, description, permissions) in builtin_roles() {
            sqlx::query!(
                r#"INSERT INTO roles (name, description, permissions, builtin)
                   VALUES ($1, $2, $3, true) ON CONFLICT (name) DO NOTHING"#,
                name,
                description,
                permissions
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    })
}

fn seed_config(
    conn: &mut sqlx::PgConnection,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for (key, value) in config_defaults() {
            sqlx::query!(
                "INSERT INTO config (key, value, source) VALUES ($1, $2, 'default') ON CONFLICT (key) DO NOTHING",
                key,
                value
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_matrix_is_complete_and_ordered_by_privilege() {
        let roles = builtin_roles();
        let count = |perms: &Value| -> usize {
            RESOURCES
                .iter()
                .map(|r| perms[*r].as_array().map_or(usize::MAX, Vec::len))
                .sum()
        };
        for (name, _, perms) in &roles {
            for r in RESOURCES {
                assert!(perms[r].is_array(), "role {name} lacks resource {r}");
            }
        }
        let counts: Vec<usize> = roles.iter().map(|(_, _, p)| count(p)).collect();
        assert!(
            counts.windows(2).all(|w| w[0] > w[1]),
            "privilege must decrease: {counts:?}"
        );
        assert!(
            !roles[1].2["members"]
                .as_array()
                .expect("array")
                .contains(&json!("manage"))
        );
        assert!(
            roles[3]
                .2
                .as_object()
                .expect("object")
                .values()
                .all(|a| !a.as_array().expect("array").contains(&json!("write")))
        );
    }
}
