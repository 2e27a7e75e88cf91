//! HTTP APIs described by OpenAPI documents: added, listed, removed. Administrators' only: an
//! API's definition holds where its calls go and with which credentials.

use std::collections::BTreeMap;

use serde_json::Value;
use steward_store::OpenApiRecord;
use steward_tools::openapi;

use crate::*;

/// The largest document accepted (as JSON).
const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
const MAX_URL: usize = 2048;
const MAX_SET: usize = 64;
const MAX_VALUE: usize = 4096;
/// Headers the HTTP client sets itself, or that a caller's call carries.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "idempotency-key",
];

/// An API as given: its document (a JSON object, or its text in JSON or YAML), where it
/// answers (else the document's first server), and what every call carries.
#[derive(Clone, Debug, Default)]
pub struct OpenApiDefinition {
    pub document: Value,
    pub base_url: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    /// The OAuth 2 client its calls are authorised with.
    pub oauth: Option<openapi::OAuthClient>,
    /// Who answers for its tools.
    pub owner: Option<String>,
}

/// A configured API and what became of it on this node.
#[derive(Clone, Debug)]
pub struct OpenApiInfo {
    pub name: String,
    pub base_url: String,
    /// The names of the headers and query parameters every call carries; their values are
    /// never shown (they hold credentials).
    pub headers: Vec<String>,
    pub query: Vec<String>,
    /// Its OAuth client's token endpoint, if it has one.
    pub oauth_token_url: Option<String>,
    /// Who answers for its tools (empty: nobody named).
    pub owner: String,
    /// Its tools' names.
    pub tools: Vec<String>,
    /// Operations left out, each with why.
    pub skipped: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `Engine::openapis()`.
pub struct OpenApis<'a>(pub(crate) &'a Engine);

