//! [`RocksStore`]: the embedded, durable [`TokenStore`], on RocksDB.
//!
//! One column family per key space (see `keys`). Every engine call is blocking, so
//! none runs on an async worker but point reads that memtable and block cache can
//! answer (Validate's, the record read a mutation starts with, a retry's lookup). The
//! writes a request waits on (insert, insert_child, revoke, a spent use, a consent
//! request or redemption) run on the store's one writer thread (`writer`), which
//! group-commits them: one WAL sync per group of whatever arrived meanwhile. Everything
//! else runs on Tokio's blocking pool, where concurrent synced writes share fsyncs
//! through RocksDB's own write group.
//!
//! State mutations read, check and write under a lock striped by transaction id (every
//! token of a call tree shares its transaction), each in one `WriteBatch`. So a child
//! derived while an ancestor is being revoked is either inserted before the revocation
//! walks the `children` index (and revoked with the subtree) or sees its parent revoked
//! and is refused. The stripe is an async mutex, awaited *before* the hand-off to the
//! writer or the blocking pool; its owned guard moves with the work and is dropped once
//! the write is synced. A waiter therefore holds no thread: however many mutations of one
//! transaction queue up, the rest of the store goes on. A mutation that names a token
//! first reads its (immutable) record to learn the transaction, then re-checks under the
//! lock that it still exists. Token-id uniqueness across transactions is kept by a
//! second, short lock striped by id, taken after the transaction's around the id's check
//! and the write.
//!
//! [`TokenStore::revoke_party`] (the kill switch) walks the party's `party_txns` entries a
//! page at a time and revokes in each transaction under that transaction's lock, like
//! `revoke`, in one `WriteBatch` with its event. Up to 8 transactions are in hand at once,
//! each in a task holding only its own stripe, so their synced writes share fsyncs and one
//! busy transaction holds up only itself.
//!
//! [`TokenStore::purge_expired`] deletes expired tokens in passes of up to 256: each
//! pass groups its tokens by lock stripe and deletes each group in its own `WriteBatch`
//! under that stripe alone (never two at once), then syncs the WAL once. The space of
//! the deleted keys comes back through RocksDB's background compaction, or at once
//! through [`RocksStore::compact_all`].
//!
//! Consent requests (`consents` and its three indexes, see `keys`) change under their
//! transaction's lock too, each change in one `WriteBatch` with its audit event. Redeeming
//! one writes the child token exactly as `insert_child` does (`stage_child`), the
//! request as redeemed and the event, in one synced batch. The expiry sweep walks the
//! `consent_open` index in expiry order and marks each request under its transaction's
//! lock, one write (with its event) each; the consent purge walks `consents` oldest first
//! and, like the token purge, deletes group by lock stripe.
//!
//! Durability rests on the write-ahead log, which is never disabled: an acknowledged
//! insert is in the WAL (and, with [`Durability::Sync`], on disk), and RocksDB replays
//! the WAL on the next open. A write of the writer's group in hand is visible before its
//! sync, but nothing is answered on the strength of it until then (see `writer`; reads
//! that answer for a write call [`TokenStore::sync`]).
//!
//! Layout, by concern: this file opens the store (column families, options, the lock
//! stripes, the hand-offs) and implements [`TokenStore`] by calling the blocking
//! functions of `schema` (version check and upgrades), `tokens` (records, states,
//! children, uses, reads from memory), `revoke` (subtrees and the kill switch), `cleanup`
//! (expired tokens, statistics), `listing` (transactions), `audit` (the trail) and
//! `consent` (consent requests); `writer` runs the writes a request waits on and `hot`
//! holds what Validate reads. Key bytes are `keys`' alone; record bytes `codec`'s.

