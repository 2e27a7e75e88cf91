//! The vault's secrets: put, list names, delete.

use super::*;

/// Seals a credential in the vault (for providers' `api_key_secret` and tools'
/// `{{secret:NAME}}`). The value is never returned, logged or shown to a model.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", params(("name" = String, Path)),
    request_body = PutSecret,
    responses((status = 200, body = Secret), (status = 400, body = ErrorBody)))]
pub async fn put_secret(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PutSecret>,
) -> ApiResult<Json<Secret>> {
    let updated_at = e.secrets().put(&name, &b.value).await?;
    Ok(Json(Secret { name, updated_at }))
}

/// The vault's secret names.
#[utoipa::path(get, path = "/api/v1/secrets", responses((status = 200, body = SecretList)))]
pub async fn list_secrets(State(e): State<Engine>) -> ApiResult<Json<SecretList>> {
    Ok(Json(SecretList {
        secrets: e
            .secrets()
            .names()
            .await?
            .into_iter()
            .map(|(name, updated_at)| Secret { name, updated_at })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_secret(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.secrets().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
