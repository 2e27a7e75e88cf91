//! Policy sets, versioned.

use crate::support::*;

on_both_backends!(policy_sets_are_versioned_and_a_repeat_is_not_a_version);

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
