//! The audit trail: events written in the batch of the change they record, appended on
//! their own, listed and purged.

use super::*;

/// An audit event's two entries, added to `batch`.
pub(super) fn put_event(db: &DB, batch: &mut WriteBatch, event: &Event) -> Result<(), StoreError> {
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

pub(super) fn append_events_blocking(inner: &Inner, events: &[Event]) -> Result<(), StoreError> {
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

pub(super) fn events_blocking(
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

pub(super) fn last_event_id_blocking(inner: &Inner) -> Result<Option<EventId>, StoreError> {
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
pub(super) type LogEntry = (Box<[u8]>, EventId, TxnId);

/// Events deleted per `WriteBatch` by an audit purge.
pub(super) const EVENT_PURGE_BATCH: usize = 1024;

pub(super) fn purge_events_blocking(
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
