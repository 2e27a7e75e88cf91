//! The vault through the real binary: a provider key and a tool credential are sealed at rest,
//! injected at call time, rotated without a restart, and never returned by the API, written to
//! the journal, the audit log or the log, or shown to the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Json;
use common::{Backend, TestServer};
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream recording the Authorization header of each chat call, and an endpoint echoing
/// it back (as a careless API might).
async fn upstream() -> (String, Seen) {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, Json(body): Json<Value>| {
                let s2 = s2.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    s2.lock().unwrap().push(auth);
                    Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
                }
            }),
        )
        .route(
            "/echo",
            get(|headers: HeaderMap| async move {
                format!(
                    "you sent {}",
                    headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                )
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// What the built-in default permits, for sets that add to it.
const DEFAULTS: &str = r#"permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call", Steward::Action::"agent.spawn", Steward::Action::"sandbox.exec", Steward::Action::"agent.delegate"], resource);"#;

async fn put_secret(s: &TestServer, name: &str, body: Value) -> (u16, String) {
    let (st, v) = common::send(
        reqwest::Client::new()
            .put(format!("{}/api/v1/secrets/{name}", s.url))
            .json(&body),
    )
    .await;
    (st, v.to_string())
}

/// Everything a table holds, as text. SQLite's is read off its files, WAL included: no page may
/// hold a secret in the clear.
async fn dump(s: &TestServer, table: &str) -> String {
    if let Some(path) = s.db_url.strip_prefix("sqlite://") {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                all.extend(b);
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    } else {
        let pool = sqlx::PgPool::connect(&s.db_url).await.unwrap();
        let rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT CAST(t.* AS TEXT) FROM {table} t"))
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.into_iter().map(|r| r.0).collect()
    }
}

async fn credentials_are_sealed_injected_and_never_shown(b: Backend) {
    let (base, seen) = upstream().await;
    let mut s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__SEALED__KIND", "openai"),
            (
                "STEWARD_LLM__PROVIDERS__SEALED__BASE_URL",
                &format!("{base}/v1"),
            ),
            (
                "STEWARD_LLM__PROVIDERS__SEALED__API_KEY_SECRET",
                "upstream-key",
            ),
        ],
    )
    .await;
    const FIRST: &str = "sk-vault-first-0123456789";
    const SECOND: &str = "sk-vault-second-9876543210";
    let (st, body) = put_secret(&s, "upstream-key", json!({ "value": FIRST })).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains(FIRST), "the value is never returned: {body}");
    // Bad input is refused.
    assert_eq!(
        put_secret(&s, "upstream-key", json!({"value": 5})).await.0,
        400
    );
    assert_eq!(
        put_secret(&s, "bad name!", json!({"value": "x"})).await.0,
        400
    );
    assert_eq!(put_secret(&s, "empty", json!({"value": ""})).await.0, 400);
    let (_, list) = s.get("/api/v1/secrets").await;
    assert_eq!(list["secrets"][0]["name"], "upstream-key");
    assert!(!list.to_string().contains(FIRST));

    // The provider's key comes from the vault, at call time: a rotation applies at once.
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "vaulted"})).await;
    let k = key["key"].as_str().unwrap().to_string();
    let call = |url: String| {
        let k = k.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(k)
                .json(
                    &json!({"model": "sealed/m", "messages": [{"role": "user", "content": "hi"}]}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    call(s.url.clone()).await;
    assert_eq!(
        put_secret(&s, "upstream-key", json!({ "value": SECOND }))
            .await
            .0,
        200
    );
    call(s.url.clone()).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [format!("Bearer {FIRST}"), format!("Bearer {SECOND}")]
    );

    // A tool uses it by name — where a policy lets it go — and the model sees neither the
    // value nor its echo.
    let host = reqwest::Url::parse(&base)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let (st, e) = s.put_policies(&format!(
            "{DEFAULTS}\n@id(\"upstream-key-to-its-host\") permit (principal, action == Steward::Action::\"secret.use\", resource == Steward::Secret::\"upstream-key\") when {{ context.destination == \"{host}\" }};"
        ),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: caller}}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{url: \"{base}/echo\", headers: {{Authorization: \"Bearer {{{{secret:upstream-key}}}}\"}}}}}}]\n    - content: done\n"
    ))
    .await;
    let run = s.start_run("caller", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = serde_json::to_string(&s.journal(&run).await).unwrap();
    assert!(
        journal.contains("you sent Bearer [secret:upstream-key]"),
        "{journal}"
    );
    assert!(!journal.contains(SECOND), "{journal}");

    // Nowhere at rest, nowhere in the log.
    common::settled(&s).await;
    for table in ["secrets", "journal", "audit_log", "gateway_calls"] {
        let rows = dump(&s, table).await;
        assert!(
            !rows.contains(FIRST) && !rows.contains(SECOND),
            "{table} holds a secret in the clear"
        );
    }
    assert!(!s.log().contains(FIRST) && !s.log().contains(SECOND));

    // After a restart the sealed value opens with the same key file.
    s.kill9();
    s.spawn();
    call(s.url.clone()).await;
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &format!("Bearer {SECOND}")
    );
}
both_backends!(
    credentials_are_sealed_injected_and_never_shown,
    credentials_are_sealed_injected_and_never_shown
);

