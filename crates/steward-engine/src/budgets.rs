//! Budget accounts as one call sees them — the gateway's and the managed loop's alike: the chain
//! of accounts that govern it, and its worst case at the prices of every deployment it might
//! reach. The hold itself is one conditional update per account in the store.

use std::sync::Arc;

use steward_llm::{Plan, Prices};
use steward_store::BudgetStore;

/// Output tokens assumed for the worst case when a request sets no limit.
pub(crate) const DEFAULT_MAX_OUTPUT: i64 = 4096;

/// Accounts deeper than this are ignored: a parent cycle cannot loop forever.
const MAX_DEPTH: usize = 16;

/// The most tokens a managed run's model call can take in and give out. A token is at least a
/// byte, so the request's size bounds its input from above; its output is its limit, or
/// `DEFAULT_MAX_OUTPUT` (the upstream is then held to that too). The gateway bounds the body
/// a client sent the same way (`Gateway::bounds`).
pub(crate) fn bounds_of(request: &steward_llm::ChatRequest) -> (i64, i64) {
    let tokens_in =
        serde_json::to_vec(&(&request.messages, &request.tools)).map_or(0, |v| v.len() as i64);
    let tokens_out = request.max_tokens.map_or(DEFAULT_MAX_OUTPUT, i64::from);
    (tokens_in, tokens_out)
}

#[derive(Clone)]
pub(crate) struct Budgets {
    pub store: Arc<dyn BudgetStore>,
    pub prices: Prices,
}

impl Budgets {
    /// The accounts that govern a call, leaf to root, from each of `starts` (the run's, the
    /// agent's, a delegation's) up to its root, each account once. Accounts that do not exist
    /// are skipped: no budget, no limit.
    pub async fn chain_from(&self, starts: Vec<String>) -> steward_store::Result<Vec<String>> {
        let mut chain: Vec<String> = Vec::new();
        for first in starts {
            let mut next = Some(first);
            while let Some(account) = next.take() {
                if chain.contains(&account) || chain.len() >= MAX_DEPTH {
                    break;
                }
                match self.store.get_budget(&account).await? {
                    Some(b) => {
                        chain.push(account);
                        next = b.parent;
                    }
                    None => break,
                }
            }
        }
        Ok(chain)
    }

    /// The most the call can cost: `tokens_in` and `tokens_out` at the dearest deployment it
    /// may reach, fallbacks included. Errs naming a deployment that has no price.
    pub fn worst_case(&self, plan: &Plan, tokens_in: i64, tokens_out: i64) -> Result<i64, String> {
        let mut worst = 0;
        for d in plan.all() {
            let cost = self.cost(&d.label, tokens_in, tokens_out).ok_or_else(|| {
                format!(
                    "{} has no price, and a budget applies: add it under [llm.prices]",
                    d.label
                )
            })?;
            worst = worst.max(cost);
        }
        Ok(worst)
    }

    /// Nano-dollars for tokens at a deployment's price (rounded up: a hold never falls short).
    pub fn cost(&self, label: &str, tokens_in: i64, tokens_out: i64) -> Option<i64> {
        self.prices.get(label).map(|p| {
            ((tokens_in.max(0) as f64 * p.input + tokens_out.max(0) as f64 * p.output) * 1000.0)
                .ceil() as i64
        })
    }
}
