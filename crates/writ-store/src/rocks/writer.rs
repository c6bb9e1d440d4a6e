//! The store's one writer thread: group commit in user space for the writes a request
//! waits on (Mint, Downscope, revocation, a spent use; consent requests and redemptions,
//! which hold a token-id stripe across their write as inserts do).
//!
//! Each of those is a read-check-write under its transaction's lock. Handed to a
//! blocking-pool thread each, they then queued in RocksDB's write group for a leader to
//! sync for them: two thread wake-ups and a futex handshake per write, which profiles
//! showed as most of a durable write's CPU. Here the caller takes its transaction's lock
//! and sends the work to this thread, which runs jobs one after another in arrival order,
//! each writing its batch to the WAL and memtables without a sync; when nothing more is
//! waiting (or [`MAX_GROUP`] jobs have run) it syncs the WAL once and answers the whole
//! group. One fsync per group, groups formed by arrival, and a job's reads see every
//! earlier job's writes (no overlay needed: they are in the memtable).
//!
//! A write is visible before its group's fsync, but nothing is answered on the strength
//! of it until then: every job of a group (one that wrote nothing too) is answered after
//! the sync; a job's transaction lock is released only after it; an answer read outside
//! the writer rather than written ("revoked already", a retried Mint) first waits for
//! [`Writer::sync`]; and audit readers never see an event whose id is still pending. A
//! Validate may see a revocation or a spent use a little before it is acknowledged, never
//! after.
//!
//! A failed sync poisons the writer: every later job is refused until a restart, because a
//! later fsync can succeed although the pages the failed one held were dropped
//! ([`Writer::failed`] tells the server, which stops being ready and live). A job
//! that panics is answered with an error after its group, like the others, and empties
//! the hot tier (it may have written without telling it).

use super::{Durability, Inner};
use crate::api::StoreError;
use rocksdb::WriteOptions;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot, watch};

/// Jobs waiting for the writer before a caller waits for room.
const QUEUE: usize = 4096;
/// The most jobs answered by one sync.
pub(super) const MAX_GROUP: usize = 256;

/// Runs a job's work with the unsynced write options, or, given `None` (the writer is
/// poisoned), not at all; returns what answers its caller once the group's sync is known.
type Work = Box<dyn FnOnce(Option<(&Inner, &WriteOptions)>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    work: Work,
    /// The transaction's lock, released once the job is answered.
    lock: Option<OwnedMutexGuard<()>>,
    sync: WalSync,
}

/// When a job's group syncs the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WalSync {
    /// As the store's durability says.
    AsConfigured,
    /// Whatever the durability (a consent redemption: the user and the agent act on it
    /// at once).
    Always,
}

/// What the writer has done (metrics): the mean group is `jobs / groups`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Groups run, each ended by one sync of the WAL (none when durability is buffered and
    /// no job of the group asked for one).
    pub groups: u64,
    /// Jobs run in them (writes, and calls that found nothing to write).
    pub jobs: u64,
    /// A sync of the WAL failed: every write is refused until a restart.
    pub failed: bool,
}

struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    /// Set once a sync failed; watched by the server ([`Writer::failed`]).
    failed: watch::Sender<bool>,
    /// Tests: fail the next sync as a disk would.
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

