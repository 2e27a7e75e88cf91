//! Per-minute limits on tool calls — per tool, per agent, per run — counted in the store, so
//! two nodes share them; refusals say which limit and when to retry, and the tool is not asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common;
use crate::mcp::{mcp_call, text_of};

use common::{key_of, Backend, TestServer};
use serde_json::json;

/// Waits until the current one-minute window has at least 20 s left, so a test's calls are
/// counted in one window.
async fn early_in_a_window() {
    loop {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 60_000;
        if ms < 40_000 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(60_000 - ms as u64 + 50)).await;
    }
}

async fn tool_calls_are_limited_per_agent_tool_and_run_across_nodes(b: Backend) {
    let limits = [
        ("STEWARD_TOOLS__LIMITS__AGENT", "3"),
        ("STEWARD_TOOLS__LIMITS__RUN", "2"),
    ];
    let a = TestServer::start_with(b, &limits).await;
    let (st, e) = a
        .put_policies(
            r#"@id("echo") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"echo");
@id("runs-think") permit (principal is Steward::Run, action == Steward::Action::"llm.call", resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let tooler = key_of(&a, "tooler", "team-a").await;
    let other = key_of(&a, "other", "team-a").await;
    // A second node shares the counts (PostgreSQL is the cluster engine; on SQLite, one node).
    let joined = (b == Backend::Postgres).then(|| TestServer::join(&a));
    let other_node = joined.as_ref().unwrap_or(&a);
    early_in_a_window().await;

    // Three calls by one agent, on either node; the fourth is refused, on either node.
    for (node, n) in [(&a, 1), (other_node, 2), (&a, 3)] {
        let r = mcp_call(node, &tooler, "echo", json!({"n": n})).await;
        assert_eq!(r["result"]["isError"], false, "call {n}: {r}");
    }
    for node in [&a, other_node] {
        let r = mcp_call(node, &tooler, "echo", json!({"n": 4})).await;
        assert_eq!(r["result"]["isError"], true, "{r}");
        let says = text_of(&r);
        assert!(
            says.contains("rate limit reached for tool-agent:tooler") && says.contains("retry in"),
            "{says}"
        );
    }
    // Another agent has its own count.
    let r = mcp_call(&a, &other, "echo", json!({"n": 1})).await;
    assert_eq!(r["result"]["isError"], false, "{r}");

    // A run may make two calls a minute: its third is refused and the model is told why.
    a.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: chatty}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {n: 1}}, {name: echo, arguments: {n: 2}}, {name: echo, arguments: {n: 3}}]\n    - content: done\n",
    )
    .await;
    let run = a.start_run("chatty", "x").await;
    let ended = a.wait_run(&run).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let journal = a.journal(&run).await;
    let refused: Vec<_> = journal
        .iter()
        .filter(|e| e["kind"] == "tool" && e["phase"] == "outcome")
        .filter(|e| {
            e["body"]["error"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("rate limit reached for tool-run:{run}")))
        })
        .collect();
    assert_eq!(refused.len(), 1, "the third call only: {journal:?}");
    assert_eq!(refused[0]["seq"], 3, "{journal:?}");

    // The refusals are on the record with who was refused.
    let records = common::audit_records(&a).await;
    assert!(
        records.iter().any(|r| r["action"] == "tool.call"
            && r["principal"] == "agent:tooler"
            && r["outcome"] == "error"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("rate limit reached"))),
        "{records:?}"
    );
}
both_backends!(
    tool_calls_are_limited_per_agent_tool_and_run_across_nodes,
    tool_calls_are_limited_per_agent_tool_and_run_across_nodes
);

/// Bad limits stop the server at start with what is wrong.
#[test]
fn a_bad_tool_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("STEWARD_TOOLS__LIMITS__RUN", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tools.limits") && err.contains("at least 1"),
        "{err}"
    );
}
