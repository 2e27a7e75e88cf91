//! The helper that builds the sandbox and runs the command: `steward __sandbox-init SPEC`.
//! It runs single-threaded, in this order: join the sandbox's cgroups (so everything it starts
//! is counted), leave every namespace, map root inside to its own uid outside, fork the pid
//! namespace's first process, and there: a private mount tree, the new root, `pivot_root`, the
//! capabilities dropped, `no_new_privs`, the seccomp filter — then fork the command and `exec`
//! it. The first process stays as the namespace's init: it reaps orphans and, when the command
//! ends, tells the helper how (a process 1 cannot be killed by its own namespace's signals, so
//! the command must not be it). The helper then ends the same way — the same exit code, or
//! killed by the same signal. If the helper dies, everything in the sandbox dies with it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::signal::{raise, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execvpe, fork, pivot_root, sethostname, ForkResult, Pid};
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
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    /// The largest file the command may write (`RLIMIT_FSIZE`): the workspace quota's room.
    #[serde(default)]
    pub file_size_limit: Option<u64>,
}

/// Exit status of the helper when the sandbox could not be built (the command never ran).
pub const SETUP_FAILED: i32 = 125;

/// Runs the helper; never returns.
pub fn main(spec: &str) -> ! {
    let code = match serde_json::from_str::<InitSpec>(spec) {
        Ok(spec) => match run(&spec) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("sandbox setup failed: {e}");
                SETUP_FAILED
            }
        },
        Err(e) => {
            eprintln!("sandbox setup failed: bad spec: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn err(what: &str) -> impl Fn(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn run(spec: &InitSpec) -> Result<i32, String> {
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string())
            .map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(err("unshare"))?;
    // Root inside is this process's own uid outside: nothing more.
    std::fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups: {e}"))?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
        .map_err(|e| format!("uid_map: {e}"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
        .map_err(|e| format!("gid_map: {e}"))?;
    // How the command ended, from the namespace's init (close-on-exec: the command never
    // holds it).
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    // The first process of the new pid namespace; when it ends, the kernel ends the rest.
    // SAFETY: this process is single-threaded (the helper is a fresh exec, and nothing above
    // starts a thread), so the child may do anything after fork.
    #[allow(unsafe_code)]
    match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Parent { child } => {
            drop(status_w);
            let init = loop {
                match waitpid(child, None).map_err(err("wait"))? {
                    s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => break s,
                    _ => continue,
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
        ForkResult::Child => {
            drop(status_r);
            let e = match namespace_init(spec, status_w) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!("sandbox setup failed: {e}");
            std::process::exit(SETUP_FAILED)
        }
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

/// The pid namespace's first process: builds the root, enters it, locks itself down (what it
/// forks inherits all of it), starts the command and reaps until the command ends.
fn namespace_init(spec: &InitSpec, status: OwnedFd) -> Result<Never, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(err("pdeathsig"))?;
    if spec.egress_socket.is_some() {
        loopback_up()?;
    }
    build_root(spec)?;
    sethostname("sandbox").map_err(err("hostname"))?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs"))?;
    crate::seccomp::apply()?;
    let (argv, env) = command_line(spec)?;
    if spec.egress_socket.is_some() {
        start_relay()?;
    }
    // SAFETY: still single-threaded.
    #[allow(unsafe_code)]
    let command = match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
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
            Err(nix::Error::EINTR) => continue,
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
/// Device files the sandbox gets (bound from the host's).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn build_root(spec: &InitSpec) -> Result<(), String> {
    // Nothing mounted here propagates back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(err("making mounts private"))?;
    let root = &spec.root;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=1m,mode=0755"),
    )
    .map_err(err("root tmpfs"))?;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
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
            Some(&spec.workspace),
            &ws,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(err("workspace"))?,
        Some(l) => {
            let list = |ps: &[PathBuf]| -> Result<String, String> {
                let parts: Vec<String> = ps.iter().map(|p| p.display().to_string()).collect();
                if parts.iter().any(|p| p.contains([',', ':'])) {
                    return Err("workspace layers: a path with ',' or ':'".into());
                }
                Ok(parts.join(":"))
            };
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                list(&l.lower)?,
                list(std::slice::from_ref(&l.upper))?,
                list(std::slice::from_ref(&l.work))?
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
    let tmp = at("/tmp");
    mkdir(&tmp)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={},mode=1777", spec.tmp_bytes).as_str()),
    )
    .map_err(err("/tmp"))?;
    let dev = at("/dev");
    mkdir(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
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
    bind_read_only(&proc_dir.join("sys"), &proc_dir.join("sys"))?;
    if let Some(sock) = &spec.egress_socket {
        let run = at("/run");
        mkdir(&run)?;
        let inside = at(crate::egress::INSIDE_SOCKET);
        std::fs::write(&inside, b"").map_err(|e| format!("egress socket: {e}"))?;
        mount(Some(sock), &inside, NONE, MsFlags::MS_BIND, NONE).map_err(err("egress socket"))?;
    }
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
    // The root itself becomes read-only: only /workspace and /tmp can be written.
    let old = at("/.old-root");
    mkdir(&old)?;
    pivot_root(root, &old).map_err(err("pivot_root"))?;
    chdir("/").map_err(err("chdir"))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(err("detaching the host root"))?;
    std::fs::remove_dir("/.old-root").map_err(|e| format!("/.old-root: {e}"))?;
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
