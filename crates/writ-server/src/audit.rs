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
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
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
/// How long the writer lets a batch gather before writing it, unless a flush is waiting
/// or the batch is full. Each write has a fixed cost (a blocking-pool hop, a WAL write);
/// a busy server validating 15k/s writes ~15 events per write instead of one or two.
const LINGER: Duration = Duration::from_millis(1);

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<Result<(), AuditLost>>),
}

/// Issues strictly increasing event ids that are also microsecond timestamps, and
/// remembers which are issued but not yet settled (stored, or abandoned).
#[derive(Debug, Default)]
struct Issuer {
    last: u64,
    pending: BTreeSet<u64>,
}

impl Issuer {
    fn issue(&mut self, now_us: u64) -> EventId {
        self.last = now_us.max(self.last.saturating_add(1));
        self.pending.insert(self.last);
        EventId(self.last)
    }
}

type Shared = Arc<Mutex<Issuer>>;

fn lock(issuer: &Mutex<Issuer>) -> MutexGuard<'_, Issuer> {
    // Every critical section is a single insert or remove: a poisoned lock still holds
    // consistent data.
    issuer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An event id issued and not yet settled. While it is pending, readers see no event with
/// a later id ([`Audit::visible_before`]), so a reader paging by id never skips an event
/// that commits late. Dropping it settles it: do so once its event is stored (or will
/// not be); [`Audit::record`] hands it to the writer instead.
#[must_use = "an unsettled id hides every later event from readers until dropped"]
#[derive(Debug)]
pub struct Pending {
    issuer: Shared,
    id: EventId,
    armed: bool,
}

impl Pending {
    /// The id.
    pub fn id(&self) -> EventId {
        self.id
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.issuer).pending.remove(&self.id.0);
        }
    }
}

/// The audit trail as the service and the chain queries see it.
#[derive(Debug)]
pub struct Audit {
    issuer: Shared,
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
        let issuer = Arc::new(Mutex::new(Issuer {
            last,
            pending: BTreeSet::new(),
        }));
        let audit = Arc::new(Audit {
            issuer: issuer.clone(),
            queue,
            live: live.clone(),
        });
        let writer = tokio::spawn(write_loop(store, rx, live, issuer));
        Ok((audit, writer))
    }

    /// A new event id, later than every id issued before it by this server, pending
    /// until the returned guard is dropped or recorded.
    pub fn issue(&self) -> Pending {
        let id = lock(&self.issuer).issue(now_micros());
        Pending {
            issuer: self.issuer.clone(),
            id,
            armed: true,
        }
    }

    /// Events with ids below this are all stored or abandoned; later ones may still be
    /// on their way. Take it before reading the trail and show only what is below it.
    pub fn visible_before(&self) -> EventId {
        EventId(
            lock(&self.issuer)
                .pending
                .first()
                .copied()
                .unwrap_or(u64::MAX),
        )
    }

    /// Announces an event the store has already written (with its token change).
    pub fn publish(&self, event: Event) {
        // No watcher is not an error.
        let _ = self.live.send(Arc::new(event));
    }

    /// Queues `event` (whose id `pending` issued) for the writer, which settles the id
    /// once the event is stored. Waits only when the queue is full.
    pub async fn record(&self, mut pending: Pending, event: Event) {
        debug_assert_eq!(pending.id, event.id);
        pending.armed = false;
        if self.queue.send(Msg::Event(event)).await.is_err() {
            tracing::error!("audit writer has stopped; an event was not recorded");
            lock(&self.issuer).pending.remove(&pending.id.0);
        }
    }

    /// Waits until every event queued before this call is stored. `Err` if the writer
    /// had to drop events since the previous flush, or has stopped.
    pub async fn flush(&self) -> Result<(), AuditLost> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| AuditLost)?;
        rx.await.map_err(|_| AuditLost)?
    }

    /// A feed of every event stored from now on, in roughly (not strictly) id order:
    /// events stored with their token change are announced at once, queued ones when
    /// their batch is written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }
}

/// The audit writer could not store some events (the store kept failing), or has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit events could not be stored; the trail may be incomplete")]
pub struct AuditLost;

/// Attempts to store one batch before its events are given up (with an error logged).
const WRITE_ATTEMPTS: u32 = 8;

async fn write_loop<S: TokenStore>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Msg>,
    live: broadcast::Sender<Arc<Event>>,
    issuer: Shared,
) {
    let mut msgs = Vec::with_capacity(WRITE_BATCH);
    let mut lost = false;
    // Whatever arrived while the previous write was in flight goes in the next one.
    while rx.recv_many(&mut msgs, WRITE_BATCH).await > 0 {
        let flushing = msgs.iter().any(|m| matches!(m, Msg::Flush(_)));
        if msgs.len() < WRITE_BATCH && !flushing {
            tokio::time::sleep(LINGER).await;
            while msgs.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
        }
        let mut events = Vec::with_capacity(msgs.len());
        let mut flushes = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            let ids: Vec<u64> = events.iter().map(|e| e.id.0).collect();
            // Copy the batch for the feed only when someone is watching.
            let watched = (live.receiver_count() > 0).then(|| events.clone());
            let mut attempt = 0;
            let stored = loop {
                match store.append_events(events.clone()).await {
                    Ok(()) => break true,
                    Err(e) if attempt + 1 < WRITE_ATTEMPTS => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "storing audit events failed; retrying");
                        tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = events.len(), "audit events could not be stored and were dropped");
                        break false;
                    }
                }
            };
            {
                let mut issuer = lock(&issuer);
                for id in ids {
                    issuer.pending.remove(&id);
                }
            }
            if stored {
                for e in watched.into_iter().flatten() {
                    let _ = live.send(Arc::new(e));
                }
            } else {
                lost = true;
            }
        }
        for done in flushes {
            let _ = done.send(if std::mem::take(&mut lost) {
                Err(AuditLost)
            } else {
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_store::MemoryStore;

    #[test]
    fn event_ids_strictly_increase_even_when_the_clock_is_behind() {
        let mut issuer = Issuer {
            last: 5_000,
            pending: BTreeSet::new(),
        };
        assert_eq!(issuer.issue(1_000), EventId(5_001));
        assert_eq!(issuer.issue(1_000), EventId(5_002));
        assert_eq!(issuer.issue(9_000), EventId(9_000));
        assert_eq!(issuer.issue(9_000), EventId(9_001));
        assert_eq!(issuer.pending.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ids_are_unique_across_threads_and_hide_later_events_until_settled() {
        let (audit, writer) = Audit::start(Arc::new(MemoryStore::new())).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let audit = audit.clone();
            tasks.push(tokio::spawn(async move {
                (0..500).map(|_| audit.issue().id().0).collect::<Vec<u64>>()
            }));
        }
        let mut all = BTreeSet::new();
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(all.insert(id), "id {id} issued twice");
            }
        }
        assert_eq!(all.len(), 4000);
        // Every guard above was dropped: nothing is pending.
        assert_eq!(audit.visible_before(), EventId(u64::MAX));
        let first = audit.issue();
        let second = audit.issue();
        assert_eq!(audit.visible_before(), first.id());
        drop(first);
        assert_eq!(audit.visible_before(), second.id());
        drop(second);
        assert_eq!(audit.visible_before(), EventId(u64::MAX));
        drop(audit);
        writer.await.unwrap();
    }
}
