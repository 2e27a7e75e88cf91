//! Stored Responses API responses.

use crate::support::*;

on_both_backends!(responses_are_kept_per_scope);

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
