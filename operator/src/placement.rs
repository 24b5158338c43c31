//! Where a tenant's data lives on a cluster, and who may do what there. This
//! is the one seam to change for another placement (e.g. schema-per-tenant
//! with Citus schema-based sharding for clusters with thousands of tenants):
//! the provisioner only talks to [`Placement`].
//!
//! Today's placement is a database per tenant. Each tenant has two roles:
//! - the **owner** (`strata_o_<uid>`) owns the database and every object in
//!   it; only the operator logs in as it (its password lives in the catalog);
//! - the **login** role (`strata_t_<uid>`, the credentials Secret) may read
//!   and write the tenant's data but owns nothing and may create nothing: no
//!   `CREATE` on the database or a schema, no `TEMPORARY`. So a tenant cannot
//!   author code (functions, triggers, policies, views) that a more privileged
//!   session could run: there is none to run.
//!
//! The data plane's role gets `CONNECT` and data rights on each tenant
//! database, granted by the owner. Names derive from the Tenant's UID, so no
//! manifest can name another tenant's database. An existing database or role
//! is adopted only when it is provably ours (database owned by our owner role;
//! roles marked with our tenant id).

use async_trait::async_trait;
use sqlx::PgPool;
use strata_db::{Ident, ident::quote_literal};
use uuid::Uuid;

use crate::cluster::Cluster;

/// Marker that proves a login role belongs to a tenant.
fn role_marker(tenant: Uuid) -> String {
    format!("strata tenant {tenant}")
}

/// Marker that proves an owner role belongs to a tenant.
fn owner_marker(tenant: Uuid) -> String {
    format!("strata tenant owner {tenant}")
}

/// Marker of a data-plane role the operator created.
const DATAPLANE_MARKER: &str = "strata data plane";

/// Template with the extensions every tenant database starts with (plain
/// PostgreSQL). Bump the version when its recipe changes.
const TEMPLATE: &str = "strata_template_v1";
const TEMPLATE_MARKER: &str = "strata template v1: vector";
/// Advisory lock key serialising template preparation across operators.
const TEMPLATE_LOCK: i64 = 0x5354_5241_5441_0001;

/// Tables the tenant's login role may read but never change: the operator's
/// bookkeeping, the audit trail and the platform's queues.
pub const TENANT_READ_ONLY: &[&str] = &[
    "_sqlx_migrations",
    "seed_history",
    "audit_events",
    "invitations",
    "outbox",
    "idempotency_keys",
    // Storage bookkeeping: where an object's bytes are, usage counters,
    // reservations and signing keys. Written only through the data plane,
    // which checks quotas and keeps every blob under the bucket's prefix;
    // a tenant rewriting them by hand could escape its quota.
    "objects",
    "uploads",
    "upload_parts",
    "reservations",
    "blob_intents",
    "bucket_usage",
    "signing_keys",
    "variants",
    // Webhooks: endpoints are validated (scheme, SSRF policy) by the API;
    // deliveries and attempts are the dispatcher's record.
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
];
/// Tables the data plane may read but never change.
pub const DATAPLANE_READ_ONLY: &[&str] = &["_sqlx_migrations", "seed_history"];
/// Tables the data plane may only append to.
pub const DATAPLANE_APPEND_ONLY: &[&str] = &["audit_events"];

/// The database objects of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNames {
    pub database: Ident,
    /// The tenant's login role (credentials Secret).
    pub role: Ident,
    /// The role that owns the database and its objects (operator only).
    pub owner: Ident,
}

