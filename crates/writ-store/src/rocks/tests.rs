//! RocksStore's own tests: durability, locking and what the conformance suite cannot see.

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
    assert_eq!((&*r, s.children), (&root, 1));
    assert_eq!(
        store.get_with_state(tid(2)).await.unwrap().map(|(r, _)| r),
        Some(Arc::new(child))
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

fn open_with_tier(dir: &TempDir, hot_tier_mib: u64) -> RocksStore {
    let opts = StoreOptions {
        durability: Durability::Buffered,
        hot_tier_mib,
        ..StoreOptions::default()
    };
    RocksStore::open(dir.path(), opts).unwrap()
}

/// The conformance suite again with a tier too small to hold what it stores (entries are
/// evicted and filled again throughout), and with the tier off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_with_a_small_hot_tier_and_without_one() {
    for mib in [1, 0] {
        let dir = TempDir::new().unwrap();
        conformance::run(open_with_tier(&dir, mib)).await;
    }
}

/// Every state change a transaction's lock guards reaches a token the tier holds: the
/// next read answers from the tier (a hit) with the new state.
#[tokio::test]
async fn the_hot_tier_follows_every_state_change() {
    let dir = TempDir::new().unwrap();
    let store = open_with_tier(&dir, 64);
    let t = txn(501);
    let root = conformance::with_uses(record(t, tid(1), None), Some(3));
    store.put(root).await.unwrap();
    let read = |id| {
        let store = store.clone();
        async move {
            let before = store.hot_tier_stats().hits;
            let (_, state) = store.get_with_state(id).await.unwrap().unwrap();
            (state, store.hot_tier_stats().hits > before)
        }
    };
    // The write put the new token in the tier: its first read is a hit.
    assert_eq!(read(tid(1)).await, (TokenState::default(), true));
    // A spent use.
    store.consume_use(tid(1), None).await.unwrap();
    let (state, hit) = read(tid(1)).await;
    assert_eq!((state.uses, hit), (1, true));
    // A derived child: the parent's count.
    store
        .put_child(record(t, tid(2), Some(tid(1))), 4)
        .await
        .unwrap();
    let (state, hit) = read(tid(1)).await;
    assert_eq!((state.uses, state.children, hit), (1, 1, true));
    // The child too is held from its write.
    assert_eq!(read(tid(2)).await, (TokenState::default(), true));
    // A revocation of the root reaches both.
    store
        .revoke_at(
            RevokeTarget::Token(tid(1)),
            conformance::by("op"),
            "r".to_owned(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    for id in [tid(1), tid(2)] {
        let (state, hit) = read(id).await;
        assert!(state.revoked.is_some() && hit, "{id}: {state:?} hit {hit}");
    }
    // Out of the tier (emptied), a token is read from RocksDB and held again.
    store.inner.hot.clear();
    for expect_hit in [false, true] {
        let (state, hit) = read(tid(2)).await;
        assert_eq!((state.revoked.is_some(), hit), (true, expect_hit));
    }
    // A purge drops what it deletes: the record is gone, not served from memory.
    let gone = conformance::expiring(record(txn(502), tid(3), None), 1_000);
    store.put(gone).await.unwrap();
    assert!(read(tid(3)).await.1);
    store
        .purge_expired(UnixMillis(10_000), usize::MAX)
        .await
        .unwrap();
    assert!(store.inner.hot.held(&tid(3)).is_none());
    assert_eq!(store.get_with_state(tid(3)).await.unwrap(), None);
    assert_eq!(store.record(tid(3)).await.unwrap(), None);
}

/// A child is admitted against its parent's current state, which the writer takes from
/// the tier when it holds the parent and from RocksDB when not: the fan-out bound holds
/// either way, and the tier ends up agreeing with RocksDB.
#[tokio::test]
async fn a_child_is_admitted_against_the_parents_state_in_or_out_of_the_tier() {
    let dir = TempDir::new().unwrap();
    let store = open_with_tier(&dir, 64);
    let t = txn(503);
    store.put(record(t, tid(1), None)).await.unwrap();
    let child = |n| store.put_child(record(t, tid(n), Some(tid(1))), 3);
    child(2).await.unwrap(); // the parent from the tier (held since its write)
    store.inner.hot.clear();
    child(3).await.unwrap(); // from RocksDB
    assert!(store.inner.hot.held(&tid(1)).is_none());
    store.get_with_state(tid(1)).await.unwrap().unwrap(); // held again
    child(4).await.unwrap(); // from the tier, with the two children RocksDB counted
    assert_eq!(child(5).await, Err(StoreError::FanOutExceeded { limit: 3 }));
    let (_, state) = store.inner.hot.held(&tid(1)).unwrap();
    assert_eq!(state.children, 3);
    assert_eq!(read_state(&store.inner, tid(1)).unwrap(), Some(state));
}

/// Readers hammer tokens through a tier small enough that they are evicted and filled
/// again all along, while tokens are revoked, uses spent and children derived one by one: a
/// read that starts after a revocation (a spend, a child) was acknowledged never answers
/// the state before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_after_an_acknowledged_change_sees_the_state_before_it() {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
    // About three times what the tier holds.
    const TOKENS: u32 = 2_000;
    let dir = TempDir::new().unwrap();
    // 1 MiB: a few entries per shard, so fills and evictions race the writes.
    let store = open_with_tier(&dir, 1);
    for i in 0..TOKENS {
        let r = conformance::with_uses(record(txn(600 + u64::from(i)), tid(i), None), Some(1_000));
        store.put(r).await.unwrap();
    }
    let revoked: Arc<Vec<AtomicBool>> =
        Arc::new((0..TOKENS).map(|_| AtomicBool::new(false)).collect());
    let derived: Arc<Vec<AtomicU32>> = Arc::new((0..TOKENS).map(|_| AtomicU32::new(0)).collect());
    let spent: Arc<Vec<AtomicU32>> = Arc::new((0..TOKENS).map(|_| AtomicU32::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for r in 0..6u32 {
        let (store, revoked, spent, derived, stop, reads) = (
            store.clone(),
            revoked.clone(),
            spent.clone(),
            derived.clone(),
            stop.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Acquire) {
                i = (i * 7 + 13) % TOKENS;
                // What was acknowledged before this read began.
                let was_revoked = revoked[i as usize].load(Ordering::Acquire);
                let uses = spent[i as usize].load(Ordering::Acquire);
                let children = derived[i as usize].load(Ordering::Acquire);
                let (_, state) = store.get_with_state(tid(i)).await.unwrap().unwrap();
                assert!(
                    !was_revoked || state.revoked.is_some(),
                    "token {i} read active after its revocation was acknowledged"
                );
                assert!(
                    state.uses >= uses,
                    "token {i} read with {} uses after {uses} were acknowledged",
                    state.uses
                );
                assert!(
                    state.children >= children,
                    "token {i} read with {} children after {children} were acknowledged",
                    state.children
                );
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }
    // The readers are under way before the first change.
    while reads.load(Ordering::Relaxed) < 100 {
        tokio::task::yield_now().await;
    }
    for i in 0..TOKENS {
        if i % 2 == 0 {
            store
                .revoke_at(
                    RevokeTarget::Token(tid(i)),
                    conformance::by("op"),
                    "r".to_owned(),
                    UnixMillis(7),
                )
                .await
                .unwrap();
            revoked[i as usize].store(true, Ordering::Release);
        } else {
            for _ in 0..3 {
                store.consume_use(tid(i), None).await.unwrap();
                spent[i as usize].fetch_add(1, Ordering::Release);
            }
            let child = record(txn(600 + u64::from(i)), tid(TOKENS + i), Some(tid(i)));
            store.put_child(child, 4).await.unwrap();
            derived[i as usize].fetch_add(1, Ordering::Release);
        }
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.await.unwrap();
    }
    let stats = store.hot_tier_stats();
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    assert!(
        stats.entries < u64::from(TOKENS),
        "the tier held everything: {stats:?}"
    );
    assert!(stats.bytes <= stats.budget, "{stats:?}");
    // And the tier agrees with RocksDB for every token at the end.
    for i in 0..TOKENS {
        let (_, from_tier) = store.get_with_state(tid(i)).await.unwrap().unwrap();
        let from_db = read_state(&store.inner, tid(i))
            .unwrap()
            .unwrap_or_default();
        assert_eq!(from_tier, from_db, "token {i}");
    }
}

/// `count` transactions from `from` on, each on a lock stripe of its own, so their
/// writes can all be queued at once.
fn txns_on_distinct_stripes(store: &RocksStore, from: u64, count: usize) -> Vec<TxnId> {
    let mut stripes = BTreeSet::new();
    (from..)
        .map(txn)
        .filter(|t| stripes.insert(store.inner.txn_stripe(*t)))
        .take(count)
        .collect()
}

/// Waits until `n` jobs are queued for the writer (it is held: none is taken).
async fn queued(store: &RocksStore, n: usize) {
    for _ in 0..10_000 {
        if store.inner.writer.queued() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!(
        "{n} jobs were never queued ({} are)",
        store.inner.writer.queued()
    );
}

/// Writes that arrive while the writer is busy run in one group behind it and are
/// answered by one sync of the WAL, and every one of them lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_queued_meanwhile_share_one_sync() {
    const WRITES: usize = 64;
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    let txns = txns_on_distinct_stripes(&store, 700, WRITES);
    let release = store.inner.writer.hold().await;
    let before = store.writer_stats();
    let mut tasks = JoinSet::new();
    for (i, t) in txns.into_iter().enumerate() {
        let (store, id) = (store.clone(), tid(700 + i as u32));
        tasks.spawn(async move { store.put(record(t, id, None)).await });
    }
    queued(&store, WRITES).await;
    drop(release);
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let after = store.writer_stats();
    // The holding job and the 64 behind it: one group, one sync.
    assert_eq!(after.groups - before.groups, 1, "{before:?} → {after:?}");
    assert_eq!(after.jobs - before.jobs, WRITES as u64 + 1);
    for i in 0..WRITES {
        assert!(store.get(tid(700 + i as u32)).await.unwrap().is_some());
    }
}

/// A failed sync fails its whole group and every later write, which is not even run; a
/// read that waits for durability fails too. A restart (reopening) writes again.
#[tokio::test]
async fn a_failed_sync_refuses_every_write_until_a_restart() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    store.put(record(txn(801), tid(801), None)).await.unwrap();
    store.inner.writer.fail_next_sync();
    let failed = store.put(record(txn(802), tid(802), None)).await;
    assert!(
        matches!(&failed, Err(StoreError::Backend(m)) if m.contains("injected")),
        "{failed:?}"
    );
    let refused = store.put(record(txn(803), tid(803), None)).await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(m)) if m.contains("until a restart")),
        "{refused:?}"
    );
    assert_eq!(
        store.get(tid(803)).await.unwrap(),
        None,
        "a refused job ran"
    );
    assert!(store.sync(txn(801)).await.is_err());
    // The server hears it (readiness and liveness follow: writ-server's tests).
    assert!(store.writer_stats().failed && *store.writer_failed().borrow());
    drop(store);
    let store = open(&dir, Durability::Sync);
    assert!(!*store.writer_failed().borrow());
    store.put(record(txn(803), tid(803), None)).await.unwrap();
    assert!(store.get(tid(801)).await.unwrap().is_some());
}

