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
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo pid=$$; ls /sys/class/net 2>/dev/null | tr '\\n' ' '; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\\n' ','".into(),
        ],
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
            layers.namespaces_and_seccomp = true;
            // The namespace's init is process 1 and the command the next.
            layers.pid_namespace = out
                .lines()
                .find_map(|l| l.strip_prefix("pid="))
                .and_then(|p| p.trim().parse::<u32>().ok())
                .is_some_and(|p| p <= 3);
            let interfaces: Vec<&str> = out
                .lines()
                .last()
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .collect();
            layers.network_namespace = interfaces == ["lo"];
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
