//! The `/v1` gateway's syscall: an OpenAI-format chat request from an external agent, on the
//! same path as a managed agent's model call. 1 identify (an API key names the agent, a
//! delegated token the whole chain; a request may name its own run), 2 authorize (the token's
//! scope, then the policy), 3 reserve (a budget hold up every chain), 4 record the
//! call as started — durably, before any upstream is asked, 5 act through the route's
//! deployments by strategy, retrying and falling back on transient failures, and to the
//! route's chains for context-window overflows and content-filter refusals, 6 record the outcome with
//! its usage, 7 a span with the OpenTelemetry GenAI attributes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use steward_gov::Decision;
use steward_llm::{ByteStream, Failure, NativeApi, NativeRequest, Plan, Router};
use steward_store::{ApiKeyRecord, CallEnd, CallOutcome, CallWriter, NewCall};
use steward_store::{AuditStore, CacheStore, GatewayStore, RateStore, RunStore};
use steward_types::{AgentName, RunId};
use tracing::Instrument;

use crate::authority::Authority;
use crate::budgets::{Budgets, DEFAULT_MAX_OUTPUT};
use crate::clock::Clock;
use crate::delegations::{Refusal, ScopeError};
use crate::metrics::Metrics;
pub use crate::principal::Principal;
use crate::ttl_cache::TtlCache;

mod tools;
pub use tools::{Approval, ToolCallError, ToolView};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    ModelNotFound(String),
    /// The scope (`key:…`, `agent:…`, `model:…`) is at its per-minute limit.
    #[error("rate limit reached for {scope}; retry in {retry_after_s} s")]
    RateLimited { scope: String, retry_after_s: u64 },
    /// A hold for the call's worst case would pass this account's cap.
    #[error("budget exceeded on account {account:?}: {message}")]
    BudgetExceeded { account: String, message: String },
    /// The policy does not permit the call.
    #[error("{0}")]
    Forbidden(String),
    /// The prompt does not fit any deployment's context window (`context_length_exceeded`),
    /// or a content filter refused (`content_filter`): fallbacks, if any, were tried.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// Every deployment failed; carries the last upstream error, its HTTP status and its
    /// `Retry-After` in seconds, if any.
    #[error("{message}")]
    Upstream {
        status: Option<u16>,
        timeout: bool,
        retry_after_s: Option<u64>,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
}

pub enum GatewayReply {
    Json(Value),
    /// OpenAI `chat.completion.chunk` events, as the upstream sent them.
    Stream(ByteStream),
    /// The answer in the client's own API, from an upstream that speaks it, unchanged.
    Native(Value),
    /// That API's events, as the upstream sent them.
    NativeStream(ByteStream),
}

/// A cached answer given in a client's own API is kept wrapped, so it is served as such.
const CACHED_NATIVE: &str = "steward.native";

pub(crate) struct Gateway {
    pub router: Arc<Router>,
    pub limits: steward_types::config::RateLimits,
    /// Where refusals are recorded, API keys kept, named runs read, rate windows counted and
    /// answers cached.
    pub audit_log: Arc<dyn AuditStore>,
    pub key_store: Arc<dyn GatewayStore>,
    pub run_store: Arc<dyn RunStore>,
    pub rate_store: Arc<dyn RateStore>,
    pub cache_store: Arc<dyn CacheStore>,
    /// Approvals given for calls outside a run (MCP tasks waiting for a person).
    pub approvals: Arc<dyn steward_store::ApprovalStore>,
    pub budgets: Budgets,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The policy, identities and grants every decision consults (the same as runs').
    pub authority: Authority,
    /// Takes calls' holds and records them as started (concurrent calls in one commit) and
    /// settles them, the ends riding along with the starts.
    pub calls: CallWriter,
    /// Live keys by hash, and budget chains by agent and run, for `LOOKUP_TTL`: the two reads
    /// every call would otherwise make. A key created is usable at once; a new account or
    /// parent applies to calls within the TTL.
    pub keys: TtlCache<String, ApiKeyRecord>,
    pub chains: TtlCache<(String, Option<RunId>), Vec<String>>,
    /// The registry's tools, of which callers outside a run get those that need no run.
    pub tools: steward_tools::Tools,
    /// What those tools may ask of the engine (no run's state: they are called with none).
    pub tool_host: Arc<dyn steward_tools::ToolHost>,
    /// Argument checks, per-minute limits and the result cache of tool calls.
    pub tool_plane: Arc<crate::tool_plane::ToolPlane>,
    /// Tool calls' outcome records, group-committed with the journal's writes: concurrent
    /// calls share a commit.
    pub outcomes: steward_store::JournalWriter,
}

/// Keys are random and long; a plain SHA-256 is enough to keep them unreadable at rest.
pub(crate) fn key_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The rate-limit windows a call was counted in; its tokens are added when it ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct RateTicket {
    scopes: Vec<String>,
    window: i64,
}

/// What a call is metered against: its budget hold and its rate-limit windows.
#[derive(Clone, Debug)]
pub(crate) struct Meters {
    hold: Option<Hold>,
    rate: RateTicket,
    /// Where to keep the answer, and until when, when the route caches.
    cache: Option<(String, i64)>,
    /// When the call went to its first upstream.
    started: Instant,
    /// The policy's decision, recorded with the call.
    decision: Decision,
    /// Who called, for the call's audit record.
    who: Principal,
    /// The most tokens in and out the call can use: what it is charged when the upstream
    /// reports no usage (a stream cut short, an upstream that does not count).
    bounds: (i64, i64),
    /// Whether a streaming client asked for the usage chunk (it is always asked of upstreams).
    wants_usage: bool,
    /// The deployment last tried, for the record of a call that failed.
    tried: Arc<std::sync::Mutex<Option<String>>>,
}

/// A budget hold taken for one call (its id is the call's): the accounts up the chain and the
/// amount on each.
#[derive(Clone, Debug)]
pub(crate) struct Hold {
    accounts: Vec<String>,
    nanos: i64,
}

fn internal(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Internal(e.to_string())
}

impl Gateway {
    pub async fn create_key(
        &self,
        agent: &AgentName,
        ttl_ms: Option<i64>,
    ) -> Result<(ApiKeyRecord, String), GatewayError> {
        let secret = format!(
            "sk-steward-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let id = self.clock.new_id("key");
        let now = self.clock.now_ms();
        let rec = self
            .key_store
            .create_key(&id, &key_hash(&secret), agent, ttl_ms.map(|t| now + t), now)
            .await
            .map_err(internal)?;
        Ok((rec, secret))
    }

    /// Forgets cached keys, so a revocation applies on this node at once.
    pub fn forget_keys(&self) {
        self.keys.clear();
        self.authority.delegations.forget();
    }

    /// Identifies a caller: by its API key (`Authorization: Bearer sk-steward-…`), and, when it
    /// presents a delegated token too, by the chain that token carries — which must name the
    /// key's agent as its holder. A token alone is never enough: whoever holds a copy of it is
    /// not the agent it was minted for.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        delegation: Option<&str>,
        run: Option<&str>,
    ) -> Result<Principal, GatewayError> {
        let secret = bearer.ok_or_else(|| {
            GatewayError::Unauthorized(
                "missing credential: send `Authorization: Bearer sk-steward-…` (the agent's own API key), with `X-Steward-Delegation: <token>` to act under a delegated token".into(),
            )
        })?;
        if !secret.starts_with("sk-") {
            return Err(self
                .refuse(
                    "unknown",
                    Vec::new(),
                    Vec::new(),
                    "api_key",
                    GatewayError::Unauthorized(
                        "`Authorization: Bearer` takes the agent's own API key (sk-steward-…); a delegated token goes in `X-Steward-Delegation`, beside its holder's key".into(),
                    ),
                )
                .await);
        }
        let own = self.authenticate_key(secret).await?;
        let who = match delegation {
            None => own,
            Some(token) => {
                let held = self.authenticate_token(token).await?;
                if held.agent != own.agent {
                    let error = GatewayError::Forbidden(format!(
                        "this delegated token was minted for agent {}; agent {} (whose API key came with it) may not use it",
                        held.agent, own.agent
                    ));
                    return Err(self
                        .refuse(
                            &format!("agent:{}", own.agent),
                            held.chain.clone(),
                            held.link_ids(),
                            "token",
                            error,
                        )
                        .await);
                }
                held
            }
        };
        self.attach_run(who, run).await
    }

