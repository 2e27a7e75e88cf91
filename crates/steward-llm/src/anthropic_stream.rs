//! Anthropic's streamed Messages events, re-told as OpenAI `chat.completion.chunk` events, so a
//! streaming `/v1` client gets the same shape whichever deployment answers.

use serde_json::{json, Value};

/// Turns Anthropic SSE bytes into OpenAI SSE text, event by event. Feed it chunks as they come;
/// call `finish` at the end of the stream.
pub(crate) struct Translator {
    id: String,
    model: String,
    include_usage: bool,
    pending: String,
    input_tokens: u64,
    output_tokens: u64,
    /// Anthropic content-block index → OpenAI tool-call index.
    tool_index: std::collections::HashMap<u64, u64>,
    /// The block of the structured-output tool, whose input is told as the answer's text.
    structured: Option<u64>,
    done: bool,
}

impl Translator {
    pub(crate) fn new(id: &str, model: &str, include_usage: bool) -> Self {
        Translator {
            id: id.to_string(),
            model: model.to_string(),
            include_usage,
            pending: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            tool_index: Default::default(),
            structured: None,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    /// Translates what the bytes complete; keeps any partial line for the next call.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> String {
        self.pending.push_str(&String::from_utf8_lossy(bytes));
        let mut out = String::new();
        while let Some(nl) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=nl).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(ev) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            out.push_str(&self.event(&ev));
        }
        out
    }

    fn event(&mut self, ev: &Value) -> String {
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                self.input_tokens = ev
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)
            }
            "content_block_start"
                if ev.pointer("/content_block/type") == Some(&json!("tool_use"))
                    && ev.pointer("/content_block/name")
                        == Some(&json!(crate::anthropic::STRUCTURED_TOOL)) =>
            {
                self.structured = ev.get("index").and_then(Value::as_u64);
                String::new()
            }
            "content_block_start"
                if ev.pointer("/content_block/type") == Some(&json!("tool_use")) =>
            {
                let block = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                let idx = self.tool_index.len() as u64;
                self.tool_index.insert(block, idx);
                self.chunk(
                    json!({"tool_calls": [{"index": idx, "id": ev.pointer("/content_block/id"), "type": "function",
                        "function": {"name": ev.pointer("/content_block/name"), "arguments": ""}}]}),
                    Value::Null,
                )
            }
            "content_block_delta" => match ev.pointer("/delta/type").and_then(Value::as_str) {
                Some("text_delta") => {
                    self.chunk(json!({"content": ev.pointer("/delta/text")}), Value::Null)
                }
                Some("input_json_delta")
                    if ev.get("index").and_then(Value::as_u64) == self.structured =>
                {
                    self.chunk(
                        json!({"content": ev.pointer("/delta/partial_json")}),
                        Value::Null,
                    )
                }
                Some("input_json_delta") => {
                    let block = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let idx = self.tool_index.get(&block).copied().unwrap_or(0);
                    self.chunk(
                        json!({"tool_calls": [{"index": idx, "function": {"arguments": ev.pointer("/delta/partial_json")}}]}),
                        Value::Null,
                    )
                }
                _ => String::new(),
            },
            "message_delta" => {
                self.output_tokens = ev
                    .pointer("/usage/output_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(self.output_tokens);
                let finish = match ev.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some("tool_use") if !self.tool_index.is_empty() => "tool_calls",
                    Some("max_tokens") => "length",
                    _ => "stop",
                };
                self.chunk(json!({}), json!(finish))
            }
            "message_stop" => self.finish(),
            _ => String::new(),
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`, once.
    pub(crate) fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        let mut out = String::new();
        if self.include_usage {
            let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model, "choices": [],
                "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
                    "total_tokens": self.input_tokens + self.output_tokens}});
            out.push_str(&format!("data: {c}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_tool_use_become_openai_chunks() {
        let mut t = Translator::new("c1", "claude", true);
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "get_weather"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\""}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ];
        let sse: String = events
            .iter()
            .map(|e| format!("event: x\ndata: {e}\n\n"))
            .collect();
        // Fed in awkward pieces, as a network delivers it.
        let (a, b) = sse.as_bytes().split_at(37);
        let out = t.feed(a) + &t.feed(b);
        let chunks: Vec<Value> = out
            .split("\n\n")
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\""
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chunks[5]["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19})
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(t.finish(), "", "finish is once");
    }

    #[test]
    fn a_structured_answer_streams_as_text() {
        let mut t = Translator::new("c1", "claude", false);
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t1", "name": "structured_output"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"ok\""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ": true}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ];
        let sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        let out = t.feed(sse.as_bytes());
        let chunks: Vec<Value> = out
            .split("\n\n")
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "{\"ok\": true}");
        assert!(chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }
}
