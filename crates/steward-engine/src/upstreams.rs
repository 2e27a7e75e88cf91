//! Upstream MCP servers: each one's tools in the registry under its name as a prefix
//! (`everything.echo`), for managed runs (`spec.tools: [everything.*]`) and MCP clients alike,
//! on the same governance path as native tools. A server is a command spoken to over stdio or
//! a URL spoken to over Streamable HTTP. Every node runs its own connection to every
//! configured server and follows the store's list of them; a connection is supervised —
//! made again with growing pauses when it ends — and its tools are listed again when the server
//! says they changed, so they appear and disappear without a restart of Steward.
//!
//! Credentials: a definition's environment values and headers may name vault secrets as
//! `{{secret:NAME}}`; they are resolved when connecting, so the store, the API and the logs only
//! ever hold the placeholder, and a rotated secret is used from the next connection on. A server
//! over HTTP may instead be reached with an OAuth 2 client: its token, shared by the cluster,
//! goes on each request (see `upstream_oauth`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientRequest, ContentBlock, PingRequest, ProgressNotificationParam, ProgressToken, RequestId,
    ServerResult,
};
use rmcp::service::PeerRequestOptions;
use rmcp::service::{NotificationContext, Peer, RoleClient, ServiceError};
use rmcp::transport::common::client_side_sse::ExponentialBackoff;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Value};
use steward_llm::SecretSource;
use steward_store::{McpServerRecord, McpServerStore};
use steward_tools::openapi::OAuthClient;
use steward_tools::{
    secret_refs, Annotations, Progress, ProgressSink, Tool, ToolContext, ToolError, ToolInfo, Tools,
};
use steward_types::Millis;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::oauth::OAuthTokens;
use crate::tool_plane::violation;
use crate::upstream_oauth::Authorised;

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

/// Where a server's tools find its connection (none while it is down), and how they say it
/// broke.
#[derive(Clone)]
struct Slot {
    peer: Arc<RwLock<Option<Peer<RoleClient>>>>,
    restart: Arc<Notify>,
    /// Calls in flight whose caller asked for progress, by the token sent upstream.
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressSink>>>,
    /// Who answers for the server's tools (its definition's owner).
    owner: Arc<str>,
    /// Cancelled when this definition of the server is removed or replaced.
    stop: CancellationToken,
}

impl Slot {
    fn peer(&self) -> Option<Peer<RoleClient>> {
        self.peer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, peer: Option<Peer<RoleClient>>) {
        *self.peer.write().unwrap_or_else(|e| e.into_inner()) = peer;
    }

    /// A call found the connection broken (the server went away, or forgot the session when
    /// it restarted): calls fail at once until a new connection is made, which starts now.
    fn broken(&self) {
        self.set(None);
        self.restart.notify_one();
    }
}

struct Running {
    updated_at: Millis,
    stop: CancellationToken,
    /// Set when it stops because a newer definition replaces it: its successor's import
    /// replaces its tools, so it must not remove them on the way out.
    replaced: Arc<AtomicBool>,
    restart: Arc<Notify>,
    status: Shared<Status>,
}

/// What connections are made with, and where their tools go.
#[derive(Clone)]
pub struct Means {
    pub tools: Tools,
    pub secrets: Option<Arc<dyn SecretSource>>,
    pub tokens: Arc<OAuthTokens>,
    /// Who servers over stdio run as, when not as Steward's own user.
    pub user: Option<ServerUser>,
    /// The cgroups that bound servers' processes, where this host has them.
    pub limits: Option<Arc<ServerLimits>>,
}

/// The cgroup of one Steward process's servers: this, and its pid.
const SCOPE: &str = "mcp-servers-";

/// Memory and process limits of servers over stdio: each server's processes in a cgroup of its
/// own (below one for this Steward process), removed — and whatever is left in it killed —
/// when its process ends. The process is moved in just after it starts.
pub struct ServerLimits {
    root: steward_sandbox::cgroup::CgroupRoot,
    limits: steward_sandbox::Limits,
}

