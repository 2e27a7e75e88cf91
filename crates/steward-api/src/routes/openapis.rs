//! HTTP APIs described by OpenAPI documents: each operation joins the registry as a tool
//! under the API's name as a prefix.

use super::*;

fn wire(a: steward_engine::handles::openapis::OpenApiInfo) -> OpenApi {
    OpenApi {
        name: a.name,
        base_url: a.base_url,
        headers: a.headers,
        query: a.query,
        oauth_token_url: a.oauth_token_url,
        owner: a.owner,
        tools: a.tools,
        skipped: a.skipped,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

/// Adds an HTTP API from its OpenAPI 3 document, or replaces one: each operation becomes a
/// tool `NAME.operationId` on every node.
#[utoipa::path(put, path = "/api/v1/openapi/{name}", params(("name" = String, Path)),
    request_body = PutOpenApi,
    responses((status = 200, body = OpenApi), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_openapi(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PutOpenApi>,
) -> ApiResult<Json<OpenApi>> {
    let def = steward_engine::handles::openapis::OpenApiDefinition {
        document: b.document,
        base_url: b.base_url,
        headers: b.headers,
        query: b.query,
        oauth: b.oauth.map(Into::into),
        owner: b.owner,
    };
    Ok(Json(wire(e.openapis().put(&name, def).await?)))
}

/// Every configured HTTP API, with the tools it offers on the node that answers.
#[utoipa::path(get, path = "/api/v1/openapi", responses((status = 200, body = OpenApiList)))]
pub async fn list_openapis(State(e): State<Engine>) -> ApiResult<Json<OpenApiList>> {
    Ok(Json(OpenApiList {
        apis: e.openapis().list().await?.into_iter().map(wire).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/openapi/{name}", params(("name" = String, Path)),
    responses((status = 200, body = OpenApi), (status = 404, body = ErrorBody)))]
pub async fn get_openapi(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<OpenApi>> {
    Ok(Json(wire(e.openapis().get(&name).await?)))
}

/// Removes an HTTP API: its tools leave the registry.
#[utoipa::path(delete, path = "/api/v1/openapi/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_openapi(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.openapis().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
