//! Upstream MCP servers reached over Streamable HTTP: the official reference server
//! (`@modelcontextprotocol/server-everything`) crashing mid-call and coming back, and a server
//! built on the official MCP Python SDK that answers only with a bearer token, which Steward
//! takes from the vault when connecting and never shows — or with an OAuth 2 client, whose
//! short-lived tokens it obtains, refreshes before they expire and replaces when refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common;
use crate::mcp::{everything_server, mcp_call, mcp_list, permits, text_of};

use common::{key_of, Backend, TestServer};
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reference server on `port`, over Streamable HTTP.
fn everything_on(port: u16) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .args([everything_server().as_str(), "streamableHttp"])
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node (for the reference MCP server)")
}

async fn listening(port: u16) {
    common::eventually("the upstream to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// The guarded server (tests/python/mcp_http_upstream.py), answering only `token`, listening.
pub(crate) async fn guarded(token: &str) -> (tokio::process::Child, u16) {
    guarded_with(&[("UPSTREAM_TOKEN", token)]).await
}

/// The guarded server with environment `env` (which says how it lets requests in), listening.
async fn guarded_with(env: &[(&str, &str)]) -> (tokio::process::Child, u16) {
    let port = free_port();
    (guarded_on(port, env).await, port)
}

/// The guarded server on `port`, listening.
async fn guarded_on(port: u16, env: &[(&str, &str)]) -> tokio::process::Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/mcp_http_upstream.py"
    );
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with the mcp package (installed by .ci/run)");
    listening(port).await;
    child
}

async fn status_of(s: &TestServer, name: &str) -> Value {
    let (st, e) = s.get(&format!("/api/v1/mcp-servers/{name}")).await;
    assert_eq!(st, 200, "{e}");
    e
}

