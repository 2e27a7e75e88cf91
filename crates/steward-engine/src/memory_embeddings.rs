//! Memory's embeddings from an OpenAI-compatible embeddings endpoint, through the router
//! (`[memory] embeddings_model`), instead of the model run in process. Each call is the
//! gateway's: made as the agent `memory` — decided by policy like any agent's call, held on
//! and charged to the budget account `agent:memory` and the accounts above it, audited as
//! `llm.embeddings` — so what memory spends on embeddings has an account of its own.

use std::sync::{Arc, OnceLock, Weak};

use serde_json::{json, Value};
use steward_types::AgentName;

use crate::{GatewayReply, Inner, Principal};

/// The agent memory's embedding calls are made as.
pub const MEMORY_AGENT: &str = "memory";

pub(crate) struct RouterEmbedder {
    model: String,
    /// The engine, once it is running (it holds memory, which holds this: weak, so neither
    /// keeps the other alive).
    engine: OnceLock<Weak<Inner>>,
    runtime: tokio::runtime::Handle,
}

impl RouterEmbedder {
    pub fn new(model: String) -> RouterEmbedder {
        RouterEmbedder {
            model,
            engine: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub fn attach(&self, engine: &Arc<Inner>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn principal() -> Principal {
        Principal {
            agent: AgentName::parse(MEMORY_AGENT).unwrap_or_else(|_| unreachable!()),
            key_id: MEMORY_AGENT.into(),
            run: None,
            chain: vec![format!("agent:{MEMORY_AGENT}")],
            on_behalf_of: None,
            owner: None,
            delegated: None,
        }
    }
}

impl steward_memory::Embedder for RouterEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    /// Called off the async runtime (memory embeds on blocking threads), so it may wait on it.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let engine = self
            .engine
            .get()
            .and_then(Weak::upgrade)
            .ok_or("the engine is not running yet")?;
        let body = json!({"model": self.model, "input": texts});
        let reply = self
            .runtime
            .block_on(engine.gateway.embeddings(&Self::principal(), body))
            .map_err(|e| format!("{} through the router: {e}", self.model))?;
        let GatewayReply::Json(v) = reply else {
            return Err(format!("{}: the answer was not JSON", self.model));
        };
        vectors_of(&v, texts.len()).map_err(|e| format!("{}: {e}", self.model))
    }
}

/// The vectors of an OpenAI embeddings answer, in input order, each scaled to unit length.
fn vectors_of(v: &Value, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let data = v["data"]
        .as_array()
        .ok_or("the answer has no `data` array")?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (i, d) in data.iter().enumerate() {
        let at = d["index"].as_u64().map_or(i, |n| n as usize);
        let vector: Vec<f32> = d["embedding"]
            .as_array()
            .ok_or("an item has no `embedding` array (ask for encoding_format float)")?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or("an embedding holds something other than numbers")?;
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if vector.is_empty() || !norm.is_finite() || norm == 0.0 {
            return Err("an embedding is empty, zero or not finite".into());
        }
        let slot = out
            .get_mut(at)
            .ok_or_else(|| format!("an embedding for input {at}, of {expected}"))?;
        *slot = Some(vector.iter().map(|x| x / norm).collect());
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("{} embeddings for {expected} inputs", data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_in_input_order_and_scaled() {
        let v = json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 4.0]}
        ]});
        assert_eq!(vectors_of(&v, 2).unwrap(), [vec![0.6, 0.8], vec![0.0, 1.0]]);
        for (bad, says) in [
            (json!({}), "data"),
            (
                json!({"data": [{"index": 0, "embedding": "x"}]}),
                "embedding",
            ),
            (json!({"data": [{"index": 0, "embedding": [0.0]}]}), "zero"),
            (
                json!({"data": [{"index": 5, "embedding": [1.0]}]}),
                "input 5",
            ),
            (json!({"data": []}), "0 embeddings for 1"),
        ] {
            let e = vectors_of(&bad, 1).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