/// The sending side, held by the store. Dropping it (the store closing) ends the thread
/// once the queue is empty.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the thread. It holds the store weakly: it upgrades for a group only, and
    /// lets go before answering, so a caller that drops the last handle after its answer
    /// closes the database at once.
    pub(super) fn start(store: Weak<Inner>) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters {
            groups: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            failed: watch::Sender::new(false),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        });
        let shared = counters.clone();
        std::thread::Builder::new()
            .name("writ-store-writer".into())
            .spawn(move || run(queue, store, &shared))
            .expect("spawning the store's writer thread");
        Writer { jobs, counters }
    }

    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            groups: self.counters.groups.load(Relaxed),
            jobs: self.counters.jobs.load(Relaxed),
            failed: *self.counters.failed.borrow(),
        }
    }

    /// Becomes true once a sync fails (every write is refused from then on until a
    /// restart); closed when the writer stops.
    pub(super) fn failed(&self) -> watch::Receiver<bool> {
        self.counters.failed.subscribe()
    }

    /// Runs `work` on the writer thread, holding `lock` (a transaction's) until it is
    /// answered: after the sync of the group it ran in (see [`WalSync`]). `work` writes with the options it is given (no
    /// sync of its own). Dropped before it is queued (the caller went away while the queue
    /// was full), nothing runs; once queued, it runs to the end.
    pub(super) fn submit<T, F>(
        &self,
        lock: Option<OwnedMutexGuard<()>>,
        sync: WalSync,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &WriteOptions) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            work: Box::new(move |run: Option<(&Inner, &WriteOptions)>| {
                let out = match run {
                    Some((inner, opts)) => catch_unwind(AssertUnwindSafe(|| work(inner, opts)))
                        .unwrap_or_else(|_| {
                            // What it wrote, it wrote whole (one batch), but perhaps
                            // without telling the hot tier: empty it.
                            tracing::error!("a store write panicked; the hot tier is emptied");
                            inner.hot.clear();
                            Err(StoreError::Task("a store write panicked".into()))
                        }),
                    None => Err(StoreError::Backend(POISONED.into())),
                };
                Box::new(move |synced: Result<(), StoreError>| {
                    // The caller may have gone: the write stands, nobody to tell.
                    let _ = answer.send(synced.and(out));
                })
            }),
            lock,
            sync,
        };
        let jobs = self.jobs.clone();
        async move {
            jobs.send(job)
                .await
                .map_err(|_| StoreError::Task("the store's writer has stopped".into()))?;
            answered.await.map_err(|_| {
                StoreError::Task("the store's writer dropped a job (it panicked)".into())
            })?
        }
    }

    /// Returns once every write the writer ran before the call is synced (per the store's
    /// durability): for an answer read rather than written.
    pub(super) fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.submit(None, WalSync::AsConfigured, |_, _| Ok(()))
    }
}

/// What a job is refused with once a sync has failed.
const POISONED: &str =
    "syncing the write-ahead log failed earlier; no write is accepted until a restart";

fn run(mut queue: mpsc::Receiver<Job>, store: Weak<Inner>, counters: &Counters) {
    let mut unsynced = WriteOptions::default();
    unsynced.set_sync(false);
    let mut poisoned = false;
    let mut group: Vec<(Answer, Option<OwnedMutexGuard<()>>)> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        let Some(inner) = store.upgrade() else {
            return; // closed while a job was queued: its caller hears the writer stopped
        };
        let mut next = Some(first);
        let mut sync = inner.durability == Durability::Sync;
        while let Some(job) = next.take() {
            let run = (!poisoned).then_some((&*inner, &unsynced));
            sync |= job.sync == WalSync::Always;
            // A job catches its own work's panic (`submit`); this is only a backstop.
            let work = job.work;
            let answer = catch_unwind(AssertUnwindSafe(|| work(run))).unwrap_or_else(|_| {
                inner.hot.clear();
                Box::new(|_| ())
            });
            // The lock is held until the group is synced, whatever happened.
            group.push((answer, job.lock));
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        let synced = if poisoned {
            Err(StoreError::Backend(POISONED.into()))
        } else if sync {
            sync_wal(&inner, counters).map_err(|e| {
                tracing::error!(error = %e, "syncing the write-ahead log failed: refusing every later write");
                poisoned = true;
                counters.failed.send_replace(true);
                StoreError::Backend(format!("syncing the write-ahead log failed: {e}"))
            })
        } else {
            Ok(())
        };
        drop(inner);
        counters.groups.fetch_add(1, Relaxed);
        counters.jobs.fetch_add(group.len() as u64, Relaxed);
        for (answer, lock) in group.drain(..) {
            answer(synced.clone());
            drop(lock);
        }
    }
}

fn sync_wal(inner: &Inner, _counters: &Counters) -> Result<(), String> {
    #[cfg(test)]
    if _counters.fail_next_sync.swap(false, Relaxed) {
        return Err("IO error: injected by a test".into());
    }
    inner
        .db
        .flush_wal(true)
        .map_err(rocksdb::Error::into_string)
}

#[cfg(test)]
impl Writer {
    /// Makes the next sync fail.
    pub(super) fn fail_next_sync(&self) {
        self.counters.fail_next_sync.store(true, Relaxed);
    }

    /// Jobs queued and not yet taken by the writer.
    pub(super) fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Occupies the writer until the returned sender is dropped (or sent to); returns once
    /// the writer is occupied.
    pub(super) async fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let job = self.submit(None, WalSync::AsConfigured, move |_, _| {
            let _ = started.send(());
            let _ = held.recv();
            Ok(())
        });
        tokio::spawn(job);
        running.await.expect("the writer ran the holding job");
        release
    }
}
