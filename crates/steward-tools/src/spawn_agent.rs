//! Starts a child run of another agent and waits for its result. The child's id is derived from
//! the parent's id and the step's position, so a replayed spawn finds its child again. The
//! parent may grant the child less than it holds itself: fewer tools or models, a budget.

use serde_json::{json, Value};
use steward_types::RunId;

use crate::{
    str_arg, AlsoDecided, Annotations, Grant, Result, Tool, ToolContext, ToolError, ToolInfo, Wait,
};

pub struct SpawnAgent;

#[async_trait::async_trait]
impl Tool for SpawnAgent {
    fn annotations(&self) -> Annotations {
        Annotations {
            read_only: false,
            destructive: false,
            idempotent: true,
            open_world: false,
        }
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "spawn_agent".into(),
            description: "Runs another agent with an input and returns its final answer.".into(),
            parameters: json!({"type": "object", "required": ["agent", "input"],
                "properties": {"agent": {"type": "string"}, "input": {"type": "string"},
                    "tools": {"type": "array", "items": {"type": "string"},
                        "description": "the only tools the child may use"},
                    "models": {"type": "array", "items": {"type": "string"},
                        "description": "the only models the child may call"},
                    "budget_usd": {"type": "number",
                        "description": "the most the child may spend"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true // the deterministic child id makes a second spawn find the first
    }
    fn also_decided(&self, _: &RunId, args: &Value) -> Option<AlsoDecided> {
        Some(AlsoDecided {
            action: "agent.spawn",
            resource: args
                .get("agent")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
    fn wait(&self) -> Wait {
        Wait::UntilDone // a child run is bounded by its own timeout, not the parent's step's
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let agent = str_arg(&args, "agent")?;
        let input = str_arg(&args, "input")?;
        let child = RunId::child_of(ctx.run()?, ctx.seq);
        let grant = grant(&args)?;
        let out = ctx
            .host
            .spawn_and_wait(ctx.run()?, &child, agent, input, grant)
            .await?;
        Ok(
            json!({"run_id": out.run_id, "state": out.state, "result": out.result, "error": out.error}),
        )
    }
}

/// The optional `tools`, `models` and `budget_usd` arguments, when any is given.
fn grant(args: &Value) -> Result<Option<Grant>> {
    let list = |key: &str| -> Result<Option<Vec<String>>> {
        match args.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ToolError::InvalidArgs(format!("`{key}` must be an array of strings"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(ToolError::InvalidArgs(format!(
                "`{key}` must be an array of strings"
            ))),
        }
    };
    let budget_usd = match args.get("budget_usd") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|b| (0.0..=1e6).contains(b))
                .ok_or_else(|| {
                    ToolError::InvalidArgs("`budget_usd` must be a number from 0 to 1e6".into())
                })?,
        ),
    };
    let g = Grant {
        tools: list("tools")?,
        models: list("models")?,
        budget_usd,
    };
    Ok((g != Grant::default()).then_some(g))
}
