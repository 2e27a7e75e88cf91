//! Anthropic Messages with tools, translated to and from the neutral chat shapes: the system
//! prompt moves to `system`, tool calls become `tool_use` blocks and tool results `tool_result`
//! blocks inside a user turn.

use serde_json::{json, Value};

use crate::http::{client, garbage, join, post_json};
use crate::{ChatRequest, ChatResponse, Error, Provider, Result, Role, ToolCall, Usage};

const API_VERSION: &str = "2023-06-01";
/// The tool a structured-output request is answered through: Anthropic has no response format,
/// so the schema becomes this tool's input, and its input the answer's text.
pub(crate) const STRUCTURED_TOOL: &str = "structured_output";
/// Anthropic requires `max_tokens`; this is used when the agent sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct AnthropicProvider {
    name: String,
    base_url: String,
    api_key: crate::ApiKey,
    timeout_ms: u64,
    http: reqwest::Client,
}

impl AnthropicProvider {
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        timeout_ms: u64,
    ) -> Result<Self> {
        Ok(AnthropicProvider {
            name: name.to_string(),
            base_url: base_url.to_string(),
            api_key: api_key.map_or(crate::ApiKey::None, crate::ApiKey::Static),
            timeout_ms,
            http: client(timeout_ms)?,
        })
    }

    /// Takes the key from `key` at every call instead (e.g. from the vault).
    pub fn with_key(mut self, key: crate::ApiKey) -> Self {
        self.api_key = key;
        self
    }
}

pub(crate) fn wire_request(req: &ChatRequest) -> Value {
    wire_with(req, &[])
}

/// An image part's URL as an Anthropic image block: a `data:` URL as base64, else by URL.
fn image_block(url: &str) -> Value {
    if let Some((media_type, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// An OpenAI user content (a string, or text and image parts) as Anthropic content blocks.
fn user_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(
                    json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}),
                ),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .map(image_block),
                _ => None,
            })
            .collect(),
        other => vec![json!({"type": "text", "text": other.as_str().unwrap_or_default()})],
    }
}

/// The wire request; `raw` (the OpenAI messages `req` was read from, one for one) supplies
/// the user turns' images, which the neutral shapes do not carry.
fn wire_with(req: &ChatRequest, raw: &[Value]) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, block) = match m.role {
            Role::System => {
                system.push(m.content.clone().unwrap_or_default());
                continue;
            }
            Role::User => (
                "user",
                match raw.get(i) {
                    Some(r) => user_blocks(&r["content"]),
                    None => {
                        vec![json!({"type": "text", "text": m.content.clone().unwrap_or_default()})]
                    }
                },
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(t) = m.content.as_ref().filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": t}));
                }
                for c in &m.tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}));
                }
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content.clone().unwrap_or_default(),
                })],
            ),
        };
        // Anthropic wants alternating turns: consecutive same-role turns are merged.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(arr) = last["content"].as_array_mut() {
                    arr.extend(block);
                }
            }
            _ => messages.push(json!({"role": role, "content": block})),
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

/// An OpenAI-format request as Anthropic's wire request: the neutral translation, plus the
/// fields the neutral shapes do not carry — stop sequences, sampling, tool choice, parallel tool
/// use and the end user — so a gateway caller's request reaches an Anthropic deployment whole.
pub(crate) fn wire_from_openai(body: &Value, model: &str) -> Result<Value> {
    let req = crate::openai_wire::request_from_openai(body, model)?;
    let raw = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut wire = wire_with(&req, raw);
    match body.get("stop") {
        Some(Value::String(s)) => wire["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) if !a.is_empty() => wire["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = body.get(field).filter(|v| v.is_number()) {
            wire[field] = v.clone();
        }
    }
    if !req.tools.is_empty() {
        let mut choice = match body.get("tool_choice") {
            Some(Value::String(c)) if c == "required" => Some(json!({"type": "any"})),
            Some(Value::String(c)) if c == "none" => Some(json!({"type": "none"})),
            Some(Value::String(c)) if c == "auto" => Some(json!({"type": "auto"})),
            Some(c) => c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| json!({"type": "tool", "name": n})),
            None => None,
        };
        if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            c["disable_parallel_tool_use"] = json!(true);
        }
        if let Some(c) = choice {
            wire["tool_choice"] = c;
        }
    }
    if let Some(u) = body.get("user").and_then(Value::as_str) {
        wire["metadata"] = json!({"user_id": u});
    }
    if let Some(schema) = structured_schema(body)? {
        if req.tools.iter().any(|t| t.name == STRUCTURED_TOOL) {
            return Err(Error::Unsupported(format!(
                "a tool named {STRUCTURED_TOOL} cannot be given with response_format to an Anthropic deployment"
            )));
        }
        let tool = json!({"name": STRUCTURED_TOOL, "input_schema": schema,
            "description": "Give your final answer as this tool's input, in exactly this format."});
        match wire["tools"].as_array_mut() {
            // The caller's own tools stay usable; the answer comes through this one.
            Some(tools) => tools.push(tool),
            None => {
                wire["tools"] = json!([tool]);
                wire["tool_choice"] = json!({"type": "tool", "name": STRUCTURED_TOOL});
            }
        }
    }
    Ok(wire)
}

