//! Upstream MCP servers: added, listed, removed, started again. Administrators' only: a server
//! is a command this node runs, or a URL it connects to with the credentials given.

use std::collections::BTreeMap;

use steward_store::McpServerRecord;
use steward_tools::openapi::OAuthClient;

use crate::upstreams::Status;
use crate::*;

const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 64;
const MAX_URL: usize = 2048;
/// Headers the MCP transport sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "accept",
    "content-type",
    "content-length",
    "host",
    "mcp-session-id",
    "last-event-id",
];

/// How a server is reached.
#[derive(Clone, Debug)]
pub enum Transport {
    /// A command started on each node and spoken to on its stdin and stdout.
    Stdio {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A server at `url`, spoken to over Streamable HTTP with `headers` on every request,
    /// and `Authorization: Bearer` a token of the OAuth 2 client `oauth` if there is one.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
        oauth: Option<OAuthClient>,
    },
}
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
    pub url: Option<String>,
    /// The names of the headers sent to it; their values are never shown either.
    pub headers: Vec<String>,
    /// The token endpoint of the OAuth 2 client its requests are authorised with.
    pub oauth_token_url: Option<String>,
    /// Who answers for its tools (empty: nobody named).
    pub owner: String,
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
        let headers: BTreeMap<String, String> =
            serde_json::from_str(&r.headers).unwrap_or_default();
        let oauth_token_url = serde_json::from_str::<OAuthClient>(&r.oauth)
            .ok()
            .map(|c| c.token_url);
        McpServerInfo {
            status: self.0.inner.upstreams.status(&r.name),
            name: r.name,
            transport: r.transport,
            command,
            env: env.into_keys().collect(),
            url: (!r.url.is_empty()).then_some(r.url),
            headers: headers.into_keys().collect(),
            oauth_token_url,
            owner: r.owner,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }

    /// Adds server `name` (its tools become `name.tool`), or replaces its definition (it is
    /// connected again); connected on this node before this returns.
    pub async fn put(
        &self,
        name: &str,
        transport: Transport,
        owner: Option<String>,
    ) -> Result<McpServerInfo> {
        check_name(name)?;
        let owner = owner.unwrap_or_default();
        check_owner(&owner)?;
        if self
            .0
            .store()
            .openapis()
            .await?
            .iter()
            .any(|a| a.name == name)
        {
            return Err(Error::Conflict(format!(
                "{name:?} is an OpenAPI API's name, and prefixes its tools: choose another"
            )));
        }
        let (kind, command, env, url, headers, oauth) = match transport {
            Transport::Stdio { command, env } => {
                check_stdio(&command, &env)?;
                ("stdio", command, env, String::new(), BTreeMap::new(), None)
            }
            Transport::Http {
                url,
                headers,
                oauth,
            } => {
                check_http(&url, &headers)?;
                if let Some(client) = &oauth {
                    self.check_oauth(client, &headers)?;
                }
                ("http", Vec::new(), BTreeMap::new(), url, headers, oauth)
            }
        };
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
            transport: kind.into(),
            command: serde_json::to_string(&command).unwrap_or_default(),
            env: serde_json::to_string(&env).unwrap_or_default(),
            url,
            headers: serde_json::to_string(&headers).unwrap_or_default(),
            oauth: oauth
                .map(|c| serde_json::to_string(&c).unwrap_or_default())
                .unwrap_or_default(),
            owner,
            created_at,
            // Strictly newer than what it replaces, so every node sees the change.
            updated_at: now.max(created_at + 1),
        };
        store.put_mcp_server(&record).await?;
        // A changed client may name another server or scopes: the connection gets a new token.
        self.0.inner.oauth.forget(name).await?;
        self.0.inner.upstreams.follow().await?;
        Ok(self.info(record))
    }

    fn check_oauth(&self, client: &OAuthClient, headers: &BTreeMap<String, String>) -> Result<()> {
        let bad = |m: String| Error::InvalidRequest(format!("oauth: {m}"));
        client.check().map_err(bad)?;
        if self.0.inner.shared.vault.is_none() {
            return Err(bad(
                "tokens are kept sealed with the vault's key; start the server with STEWARD_VAULT_KEY"
                    .into(),
            ));
        }
        if headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("authorization"))
        {
            return Err(Error::InvalidRequest(
                "headers: Authorization is set by `oauth`; give one or the other".into(),
            ));
        }
        Ok(())
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
        self.0.inner.oauth.forget(name).await?;
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

/// Who answers for a definition's tools: a team's or a person's name.
pub(crate) fn check_owner(owner: &str) -> Result<()> {
    if owner.len() > 128 || owner.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(
            "owner: at most 128 characters, no control characters (a team's or a person's name)"
                .into(),
        ));
    }
    Ok(())
}

/// A name that prefixes tools' names (an MCP server's, an OpenAPI API's).
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(Error::InvalidRequest(format!(
            "name: 1 to {MAX_NAME} of a-z, 0-9, `_` and `-` (it prefixes its tools' names: {name:?}.tool)"
        )));
    }
    Ok(())
}

fn check_stdio(command: &[String], env: &BTreeMap<String, String>) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
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
    for (k, v) in env {
        check_placeholders(v).map_err(|e| Error::InvalidRequest(format!("env {k}: {e}")))?;
    }
    Ok(())
}

fn check_http(url: &str, headers: &BTreeMap<String, String>) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    let uri: http::Uri = match url.parse() {
        Ok(u) if url.len() <= MAX_URL => u,
        _ => {
            return bad(format!(
                "url: an absolute http:// or https:// URL of at most {MAX_URL} bytes, e.g. https://mcp.example.com/mcp"
            ))
        }
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return bad(format!(
            "url: an absolute http:// or https:// URL, not {url:?}"
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return bad("url: credentials go in `headers` (from the vault), not in the URL".into());
    }
    if headers.len() > MAX_ENV {
        return bad(format!("headers: at most {MAX_ENV}"));
    }
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return bad(format!("headers: {k:?} is not a header name"));
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str())
            || k.eq_ignore_ascii_case("mcp-protocol-version")
        {
            return bad(format!("headers: {k} is set by the MCP transport itself"));
        }
        if v.len() > MAX_ARG_BYTES || http::HeaderValue::from_str(v).is_err() {
            return bad(format!(
                "headers: the value of {k} must be visible ASCII of at most {MAX_ARG_BYTES} bytes"
            ));
        }
        check_placeholders(v).map_err(|e| Error::InvalidRequest(format!("headers {k}: {e}")))?;
    }
    Ok(())
}

/// `{{secret:NAME}}` placeholders are whole, and name what a vault secret can be called.
fn check_placeholders(value: &str) -> std::result::Result<(), String> {
    use steward_tools::secret_refs::{parts, Part};
    for part in parts(value)? {
        if let Part::UserSecret(name) = part {
            return Err(format!(
                "{{{{user_secret:{name}}}}}: one connection serves every caller, so it cannot carry a caller's own credential (OpenAPI APIs can)"
            ));
        }
    }
    Ok(())
}