use crate::api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, MAX_OPEN_CONSENTS_PER_TXN, MAX_TXN_SCAN,
    PARTY_PAGE, PartyRevoked, PurgeStats, RevokeTarget, Revoked, StoreError, StoreStats,
    TokenStore, TreeEntry, TxnPage, TxnQuery, UseOutcome, admit_child, collect_consent_page,
    collect_page, commit_party_txn, consent_changeable, consent_open, mark_revoked, party_reason,
    party_txn_revocations, txn_range,
};
use crate::{codec, keys};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DataBlockIndexType, Direction, FlushOptions, IteratorMode, Options,
    PrefixRange, ReadOptions, ReadTier, SliceTransform, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::{JoinError, JoinSet};
use writ_core::limits::MAX_TOKENS_PER_TXN;
use writ_core::{
    Actor, ConsentError, ConsentId, ConsentRequest, Decision, Event, EventId, PartyDisable,
    TokenId, TokenRecord, TokenState, TxnId, UnixMillis,
};

mod audit;
mod cleanup;
mod consent;
mod hot;
mod listing;
mod revoke;
mod schema;
#[cfg(test)]
mod tests;
mod tokens;
mod writer;

use audit::*;
use cleanup::*;
use consent::*;
pub use hot::HotTierStats;
use hot::{HotTier, Miss};
use listing::*;
use revoke::*;
use schema::*;
use tokens::*;
pub use writer::WriterStats;
use writer::{WalSync, Writer};

/// When an insert is acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the WAL before acknowledging: an acknowledged insert survives power loss.
    #[default]
    Sync,
    /// WAL written but not fsynced: a `kill -9` of the process keeps the data, a power
    /// loss may lose the last writes.
    Buffered,
}

/// How to open a [`RocksStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// When inserts are acknowledged.
    pub durability: Durability,
    /// Size of the block cache shared by the records and their states, in MiB. Validate
    /// answers from memory (without a hand-off to the blocking pool) when the blocks it
    /// needs are cached, so size it to the live tokens (about 300 MB per million).
    pub block_cache_mib: u64,
    /// Size of the hot tier (decoded records with their states, see `hot`), in MiB; 0
    /// turns it off. Validate of a token it holds reads nothing from RocksDB.
    pub hot_tier_mib: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::default(),
            block_cache_mib: 256,
            hot_tier_mib: 128,
        }
    }
}

/// Writers whose token ids fall in the same stripe serialise their
/// existence-check-then-write; others proceed (and group-commit) concurrently.
const INSERT_STRIPES: usize = 64;
/// Mutations of transactions in the same stripe serialise their read-check-write;
/// others proceed (and group-commit) concurrently.
const TXN_STRIPES: usize = 256;

/// The most write-ahead log kept before memtables are flushed (see [`RocksStore::open`]).
const MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;

struct Inner {
    db: DB,
    durability: Durability,
    path: PathBuf,
    /// Makes "check the id is free, then write" atomic per token id (ids are unique
    /// across transactions). Held only inside a blocking task, after the transaction's
    /// lock, for one read and one write.
    insert_locks: Vec<Mutex<()>>,
    /// Serialises every read-check-write (insert, insert_child, revoke, consume_use,
    /// purge) of one transaction: all tokens of a call tree share it. Async, and taken
    /// before the blocking hand-off (see [`RocksStore::locked`]), so waiters hold no
    /// thread of the blocking pool.
    txn_locks: Vec<Arc<AsyncMutex<()>>>,
    /// Which stripe a transaction's lock is: keyed at random when the store opens.
    stripe_hasher: RandomState,
    /// Validate's reads from memory; every state write under a transaction's lock tells it.
    hot: HotTier,
    /// The thread that runs and group-commits the writes a request waits on
    /// ([`RocksStore::committed`]).
    writer: Writer,
}

impl Drop for Inner {
    /// A clean close flushes the memtables, so the next start replays no log. (A crash
    /// skips this and replays at most [`MAX_WAL_BYTES`].)
    fn drop(&mut self) {
        let cfs: Vec<&ColumnFamily> = keys::ALL_CFS
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .collect();
        if let Err(e) = self.db.flush_cfs_opt(&cfs, &FlushOptions::default()) {
            tracing::warn!(error = %e, "flushing the store at close failed; the next start replays its log");
        }
    }
}

