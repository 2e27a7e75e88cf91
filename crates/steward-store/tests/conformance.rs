//! The store conformance suite: the same assertions against SQLite and PostgreSQL, each test on
//! a fresh database (a new SQLite file; a new PostgreSQL schema).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use steward_store::*;
use steward_types::config::StoreConfig;
use steward_types::{AgentName, NodeId, RunId, RunState};

struct Fresh {
    store: Arc<dyn Store>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    Fresh {
        store: open(&url, &StoreConfig::default()).await.unwrap(),
        url,
        _dir: Some(dir),
    }
}

/// A PostgreSQL store in a schema of its own, so tests never see each other's rows.
async fn postgres() -> Fresh {
    let base = std::env::var("STEWARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
    let (_, url) = steward_store::pg_schema::new_schema(&base, "t")
        .await
        .expect("PostgreSQL at STEWARD_TEST_PG_URL (default 127.0.0.1:5432/test)");
    Fresh {
        store: open(&url, &StoreConfig::default()).await.unwrap(),
        url,
        _dir: None,
    }
}

fn name(s: &str) -> AgentName {
    AgentName::parse(s).unwrap()
}

fn new_id() -> RunId {
    RunId::from_uuid(uuid::Uuid::now_v7())
}

fn agent(n: &str, spec: &str) -> NewAgent {
    NewAgent {
        name: name(n),
        spec_json: spec.into(),
        spec_hash: format!("h-{spec}"),
    }
}

async fn with_agent(s: &dyn Store) {
    s.put_agents(&[agent("a", "{}")], 1).await.unwrap();
}

fn new_run(id: &RunId) -> NewRun {
    NewRun {
        id: id.clone(),
        agent: name("a"),
        agent_version: 1,
        parent_id: None,
        input: "in".into(),
    }
}

fn entry(run: &RunId, seq: i64, phase: i64) -> JournalEntry {
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

async fn agents_are_versioned(s: &dyn Store) {
    let r = s
        .put_agents(&[agent("a", "one"), agent("b", "x")], 10)
        .await
        .unwrap();
    assert!(r.iter().all(|(_, changed)| *changed));
    let r = s.put_agents(&[agent("a", "one")], 11).await.unwrap();
    assert_eq!(
        (r[0].0.version, r[0].1),
        (1, false),
        "an unchanged spec keeps its version"
    );
    let r = s.put_agents(&[agent("a", "two")], 12).await.unwrap();
    assert_eq!((r[0].0.version, r[0].1), (2, true));
    assert_eq!(
        s.get_agent(&name("a"), Some(1))
            .await
            .unwrap()
            .unwrap()
            .spec,
        "one"
    );
    assert_eq!(
        s.get_agent(&name("a"), None).await.unwrap().unwrap().spec,
        "two"
    );
    assert!(s.get_agent(&name("zz"), None).await.unwrap().is_none());
    let all = s.list_agents().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|a| (a.name.as_str(), a.version))
            .collect::<Vec<_>>(),
        vec![("a", 2), ("b", 1)]
    );
}

async fn a_write_probe_commits_again_and_again(s: &dyn Store) {
    for now in [1, 2, 3] {
        s.probe_write("node-a", now).await.unwrap();
        s.probe_write("node-b", now).await.unwrap();
    }
    s.ping().await.unwrap();
}

async fn runs_are_created_once(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    let (r, created) = s.create_run(&new_run(&id), 100).await.unwrap();
    assert!(created);
    assert_eq!(r.state, RunState::Queued);
    let (again, created) = s.create_run(&new_run(&id), 200).await.unwrap();
    assert!(!created, "the same id finds the existing run");
    assert_eq!(again.created_at, 100);
    let unknown_agent = NewRun {
        agent: name("ghost"),
        ..new_run(&new_id())
    };
    assert!(
        s.create_run(&unknown_agent, 1).await.is_err(),
        "a run must reference a stored agent version"
    );
}