impl ServerLimits {
    /// None where this host has no cgroup tree Steward may write (then servers run unbounded,
    /// as the log says), or when `cfg` sets no limit.
    pub fn of(cfg: &steward_types::config::McpServersConfig) -> Option<Arc<ServerLimits>> {
        if cfg.memory_mb == 0 && cfg.pids == 0 {
            return None;
        }
        let base = steward_sandbox::cgroup::CgroupRoot::detect();
        // Groups of Steward processes that are gone: what is left in them (servers orphaned
        // by a killed Steward) is killed, and they are removed.
        for stale in base.iter().flat_map(|b| b.children(SCOPE)) {
            let gone = stale[SCOPE.len()..]
                .parse::<u32>()
                .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if let Some(scope) = base
                .as_ref()
                .filter(|_| gone)
                .and_then(|b| b.scoped(&stale).ok())
            {
                scope.sweep_named("");
                scope.remove_empty();
            }
        }
        let root = base.and_then(|r| r.scoped(&format!("{SCOPE}{}", std::process::id())).ok());
        let Some(root) = root else {
            tracing::warn!("no writable cgroup tree: upstream MCP servers run without memory and process limits");
            return None;
        };
        Some(Arc::new(ServerLimits {
            root,
            limits: steward_sandbox::Limits {
                memory_bytes: if cfg.memory_mb == 0 {
                    u64::MAX
                } else {
                    cfg.memory_mb << 20
                },
                pids: if cfg.pids == 0 { u64::MAX } else { cfg.pids },
                cpu_millicores: None,
                ..steward_sandbox::Limits::default()
            },
        }))
    }

    /// Moves process `pid` of server `server` into a group of its own, limited.
    fn confine(&self, server: &str, pid: u32) -> Result<Confined, String> {
        let group = self
            .root
            .create(&format!("{server}-{pid}"), &self.limits)
            .map_err(|e| format!("cannot make the server's cgroup: {e}"))?;
        let group = Confined(Some(group));
        for procs in group.0.iter().flat_map(|g| g.procs_files()) {
            std::fs::write(&procs, pid.to_string())
                .map_err(|e| format!("cannot move the server into its cgroup: {e}"))?;
        }
        Ok(group)
    }
}

/// A server's cgroup: removed (what is left in it killed) when dropped.
struct Confined(Option<steward_sandbox::cgroup::Cgroup>);

impl Drop for Confined {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            // Removing waits a little for the kernel: not on the runtime's threads.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || g.remove())),
                Err(_) => g.remove(),
            }
        }
    }
}

/// An unprivileged user servers over stdio run as (when Steward runs as root): each start
/// gets a fresh private home, its working directory, removed when the process ends.
#[derive(Clone, Copy, Debug)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServerUser {
    /// The user servers run as under `cfg`: none unless this process is root and `cfg` names
    /// another.
    pub fn of(cfg: &steward_types::config::McpServersConfig) -> Option<ServerUser> {
        (nix::unistd::geteuid().is_root() && cfg.uid != 0).then_some(ServerUser {
            uid: cfg.uid,
            gid: cfg.gid,
        })
    }

    /// Makes `cmd` start as this user, in a new home of its own (returned: the process's
    /// life long).
    fn apply(&self, cmd: &mut tokio::process::Command) -> Result<tempfile::TempDir, String> {
        let home = tempfile::Builder::new()
            .prefix("steward-mcp-")
            .tempdir()
            .map_err(|e| format!("cannot make the server's home: {e}"))?;
        std::os::unix::fs::chown(home.path(), Some(self.uid), Some(self.gid))
            .map_err(|e| format!("cannot give the server's home to uid {}: {e}", self.uid))?;
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("TMPDIR", home.path());
        Ok(home)
    }
}

/// This node's connections to the configured upstream servers.
pub struct Upstreams {
    means: Means,
    store: Arc<dyn McpServerStore>,
    running: Mutex<HashMap<String, Running>>,
}

