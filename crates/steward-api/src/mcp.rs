//! `/mcp`: Steward as an MCP server (Streamable HTTP, stateless, on the official Rust SDK),
//! serving the tool registry to agents outside any run. A caller authenticates as at `/v1` —
//! its own API key (`Authorization: Bearer sk-steward-…`), with `X-Steward-Delegation` to act
//! under a delegated token and `X-Steward-Run` to attribute its calls to a run — before the
//! protocol is spoken at all. `tools/list` shows only the tools the policy lets it call;
//! `tools/call` takes the gateway's governance path (decided, schema-checked, audited).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateTaskResult, DetailedTask, GetTaskParams, GetTaskResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Task, TaskPayload, TaskStatus, Tool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::{json, Value};
use steward_engine::mcp_tasks::TASK_AFTER;
use steward_engine::Approval;
use steward_engine::{Engine, GatewayError, Principal, ToolCallError, ToolView};
use steward_store::McpTaskRecord;
use steward_types::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Sends what a tool reports of its progress to the client that asked for it (with
/// `progressToken`), in order: the answer then comes as an event stream.
fn progress_to(
    peer: rmcp::service::Peer<RoleServer>,
    token: rmcp::model::ProgressToken,
) -> steward_tools::ProgressSink {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<steward_tools::Progress>();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let mut n = rmcp::model::ProgressNotificationParam::new(token.clone(), p.progress);
            if let Some(total) = p.total {
                n = n.with_total(total);
            }
            if let Some(m) = p.message {
                n = n.with_message(m);
            }
            if peer.notify_progress(n).await.is_err() {
                break; // the client is gone
            }
        }
    });
    std::sync::Arc::new(move |p| {
        let _ = tx.send(p);
    })
}

/// How often a client should poll a task (`tasks/get`).
const POLL_INTERVAL_MS: u64 = 500;

/// How long a client may reuse a `tools/list` answer (MCP 2026-07-28's `ttlMs`).
const LIST_TTL_MS: u64 = 2_000;

/// The MCP service, mounted at `/mcp` behind [`authenticate`].
pub fn service(engine: Engine) -> StreamableHttpService<Mcp, NeverSessionManager> {
    let config = StreamableHttpServerConfig::default()
        // Stateless: any node answers any request, and nothing is kept between them.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // The Host check guards unauthenticated local servers against DNS rebinding; every
        // request here carries the agent's own API key, which a rebinding page does not have.
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(Mcp(engine.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// Identifies the caller before any MCP message is read; a request without a valid credential
/// is refused with 401 (403 for a token its key may not use), audited by the gateway.
pub async fn authenticate(State(engine): State<Engine>, req: Request, next: Next) -> Response {
    // Read before the await: a request body is not `Sync`, so no borrow of it may be held.
    let (bearer, delegation, run) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        };
        (
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string)),
            header("x-steward-delegation"),
            header("x-steward-run"),
        )
    };
    match engine
        .gateway()
        .authenticate(bearer.as_deref(), delegation.as_deref(), run.as_deref())
        .await
    {
        Ok(who) => {
            let req = match cancellation(req).await {
                Ok((request_id, reason)) => {
                    // rmcp's stateless server drops notifications: the call is found here.
                    let found = engine
                        .mcp_calls()
                        .cancel(who.agent.as_str(), &request_id)
                        .await;
                    tracing::debug!(agent = %who.agent, request_id, reason, found, "notifications/cancelled");
                    return axum::http::StatusCode::ACCEPTED.into_response();
                }
                Err(req) => req,
            };
            let mut req = req;
            req.extensions_mut().insert(Arc::new(who));
            next.run(req).await
        }
        Err(e) => {
            let code = match e {
                GatewayError::Unauthorized(_) => ErrorCode::Unauthorized,
                GatewayError::Forbidden(_) => ErrorCode::Forbidden,
                GatewayError::BadRequest(_) => ErrorCode::InvalidRequest,
                _ => ErrorCode::Unavailable,
            };
            ApiError::new(code, e.to_string()).into_response()
        }
    }
}

