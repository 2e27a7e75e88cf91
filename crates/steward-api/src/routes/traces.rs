//! Traces kept in the store: read by trace id.

use super::*;

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
