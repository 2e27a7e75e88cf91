//! Who is calling the gateway: the agent an API key or a delegated token names, the chain of
//! authority behind it, and the run it says it acts for.

use std::sync::Arc;

use steward_types::{AgentName, RunId};

use crate::delegations::Delegated;

/// Who is calling: the agent an API key or a delegated token names, on whose behalf, and the
/// run it says it is acting for.
#[derive(Clone)]
pub struct Principal {
    pub agent: AgentName,
    /// The API key's id, or the last delegation link's.
    pub key_id: String,
    pub run: Option<RunId>,
    /// Outermost first: `user:<owner>` of the agent that began it, each agent that delegated,
    /// and the caller.
    pub chain: Vec<String>,
    /// The owner of the agent that began the chain: on whose behalf the call is made.
    pub on_behalf_of: Option<String>,
    /// The caller's own owner.
    pub owner: Option<String>,
    /// The verified delegation chain, when the caller presented a token.
    pub delegated: Option<Arc<Delegated>>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("agent", &self.agent)
            .field("key_id", &self.key_id)
            .field("run", &self.run)
            .field("chain", &self.chain)
            .field("links", &self.link_ids())
            .finish()
    }
}

impl Principal {
    pub fn link_ids(&self) -> Vec<String> {
        self.delegated
            .as_ref()
            .map(|d| d.link_ids())
            .unwrap_or_default()
    }

    /// The agents whose authority a call by this principal uses: the one that began its
    /// delegation chain and every holder after it, or the caller alone. Each must be allowed
    /// what the call does.
    pub(crate) fn authorities(&self) -> Vec<&str> {
        let Some(d) = &self.delegated else {
            return vec![self.agent.as_str()];
        };
        let mut agents: Vec<&str> = std::iter::once(d.root_agent())
            .chain(d.links.iter().map(|l| l.holder.as_str()))
            .collect();
        agents.push(self.agent.as_str());
        let mut seen = std::collections::HashSet::new();
        agents.retain(|a| seen.insert(*a));
        agents
    }
}
