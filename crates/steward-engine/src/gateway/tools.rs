//! Tools for callers outside any run (MCP clients at `/mcp`), on the gateway's governance path:
//! a caller sees only the tools it may call — the delegated token's scope, then the policy for
//! every agent whose authority the call uses — and each call is decided the same way, its
//! arguments checked against the tool's schema before the tool is asked, counted against the
//! per-minute limits, answered from the result cache when the tool is read-only or idempotent
//! and the same caller asked the same within its TTL, bounded in time, and audited with the
//! caller's chain before the caller hears the outcome (a cached answer too, marked so).
//!
//! Two meta-tools are always there: `tools_search` (ranked full-text search over the tools
//! the caller may call) and `tools_describe` (their schemas), so a caller with hundreds of
//! tools loads only the schemas it needs.

use std::time::Duration;

use serde_json::Value;
use steward_tools::{ToolContext, ToolError};

use super::*;
use crate::tool_plane::ResultCache;
use crate::tool_search::{self, meta_tools};
pub use crate::tool_search::{ToolView, TOOLS_DESCRIBE, TOOLS_SEARCH};

/// How long a tool called outside any run may take.
pub const TOOL_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Tool names are at most this long (as MCP clients and model APIs expect).
const MAX_NAME: usize = 64;

/// Why a tool call has no result.
#[derive(Debug, thiserror::Error)]
pub enum ToolCallError {
    /// The caller may not call it (or it does not exist for this caller): the refusal is
    /// audited.
    #[error("{0}")]
    Forbidden(String),
    /// The arguments break the tool's schema; the tool was not asked.
    #[error("{0}")]
    InvalidArguments(String),
    /// The tool ran and failed, or did not finish in time.
    #[error("{0}")]
    Failed(String),
    /// A per-minute limit was reached (or could not be counted); the tool was not asked.
    #[error("{0}")]
    Limited(String),
    /// The policy allows the call once a person of `approvers` approves it
    /// (`@approval("group")`), and the caller asked for such calls to wait, not be refused.
    #[error("tool call needs the approval of {approvers}")]
    NeedsApproval {
        approvers: String,
        policy_ids: Vec<String>,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// What a call outside a run does about a policy that asks for a person's approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Refused: nobody is asked on behalf of a caller that cannot wait.
    Refuse,
    /// Answered with [`ToolCallError::NeedsApproval`]: the caller waits for it (as a task).
    Wait,
    /// Approval `0` was given for this call: it goes ahead, if the record says so.
    Given(String),
}

impl Gateway {
    /// Whether `who` may call tool `name` outside any run: `None` if so, else why not (and the
    /// decision behind it, when the policy made one). A permit that asks for approval is no:
    /// nobody is asked on behalf of a caller outside a run.
    async fn tool_refusal(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<Option<(Option<Decision>, String)>, GatewayError> {
        let now = self.clock.now_ms();
        if let Some(d) = &who.delegated {
            if let Err(e) = self.authority.delegations.delegator.allows(
                &d.token,
                "tool.call",
                "tool",
                name,
                now,
            ) {
                return Ok(Some((
                    None,
                    format!(
                        "the delegated token of agent {} does not allow tool.call on tool {name}: {e}",
                        who.agent
                    ),
                )));
            }
        }
        let (d, up_chain) = self.decide_chain(who, "tool.call", name, 0, None).await?;
        if d.allow && d.approval.is_none() {
            return Ok(None);
        }
        let by = up_chain.unwrap_or_else(|| who.agent.to_string());
        let why = if d.allow {
            format!("tool {name} needs approval, which is not asked for calls made outside a run")
        } else if d.policy_ids.is_empty() {
            format!(
                "no policy permits agent {by} to call tool {name} (permit Steward::Action::\"tool.call\" on Steward::Tool::\"{name}\")"
            )
        } else {
            format!(
                "agent {by} may not call tool {name}: forbidden by {}",
                d.policy_ids.join(", ")
            )
        };
        Ok(Some((Some(d), why)))
    }

    /// The registry's tools `who` may call outside a run, by name, then the meta-tools.
    pub async fn visible_tools(&self, who: &Principal) -> Result<Vec<ToolView>, GatewayError> {
        let mut out = Vec::new();
        for name in self.tools.names() {
            let Some(tool) = self.tools.get(&name) else {
                continue;
            };
            if !tool.outside_runs() || self.tool_refusal(who, &name).await?.is_some() {
                continue;
            }
            out.push(ToolView::of(name, tool.as_ref()));
        }
        out.extend(meta_tools());
        Ok(out)
    }

    /// Calls tool `name` for `who`, outside any run: decided, checked against its schema,
    /// bounded by [`TOOL_CALL_TIMEOUT`], and audited (a refusal as a decision, a call with its
    /// outcome) before the answer is given.
    pub async fn call_tool(
        &self,
        who: &Principal,
        name: &str,
        args: Value,
        cancelled: &tokio_util::sync::CancellationToken,
        progress: Option<steward_tools::ProgressSink>,
        approval: Approval,
    ) -> Result<Value, ToolCallError> {
        if name.len() > MAX_NAME {
            return Err(ToolCallError::InvalidArguments(format!(
                "a tool name is at most {MAX_NAME} bytes; this one is {}",
                name.len()
            )));
        }
        if name == TOOLS_SEARCH || name == TOOLS_DESCRIBE {
            // What a caller searched for and was shown is on the record too.
            let result = self.meta_call(who, name, args).await;
            let call_id = format!("tc_{}", uuid::Uuid::now_v7().simple());
            let outcome = if result.is_ok() { "ok" } else { "error" };
            self.audit_call(who, name, call_id, outcome, &result)
                .await?;
            return result;
        }
        let tool = match self.tools.get(name).filter(|t| t.outside_runs()) {
            Some(tool) => match self.tool_refusal(who, name).await? {
                None => tool,
                Some((Some(d), why)) if d.allow && d.approval.is_some() => match &approval {
                    Approval::Wait => {
                        return Err(ToolCallError::NeedsApproval {
                            approvers: d.approval.clone().unwrap_or_default(),
                            policy_ids: d.policy_ids.clone(),
                        })
                    }
                    Approval::Given(id) if self.approved(id, name).await? => tool,
                    _ => return Err(self.refuse_tool(who, name, Some(d), why).await),
                },
                Some((d, why)) => return Err(self.refuse_tool(who, name, d, why).await),
            },
            None => {
                let why = format!(
                    "there is no tool {name:?} for callers outside a run (tools_search finds the ones there are)"
                );
                return Err(self.refuse_tool(who, name, None, why).await);
            }
        };
        let info = tool.info();
        self.tool_plane
            .check_args(name, &info.parameters, &args)
            .map_err(ToolCallError::InvalidArguments)?;
        let hints = tool.annotations();
        let cache = match self.tool_plane.cache.ttl(name) {
            Some(ttl) if hints.read_only || hints.idempotent => {
                Some((ResultCache::key(name, &args, &who.chain), ttl))
            }
            _ => None,
        };
        let cached = cache
            .as_ref()
            .and_then(|(key, _)| self.tool_plane.cache.get(key));
        let from_cache = cached.is_some();
        let call_id = format!("tc_{}", uuid::Uuid::now_v7().simple());
        let mut given_up = false;
        let result = match cached {
            Some(v) => Ok(v),
            None => match self
                .tool_plane
                .take_rate(
                    name,
                    who.agent.as_str(),
                    who.run.as_ref().map(|r| r.as_str()),
                )
                .await
            {
                Err(refused) => Err(ToolCallError::Limited(refused.to_string())),
                Ok(()) => {
                    let ctx = ToolContext {
                        run_id: None,
                        seq: 0,
                        idempotency_key: call_id.clone(),
                        host: self.tool_host.clone(),
                        traceparent: crate::traceparent(),
                        progress,
                        owner: who.chain.first().cloned(),
                    };
                    // Dropping the call is how it is given up: an upstream MCP server is
                    // sent `notifications/cancelled`, an HTTP request is aborted.
                    let call = tokio::time::timeout(TOOL_CALL_TIMEOUT, tool.call(&ctx, args));
                    let result = tokio::select! {
                        r = call => match r {
                            Ok(r) => r.map_err(|e| match e {
                                ToolError::InvalidArgs(m) => ToolCallError::InvalidArguments(m),
                                other => ToolCallError::Failed(other.to_string()),
                            }),
                            Err(_) => Err(ToolCallError::Failed(format!(
                                "tool {name} did not finish within {} s",
                                TOOL_CALL_TIMEOUT.as_secs()
                            ))),
                        },
                        _ = cancelled.cancelled() => {
                            given_up = true;
                            Err(ToolCallError::Failed(format!("the caller cancelled the call of {name}")))
                        }
                    };
                    // Kept no longer than the configured TTL, nor than the server allows.
                    if let (Ok(v), Some((key, ttl))) = (&result, &cache) {
                        let ttl = tool.result_max_age(v).map_or(*ttl, |hint| hint.min(*ttl));
                        if !ttl.is_zero() {
                            self.tool_plane.cache.put(*key, v, ttl);
                        }
                    }
                    result
                }
            },
        };
        let outcome = match (&result, from_cache) {
            (Ok(_), true) => "ok (cached)",
            (Ok(_), false) => "ok",
            _ if given_up => "cancelled",
            _ => "error",
        };
        self.audit_call(who, name, call_id, outcome, &result)
            .await?;
        result
    }

    /// The record of a tool call made outside a run, with its outcome, written before the
    /// caller hears it.
    async fn audit_call(
        &self,
        who: &Principal,
        name: &str,
        call_id: String,
        outcome: &str,
        result: &Result<Value, ToolCallError>,
    ) -> Result<(), ToolCallError> {
        let now = self.clock.now_ms();
        let record = steward_gov::AuditRecord {
            delegations: who.link_ids(),
            trace_id: crate::trace_id(),
            outcome: Some(outcome.into()),
            error: result.as_ref().err().map(|e| e.to_string()),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Syscall,
                now,
                format!("agent:{}", who.agent),
                who.chain.clone(),
                "tool.call",
                name,
            )
            .in_run(who.run.as_ref().map(|r| r.to_string()), Some(call_id))
            .decided("allow", None)
        }
        .to_json();
        self.outcomes
            .append_audited(None, Vec::new(), vec![(now, record)], Vec::new())
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Whether approval `id` was given for a call of tool `name`.
    async fn approved(&self, id: &str, name: &str) -> Result<bool, GatewayError> {
        let rec = self.approvals.get_approval(id).await.map_err(internal)?;
        Ok(rec.is_some_and(|a| {
            a.state == "approved" && a.action == "tool.call" && a.resource == name
        }))
    }

    /// Refuses a tool call, audited (as a decision, with the policy's when it made one) before
    /// the caller hears of it.
    async fn refuse_tool(
        &self,
        who: &Principal,
        name: &str,
        d: Option<Decision>,
        why: String,
    ) -> ToolCallError {
        let action = (steward_gov::AuditEvent::Decision, "tool.call");
        let error = GatewayError::Forbidden(why);
        let error = match d {
            Some(d) => self.refuse_decided(action, who, name, &d, error).await,
            None => {
                let principal = format!("agent:{}", who.agent);
                self.refuse_as(
                    action,
                    &principal,
                    who.chain.clone(),
                    who.link_ids(),
                    name,
                    error,
                )
                .await
            }
        };
        match error {
            GatewayError::Forbidden(why) => ToolCallError::Forbidden(why),
            other => ToolCallError::Gateway(other),
        }
    }

    /// `tools_search` and `tools_describe`, over the tools `who` may call.
    async fn meta_call(
        &self,
        who: &Principal,
        name: &str,
        args: Value,
    ) -> Result<Value, ToolCallError> {
        self.tool_plane
            .check_args(name, &tool_search::schema_of(name), &args)
            .map_err(ToolCallError::InvalidArguments)?;
        let visible = self.visible_tools(who).await?;
        Ok(tool_search::answer(name, &args, &visible))
    }
}
