//! Tools an agent can call, behind one `Tool` trait. Tools act and report; they never touch the
//! store. What they need from the engine (the scratchpad, child runs) comes through `ToolHost`.

mod echo;
mod http_request;
mod memory;
pub mod openapi;
mod sandbox;
mod scratchpad;
mod search;
pub mod secret_refs;
mod spawn_agent;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use steward_types::config::ToolsConfig;
use steward_types::RunId;

pub use echo::Echo;
pub use http_request::HttpRequest;
pub use memory::{MemoryAdd, MemorySearch};
pub use sandbox::{SandboxExec, SandboxReadFile, SandboxWriteFile};
pub use scratchpad::{ScratchpadGet, ScratchpadSet};
pub use search::{Catalog, Entry as CatalogEntry};
pub use spawn_agent::SpawnAgent;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ToolError {
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Failed(String),
    /// Capacity is used up for now (sandbox slots): the same call may succeed later.
    #[error("{0}")]
    Busy(String),
    /// What the call names does not exist (a sandbox, a snapshot).
    #[error("{0}")]
    NotFound(String),
    /// What the call names is not in a state that allows it (a paused sandbox).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// How a tool describes itself to a model.
#[derive(Clone, Debug)]
pub struct ToolInfo {
    pub name: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// What a tool says of its effects, as MCP's annotations do: hints for callers and the
/// registry's cache, never a substitute for policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Annotations {
    /// It changes nothing outside itself.
    pub read_only: bool,
    /// It may delete or overwrite (meaningful when not read-only).
    pub destructive: bool,
    /// Calling it again with the same arguments has no further effect.
    pub idempotent: bool,
    /// It reaches beyond the server (the network, other systems).
    pub open_world: bool,
}

impl Annotations {
    /// Reads what the server holds and changes nothing (`echo`, the file and scratchpad reads).
    pub const LOCAL_READ: Annotations = Annotations {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    };
    /// Writes a value in place on the server: again with the same arguments, the same state.
    pub const LOCAL_OVERWRITE: Annotations = Annotations {
        read_only: false,
        destructive: true,
        idempotent: true,
        open_world: false,
    };
}

impl Default for Annotations {
    /// What a caller must assume of a tool that says nothing (MCP's defaults).
    fn default() -> Self {
        Annotations {
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: true,
        }
    }
}

/// What a parent run grants the child it spawns: never more than it holds itself. A list
/// left out is inherited from the parent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grant {
    pub tools: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub budget_usd: Option<f64>,
}

/// What a child run ended as.
#[derive(Clone, Debug)]
pub struct ChildOutcome {
    pub run_id: RunId,
    pub state: String,
    pub result: Option<String>,
    pub error: Option<String>,
}

/// Engine capabilities lent to tools for one call.
#[async_trait::async_trait]
pub trait ToolHost: Send + Sync {
    /// A credential from the vault, by name, for the tool to send to `destination` (a host)
    /// but never to return: its use is decided by policy and audited first.
    async fn use_secret(&self, _run: &RunId, name: &str, _destination: &str) -> Result<String> {
        Err(ToolError::Denied(format!(
            "secret {name:?}: there is no vault on this server"
        )))
    }
    async fn scratch_put(&self, run: &RunId, key: &str, value: &str) -> Result<()>;
    async fn scratch_get(&self, run: &RunId, key: &str) -> Result<Option<String>>;
    /// Starts (or finds, on replay) the child `child` of agent `agent`, and waits for it to end.
    async fn spawn_and_wait(
        &self,
        parent: &RunId,
        child: &RunId,
        agent: &str,
        input: &str,
        grant: Option<Grant>,
    ) -> Result<ChildOutcome>;
    /// Runs `command` with `/bin/sh -c` in the run's sandbox, on its workspace, as step `seq`.
    async fn sandbox_exec(
        &self,
        _run: &RunId,
        _seq: i64,
        _command: &str,
        _stdin: &str,
    ) -> Result<Value> {
        Err(ToolError::Denied(
            "sandboxes are not available on this server".into(),
        ))
    }
    /// Writes a file (a path relative to the run's workspace, never leaving it).
    async fn workspace_write(
        &self,
        _run: &RunId,
        _seq: i64,
        _path: &str,
        _content: &[u8],
    ) -> Result<()> {
        Err(ToolError::Denied(
            "sandboxes are not available on this server".into(),
        ))
    }
    async fn workspace_read(&self, _run: &RunId, _seq: i64, _path: &str) -> Result<Vec<u8>> {
        Err(ToolError::Denied(
            "sandboxes are not available on this server".into(),
        ))
    }
    /// Writes a memory for the run (step `seq` of it: a retry finds what the first try wrote),
    /// if the run may write the scope `args` names.
    async fn memory_add(&self, _run: &RunId, _seq: i64, _args: Value) -> Result<Value> {
        Err(ToolError::Denied(
            "memory is not available on this server".into(),
        ))
    }
    /// Searches the scopes `args` names (or the run's own), each of which the run may read.
    async fn memory_search(&self, _run: &RunId, _args: Value) -> Result<Value> {
        Err(ToolError::Denied(
            "memory is not available on this server".into(),
        ))
    }
}

