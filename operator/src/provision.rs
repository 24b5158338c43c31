//! Tenant provisioning: the ordered, idempotent steps that turn a Tenant spec
//! into a migrated, seeded tenant database. Every step is safe to repeat after
//! a crash at any point; the same code runs under the controller and under
//! `strata-operator apply` (offline).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use strata_api::TenantSpec;
use strata_db::{Catalog, CatalogError, TenantRecord, TenantState, migrations};
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::cluster::{Cluster, ClusterError, Clusters};
use crate::host::{EventKind, SecretData, TenantHost};
use crate::invite::{self, InviteState};
use crate::placement::{DatabasePerTenant, Ensured, Placement, PlacementError};
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
    Seed,
    Invite,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Cluster,
        Step::Catalog,
        Step::Credentials,
        Step::Role,
        Step::Database,
        Step::Extensions,
        Step::Migrate,
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
            Step::Migrate => crate::conditions::MIGRATED,
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
}

/// Settings that do not vary per tenant.
#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    /// Admin URL of the default cluster (used when the spec names none).
    pub default_cluster_url: String,
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

/// Name of the Secret with the tenant's database credentials.
pub fn credentials_secret_name(tenant: &str) -> String {
    format!("{tenant}-database")
}

/// Name of the Secret that carries the admin invitation token.
pub fn invite_secret_name(tenant: &str) -> String {
    format!("{tenant}-admin-invite")
}

