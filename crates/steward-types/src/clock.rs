//! Time and ids come from here, not from globals, so tests can control them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Millis, RunId};

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
    fn new_run_id(&self) -> RunId;
    /// A fresh unique id with a prefix (`call_…`, `key_…`).
    fn new_id(&self, prefix: &str) -> String;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
    fn new_run_id(&self) -> RunId {
        RunId::from_uuid(uuid::Uuid::now_v7())
    }
    fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
    }
}
