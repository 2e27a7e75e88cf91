//! Upstream MCP servers: their tools join the registry under the server's name as a prefix.

use super::*;

fn wire(s: steward_engine::handles::mcp_servers::McpServerInfo) -> McpServer {
    McpServer {
        name: s.name,
        transport: s.transport,
        command: s.command,
        env: s.env,
        url: s.url,
        headers: s.headers,
        oauth_token_url: s.oauth_token_url,
        owner: s.owner,
        created_at: s.created_at,
        updated_at: s.updated_at,
        status: s.status.map(|st| McpServerStatus {
            state: st.state.to_string(),
            pid: st.pid,
            tools: st.tools,
            restarts: st.restarts,
            last_error: st.last_error,
        }),
    }
}

/// Adds an upstream MCP server (a command spoken to over stdio, or a URL spoken to over
/// Streamable HTTP), or replaces one: it is connected (again) at once, and its tools appear as
/// `NAME.tool`.
#[utoipa::path(put, path = "/api/v1/mcp-servers/{name}", params(("name" = String, Path)),
    request_body = PutMcpServer,
    responses((status = 200, body = McpServer), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_mcp_server(
    State(e): State<Engine>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PutMcpServer>,
) -> ApiResult<Json<McpServer>> {
    use steward_engine::handles::mcp_servers::Transport;
    let transport = match b.url {
        Some(url) if b.command.is_empty() && b.env.is_empty() => Transport::Http {
            url,
            headers: b.headers,
            oauth: b.oauth.map(Into::into),
        },
        None if b.headers.is_empty() && b.oauth.is_none() => Transport::Stdio {
            command: b.command,
            env: b.env,
        },
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give either `command` (and `env`) for a server over stdio, or `url` (and `headers`, `oauth`) for one over Streamable HTTP",
            ))
        }
    };
    Ok(Json(wire(
        e.mcp_servers().put(&name, transport, b.owner).await?,
    )))
}

/// Every upstream MCP server, with how it is doing on the node that answers.
#[utoipa::path(get, path = "/api/v1/mcp-servers", responses((status = 200, body = McpServerList)))]
pub async fn list_mcp_servers(State(e): State<Engine>) -> ApiResult<Json<McpServerList>> {
    Ok(Json(McpServerList {
        servers: e
            .mcp_servers()
            .list()
            .await?
            .into_iter()
            .map(wire)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/mcp-servers/{name}", params(("name" = String, Path)),
    responses((status = 200, body = McpServer), (status = 404, body = ErrorBody)))]
pub async fn get_mcp_server(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<McpServer>> {
    Ok(Json(wire(e.mcp_servers().get(&name).await?)))
}

/// Removes an upstream MCP server: its process stops and its tools leave the registry.
#[utoipa::path(delete, path = "/api/v1/mcp-servers/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_mcp_server(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    e.mcp_servers().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts an upstream MCP server again on the node that answers.
#[utoipa::path(post, path = "/api/v1/mcp-servers/{name}/restart", params(("name" = String, Path)),
    responses((status = 200, body = McpServer), (status = 404, body = ErrorBody)))]
pub async fn restart_mcp_server(
    State(e): State<Engine>,
    Path(name): Path<String>,
) -> ApiResult<Json<McpServer>> {
    Ok(Json(wire(e.mcp_servers().restart(&name).await?)))
}