async fn a_new_run_is_audited_in_its_own_commit(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    let (before, _) = s.audit_head().await.unwrap();
    let (_, created) = s
        .create_run_audited(&new_run(&id), r#"{"action":"run.create"}"#, 100)
        .await
        .unwrap();
    assert!(created);
    let (_, again) = s
        .create_run_audited(&new_run(&id), r#"{"action":"run.create"}"#, 200)
        .await
        .unwrap();
    assert!(!again);
    let rows = s.audit_rows(before, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "audited once, when it was created: {rows:?}");
    // A run that cannot be created leaves no record either.
    let unknown_agent = NewRun {
        agent: name("ghost"),
        ..new_run(&new_id())
    };
    assert!(s
        .create_run_audited(&unknown_agent, r#"{"action":"run.create"}"#, 300)
        .await
        .is_err());
    assert_eq!(s.audit_rows(before, 10).await.unwrap().len(), 1);
}

async fn policy_sets_are_versioned_and_a_repeat_is_not_a_version(s: &dyn Store) {
    assert!(s.latest_policy_set().await.unwrap().is_none());
    let v1 = s
        .put_policy_set("h1", "permit(principal, action, resource);", 10)
        .await
        .unwrap();
    let again = s
        .put_policy_set("h1", "permit(principal, action, resource);", 20)
        .await
        .unwrap();
    assert_eq!(again, v1, "the latest text again is not a new version");
    let v2 = s
        .put_policy_set("h2", "forbid(principal, action, resource);", 30)
        .await
        .unwrap();
    assert_eq!(v2.version, v1.version + 1);
    assert_eq!(s.latest_policy_set().await.unwrap(), Some(v2));
}

async fn an_approval_is_asked_once_per_step_and_decided_once(s: &dyn Store) {
    with_agent(s).await;
    let run = new_id();
    s.create_run(&new_run(&run), 1).await.unwrap();
    let ask = |id: &str| NewApproval {
        id: id.into(),
        run_id: run.to_string(),
        seq: 2,
        approvers: "finance".into(),
        action: "tool.call".into(),
        resource: "pay".into(),
        policy_ids: "[\"p1\"]".into(),
        expires_at: 1_000,
    };
    let first = s.request_approval(&ask("appr_1"), 10).await.unwrap();
    assert_eq!(first.state, "pending");
    let second = s.request_approval(&ask("appr_2"), 20).await.unwrap();
    assert_eq!(second.id, "appr_1", "the same step finds its approval");
    assert_eq!(
        s.approval_for(&run.to_string(), 2).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        s.list_approvals(Some("pending"), 10).await.unwrap().len(),
        1
    );
    let decided = s
        .decide_approval("appr_1", true, "ok", "alice", 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (decided.state.as_str(), decided.decided_by.as_deref()),
        ("approved", Some("alice"))
    );
    assert!(
        matches!(
            s.decide_approval("appr_1", false, "no", "bob", 40).await,
            Err(Error::Conflict(_))
        ),
        "decided once"
    );
    assert!(s
        .decide_approval("appr_none", true, "", "x", 40)
        .await
        .unwrap()
        .is_none());
    // One left pending past its expiry is expired (a denial), once.
    let other = new_id();
    s.create_run(&new_run(&other), 1).await.unwrap();
    let late = NewApproval {
        id: "appr_3".into(),
        run_id: other.to_string(),
        ..ask("appr_3")
    };
    s.request_approval(&late, 50).await.unwrap();
    assert_eq!(s.expire_approvals(999).await.unwrap(), 0, "not yet");
    assert_eq!(s.expire_approvals(1_001).await.unwrap(), 1);
    assert_eq!(s.expire_approvals(2_000).await.unwrap(), 0);
    assert_eq!(
        s.get_approval("appr_3").await.unwrap().unwrap().state,
        "expired"
    );
}

async fn a_schedule_fires_once_for_each_time_it_is_due(s: &dyn Store) {
    let sched = ScheduleRecord {
        name: "nightly".into(),
        cron: Some("0 0 3 * * *".into()),
        queue: Some("jobs".into()),
        agent: None,
        payload: "{}".into(),
        missed: "once".into(),
        next_at: Some(100),
        last_fired_at: None,
        fired: 0,
        created_at: 1,
    };
    s.put_schedule(&sched, 1).await.unwrap();
    assert_eq!(
        s.get_schedule("nightly").await.unwrap().unwrap().next_at,
        Some(100)
    );
    assert!(s.due_schedules(99, 10).await.unwrap().is_empty());
    assert_eq!(s.due_schedules(100, 10).await.unwrap().len(), 1);
    // Two nodes saw it due at 100: one moves it on, the other finds it moved.
    assert!(s
        .advance_schedule("nightly", 100, Some(200), 1, 100)
        .await
        .unwrap());
    assert!(!s
        .advance_schedule("nightly", 100, Some(200), 1, 101)
        .await
        .unwrap());
    let after = s.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!((after.next_at, after.fired), (Some(200), 1));
    assert!(s.due_schedules(150, 10).await.unwrap().is_empty());
    assert_eq!(s.list_schedules().await.unwrap().len(), 1);
    assert!(s.delete_schedule("nightly").await.unwrap());
    assert!(!s.delete_schedule("nightly").await.unwrap());
    assert!(s.get_schedule("nightly").await.unwrap().is_none());
}

fn submission(id: &str, repo: &str, at: i64) -> SubmissionRecord {
    SubmissionRecord {
        id: id.into(),
        repo: repo.into(),
        branch: format!("feature/{id}"),
        submitter: "agent:dev".into(),
        state: "queued".into(),
        detail: None,
        merged: None,
        created_at: at,
        updated_at: at,
        attempts: 0,
    }
}

async fn the_merge_queue_checks_one_at_a_time_in_order_and_fences_lost_checks(s: &dyn Store) {
    let repo = RepoRecord {
        name: "app".into(),
        path: "/srv/app".into(),
        target: "main".into(),
        check_cmd: "make test".into(),
        resolver: None,
        strategy: "rebase".into(),
    };
    s.put_repo(&repo, 1).await.unwrap();
    assert_eq!(s.get_repo("app").await.unwrap().as_ref(), Some(&repo));
    // Putting it again replaces it.
    let merged = RepoRecord {
        strategy: "merge".into(),
        resolver: Some("fixer".into()),
        ..repo.clone()
    };
    s.put_repo(&merged, 2).await.unwrap();
    assert_eq!(s.list_repos().await.unwrap(), vec![merged]);
    assert!(s.get_repo("nope").await.unwrap().is_none());

    for (id, at) in [("s2", 20), ("s1", 10), ("s3", 30)] {
        s.add_submission(&submission(id, "app", at)).await.unwrap();
    }
    // An id is one submission.
    assert!(s
        .add_submission(&submission("s1", "app", 99))
        .await
        .is_err());
    let order: Vec<String> = s
        .list_submissions("app")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(order, ["s1", "s2", "s3"]);

    // The oldest first, one at a time per repository, whoever asks.
    let first = s
        .claim_submission("app", "n1", 100, 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.state.as_str(), first.attempts),
        ("s1", "checking", 1)
    );
    assert!(s
        .claim_submission("app", "n2", 110, 210)
        .await
        .unwrap()
        .is_none());
    assert!(s.renew_check("s1", "n1", 1, 300).await.unwrap());
    assert!(
        !s.renew_check("s1", "n2", 1, 300).await.unwrap(),
        "not n2's check"
    );
    assert!(
        !s.renew_check("s1", "n1", 2, 300).await.unwrap(),
        "not this attempt"
    );
    // A lease that ran out goes back to the queue and the check begins again, fenced: the
    // first checker can no longer renew or finish it.
    let again = s
        .claim_submission("app", "n2", 301, 400)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("s1", 2));
    assert!(!s.renew_check("s1", "n1", 1, 500).await.unwrap());
    assert!(!s
        .finish_submission("s1", "n1", 1, "landed", "late", Some("abc"), 302)
        .await
        .unwrap());
    assert!(s
        .finish_submission("s1", "n2", 2, "landed", "checks passed", Some("abc"), 303)
        .await
        .unwrap());
    let landed = s.get_submission("s1").await.unwrap().unwrap();
    assert_eq!(
        (
            landed.state.as_str(),
            landed.merged.as_deref(),
            landed.detail.as_deref()
        ),
        ("landed", Some("abc"), Some("checks passed"))
    );
    // Finishing twice records nothing more.
    assert!(!s
        .finish_submission("s1", "n2", 2, "failed", "again", None, 304)
        .await
        .unwrap());

    // A node starting again gives its checks back to the queue; another repository's queue is
    // its own.
    let next = s
        .claim_submission("app", "n1", 310, 900)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, "s2");
    s.put_repo(
        &RepoRecord {
            name: "lib".into(),
            ..repo.clone()
        },
        3,
    )
    .await
    .unwrap();
    s.add_submission(&submission("l1", "lib", 5)).await.unwrap();
    assert_eq!(
        s.claim_submission("lib", "n2", 311, 900)
            .await
            .unwrap()
            .unwrap()
            .id,
        "l1"
    );
    assert_eq!(s.release_checks("n1", 320).await.unwrap(), 1);
    assert_eq!(
        s.get_submission("s2").await.unwrap().unwrap().state,
        "queued"
    );
    assert_eq!(
        s.get_submission("l1").await.unwrap().unwrap().state,
        "checking"
    );
    let retried = s
        .claim_submission("app", "n2", 330, 900)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.id.as_str(), retried.attempts), ("s2", 2));
    assert!(s.get_submission("nope").await.unwrap().is_none());
}

async fn path_leases_are_all_or_none_and_cover_what_lies_below(s: &dyn Store) {
    let repo = RepoRecord {
        name: "app".into(),
        path: "/srv/app".into(),
        target: "main".into(),
        check_cmd: "true".into(),
        resolver: None,
        strategy: "rebase".into(),
    };
    s.put_repo(&repo, 1).await.unwrap();
    let paths = |p: &[&str]| p.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(s
        .lease_paths("app", "run:a", &paths(&["src/api/", "docs"]), 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A path below a leased one, or above it, is in the way; nothing of the request is taken.
    let in_way = s
        .lease_paths(
            "app",
            "run:b",
            &paths(&["README", "src/api/routes.rs"]),
            1_000,
            20,
        )
        .await
        .unwrap();
    assert_eq!(in_way.len(), 1, "{in_way:?}");
    assert_eq!(
        (in_way[0].path.as_str(), in_way[0].holder.as_str()),
        ("src/api", "run:a")
    );
    let in_way = s
        .lease_paths("app", "run:b", &paths(&["src"]), 1_000, 20)
        .await
        .unwrap();
    assert_eq!(in_way.len(), 1, "{in_way:?}");
    let held: Vec<(String, String)> = s
        .path_leases("app", 30)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.path, l.holder))
        .collect();
    assert_eq!(
        held,
        [
            ("docs".to_string(), "run:a".to_string()),
            ("src/api".into(), "run:a".into())
        ],
        "README was not taken"
    );
    // A holder may extend its own leases; a sibling path is free.
    assert!(s
        .lease_paths("app", "run:a", &paths(&["src/api"]), 2_000, 40)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .lease_paths("app", "run:b", &paths(&["src/web"]), 1_000, 40)
        .await
        .unwrap()
        .is_empty());
    // Expired leases are in nobody's way.
    assert!(s
        .lease_paths("app", "run:c", &paths(&["docs/intro.md"]), 5_000, 1_500)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.release_paths("app", "run:a").await.unwrap(), 1, "src/api");
    assert_eq!(s.release_paths("app", "run:a").await.unwrap(), 0);
    let holders: Vec<String> = s
        .path_leases("app", 1_600)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.holder)
        .collect();
    assert_eq!(
        holders,
        ["run:c"],
        "run:b's src/web lease has expired by 1600"
    );
}

async fn a_supervisor_state_moves_on_once_per_version(s: &dyn Store) {
    let v = s
        .put_supervisor("tree", "{}", "{\"g\":1}", "running", 10)
        .await
        .unwrap();
    assert_eq!(s.get_supervisor("tree").await.unwrap(), Some(v.clone()));
    let incident = IncidentRecord {
        id: "inc_1".into(),
        supervisor: "tree".into(),
        reason: "gave up".into(),
        state: "open".into(),
        created_at: 20,
        resolved_at: None,
        resolution: None,
    };
    // Two nodes read the same version: one writes, with its incident; the other writes nothing.
    assert!(s
        .update_supervisor(
            "tree",
            v.version,
            "{\"g\":2}",
            "failed",
            Some(&incident),
            20
        )
        .await
        .unwrap());
    let stale = IncidentRecord {
        id: "inc_2".into(),
        ..incident.clone()
    };
    assert!(!s
        .update_supervisor("tree", v.version, "{\"g\":3}", "running", Some(&stale), 21)
        .await
        .unwrap());
    let now = s.get_supervisor("tree").await.unwrap().unwrap();
    assert_eq!(
        (now.state.as_str(), now.status.as_str()),
        ("{\"g\":2}", "failed")
    );
    let open = s.list_incidents(Some("open")).await.unwrap();
    assert_eq!(open.len(), 1, "the refused write opened nothing: {open:?}");
    // A replayed incident is opened once; resolving is once.
    s.open_incident(&incident).await.unwrap();
    assert_eq!(s.list_incidents(None).await.unwrap().len(), 1);
    let done = s
        .resolve_incident("inc_1", "fixed", 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.resolution.as_deref()),
        ("resolved", Some("fixed"))
    );
    assert!(s
        .resolve_incident("inc_1", "again", 31)
        .await
        .unwrap()
        .is_none());
    // Replacing the spec is a new version.
    let replaced = s
        .put_supervisor("tree", "{\"new\":1}", "{}", "running", 40)
        .await
        .unwrap();
    assert!(replaced.version > now.version);
    assert_eq!(s.list_supervisors().await.unwrap().len(), 1);
}

