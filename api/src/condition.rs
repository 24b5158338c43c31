//! Status conditions in the standard Kubernetes shape (`metav1.Condition`).
//!
//! Conditions are a list-map keyed on `type`, so server-side apply merges them
//! entry by entry instead of replacing the whole list.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type in CamelCase, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// The `.metadata.generation` this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (not when it was last checked).
    pub last_transition_time: Time,
    /// Machine-readable reason in CamelCase.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Schema of a `conditions` field: a list-map keyed on `type`.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<Condition>();
    schemars::json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// Sets `new` in `conditions`, keeping `lastTransitionTime` when the status did not
/// change, so the time says when the condition last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: ConditionStatus, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            observed_generation: Some(1),
            last_transition_time: Time(at.parse().expect("timestamp")),
            reason: "R".into(),
            message: String::new(),
        }
    }

    #[test]
    fn transition_time_changes_only_when_status_flips() {
        let mut list = vec![cond(
            "Ready",
            ConditionStatus::False,
            "2026-01-01T00:00:00Z",
        )];
        set_condition(
            &mut list,
            cond("Ready", ConditionStatus::False, "2026-02-01T00:00:00Z"),
        );
        assert_eq!(
            list[0].last_transition_time.0.to_string(),
            "2026-01-01T00:00:00Z"
        );
        set_condition(
            &mut list,
            cond("Ready", ConditionStatus::True, "2026-03-01T00:00:00Z"),
        );
        assert_eq!(
            list[0].last_transition_time.0.to_string(),
            "2026-03-01T00:00:00Z"
        );
        set_condition(
            &mut list,
            cond("Migrated", ConditionStatus::True, "2026-03-01T00:00:00Z"),
        );
        assert_eq!(list.len(), 2);
    }
}
