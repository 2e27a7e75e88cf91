//! HTTP APIs described by OpenAPI documents: each operation a registry tool under the API's
//! name as a prefix (`petstore.getPet`), for managed runs and MCP clients alike, on the same
//! governance path as every other tool. Every node builds the tools from the store and follows
//! it, so an API added, changed or removed through one node reaches the others within
//! `upstreams::FOLLOW_EVERY`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use steward_store::{OpenApiRecord, OpenApiStore};
use steward_tools::openapi::{self, Api, ApiTool, Credentials, Import, OAuthClient};
use steward_tools::{Tool, Tools};
use steward_types::config::HttpToolConfig;
use steward_types::Millis;

/// What became of an API's document on this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Built {
    pub updated_at: Millis,
    /// Its tools' names.
    pub tools: Vec<String>,
    /// Operations left out, each with why.
    pub skipped: Vec<String>,
    /// Why none of it could be built.
    pub error: Option<String>,
}

/// This node's tools from the configured APIs.
pub struct OpenApis {
    tools: Tools,
    store: Arc<dyn OpenApiStore>,
    credentials: Arc<dyn Credentials>,
    http: HttpToolConfig,
    built: Mutex<HashMap<String, Built>>,
}

/// The headers and query parameters an API's definition sets itself, lower-cased: callers'
/// parameters of those names are not offered.
pub fn set_by_api(
    headers: &BTreeMap<String, String>,
    query: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    headers
        .keys()
        .chain(query.keys())
        .map(|k| k.to_ascii_lowercase())
        .collect()
}

/// Reads a stored definition into its operations and what they share.
pub fn build(
    r: &OpenApiRecord,
    credentials: Arc<dyn Credentials>,
    http: &HttpToolConfig,
) -> Result<(Arc<Api>, Import), String> {
    let document: serde_json::Value =
        serde_json::from_str(&r.document).map_err(|e| format!("the stored document: {e}"))?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&r.headers).map_err(|e| format!("the stored headers: {e}"))?;
    let query: BTreeMap<String, String> =
        serde_json::from_str(&r.query).map_err(|e| format!("the stored query: {e}"))?;
    let oauth: Option<OAuthClient> = if r.oauth.is_empty() {
        None
    } else {
        Some(serde_json::from_str(&r.oauth).map_err(|e| format!("the stored OAuth client: {e}"))?)
    };
    let mut set = set_by_api(&headers, &query);
    if oauth.is_some() {
        set.insert("authorization".into());
    }
    let mut import = openapi::operations(&r.name, &document, &set)?;
    for op in &mut import.operations {
        op.owner.clone_from(&r.owner);
    }
    let api = Api::new(
        &r.name,
        &r.base_url,
        headers,
        query,
        oauth,
        credentials,
        http,
    )?;
    Ok((api, import))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under this lock is one insert or removal: a panic leaves nothing half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OpenApis {
    pub fn new(
        tools: Tools,
        store: Arc<dyn OpenApiStore>,
        credentials: Arc<dyn Credentials>,
        http: HttpToolConfig,
    ) -> Arc<OpenApis> {
        Arc::new(OpenApis {
            tools,
            store,
            credentials,
            http,
            built: Mutex::new(HashMap::new()),
        })
    }

    /// Brings this node's tools in line with the store: builds APIs added or changed, takes
    /// out those removed. Documents are read only when their version changed.
    pub async fn follow(&self) -> steward_store::Result<()> {
        let wanted = self.store.openapi_versions().await?;
        let stale: Vec<String> = {
            let mut built = lock(&self.built);
            let gone: Vec<String> = built
                .keys()
                .filter(|n| !wanted.iter().any(|(w, _)| w == *n))
                .cloned()
                .collect();
            for name in &gone {
                built.remove(name);
                self.tools.replace_prefix(name, Vec::new());
            }
            wanted
                .iter()
                .filter(|(n, at)| built.get(n).is_none_or(|b| b.updated_at != *at))
                .map(|(n, _)| n.clone())
                .collect()
        };
        if stale.is_empty() {
            return Ok(());
        }
        for r in self.store.openapis().await? {
            if !stale.contains(&r.name) {
                continue;
            }
            let mut b = Built {
                updated_at: r.updated_at,
                ..Built::default()
            };
            match build(&r, self.credentials.clone(), &self.http) {
                Ok((api, import)) => {
                    b.tools = import.operations.iter().map(|o| o.tool.clone()).collect();
                    b.skipped = import.skipped;
                    let tools: Vec<Arc<dyn Tool>> = import
                        .operations
                        .into_iter()
                        .map(|op| {
                            Arc::new(ApiTool {
                                api: api.clone(),
                                op,
                            }) as Arc<dyn Tool>
                        })
                        .collect();
                    self.tools.replace_prefix(&r.name, tools);
                }
                Err(e) => {
                    tracing::warn!(api = %r.name, error = %e, "an OpenAPI document could not be read");
                    self.tools.replace_prefix(&r.name, Vec::new());
                    b.error = Some(e);
                }
            }
            lock(&self.built).insert(r.name.clone(), b);
        }
        Ok(())
    }

    /// Where its APIs' calls draw credentials from.
    pub fn credentials(&self) -> Arc<dyn Credentials> {
        self.credentials.clone()
    }

    /// What became of API `name` on this node, once it has been built here.
    pub fn built(&self, name: &str) -> Option<Built> {
        lock(&self.built).get(name).cloned()
    }
}
