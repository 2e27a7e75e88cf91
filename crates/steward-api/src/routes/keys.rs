//! API keys: issue, list, revoke, rotate.

use super::*;

/// Issues an API key for the `/v1` gateway. The secret is in this response only.
#[utoipa::path(post, path = "/api/v1/keys", request_body = CreateKey,
    responses((status = 201, body = ApiKey), (status = 400, body = ErrorBody)))]
pub async fn create_key(
    State(e): State<Engine>,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    let (rec, key) = e.keys().create(&req.agent, req.ttl_s).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKey {
            id: rec.id,
            agent: rec.agent,
            key,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    pub agent: Option<String>,
}

/// API keys, newest first, without their secrets.
#[utoipa::path(get, path = "/api/v1/keys", params(KeyQuery), responses((status = 200, body = KeyList)))]
pub async fn list_keys(
    State(e): State<Engine>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<Json<KeyList>> {
    Ok(Json(KeyList {
        keys: e
            .keys()
            .list(q.agent.as_deref())
            .await?
            .into_iter()
            .map(KeyInfo::from)
            .collect(),
    }))
}

/// Revokes a key, with the reason; calls with it are refused from now on.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = KeyInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_key(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(e.keys().revoke(&id, &r.reason).await?.into()))
}

/// Replaces a key: a new one for the same agent (shown once) and the old one revoked.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", params(("id" = String, Path)),
    responses((status = 201, body = ApiKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The key is revoked already")))]
pub async fn rotate_key(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    let (rec, key) = e.keys().rotate(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKey {
            id: rec.id,
            agent: rec.agent,
            key,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
        }),
    ))
}
