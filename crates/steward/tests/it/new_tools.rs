//! A tool brings its own governance: a tool the Kernel has never heard of declares, through the
//! `Tool` trait alone, the second decision it needs, the resource it meters and how long it may
//! wait — and the engine, in process over real SQLite and PostgreSQL, decides, holds, charges
//! and bounds it accordingly, with no tool named anywhere in the Kernel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use steward_engine::meters::{Meter, Meters};
use steward_engine::Engine;
use steward_tools::{AlsoDecided, Tool, ToolContext, ToolInfo, Tools, Wait};
use steward_types::config::ToolsConfig;
use steward_types::{RunId, RunState};

use crate::common::{self, in_process, Backend};

/// Writes a note into a namespace: also `memory.write` on that namespace, metered in bytes,
/// and slower than the agents' step timeout (it waits on work of its own).
struct NoteWrite {
    calls: Arc<AtomicUsize>,
}

const NOTE_BYTES: &str = "notes.bytes";

#[async_trait::async_trait]
impl Tool for NoteWrite {
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "note_write".into(),
            description: "Writes a note.".into(),
            parameters: json!({"type": "object"}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    fn also_decided(&self, _: &RunId, args: &Value) -> Option<AlsoDecided> {
        Some(AlsoDecided {
            action: "memory.write",
            resource: args["namespace"].as_str().unwrap_or_default().to_string(),
        })
    }
    fn wait(&self) -> Wait {
        Wait::UntilDone
    }
    fn meter(&self) -> Option<steward_tools::Meter> {
        Some(steward_tools::Meter {
            name: NOTE_BYTES,
            used: |result| result["bytes"].as_u64().unwrap_or(0),
        })
    }
    async fn call(&self, _: &ToolContext, args: Value) -> steward_tools::Result<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let text = args["text"].as_str().unwrap_or_default();
        Ok(json!({"bytes": text.len()}))
    }
}

/// A byte of a note costs 1,000 nano-dollars; one write holds at most 100,000.
struct PerByte;

impl Meter for PerByte {
    fn worst_case_nanos(&self) -> Option<i64> {
        Some(100_000)
    }
    fn cost_nanos(&self, bytes: u64) -> i64 {
        1_000 * bytes as i64
    }
}

async fn engine(b: Backend, dir: &std::path::Path, calls: Arc<AtomicUsize>) -> Engine {
    let store = in_process::store(&common::fresh_db(b, dir).await).await;
    let mut tools = Tools::builtin(&ToolsConfig::default()).unwrap();
    tools.insert(Arc::new(NoteWrite { calls }));
    let mut meters = Meters::default();
    meters.insert(NOTE_BYTES, Arc::new(PerByte));
    in_process::engine(store, dir, "new-tools", tools, meters).await
}

async fn finished(e: &Engine, id: &RunId) -> steward_store::RunRecord {
    common::eventually("the run ends", || async {
        let r = e.runs().get(id.as_str()).await.unwrap();
        r.state.is_terminal().then_some(r)
    })
    .await
}

fn writer(name: &str, budget_usd: &str, namespaces: &[&str]) -> String {
    let calls: String = namespaces
        .iter()
        .map(|ns| {
            format!("    - toolCalls: [{{name: note_write, arguments: {{namespace: {ns}, text: hello}}}}]\n")
        })
        .collect();
    format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [note_write]\n  stepTimeout: 100ms\n  budget: {{perRunUsd: {budget_usd}, onExceeded: fail}}\n  script:\n{calls}    - content: done\n"
    )
}

async fn a_new_tool_is_decided_held_charged_and_bounded_as_it_declares(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let e = engine(b, dir.path(), calls.clone()).await;
    e.policies().put(
        r#"
@id("everyone")
permit (principal, action, resource);
@id("no-secrets")
forbid (principal, action == Steward::Action::"memory.write", resource == Steward::Namespace::"secrets");
"#,
    )
    .await
    .unwrap();
    e.agents()
        .apply(&writer("writer", "1.0", &["secrets", "notes"]))
        .await
        .unwrap();
    let run = e.runs().create("writer", "go").await.unwrap();
    let r = finished(&e, &run.id).await;
    assert_eq!(r.state, RunState::Succeeded, "{r:?}");
    // The tool's own second decision refused the first write before it ran; the second ran
    // for longer than the step timeout, as its wait allows.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let outcomes: Vec<_> = e
        .runs()
        .journal(run.id.as_str(), None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == "tool" && j.phase == steward_store::PHASE_OUTCOME)
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0].ok, 0, "{:?}", outcomes[0]);
    assert!(outcomes[0].body.contains("no-secrets"), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].ok, 1, "{:?}", outcomes[1]);
    // Charged at what its meter says it used: five bytes; nothing left held.
    let account = format!("run:{}", run.id);
    let budgets = e.budgets().list().await.unwrap();
    let acct = budgets.iter().find(|a| a.account == account).unwrap();
    assert_eq!(
        (acct.spent_nanos, acct.reserved_nanos),
        (5_000, 0),
        "{acct:?}"
    );

    // A run whose budget cannot cover the meter's worst case is stopped before the tool runs.
    e.agents()
        .apply(&writer("thrifty", "0.00005", &["notes"]))
        .await
        .unwrap();
    let run = e.runs().create("thrifty", "go").await.unwrap();
    let r = finished(&e, &run.id).await;
    assert_eq!(
        (r.state, r.error_code.as_deref()),
        (RunState::Failed, Some("budget_exceeded")),
        "{r:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the tool ran past its budget"
    );
    e.shutdown(Duration::from_secs(5)).await;
}
both_backends!(
    a_new_tool_is_decided_held_charged_and_bounded_as_it_declares,
    a_new_tool_is_decided_held_charged_and_bounded_as_it_declares
);
