//! [`RocksStore`]: the embedded, durable [`TokenStore`], on RocksDB.
//!
//! One column family per key space (see `keys`). Every engine call is blocking, so
//! each runs on Tokio's blocking pool and never stalls an async worker. That is also
//! where group commit comes from: concurrent writers block in RocksDB's write thread,
//! which batches them into one WAL write and one fsync.
//!
//! Durability rests on the write-ahead log, which is never disabled: an acknowledged
//! insert is in the WAL (and, with [`Durability::Sync`], on disk), and RocksDB replays
//! the WAL on the next open.

use crate::api::{StoreError, TokenStore};
use crate::{codec, keys};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DataBlockIndexType, Direction,
    IteratorMode, Options, PrefixRange, ReadOptions, SliceTransform, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use writ_core::{TokenId, TokenRecord, TxnId};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// When inserts are acknowledged.
    pub durability: Durability,
}

/// Writers whose token ids fall in the same stripe serialise their
/// existence-check-then-write; others proceed (and group-commit) concurrently.
const INSERT_STRIPES: usize = 64;

struct Inner {
    db: DB,
    durability: Durability,
    path: PathBuf,
    /// Makes "check the id is free, then write" atomic per token id.
    insert_locks: Vec<Mutex<()>>,
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
fn tokens_cf_options() -> Options {
    let mut table = BlockBasedOptions::default();
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
        let cfs = [
            ColumnFamilyDescriptor::new(keys::CF_TOKENS, tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_TXN_TOKENS, txn_tokens_cf_options()),
            ColumnFamilyDescriptor::new(keys::CF_EXPIRY, Options::default()),
            ColumnFamilyDescriptor::new(keys::CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(backend)?;
        check_schema(&db)?;
        tracing::info!(path = %path.display(), durability = ?opts.durability, "token store open");
        Ok(RocksStore {
            inner: Arc::new(Inner {
                db,
                durability: opts.durability,
                path: path.to_owned(),
                insert_locks: (0..INSERT_STRIPES).map(|_| Mutex::new(())).collect(),
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
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            let version = keys::encode_schema_version(keys::SCHEMA_VERSION);
            db.put_cf_opt(meta, keys::SCHEMA_VERSION_KEY, version, &sync)
                .map_err(backend)?;
            tracing::info!(
                version = keys::SCHEMA_VERSION,
                "initialised new token store"
            );
            Ok(())
        }
    }
}

fn insert_blocking(inner: &Inner, record: &TokenRecord) -> Result<(), StoreError> {
    let db = &inner.db;
    let tokens = cf(db, keys::CF_TOKENS)?;
    let key = keys::token_key(record.token_id);
    let value = codec::encode(record)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(tokens, key, value);
    batch.put_cf(
        cf(db, keys::CF_TXN_TOKENS)?,
        keys::txn_token_key(record.txn, record.token_id),
        keys::EMPTY_VALUE,
    );
    batch.put_cf(
        cf(db, keys::CF_EXPIRY)?,
        keys::expiry_key(record.grant.expires_at, record.token_id),
        keys::EMPTY_VALUE,
    );
    let mut write_opts = WriteOptions::default();
    write_opts.set_sync(inner.durability == Durability::Sync);

    // Token ids are hash output, so their first byte spreads them evenly over stripes.
    let stripe = usize::from(key[0]) % inner.insert_locks.len();
    let _guard = inner.insert_locks[stripe]
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if db.get_pinned_cf(tokens, key).map_err(backend)?.is_some() {
        return Err(StoreError::Conflict);
    }
    db.write_opt(batch, &write_opts).map_err(backend)
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

fn txn_tokens_blocking(inner: &Inner, txn: TxnId) -> Result<Vec<TokenId>, StoreError> {
    let db = &inner.db;
    let prefix = keys::txn_prefix(txn);
    let mut read_opts = ReadOptions::default();
    read_opts.set_prefix_same_as_start(true);
    read_opts.set_iterate_range(PrefixRange(prefix));
    let iter = db.iterator_cf_opt(
        cf(db, keys::CF_TXN_TOKENS)?,
        read_opts,
        IteratorMode::From(&prefix, Direction::Forward),
    );
    let mut ids = Vec::new();
    for item in iter {
        let (key, _) = item.map_err(backend)?;
        // The bounds already stop the scan; checking again costs nothing.
        if !key.starts_with(&prefix) {
            break;
        }
        let id = keys::token_id_of_txn_key(&key)
            .ok_or_else(|| corrupt(format!("txn_tokens key of {} bytes", key.len())))?;
        ids.push(id);
    }
    Ok(ids)
}

impl TokenStore for RocksStore {
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.blocking(move |inner| insert_blocking(inner, &record))
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        self.blocking(move |inner| get_blocking(inner, id))
    }

    fn txn_tokens(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        self.blocking(move |inner| txn_tokens_blocking(inner, txn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, record, tid, txn};
    use tempfile::TempDir;

    fn open(dir: &TempDir, durability: Durability) -> RocksStore {
        RocksStore::open(dir.path(), StoreOptions { durability }).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_sync() {
        let dir = TempDir::new().unwrap();
        conformance::run(open(&dir, Durability::Sync)).await;
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
            store.insert(root.clone()).await.unwrap();
            clone.insert(child.clone()).await.unwrap();
        }
        // Every clone is gone, so the database is closed and its lock released.
        let store = open(&dir, Durability::Sync);
        assert_eq!(store.get(tid(1)).await.unwrap(), Some(root.clone()));
        assert_eq!(store.get(tid(2)).await.unwrap(), Some(child));
        assert_eq!(
            store.txn_tokens(txn(7)).await.unwrap(),
            vec![tid(1), tid(2)]
        );
        assert_eq!(store.insert(root).await, Err(StoreError::Conflict));
    }

    #[tokio::test]
    async fn buffered_writes_survive_a_clean_reopen() {
        let dir = TempDir::new().unwrap();
        let r = record(txn(8), tid(3), None);
        {
            let store = open(&dir, Durability::Buffered);
            store.insert(r.clone()).await.unwrap();
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
        store.insert(r.clone()).await.unwrap();
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
        assert_eq!(idx, Some(vec![]));
    }

    #[test]
    fn a_different_schema_version_is_refused() {
        let dir = TempDir::new().unwrap();
        {
            let store = open(&dir, Durability::Sync);
            let db = &store.inner.db;
            let meta = cf(db, keys::CF_META).unwrap();
            db.put_cf(
                meta,
                keys::SCHEMA_VERSION_KEY,
                keys::encode_schema_version(keys::SCHEMA_VERSION + 1),
            )
            .unwrap();
        }
        match RocksStore::open(dir.path(), StoreOptions::default()) {
            Err(StoreError::Corrupt { what }) => {
                assert!(what.contains("schema version 2"), "{what}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        {
            // A malformed version value is refused too.
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [
                    keys::CF_TOKENS,
                    keys::CF_TXN_TOKENS,
                    keys::CF_EXPIRY,
                    keys::CF_META,
                ],
            )
            .unwrap();
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