impl Inner {
    fn txn_stripe(&self, txn: TxnId) -> usize {
        // The first bytes of a txn id are its mint time, so hash all of them, with keys
        // drawn at open: nobody can pick transactions that share a stripe with a victim's.
        (self.stripe_hasher.hash_one(txn) % self.txn_locks.len() as u64) as usize
    }

    fn txn_lock(&self, txn: TxnId) -> Arc<AsyncMutex<()>> {
        self.txn_locks[self.txn_stripe(txn)].clone()
    }

    fn lock_id(&self, id: TokenId) -> MutexGuard<'_, ()> {
        // Token ids are hash output, so their first byte spreads them evenly over stripes.
        let stripe = usize::from(id.0[0]) % self.insert_locks.len();
        self.insert_locks[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_consent_id(&self, id: ConsentId) -> MutexGuard<'_, ()> {
        // A consent id's first bytes are its creation time; its last are random.
        let stripe = usize::from(id.0[15]) % self.insert_locks.len();
        self.insert_locks[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_opts(&self) -> WriteOptions {
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(self.durability == Durability::Sync);
        write_opts
    }
}

/// The RocksDB token store. Cheap to clone: clones share one open database, which is
/// closed when the last clone (and any operation still in flight) is dropped.
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(e.into_string())
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into() }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::Backend(format!("column family `{name}` is not open")))
}

/// `tokens` serves one point read per validation and one (almost always missing) point
/// read per insert. A whole-key bloom filter lets a miss skip SST files without reading
/// them, and a hash index inside each data block avoids a binary search on a hit.
fn tokens_cf_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    // Also filter the memtable, where the newest (most read) tokens live.
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

/// `txn_tokens` is only ever scanned by transaction. A fixed 16-byte prefix extractor
/// puts the transaction id into the bloom filters, so a scan skips every SST file that
/// holds none of its tokens.
fn txn_tokens_cf_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(false);
    let mut opts = Options::default();
    opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(keys::TXN_PREFIX_LEN));
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_block_based_table_factory(&table);
    opts
}

impl RocksStore {
    /// Opens (creating if missing) the store at `path`. Blocking: call once at startup,
    /// outside async code or inside `spawn_blocking`.
    ///
    /// Refuses ([`StoreError::Corrupt`]) a store written with a different schema
    /// version.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<RocksStore, StoreError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // RocksDB's own info logs, not data: keep a bounded number.
        db_opts.set_keep_log_file_num(10);
        // Bound the write-ahead log, and so the replay at startup: past this, RocksDB
        // flushes the column families that hold its oldest part. Without it, families that
        // grow a few bytes per token never fill a memtable and pin the whole log (200k
        // tokens took 8 s to replay; BENCHMARKS.md, startup).
        db_opts.set_max_total_wal_size(MAX_WAL_BYTES);
        let mib = usize::try_from(opts.block_cache_mib).unwrap_or(usize::MAX);
        let cache = Cache::new_lru_cache(mib.saturating_mul(1024 * 1024));
        let cfs = [
            ColumnFamilyDescriptor::new(keys::CF_TOKENS, tokens_cf_options(&cache)),
            ColumnFamilyDescriptor::new(keys::CF_STATE, tokens_cf_options(&cache)),
            ColumnFamilyDescriptor::new(keys::CF_TXN_TOKENS, txn_tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_CHILDREN, txn_tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_EXPIRY, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_TXNS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_SUBJECT_TXNS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_PARTY_TXNS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_TXN_PARTIES, txn_tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_EVENTS, txn_tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_EVENT_LOG, Options::default()),
            // Created empty in a store from before it existed (no schema change).
            ColumnFamilyDescriptor::new(keys::CF_PARTIES, Options::default()),
            // The consent families too (no prefix extractor: listings scan them backwards
            // between explicit bounds).
            ColumnFamilyDescriptor::new(keys::CF_CONSENTS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_CONSENT_KEYS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_CONSENT_OPEN, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_CONSENT_TXNS, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(backend)?;
        check_schema(&db)?;
        // Blocks of records and states written by a flush go into the block cache as the
        // flush writes them, so the newest tokens (the ones being validated) stay readable
        // without a disk read once they leave the memtable. The crate exposes this table
        // option only through RocksDB's option strings.
        for name in [keys::CF_TOKENS, keys::CF_STATE] {
            db.set_options_cf(
                cf(&db, name)?,
                &[(
                    "block_based_table_factory",
                    "{prepopulate_block_cache=kFlushOnly;}",
                )],
            )
            .map_err(backend)?;
        }
        tracing::info!(path = %path.display(), durability = ?opts.durability, "token store open");
        Ok(RocksStore {
            inner: Arc::new_cyclic(|store| Inner {
                db,
                durability: opts.durability,
                path: path.to_owned(),
                insert_locks: (0..INSERT_STRIPES).map(|_| Mutex::new(())).collect(),
                txn_locks: (0..TXN_STRIPES)
                    .map(|_| Arc::new(AsyncMutex::new(())))
                    .collect(),
                stripe_hasher: RandomState::new(),
                hot: HotTier::new(
                    usize::try_from(opts.hot_tier_mib.saturating_mul(1 << 20))
                        .unwrap_or(usize::MAX),
                ),
                writer: Writer::start(store.clone()),
            }),
        })
    }

    /// Runs `f` on the blocking pool with the shared state. The future owns its own
    /// handle to the database, so it borrows nothing from `self`.
    fn blocking<T, F>(&self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        }
    }

