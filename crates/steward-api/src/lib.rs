//! The HTTP face of Steward: REST under `/api/v1`, its OpenAPI document, health probes.
//! Only this crate knows HTTP and JSON wire shapes.

mod caller;
mod change_audit;
mod console;
pub mod error;
mod events;
mod extract;
mod mcp;
mod memories;
pub mod messages;
pub mod openai;
mod otlp;
mod queues;
pub mod responses;
mod responses_native;
mod routes;
mod sse;
pub mod wire;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use steward_engine::Engine;
use steward_types::config::ServerConfig;
use steward_types::ErrorCode;
use utoipa::OpenApi;

use crate::openapi::CommonResponses;

#[derive(OpenApi)]
#[openapi(
    info(title = "Steward", description = "The control plane under AI agents."),
    modifiers(&CommonResponses),
    paths(
        routes::healthz,
        routes::metrics,
        routes::readyz,
        routes::apply,
        routes::list_agents,
        routes::get_agent,
        routes::create_run,
        routes::list_runs,
        routes::get_run,
        routes::journal,
        events::run_events,
        routes::cancel_run,
        routes::put_evaluator,
        routes::list_evaluators,
        routes::delete_evaluator,
        routes::score_run,
        routes::list_scores,
        routes::put_dataset,
        routes::get_dataset,
        routes::list_datasets,
        routes::add_runs,
        routes::start_experiment,
        routes::get_experiment,
        routes::list_experiments,
        routes::put_alert,
        routes::list_alerts,
        routes::delete_alert,
        routes::alert_deliveries,
        routes::fork_run,
        routes::resolve_run,
        routes::create_key,
        routes::list_calls,
        routes::costs,
        routes::put_budget,
        routes::list_budgets,
        routes::list_circuits,
        routes::verify_audit,
        routes::export_audit,
        routes::get_policies,
        routes::put_policies,
        routes::list_approvals,
        routes::approve,
        routes::deny,
        routes::put_secret,
        routes::list_secrets,
        routes::delete_secret,
        routes::list_tools,
        routes::get_tool,
        routes::put_mcp_server,
        routes::list_mcp_servers,
        routes::get_mcp_server,
        routes::delete_mcp_server,
        routes::restart_mcp_server,
        routes::put_openapi,
        routes::list_openapis,
        routes::get_openapi,
        routes::delete_openapi,
        routes::list_keys,
        routes::revoke_key,
        routes::rotate_key,
        routes::suspend_agent,
        routes::resume_agent,
        routes::revoke_agent,
        routes::delete_agent,
        routes::get_identity,
        routes::list_delegations,
        routes::get_delegation,
        routes::revoke_delegation,
        routes::create_sandboxes,
        routes::list_sandboxes,
        routes::sandbox_exec,
        routes::sandbox_exec_stream,
        routes::snapshot_sandbox,
        routes::restore_sandbox,
        routes::delete_sandbox,
        routes::cancel_sandbox,
        routes::pause_sandbox,
        routes::resume_sandbox,
        routes::sandbox_processes,
        routes::kill_sandbox_process,
        routes::upload_file,
        routes::download_file,
        routes::list_files,
        queues::put_queue,
        queues::get_queue,
        queues::list_queues,
        queues::enqueue,
        queues::lease,
        queues::heartbeat,
        queues::complete,
        queues::fail,
        queues::requeue,
        queues::get_task,
        queues::list_tasks,
        queues::put_schedule,
        queues::get_schedule,
        queues::list_schedules,
        queues::delete_schedule,
        queues::put_supervisor,
        queues::get_supervisor,
        queues::list_supervisors,
        queues::list_incidents,
        queues::resolve_incident,
        queues::put_repo,
        queues::list_repos,
        queues::submit,
        queues::list_submissions,
        queues::lease_paths,
        queues::path_leases,
        queues::release_paths,
        memories::add,
        memories::search,
        memories::get,
        memories::history,
        memories::erase,
        memories::export,
        memories::curate,
        memories::curation,
        memories::import,
        routes::list_traces,
        routes::get_trace
    ),
    components(schemas(
        wire::Trace,
        wire::Span,
        wire::TraceList,
        wire::TraceSummary,
        wire::Agent,
        wire::AgentList,
        wire::AppliedAgent,
        wire::ApplyResult,
        wire::CreateRun,
        wire::Run,
        wire::RunError,
        wire::RunList,
        wire::JournalItem,
        wire::Journal,
        wire::CancelRun,
        wire::Evaluator,
        wire::EvaluatorList,
        wire::ScoreRun,
        wire::Score,
        wire::ScoreList,
        routes::PutDataset,
        routes::AddRuns,
        routes::StartExperiment,
        wire::AlertMetric,
        wire::AlertWebhook,
        wire::PutAlert,
        wire::Alert,
        wire::AlertList,
        wire::Delivery,
        wire::DeliveryList,
        wire::ForkRun,
        wire::Fork,
        wire::ResolveRun,
        wire::ResolveAction,
        wire::Health,
        wire::CreateKey,
        wire::ApiKey,
        wire::Call,
        wire::CallList,
        wire::CostLine,
        wire::CostReport,
        wire::OutcomeCosts,
        wire::PutBudget,
        wire::Budget,
        wire::BudgetList,
        wire::OpenCircuit,
        wire::CircuitList,
        wire::AuditProblem,
        wire::AuditReport,
        wire::PolicySet,
        wire::Approval,
        wire::ApprovalList,
        wire::ApprovalDecision,
        wire::PutSecret,
        wire::Secret,
        wire::SecretList,
        wire::ToolHints,
        wire::ToolInfo,
        wire::ToolList,
        wire::PutMcpServer,
        wire::McpServerStatus,
        wire::McpServer,
        wire::McpServerList,
        wire::PutOpenApi,
        wire::OAuthClientSpec,
        wire::OpenApi,
        wire::OpenApiList,
        wire::KeyInfo,
        wire::KeyList,
        wire::Reason,
        wire::Identity,
        wire::DelegationRequest,
        wire::DelegationScope,
        wire::Delegation,
        wire::DelegationList,
        wire::Revoked,
        wire::CreateSandboxes,
        wire::SandboxIds,
        wire::SandboxInfo,
        wire::SandboxList,
        wire::SandboxExec,
        wire::SandboxExecResult,
        wire::SandboxProcess,
        wire::SandboxProcesses,
        wire::KillProcess,
        wire::FilePath,
        wire::FileEntry,
        wire::FileList,
        wire::QueueSettings,
        wire::AddMemory,
        wire::Memory,
        wire::AddedMemory,
        wire::EntityIn,
        wire::RelationIn,
        wire::MemoryEntity,
        wire::SearchMemories,
        wire::MemoryScores,
        wire::MemoryHit,
        wire::MemorySearchResult,
        wire::MemoryHistory,
        wire::EraseMemories,
        wire::ErasedVersion,
        wire::ErasureReport,
        wire::ExportMemories,
        wire::CurateMemories,
        wire::CurateMessage,
        wire::Curation,
        wire::ImportedMemories,
        wire::QueueInfo,
        wire::QueueList,
        wire::EnqueueTask,
        wire::LeaseTasks,
        wire::TaskReport,
        wire::Task,
        wire::Enqueued,
        wire::TaskList,
        wire::PutSchedule,
        wire::Schedule,
        wire::ScheduleList,
        wire::Supervisor,
        wire::SupervisorList,
        wire::Incident,
        wire::IncidentList,
        wire::ResolveIncident,
        wire::PutRepo,
        wire::Repo,
        wire::RepoList,
        wire::Submit,
        wire::Submission,
        wire::SubmissionList,
        wire::LeasePaths,
        wire::ReleasePaths,
        wire::PathLeaseInfo,
        wire::PathLeases,
        wire::Snapshot,
        wire::RestoreSandbox,
        error::ErrorBody,
        error::ErrorDetail
    ))
)]
pub struct ApiDoc;

