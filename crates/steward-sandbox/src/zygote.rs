//! The helper started ahead: one `steward __sandbox-init zygote` per server, single-threaded,
//! that forks a fresh helper for each sandbox instead of the server executing the binary anew
//! (the exec of a large binary — mapping it, its relocations — was most of a sandbox's start).
//!
//! The server and the zygote speak over one Unix socket, the zygote's standard input, in frames
//! of three little-endian 32-bit words `(op, pid, value)`:
//!
//! * server → zygote: `EXEC` with three descriptors (SCM_RIGHTS) that become the helper's
//!   standard input, output and error; `KILL pid`, which the zygote carries out only while
//!   `pid` is its unreaped child (so a recycled pid is never hit).
//! * zygote → server: `STARTED pid` (or `FAILED errno`) for each `EXEC`, in order; `EXITED pid
//!   status` with the raw wait status when a helper ends.
//!
//! Each forked helper is exactly the helper an exec would have started: it runs
//! [`crate::init::main`], reads its spec on its standard input, and dies with its parent
//! (`PR_SET_PDEATHSIG`); the zygote dies with the server the same way, and when its socket
//! closes. The server starts it from a thread of its own that lives as long as the zygote,
//! because a parent-death signal follows the parent *thread*.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

/// The argument after [`crate::INIT_ARG`] that makes the helper a zygote.
pub const ZYGOTE_ARG: &str = "zygote";

const EXEC: u32 = 1;
const KILL: u32 = 2;
const STARTED: u32 = 1;
const FAILED: u32 = 2;
const EXITED: u32 = 3;
const FRAME: usize = 12;

fn frame(op: u32, pid: u32, value: i32) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[..4].copy_from_slice(&op.to_le_bytes());
    f[4..8].copy_from_slice(&pid.to_le_bytes());
    f[8..].copy_from_slice(&value.to_le_bytes());
    f
}

fn unframe(f: &[u8; FRAME]) -> (u32, u32, i32) {
    let word = |i: usize| [f[i], f[i + 1], f[i + 2], f[i + 3]];
    (
        u32::from_le_bytes(word(0)),
        u32::from_le_bytes(word(4)),
        i32::from_le_bytes(word(8)),
    )
}

/// The raw wait status of how a child ended, as `waitpid(2)` reports it.
fn raw_status(s: WaitStatus) -> Option<(Pid, i32)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid, (code & 0xff) << 8)),
        WaitStatus::Signaled(pid, sig, core) => {
            Some((pid, sig as i32 | if core { 0x80 } else { 0 }))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The zygote process.

/// Runs the zygote; never returns. `server` is the pid of the server that started it.
pub fn main(server: u32) -> ! {
    let code = match serve(server) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sandbox zygote: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(server: u32) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    if nix::unistd::getppid().as_raw() as u32 != server {
        return Err("the server is gone".into());
    }
    // Children are reaped from a signalfd, polled beside the socket.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let old = chld
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| e.to_string())?;
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &chld,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| format!("signalfd: {e}"))?;
    let socket: RawFd = 0;
    let mut live: HashSet<i32> = HashSet::new();
    loop {
        let (socket_ready, reaped) = {
            let stdin = std::io::stdin();
            let sock = stdin.as_fd();
            let mut fds = [
                nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(signals.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |f: &nix::poll::PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if reaped {
            while let Ok(Some(_)) = signals.read_signal() {}
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(s) => {
                        if let Some((pid, status)) = raw_status(s) {
                            live.remove(&pid.as_raw());
                            send(socket, &frame(EXITED, pid.as_raw() as u32, status), &[])?;
                        }
                    }
                }
            }
        }
        if !socket_ready {
            continue;
        }
        let mut buf = [0u8; FRAME];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (got, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                socket,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| format!("recvmsg: {e}"))?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(|e| e.to_string())? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    fds.extend(r);
                }
            }
            (msg.bytes, fds)
        };
        if got == 0 {
            return Ok(()); // the server closed its end: nothing more will come
        }
        let request = (got == FRAME).then(|| unframe(&buf));
        let reply = match request {
            Some((EXEC, _, _)) if fds.len() == 3 => Some(match fork_helper(&fds, &old) {
                Ok(pid) => {
                    live.insert(pid);
                    frame(STARTED, pid as u32, 0)
                }
                Err(errno) => frame(FAILED, 0, errno),
            }),
            Some((KILL, pid, _)) if fds.is_empty() => {
                if live.contains(&(pid as i32)) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                None
            }
            _ => None,
        };
        // The helper holds its own copies now; a request not understood is dropped whole.
        for fd in &fds {
            let _ = nix::unistd::close(*fd);
        }
        match (request, reply) {
            (_, Some(reply)) => send(socket, &reply, &[])?,
            (Some((KILL, _, _)), None) => {}
            _ => {
                return Err(format!(
                    "a request not understood ({got} bytes, {} descriptors)",
                    fds.len()
                ))
            }
        }
    }
}

