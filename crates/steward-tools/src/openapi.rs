//! Tools from an OpenAPI 3 document: each operation of an HTTP API becomes a registry tool
//! `api.operationId`, whose arguments are the operation's path, query and header parameters and
//! its JSON (or form) body, checked against the schemas the document gives. Credentials are the
//! administrator's: headers and query parameters set on the API (`{{secret:NAME}}` filled from
//! the vault at call time), which a caller's arguments can neither see nor replace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::secret_refs::{self, Part};
use crate::{Annotations, Result, Tool, ToolContext, ToolError, ToolInfo};

/// A tool's full name (`api.operation`) is at most this long, as MCP clients and model APIs
/// expect.
const MAX_TOOL_NAME: usize = 64;
/// An operation's schemas, `$ref`s resolved, hold at most this many JSON values: a document
/// whose references multiply (each one naming another several times) cannot blow up memory.
const MAX_SCHEMA_NODES: usize = 20_000;
/// `$ref`s followed inside one another at most this deep.
const MAX_REF_DEPTH: usize = 16;
/// A document offers at most this many operations.
const MAX_OPERATIONS: usize = 1_000;
/// The largest request body sent.
const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// How much of an error response is shown to the caller.
const ERROR_BODY_SHOWN: usize = 2_048;
/// How long a token endpoint may take to answer.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers the HTTP client sets, or that a parameter must never set.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "cookie",
    "authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
];
const METHODS: [&str; 7] = ["get", "head", "options", "delete", "put", "post", "patch"];

/// Where an API's credentials come from at call time (the engine's vault and token cache).
#[async_trait::async_trait]
pub trait Credentials: Send + Sync {
    /// A vault secret, by name.
    fn secret(&self, name: &str) -> Option<String>;
    /// A current access token for API `api` from its OAuth client `client`: fetched, or
    /// refreshed before it expires, by one node of the cluster at a time.
    async fn access_token(&self, api: &str, client: &OAuthClient) -> Result<String, String>;
    /// The API refused `token` (HTTP 401): the next call should get a new one.
    async fn token_rejected(&self, _api: &str, _token: &str) {}
}

/// An OAuth 2 client an API's calls are authorised with (`Authorization: Bearer`): the
/// client-credentials grant, or the refresh-token grant when `refresh_token` is set.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub token_url: String,
    pub client_id: String,
    /// `{{secret:NAME}}`: the client's secret, from the vault.
    #[serde(default)]
    pub client_secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `{{secret:NAME}}`: the first refresh token, from the vault; the ones the server rotates
    /// in are kept sealed in the store.
    #[serde(default)]
    pub refresh_token: String,
}

/// What a token endpoint answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub access_token: String,
    /// Seconds it lives, when the server says.
    pub expires_in: Option<u64>,
    /// A new refresh token, when the server rotates them.
    pub refresh_token: Option<String>,
}

impl OAuthClient {
    /// Checks a definition: a token URL, a client id, placeholders whole.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| format!("token_url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("token_url: an absolute http:// or https:// URL".into());
        }
        if self.client_id.is_empty() || self.client_id.len() > 512 {
            return Err("client_id: 1 to 512 bytes".into());
        }
        for (field, v) in [
            ("client_secret", &self.client_secret),
            ("refresh_token", &self.refresh_token),
        ] {
            let parts = secret_refs::parts(v).map_err(|e| format!("{field}: {e}"))?;
            if !v.is_empty() && !matches!(parts.as_slice(), [Part::Secret(_)]) {
                return Err(format!(
                    "{field}: a credential comes from the vault, as {{{{secret:NAME}}}}"
                ));
            }
        }
        if self.scopes.len() > 64 || self.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err("scopes: at most 64, each a word without spaces".into());
        }
        Ok(())
    }

    /// Asks the token endpoint for an access token: with `refresh` (the refresh-token grant)
    /// or without (client credentials). The client authenticates with HTTP Basic (RFC 6749
    /// 2.3.1).
    pub async fn request(
        &self,
        client_secret: &str,
        refresh: Option<&str>,
    ) -> Result<Token, String> {
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = HTTP.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(TOKEN_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        });
        // Built before any await: the serializer is not Send.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            match refresh {
                Some(r) => form
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", r),
                None => form.append_pair("grant_type", "client_credentials"),
            };
            if !self.scopes.is_empty() {
                form.append_pair("scope", &self.scopes.join(" "));
            }
            form.finish()
        };
        let resp = http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(client_secret))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| format!("the token endpoint: {}", e.without_url()))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // RFC 6749 5.2: `error` and `error_description` say why; nothing else is echoed.
            let why = [&body["error"], &body["error_description"]]
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(": ");
            return Err(format!("the token endpoint answered HTTP {status} {why}"));
        }
        let access_token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("the token endpoint's answer has no access_token")?
            .to_string();
        Ok(Token {
            access_token,
            expires_in: body["expires_in"].as_u64(),
            refresh_token: body["refresh_token"].as_str().map(str::to_string),
        })
    }
}

