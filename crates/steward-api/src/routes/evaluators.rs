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
