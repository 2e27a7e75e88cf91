//! Evaluation: evaluators score whole runs — their trajectory (each step, the tools called,
//! tokens, cost, how long, how it ended) — with rules, with code run in a sandbox, or with a
//! model as judge (called through the gateway as agent `eval-<name>`: decided by policy,
//! audited, held on its own budget account `agent:eval-<name>`). Online, an evaluator scores a
//! sample of the ended runs of the agents it names, on every node (each run once: the store's
//! key refuses a second score); any run can also be scored on request.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_store::{RunRecord, ScoreRecord};
use steward_types::{AgentName, Millis};
use tokio_util::sync::CancellationToken;

use crate::costs::{self, CostBy};
use crate::{GatewayReply, Inner, Principal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Rules,
    Judge,
    Code,
}

/// Checks on a run; its score is the share that hold, and it passes when all do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The run ended `succeeded` (true) or not (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Its result contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_contains: Option<String>,
    /// Its result contains what the dataset's item expects (runs of an experiment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_contains_expected: Option<bool>,
    /// At most this many steps (model and tool calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// It cost at most this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// It called each of these tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_call: Vec<String>,
    /// It called none of these tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_not_call: Vec<String>,
}

/// A model reads the run's trajectory and the criteria, and answers `SCORE: <0 to 1>` and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judge {
    /// An alias or `provider/model`.
    pub model: String,
    pub criteria: String,
}

/// A program run in a fresh sandbox with the trajectory (JSON) on its standard input; it
/// prints `{"score": <0 to 1>, "reason": "…"}` or a bare number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// `python3`, `node`, `bash` or `sh`.
    pub language: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSpec {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Rules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// Online: the agents whose ended runs it scores (none: only on request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// The share of those runs it scores, from 0 to 1 (default 1: every one).
    #[serde(default = "every_run")]
    pub sample: f64,
}

fn every_run() -> f64 {
    1.0
}

