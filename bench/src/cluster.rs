//! What the harness reads from a Redis Cluster, through `redis-cli` (installed with the
//! server by `scripts/redis-cluster install`): the nodes and their roles (`CLUSTER
//! NODES`), each node's memory (`INFO memory`) and key count (`DBSIZE`), and, for a
//! cluster `scripts/redis-cluster start DIR` made, each node's append-only files on disk
//! (`DIR/<port>/appendonlydir`). Read-only: nothing here writes to the cluster.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

use crate::report;

/// One node of the cluster as `CLUSTER NODES` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// `host:port`.
    pub addr: String,
    /// Port (for `DIR/<port>/`).
    pub port: u16,
    /// A master (else a replica).
    pub master: bool,
}

/// `host` and `port` of a seed node URL (`redis://[user:pass@]host:port[/db]`).
pub fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{url}: no port"))?;
    Ok((host.to_owned(), port.parse().context("the port")?))
}

/// `redis-cli -h HOST -p PORT ARGS…`, its answer with Redis's CR removed.
pub fn cli(host: &str, port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli (scripts/redis-cluster install)")?;
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}

/// Every node of the cluster `seed` belongs to, masters first, then by port.
pub fn nodes(seed: &str) -> Result<Vec<Node>> {
    let (host, port) = host_port(seed)?;
    let text = cli(&host, port, &["CLUSTER", "NODES"])?;
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            bail!("CLUSTER NODES: unexpected line {line:?}");
        };
        if flags.contains("fail") || flags.contains("noaddr") {
            continue;
        }
        let addr = addr.split('@').next().unwrap_or(addr).to_owned();
        let (_, port) = host_port(&addr)?;
        nodes.push(Node {
            addr,
            port,
            master: flags.contains("master"),
        });
    }
    nodes.sort_by_key(|n| (!n.master, n.port));
    Ok(nodes)
}

/// One node's memory and keys.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeMemory {
    /// `host:port`.
    pub addr: String,
    /// A master (else a replica).
    pub master: bool,
    /// `used_memory`: everything the allocator gave Redis.
    pub used_memory: u64,
    /// `used_memory_dataset`: `used_memory` less Redis's own overhead (buffers, the
    /// replication backlog, the keyspace's dictionaries): the data.
    pub used_memory_dataset: u64,
    /// `used_memory_rss`: resident pages (fragmentation included).
    pub used_memory_rss: u64,
    /// `DBSIZE`.
    pub keys: u64,
    /// Bytes under `DIR/<port>/appendonlydir` (0 without a cluster directory).
    pub aof_bytes: u64,
}

/// A field of an `INFO` answer.
fn info_field(info: &str, name: &str) -> Result<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .ok_or_else(|| anyhow!("INFO has no {name}"))?
        .trim()
        .parse()
        .with_context(|| format!("INFO {name}"))
}

/// Reads every node's memory, keys and (with `dir`) append-only files.
pub fn memory(nodes: &[Node], dir: Option<&Path>) -> Result<Vec<NodeMemory>> {
    nodes
        .iter()
        .map(|n| {
            let (host, port) = host_port(&n.addr)?;
            let info = cli(&host, port, &["INFO", "memory"])?;
            let keys = cli(&host, port, &["DBSIZE"])?
                .trim()
                .parse()
                .context("DBSIZE")?;
            Ok(NodeMemory {
                addr: n.addr.clone(),
                master: n.master,
                used_memory: info_field(&info, "used_memory")?,
                used_memory_dataset: info_field(&info, "used_memory_dataset")?,
                used_memory_rss: info_field(&info, "used_memory_rss")?,
                keys,
                aof_bytes: dir.map_or(0, |d| {
                    report::dir_bytes(&d.join(port.to_string()).join("appendonlydir"))
                }),
            })
        })
        .collect()
}

/// Sums over the masters, the replicas, and all nodes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// `used_memory` of the masters.
    pub masters_used_memory: u64,
    /// `used_memory_dataset` of the masters.
    pub masters_dataset: u64,
    /// `used_memory` of the replicas.
    pub replicas_used_memory: u64,
    /// `used_memory_dataset` of the replicas.
    pub replicas_dataset: u64,
    /// `used_memory_rss` of every node.
    pub all_rss: u64,
    /// Keys on the masters.
    pub masters_keys: u64,
    /// Append-only files of every node.
    pub all_aof_bytes: u64,
}

impl Totals {
    /// Sums `nodes`.
    pub fn of(nodes: &[NodeMemory]) -> Totals {
        let mut t = Totals::default();
        for n in nodes {
            if n.master {
                t.masters_used_memory += n.used_memory;
                t.masters_dataset += n.used_memory_dataset;
                t.masters_keys += n.keys;
            } else {
                t.replicas_used_memory += n.used_memory;
                t.replicas_dataset += n.used_memory_dataset;
            }
            t.all_rss += n.used_memory_rss;
            t.all_aof_bytes += n.aof_bytes;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_urls_give_host_and_port() {
        assert_eq!(
            host_port("redis://127.0.0.1:7001").ok(),
            Some(("127.0.0.1".to_owned(), 7001))
        );
        assert_eq!(
            host_port("redis://u:p@db.example:6380/0").ok(),
            Some(("db.example".to_owned(), 6380))
        );
        assert!(host_port("redis://nohost").is_err());
    }

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\nused_memory:1000\nused_memory_human:1K\nused_memory_dataset:600\n";
        assert_eq!(info_field(info, "used_memory").ok(), Some(1000));
        assert_eq!(info_field(info, "used_memory_dataset").ok(), Some(600));
        assert!(info_field(info, "used_memory_rss").is_err());
    }
}