async fn leases_give_a_run_to_one_node(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    s.create_run(&new_run(&id), 1).await.unwrap();
    let (n1, n2) = (NodeId("n1".into()), NodeId("n2".into()));
    let got = s.claim_runs(&n1, 1000, 500, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].state, RunState::Running);
    assert!(
        s.claim_runs(&n2, 1100, 500, 10).await.unwrap().is_empty(),
        "a live lease is exclusive"
    );
    let held = s
        .renew_leases(&n1, std::slice::from_ref(&id), 1400, 500)
        .await
        .unwrap();
    assert_eq!(held, vec![(id.clone(), None)]);
    assert!(
        s.claim_runs(&n2, 1600, 500, 10).await.unwrap().is_empty(),
        "renewed until 1900"
    );
    let taken = s.claim_runs(&n2, 2000, 500, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "an expired lease is taken over");
    assert_eq!(
        taken[0].lease_epoch,
        got[0].lease_epoch + 1,
        "each claim takes the next epoch"
    );
    assert!(
        s.renew_leases(&n1, std::slice::from_ref(&id), 2001, 500)
            .await
            .unwrap()
            .is_empty(),
        "the old owner learns it lost the run"
    );
    assert!(
        !s.update_run(
            &got[0].claim(&n1),
            &RunUpdate::state(RunState::Succeeded),
            2002
        )
        .await
        .unwrap(),
        "a stale owner cannot change the run"
    );
    let done = RunUpdate {
        result: Some("ok".into()),
        ..RunUpdate::state(RunState::Succeeded)
    };
    assert!(s
        .update_run(&taken[0].claim(&n2), &done, 2003)
        .await
        .unwrap());
    let r = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.result.as_deref(), r.lease_owner.as_deref()),
        (RunState::Succeeded, Some("ok"), None)
    );
    assert!(
        s.claim_runs(&n1, 9999, 500, 10).await.unwrap().is_empty(),
        "ended runs are never claimed"
    );
}

async fn a_replaced_claim_writes_nothing(s: &dyn Store) {
    with_agent(s).await;
    let (id, other) = (new_id(), new_id());
    s.create_run(&new_run(&id), 1).await.unwrap();
    let n = NodeId("n".into());
    let first = s.claim_runs(&n, 10, 100, 10).await.unwrap()[0].claim(&n);
    s.append_journal(
        &[entry(&id, 0, PHASE_INTENT)],
        &[],
        std::slice::from_ref(&first),
    )
    .await
    .unwrap();
    // The node stalls past its lease and claims the run again: the same node, a new epoch.
    let second = s.claim_runs(&n, 500, 100, 10).await.unwrap()[0].claim(&n);
    assert_eq!(second.epoch, first.epoch + 1);
    let stale = s
        .append_journal(
            &[entry(&id, 0, PHASE_OUTCOME)],
            &[(501, "{\"event\":\"stale\"}".into())],
            std::slice::from_ref(&first),
        )
        .await;
    assert!(matches!(stale, Err(Error::Fenced(_))), "{stale:?}");
    assert!(
        !s.update_run(&first, &RunUpdate::state(RunState::Succeeded), 502)
            .await
            .unwrap(),
        "a replaced claim cannot change the run's state"
    );
    // A batch that holds one stale claim commits nothing, not even the other run's entries.
    s.create_run(&new_run(&other), 503).await.unwrap();
    let theirs = s.claim_runs(&n, 504, 100, 10).await.unwrap()[0].claim(&n);
    let mixed = s
        .append_journal(
            &[entry(&other, 0, PHASE_INTENT), entry(&id, 1, PHASE_INTENT)],
            &[],
            &[theirs.clone(), first.clone()],
        )
        .await;
    assert!(matches!(mixed, Err(Error::Fenced(_))), "{mixed:?}");
    assert!(s.load_journal(&other, None, 10).await.unwrap().is_empty());
    assert_eq!(s.load_journal(&id, None, 10).await.unwrap().len(), 1);
    assert_eq!(s.audit_head().await.unwrap().0, 0, "no audit record either");
    // Under the current claim all of it goes in.
    s.append_journal(
        &[entry(&id, 0, PHASE_OUTCOME), entry(&other, 0, PHASE_INTENT)],
        &[],
        &[second.clone(), theirs],
    )
    .await
    .unwrap();
    // A claim another node takes fences this node off as well, and a released run too.
    let away = s
        .claim_runs(&NodeId("m".into()), 900, 100, 10)
        .await
        .unwrap();
    assert_eq!(away.len(), 2);
    let fenced = s
        .append_journal(&[entry(&id, 1, PHASE_INTENT)], &[], &[second])
        .await;
    assert!(matches!(fenced, Err(Error::Fenced(_))), "{fenced:?}");
    let m = NodeId("m".into());
    let held = away.iter().find(|r| r.id == id).unwrap().claim(&m);
    s.release_node(&m).await.unwrap();
    let released = s
        .append_journal(&[entry(&id, 1, PHASE_INTENT)], &[], &[held])
        .await;
    assert!(matches!(released, Err(Error::Fenced(_))), "{released:?}");
}

