//! Approvals a policy asked for: listed, and decided by an approver.

use crate::*;

/// `Engine::approvals()`.
pub struct Approvals<'a>(pub(crate) &'a Engine);

impl Approvals<'_> {
    /// Approvals policies asked for, newest first; `state` filters (`pending`, `approved`,
    /// `denied`, `expired`).
    pub async fn list(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<steward_store::ApprovalRecord>> {
        if let Some(s) = state {
            if !matches!(s, "pending" | "approved" | "denied" | "expired") {
                return Err(Error::InvalidRequest(format!(
                    "state: {s:?} is not pending, approved, denied or expired"
                )));
            }
        }
        Ok(self.0.store().list_approvals(state, limit).await?)
    }

    /// Approves or denies a pending approval; its run resumes and its step acts, or is denied.
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        by: &str,
    ) -> Result<steward_store::ApprovalRecord> {
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "reason: required — say why, for the audit log".into(),
            ));
        }
        let rec = self
            .0
            .store()
            .decide_approval(id, approve, reason, by, self.0.inner.shared.clock.now_ms())
            .await
            .map_err(|e| match e {
                steward_store::Error::Conflict(m) => Error::Conflict(m),
                other => other.into(),
            })?
            .ok_or_else(|| Error::NotFound(format!("no approval {id}")))?;
        self.0.inner.shared.wake.notify_one();
        Ok(rec)
    }
}
