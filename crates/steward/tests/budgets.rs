//! Budgets as a ledger: 200 concurrent gateway calls against an account with a cap. Spend never
//! passes the cap, every refusal names the account, and the ledger adds up exactly — on SQLite
//! and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

/// At $1 / $2 per million tokens: 10 in + 3 out.
const ACTUAL_NANOS: i64 = 10 * 1000 + 3 * 2000;
const CAP_NANOS: i64 = 2_000_000;

async fn concurrent_calls_never_overspend(b: Backend) {
    let upstream = mock_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let put = |account: &str, body: Value| {
        let http = http.clone();
        let url = format!("{}/api/v1/budgets/{account}", s.url);
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
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
