//! Persistence. One trait per aggregate, a SQLite and a PostgreSQL implementation sharing
//! their SQL where the dialects agree, and one conformance suite (`tests/conformance.rs`)
//! run against both. The store is the only durable state.

mod agents;
mod alerts;
mod approvals;
mod audit;
mod breakers;
mod budgets;
mod cache;
mod call_writer;
mod delegations;
mod error;
mod evaluation;
mod experiments;
mod gateway_calls;
mod group_commit;
mod identities;
mod in_tx;
mod journal;
mod mcp_servers;
mod mcp_tasks;
mod memories;
mod merges;
pub mod merkle;
mod model;
mod openapi_apis;
pub mod pg_schema;
mod policies;
mod rates;
mod responses;
mod runs;
mod schedules;
mod scratchpad;
mod secrets;
mod spans;
mod sql;
mod sqlite_direct;
mod supervisors;
mod task_writer;
mod tasks;
mod workspaces;

use async_trait::async_trait;
use steward_types::Millis;

pub use agents::AgentStore;
pub use alerts::{AlertChange, AlertRecord, AlertStore, DeliveryOutcome, DeliveryRecord};
pub use approvals::ApprovalStore;
pub use audit::AuditStore;
pub use breakers::BreakerStore;
pub use budgets::BudgetStore;
pub use cache::CacheStore;
pub use call_writer::CallWriter;
pub use delegations::DelegationStore;
pub use error::{Error, Result};
pub use evaluation::{EvaluationStore, EvaluatorRecord, ScoreRecord};
pub use experiments::{DatasetRecord, ExperimentRecord, ExperimentStore};
pub use gateway_calls::GatewayStore;
pub use group_commit::JournalWriter;
pub use identities::IdentityStore;
pub use journal::JournalStore;
pub use mcp_servers::{McpServerRecord, McpServerStore};
pub use mcp_tasks::{McpTaskRecord, McpTaskStore};
pub use memories::{
    entity_key, CurationRecord, EntityMention, ErasedMemory, GraphAround, MemoryEntity,
    MemoryErase, MemoryErasure, MemoryGraph, MemoryImport, MemoryRecord, MemoryRelation,
    MemoryStore, MemoryVector,
};
pub use merges::{overlaps, MergeStore, PathLease, RepoRecord, SubmissionRecord};
pub use model::*;
pub use openapi_apis::{OAuthTokenRecord, OAuthTokenStore, OpenApiRecord, OpenApiStore};
pub use policies::PolicyStore;
pub use rates::RateStore;
pub use responses::{ResponseStore, StoredResponse};
pub use runs::RunStore;
pub use schedules::{ScheduleRecord, ScheduleStore};
pub use scratchpad::ScratchpadStore;
pub use secrets::SecretStore;
pub use spans::{SpanRecord, SpanStore, TraceFilter, TraceSummary};
pub use sql::{PgStore, SqliteStore};
pub use supervisors::{IncidentRecord, SupervisorRecord, SupervisorStore};
pub use task_writer::TaskWriter;
pub use tasks::*;
pub use workspaces::{Blob, WorkspaceState, WorkspaceStore};

/// Everything durable, behind one handle.
#[async_trait]
pub trait Store:
    AgentStore
    + RunStore
    + JournalStore
    + ScratchpadStore
    + GatewayStore
    + BudgetStore
    + BreakerStore
    + AuditStore
    + PolicyStore
    + ApprovalStore
    + SecretStore
    + IdentityStore
    + DelegationStore
    + RateStore
    + CacheStore
    + TaskStore
    + ScheduleStore
    + SupervisorStore
    + MergeStore
    + WorkspaceStore
    + ResponseStore
    + McpServerStore
    + OpenApiStore
    + OAuthTokenStore
    + McpTaskStore
    + MemoryStore
    + SpanStore
    + AlertStore
    + EvaluationStore
    + ExperimentStore
{
    fn backend(&self) -> &'static str;
    /// Changes made by other nodes, as they happen (`WAKE_RUN`, `WAKE_DONE`), where the backend
    /// can announce them (PostgreSQL `LISTEN/NOTIFY`); `None` for a single-process store.
    async fn wakeups(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>>;
    async fn ping(&self) -> Result<()>;
    /// Commits one small row for `node`: whether the store takes writes now.
    async fn probe_write(&self, node: &str, now: Millis) -> Result<()>;
}

/// Opens (creating if needed) and migrates the store a URL names:
/// `postgres://…` or `sqlite://PATH`.
pub async fn open(
    url: &str,
    cfg: &steward_types::config::StoreConfig,
) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(url, cfg).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::connect(url, cfg).await?))
    } else {
        Err(Error::Config(format!(
            "database url {:?}: expected postgres://… or sqlite://PATH",
            redact(url)
        )))
    }
}

/// A URL with any password removed, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}
