/// Orchestration errors; the engine maps each onto its own, which carry the API's codes.
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::LaunchError> for Error {
    fn from(e: crate::LaunchError) -> Self {
        match e {
            crate::LaunchError::TooLarge { .. } => Error::PayloadTooLarge(e.to_string()),
            crate::LaunchError::Store(e) => e.into(),
        }
    }
}
