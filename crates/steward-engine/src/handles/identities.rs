//! Agents' identities: their owner and status (active, suspended, revoked, deleted); each
//! change audited.

use crate::*;

/// `Engine::identities()`.
pub struct Identities<'a>(pub(crate) &'a Engine);

impl Identities<'_> {
    /// Suspends (`suspended`), resumes (`active`), revokes (`revoked`, for good) or deletes
    /// (`deleted`: for good, and every key it has is revoked) an agent's identity, with the
    /// reason; optionally records its owner.
    pub async fn set(
        &self,
        agent: &str,
        status: &str,
        owner: Option<&str>,
        reason: &str,
    ) -> Result<steward_store::IdentityRecord> {
        AgentName::parse(agent).map_err(|e| Error::InvalidRequest(format!("agent: {}", e.0)))?;
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest("reason: required".into()));
        }
        let rec = self
            .0
            .store()
            .set_identity(
                agent,
                status,
                owner,
                reason,
                self.0.inner.shared.clock.now_ms(),
            )
            .await
            .map_err(|e| match e {
                steward_store::Error::Conflict(m) => Error::Conflict(m),
                other => other.into(),
            })?;
        self.0.inner.kernel.authority.identities.forget();
        if status == "deleted" {
            for k in self.0.store().list_keys(Some(agent)).await? {
                if k.revoked_at.is_none() {
                    let why = format!("agent deleted: {reason}");
                    self.0.keys().revoke(&k.id, &why).await?;
                }
            }
        }
        self.0
            .audit_lifecycle(
                &format!("identity.{status}"),
                &format!("agent:{agent}"),
                agent,
                reason,
            )
            .await?;
        Ok(rec)
    }

    pub async fn get(&self, agent: &str) -> Result<Option<steward_store::IdentityRecord>> {
        Ok(self.0.store().get_identity(agent).await?)
    }
}
