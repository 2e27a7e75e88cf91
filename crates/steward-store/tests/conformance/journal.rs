//! The journal (and a run's scratchpad): atomic, unique, fenced by the lease.

use crate::support::*;

on_both_backends!(journal_appends_are_atomic_and_unique, big_journal_batches_commit, scratchpad_is_run_scoped, a_steps_outcome_and_its_cost_commit_together; threaded: a_takeover_sees_every_step_that_committed);

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

async fn scratchpad_is_run_scoped(s: &dyn Store) {
    let (a, b) = (new_id(), new_id());
    s.scratch_put(&a, "k", "1", 1).await.unwrap();
    s.scratch_put(&a, "k", "2", 2).await.unwrap();
    assert_eq!(s.scratch_get(&a, "k").await.unwrap().as_deref(), Some("2"));
    assert_eq!(s.scratch_get(&b, "k").await.unwrap(), None);
}

/// The holds a batch settles are settled in its transaction: a batch refused settles nothing.
async fn a_steps_outcome_and_its_cost_commit_together(s: &dyn Store) {
    s.put_budget("agent:a", None, 1_000, "total", 1)
        .await
        .unwrap();
    with_agent(s).await;
    let run = new_id();
    s.create_run(&new_run(&run), 1).await.unwrap();
    let accounts = ["agent:a".to_string()];
    let hold = NewHold {
        id: "r:0",
        kind: HOLD_STEP,
        run_id: Some(run.as_str()),
        accounts: &accounts,
        amount: 400,
    };
    assert_eq!(s.hold(&hold, 2).await.unwrap(), HoldResult::Held);
    s.append_journal(&[entry(&run, 0, PHASE_INTENT)], &[], &[])
        .await
        .unwrap();
    let settle = [("r:0".to_string(), 150)];
    let refused = s
        .append_settling(&[entry(&run, 0, PHASE_INTENT)], &[], &[], &settle)
        .await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    let b = s.get_budget("agent:a").await.unwrap().unwrap();
    assert_eq!(
        (b.reserved_nanos, b.spent_nanos),
        (400, 0),
        "nothing settled"
    );
    s.append_settling(&[entry(&run, 0, PHASE_OUTCOME)], &[], &[], &settle)
        .await
        .unwrap();
    let b = s.get_budget("agent:a").await.unwrap().unwrap();
    assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 150));
}

/// Two nodes on one database, each with its journal writer, appending steps with their audit
/// records under their claims while other writes (probes, agents) go on beside them: every
/// step lands once, the audit log is one chain numbered without a gap or a repeat, and its
/// root is the one its rows hash to. On SQLite the writer runs on a connection of its own
/// beside the store's other writes; this is what keeps them from losing or forking anything.
async fn two_nodes_journal_writers_keep_one_audit_log(url: &str, a: Arc<dyn Store>) {
    let b = open(url, &StoreConfig::default()).await.unwrap();
    with_agent(&*a).await;
    const RUNS: usize = 3;
    const STEPS: i64 = 40;
    let mut tasks = Vec::new();
    for (node, store) in [("a", a.clone()), ("b", b.clone())] {
        let n = NodeId(node.into());
        for _ in 0..RUNS {
            store.create_run(&new_run(&new_id()), 1).await.unwrap();
        }
        let claims: Vec<Claim> = store
            .claim_runs(&n, 2, 600_000, RUNS as i64)
            .await
            .unwrap()
            .iter()
            .map(|r| r.claim(&n))
            .collect();
        assert_eq!(claims.len(), RUNS);
        let writer = JournalWriter::start(store.clone(), 16);
        for claim in claims {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0..STEPS {
                    let body = format!("{}:{seq}", claim.run);
                    writer
                        .append_audited(
                            Some(&claim),
                            vec![entry(&claim.run, seq, PHASE_INTENT)],
                            vec![(seq, body)],
                            Vec::new(),
                        )
                        .await
                        .unwrap();
                }
                claim.run
            }));
        }
        // Writes through the store's other path, racing the writer for the write lock.
        let other = store.clone();
        tasks.push(tokio::spawn(async move {
            for now in 0..STEPS {
                other.probe_write(node, now).await.unwrap();
                other
                    .put_agents(&[agent(&format!("busy-{node}"), &now.to_string())], now)
                    .await
                    .unwrap();
            }
            new_id()
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    for run in runs
        .iter()
        .take(RUNS)
        .chain(runs.iter().skip(RUNS + 1).take(RUNS))
    {
        let steps = a.load_journal(run, None, 1000).await.unwrap();
        assert_eq!(steps.len() as i64, STEPS, "run {run}");
    }
    let total = 2 * RUNS as i64 * STEPS;
    let (size, root) = b.audit_head().await.unwrap();
    assert_eq!(size, total);
    let rows = a.audit_rows(0, 10 * total).await.unwrap();
    let mut tree = merkle::Frontier::from_json(0, "[]").unwrap();
    let mut bodies = std::collections::HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i as i64, "audit records are numbered without gaps");
        let body = row.body.clone().unwrap();
        let leaf = merkle::leaf_hash(row.seq, body.as_bytes());
        assert_eq!(row.leaf_hash, merkle::hex(&leaf));
        tree.push(leaf);
        assert!(bodies.insert(body), "an audit record written twice");
    }
    assert_eq!(rows.len() as i64, total);
    assert_eq!(merkle::hex(&tree.root()), root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_nodes_journal_writers_keep_one_audit_log() {
    let fresh = FreshStore::sqlite().await;
    two_nodes_journal_writers_keep_one_audit_log(&fresh.url, fresh.store.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_journal_writers_keep_one_audit_log() {
    let fresh = FreshStore::postgres().await;
    two_nodes_journal_writers_keep_one_audit_log(&fresh.url, fresh.store.clone()).await
}
