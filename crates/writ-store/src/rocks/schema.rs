//! The schema version and the upgrades of older stores: checked at open, before anything
//! else reads.

use super::*;

/// Writes the schema version into a new store; refuses a store with another version,
/// or one that holds tokens but no version at all.
pub(super) fn check_schema(db: &DB) -> Result<(), StoreError> {
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
pub(super) fn record_schema_version(db: &DB, what: &str) -> Result<(), StoreError> {
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
pub(super) fn upgrade_from_v1(db: &DB) -> Result<(), StoreError> {
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
