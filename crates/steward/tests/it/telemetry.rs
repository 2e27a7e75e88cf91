//! Trace export: with `[telemetry] otlp_endpoint` set, the real binary sends its spans over
//! OTLP/HTTP to a collector (here a loopback server reading OTLP JSON) — a span per gateway call
//! and per syscall of a managed run, named and attributed per the OpenTelemetry GenAI
//! conventions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Json;
use common::{eventually, Backend, TestServer};
use serde_json::{json, Value};

type Spans = Arc<Mutex<Vec<Value>>>;

/// A collector keeping every span it is sent, flattened, with the resource's service name.
async fn collector() -> (String, Spans) {
    let spans: Spans = Default::default();
    let s2 = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                    let service = attr(&rs["resource"], "service.name");
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["service"] = service.clone();
                            s2.lock().unwrap().push(span);
                        }
                    }
                }
                Json(json!({}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, spans)
}

/// An attribute's value as JSON (OTLP JSON wraps values as `stringValue`, `intValue`…; integers
/// may come as strings).
fn attr(holder: &Value, key: &str) -> Value {
    holder["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            if let Some(s) = v.get("stringValue") {
                s.clone()
            } else if let Some(i) = v.get("intValue") {
                json!(i
                    .as_i64()
                    .or_else(|| i.as_str().and_then(|s| s.parse().ok())))
            } else {
                v.clone()
            }
        })
        .unwrap_or(Value::Null)
}

async fn mock_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "traced"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_genai_attributes() {
    let (endpoint, spans) = collector().await;
    let upstream = mock_upstream().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("STEWARD_TELEMETRY__EXPORT_INTERVAL_MS", "100"),
            ("STEWARD_TELEMETRY__SERVICE_NAME", "steward-under-test"),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "traced"})).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&json!({"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: worker}\nspec:\n  model: mock/m\n  tools: [echo]\n").await;
    let run = s.start_run("worker", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");

    let find = |name: &'static str, pick: fn(&Value) -> bool| {
        let spans = spans.clone();
        async move {
            eventually(&format!("a span named {name:?}"), || {
                let spans = spans.clone();
                async move {
                    spans
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|s| s["name"] == name && pick(s))
                        .cloned()
                }
            })
            .await
        }
    };
    // The gateway call.
    let gw = find("chat mock/m", |s| attr(s, "agent") == "traced").await;
    assert_eq!(gw["service"], "steward-under-test");
    assert_eq!(attr(&gw, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(&gw, "steward.api"), "chat_completions");
    assert_eq!(attr(&gw, "gen_ai.request.model"), "mock/m");
    assert_eq!(attr(&gw, "gen_ai.provider.name"), "mock");
    assert_eq!(attr(&gw, "gen_ai.usage.input_tokens"), 10);
    assert_eq!(attr(&gw, "gen_ai.usage.output_tokens"), 3);
    // The managed run's model call, a syscall of its run.
    let step = find("chat mock/m", |s| !attr(s, "run_id").is_null()).await;
    assert_eq!(attr(&step, "run_id"), run.as_str());
    assert_eq!(attr(&step, "gen_ai.provider.name"), "mock");
    assert_eq!(attr(&step, "gen_ai.usage.output_tokens"), 3);

    // Each audit record names the trace its action ran in.
    common::settled(&s).await;
    let records = common::audit_records(&s).await;
    let syscall = |pick: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .find(|r| r["event"] == "syscall" && pick(r))
            .cloned()
            .expect("an audited syscall")
    };
    let gw_record = syscall(&|r| r["principal"] == "agent:traced");
    assert_eq!(gw_record["trace_id"], gw["traceId"], "{gw_record}");
    let step_record = syscall(&|r| r["run_id"] == run.as_str() && r["action"] == "llm.call");
    assert_eq!(step_record["trace_id"], step["traceId"], "{step_record}");
}
