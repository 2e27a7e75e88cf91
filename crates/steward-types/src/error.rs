use serde::Serialize;

/// Stable error codes, the `error.code` field of every API error. Never renumber or rename:
/// clients match on these strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidManifest,
    InvalidId,
    NotFound,
    Conflict,
    PayloadTooLarge,
    Timeout,
    Unavailable,
    Internal,
    Unauthorized,
    Forbidden,
    /// Capacity is used up for now; try again later (HTTP 429).
    Busy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidManifest => "invalid_manifest",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
        }
    }
}

/// Codes recorded on failed runs (`runs.error_code`), also stable.
pub mod run_error {
    pub const DIVERGENCE: &str = "divergence";
    pub const IN_DOUBT: &str = "in_doubt";
    pub const MAX_STEPS: &str = "max_steps_exceeded";
    pub const LOOP_DETECTED: &str = "loop_detected";
    pub const RUN_TIMEOUT: &str = "run_timeout";
    pub const STEP_TIMEOUT: &str = "step_timeout";
    pub const MODEL_ERROR: &str = "model_error";
    pub const TOOL_ERROR: &str = "tool_error";
    pub const CHILD_FAILED: &str = "child_failed";
    pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
    pub const POLICY_DENIED: &str = "policy_denied";
    pub const AWAITING_APPROVAL: &str = "awaiting_approval";
    pub const INTERNAL: &str = "internal";
}
