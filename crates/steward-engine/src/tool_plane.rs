//! What every tool call passes through, from a managed run or an MCP client alike: its
//! arguments checked against the tool's schema (before the tool — an upstream server, say — is
//! asked), its per-minute limits (per tool, agent and run, counted in the store so every node
//! shares them), and, for MCP clients, a cache of read-only and idempotent tools' results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use steward_store::RateStore;
use steward_types::config::{ToolCacheConfig, ToolLimits};

use crate::clock::Clock;

pub(crate) struct ToolPlane {
    pub validators: Validators,
    limits: ToolLimits,
    rates: Arc<dyn RateStore>,
    clock: Arc<dyn Clock>,
    pub cache: ResultCache,
}

impl ToolPlane {
    pub fn new(
        limits: ToolLimits,
        cache: ToolCacheConfig,
        rates: Arc<dyn RateStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ToolPlane {
            validators: Validators::default(),
            limits,
            rates,
            clock,
            cache: ResultCache::new(cache),
        }
    }

    /// Why `args` do not fit tool `name`'s `schema` (with the path of the bad field), if they
    /// do not.
    pub fn check_args(&self, name: &str, schema: &Value, args: &Value) -> Result<(), String> {
        let validator = self.validators.get(name, schema)?;
        match violation(&validator, args) {
            Some(why) => Err(format!("invalid arguments {why}")),
            None => Ok(()),
        }
    }

    /// Counts one call of `tool` by `agent` (in `run`) against every configured limit, all or
    /// none; refused with the limit reached and when to retry.
    pub async fn take_rate(
        &self,
        tool: &str,
        agent: &str,
        run: Option<&str>,
    ) -> Result<(), RateRefusal> {
        let scopes: Vec<(String, i64, i64)> = [
            (self.limits.of_tool(tool), Some(format!("tool:{tool}"))),
            (self.limits.agent, Some(format!("tool-agent:{agent}"))),
            (self.limits.run, run.map(|r| format!("tool-run:{r}"))),
        ]
        .into_iter()
        .filter_map(|(limit, scope)| Some((scope?, limit?, i64::MAX)))
        .collect();
        if scopes.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let window = now - now.rem_euclid(60_000);
        match self.rates.take_request(&scopes, window).await {
            Ok(None) => Ok(()),
            Ok(Some(scope)) => Err(RateRefusal::Limited {
                scope,
                retry_after_s: ((window + 60_000 - now) / 1000 + 1) as u64,
            }),
            Err(e) => Err(RateRefusal::Store(e.to_string())),
        }
    }
}

/// A call not counted.
#[derive(Debug)]
pub(crate) enum RateRefusal {
    Limited {
        scope: String,
        retry_after_s: u64,
    },
    /// The store could not count it: refused rather than let through uncounted.
    Store(String),
}

impl std::fmt::Display for RateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateRefusal::Limited {
                scope,
                retry_after_s,
            } => write!(
                f,
                "rate limit reached for {scope}; retry in {retry_after_s} s"
            ),
            RateRefusal::Store(e) => write!(f, "the tool call could not be counted: {e}"),
        }
    }
}

/// Compiled argument schemas by tool name: compiling one is far dearer than checking with it.
/// A tool whose schema changed (an upstream listed it again) is compiled again.
#[derive(Default)]
pub(crate) struct Validators(Mutex<HashMap<String, (Value, Arc<jsonschema::Validator>)>>);

impl Validators {
    pub fn get(&self, name: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        if let Some((_, v)) = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(name).filter(|(s, _)| s == schema).cloned())
        {
            return Ok(v);
        }
        let v = Arc::new(
            jsonschema::validator_for(schema)
                .map_err(|e| format!("tool {name:?} has an invalid argument schema: {e}"))?,
        );
        if let Ok(mut m) = self.0.lock() {
            m.insert(name.to_string(), (schema.clone(), v.clone()));
        }
        Ok(v)
    }
}

/// The first way `value` breaks the schema, with the path of the field (`at /a: …`).
pub(crate) fn violation(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    validator.iter_errors(value).next().map(|e| {
        let path = e.instance_path.to_string();
        let at = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        format!("at {at}: {e}")
    })
}

