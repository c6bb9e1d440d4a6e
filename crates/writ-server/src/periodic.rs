//! Background work that runs on an interval until the server stops: the one loop behind
//! the TLS reloader, the JWT-SVID bundle reloader and the signing keys' rotation, so each
//! says only what it does. The work runs on the blocking pool (it reads files or writes
//! keys); what it returns is handled on the task, which may keep state between runs.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// When the first run happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum First {
    /// At once.
    Now,
    /// After one interval (what it would check was just loaded).
    AfterInterval,
}

/// Runs `work` on the blocking pool every `interval` (missed ticks are delayed, never
/// bunched) and hands each result to `handle`, until `stop` turns true or its sender is
/// dropped. A run in progress finishes; a panicking run is logged as `what` and the loop
/// goes on.
pub(crate) fn every_blocking<T, W, H>(
    interval: Duration,
    first: First,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    work: W,
    mut handle: H,
) -> JoinHandle<()>
where
    T: Send + 'static,
    W: Fn() -> T + Send + Sync + 'static,
    H: FnMut(T) + Send + 'static,
{
    let work = Arc::new(work);
    tokio::spawn(async move {
        let start = match first {
            First::Now => tokio::time::Instant::now(),
            First::AfterInterval => tokio::time::Instant::now() + interval,
        };
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = ticks.tick() => {}
            }
            let work = Arc::clone(&work);
            match tokio::task::spawn_blocking(move || work()).await {
                Ok(result) => handle(result),
                Err(e) => tracing::warn!(error = %e, "{what}: the task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Runs on the interval, first at once or after one interval, hands results over in
    /// order, and ends when told (or when the sender goes).
    #[tokio::test(start_paused = true)]
    async fn runs_on_the_interval_until_stopped() {
        for (first, expected_at_start) in [(First::Now, 1), (First::AfterInterval, 0)] {
            let runs = Arc::new(AtomicU32::new(0));
            let (stop, stopped) = watch::channel(false);
            let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
            let counted = runs.clone();
            let task = every_blocking(
                Duration::from_secs(10),
                first,
                stopped,
                "test",
                move || counted.fetch_add(1, Ordering::SeqCst) + 1,
                move |n| seen_tx.send(n).unwrap(),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            while seen.try_recv().is_ok() {}
            assert_eq!(runs.load(Ordering::SeqCst), expected_at_start, "{first:?}");
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert_eq!(
                runs.load(Ordering::SeqCst),
                expected_at_start + 2,
                "{first:?}"
            );
            stop.send(true).unwrap();
            task.await.unwrap();
            let after = runs.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(runs.load(Ordering::SeqCst), after, "stopped");
        }
        // A dropped sender stops it too.
        let (stop, stopped) = watch::channel(false);
        let task = every_blocking(
            Duration::from_secs(1),
            First::Now,
            stopped,
            "test",
            || (),
            |()| {},
        );
        drop(stop);
        task.await.unwrap();
    }
}
