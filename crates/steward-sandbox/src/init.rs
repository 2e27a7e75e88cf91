//! The helper that builds the sandbox and runs the command: `steward __sandbox-init`, told what
//! to build on its standard input (a length-prefixed JSON [`InitSpec`], followed by the
//! command's own input) — never on its command line or in its environment, which any host user
//! can read in `ps`. It runs single-threaded, in this order: close every descriptor its
//! launcher left open, end with its parent (the server), leave the server's session, join the
//! sandbox's cgroups, drop supplementary groups, then clone the pid namespace's first process
//! into new user, mount, pid, network, ipc and uts namespaces and map root inside to the
//! sandbox's host uid — a dedicated unprivileged uid when the server is root, never root and
//! never the server's own. That first process builds a private mount tree and the new root,
//! enters it with `pivot_root`, masks the kernel's knobs in `/proc`, drops its capabilities,
//! sets `no_new_privs` and the seccomp filter — then forks the command and `exec`s it. It stays
//! as the namespace's init: it reaps orphans, ends everything itself past its own deadline (a
//! backstop to the server's), and when the command ends tells the helper how (a process 1
//! cannot be killed by its own namespace's signals, so the command must not be it). The helper
//! then ends the same way — the same exit code, or killed by the same signal. If the server
//! dies, the helper dies (parent-death signal), and with it everything in the sandbox.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::io::{Read, Write};

use nix::sys::signal::{raise, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execvpe, fork, pivot_root, sethostname, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

/// What the helper is told to build.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitSpec {
    /// An empty directory to build the new root in.
    pub root: PathBuf,
    /// The host directory mounted read-write at `/workspace`, unless `layers` is given.
    pub workspace: PathBuf,
    /// A layered workspace (overlayfs) mounted at `/workspace` instead.
    #[serde(default)]
    pub layers: Option<crate::Layered>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The egress proxy's socket, bound into the sandbox; none: no network at all.
    #[serde(default)]
    pub egress_socket: Option<PathBuf>,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// Size of the private `/tmp`, and how many files it may hold.
    pub tmp_bytes: u64,
    pub tmp_inodes: u64,
    /// The largest file the command may write (`RLIMIT_FSIZE`): the workspace quota's room.
    #[serde(default)]
    pub file_size_limit: Option<u64>,
    /// The host uid and gid root inside is mapped to (used when the helper is root; otherwise
    /// root inside is the helper's own uid, the only one an unprivileged process may map).
    pub host_uid: u32,
    pub host_gid: u32,
    /// The server's pid: a helper whose parent is already another has lost its server.
    pub parent_pid: u32,
    /// Seconds the command may run, counting only time it was not frozen, before the
    /// namespace's init ends everything itself.
    pub deadline_s: u64,
    /// System calls the filter denies unless opted in.
    #[serde(default)]
    pub allow_io_uring: bool,
    #[serde(default)]
    pub allow_vsock: bool,
}

/// Exit status of the helper when the sandbox could not be built (the command never ran).
pub const SETUP_FAILED: i32 = 125;
/// The largest spec the helper reads.
const MAX_SPEC: usize = 16 << 20;

