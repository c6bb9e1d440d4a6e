//! [`RocksStore`]: the embedded, durable [`TokenStore`], on RocksDB.
//!
//! One column family per key space (see `keys`). Every engine call is blocking, so
//! each runs on Tokio's blocking pool and never stalls an async worker; only point
//! reads that memtable and block cache can answer (Validate's, and the record read a
//! mutation starts with) run on the calling thread. The pool is also where group commit
//! comes from: concurrent writers block in RocksDB's write thread, which batches them
//! into one WAL write and one fsync.
//!
//! State mutations read, check and write under a lock striped by transaction id (every
//! token of a call tree shares its transaction), each in one `WriteBatch`. So a child
//! derived while an ancestor is being revoked is either inserted before the revocation
//! walks the `children` index (and revoked with the subtree) or sees its parent revoked
//! and is refused. The stripe is an async mutex, awaited *before* the hand-off to the
//! blocking pool; its owned guard moves into the blocking task and is dropped after the
//! write. A waiter therefore holds no pool thread: however many mutations of one
//! transaction queue up, the pool stays free for every other call. A mutation that names
//! a token first reads its (immutable) record to learn the transaction, then re-checks
//! under the lock that it still exists. Token-id uniqueness across transactions is kept
//! by a second, short lock striped by id, taken in the blocking task after the
//! transaction's.
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
//! the WAL on the next open.

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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::default(),
            block_cache_mib: 256,
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
            inner: Arc::new(Inner {
                db,
                durability: opts.durability,
                path: path.to_owned(),
                insert_locks: (0..INSERT_STRIPES).map(|_| Mutex::new(())).collect(),
                txn_locks: (0..TXN_STRIPES)
                    .map(|_| Arc::new(AsyncMutex::new(())))
                    .collect(),
                stripe_hasher: RandomState::new(),
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

    /// A token's record: read on the calling thread when memtable and block cache hold
    /// it, else on the blocking pool. Records never change, so a mutation reads one
    /// before taking its transaction's lock (and re-checks under the lock that it still
    /// exists).
    fn record(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send + 'static {
        let inner = self.inner.clone();
        let slow = self.blocking(move |inner| get_blocking(inner, id));
        async move {
            let cached = get_record_at(&inner, id, &read_opts_at(ReadTier::BlockCache))?;
            match cached {
                Some(answer) => Ok(answer),
                None => slow.await,
            }
        }
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

/// Writes the schema version into a new store; refuses a store with another version,
/// or one that holds tokens but no version at all.
fn check_schema(db: &DB) -> Result<(), StoreError> {
    let meta = cf(db, keys::CF_META)?;
    match db
        .get_pinned_cf(meta, keys::SCHEMA_VERSION_KEY)
        .map_err(backend)?
    {
        Some(v) => match keys::decode_schema_version(&v) {
            Some(keys::SCHEMA_VERSION) => Ok(()),
            Some(1) => upgrade_from_v1(db),
            // Only `txns` values changed, and version-2 values are still read.
            Some(v @ (2 | 3)) => record_schema_version(db, &format!("token store schema {v} -> 4")),
            Some(found) => Err(corrupt(format!(
                "store has schema version {found}, this build reads version {}",
                keys::SCHEMA_VERSION
            ))),
            None => Err(corrupt("schema version value is not a u32")),
        },
        None => {
            let tokens = cf(db, keys::CF_TOKENS)?;
            match db.iterator_cf(tokens, IteratorMode::Start).next() {
                None => {}
                Some(Ok(_)) => return Err(corrupt("store holds tokens but no schema version")),
                Some(Err(e)) => return Err(backend(e)),
            }
            record_schema_version(db, "initialised new token store")
        }
    }
}

/// Records this build's schema version, synced.
fn record_schema_version(db: &DB, what: &str) -> Result<(), StoreError> {
    let sync = synced();
    let version = keys::encode_schema_version(keys::SCHEMA_VERSION);
    db.put_cf_opt(
        cf(db, keys::CF_META)?,
        keys::SCHEMA_VERSION_KEY,
        version,
        &sync,
    )
    .map_err(backend)?;
    tracing::info!(version = keys::SCHEMA_VERSION, "{what}");
    Ok(())
}

/// Version 1 had no transaction indexes: rebuild them from the records in batches
/// (idempotent puts, so an interrupted upgrade simply runs again), then record this build's version
/// in a last, synced write. Children whose root is already gone are not indexed: nothing
/// would ever remove their entries. The audit trail starts empty.
fn upgrade_from_v1(db: &DB) -> Result<(), StoreError> {
    const CHUNK: usize = 10_000;
    let sync = synced();
    let records = || {
        let mut read_opts = ReadOptions::default();
        read_opts.set_total_order_seek(true);
        read_opts.fill_cache(false);
        cf(db, keys::CF_TOKENS).map(|tokens| {
            db.iterator_cf_opt(tokens, read_opts, IteratorMode::Start)
                .map(|item| codec::decode(&item.map_err(backend)?.1))
        })
    };
    let mut rooted = std::collections::HashSet::new();
    for record in records()? {
        let record = record?;
        if record.parent.is_none() {
            rooted.insert(record.txn);
        }
    }
    let (mut batch, mut pending, mut n) = (WriteBatch::default(), 0, 0u64);
    for record in records()? {
        let record = record?;
        if !rooted.contains(&record.txn) {
            continue;
        }
        index_txn(db, &mut batch, &record)?;
        if record.parent.is_none() {
            // Without a count: the transaction may already hold children, so its next
            // Downscope counts them by a scan (and writes the count).
            batch.put_cf(cf(db, keys::CF_TXNS)?, record.txn.0, record.token_id.0);
        }
        (pending, n) = (pending + 1, n + 1);
        if pending == CHUNK {
            db.write_opt(std::mem::take(&mut batch), &sync)
                .map_err(backend)?;
            pending = 0;
        }
    }
    batch.put_cf(
        cf(db, keys::CF_META)?,
        keys::SCHEMA_VERSION_KEY,
        keys::encode_schema_version(keys::SCHEMA_VERSION),
    );
    db.write_opt(batch, &sync).map_err(backend)?;
    tracing::info!(
        tokens = n,
        version = keys::SCHEMA_VERSION,
        "upgraded token store schema from version 1"
    );
    Ok(())
}

/// The transaction-listing index entries a record contributes: for a root, the
/// transaction itself, its subject and its two parties (minter and audience); for a
/// child, its audience (its actor was its parent's audience). Idempotent puts.
fn index_txn(db: &DB, batch: &mut WriteBatch, record: &TokenRecord) -> Result<(), StoreError> {
    let txn = record.txn;
    let mut parties = vec![record.audience.id.as_str()];
    if record.parent.is_none() {
        batch.put_cf(
            cf(db, keys::CF_TXNS)?,
            txn.0,
            keys::txn_value(record.token_id, 1),
        );
        batch.put_cf(
            cf(db, keys::CF_SUBJECT_TXNS)?,
            keys::digest_txn_key(&keys::digest(&record.subject), txn),
            keys::EMPTY_VALUE,
        );
        parties.push(record.current_actor().id.as_str());
    }
    let (party_txns, txn_parties) = (cf(db, keys::CF_PARTY_TXNS)?, cf(db, keys::CF_TXN_PARTIES)?);
    for party in parties {
        let d = keys::digest(party);
        batch.put_cf(party_txns, keys::digest_txn_key(&d, txn), keys::EMPTY_VALUE);
        batch.put_cf(txn_parties, keys::txn_party_key(txn, &d), keys::EMPTY_VALUE);
    }
    Ok(())
}

/// An audit event's two entries, added to `batch`.
fn put_event(db: &DB, batch: &mut WriteBatch, event: &Event) -> Result<(), StoreError> {
    batch.put_cf(
        cf(db, keys::CF_EVENTS)?,
        keys::event_key(event.txn, event.id),
        codec::encode_event(event)?,
    );
    batch.put_cf(
        cf(db, keys::CF_EVENT_LOG)?,
        keys::event_log_key(event.id, event.txn),
        keys::EMPTY_VALUE,
    );
    Ok(())
}

/// Under the transaction's lock ([`RocksStore::locked`]).
fn insert_blocking(inner: &Inner, record: &TokenRecord, event: &Event) -> Result<(), StoreError> {
    let db = &inner.db;
    let tokens = cf(db, keys::CF_TOKENS)?;
    let key = keys::token_key(record.token_id);
    let mut batch = WriteBatch::default();
    put_record(inner, &mut batch, record)?;
    index_txn(db, &mut batch, record)?;
    put_event(db, &mut batch, event)?;
    let _id_guard = inner.lock_id(record.token_id);
    if db.get_pinned_cf(tokens, key).map_err(backend)?.is_some() {
        return Err(StoreError::Conflict);
    }
    db.write_opt(batch, &inner.write_opts()).map_err(backend)
}

/// The record and its index entries, added to `batch`.
fn put_record(
    inner: &Inner,
    batch: &mut WriteBatch,
    record: &TokenRecord,
) -> Result<(), StoreError> {
    let db = &inner.db;
    batch.put_cf(
        cf(db, keys::CF_TOKENS)?,
        keys::token_key(record.token_id),
        codec::encode(record)?,
    );
    batch.put_cf(
        cf(db, keys::CF_TXN_TOKENS)?,
        keys::txn_token_key(record.txn, record.token_id),
        keys::tree_value(record.parent, record.issued_at),
    );
    batch.put_cf(
        cf(db, keys::CF_EXPIRY)?,
        keys::expiry_key(record.grant.expires_at, record.token_id),
        keys::EMPTY_VALUE,
    );
    Ok(())
}

/// One point read in `family`, decoded by `decode`; `None` when the key is absent.
fn read_decoded<T>(
    inner: &Inner,
    family: &str,
    key: impl AsRef<[u8]>,
    decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let db = &inner.db;
    match db.get_pinned_cf(cf(db, family)?, key).map_err(backend)? {
        Some(value) => decode(&value).map(Some),
        None => Ok(None),
    }
}

/// The stored state row of a token, if any.
fn read_state(inner: &Inner, id: TokenId) -> Result<Option<TokenState>, StoreError> {
    read_decoded(
        inner,
        keys::CF_STATE,
        keys::state_key(id),
        codec::decode_state,
    )
}

fn put_state(
    inner: &Inner,
    batch: &mut WriteBatch,
    id: TokenId,
    state: &TokenState,
) -> Result<(), StoreError> {
    batch.put_cf(
        cf(&inner.db, keys::CF_STATE)?,
        keys::state_key(id),
        codec::encode_state(state)?,
    );
    Ok(())
}

fn token_exists(inner: &Inner, id: TokenId) -> Result<bool, StoreError> {
    let db = &inner.db;
    Ok(db
        .get_pinned_cf(cf(db, keys::CF_TOKENS)?, keys::token_key(id))
        .map_err(backend)?
        .is_some())
}

fn state_blocking(inner: &Inner, id: TokenId) -> Result<Option<TokenState>, StoreError> {
    // A state row is only ever written for an existing token.
    if let Some(state) = read_state(inner, id)? {
        return Ok(Some(state));
    }
    Ok(token_exists(inner, id)?.then(TokenState::default))
}

/// Under the transaction's lock ([`RocksStore::locked`]).
fn insert_child_blocking(
    inner: &Inner,
    record: &TokenRecord,
    max_children: u32,
    event: &Event,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    put_event(&inner.db, &mut batch, event)?;
    let _id_guard = stage_child(inner, &mut batch, record, max_children)?;
    inner
        .db
        .write_opt(batch, &inner.write_opts())
        .map_err(backend)
}

/// Adds a child token to `batch` as [`TokenStore::insert_child`] stores it, after its
/// checks (the id is free, the parent exists in the transaction, [`admit_child`]): the
/// record and its indexes, the parent→child link, the parent's new state and the
/// transaction's count. The one way a child is written (`insert_child` and
/// `redeem_consent`). Under the transaction's lock; returns the id's guard, to be held
/// until `batch` is written.
fn stage_child<'a>(
    inner: &'a Inner,
    batch: &mut WriteBatch,
    record: &TokenRecord,
    max_children: u32,
) -> Result<MutexGuard<'a, ()>, StoreError> {
    let parent_id = record.parent.ok_or(StoreError::ParentMissing)?;
    put_record(inner, batch, record)?;
    index_txn(&inner.db, batch, record)?;
    batch.put_cf(
        cf(&inner.db, keys::CF_CHILDREN)?,
        keys::child_key(parent_id, record.token_id),
        keys::EMPTY_VALUE,
    );
    let id_guard = inner.lock_id(record.token_id);
    if token_exists(inner, record.token_id)? {
        return Err(StoreError::Conflict);
    }
    let parent = match get_blocking(inner, parent_id)? {
        Some(p) if p.txn == record.txn => p,
        _ => return Err(StoreError::ParentMissing),
    };
    let mut pstate = read_state(inner, parent_id)?.unwrap_or_default();
    // The transaction's size from its entry in `txns` (one read); a scan only for an
    // entry written before the count was kept, which this write then brings up to date.
    let txns = cf(&inner.db, keys::CF_TXNS)?;
    let entry = match inner
        .db
        .get_pinned_cf(txns, record.txn.0)
        .map_err(backend)?
    {
        Some(v) => Some(keys::of_txn_value(&v).ok_or_else(|| corrupt("txns value"))?),
        None => None,
    };
    let held = match entry {
        Some((_, Some(n))) => n as usize,
        _ => scan_ids(
            inner,
            keys::CF_TXN_TOKENS,
            &keys::txn_prefix(record.txn),
            keys::token_id_of_txn_key,
            MAX_TOKENS_PER_TXN,
        )?
        .len(),
    };
    admit_child(&parent, &mut pstate, record, max_children, held)?;
    put_state(inner, batch, parent_id, &pstate)?;
    if let Some((root, _)) = entry {
        let held = u32::try_from(held + 1).unwrap_or(u32::MAX);
        batch.put_cf(txns, record.txn.0, keys::txn_value(root, held));
    }
    Ok(id_guard)
}

/// Ids of the children of `parent`, from the `children` index.
fn children_of(inner: &Inner, parent: TokenId) -> Result<Vec<TokenId>, StoreError> {
    scan_ids(
        inner,
        keys::CF_CHILDREN,
        &keys::children_prefix(parent),
        keys::child_id_of_child_key,
        usize::MAX,
    )
}

/// The entries of `cf_name` whose keys start with `prefix`, from `from` on (never a scan
/// beyond the prefix).
fn prefix_iter<'a>(
    inner: &'a Inner,
    cf_name: &str,
    prefix: &[u8],
    from: &[u8],
) -> Result<rocksdb::DBIteratorWithThreadMode<'a, DB>, StoreError> {
    let db = &inner.db;
    let mut read_opts = ReadOptions::default();
    read_opts.set_prefix_same_as_start(true);
    read_opts.set_iterate_range(PrefixRange(prefix));
    Ok(db.iterator_cf_opt(
        cf(db, cf_name)?,
        read_opts,
        IteratorMode::From(from, Direction::Forward),
    ))
}

