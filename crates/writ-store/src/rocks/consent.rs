//! Consent requests and their indexes: insert, decide, redeem (through `stage_child`),
//! the expiry sweep, the purge and the listing.

use super::*;

pub(super) fn read_consent(
    inner: &Inner,
    id: ConsentId,
) -> Result<Option<ConsentRequest>, StoreError> {
    read_decoded(
        inner,
        keys::CF_CONSENTS,
        keys::consent_key(id),
        codec::decode_consent,
    )
}

pub(super) fn consent_by_key_blocking(
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
pub(super) fn put_consent(
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
pub(super) fn consent_txn_bounds(txn: TxnId, before: Option<ConsentId>) -> ReadOptions {
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
pub(super) fn open_consents_of(
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

/// On the writer, under the transaction's lock ([`RocksStore::committed`]).
pub(super) fn insert_consent_blocking(
    inner: &Inner,
    request: &ConsentRequest,
    event: &Event,
    opts: &WriteOptions,
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
    db.write_opt(batch, opts).map_err(backend)?;
    Ok(ConsentInsert::Inserted)
}

/// Under the transaction's lock ([`RocksStore::locked`]).
pub(super) fn decide_consent_blocking(
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

/// On the writer, under the transaction's lock ([`RocksStore::committed`], its group
/// always synced): the consent rule, then the child's ([`stage_child`]), then one write of
/// the child, the request and the event.
pub(super) fn redeem_consent_blocking(
    inner: &Inner,
    id: ConsentId,
    by: &str,
    child: &Arc<TokenRecord>,
    max_children: u32,
    event: &Event,
    opts: &WriteOptions,
) -> Result<ConsentRequest, StoreError> {
    let mut request = read_consent(inner, id)?.ok_or(StoreError::NotFound)?;
    let token = child.parent.ok_or(ConsentError::WrongToken(id))?;
    request.redeem(by, token, child.token_id, child.issued_at)?;
    let mut batch = WriteBatch::default();
    put_consent(inner, &mut batch, &request)?;
    put_event(&inner.db, &mut batch, event)?;
    stage_child(inner, &mut batch, child, max_children)?.write(inner, batch, opts)?;
    Ok(request)
}

/// Requests per page of the expiry sweep and of the consent purge.
pub(super) const CONSENT_PAGE: usize = 256;

/// A `consent_open` entry due at the sweep: its key, its request's id, and the request's
/// transaction (`None` when the request is gone).
pub(super) type DueConsent = (Box<[u8]>, ConsentId, Option<TxnId>);

/// Up to `limit` entries of `consent_open` with `expires_at <= now`, in expiry order,
/// starting at `from` when given.
pub(super) fn consents_due(
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
pub(super) fn expire_consent_blocking(
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
pub(super) struct PurgeScan {
    pub(super) found: Vec<ConsentRequest>,
    pub(super) resume: Option<Vec<u8>>,
    pub(super) examined: usize,
    pub(super) at_end: bool,
}

/// Up to `want` requests created before `bound` (a `consents` key) that can no longer
/// change, oldest first from `from`, examining at most `budget` requests.
pub(super) fn consents_to_purge(
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
pub(super) fn delete_consents(
    inner: &Inner,
    requests: Vec<ConsentRequest>,
) -> Result<(), StoreError> {
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
pub(super) fn purge_consents_blocking(
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
pub(super) fn list_consents_blocking(
    inner: &Inner,
    query: &ConsentQuery,
) -> Result<ConsentPage, StoreError> {
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
