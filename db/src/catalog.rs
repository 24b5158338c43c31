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

/// Where a bucket's blobs live in the backend: `t/<tenant uid>/b/<bucket uid>`.
/// Derived from ids only, so no name a user chose can address another
/// tenant's or bucket's bytes.
pub fn backend_prefix(tenant: Uuid, bucket: Uuid) -> String {
    format!("t/{}/b/{}", tenant.hyphenated(), bucket.hyphenated())
}

/// A bucket's catalog entry: its rules, as the data plane reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketRecord {
    /// The Bucket resource's UID.
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `spec.name`: the name clients use.
    pub name: String,
    pub namespace: String,
    pub public: bool,
    pub quota_bytes: Option<i64>,
    pub quota_objects: Option<i64>,
    pub max_object_size: Option<i64>,
    pub allowed_content_types: Vec<String>,
    /// The CRD's lifecycle rules, as JSON (camelCase).
    pub lifecycle: serde_json::Value,
    pub compression: bool,
    pub image_transforms: bool,
    pub antivirus_scan: bool,
    /// `metadata.generation` the rules came from.
    pub generation: i64,
}

impl BucketRecord {
    pub fn backend_prefix(&self) -> String {
        backend_prefix(self.tenant_id, self.id)
    }
}

/// `catalog.buckets.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketState {
    /// Serves reads and writes.
    Ready,
    /// Being emptied by the operator: the data plane refuses writes.
    Deleting,
}

impl BucketState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(Self::Ready),
            "deleting" => Some(Self::Deleting),
            _ => None,
        }
    }
}

/// What [`Catalog::claim_bucket`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketClaim {
    /// The entry is this bucket's (new or refreshed).
    Claimed,
    /// Another bucket of the same tenant holds the name; nothing was written.
    NameTaken { holder: Uuid },
}

/// A tenant's catalog entry as a Bucket needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantBrief {
    pub cluster: String,
    pub database_name: String,
    pub owner_role: String,
    pub state: String,
    pub deletion_policy: String,
}