/// How far a long call got, as the server doing it reports (MCP's progress notifications).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Where a call's progress goes: the caller that asked for it (an MCP client that sent a
/// `progressToken`).
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

pub struct ToolContext {
    /// The run that calls, or none for a caller outside any run (an MCP client).
    pub run_id: Option<RunId>,
    /// The step's journal position.
    pub seq: i64,
    /// `run:seq`, the same on every retry of this step: upstreams can deduplicate on it.
    pub idempotency_key: String,
    pub host: Arc<dyn ToolHost>,
    /// The W3C `traceparent` of the span the call runs in (when traces are exported): passed
    /// on to the server the tool calls, so the trace continues there.
    pub traceparent: Option<String>,
    /// Where to report progress, when the caller asked for it.
    pub progress: Option<ProgressSink>,
    /// Who the calling agent belongs to (`user:alice`): whose own credentials
    /// `{{user_secret:NAME}}` means.
    pub owner: Option<String>,
}

impl ToolContext {
    /// The calling run, for tools that work on a run's state (its scratchpad, sandbox,
    /// children).
    pub fn run(&self) -> Result<&RunId> {
        self.run_id.as_ref().ok_or_else(|| {
            ToolError::Denied(
                "this tool works on a run's own state and is called only from inside a run".into(),
            )
        })
    }
}

#[async_trait::async_trait]
pub trait Tool: Send + Sync {
    fn info(&self) -> ToolInfo;
    /// Hints on what the tool does to the world (MCP's tool annotations).
    fn annotations(&self) -> Annotations {
        Annotations::default()
    }
    /// Where it comes from: `native` for the server's own tools, `mcp:<server>` for an
    /// upstream MCP server's.
    fn source(&self) -> String {
        "native".into()
    }
    /// JSON Schema of its structured result, an object, when it declares one (MCP's
    /// `outputSchema`): its answers are then that object.
    fn output_schema(&self) -> Option<Value> {
        None
    }
    /// Its version: Steward's for its own tools, an upstream server's or an API document's
    /// for theirs.
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }
    /// Who answers for it: `steward` for its own tools; for an upstream server's or an API's,
    /// the owner its definition names (`admin` when it names none).
    fn owner(&self) -> String {
        "steward".into()
    }
    /// Whether a caller outside any run (an MCP client) may call it: only tools that need
    /// nothing of a run's state.
    fn outside_runs(&self) -> bool {
        false
    }
    /// Whether running this call twice has the effect of running it once. Decides whether a
    /// call interrupted by a crash may be retried without asking anyone.
    fn idempotent(&self, args: &Value) -> bool;
    /// What the call does besides calling this tool that policy must also allow (starting
    /// another agent, running code in the run's sandbox). The Kernel decides `tool.call` on the
    /// tool and then this; both must allow the call.
    fn also_decided(&self, _run: &RunId, _args: &Value) -> Option<AlsoDecided> {
        None
    }
    /// How long the call may take.
    fn wait(&self) -> Wait {
        Wait::StepTimeout
    }
    /// How long the server that answered lets `result` be reused, when it said (an HTTP
    /// API's `Cache-Control`): the result cache keeps it no longer. `Some(ZERO)`: not at all.
    fn result_max_age(&self, _result: &Value) -> Option<std::time::Duration> {
        None
    }
    /// The metered resource the call uses, if any: its worst case is held against the run's
    /// budgets before the call and what it used is charged after.
    fn meter(&self) -> Option<Meter> {
        None
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value>;
}

