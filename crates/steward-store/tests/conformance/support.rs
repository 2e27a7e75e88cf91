//! What the aggregates' tests share: the imports, small builders of records, and the macro that
//! runs each test on both backends.

pub(crate) use std::sync::Arc;

pub(crate) use steward_store::*;
pub(crate) use steward_testkit::FreshStore;
pub(crate) use steward_types::config::StoreConfig;
pub(crate) use steward_types::{AgentName, NodeId, RunId, RunState};

/// For each test function named, one `#[tokio::test]` per backend, each on a fresh database:
/// `sqlite::NAME` and `postgres::NAME`. Those after `threaded:` take the store as an
/// `Arc<dyn Store>` and run on a multi-threaded runtime (they race writers against each other).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)? $(; threaded: $($shared:ident),* $(,)?)?) => {
        on_both_backends!(@on sqlite; $($name),*; $($($shared),*)?);
        on_both_backends!(@on postgres; $($name),*; $($($shared),*)?);
    };
    (@on $backend:ident; $($name:ident),*; $($shared:ident),*) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let fresh = $crate::support::FreshStore::$backend().await;
                    super::$name(&*fresh.store).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $shared() {
                    let fresh = $crate::support::FreshStore::$backend().await;
                    super::$shared(fresh.store.clone()).await
                }
            )*
        }
    };
}

pub(crate) fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

pub(crate) fn new_id() -> RunId {
    RunId::from_uuid(uuid::Uuid::now_v7())
}

pub(crate) fn agent(n: &str, spec: &str) -> NewAgent {
    NewAgent {
        name: name(n),
        spec_json: spec.into(),
        spec_hash: format!("h-{spec}"),
    }
}

pub(crate) async fn with_agent(s: &dyn Store) {
    s.put_agents(&[agent("a", "{}")], 1).await.unwrap();
}

pub(crate) fn new_run(id: &RunId) -> NewRun {
    NewRun {
        id: id.clone(),
        agent: name("a"),
        agent_version: 1,
        parent_id: None,
        input: "in".into(),
    }
}

pub(crate) fn entry(run: &RunId, seq: i64, phase: i64) -> JournalEntry {
    JournalEntry {
        run_id: run.to_string(),
        seq,
        phase,
        kind: "tool".into(),
        name: "echo".into(),
        request_hash: "h".into(),
        idempotency_key: format!("{run}:{seq}"),
        body: "{}".into(),
        ok: 1,
        tokens_in: 0,
        tokens_out: 0,
        at: 5,
        duration_us: 0,
    }
}

/// A task of tenant `t`, priority 0, ready at `run_at`.
pub(crate) fn new_task(id: &str, queue: &str, run_at: i64) -> NewTask {
    NewTask {
        id: id.into(),
        queue: queue.into(),
        tenant: "t".into(),
        priority: 0,
        payload: "{}".into(),
        dedup_key: None,
        run_at,
        deadline: None,
    }
}