/// Up to `limit` token ids stored under `prefix` in an index column family keyed
/// `prefix ‖ token id`, bounded to the prefix (never a scan beyond it).
fn scan_ids(
    inner: &Inner,
    cf_name: &str,
    prefix: &[u8],
    id_of: fn(&[u8]) -> Option<TokenId>,
    limit: usize,
) -> Result<Vec<TokenId>, StoreError> {
    let iter = prefix_iter(inner, cf_name, prefix, prefix)?;
    let mut ids = Vec::new();
    for item in iter.take(limit) {
        let (key, _) = item.map_err(backend)?;
        // The bounds already stop the scan; checking again costs nothing.
        if !key.starts_with(prefix) {
            break;
        }
        let id =
            id_of(&key).ok_or_else(|| corrupt(format!("{cf_name} key of {} bytes", key.len())))?;
        ids.push(id);
    }
    Ok(ids)
}

/// Under the lock of `target`'s transaction ([`RocksStore::locked`]). Writes nothing
/// (no state, no event) when nothing is newly revoked.
fn revoke_blocking(
    inner: &Inner,
    target: RevokeTarget,
    by: &Actor,
    reason: &str,
    event: EventId,
) -> Result<Revoked, StoreError> {
    let at = event.at();
    // (token, cause) pairs, in walk order.
    let mut todo: Vec<(TokenId, TokenId)> = Vec::new();
    match target {
        RevokeTarget::Token(root) => {
            // Its record was read before the lock; cleanup may have purged it since.
            // Never write state for a token that is gone.
            if !token_exists(inner, root)? {
                return Err(StoreError::NotFound);
            }
            let mut seen = BTreeSet::from([root]);
            let mut queue = VecDeque::from([root]);
            while let Some(id) = queue.pop_front() {
                todo.push((id, root));
                for child in children_of(inner, id)? {
                    if seen.insert(child) {
                        queue.push_back(child);
                    }
                }
            }
        }
        RevokeTarget::Txn(txn) => {
            todo.extend(
                txn_tokens_blocking(inner, txn)?
                    .into_iter()
                    .map(|id| (id, id)),
            );
        }
    }
    // No token: an unknown transaction (or one purged whole).
    let Some(&(first, _)) = todo.first() else {
        return Err(StoreError::NotFound);
    };
    let mut read = Vec::with_capacity(todo.len());
    for (id, cause) in todo {
        read.push((id, read_state(inner, id)?.unwrap_or_default(), cause));
    }
    let states = mark_revoked(read, at, by, reason);
    if states.is_empty() {
        return Ok(Revoked {
            ids: Vec::new(),
            event: None,
        });
    }
    let any = get_blocking(inner, first)?.ok_or_else(|| corrupt("indexed token has no record"))?;
    let event = Event::revoked(event, &any, target.token(), by, reason, states.len());
    write_revocation(inner, &states, &event)?;
    Ok(Revoked {
        ids: states.into_iter().map(|(id, _)| id).collect(),
        event: Some(event),
    })
}

/// Writes revoked tokens' new states with the revocation's event, in one atomic write.
fn write_revocation(
    inner: &Inner,
    states: &[(TokenId, TokenState)],
    event: &Event,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    for (id, state) in states {
        put_state(inner, &mut batch, *id, state)?;
    }
    put_event(&inner.db, &mut batch, event)?;
    inner
        .db
        .write_opt(batch, &inner.write_opts())
        .map_err(backend)
}

/// Transactions of a party's walk in hand at once, each under its own lock: their synced
/// writes share fsyncs through RocksDB's group commit instead of queueing one by one.
const PARTY_IN_FLIGHT: usize = 8;

/// Up to `limit` transactions listed under a party's `digest` in `party_txns`, after
/// `after` (all when `None`), in key order.
fn party_txns_page(
    inner: &Inner,
    digest: &[u8; keys::DIGEST_LEN],
    after_txn: Option<TxnId>,
    limit: usize,
) -> Result<Vec<TxnId>, StoreError> {
    let from = match after_txn {
        Some(txn) => after(&keys::digest_txn_key(digest, txn)),
        None => digest.to_vec(),
    };
    let mut txns = Vec::new();
    for item in prefix_iter(inner, keys::CF_PARTY_TXNS, digest, &from)?.take(limit) {
        let (key, _) = item.map_err(backend)?;
        let txn = keys::txn_of_suffix(&key)
            .ok_or_else(|| corrupt(format!("party_txns key of {} bytes", key.len())))?;
        txns.push(txn);
    }
    Ok(txns)
}

/// What one `revoke_party` call shares with each of its transactions' tasks.
struct PartyJob {
    party: String,
    by: Actor,
    /// The reason as stored: [`party_reason`].
    reason: String,
    events: Arc<dyn EventIssuer>,
}

/// One transaction's part of a party's revocation, under its lock
/// ([`RocksStore::locked`]). The tree's shape comes from `txn_tokens`; a record is read
/// only for a token not yet revoked (a revoked one changes nothing, so a second walk reads
/// states alone).
fn revoke_party_blocking(
    inner: &Inner,
    txn: TxnId,
    job: &PartyJob,
) -> Result<Vec<TokenId>, StoreError> {
    let found = party_txn_revocations(
        txn_tree_blocking(inner, txn)?,
        &job.party,
        |id| Ok(read_state(inner, id)?.unwrap_or_default()),
        // Under the lock a purge cannot have deleted it since the index was read.
        |id| get_blocking(inner, id),
    )?;
    let Some((todo, any)) = found else {
        return Ok(Vec::new()); // everything revoked already, or the transaction is gone
    };
    commit_party_txn(
        todo,
        &any,
        &job.by,
        &job.reason,
        &*job.events,
        |states, event| write_revocation(inner, states, event),
    )
}

/// The answer of one transaction's task of a party's walk.
fn joined(
    done: Result<Result<Vec<TokenId>, StoreError>, JoinError>,
) -> Result<Vec<TokenId>, StoreError> {
    done.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Records or clears a party's disablement, synced whatever the store's durability.
fn set_party_disabled_blocking(
    inner: &Inner,
    party: &str,
    disabled: Option<PartyDisable>,
) -> Result<(), StoreError> {
    let db = &inner.db;
    let parties = cf(db, keys::CF_PARTIES)?;
    let sync = synced();
    match disabled {
        Some(d) => {
            let d = PartyDisable::new(d.at, d.by, d.reason);
            db.put_cf_opt(
                parties,
                keys::party_key(party),
                codec::encode_party(&d)?,
                &sync,
            )
        }
        None => db.delete_cf_opt(parties, keys::party_key(party), &sync),
    }
    .map_err(backend)
}

fn disabled_parties_blocking(inner: &Inner) -> Result<Vec<(String, PartyDisable)>, StoreError> {
    let db = &inner.db;
    let mut out = Vec::new();
    for item in db.iterator_cf(cf(db, keys::CF_PARTIES)?, IteratorMode::Start) {
        let (key, value) = item.map_err(backend)?;
        let party = keys::party_of_key(&key).ok_or_else(|| corrupt("party id is not UTF-8"))?;
        out.push((party, codec::decode_party(&value)?));
    }
    Ok(out)
}

/// A token without a use limit: nothing to count, so no lock; one read decides and only
/// the event is written.
fn consume_unlimited_blocking(
    inner: &Inner,
    id: TokenId,
    event: Option<&Event>,
) -> Result<UseOutcome, StoreError> {
    if read_state(inner, id)?.is_some_and(|s| s.revoked.is_some()) {
        return Ok(UseOutcome::Revoked);
    }
    if let Some(e) = event {
        append_events_blocking(inner, std::slice::from_ref(e))?;
    }
    Ok(UseOutcome::Consumed { remaining: None })
}

/// A token with `max` uses, under its transaction's lock ([`RocksStore::locked`]).
fn consume_limited_blocking(
    inner: &Inner,
    id: TokenId,
    max: u32,
    event: Option<&Event>,
) -> Result<UseOutcome, StoreError> {
    if !token_exists(inner, id)? {
        return Ok(UseOutcome::Unknown); // purged since its record was read
    }
    let mut state = read_state(inner, id)?.unwrap_or_default();
    if state.revoked.is_some() {
        return Ok(UseOutcome::Revoked);
    }
    if state.uses >= max {
        return Ok(UseOutcome::Exhausted);
    }
    state.uses += 1;
    let mut batch = WriteBatch::default();
    put_state(inner, &mut batch, id, &state)?;
    if let Some(e) = event {
        put_event(&inner.db, &mut batch, e)?;
    }
    inner
        .db
        .write_opt(batch, &inner.write_opts())
        .map_err(backend)?;
    Ok(UseOutcome::Consumed {
        remaining: Some(max - state.uses),
    })
}

fn get_blocking(inner: &Inner, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
    let db = &inner.db;
    match db
        .get_pinned_cf(cf(db, keys::CF_TOKENS)?, keys::token_key(id))
        .map_err(backend)?
    {
        Some(value) => codec::decode(&value).map(Some),
        None => Ok(None),
    }
}

/// Whether a read at `ReadTier::BlockCache` stopped because it needed the disk.
fn needs_disk(e: &rocksdb::Error) -> bool {
    e.kind() == rocksdb::ErrorKind::Incomplete
}

fn read_opts_at(tier: ReadTier) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_read_tier(tier);
    opts
}

