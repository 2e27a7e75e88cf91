//! Handlers under `/api/v1`, plus health: one module per resource, each mapping onto one
//! handle of the engine (`Engine::keys()`, `Engine::sandboxes()`, …).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use steward_engine::Engine;
use steward_store::RunFilter;
use steward_types::{ErrorCode, RunId, RunState};
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Raw, Text};
use crate::wire::*;

mod agents;
mod alerts;
mod approvals;
mod audit;
mod budgets;
mod delegations;
mod evaluators;
mod health;
mod identities;
mod keys;
mod mcp_servers;
mod openapis;
mod policies;
mod runs;
mod sandboxes;
mod secrets;
mod tools;
mod traces;

pub use agents::*;
pub use alerts::*;
pub use approvals::*;
pub use audit::*;
pub use budgets::*;
pub use delegations::*;
pub use evaluators::*;
pub use health::*;
pub use identities::*;
pub use keys::*;
pub use mcp_servers::*;
pub use openapis::*;
pub use policies::*;
pub use runs::*;
pub use sandboxes::*;
pub use secrets::*;
pub use tools::*;
pub use traces::*;
