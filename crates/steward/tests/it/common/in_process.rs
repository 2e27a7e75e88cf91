//! An engine in this test process over a real store, for tests that need to reach inside
//! (a tool of their own, a meter, a store written to directly) rather than the binary.

use std::path::Path;
use std::sync::Arc;

use steward_engine::meters::Meters;
use steward_engine::{Engine, EngineOptions, SystemClock};
use steward_store::Store;
use steward_tools::Tools;
use steward_types::config::{EngineConfig, StoreConfig};
use steward_types::NodeId;

/// Opens the store at `url` with the default configuration.
pub async fn store(url: &str) -> Arc<dyn Store> {
    steward_store::open(url, &StoreConfig::default())
        .await
        .unwrap()
}

/// Starts an engine on `store` with `tools` and `meters`, no providers but the scripted model,
/// policy that permits everything, and its audit key in `dir`.
pub async fn engine(
    store: Arc<dyn Store>,
    dir: &Path,
    node: &str,
    tools: Tools,
    meters: Meters,
) -> Engine {
    Engine::start(
        store,
        EngineOptions {
            cfg: EngineConfig {
                poll_ms: 20,
                ..EngineConfig::default()
            },
            node: NodeId(node.into()),
            group_commit_max_batch: 64,
            providers: steward_llm::Providers::default(),
            tools,
            clock: Arc::new(SystemClock),
            llm: Default::default(),
            prices: steward_llm::Prices::default(),
            stats: None,
            audit_key: Arc::new(
                steward_gov::AuditKey::load_or_create(&dir.join("audit.key")).unwrap(),
            ),
            gov: Default::default(),
            policies: Arc::new(steward_gov::Policies::new(None).unwrap()),
            vault: None,
            sandboxes: None,
            meters,
            tool_rules: Default::default(),
            embedder: None,
            memory_limits: Default::default(),
            memory_embeddings_model: None,
            memory_curation_model: None,
        },
    )
    .await
    .unwrap()
}
