//! The platform catalog: tenants and where their data lives. The operator
//! writes it; the data plane reads it and never needs the Kubernetes API.

use sqlx::PgPool;
use uuid::Uuid;

/// Lifecycle of a tenant as the catalog records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantState {
    Provisioning,
    Ready,
    Suspended,
    Failed,
    Detached,
    Deleting,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Suspended => "suspended",
            Self::Failed => "failed",
            Self::Detached => "detached",
            Self::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Self::Provisioning,
            "ready" => Self::Ready,
            "suspended" => Self::Suspended,
            "failed" => Self::Failed,
            "detached" => Self::Detached,
            "deleting" => Self::Deleting,
            _ => return None,
        })
    }
}

/// A tenant's catalog entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub id: Uuid,
    pub name: String,
    pub namespace: String,
    pub display_name: String,
    pub cluster: String,
    pub database_name: String,
    pub owner_role: String,
    pub quotas: serde_json::Value,
    /// `Retain` or `Delete`: applied by the sweeper when the resource is gone.
    pub deletion_policy: String,
    /// `kubernetes` (a Tenant resource) or `offline` (`strata-operator apply`).
    pub origin: String,
}

/// A catalog entry as the sweeper sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantEntry {
    pub id: Uuid,
    pub name: String,
    pub namespace: String,
    pub cluster: String,
    pub state: String,
    pub deletion_policy: String,
    /// Seconds since the entry last changed.
    pub idle_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Another live tenant already uses this name.
    #[error("tenant name {name:?} is already used by tenant {existing}")]
    DuplicateName { name: String, existing: String },
    /// The derived database or role name is recorded for a different tenant.
    #[error("database {database:?} is recorded for another tenant")]
    DatabaseTaken { database: String },
    /// The name breaks the catalog's rules (a DNS label): never provisionable.
    #[error("tenant name {name:?} is not a DNS label (a-z, 0-9, '-', at most 63 characters)")]
    InvalidName { name: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Access to the `catalog` schema of the platform database.
#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Records (or refreshes) a tenant; idempotent. A tenant that was detached
    /// and comes back is re-attached. Refuses a name another live tenant holds.
    pub async fn claim(&self, t: &TenantRecord) -> Result<(), CatalogError> {
        let result = sqlx::query!(
            r#"INSERT INTO catalog.tenants
                   (id, name, namespace, display_name, cluster, database_name, owner_role, state, quotas,
                    deletion_policy, origin)
               VALUES ($1, $2, $3, $4, $5, $6, $7, 'provisioning', $8, $9, $10)
               ON CONFLICT (id) DO UPDATE
                   SET display_name = EXCLUDED.display_name,
                       quotas = EXCLUDED.quotas,
                       deletion_policy = EXCLUDED.deletion_policy,
                       state = CASE WHEN catalog.tenants.state = 'detached' THEN 'provisioning'
                                    ELSE catalog.tenants.state END,
                       detached_at = NULL,
                       updated_at = now()"#,
            t.id,
            t.name,
            t.namespace,
            t.display_name,
            t.cluster,
            t.database_name,
            t.owner_role,
            t.quotas,
            t.deletion_policy,
            t.origin,
        )
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("tenants_name_active") => {
                let existing = sqlx::query_scalar!(
                    "SELECT namespace || '/' || name FROM catalog.tenants WHERE name = $1 AND state <> 'detached'",
                    t.name
                )
                .fetch_optional(&self.pool)
                .await?
                .flatten()
                .unwrap_or_default();
                Err(CatalogError::DuplicateName {
                    name: t.name.clone(),
                    existing,
                })
            }
            Err(sqlx::Error::Database(e))
                if matches!(
                    e.constraint(),
                    Some("tenants_database_name_key" | "tenants_owner_role_key")
                ) =>
            {
                Err(CatalogError::DatabaseTaken {
                    database: t.database_name.clone(),
                })
            }
            // A name the catalog's CHECK refuses can never be provisioned.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
                Err(CatalogError::InvalidName {
                    name: t.name.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The password of the tenant's owner role: generated once from
    /// `candidate`, then always the stored one (so a crash between storing it
    /// and creating the role converges).
    pub async fn owner_password(&self, id: Uuid, candidate: &str) -> Result<String, sqlx::Error> {
        sqlx::query!(
            "INSERT INTO catalog.owner_credentials (tenant_id, password) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO NOTHING",
            id,
            candidate
        )
        .execute(&self.pool)
        .await?;
        sqlx::query_scalar!(
            "SELECT password FROM catalog.owner_credentials WHERE tenant_id = $1",
            id
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Records where a cluster is, for the data plane (idempotent).
    pub async fn record_cluster(
        &self,
        name: &str,
        host: &str,
        port: u16,
        dataplane_role: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"INSERT INTO catalog.clusters (name, host, port, dataplane_role)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (name) DO UPDATE
                   SET host = EXCLUDED.host, port = EXCLUDED.port,
                       dataplane_role = EXCLUDED.dataplane_role, updated_at = now()
                   WHERE (catalog.clusters.host, catalog.clusters.port, catalog.clusters.dataplane_role)
                         IS DISTINCT FROM (EXCLUDED.host, EXCLUDED.port, EXCLUDED.dataplane_role)"#,
            name,
            host,
            i32::from(port),
            dataplane_role
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Digest of the Citus node-authentication rows last written for a tenant.
    pub async fn node_auth_digest(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        Ok(sqlx::query_scalar!(
            "SELECT node_auth_digest FROM catalog.tenants WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    pub async fn set_node_auth_digest(
        &self,
        id: Uuid,
        digest: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE catalog.tenants SET node_auth_digest = $2 WHERE id = $1",
            id,
            digest
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The cluster a tenant was provisioned on, if it is in the catalog.
    pub async fn cluster_of(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar!("SELECT cluster FROM catalog.tenants WHERE id = $1", id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Entries managed by Tenant resources that are not detached: what the
    /// sweeper compares with the resources that exist.
    pub async fn kubernetes_entries(&self) -> Result<Vec<TenantEntry>, sqlx::Error> {
        sqlx::query_as!(
            TenantEntry,
            r#"SELECT id, name, namespace, cluster, state, deletion_policy,
                      extract(epoch FROM now() - updated_at)::float8 AS "idle_seconds!"
               FROM catalog.tenants
               WHERE origin = 'kubernetes' AND state <> 'detached'
               ORDER BY id"#
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn set_state(&self, id: Uuid, state: TenantState) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"UPDATE catalog.tenants
               SET state = $2, updated_at = now(),
                   detached_at = CASE WHEN $2 = 'detached' THEN now() ELSE NULL END
               WHERE id = $1"#,
            id,
            state.as_str()
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_schema_version(&self, id: Uuid, version: i64) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE catalog.tenants SET schema_version = $2, updated_at = now() WHERE id = $1",
            id,
            version
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the entry; idempotent.
    pub async fn delete(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query!("DELETE FROM catalog.tenants WHERE id = $1", id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The state of a tenant, if it is in the catalog.
    pub async fn state(&self, id: Uuid) -> Result<Option<TenantState>, sqlx::Error> {
        let state = sqlx::query_scalar!("SELECT state FROM catalog.tenants WHERE id = $1", id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(state.as_deref().and_then(TenantState::parse))
    }

    /// A live tenant by name: what the data plane resolves a request to.
    pub async fn find_by_name(&self, name: &str) -> Result<Option<TenantRecord>, sqlx::Error> {
        let row = sqlx::query!(
            r#"SELECT id, name, namespace, display_name, cluster, database_name, owner_role, quotas,
                      deletion_policy, origin
               FROM catalog.tenants WHERE name = $1 AND state <> 'detached'"#,
            name
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TenantRecord {
            id: r.id,
            name: r.name,
            namespace: r.namespace,
            display_name: r.display_name,
            cluster: r.cluster,
            database_name: r.database_name,
            owner_role: r.owner_role,
            quotas: r.quotas,
            deletion_policy: r.deletion_policy,
            origin: r.origin,
        }))
    }
}
