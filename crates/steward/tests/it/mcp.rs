//! `/mcp` through the real binary, driven by the official MCP Python SDK: an agent sees in
//! `tools/list` only the tools the policy lets it call and only tools that need no run; calls
//! take the governance path (refused with the reason, arguments checked against the schema with
//! the path of the bad field) and are audited with the caller's chain; `tools_search` and
//! `tools_describe` work over what the caller may call. Without a valid key nothing is spoken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

/// A key for `agent`, registered under `owner`.
async fn key_of(s: &TestServer, agent: &str, owner: &str) -> String {
    let (st, e) = s
        .post(
            &format!("/api/v1/agents/{agent}/resume"),
            json!({"reason": "registered", "owner": owner}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, key) = s.post("/api/v1/keys", json!({"agent": agent})).await;
    assert_eq!(st, 201, "{key}");
    key["key"].as_str().unwrap().to_string()
}

async fn the_mcp_sdk_sees_and_calls_only_what_policy_permits(b: Backend) {
    let s = TestServer::start(b).await;
    let tooler = key_of(&s, "tooler", "team-a").await;
    let outsider = key_of(&s, "outsider", "team-b").await;
    let (st, e) = s
        .put_policies(
            r#"@id("tooler-echo") permit (principal == Steward::Agent::"tooler", action == Steward::Action::"tool.call", resource == Steward::Tool::"echo");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mcp_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", &tooler)
        .env("STEWARD_OTHER_KEY", &outsider)
        .output()
        .await
        .expect("python3 with the mcp package (installed by .ci/run)");
    assert!(
        out.status.success(),
        "the MCP SDK script failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );

    // Every call is on the record with who made it; refusals as decisions, before the answer.
    let records = common::audit_records(&s).await;
    let calls = |principal: &str, outcome: Option<&str>, decision: &str| {
        records
            .iter()
            .filter(|r| {
                r["action"] == "tool.call"
                    && r["principal"] == principal
                    && r["decision"] == decision
                    && r["outcome"].as_str() == outcome
            })
            .cloned()
            .collect::<Vec<Value>>()
    };
    let ok = calls("agent:tooler", Some("ok"), "allow");
    assert_eq!(ok.len(), 2, "one echo per protocol revision: {ok:?}");
    assert_eq!(ok[0]["resource"], "echo");
    assert_eq!(
        ok[0]["chain"],
        json!(["user:team-a", "agent:tooler"]),
        "{ok:?}"
    );
    let denied = calls("agent:tooler", None, "deny");
    assert!(
        denied.iter().any(|r| r["resource"] == "http_request"
            && r["error"].as_str().unwrap().contains("no policy permits")),
        "{denied:?}"
    );
    assert!(
        calls("agent:outsider", None, "deny")
            .iter()
            .any(|r| r["resource"] == "echo"),
        "{records:?}"
    );
    // The echo's arguments are not in the audit log: only who did what, and how it went.
    assert!(
        !ok.iter().any(|r| r.to_string().contains("Paris")),
        "{ok:?}"
    );
}
both_backends!(
    the_mcp_sdk_sees_and_calls_only_what_policy_permits,
    the_mcp_sdk_sees_and_calls_only_what_policy_permits
);

/// Without a valid credential the protocol is never spoken: 401 before any MCP message is read,
/// and a bad credential is audited.
async fn mcp_needs_an_agents_own_key(b: Backend) {
    let s = TestServer::start(b).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let post = |auth: Option<&str>| {
        let mut rb = s
            .http
            .post(format!("{}/mcp", s.url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .json(&list);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        rb
    };
    for auth in [
        None,
        Some("Bearer sk-steward-not-a-key"),
        Some("Bearer admin-token-like"),
        Some("Basic dXNlcjpwYXNz"),
    ] {
        let (st, body) = common::send(post(auth)).await;
        assert_eq!(st, 401, "{auth:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert!(
        common::audit_records(&s)
            .await
            .iter()
            .any(|r| r["event"] == "authentication" && r["decision"] == "deny"),
        "an unknown key is audited"
    );
    // A revoked key is refused too.
    let key = key_of(&s, "tooler", "team-a").await;
    let (st, _) = common::send(post(Some(&format!("Bearer {key}")))).await;
    assert_eq!(st, 200);
    let (_, keys) = s.get("/api/v1/keys").await;
    let id = keys["keys"][0]["id"].as_str().unwrap().to_string();
    let (st, e) = s
        .post(
            &format!("/api/v1/keys/{id}/revoke"),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, _) = common::send(post(Some(&format!("Bearer {key}")))).await;
    assert_eq!(st, 401);
}
both_backends!(mcp_needs_an_agents_own_key, mcp_needs_an_agents_own_key);

/// The registry over REST: every tool with its schema and annotations, and whether MCP clients
/// may be given it.
async fn the_registry_lists_tools_with_their_annotations(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, list) = s.get("/api/v1/tools").await;
    assert_eq!(st, 200, "{list}");
    let tools = list["tools"].as_array().unwrap();
    let echo = tools.iter().find(|t| t["name"] == "echo").unwrap();
    assert_eq!(echo["annotations"]["read_only"], true);
    assert_eq!(echo["outside_runs"], true);
    assert_eq!(echo["source"], "native");
    let exec = tools.iter().find(|t| t["name"] == "sandbox_exec").unwrap();
    assert_eq!(exec["annotations"]["destructive"], true);
    assert_eq!(exec["outside_runs"], false);
    assert_eq!(exec["input_schema"]["required"], json!(["command"]));
    let (st, one) = s.get("/api/v1/tools/http_request").await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["annotations"]["open_world"], true);
    let (st, e) = s.get("/api/v1/tools/no_such_tool").await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
}
both_backends!(
    the_registry_lists_tools_with_their_annotations,
    the_registry_lists_tools_with_their_annotations
);
