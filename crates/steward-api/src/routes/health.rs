//! The server itself: liveness, readiness, metrics, open circuits, and the 404 for unknown paths.

use super::*;

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// The engine's metrics, Prometheus text format: among them the time Steward adds to each call.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(e): State<Engine>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.metrics_text(),
    )
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(e): State<Engine>) -> ApiResult<Json<Health>> {
    e.ready().await?;
    Ok(Json(Health {
        status: "ready".into(),
        backend: e.store().backend().into(),
        node: e.node().to_string(),
        active_runs: e.active_runs(),
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /openapi.json")
}

/// The circuits open on this node: deployments skipped until their cooldown ends.
#[utoipa::path(get, path = "/api/v1/circuits", responses((status = 200, body = CircuitList)))]
pub async fn list_circuits(State(e): State<Engine>) -> Json<CircuitList> {
    Json(CircuitList {
        circuits: e
            .gateway()
            .open_circuits()
            .into_iter()
            .map(|(deployment, open_for_ms)| OpenCircuit {
                deployment,
                open_for_ms,
            })
            .collect(),
    })
}
