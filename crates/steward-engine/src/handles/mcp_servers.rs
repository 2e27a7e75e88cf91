//! Upstream MCP servers: added, listed, removed, started again. Administrators' only: a server
//! is a command this node runs.

use std::collections::BTreeMap;

use steward_store::McpServerRecord;

use crate::upstreams::Status;
use crate::*;

const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 64;
/// Leaves room for its tools' names (`server.tool`) under MCP's 64.
const MAX_NAME: usize = 32;

/// A configured server and how it is doing on this node.
#[derive(Clone, Debug)]
pub struct McpServerInfo {
    pub name: String,
    pub transport: String,
    pub command: Vec<String>,
    /// The names of the environment variables it gets; their values are never shown (they
    /// often hold credentials).
    pub env: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// None until this node has started it (at most a couple of seconds after it was added
    /// through another node).
    pub status: Option<Status>,
}

/// `Engine::mcp_servers()`.
pub struct McpServers<'a>(pub(crate) &'a Engine);

impl McpServers<'_> {
    fn info(&self, r: McpServerRecord) -> McpServerInfo {
        let command = serde_json::from_str(&r.command).unwrap_or_default();
        let env: BTreeMap<String, String> = serde_json::from_str(&r.env).unwrap_or_default();
        McpServerInfo {
            status: self.0.inner.upstreams.status(&r.name),
            name: r.name,
            transport: r.transport,
            command,
            env: env.into_keys().collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }

    /// Adds server `name` (its tools become `name.tool`), or replaces its command and
    /// environment (it is started again); started on this node before this returns.
    pub async fn put(
        &self,
        name: &str,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<McpServerInfo> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return bad(format!(
                "name: 1 to {MAX_NAME} of a-z, 0-9, `_` and `-` (it prefixes its tools' names: {name:?}.tool)"
            ));
        }
        if command.is_empty() || command[0].is_empty() {
            return bad("command: the program to start and its arguments, e.g. [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"]".into());
        }
        if command.len() > MAX_ARGS
            || command
                .iter()
                .any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
        {
            return bad(format!(
                "command: at most {MAX_ARGS} arguments of at most {MAX_ARG_BYTES} bytes, without NUL"
            ));
        }
        if env.len() > MAX_ENV
            || env.iter().any(|(k, v)| {
                k.is_empty()
                    || k.contains('=')
                    || k.contains('\0')
                    || v.contains('\0')
                    || k.len() + v.len() > MAX_ARG_BYTES
            })
        {
            return bad(format!(
                "env: at most {MAX_ENV} variables, names without `=`, no NUL, each at most {MAX_ARG_BYTES} bytes"
            ));
        }
        let now = self.0.inner.shared.clock.now_ms();
        let store = self.0.store();
        let created_at = store
            .mcp_servers()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .map_or(now, |s| s.created_at);
        let record = McpServerRecord {
            name: name.to_string(),
            transport: "stdio".into(),
            command: serde_json::to_string(&command).unwrap_or_default(),
            env: serde_json::to_string(&env).unwrap_or_default(),
            created_at,
            // Strictly newer than what it replaces, so every node sees the change.
            updated_at: now.max(created_at + 1),
        };
        store.put_mcp_server(&record).await?;
        self.0.inner.upstreams.follow().await?;
        Ok(self.info(record))
    }

    /// Every configured server, by name.
    pub async fn list(&self) -> Result<Vec<McpServerInfo>> {
        Ok(self
            .0
            .store()
            .mcp_servers()
            .await?
            .into_iter()
            .map(|r| self.info(r))
            .collect())
    }

    pub async fn get(&self, name: &str) -> Result<McpServerInfo> {
        self.list()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NotFound(format!("no MCP server {name:?}")))
    }

    /// Removes server `name`: its process stops and its tools leave the registry.
    pub async fn delete(&self, name: &str) -> Result<()> {
        if !self.0.store().delete_mcp_server(name).await? {
            return Err(Error::NotFound(format!("no MCP server {name:?}")));
        }
        self.0.inner.upstreams.follow().await?;
        Ok(())
    }

    /// Starts server `name` again on this node now.
    pub async fn restart(&self, name: &str) -> Result<McpServerInfo> {
        let info = self.get(name).await?;
        self.0.inner.upstreams.follow().await?;
        self.0.inner.upstreams.restart(name);
        Ok(info)
    }
}
