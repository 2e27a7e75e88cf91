//! The tool registry as the management API sees it.

use steward_tools::Annotations;

use crate::*;

/// A registry tool, for administrators.
#[derive(Clone, Debug)]
pub struct ToolEntry {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub annotations: Annotations,
    /// Where it comes from (`native` for the server's built-in tools).
    pub source: String,
    /// Whether callers outside a run (MCP clients) may be given it.
    pub outside_runs: bool,
    /// JSON Schema of its structured result, when it declares one.
    pub output_schema: Option<serde_json::Value>,
    pub version: String,
    /// Who answers for it (`steward` for the server's own tools).
    pub owner: String,
}

/// `Engine::tools()`.
pub struct Tools<'a>(pub(crate) &'a Engine);

impl Tools<'_> {
    /// Every tool of the registry, by name.
    pub fn list(&self) -> Vec<ToolEntry> {
        let tools = &self.0.inner.kernel.tools;
        tools
            .names()
            .into_iter()
            .filter_map(|name| {
                let t = tools.get(&name)?;
                let info = t.info();
                Some(ToolEntry {
                    name,
                    description: info.description.to_string(),
                    input_schema: info.parameters,
                    annotations: t.annotations(),
                    source: t.source(),
                    outside_runs: t.outside_runs(),
                    output_schema: t.output_schema(),
                    version: t.version(),
                    owner: t.owner(),
                })
            })
            .collect()
    }

    /// One tool, by name.
    pub fn get(&self, name: &str) -> Option<ToolEntry> {
        self.list().into_iter().find(|t| t.name == name)
    }
}
