//! Tool calls through /mcp that became tasks.

use crate::support::*;
use steward_store::McpTaskRecord;

on_both_backends!(an_mcp_task_ends_once_and_is_cancelled_only_while_working);

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
