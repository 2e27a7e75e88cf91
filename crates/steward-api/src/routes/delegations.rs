//! Delegation links: list, read, revoke.

use super::*;

/// Delegation links, newest first (never their tokens).
#[utoipa::path(get, path = "/api/v1/delegations", responses((status = 200, body = DelegationList)))]
pub async fn list_delegations(State(e): State<Engine>) -> ApiResult<Json<DelegationList>> {
    Ok(Json(DelegationList {
        delegations: e
            .delegations()
            .list(1000)
            .await?
            .into_iter()
            .map(Delegation::from)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/delegations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Delegation), (status = 404, body = ErrorBody)))]
pub async fn get_delegation(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<Delegation>> {
    Ok(Json(e.delegations().get(&id).await?.into()))
}

/// Revokes a delegation link, with the reason, and with it every link below: their tokens are
/// refused from now on.
#[utoipa::path(post, path = "/api/v1/delegations/{id}/revoke", params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = Revoked), (status = 404, body = ErrorBody)))]
pub async fn revoke_delegation(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Revoked>> {
    Ok(Json(Revoked {
        revoked: e.delegations().revoke(&id, &r.reason).await?,
    }))
}
