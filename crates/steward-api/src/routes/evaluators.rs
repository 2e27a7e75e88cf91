//! Evaluators: put, list, remove, score a run on request, and the scores given.

use super::*;

/// Creates or replaces an evaluator: `{"kind": "rules" | "judge" | "code", "rules" | "judge" |
/// "code": {…}, "agents": [..] (online), "sample": 0..1}` (see docs/evaluation.md).
#[utoipa::path(put, path = "/api/v1/evaluators/{name}", params(("name" = String, Path)), request_body = serde_json::Value,
    responses((status = 200, body = Evaluator), (status = 400, body = ErrorBody)))]
pub async fn put_evaluator(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<Evaluator>> {
    let spec: steward_engine::evaluation::EvaluatorSpec = serde_json::from_value(body)
        .map_err(|err| ApiError::new(ErrorCode::InvalidRequest, format!("the evaluator: {err}")))?;
    Ok(Json(e.evaluators().put(&name, spec).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/evaluators", responses((status = 200, body = EvaluatorList)))]
pub async fn list_evaluators(State(e): State<Engine>) -> ApiResult<Json<EvaluatorList>> {
    Ok(Json(EvaluatorList {
        evaluators: e
            .evaluators()
            .list()
            .await?
            .into_iter()
            .map(Evaluator::from)
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/evaluators/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_evaluator(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.evaluators().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Scores an ended run with the evaluator now (a run it scored before keeps its score).
#[utoipa::path(post, path = "/api/v1/evaluators/{name}/score", params(("name" = String, Path)), request_body = ScoreRun,
    responses((status = 200, body = Score), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn score_run(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ScoreRun>,
) -> ApiResult<Json<Score>> {
    check_id(&req.run)?;
    Ok(Json(e.evaluators().score(&name, &req.run).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScoreQuery {
    pub run: Option<String>,
    pub evaluator: Option<String>,
    pub limit: Option<i64>,
}

/// Scores given, newest first, with their mean and pass rate.
#[utoipa::path(get, path = "/api/v1/scores", params(ScoreQuery), responses((status = 200, body = ScoreList)))]
pub async fn list_scores(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<ScoreQuery>,
) -> ApiResult<Json<ScoreList>> {
    let scores: Vec<Score> = e
        .evaluators()
        .scores(
            q.run.as_deref(),
            q.evaluator.as_deref(),
            q.limit.unwrap_or(200),
        )
        .await?
        .into_iter()
        .map(Score::from)
        .collect();
    let given: Vec<f64> = scores.iter().filter_map(|s| s.score).collect();
    let judged: Vec<bool> = scores.iter().filter_map(|s| s.passed).collect();
    Ok(Json(ScoreList {
        mean: (!given.is_empty()).then(|| given.iter().sum::<f64>() / given.len() as f64),
        pass_rate: (!judged.is_empty())
            .then(|| judged.iter().filter(|p| **p).count() as f64 / judged.len() as f64),
        scores,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutDataset {
    /// `[{"input": "…", "expected": "…"}]`, 1 to 1000 of them.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<steward_engine::handles::experiments::Item>,
}

/// Creates or replaces a dataset: inputs, each with what a good run's result contains.
#[utoipa::path(put, path = "/api/v1/datasets/{name}", params(("name" = String, Path)), request_body = PutDataset,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_dataset(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutDataset>,
) -> ApiResult<Json<serde_json::Value>> {
    let items = e.experiments().put_dataset(&name, req.items).await?;
    Ok(Json(serde_json::json!({"name": name, "items": items})))
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let items = e.experiments().dataset(&name).await?;
    Ok(Json(serde_json::json!({"name": name, "items": items})))
}

#[utoipa::path(get, path = "/api/v1/datasets", responses((status = 200, body = Object)))]
pub async fn list_datasets(State(e): State<Engine>) -> ApiResult<Json<serde_json::Value>> {
    let list: Vec<serde_json::Value> = e
        .experiments()
        .datasets()
        .await?
        .into_iter()
        .map(
            |(name, items, at)| serde_json::json!({"name": name, "items": items, "updated_at": at}),
        )
        .collect();
    Ok(Json(serde_json::json!({"datasets": list})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRuns {
    /// Past runs: each one's input, and its result as what is expected.
    pub runs: Vec<String>,
}

/// Adds past runs to a dataset (made if new).
#[utoipa::path(post, path = "/api/v1/datasets/{name}/runs", params(("name" = String, Path)), request_body = AddRuns,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
pub async fn add_runs(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AddRuns>,
) -> ApiResult<Json<serde_json::Value>> {
    if req.runs.is_empty() || req.runs.len() > 1000 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "runs: from 1 to 1000 run ids",
        ));
    }
    let items = e.experiments().add_runs(&name, &req.runs).await?;
    Ok(Json(serde_json::json!({"name": name, "items": items})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartExperiment {
    pub dataset: String,
    /// The agent run over the dataset.
    pub agent: String,
    /// Its version (default: the latest).
    pub version: Option<i64>,
    /// The evaluators that score each run once it has ended.
    pub evaluators: Vec<String>,
}

/// Runs an agent version (the latest unless `version` is given) over a dataset, one run per
/// item; the evaluators named score each.
#[utoipa::path(post, path = "/api/v1/experiments", request_body = StartExperiment,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start_experiment(
    State(e): State<Engine>,
    ApiJson(req): ApiJson<StartExperiment>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let x = e
        .experiments()
        .start(&req.dataset, &req.agent, req.version, &req.evaluators)
        .await?;
    Ok((StatusCode::CREATED, Json(e.experiments().get(&x.id).await?)))
}

/// An experiment: each item's run, result and scores, and its summary (runs ended and
/// succeeded, cost, mean duration, each evaluator's mean score and pass rate).
#[utoipa::path(get, path = "/api/v1/experiments/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_experiment(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(e.experiments().get(&id).await?))
}

/// The latest 100 experiments with their summaries.
#[utoipa::path(get, path = "/api/v1/experiments", responses((status = 200, body = Object)))]
pub async fn list_experiments(State(e): State<Engine>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(
        serde_json::json!({"experiments": e.experiments().list().await?}),
    ))
}
