//! Token records, their states and indexes: inserting a root or a child (`stage_child`, shared
//! with consent redemption), reading records and states (from memory when it can), spending
//! uses, and the transaction tree.

use super::*;

/// The transaction-listing index entries a record contributes: for a root, the
/// transaction itself, its subject and its two parties (minter and audience); for a
/// child, its audience (its actor was its parent's audience). Idempotent puts.
pub(super) fn index_txn(
    db: &DB,
    batch: &mut WriteBatch,
    record: &TokenRecord,
) -> Result<(), StoreError> {
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

/// On the writer, under the transaction's lock ([`RocksStore::committed`]).
pub(super) fn insert_blocking(
    inner: &Inner,
    record: &Arc<TokenRecord>,
    event: &Event,
    opts: &WriteOptions,
) -> Result<(), StoreError> {
    let db = &inner.db;
    let tokens = cf(db, keys::CF_TOKENS)?;
    let key = keys::token_key(record.token_id);
    let mut batch = WriteBatch::default();
    let encoded = put_record(inner, &mut batch, record)?;
    index_txn(db, &mut batch, record)?;
    put_event(db, &mut batch, event)?;
    let _id_guard = inner.lock_id(record.token_id);
    if db.get_pinned_cf(tokens, key).map_err(backend)?.is_some() {
        return Err(StoreError::Conflict);
    }
    write_with_states(inner, batch, opts, &[], Some((record, encoded)))
}

/// The record and its index entries, added to `batch`; the record's encoded size.
pub(super) fn put_record(
    inner: &Inner,
    batch: &mut WriteBatch,
    record: &TokenRecord,
) -> Result<usize, StoreError> {
    let db = &inner.db;
    let encoded = codec::encode(record)?;
    let size = encoded.len();
    batch.put_cf(
        cf(db, keys::CF_TOKENS)?,
        keys::token_key(record.token_id),
        encoded,
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
    Ok(size)
}

/// One point read in `family`, decoded by `decode`; `None` when the key is absent.
pub(super) fn read_decoded<T>(
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
pub(super) fn read_state(inner: &Inner, id: TokenId) -> Result<Option<TokenState>, StoreError> {
    read_decoded(
        inner,
        keys::CF_STATE,
        keys::state_key(id),
        codec::decode_state,
    )
}

pub(super) fn put_state(
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

pub(super) fn token_exists(inner: &Inner, id: TokenId) -> Result<bool, StoreError> {
    let db = &inner.db;
    Ok(db
        .get_pinned_cf(cf(db, keys::CF_TOKENS)?, keys::token_key(id))
        .map_err(backend)?
        .is_some())
}

pub(super) fn state_blocking(inner: &Inner, id: TokenId) -> Result<Option<TokenState>, StoreError> {
    // A state row is only ever written for an existing token.
    if let Some(state) = read_state(inner, id)? {
        return Ok(Some(state));
    }
    Ok(token_exists(inner, id)?.then(TokenState::default))
}

/// On the writer, under the transaction's lock ([`RocksStore::committed`]).
pub(super) fn insert_child_blocking(
    inner: &Inner,
    record: &Arc<TokenRecord>,
    max_children: u32,
    event: &Event,
    opts: &WriteOptions,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    put_event(&inner.db, &mut batch, event)?;
    stage_child(inner, &mut batch, record, max_children)?.write(inner, batch, opts)
}

/// Writes `batch`, which sets the states in `changed` (and stores the token `born`, with
/// its encoded size, when there is one), then tells the hot tier of them: the one way a
/// state or a token is written under a lock, so no writer can leave the tier behind. Under
/// the lock of the tokens' transaction ([`RocksStore::committed`], [`RocksStore::locked`]),
/// which is held until the caller is answered: no Validate that starts afterwards reads
/// the states before.
pub(super) fn write_with_states(
    inner: &Inner,
    batch: WriteBatch,
    opts: &WriteOptions,
    changed: &[(TokenId, &TokenState)],
    born: Option<(&Arc<TokenRecord>, usize)>,
) -> Result<(), StoreError> {
    inner.db.write_opt(batch, opts).map_err(backend)?;
    for (id, state) in changed {
        inner.hot.changed(id, state);
    }
    if let Some((record, encoded)) = born {
        inner.hot.born(record.clone(), encoded);
    }
    Ok(())
}

/// A child staged in a batch ([`stage_child`]): holds its id's lock until the batch is
/// written ([`Staged::write`]), which reports the parent's new state and the child to the
/// hot tier.
pub(super) struct Staged<'a> {
    _id_guard: MutexGuard<'a, ()>,
    parent: TokenId,
    parent_state: TokenState,
    child: &'a Arc<TokenRecord>,
    encoded: usize,
}

impl Staged<'_> {
    /// Writes `batch`, which holds the staged child, with [`write_with_states`].
    pub(super) fn write(
        self,
        inner: &Inner,
        batch: WriteBatch,
        opts: &WriteOptions,
    ) -> Result<(), StoreError> {
        let changed = [(self.parent, &self.parent_state)];
        write_with_states(
            inner,
            batch,
            opts,
            &changed,
            Some((self.child, self.encoded)),
        )
    }
}

/// Adds a child token to `batch` as [`TokenStore::insert_child`] stores it, after its
/// checks (the id is free, the parent exists in the transaction, [`admit_child`]): the
/// record and its indexes, the parent→child link, the parent's new state and the
/// transaction's count. The one way a child is written (`insert_child` and
/// `redeem_consent`). Under the transaction's lock; returns what writes `batch`
/// ([`Staged::write`]).
pub(super) fn stage_child<'a>(
    inner: &'a Inner,
    batch: &mut WriteBatch,
    record: &'a Arc<TokenRecord>,
    max_children: u32,
) -> Result<Staged<'a>, StoreError> {
    let parent_id = record.parent.ok_or(StoreError::ParentMissing)?;
    let encoded = put_record(inner, batch, record)?;
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
    // On the writer, where every microsecond is every queued write's: from the tier, which
    // under the lock holds the parent's current state or nothing.
    let (parent, mut pstate) = match inner.hot.held(&parent_id) {
        Some(held) => held,
        None => match get_blocking(inner, parent_id)? {
            Some(p) => (p.into(), read_state(inner, parent_id)?.unwrap_or_default()),
            None => return Err(StoreError::ParentMissing),
        },
    };
    if parent.txn != record.txn {
        return Err(StoreError::ParentMissing);
    }
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
    Ok(Staged {
        _id_guard: id_guard,
        parent: parent_id,
        parent_state: pstate,
        child: record,
        encoded,
    })
}

