//! `/v1/responses` passed through whole to an upstream that speaks the Responses API itself
//! (`llm.providers.<name>.responses_api`). Conversation state stays Steward's: the upstream is
//! sent the whole conversation with `store: false`, and its answer is given Steward's response
//! id and stored here, so `previous_response_id`, retrieval and deletion work the same whichever
//! kind of deployment answered.

use serde_json::{json, Value};

use crate::responses::{Answer, Keep};
use crate::sse::{event, DataLines};

/// A stored conversation (chat messages) as Responses input items.
fn items_of(conversation: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for m in conversation {
        match m["role"].as_str() {
            Some("tool") => {
                out.push(json!({"type": "function_call_output",
                "call_id": m["tool_call_id"], "output": m["content"].as_str().unwrap_or_default()}))
            }
            Some("assistant") => {
                if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
                    out.push(json!({"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": t}]}));
                }
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    out.push(json!({"type": "function_call", "call_id": c["id"],
                        "name": c["function"]["name"], "arguments": c["function"]["arguments"]}));
                }
            }
            Some(role) => {
                let content = match &m["content"] {
                    Value::Array(parts) => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p["type"].as_str() {
                                Some("image_url") => json!({"type": "input_image",
                                    "image_url": p["image_url"]["url"]}),
                                _ => json!({"type": "input_text", "text": p["text"]}),
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                };
                out.push(json!({"type": "message", "role": role, "content": content}));
            }
            None => {}
        }
    }
    out
}

/// The request an upstream is sent: the client's, continuing `previous` itself (no
/// `previous_response_id`), and kept nowhere but here (`store: false`).
pub fn request(req: &Value, previous: &[Value]) -> Value {
    let mut body = req.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("previous_response_id");
        o.insert("store".into(), false.into());
    }
    if !previous.is_empty() {
        let mut input = items_of(previous);
        match &req["input"] {
            Value::String(s) => {
                input.push(json!({"type": "message", "role": "user", "content": s}))
            }
            Value::Array(a) => input.extend(a.iter().cloned()),
            _ => {}
        }
        body["input"] = input.into();
    }
    body
}

/// What a Responses answer holds, for the stored conversation.
fn answer_of(r: &Value) -> Answer {
    let mut a = Answer::default();
    for item in r["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(t) = part["text"].as_str() {
                        a.text.push_str(t);
                    }
                }
            }
            Some("function_call") => a.calls.push((
                item["call_id"].as_str().unwrap_or_default().to_string(),
                item["name"].as_str().unwrap_or_default().to_string(),
                item["arguments"].as_str().unwrap_or("{}").to_string(),
            )),
            _ => {}
        }
    }
    if r["status"] == "incomplete" {
        a.finish = Some("length".into());
    }
    a.usage = (
        r["usage"]["input_tokens"].as_i64().unwrap_or(0),
        r["usage"]["output_tokens"].as_i64().unwrap_or(0),
    );
    a
}

/// The upstream's response as the client sees it: Steward's id, and the client's own
/// `previous_response_id` and `store`.
fn as_ours(r: &mut Value, id: &str, req: &Value) {
    r["id"] = id.into();
    r["previous_response_id"] = req
        .get("previous_response_id")
        .cloned()
        .unwrap_or(Value::Null);
    r["store"] = req.get("store").cloned().unwrap_or(Value::Bool(true));
}

/// A whole answer: made ours and stored.
pub async fn finish(
    mut r: Value,
    id: &str,
    req: &Value,
    keep: &Keep,
) -> Result<Value, steward_store::Error> {
    as_ours(&mut r, id, req);
    keep.save(&r, &answer_of(&r)).await?;
    Ok(r)
}

/// The upstream's events passed on with Steward's response id; the final response is stored
/// before its event goes out.
pub struct Events {
    id: String,
    req: Value,
    keep: Option<Keep>,
    lines: DataLines,
}

impl Events {
    pub fn new(id: String, req: Value, keep: Keep) -> Self {
        Events {
            id,
            req,
            keep: Some(keep),
            lines: DataLines::default(),
        }
    }

    pub async fn feed(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        for data in self.lines.feed(bytes) {
            let Ok(mut e) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let kind = e["type"].as_str().unwrap_or("message").to_string();
            if e["response"].is_object() {
                as_ours(&mut e["response"], &self.id, &self.req);
            }
            let last = matches!(kind.as_str(), "response.completed" | "response.incomplete");
            if let Some(keep) = last.then(|| self.keep.take()).flatten() {
                if let Err(err) = keep.save(&e["response"], &answer_of(&e["response"])).await {
                    tracing::error!(error = %err, "storing a streamed response failed");
                    out.push_str(&event("error", &json!({"type": "error", "code": "store_unavailable",
                        "message": "the response could not be stored; it cannot be continued with previous_response_id", "param": null})));
                }
            }
            out.push_str(&event(&kind, &e));
        }
        out
    }

    /// The upstream's stream broke off.
    pub fn fail(&mut self, message: &str) -> String {
        event(
            "error",
            &json!({"type": "error", "code": "server_error", "message": message, "param": null}),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_stored_conversation_goes_upstream_as_items_before_the_new_input() {
        let previous = vec![
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}),
            json!({"role": "assistant", "content": "It is sunny"}),
        ];
        let req = json!({"model": "smart", "input": "thanks", "previous_response_id": "resp_1",
            "instructions": "Be kind."});
        let body = request(&req, &previous);
        assert_eq!(body["store"], false);
        assert!(body.get("previous_response_id").is_none());
        assert_eq!(body["instructions"], "Be kind.");
        assert_eq!(
            body["input"],
            json!([
                {"type": "message", "role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is sunny"}]},
                {"type": "message", "role": "user", "content": "thanks"},
            ])
        );
        // Without a previous response the input is the client's, untouched.
        let plain = json!({"model": "smart", "input": [{"role": "user", "content": "x"}]});
        assert_eq!(request(&plain, &[])["input"], plain["input"]);
    }

    #[test]
    fn an_answer_is_read_for_the_conversation() {
        let r = json!({"status": "completed", "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"}],
            "usage": {"input_tokens": 4, "output_tokens": 2}});
        let a = answer_of(&r);
        assert_eq!(a.text, "Hi");
        assert_eq!(a.calls, vec![("c1".into(), "f".into(), "{\"a\":1}".into())]);
        assert_eq!(a.usage, (4, 2));
    }
}
