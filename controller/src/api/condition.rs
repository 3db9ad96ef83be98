use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition every object carries; `status` is "True" or "False".
pub const READY: &str = "Ready";

/// A standard Kubernetes-style condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn ready(ok: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Condition {
            type_: READY.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Finds the Ready condition in a list.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// Now, as Kubernetes writes condition times: RFC 3339, whole seconds,
/// truncated (never a moment in the future).
pub fn now_rfc3339() -> String {
    use k8s_openapi::jiff::{RoundMode, Timestamp, TimestampRound, Unit};
    Timestamp::now().round(TimestampRound::new().smallest(Unit::Second).mode(RoundMode::Trunc)).map(|t| t.to_string()).unwrap_or_default()
}

/// Replaces the condition of the same type, keeping `lastTransitionTime`
/// when the status did not flip (so a steady object's status never changes).
pub fn merge_condition(existing: &[Condition], mut new: Condition, now: &str) -> Vec<Condition> {
    let old = existing.iter().find(|c| c.type_ == new.type_);
    new.last_transition_time = match old {
        Some(old) if old.status == new.status => old.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let mut out: Vec<Condition> = existing.iter().filter(|c| c.type_ != new.type_).cloned().collect();
    out.push(new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_is_unchanged() {
        let first = merge_condition(&[], Condition::ready(true, "Ready", "ok"), "t1");
        let second = merge_condition(&first, Condition::ready(true, "Ready", "still ok"), "t2");
        assert_eq!(second[0].last_transition_time.as_deref(), Some("t1"));
        let third = merge_condition(&second, Condition::ready(false, "Broken", "no"), "t3");
        assert_eq!(third[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(third.len(), 1);
    }
}
