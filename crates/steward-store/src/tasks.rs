//! Task queues, for both backends: enqueue (deduplicated by key), lease in priority order and
//! fairly between tenants within each queue's concurrency limits, heartbeat, complete, fail
//! (retried with backoff, then dead-lettered with the reason), requeue; and tasks leased to
//! managed runs, created in the same transaction as their run so a task never gets two.

use async_trait::async_trait;
use steward_types::{AgentName, Millis, RunId};

use crate::{PgStore, Result, SqliteStore};

pub const TASK_PENDING: &str = "pending";
pub const TASK_LEASED: &str = "leased";
pub const TASK_DONE: &str = "done";
pub const TASK_DEAD: &str = "dead";

/// A queue's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    /// Tasks leased at once, all workers together (`None`: no limit).
    pub max_in_flight: Option<i64>,
    /// Tasks leased at once by one worker (or one agent's runs).
    pub per_worker: Option<i64>,
    /// Leases a task gets before it is dead-lettered.
    pub max_attempts: i64,
    /// Backoff before the n-th retry: `retry_base_ms × 2^(n-1)`, with jitter.
    pub retry_base_ms: i64,
    /// How long a worker's lease lasts without a heartbeat.
    pub lease_ms: i64,
}

impl QueueConfig {
    pub fn named(name: &str) -> Self {
        QueueConfig {
            name: name.to_string(),
            max_in_flight: None,
            per_worker: None,
            max_attempts: 3,
            retry_base_ms: 1000,
            lease_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: String,
    pub queue: String,
    pub tenant: String,
    pub priority: i64,
    pub payload: String,
    pub dedup_key: Option<String>,
    pub run_at: Millis,
    pub deadline: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct TaskRecord {
    pub id: String,
    pub queue: String,
    pub tenant: String,
    /// The task's place among its tenant's tasks in the queue.
    pub tenant_seq: i64,
    pub priority: i64,
    pub payload: String,
    pub dedup_key: Option<String>,
    pub state: String,
    pub run_at: Millis,
    pub deadline: Option<Millis>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub run_id: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub enqueued_at: Millis,
    pub leased_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

pub(crate) const TASK_COLUMNS: &str =
    "id, queue, tenant, tenant_seq, priority, payload, dedup_key, state, run_at, \
    deadline, attempts, max_attempts, lease_owner, lease_until, run_id, result, error, \
    enqueued_at, leased_at, finished_at";

/// Leases up to `$5` ready tasks of queue `$4` to `$1` until `$2`, at `$3`: highest priority
/// first, then each tenant's n-th task before anyone's (n+1)-th. `lock` is the dialect's row
/// lock for the tasks picked.
pub(crate) fn lease_ready_sql(lock: &str) -> String {
    format!(
        "UPDATE tasks SET state = 'leased', lease_owner = $1, lease_until = $2, \
           leased_at = $3, attempts = attempts + 1, updated_at = $3 \
         WHERE id IN (SELECT id FROM tasks WHERE queue = $4 AND state = 'pending' AND run_at <= $3 \
           AND (deadline IS NULL OR deadline > $3) \
           ORDER BY priority DESC, tenant_seq, enqueued_at LIMIT $5 {lock}) \
         RETURNING {TASK_COLUMNS}"
    )
}

/// Sorts leased tasks as they are handed out: highest priority first, then each tenant's n-th
/// task before anyone's (n+1)-th, then the oldest.
pub(crate) fn in_dispatch_order(tasks: &mut [TaskRecord]) {
    tasks.sort_by(|a, b| {
        (b.priority, a.tenant_seq, a.enqueued_at).cmp(&(a.priority, b.tenant_seq, b.enqueued_at))
    });
}

/// Ends leased task `$6` as `$1` (`done` or `failed`) if its report matches the lease in force
/// (owner `$7`, attempt `$8`, not expired at `$5`): a failure is retried at `$2` while attempts
/// remain, else dead-lettered.
pub(crate) const FAIL_TASK: &str = "UPDATE tasks SET \
     state = CASE WHEN $1 = 'done' THEN 'done' \
                  WHEN $2 IS NOT NULL AND attempts < max_attempts THEN 'pending' \
                  ELSE 'dead' END, \
     run_at = COALESCE($2, run_at), result = $3, error = $4, \
     lease_owner = NULL, lease_until = NULL, \
     finished_at = CASE WHEN $1 = 'done' OR $2 IS NULL OR attempts >= max_attempts THEN $5 ELSE NULL END, \
     updated_at = $5 \
   WHERE id = $6 AND state = 'leased' AND lease_owner = $7 AND attempts = $8 AND run_id IS NULL \
     AND lease_until >= $5";

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub queue: Option<String>,
    pub state: Option<String>,
    pub limit: i64,
}

/// Enqueues, lease requests and task ends to commit together.
#[derive(Clone, Debug, Default)]
pub struct TaskBatch {
    pub enqueues: Vec<(NewTask, Millis)>,
    pub leases: Vec<LeaseRequest>,
    pub finishes: Vec<(TaskFinish, Millis)>,
}

/// What each item of a [`TaskBatch`] came to, in its order.
#[derive(Clone, Debug, Default)]
pub struct TaskBatchResult {
    /// Each stored task and whether it is new (false: its dedup key was there).
    pub enqueued: Vec<(TaskRecord, bool)>,
    pub leased: Vec<Vec<TaskRecord>>,
    pub finished: Vec<bool>,
}

/// A worker asking for up to `max` tasks of `queue`.
#[derive(Clone, Debug)]
pub struct LeaseRequest {
    pub queue: String,
    pub worker: String,
    pub max: i64,
    pub now: Millis,
}

/// Attempt `attempt` of task `id`, leased to `worker`, ended as `end` says.
#[derive(Clone, Debug)]
pub struct TaskFinish {
    pub id: String,
    pub worker: String,
    pub attempt: i64,
    pub end: TaskEnd,
}

/// How a leased task ended, as its worker reports it.
#[derive(Clone, Debug)]
pub enum TaskEnd {
    Done {
        result: String,
    },
    /// Retried at `retry_at` while attempts remain (never, when `None`), else dead-lettered.
    Failed {
        error: String,
        retry_at: Option<Millis>,
    },
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    async fn put_queue(&self, q: &QueueConfig, now: Millis) -> Result<()>;
    /// The queue's settings (the defaults for a queue never configured).
    async fn queue(&self, name: &str) -> Result<QueueConfig>;
    async fn queues(&self) -> Result<Vec<QueueConfig>>;
    /// In one transaction: enqueues each task (at its time) unless its queue holds one with the
    /// same dedup key; then serves each lease request — up to `max` ready tasks of `queue` to
    /// `worker` for the queue's lease time, highest priority first and fairly between tenants,
    /// within the queue's limits; then ends each attempt (false when the worker's lease was
    /// lost — expired and taken by another worker, or ended already — and nothing changed).
    async fn task_batch(&self, batch: &TaskBatch) -> Result<TaskBatchResult>;
    /// Whether [`task_batch`](Self::task_batch) does its work — fsync included — on the thread
    /// that polls it: its caller should then give it a thread of its own.
    fn writes_on_calling_thread(&self) -> bool {
        false
    }
    /// Leases ready tasks of `queue` to new runs of `agent` (one each, created in the same
    /// transaction, input = the payload) until `pool` of the agent's tasks are leased, counted
    /// inside that transaction (and, on PostgreSQL, under a lock of the agent's pool): the
    /// limit holds across every node. The run finishes the task.
    async fn lease_tasks_to_runs(
        &self,
        queue: &str,
        agent: &AgentName,
        agent_version: i64,
        pool: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>>;
    /// Extends `worker`'s lease on attempt `attempt` of task `id`; false when it is lost.
    async fn heartbeat_task(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        now: Millis,
    ) -> Result<bool>;
    /// Ends the task leased to run `run`, if any; returns it.
    async fn finish_run_task(
        &self,
        run: &RunId,
        end: &TaskEnd,
        now: Millis,
    ) -> Result<Option<TaskRecord>>;
    /// The task leased to run `run`, if any.
    async fn task_of_run(&self, run: &RunId) -> Result<Option<TaskRecord>>;
    /// Tasks leased to runs that have ended, with each run's state and result or error (so a
    /// run that ended while its node died still finishes its task).
    async fn tasks_of_ended_runs(&self, limit: i64) -> Result<Vec<(TaskRecord, String, String)>>;
    /// Expired worker leases go back to pending (or dead, out of attempts); pending tasks past
    /// their deadline go dead. Returns how many tasks moved.
    async fn sweep_tasks(&self, now: Millis) -> Result<u64>;
    /// A dead task back to pending, its attempts reset; `None` when it is not dead.
    async fn requeue_task(&self, id: &str, now: Millis) -> Result<Option<TaskRecord>>;
    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>>;
    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>>;
    /// Per state, how many tasks `queue` holds.
    async fn queue_depths(&self, queue: &str) -> Result<Vec<(String, i64)>>;
    /// When the oldest task of `queue` ready by `now` was enqueued.
    async fn oldest_ready(&self, queue: &str, now: Millis) -> Result<Option<Millis>>;
    /// Tasks of agents' runs currently leased, by the agent (`run:<agent>` owners).
    async fn leased_to_agent(&self, queue: &str, agent: &AgentName) -> Result<i64>;
}

/// A run's input from its task's payload: a JSON string as the text it holds, anything else
/// as JSON.
fn run_input(payload: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::String(s)) => s,
        _ => payload.to_string(),
    }
}

/// The lease owner of tasks given to an agent's runs.
pub fn agent_owner(agent: &AgentName) -> String {
    format!("agent:{}", agent.as_str())
}

macro_rules! impl_tasks {
    (
        $store:ty,
        $db:ty,
        lock = $lock:literal,
        queue_lock = $queue_lock:literal,
        pool_lock = $pool_lock:literal
    ) => {
        impl $store {
            /// How many tasks `worker` may lease from `q` now (at most `max`), within the queue's
            /// limits; on PostgreSQL the queue's row stays locked to the end of the transaction,
            /// so the limits hold across nodes.
            async fn room(
                tx: &mut sqlx::Transaction<'_, $db>,
                q: &QueueConfig,
                worker: &str,
                max: i64,
            ) -> Result<i64> {
                let mut room = max;
                if q.max_in_flight.is_none() && q.per_worker.is_none() {
                    return Ok(room);
                }
                sqlx::query(concat!("SELECT name FROM queues WHERE name = $1 ", $queue_lock))
                    .bind(&q.name)
                    .fetch_optional(&mut **tx)
                    .await?;
                if let Some(limit) = q.max_in_flight {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM tasks WHERE queue = $1 AND state = 'leased'",
                    )
                    .bind(&q.name)
                    .fetch_one(&mut **tx)
                    .await?;
                    room = room.min(limit - n);
                }
                if let Some(limit) = q.per_worker {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM tasks WHERE queue = $1 AND state = 'leased' AND lease_owner = $2",
                    )
                    .bind(&q.name)
                    .bind(worker)
                    .fetch_one(&mut **tx)
                    .await?;
                    room = room.min(limit - n);
                }
                Ok(room)
            }

            /// Leases up to `room` ready tasks of `q` to `owner` in one statement: highest
            /// priority first, then each tenant's n-th task before anyone's (n+1)-th.
            async fn lease_ready(
                tx: &mut sqlx::Transaction<'_, $db>,
                q: &QueueConfig,
                owner: &str,
                until: Option<Millis>,
                room: i64,
                now: Millis,
            ) -> Result<Vec<TaskRecord>> {
                if room <= 0 {
                    return Ok(Vec::new());
                }
                let mut leased: Vec<TaskRecord> = sqlx::query_as(&lease_ready_sql($lock))
                .bind(owner)
                .bind(until)
                .bind(now)
                .bind(&q.name)
                .bind(room)
                .fetch_all(&mut **tx)
                .await?;
                in_dispatch_order(&mut leased);
                Ok(leased)
            }

            /// The settings of every queue `batch` names.
            async fn configs(&self, batch: &TaskBatch) -> Result<std::collections::HashMap<String, QueueConfig>> {
                let mut queues = std::collections::HashMap::new();
                let names = batch
                    .enqueues
                    .iter()
                    .map(|(t, _)| &t.queue)
                    .chain(batch.leases.iter().map(|r| &r.queue));
                for name in names {
                    if !queues.contains_key(name) {
                        queues.insert(name.clone(), self.queue(name).await?);
                    }
                }
                Ok(queues)
            }

            fn end_columns(end: &TaskEnd) -> (&'static str, Option<&str>, Option<&str>, Option<Millis>) {
                match end {
                    TaskEnd::Done { result } => ("done", Some(result.as_str()), None, None),
                    TaskEnd::Failed { error, retry_at } => ("failed", None, Some(error.as_str()), *retry_at),
                }
            }
        }

        #[async_trait]
        impl TaskStore for $store {
            async fn put_queue(&self, q: &QueueConfig, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO queues (name, max_in_flight, per_worker, max_attempts, retry_base_ms, lease_ms, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (name) DO UPDATE SET max_in_flight = $2, per_worker = $3, \
                       max_attempts = $4, retry_base_ms = $5, lease_ms = $6, updated_at = $7",
                )
                .bind(&q.name)
                .bind(q.max_in_flight)
                .bind(q.per_worker)
                .bind(q.max_attempts)
                .bind(q.retry_base_ms)
                .bind(q.lease_ms)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn queue(&self, name: &str) -> Result<QueueConfig> {
                let row: Option<(Option<i64>, Option<i64>, i64, i64, i64)> = sqlx::query_as(
                    "SELECT max_in_flight, per_worker, max_attempts, retry_base_ms, lease_ms FROM queues WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
                Ok(match row {
                    Some((max_in_flight, per_worker, max_attempts, retry_base_ms, lease_ms)) => QueueConfig {
                        name: name.to_string(),
                        max_in_flight,
                        per_worker,
                        max_attempts,
                        retry_base_ms,
                        lease_ms,
                    },
                    None => QueueConfig::named(name),
                })
            }

            async fn queues(&self) -> Result<Vec<QueueConfig>> {
                // A queue never configured has the defaults. Typed NULLs: PostgreSQL resolves an
                // untyped one under DISTINCT as text, which no UNION with BIGINT accepts.
                let d = QueueConfig::named("");
                let rows: Vec<(String, Option<i64>, Option<i64>, i64, i64, i64)> = sqlx::query_as(
                    "SELECT name, max_in_flight, per_worker, max_attempts, retry_base_ms, lease_ms FROM queues \
                     UNION SELECT DISTINCT queue, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                       CAST($1 AS BIGINT), CAST($2 AS BIGINT), CAST($3 AS BIGINT) FROM tasks \
                       WHERE queue NOT IN (SELECT name FROM queues) ORDER BY 1",
                )
                .bind(d.max_attempts)
                .bind(d.retry_base_ms)
                .bind(d.lease_ms)
                .fetch_all(&self.read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(name, max_in_flight, per_worker, max_attempts, retry_base_ms, lease_ms)| QueueConfig {
                        name,
                        max_in_flight,
                        per_worker,
                        max_attempts,
                        retry_base_ms,
                        lease_ms,
                    })
                    .collect())
            }

            async fn task_batch(&self, batch: &TaskBatch) -> Result<TaskBatchResult> {
                let queues = self.configs(batch).await?;
                self.task_batch_now(batch, &queues).await
            }

            fn writes_on_calling_thread(&self) -> bool {
                self.direct_task_writes()
            }

            async fn lease_tasks_to_runs(
                &self,
                queue: &str,
                agent: &AgentName,
                agent_version: i64,
                pool: i64,
                now: Millis,
            ) -> Result<Vec<TaskRecord>> {
                let q = self.queue(queue).await?;
                let owner = agent_owner(agent);
                let mut tx = self.begin_write().await?;
                // One pool's leases at a time across nodes, so its count below is the truth
                // until commit (SQLite's writer is one at a time already).
                sqlx::query($pool_lock)
                    .bind(format!("pool:{queue}:{owner}"))
                    .execute(&mut *tx)
                    .await?;
                let (busy,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM tasks WHERE queue = $1 AND state = 'leased' AND lease_owner = $2",
                )
                .bind(queue)
                .bind(&owner)
                .fetch_one(&mut *tx)
                .await?;
                let room = Self::room(&mut tx, &q, &owner, pool - busy).await?;
                let mut leased = Self::lease_ready(&mut tx, &q, &owner, None, room, now).await?;
                if leased.is_empty() {
                    return Ok(leased);
                }
                for t in &mut leased {
                    let run = RunId::from_uuid(uuid::Uuid::now_v7());
                    sqlx::query("UPDATE tasks SET run_id = $1 WHERE id = $2")
                        .bind(run.as_str())
                        .bind(&t.id)
                        .execute(&mut *tx)
                        .await?;
                    t.run_id = Some(run.as_str().to_string());
                    sqlx::query(
                        "INSERT INTO runs (id, agent, agent_version, parent_id, input, state, created_at, updated_at, task_id) \
                         VALUES ($1, $2, $3, NULL, $4, 'queued', $5, $5, $6)",
                    )
                    .bind(&t.run_id)
                    .bind(agent.as_str())
                    .bind(agent_version)
                    .bind(run_input(&t.payload))
                    .bind(now)
                    .bind(&t.id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                self.wake(crate::WAKE_RUN).await;
                Ok(leased)
            }

            async fn heartbeat_task(&self, id: &str, worker: &str, attempt: i64, now: Millis) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE tasks SET lease_until = $1 + (SELECT COALESCE(MAX(lease_ms), 30000) FROM queues WHERE name = tasks.queue), \
                       updated_at = $1 \
                     WHERE id = $2 AND state = 'leased' AND lease_owner = $3 AND attempts = $4 AND run_id IS NULL \
                       AND lease_until >= $1",
                )
                .bind(now)
                .bind(id)
                .bind(worker)
                .bind(attempt)
                .execute(&self.write)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn finish_run_task(&self, run: &RunId, end: &TaskEnd, now: Millis) -> Result<Option<TaskRecord>> {
                let (how, result, error, retry_at) = Self::end_columns(end);
                let t: Option<TaskRecord> = sqlx::query_as(&format!(
                    "UPDATE tasks SET \
                       state = CASE WHEN $1 = 'done' THEN 'done' \
                                    WHEN $2 IS NOT NULL AND attempts < max_attempts THEN 'pending' \
                                    ELSE 'dead' END, \
                       run_at = COALESCE($2, run_at), result = $3, error = $4, \
                       lease_owner = NULL, lease_until = NULL, run_id = NULL, \
                       finished_at = CASE WHEN $1 = 'done' OR $2 IS NULL OR attempts >= max_attempts THEN $5 ELSE NULL END, \
                       updated_at = $5 \
                     WHERE run_id = $6 AND state = 'leased' RETURNING {TASK_COLUMNS}"
                ))
                .bind(how)
                .bind(retry_at)
                .bind(result)
                .bind(error)
                .bind(now)
                .bind(run.as_str())
                .fetch_optional(&self.write)
                .await?;
                Ok(t)
            }

            async fn task_of_run(&self, run: &RunId) -> Result<Option<TaskRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = $1 AND state = 'leased'"
                ))
                .bind(run.as_str())
                .fetch_optional(&self.read)
                .await?)
            }

