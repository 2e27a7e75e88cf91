//! A key-value scratchpad scoped to one run: notes an agent keeps between steps.

use serde_json::{json, Value};

use crate::{str_arg, Annotations, Result, Tool, ToolContext, ToolError, ToolInfo};

const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 * 1024;

pub struct ScratchpadSet;
pub struct ScratchpadGet;

#[async_trait::async_trait]
impl Tool for ScratchpadSet {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_OVERWRITE
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "scratchpad_set".into(),
            description: "Stores a value under a key in this run's scratchpad.".into(),
            parameters: json!({"type": "object", "required": ["key", "value"],
                "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let key = str_arg(&args, "key")?;
        let value = str_arg(&args, "value")?;
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(ToolError::InvalidArgs(format!(
                "`key` must be 1 to {MAX_KEY} bytes"
            )));
        }
        if value.len() > MAX_VALUE {
            return Err(ToolError::InvalidArgs(format!(
                "`value` is larger than {MAX_VALUE} bytes"
            )));
        }
        ctx.host.scratch_put(ctx.run()?, key, value).await?;
        Ok(json!({"stored": key}))
    }
}

#[async_trait::async_trait]
impl Tool for ScratchpadGet {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_READ
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "scratchpad_get".into(),
            description: "Reads a value from this run's scratchpad; null when the key is unset."
                .into(),
            parameters: json!({"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let key = str_arg(&args, "key")?;
        let value = ctx.host.scratch_get(ctx.run()?, key).await?;
        Ok(json!({"key": key, "value": value}))
    }
}
