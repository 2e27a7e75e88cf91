//! A route's fallback chains by failure kind: a prompt too long for the context window goes to
//! the larger models, a content-filter refusal to the lenient ones, and other failures to
//! neither — through `/v1` and for managed runs alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Json;
use common::{Backend, TestServer};
use serde_json::{json, Value};

type Hits = Arc<Mutex<HashMap<String, u32>>>;

/// Upstreams at `/{name}/v1`. `strict` overflows on a prompt containing "LONG" (OpenAI's 400
/// `context_length_exceeded`), refuses one containing "risky" (`finish_reason:
/// content_filter`), and rejects one containing "malformed" (a plain 400); `big` and `lenient`
/// answer everything. Each answer names who gave it.
async fn upstreams() -> (String, Hits) {
    let hits: Hits = Default::default();
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/{name}/v1/chat/completions",
        post(move |Path(name): Path<String>, Json(body): Json<Value>| {
            let h = h.clone();
            async move {
                *h.lock().unwrap().entry(name.clone()).or_default() += 1;
                let prompt = body["messages"].to_string();
                let usage = json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7});
                if name == "strict" && prompt.contains("LONG") {
                    let e = json!({"error": {"message": "This model's maximum context length is 8192 tokens.",
                        "type": "invalid_request_error", "code": "context_length_exceeded"}});
                    return (StatusCode::BAD_REQUEST, Json(e)).into_response();
                }
                if name == "strict" && prompt.contains("malformed") {
                    let e = json!({"error": {"message": "messages[0].role is invalid", "type": "invalid_request_error"}});
                    return (StatusCode::BAD_REQUEST, Json(e)).into_response();
                }
                let (content, finish) = if name == "strict" && prompt.contains("risky") {
                    (Value::Null, "content_filter")
                } else {
                    (json!(format!("{name} answered")), "stop")
                };
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": usage}))
                .into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (base, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_go_to_the_chain_for_their_kind() {
    let (base, hits) = upstreams().await;
    let urls: Vec<(String, String)> = ["strict", "big", "lenient"]
        .iter()
        .flat_map(|n| {
            let up = n.to_uppercase();
            [
                (
                    format!("STEWARD_LLM__PROVIDERS__{up}__KIND"),
                    "openai".into(),
                ),
                (
                    format!("STEWARD_LLM__PROVIDERS__{up}__BASE_URL"),
                    format!("{base}/{n}/v1"),
                ),
            ]
        })
        .collect();
    let mut env: Vec<(&str, &str)> = urls.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    env.extend([
        (
            "STEWARD_LLM__ROUTES__GUARDED__DEPLOYMENTS",
            "[\"strict/m\"]",
        ),
        (
            "STEWARD_LLM__ROUTES__GUARDED__CONTEXT_WINDOW_FALLBACKS",
            "[\"big/m-128k\"]",
        ),
        (
            "STEWARD_LLM__ROUTES__GUARDED__CONTENT_FILTER_FALLBACKS",
            "[\"lenient/m\"]",
        ),
        ("STEWARD_LLM__ROUTES__BARE__DEPLOYMENTS", "[\"strict/m\"]"),
    ]);
    let s = TestServer::start_with(Backend::Sqlite, &env).await;
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "chains"})).await;
    let key = key["key"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let ask = |model: &'static str, prompt: &'static str| {
        let (http, key, url) = (
            http.clone(),
            key.clone(),
            format!("{}/v1/chat/completions", s.url),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": model, "messages": [{"role": "user", "content": prompt}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let count = |name: &str| hits.lock().unwrap().get(name).copied().unwrap_or(0);

    let (st, body) = ask("guarded", "a LONG prompt").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "big answered");
    assert_eq!(
        count("lenient"),
        0,
        "an overflow never goes to the content-filter chain"
    );

    let (st, body) = ask("guarded", "something risky").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "lenient answered");
    assert_eq!(
        count("big"),
        1,
        "a refusal never goes to the context-window chain"
    );

    let (st, body) = ask("guarded", "a malformed request").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("upstream_rejected")),
        "a request the upstream rejects for another reason falls back nowhere, and is told so as it is: {body}"
    );
    assert_eq!((count("big"), count("lenient")), (1, 1));

    // Without chains the client learns what happened, in OpenAI's terms.
    let (st, body) = ask("bare", "a LONG prompt").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{body}"
    );
    let (st, body) = ask("bare", "something risky").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!((count("big"), count("lenient")), (1, 1));

    // The record names the deployment that answered.
    common::settled(&s).await;
    let (_, calls) = s.get("/api/v1/calls?agent=chains").await;
    let deployments: Vec<&str> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["deployment"].as_str())
        .collect();
    assert!(deployments.contains(&"big/m-128k") && deployments.contains(&"lenient/m"));

    // A managed run on the same route takes the same chains.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: careful}\nspec:\n  model: guarded\n").await;
    let run = s.start_run("careful", "a risky question").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["result"], "lenient answered", "{r}");
    let run = s.start_run("careful", "a LONG question").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["result"], "big answered", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_naming_nothing_known_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("STEWARD_LLM__PROVIDERS__A__KIND", "openai")
        .env(
            "STEWARD_LLM__PROVIDERS__A__BASE_URL",
            "http://127.0.0.1:9/v1",
        )
        .env("STEWARD_LLM__ROUTES__R__DEPLOYMENTS", "[\"a/m\"]")
        .env(
            "STEWARD_LLM__ROUTES__R__CONTEXT_WINDOW_FALLBACKS",
            "[\"nowhere/big\"]",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("llm.routes.r.context_window_fallbacks[0]") && err.contains("nowhere/big"),
        "{err}"
    );
}
