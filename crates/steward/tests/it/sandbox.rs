//! Sandboxes, with the real helper (`steward __sandbox-init`), on this host — the escape battery:
//! each attempt to get out is contained, and reported as what it was. Reading host files,
//! writing the system, seeing host processes, reaching the network (loopback included),
//! a fork bomb, a memory bomb, filling /tmp past its size or the workspace past its quota,
//! ptrace, mount, a set-uid program, killing a process outside, and a command that never ends;
//! root inside being root outside (set-uid copies left for the host), the operator's terminal,
//! descriptors leaked by the launcher, secrets and host paths on command lines, the kernel's
//! knobs in /proc, vsock and io_uring, empty files past an inode quota, every sandbox together
//! past the server's caps, FIFOs handed to the file tools, egress toward the control plane or
//! this host, and sandboxes outliving a killed server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use steward_sandbox::{layers, Ended, ExecRequest, ExecResult, Limits, Sandboxes, Workspace};

fn sandboxes(scratch: &Path) -> Sandboxes {
    sandboxes_with(scratch, steward_sandbox::Options::default())
}

fn sandboxes_with(scratch: &Path, options: steward_sandbox::Options) -> Sandboxes {
    Sandboxes::with_options(
        env!("CARGO_BIN_EXE_steward").into(),
        scratch.to_path_buf(),
        false,
        options,
    )
    .expect("this host has the cgroups sandboxes need")
}

async fn sh(s: &Sandboxes, ws: &Path, script: &str, limits: Limits) -> ExecResult {
    s.exec(ExecRequest {
        workspace: ws.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: Vec::new(),
        egress: None,
        output: None,
        control: None,
        limits,
    })
    .await
    .expect("the sandbox starts")
}

fn out(r: &ExecResult) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        r.ended,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    )
}

#[tokio::test]
async fn a_command_runs_in_its_workspace_and_reports_its_usage() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("in.txt"), "from the host\n").unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let r = s
        .exec(ExecRequest {
            workspace: ws.clone().into(),
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "pwd; cat in.txt; read line; echo \"got $line\"; echo result > out.txt; echo oops >&2; exit 3".into(),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: b"hello\n".to_vec(),
            egress: None,
            output: None,
            control: None,
            limits: Limits::default(),
        })
        .await
        .unwrap();
    assert_eq!(r.ended, Ended::Exit(3), "{}", out(&r));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "/workspace\nfrom the host\ngot hello\n"
    );
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "result\n"
    );
    assert!(r.peak_memory_bytes > 0, "{r:?}");

    // Interpreters the host has run too.
    let r = sh(&s, &ws, "python3 -c 'print(6 * 7)'", Limits::default()).await;
    assert_eq!(
        (r.ended.clone(), String::from_utf8_lossy(&r.stdout).trim()),
        (Ended::Exit(0), "42"),
        "{}",
        out(&r)
    );
}

#[tokio::test]
async fn the_host_stays_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    let l = Limits::default;

    // Host files outside the workspace are not there at all.
    let r = sh(
        &s,
        &ws,
        &format!(
            "cat {} /etc/shadow /root/.bashrc 2>&1; ls /home /var /work 2>&1; echo done",
            secret.display()
        ),
        l(),
    )
    .await;
    let o = out(&r);
    assert!(!o.contains("host secret"), "{o}");
    assert!(o.contains("No such file"), "{o}");
    // The system is read-only; only /workspace and /tmp take writes.
    let r = sh(
        &s,
        &ws,
        "touch /usr/x 2>&1; touch /x 2>&1; touch /etc/x 2>&1; touch /tmp/ok && echo tmp-ok",
        l(),
    )
    .await;
    let o = out(&r);
    assert_eq!(o.matches("Read-only file system").count(), 3, "{o}");
    assert!(o.contains("tmp-ok"), "{o}");
    // Only its own processes: it is process 2 (after the namespace's init), and the host's
    // are invisible.
    let r = sh(&s, &ws, "echo $$; ls /proc | grep -c '^[0-9]'", l()).await;
    let lines: Vec<String> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines[0], "2", "{}", out(&r));
    assert!(lines[1].parse::<u32>().unwrap() <= 4, "{}", out(&r));
    // Killing a process outside: there is none to see, and the host's pids are not its.
    let r = sh(
        &s,
        &ws,
        &format!("kill -9 {} 2>&1; echo rc=$?", std::process::id()),
        l(),
    )
    .await;
    assert!(out(&r).contains("rc=1"), "{}", out(&r));
    // No network, loopback included: a server listening on the host's loopback is unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = sh(
        &s,
        &ws,
        &format!(
            "python3 -c \"import socket; s=socket.socket(); s.settimeout(2); s.connect(('127.0.0.1', {port}))\" 2>&1; echo rc=$?"
        ),
        l(),
    )
    .await;
    let o = out(&r);
    assert!(
        o.contains("rc=1")
            && (o.contains("Network is unreachable") || o.contains("Connection refused")),
        "{o}"
    );
    let r = sh(&s, &ws, "cat /proc/net/dev | tail -n +3 | cut -d: -f1", l()).await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "lo",
        "{}",
        out(&r)
    );
}

#[tokio::test]
async fn privileged_system_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    // ptrace, mount, unshare, and a new user namespace through clone: all EPERM.
    let py = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def rc(r):
    return 'ok' if r == 0 else errno.errorcode[ctypes.get_errno()]
print('ptrace', rc(libc.ptrace(16, 1, 0, 0)))
print('mount', rc(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))
print('unshare', rc(libc.unshare(0x10000000)))
print('uid', os.getuid())
"#;
    std::fs::write(ws.join("probe.py"), py).unwrap();
    let r = sh(&s, &ws, "python3 probe.py", Limits::default()).await;
    let o = out(&r);
    for want in ["ptrace EPERM", "mount EPERM", "unshare EPERM"] {
        assert!(o.contains(want), "{want}: {o}");
    }
    // A set-uid program gains nothing: no_new_privs, nosuid mounts, no capabilities.
    let r = sh(
        &s,
        &ws,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
        Limits::default(),
    )
    .await;
    let o = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(o.contains("CapEff:\t0000000000000000"), "{o}");
    assert!(o.contains("CapBnd:\t0000000000000000"), "{o}");
    assert!(o.contains("NoNewPrivs:\t1"), "{o}");
    assert!(o.contains("Seccomp:\t2"), "{o}");
    let r = sh(
        &s,
        &ws,
        "ls -l /usr/bin/su /usr/bin/passwd 2>/dev/null | head -1; su -c id 2>&1; echo rc=$?",
        Limits::default(),
    )
    .await;
    assert!(!out(&r).contains("rc=0"), "{}", out(&r));
}

