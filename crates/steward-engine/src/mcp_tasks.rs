//! Tool calls through `/mcp` that outlive their request (the MCP tasks extension): a call
//! that has not answered within [`TASK_AFTER`] becomes a task kept in the store, which the
//! agent that made it polls from any node, and may cancel. The node running it says so every
//! [`HEARTBEAT`]. A task whose node stopped saying so — it died, or restarted — is in doubt,
//! and the Kernel's rule for a step in doubt applies: a call its tool said is idempotent (or one
//! still waiting for its approval, which has not run at all) is run again, under the caller's
//! own authority, when its caller next asks for it; any other ended in doubt — the call may or
//! may not have taken effect, and the caller is told exactly that.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use steward_store::{McpTaskRecord, NewApproval, Store};
use tokio_util::sync::CancellationToken;

use crate::gateway::Approval;
use crate::{Clock, ToolCallError};

/// How long a call may take before it becomes a task (for callers that accept tasks).
pub const TASK_AFTER: Duration = Duration::from_secs(1);
/// How often the node running a task says it still is, and looks for a cancel request.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A working task whose node has been silent this long ended in doubt.
const SILENT_FOR_MS: i64 = 15_000;
/// How long an ended task is kept for its caller to read (then it is forgotten).
pub const KEPT_FOR_MS: i64 = 24 * 3_600_000;
/// How often ended tasks past [`KEPT_FOR_MS`] are looked for.
const PRUNE_EVERY_MS: i64 = 600_000;
/// How often a task waiting for approval looks at it.
const LOOK_AGAIN: Duration = Duration::from_millis(500);
/// How long a task to run again waits for its tool to be in the registry.
const TOOL_AWAITED_MS: i64 = 120_000;
/// How many times a task is started before one in doubt is given up (a call that kills the
/// node running it is not tried for ever).
const MAX_ATTEMPTS: i64 = 3;
/// What a caller is told of a task whose node stopped running it.
pub const IN_DOUBT: &str = "the node running this call stopped before it answered: the call may or may not have taken effect";

