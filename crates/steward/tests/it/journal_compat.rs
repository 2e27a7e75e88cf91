//! Journals written by an earlier Steward replay under this one: a run interrupted at any step
//! of a journal recorded by an earlier build carries on from that journal, with the same request
//! hashes (no divergence), no journaled step acted again, and the same result.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use steward_engine::meters::Meters;
use steward_engine::Engine;
use steward_store::{JournalEntry, NewRun};
use steward_tools::{Tool, ToolContext, ToolInfo, Tools};
use steward_types::config::ToolsConfig;
use steward_types::{AgentName, RunId, RunState};

use crate::common::{self, in_process, Backend};

/// Answers with its argument and counts its calls; not idempotent, so a step of it in doubt is
/// never silently redone.
struct Tally {
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Tool for Tally {
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "tally".into(),
            description: "Counts.".into(),
            parameters: json!({"type": "object"}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        false
    }
    async fn call(&self, _: &ToolContext, args: Value) -> steward_tools::Result<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"counted": args["n"]}))
    }
}

/// The agent the fixture's run ran: two tool calls in one turn, one in the next, then an answer.
const AGENT: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: counter}\nspec:\n  model: scripted\n  tools: [tally, echo]\n  script:\n    - toolCalls: [{name: tally, arguments: {n: 1}}, {name: tally, arguments: {n: 2}}]\n    - toolCalls: [{name: echo, arguments: {text: forty-two}}]\n    - content: counted\n";

fn tools(calls: Arc<AtomicUsize>) -> Tools {
    let mut tools = Tools::builtin(&ToolsConfig::default()).unwrap();
    tools.insert(Arc::new(Tally { calls }));
    tools
}

async fn finished(e: &Engine, id: &RunId) -> steward_store::RunRecord {
    common::eventually("the run ends", || async {
        let r = e.runs().get(id.as_str()).await.unwrap();
        r.state.is_terminal().then_some(r)
    })
    .await
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as i64
}

/// A journal of the agent above run to completion, as written by Steward at commit 51363b2
/// (before syscalls became data): its entries, the run's id, input and result.
const FIXTURE: &str = include_str!("fixtures/journal-51363b2.json");

fn fixture() -> (Value, Vec<JournalEntry>) {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    let run = doc["run"].as_str().unwrap().to_string();
    let entries = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| JournalEntry {
            run_id: run.clone(),
            seq: e["seq"].as_i64().unwrap(),
            phase: e["phase"].as_i64().unwrap(),
            kind: e["kind"].as_str().unwrap().into(),
            name: e["name"].as_str().unwrap().into(),
            request_hash: e["request_hash"].as_str().unwrap().into(),
            idempotency_key: e["idempotency_key"].as_str().unwrap().into(),
            body: e["body"].as_str().unwrap().into(),
            ok: e["ok"].as_i64().unwrap(),
            tokens_in: e["tokens_in"].as_i64().unwrap(),
            tokens_out: e["tokens_out"].as_i64().unwrap(),
            at: now_ms(),
            duration_us: 0,
        })
        .collect();
    (doc, entries)
}

