//! Gateway keys and calls, begun and settled with their holds.

use crate::support::*;

on_both_backends!(keys_and_calls_are_kept, calls_begin_and_end_with_their_holds, usage_adds_steps_calls_and_interrupted_steps, keys_are_read_by_id; threaded: calls_begun_together_are_held_each_on_its_own);

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

/// Usage adds managed steps (their journaled outcomes), ended gateway calls and steps cut off
/// before their answer, per agent, model, run and hour, from a time on; an evaluator's verdict
/// stands in for its run's state.
async fn usage_adds_steps_calls_and_interrupted_steps(s: &dyn Store) {
    with_agent(s).await;
    let run = new_id();
    s.create_run(&new_run(&run), 1).await.unwrap();
    let model = |seq, phase| JournalEntry {
        kind: "model".into(),
        name: "gpt".into(),
        tokens_in: 10,
        tokens_out: 5,
        ..entry(&run, seq, phase)
    };
    s.append_journal(
        &[
            model(0, PHASE_INTENT),
            model(0, PHASE_OUTCOME),
            model(1, PHASE_INTENT),
            model(1, PHASE_OUTCOME),
        ],
        &[],
        &[],
    )
    .await
    .unwrap();
    let call = |id: &str| NewCall {
        id: id.into(),
        agent: "ext".into(),
        run_id: None,
        model: "smart".into(),
        stream: false,
    };
    s.begin_call(&call("call_u"), &[], 0, 7).await.unwrap();
    let done = CallOutcome {
        deployment: Some("mock/m".into()),
        status: "ok".into(),
        error: None,
        tokens_in: 3,
        tokens_out: 4,
        duration_us: 1,
    };
    end(s, "call_u", done, 25, 8).await;
    s.begin_call(&call("call_open"), &[], 0, 8).await.unwrap();
    assert_eq!(
        s.book_interrupted(&run, 2, "gpt", "no-such-hold", 120, 9)
            .await
            .unwrap(),
        120,
        "no hold open: its worst case"
    );
    s.set_run_verdict(run.as_str(), "accepted").await.unwrap();

    let summary = |since| async move {
        let mut rows: Vec<_> = s
            .usage(since)
            .await
            .unwrap()
            .into_iter()
            .map(|u| {
                (
                    u.kind,
                    u.agent,
                    u.model,
                    u.run_id,
                    u.run_state,
                    u.hour,
                    (u.calls, u.tokens_in, u.tokens_out, u.booked_nanos),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let r = Some(run.to_string());
    let accepted = Some("accepted".to_string());
    assert_eq!(
        summary(0).await,
        [
            (
                "model".into(),
                "a".into(),
                "gpt".into(),
                r.clone(),
                accepted.clone(),
                0,
                (1, 0, 0, 120)
            ),
            (
                "model".into(),
                "a".into(),
                "gpt".into(),
                r.clone(),
                accepted.clone(),
                0,
                (2, 20, 10, 0)
            ),
            (
                "model".into(),
                "ext".into(),
                "mock/m".into(),
                None,
                None,
                0,
                (1, 3, 4, 0)
            ),
        ],
        "the call still open is not usage yet; booked counts only what was cut off"
    );
    assert_eq!(summary(9).await.len(), 1, "only what happened from 9 on");
}

async fn keys_are_read_by_id(s: &dyn Store) {
    let k = s
        .create_key("key_1", "hash-1", &name("ext"), None, 5)
        .await
        .unwrap();
    assert_eq!(s.get_key("key_1").await.unwrap(), Some(k));
    assert_eq!(s.get_key("key_2").await.unwrap(), None);
}
