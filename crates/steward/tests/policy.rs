//! Cedar policy on every syscall, through the real binary on both backends: a malformed set is
//! refused with Cedar's diagnostics and the active one stays; a denied tool call is shown to the
//! model, a denied model call fails the run, a denied gateway call gets 403 `policy_denied`;
//! every decision is audited with the set's hash and the deciding policies; a set put in force
//! through one node is in force on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

const POLICIES: &str = r#"
@id("researchers-may-work")
permit (
  principal in Steward::Agent::"researcher",
  action in [Steward::Action::"llm.call", Steward::Action::"tool.call"],
  resource
);
@id("no-outbound-http")
forbid (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"http_request");
"#;

async fn put(s: &TestServer, text: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/policies", s.url))
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn policy_decides_every_syscall(b: Backend) {
    let upstream = common::ok_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let (_, before) = s.get("/api/v1/policies").await;
    assert_eq!(before["version"], 0, "the built-in default: {before}");

    // Refused, with Cedar's words, and nothing changes.
    let (st, e) = put(&s, "permit (principal, action, resource").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("do not parse"),
        "{e}"
    );
    let (st, e) = put(
        &s,
        r#"permit (principal == Steward::Wizard::"merlin", action, resource);"#,
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("Wizard"),
        "{e}"
    );
    // A set that would stop administrators from ever changing the policies again is refused,
    // and the attempt is on the record.
    let (st, e) = put(
        &s,
        r#"@id("freeze-everything") forbid (principal, action, resource);"#,
    )
    .await;
    assert_eq!(st, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("lock the administrators out") && msg.contains("freeze-everything"),
        "{e}"
    );
    let (_, still) = s.get("/api/v1/policies").await;
    assert_eq!(still["hash"], before["hash"]);
    let refused: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["event"] == "admin" && r["action"] == "policy.update")
        .collect();
    assert_eq!(
        refused.len(),
        3,
        "every refused upload is audited: {refused:?}"
    );
    assert!(refused.iter().all(|r| r["decision"] == "deny"));
    assert!(refused[2]["error"]
        .as_str()
        .unwrap()
        .contains("freeze-everything"));

    let (st, set) = put(&s, POLICIES).await;
    assert_eq!((st, set["version"].as_i64()), (200, Some(1)), "{set}");

    // A forbidden tool: the model hears why and carries on.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: researcher}\nspec:\n  model: scripted\n  tools: [echo, http_request]\n  script:\n    - toolCalls: [{name: http_request, arguments: {method: GET, url: \"http://127.0.0.1:9/x\"}}]\n    - toolCalls: [{name: echo, arguments: {x: 1}}]\n    - content: done\n").await;
    let run = s.start_run("researcher", "go").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let journal = s.journal(&run).await;
    let text = serde_json::to_string(&journal).unwrap();
    assert!(
        text.contains("denied by policy: forbidden by no-outbound-http"),
        "{text}"
    );

    // An agent nothing permits: its first model call is denied and the run fails.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: stranger}\nspec:\n  model: scripted\n  script: [{content: hi}]\n").await;
    let run2 = s.start_run("stranger", "go").await;
    let r = s.wait_run(&run2).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["code"].as_str()),
        (Some("failed"), Some("policy_denied")),
        "{r}"
    );

    // The gateway asks the same policy.
    let http = reqwest::Client::new();
    for (agent, want) in [("stranger", 403), ("researcher", 200)] {
        let (_, key) = s.post("/api/v1/keys", json!({ "agent": agent })).await;
        let resp = http
            .post(format!("{}/v1/chat/completions", s.url))
            .bearer_auth(key["key"].as_str().unwrap())
            .json(&json!({"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(st, want, "{agent}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "policy_denied");
        }
    }
    common::settled(&s).await;

    // Every decision is on the record with the set's hash and the policies that decided.
    let records = common::audit_records(&s).await;
    let denied_tool = records
        .iter()
        .find(|r| r["resource"] == "http_request")
        .expect("the tool's record");
    assert_eq!(denied_tool["decision"], "deny");
    assert_eq!(denied_tool["policy_ids"], json!(["no-outbound-http"]));
    assert_eq!(denied_tool["policy_hash"], set["hash"]);
    assert!(records.iter().any(|r| r["event"] == "decision"
        && r["principal"] == "agent:stranger"
        && r["decision"] == "deny"));
    assert!(records.iter().any(|r| r["event"] == "syscall"
        && r["principal"] == "agent:researcher"
        && r["decision"] == "allow"
        && r["policy_ids"] == json!(["researchers-may-work"])));
    let (_, v) = s.get("/api/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");

    if b == Backend::Postgres {
        let other = TestServer::join(&s);
        let (_, seen) = other.get("/api/v1/policies").await;
        assert_eq!(
            seen["hash"], set["hash"],
            "a joining node uses the set in force"
        );
        let (st, newer) = put(&other, DEFAULT_AGAIN).await;
        assert_eq!(st, 200);
        common::eventually("the first node follows", || {
            let s = &s;
            let want = newer["hash"].clone();
            async move {
                let (_, p) = s.get("/api/v1/policies").await;
                (p["hash"] == want).then_some(())
            }
        })
        .await;
    }
}
both_backends!(policy_decides_every_syscall, policy_decides_every_syscall);

const DEFAULT_AGAIN: &str = r#"
@id("everyone")
permit (principal, action, resource);
"#;

/// `spawn_agent` is a tool call and also `agent.spawn` on the agent it starts: a policy can let
/// a run start one agent and not another.
async fn spawning_is_decided_on_the_agent_spawned(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, e) = put(
        &s,
        r#"
@id("models-and-tools")
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);
@id("helpers-only")
permit (principal, action == Steward::Action::"agent.spawn", resource == Steward::Agent::"helper");
"#,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    for name in ["helper", "rogue"] {
        s.apply(&format!("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  script: [{{content: done}}]\n")).await;
    }
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: boss}\nspec:\n  model: scripted\n  tools: [spawn_agent]\n  script:\n    - toolCalls: [{name: spawn_agent, arguments: {agent: rogue, input: x}}]\n    - toolCalls: [{name: spawn_agent, arguments: {agent: helper, input: x}}]\n    - content: boss done\n").await;
    let run = s.start_run("boss", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let outcomes: Vec<Value> = s
        .journal(&run)
        .await
        .into_iter()
        .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0]["ok"], false, "{}", outcomes[0]);
    assert!(
        outcomes[0]["body"]
            .to_string()
            .contains("no policy permits it"),
        "{}",
        outcomes[0]
    );
    assert_eq!(outcomes[1]["ok"], true, "{}", outcomes[1]);
    let (_, runs) = s.get("/api/v1/runs?agent=rogue").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");
    let (_, runs) = s.get("/api/v1/runs?agent=helper").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
}
both_backends!(
    spawning_is_decided_on_the_agent_spawned,
    spawning_is_decided_on_the_agent_spawned
);
