//! Deterministic migrations, embedded in the binary: ordered, checksummed and
//! applied under an advisory lock by `sqlx::migrate`. A migration that changed
//! after it was applied is refused (never re-run silently).

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgExecutor, PgPool};

/// The platform catalog database.
pub static PLATFORM: Migrator = sqlx::migrate!("../migrations/platform");

/// Every tenant database.
pub static TENANT: Migrator = sqlx::migrate!("../migrations/tenant");

/// The newest migration this binary knows for tenant databases.
pub fn latest_tenant_version() -> i64 {
    TENANT.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Why migrating failed, in terms an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum MigrationFailure {
    /// An applied migration's checksum differs from the embedded one: someone
    /// edited a migration after release. Needs a human; retrying cannot help.
    #[error("migration {0} was changed after it was applied (checksum mismatch)")]
    Changed(i64),
    /// The database has a migration this binary does not know (a newer
    /// operator ran before). Needs the newer operator.
    #[error("database has migration {0} that this operator does not know; upgrade the operator")]
    Unknown(i64),
    /// A migration failed to apply, or the database is unreachable: retryable.
    #[error("migration failed: {0}")]
    Failed(#[source] MigrateError),
}

impl MigrationFailure {
    /// Whether waiting and retrying may fix it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

impl From<MigrateError> for MigrationFailure {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::VersionMismatch(v) => Self::Changed(v),
            MigrateError::VersionMissing(v) => Self::Unknown(v),
            other => Self::Failed(other),
        }
    }
}

/// Applies the pending migrations of `migrator` and returns the schema version.
pub async fn run(migrator: &Migrator, pool: &PgPool) -> Result<i64, MigrationFailure> {
    migrator.run(pool).await?;
    schema_version(pool)
        .await
        .map_err(|e| MigrationFailure::Failed(e.into()))
}

/// The highest successfully applied migration, 0 when none.
pub async fn schema_version<'e>(db: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(db)
            .await?;
    Ok(version.unwrap_or(0))
}
