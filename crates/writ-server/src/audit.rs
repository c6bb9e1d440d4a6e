//! The audit trail's moving parts: the clock that issues event ids, the background writer
//! that appends events which accompany no token change (validated, refused) in batches
//! off the request path, and the live feed that WatchEvents streams from.
//!
//! Minted, downscoped and revoked events are written by the store in the same atomic
//! write as the token change they describe, so the trail never misses one that landed;
//! the service only [`publish`](Audit::publish)es them. Validated and refused events go
//! through [`record`](Audit::record): queued (bounded, so a slow disk slows Validate
//! rather than dropping evidence) and written by one task in batches, which group-commits
//! them. Watchers only ever see events that are stored. A crash can lose the events
//! still queued (milliseconds' worth); [`flush`](Audit::flush) waits until everything
//! queued before it is stored, so a ListEvents reads what the server has answered.

use crate::service::now_micros;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use writ_core::{Event, EventId};
use writ_store::{StoreError, TokenStore};

/// Events queued for the writer before `record` waits.
const QUEUE: usize = 16 * 1024;
/// Most events the writer appends in one write.
const WRITE_BATCH: usize = 4096;
/// Events a watcher may fall behind before its stream is ended.
pub const LIVE_BUFFER: usize = 4096;

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// Issues strictly increasing event ids that are also microsecond timestamps.
#[derive(Debug)]
struct EventClock {
    last: AtomicU64,
}

impl EventClock {
    fn next(&self) -> EventId {
        let now = now_micros();
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        EventId(now.max(prev.saturating_add(1)))
    }
}

/// The audit trail as the service and the chain queries see it.
#[derive(Debug)]
pub struct Audit {
    clock: EventClock,
    queue: mpsc::Sender<Msg>,
    live: broadcast::Sender<Arc<Event>>,
}

impl Audit {
    /// Starts the writer over `store`. Ids continue after the last stored event, so they
    /// keep increasing across restarts even if the wall clock stepped back. The writer
    /// stops once every `Audit` handle is dropped and the queue is drained; await the
    /// returned handle to know that queued events are stored.
    pub async fn start<S: TokenStore>(
        store: Arc<S>,
    ) -> Result<(Arc<Audit>, JoinHandle<()>), StoreError> {
        let last = store.last_event_id().await?.map_or(0, |id| id.0);
        let (queue, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let audit = Arc::new(Audit {
            clock: EventClock {
                last: AtomicU64::new(last),
            },
            queue,
            live: live.clone(),
        });
        let writer = tokio::spawn(write_loop(store, rx, live));
        Ok((audit, writer))
    }

    /// A new event id: later than every id issued before it by this server.
    pub fn next_id(&self) -> EventId {
        self.clock.next()
    }

    /// Announces an event the store has already written (with its token change).
    pub fn publish(&self, event: Event) {
        // No watcher is not an error.
        let _ = self.live.send(Arc::new(event));
    }

    /// Queues an event for the writer. Waits only when the queue is full.
    pub async fn record(&self, event: Event) {
        if self.queue.send(Msg::Event(event)).await.is_err() {
            tracing::error!("audit writer has stopped; an event was not recorded");
        }
    }

    /// Waits until every event queued before this call is stored (or failed to be).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A feed of every event stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }
}

async fn write_loop<S: TokenStore>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Msg>,
    live: broadcast::Sender<Arc<Event>>,
) {
    let mut msgs = Vec::with_capacity(WRITE_BATCH);
    // Whatever arrived while the previous write was in flight goes in the next one.
    while rx.recv_many(&mut msgs, WRITE_BATCH).await > 0 {
        let mut events = Vec::with_capacity(msgs.len());
        let mut flushes = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            let n = events.len();
            // Copy the batch for the feed only when someone is watching.
            let watched = (live.receiver_count() > 0).then(|| events.clone());
            match store.append_events(events).await {
                Ok(()) => {
                    for e in watched.into_iter().flatten() {
                        let _ = live.send(Arc::new(e));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, events = n, "audit events could not be stored");
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_strictly_increase_even_when_the_clock_is_behind() {
        let far_future = now_micros() + 60_000_000;
        let clock = EventClock {
            last: AtomicU64::new(far_future),
        };
        let a = clock.next();
        let b = clock.next();
        assert_eq!(a, EventId(far_future + 1));
        assert!(b > a);
        let fresh = EventClock {
            last: AtomicU64::new(0),
        };
        let c = fresh.next();
        assert!(c.0 + 5_000_000 > now_micros(), "close to the wall clock");
    }
}
