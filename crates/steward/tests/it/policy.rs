//! Cedar policy on every syscall, through the real binary on both backends: a malformed set is
//! refused with Cedar's diagnostics and the active one stays; a denied tool call is shown to the
//! model, a denied model call fails the run, a denied gateway call gets 403 `policy_denied`;
//! every decision is audited with the set's hash and the deciding policies; a set put in force
//! through one node is in force on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

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
    common::send(
        reqwest::Client::new()
            .put(format!("{}/api/v1/policies", s.url))
            .body(text.to_string()),
    )
    .await
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn gateway_server(b: Backend, extra: &[(&str, &str)]) -> TestServer {
    let upstream = common::ok_upstream().await;
    let mut env = vec![
        ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
        ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", upstream.as_str()),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(b, &env).await
}

async fn chat(s: &TestServer, key: &str, model: &str) -> (u16, Value) {
    s.post_as(
        key,
        "/v1/chat/completions",
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

async fn key_for(s: &TestServer, agent: &str) -> String {
    let (st, k) = s.post("/api/v1/keys", json!({"agent": agent})).await;
    assert_eq!(st, 201, "{k}");
    k["key"].as_str().unwrap().to_string()
}

/// A stored set is the set in force after a restart, exactly as stored — a time window that
/// began while the server ran still forbids after it restarts — and never the permissive
/// default in its place.
async fn a_stored_set_is_in_force_after_a_restart(b: Backend) {
    let mut s = gateway_server(b, &[]).await;
    let key = key_for(&s, "worker").await;
    let from = now_ms() + 1_500;
    let text = format!(
        "@id(\"models\") permit (principal, action == Steward::Action::\"llm.call\", resource);\n\
         @id(\"maintenance-window\") forbid (principal is Steward::Agent, action, resource) when {{ context.time_ms > {from} }};\n"
    );
    let (st, e) = put(&s, &text).await;
    assert_eq!(st, 200, "{e}");
    let (_, before) = s.get("/api/v1/policies").await;
    assert_eq!(chat(&s, &key, "mock/m").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(
        (from - now_ms()).max(0) as u64 + 100,
    ))
    .await;
    let (st, e) = chat(&s, &key, "mock/m").await;
    assert_eq!(st, 403, "{e}");
    for _ in 0..2 {
        s.kill9();
        s.spawn();
        let (st, e) = chat(&s, &key, "mock/m").await;
        assert_eq!(st, 403, "the window still forbids after a restart: {e}");
        assert!(e.to_string().contains("maintenance-window"), "{e}");
        let (_, after) = s.get("/api/v1/policies").await;
        assert_eq!(after["version"], before["version"], "{after}");
        assert_eq!(after["hash"], before["hash"], "{after}");
        assert_ne!(after["version"], 0);
    }
}
both_backends!(
    a_stored_set_is_in_force_after_a_restart,
    a_stored_set_is_in_force_after_a_restart
);

/// A set stored by an earlier build that this one cannot load stops the server at start, with
/// the reason — it never starts on the default instead. One an earlier guard let through (an
/// administrators' time bomb) is loaded as it is.
async fn a_stored_set_that_does_not_load_stops_the_start(b: Backend) {
    let mut s = gateway_server(b, &[]).await;
    let (st, e) = put(
        &s,
        "@id(\"models\") permit (principal, action, resource is Steward::Model);",
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.kill9();
    let sha = |text: &str| {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let db_url = s.db_url.clone();
    let store = |version: i64, text: &'static str| {
        let url = db_url.clone();
        let hash = sha(text);
        async move {
            let q =
                "INSERT INTO policy_sets (version, hash, text, created_at) VALUES ($1, $2, $3, $4)";
            match b {
                Backend::Sqlite => {
                    let p = sqlx::SqlitePool::connect(&url).await.unwrap();
                    sqlx::query(q)
                        .bind(version)
                        .bind(&hash)
                        .bind(text)
                        .bind(0i64)
                        .execute(&p)
                        .await
                        .unwrap();
                    p.close().await;
                }
                Backend::Postgres => {
                    let p = sqlx::PgPool::connect(&url).await.unwrap();
                    sqlx::query(q)
                        .bind(version)
                        .bind(&hash)
                        .bind(text)
                        .bind(0i64)
                        .execute(&p)
                        .await
                        .unwrap();
                    p.close().await;
                }
            }
        }
    };
    // A time bomb an older guard accepted: loaded as stored, not swapped for the default.
    store(
        2,
        "@id(\"agents-off\") forbid (principal is Steward::Agent, action, resource);\n@id(\"bomb\") forbid (principal, action, resource) when { context.time_ms > 0 };",
    )
    .await;
    s.spawn();
    let key = key_for(&s, "worker").await;
    let (st, e) = chat(&s, &key, "mock/m").await;
    assert_eq!(st, 403, "{e}");
    let (_, p) = s.get("/api/v1/policies").await;
    assert_eq!(p["version"], 2, "{p}");
    s.kill9();
    // A set that does not parse: the server refuses to start, and says why.
    store(3, "permit (principal, action, resource").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &s.db_url,
            "--data-dir",
        ])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("version 3") && said.contains("does not load"),
        "{said}"
    );
}
both_backends!(
    a_stored_set_that_does_not_load_stops_the_start,
    a_stored_set_that_does_not_load_stops_the_start
);

/// The lockout guard reasons over the policy, not over the moment of upload: a forbid that
/// could catch administrators at any later time is refused; hostile nesting is a 400, and the
/// server goes on answering.
async fn no_upload_can_lock_out_administrators_or_crash_the_server(b: Backend) {
    let s = gateway_server(b, &[]).await;
    let soon = now_ms() + 4_000;
    for text in [
        format!("@id(\"bomb\") forbid (principal, action, resource) when {{ context.time_ms > {soon} }};"),
        format!("@id(\"bomb\") forbid (principal is Steward::Admin, action, resource) unless {{ context.time_ms < {soon} }};"),
        format!("@id(\"bomb\") forbid (principal, action == Steward::Action::\"policy.update\", resource) when {{ context.time_ms - {soon} > 0 }};"),
    ] {
        let (st, e) = put(&s, &text).await;
        assert_eq!(st, 400, "{text}: {e}");
        assert!(e.to_string().contains("bomb"), "{e}");
    }
    let nested = [
        format!(
            "permit (principal, action, resource) when {{ {}true{} }};",
            "(".repeat(150),
            ")".repeat(150)
        ),
        format!(
            "permit (principal, action, resource) when {{ {}true{} }};",
            "[".repeat(200),
            "]".repeat(200)
        ),
        format!(
            "permit (principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(300),
            " else false".repeat(300)
        ),
        format!(
            "permit (principal, action, resource) when {{ {}true }};",
            "!".repeat(20_000)
        ),
        format!(
            "permit (principal, action, resource) when {{ {} }};",
            vec!["true"; 50_000].join(" || ")
        ),
    ];
    for text in nested {
        let (st, e) = put(&s, &text).await;
        assert_eq!(st, 400, "{e}");
    }
    // Still up, still deciding, and still the administrators' to change.
    let (st, p) = s.get("/api/v1/policies").await;
    assert_eq!((st, &p["version"]), (200, &json!(0)), "{p}");
    let later = now_ms() + 3_000;
    let (st, e) = put(
        &s,
        &format!("permit (principal, action, resource is Steward::Model);\nforbid (principal is Steward::Agent, action, resource) when {{ context.time_ms > {later} }};"),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = put(
        &s,
        "permit (principal, action, resource is Steward::Model);",
    )
    .await;
    assert_eq!(st, 200, "{e}");
}
both_backends!(
    no_upload_can_lock_out_administrators_or_crash_the_server,
    no_upload_can_lock_out_administrators_or_crash_the_server
);

/// What is decided is what is called: a forbid on a deployment holds whatever alias routes to
/// it; an alias with a permitted deployment beside it uses only that one.
async fn a_forbidden_deployment_is_not_reached_through_an_alias(b: Backend) {
    let s = gateway_server(
        b,
        &[
            ("STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS", "[\"mock/big\"]"),
            (
                "STEWARD_LLM__ROUTES__MIXED__DEPLOYMENTS",
                "[\"mock/big\", \"mock/small\"]",
            ),
        ],
    )
    .await;
    let key = key_for(&s, "worker").await;
    let (st, e) = put(
        &s,
        "@id(\"models\") permit (principal, action == Steward::Action::\"llm.call\", resource);\n\
         @id(\"no-big\") forbid (principal, action, resource == Steward::Model::\"mock/big\");",
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = chat(&s, &key, "mock/big").await;
    assert_eq!(st, 403, "{e}");
    let (st, e) = chat(&s, &key, "smart").await;
    assert_eq!(st, 403, "{e}");
    assert!(
        e.to_string().contains("mock/big") && e.to_string().contains("no-big"),
        "{e}"
    );
    let (st, r) = chat(&s, &key, "mixed").await;
    assert_eq!(st, 200, "{r}");
    // Counting tokens reaches an upstream too: decided as a call of the model is.
    for (model, status) in [("smart", 403), ("mock/big", 403), ("mixed", 200)] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/messages/count_tokens", s.url))
            .header("x-api-key", &key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{model}");
        let body: Value = r.json().await.unwrap();
        if status == 403 {
            assert_eq!(body["error"]["type"], "permission_error", "{body}");
        } else {
            assert!(body["input_tokens"].as_i64().unwrap() > 0, "{body}");
        }
    }
    common::settled(&s).await;
    let (_, calls) = s.get("/api/v1/calls?limit=50").await;
    let used: Vec<&str> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["deployment"].as_str())
        .collect();
    assert!(!used.contains(&"mock/big"), "{calls}");
    assert!(used.contains(&"mock/small"), "{calls}");
    let records = common::audit_records(&s).await;
    assert!(records.iter().any(|r| r["action"] == "llm.call"
        && r["resource"] == "mock/big"
        && r["decision"] == "deny"));

    // Managed runs the same: an alias is no way around a forbidden deployment.
    for (name, model) in [("via-smart", "smart"), ("via-mixed", "mixed")] {
        s.apply(&format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: {model}\n"
        ))
        .await;
    }
    let run = s.start_run("via-smart", "hi").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r.to_string().contains("policy_denied") && r.to_string().contains("no-big"),
        "{r}"
    );
    let run = s.start_run("via-mixed", "hi").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let outcome = s
        .journal(&run)
        .await
        .into_iter()
        .find(|e| e["phase"] == "outcome" && e["kind"] == "model")
        .unwrap();
    let body = outcome["body"].to_string();
    assert!(
        body.contains("small") && !body.contains("big"),
        "answered by mock/small: {body}"
    );
    let records = common::audit_records(&s).await;
    assert!(records.iter().any(|r| r["run_id"] == run.as_str()
        && r["resource"] == "mock/big"
        && r["decision"] == "deny"));
}
both_backends!(
    a_forbidden_deployment_is_not_reached_through_an_alias,
    a_forbidden_deployment_is_not_reached_through_an_alias
);

