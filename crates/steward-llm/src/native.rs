//! Requests passed through whole, in a client API the upstream itself speaks (Anthropic's
//! Messages, OpenAI's Responses), and the usage read back from their answers and streams so the
//! gateway can settle them as it settles chat completions.

use serde_json::Value;

/// A client API some upstreams speak natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeApi {
    /// Anthropic's `/v1/messages`.
    Messages,
    /// OpenAI's `/v1/responses`.
    Responses,
}

/// A request in a client API, for an upstream that speaks it: the body as the client sent it
/// (the gateway sets the model and its output bound), and the headers that API defines.
#[derive(Clone, Debug)]
pub struct NativeRequest {
    pub api: NativeApi,
    pub body: Value,
    /// Such as `anthropic-version` and `anthropic-beta`; never credentials.
    pub headers: Vec<(String, String)>,
}

/// Token counts `(in, out)` that one answer or stream event reports; either may be missing.
pub type Counted = (Option<i64>, Option<i64>);

/// What a whole answer of `api` says it used. Anthropic counts cached prompt tokens apart from
/// the rest; all of them went in.
pub fn usage(api: NativeApi, v: &Value) -> Counted {
    let u = &v["usage"];
    match api {
        NativeApi::Messages => (anthropic_input(u), u["output_tokens"].as_i64()),
        NativeApi::Responses => (u["input_tokens"].as_i64(), u["output_tokens"].as_i64()),
    }
}

/// What one stream event of `api` says was used so far (Anthropic: `message_start` and
/// `message_delta`, whose output count is cumulative; Responses: the final response event).
pub fn event_usage(api: NativeApi, event: &Value) -> Counted {
    match api {
        NativeApi::Messages => match event["type"].as_str() {
            Some("message_start") => {
                let u = &event["message"]["usage"];
                (anthropic_input(u), u["output_tokens"].as_i64())
            }
            Some("message_delta") => {
                let u = &event["usage"];
                (anthropic_input(u), u["output_tokens"].as_i64())
            }
            _ => (None, None),
        },
        NativeApi::Responses => match event["type"].as_str() {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                usage(api, &event["response"])
            }
            _ => (None, None),
        },
    }
}

/// Whether an answer of `api` is the model declining for content reasons.
pub fn refused(api: NativeApi, v: &Value) -> bool {
    match api {
        NativeApi::Messages => v["stop_reason"] == "refusal",
        NativeApi::Responses => v
            .pointer("/incomplete_details/reason")
            .is_some_and(|r| r == "content_filter"),
    }
}

fn anthropic_input(u: &Value) -> Option<i64> {
    let base = u["input_tokens"].as_i64()?;
    let cached = ["cache_creation_input_tokens", "cache_read_input_tokens"]
        .iter()
        .filter_map(|f| u[*f].as_i64())
        .sum::<i64>();
    Some(base + cached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_is_read_from_answers_and_events_of_each_api() {
        let m = json!({"usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 3}});
        assert_eq!(usage(NativeApi::Messages, &m), (Some(100), Some(3)));
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}});
        assert_eq!(
            event_usage(NativeApi::Messages, &start),
            (Some(11), Some(1))
        );
        let delta = json!({"type": "message_delta", "usage": {"output_tokens": 7}});
        assert_eq!(event_usage(NativeApi::Messages, &delta), (None, Some(7)));
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 2}}});
        assert_eq!(event_usage(NativeApi::Responses, &done), (Some(5), Some(2)));
        let text = json!({"type": "response.output_text.delta", "delta": "x"});
        assert_eq!(event_usage(NativeApi::Responses, &text), (None, None));
        assert!(refused(
            NativeApi::Messages,
            &json!({"stop_reason": "refusal"})
        ));
        assert!(!refused(
            NativeApi::Responses,
            &json!({"status": "completed"})
        ));
    }
}
