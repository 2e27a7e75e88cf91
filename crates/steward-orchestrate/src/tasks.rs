//! Task queues as the engine serves them. External workers lease tasks over the API (a lease
//! request waits up to its `wait_ms` for one to come: enqueues on this node wake it at once,
//! other nodes' within a poll), keep them with heartbeats, and complete or fail them; a failed
//! task is retried with exponential backoff and jitter until its queue's attempts run out, then
//! dead-lettered with the reason. Managed agents serve a queue by manifest (`spec.tasks`): the
//! maintenance loop leases tasks to new runs of the agent (in the same transaction as the runs,
//! so no task gets two) within the agent's concurrency, and a run's end finishes its task —
//! when the run ends, or, if its node died first, on the next pass of the loop.

use std::sync::Arc;
use std::time::Duration;
use steward_store::{AgentStore, TaskStore};

use serde_json::Value;
use steward_store::{
    LeaseRequest, NewTask, QueueConfig, RunUpdate, Store, TaskEnd, TaskFilter, TaskFinish,
    TaskRecord, TaskWriter, TASK_DEAD,
};
use steward_types::{AgentName, AgentSpec, RunId, RunState};
use tokio::sync::Notify;

use crate::{Error, Result};
use steward_types::clock::Clock;

/// Largest task payload (JSON text).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Longest a lease request waits for a task.
pub const MAX_WAIT_MS: u64 = 25_000;

pub struct Tasks {
    tasks: Arc<dyn TaskStore>,
    agents: Arc<dyn AgentStore>,
    clock: Arc<dyn Clock>,
    /// Enqueues and task ends, many to a commit.
    writer: TaskWriter,
    /// Wakes the upkeep loop: tasks for agents may be ready, or an agent's run freed a slot.
    upkeep: Notify,
    /// When expired leases and deadlines were last swept.
    last_sweep: std::sync::Mutex<i64>,
}

/// How often expired leases and passed deadlines are swept (lease times and deadlines are
/// honoured to within this).
const SWEEP_EVERY_MS: i64 = 1_000;

/// A task to enqueue, as the API takes it.
#[derive(Clone, Debug, Default)]
pub struct Enqueue {
    pub queue: String,
    pub payload: Value,
    pub tenant: Option<String>,
    pub priority: Option<i64>,
    pub dedup_key: Option<String>,
    /// Not leased before this many milliseconds from now.
    pub delay_ms: Option<i64>,
    /// Dead-lettered if no worker has taken it this many milliseconds from now.
    pub deadline_ms: Option<i64>,
}

/// Names of queues and tenants: 1-64 of `a-z A-Z 0-9 - _ . :`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{what} {name:?}: 1 to 64 of a-z A-Z 0-9 - _ . :"
        )))
    }
}

