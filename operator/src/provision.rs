//! Tenant provisioning: the ordered, idempotent steps that turn a Tenant spec
//! into a migrated, seeded tenant database. Every step is safe to repeat after
//! a crash at any point; the same code runs under the controller and under
//! `strata-operator apply` (offline).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use strata_api::{DeletionPolicy, TenantSpec};
use strata_db::{Catalog, CatalogError, TenantRecord, TenantState, migrations};
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::cluster::{
    CLUSTER_SECRET_PREFIX, Cluster, ClusterLookupError, Clusters, DEFAULT_CLUSTER,
};
use crate::host::{EventKind, HostError, SecretData, TenantHost};
use crate::invite::{self, InviteState};
use crate::placement::{
    DatabasePerTenant, Ensured, NodeAuth, Placement, PlacementError, RolePasswords,
};
use crate::seed;

/// The steps, in order. Each maps to the status condition it reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Cluster,
    Catalog,
    Credentials,
    Role,
    Database,
    Extensions,
    Migrate,
    Access,
    Seed,
    Invite,
}

impl Step {
    pub const ALL: [Step; 10] = [
        Step::Cluster,
        Step::Catalog,
        Step::Credentials,
        Step::Role,
        Step::Database,
        Step::Extensions,
        Step::Migrate,
        Step::Access,
        Step::Seed,
        Step::Invite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Cluster => "cluster",
            Step::Catalog => "catalog",
            Step::Credentials => "credentials",
            Step::Role => "role",
            Step::Database => "database",
            Step::Extensions => "extensions",
            Step::Migrate => "migrate",
            Step::Access => "access",
            Step::Seed => "seed",
            Step::Invite => "invite",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }

    /// The status condition this step reports on.
    pub fn condition(self) -> &'static str {
        match self {
            Step::Cluster
            | Step::Catalog
            | Step::Credentials
            | Step::Role
            | Step::Database
            | Step::Extensions => crate::conditions::DATABASE_READY,
            // Privileges belong to the schema they are on.
            Step::Migrate | Step::Access => crate::conditions::MIGRATED,
            Step::Seed => crate::conditions::SEEDED,
            Step::Invite => crate::conditions::ADMIN_INVITED,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as the provisioner needs it, independent of where it came from.
#[derive(Clone, Debug)]
pub struct TenantInput {
    pub id: Uuid,
    pub name: String,
    pub namespace: String,
    pub spec: TenantSpec,
    /// Credential rotation: the value asked for (the Tenant's
    /// `strata.dev/rotate-credentials` annotation) and the value the last
    /// rotation acted on (`status.credentialsRotation`). A rotation happens
    /// when they differ.
    pub rotation: Rotation,
}

/// See [`TenantInput::rotation`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub requested: Option<String>,
    pub done: Option<String>,
}

impl Rotation {
    fn pending(&self) -> bool {
        self.requested.is_some() && self.requested != self.done
    }
}

/// Settings that do not vary per tenant.
#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    /// Who manages the tenants provisioned with these settings, as recorded in
    /// the catalog: `kubernetes` (the controller) or `offline` (`apply`).
    pub origin: &'static str,
    /// Base URL of the data plane, for the status endpoints.
    pub api_base_url: Option<String>,
    pub invite_ttl_hours: i64,
    /// Test-only: fail right after this step, as if the process crashed.
    pub fault_after: Option<Step>,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct Provisioned {
    pub database_name: String,
    pub schema_version: i64,
    pub credentials_secret: String,
    pub database_endpoint: String,
    pub api_endpoint: Option<String>,
    pub invitation: InviteState,
    /// The rotation value now in effect (for `status.credentialsRotation`).
    pub rotation: Option<String>,
}

/// Why a run stopped.
#[derive(Clone, Debug)]
pub struct Failure {
    pub step: Step,
    /// CamelCase reason for the condition and Event.
    pub reason: &'static str,
    pub message: String,
    /// Whether retrying with backoff may help. When false the tenant waits for
    /// a spec change (or a human).
    pub retryable: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            self.step, self.reason, self.message
        )
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn new(step: Step, reason: &'static str, message: impl fmt::Display, retryable: bool) -> Self {
        Self {
            step,
            reason,
            message: message.to_string(),
            retryable,
        }
    }

