//! The tool registry: what tools there are, their schemas and annotations.

use super::*;

fn wire(t: steward_engine::handles::tools::ToolEntry) -> ToolInfo {
    ToolInfo {
        name: t.name,
        description: t.description,
        input_schema: t.input_schema,
        annotations: ToolHints {
            read_only: t.annotations.read_only,
            destructive: t.annotations.destructive,
            idempotent: t.annotations.idempotent,
            open_world: t.annotations.open_world,
        },
        source: t.source,
        outside_runs: t.outside_runs,
        output_schema: t.output_schema,
        version: t.version,
        owner: t.owner,
    }
}

/// Every tool of the registry, by name.
#[utoipa::path(get, path = "/api/v1/tools", responses((status = 200, body = ToolList)))]
pub async fn list_tools(State(e): State<Engine>) -> ApiResult<Json<ToolList>> {
    Ok(Json(ToolList {
        tools: e.tools().list().into_iter().map(wire).collect(),
    }))
}

/// One tool, by name.
#[utoipa::path(get, path = "/api/v1/tools/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ToolInfo), (status = 404, body = ErrorBody)))]
pub async fn get_tool(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<ToolInfo>> {
    e.tools()
        .get(&name)
        .map(|t| Json(wire(t)))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("there is no tool {name:?}")))
}