/// Entries beyond this are dropped oldest first, a tenth at a time.
const MAX_CACHED: usize = 10_000;
/// A result larger than this is not kept.
const MAX_CACHED_BYTES: usize = 256 * 1024;

/// Results of read-only and idempotent tools on this node, by tool, arguments and caller: the
/// caller's whole chain is in the key, so no identity is answered with what another was given.
pub(crate) struct ResultCache {
    config: ToolCacheConfig,
    map: Mutex<HashMap<[u8; 32], (Instant, Value)>>,
}

impl ResultCache {
    fn new(config: ToolCacheConfig) -> Self {
        ResultCache {
            config,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long tool `name`'s results are kept, if at all.
    pub fn ttl(&self, name: &str) -> Option<Duration> {
        match self.config.ttl_of(name) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The key of a call: tool, arguments (keys in order, so equal arguments give equal keys)
    /// and the caller's chain.
    pub fn key(tool: &str, args: &Value, chain: &[String]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(tool.as_bytes());
        h.update([0]);
        canonical(args, &mut h);
        for link in chain {
            h.update([0]);
            h.update(link.as_bytes());
        }
        h.finalize().into()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Value> {
        let map = self.map.lock().ok()?;
        let (until, v) = map.get(key)?;
        (Instant::now() < *until).then(|| v.clone())
    }

    /// Keeps `value` for `ttl`.
    pub fn put(&self, key: [u8; 32], value: &Value, ttl: Duration) {
        if value.to_string().len() > MAX_CACHED_BYTES {
            return;
        }
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_CACHED {
                let mut ages: Vec<([u8; 32], Instant)> =
                    map.iter().map(|(k, (at, _))| (*k, *at)).collect();
                ages.sort_by_key(|(_, at)| *at);
                for (k, _) in ages.into_iter().take(MAX_CACHED / 10) {
                    map.remove(&k);
                }
            }
            map.insert(key, (Instant::now() + ttl, value.clone()));
        }
    }
}

/// `v` fed to `h` with every object's keys in order, whatever order they came in.
fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                h.update(Value::String(k.clone()).to_string().as_bytes());
                h.update(b":");
                canonical(&m[k], h);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for x in a {
                canonical(x, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        scalar => h.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_schema_is_compiled_again() {
        let v = Validators::default();
        let loose = json!({"type": "object"});
        let strict = json!({"type": "object", "required": ["a"]});
        assert!(violation(&v.get("t", &loose).unwrap(), &json!({})).is_none());
        let why = violation(&v.get("t", &strict).unwrap(), &json!({})).unwrap();
        assert!(why.contains("\"a\""), "{why}");
    }

    #[test]
    fn cache_keys_separate_callers_and_arguments() {
        let a = ResultCache::key("t", &json!({"x": 1, "y": 2}), &["user:a".into()]);
        let same = ResultCache::key("t", &json!({"y": 2, "x": 1}), &["user:a".into()]);
        let other_caller = ResultCache::key("t", &json!({"x": 1, "y": 2}), &["user:b".into()]);
        let other_args = ResultCache::key("t", &json!({"x": 2, "y": 2}), &["user:a".into()]);
        let other_tool = ResultCache::key("u", &json!({"x": 1, "y": 2}), &["user:a".into()]);
        assert_eq!(a, same, "argument order does not matter");
        for k in [other_caller, other_args, other_tool] {
            assert_ne!(a, k);
        }
    }

    #[test]
    fn cached_results_expire_and_oversized_ones_are_not_kept() {
        let c = ResultCache::new(ToolCacheConfig::default());
        let k = ResultCache::key("t", &json!({}), &[]);
        c.put(k, &json!({"r": 1}), Duration::from_secs(60));
        assert_eq!(c.get(&k), Some(json!({"r": 1})));
        let gone = ResultCache::key("gone", &json!({}), &[]);
        c.put(gone, &json!({"r": 2}), Duration::ZERO);
        assert_eq!(c.get(&gone), None, "past its TTL");
        let big = ResultCache::key("big", &json!({}), &[]);
        c.put(
            big,
            &json!("x".repeat(MAX_CACHED_BYTES + 1)),
            Duration::from_secs(60),
        );
        assert_eq!(c.get(&big), None);
    }
}