/// A secret leaves Steward in a tool's request only by a decision: `secret.use` on it, with
/// where it is going (`context.destination`), audited — allowed or not. With no permit, with a
/// permit for another host, or a forbid, the request is never sent.
async fn secrets_in_tools_are_decided_and_bound_to_hosts(b: Backend) {
    let (base, _) = upstream().await;
    let s = TestServer::start_with(b, &[("STEWARD_VAULT_KEY", &"cd".repeat(32))]).await;
    assert_eq!(
        put_secret(&s, "api-key", json!({"value": "sk-live-do-not-leak"}))
            .await
            .0,
        200
    );
    assert_eq!(
        put_secret(
            &s,
            "provider-key",
            json!({"value": "sk-provider-do-not-leak"})
        )
        .await
        .0,
        200
    );
    let host = reqwest::Url::parse(&base)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let (st, e) = s.put_policies(&format!(
            "{DEFAULTS}\n@id(\"api-key-to-the-api\") permit (principal, action == Steward::Action::\"secret.use\", resource == Steward::Secret::\"api-key\") when {{ context.destination == \"api.example.com\" }};"
        ),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let run_with = |secret: &str| {
        format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: caller}}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{url: \"{base}/echo\", headers: {{Authorization: \"{{{{secret:{secret}}}}}\"}}}}}}]\n    - content: done\n"
        )
    };
    for (secret, why) in [
        ("provider-key", "no policy permits secret.use"),
        ("api-key", "may not be sent to"),
    ] {
        s.apply(&run_with(secret)).await;
        let run = s.start_run("caller", "go").await;
        assert_eq!(s.wait_run(&run).await["state"], "succeeded");
        let journal = serde_json::to_string(&s.journal(&run).await).unwrap();
        assert!(journal.contains(why), "{secret}: {journal}");
        assert!(!journal.contains("do-not-leak"), "{journal}");
        assert!(
            !journal.contains("you sent"),
            "the request was never sent: {journal}"
        );
    }
    // Bound to this host, it goes.
    let (st, e) = s.put_policies(&format!(
            "{DEFAULTS}\n@id(\"api-key-here\") permit (principal, action == Steward::Action::\"secret.use\", resource == Steward::Secret::\"api-key\") when {{ context.destination == \"{host}\" }};"
        ),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.apply(&run_with("api-key")).await;
    let run = s.start_run("caller", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = serde_json::to_string(&s.journal(&run).await).unwrap();
    assert!(journal.contains("[secret:api-key]"), "{journal}");
    assert!(!journal.contains("do-not-leak"), "{journal}");

    let uses: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "secret.use")
        .collect();
    let verdicts: Vec<(&str, &str)> = uses
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("provider-key", "deny"),
            ("api-key", "deny"),
            ("api-key", "allow")
        ],
        "{uses:?}"
    );
    assert_eq!(uses[2]["outcome"], format!("destination:{host}"));
    assert_eq!(uses[2]["policy_ids"], json!(["api-key-here"]));
}
both_backends!(
    secrets_in_tools_are_decided_and_bound_to_hosts,
    secrets_in_tools_are_decided_and_bound_to_hosts
);