/// The bytes the helper reads before the command's own input: the spec, length first.
pub fn encode(spec: &InitSpec) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    if json.len() > MAX_SPEC {
        return Err(format!("the sandbox spec is over {MAX_SPEC} bytes"));
    }
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Runs the helper; never returns.
pub fn main() -> ! {
    // Nothing the launcher left open reaches the sandbox (a leaked directory walks to `/`).
    close_inherited();
    let code = match read_spec().and_then(|spec| run(&spec)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbox setup failed: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

/// Closes every descriptor above 2.
fn close_inherited() {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The listing's own descriptor is among them, closed already: closing it again is harmless.
    for fd in open.into_iter().filter(|fd| *fd > 2) {
        let _ = nix::unistd::close(fd);
    }
}

/// The spec from standard input, read exactly: what follows is the command's input.
fn read_spec() -> Result<InitSpec, String> {
    let read_exact = |buf: &mut [u8]| -> Result<(), String> {
        let mut at = 0;
        while at < buf.len() {
            match nix::unistd::read(0, &mut buf[at..]) {
                Ok(0) => return Err("bad spec: input ended early".into()),
                Ok(n) => at += n,
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(format!("bad spec: {e}")),
            }
        }
        Ok(())
    };
    let mut len = [0u8; 4];
    read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_SPEC {
        return Err(format!("bad spec: {len} bytes"));
    }
    let mut buf = vec![0u8; len];
    read_exact(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| format!("bad spec: {e}"))
}

fn err(what: &str) -> impl Fn(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn run(spec: &InitSpec) -> Result<i32, String> {
    // When the server goes, so does the helper — and the sandbox with it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(err("pdeathsig"))?;
    if nix::unistd::getppid().as_raw() as u32 != spec.parent_pid {
        return Err("the server is gone".into());
    }
    // No controlling terminal: nothing below can reach the operator's.
    nix::unistd::setsid().map_err(err("setsid"))?;
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string())
            .map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    let root_helper = nix::unistd::geteuid().is_root();
    let (host_uid, host_gid) = if root_helper {
        if spec.host_uid == 0 || spec.host_gid == 0 {
            return Err("the sandbox's host uid and gid must not be 0".into());
        }
        // The root group and the rest stay outside.
        nix::unistd::setgroups(&[]).map_err(err("setgroups"))?;
        (spec.host_uid, spec.host_gid)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    // The first process waits for its uid map, then tells how the command ended (both
    // close-on-exec: the command never holds them).
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    let mut stack = vec![0u8; 1 << 20];
    let mut go = Some(go_r);
    let mut status = Some(status_w);
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    // SAFETY: this process is single-threaded (the helper is a fresh exec, and nothing above
    // starts a thread), and without CLONE_VM the child has its own copy of memory, as after
    // fork; the child's stack is `stack`, ample for the setup it runs.
    #[allow(unsafe_code)]
    let child = unsafe {
        nix::sched::clone(
            Box::new(|| {
                let (Some(go), Some(status)) = (go.take(), status.take()) else {
                    return SETUP_FAILED as isize;
                };
                let e = match namespace_init(spec, go, status) {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                eprintln!("sandbox setup failed: {e}");
                std::process::exit(SETUP_FAILED)
            }),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(err("clone"))?;
    drop(go);
    drop(status);
    // Root inside is the sandbox's host uid: written from here, the parent namespace, which
    // as root may map any uid (an unprivileged helper only its own).
    let map = |file: &str, text: String| {
        std::fs::write(format!("/proc/{child}/{file}"), text).map_err(|e| format!("{file}: {e}"))
    };
    let mapped = map("setgroups", "deny".into())
        .and_then(|_| map("uid_map", format!("0 {host_uid} 1")))
        .and_then(|_| map("gid_map", format!("0 {host_gid} 1")))
        .and_then(|_| {
            std::fs::File::from(go_w)
                .write_all(b"g")
                .map_err(|e| format!("starting the sandbox: {e}"))
        });
    if let Err(e) = mapped {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    let init = loop {
        match waitpid(child, None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break s,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let mut told = String::new();
    let _ = std::fs::File::from(status_r).read_to_string(&mut told);
    match (told.split_once(' '), init) {
        (Some(("exit", code)), _) => Ok(code.trim().parse().unwrap_or(SETUP_FAILED)),
        (Some(("signal", sig)), _) => die_by(sig.trim().parse().unwrap_or(9)),
        (_, WaitStatus::Signaled(_, sig, _)) => die_by(sig as i32),
        (_, WaitStatus::Exited(_, code)) => Ok(code),
        _ => Ok(SETUP_FAILED),
    }
}

/// Ends the helper by the signal that ended the command, so its parent sees the same.
fn die_by(sig: i32) -> Result<i32, String> {
    if let Ok(s) = Signal::try_from(sig) {
        // SAFETY: restoring the default disposition of a signal is always sound.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
        let _ = raise(s);
    }
    Ok(128 + sig)
}

enum Never {}

/// Seconds the namespace's init has seen pass while not frozen (a frozen process takes one
/// pending alarm when thawed, however long it was frozen).
static TICKS: AtomicU32 = AtomicU32::new(0);

extern "C" fn tick(_: libc::c_int) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// The pid namespace's first process: waits for its uid map, builds the root, enters it, locks
/// itself down (what it forks inherits all of it), starts the command and reaps until the
/// command ends or its deadline passes.
fn namespace_init(spec: &InitSpec, go: OwnedFd, status: OwnedFd) -> Result<Never, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(err("pdeathsig"))?;
    let mut byte = [0u8; 1];
    match std::fs::File::from(go).read(&mut byte) {
        Ok(1) => {}
        _ => return Err("the helper did not map the sandbox's uid".into()),
    }
    if spec.egress_socket.is_some() {
        loopback_up()?;
    }
    {
        use std::os::fd::AsFd;
        build_root(spec, status.as_fd())?;
    }
    sethostname("sandbox").map_err(err("hostname"))?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs"))?;
    crate::seccomp::apply(spec.allow_io_uring, spec.allow_vsock)?;
    let (argv, env) = command_line(spec)?;
    if spec.egress_socket.is_some() {
        start_relay()?;
    }
    // SAFETY: still single-threaded.
    #[allow(unsafe_code)]
    let command = match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            close_inherited();
            if let Some(max) = spec.file_size_limit {
                use nix::sys::resource::{setrlimit, Resource};
                if let Err(e) = setrlimit(Resource::RLIMIT_FSIZE, max, max) {
                    eprintln!("sandbox setup failed: file size limit: {e}");
                    std::process::exit(SETUP_FAILED)
                }
            }
            let e = match execvpe(&argv[0], &argv, &env) {
                Err(e) => format!("{}: {e}", spec.argv[0]),
                Ok(never) => match never {},
            };
            // The command could not start: say so as a command would (127, like a shell).
            eprintln!("{e}");
            std::process::exit(127)
        }
        ForkResult::Parent { child } => child,
    };
    // The backstop deadline: a tick a second, without SA_RESTART so the wait below wakes.
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigSet};
    // SAFETY: the handler only adds to an atomic, which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        sigaction(
            Signal::SIGALRM,
            &SigAction::new(SigHandler::Handler(tick), SaFlags::empty(), SigSet::empty()),
        )
    }
    .map_err(err("deadline"))?;
    nix::unistd::alarm::set(1);
    let mut status = std::fs::File::from(status);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                let _ = write!(status, "exit {code}");
                std::process::exit(0)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                let _ = write!(status, "signal {}", sig as i32);
                std::process::exit(0)
            }
            Ok(_) => continue,
            Err(nix::Error::EINTR) => {
                if u64::from(TICKS.load(Ordering::Relaxed)) >= spec.deadline_s {
                    // Everything else in the namespace, then this process: the kernel ends
                    // whatever is left when its first process exits.
                    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
                    let _ = write!(status, "signal 9");
                    std::process::exit(0)
                }
                nix::unistd::alarm::set(1);
            }
            Err(e) => return Err(format!("waiting for the command: {e}")),
        }
    }
}