/// Where a parameter goes in the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

#[derive(Clone, Debug)]
struct Param {
    name: String,
    location: Location,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Json,
    Form,
}

/// One operation of the document, ready to call.
#[derive(Clone, Debug)]
pub struct Operation {
    /// `api.operationId`.
    pub tool: String,
    pub method: String,
    /// The path template, e.g. `/items/{id}`.
    pub path: String,
    pub description: String,
    /// JSON Schema of the tool's arguments.
    pub input_schema: Value,
    /// JSON Schema of the tool's result: the answer's status, content type and body (the
    /// body as the document describes a success's JSON, when it does).
    pub output_schema: Value,
    pub annotations: Annotations,
    /// The document's `info.version`.
    pub version: String,
    /// The schema the document gives a success's JSON body, compiled: an answer that does not
    /// match it is returned as text, so the result always matches the output schema.
    success: Option<Arc<jsonschema::Validator>>,
    /// Who answers for it (the API definition's owner).
    pub owner: String,
    params: Vec<Param>,
    body: Option<Body>,
}

/// What a document offers: the operations that became tools, and why the others did not.
#[derive(Debug, Default)]
pub struct Import {
    pub operations: Vec<Operation>,
    pub skipped: Vec<String>,
}

/// A document's text, JSON or else YAML, as JSON.
pub fn parse_document(text: &str, max_bytes: usize) -> Result<Value, String> {
    if text.len() > max_bytes {
        return Err(format!("larger than {max_bytes} bytes"));
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    serde_yaml::from_str::<Value>(text).map_err(|e| format!("neither JSON nor YAML: {e}"))
}

/// The document's first server, its variables at their defaults, if that makes an absolute
/// URL.
pub fn first_server(doc: &Value) -> Option<String> {
    let server = doc.get("servers")?.as_array()?.first()?;
    let mut url = server.get("url")?.as_str()?.to_string();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (k, v) in vars {
            let default = v.get("default").and_then(Value::as_str)?;
            url = url.replace(&format!("{{{k}}}"), default);
        }
    }
    check_base_url(&url).ok().map(|_| url)
}

/// An API's base URL: absolute, http or https, without credentials, query or fragment.
pub fn check_base_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| format!("{url:?} is not an absolute http:// or https:// URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!(
            "{url:?} is not an absolute http:// or https:// URL"
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "credentials go in `headers` or `query` (from the vault), not in the URL".into(),
        );
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("a base URL has no query or fragment (query parameters every call carries go in `query`)".into());
    }
    Ok(u)
}

/// Reads `document` (OpenAPI 3.0 or 3.1, as JSON) into the operations of API `api`.
/// `set_by_api` names the headers and query parameters the API's definition sets itself
/// (credentials): parameters of those names are not offered to callers.
pub fn operations(
    api: &str,
    document: &Value,
    set_by_api: &BTreeSet<String>,
) -> Result<Import, String> {
    let version = document
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or("the document has no `openapi` version: an OpenAPI 3 document is expected")?;
    if !version.starts_with("3.") {
        return Err(format!(
            "OpenAPI {version}: only OpenAPI 3.0 and 3.1 documents are read (convert a Swagger 2 one first)"
        ));
    }
    let paths = document
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the document has no `paths` object")?;
    let mut import = Import::default();
    let mut names = BTreeSet::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        let shared = item.get("parameters").cloned().unwrap_or(json!([]));
        for method in METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            if import.operations.len() >= MAX_OPERATIONS {
                return Err(format!(
                    "the document has more than {MAX_OPERATIONS} operations"
                ));
            }
            let label = format!("{} {path}", method.to_ascii_uppercase());
            match operation(api, document, path, method, op, &shared, set_by_api) {
                Ok(o) if !names.insert(o.tool.clone()) => import
                    .skipped
                    .push(format!("{label}: a second operation named {}", o.tool)),
                Ok(o) => import.operations.push(o),
                Err(why) => import.skipped.push(format!("{label}: {why}")),
            }
        }
    }
    Ok(import)
}

