//! Money through the gateway, as SDK defaults and careless upstreams exercise it: a stream is
//! charged whether or not its client asked for usage, and charged its bounds when no usage
//! comes (a hang-up, an upstream that does not count) — never nothing; the hold bounds what the
//! upstream can be made to produce (the held limit is sent, malformed limits refused); an
//! upstream's rejection reaches the client as what it is, not as a retryable 502, and is booked
//! against the deployment; credentials an upstream echoes back are shown and stored nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use common::{Backend, TestServer};
use serde_json::{json, Value};

const PROVIDER_KEY: &str = "sk-upstream-PROVIDER-KEY-0123456789";

type Seen = Arc<Mutex<Vec<Value>>>;

/// An upstream that records each request body and answers by model name: `nousage` never
/// reports usage, `slow` streams a chunk every 300 ms, `reject` refuses with a 400 that echoes
/// the key it was sent, `busy` is rate limited (Retry-After: 7), `broken` fails with a 500.
async fn upstream() -> (String, Seen) {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = s2.clone();
            async move {
                seen.lock().unwrap().push(body.clone());
                let model = body["model"].as_str().unwrap_or("").to_string();
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match model.as_str() {
                    "reject" => {
                        return (
                            StatusCode::BAD_REQUEST,
                            Json(json!({"error": {"message": format!("Invalid request; you sent {auth}"), "type": "invalid_request_error"}})),
                        )
                            .into_response()
                    }
                    "busy" => {
                        return (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "7")],
                            Json(json!({"error": {"message": "slow down"}})),
                        )
                            .into_response()
                    }
                    "broken" => {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
                    }
                    _ => {}
                }
                let usage = json!({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30});
                if body["stream"] != true {
                    let mut v = json!({"id": "x", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]});
                    if model != "nousage" {
                        v["usage"] = usage;
                    }
                    return Json(v).into_response();
                }
                let with_usage =
                    body["stream_options"]["include_usage"] == true && model != "nousage";
                let pause = if model == "slow" { 300 } else { 0 };
                let stream = async_stream(model, with_usage, usage, pause);
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

fn async_stream(
    model: String,
    with_usage: bool,
    usage: Value,
    pause_ms: u64,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let mut events: Vec<String> = (0..5)
        .map(|i| {
            let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}, "finish_reason": null}]});
            format!("data: {c}\n\n")
        })
        .collect();
    if with_usage {
        let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        // Split each event in two, as networks do.
        Some((Ok(next), it))
    })
}

async fn server(b: Backend) -> (TestServer, Seen) {
    let (url, seen) = upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &url),
            ("STEWARD_LLM__PROVIDERS__MOCK__API_KEY_ENV", "MOCK_KEY"),
            ("MOCK_KEY", PROVIDER_KEY),
            ("STEWARD_LLM__PRICES__M__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__M__OUTPUT", "2.0"),
            ("STEWARD_LLM__PRICES__NOUSAGE__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__NOUSAGE__OUTPUT", "2.0"),
            ("STEWARD_LLM__PRICES__SLOW__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__SLOW__OUTPUT", "2.0"),
        ],
    )
    .await;
    (s, seen)
}

async fn key(s: &TestServer, agent: &str) -> String {
    let (_, k) = s.post("/api/v1/keys", json!({"agent": agent})).await;
    k["key"].as_str().unwrap().to_string()
}

/// Streams a chat call and reads it to the end: the `data:` payloads.
async fn stream(s: &TestServer, key: &str, body: Value) -> Vec<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

async fn calls(s: &TestServer, agent: &str) -> Vec<Value> {
    common::settled(s).await;
    let (_, c) = s
        .get(&format!("/api/v1/calls?agent={agent}&limit=100"))
        .await;
    c["calls"].as_array().unwrap().clone()
}

async fn spent(s: &TestServer, account: &str) -> i64 {
    let (_, budgets) = s.get("/api/v1/budgets").await;
    budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["account"] == account)
        .unwrap()["spent_nanos"]
        .as_i64()
        .unwrap()
}

