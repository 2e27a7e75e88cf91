//! Agents: applying manifests, listing and reading versions.

use super::*;

/// Applies agent manifests (YAML or JSON; several documents allowed). All or nothing.
#[utoipa::path(post, path = "/api/v1/agents", request_body(content = String, content_type = "application/yaml"),
    responses((status = 200, body = ApplyResult), (status = 400, body = ErrorBody)))]
pub async fn apply(State(e): State<Engine>, Text(body): Text) -> ApiResult<Json<ApplyResult>> {
    let (applied, supervisors) = e.agents().apply_documents(&body).await?;
    Ok(Json(ApplyResult {
        supervisors,
        agents: applied
            .into_iter()
            .map(|a| AppliedAgent {
                name: a.agent.name,
                version: a.agent.version,
                changed: a.changed,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = AgentList)))]
pub async fn list_agents(State(e): State<Engine>) -> ApiResult<Json<AgentList>> {
    Ok(Json(AgentList {
        agents: e
            .agents()
            .list()
            .await?
            .into_iter()
            .map(Agent::from)
            .collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    pub version: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/agents/{name}", params(("name" = String, Path), AgentQuery),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(e.agents().get(&name, q.version).await?.into()))
}
