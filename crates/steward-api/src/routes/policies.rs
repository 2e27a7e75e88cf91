//! The Cedar policy set: read and replace.

use super::*;

/// The Cedar policies in force.
#[utoipa::path(get, path = "/api/v1/policies", responses((status = 200, body = PolicySet)))]
pub async fn get_policies(State(e): State<Engine>) -> ApiResult<Json<PolicySet>> {
    let (version, hash, text) = e.policies().active().await?;
    Ok(Json(PolicySet {
        version,
        hash,
        text,
    }))
}

/// Replaces the policy set: the body is Cedar policy text. It is validated against the
/// schema first; a set that does not parse or validate is refused with Cedar's diagnostics and
/// the active set stays in force.
#[utoipa::path(put, path = "/api/v1/policies", request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = PolicySet), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody, description = "The policies in force do not let administrators update them")))]
pub async fn put_policies(
    State(e): State<Engine>,
    crate::extract::Text(body): crate::extract::Text,
) -> ApiResult<Json<PolicySet>> {
    if body.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body is the Cedar policy text, and it is empty: an empty set would deny every agent everything; send the policies (a bare `forbid (principal is Steward::Agent, action, resource);` if that is what you mean)",
        ));
    }
    let rec = e.policies().put(&body).await?;
    Ok(Json(PolicySet {
        version: rec.version,
        hash: rec.hash,
        text: rec.text,
    }))
}