impl Upstreams {
    pub fn new(means: Means, store: Arc<dyn McpServerStore>) -> Arc<Upstreams> {
        // The HTTP client of Streamable HTTP upstreams uses the process's rustls provider.
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(Upstreams {
            means,
            store,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Brings this node in line with the store: starts servers added, starts again those
    /// changed, stops those removed (their tools leave the registry).
    pub async fn follow(&self) -> steward_store::Result<()> {
        let wanted = self.store.mcp_servers().await?;
        let mut running = lock(&self.running);
        let mut removed = Vec::new();
        running.retain(|name, r| {
            let same = wanted.iter().find(|w| &w.name == name);
            let keep = same.is_some_and(|w| w.updated_at == r.updated_at);
            if !keep {
                r.replaced.store(same.is_some(), Ordering::SeqCst);
                r.stop.cancel();
                if same.is_none() {
                    removed.push(name.clone());
                }
            }
            keep
        });
        // A removed server's tools leave the registry before its removal is answered: its
        // supervisor stops on its own time, and nothing may call them in between.
        for name in removed {
            self.means.tools.replace_prefix(&name, Vec::new());
        }
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
                self.means.clone(),
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
    means: Means,
    status: Shared<Status>,
    (stop, replaced): (CancellationToken, Arc<AtomicBool>),
    restart: Arc<Notify>,
) {
    let slot = Slot {
        peer: Arc::default(),
        restart: restart.clone(),
        stop: stop.clone(),
        progress: Arc::default(),
        owner: if spec.owner.is_empty() {
            "admin".into()
        } else {
            spec.owner.as_str().into()
        },
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match connect(&spec, &means, &slot, &status).await {
            // The server's home and cgroup are kept while its process lives, removed after.
            Ok((service, _kept)) => {
                let ct = service.cancellation_token();
                {
                    let mut s = lock(&status);
                    s.state = "connected";
                    s.last_error = None;
                }
                let peer = service.peer().clone();
                tokio::select! {
                    _ = service.waiting() => {
                        lock(&status).last_error = Some(match spec.transport.as_str() {
                            "http" => "the connection to the server ended".into(),
                            _ => "the server's process ended".into(),
                        });
                    }
                    // A server over HTTP that restarted has forgotten the session: nothing
                    // ends on this side, so it is asked whether it still answers.
                    why = stops_answering(&peer), if spec.transport == "http" => {
                        lock(&status).last_error = Some(why);
                        ct.cancel();
                        backoff = MIN_BACKOFF;
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
        slot.set(None);
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
    slot.set(None);
    if !replaced.load(Ordering::SeqCst) {
        means.tools.replace_prefix(&spec.name, Vec::new());
    }
}

type Service = rmcp::service::RunningService<RoleClient, Watch>;

/// How often a connection is checked, and how long a check may take.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the server answers a ping within [`PING_TIMEOUT`].
async fn answers(peer: &Peer<RoleClient>) -> Result<(), String> {
    let ping = peer.send_request(ClientRequest::PingRequest(PingRequest::default()));
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the server stopped answering: {e}")),
        Err(_) => Err(format!(
            "the server did not answer a ping within {} s",
            PING_TIMEOUT.as_secs()
        )),
    }
}

/// Returns (why) once the server stops answering pings sent every [`PING_EVERY`].
async fn stops_answering(peer: &Peer<RoleClient>) -> String {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        if let Err(why) = answers(peer).await {
            return why;
        }
    }
}

/// Starts the server's process or reaches its URL, speaks the handshake and imports its tools.
async fn connect(
    spec: &McpServerRecord,
    means: &Means,
    slot: &Slot,
    status: &Shared<Status>,
) -> Result<(Service, Kept), String> {
    let (tools, secrets) = (&means.tools, means.secrets.as_deref());
    // What the server's process keeps while it lives: its home, its cgroup.
    let mut kept: Kept = (None, None);
    let watch = Watch {
        server: spec.name.clone(),
        tools: tools.clone(),
        slot: slot.clone(),
        status: status.clone(),
    };
    let handshake = match spec.transport.as_str() {
        "http" => {
            let headers: HashMap<String, String> = serde_json::from_str(&spec.headers)
                .map_err(|e| format!("headers is not a JSON object of strings: {e}"))?;
            let mut custom = HashMap::new();
            for (k, v) in headers {
                let v = with_secrets(&v, secrets).map_err(|e| format!("header {k}: {e}"))?;
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header {k}: {e}"))?;
                let mut value = http::HeaderValue::from_str(&v)
                    .map_err(|_| format!("header {k}: its value is not a valid header value"))?;
                value.set_sensitive(true);
                custom.insert(name, value);
            }
            let mut config = StreamableHttpClientTransportConfig::with_uri(spec.url.as_str())
                .custom_headers(custom);
            // A response stream cut short is resumed a few times, briefly; then the call fails
            // (the server is down, say) rather than wait for it without end.
            let mut retry = ExponentialBackoff::default();
            retry.max_times = Some(3);
            retry.base_duration = Duration::from_millis(250);
            retry.max_delay = Some(Duration::from_secs(2));
            config.retry_config = Arc::new(retry);
            if spec.oauth.is_empty() {
                let transport = StreamableHttpClientTransport::from_config(config);
                tokio::time::timeout(CONNECT_TIMEOUT, watch.serve(transport)).await
            } else {
                let client: OAuthClient = serde_json::from_str(&spec.oauth)
                    .map_err(|e| format!("the stored OAuth client: {e}"))?;
                let http = Authorised::new(&spec.name, client, means.tokens.clone());
                let transport = StreamableHttpClientTransport::with_client(http, config);
                tokio::time::timeout(CONNECT_TIMEOUT, watch.serve(transport)).await
            }
        }
        _ => {
            let argv: Vec<String> = serde_json::from_str(&spec.command)
                .map_err(|e| format!("command is not a JSON array of strings: {e}"))?;
            let env: HashMap<String, String> = serde_json::from_str(&spec.env)
                .map_err(|e| format!("env is not a JSON object of strings: {e}"))?;
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| "command is empty".to_string())?;
            let mut cmd = tokio::process::Command::new(program);
            // None of Steward's own environment (its vault key, database URL, tokens): only
            // what a program needs, and the server's configured variables.
            cmd.args(args)
                .env_clear()
                .envs(steward_types::child_env::passed_on())
                .kill_on_drop(true);
            for (k, v) in env {
                cmd.env(
                    &k,
                    with_secrets(&v, secrets).map_err(|e| format!("env {k}: {e}"))?,
                );
            }
            // Not as root: as a user of its own, in a home of its own.
            if let Some(user) = means.user {
                kept.0 = Some(user.apply(&mut cmd)?);
            }
            let (process, _) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {program:?}: {e}"))?;
            lock(status).pid = process.id();
            if let (Some(limits), Some(pid)) = (&means.limits, process.id()) {
                kept.1 = Some(limits.confine(&spec.name, pid)?);
            }
            tokio::time::timeout(CONNECT_TIMEOUT, watch.serve(process)).await
        }
    };
    let service = handshake
        .map_err(|_| {
            format!(
                "no answer to the handshake within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("the handshake failed: {e}"))?;
    let peer = service.peer().clone();
    slot.set(Some(peer.clone()));
    import(&spec.name, &peer, tools, slot, status).await?;
    Ok((service, kept))
}

/// A server process's home and cgroup, kept while it lives.
type Kept = (Option<tempfile::TempDir>, Option<Confined>);

/// `value` with each `{{secret:NAME}}` replaced by the vault's value of NAME.
fn with_secrets(value: &str, secrets: Option<&dyn SecretSource>) -> Result<String, String> {
    let mut out = String::new();
    for part in secret_refs::parts(value)? {
        match part {
            secret_refs::Part::Text(t) => out.push_str(t),
            secret_refs::Part::UserSecret(name) => {
                return Err(format!(
                    "{{{{user_secret:{name}}}}}: one connection serves every caller, so it cannot carry a caller's own credential"
                ))
            }
            secret_refs::Part::Secret(name) => {
                let secrets = secrets.ok_or_else(|| {
                    format!("secret {name:?}: this node has no vault (set STEWARD_VAULT_KEY)")
                })?;
                let secret = secrets.secret(name).ok_or_else(|| {
                    format!("secret {name:?} is not in the vault (PUT /api/v1/secrets/{name})")
                })?;
                out.push_str(&secret);
            }
        }
    }
    Ok(out)
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
    let version = peer
        .peer_info()
        .and_then(|i| i.server_info.as_ref().map(|s| s.version.clone()))
        .unwrap_or_default();
    let mut offered: Vec<Arc<dyn Tool>> = Vec::new();
    for t in listed {
        // An output schema that does not compile is not passed on (nobody could check it).
        let output = t.output_schema.as_ref().and_then(|o| {
            let schema = Value::Object((**o).clone());
            let check = jsonschema::validator_for(&schema).ok()?;
            Some((schema, Arc::new(check)))
        });
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
            output_schema: output.as_ref().map(|(s, _)| s.clone()),
            output_check: output.map(|(_, c)| c),
            version: version.clone(),
            annotations: Annotations {
                read_only: hints.read_only_hint.unwrap_or(defaults.read_only),
                destructive: hints.destructive_hint.unwrap_or(defaults.destructive),
                idempotent: hints.idempotent_hint.unwrap_or(defaults.idempotent),
                open_world: hints.open_world_hint.unwrap_or(defaults.open_world),
            },
            slot: slot.clone(),
        }));
    }
    // A definition removed or replaced while it connected must not bring back its tools (a
    // successor's would be replaced by ones bound to a connection about to close).
    if slot.stop.is_cancelled() {
        return Err("the server's definition was removed or replaced".into());
    }
    lock(status).tools = offered.len();
    tools.replace_prefix(server, offered);
    Ok(())
}

/// Calls a tool upstream. A call whose caller asked for progress is sent so its progress
/// token is known, and the server's progress for it goes to the caller; a call given up
/// (dropped) before its answer is cancelled upstream, as rmcp's own `call_tool` does.
async fn call_upstream(
    peer: &Peer<RoleClient>,
    params: CallToolRequestParams,
    slot: &Slot,
    progress: Option<ProgressSink>,
) -> Result<CallToolResult, ServiceError> {
    let Some(sink) = progress else {
        return peer.call_tool(params).await;
    };
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let handle = peer
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await?;
    let mut pending = InFlight {
        peer: peer.clone(),
        id: Some(handle.id.clone()),
        token: handle.progress_token.clone(),
        progress: slot.progress.clone(),
    };
    lock(&slot.progress).insert(handle.progress_token.clone(), sink);
    let answer = handle.await_response().await;
    pending.id = None; // answered: nothing to cancel
    match answer? {
        ServerResult::CallToolResult(r) => Ok(r),
        _ => Err(ServiceError::UnexpectedResponse),
    }
}

/// A call sent upstream with a progress token: when it goes, its token is forgotten, and if
/// it had no answer yet the server is told to cancel it.
struct InFlight {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
    token: ProgressToken,
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressSink>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.progress).remove(&self.token);
        if let Some(id) = self.id.take() {
            let peer = self.peer.clone();
            tokio::spawn(async move {
                let cancel = CancelledNotificationParam::new(
                    Some(id),
                    Some("the caller cancelled the call".into()),
                );
                let _ = peer.notify_cancelled(cancel).await;
            });
        }
    }
}

/// The client side of a connection: lists the tools again when the server says they changed.
struct Watch {
    server: String,
    tools: Tools,
    slot: Slot,
    status: Shared<Status>,
}

impl ClientHandler for Watch {
    /// Progress of a call whose caller asked for it: passed on to that caller.
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let sink = lock(&self.slot.progress)
            .get(&params.progress_token)
            .cloned();
        if let Some(sink) = sink {
            sink(Progress {
                progress: params.progress,
                total: params.total,
                message: params.message,
            });
        }
    }

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
    output_schema: Option<Value>,
    /// The output schema, compiled: a result it does not allow is refused, not passed on.
    output_check: Option<Arc<jsonschema::Validator>>,
    /// The server's version, as it says when connected.
    version: String,
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
    fn output_schema(&self) -> Option<Value> {
        self.output_schema.clone()
    }
    fn version(&self) -> String {
        self.version.clone()
    }
    fn owner(&self) -> String {
        self.slot.owner.to_string()
    }
    fn outside_runs(&self) -> bool {
        true
    }
    /// Only what the server says is idempotent or read-only is retried after a crash without
    /// asking anyone.
    fn idempotent(&self, _: &Value) -> bool {
        self.annotations.idempotent || self.annotations.read_only
    }
    /// A call whose connection broke before its answer is in doubt, and the Kernel's rule
    /// applies: an idempotent one is made once more on the next connection (if one is made
    /// within [`RECONNECT_WAIT`]); any other fails, saying it may or may not have taken effect.
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let why = match self.call_once(ctx, &args).await {
            Attempt::Answered(r) => return r,
            Attempt::Broke(why) => why,
        };
        if !self.idempotent(&args) {
            return Err(ToolError::Failed(format!(
                "{why}; the call may or may not have taken effect"
            )));
        }
        tracing::info!(tool = %self.name, %why, "an idempotent upstream call broke: making it again");
        if !self.slot.reconnected(RECONNECT_WAIT).await {
            return Err(ToolError::Failed(format!(
                "{why}; it is idempotent, but the server was not back within {} s to make it again",
                RECONNECT_WAIT.as_secs()
            )));
        }
        match self.call_once(ctx, &args).await {
            Attempt::Answered(r) => r,
            Attempt::Broke(why) => Err(ToolError::Failed(format!("{why} (the second time)"))),
        }
    }
}

/// What became of one attempt at a call.
enum Attempt {
    /// The server answered (or the call never left): what it said.
    Answered(Result<Value, ToolError>),
    /// The connection broke before the answer: the call is in doubt. Why.
    Broke(String),
}

/// How long an idempotent call whose connection broke waits for the next one.
const RECONNECT_WAIT: Duration = Duration::from_secs(15);

impl Slot {
    /// Whether a connection is there within `wait` (the broken one has been dropped).
    async fn reconnected(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.peer().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl UpstreamTool {
    /// One attempt at the call.
    async fn call_once(&self, ctx: &ToolContext, args: &Value) -> Attempt {
        let Some(peer) = self.slot.peer() else {
            return Attempt::Answered(Err(ToolError::Failed(format!(
                "upstream MCP server {} is not connected now (it is being connected again)",
                self.server
            ))));
        };
        let arguments = match args.clone() {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => {
                return Attempt::Answered(Err(ToolError::InvalidArgs(format!(
                    "arguments must be an object, not {other}"
                ))))
            }
        };
        // A call waits as long as its caller lets it, while the server still answers pings;
        // one that no longer does (it died, or restarted and forgot the session) fails the call
        // now rather than at the caller's timeout.
        let mut params = CallToolRequestParams::new(self.remote.clone()).with_arguments(arguments);
        if let Some(tp) = &ctx.traceparent {
            let mut meta = rmcp::model::RequestMetaObject::default();
            meta.0.set_traceparent(tp.clone());
            params.meta = Some(meta);
        }
        let call = call_upstream(&peer, params, &self.slot, ctx.progress.clone());
        let answer = tokio::select! {
            r = call => r,
            why = stops_answering(&peer) => {
                self.slot.broken();
                return Attempt::Broke(format!(
                    "upstream MCP server {}: {why} (connecting to it again)",
                    self.server
                ));
            }
        };
        let result = match answer {
            Ok(r) => r,
            // The server answered, with an error of its own: the connection is fine.
            Err(ServiceError::McpError(e)) => {
                return Attempt::Answered(Err(ToolError::Failed(format!(
                    "upstream MCP server {}: {}",
                    self.server, e.message
                ))))
            }
            Err(e) => {
                self.slot.broken();
                return Attempt::Broke(format!(
                    "upstream MCP server {}: {e} (connecting to it again)",
                    self.server
                ));
            }
        };
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| match c {
                ContentBlock::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect();
        if result.is_error == Some(true) {
            return Attempt::Answered(Err(ToolError::Failed(format!(
                "{} answered with an error: {}",
                self.name,
                text.join(" ")
            ))));
        }
        // The server promised results of a shape: one of another shape is its error.
        if let Some(check) = &self.output_check {
            let broken = match &result.structured_content {
                None => Some("it has no structured result".to_string()),
                Some(v) => violation(check, v),
            };
            if let Some(why) = broken {
                return Attempt::Answered(Err(ToolError::Failed(format!(
                    "{} answered with a result its own output schema does not allow: {}",
                    self.name, why
                ))));
            }
        }
        Attempt::Answered(Ok(match result.structured_content {
            Some(v) => v,
            None => json!({ "content": text.join("\n") }),
        }))
    }
}
