//! Agent memory as its callers reach it: every access decided — an agent's own scopes
//! (`agent:<itself>`, `user:<its owner>`, `run:<the run it names>`) unless a policy forbids,
//! any other only where a policy permits `memory.read` / `memory.write` on
//! `Steward::Namespace::"<scope>"` — writes and erasures audited in their own commit, agents'
//! reads audited too. Audit records carry ids and scopes, never a memory's text, so an
//! erasure leaves nothing behind in the audit log.

use steward_gov::{AuditEvent, AuditRecord, Decision};
use steward_memory::{Committed, ErasureReport, Found, MemoryError, NewMemory, Query};
use steward_store::{MemoryErase, MemoryRecord};

use crate::*;

/// Who asks: the administrator (the management API) or an agent with its own credential.
#[derive(Clone, Copy)]
pub enum Accessor<'a> {
    Admin,
    Agent(&'a Principal),
}

/// The memory tools, as a caller outside any run (an MCP client) sees them.
pub(crate) fn tool_views() -> Vec<ToolView> {
    vec![
        ToolView::of("memory_search".into(), &steward_tools::MemorySearch),
        ToolView::of("memory_add".into(), &steward_tools::MemoryAdd),
    ]
}

pub(crate) fn is_memory_tool(name: &str) -> bool {
    name == "memory_search" || name == "memory_add"
}

/// A memory tool's refusal or failure, as a tool call's.
fn tool_error(e: Error) -> ToolCallError {
    match e {
        Error::Forbidden(m) => ToolCallError::Forbidden(m),
        Error::InvalidRequest(m) => ToolCallError::InvalidArguments(m),
        other => ToolCallError::Failed(other.to_string()),
    }
}

fn bad_args(e: steward_tools::ToolError) -> ToolCallError {
    ToolCallError::InvalidArguments(e.to_string())
}

/// `Engine::memories()`.
pub struct Memories<'a>(pub(crate) &'a Engine);

impl From<MemoryError> for Error {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::BadRequest(m) => Error::InvalidRequest(m),
            MemoryError::NotFound(m) => Error::NotFound(m),
            MemoryError::Conflict(m) => Error::Conflict(m),
            MemoryError::Embedder(m) => Error::Unavailable(m),
            MemoryError::Store(e) => Error::Store(e),
        }
    }
}

fn refused(e: GatewayError) -> Error {
    match e {
        GatewayError::Forbidden(m) | GatewayError::Unauthorized(m) => Error::Forbidden(m),
        other => Error::Unavailable(other.to_string()),
    }
}

/// What an access was allowed by, for its audit record.
struct Allowed {
    principal: String,
    chain: Vec<String>,
    delegations: Vec<String>,
    decision: Option<Decision>,
    /// Allowed as the agent's own scope, no policy applying.
    own: bool,
}

impl Allowed {
    fn record(&self, at: i64, action: &str, scope: &str, outcome: String) -> (i64, String) {
        let mut r = AuditRecord {
            delegations: self.delegations.clone(),
            outcome: Some(outcome),
            ..AuditRecord::new(
                AuditEvent::Syscall,
                at,
                self.principal.clone(),
                self.chain.clone(),
                action,
                scope,
            )
            .decided("allow", self.decision.as_ref())
        };
        if self.own {
            r.policy_ids = vec!["own-scope".into()];
        }
        (at, r.to_json())
    }
}

