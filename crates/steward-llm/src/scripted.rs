//! The scripted provider: plays an agent's `script` turn by turn, deterministically. For tests
//! and demos only — its output is labelled `scripted` wherever it appears, and no real model
//! is involved. Turn N answers the conversation that already holds N assistant turns.
//! `{{input}}` in content or string arguments is replaced by the run's input.

use std::time::Duration;

use serde_json::Value;
use steward_types::ScriptTurn;

use crate::{ChatRequest, ChatResponse, Error, Provider, Result, Role, ToolCall, Usage};

/// The provider name that marks scripted output.
pub const SCRIPTED_LABEL: &str = "scripted";

pub struct ScriptedProvider {
    turns: Vec<ScriptTurn>,
}

impl ScriptedProvider {
    pub fn new(turns: Vec<ScriptTurn>) -> Self {
        ScriptedProvider { turns }
    }
}

fn fill(v: &Value, input: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{{input}}", input)),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, input)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (k.clone(), fill(x, input))).collect())
        }
        other => other.clone(),
    }
}

/// A rough token count (4 bytes a token) so scripted runs show plausible usage.
fn approx_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

#[async_trait::async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        SCRIPTED_LABEL
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse> {
        let turn_no = req
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let turn = self.turns.get(turn_no).ok_or_else(|| {
            Error::Script(format!(
                "the script has {} turns and turn {} was asked for; end the script with a `content` turn",
                self.turns.len(),
                turn_no + 1
            ))
        })?;
        if turn.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(turn.delay_ms)).await;
        }
        let input = req
            .messages
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.clone())
            .unwrap_or_default();
        let prompt_len: usize = req
            .messages
            .iter()
            .map(|m| m.content.as_deref().map_or(0, str::len))
            .sum();
        let content = turn
            .content
            .as_ref()
            .map(|c| c.replace("{{input}}", &input));
        let tool_calls: Vec<ToolCall> = turn
            .tool_calls
            .iter()
            .enumerate()
            .map(|(j, c)| ToolCall {
                id: format!("call_{turn_no}_{j}"),
                name: c.name.clone(),
                arguments: fill(&c.arguments, &input),
            })
            .collect();
        let out_len = content.as_deref().map_or(0, str::len)
            + tool_calls
                .iter()
                .map(|c| c.arguments.to_string().len())
                .sum::<usize>();
        Ok(ChatResponse {
            content,
            tool_calls,
            usage: Usage {
                input_tokens: approx_tokens(prompt_len),
                output_tokens: approx_tokens(out_len),
            },
            provider: SCRIPTED_LABEL.to_string(),
            model: SCRIPTED_LABEL.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use steward_types::manifest::ScriptToolCall;

    #[tokio::test]
    async fn plays_turns_in_order_and_fills_the_input() {
        let p = ScriptedProvider::new(vec![
            ScriptTurn {
                content: None,
                tool_calls: vec![ScriptToolCall {
                    name: "echo".into(),
                    arguments: serde_json::json!({"q": "{{input}}"}),
                }],
                delay_ms: 0,
            },
            ScriptTurn {
                content: Some("done: {{input}}".into()),
                tool_calls: vec![],
                delay_ms: 0,
            },
        ]);
        let mut req = ChatRequest {
            model: "scripted".into(),
            messages: vec![Message::text(Role::User, "cats")],
            tools: vec![],
            max_tokens: None,
        };
        let r1 = p.chat(&req).await.unwrap();
        assert_eq!(r1.tool_calls[0].arguments["q"], "cats");
        assert_eq!(r1.provider, "scripted");
        req.messages.push(Message {
            role: Role::Assistant,
            content: None,
            tool_calls: r1.tool_calls,
            tool_call_id: None,
        });
        assert_eq!(
            p.chat(&req).await.unwrap().content.as_deref(),
            Some("done: cats")
        );
        req.messages.push(Message::text(Role::Assistant, "x"));
        assert!(p
            .chat(&req)
            .await
            .unwrap_err()
            .to_string()
            .contains("turn 3"));
    }
}
