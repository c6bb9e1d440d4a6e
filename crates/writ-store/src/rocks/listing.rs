//! The transaction listing: filtered, newest first, with a cursor (the rule is `api`'s).

use super::*;

/// Transactions for a query: scans the party, subject or transaction index backwards
/// over the query's range, reading each candidate's root.
pub(super) fn list_txns_blocking(inner: &Inner, query: &TxnQuery) -> Result<TxnPage, StoreError> {
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
