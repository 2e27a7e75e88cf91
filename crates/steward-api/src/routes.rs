//! Handlers under `/api/v1`, plus health.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use steward_engine::Engine;
use steward_store::RunFilter;
use steward_types::{ErrorCode, RunId, RunState};
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Raw, Text};
use crate::wire::*;

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// The engine's metrics, Prometheus text format: among them the time Steward adds to each call.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(e): State<Engine>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.metrics_text(),
    )
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(e): State<Engine>) -> ApiResult<Json<Health>> {
    e.ready().await?;
    Ok(Json(Health {
        status: "ready".into(),
        backend: e.store().backend().into(),
        node: e.node().to_string(),
        active_runs: e.active_runs(),
    }))
}

/// Applies agent manifests (YAML or JSON; several documents allowed). All or nothing.
#[utoipa::path(post, path = "/api/v1/agents", request_body(content = String, content_type = "application/yaml"),
    responses((status = 200, body = ApplyResult), (status = 400, body = ErrorBody)))]
pub async fn apply(State(e): State<Engine>, Text(body): Text) -> ApiResult<Json<ApplyResult>> {
    let (applied, supervisors) = e.apply_documents(&body).await?;
    Ok(Json(ApplyResult {
        supervisors,
        agents: applied
            .into_iter()
            .map(|a| AppliedAgent {
                name: a.agent.name,
                version: a.agent.version,
                changed: a.changed,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = AgentList)))]
pub async fn list_agents(State(e): State<Engine>) -> ApiResult<Json<AgentList>> {
    Ok(Json(AgentList {
        agents: e
            .list_agents()
            .await?
            .into_iter()
            .map(Agent::from)
            .collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    pub version: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/agents/{name}", params(("name" = String, Path), AgentQuery),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(e.get_agent(&name, q.version).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/runs", request_body = CreateRun,
    responses((status = 201, body = Run), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create_run(
    State(e): State<Engine>,
    ApiJson(req): ApiJson<CreateRun>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = e.create_run(&req.agent, &req.input).await?;
    Ok((StatusCode::CREATED, Json(run.into())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    pub state: Option<String>,
    pub agent: Option<String>,
    pub parent: Option<String>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/runs", params(RunQuery), responses((status = 200, body = RunList)))]
pub async fn list_runs(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> ApiResult<Json<RunList>> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidRequest, format!("state: {s:?} is not one of queued, running, waiting, succeeded, failed, cancelled"))
        })?),
    };
    let parent = match q.parent.as_deref() {
        None => None,
        Some(p) => Some(RunId::parse(p).map_err(|e| ApiError::new(ErrorCode::InvalidId, e.0))?),
    };
    let filter = RunFilter {
        state,
        agent: q.agent,
        parent,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(RunList {
        runs: e
            .list_runs(&filter)
            .await?
            .into_iter()
            .map(Run::from)
            .collect(),
    }))
}

pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    RunId::parse(id)
        .map(|_| ())
        .map_err(|e| ApiError::new(ErrorCode::InvalidId, e.0))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_run(State(e): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    check_id(&id)?;
    Ok(Json(e.get_run(&id).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    /// Only entries with a larger `seq`.
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/journal", params(("id" = String, Path), JournalQuery),
    responses((status = 200, body = Journal), (status = 404, body = ErrorBody)))]
pub async fn journal(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> ApiResult<Json<Journal>> {
    check_id(&id)?;
    // Read the state first: a client that sees a terminal state knows the entries are complete.
    let run = e.get_run(&id).await?;
    let entries = e.journal(&id, q.after, q.limit.unwrap_or(1000)).await?;
    Ok(Json(Journal {
        run_id: run.id.to_string(),
        state: run.state.to_string(),
        entries: entries.into_iter().map(JournalItem::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", params(("id" = String, Path)), request_body = CancelRun,
    responses((status = 200, body = Run), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_run(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CancelRun>,
) -> ApiResult<Json<Run>> {
    check_id(&id)?;
    Ok(Json(e.cancel(&id, &req.reason).await?.into()))
}

/// Answers a run waiting for a human after an in-doubt step: retry the step or fail the run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/resolve", params(("id" = String, Path)), request_body = ResolveRun,
    responses((status = 200, body = Run), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resolve_run(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRun>,
) -> ApiResult<Json<Run>> {
    check_id(&id)?;
    Ok(Json(
        e.resolve(&id, matches!(req.action, ResolveAction::Retry))
            .await?
            .into(),
    ))
}

/// Issues an API key for the `/v1` gateway. The secret is in this response only.
#[utoipa::path(post, path = "/api/v1/keys", request_body = CreateKey,
    responses((status = 201, body = ApiKey), (status = 400, body = ErrorBody)))]
pub async fn create_key(
    State(e): State<Engine>,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    let (rec, key) = e.keys().create(&req.agent, req.ttl_s).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKey {
            id: rec.id,
            agent: rec.agent,
            key,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    pub agent: Option<String>,
}

/// API keys, newest first, without their secrets.
#[utoipa::path(get, path = "/api/v1/keys", params(KeyQuery), responses((status = 200, body = KeyList)))]
pub async fn list_keys(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<Json<KeyList>> {
    Ok(Json(KeyList {
        keys: e
            .keys()
            .list(q.agent.as_deref())
            .await?
            .into_iter()
            .map(KeyInfo::from)
            .collect(),
    }))
}

/// Revokes a key, with the reason; calls with it are refused from now on.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = KeyInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_key(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(e.keys().revoke(&id, &r.reason).await?.into()))
}

/// Replaces a key: a new one for the same agent (shown once) and the old one revoked.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", params(("id" = String, Path)),
    responses((status = 201, body = ApiKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The key is revoked already")))]
pub async fn rotate_key(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    let (rec, key) = e.keys().rotate(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKey {
            id: rec.id,
            agent: rec.agent,
            key,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
        }),
    ))
}

async fn set_identity(
    e: &Engine,
    name: &str,
    status: &str,
    r: Reason,
) -> ApiResult<Json<Identity>> {
    Ok(Json(
        e.identities()
            .set(name, status, r.owner.as_deref(), &r.reason)
            .await?
            .into(),
    ))
}

/// Suspends an agent: its runs' steps and its `/v1` calls are refused until resumed.
#[utoipa::path(post, path = "/api/v1/agents/{name}/suspend", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn suspend_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "suspended", r).await
}

/// Lets a suspended agent act again (and records its owner, when given).
#[utoipa::path(post, path = "/api/v1/agents/{name}/resume", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn resume_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "active", r).await
}

/// Revokes an agent for good: nothing it does is allowed again.
#[utoipa::path(post, path = "/api/v1/agents/{name}/revoke", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn revoke_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "revoked", r).await
}

/// Deletes an agent's identity for good: every key it has is revoked, nothing it does is allowed
/// again, and the identity stays on record with the reason.
#[utoipa::path(post, path = "/api/v1/agents/{name}/delete", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn delete_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "deleted", r).await
}

/// An agent's identity (active, with no owner recorded, until changed).
#[utoipa::path(get, path = "/api/v1/agents/{name}/identity", params(("name" = String, Path)),
    responses((status = 200, body = Identity)))]
pub async fn get_identity(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<Identity>> {
    Ok(Json(match e.identities().get(&name).await? {
        Some(i) => i.into(),
        None => Identity {
            agent: name,
            owner: None,
            status: "active".into(),
            reason: None,
            updated_at: None,
        },
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    pub agent: Option<String>,
    pub limit: Option<i64>,
}

/// Gateway calls, most recent first.
#[utoipa::path(get, path = "/api/v1/calls", params(CallQuery), responses((status = 200, body = CallList)))]
pub async fn list_calls(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<CallQuery>,
) -> ApiResult<Json<CallList>> {
    let calls = e
        .budgets()
        .calls(q.agent.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(CallList {
        calls: calls.into_iter().map(Call::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CostQuery {
    /// agent (default), model, run or day.
    pub by: Option<String>,
    /// Only usage from the last this many days (default 30).
    pub days: Option<i64>,
}

/// Model spend of managed runs and gateway calls, priced and grouped.
#[utoipa::path(get, path = "/api/v1/costs", params(CostQuery),
    responses((status = 200, body = CostReport), (status = 400, body = ErrorBody)))]
pub async fn costs(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> ApiResult<Json<CostReport>> {
    let by = q.by.unwrap_or_else(|| "agent".into());
    let days = q.days.unwrap_or(30);
    if !(1..=36_500).contains(&days) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "days: between 1 and 36500",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let since = now - days * 86_400_000;
    let (lines, outcomes) = e.budgets().costs(&by, since).await?;
    let lines: Vec<CostLine> = lines.into_iter().map(CostLine::from).collect();
    let total_usd = lines.iter().map(|l| l.cost_usd).sum();
    Ok(Json(CostReport {
        by,
        since,
        lines,
        total_usd,
        outcomes: outcomes.into(),
    }))
}

/// Creates or changes a budget account (`org`, `team:x`, `agent:NAME`, `run:RUN_ID`, …).
#[utoipa::path(put, path = "/api/v1/budgets/{account}", params(("account" = String, Path)), request_body = PutBudget,
    responses((status = 200, body = Budget), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_budget(
    State(e): State<Engine>,
    Path(account): Path<String>,
    ApiJson(req): ApiJson<PutBudget>,
) -> ApiResult<Json<Budget>> {
    let period = req.period.unwrap_or_else(|| "total".into());
    Ok(Json(
        e.budgets()
            .put(&account, req.parent.as_deref(), req.cap_usd, &period)
            .await?
            .into(),
    ))
}

#[utoipa::path(get, path = "/api/v1/budgets", responses((status = 200, body = BudgetList)))]
pub async fn list_budgets(State(e): State<Engine>) -> ApiResult<Json<BudgetList>> {
    Ok(Json(BudgetList {
        budgets: e
            .budgets()
            .list()
            .await?
            .into_iter()
            .map(Budget::from)
            .collect(),
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /openapi.json")
}

/// The circuits open on this node: deployments skipped until their cooldown ends.
#[utoipa::path(get, path = "/api/v1/circuits", responses((status = 200, body = CircuitList)))]
pub async fn list_circuits(State(e): State<Engine>) -> Json<CircuitList> {
    Json(CircuitList {
        circuits: e
            .open_circuits()
            .into_iter()
            .map(|(deployment, open_for_ms)| OpenCircuit {
                deployment,
                open_for_ms,
            })
            .collect(),
    })
}

/// Verifies the audit log: every record against its hash, the numbering, and the rebuilt tree
/// against every signed checkpoint. Problems name the records concerned.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, body = AuditReport)))]
pub async fn verify_audit(State(e): State<Engine>) -> ApiResult<Json<AuditReport>> {
    Ok(Json(e.audit().verify().await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// Only records from this time on (Unix milliseconds; default: all).
    pub since: Option<i64>,
}

/// Audit evidence: one JSON object per line — the record, its leaf hash, and its inclusion
/// proof against the latest signed checkpoint.
#[utoipa::path(get, path = "/api/v1/audit/export", params(AuditExportQuery),
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson")))]
pub async fn export_audit(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<AuditExportQuery>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let mut lines = e.audit().export(q.since.unwrap_or(0)).await?.join("\n");
    if !lines.is_empty() {
        lines.push('\n');
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        lines,
    ))
}

/// The Cedar policies in force.
#[utoipa::path(get, path = "/api/v1/policies", responses((status = 200, body = PolicySet)))]
pub async fn get_policies(State(e): State<Engine>) -> ApiResult<Json<PolicySet>> {
    let (version, hash, text) = e.policies().active().await?;
    Ok(Json(PolicySet {
        version,
        hash,
        text,
    }))
}

/// Replaces the policy set: the body is Cedar policy text. It is validated against the
/// schema first; a set that does not parse or validate is refused with Cedar's diagnostics and
/// the active set stays in force.
#[utoipa::path(put, path = "/api/v1/policies", request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = PolicySet), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody, description = "The policies in force do not let administrators update them")))]
pub async fn put_policies(
    State(e): State<Engine>,
    crate::extract::Text(body): crate::extract::Text,
) -> ApiResult<Json<PolicySet>> {
    if body.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body is the Cedar policy text, and it is empty: an empty set would deny every agent everything; send the policies (a bare `forbid (principal is Steward::Agent, action, resource);` if that is what you mean)",
        ));
    }
    let rec = e.policies().put(&body).await?;
    Ok(Json(PolicySet {
        version: rec.version,
        hash: rec.hash,
        text: rec.text,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// pending, approved, denied or expired.
    pub state: Option<String>,
    pub limit: Option<i64>,
}

/// Approvals policies asked for (`@approval("group")` on a permit).
#[utoipa::path(get, path = "/api/v1/approvals", params(ApprovalQuery),
    responses((status = 200, body = ApprovalList), (status = 400, body = ErrorBody)))]
pub async fn list_approvals(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> ApiResult<Json<ApprovalList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(ApprovalList {
        approvals: e
            .approvals()
            .list(q.state.as_deref(), limit)
            .await?
            .into_iter()
            .map(Approval::from)
            .collect(),
    }))
}

/// Approves a pending approval: the waiting run resumes and its step acts.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", params(("id" = String, Path)),
    request_body = ApprovalDecision,
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<Approval>> {
    let by = d.by.unwrap_or_else(|| "api".into());
    Ok(Json(
        e.approvals()
            .decide(&id, true, &d.reason, &by)
            .await?
            .into(),
    ))
}

/// Denies a pending approval: the waiting run resumes and its step is denied.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", params(("id" = String, Path)),
    request_body = ApprovalDecision,
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deny(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<Approval>> {
    let by = d.by.unwrap_or_else(|| "api".into());
    Ok(Json(
        e.approvals()
            .decide(&id, false, &d.reason, &by)
            .await?
            .into(),
    ))
}

/// Seals a credential in the vault (for providers' `api_key_secret` and tools'
/// `{{secret:NAME}}`). The value is never returned, logged or shown to a model.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", params(("name" = String, Path)),
    request_body = PutSecret,
    responses((status = 200, body = Secret), (status = 400, body = ErrorBody)))]
pub async fn put_secret(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PutSecret>,
) -> ApiResult<Json<Secret>> {
    let updated_at = e.secrets().put(&name, &b.value).await?;
    Ok(Json(Secret { name, updated_at }))
}

/// The vault's secret names.
#[utoipa::path(get, path = "/api/v1/secrets", responses((status = 200, body = SecretList)))]
pub async fn list_secrets(State(e): State<Engine>) -> ApiResult<Json<SecretList>> {
    Ok(Json(SecretList {
        secrets: e
            .secrets()
            .names()
            .await?
            .into_iter()
            .map(|(name, updated_at)| Secret { name, updated_at })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_secret(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.secrets().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delegation links, newest first (never their tokens).
#[utoipa::path(get, path = "/api/v1/delegations", responses((status = 200, body = DelegationList)))]
pub async fn list_delegations(State(e): State<Engine>) -> ApiResult<Json<DelegationList>> {
    Ok(Json(DelegationList {
        delegations: e
            .delegations()
            .list(1000)
            .await?
            .into_iter()
            .map(Delegation::from)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/delegations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Delegation), (status = 404, body = ErrorBody)))]
pub async fn get_delegation(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<Delegation>> {
    Ok(Json(e.delegations().get(&id).await?.into()))
}

/// Revokes a delegation link, with the reason, and with it every link below: their tokens are
/// refused from now on.
#[utoipa::path(post, path = "/api/v1/delegations/{id}/revoke", params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = Revoked), (status = 404, body = ErrorBody)))]
pub async fn revoke_delegation(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Revoked>> {
    Ok(Json(Revoked {
        revoked: e.delegations().revoke(&id, &r.reason).await?,
    }))
}

/// Creates persistent sandboxes: one empty, or `count` forks of a snapshot (no copy).
#[utoipa::path(post, path = "/api/v1/sandboxes", request_body = CreateSandboxes,
    responses((status = 201, body = SandboxIds), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_sandboxes(
    State(e): State<Engine>,
    ApiJson(r): ApiJson<CreateSandboxes>,
) -> ApiResult<(StatusCode, Json<SandboxIds>)> {
    if r.ttl_s.is_some_and(|t| !(1..=366 * 86_400).contains(&t)) {
        return Err(crate::error::ApiError::new(
            steward_types::ErrorCode::InvalidRequest,
            "ttl_s: from 1 second to a year",
        ));
    }
    let (ids, snapshot) = e
        .sandboxes()
        .create(
            r.from_snapshot.as_deref(),
            r.template.as_deref(),
            r.count.unwrap_or(1),
            r.ttl_s.map(|t| t * 1000),
            &r.egress,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SandboxIds {
            sandboxes: ids,
            snapshot,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/sandboxes", responses((status = 200, body = SandboxList)))]
pub async fn list_sandboxes(State(e): State<Engine>) -> ApiResult<Json<SandboxList>> {
    Ok(Json(SandboxList {
        sandboxes: e
            .sandboxes()
            .list()
            .await?
            .into_iter()
            .map(|s| SandboxInfo {
                id: s.id,
                layers: s.layers,
                state: s.state.into(),
            })
            .collect(),
    }))
}

/// Runs a command in a persistent sandbox: a fresh isolated process tree on its workspace.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/exec", params(("id" = String, Path)), request_body = SandboxExec,
    responses((status = 200, body = SandboxExecResult), (status = 404, body = ErrorBody)))]
pub async fn sandbox_exec(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<SandboxExec>,
) -> ApiResult<Json<SandboxExecResult>> {
    let stdin = r.stdin.clone().unwrap_or_default();
    Ok(Json(
        e.sandboxes()
            .exec(&id, &command(r)?, stdin.as_bytes(), None)
            .await?
            .into(),
    ))
}

/// What an exec request asks to run: `command`, or `code` in `language`.
fn command(r: SandboxExec) -> ApiResult<steward_engine::sandboxes::Command> {
    use steward_engine::sandboxes::Command;
    match (r.command, r.code, r.language) {
        (Some(c), None, None) => Ok(Command::Shell(c)),
        (None, Some(code), Some(language)) => Ok(Command::Code { language, code }),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give `command`, or `code` and `language`",
        )),
    }
}

/// The same, with stdout and stderr streamed as they come: Server-Sent Events `stdout` and
/// `stderr` (text), then `end` (the result, output included) or `error`.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/exec/stream", params(("id" = String, Path)), request_body = SandboxExec,
    responses((status = 200, description = "text/event-stream of `stdout`, `stderr` and a final `end` (SandboxExecResult) or `error`")))]
pub async fn sandbox_exec_stream(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<SandboxExec>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stdin = r.stdin.clone().unwrap_or_default();
    let command = command(r)?;
    let done = tokio::spawn(async move {
        e.sandboxes()
            .exec(&id, &command, stdin.as_bytes(), Some(tx))
            .await
            .map_err(|e| e.to_string())
    });
    let live = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        let event = match chunk {
            steward_sandbox::Output::Stdout(b) => Event::default()
                .event("stdout")
                .data(String::from_utf8_lossy(&b)),
            steward_sandbox::Output::Stderr(b) => Event::default()
                .event("stderr")
                .data(String::from_utf8_lossy(&b)),
        };
        Some((Ok(event), rx))
    });
    let end = futures::stream::once(async move {
        let event = match done.await {
            Ok(Ok(result)) => Event::default()
                .event("end")
                .json_data(SandboxExecResult::from(result))
                .unwrap_or_else(|_| Event::default().event("end")),
            Ok(Err(err)) => Event::default().event("error").data(err),
            Err(err) => Event::default().event("error").data(err.to_string()),
        };
        Ok(event)
    });
    Ok(Sse::new(live.chain(end)).keep_alive(KeepAlive::default()))
}

/// Ends what a sandbox is running: its whole process tree is killed and the exec reports
/// `cancelled`.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/cancel", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Cancel)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a sandbox: what it runs is frozen (its time limit stops counting) and nothing new
/// starts until it is resumed.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/pause", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn pause_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Pause)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn resume_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Resume)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The processes of what a sandbox is running (none when idle).
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/processes", params(("id" = String, Path)),
    responses((status = 200, body = SandboxProcesses), (status = 404, body = ErrorBody)))]
pub async fn sandbox_processes(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxProcesses>> {
    Ok(Json(SandboxProcesses {
        processes: e
            .sandboxes()
            .processes(&id)
            .await?
            .into_iter()
            .map(|p| SandboxProcess {
                pid: p.pid,
                ppid: p.ppid,
                state: p.state,
                command: p.command,
            })
            .collect(),
    }))
}

/// Signals one process of a sandbox (its pid as the sandbox numbers it).
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/processes/{pid}/kill",
    params(("id" = String, Path), ("pid" = i32, Path)), request_body = KillProcess,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn kill_sandbox_process(
    State(e): State<Engine>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(r): ApiJson<KillProcess>,
) -> ApiResult<StatusCode> {
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("pid {pid:?}: a process id, a whole number from 1 to 2147483647"),
        )
    })?;
    e.sandboxes().kill(&id, pid, r.signal.unwrap_or(15)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn file_path(q: FilePath) -> ApiResult<String> {
    q.path
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "query: `path` is required"))
}

/// Writes the request body to a file in a sandbox's workspace (directories made as needed).
#[utoipa::path(put, path = "/api/v1/sandboxes/{id}/files", params(("id" = String, Path), FilePath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_file(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
    Raw(body): Raw,
) -> ApiResult<StatusCode> {
    e.sandboxes().upload(&id, &file_path(q)?, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file of a sandbox's workspace, as bytes.
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/files", params(("id" = String, Path), FilePath),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ErrorBody)))]
pub async fn download_file(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let bytes = e.sandboxes().download(&id, &file_path(q)?).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    ))
}

/// What a directory of a sandbox's workspace holds (`path` defaults to the workspace).
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/files/list", params(("id" = String, Path), FilePath),
    responses((status = 200, body = FileList), (status = 400, body = ErrorBody)))]
pub async fn list_files(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
) -> ApiResult<Json<FileList>> {
    let path = q.path.unwrap_or_else(|| "/workspace".into());
    let entries = e.sandboxes().files(&id, &path).await?;
    Ok(Json(FileList {
        path,
        entries: entries
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                kind: f.kind.into(),
                size: f.size,
                modified_ms: f.modified_ms,
            })
            .collect(),
    }))
}

/// Freezes a sandbox's workspace into a content-addressed snapshot.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/snapshot", params(("id" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn snapshot_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<Snapshot>> {
    Ok(Json(Snapshot {
        snapshot: e.sandboxes().snapshot(&id).await?,
    }))
}

/// Puts a sandbox back on a snapshot, discarding what it wrote since.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/restore", params(("id" = String, Path)), request_body = RestoreSandbox,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn restore_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<RestoreSandbox>,
) -> ApiResult<StatusCode> {
    e.sandboxes().restore(&id, &r.snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes().remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
