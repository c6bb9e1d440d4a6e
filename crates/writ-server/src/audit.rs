//! The audit trail's moving parts: the clock that issues event ids, the background writer
//! that appends events which accompany no token change (validated, refused) in batches
//! off the request path, and the live feed that WatchEvents streams from.
//!
//! Minted, downscoped and revoked events are written by the store in the same atomic
//! write as the token change they describe, so the trail never misses one that landed.
//! The service runs such a write through [`commit`](Audit::commit), in a task of its own:
//! a request that goes away mid-write (a client deadline, a reset stream) still gets its
//! event announced and its id settled once the write lands. Validated and refused events
//! go through [`record`](Audit::record): queued (bounded, so a slow disk slows Validate
//! rather than dropping evidence) and written by one task in batches, which group-commits
//! them; a `record` cancelled while it waits for room settles its id and queues nothing.
//! Watchers only ever see events that are stored. A crash can lose the events still
//! queued (milliseconds' worth); [`flush`](Audit::flush) waits until everything queued
//! before it is stored, so a ListEvents reads what the server has answered.

use crate::service::now_micros;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use writ_core::{Event, EventId};
use writ_store::{StoreError, TokenStore, UseOutcome};

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

// Events travel by value: boxing them would cost an allocation per validation recorded.
#[allow(clippy::large_enum_variant)]
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
/// not be); [`Audit::record`] and [`Audit::commit`] settle it themselves.
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

