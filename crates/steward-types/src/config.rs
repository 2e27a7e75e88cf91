//! Configuration: `steward.toml`, then `STEWARD_*` environment variables, then flags — each
//! layer overriding the one before. One `Config`, one section per subsystem.
//!
//! Environment variables name a key path with `__` between levels:
//! `STEWARD_STORE__DATABASE_URL=postgres://…` sets `[store] database_url`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub engine: EngineConfig,
    pub llm: LlmConfig,
    pub tools: ToolsConfig,
    pub telemetry: TelemetryConfig,
    pub gov: GovConfig,
    pub sandbox: SandboxConfig,
    pub memory: MemoryConfig,
}

/// Agents' memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Where all-MiniLM-L6-v2's files are (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; `scripts/fetch-memory-model DIR` puts them there). Unset:
    /// `models/all-MiniLM-L6-v2` in the data directory, when it holds them. Without the model,
    /// memory is searched by full text and recency.
    pub model_dir: Option<PathBuf>,
    /// Off: no embeddings, even with the model there.
    pub no_embeddings: bool,
    /// A model or route of `[llm]` whose OpenAI-compatible embeddings endpoint makes the
    /// embeddings, through the router, instead of the model in process: each call made as the
    /// agent `memory`, decided by policy and held on the budget account `agent:memory`.
    pub embeddings_model: Option<String>,
    /// A model or route of `[llm]` that curates memories from messages
    /// (`POST /api/v1/memories/curate`), called as the agent `memory-curator`: decided by
    /// policy, held on the budget account `agent:memory-curator`. Unset: no curation.
    pub curation_model: Option<String>,
    /// How long memories of a scope live when a write gives no `ttl_ms`: a scope (`org`,
    /// `user:ana`) or a prefix ending in `*` (`run:*`) → milliseconds. The longest match wins.
    pub ttl_ms: std::collections::BTreeMap<String, i64>,
    /// How fast memories of a scope fade in search ranking: a scope or a prefix ending in `*`
    /// → the half-life in milliseconds (a score halves for each half-life since the fact
    /// became true). The longest match wins; scopes no pattern matches do not fade.
    pub decay_half_life_ms: std::collections::BTreeMap<String, i64>,
}

/// Sandboxes for agents' code (`sandbox_exec` and friends).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub enabled: bool,
    /// Run code even when the host lacks an isolation layer (the probe at start says which).
    /// Off: sandbox tools are refused on such a host, saying what is missing.
    pub allow_missing_layers: bool,
    pub memory_mb: u64,
    /// Processes and threads per sandbox.
    pub pids: u64,
    /// CPU per sandbox, in thousandths of a core.
    pub cpu_millicores: u64,
    /// Wall-clock limit of one exec; the whole process tree is killed at it.
    pub timeout_ms: u64,
    pub tmp_mb: u64,
    /// Disk quota of a sandbox's workspace (for a persistent sandbox: what it wrote over the
    /// snapshot it started from); 0: none.
    pub workspace_mb: u64,
    /// Files and directories a sandbox's workspace may hold; 0: no limit.
    pub workspace_inodes: u64,
    /// Files and directories a sandbox's private `/tmp` may hold.
    pub tmp_inodes: u64,
    /// Each of stdout and stderr is kept up to this many bytes.
    pub output_bytes: usize,
    /// The host uid and gid root inside a sandbox maps to when the server runs as root: an
    /// unprivileged id of its own, never 0 (an unprivileged server maps its own uid).
    pub host_uid: u32,
    pub host_gid: u32,
    /// Sandbox commands running at once, all sandboxes together; more wait up to `queue_ms`,
    /// then are refused (HTTP 429, `busy`).
    pub max_concurrent: usize,
    pub queue_ms: u64,
    /// Processes and threads of all sandboxes together; 0: no limit beyond each one's.
    pub total_pids: u64,
    /// Memory of all sandboxes together; 0: no limit beyond each one's.
    pub total_memory_mb: u64,
    /// Egress may reach private ranges (RFC 1918, CGNAT, IPv6 ULA) that a sandbox's list
    /// allows. Loopback, link-local and this host's own addresses are never reachable.
    pub egress_private: bool,
    /// System calls the sandbox's filter denies unless opted in: `io_uring` (a path the filter
    /// cannot see into) and `AF_VSOCK` sockets (a path toward the hypervisor).
    pub allow_io_uring: bool,
    pub allow_vsock: bool,
    /// The price of a CPU-second, in US dollars: a run's `sandbox_exec` holds its worst case
    /// (timeout × CPU limit) on the run's budget accounts and settles the CPU time it used.
    /// Unset: sandbox CPU is not charged.
    pub cpu_second_usd: Option<f64>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            allow_missing_layers: false,
            memory_mb: 256,
            pids: 128,
            cpu_millicores: 1000,
            timeout_ms: 30_000,
            tmp_mb: 64,
            workspace_mb: 1024,
            workspace_inodes: 100_000,
            tmp_inodes: 16_384,
            output_bytes: 1 << 20,
            host_uid: 1_879_048_192,
            host_gid: 1_879_048_192,
            max_concurrent: 64,
            queue_ms: 10_000,
            total_pids: 4096,
            total_memory_mb: 0,
            egress_private: false,
            allow_io_uring: false,
            allow_vsock: false,
            cpu_second_usd: None,
        }
    }
}

