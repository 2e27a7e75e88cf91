//! Upstream MCP servers: each one's tools in the registry under its name as a prefix
//! (`everything.echo`), for managed runs (`spec.tools: [everything.*]`) and MCP clients alike,
//! on the same governance path as native tools. Every node runs its own connection to every
//! configured server and follows the store's list of them; a server's process is supervised —
//! started again with growing pauses when it exits — and its tools are listed again when it
//! says they changed, so they appear and disappear without a restart of Steward.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{NotificationContext, Peer, RoleClient};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Value};
use steward_store::{McpServerRecord, McpServerStore};
use steward_tools::{Annotations, Tool, ToolContext, ToolError, ToolInfo, Tools};
use steward_types::Millis;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first pause before starting a server again; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that stayed up this long starts again after the shortest pause.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a server may take to answer the handshake, and to list its tools.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a node looks for servers other nodes added, changed or removed.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// A tool's full name (`server.tool`) is at most this long, as MCP clients and model APIs expect.
const MAX_TOOL_NAME: usize = 64;

/// How a server is doing on this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// `starting`, `connected` or `restarting`.
    pub state: &'static str,
    /// The server's process, while it runs.
    pub pid: Option<u32>,
    /// How many tools it offers.
    pub tools: usize,
    /// How many times it was started again.
    pub restarts: u32,
    pub last_error: Option<String>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under these locks is a plain assignment: a panic cannot leave one half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a server's tools find its connection: none while it is down.
type Slot = Arc<RwLock<Option<Peer<RoleClient>>>>;

struct Running {
    updated_at: Millis,
    stop: CancellationToken,
    /// Set when it stops because a newer definition replaces it: its successor's import
    /// replaces its tools, so it must not remove them on the way out.
    replaced: Arc<AtomicBool>,
    restart: Arc<Notify>,
    status: Shared<Status>,
}

/// This node's connections to the configured upstream servers.
pub struct Upstreams {
    tools: Tools,
    store: Arc<dyn McpServerStore>,
    running: Mutex<HashMap<String, Running>>,
}

impl Upstreams {
    pub fn new(tools: Tools, store: Arc<dyn McpServerStore>) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            tools,
            store,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Brings this node in line with the store: starts servers added, starts again those
    /// changed, stops those removed (their tools leave the registry).
    pub async fn follow(&self) -> steward_store::Result<()> {
        let wanted = self.store.mcp_servers().await?;
        let mut running = lock(&self.running);
        running.retain(|name, r| {
            let same = wanted.iter().find(|w| &w.name == name);
            let keep = same.is_some_and(|w| w.updated_at == r.updated_at);
            if !keep {
                r.replaced.store(same.is_some(), Ordering::SeqCst);
                r.stop.cancel();
            }
            keep
        });
        for w in wanted {
            if running.contains_key(&w.name) {
                continue;
            }
            let r = Running {
                updated_at: w.updated_at,
                stop: CancellationToken::new(),
                replaced: Arc::default(),
                restart: Arc::new(Notify::new()),
                status: Arc::new(Mutex::new(Status {
                    state: "starting",
                    ..Status::default()
                })),
            };
            tokio::spawn(supervise(
                w.clone(),
                self.tools.clone(),
                r.status.clone(),
                (r.stop.clone(), r.replaced.clone()),
                r.restart.clone(),
            ));
            running.insert(w.name, r);
        }
        Ok(())
    }

    /// How server `name` is doing here, if this node runs it.
    pub fn status(&self, name: &str) -> Option<Status> {
        lock(&self.running)
            .get(name)
            .map(|r| lock(&r.status).clone())
    }

    /// Starts server `name` again now; whether this node runs it.
    pub fn restart(&self, name: &str) -> bool {
        match lock(&self.running).get(name) {
            Some(r) => {
                r.restart.notify_one();
                true
            }
            None => false,
        }
    }

    /// Stops every server (the node is shutting down).
    pub fn stop_all(&self) {
        for (_, r) in lock(&self.running).drain() {
            r.stop.cancel();
        }
    }
}

