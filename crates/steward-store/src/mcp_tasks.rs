//! Tool calls made through `/mcp` that became tasks (the MCP tasks extension).

use crate::sql::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct McpTaskRecord {
    pub id: String,
    /// The agent that made the call: the only one that may read or cancel it.
    pub agent: String,
    pub tool: String,
    /// `working`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// JSON once it ended; empty while working.
    pub outcome: String,
    /// The node running it.
    pub node: String,
    pub cancel_requested: i64,
    pub created_at: Millis,
    /// When it changed, or when its node last said it is still running it.
    pub updated_at: Millis,
    /// The call's arguments (JSON) while it works, to run it again if it is idempotent and its
    /// node stops; cleared once it ended.
    pub arguments: String,
    /// 1 when the tool said this call is idempotent (it may be run again).
    pub idempotent: i64,
    /// How many times it was started.
    pub attempts: i64,
}

#[async_trait]
pub trait McpTaskStore: Send + Sync {
    async fn put_mcp_task(&self, task: &McpTaskRecord) -> Result<()>;
    async fn mcp_task(&self, id: &str) -> Result<Option<McpTaskRecord>>;
    /// Ends a task still working (its arguments are forgotten): whether it was.
    async fn finish_mcp_task(
        &self,
        id: &str,
        status: &str,
        outcome: &str,
        now: Millis,
    ) -> Result<bool>;
    /// Says the node running a task is still at it.
    async fn touch_mcp_task(&self, id: &str, now: Millis) -> Result<()>;
    /// Asks for a working task to be cancelled: whether it is working.
    async fn request_mcp_task_cancel(&self, id: &str, now: Millis) -> Result<bool>;
    /// The tasks `node` has working.
    async fn working_mcp_tasks(&self, node: &str) -> Result<Vec<McpTaskRecord>>;
    /// Forgets tasks that ended before `before`: how many.
    async fn prune_mcp_tasks(&self, before: Millis) -> Result<u64>;
    /// Asks whichever node runs `agent`'s call `request_id` to give it up (an earlier-revision
    /// client's `notifications/cancelled` that reached another node).
    async fn request_mcp_call_cancel(
        &self,
        agent: &str,
        request_id: &str,
        at: Millis,
    ) -> Result<()>;
    /// The calls asked to be given up since `since`: (agent, request id, when asked).
    async fn mcp_call_cancels(&self, since: Millis) -> Result<Vec<(String, String, Millis)>>;
    /// Forgets requests older than `before`: how many.
    async fn prune_mcp_call_cancels(&self, before: Millis) -> Result<u64>;
    /// Takes over a working task whose node stopped, to run it again: whether this node got it
    /// (`seen` is the `updated_at` read, so of two nodes only one does).
    async fn claim_mcp_task(&self, id: &str, seen: Millis, node: &str, now: Millis)
        -> Result<bool>;
    /// Ends (as `failed`, with `outcome`) working tasks silent since before `before`, and
    /// idempotent ones — which their caller's next look runs again — silent since before
    /// `idempotent_before`: how many.
    async fn settle_silent_mcp_tasks(
        &self,
        before: Millis,
        idempotent_before: Millis,
        outcome: &str,
        now: Millis,
    ) -> Result<u64>;
}

const COLUMNS: &str = "id, agent, tool, status, outcome, node, cancel_requested, created_at, \
     updated_at, arguments, idempotent, attempts";

macro_rules! impl_mcp_tasks {
    ($store:ty) => {
        #[async_trait]
        impl McpTaskStore for $store {
            async fn put_mcp_task(&self, t: &McpTaskRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO mcp_tasks (id, agent, tool, status, outcome, node, cancel_requested, created_at, \
                       updated_at, arguments, idempotent, attempts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&t.id)
                .bind(&t.agent)
                .bind(&t.tool)
                .bind(&t.status)
                .bind(&t.outcome)
                .bind(&t.node)
                .bind(t.cancel_requested)
                .bind(t.created_at)
                .bind(t.updated_at)
                .bind(&t.arguments)
                .bind(t.idempotent)
                .bind(t.attempts)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn mcp_task(&self, id: &str) -> Result<Option<McpTaskRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM mcp_tasks WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.write)
                    .await?)
            }

            async fn finish_mcp_task(&self, id: &str, status: &str, outcome: &str, now: Millis) -> Result<bool> {
                Ok(sqlx::query(
                    "UPDATE mcp_tasks SET status = $2, outcome = $3, updated_at = $4, arguments = '' \
                     WHERE id = $1 AND status = 'working'",
                )
                .bind(id)
                .bind(status)
                .bind(outcome)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn touch_mcp_task(&self, id: &str, now: Millis) -> Result<()> {
                sqlx::query("UPDATE mcp_tasks SET updated_at = $2 WHERE id = $1 AND status = 'working'")
                    .bind(id)
                    .bind(now)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn request_mcp_task_cancel(&self, id: &str, now: Millis) -> Result<bool> {
                Ok(sqlx::query(
                    "UPDATE mcp_tasks SET cancel_requested = 1, updated_at = $2 \
                     WHERE id = $1 AND status = 'working'",
                )
                .bind(id)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn working_mcp_tasks(&self, node: &str) -> Result<Vec<McpTaskRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM mcp_tasks WHERE node = $1 AND status = 'working' ORDER BY id"
                ))
                .bind(node)
                .fetch_all(&self.read)
                .await?)
            }

            async fn prune_mcp_tasks(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM mcp_tasks WHERE status <> 'working' AND updated_at < $1")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }

            async fn request_mcp_call_cancel(&self, agent: &str, request_id: &str, at: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO mcp_call_cancels (agent, request_id, at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(agent)
                .bind(request_id)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn mcp_call_cancels(&self, since: Millis) -> Result<Vec<(String, String, Millis)>> {
                Ok(sqlx::query_as(
                    "SELECT agent, request_id, at FROM mcp_call_cancels WHERE at >= $1 ORDER BY at, agent, request_id",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?)
            }

            async fn prune_mcp_call_cancels(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM mcp_call_cancels WHERE at < $1")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }

            async fn claim_mcp_task(&self, id: &str, seen: Millis, node: &str, now: Millis) -> Result<bool> {
                Ok(sqlx::query(
                    "UPDATE mcp_tasks SET node = $3, updated_at = $4, attempts = attempts + 1 \
                     WHERE id = $1 AND status = 'working' AND updated_at = $2",
                )
                .bind(id)
                .bind(seen)
                .bind(node)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn settle_silent_mcp_tasks(
                &self,
                before: Millis,
                idempotent_before: Millis,
                outcome: &str,
                now: Millis,
            ) -> Result<u64> {
                Ok(sqlx::query(
                    "UPDATE mcp_tasks SET status = 'failed', outcome = $3, updated_at = $4, arguments = '' \
                     WHERE status = 'working' \
                       AND ((idempotent = 0 AND updated_at < $1) OR updated_at < $2)",
                )
                .bind(before)
                .bind(idempotent_before)
                .bind(outcome)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected())
            }
        }
    };
}

impl_mcp_tasks!(SqliteStore);
impl_mcp_tasks!(PgStore);