/// A node writes steps as fast as it can while another takes the run over: whatever the
/// taker reads from the journal just after its claim is all there ever is — nothing the first
/// node wrote commits after the claim that replaced it.
async fn a_takeover_sees_every_step_that_committed(s: Arc<dyn Store>) {
    with_agent(&*s).await;
    for round in 0..16 {
        let id = new_id();
        s.create_run(&new_run(&id), 1).await.unwrap();
        let (a, b) = (NodeId("a".into()), NodeId("b".into()));
        let claim = s.claim_runs(&a, 2, 1, 10).await.unwrap()[0].claim(&a);
        let writer = {
            let (s, id) = (s.clone(), id.clone());
            tokio::spawn(async move {
                let mut written = 0;
                for seq in 0..10_000 {
                    match s
                        .append_journal(
                            &[entry(&id, seq, PHASE_INTENT)],
                            &[],
                            std::slice::from_ref(&claim),
                        )
                        .await
                    {
                        Ok(()) => written += 1,
                        Err(Error::Fenced(_)) => return written,
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }
                written
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(2 + round * 2)).await;
        let taken = loop {
            if !s.claim_runs(&b, 1000, 60_000, 10).await.unwrap().is_empty() {
                break s.load_journal(&id, None, 100_000).await.unwrap().len();
            }
        };
        let written = writer.await.unwrap();
        let after = s.load_journal(&id, None, 100_000).await.unwrap().len();
        assert_eq!(
            (taken, after),
            (written, written),
            "round {round}: the taker saw {taken} steps at its claim; {after} committed in all"
        );
    }
}

async fn workspaces_are_kept_by_content(s: &dyn Store) {
    with_agent(s).await;
    let (run, other) = (new_id(), new_id());
    s.create_run(&new_run(&run), 1).await.unwrap();
    s.create_run(&new_run(&other), 1).await.unwrap();
    let blob = |h: &str, d: &str| Blob {
        hash: h.into(),
        data: d.into(),
    };
    let state = |seq, hash: &str| WorkspaceState {
        seq,
        hash: hash.into(),
        manifest: format!("[{seq}]"),
    };
    assert_eq!(s.workspace_before(&run, 10).await.unwrap(), None);
    let hashes = vec!["h1".to_string(), "h2".to_string()];
    assert_eq!(s.missing_blobs(&hashes).await.unwrap(), hashes);
    s.save_workspace(
        &run,
        &state(3, "m3"),
        &hashes,
        &[blob("h1", "AAAA"), blob("h2", "BBBB")],
        100,
    )
    .await
    .unwrap();
    // Another run with the same content sends none of it.
    assert!(s.missing_blobs(&hashes).await.unwrap().is_empty());
    s.save_workspace(&other, &state(1, "o1"), &hashes[..1], &[], 101)
        .await
        .unwrap();
    s.save_workspace(&run, &state(7, "m7"), &hashes[1..], &[], 102)
        .await
        .unwrap();
    assert_eq!(
        s.workspace_before(&run, 7).await.unwrap(),
        Some(state(3, "m3")),
        "before step 7"
    );
    assert_eq!(
        s.workspace_before(&run, 8).await.unwrap(),
        Some(state(7, "m7"))
    );
    let mut got = s.load_blobs(&hashes).await.unwrap();
    got.sort_by(|a, b| a.hash.cmp(&b.hash));
    assert_eq!(got, vec![blob("h1", "AAAA"), blob("h2", "BBBB")]);
    // A save that relies on content the store no longer holds saves nothing.
    let gone = s
        .save_workspace(&run, &state(9, "m9"), &["h9".to_string()], &[], 103)
        .await;
    assert!(matches!(gone, Err(Error::Conflict(_))), "{gone:?}");
    assert_eq!(
        s.workspace_before(&run, 10).await.unwrap(),
        Some(state(7, "m7"))
    );
    // Ended runs' workspaces go; content another run still uses stays.
    let n = NodeId("n".into());
    for r in s.claim_runs(&n, 200, 60_000, 10).await.unwrap() {
        if r.id == run {
            assert!(s
                .update_run(&r.claim(&n), &RunUpdate::state(RunState::Succeeded), 300)
                .await
                .unwrap());
        }
    }
    assert_eq!(
        s.sweep_workspaces(200, 10_000).await.unwrap(),
        (0, 0),
        "ended too recently"
    );
    assert_eq!(s.sweep_workspaces(400, 10_000).await.unwrap(), (2, 1));
    assert_eq!(s.workspace_before(&run, 10).await.unwrap(), None);
    assert_eq!(
        s.load_blobs(&hashes).await.unwrap(),
        vec![blob("h1", "AAAA")]
    );
    assert_eq!(
        s.workspace_before(&other, 10).await.unwrap(),
        Some(state(1, "o1"))
    );
}

async fn release_node_frees_its_runs(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    s.create_run(&new_run(&id), 1).await.unwrap();
    let n1 = NodeId("n1".into());
    s.claim_runs(&n1, 10, 60_000, 10).await.unwrap();
    assert_eq!(s.release_node(&n1).await.unwrap(), 1);
    assert_eq!(
        s.claim_runs(&NodeId("n2".into()), 11, 60_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn cancel_stops_unleased_runs_at_once(s: &dyn Store) {
    with_agent(s).await;
    let (queued, leased) = (new_id(), new_id());
    s.create_run(&new_run(&queued), 1).await.unwrap();
    let r = s
        .request_cancel(&queued, "not needed", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.state, r.cancel_reason.as_deref()),
        (RunState::Cancelled, Some("not needed"))
    );
    s.create_run(&new_run(&leased), 3).await.unwrap();
    let n = NodeId("n".into());
    s.claim_runs(&n, 4, 60_000, 10).await.unwrap();
    let r = s.request_cancel(&leased, "stop", 5).await.unwrap().unwrap();
    assert_eq!(
        r.state,
        RunState::Running,
        "the owning node stops a leased run"
    );
    let held = s
        .renew_leases(&n, std::slice::from_ref(&leased), 6, 60_000)
        .await
        .unwrap();
    assert_eq!(
        held[0].1.as_deref(),
        Some("stop"),
        "the cancel reaches the owner with its heartbeat"
    );
    assert!(s.request_cancel(&new_id(), "x", 7).await.unwrap().is_none());
}

async fn human_waits_are_resolved(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    s.create_run(&new_run(&id), 1).await.unwrap();
    let n = NodeId("n".into());
    let claim = s.claim_runs(&n, 2, 60_000, 10).await.unwrap()[0].claim(&n);
    s.append_journal(
        &[entry(&id, 0, PHASE_INTENT)],
        &[],
        std::slice::from_ref(&claim),
    )
    .await
    .unwrap();
    let wait = RunUpdate {
        wait_kind: Some(WAIT_HUMAN.into()),
        error_code: Some("in_doubt".into()),
        ..RunUpdate::state(RunState::Waiting)
    };
    assert!(s.update_run(&claim, &wait, 3).await.unwrap());
    assert!(
        s.claim_runs(&n, 4, 60_000, 10).await.unwrap().is_empty(),
        "nobody drives a run waiting for a human"
    );
    let r = s.resolve_waiting(&id, true, 5).await.unwrap().unwrap();
    assert_eq!((r.state, r.retry_seq), (RunState::Queued, Some(0)));
    assert!(
        matches!(
            s.resolve_waiting(&id, true, 6).await,
            Err(Error::Conflict(_))
        ),
        "only a waiting run can be resolved"
    );
    assert!(s
        .resolve_waiting(&new_id(), false, 7)
        .await
        .unwrap()
        .is_none());
}

async fn journal_appends_are_atomic_and_unique(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    s.create_run(&new_run(&id), 1).await.unwrap();
    s.append_journal(
        &[
            entry(&id, 0, PHASE_INTENT),
            entry(&id, 0, PHASE_OUTCOME),
            entry(&id, 1, PHASE_INTENT),
        ],
        &[],
        &[],
    )
    .await
    .unwrap();
    // A batch holding one duplicate is refused whole: nothing half-written.
    let dup = s
        .append_journal(
            &[entry(&id, 2, PHASE_INTENT), entry(&id, 1, PHASE_INTENT)],
            &[],
            &[],
        )
        .await;
    assert!(matches!(dup, Err(Error::Conflict(_))), "{dup:?}");
    let all = s.load_journal(&id, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| (e.seq, e.phase)).collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (1, 0)]
    );
    let later = s.load_journal(&id, Some(0), 100).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(
        all[0],
        entry(&id, 0, PHASE_INTENT),
        "entries round-trip unchanged"
    );
}

async fn big_journal_batches_commit(s: &dyn Store) {
    with_agent(s).await;
    let id = new_id();
    s.create_run(&new_run(&id), 1).await.unwrap();
    let batch: Vec<_> = (0..1200).map(|i| entry(&id, i, PHASE_INTENT)).collect();
    s.append_journal(&batch, &[], &[]).await.unwrap();
    assert_eq!(s.load_journal(&id, None, 5000).await.unwrap().len(), 1200);
}

async fn scratchpad_is_run_scoped(s: &dyn Store) {
    let (a, b) = (new_id(), new_id());
    s.scratch_put(&a, "k", "1", 1).await.unwrap();
    s.scratch_put(&a, "k", "2", 2).await.unwrap();
    assert_eq!(s.scratch_get(&a, "k").await.unwrap().as_deref(), Some("2"));
    assert_eq!(s.scratch_get(&b, "k").await.unwrap(), None);
}

async fn runs_filter(s: &dyn Store) {
    with_agent(s).await;
    s.put_agents(&[agent("b", "{}")], 1).await.unwrap();
    let parent = new_id();
    s.create_run(&new_run(&parent), 1).await.unwrap();
    let child = NewRun {
        parent_id: Some(parent.clone()),
        agent: name("b"),
        ..new_run(&new_id())
    };
    s.create_run(&child, 2).await.unwrap();
    let by_parent = s
        .list_runs(&RunFilter {
            parent: Some(parent.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_parent.len(), 1);
    assert_eq!(by_parent[0].parent_id.as_ref(), Some(&parent));
    let by_agent = s
        .list_runs(&RunFilter {
            agent: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.len(), 1);
    let queued = s
        .list_runs(&RunFilter {
            state: Some(RunState::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].created_at, 2, "newest first");
}

async fn concurrent_claims_never_share_a_run(s: Arc<dyn Store>) {
    with_agent(&*s).await;
    for _ in 0..200 {
        s.create_run(&new_run(&new_id()), 1).await.unwrap();
    }
    let mut tasks = Vec::new();
    for n in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let node = NodeId(format!("n{n}"));
            let mut mine = Vec::new();
            loop {
                let got = s.claim_runs(&node, 10, 60_000, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every run claimed");
    assert_eq!(unique.len(), 200, "no run claimed twice");
}

/// An agent's pool of task runs stays within its size however many nodes fill it at once.
async fn an_agent_pool_holds_its_size_across_racing_nodes(s: Arc<dyn Store>) {
    use steward_store::{NewTask, TaskBatch};
    with_agent(&*s).await;
    let enqueues = (0..40)
        .map(|i| {
            (
                NewTask {
                    id: format!("p{i}"),
                    queue: "pool".into(),
                    tenant: "t".into(),
                    priority: 0,
                    payload: "{}".into(),
                    dedup_key: None,
                    run_at: 0,
                    deadline: None,
                },
                0,
            )
        })
        .collect();
    s.task_batch(&TaskBatch {
        enqueues,
        ..TaskBatch::default()
    })
    .await
    .unwrap();
    let agent = name("a");
    for round in 0..5 {
        let mut racers = Vec::new();
        for _ in 0..6 {
            let (s, agent) = (s.clone(), agent.clone());
            racers.push(tokio::spawn(async move {
                s.lease_tasks_to_runs("pool", &agent, 1, 3, 10 + round)
                    .await
                    .unwrap()
                    .len()
            }));
        }
        let mut leased = 0;
        for r in racers {
            leased += r.await.unwrap();
        }
        assert_eq!(
            leased, 3,
            "round {round}: the pool filled to its size, no more"
        );
        assert_eq!(s.leased_to_agent("pool", &agent).await.unwrap(), 3);
        // The pool's runs end; their tasks are finished, making room again.
        for t in s
            .list_tasks(&steward_store::TaskFilter {
                queue: Some("pool".into()),
                state: Some("leased".into()),
                limit: 100,
            })
            .await
            .unwrap()
        {
            let run = RunId::parse(t.run_id.as_deref().unwrap()).unwrap();
            let end = steward_store::TaskEnd::Done { result: "1".into() };
            assert!(s
                .finish_run_task(&run, &end, 20 + round)
                .await
                .unwrap()
                .is_some());
        }
    }
}

async fn keys_and_calls_are_kept(s: &dyn Store) {
    let k = s
        .create_key("key_1", "hash-1", &name("ext"), None, 5)
        .await
        .unwrap();
    assert_eq!((k.agent.as_str(), k.revoked_at), ("ext", None));
    assert!(
        matches!(
            s.create_key("key_2", "hash-1", &name("ext"), None, 6).await,
            Err(Error::Conflict(_))
        ),
        "hashes are unique"
    );
    assert_eq!(s.find_key("hash-1").await.unwrap().unwrap().id, "key_1");
    assert!(s.find_key("hash-2").await.unwrap().is_none());
    let revoked = s.revoke_key("key_1", "leaked", 7).await.unwrap().unwrap();
    assert_eq!(
        (revoked.revoked_at, revoked.revoke_reason.as_deref()),
        (Some(7), Some("leaked"))
    );
    assert!(matches!(
        s.revoke_key("key_1", "again", 8).await,
        Err(Error::Conflict(_))
    ));
    assert!(s.revoke_key("key_9", "none", 8).await.unwrap().is_none());
    assert_eq!(
        s.find_key("hash-1").await.unwrap().unwrap().revoked_at,
        Some(7)
    );
    assert_eq!(s.list_keys(Some("ext")).await.unwrap().len(), 1);

    // Identities: suspended and resumed with reasons; revoked for good.
    assert!(s.get_identity("ext").await.unwrap().is_none());
    let i = s
        .set_identity("ext", "suspended", Some("team:a"), "audit", 9)
        .await
        .unwrap();
    assert_eq!(
        (i.status.as_str(), i.owner.as_deref()),
        ("suspended", Some("team:a"))
    );
    let i = s
        .set_identity("ext", "active", None, "cleared", 10)
        .await
        .unwrap();
    assert_eq!(
        (i.status.as_str(), i.owner.as_deref()),
        ("active", Some("team:a"))
    );
    s.set_identity("ext", "revoked", None, "retired", 11)
        .await
        .unwrap();
    assert!(matches!(
        s.set_identity("ext", "active", None, "oops", 12).await,
        Err(Error::Conflict(_))
    ));
    let call = NewCall {
        id: "call_1".into(),
        agent: "ext".into(),
        run_id: None,
        model: "smart".into(),
        stream: true,
    };
    assert_eq!(s.begin_call(&call, &[], 0, 7).await.unwrap(), None);
    let c = &s.list_calls(Some("ext"), 10).await.unwrap()[0];
    assert_eq!(
        (c.status.as_str(), c.stream),
        ("started", 1),
        "recorded before the upstream is asked"
    );
    let done = CallOutcome {
        deployment: Some("mock/m".into()),
        status: "ok".into(),
        error: None,
        tokens_in: 3,
        tokens_out: 4,
        duration_us: 9,
    };
    end(s, "call_1", done, 0, 8).await;
    let c = &s.list_calls(None, 10).await.unwrap()[0];
    assert_eq!(
        (
            c.status.as_str(),
            c.tokens_in,
            c.tokens_out,
            c.deployment.as_deref()
        ),
        ("ok", 3, 4, Some("mock/m"))
    );
    assert!(s.list_calls(Some("other"), 10).await.unwrap().is_empty());
}

async fn end(s: &dyn Store, id: &str, outcome: CallOutcome, spent: i64, at: i64) {
    let e = CallEnd {
        id: id.into(),
        outcome,
        spent,
        rate_scopes: vec![],
        rate_window: 0,
        at,
        audit: None,
    };
    s.end_calls(&[e]).await.unwrap();
}

async fn calls_begin_and_end_with_their_holds(s: &dyn Store) {
    s.put_budget("org", None, 100, "total", 1).await.unwrap();
    let org = vec!["org".to_string()];
    let call = |id: &str| NewCall {
        id: id.into(),
        agent: "a".into(),
        run_id: None,
        model: "m".into(),
        stream: false,
    };
    assert_eq!(s.begin_call(&call("c1"), &org, 60, 2).await.unwrap(), None);
    assert_eq!(
        s.begin_call(&call("c2"), &org, 60, 3)
            .await
            .unwrap()
            .as_deref(),
        Some("org"),
        "60 + 60 > 100"
    );
    // Refused at the root after its leaf took the hold: the leaf is left as it was.
    s.put_budget("team", Some("org"), 1_000, "total", 1)
        .await
        .unwrap();
    let team_org = vec!["team".to_string(), "org".to_string()];
    assert_eq!(
        s.begin_call(&call("c4"), &team_org, 60, 3)
            .await
            .unwrap()
            .as_deref(),
        Some("org")
    );
    let team = s.get_budget("team").await.unwrap().unwrap();
    assert_eq!(team.reserved_nanos, 0, "the leaf's hold is rolled back");
    let calls = s.list_calls(None, 10).await.unwrap();
    assert_eq!(calls.len(), 1, "a refused call writes nothing");
    let done = CallOutcome {
        deployment: Some("p/m".into()),
        status: "ok".into(),
        error: None,
        tokens_in: 1,
        tokens_out: 1,
        duration_us: 1,
    };
    end(s, "c1", done, 25, 4).await;
    let b = s.get_budget("org").await.unwrap().unwrap();
    assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 25));
    assert_eq!(s.list_calls(None, 10).await.unwrap()[0].status, "ok");
    assert_eq!(
        s.begin_call(&call("c3"), &[], 0, 5).await.unwrap(),
        None,
        "no accounts: no hold"
    );
}

/// Calls begun together share a commit, each hold taken or refused on its own: a refused one
/// writes nothing and undoes none of the others, even when its hold passed a leaf and failed
/// at the root. Through the group writer, a duplicate id fails alone.
async fn calls_begun_together_are_held_each_on_its_own(store: Arc<dyn Store>) {
    let s = &*store;
    s.put_budget("root", None, 100, "total", 1).await.unwrap();
    s.put_budget("team", Some("root"), 1_000, "total", 1)
        .await
        .unwrap();
    let chain = vec!["team".to_string(), "root".to_string()];
    let begin = |id: &str, amount| CallBegin {
        call: NewCall {
            id: id.into(),
            agent: "a".into(),
            run_id: None,
            model: "m".into(),
            stream: false,
        },
        accounts: chain.clone(),
        amount,
    };
    let free = CallBegin {
        accounts: vec![],
        amount: 0,
        ..begin("b4", 0)
    };
    let refused = s
        .begin_calls(
            &[begin("b1", 40), begin("b2", 70), begin("b3", 50), free],
            2,
        )
        .await
        .unwrap();
    assert_eq!(refused, [None, Some("root".to_string()), None, None]);
    let mut ids: Vec<String> = s
        .list_calls(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["b1", "b3", "b4"]);
    for account in ["team", "root"] {
        let b = s.get_budget(account).await.unwrap().unwrap();
        assert_eq!(b.reserved_nanos, 90, "{account}: b2's hold undone at both");
    }

    let writer = CallWriter::start(store.clone());
    let (a, b, c) = tokio::join!(
        writer.begin(begin("b5", 5), 3),
        writer.begin(begin("b1", 5), 3),
        writer.begin(begin("b6", 50), 3),
    );
    assert_eq!(a.unwrap(), None);
    assert!(b.is_err(), "b1 was begun already");
    assert_eq!(c.unwrap().as_deref(), Some("root"), "95 + 50 > 100");
    let b = s.get_budget("root").await.unwrap().unwrap();
    assert_eq!(b.reserved_nanos, 95);

    // Ends and starts in one commit: the ends first, so what they free can be taken; a refused
    // hold on one account or on two undoes only itself.
    let ended = |id: &str, spent| CallEnd {
        id: id.into(),
        outcome: CallOutcome {
            deployment: Some("p/m".into()),
            status: "ok".into(),
            error: None,
            tokens_in: 1,
            tokens_out: 1,
            duration_us: 1,
        },
        spent,
        rate_scopes: vec![],
        rate_window: 0,
        at: 4,
        audit: None,
    };
    let on_root = |id: &str, amount| CallBegin {
        accounts: vec!["root".to_string()],
        ..begin(id, amount)
    };
    let refused = s
        .write_calls(
            &[ended("b3", 10)],
            &[begin("b7", 45), on_root("b8", 1), begin("b9", 1)],
            4,
        )
        .await
        .unwrap();
    assert_eq!(
        refused,
        [None, Some("root".to_string()), Some("root".to_string())],
        "b3's 50 freed and 10 spent: 45 + 45 + 10 fills the cap"
    );
    let (root, team) = (
        s.get_budget("root").await.unwrap().unwrap(),
        s.get_budget("team").await.unwrap().unwrap(),
    );
    assert_eq!((root.reserved_nanos, root.spent_nanos), (90, 10));
    assert_eq!(
        (team.reserved_nanos, team.spent_nanos),
        (90, 10),
        "b9 undone"
    );
    let calls = s.list_calls(None, 20).await.unwrap();
    let status = |id: &str| calls.iter().find(|c| c.id == id).map(|c| c.status.clone());
    assert_eq!(status("b3").as_deref(), Some("ok"));
    assert_eq!(status("b7").as_deref(), Some("started"));
    assert_eq!((status("b8"), status("b9")), (None, None));

    // Through the writer, a start that fails (an id begun already) does not lose the end that
    // shared its batch.
    writer.settle(ended("b1", 5)).await;
    assert!(writer.begin(begin("b7", 1), 5).await.is_err());
    writer.flush().await;
    let calls = s.list_calls(None, 20).await.unwrap();
    assert!(
        calls.iter().any(|c| c.id == "b1" && c.status == "ok"),
        "{calls:?}"
    );
    let root = s.get_budget("root").await.unwrap().unwrap();
    assert_eq!((root.reserved_nanos, root.spent_nanos), (50, 15));

    // Many ends in one commit: each account charged for each hold once; an end whose hold was
    // settled already charges nothing again.
    s.end_calls(&[ended("b5", 2), ended("b3", 10), ended("b7", 20)])
        .await
        .unwrap();
    for account in ["team", "root"] {
        let b = s.get_budget(account).await.unwrap().unwrap();
        assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 37), "{account}");
    }
    let calls = s.list_calls(None, 20).await.unwrap();
    assert!(
        ["b5", "b7"]
            .iter()
            .all(|id| calls.iter().any(|c| c.id == *id && c.status == "ok")),
        "{calls:?}"
    );
}

async fn step_holds_are_taken_once_and_released_when_stale(s: &dyn Store) {
    s.put_budget("agent:a", None, 1_000, "total", 1)
        .await
        .unwrap();
    let accounts = vec!["agent:a".to_string()];
    with_agent(s).await;
    let run = new_id();
    s.create_run(&new_run(&run), 1).await.unwrap();
    let hold = |id: &'static str, amount| NewHold {
        id,
        kind: HOLD_STEP,
        run_id: Some(run.as_str()),
        accounts: &accounts[..],
        amount,
    };
    assert_eq!(
        s.hold(&hold("r:0", 400), 2).await.unwrap(),
        HoldResult::Held
    );
    assert_eq!(
        s.hold(&hold("r:0", 400), 3).await.unwrap(),
        HoldResult::AlreadyHeld,
        "a replayed step keeps its first hold"
    );
    assert_eq!(
        s.hold(&hold("r:1", 700), 3).await.unwrap(),
        HoldResult::Exceeded("agent:a".into())
    );
    s.settle("r:0", 150, 4).await.unwrap();
    s.settle("r:0", 150, 5).await.unwrap();
    let b = s.get_budget("agent:a").await.unwrap().unwrap();
    assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 150), "settled once");

    // A hold whose run ended, and a gateway call cut off by a crash, are released; a live
    // run's hold and a recent call's are not.
    assert_eq!(
        s.hold(&hold("r:2", 100), 6).await.unwrap(),
        HoldResult::Held
    );
    let call = NewCall {
        id: "call_old".into(),
        agent: "a".into(),
        run_id: None,
        model: "m".into(),
        stream: false,
    };
    assert_eq!(s.begin_call(&call, &accounts, 200, 7).await.unwrap(), None);
    assert_eq!(s.release_stale_holds(5, 8).await.unwrap(), 0);
    assert_eq!(
        s.release_stale_holds(10, 8).await.unwrap(),
        1,
        "the old call"
    );
    assert_eq!(s.list_calls(None, 1).await.unwrap()[0].status, "error");
    let b = s.get_budget("agent:a").await.unwrap().unwrap();
    assert_eq!(
        (b.reserved_nanos, b.spent_nanos),
        (100, 350),
        "booked in full: what the upstream charged is unknown"
    );
    s.request_cancel(&run, "done", 9).await.unwrap();
    assert_eq!(
        s.release_stale_holds(0, 10).await.unwrap(),
        1,
        "the ended run's"
    );
    let b = s.get_budget("agent:a").await.unwrap().unwrap();
    assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 450));
}