    /// See [`Authority::decide_for_caller`].
    async fn decide_chain(
        &self,
        who: &Principal,
        action: &str,
        resource: &str,
        cost_nanos: i64,
        destination: Option<&str>,
    ) -> Result<(Decision, Option<String>), GatewayError> {
        let now = self.clock.now_ms();
        self.authority
            .decide_for_caller(who, (action, resource), cost_nanos, destination, now)
            .await
            .map_err(internal)
    }

    /// Refuses a credential, audited before the caller hears of it.
    async fn refuse(
        &self,
        principal: &str,
        chain: Vec<String>,
        delegations: Vec<String>,
        resource: &str,
        error: GatewayError,
    ) -> GatewayError {
        self.refuse_as(
            (steward_gov::AuditEvent::Authentication, "authenticate"),
            principal,
            chain,
            delegations,
            resource,
            error,
        )
        .await
    }

    /// Refuses a request, audited (as `event`) before the caller hears of it.
    async fn refuse_as(
        &self,
        (event, action): (steward_gov::AuditEvent, &str),
        principal: &str,
        chain: Vec<String>,
        delegations: Vec<String>,
        resource: &str,
        error: GatewayError,
    ) -> GatewayError {
        let record = steward_gov::AuditRecord {
            delegations,
            ..steward_gov::AuditRecord::new(
                event,
                0,
                principal.to_string(),
                chain,
                action,
                resource,
            )
        };
        self.deny(record, error).await
    }

    /// Refuses a request a policy decided against, audited with the decision before the caller
    /// hears of it.
    async fn refuse_decided(
        &self,
        (event, action): (steward_gov::AuditEvent, &str),
        who: &Principal,
        resource: &str,
        d: &Decision,
        error: GatewayError,
    ) -> GatewayError {
        let record = steward_gov::AuditRecord {
            delegations: who.link_ids(),
            ..steward_gov::AuditRecord::new(
                event,
                0,
                format!("agent:{}", who.agent),
                who.chain.clone(),
                action,
                resource,
            )
            .in_run(who.run.as_ref().map(|r| r.to_string()), None)
            .decided("deny", Some(d))
        };
        self.deny(record, error).await
    }

    /// Appends `record` as a denial carrying `error`, now, durably, then hands the error back
    /// (or the store's, when the record could not be written).
    async fn deny(&self, record: steward_gov::AuditRecord, error: GatewayError) -> GatewayError {
        let now = self.clock.now_ms();
        let record = steward_gov::AuditRecord {
            at: now,
            error: Some(error.to_string()),
            ..record.decided("deny", None)
        }
        .to_json();
        match self.audit_log.append_audit(&[(now, record)]).await {
            Ok(_) => error,
            Err(e) => internal(e),
        }
    }

    /// Whether an agent working a task queue with its own credential may `task.enqueue` or
    /// `task.lease` on `queue` (see [`Gateway::authorize_on`]).
    pub async fn authorize_queue(
        &self,
        who: &Principal,
        action: &str,
        queue: &str,
    ) -> Result<(), GatewayError> {
        self.authorize_on(who, action, ("queue", "Queue"), queue, false)
            .await
            .map(drop)
    }

    /// Whether an agent calling with its own credential may do `action` on the resource
    /// `name` of `kind` (`queue`, `namespace`; `entity` its Cedar type): its delegated token's
    /// scope, if it presented one, then the policy (a permit that asks for approval is no:
    /// these callers cannot wait for a person). With `own`, the resource is the caller's own
    /// (its agent's memory scope): allowed when no policy applies to it at all — a forbid
    /// still refuses, and an agent up a delegated chain must be permitted as always. A
    /// refusal is audited before the caller hears of it. The decision, when a policy made it.
    pub async fn authorize_on(
        &self,
        who: &Principal,
        action: &str,
        (kind, entity): (&str, &str),
        name: &str,
        own: bool,
    ) -> Result<Option<Decision>, GatewayError> {
        let now = self.clock.now_ms();
        let scoped = who.delegated.as_ref().and_then(|d| {
            self.authority
                .delegations
                .delegator
                .allows(&d.token, action, kind, name, now)
                .err()
        });
        let (d, why) = match scoped {
            Some(e) => (
                None,
                format!(
                    "the delegated token of agent {} does not allow {action} on {kind} {name}: {e}",
                    who.agent
                ),
            ),
            None => {
                let (d, up_chain) = self.decide_chain(who, action, name, 0, None).await?;
                if d.allow && d.approval.is_none() {
                    return Ok(Some(d));
                }
                if own && !d.allow && d.policy_ids.is_empty() && up_chain.is_none() {
                    return Ok(None);
                }
                let by = up_chain.unwrap_or_else(|| who.agent.to_string());
                let why = if d.allow {
                    format!(
                        "{action} on {kind} {name} needs approval, which this caller cannot wait for"
                    )
                } else if d.policy_ids.is_empty() {
                    format!(
                        "no policy permits agent {by} to {action} on {kind} {name} (permit Steward::Action::\"{action}\" on Steward::{entity}::\"{name}\")"
                    )
                } else {
                    format!(
                        "agent {by} may not {action} on {kind} {name}: forbidden by {}",
                        d.policy_ids.join(", ")
                    )
                };
                (Some(d), why)
            }
        };
        let record = steward_gov::AuditRecord {
            delegations: who.link_ids(),
            error: Some(why.clone()),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Decision,
                now,
                format!("agent:{}", who.agent),
                who.chain.clone(),
                action,
                name,
            )
            .decided("deny", d.as_ref())
        }
        .to_json();
        self.audit_log
            .append_audit(&[(now, record)])
            .await
            .map_err(internal)?;
        Err(GatewayError::Forbidden(why))
    }

