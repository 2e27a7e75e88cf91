//! Domain vocabulary shared by every Steward crate: ids, states, error codes,
//! agent manifests and configuration. No IO lives here.

pub mod child_env;
pub mod clock;
pub mod config;
pub mod error;
pub mod ids;
pub mod manifest;
pub mod state;

pub use config::Config;
pub use error::ErrorCode;
pub use ids::{AgentName, NodeId, RunId};
pub use manifest::{AgentManifest, AgentSpec, BudgetPolicy, RecoveryPolicy, ScriptTurn};
pub use state::RunState;

/// Milliseconds since the Unix epoch: the one time unit stored anywhere.
pub type Millis = i64;