/// Ids of the children of `parent`, from the `children` index.
pub(super) fn children_of(inner: &Inner, parent: TokenId) -> Result<Vec<TokenId>, StoreError> {
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
pub(super) fn prefix_iter<'a>(
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
pub(super) fn scan_ids(
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

/// A token without a use limit: nothing to count, so no lock; one read decides and only
/// the event is written.
pub(super) fn consume_unlimited_blocking(
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

/// A token with `max` uses, on the writer under its transaction's lock
/// ([`RocksStore::committed`]).
pub(super) fn consume_limited_blocking(
    inner: &Inner,
    id: TokenId,
    max: u32,
    event: Option<&Event>,
    opts: &WriteOptions,
) -> Result<UseOutcome, StoreError> {
    if !token_exists(inner, id)? {
        return Ok(UseOutcome::Unknown); // purged since its record was read
    }
    let mut state = read_state(inner, id)?.unwrap_or_default();
    let outcome = crate::api::spend_use(max, &mut state);
    if !matches!(outcome, UseOutcome::Consumed { .. }) {
        return Ok(outcome);
    }
    let mut batch = WriteBatch::default();
    put_state(inner, &mut batch, id, &state)?;
    if let Some(e) = event {
        put_event(&inner.db, &mut batch, e)?;
    }
    write_with_states(inner, batch, opts, &[(id, &state)], None)?;
    Ok(outcome)
}

/// A token's record, shared: from the hot tier when it holds it, else read (and decoded)
/// from RocksDB.
pub(super) fn record_blocking(
    inner: &Inner,
    id: TokenId,
) -> Result<Option<Arc<TokenRecord>>, StoreError> {
    match inner.hot.record(&id) {
        Some(record) => Ok(Some(record)),
        None => Ok(get_blocking(inner, id)?.map(Arc::new)),
    }
}

pub(super) fn get_blocking(inner: &Inner, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
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
pub(super) fn needs_disk(e: &rocksdb::Error) -> bool {
    e.kind() == rocksdb::ErrorKind::Incomplete
}

pub(super) fn read_opts_at(tier: ReadTier) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_read_tier(tier);
    opts
}

/// A token's record and its encoded size, read with `opts`. When they set
/// `ReadTier::BlockCache` the read never touches the disk, and `Ok(None)` (rather than an
/// answer) says it would have had to.
pub(super) fn get_record_at(
    inner: &Inner,
    id: TokenId,
    opts: &ReadOptions,
) -> Result<Option<Option<(TokenRecord, usize)>>, StoreError> {
    let db = &inner.db;
    match db.get_pinned_cf_opt(cf(db, keys::CF_TOKENS)?, keys::token_key(id), opts) {
        Ok(Some(v)) => Ok(Some(Some((codec::decode(&v)?, v.len())))),
        Ok(None) => Ok(Some(None)),
        Err(e) if needs_disk(&e) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// A token's record (with its encoded size) and state, read at `tier`, as
/// [`get_record_at`] reads a record.
pub(super) fn get_with_state_at(
    inner: &Inner,
    id: TokenId,
    tier: ReadTier,
) -> Result<Option<Option<Fetched>>, StoreError> {
    let db = &inner.db;
    let opts = read_opts_at(tier);
    let (record, encoded) = match get_record_at(inner, id, &opts)? {
        Some(Some(found)) => found,
        Some(None) => return Ok(Some(None)),
        None => return Ok(None),
    };
    let state = match db.get_pinned_cf_opt(cf(db, keys::CF_STATE)?, keys::state_key(id), &opts) {
        Ok(Some(v)) => codec::decode_state(&v)?,
        Ok(None) => TokenState::default(),
        Err(e) if needs_disk(&e) => return Ok(None),
        Err(e) => return Err(backend(e)),
    };
    Ok(Some(Some((Arc::new(record), state, encoded))))
}

/// A record as [`get_with_state_at`] read it: shared, with its state and encoded size.
pub(super) type Fetched = (Arc<TokenRecord>, TokenState, usize);

/// The tree of a transaction from its `txn_tokens` entries; an entry written before schema
/// 4 (an empty value) costs a read of its record.
pub(super) fn txn_tree_blocking(inner: &Inner, txn: TxnId) -> Result<Vec<TreeEntry>, StoreError> {
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

pub(super) fn txn_tokens_blocking(inner: &Inner, txn: TxnId) -> Result<Vec<TokenId>, StoreError> {
    scan_ids(
        inner,
        keys::CF_TXN_TOKENS,
        &keys::txn_prefix(txn),
        keys::token_id_of_txn_key,
        usize::MAX,
    )
}

/// Tokens per pass of a purge (see [`purge_batch`]).
pub(super) const PURGE_BATCH: usize = 256;

/// An `expiry` index key and the token id it names.
pub(super) type ExpiryEntry = (Box<[u8]>, TokenId);
