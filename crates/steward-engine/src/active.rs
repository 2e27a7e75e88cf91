//! The runs this node drives now, each with the claim it drives it under, and how one is told
//! to stop: shared by the scheduler, the heartbeat, and everything that stops runs (cancels,
//! supervisors, a lost lease).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use steward_types::RunId;
use tokio_util::sync::CancellationToken;

use crate::host::Shared;
use crate::runs;

/// Why a run task was told to stop.
#[derive(Clone, Debug)]
pub(crate) enum Stop {
    Cancel(String),
    LeaseLost,
}

/// Stops run `id` with its recorded cancel reason, if this node drives it.
pub(crate) async fn stop_cancelled(shared: &Shared, id: &RunId) {
    if shared.claim_of(id).is_none() {
        return;
    }
    if let Ok(Some(run)) = shared.store.get_run(id).await {
        if let Some(reason) = run.cancel_reason {
            shared.active.stop(id, Stop::Cancel(reason));
        }
    }
}

/// The runs this node drives now, each with the claim it drives it under; shared by the
/// scheduler, the heartbeat, and everything that stops runs (cancels, supervisors).
#[derive(Default)]
pub(crate) struct ActiveRuns(Mutex<HashMap<RunId, Active>>);

/// Supervisors stop the children they cancel through this.
impl steward_orchestrate::StopRun for ActiveRuns {
    fn cancel(&self, id: &RunId, why: &str) {
        self.stop(id, Stop::Cancel(why.to_string()));
    }
}

impl std::ops::Deref for ActiveRuns {
    type Target = Mutex<HashMap<RunId, Active>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ActiveRuns {
    /// Stops run `id`'s task now, if this node drives it (the first reason given wins).
    pub(crate) fn stop(&self, id: &RunId, why: Stop) {
        if let Ok(active) = self.0.lock() {
            if let Some(a) = active.get(id) {
                if let Ok(mut s) = a.stop.lock() {
                    s.get_or_insert(why);
                }
                a.token.cancel();
            }
        }
    }
}

/// A run this node drives: its task's stop signal and reason, and its claim.
pub(crate) struct Active {
    pub(crate) token: CancellationToken,
    pub(crate) stop: Arc<Mutex<Option<Stop>>>,
    /// The claim the task drives the run under, and until when its lease lasts.
    pub(crate) held: Arc<runs::Held>,
    /// A later claim of the run, made while this task still drove it under an earlier one
    /// that another node held in between: the task is stopped, and the run starts afresh from
    /// its journal under this claim once the task has ended.
    pub(crate) successor: Option<steward_store::RunRecord>,
}