/// Brings the namespace's loopback up, for the relay to listen on.
fn loopback_up() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("loopback: {e}"))?;
    // SAFETY: `ifreq` is plain data, zeroed then given a NUL-terminated name; the two ioctls
    // read and write only that struct.
    #[allow(unsafe_code)]
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("loopback: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("loopback: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A process in the sandbox relaying `127.0.0.1:3128` to the egress proxy's socket: the
/// command's only way out. Listening before the command starts, so it never finds it absent.
fn start_relay() -> Result<(), String> {
    let listener = std::net::TcpListener::bind(crate::egress::INSIDE_PROXY)
        .map_err(|e| format!("egress relay: {e}"))?;
    // SAFETY: still single-threaded; the relay starts its threads after the fork.
    #[allow(unsafe_code)]
    match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(out) =
                        std::os::unix::net::UnixStream::connect(crate::egress::INSIDE_SOCKET)
                    else {
                        return;
                    };
                    let (Ok(mut a), Ok(mut b)) = (conn.try_clone(), out.try_clone()) else {
                        return;
                    };
                    let (mut conn, mut out) = (conn, out);
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut out, &mut conn);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
            std::process::exit(0)
        }
    }
}

/// The command and its environment, as `execvpe` takes them.
fn command_line(spec: &InitSpec) -> Result<(Vec<CString>, Vec<CString>), String> {
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("argv: {e}"))?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("env: {e}"))?;
    if argv.is_empty() {
        return Err("no command".into());
    }
    Ok((argv, env))
}

