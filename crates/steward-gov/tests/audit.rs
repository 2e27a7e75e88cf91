//! The audit log against tampering, on SQLite and PostgreSQL: rows changed, deleted, inserted
//! and reordered directly in the database are each found and named by `verify_log`; retention
//! leaves the log verifiable; inclusion proofs check against a signed checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use steward_gov::audit_key::public_key;
use steward_gov::checkpointer::checkpoint_now;
use steward_gov::proof::{verify_inclusion, Tree};
use steward_gov::{verify_log, AuditKey};
use steward_store::merkle::{hex, unhex};
use steward_store::Store;
use steward_testkit::{Backend, FreshStore};

struct Fresh {
    store: Arc<dyn Store>,
    url: String,
    key: AuditKey,
    _dir: tempfile::TempDir,
}

async fn fresh(postgres: bool) -> Fresh {
    let backend = if postgres {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let f = FreshStore::open(backend).await;
    Fresh {
        key: AuditKey::load_or_create(&f.dir.path().join("audit.key")).unwrap(),
        store: f.store,
        url: f.url,
        _dir: f.dir,
    }
}

/// Runs SQL straight against the database, as an attacker with write access would.
async fn tamper(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// 30 records in three appends, a checkpoint after each.
async fn thirty(f: &Fresh) {
    for batch in 0..3 {
        let entries: Vec<(i64, String)> = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                (
                    n,
                    format!(r#"{{"seq":{n},"action":"tool.call","who":"agent:a"}}"#),
                )
            })
            .collect();
        f.store.append_audit(&entries).await.unwrap();
        checkpoint_now(&*f.store, &f.key, 100).await.unwrap();
    }
}

async fn report(f: &Fresh) -> steward_gov::Report {
    let trusted = [public_key(&f.key.key_id()).unwrap()];
    verify_log(&*f.store, &trusted).await.unwrap()
}

fn named(r: &steward_gov::Report, first: i64, last: i64) -> bool {
    r.problems
        .iter()
        .any(|p| p.first_seq == first && p.last_seq == last)
}

async fn an_untouched_log_verifies(f: Fresh) {
    thirty(&f).await;
    let r = report(&f).await;
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!((r.records, r.checkpoints, r.signed_size), (30, 3, 30));
}

async fn a_changed_body_is_named(f: Fresh) {
    thirty(&f).await;
    tamper(
        &f.url,
        "UPDATE audit_log SET body = replace(body, 'agent:a', 'agent:b') WHERE seq = 12",
    )
    .await;
    let r = report(&f).await;
    assert!(named(&r, 12, 12), "{:?}", r.problems);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
}

async fn a_consistent_rewrite_is_caught_by_the_signature(f: Fresh) {
    thirty(&f).await;
    // Body and leaf hash rewritten together: only the signed root can tell.
    let body = r#"{"seq":15,"action":"tool.call","who":"agent:z"}"#;
    let leaf = hex(&steward_store::merkle::leaf_hash(15, body.as_bytes()));
    tamper(
        &f.url,
        &format!("UPDATE audit_log SET body = '{body}', leaf_hash = '{leaf}' WHERE seq = 15"),
    )
    .await;
    let r = report(&f).await;
    assert!(
        named(&r, 10, 19),
        "narrowed to the checkpoint interval: {:?}",
        r.problems
    );
    assert_eq!(r.signed_size, 10, "the first checkpoint still holds");
}

async fn a_deleted_row_is_named(f: Fresh) {
    thirty(&f).await;
    tamper(&f.url, "DELETE FROM audit_log WHERE seq = 7").await;
    let r = report(&f).await;
    assert!(named(&r, 7, 7), "{:?}", r.problems);
    tamper(&f.url, "DELETE FROM audit_log WHERE seq >= 25").await;
    let r = report(&f).await;
    assert!(named(&r, 25, 29), "a truncated tail: {:?}", r.problems);
}

async fn reordered_rows_are_named(f: Fresh) {
    thirty(&f).await;
    // Swap two records' positions, leaf hashes and all.
    tamper(&f.url, "UPDATE audit_log SET seq = -1 WHERE seq = 3").await;
    tamper(&f.url, "UPDATE audit_log SET seq = 3 WHERE seq = 4").await;
    tamper(&f.url, "UPDATE audit_log SET seq = 4 WHERE seq = -1").await;
    let r = report(&f).await;
    assert!(named(&r, 3, 3) && named(&r, 4, 4), "{:?}", r.problems);
}

async fn an_inserted_row_is_named(f: Fresh) {
    thirty(&f).await;
    let body = r#"{"seq":30,"action":"spend","who":"agent:a"}"#;
    let leaf = hex(&steward_store::merkle::leaf_hash(30, body.as_bytes()));
    tamper(
        &f.url,
        &format!(
            "INSERT INTO audit_log (seq, at, body, leaf_hash) VALUES (30, 1, '{body}', '{leaf}')"
        ),
    )
    .await;
    let r = report(&f).await;
    assert!(named(&r, 30, 30), "{:?}", r.problems);
}

async fn a_forged_checkpoint_is_named(f: Fresh) {
    thirty(&f).await;
    tamper(
        &f.url,
        "UPDATE audit_checkpoints SET root = '00000000000000000000000000000000000000000000000000000000000000ff' WHERE size = 20",
    )
    .await;
    let r = report(&f).await;
    assert!(
        r.problems.iter().any(|p| p.what.contains("size 20")),
        "{:?}",
        r.problems
    );
}

async fn retention_keeps_the_log_verifiable(f: Fresh) {
    thirty(&f).await;
    assert_eq!(f.store.prune_audit(10).await.unwrap(), 10);
    let r = report(&f).await;
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.pruned, 10);
}

async fn inclusion_proofs_check_against_the_signed_root(f: Fresh) {
    thirty(&f).await;
    let rows = f.store.audit_rows(0, 100).await.unwrap();
    let leaves: Vec<_> = rows.iter().map(|r| unhex(&r.leaf_hash).unwrap()).collect();
    let cp = f.store.audit_checkpoints().await.unwrap().pop().unwrap();
    let tree = Tree::new(leaves.clone());
    let root = unhex(&cp.root).unwrap();
    for (i, leaf) in leaves.iter().enumerate() {
        assert!(verify_inclusion(*leaf, i as u64, 30, &tree.proof(i), &root));
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::fresh(false).await).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::fresh(true).await).await })*
        }
    };
}

on_both!(
    an_untouched_log_verifies,
    a_changed_body_is_named,
    a_consistent_rewrite_is_caught_by_the_signature,
    a_deleted_row_is_named,
    reordered_rows_are_named,
    an_inserted_row_is_named,
    a_forged_checkpoint_is_named,
    retention_keeps_the_log_verifiable,
    inclusion_proofs_check_against_the_signed_root,
);