/// A token's record, read with `opts`. When they set `ReadTier::BlockCache` the read
/// never touches the disk, and `Ok(None)` (rather than an answer) says it would have had
/// to.
fn get_record_at(
    inner: &Inner,
    id: TokenId,
    opts: &ReadOptions,
) -> Result<Option<Option<TokenRecord>>, StoreError> {
    let db = &inner.db;
    match db.get_pinned_cf_opt(cf(db, keys::CF_TOKENS)?, keys::token_key(id), opts) {
        Ok(Some(v)) => Ok(Some(Some(codec::decode(&v)?))),
        Ok(None) => Ok(Some(None)),
        Err(e) if needs_disk(&e) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// A token's record and state, read at `tier`, as [`get_record_at`] reads a record.
fn get_with_state_at(
    inner: &Inner,
    id: TokenId,
    tier: ReadTier,
) -> Result<Option<Option<(TokenRecord, TokenState)>>, StoreError> {
    let db = &inner.db;
    let opts = read_opts_at(tier);
    let record = match get_record_at(inner, id, &opts)? {
        Some(Some(record)) => record,
        Some(None) => return Ok(Some(None)),
        None => return Ok(None),
    };
    let state = match db.get_pinned_cf_opt(cf(db, keys::CF_STATE)?, keys::state_key(id), &opts) {
        Ok(Some(v)) => codec::decode_state(&v)?,
        Ok(None) => TokenState::default(),
        Err(e) if needs_disk(&e) => return Ok(None),
        Err(e) => return Err(backend(e)),
    };
    Ok(Some(Some((record, state))))
}

/// The tree of a transaction from its `txn_tokens` entries; an entry written before schema
/// 4 (an empty value) costs a read of its record.
fn txn_tree_blocking(inner: &Inner, txn: TxnId) -> Result<Vec<TreeEntry>, StoreError> {
    let prefix = keys::txn_prefix(txn);
    let mut out = Vec::new();
    for item in prefix_iter(inner, keys::CF_TXN_TOKENS, &prefix, &prefix)? {
        let (key, value) = item.map_err(backend)?;
        let bad = || {
            corrupt(format!(
                "txn_tokens entry of {}+{} bytes",
                key.len(),
                value.len()
            ))
        };
        let id = keys::token_id_of_txn_key(&key).ok_or_else(bad)?;
        match keys::of_tree_value(&value).ok_or_else(bad)? {
            Some((parent, issued_at)) => out.push(TreeEntry {
                id,
                parent,
                issued_at,
            }),
            None => out.extend(get_blocking(inner, id)?.as_ref().map(TreeEntry::of)),
        }
    }
    Ok(out)
}

fn txn_tokens_blocking(inner: &Inner, txn: TxnId) -> Result<Vec<TokenId>, StoreError> {
    scan_ids(
        inner,
        keys::CF_TXN_TOKENS,
        &keys::txn_prefix(txn),
        keys::token_id_of_txn_key,
        usize::MAX,
    )
}

/// Tokens per pass of a purge (see [`purge_batch`]).
const PURGE_BATCH: usize = 256;

/// An `expiry` index key and the token id it names.
type ExpiryEntry = (Box<[u8]>, TokenId);

/// The smallest key after `key`: where a scan resumes past entries it just deleted, so it
/// does not step over their tombstones again.
fn after(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// Up to `limit` entries (key and token id) of the `expiry` index with
/// `expires_at < cutoff`, in key order, starting at `from` when given.
fn expired_ids(
    inner: &Inner,
    from: Option<&[u8]>,
    cutoff: UnixMillis,
    limit: usize,
) -> Result<Vec<ExpiryEntry>, StoreError> {
    let db = &inner.db;
    let mut read_opts = ReadOptions::default();
    // Every key below `cutoff` BE sorts before this 8-byte bound; every key at or
    // after `cutoff` sorts at or after it.
    read_opts.set_iterate_upper_bound(cutoff.0.to_be_bytes().to_vec());
    if let Some(from) = from {
        read_opts.set_iterate_lower_bound(from.to_vec());
    }
    let iter = db.iterator_cf_opt(cf(db, keys::CF_EXPIRY)?, read_opts, IteratorMode::Start);
    let mut ids = Vec::new();
    for item in iter.take(limit) {
        let (key, _) = item.map_err(backend)?;
        let id = keys::token_id_of_expiry_key(&key)
            .ok_or_else(|| corrupt(format!("expiry key of {} bytes", key.len())))?;
        ids.push((key, id));
    }
    Ok(ids)
}

/// A token a purge deletes: its `expiry` key, id and record.
type Expired = (Box<[u8]>, TokenId, TokenRecord);

/// Deletes one pass of expired tokens. The tokens are grouped by lock stripe and each
/// group is deleted in its own `WriteBatch` under that stripe alone, in stripe order: the
/// purge never holds two stripes at once, so it delays only the transactions of the
/// group it is writing. The group writes are not synced one by one; one WAL sync ends
/// the pass (with [`Durability::Sync`]). A purge a power cut loses is redone by the next
/// pass, and any later synced write syncs it too. Blocking: run it on the blocking pool.
/// Returns how many expiry entries were removed and the key to resume from.
fn purge_batch(
    inner: &Inner,
    from: Option<&[u8]>,
    cutoff: UnixMillis,
    limit: usize,
) -> Result<(usize, Option<Vec<u8>>), StoreError> {
    let db = &inner.db;
    let entries = expired_ids(inner, from, cutoff, limit)?;
    let Some((last, _)) = entries.last() else {
        return Ok((0, None));
    };
    let resume = after(last);
    let n = entries.len();
    let (tokens, state, txn_tokens, expiry, children) = (
        cf(db, keys::CF_TOKENS)?,
        cf(db, keys::CF_STATE)?,
        cf(db, keys::CF_TXN_TOKENS)?,
        cf(db, keys::CF_EXPIRY)?,
        cf(db, keys::CF_CHILDREN)?,
    );
    let unsynced = WriteOptions::default();
    // Records are immutable, so they can be read before locking; only a purge deletes
    // them, and deleting twice is harmless.
    let mut groups: BTreeMap<usize, Vec<Expired>> = BTreeMap::new();
    let mut orphans = WriteBatch::default();
    for (key, id) in entries {
        match get_blocking(inner, id)? {
            Some(record) => groups
                .entry(inner.txn_stripe(record.txn))
                .or_default()
                .push((key, id, record)),
            // An expiry entry whose token is already gone (say, purged concurrently):
            // the entry is all there is left to delete, and it needs no lock.
            None => orphans.delete_cf(expiry, key),
        }
    }
    if !orphans.is_empty() {
        db.write_opt(orphans, &unsynced).map_err(backend)?;
    }
    for (stripe, group) in groups {
        let _stripe = inner.txn_locks[stripe].blocking_lock();
        let mut batch = WriteBatch::default();
        for (key, id, record) in group {
            batch.delete_cf(expiry, key);
            batch.delete_cf(tokens, keys::token_key(id));
            batch.delete_cf(state, keys::state_key(id));
            batch.delete_cf(txn_tokens, keys::txn_token_key(record.txn, id));
            if let Some(parent) = record.parent {
                batch.delete_cf(children, keys::child_key(parent, id));
            } else {
                unindex_txn(inner, &mut batch, &record)?;
            }
            // Read under the lock: a child derived before we locked is unlinked here.
            for child in children_of(inner, id)? {
                batch.delete_cf(children, keys::child_key(id, child));
            }
        }
        db.write_opt(batch, &unsynced).map_err(backend)?;
    }
    if inner.durability == Durability::Sync {
        db.flush_wal(true).map_err(backend)?;
    }
    Ok((n, Some(resume)))
}

/// Deletes a purged root's transaction from the listing indexes (the inverse of every
/// [`index_txn`] of its transaction), found through `txn_parties`.
fn unindex_txn(
    inner: &Inner,
    batch: &mut WriteBatch,
    root: &TokenRecord,
) -> Result<(), StoreError> {
    let db = &inner.db;
    let txn = root.txn;
    batch.delete_cf(cf(db, keys::CF_TXNS)?, txn.0);
    batch.delete_cf(
        cf(db, keys::CF_SUBJECT_TXNS)?,
        keys::digest_txn_key(&keys::digest(&root.subject), txn),
    );
    let (party_txns, txn_parties) = (cf(db, keys::CF_PARTY_TXNS)?, cf(db, keys::CF_TXN_PARTIES)?);
    let prefix = keys::txn_prefix(txn);
    for item in prefix_iter(inner, keys::CF_TXN_PARTIES, &prefix, &prefix)? {
        let (key, _) = item.map_err(backend)?;
        let d = keys::digest_of_txn_party_key(&key)
            .ok_or_else(|| corrupt(format!("txn_parties key of {} bytes", key.len())))?;
        batch.delete_cf(party_txns, keys::digest_txn_key(&d, txn));
        batch.delete_cf(txn_parties, key);
    }
    Ok(())
}

fn purge_expired_blocking(
    inner: &Inner,
    cutoff: UnixMillis,
    max_tokens: usize,
) -> Result<PurgeStats, StoreError> {
    let mut purged = 0;
    // Each pass resumes past the previous one instead of seeking from the start of the
    // index and stepping over every tombstone the earlier passes left (which made a
    // large purge quadratic).
    let mut from: Option<Vec<u8>> = None;
    while purged < max_tokens {
        let limit = PURGE_BATCH.min(max_tokens - purged);
        let (n, resume) = purge_batch(inner, from.as_deref(), cutoff, limit)?;
        if n == 0 {
            break;
        }
        purged += n;
        from = resume;
    }
    let more = !expired_ids(inner, from.as_deref(), cutoff, 1)?.is_empty();
    if purged >= COMPACT_AFTER {
        compact_below(inner, keys::CF_EXPIRY, &cutoff.0.to_be_bytes())?;
    }
    Ok(PurgeStats {
        tokens: purged,
        more,
    })
}

/// A purge that deleted at least this many entries compacts the index span it walked.
const COMPACT_AFTER: usize = 10_000;

/// Compacts `cf_name` below `bound`, dropping the tombstones a large purge left there, so
/// the next pass (which starts from the beginning of the index) does not walk them.
fn compact_below(inner: &Inner, cf_name: &str, bound: &[u8]) -> Result<(), StoreError> {
    let db = &inner.db;
    let mut opts = CompactOptions::default();
    opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    db.compact_range_cf_opt(cf(db, cf_name)?, None::<&[u8]>, Some(bound), &opts);
    Ok(())
}

/// Number of keys in one column family, by a full scan.
fn count_keys(inner: &Inner, name: &str) -> Result<u64, StoreError> {
    let db = &inner.db;
    let mut read_opts = ReadOptions::default();
    // A full scan must not be cut short by the prefix extractor, nor evict hot blocks.
    read_opts.set_total_order_seek(true);
    read_opts.fill_cache(false);
    let mut n = 0;
    for item in db.iterator_cf_opt(cf(db, name)?, read_opts, IteratorMode::Start) {
        item.map_err(backend)?;
        n += 1;
    }
    Ok(n)
}

fn stats_blocking(inner: &Inner) -> Result<StoreStats, StoreError> {
    let mut index_entries = 0;
    for name in [
        keys::CF_TXN_TOKENS,
        keys::CF_EXPIRY,
        keys::CF_STATE,
        keys::CF_CHILDREN,
    ] {
        index_entries += count_keys(inner, name)?;
    }
    let mut txn_index_entries = 0;
    for name in [
        keys::CF_TXNS,
        keys::CF_SUBJECT_TXNS,
        keys::CF_PARTY_TXNS,
        keys::CF_TXN_PARTIES,
    ] {
        txn_index_entries += count_keys(inner, name)?;
    }
    let mut consent_index_entries = 0;
    for name in [
        keys::CF_CONSENT_KEYS,
        keys::CF_CONSENT_OPEN,
        keys::CF_CONSENT_TXNS,
    ] {
        consent_index_entries += count_keys(inner, name)?;
    }
    Ok(StoreStats {
        tokens: count_keys(inner, keys::CF_TOKENS)?,
        index_entries,
        txn_index_entries,
        events: count_keys(inner, keys::CF_EVENTS)?,
        consents: count_keys(inner, keys::CF_CONSENTS)?,
        consent_index_entries,
    })
}

/// Transactions for a query: scans the party, subject or transaction index backwards
/// over the query's range, reading each candidate's root.
fn list_txns_blocking(inner: &Inner, query: &TxnQuery) -> Result<TxnPage, StoreError> {
    let db = &inner.db;
    let (lo, hi) = txn_range(query);
    let (cf_name, prefix): (&str, Vec<u8>) = match (&query.party, &query.subject) {
        (Some(p), _) => (keys::CF_PARTY_TXNS, keys::digest(p).to_vec()),
        (None, Some(s)) => (keys::CF_SUBJECT_TXNS, keys::digest(s).to_vec()),
        (None, None) => (keys::CF_TXNS, Vec::new()),
    };
    let lower = [prefix.as_slice(), &lo.0].concat();
    let upper = match hi {
        Some(hi) => [prefix.as_slice(), &hi.0].concat(),
        // Just past every key with this prefix.
        None => [prefix.as_slice(), &[0xff; 17]].concat(),
    };
    if lower >= upper {
        return Ok(TxnPage {
            roots: Vec::new(),
            next: None,
        });
    }
    let mut read_opts = ReadOptions::default();
    read_opts.set_iterate_lower_bound(lower);
    read_opts.set_iterate_upper_bound(upper);
    let iter = db.iterator_cf_opt(cf(db, cf_name)?, read_opts, IteratorMode::End);
    let candidates = iter.map(|item| {
        let (key, _) = item.map_err(backend)?;
        keys::txn_of_suffix(&key)
            .ok_or_else(|| corrupt(format!("{cf_name} key of {} bytes", key.len())))
    });
    let txns = cf(db, keys::CF_TXNS)?;
    collect_page(query, candidates, |txn| {
        let Some(root) = db.get_pinned_cf(txns, txn.0).map_err(backend)? else {
            return Ok(None); // purged between the index entry and now
        };
        let (root, _) = keys::of_txn_value(&root).ok_or_else(|| corrupt("txns value"))?;
        let Some(record) = get_blocking(inner, root)? else {
            return Ok(None);
        };
        let state = read_state(inner, root)?.unwrap_or_default();
        Ok(Some((record, state)))
    })
}

fn append_events_blocking(inner: &Inner, events: &[Event]) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    for e in events {
        put_event(&inner.db, &mut batch, e)?;
    }
    // Buffered, whatever the store's durability: the WAL write reaches the OS before this
    // returns (a killed process loses nothing), and the next synced token write makes it
    // durable against power loss too. These events wait for no answer, so an fsync per
    // batch would buy little and cost a sixth of a busy server's CPU (BENCHMARKS.md).
    inner
        .db
        .write_opt(batch, &WriteOptions::default())
        .map_err(backend)
}

fn events_blocking(
    inner: &Inner,
    txn: TxnId,
    after: Option<EventId>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let start = after.map_or(EventId(0), |a| EventId(a.0.saturating_add(1)));
    if after.is_some_and(|a| a.0 == u64::MAX) {
        return Ok(Vec::new());
    }
    let from = keys::event_key(txn, start);
    let prefix = keys::txn_prefix(txn);
    let mut out = Vec::new();
    for item in prefix_iter(inner, keys::CF_EVENTS, &prefix, &from)?.take(limit) {
        let (_, value) = item.map_err(backend)?;
        out.push(codec::decode_event(&value)?);
    }
    Ok(out)
}

fn last_event_id_blocking(inner: &Inner) -> Result<Option<EventId>, StoreError> {
    let db = &inner.db;
    match db
        .iterator_cf(cf(db, keys::CF_EVENT_LOG)?, IteratorMode::End)
        .next()
    {
        None => Ok(None),
        Some(item) => {
            let (key, _) = item.map_err(backend)?;
            let (id, _) = keys::of_event_log_key(&key)
                .ok_or_else(|| corrupt(format!("event_log key of {} bytes", key.len())))?;
            Ok(Some(id))
        }
    }
}

/// An `event_log` key with the event id and transaction it names.
type LogEntry = (Box<[u8]>, EventId, TxnId);

/// Events deleted per `WriteBatch` by an audit purge.
const EVENT_PURGE_BATCH: usize = 1024;

fn purge_events_blocking(
    inner: &Inner,
    cutoff: UnixMillis,
    max_events: usize,
) -> Result<PurgeStats, StoreError> {
    let db = &inner.db;
    let (log, events) = (cf(db, keys::CF_EVENT_LOG)?, cf(db, keys::CF_EVENTS)?);
    let bound = EventId::first_at(cutoff).0.to_be_bytes();
    let due = |from: Option<&[u8]>, limit: usize| -> Result<Vec<LogEntry>, StoreError> {
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(bound.to_vec());
        if let Some(from) = from {
            read_opts.set_iterate_lower_bound(from.to_vec());
        }
        let mut out = Vec::new();
        for item in db
            .iterator_cf_opt(log, read_opts, IteratorMode::Start)
            .take(limit)
        {
            let (key, _) = item.map_err(backend)?;
            let (id, txn) = keys::of_event_log_key(&key)
                .ok_or_else(|| corrupt(format!("event_log key of {} bytes", key.len())))?;
            out.push((key, id, txn));
        }
        Ok(out)
    };
    let mut purged = 0;
    // Resume past each batch, as `purge_expired` does.
    let mut from: Option<Vec<u8>> = None;
    while purged < max_events {
        let batch_entries = due(from.as_deref(), EVENT_PURGE_BATCH.min(max_events - purged))?;
        let Some((last, _, _)) = batch_entries.last() else {
            break;
        };
        from = Some(after(last));
        let mut batch = WriteBatch::default();
        for (key, id, txn) in &batch_entries {
            batch.delete_cf(events, keys::event_key(*txn, *id));
            batch.delete_cf(log, key);
        }
        db.write_opt(batch, &inner.write_opts()).map_err(backend)?;
        purged += batch_entries.len();
    }
    let more = !due(from.as_deref(), 1)?.is_empty();
    if purged >= COMPACT_AFTER {
        compact_below(inner, keys::CF_EVENT_LOG, &bound)?;
    }
    Ok(PurgeStats {
        tokens: purged,
        more,
    })
}

/// Write options that sync the WAL whatever the store's durability: the schema version,
/// party disablements, and consent decisions and redemptions, which the user or the agent
/// acts on at once.
fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn read_consent(inner: &Inner, id: ConsentId) -> Result<Option<ConsentRequest>, StoreError> {
    read_decoded(
        inner,
        keys::CF_CONSENTS,
        keys::consent_key(id),
        codec::decode_consent,
    )
}

fn consent_by_key_blocking(
    inner: &Inner,
    key: &[u8; 32],
) -> Result<Option<ConsentRequest>, StoreError> {
    let id = read_decoded(
        inner,
        keys::CF_CONSENT_KEYS,
        keys::consent_action_key(key),
        |v| keys::consent_id_of(v).ok_or_else(|| corrupt("consent_keys value")),
    )?;
    id.map_or(Ok(None), |id| read_consent(inner, id))
}

/// A request as it now stands, added to `batch`: its record, its `consent_txns` entry
/// (open until its expiry, or closed) and its `consent_open` entry (kept while it can
/// still change, deleted once it cannot).
fn put_consent(
    inner: &Inner,
    batch: &mut WriteBatch,
    request: &ConsentRequest,
) -> Result<(), StoreError> {
    let db = &inner.db;
    batch.put_cf(
        cf(db, keys::CF_CONSENTS)?,
        keys::consent_key(request.id),
        codec::encode_consent(request)?,
    );
    let changeable = consent_changeable(request);
    batch.put_cf(
        cf(db, keys::CF_CONSENT_TXNS)?,
        keys::consent_txn_key(request.txn, request.id),
        keys::consent_txn_value(changeable.then_some(request.expires_at)),
    );
    let open = cf(db, keys::CF_CONSENT_OPEN)?;
    let key = keys::consent_open_key(request.expires_at, request.id);
    if changeable {
        batch.put_cf(open, key, keys::EMPTY_VALUE);
    } else {
        batch.delete_cf(open, key);
    }
    Ok(())
}

/// Read options bounding a scan to one transaction's `consent_txns` entries, below
/// `before` when given.
fn consent_txn_bounds(txn: TxnId, before: Option<ConsentId>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::txn_prefix(txn).to_vec());
    opts.set_iterate_upper_bound(match before {
        Some(b) => keys::consent_txn_key(txn, b).to_vec(),
        // Just past every key of the transaction.
        None => [&keys::txn_prefix(txn)[..], &[0xff; 17]].concat(),
    });
    opts
}

/// How many of `txn`'s requests are open at `now`, counting up to `limit`: from the
/// `consent_txns` values alone.
fn open_consents_of(
    inner: &Inner,
    txn: TxnId,
    now: UnixMillis,
    limit: usize,
) -> Result<usize, StoreError> {
    let db = &inner.db;
    let iter = db.iterator_cf_opt(
        cf(db, keys::CF_CONSENT_TXNS)?,
        consent_txn_bounds(txn, None),
        IteratorMode::Start,
    );
    let mut open = 0;
    for item in iter {
        let (key, value) = item.map_err(backend)?;
        let until = keys::of_consent_txn_value(&value)
            .ok_or_else(|| corrupt(format!("consent_txns value of {} bytes", value.len())))?;
        if key.len() == 2 * keys::TXN_PREFIX_LEN && until.is_some_and(|at| now < at) {
            open += 1;
            if open >= limit {
                break;
            }
        }
    }
    Ok(open)
}

/// Under the transaction's lock ([`RocksStore::locked`]).
fn insert_consent_blocking(
    inner: &Inner,
    request: &ConsentRequest,
    event: &Event,
) -> Result<ConsentInsert, StoreError> {
    let db = &inner.db;
    let mut batch = WriteBatch::default();
    put_consent(inner, &mut batch, request)?;
    batch.put_cf(
        cf(db, keys::CF_CONSENT_KEYS)?,
        keys::consent_action_key(&request.key),
        keys::consent_key(request.id),
    );
    put_event(db, &mut batch, event)?;
    let _id_guard = inner.lock_consent_id(request.id);
    if read_consent(inner, request.id)?.is_some() {
        return Err(StoreError::Conflict);
    }
    let now = request.created_at;
    if let Some(existing) = consent_by_key_blocking(inner, &request.key)?
        && consent_open(&existing, now)
    {
        return Ok(ConsentInsert::Existing(Box::new(existing)));
    }
    if open_consents_of(inner, request.txn, now, MAX_OPEN_CONSENTS_PER_TXN)?
        >= MAX_OPEN_CONSENTS_PER_TXN
    {
        return Err(StoreError::TooManyConsents {
            limit: MAX_OPEN_CONSENTS_PER_TXN,
        });
    }
    db.write_opt(batch, &inner.write_opts()).map_err(backend)?;
    Ok(ConsentInsert::Inserted)
}

/// Under the transaction's lock ([`RocksStore::locked`]).
fn decide_consent_blocking(
    inner: &Inner,
    id: ConsentId,
    decision: Decision,
    event: &Event,
) -> Result<ConsentRequest, StoreError> {
    // Read again under the lock: the purge may have taken it, another decision decided it.
    let mut request = read_consent(inner, id)?.ok_or(StoreError::NotFound)?;
    request.decide(decision)?;
    let mut batch = WriteBatch::default();
    put_consent(inner, &mut batch, &request)?;
    put_event(&inner.db, &mut batch, event)?;
    inner.db.write_opt(batch, &synced()).map_err(backend)?;
    Ok(request)
}

/// Under the transaction's lock ([`RocksStore::locked`]): the consent rule, then the
/// child's ([`stage_child`]), then one synced write of the child, the request and the event.
fn redeem_consent_blocking(
    inner: &Inner,
    id: ConsentId,
    by: &str,
    child: &TokenRecord,
    max_children: u32,
    event: &Event,
) -> Result<ConsentRequest, StoreError> {
    let mut request = read_consent(inner, id)?.ok_or(StoreError::NotFound)?;
    let token = child.parent.ok_or(ConsentError::WrongToken(id))?;
    request.redeem(by, token, child.token_id, child.issued_at)?;
    let mut batch = WriteBatch::default();
    put_consent(inner, &mut batch, &request)?;
    put_event(&inner.db, &mut batch, event)?;
    let _id_guard = stage_child(inner, &mut batch, child, max_children)?;
    inner.db.write_opt(batch, &synced()).map_err(backend)?;
    Ok(request)
}

/// Requests per page of the expiry sweep and of the consent purge.
const CONSENT_PAGE: usize = 256;

/// A `consent_open` entry due at the sweep: its key, its request's id, and the request's
/// transaction (`None` when the request is gone).
type DueConsent = (Box<[u8]>, ConsentId, Option<TxnId>);

/// Up to `limit` entries of `consent_open` with `expires_at <= now`, in expiry order,
/// starting at `from` when given.
fn consents_due(
    inner: &Inner,
    from: Option<&[u8]>,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<DueConsent>, StoreError> {
    let db = &inner.db;
    let mut read_opts = ReadOptions::default();
    // Every key with expires_at <= now sorts before now + 1 alone.
    read_opts.set_iterate_upper_bound(now.0.saturating_add(1).to_be_bytes().to_vec());
    if let Some(from) = from {
        read_opts.set_iterate_lower_bound(from.to_vec());
    }
    let iter = db.iterator_cf_opt(
        cf(db, keys::CF_CONSENT_OPEN)?,
        read_opts,
        IteratorMode::Start,
    );
    let mut out = Vec::new();
    for item in iter.take(limit) {
        let (key, _) = item.map_err(backend)?;
        let id = keys::consent_id_of_open_key(&key)
            .ok_or_else(|| corrupt(format!("consent_open key of {} bytes", key.len())))?;
        let txn = read_consent(inner, id)?.map(|r| r.txn);
        out.push((key, id, txn));
    }
    Ok(out)
}

/// Marks one request expired with its event, under its transaction's lock
/// ([`RocksStore::locked`]). The event id is issued just before the write and reported
/// stored or abandoned right after. `false` when there was nothing to mark (decided,
/// redeemed or marked since the sweep read the index): a stale entry is dropped.
fn expire_consent_blocking(
    inner: &Inner,
    open_key: &[u8],
    id: ConsentId,
    now: UnixMillis,
    by: &Actor,
    events: &dyn EventIssuer,
) -> Result<bool, StoreError> {
    let db = &inner.db;
    let Some(before) = read_consent(inner, id)? else {
        db.delete_cf_opt(
            cf(db, keys::CF_CONSENT_OPEN)?,
            open_key,
            &inner.write_opts(),
        )
        .map_err(backend)?;
        return Ok(false);
    };
    let mut request = before.clone();
    if !request.expire(now) {
        if !consent_changeable(&request) {
            db.delete_cf_opt(
                cf(db, keys::CF_CONSENT_OPEN)?,
                open_key,
                &inner.write_opts(),
            )
            .map_err(backend)?;
        }
        return Ok(false);
    }
    let mut batch = WriteBatch::default();
    put_consent(inner, &mut batch, &request)?;
    let event_id = events.issue();
    let event = Event::consent_expired(event_id, &before, by);
    let written = put_event(db, &mut batch, &event)
        .and_then(|()| db.write_opt(batch, &inner.write_opts()).map_err(backend));
    match written {
        Ok(()) => {
            events.stored(event);
            Ok(true)
        }
        Err(e) => {
            events.abandoned(event_id);
            Err(e)
        }
    }
}

/// What one pass of the consent purge found: the requests to delete, where to resume,
/// how many it examined, and whether it reached the cutoff.
struct PurgeScan {
    found: Vec<ConsentRequest>,
    resume: Option<Vec<u8>>,
    examined: usize,
    at_end: bool,
}

/// Up to `want` requests created before `bound` (a `consents` key) that can no longer
/// change, oldest first from `from`, examining at most `budget` requests.
fn consents_to_purge(
    inner: &Inner,
    from: Option<&[u8]>,
    bound: &[u8],
    want: usize,
    budget: usize,
) -> Result<PurgeScan, StoreError> {
    let db = &inner.db;
    let mut read_opts = ReadOptions::default();
    read_opts.set_iterate_upper_bound(bound.to_vec());
    if let Some(from) = from {
        read_opts.set_iterate_lower_bound(from.to_vec());
    }
    let mut scan = PurgeScan {
        found: Vec::new(),
        resume: from.map(<[u8]>::to_vec),
        examined: 0,
        at_end: true,
    };
    if want == 0 || budget == 0 {
        scan.at_end = false;
        return Ok(scan);
    }
    for item in db.iterator_cf_opt(cf(db, keys::CF_CONSENTS)?, read_opts, IteratorMode::Start) {
        let (key, value) = item.map_err(backend)?;
        scan.examined += 1;
        scan.resume = Some(after(&key));
        let request = codec::decode_consent(&value)?;
        if !consent_changeable(&request) {
            scan.found.push(request);
        }
        if scan.found.len() >= want || scan.examined >= budget {
            scan.at_end = false;
            break;
        }
    }
    Ok(scan)
}

/// Deletes closed requests with every index entry of theirs, grouped by lock stripe as
/// [`purge_batch`] does; a `consent_keys` entry goes only while it names the request
/// (read under the lock: a newer request under the key keeps its entry).
fn delete_consents(inner: &Inner, requests: Vec<ConsentRequest>) -> Result<(), StoreError> {
    let db = &inner.db;
    let (consents, by_key, open, by_txn) = (
        cf(db, keys::CF_CONSENTS)?,
        cf(db, keys::CF_CONSENT_KEYS)?,
        cf(db, keys::CF_CONSENT_OPEN)?,
        cf(db, keys::CF_CONSENT_TXNS)?,
    );
    let mut groups: BTreeMap<usize, Vec<ConsentRequest>> = BTreeMap::new();
    for r in requests {
        groups.entry(inner.txn_stripe(r.txn)).or_default().push(r);
    }
    for (stripe, group) in groups {
        let _stripe = inner.txn_locks[stripe].blocking_lock();
        let mut batch = WriteBatch::default();
        for r in group {
            batch.delete_cf(consents, keys::consent_key(r.id));
            batch.delete_cf(by_txn, keys::consent_txn_key(r.txn, r.id));
            batch.delete_cf(open, keys::consent_open_key(r.expires_at, r.id));
            let current = db
                .get_pinned_cf(by_key, keys::consent_action_key(&r.key))
                .map_err(backend)?;
            if current.is_some_and(|v| keys::consent_id_of(&v) == Some(r.id)) {
                batch.delete_cf(by_key, keys::consent_action_key(&r.key));
            }
        }
        db.write_opt(batch, &WriteOptions::default())
            .map_err(backend)?;
    }
    Ok(())
}

/// Deletes up to `max` closed requests created before `cutoff`, oldest first, examining at
/// most [`MAX_TXN_SCAN`] requests per call (requests that can still change are skipped,
/// and are few: each is open minutes). `more` says whether a deletable request was seen
/// past `max`; when the scan budget ends the call, whether it deleted anything (so a
/// caller looping on `more` never spins on requests it cannot delete).
fn purge_consents_blocking(
    inner: &Inner,
    cutoff: UnixMillis,
    max: usize,
) -> Result<PurgeStats, StoreError> {
    let bound = keys::consent_key(ConsentId::new(cutoff, [0; 8]));
    let (mut purged, mut budget) = (0, MAX_TXN_SCAN);
    let mut from: Option<Vec<u8>> = None;
    let more = loop {
        let want = CONSENT_PAGE.min(max - purged);
        if want == 0 {
            // Is there more? One more deletable request within the budget says so.
            let probe = consents_to_purge(inner, from.as_deref(), &bound, 1, budget)?;
            break !probe.found.is_empty() || (probe.examined >= budget && purged > 0);
        }
        let scan = consents_to_purge(inner, from.as_deref(), &bound, want, budget)?;
        budget -= scan.examined;
        let n = scan.found.len();
        if n > 0 {
            delete_consents(inner, scan.found)?;
        }
        purged += n;
        from = scan.resume;
        if scan.at_end {
            break false;
        }
        if budget == 0 {
            break purged > 0;
        }
    };
    if purged > 0 && inner.durability == Durability::Sync {
        inner.db.flush_wal(true).map_err(backend)?;
    }
    if purged >= COMPACT_AFTER {
        compact_below(inner, keys::CF_CONSENTS, &bound)?;
    }
    Ok(PurgeStats {
        tokens: purged,
        more,
    })
}

/// Requests for a query: `consent_txns` backwards for a transaction, else `consents`
/// backwards, below the cursor.
fn list_consents_blocking(inner: &Inner, query: &ConsentQuery) -> Result<ConsentPage, StoreError> {
    let db = &inner.db;
    match query.txn {
        Some(txn) => {
            let iter = db.iterator_cf_opt(
                cf(db, keys::CF_CONSENT_TXNS)?,
                consent_txn_bounds(txn, query.before),
                IteratorMode::End,
            );
            let candidates = iter.map(|item| {
                let (key, _) = item.map_err(backend)?;
                let id = keys::consent_id_of_txn_key(&key)
                    .ok_or_else(|| corrupt(format!("consent_txns key of {} bytes", key.len())))?;
                Ok((id, read_consent(inner, id)?))
            });
            collect_consent_page(query, candidates)
        }
        None => {
            let mut read_opts = ReadOptions::default();
            if let Some(before) = query.before {
                read_opts.set_iterate_upper_bound(keys::consent_key(before).to_vec());
            }
            let iter = db.iterator_cf_opt(cf(db, keys::CF_CONSENTS)?, read_opts, IteratorMode::End);
            let candidates = iter.map(|item| {
                let (key, value) = item.map_err(backend)?;
                let id = keys::consent_id_of(&key)
                    .ok_or_else(|| corrupt(format!("consents key of {} bytes", key.len())))?;
                Ok((id, Some(codec::decode_consent(&value)?)))
            });
            collect_consent_page(query, candidates)
        }
    }
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
        let txn = record.txn;
        self.locked(txn, move |inner| insert_blocking(inner, &record, &event))
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        self.blocking(move |inner| get_blocking(inner, id))
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
    ) -> impl Future<Output = Result<Option<(TokenRecord, TokenState)>, StoreError>> + Send {
        let inner = self.inner.clone();
        let slow = self.blocking(move |inner| {
            // The `All` tier always answers.
            Ok(get_with_state_at(inner, id, ReadTier::All)?.flatten())
        });
        async move {
            // Validate's read: answered from memory on the calling thread when it can be
            // (a few microseconds, no hand-off to the blocking pool), else by the pool.
            match get_with_state_at(&inner, id, ReadTier::BlockCache)? {
                Some(answer) => Ok(answer),
                None => slow.await,
            }
        }
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let txn = record.txn;
        self.locked(txn, move |inner| {
            insert_child_blocking(inner, &record, max_children, &event)
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
                .locked(txn, move |inner| {
                    revoke_blocking(inner, target, &by, &reason, event)
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
                        .locked(record.txn, move |inner| {
                            consume_limited_blocking(inner, id, max, event.as_ref())
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
        let txn = request.txn;
        self.locked(txn, move |inner| {
            insert_consent_blocking(inner, &request, &event)
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
        let store = self.clone();
        async move {
            let request = store.blocking(move |inner| read_consent(inner, id)).await?;
            let txn = request.ok_or(StoreError::NotFound)?.txn;
            store
                .locked(txn, move |inner| {
                    redeem_consent_blocking(inner, id, &by, &child, max_children, &event)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Shorthand, record, tid, tree_ids, txn};
    use tempfile::TempDir;

    fn open(dir: &TempDir, durability: Durability) -> RocksStore {
        let opts = StoreOptions {
            durability,
            ..StoreOptions::default()
        };
        RocksStore::open(dir.path(), opts).unwrap()
    }

    #[tokio::test]
    async fn a_purge_larger_than_a_batch_resumes_past_each_batch() {
        // Several batches of PURGE_BATCH in one call, and more than COMPACT_AFTER in all,
        // with a live token after them: every expired one goes, the live one stays.
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        let n = u32::try_from(COMPACT_AFTER + PURGE_BATCH + 7).unwrap();
        for i in 0..n {
            let r = conformance::expiring(
                record(txn(90 + u64::from(i)), tid(i), None),
                1_000 + u64::from(i % 50),
            );
            store.put(r).await.unwrap();
        }
        let live = conformance::expiring(record(txn(1), tid(n), None), 5_000_000);
        store.put(live).await.unwrap();
        let purged = store
            .purge_expired(UnixMillis(10_000), usize::MAX)
            .await
            .unwrap();
        assert_eq!((purged.tokens, purged.more), (n as usize, false));
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.tokens, 1);
        assert!(store.get(tid(n)).await.unwrap().is_some());
        // A bounded call reports what is left, and the next call finds it.
        for i in 0..10 {
            let r = conformance::expiring(record(txn(2), tid(n + 1 + i), None), 2_000);
            store.put(r).await.unwrap();
        }
        let first = store.purge_expired(UnixMillis(10_000), 4).await.unwrap();
        assert_eq!((first.tokens, first.more), (4, true));
        let rest = store.purge_expired(UnixMillis(10_000), 100).await.unwrap();
        assert_eq!((rest.tokens, rest.more), (6, false));
    }

    /// The metrics' estimates: tokens in memtables count, a flush moves bytes from
    /// memtables to table files.
    #[tokio::test]
    async fn size_estimates_follow_what_is_stored() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        assert_eq!(store.size_estimates().unwrap().tokens, 0);
        for i in 0..3 {
            store
                .put(record(txn(70 + i), tid(i as u32), None))
                .await
                .unwrap();
        }
        let before = store.size_estimates().unwrap();
        assert_eq!(before.tokens, 3, "{before:?}");
        assert!(before.memtable_bytes > 0, "{before:?}");
        let db = &store.inner.db;
        for name in keys::ALL_CFS {
            db.flush_cf(cf(db, name).unwrap()).unwrap();
        }
        let after = store.size_estimates().unwrap();
        assert_eq!(after.tokens, 3, "{after:?}");
        assert!(
            after.sst_bytes > before.sst_bytes,
            "{before:?} then {after:?}"
        );
    }

    #[tokio::test]
    async fn tokens_just_flushed_are_read_from_the_block_cache() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        store.put(record(txn(82), tid(1), None)).await.unwrap();
        let db = &store.inner.db;
        for name in [keys::CF_TOKENS, keys::CF_STATE] {
            db.flush_cf(cf(db, name).unwrap()).unwrap();
        }
        assert!(!files_ending(&dir, ".sst").is_empty(), "flushed");
        let warm = get_with_state_at(&store.inner, tid(1), ReadTier::BlockCache).unwrap();
        assert!(matches!(warm, Some(Some(_))), "answered without the disk");
    }

    #[tokio::test]
    async fn reads_that_need_the_disk_fall_back_to_the_blocking_pool() {
        let dir = TempDir::new().unwrap();
        let (root, child) = (
            record(txn(81), tid(1), None),
            record(txn(81), tid(2), Some(tid(1))),
        );
        {
            let store = open(&dir, Durability::Sync);
            store.put(root.clone()).await.unwrap();
            store.put_child(child.clone(), 4).await.unwrap();
            store.compact_all().unwrap();
        }
        // Reopened: the memtable is empty and the block cache cold, so the memory-only
        // read is incomplete and must not read as "no such token".
        let store = open(&dir, Durability::Sync);
        let cold = get_with_state_at(&store.inner, tid(1), ReadTier::BlockCache);
        assert_eq!(cold, Ok(None), "a cold read needs the disk");
        let (r, s) = store.get_with_state(tid(1)).await.unwrap().unwrap();
        assert_eq!((r, s.children), (root, 1));
        assert_eq!(
            store.get_with_state(tid(2)).await.unwrap().map(|(r, _)| r),
            Some(child)
        );
        assert_eq!(store.get_with_state(tid(3)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn audit_and_listing() {
        let dir = TempDir::new().unwrap();
        conformance::audit_and_listing(open(&dir, Durability::Sync)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_sync() {
        let dir = TempDir::new().unwrap();
        conformance::run(open(&dir, Durability::Sync)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_transaction_holds_a_bounded_number_of_tokens() {
        let dir = TempDir::new().unwrap();
        conformance::txn_holds_at_most_max_tokens(open(&dir, Durability::Buffered)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_buffered() {
        let dir = TempDir::new().unwrap();
        conformance::run(open(&dir, Durability::Buffered)).await;
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen() {
        let dir = TempDir::new().unwrap();
        let root = record(txn(7), tid(1), None);
        let child = record(txn(7), tid(2), Some(tid(1)));
        {
            let store = open(&dir, Durability::Sync);
            let clone = store.clone();
            store.put(root.clone()).await.unwrap();
            clone.put(child.clone()).await.unwrap();
        }
        // Every clone is gone, so the database is closed and its lock released.
        let store = open(&dir, Durability::Sync);
        assert_eq!(store.get(tid(1)).await.unwrap(), Some(root.clone()));
        assert_eq!(store.get(tid(2)).await.unwrap(), Some(child));
        assert_eq!(
            tree_ids(store.txn_tree(txn(7)).await.unwrap()),
            vec![tid(1), tid(2)]
        );
        assert_eq!(store.put(root).await, Err(StoreError::Conflict));
    }

    #[tokio::test]
    async fn state_and_children_survive_close_and_reopen() {
        let dir = TempDir::new().unwrap();
        let t = txn(70);
        let root = conformance::with_uses(record(t, tid(1), None), Some(5));
        let child = conformance::with_uses(record(t, tid(2), Some(tid(1))), Some(2));
        {
            let store = open(&dir, Durability::Sync);
            store.put(root).await.unwrap();
            store.put_child(child.clone(), 4).await.unwrap();
            assert_eq!(
                store.consume_use(tid(2), None).await.unwrap(),
                UseOutcome::Consumed { remaining: Some(1) }
            );
        }
        let store = open(&dir, Durability::Sync);
        assert_eq!(store.get(tid(2)).await.unwrap(), Some(child));
        let s = store.state(tid(1)).await.unwrap().unwrap();
        assert_eq!((s.uses, s.children, s.revoked), (2, 1, None));
        assert_eq!(store.state(tid(2)).await.unwrap().unwrap().uses, 1);
        // The children index survived: revoking the root still reaches the child.
        let mut revoked = store
            .revoke_at(
                RevokeTarget::Token(tid(1)),
                crate::conformance::by("op"),
                "r".to_owned(),
                UnixMillis(1),
            )
            .await
            .unwrap();
        revoked.sort();
        assert_eq!(revoked, vec![tid(1), tid(2)]);
        drop(store);
        let store = open(&dir, Durability::Sync);
        assert_eq!(
            store.consume_use(tid(2), None).await.unwrap(),
            UseOutcome::Revoked
        );
        let s = store.state(tid(2)).await.unwrap().unwrap();
        assert_eq!(s.revoked.map(|r| r.cause), Some(tid(1)));
    }

    #[tokio::test]
    async fn a_corrupt_state_reads_as_corrupt() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        store.put(record(txn(71), tid(6), None)).await.unwrap();
        let db = &store.inner.db;
        db.put_cf(
            cf(db, keys::CF_STATE).unwrap(),
            keys::state_key(tid(6)),
            [9u8, 1],
        )
        .unwrap();
        assert!(matches!(
            store.state(tid(6)).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn buffered_writes_survive_a_clean_reopen() {
        let dir = TempDir::new().unwrap();
        let r = record(txn(8), tid(3), None);
        {
            let store = open(&dir, Durability::Buffered);
            store.put(r.clone()).await.unwrap();
            assert_eq!(store.get(tid(3)).await.unwrap(), Some(r.clone()));
        }
        let store = open(&dir, Durability::Buffered);
        assert_eq!(store.get(tid(3)).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn every_index_entry_is_written() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let r = record(txn(9), tid(4), None);
        store.put(r.clone()).await.unwrap();
        let db = &store.inner.db;
        let expiry = db
            .get_cf(
                cf(db, keys::CF_EXPIRY).unwrap(),
                keys::expiry_key(r.grant.expires_at, r.token_id),
            )
            .unwrap();
        assert_eq!(expiry, Some(vec![]));
        let idx = db
            .get_cf(
                cf(db, keys::CF_TXN_TOKENS).unwrap(),
                keys::txn_token_key(r.txn, r.token_id),
            )
            .unwrap();
        assert_eq!(
            idx,
            Some(keys::tree_value(r.parent, r.issued_at).to_vec()),
            "the token's place in its tree"
        );
    }

    fn set_schema_version(db: &DB, version: u32) {
        let meta = cf(db, keys::CF_META).unwrap();
        db.put_cf(
            meta,
            keys::SCHEMA_VERSION_KEY,
            keys::encode_schema_version(version),
        )
        .unwrap();
    }

    fn schema_version(db: &DB) -> Option<u32> {
        let meta = cf(db, keys::CF_META).unwrap();
        let v = db.get_cf(meta, keys::SCHEMA_VERSION_KEY).unwrap()?;
        keys::decode_schema_version(&v)
    }

    #[tokio::test]
    async fn a_version_1_store_is_upgraded_with_its_transactions_listed() {
        let dir = TempDir::new().unwrap();
        let t = txn(77);
        {
            // Version 1: tokens without the transaction indexes or an audit trail.
            let store = open(&dir, Durability::Sync);
            store.put(record(t, tid(7), None)).await.unwrap();
            let mut child = record(t, tid(8), Some(tid(7)));
            child.audience.id = "agent:late".into();
            store.put_child(child, 4).await.unwrap();
            // A child whose root v1 cleanup already took: indexed, nothing would remove
            // its entries, so the upgrade leaves it out.
            let mut orphan = record(txn(78), tid(9), Some(tid(10)));
            orphan.audience.id = "agent:orphan".into();
            let db = &store.inner.db;
            let mut batch = WriteBatch::default();
            put_record(&store.inner, &mut batch, &orphan).unwrap();
            db.write(batch).unwrap();
            let db = &store.inner.db;
            for name in [
                keys::CF_TXNS,
                keys::CF_SUBJECT_TXNS,
                keys::CF_PARTY_TXNS,
                keys::CF_TXN_PARTIES,
            ] {
                let cf = cf(db, name).unwrap();
                db.delete_range_cf(cf, &[0u8][..], &[0xffu8; 64][..])
                    .unwrap();
            }
            set_schema_version(db, 1);
            assert_eq!(store.stats().await.unwrap().txn_index_entries, 0);
        }
        let store = open(&dir, Durability::Sync);
        let page = store.list_txns(txns_of(Some("agent:late"))).await.unwrap();
        assert_eq!(page.roots.len(), 1);
        assert_eq!(page.roots[0].0.token_id, tid(7));
        // The root's six entries (txns, subject, two parties both ways) and the child's
        // audience both ways: nothing for the orphan.
        assert_eq!(store.stats().await.unwrap().txn_index_entries, 6 + 2);
        // The upgrade did not count the transaction (it holds a child already): the next
        // child finds it by a scan and records the true count, 3.
        let txns = cf(&store.inner.db, keys::CF_TXNS).unwrap();
        let value = |s: &RocksStore| s.inner.db.get_cf(txns, t.0).unwrap().unwrap();
        assert_eq!(value(&store), tid(7).0.to_vec());
        store
            .put_child(record(t, tid(11), Some(tid(7))), 4)
            .await
            .unwrap();
        assert_eq!(value(&store), keys::txn_value(tid(7), 3));
        drop(store);
        // Recorded as upgraded: a second open does not redo it.
        let store = open(&dir, Durability::Sync);
        assert_eq!(schema_version(&store.inner.db), Some(keys::SCHEMA_VERSION));
    }

    #[tokio::test]
    async fn a_version_2_store_opens_as_the_current_version_and_its_counts_are_rebuilt() {
        let dir = TempDir::new().unwrap();
        let t = txn(79);
        {
            let store = open(&dir, Durability::Sync);
            store.put(record(t, tid(20), None)).await.unwrap();
            store
                .put_child(record(t, tid(21), Some(tid(20))), 4)
                .await
                .unwrap();
            // As version 2 left it: the root's id alone, and version 2.
            let db = &store.inner.db;
            db.put_cf(cf(db, keys::CF_TXNS).unwrap(), t.0, tid(20).0)
                .unwrap();
            set_schema_version(db, 2);
        }
        let store = open(&dir, Durability::Sync);
        let db = &store.inner.db;
        assert_eq!(schema_version(db), Some(keys::SCHEMA_VERSION));
        store
            .put_child(record(t, tid(22), Some(tid(20))), 4)
            .await
            .unwrap();
        let txns = cf(db, keys::CF_TXNS).unwrap();
        assert_eq!(
            db.get_cf(txns, t.0).unwrap().unwrap(),
            keys::txn_value(tid(20), 3)
        );
    }

    #[tokio::test]
    async fn tree_entries_from_older_builds_are_read_through_their_records() {
        let dir = TempDir::new().unwrap();
        let t = txn(80);
        let store = open(&dir, Durability::Sync);
        store.put(record(t, tid(30), None)).await.unwrap();
        let child = record(t, tid(31), Some(tid(30)));
        store.put_child(child.clone(), 4).await.unwrap();
        let fresh = store.txn_tree(t).await.unwrap();
        // As a schema-3 build wrote them: empty values.
        let db = &store.inner.db;
        for id in [tid(30), tid(31)] {
            db.put_cf(
                cf(db, keys::CF_TXN_TOKENS).unwrap(),
                keys::txn_token_key(t, id),
                keys::EMPTY_VALUE,
            )
            .unwrap();
        }
        assert_eq!(store.txn_tree(t).await.unwrap(), fresh);
        assert_eq!(fresh[1], TreeEntry::of(&child));
    }

    #[test]
    fn a_different_schema_version_is_refused() {
        let dir = TempDir::new().unwrap();
        {
            let store = open(&dir, Durability::Sync);
            let db = &store.inner.db;
            set_schema_version(db, keys::SCHEMA_VERSION + 1);
        }
        match RocksStore::open(dir.path(), StoreOptions::default()) {
            Err(StoreError::Corrupt { what }) => {
                assert!(
                    what.contains(&format!("schema version {}", keys::SCHEMA_VERSION + 1)),
                    "{what}"
                )
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        {
            // A malformed version value is refused too.
            let db = DB::open_cf(&Options::default(), dir.path(), keys::ALL_CFS).unwrap();
            db.put_cf(
                cf(&db, keys::CF_META).unwrap(),
                keys::SCHEMA_VERSION_KEY,
                b"v1",
            )
            .unwrap();
        }
        assert!(matches!(
            RocksStore::open(dir.path(), StoreOptions::default()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_corrupt_record_reads_as_corrupt() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let db = &store.inner.db;
        db.put_cf(
            cf(db, keys::CF_TOKENS).unwrap(),
            keys::token_key(tid(5)),
            [9u8, 1, 2],
        )
        .unwrap();
        assert!(matches!(
            store.get(tid(5)).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_unreachable_path_is_a_backend_error() {
        let dir = TempDir::new().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            RocksStore::open(&file.join("db"), StoreOptions::default()),
            Err(StoreError::Backend(_))
        ));
    }

    /// Total size of the files directly in `dir` (RocksDB keeps a flat directory), and
    /// of its SST files alone.
    fn dir_size(dir: &Path) -> (u64, u64) {
        let (mut total, mut sst) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let len = entry.metadata().unwrap().len();
            total += len;
            if entry.file_name().to_string_lossy().ends_with(".sst") {
                sst += len;
            }
        }
        (total, sst)
    }

    /// A figure, not a check: how many bytes one stored token costs on disk once
    /// compacted. Run with
    /// `cargo test --workspace -- --ignored disk_bytes_per_stored_token --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement; run by hand"]
    async fn disk_bytes_per_stored_token() {
        const TOKENS: u32 = 20_000;
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        for n in 0..TOKENS {
            let t = txn(u64::from(n / 4));
            if n % 4 == 0 {
                store.put(record(t, tid(n), None)).await.unwrap();
            } else {
                let r = record(t, tid(n), Some(tid(n - n % 4)));
                store.put_child(r, 8).await.unwrap();
            }
        }
        store.compact_all().unwrap();
        let (size, sst) = dir_size(dir.path());
        println!(
            "{TOKENS} tokens (a root and three children per transaction): {sst} bytes of SST \
             files, {} bytes per token ({size} bytes in the directory incl. logs)",
            sst / u64::from(TOKENS)
        );
        assert!(sst > 0);
    }

    #[tokio::test]
    async fn a_transaction_entry_without_a_count_is_counted_once_then_kept() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        let t = txn(71_000);
        store.put(record(t, tid(71_000), None)).await.unwrap();
        store
            .put_child(record(t, tid(71_001), Some(tid(71_000))), 8)
            .await
            .unwrap();
        let db = &store.inner.db;
        let txns = cf(db, keys::CF_TXNS).unwrap();
        let value = |db: &DB| db.get_cf(txns, t.0).unwrap().unwrap();
        assert_eq!(value(db), keys::txn_value(tid(71_000), 2));
        // As an older build wrote it: the root's id alone.
        db.put_cf(txns, t.0, tid(71_000).0).unwrap();
        store
            .put_child(record(t, tid(71_002), Some(tid(71_000))), 8)
            .await
            .unwrap();
        assert_eq!(
            value(db),
            keys::txn_value(tid(71_000), 3),
            "counted by a scan"
        );
        let page = store.list_txns(txns_of(None)).await.unwrap();
        assert_eq!(page.roots.len(), 1, "still listed by its root");
    }

    /// Up to 10 transactions, of `party` if given, at any time and status.
    fn txns_of(party: Option<&str>) -> TxnQuery {
        TxnQuery {
            subject: None,
            party: party.map(Into::into),
            since: None,
            until: None,
            status: None,
            now: UnixMillis(0),
            before: None,
            limit: 10,
        }
    }

    fn files_ending(dir: &TempDir, suffix: &str) -> Vec<u64> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .map(|e| e.metadata().unwrap().len())
            .collect()
    }

    #[tokio::test]
    async fn a_clean_close_flushes_so_the_next_open_replays_no_log() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        for n in 0..100u32 {
            store
                .put(record(txn(70_000 + u64::from(n)), tid(70_000 + n), None))
                .await
                .unwrap();
        }
        assert!(
            files_ending(&dir, ".sst").is_empty(),
            "all in the memtables"
        );
        drop(store);
        assert!(!files_ending(&dir, ".sst").is_empty(), "flushed at close");
        let store = open(&dir, Durability::Sync);
        assert!(store.get(tid(70_042)).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn continuous_minting_of_short_lived_tokens_stays_bounded() {
        const ROUNDS: u64 = 20;
        const PER_ROUND: u32 = 200;
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        for round in 0..ROUNDS {
            // Each round mints a lineage per transaction: a root and three children,
            // all expiring within this round's window, then purges up to its end.
            let start = 1_000 + round * 1_000;
            for i in 0..PER_ROUND {
                let n = u32::try_from(round).unwrap() * PER_ROUND + i;
                let t = txn(10_000 + u64::from(n / 4));
                if i % 4 == 0 {
                    let r = conformance::expiring(record(t, tid(n), None), start + 500);
                    store.put(r).await.unwrap();
                } else {
                    let parent = tid(n - n % 4);
                    let r = conformance::expiring(record(t, tid(n), Some(parent)), start + 400);
                    store.put_child(r, 8).await.unwrap();
                }
            }
            let minted = store.stats().await.unwrap();
            assert_eq!(minted.tokens, u64::from(PER_ROUND), "round {round}");
            // txn_tokens + expiry per token, a link per child, a state row per root.
            assert!(minted.index_entries <= 4 * u64::from(PER_ROUND));
            let purged = store
                .purge_expired(UnixMillis(start + 1_000), usize::MAX)
                .await
                .unwrap();
            assert_eq!(purged.tokens, PER_ROUND as usize);
            assert!(!purged.more);
            // The tokens and every index of theirs are gone; the audit trail is not.
            assert_eq!(
                store.stats().await.unwrap(),
                StoreStats {
                    events: u64::from(PER_ROUND),
                    ..StoreStats::default()
                }
            );
            // Its own retention reclaims it.
            let events = store
                .purge_events(UnixMillis(1_800_000_000_000), usize::MAX)
                .await
                .unwrap();
            assert_eq!((events.tokens, events.more), (PER_ROUND as usize, false));
            assert_eq!(store.stats().await.unwrap(), StoreStats::default());
            store.compact_all().unwrap();
            // The total includes RocksDB's own info log (`LOG`), which grows with every
            // flush and compaction; the SST files hold the data.
            let (size, sst) = dir_size(dir.path());
            println!(
                "round {round:2}: {size} bytes on disk ({sst} in SST files) after purge and compaction"
            );
            assert!(size < 5 * 1024 * 1024, "round {round}: {size} bytes");
            assert!(sst < 64 * 1024, "round {round}: {sst} bytes of SST files");
        }
    }

    #[tokio::test]
    async fn an_orphan_expiry_entry_is_purged_and_counted() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let db = &store.inner.db;
        db.put_cf(
            cf(db, keys::CF_EXPIRY).unwrap(),
            keys::expiry_key(UnixMillis(5), tid(9)),
            keys::EMPTY_VALUE,
        )
        .unwrap();
        assert_eq!(store.stats().await.unwrap().index_entries, 1);
        let purged = store.purge_expired(UnixMillis(6), 10).await.unwrap();
        assert_eq!((purged.tokens, purged.more), (1, false));
        assert_eq!(store.stats().await.unwrap(), StoreStats::default());
    }

    /// A transaction after `from` whose lock stripe is not `hot`'s.
    fn txn_off_stripe_of(store: &RocksStore, hot: TxnId, from: u64) -> TxnId {
        let stripe = store.inner.txn_stripe(hot);
        (from..)
            .map(txn)
            .find(|t| store.inner.txn_stripe(*t) != stripe)
            .unwrap()
    }

    fn is_revoked_event(e: &Event) -> bool {
        matches!(e.kind, writ_core::EventKind::Revoked { .. })
    }

    /// What a mutation waiting on the held transaction got.
    #[derive(Debug)]
    enum Waited {
        Revoked(usize),
        Used(UseOutcome),
        Derived,
    }

    /// Thousands of mutations queued on one transaction's lock hold no thread of the
    /// blocking pool, so every other store call still completes while the lock is held.
    /// (When each waiter blocked a pool thread on the stripe, the few threads parked on it
    /// and everything else queued behind them for as long as the lock was held.)
    #[test]
    fn waiters_on_one_transaction_leave_the_blocking_pool_free() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::time::Duration;
        const WAITERS: u32 = 2_000;
        const LIVENESS: Duration = Duration::from_secs(60);
        async fn live<T>(what: &str, f: impl Future<Output = T>) -> T {
            tokio::time::timeout(LIVENESS, f).await.unwrap_or_else(|_| {
                panic!(
                    "{what} did not complete within {LIVENESS:?} while one transaction's \
                     lock was held: the blocking pool is starved"
                )
            })
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = TempDir::new().unwrap();
            let store = open(&dir, Durability::Buffered);
            let hot = txn(60_000);
            let (root, used, doomed) = (tid(60_000), tid(60_001), tid(60_002));
            store.put(record(hot, root, None)).await.unwrap();
            let limited = conformance::with_uses(record(hot, used, Some(root)), Some(WAITERS));
            store.put_child(limited, u32::MAX).await.unwrap();
            store
                .put_child(record(hot, doomed, Some(root)), u32::MAX)
                .await
                .unwrap();
            let (cold, fresh) = (
                txn_off_stripe_of(&store, hot, 61_000),
                txn_off_stripe_of(&store, hot, 62_000),
            );
            let cold_token = conformance::with_uses(record(cold, tid(61_000), None), Some(5));
            store.put(cold_token.clone()).await.unwrap();

            let guard = store.hold_txn(hot).await;
            let started = Arc::new(AtomicU32::new(0));
            let waiters: Vec<_> = (0..WAITERS)
                .map(|i| {
                    let (store, started) = (store.clone(), started.clone());
                    tokio::spawn(async move {
                        started.fetch_add(1, Ordering::Relaxed);
                        match i % 3 {
                            0 => store
                                .revoke(
                                    RevokeTarget::Token(doomed),
                                    crate::conformance::by("op"),
                                    "r".into(),
                                    conformance::event_at(UnixMillis(1)),
                                )
                                .await
                                .map(|r| Waited::Revoked(r.ids.len())),
                            1 => store.consume_use(used, None).await.map(Waited::Used),
                            _ => {
                                let child = record(hot, tid(70_000 + i), Some(root));
                                store
                                    .put_child(child, u32::MAX)
                                    .await
                                    .map(|()| Waited::Derived)
                            }
                        }
                    })
                })
                .collect();
            while started.load(Ordering::Relaxed) < WAITERS {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;

            // Every kind of call, on other transactions and on the held one's tokens.
            live("an insert", store.put(record(fresh, tid(62_000), None)))
                .await
                .unwrap();
            let (r, _) = live("get_with_state", store.get_with_state(used))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.token_id, used);
            assert!(live("state", store.state(root)).await.unwrap().is_some());
            let seen = Event::validated(
                conformance::event_at(UnixMillis(2)),
                &cold_token,
                &crate::conformance::by("svc:payments"),
                None,
                "active",
                String::new(),
            );
            live("append_events", store.append_events(vec![seen]))
                .await
                .unwrap();
            assert_eq!(
                live("consume_use", store.consume_use(cold_token.token_id, None))
                    .await
                    .unwrap(),
                UseOutcome::Consumed { remaining: Some(4) }
            );
            assert!(
                waiters.iter().all(|w| !w.is_finished()),
                "the held lock holds every mutation of its transaction"
            );

            drop(guard);
            let (mut revoked, mut used_up, mut derived) = (Vec::new(), 0, 0);
            for w in waiters {
                match live("a waiter, once the lock was released", w)
                    .await
                    .unwrap()
                    .unwrap()
                {
                    Waited::Revoked(n) => revoked.push(n),
                    Waited::Used(UseOutcome::Consumed { remaining: Some(_) }) => used_up += 1,
                    Waited::Derived => derived += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            // The first revocation revoked the token; the rest found nothing new.
            revoked.sort_unstable();
            assert_eq!(revoked.pop(), Some(1));
            assert!(revoked.iter().all(|&n| n == 0), "{revoked:?}");
            // No lost update: every use counted, every child stored.
            assert_eq!(store.state(used).await.unwrap().unwrap().uses, used_up);
            assert_eq!(
                tree_ids(store.txn_tree(hot).await.unwrap()).len(),
                3 + derived
            );
            let events = store.events(hot, None, usize::MAX).await.unwrap();
            assert_eq!(events.iter().filter(|e| is_revoked_event(e)).count(), 1);
        });
    }

    #[tokio::test]
    async fn a_revocation_that_changes_nothing_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let t = txn(63_000);
        let (root, child) = (tid(63_000), tid(63_001));
        store.put(record(t, root, None)).await.unwrap();
        store
            .put_child(record(t, child, Some(root)), 8)
            .await
            .unwrap();
        let revoke = |target| {
            store.revoke(
                target,
                crate::conformance::by("op"),
                "r".into(),
                conformance::event_at(UnixMillis(7)),
            )
        };
        let first = revoke(RevokeTarget::Token(child)).await.unwrap();
        assert_eq!(first.ids, vec![child]);
        assert!(first.event.is_some());
        let written = store.sequence_number();
        let again = revoke(RevokeTarget::Token(child)).await.unwrap();
        assert_eq!((again.ids, again.event), (vec![], None));
        assert_eq!(store.sequence_number(), written, "nothing written");

        let all = revoke(RevokeTarget::Txn(t)).await.unwrap();
        assert_eq!(all.ids, vec![root]);
        let written = store.sequence_number();
        for target in [
            RevokeTarget::Txn(t),
            RevokeTarget::Token(root),
            RevokeTarget::Token(child),
        ] {
            let again = revoke(target).await.unwrap();
            assert_eq!((again.ids, again.event), (vec![], None), "{target:?}");
        }
        assert_eq!(
            revoke(RevokeTarget::Txn(txn(63_001))).await,
            Err(StoreError::NotFound)
        );
        assert_eq!(
            revoke(RevokeTarget::Token(tid(63_999))).await,
            Err(StoreError::NotFound)
        );
        assert_eq!(store.sequence_number(), written, "nothing written");
        let events = store.events(t, None, 100).await.unwrap();
        assert_eq!(events.iter().filter(|e| is_revoked_event(e)).count(), 2);
    }

    #[tokio::test]
    async fn a_purge_pass_over_many_stripes_deletes_every_token_and_index() {
        const TXNS: u32 = 100;
        assert!(2 * TXNS as usize <= PURGE_BATCH, "one pass");
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let mut stripes = BTreeSet::new();
        for i in 0..TXNS {
            // A root and a child per transaction, the child linked under the root.
            let t = txn(64_000 + u64::from(i));
            stripes.insert(store.inner.txn_stripe(t));
            let (root, child) = (tid(64_000 + 2 * i), tid(64_001 + 2 * i));
            let mut c = conformance::expiring(record(t, child, Some(root)), 4_000);
            c.audience.id = format!("agent:{i}");
            store
                .put(conformance::expiring(record(t, root, None), 5_000))
                .await
                .unwrap();
            store.put_child(c, 8).await.unwrap();
        }
        assert!(stripes.len() > 50, "{} stripes", stripes.len());
        let live = txn(65_000);
        store.put(record(live, tid(65_000), None)).await.unwrap();
        let purged = store
            .purge_expired(UnixMillis(10_000), usize::MAX)
            .await
            .unwrap();
        assert_eq!((purged.tokens, purged.more), (2 * TXNS as usize, false));
        // What is left is the live token with its two index entries and its
        // transaction's six listing entries, and the audit trail.
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                tokens: 1,
                index_entries: 2,
                txn_index_entries: 6,
                events: u64::from(2 * TXNS + 1),
                ..StoreStats::default()
            }
        );
        for i in 0..TXNS {
            let t = txn(64_000 + u64::from(i));
            assert_eq!(
                tree_ids(store.txn_tree(t).await.unwrap()),
                Vec::<TokenId>::new()
            );
        }
        let page = store.list_txns(txns_of(None)).await.unwrap();
        assert_eq!(page.roots.len(), 1);
        assert_eq!(page.roots[0].0.txn, live);
        let agent = store.list_txns(txns_of(Some("agent:7"))).await.unwrap();
        assert!(agent.roots.is_empty());
    }

    /// A purge waiting for a stripe that is held holds no other stripe, and has already
    /// purged the groups before it (it writes group by group, in stripe order).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_holds_one_stripe_at_a_time() {
        use std::time::Duration;
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let mut roots = Vec::new();
        for i in 0..64u32 {
            let t = txn(66_000 + u64::from(i));
            let r = conformance::expiring(record(t, tid(66_000 + i), None), 5_000);
            store.put(r).await.unwrap();
            roots.push((store.inner.txn_stripe(t), t, tid(66_000 + i)));
        }
        roots.sort();
        let (held, held_txn, held_root) = roots[roots.len() / 2];
        let guard = store.hold_txn(held_txn).await;
        let purge = {
            let store = store.clone();
            tokio::spawn(async move { store.purge_expired(UnixMillis(10_000), 1_000).await })
        };
        let before: Vec<TokenId> = roots
            .iter()
            .filter(|(s, _, _)| *s < held)
            .map(|(_, _, id)| *id)
            .collect();
        assert!(!before.is_empty());
        tokio::time::timeout(Duration::from_secs(60), async {
            for id in &before {
                while store.get(*id).await.unwrap().is_some() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await
        .expect("the purge deleted nothing while one stripe was held");
        // Now it waits for the held stripe, holding no other.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!purge.is_finished());
        for (stripe, lock) in store.inner.txn_locks.iter().enumerate() {
            if stripe != held {
                assert!(
                    lock.try_lock().is_ok(),
                    "stripe {stripe} held while the purge waits for {held}"
                );
            }
        }
        assert!(store.get(held_root).await.unwrap().is_some());
        drop(guard);
        let purged = purge.await.unwrap().unwrap();
        assert_eq!((purged.tokens, purged.more), (64, false));
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                events: 64,
                ..StoreStats::default()
            }
        );
    }

    #[tokio::test]
    async fn a_disablement_survives_reopening_until_cleared() {
        let dir = TempDir::new().unwrap();
        let d = PartyDisable::new(UnixMillis(5), "op:alice".into(), "compromised".into());
        {
            let store = open(&dir, Durability::Buffered);
            store
                .set_party_disabled("agent:rogue".into(), Some(d.clone()))
                .await
                .unwrap();
            store
                .set_party_disabled("agent:other".into(), Some(d.clone()))
                .await
                .unwrap();
            store
                .set_party_disabled("agent:other".into(), None)
                .await
                .unwrap();
        }
        let store = open(&dir, Durability::Buffered);
        assert_eq!(
            store.disabled_parties().await.unwrap(),
            vec![("agent:rogue".to_owned(), d)]
        );
        store
            .set_party_disabled("agent:rogue".into(), None)
            .await
            .unwrap();
        drop(store);
        let store = open(&dir, Durability::Buffered);
        assert_eq!(store.disabled_parties().await.unwrap(), vec![]);
        // A disablement that does not decode is corrupt, not forgotten.
        let db = &store.inner.db;
        db.put_cf(cf(db, keys::CF_PARTIES).unwrap(), b"agent:x", [9u8, 1])
            .unwrap();
        assert!(matches!(
            store.disabled_parties().await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// A store from before `parties` existed opens (the family is created, empty); a
    /// build that does not know it refuses a store that has it.
    #[tokio::test]
    async fn the_parties_family_is_added_to_older_stores_and_refused_by_older_builds() {
        let dir = TempDir::new().unwrap();
        let root = record(txn(84), tid(84), None);
        {
            let store = open(&dir, Durability::Sync);
            store.put(root.clone()).await.unwrap();
        }
        let older: Vec<&str> = keys::ALL_CFS
            .into_iter()
            .filter(|name| *name != keys::CF_PARTIES)
            .collect();
        {
            let mut db = DB::open_cf(&Options::default(), dir.path(), keys::ALL_CFS).unwrap();
            db.drop_cf(keys::CF_PARTIES).unwrap();
        }
        // As an older build left it: its families, and the same schema version.
        drop(DB::open_cf(&Options::default(), dir.path(), &older).unwrap());
        {
            let store = open(&dir, Durability::Sync);
            assert_eq!(schema_version(&store.inner.db), Some(keys::SCHEMA_VERSION));
            assert_eq!(store.get(tid(84)).await.unwrap(), Some(root));
            assert_eq!(store.disabled_parties().await.unwrap(), vec![]);
            let d = PartyDisable::new(UnixMillis(1), "op".into(), "r".into());
            store
                .set_party_disabled("agent:rogue".into(), Some(d))
                .await
                .unwrap();
        }
        // An older build would serve the rogue party again: it cannot open the store.
        let refused = DB::open_cf(&Options::default(), dir.path(), &older);
        assert!(refused.is_err(), "a family left unopened is refused");
        assert_eq!(
            open(&dir, Durability::Sync)
                .disabled_parties()
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// Requests, their states and every index survive closing and reopening; refusals and
    /// an identical request write nothing.
    #[tokio::test]
    async fn consents_survive_close_and_reopen() {
        use crate::api::{ConsentInsert, ConsentQuery};
        use crate::conformance::{ConsentShorthand, consent_request};
        let dir = TempDir::new().unwrap();
        let t = txn(87_000);
        let token = tid(87_000);
        let (pending, approved, redeemed) = (
            consent_request(t, token, 1, 5_000),
            consent_request(t, token, 2, 5_001),
            consent_request(t, token, 3, 5_002),
        );
        let decision = |approved: bool| writ_core::Decision {
            approved,
            at: UnixMillis(6_000),
            by: "app:wallet".into(),
            auth: None,
            channel: writ_core::Channel::PageLink,
            subject: "user:alice".into(),
        };
        let child = {
            let mut c = record(t, tid(87_001), Some(token));
            c.issued_at = UnixMillis(6_001);
            c.grant.max_uses = Some(1);
            c
        };
        let before = {
            let store = open(&dir, Durability::Buffered);
            store.put(record(t, token, None)).await.unwrap();
            for r in [&pending, &approved, &redeemed] {
                store.ask(r.clone()).await.unwrap();
            }
            store.decide(&approved, decision(true)).await.unwrap();
            store.decide(&redeemed, decision(true)).await.unwrap();
            store
                .redeem(&redeemed, "svc:payments", child.clone())
                .await
                .unwrap();
            // Nothing is written for an identical open request, nor for a refusal.
            let written = store.sequence_number();
            let mut same = consent_request(t, token, 1, 5_500);
            same.id = writ_core::ConsentId::new(UnixMillis(5_500), [9; 8]);
            assert!(matches!(
                store.ask(same).await,
                Ok(ConsentInsert::Existing(_))
            ));
            assert!(store.decide(&approved, decision(false)).await.is_err());
            let again = record(t, tid(87_002), Some(token));
            assert!(
                store
                    .redeem(&redeemed, "svc:payments", again)
                    .await
                    .is_err()
            );
            assert_eq!(store.sequence_number(), written, "nothing written");
            store.stats().await.unwrap()
        };
        let store = open(&dir, Durability::Buffered);
        assert_eq!(store.stats().await.unwrap(), before);
        assert_eq!(before.consents, 3);
        // Three keys, three transaction entries, two open (pending and approved).
        assert_eq!(before.consent_index_entries, 3 + 3 + 2);
        for (r, status) in [
            (&pending, writ_core::ConsentStatus::Pending),
            (&approved, writ_core::ConsentStatus::Approved),
            (&redeemed, writ_core::ConsentStatus::Redeemed),
        ] {
            let stored = store.consent(r.id).await.unwrap().unwrap();
            assert_eq!(stored.status(UnixMillis(6_100)), status);
            assert_eq!(store.consent_by_key(r.key).await.unwrap(), Some(stored));
        }
        assert_eq!(store.get(child.token_id).await.unwrap(), Some(child));
        let listed = store
            .list_consents(ConsentQuery {
                status: None,
                subject: None,
                txn: Some(t),
                now: UnixMillis(6_100),
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        let ids: Vec<_> = listed.requests.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![redeemed.id, approved.id, pending.id]);
        // The open index survived: the sweep finds both open requests.
        let issued = conformance::Issued::at(UnixMillis(400_000));
        assert_eq!(
            store
                .expire_consents(UnixMillis(400_000), 10, conformance::by("writ"), issued)
                .await,
            Ok((2, false))
        );
    }

    /// A store from before the consent families existed opens (they are created, empty).
    #[tokio::test]
    async fn the_consent_families_are_added_to_older_stores() {
        use crate::conformance::{ConsentShorthand, consent_request};
        let dir = TempDir::new().unwrap();
        let root = record(txn(88), tid(88), None);
        {
            let store = open(&dir, Durability::Sync);
            store.put(root.clone()).await.unwrap();
        }
        let older: Vec<&str> = keys::ALL_CFS
            .into_iter()
            .filter(|name| !keys::CONSENT_CFS.contains(name))
            .collect();
        {
            let mut db = DB::open_cf(&Options::default(), dir.path(), keys::ALL_CFS).unwrap();
            for name in keys::CONSENT_CFS {
                db.drop_cf(name).unwrap();
            }
        }
        // As an older build left it: its families, and the same schema version.
        drop(DB::open_cf(&Options::default(), dir.path(), &older).unwrap());
        let store = open(&dir, Durability::Sync);
        assert_eq!(schema_version(&store.inner.db), Some(keys::SCHEMA_VERSION));
        assert_eq!(store.get(tid(88)).await.unwrap(), Some(root));
        let r = consent_request(txn(88), tid(88), 1, 1_000);
        assert_eq!(store.consent(r.id).await.unwrap(), None);
        store.ask(r.clone()).await.unwrap();
        assert_eq!(store.consent_by_key(r.key).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn a_corrupt_consent_request_reads_as_corrupt() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let id = writ_core::ConsentId::new(UnixMillis(1), [1; 8]);
        let db = &store.inner.db;
        db.put_cf(
            cf(db, keys::CF_CONSENTS).unwrap(),
            keys::consent_key(id),
            [9u8, 1],
        )
        .unwrap();
        assert!(matches!(
            store.consent(id).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_party_revocation_with_nothing_new_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Sync);
        let t = txn(85_000);
        let mut held = record(t, tid(85_001), Some(tid(85_000)));
        held.audience.id = "agent:rogue".into();
        store.put(record(t, tid(85_000), None)).await.unwrap();
        store.put_child(held, 8).await.unwrap();
        let revoke = || {
            store.revoke_party(
                "agent:rogue".into(),
                conformance::by("op"),
                "r".into(),
                conformance::Issued::at(UnixMillis(5)),
            )
        };
        assert_eq!(revoke().await.unwrap().ids, vec![tid(85_001)]);
        let written = store.sequence_number();
        let again = revoke().await.unwrap();
        assert_eq!((again.revoked, again.txns, again.scanned), (0, 0, 1));
        assert_eq!(store.sequence_number(), written, "nothing written");
    }

    /// The walk takes each transaction's lock on its own: one held transaction holds up
    /// only itself, and the others are revoked meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_party_revocation_waits_for_a_held_transaction_only() {
        use std::time::Duration;
        const TXNS: u64 = 20;
        let dir = TempDir::new().unwrap();
        let store = open(&dir, Durability::Buffered);
        let hot = txn(86_000);
        let mut txns = vec![hot];
        txns.extend((0..TXNS).map(|i| txn_off_stripe_of(&store, hot, 86_001 + i * 10)));
        for (i, t) in txns.iter().enumerate() {
            let mut r = record(*t, tid(86_000 + u32::try_from(i).unwrap()), None);
            r.audience.id = "agent:rogue".into();
            store.put(r).await.unwrap();
        }
        let guard = store.hold_txn(hot).await;
        let issued = conformance::Issued::at(UnixMillis(5));
        let walk = {
            let (store, issued) = (store.clone(), issued.clone());
            tokio::spawn(async move {
                store
                    .revoke_party(
                        "agent:rogue".into(),
                        conformance::by("op"),
                        "r".into(),
                        issued,
                    )
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            while issued.stored().len() < txns.len() - 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the other transactions were revoked while one was held");
        assert!(!walk.is_finished());
        assert_eq!(
            store.state(tid(86_000)).await.unwrap().unwrap().revoked,
            None
        );
        drop(guard);
        let done = walk.await.unwrap().unwrap();
        assert_eq!((done.revoked, done.txns), (TXNS + 1, TXNS + 1));
        assert!(
            store
                .state(tid(86_000))
                .await
                .unwrap()
                .unwrap()
                .revoked
                .is_some()
        );
    }

    #[test]
    fn durability_reads_from_config_in_lowercase() {
        #[derive(Deserialize)]
        struct Wrap {
            store: StoreOptions,
        }
        let parse = |s: &str| {
            serde_json::from_str::<Wrap>(s)
                .ok()
                .map(|w| w.store.durability)
        };
        assert_eq!(
            parse(r#"{"store":{"durability":"sync"}}"#),
            Some(Durability::Sync)
        );
        assert_eq!(
            parse(r#"{"store":{"durability":"buffered"}}"#),
            Some(Durability::Buffered)
        );
        assert_eq!(parse(r#"{"store":{}}"#), Some(Durability::Sync));
        assert_eq!(parse(r#"{"store":{"durability":"Sync"}}"#), None);
        assert_eq!(Durability::default(), Durability::Sync);
    }
}
