//! The API's JSON shapes — the only `Serialize` types the outside world sees. Domain records
//! are converted here, at the boundary.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_store::{AgentRecord, JournalEntry, RunRecord, PHASE_INTENT};
use utoipa::ToSchema;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub name: String,
    pub version: i64,
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl From<AgentRecord> for Agent {
    fn from(a: AgentRecord) -> Self {
        Agent {
            spec: serde_json::from_str(&a.spec).unwrap_or(Value::Null),
            name: a.name,
            version: a.version,
            created_at: a.created_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AppliedAgent {
    pub name: String,
    pub version: i64,
    /// False when the applied spec equals the current version.
    pub changed: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApplyResult {
    pub agents: Vec<AppliedAgent>,
    /// Supervisors applied (`kind: Supervisor` documents).
    #[serde(default)]
    pub supervisors: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The agent's `metadata.name`; the run uses its latest version.
    pub agent: String,
    pub input: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RunError {
    /// Stable: divergence, in_doubt, max_steps_exceeded, run_timeout, step_timeout, model_error,
    /// child_failed, cancelled, internal.
    pub code: String,
    pub message: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub agent: String,
    pub agent_version: i64,
    pub parent_id: Option<String>,
    pub input: String,
    /// queued, running, waiting, succeeded, failed, cancelled.
    pub state: String,
    /// With `waiting`: `child` (a child run) or `human` (someone must resolve the run).
    pub wait_kind: Option<String>,
    pub result: Option<String>,
    pub error: Option<RunError>,
    pub cancel_reason: Option<String>,
    /// The node driving the run now, if any.
    pub lease_owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Where the run was forked from, when it is a fork (given by `GET /api/v1/runs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<Fork>,
}

/// How a fork departs from its source: the source's steps before `at` are replayed in it, and
/// from step `at` on its model sees the edits given (absent: as the source had it).
#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct Fork {
    pub source: String,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl From<steward_store::RunFork> for Fork {
    fn from(f: steward_store::RunFork) -> Self {
        Fork {
            source: f.source.to_string(),
            at: f.at,
            input: f.input,
            system_prompt: f.system_prompt,
            model: f.model,
        }
    }
}

/// `POST /api/v1/runs/{id}/fork`: a new run from this run's journal up to step `at`, with
/// what its model sees from that step on edited.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRun {
    /// The step the fork departs at (a journal `seq`): the steps before it are the source's,
    /// replayed without being made or paid for again; from it on the fork runs live.
    #[schema(minimum = 0)]
    pub at: i64,
    /// The user's message in place of the run's input.
    pub input: Option<String>,
    /// The system prompt in place of the agent's (empty: none).
    pub system_prompt: Option<String>,
    /// The model (an alias or `provider/model`) in place of the agent's.
    pub model: Option<String>,
}

impl From<RunRecord> for Run {
    fn from(r: RunRecord) -> Self {
        let error = r.error_code.map(|code| RunError {
            code,
            message: r.error_message.unwrap_or_default(),
        });
        Run {
            id: r.id.to_string(),
            agent: r.agent,
            agent_version: r.agent_version,
            parent_id: r.parent_id.map(|p| p.to_string()),
            input: r.input,
            state: r.state.to_string(),
            wait_kind: r.wait_kind,
            result: r.result,
            error,
            cancel_reason: r.cancel_reason,
            lease_owner: r.lease_owner,
            created_at: r.created_at,
            updated_at: r.updated_at,
            fork: None,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct JournalItem {
    pub seq: i64,
    /// `intent` (recorded before acting) or `outcome` (after).
    pub phase: String,
    /// `model` or `tool`.
    pub kind: String,
    /// The model or tool name.
    pub name: String,
    pub idempotency_key: String,
    #[schema(value_type = Object)]
    pub body: Value,
    pub ok: bool,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub at: i64,
    /// How long the action itself took (outcomes only).
    pub duration_us: i64,
}

impl From<JournalEntry> for JournalItem {
    fn from(e: JournalEntry) -> Self {
        JournalItem {
            seq: e.seq,
            phase: if e.phase == PHASE_INTENT {
                "intent"
            } else {
                "outcome"
            }
            .to_string(),
            kind: e.kind,
            name: e.name,
            idempotency_key: e.idempotency_key,
            body: serde_json::from_str(&e.body).unwrap_or(Value::Null),
            ok: e.ok == 1,
            tokens_in: e.tokens_in,
            tokens_out: e.tokens_out,
            at: e.at,
            duration_us: e.duration_us,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Journal {
    pub run_id: String,
    pub state: String,
    pub entries: Vec<JournalItem>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    #[schema(pattern = r"\S")]
    pub reason: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolveAction {
    Retry,
    Fail,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRun {
    pub action: ResolveAction,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub backend: String,
    pub node: String,
    pub active_runs: usize,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The agent the key identifies (an external agent needs no manifest).
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub agent: String,
    /// A short-lived key: it stops working after this many seconds.
    #[serde(default)]
    pub ttl_s: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub agent: String,
    /// The secret, shown this once; only its hash is stored.
    pub key: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// A key as listed: never its secret.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub agent: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl From<steward_store::ApiKeyRecord> for KeyInfo {
    fn from(k: steward_store::ApiKeyRecord) -> Self {
        KeyInfo {
            id: k.id,
            agent: k.agent,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revoke_reason: k.revoke_reason,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// Why: every lifecycle change is audited with its reason.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[schema(pattern = r"\S")]
    pub reason: String,
    /// With suspend/resume: record the identity's owner (a human or a team).
    #[serde(default)]
    pub owner: Option<String>,
}

/// An agent's identity: its owner and whether it may act.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Identity {
    pub agent: String,
    pub owner: Option<String>,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub reason: Option<String>,
    pub updated_at: Option<i64>,
}

impl From<steward_store::IdentityRecord> for Identity {
    fn from(i: steward_store::IdentityRecord) -> Self {
        Identity {
            agent: i.agent,
            owner: i.owner,
            status: i.status,
            reason: i.reason,
            updated_at: Some(i.updated_at),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Call {
    pub id: String,
    pub agent: String,
    pub run_id: Option<String>,
    /// The model name asked for (an alias or provider/model).
    pub model: String,
    /// The deployment that answered.
    pub deployment: Option<String>,
    /// started, ok or error.
    pub status: String,
    pub error: Option<String>,
    pub stream: bool,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub started_at: i64,
    pub duration_us: i64,
}

impl From<steward_store::CallRecord> for Call {
    fn from(c: steward_store::CallRecord) -> Self {
        Call {
            id: c.id,
            agent: c.agent,
            run_id: c.run_id,
            model: c.model,
            deployment: c.deployment,
            status: c.status,
            error: c.error,
            stream: c.stream == 1,
            tokens_in: c.tokens_in,
            tokens_out: c.tokens_out,
            started_at: c.started_at,
            duration_us: c.duration_us,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<Call>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CostLine {
    /// The agent, model, run id, task id, tool, outcome, day (YYYY-MM-DD) or hour (YYYY-MM-DD HH:00, UTC), per the report's
    /// `by`.
    pub key: String,
    /// Model calls (tool calls, by tool).
    pub calls: i64,
    /// Managed runs' tool calls.
    #[serde(default)]
    pub tool_calls: i64,
    /// By run or by task: how it ended (or its state now).
    #[serde(default)]
    pub outcome: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// US dollars at the price table's prices.
    pub cost_usd: f64,
    /// Calls whose model has no price; add one under [llm.prices].
    pub unpriced_calls: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CostReport {
    pub by: String,
    /// Start of the period, milliseconds since the Unix epoch.
    pub since: i64,
    pub lines: Vec<CostLine>,
    pub total_usd: f64,
    /// What outcomes cost over the period.
    pub outcomes: OutcomeCosts,
}

/// All spend on runs over the runs that succeeded; all spend on tasks' runs (failed attempts
/// included) over the tasks done. Null without a success.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct OutcomeCosts {
    pub runs: i64,
    pub successful_runs: i64,
    pub cost_per_successful_run_usd: Option<f64>,
    pub tasks: i64,
    pub successful_tasks: i64,
    pub cost_per_successful_task_usd: Option<f64>,
}

impl From<steward_engine::OutcomeCosts> for OutcomeCosts {
    fn from(o: steward_engine::OutcomeCosts) -> Self {
        OutcomeCosts {
            runs: o.runs,
            successful_runs: o.successful_runs,
            cost_per_successful_run_usd: o.cost_per_successful_run_usd,
            tasks: o.tasks,
            successful_tasks: o.successful_tasks,
            cost_per_successful_task_usd: o.cost_per_successful_task_usd,
        }
    }
}

impl From<steward_engine::CostLine> for CostLine {
    fn from(l: steward_engine::CostLine) -> Self {
        CostLine {
            key: l.key,
            calls: l.calls,
            tool_calls: l.tool_calls,
            outcome: l.outcome,
            tokens_in: l.tokens_in,
            tokens_out: l.tokens_out,
            cost_usd: l.cost_usd,
            unpriced_calls: l.unpriced_calls,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBudget {
    /// The account above this one; holds and spend count against it too.
    pub parent: Option<String>,
    pub cap_usd: f64,
    /// `total` (default) or `day` (resets at 00:00 UTC).
    #[schema(pattern = r"^(total|day|month)$")]
    pub period: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Budget {
    pub account: String,
    pub parent: Option<String>,
    pub cap_usd: f64,
    pub period: String,
    pub spent_usd: f64,
    /// Held for calls in flight.
    pub reserved_usd: f64,
    /// Exact amounts, in nano-dollars.
    pub cap_nanos: i64,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
}

impl From<steward_store::BudgetRecord> for Budget {
    fn from(b: steward_store::BudgetRecord) -> Self {
        Budget {
            account: b.account,
            parent: b.parent,
            cap_usd: b.cap_nanos as f64 / 1e9,
            period: b.period,
            spent_usd: b.spent_nanos as f64 / 1e9,
            reserved_usd: b.reserved_nanos as f64 / 1e9,
            cap_nanos: b.cap_nanos,
            spent_nanos: b.spent_nanos,
            reserved_nanos: b.reserved_nanos,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<Budget>,
}

/// A deployment this node skips because its circuit is open (opened here or by another node).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct OpenCircuit {
    pub deployment: String,
    /// How long until one probe call is let through.
    pub open_for_ms: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CircuitList {
    pub circuits: Vec<OpenCircuit>,
}

/// One thing verification found wrong, and the records it concerns.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditProblem {
    pub first_seq: i64,
    pub last_seq: i64,
    pub what: String,
}

/// The audit log checked as the database holds it now.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditReport {
    pub ok: bool,
    pub records: i64,
    /// Records whose body retention cleared (their hashes remain).
    pub pruned: i64,
    pub checkpoints: usize,
    /// The largest log size a valid signature covers.
    pub signed_size: i64,
    pub problems: Vec<AuditProblem>,
}

impl From<steward_gov::Report> for AuditReport {
    fn from(r: steward_gov::Report) -> Self {
        AuditReport {
            ok: r.ok(),
            records: r.records,
            pruned: r.pruned,
            checkpoints: r.checkpoints,
            signed_size: r.signed_size,
            problems: r
                .problems
                .into_iter()
                .map(|p| AuditProblem {
                    first_seq: p.first_seq,
                    last_seq: p.last_seq,
                    what: p.what,
                })
                .collect(),
        }
    }
}

/// The Cedar policy set in force.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PolicySet {
    /// 0 for the built-in default; then 1, 2, … as sets are put in force.
    pub version: i64,
    /// Hex SHA-256 of the text: what every decision records.
    pub hash: String,
    pub text: String,
}

/// An approval a policy asked for before a step may act.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub id: String,
    pub run_id: String,
    pub seq: i64,
    /// The group the policy names.
    pub approvers: String,
    pub action: String,
    pub resource: String,
    pub policy_ids: Vec<String>,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    pub reason: Option<String>,
    pub decided_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
}

impl From<steward_store::ApprovalRecord> for Approval {
    fn from(a: steward_store::ApprovalRecord) -> Self {
        Approval {
            policy_ids: serde_json::from_str(&a.policy_ids).unwrap_or_default(),
            id: a.id,
            run_id: a.run_id,
            seq: a.seq,
            approvers: a.approvers,
            action: a.action,
            resource: a.resource,
            state: a.state,
            reason: a.reason,
            decided_by: a.decided_by,
            created_at: a.created_at,
            expires_at: a.expires_at,
            decided_at: a.decided_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApprovalList {
    pub approvals: Vec<Approval>,
}

/// An approver's answer.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    /// Why: it goes into the audit log.
    #[schema(pattern = r"\S")]
    pub reason: String,
    /// Who decides (default: `api`).
    #[serde(default)]
    pub by: Option<String>,
}

/// A secret's value, to seal in the vault. It is never returned.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    pub value: String,
}

/// A secret as the API shows it: its name and when it was set, never its value.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Secret {
    pub name: String,
    pub updated_at: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

/// What a tool says of its effects (MCP's annotations): hints, never a substitute for policy.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ToolHints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

/// A tool of the registry.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of its arguments.
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    pub annotations: ToolHints,
    /// Where it comes from: `native` for the server's built-in tools.
    pub source: String,
    /// Whether MCP clients (callers outside a run) may be given it at `/mcp`.
    pub outside_runs: bool,
    /// JSON Schema of its structured result (an object), when it declares one.
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<serde_json::Value>,
    /// Steward's version for its own tools; an upstream server's, or an API document's.
    pub version: String,
    /// Who answers for it: `steward` for its own tools, else its definition's owner.
    pub owner: String,
}

/// `PUT /api/v1/mcp-servers/{name}`: a server spoken to over stdio (`command`) or Streamable
/// HTTP (`url`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMcpServer {
    /// A server spoken to over stdio: the program and its arguments. Give this or `url`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables the program gets (their values are never shown again; a value
    /// may name vault secrets as `{{secret:NAME}}`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// A server spoken to over Streamable HTTP: its endpoint (`http://` or `https://`).
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent with every request to `url`, e.g. `{"Authorization": "Bearer
    /// {{secret:GITHUB_TOKEN}}"}` (their values are never shown again).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// An OAuth 2 client every request to `url` is authorised with (`Authorization: Bearer`),
    /// its token obtained and refreshed by one node of the cluster at a time.
    #[serde(default)]
    pub oauth: Option<OAuthClientSpec>,
    /// Who answers for its tools (a team's or a person's name; the registry shows `admin`
    /// when none is given).
    #[serde(default)]
    pub owner: Option<String>,
}

/// How an upstream MCP server is doing on the node that answered.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct McpServerStatus {
    /// `starting`, `connected` or `restarting`.
    pub state: String,
    pub pid: Option<u32>,
    /// How many tools it offers.
    pub tools: usize,
    /// How many times it was started again.
    pub restarts: u32,
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct McpServer {
    pub name: String,
    pub transport: String,
    /// Its program and arguments (`stdio`).
    pub command: Vec<String>,
    /// The names of its environment variables.
    pub env: Vec<String>,
    /// Its endpoint (`http`).
    pub url: Option<String>,
    /// The names of the headers sent to it.
    pub headers: Vec<String>,
    /// The token endpoint of the OAuth 2 client its requests are authorised with (`http`).
    pub oauth_token_url: Option<String>,
    /// Who answers for its tools (empty: nobody named).
    pub owner: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// None until the answering node has started it.
    pub status: Option<McpServerStatus>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct McpServerList {
    pub servers: Vec<McpServer>,
}

/// `PUT /api/v1/openapi/{name}`: an HTTP API from its OpenAPI 3 document.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutOpenApi {
    /// The OpenAPI 3.0 or 3.1 document: a JSON object, or its text in JSON or YAML.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    /// Where the operations' paths are appended; the document's first server when left out.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Headers every call carries, e.g. `{"Authorization": "Bearer {{secret:API_TOKEN}}"}`
    /// (their values are never shown again, nor offered to callers as parameters).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Query parameters every call carries, e.g. `{"api_key": "{{secret:API_KEY}}"}`.
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, String>,
    /// An OAuth 2 client every call is authorised with (`Authorization: Bearer`), its token
    /// obtained and refreshed by one node of the cluster at a time.
    #[serde(default)]
    pub oauth: Option<OAuthClientSpec>,
    /// Who answers for its tools (a team's or a person's name; the registry shows `admin`
    /// when none is given).
    #[serde(default)]
    pub owner: Option<String>,
}

/// An OAuth 2 client: the client-credentials grant, or the refresh-token grant when
/// `refresh_token` is given.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientSpec {
    pub token_url: String,
    pub client_id: String,
    /// `{{secret:NAME}}`: the client's secret, from the vault.
    #[serde(default)]
    pub client_secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `{{secret:NAME}}`: the first refresh token, from the vault; those the server rotates in
    /// are kept sealed in the store.
    #[serde(default)]
    pub refresh_token: String,
}

impl From<OAuthClientSpec> for steward_tools::openapi::OAuthClient {
    fn from(c: OAuthClientSpec) -> Self {
        steward_tools::openapi::OAuthClient {
            token_url: c.token_url,
            client_id: c.client_id,
            client_secret: c.client_secret,
            scopes: c.scopes,
            refresh_token: c.refresh_token,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OpenApi {
    pub name: String,
    pub base_url: String,
    /// The names of the headers every call carries.
    pub headers: Vec<String>,
    /// The names of the query parameters every call carries.
    pub query: Vec<String>,
    /// Its OAuth client's token endpoint, when it has one.
    pub oauth_token_url: Option<String>,
    /// Who answers for its tools (empty: nobody named).
    pub owner: String,
    /// Its tools, on the node that answered.
    pub tools: Vec<String>,
    /// Operations that did not become tools, each with why.
    pub skipped: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OpenApiList {
    pub apis: Vec<OpenApi>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ToolList {
    pub tools: Vec<ToolInfo>,
}

/// `POST /v1/delegations`: a token for another agent, narrower than the caller's own
/// credential. Every list left out is inherited from the caller's credential.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegationRequest {
    /// The agent that will hold the token.
    pub to: String,
    /// Of `llm.call`, `tool.call`.
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Most the holder and everyone it delegates to may spend, in US dollars.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Lifetime in seconds (default one hour; never past the delegator's own expiry).
    #[serde(default)]
    pub ttl_s: Option<i64>,
}

/// What a delegation allows.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DelegationScope {
    pub actions: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub budget_usd: Option<f64>,
    pub expires_at: i64,
}

/// One link of a delegation chain; `token` only when it is minted.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Delegation {
    pub id: String,
    pub parent_id: Option<String>,
    pub issuer: String,
    pub holder: String,
    pub scope: DelegationScope,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    /// The bearer token, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<steward_store::DelegationRecord> for Delegation {
    fn from(d: steward_store::DelegationRecord) -> Self {
        let s: steward_gov::Scope = serde_json::from_str(&d.scope).unwrap_or_default();
        let list =
            |l: Option<std::collections::BTreeSet<String>>| l.map(|l| l.into_iter().collect());
        Delegation {
            id: d.id,
            parent_id: d.parent_id,
            issuer: d.issuer,
            holder: d.holder,
            scope: DelegationScope {
                actions: list(s.actions),
                models: list(s.models),
                tools: list(s.tools),
                budget_usd: s.budget_nanos.map(|n| n as f64 / 1e9),
                expires_at: s.expires_at,
            },
            created_at: d.created_at,
            expires_at: d.expires_at,
            revoked_at: d.revoked_at,
            revoke_reason: d.revoke_reason,
            token: None,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DelegationList {
    pub delegations: Vec<Delegation>,
}

/// The links a revocation cut off: the one named and every link below it still open.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub revoked: Vec<String>,
}

/// `POST /api/v1/sandboxes`: one empty persistent sandbox, or `count` forks of a snapshot.
#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxes {
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Setup commands run once in a fresh sandbox; the snapshot they leave is kept and reused
    /// by every later request with the same commands.
    #[serde(default)]
    pub template: Option<Vec<String>>,
    #[serde(default)]
    pub count: Option<usize>,
    /// Removed after this many seconds unused.
    #[serde(default)]
    pub ttl_s: Option<i64>,
    /// Where its commands may connect (`host:port`, `*.domain:port`, CIDR); none: nowhere.
    #[serde(default)]
    pub egress: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxIds {
    pub sandboxes: Vec<String>,
    /// The snapshot they start from, if any.
    pub snapshot: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    /// Read-only layers under its own writable one, top first (content addresses).
    pub layers: Vec<String>,
    /// `idle`, `running` (an exec is under way) or `paused`.
    pub state: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxExec {
    /// A `/bin/sh -c` command line, run in `/workspace`; or give `code` and `language`.
    #[serde(default)]
    pub command: Option<String>,
    /// A snippet for `language`'s interpreter on the host.
    #[serde(default)]
    pub code: Option<String>,
    /// `bash`, `sh`, `python3` or `node`.
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub stdin: Option<String>,
}

/// A running process of a sandbox, numbered as inside it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxProcess {
    pub pid: i32,
    pub ppid: i32,
    /// The kernel's letter: `R` running, `S` sleeping, `D` disk wait, `T` stopped, `Z` zombie.
    pub state: String,
    pub command: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxProcesses {
    pub processes: Vec<SandboxProcess>,
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct KillProcess {
    /// Signal number; 15 (SIGTERM) unless given.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// `?path=`: a path in the workspace (relative, or absolute under `/workspace`).
#[derive(Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilePath {
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `link` or `other`.
    pub kind: String,
    pub size: u64,
    pub modified_ms: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// How an exec ended: `ended` is `exit`, `signal`, `timeout`, `oom_killed`, `disk_quota` or
/// `cancelled`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SandboxExecResult {
    pub ended: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    pub wall_ms: u64,
}

impl From<steward_sandbox::ExecResult> for SandboxExecResult {
    fn from(r: steward_sandbox::ExecResult) -> Self {
        let (ended, exit_code, signal) = r.ended.parts();
        SandboxExecResult {
            ended: ended.into(),
            exit_code,
            signal,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            truncated: r.truncated,
            cpu_ms: r.cpu.as_millis() as u64,
            peak_memory_bytes: r.peak_memory_bytes,
            wall_ms: r.wall.as_millis() as u64,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub snapshot: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSandbox {
    pub snapshot: String,
}

/// `PUT /api/v1/queues/{name}`: a queue's settings (absent: the default).
#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Tasks leased at once, all workers together; absent: no limit.
    #[serde(default)]
    pub max_in_flight: Option<i64>,
    /// Tasks leased at once by one worker (or one agent's runs); absent: no limit.
    #[serde(default)]
    pub per_worker: Option<i64>,
    /// Leases a task gets before it is dead-lettered (default 3).
    #[serde(default)]
    pub max_attempts: Option<i64>,
    /// Backoff before the n-th retry: this × 2^(n-1), with jitter (default 1000).
    #[serde(default)]
    pub retry_base_ms: Option<i64>,
    /// How long a lease lasts without a heartbeat (default 30000).
    #[serde(default)]
    pub lease_ms: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    pub name: String,
    pub max_in_flight: Option<i64>,
    pub per_worker: Option<i64>,
    pub max_attempts: i64,
    pub retry_base_ms: i64,
    pub lease_ms: i64,
    /// Tasks per state: `pending`, `leased`, `done`, `dead`.
    pub depth: std::collections::BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// `POST /api/v1/queues/{name}/tasks`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueTask {
    /// Any JSON; a managed agent's run gets it (as JSON text) as its input.
    pub payload: Value,
    /// Who the task is for: leasing interleaves tenants (default `default`).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,64}$")]
    pub tenant: Option<String>,
    /// Higher first, from -1000 to 1000 (default 0).
    #[serde(default)]
    pub priority: Option<i64>,
    /// A task with a key the queue holds already is not enqueued again: that task is returned.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Not leased before this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<i64>,
    /// Dead-lettered if no worker took it within this many milliseconds.
    #[serde(default)]
    pub deadline_ms: Option<i64>,
}

/// `POST /api/v1/queues/{name}/lease`: an external worker asking for work.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseTasks {
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,64}$")]
    pub worker: String,
    /// At most this many tasks (default 1, up to 1000).
    #[serde(default)]
    pub max: Option<i64>,
    /// Wait up to this long for a task when none is ready (default 0, up to 25000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A worker's word on a task it leased: `attempt` is the task's `attempts` when leased.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,64}$")]
    pub worker: String,
    pub attempt: i64,
    /// complete: the task's result (any JSON).
    #[serde(default)]
    pub result: Option<Value>,
    /// fail: what went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// fail: try again after a backoff while attempts remain (default true); false: dead-letter.
    #[serde(default)]
    pub retry: Option<bool>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub tenant: String,
    pub priority: i64,
    pub payload: Value,
    pub dedup_key: Option<String>,
    /// `pending`, `leased`, `done` or `dead`.
    pub state: String,
    pub run_at: i64,
    pub deadline: Option<i64>,
    /// Leases so far; a worker reports with the value it leased the task at.
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    /// The run serving it, when an agent's run leased it.
    pub run_id: Option<String>,
    pub result: Option<Value>,
    /// The last failure; for a dead task, why it is dead.
    pub error: Option<String>,
    pub enqueued_at: i64,
    pub leased_at: Option<i64>,
    pub finished_at: Option<i64>,
}

fn json_or_text(s: String) -> Value {
    serde_json::from_str(&s).unwrap_or(Value::String(s))
}

impl From<steward_store::TaskRecord> for Task {
    fn from(t: steward_store::TaskRecord) -> Self {
        Task {
            payload: json_or_text(t.payload),
            result: t.result.map(json_or_text),
            id: t.id,
            queue: t.queue,
            tenant: t.tenant,
            priority: t.priority,
            dedup_key: t.dedup_key,
            state: t.state,
            run_at: t.run_at,
            deadline: t.deadline,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            lease_owner: t.lease_owner,
            lease_until: t.lease_until,
            run_id: t.run_id,
            error: t.error,
            enqueued_at: t.enqueued_at,
            leased_at: t.leased_at,
            finished_at: t.finished_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Enqueued {
    pub task: Task,
    /// True when the dedup key matched a task already there (which is `task`).
    pub deduplicated: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

/// `PUT /api/v1/schedules/{name}`: when (`cron`, or once: `at_ms` or `delay_ms`) and what (a
/// task on `queue`, or a run of `agent`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSchedule {
    /// A cron pattern in UTC: five fields, or six with seconds first.
    #[serde(default)]
    pub cron: Option<String>,
    /// Fire once at this Unix time (ms).
    #[serde(default)]
    pub at_ms: Option<i64>,
    /// Fire once this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<i64>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    /// The task's payload, or the run's input (a string as it is, anything else as JSON).
    #[serde(default)]
    pub payload: Value,
    /// Times passed while no node ran: `skip` them, fire `once` for them all (default), or
    /// fire `all` of them.
    #[serde(default)]
    pub missed: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    pub cron: Option<String>,
    pub queue: Option<String>,
    pub agent: Option<String>,
    pub payload: Value,
    pub missed: String,
    /// When it fires next; null once a one-shot schedule has fired.
    pub next_at: Option<i64>,
    pub last_fired_at: Option<i64>,
    pub fired: i64,
    pub created_at: i64,
}

impl From<steward_store::ScheduleRecord> for Schedule {
    fn from(s: steward_store::ScheduleRecord) -> Self {
        Schedule {
            payload: json_or_text(s.payload),
            name: s.name,
            cron: s.cron,
            queue: s.queue,
            agent: s.agent,
            missed: s.missed,
            next_at: s.next_at,
            last_fired_at: s.last_fired_at,
            fired: s.fired,
            created_at: s.created_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Supervisor {
    pub name: String,
    /// `running`, `completed` or `failed` (it gave up and escalated).
    pub status: String,
    /// As given: strategy, maxRestarts, withinMs, backoff, children, evaluator.
    pub spec: Value,
    /// Its children (each with its attempts, current run, result and feedback), its restarts
    /// within the window, and why it gave up.
    pub state: Value,
    pub updated_at: i64,
}

impl From<steward_store::SupervisorRecord> for Supervisor {
    fn from(r: steward_store::SupervisorRecord) -> Self {
        Supervisor {
            name: r.name,
            status: r.status,
            spec: json_or_text(r.spec),
            state: json_or_text(r.state),
            updated_at: r.updated_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SupervisorList {
    pub supervisors: Vec<Supervisor>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Incident {
    pub id: String,
    pub supervisor: String,
    pub reason: String,
    /// `open` or `resolved`.
    pub state: String,
    pub created_at: i64,
    pub resolved_at: Option<i64>,
    pub resolution: Option<String>,
}

impl From<steward_store::IncidentRecord> for Incident {
    fn from(i: steward_store::IncidentRecord) -> Self {
        Incident {
            id: i.id,
            supervisor: i.supervisor,
            reason: i.reason,
            state: i.state,
            created_at: i.created_at,
            resolved_at: i.resolved_at,
            resolution: i.resolution,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveIncident {
    pub resolution: String,
}

/// `PUT /api/v1/repos/{name}`: a git repository agents' branches land on.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRepo {
    /// An absolute path to the repository on the server's host.
    pub path: String,
    /// The branch submissions land on.
    pub target: String,
    /// What must pass on the merged tree (`/bin/sh -c`, run in a sandbox).
    pub check: String,
    /// An agent conflicts are routed to (a run per conflict); absent: a human (an incident).
    #[serde(default)]
    pub resolver: Option<String>,
    /// How submissions land: `rebase` (default: the branch's commits replayed onto the
    /// target, a linear history) or `merge` (one merge commit per submission).
    #[serde(default)]
    pub strategy: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Repo {
    pub name: String,
    pub path: String,
    pub target: String,
    pub check: String,
    pub resolver: Option<String>,
    pub strategy: String,
}

impl From<steward_store::RepoRecord> for Repo {
    fn from(r: steward_store::RepoRecord) -> Self {
        Repo {
            name: r.name,
            path: r.path,
            target: r.target,
            check: r.check_cmd,
            resolver: r.resolver,
            strategy: r.strategy,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RepoList {
    pub repos: Vec<Repo>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    pub branch: String,
    /// Who submits it (an agent's name, say).
    pub submitter: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Submission {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub submitter: String,
    /// `queued`, `checking`, `landed`, `conflict` (an incident is opened) or `failed`.
    pub state: String,
    pub detail: Option<String>,
    /// The merge commit, once landed.
    pub merged: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<steward_store::SubmissionRecord> for Submission {
    fn from(s: steward_store::SubmissionRecord) -> Self {
        Submission {
            id: s.id,
            repo: s.repo,
            branch: s.branch,
            submitter: s.submitter,
            state: s.state,
            detail: s.detail,
            merged: s.merged,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SubmissionList {
    pub submissions: Vec<Submission>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeasePaths {
    pub holder: String,
    /// Repository paths; a directory covers what is below it.
    pub paths: Vec<String>,
    pub ttl_ms: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleasePaths {
    pub holder: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PathLeaseInfo {
    pub path: String,
    pub holder: String,
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PathLeases {
    pub leases: Vec<PathLeaseInfo>,
}

impl From<Vec<steward_store::PathLease>> for PathLeases {
    fn from(l: Vec<steward_store::PathLease>) -> Self {
        PathLeases {
            leases: l
                .into_iter()
                .map(|l| PathLeaseInfo {
                    path: l.path,
                    holder: l.holder,
                    expires_at: l.expires_at,
                })
                .collect(),
        }
    }
}

/// `POST /api/v1/memories`: a fact to remember, searchable as soon as this answers.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemory {
    /// Whose it is: `org`, `user:<id>`, `agent:<name>`, `run:<id>` or `collection:<name>`.
    pub scope: String,
    /// The fact, up to 32 KiB.
    pub text: String,
    /// Who or what it is about (erasing by subject finds it).
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Any JSON object (up to 16 KiB, 8 levels), returned unchanged with the memory.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Where it came from (a message, a run): any JSON, kept as provenance.
    #[serde(default)]
    pub source: Option<Value>,
    /// When it became true (ms since the epoch); now if absent.
    #[serde(default)]
    pub valid_from: Option<i64>,
    /// When it stopped being true, if it has.
    #[serde(default)]
    pub valid_to: Option<i64>,
    /// Erased this many milliseconds after it is written.
    #[serde(default)]
    pub ttl_ms: Option<i64>,
    /// The id of the current version this one corrects: that version is closed (its
    /// `valid_to`, `expired_at`, `superseded_by` set) and kept in the fact's history.
    #[serde(default)]
    pub supersedes: Option<String>,
    /// Entities it names (up to 32): each is the scope's entity known by its name or one of
    /// its aliases (case and punctuation aside), made if there is none.
    #[serde(default)]
    pub entities: Vec<EntityIn>,
    /// Edges it states (up to 32), by entity name; a name not in `entities` is added.
    #[serde(default)]
    pub relations: Vec<RelationIn>,
}

/// An entity a memory names.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityIn {
    pub name: String,
    /// `person`, `place`, `organization`, … as the writer likes.
    #[serde(default)]
    pub kind: Option<String>,
    /// Other names it goes by (up to 16).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `subject` `relation` `object`: `{"subject":"Alice","relation":"works_at","object":"Acme"}`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelationIn {
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// An entity as stored.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemoryEntity {
    pub id: String,
    pub scope: String,
    /// The name it was first given.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl From<steward_store::MemoryEntity> for MemoryEntity {
    fn from(e: steward_store::MemoryEntity) -> Self {
        MemoryEntity {
            id: e.id,
            scope: e.scope,
            name: e.name,
            kind: e.kind,
        }
    }
}

/// One version of a remembered fact.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Memory {
    pub id: String,
    /// The fact this is a version of (its first version's id).
    pub fact: String,
    pub scope: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
    /// `admin:admin`, or `agent:<name>`.
    pub written_by: String,
    /// When it became true in the world (ms since the epoch).
    pub valid_from: i64,
    /// When it stopped being true; absent while it still is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<i64>,
    /// When it was recorded.
    pub created_at: i64,
    /// When a newer version replaced it; absent while it is current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// When its time to live ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl From<steward_store::MemoryRecord> for Memory {
    fn from(m: steward_store::MemoryRecord) -> Self {
        Memory {
            tags: serde_json::from_str(&m.tags).unwrap_or_default(),
            metadata: serde_json::from_str(&m.metadata)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            source: m.source.map(json_or_text),
            id: m.id,
            fact: m.lineage,
            scope: m.scope,
            text: m.text,
            subject: m.subject,
            written_by: m.written_by,
            valid_from: m.valid_from,
            valid_to: m.valid_to,
            created_at: m.created_at,
            expired_at: m.expired_at,
            superseded_by: m.superseded_by,
            expires_at: m.expires_at,
        }
    }
}

/// A memory written, and the version it superseded (closed), if any.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AddedMemory {
    pub memory: Memory,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Memory>,
    /// The entities it names, as resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<MemoryEntity>,
}

/// `POST /api/v1/memories/search`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchMemories {
    /// Words to look for; empty lists the newest.
    #[serde(default)]
    pub query: String,
    /// The scopes to search, each of which the caller must be allowed to read.
    pub scopes: Vec<String>,
    /// `hybrid` (the default: full text, embeddings and the graph around the entities the
    /// query names, their scaled scores summed; with no embedding model, full text with recency
    /// breaking near-ties, plus the graph), `bm25`, `vector`, `graph`, or `recency`.
    #[serde(default)]
    pub method: Option<String>,
    /// Facts true in the world at this time (ms since the epoch).
    #[serde(default)]
    pub valid_at: Option<i64>,
    /// Versions as they were recorded at this time; without it, current versions only.
    #[serde(default)]
    pub known_at: Option<i64>,
    /// Superseded versions too.
    #[serde(default)]
    pub include_history: bool,
    /// Memories carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Memories whose metadata has these top-level keys with these values.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub subject: Option<String>,
    /// 1 to 100 (default 10).
    #[serde(default)]
    pub limit: Option<usize>,
    /// At most about this many tokens of memory text in all (a token is counted as 4 bytes).
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

/// What each method made of a result.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemoryScores {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bm25: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bm25_rank: Option<usize>,
    /// Cosine similarity of its embedding to the query's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recency_rank: Option<usize>,
    /// The graph's score (0–1): 1 for a version stating an edge from an entity the query
    /// names by a relation the query says, less for other edges and for merely naming it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<f64>,
    /// The path that reached it: `Jon -lives_in-> Denver`, or `names Jon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_path: Option<String>,
    /// What its scope's decay (`[memory.decay_half_life_ms]`) left of its score: 1 when new,
    /// 0.5 one half-life after it became true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay: Option<f64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemoryHit {
    pub memory: Memory,
    /// The score results are ordered by (hybrid: full text scaled to the best match's 1.0 plus
    /// cosine scaled between the farthest and nearest candidate's 0 and 1; without embeddings,
    /// full text scaled plus up to 0.1 for recency; either plus the graph's score).
    pub score: f64,
    pub scores: MemoryScores,
    /// Tokens of its text, as counted for `max_tokens`.
    pub tokens: usize,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemorySearchResult {
    pub results: Vec<MemoryHit>,
    /// Tokens of memory text in `results`.
    pub tokens: usize,
    /// Whether results were left out to stay within `max_tokens`.
    pub truncated: bool,
}

/// Every version of a fact, oldest first.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemoryHistory {
    pub versions: Vec<Memory>,
}

/// `POST /api/v1/memories/erase`: exactly one of `ids`, `subject`, `entity` or `all`, within
/// `scope`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseMemories {
    pub scope: String,
    /// Facts to erase, by the id of any of their versions (1 to 1000).
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Every fact about this subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Every fact naming this entity (its id, or any of its names), and the entity.
    #[serde(default)]
    pub entity: Option<String>,
    /// Everything in the scope.
    #[serde(default)]
    pub all: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErasedVersion {
    pub id: String,
    pub fact: String,
    pub scope: String,
}

/// What an erasure removed, place by place.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErasureReport {
    pub erased: Vec<ErasedVersion>,
    /// Facts erased, every version of each.
    pub facts: usize,
    /// Rows deleted from the store (current versions and history).
    pub rows: usize,
    /// Postings removed from this node's full-text index (other nodes drop theirs within a
    /// second).
    pub index_postings: usize,
    /// Embeddings erased with the versions (from the store and this node's index).
    #[serde(default)]
    pub vectors: usize,
    /// Entities no memory names any more, erased with all their names.
    #[serde(default)]
    pub entities: Vec<String>,
    /// Edges erased with the versions that stated them.
    #[serde(default)]
    pub relations: u64,
    /// Links from the erased versions to the entities they named.
    #[serde(default)]
    pub mentions: u64,
    /// Whether the database's own files held none of the erased bytes when this was answered
    /// (SQLite's write-ahead log truncated; PostgreSQL's memory tables rewritten). False when
    /// the database was too busy to do it now; the next erasure tries again.
    #[serde(default)]
    pub files_scrubbed: bool,
    /// Where the data was removed from.
    pub places: Vec<String>,
}

/// `POST /api/v1/memories/curate`: messages for a model to learn from, into one scope.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CurateMemories {
    pub scope: String,
    /// 1 to 200 messages, each `{"role": user|assistant|system|tool, "content": "…"}`.
    pub messages: Vec<CurateMessage>,
    /// Where they came from, kept with the request as provenance.
    #[serde(default)]
    pub source: Option<Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CurateMessage {
    pub role: String,
    pub content: String,
}

/// A curation request and how far it got.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Curation {
    pub id: String,
    pub scope: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    pub attempts: i64,
    /// The model or route asked, and the prompt's version.
    pub model: String,
    pub prompt: String,
    /// What the model's call cost, US dollars.
    pub cost_usd: f64,
    /// When done: `written` (ids), `skipped` (decisions not applied, with why), `cost_usd`,
    /// `cost_usd_per_memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<steward_store::CurationRecord> for Curation {
    fn from(c: steward_store::CurationRecord) -> Self {
        Curation {
            result: c
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
            cost_usd: c.cost_nanos as f64 / 1e9,
            id: c.id,
            scope: c.scope,
            state: c.state,
            attempts: c.attempts,
            model: c.model,
            prompt: c.prompt,
            error: c.error,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// `POST /api/v1/memories/export`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportMemories {
    /// The scopes to export (1 to 32), each of which the caller must be allowed to read.
    pub scopes: Vec<String>,
}

/// What an import wrote.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ImportedMemories {
    /// Versions written.
    pub written: u64,
    /// Versions stored already, identical, left as they were.
    pub unchanged: u64,
}

/// A trace: its spans, by start time.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<Span>,
}

/// A span kept: ids in lowercase hex, times in nanoseconds since the epoch.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// The sender's `service.name`.
    pub service: Option<String>,
    /// `agent:NAME`: the agent whose API key sent it.
    pub sent_by: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    pub status_message: Option<String>,
    #[schema(value_type = Object)]
    pub attributes: Value,
    #[schema(value_type = Vec<Object>)]
    pub events: Value,
    /// The sender's resource attributes.
    #[schema(value_type = Object)]
    pub resource: Value,
    /// When Steward received it (Unix milliseconds).
    pub received_at: i64,
    /// Its `session.id` (or `gen_ai.conversation.id`) attribute.
    pub session_id: Option<String>,
    /// Its `user.id` (or `enduser.id`) attribute.
    pub end_user: Option<String>,
}

/// Traces, the latest to start first.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TraceList {
    pub traces: Vec<TraceSummary>,
}

/// A trace in a list.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TraceSummary {
    pub trace_id: String,
    /// Its first span's start and its last span's end, in nanoseconds since the epoch.
    pub start_ns: i64,
    pub end_ns: i64,
    pub spans: i64,
    pub session_id: Option<String>,
    pub end_user: Option<String>,
    pub sent_by: String,
}

impl From<steward_store::TraceSummary> for TraceSummary {
    fn from(t: steward_store::TraceSummary) -> Self {
        TraceSummary {
            trace_id: t.trace_id,
            start_ns: t.start_ns,
            end_ns: t.end_ns,
            spans: t.spans,
            session_id: t.session_id,
            end_user: t.end_user,
            sent_by: t.sent_by,
        }
    }
}

impl From<steward_store::SpanRecord> for Span {
    fn from(s: steward_store::SpanRecord) -> Self {
        let json = |t: &str| serde_json::from_str(t).unwrap_or(Value::Null);
        Span {
            attributes: json(&s.attributes),
            events: json(&s.events),
            resource: json(&s.resource),
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name: s.name,
            kind: s.kind,
            service: s.service,
            sent_by: s.sent_by,
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            status: s.status,
            status_message: s.status_message,
            received_at: s.received_at,
            session_id: s.session_id,
            end_user: s.end_user,
        }
    }
}

/// What an alert rule measures.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// US dollars spent on models in the window (summed over the whole hours it touches).
    SpendUsd,
    /// The share (0–1) of runs started in the window and ended that failed.
    ErrorRate,
    /// The 95th percentile of gateway calls' duration in the window, in ms.
    LatencyMs,
    /// Runs started in the window that were stopped as looping.
    Loops,
    /// The share (0–1) of budget account `account`'s cap spent or held.
    BudgetUsed,
}

impl From<AlertMetric> for steward_engine::alerts::Metric {
    fn from(m: AlertMetric) -> Self {
        use steward_engine::alerts::Metric as M;
        match m {
            AlertMetric::SpendUsd => M::SpendUsd,
            AlertMetric::ErrorRate => M::ErrorRate,
            AlertMetric::LatencyMs => M::LatencyMs,
            AlertMetric::Loops => M::Loops,
            AlertMetric::BudgetUsed => M::BudgetUsed,
        }
    }
}

impl From<steward_engine::alerts::Metric> for AlertMetric {
    fn from(m: steward_engine::alerts::Metric) -> Self {
        use steward_engine::alerts::Metric as M;
        match m {
            M::SpendUsd => AlertMetric::SpendUsd,
            M::ErrorRate => AlertMetric::ErrorRate,
            M::LatencyMs => AlertMetric::LatencyMs,
            M::Loops => AlertMetric::Loops,
            M::BudgetUsed => AlertMetric::BudgetUsed,
        }
    }
}

/// Where an alert's calls go, signed with a vault secret: each call carries
/// `Steward-Signature: t=<unix ms>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, `Steward-Delivery`
/// (the same on every retry of one call) and `Steward-Event` (`alert.firing`, `alert.resolved`).
#[derive(Serialize, Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    pub url: String,
    /// The name of the vault secret calls are signed with.
    pub secret: String,
}

/// `PUT /api/v1/alerts/{name}`: fires when `metric` is above `above`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAlert {
    pub metric: AlertMetric,
    pub above: f64,
    /// The window measured, back from now (default 60; not used by `budget_used`).
    pub window_minutes: Option<u32>,
    /// Only this agent's runs or calls.
    pub agent: Option<String>,
    /// The budget account `budget_used` watches.
    pub account: Option<String>,
    /// Fewer ended runs (`error_rate`) or calls (`latency_ms`) than this judge nothing (default 1).
    pub min_samples: Option<u32>,
    pub webhook: Option<AlertWebhook>,
}

impl From<PutAlert> for steward_engine::alerts::AlertSpec {
    fn from(r: PutAlert) -> Self {
        steward_engine::alerts::AlertSpec {
            metric: r.metric.into(),
            above: r.above,
            window_minutes: r.window_minutes.unwrap_or(60),
            agent: r.agent,
            account: r.account,
            min_samples: r.min_samples.unwrap_or(1),
            webhook: r.webhook.map(|w| steward_engine::alerts::Webhook {
                url: w.url,
                secret: w.secret,
            }),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub name: String,
    pub metric: AlertMetric,
    pub above: f64,
    pub window_minutes: u32,
    pub agent: Option<String>,
    pub account: Option<String>,
    pub min_samples: u32,
    pub webhook: Option<AlertWebhook>,
    /// `ok` or `firing`.
    pub state: String,
    /// The measure when last checked.
    pub value: Option<f64>,
    /// The incident it opened when it last fired.
    pub incident_id: Option<String>,
    pub checked_at: i64,
    /// When it last fired or calmed.
    pub changed_at: i64,
    pub updated_at: i64,
}

impl From<steward_engine::handles::alerts::AlertInfo> for Alert {
    fn from(a: steward_engine::handles::alerts::AlertInfo) -> Self {
        Alert {
            name: a.name,
            metric: a.spec.metric.into(),
            above: a.spec.above,
            window_minutes: a.spec.window_minutes,
            agent: a.spec.agent,
            account: a.spec.account,
            min_samples: a.spec.min_samples,
            webhook: a.spec.webhook.map(|w| AlertWebhook {
                url: w.url,
                secret: w.secret,
            }),
            state: a.record.state,
            value: a.record.value,
            incident_id: a.record.incident_id,
            checked_at: a.record.checked_at,
            changed_at: a.record.changed_at,
            updated_at: a.record.updated_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// One webhook call an alert queued.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub alert: String,
    /// `alert.firing` or `alert.resolved`.
    pub event: String,
    #[schema(value_type = Object)]
    pub body: Value,
    /// `pending`, `delivered` or `failed` (given up on after 8 attempts).
    pub state: String,
    pub attempts: i64,
    /// When it is tried next, while pending.
    pub next_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

impl From<steward_store::DeliveryRecord> for Delivery {
    fn from(d: steward_store::DeliveryRecord) -> Self {
        Delivery {
            id: d.id,
            alert: d.alert,
            event: d.event,
            body: serde_json::from_str(&d.body).unwrap_or(Value::Null),
            state: d.state,
            attempts: d.attempts,
            next_at: d.next_at,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// An evaluator as given, with when it was made and changed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Evaluator {
    pub name: String,
    /// kind, and its `rules`, `judge` or `code`; `agents` and `sample` when online.
    #[schema(value_type = Object)]
    pub spec: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl
    From<(
        steward_engine::evaluation::EvaluatorSpec,
        steward_store::EvaluatorRecord,
    )> for Evaluator
{
    fn from(
        (spec, r): (
            steward_engine::evaluation::EvaluatorSpec,
            steward_store::EvaluatorRecord,
        ),
    ) -> Self {
        Evaluator {
            name: r.name,
            spec: serde_json::to_value(spec).unwrap_or(Value::Null),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EvaluatorList {
    pub evaluators: Vec<Evaluator>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRun {
    pub run: String,
}

/// An evaluator's score of a run.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Score {
    pub run_id: String,
    pub evaluator: String,
    pub agent: String,
    /// From 0 to 1; absent when it could not be scored (`reason` says why).
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub reason: Option<String>,
    /// What scoring cost (a judge's model call), in US dollars.
    pub cost_usd: f64,
    pub at: i64,
}

impl From<steward_store::ScoreRecord> for Score {
    fn from(s: steward_store::ScoreRecord) -> Self {
        Score {
            run_id: s.run_id,
            evaluator: s.evaluator,
            agent: s.agent,
            score: s.score,
            passed: s.passed.map(|p| p == 1),
            reason: s.reason,
            cost_usd: s.cost_nanos as f64 / 1e9,
            at: s.at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ScoreList {
    pub scores: Vec<Score>,
    /// The mean of the scores listed.
    pub mean: Option<f64>,
    /// The share of those judged that passed.
    pub pass_rate: Option<f64>,
}
