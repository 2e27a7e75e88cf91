//! Rate windows, cached answers and open circuits, shared by the nodes of one database.

use crate::support::*;

on_both_backends!(
    rate_windows_and_cache_entries_are_counted_then_purged,
    open_circuits_are_shared
);

async fn rate_windows_and_cache_entries_are_counted_then_purged(s: &dyn Store) {
    let scopes = vec![("key:k".to_string(), 2, 100)];
    assert_eq!(s.take_request(&scopes, 60_000).await.unwrap(), None);
    assert_eq!(s.take_request(&scopes, 60_000).await.unwrap(), None);
    assert_eq!(
        s.take_request(&scopes, 60_000).await.unwrap().as_deref(),
        Some("key:k"),
        "two requests per minute"
    );
    assert_eq!(
        s.take_request(&scopes, 120_000).await.unwrap(),
        None,
        "a new minute"
    );
    assert_eq!(
        s.purge_windows(120_000).await.unwrap(),
        1,
        "the older window"
    );
    assert_eq!(
        s.take_request(&scopes, 120_000).await.unwrap(),
        None,
        "the current window is kept"
    );

    s.cache_put("a", "{}", "p/m", 10).await.unwrap();
    s.cache_put("b", "{}", "p/m", 20).await.unwrap();
    assert!(s.cache_get("a", 10).await.unwrap().is_none(), "expired");
    assert_eq!(s.purge_cache(10).await.unwrap(), 1);
    assert_eq!(
        s.cache_get("b", 11).await.unwrap(),
        Some(("{}".to_string(), "p/m".to_string()))
    );
}

async fn open_circuits_are_shared(s: &dyn Store) {
    let (n1, n2) = (NodeId("n1".into()), NodeId("n2".into()));
    s.share_breaker("p/m", 500, &n1, 1).await.unwrap();
    s.share_breaker("p/m", 300, &n2, 2).await.unwrap();
    let open = s.open_breakers(100).await.unwrap();
    assert_eq!(
        (open.len(), open[0].open_until, open[0].opened_by.as_str()),
        (1, 500, "n1"),
        "the later reopening wins"
    );
    s.share_breaker("p/m", 900, &n2, 3).await.unwrap();
    assert_eq!(s.open_breakers(600).await.unwrap()[0].opened_by, "n2");
    assert!(
        s.open_breakers(900).await.unwrap().is_empty(),
        "closed by now"
    );
}
