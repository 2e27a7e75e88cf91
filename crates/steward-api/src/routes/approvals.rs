//! Approvals: list, approve, deny.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// pending, approved, denied or expired.
    pub state: Option<String>,
    pub limit: Option<i64>,
}

/// Approvals policies asked for (`@approval("group")` on a permit).
#[utoipa::path(get, path = "/api/v1/approvals", params(ApprovalQuery),
    responses((status = 200, body = ApprovalList), (status = 400, body = ErrorBody)))]
pub async fn list_approvals(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> ApiResult<Json<ApprovalList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(ApprovalList {
        approvals: e
            .approvals()
            .list(q.state.as_deref(), limit)
            .await?
            .into_iter()
            .map(Approval::from)
            .collect(),
    }))
}

/// Approves a pending approval: the waiting run resumes and its step acts.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", params(("id" = String, Path)),
    request_body = ApprovalDecision,
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<Approval>> {
    let by = d.by.unwrap_or_else(|| "api".into());
    Ok(Json(
        e.approvals()
            .decide(&id, true, &d.reason, &by)
            .await?
            .into(),
    ))
}

/// Denies a pending approval: the waiting run resumes and its step is denied.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", params(("id" = String, Path)),
    request_body = ApprovalDecision,
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deny(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<Approval>> {
    let by = d.by.unwrap_or_else(|| "api".into());
    Ok(Json(
        e.approvals()
            .decide(&id, false, &d.reason, &by)
            .await?
            .into(),
    ))
}
