//! Running one command in a fresh sandbox: a cgroup with its limits, the helper that builds the
//! isolation and becomes the command, its output collected up to a bound, a wall-clock timeout
//! that kills the whole tree, and a report of how it ended and what it used.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::cgroup::CgroupRoot;
use crate::control::Control;
use crate::init::{InitSpec, SETUP_FAILED};
use crate::{Error, Result};

/// What one sandbox may use.
#[derive(Clone, Debug)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Processes and threads, all told.
    pub pids: u64,
    /// CPU, in thousandths of a core (`None`: unlimited).
    pub cpu_millicores: Option<u64>,
    pub wall: Duration,
    pub tmp_bytes: u64,
    /// Each of stdout and stderr is kept up to this many bytes.
    pub output_bytes: usize,
    /// What the workspace may hold (for a layered one: what the sandbox wrote over its
    /// layers). No file may grow past the room left when the exec starts, and the exec ends
    /// `disk_quota` as soon as the workspace is seen past the quota.
    pub workspace_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            pids: 128,
            cpu_millicores: Some(1000),
            wall: Duration::from_secs(30),
            tmp_bytes: 64 << 20,
            output_bytes: 1 << 20,
            workspace_bytes: Some(1 << 30),
        }
    }
}

/// What is mounted at `/workspace` (where the command starts).
#[derive(Clone, Debug)]
pub enum Workspace {
    /// A host directory, read-write.
    Dir(PathBuf),
    /// A persistent sandbox's layers (`crate::layers`).
    Layered(crate::Layered),
}

impl From<PathBuf> for Workspace {
    fn from(p: PathBuf) -> Self {
        Workspace::Dir(p)
    }
}

impl From<&std::path::Path> for Workspace {
    fn from(p: &std::path::Path) -> Self {
        Workspace::Dir(p.to_path_buf())
    }
}

#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub workspace: Workspace,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// `None`: no network at all. Some: the only way out, through the egress proxy.
    pub egress: Option<Egress>,
    /// Where to send output as it comes (it is collected for the result as well).
    pub output: Option<tokio::sync::mpsc::Sender<Output>>,
    pub limits: Limits,
    /// A handle to cancel, pause, inspect or signal the exec while it runs.
    pub control: Option<Arc<Control>>,
}

/// A piece of a command's output, as it came.
#[derive(Clone, Debug)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// What a sandbox may connect to, and who hears of each connection.
#[derive(Clone)]
pub struct Egress {
    pub allow: crate::egress::AllowList,
    pub report: crate::egress::Reporter,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow", &self.allow)
            .finish()
    }
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exit(i32),
    /// Killed by a signal it did not arrange (its own, or another process's in the sandbox).
    Signal(i32),
    /// Still running at the wall-clock limit: the whole tree was killed.
    Timeout,
    /// Killed by the kernel for passing the memory limit.
    OomKilled,
    /// Stopped for passing the workspace's disk quota.
    DiskQuota,
    /// Cancelled through its [`Control`]: the whole tree was killed.
    Cancelled,
}

