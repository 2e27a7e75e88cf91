//! Who calls the endpoints agents use with their own credentials — task workers, memory:
//! the administrator, or an agent with its API key (and a delegated token it holds).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use steward_engine::{Engine, GatewayError, Principal};
use steward_types::ErrorCode;

use crate::error::{ApiError, ApiResult};

/// Who calls a task worker's or memory endpoint: the administrator (the admin token, or anyone when
/// none is set), or an agent with its own API key (and a delegated token it holds) — which may use only
/// queues a policy opens to it (`task.enqueue`, `task.lease` on `Steward::Queue`) and worker
/// names of its own (`<agent>` or `<agent>:<anything>`), so it reports only its own leases.
#[derive(Clone)]
pub enum Caller {
    Admin,
    Agent(Arc<Principal>),
}

pub(crate) fn refused(e: GatewayError) -> ApiError {
    match e {
        GatewayError::Unauthorized(m) => ApiError::new(ErrorCode::Unauthorized, m),
        GatewayError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
        other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

impl Caller {
    pub(crate) async fn may(&self, e: &Engine, action: &str, queue: &str) -> ApiResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Agent(p) => e
                .gateway()
                .authorize_queue(p, action, queue)
                .await
                .map_err(refused),
        }
    }

    pub(crate) fn owns(&self, worker: &str) -> ApiResult<()> {
        match self {
            Caller::Agent(p)
                if worker != p.agent.as_str()
                    && !worker
                        .strip_prefix(p.agent.as_str())
                        .is_some_and(|rest| rest.starts_with(':')) =>
            {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "worker {worker:?}: with agent {0}'s credential a worker is named {0} or {0}:<anything>",
                        p.agent
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Identifies the caller of a task worker's or memory endpoint (see [`Caller`]).
pub async fn worker_auth(
    State((engine, token)): State<(Engine, Option<String>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let delegation = req
        .headers()
        .get("x-steward-delegation")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let caller = match (&token, given) {
        (Some(t), Some(g)) if crate::same_secret(&g, t) => Caller::Admin,
        (None, None) => Caller::Admin,
        (_, Some(g)) => match engine
            .gateway()
            .authenticate(Some(&g), delegation.as_deref(), None)
            .await
        {
            Ok(p) => Caller::Agent(Arc::new(p)),
            Err(e) => return refused(e).into_response(),
        },
        (Some(_), None) => {
            return ApiError::new(
                ErrorCode::Unauthorized,
                "send `Authorization: Bearer` with the admin token or an agent's own API key",
            )
            .into_response()
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
