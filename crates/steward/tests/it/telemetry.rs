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

pub(crate) async fn mock_upstream() -> String {
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

/// A tools/call at `/mcp` whose `_meta` names the caller's span (`traceparent`).
async fn call_in_trace(s: &TestServer, key: &str, tool: &str, traceparent: &str) -> Value {
    let (st, r) = common::send(
        s.http
            .post(format!("{}/mcp", s.url))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": tool, "arguments": {}, "_meta": {"traceparent": traceparent}}})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    r
}

/// An MCP client's trace (`traceparent` in the call's `_meta`, as the 2026-07-28 revision
/// carries it) continues through Steward: the tool call's span is a child of the caller's
/// span, its audit record names the caller's trace, and the HTTP API the tool calls receives a
/// `traceparent` of the same trace whose parent is Steward's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_callers_trace_continues_through_steward_to_the_api() {
    use axum::http::HeaderMap;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let (endpoint, spans) = collector().await;
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let api = {
        let received = received.clone();
        let app = axum::Router::new().route(
            "/ping",
            axum::routing::get(move |h: HeaderMap| {
                let received = received.clone();
                async move {
                    let tp = h
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    received.lock().unwrap().push(tp.to_string());
                    Json(json!({"pong": true}))
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    };
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("STEWARD_TELEMETRY__EXPORT_INTERVAL_MS", "100"),
        ],
    )
    .await;
    let doc = json!({"openapi": "3.1.0", "paths": {"/ping": {"get": {"operationId": "ping"}}}});
    let (st, e) = s
        .put(
            "/api/v1/openapi/probe",
            json!({"document": doc, "base_url": api}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let key = common::key_of(&s, "tracer", "team-a").await;
    let (st, e) = s
        .put_policies(r#"@id("ping") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"probe.ping");"#)
        .await;
    assert_eq!(st, 200, "{e}");
    let r = call_in_trace(
        &s,
        &key,
        "probe.ping",
        &format!("00-{TRACE}-{CALLER_SPAN}-01"),
    )
    .await;
    assert_ne!(r["result"]["isError"], true, "{r}");

    let span = eventually("the tool call's span", || {
        let spans = spans.clone();
        async move {
            spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "execute_tool probe.ping")
                .cloned()
        }
    })
    .await;
    assert_eq!(span["traceId"], TRACE, "{span}");
    assert_eq!(span["parentSpanId"], CALLER_SPAN, "{span}");
    assert_eq!(attr(&span, "gen_ai.tool.name"), "probe.ping");

    let sent = received.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(
        parts[1], TRACE,
        "the API is in the caller's trace: {sent:?}"
    );
    assert_ne!(
        parts[2], CALLER_SPAN,
        "its parent is Steward's span: {sent:?}"
    );

    // An upstream MCP server (on the official Python SDK) is sent the trace in `_meta`.
    let _upstream = crate::mcp_http::guarded_upstream(&s).await;
    let (st, e) = s
        .put_policies(r#"@id("ping") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"probe.ping");
@id("trace") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"guarded.traceparent");"#)
        .await;
    assert_eq!(st, 200, "{e}");
    let r = call_in_trace(
        &s,
        &key,
        "guarded.traceparent",
        &format!("00-{TRACE}-{CALLER_SPAN}-01"),
    )
    .await;
    let seen = crate::mcp::text_of(&r);
    assert!(
        seen.contains(&format!("00-{TRACE}-")),
        "the upstream saw {seen:?}: {r}"
    );
    assert!(
        !seen.contains(CALLER_SPAN),
        "its parent is Steward's span: {seen}"
    );

    common::settled(&s).await;
    let records = common::audit_records(&s).await;
    let call = records
        .iter()
        .find(|r| r["resource"] == "probe.ping" && r["outcome"] == "ok")
        .expect("the call's record");
    assert_eq!(call["trace_id"], TRACE, "{call}");
}