#[tokio::test]
async fn bombs_and_runaways_are_contained_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));

    // A fork bomb meets the process limit; the wall clock ends it.
    let r = sh(
        &s,
        &ws,
        "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived",
        Limits {
            pids: 32,
            wall: Duration::from_secs(3),
            ..Limits::default()
        },
    )
    .await;
    assert!(
        matches!(r.ended, Ended::Exit(_) | Ended::Timeout),
        "{}",
        out(&r)
    );
    // A memory bomb is killed by the kernel, and reported as such.
    let r = sh(
        &s,
        &ws,
        "python3 -c \"x = bytearray(512 * 1024 * 1024); print(len(x))\"",
        Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.ended, Ended::OomKilled, "{}", out(&r));
    // Filling /tmp past its size fails inside; the host's disk is untouched.
    let r = sh(
        &s,
        &ws,
        "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo rc=$?",
        Limits {
            tmp_bytes: 8 << 20,
            ..Limits::default()
        },
    )
    .await;
    let o = out(&r);
    assert!(
        o.contains("No space left on device") && o.contains("rc=1"),
        "{o}"
    );
    // A command that never ends is killed at the wall-clock limit, with everything it started.
    let r = sh(
        &s,
        &ws,
        "sleep 600 & sleep 600",
        Limits {
            wall: Duration::from_millis(500),
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.ended, Ended::Timeout, "{}", out(&r));
    let strays = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.as_slice() == b"sleep\x00600\x00")
        .count();
    assert_eq!(
        strays, 0,
        "nothing the timed-out command started is left running"
    );
    // A process that kills itself is reported as killed by that signal.
    let r = sh(&s, &ws, "kill -TERM $$; sleep 5", Limits::default()).await;
    assert_eq!(r.ended, Ended::Signal(15), "{}", out(&r));
}

#[tokio::test]
async fn the_probe_reports_what_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let layers = steward_sandbox::probe(&s, &ws).await;
    assert!(layers.missing().is_empty(), "{layers:?}");
    assert!(layers.cgroup.is_some());
    // Each containment layer is reported as the trial command saw it.
    assert!(layers.capabilities_dropped && layers.no_terminal && layers.proc_masked);
    let me = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if me.unwrap() == 0 {
        assert_eq!(layers.root_maps_to, Some(steward_sandbox::DEFAULT_HOST_UID));
        assert!(layers.root_unprivileged, "{layers:?}");
    }
}

async fn in_layers(s: &Sandboxes, store: &layers::Store, id: &str, script: &str) -> String {
    let r = s
        .exec(ExecRequest {
            workspace: Workspace::Layered(store.layered(id).unwrap()),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Vec::new(),
            egress: None,
            output: None,
            control: None,
            limits: Limits::default(),
        })
        .await
        .unwrap();
    assert_eq!(r.ended, Ended::Exit(0), "{}", out(&r));
    String::from_utf8_lossy(&r.stdout).to_string()
}

/// A persistent sandbox keeps its workspace between execs; a snapshot freezes it (content-
/// addressed: equal workspaces make the same snapshot), forks start from it without copying and
/// do not see each other's changes, and a restore goes back to it.
#[tokio::test]
async fn snapshots_fork_and_restore_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let store = layers::Store::open(dir.path().join("sandboxes")).unwrap();
    store.create("main", None).unwrap();
    assert!(store.create("main", None).is_err(), "an id is used once");
    assert!(store.create("../x", None).is_err());
    in_layers(&s, &store, "main", "echo 1 > a; mkdir d; echo deep > d/f").await;
    assert_eq!(
        in_layers(&s, &store, "main", "cat a").await,
        "1\n",
        "persists"
    );
    let snap = store.snapshot("main").unwrap();
    in_layers(&s, &store, "main", "echo 2 > a; echo new > b; rm d/f").await;

    for i in 0..3 {
        store.create(&format!("fork{i}"), Some(&snap)).unwrap();
    }
    assert_eq!(
        in_layers(&s, &store, "fork0", "cat a d/f; ls").await,
        "1\ndeep\na\nd\n"
    );
    in_layers(&s, &store, "fork1", "echo mine > a").await;
    assert_eq!(
        in_layers(&s, &store, "fork2", "cat a").await,
        "1\n",
        "forks are apart"
    );
    assert_eq!(
        in_layers(&s, &store, "main", "cat a b; ls d | wc -l").await,
        "2\nnew\n0\n"
    );

    store.restore("main", &snap).unwrap();
    assert_eq!(
        in_layers(&s, &store, "main", "cat a; ls").await,
        "1\na\nd\n"
    );

    // Content-addressed: another sandbox that writes the same files makes the same snapshot.
    store.create("twin", None).unwrap();
    in_layers(&s, &store, "twin", "echo 1 > a; mkdir d; echo deep > d/f").await;
    assert_eq!(store.snapshot("twin").unwrap(), snap);
    assert!(store.create("ghost", Some(&"0".repeat(64))).is_err());
    store.remove("fork1").unwrap();
    assert!(!store.exists("fork1"));
}

/// With an allow-list, the sandbox's only way out is the egress proxy: allowed targets are
/// reached (HTTP and CONNECT), others refused, and every connection is reported.
/// Runs `net.py` (written to `ws`) with `egress`, on sandboxes `s`.
async fn with_egress(
    s: &Sandboxes,
    ws: &Path,
    py: &str,
    egress: steward_sandbox::Egress,
) -> String {
    std::fs::write(ws.join("net.py"), py).unwrap();
    let r = s
        .exec(ExecRequest {
            workspace: ws.into(),
            argv: vec!["python3".into(), "net.py".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Vec::new(),
            egress: Some(egress),
            output: None,
            control: None,
            limits: Limits::default(),
        })
        .await
        .unwrap();
    out(&r)
}

/// Python that fetches each `(label, url)` through the proxy and prints what it got.
fn fetches(targets: &[(&str, String)]) -> String {
    let mut py = String::from(
        r#"
import urllib.request
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except Exception as e:
        return f"refused: {e}"
"#,
    );
    for (label, url) in targets {
        py.push_str(&format!("print({label:?}, get({url:?}))\n"));
    }
    py
}

type Events = std::sync::Arc<std::sync::Mutex<Vec<steward_sandbox::egress::EgressEvent>>>;

fn egress(entries: &[String]) -> (steward_sandbox::Egress, Events) {
    let events: Events = Default::default();
    let seen = events.clone();
    let e = steward_sandbox::Egress {
        allow: steward_sandbox::egress::AllowList::parse(entries).unwrap(),
        report: std::sync::Arc::new(move |e| seen.lock().unwrap().push(e)),
    };
    (e, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_only_where_the_allow_list_says() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    // Two hosts of their own: one allowed, one not.
    let open = common::NetHost::start("allowed", false);
    let closed = common::NetHost::start("secret", false);
    let (e, events) = egress(&[open.target()]);
    let mut py = fetches(&[
        ("open", format!("http://{}/", open.target())),
        ("closed", format!("http://{}/", closed.target())),
    ]);
    py.push_str(&format!(
        r#"
import socket
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("{}", {})); print("direct connected")
except Exception as e:
    print("direct", type(e).__name__)
"#,
        closed.ip, closed.port
    ));
    let o = with_egress(&s, &ws, &py, e).await;
    assert!(o.contains("open allowed"), "{o}");
    assert!(o.contains("closed refused") && o.contains("403"), "{o}");
    assert!(
        !o.contains("secret") && !o.contains("direct connected"),
        "{o}"
    );
    let events = events.lock().unwrap().clone();
    let allowed: Vec<bool> = events.iter().map(|e| e.allowed).collect();
    assert_eq!(allowed, [true, false], "{events:?}");
    assert_eq!(events[1].target, closed.target());
}

/// Whatever a list says, egress never reaches loopback (where Steward's own API listens),
/// link-local or unspecified addresses, nor any address of this host — by address, by a name
/// that resolves there, or by another spelling of it; private ranges only under the server's
/// separate setting. Every attempt, malformed ones included, is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_never_reaches_the_control_plane_or_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    // A stand-in for Steward's API on loopback, and on every address of this host.
    let api = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = api.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in api.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nreached",
            );
        }
    });
    let public = common::NetHost::start("public", false);
    let private = common::NetHost::start("private", true);
    let lists = [
        "127.0.0.1/32".to_string(),
        "127.0.0.0/8".into(),
        "*.localhost:*".into(),
        "localhost:*".into(),
        "0.0.0.0/0".into(),
        "::/0".into(),
        "169.254.0.0/16".into(),
        "10.0.0.0/8".into(),
    ];
    let (e, events) = egress(&lists);
    let targets = [
        ("v4", format!("http://127.0.0.1:{port}/")),
        ("v4-other", format!("http://127.1.2.3:{port}/")),
        ("name", format!("http://localhost:{port}/")),
        ("sub", format!("http://api.localhost:{port}/")),
        ("v6", format!("http://[::1]:{port}/")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
        ("zero", format!("http://0.0.0.0:{port}/")),
        ("own", format!("http://{}:{port}/", public.host_side)),
        ("metadata", "http://169.254.169.254/".to_string()),
        ("private", format!("http://{}/", private.target())),
        ("public", format!("http://{}/", public.target())),
    ];
    let o = with_egress(&s, &ws, &fetches(&targets), e.clone()).await;
    assert!(!o.contains("reached"), "{o}");
    for (label, _) in &targets[..10] {
        assert!(o.contains(&format!("{label} refused")), "{label}: {o}");
    }
    assert!(o.contains("public public"), "{o}");
    let refused = events.lock().unwrap().iter().filter(|e| !e.allowed).count();
    assert_eq!(refused, 10, "{:?}", events.lock().unwrap());

    // Malformed attempts straight at the proxy are refused and reported all the same.
    let (e2, events) = egress(&[public.target()]);
    let raw = r#"
import socket
for req in [b"GARBAGE\r\n\r\n", b"CONNECT nohost\r\n\r\n", b"CONNECT h:99999 HTTP/1.1\r\n\r\n"]:
    s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
    s.sendall(req)
    print(s.recv(100).split(b"\r\n")[0].decode())
"#;
    let o = with_egress(&s, &ws, raw, e2).await;
    assert_eq!(o.matches("400 Bad Request").count(), 3, "{o}");
    let reasons: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("malformed")),
        "{reasons:?}"
    );

    // With private ranges allowed by the server, the private host is reached; this host and
    // loopback still are not.
    let s = sandboxes_with(
        &dir.path().join("scratch2"),
        steward_sandbox::Options {
            egress_private: true,
            ..Default::default()
        },
    );
    let (e, _) = egress(&lists);
    let o = with_egress(&s, &ws, &fetches(&targets), e).await;
    assert!(o.contains("private private"), "{o}");
    assert!(!o.contains("reached"), "{o}");
}