fn new_id() -> String {
    format!("task_{}", uuid::Uuid::now_v7().simple())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // One insert or removal under the lock: a panic leaves nothing half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This node's tasks.
pub struct McpTasks {
    store: Arc<dyn Store>,
    node: String,
    clock: Arc<dyn Clock>,
    /// The registry: whether a call is idempotent.
    tools: steward_tools::Tools,
    running: Mutex<HashMap<String, CancellationToken>>,
    last_pruned: Mutex<i64>,
}

impl McpTasks {
    pub fn new(
        store: Arc<dyn Store>,
        node: String,
        clock: Arc<dyn Clock>,
        tools: steward_tools::Tools,
    ) -> Arc<Self> {
        Arc::new(McpTasks {
            store,
            node,
            clock,
            tools,
            running: Mutex::new(HashMap::new()),
            last_pruned: Mutex::new(0),
        })
    }

    /// Ends tasks whose node stopped and that will not run again (idempotent ones are run
    /// again when their caller asks, unless nobody did for [`KEPT_FOR_MS`]), and forgets tasks
    /// that ended more than [`KEPT_FOR_MS`] ago (at most every [`PRUNE_EVERY_MS`]; any node
    /// may, the changes are the same).
    pub async fn prune(&self) -> steward_store::Result<()> {
        let now = self.clock.now_ms();
        {
            let mut last = lock(&self.last_pruned);
            if now - *last < PRUNE_EVERY_MS {
                return Ok(());
            }
            *last = now;
        }
        let outcome = json!({ "failed": IN_DOUBT }).to_string();
        self.store
            .settle_silent_mcp_tasks(now - SILENT_FOR_MS, now - KEPT_FOR_MS, &outcome, now)
            .await?;
        self.store.prune_mcp_tasks(now - KEPT_FOR_MS).await?;
        Ok(())
    }

    /// Tasks this node had working in an earlier life are in doubt: those that may run again
    /// are left for their caller's next look (marked silent from now on), the rest ended.
    pub async fn settle_earlier_life(&self) -> steward_store::Result<()> {
        let now = self.clock.now_ms();
        for t in self.store.working_mcp_tasks(&self.node).await? {
            if self.may_run_again(&t).await? {
                self.store
                    .touch_mcp_task(&t.id, now - SILENT_FOR_MS - 1)
                    .await?;
            } else {
                let outcome = json!({ "failed": IN_DOUBT }).to_string();
                self.store
                    .finish_mcp_task(&t.id, "failed", &outcome, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Whether task `t`, in doubt, may be run again: its call is idempotent, or it has not
    /// run at all (it waits for its approval); it was not asked to stop, nor tried too often.
    async fn may_run_again(&self, t: &McpTaskRecord) -> steward_store::Result<bool> {
        if t.cancel_requested != 0 || t.attempts >= MAX_ATTEMPTS || t.arguments.is_empty() {
            return Ok(false);
        }
        if t.idempotent != 0 {
            return Ok(true);
        }
        Ok(self
            .store
            .approval_for(&t.id, 0)
            .await?
            .is_some_and(|a| a.state == "pending"))
    }

    /// Makes the call `call` of `tool` with `args` (already running for `agent`, on `cancel`)
    /// a task, and keeps it running until it answers or is cancelled. Returns the task as
    /// stored.
    pub async fn adopt<F>(
        self: &Arc<Self>,
        agent: &str,
        (tool, args): (&str, &Value),
        call: F,
        cancel: CancellationToken,
    ) -> steward_store::Result<McpTaskRecord>
    where
        F: Future<Output = Result<Value, ToolCallError>> + Send + 'static,
    {
        self.adopt_as(new_id(), agent, (tool, args), call, cancel)
            .await
    }

    /// Makes a call that waits for a person's approval a task: the approval is asked (in
    /// `approvals`, for the task), and `call` runs with its id once it is given. Denied, the
    /// task's answer is the refusal; expired or cancelled, it ends without calling.
    #[allow(clippy::too_many_arguments)]
    pub async fn park<F, Fut>(
        self: &Arc<Self>,
        agent: &str,
        (tool, args): (&str, &Value),
        (approvers, policy_ids): (&str, &[String]),
        wait_ms: i64,
        cancel: CancellationToken,
        call: F,
    ) -> steward_store::Result<(McpTaskRecord, String)>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, ToolCallError>> + Send + 'static,
    {
        let id = new_id();
        let now = self.clock.now_ms();
        let asked = self
            .store
            .request_approval(
                &NewApproval {
                    id: format!("apr_{}", uuid::Uuid::now_v7().simple()),
                    run_id: id.clone(),
                    seq: 0,
                    approvers: approvers.to_string(),
                    action: "tool.call".into(),
                    resource: tool.to_string(),
                    policy_ids: serde_json::to_string(policy_ids).unwrap_or_default(),
                    expires_at: now + wait_ms,
                },
                now,
            )
            .await?;
        let waiting = approved_then(self.store.clone(), asked.id.clone(), cancel.clone(), call);
        let task = self
            .adopt_as(id, agent, (tool, args), waiting, cancel)
            .await?;
        Ok((task, asked.id))
    }

    /// The approval task `id` waits for, while it waits.
    pub async fn pending_approval(&self, id: &str) -> Option<(String, String)> {
        let a = self.store.approval_for(id, 0).await.ok()??;
        (a.state == "pending").then_some((a.id, a.approvers))
    }

    async fn adopt_as<F>(
        self: &Arc<Self>,
        id: String,
        agent: &str,
        (tool, args): (&str, &Value),
        call: F,
        cancel: CancellationToken,
    ) -> steward_store::Result<McpTaskRecord>
    where
        F: Future<Output = Result<Value, ToolCallError>> + Send + 'static,
    {
        let now = self.clock.now_ms();
        let idempotent = self.tools.get(tool).is_some_and(|t| t.idempotent(args));
        let task = McpTaskRecord {
            id,
            agent: agent.to_string(),
            tool: tool.to_string(),
            status: "working".into(),
            outcome: String::new(),
            node: self.node.clone(),
            cancel_requested: 0,
            created_at: now,
            updated_at: now,
            arguments: args.to_string(),
            idempotent: i64::from(idempotent),
            attempts: 1,
        };
        self.store.put_mcp_task(&task).await?;
        self.run(task.id.clone(), call, cancel);
        Ok(task)
    }

    /// Runs task `id`'s `call` here, saying so every [`HEARTBEAT`], until it answers or is
    /// cancelled; then stores its outcome.
    fn run<F>(self: &Arc<Self>, id: String, call: F, cancel: CancellationToken)
    where
        F: Future<Output = Result<Value, ToolCallError>> + Send + 'static,
    {
        lock(&self.running).insert(id.clone(), cancel.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let mut call = std::pin::pin!(call);
            let mut beat = tokio::time::interval(HEARTBEAT);
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = beat.tick() => {
                        let now = me.clock.now_ms();
                        let _ = me.store.touch_mcp_task(&id, now).await;
                        // A cancel asked through another node.
                        if let Ok(Some(t)) = me.store.mcp_task(&id).await {
                            if t.cancel_requested != 0 {
                                cancel.cancel();
                            }
                        }
                    }
                }
            };
            let (status, outcome) = match result {
                Ok(v) => ("completed", json!({ "ok": v })),
                Err(ToolCallError::Gateway(e)) => ("failed", json!({ "failed": e.to_string() })),
                Err(_) if cancel.is_cancelled() => ("cancelled", Value::Null),
                // The tool's own error is its answer (`isError`), as when it is not a task.
                Err(e) => ("completed", json!({ "error": e.to_string() })),
            };
            let now = me.clock.now_ms();
            if let Err(e) = me
                .store
                .finish_mcp_task(&id, status, &outcome.to_string(), now)
                .await
            {
                tracing::error!(task = %id, error = %e, "could not store a task's outcome");
            }
            lock(&me.running).remove(&id);
        });
    }

    /// Task `id`, if `agent` made it. A working task whose node has been silent too long is in
    /// doubt: run again here if it may be (`again` makes its call, from the tool's name, the
    /// arguments, the approval it has, on a cancellation token), else ended in doubt.
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        agent: &str,
        id: &str,
        again: F,
    ) -> steward_store::Result<Option<McpTaskRecord>>
    where
        F: FnOnce(String, Value, Approval, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, ToolCallError>> + Send + 'static,
    {
        let Some(t) = self.look(agent, id).await? else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        if t.status != "working" || now - t.updated_at <= SILENT_FOR_MS {
            return Ok(Some(t));
        }
        let may = self.may_run_again(&t).await?;
        // Just after a restart an upstream's tools are not back yet: the task waits for them
        // (a while) rather than fail for want of them.
        if may && self.tools.get(&t.tool).is_none() && now - t.updated_at < TOOL_AWAITED_MS {
            return Ok(Some(t));
        }
        if !may {
            let outcome = json!({ "failed": IN_DOUBT }).to_string();
            self.store
                .finish_mcp_task(id, "failed", &outcome, now)
                .await?;
        } else if self
            .store
            .claim_mcp_task(id, t.updated_at, &self.node, now)
            .await?
        {
            tracing::info!(task = %id, tool = %t.tool, attempt = t.attempts + 1, "running a task in doubt again");
            let args: Value = serde_json::from_str(&t.arguments).unwrap_or_default();
            let cancel = CancellationToken::new();
            let approval = self.store.approval_for(id, 0).await?;
            let call: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match approval {
                // Asked for: the call waits for it (or runs, if it was given).
                Some(a) => Box::pin(approved_then(self.store.clone(), a.id, cancel.clone(), {
                    let cancel = cancel.clone();
                    move |given| again(t.tool, args, Approval::Given(given), cancel)
                })),
                None => Box::pin(again(t.tool, args, Approval::Refuse, cancel.clone())),
            };
            self.run(id.to_string(), call, cancel);
        }
        // Whatever this node or another did meanwhile.
        self.store.mcp_task(id).await
    }

    /// Task `id` if `agent` made it, as stored.
    async fn look(&self, agent: &str, id: &str) -> steward_store::Result<Option<McpTaskRecord>> {
        Ok(self.store.mcp_task(id).await?.filter(|t| t.agent == agent))
    }

    /// Asks task `id` (if `agent` made it) to stop: at once when it runs here, else at its
    /// node's next heartbeat. Whether there was such a task still working.
    pub async fn cancel(&self, agent: &str, id: &str) -> steward_store::Result<bool> {
        let working = self
            .look(agent, id)
            .await?
            .is_some_and(|t| t.status == "working");
        if !working {
            return Ok(false);
        }
        // Flagged first (for a node running it elsewhere), then stopped here if it runs here:
        // stopped first, it could end before the flag and the flag would find it ended.
        self.store
            .request_mcp_task_cancel(id, self.clock.now_ms())
            .await?;
        if let Some(ct) = lock(&self.running).get(id) {
            ct.cancel();
        }
        // Cooperative, as the tasks extension says: it may have answered meanwhile.
        Ok(true)
    }
}

/// Waits for approval `approval` (until `stop`), then makes the call with it; denied or
/// expired, the call is not made and the answer says why.
async fn approved_then<F, Fut>(
    store: Arc<dyn Store>,
    approval: String,
    stop: CancellationToken,
    call: F,
) -> Result<Value, ToolCallError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Value, ToolCallError>>,
{
    loop {
        match store.get_approval(&approval).await {
            Ok(Some(a)) if a.state == "approved" => return call(approval).await,
            Ok(Some(a)) if a.state == "denied" => {
                return Err(ToolCallError::Forbidden(format!(
                    "{} denied the call: {}",
                    a.decided_by.unwrap_or_default(),
                    a.reason.unwrap_or_default()
                )))
            }
            Ok(Some(a)) if a.state == "expired" => {
                return Err(ToolCallError::Failed(
                    "nobody approved the call in time".into(),
                ))
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_AGAIN) => {}
            _ = stop.cancelled() => {
                return Err(ToolCallError::Failed("cancelled while waiting for approval".into()))
            }
        }
    }
}