/// The JSON schema a request's `response_format` asks the answer to follow, if any.
fn structured_schema(body: &Value) -> Result<Option<Value>> {
    let format = &body["response_format"];
    match format["type"].as_str() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => match format.pointer("/json_schema/schema") {
            Some(s) if s.is_object() => Ok(Some(s.clone())),
            _ => Err(Error::Unsupported(
                "response_format.json_schema.schema: required, an object".into(),
            )),
        },
        Some(other) => Err(Error::Unsupported(format!(
            "response_format.type {other:?} is not offered on an Anthropic deployment"
        ))),
    }
}

/// A structured answer's tool call becomes the answer's text.
fn unfold_structured(r: &mut ChatResponse) {
    if let Some(at) = r.tool_calls.iter().position(|c| c.name == STRUCTURED_TOOL) {
        let call = r.tool_calls.remove(at);
        r.content = Some(call.arguments.to_string());
    }
}

pub(crate) fn parse_response(provider: &str, v: &Value) -> Result<ChatResponse> {
    if v.get("stop_reason").and_then(Value::as_str) == Some("refusal") {
        return Err(Error::Refused {
            provider: provider.to_string(),
            detail: "stop_reason refusal".into(),
        });
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| garbage(provider, "no content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => tool_calls.push(ToolCall {
                id: b
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                name: b
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| garbage(provider, "tool_use block without a name"))?
                    .to_string(),
                arguments: b.get("input").cloned().unwrap_or(json!({})),
            }),
            _ => {} // thinking and other blocks carry nothing the loop acts on
        }
    }
    Ok(ChatResponse {
        content: if text.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(text)
        },
        tool_calls,
        usage: Usage {
            input_tokens: v
                .pointer("/usage/input_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            output_tokens: v
                .pointer("/usage/output_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        },
        provider: provider.to_string(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

impl AnthropicProvider {
    /// A Messages request to the upstream, with the key, the API version and `headers` (a
    /// passed-through request's own `anthropic-version` and `anthropic-beta`).
    fn request(
        &self,
        wire: &Value,
        headers: &[(String, String)],
    ) -> (reqwest::RequestBuilder, String) {
        self.request_to("v1/messages", wire, headers)
    }

    /// As `request`, to another endpoint of the Messages API (`path` under the base URL).
    fn request_to(
        &self,
        path: &str,
        wire: &Value,
        headers: &[(String, String)],
    ) -> (reqwest::RequestBuilder, String) {
        let url = join(&self.base_url, path);
        let mut rb = self.http.post(&url).json(wire);
        if !headers.iter().any(|(k, _)| k == "anthropic-version") {
            rb = rb.header("anthropic-version", API_VERSION);
        }
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        if let Some(k) = &self.api_key.current() {
            rb = rb.header("x-api-key", k);
        }
        (rb, url)
    }

    /// Posts a Messages request and reads its answer.
    async fn send(&self, wire: &Value, model: &str) -> Result<ChatResponse> {
        let (rb, url) = self.request(wire, &[]);
        let v = post_json(&self.name, self.timeout_ms, rb, &url).await?;
        let mut out = parse_response(&self.name, &v)?;
        if out.model.is_empty() {
            out.model = model.to_string();
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse> {
        self.send(&wire_request(req), &req.model).await
    }

    /// The gateway's OpenAI-format request, with what only the wire can carry (stop sequences,
    /// sampling, tool choice) passed on.
    async fn chat_openai(&self, body: Value, model: &str, id: &str, created: i64) -> Result<Value> {
        let mut r = self.send(&wire_from_openai(&body, model)?, model).await?;
        unfold_structured(&mut r);
        Ok(crate::openai_wire::response_to_openai(
            &r, id, model, created,
        ))
    }

    /// Streams Anthropic's events back as OpenAI chunks (text, tool calls, usage).
    async fn stream_openai(&self, body: Value, model: &str) -> Result<crate::ByteStream> {
        use futures::StreamExt;
        let include_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        let mut wire = wire_from_openai(&body, model)?;
        wire["stream"] = json!(true);
        let (rb, url) = self.request(&wire, &[]);
        let upstream = crate::http::post_stream(&self.name, self.timeout_ms, rb, &url).await?;
        let translator =
            crate::anthropic_stream::Translator::new("chatcmpl-anthropic", model, include_usage);
        let out = futures::stream::unfold(
            (upstream, translator, false),
            |(mut up, mut t, ended)| async move {
                if ended {
                    return None;
                }
                match up.next().await {
                    Some(Ok(bytes)) => {
                        let text = t.feed(&bytes);
                        Some((Ok(bytes::Bytes::from(text)), (up, t, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (up, t, true))),
                    None => {
                        let tail = t.finish();
                        Some((Ok(bytes::Bytes::from(tail)), (up, t, true)))
                    }
                }
            },
        );
        Ok(out.boxed())
    }

    fn speaks(&self, api: crate::NativeApi) -> bool {
        api == crate::NativeApi::Messages
    }

    /// A Messages request passed through whole: only the model is the deployment's.
    async fn native(&self, req: &crate::NativeRequest, model: &str) -> Result<Value> {
        let mut wire = self.native_wire(req, model)?;
        wire["stream"] = json!(false);
        let (rb, url) = self.request(&wire, &req.headers);
        let v = post_json(&self.name, self.timeout_ms, rb, &url).await?;
        if !v.get("content").is_some_and(Value::is_array) {
            return Err(garbage(&self.name, "no content array"));
        }
        Ok(v)
    }

    async fn native_stream(
        &self,
        req: &crate::NativeRequest,
        model: &str,
    ) -> Result<crate::ByteStream> {
        let mut wire = self.native_wire(req, model)?;
        wire["stream"] = json!(true);
        let (rb, url) = self.request(&wire, &req.headers);
        crate::http::post_stream(&self.name, self.timeout_ms, rb, &url).await
    }

    /// The upstream's own count (`/v1/messages/count_tokens`), which no model is run for.
    async fn count_tokens(&self, req: &crate::NativeRequest, model: &str) -> Result<i64> {
        let wire = self.native_wire(req, model)?;
        let (rb, url) = self.request_to("v1/messages/count_tokens", &wire, &req.headers);
        let v = post_json(&self.name, self.timeout_ms, rb, &url).await?;
        v["input_tokens"]
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| garbage(&self.name, "no input_tokens count"))
    }
}

impl AnthropicProvider {
    fn native_wire(&self, req: &crate::NativeRequest, model: &str) -> Result<Value> {
        if req.api != crate::NativeApi::Messages {
            return Err(Error::Unsupported(format!(
                "{}: does not speak {:?} natively",
                self.name, req.api
            )));
        }
        let mut wire = req.body.clone();
        wire["model"] = json!(model);
        Ok(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn tool_turns_translate_to_blocks() {
        let req = ChatRequest {
            model: "claude".into(),
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: None,
                    tool_calls: vec![
                        ToolCall {
                            id: "a".into(),
                            name: "echo".into(),
                            arguments: json!({"x": 1}),
                        },
                        ToolCall {
                            id: "b".into(),
                            name: "echo".into(),
                            arguments: json!({"x": 2}),
                        },
                    ],
                    tool_call_id: None,
                },
                Message::tool_result("a", "1"),
                Message::tool_result("b", "2"),
            ],
            tools: vec![],
            max_tokens: None,
        };
        let w = wire_request(&req);
        assert_eq!(w["system"], "be brief");
        let msgs = w["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "tool results merge into one user turn: {w}");
        assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
        assert_eq!(msgs[2]["content"][1]["tool_use_id"], "b");
    }

    #[test]
    fn what_the_neutral_shapes_drop_reaches_the_wire() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "stop": "END",
            "temperature": 0.2, "top_p": 0.9, "user": "u1", "parallel_tool_calls": false,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}});
        let w = wire_from_openai(&body, "claude").unwrap();
        assert_eq!(w["stop_sequences"], json!(["END"]));
        assert_eq!(
            (w["temperature"].as_f64(), w["top_p"].as_f64()),
            (Some(0.2), Some(0.9))
        );
        assert_eq!(
            w["tool_choice"],
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})
        );
        assert_eq!(w["metadata"]["user_id"], "u1");
        let img = wire_from_openai(
            &json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "c",
        )
        .unwrap();
        assert_eq!(
            img["messages"][0]["content"],
            json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])
        );
        let plain = wire_from_openai(
            &json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}),
            "c",
        )
        .unwrap();
        assert!(
            plain.get("tool_choice").is_none(),
            "no tools, no choice: {plain}"
        );
    }
}
