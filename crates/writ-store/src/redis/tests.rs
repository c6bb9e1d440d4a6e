//! The conformance suite and the Redis-only checks, against a real six-node cluster that
//! `scripts/redis-cluster` starts once for this test binary (every test in its own key
//! namespace).

use super::*;
use crate::conformance::{self, Expiry, Shorthand, record, tid, txn};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The seed nodes of this test binary's cluster, started on first use and stopped by the
/// script's watchdog when the process ends.
pub(crate) fn cluster_nodes() -> Vec<String> {
    static NODES: OnceLock<Vec<String>> = OnceLock::new();
    NODES
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            let dir = tempfile::Builder::new()
                .prefix("writ-redis-")
                .tempdir()
                .expect("a temporary directory")
                .keep();
            let out = Command::new(root.join("scripts/redis-cluster"))
                .arg("start")
                .arg(&dir)
                .args(["--port", "0", "--owner"])
                .arg(std::process::id().to_string())
                .arg("--clean")
                .output()
                .expect("scripts/redis-cluster runs (is bash there?)");
            assert!(
                out.status.success(),
                "starting a Redis Cluster failed (install Redis with `scripts/redis-cluster install`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().last().unwrap_or_default();
            last.split(',').map(str::to_owned).collect()
        })
        .clone()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Options for a fresh namespace on the test cluster, with expiry off (the suite's
/// records carry fixed timestamps from 2023).
pub(crate) fn options() -> RedisOptions {
    RedisOptions {
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
