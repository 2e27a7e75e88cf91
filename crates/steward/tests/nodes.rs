//! Two nodes on one PostgreSQL database: kill one mid-run, and the other takes its runs over
//! once their leases expire, finishing them with no completed step done twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backend, Counter, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_node_takes_over_a_dead_nodes_runs() {
    let c = Counter::start().await;
    let mut a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::join(&a);
    let script = "    - {delayMs: 300, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 300, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 300, content: done}\n";
    a.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: worker}}\nspec:\n  model: scripted\n  tools: [http_request]\n  recovery: fail\n  script:\n{script}"
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(a.start_run("worker", &format!("{}/w/{i}", c.url)).await);
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, runs) = a.get("/api/v1/runs?limit=100").await;
    let a_node = std::fs::read_to_string(a.dir.path().join("node-id")).unwrap();
    let held_by_a = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["lease_owner"] == a_node.as_str())
        .count();
    assert!(held_by_a > 0, "node a should be driving some runs: {runs}");
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    a.kill9();

    for id in &ids {
        let r = b.wait_run(id).await;
        assert_eq!(r["state"], "succeeded", "{r}\n{}", b.log());
        let j = b.journal(id).await;
        for seq in [1, 3] {
            let outcome_at = j
                .iter()
                .find(|e| e["seq"] == seq && e["phase"] == "outcome")
                .unwrap()["at"]
                .as_i64()
                .unwrap();
            let intent_at = j
                .iter()
                .find(|e| e["seq"] == seq && e["phase"] == "intent")
                .unwrap()["at"]
                .as_i64()
                .unwrap();
            let n = c.count(&format!("{id}:{seq}"));
            // A PUT interrupted by the kill is retried by node b under the same key; any other ran once.
            if intent_at <= killed_at && killed_at < outcome_at {
                assert!((1..=2).contains(&n), "{id}:{seq} ran {n} times");
            } else {
                assert_eq!(n, 1, "{id}:{seq} ran {n} times");
            }
        }
    }
    let (_, runs) = b.get("/api/v1/runs?limit=100").await;
    let b_node = std::fs::read_to_string(b.dir.path().join("node-id")).unwrap();
    assert!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lease_owner"].is_null()),
        "ended runs hold no lease"
    );
    assert_ne!(a_node, b_node);
}
