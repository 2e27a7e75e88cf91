//! Resources the server prices that tool calls use, such as sandbox CPU. A tool names its
//! meter (`Tool::meter`); the Kernel holds the meter's worst case against the run's budgets
//! before the call and charges what the call used after it. No tool is named here or in the
//! Kernel: a new metered tool is its own file plus a meter registered at start.

use std::collections::BTreeMap;
use std::sync::Arc;

/// How one metered resource is priced.
pub trait Meter: Send + Sync {
    /// What one call may cost at most, in nano-dollars; `None` when the resource is free.
    fn worst_case_nanos(&self) -> Option<i64>;
    /// What `used` units of the resource cost, in nano-dollars.
    fn cost_nanos(&self, used: u64) -> i64;
}

/// The server's meters, by name (`steward_tools::SANDBOX_CPU_MS`, ...).
#[derive(Clone, Default)]
pub struct Meters(BTreeMap<&'static str, Arc<dyn Meter>>);

impl Meters {
    pub fn insert(&mut self, name: &'static str, meter: Arc<dyn Meter>) {
        self.0.insert(name, meter);
    }

    /// The worst case of one call on `meter`, when it is priced.
    pub fn worst_case_nanos(&self, meter: &str) -> Option<i64> {
        self.0.get(meter)?.worst_case_nanos()
    }

    /// What `used` units of `meter` cost (0 for a meter no one prices).
    pub fn cost_nanos(&self, meter: &str, used: u64) -> i64 {
        self.0.get(meter).map_or(0, |m| m.cost_nanos(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct PerUnit(i64);

    impl Meter for PerUnit {
        fn worst_case_nanos(&self) -> Option<i64> {
            Some(self.0 * 10)
        }
        fn cost_nanos(&self, used: u64) -> i64 {
            self.0 * used as i64
        }
    }

    #[test]
    fn unknown_meters_cost_nothing_and_hold_nothing() {
        let mut m = Meters::default();
        m.insert("cpu", Arc::new(PerUnit(3)));
        assert_eq!(m.worst_case_nanos("cpu"), Some(30));
        assert_eq!(m.cost_nanos("cpu", 4), 12);
        assert_eq!(m.worst_case_nanos("gpu"), None);
        assert_eq!(m.cost_nanos("gpu", 4), 0);
    }
}
