//! Budgets as a ledger: 200 concurrent gateway calls against an account with a cap. Spend never
//! passes the cap, every refusal names the account, and the ledger adds up exactly — on SQLite
//! and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use axum::routing::post;
use axum::Json;
use common::{Backend, TestServer};
use serde_json::{json, Value};

async fn mock_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// A server whose `mock/gpt-mock` answers through the mock upstream, priced at $1 / $2 per
/// million tokens.
async fn priced_server(b: Backend) -> TestServer {
    let upstream = mock_upstream().await;
    TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await
}

/// At $1 / $2 per million tokens: 10 in + 3 out.
const ACTUAL_NANOS: i64 = 10 * 1000 + 3 * 2000;
const CAP_NANOS: i64 = 2_000_000;

async fn concurrent_calls_never_overspend(b: Backend) {
    let s = priced_server(b).await;
    let http = reqwest::Client::new();
    let put = |account: &str, body: Value| {
        let http = http.clone();
        let url = format!("{}/api/v1/budgets/{account}", s.url);
        async move { common::send(http.put(url).json(&body)).await }
    };
    assert_eq!(
        put("org", json!({"cap_usd": CAP_NANOS as f64 / 1e9}))
            .await
            .0,
        200
    );
    assert_eq!(
        put("agent:spender", json!({"parent": "org", "cap_usd": 100.0}))
            .await
            .0,
        200
    );
    // Bad budgets are refused with the reason.
    let (st, e) = put("org", json!({"parent": "agent:spender", "cap_usd": 1.0})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "a cycle: {e}"
    );
    let (st, _) = put("team:x", json!({"parent": "nowhere", "cap_usd": 1.0})).await;
    assert_eq!(st, 404);
    let (st, _) = put("team:x", json!({"cap_usd": -1.0})).await;
    assert_eq!(st, 400);
    let (st, _) = put("bad account!", json!({"cap_usd": 1.0})).await;
    assert_eq!(st, 400);

    let (_, key) = s.post("/api/v1/keys", json!({"agent": "spender"})).await;
    let key = key["key"].as_str().unwrap().to_string();
    let calls = (0..200).map(|_| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", s.url);
        let key = key.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "mock/gpt-mock", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    let results = futures::future::join_all(calls).await;
    common::settled(&s).await;
    let ok = results.iter().filter(|(st, _)| *st == 200).count() as i64;
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(st, _)| *st == 402)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        ok + refused.len() as i64,
        200,
        "only successes and budget refusals: {results:?}"
    );
    assert!(
        ok > 0 && !refused.is_empty(),
        "the cap must bite: {ok} succeeded"
    );
    for r in &refused {
        assert_eq!(r["error"]["code"], "budget_exceeded");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("\"org\""),
            "{r}"
        );
    }

    let (_, budgets) = s.get("/api/v1/budgets").await;
    let org = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["account"] == "org")
        .unwrap()
        .clone();
    let agent = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["account"] == "agent:spender")
        .unwrap()
        .clone();
    assert!(
        org["spent_nanos"].as_i64().unwrap() <= CAP_NANOS,
        "overspent: {org}"
    );
    assert_eq!(
        org["spent_nanos"].as_i64().unwrap(),
        ok * ACTUAL_NANOS,
        "the ledger adds up exactly: {org}"
    );
    assert_eq!(
        agent["spent_nanos"], org["spent_nanos"],
        "spend lands on every account up the chain"
    );
    assert_eq!(
        (
            org["reserved_nanos"].as_i64(),
            agent["reserved_nanos"].as_i64()
        ),
        (Some(0), Some(0)),
        "every hold was released"
    );
    let (_, recorded) = s.get("/api/v1/calls?agent=spender&limit=1000").await;
    assert_eq!(
        recorded["calls"].as_array().unwrap().len() as i64,
        ok,
        "refused calls never reached an upstream"
    );
}
both_backends!(
    concurrent_calls_never_overspend,
    concurrent_calls_never_overspend
);

/// A managed run's model calls hold and settle on the same ledger; when the next call does
/// not fit, the run fails or waits for a human, as its agent's `budget.onExceeded` says.
async fn managed_runs_follow_their_budget_policy(b: Backend) {
    let s = priced_server(b).await;
    let http = reqwest::Client::new();
    let put = |account: &str, cap_usd: f64| {
        let http = http.clone();
        let url = format!("{}/api/v1/budgets/{account}", s.url);
        async move {
            let (st, e) = common::send(http.put(url).json(&json!({ "cap_usd": cap_usd }))).await;
            assert_eq!(st, 200, "{e}");
        }
    };
    let budget = |account: String| {
        let s = &s;
        async move {
            let (_, all) = s.get("/api/v1/budgets").await;
            all["budgets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["account"] == account.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("no account {account}: {all}"))
        }
    };
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: roomy}\nspec:\n  model: mock/gpt-mock\n  maxTokens: 100\n  budget: {perRunUsd: 1.0}\n\
---\napiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: tight}\nspec:\n  model: mock/gpt-mock\n  maxTokens: 100\n  budget: {perRunUsd: 0.000001}\n\
---\napiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: patient}\nspec:\n  model: mock/gpt-mock\n  maxTokens: 100\n  budget: {onExceeded: wait_for_human}\n",
    )
    .await;

    // Room enough: the call is held, then settled at its real cost on the run's account.
    let run = s.start_run("roomy", "hi").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let acct = budget(format!("run:{run}")).await;
    assert_eq!(
        (
            acct["spent_nanos"].as_i64(),
            acct["reserved_nanos"].as_i64()
        ),
        (Some(ACTUAL_NANOS), Some(0)),
        "{acct}"
    );

    // A per-run cap below one call's worst case: the run fails, naming its account.
    let run = s.start_run("tight", "hi").await;
    let r = s.wait_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["code"].as_str()),
        (Some("failed"), Some("budget_exceeded")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("\"run:{run}\"")),
        "{r}"
    );
    assert!(
        s.journal(&run).await.is_empty(),
        "a refused call leaves no step behind"
    );

    // The agent's own account is too small: the run waits for a human, who raises the cap and
    // says retry; the run then finishes, its spend booked once.
    put("agent:patient", 0.000001).await;
    let run = s.start_run("patient", "hi").await;
    let waiting = s.wait_run(&run).await;
    assert_eq!(waiting["state"], "waiting", "{waiting}");
    assert_eq!(waiting["error"]["code"], "budget_exceeded", "{waiting}");
    assert!(waiting["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"agent:patient\""));
    put("agent:patient", 1.0).await;
    let (st, _) = s
        .post(
            &format!("/api/v1/runs/{run}/resolve"),
            json!({"action": "retry"}),
        )
        .await;
    assert_eq!(st, 200);
    let r = s.wait_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["result"].as_str()),
        (Some("succeeded"), Some("ok")),
        "{r}"
    );
    let acct = budget("agent:patient".into()).await;
    assert_eq!(
        (
            acct["spent_nanos"].as_i64(),
            acct["reserved_nanos"].as_i64()
        ),
        (Some(ACTUAL_NANOS), Some(0)),
        "{acct}"
    );
}
both_backends!(
    managed_runs_follow_their_budget_policy,
    managed_runs_follow_their_budget_policy
);