fn operation(
    api: &str,
    doc: &Value,
    path: &str,
    method: &str,
    op: &Value,
    shared: &Value,
    set_by_api: &BTreeSet<String>,
) -> Result<Operation, String> {
    let id = match op.get("operationId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("{method}{}", path.replace(['{', '}'], "")),
    };
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tool = format!("{api}.{}", id.trim_matches('_'));
    if tool.len() > MAX_TOOL_NAME {
        return Err(format!("its name {tool} is longer than {MAX_TOOL_NAME}"));
    }
    let mut budget = MAX_SCHEMA_NODES;
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut params = Vec::new();
    // Operation parameters override path-item ones of the same name and place.
    let mut declared: Vec<Value> = Vec::new();
    for p in shared.as_array().into_iter().flatten().chain(
        op.get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    ) {
        let p = resolve(doc, p, &mut budget)?;
        let key = (p.get("name").cloned(), p.get("in").cloned());
        declared.retain(|d| (d.get("name").cloned(), d.get("in").cloned()) != key);
        declared.push(p);
    }
    for p in declared {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter without a name")?
            .to_string();
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => Location::Header,
            Some("cookie") if p.get("required") != Some(&Value::Bool(true)) => continue,
            other => return Err(format!("parameter {name} in {other:?} is not supported")),
        };
        let lower = name.to_ascii_lowercase();
        if location == Location::Header && RESERVED_HEADERS.contains(&lower.as_str()) {
            continue; // set by the client or by the API's credentials
        }
        if location != Location::Path && set_by_api.contains(&lower) {
            continue; // the API's definition sets it (a credential)
        }
        if properties.contains_key(&name) || name == "body" {
            return Err(format!("two parameters named {name}"));
        }
        let mut schema = p.get("schema").cloned().unwrap_or(json!({}));
        if let (Some(d), Some(s)) = (p.get("description"), schema.as_object_mut()) {
            s.entry("description").or_insert(d.clone());
        }
        if location == Location::Path || p.get("required") == Some(&Value::Bool(true)) {
            required.push(Value::String(name.clone()));
        }
        properties.insert(name.clone(), schema);
        params.push(Param { name, location });
    }
    for seg in path.split('{').skip(1) {
        let name = seg.split('}').next().unwrap_or_default();
        if !params
            .iter()
            .any(|p| p.location == Location::Path && p.name == name)
        {
            return Err(format!("path parameter {name} is not declared"));
        }
    }
    let mut body = None;
    if let Some(rb) = op.get("requestBody") {
        let rb = resolve(doc, rb, &mut budget)?;
        let content = rb.get("content").and_then(Value::as_object);
        let pick = |want: fn(&str) -> bool| {
            content.and_then(|c| c.iter().find(|(t, _)| want(t)).map(|(_, v)| v.clone()))
        };
        let (kind, media) =
            if let Some(m) = pick(|t| t == "application/json" || t.ends_with("+json")) {
                (Body::Json, m)
            } else if let Some(m) = pick(|t| t == "application/x-www-form-urlencoded") {
                (Body::Form, m)
            } else {
                return Err("its request body is neither JSON nor a form".into());
            };
        let mut schema = media.get("schema").cloned().unwrap_or(json!({}));
        if let (Some(d), Some(s)) = (rb.get("description"), schema.as_object_mut()) {
            s.entry("description").or_insert(d.clone());
        }
        if rb.get("required") == Some(&Value::Bool(true)) {
            required.push(json!("body"));
        }
        properties.insert("body".into(), schema);
        body = Some(kind);
    }
    let input_schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    let text = |k: &str| {
        op.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut description = [text("summary"), text("description")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    if description.is_empty() {
        description = format!("{} {path}", method.to_ascii_uppercase());
    }
    if description.len() > 2_000 {
        let mut cut = 2_000;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
    }
    // A schema that does not compile is not declared (a client could not check it either).
    let success = success_schema(doc, op, &mut budget).and_then(|s| {
        let v = jsonschema::validator_for(&s).ok()?;
        Some((s, Arc::new(v)))
    });
    let annotations = match method {
        "get" | "head" | "options" => Annotations {
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: true,
        },
        "put" | "delete" => Annotations {
            read_only: false,
            destructive: true,
            idempotent: true,
            open_world: true,
        },
        _ => Annotations::default(),
    };
    Ok(Operation {
        tool,
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        description,
        input_schema,
        output_schema: output_schema(success.as_ref().map(|(s, _)| s.clone())),
        success: success.map(|(_, v)| v),
        annotations,
        version: doc["info"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        owner: String::new(),
        params,
        body,
    })
}

/// The JSON schema the document gives a successful answer's body (its first 2xx response
/// with JSON content), if it gives one that resolves within `budget`.
fn success_schema(doc: &Value, op: &Value, budget: &mut usize) -> Option<Value> {
    let responses = op.get("responses")?.as_object()?;
    let (_, response) = responses.iter().find(|(code, _)| code.starts_with('2'))?;
    let response = resolve(doc, response, budget).ok()?;
    let content = response.get("content")?.as_object()?;
    let (_, media) = content
        .iter()
        .find(|(t, _)| t.starts_with("application/json") || t.contains("+json"))?;
    resolve(doc, media.get("schema")?, budget).ok()
}

/// The schema of what an operation's tool returns (see `ApiTool::call`).
fn output_schema(success: Option<Value>) -> Value {
    let text = json!({"type": "string", "description": "the body as text: it was not JSON, or was cut short"});
    let body = match success {
        Some(s) => json!({"anyOf": [s, text]}),
        None => json!({}),
    };
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "integer", "description": "the HTTP status of the answer"},
            "content_type": {"type": "string"},
            "body": body,
            "truncated": {"type": "boolean", "description": "whether the body was cut at the size limit"},
            "cache_control": {"type": "string"},
        },
        "required": ["status", "content_type", "body", "truncated"],
    })
}

