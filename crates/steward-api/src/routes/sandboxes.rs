//! Persistent sandboxes: create, list, exec, control, files, snapshots.

use super::*;

/// Creates persistent sandboxes: one empty, or `count` forks of a snapshot (no copy).
#[utoipa::path(post, path = "/api/v1/sandboxes", request_body = CreateSandboxes,
    responses((status = 201, body = SandboxIds), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_sandboxes(
    State(e): State<Engine>,
    ApiJson(r): ApiJson<CreateSandboxes>,
) -> ApiResult<(StatusCode, Json<SandboxIds>)> {
    if r.ttl_s.is_some_and(|t| !(1..=366 * 86_400).contains(&t)) {
        return Err(crate::error::ApiError::new(
            steward_types::ErrorCode::InvalidRequest,
            "ttl_s: from 1 second to a year",
        ));
    }
    let (ids, snapshot) = e
        .sandboxes()
        .create(
            r.from_snapshot.as_deref(),
            r.template.as_deref(),
            r.count.unwrap_or(1),
            r.ttl_s.map(|t| t * 1000),
            &r.egress,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SandboxIds {
            sandboxes: ids,
            snapshot,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/sandboxes", responses((status = 200, body = SandboxList)))]
pub async fn list_sandboxes(State(e): State<Engine>) -> ApiResult<Json<SandboxList>> {
    Ok(Json(SandboxList {
        sandboxes: e
            .sandboxes()
            .list()
            .await?
            .into_iter()
            .map(|s| SandboxInfo {
                id: s.id,
                layers: s.layers,
                state: s.state.into(),
            })
            .collect(),
    }))
}

/// Runs a command in a persistent sandbox: a fresh isolated process tree on its workspace.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/exec", params(("id" = String, Path)), request_body = SandboxExec,
    responses((status = 200, body = SandboxExecResult), (status = 404, body = ErrorBody)))]
pub async fn sandbox_exec(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<SandboxExec>,
) -> ApiResult<Json<SandboxExecResult>> {
    let stdin = r.stdin.clone().unwrap_or_default();
    Ok(Json(
        e.sandboxes()
            .exec(&id, &command(r)?, stdin.as_bytes(), None)
            .await?
            .into(),
    ))
}

/// What an exec request asks to run: `command`, or `code` in `language`.
fn command(r: SandboxExec) -> ApiResult<steward_engine::sandboxes::Command> {
    use steward_engine::sandboxes::Command;
    match (r.command, r.code, r.language) {
        (Some(c), None, None) => Ok(Command::Shell(c)),
        (None, Some(code), Some(language)) => Ok(Command::Code { language, code }),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give `command`, or `code` and `language`",
        )),
    }
}

/// The same, with stdout and stderr streamed as they come: Server-Sent Events `stdout` and
/// `stderr` (text), then `end` (the result, output included) or `error`.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/exec/stream", params(("id" = String, Path)), request_body = SandboxExec,
    responses((status = 200, description = "text/event-stream of `stdout`, `stderr` and a final `end` (SandboxExecResult) or `error`")))]
pub async fn sandbox_exec_stream(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<SandboxExec>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stdin = r.stdin.clone().unwrap_or_default();
    let command = command(r)?;
    let done = tokio::spawn(async move {
        e.sandboxes()
            .exec(&id, &command, stdin.as_bytes(), Some(tx))
            .await
            .map_err(|e| e.to_string())
    });
    let live = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        let event = match chunk {
            steward_sandbox::Output::Stdout(b) => Event::default()
                .event("stdout")
                .data(String::from_utf8_lossy(&b)),
            steward_sandbox::Output::Stderr(b) => Event::default()
                .event("stderr")
                .data(String::from_utf8_lossy(&b)),
        };
        Some((Ok(event), rx))
    });
    let end = futures::stream::once(async move {
        let event = match done.await {
            Ok(Ok(result)) => Event::default()
                .event("end")
                .json_data(SandboxExecResult::from(result))
                .unwrap_or_else(|_| Event::default().event("end")),
            Ok(Err(err)) => Event::default().event("error").data(err),
            Err(err) => Event::default().event("error").data(err.to_string()),
        };
        Ok(event)
    });
    Ok(Sse::new(live.chain(end)).keep_alive(KeepAlive::default()))
}