/// `kill -9` while a gateway call waits on its upstream: the answer never comes, the hold is
/// left open. After a restart the stale-hold sweep books it in full (what the upstream charged
/// is unknown, and spend must never be under-counted) and marks the call interrupted.
async fn a_call_cut_off_by_a_crash_is_booked_in_full(b: Backend) {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "never"
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let mut s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__SLOW__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__SLOW__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__SLOW-M__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__SLOW-M__OUTPUT", "2.0"),
            ("STEWARD_ENGINE__HOUSEKEEPING_MS", "100"),
            ("STEWARD_ENGINE__STALE_CALL_MS", "1000"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    http.put(format!("{}/api/v1/budgets/agent:cut", s.url))
        .json(&json!({"cap_usd": 1.0}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "cut"})).await;
    let call = tokio::spawn(
        http.post(format!("{}/v1/chat/completions", s.url))
            .bearer_auth(key["key"].as_str().unwrap())
            .json(&json!({"model": "slow/slow-m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}))
            .send(),
    );
    let held = common::eventually("the call's hold", || {
        let s = &s;
        async move {
            let (_, b) = s.get("/api/v1/budgets").await;
            let r = b["budgets"][0]["reserved_nanos"].as_i64()?;
            (r > 0).then_some(r)
        }
    })
    .await;
    s.kill9();
    assert!(
        call.await.unwrap().is_err(),
        "the client saw the connection drop"
    );
    s.spawn();
    let booked = common::eventually("the stale hold to be booked", || {
        let s = &s;
        async move {
            let (_, b) = s.get("/api/v1/budgets").await;
            let a = &b["budgets"][0];
            (a["reserved_nanos"] == 0).then(|| a["spent_nanos"].as_i64().unwrap())
        }
    })
    .await;
    assert_eq!(booked, held, "the whole hold is booked");
    let (_, calls) = s.get("/api/v1/calls?agent=cut").await;
    assert_eq!(calls["calls"][0]["status"], "error", "{calls}");
    assert!(calls["calls"][0]["error"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
}
both_backends!(
    a_call_cut_off_by_a_crash_is_booked_in_full,
    a_call_cut_off_by_a_crash_is_booked_in_full
);

/// A model call cut off by kill -9 after it reached the upstream is made again on replay: the
/// upstream answered (and billed) twice, so the ledger books two calls — the first at its full
/// hold, the second at its cost — and the cost report says the same.
async fn a_replayed_model_call_is_booked_as_a_call_of_its_own(b: Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                // The first call hangs long enough for the node to be killed under it.
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let mut s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: cut}\nspec:\n  model: mock/gpt-mock\n  maxTokens: 100\n  budget: {perRunUsd: 1.0}\n")
        .await;
    let run = s.start_run("cut", "hi").await;
    common::eventually("the first call reached the upstream", || async {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    s.kill9();
    s.spawn();
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the upstream answered twice"
    );

    let (_, all) = s.get("/api/v1/budgets").await;
    let account = all["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == format!("run:{run}").as_str())
        .cloned()
        .unwrap();
    let spent = account["spent_nanos"].as_i64().unwrap();
    assert_eq!(account["reserved_nanos"], 0, "{account}");
    // 100 output tokens at most, at $2 per million, and the prompt: the first call's hold.
    assert!(
        spent > ACTUAL_NANOS + 100 * 2000,
        "both calls booked, the first at its worst case: {account}"
    );
    let (_, by_run) = s.get("/api/v1/costs?by=run").await;
    let line = by_run["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == run.as_str())
        .cloned()
        .unwrap();
    assert_eq!(line["calls"], 2, "{line}");
    let reported = (line["cost_usd"].as_f64().unwrap() * 1e9).round() as i64;
    assert_eq!(
        reported, spent,
        "the cost report agrees with the ledger: {line}"
    );
}
both_backends!(
    a_replayed_model_call_is_booked_as_a_call_of_its_own,
    a_replayed_model_call_is_booked_as_a_call_of_its_own
);