    /// Runs `f` on the blocking pool holding `txn`'s lock stripe. The stripe is awaited
    /// here, before the hand-off, so a waiter holds no pool thread; its guard moves into
    /// the blocking task and is released when `f` returns. A future dropped while it
    /// waits for the lock does nothing; once it has the lock, `f` runs to the end.
    fn locked<T, F>(
        &self,
        txn: TxnId,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            let guard = inner.txn_lock(txn).lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let out = f(&inner);
                drop(guard);
                out
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        }
    }

    /// Runs `f` on the writer thread (see `writer`) holding `txn`'s lock stripe, awaited
    /// here as in [`locked`](Self::locked). `f` writes with the options it is given (no
    /// sync of its own); it is answered, and the lock released, once the group it ran in
    /// is synced as `sync` says.
    fn committed<T, F>(
        &self,
        txn: TxnId,
        sync: WalSync,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &WriteOptions) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            let guard = inner.txn_lock(txn).lock_owned().await;
            inner.writer.submit(Some(guard), sync, f).await
        }
    }

    /// A token's record: read on the calling thread when memtable and block cache hold
    /// it, else on the blocking pool. Records never change, so a mutation reads one
    /// before taking its transaction's lock (and re-checks under the lock that it still
    /// exists).
    fn record(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<Arc<TokenRecord>>, StoreError>> + Send + 'static {
        let inner = self.inner.clone();
        let slow = self.blocking(move |inner| record_blocking(inner, id));
        async move {
            if let Some(record) = inner.hot.record(&id) {
                return Ok(Some(record));
            }
            let cached = get_record_at(&inner, id, &read_opts_at(ReadTier::BlockCache))?;
            match cached {
                Some(answer) => Ok(answer.map(|(record, _)| Arc::new(record))),
                None => slow.await,
            }
        }
    }

    /// How the writer has grouped the writes a request waits on (metrics).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Becomes true once a sync of the WAL fails: the store then refuses every write
    /// until a restart. Closed when the store closes.
    pub fn writer_failed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.writer.failed()
    }

    /// Resolves once the database is closed and the writer thread has ended. The last
    /// handle's drop does not always close it: the writer may hold the store for the group
    /// in hand (a write whose caller went away) and closes it when that group is done. A
    /// server waits for this before it lets another open the data directory.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        // The channel closes when both ends of the writer are gone: the thread, and the
        // handle the database holds.
        let mut failed = self.inner.writer.failed();
        async move {
            let _ = failed.wait_for(|_| false).await;
        }
    }

    /// What the hot tier holds and how it has served (metrics).
    pub fn hot_tier_stats(&self) -> HotTierStats {
        self.inner.hot.stats()
    }

    /// The sequence number of the last write RocksDB applied. A diagnostic: a call that
    /// writes nothing leaves it unchanged.
    pub fn sequence_number(&self) -> u64 {
        self.inner.db.latest_sequence_number()
    }

    /// RocksDB's own estimates of what the store holds (metrics): property reads, no
    /// scan, but blocking (run it off the async threads).
    pub fn size_estimates(&self) -> Result<SizeEstimates, StoreError> {
        let db = &self.inner.db;
        let read = |name: &str, property: &str| -> Result<u64, StoreError> {
            Ok(db
                .property_int_value_cf(cf(db, name)?, property)
                .map_err(backend)?
                .unwrap_or(0))
        };
        let mut out = SizeEstimates {
            tokens: read(keys::CF_TOKENS, "rocksdb.estimate-num-keys")?,
            ..SizeEstimates::default()
        };
        for name in keys::ALL_CFS {
            out.sst_bytes = out
                .sst_bytes
                .saturating_add(read(name, "rocksdb.total-sst-files-size")?);
            out.memtable_bytes = out
                .memtable_bytes
                .saturating_add(read(name, "rocksdb.cur-size-all-mem-tables")?);
        }
        Ok(out)
    }
}