impl TenantNames {
    pub fn for_tenant(id: Uuid) -> Self {
        let login = format!("strata_t_{}", id.simple());
        let owner = format!("strata_o_{}", id.simple());
        let ident = Ident::new(login).expect("uuid-derived names are valid identifiers");
        Self {
            database: ident.clone(),
            role: ident,
            owner: Ident::new(owner).expect("uuid-derived names are valid identifiers"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The name is taken by something that is not ours: never adopted.
    #[error("{kind} {name} exists but does not belong to this tenant")]
    Conflict { kind: &'static str, name: String },
    /// The role still owns objects or holds privileges somewhere we could not
    /// clean up: a human must look.
    #[error("role {role} cannot be dropped: {detail}")]
    RoleInUse { role: String, detail: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What an `ensure_*` step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existed,
}

/// Passwords of a tenant's two roles. Deliberately not `Debug`.
pub struct RolePasswords<'a> {
    pub login: &'a str,
    pub owner: &'a str,
}

/// What Citus nodes need to authenticate the tenant's sessions to each other.
pub struct NodeAuth<'a> {
    pub passwords: &'a RolePasswords<'a>,
    /// Digest of the rows written last time (from the catalog).
    pub recorded: Option<&'a str>,
}

/// What [`Placement::ensure_extensions`] established.
#[derive(Debug)]
pub struct Extensions {
    pub names: Vec<String>,
    /// Digest of the node-authentication rows now in place (Citus only), to
    /// record in the catalog.
    pub node_auth: Option<String>,
}

#[async_trait]
pub trait Placement: Send + Sync {
    fn names(&self, tenant: Uuid) -> TenantNames;
    /// Creates the tenant's owner and login roles (and the cluster's data-plane
    /// role if missing), or aligns their passwords.
    async fn ensure_roles(
        &self,
        tenant: Uuid,
        passwords: &RolePasswords<'_>,
    ) -> Result<Ensured, PlacementError>;
    /// Creates the tenant's database (owned by its owner role), closed to others.
    async fn ensure_database(&self, tenant: Uuid) -> Result<Ensured, PlacementError>;
    /// Installs the extensions (and, with Citus, registers nodes and writes
    /// node authentication) where missing; `owner` is a session of the owner
    /// role used to look first, so the admin enters the database only when
    /// there is work only it can do.
    async fn ensure_extensions(
        &self,
        tenant: Uuid,
        owner: &PgPool,
        auth: &NodeAuth<'_>,
    ) -> Result<Extensions, PlacementError>;
    /// A pool logged in as the tenant's owner role inside its database.
    async fn owner_pool(&self, tenant: Uuid, password: &str) -> Result<PgPool, PlacementError>;
    /// Grants the login role and the data plane their rights (as the owner).
    async fn ensure_access(&self, tenant: Uuid, owner: &PgPool) -> Result<(), PlacementError>;
    /// Drops the tenant's database and roles, if they are ours, including what
    /// the roles own in any other database. Idempotent.
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

    /// Primary workers registered on the cluster (maintenance database).
    async fn citus_workers(&self) -> Result<Vec<(String, i32)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT nodename::text, nodeport FROM pg_dist_node \
             WHERE noderole = 'primary' AND groupid <> 0 ORDER BY 1, 2",
        )
        .fetch_all(self.cluster.admin())
        .await
    }

    /// The roles whose sessions Citus nodes open to each other in a tenant
    /// database, with their passwords: the admin (node registration, DDL
    /// propagation), the owner (migrations), the login role and the data
    /// plane (distributed queries). Roles without a known password are left
    /// to the cluster's own setup (password file or certificates).
    fn node_credentials(
        &self,
        names: &TenantNames,
        passwords: &RolePasswords<'_>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(pw) = &self.cluster.admin_password {
            out.push((self.cluster.admin_user().to_string(), pw.clone()));
        }
        out.push((names.owner.to_string(), passwords.owner.to_string()));
        out.push((names.role.to_string(), passwords.login.to_string()));
        if let Some(pw) = &self.cluster.dataplane_password {
            out.push((self.cluster.dataplane_role.to_string(), pw.clone()));
        }
        out
    }