/// Forks one helper whose standard input, output and error are `fds`; its pid, or the errno.
fn fork_helper(fds: &[RawFd], mask: &SigSet) -> Result<i32, i32> {
    // SAFETY: the zygote is single-threaded (a fresh exec that starts no thread), so the child
    // may do anything the parent could; it runs the helper and never returns here.
    #[allow(unsafe_code)]
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(nix::unistd::ForkResult::Child) => {
            // The signal mask the zygote had before it blocked SIGCHLD, and its descriptors in
            // place of the socket: then it is the helper an exec would have started.
            let _ = mask.thread_set_mask();
            for (i, fd) in fds.iter().enumerate() {
                if nix::unistd::dup2(*fd, i as RawFd).is_err() {
                    std::process::exit(crate::init::SETUP_FAILED);
                }
            }
            crate::init::main()
        }
        Err(e) => Err(e as i32),
    }
}

fn send(socket: RawFd, f: &[u8; FRAME], fds: &[RawFd]) -> Result<(), String> {
    let iov = [IoSlice::new(f)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    match sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
        Ok(n) if n == FRAME => Ok(()),
        Ok(n) => Err(format!("sent {n} of {FRAME} bytes")),
        Err(e) => Err(format!("sendmsg: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The server's side.

/// A helper forked by the zygote: its pipes, its pid, and how it ended.
pub(crate) struct Forked {
    pub pid: u32,
    /// The helper's parent, which its spec must name.
    pub parent: u32,
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
    exit: Option<oneshot::Receiver<i32>>,
    zygote: Arc<Running>,
}

impl Forked {
    /// How the helper ended (its raw wait status), once it has.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let Some(rx) = self.exit.as_mut() else {
            return Err(std::io::Error::other("waited for twice"));
        };
        let status = rx.await.map_err(|_| {
            std::io::Error::other("the sandbox zygote ended, and every helper with it")
        });
        self.exit = None;
        status.map(std::process::ExitStatus::from_raw)
    }

    /// Kills the helper, if it has not ended yet.
    pub fn kill(&self) {
        self.zygote.kill(self.pid);
    }

    /// What kills the helper while something else waits for it.
    pub fn killer(&self) -> Killer {
        Killer {
            zygote: self.zygote.clone(),
            pid: self.pid,
        }
    }
}

/// Kills one forked helper, if it has not ended yet (the zygote checks, so a pid used again by
/// another process is never hit).
pub(crate) struct Killer {
    zygote: Arc<Running>,
    pid: u32,
}

impl Killer {
    pub fn kill(&self) {
        self.zygote.kill(self.pid);
    }
}

impl Drop for Forked {
    /// Like a child spawned with `kill_on_drop`: a helper nobody waits for any more is killed.
    fn drop(&mut self) {
        if self.exit.is_some() {
            self.kill();
        }
    }
}

/// Starts the zygote when first needed, and again when it has ended.
pub(crate) struct Zygote {
    helper: std::path::PathBuf,
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
}

struct Running {
    pid: u32,
    socket: Mutex<UnixStream>,
    replies: Mutex<Replies>,
}

#[derive(Default)]
struct Replies {
    /// One per EXEC sent, answered in order.
    started: VecDeque<oneshot::Sender<Result<u32, i32>>>,
    exits: HashMap<u32, oneshot::Sender<i32>>,
    /// Exits that came before anyone asked.
    early: HashMap<u32, i32>,
    ended: bool,
}

impl Running {
    fn kill(&self, pid: u32) {
        if let Ok(s) = self.socket.lock() {
            let _ = send(s.as_raw_fd(), &frame(KILL, pid, 0), &[]);
        }
    }
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote")
            .field("helper", &self.helper)
            .finish()
    }
}

impl Zygote {
    pub fn new(helper: &Path) -> Self {
        Zygote {
            helper: helper.to_path_buf(),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Forks a helper. Fails when the zygote cannot be started or cannot fork.
    pub async fn fork(&self) -> std::io::Result<Forked> {
        let mut guard = self.running.lock().await;
        let running = match guard.as_ref() {
            Some(r) if !r.replies.lock().map(|r| r.ended).unwrap_or(true) => r.clone(),
            _ => {
                let r = self.start().await?;
                *guard = Some(r.clone());
                r
            }
        };
        let (stdin, child_stdin) = tokio::net::unix::pipe::pipe()?;
        let (child_stdout, stdout) = tokio::net::unix::pipe::pipe()?;
        let (child_stderr, stderr) = tokio::net::unix::pipe::pipe()?;
        let ends: [OwnedFd; 3] = [
            child_stdin.into_blocking_fd()?,
            child_stdout.into_blocking_fd()?,
            child_stderr.into_blocking_fd()?,
        ];
        let (tx, rx) = oneshot::channel();
        {
            let mut replies = running
                .replies
                .lock()
                .map_err(|_| std::io::Error::other("zygote state poisoned"))?;
            replies.started.push_back(tx);
            let socket = running
                .socket
                .lock()
                .map_err(|_| std::io::Error::other("zygote socket poisoned"))?;
            let raw: Vec<RawFd> = ends.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = send(socket.as_raw_fd(), &frame(EXEC, 0, 0), &raw) {
                replies.started.pop_back();
                return Err(std::io::Error::other(e));
            }
        }
        drop(ends); // the helper holds them now
        drop(guard); // the next fork need not wait for this one's answer
        let pid = match tokio::time::timeout(std::time::Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(pid))) => pid,
            Ok(Ok(Err(errno))) => {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            _ => return Err(std::io::Error::other("the sandbox zygote did not answer")),
        };
        let (exit_tx, exit_rx) = oneshot::channel();
        if let Ok(mut replies) = running.replies.lock() {
            match replies.early.remove(&pid) {
                Some(status) => {
                    let _ = exit_tx.send(status);
                }
                None if replies.ended => {} // the sender drops: the helper died with the zygote
                None => {
                    replies.exits.insert(pid, exit_tx);
                }
            }
        }
        Ok(Forked {
            pid,
            parent: running.pid,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            exit: Some(exit_rx),
            zygote: running,
        })
    }

    /// Starts a zygote from a thread that lives as long as it (its parent-death signal follows
    /// that thread), and the task that reads its answers.
    async fn start(&self) -> std::io::Result<Arc<Running>> {
        let (ours, theirs) = UnixStream::pair()?;
        let helper = self.helper.clone();
        let server = std::process::id();
        let (pid_tx, pid_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("sandbox-zygote".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                let spawned = std::process::Command::new(&helper)
                    .arg0("steward-sandbox")
                    .args([crate::INIT_ARG, ZYGOTE_ARG, &server.to_string()])
                    .env_clear()
                    // A transparent huge page its allocator would ask for is 2 MiB zeroed per
                    // helper forked, most of it never used.
                    .env("MIMALLOC_ALLOW_THP", "0")
                    .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
                    .stdout(std::process::Stdio::null())
                    .spawn();
                match spawned {
                    Ok(mut child) => {
                        let _ = pid_tx.send(Ok(child.id()));
                        let _ = child.wait();
                    }
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                    }
                }
            })?;
        let pid = pid_rx
            .await
            .map_err(|_| std::io::Error::other("the sandbox zygote's thread ended"))??;
        let reader = tokio::net::UnixStream::from_std({
            let r = ours.try_clone()?;
            r.set_nonblocking(true)?;
            r
        })?;
        let running = Arc::new(Running {
            pid,
            socket: Mutex::new(ours),
            replies: Mutex::new(Replies::default()),
        });
        tokio::spawn(read_replies(reader, Arc::downgrade(&running)));
        Ok(running)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Closing the socket ends the zygote; its helpers die with it.
        if let Some(r) = self.running.get_mut().take() {
            if let Ok(s) = r.socket.lock() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

async fn read_replies(mut from: tokio::net::UnixStream, running: std::sync::Weak<Running>) {
    let mut buf = [0u8; FRAME];
    loop {
        let ok = from.read_exact(&mut buf).await.is_ok();
        let Some(r) = running.upgrade() else { return };
        let Ok(mut replies) = r.replies.lock() else {
            return;
        };
        if !ok {
            // The zygote is gone: every fork waiting for an answer fails, and every helper
            // died with it (their exits' senders drop).
            replies.ended = true;
            replies.started.clear();
            replies.exits.clear();
            return;
        }
        match unframe(&buf) {
            (STARTED, pid, _) => {
                if let Some(tx) = replies.started.pop_front() {
                    let _ = tx.send(Ok(pid));
                }
            }
            (FAILED, _, errno) => {
                if let Some(tx) = replies.started.pop_front() {
                    let _ = tx.send(Err(errno));
                }
            }
            (EXITED, pid, status) => match replies.exits.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    replies.early.insert(pid, status);
                }
            },
            (op, _, _) => tracing::warn!(op, "the sandbox zygote sent an unknown answer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        assert_eq!(unframe(&frame(EXITED, 4242, -9)), (EXITED, 4242, -9));
    }

    #[test]
    fn wait_statuses_read_as_the_kernel_writes_them() {
        use std::os::unix::process::ExitStatusExt;
        let pid = Pid::from_raw(7);
        let (_, raw) = raw_status(WaitStatus::Exited(pid, 3)).unwrap_or((pid, -1));
        assert_eq!(std::process::ExitStatus::from_raw(raw).code(), Some(3));
        let (_, raw) =
            raw_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).unwrap_or((pid, -1));
        assert_eq!(std::process::ExitStatus::from_raw(raw).signal(), Some(9));
    }
}
