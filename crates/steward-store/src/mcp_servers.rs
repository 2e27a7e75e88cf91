//! Upstream MCP servers, as administrators configured them.

use crate::sql::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct McpServerRecord {
    /// The prefix of its tools' names in the registry (`everything` → `everything.echo`).
    pub name: String,
    /// `stdio`: a command started and spoken to on its stdin and stdout; `http`: a server at
    /// `url`, spoken to over Streamable HTTP.
    pub transport: String,
    /// JSON array: the command and its arguments (`stdio`).
    pub command: String,
    /// JSON object: environment variables the command gets (`stdio`).
    pub env: String,
    /// Where the server answers (`http`); empty for `stdio`.
    pub url: String,
    /// JSON object: headers sent with every request (`http`).
    pub headers: String,
    /// JSON: the OAuth 2 client whose token authorises every request (`http`); empty for none.
    pub oauth: String,
    /// Who answers for its tools; empty for nobody named.
    pub owner: String,
    pub created_at: Millis,
    /// Changed whenever the record is: every node restarts its connection when it sees a newer one.
    pub updated_at: Millis,
}

#[async_trait]
pub trait McpServerStore: Send + Sync {
    /// Adds or replaces a server (its `created_at` kept when it was there).
    async fn put_mcp_server(&self, server: &McpServerRecord) -> Result<()>;
    /// Every server, by name.
    async fn mcp_servers(&self) -> Result<Vec<McpServerRecord>>;
    /// Whether there was one.
    async fn delete_mcp_server(&self, name: &str) -> Result<bool>;
}

macro_rules! impl_mcp_servers {
    ($store:ty) => {
        #[async_trait]
        impl McpServerStore for $store {
            async fn put_mcp_server(&self, s: &McpServerRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO mcp_servers (name, transport, command, env, url, headers, oauth, owner, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (name) DO UPDATE SET transport = excluded.transport, \
                       command = excluded.command, env = excluded.env, url = excluded.url, \
                       headers = excluded.headers, oauth = excluded.oauth, owner = excluded.owner, updated_at = excluded.updated_at",
                )
                .bind(&s.name)
                .bind(&s.transport)
                .bind(&s.command)
                .bind(&s.env)
                .bind(&s.url)
                .bind(&s.headers)
                .bind(&s.oauth)
                .bind(&s.owner)
                .bind(s.created_at)
                .bind(s.updated_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn mcp_servers(&self) -> Result<Vec<McpServerRecord>> {
                Ok(sqlx::query_as(
                    "SELECT name, transport, command, env, url, headers, oauth, owner, created_at, updated_at \
                     FROM mcp_servers ORDER BY name",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_mcp_server(&self, name: &str) -> Result<bool> {
                Ok(sqlx::query("DELETE FROM mcp_servers WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    > 0)
            }
        }
    };
}

impl_mcp_servers!(SqliteStore);
impl_mcp_servers!(PgStore);
