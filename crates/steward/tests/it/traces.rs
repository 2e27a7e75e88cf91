//! Traces from outside: an agent exports its OpenTelemetry spans to `POST /v1/traces` with the
//! official OTLP exporter (protobuf) or as OTLP JSON, authenticated by its API key; Steward
//! keeps them by trace id (once, however often they are sent), shows them through the
//! management API, refuses malformed ones whole, and forgets them after their retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{eventually, key_of, Backend, TestServer};
use serde_json::{json, Value};

async fn otlp(
    s: &TestServer,
    key: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/traces", s.url))
        .header("content-type", content_type)
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn json_span(trace: &str, span: &str, parent: &str) -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "notebook"}}]},
        "scopeSpans": [{"scope": {"name": "langgraph"}, "spans": [{
            "traceId": trace, "spanId": span, "parentSpanId": parent,
            "name": "execute_tool search", "kind": 3,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                {"key": "retries", "value": {"intValue": "2"}},
                {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"boolValue": true}]}}}
            ],
            "status": {"code": 2, "message": "timed out"}
        }]}]
    }]})
}

async fn spans_from_agents_are_kept_by_trace(b: Backend) {
    let s = TestServer::start(b).await;
    let key = key_of(&s, "support-bot", "ana").await;

    // The official OpenTelemetry SDK and its OTLP/HTTP exporter, protobuf on the wire.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otel_export.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", &key)
        .output()
        .await
        .expect("python3 with opentelemetry-sdk and its OTLP exporter (installed by .ci/run)");
    assert!(
        out.status.success(),
        "the exporter script failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let trace = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (st, t) = s.get(&format!("/api/v1/traces/{trace}")).await;
    assert_eq!(st, 200, "{t}");
    let spans = t["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3, "{t}");
    let root = &spans[0];
    assert_eq!(root["name"], "invoke_agent triage");
    assert!(root["parent_span_id"].is_null());
    assert_eq!(root["service"], "support-bot");
    assert_eq!(root["sent_by"], "agent:support-bot");
    assert_eq!(root["resource"]["service.name"], "support-bot");
    assert_eq!(root["attributes"]["otel.scope.name"], "support-bot.agent");
    let by_name = |n: &str| spans.iter().find(|x| x["name"] == n).unwrap().clone();
    let chat = by_name("chat gpt-4o");
    assert_eq!(chat["parent_span_id"], root["span_id"]);
    assert_eq!(chat["kind"], "client");
    assert_eq!(chat["attributes"]["gen_ai.request.model"], "gpt-4o");
    assert_eq!(chat["attributes"]["gen_ai.usage.input_tokens"], 42);
    assert_eq!(chat["events"][0]["name"], "gen_ai.choice");
    assert_eq!(
        chat["events"][0]["attributes"]["finish_reason"],
        "tool_calls"
    );
    let tool = by_name("execute_tool lookup_order");
    assert_eq!(tool["parent_span_id"], root["span_id"]);
    assert_eq!(
        (tool["status"].as_str(), tool["status_message"].as_str()),
        (Some("error"), Some("order not found"))
    );
    assert!(tool["start_ns"].as_i64().unwrap() <= tool["end_ns"].as_i64().unwrap());

    // OTLP JSON, sent twice (an exporter retrying): kept once, values as sent.
    let t2 = "5b8efff798038103d269b633813fc60c";
    let body = serde_json::to_vec(&json_span(t2, "eee19b7ec3c1b174", "eee19b7ec3c1b173")).unwrap();
    for _ in 0..2 {
        let (st, r) = otlp(&s, Some(&key), "application/json", body.clone()).await;
        assert_eq!(st, 200, "{r}");
    }
    let (_, t) = s
        .get(&format!("/api/v1/traces/{}", t2.to_uppercase()))
        .await;
    assert_eq!(t["spans"].as_array().unwrap().len(), 1, "{t}");
    let x = &t["spans"][0];
    assert_eq!(x["kind"], "client");
    assert_eq!(x["service"], "notebook");
    assert_eq!(x["attributes"]["retries"], 2);
    assert_eq!(x["attributes"]["tags"], json!(["a", true]));
    assert_eq!(x["start_ns"], 1_700_000_000_000_000_000i64);
    assert_eq!(
        (x["status"].as_str(), x["status_message"].as_str()),
        (Some("error"), Some("timed out"))
    );

    // Found by session and by end user: `session.id` on the span, `user.id` on its sender.
    let t4 = "8b8efff798038103d269b633813fc60c";
    let mut with_session = json_span(t4, "eee19b7ec3c1b175", "");
    with_session["resourceSpans"][0]["resource"]["attributes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "user.id", "value": {"stringValue": "ana"}}));
    with_session["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "session.id", "value": {"stringValue": "thread-7"}}));
    let (st, r) = otlp(
        &s,
        Some(&key),
        "application/json",
        serde_json::to_vec(&with_session).unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (st, l) = s.get("/api/v1/traces?session_id=thread-7").await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["traces"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["traces"][0]["trace_id"], t4);
    assert_eq!(l["traces"][0]["end_user"], "ana");
    assert_eq!(l["traces"][0]["sent_by"], "agent:support-bot");
    let (_, l) = s.get("/api/v1/traces?end_user=ana").await;
    assert_eq!(l["traces"][0]["trace_id"], t4, "{l}");
    let (_, l) = s.get("/api/v1/traces").await;
    assert_eq!(l["traces"].as_array().unwrap().len(), 3, "every trace: {l}");
    let (_, l) = s.get("/api/v1/traces?session_id=thread-8").await;
    assert!(l["traces"].as_array().unwrap().is_empty());
    for bad in [
        "/api/v1/traces?limit=0",
        "/api/v1/traces?limit=x",
        "/api/v1/traces?colour=red",
    ] {
        let (st, r) = s.get(bad).await;
        assert_eq!(st, 400, "{bad}: {r}");
    }

    // Refused, saying why, with nothing kept.
    let t3 = "6b8efff798038103d269b633813fc60c";
    let bad_span = serde_json::to_vec(&json_span(t3, "0000000000000000", "")).unwrap();
    let (st, r) = otlp(&s, Some(&key), "application/json", bad_span).await;
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("spanId"),
        "{r}"
    );
    let (st, _) = s.get(&format!("/api/v1/traces/{t3}")).await;
    assert_eq!(st, 404, "nothing of a refused request is kept");
    let (st, r) = otlp(&s, Some(&key), "application/x-protobuf", vec![0xff; 64]).await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = otlp(
        &s,
        Some(&key),
        "application/json",
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = otlp(&s, Some(&key), "text/plain", b"hello".to_vec()).await;
    assert_eq!(st, 415, "{r}");
    let (st, _) = otlp(&s, None, "application/json", body.clone()).await;
    assert_eq!(st, 401, "spans come from agents with a key");
    let (st, _) = otlp(&s, Some("sk-not-a-key"), "application/json", body).await;
    assert_eq!(st, 401);
    let (st, _) = s.get("/api/v1/traces/not-a-trace").await;
    assert_eq!(st, 400);
}

both_backends!(traces_from_agents, spans_from_agents_are_kept_by_trace);

/// Spans are forgotten once `engine.trace_retention_ms` has passed since they arrived.
async fn spans_are_forgotten_after_their_retention(b: Backend) {
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_ENGINE__TRACE_RETENTION_MS", "1500"),
            ("STEWARD_ENGINE__HOUSEKEEPING_MS", "100"),
        ],
    )
    .await;
    let key = key_of(&s, "support-bot", "ana").await;
    let t = "7b8efff798038103d269b633813fc60c";
    let body = serde_json::to_vec(&json_span(t, "eee19b7ec3c1b174", "")).unwrap();
    let (st, r) = otlp(&s, Some(&key), "application/json", body).await;
    assert_eq!(st, 200, "{r}");
    let (st, _) = s.get(&format!("/api/v1/traces/{t}")).await;
    assert_eq!(st, 200, "kept at first");
    eventually("the span to be swept", || async {
        (s.get(&format!("/api/v1/traces/{t}")).await.0 == 404).then_some(())
    })
    .await;
}

both_backends!(trace_retention, spans_are_forgotten_after_their_retention);

/// A chat completion through the gateway by `key`'s agent, in the caller's span when a
/// `traceparent` is given (as OpenTelemetry's HTTP instrumentations send it).
pub(crate) async fn chat(s: &TestServer, key: &str, traceparent: Option<&str>, content: &str) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(key)
        .json(&json!({"model": "mock/m", "messages": [{"role": "user", "content": content}]}));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The spans kept of one trace (none when nothing of it is kept).
async fn trace_spans(s: &TestServer, trace: &str) -> Vec<Value> {
    let (st, t) = s.get(&format!("/api/v1/traces/{trace}")).await;
    if st != 200 {
        return Vec::new();
    }
    t["spans"].as_array().cloned().unwrap_or_default()
}

/// Steward keeps its own spans beside an agent's: a gateway call made with the agent's
/// `traceparent` is a server span in the agent's trace with the `gen_ai` span under it, and a
/// managed run's model call is kept with its run, all read back through one trace.
async fn steward_spans_join_the_agents_trace(b: Backend) {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const AGENT_SPAN: &str = "b7ad6b7169203331";
    let upstream = crate::telemetry::mock_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let key = key_of(&s, "support-bot", "ana").await;
    // The agent's own span, exported as OpenTelemetry's SDK would.
    let body = serde_json::to_vec(&json_span(TRACE, AGENT_SPAN, "")).unwrap();
    let (st, r) = otlp(&s, Some(&key), "application/json", body).await;
    assert_eq!(st, 200, "{r}");
    // Its model call through the gateway, in that span (as HTTP instrumentations send it).
    chat(&s, &key, Some(&format!("00-{TRACE}-{AGENT_SPAN}-01")), "hi").await;

    let spans = eventually("Steward's spans in the agent's trace", || async {
        let spans = trace_spans(&s, TRACE).await;
        (spans.len() >= 3).then_some(spans)
    })
    .await;
    let named = |n: &str| {
        spans
            .iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("no span {n:?} in {spans:#?}"))
            .clone()
    };
    let agent = named("execute_tool search");
    assert_eq!(agent["sent_by"], "agent:support-bot");
    let server = named("POST /v1/chat/completions");
    assert_eq!(server["sent_by"], "steward");
    assert_eq!(server["kind"], "server");
    assert_eq!(server["parent_span_id"], AGENT_SPAN, "{server}");
    assert_eq!(server["service"], "steward");
    let call = named("chat mock/m");
    assert_eq!(call["sent_by"], "steward");
    assert_eq!(call["kind"], "client");
    assert_eq!(call["parent_span_id"], server["span_id"], "{call}");
    assert_eq!(call["attributes"]["gen_ai.operation.name"], "chat");
    assert_eq!(call["attributes"]["gen_ai.provider.name"], "mock");
    assert_eq!(call["attributes"]["gen_ai.usage.input_tokens"], 10);
    assert_eq!(call["attributes"]["gen_ai.usage.output_tokens"], 3);
    assert_eq!(call["attributes"]["agent"], "support-bot");
    assert!(call["end_ns"].as_i64() >= call["start_ns"].as_i64());

    // A call without a traceparent starts a trace of its own, kept too.
    chat(&s, &key, None, "again").await;
    // A managed run's model call, a syscall of its run, found by the trace its audit names.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: worker}\nspec:\n  model: mock/m\n  tools: [echo]\n").await;
    let run = s.start_run("worker", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    common::settled(&s).await;
    let records = common::audit_records(&s).await;
    let step = records
        .iter()
        .find(|r| r["run_id"] == run.as_str() && r["action"] == "llm.call")
        .expect("the run's model call audited")
        .clone();
    let trace = step["trace_id"].as_str().expect("a trace id").to_string();
    let spans = eventually("the run's spans", || async {
        let spans = trace_spans(&s, &trace).await;
        spans
            .iter()
            .any(|x| x["name"] == "chat mock/m")
            .then_some(spans)
    })
    .await;
    let chat = spans.iter().find(|x| x["name"] == "chat mock/m").unwrap();
    assert_eq!(chat["attributes"]["run_id"], run.as_str(), "{chat}");
    assert_eq!(chat["sent_by"], "steward");
    let (st, listed) = s.get("/api/v1/traces?limit=10").await;
    assert_eq!(st, 200, "{listed}");
    assert!(
        listed["traces"].as_array().unwrap().len() >= 3,
        "the agent's, the lone call's and the run's: {listed}"
    );
}

both_backends!(own_spans, steward_spans_join_the_agents_trace);

/// With `[telemetry] store_spans = false`, only what agents send is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_spans_can_be_left_out() {
    const TRACE: &str = "1af7651916cd43dd8448eb211c80319d";
    const AGENT_SPAN: &str = "c7ad6b7169203332";
    let upstream = crate::telemetry::mock_upstream().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_TELEMETRY__STORE_SPANS", "false"),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let key = key_of(&s, "support-bot", "ana").await;
    let body = serde_json::to_vec(&json_span(TRACE, AGENT_SPAN, "")).unwrap();
    assert_eq!(otlp(&s, Some(&key), "application/json", body).await.0, 200);
    chat(&s, &key, Some(&format!("00-{TRACE}-{AGENT_SPAN}-01")), "hi").await;
    // Kept spans are written within a second of ending; wait well past that.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let spans = trace_spans(&s, TRACE).await;
    assert_eq!(spans.len(), 1, "only the agent's: {spans:#?}");
}
