//! Workspaces, kept by content.

use crate::support::*;

on_both_backends!(workspaces_are_kept_by_content);

async fn workspaces_are_kept_by_content(s: &dyn Store) {
    with_agent(s).await;
    let (run, other) = (new_id(), new_id());
    s.create_run(&new_run(&run), 1).await.unwrap();
    s.create_run(&new_run(&other), 1).await.unwrap();
    let blob = |h: &str, d: &str| Blob {
        hash: h.into(),
        data: d.into(),
    };
    let state = |seq, hash: &str| WorkspaceState {
        seq,
        hash: hash.into(),
        manifest: format!("[{seq}]"),
    };
    assert_eq!(s.workspace_before(&run, 10).await.unwrap(), None);
    let hashes = vec!["h1".to_string(), "h2".to_string()];
    assert_eq!(s.missing_blobs(&hashes).await.unwrap(), hashes);
    s.save_workspace(
        &run,
        &state(3, "m3"),
        &hashes,
        &[blob("h1", "AAAA"), blob("h2", "BBBB")],
        100,
    )
    .await
    .unwrap();
    // Another run with the same content sends none of it.
    assert!(s.missing_blobs(&hashes).await.unwrap().is_empty());
    s.save_workspace(&other, &state(1, "o1"), &hashes[..1], &[], 101)
        .await
        .unwrap();
    s.save_workspace(&run, &state(7, "m7"), &hashes[1..], &[], 102)
        .await
        .unwrap();
    assert_eq!(
        s.workspace_before(&run, 7).await.unwrap(),
        Some(state(3, "m3")),
        "before step 7"
    );
    assert_eq!(
        s.workspace_before(&run, 8).await.unwrap(),
        Some(state(7, "m7"))
    );
    let mut got = s.load_blobs(&hashes).await.unwrap();
    got.sort_by(|a, b| a.hash.cmp(&b.hash));
    assert_eq!(got, vec![blob("h1", "AAAA"), blob("h2", "BBBB")]);
    // A save that relies on content the store no longer holds saves nothing.
    let gone = s
        .save_workspace(&run, &state(9, "m9"), &["h9".to_string()], &[], 103)
        .await;
    assert!(matches!(gone, Err(Error::Conflict(_))), "{gone:?}");
    assert_eq!(
        s.workspace_before(&run, 10).await.unwrap(),
        Some(state(7, "m7"))
    );
    // Ended runs' workspaces go; content another run still uses stays.
    let n = NodeId("n".into());
    for r in s.claim_runs(&n, 200, 60_000, 10).await.unwrap() {
        if r.id == run {
            assert!(s
                .update_run(&r.claim(&n), &RunUpdate::state(RunState::Succeeded), 300)
                .await
                .unwrap());
        }
    }
    assert_eq!(
        s.sweep_workspaces(200, 10_000).await.unwrap(),
        (0, 0),
        "ended too recently"
    );
    assert_eq!(s.sweep_workspaces(400, 10_000).await.unwrap(), (2, 1));
    assert_eq!(s.workspace_before(&run, 10).await.unwrap(), None);
    assert_eq!(
        s.load_blobs(&hashes).await.unwrap(),
        vec![blob("h1", "AAAA")]
    );
    assert_eq!(
        s.workspace_before(&other, 10).await.unwrap(),
        Some(state(1, "o1"))
    );
}