mod openapi;

/// Bounds every request, reading its body included, so a stalled client cannot hold a handler.
async fn deadline(State(ms): State<u64>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(Duration::from_millis(ms), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request did not complete within {ms} ms (server.request_timeout_ms)"),
        )
        .into_response(),
    }
}

/// A `/v1` request that names its caller's span (W3C `traceparent`, as OpenTelemetry's HTTP
/// instrumentations send it) runs in a server span of that trace, so the gateway's `gen_ai`
/// span joins the agent's own trace. Without the header, nothing is added.
async fn caller_trace(req: Request, next: Next) -> Response {
    let header = |req: &Request, name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(traceparent) = header(&req, "traceparent") else {
        return next.run(req).await;
    };
    let tracestate = header(&req, "tracestate");
    // The path as the client sent it (a nested router sees only its own part).
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let span = tracing::info_span!(
        "http",
        "otel.name" = %format_args!("{} {path}", req.method()),
        "otel.kind" = "server",
        "http.request.method" = %req.method(),
        "url.path" = %path,
    );
    steward_engine::continue_trace(&span, &traceparent, tracestate.as_deref());
    tracing::Instrument::instrument(next.run(req), span).await
}

/// Guards the management API: when an admin token is configured, a request must carry it —
/// or the viewer token, for reading only.
async fn admin_only(
    State((admin, viewer)): State<(Option<String>, Option<String>)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(admin) = admin else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same_secret(given, &admin) {
        return next.run(req).await;
    }
    if viewer.as_deref().is_some_and(|v| same_secret(given, v)) {
        let reads = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        return if reads {
            next.run(req).await
        } else {
            ApiError::new(
                ErrorCode::Forbidden,
                "the viewer token only reads: this needs the admin token",
            )
            .into_response()
        };
    }
    ApiError::new(
        ErrorCode::Unauthorized,
        "the management API needs `Authorization: Bearer <admin token>` (STEWARD_TOKEN for the CLI), or the viewer token to read",
    )
    .into_response()
}

