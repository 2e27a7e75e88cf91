//! A task queue's group commit on the one-thread writer: what the
//! [`TaskWriter`](crate::TaskWriter) commits — enqueues, then leases (so they see those
//! tasks), then ends — with the same SQL as the queue's other paths, a row to a statement
//! (statements here cost no round trip).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::DirectWriter;
use crate::tasks::{in_dispatch_order, lease_ready_sql, FAIL_TASK, TASK_COLUMNS};
use crate::{
    LeaseRequest, Millis, NewTask, QueueConfig, Result, TaskBatch, TaskBatchResult, TaskEnd,
    TaskFinish, TaskRecord, TASK_PENDING,
};

impl DirectWriter {
    /// Commits `batch` in one transaction; `queues` holds the settings of every queue it names.
    pub(crate) fn task_batch(
        &self,
        batch: &TaskBatch,
        queues: &HashMap<String, QueueConfig>,
    ) -> Result<TaskBatchResult> {
        self.transaction(|tx| {
            Ok(TaskBatchResult {
                enqueued: enqueue(tx, &batch.enqueues, queues)?,
                leased: lease(tx, &batch.leases, queues)?,
                finished: finish(tx, &batch.finishes)?,
            })
        })
    }
}

fn task(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: r.get(0)?,
        queue: r.get(1)?,
        tenant: r.get(2)?,
        tenant_seq: r.get(3)?,
        priority: r.get(4)?,
        payload: r.get(5)?,
        dedup_key: r.get(6)?,
        state: r.get(7)?,
        run_at: r.get(8)?,
        deadline: r.get(9)?,
        attempts: r.get(10)?,
        max_attempts: r.get(11)?,
        lease_owner: r.get(12)?,
        lease_until: r.get(13)?,
        run_id: r.get(14)?,
        result: r.get(15)?,
        error: r.get(16)?,
        enqueued_at: r.get(17)?,
        leased_at: r.get(18)?,
        finished_at: r.get(19)?,
    })
}

/// Each task stored and whether it is new: a task whose dedup key its queue holds (or an
/// earlier task of the batch holds) is that task. Each tenant's places are taken in batch
/// order.
fn enqueue(
    tx: &Transaction<'_>,
    tasks: &[(NewTask, Millis)],
    queues: &HashMap<String, QueueConfig>,
) -> Result<Vec<(TaskRecord, bool)>> {
    let mut known = tx.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE queue = ?1 AND dedup_key = ?2"
    ))?;
    let mut place = tx.prepare_cached(
        "INSERT INTO task_tenants (queue, tenant, next_seq) VALUES (?1, ?2, 1) \
         ON CONFLICT (queue, tenant) DO UPDATE SET next_seq = task_tenants.next_seq + 1 \
         RETURNING next_seq",
    )?;
    let mut insert = tx.prepare_cached(&format!(
        "INSERT INTO tasks (id, queue, tenant, tenant_seq, priority, payload, dedup_key, state, \
           run_at, deadline, attempts, max_attempts, enqueued_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?12) RETURNING {TASK_COLUMNS}"
    ))?;
    let mut out = Vec::with_capacity(tasks.len());
    for (t, now) in tasks {
        if let Some(key) = &t.dedup_key {
            // The table holds every task enqueued before, this batch's included.
            if let Some(found) = known.query_row(params![t.queue, key], task).optional()? {
                out.push((found, false));
                continue;
            }
        }
        let seq: i64 = place.query_row(params![t.queue, t.tenant], |r| r.get(0))?;
        let max_attempts = queues.get(&t.queue).map_or(3, |q| q.max_attempts);
        let rec = insert.query_row(
            params![
                t.id,
                t.queue,
                t.tenant,
                seq,
                t.priority,
                t.payload,
                t.dedup_key,
                TASK_PENDING,
                t.run_at,
                t.deadline,
                max_attempts,
                now
            ],
            task,
        )?;
        out.push((rec, true));
    }
    Ok(out)
}

/// Each request's leases, within its queue's limits.
fn lease(
    tx: &Transaction<'_>,
    requests: &[LeaseRequest],
    queues: &HashMap<String, QueueConfig>,
) -> Result<Vec<Vec<TaskRecord>>> {
    let mut out = Vec::with_capacity(requests.len());
    // Queues this batch found nothing more ready in: later requests would find nothing either.
    let mut drained: std::collections::HashSet<&str> = Default::default();
    let mut take = tx.prepare_cached(&lease_ready_sql(""))?;
    for r in requests {
        if drained.contains(r.queue.as_str()) {
            out.push(Vec::new());
            continue;
        }
        let q = queues
            .get(&r.queue)
            .cloned()
            .unwrap_or_else(|| QueueConfig::named(&r.queue));
        let room = room(tx, &q, &r.worker, r.max)?;
        let mut leased = Vec::new();
        if room > 0 {
            let rows = take.query_map(
                params![r.worker, r.now + q.lease_ms, r.now, q.name, room],
                task,
            )?;
            for row in rows {
                leased.push(row?);
            }
            in_dispatch_order(&mut leased);
        }
        if (leased.len() as i64) < room {
            drained.insert(&r.queue);
        }
        out.push(leased);
    }
    Ok(out)
}

/// How many tasks `worker` may lease from `q` now (at most `max`), within the queue's limits.
fn room(tx: &Transaction<'_>, q: &QueueConfig, worker: &str, max: i64) -> Result<i64> {
    let mut room = max;
    if let Some(limit) = q.max_in_flight {
        let n: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND state = 'leased'")?
            .query_row([&q.name], |r| r.get(0))?;
        room = room.min(limit - n);
    }
    if let Some(limit) = q.per_worker {
        let n: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND state = 'leased' AND lease_owner = ?2",
            )?
            .query_row([&q.name, worker], |r| r.get(0))?;
        room = room.min(limit - n);
    }
    Ok(room)
}

/// Whether each report matched the lease in force (owner, attempt, time) and so ended its
/// task. Completions first, then failures, each in batch order: of several reports of one
/// task at most one matches, and once it has the others find the lease gone.
fn finish(tx: &Transaction<'_>, ends: &[(TaskFinish, Millis)]) -> Result<Vec<bool>> {
    let mut out = vec![false; ends.len()];
    let mut complete = tx.prepare_cached(
        "UPDATE tasks SET state = 'done', result = ?1, error = NULL, lease_owner = NULL, \
           lease_until = NULL, finished_at = ?2, updated_at = ?2 \
         WHERE id = ?3 AND state = 'leased' AND run_id IS NULL AND lease_owner = ?4 \
           AND attempts = ?5 AND lease_until >= ?2",
    )?;
    for (i, (f, at)) in ends.iter().enumerate() {
        if let TaskEnd::Done { result } = &f.end {
            out[i] = complete.execute(params![result, at, f.id, f.worker, f.attempt])? == 1;
        }
    }
    let mut fail = tx.prepare_cached(FAIL_TASK)?;
    for (i, (f, now)) in ends.iter().enumerate() {
        let TaskEnd::Failed { error, retry_at } = &f.end else {
            continue;
        };
        let n = fail.execute(params![
            "failed",
            retry_at,
            Option::<&str>::None,
            error,
            now,
            f.id,
            f.worker,
            f.attempt
        ])?;
        out[i] = n == 1;
    }
    Ok(out)
}
