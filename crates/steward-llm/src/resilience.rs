//! Retries and circuit breakers for deployments. A transient failure is retried with
//! exponential backoff and jitter, or after the upstream's `Retry-After`; a deployment that
//! keeps failing is skipped (its breaker opens) until a cooldown passes, then one probe decides.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long to wait before retry number `attempt` (0-based): the upstream's `Retry-After` when it
/// gave one, else `base × 2^attempt`, scaled by a jitter factor in [0.5, 1.0) derived from `seed`
/// (so concurrent callers spread out, and a given call is reproducible).
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    retry_after: Option<Duration>,
    seed: u64,
) -> Duration {
    if let Some(d) = retry_after {
        return d;
    }
    let exp = base.saturating_mul(1u32 << attempt.min(10));
    // splitmix64 of the seed and attempt: cheap, well spread.
    let mut z = seed.wrapping_add(u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let factor = 0.5 + (z >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
    exp.mul_f64(factor)
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// One breaker per deployment label, in this process. Circuits this process opens are handed
/// out once (`take_opened`) for the engine to share with the fleet, and circuits other nodes
/// opened are applied here (`open_elsewhere`): one node's bad news spares the others the same
/// failures.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    states: Mutex<HashMap<String, Breaker>>,
    opened: Mutex<Vec<(String, Instant)>>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            states: Mutex::new(HashMap::new()),
            opened: Mutex::new(Vec::new()),
        }
    }

    /// Circuits opened here since the last call, with when each reopens for a probe.
    pub fn take_opened(&self) -> Vec<(String, Instant)> {
        self.opened
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    /// Applies a circuit another node opened: calls here skip `label` until `until` too. A
    /// circuit already open for longer stays as it is.
    pub fn open_elsewhere(&self, label: &str, until: Instant) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let b = states.entry(label.to_string()).or_default();
        if b.open_until.is_none_or(|u| u < until) {
            if b.open_until.is_none() {
                tracing::warn!(deployment = label, "circuit opened by another node");
            }
            b.open_until = Some(until);
            b.probing = false;
        }
    }

    /// The circuits open now, and how long each stays open.
    pub fn open_now(&self, now: Instant) -> Vec<(String, Duration)> {
        let Ok(states) = self.states.lock() else {
            return Vec::new();
        };
        let mut open: Vec<(String, Duration)> = states
            .iter()
            .filter_map(|(l, b)| {
                let until = b.open_until?;
                (until > now).then(|| (l.clone(), until - now))
            })
            .collect();
        open.sort();
        open
    }

    /// Whether a call may go to `label` now. After the cooldown one call is let through as a
    /// probe; the others keep being refused until it reports.
    pub fn allow(&self, label: &str, now: Instant) -> bool {
        let Ok(mut states) = self.states.lock() else {
            return true;
        };
        let b = states.entry(label.to_string()).or_default();
        match b.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if b.probing => false,
            Some(_) => {
                b.probing = true;
                true
            }
        }
    }

    pub fn success(&self, label: &str) {
        if let Ok(mut states) = self.states.lock() {
            states.insert(label.to_string(), Breaker::default());
        }
    }

    pub fn failure(&self, label: &str, now: Instant) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let b = states.entry(label.to_string()).or_default();
        b.consecutive_failures += 1;
        if b.probing || b.consecutive_failures >= self.threshold {
            b.open_until = Some(now + self.cooldown);
            b.probing = false;
            if let Ok(mut o) = self.opened.lock() {
                o.push((label.to_string(), now + self.cooldown));
            }
            tracing::warn!(
                deployment = label,
                failures = b.consecutive_failures,
                "circuit opened"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_honour_retry_after() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let d = retry_delay(attempt, base, None, 42);
            let full = base * (1 << attempt);
            assert!(d >= full / 2 && d < full, "attempt {attempt}: {d:?}");
        }
        assert_ne!(
            retry_delay(1, base, None, 1),
            retry_delay(1, base, None, 2),
            "different calls spread out"
        );
        assert_eq!(
            retry_delay(0, base, Some(Duration::from_secs(3)), 7),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_breaker_opens_probes_and_closes() {
        let b = Breakers::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.failure("d", t0);
        }
        assert!(b.allow("d", t0), "two failures keep it closed");
        b.failure("d", t0);
        assert!(
            !b.allow("d", t0 + Duration::from_secs(1)),
            "open after three"
        );
        let later = t0 + Duration::from_secs(11);
        assert!(b.allow("d", later), "one probe after the cooldown");
        assert!(!b.allow("d", later), "only one");
        b.failure("d", later);
        assert!(
            !b.allow("d", later + Duration::from_secs(1)),
            "a failed probe reopens it"
        );
        let much_later = later + Duration::from_secs(11);
        assert!(b.allow("d", much_later));
        b.success("d");
        assert!(
            b.allow("d", much_later) && b.allow("d", much_later),
            "a good probe closes it"
        );
    }
}
