//! Gateway rate limits: requests per minute per agent, counted in the store so every node
//! sharing it enforces one limit.
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
            Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// Waits until at least 5 s remain in the current minute, so the burst lands in one window.
async fn away_from_a_minute_boundary() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    if ms > 55_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - ms + 200)).await;
    }
}

async fn one_limit_across_nodes(b: Backend) {
    let upstream = mock_upstream().await;
    let a = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__RATE_LIMITS__AGENT__RPM", "5"),
        ],
    )
    .await;
    // On PostgreSQL a second node shares the counters; SQLite is one node's.
    let second = (b == Backend::Postgres).then(|| TestServer::join(&a));
    let nodes: Vec<&TestServer> = std::iter::once(&a).chain(second.as_ref()).collect();
    let (_, key) = a.post("/api/v1/keys", json!({"agent": "limited"})).await;
    let key = key["key"].as_str().unwrap().to_string();
    away_from_a_minute_boundary().await;
    let http = reqwest::Client::new();
    let calls = (0..8).map(|i| {
        let (http, key) = (http.clone(), key.clone());
        let url = format!("{}/v1/chat/completions", nodes[i % nodes.len()].url);
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (
                r.status().as_u16(),
                retry_after,
                r.json::<Value>().await.unwrap(),
            )
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(st, _, _)| *st == 200).count();
    assert_eq!(ok, 5, "exactly the limit got through: {results:?}");
    for (st, retry_after, body) in results.iter().filter(|(st, _, _)| *st != 200) {
        assert_eq!(*st, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("agent:limited"),
            "{body}"
        );
        let secs: u64 = retry_after.as_deref().unwrap().parse().unwrap();
        assert!(
            (1..=61).contains(&secs),
            "Retry-After points at the next window: {secs}"
        );
    }
}
both_backends!(one_limit_across_nodes, one_limit_across_nodes);