/// `value` with every local `$ref` (`#/components/...`) replaced by what it points at, and
/// OpenAPI 3.0's `nullable` written as JSON Schema says it. A reference met again inside
/// itself (a recursive schema) becomes `{}`, any value: checked one level deep, as most
/// tools do, rather than unrolled.
fn resolve(doc: &Value, value: &Value, budget: &mut usize) -> Result<Value, String> {
    resolve_in(doc, value, &mut Vec::new(), budget)
}

fn resolve_in(
    doc: &Value,
    value: &Value,
    within: &mut Vec<String>,
    budget: &mut usize,
) -> Result<Value, String> {
    *budget = budget
        .checked_sub(1)
        .ok_or("its schemas are too large once their $refs are followed")?;
    match value {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("$ref {r:?} points outside the document"))?;
                if within.iter().any(|w| w == r) || within.len() >= MAX_REF_DEPTH {
                    return Ok(json!({}));
                }
                let target = doc
                    .pointer(pointer)
                    .ok_or_else(|| format!("$ref {r:?} points at nothing"))?;
                within.push(r.to_string());
                let out = resolve_in(doc, target, within, budget);
                within.pop();
                return out;
            }
            let mut out = Map::new();
            for (k, v) in o {
                // Examples are documentation, never schema: kept as they are.
                let v = if k == "example" || k == "examples" {
                    v.clone()
                } else {
                    resolve_in(doc, v, within, budget)?
                };
                out.insert(k.clone(), v);
            }
            if out.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .map(|v| resolve_in(doc, v, within, budget))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// What every operation of one API shares: where it is, its credentials, the client.
pub struct Api {
    pub name: String,
    base: reqwest::Url,
    /// Headers and query parameters sent with every call; values may hold `{{secret:NAME}}`.
    headers: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    oauth: Option<OAuthClient>,
    client: reqwest::Client,
    credentials: Arc<dyn Credentials>,
    max_response_bytes: usize,
    timeout_ms: u64,
}

