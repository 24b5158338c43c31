//! Where a tenant's data lives on a cluster. This is the one seam to change
//! for another placement (e.g. schema-per-tenant with Citus schema-based
//! sharding for clusters with thousands of tenants): the provisioner only
//! talks to [`Placement`].
//!
//! Today's placement is a database per tenant, owned by a per-tenant role.
//! Names derive from the Tenant's UID, so no manifest can name another
//! tenant's database. An existing database or role is adopted only when it is
//! provably ours (owned by our role; role marked with our tenant id).

use async_trait::async_trait;
use sqlx::PgPool;
use strata_db::{Ident, ident::quote_literal};
use uuid::Uuid;

use crate::cluster::Cluster;

/// Marker that proves a role belongs to a tenant.
fn role_marker(tenant: Uuid) -> String {
    format!("strata tenant {tenant}")
}

/// Template with the extensions every tenant database starts with (plain
/// PostgreSQL). Bump the version when its recipe changes.
const TEMPLATE: &str = "strata_template_v1";
const TEMPLATE_MARKER: &str = "strata template v1: vector";
/// Advisory lock key serialising template preparation across operators.
const TEMPLATE_LOCK: i64 = 0x5354_5241_5441_0001;

/// The database objects of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNames {
    pub database: Ident,
    pub role: Ident,
}

