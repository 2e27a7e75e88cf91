//! The Anthropic Messages API under `/v1/messages`: what the Anthropic SDKs, and the agents
//! built on them, speak. A request takes the gateway's one chat path (`Engine::gateway_chat_via`),
//! so it is identified, decided, budgeted, rate-limited, cached, recorded and audited exactly as
//! a chat completion is, on any deployment: an Anthropic deployment gets the request whole and
//! its answer, or stream, comes back unchanged; any other gets its translation onto chat
//! completions, translated back. Errors come in Anthropic's shape and status codes (which the
//! SDKs map to their exception types). `x-api-key` is accepted as the Steward key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use steward_engine::{Engine, GatewayReply};
use steward_llm::{NativeApi, NativeRequest};

use crate::openai::{content_text, json_object, principal, OaiError};
use crate::sse::DataLines;

/// An error as the Messages API gives it: `{"type": "error", "error": {"type", "message"}}`.
pub struct MessagesError {
    status: StatusCode,
    message: String,
    retry_after_s: Option<u64>,
}

impl MessagesError {
    fn invalid(message: impl Into<String>) -> Self {
        MessagesError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The error type the SDKs read, by status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
    }
}

impl From<OaiError> for MessagesError {
    fn from(e: OaiError) -> Self {
        MessagesError {
            status: e.status,
            message: e.message,
            retry_after_s: e.retry_after_s,
        }
    }
}

impl From<steward_engine::GatewayError> for MessagesError {
    fn from(e: steward_engine::GatewayError) -> Self {
        OaiError::from(e).into()
    }
}

impl IntoResponse for MessagesError {
    fn into_response(self) -> Response {
        let body =
            json!({"type": "error", "error": {"type": self.kind(), "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// The caller's credential as the gateway takes it: `x-api-key` (the Anthropic SDKs' header)
/// counts as a bearer key when no `Authorization` is given.
fn with_bearer(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    if !h.contains_key(header::AUTHORIZATION) {
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if let Some(v) = key.and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok()) {
            h.insert(header::AUTHORIZATION, v);
        }
    }
    h
}

/// The client's headers an Anthropic upstream reads (the API version and beta features),
/// passed on with a request passed through whole. Credentials never are.
fn passed_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    ["anthropic-version", "anthropic-beta"]
        .iter()
        .filter_map(|name| {
            let v = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), v.to_string()))
        })
        .collect()
}

