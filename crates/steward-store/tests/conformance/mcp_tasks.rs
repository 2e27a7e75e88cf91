//! Tool calls through /mcp that became tasks.

use crate::support::*;
use steward_store::McpTaskRecord;

on_both_backends!(
    an_mcp_task_ends_once_and_is_cancelled_only_while_working,
    a_silent_task_is_claimed_by_one_node_or_settled,
    call_cancels_are_read_by_time_and_pruned
);

async fn call_cancels_are_read_by_time_and_pruned(s: &dyn Store) {
    s.request_mcp_call_cancel("a", "7", 10).await.unwrap();
    s.request_mcp_call_cancel("a", "7", 10).await.unwrap(); // the same, again
    s.request_mcp_call_cancel("b", "\"x\"", 20).await.unwrap();
    assert_eq!(
        s.mcp_call_cancels(5).await.unwrap(),
        [
            ("a".into(), "7".into(), 10),
            ("b".into(), "\"x\"".into(), 20)
        ]
    );
    assert_eq!(
        s.mcp_call_cancels(15).await.unwrap(),
        [("b".into(), "\"x\"".into(), 20)]
    );
    assert_eq!(s.prune_mcp_call_cancels(15).await.unwrap(), 1);
    assert_eq!(s.mcp_call_cancels(0).await.unwrap().len(), 1);
}

async fn an_mcp_task_ends_once_and_is_cancelled_only_while_working(s: &dyn Store) {
    let task = |id: &str| McpTaskRecord {
        id: id.into(),
        agent: "a".into(),
        tool: "t".into(),
        status: "working".into(),
        outcome: String::new(),
        node: "n1".into(),
        cancel_requested: 0,
        created_at: 1,
        updated_at: 1,
        arguments: r#"{"a":1}"#.into(),
        idempotent: 0,
        attempts: 1,
    };
    s.put_mcp_task(&task("x")).await.unwrap();
    s.put_mcp_task(&task("y")).await.unwrap();
    assert!(s.put_mcp_task(&task("x")).await.is_err(), "ids are unique");
    assert_eq!(s.mcp_task("x").await.unwrap(), Some(task("x")));
    assert_eq!(s.working_mcp_tasks("n1").await.unwrap().len(), 2);
    assert!(s.working_mcp_tasks("n2").await.unwrap().is_empty());
    s.touch_mcp_task("x", 5).await.unwrap();
    assert_eq!(s.mcp_task("x").await.unwrap().unwrap().updated_at, 5);
    assert!(s.request_mcp_task_cancel("x", 6).await.unwrap());
    assert_eq!(s.mcp_task("x").await.unwrap().unwrap().cancel_requested, 1);
    assert!(s.finish_mcp_task("x", "cancelled", "", 7).await.unwrap());
    assert!(
        !s.finish_mcp_task("x", "completed", "{}", 8).await.unwrap(),
        "ended once"
    );
    assert!(
        !s.request_mcp_task_cancel("x", 9).await.unwrap(),
        "no longer working"
    );
    let x = s.mcp_task("x").await.unwrap().unwrap();
    assert_eq!((x.status.as_str(), x.updated_at), ("cancelled", 7));
    assert_eq!(x.arguments, "", "arguments are forgotten once it ended");
    assert_eq!(s.working_mcp_tasks("n1").await.unwrap(), [task("y")]);
    assert_eq!(s.mcp_task("nope").await.unwrap(), None);
    // Ended tasks go once old enough; working ones stay, however old.
    assert_eq!(
        s.prune_mcp_tasks(7).await.unwrap(),
        0,
        "x ended at 7, not before"
    );
    assert_eq!(s.prune_mcp_tasks(100).await.unwrap(), 1);
    assert_eq!(s.mcp_task("x").await.unwrap(), None);
    assert!(
        s.mcp_task("y").await.unwrap().is_some(),
        "y is still working"
    );
}

async fn a_silent_task_is_claimed_by_one_node_or_settled(s: &dyn Store) {
    let task = |id: &str, idempotent: i64, at: i64| McpTaskRecord {
        id: id.into(),
        agent: "a".into(),
        tool: "t".into(),
        status: "working".into(),
        outcome: String::new(),
        node: "dead".into(),
        cancel_requested: 0,
        created_at: at,
        updated_at: at,
        arguments: "{}".into(),
        idempotent,
        attempts: 1,
    };
    s.put_mcp_task(&task("again", 1, 10)).await.unwrap();
    s.put_mcp_task(&task("once", 0, 10)).await.unwrap();
    s.put_mcp_task(&task("fresh", 0, 50)).await.unwrap();
    s.put_mcp_task(&task("old", 1, 5)).await.unwrap();

    // Two nodes saw `again` silent at 10: one takes it over.
    assert!(
        !s.claim_mcp_task("again", 9, "n1", 60).await.unwrap(),
        "not what was seen"
    );
    assert!(s.claim_mcp_task("again", 10, "n1", 60).await.unwrap());
    assert!(
        !s.claim_mcp_task("again", 10, "n2", 61).await.unwrap(),
        "taken already"
    );
    let again = s.mcp_task("again").await.unwrap().unwrap();
    assert_eq!(
        (again.node.as_str(), again.updated_at, again.attempts),
        ("n1", 60, 2)
    );

    // Silent since before 40 (idempotent ones: before 8): ended in doubt.
    assert_eq!(
        s.settle_silent_mcp_tasks(40, 8, r#"{"failed":"in doubt"}"#, 70)
            .await
            .unwrap(),
        2,
        "`once` and `old`"
    );
    for (id, status) in [
        ("once", "failed"),
        ("old", "failed"),
        ("fresh", "working"),
        ("again", "working"),
    ] {
        let t = s.mcp_task(id).await.unwrap().unwrap();
        assert_eq!(t.status, status, "{id}");
        if status == "failed" {
            assert_eq!(
                (t.outcome.as_str(), t.updated_at),
                (r#"{"failed":"in doubt"}"#, 70)
            );
            assert_eq!(t.arguments, "");
        }
    }
    assert!(
        !s.claim_mcp_task("once", 10, "n1", 80).await.unwrap(),
        "an ended task is not claimed"
    );
}