/// Compared in constant time: the token is a secret.
pub(crate) fn same_secret(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The whole application.
/// The largest memory export an import takes in one request.
const MAX_MEMORY_IMPORT_BYTES: usize = 64 * 1024 * 1024;

pub fn router(engine: Engine, cfg: &ServerConfig) -> Router {
    let api = Router::new()
        .route("/agents", post(routes::apply).get(routes::list_agents))
        .route("/agents/{name}", get(routes::get_agent))
        .route("/runs", post(routes::create_run).get(routes::list_runs))
        .route("/runs/{id}", get(routes::get_run))
        .route("/runs/{id}/journal", get(routes::journal))
        .route("/runs/{id}/events", get(events::run_events))
        .route("/runs/{id}/cancel", post(routes::cancel_run))
        .route("/runs/{id}/fork", post(routes::fork_run))
        .route("/runs/{id}/resolve", post(routes::resolve_run))
        .route("/keys", post(routes::create_key).get(routes::list_keys))
        .route("/keys/{id}/revoke", post(routes::revoke_key))
        .route("/keys/{id}/rotate", post(routes::rotate_key))
        .route("/agents/{name}/suspend", post(routes::suspend_agent))
        .route("/agents/{name}/resume", post(routes::resume_agent))
        .route("/agents/{name}/revoke", post(routes::revoke_agent))
        .route("/agents/{name}/delete", post(routes::delete_agent))
        .route("/agents/{name}/identity", get(routes::get_identity))
        .route("/delegations", get(routes::list_delegations))
        .route(
            "/sandboxes",
            post(routes::create_sandboxes).get(routes::list_sandboxes),
        )
        .route(
            "/sandboxes/{id}",
            axum::routing::delete(routes::delete_sandbox),
        )
        .route("/sandboxes/{id}/exec", post(routes::sandbox_exec))
        .route(
            "/sandboxes/{id}/exec/stream",
            post(routes::sandbox_exec_stream),
        )
        .route("/sandboxes/{id}/snapshot", post(routes::snapshot_sandbox))
        .route("/sandboxes/{id}/restore", post(routes::restore_sandbox))
        .route("/sandboxes/{id}/cancel", post(routes::cancel_sandbox))
        .route("/sandboxes/{id}/pause", post(routes::pause_sandbox))
        .route("/sandboxes/{id}/resume", post(routes::resume_sandbox))
        .route("/sandboxes/{id}/processes", get(routes::sandbox_processes))
        .route(
            "/sandboxes/{id}/processes/{pid}/kill",
            post(routes::kill_sandbox_process),
        )
        .route(
            "/sandboxes/{id}/files",
            get(routes::download_file)
                .put(routes::upload_file)
                .layer(DefaultBodyLimit::max(
                    steward_engine::sandboxes::MAX_TRANSFER_BYTES,
                )),
        )
        .route("/sandboxes/{id}/files/list", get(routes::list_files))
        .route("/queues", get(queues::list_queues))
        .route(
            "/queues/{name}",
            get(queues::get_queue).put(queues::put_queue),
        )
        .route("/tasks", get(queues::list_tasks))
        .route("/tasks/{id}", get(queues::get_task))
        .route("/tasks/{id}/requeue", post(queues::requeue))
        .route("/schedules", get(queues::list_schedules))
        .route("/supervisors", get(queues::list_supervisors))
        .route(
            "/supervisors/{name}",
            get(queues::get_supervisor).put(queues::put_supervisor),
        )
        .route("/incidents", get(queues::list_incidents))
        .route("/evaluators", get(routes::list_evaluators))
        .route(
            "/evaluators/{name}",
            axum::routing::put(routes::put_evaluator).delete(routes::delete_evaluator),
        )
        .route("/evaluators/{name}/score", post(routes::score_run))
        .route("/scores", get(routes::list_scores))
        .route("/datasets", get(routes::list_datasets))
        .route(
            "/datasets/{name}",
            get(routes::get_dataset).put(routes::put_dataset),
        )
        .route("/datasets/{name}/runs", post(routes::add_runs))
        .route(
            "/experiments",
            post(routes::start_experiment).get(routes::list_experiments),
        )
        .route("/experiments/{id}", get(routes::get_experiment))
        .route("/alerts", get(routes::list_alerts))
        .route(
            "/alerts/{name}",
            axum::routing::put(routes::put_alert).delete(routes::delete_alert),
        )
        .route("/alerts/{name}/deliveries", get(routes::alert_deliveries))
        .route("/repos", get(queues::list_repos))
        .route("/repos/{name}", axum::routing::put(queues::put_repo))
        .route(
            "/repos/{name}/submissions",
            post(queues::submit).get(queues::list_submissions),
        )
        .route(
            "/repos/{name}/leases",
            post(queues::lease_paths).get(queues::path_leases),
        )
        .route("/repos/{name}/leases/release", post(queues::release_paths))
        .route("/incidents/{id}/resolve", post(queues::resolve_incident))
        .route(
            "/schedules/{name}",
            get(queues::get_schedule)
                .put(queues::put_schedule)
                .delete(queues::delete_schedule),
        )
        .route("/delegations/{id}", get(routes::get_delegation))
        .route("/delegations/{id}/revoke", post(routes::revoke_delegation))
        .route("/calls", get(routes::list_calls))
        .route("/costs", get(routes::costs))
        .route("/budgets", get(routes::list_budgets))
        .route("/circuits", get(routes::list_circuits))
        .route("/audit/verify", get(routes::verify_audit))
        .route("/approvals", get(routes::list_approvals))
        .route("/secrets", get(routes::list_secrets))
        .route("/tools", get(routes::list_tools))
        .route("/tools/{name}", get(routes::get_tool))
        .route("/mcp-servers", get(routes::list_mcp_servers))
        .route(
            "/mcp-servers/{name}",
            get(routes::get_mcp_server)
                .put(routes::put_mcp_server)
                .delete(routes::delete_mcp_server),
        )
        .route(
            "/mcp-servers/{name}/restart",
            post(routes::restart_mcp_server),
        )
        .route("/openapi", get(routes::list_openapis))
        .route(
            "/openapi/{name}",
            get(routes::get_openapi)
                .put(routes::put_openapi)
                .delete(routes::delete_openapi),
        )
        .route(
            "/secrets/{name}",
            axum::routing::put(routes::put_secret).delete(routes::delete_secret),
        )
        .route("/approvals/{id}/approve", post(routes::approve))
        .route("/approvals/{id}/deny", post(routes::deny))
        .route(
            "/policies",
            get(routes::get_policies).put(routes::put_policies),
        )
        .route("/audit/export", get(routes::export_audit))
        .route("/traces", get(routes::list_traces))
        .route("/traces/{trace_id}", get(routes::get_trace))
        .route("/budgets/{account}", axum::routing::put(routes::put_budget))
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            change_audit::audit_changes,
        ))
        .layer(middleware::from_fn_with_state(
            (
                cfg.admin_token.clone().filter(|t| !t.is_empty()),
                cfg.viewer_token.clone().filter(|t| !t.is_empty()),
            ),
            admin_only,
        ));
    // What task workers and agents' memory do, open to the admin token and to agents' own
    // credentials.
    let workers = Router::new()
        .route("/memories", post(memories::add))
        .route("/memories/search", post(memories::search))
        .route("/memories/erase", post(memories::erase))
        .route("/memories/export", post(memories::export))
        .route("/memories/curate", post(memories::curate))
        .route("/memories/curations/{id}", get(memories::curation))
        .route(
            "/memories/import",
            post(memories::import).layer(DefaultBodyLimit::max(MAX_MEMORY_IMPORT_BYTES)),
        )
        .route("/memories/{id}", get(memories::get))
        .route("/memories/{id}/history", get(memories::history))
        .route("/queues/{name}/tasks", post(queues::enqueue))
        .route("/queues/{name}/lease", post(queues::lease))
        .route("/tasks/{id}/heartbeat", post(queues::heartbeat))
        .route("/tasks/{id}/complete", post(queues::complete))
        .route("/tasks/{id}/fail", post(queues::fail))
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            change_audit::audit_changes,
        ))
        .layer(middleware::from_fn_with_state(
            (
                engine.clone(),
                cfg.admin_token.clone().filter(|t| !t.is_empty()),
            ),
            caller::worker_auth,
        ));
    let api = api.merge(workers);
    let v1 = Router::new()
        .route("/chat/completions", post(openai::chat_completions))
        .route("/messages", post(messages::create))
        .route("/messages/count_tokens", post(messages::count_tokens))
        .route("/responses", post(responses::create))
        .route(
            "/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/responses/{id}/input_items", get(responses::input_items))
        .route("/embeddings", post(openai::embeddings))
        .route("/models", get(openai::models))
        .route("/models/{*id}", get(openai::model))
        .route("/delegations", post(openai::delegate))
        .route("/traces", post(otlp::traces))
        .fallback(openai::not_found)
        .layer(middleware::from_fn(caller_trace));
    // MCP clients authenticate as agents, like `/v1` callers.
    let mcp = Router::new()
        .route_service("/mcp", mcp::service(engine.clone()))
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            mcp::authenticate,
        ));
    Router::new()
        .merge(mcp)
        .merge(console::router())
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .nest("/api/v1", api)
        .nest("/v1", v1)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            cfg.request_timeout_ms,
            deadline,
        ))
        .with_state(engine)
}