async fn budget_periods_reset(s: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let nov_30 = 1_795_996_800_000; // 2026-11-30T00:00:00Z
    for (account, period) in [("d", "day"), ("m", "month"), ("t", "total")] {
        s.put_budget(account, None, 100, period, nov_30)
            .await
            .unwrap();
    }
    let spend = |id: &'static str, account: &'static str, at: i64| async move {
        let accounts = vec![account.to_string()];
        let h = NewHold {
            id,
            kind: HOLD_STEP,
            run_id: None,
            accounts: &accounts,
            amount: 80,
        };
        let r = s.hold(&h, at).await.unwrap();
        if r == HoldResult::Held {
            s.settle(id, 80, at).await.unwrap();
        }
        r
    };
    for account in ["d", "m", "t"] {
        assert_eq!(spend("a", account, nov_30 + 1).await, HoldResult::Held);
    }
    // The next day: only the daily budget has room again.
    let dec_1 = nov_30 + DAY;
    assert_eq!(
        spend("b", "d", nov_30 + DAY / 2).await,
        HoldResult::Exceeded("d".into())
    );
    assert_eq!(spend("c", "d", dec_1 + 1).await, HoldResult::Held);
    // December: the monthly one too; the total one never.
    assert_eq!(
        spend("e", "m", dec_1 - 1).await,
        HoldResult::Exceeded("m".into())
    );
    assert_eq!(spend("f", "m", dec_1 + 1).await, HoldResult::Held);
    assert_eq!(
        spend("g", "t", dec_1 + 40 * DAY).await,
        HoldResult::Exceeded("t".into())
    );
}

