//! Approvals: asked once per step, decided once.

use crate::support::*;

on_both_backends!(an_approval_is_asked_once_per_step_and_decided_once);

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