const NONE: Option<&str> = None;

/// The host directories the sandbox sees, read-only.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Device files the sandbox gets (bound from the host's). No terminal: `/dev/tty` would be the
/// server's controlling terminal, open to keystroke injection.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// What `/proc` hides: what container runtimes mask (runc's defaults), the kernel's memory and
/// symbol maps, and the magic SysRq key.
pub const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
    "slabinfo",
    "vmallocinfo",
    "kallsyms",
    "kmsg",
    "sysrq-trigger",
];
/// What `/proc` shows read-only: the kernel's knobs.
pub const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys"];

/// Where a host path of the spec is mounted from once this process is the sandbox's uid: the
/// descriptor opened while it could still reach the path.
fn by_fd(f: &std::fs::File) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", f.as_raw_fd())
}

fn open_path(p: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Fails when nobody holds the read end of `status` any more: the helper is gone.
fn parent_alive(status: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(status, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).map_err(err("poll"))?;
    match fds[0].revents() {
        Some(r) if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) => {
            Err("the helper is gone".into())
        }
        _ => Ok(()),
    }
}

fn build_root(spec: &InitSpec, status: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    // Nothing mounted here propagates back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(err("making mounts private"))?;
    // The new root, entered while this process still reaches the host path to it (which may
    // be private to the server); everything below is built relative to it.
    mount(
        Some("tmpfs"),
        &spec.root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=1m,mode=0755,uid=0,gid=0"),
    )
    .map_err(err("root tmpfs"))?;
    chdir(&spec.root).map_err(err("entering the root"))?;
    let workspace = match &spec.layers {
        None => vec![open_path(&spec.workspace)?],
        Some(l) => {
            let mut fds = vec![open_path(&l.upper)?, open_path(&l.work)?];
            for p in &l.lower {
                fds.push(open_path(p)?);
            }
            fds
        }
    };
    let socket = spec.egress_socket.as_deref().map(open_path).transpose()?;
    // From here on this process is root inside: the sandbox's uid outside.
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(err("setresgid"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(err("setresuid"))?;
    // A change of uid clears the parent-death signal: set it again, then make sure the parent
    // did not die in between (its end of the status pipe would be closed).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(err("pdeathsig"))?;
    parent_alive(status)?;
    let at = |p: &str| PathBuf::from(p.trim_start_matches('/'));
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        match std::fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(host).map_err(|e| format!("{dir}: {e}"))?;
                std::os::unix::fs::symlink(target, at(dir)).map_err(|e| format!("{dir}: {e}"))?;
            }
            Ok(m) if m.is_dir() => bind_read_only(host, &at(dir))?,
            _ => {}
        }
    }
    // A workspace of its own, writable; no set-uid programs, no devices.
    let ws = at("/workspace");
    mkdir(&ws)?;
    match &spec.layers {
        None => mount(
            Some(by_fd(&workspace[0]).as_str()),
            &ws,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(err("workspace"))?,
        Some(_) => {
            let lower: Vec<String> = workspace[2..].iter().map(by_fd).collect();
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                by_fd(&workspace[0]),
                by_fd(&workspace[1]),
            );
            mount(
                Some("overlay"),
                &ws,
                Some("overlay"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(err("layered workspace"))?;
        }
    }
    mount(
        NONE,
        &ws,
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        NONE,
    )
    .map_err(err("workspace flags"))?;
    drop(workspace);
    let tmp = at("/tmp");
    mkdir(&tmp)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(
            format!(
                "size={},nr_inodes={},mode=1777",
                spec.tmp_bytes,
                spec.tmp_inodes.max(16)
            )
            .as_str(),
        ),
    )
    .map_err(err("/tmp"))?;
    let dev = at("/dev");
    mkdir(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,nr_inodes=64,mode=0755"),
    )
    .map_err(err("/dev"))?;
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if host.exists() {
            let inside = dev.join(d);
            std::fs::write(&inside, b"").map_err(|e| format!("/dev/{d}: {e}"))?;
            mount(Some(&host), &inside, NONE, MsFlags::MS_BIND, NONE).map_err(err("a device"))?;
        }
    }
    std::os::unix::fs::symlink("/proc/self/fd", dev.join("fd")).map_err(|e| e.to_string())?;
    // Its own processes only (the new pid namespace), and no kernel knobs to turn.
    let proc_dir = at("/proc");
    mkdir(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(err("/proc"))?;
    mask_proc(&proc_dir, &dev.join("null"))?;
    if let Some(sock) = &socket {
        let run = at("/run");
        mkdir(&run)?;
        let inside = at(crate::egress::INSIDE_SOCKET);
        std::fs::write(&inside, b"").map_err(|e| format!("egress socket: {e}"))?;
        mount(
            Some(by_fd(sock).as_str()),
            &inside,
            NONE,
            MsFlags::MS_BIND,
            NONE,
        )
        .map_err(err("egress socket"))?;
    }
    drop(socket);
    // Enough of /etc for programs that look up their user.
    let etc = at("/etc");
    mkdir(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:sandbox:/workspace:/bin/sh\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(etc.join("group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    std::fs::write(etc.join("hostname"), "sandbox\n").map_err(|e| e.to_string())?;
    // Into the new root; the host's is detached (pivot_root(2)'s "." and "." sequence).
    pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the host root"))?;
    chdir("/").map_err(err("chdir"))?;
    // The root itself becomes read-only: only /workspace and /tmp can be written.
    mount(
        NONE,
        "/",
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        NONE,
    )
    .map_err(err("read-only root"))?;
    chdir("/workspace").map_err(err("chdir /workspace"))?;
    Ok(())
}

/// Masks what `/proc` must not show (files under `/dev/null`, directories under an empty
/// read-only tmpfs) and makes its knobs read-only.
fn mask_proc(proc_dir: &Path, null: &Path) -> Result<(), String> {
    for name in PROC_MASKED {
        let p = proc_dir.join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=4k,nr_inodes=1,mode=0555"),
            ),
            Ok(_) => mount(Some(null), &p, NONE, MsFlags::MS_BIND, NONE),
            Err(_) => continue,
        }
        .map_err(|e| format!("masking /proc/{name}: {e}"))?;
    }
    for name in PROC_READ_ONLY {
        let p = proc_dir.join(name);
        if p.exists() {
            bind_read_only(&p, &p)?;
        }
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn bind_read_only(host: &Path, inside: &Path) -> Result<(), String> {
    mkdir(inside)?;
    mount(
        Some(host),
        inside,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| format!("binding {}: {e}", host.display()))?;
    // A mount from a more privileged namespace keeps its flags locked: restate them, adding.
    let kept = current_flags(inside)?;
    mount(
        NONE,
        inside,
        NONE,
        kept | MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        NONE,
    )
    .map_err(|e| format!("making {} read-only: {e}", host.display()))
}

/// The flags a mount has now, as `mount` takes them.
fn current_flags(p: &Path) -> Result<MsFlags, String> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let f = statvfs(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .flags();
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    Ok(m)
}

fn drop_capabilities() -> Result<(), String> {
    use caps::CapSet;
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("bounding set: {e}"))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("capabilities: {e}"))?;
    }
    Ok(())
}
