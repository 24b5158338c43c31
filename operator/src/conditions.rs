//! Tenant status: conditions and phase computed from a provisioning run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strata_api::condition::set_condition;
use strata_api::tenant::TenantEndpoints;
use strata_api::{Condition, ConditionStatus, TenantPhase, TenantStatus};

use crate::invite::InviteState;
use crate::provision::{Failure, Provisioned};

pub const DATABASE_READY: &str = "DatabaseReady";
pub const MIGRATED: &str = "Migrated";
pub const SEEDED: &str = "Seeded";
pub const ADMIN_INVITED: &str = "AdminInvited";
pub const READY: &str = "Ready";

/// The step conditions, in order.
pub const STEPS: [&str; 4] = [DATABASE_READY, MIGRATED, SEEDED, ADMIN_INVITED];

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
        reason: reason.into(),
        message,
    }
}

/// The status after a run, starting from the previous one so transition times
/// and fields of earlier runs are kept.
pub fn status_after(
    previous: Option<&TenantStatus>,
    generation: Option<i64>,
    tenant_id: &str,
    result: &Result<Provisioned, Failure>,
) -> TenantStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.tenant_id = Some(tenant_id.to_string());
    let mut conditions = std::mem::take(&mut status.conditions);
    match result {
        Ok(p) => {
            let invite_reason = match p.invitation {
                InviteState::Created { .. }
                | InviteState::Pending { .. }
                | InviteState::Expired { .. } => "InvitationPending",
                InviteState::Accepted => "InvitationAccepted",
            };
            let messages = [
                (
                    DATABASE_READY,
                    "DatabaseProvisioned",
                    format!("Database {} is ready", p.database_name),
                ),
                (
                    MIGRATED,
                    "MigrationsApplied",
                    format!("Schema version {}", p.schema_version),
                ),
                (
                    SEEDED,
                    "Seeded",
                    "Roles and config defaults are in place".to_string(),
                ),
                (
                    ADMIN_INVITED,
                    invite_reason,
                    "The admin invitation was issued".to_string(),
                ),
                (READY, "Ready", "Tenant is provisioned".to_string()),
            ];
            for (type_, reason, message) in messages {
                set_condition(
                    &mut conditions,
                    condition(type_, ConditionStatus::True, reason, message, generation),
                );
            }
            status.phase = Some(TenantPhase::Ready);
            status.database_name = Some(p.database_name.clone());
            status.schema_version = Some(p.schema_version);
            status.credentials_secret = Some(p.credentials_secret.clone());
            status.credentials_rotation = p.rotation.clone();
            status.endpoints = Some(TenantEndpoints {
                database: Some(p.database_endpoint.clone()),
                api: p.api_endpoint.clone(),
            });
        }
        Err(f) => {
            let failed = f.step.condition();
            let position = STEPS.iter().position(|c| *c == failed).unwrap_or(0);
            for (i, type_) in STEPS.iter().enumerate() {
                let c = match i.cmp(&position) {
                    std::cmp::Ordering::Less => continue, // done earlier in this run: keep
                    std::cmp::Ordering::Equal => condition(
                        type_,
                        ConditionStatus::False,
                        f.reason,
                        f.message.clone(),
                        generation,
                    ),
                    std::cmp::Ordering::Greater => condition(
                        type_,
                        ConditionStatus::Unknown,
                        "Pending",
                        format!("Waiting for {failed}"),
                        generation,
                    ),
                };
                set_condition(&mut conditions, c);
            }
            for type_ in &STEPS[..position] {
                if !conditions.iter().any(|c| c.type_ == *type_ && c.is_true()) {
                    set_condition(
                        &mut conditions,
                        condition(
                            type_,
                            ConditionStatus::True,
                            "Done",
                            String::new(),
                            generation,
                        ),
                    );
                }
            }
            set_condition(
                &mut conditions,
                condition(
                    READY,
                    ConditionStatus::False,
                    f.reason,
                    f.to_string(),
                    generation,
                ),
            );
            status.phase = Some(if f.retryable {
                TenantPhase::Provisioning
            } else {
                TenantPhase::Failed
            });
        }
    }
    status.conditions = conditions;
    status
}

/// Says on every failing condition when the next attempt is due.
pub fn note_retry(status: &mut TenantStatus, delay: std::time::Duration) {
    for c in status
        .conditions
        .iter_mut()
        .filter(|c| c.status == ConditionStatus::False)
    {
        c.message = format!("{} (retrying in {}s)", c.message, delay.as_secs().max(1));
    }
}

/// Status of a tenant whose deletion cannot complete yet: phase `Deleting`
/// and `Ready=False` with the reason, so `kubectl get/describe` says what
/// holds the finalizer.
pub fn deletion_blocked(
    previous: Option<&TenantStatus>,
    generation: Option<i64>,
    failure: &Failure,
) -> TenantStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(TenantPhase::Deleting);
    let message = if failure.retryable {
        format!("deletion is waiting: {failure}")
    } else {
        format!("deletion needs a human: {failure}")
    };
    set_condition(
        &mut status.conditions,
        condition(
            READY,
            ConditionStatus::False,
            failure.reason,
            message,
            generation,
        ),
    );
    status
}

/// Status of a suspended tenant.
pub fn suspended(previous: Option<&TenantStatus>, generation: Option<i64>) -> TenantStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.phase = Some(TenantPhase::Suspended);
    set_condition(
        &mut status.conditions,
        condition(
            READY,
            ConditionStatus::False,
            "Suspended",
            "spec.suspend is true".into(),
            generation,
        ),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::Step;

    #[test]
    fn failure_marks_its_condition_false_and_later_ones_unknown() {
        let failure = Failure {
            step: Step::Migrate,
            reason: "MigrationChanged",
            message: "migration 1 was changed".into(),
            retryable: false,
        };
        let s = status_after(None, Some(3), "uid", &Err(failure));
        let get = |t: &str| {
            strata_api::condition::find(&s.conditions, t)
                .expect("condition")
                .clone()
        };
        assert_eq!(get(DATABASE_READY).status, ConditionStatus::True);
        assert_eq!(get(MIGRATED).status, ConditionStatus::False);
        assert_eq!(get(MIGRATED).reason, "MigrationChanged");
        assert_eq!(get(SEEDED).status, ConditionStatus::Unknown);
        assert_eq!(get(READY).status, ConditionStatus::False);
        assert_eq!(get(READY).observed_generation, Some(3));
        assert_eq!(s.phase, Some(TenantPhase::Failed));
    }
}
