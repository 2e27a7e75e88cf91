//! The managed agent loop: model → tool calls → model … → final answer, every step through
//! the Kernel. It is deterministic given the journal, which is what makes replay work.

use serde_json::Value;
use steward_llm::{ChatRequest, Message, Role, ToolSpec};

use crate::kernel::{Action, Kernel, Outcome, RunCtx, StepError};

pub(crate) enum LoopEnd {
    Answer(String),
    MaxSteps(u32),
    Step(StepError),
}

pub(crate) async fn run(kernel: &Kernel, ctx: &mut RunCtx) -> LoopEnd {
    let spec = ctx.spec.clone();
    let (_, model) = match kernel.providers.resolve(&spec) {
        Ok(p) => p,
        Err(e) => return LoopEnd::Step(StepError::Model(e.to_string())),
    };
    let tools: Vec<ToolSpec> = spec
        .tools
        .iter()
        .filter_map(|n| kernel.tools.get(n))
        .map(|t| {
            let i = t.info();
            ToolSpec {
                name: i.name.to_string(),
                description: i.description.to_string(),
                parameters: i.parameters,
            }
        })
        .collect();
    let mut messages = Vec::new();
    if !spec.system_prompt.is_empty() {
        messages.push(Message::text(Role::System, spec.system_prompt.clone()));
    }
    messages.push(Message::text(Role::User, ctx.run.input.clone()));

    for _ in 0..spec.max_steps {
        let request = ChatRequest {
            model: model.clone(),
            messages: messages.clone(),
            tools: tools.clone(),
            max_tokens: spec.max_tokens,
        };
        let reply = match kernel.call(ctx, Action::Model { request }).await {
            Ok(Outcome::Model(r)) => r,
            Ok(Outcome::Tool(_)) => {
                return LoopEnd::Step(StepError::Divergence(
                    "a model step replayed as a tool step".into(),
                ))
            }
            Err(e) => return LoopEnd::Step(e),
        };
        messages.push(Message {
            role: Role::Assistant,
            content: reply.content.clone(),
            tool_calls: reply.tool_calls.clone(),
            tool_call_id: None,
        });
        if reply.tool_calls.is_empty() {
            return LoopEnd::Answer(reply.content.unwrap_or_default());
        }
        for call in reply.tool_calls {
            let out = match kernel
                .call(
                    ctx,
                    Action::Tool {
                        name: call.name.clone(),
                        args: call.arguments.clone(),
                    },
                )
                .await
            {
                Ok(Outcome::Tool(r)) => r,
                Ok(Outcome::Model(_)) => {
                    return LoopEnd::Step(StepError::Divergence(
                        "a tool step replayed as a model step".into(),
                    ))
                }
                Err(e) => return LoopEnd::Step(e),
            };
            let text = match out {
                Ok(Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            };
            messages.push(Message::tool_result(&call.id, text));
        }
    }
    LoopEnd::MaxSteps(spec.max_steps)
}