/// A secret a tool sends is decided for the same principal as every other action of the run:
/// a policy on the agent's owner (`principal.owner`, `context.on_behalf_of`) and on the chain
/// it acts for (its owner, the run that spawned it) applies to `secret.use` as to `tool.call`.
async fn secret_use_acts_for_the_runs_owner_and_chain(b: Backend) {
    let (base, _) = upstream().await;
    let s = TestServer::start_with(b, &[("STEWARD_VAULT_KEY", &"ef".repeat(32))]).await;
    assert_eq!(
        put_secret(&s, "api-key", json!({"value": "sk-live-do-not-leak"}))
            .await
            .0,
        200
    );
    let (st, e) = s.put_policies(&format!(
            "{DEFAULTS}\n@id(\"payments-only\") permit (principal, action == Steward::Action::\"secret.use\", resource == Steward::Secret::\"api-key\") when {{ principal.owner == \"team:payments\" && context.on_behalf_of == \"team:payments\" && context.chain.contains(\"user:team:payments\") }};"
        ),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: caller}}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{url: \"{base}/echo\", headers: {{Authorization: \"{{{{secret:api-key}}}}\"}}}}}}]\n    - content: done\n"
    ))
    .await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: boss}\nspec:\n  model: scripted\n  tools: [spawn_agent]\n  script:\n    - toolCalls: [{name: spawn_agent, arguments: {agent: caller, input: go, tools: [http_request]}}]\n    - content: boss done\n").await;
    let sent = |journal: &Vec<Value>| {
        let j = serde_json::to_string(journal).unwrap();
        assert!(!j.contains("do-not-leak"), "{j}");
        j.contains("you sent [secret:api-key]")
    };

    // No owner recorded: the permit does not apply.
    let run = s.start_run("caller", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = s.journal(&run).await;
    let text = serde_json::to_string(&journal).unwrap();
    assert!(!sent(&journal), "{text}");
    assert!(text.contains("no policy permits secret.use"), "{text}");

    // Owned by another team: still no.
    let (st, r) = s
        .post(
            "/api/v1/agents/caller/resume",
            json!({"reason": "registered", "owner": "team:growth"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let run = s.start_run("caller", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    assert!(!sent(&s.journal(&run).await));

    // Owned by the team the policy names: it goes, from a top-level run and from a child.
    let (st, r) = s
        .post(
            "/api/v1/agents/caller/resume",
            json!({"reason": "moved", "owner": "team:payments"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let run = s.start_run("caller", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = s.journal(&run).await;
    assert!(sent(&journal), "{journal:?}");
    let boss = s.start_run("boss", "go").await;
    assert_eq!(s.wait_run(&boss).await["state"], "succeeded");

    let uses: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "secret.use")
        .collect();
    let verdicts: Vec<&str> = uses
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["deny", "deny", "allow", "allow"], "{uses:?}");
    assert_eq!(
        uses[2]["chain"],
        json!(["user:team:payments", "agent:caller", format!("run:{run}")])
    );
    // The child's use names the run that spawned it in its chain, as its steps do.
    let child = uses[3]["run_id"].as_str().unwrap();
    assert_ne!(child, run);
    assert_eq!(
        uses[3]["chain"],
        json!([
            "user:team:payments",
            format!("run:{boss}"),
            "agent:caller",
            format!("run:{child}")
        ])
    );
    let step_chains: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "tool.call" && r["run_id"] == child)
        .map(|r| r["chain"].clone())
        .collect();
    assert!(
        step_chains.iter().all(|c| *c == uses[3]["chain"]),
        "{step_chains:?}"
    );
}
both_backends!(
    secret_use_acts_for_the_runs_owner_and_chain,
    secret_use_acts_for_the_runs_owner_and_chain
);
