//! Revocation of a subtree or a transaction, and the kill switch's walk of a party's
//! transactions and the disabled parties.

use super::*;

/// On the writer, under the lock of `target`'s transaction ([`RocksStore::committed`]).
/// Writes nothing (no state, no event) when nothing is newly revoked.
pub(super) fn revoke_blocking(
    inner: &Inner,
    target: RevokeTarget,
    by: &Actor,
    reason: &str,
    event: EventId,
    opts: &WriteOptions,
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
    write_revocation(inner, &states, &event, opts)?;
    Ok(Revoked {
        ids: states.into_iter().map(|(id, _)| id).collect(),
        event: Some(event),
    })
}

/// Writes revoked tokens' new states with the revocation's event, in one atomic write
/// ([`write_with_states`]: the hot tier follows before the caller is answered).
pub(super) fn write_revocation(
    inner: &Inner,
    states: &[(TokenId, TokenState)],
    event: &Event,
    opts: &WriteOptions,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    for (id, state) in states {
        put_state(inner, &mut batch, *id, state)?;
    }
    put_event(&inner.db, &mut batch, event)?;
    let changed: Vec<(TokenId, &TokenState)> = states.iter().map(|(id, s)| (*id, s)).collect();
    write_with_states(inner, batch, opts, &changed, None)
}

/// Transactions of a party's walk in hand at once, each under its own lock: their synced
/// writes share fsyncs through RocksDB's group commit instead of queueing one by one.
pub(super) const PARTY_IN_FLIGHT: usize = 8;

/// Up to `limit` transactions listed under a party's `digest` in `party_txns`, after
/// `after` (all when `None`), in key order.
pub(super) fn party_txns_page(
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
pub(super) struct PartyJob {
    pub(super) party: String,
    pub(super) by: Actor,
    /// The reason as stored: [`party_reason`].
    pub(super) reason: String,
    pub(super) events: Arc<dyn EventIssuer>,
}

/// One transaction's part of a party's revocation, under its lock
/// ([`RocksStore::locked`]). The tree's shape comes from `txn_tokens`; a record is read
/// only for a token not yet revoked (a revoked one changes nothing, so a second walk reads
/// states alone).
pub(super) fn revoke_party_blocking(
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
        |states, event| write_revocation(inner, states, event, &inner.write_opts()),
    )
}

/// The answer of one transaction's task of a party's walk.
pub(super) fn joined(
    done: Result<Result<Vec<TokenId>, StoreError>, JoinError>,
) -> Result<Vec<TokenId>, StoreError> {
    done.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Records or clears a party's disablement, synced whatever the store's durability.
pub(super) fn set_party_disabled_blocking(
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

pub(super) fn disabled_parties_blocking(
    inner: &Inner,
) -> Result<Vec<(String, PartyDisable)>, StoreError> {
    let db = &inner.db;
    let mut out = Vec::new();
    for item in db.iterator_cf(cf(db, keys::CF_PARTIES)?, IteratorMode::Start) {
        let (key, value) = item.map_err(backend)?;
        let party = keys::party_of_key(&key).ok_or_else(|| corrupt("party id is not UTF-8"))?;
        out.push((party, codec::decode_party(&value)?));
    }
    Ok(out)
}
