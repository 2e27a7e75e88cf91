//! Supervision trees. A supervisor starts a run of each child agent (or looks after a child
//! supervisor) and, when a child fails, restarts it by its strategy — `one_for_one` (that
//! child), `one_for_all` (every child), `rest_for_one` (that child and those after it) — after
//! an exponential backoff, at most `maxRestarts` times within `within`. Past that it gives up:
//! its parent (a supervisor listing it as a child) sees it fail and applies its own strategy;
//! a root supervisor opens an incident for a human. An evaluator (a rule, or a reviewer agent)
//! can check each child's result: accept it, send it back with feedback for another attempt
//! (at most `maxRounds`), or — out of rounds — escalate the same way.
//!
//! The upkeep loop drives every running supervisor on every node. Each pass reads a
//! supervisor's state, decides, and writes it back only if nobody changed it meanwhile
//! (compare-and-set on its version); the runs it starts have ids derived from the supervisor,
//! its generation, the child and the attempt, so a pass repeated on two nodes starts nothing
//! twice.

use std::sync::Arc;
use steward_store::{AgentStore, RunStore, SupervisorStore};

use serde::{Deserialize, Serialize};
use steward_store::{IncidentRecord, NewRun, Store, SupervisorRecord};
use steward_types::{AgentName, Millis, RunId, RunState};

use crate::tasks::check_name;
use crate::{Error, Result};
use steward_types::clock::Clock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    /// At most this many restarts within `withinMs`; one more and the supervisor gives up.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_within_ms")]
    pub within_ms: u64,
    /// Backoff before a restart: `initialMs × 2^(n-1)` for the n-th in the window, at most
    /// `maxMs`.
    #[serde(default)]
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluator: Option<EvaluatorSpec>,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_within_ms() -> u64 {
    60_000
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

/// A child: a run of `agent` with `input`, or the supervisor named `supervisor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChildSpec {
    pub name: String,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub supervisor: Option<String>,
}

/// Reviews each child run's result: a rule (`contains`), or a reviewer `agent` whose answer
/// starts with `ACCEPT` or `REJECT: <feedback>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EvaluatorSpec {
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    /// Attempts sent back with feedback before the supervisor escalates.
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
}

fn default_rounds() -> u32 {
    2
}

/// A supervisor's state, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SupervisorState {
    /// Bumped when its parent restarts it as a whole: a fresh set of runs.
    pub generation: u32,
    /// Restart times within the window.
    pub restarts: Vec<Millis>,
    pub children: Vec<ChildState>,
    /// Why it gave up.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildState {
    pub name: String,
    /// Runs started for it so far.
    pub attempt: u32,
    pub run_id: Option<String>,
    /// A reviewer run looking at `run_id`'s result.
    #[serde(default)]
    pub review_run: Option<String>,
    /// When its next run may start (after a backoff).
    pub start_at: Option<Millis>,
    pub done: bool,
    #[serde(default)]
    pub result: Option<String>,
    /// The evaluator's feedback, given to its next attempt.
    #[serde(default)]
    pub feedback: Option<String>,
    #[serde(default)]
    pub rounds: u32,
    /// Runs of its earlier attempts (or generations) told to stop and not yet ended: its next
    /// run starts only once they have, so two copies of a child never run at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopping: Vec<String>,
}

impl ChildState {
    /// The runs of this child that may still be going: the stopping ones, and the current
    /// run (and its review) unless it was accepted.
    fn live_runs(&self) -> Vec<String> {
        let mut runs = self.stopping.clone();
        if !self.done {
            runs.extend(self.run_id.iter().chain(&self.review_run).cloned());
        }
        runs
    }
}

pub struct Supervisors {
    supervisors: Arc<dyn SupervisorStore>,
    runs: Arc<dyn RunStore>,
    agents: Arc<dyn AgentStore>,
    clock: Arc<dyn Clock>,
    launch: Arc<dyn crate::Launch>,
    /// This node's runs, stopped at once when a restart retires them.
    active: Arc<dyn crate::StopRun>,
}

enum Seen {
    Running,
    Succeeded(String),
    Failed(String),
}

