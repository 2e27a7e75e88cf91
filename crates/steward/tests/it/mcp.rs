//! `/mcp` through the real binary, driven by the official MCP Python SDK: an agent sees in
//! `tools/list` only the tools the policy lets it call and only tools that need no run; calls
//! take the governance path (refused with the reason, arguments checked against the schema with
//! the path of the bad field) and are audited with the caller's chain; `tools_search` and
//! `tools_describe` work over what the caller may call. Without a valid key nothing is spoken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{key_of, Backend, TestServer};
use serde_json::{json, Value};

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

    // A LangGraph agent with its tools from /mcp through langchain-mcp-adapters.
    let out = sdk_script(&langgraph_python(), "langgraph_mcp.py", &s, &tooler).await;
    assert!(
        out.status.success(),
        "the LangGraph agent failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Oslo"));

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
    // What it searched for and was shown is on the record too.
    for meta in ["tools_search", "tools_describe"] {
        assert!(ok.iter().any(|r| r["resource"] == meta), "{meta}: {ok:?}");
    }
    let ok: Vec<Value> = ok.into_iter().filter(|r| r["resource"] == "echo").collect();
    assert_eq!(
        ok.len(),
        3,
        "one echo per protocol revision of the SDK, one by the LangGraph agent: {ok:?}"
    );
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
    assert_eq!(
        (echo["owner"].as_str(), echo["version"].as_str()),
        (Some("steward"), Some(env!("CARGO_PKG_VERSION"))),
        "Steward's own, of its version: {echo}"
    );
    assert_eq!(echo["output_schema"], Value::Null, "{echo}");
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

/// The official reference server, installed from npm by `.ci/run`.
/// Runs `tests/python/SCRIPT` with `python` against `s` as the agent of `key` (the scripts
/// read STEWARD_BASE and STEWARD_KEY).
pub(crate) async fn sdk_script(
    python: &str,
    script: &str,
    s: &TestServer,
    key: &str,
) -> std::process::Output {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    tokio::process::Command::new(python)
        .arg(path)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", key)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} for {script} (.ci/run installs what it needs): {e}"))
}

/// The Python of the environment `.ci/run` makes for LangGraph and langchain-mcp-adapters
/// (which need the MCP SDK 1.x; the other tests use 2.x).
fn langgraph_python() -> String {
    let path = std::env::var("STEWARD_TEST_LANGGRAPH_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/steward-langgraph/bin/python".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: .ci/run makes that environment (or set STEWARD_TEST_LANGGRAPH_PYTHON)"
    );
    path
}

pub(crate) fn everything_server() -> String {
    let path = std::env::var("STEWARD_TEST_MCP_EVERYTHING").unwrap_or_else(|_| {
        "/var/tmp/steward-npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
            .into()
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: .ci/run installs @modelcontextprotocol/server-everything (or set STEWARD_TEST_MCP_EVERYTHING)"
    );
    path
}

/// A policy set permitting every caller to call `server.tool` for each of `tools`, one policy
/// each (Cedar has no `resource in [..]` over entity literals here).
pub(crate) fn permits(server: &str, tools: &[&str]) -> String {
    tools
        .iter()
        .map(|t| format!("@id(\"{t}\") permit (principal, action == Steward::Action::\"tool.call\", resource == Steward::Tool::\"{server}.{t}\");\n"))
        .collect()
}

/// The tools `/mcp` lists for `key` (stateless `tools/list`).
pub(crate) async fn mcp_list(s: &TestServer, key: &str) -> Vec<Value> {
    let (st, body) = common::send(
        s.http
            .post(format!("{}/mcp", s.url))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {}})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{body}"))
}