/// Governance: the audit log's signing, verification and retention.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovConfig {
    /// This node's audit signing key (a hex ed25519 seed). Unset: `audit.key` in the data
    /// directory, created on first start.
    pub audit_key_file: Option<PathBuf>,
    /// The vault's key (64 hex characters). `STEWARD_VAULT_KEY` wins when set. Unset:
    /// `vault.key` in the data directory, created on first start.
    pub vault_key_file: Option<PathBuf>,
    /// Public keys (hex) whose checkpoints verification accepts, besides this node's own: the
    /// other nodes of a cluster.
    pub audit_trusted_keys: Vec<String>,
    /// Cedar policies to put in force at start (when they differ from the active set). Unset:
    /// the active set stays; on a new database, the default (agents may call models and the
    /// tools their manifests list).
    pub policy_file: Option<PathBuf>,
    /// How long an approval a policy asked for may stay pending; then it counts as denied.
    pub approval_timeout_ms: u64,
    /// How often the audit tree's head is signed, when it has grown.
    pub checkpoint_ms: u64,
    /// Records older than this many days have their bodies cleared (their hashes stay, so the
    /// log remains verifiable). Unset: kept for ever.
    pub audit_retention_days: Option<u64>,
}

impl Default for GovConfig {
    fn default() -> Self {
        GovConfig {
            audit_key_file: None,
            vault_key_file: None,
            audit_trusted_keys: Vec::new(),
            policy_file: None,
            approval_timeout_ms: 86_400_000,
            checkpoint_ms: 1_000,
            audit_retention_days: None,
        }
    }
}

