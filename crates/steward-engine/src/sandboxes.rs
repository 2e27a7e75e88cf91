//! Sandboxes as the engine offers them. Each managed run's sandbox, as the tools see it: a
//! workspace directory the run keeps for its lifetime (`<data_dir>/workspaces/<run id>`), where
//! every `sandbox_exec` runs a fresh, isolated process tree (`steward-sandbox`), and whose files
//! `sandbox_write_file` and `sandbox_read_file` move in and out — never following a link, so
//! nothing a sandboxed command leaves behind can point them at the host. And standalone,
//! persistent sandboxes for the API and CLI, with snapshots and forks (`steward_sandbox::layers`):
//! one exec or snapshot at a time per sandbox, which can be cancelled, paused (frozen: a paused
//! sandbox runs nothing until resumed) and inspected while it runs; their files move through
//! the sandbox itself.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use steward_sandbox::{layers, Control, Ended, ExecRequest, Limits, Sandboxes, Workspace};
use steward_tools::ToolError;
use steward_types::RunId;

/// Largest file the file tools move.
const MAX_FILE_BYTES: usize = 1 << 20;
/// Largest file moved in or out of a persistent sandbox through the API.
pub const MAX_TRANSFER_BYTES: usize = 64 << 20;
/// Largest snippet of code an exec takes.
const MAX_CODE_BYTES: usize = 100 << 10;

pub struct SandboxService {
    /// `Err`: why code may not run here (a missing isolation layer, no helper…).
    sandboxes: Result<Sandboxes, String>,
    workspaces: PathBuf,
    limits: Limits,
    persistent: Option<layers::Store>,
    /// Nano-dollars per CPU-millisecond, when sandbox CPU is charged.
    cpu_nanos_per_ms: Option<f64>,
    /// One exec or snapshot at a time per persistent sandbox.
    busy: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The exec each persistent sandbox is running, if any.
    running: std::sync::Mutex<HashMap<String, Arc<Control>>>,
}

/// What an exec in a persistent sandbox runs.
#[derive(Clone, Debug)]
pub enum Command {
    /// A `/bin/sh -c` command line.
    Shell(String),
    /// A snippet of code for an interpreter on the host: `bash`, `sh`, `python3` or `node`.
    Code { language: String, code: String },
}

impl Command {
    fn argv(&self) -> Result<Vec<String>, ToolError> {
        let (program, flag, text) = match self {
            Command::Shell(c) => ("/bin/sh", "-c", c),
            Command::Code { language, code } => {
                let (program, flag) = match language.as_str() {
                    "bash" => ("bash", "-c"),
                    "sh" => ("/bin/sh", "-c"),
                    "python3" | "python" => ("python3", "-c"),
                    "node" | "javascript" => ("node", "-e"),
                    other => {
                        return Err(ToolError::InvalidArgs(format!(
                            "language {other:?}: one of bash, sh, python3, node"
                        )))
                    }
                };
                (program, flag, code)
            }
        };
        if text.is_empty() || text.len() > MAX_CODE_BYTES || text.contains('\0') {
            return Err(ToolError::InvalidArgs(format!(
                "command: 1 to {MAX_CODE_BYTES} bytes, no NUL"
            )));
        }
        Ok(vec![program.into(), flag.into(), text.clone()])
    }
}

/// A file or directory in a sandbox's workspace, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `link` or `other`.
    pub kind: &'static str,
    pub size: u64,
    pub modified_ms: i64,
}

/// A persistent sandbox as listed.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    pub id: String,
    /// Read-only layers under its own, top first.
    pub layers: Vec<String>,
    /// `idle`, `running` or `paused`.
    pub state: &'static str,
}

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

/// An exec that could not run: `Busy` when every slot is taken, else a failure.
fn exec_failed(e: steward_sandbox::Error) -> ToolError {
    match e {
        steward_sandbox::Error::Busy(m) => ToolError::Busy(m),
        other => failed(other),
    }
}

