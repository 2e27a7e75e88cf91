//! Running one command in a fresh sandbox: a cgroup with its limits, the helper that builds the
//! isolation and becomes the command, its output collected up to a bound, a wall-clock timeout
//! that kills the whole tree, and a report of how it ended and what it used.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
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
    /// Files and directories the private `/tmp` may hold.
    pub tmp_inodes: u64,
    /// Each of stdout and stderr is kept up to this many bytes.
    pub output_bytes: usize,
    /// What the workspace may hold (for a layered one: what the sandbox wrote over its
    /// layers). No file may grow past the room left when the exec starts, and the exec ends
    /// `disk_quota` as soon as the workspace is seen past the quota.
    pub workspace_bytes: Option<u64>,
    /// How many files and directories the workspace may hold (as for `workspace_bytes`, the
    /// exec ends `disk_quota` once the workspace is seen past it).
    pub workspace_inodes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            pids: 128,
            cpu_millicores: Some(1000),
            wall: Duration::from_secs(30),
            tmp_bytes: 64 << 20,
            tmp_inodes: 16_384,
            output_bytes: 1 << 20,
            workspace_bytes: Some(1 << 30),
            workspace_inodes: Some(100_000),
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

/// The host uid (and gid) root inside a sandbox maps to when the server runs as root: one of a
/// range set aside for containers, never 0 and never the server's own. Configurable.
pub const DEFAULT_HOST_UID: u32 = 1_879_048_192;

/// How sandboxes are built and how many may run, beyond one exec's [`Limits`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The host uid and gid root inside maps to when the server is root (an unprivileged
    /// server can map only its own uid).
    pub host_uid: u32,
    pub host_gid: u32,
    /// Execs running at once, all sandboxes together.
    pub max_concurrent: usize,
    /// How long an exec waits for one of those slots before it is refused ([`Error::Busy`]).
    pub queue_wait: Duration,
    /// Processes and memory of all sandboxes together (the cgroup above theirs).
    pub total_pids: Option<u64>,
    pub total_memory_bytes: Option<u64>,
    /// System calls denied unless opted in.
    pub allow_io_uring: bool,
    pub allow_vsock: bool,
    /// Whether egress may reach private ranges (RFC 1918, CGNAT, IPv6 ULA) when a sandbox's
    /// list allows them; loopback, link-local and this host's own addresses never.
    pub egress_private: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host_uid: DEFAULT_HOST_UID,
            host_gid: DEFAULT_HOST_UID,
            max_concurrent: 64,
            queue_wait: Duration::from_secs(10),
            total_pids: Some(4096),
            total_memory_bytes: None,
            allow_io_uring: false,
            allow_vsock: false,
            egress_private: false,
        }
    }
}

/// Starts sandboxes: where the helper binary is, where roots are built, where cgroups go.
#[derive(Clone, Debug)]
pub struct Sandboxes {
    helper: PathBuf,
    scratch: PathBuf,
    cgroups: Option<CgroupRoot>,
    options: Options,
    slots: Arc<tokio::sync::Semaphore>,
    /// Forks each sandbox's helper, started ahead.
    zygote: Arc<crate::zygote::Zygote>,
}

impl Sandboxes {
    /// `helper` is the `steward` binary; `scratch` a directory for the sandboxes' roots (made
    /// private to this user). Fails when cgroups are missing unless `allow_without_cgroups`
    /// (then limits are not enforced — and [`crate::probe`] says so). What an earlier life of
    /// a server on the same `scratch` left running is killed and removed.
    pub fn new(helper: PathBuf, scratch: PathBuf, allow_without_cgroups: bool) -> Result<Self> {
        Self::with_options(helper, scratch, allow_without_cgroups, Options::default())
    }

