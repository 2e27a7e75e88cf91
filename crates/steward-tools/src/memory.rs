//! Memory for managed agents: `memory_add` and `memory_search`, over the engine's memory
//! (`ToolHost`), which decides each scope and audits the access.

use serde_json::{json, Value};

use crate::{Annotations, Result, Tool, ToolContext, ToolInfo};

pub struct MemorySearch;
pub struct MemoryAdd;

const SCOPES: &str = "`agent:<this agent>` (its own), `user:<its owner>`, `run:<this run>`, \
`org` or `collection:<name>`; scopes other than its own need a policy";

#[async_trait::async_trait]
impl Tool for MemorySearch {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_READ
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "memory_search".into(),
            description: format!(
                "Searches long-term memory for facts relevant to a query, best first. Scopes: {SCOPES} (default: this agent's own and its owner's)."
            )
            .into(),
            parameters: json!({"type": "object", "required": ["query"], "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "scopes": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                "max_tokens": {"type": "integer", "minimum": 1}
            }}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        ctx.host.memory_search(ctx.run()?, args).await
    }
}

#[async_trait::async_trait]
impl Tool for MemoryAdd {
    fn annotations(&self) -> Annotations {
        // Written once per step: a retried call finds the memory it wrote.
        Annotations {
            read_only: false,
            destructive: false,
            idempotent: true,
            open_world: false,
        }
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "memory_add".into(),
            description: format!(
                "Remembers a fact for later runs. Give `supersedes` (a memory's id) to correct a fact: the old version is kept as history. Scopes: {SCOPES} (default: this agent's own)."
            )
            .into(),
            parameters: json!({"type": "object", "required": ["text"], "properties": {
                "text": {"type": "string", "description": "One fact, in a sentence."},
                "scope": {"type": "string"},
                "subject": {"type": "string", "description": "Who or what it is about."},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                "metadata": {"type": "object"},
                "supersedes": {"type": "string"},
                "entities": {"type": "array", "items": {"type": "string"}, "maxItems": 32,
                    "description": "Names of the people, places and things it is about."},
                "relations": {"type": "array", "maxItems": 32,
                    "description": "Edges it states, e.g. {\"subject\": \"Alice\", \"relation\": \"works_at\", \"object\": \"Acme\"}.",
                    "items": {"type": "object", "required": ["subject", "relation", "object"], "properties": {
                        "subject": {"type": "string"}, "relation": {"type": "string"}, "object": {"type": "string"}}}}
            }}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        ctx.host.memory_add(ctx.run()?, ctx.seq, args).await
    }
}