/// A request the sandbox store refused (no such sandbox or snapshot, a bad id).
fn refused(e: steward_sandbox::Error) -> ToolError {
    match e {
        steward_sandbox::Error::NotFound(m) => ToolError::NotFound(m),
        steward_sandbox::Error::Setup(m) => ToolError::InvalidArgs(m),
        other => failed(other),
    }
}

/// The merge queue's checks run in a sandbox of their own on the checkout.
#[async_trait::async_trait]
impl steward_orchestrate::Isolated for SandboxService {
    async fn exec_dir(&self, dir: &Path, command: &str) -> Result<Option<(bool, Vec<u8>)>, String> {
        match SandboxService::exec_dir(self, dir, command).await {
            Ok(r) => {
                let mut out = r.stdout;
                out.extend_from_slice(&r.stderr);
                Ok(Some((r.ended == steward_sandbox::Ended::Exit(0), out)))
            }
            // Sandboxes off on this host.
            Err(ToolError::Denied(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Sandbox CPU, priced per millisecond when it is charged (`steward_tools::SANDBOX_CPU_MS`).
impl crate::meters::Meter for SandboxService {
    fn worst_case_nanos(&self) -> Option<i64> {
        SandboxService::worst_case_nanos(self)
    }
    fn cost_nanos(&self, cpu_ms: u64) -> i64 {
        self.cpu_cost_nanos(cpu_ms)
    }
}

impl SandboxService {
    /// `persistent`: where standalone sandboxes, their layers and snapshots live.
    pub fn new(
        sandboxes: Result<Sandboxes, String>,
        workspaces: PathBuf,
        persistent: PathBuf,
        limits: Limits,
        cpu_second_usd: Option<f64>,
    ) -> Self {
        let persistent = match layers::Store::open(persistent) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "persistent sandboxes are unavailable");
                None
            }
        };
        SandboxService {
            sandboxes,
            workspaces,
            limits,
            persistent,
            cpu_nanos_per_ms: cpu_second_usd.map(|usd| usd * 1e9 / 1000.0),
            busy: std::sync::Mutex::new(HashMap::new()),
            running: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// What one exec may cost at most (its wall-clock limit at its CPU limit, or a whole core
    /// when unlimited), in nano-dollars, when sandbox CPU is charged.
    pub fn worst_case_nanos(&self) -> Option<i64> {
        let per_ms = self.cpu_nanos_per_ms?;
        let cores = self.limits.cpu_millicores.unwrap_or(1000) as f64 / 1000.0;
        Some((self.limits.wall.as_millis() as f64 * cores * per_ms).ceil() as i64)
    }

    /// What `cpu_ms` of sandbox CPU costs, in nano-dollars (0 when not charged).
    pub fn cpu_cost_nanos(&self, cpu_ms: u64) -> i64 {
        self.cpu_nanos_per_ms
            .map_or(0, |per_ms| (cpu_ms as f64 * per_ms).ceil() as i64)
    }

    fn ready(&self) -> Result<(&Sandboxes, &layers::Store), ToolError> {
        let s = self
            .sandboxes
            .as_ref()
            .map_err(|why| ToolError::Denied(format!("sandboxes are unavailable here: {why}")))?;
        let p = self
            .persistent
            .as_ref()
            .ok_or_else(|| ToolError::Denied("persistent sandboxes are unavailable here".into()))?;
        Ok((s, p))
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.entry(id.to_string()).or_default().clone()
    }

    /// New persistent sandboxes: `count` of them on `snapshot` (forks), or empty; with
    /// `ttl_ms`, each expires after that long unused.
    pub fn create(
        &self,
        snapshot: Option<&str>,
        count: usize,
        ttl_ms: Option<i64>,
        egress: &[String],
        now_ms: i64,
    ) -> Result<Vec<String>, ToolError> {
        let (_, store) = self.ready()?;
        steward_sandbox::egress::AllowList::parse(egress).map_err(ToolError::InvalidArgs)?;
        if !(1..=64).contains(&count) {
            return Err(ToolError::InvalidArgs("count: from 1 to 64".into()));
        }
        if ttl_ms.is_some_and(|t| t < 1000) {
            return Err(ToolError::InvalidArgs("ttl_s: at least 1".into()));
        }
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let id = format!("sbx_{}", uuid::Uuid::now_v7().simple());
            store.create(&id, snapshot).map_err(refused)?;
            if let Some(t) = ttl_ms {
                store.set_ttl(&id, t, now_ms).map_err(failed)?;
            }
            if !egress.is_empty() {
                store.set_egress(&id, egress).map_err(failed)?;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The snapshot a template's `setup` commands build, run once in a fresh sandbox and kept:
    /// the same setup later reuses it. A command that fails fails the template.
    pub async fn template(&self, setup: &[String]) -> Result<String, ToolError> {
        let (sandboxes, store) = self.ready()?;
        if setup.is_empty() || setup.len() > 64 {
            return Err(ToolError::InvalidArgs("template: 1 to 64 commands".into()));
        }
        let key: String = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(
                serde_json::to_vec(setup).unwrap_or_default(),
            ))
        };
        let lock = self.lock(&format!("template-{key}"));
        let _one = lock.lock().await;
        if let Some(snap) = store.template(&key) {
            return Ok(snap);
        }
        let id = format!("tpl_{}", uuid::Uuid::now_v7().simple());
        store.create(&id, None).map_err(failed)?;
        let built = async {
            for (i, cmd) in setup.iter().enumerate() {
                let ws = store.layered(&id).map_err(failed)?;
                let r = sandboxes
                    .exec(self.request(Workspace::Layered(ws), shell(cmd), b""))
                    .await
                    .map_err(exec_failed)?;
                if r.ended != Ended::Exit(0) {
                    return Err(ToolError::InvalidArgs(format!(
                        "template: command {i} ended {:?}: {}",
                        r.ended,
                        String::from_utf8_lossy(&r.stderr).trim()
                    )));
                }
            }
            store.snapshot(&id).map_err(failed)
        }
        .await;
        let _ = store.remove(&id);
        let snap = built?;
        store.save_template(&key, &snap).map_err(failed)?;
        Ok(snap)
    }

    /// Removes sandboxes left unused past their idle lifetime; returns them.
    pub async fn sweep(&self, now_ms: i64) -> Vec<String> {
        let Ok((_, store)) = self.ready() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for id in store.expired(now_ms).unwrap_or_default() {
            if self.remove(&id).await.is_ok() {
                gone.push(id);
            }
        }
        gone
    }

    pub fn list(&self) -> Result<Vec<SandboxInfo>, ToolError> {
        let (_, store) = self.ready()?;
        let mut out = Vec::new();
        for id in store.ids().map_err(failed)? {
            let layers = store.stack_of(&id).map_err(failed)?;
            let state = if store.paused(&id) {
                "paused"
            } else if self.running_map().contains_key(&id) {
                "running"
            } else {
                "idle"
            };
            out.push(SandboxInfo { id, layers, state });
        }
        Ok(out)
    }

    fn known(&self, store: &layers::Store, id: &str) -> Result<(), ToolError> {
        if store.exists(id) {
            Ok(())
        } else {
            Err(ToolError::NotFound(format!("no sandbox {id}")))
        }
    }

    /// Runs `command` in persistent sandbox `id`, on its layered workspace.
    pub async fn exec_in(
        &self,
        id: &str,
        command: &Command,
        stdin: &[u8],
        output: Option<tokio::sync::mpsc::Sender<steward_sandbox::Output>>,
        report: steward_sandbox::egress::Reporter,
        now_ms: i64,
    ) -> Result<steward_sandbox::ExecResult, ToolError> {
        let argv = command.argv()?;
        self.run_in(id, argv, stdin, output, None, Some(report), now_ms)
            .await
    }

    /// Runs `argv` in persistent sandbox `id` once it is free and not paused; its egress list
    /// applies when `report` hears of the connections.
    #[allow(clippy::too_many_arguments)]
    async fn run_in(
        &self,
        id: &str,
        argv: Vec<String>,
        stdin: &[u8],
        output: Option<tokio::sync::mpsc::Sender<steward_sandbox::Output>>,
        output_bytes: Option<usize>,
        report: Option<steward_sandbox::egress::Reporter>,
        now_ms: i64,
    ) -> Result<steward_sandbox::ExecResult, ToolError> {
        let (sandboxes, store) = self.ready()?;
        self.known(store, id)?;
        let lock = self.lock(id);
        let _one = lock.lock().await;
        if store.paused(id) {
            return Err(ToolError::Conflict(format!(
                "sandbox {id} is paused: resume it first"
            )));
        }
        let ws = store.layered(id).map_err(failed)?;
        let _ = store.touch(id, now_ms);
        let mut req = self.request(Workspace::Layered(ws), argv, stdin);
        req.output = output;
        if let Some(n) = output_bytes {
            req.limits.output_bytes = n;
        }
        let entries = store.egress(id).map_err(failed)?;
        if let (false, Some(report)) = (entries.is_empty(), report) {
            req.egress = Some(steward_sandbox::Egress {
                allow: steward_sandbox::egress::AllowList::parse(&entries)
                    .map_err(ToolError::InvalidArgs)?,
                report,
            });
        }
        let control = Arc::new(Control::default());
        req.control = Some(control.clone());
        self.running_map().insert(id.to_string(), control);
        let r = sandboxes.exec(req).await.map_err(exec_failed);
        self.running_map().remove(id);
        r
    }

    fn running_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Control>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exec sandbox `id` is running.
    fn current(&self, id: &str) -> Result<Arc<Control>, ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        self.running_map()
            .get(id)
            .cloned()
            .ok_or_else(|| ToolError::Conflict(format!("sandbox {id} is not running anything")))
    }

    /// Ends what sandbox `id` is running (it reports `cancelled`).
    pub fn cancel(&self, id: &str) -> Result<(), ToolError> {
        self.current(id)?.cancel();
        Ok(())
    }

    /// Pauses sandbox `id`: what it runs is frozen (its time limit stops counting), and
    /// nothing new starts until [`Self::resume`]. Lasts across restarts.
    pub fn pause(&self, id: &str) -> Result<(), ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        store.set_paused(id, true).map_err(failed)?;
        if let Some(c) = self.running_map().get(id) {
            c.pause().map_err(failed)?;
        }
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<(), ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        if let Some(c) = self.running_map().get(id) {
            c.resume().map_err(failed)?;
        }
        store.set_paused(id, false).map_err(failed)
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.persistent.as_ref().is_some_and(|s| s.paused(id))
    }

    /// The processes of what sandbox `id` runs (none when idle).
    pub fn processes(&self, id: &str) -> Result<Vec<steward_sandbox::Process>, ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        Ok(self
            .running_map()
            .get(id)
            .map(|c| c.processes())
            .unwrap_or_default())
    }

    /// Sends `signal` to process `pid` (as the sandbox numbers it) of sandbox `id`.
    pub fn kill(&self, id: &str, pid: i32, signal: i32) -> Result<(), ToolError> {
        self.current(id)?.kill(pid, signal).map_err(refused)
    }

    /// Writes `content` to `path` (under `/workspace`) in sandbox `id`, making its directories.
    pub async fn upload(
        &self,
        id: &str,
        path: &str,
        content: &[u8],
        now_ms: i64,
    ) -> Result<(), ToolError> {
        if content.len() > MAX_TRANSFER_BYTES {
            return Err(ToolError::InvalidArgs(format!(
                "a file of at most {MAX_TRANSFER_BYTES} bytes"
            )));
        }
        let path = inside_workspace(path)?;
        // Only a regular file is written (a FIFO would hold the exec until its time limit).
        let script = r#"if [ -e "$1" ] || [ -L "$1" ]; then { [ -f "$1" ] && [ ! -L "$1" ]; } || { echo "not a regular file" >&2; exit 1; }; fi; mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#;
        let r = self
            .run_in(
                id,
                script_argv(script, &path),
                content,
                None,
                None,
                None,
                now_ms,
            )
            .await?;
        file_op(&path, r).map(|_| ())
    }

    /// The content of `path` (under `/workspace`) in sandbox `id`.
    pub async fn download(&self, id: &str, path: &str, now_ms: i64) -> Result<Vec<u8>, ToolError> {
        let path = inside_workspace(path)?;
        let script = r#"{ test -f "$1" && test ! -L "$1"; } || { echo "not a regular file" >&2; exit 1; }; cat -- "$1""#;
        let r = self
            .run_in(
                id,
                script_argv(script, &path),
                b"",
                None,
                Some(MAX_TRANSFER_BYTES),
                None,
                now_ms,
            )
            .await?;
        if r.truncated {
            return Err(ToolError::InvalidArgs(format!(
                "{path}: larger than {MAX_TRANSFER_BYTES} bytes"
            )));
        }
        file_op(&path, r)
    }

    /// What directory `path` (under `/workspace`) of sandbox `id` holds, by name.
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        now_ms: i64,
    ) -> Result<Vec<FileEntry>, ToolError> {
        let path = inside_workspace(path)?;
        let script = r#"test -d "$1" || { echo "not a directory" >&2; exit 1; }; find "$1" -mindepth 1 -maxdepth 1 -printf '%y\t%s\t%T@\t%f\0'"#;
        let r = self
            .run_in(
                id,
                script_argv(script, &path),
                b"",
                None,
                Some(MAX_TRANSFER_BYTES),
                None,
                now_ms,
            )
            .await?;
        let out = file_op(&path, r)?;
        let mut entries: Vec<FileEntry> = out
            .split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let e = String::from_utf8_lossy(e);
                let mut f = e.splitn(4, '\t');
                let (kind, size, mtime, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
                Some(FileEntry {
                    name: name.to_string(),
                    kind: match kind {
                        "f" => "file",
                        "d" => "dir",
                        "l" => "link",
                        _ => "other",
                    },
                    size: size.parse().ok()?,
                    modified_ms: (mtime.parse::<f64>().ok()? * 1000.0) as i64,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub async fn snapshot(&self, id: &str) -> Result<String, ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        let lock = self.lock(id);
        let _one = lock.lock().await;
        let (store, id) = (store.clone(), id.to_string());
        tokio::task::spawn_blocking(move || store.snapshot(&id))
            .await
            .map_err(failed)?
            .map_err(failed)
    }

    pub async fn restore(&self, id: &str, snapshot: &str) -> Result<(), ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        let lock = self.lock(id);
        let _one = lock.lock().await;
        store.restore(id, snapshot).map_err(refused)
    }

    pub async fn remove(&self, id: &str) -> Result<(), ToolError> {
        let (_, store) = self.ready()?;
        self.known(store, id)?;
        let lock = self.lock(id);
        let _one = lock.lock().await;
        store.remove(id).map_err(failed)?;
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    fn request(&self, workspace: Workspace, argv: Vec<String>, stdin: &[u8]) -> ExecRequest {
        ExecRequest {
            workspace,
            argv,
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/workspace".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            stdin: stdin.to_vec(),
            egress: None,
            output: None,
            control: None,
            limits: self.limits.clone(),
        }
    }

    /// Runs `command` in a fresh sandbox on the host directory `dir` (a merge check's
    /// checkout). `Denied` when sandboxes are unavailable here.
    pub async fn exec_dir(
        &self,
        dir: &Path,
        command: &str,
    ) -> Result<steward_sandbox::ExecResult, ToolError> {
        let sandboxes = self
            .sandboxes
            .as_ref()
            .map_err(|why| ToolError::Denied(format!("sandboxes are unavailable here: {why}")))?;
        // The checkout is the server's; the check may write in it (a build's output).
        sandboxes.give(dir).map_err(failed)?;
        sandboxes
            .exec(self.request(Workspace::Dir(dir.to_path_buf()), shell(command), b""))
            .await
            .map_err(exec_failed)
    }

    pub(crate) fn workspace(&self, run: &RunId) -> Result<PathBuf, ToolError> {
        let dir = self.workspaces.join(run.as_str());
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(failed)?;
            if let Some((uid, gid)) = self.owner() {
                std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)).map_err(failed)?;
            }
        }
        Ok(dir)
    }

