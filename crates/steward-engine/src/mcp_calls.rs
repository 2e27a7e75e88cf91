//! Tool calls in flight through `/mcp` on this node, by caller and JSON-RPC request id: what a
//! client of the earlier revision names when it cancels a call with `notifications/cancelled`
//! (at the current revision a client closes the request instead). `/mcp` is stateless, so an
//! id is only known with the caller; two calls of one agent under the same id (two clients
//! sharing a key) are ambiguous, and a notification naming them cancels neither. A
//! notification that reaches a node not running the call is left in the store, where the
//! nodes with calls in flight look every [`LOOK_EVERY`] for calls that started before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_store::McpTaskStore;
use steward_types::Millis;
use tokio_util::sync::CancellationToken;

use crate::Clock;

/// How often a node with calls in flight looks for cancellations other nodes received.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How long such a cancellation is looked at (then forgotten).
const KEPT_MS: Millis = 10_000;
/// Nodes' clocks may differ this much: a call that started up to this long after a
/// cancellation was asked may still be the one it names.
const SKEW_MS: Millis = 1_000;

type Key = (String, String);
/// A call: its number here, when it started, how it is given up.
type Call = (u64, Millis, CancellationToken);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // One insert or removal under the lock: a panic leaves nothing half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calls running here.
#[derive(Default)]
struct Local {
    calls: Mutex<HashMap<Key, Vec<Call>>>,
    next: AtomicU64,
}

impl Local {
    fn track(self: &Arc<Self>, key: Key, started: Millis, cancel: CancellationToken) -> Tracked {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls)
            .entry(key.clone())
            .or_default()
            .push((n, started, cancel));
        Tracked {
            local: self.clone(),
            key,
            n,
        }
    }

    /// Gives up `agent`'s call `request_id` if exactly one such call, started by `before`, is
    /// in flight here.
    fn cancel(&self, agent: &str, request_id: &str, before: Millis) -> bool {
        let calls = lock(&self.calls);
        match calls
            .get(&(agent.to_string(), request_id.to_string()))
            .map(Vec::as_slice)
        {
            Some([(_, started, cancel)]) if *started <= before => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.calls).is_empty()
    }
}

/// Keeps a call findable while it lives.
pub struct Tracked {
    local: Arc<Local>,
    key: Key,
    n: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut calls = lock(&self.local.calls);
        if let Some(v) = calls.get_mut(&self.key) {
            v.retain(|(n, _, _)| *n != self.n);
            if v.is_empty() {
                calls.remove(&self.key);
            }
        }
    }
}

pub struct McpCalls {
    local: Arc<Local>,
    store: Arc<dyn McpTaskStore>,
    clock: Arc<dyn Clock>,
}

impl McpCalls {
    pub fn new(store: Arc<dyn McpTaskStore>, clock: Arc<dyn Clock>) -> Arc<McpCalls> {
        Arc::new(McpCalls {
            local: Arc::default(),
            store,
            clock,
        })
    }

    /// `agent`'s call `request_id` (its JSON text), given up through `cancel`.
    pub fn track(&self, agent: &str, request_id: &str, cancel: CancellationToken) -> Tracked {
        let key = (agent.to_string(), request_id.to_string());
        self.local.track(key, self.clock.now_ms(), cancel)
    }

    /// Gives up `agent`'s call `request_id`: here if it runs here, else through the store for
    /// the node that runs it. Whether it was found here.
    pub async fn cancel(&self, agent: &str, request_id: &str) -> bool {
        let now = self.clock.now_ms();
        if self.local.cancel(agent, request_id, now) {
            return true;
        }
        if let Err(e) = self
            .store
            .request_mcp_call_cancel(agent, request_id, now)
            .await
        {
            tracing::warn!(agent, request_id, error = %e, "could not pass a cancellation on to the other nodes");
        }
        false
    }

    /// Gives up the calls here that other nodes were asked to cancel.
    pub async fn follow(&self) -> steward_store::Result<()> {
        if self.local.is_empty() {
            return Ok(());
        }
        let since = self.clock.now_ms() - KEPT_MS;
        for (agent, request_id, at) in self.store.mcp_call_cancels(since).await? {
            self.local.cancel(&agent, &request_id, at + SKEW_MS);
        }
        Ok(())
    }

    /// Forgets cancellations no call can be waiting for any more.
    pub async fn prune(&self) -> steward_store::Result<()> {
        self.store
            .prune_mcp_call_cancels(self.clock.now_ms() - KEPT_MS)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_cancelled_by_its_caller_and_id_only_when_unambiguous() {
        let local = Arc::new(Local::default());
        let key = |a: &str, id: &str| (a.to_string(), id.to_string());
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let tracked_a = local.track(key("alice", "1"), 100, a.clone());
        assert!(!local.cancel("bob", "1", 200), "another caller's id");
        assert!(!local.cancel("alice", "2", 200));
        assert!(!a.is_cancelled());
        {
            let _b = local.track(key("alice", "7"), 100, b.clone());
            let _c = local.track(key("alice", "7"), 100, c.clone());
            assert!(!local.cancel("alice", "7", 200), "two calls under one id");
            assert!(!b.is_cancelled() && !c.is_cancelled());
        }
        assert!(
            !local.cancel("alice", "1", 50),
            "asked before the call started: another call of that id"
        );
        assert!(local.cancel("alice", "1", 200));
        assert!(a.is_cancelled());
        drop(tracked_a);
        assert!(!local.cancel("alice", "1", 200), "ended: forgotten");
        assert!(local.is_empty());
    }
}
