//! Runs: start, list, read, their journal, cancel, resolve.

use super::*;

#[utoipa::path(post, path = "/api/v1/runs", request_body = CreateRun,
    responses((status = 201, body = Run), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create_run(
    State(e): State<Engine>,
    ApiJson(req): ApiJson<CreateRun>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = e.runs().create(&req.agent, &req.input).await?;
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
            .runs()
            .list(&filter)
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
    let rec = e.runs().get(&id).await?;
    let fork = e.runs().fork_of(&rec.id).await?;
    let mut run = Run::from(rec);
    run.fork = fork.map(Fork::from);
    Ok(Json(run))
}

/// Starts a fork of the run: its steps before `at` replayed, the rest run live with the edits.
#[utoipa::path(post, path = "/api/v1/runs/{id}/fork", params(("id" = String, Path)), request_body = ForkRun,
    responses((status = 201, body = Run), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn fork_run(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ForkRun>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    check_id(&id)?;
    if req.at < 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("at: a step of the run, from 0; found {}", req.at),
        ));
    }
    if req
        .model
        .as_deref()
        .is_some_and(|m| m.trim().is_empty() || m.len() > 256)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "model: an alias or provider/model of at most 256 characters",
        ));
    }
    if req
        .system_prompt
        .as_ref()
        .is_some_and(|p| p.len() > 256 * 1024)
    {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "system_prompt: longer than 256 KiB, the limit of an agent's",
        ));
    }
    let fork = steward_store::RunFork {
        source: RunId::parse(&id).map_err(|e| ApiError::new(ErrorCode::InvalidId, e.0))?,
        at: req.at,
        input: req.input,
        system_prompt: req.system_prompt,
        model: req.model,
    };
    let rec = e.runs().fork(&id, fork).await?;
    let fork = e.runs().fork_of(&rec.id).await?;
    let mut run = Run::from(rec);
    run.fork = fork.map(Fork::from);
    Ok((StatusCode::CREATED, Json(run)))
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
    let run = e.runs().get(&id).await?;
    let entries = e
        .runs()
        .journal(&id, q.after, q.limit.unwrap_or(1000))
        .await?;
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
    Ok(Json(e.runs().cancel(&id, &req.reason).await?.into()))
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
        e.runs()
            .resolve(&id, matches!(req.action, ResolveAction::Retry))
            .await?
            .into(),
    ))
}