impl Api {
    pub fn new(
        name: &str,
        base_url: &str,
        headers: BTreeMap<String, String>,
        query: BTreeMap<String, String>,
        oauth: Option<OAuthClient>,
        credentials: Arc<dyn Credentials>,
        cfg: &steward_types::config::HttpToolConfig,
    ) -> Result<Arc<Api>, String> {
        let base = check_base_url(base_url).map_err(|e| format!("base URL: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(10_000)))
            // The administrator chose where this API is; a redirect could lead elsewhere, with
            // its credentials.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Arc::new(Api {
            name: name.to_string(),
            base,
            headers,
            query,
            oauth,
            client,
            credentials,
            max_response_bytes: cfg.max_response_bytes,
            timeout_ms: cfg.timeout_ms,
        }))
    }

    /// `value` with its `{{secret:NAME}}` filled from the vault; the secrets used are added to
    /// `used`, to be kept out of whatever the call returns.
    fn fill(
        &self,
        value: &str,
        owner: Option<&str>,
        used: &mut Vec<(String, String)>,
    ) -> Result<String> {
        let mut out = String::new();
        for part in secret_refs::parts(value).map_err(ToolError::Failed)? {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::UserSecret(name) => {
                    let who = owner.ok_or_else(|| {
                        ToolError::Denied(format!(
                            "API {}: calls carry their caller's own credential ({name}), and this caller has no owner",
                            self.name
                        ))
                    })?;
                    let full = secret_refs::user_secret_name(name, who).ok_or_else(|| {
                        ToolError::Denied(format!(
                            "API {}: the owner {who:?} cannot name a secret",
                            self.name
                        ))
                    })?;
                    let secret = self.credentials.secret(&full).ok_or_else(|| {
                        ToolError::Denied(format!(
                            "API {}: {who} has no credential of their own for it: an administrator sets the vault secret {full}",
                            self.name
                        ))
                    })?;
                    out.push_str(&secret);
                    used.push((full, secret));
                }
                Part::Secret(name) => {
                    let secret = self.credentials.secret(name).ok_or_else(|| {
                        ToolError::Failed(format!(
                            "API {}: secret {name:?} is not in the vault (PUT /api/v1/secrets/{name})",
                            self.name
                        ))
                    })?;
                    out.push_str(&secret);
                    used.push((name.to_string(), secret));
                }
            }
        }
        Ok(out)
    }
}

/// One operation of an API, as a registry tool.
pub struct ApiTool {
    pub api: Arc<Api>,
    pub op: Operation,
}

/// `value` as a query or header value: strings as they are, other scalars as JSON writes them.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ApiTool {
    fn url(&self, args: &Map<String, Value>) -> Result<reqwest::Url> {
        let mut path = String::new();
        let mut rest = self.op.path.as_str();
        while let Some(start) = rest.find('{') {
            path.push_str(&rest[..start]);
            let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
            let name = &rest[start + 1..end];
            let value = args.get(name).map(scalar).ok_or_else(|| {
                ToolError::InvalidArgs(format!("`{name}` is required (a path parameter)"))
            })?;
            // A segment of its own: `/`, `?`, `#` and `%` are escaped; `.` and `..` would
            // walk the path, so they are refused.
            if value.is_empty() || value == "." || value == ".." {
                return Err(ToolError::InvalidArgs(format!(
                    "`{name}`: {value:?} is not a path segment"
                )));
            }
            path.push_str(&percent_encode_segment(&value));
            rest = &rest[(end + 1).min(rest.len())..];
        }
        path.push_str(rest);
        let mut url = self.api.base.clone();
        let joined = format!("{}{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        if !url
            .path()
            .starts_with(self.api.base.path().trim_end_matches('/'))
        {
            return Err(ToolError::InvalidArgs(
                "the path parameters lead outside the API".into(),
            ));
        }
        Ok(url)
    }
}

