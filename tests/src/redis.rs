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
    // A replica on this busy machine (the whole suite on two cores) can take longer than
    // production's half second to acknowledge: wait longer, not fail the test.
    config.storage.redis.ack_timeout_ms = 2000;
    config.storage.redis.prefix = format!(
        "e{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
}

/// Points `config` at a cluster of this test binary that speaks TLS only (client
/// certificates required), reached as the least-privileged ACL user DEPLOY.md describes,
/// with its certificates and password read from files as an operator's would be.
pub fn use_tls_cluster(config: &mut Config) {
    static CLUSTER: OnceLock<PathBuf> = OnceLock::new();
    let dir = CLUSTER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("writ-e2e-redis-tls-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let out = Command::new(crate::repo_root().join("scripts/redis-cluster"))
            .arg("start")
            .arg(&dir)
            .args(["--port", "0", "--owner"])
            .arg(std::process::id().to_string())
            .args([
                "--clean",
                "--tls",
                "--acl-user",
                "writ",
                "--acl-keys",
                "tls*",
            ])
            .output()
            .expect("running scripts/redis-cluster");
        assert!(
            out.status.success(),
            "starting a TLS Redis Cluster failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    use_cluster(config);
    let r = &mut config.storage.redis;
    let nodes = std::fs::read_to_string(dir.join("nodes")).expect("the cluster's seeds");
    r.nodes = nodes.trim().split(',').map(str::to_owned).collect();
    r.ca = Some(dir.join("tls/ca.crt"));
    r.client_cert = Some(dir.join("tls/client.crt"));
    r.client_key = Some(dir.join("tls/client.key"));
    r.username = Some("writ".into());
    r.password_file = Some(dir.join("acl/writ.password"));
    r.prefix = format!("tls{}", r.prefix);
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
            let script = crate::repo_root().join("scripts/redis-cluster");
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
                    // The live feed across nodes: every field and value of every entry.
                    "stream" => {
                        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                            .arg(&key)
                            .arg("-")
                            .arg("+")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        entries.into_iter().flat_map(|(_, fields)| fields).collect()
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
            writ_store::RedisStore::connect(config.redis_options().expect("the redis options"))
                .await
                .expect("connecting to the cluster"),
        ),
    }
}

/// A private six-node cluster for one fault test: started in a temporary directory of its
/// own (`--port 0 --owner <this pid> --clean`, so its watchdog stops it even if the test
/// binary dies), with nodes killed, stopped, continued and restarted through
/// `scripts/redis-cluster`, and stopped (its directory removed) on drop. A fault test never
/// touches the cluster other tests of its binary share.
#[derive(Debug)]
pub struct FaultCluster {
    dir: PathBuf,
    nodes: Vec<String>,
}

/// One master of a [`FaultCluster`] as the cluster sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The master's port.
    pub master: u16,
    /// Its slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    /// Whether this shard serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

fn script_path() -> PathBuf {
    crate::repo_root().join("scripts/redis-cluster")
}

impl FaultCluster {
    /// Starts a cluster whose nodes time out after `node_timeout_ms` (how long a master
    /// must be silent before its replica is promoted).
    pub fn start(node_timeout_ms: u64) -> FaultCluster {
        let dir = tempfile::Builder::new()
            .prefix("writ-faults-redis-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let out = Command::new(script_path())
            .arg("start")
            .arg(&dir)
            .args(["--port", "0", "--owner"])
            .arg(std::process::id().to_string())
            .arg("--clean")
            .arg("--node-timeout")
            .arg(node_timeout_ms.to_string())
            .output()
            .expect("running scripts/redis-cluster");
        assert!(
            out.status.success(),
            "starting a private Redis Cluster failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        FaultCluster { dir, nodes }
    }

    /// The seed nodes (`redis://127.0.0.1:P`).
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The six node ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter_map(|n| n.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// Points `config` at this cluster under a fresh namespace (nodes started with
    /// [`crate::TestServer::start_node_of`] share it).
    pub fn use_in(&self, config: &mut Config) {
        config.storage.backend = Backend::Redis;
        config.storage.redis.nodes = self.nodes.clone();
        config.storage.redis.prefix = format!("faults-{}", rand::random::<u32>());
    }

    /// Runs `scripts/redis-cluster COMMAND DIR ARGS`, panicking with its output on failure.
    fn script(&self, command: &str, args: &[&str]) -> String {
        let out = Command::new(script_path())
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("running scripts/redis-cluster");
        assert!(
            out.status.success(),
            "scripts/redis-cluster {command} {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// SIGKILL to node `port`; returns once it is gone.
    pub fn kill(&self, port: u16) {
        self.script("kill", &[&port.to_string()]);
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to node `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        self.script("kill", &[&port.to_string(), "--signal", signal]);
    }

    /// Restarts the killed node `port` from its configuration and data (it rejoins the
    /// cluster, as a replica if its shard failed over); returns once it answers PING.
    pub fn restart(&self, port: u16) {
        self.script("restart", &[&port.to_string()]);
    }

    /// `redis-cli -p PORT ARGS…` bounded to 2 s; `None` when the node does not answer.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("timeout")
            .args(["2", "redis-cli", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).replace('\r', ""))
    }

    /// Makes `replica` lag behind `master`: stops it (SIGSTOP), then writes junk through
    /// the master (keys tagged `{tag}`, one of the master's slots; they expire in a
    /// minute) until the replication stream no longer fits the sockets and the master
    /// holds the rest in the replica's output buffer (`omem` > 0). From then on, what the
    /// master takes reaches only the master until the replica is continued: a stopped
    /// replica alone would still read what its socket buffered. The master keeps taking
    /// writes for `min-replicas-max-lag` (2 s) after the replica's last acknowledgement.
    /// Returns the junk written, in MiB.
    pub fn stall_replica(&self, master: u16, replica: u16, tag: &str) -> usize {
        self.signal(replica, "STOP");
        for chunk in 0..32 {
            let key = format!("{{{tag}}}:faults-junk:{chunk}");
            let wrote = self.cli(
                master,
                &[
                    "EVAL",
                    "redis.call('SET', KEYS[1], string.rep('x', 4194304), 'PX', 60000) return 1",
                    "1",
                    &key,
                ],
            );
            assert!(wrote.is_some(), "master {master} refused the junk write");
            let buffered = self
                .cli(master, &["CLIENT", "LIST", "TYPE", "replica"])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|kv| kv.strip_prefix("omem="))
                .filter_map(|n| n.parse::<u64>().ok())
                .any(|n| n > 0);
            if buffered {
                return 4 * (chunk + 1);
            }
        }
        panic!("128 MiB written through master {master} and its replica's stream still fits");
    }

    /// One `field:value` of an INFO answer of node `port`.
    pub fn info_field(&self, port: u16, section: &str, field: &str) -> Option<String> {
        let info = self.cli(port, &["INFO", section])?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
    }

    /// The masters serving slots, as node `port` sees them (`None` if it does not answer;
    /// masters flagged failing are left out).
    pub fn shards_seen_by(&self, port: u16) -> Option<Vec<Shard>> {
        let nodes = self.cli(port, &["CLUSTER", "NODES"])?;
        let mut shards = Vec::new();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(master) = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                })
                .collect::<Vec<_>>();
            if !slots.is_empty() {
                shards.push(Shard { master, slots });
            }
        }
        Some(shards)
    }

    /// The masters serving slots, as the first node that answers sees them.
    pub fn shards(&self) -> Vec<Shard> {
        self.ports()
            .into_iter()
            .find_map(|p| self.shards_seen_by(p))
            .expect("no node of the cluster answers CLUSTER NODES")
    }

    /// The replica of master `port` (by `INFO replication`), if it has a linked one.
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let info = self.cli(master, &["INFO", "replication"])?;
        info.lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .find_map(|l| {
                l.split(',')
                    .find_map(|kv| kv.strip_prefix("port="))
                    .and_then(|p| p.parse().ok())
            })
    }

    /// The port of the master serving `key` now (the owner with the highest config
    /// epoch among the live nodes' views; `scripts/redis-cluster master-of`).
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let out = Command::new(script_path())
            .arg("master-of")
            .arg(&self.dir)
            .arg(key)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Whether every node is up, the cluster ok on each, every master has a linked
    /// replica and every replica its master (`status`, then `INFO replication`): writes
    /// that need `WAIT 1` can be acknowledged on every shard again.
    pub fn healthy(&self) -> bool {
        let status = Command::new(script_path())
            .arg("status")
            .arg(&self.dir)
            .output();
        if !status.is_ok_and(|o| o.status.success()) {
            return false;
        }
        self.ports().into_iter().all(|p| {
            match self.info_field(p, "replication", "role").as_deref() {
                Some("master") => self
                    .info_field(p, "replication", "connected_slaves")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n >= 1),
                Some("slave") => {
                    self.info_field(p, "replication", "master_link_status")
                        .as_deref()
                        == Some("up")
                }
                _ => false,
            }
        })
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        let _ = Command::new(script_path())
            .arg("stop")
            .arg(&self.dir)
            .arg("--clean")
            .output();
    }
}

/// The hash slot of `key` (Redis Cluster's CRC16/XMODEM of the key, or of its first
/// non-empty `{…}` hash tag, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let data = tagged.unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The hash slot every key of the transaction `txn` (`txn_<hex>`, as the wire shows it)
/// lives in: the Redis store tags each with `{<hex>}`.
pub fn txn_slot(txn: &str) -> u16 {
    let hex = txn.strip_prefix("txn_").unwrap_or(txn);
    key_slot(format!("{{{hex}}}").as_bytes())
}
