//! The real binary with its data directory on a small filesystem that fills up (a tmpfs
//! mounted for the test; the tests run as root). New work the store cannot write is answered
//! `503` with the reason, never acknowledged, and `/readyz` fails; once space returns the
//! server is ready and takes work again with no restart, and after a restart every
//! acknowledged run is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Command;

use common::{Backend, TestServer};
use serde_json::json;

/// A tmpfs of `mib` MiB mounted on a fresh directory.
fn small_disk(mib: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir.path())
        .output()
        .expect("mount(8)");
    assert!(
        out.status.success(),
        "this test mounts a small tmpfs and needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_and_acknowledged_runs_survive_it() {
    let dir = small_disk(16);
    let _unmount = Unmount(dir.path().to_path_buf());
    let mount = dir.path().to_path_buf();
    let mut s = TestServer::start_in(Backend::Sqlite, dir, &[]);
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: waiter}\nspec:\n  model: scripted\n  script:\n    - {delayMs: 600000, content: x}\n")
        .await;
    let ballast = mount.join("ballast");
    let room = free_bytes(&mount).saturating_sub(256 * 1024);
    std::fs::write(&ballast, vec![0u8; room as usize]).unwrap();
    let big = "x".repeat(32 * 1024);
    let mut acknowledged = Vec::new();
    let mut unavailable = None;
    for _ in 0..100 {
        let (st, r) = s
            .post("/api/v1/runs", json!({"agent": "waiter", "input": big}))
            .await;
        match st {
            201 => acknowledged.push(r["id"].as_str().unwrap().to_string()),
            503 => {
                unavailable = Some(r);
                break;
            }
            other => panic!("neither acknowledged nor 503: {other} {r}"),
        }
    }
    let e = unavailable.expect("the disk never filled");
    assert_eq!(e["error"]["code"], "unavailable", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("disk"),
        "{e}"
    );
    // Readiness never says ready while the store cannot take writes, and reads still work.
    // What room the refused run left may still fit a small write, so the last of it is taken
    // too (readiness asks for a small write). Even then SQLite may fit one in pages its WAL
    // already holds: readiness that stays ready must then be true — a small run is taken
    // (and must survive the restart below like any acknowledged one).
    let last = mount.join("ballast-last");
    std::fs::write(&last, vec![0u8; free_bytes(&mount) as usize]).unwrap();
    let (st, r) = s.get("/readyz").await;
    if st == 200 {
        let (st, r) = s
            .post("/api/v1/runs", json!({"agent": "waiter", "input": "s"}))
            .await;
        match st {
            201 => acknowledged.push(r["id"].as_str().unwrap().to_string()),
            503 => assert_eq!(r["error"]["code"], "unavailable", "{r}"),
            other => panic!("neither acknowledged nor 503: {other} {r}"),
        }
    } else {
        assert_eq!(st, 503, "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot take writes"),
            "{r}"
        );
    }
    assert_eq!(s.get("/api/v1/runs?limit=1").await.0, 200);
    // Space returns: ready again and work is taken again, with no restart.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&last).unwrap();
    common::eventually("ready again", || async {
        (s.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    common::eventually("the server takes runs again", || async {
        let (st, r) = s
            .post("/api/v1/runs", json!({"agent": "waiter", "input": "after"}))
            .await;
        (st == 201).then(|| r["id"].as_str().unwrap().to_string())
    })
    .await;
    for _ in 0..5 {
        let (st, r) = s
            .post("/api/v1/runs", json!({"agent": "waiter", "input": "after"}))
            .await;
        assert_eq!(st, 201, "{r}");
        acknowledged.push(r["id"].as_str().unwrap().to_string());
    }
    s.kill9();
    s.spawn();
    for id in &acknowledged {
        let (st, r) = s.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(st, 200, "acknowledged run {id} is gone: {r}");
    }
}

/// A run in the middle of its steps when the disk fills pauses — it does not fail — and carries
/// on from its journal once space returns, with no restart and no completed step done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_pauses_on_a_full_disk_and_carries_on() {
    let dir = small_disk(16);
    let _unmount = Unmount(dir.path().to_path_buf());
    let mount = dir.path().to_path_buf();
    let s = TestServer::start_in(Backend::Sqlite, dir, &[]);
    let steps: String = (0..12)
        .map(|i| format!("    - {{delayMs: 150, toolCalls: [{{name: echo, arguments: {{text: step-{i}}}}}]}}\n"))
        .collect();
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: stepper}}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n{steps}    - content: done\n"
    ))
    .await;
    let run = s.start_run("stepper", "go").await;
    common::eventually("the run is under way", || async {
        let outcomes = s.outcomes(&run).await;
        (outcomes >= 2).then_some(())
    })
    .await;
    let ballast = mount.join("ballast");
    let room = free_bytes(&mount).saturating_sub(16 * 1024);
    std::fs::write(&ballast, vec![0u8; room as usize]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let (_, r) = s.get(&format!("/api/v1/runs/{run}")).await;
    assert_ne!(
        r["state"], "failed",
        "a full disk must not fail the run: {r}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let journal = s.journal(&run).await;
    let mut outcomes: Vec<i64> = journal
        .iter()
        .filter(|e| e["phase"] == "outcome")
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let all = outcomes.len();
    outcomes.dedup();
    assert_eq!(all, outcomes.len(), "a completed step was done twice");
    assert_eq!(
        all, 25,
        "twelve model turns, twelve tool calls and the answer"
    );
    // It did stop while the disk was full (its lease ran out and it was taken up again).
    let at: Vec<i64> = journal.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    let longest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest >= 1_000,
        "the run never paused: {longest} ms at most between entries"
    );
}