impl Catalog {
    /// Records (or refreshes) a bucket's rules; idempotent. Never takes a
    /// name from another bucket of the same tenant (the unique index decides
    /// who was first), and never revives an entry being deleted.
    pub async fn claim_bucket(&self, b: &BucketRecord) -> Result<BucketClaim, sqlx::Error> {
        let result = sqlx::query(
            r#"INSERT INTO catalog.buckets
                   (id, tenant_id, name, namespace, backend_prefix, public, quota_bytes,
                    quota_objects, max_object_size, allowed_content_types, lifecycle,
                    compression, image_transforms, antivirus_scan, state, generation)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'ready', $15)
               ON CONFLICT (id) DO UPDATE
                   SET public = EXCLUDED.public,
                       quota_bytes = EXCLUDED.quota_bytes,
                       quota_objects = EXCLUDED.quota_objects,
                       max_object_size = EXCLUDED.max_object_size,
                       allowed_content_types = EXCLUDED.allowed_content_types,
                       lifecycle = EXCLUDED.lifecycle,
                       compression = EXCLUDED.compression,
                       image_transforms = EXCLUDED.image_transforms,
                       antivirus_scan = EXCLUDED.antivirus_scan,
                       generation = EXCLUDED.generation,
                       updated_at = now()
                   -- A periodic refresh with nothing new writes nothing.
                   WHERE (catalog.buckets.public, catalog.buckets.quota_bytes,
                          catalog.buckets.quota_objects, catalog.buckets.max_object_size,
                          catalog.buckets.allowed_content_types, catalog.buckets.lifecycle,
                          catalog.buckets.compression, catalog.buckets.image_transforms,
                          catalog.buckets.antivirus_scan, catalog.buckets.generation)
                         IS DISTINCT FROM
                         (EXCLUDED.public, EXCLUDED.quota_bytes, EXCLUDED.quota_objects,
                          EXCLUDED.max_object_size, EXCLUDED.allowed_content_types,
                          EXCLUDED.lifecycle, EXCLUDED.compression, EXCLUDED.image_transforms,
                          EXCLUDED.antivirus_scan, EXCLUDED.generation)"#,
        )
        .bind(b.id)
        .bind(b.tenant_id)
        .bind(&b.name)
        .bind(&b.namespace)
        .bind(b.backend_prefix())
        .bind(b.public)
        .bind(b.quota_bytes)
        .bind(b.quota_objects)
        .bind(b.max_object_size)
        .bind(&b.allowed_content_types)
        .bind(&b.lifecycle)
        .bind(b.compression)
        .bind(b.image_transforms)
        .bind(b.antivirus_scan)
        .bind(b.generation)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(BucketClaim::Claimed),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("buckets_tenant_name") => {
                let holder: Option<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM catalog.buckets WHERE tenant_id = $1 AND name = $2",
                )
                .bind(b.tenant_id)
                .bind(&b.name)
                .fetch_optional(&self.pool)
                .await?;
                match holder {
                    Some(holder) => Ok(BucketClaim::NameTaken { holder }),
                    // The holder went away between the two statements: the
                    // next reconcile claims the name.
                    None => Err(sqlx::Error::Protocol(format!(
                        "bucket name {:?} was released concurrently; retry",
                        b.name
                    ))),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The state of a bucket's entry, if it has one.
    pub async fn bucket_state(&self, id: Uuid) -> Result<Option<BucketState>, sqlx::Error> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM catalog.buckets WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state.as_deref().and_then(BucketState::parse))
    }

    /// Sets a bucket's state; `false` when it has no entry.
    pub async fn set_bucket_state(
        &self,
        id: Uuid,
        state: BucketState,
    ) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query("UPDATE catalog.buckets SET state = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(state.as_str())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a bucket's entry; idempotent.
    pub async fn delete_bucket(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM catalog.buckets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A bucket's entry.
    pub async fn bucket(
        &self,
        id: Uuid,
    ) -> Result<Option<(BucketRecord, BucketState)>, sqlx::Error> {
        let row: Option<BucketRow> = sqlx::query_as(
            r#"SELECT id, tenant_id, name, namespace, public, quota_bytes, quota_objects,
                      max_object_size, allowed_content_types, lifecycle, compression,
                      image_transforms, antivirus_scan, generation, state
               FROM catalog.buckets WHERE id = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let state = BucketState::parse(&r.state).unwrap_or(BucketState::Deleting);
            (
                BucketRecord {
                    id: r.id,
                    tenant_id: r.tenant_id,
                    name: r.name,
                    namespace: r.namespace,
                    public: r.public,
                    quota_bytes: r.quota_bytes,
                    quota_objects: r.quota_objects,
                    max_object_size: r.max_object_size,
                    allowed_content_types: r.allowed_content_types,
                    lifecycle: r.lifecycle,
                    compression: r.compression,
                    image_transforms: r.image_transforms,
                    antivirus_scan: r.antivirus_scan,
                    generation: r.generation,
                },
                state,
            )
        }))
    }

    /// The ids of a tenant's bucket entries.
    pub async fn bucket_ids_of(&self, tenant: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM catalog.buckets WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
    }

    /// What a bucket needs to know of its tenant's entry.
    pub async fn tenant_brief(&self, id: Uuid) -> Result<Option<TenantBrief>, sqlx::Error> {
        let row: Option<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT cluster, database_name, owner_role, state, deletion_policy
             FROM catalog.tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(cluster, database_name, owner_role, state, deletion_policy)| TenantBrief {
                cluster,
                database_name,
                owner_role,
                state,
                deletion_policy,
            },
        ))
    }

    /// The stored password of a tenant's owner role, without creating one.
    pub async fn stored_owner_password(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT password FROM catalog.owner_credentials WHERE tenant_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    namespace: String,
    public: bool,
    quota_bytes: Option<i64>,
    quota_objects: Option<i64>,
    max_object_size: Option<i64>,
    allowed_content_types: Vec<String>,
    lifecycle: serde_json::Value,
    compression: bool,
    image_transforms: bool,
    antivirus_scan: bool,
    generation: i64,
    state: String,
}
