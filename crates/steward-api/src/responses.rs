//! The OpenAI Responses API under `/v1/responses`: the default of the OpenAI Agents SDK and of
//! `client.responses.create`. A request takes the gateway's one chat path
//! (`Engine::gateway_chat_via`) — identified, decided, budgeted, rate-limited, cached, recorded
//! and audited as a chat completion is, on any deployment. A deployment that speaks Responses
//! itself gets the request whole (`responses_native`); any other its translation onto chat
//! completions, and the answer (or the stream, as the Responses API's events) is translated back. Conversation state is Steward's: a stored response
//! keeps the conversation it ends, so `previous_response_id` continues it; it is readable and
//! deletable only by callers of the same owner. `store: false` keeps nothing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use steward_engine::handles::responses::NewResponse;
use steward_engine::{Engine, GatewayReply, Principal};
use steward_llm::{NativeApi, NativeRequest};
use steward_store::StoredResponse;

use crate::openai::{content_text, json_object, principal, OaiError};
use crate::responses_native;
use crate::sse::{event, DataLines};

fn invalid(message: impl Into<String>) -> OaiError {
    OaiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        message,
    )
}

fn not_found(what: &str) -> OaiError {
    OaiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("{what} not found"),
    )
}

fn store_failed(e: steward_store::Error) -> OaiError {
    tracing::error!(error = %e, "the responses store failed");
    OaiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "store_unavailable",
        "the response store cannot be reached now; nothing was saved, try again",
    )
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A request as the chat path takes it: the chat body, the input items (ids given), and the
/// messages they add to the conversation.
pub struct Translated {
    pub chat: Value,
    pub items: Vec<Value>,
    pub added: Vec<Value>,
}

