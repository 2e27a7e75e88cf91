//! What one audit record says. Records are JSON objects with a fixed field order, so the same
//! event always serialises — and hashes — the same way. Empty fields are left out: records are
//! written for every syscall, and their bytes are the audit log's cost.

use serde::Serialize;

use crate::policy::Decision;

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
    /// A record of `event`: `principal` (acting with the authority of `chain`, outermost first)
    /// did or asked for `action` on `resource` at `at`. The rest is added by the builders below
    /// or by struct update.
    pub fn new(
        event: AuditEvent,
        at: i64,
        principal: String,
        chain: Vec<String>,
        action: &str,
        resource: &str,
    ) -> Self {
        AuditRecord {
            at,
            event,
            principal,
            chain,
            action: action.to_string(),
            resource: resource.to_string(),
            ..Default::default()
        }
    }

    /// What was decided: `verdict` (`allow`, `deny`, `approval_required`), under the policy
    /// decision `d` when one was made — its policy set's hash, the policies that decided, and
    /// the policies that failed to evaluate.
    pub fn decided(mut self, verdict: &str, d: Option<&Decision>) -> Self {
        self.decision = Some(verdict.to_string());
        if let Some(d) = d {
            self.policy_hash = Some(d.policy_hash.clone());
            self.policy_ids = d.policy_ids.clone();
            if !d.errors.is_empty() {
                self.error = Some(d.errors.join("; "));
            }
        }
        self
    }

    /// The run, and the step within it (or the gateway call's id), the record belongs to.
    pub fn in_run(mut self, run: Option<String>, step: Option<String>) -> Self {
        self.run_id = run;
        self.step = step;
        self
    }

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

    #[test]
    fn a_decision_carries_what_decided_it() {
        let d = Decision {
            allow: false,
            policy_ids: vec!["no-prod".into()],
            policy_hash: "h1".into(),
            errors: vec!["p7: bad attribute".into()],
            approval: None,
        };
        let r = AuditRecord::new(
            AuditEvent::Decision,
            5,
            "run:r1".into(),
            vec!["agent:a".into(), "run:r1".into()],
            "tool.call",
            "http_request",
        )
        .decided("deny", Some(&d))
        .in_run(Some("r1".into()), Some("3".into()));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"at": 5, "event": "decision", "principal": "run:r1",
                "chain": ["agent:a", "run:r1"], "action": "tool.call", "resource": "http_request",
                "run_id": "r1", "step": "3", "decision": "deny", "policy_hash": "h1",
                "policy_ids": ["no-prod"], "error": "p7: bad attribute"})
        );
        // Without a policy decision (a credential refused before any policy ran): the verdict
        // alone.
        let r = AuditRecord::new(
            AuditEvent::Authentication,
            6,
            "key:k".into(),
            vec![],
            "authenticate",
            "k",
        )
        .decided("deny", None);
        assert!(r.policy_hash.is_none() && r.policy_ids.is_empty() && r.error.is_none());
    }
}