/// The largest body looked into for a `notifications/cancelled` (one is a few dozen bytes).
const CANCELLATION_MAX: u64 = 4096;

/// The request id and reason of an earlier-revision client's `notifications/cancelled`, or
/// the request as it was (rebuilt, if its body was read). Current-revision clients name the
/// method in a header (`Mcp-Method`), so only their cancellations are read; a larger body, or
/// one of unknown length, is never a cancellation worth reading.
async fn cancellation(req: Request) -> Result<(String, String), Request> {
    let method = req.headers().get("mcp-method").map(|m| m.as_bytes());
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= CANCELLATION_MAX);
    if req.method() != axum::http::Method::POST
        || !small
        || method.is_some_and(|m| m != b"notifications/cancelled")
    {
        return Err(req);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, CANCELLATION_MAX as usize).await else {
        return Err(Request::from_parts(parts, axum::body::Body::empty()));
    };
    // Most bodies are calls: looked at as bytes first, parsed only when they may be one.
    const METHOD: &[u8] = b"notifications/cancelled";
    if !bytes.windows(METHOD.len()).any(|w| w == METHOD) {
        return Err(Request::from_parts(parts, axum::body::Body::from(bytes)));
    }
    let message: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match (
        &message["method"],
        message.get("id"),
        &message["params"]["requestId"],
    ) {
        (Value::String(m), None, id @ (Value::Number(_) | Value::String(_)))
            if m == "notifications/cancelled" =>
        {
            let reason = message["params"]["reason"].as_str().unwrap_or_default();
            Ok((id.to_string(), reason.to_string()))
        }
        _ => Err(Request::from_parts(parts, axum::body::Body::from(bytes))),
    }
}

/// One request's MCP handler: the engine, and the caller [`authenticate`] found.
#[derive(Clone)]
pub struct Mcp(Engine);

fn caller(ctx: &RequestContext<RoleServer>) -> Result<Arc<Principal>, McpError> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Arc<Principal>>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("the request reached MCP unauthenticated", None))
}

fn to_mcp(t: ToolView) -> Tool {
    let schema = match t.input_schema {
        Value::Object(m) => m,
        _ => serde_json::Map::from_iter([("type".to_string(), json!("object"))]),
    };
    let mut tool = Tool::new(t.name, t.description, Arc::new(schema));
    if let Some(Value::Object(out)) = t.output_schema {
        tool.output_schema = Some(Arc::new(out));
    }
    tool.annotations = Some(ToolAnnotations::from_raw(
        None,
        Some(t.annotations.read_only),
        Some(t.annotations.destructive),
        Some(t.annotations.idempotent),
        Some(t.annotations.open_world),
    ));
    tool
}

