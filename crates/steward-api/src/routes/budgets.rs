//! Gateway calls, costs and budget accounts.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    pub agent: Option<String>,
    pub limit: Option<i64>,
}

/// Gateway calls, most recent first.
#[utoipa::path(get, path = "/api/v1/calls", params(CallQuery), responses((status = 200, body = CallList)))]
pub async fn list_calls(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<CallQuery>,
) -> ApiResult<Json<CallList>> {
    let calls = e
        .budgets()
        .calls(q.agent.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(CallList {
        calls: calls.into_iter().map(Call::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CostQuery {
    /// agent (default), model, run, task, tool, outcome, day or hour.
    pub by: Option<String>,
    /// Only usage from the last this many days (default 30).
    pub days: Option<i64>,
    /// Only these runs' spend: run ids, comma-separated (at most 20).
    pub run: Option<String>,
}

/// Model spend of managed runs and gateway calls, priced and grouped.
#[utoipa::path(get, path = "/api/v1/costs", params(CostQuery),
    responses((status = 200, body = CostReport), (status = 400, body = ErrorBody)))]
pub async fn costs(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> ApiResult<Json<CostReport>> {
    let by = q.by.unwrap_or_else(|| "agent".into());
    let days = q.days.unwrap_or(30);
    if !(1..=36_500).contains(&days) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "days: between 1 and 36500",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let since = now - days * 86_400_000;
    let mut runs = Vec::new();
    for id in q
        .run
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        runs.push(
            RunId::parse(id)
                .map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("run: {}", e.0)))?,
        );
    }
    if runs.len() > 20 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "run: at most 20 run ids",
        ));
    }
    let (lines, outcomes) = e.budgets().costs(&by, since, &runs).await?;
    let lines: Vec<CostLine> = lines.into_iter().map(CostLine::from).collect();
    let total_usd = lines.iter().map(|l| l.cost_usd).sum();
    Ok(Json(CostReport {
        by,
        since,
        lines,
        total_usd,
        outcomes: outcomes.into(),
    }))
}

/// Creates or changes a budget account (`org`, `team:x`, `agent:NAME`, `run:RUN_ID`, …).
#[utoipa::path(put, path = "/api/v1/budgets/{account}", params(("account" = String, Path)), request_body = PutBudget,
    responses((status = 200, body = Budget), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_budget(
    State(e): State<Engine>,
    Path(account): Path<String>,
    ApiJson(req): ApiJson<PutBudget>,
) -> ApiResult<Json<Budget>> {
    let period = req.period.unwrap_or_else(|| "total".into());
    Ok(Json(
        e.budgets()
            .put(&account, req.parent.as_deref(), req.cap_usd, &period)
            .await?
            .into(),
    ))
}

#[utoipa::path(get, path = "/api/v1/budgets", responses((status = 200, body = BudgetList)))]
pub async fn list_budgets(State(e): State<Engine>) -> ApiResult<Json<BudgetList>> {
    Ok(Json(BudgetList {
        budgets: e
            .budgets()
            .list()
            .await?
            .into_iter()
            .map(Budget::from)
            .collect(),
    }))
}