impl Supervisors {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        active: Arc<dyn crate::StopRun>,
        launch: Arc<dyn crate::Launch>,
    ) -> Self {
        Supervisors {
            supervisors: store.clone(),
            runs: store.clone(),
            agents: store.clone(),
            clock,
            launch,
            active,
        }
    }

    /// Creates or replaces supervisor `name`: a fresh generation, every child started anew once
    /// the runs of the one it replaces have stopped.
    pub async fn put(&self, name: &str, spec: SupervisorSpec) -> Result<SupervisorRecord> {
        check_name("supervisor", name)?;
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if spec.children.is_empty() || spec.children.len() > 100 {
            return bad("children: 1 to 100".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in spec.children.iter().enumerate() {
            check_name("child", &c.name)?;
            if !names.insert(c.name.clone()) {
                return bad(format!("children[{i}]: the name {:?} is taken", c.name));
            }
            match (&c.agent, &c.supervisor) {
                (Some(a), None) => self.agent(a).await.map(|_| ())?,
                (None, Some(s)) if s == name => {
                    return bad(format!(
                        "children[{i}]: a supervisor cannot supervise itself"
                    ))
                }
                (None, Some(s)) => check_name("supervisor", s)?,
                _ => return bad(format!("children[{i}]: give `agent` or `supervisor`")),
            }
        }
        if let Some(e) = &spec.evaluator {
            match (&e.contains, &e.agent) {
                (Some(_), None) => {}
                (None, Some(a)) => self.agent(a).await.map(|_| ())?,
                _ => return bad("evaluator: give `contains` or `agent`".into()),
            }
        }
        if spec.backoff.initial_ms > spec.backoff.max_ms || spec.within_ms == 0 {
            return bad("backoff.initialMs at most maxMs, and withinMs above 0".into());
        }
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let state = match self.supervisors.get_supervisor(name).await? {
            // The same spec again (a manifest re-applied) changes nothing and restarts nothing.
            Some(current) if current.spec == spec_json => return Ok(current),
            Some(current) => {
                let old: SupervisorState = serde_json::from_str(&current.state).unwrap_or_default();
                self.succeed(&old, &spec, "its supervisor was replaced")
                    .await
            }
            None => fresh(&spec, 0),
        };
        Ok(self
            .supervisors
            .put_supervisor(
                name,
                &spec_json,
                &serde_json::to_string(&state).unwrap_or_default(),
                "running",
                self.clock.now_ms(),
            )
            .await?)
    }

    async fn agent(&self, name: &str) -> Result<(AgentName, i64)> {
        let a = AgentName::parse(name).map_err(|e| Error::InvalidRequest(e.0))?;
        let rec = self
            .agents
            .get_agent(&a, None)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no agent {name}")))?;
        Ok((a, rec.version))
    }

    pub async fn get(&self, name: &str) -> Result<SupervisorRecord> {
        self.supervisors
            .get_supervisor(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no supervisor {name}")))
    }

    pub async fn list(&self) -> Result<Vec<SupervisorRecord>> {
        Ok(self.supervisors.list_supervisors().await?)
    }

    pub async fn incidents(&self, state: Option<&str>) -> Result<Vec<IncidentRecord>> {
        Ok(self.supervisors.list_incidents(state).await?)
    }

    pub async fn resolve_incident(&self, id: &str, resolution: &str) -> Result<IncidentRecord> {
        self.supervisors
            .resolve_incident(id, resolution, self.clock.now_ms())
            .await?
            .ok_or_else(|| Error::NotFound(format!("no open incident {id}")))
    }

    /// One pass over every running supervisor; returns whether a run was started.
    pub async fn drive(&self) -> Result<bool> {
        let all = self.supervisors.list_supervisors().await?;
        let mut started = false;
        for rec in all.iter().filter(|r| r.status == "running") {
            let has_parent = all.iter().any(|p| {
                serde_json::from_str::<SupervisorSpec>(&p.spec).is_ok_and(|s| {
                    s.children
                        .iter()
                        .any(|c| c.supervisor.as_deref() == Some(rec.name.as_str()))
                })
            });
            match self.step(rec, &all, has_parent).await {
                Ok(s) => started |= s,
                Err(e) => {
                    tracing::warn!(supervisor = %rec.name, error = %e, "supervising failed; retrying")
                }
            }
        }
        Ok(started)
    }

    async fn step(
        &self,
        rec: &SupervisorRecord,
        all: &[SupervisorRecord],
        has_parent: bool,
    ) -> Result<bool> {
        let spec: SupervisorSpec = serde_json::from_str(&rec.spec)
            .map_err(|e| Error::InvalidRequest(format!("supervisor {}: {e}", rec.name)))?;
        let mut st: SupervisorState = serde_json::from_str(&rec.state)
            .map_err(|e| Error::InvalidRequest(format!("supervisor {}: {e}", rec.name)))?;
        let before = st.clone();
        let now = self.clock.now_ms();
        let mut started = false;
        let mut give_up: Option<String> = None;
        let mut restart_children: Vec<(usize, String)> = Vec::new();
        for i in 0..st.children.len() {
            let c = &spec.children[i];
            if st.children[i].done {
                continue;
            }
            if let Some(sup) = &c.supervisor {
                match all
                    .iter()
                    .find(|r| &r.name == sup)
                    .map(|r| r.status.as_str())
                {
                    Some("completed") => st.children[i].done = true,
                    Some("failed") => {
                        restart_children.push((i, format!("supervisor {sup} gave up")));
                    }
                    _ => {}
                }
                continue;
            }
            let Some(run) = st.children[i].run_id.clone() else {
                if st.children[i].start_at.is_none_or(|t| t <= now)
                    && self.stopped(&mut st.children[i]).await?
                {
                    started |= self.start_child(rec, &spec, &mut st, i).await?;
                }
                continue;
            };
            if let Some(review) = st.children[i].review_run.clone() {
                match self.seen(&review).await? {
                    Seen::Running => {}
                    Seen::Succeeded(answer) if answer.trim_start().starts_with("ACCEPT") => {
                        self.supervisors.set_run_verdict(&run, "accepted").await?;
                        accept(&mut st.children[i])
                    }
                    Seen::Succeeded(answer) => {
                        self.supervisors.set_run_verdict(&run, "rejected").await?;
                        let feedback = answer
                            .trim_start()
                            .trim_start_matches("REJECT")
                            .trim_start_matches(':')
                            .trim()
                            .to_string();
                        if let Some(why) = send_back(&spec, &mut st.children[i], feedback, now) {
                            give_up = Some(why);
                        }
                    }
                    Seen::Failed(e) => {
                        give_up = Some(format!("the reviewer of {} failed: {e}", c.name))
                    }
                }
                continue;
            }
            match self.seen(&run).await? {
                Seen::Running => {}
                Seen::Succeeded(result) => match &spec.evaluator {
                    None => {
                        st.children[i].result = Some(result);
                        accept(&mut st.children[i]);
                    }
                    Some(EvaluatorSpec {
                        contains: Some(needle),
                        ..
                    }) => {
                        st.children[i].result = Some(result.clone());
                        let verdict = if result.contains(needle.as_str()) {
                            "accepted"
                        } else {
                            "rejected"
                        };
                        self.supervisors.set_run_verdict(&run, verdict).await?;
                        if verdict == "accepted" {
                            accept(&mut st.children[i]);
                        } else {
                            let feedback = format!("the answer must contain {needle:?}");
                            if let Some(why) = send_back(&spec, &mut st.children[i], feedback, now)
                            {
                                give_up = Some(why);
                            }
                        }
                    }
                    Some(EvaluatorSpec {
                        agent: Some(reviewer),
                        ..
                    }) => {
                        st.children[i].result = Some(result.clone());
                        let (agent, version) = self.agent(reviewer).await?;
                        let id = run_id(
                            &rec.name,
                            st.generation,
                            &format!("{}.review", c.name),
                            st.children[i].attempt,
                        );
                        let input = format!(
                            "Review this answer to the task {:?}. Reply ACCEPT, or REJECT: followed by what to fix.\n\n{result}",
                            c.input
                        );
                        started |= self
                            .create_run(&rec.name, id.clone(), agent, version, input)
                            .await?;
                        st.children[i].review_run = Some(id.as_str().to_string());
                    }
                    Some(_) => accept(&mut st.children[i]),
                },
                Seen::Failed(e) => {
                    restart_children.push((i, format!("child {} failed: {e}", c.name)))
                }
            }
        }
        // The first failure decides; the strategy may restart others with it.
        if let (None, Some((i, why))) = (&give_up, restart_children.first().cloned()) {
            let window = spec.within_ms as i64;
            st.restarts.retain(|t| now - t < window);
            if st.restarts.len() as u32 >= spec.max_restarts {
                give_up = Some(format!(
                    "{why}; {} restarts within {} ms already (maxRestarts {})",
                    st.restarts.len(),
                    spec.within_ms,
                    spec.max_restarts
                ));
            } else {
                st.restarts.push(now);
                let n = st.restarts.len() as u32;
                let delay = spec
                    .backoff
                    .initial_ms
                    .saturating_mul(1 << (n - 1).min(20))
                    .min(spec.backoff.max_ms) as i64;
                let which: Vec<usize> = match spec.strategy {
                    Strategy::OneForOne => vec![i],
                    Strategy::OneForAll => (0..st.children.len()).collect(),
                    Strategy::RestForOne => (i..st.children.len()).collect(),
                };
                for j in which {
                    self.restart(&spec, &mut st, j, now + delay, all).await?;
                }
            }
        }
        let status = if give_up.is_some() {
            "failed"
        } else if st.children.iter().all(|c| c.done) {
            "completed"
        } else {
            "running"
        };
        let incident = match (&give_up, has_parent) {
            (Some(why), false) => Some(IncidentRecord {
                id: format!("inc_{}", uuid::Uuid::now_v7().simple()),
                supervisor: rec.name.clone(),
                reason: why.clone(),
                state: "open".into(),
                created_at: now,
                resolved_at: None,
                resolution: None,
            }),
            _ => None,
        };
        if let Some(why) = &give_up {
            st.reason = Some(why.clone());
            // Nothing it started runs on once it has given up; a parent restarting it waits
            // for these to end (see `succeed`).
            for c in &st.children {
                for run in c.live_runs() {
                    self.stop(&run, "its supervisor gave up").await;
                }
            }
        }
        if st != before || status != rec.status {
            let state = serde_json::to_string(&st).unwrap_or_default();
            self.supervisors
                .update_supervisor(
                    &rec.name,
                    rec.version,
                    &state,
                    status,
                    incident.as_ref(),
                    now,
                )
                .await?;
        }
        Ok(started)
    }

    async fn seen(&self, run: &str) -> Result<Seen> {
        let id = RunId::parse(run).map_err(|e| Error::InvalidRequest(e.0))?;
        let Some(r) = self.runs.get_run(&id).await? else {
            return Ok(Seen::Failed("the run vanished".into()));
        };
        Ok(match r.state {
            RunState::Succeeded => Seen::Succeeded(r.result.unwrap_or_default()),
            RunState::Failed | RunState::Cancelled => Seen::Failed(format!(
                "{} ({})",
                r.error_message.unwrap_or_default(),
                r.error_code.unwrap_or_default()
            )),
            _ => Seen::Running,
        })
    }

    async fn start_child(
        &self,
        rec: &SupervisorRecord,
        spec: &SupervisorSpec,
        st: &mut SupervisorState,
        i: usize,
    ) -> Result<bool> {
        let c = &spec.children[i];
        let Some(agent) = &c.agent else {
            return Ok(false);
        };
        let (agent, version) = self.agent(agent).await?;
        let child = &mut st.children[i];
        child.attempt += 1;
        let id = run_id(&rec.name, st.generation, &c.name, child.attempt);
        let input = match &child.feedback {
            Some(f) => format!("{}\n\nA reviewer sent the last answer back: {f}", c.input),
            None => c.input.clone(),
        };
        child.run_id = Some(id.as_str().to_string());
        child.start_at = None;
        self.create_run(&rec.name, id, agent, version, input).await
    }

    async fn create_run(
        &self,
        supervisor: &str,
        id: RunId,
        agent: AgentName,
        version: i64,
        input: String,
    ) -> Result<bool> {
        let run = NewRun {
            id,
            agent,
            agent_version: version,
            parent_id: None,
            input,
        };
        let origin = crate::Origin::Supervisor(supervisor.to_string());
        Ok(self.launch.create(run, origin).await?.1)
    }

    /// Asks run `run` to stop: at once on this node, through the store (and its
    /// announcement) on the node that drives it, or by cancelling it outright when nobody does.
    async fn stop(&self, run: &str, why: &str) {
        if let Ok(id) = RunId::parse(run) {
            let _ = self
                .runs
                .request_cancel(&id, why, self.clock.now_ms())
                .await;
            self.active.cancel(&id, why);
        }
    }

    /// Whether every run `c` is waiting on to stop has ended; asks the others again (a node
    /// that missed the announcement, or whose lease has since run out).
    async fn stopped(&self, c: &mut ChildState) -> Result<bool> {
        let mut still = Vec::new();
        for run in std::mem::take(&mut c.stopping) {
            let id = RunId::parse(&run).map_err(|e| Error::InvalidRequest(e.0))?;
            match self.runs.get_run(&id).await? {
                Some(r) if !r.state.is_terminal() => {
                    self.stop(&run, "restarted by its supervisor").await;
                    still.push(run);
                }
                _ => {}
            }
        }
        c.stopping = still;
        Ok(c.stopping.is_empty())
    }

    /// The next generation of a supervisor after `old`: every child anew, each first waiting
    /// for whatever of its runs in `old` may still be going (all told to stop, `why`).
    async fn succeed(
        &self,
        old: &SupervisorState,
        spec: &SupervisorSpec,
        why: &str,
    ) -> SupervisorState {
        let mut next = fresh(spec, old.generation + 1);
        for before in &old.children {
            let runs = before.live_runs();
            for run in &runs {
                self.stop(run, why).await;
            }
            if let Some(c) = next.children.iter_mut().find(|c| c.name == before.name) {
                c.stopping = runs;
            }
        }
        next
    }

    /// Child `j` starts over at `at`: its run stopped, or, for a child supervisor, a fresh
    /// generation of it.
    async fn restart(
        &self,
        spec: &SupervisorSpec,
        st: &mut SupervisorState,
        j: usize,
        at: Millis,
        all: &[SupervisorRecord],
    ) -> Result<()> {
        let c = &mut st.children[j];
        let live = c.live_runs();
        for run in &live {
            self.stop(run, "restarted by its supervisor").await;
        }
        c.stopping = live;
        c.run_id = None;
        c.review_run = None;
        c.done = false;
        c.start_at = Some(at);
        c.feedback = None;
        c.rounds = 0;
        if let Some(sup) = &spec.children[j].supervisor {
            if let Some(r) = all.iter().find(|r| &r.name == sup) {
                let child_spec: SupervisorSpec = serde_json::from_str(&r.spec)
                    .map_err(|e| Error::InvalidRequest(e.to_string()))?;
                let old: SupervisorState = serde_json::from_str(&r.state).unwrap_or_default();
                let mut fresh = self
                    .succeed(&old, &child_spec, "restarted by its parent supervisor")
                    .await;
                for ch in &mut fresh.children {
                    ch.start_at = Some(at);
                }
                self.supervisors
                    .update_supervisor(
                        sup,
                        r.version,
                        &serde_json::to_string(&fresh).unwrap_or_default(),
                        "running",
                        None,
                        self.clock.now_ms(),
                    )
                    .await?;
            }
            c.start_at = None;
        }
        Ok(())
    }
}

fn fresh(spec: &SupervisorSpec, generation: u32) -> SupervisorState {
    SupervisorState {
        generation,
        restarts: Vec::new(),
        children: spec
            .children
            .iter()
            .map(|c| ChildState {
                name: c.name.clone(),
                ..ChildState::default()
            })
            .collect(),
        reason: None,
    }
}

fn accept(c: &mut ChildState) {
    c.done = true;
    c.review_run = None;
}

/// Sends a child's answer back for another attempt with `feedback`; out of rounds, says why
/// the supervisor must escalate.
fn send_back(
    spec: &SupervisorSpec,
    c: &mut ChildState,
    feedback: String,
    now: Millis,
) -> Option<String> {
    let max = spec.evaluator.as_ref().map_or(0, |e| e.max_rounds);
    if c.rounds >= max {
        return Some(format!(
            "the evaluator rejected {} after {} rounds of feedback: {feedback}",
            c.name, c.rounds
        ));
    }
    c.rounds += 1;
    c.feedback = Some(feedback);
    c.run_id = None;
    c.review_run = None;
    c.start_at = Some(now);
    None
}

/// The run a supervisor starts for `child`'s `attempt` in `generation`: the same on every node.
fn run_id(supervisor: &str, generation: u32, child: &str, attempt: u32) -> RunId {
    let ns = uuid::Uuid::from_bytes([0x5d; 16]);
    RunId::from_uuid(uuid::Uuid::new_v5(
        &ns,
        format!("supervisor:{supervisor}:{generation}:{child}:{attempt}").as_bytes(),
    ))
}