fn percent_encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait::async_trait]
impl Tool for ApiTool {
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: self.op.tool.clone().into(),
            description: self.op.description.clone().into(),
            parameters: self.op.input_schema.clone(),
        }
    }
    fn annotations(&self) -> Annotations {
        self.op.annotations
    }
    fn source(&self) -> String {
        format!("openapi:{}", self.api.name)
    }
    fn output_schema(&self) -> Option<Value> {
        Some(self.op.output_schema.clone())
    }
    fn version(&self) -> String {
        self.op.version.clone()
    }
    fn owner(&self) -> String {
        if self.op.owner.is_empty() {
            "admin".into()
        } else {
            self.op.owner.clone()
        }
    }
    fn outside_runs(&self) -> bool {
        true
    }
    fn idempotent(&self, _args: &Value) -> bool {
        self.op.annotations.idempotent
    }

    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let empty = Map::new();
        let args = match &args {
            Value::Object(o) => o,
            Value::Null => &empty,
            _ => {
                return Err(ToolError::InvalidArgs(
                    "the arguments must be an object".into(),
                ))
            }
        };
        let mut url = self.url(args)?;
        let mut used = Vec::new();
        {
            let mut q = url.query_pairs_mut();
            for p in self
                .op
                .params
                .iter()
                .filter(|p| p.location == Location::Query)
            {
                match args.get(&p.name) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(items)) => {
                        for i in items {
                            q.append_pair(&p.name, &scalar(i));
                        }
                    }
                    Some(v) => {
                        q.append_pair(&p.name, &scalar(v));
                    }
                }
            }
            for (k, v) in &self.api.query {
                q.append_pair(k, &self.api.fill(v, ctx.owner.as_deref(), &mut used)?);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let method = reqwest::Method::from_bytes(self.op.method.as_bytes())
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let mut rb = self
            .api
            .client
            .request(method, url.clone())
            .header("Idempotency-Key", &ctx.idempotency_key);
        if let Some(tp) = &ctx.traceparent {
            rb = rb.header("traceparent", tp);
        }
        for p in self
            .op
            .params
            .iter()
            .filter(|p| p.location == Location::Header)
        {
            if let Some(v) = args.get(&p.name).filter(|v| !v.is_null()) {
                let v = reqwest::header::HeaderValue::from_str(&scalar(v)).map_err(|_| {
                    ToolError::InvalidArgs(format!("`{}`: not a valid header value", p.name))
                })?;
                rb = rb.header(p.name.as_str(), v);
            }
        }
        for (k, v) in &self.api.headers {
            rb = rb.header(
                k.as_str(),
                self.api.fill(v, ctx.owner.as_deref(), &mut used)?,
            );
        }
        if let Some(client) = &self.api.oauth {
            let token = self
                .api
                .credentials
                .access_token(&self.api.name, client)
                .await
                .map_err(|e| ToolError::Failed(format!("API {}: {e}", self.api.name)))?;
            rb = rb.bearer_auth(&token);
            used.push(("oauth-token".into(), token));
        }
        let oauth_token = self
            .api
            .oauth
            .as_ref()
            .and_then(|_| used.last().map(|u| u.1.clone()));
        match (self.op.body, args.get("body")) {
            (_, None | Some(Value::Null)) | (None, _) => {}
            (Some(kind), Some(b)) => {
                let bytes = match kind {
                    Body::Json => serde_json::to_vec(b).unwrap_or_default(),
                    Body::Form => {
                        let o = b.as_object().ok_or_else(|| {
                            ToolError::InvalidArgs("`body`: a form is an object".into())
                        })?;
                        let mut f = form_urlencoded::Serializer::new(String::new());
                        for (k, v) in o {
                            f.append_pair(k, &scalar(v));
                        }
                        f.finish().into_bytes()
                    }
                };
                if bytes.len() > MAX_REQUEST_BODY {
                    return Err(ToolError::InvalidArgs(format!(
                        "`body` is larger than {MAX_REQUEST_BODY} bytes"
                    )));
                }
                let ct = match kind {
                    Body::Json => "application/json",
                    Body::Form => "application/x-www-form-urlencoded",
                };
                rb = rb.header(reqwest::header::CONTENT_TYPE, ct).body(bytes);
            }
        }
        let redact = |text: String| {
            used.iter().fold(text, |t, (name, value)| {
                t.replace(value.as_str(), &format!("[secret:{name}]"))
            })
        };
        // The URL may carry a credential in its query: errors name the path only.
        let shown = format!("{} {}", self.op.method, url.path());
        let timeout_ms = self.api.timeout_ms;
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                ToolError::Failed(format!("{shown}: no answer within {timeout_ms} ms"))
            } else {
                ToolError::Failed(redact(format!("{shown}: {}", e.without_url())))
            }
        };
        let mut resp = rb.send().await.map_err(fail)?;
        let status = resp.status();
        if let (reqwest::StatusCode::UNAUTHORIZED, Some(token)) = (status, &oauth_token) {
            self.api
                .credentials
                .token_rejected(&self.api.name, token)
                .await;
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cache_control = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            let room = self.api.max_response_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let text = redact(String::from_utf8_lossy(&body).into_owned());
        if !status.is_success() {
            let mut shown_body = text;
            if shown_body.len() > ERROR_BODY_SHOWN {
                let mut cut = ERROR_BODY_SHOWN;
                while !shown_body.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown_body.truncate(cut);
            }
            return Err(ToolError::Failed(format!(
                "{shown}: HTTP {status}: {shown_body}"
            )));
        }
        let is_json =
            content_type.starts_with("application/json") || content_type.contains("+json");
        // Not JSON, cut short, or not what the document says a success is: the text.
        let body = match serde_json::from_str::<Value>(&text) {
            Ok(v)
                if is_json
                    && !truncated
                    && self.op.success.as_ref().is_none_or(|s| s.is_valid(&v)) =>
            {
                v
            }
            _ => Value::String(text),
        };
        let mut out = json!({
            "status": status.as_u16(),
            "content_type": content_type,
            "body": body,
            "truncated": truncated,
        });
        if let Some(cc) = cache_control {
            out["cache_control"] = Value::String(cc);
        }
        Ok(out)
    }

    fn result_max_age(&self, result: &Value) -> Option<Duration> {
        max_age(result["cache_control"].as_str()?)
    }
}