/// Runs server `spec` until `stop`: connects, imports its tools, waits for it to end, starts
/// it again after a pause that grows while it keeps failing.
async fn supervise(
    spec: McpServerRecord,
    tools: Tools,
    status: Shared<Status>,
    (stop, replaced): (CancellationToken, Arc<AtomicBool>),
    restart: Arc<Notify>,
) {
    let slot: Slot = Arc::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match connect(&spec, &tools, &slot, &status).await {
            Ok(service) => {
                let ct = service.cancellation_token();
                {
                    let mut s = lock(&status);
                    s.state = "connected";
                    s.last_error = None;
                }
                tokio::select! {
                    _ = service.waiting() => {
                        lock(&status).last_error = Some("the server's process ended".into());
                    }
                    _ = stop.cancelled() => {
                        ct.cancel();
                        break;
                    }
                    _ = restart.notified() => {
                        ct.cancel();
                        backoff = MIN_BACKOFF;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(server = %spec.name, error = %e, "upstream MCP server did not start");
                lock(&status).last_error = Some(e);
            }
        }
        *slot.write().unwrap_or_else(|e| e.into_inner()) = None;
        if started.elapsed() > HEALTHY_AFTER {
            backoff = MIN_BACKOFF;
        }
        {
            let mut s = lock(&status);
            s.state = "restarting";
            s.pid = None;
            s.restarts += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = restart.notified() => {}
            _ = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    // Stopped: its tools leave the registry, unless a newer definition of it took over.
    *slot.write().unwrap_or_else(|e| e.into_inner()) = None;
    if !replaced.load(Ordering::SeqCst) {
        tools.replace_prefix(&spec.name, Vec::new());
    }
}

type Service = rmcp::service::RunningService<RoleClient, Watch>;

/// Starts the server's process, speaks the handshake and imports its tools.
async fn connect(
    spec: &McpServerRecord,
    tools: &Tools,
    slot: &Slot,
    status: &Shared<Status>,
) -> Result<Service, String> {
    let argv: Vec<String> = serde_json::from_str(&spec.command)
        .map_err(|e| format!("command is not a JSON array of strings: {e}"))?;
    let env: HashMap<String, String> = serde_json::from_str(&spec.env)
        .map_err(|e| format!("env is not a JSON object of strings: {e}"))?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "command is empty".to_string())?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(env).kill_on_drop(true);
    let (process, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    lock(status).pid = process.id();
    let watch = Watch {
        server: spec.name.clone(),
        tools: tools.clone(),
        slot: slot.clone(),
        status: status.clone(),
    };
    let service = tokio::time::timeout(CONNECT_TIMEOUT, watch.serve(process))
        .await
        .map_err(|_| {
            format!(
                "no answer to the handshake within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("the handshake failed: {e}"))?;
    let peer = service.peer().clone();
    *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(peer.clone());
    import(&spec.name, &peer, tools, slot, status).await?;
    Ok(service)
}

/// Lists the server's tools and puts them in the registry in place of what it offered before.
async fn import(
    server: &str,
    peer: &Peer<RoleClient>,
    tools: &Tools,
    slot: &Slot,
    status: &Shared<Status>,
) -> Result<(), String> {
    let listed = tokio::time::timeout(CONNECT_TIMEOUT, peer.list_all_tools())
        .await
        .map_err(|_| {
            format!(
                "tools/list had no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let mut offered: Vec<Arc<dyn Tool>> = Vec::new();
    for t in listed {
        let name = format!("{server}.{}", t.name);
        let fits = name.len() <= MAX_TOOL_NAME
            && !t.name.is_empty()
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !fits {
            tracing::warn!(server, tool = %t.name, "left out an upstream tool whose name is empty, too long or has characters MCP does not allow");
            continue;
        }
        let hints = t.annotations.clone().unwrap_or_default();
        let defaults = Annotations::default();
        offered.push(Arc::new(UpstreamTool {
            name,
            server: server.to_string(),
            remote: t.name.to_string(),
            description: t.description.as_deref().unwrap_or_default().to_string(),
            schema: Value::Object((*t.input_schema).clone()),
            annotations: Annotations {
                read_only: hints.read_only_hint.unwrap_or(defaults.read_only),
                destructive: hints.destructive_hint.unwrap_or(defaults.destructive),
                idempotent: hints.idempotent_hint.unwrap_or(defaults.idempotent),
                open_world: hints.open_world_hint.unwrap_or(defaults.open_world),
            },
            slot: slot.clone(),
        }));
    }
    lock(status).tools = offered.len();
    tools.replace_prefix(server, offered);
    Ok(())
}

/// The client side of a connection: lists the tools again when the server says they changed.
struct Watch {
    server: String,
    tools: Tools,
    slot: Slot,
    status: Shared<Status>,
}

impl ClientHandler for Watch {
    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        if let Err(e) = import(
            &self.server,
            &context.peer,
            &self.tools,
            &self.slot,
            &self.status,
        )
        .await
        {
            tracing::warn!(server = %self.server, error = %e, "could not list an upstream's tools again");
        }
    }
}

/// A tool an upstream server offers, called through its connection.
struct UpstreamTool {
    name: String,
    server: String,
    /// Its name on the server.
    remote: String,
    description: String,
    schema: Value,
    annotations: Annotations,
    slot: Slot,
}

#[async_trait::async_trait]
impl Tool for UpstreamTool {
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: self.name.clone().into(),
            description: self.description.clone().into(),
            parameters: self.schema.clone(),
        }
    }
    fn annotations(&self) -> Annotations {
        self.annotations
    }
    fn source(&self) -> String {
        format!("mcp:{}", self.server)
    }
    fn outside_runs(&self) -> bool {
        true
    }
    /// Only what the server says is idempotent or read-only is retried after a crash without
    /// asking anyone.
    fn idempotent(&self, _: &Value) -> bool {
        self.annotations.idempotent || self.annotations.read_only
    }
    async fn call(&self, _ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let peer = self
            .slot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                ToolError::Failed(format!(
                    "upstream MCP server {} is not connected now (it is being started again)",
                    self.server
                ))
            })?;
        let arguments = match args {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(ToolError::InvalidArgs(format!(
                    "arguments must be an object, not {other}"
                )))
            }
        };
        let result = peer
            .call_tool(CallToolRequestParams::new(self.remote.clone()).with_arguments(arguments))
            .await
            .map_err(|e| ToolError::Failed(format!("upstream MCP server {}: {e}", self.server)))?;
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| match c {
                ContentBlock::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect();
        if result.is_error == Some(true) {
            return Err(ToolError::Failed(format!(
                "{} answered with an error: {}",
                self.name,
                text.join(" ")
            )));
        }
        Ok(match result.structured_content {
            Some(v) => v,
            None => json!({ "content": text.join("\n") }),
        })
    }
}