/// Resolves the cluster a tenant lives on.
pub async fn resolve_cluster(
    clusters: &Clusters,
    settings: &ProvisionSettings,
    spec: &TenantSpec,
    host: &dyn TenantHost,
) -> Result<Arc<Cluster>, Failure> {
    let (id, url) = match &spec.database {
        None => ("default".to_string(), settings.default_cluster_url.clone()),
        Some(r) => {
            let secret = host
                .read_secret(&r.secret_ref.name)
                .await
                .map_err(|e| Failure::new(Step::Cluster, "ClusterSecretUnavailable", e, true))?
                .ok_or_else(|| {
                    Failure::new(
                        Step::Cluster,
                        "ClusterSecretMissing",
                        format!("Secret {} not found", r.secret_ref.name),
                        true,
                    )
                })?;
            let url = secret.get(&r.secret_ref.key).ok_or_else(|| {
                Failure::new(
                    Step::Cluster,
                    "ClusterSecretMissing",
                    format!(
                        "Secret {} has no key {}",
                        r.secret_ref.name, r.secret_ref.key
                    ),
                    true,
                )
            })?;
            (
                format!("secret:{}/{}", r.secret_ref.name, r.secret_ref.key),
                url.to_string(),
            )
        }
    };
    let cluster = clusters.get(&id, &url).await.map_err(|e| match e {
        ClusterError::InvalidUrl { .. } => {
            Failure::new(Step::Cluster, "InvalidClusterUrl", e, false)
        }
        ClusterError::Unreachable { .. } => {
            Failure::new(Step::Cluster, "ClusterUnreachable", e, true)
        }
    })?;
    cluster
        .ping()
        .await
        .map_err(|e| Failure::new(Step::Cluster, "ClusterUnreachable", e, true))?;
    Ok(cluster)
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
            owner_role: names.role.to_string(),
            quotas: serde_json::to_value(&t.spec.quotas).unwrap_or_default(),
        };
        self.catalog.claim(&record).await.map_err(|e| match e {
            CatalogError::DuplicateName { .. } => {
                Failure::new(Step::Catalog, "DuplicateTenantName", e, false)
            }
            CatalogError::DatabaseTaken { .. } => {
                Failure::new(Step::Catalog, "DatabaseNameConflict", e, false)
            }
            CatalogError::Db(e) => Failure::new(Step::Catalog, "CatalogUnavailable", e, true),
        })?;
        self.done(Step::Catalog).await?;

        // 2. Credentials: the Secret is the source of truth for the password.
        let secret_name = credentials_secret_name(&t.name);
        let (host, port) = self.cluster.host_port();
        let password = match self.host.read_secret(&secret_name).await {
            Ok(Some(s)) if s.get("password").is_some_and(|p| !p.is_empty()) => {
                s.get("password").unwrap_or_default().to_string()
            }
            Ok(_) => crate::invite::new_token(),
            Err(e) => {
                return Err(Failure::new(
                    Step::Credentials,
                    "SecretUnavailable",
                    e,
                    true,
                ));
            }
        };
        let url = format!(
            "postgres://{}:{}@{host}:{port}/{}",
            names.role, password, names.database
        );
        let data = SecretData(BTreeMap::from([
            ("username".into(), names.role.to_string()),
            ("password".into(), password.clone()),
            ("host".into(), host.clone()),
            ("port".into(), port.to_string()),
            ("database".into(), names.database.to_string()),
            ("url".into(), url),
        ]));
        self.host
            .write_secret(&secret_name, data)
            .await
            .map_err(|e| Failure::new(Step::Credentials, "SecretUnavailable", e, true))?;
        self.done(Step::Credentials).await?;

        // 3. Role, 4. database, 5. extensions.
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
                PlacementError::Db(e) => Failure::new(step, "ClusterError", e, true),
            }
        };
        if placement
            .ensure_role(t.id, &password)
            .await
            .map_err(placement_failure(Step::Role))?
            == Ensured::Created
        {
            self.host
                .event(
                    EventKind::Normal,
                    "RoleCreated",
                    "Provision",
                    format!("Created role {}", names.role),
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
        let extensions = placement
            .ensure_extensions(t.id)
            .await
            .map_err(|e| match e {
                PlacementError::Db(e) => Failure::new(Step::Extensions, "ExtensionFailed", e, true),
                other => placement_failure(Step::Extensions)(other),
            })?;
        self.done(Step::Extensions).await?;

        // 6. Migrations, as the tenant's role.
        let pool = placement
            .tenant_pool(t.id)
            .await
            .map_err(|e| Failure::new(Step::Migrate, "ClusterError", e, true))?;
        let result = self
            .in_tenant_db(t, &pool, &names.database.to_string(), &extensions)
            .await;
        pool.close().await;
        let (schema_version, invitation) = result?;

        self.catalog
            .set_schema_version(t.id, schema_version)
            .await
            .map_err(|e| Failure::new(Step::Catalog, "CatalogUnavailable", e, true))?;
        self.catalog
            .set_state(t.id, TenantState::Ready)
            .await
            .map_err(|e| Failure::new(Step::Catalog, "CatalogUnavailable", e, true))?;

        Ok(Provisioned {
            database_name: names.database.to_string(),
            schema_version,
            credentials_secret: secret_name,
            database_endpoint: format!("{host}:{port}/{}", names.database),
            api_endpoint: self
                .settings
                .api_base_url
                .as_ref()
                .map(|base| format!("{}/t/{}", base.trim_end_matches('/'), t.name)),
            invitation,
        })
    }

    /// The steps that run inside the tenant database; failures here are also
    /// written to its audit trail.
    async fn in_tenant_db(
        &self,
        t: &TenantInput,
        pool: &PgPool,
        database: &str,
        extensions: &[String],
    ) -> Result<(i64, InviteState), Failure> {
        let result = self.tenant_db_steps(t, pool, database, extensions).await;
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
        self.done(Step::Migrate).await?;

        // 7. Seeds.
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

        // 8. Admin invitation: token in a Secret first, then its hash + outbox.
        let secret_name = invite_secret_name(&t.name);
        let invite_failure =
            |reason: &'static str| move |e: String| Failure::new(Step::Invite, reason, e, true);
        let existing = self
            .host
            .read_secret(&secret_name)
            .await
            .map_err(|e| invite_failure("SecretUnavailable")(e.to_string()))?;
        let token = match existing {
            Some(s)
                if s.get("email") == Some(t.spec.admin_email.as_str())
                    && s.get("token").is_some() =>
            {
                s.get("token").unwrap_or_default().to_string()
            }
            _ => {
                let token = invite::new_token();
                let data = SecretData(BTreeMap::from([
                    ("email".into(), t.spec.admin_email.clone()),
                    ("token".into(), token.clone()),
                ]));
                self.host
                    .write_secret(&secret_name, data)
                    .await
                    .map_err(|e| invite_failure("SecretUnavailable")(e.to_string()))?;
                token
            }
        };
        let state = invite::ensure(
            pool,
            &t.name,
            &t.spec.admin_email,
            &token,
            self.settings.invite_ttl_hours,
            &secret_name,
        )
        .await
        .map_err(|e| invite_failure("InviteFailed")(e.to_string()))?;
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
                .map_err(|e| invite_failure("AuditFailed")(e.to_string()))?;
            }
            InviteState::Accepted => {}
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
            PlacementError::Conflict { .. } => {
                Failure::new(Step::Database, "DatabaseConflict", e, false)
            }
            PlacementError::Db(e) => Failure::new(Step::Database, "ClusterError", e, true),
        })?;
    catalog.delete(tenant).await.map_err(catalog_failure)
}
