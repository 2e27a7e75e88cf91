//! Every API error is `{"error": {"code", "message"}}` with a stable code and the HTTP status
//! that goes with it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use steward_types::ErrorCode;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: invalid_request, invalid_manifest, invalid_id, not_found, conflict,
    /// payload_too_large, timeout, unavailable, busy, internal.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::InvalidRequest | ErrorCode::InvalidManifest | ErrorCode::InvalidId => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Orchestration's errors (task queues, schedules, supervisors, the merge queue) answer as the
/// engine's do.
impl From<steward_engine::OrchestrateError> for ApiError {
    fn from(e: steward_engine::OrchestrateError) -> Self {
        steward_engine::Error::from(e).into()
    }
}

impl From<steward_engine::Error> for ApiError {
    fn from(e: steward_engine::Error) -> Self {
        let code = e.code();
        if let steward_engine::Error::Store(store) = &e {
            if let Some(why) = store.unavailable() {
                tracing::warn!(error = %e, "the store cannot serve");
                return ApiError::new(
                    code,
                    format!("the store cannot take this now: {why}; nothing was written — try again once it can"),
                );
            }
        }
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
            return ApiError::new(code, "internal error; the server log has the details");
        }
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
