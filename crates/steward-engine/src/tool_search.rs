//! `tools_search` and `tools_describe`: the meta-tools with which an agent that may call many
//! tools finds the ones it needs and loads only their schemas. MCP clients always have them
//! (over what policy lets them call); a managed agent has them with `spec.toolSearch` (over
//! what its `spec.tools` gives), in place of every schema up front.

use std::collections::HashMap;

use serde_json::{json, Value};
use steward_tools::{Annotations, Catalog, CatalogEntry, Tool};
pub use steward_types::manifest::{TOOLS_DESCRIBE, TOOLS_SEARCH};

/// What `tools_search` returns when the caller does not say.
const SEARCH_LIMIT: usize = 10;
const SEARCH_MAX_LIMIT: usize = 100;

/// A tool as a caller sees it.
#[derive(Clone, Debug)]
pub struct ToolView {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub input_schema: Value,
    /// JSON Schema of its structured result, when it declares one.
    pub output_schema: Option<Value>,
    pub annotations: Annotations,
}

impl ToolView {
    pub fn of(name: String, tool: &dyn Tool) -> ToolView {
        let info = tool.info();
        ToolView {
            name,
            description: info.description.to_string(),
            input_schema: info.parameters,
            output_schema: tool.output_schema(),
            annotations: tool.annotations(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": {
                "readOnlyHint": self.annotations.read_only,
                "destructiveHint": self.annotations.destructive,
                "idempotentHint": self.annotations.idempotent,
                "openWorldHint": self.annotations.open_world,
            },
        });
        if let Some(out) = &self.output_schema {
            v["outputSchema"] = out.clone();
        }
        v
    }
}

/// The two meta-tools.
pub fn meta_tools() -> [ToolView; 2] {
    let read_only = Annotations::LOCAL_READ;
    [
        ToolView {
            name: TOOLS_SEARCH.into(),
            description: "Finds the tools you may call that match a query (ranked full-text search over their names, descriptions and arguments). Returns names and descriptions; get a tool's argument schema with tools_describe.".into(),
            input_schema: json!({"type": "object", "required": ["query"], "properties": {
                "query": {"type": "string", "description": "words describing what the tool should do"},
                "limit": {"type": "integer", "minimum": 1, "maximum": SEARCH_MAX_LIMIT, "description": "at most this many tools (default 10)"}},
                "additionalProperties": false}),
            output_schema: None,
            annotations: read_only,
        },
        ToolView {
            name: TOOLS_DESCRIBE.into(),
            description: "The full description, argument schema and annotations of tools you may call, by name.".into(),
            input_schema: json!({"type": "object", "required": ["names"], "properties": {
                "names": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": SEARCH_MAX_LIMIT}},
                "additionalProperties": false}),
            output_schema: None,
            annotations: read_only,
        },
    ]
}

/// Whether `name` is one of the meta-tools.
pub fn is_meta(name: &str) -> bool {
    name == TOOLS_SEARCH || name == TOOLS_DESCRIBE
}

/// The argument schema of meta-tool `name`.
pub fn schema_of(name: &str) -> Value {
    meta_tools()
        .into_iter()
        .find(|t| t.name == name)
        .map(|t| t.input_schema)
        .unwrap_or_default()
}

/// What meta-tool `name` answers to `args` (already checked against its schema), over the
/// tools `visible` to the caller.
pub fn answer(name: &str, args: &Value, visible: &[ToolView]) -> Value {
    if name == TOOLS_SEARCH {
        let query = args["query"].as_str().unwrap_or_default();
        let limit = args["limit"].as_u64().map_or(SEARCH_LIMIT, |l| l as usize);
        // The meta-tools themselves are not what a search looks for.
        let searched = visible.iter().filter(|t| !is_meta(&t.name));
        let catalog = Catalog::new(searched.map(|t| CatalogEntry {
            name: &t.name,
            description: &t.description,
            schema: &t.input_schema,
        }));
        let by_name: HashMap<&str, &ToolView> =
            visible.iter().map(|t| (t.name.as_str(), t)).collect();
        let hits: Vec<Value> = catalog
            .search(query, limit)
            .into_iter()
            .filter_map(|(n, score)| {
                let t = by_name.get(n.as_str())?;
                Some(json!({"name": n, "description": t.description, "score": (score * 1000.0).round() / 1000.0}))
            })
            .collect();
        return json!({"tools": hits});
    }
    let names: Vec<&str> = args["names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let found: Vec<Value> = names
        .iter()
        .filter_map(|n| visible.iter().find(|t| t.name == *n).map(ToolView::to_json))
        .collect();
    let unknown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !visible.iter().any(|t| t.name == *n))
        .collect();
    json!({"tools": found, "unknown": unknown})
}
