//! Expiry cleanup: a background task that reclaims tokens a retention window after they
//! expired, and audit events after the audit trail's own (longer) retention. It walks the
//! store's expiry-ordered index and time-ordered event log, so it never scans live data,
//! and deletes in bounded batches so it never holds a transaction lock for long.

use crate::service::now;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use writ_core::UnixMillis;
use writ_store::{PurgeStats, StoreError, TokenStore};

/// Most items one purge call deletes. Large, so that one call purges a big span while
/// resuming past its own batches (the store writes and locks in small batches inside
/// it) and compacts what it purged, and the next call does not re-walk tombstones.
const BATCH: usize = 100_000;

/// Calls `purge(cutoff, BATCH)` until it reports nothing more below the cutoff, which is
/// `retention` before now; returns how many items went. A failure is logged and ends the
/// pass (the next interval retries).
async fn drain<F, Fut>(what: &str, retention: Duration, mut purge: F) -> usize
where
    F: FnMut(UnixMillis, usize) -> Fut,
    Fut: Future<Output = Result<PurgeStats, StoreError>>,
{
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = UnixMillis(now().0.saturating_sub(retention_ms));
    let mut total = 0;
    loop {
        match purge(cutoff, BATCH).await {
            Ok(stats) => {
                total += stats.tokens;
                if !stats.more {
                    return total;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} cleanup failed; retrying at the next interval");
                return total;
            }
        }
    }
}

/// Purges tokens expired more than `retention` ago; returns how many went.
pub async fn purge_once<S: TokenStore>(store: &S, retention: Duration) -> usize {
    drain("expiry", retention, |cutoff, n| {
        store.purge_expired(cutoff, n)
    })
    .await
}

/// Purges audit events older than `retention`; returns how many went.
pub async fn purge_events_once<S: TokenStore>(store: &S, retention: Duration) -> usize {
    drain("audit", retention, |cutoff, n| {
        store.purge_events(cutoff, n)
    })
    .await
}

/// When cleanup runs and what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Time between runs.
    pub interval: Duration,
    /// How long tokens are kept after they expire.
    pub token_retention: Duration,
    /// How long audit events are kept.
    pub audit_retention: Duration,
}

/// Runs [`purge_once`] and [`purge_events_once`] every `interval` until `stop` turns true.
pub async fn run<S: TokenStore>(
    store: Arc<S>,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule.interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let purged = purge_once(store.as_ref(), schedule.token_retention).await;
        if purged > 0 {
            tracing::info!(purged, "reclaimed expired tokens");
        }
        let events = purge_events_once(store.as_ref(), schedule.audit_retention).await;
        if events > 0 {
            tracing::info!(events, "reclaimed audit events past retention");
        }
    }
}
