//! Agents' identities as every syscall sees them: whether the agent may act at all (a
//! suspended or revoked agent may not, whatever the policy says). Read at most once a second
//! per agent; a change made through this node applies here at once, elsewhere within the second.

use std::sync::Arc;

use steward_store::{IdentityRecord, IdentityStore};

use crate::ttl_cache::TtlCache;

pub(crate) struct Identities {
    store: Arc<dyn IdentityStore>,
    cache: TtlCache<String, Option<IdentityRecord>>,
}

impl Identities {
    pub fn new(store: Arc<dyn IdentityStore>) -> Self {
        Identities {
            store,
            cache: TtlCache::new(crate::ttl_cache::LOOKUP_TTL),
        }
    }

    async fn record(&self, agent: &str) -> steward_store::Result<Option<IdentityRecord>> {
        Ok(match self.cache.get(&agent.to_string()) {
            Some(r) => r,
            None => {
                let r = self.store.get_identity(agent).await?;
                self.cache.put(agent.to_string(), r.clone());
                r
            }
        })
    }

    /// The human or team that owns `agent`, if one was recorded.
    pub async fn owner(&self, agent: &str) -> steward_store::Result<Option<String>> {
        Ok(self.record(agent).await?.and_then(|r| r.owner))
    }

    /// Why `agent` may not act now, if it may not.
    pub async fn barred(&self, agent: &str) -> steward_store::Result<Option<String>> {
        let rec = self.record(agent).await?;
        Ok(rec.filter(|r| r.status != "active").map(|r| {
            format!(
                "agent {agent} is {}: {}",
                r.status,
                r.reason.unwrap_or_default()
            )
        }))
    }

    pub fn forget(&self) {
        self.cache.clear();
    }
}
