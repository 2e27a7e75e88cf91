//! The gateway's exact-match response cache: opt-in per route, per agent, never for sampled
//! requests unless the route says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Json;
use common::{Backend, TestServer};
use serde_json::{json, Value};

async fn counting_upstream() -> (String, Arc<Mutex<u32>>) {
    let hits: Arc<Mutex<u32>> = Default::default();
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let h = h.clone();
            async move {
                let n = {
                    let mut n = h.lock().unwrap();
                    *n += 1;
                    *n
                };
                Json(json!({"id": format!("r{n}"), "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {n}")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, hits)
}

async fn identical_deterministic_requests_are_answered_once(b: Backend) {
    let (upstream, hits) = counting_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__ROUTES__CACHED__DEPLOYMENTS", "[\"mock/m\"]"),
            ("STEWARD_LLM__ROUTES__CACHED__CACHE_TTL_MS", "60000"),
        ],
    )
    .await;
    let key_of = |agent: &'static str| {
        let s = &s;
        async move {
            s.post("/api/v1/keys", json!({"agent": agent})).await.1["key"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (alice, bob) = (key_of("alice").await, key_of("bob").await);
    let http = reqwest::Client::new();
    let ask = |key: &str, model: &str, temperature: Option<f64>| {
        let mut body =
            json!({"model": model, "messages": [{"role": "user", "content": "same question"}]});
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        let req = http
            .post(format!("{}/v1/chat/completions", s.url))
            .bearer_auth(key)
            .json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = ask(&alice, "cached", Some(0.0)).await;
    let again = ask(&alice, "cached", Some(0.0)).await;
    assert_eq!(first, again, "the same answer, from the cache");
    assert_eq!(*hits.lock().unwrap(), 1);
    ask(&bob, "cached", Some(0.0)).await;
    assert_eq!(
        *hits.lock().unwrap(),
        2,
        "another agent's identical request is not served alice's answer"
    );
    ask(&alice, "cached", None).await;
    ask(&alice, "cached", None).await;
    assert_eq!(
        *hits.lock().unwrap(),
        4,
        "sampled requests are never cached by default"
    );
    ask(&alice, "mock/m", Some(0.0)).await;
    ask(&alice, "mock/m", Some(0.0)).await;
    assert_eq!(
        *hits.lock().unwrap(),
        6,
        "routes without a cache_ttl_ms do not cache"
    );

    let (_, calls) = s.get("/api/v1/calls?agent=alice").await;
    let calls = calls["calls"].as_array().unwrap();
    let cached: Vec<&Value> = calls
        .iter()
        .filter(|c| c["deployment"] == "cache:mock/m")
        .collect();
    assert_eq!(cached.len(), 1, "a hit is on the record too: {calls:?}");
    assert_eq!(
        (
            cached[0]["tokens_in"].as_i64(),
            cached[0]["tokens_out"].as_i64()
        ),
        (Some(0), Some(0))
    );
}
both_backends!(
    identical_deterministic_requests_are_answered_once,
    identical_deterministic_requests_are_answered_once
);