/// A JSON-RPC `tools/call` at `/mcp`, stateless: the result, or the JSON-RPC error.
pub(crate) async fn mcp_call(s: &TestServer, key: &str, tool: &str, args: Value) -> Value {
    let (st, body) = common::send(
        s.http
            .post(format!("{}/mcp", s.url))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": tool, "arguments": args}})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body
}

pub(crate) fn text_of(result: &Value) -> String {
    result["result"]["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

async fn server_status(s: &TestServer) -> Value {
    let (st, e) = s.get("/api/v1/mcp-servers/everything").await;
    assert_eq!(st, 200, "{e}");
    e["status"].clone()
}

/// An upstream MCP server over stdio: its tools join the registry under its name, are called
/// by managed runs (`spec.tools: [everything.*]`) and MCP clients on the governance path; when
/// its process dies it is started again and its tools work again; removed, they are gone.
async fn an_upstream_servers_tools_join_the_registry_and_survive_its_crash(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/everything",
            json!({"command": ["node", everything_server(), "stdio"], "env": {"EVERYTHING_TOKEN": "not-shown"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["env"], json!(["EVERYTHING_TOKEN"]), "names only: {e}");
    assert!(!e.to_string().contains("not-shown"), "{e}");
    let first_pid = common::eventually("the upstream to connect", || async {
        let st = server_status(&s).await;
        (st["state"] == "connected")
            .then(|| st["pid"].as_u64())
            .flatten()
    })
    .await;
    let (_, tools) = s.get("/api/v1/tools").await;
    let sum = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "everything.get-sum")
        .cloned()
        .unwrap_or_else(|| panic!("{tools}"));
    assert_eq!(sum["source"], "mcp:everything");
    assert_eq!(
        sum["annotations"]["read_only"], true,
        "its own hints: {sum}"
    );
    assert_eq!(sum["input_schema"]["required"], json!(["a", "b"]), "{sum}");
    assert!(
        sum["version"].as_str().is_some_and(|v| !v.is_empty()),
        "the server's version, as it says it: {sum}"
    );
    assert_eq!(sum["owner"], "admin", "nobody named: {sum}");

    let key = key_of(&s, "tooler", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("sum") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"everything.get-sum");
@id("runs-think") permit (principal is Steward::Run, action == Steward::Action::"llm.call", resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    // An MCP client through Steward: arguments checked against the upstream's schema first.
    let r = mcp_call(&s, &key, "everything.get-sum", json!({"a": 2, "b": 3})).await;
    assert!(text_of(&r).contains("The sum of 2 and 3 is 5"), "{r}");
    let r = mcp_call(&s, &key, "everything.get-sum", json!({"a": "two", "b": 3})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("/a"), "the bad field's path: {r}");
    // Not permitted: refused, though the upstream offers it.
    let r = mcp_call(&s, &key, "everything.echo", json!({"message": "hi"})).await;
    assert!(text_of(&r).contains("no policy permits"), "{r}");

    // A managed run names the upstream's tools by prefix.
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: summer}\nspec:\n  model: scripted\n  tools: [everything.*]\n  script:\n    - toolCalls: [{name: everything.get-sum, arguments: {a: 20, b: 22}}]\n    - content: done\n",
    )
    .await;
    let run = s.start_run("summer", "x").await;
    let ended = s.wait_run(&run).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let journal = s.journal(&run).await;
    assert!(
        journal
            .iter()
            .any(|e| e.to_string().contains("The sum of 20 and 22 is 42")),
        "{journal:?}"
    );

    // A run's arguments that break the upstream's schema are refused before it is asked, and
    // the model is told which field.
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: typo}\nspec:\n  model: scripted\n  tools: [everything.*]\n  script:\n    - toolCalls: [{name: everything.get-sum, arguments: {a: two, b: 22}}]\n    - content: done\n",
    )
    .await;
    let run = s.start_run("typo", "x").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = s.journal(&run).await;
    let outcome = journal
        .iter()
        .find(|e| e["kind"] == "tool" && e["phase"] == "outcome")
        .unwrap_or_else(|| panic!("{journal:?}"));
    assert!(
        outcome["body"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid arguments at /a")),
        "{outcome}"
    );

    // Its process is killed: it is started again, and its tools answer again.
    let _ = std::process::Command::new("kill")
        .args(["-9", &first_pid.to_string()])
        .status();
    common::eventually("the upstream to be started again", || async {
        let st = server_status(&s).await;
        (st["state"] == "connected"
            && st["pid"].as_u64() != Some(first_pid)
            && st["restarts"].as_u64() >= Some(1))
        .then_some(())
    })
    .await;
    let r = mcp_call(&s, &key, "everything.get-sum", json!({"a": 1, "b": 1})).await;
    assert!(text_of(&r).contains("is 2"), "{r}");

    // Replaced by a new definition: started again under it, its tools still there.
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/everything",
            json!({"command": ["node", everything_server(), "stdio"], "env": {"OTHER": "1"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the new definition to connect", || async {
        let (_, e) = s.get("/api/v1/mcp-servers/everything").await;
        (e["env"] == json!(["OTHER"]) && e["status"]["state"] == "connected").then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = mcp_call(&s, &key, "everything.get-sum", json!({"a": 2, "b": 2})).await;
    assert!(
        text_of(&r).contains("is 4"),
        "the old connection's exit took nothing away: {r}"
    );

    // Removed: its tools are gone.
    let (st, _) = common::send(
        s.http
            .delete(format!("{}/api/v1/mcp-servers/everything", s.url)),
    )
    .await;
    assert_eq!(st, 204);
    let (_, tools) = s.get("/api/v1/tools").await;
    assert!(!tools.to_string().contains("everything."), "{tools}");
    let r = mcp_call(&s, &key, "everything.get-sum", json!({"a": 1, "b": 1})).await;
    assert!(text_of(&r).contains("no tool"), "{r}");
    let (st, _) = s.get("/api/v1/mcp-servers/everything").await;
    assert_eq!(st, 404);
}
both_backends!(
    an_upstream_servers_tools_join_the_registry_and_survive_its_crash,
    an_upstream_servers_tools_join_the_registry_and_survive_its_crash
);

/// An upstream server's process gets none of Steward's own environment — which holds its
/// database password, model providers' keys, the vault's key — only what a program needs
/// (PATH, HOME, …) and the variables it was configured with.
async fn an_upstream_server_gets_none_of_stewards_environment(b: Backend) {
    let s = TestServer::start_with(
        b,
        &[
            ("OPENAI_API_KEY", "sk-steward-only"),
            ("PGPASSWORD", "pg-steward-only"),
        ],
    )
    .await;
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/everything",
            json!({"command": ["node", everything_server(), "stdio"], "env": {"GIVEN": "to-the-server"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the upstream to connect", || async {
        (server_status(&s).await["state"] == "connected").then_some(())
    })
    .await;
    let key = key_of(&s, "env-reader", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("env") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"everything.get-env");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let r = mcp_call(&s, &key, "everything.get-env", json!({})).await;
    let env: Value = serde_json::from_str(&text_of(&r)).unwrap_or_else(|_| panic!("{r}"));
    // Steward passes the upstream's text on as `content`.
    let env: Value = env["content"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(env);
    assert_eq!(env["GIVEN"], "to-the-server", "{env}");
    assert!(env["PATH"].is_string(), "{env}");
    for (name, _) in env.as_object().unwrap() {
        assert!(
            !name.starts_with("STEWARD_") && !name.starts_with("CARGO"),
            "{name} reached the server: {env}"
        );
    }
    for leaked in ["sk-steward-only", "pg-steward-only"] {
        assert!(!env.to_string().contains(leaked), "{leaked}: {env}");
    }
}
both_backends!(
    an_upstream_server_gets_none_of_stewards_environment,
    an_upstream_server_gets_none_of_stewards_environment
);

/// A copy of test script `tests/node/NAME` where any user may read it (a checkout may sit
/// under a private home, and servers run as a user of their own): its directory, and it.
fn public_copy(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = public.path().join(name);
    let original = format!("{}/tests/node/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(original, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    (public, copy)
}

/// An upstream whose results break the output schema it declares: Steward refuses them with
/// what is wrong (the path of the bad field), rather than pass on what a client that checks
/// would reject; a result of the promised shape passes.
async fn an_upstream_result_that_breaks_its_own_schema_is_an_error(b: Backend) {
    let s = TestServer::start(b).await;
    let (_public, raw) = public_copy("mcp_stdio_raw.mjs");
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/raw",
            json!({"command": ["node", raw.to_str().unwrap()]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the raw server to connect", || async {
        let (_, e) = s.get("/api/v1/mcp-servers/raw").await;
        (e["status"]["state"] == "connected").then_some(())
    })
    .await;
    let key = key_of(&s, "shaper", "team-a").await;
    let policies = permits("raw", &["shaped", "misshaped", "unshaped"]);
    let (st, e) = s.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");
    let r = mcp_call(&s, &key, "raw.shaped", json!({})).await;
    assert_eq!(r["result"]["structuredContent"], json!({"n": 3}), "{r}");
    let r = mcp_call(&s, &key, "raw.misshaped", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        text_of(&r).contains("output schema does not allow") && text_of(&r).contains("/n"),
        "{r}"
    );
    let r = mcp_call(&s, &key, "raw.unshaped", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("no structured result"), "{r}");
}
both_backends!(
    an_upstream_result_that_breaks_its_own_schema_is_an_error,
    an_upstream_result_that_breaks_its_own_schema_is_an_error
);

/// When Steward runs as root, an upstream server's process runs as an unprivileged user of its
/// own, in a fresh home of its own: it can read what everyone may (its own script) but not
/// Steward's data directory — the vault's key, the database. Run as another user, Steward
/// starts servers as itself.
async fn an_upstream_server_runs_as_a_user_of_its_own(b: Backend) {
    use std::os::unix::fs::MetadataExt;
    let mut s = TestServer::start(b).await;
    let (_public, probe) = public_copy("mcp_stdio_probe.mjs");
    let sdk = everything_server()
        .split("/server-everything/")
        .next()
        .map(|dir| format!("{dir}/sdk"))
        .unwrap();
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/probe",
            json!({"command": ["node", probe.to_str().unwrap()], "env": {"MCP_SDK": sdk}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the probe to connect", || async {
        let (_, e) = s.get("/api/v1/mcp-servers/probe").await;
        (e["status"]["state"] == "connected").then_some(())
    })
    .await;
    let key = key_of(&s, "prober", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("who") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"probe.whoami");
@id("read") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"probe.read");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let said = |r: Value| -> Value {
        let outer: Value = serde_json::from_str(&text_of(&r)).unwrap_or_else(|_| panic!("{r}"));
        outer["content"]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(outer)
    };
    let who = said(mcp_call(&s, &key, "probe.whoami", json!({})).await);
    let read = |path: String| {
        let (s, key) = (&s, &key);
        async move { said(mcp_call(s, key, "probe.read", json!({"path": path})).await) }
    };
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me != 0 {
        assert_eq!(who["uid"], me, "as Steward itself: {who}");
        return;
    }
    assert_eq!(
        (who["uid"].as_u64(), who["gid"].as_u64()),
        (Some(1_879_048_193), Some(1_879_048_193)),
        "{who}"
    );
    let home = who["home"].as_str().unwrap();
    assert!(home != "/root" && home.contains("steward-mcp-"), "{who}");
    assert_eq!(who["cwd"], home, "{who}");
    let public_read = read(probe.to_str().unwrap().to_string()).await;
    assert_eq!(public_read["read"], true, "{public_read}");
    for private in ["vault.key", "steward.db"] {
        let path = s.dir.path().join(private);
        if path.exists() {
            let r = read(path.to_str().unwrap().to_string()).await;
            assert_eq!(r["read"], false, "{private}: {r}");
        }
    }
    assert!(
        s.dir.path().join("vault.key").exists(),
        "the vault key is where it is looked for"
    );
    // In a cgroup of its own, with the default limits: 1 GiB of memory, 256 processes.
    let (_, e) = s.get("/api/v1/mcp-servers/probe").await;
    let pid = e["status"]["pid"].as_u64().unwrap_or_else(|| panic!("{e}"));
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let group_of = |controller: &str| -> String {
        // cgroup v1: a tree per controller; v2: one tree.
        let (tree, path) = groups
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, names, path) = (p.next()?, p.next()?, p.next()?);
                if names.split(',').any(|n| n == controller) {
                    Some((format!("/sys/fs/cgroup/{controller}"), path))
                } else if names.is_empty() {
                    Some(("/sys/fs/cgroup".to_string(), path))
                } else {
                    None
                }
            })
            .unwrap_or_else(|| panic!("{groups}"));
        assert!(
            path.contains("/mcp-servers-") && path.ends_with(&format!("/probe-{pid}")),
            "{groups}"
        );
        format!("{tree}{path}")
    };
    let limit = |controller: &str, file: &str| -> String {
        let path = format!("{}/{file}", group_of(controller));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let memory = limit(
        "memory",
        if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        },
    );
    assert_eq!(
        (memory.as_str(), limit("pids", "pids.max").as_str()),
        ("1073741824", "256")
    );

    // Steward killed: the next one to start removes the dead one's groups.
    let group = group_of("memory");
    let scope = std::path::Path::new(&group).parent().unwrap().to_path_buf();
    s.kill9();
    s.spawn();
    common::eventually("the dead Steward's cgroups to be removed", || async {
        (!scope.exists()).then_some(())
    })
    .await;
}
both_backends!(
    an_upstream_server_runs_as_a_user_of_its_own,
    an_upstream_server_runs_as_a_user_of_its_own
);

/// Bad server definitions are refused with what is wrong, and nothing is stored.
async fn bad_mcp_server_definitions_are_refused(b: Backend) {
    let s = TestServer::start(b).await;
    for (name, body, says) in [
        ("everything", json!({"command": []}), "command"),
        ("everything", json!({"command": [""]}), "command"),
        ("every.thing", json!({"command": ["node"]}), "name"),
        ("Everything", json!({"command": ["node"]}), "name"),
        (
            "everything",
            json!({"command": ["node"], "extra": 1}),
            "extra",
        ),
        ("everything", json!({"command": "node"}), "command"),
        (
            "everything",
            json!({"command": ["node"], "env": {"A=B": "x"}}),
            "env",
        ),
        (
            "everything",
            json!({"command": ["node", "x".repeat(5000)]}),
            "command",
        ),
    ] {
        let (st, e) = s
            .put(&format!("/api/v1/mcp-servers/{name}"), body.clone())
            .await;
        assert_eq!(st, 400, "{body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {e}"
        );
    }
    let (_, list) = s.get("/api/v1/mcp-servers").await;
    assert_eq!(list["servers"], json!([]), "{list}");
    // A command that cannot start is reported, not fatal, and tried again.
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/broken",
            json!({"command": ["/no/such/program"]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the failure to be reported", || async {
        let (_, e) = s.get("/api/v1/mcp-servers/broken").await;
        e["status"]["last_error"]
            .as_str()
            .filter(|m| m.contains("cannot start"))
            .map(|_| ())
    })
    .await;
}
both_backends!(
    bad_mcp_server_definitions_are_refused,
    bad_mcp_server_definitions_are_refused
);

/// An MCP client that asks for progress of a long upstream call (a `progressToken`) gets the
/// upstream's reports, in order, before the answer: the reference server's long-running
/// operation, through Steward, to the official Python SDK.
async fn progress_of_an_upstream_call_reaches_the_client(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/everything",
            json!({"command": ["node", everything_server()]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the upstream's tools", || async {
        let (st, _) = s
            .get("/api/v1/tools/everything.trigger-long-running-operation")
            .await;
        (st == 200).then_some(())
    })
    .await;
    let key = key_of(&s, "watcher", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("long") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"everything.trigger-long-running-operation");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let out = sdk_script("python3", "mcp_progress.py", &s, &key).await;
    assert!(
        out.status.success(),
        "progress did not reach the client:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}
both_backends!(
    progress_of_an_upstream_call_reaches_the_client,
    progress_of_an_upstream_call_reaches_the_client
);
