//! Audit events in the tenant database, written by the operator (actor
//! `operator`). A step that may be repeated after a crash passes a dedupe key,
//! so its success is recorded exactly once.

use serde_json::Value;
use sqlx::PgExecutor;

pub const ACTOR: &str = "operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: Value,
    /// Same key, same event: recorded once.
    pub dedupe_key: Option<String>,
}

/// Records `e`; `false` when its dedupe key was recorded before (nothing
/// is written then).
pub async fn record<'e>(db: impl PgExecutor<'e>, e: &AuditEvent) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"INSERT INTO audit_events (actor, action, target, outcome, detail, dedupe_key)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (dedupe_key) DO NOTHING"#,
        ACTOR,
        e.action,
        e.target,
        e.outcome.as_str(),
        e.detail,
        e.dedupe_key
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
