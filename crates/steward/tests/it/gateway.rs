//! The `/v1` gateway with the official `openai` Python SDK (installed by `.ci/run`) as the
//! client, and a mock OpenAI-compatible upstream on loopback, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use axum::routing::post;
use axum::Json;
use common::{key_of, Backend, TestServer};
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<Value>>>;

/// A mock upstream: echoes, calls `get_weather` when tools are offered, answers JSON when asked,
/// and streams "Hello" with usage.
async fn mock_upstream() -> (String, Seen) {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(body.clone());
                let usage = json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13});
                if body["stream"] == true {
                    let chunk = |delta: Value, finish: Value| {
                        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    };
                    let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
                    let mut events = if last["role"] == "tool" {
                        // A tool's answer: the text that uses it, in two pieces.
                        let text = format!("It is {} in Paris", last["content"].as_str().unwrap_or(""));
                        let (a, b) = text.split_at(6);
                        vec![
                            chunk(json!({"role": "assistant", "content": a}), Value::Null),
                            chunk(json!({"content": b}), Value::Null),
                            chunk(json!({}), json!("stop")),
                        ]
                    } else if body.pointer("/response_format/type").is_some() {
                        // A structured answer, in two pieces.
                        vec![
                            chunk(json!({"role": "assistant", "content": "{\"ok\""}), Value::Null),
                            chunk(json!({"content": ": true}"}), Value::Null),
                            chunk(json!({}), json!("stop")),
                        ]
                    } else if body.get("tools").is_some() {
                        // Tools offered: a call of get_weather, its arguments in two pieces.
                        vec![
                            chunk(json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_9",
                                "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\""}}]}), Value::Null),
                            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":\"Paris\"}"}}]}), Value::Null),
                            chunk(json!({}), json!("tool_calls")),
                        ]
                    } else {
                        vec![
                            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                            chunk(json!({"content": "Hel"}), Value::Null),
                            chunk(json!({"content": "lo"}), Value::Null),
                            chunk(json!({}), json!("stop")),
                        ]
                    };
                    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
                        events.push(json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}));
                    }
                    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                    text.push_str("data: [DONE]\n\n");
                    return ([("content-type", "text/event-stream")], text).into_response();
                }
                let msgs = body["messages"].as_array().unwrap();
                let last = msgs.last().unwrap();
                let message = if last["role"] == "tool" {
                    json!({"role": "assistant", "content": format!("It is {} in Paris", last["content"].as_str().unwrap())})
                } else if body.get("tools").is_some() {
                    json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
                } else if body.pointer("/response_format/type").is_some() {
                    json!({"role": "assistant", "content": "{\"ok\": true}"})
                } else {
                    {
                    // The text of the last turn: a string, or its text parts.
                    let said: String = match &last["content"] {
                        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
                        other => other.as_str().unwrap_or("").to_string(),
                    };
                    json!({"role": "assistant", "content": format!("echo: {said}")})
                }
                };
                let finish = if message.get("tool_calls").is_some() { "tool_calls" } else { "stop" };
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
                .into_response()
            }
        }),
    );
    let s3 = seen.clone();
    let app = app.route(
        "/v1/embeddings",
        post(move |Json(body): Json<Value>| {
            let s3 = s3.clone();
            async move {
                s3.lock().unwrap().push(body.clone());
                let inputs = body["input"].as_array().cloned().unwrap_or_else(|| vec![body["input"].clone()]);
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": [t.as_str().unwrap_or("").len() as f64, 0.5]}))
                    .collect();
                Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

async fn the_openai_sdk_works_unchanged(b: Backend) {
    let (upstream, seen) = mock_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__DEAD__KIND", "openai"),
            (
                "STEWARD_LLM__PROVIDERS__DEAD__BASE_URL",
                "http://127.0.0.1:1/v1",
            ),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"dead/gpt-x\", \"mock/gpt-mock\"]",
            ),
            (
                "STEWARD_LLM__ROUTES__EMBED__DEPLOYMENTS",
                "[\"mock/text-embed\"]",
            ),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
            ("STEWARD_LLM__PRICES__TEXT-EMBED__INPUT", "0.5"),
            ("STEWARD_LLM__PRICES__TEXT-EMBED__OUTPUT", "0.0"),
        ],
    )
    .await;
    // The notebook's agent attaches its calls to a run of the same owner's agent.
    for agent in ["notebook-agent", "host"] {
        let (st, e) = s
            .post(
                &format!("/api/v1/agents/{agent}/resume"),
                json!({"reason": "registered", "owner": "team-a"}),
            )
            .await;
        assert_eq!(st, 200, "{e}");
    }
    let (st, key) = s
        .post("/api/v1/keys", json!({"agent": "notebook-agent"}))
        .await;
    assert_eq!(st, 201, "{key}");
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: host}\nspec:\n  model: scripted\n  script:\n    - {delayMs: 20000, content: x}\n").await;
    let run = s.start_run("host", "x").await;

    // A token another agent of the same owner minted for the notebook's agent.
    let (st, e) = s
        .post(
            "/api/v1/agents/lead/resume",
            json!({"reason": "registered", "owner": "team-a"}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (_, lead) = s.post("/api/v1/keys", json!({"agent": "lead"})).await;
    let (st, minted) = s
        .post_as(
            lead["key"].as_str().unwrap(),
            "/v1/delegations",
            json!({"to": "notebook-agent", "models": ["smart"]}),
        )
        .await;
    assert_eq!(st, 201, "{minted}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", key["key"].as_str().unwrap())
        .env("STEWARD_RUN", &run)
        .env("STEWARD_TOKEN", minted["token"].as_str().unwrap())
        .output()
        .await
        .expect("python3 with the openai package (installed by .ci/run)");
    assert!(
        out.status.success(),
        "the openai SDK script failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );

    common::settled(&s).await;
    // The upstream saw the SDK's fields passed through, under the deployment's model name.
    let seen = seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|b| b["model"] == "gpt-mock" || b["model"] == "text-embed"));
    assert!(seen.iter().any(|b| b["tool_choice"] == "auto"));
    assert!(seen
        .iter()
        .any(|b| b["response_format"]["type"] == "json_object"));

    // Every call is on the record, attributed to the key's agent, with its usage.
    let (_, calls) = s.get("/api/v1/calls?agent=notebook-agent").await;
    let calls = calls["calls"].as_array().unwrap();
    let ok: Vec<&Value> = calls.iter().filter(|c| c["status"] == "ok").collect();
    assert_eq!(
        ok.len(),
        8,
        "seven calls and one under a delegated token: {calls:?}"
    );
    let embed = ok.iter().find(|c| c["model"] == "embed").unwrap();
    assert_eq!(
        (embed["deployment"].as_str(), embed["tokens_in"].as_i64()),
        (Some("mock/text-embed"), Some(3))
    );
    assert!(ok
        .iter()
        .filter(|c| c["model"] == "smart")
        .all(|c| c["deployment"] == "mock/gpt-mock"));
    let streamed = ok.iter().find(|c| c["stream"] == true).unwrap();
    assert_eq!(
        (
            streamed["tokens_in"].as_i64(),
            streamed["tokens_out"].as_i64()
        ),
        (Some(11), Some(2))
    );
    assert_eq!(ok.iter().filter(|c| c["run_id"] == run.as_str()).count(), 1);
    assert_eq!(calls.len(), 8, "requests refused before reaching an upstream (bad key, lone token, unknown model, malformed body or limit) record no call");

    // Costs: the usage above at the configured prices (dollars per million tokens).
    let (st, by_model) = s.get("/api/v1/costs?by=model").await;
    assert_eq!(st, 200, "{by_model}");
    let line = |key: &str| {
        by_model["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["key"] == key)
            .cloned()
            .unwrap()
    };
    let chat = line("mock/gpt-mock");
    assert_eq!(
        (
            chat["calls"].as_i64(),
            chat["tokens_in"].as_i64(),
            chat["tokens_out"].as_i64()
        ),
        (Some(7), Some(71), Some(20))
    );
    assert!(
        (chat["cost_usd"].as_f64().unwrap() - 111e-6).abs() < 1e-12,
        "{chat}"
    );
    assert!((line("mock/text-embed")["cost_usd"].as_f64().unwrap() - 1.5e-6).abs() < 1e-12);
    let (_, by_run) = s.get("/api/v1/costs?by=run").await;
    let run_line = by_run["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == run.as_str())
        .unwrap();
    assert_eq!(run_line["calls"], 1);
    let (st, bad) = s.get("/api/v1/costs?by=week").await;
    assert_eq!(
        (st, bad["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // LangChain's ChatOpenAI and OpenAIEmbeddings, with a key of their own.
    let (_, key) = s
        .post("/api/v1/keys", json!({"agent": "langchain-agent"}))
        .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/langchain_chatopenai.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("STEWARD_BASE", &s.url)
        .env("STEWARD_KEY", key["key"].as_str().unwrap())
        .output()
        .await
        .expect("python3 with langchain-openai (installed by .ci/run)");
    assert!(
        out.status.success(),
        "the LangChain script failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    common::settled(&s).await;
    let (_, calls) = s.get("/api/v1/calls?agent=langchain-agent").await;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(
        calls.len(),
        5,
        "invoke, two tool turns, a stream, embeddings: {calls:?}"
    );
    assert!(calls.iter().all(|c| c["status"] == "ok"), "{calls:?}");
}
both_backends!(
    the_openai_sdk_works_unchanged,
    the_openai_sdk_works_unchanged
);

/// What the mock Anthropic upstream's `/v1/messages/count_tokens` says any request takes.
const MOCK_COUNTED_TOKENS: i64 = 4242;

/// A mock Anthropic upstream (`/v1/messages`, and `count_tokens`) that behaves as `mock_upstream` does: echoes,
/// calls `get_weather` when tools are offered, answers a tool's result, streams "Hello" (or the
/// tool call, or the answer) with usage in `message_start` and `message_delta`.
async fn mock_anthropic() -> (String, Seen) {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let s3 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/messages/count_tokens",
            post(move |Json(body): Json<Value>| {
                s3.lock().unwrap().push(json!({"counted": body}));
                async { Json(json!({"input_tokens": MOCK_COUNTED_TOKENS})) }
            }),
        )
        .route(
        "/v1/messages",
        post(move |Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(body.clone());
                let last = body["messages"].as_array().unwrap().last().unwrap().clone();
                // Content is a string or blocks; a string is one text block.
                let blocks = match &last["content"] {
                    Value::String(t) => vec![json!({"type": "text", "text": t})],
                    other => other.as_array().cloned().unwrap_or_default(),
                };
                let result = blocks
                    .iter()
                    .find(|b| b["type"] == "tool_result")
                    .map(|b| b["content"].as_str().unwrap_or("").to_string());
                let said: String = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
                let stream = body["stream"] == true;
                let forced = body["tool_choice"]["name"].as_str().map(str::to_string);
                let (block, stop) = match result {
                    Some(r) => (json!({"type": "text", "text": format!("It is {r} in Paris")}), "end_turn"),
                    // Made to use one tool (structured output's, say): its input is {"ok": true}.
                    None if forced.is_some() => (
                        json!({"type": "tool_use", "id": "toolu_2", "name": forced, "input": {"ok": true}}),
                        "tool_use",
                    ),
                    None if body.get("tools").is_some() => (
                        json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}),
                        "tool_use",
                    ),
                    None if stream => (json!({"type": "text", "text": "Hello"}), "end_turn"),
                    None => (json!({"type": "text", "text": format!("echo: {said}")}), "end_turn"),
                };
                if !stream {
                    return Json(json!({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                        "content": [block], "stop_reason": stop, "stop_sequence": null,
                        "usage": {"input_tokens": 10, "output_tokens": 3}}))
                    .into_response();
                }
                let (start, deltas) = if block["type"] == "tool_use" {
                    let input = block["input"].to_string();
                    let (a, b) = input.split_at(input.len() / 2);
                    (
                        json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                        vec![json!({"type": "input_json_delta", "partial_json": a}),
                            json!({"type": "input_json_delta", "partial_json": b})],
                    )
                } else {
                    let text = block["text"].as_str().unwrap().to_string();
                    let (a, b) = text.split_at(3);
                    (
                        json!({"type": "text", "text": ""}),
                        vec![json!({"type": "text_delta", "text": a}), json!({"type": "text_delta", "text": b})],
                    )
                };
                let mut events = vec![
                    json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                        "content": [], "model": body["model"], "usage": {"input_tokens": 11, "output_tokens": 1}}}),
                    json!({"type": "content_block_start", "index": 0, "content_block": start}),
                ];
                events.extend(deltas.into_iter().map(|d| json!({"type": "content_block_delta", "index": 0, "delta": d})));
                events.push(json!({"type": "content_block_stop", "index": 0}));
                events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 2}}));
                events.push(json!({"type": "message_stop"}));
                let text: String = events
                    .iter()
                    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                    .collect();
                ([("content-type", "text/event-stream")], text).into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// A mock OpenAI upstream that serves the Responses API itself (`/v1/responses`), as
