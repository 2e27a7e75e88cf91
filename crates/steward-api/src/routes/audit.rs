//! The audit log: verify and export.

use super::*;

/// Verifies the audit log: every record against its hash, the numbering, and the rebuilt tree
/// against every signed checkpoint. Problems name the records concerned.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, body = AuditReport)))]
pub async fn verify_audit(State(e): State<Engine>) -> ApiResult<Json<AuditReport>> {
    Ok(Json(e.audit().verify().await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// Only records from this time on (Unix milliseconds; default: all).
    pub since: Option<i64>,
    /// Only this run's records.
    pub run: Option<String>,
}

/// Audit evidence: one JSON object per line — the record, its leaf hash, and its inclusion
/// proof against the latest signed checkpoint.
#[utoipa::path(get, path = "/api/v1/audit/export", params(AuditExportQuery),
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson")))]
pub async fn export_audit(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<AuditExportQuery>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let run = q
        .run
        .as_deref()
        .map(|id| {
            RunId::parse(id)
                .map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("run: {}", e.0)))
        })
        .transpose()?;
    let mut lines = e
        .audit()
        .export(q.since.unwrap_or(0), run.as_ref())
        .await?
        .join("\n");
    if !lines.is_empty() {
        lines.push('\n');
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        lines,
    ))
}