use crate::common;
use common::{Backend, TestServer};
use serde_json::Value;

/// A managed run's code runs in its own sandbox, through the Kernel: files in, a command, files
/// out, on a workspace that lasts the run — and the file tools never follow what a command
/// leaves behind out of it. A policy decides `sandbox.exec` like any other syscall.
async fn a_run_works_in_its_own_sandbox(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(concat!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: coder}\nspec:\n  model: scripted\n",
        "  tools: [sandbox_write_file, sandbox_exec, sandbox_read_file]\n  script:\n",
        "    - toolCalls: [{name: sandbox_write_file, arguments: {path: src/hello.py, content: \"print('hi from', open('/etc/hostname').read().strip())\"}}]\n",
        "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"python3 src/hello.py > out.txt; cat out.txt; exit 4\"}}]\n",
        "    - toolCalls: [{name: sandbox_read_file, arguments: {path: out.txt}}]\n",
        "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"ln -s /etc/passwd leak; mkdir d; ln -s / d/up\"}}]\n",
        "    - toolCalls: [{name: sandbox_read_file, arguments: {path: leak}}]\n",
        "    - toolCalls: [{name: sandbox_write_file, arguments: {path: d/up/tmp/x, content: y}}]\n",
        "    - toolCalls: [{name: sandbox_read_file, arguments: {path: ../../vault.key}}]\n",
        "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"mkfifo pipe && echo '# more' >> src/hello.py && echo appended\"}}]\n",
        "    - toolCalls: [{name: sandbox_read_file, arguments: {path: pipe}}]\n",
        "    - toolCalls: [{name: sandbox_write_file, arguments: {path: pipe, content: y}}]\n",
        "    - content: done\n",
    ))
    .await;
    let run = s.start_run("coder", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let tools: Vec<Value> = s
        .journal(&run)
        .await
        .into_iter()
        .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(tools.len(), 10, "{tools:#?}");
    let exec = &tools[1]["ok"];
    assert_eq!(
        (exec["ended"].as_str(), exec["exit_code"].as_i64()),
        (Some("exit"), Some(4)),
        "{exec}"
    );
    assert_eq!(exec["stdout"], "hi from sandbox\n", "{exec}");
    assert_eq!(
        tools[2]["ok"]["content"], "hi from sandbox\n",
        "{}",
        tools[2]
    );
    // What the server wrote is the sandbox's to change; a FIFO is refused, not waited on.
    assert_eq!(tools[7]["ok"]["stdout"], "appended\n", "{}", tools[7]);
    for (i, why) in [
        (4, "leak"),
        (5, "link"),
        (6, ".."),
        (8, "not a regular file"),
        (9, "not a regular file"),
    ] {
        assert!(tools[i].get("error").is_some(), "step {i}: {}", tools[i]);
        assert!(
            tools[i]["error"].to_string().contains(why),
            "step {i}: {}",
            tools[i]
        );
    }

    // Forbidden by policy, code does not run.
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/policies", s.url))
        .body(concat!(
            "@id(\"all\") permit (principal, action, resource);\n",
            "@id(\"no-code\") forbid (principal, action == Steward::Action::\"sandbox.exec\", resource);\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let run = s.start_run("coder", "again").await;
    s.wait_run(&run).await;
    let denied = s
        .journal(&run)
        .await
        .into_iter()
        .find(|e| e["phase"] == "outcome" && e["name"] == "sandbox_exec")
        .unwrap();
    assert!(denied["body"].to_string().contains("no-code"), "{denied}");
}
both_backends!(
    a_run_works_in_its_own_sandbox,
    a_run_works_in_its_own_sandbox
);

/// `steward sandbox …` against the real server: create, exec, cp both ways (binary-safe),
/// snapshot, fork, restore, ls, rm — each an audited administrator action — and clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_persistent_sandboxes() {
    let s = TestServer::start(Backend::Sqlite).await;
    let cli = |args: &[&str]| common::cli(&s, args);
    let (ok, id, err) = cli(&["sandbox", "create"]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let (ok, out, _) = cli(&[
        "sandbox", "exec", &id, "--", "echo", "1", ">", "a;", "cat", "a",
    ]);
    assert!(ok);
    assert_eq!(out, "1\n");
    let (ok, _, _) = cli(&["sandbox", "exec", &id, "--", "exit", "7"]);
    assert!(!ok, "the command's exit code is the CLI's");

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    std::fs::write(&local, &bytes).unwrap();
    let (ok, _, err) = cli(&[
        "sandbox",
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:in/it's here.bin"),
    ]);
    assert!(ok, "{err}");
    let back = dir.path().join("back.bin");
    let (ok, _, err) = cli(&[
        "sandbox",
        "cp",
        &format!("{id}:in/it's here.bin"),
        back.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), bytes);

    let (ok, snap, err) = cli(&["sandbox", "snapshot", &id]);
    assert!(ok, "{err}");
    let snap = snap.trim().to_string();
    assert_eq!(snap.len(), 64);
    let (ok, forks, err) = cli(&["sandbox", "fork", &snap, "--count", "2"]);
    assert!(ok, "{err}");
    let forks: Vec<&str> = forks.lines().collect();
    assert_eq!(forks.len(), 2);
    cli(&["sandbox", "exec", &id, "--", "echo", "2", ">", "a"]);
    let (_, out, _) = cli(&["sandbox", "exec", forks[0], "--", "cat", "a"]);
    assert_eq!(out, "1\n", "a fork starts from the snapshot");
    let (ok, _, err) = cli(&["sandbox", "restore", &id, &snap]);
    assert!(ok, "{err}");
    let (_, out, _) = cli(&["sandbox", "exec", &id, "--", "cat", "a"]);
    assert_eq!(out, "1\n");
    let (_, ls, _) = cli(&["sandbox", "ls"]);
    assert_eq!(ls.lines().count(), 3, "{ls}");
    let (ok, _, _) = cli(&["sandbox", "rm", forks[1]]);
    assert!(ok);
    let (ok, _, err) = cli(&["sandbox", "exec", forks[1], "--", "true"]);
    assert!(!ok && err.contains("no sandbox"), "{err}");

    // The API says what is wrong.
    let (st, e) = s
        .post(
            "/api/v1/sandboxes",
            serde_json::json!({"from_snapshot": "f".repeat(64)}),
        )
        .await;
    assert_eq!(st, 404, "{e}");
    let (st, _) = s
        .post("/api/v1/sandboxes", serde_json::json!({"count": 1000}))
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/exec"),
            serde_json::json!({"cmd": "x"}),
        )
        .await;
    assert_eq!(st, 400);
    // Output streamed as it comes: stdout and stderr events, then the result.
    let body = reqwest::Client::new()
        .post(format!("{}/api/v1/sandboxes/{id}/exec/stream", s.url))
        .json(&serde_json::json!({"command": "echo first; echo oops >&2; exit 3"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stdout = body.find("event: stdout\ndata: first").expect(&body);
    let end = body.find("event: end").expect(&body);
    assert!(body.contains("event: stderr\ndata: oops"), "{body}");
    assert!(stdout < end, "{body}");
    assert!(body[end..].contains("\"exit_code\":3"), "{body}");
    let audited: Vec<String> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["event"] == "admin")
        .filter_map(|r| r["action"].as_str().map(str::to_string))
        .collect();
    for want in [
        "sandbox.create",
        "sandbox.exec",
        "sandbox.snapshot",
        "sandbox.restore",
        "sandbox.remove",
    ] {
        assert!(audited.iter().any(|a| a == want), "{want} in {audited:?}");
    }
}

/// A manifest's `spec.sandbox.egress` opens the run's sandbox to those targets only, and every
/// connection — allowed or refused — is in the audit log.
async fn a_runs_egress_follows_its_manifest_and_is_audited(b: Backend) {
    let s = TestServer::start(b).await;
    let host = common::NetHost::start("hello", false);
    // A wrong entry is refused when applied, naming it.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/agents", s.url))
        .body("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bad}\nspec:\n  model: scripted\n  sandbox: {egress: [\"example.com\"]}\n  script: [{content: x}]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("spec.sandbox"));

    let (ip, port) = (host.ip.clone(), host.port);
    let fetch = |p: u16| {
        format!("python3 -c \\\"import urllib.request as u; print(u.urlopen('http://{ip}:{p}/', timeout=5).read().decode())\\\"")
    };
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: fetcher}}\nspec:\n  model: scripted\n  tools: [sandbox_exec]\n  sandbox: {{egress: [\"{ip}:{port}\"]}}\n  script:\n    - toolCalls: [{{name: sandbox_exec, arguments: {{command: \"{}\"}}}}]\n    - toolCalls: [{{name: sandbox_exec, arguments: {{command: \"{}\"}}}}]\n    - content: done\n",
        fetch(port),
        fetch(port + 1)
    ))
    .await;
    let run = s.start_run("fetcher", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let execs: Vec<Value> = s
        .journal(&run)
        .await
        .into_iter()
        .filter(|e| e["phase"] == "outcome" && e["name"] == "sandbox_exec")
        .map(|e| e["body"]["ok"].clone())
        .collect();
    assert_eq!(execs[0]["stdout"], "hello\n", "{}", execs[0]);
    assert_eq!(execs[1]["exit_code"], 1, "{}", execs[1]);
    assert!(
        execs[1]["stderr"].to_string().contains("403"),
        "{}",
        execs[1]
    );
    let egress = common::eventually("both connections audited", || async {
        let e: Vec<Value> = common::audit_records(&s)
            .await
            .into_iter()
            .filter(|r| r["event"] == "egress")
            .collect();
        (e.len() == 2).then_some(e)
    })
    .await;
    assert_eq!(egress[0]["decision"], "allow", "{egress:?}");
    assert_eq!(egress[1]["decision"], "deny", "{egress:?}");
    assert_eq!(egress[1]["resource"], format!("{ip}:{}", port + 1));
    assert_eq!(egress[0]["run_id"], run.as_str());
}
both_backends!(
    a_runs_egress_follows_its_manifest_and_is_audited,
    a_runs_egress_follows_its_manifest_and_is_audited
);

/// Secrets never enter a sandbox unless a policy grants one by name; a granted one is an
/// environment variable of the commands, masked in what they print, and each use is audited.
async fn secrets_enter_a_sandbox_only_by_policy(b: Backend) {
    let s = TestServer::start(b).await;
    let value = "s3cr3t-v4lue-that-must-not-leak";
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/secrets/DEPLOY_TOKEN", s.url))
        .json(&serde_json::json!({"value": value}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    s.apply(concat!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: deployer}\nspec:\n  model: scripted\n",
        "  tools: [sandbox_exec]\n  sandbox: {secrets: [DEPLOY_TOKEN]}\n  script:\n",
        "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"printf %s \\\"$DEPLOY_TOKEN\\\" | wc -c; echo token=$DEPLOY_TOKEN\"}}]\n",
        "    - content: done\n",
    ))
    .await;
    let exec_of = |run: String| {
        let s = &s;
        async move {
            s.wait_run(&run).await;
            s.journal(&run)
                .await
                .into_iter()
                .find(|e| e["phase"] == "outcome" && e["name"] == "sandbox_exec")
                .unwrap()["body"]
                .clone()
        }
    };
    // The default policy does not grant secrets: the exec is refused, nothing runs.
    let denied = exec_of(s.start_run("deployer", "go").await).await;
    assert!(
        denied["error"]
            .to_string()
            .contains("no policy permits secret.use"),
        "{denied}"
    );
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/policies", s.url))
        .body(concat!(
            "@id(\"all\") permit (principal, action in [Steward::Action::\"llm.call\", Steward::Action::\"tool.call\", Steward::Action::\"sandbox.exec\"], resource);\n",
            "@id(\"deployer-token\") permit (principal in Steward::Agent::\"deployer\", action == Steward::Action::\"secret.use\", resource == Steward::Secret::\"DEPLOY_TOKEN\");\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ok = exec_of(s.start_run("deployer", "go").await).await;
    let stdout = ok["ok"]["stdout"].as_str().unwrap();
    assert_eq!(
        stdout,
        format!("{}\ntoken=[secret:DEPLOY_TOKEN]\n", value.len()),
        "{ok}"
    );
    let audit = common::audit_records(&s).await;
    assert!(!serde_json::to_string(&audit).unwrap().contains(value));
    let uses: Vec<&str> = audit
        .iter()
        .filter(|r| r["action"] == "secret.use")
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["deny", "allow"]);
}
both_backends!(
    secrets_enter_a_sandbox_only_by_policy,
    secrets_enter_a_sandbox_only_by_policy
);

/// Templates: setup commands run once; every later request with the same setup starts from the
/// snapshot they left. TTLs: a sandbox unused past its lifetime is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_built_once_and_idle_sandboxes_expire() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("STEWARD_ENGINE__HOUSEKEEPING_MS", "50")],
    )
    .await;
    let setup = serde_json::json!([
        "mkdir -p lib && date +%s%N > lib/built",
        "echo ready > status"
    ]);
    let (st, a) = s
        .post("/api/v1/sandboxes", serde_json::json!({"template": setup}))
        .await;
    assert_eq!(st, 201, "{a}");
    let (_, b) = s
        .post(
            "/api/v1/sandboxes",
            serde_json::json!({"template": setup, "count": 2}),
        )
        .await;
    assert_eq!(a["snapshot"], b["snapshot"], "the same setup is built once");
    let built = |id: Value| {
        let s = &s;
        async move {
            let (_, r) = s
                .post(
                    &format!("/api/v1/sandboxes/{}/exec", id.as_str().unwrap()),
                    serde_json::json!({"command": "cat lib/built status"}),
                )
                .await;
            r["stdout"].as_str().unwrap().to_string()
        }
    };
    let first = built(a["sandboxes"][0].clone()).await;
    assert!(first.ends_with("ready\n"), "{first}");
    assert_eq!(built(b["sandboxes"][1].clone()).await, first);
    let (st, e) = s
        .post(
            "/api/v1/sandboxes",
            serde_json::json!({"template": ["exit 9"]}),
        )
        .await;
    assert_eq!(st, 400, "a failing setup fails the template: {e}");

    let (_, brief) = s
        .post("/api/v1/sandboxes", serde_json::json!({"ttl_s": 1}))
        .await;
    let brief = brief["sandboxes"][0].as_str().unwrap().to_string();
    let (_, listed) = s.get("/api/v1/sandboxes").await;
    assert!(listed.to_string().contains(&brief));
    common::eventually("the idle sandbox is removed", || async {
        let (_, listed) = s.get("/api/v1/sandboxes").await;
        (!listed.to_string().contains(&brief)).then_some(())
    })
    .await;
    let (_, listed) = s.get("/api/v1/sandboxes").await;
    assert_eq!(
        listed["sandboxes"].as_array().unwrap().len(),
        3,
        "the others stay"
    );
}

/// With a price per CPU-second, a run's `sandbox_exec` holds its worst case (timeout × CPU
/// limit) on the run's budget before it runs, and settles the CPU time it used after.
async fn sandbox_cpu_is_charged_to_the_runs_budget(b: Backend) {
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_SANDBOX__CPU_SECOND_USD", "0.01"),
            ("STEWARD_SANDBOX__TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    // The worst case of one exec: 10 s at one core, $0.10.
    let agent = |name: &str, cap: &str| {
        format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [sandbox_exec]\n  budget: {{perRunUsd: {cap}, onExceeded: fail}}\n  script:\n    - toolCalls: [{{name: sandbox_exec, arguments: {{command: \"python3 -c 'sum(range(3000000))'\"}}}}]\n    - content: done\n"
        )
    };
    s.apply(&agent("tight", "0.05")).await;
    s.apply(&agent("roomy", "1.0")).await;
    let run = s.start_run("tight", "go").await;
    let r = s.wait_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["code"].as_str()),
        (Some("failed"), Some("budget_exceeded")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .to_string()
            .contains(&format!("run:{run}")),
        "{r}"
    );

    let run = s.start_run("roomy", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let (_, all) = s.get("/api/v1/budgets").await;
    let acct = all["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["account"] == format!("run:{run}"))
        .cloned()
        .unwrap();
    let spent = acct["spent_nanos"].as_i64().unwrap();
    assert!(spent > 0 && spent <= 100_000_000, "{acct}");
    assert_eq!(acct["reserved_nanos"], 0, "{acct}");
}
both_backends!(
    sandbox_cpu_is_charged_to_the_runs_budget,
    sandbox_cpu_is_charged_to_the_runs_budget
);

/// A persistent sandbox created with an egress list reaches those targets only, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sandboxes_take_an_egress_list() {
    let s = TestServer::start(Backend::Sqlite).await;
    let host = common::NetHost::start("hi", false);
    let (ip, port) = (host.ip.clone(), host.port);
    let (st, _) = s
        .post(
            "/api/v1/sandboxes",
            serde_json::json!({"egress": ["nowhere"]}),
        )
        .await;
    assert_eq!(st, 400, "a bad entry is refused");
    let (st, c) = s
        .post(
            "/api/v1/sandboxes",
            serde_json::json!({"egress": [format!("{ip}:{port}")]}),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    let id = c["sandboxes"][0].as_str().unwrap().to_string();
    let fetch = |p: u16| {
        format!("python3 -c \"import urllib.request as u; print(u.urlopen('http://{ip}:{p}/', timeout=5).read().decode())\"")
    };
    let (_, ok) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/exec"),
            serde_json::json!({"command": fetch(port)}),
        )
        .await;
    assert_eq!(ok["stdout"], "hi\n", "{ok}");
    let (_, refused) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/exec"),
            serde_json::json!({"command": fetch(port + 1)}),
        )
        .await;
    assert!(refused["stderr"].to_string().contains("403"), "{refused}");
    let egress = common::eventually("both connections audited", || async {
        let e: Vec<Value> = common::audit_records(&s)
            .await
            .into_iter()
            .filter(|r| r["event"] == "egress" && r["principal"] == format!("sandbox:{id}"))
            .collect();
        (e.len() == 2).then_some(e)
    })
    .await;
    let decisions: Vec<&str> = egress
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allow", "deny"]);
}

/// The workspace's disk quota: one large file is stopped by the kernel, many small ones by the
/// watch; either way the exec reports `disk_quota`, the next exec has no room to grow, and
/// removing files gives the room back.
#[tokio::test]
async fn filling_the_workspace_past_its_quota_is_stopped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let quota = Limits {
        workspace_bytes: Some(8 << 20),
        ..Limits::default()
    };
    let used = |ws: &Path| -> u64 {
        std::fs::read_dir(ws)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let r = sh(
        &s,
        &ws,
        "dd if=/dev/zero of=big bs=1M count=64",
        quota.clone(),
    )
    .await;
    assert_eq!(r.ended, Ended::DiskQuota, "{}", out(&r));
    assert!(used(&ws) <= 8 << 20, "{} bytes written", used(&ws));
    std::fs::remove_file(ws.join("big")).unwrap();
    let r = sh(
        &s,
        &ws,
        "i=0; while true; do i=$((i+1)); head -c 1048576 /dev/zero > f$i; sleep 0.01; done",
        quota.clone(),
    )
    .await;
    assert_eq!(r.ended, Ended::DiskQuota, "{}", out(&r));
    let over = used(&ws);
    assert!(over > 8 << 20, "the watch ended it past the quota: {over}");
    assert!(over < 64 << 20, "and soon after: {over}");
    // No room: nothing grows; removing files is still allowed, and frees the room again.
    let r = sh(&s, &ws, "echo more >> f1", quota.clone()).await;
    assert_eq!(r.ended, Ended::DiskQuota, "{}", out(&r));
    let r = sh(&s, &ws, "rm f*", quota.clone()).await;
    assert_eq!(r.ended, Ended::Exit(0), "{}", out(&r));
    let r = sh(&s, &ws, "echo ok > small; cat small", quota.clone()).await;
    assert_eq!(r.ended, Ended::Exit(0), "{}", out(&r));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "ok\n");
}

/// Starts `command` in sandbox `id` and returns once its processes are seen; the task ends
/// with the exec's answer.
async fn started(
    s: &std::sync::Arc<TestServer>,
    id: &str,
    command: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let running = {
        let (s, exec, command) = (
            s.clone(),
            format!("/api/v1/sandboxes/{id}/exec"),
            command.to_string(),
        );
        tokio::spawn(async move { s.post(&exec, serde_json::json!({"command": command})).await })
    };
    common::eventually("the exec started", || async {
        let (_, p) = s.get(&format!("/api/v1/sandboxes/{id}/processes")).await;
        (!p["processes"].as_array()?.is_empty()).then_some(())
    })
    .await;
    running
}

/// A persistent sandbox through the API: snippets in the host's interpreters, files in and
/// out, its running processes listed and signalled, a cancel, and a pause that freezes what
/// runs (its time limit stops counting) and lets nothing new start until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sandboxes_run_code_move_files_and_are_controlled_while_they_run() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SANDBOX__TIMEOUT_MS", "3000")]).await;
    let (_, c) = s.post("/api/v1/sandboxes", serde_json::json!({})).await;
    let id = c["sandboxes"][0].as_str().unwrap().to_string();
    let exec = format!("/api/v1/sandboxes/{id}/exec");

    // Code in the host's interpreters; a bad request says what it needs.
    let (st, r) = s
        .post(&exec, serde_json::json!({"language": "python3", "code": "import sys; print(6 * 7, sys.stdin.read())", "stdin": "in"}))
        .await;
    assert_eq!((st, r["stdout"].as_str()), (200, Some("42 in\n")), "{r}");
    let (_, r) = s
        .post(
            &exec,
            serde_json::json!({"language": "bash", "code": "echo $((2 ** 10))"}),
        )
        .await;
    assert_eq!(r["stdout"], "1024\n", "{r}");
    for bad in [
        serde_json::json!({"language": "cobol", "code": "x"}),
        serde_json::json!({"command": "true", "code": "x", "language": "sh"}),
        serde_json::json!({"code": "x"}),
        serde_json::json!({}),
    ] {
        let (st, r) = s.post(&exec, bad.clone()).await;
        assert_eq!(st, 400, "{bad} -> {r}");
    }

    // Files: binary content up and down, directories made, listed; no way out of /workspace.
    let http = reqwest::Client::new();
    let files = format!("{}/api/v1/sandboxes/{id}/files", s.url);
    let content: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let put = http
        .put(format!("{files}?path=data/blob.bin"))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let got = http
        .get(format!("{files}?path=/workspace/data/blob.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    let (_, r) = s
        .post(
            &exec,
            serde_json::json!({"command": "wc -c < data/blob.bin"}),
        )
        .await;
    assert_eq!(r["stdout"], "300000\n", "the sandbox sees the upload");
    let (st, list) = s
        .get(&format!("/api/v1/sandboxes/{id}/files/list?path=data"))
        .await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["entries"][0]["name"], "blob.bin", "{list}");
    assert_eq!(list["entries"][0]["kind"], "file");
    assert_eq!(list["entries"][0]["size"], 300_000);
    let (_, top) = s.get(&format!("/api/v1/sandboxes/{id}/files/list")).await;
    assert_eq!(top["entries"][0]["kind"], "dir", "{top}");
    for bad in [
        "../../etc/passwd",
        "/etc/passwd",
        "data/../../x",
        "nothing-here",
    ] {
        let st = http
            .get(format!("{files}?path={bad}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, 400, "{bad}");
    }
    let st = http.get(&files).send().await.unwrap().status();
    assert_eq!(st, 400, "a path is required");

    // Processes of a running exec, by the sandbox's own pids; one is signalled.
    let s = std::sync::Arc::new(s);
    let running = {
        let (s, exec) = (s.clone(), exec.clone());
        tokio::spawn(async move {
            s.post(
                &exec,
                serde_json::json!({"command": "sleep 2.5 & sleep 2.6; echo rc=$?"}),
            )
            .await
        })
    };
    let procs = common::eventually("the exec's processes listed", || async {
        let (_, p) = s.get(&format!("/api/v1/sandboxes/{id}/processes")).await;
        let p = p["processes"].as_array().cloned().unwrap_or_default();
        p.iter()
            .any(|p| p["command"] == serde_json::json!(["sleep", "2.6"]))
            .then_some(p)
    })
    .await;
    assert!(
        procs
            .iter()
            .all(|p| !p["command"].to_string().contains("__sandbox-init")),
        "the sandbox's own helpers are not listed: {procs:?}"
    );
    let target = procs
        .iter()
        .find(|p| p["command"] == serde_json::json!(["sleep", "2.6"]))
        .unwrap();
    let pid = target["pid"].as_i64().unwrap();
    assert!(pid < 10, "numbered inside the sandbox: {target}");
    let (_, list) = s.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"][0]["state"], "running", "{list}");
    let (st, r) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/processes/{pid}/kill"),
            serde_json::json!({"signal": 9}),
        )
        .await;
    assert_eq!(st, 204, "{r}");
    let (_, r) = running.await.unwrap();
    assert_eq!(r["stdout"], "rc=137\n", "{r}");
    let (st, _) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/processes/{pid}/kill"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 409, "nothing runs any more");

    // A cancel ends the whole tree at once, reported as such.
    let running = started(&s, &id, "sleep 60").await;
    let (st, _) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/cancel"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 204);
    let (_, r) = running.await.unwrap();
    assert_eq!(r["ended"], "cancelled", "{r}");

    // A pause freezes what runs: a 1 s sleep does not end during a 4 s pause, and the 3 s
    // limit does not count the pause; nothing new starts meanwhile.
    let running = started(&s, &id, "sleep 1; echo woke").await;
    let (st, _) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/pause"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 204);
    let (_, list) = s.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"][0]["state"], "paused", "{list}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!running.is_finished(), "a paused exec does not run on");
    let (st, _) = s
        .post(
            &format!("/api/v1/sandboxes/{id}/resume"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 204);
    let (_, r) = running.await.unwrap();
    assert_eq!(
        (r["ended"].as_str(), r["stdout"].as_str()),
        (Some("exit"), Some("woke\n")),
        "{r}"
    );
    assert!(r["wall_ms"].as_u64().unwrap() >= 4000, "{r}");
    let (_, list) = s.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"][0]["state"], "idle", "{list}");
    // Paused while idle: nothing starts until it is resumed.
    s.post(
        &format!("/api/v1/sandboxes/{id}/pause"),
        serde_json::json!({}),
    )
    .await;
    let (st, r) = s.post(&exec, serde_json::json!({"command": "true"})).await;
    assert_eq!(st, 409, "{r}");
    assert!(r.to_string().contains("resume it first"), "{r}");
    s.post(
        &format!("/api/v1/sandboxes/{id}/resume"),
        serde_json::json!({}),
    )
    .await;
    let (st, r) = s.post(&exec, serde_json::json!({"command": "true"})).await;
    assert_eq!((st, r["ended"].as_str()), (200, Some("exit")), "{r}");
}

/// Root inside is an unprivileged uid outside: what a command writes is that uid's, a set-uid
/// copy of a shell keeps no set-uid bit on the host (plain and layered workspaces, and the
/// snapshots made of them), no device node can be made, and the sandboxes' directories are
/// private to the server.
#[tokio::test]
async fn root_inside_is_an_unprivileged_uid_outside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let scratch = dir.path().join("scratch");
    let s = sandboxes(&scratch);
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let outside = if me == 0 {
        steward_sandbox::DEFAULT_HOST_UID
    } else {
        me
    };
    assert_ne!(outside, 0);
    let plant = "id -u; cat /proc/self/uid_map; cp /bin/sh suid-sh && chmod 4755 suid-sh; \
                 mkdir -p d && cp /bin/sh d/sgid-sh && chmod 2755 d/sgid-sh; \
                 mknod dev-null c 1 3 2>&1; echo mknod=$?; ls -l suid-sh";
    let r = sh(&s, &ws, plant, Limits::default()).await;
    let o = out(&r);
    assert!(o.contains("stdout: 0\n"), "{o}");
    let words = o.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains(&format!("0 {outside} 1")), "{o}");
    assert!(
        o.contains("mknod=1") && !ws.join("dev-null").exists(),
        "{o}"
    );
    // Inside, the bit was set (on a nosuid mount, where it does nothing) …
    assert!(o.contains("-rwsr-xr-x"), "{o}");
    // … and outside it is gone, and the file is not root's.
    for f in ["suid-sh", "d/sgid-sh"] {
        let m = std::fs::metadata(ws.join(f)).unwrap();
        assert_eq!(m.uid(), outside, "{f}");
        assert_eq!(m.mode() & 0o6000, 0, "{f}: mode {:o}", m.mode());
    }
    assert_eq!(
        std::fs::metadata(&scratch).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A persistent sandbox: its own layer, and the snapshot frozen from it.
    let store = layers::Store::open(dir.path().join("persistent")).unwrap();
    store.create("p1", None).unwrap();
    let o = in_layers(&s, &store, "p1", "cp /bin/sh x && chmod 6755 x && ls -l x").await;
    assert!(o.contains("-rwsr-sr-x"), "{o}");
    let upper = store.layered("p1").unwrap().upper;
    let m = std::fs::metadata(upper.join("x")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o6000), (outside, 0));
    let snap = store.snapshot("p1").unwrap();
    store.create("p2", Some(&snap)).unwrap();
    let o = in_layers(&s, &store, "p2", "chmod 4755 x; stat -c %a x").await;
    assert!(o.contains("4755"), "{o}");
    let l = store.layered("p2").unwrap();
    for layer in &l.lower {
        if let Ok(m) = std::fs::metadata(layer.join("x")) {
            assert_eq!(m.mode() & 0o6000, 0, "layer {}", layer.display());
        }
    }
    let m = std::fs::metadata(l.upper.join("x")).unwrap();
    assert_eq!(m.mode() & 0o6000, 0);
}

/// A command has no terminal to reach (no `/dev/tty`, its own session, `TIOCSTI` refused), no
/// descriptor its launcher leaked (a directory left open walks nowhere), and nothing on any
/// command line that names a host path or a secret.
#[tokio::test]
async fn no_terminal_no_leaked_descriptors_no_secrets_on_command_lines() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    // Leaked by "the launcher": the host's root, without close-on-exec.
    let root = std::fs::File::open("/").unwrap();
    let leaked = root.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::fcntl(leaked, libc::F_SETFD, 0), 0);
    }
    let py = format!(
        r#"
import os, fcntl, termios, errno
print("fds", len(os.listdir("/proc/self/fd")))
try:
    os.listdir("/proc/self/fd/{leaked}/"); print("walked")
except OSError as e:
    print("leak", errno.errorcode[e.errno])
print("tty", os.path.exists("/dev/tty"))
print("tty_nr", open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
print("session", os.getsid(0) == os.getppid())
for fd in (0, 1):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"x"); print("sti ok")
    except OSError as e:
        print("sti", errno.errorcode[e.errno])
print("cmdline1", open("/proc/1/cmdline").read().replace("\0", " "))
print("env", sorted(os.environ))
"#
    );
    std::fs::write(ws.join("t.py"), py).unwrap();
    let secret = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
    let run = s.exec(ExecRequest {
        workspace: ws.clone().into(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "python3 t.py; sleep 1".into(),
        ],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("TOKEN".into(), secret.clone()),
        ],
        stdin: Vec::new(),
        egress: None,
        output: None,
        control: None,
        limits: Limits::default(),
    });
    // While it runs, no host process's command line carries the secret or the spec.
    let watch = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut seen = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).to_string();
                if c.contains(&secret) || c.contains(&dir.path().display().to_string()) {
                    seen.push(c);
                }
            }
        }
        seen
    };
    let (r, seen) = tokio::join!(run, watch);
    let r = r.unwrap();
    drop(root);
    assert!(seen.is_empty(), "{seen:?}");
    let o = out(&r);
    // 0, 1, 2 and the listing's own.
    assert!(o.contains("fds 4"), "{o}");
    assert!(o.contains("cmdline1 steward-sandbox __sandbox-init"), "{o}");
    // The command's environment is what was asked for, nothing of the helper's own.
    assert!(o.contains("'TOKEN'") && !o.contains("MIMALLOC"), "{o}");
    assert!(o.contains("leak ENOENT"), "{o}");
    assert!(o.contains("tty False") && o.contains("tty_nr 0"), "{o}");
    assert!(o.contains("session True"), "{o}");
    assert_eq!(o.matches("sti EPERM").count(), 2, "{o}");
    assert!(!o.contains(&dir.path().display().to_string()), "{o}");
}