/// Input items as chat messages: consecutive function calls become one assistant message.
fn messages_of(items: &[Value]) -> Result<Vec<Value>, String> {
    let mut out: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => {
                let role = match item["role"].as_str() {
                    Some("developer") | Some("system") => "system",
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    _ => {
                        return Err(format!(
                            "input[{i}].role: user, assistant, system or developer"
                        ))
                    }
                };
                let content = match &item["content"] {
                    Value::String(s) => Value::String(s.clone()),
                    Value::Array(parts) if role == "user" => {
                        let mut chat_parts = Vec::new();
                        for (j, p) in parts.iter().enumerate() {
                            match p["type"].as_str() {
                                Some("input_text") | Some("output_text") | Some("text") => {
                                    chat_parts.push(json!({"type": "text", "text": p["text"]}))
                                }
                                Some("input_image") => {
                                    let url = p["image_url"].as_str().ok_or(format!(
                                        "input[{i}].content[{j}].image_url: required (file ids are not offered)"
                                    ))?;
                                    chat_parts.push(
                                        json!({"type": "image_url", "image_url": {"url": url}}),
                                    );
                                }
                                other => {
                                    return Err(format!(
                                        "input[{i}].content[{j}].type: {other:?} is not offered"
                                    ))
                                }
                            }
                        }
                        Value::Array(chat_parts)
                    }
                    Value::Array(_) => Value::String(content_text(&item["content"], "")),
                    _ => return Err(format!("input[{i}].content: a string or an array of parts")),
                };
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (item["call_id"].as_str(), item["name"].as_str())
                else {
                    return Err(format!(
                        "input[{i}]: a function_call needs call_id and name"
                    ));
                };
                let call = json!({"id": call_id, "type": "function", "function": {
                    "name": name, "arguments": item["arguments"].as_str().unwrap_or("{}")}});
                match out.last_mut() {
                    Some(m) if m["role"] == "assistant" && m.get("tool_calls").is_some() => {
                        if let Some(calls) = m["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let call_id = item["call_id"]
                    .as_str()
                    .ok_or(format!("input[{i}].call_id: required"))?;
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": content_text(&item["output"], "")}));
            }
            // Reasoning carries nothing a chat upstream takes back.
            "reasoning" => {}
            other => return Err(format!("input[{i}].type: {other:?} is not offered")),
        }
    }
    Ok(out)
}

/// A Responses request as a chat completion request, continuing `previous` (the stored
/// conversation of `previous_response_id`, if given).
pub fn to_chat(req: &Value, previous: &[Value]) -> Result<Translated, String> {
    let mut out = Map::new();
    let model = req["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or("model: required, a string")?;
    out.insert("model".into(), model.into());
    let items: Vec<Value> = match &req["input"] {
        Value::String(s) => vec![json!({"type": "message", "role": "user", "content": s})],
        Value::Array(a) if !a.is_empty() => a.clone(),
        _ => return Err("input: required, a string or a non-empty array of items".into()),
    };
    let added = messages_of(&items)?;
    let mut messages = Vec::new();
    // Instructions are this request's only: a continued conversation does not carry them over.
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(v) => return Err(format!("instructions: a string, not {v}")),
    }
    messages.extend(previous.iter().cloned());
    messages.extend(added.iter().cloned());
    out.insert("messages".into(), messages.into());
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        let tools = tools.as_array().ok_or("tools: an array")?;
        let mut functions = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t["type"] != "function" {
                return Err(format!(
                    "tools[{i}]: {} tools are not offered through Steward; give function tools",
                    t["type"]
                ));
            }
            let name = t["name"]
                .as_str()
                .ok_or(format!("tools[{i}].name: required"))?;
            let mut f = json!({"name": name, "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))});
            if let Some(d) = t["description"].as_str() {
                f["description"] = d.into();
            }
            if let Some(s) = t["strict"].as_bool() {
                f["strict"] = s.into();
            }
            functions.push(json!({"type": "function", "function": f}));
        }
        if !functions.is_empty() {
            out.insert("tools".into(), functions.into());
        }
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) {
        let chat_choice = match choice {
            Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => {
                choice.clone()
            }
            Value::Object(_) if choice["type"] == "function" => {
                let name = choice["name"]
                    .as_str()
                    .ok_or("tool_choice.name: required")?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return Err("tool_choice: auto, none, required or {type: function, name}".into()),
        };
        out.insert("tool_choice".into(), chat_choice);
    }
    if let Some(format) = req.pointer("/text/format").filter(|f| !f.is_null()) {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let name = format["name"]
                    .as_str()
                    .ok_or("text.format.name: required")?;
                let schema = format
                    .get("schema")
                    .filter(|s| s.is_object())
                    .ok_or("text.format.schema: required, an object")?;
                let mut js = json!({"name": name, "schema": schema});
                if let Some(s) = format["strict"].as_bool() {
                    js["strict"] = s.into();
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            _ => return Err("text.format.type: text, json_object or json_schema".into()),
        }
    }
    if let Some(v) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        match v.as_u64() {
            Some(n) if n >= 1 => {
                out.insert("max_tokens".into(), n.into());
            }
            _ => {
                return Err(format!(
                    "max_output_tokens: a whole number of at least 1, not {v}"
                ))
            }
        }
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = req.get(field).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(format!("{field}: a number"));
            }
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(p) = req.get("parallel_tool_calls").and_then(Value::as_bool) {
        if out.contains_key("tools") {
            out.insert("parallel_tool_calls".into(), p.into());
        }
    }
    if let Some(u) = req["user"].as_str() {
        out.insert("user".into(), u.into());
    }
    if let Some(m) = req.get("metadata").filter(|m| !m.is_null()) {
        let ok = m.as_object().is_some_and(|o| {
            o.len() <= 16
                && o.values()
                    .all(|v| v.as_str().is_some_and(|s| s.len() <= 512))
        });
        if !ok {
            return Err("metadata: at most 16 string values of at most 512 characters".into());
        }
    }
    if req["stream"] == true {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let items = items
        .into_iter()
        .map(|mut it| {
            if it.get("id").is_none() {
                let prefix = match it["type"].as_str() {
                    Some("function_call") => "fc",
                    Some("function_call_output") => "fco",
                    _ => "msg",
                };
                it["id"] = new_id(prefix).into();
            }
            if it.get("type").is_none() {
                it["type"] = "message".into();
            }
            it
        })
        .collect();
    Ok(Translated {
        chat: Value::Object(out),
        items,
        added,
    })
}

/// What a finished answer holds: its text, its function calls `(call id, name, arguments)`,
/// why it stopped, and its usage.
#[derive(Default)]
pub struct Answer {
    pub text: String,
    pub calls: Vec<(String, String, String)>,
    pub finish: Option<String>,
    pub usage: (i64, i64),
}

impl Answer {
    fn from_chat(resp: &Value) -> Answer {
        let choice = &resp["choices"][0];
        let msg = &choice["message"];
        Answer {
            text: msg["content"].as_str().unwrap_or_default().to_string(),
            calls: msg["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap_or_default().to_string(),
                        c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        c["function"]["arguments"]
                            .as_str()
                            .unwrap_or("{}")
                            .to_string(),
                    )
                })
                .collect(),
            finish: choice["finish_reason"].as_str().map(str::to_string),
            usage: (
                resp.pointer("/usage/prompt_tokens")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                resp.pointer("/usage/completion_tokens")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            ),
        }
    }

    /// The assistant's turn as a chat message, for the stored conversation.
    fn message(&self) -> Value {
        let mut m = json!({"role": "assistant", "content": if self.text.is_empty() { Value::Null } else { self.text.clone().into() }});
        if !self.calls.is_empty() {
            m["tool_calls"] = self
                .calls
                .iter()
                .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
                .collect::<Vec<_>>()
                .into();
        }
        m
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    } else {
        json!([])
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, (call_id, name, args): &(String, String, String), status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": args, "status": status})
}

/// The response object, as the Responses API returns it.
pub struct Shell {
    pub id: String,
    pub created_at: i64,
    pub model: String,
    pub req: Value,
    /// Ids of the output items: the message's, then each call's.
    pub message_id: String,
    pub call_ids: Vec<String>,
}

impl Shell {
    fn new(req: &Value) -> Shell {
        Shell {
            id: new_id("resp"),
            created_at: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()) as i64,
            model: req["model"].as_str().unwrap_or_default().to_string(),
            req: req.clone(),
            message_id: new_id("msg"),
            call_ids: Vec::new(),
        }
    }

    fn call_id(&mut self, n: usize) -> String {
        while self.call_ids.len() <= n {
            self.call_ids.push(new_id("fc"));
        }
        self.call_ids[n].clone()
    }

    /// The response object: `answer` completed, or (without one) in progress.
    fn object(&mut self, answer: Option<&Answer>) -> Value {
        let mut output = Vec::new();
        let mut status = "in_progress";
        let mut incomplete = Value::Null;
        let mut usage = Value::Null;
        if let Some(a) = answer {
            status = "completed";
            if a.finish.as_deref() == Some("length") {
                status = "incomplete";
                incomplete = json!({"reason": "max_output_tokens"});
            }
            if !a.text.is_empty() {
                output.push(message_item(&self.message_id.clone(), &a.text, "completed"));
            }
            for (n, c) in a.calls.iter().enumerate() {
                let id = self.call_id(n);
                output.push(call_item(&id, c, "completed"));
            }
            usage = json!({"input_tokens": a.usage.0, "output_tokens": a.usage.1,
                "total_tokens": a.usage.0 + a.usage.1,
                "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}});
        }
        let r = &self.req;
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": output, "usage": usage, "error": null,
            "incomplete_details": incomplete,
            "instructions": r.get("instructions").cloned().unwrap_or(Value::Null),
            "metadata": r.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "tools": r.get("tools").cloned().unwrap_or_else(|| json!([])),
            "tool_choice": r.get("tool_choice").cloned().unwrap_or_else(|| json!("auto")),
            "parallel_tool_calls": r.get("parallel_tool_calls").cloned().unwrap_or(Value::Bool(true)),
            "temperature": r.get("temperature").cloned().unwrap_or(Value::Null),
            "top_p": r.get("top_p").cloned().unwrap_or(Value::Null),
            "max_output_tokens": r.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "previous_response_id": r.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "text": r.get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "store": r.get("store").cloned().unwrap_or(Value::Bool(true)),
            "truncation": "disabled",
        })
    }
}

