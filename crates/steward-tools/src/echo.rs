use serde_json::{json, Value};

use crate::{Annotations, Result, Tool, ToolContext, ToolInfo};

/// Returns its arguments. No effect: the benchmark's no-op tool, and handy for tests.
pub struct Echo;

#[async_trait::async_trait]
impl Tool for Echo {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_READ
    }
    fn outside_runs(&self) -> bool {
        true
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "echo".into(),
            description: "Returns its arguments unchanged.".into(),
            parameters: json!({"type": "object"}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, _: &ToolContext, args: Value) -> Result<Value> {
        Ok(args)
    }
}