/// Where nodes that share a store announce the events they stored to each other (the
/// live feed across nodes); each node reads the others' and hands them to
/// [`Audit::announce_remote`].
pub trait SharedFeed: Send + Sync + std::fmt::Debug {
    /// Announces `events`, stored already; failures are logged, not returned (the trail
    /// holds the events; only live watchers elsewhere miss them).
    fn announce(&self, events: Vec<Event>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The feed across nodes, once set, and whether a node elsewhere has watchers (only then
/// are events announced).
#[derive(Debug, Default)]
struct FeedState {
    feed: std::sync::OnceLock<Arc<dyn SharedFeed>>,
    wanted: std::sync::atomic::AtomicBool,
}

type Feed = Arc<FeedState>;

/// The audit trail as the service and the chain queries see it.
#[derive(Debug)]
pub struct Audit {
    issuer: Shared,
    queue: mpsc::Sender<Msg>,
    live: broadcast::Sender<Arc<Event>>,
    /// The feed across nodes, on a shared store.
    feed: Feed,
    /// Counts the times the feed across nodes lost events before this node read them:
    /// every watcher ends then.
    gaps: tokio::sync::watch::Sender<u64>,
}

impl Audit {
    /// Starts the writer over `store`. Ids continue after the last stored event, so they
    /// keep increasing across restarts even if the wall clock stepped back. The writer
    /// stops once every `Audit` handle is dropped and the queue is drained; await the
    /// returned handle to know that queued events are stored.
    pub async fn start<S: TokenStore>(
        store: Arc<S>,
    ) -> Result<(Arc<Audit>, JoinHandle<()>), StoreError> {
        Audit::start_with_capacity(store, QUEUE).await
    }

    /// [`start`](Audit::start) with a queue of `capacity` events (tests fill it).
    pub(crate) async fn start_with_capacity<S: TokenStore>(
        store: Arc<S>,
        capacity: usize,
    ) -> Result<(Arc<Audit>, JoinHandle<()>), StoreError> {
        let last = store.last_event_id().await?.map_or(0, |id| id.0);
        let (queue, rx) = mpsc::channel(capacity);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let issuer = Arc::new(Mutex::new(Issuer {
            last,
            pending: BTreeSet::new(),
        }));
        let feed: Feed = Arc::default();
        let audit = Arc::new(Audit {
            issuer: issuer.clone(),
            queue,
            live: live.clone(),
            feed: feed.clone(),
            gaps: tokio::sync::watch::Sender::new(0),
        });
        let writer = tokio::spawn(write_loop(store, rx, live, issuer, feed));
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
        announce_shared(&self.feed, std::slice::from_ref(&event));
        // No watcher is not an error.
        let _ = self.live.send(Arc::new(event));
    }

    /// From now on, also announces every stored event on `feed` (a store other nodes
    /// share). Set once, at start.
    pub fn share(&self, feed: Arc<dyn SharedFeed>) {
        let _ = self.feed.feed.set(feed);
    }

    /// Whether a node elsewhere has watchers, so this node announces what it stores.
    pub fn feed_wanted(&self, wanted: bool) {
        self.feed
            .wanted
            .store(wanted, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many watchers this node has.
    pub fn watchers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Hands events another node stored to this node's watchers.
    pub fn announce_remote(&self, events: Vec<Event>) {
        for e in events {
            let _ = self.live.send(Arc::new(e));
        }
    }

    /// The feed across nodes lost events before this node read them: every watcher is
    /// ended (it reads the gap with ListEvents).
    pub fn feed_lost(&self) {
        self.gaps.send_modify(|n| *n += 1);
    }

    /// Changes each time the feed across nodes lost events ([`feed_lost`](Self::feed_lost)).
    pub fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gaps.subscribe()
    }

    /// Queues `event` (whose id `pending` issued) for the writer, which settles the id
    /// once the event is stored. Waits only when the queue is full. Cancel-safe: the id
    /// passes to the writer only together with a place in the queue, so a caller that
    /// goes away while waiting settles it (and the event is not recorded).
    pub async fn record(&self, mut pending: Pending, event: Event) {
        debug_assert_eq!(pending.id, event.id);
        match self.queue.reserve().await {
            Ok(place) => {
                pending.armed = false;
                place.send(Msg::Event(event));
            }
            // `pending` drops armed: settled.
            Err(_) => tracing::error!("audit writer has stopped; an event was not recorded"),
        }
    }

    /// Runs `write`, a store write that carries `event` (whose id `pending` issued; or that
    /// builds it, see [`Written::stored_event`]), on
    /// `store` in a task of its own, so it runs to the end even if the caller goes away;
    /// once it has written the event, announces it to watchers and settles the id.
    /// Returns the write's result and, if the event was not written, the id still
    /// pending (record another event under it, or drop it to settle it).
    pub async fn commit<S, T, W, F>(
        &self,
        pending: Option<Pending>,
        event: Option<Event>,
        store: &Arc<S>,
        write: W,
    ) -> (Result<T, StoreError>, Option<Pending>)
    where
        S: TokenStore,
        T: Written + Send + 'static,
        W: FnOnce(Arc<S>) -> F + Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let live = self.live.clone();
        let feed = self.feed.clone();
        let store = store.clone();
        let task = tokio::spawn(async move {
            let result = write(store).await;
            if !result.as_ref().is_ok_and(Written::written) {
                return (result, pending);
            }
            let stored = result.as_ref().ok().and_then(Written::stored_event);
            if let Some(event) = event.or(stored) {
                announce_shared(&feed, std::slice::from_ref(&event));
                // No watcher is not an error.
                let _ = live.send(Arc::new(event));
            }
            drop(pending);
            (result, None)
        });
        match task.await {
            Ok(done) => done,
            // The task panicked (its `pending` was dropped, settled) or the runtime is
            // shutting down: whether the write landed is unknown.
            Err(e) => (Err(StoreError::Task(e.to_string())), None),
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

    /// Events queued for the writer and not yet taken (metrics).
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// A feed of every event stored from now on, in roughly (not strictly) id order:
    /// events stored with their token change are announced at once, queued ones when
    /// their batch is written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }
}

/// Announces stored `events` on the feed across nodes, if there is one, off the caller's
/// path.
fn announce_shared(feed: &Feed, events: &[Event]) {
    if let Some(shared) = feed.feed.get()
        && wanted(feed)
    {
        tokio::spawn(shared.announce(events.to_vec()));
    }
}

/// Whether events are announced across nodes now.
fn wanted(feed: &Feed) -> bool {
    feed.feed.get().is_some() && feed.wanted.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a store write's result means its event was written with it.
pub trait Written {
    /// True if the event went into the store with this outcome.
    fn written(&self) -> bool;

    /// The event the store built and wrote itself, if it did (a revocation's, which says
    /// how many tokens it made inactive).
    fn stored_event(&self) -> Option<Event> {
        None
    }
}

/// revoke writes its own event, and none when nothing was newly revoked.
impl Written for writ_store::Revoked {
    fn written(&self) -> bool {
        self.event.is_some()
    }

    fn stored_event(&self) -> Option<Event> {
        self.event.clone()
    }
}

/// Insert, insert_child: a success wrote the event.
impl Written for () {
    fn written(&self) -> bool {
        true
    }
}

/// consume_use writes the event only with the use it spent.
impl Written for UseOutcome {
    fn written(&self) -> bool {
        matches!(self, UseOutcome::Consumed { .. })
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
    feed: Feed,
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
            // Copy the batch for the feed only when someone is watching (here, or on
            // another node).
            let watched = (live.receiver_count() > 0 || wanted(&feed)).then(|| events.clone());
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
                if let Some(batch) = &watched {
                    announce_shared(&feed, batch);
                }
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
    use std::future::poll_fn;
    use std::pin::pin;
    use std::task::Poll;
    use tokio::sync::watch;
    use writ_core::policy::Role;
    use writ_core::{
        ActorKind, AuthMethod, ClientType, EventKind, KeyRing, Party, ServerKey, TokenId,
        TokenRecord, TokenState, TxnId, UnixMillis,
    };
    use writ_store::{
        MemoryStore, PurgeStats, RevokeTarget, Revoked, StoreStats, TxnPage, TxnQuery,
    };

    /// A [`MemoryStore`] whose `insert` and `append_events` wait until the gate opens.
    /// Like RocksStore's, a gated write runs detached: dropping its future does not
    /// cancel it. Every other method is forwarded.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<MemoryStore>,
        open: watch::Sender<bool>,
        /// Gated writes called so far.
        entered: watch::Sender<usize>,
    }

    impl Gated {
        fn new() -> Arc<Gated> {
            Arc::new(Gated {
                inner: Arc::new(MemoryStore::new()),
                open: watch::Sender::new(false),
                entered: watch::Sender::new(0),
            })
        }

        fn open(&self) {
            self.open.send_replace(true);
        }

        /// Resolves once `n` gated writes have been called.
        async fn entered(&self, n: usize) {
            let _ = self.entered.subscribe().wait_for(|c| *c >= n).await;
        }

        fn gated<T: Send + 'static>(
            &self,
            write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
        ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
            let mut open = self.open.subscribe();
            self.entered.send_modify(|n| *n += 1);
            let task = tokio::spawn(async move {
                let _ = open.wait_for(|o| *o).await;
                write.await
            });
            async move { task.await.map_err(|e| StoreError::Task(e.to_string()))? }
        }
    }

    impl TokenStore for Gated {
        fn insert(
            &self,
            record: TokenRecord,
            event: Event,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            let inner = self.inner.clone();
            self.gated(async move { inner.insert(record, event).await })
        }
        fn get(
            &self,
            id: TokenId,
        ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
            self.inner.get(id)
        }
        fn sync(&self, txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.inner.sync(txn)
        }
        fn txn_tree(
            &self,
            txn: TxnId,
        ) -> impl Future<Output = Result<Vec<writ_store::TreeEntry>, StoreError>> + Send {
            self.inner.txn_tree(txn)
        }
        fn state(
            &self,
            id: TokenId,
        ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send {
            self.inner.state(id)
        }
        fn get_with_state(
            &self,
            id: TokenId,
        ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send
        {
            self.inner.get_with_state(id)
        }
        fn insert_child(
            &self,
            record: TokenRecord,
            max_children: u32,
            event: Event,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.inner.insert_child(record, max_children, event)
        }
        fn revoke(
            &self,
            target: RevokeTarget,
            by: writ_core::Actor,
            reason: String,
            event: EventId,
        ) -> impl Future<Output = Result<Revoked, StoreError>> + Send {
            let inner = self.inner.clone();
            self.gated(async move { inner.revoke(target, by, reason, event).await })
        }
        fn revoke_party(
            &self,
            party: String,
            by: writ_core::Actor,
            reason: String,
            events: Arc<dyn writ_store::EventIssuer>,
        ) -> impl Future<Output = Result<writ_store::PartyRevoked, StoreError>> + Send {
            self.inner.revoke_party(party, by, reason, events)
        }
        fn set_party_disabled(
            &self,
            party: String,
            disabled: Option<writ_core::PartyDisable>,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.inner.set_party_disabled(party, disabled)
        }
        fn disabled_parties(
            &self,
        ) -> impl Future<Output = Result<Vec<(String, writ_core::PartyDisable)>, StoreError>> + Send
        {
            self.inner.disabled_parties()
        }
        fn consume_use(
            &self,
            id: TokenId,
            event: Option<Event>,
        ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
            self.inner.consume_use(id, event)
        }
        fn purge_expired(
            &self,
            cutoff: UnixMillis,
            max_tokens: usize,
        ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
            self.inner.purge_expired(cutoff, max_tokens)
        }
        fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
            self.inner.stats()
        }
        fn list_txns(
            &self,
            query: TxnQuery,
        ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send {
            self.inner.list_txns(query)
        }
        fn append_events(
            &self,
            events: Vec<Event>,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            let inner = self.inner.clone();
            self.gated(async move { inner.append_events(events).await })
        }
        fn events(
            &self,
            txn: TxnId,
            after: Option<EventId>,
            limit: usize,
        ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
            self.inner.events(txn, after, limit)
        }
        fn last_event_id(
            &self,
        ) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
            self.inner.last_event_id()
        }
        fn purge_events(
            &self,
            cutoff: UnixMillis,
            max_events: usize,
        ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
            self.inner.purge_events(cutoff, max_events)
        }
        fn insert_consent(
            &self,
            request: writ_core::ConsentRequest,
            event: Event,
        ) -> impl Future<Output = Result<writ_store::ConsentInsert, StoreError>> + Send {
            self.inner.insert_consent(request, event)
        }
        fn consent(
            &self,
            id: writ_core::ConsentId,
        ) -> impl Future<Output = Result<Option<writ_core::ConsentRequest>, StoreError>> + Send
        {
            self.inner.consent(id)
        }
        fn consent_by_key(
            &self,
            key: [u8; 32],
        ) -> impl Future<Output = Result<Option<writ_core::ConsentRequest>, StoreError>> + Send
        {
            self.inner.consent_by_key(key)
        }
        fn decide_consent(
            &self,
            id: writ_core::ConsentId,
            decision: writ_core::Decision,
            event: Event,
        ) -> impl Future<Output = Result<writ_core::ConsentRequest, StoreError>> + Send {
            self.inner.decide_consent(id, decision, event)
        }
        fn redeem_consent(
            &self,
            id: writ_core::ConsentId,
            by: String,
            child: TokenRecord,
            max_children: u32,
            event: Event,
        ) -> impl Future<Output = Result<writ_core::ConsentRequest, StoreError>> + Send {
            self.inner
                .redeem_consent(id, by, child, max_children, event)
        }
        fn expire_consents(
            &self,
            now: UnixMillis,
            max: usize,
            by: writ_core::Actor,
            events: Arc<dyn writ_store::EventIssuer>,
        ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send {
            self.inner.expire_consents(now, max, by, events)
        }
        fn purge_consents(
            &self,
            cutoff: UnixMillis,
            max: usize,
        ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
            self.inner.purge_consents(cutoff, max)
        }
        fn list_consents(
            &self,
            query: writ_store::ConsentQuery,
        ) -> impl Future<Output = Result<writ_store::ConsentPage, StoreError>> + Send {
            self.inner.list_consents(query)
        }
    }

    fn txn() -> TxnId {
        TxnId::new(UnixMillis(1), [9; 10])
    }

    /// A validated event of [`txn`] under `id`.
    fn validated(id: EventId) -> Event {
        Event {
            id,
            txn: txn(),
            subject: "alice".into(),
            token: None,
            actor: "booking".into(),
            kind: EventKind::Validated {
                action: None,
                result: "inactive".into(),
                detail: "wrong_audience".into(),
            },
            auth: None,
        }
    }

    /// Finding 5: a `record` dropped while it waits for room in a full queue must settle
    /// its id. It used to disarm the id first, leak it, and hide every later event from
    /// ListEvents until a restart.
    #[tokio::test]
    async fn a_record_cancelled_on_a_full_queue_does_not_hide_later_events() {
        let store = Gated::new();
        let (audit, writer) = Audit::start_with_capacity(store.clone(), 1).await.unwrap();
        // The writer takes the first event and waits in `append_events`...
        let first = audit.issue();
        let first_id = first.id();
        audit.record(first, validated(first_id)).await;
        store.entered(1).await;
        // ...the second fills the queue (of one)...
        let second = audit.issue();
        let e = validated(second.id());
        audit.record(second, e).await;
        // ...and the third waits for room: poll it once, then give up on it.
        let third = audit.issue();
        let third_id = third.id();
        {
            let mut waiting = pin!(audit.record(third, validated(third_id)));
            let polled = poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the queue is full, so record waits");
        }
        assert_eq!(
            audit.visible_before(),
            first_id,
            "the first is still being written"
        );
        store.open();
        audit.flush().await.unwrap();
        let visible = audit.visible_before();
        assert!(
            visible > third_id,
            "the cancelled record's id was leaked: {visible:?}"
        );
        // Events recorded afterwards become visible.
        let later = audit.issue();
        let later_id = later.id();
        audit.record(later, validated(later_id)).await;
        audit.flush().await.unwrap();
        assert!(later_id < audit.visible_before());
        let stored: Vec<EventId> = store
            .events(txn(), None, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            stored.len(),
            3,
            "first, second and later; not the cancelled one"
        );
        assert!(!stored.contains(&third_id) && stored.contains(&later_id));
        drop(audit);
        writer.await.unwrap();
    }

    /// A service over `store` and `audit`, signing with a fixed key.
    fn service_over(store: &Arc<Gated>, audit: &Arc<Audit>) -> crate::service::Service<Gated> {
        crate::service::Service::new(
            store.clone(),
            test_keys(),
            writ_core::narrow::Policy::default(),
            "example.org".into(),
            16,
            audit.clone(),
            crate::config::ValidationEvents::All,
        )
        // Parties named by short ids, as in development mode.
        .with_policy(
            crate::policy::PolicyHandle::development("example.org"),
            true,
        )
    }

    fn test_keys() -> KeyRing {
        KeyRing::new(vec![ServerKey {
            id: 1,
            key: [7; 32],
        }])
        .unwrap()
    }

    /// alice's transaction for `planner`.
    fn planner_mint() -> writ_core::narrow::MintRequest {
        writ_core::narrow::MintRequest {
            targets: ["booking".to_string()].into(),
            ..crate::service::tests::mint_to("planner")
        }
    }

    /// Drops a store call while `store` holds it, then opens the gate: the call's event
    /// must still reach `live` under the id that stayed pending, and the id must settle.
    async fn cancelled_mid_write_still_lands<F: Future>(
        store: &Gated,
        audit: &Audit,
        live: &mut broadcast::Receiver<Arc<Event>>,
        call: F,
    ) -> Arc<Event> {
        let mut call = Box::pin(call);
        tokio::select! {
            _ = &mut call => panic!("the call finished while its write was held"),
            () = store.entered(1) => {}
        }
        drop(call);
        let held = audit.visible_before();
        assert_ne!(held, EventId(u64::MAX), "the event's id stays pending");
        assert!(
            live.try_recv().is_err(),
            "nothing is announced before it is stored"
        );
        store.open();
        let event = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("the event reaches the watcher")
            .unwrap();
        assert_eq!(event.id, held);
        for _ in 0..100 {
            if audit.visible_before() > event.id {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(audit.visible_before() > event.id, "the id is settled");
        event
    }

    /// Finding 11: a Mint whose request goes away while the store writes must still
    /// announce its event to watchers and keep its id pending until the write lands.
    /// It used to settle the id at once and never publish.
    #[tokio::test]
    async fn a_mint_cancelled_mid_write_still_reaches_watchers() {
        let store = Gated::new();
        let (audit, writer) = Audit::start(store.clone()).await.unwrap();
        let mut live = audit.subscribe();
        let service = service_over(&store, &audit);
        let caller = crate::auth::Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]);
        let mint = service.mint(&caller, planner_mint(), None);
        let event = cancelled_mid_write_still_lands(&store, &audit, &mut live, mint).await;
        assert!(matches!(event.kind, EventKind::Minted { .. }), "{event:?}");
        let token = event.token.unwrap();
        assert!(
            store.get(token).await.unwrap().is_some(),
            "the token landed"
        );
        drop(service);
        drop(audit);
        writer.await.unwrap();
    }

    /// Finding 11 for Revoke: a revocation dropped mid-write still lands, reaches watchers
    /// and settles its id.
    #[tokio::test]
    async fn a_revoke_cancelled_mid_write_still_reaches_watchers() {
        use writ_api::convert::RevokeTarget as Target;
        use writ_core::narrow::{self, NewToken};

        let store = Gated::new();
        let (audit, writer) = Audit::start(store.clone()).await.unwrap();
        let (_, token) = test_keys().issue([9; 32]);
        let now = crate::service::now();
        let new = NewToken {
            token,
            txn: writ_core::TxnId::new(now, [1; 10]),
            now,
            idempotency: None,
            auth: AuthMethod::Bearer,
        };
        let gw = Party {
            id: "gw".into(),
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        let policy = writ_core::narrow::Policy::default();
        let root = narrow::mint(planner_mint(), gw, "example.org", &policy, new).unwrap();
        let minted = Event::minted(audit.issue().id(), &root);
        // Straight into the store behind the gate.
        store.inner.insert(root.clone(), minted).await.unwrap();
        let service = service_over(&store, &audit);
        let mut live = audit.subscribe();
        let operator = crate::auth::Caller::known("ops", AuthMethod::Bearer, &[Role::Operator]);
        let revoke = service.revoke(&operator, Target::TokenId(root.token_id), "leaked".into());
        let event = cancelled_mid_write_still_lands(&store, &audit, &mut live, revoke).await;
        assert!(
            matches!(event.kind, EventKind::Revoked { revoked: 1, .. }),
            "{event:?}"
        );
        let state = store.state(root.token_id).await.unwrap().unwrap();
        assert!(state.revoked.is_some(), "the revocation landed");
        drop(service);
        drop(audit);
        writer.await.unwrap();
    }

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
