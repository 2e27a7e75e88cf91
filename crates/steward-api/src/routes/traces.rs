//! Traces kept in the store: listed by session or end user, read by trace id.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TraceListQuery {
    /// Only traces with a span of this session (`session.id`).
    pub session_id: Option<String>,
    /// Only traces with a span for this end user (`user.id`).
    pub end_user: Option<String>,
    /// At most this many (1 to 1,000; default 50).
    pub limit: Option<i64>,
}

/// Traces kept, the latest to start first: all of a session, or of an end user.
#[utoipa::path(get, path = "/api/v1/traces", params(TraceListQuery),
    responses((status = 200, body = TraceList)))]
pub async fn list_traces(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<TraceListQuery>,
) -> ApiResult<Json<TraceList>> {
    let traces = e
        .traces()
        .list(steward_store::TraceFilter {
            session_id: q.session_id,
            end_user: q.end_user,
            limit: q.limit.unwrap_or(50),
        })
        .await?;
    Ok(Json(TraceList {
        traces: traces.into_iter().map(Into::into).collect(),
    }))
}

/// Every span kept of a trace — sent over OTLP (`POST /v1/traces`) by agents, and Steward's
/// own — by start time. `404` when none is kept.
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}", params(("trace_id" = String, Path)),
    responses((status = 200, body = Trace), (status = 404, body = ErrorBody)))]
pub async fn get_trace(
    State(e): State<Engine>,
    Path(trace_id): Path<String>,
) -> ApiResult<Json<Trace>> {
    let spans = e.traces().trace(&trace_id).await?;
    if spans.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no spans of trace {trace_id} are kept"),
        ));
    }
    Ok(Json(Trace {
        trace_id: trace_id.to_ascii_lowercase(),
        spans: spans.into_iter().map(Into::into).collect(),
    }))
}