/// A fallback is a tool call of its own: decided and audited like the call it replaces, and
/// never run on that call's permit.
async fn a_fallback_tool_is_decided_on_its_own(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, e) = put(
        &s,
        r#"
@id("calls-and-http") permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);
@id("no-notes") forbid (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"scratchpad_set");
"#,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let agent = |name: &str, tools: &str, fallback: &str| {
        format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [{tools}]\n  toolPolicies:\n    http_request: {{timeoutMs: 500, fallback: {fallback}}}\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{url: \"http://127.0.0.1:1/\", key: k, value: v, text: hi}}}}]\n    - content: done\n"
        )
    };
    for (name, tools, fallback, says) in [(
        "forbidden-fallback",
        "http_request, scratchpad_set",
        "scratchpad_set",
        "forbidden by no-notes",
    )] {
        s.apply(&agent(name, tools, fallback)).await;
        let run = s.start_run(name, "go").await;
        assert_eq!(s.wait_run(&run).await["state"], "succeeded");
        let outcome = s
            .journal(&run)
            .await
            .into_iter()
            .find(|e| e["phase"] == "outcome" && e["kind"] == "tool")
            .unwrap();
        assert_eq!(outcome["ok"], false, "{outcome}");
        let body = outcome["body"].to_string();
        assert!(
            body.contains(&format!("fallback tool \\\"{fallback}\\\" was not called")),
            "{body}"
        );
        assert!(body.contains(says), "{body}");
    }
    // An allowed fallback still runs, and its decision is on the record too.
    s.apply(&agent("echoing", "http_request, echo", "echo"))
        .await;
    let run = s.start_run("echoing", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let outcome = s
        .journal(&run)
        .await
        .into_iter()
        .find(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .unwrap();
    assert_eq!(outcome["ok"], true, "{outcome}");
    let records = common::audit_records(&s).await;
    assert!(records.iter().any(|r| r["action"] == "tool.call"
        && r["resource"] == "scratchpad_set"
        && r["decision"] == "deny"
        && r["policy_ids"] == json!(["no-notes"])));
    assert!(records.iter().any(|r| r["action"] == "tool.call"
        && r["resource"] == "echo"
        && r["decision"] == "allow"
        && r["run_id"] == run.as_str()));
}
both_backends!(
    a_fallback_tool_is_decided_on_its_own,
    a_fallback_tool_is_decided_on_its_own
);
