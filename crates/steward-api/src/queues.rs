//! Task queues over HTTP: settings, enqueue, lease (long-polling), heartbeat, complete, fail,
//! the dead-letter queue and requeue; and schedules, which feed queues and start runs.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use steward_engine::tasks::Enqueue;
use steward_engine::Engine;
use steward_store::{QueueConfig, TaskFilter};
use steward_types::ErrorCode;
use utoipa::IntoParams;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::wire::*;

async fn info(e: &Engine, q: QueueConfig) -> ApiResult<QueueInfo> {
    let depth = e.tasks().depths(&q.name).await?.into_iter().collect();
    Ok(QueueInfo {
        name: q.name,
        max_in_flight: q.max_in_flight,
        per_worker: q.per_worker,
        max_attempts: q.max_attempts,
        retry_base_ms: q.retry_base_ms,
        lease_ms: q.lease_ms,
        depth,
    })
}

/// Sets a queue's limits and retry policy (each absent field takes its default).
#[utoipa::path(put, path = "/api/v1/queues/{name}", params(("name" = String, Path)), request_body = QueueSettings,
    responses((status = 200, body = QueueInfo), (status = 400, body = ErrorBody)))]
pub async fn put_queue(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(s): ApiJson<QueueSettings>,
) -> ApiResult<Json<QueueInfo>> {
    let d = QueueConfig::named(&name);
    let q = QueueConfig {
        max_in_flight: s.max_in_flight,
        per_worker: s.per_worker,
        max_attempts: s.max_attempts.unwrap_or(d.max_attempts),
        retry_base_ms: s.retry_base_ms.unwrap_or(d.retry_base_ms),
        lease_ms: s.lease_ms.unwrap_or(d.lease_ms),
        ..d
    };
    e.tasks().put_queue(&q).await?;
    Ok(Json(info(&e, q).await?))
}

#[utoipa::path(get, path = "/api/v1/queues/{name}", params(("name" = String, Path)),
    responses((status = 200, body = QueueInfo), (status = 400, body = ErrorBody)))]
pub async fn get_queue(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueInfo>> {
    let q = e.tasks().queue(&name).await?;
    Ok(Json(info(&e, q).await?))
}

/// Every queue configured or holding tasks, with its depth per state.
#[utoipa::path(get, path = "/api/v1/queues", responses((status = 200, body = QueueList)))]
pub async fn list_queues(State(e): State<Engine>) -> ApiResult<Json<QueueList>> {
    let mut queues = Vec::new();
    for q in e.tasks().queues().await? {
        queues.push(info(&e, q).await?);
    }
    Ok(Json(QueueList { queues }))
}

/// Enqueues a task: 201, or 200 with `deduplicated` when its dedup key was there already.
#[utoipa::path(post, path = "/api/v1/queues/{name}/tasks", params(("name" = String, Path)), request_body = EnqueueTask,
    responses((status = 403, body = ErrorBody, description = "An agent's credential may not do this on that queue or task"), (status = 201, body = Enqueued), (status = 200, body = Enqueued), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn enqueue(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(t): ApiJson<EnqueueTask>,
) -> ApiResult<(StatusCode, Json<Enqueued>)> {
    caller.may(&e, "task.enqueue", &name).await?;
    let (task, new) = e
        .tasks()
        .enqueue(Enqueue {
            queue: name,
            payload: t.payload,
            tenant: t.tenant,
            priority: t.priority,
            dedup_key: t.dedup_key,
            delay_ms: t.delay_ms,
            deadline_ms: t.deadline_ms,
        })
        .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Enqueued {
            task: task.into(),
            deduplicated: !new,
        }),
    ))
}