    /// An injected fault: the controller treats it as a crash.
    pub fn is_injected(&self) -> bool {
        self.reason == "FaultInjected"
    }
}

/// Key of the credentials Secret naming the rotation its password came from.
pub const ROTATION_KEY: &str = "rotation";

/// Name of the Secret with the tenant's database credentials.
pub fn credentials_secret_name(tenant: &str) -> String {
    format!("{tenant}-database")
}

/// Name of the Secret that carries the admin invitation token.
pub fn invite_secret_name(tenant: &str) -> String {
    format!("{tenant}-admin-invite")
}

/// The cluster a tenant's spec names (the default cluster when it names none).
pub fn cluster_name(spec: &TenantSpec) -> &str {
    spec.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER)
}

/// Resolves a declared cluster by name and checks that it answers.
pub async fn resolve_cluster(clusters: &Clusters, name: &str) -> Result<Arc<Cluster>, Failure> {
    let cluster = match clusters.get(name).await {
        Ok(Some(cluster)) => cluster,
        // Declared by the platform team later: keep looking, with backoff.
        Ok(None) => {
            return Err(Failure::new(
                Step::Cluster,
                "ClusterNotFound",
                format!(
                    "no database cluster {name:?} is declared (a Secret {CLUSTER_SECRET_PREFIX}{name} in the operator's namespace)"
                ),
                true,
            ));
        }
        Err(e @ ClusterLookupError::Source(_)) => {
            return Err(Failure::new(Step::Cluster, "ClusterUnavailable", e, true));
        }
        Err(e @ ClusterLookupError::Invalid(_)) => {
            return Err(Failure::new(Step::Cluster, "InvalidCluster", e, false));
        }
    };
    cluster
        .ping()
        .await
        .map_err(|e| Failure::new(Step::Cluster, "ClusterUnreachable", e, true))?;
    Ok(cluster)
}

/// A Secret failure: a conflict or a refused object needs a human.
fn secret_failure(step: Step, e: HostError) -> Failure {
    let reason = match &e {
        HostError::Conflict(_) => "SecretConflict",
        _ if !e.is_retryable() => "SecretRefused",
        _ => "SecretUnavailable",
    };
    let retryable = e.is_retryable();
    Failure::new(step, reason, e, retryable)
}

/// A `postgres://` URL with every part percent-encoded, so passwords and
/// names with `@ / # ? :` survive.
pub fn postgres_url(user: &str, password: &str, host: &str, port: u16, database: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // Unreserved characters (RFC 3986) stay as they are; all else is encoded.
    const PART: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let enc = |s: &str| utf8_percent_encode(s, PART).to_string();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]") // IPv6 literal
    } else {
        host.to_string()
    };
    format!(
        "postgres://{}:{}@{host}:{port}/{}",
        enc(user),
        enc(password),
        enc(database)
    )
}

/// Runs the provisioning steps for one tenant.
pub struct Provisioner<'a> {
    pub settings: &'a ProvisionSettings,
    pub catalog: &'a Catalog,
    pub cluster: &'a Cluster,
    pub host: &'a dyn TenantHost,
}

