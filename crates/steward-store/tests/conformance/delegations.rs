//! Delegation links.

use crate::support::*;

on_both_backends!(
    delegations_revoke_everything_below,
    a_link_and_its_budget_are_made_together
);

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

async fn a_link_and_its_budget_are_made_together(s: &dyn Store) {
    s.put_budget("agent:a", None, 1_000, "total", 1)
        .await
        .unwrap();
    s.create_budgeted_delegation(&link("d1", None, 2), "delegation:d1", "agent:a", 300)
        .await
        .unwrap();
    let b = s.get_budget("delegation:d1").await.unwrap().unwrap();
    assert_eq!(
        (b.parent.as_deref(), b.cap_nanos, b.period.as_str()),
        (Some("agent:a"), 300, "total")
    );
    assert!(s.get_delegation("d1").await.unwrap().is_some());

    // A link refused (its id taken) leaves no account behind, and does not change the one
    // its id already has.
    let mut taken = link("d1", None, 3);
    taken.revocation_id = "rid-other".into();
    assert!(matches!(
        s.create_budgeted_delegation(&taken, "delegation:fresh", "agent:a", 50)
            .await,
        Err(steward_store::Error::Conflict(_))
    ));
    assert!(s.get_budget("delegation:fresh").await.unwrap().is_none());
    assert!(matches!(
        s.create_budgeted_delegation(&link("d1", None, 4), "delegation:d1", "agent:a", 999)
            .await,
        Err(steward_store::Error::Conflict(_))
    ));
    assert_eq!(
        s.get_budget("delegation:d1")
            .await
            .unwrap()
            .unwrap()
            .cap_nanos,
        300
    );
}
