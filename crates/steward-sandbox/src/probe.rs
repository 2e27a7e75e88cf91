//! What isolation this host actually enforces, found by trying it: a sandbox is started with a
//! command that reports what it sees, and the cgroup controllers are read back. Nothing is
//! assumed.

use std::time::Duration;

use serde::Serialize;

use crate::{ExecRequest, Limits, Sandboxes};

/// Each isolation layer and whether it is in force here.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Layers {
    /// A sandbox started and ran a command: user, mount, pid, network, ipc and uts namespaces,
    /// `pivot_root`, capabilities dropped, `no_new_privs` and seccomp (the helper refuses to
    /// run the command if any of these fails).
    pub namespaces_and_seccomp: bool,
    /// The command saw itself among the first processes (its own pid namespace).
    pub pid_namespace: bool,
    /// The command saw no network interface but loopback.
    pub network_namespace: bool,
    /// `v1` or `v2`, when a writable cgroup tree was found.
    pub cgroup: Option<String>,
    pub memory_limit: bool,
    pub pids_limit: bool,
    pub cpu_limit: bool,
    /// Running execs can be paused (the cgroup freezer).
    pub pause: bool,
    /// Root inside, as the host sees it (`/proc/self/uid_map` inside: `0 <host uid> 1`).
    pub root_maps_to: Option<u32>,
    /// Root inside is an unprivileged host uid: neither root nor the server's own.
    pub root_unprivileged: bool,
    /// Every capability dropped (effective and bounding sets empty), `no_new_privs` and a
    /// seccomp filter in force, as the command sees itself.
    pub capabilities_dropped: bool,
    /// The command has no controlling terminal and no `/dev/tty`.
    pub no_terminal: bool,
    /// `/proc/kcore` and the rest of the masked paths read as empty, and `/proc/sys` is
    /// read-only.
    pub proc_masked: bool,
    /// Why the trial sandbox failed, if it did.
    pub error: Option<String>,
}

impl Layers {
    /// The layers missing for untrusted code (all are required).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.namespaces_and_seccomp {
            m.push("namespaces, pivot_root, capabilities, no_new_privs, seccomp");
        }
        if !self.capabilities_dropped {
            m.push("capabilities, no_new_privs, seccomp (as the command sees itself)");
        }
        if !self.no_terminal {
            m.push("no controlling terminal");
        }
        if !self.proc_masked {
            m.push("masked /proc");
        }
        if nix::unistd::geteuid().is_root() && !self.root_unprivileged {
            m.push("root inside mapped to an unprivileged host uid");
        }
        if !self.pid_namespace {
            m.push("pid namespace");
        }
        if !self.network_namespace {
            m.push("network namespace");
        }
        if !self.memory_limit {
            m.push("memory cgroup");
        }
        if !self.pids_limit {
            m.push("pids cgroup");
        }
        m
    }
}

/// What the trial command reports, a `key=value` line each.
const PROBE: &str = r#"echo pid=$$
echo ifaces=$(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\n' ',')
echo uid_map=$(cat /proc/self/uid_map)
echo caps=$(grep -E '^(CapEff|CapBnd):' /proc/self/status | cut -f2 | tr '\n' ',' | sed 's/,$//')
echo nnp=$(grep '^NoNewPrivs:' /proc/self/status | cut -f2)
echo seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2)
echo tty=$(cut -d' ' -f7 /proc/self/stat)
echo dev_tty=$(test -e /dev/tty && echo yes || echo no)
echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c)
echo proc_sys=$(grep ' /proc/sys ' /proc/self/mountinfo | cut -d' ' -f6)
"#;

/// Tries the isolation on this host with `sandboxes`, in a scratch workspace `workspace`.
pub async fn probe(sandboxes: &Sandboxes, workspace: &std::path::Path) -> Layers {
    let mut layers = Layers::default();
    if let Some(c) = sandboxes.cgroups() {
        let controllers = c.controllers();
        let has = |n: &str| controllers.iter().any(|c| c == n);
        layers.cgroup = Some(match c.version {
            crate::cgroup::Version::V1 => "v1".into(),
            crate::cgroup::Version::V2 => "v2".into(),
        });
        layers.memory_limit = has("memory");
        layers.pids_limit = has("pids");
        layers.cpu_limit = has("cpu");
        layers.pause = c.version == crate::cgroup::Version::V2 || has("freezer");
    }
    let req = ExecRequest {
        workspace: workspace.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), PROBE.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: Vec::new(),
        egress: None,
        output: None,
        control: None,
        limits: Limits {
            wall: Duration::from_secs(10),
            ..Limits::default()
        },
    };
    match sandboxes.exec(req).await {
        Ok(r) if r.ended == crate::Ended::Exit(0) => {
            let out = String::from_utf8_lossy(&r.stdout);
            let field = |k: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            layers.namespaces_and_seccomp = true;
            // The namespace's init is process 1 and the command the next.
            layers.pid_namespace = field("pid").parse::<u32>().is_ok_and(|p| p <= 3);
            let interfaces: Vec<String> = field("ifaces")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            layers.network_namespace = interfaces == ["lo"];
            let map: Vec<u32> = field("uid_map")
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            layers.root_maps_to = (map.len() == 3 && map[0] == 0).then(|| map[1]);
            let own = nix::unistd::geteuid().as_raw();
            layers.root_unprivileged = layers.root_maps_to.is_some_and(|u| u != 0 && u != own);
            layers.capabilities_dropped = field("caps") == "0000000000000000,0000000000000000"
                && field("nnp") == "1"
                && field("seccomp") == "2";
            layers.no_terminal = field("tty") == "0" && field("dev_tty") == "no";
            layers.proc_masked = field("kcore") == "0" && field("proc_sys").starts_with("ro");
        }
        Ok(r) => {
            layers.error = Some(format!(
                "the trial command ended {:?}: {}",
                r.ended,
                String::from_utf8_lossy(&r.stderr)
            ))
        }
        Err(e) => layers.error = Some(e.to_string()),
    }
    layers
}
