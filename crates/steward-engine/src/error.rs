use steward_types::ErrorCode;

/// Engine errors as the API sees them: each carries the stable code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// Capacity is used up for now; the same request may succeed later.
    #[error("{0}")]
    Busy(String),
    #[error("storage: {0}")]
    Store(#[from] steward_store::Error),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::InvalidManifest(_) => ErrorCode::InvalidManifest,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Busy(_) => ErrorCode::Busy,
            Error::Store(e) => e.code(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::launch::LaunchError> for Error {
    fn from(e: crate::launch::LaunchError) -> Self {
        match e {
            crate::launch::LaunchError::TooLarge { .. } => Error::PayloadTooLarge(e.to_string()),
            crate::launch::LaunchError::Store(e) => e.into(),
        }
    }
}

impl From<steward_orchestrate::Error> for Error {
    fn from(e: steward_orchestrate::Error) -> Self {
        use steward_orchestrate::Error as O;
        match e {
            O::InvalidRequest(m) => Error::InvalidRequest(m),
            O::NotFound(m) => Error::NotFound(m),
            O::Conflict(m) => Error::Conflict(m),
            O::PayloadTooLarge(m) => Error::PayloadTooLarge(m),
            O::Unavailable(m) => Error::Unavailable(m),
            O::Store(e) => Error::Store(e),
        }
    }
}
