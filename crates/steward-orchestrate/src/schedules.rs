//! Schedules: cron patterns (UTC, with optional seconds) and one-shot delayed firings, kept in
//! the store so they survive restarts. The upkeep loop fires what is due: a task on a queue or
//! a run of an agent, each named by the schedule and the time it was due (the task's dedup
//! key, the run's id), so a firing replayed after a crash or raced by another node creates
//! nothing twice; then the schedule moves on with a conditional update. Times that passed
//! while no node ran are handled as the schedule's `missed` policy says: `skip` them, fire
//! `once` for the lot, or fire `all` of them (at most 1,000). A time that came due while this
//! node was running is never missed, however late a loaded pass finds it.

use std::str::FromStr;
use std::sync::Arc;
use steward_store::{AgentStore, ScheduleStore};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use steward_store::{NewRun, ScheduleRecord, Store};
use steward_types::{AgentName, Millis, RunId};

use crate::tasks::{check_name, Enqueue, Tasks};
use crate::{Error, Result};
use steward_types::clock::Clock;

/// On a node's first pass, a firing this close to its time is on time; later, it was missed
/// (it came due while no node was looking). After that, whatever came due since the node's
/// last pass is on time.
pub const ON_TIME_MS: i64 = 1_000;
/// Most firings a schedule makes in one pass (`missed: all` after a long outage).
const MAX_CATCH_UP: usize = 1_000;

/// What a schedule fires.
#[derive(Clone, Debug)]
pub enum Target {
    Queue(String),
    Agent(String),
}

/// A schedule as the API sets it.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    pub name: String,
    /// A cron pattern; or fire once at `at_ms`.
    pub cron: Option<String>,
    pub at_ms: Option<Millis>,
    pub target: Target,
    pub payload: Value,
    pub missed: String,
}

fn parse_cron(pattern: &str) -> Result<croner::Cron> {
    croner::Cron::new(pattern)
        .with_seconds_optional()
        .parse()
        .map_err(|e| Error::InvalidRequest(format!("cron {pattern:?}: {e}")))
}