/// `/proc` shows its own processes but not the kernel's knobs: masked paths read as empty,
/// the rest is read-only; AF_VSOCK sockets and io_uring are refused unless a setting opts in.
#[tokio::test]
async fn proc_knobs_vsock_and_io_uring_are_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes(&dir.path().join("scratch"));
    let script = r#"
for f in kcore kpageflags kpagecount slabinfo timer_list vmallocinfo keys sched_debug kallsyms sysrq-trigger; do
  test -e /proc/$f || continue
  printf '%s=%s\n' $f "$(cat /proc/$f 2>/dev/null | wc -c)"
done
for f in /proc/sys/kernel/hostname /proc/sysrq-trigger /proc/irq/default_smp_affinity; do
  test -e $f && { echo 1 > $f 2>/dev/null && echo "wrote $f" || echo "refused $f"; }
done
grep -c ' /proc/\(sys\|irq\|bus\|fs\) ro,' /proc/self/mountinfo | sed 's/^/ro-mounts=/'
"#;
    let r = sh(&s, &ws, script, Limits::default()).await;
    let o = out(&r);
    assert!(
        o.contains("kpageflags=0") && o.contains("slabinfo=0"),
        "{o}"
    );
    for line in o
        .lines()
        .filter(|l| l.contains('=') && !l.starts_with("ro-"))
    {
        assert!(line.ends_with("=0"), "{line}: {o}");
    }
    assert!(!o.contains("wrote"), "{o}");
    assert!(o.contains("refused /proc/sys/kernel/hostname"), "{o}");
    let ro: u32 = o
        .lines()
        .find_map(|l| l.strip_prefix("ro-mounts="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ro >= 2, "{o}");

    let py = r#"
import ctypes, errno, socket
try:
    socket.socket(40, socket.SOCK_STREAM); print("vsock ok")
except OSError as e:
    print("vsock", errno.errorcode[e.errno])
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
r = libc.syscall(425, 4, params)
print("io_uring", "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
"#;
    std::fs::write(ws.join("p.py"), py).unwrap();
    let r = sh(&s, &ws, "python3 p.py", Limits::default()).await;
    let o = out(&r);
    assert!(o.contains("vsock EPERM"), "{o}");
    assert!(o.contains("io_uring EPERM"), "{o}");
    // Opted in, io_uring is the kernel's to allow (it may still refuse it for other reasons).
    let s = sandboxes_with(
        &dir.path().join("scratch2"),
        steward_sandbox::Options {
            allow_io_uring: true,
            ..Default::default()
        },
    );
    let r = sh(&s, &ws, "python3 p.py", Limits::default()).await;
    assert!(!out(&r).contains("io_uring EPERM"), "{}", out(&r));
}

/// Many empty files meet the workspace's file quota, and /tmp's; all sandboxes together meet
/// the server's caps: more commands than it runs at once wait, then are refused (`Busy`), and
/// processes of every sandbox together stop at the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_counts_and_totals_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let s = sandboxes_with(
        &dir.path().join("scratch"),
        steward_sandbox::Options {
            max_concurrent: 1,
            queue_wait: Duration::from_millis(300),
            total_pids: Some(40),
            ..Default::default()
        },
    );
    let r = sh(
        &s,
        &ws,
        "i=0; while [ $i -lt 20000 ]; do : > f$i; i=$((i+1)); done; echo finished",
        Limits {
            workspace_inodes: Some(500),
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.ended, Ended::DiskQuota, "{}", out(&r));
    assert!(std::fs::read_dir(&ws).unwrap().count() < 20000);
    std::fs::remove_dir_all(&ws).unwrap();
    std::fs::create_dir(&ws).unwrap();
    let r = sh(
        &s,
        &ws,
        "i=0; while [ $i -lt 300 ]; do touch /tmp/f$i 2>/dev/null || break; i=$((i+1)); done; echo made=$i",
        Limits {
            tmp_inodes: 100,
            ..Limits::default()
        },
    )
    .await;
    let made: u32 = String::from_utf8_lossy(&r.stdout)
        .trim()
        .strip_prefix("made=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(made < 100, "{}", out(&r));

    // Every slot taken: the next command waits, then is refused.
    let long = sh(&s, &ws, "sleep 2", Limits::default());
    let next = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.exec(ExecRequest {
            workspace: ws.clone().into(),
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Vec::new(),
            egress: None,
            output: None,
            control: None,
            limits: Limits::default(),
        })
        .await
    };
    let (_, refused) = tokio::join!(long, next);
    assert!(
        matches!(refused, Err(steward_sandbox::Error::Busy(_))),
        "{refused:?}"
    );
    // 100 processes asked for, each sandbox allowed 128: the total of 40 holds.
    std::fs::write(
        ws.join("many.py"),
        "import subprocess\nok = 0\nfor i in range(100):\n    try:\n        subprocess.Popen(['sleep', '3']); ok += 1\n    except OSError:\n        pass\nprint(ok)\n",
    )
    .unwrap();
    let r = sh(&s, &ws, "python3 many.py", Limits::default()).await;
    let started: u32 = String::from_utf8_lossy(&r.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(started > 0 && started < 40, "{}", out(&r));
}

/// `kill -9` of the server ends what its sandboxes run: nothing goes on writing to the
/// workspace, and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_takes_its_sandboxes_with_it() {
    let mut s = TestServer::start(Backend::Sqlite).await;
    let (st, c) = s.post("/api/v1/sandboxes", serde_json::json!({})).await;
    assert_eq!(st, 201, "{c}");
    let id = c["sandboxes"][0].as_str().unwrap().to_string();
    let marker = format!("m{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/api/v1/sandboxes/{id}/exec", s.url);
    let command = format!("{marker}=1; while true; do date +%s%N >> ticks; sleep 0.05; done");
    let http = s.http.clone();
    tokio::spawn(async move {
        let _ = http
            .post(url)
            .json(&serde_json::json!({"command": command}))
            .send()
            .await;
    });
    let running = |m: &str| {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(m))
            .count()
    };
    common::eventually("the command runs", || async {
        (running(&marker) > 0).then_some(())
    })
    .await;
    s.kill9();
    common::eventually("nothing of it is left running", || async {
        (running(&marker) == 0).then_some(())
    })
    .await;
}