    pub async fn exec(
        &self,
        run: &RunId,
        command: &str,
        stdin: &str,
        egress: Option<steward_sandbox::Egress>,
        secrets: Vec<(String, String)>,
    ) -> Result<Value, ToolError> {
        let sandboxes = self
            .sandboxes
            .as_ref()
            .map_err(|why| ToolError::Denied(format!("sandboxes are unavailable here: {why}")))?;
        let ws = self.workspace(run)?;
        let mut req = self.request(ws.into(), shell(command), stdin.as_bytes());
        req.egress = egress;
        req.env.extend(secrets.iter().cloned());
        let mut r = sandboxes.exec(req).await.map_err(exec_failed)?;
        // What a command prints goes to a model: the literal values granted never do. This is a
        // convenience, not a guarantee: a granted secret is readable by the code it is granted
        // to, which can print it reversed or encoded.
        for (name, value) in &secrets {
            r.stdout = mask(&r.stdout, value, name);
            r.stderr = mask(&r.stderr, value, name);
        }
        Ok(report(r))
    }

    pub async fn write(&self, run: &RunId, path: &str, content: &[u8]) -> Result<(), ToolError> {
        if content.len() > MAX_FILE_BYTES {
            return Err(ToolError::InvalidArgs(format!(
                "content: at most {MAX_FILE_BYTES} bytes"
            )));
        }
        let ws = self.workspace(run)?;
        let owner = self.owner();
        let (path, content) = (path.to_string(), content.to_vec());
        tokio::task::spawn_blocking(move || {
            let target = walk(&ws, &path, true, owner)?;
            // Never blocking (a FIFO with no reader) and never through a link; truncated only
            // once it is known to be a regular file.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&target)
                .map_err(|e| file_error(&path, e))?;
            regular(&f, &path)?;
            f.set_len(0).map_err(failed)?;
            f.write_all(&content).map_err(failed)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(failed)?;
            }
            Ok(())
        })
        .await
        .map_err(failed)?
    }

    pub async fn read(&self, run: &RunId, path: &str) -> Result<Vec<u8>, ToolError> {
        let ws = self.workspace(run)?;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            let target = walk(&ws, &path, false, None)?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&target)
                .map_err(|e| file_error(&path, e))?;
            regular(&f, &path)?;
            let mut buf = Vec::new();
            f.take(MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(failed)?;
            if buf.len() > MAX_FILE_BYTES {
                return Err(ToolError::Failed(format!(
                    "{path}: larger than {MAX_FILE_BYTES} bytes"
                )));
            }
            Ok(buf)
        })
        .await
        .map_err(failed)?
    }

    /// Who root inside the sandboxes is on the host, when it is not the server itself.
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        self.sandboxes.as_ref().ok().and_then(|s| s.owner())
    }
}

