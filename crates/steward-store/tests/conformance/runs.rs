//! Runs: created once, leased to one node, cancelled, resolved, listed.

use crate::support::*;

on_both_backends!(runs_are_created_once, a_new_run_is_audited_in_its_own_commit, leases_give_a_run_to_one_node, a_replaced_claim_writes_nothing, release_node_frees_its_runs, cancel_stops_unleased_runs_at_once, human_waits_are_resolved, runs_filter; threaded: concurrent_claims_never_share_a_run, an_agent_pool_holds_its_size_across_racing_nodes);

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
    with_agent(&*s).await;
    let enqueues = (0..40)
        .map(|i| (new_task(&format!("p{i}"), "pool", 0), 0))
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