    pub fn with_options(
        helper: PathBuf,
        scratch: PathBuf,
        allow_without_cgroups: bool,
        options: Options,
    ) -> Result<Self> {
        let root = nix::unistd::geteuid().is_root();
        if root && (options.host_uid == 0 || options.host_gid == 0) {
            return Err(Error::Setup(
                "sandbox.host_uid: root inside a sandbox must not be root outside (0)".into(),
            ));
        }
        private_dir(&scratch)?;
        // This server's own group of groups, named for its scratch directory: what is found
        // there at start was left by an earlier life and is killed.
        let scope = {
            use sha2::{Digest, Sha256};
            let key = std::fs::canonicalize(&scratch).unwrap_or_else(|_| scratch.clone());
            let h = Sha256::digest(key.as_os_str().as_encoded_bytes());
            format!("srv-{}", hex::encode(&h[..6]))
        };
        let cgroups = match CgroupRoot::detect() {
            Some(c) => Some(c.scoped(&scope)?),
            None => None,
        };
        if cgroups.is_none() && !allow_without_cgroups {
            return Err(Error::Missing(
                "cgroups (memory and pids controllers, writable): without them memory and process limits cannot be enforced".into(),
            ));
        }
        if let Some(c) = &cgroups {
            let left = c.sweep();
            if left > 0 {
                tracing::warn!(
                    groups = left,
                    "killed sandboxes an earlier life of this server left running"
                );
            }
            c.limit_total(options.total_pids, options.total_memory_bytes)?;
        }
        // Roots and sockets of execs cut off by a crash.
        for e in std::fs::read_dir(&scratch)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("sbx-") {
                let p = e.path();
                let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Ok(Sandboxes {
            zygote: Arc::new(crate::zygote::Zygote::new(&helper)),
            helper,
            scratch,
            cgroups,
            slots: Arc::new(tokio::sync::Semaphore::new(options.max_concurrent.max(1))),
            options,
        })
    }

    pub fn cgroups(&self) -> Option<&CgroupRoot> {
        self.cgroups.as_ref()
    }

    /// The host uid and gid of root inside, when it is not this process's own (the server is
    /// root): what the server gives the files it puts in a workspace.
    pub fn owner(&self) -> Option<(u32, u32)> {
        nix::unistd::geteuid()
            .is_root()
            .then_some((self.options.host_uid, self.options.host_gid))
    }

    /// Gives `path` and everything under it (links not followed) to the sandbox's uid, so that
    /// a command may change what the host put there.
    pub fn give(&self, path: &std::path::Path) -> std::io::Result<()> {
        match self.owner() {
            Some((uid, gid)) => crate::quota::chown_tree(path, uid, gid),
            None => Ok(()),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Runs `req` in a fresh sandbox and reports how it ended.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult> {
        if req.argv.is_empty() {
            return Err(Error::Setup("no command".into()));
        }
        let _slot = match tokio::time::timeout(
            self.options.queue_wait,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(Error::Busy(format!(
                    "{} sandbox commands are running, the most this server runs at once (sandbox.max_concurrent); try again later",
                    self.options.max_concurrent
                )))
            }
        };
        let owner = self.owner();
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
                let mut allow = e.allow.clone();
                allow.private = self.options.egress_private;
                let p = crate::egress::EgressProxy::start(
                    self.scratch.join(format!("{name}.sock")),
                    allow,
                    e.report.clone(),
                )?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&p.socket, Some(uid), Some(gid))?;
                }
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
        // Root inside must own its workspace: a directory the host made (or that an earlier
        // version left to the host's root) is given to it whole, once.
        if let Some((uid, gid)) = owner {
            let mut own = vec![workspace.clone()];
            if let Some(l) = &layers {
                own.push(l.work.clone());
                own.extend(l.lower.iter().cloned());
            }
            for d in own {
                if std::fs::symlink_metadata(&d)?.uid() != uid {
                    let d = d.clone();
                    tokio::task::spawn_blocking(move || crate::quota::chown_tree(&d, uid, gid))
                        .await
                        .map_err(|e| Error::Setup(e.to_string()))??;
                }
            }
        }
        // What the sandbox has written: the whole directory, or its own layer.
        let written = workspace.clone();
        let quota = req.limits.workspace_bytes;
        let inode_quota = req.limits.workspace_inodes;
        let file_size_limit = match quota {
            Some(q) => Some(q.saturating_sub(crate::quota::usage(written.clone()).await.bytes)),
            None => None,
        };
        let mut child = self.zygote.fork().await.map_err(|e| {
            Error::Setup(format!(
                "starting a helper of {}: {e}",
                self.helper.display()
            ))
        })?;
        let spec = InitSpec {
            root: root.clone(),
            workspace,
            layers,
            argv: req.argv.clone(),
            env,
            egress_socket: proxy.as_ref().map(|p| p.socket.clone()),
            cgroup_procs: group.as_ref().map(|g| g.procs_files()).unwrap_or_default(),
            tmp_bytes: req.limits.tmp_bytes,
            tmp_inodes: req.limits.tmp_inodes,
            file_size_limit,
            host_uid: self.options.host_uid,
            host_gid: self.options.host_gid,
            parent_pid: child.parent,
            // The server ends the exec at its limit; this is the init's own, a little later.
            deadline_s: req.limits.wall.as_secs() + 5,
            allow_io_uring: self.options.allow_io_uring,
            allow_vsock: self.options.allow_vsock,
        };
        // The spec goes in ahead of the command's input: never on a command line or in an
        // environment, where any host user could read the secrets in it.
        let spec = crate::init::encode(&spec).map_err(Error::Setup)?;
        let started = Instant::now();
        let helper = child.killer();
        let mut stdin = child.stdin.take();
        let input = req.stdin.clone();
        let feed = async move {
            if let Some(s) = stdin.as_mut() {
                if s.write_all(&spec).await.is_ok() {
                    let _ = s.write_all(&input).await;
                }
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
                _ = quota_check.tick(), if quota.is_some() || inode_quota.is_some() => {
                    let used = crate::quota::usage(written.clone()).await;
                    if quota.is_some_and(|q| used.bytes > q)
                        || inode_quota.is_some_and(|q| used.inodes > q)
                    {
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
                match &group {
                    Some(g) => g.kill_all(),
                    // Without a group: the helper's death takes the sandbox with it.
                    None => helper.kill(),
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
        // Nothing the sandbox wrote stays a set-uid or set-gid program on the host.
        let _ = tokio::task::spawn_blocking(move || crate::quota::strip_set_id(&written)).await;
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

/// Makes `dir` (and what is missing above it) with mode 0700: nothing in it is for other users.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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