/// Refuses anything but a regular file (a FIFO, a socket, a device, a directory).
fn regular(f: &std::fs::File, path: &str) -> Result<(), ToolError> {
    let m = f.metadata().map_err(failed)?;
    if m.is_file() {
        Ok(())
    } else {
        Err(ToolError::InvalidArgs(format!(
            "{path}: not a regular file"
        )))
    }
}

/// Why a file could not be opened, in the caller's terms.
fn file_error(path: &str, e: std::io::Error) -> ToolError {
    match e.raw_os_error() {
        // O_NOFOLLOW on a link; a FIFO opened for writing with no reader.
        Some(libc::ELOOP) | Some(libc::ENXIO) => {
            ToolError::InvalidArgs(format!("{path}: not a regular file"))
        }
        _ if e.kind() == std::io::ErrorKind::NotFound => {
            ToolError::InvalidArgs(format!("{path}: no such file"))
        }
        _ => failed(format!("{path}: {e}")),
    }
}

fn shell(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

/// `script` run by `/bin/sh` with `arg` as `$1` (never parsed by the shell).
fn script_argv(script: &str, arg: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        arg.into(),
    ]
}

/// `path` as an absolute path under `/workspace` (relative paths are taken from there).
fn inside_workspace(path: &str) -> Result<String, ToolError> {
    let bad = |why: &str| ToolError::InvalidArgs(format!("path {path:?}: {why}"));
    if path.len() > 4096 || path.contains('\0') {
        return Err(bad("at most 4096 characters, no NUL"));
    }
    let rel = match path.strip_prefix("/workspace") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ if path.starts_with('/') => return Err(bad("must be under /workspace")),
        _ => path,
    };
    if Path::new(rel)
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad("no `..`"));
    }
    Ok(format!("/workspace/{rel}")
        .trim_end_matches('/')
        .to_string())
}

