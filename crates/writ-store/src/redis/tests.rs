//! The conformance suite and the Redis-only checks, against a real six-node cluster that
//! `scripts/redis-cluster` starts once for this test binary (every test in its own key
//! namespace).

use super::*;
use crate::conformance::{self, Expiry, Shorthand, record, tid, txn};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// This checkout's `scripts/redis-cluster`, from the `CARGO_MANIFEST_DIR` cargo sets when
/// it runs the tests (not the compile-time path: a test binary reused from a target
/// directory shared with another checkout must not run that checkout's script).
fn cluster_script() -> PathBuf {
    let package: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    package.join("../../scripts/redis-cluster")
}

/// Starts a six-node cluster with `scripts/redis-cluster start DIR --port 0 <extra>`,
/// stopped by the script's watchdog when this process ends: its directory and seeds.
fn start_cluster(extra: &[&str]) -> (PathBuf, Vec<String>) {
    let dir = tempfile::Builder::new()
        .prefix("writ-redis-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let out = Command::new(cluster_script())
        .arg("start")
        .arg(&dir)
        .args(["--port", "0", "--owner"])
        .arg(std::process::id().to_string())
        .arg("--clean")
        .args(extra)
        .output()
        .expect("scripts/redis-cluster runs (is bash there?)");
    assert!(
        out.status.success(),
        "starting a Redis Cluster failed (install Redis with `scripts/redis-cluster install`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    (dir, last.split(',').map(str::to_owned).collect())
}

/// The seed nodes of this test binary's cluster, started on first use.
pub(crate) fn cluster_nodes() -> Vec<String> {
    static NODES: OnceLock<Vec<String>> = OnceLock::new();
    NODES.get_or_init(|| start_cluster(&[]).1).clone()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Options for a fresh namespace on the test cluster, with expiry off (the suite's
/// records carry fixed timestamps from 2023) and a replica's acknowledgement given 5 s
/// rather than 500 ms: a loaded two-core machine has been seen to hold a `WAIT` past 500
/// ms (the tests of an acknowledgement that never comes set their own).
pub(crate) fn options() -> RedisOptions {
    RedisOptions {
        ack_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(10),
        nodes: cluster_nodes(),
        prefix: format!(
            "t{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ),
        key_expiry: false,
        ..RedisOptions::default()
    }
}

async fn store() -> RedisStore {
    RedisStore::connect(options()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    conformance::run_for(store().await, Expiry::ServerSide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_and_listing() {
    conformance::audit_and_listing_for(store().await, Expiry::ServerSide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_holds_a_bounded_number_of_tokens() {
    conformance::txn_holds_at_most_max_tokens(store().await).await;
}

#[tokio::test]
async fn two_stores_on_one_namespace_see_each_others_writes_at_once() {
    let opts = options();
    let a = RedisStore::connect(opts.clone()).await.unwrap();
    let b = RedisStore::connect(opts).await.unwrap();
    let t = txn(1);
    let root = conformance::with_uses(record(t, tid(1), None), Some(1));
    a.put(root.clone()).await.unwrap();
    // b caches the immutable record; the state it reads after a's changes is current.
    assert_eq!(b.get(tid(1)).await.unwrap(), Some(root));
    assert_eq!(
        a.consume_use(tid(1), None).await.unwrap(),
        UseOutcome::Consumed { remaining: Some(0) }
    );
    assert_eq!(
        b.consume_use(tid(1), None).await.unwrap(),
        UseOutcome::Exhausted
    );
    b.revoke_at(
        RevokeTarget::Token(tid(1)),
        conformance::by("op"),
        "r".into(),
        UnixMillis(5),
    )
    .await
    .unwrap();
    assert!(a.state(tid(1)).await.unwrap().unwrap().revoked.is_some());
}

#[tokio::test]
async fn keys_expire_with_their_transaction() {
    let opts = RedisOptions {
        key_expiry: true,
        retention: Duration::from_secs(60),
        ..options()
    };
    let store = RedisStore::connect(opts).await.unwrap();
    #[allow(clippy::disallowed_methods)] // Redis expires keys on the real clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let t = TxnId::new(UnixMillis(now), [9; 10]);
    let mut root = conformance::expiring(record(t, tid(1), None), now + 10_000);
    let mut child = conformance::expiring(record(t, tid(2), Some(tid(1))), now + 5_000);
    root.issued_at = UnixMillis(now);
    child.issued_at = UnixMillis(now);
    store.put(root).await.unwrap();
    store.put_child(child, 4).await.unwrap();
    let inner = &store.inner;
    let mut conn = inner.read_conn();
    for key in [
        inner.keys.meta(t),
        inner.keys.records(t),
        inner.keys.states(t),
        inner.keys.tree(t),
        inner.keys.ops(t),
        inner.keys.token(tid(1)),
        inner.keys.token(tid(2)),
    ] {
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // The root's expiry plus retention: a child never extends it.
        let want = now + 10_000 + 60_000;
        let got = u64::try_from(at).unwrap();
        if key == inner.keys.token(tid(2)) {
            assert_eq!(got, now + 5_000 + 60_000, "{key}");
        } else {
            assert_eq!(got, want, "{key}");
        }
    }
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(inner.keys.events(t))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(at > 0, "events expire too");
}

#[tokio::test]
async fn a_write_the_replicas_do_not_acknowledge_fails() {
    // Three replicas are asked for, each shard has one: nothing is acknowledged, and the
    // caller is told.
    let store = RedisStore::connect(RedisOptions {
        required_replicas: 3,
        ack_timeout: Duration::from_millis(50),
        ..options()
    })
    .await
    .unwrap();
    let err = store.put(record(txn(1), tid(1), None)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("not acknowledged")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cluster_whose_replicas_would_not_all_acknowledge_is_refused() {
    // Each shard has one replica: acknowledging on the master's word alone would let a
    // failover promote a replica without the write.
    let err = RedisStore::connect(RedisOptions {
        required_replicas: 0,
        ..options()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("has 1 replica but")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_re_sent_write_is_applied_once() {
    let store = store().await;
    let inner = &store.inner;
    let t = txn(7);
    store.put(record(t, tid(1), None)).await.unwrap();
    let version = inner.version(t).await.unwrap();
    let mut w = TxnWrite::new(&inner.keys, t);
    w.hset(&inner.keys.meta(t), 0, vec![(b"x".to_vec(), b"1".to_vec())]);
    let n = nonce();
    assert_eq!(
        inner.commit(&w, &version, &n).await.unwrap(),
        Commit::Applied
    );
    let after = inner.version(t).await.unwrap();
    // The same write again (as the client re-sends one whose answer was lost): recognised,
    // not applied a second time.
    assert_eq!(
        inner.commit(&w, &version, &n).await.unwrap(),
        Commit::Applied
    );
    assert_eq!(inner.version(t).await.unwrap(), after);
    // Another write computed from the old version is refused.
    assert_eq!(
        inner.commit(&w, &version, &nonce()).await.unwrap(),
        Commit::Stale
    );
    // A re-send is recognised however many writes came between (within a minute).
    for _ in 0..100 {
        let v = inner.version(t).await.unwrap();
        assert_eq!(
            inner.commit(&w, &v, &nonce()).await.unwrap(),
            Commit::Applied
        );
    }
    let latest = inner.version(t).await.unwrap();
    assert_eq!(
        inner.commit(&w, &version, &n).await.unwrap(),
        Commit::Applied
    );
    assert_eq!(inner.version(t).await.unwrap(), latest, "not applied again");
}

#[tokio::test]
async fn an_answer_read_rather_than_written_is_acknowledged_like_a_write() {
    // One store whose writes are acknowledged, and one on the same namespace asking for
    // more replicas than the cluster has: what it reads must not be answered either.
    let opts = options();
    let good = RedisStore::connect(opts.clone()).await.unwrap();
    let strict = RedisStore::connect(RedisOptions {
        required_replicas: 3,
        ack_timeout: Duration::from_millis(50),
        ..opts
    })
    .await
    .unwrap();
    let t = txn(3);
    let mut root = record(t, tid(1), None);
    root.audience.id = "mallory".into();
    good.put(root).await.unwrap();
    let by = conformance::by("op");
    let done = good
        .revoke_at(
            RevokeTarget::Token(tid(1)),
            by.clone(),
            "r".into(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    assert_eq!(done, vec![tid(1)]);
    good.sync(t).await.unwrap();
    let not_acked =
        |e: &StoreError| matches!(e, StoreError::Backend(m) if m.contains("not acknowledged"));
    // "Revoked already", read from the master: refused unless the replicas hold it.
    let e = strict
        .revoke_at(
            RevokeTarget::Token(tid(1)),
            by.clone(),
            "r".into(),
            UnixMillis(6),
        )
        .await
        .unwrap_err();
    assert!(not_acked(&e), "{e:?}");
    let e = strict.sync(t).await.unwrap_err();
    assert!(not_acked(&e), "{e:?}");
    let events: Arc<dyn crate::api::EventIssuer> = conformance::Issued::at(UnixMillis(7));
    let e = strict
        .revoke_party("mallory".into(), by, "r".into(), events)
        .await
        .unwrap_err();
    assert!(not_acked(&e), "{e:?}");
}

#[tokio::test]
async fn a_party_walk_goes_on_past_a_transaction_it_cannot_revoke() {
    let store = store().await;
    let inner = &store.inner;
    for n in [1, 2] {
        let mut r = record(txn(n.into()), tid(n), None);
        r.audience.id = "mallory".into();
        store.put(r).await.unwrap();
    }
    // The first transaction in the walk's order is unreadable (a key of the wrong type).
    let _: () = redis::cmd("SET")
        .arg(inner.keys.tree(txn(1)))
        .arg("not a hash")
        .query_async(&mut inner.write_conn())
        .await
        .unwrap();
    let events: Arc<dyn crate::api::EventIssuer> = conformance::Issued::at(UnixMillis(7));
    let e = store
        .revoke_party("mallory".into(), conformance::by("op"), "r".into(), events)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Backend(m) if m.contains("WRONGTYPE")),
        "{e:?}"
    );
    assert!(
        store
            .state(tid(2))
            .await
            .unwrap()
            .unwrap()
            .revoked
            .is_some(),
        "the walk stopped at the first transaction it could not revoke"
    );
}

#[tokio::test]
async fn a_page_of_events_never_ends_between_two_with_one_id() {
    // Two nodes each issue their own increasing ids, so one id can name two events.
    let store = store().await;
    let t = txn(4);
    let (a, b) = (record(t, tid(1), None), record(t, tid(2), None));
    store
        .append_events(vec![
            Event::minted(EventId(10), &a),
            Event::minted(EventId(20), &a),
            Event::minted(EventId(20), &b),
            Event::minted(EventId(30), &a),
        ])
        .await
        .unwrap();
    let ids = |events: Vec<Event>| events.iter().map(|e| e.id.0).collect::<Vec<_>>();
    let first = store.events(t, None, 2).await.unwrap();
    assert_eq!(ids(first), vec![10, 20, 20]);
    let next = store.events(t, Some(EventId(20)), 2).await.unwrap();
    assert_eq!(ids(next), vec![30]);
}

#[tokio::test]
async fn a_keyed_root_whose_first_attempt_failed_is_stored_by_a_retry() {
    let store = store().await;
    let inner = &store.inner;
    let keyed = |t| {
        let mut r = record(t, tid(1), None);
        r.idempotency = Some([7; 32]);
        r
    };
    // Attempt 1 claimed the id for its transaction, then failed before its commit.
    inner.claim_leased(&keyed(txn(1))).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(inner.keys.token(tid(1)))
        .query_async(&mut inner.read_conn())
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= inner.claim_lease() as i64,
        "a lease: {ttl}"
    );
    // A retry (same id, a new transaction) while the lease holds: retryable, not a
    // conflict that the idempotency key would answer for ever.
    let e = store.put(keyed(txn(2))).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Backend(m) if m.contains("not finished")),
        "{e:?}"
    );
    // Once the lease has run out, the retry stores it, and holds the id for good.
    let _: i64 = redis::cmd("DEL")
        .arg(inner.keys.token(tid(1)))
        .query_async(&mut inner.write_conn())
        .await
        .unwrap();
    store.put(keyed(txn(2))).await.unwrap();
    assert_eq!(store.get(tid(1)).await.unwrap().unwrap().txn, txn(2));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(inner.keys.token(tid(1)))
        .query_async(&mut inner.read_conn())
        .await
        .unwrap();
    assert_eq!(ttl, -1, "held without a lease (key expiry is off here)");
    // Stored, it is a conflict: the service answers with the stored token.
    assert_eq!(
        store.put(keyed(txn(3))).await.unwrap_err(),
        StoreError::Conflict
    );
}

#[tokio::test]
async fn a_keyed_root_stored_by_an_attempt_that_failed_after_its_write_is_kept() {
    let store = store().await;
    let inner = &store.inner;
    let keyed = |t, id| {
        let mut r = record(t, tid(id), None);
        r.idempotency = Some([8; 32]);
        r
    };
    let pttl = |id| async move {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(inner.keys.token(tid(id)))
            .query_async(&mut inner.read_conn())
            .await
            .unwrap();
        ttl
    };
    // An attempt wrote its transaction, then failed before it held the id for good.
    let first = keyed(txn(1), 1);
    let minted = Event::minted(EventId(1), &first);
    inner.claim_leased(&first).await.unwrap();
    inner
        .insert_claimed(&first, crate::codec::encode(&first).unwrap(), &minted)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(pttl(1).await > 0, "still on its lease");
    // Its retry is answered with that token (a conflict the service replays), which is
    // now held for good: it cannot vanish when the lease would have run out.
    assert_eq!(
        store.put(keyed(txn(2), 1)).await.unwrap_err(),
        StoreError::Conflict
    );
    assert_eq!(pttl(1).await, -1);
    assert_eq!(store.get(tid(1)).await.unwrap().unwrap().txn, txn(1));
    // An attempt that failed before its write gives its claim up: the retry goes ahead
    // at once.
    let failed = keyed(txn(3), 2);
    inner.claim_leased(&failed).await.unwrap();
    inner.release(&failed).await;
    store.put(keyed(txn(4), 2)).await.unwrap();
    assert_eq!(store.get(tid(2)).await.unwrap().unwrap().txn, txn(4));
}

#[tokio::test]
async fn a_malformed_write_is_refused_whole_and_a_version_is_the_last_writes_nonce() {
    let store = store().await;
    let inner = &store.inner;
    let t = txn(8);
    store.put(record(t, tid(1), None)).await.unwrap();
    let version = inner.version(t).await.unwrap();
    // The first op is well formed, the second names a key that is not there.
    let mut w = TxnWrite::new(&inner.keys, t);
    w.hset(&inner.keys.meta(t), 0, vec![(b"x".to_vec(), b"1".to_vec())]);
    w.args.extend(
        [&b"HSET"[..], b"99", b"0", b"2", b"f", b"v"]
            .iter()
            .map(|a| a.to_vec()),
    );
    let e = inner.commit(&w, &version, &nonce()).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Backend(m) if m.contains("malformed")),
        "{e:?}"
    );
    let x: Option<String> = redis::cmd("HGET")
        .arg(inner.keys.meta(t))
        .arg("x")
        .query_async(&mut inner.read_conn())
        .await
        .unwrap();
    assert_eq!(x, None, "nothing of a refused write is applied");
    assert_eq!(inner.version(t).await.unwrap(), version);
    // A version is the nonce of the write that made it, not a counter two histories
    // could share.
    let mut w = TxnWrite::new(&inner.keys, t);
    w.hset(&inner.keys.meta(t), 0, vec![(b"x".to_vec(), b"1".to_vec())]);
    let n = nonce();
    assert_eq!(
        inner.commit(&w, &version, &n).await.unwrap(),
        Commit::Applied
    );
    assert_eq!(inner.version(t).await.unwrap().as_bytes(), &n[..]);
}

#[tokio::test]
async fn a_client_assertion_is_recorded_used_once_across_stores() {
    let opts = options();
    let (a, b) = (
        RedisStore::connect(opts.clone()).await.unwrap(),
        RedisStore::connect(opts).await.unwrap(),
    );
    #[allow(clippy::disallowed_methods)] // Redis expires keys on the real clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let until = UnixMillis(now + 60_000);
    assert!(a.first_use([1; 32], until).await.unwrap());
    assert!(
        !b.first_use([1; 32], until).await.unwrap(),
        "used through a"
    );
    assert!(!a.first_use([1; 32], until).await.unwrap());
    assert!(b.first_use([2; 32], until).await.unwrap());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(a.inner.keys.assertion(&[1; 32]))
        .query_async(&mut a.inner.read_conn())
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 60_000,
        "kept only while it could be replayed: {ttl}"
    );
}

#[tokio::test]
async fn what_one_node_announces_the_others_read_and_a_reader_trimmed_past_is_told() {
    let opts = RedisOptions {
        feed_entries: 10,
        ..options()
    };
    let (a, b) = (
        RedisStore::connect(opts.clone()).await.unwrap(),
        RedisStore::connect(opts).await.unwrap(),
    );
    let mut at_b = b.feed_end().await.unwrap();
    let mut at_a = a.feed_end().await.unwrap();
    let t = txn(5);
    let r = record(t, tid(1), None);
    let sent = vec![
        Event::minted(EventId(10), &r),
        Event::minted(EventId(11), &r),
    ];
    a.announce(&sent).await.unwrap();
    let read = b
        .read_feed(&mut at_b, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(read.events, sent);
    assert!(!read.gap);
    // A node does not read back its own announcements.
    let own = a
        .read_feed(&mut at_a, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(own.events.is_empty() && !own.gap, "{own:?}");
    // Nothing new: the read waits, then answers nothing.
    let idle = b
        .read_feed(&mut at_b, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(idle.events.is_empty() && !idle.gap);
    // b falls far behind: the feed is trimmed past it, and b is told.
    let many: Vec<Event> = (0..500)
        .map(|i| Event::minted(EventId(100 + i), &r))
        .collect();
    for chunk in many.chunks(50) {
        a.announce(chunk).await.unwrap();
    }
    let late = b
        .read_feed(&mut at_b, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(late.gap, "a reader the feed was trimmed past must know");
}

#[test]
fn the_record_cache_stays_within_its_entries_and_its_bytes() {
    let cache = RecordCache::new(3, 1000);
    let r = Arc::new(record(txn(1), tid(1), None));
    for n in 0..10 {
        cache.put(tid(n), txn(1), r.clone(), 300);
        let (entries, bytes) = cache.held();
        assert!(
            entries <= 3 && bytes <= 1000,
            "{entries} entries, {bytes} bytes"
        );
        assert_eq!(bytes, entries * 300);
    }
    assert!(cache.get(tid(9)).is_some(), "the newest is kept");
    // One record larger than the whole budget is not cached at all.
    cache.put(tid(20), txn(1), r.clone(), 2000);
    assert!(cache.get(tid(20)).is_none());
    // Caching one again replaces it; forgetting gives its bytes back.
    cache.put(tid(9), txn(1), r.clone(), 100);
    let (_, before) = cache.held();
    cache.forget(tid(9));
    assert_eq!(cache.held().1, before - 100);
}

#[tokio::test]
async fn the_days_index_forgets_days_past_the_horizon() {
    let store = RedisStore::connect(RedisOptions {
        key_expiry: true,
        ..options()
    })
    .await
    .unwrap();
    let inner = &store.inner;
    #[allow(clippy::disallowed_methods)] // the day of a real transaction
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let days_ago = |d: u64| TxnId::new(UnixMillis(now - d * 86_400_000), [d as u8; 10]);
    let day = |t: TxnId| keys::day_of(t);
    let old = days_ago(10);
    let mut r = conformance::expiring(record(old, tid(1), None), now + 60_000);
    store.put(r.clone()).await.unwrap();
    // Whether any bucket of the days index holds `t`'s day.
    let score = |t: TxnId| async move {
        let mut found = None;
        for key in inner.keys.days().buckets() {
            let s: Option<f64> = redis::cmd("ZSCORE")
                .arg(key)
                .arg(day(t))
                .query_async(&mut inner.read_conn())
                .await
                .unwrap();
            found = found.or(s);
        }
        found
    };
    assert!(score(old).await.is_some());
    // The first transaction of a new day trims the days past the horizon.
    let today = days_ago(0);
    r = conformance::expiring(record(today, tid(2), None), now + 60_000);
    store.put(r).await.unwrap();
    assert!(score(today).await.is_some());
    assert!(
        score(old).await.is_none(),
        "a day ten days back is past a two-day horizon"
    );
}

#[test]
fn credentials_in_node_urls_never_reach_a_log() {
    assert_eq!(
        redact("redis://writ:s3cret@10.0.0.1:6379"),
        "redis://***@10.0.0.1:6379"
    );
    assert_eq!(redact("redis://:s3cret@h:1"), "redis://***@h:1");
    assert_eq!(redact("redis://127.0.0.1:7001"), "redis://127.0.0.1:7001");
}

/// A cluster that speaks TLS only (client certificates required) and has the ACL user
/// DEPLOY.md describes, `writ`, on keys `acl*`: options that reach it as that user.
fn tls_acl_options() -> RedisOptions {
    static CLUSTER: OnceLock<(PathBuf, Vec<String>)> = OnceLock::new();
    let (dir, nodes) = CLUSTER
        .get_or_init(|| start_cluster(&["--tls", "--acl-user", "writ", "--acl-keys", "acl*"]));
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let password = String::from_utf8(read("acl/writ.password")).unwrap();
    RedisOptions {
        nodes: nodes.clone(),
        tls: RedisTls {
            ca_pem: Some(read("tls/ca.crt")),
            client: Some((read("tls/client.crt"), read("tls/client.key"))),
        },
        auth: RedisAuth {
            username: Some("writ".into()),
            password: Some(password.trim_end().to_owned()),
        },
        prefix: format!("acl{}", options().prefix),
        ..options()
    }
}

/// The whole store works over TLS as the least-privileged user the docs give, and that
/// user can reach nothing outside its namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_over_tls_as_the_documented_acl_user_and_only_in_its_namespace() {
    let opts = tls_acl_options();
    assert!(opts.nodes.iter().all(|n| n.starts_with("rediss://")));
    let store = RedisStore::connect(opts.clone()).await.unwrap();
    conformance::run_for(store.clone(), Expiry::ServerSide).await;
    let store = RedisStore::connect(tls_acl_options()).await.unwrap();
    conformance::audit_and_listing_for(store.clone(), Expiry::ServerSide).await;
    let mut conn = store.inner.read_conn();
    let outside: Result<Option<String>, _> = redis::cmd("GET")
        .arg("other:key")
        .query_async(&mut conn)
        .await;
    let e = outside.expect_err("a key outside the user's pattern");
    assert!(e.to_string().to_uppercase().contains("NOPERM"), "{e}");
    let flush: Result<Value, _> = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await;
    assert!(flush.is_err(), "the user must not remove the functions");
}

/// A cluster whose certificates do not chain to the configured CA, a client without a
/// certificate and a wrong password are each refused at connect, with the reason.
#[tokio::test]
async fn a_tls_cluster_is_reached_only_with_its_ca_a_client_certificate_and_the_password() {
    let good = tls_acl_options();
    let wrong_ca = RedisOptions {
        tls: RedisTls {
            ca_pem: Some(good.tls.client.clone().unwrap().0),
            ..good.tls.clone()
        },
        ..good.clone()
    };
    let no_cert = RedisOptions {
        tls: RedisTls {
            client: None,
            ..good.tls.clone()
        },
        ..good.clone()
    };
    let wrong_password = RedisOptions {
        auth: RedisAuth {
            password: Some("not-the-password".into()),
            ..good.auth.clone()
        },
        ..good.clone()
    };
    let plaintext = RedisOptions {
        nodes: good
            .nodes
            .iter()
            .map(|n| n.replace("rediss://", "redis://"))
            .collect(),
        tls: RedisTls::default(),
        ..good.clone()
    };
    for (case, opts) in [
        ("wrong CA", wrong_ca),
        ("no client certificate", no_cert),
        ("wrong password", wrong_password),
        ("plaintext", plaintext),
    ] {
        let e = RedisStore::connect(opts).await.map(|_| ()).expect_err(case);
        assert!(matches!(e, StoreError::Backend(_)), "{case}: {e}");
    }
    let rendered = format!("{:?}", good);
    assert!(
        !rendered.contains(good.auth.password.as_deref().unwrap()),
        "the options' Debug must not show the password"
    );
    assert!(!rendered.contains("BEGIN"), "nor a certificate or key");
}

/// The library's version is in its name and every function's, and `writ.lua` is the code
/// that version was recorded with: a change to the file without a new version would let
/// nodes of two releases call different code under one name.
#[test]
fn the_function_library_is_versioned_with_its_code() {
    let first = FUNCTIONS.lines().next().unwrap();
    assert_eq!(first, format!("#!lua name=writ_v{FUNCTIONS_VERSION}"));
    let registered: Vec<&str> = FUNCTIONS
        .lines()
        .filter(|l| l.starts_with("redis.register_function"))
        .map(|l| l.split('\'').nth(1).unwrap())
        .collect();
    assert_eq!(registered.len(), 7, "{registered:?}");
    for name in registered {
        let bare = name
            .strip_prefix("writ_")
            .and_then(|n| n.strip_suffix(&format!("_v{FUNCTIONS_VERSION}")))
            .unwrap_or_else(|| panic!("{name}: not writ_<name>_v{FUNCTIONS_VERSION}"));
        assert_eq!(function(bare), name);
    }
    let digest = blake3::hash(FUNCTIONS.as_bytes()).to_hex();
    assert_eq!(
        digest.as_str(),
        FUNCTIONS_DIGEST,
        "writ.lua changed: bump FUNCTIONS_VERSION (the library's and every function's name) and set FUNCTIONS_DIGEST to {digest}"
    );
}

/// A node never replaces the library another node runs on: loading again is a no-op, and
/// an older version's library stays callable beside this one.
#[tokio::test]
async fn loading_the_functions_again_keeps_what_other_versions_run() {
    let store = store().await;
    let mut conn = store.inner.read_conn();
    let old = "#!lua name=writ_v0test\nredis.register_function('writ_ping_v0test', function() return 7 end)";
    let _: Result<Value, _> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(old)
        .query_async(&mut conn)
        .await;
    load_functions(&mut conn).await.unwrap();
    load_functions(&mut conn).await.unwrap();
    // With a key, so the call goes to the master of its slot: a keyless one goes to a
    // random node, and a replica refuses a function not flagged read-only.
    let seven: i64 = redis::cmd("FCALL")
        .arg("writ_ping_v0test")
        .arg(1)
        .arg("writ-test-ping")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(seven, 7, "the other version's function is still there");
}

/// A master's port, its slot ranges and its replica's port.
type ShardOf = (u16, Vec<(u16, u16)>, Option<u16>);

/// The shards as node `port` sees them.
fn shards_of(port: u16) -> Vec<ShardOf> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CLUSTER", "NODES"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let port_of = |f: &str| -> u16 {
        f.split('@')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    lines
        .iter()
        .filter(|f| f[2].contains("master"))
        .map(|f| {
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                    (lo.parse().unwrap(), hi.parse().unwrap())
                })
                .collect();
            let replica = lines
                .iter()
                .find(|r| r[2].contains("slave") && r[3] == f[0])
                .map(|r| port_of(r[1]));
            (port_of(f[1]), slots, replica)
        })
        .collect()
}

fn slot_of(port: u16, key: &str) -> u16 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CLUSTER", "KEYSLOT", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// While one shard has no replica (its master refuses writes), only the Mints whose
/// transaction or token pointer lives on that shard fail: every other enters its day, subject and party in an index
/// bucket on a shard that can acknowledge, and listings and the kill switch's walk still
/// find every one. (With one index key per party, every Mint of a party whose index lived
/// on that shard failed; with the day bucket chosen by the transaction alone, a third of
/// the rest did.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_replica_fails_only_the_transactions_it_holds() {
    let (dir, nodes) = start_cluster(&[]);
    let port = |url: &str| -> u16 { url.rsplit(':').next().unwrap().parse().unwrap() };
    let any = port(&nodes[0]);
    let shards = shards_of(any);
    assert_eq!(shards.len(), 3, "{shards:?}");
    let (master, slots, replica) = shards[0].clone();
    let on_broken = |slot: u16| slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi);
    let store = RedisStore::connect(RedisOptions {
        nodes: nodes.clone(),
        ..options()
    })
    .await
    .unwrap();
    let keys = &store.inner.keys;
    // The party's and the subject's first buckets for most transactions lie on the broken
    // shard somewhere: make sure some do for the transactions below.
    let party_buckets: Vec<bool> = keys
        .party_index("agent:planner")
        .buckets()
        .map(|k| on_broken(slot_of(any, &k)))
        .collect();
    assert!(party_buckets.iter().any(|b| *b) && party_buckets.iter().any(|b| !*b));

    let out = Command::new(cluster_script())
        .arg("kill")
        .arg(&dir)
        .arg(replica.unwrap().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The master notices (min-replicas-max-lag) and refuses writes.
    let probe = (0..)
        .map(|n| format!("probe{{{n}}}"))
        .find(|k| on_broken(slot_of(master, k)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", &master.to_string(), "SET", &probe, "1"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("NOREPLICAS") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the master still takes writes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    #[allow(clippy::disallowed_methods)] // transactions of today
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut stored = Vec::new();
    let mut on_first_broken_bucket = 0;
    for n in 0u32.. {
        if stored.len() == 16 {
            break;
        }
        let t = TxnId::new(UnixMillis(now + u64::from(n)), rand::random());
        let id = tid(90_000 + n);
        // The transaction's own keys and its token's pointer have fixed slots: a Mint
        // whose either lives on the broken shard fails, as it must.
        if on_broken(slot_of(any, &keys.meta(t))) || on_broken(slot_of(any, &keys.token(id))) {
            continue;
        }
        if party_buckets[usize::from(keys::first_bucket(t))] {
            on_first_broken_bucket += 1;
        }
        let r = conformance::expiring(record(t, id, None), now + 600_000);
        store
            .put(r)
            .await
            .unwrap_or_else(|e| panic!("a transaction on a healthy shard must be stored: {e}"));
        stored.push(t);
    }
    assert!(
        on_first_broken_bucket > 0,
        "no transaction's first bucket was on the broken shard"
    );

    let listed = |party: Option<&str>, subject: Option<&str>| {
        let store = store.clone();
        let (party, subject) = (party.map(str::to_owned), subject.map(str::to_owned));
        async move {
            let page = store
                .list_txns(TxnQuery {
                    party,
                    subject,
                    since: None,
                    until: None,
                    status: None,
                    now: UnixMillis(now),
                    before: None,
                    limit: 100,
                })
                .await
                .unwrap();
            let mut txns: Vec<TxnId> = page.roots.iter().map(|(r, _)| r.txn).collect();
            txns.sort();
            txns
        }
    };
    let mut want = stored.clone();
    want.sort();
    assert_eq!(listed(Some("agent:planner"), None).await, want, "by party");
    assert_eq!(listed(None, Some("user:alice")).await, want, "by subject");
    assert_eq!(listed(None, None).await, want, "all");
    let done = store
        .revoke_party(
            "agent:planner".into(),
            Actor {
                id: "op:alice".into(),
                auth: writ_core::AuthMethod::Mtls,
            },
            "lost".into(),
            conformance::Issued::at(UnixMillis(now)),
        )
        .await
        .unwrap();
    assert_eq!(done.txns, 16, "the walk finds every transaction: {done:?}");
}
