//! Alert rules: put, list with their state, remove, and their webhook deliveries.

use super::*;

#[utoipa::path(put, path = "/api/v1/alerts/{name}", params(("name" = String, Path)), request_body = PutAlert,
    responses((status = 200, body = Alert), (status = 400, body = ErrorBody)))]
pub async fn put_alert(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutAlert>,
) -> ApiResult<Json<Alert>> {
    Ok(Json(e.alerts().put(&name, req.into()).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/alerts", responses((status = 200, body = AlertList)))]
pub async fn list_alerts(State(e): State<Engine>) -> ApiResult<Json<AlertList>> {
    Ok(Json(AlertList {
        alerts: e
            .alerts()
            .list()
            .await?
            .into_iter()
            .map(Alert::from)
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/alerts/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_alert(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.alerts().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A rule's latest webhook calls (the newest 100), with how each went.
#[utoipa::path(get, path = "/api/v1/alerts/{name}/deliveries", params(("name" = String, Path)),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)))]
pub async fn alert_deliveries(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeliveryList>> {
    Ok(Json(DeliveryList {
        deliveries: e
            .alerts()
            .deliveries(&name)
            .await?
            .into_iter()
            .map(Delivery::from)
            .collect(),
    }))
}
