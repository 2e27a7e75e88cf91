//! OpenAI-compatible chat completions with tool calling: OpenAI, vLLM, Ollama, LiteLLM,
//! and Azure-style base URLs (a query string on the base URL is kept).

use serde_json::{json, Value};

use crate::http::{client, garbage, join, post_json};
use crate::{ChatRequest, ChatResponse, Error, Message, Provider, Result, Role, Usage};

pub struct OpenAiProvider {
    name: String,
    base_url: String,
    api_key: crate::ApiKey,
    timeout_ms: u64,
    http: reqwest::Client,
    /// The upstream serves OpenAI's Responses API too (`/responses`), so Responses requests
    /// are passed through to it whole instead of translated onto chat completions.
    responses_api: bool,
}

impl OpenAiProvider {
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        timeout_ms: u64,
    ) -> Result<Self> {
        Ok(OpenAiProvider {
            name: name.to_string(),
            base_url: base_url.to_string(),
            api_key: api_key.map_or(crate::ApiKey::None, crate::ApiKey::Static),
            timeout_ms,
            http: client(timeout_ms)?,
            responses_api: false,
        })
    }

    /// Says the upstream serves the Responses API (`llm.providers.<name>.responses_api`).
    pub fn with_responses_api(mut self, on: bool) -> Self {
        self.responses_api = on;
        self
    }

    /// Takes the key from `key` at every call instead (e.g. from the vault).
    pub fn with_key(mut self, key: crate::ApiKey) -> Self {
        self.api_key = key;
        self
    }
}

fn wire_message(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({ "role": role, "content": m.content });
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments.to_string() }
                })
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

pub(crate) fn wire_request(req: &ChatRequest) -> Value {
    let mut body = json!({
        "model": req.model,
        "messages": req.messages.iter().map(wire_message).collect::<Vec<_>>(),
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters }})
            })
            .collect();
    }
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

pub(crate) fn parse_response(provider: &str, v: &Value) -> Result<ChatResponse> {
    if v.pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
        == Some("content_filter")
    {
        return Err(Error::Refused {
            provider: provider.to_string(),
            detail: "finish_reason content_filter".into(),
        });
    }
    let msg = v
        .pointer("/choices/0/message")
        .ok_or_else(|| garbage(provider, "no choices[0].message"))?;
    let content = msg
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_string);
    let tool_calls = crate::openai_wire::tool_calls(msg)
        .map_err(|i| garbage(provider, format!("tool_calls[{i}] has no function.name")))?;
    let usage = Usage {
        input_tokens: v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    Ok(ChatResponse {
        content,
        tool_calls,
        usage,
        provider: provider.to_string(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse> {
        let url = join(&self.base_url, "chat/completions");
        let mut rb = self.http.post(&url).json(&wire_request(req));
        if let Some(k) = &self.api_key.current() {
            rb = rb.bearer_auth(k);
        }
        let v = post_json(&self.name, self.timeout_ms, rb, &url).await?;
        let mut out = parse_response(&self.name, &v)?;
        if out.model.is_empty() {
            out.model = req.model.clone();
        }
        Ok(out)
    }

    /// Passes the body through untouched but for the upstream model name.
    async fn chat_openai(
        &self,
        mut body: Value,
        model: &str,
        _id: &str,
        _created: i64,
    ) -> Result<Value> {
        let url = join(&self.base_url, "chat/completions");
        body["model"] = json!(model);
        body["stream"] = json!(false);
        let v = post_json(&self.name, self.timeout_ms, self.request(&url, &body), &url).await?;
        if v.pointer("/choices/0").is_none() {
            return Err(crate::http::garbage(
                &self.name,
                "no choices[0] in the response",
            ));
        }
        Ok(v)
    }

    async fn embeddings_openai(&self, mut body: Value, model: &str) -> Result<Value> {
        let url = join(&self.base_url, "embeddings");
        body["model"] = json!(model);
        let v = post_json(&self.name, self.timeout_ms, self.request(&url, &body), &url).await?;
        if !v.get("data").is_some_and(Value::is_array) {
            return Err(crate::http::garbage(
                &self.name,
                "no data array in the embeddings response",
            ));
        }
        Ok(v)
    }

    async fn stream_openai(&self, mut body: Value, model: &str) -> Result<crate::ByteStream> {
        let url = join(&self.base_url, "chat/completions");
        body["model"] = json!(model);
        body["stream"] = json!(true);
        crate::http::post_stream(&self.name, self.timeout_ms, self.request(&url, &body), &url).await
    }

    fn speaks(&self, api: crate::NativeApi) -> bool {
        api == crate::NativeApi::Responses && self.responses_api
    }

    /// A Responses request passed through whole: only the model is the deployment's.
    async fn native(&self, req: &crate::NativeRequest, model: &str) -> Result<Value> {
        let (url, mut body) = self.native_wire(req, model)?;
        body["stream"] = json!(false);
        let v = post_json(&self.name, self.timeout_ms, self.request(&url, &body), &url).await?;
        if !v.get("output").is_some_and(Value::is_array) {
            return Err(garbage(&self.name, "no output array in the response"));
        }
        Ok(v)
    }

    async fn native_stream(
        &self,
        req: &crate::NativeRequest,
        model: &str,
    ) -> Result<crate::ByteStream> {
        let (url, mut body) = self.native_wire(req, model)?;
        body["stream"] = json!(true);
        crate::http::post_stream(&self.name, self.timeout_ms, self.request(&url, &body), &url).await
    }
}

impl OpenAiProvider {
    fn native_wire(&self, req: &crate::NativeRequest, model: &str) -> Result<(String, Value)> {
        if !self.speaks(req.api) {
            return Err(Error::Unsupported(format!(
                "{}: does not speak {:?} natively",
                self.name, req.api
            )));
        }
        let mut body = req.body.clone();
        body["model"] = json!(model);
        Ok((join(&self.base_url, "responses"), body))
    }
}

impl OpenAiProvider {
    fn request(&self, url: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        let mut rb = self.http.post(url).json(body);
        if let Some(k) = &self.api_key.current() {
            rb = rb.bearer_auth(k);
        }
        rb
    }
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish()
    }
}
