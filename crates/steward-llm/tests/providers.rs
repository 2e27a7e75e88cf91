//! The HTTP providers against real HTTP servers on loopback: tool calling both ways, and every
//! upstream failure — error status, garbage, a hang, a dead port — turned into a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use steward_llm::*;

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::text(Role::System, "sys"),
            Message::text(Role::User, "weather in Paris?"),
        ],
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }],
        max_tokens: Some(50),
    }
}

#[tokio::test]
async fn openai_tool_calls_round_trip() {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let url = serve(axum::Router::new().route(
        "/v1/chat/completions",
        post(move |h: HeaderMap, Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push((h, body));
                Json(json!({"model": "m-2024", "choices": [{"message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 7}}))
            }
        }),
    ))
    .await;
    let p =
        OpenAiProvider::new("oai", &format!("{url}/v1"), Some("sk-test".into()), 5_000).unwrap();
    let r = p.chat(&request()).await.unwrap();
    assert_eq!(r.tool_calls[0].name, "get_weather");
    assert_eq!(r.tool_calls[0].arguments, json!({"city": "Paris"}));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 7
        }
    );
    assert_eq!((r.provider.as_str(), r.model.as_str()), ("oai", "m-2024"));
    let (h, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(h["authorization"], "Bearer sk-test");
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_tokens"], 50);
    assert!(
        !format!("{p:?}").contains("sk-test"),
        "keys never appear in debug output"
    );
}

#[tokio::test]
async fn azure_style_base_urls_keep_their_query() {
    let url = serve(axum::Router::new().route(
        "/openai/deployments/d1/chat/completions",
        post(|q: axum::extract::RawQuery| async move {
            Json(json!({"choices": [{"message": {"content": q.0.unwrap_or_default()}}]}))
        }),
    ))
    .await;
    let p = OpenAiProvider::new(
        "az",
        &format!("{url}/openai/deployments/d1?api-version=2024-06-01"),
        None,
        5_000,
    )
    .unwrap();
    assert_eq!(
        p.chat(&request()).await.unwrap().content.as_deref(),
        Some("api-version=2024-06-01")
    );
}

#[tokio::test]
async fn anthropic_messages_with_tools() {
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let url = serve(axum::Router::new().route(
        "/v1/messages",
        post(move |h: HeaderMap, Json(body): Json<Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push((h, body));
                Json(json!({"model": "claude-x", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
                    "usage": {"input_tokens": 20, "output_tokens": 9}}))
            }
        }),
    ))
    .await;
    let p = AnthropicProvider::new("claude", &url, Some("ak-test".into()), 5_000).unwrap();
    let r = p.chat(&request()).await.unwrap();
    assert_eq!(r.content.as_deref(), Some("Let me check."));
    assert_eq!(r.tool_calls[0].id, "toolu_1");
    assert_eq!(r.tool_calls[0].arguments["city"], "Paris");
    assert_eq!(r.usage.output_tokens, 9);
    let (h, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(h["x-api-key"], "ak-test");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "sys");
    assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
}

#[tokio::test]
async fn upstream_failures_are_clear_and_bounded() {
    let url = serve(
        axum::Router::new()
            .route(
                "/err/chat/completions",
                post(|| async { (StatusCode::TOO_MANY_REQUESTS, "slow down") }),
            )
            .route(
                "/garbage/chat/completions",
                post(|| async { "<html>not json</html>" }),
            )
            .route(
                "/empty/chat/completions",
                post(|| async { Json(json!({"choices": []})) }),
            )
            .route(
                "/hang/chat/completions",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            ),
    )
    .await;
    let call = |path: &str, timeout: u64| {
        let p = OpenAiProvider::new("up", &format!("{url}/{path}"), None, timeout).unwrap();
        async move { p.chat(&request()).await.unwrap_err() }
    };
    let e = call("err", 5_000).await;
    assert!(
        matches!(e, Error::Status { status: 429, .. }) && e.is_transient(),
        "{e}"
    );
    assert!(e.to_string().contains("slow down"));
    let e = call("garbage", 5_000).await;
    assert!(
        matches!(e, Error::Garbage { .. }) && e.to_string().contains("not json"),
        "{e}"
    );
    let e = call("empty", 5_000).await;
    assert!(e.to_string().contains("choices[0]"), "{e}");
    let started = Instant::now();
    let e = call("hang", 300).await;
    assert!(
        matches!(
            e,
            Error::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout bounds the wait"
    );
    let dead = OpenAiProvider::new("up", "http://127.0.0.1:1/v1", None, 2_000).unwrap();
    let e = dead.chat(&request()).await.unwrap_err();
    assert!(
        matches!(e, Error::Connect { .. }) && e.to_string().contains("127.0.0.1:1"),
        "{e}"
    );
}

#[test]
fn routes_name_what_is_missing() {
    let providers = Providers::default();
    let spec: steward_types::AgentSpec =
        serde_json::from_value(json!({"model": "nowhere/gpt"})).unwrap();
    let e = providers.check_route(&spec).err().unwrap().to_string();
    assert!(e.contains("[llm.providers.nowhere]"), "{e}");
    let cfg: steward_types::config::LlmConfig = serde_json::from_value(json!({
        "timeout_ms": 1000, "providers": {"oai": {"kind": "openai", "base_url": "http://x", "api_key_env": "STEWARD_TEST_UNSET_KEY"}}
    }))
    .unwrap();
    let e = Providers::from_config(&cfg, |_| None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("STEWARD_TEST_UNSET_KEY"), "{e}");
}

#[tokio::test]
async fn anthropic_streams_as_openai_chunks() {
    use futures::StreamExt;
    let url = serve(axum::Router::new().route(
        "/v1/messages",
        post(|Json(body): Json<Value>| async move {
            assert_eq!(body["stream"], true);
            let events = [
                json!({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 9}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
                json!({"type": "message_stop"}),
            ];
            let text: String = events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect();
            ([("content-type", "text/event-stream")], text)
        }),
    ))
    .await;
    let p = AnthropicProvider::new("claude", &url, Some("ak".into()), 5_000).unwrap();
    let body = json!({"model": "smart", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let mut s = p.stream_openai(body, "claude-x").await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = s.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(content, "Hello");
    assert!(chunks
        .iter()
        .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("stop"))));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 2);
    assert!(text.ends_with("data: [DONE]\n\n"));
}
