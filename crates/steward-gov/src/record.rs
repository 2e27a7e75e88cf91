//! What one audit record says. Records are JSON objects with a fixed field order, so the same
//! event always serialises — and hashes — the same way. Empty fields are left out: records are
//! written for every syscall, and their bytes are the audit log's cost.

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at: i64,
    /// What the record reports.
    pub event: AuditEvent,
    /// Who acted: `agent:<name>`, or `run:<id>` for a managed run.
    pub principal: String,
    /// The delegation chain, outermost first (the human or team, the agent, the sub-agents).
    pub chain: Vec<String>,
    /// The delegation links the request came through, first to last, when it came with a
    /// delegated token.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delegations: Vec<String>,
    /// The syscall kind: `llm.call`, `tool.call`, …
    pub action: String,
    /// What it acted on: the model, the tool, …
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The step within the run, or the gateway call's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    /// The approval a policy asked for, and what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// `ok` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_in: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_out: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cost_nanos: i64,
    /// The OpenTelemetry trace the action ran in, when traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What an audit record reports: every record is one of these, written as its snake_case name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// An action and its outcome: a run's step, a gateway call.
    #[default]
    Syscall,
    /// An authorization: what the policy (and approvals, grants) decided.
    Decision,
    /// A credential refused: an unknown, revoked or expired key or token.
    Authentication,
    /// A delegated token presented: its chain checked, allowed or refused.
    Delegation,
    /// A sandbox's outbound connection, allowed or refused.
    Egress,
    /// A run created, an identity suspended or restored, a key issued or revoked.
    Lifecycle,
    /// A change an administrator or agent made through the management API.
    Change,
    /// An administrator's own act under the admin policy (a policy update).
    Admin,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Syscall => "syscall",
            AuditEvent::Decision => "decision",
            AuditEvent::Authentication => "authentication",
            AuditEvent::Delegation => "delegation",
            AuditEvent::Egress => "egress",
            AuditEvent::Lifecycle => "lifecycle",
            AuditEvent::Change => "change",
            AuditEvent::Admin => "admin",
        }
    }
}

impl AuditRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"unserializable":"{e}"}}"#))
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_by_their_names() {
        for e in [
            AuditEvent::Syscall,
            AuditEvent::Decision,
            AuditEvent::Authentication,
            AuditEvent::Delegation,
            AuditEvent::Egress,
            AuditEvent::Lifecycle,
            AuditEvent::Change,
            AuditEvent::Admin,
        ] {
            let r = AuditRecord {
                event: e,
                ..Default::default()
            };
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!(v["event"], e.as_str());
        }
    }
}
