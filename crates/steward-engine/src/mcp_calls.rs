//! Tool calls in flight through `/mcp` on this node, by caller and JSON-RPC request id: what a
//! client of the earlier revision names when it cancels a call with `notifications/cancelled`
//! (at the current revision a client closes the request instead). `/mcp` is stateless, so an
//! id is only known with the caller; two calls of one agent under the same id (two clients
//! sharing a key) are ambiguous, and a notification naming them cancels neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

type Key = (String, String);

#[derive(Default)]
pub struct McpCalls {
    calls: Mutex<HashMap<Key, Vec<(u64, CancellationToken)>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // One insert or removal under the lock: a panic leaves nothing half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a call findable while it lives.
pub struct Tracked {
    calls: Arc<McpCalls>,
    key: Key,
    n: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut calls = lock(&self.calls.calls);
        if let Some(v) = calls.get_mut(&self.key) {
            v.retain(|(n, _)| *n != self.n);
            if v.is_empty() {
                calls.remove(&self.key);
            }
        }
    }
}

impl McpCalls {
    /// `agent`'s call `request_id` (its JSON text), given up through `cancel`.
    pub fn track(
        self: &Arc<Self>,
        agent: &str,
        request_id: &str,
        cancel: CancellationToken,
    ) -> Tracked {
        let key = (agent.to_string(), request_id.to_string());
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls)
            .entry(key.clone())
            .or_default()
            .push((n, cancel));
        Tracked {
            calls: self.clone(),
            key,
            n,
        }
    }

    /// Gives up `agent`'s call `request_id` if exactly one such call is in flight here.
    pub fn cancel(&self, agent: &str, request_id: &str) -> bool {
        let calls = lock(&self.calls);
        match calls
            .get(&(agent.to_string(), request_id.to_string()))
            .map(Vec::as_slice)
        {
            Some([(_, cancel)]) => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_cancelled_by_its_caller_and_id_only_when_unambiguous() {
        let calls = Arc::new(McpCalls::default());
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let _a = calls.track("alice", "1", a.clone());
        assert!(!calls.cancel("bob", "1"), "another caller's id");
        assert!(!calls.cancel("alice", "2"));
        assert!(!a.is_cancelled());
        {
            let _b = calls.track("alice", "7", b.clone());
            let _c = calls.track("alice", "7", c.clone());
            assert!(!calls.cancel("alice", "7"), "two calls under one id");
            assert!(!b.is_cancelled() && !c.is_cancelled());
        }
        assert!(calls.cancel("alice", "1"));
        assert!(a.is_cancelled());
        drop(_a);
        assert!(!calls.cancel("alice", "1"), "ended: forgotten");
        assert!(lock(&calls.calls).is_empty());
    }
}
