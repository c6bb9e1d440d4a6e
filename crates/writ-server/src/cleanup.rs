//! Expiry cleanup: a background task that reclaims tokens a retention window after they
//! expired. It walks the store's expiry-ordered index, so it never scans live data, and
//! deletes in bounded batches so it never holds a transaction lock for long.

use crate::service::now;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use writ_core::UnixMillis;
use writ_store::TokenStore;

/// Most tokens one purge call deletes before the task yields.
const BATCH: usize = 1024;

/// Purges until nothing below the cutoff is left; returns how many tokens went.
pub async fn purge_once<S: TokenStore>(store: &S, retention: Duration) -> usize {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = UnixMillis(now().0.saturating_sub(retention_ms));
    let mut total = 0;
    loop {
        match store.purge_expired(cutoff, BATCH).await {
            Ok(stats) => {
                total += stats.tokens;
                if !stats.more {
                    return total;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiry cleanup failed; retrying at the next interval");
                return total;
            }
        }
    }
}

/// Runs [`purge_once`] every `interval` until `stop` turns true.
pub async fn run<S: TokenStore>(
    store: Arc<S>,
    interval: Duration,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let purged = purge_once(store.as_ref(), retention).await;
        if purged > 0 {
            tracing::info!(purged, "reclaimed expired tokens");
        }
    }
}