/// What [`RocksStore::size_estimates`] reads: estimates, not counts
/// ([`TokenStore::stats`] counts, by scanning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeEstimates {
    /// Token records (`rocksdb.estimate-num-keys` of `tokens`).
    pub tokens: u64,
    /// Bytes of table files on disk, every column family.
    pub sst_bytes: u64,
    /// Bytes of memtables, every column family.
    pub memtable_bytes: u64,
}

#[cfg(test)]
impl RocksStore {
    /// Takes `txn`'s lock stripe, as a mutation of it would, until the guard is dropped.
    async fn hold_txn(&self, txn: TxnId) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.txn_lock(txn).lock_owned().await
    }
}

/// Write options that sync the WAL whatever the store's durability: the schema version,
/// party disablements, and consent decisions, which the user or the agent acts on at once
/// (redemptions too, on the writer: [`WalSync::Always`]).
fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl RocksStore {
    /// Compacts every column family over its whole key range, so the space of deleted
    /// keys is reclaimed now rather than by background compaction. Blocking and
    /// expensive: for tests and maintenance.
    pub fn compact_all(&self) -> Result<(), StoreError> {
        let db = &self.inner.db;
        // Rewrite the bottommost level too: otherwise a flushed file holding only
        // tombstones can be moved there as it is, and the tombstones stay on disk.
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for name in keys::ALL_CFS {
            db.compact_range_cf_opt(cf(db, name)?, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }
}

impl TokenStore for RocksStore {
    fn insert(
        &self,
        record: TokenRecord,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (txn, record) = (record.txn, Arc::new(record));
        self.committed(txn, WalSync::AsConfigured, move |inner, opts| {
            insert_blocking(inner, &record, &event, opts)
        })
    }

    /// As [`record`](Self::record) reads: a retried Mint or Downscope looks up the ids its
    /// key derives (almost always absent: memtable and bloom filters answer, no hand-off).
    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        let record = self.record(id);
        async move { Ok(record.await?.map(Arc::unwrap_or_clone)) }
    }

    fn sync(&self, _txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send {
        // A read may see a write of the writer's current group before its sync: answered
        // after the next group's sync, which covers it. (A write off the writer is visible
        // only once RocksDB has taken it as the durability says.)
        self.inner.writer.sync()
    }

    fn txn_tree(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TreeEntry>, StoreError>> + Send {
        self.blocking(move |inner| txn_tree_blocking(inner, txn))
    }

    fn state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send {
        self.blocking(move |inner| state_blocking(inner, id))
    }

    fn get_with_state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send
    {
        let inner = self.inner.clone();
        let slow = self.blocking(move |inner| {
            // The `All` tier always answers.
            Ok(get_with_state_at(inner, id, ReadTier::All)?.flatten())
        });
        async move {
            // Validate's read: from the hot tier; else from memtable and block cache on
            // the calling thread when they hold it (no hand-off to the blocking pool); else
            // by the pool. What RocksDB answers fills the tier (unless a state changed
            // meanwhile: see `hot`).
            let miss: Miss = match inner.hot.get(&id) {
                Ok(hit) => return Ok(Some(hit)),
                Err(miss) => miss,
            };
            let found = match get_with_state_at(&inner, id, ReadTier::BlockCache)? {
                Some(answer) => answer,
                None => slow.await?,
            };
            Ok(found.map(|(record, state, encoded)| {
                inner.hot.fill(miss, record.clone(), state.clone(), encoded);
                (record, state)
            }))
        }
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (txn, record) = (record.txn, Arc::new(record));
        self.committed(txn, WalSync::AsConfigured, move |inner, opts| {
            insert_child_blocking(inner, &record, max_children, &event, opts)
        })
    }

    fn revoke(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        event: EventId,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send {
        let store = self.clone();
        async move {
            // A token's transaction from its record, before the lock (see `record`).
            let txn = match target {
                RevokeTarget::Token(id) => store.record(id).await?.ok_or(StoreError::NotFound)?.txn,
                RevokeTarget::Txn(txn) => txn,
            };
            store
                .committed(txn, WalSync::AsConfigured, move |inner, opts| {
                    revoke_blocking(inner, target, &by, &reason, event, opts)
                })
                .await
        }
    }

    /// Pages through the party's `party_txns` entries, with up to `PARTY_IN_FLIGHT`
    /// transactions in hand at once, each in a task of its own under its lock.
    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<PartyRevoked, StoreError>> + Send {
        let store = self.clone();
        async move {
            let digest = keys::digest(&party);
            let job = Arc::new(PartyJob {
                reason: party_reason(&party, &reason),
                party,
                by,
                events,
            });
            let mut done = PartyRevoked::default();
            let mut after_txn = None;
            loop {
                let page = store
                    .blocking(move |inner| party_txns_page(inner, &digest, after_txn, PARTY_PAGE))
                    .await?;
                let full = page.len() == PARTY_PAGE;
                after_txn = page.last().copied();
                // Dropped on an early return: tasks still waiting for their lock end there,
                // one already writing lands whole.
                let mut in_hand = JoinSet::new();
                for txn in page {
                    if in_hand.len() >= PARTY_IN_FLIGHT
                        && let Some(finished) = in_hand.join_next().await
                    {
                        done.add(joined(finished)?);
                    }
                    let job = job.clone();
                    in_hand.spawn(
                        store.locked(txn, move |inner| revoke_party_blocking(inner, txn, &job)),
                    );
                }
                while let Some(finished) = in_hand.join_next().await {
                    done.add(joined(finished)?);
                }
                if !full {
                    return Ok(done);
                }
            }
        }
    }

    fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.blocking(move |inner| set_party_disabled_blocking(inner, &party, disabled))
    }

    fn disabled_parties(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PartyDisable)>, StoreError>> + Send {
        self.blocking(disabled_parties_blocking)
    }

    fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
        let store = self.clone();
        async move {
            // The transaction and the limit from the record, before any lock.
            let Some(record) = store.record(id).await? else {
                return Ok(UseOutcome::Unknown);
            };
            match record.grant.max_uses {
                None => {
                    store
                        .blocking(move |inner| {
                            consume_unlimited_blocking(inner, id, event.as_ref())
                        })
                        .await
                }
                Some(max) => {
                    store
                        .committed(record.txn, WalSync::AsConfigured, move |inner, opts| {
                            consume_limited_blocking(inner, id, max, event.as_ref(), opts)
                        })
                        .await
                }
            }
        }
    }

    fn purge_expired(
        &self,
        cutoff: UnixMillis,
        max_tokens: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        self.blocking(move |inner| purge_expired_blocking(inner, cutoff, max_tokens))
    }

    /// Scans every key space in full: a diagnostic only.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        self.blocking(stats_blocking)
    }

    fn list_txns(
        &self,
        query: TxnQuery,
    ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send {
        self.blocking(move |inner| list_txns_blocking(inner, &query))
    }

    fn append_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.blocking(move |inner| append_events_blocking(inner, &events))
    }

    fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        self.blocking(move |inner| events_blocking(inner, txn, after, limit))
    }

    fn last_event_id(&self) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
        self.blocking(last_event_id_blocking)
    }

    fn purge_events(
        &self,
        cutoff: UnixMillis,
        max_events: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        self.blocking(move |inner| purge_events_blocking(inner, cutoff, max_events))
    }

    fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send {
        // On the writer: it holds an id stripe across its write, as token inserts do.
        let txn = request.txn;
        self.committed(txn, WalSync::AsConfigured, move |inner, opts| {
            insert_consent_blocking(inner, &request, &event, opts)
        })
    }

    fn consent(
        &self,
        id: ConsentId,
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        self.blocking(move |inner| read_consent(inner, id))
    }

    fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        self.blocking(move |inner| consent_by_key_blocking(inner, &key))
    }

    fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let store = self.clone();
        async move {
            // The transaction (which never changes) before the lock; re-read under it.
            let request = store.blocking(move |inner| read_consent(inner, id)).await?;
            let txn = request.ok_or(StoreError::NotFound)?.txn;
            store
                .locked(txn, move |inner| {
                    decide_consent_blocking(inner, id, decision, &event)
                })
                .await
        }
    }

    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let (store, child) = (self.clone(), Arc::new(child));
        async move {
            let request = store.blocking(move |inner| read_consent(inner, id)).await?;
            let txn = request.ok_or(StoreError::NotFound)?.txn;
            // On the writer (it inserts a token), synced whatever the durability: the
            // user and the agent act on a redemption at once.
            store
                .committed(txn, WalSync::Always, move |inner, opts| {
                    redeem_consent_blocking(inner, id, &by, &child, max_children, &event, opts)
                })
                .await
        }
    }

    /// Pages through `consent_open` in expiry order, marking each request under its own
    /// transaction's lock.
    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send {
        let store = self.clone();
        async move {
            let by = Arc::new(by);
            let (mut expired, mut examined) = (0, 0);
            let mut from: Option<Vec<u8>> = None;
            while examined < max {
                let limit = CONSENT_PAGE.min(max - examined);
                let start = from.clone();
                let page = store
                    .blocking(move |inner| consents_due(inner, start.as_deref(), now, limit))
                    .await?;
                let Some((last, _, _)) = page.last() else {
                    break;
                };
                from = Some(after(last));
                examined += page.len();
                for (key, id, txn) in page {
                    let (by, events) = (by.clone(), events.clone());
                    let expire = move |inner: &Inner| {
                        expire_consent_blocking(inner, &key, id, now, &by, &*events)
                    };
                    let done = match txn {
                        Some(txn) => store.locked(txn, expire).await?,
                        // The request is gone: the entry is all there is, no lock needed.
                        None => store.blocking(expire).await?,
                    };
                    expired += usize::from(done);
                }
            }
            let more = store
                .blocking(
                    move |inner| Ok(!consents_due(inner, from.as_deref(), now, 1)?.is_empty()),
                )
                .await?;
            Ok((expired, more))
        }
    }

    fn purge_consents(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        self.blocking(move |inner| purge_consents_blocking(inner, cutoff, max))
    }

    fn list_consents(
        &self,
        query: ConsentQuery,
    ) -> impl Future<Output = Result<ConsentPage, StoreError>> + Send {
        self.blocking(move |inner| list_consents_blocking(inner, &query))
    }
}