/// `mock_upstream` serves chat: echoes the last message, calls `get_weather` when tools are
/// offered, answers a tool's output, streams "Hello" (or the call) as the Responses events.
async fn mock_responses() -> (String, Seen) {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/v1/responses",
        post(move |Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(body.clone());
                let last = match &body["input"] {
                    Value::String(s) => json!({"type": "message", "role": "user", "content": s}),
                    input => input.as_array().unwrap().last().unwrap().clone(),
                };
                let said: String = match &last["content"] {
                    Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
                    other => other.as_str().unwrap_or("").to_string(),
                };
                let stream = body["stream"] == true;
                let item = if last["type"] == "function_call_output" {
                    let text = format!("It is {} in Paris", last["output"].as_str().unwrap());
                    json!({"type": "message", "id": "msg_up", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]})
                } else if body.get("tools").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
                    json!({"type": "function_call", "id": "fc_up", "call_id": "call_up", "name": "get_weather",
                        "arguments": "{\"city\":\"Paris\"}", "status": "completed"})
                } else {
                    let text = if body.pointer("/text/format/type").is_some_and(|t| t != "text") {
                        "{\"ok\": true}".to_string()
                    } else if stream {
                        "Hello".to_string()
                    } else {
                        format!("echo: {said}")
                    };
                    json!({"type": "message", "id": "msg_up", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]})
                };
                let response = |status: &str, output: Vec<Value>, usage: Value| json!({
                    "id": "resp_upstream", "object": "response", "created_at": 1, "status": status,
                    "model": body["model"], "output": output, "usage": usage, "error": null,
                    "incomplete_details": null, "instructions": body["instructions"],
                    "metadata": body.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                    "text": {"format": {"type": "text"}}, "store": body["store"]});
                if !stream {
                    let usage = json!({"input_tokens": 10, "output_tokens": 3, "total_tokens": 13});
                    return Json(response("completed", vec![item], usage)).into_response();
                }
                let mut events = vec![
                    json!({"type": "response.created", "response": response("in_progress", vec![], Value::Null)}),
                    json!({"type": "response.in_progress", "response": response("in_progress", vec![], Value::Null)}),
                ];
                if item["type"] == "message" {
                    let text = item["content"][0]["text"].as_str().unwrap().to_string();
                    let (a, b) = text.split_at(3);
                    let mut open = item.clone();
                    open["content"] = json!([]);
                    open["status"] = "in_progress".into();
                    events.push(json!({"type": "response.output_item.added", "output_index": 0, "item": open}));
                    events.push(json!({"type": "response.content_part.added", "item_id": "msg_up", "output_index": 0,
                        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
                    for d in [a, b] {
                        events.push(json!({"type": "response.output_text.delta", "item_id": "msg_up",
                            "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}));
                    }
                    events.push(json!({"type": "response.output_text.done", "item_id": "msg_up", "output_index": 0,
                        "content_index": 0, "text": text, "logprobs": []}));
                    events.push(json!({"type": "response.content_part.done", "item_id": "msg_up", "output_index": 0,
                        "content_index": 0, "part": item["content"][0]}));
                } else {
                    let mut open = item.clone();
                    open["arguments"] = "".into();
                    open["status"] = "in_progress".into();
                    events.push(json!({"type": "response.output_item.added", "output_index": 0, "item": open}));
                    for d in ["{\"city\"", ":\"Paris\"}"] {
                        events.push(json!({"type": "response.function_call_arguments.delta", "item_id": "fc_up",
                            "output_index": 0, "delta": d}));
                    }
                    events.push(json!({"type": "response.function_call_arguments.done", "item_id": "fc_up",
                        "output_index": 0, "arguments": item["arguments"]}));
                }
                events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
                let usage = json!({"input_tokens": 11, "output_tokens": 2, "total_tokens": 13});
                events.push(json!({"type": "response.completed", "response": response("completed", vec![item], usage)}));
                let text: String = events
                    .iter()
                    .enumerate()
                    .map(|(n, e)| {
                        let mut e = e.clone();
                        e["sequence_number"] = n.into();
                        format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
                    })
                    .collect();
                ([("content-type", "text/event-stream")], text).into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// Which API the mock deployment behind the `smart` route speaks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    OpenAi,
    Anthropic,
    /// OpenAI-compatible, serving the Responses API too (`responses_api: true`).
    OpenAiResponses,
}

/// The mock upstream of `kind`: its base URL as the provider takes it, what it saw, and the
/// provider kind to configure.
async fn upstream_of(kind: Kind) -> (String, Seen, &'static str) {
    match kind {
        Kind::OpenAi => {
            let (url, seen) = mock_upstream().await;
            (url, seen, "openai")
        }
        Kind::Anthropic => {
            let (url, seen) = mock_anthropic().await;
            (url, seen, "anthropic")
        }
        Kind::OpenAiResponses => {
            let (url, seen) = mock_responses().await;
            (url, seen, "openai")
        }
    }
}

/// The official Anthropic SDK, pointed at Steward, speaks the Messages API through the same
/// governed path: plain, tools over two turns, a stream, token counting and typed errors; every
/// model call recorded with its usage and priced.
async fn the_anthropic_sdk_works_unchanged(b: Backend, kind: Kind) {
    let (upstream, seen, provider) = upstream_of(kind).await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__DEAD__KIND", "openai"),
            (
                "STEWARD_LLM__PROVIDERS__DEAD__BASE_URL",
                "http://127.0.0.1:1/v1",
            ),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", provider),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"dead/gpt-x\", \"mock/gpt-mock\"]",
            ),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await;
    let key = key_of(&s, "claude-agent", "team-a").await;
    let counted = MOCK_COUNTED_TOKENS.to_string();
    let mut env = vec![("STEWARD_KEY", key.as_str())];
    if kind == Kind::Anthropic {
        env.push(("COUNTED_TOKENS", &counted));
    }
    python(&s, "anthropic_sdk.py", &env).await;

    common::settled(&s).await;
    // The system prompt and stop sequences reached the upstream in its own terms.
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|b| match kind {
            Kind::OpenAi =>
                b["messages"][0] == json!({"role": "system", "content": "You are terse."})
                    && b["stop"] == json!(["END"]),
            Kind::Anthropic =>
                b["system"] == "You are terse." && b["stop_sequences"] == json!(["END"]),
            Kind::OpenAiResponses => unreachable!("a Messages test"),
        }),
        "{seen:?}"
    );
    let image = match kind {
        Kind::OpenAi => {
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        }
        Kind::Anthropic => {
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
        }
        Kind::OpenAiResponses => unreachable!("a Messages test"),
    };
    assert!(
        seen.iter().any(|b| b["messages"][0]["content"][1] == image),
        "{seen:?}"
    );
    // Tokens were counted by an Anthropic deployment, with its own model name, and by no other.
    let counted: Vec<&Value> = seen.iter().filter_map(|b| b.get("counted")).collect();
    match kind {
        Kind::Anthropic => assert!(
            counted.len() == 1 && counted[0]["model"] == "gpt-mock",
            "{counted:?}"
        ),
        _ => assert!(counted.is_empty(), "{counted:?}"),
    }
    // An Anthropic deployment gets the request whole, with what only its API carries (top_k);
    // another gets the translation, which has no place for it.
    let passed_whole = seen.iter().any(|b| b["top_k"] == 5);
    assert_eq!(passed_whole, kind == Kind::Anthropic, "{seen:?}");
    // Every model call is on the record with its usage (the stream's too), and priced.
    let (_, calls) = s.get("/api/v1/calls?agent=claude-agent").await;
    let calls = calls["calls"].as_array().unwrap();
    let ok: Vec<&Value> = calls.iter().filter(|c| c["status"] == "ok").collect();
    assert_eq!(
        ok.len(),
        5,
        "plain, an image, two tool turns, one stream: {calls:?}"
    );
    assert!(ok.iter().all(|c| c["deployment"] == "mock/gpt-mock"));
    let streamed = ok.iter().find(|c| c["stream"] == true).unwrap();
    assert_eq!(
        (
            streamed["tokens_in"].as_i64(),
            streamed["tokens_out"].as_i64()
        ),
        (Some(11), Some(2))
    );
    assert_eq!(calls.len(), 5, "refused requests record no call: {calls:?}");
    let (_, by_agent) = s.get("/api/v1/costs?by=agent").await;
    let line = by_agent["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "claude-agent")
        .cloned()
        .unwrap();
    // 4 × (10 in, 3 out) + (11 in, 2 out) at $1 / $2 per million: $64 + $15 per million.
    assert_eq!(
        (line["tokens_in"].as_i64(), line["tokens_out"].as_i64()),
        (Some(51), Some(14))
    );
    assert!(
        (line["cost_usd"].as_f64().unwrap() - 79e-6).abs() < 1e-12,
        "{line}"
    );
}

async fn the_anthropic_sdk_over_openai(b: Backend) {
    the_anthropic_sdk_works_unchanged(b, Kind::OpenAi).await
}
async fn the_anthropic_sdk_over_anthropic(b: Backend) {
    the_anthropic_sdk_works_unchanged(b, Kind::Anthropic).await
}
both_backends!(
    the_anthropic_sdk_over_an_openai_deployment,
    the_anthropic_sdk_over_openai
);
both_backends!(
    the_anthropic_sdk_over_an_anthropic_deployment,
    the_anthropic_sdk_over_anthropic
);

/// A Messages answer passed through from an Anthropic deployment is cached as it came, and
/// served from the cache in the Messages API; a chat completion asking the same is answered in
/// its own API, never with the cached Messages body.
async fn passed_through_answers_are_cached_in_their_own_api(b: Backend) {
    let (upstream, seen) = mock_anthropic().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "anthropic"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"mock/claude-mock\"]",
            ),
            ("STEWARD_LLM__ROUTES__SMART__CACHE_TTL_MS", "60000"),
        ],
    )
    .await;
    let key = key_of(&s, "cached-agent", "team-a").await;
    let ask = |path: &'static str, body: Value| {
        let (s, key) = (&s, key.clone());
        async move {
            let r = s
                .http
                .post(format!("{}{path}", s.url))
                .header("x-api-key", key.as_str())
                .bearer_auth(key.as_str())
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let message = json!({"model": "smart", "max_tokens": 50, "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]});
    let (st, first) = ask("/v1/messages", message.clone()).await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(first["type"], "message", "{first}");
    let (st, again) = ask("/v1/messages", message).await;
    assert_eq!((st, &again), (200, &first));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the second came from the cache"
    );
    let chat = json!({"model": "smart", "max_tokens": 50, "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]});
    let (st, c) = ask("/v1/chat/completions", chat).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "chat.completion", "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "echo: hi");
}
both_backends!(
    passed_through_answers_are_cached_in_their_own_api,
    passed_through_answers_are_cached_in_their_own_api
);

/// Runs a Python script of the SDK tests with the server's URL and `env`; fails with its output.
async fn python(s: &TestServer, script: &str, env: &[(&str, &str)]) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .env("STEWARD_BASE", &s.url)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("python3 with the SDKs .ci/run installs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}

/// The Responses API, driven by the `openai` SDK's `responses` (create, stream, tools,
/// structured output, `previous_response_id`, retrieve, input items, delete, `store: false`,
/// another owner kept out) and by the OpenAI Agents SDK's default path (`Runner.run` and
/// `Runner.run_streamed` with a function tool): every model call on the record, priced.
async fn the_responses_api_serves_the_openai_and_agents_sdks(b: Backend, kind: Kind) {
    let (upstream, seen, provider) = upstream_of(kind).await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", provider),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            (
                "STEWARD_LLM__PROVIDERS__MOCK__RESPONSES_API",
                if kind == Kind::OpenAiResponses {
                    "true"
                } else {
                    "false"
                },
            ),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"mock/gpt-mock\"]",
            ),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await;
    let key = key_of(&s, "resp-agent", "team-a").await;
    let other = key_of(&s, "stranger", "team-b").await;
    python(
        &s,
        "openai_responses.py",
        &[("STEWARD_KEY", &key), ("STEWARD_OTHER_KEY", &other)],
    )
    .await;
    let agents_key = key_of(&s, "agents-sdk", "team-a").await;
    python(&s, "openai_agents_sdk.py", &[("STEWARD_KEY", &agents_key)]).await;

    common::settled(&s).await;
    let seen = seen.lock().unwrap().clone();
    // previous_response_id: the upstream saw the earlier turn before the new one; the first
    // request's instructions are its own, not carried over.
    let text = |t: &str| json!([{"type": "text", "text": t}]);
    let continued = match kind {
        Kind::OpenAi => json!([{"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "echo: hi there"},
            {"role": "user", "content": "and again"}]),
        Kind::Anthropic => json!([{"role": "user", "content": text("hi there")},
            {"role": "assistant", "content": text("echo: hi there")},
            {"role": "user", "content": text("and again")}]),
        Kind::OpenAiResponses => json!([{"type": "message", "role": "user", "content": "hi there"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "echo: hi there"}]},
            {"type": "message", "role": "user", "content": "and again"}]),
    };
    let conversation = |b: &Value| match kind {
        Kind::OpenAiResponses => b["input"].clone(),
        _ => b["messages"].clone(),
    };
    assert!(
        seen.iter().any(|b| conversation(b) == continued),
        "{seen:?}"
    );
    // The output limit reaches every kind; a JSON schema, the kinds that take one.
    assert!(
        seen.iter().any(|b| match kind {
            Kind::OpenAi =>
                b["max_tokens"] == 64 && b["response_format"]["json_schema"]["name"] == "verdict",
            Kind::Anthropic => b["max_tokens"] == 64,
            Kind::OpenAiResponses =>
                b["max_output_tokens"] == 64 && b["text"]["format"]["name"] == "verdict",
        }),
        "{seen:?}"
    );
    // Passed through whole, a request keeps nothing upstream: the conversation is Steward's.
    if kind == Kind::OpenAiResponses {
        assert!(
            seen.iter()
                .all(|b| b["store"] == false && b.get("previous_response_id").is_none()),
            "{seen:?}"
        );
    }

    let calls = |agent: &str| {
        let s = &s;
        let agent = agent.to_string();
        async move {
            let (_, c) = s.get(&format!("/api/v1/calls?agent={agent}")).await;
            c["calls"].as_array().unwrap().clone()
        }
    };
    let mine = calls("resp-agent").await;
    assert!(mine.iter().all(|c| c["status"] == "ok"), "{mine:?}");
    assert_eq!(
        mine.len(),
        10,
        "requests refused before the gateway record no call: {mine:?}"
    );
    let streamed: Vec<&Value> = mine.iter().filter(|c| c["stream"] == true).collect();
    assert_eq!(streamed.len(), 3);
    assert!(
        streamed.iter().all(|c| c["tokens_out"].as_i64() == Some(2)),
        "{streamed:?}"
    );
    assert!(calls("stranger").await.is_empty());
    let agents = calls("agents-sdk").await;
    assert_eq!(agents.len(), 4, "two runs of two turns: {agents:?}");
    assert_eq!(agents.iter().filter(|c| c["stream"] == true).count(), 2);
    let (_, by_agent) = s.get("/api/v1/costs?by=agent").await;
    let line = by_agent["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "resp-agent")
        .cloned()
        .unwrap();
    assert_eq!(line["calls"], 10, "{line}");
    assert!(line["cost_usd"].as_f64().unwrap() > 0.0, "{line}");
    // Metrics tell the Responses API's calls from the others: 10 here, 4 from the Agents SDK.
    let text = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            r#"steward_gateway_calls_total{op="chat",outcome="ok",api="responses"}"#
        ),
        14.0,
        "{text}"
    );
}

async fn the_responses_api_over_openai(b: Backend) {
    the_responses_api_serves_the_openai_and_agents_sdks(b, Kind::OpenAi).await
}
async fn the_responses_api_over_anthropic(b: Backend) {
    the_responses_api_serves_the_openai_and_agents_sdks(b, Kind::Anthropic).await
}
async fn the_responses_api_passed_through(b: Backend) {
    the_responses_api_serves_the_openai_and_agents_sdks(b, Kind::OpenAiResponses).await
}
both_backends!(
    the_responses_api_passed_through_to_an_upstream_that_speaks_it,
    the_responses_api_passed_through
);
both_backends!(
    the_responses_api_over_an_openai_deployment,
    the_responses_api_over_openai
);
both_backends!(
    the_responses_api_over_an_anthropic_deployment,
    the_responses_api_over_anthropic
);

/// An upstream answering 503 to everything, counting requests; and one that answers 429 with
/// `Retry-After: 0` to every other request.
async fn troubled_upstreams() -> (String, String, Arc<Mutex<u32>>) {
    let failing_hits: Arc<Mutex<u32>> = Default::default();
    let h = failing_hits.clone();
    let flaky_calls: Arc<Mutex<u32>> = Default::default();
    let app = axum::Router::new()
        .route(
            "/failing/v1/chat/completions",
            post(move || {
                let h = h.clone();
                async move {
                    *h.lock().unwrap() += 1;
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                }
            }),
        )
        .route(
            "/flaky/v1/chat/completions",
            post(move |Json(body): Json<Value>| {
                let f = flaky_calls.clone();
                async move {
                    let n = {
                        let mut n = f.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    if n % 2 == 1 {
                        return (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "slow down").into_response();
                    }
                    Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "after a retry"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
                    .into_response()
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (
        format!("{base}/failing/v1"),
        format!("{base}/flaky/v1"),
        failing_hits,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deployments_are_retried_then_skipped() {
    let (mock, _) = mock_upstream().await;
    let (failing, flaky, failing_hits) = troubled_upstreams().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_LLM__PROVIDERS__FAILING__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__FAILING__BASE_URL", &failing),
            ("STEWARD_LLM__PROVIDERS__FLAKY__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__FLAKY__BASE_URL", &flaky),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &mock),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"failing/m\", \"mock/gpt-mock\"]",
            ),
            ("STEWARD_LLM__RETRIES", "2"),
            ("STEWARD_LLM__RETRY_BASE_MS", "1"),
            ("STEWARD_LLM__BREAKER_FAILURES", "3"),
            ("STEWARD_LLM__BREAKER_COOLDOWN_MS", "600000"),
        ],
    )
    .await;
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "resilient"})).await;
    let key = key["key"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let ask = |model: &'static str| {
        let (http, key, url) = (
            http.clone(),
            key.clone(),
            format!("{}/v1/chat/completions", s.url),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for _ in 0..10 {
        let (st, body) = ask("smart").await;
        assert_eq!(
            st, 200,
            "the alias falls back to the healthy deployment: {body}"
        );
        assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
    }
    assert_eq!(
        *failing_hits.lock().unwrap(),
        3,
        "one try and two retries opened the circuit; later calls skipped it"
    );

    // A managed agent naming the alias takes the same path: same router, same breaker.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: routed}\nspec:\n  model: smart\n").await;
    let run = s.start_run("routed", "from a managed run").await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["result"], "echo: from a managed run", "{r}");
    assert_eq!(
        *failing_hits.lock().unwrap(),
        3,
        "the open circuit is skipped by managed runs too"
    );

    let (st, body) = ask("flaky/m").await;
    assert_eq!(
        (st, body["choices"][0]["message"]["content"].as_str()),
        (200, Some("after a retry")),
        "a 429 with Retry-After is retried: {body}"
    );
}

/// One sample from a Prometheus text exposition, by its full name and labels.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_steward_s_time_from_the_upstream_s() {
    // An upstream that takes a whole second to answer.
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_LLM__PROVIDERS__SLOW__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__SLOW__BASE_URL", &url),
        ],
    )
    .await;
    let (_, key) = s.post("/api/v1/keys", json!({"agent": "measured"})).await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{}/v1/chat/completions", s.url))
            .bearer_auth(key["key"].as_str().unwrap())
            .json(&json!({"model": "slow/m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&json!({"model": "nowhere/m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: local}\nspec:\n  model: scripted\n  script: [{content: done}]\n").await;
    let run = s.start_run("local", "x").await;
    s.wait_run(&run).await;

    let r = http.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let ok = r#"steward_gateway_calls_total{op="chat",outcome="ok",api="chat_completions"}"#;
    assert_eq!(sample(&text, ok), 2.0);
    assert_eq!(
        sample(
            &text,
            r#"steward_gateway_calls_total{op="chat",outcome="error",api="chat_completions"}"#
        ),
        1.0
    );
    let upstream = sample(&text, r#"steward_gateway_upstream_seconds_sum{op="chat"}"#);
    let added = sample(&text, r#"steward_gateway_added_seconds_sum{op="chat"}"#);
    assert!(upstream >= 2.0, "two one-second answers: {upstream}");
    assert!(
        added < upstream,
        "the upstream's second is not counted as Steward's: added {added}, upstream {upstream}"
    );
    assert_eq!(
        sample(&text, r#"steward_gateway_added_seconds_count{op="chat"}"#),
        3.0
    );
    assert!(
        sample(
            &text,
            r#"steward_kernel_step_added_seconds_count{kind="model"}"#
        ) >= 1.0
    );
}
