//! Agents' identities: suspend, resume, revoke, delete, read.

use super::*;

async fn set_identity(
    e: &Engine,
    name: &str,
    status: &str,
    r: Reason,
) -> ApiResult<Json<Identity>> {
    Ok(Json(
        e.identities()
            .set(name, status, r.owner.as_deref(), &r.reason)
            .await?
            .into(),
    ))
}

/// Suspends an agent: its runs' steps and its `/v1` calls are refused until resumed.
#[utoipa::path(post, path = "/api/v1/agents/{name}/suspend", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn suspend_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "suspended", r).await
}

/// Lets a suspended agent act again (and records its owner, when given).
#[utoipa::path(post, path = "/api/v1/agents/{name}/resume", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn resume_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "active", r).await
}

/// Revokes an agent for good: nothing it does is allowed again.
#[utoipa::path(post, path = "/api/v1/agents/{name}/revoke", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn revoke_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "revoked", r).await
}

/// Deletes an agent's identity for good: every key it has is revoked, nothing it does is allowed
/// again, and the identity stays on record with the reason.
#[utoipa::path(post, path = "/api/v1/agents/{name}/delete", params(("name" = String, Path)), request_body = Reason,
    responses((status = 200, body = Identity), (status = 409, body = ErrorBody)))]
pub async fn delete_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Reason>,
) -> ApiResult<Json<Identity>> {
    set_identity(&e, &name, "deleted", r).await
}

/// An agent's identity (active, with no owner recorded, until changed).
#[utoipa::path(get, path = "/api/v1/agents/{name}/identity", params(("name" = String, Path)),
    responses((status = 200, body = Identity)))]
pub async fn get_identity(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<Identity>> {
    Ok(Json(match e.identities().get(&name).await? {
        Some(i) => i.into(),
        None => Identity {
            agent: name,
            owner: None,
            status: "active".into(),
            reason: None,
            updated_at: None,
        },
    }))
}