    /// A token for agent `to`, no wider than the caller's own credential (its API key, or
    /// the token it presented), hop by hop. Granted or refused, it is audited.
    pub async fn delegate(
        &self,
        who: &Principal,
        to: &str,
        req: steward_gov::delegation::Requested,
    ) -> Result<(steward_store::DelegationRecord, String), GatewayError> {
        let holder =
            AgentName::parse(to).map_err(|e| GatewayError::BadRequest(format!("to: {}", e.0)))?;
        let mut chain = who.chain.clone();
        chain.push(format!("agent:{holder}"));
        let principal = format!("agent:{}", who.agent);
        let resource = format!("agent:{holder}");
        // A refusal is audited with the chain the token would have made.
        let refuse = |error: GatewayError| {
            self.refuse_as(
                (steward_gov::AuditEvent::Delegation, "agent.delegate"),
                &principal,
                chain.clone(),
                who.link_ids(),
                &resource,
                error,
            )
        };
        let refused = self
            .authority
            .identities
            .barred(holder.as_str())
            .await
            .map_err(internal)?;
        if let Some(why) = refused {
            let error = GatewayError::Forbidden(why);
            return Err(refuse(error).await);
        }
        // Minting is an action like any other: decided for every agent whose authority the
        // new token would carry.
        let (d, up_chain) = self
            .decide_chain(who, "agent.delegate", holder.as_str(), 0, None)
            .await?;
        if !d.allow || d.approval.is_some() {
            let by = up_chain.as_deref().unwrap_or(who.agent.as_str());
            let error = GatewayError::Forbidden(if d.allow {
                format!(
                    "delegating to {holder} needs approval, which a token request cannot wait for"
                )
            } else if d.policy_ids.is_empty() {
                format!(
                    "no policy permits agent {by} to delegate to {holder} (permit Steward::Action::\"agent.delegate\" on Steward::Agent::\"{holder}\")"
                )
            } else {
                format!(
                    "agent {by} may not delegate to {holder}: forbidden by {}",
                    d.policy_ids.join(", ")
                )
            });
            return Err(self
                .refuse_decided(
                    (steward_gov::AuditEvent::Delegation, "agent.delegate"),
                    who,
                    &resource,
                    &d,
                    error,
                )
                .await);
        }
        let key_expires = match &who.delegated {
            Some(_) => None,
            None => self
                .key_store
                .get_key(&who.key_id)
                .await
                .map_err(internal)?
                .and_then(|k| k.expires_at),
        };
        let scope =
            match self
                .authority
                .delegations
                .child_scope(who.delegated.as_deref(), key_expires, req)
            {
                Ok(s) => s,
                Err(ScopeError::Invalid(p)) => return Err(GatewayError::BadRequest(p.join("; "))),
                Err(ScopeError::Wider(p)) => {
                    let error = GatewayError::Forbidden(format!(
                        "agent {} may not delegate to {holder} more than it holds: {}",
                        who.agent,
                        p.join("; ")
                    ));
                    return Err(refuse(error).await);
                }
            };
        let key_id = who.delegated.is_none().then_some(who.key_id.as_str());
        let (rec, token) = self
            .authority
            .delegations
            .mint(
                who.delegated.as_deref(),
                key_id,
                who.agent.as_str(),
                holder.as_str(),
                &scope,
            )
            .await
            .map_err(|r| match r {
                Refusal::Internal(m) => GatewayError::Internal(m),
                other => GatewayError::Internal(format!("{other:?}")),
            })?;
        let now = self.clock.now_ms();
        let mut links = who.link_ids();
        links.push(rec.id.clone());
        let record = steward_gov::AuditRecord {
            delegations: links,
            outcome: Some(rec.scope.clone()),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Delegation,
                now,
                principal,
                chain,
                "agent.delegate",
                &resource,
            )
            .in_run(who.run.as_ref().map(|r| r.to_string()), None)
            .decided("allow", Some(&d))
        }
        .to_json();
        self.audit_log
            .append_audit(&[(now, record)])
            .await
            .map_err(internal)?;
        Ok((rec, token))
    }

    async fn authenticate_token(&self, token: &str) -> Result<Principal, GatewayError> {
        let d = match self.authority.delegations.open(token).await {
            Ok(d) => d,
            Err(r) => {
                let (error, what) = match r {
                    Refusal::Forged(m) => (
                        GatewayError::Unauthorized(format!("invalid delegated token: {m}")),
                        "token",
                    ),
                    Refusal::Revoked(m) | Refusal::Expired(m) => {
                        (GatewayError::Unauthorized(m), "token")
                    }
                    Refusal::Barred(m) => (GatewayError::Forbidden(m), "token"),
                    Refusal::Internal(m) => return Err(GatewayError::Internal(m)),
                };
                return Err(self
                    .refuse("unknown", Vec::new(), Vec::new(), what, error)
                    .await);
            }
        };
        let last = d.last();
        let agent = AgentName::parse(&last.holder).map_err(|e| internal(e.0))?;
        let on_behalf_of = self
            .authority
            .identities
            .owner(d.root_agent())
            .await
            .map_err(internal)?;
        let owner = self
            .authority
            .identities
            .owner(agent.as_str())
            .await
            .map_err(internal)?;
        let mut chain: Vec<String> = on_behalf_of.iter().map(|o| format!("user:{o}")).collect();
        chain.push(format!("agent:{}", d.root_agent()));
        chain.extend(d.links.iter().map(|l| format!("agent:{}", l.holder)));
        Ok(Principal {
            agent,
            key_id: last.id.clone(),
            run: None,
            chain,
            on_behalf_of,
            owner,
            delegated: Some(Arc::new(d)),
        })
    }

    async fn authenticate_key(&self, secret: &str) -> Result<Principal, GatewayError> {
        let hash = key_hash(secret);
        let key = match self.keys.get(&hash) {
            Some(k) => k,
            None => {
                let Some(k) = self.key_store.find_key(&hash).await.map_err(internal)? else {
                    return Err(self
                        .refuse(
                            "unknown",
                            Vec::new(),
                            Vec::new(),
                            "api_key",
                            GatewayError::Unauthorized("invalid API key".into()),
                        )
                        .await);
                };
                self.keys.put(hash, k.clone());
                k
            }
        };
        let refusal = if key.revoked_at.is_some() {
            Some(GatewayError::Unauthorized(format!(
                "this API key was revoked: {}",
                key.revoke_reason.clone().unwrap_or_default()
            )))
        } else if key.expires_at.is_some_and(|t| t <= self.clock.now_ms()) {
            Some(GatewayError::Unauthorized(
                "this API key has expired; ask for a new one".into(),
            ))
        } else {
            self.authority
                .identities
                .barred(&key.agent)
                .await
                .map_err(internal)?
                .map(GatewayError::Forbidden)
        };
        if let Some(error) = refusal {
            let who = format!("agent:{}", key.agent);
            return Err(self
                .refuse(&who, vec![who.clone()], Vec::new(), &key.id, error)
                .await);
        }
        let agent = AgentName::parse(&key.agent).map_err(|e| internal(e.0))?;
        let owner = self
            .authority
            .identities
            .owner(agent.as_str())
            .await
            .map_err(internal)?;
        let mut chain: Vec<String> = owner.iter().map(|o| format!("user:{o}")).collect();
        chain.push(format!("agent:{agent}"));
        Ok(Principal {
            agent,
            key_id: key.id,
            run: None,
            chain,
            on_behalf_of: owner.clone(),
            owner,
            delegated: None,
        })
    }

    /// The run a request says it acts for: it must exist and be a run of an agent on the
    /// caller's chain or of the same owner — never another owner's, whose budget and record
    /// it would use.
    async fn attach_run(
        &self,
        mut who: Principal,
        run: Option<&str>,
    ) -> Result<Principal, GatewayError> {
        who.run = match run {
            None => None,
            Some(r) => {
                let id = RunId::parse(r)
                    .map_err(|e| GatewayError::BadRequest(format!("X-Steward-Run: {}", e.0)))?;
                let Some(rec) = self.run_store.get_run(&id).await.map_err(internal)? else {
                    return Err(GatewayError::BadRequest(format!(
                        "X-Steward-Run: no run {id}"
                    )));
                };
                let run_owner = self
                    .authority
                    .identities
                    .owner(rec.agent.as_str())
                    .await
                    .map_err(internal)?;
                // The same owner, when both have one: two agents without an owner share
                // nothing.
                let own = who.chain.contains(&format!("agent:{}", rec.agent))
                    || (run_owner.is_some() && run_owner == who.on_behalf_of);
                if !own {
                    let error = GatewayError::Forbidden(format!(
                        "run {id} belongs to agent {} of owner {}, and this credential acts for {}: an agent may only act for runs of its own owner",
                        rec.agent,
                        run_owner.as_deref().unwrap_or("(none)"),
                        who.on_behalf_of.as_deref().unwrap_or("(no owner)")
                    ));
                    return Err(self
                        .refuse(
                            &format!("agent:{}", who.agent),
                            who.chain.clone(),
                            who.link_ids(),
                            &format!("run:{id}"),
                            error,
                        )
                        .await);
                }
                Some(id)
            }
        };
        Ok(who)
    }

    /// The most tokens the call can take in and give out, from the request: a token is at
    /// least a byte, so the body's size bounds what goes in; what comes out is bounded by the
    /// output limit — the client's, or DEFAULT_MAX_OUTPUT, which is then sent to the upstream
    /// (`bound_output`) — times the choices asked for. Malformed limits are refused.
    fn bounds(body: &Value, op: Op) -> Result<(i64, i64), GatewayError> {
        match op {
            Op::Embeddings => Ok((
                body.get("input").map_or(0, |v| v.to_string().len() as i64),
                0,
            )),
            Op::Chat => {
                let positive = |field: &str, max: u64| -> Result<Option<i64>, GatewayError> {
                    match body.get(field) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => match v.as_u64() {
                            Some(n) if (1..=max).contains(&n) => Ok(Some(n as i64)),
                            _ => Err(GatewayError::BadRequest(format!(
                                "{field}: a whole number from 1 to {max}, not {v}"
                            ))),
                        },
                    }
                };
                let limit = match positive("max_completion_tokens", 10_000_000)? {
                    Some(n) => Some(n),
                    None => positive("max_tokens", 10_000_000)?,
                };
                let choices = positive("n", 128)?.unwrap_or(1);
                Ok((
                    body.to_string().len() as i64,
                    limit.unwrap_or(DEFAULT_MAX_OUTPUT) * choices,
                ))
            }
        }
    }

    /// The most the call can cost, or why that cannot be known (a deployment without a price).
    /// Asks the policy whether the agent may make this call. A denial is audited at once, and
    /// durably, before the caller hears of it.
    async fn authorize(
        &self,
        who: &Principal,
        call_id: &str,
        model: &str,
        plan: &mut Plan,
        cost_nanos: i64,
    ) -> Result<Decision, GatewayError> {
        let now = self.clock.now_ms();
        if let Some(d) = &who.delegated {
            if let Err(e) = self
                .authority
                .delegations
                .delegator
                .allows(&d.token, "llm.call", "model", model, now)
            {
                let error = GatewayError::Forbidden(format!(
                    "the delegated token of agent {} does not allow calling {model}: {e}",
                    who.agent
                ));
                return Err(self
                    .refuse_as(
                        (steward_gov::AuditEvent::Decision, "llm.call"),
                        &format!("agent:{}", who.agent),
                        who.chain.clone(),
                        who.link_ids(),
                        model,
                        error,
                    )
                    .await);
            }
        }
        let (d, up_chain) = self
            .decide_chain(who, "llm.call", model, cost_nanos, None)
            .await?;
        if !d.allow || d.approval.is_some() {
            return Err(self
                .refuse_call(who, call_id, model, cost_nanos, &d, up_chain)
                .await);
        }
        // Decide on what is actually called, not only on the name sent: an alias routes to
        // deployments (`provider/model`) a policy may forbid. A forbidden one is left out of
        // the plan; a call none of whose deployments may be called is refused.
        let mut decided: Vec<(String, Decision, Option<String>)> = Vec::new();
        for label in plan.all().map(|d| d.label.clone()) {
            if label == model || decided.iter().any(|(l, _, _)| *l == label) {
                continue;
            }
            let (dd, by) = self
                .decide_chain(who, "llm.call", &label, cost_nanos, None)
                .await?;
            decided.push((label, dd, by));
        }
        let refused: Vec<&(String, Decision, Option<String>)> = decided
            .iter()
            .filter(|(_, dd, _)| !dd.allow || dd.approval.is_some())
            .collect();
        for (label, dd, by) in &refused {
            let e = self
                .refuse_call(who, call_id, label, cost_nanos, dd, by.clone())
                .await;
            if let GatewayError::Internal(_) = e {
                return Err(e);
            }
        }
        if !plan.retain_allowed(|l| refused.iter().any(|(r, _, _)| r == l)) {
            return Err(GatewayError::Forbidden(format!(
                "agent {} may not call {model}: every deployment it routes to is refused: {}",
                who.agent,
                refused_deployments(refused.iter().map(|(l, dd, _)| (l.as_str(), dd)))
            )));
        }
        let mut d = d;
        for (_, dd, _) in decided {
            for id in dd.policy_ids {
                if !d.policy_ids.contains(&id) {
                    d.policy_ids.push(id);
                }
            }
        }
        Ok(d)
    }

    /// Audits a refused model call (a denial, or a permit that needs an approval no gateway
    /// call can wait for) and says why.
    async fn refuse_call(
        &self,
        who: &Principal,
        call_id: &str,
        model: &str,
        cost_nanos: i64,
        d: &Decision,
        up_chain: Option<String>,
    ) -> GatewayError {
        let now = self.clock.now_ms();
        let verdict = if d.allow { "approval_required" } else { "deny" };
        let record = steward_gov::AuditRecord {
            delegations: who.link_ids(),
            cost_nanos,
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Decision,
                now,
                format!("agent:{}", who.agent),
                who.chain.clone(),
                "llm.call",
                model,
            )
            .in_run(
                who.run.as_ref().map(|r| r.to_string()),
                Some(call_id.into()),
            )
            .decided(verdict, Some(d))
        }
        .to_json();
        if let Err(e) = self.audit_log.append_audit(&[(now, record)]).await {
            return internal(e);
        }
        if let Some(group) = &d.approval {
            // A gateway call cannot wait for a person; managed runs can.
            return GatewayError::Forbidden(format!(
                "calling {model} needs approval from {group}, which only managed runs can wait for"
            ));
        }
        let by = up_chain.unwrap_or_else(|| who.agent.to_string());
        GatewayError::Forbidden(if d.policy_ids.is_empty() {
            format!("no policy permits agent {by} to call {model}")
        } else {
            format!(
                "agent {by} may not call {model}: forbidden by {}",
                d.policy_ids.join(", ")
            )
        })
    }

    async fn hold(
        &self,
        who: &Principal,
        estimate: Result<i64, String>,
    ) -> Result<Option<Hold>, GatewayError> {
        let slot = (who.key_id.clone(), who.run.clone());
        let accounts = match self.chains.get(&slot) {
            Some(a) => a,
            None => {
                // A delegated call spends under its links and the agent that began the chain,
                // as well as under the caller's own accounts.
                let mut starts: Vec<String> = who.run.iter().map(|r| format!("run:{r}")).collect();
                starts.push(format!("agent:{}", who.agent));
                if let Some(d) = &who.delegated {
                    starts.extend(d.budget_account());
                    starts.push(format!("agent:{}", d.root_agent()));
                }
                let a = self.budgets.chain_from(starts).await.map_err(internal)?;
                self.chains.put(slot, a.clone());
                a
            }
        };
        if accounts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Hold {
            accounts,
            nanos: estimate.map_err(GatewayError::BadRequest)?,
        }))
    }

    /// Queues the call's end for the settle writer: its hold settled, its outcome recorded, its
    /// tokens counted — durably moments later, in a batch with other calls'.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        call: &NewCall,
        op: Op,
        who: &Principal,
        decision: &Decision,
        outcome: CallOutcome,
        spent: i64,
        rate: &RateTicket,
    ) {
        let at = self.clock.now_ms();
        self.calls
            .settle(CallEnd {
                id: call.id.clone(),
                audit: Some(call_audit(
                    call,
                    op,
                    (who, crate::trace_id()),
                    decision,
                    &outcome,
                    spent,
                    at,
                )),
                outcome,
                spent,
                rate_scopes: rate.scopes.clone(),
                rate_window: rate.window,
                at,
            })
            .await;
    }

    /// Counts the call against every configured per-minute limit, or refuses it.
    async fn take_rate(&self, who: &Principal, model: &str) -> Result<RateTicket, GatewayError> {
        let l = &self.limits;
        let scopes: Vec<(String, i64, i64)> = [
            (l.key, format!("key:{}", who.key_id)),
            (l.agent, format!("agent:{}", who.agent)),
            (l.model, format!("model:{model}")),
        ]
        .into_iter()
        .filter_map(|(limit, scope)| limit.map(|lim| (scope, lim.rpm, lim.tpm)))
        .collect();
        if scopes.is_empty() {
            return Ok(RateTicket::default());
        }
        let now = self.clock.now_ms();
        let window = now - now.rem_euclid(60_000);
        match self
            .rate_store
            .take_request(&scopes, window)
            .await
            .map_err(internal)?
        {
            None => Ok(RateTicket {
                scopes: scopes.into_iter().map(|(s, _, _)| s).collect(),
                window,
            }),
            Some(scope) => Err(GatewayError::RateLimited {
                scope,
                retry_after_s: ((window + 60_000 - now) / 1000 + 1) as u64,
            }),
        }
    }

    /// The cache key and expiry for a request, when its route caches and the request may be
    /// answered from a cache: not streamed, and not sampled unless the route says so. The key
    /// covers the agent, so agents never see each other's answers.
    fn cache_slot(
        &self,
        who: &Principal,
        model: &str,
        body: &Value,
        op: Op,
        stream: bool,
        native: Option<&NativeRequest>,
    ) -> Option<(String, i64)> {
        let route = self.router.providers().route(model)?;
        let ttl = route.cache_ttl_ms?;
        let deterministic =
            op == Op::Embeddings || body.get("temperature").and_then(Value::as_f64) == Some(0.0);
        if stream || !(deterministic || route.cache_sampled) {
            return None;
        }
        let mut h = Sha256::new();
        h.update(who.agent.as_str().as_bytes());
        h.update([0]);
        h.update(model.as_bytes());
        h.update([0]);
        // serde_json maps are sorted: a canonical form.
        h.update(body.to_string().as_bytes());
        // A request in another API is answered in it: its answers are kept apart, and keyed
        // by what it passes through whole.
        if let Some(n) = native {
            h.update([0]);
            h.update(format!("{:?}", n.api).as_bytes());
            h.update([0]);
            h.update(n.body.to_string().as_bytes());
        }
        let key = hex::encode(h.finalize());
        Some((key, self.clock.now_ms().saturating_add(ttl as i64)))
    }

    /// Answers from the cache, recording the call (at no cost), if a live entry exists.
    async fn cache_hit(
        &self,
        who: &Principal,
        call_id: &str,
        model: &str,
        key: &str,
        op: Op,
        decision: &Decision,
    ) -> Result<Option<GatewayReply>, GatewayError> {
        let Some((body, deployment)) = self
            .cache_store
            .cache_get(key, self.clock.now_ms())
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let mut v: Value = serde_json::from_str(&body).map_err(internal)?;
        let native = v.get(CACHED_NATIVE).is_some();
        if native {
            v = v["body"].take();
        }
        let call = NewCall {
            id: call_id.to_string(),
            agent: who.agent.to_string(),
            run_id: who.run.as_ref().map(|r| r.to_string()),
            model: model.to_string(),
            stream: false,
        };
        let now = self.clock.now_ms();
        let begin = steward_store::CallBegin {
            call: call.clone(),
            accounts: Vec::new(),
            amount: 0,
        };
        self.calls.begin(begin, now).await.map_err(internal)?;
        let outcome = CallOutcome {
            deployment: Some(format!("cache:{deployment}")),
            status: "ok".into(),
            error: None,
            tokens_in: 0,
            tokens_out: 0,
            duration_us: 0,
        };
        self.finish(&call, op, who, decision, outcome, 0, &RateTicket::default())
            .await;
        Ok(Some(if native {
            GatewayReply::Native(v)
        } else {
            GatewayReply::Json(v)
        }))
    }

    pub async fn chat(
        &self,
        who: &Principal,
        body: Value,
        api: GatewayApi,
    ) -> Result<GatewayReply, GatewayError> {
        self.call(who, body, Op::Chat, api.name(), None).await
    }

    /// A call in another client API: `body` its chat translation, `native` the request as sent.
    pub async fn chat_native(
        &self,
        who: &Principal,
        body: Value,
        native: NativeRequest,
    ) -> Result<GatewayReply, GatewayError> {
        let api = match native.api {
            NativeApi::Messages => GatewayApi::Messages,
            NativeApi::Responses => GatewayApi::Responses,
        };
        self.call(who, body, Op::Chat, api.name(), Some(native))
            .await
    }

    /// How many input tokens a request in another client API would take, counted by the first
    /// deployment of its route that speaks that API (no model runs, nothing is charged); `None`
    /// when none does or none answers, and the caller estimates. Counting reaches an upstream
    /// with Steward's credential, so it is decided as a call of the model is: a principal that
    /// may not call the model may not count for it (and the refusal is audited).
    pub async fn count_tokens(
        &self,
        who: &Principal,
        model: &str,
        native: &NativeRequest,
    ) -> Result<Option<i64>, GatewayError> {
        let call_id = self.clock.new_id("call");
        let mut plan = self
            .router
            .plan(model, &call_id)
            .map_err(|e| GatewayError::ModelNotFound(e.to_string()))?;
        self.authorize(who, &call_id, model, &mut plan, 0).await?;
        for d in plan
            .deployments
            .iter()
            .filter(|d| d.provider.speaks(native.api))
        {
            match d.provider.count_tokens(native, &d.model).await {
                Ok(n) => return Ok(Some(n)),
                Err(e) => {
                    tracing::warn!(deployment = %d.label, error = %e, "could not count tokens")
                }
            }
        }
        Ok(None)
    }

    pub async fn embeddings(
        &self,
        who: &Principal,
        body: Value,
    ) -> Result<GatewayReply, GatewayError> {
        self.call(who, body, Op::Embeddings, "embeddings", None)
            .await
    }

    /// One call, measured: the time Steward adds is the whole minus the time spent waiting on
    /// upstreams.
    async fn call(
        &self,
        who: &Principal,
        body: Value,
        op: Op,
        api: &'static str,
        native: Option<NativeRequest>,
    ) -> Result<GatewayReply, GatewayError> {
        let entered = Instant::now();
        let mut upstream = Duration::ZERO;
        let result = self
            .call_inner(who, body, op, api, native, &mut upstream)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(GatewayError::RateLimited { .. } | GatewayError::BudgetExceeded { .. }) => {
                "refused"
            }
            Err(_) => "error",
        };
        self.metrics
            .gateway_call(op.name(), api, outcome, entered.elapsed(), upstream);
        result
    }

    async fn call_inner(
        &self,
        who: &Principal,
        body: Value,
        op: Op,
        api: &'static str,
        native: Option<NativeRequest>,
        upstream: &mut Duration,
    ) -> Result<GatewayReply, GatewayError> {
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| GatewayError::BadRequest("model: required, a string".into()))?
            .to_string();
        match op {
            Op::Chat if !body.get("messages").is_some_and(Value::is_array) => {
                return Err(GatewayError::BadRequest(
                    "messages: required, an array".into(),
                ));
            }
            Op::Embeddings
                if !body
                    .get("input")
                    .is_some_and(|i| i.is_string() || i.is_array()) =>
            {
                return Err(GatewayError::BadRequest(
                    "input: required, a string or an array".into(),
                ));
            }
            _ => {}
        }
        let stream = op == Op::Chat && body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let bounds = Self::bounds(&body, op)?;
        let mut body = body;
        let wants_usage = body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
        let mut native = native;
        if let Some(n) = &mut native {
            bound_native_output(n, bounds.1);
        }
        if op == Op::Chat {
            bound_output(&mut body);
            if stream {
                // Usage is what a stream is charged by: always asked for, and passed on only
                // to clients that asked for it.
                ask_for_usage(&mut body);
            }
        }
        let call_id = self.clock.new_id("call");
        let mut plan = self
            .router
            .plan(&model, &call_id)
            .map_err(|e| GatewayError::ModelNotFound(e.to_string()))?;
        let estimate = self.budgets.worst_case(&plan, bounds.0, bounds.1);
        let decision = self
            .authorize(
                who,
                &call_id,
                &model,
                &mut plan,
                estimate.clone().unwrap_or(0),
            )
            .await?;
        let rate = self.take_rate(who, &model).await?;
        let cache = self.cache_slot(who, &model, &body, op, stream, native.as_ref());
        if let Some((key, _)) = &cache {
            if let Some(hit) = self
                .cache_hit(who, &call_id, &model, key, op, &decision)
                .await?
            {
                return Ok(hit);
            }
        }
        let meters = Meters {
            hold: self.hold(who, estimate).await?,
            bounds,
            wants_usage,
            tried: Arc::new(std::sync::Mutex::new(None)),
            decision,
            who: who.clone(),
            rate,
            cache,
            started: Instant::now(),
        };
        let call = NewCall {
            id: call_id,
            agent: who.agent.to_string(),
            run_id: who.run.as_ref().map(|r| r.to_string()),
            model: model.clone(),
            stream,
        };
        // Record the call as started and take its budget hold in one commit, before any upstream
        // is asked.
        let (accounts, amount) = meters
            .hold
            .as_ref()
            .map_or((&[][..], 0), |h| (&h.accounts[..], h.nanos));
        let begin = steward_store::CallBegin {
            call: call.clone(),
            accounts: accounts.to_vec(),
            amount,
        };
        if let Some(account) = self
            .calls
            .begin(begin, self.clock.now_ms())
            .await
            .map_err(internal)?
        {
            return Err(GatewayError::BudgetExceeded {
                account,
                message: format!(
                    "the call's worst case (${:.6}) does not fit what is left",
                    amount as f64 / 1e9
                ),
            });
        }
        let span = tracing::info_span!(
            "gen_ai",
            "otel.name" = %format_args!("{} {model}", op.name()),
            "otel.kind" = "client",
            "gen_ai.operation.name" = op.name(),
            "steward.api" = api,
            "gen_ai.request.model" = %model,
            "gen_ai.provider.name" = tracing::field::Empty,
            "gen_ai.usage.input_tokens" = tracing::field::Empty,
            "gen_ai.usage.output_tokens" = tracing::field::Empty,
            agent = %who.agent,
            call_id = %call.id,
        );
        let mut meters = meters;
        meters.started = Instant::now();
        let started = meters.started;
        let result = if stream {
            self.stream(
                &call,
                plan,
                Asked { body, native },
                meters.clone(),
                upstream,
            )
            .instrument(span)
            .await
        } else {
            self.complete(&call, plan, Asked { body, native }, op, &meters, upstream)
                .instrument(span)
                .await
        };
        if let Err(e) = &result {
            let tried = meters.tried.lock().ok().and_then(|t| t.clone());
            let outcome = CallOutcome {
                deployment: tried,
                status: "error".into(),
                error: Some(e.to_string()),
                tokens_in: 0,
                tokens_out: 0,
                duration_us: started.elapsed().as_micros() as i64,
            };
            self.finish(
                &call,
                op,
                &meters.who,
                &meters.decision,
                outcome,
                0,
                &meters.rate,
            )
            .await;
        }
        result
    }

    async fn complete(
        &self,
        call: &NewCall,
        plan: Plan,
        Asked { body, native }: Asked,
        op: Op,
        meters: &Meters,
        upstream: &mut Duration,
    ) -> Result<GatewayReply, GatewayError> {
        let created = self.clock.now_ms() / 1000;
        let asked = Instant::now();
        let native = native.as_ref();
        let answer = self
            .router
            .run(&call.id, &plan, Answer::refused, |d| {
                let body = body.clone();
                let call_id = call.id.clone();
                if let Ok(mut t) = meters.tried.lock() {
                    *t = Some(d.label.clone());
                }
                async move {
                    match (op, native) {
                        (Op::Chat, Some(n)) if d.provider.speaks(n.api) => d
                            .provider
                            .native(n, &d.model)
                            .await
                            .map(|v| Answer::Native(n.api, v)),
                        (Op::Chat, _) => d
                            .provider
                            .chat_openai(body, &d.model, &call_id, created)
                            .await
                            .map(Answer::Chat),
                        (Op::Embeddings, _) => d
                            .provider
                            .embeddings_openai(body, &d.model)
                            .await
                            .map(Answer::Chat),
                    }
                }
            })
            .await;
        *upstream = asked.elapsed();
        let (answer, d) = answer.map_err(upstream_error)?;
        // An answer without usage is charged its bounds: never nothing.
        let counted = match &answer {
            Answer::Chat(v) => (
                v.pointer("/usage/prompt_tokens").and_then(Value::as_i64),
                v.pointer("/usage/completion_tokens")
                    .and_then(Value::as_i64),
            ),
            Answer::Native(api, v) => steward_llm::native::usage(*api, v),
        };
        let (tin, tout) = match counted {
            (Some(i), Some(o)) => (i, o),
            (i, _) if op == Op::Embeddings => (i.unwrap_or(meters.bounds.0), 0),
            _ => meters.bounds,
        };
        let span = tracing::Span::current();
        span.record("gen_ai.provider.name", d.provider.name());
        span.record("gen_ai.usage.input_tokens", tin);
        span.record("gen_ai.usage.output_tokens", tout);
        let outcome = CallOutcome {
            deployment: Some(d.label.clone()),
            status: "ok".into(),
            error: None,
            tokens_in: tin,
            tokens_out: tout,
            duration_us: meters.started.elapsed().as_micros() as i64,
        };
        // The upstream has answered and charged: book it, and from here on the call succeeds
        // even if the record cannot be written.
        let spent = self.budgets.cost(&d.label, tin, tout).unwrap_or(0);
        self.finish(
            call,
            op,
            &meters.who,
            &meters.decision,
            outcome,
            spent,
            &meters.rate,
        )
        .await;
        if let Some((key, expires_at)) = &meters.cache {
            let kept = match &answer {
                Answer::Chat(v) => v.to_string(),
                Answer::Native(_, v) => {
                    serde_json::json!({CACHED_NATIVE: true, "body": v}).to_string()
                }
            };
            if let Err(e) = self
                .cache_store
                .cache_put(key, &kept, &d.label, *expires_at)
                .await
            {
                tracing::warn!(error = %e, "could not cache a response");
            }
        }
        Ok(match answer {
            Answer::Chat(v) => GatewayReply::Json(v),
            Answer::Native(_, v) => GatewayReply::Native(v),
        })
    }

    async fn stream(
        &self,
        call: &NewCall,
        plan: Plan,
        Asked { body, native }: Asked,
        meters: Meters,
        upstream: &mut Duration,
    ) -> Result<GatewayReply, GatewayError> {
        let asked = Instant::now();
        let native = native.as_ref();
        let answer = self
            .router
            .run(
                &call.id,
                &plan,
                |_| false,
                |d| {
                    if let Ok(mut t) = meters.tried.lock() {
                        *t = Some(d.label.clone());
                    }
                    let body = body.clone();
                    async move {
                        match native {
                            Some(n) if d.provider.speaks(n.api) => d
                                .provider
                                .native_stream(n, &d.model)
                                .await
                                .map(|s| (Some(n.api), s)),
                            _ => d
                                .provider
                                .stream_openai(body, &d.model)
                                .await
                                .map(|s| (None, s)),
                        }
                    }
                },
            )
            .await;
        *upstream = asked.elapsed();
        let ((wire, upstream_stream), d) = answer.map_err(upstream_error)?;
        tracing::Span::current().record("gen_ai.provider.name", d.provider.name());
        let metered = self.metered(call.clone(), d.label.clone(), upstream_stream, wire, meters);
        Ok(match wire {
            None => GatewayReply::Stream(metered),
            Some(_) => GatewayReply::NativeStream(metered),
        })
    }

    /// Passes the upstream's events through, reading usage from them (always asked for; the
    /// usage chunk is passed on only if the client asked for it), and records the call's
    /// outcome when the stream ends. A stream that ends without usage — the client hung up,
    /// the upstream broke off or does not count — is charged its bounds, never nothing.
    fn metered(
        &self,
        call: NewCall,
        deployment: String,
        upstream: ByteStream,
        native: Option<NativeApi>,
        meters: Meters,
    ) -> ByteStream {
        let (rate, started, decision, who) =
            (meters.rate, meters.started, meters.decision, meters.who);
        let (bounds, wants_usage) = (meters.bounds, meters.wants_usage);
        // The stream is read by a task of its own, outside the call's span.
        let trace_id = crate::trace_id();
        let calls = self.calls.clone();
        let budgets = self.budgets.clone();
        let clock = self.clock.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<steward_llm::Result<bytes::Bytes>>(32);
        tokio::spawn(async move {
            let mut upstream = upstream;
            let mut events = SseLines::default();
            let mut usage: Option<(i64, i64)> = None;
            let mut error = None;
            while let Some(chunk) = upstream.next().await {
                let out = match chunk {
                    Ok(bytes) => {
                        let mut out = String::new();
                        for line in events.feed(&bytes) {
                            let event = line
                                .trim()
                                .strip_prefix("data:")
                                .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok());
                            let mut pass = true;
                            if let (Some(api), Some(e)) = (native, &event) {
                                // Another API's events pass through whole; usage is read off.
                                let (i, o) = steward_llm::native::event_usage(api, e);
                                if i.is_some() || o.is_some() {
                                    let (pi, po) = usage.unwrap_or((0, 0));
                                    usage = Some((i.unwrap_or(pi), o.unwrap_or(po)));
                                }
                            } else if let Some(u) = event
                                .as_ref()
                                .and_then(|v| v.get("usage"))
                                .filter(|u| u.is_object())
                            {
                                let (i, o) = usage.unwrap_or((0, 0));
                                usage = Some((
                                    u.get("prompt_tokens").and_then(Value::as_i64).unwrap_or(i),
                                    u.get("completion_tokens")
                                        .and_then(Value::as_i64)
                                        .unwrap_or(o),
                                ));
                                // The usage chunk carries no choices; one the client did not
                                // ask for is dropped, with the blank line that ends it.
                                let bare = event
                                    .as_ref()
                                    .and_then(|v| v.get("choices"))
                                    .and_then(Value::as_array)
                                    .is_none_or(Vec::is_empty);
                                pass = wants_usage || !bare;
                                events.skip_blank = !pass;
                            } else if events.skip_blank && line.trim().is_empty() {
                                events.skip_blank = false;
                                pass = false;
                            }
                            if pass {
                                out.push_str(&line);
                            }
                        }
                        Ok(bytes::Bytes::from(out))
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        Err(e)
                    }
                };
                if matches!(&out, Ok(b) if b.is_empty()) {
                    continue;
                }
                // A client that hung up stops the stream; its cost so far is still recorded.
                if tx.send(out).await.is_err() {
                    error.get_or_insert_with(|| "the client closed the stream".into());
                    break;
                }
            }
            let rest = events.rest();
            if !rest.is_empty() && error.is_none() {
                let _ = tx.send(Ok(bytes::Bytes::from(rest))).await;
            }
            let (tin, tout) = usage.unwrap_or(bounds);
            let outcome = CallOutcome {
                deployment: Some(deployment),
                status: if error.is_some() { "error" } else { "ok" }.into(),
                error: match (&error, usage) {
                    (Some(e), None) => Some(format!("{e}; no usage was reported, so the call is charged its bounds ({tin} tokens in, {tout} out)")),
                    (e, _) => e.clone(),
                },
                tokens_in: tin,
                tokens_out: tout,
                duration_us: started.elapsed().as_micros() as i64,
            };
            let spent = outcome
                .deployment
                .as_deref()
                .and_then(|d| budgets.cost(d, tin, tout))
                .unwrap_or(0);
            let at = clock.now_ms();
            calls
                .settle(CallEnd {
                    id: call.id.clone(),
                    audit: Some(call_audit(
                        &call,
                        Op::Chat,
                        (&who, trace_id),
                        &decision,
                        &outcome,
                        spent,
                        at,
                    )),
                    outcome,
                    spent,
                    rate_scopes: rate.scopes,
                    rate_window: rate.window,
                    at,
                })
                .await;
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed()
    }
}