/// A second policy decision a tool call needs: `action` on `resource`.
#[derive(Clone, Debug, PartialEq)]
pub struct AlsoDecided {
    pub action: &'static str,
    pub resource: String,
}

/// How long a tool call may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// At most the agent's `stepTimeout`.
    StepTimeout,
    /// As long as the work it waits on (a child run, bounded by its own timeout). Abandoned
    /// without an outcome when the server drains, so such a tool must be idempotent: the next
    /// life calls it again and finds the same work.
    UntilDone,
}

/// A resource the server prices, used by a tool call: `name` says which (the server holds
/// its worst case before the call), `used` reads how much of it the call's result reports.
#[derive(Clone, Copy)]
pub struct Meter {
    pub name: &'static str,
    pub used: fn(&Value) -> u64,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("name", &self.name).finish()
    }
}

/// Sandbox CPU, in milliseconds: what `sandbox_exec` reports as `cpu_ms`.
pub const SANDBOX_CPU_MS: &str = "sandbox.cpu_ms";

/// The registry: the tools an agent may name in `spec.tools` and MCP clients may be given.
/// Clones share one registry, so tools an upstream MCP server offers appear in it, and go
/// from it, while the server runs.
#[derive(Clone, Default)]
pub struct Tools {
    by_name: Arc<RwLock<BTreeMap<String, Arc<dyn Tool>>>>,
}

impl Tools {
    pub fn builtin(cfg: &ToolsConfig) -> Result<Self> {
        let mut t = Tools::default();
        t.insert(Arc::new(Echo));
        t.insert(Arc::new(HttpRequest::new(&cfg.http)?));
        t.insert(Arc::new(ScratchpadSet));
        t.insert(Arc::new(ScratchpadGet));
        t.insert(Arc::new(MemoryAdd));
        t.insert(Arc::new(MemorySearch));
        t.insert(Arc::new(SpawnAgent));
        t.insert(Arc::new(SandboxExec));
        t.insert(Arc::new(SandboxWriteFile));
        t.insert(Arc::new(SandboxReadFile));
        Ok(t)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn Tool>>> {
        // A panic while holding the lock cannot leave the map half-changed (each change is
        // one insert or one retain), so a poisoned lock is still sound to read.
        self.by_name.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn Tool>>> {
        self.by_name.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&mut self, tool: Arc<dyn Tool>) {
        let name = tool.info().name.to_string();
        self.write().insert(name, tool);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.read().get(name).cloned()
    }

    /// Every tool's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The tools `patterns` (entries of `spec.tools`: names, or `prefix.*`) name, in the order
    /// the patterns give, each once.
    pub fn matching(&self, patterns: &[String]) -> Vec<Arc<dyn Tool>> {
        let all = self.read();
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for p in patterns {
            let names: Vec<&String> = match p.strip_suffix(".*") {
                Some(_) => all
                    .keys()
                    .filter(|n| steward_types::manifest::tool_pattern_covers(p, n))
                    .collect(),
                None => all
                    .get_key_value(p.as_str())
                    .map(|(k, _)| k)
                    .into_iter()
                    .collect(),
            };
            for n in names {
                if seen.insert(n.clone()) {
                    if let Some(t) = all.get(n) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// Puts `tools` in place of every tool named `prefix.…` (an upstream's whole offer, as it
    /// stands now).
    pub fn replace_prefix(&self, prefix: &str, tools: Vec<Arc<dyn Tool>>) {
        let mut all = self.write();
        let dotted = format!("{prefix}.");
        all.retain(|n, _| !n.starts_with(&dotted));
        for t in tools {
            all.insert(t.info().name.to_string(), t);
        }
    }
}

/// Reads a required string argument.
pub(crate) fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::InvalidArgs(format!("`{key}` is required and must be a string")))
}
