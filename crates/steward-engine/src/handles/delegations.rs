//! Delegation links: minted by agents through the gateway, listed, and revoked with
//! everything below them.

use crate::*;

/// `Engine::delegations()`.
pub struct Delegations<'a>(pub(crate) &'a Engine);

impl Delegations<'_> {
    /// A delegated token for agent `to`, narrower than the caller's own credential.
    pub async fn mint(
        &self,
        who: &Principal,
        to: &str,
        req: steward_gov::delegation::Requested,
    ) -> Result<(steward_store::DelegationRecord, String), GatewayError> {
        self.0.inner.gateway.delegate(who, to, req).await
    }

    /// Revokes a delegation link and everything below it, at once on this node (within a
    /// second on the others); audited with the reason and the links it cut off.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Vec<String>> {
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest("reason: required".into()));
        }
        let cut = self
            .0
            .store()
            .revoke_delegation(id, reason, self.0.inner.shared.clock.now_ms())
            .await?
            .ok_or_else(|| Error::NotFound(format!("no delegation {id}")))?;
        self.0.inner.gateway.authority.delegations.forget();
        self.0.inner.gateway.chains.clear();
        self.0
            .audit_admin(
                "delegation.revoke",
                id,
                true,
                &format!("{reason} (cuts off {})", cut.join(", ")),
            )
            .await?;
        Ok(cut)
    }

    pub async fn list(&self, limit: i64) -> Result<Vec<steward_store::DelegationRecord>> {
        Ok(self
            .0
            .store()
            .list_delegations(limit.clamp(1, 1000))
            .await?)
    }

    pub async fn get(&self, id: &str) -> Result<steward_store::DelegationRecord> {
        self.0
            .store()
            .get_delegation(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no delegation {id}")))
    }
}
