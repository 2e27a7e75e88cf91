//! The audit log: records numbered in order under a Merkle tree, signed checkpoints of its
//! root, and retention that clears bodies but keeps the tree verifiable.

use crate::support::*;

on_both_backends!(
    audit_records_are_numbered_checkpointed_and_pruned,
    appends_of_many_records_keep_the_tree_whole
);

async fn audit_records_are_numbered_checkpointed_and_pruned(s: &dyn Store) {
    assert_eq!(s.audit_head().await.unwrap().0, 0);
    let (size, _) = s
        .append_audit(&[(10, "a".into()), (20, "b".into())])
        .await
        .unwrap();
    assert_eq!(size, 2);
    let (size, root) = s.append_audit(&[(30, "c".into())]).await.unwrap();
    assert_eq!(size, 3, "a second append numbers after the first");
    assert_eq!(s.audit_head().await.unwrap(), (3, root.clone()));

    // The root is the tree over the rows' leaf hashes, each the hash of its number and body.
    let rows = s.audit_rows(0, 100).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.at, r.body.as_deref().unwrap()))
            .collect::<Vec<_>>(),
        [(10, "a"), (20, "b"), (30, "c")]
    );
    let mut tree = merkle::Frontier::default();
    for r in &rows {
        assert_eq!(
            r.leaf_hash,
            merkle::hex(&merkle::leaf_hash(
                r.seq,
                r.body.as_deref().unwrap().as_bytes()
            ))
        );
        tree.push(merkle::leaf_hash(
            r.seq,
            r.body.as_deref().unwrap().as_bytes(),
        ));
    }
    assert_eq!(merkle::hex(&tree.root()), root);

    // Checkpoints come back smallest first, whatever order they were put in.
    let checkpoint = |size: i64, at: i64| AuditCheckpoint {
        size,
        root: format!("root-{size}"),
        at,
        key_id: "k".into(),
        signature: format!("sig-{size}"),
    };
    s.put_checkpoint(&checkpoint(3, 40)).await.unwrap();
    s.put_checkpoint(&checkpoint(2, 35)).await.unwrap();
    assert_eq!(
        s.audit_checkpoints().await.unwrap(),
        [checkpoint(2, 35), checkpoint(3, 40)]
    );

    // Retention clears the bodies of old records only, once; numbers, leaf hashes and the
    // root stay.
    assert_eq!(s.prune_audit(25).await.unwrap(), 2);
    assert_eq!(s.prune_audit(25).await.unwrap(), 0);
    let pruned = s.audit_rows(0, 100).await.unwrap();
    assert_eq!(
        pruned.iter().map(|r| r.body.as_deref()).collect::<Vec<_>>(),
        [None, None, Some("c")]
    );
    assert_eq!(
        pruned.iter().map(|r| &r.leaf_hash).collect::<Vec<_>>(),
        rows.iter().map(|r| &r.leaf_hash).collect::<Vec<_>>()
    );
    assert_eq!(s.audit_head().await.unwrap(), (3, root));
}

/// Appends larger than one statement's rows (written in several, the new frontier with the
/// last on PostgreSQL), then a small one after them: the tree stays the one the rows hash to,
/// and what comes next is numbered after it.
async fn appends_of_many_records_keep_the_tree_whole(s: &dyn Store) {
    let many: Vec<(i64, String)> = (0..2_345).map(|i| (i, format!("record {i}"))).collect();
    let (size, _) = s.append_audit(&many).await.unwrap();
    assert_eq!(size, 2_345);
    let (size, root) = s.append_audit(&[(9_999, "last".into())]).await.unwrap();
    assert_eq!(size, 2_346);
    let mut tree = merkle::Frontier::default();
    let mut next = 0;
    loop {
        let rows = s.audit_rows(next, 1_000).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            assert_eq!(r.seq, next, "numbered without gaps");
            tree.push(merkle::leaf_hash(
                r.seq,
                r.body.as_deref().unwrap().as_bytes(),
            ));
            next += 1;
        }
    }
    assert_eq!(next, 2_346);
    assert_eq!(merkle::hex(&tree.root()), root);
    assert_eq!(s.audit_head().await.unwrap(), (2_346, root));
}
