//! Compensation: when a run fails or is cancelled part-way, the tool calls it completed that
//! its agent registered an undo step for (`spec.compensation`) are undone, newest first. The
//! undo steps are planned from the run's journal and carried out by a compensation run — a
//! child whose id derives from the failed run's, so planning it twice (a crash between the
//! failure and its record) makes it once — whose every step is a journaled Kernel call like
//! any other, so a crash mid-compensation resumes without undoing anything twice. A
//! compensation run waits for its parent to have ended, and does nothing if it succeeded.

use serde_json::{json, Value};
use steward_store::{JournalStore, NewRun, RunStore, RunUpdate, PHASE_INTENT};
use steward_types::error::run_error;
use steward_types::{AgentSpec, RunId, RunState};

use crate::kernel::{Kernel, RunCtx, StepError, ToolCall};

/// The id of the run that compensates `run`: the same however often it is planned.
pub(crate) fn compensation_id(run: &RunId) -> RunId {
    let ns = uuid::Uuid::from_bytes([0x5b; 16]);
    RunId::from_uuid(uuid::Uuid::new_v5(
        &ns,
        format!("compensate:{run}").as_bytes(),
    ))
}

/// The undo steps of a compensation run, if `run` is one.
pub(crate) fn steps_of(run: &steward_store::RunRecord) -> Option<Vec<(String, Value)>> {
    let parent = run.parent_id.as_ref()?;
    if compensation_id(parent) != run.id {
        return None;
    }
    let input: Value = serde_json::from_str(&run.input).ok()?;
    input["compensate"]
        .as_array()?
        .iter()
        .map(|s| Some((s["tool"].as_str()?.to_string(), s["arguments"].clone())))
        .collect()
}

/// `template` with `{{args.X}}` and `{{result.X}}` filled in.
fn render(template: &Value, args: &Value, result: &Value) -> Value {
    let lookup = |key: &str| -> Option<Value> {
        let (root, path) = key.split_once('.')?;
        let mut v = match root {
            "args" => args,
            "result" => result,
            _ => return None,
        };
        for part in path.split('.') {
            v = v.get(part)?;
        }
        Some(v.clone())
    };
    match template {
        Value::String(s) => {
            let t = s.trim();
            if let Some(key) = t.strip_prefix("{{").and_then(|k| k.strip_suffix("}}")) {
                if !key.contains("{{") {
                    return lookup(key.trim()).unwrap_or(Value::Null);
                }
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find("}}") else {
                    break;
                };
                let key = rest[start + 2..start + end].trim();
                match lookup(key) {
                    Some(Value::String(v)) => out.push_str(&v),
                    Some(v) => out.push_str(&v.to_string()),
                    None => {}
                }
                rest = &rest[start + end + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| render(v, args, result)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), render(v, args, result)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Plans and creates the compensation run of `run`, which ended failed or cancelled, if it
/// completed any tool call `spec` registers an undo step for.
pub(crate) async fn schedule(
    journal: &dyn JournalStore,
    launch: &crate::launch::Launcher,
    run: &RunId,
    agent: &steward_types::AgentName,
    version: i64,
    spec: &AgentSpec,
) -> Result<bool, crate::launch::LaunchError> {
    if spec.compensation.is_empty() {
        return Ok(false);
    }
    let entries = journal.load_journal(run, None, i64::MAX).await?;
    let mut steps = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == "tool" && e.phase != PHASE_INTENT && e.ok == 1)
    {
        let Some(c) = spec.compensation.get(&e.name) else {
            continue;
        };
        let Some(intent) = entries
            .iter()
            .find(|i| i.seq == e.seq && i.phase == PHASE_INTENT)
        else {
            continue;
        };
        let args: Value = serde_json::from_str(&intent.body).unwrap_or(Value::Null);
        let outcome: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
        steps.push(
            json!({"tool": c.tool, "arguments": render(&c.arguments, &args, &outcome["ok"])}),
        );
    }
    if steps.is_empty() {
        return Ok(false);
    }
    steps.reverse();
    let child = NewRun {
        id: compensation_id(run),
        agent: agent.clone(),
        agent_version: version,
        parent_id: Some(run.clone()),
        input: json!({ "compensate": steps }).to_string(),
    };
    Ok(launch
        .create(child, crate::launch::Origin::Compensation)
        .await?
        .1)
}

/// Carries out a compensation run's steps, each a journaled tool call.
pub(crate) async fn execute(
    kernel: &Kernel,
    runs: &dyn RunStore,
    ctx: &mut RunCtx,
    steps: Vec<(String, Value)>,
) -> Option<RunUpdate> {
    let parent = ctx.run.parent_id.clone()?;
    match runs.get_run(&parent).await {
        Ok(Some(p)) if p.state == RunState::Succeeded => {
            return Some(RunUpdate {
                result: Some(format!("nothing to undo: run {parent} succeeded")),
                ..RunUpdate::state(RunState::Succeeded)
            })
        }
        Ok(Some(p)) if p.state.is_terminal() => {}
        // Its parent is still running (a crash left its end unrecorded): later.
        _ => return None,
    }
    let total = steps.len();
    for (i, (tool, args)) in steps.into_iter().enumerate() {
        let done = kernel
            .call(
                ctx,
                ToolCall {
                    name: &tool,
                    args: &args,
                },
            )
            .await;
        let failed = |why: String| {
            Some(RunUpdate {
                error_code: Some(run_error::TOOL_ERROR.into()),
                error_message: Some(format!(
                    "compensation step {} of {total} ({tool}) failed: {why}; the steps after it were not run",
                    i + 1
                )),
                ..RunUpdate::state(RunState::Failed)
            })
        };
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return failed(e),
            Err(StepError::Draining | StepError::LeaseLost | StepError::Store(_)) => return None,
            Err(e) => return failed(crate::kernel::step_error_text(&e)),
        }
    }
    Some(RunUpdate {
        result: Some(format!("undid {total} steps of run {parent}")),
        ..RunUpdate::state(RunState::Succeeded)
    })
}