impl OpenApis<'_> {
    fn info(&self, r: OpenApiRecord) -> OpenApiInfo {
        let names = |s: &str| {
            serde_json::from_str::<BTreeMap<String, String>>(s)
                .unwrap_or_default()
                .into_keys()
                .collect()
        };
        let built = self.0.inner.openapis.built(&r.name).unwrap_or_default();
        let oauth_token_url = serde_json::from_str::<openapi::OAuthClient>(&r.oauth)
            .ok()
            .map(|c| c.token_url);
        OpenApiInfo {
            oauth_token_url,
            owner: r.owner,
            headers: names(&r.headers),
            query: names(&r.query),
            tools: built.tools,
            skipped: built.skipped,
            name: r.name,
            base_url: r.base_url,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }

    /// Adds API `name` (its operations become `name.operationId`), or replaces it; its tools
    /// are in this node's registry before this returns.
    pub async fn put(&self, name: &str, def: OpenApiDefinition) -> Result<OpenApiInfo> {
        let bad = |m: String| Error::InvalidRequest(m);
        handles::mcp_servers::check_name(name)?;
        if self
            .0
            .store()
            .mcp_servers()
            .await?
            .iter()
            .any(|s| s.name == name)
        {
            return Err(Error::Conflict(format!(
                "{name:?} is an MCP server's name, and prefixes its tools: choose another"
            )));
        }
        let document =
            match def.document {
                Value::String(text) => openapi::parse_document(&text, MAX_DOCUMENT_BYTES)
                    .map_err(|e| bad(format!("document: {e}")))?,
                Value::Object(o) => Value::Object(o),
                _ => return Err(bad(
                    "document: the OpenAPI document, as a JSON object or as its JSON or YAML text"
                        .into(),
                )),
            };
        let document_json = serde_json::to_string(&document).unwrap_or_default();
        if document_json.len() > MAX_DOCUMENT_BYTES {
            return Err(bad(format!(
                "document: larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        check_set("headers", &def.headers, true)?;
        check_set("query", &def.query, false)?;
        let owner = def.owner.unwrap_or_default();
        super::mcp_servers::check_owner(&owner)?;
        if let Some(client) = &def.oauth {
            client.check().map_err(|e| bad(format!("oauth: {e}")))?;
            if self.0.inner.shared.vault.is_none() {
                return Err(bad("oauth: tokens are kept sealed with the vault's key; start the server with STEWARD_VAULT_KEY".into()));
            }
            if def
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                return Err(bad(
                    "headers: Authorization is set by `oauth`; give one or the other".into(),
                ));
            }
        }
        let base_url = match def.base_url {
            Some(u) => u,
            None => openapi::first_server(&document).ok_or_else(|| {
                bad(
                    "baseUrl: the document names no absolute server URL; give the API's base URL"
                        .into(),
                )
            })?,
        };
        if base_url.len() > MAX_URL {
            return Err(bad(format!("baseUrl: at most {MAX_URL} bytes")));
        }
        openapi::check_base_url(&base_url).map_err(|e| bad(format!("baseUrl: {e}")))?;
        let now = self.0.inner.shared.clock.now_ms();
        let store = self.0.store();
        let created_at = store
            .openapis()
            .await?
            .into_iter()
            .find(|a| a.name == name)
            .map_or(now, |a| a.created_at);
        let record = OpenApiRecord {
            name: name.to_string(),
            document: document_json,
            base_url,
            headers: serde_json::to_string(&def.headers).unwrap_or_default(),
            query: serde_json::to_string(&def.query).unwrap_or_default(),
            oauth: def
                .oauth
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .unwrap_or_default(),
            owner,
            created_at,
            // Strictly newer than what it replaces, so every node sees the change.
            updated_at: now.max(created_at + 1),
        };
        // Read now, so a document that offers nothing callable is refused, not stored.
        let openapis = &self.0.inner.openapis;
        let (_, import) =
            crate::openapis::build(&record, openapis.credentials(), &Default::default())
                .map_err(|e| bad(format!("document: {e}")))?;
        if import.operations.is_empty() {
            let why = if import.skipped.is_empty() {
                "it has no operations".to_string()
            } else {
                import.skipped.join("; ")
            };
            return Err(bad(format!(
                "document: no operation could become a tool: {why}"
            )));
        }
        store.put_openapi(&record).await?;
        // A changed client may name another server or scopes: its next call gets a new token.
        self.0.inner.oauth.forget(name).await?;
        openapis.follow().await?;
        Ok(self.info(record))
    }

    /// Every configured API, by name.
    pub async fn list(&self) -> Result<Vec<OpenApiInfo>> {
        Ok(self
            .0
            .store()
            .openapis()
            .await?
            .into_iter()
            .map(|r| self.info(r))
            .collect())
    }

    pub async fn get(&self, name: &str) -> Result<OpenApiInfo> {
        self.list()
            .await?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::NotFound(format!("no OpenAPI API {name:?}")))
    }

    /// Removes API `name`: its tools leave the registry.
    pub async fn delete(&self, name: &str) -> Result<()> {
        if !self.0.store().delete_openapi(name).await? {
            return Err(Error::NotFound(format!("no OpenAPI API {name:?}")));
        }
        self.0.inner.oauth.forget(name).await?;
        self.0.inner.openapis.follow().await?;
        Ok(())
    }
}

/// Headers or query parameters every call carries: sound names, printable values,
/// `{{secret:NAME}}` placeholders whole.
fn check_set(what: &str, set: &BTreeMap<String, String>, headers: bool) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if set.len() > MAX_SET {
        return bad(format!("{what}: at most {MAX_SET}"));
    }
    for (k, v) in set {
        if headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return bad(format!("{what}: {k:?} is not a header name"));
            }
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                return bad(format!("{what}: {k} is set by the HTTP client itself"));
            }
            if http::HeaderValue::from_str(v).is_err() {
                return bad(format!("{what}: the value of {k} must be visible ASCII"));
            }
        } else if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
            return bad(format!("{what}: {k:?} is not a parameter name"));
        }
        if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
            return bad(format!(
                "{what}: the value of {k} must be printable and at most {MAX_VALUE} bytes"
            ));
        }
        steward_tools::secret_refs::parts(v)
            .map_err(|e| Error::InvalidRequest(format!("{what} {k}: {e}")))?;
    }
    Ok(())
}
