//! Orchestration over durable runs: task queues, schedules, supervision trees and the merge
//! queue. It reaches the engine only through the narrow traits below — start a run
//! ([`Launch`]), stop one this node drives ([`StopRun`]), run a check in isolation
//! ([`Isolated`]) — so the engine crate stays the Kernel, runs and the gateway, and wires these
//! services in.
//!
//! Architecture invariant: knows nothing of the Kernel, policies, models, tools or HTTP; every
//! run it starts goes through [`Launch`], and every state it keeps is in the store.

mod error;
pub mod merge_queue;
pub mod schedules;
pub mod supervisors;
pub mod tasks;

use std::path::Path;

use steward_store::{NewRun, RunRecord};
use steward_types::RunId;

pub use error::{Error, Result};

/// Where a new run came from, for its audit record.
#[derive(Clone, Debug)]
pub enum Origin {
    /// `POST /api/v1/runs`.
    Api,
    /// A run's `spawn_agent` call (the parent is the run's `parent_id`).
    Spawn,
    /// Restarted after a failure, by its agent's recovery settings.
    Restart,
    /// Undoing a failed run's completed steps.
    Compensation,
    /// A supervision tree's child.
    Supervisor(String),
    /// A schedule that fired.
    Schedule(String),
    /// Resolving a merge conflict on a repository.
    MergeResolver(String),
    /// A run of an experiment over a dataset.
    Experiment(String),
    /// A fork of a run (`POST /api/v1/runs/{id}/fork`): the source and the step it departs at.
    Fork { source: String, at: i64 },
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Api => "api".into(),
            Origin::Spawn => "spawn_agent".into(),
            Origin::Restart => "restart".into(),
            Origin::Compensation => "compensation".into(),
            Origin::Supervisor(n) => format!("supervisor:{n}"),
            Origin::Schedule(n) => format!("schedule:{n}"),
            Origin::MergeResolver(r) => format!("merge_resolver:{r}"),
            Origin::Fork { source, at } => format!("fork:{source}@{at}"),
            Origin::Experiment(id) => format!("experiment:{id}"),
        }
    }
}

/// Why a run was not created.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("input is {size} bytes; the limit is {limit} (engine.max_input_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] steward_store::Error),
}

/// Starts runs: the engine's one place that creates them (input limit, audit record).
#[async_trait::async_trait]
pub trait Launch: Send + Sync {
    /// Creates `run` unless one with its id exists; whether it was created now.
    async fn create(&self, run: NewRun, origin: Origin) -> Result<(RunRecord, bool), LaunchError>;
}

/// Stops a run this node drives, now, with `why` as its cancel reason (the store already
/// records it cancelled).
pub trait StopRun: Send + Sync {
    fn cancel(&self, id: &RunId, why: &str);
}

/// Runs a command in a directory in isolation (a sandbox), for the merge queue's checks.
#[async_trait::async_trait]
pub trait Isolated: Send + Sync {
    /// Whether the command exited 0, and its stdout then stderr; `Ok(None)` when isolation is
    /// unavailable on this host (the check then runs as a plain subprocess).
    async fn exec_dir(
        &self,
        dir: &Path,
        command: &str,
    ) -> std::result::Result<Option<(bool, Vec<u8>)>, String>;
}
