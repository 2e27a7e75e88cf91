//! The managed agent loop: model → tool calls → model … → final answer, every step through
//! the Kernel. It is deterministic given the journal, which is what makes replay work.

use std::collections::HashMap;

use serde_json::Value;
use steward_llm::{ChatRequest, Message, Role, ToolSpec};

use crate::kernel::{Kernel, ModelCall, RunCtx, StepError, ToolCall};
use crate::tool_search;

pub(crate) enum LoopEnd {
    Answer(String),
    MaxSteps(u32),
    /// The same tool call was asked for once more than `liveness.maxRepeats` allows.
    Looping {
        tool: String,
        times: u32,
    },
    Step(StepError),
}

pub(crate) async fn run(kernel: &Kernel, ctx: &mut RunCtx) -> LoopEnd {
    // A fork departing at its first step starts with its edits; one departing later, at the
    // first model call from its step on (the steps before are the source's, replayed).
    let mut edits = ctx.fork.clone();
    let mut input = ctx.run.input.clone();
    if let Some(f) = edits.clone().filter(|f| f.at == 0) {
        // Its recall, before any model call, searches by the edited input too.
        if let Some(i) = &f.input {
            input.clone_from(i);
        }
        edit_spec(ctx, &f);
    }
    let spec = ctx.spec.clone();
    let model = if spec.is_scripted() {
        ctx.provider = kernel.router.providers().scripted(&spec);
        steward_llm::SCRIPTED_LABEL.to_string()
    } else {
        spec.model.clone() // an alias or provider/model: the router resolves it per attempt
    };
    // Model APIs take tool names of `[a-zA-Z0-9_-]` only: an upstream's `server.tool` is
    // offered as `server__tool`, and a call of that name is the tool's.
    let mut real_names: HashMap<String, String> = HashMap::new();
    let mut tools: Vec<ToolSpec> = Vec::new();
    if spec.tool_search {
        // Only the meta-tools at first; `tools_describe` adds what it shows.
        for t in tool_search::meta_tools() {
            offer(
                &mut tools,
                &mut real_names,
                &t.name,
                t.description,
                t.input_schema,
            );
        }
    } else {
        for t in kernel.tools.matching(&spec.tools) {
            let i = t.info();
            offer(
                &mut tools,
                &mut real_names,
                &i.name,
                i.description.to_string(),
                i.parameters,
            );
        }
    }
    let mut request = ChatRequest {
        model,
        messages: Vec::new(),
        tools,
        max_tokens: spec.max_tokens,
    };
    if !spec.system_prompt.is_empty() {
        request
            .messages
            .push(Message::text(Role::System, spec.system_prompt.clone()));
    }
    if let Some(recall) = &spec.memory {
        match recalled(kernel, ctx, recall, &input).await {
            Ok(Some(m)) => request.messages.push(m),
            Ok(None) => {}
            Err(e) => return LoopEnd::Step(e),
        }
    }
    request.messages.push(Message::text(Role::User, input));

    // The last tool call and how many times in a row it was made. The model's replies come
    // from the journal on replay, so the count is the same in every life of the run.
    let max_repeats = spec.liveness.as_ref().map(|l| l.max_repeats);
    let mut last: Option<(String, String)> = None;
    let mut repeats = 0u32;
    for _ in 0..spec.max_steps {
        if let Some(f) = edits.take_if(|f| ctx.next_seq() >= f.at) {
            fork_edits(ctx, &f, &mut request);
        }
        let reply = match kernel.call(ctx, ModelCall { request: &request }).await {
            Ok(r) => r,
            Err(e) => return LoopEnd::Step(e),
        };
        if reply.tool_calls.is_empty() {
            return LoopEnd::Answer(reply.content.unwrap_or_default());
        }
        let calls = reply.tool_calls;
        let mut results = Vec::with_capacity(calls.len());
        for call in &calls {
            let name = real_names
                .get(&call.name)
                .map_or(call.name.as_str(), String::as_str);
            // Only agents that ask for loop detection pay for comparing calls.
            if let Some(max) = max_repeats {
                let this = (name.to_string(), call.arguments.to_string());
                repeats = if last.as_ref() == Some(&this) {
                    repeats + 1
                } else {
                    1
                };
                last = Some(this);
                if repeats > max {
                    return LoopEnd::Looping {
                        tool: name.to_string(),
                        times: repeats,
                    };
                }
            }
            let out = match kernel
                .call(
                    ctx,
                    ToolCall {
                        name,
                        args: &call.arguments,
                    },
                )
                .await
            {
                Ok(r) => r,
                Err(e) => return LoopEnd::Step(e),
            };
            if spec.tool_search && name == tool_search::TOOLS_DESCRIBE {
                if let Ok(shown) = &out {
                    load_described(shown, &spec, &mut request.tools, &mut real_names);
                }
            }
            let text = match out {
                Ok(Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            };
            results.push(Message::tool_result(&call.id, text));
        }
        request.messages.push(Message {
            role: Role::Assistant,
            content: reply.content,
            tool_calls: calls,
            tool_call_id: None,
        });
        request.messages.extend(results);
    }
    LoopEnd::MaxSteps(spec.max_steps)
}

/// A fork's model edit: the model is decided, planned and paid for as the agent's own would
/// be, and a scripted agent moved to a real model leaves its script.
fn edit_spec(ctx: &mut RunCtx, fork: &steward_store::RunFork) {
    if let Some(m) = &fork.model {
        let mut spec = (*ctx.spec).clone();
        spec.model.clone_from(m);
        if !spec.is_scripted() {
            ctx.provider = None;
        }
        ctx.spec = std::sync::Arc::new(spec);
    }
}

/// A fork's edits, made to the conversation before its first model call at or after the
/// fork's step: the user's message, the system prompt (empty: none), the model.
fn fork_edits(ctx: &mut RunCtx, fork: &steward_store::RunFork, request: &mut ChatRequest) {
    if let Some(i) = &fork.input {
        if let Some(m) = request.messages.iter_mut().find(|m| m.role == Role::User) {
            m.content = Some(i.clone());
        }
    }
    if let Some(p) = &fork.system_prompt {
        // The agent's own prompt is the first message when it has one; a recall comes after.
        let has_own = !ctx.spec.system_prompt.is_empty()
            && request
                .messages
                .first()
                .is_some_and(|m| m.role == Role::System);
        match (has_own, p.is_empty()) {
            (true, true) => {
                request.messages.remove(0);
            }
            (true, false) => request.messages[0].content = Some(p.clone()),
            (false, false) => request
                .messages
                .insert(0, Message::text(Role::System, p.clone())),
            (false, true) => {}
        }
    }
    edit_spec(ctx, fork);
    if fork.model.is_some() {
        request.model = if ctx.spec.is_scripted() {
            steward_llm::SCRIPTED_LABEL.to_string()
        } else {
            ctx.spec.model.clone()
        };
    }
    ctx.conversation_rewritten();
}

/// Bytes of the run's input its recall searches by.
const RECALL_QUERY_BYTES: usize = 2048;

/// `spec.memory`: a `memory_search` step with the run's input as the query — decided, audited
/// and journaled like any tool call, so a replayed run recalls what its first life did — and
/// what it found as a system message. A search refused or failing leaves the context as it
/// was; the run goes on without memories.
async fn recalled(
    kernel: &Kernel,
    ctx: &mut RunCtx,
    recall: &steward_types::manifest::MemoryRecall,
    input: &str,
) -> Result<Option<Message>, StepError> {
    let mut end = input.len().min(RECALL_QUERY_BYTES);
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    let mut args = serde_json::json!({
        "query": &input[..end],
        "limit": recall.recall,
        "max_tokens": recall.max_tokens,
    });
    if !recall.scopes.is_empty() {
        args["scopes"] = Value::from(recall.scopes.clone());
    }
    let found = kernel
        .call(
            ctx,
            ToolCall {
                name: steward_types::manifest::MEMORY_SEARCH,
                args: &args,
            },
        )
        .await?;
    let found = match found {
        Ok(v) => v,
        Err(why) => {
            tracing::info!(run = %ctx.run.id, %why, "spec.memory: nothing recalled");
            return Ok(None);
        }
    };
    let lines: Vec<String> = found["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(format!(
                "- {} (memory {}, {})",
                m["text"].as_str()?,
                m["id"].as_str()?,
                m["scope"].as_str()?
            ))
        })
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(Message::text(
        Role::System,
        format!(
            "Memories that may be relevant, most relevant first (from long-term memory; a later fact may correct an earlier one):\n{}",
            lines.join("\n")
        ),
    )))
}