/// The fixture's run as an earlier build left it after its first `cut` journal entries, handed
/// to an engine of this build: the engine, the run's id, the fixture, its tally's call count.
struct Interrupted {
    engine: Engine,
    id: RunId,
    doc: Value,
    entries: Vec<JournalEntry>,
    calls: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn interrupted(b: Backend, cut: usize) -> Interrupted {
    let (doc, entries) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let store = in_process::store(&common::fresh_db(b, dir.path()).await).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let setup = in_process::engine(
        store.clone(),
        dir.path(),
        "setup",
        tools(calls.clone()),
        Meters::default(),
    )
    .await;
    setup.agents().apply(AGENT).await.unwrap();
    setup.shutdown(Duration::from_secs(5)).await;

    let id = RunId::parse(doc["run"].as_str().unwrap()).unwrap();
    let new = NewRun {
        id: id.clone(),
        agent: AgentName::parse("counter").unwrap(),
        agent_version: 1,
        parent_id: None,
        input: doc["input"].as_str().unwrap().into(),
    };
    store.create_run(&new, now_ms()).await.unwrap();
    store
        .append_journal(&entries[..cut], &[], &[])
        .await
        .unwrap();
    let engine = in_process::engine(
        store,
        dir.path(),
        "after",
        tools(calls.clone()),
        Meters::default(),
    )
    .await;
    Interrupted {
        engine,
        id,
        doc,
        entries,
        calls,
        _dir: dir,
    }
}

/// The run of the fixture, interrupted after its first `cut` journal entries, handed to this
/// build: it finishes with the fixture's result, acting only the steps the cut left out, and
/// every step it journals hashes as the earlier build's did.
async fn resumes_after(b: Backend, cut: usize, tally_calls: usize) {
    let Interrupted {
        engine: e,
        id,
        doc,
        entries,
        calls,
        _dir,
    } = interrupted(b, cut).await;
    let r = finished(&e, &id).await;
    assert_eq!(
        (r.state, r.result.as_deref()),
        (RunState::Succeeded, doc["result"].as_str()),
        "cut {cut}: {r:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        tally_calls,
        "cut {cut}: journaled tool steps acted again, or missing ones not acted"
    );
    let after = e.runs().journal(id.as_str(), None, 100).await.unwrap();
    let shape = |j: &JournalEntry| {
        (
            j.seq,
            j.phase,
            j.kind.clone(),
            j.name.clone(),
            j.request_hash.clone(),
        )
    };
    assert_eq!(
        after.iter().map(shape).collect::<Vec<_>>(),
        entries.iter().map(shape).collect::<Vec<_>>(),
        "cut {cut}: the journal this build wrote differs in shape or hashes"
    );
    // What was journaled before the interruption is left as it was.
    assert_eq!(&after[..cut], &entries[..cut], "cut {cut}");
    e.shutdown(Duration::from_secs(5)).await;
}

async fn an_earlier_builds_journal_replays_at_every_cut(b: Backend) {
    // After the first model step both tallies still have to run; after the first tally one; a
    // cut at the next model step's intent leaves an idempotent step in doubt, retried; the whole
    // journal replays without acting at all.
    for (cut, tally_calls) in [(0, 2), (2, 2), (4, 1), (6, 0), (7, 0), (10, 0), (12, 0)] {
        resumes_after(b, cut, tally_calls).await;
    }
}
both_backends!(
    an_earlier_builds_journal_replays_at_every_cut,
    an_earlier_builds_journal_replays_at_every_cut
);

/// A tally whose intent is journaled without an outcome is in doubt and not idempotent: it is
/// never run again behind the user's back; the run stops for a decision as the agent's
/// recovery policy says.
async fn an_earlier_builds_step_in_doubt_is_not_redone(b: Backend) {
    // Through the first tally's intent: it may or may not have run.
    let Interrupted {
        engine: e,
        id,
        doc,
        calls,
        _dir,
        ..
    } = interrupted(b, 3).await;
    let r = common::eventually("the run waits for a human", || async {
        let r = e.runs().get(id.as_str()).await.unwrap();
        (r.state == RunState::Waiting).then_some(r)
    })
    .await;
    assert_eq!(r.error_code.as_deref(), Some("in_doubt"), "{r:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an in-doubt step was redone"
    );
    // A human says acting again is safe: the tally runs again once, the rest as usual.
    e.runs().resolve(id.as_str(), true).await.unwrap();
    let r = finished(&e, &id).await;
    assert_eq!(
        (r.state, r.result.as_deref()),
        (RunState::Succeeded, doc["result"].as_str()),
        "{r:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    e.shutdown(Duration::from_secs(5)).await;
}
both_backends!(
    an_earlier_builds_step_in_doubt_is_not_redone,
    an_earlier_builds_step_in_doubt_is_not_redone
);
