//! The CLI verbs against a real server: apply, run (following steps live), get, logs, cancel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Command;

use common::cli as steward;

use common::{Backend, Counter, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_server() {
    let s = TestServer::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fleet.yaml");
    std::fs::copy(fleet, dir.path().join("fleet.yaml")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();

    let (ok, out, err) = steward(&s, &["apply", "-f", dir.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("agent/researcher configured (version 1)"),
        "{out}"
    );
    let (ok, out, _) = steward(
        &s,
        &[
            "apply",
            "-f",
            dir.path().join("fleet.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        ok && out.contains("agent/summarizer unchanged (version 1)"),
        "{out}"
    );

    let c = Counter::start().await;
    let input = format!("{}/effects/cli", c.url);
    let (ok, out, err) = steward(&s, &["run", "researcher", "--input", &input]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("[turn 1/6] model [scripted] asked for: scratchpad_set"),
        "{out}"
    );
    assert!(out.contains("tool spawn_agent"), "{out}");
    assert!(
        out.contains("✔ succeeded: finding recorded and summarised"),
        "{out}"
    );
    let run_id = out.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(c.total_for_run(&run_id), 1);

    let (ok, out, _) = steward(&s, &["logs", &run_id]);
    assert!(ok);
    assert!(
        out.contains(&format!("run {run_id} · agent researcher v1 · succeeded")),
        "{out}"
    );
    assert!(
        out.contains("#3") && out.contains("tool http_request"),
        "{out}"
    );
    assert!(out.contains("tokens:"), "{out}");

    let (ok, out, _) = steward(&s, &["get", "runs"]);
    assert!(
        ok && out.contains(&run_id) && out.contains("succeeded"),
        "{out}"
    );
    let (ok, out, _) = steward(&s, &["get", "agents"]);
    assert!(
        ok && out.contains("researcher") && out.contains("scratchpad_set,http_request,spawn_agent"),
        "{out}"
    );

    let (ok, out, err) = steward(&s, &["cost", "--by", "model"]);
    assert!(ok, "{err}");
    let scripted = out
        .lines()
        .find(|l| l.starts_with("scripted"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        scripted.contains("0.000000"),
        "the scripted model costs nothing: {scripted}"
    );
    assert!(out.lines().any(|l| l.starts_with("TOTAL")), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("per successful run: 0.000000 USD (2 of 2 runs)"),
        "{out}"
    );

    let (ok, _, err) = steward(&s, &["cancel", &run_id, "--reason", "too late"]);
    assert!(
        !ok && err.contains("already succeeded") && err.contains("conflict"),
        "{err}"
    );
    let (ok, _, err) = steward(&s, &["run", "nobody"]);
    assert!(!ok && err.contains("no agent named \"nobody\""), "{err}");
    let (ok, _, err) = steward(&s, &["logs", "run_nope"]);
    assert!(!ok && err.contains("invalid run id"), "{err}");
    let (ok, id, _) = steward(&s, &["run", "summarizer", "--input", "x", "--detach"]);
    assert!(ok && id.trim().starts_with("run_"), "{id}");
}

#[test]
fn an_unreachable_server_is_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["get", "runs", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach Steward at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn bad_configuration_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("steward.toml");
    std::fs::write(&cfg, "[engine]\nlease_ttl_ms = \"soon\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lease_ttl_ms") || err.contains("invalid type"),
        "{err}"
    );
}
