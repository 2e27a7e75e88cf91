//! Starts a child run of another agent and waits for its result. The child's id is derived from
//! the parent's id and the step's position, so a replayed spawn finds its child again.

use serde_json::{json, Value};
use steward_types::RunId;

use crate::{str_arg, Result, Tool, ToolContext, ToolInfo};

pub struct SpawnAgent;

#[async_trait::async_trait]
impl Tool for SpawnAgent {
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "spawn_agent",
            description: "Runs another agent with an input and returns its final answer.",
            parameters: json!({"type": "object", "required": ["agent", "input"],
                "properties": {"agent": {"type": "string"}, "input": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true // the deterministic child id makes a second spawn find the first
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let agent = str_arg(&args, "agent")?;
        let input = str_arg(&args, "input")?;
        let child = RunId::child_of(&ctx.run_id, ctx.seq);
        let out = ctx
            .host
            .spawn_and_wait(&ctx.run_id, &child, agent, input)
            .await?;
        Ok(
            json!({"run_id": out.run_id, "state": out.state, "result": out.result, "error": out.error}),
        )
    }
}