/// The guarded server, its token in the vault, added to `s` as `guarded` and connected.
pub(crate) async fn guarded_upstream(s: &TestServer) -> tokio::process::Child {
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let (upstream, port) = guarded(&token).await;
    let (st, v) = s
        .put("/api/v1/secrets/GUARDED_TOKEN", json!({"value": token}))
        .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/guarded",
            json!({"url": format!("http://127.0.0.1:{port}/mcp"),
                   "headers": {"Authorization": "Bearer {{secret:GUARDED_TOKEN}}"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    connected(s, "guarded").await;
    upstream
}

pub(crate) async fn connected(s: &TestServer, name: &str) -> Value {
    common::eventually("the upstream to connect", || async {
        let e = status_of(s, name).await;
        (e["status"]["state"] == "connected" && e["status"]["tools"].as_u64() > Some(0))
            .then_some(e)
    })
    .await
}

/// The reference server over Streamable HTTP: its tools join the registry; killed in the
/// middle of a call, the call ends with a clear error (no hang) and, once the server is back
/// on its port, calls work again without anyone touching Steward.
async fn an_http_upstream_crashing_mid_call_fails_the_call_and_comes_back(b: Backend) {
    let s = TestServer::start(b).await;
    let port = free_port();
    let mut upstream = everything_on(port);
    listening(port).await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (st, e) = s.put("/api/v1/mcp-servers/web", json!({"url": url})).await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["transport"], "http", "{e}");
    assert_eq!(e["url"], url.as_str(), "{e}");
    let e = connected(&s, "web").await;
    assert_eq!(e["status"]["pid"], Value::Null, "no process of ours: {e}");
    let (_, tools) = s.get("/api/v1/tools/web.get-sum").await;
    assert_eq!(tools["source"], "mcp:web", "{tools}");

    let key = key_of(&s, "tooler", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("web-sum") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"web.get-sum");
@id("web-long") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"web.trigger-long-running-operation");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let r = mcp_call(&s, &key, "web.get-sum", json!({"a": 2, "b": 3})).await;
    assert!(text_of(&r).contains("The sum of 2 and 3 is 5"), "{r}");

    // A call that takes 6 s; the server dies 1 s into it.
    let call = {
        let (url, http, key) = (s.url.clone(), s.http.clone(), key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let (st, body) = common::send(
                http.post(format!("{url}/mcp"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("accept", "application/json, text/event-stream")
                    .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                        "params": {"name": "web.trigger-long-running-operation",
                                   "arguments": {"duration": 6, "steps": 3}}})),
            )
            .await;
            (st, body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstream.kill().await.unwrap();
    let (st, r, took) = call.await.unwrap();
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["result"]["isError"], true,
        "the crash is the call's error: {r}"
    );
    assert!(
        text_of(&r).contains("web"),
        "says which upstream failed: {r}"
    );
    assert!(
        took < Duration::from_secs(70),
        "bounded by the call timeout, not hung: {took:?}"
    );

    // While it is down, calls fail at once with the reason.
    let r = mcp_call(&s, &key, "web.get-sum", json!({"a": 1, "b": 1})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");

    // Back on its port: Steward reconnects by itself and calls work again.
    let mut upstream = everything_on(port);
    listening(port).await;
    common::eventually("calls to work again", || async {
        let r = mcp_call(&s, &key, "web.get-sum", json!({"a": 20, "b": 22})).await;
        text_of(&r).contains("is 42").then_some(())
    })
    .await;

    // Restarted between two calls, it has forgotten Steward's session though nothing failed:
    // found out (a call may fail, saying so, never hang) and connected again.
    upstream.kill().await.unwrap();
    let _upstream = everything_on(port);
    listening(port).await;
    common::eventually("calls to work after a quiet restart", || async {
        let started = Instant::now();
        let r = mcp_call(&s, &key, "web.get-sum", json!({"a": 1, "b": 2})).await;
        assert!(started.elapsed() < Duration::from_secs(20), "{r}");
        text_of(&r).contains("is 3").then_some(())
    })
    .await;
}
both_backends!(
    an_http_upstream_crashing_mid_call_fails_the_call_and_comes_back,
    an_http_upstream_crashing_mid_call_fails_the_call_and_comes_back
);

/// A guarded upstream (401 without its bearer token): the header names a vault secret, which
/// Steward resolves when it connects. Before the secret exists the server is not connected and
/// says why; once it exists, tools work; the token never shows in the API, the tool list or the
/// log; a wrong token is a clear error.
async fn an_http_upstreams_credentials_come_from_the_vault_and_are_never_shown(b: Backend) {
    let s = TestServer::start(b).await;
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let (_upstream, port) = guarded(&token).await;

    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/guarded",
            json!({"url": format!("http://127.0.0.1:{port}/mcp"),
                   "headers": {"Authorization": "Bearer {{secret:GUARDED_TOKEN}}"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["headers"], json!(["Authorization"]), "names only: {e}");
    let e = common::eventually("the missing secret to be reported", || async {
        let e = status_of(&s, "guarded").await;
        e["status"]["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("GUARDED_TOKEN"))
            .then_some(e)
    })
    .await;
    assert!(
        e["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not in the vault"),
        "{e}"
    );

    // The secret is set: the next attempt (or a restart) connects with it.
    let (st, v) = common::send(
        s.http
            .put(format!("{}/api/v1/secrets/GUARDED_TOKEN", s.url))
            .json(&json!({"value": token})),
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let (st, _) = s
        .post("/api/v1/mcp-servers/guarded/restart", json!({}))
        .await;
    assert_eq!(st, 200);
    let e = connected(&s, "guarded").await;
    assert_eq!(e["status"]["tools"], 8, "{e}");

    let key = key_of(&s, "tooler", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("guarded") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.add");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let r = mcp_call(&s, &key, "guarded.add", json!({"a": 40, "b": 2})).await;
    assert_eq!(r["result"]["isError"], Value::Bool(false), "{r}");
    assert!(r.to_string().contains("42"), "{r}");
    let (_, tool) = s.get("/api/v1/tools/guarded.add").await;
    assert_eq!(tool["annotations"]["read_only"], true, "{tool}");
    // Its result's schema as the server says it (this server names no version in its
    // discovery answer); nobody named as its owner.
    assert_eq!(
        tool["output_schema"]["properties"]["result"]["type"], "integer",
        "{tool}"
    );
    assert!(tool["version"].is_string(), "{tool}");
    assert_eq!(tool["owner"], "admin", "{tool}");
    // An MCP client is told the result's schema too.
    let listed = mcp_list(&s, &key).await;
    let add = listed.iter().find(|t| t["name"] == "guarded.add").unwrap();
    assert_eq!(add["outputSchema"], tool["output_schema"], "{add}");

    // The same from the CLI, as that agent: call, search, and a call policy does not permit.
    let (ok, out, err) = common::cli(
        &s,
        &[
            "tools",
            "call",
            "guarded.add",
            r#"{"a": 5, "b": 6}"#,
            "--key",
            &key,
        ],
    );
    assert!(ok && out.contains("11"), "{out}\n{err}");
    let (ok, out, err) = common::cli(&s, &["tools", "search", "adds integers", "--key", &key]);
    assert!(ok && out.contains("guarded.add"), "{out}\n{err}");
    assert!(
        !out.contains("guarded.count"),
        "only what it may call: {out}"
    );
    let (ok, _, err) = common::cli(&s, &["tools", "call", "guarded.count", "--key", &key]);
    assert!(!ok && err.contains("no policy permits"), "{err}");
    let (ok, out, _) = common::cli(&s, &["mcp", "ls"]);
    assert!(
        ok && out.contains(&format!("127.0.0.1:{port}/mcp")) && out.contains("connected"),
        "{out}"
    );

    // The token is nowhere a client or an operator can read it.
    let (_, servers) = s.get("/api/v1/mcp-servers").await;
    let (_, tools) = s.get("/api/v1/tools").await;
    for shown in [servers.to_string(), tools.to_string(), s.log()] {
        assert!(!shown.contains(&token), "the token leaked: {shown}");
    }

    // A wrong token: the server refuses, and the status says so.
    let (st, _) = common::send(
        s.http
            .put(format!("{}/api/v1/secrets/GUARDED_TOKEN", s.url))
            .json(&json!({"value": "wrong"})),
    )
    .await;
    assert!(st == 200 || st == 204);
    let (st, _) = s
        .post("/api/v1/mcp-servers/guarded/restart", json!({}))
        .await;
    assert_eq!(st, 200);
    common::eventually("the refusal to be reported", || async {
        let e = status_of(&s, "guarded").await;
        e["status"]["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("401") || m.to_lowercase().contains("unauthorized"))
            .then_some(())
    })
    .await;
}
both_backends!(
    an_http_upstreams_credentials_come_from_the_vault_and_are_never_shown,
    an_http_upstreams_credentials_come_from_the_vault_and_are_never_shown
);

/// Read-only and idempotent tools' results answer the same caller's same call again within
/// the TTL, without asking the upstream; another caller, other arguments or a tool that is
/// neither are asked anew; cached answers are audited as such.
async fn cached_results_answer_only_the_same_caller_and_call(b: Backend) {
    let s = TestServer::start_with(b, &[("STEWARD_TOOLS__CACHE__TTL_MS", "60000")]).await;
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let (_upstream, port) = guarded(&token).await;
    let (st, v) = common::send(
        s.http
            .put(format!("{}/api/v1/secrets/T", s.url))
            .json(&json!({"value": token})),
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/guarded",
            json!({"url": format!("http://127.0.0.1:{port}/mcp"),
                   "headers": {"Authorization": "Bearer {{secret:T}}"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    connected(&s, "guarded").await;
    let (st, e) = s
        .put_policies(
            r#"@id("add") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.add");
@id("count") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.count");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let alice = key_of(&s, "alice-agent", "alice").await;
    let bob = key_of(&s, "bob-agent", "bob").await;
    for _ in 0..3 {
        let r = mcp_call(&s, &alice, "guarded.add", json!({"a": 1, "b": 2})).await;
        assert!(r.to_string().contains('3'), "{r}");
    }
    let r = mcp_call(&s, &alice, "guarded.add", json!({"b": 2, "a": 1})).await;
    assert!(
        r.to_string().contains('3'),
        "same arguments in another order: {r}"
    );
    let r = mcp_call(&s, &bob, "guarded.add", json!({"a": 1, "b": 2})).await;
    assert!(r.to_string().contains('3'), "{r}");
    let r = mcp_call(&s, &alice, "guarded.add", json!({"a": 2, "b": 2})).await;
    assert!(r.to_string().contains('4'), "{r}");

    let records = common::audit_records(&s).await;
    let outcomes = |principal: &str| {
        records
            .iter()
            .filter(|r| r["resource"] == "guarded.add" && r["principal"] == principal)
            .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes("agent:alice-agent"),
        ["ok", "ok (cached)", "ok (cached)", "ok (cached)", "ok"],
        "asked once per distinct call, every call audited"
    );
    assert_eq!(
        outcomes("agent:bob-agent"),
        ["ok"],
        "never given alice's answer"
    );
    let r = mcp_call(&s, &alice, "guarded.count", json!({})).await;
    assert_eq!(
        r["result"]["structuredContent"]["result"], 3,
        "the upstream ran `add` three times for six calls: {r}"
    );
}
both_backends!(
    cached_results_answer_only_the_same_caller_and_call,
    cached_results_answer_only_the_same_caller_and_call
);

/// What a call's tool returned: its structured content — unwrapped from `result` when the
/// SDK wrapped a plain value, parsed when Steward passed the upstream's text on as `content`.
fn result_of(r: &Value) -> Value {
    assert_eq!(r["result"]["isError"], Value::Bool(false), "{r}");
    let sc = &r["result"]["structuredContent"];
    let v: Value = sc["content"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| sc.clone());
    match v.as_object() {
        Some(o) if o.len() == 1 && o.contains_key("result") => o["result"].clone(),
        _ => v,
    }
}

/// An upstream reached with an OAuth 2 client (the client-credentials grant) whose tokens live
/// 3 s: over several lifetimes every call goes through, each token is replaced before it
/// expires (the server never sees an expired one) and not fetched per request; tokens the
/// server revokes are replaced at the next request, which still succeeds; the client's secret
/// never shows; a wrong secret is a clear error; the CLI configures the same.
async fn an_http_upstream_reached_with_oauth_gets_fresh_tokens(b: Backend) {
    let s = TestServer::start(b).await;
    let secret = format!("cs-{}", uuid::Uuid::new_v4().simple());
    let (_upstream, port) = guarded_with(&[
        ("UPSTREAM_OAUTH_SECRET", secret.as_str()),
        ("UPSTREAM_TOKEN_LIFETIME", "3"),
    ])
    .await;
    let (url, token_url) = (
        format!("http://127.0.0.1:{port}/mcp"),
        format!("http://127.0.0.1:{port}/token"),
    );
    for (name, value) in [("OAUTH_CLIENT", secret.as_str()), ("OAUTH_WRONG", "nope")] {
        let (st, v) = s
            .put(&format!("/api/v1/secrets/{name}"), json!({"value": value}))
            .await;
        assert!(st == 200 || st == 204, "{st} {v}");
    }
    let oauth = |secret: &str| {
        json!({"token_url": token_url, "client_id": "steward",
               "client_secret": format!("{{{{secret:{secret}}}}}")})
    };
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/oauthed",
            json!({"url": url, "oauth": oauth("OAUTH_CLIENT"), "owner": "team-payments"}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["oauth_token_url"], token_url.as_str(), "{e}");
    assert_eq!(e["owner"], "team-payments", "{e}");
    connected(&s, "oauthed").await;
    let (_, tool) = s.get("/api/v1/tools/oauthed.add").await;
    assert_eq!(tool["owner"], "team-payments", "its server's owner: {tool}");

    let key = key_of(&s, "oauther", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("add") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"oauthed.add");
@id("stats") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"oauthed.auth_stats");
@id("revoke") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"oauthed.revoke");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    // Three token lifetimes of calls, each answered.
    let until = Instant::now() + Duration::from_secs(9);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let r = mcp_call(&s, &key, "oauthed.add", json!({"a": i, "b": 1000})).await;
        assert_eq!(result_of(&r), json!(i + 1000), "call {i}: {r}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let stats = result_of(&mcp_call(&s, &key, "oauthed.auth_stats", json!({})).await);
    let granted = stats["granted"].as_u64().unwrap();
    assert!(
        (4..=10).contains(&granted),
        "a token about every 2 s (refreshed a third of its life early), not one per request ({i} calls): {stats}"
    );
    assert_eq!(
        stats["refused_expired"], 0,
        "no token used past its life: {stats}"
    );
    assert_eq!(stats["bad_client"], 0, "{stats}");

    // The server revokes every token: the next request is refused, gets a new token, and is
    // sent again — the caller sees only its answer.
    result_of(&mcp_call(&s, &key, "oauthed.revoke", json!({})).await);
    let r = mcp_call(&s, &key, "oauthed.add", json!({"a": 1, "b": 2})).await;
    assert_eq!(result_of(&r), json!(3), "{r}");
    let after = result_of(&mcp_call(&s, &key, "oauthed.auth_stats", json!({})).await);
    assert!(
        after["refused"].as_u64() > stats["refused"].as_u64()
            && after["granted"].as_u64() > Some(granted),
        "refused once, then a new token: {stats} then {after}"
    );

    // The client's secret is nowhere a client or an operator can read it.
    let (_, servers) = s.get("/api/v1/mcp-servers").await;
    let (_, tools) = s.get("/api/v1/tools").await;
    for shown in [servers.to_string(), tools.to_string(), s.log()] {
        assert!(!shown.contains(&secret), "the secret leaked: {shown}");
    }

    // A wrong client secret: the token endpoint refuses, and the status says so.
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/oauthed",
            json!({"url": url, "oauth": oauth("OAUTH_WRONG")}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the token endpoint's refusal to be reported", || async {
        let e = status_of(&s, "oauthed").await;
        (e["status"]["state"] != "connected"
            && e["status"]["last_error"]
                .as_str()
                .is_some_and(|m| m.contains("token endpoint") && m.contains("invalid_client")))
        .then_some(())
    })
    .await;

    // Put right from the CLI.
    let secret_ref = "{{secret:OAUTH_CLIENT}}";
    let (ok, out, err) = common::cli(
        &s,
        &[
            "mcp",
            "add",
            "oauthed",
            "--url",
            &url,
            "--oauth-token-url",
            &token_url,
            "--oauth-client-id",
            "steward",
            "--oauth-client-secret",
            secret_ref,
        ],
    );
    assert!(ok && out.contains(&token_url), "{out}\n{err}");
    connected(&s, "oauthed").await;
    let r = mcp_call(&s, &key, "oauthed.add", json!({"a": 2, "b": 2})).await;
    assert_eq!(result_of(&r), json!(4), "{r}");
    let (ok, _, err) = common::cli(
        &s,
        &[
            "mcp",
            "add",
            "stdio-oauth",
            "--oauth-token-url",
            &token_url,
            "--oauth-client-id",
            "steward",
            "--",
            "true",
        ],
    );
    assert!(!ok && err.contains("--url"), "{err}");
}
both_backends!(
    an_http_upstream_reached_with_oauth_gets_fresh_tokens,
    an_http_upstream_reached_with_oauth_gets_fresh_tokens
);

/// The upstream dies in the middle of calls and comes back on its port: a call its tool says
/// is idempotent is made again on the new connection and answers; one that is not fails,
/// saying it may or may not have taken effect — the Kernel's rule for a step in doubt.
async fn a_call_in_doubt_is_made_again_only_if_idempotent(b: Backend) {
    let s = TestServer::start(b).await;
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let port = free_port();
    let env = [("UPSTREAM_TOKEN", token.as_str())];
    let mut upstream = guarded_on(port, &env).await;
    let (st, v) = s
        .put("/api/v1/secrets/GUARDED_TOKEN", json!({"value": token}))
        .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/guarded",
            json!({"url": format!("http://127.0.0.1:{port}/mcp"),
                   "headers": {"Authorization": "Bearer {{secret:GUARDED_TOKEN}}"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    connected(&s, "guarded").await;
    let key = key_of(&s, "doubter", "team-a").await;
    let policies = permits("guarded", &["slow", "slow_read", "stats"]);
    let (st, e) = s.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");

    for (tool, idempotent) in [("guarded.slow_read", true), ("guarded.slow", false)] {
        let call = {
            let (url, http, key) = (s.url.clone(), s.http.clone(), key.clone());
            tokio::spawn(async move {
                common::send(
                    http.post(format!("{url}/mcp"))
                        .header("authorization", format!("Bearer {key}"))
                        .header("accept", "application/json, text/event-stream")
                        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": tool, "arguments": {"seconds": 3}}})),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        upstream.kill().await.unwrap();
        let _ = upstream.wait().await;
        upstream = guarded_on(port, &env).await;
        let (st, r) = call.await.unwrap();
        assert_eq!(st, 200, "{r}");
        if idempotent {
            assert_eq!(result_of(&r), json!("read"), "made again, answered: {r}");
            let stats = result_of(&mcp_call(&s, &key, "guarded.stats", json!({})).await);
            assert_eq!(
                stats["slow_read_started"], 1,
                "once on the new server: {stats}"
            );
        } else {
            assert_eq!(r["result"]["isError"], true, "{r}");
            assert!(
                text_of(&r).contains("may or may not have taken effect"),
                "{r}"
            );
        }
    }
}
both_backends!(
    a_call_in_doubt_is_made_again_only_if_idempotent,
    a_call_in_doubt_is_made_again_only_if_idempotent
);

/// Two nodes; the one running an idempotent call as a task is killed and stays down. The other
/// answers the task as working while the dead node might still be at it, then — once the dead
/// node has been silent long enough — takes the task over and runs the call again, and the
/// task completes (PostgreSQL, the cluster engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_node_died_is_run_again_by_another() {
    let mut a = TestServer::start_with(
        Backend::Postgres,
        &[("STEWARD_VAULT_KEY", &"b5".repeat(32))],
    )
    .await;
    let b = TestServer::join(&a);
    let _upstream = guarded_upstream(&a).await;
    connected(&b, "guarded").await;
    let key = key_of(&a, "survivor", "team-a").await;
    let policies = permits("guarded", &["slow_read", "stats"]);
    let (st, e) = a.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the other node to follow the policy", || async {
        let r = mcp_call(&b, &key, "guarded.stats", json!({})).await;
        (r["result"]["isError"] == false).then_some(())
    })
    .await;

    let r = mcp_task_rpc(
        &a,
        &key,
        "tools/call",
        json!({"name": "guarded.slow_read", "arguments": {"seconds": 4}}),
    )
    .await;
    let id = r["result"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    a.kill9();
    let t = task_state(&b, &key, &id).await;
    assert_eq!(
        t["result"]["status"], "working",
        "its node may still be at it: {t}"
    );
    let done = common::eventually("the other node to run the task again", || async {
        let t = task_state(&b, &key, &id).await;
        (t["result"]["status"] != "working").then_some(t)
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert!(done.to_string().contains(r#""read""#), "{done}");
    let stats = result_of(&mcp_call(&b, &key, "guarded.stats", json!({})).await);
    assert_eq!(stats["slow_read_started"], 2, "started again: {stats}");
}

/// An earlier-revision client's `notifications/cancelled` that reaches another node than the
/// one running the call (a load balancer between them) still gives the call up: the upstream's
/// handler is cancelled and the call answers at once (PostgreSQL, the cluster engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_reaching_another_node_gives_the_call_up() {
    let a = TestServer::start_with(
        Backend::Postgres,
        &[("STEWARD_VAULT_KEY", &"c9".repeat(32))],
    )
    .await;
    let b = TestServer::join(&a);
    let _upstream = guarded_upstream(&a).await;
    let key = key_of(&a, "far-canceller", "team-a").await;
    let policies = permits("guarded", &["slow", "stats"]);
    let (st, e) = a.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");
    // As a client of the earlier revision sends them: no Mcp-Method header.
    let post = |s: &TestServer, body: Value| {
        s.http
            .post(format!("{}/mcp", s.url))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/json, text/event-stream")
            .json(&body)
    };
    let started = Instant::now();
    let call = tokio::spawn(common::send(post(
        &a,
        json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call",
               "params": {"name": "guarded.slow", "arguments": {"seconds": 30}}}),
    )));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resp = post(
        &b,
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 41, "reason": "the caller changed its mind"}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let (st, r) = call.await.unwrap();
    assert_eq!(st, 200, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "given up, not run to its end: {r}"
    );
    common::eventually("the upstream to see the cancellation", || async {
        let stats = result_of(&mcp_call(&a, &key, "guarded.stats", json!({})).await);
        (stats["slow_cancelled"].as_i64() >= Some(1)).then_some(())
    })
    .await;
}

/// Bad HTTP definitions are refused with what is wrong.
async fn bad_http_upstream_definitions_are_refused(b: Backend) {
    let s = TestServer::start(b).await;
    for (body, says) in [
        (json!({"url": "ftp://example.com/mcp"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "/mcp"}), "url"),
        (
            json!({"url": "https://user:pw@example.com/mcp"}),
            "credentials",
        ),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(3000))}),
            "url",
        ),
        (
            json!({"url": "https://example.com/mcp", "command": ["x"]}),
            "either",
        ),
        (json!({"command": ["x"], "headers": {"A": "b"}}), "either"),
        (
            json!({"url": "https://example.com/mcp", "env": {"A": "b"}}),
            "either",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"Mcp-Session-Id": "x"}}),
            "MCP transport",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"bad header": "x"}}),
            "header name",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"X-A": "line\nbreak"}}),
            "visible ASCII",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"X-A": "{{secret:NAME"}}),
            "closing",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"X-A": "{{secret:bad name}}"}}),
            "secret's name",
        ),
        (json!({"url": 7}), "url"),
        (
            json!({"command": ["x"], "env": {"K": "{{secret:}}"}}),
            "secret's name",
        ),
        (
            json!({"command": ["x"], "oauth": {"token_url": "https://a.example/token", "client_id": "c"}}),
            "either",
        ),
        (
            json!({"url": "https://example.com/mcp", "oauth": {"token_url": "ftp://a.example/token", "client_id": "c"}}),
            "oauth",
        ),
        (
            json!({"url": "https://example.com/mcp", "oauth": {"token_url": "https://a.example/token", "client_id": "c", "client_secret": "plain"}}),
            "oauth",
        ),
        (
            json!({"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"},
                   "oauth": {"token_url": "https://a.example/token", "client_id": "c"}}),
            "Authorization is set by `oauth`",
        ),
        (
            json!({"url": "https://example.com/mcp", "oauth": {"token_url": "https://a.example/token"}}),
            "client_id",
        ),
        (
            json!({"url": "https://example.com/mcp", "oauth": "https://a.example/token"}),
            "oauth",
        ),
        (
            json!({"url": "https://example.com/mcp", "owner": "team\nweb"}),
            "owner",
        ),
        (
            json!({"url": "https://example.com/mcp", "owner": "x".repeat(200)}),
            "owner",
        ),
    ] {
        let (st, e) = s.put("/api/v1/mcp-servers/bad", body.clone()).await;
        assert_eq!(st, 400, "{body}: {e}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
    let (_, list) = s.get("/api/v1/mcp-servers").await;
    assert_eq!(list["servers"], json!([]), "nothing stored: {list}");
}
both_backends!(
    bad_http_upstream_definitions_are_refused,
    bad_http_upstream_definitions_are_refused
);

/// A client script (`out`) that gave up a `guarded.slow` call saw the upstream cancel it, and
/// the audit record says the call was cancelled.
async fn cancelled_upstream(s: &TestServer, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "the cancellation did not reach the upstream:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let records = common::audit_records(s).await;
    assert!(
        records
            .iter()
            .any(|r| r["resource"] == "guarded.slow" && r["outcome"] == "cancelled"),
        "{records:?}"
    );
}

/// The official MCP Python SDK gives up on a slow call through `/mcp`: Steward gives up the
/// upstream call too — the upstream's handler is cancelled, not left to run — and the audit
/// record says the call was cancelled.
async fn a_client_cancelling_a_call_cancels_it_upstream(b: Backend) {
    let s = TestServer::start(b).await;
    let _upstream = guarded_upstream(&s).await;
    let key = key_of(&s, "canceller", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("slow") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.slow");
@id("stats") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.stats");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    let out = crate::mcp::sdk_script("python3", "mcp_cancel.py", &s, &key).await;
    cancelled_upstream(&s, &out).await;
}
both_backends!(
    a_client_cancelling_a_call_cancels_it_upstream,
    a_client_cancelling_a_call_cancels_it_upstream
);

/// The official MCP TypeScript SDK, a client of the earlier revision, aborts a slow call: it
/// sends `notifications/cancelled` with the call's request id, and Steward gives the upstream
/// call up too (the upstream's handler is cancelled, not left to run to its end).
async fn an_earlier_revision_client_cancels_by_notification(b: Backend) {
    let s = TestServer::start(b).await;
    let _upstream = guarded_upstream(&s).await;
    let key = key_of(&s, "ts-canceller", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("slow") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.slow");
@id("stats") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.stats");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    // The SDK comes with the reference server, in the same node_modules.
    let everything = everything_server();
    let sdk = everything
        .split("/server-everything/")
        .next()
        .map(|dir| format!("{dir}/sdk"))
        .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/mcp_cancel_earlier.mjs"
    );
    let out = tokio::process::Command::new("node")
        .arg(script)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", &key)
        .env("MCP_SDK", &sdk)
        .output()
        .await
        .expect("node (for the MCP TypeScript SDK)");
    cancelled_upstream(&s, &out).await;
}
both_backends!(
    an_earlier_revision_client_cancels_by_notification,
    an_earlier_revision_client_cancels_by_notification
);

/// A JSON-RPC request to `/mcp` from a client that accepts tasks (the 2026-07-28 tasks
/// extension, declared in the request's `_meta` as a stateless client does).
async fn mcp_task_rpc(s: &TestServer, key: &str, method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
    });
    let mut rb = s
        .http
        .post(format!("{}/mcp", s.url))
        .header("authorization", format!("Bearer {key}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params["name"].as_str().or(params["taskId"].as_str()) {
        rb = rb.header("mcp-name", name);
    }
    let (st, body) = common::send(
        rb.json(&json!({"jsonrpc": "2.0", "id": 11, "method": method, "params": params})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body
}

async fn task_state(s: &TestServer, key: &str, id: &str) -> Value {
    mcp_task_rpc(s, key, "tasks/get", json!({ "taskId": id })).await
}

/// A long call from a client that accepts tasks becomes a task: polled with `tasks/get` by the
/// agent that made it (no other), cancelled with `tasks/cancel` (the upstream's handler is
/// cancelled), and kept in the store — a task whose node was killed mid-call ends in doubt,
/// saying the call may or may not have taken effect, unless its tool is idempotent: then it
/// runs again when its caller next asks, and answers. A quick call is answered at once.
async fn long_calls_become_durable_tasks(b: Backend) {
    let mut s = TestServer::start(b).await;
    let _upstream = guarded_upstream(&s).await;
    let key = key_of(&s, "tasker", "team-a").await;
    let other = key_of(&s, "snooper", "team-b").await;
    let mut policies = permits("guarded", &["slow", "stats", "add", "slow_read"]);
    let (st, e) = s.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");

    // Quick: answered at once.
    let r = mcp_task_rpc(
        &s,
        &key,
        "tools/call",
        json!({"name": "guarded.add", "arguments": {"a": 1, "b": 2}}),
    )
    .await;
    assert!(r["result"]["taskId"].is_null(), "{r}");
    assert!(r.to_string().contains('3'), "{r}");

    // Long: a task, then its answer.
    let r = mcp_task_rpc(
        &s,
        &key,
        "tools/call",
        json!({"name": "guarded.slow", "arguments": {"seconds": 3}}),
    )
    .await;
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    assert_eq!(r["result"]["status"], "working", "{r}");
    let id = r["result"]["taskId"].as_str().unwrap().to_string();
    let snooped = task_state(&s, &other, &id).await;
    assert!(
        snooped["error"].is_object(),
        "another agent's task is not there: {snooped}"
    );
    let done = common::eventually("the task to complete", || async {
        let t = task_state(&s, &key, &id).await;
        (t["result"]["status"] == "completed").then_some(t)
    })
    .await;
    assert!(done.to_string().contains("slept"), "{done}");

    // Cancelled: the upstream's handler is cancelled, and the task says so.
    let r = mcp_task_rpc(
        &s,
        &key,
        "tools/call",
        json!({"name": "guarded.slow", "arguments": {"seconds": 30}}),
    )
    .await;
    let id = r["result"]["taskId"].as_str().unwrap().to_string();
    let c = mcp_task_rpc(&s, &key, "tasks/cancel", json!({ "taskId": id })).await;
    assert!(c["error"].is_null(), "{c}");
    common::eventually("the task to be cancelled", || async {
        let t = task_state(&s, &key, &id).await;
        (t["result"]["status"] == "cancelled").then_some(())
    })
    .await;
    common::eventually("the upstream to see the cancellation", || async {
        let stats = result_of(&mcp_call(&s, &key, "guarded.stats", json!({})).await);
        (stats["slow_cancelled"].as_i64() >= Some(1)).then_some(())
    })
    .await;

    // A policy that asks a person: a caller that accepts tasks waits for the approval as a
    // task (the approval is listed like a run's); approved, the call runs; denied, the
    // answer says who denied it and why. A caller that cannot wait is refused.
    policies.push_str("@id(\"count-needs-ops\") @approval(\"ops\") permit (principal, action == Steward::Action::\"tool.call\", resource == Steward::Tool::\"guarded.count\");\n");
    let (st, e) = s.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");
    let r = mcp_call(&s, &key, "guarded.count", json!({})).await;
    assert!(
        text_of(&r).contains("approval"),
        "refused without tasks: {r}"
    );
    for (verdict, reason) in [("approve", "counted on purpose"), ("deny", "not today")] {
        let r = mcp_task_rpc(
            &s,
            &key,
            "tools/call",
            json!({"name": "guarded.count", "arguments": {}}),
        )
        .await;
        assert_eq!(r["result"]["resultType"], "task", "{r}");
        assert!(
            r["result"]["statusMessage"]
                .as_str()
                .is_some_and(|m| m.contains("ops")),
            "{r}"
        );
        let id = r["result"]["taskId"].as_str().unwrap().to_string();
        let t = task_state(&s, &key, &id).await;
        assert_eq!(t["result"]["status"], "working", "{t}");
        let (_, pending) = s.get("/api/v1/approvals?state=pending").await;
        let approval = pending
            .as_array()
            .or(pending["approvals"].as_array())
            .and_then(|a| a.iter().find(|a| a["resource"] == "guarded.count"))
            .cloned()
            .unwrap_or_else(|| panic!("{pending}"));
        assert_eq!(approval["approvers"], "ops", "{approval}");
        let (ok, out, err) = common::cli(
            &s,
            &[
                verdict,
                approval["id"].as_str().unwrap(),
                "--reason",
                reason,
            ],
        );
        assert!(ok, "{out}{err}");
        let done = common::eventually("the parked call to end", || async {
            let t = task_state(&s, &key, &id).await;
            (t["result"]["status"] == "completed").then_some(t)
        })
        .await;
        if verdict == "approve" {
            assert_ne!(done["result"]["result"]["isError"], true, "{done}");
        } else {
            assert_eq!(done["result"]["result"]["isError"], true, "{done}");
            assert!(done.to_string().contains("not today"), "{done}");
        }
    }

    // Killed mid-call: after the restart the task ended in doubt, and says so.
    let r = mcp_task_rpc(
        &s,
        &key,
        "tools/call",
        json!({"name": "guarded.slow", "arguments": {"seconds": 30}}),
    )
    .await;
    let id = r["result"]["taskId"].as_str().unwrap().to_string();
    s.kill9();
    s.spawn();
    let t = task_state(&s, &key, &id).await;
    assert_eq!(t["result"]["status"], "failed", "{t}");
    assert!(
        t.to_string().contains("may or may not have taken effect"),
        "{t}"
    );

    // Killed mid-call of an idempotent tool: run again at the caller's next look, it answers;
    // the upstream saw it start twice. Another agent's look does not start it.
    connected(&s, "guarded").await;
    let r = mcp_task_rpc(
        &s,
        &key,
        "tools/call",
        json!({"name": "guarded.slow_read", "arguments": {"seconds": 3}}),
    )
    .await;
    let id = r["result"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    s.kill9();
    s.spawn();
    connected(&s, "guarded").await;
    let snooped = task_state(&s, &other, &id).await;
    assert!(snooped["error"].is_object(), "{snooped}");
    let t = task_state(&s, &key, &id).await;
    assert_eq!(t["result"]["status"], "working", "run again: {t}");
    let done = common::eventually("the task run again to complete", || async {
        let t = task_state(&s, &key, &id).await;
        (t["result"]["status"] != "working").then_some(t)
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert!(done.to_string().contains(r#""read""#), "{done}");
    let stats = result_of(&mcp_call(&s, &key, "guarded.stats", json!({})).await);
    assert_eq!(stats["slow_read_started"], 2, "started twice: {stats}");
}
both_backends!(
    long_calls_become_durable_tasks,
    long_calls_become_durable_tasks
);