            async fn tasks_of_ended_runs(&self, limit: i64) -> Result<Vec<(TaskRecord, String, String)>> {
                let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT t.id, r.state, r.result, r.error_message FROM tasks t JOIN runs r ON r.id = t.run_id \
                     WHERE t.state = 'leased' AND r.state IN ('succeeded', 'failed', 'cancelled') LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for (id, state, result, error) in rows {
                    if let Some(t) = self.get_task(&id).await? {
                        let detail = if state == "succeeded" { result } else { error };
                        out.push((t, state, detail.unwrap_or_default()));
                    }
                }
                Ok(out)
            }

            async fn sweep_tasks(&self, now: Millis) -> Result<u64> {
                let lost = sqlx::query(
                    "UPDATE tasks SET \
                       state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END, \
                       error = 'the worker stopped answering (its lease expired)', \
                       finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
                       lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                     WHERE state = 'leased' AND run_id IS NULL AND lease_until < $1",
                )
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected();
                let late = sqlx::query(
                    "UPDATE tasks SET state = 'dead', error = 'its deadline passed before a worker took it', \
                       finished_at = $1, updated_at = $1 \
                     WHERE state = 'pending' AND deadline IS NOT NULL AND deadline <= $1",
                )
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected();
                Ok(lost + late)
            }