impl TenantNames {
    pub fn for_tenant(id: Uuid) -> Self {
        let name = format!("strata_t_{}", id.simple());
        let ident = Ident::new(name).expect("uuid-derived names are valid identifiers");
        Self {
            database: ident.clone(),
            role: ident,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The name is taken by something that is not ours: never adopted.
    #[error("{kind} {name} exists but does not belong to this tenant")]
    Conflict { kind: &'static str, name: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What [`Placement::ensure_database`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existed,
}

#[async_trait]
pub trait Placement: Send + Sync {
    fn names(&self, tenant: Uuid) -> TenantNames;
    /// Creates the tenant's login role, or aligns its password.
    async fn ensure_role(&self, tenant: Uuid, password: &str) -> Result<Ensured, PlacementError>;
    /// Creates the tenant's database (owned by its role), closed to others.
    async fn ensure_database(&self, tenant: Uuid) -> Result<Ensured, PlacementError>;
    /// Installs the extensions (and, with Citus, registers nodes). Returns them.
    async fn ensure_extensions(&self, tenant: Uuid) -> Result<Vec<String>, PlacementError>;
    /// A pool that acts as the tenant's role inside its database.
    async fn tenant_pool(&self, tenant: Uuid) -> Result<PgPool, PlacementError>;
    /// Drops the tenant's database and role, if they are ours. Idempotent.
    async fn drop_tenant(&self, tenant: Uuid) -> Result<(), PlacementError>;
}

/// A database per tenant.
pub struct DatabasePerTenant<'a> {
    pub cluster: &'a Cluster,
}

impl DatabasePerTenant<'_> {
    /// Whether the cluster runs Citus: asked once per cluster, not per step.
    async fn is_citus(&self) -> Result<bool, sqlx::Error> {
        self.cluster
            .citus
            .get_or_try_init(|| async {
                sqlx::query_scalar!(
                    r#"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS "citus!""#
                )
                .fetch_one(self.cluster.admin())
                .await
            })
            .await
            .copied()
    }

    async fn database_owner(&self, db: &Ident) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT pg_get_userbyid(datdba) AS "owner!" FROM pg_database WHERE datname = $1"#,
            db.as_str()
        )
        .fetch_optional(self.cluster.admin())
        .await
    }

    async fn role_marker(&self, role: &Ident) -> Result<Option<Option<String>>, sqlx::Error> {
        sqlx::query_scalar!(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            role.as_str()
        )
        .fetch_optional(self.cluster.admin())
        .await
    }

    /// Prepares the template database once per cluster (plain PostgreSQL).
    async fn ensure_template(&self) -> Result<(), sqlx::Error> {
        let mut ready = self.cluster.template_lock.lock().await;
        if *ready {
            return Ok(());
        }
        let mut conn = self.cluster.admin().acquire().await?;
        sqlx::query!("SELECT pg_advisory_lock($1)", TEMPLATE_LOCK)
            .execute(&mut *conn)
            .await?;
        let result = async {
            let marker: Option<Option<String>> = sqlx::query_scalar!(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                TEMPLATE
            )
            .fetch_optional(&mut *conn)
            .await?;
            if marker.clone().flatten().as_deref() == Some(TEMPLATE_MARKER) {
                return Ok(());
            }
            // A template left half-made by a crash is rebuilt from scratch.
            if marker.is_some() {
                sqlx::query(&format!("ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE false"))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(&format!("DROP DATABASE {TEMPLATE} WITH (FORCE)"))
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query(&format!("CREATE DATABASE {TEMPLATE} TEMPLATE template1"))
                .execute(&mut *conn)
                .await?;
            let tpl = Ident::new(TEMPLATE).expect("constant identifier");
            let pool = self.cluster.admin_pool_on(&tpl).await?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                .execute(&pool)
                .await?;
            pool.close().await;
            // No connections: cloning fails while anyone is connected to it.
            sqlx::query(&format!(
                "ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            ))
            .execute(&mut *conn)
            .await?;
            sqlx::query(&format!(
                "COMMENT ON DATABASE {TEMPLATE} IS {}",
                quote_literal(TEMPLATE_MARKER)
            ))
            .execute(&mut *conn)
            .await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        let unlock = sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", TEMPLATE_LOCK)
            .fetch_one(&mut *conn)
            .await;
        result?;
        unlock?;
        *ready = true;
        Ok(())
    }

    /// Citus: the "template" is a recipe applied per node, because database
    /// propagation only clones `template1` and the maintenance daemon keeps
    /// connections open to databases that have the extension.
    async fn citus_recipe(
        &self,
        names: &TenantNames,
        tenant_admin: &PgPool,
    ) -> Result<(), sqlx::Error> {
        let workers: Vec<(String, i32)> = sqlx::query_as(
            "SELECT nodename::text, nodeport FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0",
        )
        .fetch_all(self.cluster.admin())
        .await?;
        // Extensions on every worker's copy of the database.
        for (host, port) in &workers {
            let options = self
                .cluster
                .options_for(names.database.as_str())
                .host(host)
                .port(*port as u16);
            let worker = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            // Once the worker holds Citus metadata it refuses DDL, even
            // `IF NOT EXISTS`: create only what is missing.
            let present: Vec<String> = sqlx::query_scalar("SELECT extname::text FROM pg_extension")
                .fetch_all(&worker)
                .await?;
            for extension in ["citus", "vector"] {
                if !present.iter().any(|e| e == extension) {
                    sqlx::query(&format!("CREATE EXTENSION {extension}"))
                        .execute(&worker)
                        .await?;
                }
            }
            worker.close().await;
        }
        // Coordinator host and workers registered in the tenant database.
        let (host, port) = self.cluster.host_port();
        let coordinator_known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid = 0)")
                .fetch_one(tenant_admin)
                .await?;
        if !coordinator_known {
            sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
                .bind(&host)
                .bind(i32::from(port))
                .execute(tenant_admin)
                .await?;
        }
        for (host, port) in &workers {
            sqlx::query(
                "SELECT citus_add_node($1, $2) WHERE NOT EXISTS \
                 (SELECT 1 FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2)",
            )
            .bind(host)
            .bind(port)
            .execute(tenant_admin)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Placement for DatabasePerTenant<'_> {
    fn names(&self, tenant: Uuid) -> TenantNames {
        TenantNames::for_tenant(tenant)
    }

    async fn ensure_role(&self, tenant: Uuid, password: &str) -> Result<Ensured, PlacementError> {
        let names = self.names(tenant);
        let role = &names.role;
        let verifier = crate::scram::verifier(password);
        match self.role_marker(role).await? {
            Some(marker) if marker.as_deref() == Some(role_marker(tenant).as_str()) => {
                // Ours: make its password match the Secret (the source of truth),
                // without sending the password itself.
                let stored: Option<String> =
                    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                        .bind(role.as_str())
                        .fetch_one(self.cluster.admin())
                        .await?;
                if !stored
                    .as_deref()
                    .is_some_and(|s| crate::scram::matches(password, s))
                {
                    sqlx::query(&format!(
                        "ALTER ROLE {} PASSWORD {}",
                        role.quoted(),
                        quote_literal(&verifier)
                    ))
                    .execute(self.cluster.admin())
                    .await?;
                }
                Ok(Ensured::Existed)
            }
            Some(_) => Err(PlacementError::Conflict {
                kind: "role",
                name: role.to_string(),
            }),
            None => {
                // Role and marker in one transaction: a crash leaves both or neither.
                let mut tx = self.cluster.admin().begin().await?;
                sqlx::query(&format!(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
                    role.quoted(),
                    quote_literal(&verifier)
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!(
                    "COMMENT ON ROLE {} IS {}",
                    role.quoted(),
                    quote_literal(&role_marker(tenant))
                ))
                .execute(&mut *tx)
                .await?;
                match tx.commit().await {
                    Ok(()) => Ok(Ensured::Created),
                    // A concurrent operator won the race: check it is ours.
                    Err(e) if is_duplicate(&e) => {
                        Box::pin(self.ensure_role(tenant, password)).await
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn ensure_database(&self, tenant: Uuid) -> Result<Ensured, PlacementError> {
        let names = self.names(tenant);
        let (db, role) = (&names.database, &names.role);
        let ensured = match self.database_owner(db).await? {
            Some(owner) if owner == role.as_str() => Ensured::Existed,
            Some(_) => {
                return Err(PlacementError::Conflict {
                    kind: "database",
                    name: db.to_string(),
                });
            }
            None => {
                let citus = self.is_citus().await?;
                let mut conn = self.cluster.admin().acquire().await?;
                let template = if citus {
                    sqlx::query("SET citus.enable_create_database_propagation TO on")
                        .execute(&mut *conn)
                        .await?;
                    "template1"
                } else {
                    drop(conn);
                    self.ensure_template().await?;
                    conn = self.cluster.admin().acquire().await?;
                    TEMPLATE
                };
                let created = sqlx::query(&format!(
                    "CREATE DATABASE {} OWNER {} TEMPLATE {template}",
                    db.quoted(),
                    role.quoted()
                ))
                .execute(&mut *conn)
                .await;
                if citus {
                    sqlx::query("RESET citus.enable_create_database_propagation")
                        .execute(&mut *conn)
                        .await?;
                }
                match created {
                    Ok(_) => Ensured::Created,
                    Err(e) if is_duplicate(&e) => {
                        return Box::pin(self.ensure_database(tenant)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // Tenants are isolated: only the owner (and admins) may connect.
        sqlx::query(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
            db.quoted()
        ))
        .execute(self.cluster.admin())
        .await?;
        Ok(ensured)
    }

    async fn ensure_extensions(&self, tenant: Uuid) -> Result<Vec<String>, PlacementError> {
        let names = self.names(tenant);
        let admin = self.cluster.admin_pool_on(&names.database).await?;
        let result = async {
            let mut extensions = vec!["vector".to_string()];
            if self.is_citus().await? {
                sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
                    .execute(&admin)
                    .await?;
                self.citus_recipe(&names, &admin).await?;
                extensions.push("citus".into());
            }
            sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                .execute(&admin)
                .await?;
            // The owner role may create objects in `public` (PG 15+ revoked it).
            sqlx::query(&format!(
                "GRANT ALL ON SCHEMA public TO {}",
                names.role.quoted()
            ))
            .execute(&admin)
            .await?;
            Ok::<_, sqlx::Error>(extensions)
        }
        .await;
        admin.close().await;
        Ok(result?)
    }

    async fn tenant_pool(&self, tenant: Uuid) -> Result<PgPool, PlacementError> {
        let names = self.names(tenant);
        Ok(self.cluster.pool_as(&names.database, &names.role).await?)
    }

    async fn drop_tenant(&self, tenant: Uuid) -> Result<(), PlacementError> {
        let names = self.names(tenant);
        match self.database_owner(&names.database).await? {
            Some(owner) if owner == names.role.as_str() => {
                let mut conn = self.cluster.admin().acquire().await?;
                if self.is_citus().await? {
                    sqlx::query("SET citus.enable_create_database_propagation TO on")
                        .execute(&mut *conn)
                        .await?;
                }
                // FORCE: data-plane pools may still hold connections.
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    names.database.quoted()
                ))
                .execute(&mut *conn)
                .await?;
            }
            Some(_) => {
                return Err(PlacementError::Conflict {
                    kind: "database",
                    name: names.database.to_string(),
                });
            }
            None => {}
        }
        match self.role_marker(&names.role).await? {
            Some(marker) if marker.as_deref() == Some(role_marker(tenant).as_str()) => {
                sqlx::query(&format!("DROP ROLE IF EXISTS {}", names.role.quoted()))
                    .execute(self.cluster.admin())
                    .await?;
            }
            Some(_) => {
                return Err(PlacementError::Conflict {
                    kind: "role",
                    name: names.role.to_string(),
                });
            }
            None => {}
        }
        Ok(())
    }
}

/// `duplicate_object` / `duplicate_database` / unique violation on the catalogs.
fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42710" | "42P04" | "23505")))
}