/// The last handle's drop while the writer holds the store for a group: the database
/// stays open (and its directory locked) until that group is done, and `closed` says when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_closed_when_the_writer_lets_go() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    store.put(record(txn(950), tid(950), None)).await.unwrap();
    let release = store.inner.writer.hold().await;
    let closed = store.closed();
    drop(store);
    assert!(
        RocksStore::open(dir.path(), StoreOptions::default()).is_err(),
        "opened while the writer still held the store"
    );
    drop(release);
    closed.await;
    let reopened = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(reopened.get(tid(950)).await.unwrap().is_some());
}

/// `sync` is answered only after the writer's current group is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_waits_for_the_group_in_hand() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    let release = store.inner.writer.hold().await;
    let s = store.clone();
    let synced = tokio::spawn(async move { s.sync(txn(1)).await });
    queued(&store, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !synced.is_finished(),
        "sync answered while the writer was held"
    );
    drop(release);
    synced.await.unwrap().unwrap();
}

/// A write whose caller goes away once it is queued still runs to the end, and holds its
/// transaction's lock until it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_write_lands_although_its_caller_went_away() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    let release = store.inner.writer.hold().await;
    let mut put = Box::pin(store.put(record(txn(901), tid(901), None)));
    tokio::select! {
        _ = &mut put => panic!("answered while the writer was held"),
        () = queued(&store, 1) => {}
    }
    drop(put);
    let s = store.clone();
    let lock = tokio::spawn(async move { drop(s.hold_txn(txn(901)).await) });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !lock.is_finished(),
        "the transaction's lock was free before the write ran"
    );
    drop(release);
    lock.await.unwrap();
    assert!(store.get(tid(901)).await.unwrap().is_some());
}

/// A job that panics is answered with an error, empties the hot tier (it may have written
/// without telling it) and leaves the writer running.
#[tokio::test]
async fn a_panicking_write_empties_the_hot_tier_and_the_writer_goes_on() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, Durability::Sync);
    store.put(record(txn(1001), tid(1001), None)).await.unwrap();
    store.get_with_state(tid(1001)).await.unwrap().unwrap();
    assert_eq!(store.hot_tier_stats().entries, 1);
    let lock = store.hold_txn(txn(1001)).await;
    let panicked = store
        .inner
        .writer
        .submit(
            Some(lock),
            writer::WalSync::AsConfigured,
            |_, _| -> Result<(), StoreError> { panic!("a job panics (test)") },
        )
        .await;
    assert_eq!(
        panicked,
        Err(StoreError::Task("a store write panicked".into()))
    );
    assert_eq!(store.hot_tier_stats().entries, 0);
    // Its lock was released with its group.
    drop(store.hold_txn(txn(1001)).await);
    store.put(record(txn(1002), tid(1002), None)).await.unwrap();
    assert!(store.get(tid(1002)).await.unwrap().is_some());
}