/// Adds tool `name` to what the model is offered, under a name model APIs accept.
fn offer(
    tools: &mut Vec<ToolSpec>,
    real_names: &mut HashMap<String, String>,
    name: &str,
    description: String,
    parameters: Value,
) {
    let offered = model_name(name);
    if tools.iter().any(|t| t.name == offered) {
        return;
    }
    if offered != name {
        real_names.insert(offered.clone(), name.to_string());
    }
    tools.push(ToolSpec {
        name: offered,
        description,
        parameters,
    });
}

/// The tools a `tools_describe` result shows (from the journal, on a replay), offered to the
/// model from now on: those the agent's spec gives it, with the schema as shown.
fn load_described(
    shown: &Value,
    spec: &steward_types::manifest::AgentSpec,
    tools: &mut Vec<ToolSpec>,
    real_names: &mut HashMap<String, String>,
) {
    for t in shown["tools"].as_array().into_iter().flatten() {
        let Some(name) = t["name"].as_str() else {
            continue;
        };
        if tool_search::is_meta(name) || !spec.lists_tool(name) {
            continue;
        }
        let description = t["description"].as_str().unwrap_or_default().to_string();
        offer(
            tools,
            real_names,
            name,
            description,
            t["inputSchema"].clone(),
        );
    }
}

/// `name` as model APIs accept a tool's: `.` (an upstream server's prefix) becomes `__`, any
/// other character outside `[a-zA-Z0-9_-]` becomes `_`.
fn model_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for c in name.chars() {
        match c {
            '.' => out.push_str("__"),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => out.push(c),
            _ => out.push('_'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::model_name;

    #[test]
    fn upstream_tool_names_are_offered_as_model_apis_accept_them() {
        assert_eq!(model_name("everything.get-sum"), "everything__get-sum");
        assert_eq!(model_name("github.repos.list"), "github__repos__list");
        assert_eq!(
            model_name("http_request"),
            "http_request",
            "native names are unchanged"
        );
        assert_eq!(model_name("odd name!"), "odd_name_");
    }
}
