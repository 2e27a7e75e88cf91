//! What every backend answers for itself: write probes, URLs, announcements to other nodes.

use crate::support::*;

on_both_backends!(a_write_probe_commits_again_and_again);

async fn a_write_probe_commits_again_and_again(s: &dyn Store) {
    for now in [1, 2, 3] {
        s.probe_write("node-a", now).await.unwrap();
        s.probe_write("node-b", now).await.unwrap();
    }
    s.ping().await.unwrap();
}

#[tokio::test]
async fn postgres_tests_really_use_their_own_schema() {
    let a = FreshStore::postgres().await;
    let b = FreshStore::postgres().await;
    a.store
        .put_agents(&[agent("only-in-a", "{}")], 1)
        .await
        .unwrap();
    assert!(b.store.list_agents().await.unwrap().is_empty());
    assert_eq!(a.store.backend(), "postgres");
}

#[tokio::test]
async fn bad_urls_are_explained() {
    let e = open("mysql://x", &StoreConfig::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("postgres://"), "{e}");
    let e = open("postgres://u:secret@127.0.0.1:1/x", &StoreConfig::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        !e.contains("secret"),
        "passwords never appear in errors: {e}"
    );
}

#[tokio::test]
async fn postgres_announces_queued_and_ended_runs_to_other_nodes() {
    let a = FreshStore::postgres().await;
    let b = open(&a.url, &StoreConfig::default()).await.unwrap();
    let mut wakeups = b.wakeups().await.unwrap().expect("PostgreSQL listens");
    with_agent(&*a.store).await;
    let id = new_id();
    a.store.create_run(&new_run(&id), 1).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), wakeups.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(WAKE_RUN));
    let n = NodeId("n".into());
    let claim = a.store.claim_runs(&n, 2, 60_000, 1).await.unwrap()[0].claim(&n);
    a.store
        .update_run(&claim, &RunUpdate::state(RunState::Succeeded), 3)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), wakeups.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(WAKE_DONE));
}

#[tokio::test]
async fn sqlite_has_nobody_to_announce_to() {
    assert!(FreshStore::sqlite()
        .await
        .store
        .wakeups()
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused_with_the_reason() {
    for url in ["sqlite::memory:", "sqlite://x.db?mode=memory"] {
        let e = open(url, &StoreConfig::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sqlite://PATH"), "{url}: {e}");
    }
}
