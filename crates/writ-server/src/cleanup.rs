//! Expiry cleanup: a background task that reclaims tokens a retention window after they
//! expired, and audit events after the audit trail's own (longer) retention. It also
//! records consent requests that expired undecided or unredeemed (one `consent_expired`
//! event each, by the server) and deletes closed requests after the tokens' retention. It walks the
//! store's expiry-ordered index and time-ordered event log, so it never scans live data,
//! and deletes in bounded batches so it never holds a transaction lock for long.
//!
//! The wall clock can step (a misconfigured NTP server, a VM restored from a snapshot);
//! a step forward of more than a retention would delete live tokens with their
//! revocations, and audit evidence. So the "now" cleanup purges against follows the wall
//! clock but never runs ahead of the monotonic clock by more than [`CLOCK_SLACK`] per
//! run (`tick`): a step forward is absorbed gradually, a step back purges only what the
//! wall clock says and never moves the remembered cutoff back, and a step of more than
//! [`CLOCK_WARNING`] either way is logged.

use crate::audit::Audit;
use crate::parties::WalkEvents;
use crate::service::now;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use writ_core::{Actor, AuthMethod, UnixMillis};
use writ_store::{PurgeStats, StoreError, TokenStore};

/// Most items one purge call deletes. Large, so that one call purges a big span while
/// resuming past its own batches (the store writes and locks in small batches inside
/// it) and compacts what it purged, and the next call does not re-walk tombstones.
const BATCH: usize = 100_000;

/// Most consent requests one `expire_consents` call marks expired (each is a write with
/// its event under its transaction's lock).
const EXPIRE_BATCH: usize = 1_000;

/// The actor of `consent_expired` events: the server itself.
pub const CLEANUP_ACTOR: &str = "writ";

/// How much further than the monotonic clock the wall clock may carry cleanup's "now" in
/// one run. Covers clock slewing and rounding; a larger step forward is caught up at this
/// much per run.
pub const CLOCK_SLACK: Duration = Duration::from_secs(10);
/// A disagreement between the wall clock and the monotonic clock across one run that is
/// logged as a clock step.
pub const CLOCK_WARNING: Duration = Duration::from_secs(60);

/// What cleanup remembers of its previous run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    /// The time it reckoned, in Unix ms: never moves back.
    mark: u64,
    /// The wall clock then, in Unix ms.
    wall: u64,
    /// The monotonic clock then.
    at: Instant,
}

/// One run's reading of the clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tick {
    /// What to purge against: never later than the wall clock, nor than the previous
    /// run's mark plus the monotonic time since it plus [`CLOCK_SLACK`].
    now: UnixMillis,
    /// Remember for the next run.
    checkpoint: Checkpoint,
    /// How much further the wall clock moved than the monotonic clock since the
    /// previous run, in ms (negative: it stepped back).
    step_ms: i64,
}