/// The output of a file operation that ended well, or why it did not.
fn file_op(path: &str, r: steward_sandbox::ExecResult) -> Result<Vec<u8>, ToolError> {
    match r.ended {
        Ended::Exit(0) => Ok(r.stdout),
        Ended::Exit(_) => Err(ToolError::InvalidArgs(format!(
            "{path}: {}",
            String::from_utf8_lossy(&r.stderr).trim()
        ))),
        Ended::DiskQuota => Err(ToolError::InvalidArgs(format!(
            "{path}: the workspace's disk quota is used up"
        ))),
        other => Err(ToolError::Failed(format!("{path}: ended {other:?}"))),
    }
}

/// `text` with every occurrence of `value` replaced by `[secret:NAME]`.
fn mask(text: &[u8], value: &str, name: &str) -> Vec<u8> {
    let v = value.as_bytes();
    if v.is_empty() {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(v) {
            out.extend_from_slice(format!("[secret:{name}]").as_bytes());
            i += v.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// `rel` inside `ws`: relative, no `..`, and no link on the way (directories made as needed
/// when `create`). The last component is left to an `O_NOFOLLOW` open.
fn walk(
    ws: &Path,
    rel: &str,
    create: bool,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, ToolError> {
    let bad = |why: &str| ToolError::InvalidArgs(format!("path {rel:?}: {why}"));
    if rel.is_empty() || rel.len() > 4096 || rel.contains('\0') {
        return Err(bad("1 to 4096 characters"));
    }
    let parts: Vec<&std::ffi::OsStr> = Path::new(rel)
        .components()
        .map(|c| match c {
            Component::Normal(p) => Ok(p),
            _ => Err(bad("relative to the workspace, without `..`")),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(bad("names no file"));
    };
    let mut cur = ws.to_path_buf();
    for d in dirs {
        cur.push(d);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(bad("goes through a link")),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("goes through a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&cur).map_err(failed)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&cur, Some(uid), Some(gid)).map_err(failed)?;
                }
            }
            Err(e) => return Err(failed(format!("{rel}: {e}"))),
        }
    }
    Ok(cur.join(last))
}

/// How an exec ended, as tools and the API report it.
pub fn report(r: steward_sandbox::ExecResult) -> Value {
    let (ended, code, signal) = r.ended.parts();
    json!({
        "ended": ended,
        "exit_code": code,
        "signal": signal,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "truncated": r.truncated,
        "cpu_ms": r.cpu.as_millis() as u64,
        "peak_memory_bytes": r.peak_memory_bytes,
        "wall_ms": r.wall.as_millis() as u64,
    })
}

/// A reporter that appends each connection a sandbox asks for, allowed or refused, to the audit
/// log, as `principal` (on `chain`, for `run_id` when a run's).
pub(crate) fn audit_egress(
    store: Arc<dyn steward_store::Store>,
    clock: Arc<dyn crate::clock::Clock>,
    principal: String,
    chain: Vec<String>,
    run_id: Option<String>,
) -> steward_sandbox::egress::Reporter {
    Arc::new(move |e| {
        let at = clock.now_ms();
        let record = steward_gov::AuditRecord {
            outcome: e.address.map(|a| a.to_string()),
            error: e.reason.clone(),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Egress,
                at,
                principal.clone(),
                chain.clone(),
                "sandbox.connect",
                &e.target,
            )
            .in_run(run_id.clone(), None)
            .decided(if e.allowed { "allow" } else { "deny" }, None)
        }
        .to_json();
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.append_audit(&[(at, record)]).await {
                tracing::error!(error = %err, "an egress connection could not be audited");
            }
        });
    })
}