fn unavailable(e: GatewayError) -> McpError {
    McpError::internal_error(e.to_string(), None)
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("steward", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Steward's governed tools. tools/list shows the tools you may call; with many, \
                 find them with tools_search and read their schemas with tools_describe.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let who = caller(&ctx)?;
        let tools = self.0.gateway().tools(&who).await.map_err(unavailable)?;
        // The list is this caller's (policy filters it): `private`. It may change as the
        // registry and the policy do, which every node follows within a couple of seconds;
        // calls are decided when made, so a list kept that long grants nothing.
        Ok(
            ListToolsResult::with_all_items(tools.into_iter().map(to_mcp).collect())
                .with_ttl_ms(LIST_TTL_MS)
                .with_cache_scope(rmcp::model::CacheScope::Private),
        )
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let who = caller(&ctx)?;
        let args = Value::Object(request.arguments.unwrap_or_default());
        // The call's span joins the caller's trace when `_meta` names one (`traceparent`).
        let span = tracing::info_span!(
            "mcp_tool_call",
            "otel.name" = %format_args!("execute_tool {}", request.name),
            "gen_ai.operation.name" = "execute_tool",
            "gen_ai.tool.name" = %request.name,
            agent = %who.agent,
        );
        if let Some(tp) = ctx.meta.get_traceparent() {
            steward_engine::continue_trace(&span, tp, ctx.meta.get_tracestate());
        }
        let progress = ctx
            .meta
            .get_progress_token()
            .map(|token| progress_to(ctx.peer.clone(), token));
        // The call runs on a token of its own, which follows the request's (`ctx.ct` fires
        // when the caller goes away: at the current revision, closing the request is how a
        // client cancels) until the call becomes a task that outlives the request.
        let cancel = CancellationToken::new();
        // Until it answers, an earlier-revision client's `notifications/cancelled` finds it.
        let _findable = self.0.mcp_calls().track(
            who.agent.as_str(),
            &serde_json::to_string(&ctx.id).unwrap_or_default(),
            cancel.clone(),
        );
        let tasks_accepted = ctx
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        // A caller that can wait (it accepts tasks) waits for a person's approval when the
        // policy asks for one; any other is refused, as nobody would see the answer.
        let approval = if tasks_accepted {
            Approval::Wait
        } else {
            Approval::Refuse
        };
        // Kept for a task: to run it again should its node stop, or once it is approved.
        let task_args = if tasks_accepted {
            args.clone()
        } else {
            Value::Null
        };
        let call = {
            let (engine, who, name, cancel) = (
                self.0.clone(),
                who.clone(),
                request.name.to_string(),
                cancel.clone(),
            );
            let call = async move {
                engine
                    .gateway()
                    .call_tool(&who, &name, args, &cancel, progress, approval)
                    .await
            };
            Box::pin(tracing::Instrument::instrument(call, span))
        };
        let mut call = call;
        let becomes_task = async {
            if tasks_accepted {
                tokio::time::sleep(TASK_AFTER).await
            } else {
                std::future::pending().await
            }
        };
        let answer = tokio::select! {
            r = &mut call => r,
            _ = ctx.ct.cancelled() => {
                cancel.cancel();
                call.await
            }
            _ = becomes_task => {
                let task = self
                    .0
                    .mcp_tasks()
                    .adopt(who.agent.as_str(), (&request.name, &task_args), call, cancel)
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                return Ok(CallToolResponse::Task(CreateTaskResult::new(task_view(&task))));
            }
        };
        let result = match answer {
            Ok(v) => ok_result(v),
            // The policy wants a person to approve: the call waits for it as a task.
            Err(ToolCallError::NeedsApproval {
                approvers,
                policy_ids,
            }) => {
                let (engine, caller, name) =
                    (self.0.clone(), who.clone(), request.name.to_string());
                let args = task_args.clone();
                let cancel = CancellationToken::new();
                let stop = cancel.clone();
                let (task, asked) = self
                    .0
                    .mcp_tasks()
                    .park(
                        who.agent.as_str(),
                        (&request.name, &task_args),
                        (&approvers, &policy_ids),
                        self.0.approval_timeout_ms(),
                        cancel,
                        move |given| async move {
                            engine
                                .gateway()
                                .call_tool(
                                    &caller,
                                    &name,
                                    args,
                                    &stop,
                                    None,
                                    Approval::Given(given),
                                )
                                .await
                        },
                    )
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                let task = task_view(&task).with_status_message(waiting_for(&asked, &approvers));
                return Ok(CallToolResponse::Task(CreateTaskResult::new(task)));
            }
            // What the caller can act on comes back as the tool's error, for the model to read.
            Err(
                e @ (ToolCallError::Forbidden(_)
                | ToolCallError::InvalidArguments(_)
                | ToolCallError::Failed(_)
                | ToolCallError::Limited(_)),
            ) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
            Err(ToolCallError::Gateway(e)) => return Err(unavailable(e)),
        };
        Ok(result.into())
    }

    /// A task's state, for the agent that made it (any node answers).
    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let who = caller(&ctx)?;
        // A task whose node stopped mid-call may be run again here, as this caller.
        let (engine, caller) = (self.0.clone(), who.clone());
        let again = move |tool: String, args, approval, cancel: CancellationToken| async move {
            engine
                .gateway()
                .call_tool(&caller, &tool, args, &cancel, None, approval)
                .await
        };
        let task = self
            .0
            .mcp_tasks()
            .get(who.agent.as_str(), &request.task_id, again)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .ok_or_else(|| no_task(&request.task_id))?;
        let mut detailed = detailed(&task);
        if task.status == "working" {
            if let Some((asked, approvers)) = self.0.mcp_tasks().pending_approval(&task.id).await {
                detailed.task.status_message = Some(waiting_for(&asked, &approvers));
            }
        }
        Ok(GetTaskResult::new(detailed))
    }

    /// Asks a working task to stop (the tool's call is given up, as when a caller goes away).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let who = caller(&ctx)?;
        let working = self
            .0
            .mcp_tasks()
            .cancel(who.agent.as_str(), &request.task_id)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        if working {
            Ok(())
        } else {
            Err(no_task(&request.task_id))
        }
    }
}

