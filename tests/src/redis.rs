//! The Redis Cluster backend for the end-to-end suite: `WRIT_TEST_BACKEND=redis` makes
//! every [`TestServer`](crate::TestServer) store its tokens in one six-node cluster that
//! `scripts/redis-cluster` starts on first use for this test binary (and its watchdog
//! stops when the binary exits), each server under a key prefix of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use writ_server::Config;
use writ_server::config::Backend;

/// Which backend this run of the suite uses: `WRIT_TEST_BACKEND` (`rocksdb`, the
/// default, or `redis`).
pub fn test_backend() -> Backend {
    match std::env::var("WRIT_TEST_BACKEND").as_deref() {
        Ok("redis") => Backend::Redis,
        Ok("rocksdb") | Ok("") | Err(_) => Backend::Rocksdb,
        Ok(other) => panic!("WRIT_TEST_BACKEND={other:?}: use rocksdb or redis"),
    }
}

/// Points `config` at the test cluster under a fresh namespace when the suite runs on
/// Redis.
pub fn use_test_backend(config: &mut Config) {
    if test_backend() == Backend::Redis {
        use_cluster(config);
    }
}

/// Points `config` at this binary's test cluster under a fresh namespace.
pub fn use_cluster(config: &mut Config) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    config.storage.backend = Backend::Redis;
    config.storage.redis.nodes = cluster_nodes();
    config.storage.redis.prefix = format!(
        "e{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
}

/// The seed nodes of this test binary's cluster, started on first use (or the cluster
/// named in `WRIT_TEST_REDIS_NODES`, which `tests/backends.rs` shares with the suites it
/// runs).
pub fn cluster_nodes() -> Vec<String> {
    static NODES: OnceLock<Vec<String>> = OnceLock::new();
    NODES
        .get_or_init(|| {
            if let Ok(nodes) = std::env::var("WRIT_TEST_REDIS_NODES") {
                return nodes.split(',').map(str::to_owned).collect();
            }
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster");
            let dir = tempfile::Builder::new()
                .prefix("writ-e2e-redis-")
                .tempdir()
                .expect("a temporary directory")
                .keep();
            let out = Command::new(script)
                .arg("start")
                .arg(&dir)
                .args(["--port", "0", "--owner"])
                .arg(std::process::id().to_string())
                .arg("--clean")
                .output()
                .expect("running scripts/redis-cluster");
            assert!(
                out.status.success(),
                "starting a Redis Cluster failed (install Redis with `scripts/redis-cluster install`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            stdout
                .lines()
                .last()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect()
        })
        .clone()
}

/// Every key of `config`'s namespace with its logical contents (fields, members, values,
/// list items, as the cluster returns them), read from every master: what a test searches
/// for bytes that must never be stored.
#[allow(clippy::unwrap_used)] // a test's reader: any surprise is a failure
pub async fn logical_contents(config: &Config) -> Vec<(String, Vec<u8>)> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let client = redis::cluster::ClusterClient::new(config.storage.redis.nodes.clone())
        .expect("a cluster client");
    let mut conn = client.get_async_connection().await.expect("connecting");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    let pattern = format!("{}:*", config.storage.redis.prefix);
    let mut out = Vec::new();
    for line in nodes.lines().filter(|l| l.contains("master")) {
        let addr = line.split(' ').nth(1).unwrap().split('@').next().unwrap();
        let (host, port) = addr.rsplit_once(':').unwrap();
        let route = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port: port.parse().unwrap(),
            })
        };
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let reply = conn.route_command(scan, route()).await.expect("SCAN");
            let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply).unwrap();
            for key in keys {
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let mut read = match kind.as_str() {
                    "hash" => redis::cmd("HGETALL"),
                    "zset" => redis::cmd("ZRANGE"),
                    "list" => redis::cmd("LRANGE"),
                    _ => redis::cmd("GET"),
                };
                read.arg(&key);
                match kind.as_str() {
                    "zset" => {
                        read.arg(0).arg(-1).arg("WITHSCORES");
                    }
                    "list" => {
                        read.arg(0).arg(-1);
                    }
                    _ => {}
                }
                let items: Vec<Vec<u8>> = match kind.as_str() {
                    "string" => {
                        vec![read.query_async::<Vec<u8>>(&mut conn).await.unwrap()]
                    }
                    _ => read.query_async(&mut conn).await.unwrap(),
                };
                out.push((key.clone(), key.clone().into_bytes()));
                for item in items {
                    out.push((key.clone(), item));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    out
}

/// Opens the store `config` names (for tests that write to it while the server is
/// stopped).
pub async fn open_store(config: &Config) -> writ_store::AnyStore {
    match config.storage.backend {
        Backend::Rocksdb => writ_store::AnyStore::Rocks(
            writ_store::RocksStore::open(
                &config.data_dir.join(writ_server::DB_DIR),
                writ_store::StoreOptions::default(),
            )
            .expect("opening the store"),
        ),
        Backend::Redis => writ_store::AnyStore::Redis(
            writ_store::RedisStore::connect(config.redis_options())
                .await
                .expect("connecting to the cluster"),
        ),
    }
}