async fn streams_are_charged_whatever_the_client_asked(b: Backend) {
    let (s, seen) = server(b).await;
    let k = key(&s, "streamer").await;
    let (st, _) = s
        .put("/api/v1/budgets/agent:streamer", json!({"cap_usd": 10.0}))
        .await;
    assert_eq!(st, 200);
    let msg = json!([{"role": "user", "content": "hi"}]);

    // The SDKs' default: no stream_options. Usage is asked of the upstream all the same, and
    // its chunk is not passed on.
    let events = stream(
        &s,
        &k,
        json!({"model": "mock/m", "stream": true, "messages": msg}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(
        !events.iter().any(|e| e.contains("\"usage\":{")),
        "{events:?}"
    );
    assert_eq!(events.len(), 6, "five chunks and [DONE]: {events:?}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap()["stream_options"]["include_usage"],
        true
    );
    // Asked for, it is passed on.
    let events = stream(
        &s,
        &k,
        json!({"model": "mock/m", "stream": true, "stream_options": {"include_usage": true}, "messages": msg}),
    )
    .await;
    assert!(events
        .iter()
        .any(|e| e.contains("\"completion_tokens\":20")));
    let recorded = calls(&s, "streamer").await;
    assert_eq!(recorded.len(), 2);
    for c in &recorded {
        assert_eq!(
            (c["tokens_in"].as_i64(), c["tokens_out"].as_i64()),
            (Some(10), Some(20)),
            "{c}"
        );
    }
    let actual = 10 * 1000 + 20 * 2000;
    assert_eq!(spent(&s, "agent:streamer").await, 2 * actual);

    // An upstream that never reports usage: charged the bounds, never nothing.
    let events = stream(
        &s,
        &k,
        json!({"model": "mock/nousage", "stream": true, "max_tokens": 100, "messages": msg}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let c = calls(&s, "streamer")
        .await
        .into_iter()
        .find(|c| c["model"] == "mock/nousage")
        .unwrap();
    assert_eq!(c["tokens_out"], 100, "{c}");
    assert!(c["tokens_in"].as_i64().unwrap() > 10, "{c}");
    let after_nousage = spent(&s, "agent:streamer").await;
    assert!(after_nousage - 2 * actual >= 100 * 2000, "{after_nousage}");

    // A client that hangs up before the usage chunk: charged the bounds.
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&k)
        .json(&json!({"model": "mock/slow", "stream": true, "max_tokens": 50, "messages": msg}))
        .send()
        .await
        .unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    common::eventually("the cut-off stream is booked", || async {
        calls(&s, "streamer")
            .await
            .into_iter()
            .find(|c| c["model"] == "mock/slow" && c["status"] != "started")
    })
    .await;
    let c = calls(&s, "streamer")
        .await
        .into_iter()
        .find(|c| c["model"] == "mock/slow")
        .unwrap();
    assert_eq!(c["tokens_out"], 50, "{c}");
    assert!(spent(&s, "agent:streamer").await - after_nousage >= 50 * 2000);

    // Non-streamed, without usage: the same.
    let (st, _) = s
        .post_as(
            &k,
            "/v1/chat/completions",
            json!({"model": "mock/nousage", "max_tokens": 7, "messages": msg}),
        )
        .await;
    assert_eq!(st, 200);
    let c = calls(&s, "streamer").await;
    assert!(c
        .iter()
        .any(|c| c["model"] == "mock/nousage" && c["tokens_out"] == 7));
}
both_backends!(
    streams_are_charged_whatever_the_client_asked,
    streams_are_charged_whatever_the_client_asked
);

async fn the_hold_bounds_what_the_upstream_can_produce(b: Backend) {
    let (s, seen) = server(b).await;
    let k = key(&s, "bounded").await;
    let msg = json!([{"role": "user", "content": "hi"}]);
    for bad in [
        json!(100000.0),
        json!(0),
        json!(-1),
        json!("10"),
        json!(1.5),
        json!(true),
    ] {
        for field in ["max_tokens", "max_completion_tokens"] {
            let (st, e) = s
                .post_as(
                    &k,
                    "/v1/chat/completions",
                    json!({"model": "mock/m", field: bad, "messages": msg}),
                )
                .await;
            assert_eq!(st, 400, "{field}: {bad} -> {e}");
            assert!(
                e["error"]["message"].as_str().unwrap().contains(field),
                "{e}"
            );
        }
    }
    let (st, _) = s
        .post_as(
            &k,
            "/v1/chat/completions",
            json!({"model": "mock/m", "n": 0, "messages": msg}),
        )
        .await;
    assert_eq!(st, 400);
    let before = seen.lock().unwrap().len();
    assert_eq!(before, 0, "no malformed request reached the upstream");

    // No limit: the upstream is sent the one the hold assumed.
    let (st, _) = s
        .post_as(
            &k,
            "/v1/chat/completions",
            json!({"model": "mock/m", "messages": msg}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap()["max_completion_tokens"],
        4096
    );
    // The client's own limit is passed on untouched.
    s.post_as(
        &k,
        "/v1/chat/completions",
        json!({"model": "mock/m", "max_tokens": 12, "messages": msg}),
    )
    .await;
    let last = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["max_tokens"].clone(),
            last.get("max_completion_tokens")
        ),
        (json!(12), None)
    );

    // Several choices are held for all of them.
    s.put(
        "/api/v1/budgets/agent:bounded",
        json!({"cap_usd": 0.000001}),
    )
    .await;
    // Budget chains are read at most once a second per key.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let worst = |n: i64| {
        let k = k.clone();
        let s = &s;
        let msg = msg.clone();
        async move {
            let (st, e) = s
                .post_as(
                    &k,
                    "/v1/chat/completions",
                    json!({"model": "mock/m", "n": n, "max_tokens": 100, "messages": msg}),
                )
                .await;
            assert_eq!(st, 402, "{e}");
            let m = e["error"]["message"].as_str().unwrap().to_string();
            let usd: f64 = m
                .split("($")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            usd
        }
    };
    let one = worst(1).await;
    let three = worst(3).await;
    // Two more choices of up to 100 tokens each, at $2 per million.
    assert!(
        ((three - one) - 2.0 * 100.0 * 2e-6).abs() < 1e-6,
        "{one} vs {three}"
    );
}
both_backends!(
    the_hold_bounds_what_the_upstream_can_produce,
    the_hold_bounds_what_the_upstream_can_produce
);

async fn upstream_rejections_pass_through_and_credentials_never_do(b: Backend) {
    let (s, seen) = server(b).await;
    let k = key(&s, "caller").await;
    let msg = json!([{"role": "user", "content": "hi"}]);
    let send = |model: &'static str| {
        let k = k.clone();
        let url = s.url.clone();
        let msg = msg.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(k)
                .json(&json!({"model": format!("mock/{model}"), "max_tokens": 5, "messages": msg}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = send("reject").await;
    assert_eq!(r.status(), 400, "a rejection is not a retryable 502");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert!(!e.to_string().contains(PROVIDER_KEY), "{e}");
    assert!(e.to_string().contains("[redacted]"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 1, "asked once");

    let r = send("busy").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let r = send("broken").await;
    assert_eq!(r.status(), 502);

    // Booked against the deployment, and nowhere holding the key.
    let recorded = calls(&s, "caller").await;
    for model in ["mock/reject", "mock/busy", "mock/broken"] {
        let c = recorded.iter().find(|c| c["model"] == model).unwrap();
        assert_eq!(c["deployment"], model, "{c}");
        assert_eq!(c["status"], "error", "{c}");
    }
    assert!(!serde_json::to_string(&recorded)
        .unwrap()
        .contains(PROVIDER_KEY));
    let audit = serde_json::to_string(&common::audit_records(&s).await).unwrap();
    assert!(!audit.contains(PROVIDER_KEY));
    let (_, costs) = s.get("/api/v1/costs?by=agent").await;
    let line = costs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "caller")
        .unwrap();
    assert_eq!(
        line["unpriced_calls"], 0,
        "failed calls cost nothing: {costs}"
    );
    assert!(
        !s.log().contains(PROVIDER_KEY),
        "the server log holds the key"
    );

    // `GET /v1/models/{id}` answers for what can be routed.
    let model = |id: &'static str| {
        let k = k.clone();
        let url = s.url.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{url}/v1/models/{id}"))
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
        }
    };
    let r = model("mock/m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "mock/m");
    assert_eq!(model("nowhere/m").await.status(), 404);
}
both_backends!(
    upstream_rejections_pass_through_and_credentials_never_do,
    upstream_rejections_pass_through_and_credentials_never_do
);

/// An Anthropic upstream streaming its own events: usage comes in `message_start` and
/// `message_delta`, and a client that did not ask for usage is still charged it.
async fn anthropic_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/messages",
        post(|Json(_body): Json<Value>| async move {
            let events = [
                json!({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
                json!({"type": "message_stop"}),
            ];
            let text: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from(text))
                .unwrap()
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

async fn anthropic_streams_are_charged_too(b: Backend) {
    let url = anthropic_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__CLAUDE__KIND", "anthropic"),
            ("STEWARD_LLM__PROVIDERS__CLAUDE__BASE_URL", &url),
            ("STEWARD_LLM__PRICES__SONNET__INPUT", "3.0"),
            ("STEWARD_LLM__PRICES__SONNET__OUTPUT", "15.0"),
        ],
    )
    .await;
    let k = key(&s, "claude-user").await;
    let events = stream(
        &s,
        &k,
        json!({"model": "claude/sonnet", "stream": true, "max_tokens": 50,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().any(|e| e.contains("Hi")), "{events:?}");
    assert!(
        !events.iter().any(|e| e.contains("\"usage\":{")),
        "{events:?}"
    );
    let c = calls(&s, "claude-user").await;
    assert_eq!(
        (c[0]["tokens_in"].as_i64(), c[0]["tokens_out"].as_i64()),
        (Some(12), Some(7)),
        "{c:?}"
    );
}
both_backends!(
    anthropic_streams_are_charged_too,
    anthropic_streams_are_charged_too
);
