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
        match self {
            Error::Timeout { .. } | Error::Connect { .. } => true,
            Error::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