/// Where traces go. Spans (one per syscall and per gateway call, with the OpenTelemetry GenAI
/// attributes) are exported over OTLP/HTTP when an endpoint is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans are posted to
    /// `/v1/traces` under it). Unset: no export.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Keep Steward's own spans (runs, model, tool and gateway calls) in the store, beside the
    /// spans agents send to `/v1/traces`, for `engine.trace_retention_ms`.
    pub store_spans: bool,
    /// How often batched spans are sent.
    pub export_interval_ms: u64,
    /// Bound on one export request: a collector that hangs cannot hold spans forever.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "steward".into(),
            store_spans: true,
            export_interval_ms: 5_000,
            export_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for in-flight steps before exiting anyway.
    pub shutdown_grace_ms: u64,
    /// Bound on one API request, body included: a client that stalls is cut off.
    pub request_timeout_ms: u64,
    /// When set, every `/api/v1` request must carry `Authorization: Bearer <this>` (set it with
    /// `STEWARD_SERVER__ADMIN_TOKEN`, not in the file). Unset: the management API is open, for
    /// a trusted network only.
    pub admin_token: Option<String>,
    /// With an admin token set, a second token that may only read the management API (`GET`):
    /// for the web console's viewers (`STEWARD_SERVER__VIEWER_TOKEN`). It reads neither
    /// memories nor secrets' values, which the management API never shows anyway.
    pub viewer_token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8420".into(),
            data_dir: PathBuf::from(".steward"),
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 10_000,
            request_timeout_ms: 30_000,
            admin_token: None,
            viewer_token: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`. Empty: `steward.db` in the data directory.
    pub database_url: Option<String>,
    /// SQLite `synchronous` pragma: `full` (durable on power loss) or `normal`.
    pub sqlite_synchronous: String,
    pub max_connections: u32,
    /// Most journal entries written in one group commit.
    pub group_commit_max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: None,
            sqlite_synchronous: "full".into(),
            max_connections: 8,
            group_commit_max_batch: 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// This node's lease-owner id. Empty: read from (or written to) `node-id` in the data dir,
    /// so a restarted node recognises its own leases at once.
    pub node_id: Option<String>,
    pub lease_ttl_ms: u64,
    pub heartbeat_ms: u64,
    /// How often to look for claimable runs when nothing woke the scheduler.
    pub poll_ms: u64,
    pub max_concurrent_runs: usize,
    /// Largest accepted run input.
    pub max_input_bytes: usize,
    /// How often stale budget holds, old rate windows and expired cache entries are cleared.
    pub housekeeping_ms: u64,
    /// A gateway call still open this long after it started was cut off by a crash: its
    /// budget hold is booked in full. Keep it above any call's possible duration.
    pub stale_call_ms: u64,
    /// How long trace spans are kept after they arrive (`POST /v1/traces`), in milliseconds.
    pub trace_retention_ms: u64,
    /// How often alert rules are checked (`/api/v1/alerts`), in milliseconds.
    pub alert_every_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: None,
            lease_ttl_ms: 15_000,
            heartbeat_ms: 5_000,
            poll_ms: 500,
            max_concurrent_runs: 10_000,
            max_input_bytes: 256 * 1024,
            housekeeping_ms: 60_000,
            stale_call_ms: 3_600_000,
            trace_retention_ms: 7 * 86_400_000,
            alert_every_ms: 15_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Upper bound of any model call, unless the provider sets its own.
    pub timeout_ms: u64,
    /// Named upstreams; an agent's `model: NAME/MODEL` picks one.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model aliases for the `/v1` gateway: each names its deployments (`provider/model`) in
    /// priority order; a deployment that fails with a transient error falls back to the next.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Price overrides and additions, US dollars per million tokens, by model.
    pub prices: BTreeMap<String, Price>,
    /// Retries of a transient failure on the same deployment before falling back.
    pub retries: u32,
    /// First retry delay; doubles each time, with jitter. `Retry-After` wins when sent.
    pub retry_base_ms: u64,
    /// Consecutive failures that open a deployment's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit skips its deployment before one probe.
    pub breaker_cooldown_ms: u64,
    /// How often a node shares the circuits it opened and applies those others opened.
    pub breaker_sync_ms: u64,
    /// Gateway rate limits, each applying to every key, agent or model separately.
    pub rate_limits: RateLimits,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub key: Option<RateLimit>,
    pub agent: Option<RateLimit>,
    pub model: Option<RateLimit>,
}

/// Requests and tokens per minute.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rpm: i64,
    #[serde(default = "unlimited")]
    pub tpm: i64,
}

fn unlimited() -> i64 {
    i64::MAX
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub deployments: Vec<String>,
    /// How the first deployment to try is chosen; the rest follow as fallbacks.
    #[serde(default)]
    pub strategy: Strategy,
    /// With `weighted`: one weight per deployment.
    #[serde(default)]
    pub weights: Vec<u32>,
    /// Cache identical requests' answers for this long (exact match, per agent). Off when unset.
    #[serde(default)]
    pub cache_ttl_ms: Option<u64>,
    /// Also cache sampled requests (temperature above 0, or unset). Off by default: a sampled
    /// request asks for a fresh answer.
    #[serde(default)]
    pub cache_sampled: bool,
    /// Where a request goes, in order, when its prompt does not fit the deployments above'
    /// context windows (models with larger windows). An alias or `provider/model` each.
    #[serde(default)]
    pub context_window_fallbacks: Vec<String>,
    /// Where a request goes, in order, when a deployment's content filter refuses it.
    #[serde(default)]
    pub content_filter_fallbacks: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In the order listed.
    #[default]
    Priority,
    /// First pick at random in proportion to `weights`.
    Weighted,
    /// Lowest recent latency first (an exponentially weighted moving average per deployment).
    Latency,
    /// Cheapest first, by the price table.
    Cost,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            timeout_ms: 120_000,
            providers: BTreeMap::new(),
            routes: BTreeMap::new(),
            prices: BTreeMap::new(),
            retries: 2,
            retry_base_ms: 200,
            breaker_failures: 3,
            breaker_cooldown_ms: 30_000,
            breaker_sync_ms: 1_000,
            rate_limits: RateLimits::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    /// The name of an environment variable holding the key; keys never live in config files.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The name of a vault secret holding the key (`PUT /api/v1/secrets/{name}`), read at every
    /// call, so a rotated key applies at once.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// An `openai` upstream that also serves OpenAI's Responses API (`<base_url>/responses`):
    /// `/v1/responses` calls routed to it are passed through whole (hosted tools, reasoning
    /// items and all) instead of being translated onto chat completions.
    #[serde(default)]
    pub responses_api: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI chat completions: OpenAI, vLLM, Ollama, LiteLLM, Azure-style base URLs.
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    pub http: HttpToolConfig,
    /// Tool calls per minute, counted in the store so every node shares them.
    pub limits: ToolLimits,
    /// Results of read-only and idempotent tools kept for MCP clients asking again.
    pub cache: ToolCacheConfig,
    /// Upstream MCP servers started over stdio.
    pub mcp_servers: McpServersConfig,
}

/// Who upstream MCP servers over stdio run as.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServersConfig {
    /// When the server runs as root, each server's process runs as this uid and gid — an
    /// unprivileged id of their own (not the sandboxes'), with a private home of its own — so
    /// it cannot read Steward's data directory, its vault key or its database. 0: as root.
    pub uid: u32,
    pub gid: u32,
    /// Memory and processes (and threads) each server may use, all its processes together,
    /// in a cgroup of its own where this host lets Steward make one; 0: no limit.
    pub memory_mb: u64,
    pub pids: u64,
}

impl Default for McpServersConfig {
    fn default() -> Self {
        McpServersConfig {
            uid: 1_879_048_193,
            gid: 1_879_048_193,
            memory_mb: 1024,
            pids: 256,
        }
    }
}

/// Calls per minute: of each tool (all callers together), of each agent, of each run. A
/// limit not set does not apply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolLimits {
    /// Every tool's calls per minute, unless `per_tool` names it.
    pub tool: Option<i64>,
    /// An agent's tool calls per minute (through `/mcp` and in its runs).
    pub agent: Option<i64>,
    /// A run's tool calls per minute.
    pub run: Option<i64>,
    /// Calls per minute of the tools a pattern names (`github.*`, `echo`), in place of `tool`;
    /// an exact name wins over a prefix, a longer prefix over a shorter.
    pub per_tool: BTreeMap<String, i64>,
}

/// How long a read-only or idempotent tool's result answers the same call again (same tool,
/// arguments and caller). Off unless a TTL is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolCacheConfig {
    /// For every such tool, unless `per_tool` names it.
    pub ttl_ms: u64,
    /// By pattern (`github.*`, `echo`), as for limits; 0 turns caching off for those tools.
    pub per_tool: BTreeMap<String, u64>,
}

impl ToolLimits {
    /// The per-minute limit of tool `name`.
    pub fn of_tool(&self, name: &str) -> Option<i64> {
        most_specific(&self.per_tool, name).or(self.tool)
    }
}

impl ToolCacheConfig {
    /// How long tool `name`'s results are kept; 0 is not at all.
    pub fn ttl_of(&self, name: &str) -> u64 {
        most_specific(&self.per_tool, name).unwrap_or(self.ttl_ms)
    }
}

/// The value of the pattern that names `tool` most specifically: its exact name, else the
/// longest `prefix.*` it starts with.
fn most_specific<T: Copy>(patterns: &BTreeMap<String, T>, tool: &str) -> Option<T> {
    if let Some(v) = patterns.get(tool) {
        return Some(*v);
    }
    patterns
        .iter()
        .filter_map(|(p, v)| {
            let prefix = p.strip_suffix('*')?;
            tool.starts_with(prefix).then_some((prefix.len(), *v))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, v)| v)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpToolConfig {
    pub timeout_ms: u64,
    pub max_response_bytes: usize,
    /// Let `http_request` reach loopback and private addresses. Off by default: an agent
    /// should not probe the network Steward runs in.
    pub allow_private_networks: bool,
}

impl Default for HttpToolConfig {
    fn default() -> Self {
        HttpToolConfig {
            timeout_ms: 10_000,
            max_response_bytes: 1024 * 1024,
            allow_private_networks: false,
        }
    }
}

impl Config {
    /// Layers a TOML file's text, then `STEWARD_*` variables, then `key.path=value` overrides.
    pub fn load(
        file_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = match file_text {
            Some(t) => toml::from_str(t).map_err(|e| ConfigError(format!("steward.toml: {e}")))?,
            None => toml::Table::new(),
        };
        for (k, v) in env {
            let Some(path) = k.strip_prefix("STEWARD_") else {
                continue;
            };
            if !path.contains("__") {
                continue; // not a config key (e.g. STEWARD_URL for the CLI)
            }
            let path = path.to_ascii_lowercase().replace("__", ".");
            set_path(&mut root, &path, &v).map_err(|e| ConfigError(format!("{k}: {e}")))?;
        }
        for (path, v) in overrides {
            set_path(&mut root, path, v)?;
        }
        let cfg: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("configuration: {}", e.message())))?;
        cfg.tools.limits.check()?;
        Ok(cfg)
    }
}

impl ToolLimits {
    fn check(&self) -> Result<(), ConfigError> {
        let named = [
            ("tool", self.tool),
            ("agent", self.agent),
            ("run", self.run),
        ];
        let per_tool = self.per_tool.iter().map(|(p, v)| (p.as_str(), Some(*v)));
        for (what, limit) in named.into_iter().chain(per_tool) {
            if limit.is_some_and(|l| l < 1) {
                return Err(ConfigError(format!(
                    "tools.limits: {what}: calls per minute must be at least 1 (leave it out for no limit)"
                )));
            }
        }
        Ok(())
    }
}

fn set_path(root: &mut toml::Table, path: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| ConfigError("empty configuration key".into()))?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError(format!("{path}: {p} is not a section")))?;
    }
    // A value that parses as TOML keeps its type (numbers, booleans); anything else is a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let file = "[server]\nlisten = \"0.0.0.0:1\"\n[engine]\nlease_ttl_ms = 100\n";
        let env = vec![
            (
                "STEWARD_ENGINE__LEASE_TTL_MS".to_string(),
                "200".to_string(),
            ),
            ("STEWARD_URL".to_string(), "ignored".to_string()),
            ("HOME".to_string(), "/x".to_string()),
        ];
        let flags = vec![("server.listen".to_string(), "127.0.0.1:9".to_string())];
        let c = Config::load(Some(file), env, &flags).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9");
        assert_eq!(c.engine.lease_ttl_ms, 200);
        assert_eq!(c.engine.heartbeat_ms, 5_000);
    }

    #[test]
    fn tool_limits_and_ttls_pick_the_most_specific_pattern() {
        let file = "[tools.limits]\ntool = 100\nper_tool = { \"github.*\" = 30, \"github.issues.*\" = 5, \"echo\" = 7 }\n[tools.cache]\nttl_ms = 1000\nper_tool = { \"web.*\" = 0 }\n";
        let c = Config::load(Some(file), vec![], &[]).unwrap();
        let l = &c.tools.limits;
        assert_eq!(l.of_tool("github.search"), Some(30));
        assert_eq!(
            l.of_tool("github.issues.list"),
            Some(5),
            "the longer prefix"
        );
        assert_eq!(l.of_tool("echo"), Some(7), "the exact name");
        assert_eq!(l.of_tool("echoes"), Some(100), "not a prefix pattern");
        assert_eq!(l.of_tool("other.x"), Some(100));
        assert_eq!(c.tools.cache.ttl_of("web.fetch"), 0);
        assert_eq!(c.tools.cache.ttl_of("x"), 1000);
        for bad in [
            "[tools.limits]\nrun = 0\n",
            "[tools.limits]\nper_tool = { \"a.*\" = -1 }\n",
        ] {
            let e = Config::load(Some(bad), vec![], &[]).unwrap_err();
            assert!(e.0.contains("at least 1"), "{e}");
        }
        let env = vec![("STEWARD_TOOLS__LIMITS__AGENT".to_string(), "12".to_string())];
        assert_eq!(
            Config::load(None, env, &[]).unwrap().tools.limits.agent,
            Some(12)
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = Config::load(Some("[server]\nlisen = 1\n"), vec![], &[]).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let env = vec![(
            "STEWARD_ENGINE__LEASE_TTL_MS".to_string(),
            "soon".to_string(),
        )];
        assert!(Config::load(None, env, &[]).is_err());
    }

    #[test]
    fn providers_come_from_nested_keys() {
        let env = vec![
            (
                "STEWARD_LLM__PROVIDERS__LOCAL__KIND".to_string(),
                "openai".to_string(),
            ),
            (
                "STEWARD_LLM__PROVIDERS__LOCAL__BASE_URL".to_string(),
                "http://127.0.0.1:1/v1".to_string(),
            ),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.llm.providers["local"].kind, ProviderKind::Openai);
    }
}