async fn rate_windows_and_cache_entries_are_counted_then_purged(s: &dyn Store) {
    let scopes = vec![("key:k".to_string(), 2, 100)];
    assert_eq!(s.take_request(&scopes, 60_000).await.unwrap(), None);
    assert_eq!(s.take_request(&scopes, 60_000).await.unwrap(), None);
    assert_eq!(
        s.take_request(&scopes, 60_000).await.unwrap().as_deref(),
        Some("key:k"),
        "two requests per minute"
    );
    assert_eq!(
        s.take_request(&scopes, 120_000).await.unwrap(),
        None,
        "a new minute"
    );
    assert_eq!(
        s.purge_windows(120_000).await.unwrap(),
        1,
        "the older window"
    );
    assert_eq!(
        s.take_request(&scopes, 120_000).await.unwrap(),
        None,
        "the current window is kept"
    );

    s.cache_put("a", "{}", "p/m", 10).await.unwrap();
    s.cache_put("b", "{}", "p/m", 20).await.unwrap();
    assert!(s.cache_get("a", 10).await.unwrap().is_none(), "expired");
    assert_eq!(s.purge_cache(10).await.unwrap(), 1);
    assert_eq!(
        s.cache_get("b", 11).await.unwrap(),
        Some(("{}".to_string(), "p/m".to_string()))
    );
}