/// What a `Cache-Control` header allows a cache private to one caller: `no-store` and
/// `no-cache`, nothing (`Some(ZERO)`); `max-age=N`, N seconds; else no hint.
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
    {
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = directive.strip_prefix("max-age=") {
            found = Some(
                n.trim_matches('"')
                    .parse()
                    .map_or(Duration::ZERO, Duration::from_secs),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(paths: Value) -> Value {
        json!({"openapi": "3.0.3", "paths": paths, "components": {"schemas": {
            "Node": {"type": "object", "properties": {
                "name": {"type": "string", "nullable": true},
                "child": {"$ref": "#/components/schemas/Node"}}}
        }}})
    }

    fn one(paths: Value) -> Operation {
        let mut i = operations("api", &doc(paths), &BTreeSet::new()).unwrap();
        assert_eq!(i.skipped, Vec::<String>::new());
        i.operations.remove(0)
    }

    #[test]
    fn parameters_and_body_become_one_input_schema() {
        let op = one(json!({"/things/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "put": {"operationId": "put thing!", "summary": "Replace",
                "parameters": [{"name": "dry", "in": "query", "schema": {"type": "boolean"}},
                               {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                               {"name": "Authorization", "in": "header", "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}}
        }}));
        assert_eq!(
            op.tool, "api.put_thing",
            "characters outside MCP's set become `_`"
        );
        assert_eq!(op.method, "PUT");
        assert!(op.annotations.idempotent && op.annotations.destructive);
        let s = &op.input_schema;
        assert_eq!(s["required"], json!(["id", "body"]));
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["id"]["type"], "integer");
        assert!(
            s["properties"].get("session").is_none(),
            "an optional cookie is left out"
        );
        assert!(
            s["properties"].get("Authorization").is_none(),
            "reserved headers are never parameters"
        );
        let body = &s["properties"]["body"];
        assert_eq!(
            body["properties"]["name"]["type"],
            json!(["string", "null"]),
            "nullable"
        );
        // The recursive schema is followed once; inside itself it accepts any value.
        assert_eq!(body["properties"]["child"], json!({}));
    }

    #[test]
    fn operations_that_cannot_be_called_are_skipped_with_a_reason() {
        let d = doc(json!({
            "/a/{x}": {"get": {"operationId": "noDecl"}},
            "/b": {"post": {"operationId": "multi", "requestBody": {"content": {"multipart/form-data": {}}}},
                   "get": {"operationId": "fine"}},
            "/c": {"get": {"operationId": "fine"}},
            "/d": {"get": {"operationId": "needsCookie", "parameters": [{"name": "s", "in": "cookie", "required": true}]}},
            "/e": {"get": {"operationId": "x".repeat(70)}},
        }));
        let i = operations("api", &d, &BTreeSet::new()).unwrap();
        assert_eq!(i.operations.len(), 1, "{:?}", i.skipped);
        let why = i.skipped.join("\n");
        for says in [
            "not declared",
            "neither JSON nor a form",
            "a second operation named api.fine",
            "cookie",
            "longer than 64",
        ] {
            assert!(why.contains(says), "{says}: {why}");
        }
    }

    #[test]
    fn parameters_the_api_sets_are_not_offered() {
        let d = doc(json!({"/a": {"get": {"operationId": "a", "parameters": [
            {"name": "api_key", "in": "query", "schema": {"type": "string"}},
            {"name": "X-Token", "in": "header", "schema": {"type": "string"}},
            {"name": "q", "in": "query", "schema": {"type": "string"}}]}}}));
        let set: BTreeSet<String> = ["api_key".to_string(), "x-token".to_string()].into();
        let op = operations("api", &d, &set).unwrap().operations.remove(0);
        let props = op.input_schema["properties"].as_object().unwrap();
        assert_eq!(props.keys().collect::<Vec<_>>(), ["q"]);
    }

    #[test]
    fn documents_that_are_not_openapi_3_are_refused() {
        let none = BTreeSet::new();
        assert!(operations("a", &json!({"swagger": "2.0"}), &none)
            .unwrap_err()
            .contains("openapi"));
        assert!(operations("a", &json!({"openapi": "2.0"}), &none)
            .unwrap_err()
            .contains("3.0"));
        assert!(operations("a", &json!({"openapi": "3.1.0"}), &none)
            .unwrap_err()
            .contains("paths"));
        assert_eq!(
            parse_document("openapi: '3.1.0'\npaths: {}\n", 1000).unwrap()["openapi"],
            "3.1.0"
        );
        assert!(parse_document("{", 1000).is_err());
        assert!(parse_document(&" ".repeat(2000), 1000)
            .unwrap_err()
            .contains("larger"));
    }

    #[test]
    fn cache_control_bounds_how_long_a_result_is_kept() {
        assert_eq!(max_age("max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            max_age("public, MAX-AGE=5, must-revalidate"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(max_age("max-age=60, no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(
            max_age("max-age=soon"),
            Some(Duration::ZERO),
            "unreadable: not kept"
        );
        assert_eq!(
            max_age("private"),
            None,
            "this cache is private to the caller already"
        );
    }

    #[test]
    fn base_urls_come_from_servers_with_their_variables() {
        let d = json!({"servers": [{"url": "https://{region}.example.com/{v}", "variables": {
            "region": {"default": "eu"}, "v": {"default": "v2"}}}]});
        assert_eq!(first_server(&d).unwrap(), "https://eu.example.com/v2");
        assert_eq!(
            first_server(&json!({"servers": [{"url": "/relative"}]})),
            None
        );
        assert!(check_base_url("http://a:b@h/")
            .unwrap_err()
            .contains("credentials"));
        assert!(check_base_url("file:///etc").is_err());
    }

    struct NoCredentials;

    #[async_trait::async_trait]
    impl Credentials for NoCredentials {
        fn secret(&self, _: &str) -> Option<String> {
            None
        }
        async fn access_token(&self, _: &str, _: &OAuthClient) -> Result<String, String> {
            Err("none".into())
        }
    }

    fn tool(path: &str, base: &str) -> ApiTool {
        let op = one(json!({path: {"get": {"operationId": "op", "parameters": [
            {"name": "p", "in": "path", "required": true, "schema": {"type": "string"}}]}}}));
        let api = Api::new(
            "api",
            base,
            BTreeMap::new(),
            BTreeMap::new(),
            None,
            Arc::new(NoCredentials),
            &Default::default(),
        )
        .unwrap();
        ApiTool { api, op }
    }

    #[test]
    fn path_parameters_stay_inside_their_segment() {
        let t = tool("/files/{p}/raw", "https://h.example/base/");
        let url = |p: &str| {
            let args = json!({ "p": p });
            t.url(args.as_object().unwrap()).map(|u| u.to_string())
        };
        assert_eq!(
            url("a b").unwrap(),
            "https://h.example/base/files/a%20b/raw"
        );
        assert_eq!(
            url("../../x?y#z").unwrap(),
            "https://h.example/base/files/..%2F..%2Fx%3Fy%23z/raw"
        );
        assert_eq!(
            url("%2e%2e").unwrap(),
            "https://h.example/base/files/%252e%252e/raw"
        );
        for walk in ["..", ".", ""] {
            assert!(url(walk).is_err(), "{walk:?}");
        }
    }
}