impl Tasks {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Tasks {
            writer: TaskWriter::start(store.clone()),
            tasks: store.clone(),
            agents: store.clone(),
            clock,
            upkeep: Notify::new(),
            last_sweep: std::sync::Mutex::new(0),
        }
    }

    pub async fn put_queue(&self, q: &QueueConfig) -> Result<()> {
        check_name("queue", &q.name)?;
        let positive = |v: Option<i64>| v.is_none_or(|n| n >= 1);
        if !positive(q.max_in_flight) || !positive(q.per_worker) {
            return Err(Error::InvalidRequest(
                "max_in_flight and per_worker: at least 1 (or absent: no limit)".into(),
            ));
        }
        if !(1..=100).contains(&q.max_attempts) {
            return Err(Error::InvalidRequest("max_attempts: from 1 to 100".into()));
        }
        if !(0..=86_400_000).contains(&q.retry_base_ms) {
            return Err(Error::InvalidRequest(
                "retry_base_ms: from 0 to 86400000".into(),
            ));
        }
        if !(100..=86_400_000).contains(&q.lease_ms) {
            return Err(Error::InvalidRequest(
                "lease_ms: from 100 to 86400000".into(),
            ));
        }
        self.tasks.put_queue(q, self.clock.now_ms()).await?;
        self.wake_all();
        Ok(())
    }

    pub async fn queue(&self, name: &str) -> Result<QueueConfig> {
        check_name("queue", name)?;
        Ok(self.tasks.queue(name).await?)
    }

    pub async fn queues(&self) -> Result<Vec<QueueConfig>> {
        Ok(self.tasks.queues().await?)
    }

    pub async fn depths(&self, queue: &str) -> Result<Vec<(String, i64)>> {
        check_name("queue", queue)?;
        Ok(self.tasks.queue_depths(queue).await?)
    }

    /// Enqueues a task; with a dedup key its queue already holds, returns that task instead
    /// (and `false`).
    pub async fn enqueue(&self, e: Enqueue) -> Result<(TaskRecord, bool)> {
        check_name("queue", &e.queue)?;
        let tenant = e.tenant.unwrap_or_else(|| "default".into());
        check_name("tenant", &tenant)?;
        let priority = e.priority.unwrap_or(0);
        if !(-1000..=1000).contains(&priority) {
            return Err(Error::InvalidRequest("priority: from -1000 to 1000".into()));
        }
        if let Some(k) = &e.dedup_key {
            if k.is_empty() || k.len() > 256 {
                return Err(Error::InvalidRequest("dedup_key: 1 to 256 bytes".into()));
            }
        }
        let payload = e.payload.to_string();
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge(format!(
                "payload: at most {MAX_PAYLOAD_BYTES} bytes of JSON"
            )));
        }
        let year = 366 * 86_400_000;
        if e.delay_ms.is_some_and(|d| !(0..=year).contains(&d))
            || e.deadline_ms.is_some_and(|d| !(1..=year).contains(&d))
        {
            return Err(Error::InvalidRequest(
                "delay_ms and deadline_ms: from 0 (1 for a deadline) to a year".into(),
            ));
        }
        let now = self.clock.now_ms();
        let task = NewTask {
            id: format!("task_{}", uuid::Uuid::now_v7().simple()),
            queue: e.queue,
            tenant,
            priority,
            payload,
            dedup_key: e.dedup_key,
            run_at: now + e.delay_ms.unwrap_or(0),
            deadline: e.deadline_ms.map(|d| now + d),
        };
        let out = self.writer.enqueue(task, now).await?;
        if out.1 {
            self.upkeep.notify_one();
        }
        Ok(out)
    }

    /// Leases up to `max` tasks of `queue` to `worker`, waiting up to `wait` for the first.
    pub async fn lease(
        &self,
        queue: &str,
        worker: &str,
        max: i64,
        wait: Duration,
    ) -> Result<Vec<TaskRecord>> {
        check_name("queue", queue)?;
        check_name("worker", worker)?;
        if !(1..=1000).contains(&max) {
            return Err(Error::InvalidRequest("max: from 1 to 1000".into()));
        }
        // The writer keeps a request that finds nothing until tasks come or `wait` ends.
        Ok(self
            .writer
            .lease(
                LeaseRequest {
                    queue: queue.to_string(),
                    worker: worker.to_string(),
                    max,
                    now: self.clock.now_ms(),
                },
                wait.min(Duration::from_millis(MAX_WAIT_MS)),
            )
            .await?)
    }

    fn lost(id: &str) -> Error {
        Error::Conflict(format!(
            "task {id}: this lease is no longer held (its time ran out before this report, it went to another worker, or the task ended); heartbeat more often than the queue's leaseMs"
        ))
    }

    pub async fn heartbeat(&self, id: &str, worker: &str, attempt: i64) -> Result<()> {
        if self
            .tasks
            .heartbeat_task(id, worker, attempt, self.clock.now_ms())
            .await?
        {
            Ok(())
        } else {
            Err(self.missing_or_lost(id).await)
        }
    }

    async fn missing_or_lost(&self, id: &str) -> Error {
        match self.tasks.get_task(id).await {
            Ok(None) => Error::NotFound(format!("no task {id}")),
            _ => Self::lost(id),
        }
    }

    pub async fn complete(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        result: &Value,
    ) -> Result<()> {
        let end = TaskEnd::Done {
            result: result.to_string(),
        };
        self.finish(id, worker, attempt, end).await
    }

    /// Fails attempt `attempt`; with `retry`, the task is tried again after a backoff while
    /// its queue's attempts last.
    pub async fn fail(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        error: &str,
        retry: bool,
    ) -> Result<()> {
        let Some(t) = self.tasks.get_task(id).await? else {
            return Err(Error::NotFound(format!("no task {id}")));
        };
        let end = TaskEnd::Failed {
            error: error.chars().take(4096).collect(),
            retry_at: match retry {
                true => Some(self.retry_at(&t).await?),
                false => None,
            },
        };
        self.finish(id, worker, attempt, end).await
    }

    async fn finish(&self, id: &str, worker: &str, attempt: i64, end: TaskEnd) -> Result<()> {
        let end = TaskFinish {
            id: id.to_string(),
            worker: worker.to_string(),
            attempt,
            end,
        };
        // A slot under the queue's limits frees up: the writer lets waiting requests look.
        if self.writer.finish(end, self.clock.now_ms()).await? {
            Ok(())
        } else {
            Err(self.missing_or_lost(id).await)
        }
    }

    /// Shutting down: lease requests stop waiting (see `TaskWriter::drain`).
    pub fn drain(&self) {
        self.writer.drain();
    }

    /// Wakes every waiting lease request and the upkeep loop (settings changed, tasks moved).
    fn wake_all(&self) {
        self.writer.recheck();
        self.upkeep.notify_one();
    }

    /// When a task that failed its `attempts`-th time is tried again: the same backoff as
    /// model calls' retries — the queue's base doubled per attempt, scaled by a jitter in
    /// [0.5, 1) seeded by the task (so a fleet of failures does not come back in step).
    async fn retry_at(&self, t: &TaskRecord) -> Result<i64> {
        use std::hash::{Hash, Hasher};
        let q = self.tasks.queue(&t.queue).await?;
        let mut seed = std::collections::hash_map::DefaultHasher::new();
        t.id.hash(&mut seed);
        let delay = steward_llm::resilience::retry_delay(
            (t.attempts.max(1) - 1) as u32,
            Duration::from_millis(q.retry_base_ms as u64),
            None,
            seed.finish(),
        );
        Ok(self.clock.now_ms() + delay.as_millis().min(86_400_000) as i64)
    }

    pub async fn requeue(&self, id: &str) -> Result<TaskRecord> {
        match self.tasks.requeue_task(id, self.clock.now_ms()).await? {
            Some(t) => {
                self.wake_all();
                Ok(t)
            }
            None => match self.tasks.get_task(id).await? {
                None => Err(Error::NotFound(format!("no task {id}"))),
                Some(t) => Err(Error::Conflict(format!(
                    "task {id} is {}: only dead tasks are requeued",
                    t.state
                ))),
            },
        }
    }

    pub async fn get(&self, id: &str) -> Result<TaskRecord> {
        self.tasks
            .get_task(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no task {id}")))
    }

    pub async fn list(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>> {
        if let Some(q) = &f.queue {
            check_name("queue", q)?;
        }
        if let Some(s) = &f.state {
            if !["pending", "leased", "done", TASK_DEAD].contains(&s.as_str()) {
                return Err(Error::InvalidRequest(
                    "state: pending, leased, done or dead".into(),
                ));
            }
        }
        Ok(self.tasks.list_tasks(f).await?)
    }

    /// One pass of upkeep: expired leases and deadlines, tasks of runs that ended, and tasks
    /// handed to the agents that serve their queues. Returns whether any run was created.
    pub async fn upkeep(&self) -> Result<bool> {
        let now = self.clock.now_ms();
        // Sweeping writes: at most once a second, however often upkeep is woken.
        let due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let due = now - *last >= SWEEP_EVERY_MS;
            if due {
                *last = now;
            }
            due
        };
        if due && self.tasks.sweep_tasks(now).await? > 0 {
            self.writer.recheck();
        }
        for (t, state, detail) in self.tasks.tasks_of_ended_runs(256).await? {
            if let (Some(run), Some(state)) = (t.run_id.as_deref(), RunState::parse(&state)) {
                if let Ok(run) = RunId::parse(run) {
                    self.finish_run(&run, state, &detail).await?;
                }
            }
        }
        let mut started = false;
        for agent in self.agents.list_agents().await? {
            let Ok(spec) = serde_json::from_str::<AgentSpec>(&agent.spec) else {
                continue;
            };
            let (Some(source), Ok(name)) = (spec.tasks, AgentName::parse(&agent.name)) else {
                continue;
            };
            let busy = self.tasks.leased_to_agent(&source.queue, &name).await?;
            let waiting = match source.max_concurrency {
                Some(_) => self
                    .tasks
                    .queue_depths(&source.queue)
                    .await?
                    .into_iter()
                    .find(|(state, _)| state == "pending")
                    .map_or(0, |(_, n)| n),
                None => 0,
            };
            let oldest = match source.target_wait_ms {
                Some(_) => self
                    .tasks
                    .oldest_ready(&source.queue, now)
                    .await?
                    .map(|at| now - at),
                None => None,
            };
            // How many runs the pool wants; the store counts the busy ones again inside the
            // transaction that starts more, so nodes racing here never exceed it together.
            let pool = source.desired(waiting, busy, oldest);
            if pool > busy {
                let leased = self
                    .tasks
                    .lease_tasks_to_runs(&source.queue, &name, agent.version, pool, now)
                    .await?;
                started |= !leased.is_empty();
            }
        }
        Ok(started)
    }

    /// Finishes the task run `run` served (if it served one), now that the run has ended in
    /// `state`: done with the run's result, or failed with its error — retried by a new run
    /// after a backoff while attempts remain; a cancelled run's task is dead-lettered at once.
    pub async fn finish_run(&self, run: &RunId, state: RunState, detail: &str) -> Result<()> {
        let Some(task) = self.tasks.task_of_run(run).await? else {
            return Ok(());
        };
        let end = match state {
            RunState::Succeeded => TaskEnd::Done {
                result: detail.to_string(),
            },
            RunState::Cancelled => TaskEnd::Failed {
                error: format!("its run {run} was cancelled: {detail}"),
                retry_at: None,
            },
            _ => TaskEnd::Failed {
                error: format!("its run {run} failed: {detail}"),
                retry_at: Some(self.retry_at(&task).await?),
            },
        };
        if self
            .tasks
            .finish_run_task(run, &end, self.clock.now_ms())
            .await?
            .is_some()
        {
            self.wake_all();
        }
        Ok(())
    }

    /// Waits until a task may have become ready, or `every` has passed.
    pub async fn changed(&self, every: Duration) {
        tokio::select! {
            _ = self.upkeep.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// What a run's end says to its task: its state and its result or error.
pub fn ended(u: &RunUpdate) -> Option<(RunState, String)> {
    u.state.is_terminal().then(|| {
        let detail = match u.state {
            RunState::Succeeded => u.result.clone().unwrap_or_default(),
            _ => u.error_message.clone().unwrap_or_default(),
        };
        (u.state, detail)
    })
}
