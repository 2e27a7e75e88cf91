//! A clock that stands still until the test moves it.

use std::sync::atomic::{AtomicI64, Ordering};

use steward_types::clock::Clock;
use steward_types::{Millis, RunId};

/// Unix milliseconds set by the test; run ids and ids are fresh UUIDv7s as in production.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: Millis) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn set(&self, ms: Millis) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
    fn new_run_id(&self) -> RunId {
        RunId::from_uuid(uuid::Uuid::now_v7())
    }
    fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
        c.set(10);
        assert_eq!(c.now_ms(), 10);
        assert_ne!(c.new_run_id(), c.new_run_id());
    }
}