fn at(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The first time `cron` matches strictly after `after`.
fn next_after(cron: &croner::Cron, after: Millis) -> Option<Millis> {
    cron.find_next_occurrence(&at(after), false)
        .ok()
        .map(|t| t.timestamp_millis())
}

pub struct Schedules {
    schedules: Arc<dyn ScheduleStore>,
    agents: Arc<dyn AgentStore>,
    clock: Arc<dyn Clock>,
    launch: Arc<dyn crate::Launch>,
    /// When this node's last complete pass looked (what came due after it is on time).
    last_pass: std::sync::Mutex<Option<Millis>>,
}

impl Schedules {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        launch: Arc<dyn crate::Launch>,
    ) -> Self {
        Schedules {
            schedules: store.clone(),
            agents: store.clone(),
            clock,
            launch,
            last_pass: std::sync::Mutex::new(None),
        }
    }

    pub async fn put(&self, s: NewSchedule) -> Result<ScheduleRecord> {
        check_name("schedule", &s.name)?;
        if !["skip", "once", "all"].contains(&s.missed.as_str()) {
            return Err(Error::InvalidRequest("missed: skip, once or all".into()));
        }
        let now = self.clock.now_ms();
        let next_at =
            match (&s.cron, s.at_ms) {
                (Some(c), None) => Some(next_after(&parse_cron(c)?, now).ok_or_else(|| {
                    Error::InvalidRequest(format!("cron {c:?}: it never matches"))
                })?),
                (None, Some(t)) => Some(t),
                _ => {
                    return Err(Error::InvalidRequest(
                        "give `cron`, or a one-shot time (`at_ms` or `delay_ms`)".into(),
                    ))
                }
            };
        let (queue, agent) = match &s.target {
            Target::Queue(q) => {
                check_name("queue", q)?;
                (Some(q.clone()), None)
            }
            Target::Agent(a) => {
                let name = AgentName::parse(a).map_err(|e| Error::InvalidRequest(e.0))?;
                if self.agents.get_agent(&name, None).await?.is_none() {
                    return Err(Error::NotFound(format!("no agent {a}")));
                }
                (None, Some(a.clone()))
            }
        };
        let rec = ScheduleRecord {
            name: s.name,
            cron: s.cron,
            queue,
            agent,
            payload: s.payload.to_string(),
            missed: s.missed,
            next_at,
            last_fired_at: None,
            fired: 0,
            created_at: now,
        };
        self.schedules.put_schedule(&rec, now).await?;
        self.get(&rec.name).await
    }

    pub async fn get(&self, name: &str) -> Result<ScheduleRecord> {
        self.schedules
            .get_schedule(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no schedule {name}")))
    }

    pub async fn list(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.schedules.list_schedules().await?)
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        if self.schedules.delete_schedule(name).await? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no schedule {name}")))
        }
    }

    /// Fires every schedule due now; returns whether any run was created.
    pub async fn fire_due(&self, tasks: &Tasks) -> Result<bool> {
        let now = self.clock.now_ms();
        let last_pass = *self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
        let mut started = false;
        for s in self.schedules.due_schedules(now, 256).await? {
            let Some(due) = s.next_at else { continue };
            let cron = match s.cron.as_deref().map(parse_cron).transpose() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(schedule = %s.name, error = %e, "a stored schedule no longer parses; it is stopped");
                    self.schedules
                        .advance_schedule(&s.name, due, None, 0, now)
                        .await?;
                    continue;
                }
            };
            // Every time it was due, up to now.
            let mut times = vec![due];
            if let Some(c) = &cron {
                while times.len() < MAX_CATCH_UP {
                    match next_after(c, *times.last().unwrap_or(&due)) {
                        Some(t) if t <= now => times.push(t),
                        _ => break,
                    }
                }
            }
            let (on_time, missed): (Vec<Millis>, Vec<Millis>) = times
                .into_iter()
                .partition(|t| now - t <= ON_TIME_MS || last_pass.is_some_and(|p| *t > p));
            let mut fire = on_time;
            match s.missed.as_str() {
                "all" => fire.splice(0..0, missed).for_each(drop),
                // The missed lot fires once, besides whatever is on time.
                "once" => fire.splice(0..0, missed.last().copied()).for_each(drop),
                _ => {}
            }
            for t in &fire {
                started |= self.fire(&s, *t, tasks).await?;
            }
            let next = cron.as_ref().and_then(|c| next_after(c, now));
            self.schedules
                .advance_schedule(&s.name, due, next, fire.len() as i64, now)
                .await?;
        }
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        Ok(started)
    }

    /// Fires `s` for the time `due`: idempotent, by the names it gives what it creates.
    async fn fire(&self, s: &ScheduleRecord, due: Millis, tasks: &Tasks) -> Result<bool> {
        let key = format!("schedule:{}:{due}", s.name);
        let payload = Value::from_str(&s.payload).unwrap_or(Value::String(s.payload.clone()));
        if let Some(queue) = &s.queue {
            tasks
                .enqueue(Enqueue {
                    queue: queue.clone(),
                    payload,
                    dedup_key: Some(key),
                    ..Enqueue::default()
                })
                .await?;
            return Ok(false);
        }
        let Some(agent) = &s.agent else {
            return Ok(false);
        };
        let name = AgentName::parse(agent).map_err(|e| Error::InvalidRequest(e.0))?;
        let Some(rec) = self.agents.get_agent(&name, None).await? else {
            tracing::warn!(schedule = %s.name, agent, "the schedule's agent is gone; nothing fired");
            return Ok(false);
        };
        let ns = uuid::Uuid::from_bytes([0x5c; 16]);
        let run = NewRun {
            id: RunId::from_uuid(uuid::Uuid::new_v5(&ns, key.as_bytes())),
            agent: name,
            agent_version: rec.version,
            parent_id: None,
            input: match payload {
                Value::String(s) => s,
                other => other.to_string(),
            },
        };
        let (_, new) = self
            .launch
            .create(run, crate::Origin::Schedule(s.name.clone()))
            .await?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use steward_store::TaskFilter;
    use steward_testkit::{FreshStore, ManualClock};

    use super::*;

    /// Starts runs straight in the store (the engine's launcher adds the input limit and the
    /// audit record, which these tests do not look at).
    struct StoreLaunch(Arc<dyn Store>);

    #[async_trait::async_trait]
    impl crate::Launch for StoreLaunch {
        async fn create(
            &self,
            run: NewRun,
            _: crate::Origin,
        ) -> std::result::Result<(steward_store::RunRecord, bool), crate::LaunchError> {
            Ok(self.0.create_run(&run, 0).await?)
        }
    }

    /// A store of its own, a clock at `now` the test moves, and the tasks and schedules on them.
    struct Setup {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        tasks: Tasks,
        schedules: Schedules,
    }

    impl Setup {
        async fn at(now: Millis) -> Self {
            let fresh = FreshStore::sqlite().await;
            let store = fresh.store.clone();
            let clock = Arc::new(ManualClock::at(now));
            Setup {
                tasks: Tasks::new(store.clone(), clock.clone()),
                schedules: Self::schedules(&store, &clock),
                _dir: fresh.dir,
                store,
                clock,
            }
        }

        /// Schedules on `store` and `clock`, as a node starting afresh would make them.
        fn schedules(store: &Arc<dyn Store>, clock: &Arc<ManualClock>) -> Schedules {
            Schedules::new(
                store.clone(),
                clock.clone(),
                Arc::new(StoreLaunch(store.clone())),
            )
        }
    }

    /// Five minutely firings pass while nothing runs: `skip` fires none of them, `once` the
    /// latest, `all` every one, each once however often the pass is repeated; then each goes on
    /// from the next minute.
    #[tokio::test]
    async fn missed_times_follow_the_schedules_policy() {
        let t0 = 1_800_000_000_000; // on a minute
        let Setup {
            _dir,
            store,
            clock,
            tasks,
            schedules,
        } = Setup::at(t0 - 10).await;
        for missed in ["skip", "once", "all"] {
            schedules
                .put(NewSchedule {
                    name: missed.into(),
                    cron: Some("* * * * *".into()),
                    at_ms: None,
                    target: Target::Queue(format!("q-{missed}")),
                    payload: Value::Null,
                    missed: missed.into(),
                })
                .await
                .unwrap();
        }
        assert_eq!(schedules.get("once").await.unwrap().next_at, Some(t0));
        // Down from before t0 until 10 s after the fifth minute.
        clock.set(t0 + 4 * 60_000 + 10_000);
        for _ in 0..3 {
            schedules.fire_due(&tasks).await.unwrap();
        }
        let due = |q: &str| {
            let store = store.clone();
            let q = q.to_string();
            async move {
                let mut keys: Vec<i64> = store
                    .list_tasks(&TaskFilter {
                        queue: Some(q),
                        limit: 100,
                        ..TaskFilter::default()
                    })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|t| {
                        let key = t.dedup_key.unwrap();
                        key.rsplit(':').next().unwrap().parse().unwrap()
                    })
                    .collect();
                keys.sort();
                keys
            }
        };
        let minute = |i: i64| t0 + i * 60_000;
        assert_eq!(due("q-skip").await, Vec::<i64>::new());
        assert_eq!(due("q-once").await, vec![minute(4)]);
        assert_eq!(due("q-all").await, (0..5).map(minute).collect::<Vec<_>>());
        for missed in ["skip", "once", "all"] {
            let s = schedules.get(missed).await.unwrap();
            assert_eq!(s.next_at, Some(minute(5)), "{missed}");
        }
        // On time from then on: every policy fires.
        clock.set(minute(5) + 200);
        schedules.fire_due(&tasks).await.unwrap();
        assert_eq!(due("q-skip").await, vec![minute(5)]);
        assert_eq!(due("q-once").await, vec![minute(4), minute(5)]);
        assert_eq!(schedules.get("all").await.unwrap().fired, 6);
    }

    /// A per-second schedule on a running node whose passes come late (a loaded machine): no
    /// firing is missed, whatever the policy. After an outage, `once` fires the missed lot once
    /// besides the firing that is on time in the same pass; `skip` fires only that one.
    #[tokio::test]
    async fn late_passes_on_a_running_node_miss_nothing() {
        let t0 = 1_800_000_000_000;
        let Setup {
            _dir,
            store,
            clock,
            tasks,
            schedules,
        } = Setup::at(t0 - 10).await;
        for missed in ["skip", "once"] {
            schedules
                .put(NewSchedule {
                    name: missed.into(),
                    cron: Some("* * * * * *".into()),
                    at_ms: None,
                    target: Target::Queue(format!("q-{missed}")),
                    payload: Value::Null,
                    missed: missed.into(),
                })
                .await
                .unwrap();
        }
        let fired = |name: &'static str| {
            let schedules = &schedules;
            async move { schedules.get(name).await.unwrap().fired }
        };
        // Passes 2.5 s apart: every second in between still fires.
        for at in [t0 + 100, t0 + 2_600, t0 + 5_100] {
            clock.set(at);
            schedules.fire_due(&tasks).await.unwrap();
        }
        assert_eq!((fired("skip").await, fired("once").await), (6, 6));
        // The node stops; another starts 10.5 s later: t0+6..t0+15 passed with nobody looking.
        let restarted = Setup::schedules(&store, &clock);
        clock.set(t0 + 15_500);
        restarted.fire_due(&tasks).await.unwrap();
        // On time: t0+15 s. `once` also fires the latest missed time, t0+14 s.
        assert_eq!((fired("skip").await, fired("once").await), (7, 8));
    }
}