/// What stays of a request to store its response once it has one.
pub(crate) struct Keep {
    engine: Engine,
    who: Principal,
    store: bool,
    items: Vec<Value>,
    /// The conversation before this response: the previous one's and this input's.
    conversation: Vec<Value>,
}

impl Keep {
    pub(crate) async fn save(
        &self,
        body: &Value,
        answer: &Answer,
    ) -> Result<(), steward_store::Error> {
        if !self.store {
            return Ok(());
        }
        let mut conversation = self.conversation.clone();
        conversation.push(answer.message());
        let r = NewResponse {
            id: body["id"].as_str().unwrap_or_default().to_string(),
            body: body.to_string(),
            input_items: Value::Array(self.items.clone()).to_string(),
            conversation: Value::Array(conversation).to_string(),
        };
        self.engine.responses().put(&self.who, r).await
    }
}

/// `POST /v1/responses`.
pub async fn create(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OaiError> {
    let who = principal(&engine, &headers).await?;
    let req = json_object(&body)?;
    let previous: Vec<Value> = match req.get("previous_response_id").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(Value::String(id)) => {
            let stored = engine
                .responses()
                .get(&who, id)
                .await
                .map_err(store_failed)?
                .ok_or_else(|| not_found(&format!("previous response with id '{id}'")))?;
            serde_json::from_str(&stored.conversation).unwrap_or_default()
        }
        Some(v) => return Err(invalid(format!("previous_response_id: a string, not {v}"))),
    };
    let t = to_chat(&req, &previous).map_err(invalid)?;
    let native = NativeRequest {
        api: NativeApi::Responses,
        body: responses_native::request(&req, &previous),
        headers: Vec::new(),
    };
    let mut conversation = previous;
    conversation.extend(t.added.iter().cloned());
    let keep = Keep {
        engine: engine.clone(),
        who: who.clone(),
        store: req["store"] != false,
        items: t.items,
        conversation,
    };
    let mut shell = Shell::new(&req);
    match engine.gateway().chat_via(&who, t.chat, native).await? {
        GatewayReply::Native(v) => {
            let body = responses_native::finish(v, &shell.id, &req, &keep)
                .await
                .map_err(store_failed)?;
            Ok(Json(body).into_response())
        }
        GatewayReply::NativeStream(upstream) => {
            let events = futures::stream::unfold(
                (
                    upstream,
                    responses_native::Events::new(shell.id, req, keep),
                    false,
                ),
                |(mut up, mut ev, done)| async move {
                    if done {
                        return None;
                    }
                    let (out, done) = match up.next().await {
                        Some(Ok(bytes)) => (ev.feed(&bytes).await, false),
                        Some(Err(e)) => (ev.fail(&e.to_string()), true),
                        None => return None,
                    };
                    Some((Ok::<_, std::io::Error>(Bytes::from(out)), (up, ev, done)))
                },
            );
            Ok(crate::sse::response(events))
        }
        GatewayReply::Json(v) => {
            let answer = Answer::from_chat(&v);
            let body = shell.object(Some(&answer));
            keep.save(&body, &answer).await.map_err(store_failed)?;
            Ok(Json(body).into_response())
        }
        GatewayReply::Stream(upstream) => {
            let events = futures::stream::unfold(
                (upstream, Events::new(shell, keep), false),
                |(mut up, mut ev, done)| async move {
                    if done {
                        return None;
                    }
                    let (out, done) = match up.next().await {
                        Some(Ok(bytes)) => (ev.feed(&bytes), false),
                        Some(Err(e)) => (ev.fail(&e.to_string()), true),
                        None => (ev.finish().await, true),
                    };
                    Some((Ok::<_, std::io::Error>(Bytes::from(out)), (up, ev, done)))
                },
            );
            Ok(crate::sse::response(events))
        }
    }
}

