//! What a kind of syscall tells the Kernel. The Kernel's stages (identify, authorize, reserve,
//! journal the intent, act, journal the outcome, record) are written once, in
//! [`Kernel::call`](super::Kernel::call), over this trait; each kind of syscall is one type that
//! implements it ([`ModelCall`](super::ModelCall), [`ToolCall`](super::ToolCall)).

use std::future::Future;

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_store::JournalEntry;
use steward_tools::AlsoDecided;

use super::{step_error_text, ConversationHash, Kernel, RunCtx, StepError};

/// One kind of syscall: everything the Kernel needs to govern, journal and replay it.
pub trait Syscall: Send + Sync {
    /// What the syscall yields to the run, in this life or replayed from the journal.
    type Outcome: Send;

    /// The journal's `kind` for its entries (`model`, `tool`): part of every entry written, so
    /// it never changes once journals hold it.
    const KIND: &'static str;

    /// Whether an intent journaled without an outcome may already have been paid for (a model
    /// call the upstream answered and billed): the Kernel books it before acting again.
    const BILLED_WHEN_INTERRUPTED: bool = false;

    /// The journal's `name`: the model route or the tool name.
    fn name(&self) -> &str;

    /// The span this syscall is traced under (OpenTelemetry GenAI names and attributes).
    fn span(&self, ctx: &RunCtx, seq: i64) -> tracing::Span;

    /// The request's fingerprint: a replayed run asking for anything else at this position has
    /// diverged from its journal.
    fn request_hash(&self, conversation: &mut ConversationHash) -> String;

    /// What the journal's intent keeps of the request: enough to read the timeline.
    fn intent_body(&self) -> Value;

    /// The policy action and resource it is decided as.
    fn decided_as<'a>(&'a self, ctx: &'a RunCtx) -> (&'static str, &'a str);

    /// A second decision it needs besides (a tool that starts an agent or runs code).
    fn also_decided(&self, _kernel: &Kernel, _ctx: &RunCtx) -> Option<AlsoDecided> {
        None
    }

    /// Whether acting again after a crash is harmless.
    fn idempotent(&self, kernel: &Kernel) -> bool;

    /// The most it can cost, in nano-dollars, held on the run's budgets before it acts — or
    /// why that cannot be known. `None`: it costs nothing that is held.
    fn worst_case(&self, kernel: &Kernel, ctx: &RunCtx, key: &str) -> Option<Result<i64, String>>;

    /// Acts, once the policy allowed it and its worst case is held: the outcome and what it
    /// cost, in nano-dollars. An `Err` of a kind [`journaled_error`] keeps is the step's
    /// outcome; any other stops the step before its outcome is journaled.
    fn act(
        &self,
        kernel: &Kernel,
        ctx: &RunCtx,
        seq: i64,
        key: &str,
    ) -> impl Future<Output = Result<(Self::Outcome, i64), StepError>> + Send;

    /// The outcome of a call the policy denied (`by` says why).
    fn denied(&self, by: &str) -> Result<Self::Outcome, StepError>;

    /// How an outcome is journaled (and what it is traced with).
    fn journaled(outcome: &Self::Outcome) -> Journaled;

    /// An outcome read back from the journal.
    fn replayed(entry: &JournalEntry) -> Result<Self::Outcome, StepError>;
}

/// An outcome as the journal keeps it.
pub struct Journaled {
    pub body: String,
    pub ok: bool,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

impl Journaled {
    pub(crate) fn failed(body: Value) -> Self {
        Journaled {
            body: body.to_string(),
            ok: false,
            tokens_in: 0,
            tokens_out: 0,
        }
    }
}

/// The errors that are a step's outcome, journaled and replayed as such; every other error
/// stops the step before its outcome is written.
pub(crate) fn is_outcome(e: &StepError) -> bool {
    matches!(
        e,
        StepError::Model(_) | StepError::ModelTimeout(_) | StepError::PolicyDenied(_)
    )
}

/// How an error that is a step's outcome is journaled: its text, marked with its kind.
pub(crate) fn journaled_error(e: &StepError) -> Journaled {
    Journaled::failed(match e {
        StepError::ModelTimeout(m) => json!({ "error": m, "timeout": true }),
        StepError::PolicyDenied(m) => json!({ "error": m, "denied": true }),
        e => json!({ "error": step_error_text(e) }),
    })
}

/// The fingerprint of a request: `kind`, `name` and `payload` hashed after whatever `prefix`
/// already absorbed (a model call's conversation so far).
pub(crate) fn fingerprint(
    mut prefix: Sha256,
    kind: &str,
    name: &str,
    payload: &impl Serialize,
) -> String {
    prefix.update(kind.as_bytes());
    prefix.update([0]);
    prefix.update(name.as_bytes());
    prefix.update([0]);
    if serde_json::to_writer(&mut prefix, payload).is_err() {
        prefix.update(b"unserializable");
    }
    hex::encode(prefix.finalize())
}

/// An outcome entry's body, or a clear error naming the entry when it is not JSON.
pub(crate) fn body_of(e: &JournalEntry) -> Result<Value, StepError> {
    serde_json::from_str(&e.body).map_err(|err| corrupt(e, err))
}

pub(crate) fn corrupt(e: &JournalEntry, err: impl std::fmt::Display) -> StepError {
    StepError::Store(format!("journal entry {} is corrupt: {err}", e.seq))
}