/// `POST /v1/messages`.
pub async fn create(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, MessagesError> {
    let who = principal(&engine, &with_bearer(&headers)).await?;
    let req = json_object(&body)?;
    let chat = to_chat(&req, true).map_err(MessagesError::invalid)?;
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let native = NativeRequest {
        api: NativeApi::Messages,
        body: req,
        headers: passed_headers(&headers),
    };
    match engine.gateway().chat_via(&who, chat, native).await? {
        GatewayReply::Native(v) => Ok(Json(v).into_response()),
        GatewayReply::NativeStream(s) => Ok(crate::sse::response(
            s.map(|c| c.map_err(std::io::Error::other)),
        )),
        GatewayReply::Json(v) => Ok(Json(from_chat(&v, &model)).into_response()),
        GatewayReply::Stream(upstream) => {
            let events = futures::stream::unfold(
                (upstream, Events::new(model), false),
                |(mut up, mut ev, done)| async move {
                    if done {
                        return None;
                    }
                    let (out, done) = match up.next().await {
                        Some(Ok(bytes)) => (ev.feed(&bytes), false),
                        Some(Err(e)) => (ev.fail(&e.to_string()), true),
                        None => (ev.finish(), true),
                    };
                    Some((Ok::<_, std::io::Error>(Bytes::from(out)), (up, ev, done)))
                },
            );
            Ok(crate::sse::response(events))
        }
    }
}

/// `POST /v1/messages/count_tokens`: counted by the route's Anthropic deployment (decided as
/// a call of the model is, charged nothing); where the route has none, or it does not answer,
/// an estimate of about four characters a token of the system prompt, messages and tools.
pub async fn count_tokens(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, MessagesError> {
    let who = principal(&engine, &with_bearer(&headers)).await?;
    let req = json_object(&body)?;
    let chat = to_chat(&req, false).map_err(MessagesError::invalid)?;
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let native = NativeRequest {
        api: NativeApi::Messages,
        body: req,
        headers: passed_headers(&headers),
    };
    if let Some(n) = engine.gateway().count_tokens(&who, &model, &native).await? {
        return Ok(Json(json!({ "input_tokens": n })));
    }
    Ok(Json(json!({ "input_tokens": estimate_tokens(&chat) })))
}

/// About four characters a token, of what a chat request sends.
fn estimate_tokens(chat: &Value) -> usize {
    let mut chars = 0usize;
    for m in chat["messages"].as_array().into_iter().flatten() {
        chars += content_text(&m["content"], "\n").chars().count();
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            chars += c["function"].to_string().chars().count();
        }
    }
    chars += chat
        .get("tools")
        .map_or(0, |t| t.to_string().chars().count());
    chars.div_ceil(4).max(1)
}

/// A Messages API request as a chat completion request. `needs_max_tokens`: `create` requires
/// `max_tokens`; `count_tokens` does not take it.
pub fn to_chat(req: &Value, needs_max_tokens: bool) -> Result<Value, String> {
    let mut out = Map::new();
    let model = req["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or("model: required, a string")?;
    out.insert("model".into(), model.into());
    match req.get("max_tokens") {
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => {
                out.insert("max_tokens".into(), n.into());
            }
            _ => return Err(format!("max_tokens: a whole number of at least 1, not {v}")),
        },
        None if needs_max_tokens => return Err("max_tokens: required".into()),
        None => {}
    }
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
        Some(v) => return Err(format!("system: a string or text blocks, not {v}")),
    }
    let Some(list) = req["messages"].as_array().filter(|l| !l.is_empty()) else {
        return Err("messages: required, a non-empty array".into());
    };
    for (i, m) in list.iter().enumerate() {
        match m["role"].as_str() {
            Some("user") => user_turn(&m["content"], &mut messages)
                .map_err(|e| format!("messages[{i}].content: {e}"))?,
            Some("assistant") => messages.push(
                assistant_turn(&m["content"]).map_err(|e| format!("messages[{i}].content: {e}"))?,
            ),
            _ => return Err(format!("messages[{i}].role: user or assistant")),
        }
    }
    out.insert("messages".into(), messages.into());
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        let tools = tools.as_array().ok_or("tools: an array")?;
        let mut functions = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let name = t["name"]
                .as_str()
                .ok_or(format!("tools[{i}].name: required"))?;
            if t.get("type").is_some_and(|k| k != "custom") {
                return Err(format!(
                    "tools[{i}]: server tools ({}) are not offered through Steward; give custom tools with input_schema",
                    t["type"]
                ));
            }
            let schema = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .ok_or(format!("tools[{i}].input_schema: required, an object"))?;
            let mut f = json!({"name": name, "parameters": schema});
            if let Some(d) = t["description"].as_str() {
                f["description"] = d.into();
            }
            functions.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), functions.into());
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) {
        let chat_choice = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = choice["name"]
                    .as_str()
                    .ok_or("tool_choice.name: required with type tool")?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return Err("tool_choice.type: auto, any, tool or none".into()),
        };
        out.insert("tool_choice".into(), chat_choice);
        if choice["disable_parallel_tool_use"] == true {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|s| !s.is_null()) {
        let ok = stop
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("stop_sequences: an array of strings".into());
        }
        out.insert("stop".into(), stop.clone());
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = req.get(field).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(format!("{field}: a number"));
            }
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(user) = req.pointer("/metadata/user_id").and_then(Value::as_str) {
        out.insert("user".into(), user.into());
    }
    if req["stream"] == true {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// A user turn: its tool results first (each a `tool` message answering its call, as chat
/// requires them right after the assistant's calls), then what it says.
fn user_turn(content: &Value, out: &mut Vec<Value>) -> Result<(), String> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err("a string or an array of content blocks".into()),
    };
    let mut parts = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("text") => parts.push(json!({"type": "text", "text": b["text"]})),
            Some("image") => {
                let src = &b["source"];
                let url = match src["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src["media_type"].as_str().unwrap_or("image/png"),
                        src["data"].as_str().unwrap_or_default()
                    ),
                    Some("url") => src["url"].as_str().unwrap_or_default().to_string(),
                    _ => return Err(format!("[{i}].source: base64 or url")),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let id = b["tool_use_id"]
                    .as_str()
                    .ok_or(format!("[{i}].tool_use_id: required"))?;
                let mut text = content_text(&b["content"], "\n");
                if b["is_error"] == true {
                    text = format!("error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some("document") | Some("search_result") => {
                return Err(format!("[{i}]: {} blocks are not supported", b["type"]))
            }
            // Thinking and other model-side blocks carry nothing the upstream needs back.
            _ => {}
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An assistant turn: its text, and its tool uses as tool calls.
fn assistant_turn(content: &Value) -> Result<Value, String> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(b) => b,
        _ => return Err("a string or an array of content blocks".into()),
    };
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("text") => text.extend(b["text"].as_str()),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (b["id"].as_str(), b["name"].as_str()) else {
                    return Err(format!("[{i}]: a tool_use needs id and name"));
                };
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": b["input"].to_string()}}));
            }
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.join("").into() }});
    if !calls.is_empty() {
        m["tool_calls"] = calls.into();
    }
    Ok(m)
}