async fn open_circuits_are_shared(s: &dyn Store) {
    let (n1, n2) = (NodeId("n1".into()), NodeId("n2".into()));
    s.share_breaker("p/m", 500, &n1, 1).await.unwrap();
    s.share_breaker("p/m", 300, &n2, 2).await.unwrap();
    let open = s.open_breakers(100).await.unwrap();
    assert_eq!(
        (open.len(), open[0].open_until, open[0].opened_by.as_str()),
        (1, 500, "n1"),
        "the later reopening wins"
    );
    s.share_breaker("p/m", 900, &n2, 3).await.unwrap();
    assert_eq!(s.open_breakers(600).await.unwrap()[0].opened_by, "n2");
    assert!(
        s.open_breakers(900).await.unwrap().is_empty(),
        "closed by now"
    );
}

fn link(id: &str, parent: Option<&str>, at: i64) -> DelegationRecord {
    DelegationRecord {
        id: id.into(),
        parent_id: parent.map(str::to_string),
        revocation_id: format!("rid-{id}"),
        issuer: "a".into(),
        holder: "b".into(),
        key_id: None,
        scope: "{}".into(),
        expires_at: 1_000,
        created_at: at,
        revoked_at: None,
        revoke_reason: None,
    }
}

async fn delegations_revoke_everything_below(s: &dyn Store) {
    s.create_delegation(&link("d1", None, 1)).await.unwrap();
    s.create_delegation(&link("d2", Some("d1"), 2))
        .await
        .unwrap();
    s.create_delegation(&link("d3", Some("d2"), 3))
        .await
        .unwrap();
    s.create_delegation(&link("other", None, 4)).await.unwrap();
    assert!(
        matches!(
            s.create_delegation(&link("d1", None, 5)).await,
            Err(steward_store::Error::Conflict(_))
        ),
        "an id is minted once"
    );
    let found = s.delegation_by_revocation("rid-d2").await.unwrap().unwrap();
    assert_eq!(found, link("d2", Some("d1"), 2));
    assert_eq!(s.list_delegations(2).await.unwrap()[0].id, "other");
    assert_eq!(
        s.revoke_delegation("d2", "leaked", 9).await.unwrap(),
        Some(vec!["d2".to_string(), "d3".to_string()])
    );
    assert_eq!(
        s.revoke_delegation("d1", "done", 10).await.unwrap(),
        Some(vec!["d1".to_string()]),
        "links revoked before keep their first reason"
    );
    let d3 = s.get_delegation("d3").await.unwrap().unwrap();
    assert_eq!(
        (d3.revoked_at, d3.revoke_reason.as_deref()),
        (Some(9), Some("leaked"))
    );
    assert!(s
        .get_delegation("other")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    assert_eq!(s.revoke_delegation("nope", "x", 11).await.unwrap(), None);
    // The first node to ask creates a shared key; the others get the same one.
    assert_eq!(
        s.ensure_signing_key("k", "first", 1).await.unwrap(),
        "first"
    );
    assert_eq!(
        s.ensure_signing_key("k", "second", 2).await.unwrap(),
        "first"
    );
}

/// Tasks of several tenants enqueued in one batch, then another, are numbered per tenant in
/// order, and leased each tenant's n-th before anyone's (n+1)-th.
async fn tenants_take_turns_across_batches(s: &dyn Store) {
    use steward_store::{LeaseRequest, NewTask, TaskBatch};
    let task = |id: &str, tenant: &str| {
        (
            NewTask {
                id: id.into(),
                queue: "turns".into(),
                tenant: tenant.into(),
                priority: 0,
                payload: "{}".into(),
                dedup_key: None,
                run_at: 0,
                deadline: None,
            },
            1,
        )
    };
    let first = TaskBatch {
        enqueues: vec![
            task("a1", "a"),
            task("a2", "a"),
            task("b1", "b"),
            task("a3", "a"),
        ],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&first).await.unwrap();
    let seqs: Vec<i64> = r.enqueued.iter().map(|(t, _)| t.tenant_seq).collect();
    assert_eq!(seqs, [1, 2, 1, 3]);
    let second = TaskBatch {
        enqueues: vec![task("b2", "b"), task("c1", "c"), task("a4", "a")],
        leases: vec![LeaseRequest {
            queue: "turns".into(),
            worker: "w".into(),
            max: 10,
            now: 2,
        }],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&second).await.unwrap();
    let seqs: Vec<i64> = r.enqueued.iter().map(|(t, _)| t.tenant_seq).collect();
    assert_eq!(seqs, [2, 1, 4]);
    let order: Vec<&str> = r.leased[0].iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order.len(), 7);
    let place = |id: &str| order.iter().position(|o| *o == id).unwrap();
    for (before, after) in [
        ("a1", "a2"),
        ("b1", "a2"),
        ("c1", "a2"),
        ("a2", "a3"),
        ("b2", "a3"),
        ("a3", "a4"),
    ] {
        assert!(
            place(before) < place(after),
            "{before} before {after}: {order:?}"
        );
    }
}