            async fn requeue_task(&self, id: &str, now: Millis) -> Result<Option<TaskRecord>> {
                Ok(sqlx::query_as(&format!(
                    "UPDATE tasks SET state = 'pending', attempts = 0, run_at = $1, deadline = NULL, \
                       error = NULL, finished_at = NULL, updated_at = $1 \
                     WHERE id = $2 AND state = 'dead' RETURNING {TASK_COLUMNS}"
                ))
                .bind(now)
                .bind(id)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1"));
                if let Some(q) = &f.queue {
                    qb.push(" AND queue = ").push_bind(q.clone());
                }
                if let Some(s) = &f.state {
                    qb.push(" AND state = ").push_bind(s.clone());
                }
                qb.push(" ORDER BY enqueued_at DESC, id DESC LIMIT ").push_bind(f.limit.clamp(1, 1000));
                Ok(qb.build_query_as().fetch_all(&self.read).await?)
            }

            async fn queue_depths(&self, queue: &str) -> Result<Vec<(String, i64)>> {
                Ok(sqlx::query_as("SELECT state, COUNT(*) FROM tasks WHERE queue = $1 GROUP BY state ORDER BY state")
                    .bind(queue)
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn oldest_ready(&self, queue: &str, now: Millis) -> Result<Option<Millis>> {
                let (at,): (Option<i64>,) = sqlx::query_as(
                    "SELECT MIN(enqueued_at) FROM tasks WHERE queue = $1 AND state = 'pending' AND run_at <= $2",
                )
                .bind(queue)
                .bind(now)
                .fetch_one(&self.read)
                .await?;
                Ok(at)
            }

            async fn leased_to_agent(&self, queue: &str, agent: &AgentName) -> Result<i64> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM tasks WHERE queue = $1 AND state = 'leased' AND lease_owner = $2",
                )
                .bind(queue)
                .bind(agent_owner(agent))
                .fetch_one(&self.read)
                .await?;
                Ok(n)
            }
        }
    };
}

