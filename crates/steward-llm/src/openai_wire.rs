//! The OpenAI chat-completions wire format, to and from the neutral chat shapes: what lets a
//! non-OpenAI deployment (Anthropic, scripted) answer an OpenAI-compatible request.

use serde_json::{json, Value};

use crate::{ChatRequest, ChatResponse, Error, Message, Role, ToolCall, ToolSpec};

fn bad(msg: impl Into<String>) -> Error {
    Error::Request(msg.into())
}

/// Text of an OpenAI `content`: a string, or an array of parts whose text parts are joined.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// The `tool_calls` of an OpenAI message (request or response). Arguments arrive as a JSON
/// string; models do emit broken JSON there, so unparsable text is kept as a string rather than
/// silently replaced. Errs with the index of a call that has no function name.
pub(crate) fn tool_calls(message: &Value) -> Result<Vec<ToolCall>, usize> {
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or(i)?;
            let raw = c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            Ok(ToolCall {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                name: name.to_string(),
                arguments: serde_json::from_str(raw)
                    .unwrap_or_else(|_| Value::String(raw.to_string())),
            })
        })
        .collect()
}

/// Reads an OpenAI request body into the neutral shape (fields it has no place for are dropped).
pub fn request_from_openai(body: &Value, model: &str) -> Result<ChatRequest, Error> {
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages: required, an array"))?;
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            other => return Err(bad(format!("messages[{i}].role: unknown role {other:?}"))),
        };
        let tool_calls = tool_calls(m).map_err(|j| {
            bad(format!(
                "messages[{i}].tool_calls[{j}].function.name: required"
            ))
        })?;
        messages.push(Message {
            role,
            content: m.get("content").and_then(content_text),
            tool_calls,
            tool_call_id: m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let f = t.get("function")?;
            Some(ToolSpec {
                name: f.get("name")?.as_str()?.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or(json!({"type": "object"})),
            })
        })
        .collect();
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| n.min(u32::MAX as u64) as u32);
    Ok(ChatRequest {
        model: model.to_string(),
        messages,
        tools,
        max_tokens,
    })
}

/// Writes a neutral response as an OpenAI `chat.completion`.
pub fn response_to_openai(r: &ChatResponse, id: &str, model: &str, created: i64) -> Value {
    let tool_calls: Vec<Value> = r
        .tool_calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": r.content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": if r.tool_calls.is_empty() { "stop" } else { "tool_calls" },
        }],
        "usage": {
            "prompt_tokens": r.usage.input_tokens,
            "completion_tokens": r.usage.output_tokens,
            "total_tokens": r.usage.input_tokens + r.usage.output_tokens,
        }
    })
}