impl Provisioner<'_> {
    /// Marks a step done: reports it to the host, then fires the injected
    /// fault if this is the step to crash after.
    async fn done(&self, step: Step) -> Result<(), Failure> {
        self.host.step_done(step).await;
        if self.settings.fault_after == Some(step) {
            return Err(Failure::new(
                step,
                "FaultInjected",
                "fault injected after this step",
                true,
            ));
        }
        Ok(())
    }

    pub async fn provision(&self, t: &TenantInput) -> Result<Provisioned, Failure> {
        let placement = DatabasePerTenant {
            cluster: self.cluster,
        };
        let names = placement.names(t.id);
        self.done(Step::Cluster).await?;

        // 1. Catalog entry first: a database we create is always recorded.
        let record = TenantRecord {
            id: t.id,
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            display_name: t.spec.display_name.clone(),
            cluster: self.cluster.id.clone(),
            database_name: names.database.to_string(),
            owner_role: names.owner.to_string(),
            quotas: serde_json::to_value(&t.spec.quotas).unwrap_or_default(),
            deletion_policy: match t.spec.deletion_policy {
                DeletionPolicy::Retain => "Retain",
                DeletionPolicy::Delete => "Delete",
            }
            .into(),
            origin: self.settings.origin.into(),
        };
        let catalog_unavailable =
            |e: sqlx::Error| Failure::new(Step::Catalog, "CatalogUnavailable", e, true);
        self.catalog.claim(&record).await.map_err(|e| match e {
            CatalogError::DuplicateName { .. } => {
                Failure::new(Step::Catalog, "DuplicateTenantName", e, false)
            }
            CatalogError::DatabaseTaken { .. } => {
                Failure::new(Step::Catalog, "DatabaseNameConflict", e, false)
            }
            CatalogError::InvalidName { .. } => {
                Failure::new(Step::Catalog, "InvalidTenantName", e, false)
            }
            CatalogError::Db(e) => catalog_unavailable(e),
        })?;
        let (cluster_host, cluster_port) = self.cluster.host_port();
        self.catalog
            .record_cluster(
                &self.cluster.id,
                &cluster_host,
                cluster_port,
                self.cluster.dataplane_role.as_str(),
            )
            .await
            .map_err(catalog_unavailable)?;
        // The owner role's password: stored once, known only to the operator.
        let owner_password = self
            .catalog
            .owner_password(t.id, &crate::invite::new_token())
            .await
            .map_err(catalog_unavailable)?;
        self.done(Step::Catalog).await?;

        // 2. Credentials: the Secret is the source of truth for the password.
        let secret_name = credentials_secret_name(&t.name);
        let (host, port) = self.cluster.host_port();
        let existing = self
            .host
            .read_secret(&secret_name)
            .await
            .map_err(|e| secret_failure(Step::Credentials, e))?;
        // The Secret records which rotation its password came from, so a
        // rotation happens once even when a reconcile sees a stale status
        // (e.g. the one the Secret write itself triggers).
        let secret_rotation = existing
            .as_ref()
            .and_then(|s| s.get(ROTATION_KEY))
            .map(str::to_string);
        let rotating = t.rotation.pending() && secret_rotation != t.rotation.requested;
        let password = match &existing {
            // A rotation replaces the password everywhere, starting here (the
            // Secret is the source of truth; a crash later converges on it).
            _ if rotating => crate::invite::new_token(),
            Some(s) if s.get("password").is_some_and(|p| !p.is_empty()) => {
                s.get("password").unwrap_or_default().to_string()
            }
            _ => crate::invite::new_token(),
        };
        let rotation = if rotating {
            t.rotation.requested.clone()
        } else {
            secret_rotation
        };
        let url = postgres_url(
            names.role.as_str(),
            &password,
            &host,
            port,
            names.database.as_str(),
        );
        let mut data = SecretData(BTreeMap::from([
            ("username".into(), names.role.to_string()),
            ("password".into(), password.clone()),
            ("host".into(), host.clone()),
            ("port".into(), port.to_string()),
            ("database".into(), names.database.to_string()),
            ("url".into(), url),
        ]));
        if let Some(rotation) = rotation {
            data.0.insert(ROTATION_KEY.into(), rotation);
        }
        self.host
            .write_secret(&secret_name, data)
            .await
            .map_err(|e| secret_failure(Step::Credentials, e))?;
        if rotating {
            self.host
                .event(
                    EventKind::Normal,
                    "CredentialsRotated",
                    "Rotate",
                    format!(
                        "New database password in Secret {secret_name} (rotation {:?})",
                        t.rotation.requested.as_deref().unwrap_or_default()
                    ),
                )
                .await;
        }
        self.done(Step::Credentials).await?;

        // 3. Roles, 4. database, 5. extensions.
        let placement_failure = |step: Step| {
            move |e: PlacementError| match e {
                PlacementError::Conflict { kind, .. } => Failure::new(
                    step,
                    if kind == "role" {
                        "RoleConflict"
                    } else {
                        "DatabaseConflict"
                    },
                    e,
                    false,
                ),
                PlacementError::RoleInUse { .. } => Failure::new(step, "RoleInUse", e, false),
                PlacementError::Db(e) => Failure::new(step, "ClusterError", e, true),
            }
        };
        let passwords = RolePasswords {
            login: &password,
            owner: &owner_password,
        };
        if placement
            .ensure_roles(t.id, &passwords)
            .await
            .map_err(placement_failure(Step::Role))?
            == Ensured::Created
        {
            self.host
                .event(
                    EventKind::Normal,
                    "RoleCreated",
                    "Provision",
                    format!("Created roles {} and {}", names.owner, names.role),
                )
                .await;
        }
        self.done(Step::Role).await?;
        if placement
            .ensure_database(t.id)
            .await
            .map_err(placement_failure(Step::Database))?
            == Ensured::Created
        {
            self.host
                .event(
                    EventKind::Normal,
                    "DatabaseCreated",
                    "Provision",
                    format!("Created database {}", names.database),
                )
                .await;
        }
        self.done(Step::Database).await?;

        // From here on, work inside the tenant database runs as its owner.
        let pool = placement
            .owner_pool(t.id, &owner_password)
            .await
            .map_err(|e| Failure::new(Step::Extensions, "ClusterError", e, true))?;
        let recorded_auth = self
            .catalog
            .node_auth_digest(t.id)
            .await
            .map_err(catalog_unavailable)?;
        let result = async {
            let node_auth = NodeAuth {
                passwords: &passwords,
                recorded: recorded_auth.as_deref(),
            };
            let established = placement
                .ensure_extensions(t.id, &pool, &node_auth)
                .await
                .map_err(|e| match e {
                    PlacementError::Db(e) => {
                        Failure::new(Step::Extensions, "ExtensionFailed", e, true)
                    }
                    other => placement_failure(Step::Extensions)(other),
                })?;
            if established.node_auth != recorded_auth {
                self.catalog
                    .set_node_auth_digest(t.id, established.node_auth.as_deref())
                    .await
                    .map_err(catalog_unavailable)?;
            }
            self.done(Step::Extensions).await?;
            self.in_tenant_db(
                t,
                &placement,
                &pool,
                names.database.as_str(),
                &established.names,
            )
            .await
        }
        .await;
        pool.close().await;
        let (schema_version, invitation) = result?;

        self.catalog
            .set_schema_version(t.id, schema_version)
            .await
            .map_err(catalog_unavailable)?;
        self.catalog
            .set_state(t.id, TenantState::Ready)
            .await
            .map_err(catalog_unavailable)?;

        Ok(Provisioned {
            database_name: names.database.to_string(),
            schema_version,
            credentials_secret: secret_name,
            database_endpoint: format!("{host}:{port}/{}", names.database),
            api_endpoint: self
                .settings
                .api_base_url
                .as_ref()
                .map(|base| format!("{}/v1/tenants/{}", base.trim_end_matches('/'), t.name)),
            invitation,
            rotation: t.rotation.requested.clone(),
        })
    }

    /// The steps that run inside the tenant database; failures here are also
    /// written to its audit trail.
    async fn in_tenant_db(
        &self,
        t: &TenantInput,
        placement: &dyn Placement,
        pool: &PgPool,
        database: &str,
        extensions: &[String],
    ) -> Result<(i64, InviteState), Failure> {
        let result = self
            .tenant_db_steps(t, placement, pool, database, extensions)
            .await;
        if let Err(f) = &result
            && !f.is_injected()
        {
            let event = AuditEvent {
                action: format!("provision.{}", f.step),
                target: database.to_string(),
                outcome: Outcome::Failure,
                detail: json!({ "reason": f.reason, "message": f.message }),
                dedupe_key: None,
            };
            // Best effort: the audit table may not exist yet (first migration failed).
            if let Err(e) = audit::record(pool, &event).await {
                tracing::debug!(error = %e, "cannot audit failure");
            }
        }
        result
    }

    async fn tenant_db_steps(
        &self,
        t: &TenantInput,
        placement: &dyn Placement,
        pool: &PgPool,
        database: &str,
        extensions: &[String],
    ) -> Result<(i64, InviteState), Failure> {
        let before = migrations::schema_version(pool).await.unwrap_or(0);
        let schema_version = migrations::run(&migrations::TENANT, pool)
            .await
            .map_err(|e| {
                let reason = match &e {
                    migrations::MigrationFailure::Changed(_) => "MigrationChanged",
                    migrations::MigrationFailure::Unknown(_) => "MigrationUnknown",
                    migrations::MigrationFailure::Failed(_) => "MigrationFailed",
                };
                let retryable = e.is_retryable();
                Failure::new(Step::Migrate, reason, e, retryable)
            })?;
        if schema_version > before {
            self.host
                .event(
                    EventKind::Normal,
                    "Migrated",
                    "Migrate",
                    format!(
                        "Applied tenant migrations {} to {schema_version}",
                        before + 1
                    ),
                )
                .await;
        }
        // The audit table exists from here on: record the steps done so far.
        // Deterministic keys make a repeated run record nothing new.
        let success = |action: &str, key: String, detail: serde_json::Value| AuditEvent {
            action: action.to_string(),
            target: database.to_string(),
            outcome: Outcome::Success,
            detail,
            dedupe_key: Some(key),
        };
        let audit_failure = |e: sqlx::Error| Failure::new(Step::Migrate, "AuditFailed", e, true);
        for event in [
            success(
                "provision.catalog",
                "provision:catalog".into(),
                json!({ "tenant": t.name, "namespace": t.namespace }),
            ),
            success("provision.role", "provision:role".into(), json!({})),
            success(
                "provision.database",
                "provision:database".into(),
                json!({ "cluster": self.cluster.id }),
            ),
            success(
                "provision.extensions",
                format!("provision:extensions:{}", extensions.join(",")),
                json!({ "extensions": extensions }),
            ),
            success(
                "provision.migrate",
                format!("provision:migrate:v{schema_version}"),
                json!({ "schemaVersion": schema_version }),
            ),
        ] {
            audit::record(pool, &event).await.map_err(audit_failure)?;
        }
        if t.rotation.pending() {
            let requested = t.rotation.requested.as_deref().unwrap_or_default();
            audit::record(
                pool,
                &success(
                    "credentials.rotated",
                    format!("credentials:rotated:{requested}"),
                    json!({ "rotation": requested, "role": database }),
                ),
            )
            .await
            .map_err(audit_failure)?;
        }
        self.done(Step::Migrate).await?;

        // 7. Access: the login and data-plane roles get their rights, and
        // only then may they connect.
        placement
            .ensure_access(t.id, pool)
            .await
            .map_err(|e| Failure::new(Step::Access, "GrantFailed", e, true))?;
        audit::record(
            pool,
            &success(
                "provision.access",
                format!(
                    "provision:access:v{schema_version}:{}",
                    self.cluster.dataplane_role
                ),
                json!({ "dataplaneRole": self.cluster.dataplane_role.as_str() }),
            ),
        )
        .await
        .map_err(|e| Failure::new(Step::Access, "AuditFailed", e, true))?;
        self.done(Step::Access).await?;

        // 8. Seeds.
        let applied = seed::apply(pool)
            .await
            .map_err(|e| Failure::new(Step::Seed, "SeedFailed", e, true))?;
        if !applied.is_empty() {
            self.host
                .event(
                    EventKind::Normal,
                    "Seeded",
                    "Seed",
                    format!("Seeded {}", applied.join(", ")),
                )
                .await;
        }
        let seeded: Vec<String> =
            sqlx::query_scalar!("SELECT name FROM seed_history ORDER BY name")
                .fetch_all(pool)
                .await
                .map_err(|e| Failure::new(Step::Seed, "SeedFailed", e, true))?;
        audit::record(
            pool,
            &success(
                "provision.seed",
                format!("provision:seed:{}", seeded.join(",")),
                json!({ "sets": seeded }),
            ),
        )
        .await
        .map_err(|e| Failure::new(Step::Seed, "AuditFailed", e, true))?;
        self.done(Step::Seed).await?;

        // 9. Admin invitation: token in a Secret first, then its hash + outbox.
        let secret_name = invite_secret_name(&t.name);
        let invite_failed = |e: sqlx::Error| Failure::new(Step::Invite, "InviteFailed", e, true);
        // A changed adminEmail: the previous address's invitation stops working.
        for (id, email) in invite::revoke_others(pool, &t.spec.admin_email)
            .await
            .map_err(invite_failed)?
        {
            audit::record(
                pool,
                &success(
                    "invitation.revoked",
                    format!("invitation:revoked:{id}"),
                    json!({ "invitationId": id, "email": email, "reason": "adminEmail changed" }),
                ),
            )
            .await
            .map_err(|e| Failure::new(Step::Invite, "AuditFailed", e, true))?;
            self.host
                .event(
                    EventKind::Normal,
                    "InvitationRevoked",
                    "Invite",
                    format!("Revoked the open invitation for {email}: adminEmail changed"),
                )
                .await;
        }
        let existing = self
            .host
            .read_secret(&secret_name)
            .await
            .map_err(|e| secret_failure(Step::Invite, e))?;
        let mut token = match existing {
            Some(s)
                if s.get("email") == Some(t.spec.admin_email.as_str())
                    && s.get("token").is_some() =>
            {
                Some(s.get("token").unwrap_or_default().to_string())
            }
            _ => None,
        };
        // At most two rounds: an expired invitation is replaced by a new token.
        let state = loop {
            let current = match token.take() {
                Some(current) => current,
                None => {
                    let fresh = invite::new_token();
                    let data = SecretData(BTreeMap::from([
                        ("email".into(), t.spec.admin_email.clone()),
                        ("token".into(), fresh.clone()),
                    ]));
                    self.host
                        .write_secret(&secret_name, data)
                        .await
                        .map_err(|e| secret_failure(Step::Invite, e))?;
                    fresh
                }
            };
            let state = invite::ensure(
                pool,
                &t.name,
                &t.spec.admin_email,
                &current,
                self.settings.invite_ttl_hours,
                &secret_name,
            )
            .await
            .map_err(invite_failed)?;
            match state {
                // Reissue: a new token replaces the expired invitation.
                InviteState::Expired { id } => {
                    audit::record(
                        pool,
                        &success(
                            "invitation.expired",
                            format!("invitation:expired:{id}"),
                            json!({ "invitationId": id, "email": t.spec.admin_email }),
                        ),
                    )
                    .await
                    .map_err(|e| Failure::new(Step::Invite, "AuditFailed", e, true))?;
                }
                other => break other,
            }
        };
        match &state {
            InviteState::Created { id } | InviteState::Pending { id } => {
                if matches!(state, InviteState::Created { .. }) {
                    self.host
                        .event(
                            EventKind::Normal,
                            "AdminInvited",
                            "Invite",
                            format!(
                                "Invited {} as owner (token in Secret {secret_name})",
                                t.spec.admin_email
                            ),
                        )
                        .await;
                }
                audit::record(
                    pool,
                    &success(
                        "provision.invite",
                        format!("provision:invite:{id}"),
                        json!({ "invitationId": id, "email": t.spec.admin_email }),
                    ),
                )
                .await
                .map_err(|e| Failure::new(Step::Invite, "AuditFailed", e, true))?;
            }
            InviteState::Accepted | InviteState::Expired { .. } => {}
        }
        self.done(Step::Invite).await?;
        Ok((schema_version, state))
    }
}

