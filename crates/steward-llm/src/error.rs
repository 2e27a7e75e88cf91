#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{provider}: no answer within {timeout_ms} ms; raise llm.timeout_ms or check the upstream"
    )]
    Timeout { provider: String, timeout_ms: u64 },
    #[error("{provider}: cannot reach {url}: {detail}")]
    Connect {
        provider: String,
        url: String,
        detail: String,
    },
    #[error("{provider}: upstream answered HTTP {status}: {body}")]
    Status {
        provider: String,
        status: u16,
        body: String,
        /// The upstream's `Retry-After`, when it sent one in seconds.
        retry_after: Option<std::time::Duration>,
    },
    #[error("{provider}: upstream sent a response that is not a valid chat completion: {detail}")]
    Garbage { provider: String, detail: String },
    /// The deployment's content filter refused the request or its answer.
    #[error("{provider}: the content filter refused: {detail}")]
    Refused { provider: String, detail: String },
    #[error("scripted model: {0}")]
    Script(String),
    #[error("model route {0}")]
    Route(String),
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// Whether trying again could help (the request itself was fine).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Transient
    }

    /// What kind of failure this is, which decides where a request goes next: the same
    /// deployment again, the next one, a fallback chain for this kind, or nowhere.
    pub fn failure(&self) -> Failure {
        match self {
            Error::Timeout { .. } | Error::Connect { .. } => Failure::Transient,
            Error::Status { status, .. } if *status == 429 || *status >= 500 => Failure::Transient,
            Error::Status { body, .. } => {
                let body = body.to_ascii_lowercase();
                let any = |needles: &[&str]| needles.iter().any(|n| body.contains(n));
                if any(CONTEXT_WINDOW_SIGNS) {
                    Failure::ContextWindow
                } else if any(CONTENT_FILTER_SIGNS) {
                    Failure::ContentFilter
                } else {
                    Failure::Request
                }
            }
            Error::Refused { .. } => Failure::ContentFilter,
            _ => Failure::Request,
        }
    }
}

/// Where a failed request may go next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The deployment failed (timeout, connection, 429, 5xx): retry it, then the next one.
    Transient,
    /// The prompt does not fit the model's context window: only a larger model helps.
    ContextWindow,
    /// A content filter refused: only another provider's model may answer.
    ContentFilter,
    /// The request itself is at fault; every deployment would refuse it.
    Request,
}

/// How providers word a prompt that is too long (OpenAI, Azure, Anthropic, vLLM and others).
const CONTEXT_WINDOW_SIGNS: &[&str] = &[
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "input is too long",
];

/// How providers word a content-filter refusal (OpenAI, Azure OpenAI and others).
const CONTENT_FILTER_SIGNS: &[&str] = &[
    "content_filter",
    "content_policy_violation",
    "content management policy",
    "responsibleaipolicyviolation",
];

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, body: &str) -> Error {
        Error::Status {
            provider: "p".into(),
            status,
            body: body.into(),
            retry_after: None,
        }
    }

    #[test]
    fn failures_are_told_apart_by_what_providers_say() {
        let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(status(400, anthropic).failure(), Failure::ContextWindow);
        let azure = r#"{"error":{"code":"content_filter","message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy."}}"#;
        assert_eq!(status(400, azure).failure(), Failure::ContentFilter);
        assert_eq!(
            status(400, r#"{"error":{"message":"bad role"}}"#).failure(),
            Failure::Request
        );
        assert_eq!(status(503, "context window").failure(), Failure::Transient);
        assert_eq!(status(429, "").failure(), Failure::Transient);
    }
}
