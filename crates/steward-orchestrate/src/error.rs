use steward_types::ErrorCode;

/// Orchestration errors: each carries the stable code the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Store(#[from] steward_store::Error),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) | Error::Store(steward_store::Error::Conflict(_)) => {
                ErrorCode::Conflict
            }
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Store(e) if e.unavailable().is_some() => ErrorCode::Unavailable,
            Error::Store(_) => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::LaunchError> for Error {
    fn from(e: crate::LaunchError) -> Self {
        match e {
            crate::LaunchError::TooLarge { .. } => Error::PayloadTooLarge(e.to_string()),
            crate::LaunchError::Store(e) => e.into(),
        }
    }
}
