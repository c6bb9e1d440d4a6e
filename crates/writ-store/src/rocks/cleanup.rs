//! Cleanup of expired tokens (passes grouped by lock stripe, one WAL sync each) and the
//! store's statistics.

use super::*;

/// The smallest key after `key`: where a scan resumes past entries it just deleted, so it
/// does not step over their tombstones again.
pub(super) fn after(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// Up to `limit` entries (key and token id) of the `expiry` index with
/// `expires_at < cutoff`, in key order, starting at `from` when given.
pub(super) fn expired_ids(
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
pub(super) type Expired = (Box<[u8]>, TokenId, TokenRecord);

/// Deletes one pass of expired tokens. The tokens are grouped by lock stripe and each
/// group is deleted in its own `WriteBatch` under that stripe alone, in stripe order: the
/// purge never holds two stripes at once, so it delays only the transactions of the
/// group it is writing. The group writes are not synced one by one; one WAL sync ends
/// the pass (with [`Durability::Sync`]). A purge a power cut loses is redone by the next
/// pass, and any later synced write syncs it too. Blocking: run it on the blocking pool.
/// Returns how many expiry entries were removed and the key to resume from.
pub(super) fn purge_batch(
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
        let mut ids = Vec::with_capacity(group.len());
        for (key, id, record) in group {
            ids.push(id);
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
        for id in &ids {
            inner.hot.forget(id);
        }
    }
    if inner.durability == Durability::Sync {
        db.flush_wal(true).map_err(backend)?;
    }
    Ok((n, Some(resume)))
}

/// Deletes a purged root's transaction from the listing indexes (the inverse of every
/// [`index_txn`] of its transaction), found through `txn_parties`.
pub(super) fn unindex_txn(
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

pub(super) fn purge_expired_blocking(
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
pub(super) const COMPACT_AFTER: usize = 10_000;

/// Compacts `cf_name` below `bound`, dropping the tombstones a large purge left there, so
/// the next pass (which starts from the beginning of the index) does not walk them.
pub(super) fn compact_below(inner: &Inner, cf_name: &str, bound: &[u8]) -> Result<(), StoreError> {
    let db = &inner.db;
    let mut opts = CompactOptions::default();
    opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    db.compact_range_cf_opt(cf(db, cf_name)?, None::<&[u8]>, Some(bound), &opts);
    Ok(())
}

/// Number of keys in one column family, by a full scan.
pub(super) fn count_keys(inner: &Inner, name: &str) -> Result<u64, StoreError> {
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

pub(super) fn stats_blocking(inner: &Inner) -> Result<StoreStats, StoreError> {
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