    /// Citus: the "template" is a recipe applied per node, because database
    /// propagation only clones `template1` and the maintenance daemon keeps
    /// connections open to databases that have the extension. Node
    /// authentication (`pg_dist_authinfo`) is per database and not synced
    /// between nodes, so it is written on every node's copy, first: node
    /// registration itself connects to the workers as the admin.
    async fn citus_recipe(
        &self,
        names: &TenantNames,
        tenant_admin: &PgPool,
        credentials: &[(String, String)],
    ) -> Result<(), sqlx::Error> {
        let workers = self.citus_workers().await?;
        // Extensions and node authentication on every worker's copy.
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
            // In `public` like on the coordinator (the admin search path
            // would put it in pg_catalog); citus always lives in pg_catalog.
            for (extension, create) in [
                ("citus", "CREATE EXTENSION citus"),
                ("vector", "CREATE EXTENSION vector SCHEMA public"),
            ] {
                if !present.iter().any(|e| e == extension) {
                    sqlx::query(create).execute(&worker).await?;
                }
            }
            write_node_auth(&worker, credentials).await?;
            worker.close().await;
        }
        write_node_auth(tenant_admin, credentials).await?;
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

/// Replaces the node-authentication rows (for all nodes, `nodeid = 0`) of
/// these roles in one transaction. Other roles' rows are left alone.
async fn write_node_auth(db: &PgPool, credentials: &[(String, String)]) -> Result<(), sqlx::Error> {
    let roles: Vec<&str> = credentials.iter().map(|(r, _)| r.as_str()).collect();
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM pg_dist_authinfo WHERE nodeid = 0 AND rolename = ANY($1)")
        .bind(&roles)
        .execute(&mut *tx)
        .await?;
    for (role, password) in credentials {
        sqlx::query("INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, $1, $2)")
            .bind(role)
            .bind(format!("password={}", conninfo_value(password)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// A libpq connection-string value: single-quoted, with `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Digest of what the node-authentication rows of a tenant hold (roles,
/// passwords, workers), salted with the tenant id; stored in the catalog so
/// the rows are rewritten only when something changed.
fn node_auth_digest(
    tenant: Uuid,
    credentials: &[(String, String)],
    workers: &[(String, i32)],
) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(tenant.as_bytes());
    for (role, password) in credentials {
        hash.update(format!("\0{role}\0{password}").as_bytes());
    }
    for (host, port) in workers {
        hash.update(format!("\0{host}:{port}").as_bytes());
    }
    hex::encode(hash.finalize())
}

impl DatabasePerTenant<'_> {
    /// Creates `role` (LOGIN, no special rights) marked with `marker`, or,
    /// when it exists and carries the marker, aligns its password. Only a
    /// SCRAM verifier is ever sent: the password never reaches the server.
    async fn ensure_login_role(
        &self,
        role: &Ident,
        marker: &str,
        password: &str,
    ) -> Result<Ensured, PlacementError> {
        match self.role_marker(role).await? {
            Some(found) if found.as_deref() == Some(marker) => {
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
                        quote_literal(&crate::scram::verifier(password))
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
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT PASSWORD {}",
                    role.quoted(),
                    quote_literal(&crate::scram::verifier(password))
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!(
                    "COMMENT ON ROLE {} IS {}",
                    role.quoted(),
                    quote_literal(marker)
                ))
                .execute(&mut *tx)
                .await?;
                match tx.commit().await {
                    Ok(()) => Ok(Ensured::Created),
                    // A concurrent operator won the race: check it is ours.
                    Err(e) if is_duplicate(&e) => {
                        Box::pin(self.ensure_login_role(role, marker, password)).await
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// The data plane's role must exist before it can be granted anything.
    /// The platform team normally creates it with LOGIN and a password; if it
    /// is missing, a NOLOGIN placeholder is created (login enabled later).
    async fn ensure_dataplane_role(&self) -> Result<(), PlacementError> {
        let role = &self.cluster.dataplane_role;
        if self.role_marker(role).await?.is_some() {
            return Ok(());
        }
        let mut tx = self.cluster.admin().begin().await?;
        sqlx::query(&format!(
            "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT",
            role.quoted()
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "COMMENT ON ROLE {} IS {}",
            role.quoted(),
            quote_literal(DATAPLANE_MARKER)
        ))
        .execute(&mut *tx)
        .await?;
        match tx.commit().await {
            Ok(()) => Ok(()),
            Err(e) if is_duplicate(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Databases (other than ones we cannot enter) where `role` owns objects
    /// or holds privileges, from the cluster-wide dependency catalog.
    async fn databases_referencing(&self, role: &Ident) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass \
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
               AND d.datallowconn ORDER BY 1",
        )
        .bind(role.as_str())
        .fetch_all(self.cluster.admin())
        .await
    }

    /// Drops a role of ours and whatever it owns anywhere on the cluster
    /// (e.g. large objects a tenant created in `postgres`). `DROP OWNED` runs
    /// no code the tenant wrote: it removes objects and privileges only.
    async fn drop_role(&self, role: &Ident, marker: &str) -> Result<(), PlacementError> {
        match self.role_marker(role).await? {
            None => return Ok(()),
            Some(found) if found.as_deref() != Some(marker) => {
                return Err(PlacementError::Conflict {
                    kind: "role",
                    name: role.to_string(),
                });
            }
            Some(_) => {}
        }
        for database in self.databases_referencing(role).await? {
            let db = match Ident::new(database.clone()) {
                Ok(db) => db,
                // Not a name we can quote safely: reported below by DROP ROLE.
                Err(_) => continue,
            };
            let pool = self.cluster.admin_pool_on(&db).await?;
            let dropped = sqlx::query(&format!("DROP OWNED BY {}", role.quoted()))
                .execute(&pool)
                .await;
            pool.close().await;
            dropped?;
        }
        match sqlx::query(&format!("DROP ROLE IF EXISTS {}", role.quoted()))
            .execute(self.cluster.admin())
            .await
        {
            Ok(_) => Ok(()),
            // dependent_objects_still_exist: say where, for a human.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("2BP01") => {
                Err(PlacementError::RoleInUse {
                    role: role.to_string(),
                    detail: e.message().to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Citus workers registered on the cluster but not yet in the tenant
    /// database (read as the owner: `pg_dist_node` is readable by anyone).
    async fn citus_nodes_missing(&self, owner: &PgPool) -> Result<bool, sqlx::Error> {
        let cluster: Vec<(String, i32)> = sqlx::query_as(
            "SELECT nodename::text, nodeport FROM pg_dist_node WHERE noderole = 'primary' ORDER BY 1, 2",
        )
        .fetch_all(self.cluster.admin())
        .await?;
        let tenant: Vec<(String, i32)> = sqlx::query_as(
            "SELECT nodename::text, nodeport FROM pg_catalog.pg_dist_node WHERE noderole = 'primary' ORDER BY 1, 2",
        )
        .fetch_all(owner)
        .await?;
        Ok(cluster.iter().any(|n| !tenant.contains(n)) || tenant.is_empty())
    }
}

#[async_trait]
impl Placement for DatabasePerTenant<'_> {
    fn names(&self, tenant: Uuid) -> TenantNames {
        TenantNames::for_tenant(tenant)
    }

    async fn ensure_roles(
        &self,
        tenant: Uuid,
        passwords: &RolePasswords<'_>,
    ) -> Result<Ensured, PlacementError> {
        let names = self.names(tenant);
        self.ensure_dataplane_role().await?;
        let owner = self
            .ensure_login_role(&names.owner, &owner_marker(tenant), passwords.owner)
            .await?;
        let login = self
            .ensure_login_role(&names.role, &role_marker(tenant), passwords.login)
            .await?;
        // The data plane may *become* the owner (SET ROLE) for the DDL its
        // API needs (per-collection indexes, built CONCURRENTLY, which no
        // function can do), but never inherits the owner's rights in its
        // ordinary sessions. PostgreSQL 16+.
        sqlx::query(&format!(
            "GRANT {} TO {} WITH INHERIT FALSE, SET TRUE",
            names.owner.quoted(),
            self.cluster.dataplane_role.quoted()
        ))
        .execute(self.cluster.admin())
        .await?;
        Ok(if owner == Ensured::Created || login == Ensured::Created {
            Ensured::Created
        } else {
            Ensured::Existed
        })
    }

    async fn ensure_database(&self, tenant: Uuid) -> Result<Ensured, PlacementError> {
        let names = self.names(tenant);
        let (db, owner) = (&names.database, &names.owner);
        let ensured = match self.database_owner(db).await? {
            Some(found) if found == owner.as_str() => Ensured::Existed,
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
                    owner.quoted()
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
        // Closed to everyone but the owner until `ensure_access` opens it to
        // the login and data-plane roles; nobody may create temporary objects.
        sqlx::query(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
            db.quoted()
        ))
        .execute(self.cluster.admin())
        .await?;
        Ok(ensured)
    }

    async fn ensure_extensions(
        &self,
        tenant: Uuid,
        owner: &PgPool,
        auth: &NodeAuth<'_>,
    ) -> Result<Extensions, PlacementError> {
        let names = self.names(tenant);
        let citus = self.is_citus().await?;
        let mut wanted = vec!["vector".to_string()];
        if citus {
            wanted.push("citus".into());
        }
        let present: Vec<String> =
            sqlx::query_scalar("SELECT extname::text FROM pg_catalog.pg_extension")
                .fetch_all(owner)
                .await?;
        let missing = wanted.iter().any(|e| !present.contains(e));
        let (credentials, digest) = if citus {
            let credentials = self.node_credentials(&names, auth.passwords);
            let digest = node_auth_digest(tenant, &credentials, &self.citus_workers().await?);
            (credentials, Some(digest))
        } else {
            (Vec::new(), None)
        };
        let auth_stale = digest.as_deref() != auth.recorded && citus;
        let nodes_missing = citus && (missing || self.citus_nodes_missing(owner).await?);
        if !missing && !nodes_missing && !auth_stale {
            return Ok(Extensions {
                names: wanted,
                node_auth: digest,
            });
        }
        // Superuser-only work, with the admin search path (pg_catalog first).
        let admin = self.cluster.admin_pool_on(&names.database).await?;
        let result = async {
            if citus {
                sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
                    .execute(&admin)
                    .await?;
                self.citus_recipe(&names, &admin, &credentials).await?;
            }
            sqlx::query("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
                .execute(&admin)
                .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        admin.close().await;
        result?;
        Ok(Extensions {
            names: wanted,
            node_auth: digest,
        })
    }

    async fn owner_pool(&self, tenant: Uuid, password: &str) -> Result<PgPool, PlacementError> {
        let names = self.names(tenant);
        Ok(self
            .cluster
            .pool_as(&names.database, &names.owner, password)
            .await?)
    }

    async fn ensure_access(&self, tenant: Uuid, owner: &PgPool) -> Result<(), PlacementError> {
        let names = self.names(tenant);
        let (login, dataplane) = (names.role.quoted(), self.cluster.dataplane_role.quoted());
        let list = |tables: &[&str]| {
            tables
                .iter()
                .map(|t| {
                    format!(
                        "public.{}",
                        Ident::new(*t).expect("constant table name").quoted()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let statements = [
            // Only the roles named here may use the schema; nobody but the
            // owner may create in it.
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string(),
            format!("GRANT USAGE ON SCHEMA public TO {login}, {dataplane}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {login}, {dataplane}"
            ),
            format!(
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {login}, {dataplane}"
            ),
            format!(
                "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {login}",
                list(TENANT_READ_ONLY)
            ),
            format!(
                "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {dataplane}",
                list(DATAPLANE_READ_ONLY)
            ),
            format!(
                "REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {dataplane}",
                list(DATAPLANE_APPEND_ONLY)
            ),
            // Last: the database opens to them only once everything above holds.
            format!(
                "GRANT CONNECT ON DATABASE {} TO {login}, {dataplane}",
                names.database.quoted()
            ),
        ];
        let mut tx = owner.begin().await?;
        for statement in &statements {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn drop_tenant(&self, tenant: Uuid) -> Result<(), PlacementError> {
        let names = self.names(tenant);
        match self.database_owner(&names.database).await? {
            Some(found) if found == names.owner.as_str() => {
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
        self.drop_role(&names.role, &role_marker(tenant)).await?;
        self.drop_role(&names.owner, &owner_marker(tenant)).await
    }
}

/// `duplicate_object` / `duplicate_database` / unique violation on the catalogs.
fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42710" | "42P04" | "23505")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_and_escaped() {
        assert_eq!(conninfo_value("plain"), "'plain'");
        assert_eq!(conninfo_value("it's a \\ pass"), "'it\\'s a \\\\ pass'");
    }

    #[test]
    fn node_auth_digest_changes_with_any_input() {
        let id = Uuid::nil();
        let creds = vec![("a".to_string(), "pw".to_string())];
        let workers = vec![("w1".to_string(), 5432)];
        let base = node_auth_digest(id, &creds, &workers);
        assert_eq!(base, node_auth_digest(id, &creds, &workers));
        assert_ne!(
            base,
            node_auth_digest(id, &[("a".into(), "pw2".into())], &workers)
        );
        assert_ne!(base, node_auth_digest(id, &creds, &[("w2".into(), 5432)]));
        assert_ne!(base, node_auth_digest(Uuid::max(), &creds, &workers));
    }
}
