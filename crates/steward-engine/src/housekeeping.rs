//! Every minute, this node clears what nothing will come back for: budget holds whose owner is
//! gone (a gateway call cut off by a crash, a step of a run that ended — without this a hold
//! would count against its accounts forever), rate-limit windows long past, and expired cached
//! answers. Every statement is idempotent, so nodes sharing a database may all run it.

use std::sync::Arc;
use std::time::Duration;

use steward_store::Store;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// No gateway call is expected to outlive this; one still open after it was cut off by a crash.
const STALE_CALL_MS: i64 = 3_600_000;
/// Rate windows are one minute long; the one before the current one is kept for reading.
const KEEP_WINDOWS_MS: i64 = 120_000;
const EVERY: Duration = Duration::from_secs(60);

pub(crate) async fn run(store: Arc<dyn Store>, clock: Arc<dyn Clock>, stop: CancellationToken) {
    loop {
        let now = clock.now_ms();
        match store.release_stale_holds(now - STALE_CALL_MS, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                released = n,
                "released budget holds whose call or run is gone"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not release stale budget holds; will retry")
            }
        }
        if let Err(e) = store.purge_windows(now - KEEP_WINDOWS_MS).await {
            tracing::warn!(error = %e, "could not purge old rate-limit windows; will retry");
        }
        if let Err(e) = store.purge_cache(now).await {
            tracing::warn!(error = %e, "could not purge expired cached answers; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
