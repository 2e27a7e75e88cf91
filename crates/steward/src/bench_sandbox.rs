//! `bench/run sandbox`: cold start to the exit of `true` in a fresh sandbox (every layer:
//! namespaces, pivot_root, capabilities, seccomp, cgroups), side by side with bubblewrap
//! running the same command with comparable namespaces and mounts, in the same run; sandboxes
//! created per second with several at once; and, on a persistent sandbox holding 100 MB, an
//! exec, a snapshot and a fork.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use steward_sandbox::{layers, Ended, ExecRequest, Limits, Sandboxes, Workspace};

const STARTS: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i] * 1000.0).round() / 1000.0
}

fn true_in(ws: &Path) -> ExecRequest {
    ExecRequest {
        workspace: ws.into(),
        argv: vec!["/bin/true".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: Vec::new(),
        egress: None,
        output: None,
        control: None,
        limits: Limits::default(),
    }
}

/// bubblewrap with new user, pid, net, ipc, uts, mount and cgroup namespaces, the host's system
/// directories read-only, a private /proc, /dev and /tmp, the workspace bound, no capabilities.
fn bwrap_args(ws: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .map(String::from)
        .to_vec();
    for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib64"] {
        match std::fs::read_link(dir) {
            Ok(target) => a.extend(["--symlink".into(), target.display().to_string(), dir.into()]),
            Err(_) if Path::new(dir).is_dir() => {
                a.extend(["--ro-bind".into(), dir.into(), dir.into()])
            }
            Err(_) => {}
        }
    }
    a.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
        ]
        .map(String::from),
    );
    a.extend([
        "--bind".into(),
        ws.display().to_string(),
        "/workspace".into(),
        "--chdir".into(),
        "/workspace".into(),
        "/bin/true".into(),
    ]);
    a
}

pub async fn run() -> anyhow::Result<()> {
    let base = std::env::temp_dir().join(format!("steward-bench-sandbox-{}", std::process::id()));
    let ws = base.join("ws");
    std::fs::create_dir_all(&ws)?;
    let result = measure(&base, &ws).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn measure(base: &Path, ws: &Path) -> anyhow::Result<()> {
    let helper: PathBuf = std::env::current_exe().context("finding the steward binary")?;
    let sandboxes = Sandboxes::new(helper, base.join("scratch"), false)?;
    let layers = steward_sandbox::probe(&sandboxes, ws).await;
    eprintln!("layers in force: {}", serde_json::to_string(&layers)?);
    if !layers.missing().is_empty() {
        bail!("missing isolation layers: {:?}", layers.missing());
    }

    let mut ours = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let r = sandboxes.exec(true_in(ws)).await?;
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.ended != Ended::Exit(0) {
            bail!(
                "`true` ended {:?}: {}",
                r.ended,
                String::from_utf8_lossy(&r.stderr)
            );
        }
    }
    ours.sort_by(f64::total_cmp);

    let args = bwrap_args(ws);
    let mut theirs = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let st = tokio::process::Command::new("bwrap")
            .args(&args)
            .status()
            .await
            .context("running bwrap (apt-get install bubblewrap)")?;
        theirs.push(t.elapsed().as_secs_f64() * 1000.0);
        if !st.success() {
            bail!("bwrap failed: {st}");
        }
    }
    theirs.sort_by(f64::total_cmp);

    // Creates per second: four at a time for three seconds.
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = sandboxes.clone();
        let ws = ws.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < window {
                if s.exec(true_in(&ws))
                    .await
                    .is_ok_and(|r| r.ended == Ended::Exit(0))
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await?;
    }
    let creates_per_s = (created as f64 / started.elapsed().as_secs_f64()).round();

    // A persistent sandbox with 100 MB of random data in its workspace.
    let store = layers::Store::open(base.join("persistent"))?;
    store.create("big", None)?;
    let run_in = |id: &str, cmd: &str| -> anyhow::Result<ExecRequest> {
        Ok(ExecRequest {
            workspace: Workspace::Layered(store.layered(id)?),
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Vec::new(),
            egress: None,
            output: None,
            control: None,
            limits: Limits {
                wall: Duration::from_secs(120),
                ..Limits::default()
            },
        })
    };
    let r = sandboxes
        .exec(run_in("big", "head -c 104857600 /dev/urandom > blob")?)
        .await?;
    if r.ended != Ended::Exit(0) {
        bail!(
            "filling the workspace: {:?} {}",
            r.ended,
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let mut warm = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        sandboxes.exec(run_in("big", "true")?).await?;
        warm.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    warm.sort_by(f64::total_cmp);
    let t = Instant::now();
    let snap = store.snapshot("big")?;
    let snapshot_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    store.create("fork", Some(&snap))?;
    let fork_create_ms = t.elapsed().as_secs_f64() * 1000.0;
    let r = sandboxes.exec(run_in("fork", "test -s blob")?).await?;
    let fork_ms = t.elapsed().as_secs_f64() * 1000.0;
    if r.ended != Ended::Exit(0) {
        bail!("the fork does not see the data: {:?}", r.ended);
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;

    let (p50, p95) = (percentile(&ours, 0.5), percentile(&ours, 0.95));
    let (b50, b95) = (percentile(&theirs, 0.5), percentile(&theirs, 0.95));
    eprintln!("steward: cold start p50 {p50} ms, p95 {p95} ms; bwrap: p50 {b50} ms, p95 {b95} ms; {creates_per_s} creates/s (4 at a time)");
    eprintln!(
        "100 MB workspace: exec p50 {} ms, snapshot {} ms (hashing included), fork {} ms to a first exec ({} ms to create)",
        percentile(&warm, 0.5),
        round(snapshot_ms),
        round(fork_ms),
        round(fork_create_ms)
    );
    println!(
        "{}",
        json!({
            "bench": "sandbox",
            "cold_start_p50_ms": p50,
            "cold_start_p95_ms": p95,
            "bwrap_p50_ms": b50,
            "bwrap_p95_ms": b95,
            "creates_per_s": creates_per_s,
            "warm_exec_p50_ms": percentile(&warm, 0.5),
            "snapshot_100mb_ms": round(snapshot_ms),
            "fork_100mb_ms": round(fork_ms),
            "fork_create_100mb_ms": round(fork_create_ms),
        })
    );
    Ok(())
}