impl EvaluatorSpec {
    pub fn check(&self) -> Result<(), String> {
        match (self.kind, &self.rules, &self.judge, &self.code) {
            (Kind::Rules, Some(r), None, None) => {
                let none = r.succeeded.is_none()
                    && r.result_contains.is_none()
                    && r.result_contains_expected.is_none()
                    && r.max_steps.is_none()
                    && r.max_cost_usd.is_none()
                    && r.must_call.is_empty()
                    && r.must_not_call.is_empty();
                if none {
                    return Err("rules: at least one check".into());
                }
                if r.max_cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
                    return Err("rules.max_cost_usd: a number from 0".into());
                }
            }
            (Kind::Judge, None, Some(j), None) => {
                if j.model.trim().is_empty() || j.model.len() > 256 {
                    return Err("judge.model: an alias or provider/model".into());
                }
                if j.criteria.trim().is_empty() || j.criteria.len() > 16 * 1024 {
                    return Err("judge.criteria: what a good run does, up to 16 KiB".into());
                }
            }
            (Kind::Code, None, None, Some(c)) => {
                if !["python3", "node", "bash", "sh"].contains(&c.language.as_str()) {
                    return Err(format!(
                        "code.language: python3, node, bash or sh; found {:?}",
                        c.language
                    ));
                }
                if c.source.trim().is_empty() || c.source.len() > 64 * 1024 {
                    return Err("code.source: the program, up to 64 KiB".into());
                }
            }
            (k, ..) => {
                let field = match k {
                    Kind::Rules => "rules",
                    Kind::Judge => "judge",
                    Kind::Code => "code",
                };
                return Err(format!(
                    "{field}: a {field} evaluator gives `{field}` and nothing of the other kinds"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(format!(
                "sample: a share from 0 to 1, found {}",
                self.sample
            ));
        }
        for (i, a) in self.agents.iter().enumerate() {
            AgentName::parse(a).map_err(|e| format!("agents[{i}]: {}", e.0))?;
        }
        Ok(())
    }
}

/// The agent a judge's model calls are made as (and the budget account they are held on).
pub fn judge_agent(evaluator: &str) -> String {
    format!("eval-{evaluator}")
}

/// What a run did, as evaluators see it.
pub(crate) async fn trajectory(
    inner: &Inner,
    run: &RunRecord,
    expected: Option<&str>,
) -> steward_store::Result<Value> {
    let store = &inner.shared.store;
    let entries = store.load_journal(&run.id, None, 100_000).await?;
    let outcomes: Vec<&steward_store::JournalEntry> = entries
        .iter()
        .filter(|e| e.phase != steward_store::PHASE_INTENT)
        .collect();
    let steps: Vec<Value> = outcomes
        .iter()
        .map(|e| {
            json!({"seq": e.seq, "kind": e.kind, "name": e.name, "ok": e.ok == 1,
                "tokens_in": e.tokens_in, "tokens_out": e.tokens_out, "duration_us": e.duration_us})
        })
        .collect();
    let tools: Vec<&str> = outcomes
        .iter()
        .filter(|e| e.kind == "tool")
        .map(|e| e.name.as_str())
        .collect();
    let mut usage = store.usage(run.created_at - 3_600_000).await?;
    usage.retain(|u| u.run_id.as_deref() == Some(run.id.as_str()));
    let cost: f64 = costs::report(&usage, &inner.prices, CostBy::Run)
        .iter()
        .map(|l| l.cost_usd)
        .sum();
    Ok(json!({
        "run_id": run.id.as_str(),
        "agent": run.agent,
        "input": run.input,
        "state": run.state.to_string(),
        "result": run.result,
        "error": run.error_message,
        "steps": steps,
        "tools_called": tools,
        "model_calls": outcomes.iter().filter(|e| e.kind == "model").count(),
        "tool_calls": tools.len(),
        "cost_usd": cost,
        "duration_ms": run.updated_at - run.created_at,
        "expected": expected,
    }))
}

/// A score: from 0 to 1 (none: it could not be scored), passed, why, and its cost.
pub(crate) struct Scored {
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub reason: String,
    pub cost_nanos: i64,
}

fn rules(r: &Rules, t: &Value) -> Scored {
    let mut checks: Vec<(String, bool)> = Vec::new();
    if let Some(want) = r.succeeded {
        let ok = (t["state"] == "succeeded") == want;
        checks.push((
            format!("ended {}", if want { "succeeded" } else { "not succeeded" }),
            ok,
        ));
    }
    if let Some(text) = &r.result_contains {
        let ok = t["result"]
            .as_str()
            .is_some_and(|s| s.contains(text.as_str()));
        checks.push((format!("result contains {text:?}"), ok));
    }
    if r.result_contains_expected == Some(true) {
        let ok = match (t["result"].as_str(), t["expected"].as_str()) {
            (Some(got), Some(want)) => got.contains(want),
            _ => false,
        };
        checks.push(("result contains what is expected".to_string(), ok));
    }
    if let Some(max) = r.max_steps {
        let n = t["steps"].as_array().map_or(0, Vec::len);
        checks.push((format!("at most {max} steps (took {n})"), n <= max as usize));
    }
    if let Some(max) = r.max_cost_usd {
        let c = t["cost_usd"].as_f64().unwrap_or(0.0);
        checks.push((format!("cost at most ${max} (cost ${c})"), c <= max));
    }
    let called: Vec<&str> = t["tools_called"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for tool in &r.must_call {
        checks.push((format!("called {tool}"), called.contains(&tool.as_str())));
    }
    for tool in &r.must_not_call {
        checks.push((
            format!("did not call {tool}"),
            !called.contains(&tool.as_str()),
        ));
    }
    let held = checks.iter().filter(|(_, ok)| *ok).count();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(c, _)| c.as_str())
        .collect();
    Scored {
        score: Some(held as f64 / checks.len().max(1) as f64),
        passed: Some(failed.is_empty()),
        reason: if failed.is_empty() {
            format!("all {} checks held", checks.len())
        } else {
            format!("failed: {}", failed.join("; "))
        },
        cost_nanos: 0,
    }
}

const JUDGE_PROMPT: &str = "You evaluate an AI agent's run against the criteria given. You see the run's trajectory as JSON: its input, each step (model and tool calls, whether each succeeded, tokens), the tools it called, its cost, how long it took, how it ended and its result. Answer with a first line `SCORE: <a number from 0 to 1>` (1: fully meets the criteria), then one or two sentences on why.";

/// `SCORE: x` from a judge's answer, and the rest as the reason.
fn judged(text: &str) -> Option<(f64, String)> {
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.trim_start().to_ascii_uppercase().starts_with("SCORE:"))?;
    let value: f64 = line.trim_start()[6..].trim().parse().ok()?;
    if !(0.0..=1.0).contains(&value) {
        return None;
    }
    let reason: Vec<&str> = text
        .lines()
        .skip(i + 1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    Some((value, reason.join(" ").trim().to_string()))
}

async fn judge(inner: &Inner, evaluator: &str, j: &Judge, t: &Value) -> Scored {
    let agent = judge_agent(evaluator);
    let Ok(name) = AgentName::parse(&agent) else {
        return unscored(format!("{agent} is not an agent name"));
    };
    let who = Principal {
        agent: name,
        key_id: agent.clone(),
        run: None,
        chain: vec![format!("agent:{agent}")],
        on_behalf_of: None,
        owner: None,
        delegated: None,
    };
    let mut shown = t.to_string();
    if shown.len() > 32 * 1024 {
        let mut end = 32 * 1024;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
    }
    let body = json!({
        "model": j.model,
        "temperature": 0,
        "max_tokens": 300,
        "messages": [
            {"role": "system", "content": JUDGE_PROMPT},
            {"role": "user", "content": format!("Criteria:\n{}\n\nTrajectory:\n{shown}", j.criteria)}
        ]
    });
    let reply = match inner
        .gateway
        .chat(&who, body, crate::GatewayApi::ChatCompletions)
        .await
    {
        Ok(GatewayReply::Json(v)) => v,
        Ok(_) => return unscored("the judge's answer was not JSON".into()),
        Err(e) => return unscored(format!("the judge could not be asked: {e}")),
    };
    let usage = |k: &str| reply["usage"][k].as_i64().unwrap_or(0);
    let cost_nanos = inner
        .prices
        .cost(
            reply["model"].as_str().unwrap_or(&j.model),
            usage("prompt_tokens"),
            usage("completion_tokens"),
        )
        .map_or(0, |usd| (usd * 1e9).round() as i64);
    let text = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    match judged(text) {
        Some((score, reason)) => Scored {
            score: Some(score),
            passed: Some(score >= 0.5),
            reason,
            cost_nanos,
        },
        None => Scored {
            cost_nanos,
            ..unscored(format!(
                "the judge did not answer `SCORE: <0 to 1>`: {:?}",
                text.chars().take(200).collect::<String>()
            ))
        },
    }
}

async fn code(inner: &Inner, evaluator: &str, c: &Code, t: &Value) -> Scored {
    let Some(sandboxes) = inner.shared.sandboxes.as_ref() else {
        return unscored("sandboxes are disabled on this server ([sandbox] enabled)".into());
    };
    let now = inner.shared.clock.now_ms();
    let id = match sandboxes.create(None, 1, Some(600_000), &[], now) {
        Ok(ids) => ids.into_iter().next().unwrap_or_default(),
        Err(e) => return unscored(format!("no sandbox: {e}")),
    };
    let command = crate::sandboxes::Command::Code {
        language: c.language.clone(),
        code: c.source.clone(),
    };
    let ran = sandboxes
        .exec_in(
            &id,
            &command,
            t.to_string().as_bytes(),
            None,
            // No egress list is given, so nothing may connect; any try is audited.
            crate::sandboxes::audit_egress(
                inner.shared.store.clone(),
                inner.shared.clock.clone(),
                format!("sandbox:{id}"),
                vec![format!("evaluator:{evaluator}")],
                None,
            ),
            now,
        )
        .await;
    if let Err(e) = sandboxes.remove(&id).await {
        tracing::warn!(sandbox = %id, error = %e, "evaluation: could not remove a sandbox");
    }
    let r = match ran {
        Ok(r) => r,
        Err(e) => return unscored(format!("the program could not run: {e}")),
    };
    let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
    let parsed: Option<(f64, String)> = match serde_json::from_str::<Value>(&out) {
        Ok(Value::Number(n)) => n.as_f64().map(|s| (s, String::new())),
        Ok(v) => v["score"]
            .as_f64()
            .map(|s| (s, v["reason"].as_str().unwrap_or_default().to_string())),
        Err(_) => None,
    };
    match parsed {
        Some((s, reason)) if (0.0..=1.0).contains(&s) => Scored {
            score: Some(s),
            passed: Some(s >= 0.5),
            reason,
            cost_nanos: 0,
        },
        _ => unscored(format!(
            "the program ({}) printed no score from 0 to 1: {:?} {:?}",
            r.ended.parts().0,
            out.chars().take(200).collect::<String>(),
            String::from_utf8_lossy(&r.stderr)
                .chars()
                .take(200)
                .collect::<String>()
        )),
    }
}

fn unscored(reason: String) -> Scored {
    Scored {
        score: None,
        passed: None,
        reason,
        cost_nanos: 0,
    }
}

/// Scores `run` with evaluator `name`.
pub(crate) async fn score(
    inner: &Inner,
    name: &str,
    spec: &EvaluatorSpec,
    run: &RunRecord,
    expected: Option<&str>,
) -> steward_store::Result<ScoreRecord> {
    let t = trajectory(inner, run, expected).await?;
    let s = match spec.kind {
        Kind::Rules => rules(spec.rules.as_ref().unwrap_or(&Rules::default()), &t),
        Kind::Judge => match &spec.judge {
            Some(j) => judge(inner, name, j, &t).await,
            None => unscored("no judge given".into()),
        },
        Kind::Code => match &spec.code {
            Some(c) => code(inner, name, c, &t).await,
            None => unscored("no code given".into()),
        },
    };
    Ok(ScoreRecord {
        run_id: run.id.to_string(),
        evaluator: name.to_string(),
        sampled: 1,
        score: s.score,
        passed: s.passed.map(i64::from),
        reason: Some(s.reason),
        cost_nanos: s.cost_nanos,
        agent: run.agent.clone(),
        at: inner.shared.clock.now_ms(),
    })
}

/// Whether run `run` is in evaluator `name`'s sample: the same answer on every node.
fn sampled(name: &str, run: &str, share: f64) -> bool {
    let h = Sha256::digest(format!("{name}\n{run}").as_bytes());
    let x = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (x as f64 / u64::MAX as f64) < share
}

/// Scores the ended runs online evaluators look at, every `every`, until `stop`.
pub(crate) async fn online(inner: Arc<Inner>, every: Duration, stop: CancellationToken) {
    loop {
        if let Err(e) = score_online(&inner).await {
            tracing::warn!(error = %e, "evaluation: could not score runs; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// How long a node's claim on scoring a run holds others off: longer than a judge's call with
/// its retries. A node that dies while scoring leaves the run to another after it.
const CLAIM_MS: Millis = 5 * 60 * 1000;

/// Whether this node may score `run` by `evaluator` now: two nodes looking at the same ended
/// run must not both pay a judge (or start a sandbox) for it.
async fn claim(inner: &Inner, run: &str, evaluator: &str) -> steward_store::Result<bool> {
    let now = inner.shared.clock.now_ms();
    let node = inner.shared.node.to_string();
    inner
        .shared
        .store
        .claim_score(run, evaluator, &node, now, now + CLAIM_MS)
        .await
}

async fn score_online(inner: &Inner) -> steward_store::Result<()> {
    let store = &inner.shared.store;
    let evaluators = store.list_evaluators().await?;
    // Experiments' runs, by each evaluator the experiment named, with the item's expectation.
    for (id, name, expected) in store.experiment_runs_to_score(50).await? {
        let Ok(rid) = steward_types::RunId::parse(&id) else {
            continue;
        };
        let Some(run) = store.get_run(&rid).await? else {
            continue;
        };
        if !claim(inner, &id, &name).await? {
            continue;
        }
        let spec = evaluators
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| serde_json::from_str::<EvaluatorSpec>(&e.spec).ok());
        let record = match spec {
            Some(spec) => score(inner, &name, &spec, &run, expected.as_deref()).await?,
            // Removed since the experiment began: said once, not looked for again.
            None => ScoreRecord {
                run_id: id.clone(),
                evaluator: name.clone(),
                sampled: 1,
                score: None,
                passed: None,
                reason: Some(format!("evaluator {name} was removed")),
                cost_nanos: 0,
                agent: run.agent.clone(),
                at: inner.shared.clock.now_ms(),
            },
        };
        store.put_score(&record).await?;
    }
    for ev in evaluators {
        let Ok(spec) = serde_json::from_str::<EvaluatorSpec>(&ev.spec) else {
            continue;
        };
        for agent in &spec.agents {
            for id in store
                .runs_to_score(&ev.name, agent, ev.created_at, 20)
                .await?
            {
                let Ok(rid) = steward_types::RunId::parse(&id) else {
                    continue;
                };
                let Some(run) = store.get_run(&rid).await? else {
                    continue;
                };
                let record = if sampled(&ev.name, &id, spec.sample) {
                    if !claim(inner, &id, &ev.name).await? {
                        continue;
                    }
                    score(inner, &ev.name, &spec, &run, None).await?
                } else {
                    ScoreRecord {
                        run_id: id.clone(),
                        evaluator: ev.name.clone(),
                        sampled: 0,
                        score: None,
                        passed: None,
                        reason: None,
                        cost_nanos: 0,
                        agent: run.agent.clone(),
                        at: inner.shared.clock.now_ms(),
                    }
                };
                store.put_score(&record).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judges_answer_is_read_strictly() {
        assert_eq!(
            judged("SCORE: 0.75\nIt paid once.\n"),
            Some((0.75, "It paid once.".to_string()))
        );
        assert_eq!(judged("Thinking…\nscore: 1"), Some((1.0, String::new())));
        assert_eq!(judged("SCORE: 7"), None, "out of range");
        assert_eq!(judged("looks good"), None);
    }

    #[test]
    fn rules_score_the_share_that_holds() {
        let t = json!({"state": "succeeded", "result": "paid 3", "steps": [1, 2, 3],
            "cost_usd": 0.5, "tools_called": ["http_request"]});
        let r = Rules {
            succeeded: Some(true),
            result_contains: Some("paid".into()),
            max_steps: Some(2),
            must_call: vec!["http_request".into()],
            must_not_call: vec!["shell".into()],
            ..Rules::default()
        };
        let s = rules(&r, &t);
        assert_eq!(s.score, Some(0.8));
        assert_eq!(s.passed, Some(false));
        assert!(
            s.reason.contains("at most 2 steps (took 3)"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn a_sample_is_the_same_on_every_node_and_about_its_share() {
        let n = (0..2000)
            .filter(|i| sampled("e", &format!("run_{i}"), 0.25))
            .count();
        assert!((400..600).contains(&n), "{n}");
        assert_eq!(sampled("e", "run_1", 0.5), sampled("e", "run_1", 0.5));
        assert!(!sampled("e", "run_1", 0.0));
        assert!(sampled("e", "run_1", 1.0));
    }
}