impl Ended {
    /// As reports name it: `exit`, `signal`, `timeout`, `oom_killed`, `disk_quota` or
    /// `cancelled`, with the exit code or the signal when there is one.
    pub fn parts(&self) -> (&'static str, Option<i32>, Option<i32>) {
        match *self {
            Ended::Exit(c) => ("exit", Some(c), None),
            Ended::Signal(s) => ("signal", None, Some(s)),
            Ended::Timeout => ("timeout", None, None),
            Ended::OomKilled => ("oom_killed", None, None),
            Ended::DiskQuota => ("disk_quota", None, None),
            Ended::Cancelled => ("cancelled", None, None),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExecResult {
    pub ended: Ended,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether output past `output_bytes` was dropped.
    pub truncated: bool,
    pub cpu: Duration,
    pub peak_memory_bytes: u64,
    pub wall: Duration,
}

/// Starts sandboxes: where the helper binary is, where roots are built, where cgroups go.
#[derive(Clone, Debug)]
pub struct Sandboxes {
    helper: PathBuf,
    scratch: PathBuf,
    cgroups: Option<CgroupRoot>,
}

impl Sandboxes {
    /// `helper` is the `steward` binary; `scratch` a directory for the sandboxes' roots. Fails
    /// when cgroups are missing unless `allow_without_cgroups` (then limits are not enforced —
    /// and [`crate::probe`] says so).
    pub fn new(helper: PathBuf, scratch: PathBuf, allow_without_cgroups: bool) -> Result<Self> {
        let cgroups = CgroupRoot::detect();
        if cgroups.is_none() && !allow_without_cgroups {
            return Err(Error::Missing(
                "cgroups (memory and pids controllers, writable): without them memory and process limits cannot be enforced".into(),
            ));
        }
        std::fs::create_dir_all(&scratch)?;
        Ok(Sandboxes {
            helper,
            scratch,
            cgroups,
        })
    }

    pub fn cgroups(&self) -> Option<&CgroupRoot> {
        self.cgroups.as_ref()
    }

    /// Runs `req` in a fresh sandbox and reports how it ended.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult> {
        if req.argv.is_empty() {
            return Err(Error::Setup("no command".into()));
        }
        // Unique across every process on the host: cgroups are shared by all of them.
        let name = format!("sbx-{}", uuid::Uuid::new_v4().simple());
        let root = self.scratch.join(&name);
        std::fs::create_dir_all(&root)?;
        let group = match &self.cgroups {
            Some(c) => Some(Arc::new(c.create(&name, &req.limits)?)),
            None => None,
        };
        let control = req.control.clone().unwrap_or_default();
        if let Some(g) = &group {
            if let Err(e) = control.attach(g.clone()) {
                g.remove();
                return Err(e);
            }
        }
        // The proxy lives as long as this exec.
        let mut env = req.env.clone();
        let proxy = match &req.egress {
            None => None,
            Some(e) => {
                let p = crate::egress::EgressProxy::start(
                    self.scratch.join(format!("{name}.sock")),
                    e.allow.clone(),
                    e.report.clone(),
                )?;
                let url = format!("http://{}", crate::egress::INSIDE_PROXY);
                for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.push((k.into(), url.clone()));
                }
                Some(p)
            }
        };
        let (workspace, layers) = match &req.workspace {
            Workspace::Dir(d) => (d.clone(), None),
            Workspace::Layered(l) => (l.upper.clone(), Some(l.clone())),
        };
        // What the sandbox has written: the whole directory, or its own layer.
        let written = workspace.clone();
        let quota = req.limits.workspace_bytes;
        let file_size_limit = match quota {
            Some(q) => Some(q.saturating_sub(crate::quota::usage(written.clone()).await)),
            None => None,
        };
        let spec = InitSpec {
            root: root.clone(),
            workspace,
            layers,
            argv: req.argv.clone(),
            env,
            egress_socket: proxy.as_ref().map(|p| p.socket.clone()),
            cgroup_procs: group.as_ref().map(|g| g.procs_files()).unwrap_or_default(),
            tmp_bytes: req.limits.tmp_bytes,
            file_size_limit,
        };
        let spec = serde_json::to_string(&spec).map_err(|e| Error::Setup(e.to_string()))?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&self.helper)
            .arg(crate::INIT_ARG)
            .arg(spec)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Setup(format!("starting {}: {e}", self.helper.display())))?;
        let helper = child.id();
        let mut stdin = child.stdin.take();
        let input = req.stdin.clone();
        let feed = async move {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&input).await;
            }
            drop(stdin);
        };
        let cap = req.limits.output_bytes;
        let out = read_bounded(child.stdout.take(), cap, req.output.clone(), Output::Stdout);
        let err = read_bounded(child.stderr.take(), cap, req.output.clone(), Output::Stderr);
        let waited = async {
            let (_, out, err, status) = tokio::join!(feed, out, err, child.wait());
            (out, err, status)
        };
        tokio::pin!(waited);
        let wall = req.limits.wall;
        let mut quota_check = tokio::time::interval_at(
            (Instant::now() + crate::quota::CHECK_EVERY).into(),
            crate::quota::CHECK_EVERY,
        );
        // Why the exec was stopped from outside, if it was.
        let stopped = loop {
            // A pause stops the clock: the deadline moves by however long it lasted.
            let deadline = started + wall + control.paused_for();
            tokio::select! {
                done = &mut waited => break Ok(done),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !control.is_paused() && started + wall + control.paused_for() <= Instant::now() {
                        break Err(Ended::Timeout);
                    }
                }
                _ = control.changed.notified() => {
                    if control.is_cancelled() {
                        break Err(Ended::Cancelled);
                    }
                }
                _ = quota_check.tick(), if quota.is_some() => {
                    let used = crate::quota::usage(written.clone()).await;
                    if quota.is_some_and(|q| used > q) {
                        break Err(Ended::DiskQuota);
                    }
                }
            }
        };
        let (done, stopped) = match stopped {
            Ok(done) => (Some(done), None),
            Err(why) => {
                // Every process of the tree, the helper included, is in the group: once they
                // are killed the pipes close and what was printed so far can be read.
                match (&group, helper) {
                    (Some(g), _) => g.kill_all(),
                    // Without a group: the helper's death takes the sandbox with it.
                    (None, Some(pid)) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    (None, None) => {}
                }
                let done = tokio::time::timeout(Duration::from_secs(5), &mut waited).await;
                (done.ok(), Some(why))
            }
        };
        control.detach();
        let ended = match done {
            Some(((stdout, t1), (stderr, t2), status)) => {
                let status = status?;
                use std::os::unix::process::ExitStatusExt;
                let ended = match (status.code(), status.signal()) {
                    _ if stopped.is_some() => stopped.unwrap_or(Ended::Cancelled),
                    (Some(SETUP_FAILED), _) if is_setup_failure(&stderr.0) => {
                        let why = String::from_utf8_lossy(&stderr.0).trim().to_string();
                        if let Some(g) = group {
                            g.remove();
                        }
                        let _ = std::fs::remove_dir_all(&root);
                        return Err(Error::Setup(why));
                    }
                    (Some(c), _) if c > 128 => Ended::Signal(c - 128),
                    (Some(c), _) => Ended::Exit(c),
                    (None, Some(s)) => Ended::Signal(s),
                    (None, None) => Ended::Signal(0),
                };
                ((ended, t1 || t2), stdout.0, stderr.0)
            }
            None => (
                (stopped.unwrap_or(Ended::Cancelled), false),
                Vec::new(),
                Vec::new(),
            ),
        };
        let (ended, stdout, stderr) = ended;
        let (mut ended, truncated) = ended;
        let usage = group.as_ref().map(|g| g.usage()).unwrap_or_default();
        if usage.oom_killed && matches!(ended, Ended::Exit(_) | Ended::Signal(_)) {
            ended = Ended::OomKilled;
        }
        // A file grown past the room left is stopped by the kernel with SIGXFSZ.
        if quota.is_some() && ended == Ended::Signal(libc::SIGXFSZ) {
            ended = Ended::DiskQuota;
        }
        if let Some(g) = group {
            g.remove();
        }
        let _ = std::fs::remove_dir_all(&root);
        Ok(ExecResult {
            ended,
            stdout,
            stderr,
            truncated,
            cpu: Duration::from_nanos(usage.cpu_ns),
            peak_memory_bytes: usage.peak_memory_bytes,
            wall: started.elapsed(),
        })
    }
}

/// Stderr of a helper that could not build the sandbox (the command never ran).
fn is_setup_failure(stderr: &[u8]) -> bool {
    stderr.starts_with(b"sandbox setup failed:")
}

struct Bounded(Vec<u8>);

/// Reads a pipe to its end, keeping at most `cap` bytes (whether any were dropped), and
/// passing every piece on to `live` while it listens.
async fn read_bounded(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
    mut live: Option<tokio::sync::mpsc::Sender<Output>>,
    wrap: fn(Vec<u8>) -> Output,
) -> (Bounded, bool) {
    let Some(mut pipe) = pipe else {
        return (Bounded(Vec::new()), false);
    };
    let mut kept = Vec::new();
    let mut dropped = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tx) = &live {
                    if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                        live = None; // nobody listens any more; keep collecting
                    }
                }
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped |= n > room;
            }
        }
    }
    (Bounded(kept), dropped)
}