/// The rule: the first run reckons by the wall clock; each later one moves the mark by
/// the monotonic time elapsed, and up to [`CLOCK_SLACK`] further toward the wall clock
/// if it is ahead, and purges against the earlier of the mark and the wall clock.
fn tick(previous: Option<Checkpoint>, wall: UnixMillis, at: Instant) -> Tick {
    let Some(prev) = previous else {
        return Tick {
            now: wall,
            checkpoint: Checkpoint {
                mark: wall.0,
                wall: wall.0,
                at,
            },
            step_ms: 0,
        };
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let elapsed = ms(at.saturating_duration_since(prev.at));
    let floor = prev.mark.saturating_add(elapsed);
    let mark = wall.0.clamp(floor, floor.saturating_add(ms(CLOCK_SLACK)));
    let moved = i128::from(wall.0) - i128::from(prev.wall);
    let step = moved - i128::from(elapsed);
    Tick {
        now: UnixMillis(wall.0.min(mark)),
        checkpoint: Checkpoint {
            mark,
            wall: wall.0,
            at,
        },
        step_ms: i64::try_from(step).unwrap_or(if step < 0 { i64::MIN } else { i64::MAX }),
    }
}

/// Calls `purge(cutoff, BATCH)` until it reports nothing more below the cutoff, which is
/// `retention` before `now`; returns how many items went. A failure is logged and ends
/// the pass (the next interval retries).
async fn drain<F, Fut>(what: &str, now: UnixMillis, retention: Duration, mut purge: F) -> usize
where
    F: FnMut(UnixMillis, usize) -> Fut,
    Fut: Future<Output = Result<PurgeStats, StoreError>>,
{
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = UnixMillis(now.0.saturating_sub(retention_ms));
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

/// Purges tokens expired more than `retention` before `now`; returns how many went.
async fn purge_tokens_at<S: TokenStore>(store: &S, now: UnixMillis, retention: Duration) -> usize {
    drain("expiry", now, retention, |cutoff, n| {
        store.purge_expired(cutoff, n)
    })
    .await
}

/// Purges audit events older than `retention` before `now`; returns how many went.
async fn purge_events_at<S: TokenStore>(store: &S, now: UnixMillis, retention: Duration) -> usize {
    drain("audit", now, retention, |cutoff, n| {
        store.purge_events(cutoff, n)
    })
    .await
}

/// Marks every consent request open but past its expiry at `now` expired, each with a
/// `consent_expired` event by the server (ids issued by `audit`); returns how many. A
/// failure is logged and ends the pass.
pub async fn expire_consents_at<S: TokenStore>(
    store: &S,
    audit: &Arc<Audit>,
    now: UnixMillis,
) -> usize {
    let by = Actor {
        id: CLEANUP_ACTOR.into(),
        auth: AuthMethod::Internal,
    };
    let mut total = 0;
    loop {
        let events = WalkEvents::new(audit.clone());
        match store
            .expire_consents(now, EXPIRE_BATCH, by.clone(), events)
            .await
        {
            Ok((n, more)) => {
                total += n;
                if !more {
                    return total;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "consent expiry failed; retrying at the next interval");
                return total;
            }
        }
    }
}

/// Deletes closed consent requests created more than `retention` before `now`; returns
/// how many went.
async fn purge_consents_at<S: TokenStore>(
    store: &S,
    now: UnixMillis,
    retention: Duration,
) -> usize {
    drain("consent", now, retention, |cutoff, n| {
        store.purge_consents(cutoff, n)
    })
    .await
}

/// Purges tokens expired more than `retention` ago (by the wall clock, unguarded: for
/// one-off use; [`run`] guards against clock steps); returns how many went.
pub async fn purge_once<S: TokenStore>(store: &S, retention: Duration) -> usize {
    purge_tokens_at(store, now(), retention).await
}

/// Purges audit events older than `retention` (by the wall clock, unguarded, as
/// [`purge_once`]); returns how many went.
pub async fn purge_events_once<S: TokenStore>(store: &S, retention: Duration) -> usize {
    purge_events_at(store, now(), retention).await
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

/// Purges expired tokens, old audit events and closed consent requests every `interval`
/// until `stop` turns true, against a "now" guarded against wall-clock steps (see the
/// module docs); with `audit`, first records the consent requests that expired.
pub async fn run<S: TokenStore>(
    store: Arc<S>,
    schedule: Schedule,
    stop: watch::Receiver<bool>,
    audit: Option<Arc<Audit>>,
) {
    run_with_metrics(store, schedule, stop, audit, None).await
}

/// [`run`], counting what each run purged into `metrics`.
pub async fn run_with_metrics<S: TokenStore>(
    store: Arc<S>,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
    audit: Option<Arc<Audit>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    let mut checkpoint = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule.interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let t = tick(checkpoint, now(), Instant::now());
        checkpoint = Some(t.checkpoint);
        if Duration::from_millis(t.step_ms.unsigned_abs()) > CLOCK_WARNING {
            tracing::warn!(
                step_ms = t.step_ms,
                wall_ms = t.checkpoint.wall,
                purging_at_ms = t.now.0,
                "the wall clock stepped against the monotonic clock; cleanup follows the \
                 monotonic clock and does not purge ahead of it"
            );
        }
        if let Some(audit) = &audit {
            let expired = expire_consents_at(store.as_ref(), audit, t.now).await;
            if expired > 0 {
                tracing::info!(expired, "consent requests expired");
            }
        }
        let purged = purge_tokens_at(store.as_ref(), t.now, schedule.token_retention).await;
        if purged > 0 {
            tracing::info!(purged, "reclaimed expired tokens");
        }
        let consents = purge_consents_at(store.as_ref(), t.now, schedule.token_retention).await;
        if consents > 0 {
            tracing::info!(consents, "reclaimed closed consent requests");
        }
        let events = purge_events_at(store.as_ref(), t.now, schedule.audit_retention).await;
        if events > 0 {
            tracing::info!(events, "reclaimed audit events past retention");
        }
        if let Some(m) = &metrics {
            m.cleaned(purged, events, now().0 as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    const W: u64 = 1_800_000_000_000;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_first_run_reckons_by_the_wall_clock_and_normal_progress_purges_normally() {
        let t0 = Instant::now();
        let first = tick(None, UnixMillis(W), t0);
        assert_eq!(first.now, UnixMillis(W));
        assert_eq!(first.step_ms, 0);
        let second = tick(
            Some(first.checkpoint),
            UnixMillis(W + 30_000),
            t0 + secs(30),
        );
        assert_eq!(second.now, UnixMillis(W + 30_000));
        assert_eq!(second.step_ms, 0);
        // A little drift either way is followed (ahead within the slack) and not logged.
        let third = tick(
            Some(second.checkpoint),
            UnixMillis(W + 60_400),
            t0 + secs(60),
        );
        assert_eq!(third.now, UnixMillis(W + 60_400));
        let fourth = tick(
            Some(third.checkpoint),
            UnixMillis(W + 89_900),
            t0 + secs(90),
        );
        assert_eq!(fourth.now, UnixMillis(W + 89_900));
        assert!(Duration::from_millis(fourth.step_ms.unsigned_abs()) < CLOCK_WARNING);
    }

    /// Finding 13: a forward step of a day does not purge a day's worth at once.
    #[test]
    fn a_forward_step_is_absorbed_at_the_slack_per_run() {
        let t0 = Instant::now();
        let first = tick(None, UnixMillis(W), t0);
        let stepped = tick(
            Some(first.checkpoint),
            UnixMillis(W + DAY + 30_000),
            t0 + secs(30),
        );
        let slack = CLOCK_SLACK.as_millis() as u64;
        assert_eq!(stepped.now, UnixMillis(W + 30_000 + slack));
        assert_eq!(stepped.step_ms, DAY as i64, "logged as a step");
        // The next run catches up by the slack again, not by the rest of the day.
        let next = tick(
            Some(stepped.checkpoint),
            UnixMillis(W + DAY + 60_000),
            t0 + secs(60),
        );
        assert_eq!(next.now, UnixMillis(W + 60_000 + 2 * slack));
        assert_eq!(next.step_ms, 0, "logged once, at the step");
    }

    /// Finding 13: a backward step never moves the remembered cutoff back and never
    /// purges more than the wall clock says; stepping back to the truth resumes at once.
    #[test]
    fn a_backward_step_purges_no_more_and_keeps_the_mark() {
        let t0 = Instant::now();
        let first = tick(None, UnixMillis(W), t0);
        let back = tick(
            Some(first.checkpoint),
            UnixMillis(W + 30_000 - DAY),
            t0 + secs(30),
        );
        assert_eq!(
            back.now,
            UnixMillis(W + 30_000 - DAY),
            "no later than the wall clock"
        );
        assert_eq!(
            back.checkpoint.mark,
            W + 30_000,
            "the mark never moves back"
        );
        assert_eq!(back.step_ms, -(DAY as i64));
        let still = tick(
            Some(back.checkpoint),
            UnixMillis(W + 60_000 - DAY),
            t0 + secs(60),
        );
        assert_eq!(still.now, UnixMillis(W + 60_000 - DAY));
        assert_eq!(
            still.checkpoint.mark,
            W + 60_000,
            "the mark follows the monotonic clock"
        );
        // The clock is corrected: cleanup is where the monotonic clock says, at once.
        let fixed = tick(
            Some(still.checkpoint),
            UnixMillis(W + 90_000),
            t0 + secs(90),
        );
        assert_eq!(fixed.now, UnixMillis(W + 90_000));
    }
}