/// Ends what a sandbox is running: its whole process tree is killed and the exec reports
/// `cancelled`.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/cancel", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Cancel)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a sandbox: what it runs is frozen (its time limit stops counting) and nothing new
/// starts until it is resumed.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/pause", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn pause_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Pause)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn resume_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes()
        .control(&id, steward_engine::SandboxAction::Resume)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The processes of what a sandbox is running (none when idle).
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/processes", params(("id" = String, Path)),
    responses((status = 200, body = SandboxProcesses), (status = 404, body = ErrorBody)))]
pub async fn sandbox_processes(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxProcesses>> {
    Ok(Json(SandboxProcesses {
        processes: e
            .sandboxes()
            .processes(&id)
            .await?
            .into_iter()
            .map(|p| SandboxProcess {
                pid: p.pid,
                ppid: p.ppid,
                state: p.state,
                command: p.command,
            })
            .collect(),
    }))
}

/// Signals one process of a sandbox (its pid as the sandbox numbers it).
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/processes/{pid}/kill",
    params(("id" = String, Path), ("pid" = i32, Path)), request_body = KillProcess,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn kill_sandbox_process(
    State(e): State<Engine>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(r): ApiJson<KillProcess>,
) -> ApiResult<StatusCode> {
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("pid {pid:?}: a process id, a whole number from 1 to 2147483647"),
        )
    })?;
    e.sandboxes().kill(&id, pid, r.signal.unwrap_or(15)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn file_path(q: FilePath) -> ApiResult<String> {
    q.path
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "query: `path` is required"))
}

/// Writes the request body to a file in a sandbox's workspace (directories made as needed).
#[utoipa::path(put, path = "/api/v1/sandboxes/{id}/files", params(("id" = String, Path), FilePath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_file(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
    Raw(body): Raw,
) -> ApiResult<StatusCode> {
    e.sandboxes().upload(&id, &file_path(q)?, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file of a sandbox's workspace, as bytes.
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/files", params(("id" = String, Path), FilePath),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ErrorBody)))]
pub async fn download_file(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let bytes = e.sandboxes().download(&id, &file_path(q)?).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    ))
}

/// What a directory of a sandbox's workspace holds (`path` defaults to the workspace).
#[utoipa::path(get, path = "/api/v1/sandboxes/{id}/files/list", params(("id" = String, Path), FilePath),
    responses((status = 200, body = FileList), (status = 400, body = ErrorBody)))]
pub async fn list_files(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilePath>,
) -> ApiResult<Json<FileList>> {
    let path = q.path.unwrap_or_else(|| "/workspace".into());
    let entries = e.sandboxes().files(&id, &path).await?;
    Ok(Json(FileList {
        path,
        entries: entries
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                kind: f.kind.into(),
                size: f.size,
                modified_ms: f.modified_ms,
            })
            .collect(),
    }))
}

/// Freezes a sandbox's workspace into a content-addressed snapshot.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/snapshot", params(("id" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn snapshot_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<Json<Snapshot>> {
    Ok(Json(Snapshot {
        snapshot: e.sandboxes().snapshot(&id).await?,
    }))
}

/// Puts a sandbox back on a snapshot, discarding what it wrote since.
#[utoipa::path(post, path = "/api/v1/sandboxes/{id}/restore", params(("id" = String, Path)), request_body = RestoreSandbox,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn restore_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<RestoreSandbox>,
) -> ApiResult<StatusCode> {
    e.sandboxes().restore(&id, &r.snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_sandbox(
    State(e): State<Engine>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    e.sandboxes().remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