/// The deployments a policy refused, each with why: for the error of a call left with none.
pub(crate) fn refused_deployments<'a>(
    refused: impl Iterator<Item = (&'a str, &'a Decision)>,
) -> String {
    refused
        .map(|(label, d)| {
            if d.policy_ids.is_empty() {
                format!("{label} (no policy permits it)")
            } else {
                format!("{label} (forbidden by {})", d.policy_ids.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Server-sent events split into whole lines (each with its `\n`), whatever the chunking.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
    /// The blank line after a dropped event is dropped too.
    skip_blank: bool,
}

impl SseLines {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }

    /// What is left after the last newline.
    fn rest(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// Sends the upstream the output limit the hold was sized for, when the client set none.
fn bound_output(body: &mut Value) {
    let set = ["max_completion_tokens", "max_tokens"]
        .iter()
        .any(|f| body.get(f).is_some_and(|v| !v.is_null()));
    if !set {
        body["max_completion_tokens"] = Value::from(DEFAULT_MAX_OUTPUT);
    }
}

/// Sends a passed-through request the output limit the hold was sized for. Messages
/// requests always carry theirs (`max_tokens` is required); a Responses request without
/// `max_output_tokens` gets the bound.
fn bound_native_output(native: &mut NativeRequest, limit: i64) {
    if native.api == NativeApi::Responses
        && native
            .body
            .get("max_output_tokens")
            .is_none_or(Value::is_null)
    {
        native.body["max_output_tokens"] = Value::from(limit);
    }
}

/// What a call asks: its chat completions form, and the request as sent in another API.
struct Asked {
    body: Value,
    native: Option<NativeRequest>,
}

/// An upstream's whole answer: in chat completions' form, or in a client API it speaks.
enum Answer {
    Chat(Value),
    Native(NativeApi, Value),
}

impl Answer {
    /// Whether the answer is a content-filter refusal (a route may fall back on one).
    fn refused(&self) -> bool {
        match self {
            Answer::Chat(v) => refused(v),
            Answer::Native(api, v) => steward_llm::native::refused(*api, v),
        }
    }
}

/// Asks a streaming upstream for its usage chunk.
fn ask_for_usage(body: &mut Value) {
    match body
        .get_mut("stream_options")
        .and_then(Value::as_object_mut)
    {
        Some(o) => {
            o.insert("include_usage".into(), Value::Bool(true));
        }
        None => body["stream_options"] = serde_json::json!({"include_usage": true}),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Chat,
    Embeddings,
}

/// The API a chat call came through (its `api` label in `/metrics`): all take the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayApi {
    ChatCompletions,
    Responses,
    Messages,
}

impl GatewayApi {
    pub fn name(self) -> &'static str {
        match self {
            GatewayApi::ChatCompletions => "chat_completions",
            GatewayApi::Responses => "responses",
            GatewayApi::Messages => "messages",
        }
    }
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Chat => "chat",
            Op::Embeddings => "embeddings",
        }
    }
}

/// An OpenAI-shaped answer that is a content-filter refusal.
fn refused(v: &Value) -> bool {
    v.pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
        == Some("content_filter")
}

/// The audit record of a finished gateway call.
fn call_audit(
    call: &NewCall,
    op: Op,
    (who, trace_id): (&Principal, Option<String>),
    decision: &Decision,
    outcome: &CallOutcome,
    spent: i64,
    at: i64,
) -> String {
    let action = match op {
        Op::Chat => "llm.call",
        Op::Embeddings => "llm.embeddings",
    };
    let resource = outcome.deployment.as_deref().unwrap_or(&call.model);
    let verdict = if decision.allow { "allow" } else { "deny" };
    steward_gov::AuditRecord {
        delegations: who.link_ids(),
        outcome: Some(outcome.status.clone()),
        error: outcome.error.clone(),
        tokens_in: outcome.tokens_in,
        tokens_out: outcome.tokens_out,
        cost_nanos: spent,
        trace_id,
        ..steward_gov::AuditRecord::new(
            steward_gov::AuditEvent::Syscall,
            at,
            format!("agent:{}", call.agent),
            who.chain.clone(),
            action,
            resource,
        )
        .in_run(call.run_id.clone(), Some(call.id.clone()))
        .decided(verdict, Some(decision))
    }
    .to_json()
}

fn upstream_error(e: steward_llm::Error) -> GatewayError {
    let status = match &e {
        steward_llm::Error::Status { status, .. } => Some(*status),
        _ => None,
    };
    let timeout = matches!(e, steward_llm::Error::Timeout { .. });
    let retry_after_s = e.retry_after().map(|d| d.as_secs().max(1));
    match e.failure() {
        Failure::ContextWindow => {
            return GatewayError::Refused {
                code: "context_length_exceeded",
                message: e.to_string(),
            }
        }
        Failure::ContentFilter => {
            return GatewayError::Refused {
                code: "content_filter",
                message: e.to_string(),
            }
        }
        _ => {}
    }
    match e {
        steward_llm::Error::Request(m) | steward_llm::Error::Unsupported(m) => {
            GatewayError::BadRequest(m)
        }
        other => GatewayError::Upstream {
            status,
            timeout,
            retry_after_s,
            message: other.to_string(),
        },
    }
}
