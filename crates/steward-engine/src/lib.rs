//! The engine: the Kernel (the syscall path), durable runs driven from their journal, and the
//! scheduler that leases runs to this node and keeps the leases alive.

mod active;
mod agent_loop;
pub mod alerts;
mod authority;
mod budgets;
mod clock;
mod compensation;
mod costs;
pub mod curation;
mod delegations;
mod error;
pub mod evaluation;
mod gateway;
pub mod handles;
mod host;
mod housekeeping;
mod identities;
mod kernel;
mod launch;
pub mod mcp_calls;
pub mod mcp_tasks;
pub mod memory_embeddings;
mod memory_tools;
pub mod meters;
mod metrics;
pub mod oauth;
pub mod openapis;
mod principal;
mod runs;
pub mod sandboxes;
mod tool_plane;
pub mod tool_search;
mod ttl_cache;
mod upstream_oauth;
pub mod upstreams;
pub mod vault;
mod workspace_sync;

pub use steward_orchestrate::{
    merge_queue, schedules, supervisors, tasks, Error as OrchestrateError,
};

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use steward_llm::Providers;
use steward_store::{
    AgentRecord, JournalEntry, JournalWriter, NewAgent, NewRun, RunFilter, RunRecord, Store,
};
use steward_tools::Tools;
use steward_types::config::EngineConfig;
use steward_types::manifest::parse_documents;
use steward_types::{AgentName, AgentSpec, NodeId, RunId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use clock::{Clock, SystemClock};
pub use costs::{CostBy, CostLine, OutcomeCosts};
pub use delegations::Delegated;
pub use error::{Error, Result};
pub use gateway::{
    Approval, GatewayApi, GatewayError, GatewayReply, Principal, ToolCallError, ToolView,
};
pub use kernel::{
    Journaled, Kernel, ModelCall, RunCtx, StepError, StepStats, Syscall, ToolCall, ToolResult,
};

use active::{stop_cancelled, ActiveRuns, Stop};
use host::{Host, Shared};

/// A change made through the management API, for its audit record.
#[derive(Clone, Debug)]
pub struct Change {
    /// `admin:…` or `agent:<name>`.
    pub principal: String,
    pub chain: Vec<String>,
    /// The method and the route (`PUT /api/v1/schedules/{name}`).
    pub action: String,
    /// The path as called.
    pub resource: String,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// What can be done to a running persistent sandbox.
#[derive(Clone, Copy, Debug)]
pub enum SandboxAction {
    Cancel,
    Pause,
    Resume,
}

/// A sandbox error as the management API's, by its kind (never by its wording).
fn sandbox_error(e: steward_tools::ToolError) -> Error {
    use steward_tools::ToolError;
    match e {
        ToolError::NotFound(m) => Error::NotFound(m),
        ToolError::InvalidArgs(m) => Error::InvalidRequest(m),
        ToolError::Conflict(m) => Error::Conflict(m),
        ToolError::Denied(m) | ToolError::Failed(m) => Error::Unavailable(m),
        ToolError::Busy(m) => Error::Busy(m),
    }
}

/// The OpenTelemetry trace id of the current span, when traces are exported.
pub(crate) fn trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The current span's W3C `traceparent`, when traces are exported: what a tool call passes on
/// to the server it calls, so the caller's trace continues there.
pub(crate) fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span a caller named (W3C `traceparent`, and
/// `tracestate`), so Steward's spans join the caller's trace. A malformed value is ignored.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Keeps this node's memory index following what other nodes write and erase (every
/// second), and erases memories whose time to live ran out (every minute).
async fn follow_memory(memory: Arc<steward_memory::Memory>, draining: CancellationToken) {
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = draining.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = memory.follow_changes().await {
            tracing::warn!(error = %e, "following memory changes failed; trying again in a second");
        }
        ticks += 1;
        if ticks % 60 == 0 {
            match memory.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(versions = n, "erased memories past their time to live"),
                Err(e) => tracing::warn!(error = %e, "erasing expired memories failed"),
            }
        }
    }
}

/// Embeds new memories as they are written (and any left unembedded, e.g. by a node without
/// the model), so vector search finds them within moments of their write.
async fn embed_memory(memory: Arc<steward_memory::Memory>, draining: CancellationToken) {
    if memory.embedding_model().is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = draining.cancelled() => break,
            _ = memory.wait_for_writes(Duration::from_secs(5)) => {}
        }
        if let Err(e) = memory.embed_pending().await {
            tracing::warn!(error = %e, "embedding memories failed; trying again shortly");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

pub struct EngineOptions {
    pub cfg: EngineConfig,
    pub node: NodeId,
    pub group_commit_max_batch: usize,
    pub providers: Providers,
    pub tools: Tools,
    pub clock: Arc<dyn Clock>,
    /// Timeouts, retries and breakers of gateway model calls.
    pub llm: steward_types::config::LlmConfig,
    pub prices: steward_llm::Prices,
    /// Collect per-step overhead samples (for benchmarks).
    pub stats: Option<Arc<StepStats>>,
    /// Signs the audit log's checkpoints.
    pub audit_key: Arc<steward_gov::AuditKey>,
    pub gov: steward_types::config::GovConfig,
    /// Decides every syscall.
    pub policies: Arc<steward_gov::Policies>,
    /// Provider and tool credentials, encrypted at rest.
    pub vault: Option<Arc<vault::Vault>>,
    /// Runs' sandboxes, when code execution is configured (their CPU is metered on its own).
    pub sandboxes: Option<Arc<sandboxes::SandboxService>>,
    /// What metered resources of other tools cost (`steward_tools::Tool::meter`).
    pub meters: meters::Meters,
    /// Tool calls' per-minute limits and result cache.
    pub tool_rules: steward_types::config::ToolsConfig,
    /// Makes memories' embeddings for vector search; none: full text and recency only.
    pub embedder: Option<Arc<dyn steward_memory::Embedder>>,
    /// Memory's bounds and its scopes' default times to live.
    pub memory_limits: steward_memory::Limits,
    /// A model or route whose OpenAI-compatible embeddings endpoint makes memory's embeddings
    /// through the router, as the agent `memory` (instead of `embedder`).
    pub memory_embeddings_model: Option<String>,
    /// The model or route that curates memories from messages (`[memory] curation_model`);
    /// none: curation requests are refused.
    pub memory_curation_model: Option<String>,
}

struct Inner {
    shared: Arc<Shared>,
    audit_key: Arc<steward_gov::AuditKey>,
    gov: steward_types::config::GovConfig,
    metrics: Arc<metrics::Metrics>,
    prices: steward_llm::Prices,
    /// What curates memories, when anything does.
    curation_model: Option<String>,
    kernel: Kernel,
    gateway: gateway::Gateway,
    cfg: EngineConfig,
    draining: CancellationToken,
    tracker: TaskTracker,
    upstreams: Arc<upstreams::Upstreams>,
    openapis: Arc<openapis::OpenApis>,
    oauth: Arc<oauth::OAuthTokens>,
    mcp_tasks: Arc<mcp_tasks::McpTasks>,
    mcp_calls: Arc<mcp_calls::McpCalls>,
}

/// A handle to the running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// What `apply` did to one agent.
#[derive(Clone, Debug)]
pub struct Applied {
    pub agent: AgentRecord,
    pub changed: bool,
}

impl Engine {
    /// Starts the engine: releases leases a previous life of this node held, then starts the
    /// scheduler and the lease heartbeat.
    pub async fn start(store: Arc<dyn Store>, opts: EngineOptions) -> Result<Engine> {
        let released = store.release_node(&opts.node).await?;
        if released > 0 {
            tracing::info!(released, node = %opts.node, "took back runs this node held before it stopped");
        }
        let checks = store
            .release_checks(&opts.node.0, opts.clock.now_ms())
            .await?;
        if checks > 0 {
            tracing::info!(checks, node = %opts.node, "merge checks this node was running when it stopped are queued again");
        }
        let active = Arc::new(ActiveRuns::default());
        let identities = Arc::new(identities::Identities::new(store.clone()));
        let launch = launch::Launcher::new(
            store.clone(),
            opts.clock.clone(),
            identities.clone(),
            opts.cfg.max_input_bytes,
        );
        // Tokens minted on one node must verify on every other: the signing key is shared
        // through the store, sealed with the vault key. Without a vault (benchmarks), a key
        // for this process only.
        let delegator = match &opts.vault {
            Some(v) => {
                let (local, fresh) = steward_gov::Delegator::generate();
                let shared = v
                    .shared_key("delegation", &fresh, opts.clock.now_ms())
                    .await
                    .and_then(|secret| {
                        steward_gov::Delegator::from_hex(&secret)
                            .map_err(|e| Error::Unavailable(e.to_string()))
                    });
                // Like a secret sealed under another key: reported, not fatal.
                shared.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "delegated tokens minted on other nodes will not verify here, nor these there: give every node the same vault key (STEWARD_VAULT_KEY)");
                    local
                })
            }
            None => steward_gov::Delegator::generate().0,
        };
        let delegations = Arc::new(delegations::Delegations::new(
            store.clone(),
            opts.clock.clone(),
            delegator,
            identities.clone(),
        ));
        let authority = authority::Authority {
            policies: opts.policies.clone(),
            identities: identities.clone(),
            delegations: delegations.clone(),
        };
        let store_for_upstreams: Arc<dyn steward_store::McpServerStore> = store.clone();
        let mcp_tasks = mcp_tasks::McpTasks::new(
            store.clone(),
            opts.node.0.clone(),
            opts.clock.clone(),
            opts.tools.clone(),
        );
        let mcp_calls = mcp_calls::McpCalls::new(store.clone(), opts.clock.clone());
        let oauth = oauth::OAuthTokens::new(
            store.clone(),
            opts.vault.clone(),
            opts.node.0.clone(),
            opts.clock.clone(),
        );
        let openapis = openapis::OpenApis::new(
            opts.tools.clone(),
            store.clone(),
            Arc::new(oauth::ApiCredentials {
                vault: opts.vault.clone(),
                tokens: oauth.clone(),
            }),
            opts.tool_rules.http.clone(),
        );
        let router_embedder = opts
            .memory_embeddings_model
            .clone()
            .map(|m| Arc::new(memory_embeddings::RouterEmbedder::new(m)));
        let embedder = match &router_embedder {
            Some(r) => Some(r.clone() as Arc<dyn steward_memory::Embedder>),
            None => opts.embedder.clone(),
        };
        let memory = Arc::new(
            steward_memory::Memory::open(
                store.clone(),
                opts.clock.clone(),
                opts.memory_limits.clone(),
                embedder,
            )
            .await
            .map_err(Error::from)?,
        );
        let shared = Arc::new(Shared {
            memory,
            launch: launch.clone(),
            store: store.clone(),
            node: opts.node.clone(),
            clock: opts.clock.clone(),
            wake: tokio::sync::Notify::new(),
            finished: tokio::sync::Notify::new(),
            active: active.clone(),
            vault: opts.vault.clone(),
            sandboxes: opts.sandboxes.clone(),
            authority: authority.clone(),
            tasks: tasks::Tasks::new(store.clone(), opts.clock.clone()),
            schedules: schedules::Schedules::new(
                store.clone(),
                opts.clock.clone(),
                Arc::new(launch.clone()),
            ),
            supervisors: supervisors::Supervisors::new(
                store.clone(),
                opts.clock.clone(),
                active,
                Arc::new(launch.clone()),
            ),
            merges: Arc::new(merge_queue::MergeQueue::new(
                store.clone(),
                Arc::new(launch),
                opts.clock.clone(),
                opts.sandboxes
                    .clone()
                    .map(|s| s as Arc<dyn steward_orchestrate::Isolated>),
                &opts.node,
                Duration::from_millis(opts.cfg.lease_ttl_ms.max(10)),
                Duration::from_millis(opts.cfg.heartbeat_ms.max(10)),
            )),
        });
        let draining = CancellationToken::new();
        let router = Arc::new(steward_llm::Router::new(
            opts.providers,
            opts.prices.clone(),
            &opts.llm,
        ));
        let metrics = Arc::new(metrics::Metrics::default());
        let breaker_sync_ms = opts.llm.breaker_sync_ms;
        let budgets = budgets::Budgets {
            store: store.clone(),
            prices: opts.prices.clone(),
        };
        let journal = JournalWriter::start(store.clone(), opts.group_commit_max_batch);
        let tool_plane = Arc::new(tool_plane::ToolPlane::new(
            opts.tool_rules.limits.clone(),
            opts.tool_rules.cache.clone(),
            store.clone(),
            opts.clock.clone(),
        ));
        let gateway = gateway::Gateway {
            outcomes: journal.clone(),
            authority: authority.clone(),
            router: router.clone(),
            limits: opts.llm.rate_limits.clone(),
            audit_log: store.clone(),
            key_store: store.clone(),
            run_store: store.clone(),
            rate_store: store.clone(),
            approvals: store.clone(),
            cache_store: store.clone(),
            budgets: budgets.clone(),
            clock: opts.clock.clone(),
            metrics: metrics.clone(),
            calls: steward_store::CallWriter::start(store.clone()),
            keys: ttl_cache::TtlCache::new(ttl_cache::LOOKUP_TTL),
            chains: ttl_cache::TtlCache::new(ttl_cache::LOOKUP_TTL),
            tools: opts.tools.clone(),
            tool_host: Arc::new(Host(shared.clone())),
            tool_plane: tool_plane.clone(),
        };
        let mut meters = opts.meters.clone();
        if let Some(s) = &opts.sandboxes {
            meters.insert(steward_tools::SANDBOX_CPU_MS, s.clone());
        }
        let kernel = Kernel {
            meters,
            approvals: store.clone(),
            journal,
            router,
            budgets,
            authority,
            approval_timeout_ms: opts.gov.approval_timeout_ms as i64,
            tools: opts.tools.clone(),
            tool_plane,
            host: Arc::new(Host(shared.clone())),
            clock: opts.clock,
            draining: draining.clone(),
            stats: opts.stats,
            metrics: metrics.clone(),
            journal_tick: Arc::new(tokio::sync::Notify::new()),
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                shared,
                audit_key: opts.audit_key,
                gov: opts.gov,
                metrics,
                prices: opts.prices,
                curation_model: opts.memory_curation_model.clone(),
                kernel,
                gateway,
                cfg: opts.cfg,
                upstreams: upstreams::Upstreams::new(
                    upstreams::Means {
                        tools: opts.tools,
                        secrets: opts
                            .vault
                            .clone()
                            .map(|v| v as Arc<dyn steward_llm::SecretSource>),
                        tokens: oauth.clone(),
                        user: upstreams::ServerUser::of(&opts.tool_rules.mcp_servers),
                        limits: upstreams::ServerLimits::of(&opts.tool_rules.mcp_servers),
                    },
                    store_for_upstreams,
                ),
                openapis,
                oauth,
                mcp_tasks,
                mcp_calls,
                draining,
                tracker: TaskTracker::new(),
            }),
        };
        if let Some(r) = &router_embedder {
            r.attach(&engine.inner);
        }
        // Upstream MCP servers and OpenAPI APIs: their tools in the registry now, and followed
        // as nodes add, change or remove them.
        // Tasks this node was running when it stopped ended in doubt.
        if let Err(e) = engine.inner.mcp_tasks.settle_earlier_life().await {
            tracing::warn!(error = %e, "could not settle the MCP tasks of this node's earlier life");
        }
        {
            let upstreams = engine.inner.upstreams.clone();
            let apis = engine.inner.openapis.clone();
            let tasks = engine.inner.mcp_tasks.clone();
            let calls = engine.inner.mcp_calls.clone();
            let draining = engine.inner.draining.clone();
            {
                // Cancellations other nodes received for calls running here.
                let (calls, draining) = (calls.clone(), draining.clone());
                tokio::spawn(async move {
                    loop {
                        if let Err(e) = calls.follow().await {
                            tracing::warn!(error = %e, "could not read MCP call cancellations");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(mcp_calls::LOOK_EVERY) => {}
                            _ = draining.cancelled() => break,
                        }
                    }
                });
            }
            tokio::spawn(async move {
                loop {
                    if let Err(e) = upstreams.follow().await {
                        tracing::warn!(error = %e, "could not read the upstream MCP servers");
                    }
                    if let Err(e) = apis.follow().await {
                        tracing::warn!(error = %e, "could not read the OpenAPI APIs");
                    }
                    if let Err(e) = tasks.prune().await {
                        tracing::warn!(error = %e, "could not forget old MCP tasks");
                    }
                    if let Err(e) = calls.prune().await {
                        tracing::warn!(error = %e, "could not forget old MCP call cancellations");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(upstreams::FOLLOW_EVERY) => {}
                        _ = draining.cancelled() => break,
                    }
                }
                upstreams.stop_all();
            });
        }
        // The policy set in force is the database's latest, when there is one: as it was
        // stored, or not at all — never the permissive default in its place.
        if let Some(latest) = engine.inner.shared.store.latest_policy_set().await? {
            housekeeping::apply_policy_set(&engine.inner.kernel.authority.policies, &latest).map_err(
                |e| {
                    Error::Unavailable(format!(
                        "the stored policy set (version {}) does not load: {e}; fix it with a build that accepts it, or put a new set in with `steward policy apply` on a server started with an empty database",
                        latest.version
                    ))
                },
            )?;
        }
        tokio::spawn(housekeeping::follow_policies(
            engine.inner.shared.store.clone(),
            engine.inner.kernel.authority.policies.clone(),
            engine.inner.shared.vault.clone(),
            Duration::from_millis(breaker_sync_ms.max(10)),
            engine.inner.draining.clone(),
        ));
        if let Some(mut wakeups) = engine.inner.shared.store.wakeups().await? {
            let shared = engine.inner.shared.clone();
            tokio::spawn(async move {
                while let Some(what) = wakeups.recv().await {
                    // A cancel requested through another node stops the run here at once,
                    // not at this node's next heartbeat.
                    if let Some(run) = what.strip_prefix(steward_store::WAKE_CANCEL) {
                        if let Ok(id) = RunId::parse(run) {
                            stop_cancelled(&shared, &id).await;
                        }
                        continue;
                    }
                    if what == steward_store::WAKE_DONE {
                        shared.finished.notify_waiters();
                    }
                    shared.wake.notify_one();
                }
            });
        }
        tokio::spawn(housekeeping::share_breakers(
            engine.inner.shared.store.clone(),
            engine.inner.kernel.router.clone(),
            engine.inner.shared.clock.clone(),
            engine.inner.shared.node.clone(),
            Duration::from_millis(breaker_sync_ms.max(10)),
            engine.inner.draining.clone(),
        ));
        tokio::spawn(evaluation::online(
            engine.inner.clone(),
            Duration::from_millis(engine.inner.cfg.alert_every_ms.clamp(10, 1000)),
            engine.inner.draining.clone(),
        ));
        tokio::spawn(alerts::run(
            engine.inner.shared.store.clone(),
            engine.inner.shared.clock.clone(),
            engine.inner.prices.clone(),
            engine.inner.shared.vault.clone(),
            Duration::from_millis(engine.inner.cfg.alert_every_ms.max(10)),
            engine.inner.draining.clone(),
        ));
        tokio::spawn(housekeeping::run(
            engine.inner.shared.store.clone(),
            engine.inner.shared.clock.clone(),
            Duration::from_millis(engine.inner.cfg.housekeeping_ms.max(10)),
            engine.inner.cfg.stale_call_ms as i64,
            engine
                .inner
                .gov
                .audit_retention_days
                .map(|d| d as i64 * 86_400_000),
            engine.inner.cfg.trace_retention_ms as i64,
            engine.inner.draining.clone(),
        ));
        {
            let clock = engine.inner.shared.clock.clone();
            let draining = engine.inner.draining.clone();
            tokio::spawn(steward_gov::checkpointer::run(
                engine.inner.shared.store.clone(),
                engine.inner.audit_key.clone(),
                Duration::from_millis(engine.inner.gov.checkpoint_ms.max(10)),
                move || clock.now_ms(),
                async move { draining.cancelled().await },
            ));
        }
        if let Some(sandboxes) = engine.inner.shared.sandboxes.clone() {
            // Persistent sandboxes left unused past their lifetime are removed.
            let (clock, draining) = (
                engine.inner.shared.clock.clone(),
                engine.inner.draining.clone(),
            );
            let every = Duration::from_millis(engine.inner.cfg.housekeeping_ms.max(10));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = draining.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    for id in sandboxes.sweep(clock.now_ms()).await {
                        tracing::info!(sandbox = %id, "removed a sandbox past its idle lifetime");
                    }
                }
            });
        }
        tokio::spawn(follow_memory(
            engine.inner.shared.memory.clone(),
            engine.inner.draining.clone(),
        ));
        tokio::spawn(embed_memory(
            engine.inner.shared.memory.clone(),
            engine.inner.draining.clone(),
        ));
        if let Some(model) = engine.inner.curation_model.clone() {
            tokio::spawn(curation::work(
                engine.inner.clone(),
                model,
                engine.inner.draining.clone(),
            ));
        }
        tokio::spawn(runs::schedule(engine.inner.clone()));
        tokio::spawn(runs::serve_queues(engine.inner.clone()));
        tokio::spawn(runs::heartbeat(engine.inner.clone()));
        Ok(engine)
    }

    /// Agents' memory (`/api/v1/memories`).
    pub fn memories(&self) -> handles::memories::Memories<'_> {
        handles::memories::Memories(self)
    }

    /// Persistent sandboxes (the management API's `/api/v1/sandboxes`).
    pub fn sandboxes(&self) -> handles::sandboxes::Sandboxes<'_> {
        handles::sandboxes::Sandboxes(self)
    }

    /// The vault's secrets.
    pub fn experiments(&self) -> handles::experiments::Experiments<'_> {
        handles::experiments::Experiments(self)
    }

    pub fn evaluators(&self) -> handles::evaluators::Evaluators<'_> {
        handles::evaluators::Evaluators(self)
    }

    pub fn alerts(&self) -> handles::alerts::Alerts<'_> {
        handles::alerts::Alerts(self)
    }

    pub fn secrets(&self) -> handles::secrets::Secrets<'_> {
        handles::secrets::Secrets(self)
    }

    /// The Responses API's stored responses.
    pub fn responses(&self) -> handles::responses::Responses<'_> {
        handles::responses::Responses(self)
    }

    /// Agents' API keys.
    pub fn keys(&self) -> handles::keys::Keys<'_> {
        handles::keys::Keys(self)
    }

    /// Agents' identities: owner and status.
    pub fn identities(&self) -> handles::identities::Identities<'_> {
        handles::identities::Identities(self)
    }

    /// Delegation links.
    pub fn delegations(&self) -> handles::delegations::Delegations<'_> {
        handles::delegations::Delegations(self)
    }

    /// The Cedar policy set.
    pub fn policies(&self) -> handles::policies::Policies<'_> {
        handles::policies::Policies(self)
    }

    /// Approvals a policy asked for.
    pub fn approvals(&self) -> handles::approvals::Approvals<'_> {
        handles::approvals::Approvals(self)
    }

    /// Traces kept in the store (`POST /v1/traces`, `/api/v1/traces`).
    pub fn traces(&self) -> handles::traces::Traces<'_> {
        handles::traces::Traces(self)
    }

    /// The audit log.
    pub fn audit(&self) -> handles::audit::Audit<'_> {
        handles::audit::Audit(self)
    }

    /// Agents and their versions.
    pub fn agents(&self) -> handles::agents::Agents<'_> {
        handles::agents::Agents(self)
    }

    /// Runs: create, read, cancel, resolve.
    pub fn runs(&self) -> handles::runs::Runs<'_> {
        handles::runs::Runs(self)
    }

    /// The `/v1` gateway for external agents.
    pub fn gateway(&self) -> handles::gateway::Gateway<'_> {
        handles::gateway::Gateway(self)
    }

    /// Upstream MCP servers.
    pub fn mcp_servers(&self) -> handles::mcp_servers::McpServers<'_> {
        handles::mcp_servers::McpServers(self)
    }

    /// How long a step, or a call outside a run, waits for a person's approval.
    pub fn approval_timeout_ms(&self) -> i64 {
        self.inner.gov.approval_timeout_ms as i64
    }

    /// Tool calls through `/mcp` that became tasks.
    pub fn mcp_tasks(&self) -> Arc<mcp_tasks::McpTasks> {
        self.inner.mcp_tasks.clone()
    }

    /// This node's `/mcp` calls in flight, for an earlier-revision client's cancellation.
    pub fn mcp_calls(&self) -> Arc<mcp_calls::McpCalls> {
        self.inner.mcp_calls.clone()
    }

    /// HTTP APIs described by OpenAPI documents.
    pub fn openapis(&self) -> handles::openapis::OpenApis<'_> {
        handles::openapis::OpenApis(self)
    }

    /// The tool registry.
    pub fn tools(&self) -> handles::tools::Tools<'_> {
        handles::tools::Tools(self)
    }

    /// Budget accounts, calls and costs.
    pub fn budgets(&self) -> handles::budgets::Budgets<'_> {
        handles::budgets::Budgets(self)
    }

    /// Task queues.
    pub fn tasks(&self) -> &tasks::Tasks {
        &self.inner.shared.tasks
    }

    /// The merge queue.
    pub fn merges(&self) -> &merge_queue::MergeQueue {
        &self.inner.shared.merges
    }

    /// Supervision trees and the incidents they escalate to.
    pub fn supervisors(&self) -> &supervisors::Supervisors {
        &self.inner.shared.supervisors
    }

    /// Schedules: cron and one-shot timers.
    pub fn schedules(&self) -> &schedules::Schedules {
        &self.inner.shared.schedules
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.shared.store
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.shared.node
    }

    /// Appends an administrator's action and its decision to the audit log, durably.
    async fn audit_admin(
        &self,
        action: &str,
        resource: &str,
        allowed: bool,
        error: &str,
    ) -> Result<()> {
        let now = self.inner.shared.clock.now_ms();
        let principal = format!("admin:{}", steward_gov::policy::ADMIN);
        let record = steward_gov::AuditRecord {
            policy_hash: Some(self.inner.kernel.authority.policies.active().hash.clone()),
            error: (!error.is_empty()).then(|| error.to_string()),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Admin,
                now,
                principal.clone(),
                vec![principal],
                action,
                resource,
            )
            .decided(if allowed { "allow" } else { "deny" }, None)
        }
        .to_json();
        self.store().append_audit(&[(now, record)]).await?;
        Ok(())
    }

    /// The engine clock's time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.inner.shared.clock.now_ms()
    }

    /// The engine's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    pub async fn ready(&self) -> Result<()> {
        if self.inner.draining.is_cancelled() {
            return Err(Error::Unavailable("shutting down".into()));
        }
        self.store()
            .ping()
            .await
            .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
        // Reads working is not enough: a node whose store cannot take writes must not get work.
        self.store()
            .probe_write(&self.node().0, self.inner.shared.clock.now_ms())
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the store cannot take writes: {}",
                    e.unavailable().unwrap_or_else(|| e.to_string())
                ))
            })
    }

    /// Stops taking work, lets in-flight steps finish and journal (up to `grace`), then hands
    /// this node's runs back so a restart or another node resumes them at once.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.draining.cancel();
        self.tasks().drain();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown grace period over with runs still mid-step; their journals resume them"
            );
        }
        if let Err(e) = self.store().release_node(self.node()).await {
            tracing::warn!(error = %e, "could not release leases; they expire on their own");
        }
        // Gateway calls answered but not yet settled are settled before the process ends.
        if tokio::time::timeout(grace, self.inner.gateway.calls.flush())
            .await
            .is_err()
        {
            tracing::warn!("calls still unsettled at exit; the stale-hold sweep books them");
        }
    }

    /// Signalled after every journal append on this node. Followers take a `notified()` before
    /// reading the journal, then wait on it with a bound: runs on other nodes are only seen by
    /// reading again.
    pub fn journal_tick(&self) -> Arc<tokio::sync::Notify> {
        self.inner.kernel.journal_tick.clone()
    }

    /// Appends a lifecycle event (a key created or revoked, an identity changed) to the audit
    /// log, durably, before the caller hears it was done.
    async fn audit_lifecycle(
        &self,
        action: &str,
        principal: &str,
        resource: &str,
        reason: &str,
    ) -> Result<()> {
        let now = self.inner.shared.clock.now_ms();
        let record = steward_gov::AuditRecord {
            error: (!reason.is_empty()).then(|| reason.to_string()),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Lifecycle,
                now,
                principal.to_string(),
                vec![principal.to_string()],
                action,
                resource,
            )
        }
        .to_json();
        self.store().append_audit(&[(now, record)]).await?;
        Ok(())
    }

    /// How many runs this node is driving now.
    pub fn active_runs(&self) -> usize {
        self.inner
            .shared
            .active
            .lock()
            .map(|a| a.len())
            .unwrap_or(0)
    }
}