/// The process that forked the helper running the command whose command line holds `marker`:
/// the ancestor whose parent is this test process.
fn zygote_of(marker: &str) -> Option<u32> {
    let ppid = |pid: u32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse()
            .ok()
    };
    let mut pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })?;
    for _ in 0..8 {
        let parent = ppid(pid)?;
        if parent == std::process::id() {
            return Some(pid);
        }
        pid = parent;
    }
    None
}

/// Each sandbox's helper is forked by one zygote the server started ahead, not executed anew:
/// commands started together each get their own input and output; one zygote forks them all;
/// a zygote that dies takes the command it was running with it (the exec ends, it does not
/// hang) and the next command starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_are_forked_by_a_zygote_started_again_when_it_dies() {
    let scratch = tempfile::tempdir().unwrap();
    let s = sandboxes(scratch.path());
    let ws = tempfile::tempdir().unwrap();
    let mut together = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (s, ws) = (s.clone(), ws.path().to_path_buf());
        together.spawn(async move {
            let r = s
                .exec(ExecRequest {
                    workspace: ws.as_path().into(),
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        format!("cat; echo out{i} >&2"),
                    ],
                    env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                    stdin: format!("in{i}\n").into_bytes(),
                    egress: None,
                    output: None,
                    control: None,
                    limits: Limits::default(),
                })
                .await
                .expect("the sandbox starts");
            (i, r)
        });
    }
    while let Some(done) = together.join_next().await {
        let (i, r) = done.unwrap();
        assert_eq!(r.ended, Ended::Exit(0), "{}", out(&r));
        assert_eq!(r.stdout, format!("in{i}\n").into_bytes(), "{}", out(&r));
        assert_eq!(r.stderr, format!("out{i}\n").into_bytes(), "{}", out(&r));
    }

    let sleep = |marker: String| {
        let (s, ws) = (s.clone(), ws.path().to_path_buf());
        tokio::spawn(async move {
            s.exec(ExecRequest {
                workspace: ws.as_path().into(),
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("{marker}=1; sleep 30"),
                ],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                stdin: Vec::new(),
                egress: None,
                output: None,
                control: None,
                limits: Limits::default(),
            })
            .await
        })
    };
    let zygote_running = |marker: String| async move {
        common::eventually("the command runs", || {
            let marker = marker.clone();
            async move { zygote_of(&marker) }
        })
        .await
    };
    let (m1, m2) = (
        format!("m{}", uuid::Uuid::new_v4().simple()),
        format!("m{}", uuid::Uuid::new_v4().simple()),
    );
    let first = sleep(m1.clone());
    let second = sleep(m2.clone());
    let zygote = zygote_running(m1).await;
    assert_eq!(
        zygote_running(m2).await,
        zygote,
        "one zygote forks every helper"
    );
    let cmdline = std::fs::read(format!("/proc/{zygote}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with("steward-sandbox\0__sandbox-init\0zygote"),
        "{cmdline:?}"
    );

    let killed = std::process::Command::new("kill")
        .args(["-9", &zygote.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for command in [first, second] {
        let r = tokio::time::timeout(Duration::from_secs(20), command)
            .await
            .expect("a command whose zygote died ends")
            .unwrap();
        if let Ok(r) = r {
            assert_ne!(r.ended, Ended::Exit(0), "{}", out(&r));
        }
    }

    let m3 = format!("m{}", uuid::Uuid::new_v4().simple());
    let third = sleep(m3.clone());
    let again = zygote_running(m3).await;
    assert_ne!(again, zygote, "a new zygote");
    third.abort();
    let r = sh(&s, ws.path(), "echo again", Limits::default()).await;
    assert_eq!(r.stdout, b"again\n", "{}", out(&r));
}
