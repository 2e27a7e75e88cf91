//! A managed agent given search instead of a fixed list (`spec.toolSearch`): the model is
//! offered `tools_search` and `tools_describe` only, finds a tool, loads its schema, and calls
//! it — under the name model APIs accept (`wx__getWeather` for `wx.getWeather`). The model is a
//! mock OpenAI-compatible server on loopback that answers from a script and keeps every request
//! it was sent, so the test sees exactly which tools were offered at each step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

/// The scripted model's answers, in order: search, describe, call, answer.
fn answer(n: usize) -> Value {
    let call = |name: &str, args: Value| {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{n}"), "type": "function",
            "function": {"name": name, "arguments": args.to_string()}}]})
    };
    let message = match n {
        0 => call(
            "tools_search",
            json!({"query": "current weather in a city"}),
        ),
        1 => call("tools_describe", json!({"names": ["wx.getWeather"]})),
        2 => call("wx__getWeather", json!({"city": "Oslo"})),
        _ => json!({"role": "assistant", "content": "It is sunny in Oslo."}),
    };
    let finish = if n < 3 { "tool_calls" } else { "stop" };
    json!({"id": format!("c{n}"), "object": "chat.completion", "created": 1, "model": "m1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

async fn scripted_model() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = Router::new().route(
        "/v1/chat/completions",
        post({
            let seen = seen.clone();
            move |Json(body): Json<Value>| async move {
                let mut s = seen.lock().unwrap();
                s.push(body);
                Json(answer(s.len() - 1))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// A weather API with three operations, serving nothing but JSON.
async fn weather_api() -> String {
    let app = Router::new()
        .route(
            "/wx/weather/{city}",
            get(|Path(city): Path<String>| async move { Json(json!({"city": city, "sky": "sunny"})) }),
        )
        .route(
            "/wx/forecast/{city}",
            get(|Path(city): Path<String>| async move { Json(json!({"city": city, "days": []})) }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wx", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

fn offered(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn an_agent_given_search_loads_only_the_schemas_it_needs(b: Backend) {
    let (model_url, seen) = scripted_model().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &model_url),
        ],
    )
    .await;
    let doc = json!({"openapi": "3.1.0", "paths": {
        "/weather/{city}": {"get": {"operationId": "getWeather", "summary": "The current weather in a city.",
            "parameters": [{"name": "city", "in": "path", "required": true, "schema": {"type": "string"}}]}},
        "/forecast/{city}": {"get": {"operationId": "getForecast", "summary": "The forecast for the next days.",
            "parameters": [{"name": "city", "in": "path", "required": true, "schema": {"type": "string"}}]}},
        "/cities/{city}": {"delete": {"operationId": "deleteCity", "summary": "Forgets a city.",
            "parameters": [{"name": "city", "in": "path", "required": true, "schema": {"type": "string"}}]}}}});
    let (st, e) = s
        .put(
            "/api/v1/openapi/wx",
            json!({"document": doc, "base_url": weather_api().await}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = s
        .put_policies(
            r#"@id("think") permit (principal is Steward::Run, action == Steward::Action::"llm.call", resource);
@id("search") permit (principal is Steward::Run, action == Steward::Action::"tool.call", resource == Steward::Tool::"tools_search");
@id("describe") permit (principal is Steward::Run, action == Steward::Action::"tool.call", resource == Steward::Tool::"tools_describe");
@id("weather") permit (principal is Steward::Run, action == Steward::Action::"tool.call", resource == Steward::Tool::"wx.getWeather");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: forecaster}\nspec:\n  model: mock/m1\n  tools: [wx.*, echo]\n  toolSearch: true\n").await;
    let run = s
        .start_run("forecaster", "What is the weather in Oslo?")
        .await;
    let done = s.wait_run(&run).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], "It is sunny in Oslo.", "{done}");

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert_eq!(
        offered(&requests[0]),
        ["tools_search", "tools_describe"],
        "no schema up front"
    );
    let search_result = requests[1]["messages"].to_string();
    assert!(search_result.contains("wx.getWeather"), "{search_result}");
    assert!(
        !search_result.contains("inputSchema"),
        "search gives names and descriptions, not schemas: {search_result}"
    );
    assert_eq!(offered(&requests[1]), ["tools_search", "tools_describe"]);
    assert_eq!(
        offered(&requests[2]),
        ["tools_search", "tools_describe", "wx__getWeather"],
        "the described tool joins, under a name model APIs accept"
    );
    let schema = &requests[2]["tools"][2]["function"]["parameters"];
    assert_eq!(schema["required"], json!(["city"]), "{schema}");
    assert!(
        requests[3]["messages"].to_string().contains("sunny"),
        "the tool's answer reached the model"
    );

    // Each meta-tool call is a journaled, decided step like any other.
    let journal = s.journal(&run).await;
    for tool in ["tools_search", "tools_describe", "wx.getWeather"] {
        assert!(
            journal
                .iter()
                .any(|e| e["kind"] == "tool" && e["name"] == tool && e["phase"] == "outcome"),
            "{tool}: {journal:?}"
        );
    }
}
both_backends!(
    an_agent_given_search_loads_only_the_schemas_it_needs,
    an_agent_given_search_loads_only_the_schemas_it_needs
);
