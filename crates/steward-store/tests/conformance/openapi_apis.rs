//! HTTP APIs described by OpenAPI documents, as configured.

use crate::support::*;
use steward_store::{OAuthTokenRecord, OpenApiRecord};

on_both_backends!(
    openapi_apis_are_kept_by_name_and_replaced_whole,
    one_node_at_a_time_refreshes_an_oauth_token
);

async fn openapi_apis_are_kept_by_name_and_replaced_whole(s: &dyn Store) {
    let record = |name: &str, base: &str, at: i64| OpenApiRecord {
        name: name.into(),
        document: r#"{"openapi":"3.1.0","paths":{}}"#.into(),
        base_url: base.into(),
        headers: r#"{"Authorization":"Bearer {{secret:T}}"}"#.into(),
        query: "{}".into(),
        oauth: String::new(),
        owner: format!("team-{at}"),
        created_at: 1,
        updated_at: at,
    };
    s.put_openapi(&record("b", "https://b.example", 1))
        .await
        .unwrap();
    s.put_openapi(&record("a", "https://a.example/v1", 2))
        .await
        .unwrap();
    s.put_openapi(&record("a", "https://a.example/v2", 3))
        .await
        .unwrap();
    let all = s.openapis().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], record("a", "https://a.example/v2", 3));
    assert_eq!(
        s.openapi_versions().await.unwrap(),
        [("a".to_string(), 3), ("b".to_string(), 1)]
    );
    assert!(s.delete_openapi("a").await.unwrap());
    assert!(!s.delete_openapi("a").await.unwrap());
    assert_eq!(
        s.openapis().await.unwrap(),
        [record("b", "https://b.example", 1)]
    );
}

async fn one_node_at_a_time_refreshes_an_oauth_token(s: &dyn Store) {
    assert_eq!(s.oauth_token("api").await.unwrap(), None);
    assert!(s.take_oauth_lease("api", "n1", 100, 200).await.unwrap());
    assert!(
        !s.take_oauth_lease("api", "n2", 150, 250).await.unwrap(),
        "n1 holds it"
    );
    assert!(
        s.take_oauth_lease("api", "n1", 150, 250).await.unwrap(),
        "its own, renewed"
    );
    let token = |access: &str, refresh: &str| OAuthTokenRecord {
        name: "api".into(),
        access_sealed: access.into(),
        refresh_sealed: refresh.into(),
        refresh_at: 1_000,
        expires_at: 2_000,
        lease_owner: String::new(),
        lease_until: 0,
    };
    s.put_oauth_token(&token("a1", "r1"), "n1").await.unwrap();
    assert_eq!(
        s.oauth_token("api").await.unwrap(),
        Some(token("a1", "r1")),
        "stored, lease given up"
    );
    // n2 takes the lease; n1, late with a token of its own, still stores it (a rotated refresh
    // token must not be lost) but leaves n2's lease alone.
    assert!(s.take_oauth_lease("api", "n2", 300, 400).await.unwrap());
    s.put_oauth_token(&token("a2", "r2"), "n1").await.unwrap();
    let t = s.oauth_token("api").await.unwrap().unwrap();
    assert_eq!(
        (t.access_sealed.as_str(), t.refresh_sealed.as_str()),
        ("a2", "r2")
    );
    assert_eq!((t.lease_owner.as_str(), t.lease_until), ("n2", 400));
    // A lease that ran out can be taken.
    assert!(s.take_oauth_lease("api", "n3", 401, 500).await.unwrap());
    s.release_oauth_lease("api", "n2").await.unwrap();
    assert_eq!(
        s.oauth_token("api").await.unwrap().unwrap().lease_owner,
        "n3",
        "not n2's to give up"
    );
    s.release_oauth_lease("api", "n3").await.unwrap();
    assert!(s.take_oauth_lease("api", "n1", 402, 500).await.unwrap());
    // Refused by the API: due for refresh, unless another token replaced it meanwhile.
    s.expire_oauth_token("api", "old").await.unwrap();
    assert_eq!(
        s.oauth_token("api").await.unwrap().unwrap().refresh_at,
        1_000
    );
    s.expire_oauth_token("api", "a2").await.unwrap();
    assert_eq!(s.oauth_token("api").await.unwrap().unwrap().refresh_at, 0);
    s.delete_oauth_token("api").await.unwrap();
    assert_eq!(s.oauth_token("api").await.unwrap(), None);
}
