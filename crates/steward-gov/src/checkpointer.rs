//! Signs the audit tree's head every so often: whenever the log has grown since the last
//! checkpoint, its size and root are signed with this node's key and stored. Records are then
//! covered by a signature within one interval of being appended.

use std::sync::Arc;
use std::time::Duration;

use steward_store::AuditStore;

use crate::AuditKey;

/// Signs one checkpoint now if the log grew past the last one; returns the size signed.
pub async fn checkpoint_now(
    store: &dyn AuditStore,
    key: &AuditKey,
    now: i64,
) -> steward_store::Result<Option<i64>> {
    let (size, root) = store.audit_head().await?;
    let last = store
        .audit_checkpoints()
        .await?
        .last()
        .map_or(0, |c| c.size);
    if size == 0 || size <= last {
        return Ok(None);
    }
    store.put_checkpoint(&key.sign(size, &root, now)).await?;
    Ok(Some(size))
}

/// Runs `checkpoint_now` every `every` until `stop` resolves, and once more at the end.
pub async fn run(
    store: Arc<dyn AuditStore>,
    key: Arc<AuditKey>,
    every: Duration,
    now: impl Fn() -> i64,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = &mut stop => true,
        };
        if let Err(e) = checkpoint_now(&*store, &key, now()).await {
            tracing::warn!(error = %e, "could not sign an audit checkpoint; will retry");
        }
        if stopping {
            return;
        }
    }
}
