//! Agents' API keys: issued (the secret shown once), listed, revoked, rotated; each audited.

use crate::*;

/// `Engine::keys()`.
pub struct Keys<'a>(pub(crate) &'a Engine);

impl Keys<'_> {
    /// Issues an API key for an agent. The secret is returned once and stored only as a hash.
    pub async fn create(
        &self,
        agent: &str,
        ttl_s: Option<i64>,
    ) -> Result<(steward_store::ApiKeyRecord, String)> {
        let name = AgentName::parse(agent)
            .map_err(|e| Error::InvalidRequest(format!("agent: {}", e.0)))?;
        if let Some(t) = ttl_s {
            if !(1..=366 * 86_400).contains(&t) {
                return Err(Error::InvalidRequest(
                    "ttl_s: from 1 second to a year".into(),
                ));
            }
        }
        let (rec, secret) = self
            .0
            .inner
            .gateway
            .create_key(&name, ttl_s.map(|t| t * 1000))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        self.0
            .audit_lifecycle("key.create", &format!("agent:{agent}"), &rec.id, "")
            .await?;
        Ok((rec, secret))
    }

    /// Revokes a key at once (on this node; on others within a second), with the reason.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<steward_store::ApiKeyRecord> {
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest("reason: required".into()));
        }
        let rec = self
            .0
            .store()
            .revoke_key(id, reason, self.0.inner.shared.clock.now_ms())
            .await
            .map_err(|e| match e {
                steward_store::Error::Conflict(m) => Error::Conflict(m),
                other => other.into(),
            })?
            .ok_or_else(|| Error::NotFound(format!("no key {id}")))?;
        self.0.inner.gateway.forget_keys();
        self.0
            .audit_lifecycle("key.revoke", &format!("agent:{}", rec.agent), id, reason)
            .await?;
        Ok(rec)
    }

    /// A new key for the same agent (and the same lifetime), and the old one revoked.
    pub async fn rotate(&self, id: &str) -> Result<(steward_store::ApiKeyRecord, String)> {
        let old = self
            .0
            .store()
            .get_key(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no key {id}")))?;
        let ttl_s = old.expires_at.map(|e| ((e - old.created_at) / 1000).max(1));
        let fresh = self.create(&old.agent, ttl_s).await?;
        self.revoke(id, &format!("rotated; replaced by {}", fresh.0.id))
            .await?;
        Ok(fresh)
    }

    pub async fn list(&self, agent: Option<&str>) -> Result<Vec<steward_store::ApiKeyRecord>> {
        Ok(self.0.store().list_keys(agent).await?)
    }
}