impl Memories<'_> {
    fn memory(&self) -> &steward_memory::Memory {
        &self.0.inner.shared.memory
    }

    fn now(&self) -> i64 {
        self.0.inner.shared.clock.now_ms()
    }

    /// Decides `action` on `scope` for `who`.
    async fn allow(&self, who: Accessor<'_>, action: &str, scope: &str) -> Result<Allowed> {
        steward_memory::Scope::parse(scope)?;
        match who {
            Accessor::Admin => {
                let admin = format!("admin:{}", steward_gov::policy::ADMIN);
                Ok(Allowed {
                    principal: admin.clone(),
                    chain: vec![admin],
                    delegations: vec![],
                    decision: None,
                    own: false,
                })
            }
            Accessor::Agent(p) => {
                let own = scope == format!("agent:{}", p.agent)
                    || p.owner
                        .as_ref()
                        .is_some_and(|o| scope == format!("user:{o}"))
                    || p.run.as_ref().is_some_and(|r| scope == format!("run:{r}"));
                let decision = self
                    .0
                    .inner
                    .gateway
                    .authorize_on(p, action, ("namespace", "Namespace"), scope, own)
                    .await
                    .map_err(refused)?;
                Ok(Allowed {
                    principal: format!("agent:{}", p.agent),
                    chain: p.chain.clone(),
                    delegations: p.link_ids(),
                    own: decision.is_none(),
                    decision,
                })
            }
        }
    }

    /// Audits an agent's read (the administrator's reads are not syscalls).
    async fn audit_read(
        &self,
        who: Accessor<'_>,
        a: &Allowed,
        scope: &str,
        outcome: String,
    ) -> Result<()> {
        if let Accessor::Agent(_) = who {
            let rec = a.record(self.now(), "memory.read", scope, outcome);
            self.0.inner.shared.store.append_audit(&[rec]).await?;
        }
        Ok(())
    }

    /// Writes a memory (`memory.write` on its scope): searchable when this returns. The
    /// version it superseded, closed, comes back beside it.
    pub async fn add(&self, who: Accessor<'_>, new: NewMemory) -> Result<Committed> {
        let allowed = self.allow(who, "memory.write", &new.scope).await?;
        let p = self.memory().prepare(&allowed.principal, new).await?;
        let outcome = match &p.supersedes {
            Some(old) => format!("added {} superseding {old}", p.record.id),
            None => format!("added {}", p.record.id),
        };
        let audit = allowed.record(
            p.record.created_at,
            "memory.write",
            &p.record.scope,
            outcome,
        );
        Ok(self.memory().commit(p, Some(audit)).await?)
    }

    /// Searches the scopes `q` names, each of which `who` must be allowed to read.
    pub async fn search(&self, who: Accessor<'_>, q: Query) -> Result<Found> {
        if q.scopes.is_empty() {
            return Err(Error::InvalidRequest(
                "scopes: name at least one scope to search".into(),
            ));
        }
        let mut allowed = Vec::new();
        for s in &q.scopes {
            allowed.push(self.allow(who, "memory.read", s).await?);
        }
        let found = self.memory().search(&q).await?;
        for (a, s) in allowed.iter().zip(&q.scopes) {
            let n = found.hits.iter().filter(|h| h.record.scope == *s).count();
            self.audit_read(who, a, s, format!("searched, {n} returned"))
                .await?;
        }
        Ok(found)
    }

    /// One version, if `who` may read its scope. A version of a scope it may not read is
    /// not found, as if it did not exist.
    pub async fn get(&self, who: Accessor<'_>, id: &str) -> Result<MemoryRecord> {
        let m = self.memory().get(id).await?;
        let a = self.readable(who, &m.scope, id).await?;
        self.audit_read(who, &a, &m.scope, format!("read {id}"))
            .await?;
        Ok(m)
    }

    /// Every version of the fact `id` belongs to, oldest first.
    pub async fn history(&self, who: Accessor<'_>, id: &str) -> Result<Vec<MemoryRecord>> {
        let m = self.memory().get(id).await?;
        let a = self.readable(who, &m.scope, id).await?;
        let versions = self.memory().history(id).await?;
        self.audit_read(who, &a, &m.scope, format!("history of {id}"))
            .await?;
        Ok(versions)
    }

    async fn readable(&self, who: Accessor<'_>, scope: &str, id: &str) -> Result<Allowed> {
        match self.allow(who, "memory.read", scope).await {
            Err(Error::Forbidden(_)) => Err(Error::NotFound(format!("no memory {id}"))),
            other => other,
        }
    }

    /// Erases what `what` selects (`memory.write` on its scope): every version, from the
    /// store and this node's index (other nodes' within a follow), with a report of what went.
    pub async fn erase(&self, who: Accessor<'_>, what: MemoryErase) -> Result<ErasureReport> {
        // A subject can name a person: the record says one was given, not who.
        let (scope, selector) = match &what {
            MemoryErase::Ids { scope, ids } => {
                if ids.is_empty() || ids.len() > 1000 {
                    return Err(Error::InvalidRequest(
                        "ids: name 1 to 1000 memories to erase".into(),
                    ));
                }
                (scope, format!("ids {}", ids.join(",")))
            }
            MemoryErase::Scope(s) => (s, "the whole scope".to_string()),
            MemoryErase::Subject { scope, .. } => (scope, "by subject".to_string()),
            // An entity's name can name a person too.
            MemoryErase::Entity { scope, .. } => (scope, "by entity".to_string()),
            MemoryErase::Expired => {
                return Err(Error::InvalidRequest(
                    "expired memories are erased by the node itself".into(),
                ))
            }
        };
        let allowed = self.allow(who, "memory.write", scope).await?;
        let audit = allowed.record(
            self.now(),
            "memory.write",
            scope,
            format!("erased {selector}"),
        );
        Ok(self.memory().erase(&what, Some(audit)).await?)
    }

    /// `memory_search` or `memory_add` called by `who` outside any run (over `/mcp`): the same
    /// arguments and answers as in a run, each scope decided for `who` (its own by default:
    /// `agent:<itself>`, and `user:<its owner>` for search), audited as the API's accesses are.
    pub async fn tool_call(
        &self,
        who: &Principal,
        name: &str,
        args: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ToolCallError> {
        if !args.is_object() {
            return Err(ToolCallError::InvalidArguments(
                "the arguments must be a JSON object".into(),
            ));
        }
        if name == "memory_add" {
            let scope = args
                .get("scope")
                .and_then(|s| s.as_str())
                .map_or_else(|| format!("agent:{}", who.agent), str::to_string);
            let new = NewMemory {
                scope,
                source: Some(serde_json::json!({"mcp": who.agent.as_str()})),
                ..crate::memory_tools::memory_of(&args).map_err(bad_args)?
            };
            let added = self
                .add(Accessor::Agent(who), new)
                .await
                .map_err(tool_error)?;
            return Ok(crate::memory_tools::added_json(&added.record));
        }
        let own = std::iter::once(format!("agent:{}", who.agent))
            .chain(who.owner.as_ref().map(|o| format!("user:{o}")))
            .collect();
        let scopes = crate::memory_tools::scopes_of(&args, own).map_err(bad_args)?;
        let q = crate::memory_tools::query_of(&args, scopes).map_err(bad_args)?;
        let found = self
            .search(Accessor::Agent(who), q)
            .await
            .map_err(tool_error)?;
        Ok(crate::memory_tools::found_json(&found))
    }

    /// Queues a curation of `messages` into `scope` (`memory.write` on it): a model decides what
    /// to remember from them, in the background (see [`crate::curation`]). The request, queued.
    pub async fn curate(
        &self,
        who: Accessor<'_>,
        scope: &str,
        messages: Vec<(String, String)>,
        source: Option<serde_json::Value>,
    ) -> Result<steward_store::CurationRecord> {
        let Some(model) = self.0.inner.curation_model.clone() else {
            return Err(Error::Unavailable(
                "no curation model is configured ([memory] curation_model)".into(),
            ));
        };
        if messages.is_empty() || messages.len() > 200 {
            return Err(Error::InvalidRequest("messages: 1 to 200 of them".into()));
        }
        let limit = self.memory().limits().max_text_bytes;
        let mut total = 0;
        for (role, content) in &messages {
            if !["user", "assistant", "system", "tool"].contains(&role.as_str()) {
                return Err(Error::InvalidRequest(format!(
                    "messages: role {role:?} is none of user, assistant, system, tool"
                )));
            }
            if content.trim().is_empty() || content.len() > limit {
                return Err(Error::InvalidRequest(format!(
                    "messages: each content 1 to {limit} bytes"
                )));
            }
            total += content.len();
        }
        if total > 8 * limit {
            return Err(Error::InvalidRequest(format!(
                "messages: {total} bytes in all, more than {}",
                8 * limit
            )));
        }
        let allowed = self.allow(who, "memory.write", scope).await?;
        let scope = steward_memory::Scope::parse(scope)?.to_string();
        let now = self.now();
        let id = self.0.inner.shared.clock.new_id("cur");
        // The authority the request was made with, decided again before anything is applied.
        let input = serde_json::json!({
            "messages": messages.iter().map(|(r, c)| serde_json::json!({"role": r, "content": c})).collect::<Vec<_>>(),
            "source": source,
            "authority": {"chain": allowed.chain, "delegations": allowed.delegations},
        });
        let c = steward_store::CurationRecord {
            id: id.clone(),
            scope: scope.clone(),
            requested_by: allowed.principal.clone(),
            input: input.to_string(),
            state: "queued".into(),
            attempts: 0,
            lease_until: 0,
            prompt: crate::curation::PROMPT_VERSION.into(),
            model,
            reply: None,
            cost_nanos: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
        };
        let audit = allowed.record(now, "memory.write", &scope, format!("curation {id} queued"));
        self.0
            .inner
            .shared
            .store
            .add_curation(&c, Some(audit))
            .await?;
        Ok(c)
    }

    /// A curation request and how far it got (`memory.read` on its scope).
    pub async fn curation(
        &self,
        who: Accessor<'_>,
        id: &str,
    ) -> Result<steward_store::CurationRecord> {
        let missing = || Error::NotFound(format!("no curation {id}"));
        let c = self
            .0
            .inner
            .shared
            .store
            .curation(id)
            .await?
            .ok_or_else(missing)?;
        // One the caller may not read is as if it did not exist.
        let a = self
            .allow(who, "memory.read", &c.scope)
            .await
            .map_err(|_| missing())?;
        self.audit_read(who, &a, &c.scope, format!("curation {id} read"))
            .await?;
        Ok(c)
    }

    /// Every version of `scopes` (each readable by `who`) in the portable format.
    pub async fn export(&self, who: Accessor<'_>, scopes: &[String]) -> Result<String> {
        if scopes.is_empty() || scopes.len() > self.memory().limits().max_query_scopes {
            return Err(Error::InvalidRequest(format!(
                "scopes: name 1 to {} scopes to export",
                self.memory().limits().max_query_scopes
            )));
        }
        let mut allowed = Vec::new();
        for s in scopes {
            allowed.push(self.allow(who, "memory.read", s).await?);
        }
        let text = self.memory().export(scopes).await?;
        for (a, s) in allowed.iter().zip(scopes) {
            self.audit_read(who, a, s, "exported".into()).await?;
        }
        Ok(text)
    }

    /// Imports an export, all or nothing: every line checked, `memory.write` decided on every
    /// scope it holds, then one commit. Returns (written, already there unchanged). An agent
    /// imports only memories it wrote itself: who wrote a memory is kept as the file says, so
    /// only the administrator may bring in others' (a migration).
    pub async fn import(&self, who: Accessor<'_>, text: &str) -> Result<(u64, u64)> {
        let imported = self.memory().read_export(text)?;
        let versions = &imported.versions;
        if let Accessor::Agent(p) = who {
            let me = format!("agent:{}", p.agent);
            if let Some(v) = versions.iter().find(|v| v.written_by != me) {
                return Err(Error::Forbidden(format!(
                    "memory {} says it was written by {}: with agent {}'s credential an import holds only memories written by {me}; the administrator imports others'",
                    v.id, v.written_by, p.agent
                )));
            }
        }
        let mut scopes: Vec<&str> = versions.iter().map(|v| v.scope.as_str()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut first = None;
        for s in &scopes {
            let a = self.allow(who, "memory.write", s).await?;
            first.get_or_insert(a);
        }
        let audit = first.map(|a| {
            a.record(
                self.now(),
                "memory.write",
                &scopes.join(","),
                format!("imported {} versions", versions.len()),
            )
        });
        Ok(self.memory().import(imported, audit).await?)
    }
}
