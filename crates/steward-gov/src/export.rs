//! Evidence for auditors: each record since a time, with its inclusion proof against the latest
//! signed checkpoint, one JSON object per line. With the signer's public key, each line can be
//! checked on its own.

use serde_json::{json, Value};
use steward_store::merkle::{hex, unhex, Hash};
use steward_store::Store;

use crate::proof::Tree;

const PAGE: i64 = 10_000;

/// The export's lines (of run `run`'s records only, when given). Records after the latest
/// checkpoint carry no proof (`"proof": null`); sign a checkpoint first to cover them.
pub async fn export_lines(
    store: &dyn Store,
    since: i64,
    run: Option<&str>,
) -> steward_store::Result<Vec<String>> {
    let checkpoint = store.audit_checkpoints().await?.pop();
    let mut rows = Vec::new();
    let mut from = 0;
    loop {
        let page = store.audit_rows(from, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        if let Some(last) = page.last() {
            from = last.seq + 1;
        }
        rows.extend(page);
        if !full {
            break;
        }
    }
    let signed = checkpoint.as_ref().map_or(0, |c| c.size as usize);
    let leaves: Vec<Hash> = rows
        .iter()
        .take(signed)
        .map(|r| unhex(&r.leaf_hash).unwrap_or([0; 32]))
        .collect();
    let tree = Tree::new(leaves);
    let cp = checkpoint.map(|c| {
        json!({"size": c.size, "root": c.root, "at": c.at, "key_id": c.key_id, "signature": c.signature})
    });
    Ok(rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.at >= since)
        .filter_map(|(i, r)| {
            let record: Value = r
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null);
            if run.is_some_and(|id| record["run_id"].as_str() != Some(id)) {
                return None;
            }
            let proof = (i < signed && i == r.seq as usize)
                .then(|| tree.proof(i).iter().map(|h| hex(h)).collect::<Vec<_>>());
            Some(
                json!({
                    "seq": r.seq,
                    "at": r.at,
                    "record": record,
                    "body": r.body,
                    "leaf_hash": r.leaf_hash,
                    "proof": proof,
                    "checkpoint": if proof.is_some() { cp.clone() } else { None },
                })
                .to_string(),
            )
        })
        .collect())
}