/// Why a chat completion stopped, as the Messages API says it.
fn stop_reason(finish: &Value) -> &'static str {
    match finish.as_str() {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id from a chat completion id, in the Messages API's form.
fn message_id(chat_id: &Value) -> String {
    let id = chat_id.as_str().unwrap_or("steward");
    format!("msg_{}", id.trim_start_matches("chatcmpl-"))
}

/// A chat completion as a Messages API message.
pub fn from_chat(resp: &Value, model: &str) -> Value {
    let choice = &resp["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": input}));
    }
    json!({
        "id": message_id(&resp["id"]),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(&choice["finish_reason"]),
        "stop_sequence": null,
        "usage": {
            "input_tokens": resp.pointer("/usage/prompt_tokens").and_then(Value::as_i64).unwrap_or(0),
            "output_tokens": resp.pointer("/usage/completion_tokens").and_then(Value::as_i64).unwrap_or(0),
        },
    })
}

/// Turns a chat completion's event stream into the Messages API's: `message_start`, each
/// content block's start, deltas and stop, then `message_delta` (stop reason, usage) and
/// `message_stop`.
pub struct Events {
    model: String,
    lines: DataLines,
    started: bool,
    /// The content block open now: its index, and whether it is text (else a tool use).
    open: Option<(usize, bool)>,
    blocks: usize,
    /// Chat tool call index → content block index.
    tools: std::collections::HashMap<u64, usize>,
    stop: &'static str,
    usage: (i64, i64),
    ended: bool,
}

fn event(kind: &str, data: Value) -> String {
    crate::sse::event(kind, &data)
}

impl Events {
    pub fn new(model: String) -> Self {
        Events {
            model,
            lines: DataLines::default(),
            started: false,
            open: None,
            blocks: 0,
            tools: Default::default(),
            stop: "end_turn",
            usage: (0, 0),
            ended: false,
        }
    }