fn waiting_for(approval: &str, approvers: &str) -> String {
    format!("waiting for a person of {approvers:?} to approve it ({approval})")
}

fn no_task(id: &str) -> McpError {
    McpError::invalid_params(format!("no working task {id:?} of yours"), None)
}

/// A tool's answer as MCP's: structured output is an object; anything else is wrapped as
/// `result`.
fn ok_result(v: Value) -> CallToolResult {
    match v {
        v @ Value::Object(_) => CallToolResult::structured(v),
        v => CallToolResult::structured(json!({ "result": v })),
    }
}

fn task_view(t: &McpTaskRecord) -> Task {
    let status = match t.status.as_str() {
        "working" => TaskStatus::Working,
        "completed" => TaskStatus::Completed,
        "cancelled" => TaskStatus::Cancelled,
        _ => TaskStatus::Failed,
    };
    // Kept a day after it ends; the creation time is what a TTL counts from.
    let kept_for = (t.updated_at - t.created_at).max(0) + steward_engine::mcp_tasks::KEPT_FOR_MS;
    Task::new(&t.id, status, iso8601(t.created_at), iso8601(t.updated_at))
        .with_poll_interval_ms(POLL_INTERVAL_MS)
        .with_ttl_ms(kept_for as u64)
}

/// A task with what it ended as: the tool's answer, its error (as a completed call with
/// `isError`), or why it failed.
fn detailed(t: &McpTaskRecord) -> DetailedTask {
    let outcome: Value = serde_json::from_str(&t.outcome).unwrap_or(Value::Null);
    let object = |v: Value| v.as_object().cloned().unwrap_or_default();
    let payload = match t.status.as_str() {
        "working" => TaskPayload::Working,
        "cancelled" => TaskPayload::Cancelled,
        "completed" => {
            let result = match outcome.get("ok") {
                Some(v) => ok_result(v.clone()),
                None => CallToolResult::error(vec![ContentBlock::text(
                    outcome["error"].as_str().unwrap_or_default().to_string(),
                )]),
            };
            TaskPayload::Completed {
                result: object(serde_json::to_value(result).unwrap_or_default()),
            }
        }
        _ => TaskPayload::Failed {
            error: object(json!({"code": -32603, "message": outcome["failed"]})),
        },
    };
    DetailedTask::new(task_view(t), payload)
}

/// `ms` since the epoch as an ISO 8601 UTC timestamp (what MCP's task times are).
fn iso8601(ms: i64) -> String {
    // Days to a civil date: Howard Hinnant's algorithm (proleptic Gregorian calendar).
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1_000 % 60,
        rem % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn task_times_are_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_796_592_724_218), "2026-12-06T21:32:04.218Z");
    }
}