async fn stored(
    engine: &Engine,
    headers: &HeaderMap,
    id: &str,
) -> Result<StoredResponse, OaiError> {
    let who = principal(engine, headers).await?;
    engine
        .responses()
        .get(&who, id)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| not_found(&format!("response with id '{id}'")))
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, OaiError> {
    let r = stored(&engine, &headers, &id).await?;
    Ok(Json(serde_json::from_str(&r.body).unwrap_or_default()))
}

/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, OaiError> {
    let r = stored(&engine, &headers, &id).await?;
    let data: Vec<Value> = serde_json::from_str(&r.input_items).unwrap_or_default();
    Ok(Json(json!({
        "object": "list",
        "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()),
        "has_more": false,
        "data": data,
    })))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, OaiError> {
    let who = principal(&engine, &headers).await?;
    let gone = engine
        .responses()
        .delete(&who, &id)
        .await
        .map_err(store_failed)?;
    if !gone {
        return Err(not_found(&format!("response with id '{id}'")));
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// Turns a chat completion's event stream into the Responses API's events, and stores the
/// response once it is complete.
pub struct Events {
    shell: Shell,
    keep: Option<Keep>,
    lines: DataLines,
    seq: u64,
    started: bool,
    answer: Answer,
    /// Output index of the message item, once opened; of each call, by chat tool call index.
    message_at: Option<usize>,
    calls_at: Vec<(u64, usize)>,
    outputs: usize,
    ended: bool,
}

impl Events {
    fn new(shell: Shell, keep: Keep) -> Self {
        Events {
            shell,
            keep: Some(keep),
            lines: DataLines::default(),
            seq: 0,
            started: false,
            answer: Answer::default(),
            message_at: None,
            calls_at: Vec::new(),
            outputs: 0,
            ended: false,
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        event(kind, &data)
    }

    fn start(&mut self) -> String {
        if self.started {
            return String::new();
        }
        self.started = true;
        let r = self.shell.object(None);
        let mut out = self.emit("response.created", json!({"response": r}));
        out.push_str(&self.emit("response.in_progress", json!({"response": r})));
        out
    }

    fn feed(&mut self, bytes: &[u8]) -> String {
        let mut out = self.start();
        for data in self.lines.feed(bytes) {
            if data == "[DONE]" {
                continue;
            }
            if let Ok(chunk) = serde_json::from_str::<Value>(&data) {
                out.push_str(&self.chunk(&chunk));
            }
        }
        out
    }

    fn chunk(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.answer.usage = (
                u["prompt_tokens"].as_i64().unwrap_or(0),
                u["completion_tokens"].as_i64().unwrap_or(0),
            );
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let id = self.shell.message_id.clone();
            let index = match self.message_at {
                Some(i) => i,
                None => {
                    let i = self.outputs;
                    self.outputs += 1;
                    self.message_at = Some(i);
                    out.push_str(&self.emit(
                        "response.output_item.added",
                        json!({"output_index": i, "item": message_item(&id, "", "in_progress")}),
                    ));
                    out.push_str(&self.emit(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": i, "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": []}}),
                    ));
                    i
                }
            };
            self.answer.text.push_str(t);
            out.push_str(&self.emit(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t, "logprobs": []}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let n = call["index"].as_u64().unwrap_or(0);
            let slot = match self.calls_at.iter().position(|(k, _)| *k == n) {
                Some(p) => p,
                None => {
                    let i = self.outputs;
                    self.outputs += 1;
                    self.calls_at.push((n, i));
                    let c = (
                        call["id"].as_str().unwrap_or_default().to_string(),
                        call["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        String::new(),
                    );
                    let slot = self.answer.calls.len();
                    let id = self.shell.call_id(slot);
                    out.push_str(&self.emit(
                        "response.output_item.added",
                        json!({"output_index": i, "item": call_item(&id, &c, "in_progress")}),
                    ));
                    self.answer.calls.push(c);
                    slot
                }
            };
            if let Some(part) = call["function"]["arguments"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                self.answer.calls[slot].2.push_str(part);
                let (id, index) = (self.shell.call_id(slot), self.calls_at[slot].1);
                out.push_str(&self.emit(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": part}),
                ));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.answer.finish = Some(f.to_string());
        }
        out
    }

    /// The closing events: each item done, then `response.completed` (`response.incomplete`
    /// when the output limit cut it), after the response is stored.
    async fn finish(&mut self) -> String {
        if self.ended {
            return String::new();
        }
        self.ended = true;
        let mut out = self.start();
        if let Some(i) = self.message_at {
            let id = self.shell.message_id.clone();
            let text = self.answer.text.clone();
            out.push_str(&self.emit(
                "response.output_text.done",
                json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
            ));
            out.push_str(&self.emit(
                "response.content_part.done",
                json!({"item_id": id, "output_index": i, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []}}),
            ));
            out.push_str(&self.emit(
                "response.output_item.done",
                json!({"output_index": i, "item": message_item(&id, &text, "completed")}),
            ));
        }
        for slot in 0..self.answer.calls.len() {
            let (id, index) = (self.shell.call_id(slot), self.calls_at[slot].1);
            let c = self.answer.calls[slot].clone();
            out.push_str(&self.emit(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "name": c.1, "arguments": c.2}),
            ));
            out.push_str(&self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": call_item(&id, &c, "completed")}),
            ));
        }
        let body = self.shell.object(Some(&self.answer));
        if let Some(keep) = self.keep.take() {
            if let Err(e) = keep.save(&body, &self.answer).await {
                tracing::error!(error = %e, "storing a streamed response failed");
                out.push_str(&self.emit(
                    "error",
                    json!({"code": "store_unavailable", "message": "the response could not be stored; it cannot be continued with previous_response_id", "param": null}),
                ));
            }
        }
        let kind = if body["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push_str(&self.emit(kind, json!({"response": body})));
        out
    }

    /// The upstream's stream broke off: `response.failed`.
    fn fail(&mut self, message: &str) -> String {
        self.ended = true;
        let mut out = self.start();
        let mut r = self.shell.object(None);
        r["status"] = "failed".into();
        r["error"] = json!({"code": "server_error", "message": message});
        out.push_str(&self.emit("response.failed", json!({"response": r})));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn items_become_a_chat_conversation_continuing_the_previous_one() {
        let previous = vec![
            json!({"role": "user", "content": "earlier"}),
            json!({"role": "assistant", "content": "noted"}),
        ];
        let req = json!({
            "model": "smart", "instructions": "be brief", "max_output_tokens": 50,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "windy"}
            ]
        });
        let t = to_chat(&req, &previous).unwrap();
        let m = t.chat["messages"].as_array().unwrap();
        let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            [
                "system",
                "user",
                "assistant",
                "user",
                "assistant",
                "tool",
                "tool"
            ]
        );
        assert_eq!(
            m[4]["tool_calls"].as_array().unwrap().len(),
            2,
            "consecutive calls, one turn"
        );
        assert_eq!(t.chat["max_tokens"], 50);
        assert_eq!(t.chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(t.chat["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(
            t.added.len(),
            4,
            "the system prompt is not part of the conversation"
        );
        assert!(t.items.iter().all(|i| i["id"].is_string()));
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (req, field) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0]",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}),
                "text.format.name",
            ),
            (
                json!({"model": "m", "input": "x", "metadata": {"k": 1}}),
                "metadata",
            ),
        ] {
            let e = to_chat(&req, &[]).err().unwrap();
            assert!(e.contains(field), "{req}: {e}");
        }
    }
}