/// `Retain`: keeps the database; the catalog entry is marked detached. Needs
/// no database cluster, so it completes even when the cluster's Secret is
/// already gone (e.g. during namespace deletion). Idempotent.
pub async fn detach(catalog: &Catalog, tenant: Uuid) -> Result<(), Failure> {
    catalog
        .set_state(tenant, TenantState::Detached)
        .await
        .map_err(|e| Failure::new(Step::Catalog, "CatalogUnavailable", e, true))
}

/// `Delete`: drops the database and role (if ours), then the catalog entry.
/// Idempotent.
pub async fn destroy(catalog: &Catalog, cluster: &Cluster, tenant: Uuid) -> Result<(), Failure> {
    let catalog_failure =
        |e: sqlx::Error| Failure::new(Step::Catalog, "CatalogUnavailable", e, true);
    if catalog
        .state(tenant)
        .await
        .map_err(catalog_failure)?
        .is_some()
    {
        catalog
            .set_state(tenant, TenantState::Deleting)
            .await
            .map_err(catalog_failure)?;
    }
    DatabasePerTenant { cluster }
        .drop_tenant(tenant)
        .await
        .map_err(|e| match e {
            PlacementError::Conflict { kind, .. } => Failure::new(
                Step::Database,
                if kind == "role" {
                    "RoleConflict"
                } else {
                    "DatabaseConflict"
                },
                e,
                false,
            ),
            PlacementError::RoleInUse { .. } => Failure::new(Step::Role, "RoleInUse", e, false),
            PlacementError::Db(e) => Failure::new(Step::Database, "ClusterError", e, true),
        })?;
    catalog.delete(tenant).await.map_err(catalog_failure)
}