    /// The events for the next bytes of the chat stream.
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        for data in self.lines.feed(bytes) {
            if data == "[DONE]" {
                out.push_str(&self.finish());
            } else if let Ok(chunk) = serde_json::from_str::<Value>(&data) {
                out.push_str(&self.chunk(&chunk));
            }
        }
        out
    }

    fn start(&mut self, chunk: &Value) -> String {
        if self.started {
            return String::new();
        }
        self.started = true;
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(&chunk["id"]), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        )
    }

    fn close(&mut self) -> String {
        match self.open.take() {
            Some((index, _)) => event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ),
            None => String::new(),
        }
    }

    fn open_block(&mut self, text: bool, block: Value) -> (usize, String) {
        let mut out = self.close();
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, text));
        out.push_str(&event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        (index, out)
    }

    fn chunk(&mut self, chunk: &Value) -> String {
        let mut out = self.start(chunk);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = (
                u["prompt_tokens"].as_i64().unwrap_or(0),
                u["completion_tokens"].as_i64().unwrap_or(0),
            );
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((i, true)) => i,
                _ => {
                    let (i, opened) = self.open_block(true, json!({"type": "text", "text": ""}));
                    out.push_str(&opened);
                    i
                }
            };
            out.push_str(&event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": t}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let n = call["index"].as_u64().unwrap_or(0);
            let index = match self.tools.get(&n) {
                Some(&i) => i,
                None => {
                    let block = json!({"type": "tool_use", "id": call["id"],
                        "name": call["function"]["name"], "input": {}});
                    let (i, opened) = self.open_block(false, block);
                    out.push_str(&opened);
                    self.tools.insert(n, i);
                    i
                }
            };
            if let Some(part) = call["function"]["arguments"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                out.push_str(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
        if !choice["finish_reason"].is_null() {
            self.stop = stop_reason(&choice["finish_reason"]);
        }
        out
    }

    /// The closing events (once), when the chat stream ends.
    pub fn finish(&mut self) -> String {
        if self.ended {
            return String::new();
        }
        self.ended = true;
        let mut out = self.start(&Value::Null);
        out.push_str(&self.close());
        out.push_str(&event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": null},
                "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1}}),
        ));
        out.push_str(&event("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// An `error` event: the upstream's stream broke off.
    pub fn fail(&mut self, message: &str) -> String {
        self.ended = true;
        event(
            "error",
            json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_two_turn_tool_conversation_translates_both_ways() {
        let req = json!({
            "model": "smart", "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}],
            "stop_sequences": ["END"], "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Let me see."},
                    {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"},
                    {"type": "text", "text": "and?"}]}
            ]
        });
        let chat = to_chat(&req, true).unwrap();
        assert_eq!(chat["max_tokens"], 100);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        let m = chat["messages"].as_array().unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            (m[3]["tool_call_id"].as_str(), m[3]["content"].as_str()),
            (Some("tu_1"), Some("sunny"))
        );

        let resp = json!({"id": "chatcmpl-9", "choices": [{"finish_reason": "tool_calls", "message": {
            "content": null, "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2}});
        let msg = from_chat(&resp, "smart");
        assert_eq!(msg["id"], "msg_9");
        assert_eq!(msg["stop_reason"], "tool_use");
        assert_eq!(msg["content"][0]["input"], json!({"city": "Rome"}));
        assert_eq!(msg["usage"], json!({"input_tokens": 7, "output_tokens": 2}));
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (req, field) in [
            (
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t"}]}),
                "input_schema",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "w"}]}),
                "server tools",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "stop_sequences": [1]}),
                "stop_sequences",
            ),
        ] {
            let e = to_chat(&req, true).unwrap_err();
            assert!(e.contains(field), "{req}: {e}");
        }
    }

    #[test]
    fn a_chat_stream_becomes_message_events_across_any_chunking() {
        let chunks = [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}),
        ];
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        // Cut into 7-byte pieces: events arrive split anywhere.
        let mut ev = Events::new("smart".into());
        let mut out = String::new();
        for piece in sse.as_bytes().chunks(7) {
            out.push_str(&ev.feed(piece));
        }
        out.push_str(&ev.finish());
        let kinds: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let data: Vec<Value> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(data[5]["content_block"]["id"], "c1");
        assert_eq!(data[9]["delta"]["stop_reason"], "tool_use");
        assert_eq!(data[9]["usage"]["output_tokens"], 4);
    }
}