/// Whatever else a batch holds, only the report matching the task's current lease counts: a
/// stale worker's report, before or after the holder's, neither wins nor hides it; a report or
/// heartbeat after the lease's time is refused even before the sweep has run.
async fn only_the_lease_holder_reports(s: &dyn Store) {
    use steward_store::{LeaseRequest, NewTask, TaskBatch, TaskEnd, TaskFinish};
    let lease_ms = steward_store::QueueConfig::named("holders").lease_ms;
    let enqueue = |id: &str| TaskBatch {
        enqueues: vec![(
            NewTask {
                id: id.into(),
                queue: "holders".into(),
                tenant: "t".into(),
                priority: 0,
                payload: "{}".into(),
                dedup_key: None,
                run_at: 0,
                deadline: None,
            },
            0,
        )],
        ..TaskBatch::default()
    };
    let lease = |worker: &str, now: i64| TaskBatch {
        leases: vec![LeaseRequest {
            queue: "holders".into(),
            worker: worker.into(),
            max: 10,
            now,
        }],
        ..TaskBatch::default()
    };
    let done = |id: &str, worker: &str, attempt: i64, now: i64| {
        (
            TaskFinish {
                id: id.into(),
                worker: worker.into(),
                attempt,
                end: TaskEnd::Done {
                    result: format!("\"{worker}\""),
                },
            },
            now,
        )
    };
    let failed = |id: &str, worker: &str, attempt: i64, now: i64| {
        (
            TaskFinish {
                id: id.into(),
                worker: worker.into(),
                attempt,
                end: TaskEnd::Failed {
                    error: "boom".into(),
                    retry_at: Some(now),
                },
            },
            now,
        )
    };
    // Each task: leased by "old", lost (swept), leased by "new" as attempt 2.
    let t0 = 1_000;
    let expired = t0 + lease_ms + 1;
    for id in ["k1", "k2", "k3", "k4", "k5"] {
        s.task_batch(&enqueue(id)).await.unwrap();
        assert_eq!(
            s.task_batch(&lease("old", t0)).await.unwrap().leased[0].len(),
            1
        );
        assert_eq!(s.sweep_tasks(expired).await.unwrap(), 1);
        let again = s.task_batch(&lease("new", expired)).await.unwrap();
        assert_eq!(again.leased[0][0].attempts, 2, "{id}");
    }
    let now = expired + 10;
    let batch = TaskBatch {
        finishes: vec![
            // The stale report first, then the holder's.
            done("k1", "old", 1, now),
            done("k1", "new", 2, now),
            // The holder's first, then the stale one.
            done("k2", "new", 2, now),
            done("k2", "old", 1, now),
            // The holder's twice: the second finds the lease gone.
            done("k3", "new", 2, now),
            done("k3", "new", 2, now),
            // A stale completion beside the holder's failure.
            done("k4", "old", 1, now),
            failed("k4", "new", 2, now),
            // A stale failure beside the holder's completion.
            failed("k5", "old", 1, now),
            done("k5", "new", 2, now),
        ],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&batch).await.unwrap();
    assert_eq!(
        r.finished,
        [false, true, true, false, true, false, false, true, false, true]
    );
    for id in ["k1", "k2", "k3", "k5"] {
        let t = s.get_task(id).await.unwrap().unwrap();
        assert_eq!(
            (t.state.as_str(), t.result.as_deref()),
            ("done", Some("\"new\"")),
            "{id}"
        );
    }
    let k4 = s.get_task("k4").await.unwrap().unwrap();
    assert_eq!(
        (k4.state.as_str(), k4.error.as_deref()),
        ("pending", Some("boom"))
    );

    // A lease whose time has run out, not yet swept: its heartbeat and reports are refused,
    // and the sweep then hands the task on.
    s.task_batch(&enqueue("late")).await.unwrap();
    let t1 = now + 1;
    let got = s.task_batch(&lease("slow", t1)).await.unwrap();
    let late = got.leased[0].iter().find(|t| t.id == "late").unwrap();
    let until = late.lease_until.unwrap();
    assert!(
        s.heartbeat_task("late", "slow", 1, until).await.unwrap(),
        "in time"
    );
    let until = s
        .get_task("late")
        .await
        .unwrap()
        .unwrap()
        .lease_until
        .unwrap();
    assert!(!s
        .heartbeat_task("late", "slow", 1, until + 1)
        .await
        .unwrap());
    let r = s
        .task_batch(&TaskBatch {
            finishes: vec![
                done("late", "slow", 1, until + 1),
                failed("late", "slow", 1, until + 1),
            ],
            ..TaskBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(r.finished, [false, false]);
    assert_eq!(s.get_task("late").await.unwrap().unwrap().state, "leased");
    assert!(s.sweep_tasks(until + 1).await.unwrap() >= 1);
    assert_eq!(s.get_task("late").await.unwrap().unwrap().state, "pending");
}

/// A stored response is read and deleted only in the scope it was made in.
async fn responses_are_kept_per_scope(s: &dyn Store) {
    let r = StoredResponse {
        id: "resp_1".into(),
        scope: "owner:a".into(),
        body: "{}".into(),
        input_items: "[]".into(),
        conversation: "[]".into(),
        created_at: 5,
    };
    s.put_response(&r).await.unwrap();
    assert!(s.put_response(&r).await.is_err(), "an id is taken once");
    assert_eq!(
        s.get_response("resp_1", "owner:a").await.unwrap(),
        Some(r.clone())
    );
    assert_eq!(s.get_response("resp_1", "owner:b").await.unwrap(), None);
    assert!(!s.delete_response("resp_1", "owner:b").await.unwrap());
    assert!(s.delete_response("resp_1", "owner:a").await.unwrap());
    assert_eq!(s.get_response("resp_1", "owner:a").await.unwrap(), None);
    // Past retention, swept; a newer one stays.
    for (id, at) in [("resp_old", 10), ("resp_new", 20)] {
        s.put_response(&StoredResponse {
            id: id.into(),
            created_at: at,
            ..r.clone()
        })
        .await
        .unwrap();
    }
    assert_eq!(s.sweep_responses(15).await.unwrap(), 1);
    assert!(s
        .get_response("resp_old", "owner:a")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .get_response("resp_new", "owner:a")
        .await
        .unwrap()
        .is_some());
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn the_merge_queue_checks_one_at_a_time_in_order_and_fences_lost_checks() {
                super::the_merge_queue_checks_one_at_a_time_in_order_and_fences_lost_checks(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn path_leases_are_all_or_none_and_cover_what_lies_below() {
                super::path_leases_are_all_or_none_and_cover_what_lies_below(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn a_supervisor_state_moves_on_once_per_version() {
                super::a_supervisor_state_moves_on_once_per_version(&*super::$backend().await.store)
                    .await
            }
            #[tokio::test]
            async fn policy_sets_are_versioned_and_a_repeat_is_not_a_version() {
                super::policy_sets_are_versioned_and_a_repeat_is_not_a_version(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn an_approval_is_asked_once_per_step_and_decided_once() {
                super::an_approval_is_asked_once_per_step_and_decided_once(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn a_schedule_fires_once_for_each_time_it_is_due() {
                super::a_schedule_fires_once_for_each_time_it_is_due(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn a_new_run_is_audited_in_its_own_commit() {
                super::a_new_run_is_audited_in_its_own_commit(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn responses_are_kept_per_scope() {
                super::responses_are_kept_per_scope(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn only_the_lease_holder_reports() {
                super::only_the_lease_holder_reports(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn tenants_take_turns_across_batches() {
                super::tenants_take_turns_across_batches(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn step_holds_are_taken_once_and_released_when_stale() {
                super::step_holds_are_taken_once_and_released_when_stale(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn rate_windows_and_cache_entries_are_counted_then_purged() {
                super::rate_windows_and_cache_entries_are_counted_then_purged(
                    &*super::$backend().await.store,
                )
                .await
            }
            #[tokio::test]
            async fn delegations_revoke_everything_below() {
                super::delegations_revoke_everything_below(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn open_circuits_are_shared() {
                super::open_circuits_are_shared(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn budget_periods_reset() {
                super::budget_periods_reset(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn agents_are_versioned() {
                super::agents_are_versioned(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn a_write_probe_commits_again_and_again() {
                super::a_write_probe_commits_again_and_again(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn runs_are_created_once() {
                super::runs_are_created_once(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn leases_give_a_run_to_one_node() {
                super::leases_give_a_run_to_one_node(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn a_replaced_claim_writes_nothing() {
                super::a_replaced_claim_writes_nothing(&*super::$backend().await.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_takeover_sees_every_step_that_committed() {
                super::a_takeover_sees_every_step_that_committed(
                    super::$backend().await.store.clone(),
                )
                .await
            }
            #[tokio::test]
            async fn workspaces_are_kept_by_content() {
                super::workspaces_are_kept_by_content(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn release_node_frees_its_runs() {
                super::release_node_frees_its_runs(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn cancel_stops_unleased_runs_at_once() {
                super::cancel_stops_unleased_runs_at_once(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn human_waits_are_resolved() {
                super::human_waits_are_resolved(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn journal_appends_are_atomic_and_unique() {
                super::journal_appends_are_atomic_and_unique(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn big_journal_batches_commit() {
                super::big_journal_batches_commit(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn scratchpad_is_run_scoped() {
                super::scratchpad_is_run_scoped(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn keys_and_calls_are_kept() {
                super::keys_and_calls_are_kept(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn calls_begin_and_end_with_their_holds() {
                super::calls_begin_and_end_with_their_holds(&*super::$backend().await.store).await
            }
            #[tokio::test]
            async fn calls_begun_together_are_held_each_on_its_own() {
                let fresh = super::$backend().await;
                super::calls_begun_together_are_held_each_on_its_own(fresh.store.clone()).await
            }
            #[tokio::test]
            async fn runs_filter() {
                super::runs_filter(&*super::$backend().await.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn an_agent_pool_holds_its_size_across_racing_nodes() {
                let f = super::$backend().await;
                super::an_agent_pool_holds_its_size_across_racing_nodes(f.store.clone()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_claims_never_share_a_run() {
                let f = super::$backend().await;
                super::concurrent_claims_never_share_a_run(f.store.clone()).await
            }
        }
    };
}

conformance!(sqlite);
conformance!(postgres);

#[tokio::test]
async fn postgres_tests_really_use_their_own_schema() {
    let a = postgres().await;
    let b = postgres().await;
    a.store
        .put_agents(&[agent("only-in-a", "{}")], 1)
        .await
        .unwrap();
    assert!(b.store.list_agents().await.unwrap().is_empty());
    assert_eq!(a.store.backend(), "postgres");
}

#[tokio::test]
async fn bad_urls_are_explained() {
    let e = open("mysql://x", &StoreConfig::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("postgres://"), "{e}");
    let e = open("postgres://u:secret@127.0.0.1:1/x", &StoreConfig::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        !e.contains("secret"),
        "passwords never appear in errors: {e}"
    );
}

#[tokio::test]
async fn postgres_announces_queued_and_ended_runs_to_other_nodes() {
    let a = postgres().await;
    let b = open(&a.url, &StoreConfig::default()).await.unwrap();
    let mut wakeups = b.wakeups().await.unwrap().expect("PostgreSQL listens");
    with_agent(&*a.store).await;
    let id = new_id();
    a.store.create_run(&new_run(&id), 1).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), wakeups.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(WAKE_RUN));
    let n = NodeId("n".into());
    let claim = a.store.claim_runs(&n, 2, 60_000, 1).await.unwrap()[0].claim(&n);
    a.store
        .update_run(&claim, &RunUpdate::state(RunState::Succeeded), 3)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), wakeups.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(WAKE_DONE));
}

#[tokio::test]
async fn sqlite_has_nobody_to_announce_to() {
    assert!(sqlite().await.store.wakeups().await.unwrap().is_none());
}