/// Leases tasks to an external worker, waiting up to `wait_ms` for one. The worker keeps each
/// with heartbeats and reports it with its `attempts` as leased.
#[utoipa::path(post, path = "/api/v1/queues/{name}/lease", params(("name" = String, Path)), request_body = LeaseTasks,
    responses((status = 403, body = ErrorBody, description = "An agent's credential may not do this on that queue or task"), (status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
pub async fn lease(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(l): ApiJson<LeaseTasks>,
) -> ApiResult<Json<TaskList>> {
    caller.owns(&l.worker)?;
    caller.may(&e, "task.lease", &name).await?;
    let tasks = e
        .tasks()
        .lease(
            &name,
            &l.worker,
            l.max.unwrap_or(1),
            Duration::from_millis(l.wait_ms.unwrap_or(0)),
        )
        .await?;
    Ok(Json(TaskList {
        tasks: tasks.into_iter().map(Task::from).collect(),
    }))
}

/// Keeps a lease: it lasts the queue's `lease_ms` from now. 409 when it was lost.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/heartbeat", params(("id" = String, Path)), request_body = TaskReport,
    responses((status = 403, body = ErrorBody, description = "An agent's credential may not do this on that queue or task"), (status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn heartbeat(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<TaskReport>,
) -> ApiResult<StatusCode> {
    caller.owns(&r.worker)?;
    e.tasks().heartbeat(&id, &r.worker, r.attempt).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Completes a leased task with its `result`. 409 when the lease was lost: another worker
/// has the task now, and this result is not taken.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/complete", params(("id" = String, Path)), request_body = TaskReport,
    responses((status = 403, body = ErrorBody, description = "An agent's credential may not do this on that queue or task"), (status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn complete(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<TaskReport>,
) -> ApiResult<StatusCode> {
    caller.owns(&r.worker)?;
    let result = r.result.unwrap_or(serde_json::Value::Null);
    e.tasks()
        .complete(&id, &r.worker, r.attempt, &result)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fails a leased task: retried after a backoff while attempts remain (unless `retry` is
/// false), then dead-lettered with `error` as the reason.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/fail", params(("id" = String, Path)), request_body = TaskReport,
    responses((status = 403, body = ErrorBody, description = "An agent's credential may not do this on that queue or task"), (status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn fail(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<TaskReport>,
) -> ApiResult<StatusCode> {
    caller.owns(&r.worker)?;
    let error = r.error.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "error: say what went wrong (it is kept as the task's error)",
        )
    })?;
    e.tasks()
        .fail(&id, &r.worker, r.attempt, &error, r.retry.unwrap_or(true))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts a dead task back in its queue, its attempts reset.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/requeue", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn requeue(State(e): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    Ok(Json(e.tasks().requeue(&id).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
pub async fn get_task(State(e): State<Engine>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    Ok(Json(e.tasks().get(&id).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub queue: Option<String>,
    /// `pending`, `leased`, `done` or `dead` (the dead-letter queue).
    pub state: Option<String>,
    pub limit: Option<i64>,
}

/// Tasks, newest first: `?state=dead` is the dead-letter queue, each with why.
#[utoipa::path(get, path = "/api/v1/tasks", params(TaskQuery), responses((status = 200, body = TaskList)))]
pub async fn list_tasks(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<TaskQuery>,
) -> ApiResult<Json<TaskList>> {
    let tasks = e
        .tasks()
        .list(&TaskFilter {
            queue: q.queue,
            state: q.state,
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    Ok(Json(TaskList {
        tasks: tasks.into_iter().map(Task::from).collect(),
    }))
}

/// Creates or replaces a schedule: a durable timer that enqueues a task or starts a run.
#[utoipa::path(put, path = "/api/v1/schedules/{name}", params(("name" = String, Path)), request_body = PutSchedule,
    responses((status = 200, body = Schedule), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_schedule(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<PutSchedule>,
) -> ApiResult<Json<Schedule>> {
    use steward_engine::schedules::{NewSchedule, Target};
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m);
    let at_ms = match (p.at_ms, p.delay_ms) {
        (Some(_), Some(_)) => return Err(bad("at_ms or delay_ms: one or the other")),
        (Some(t), None) => Some(t),
        (None, Some(d)) if (0..=366 * 86_400_000).contains(&d) => Some(e.now_ms() + d),
        (None, Some(_)) => return Err(bad("delay_ms: from 0 to a year")),
        (None, None) => None,
    };
    let target = match (p.queue, p.agent) {
        (Some(q), None) => Target::Queue(q),
        (None, Some(a)) => Target::Agent(a),
        _ => return Err(bad("give `queue` or `agent`: what the schedule fires")),
    };
    let s = e
        .schedules()
        .put(NewSchedule {
            name,
            cron: p.cron,
            at_ms,
            target,
            payload: p.payload,
            missed: p.missed.unwrap_or_else(|| "once".into()),
        })
        .await?;
    Ok(Json(s.into()))
}

#[utoipa::path(get, path = "/api/v1/schedules/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
pub async fn get_schedule(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(e.schedules().get(&name).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/schedules", responses((status = 200, body = ScheduleList)))]
pub async fn list_schedules(State(e): State<Engine>) -> ApiResult<Json<ScheduleList>> {
    Ok(Json(ScheduleList {
        schedules: e
            .schedules()
            .list()
            .await?
            .into_iter()
            .map(Schedule::from)
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/schedules/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_schedule(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.schedules().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates or replaces a supervisor (JSON: `strategy` one_for_one | one_for_all | rest_for_one,
/// `maxRestarts`, `withinMs`, `backoff {initialMs, maxMs}`, `children [{name, agent, input} |
/// {name, supervisor}]`, `evaluator {contains | agent, maxRounds}`): it starts its children now.
#[utoipa::path(put, path = "/api/v1/supervisors/{name}", params(("name" = String, Path)), request_body = Value,
    responses((status = 200, body = Supervisor), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_supervisor(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<serde_json::Value>,
) -> ApiResult<Json<Supervisor>> {
    let spec = serde_json::from_value(spec).map_err(|err| {
        ApiError::new(ErrorCode::InvalidRequest, format!("supervisor spec: {err}"))
    })?;
    Ok(Json(e.supervisors().put(&name, spec).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/supervisors/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Supervisor), (status = 404, body = ErrorBody)))]
pub async fn get_supervisor(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<Supervisor>> {
    Ok(Json(e.supervisors().get(&name).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/supervisors", responses((status = 200, body = SupervisorList)))]
pub async fn list_supervisors(State(e): State<Engine>) -> ApiResult<Json<SupervisorList>> {
    Ok(Json(SupervisorList {
        supervisors: e
            .supervisors()
            .list()
            .await?
            .into_iter()
            .map(Supervisor::from)
            .collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// `open` or `resolved`; absent: both.
    pub state: Option<String>,
}

/// What root supervisors escalated to a human when they gave up, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", params(IncidentQuery), responses((status = 200, body = IncidentList)))]
pub async fn list_incidents(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<IncidentQuery>,
) -> ApiResult<Json<IncidentList>> {
    Ok(Json(IncidentList {
        incidents: e
            .supervisors()
            .incidents(q.state.as_deref())
            .await?
            .into_iter()
            .map(Incident::from)
            .collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", params(("id" = String, Path)), request_body = ResolveIncident,
    responses((status = 200, body = Incident), (status = 404, body = ErrorBody)))]
pub async fn resolve_incident(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<ResolveIncident>,
) -> ApiResult<Json<Incident>> {
    Ok(Json(
        e.supervisors()
            .resolve_incident(&id, &r.resolution)
            .await?
            .into(),
    ))
}

/// Registers a git repository for the merge queue (its target branch must exist).
#[utoipa::path(put, path = "/api/v1/repos/{name}", params(("name" = String, Path)), request_body = PutRepo,
    responses((status = 200, body = Repo), (status = 400, body = ErrorBody)))]
pub async fn put_repo(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<PutRepo>,
) -> ApiResult<Json<Repo>> {
    let rec = steward_store::RepoRecord {
        name,
        path: r.path,
        target: r.target,
        check_cmd: r.check,
        resolver: r.resolver,
        strategy: r.strategy.unwrap_or_else(|| "rebase".into()),
    };
    Ok(Json(e.merges().put_repo(rec).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/repos", responses((status = 200, body = RepoList)))]
pub async fn list_repos(State(e): State<Engine>) -> ApiResult<Json<RepoList>> {
    Ok(Json(RepoList {
        repos: e
            .merges()
            .repos()
            .await?
            .into_iter()
            .map(Repo::from)
            .collect(),
    }))
}

/// Submits a branch to land: `conflict` at once when it conflicts with the target already,
/// else queued behind the others.
#[utoipa::path(post, path = "/api/v1/repos/{name}/submissions", params(("name" = String, Path)), request_body = Submit,
    responses((status = 201, body = Submission), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn submit(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(s): ApiJson<Submit>,
) -> ApiResult<(StatusCode, Json<Submission>)> {
    let sub = e.merges().submit(&name, &s.branch, &s.submitter).await?;
    Ok((StatusCode::CREATED, Json(sub.into())))
}

/// The repository's submissions, in the order they were made.
#[utoipa::path(get, path = "/api/v1/repos/{name}/submissions", params(("name" = String, Path)),
    responses((status = 200, body = SubmissionList), (status = 404, body = ErrorBody)))]
pub async fn list_submissions(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<SubmissionList>> {
    Ok(Json(SubmissionList {
        submissions: e
            .merges()
            .submissions(&name)
            .await?
            .into_iter()
            .map(Submission::from)
            .collect(),
    }))
}

/// Leases paths of the repository to a holder (all or none): 409 naming a lease in the way.
#[utoipa::path(post, path = "/api/v1/repos/{name}/leases", params(("name" = String, Path)), request_body = LeasePaths,
    responses((status = 200, body = PathLeases), (status = 409, body = ErrorBody)))]
pub async fn lease_paths(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(l): ApiJson<LeasePaths>,
) -> ApiResult<Json<PathLeases>> {
    Ok(Json(
        e.merges()
            .lease(&name, &l.holder, &l.paths, l.ttl_ms)
            .await?
            .into(),
    ))
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/leases", params(("name" = String, Path)),
    responses((status = 200, body = PathLeases)))]
pub async fn path_leases(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<PathLeases>> {
    Ok(Json(e.merges().leases(&name).await?.into()))
}

/// Releases every lease a holder has on the repository.
#[utoipa::path(post, path = "/api/v1/repos/{name}/leases/release", params(("name" = String, Path)), request_body = ReleasePaths,
    responses((status = 204)))]
pub async fn release_paths(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<ReleasePaths>,
) -> ApiResult<StatusCode> {
    e.merges().release(&name, &r.holder).await?;
    Ok(StatusCode::NO_CONTENT)
}
