//! Budget accounts and holds.

use crate::support::*;

on_both_backends!(
    step_holds_are_taken_once_and_released_when_stale,
    budget_periods_reset,
    accounts_are_listed_and_an_interrupted_step_books_its_hold
);

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

async fn accounts_are_listed_and_an_interrupted_step_books_its_hold(s: &dyn Store) {
    s.put_budget("agent:a", None, 1_000, "total", 1)
        .await
        .unwrap();
    s.put_budget("run:x", Some("agent:a"), 500, "day", 1)
        .await
        .unwrap();
    let mut listed: Vec<_> = s
        .list_budgets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.account, b.parent, b.cap_nanos, b.period))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("agent:a".into(), None, 1_000, "total".into()),
            ("run:x".into(), Some("agent:a".into()), 500, "day".into())
        ]
    );
    with_agent(s).await;
    let run = new_id();
    s.create_run(&new_run(&run), 1).await.unwrap();
    let accounts = ["run:x".to_string(), "agent:a".to_string()];
    let hold = NewHold {
        id: "r:3",
        kind: HOLD_STEP,
        run_id: Some(run.as_str()),
        accounts: &accounts,
        amount: 300,
    };
    assert_eq!(s.hold(&hold, 2).await.unwrap(), HoldResult::Held);
    assert_eq!(
        s.book_interrupted(&run, 3, "gpt", "r:3", 999, 5)
            .await
            .unwrap(),
        300,
        "its hold, in full: the upstream may have billed it"
    );
    for account in &accounts {
        let b = s.get_budget(account).await.unwrap().unwrap();
        assert_eq!((b.reserved_nanos, b.spent_nanos), (0, 300), "{account}");
    }
}