impl_tasks!(
    SqliteStore,
    sqlx::Sqlite,
    lock = "",
    queue_lock = "",
    pool_lock = "SELECT $1"
);
impl_tasks!(
    PgStore,
    sqlx::Postgres,
    lock = "FOR UPDATE SKIP LOCKED",
    queue_lock = "FOR UPDATE",
    pool_lock = "SELECT pg_advisory_xact_lock(hashtext($1))"
);

impl SqliteStore {
    fn direct_task_writes(&self) -> bool {
        true
    }

    /// On the one-thread writer (`sqlite_direct`), holding the store's write connection.
    async fn task_batch_now(
        &self,
        batch: &TaskBatch,
        queues: &std::collections::HashMap<String, QueueConfig>,
    ) -> Result<TaskBatchResult> {
        let _writing = self.write.acquire().await?;
        self.direct.task_batch(batch, queues)
    }
}

impl PgStore {
    fn direct_task_writes(&self) -> bool {
        false
    }

    async fn enqueue_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        tasks: &[(NewTask, Millis)],
        queues: &std::collections::HashMap<String, QueueConfig>,
    ) -> Result<Vec<(TaskRecord, bool)>> {
        use std::collections::HashMap;
        let mut out: Vec<Option<(TaskRecord, bool)>> = vec![None; tasks.len()];
        // A task with a dedup key the queue holds is that task.
        for (i, (t, _)) in tasks.iter().enumerate() {
            if let Some(key) = &t.dedup_key {
                let found: Option<TaskRecord> = sqlx::query_as(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE queue = $1 AND dedup_key = $2"
                ))
                .bind(&t.queue)
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
                out[i] = found.map(|f| (f, false));
            }
        }
        let mut fresh: Vec<usize> = (0..tasks.len()).filter(|i| out[*i].is_none()).collect();
        // Two tasks of one batch with the same key: the first is enqueued, the second
        // is it.
        let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
        let mut same_as: Vec<(usize, usize)> = Vec::new();
        fresh.retain(|&i| match &tasks[i].0.dedup_key {
            Some(k) => match keys.get(&(tasks[i].0.queue.as_str(), k.as_str())) {
                Some(&first) => {
                    same_as.push((i, first));
                    false
                }
                None => {
                    keys.insert((tasks[i].0.queue.as_str(), k.as_str()), i);
                    true
                }
            },
            None => true,
        });
        // Each tenant's places: every (queue, tenant) of the batch advanced in one
        // statement (each statement is a round trip to the database's thread).
        let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for &i in &fresh {
            groups
                .entry((tasks[i].0.queue.as_str(), tasks[i].0.tenant.as_str()))
                .or_default()
                .push(i);
        }
        let mut seq = vec![0i64; tasks.len()];
        let keys: Vec<(&(&str, &str), &Vec<usize>)> = groups.iter().collect();
        for chunk in keys.chunks(256) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO task_tenants (queue, tenant, next_seq) ",
            );
            qb.push_values(chunk, |mut b, ((queue, tenant), members)| {
                b.push_bind(queue.to_string())
                    .push_bind(tenant.to_string())
                    .push_bind(members.len() as i64);
            });
            qb.push(
                " ON CONFLICT (queue, tenant) DO UPDATE SET next_seq = task_tenants.next_seq + excluded.next_seq \
                 RETURNING queue, tenant, next_seq",
            );
            let rows: Vec<(String, String, i64)> = qb.build_query_as().fetch_all(&mut **tx).await?;
            for (queue, tenant, last) in rows {
                let members = groups
                    .get(&(queue.as_str(), tenant.as_str()))
                    .ok_or_else(|| {
                        crate::Error::Corrupt(format!("tenant {tenant} of {queue} was not counted"))
                    })?;
                let k = members.len() as i64;
                for (n, &i) in members.iter().enumerate() {
                    seq[i] = last - k + 1 + n as i64;
                }
            }
        }
        // The tasks, many rows to a statement. A unique violation (another node
        // enqueued the same key meanwhile) fails the transaction; the writer then
        // enqueues each task on its own, and the retry finds the other node's task.
        for chunk in fresh.chunks(256) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO tasks (id, queue, tenant, tenant_seq, priority, payload, dedup_key, state, \
                   run_at, deadline, attempts, max_attempts, enqueued_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, &i| {
                let (t, now) = &tasks[i];
                b.push_bind(t.id.clone())
                    .push_bind(t.queue.clone())
                    .push_bind(t.tenant.clone())
                    .push_bind(seq[i])
                    .push_bind(t.priority)
                    .push_bind(t.payload.clone())
                    .push_bind(t.dedup_key.clone())
                    .push_bind(TASK_PENDING)
                    .push_bind(t.run_at)
                    .push_bind(t.deadline)
                    .push_bind(0i64)
                    .push_bind(queues.get(&t.queue).map_or(3, |q| q.max_attempts))
                    .push_bind(*now)
                    .push_bind(*now);
            });
            qb.push(format!(" RETURNING {TASK_COLUMNS}"));
            let rows: Vec<TaskRecord> = qb.build_query_as().fetch_all(&mut **tx).await?;
            let mut by_id: HashMap<String, TaskRecord> =
                rows.into_iter().map(|r| (r.id.clone(), r)).collect();
            for &i in chunk {
                let rec = by_id.remove(&tasks[i].0.id).ok_or_else(|| {
                    crate::Error::Corrupt(format!("task {} was not stored", tasks[i].0.id))
                })?;
                out[i] = Some((rec, true));
            }
        }
        for (i, first) in same_as {
            out[i] = out[first].clone().map(|(r, _)| (r, false));
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| crate::Error::Corrupt("a task was lost in its batch".into())))
            .collect()
    }

    async fn lease_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        requests: &[LeaseRequest],
        queues: &std::collections::HashMap<String, QueueConfig>,
    ) -> Result<Vec<Vec<TaskRecord>>> {
        let mut out = Vec::with_capacity(requests.len());
        // Queues this batch found nothing more ready in: later requests in the same
        // transaction would find nothing either.
        let mut drained: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for r in requests {
            if drained.contains(r.queue.as_str()) {
                out.push(Vec::new());
                continue;
            }
            let q = queues
                .get(&r.queue)
                .cloned()
                .unwrap_or_else(|| QueueConfig::named(&r.queue));
            let room = Self::room(tx, &q, &r.worker, r.max).await?;
            let leased =
                Self::lease_ready(tx, &q, &r.worker, Some(r.now + q.lease_ms), room, r.now).await?;
            if (leased.len() as i64) < room {
                drained.insert(&r.queue);
            }
            out.push(leased);
        }
        Ok(out)
    }

    async fn finish_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        ends: &[(TaskFinish, Millis)],
    ) -> Result<Vec<bool>> {
        let mut out = vec![false; ends.len()];
        // Completions, many to a statement; each must still hold its lease (owner, attempt,
        // and time). Reports of one task go to separate statements, in batch order, so a
        // stale worker's report can never stand in for the holder's: at most one matches
        // the lease, and once it has, the others find it gone.
        let done: Vec<usize> = (0..ends.len())
            .filter(|&i| matches!(ends[i].0.end, TaskEnd::Done { .. }))
            .collect();
        for round in Self::one_per_task(ends, &done) {
            for chunk in round.chunks(256) {
                let held = Self::complete_held(tx, ends, chunk).await?;
                for &i in chunk {
                    out[i] = held.contains(&ends[i].0.id);
                }
            }
        }
        // Failures one by one: each decides between a retry and the dead-letter queue.
        for (i, (f, now)) in ends.iter().enumerate() {
            if matches!(f.end, TaskEnd::Done { .. }) {
                continue;
            }
            let (how, result, error, retry_at) = Self::end_columns(&f.end);
            let n = sqlx::query(FAIL_TASK)
                .bind(how)
                .bind(retry_at)
                .bind(result)
                .bind(error)
                .bind(now)
                .bind(&f.id)
                .bind(&f.worker)
                .bind(f.attempt)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            out[i] = n == 1;
        }
        Ok(out)
    }

    /// `picked` (indexes into `ends`) split into rounds with each task at most once per
    /// round, keeping batch order: the n-th report of a task goes to round n.
    fn one_per_task(ends: &[(TaskFinish, Millis)], picked: &[usize]) -> Vec<Vec<usize>> {
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for &i in picked {
            let n = seen.entry(ends[i].0.id.as_str()).or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push(i);
            *n += 1;
        }
        rounds
    }

    /// Marks done the tasks of `chunk` (distinct ids) whose report matches a lease still
    /// in force; returns their ids.
    async fn complete_held(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        ends: &[(TaskFinish, Millis)],
        chunk: &[usize],
    ) -> Result<std::collections::HashSet<String>> {
        let now = chunk.iter().map(|&i| ends[i].1).max().unwrap_or_default();
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "UPDATE tasks SET state = 'done', result = CASE id",
        );
        for &i in chunk {
            let result = match &ends[i].0.end {
                TaskEnd::Done { result } => result.clone(),
                TaskEnd::Failed { .. } => String::new(),
            };
            qb.push(" WHEN ")
                .push_bind(ends[i].0.id.clone())
                .push(" THEN ")
                .push_bind(result);
        }
        qb.push(" END, error = NULL, lease_owner = NULL, lease_until = NULL, finished_at = ")
            .push_bind(now)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE state = 'leased' AND run_id IS NULL AND (");
        for (n, &i) in chunk.iter().enumerate() {
            let (f, at) = &ends[i];
            if n > 0 {
                qb.push(" OR ");
            }
            qb.push("(id = ")
                .push_bind(f.id.clone())
                .push(" AND lease_owner = ")
                .push_bind(f.worker.clone())
                .push(" AND attempts = ")
                .push_bind(f.attempt)
                .push(" AND lease_until >= ")
                .push_bind(*at)
                .push(")");
        }
        qb.push(") RETURNING id");
        let held: Vec<(String,)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        Ok(held.into_iter().map(|(id,)| id).collect())
    }

    async fn task_batch_now(
        &self,
        batch: &TaskBatch,
        queues: &std::collections::HashMap<String, QueueConfig>,
    ) -> Result<TaskBatchResult> {
        let mut tx = self.begin_write().await?;
        let enqueued = Self::enqueue_in(&mut tx, &batch.enqueues, queues).await?;
        let leased = Self::lease_in(&mut tx, &batch.leases, queues).await?;
        let finished = Self::finish_in(&mut tx, &batch.finishes).await?;
        tx.commit().await?;
        Ok(TaskBatchResult {
            enqueued,
            leased,
            finished,
        })
    }
}
