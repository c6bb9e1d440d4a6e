//! `redis-footprint` and its helper `redis-cache-probe`: what a live token costs on the
//! Redis Cluster backend, measured rather than estimated.
//!
//! Chains of a root and one downscoped child (the claims, contexts and actors every
//! measurement here uses) are minted through the in-process `Service` over a
//! `RedisStore` configured as `writ serve` configures it (`Config::redis_options`: WAIT
//! for one replica, keys that expire with their tokens), audit events included. Each
//! node's `INFO memory`, `DBSIZE` and append-only files are read before loading and at
//! every size (cumulative, in one namespace), so bytes per token come out as slopes
//! between sizes, free of the cluster's fixed overhead. A Writ node's own memory for the
//! cluster is its record cache: a separate process (`redis-cache-probe`) reads records
//! through a fresh store and reports its RSS before and after.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use writ_bench::cluster::{self, NodeMemory, Totals};
use writ_bench::report::{self, Machine};
use writ_bench::{adapter, fixtures};
use writ_core::TokenId;
use writ_server::config::Backend;
use writ_store::{RedisStore, TokenStore};

/// The store `writ serve` would open on `nodes` under `prefix`, with a record cache of
/// `cache` entries (`None`: the server's default).
async fn store(nodes: &[String], prefix: &str, cache: Option<usize>) -> Result<RedisStore> {
    let mut config = writ_server::Config::default();
    config.storage.backend = Backend::Redis;
    config.storage.redis.nodes = nodes.to_vec();
    config.storage.redis.prefix = prefix.to_owned();
    if let Some(n) = cache {
        config.storage.redis.record_cache_entries = n;
    }
    Ok(RedisStore::connect(config.redis_options()?).await?)
}

/// Memory of every node at one point.
#[derive(Clone, Serialize)]
struct Snapshot {
    /// Live tokens stored under this run's prefix (roots plus children).
    tokens: usize,
    /// Seconds spent minting since the previous snapshot.
    load_seconds: f64,
    /// Tokens per second over that time.
    tokens_per_s: f64,
    totals: Totals,
    nodes: Vec<NodeMemory>,
}

/// Bytes per token between two snapshots.
#[derive(Serialize)]
struct Slope {
    from_tokens: usize,
    to_tokens: usize,
    masters_used_memory_per_token: f64,
    masters_dataset_per_token: f64,
    replicas_used_memory_per_token: f64,
    /// Every node's `used_memory_rss` (fragmentation and allocator slack included).
    all_rss_per_token: f64,
    /// Keys per token on the masters.
    keys_per_token: f64,
    /// Append-only files of every node (masters and replicas; they shrink when Redis
    /// rewrites them, so this is what one run left, not a steady state).
    aof_bytes_per_token: f64,
}

fn slope(a: &Snapshot, b: &Snapshot) -> Slope {
    let n = (b.tokens - a.tokens).max(1) as f64;
    let d = |x: u64, y: u64| (y as f64 - x as f64) / n;
    Slope {
        from_tokens: a.tokens,
        to_tokens: b.tokens,
        masters_used_memory_per_token: d(
            a.totals.masters_used_memory,
            b.totals.masters_used_memory,
        ),
        masters_dataset_per_token: d(a.totals.masters_dataset, b.totals.masters_dataset),
        replicas_used_memory_per_token: d(
            a.totals.replicas_used_memory,
            b.totals.replicas_used_memory,
        ),
        all_rss_per_token: d(a.totals.all_rss, b.totals.all_rss),
        keys_per_token: d(a.totals.masters_keys, b.totals.masters_keys),
        aof_bytes_per_token: d(a.totals.all_aof_bytes, b.totals.all_aof_bytes),
    }
}

/// What `redis-cache-probe` prints.
#[derive(Debug, Deserialize, Serialize)]
pub struct CacheProbe {
    /// record_cache_entries of the probing store.
    entries: usize,
    /// Records read (each once).
    records: usize,
    /// Of which found.
    found: usize,
    /// RSS once connected, before any read.
    rss_before_bytes: u64,
    /// RSS after the reads.
    rss_after_bytes: u64,
    /// (after − before) ÷ min(found, entries).
    bytes_per_cached_record: f64,
}

/// One kind of key (by its last part: `e` audit events, `r` records, `s` states, `t`
/// tree, `m` meta, `o` nonces, `tok` token pointers, `ix` indexes) on the masters.
#[derive(Clone, Serialize)]
struct KeyKind {
    kind: String,
    keys: u64,
    /// Keys whose `MEMORY USAGE … SAMPLES 0` was read (the first ones SCAN found).
    sampled: u64,
    mean_bytes: f64,
    /// keys × mean_bytes.
    estimated_bytes: f64,
}

/// The kind of a key of `prefix`'s namespace.
fn kind_of(prefix: &str, key: &str) -> String {
    let rest = key
        .strip_prefix(prefix)
        .unwrap_or(key)
        .trim_start_matches(':');
    if let Some((_, tail)) = rest.rsplit_once("}:") {
        return tail.to_owned();
    }
    rest.split(':').next().unwrap_or("other").to_owned()
}

/// Keys of `prefix` on every master, by kind, with the memory of up to `sample` keys of
/// each kind: how a token's bytes split between its state and its audit events.
fn key_kinds(members: &[cluster::Node], prefix: &str, sample: usize) -> Result<Vec<KeyKind>> {
    use std::collections::BTreeMap;
    use std::io::Write;
    let mut keys: BTreeMap<String, u64> = BTreeMap::new();
    let mut sampled_at: BTreeMap<String, Vec<(String, String, u16)>> = BTreeMap::new();
    for node in members.iter().filter(|n| n.master) {
        let (host, port) = cluster::host_port(&format!("redis://{}", node.addr))?;
        let out = std::process::Command::new("redis-cli")
            .args(["-h", &host, "-p", &port.to_string(), "--scan", "--pattern"])
            .arg(format!("{prefix}:*"))
            .output()
            .context("redis-cli --scan")?;
        for key in String::from_utf8_lossy(&out.stdout).lines() {
            let kind = kind_of(prefix, key);
            *keys.entry(kind.clone()).or_default() += 1;
            let at = sampled_at.entry(kind).or_default();
            if at.len() < sample {
                at.push((key.to_owned(), host.clone(), port));
            }
        }
    }
    let mut kinds = Vec::new();
    for (kind, count) in &keys {
        let mut by_node: BTreeMap<(&str, u16), Vec<&str>> = BTreeMap::new();
        for (key, host, port) in &sampled_at[kind] {
            by_node.entry((host, *port)).or_default().push(key);
        }
        let (mut total, mut n) = (0u64, 0u64);
        for ((host, port), list) in by_node {
            let mut child = std::process::Command::new("redis-cli")
                .args(["-h", host, "-p", &port.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("redis-cli")?;
            {
                let mut stdin = child.stdin.take().context("stdin")?;
                for key in list {
                    writeln!(stdin, "MEMORY USAGE \"{key}\" SAMPLES 0")?;
                }
            }
            let out = child.wait_with_output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Ok(b) = line.trim().parse::<u64>() {
                    total += b;
                    n += 1;
                }
            }
        }
        let mean = total as f64 / n.max(1) as f64;
        kinds.push(KeyKind {
            kind: kind.clone(),
            keys: *count,
            sampled: n,
            mean_bytes: mean,
            estimated_bytes: mean * *count as f64,
        });
    }
    Ok(kinds)
}

#[derive(Serialize)]
struct Out<'a> {
    tool: &'static str,
    machine: Machine,
    note: &'static str,
    prefix: &'a str,
    cluster: Vec<cluster::Node>,
    baseline: Snapshot,
    rows: Vec<Snapshot>,
    /// From the baseline to each size, and between consecutive sizes.
    slopes: Vec<Slope>,
    cache_probe: Option<CacheProbe>,
    /// At the largest size: the namespace's keys on the masters by kind.
    key_kinds: Vec<KeyKind>,
    /// Chain attempts retried after an unacknowledged write.
    retried_chains: usize,
    loadavg_after: String,
}

const NOTE: &str = "tokens = roots + children (one child per root), minted through the in-process Service over RedisStore (Config::redis_options defaults: WAIT 1 replica, key expiry), audit events included; memory from INFO memory of every node; slopes between snapshots are per token";

/// Runs `op` up to 10 times while it fails (counted in [`RETRIED`]).
async fn retry<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 9 => {
                attempt += 1;
                RETRIED.fetch_add(1, Ordering::Relaxed);
                if attempt == 1 {
                    eprintln!("  retrying a chain: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Chains retried after an unacknowledged write (a retried chain may leave a root or
/// child of its failed attempt behind: at most this many extra tokens).
static RETRIED: AtomicUsize = AtomicUsize::new(0);

/// Mints chains (root + one child) through `svc` until `chains` more exist, with
/// `concurrency` in flight; keeps the first `keep` token ids in `ids`.
async fn mint_chains(
    svc: Arc<writ_server::service::Service<RedisStore>>,
    chains: usize,
    concurrency: usize,
    ids: Arc<Mutex<Vec<TokenId>>>,
    keep: usize,
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (svc, next, ids) = (svc.clone(), next.clone(), ids.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chains {
                    return Ok::<_, anyhow::Error>(());
                }
                // A write not acknowledged in time (UNAVAILABLE: the replica's WAIT
                // timed out on this overloaded machine) is retried, as a client would.
                let (root_rec, child_rec) = retry(|| async {
                    let (root, root_rec) = adapter::mint(&svc, fixtures::mint_request(1)).await?;
                    let (_child, child_rec) = adapter::downscope(
                        &svc,
                        &fixtures::hop(0),
                        root.expose(),
                        fixtures::child_request(1, 1),
                    )
                    .await?;
                    Ok((root_rec, child_rec))
                })
                .await?;
                {
                    let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                    if ids.len() < keep {
                        ids.push(root_rec.token_id);
                        ids.push(child_rec.token_id);
                    }
                }
                if (i + 1).is_multiple_of(50_000) {
                    eprintln!(
                        "  {} chains more ({:.0} s)",
                        i + 1,
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

pub async fn run(
    nodes: Vec<String>,
    cluster_dir: Option<PathBuf>,
    sizes: Vec<usize>,
    concurrency: usize,
    cache_probe_n: usize,
    prefix: Option<String>,
    out: &Path,
) -> Result<()> {
    ensure!(!nodes.is_empty(), "--redis-nodes is empty");
    ensure!(
        sizes.windows(2).all(|w| w[0] < w[1]),
        "--sizes must be ascending"
    );
    let machine = report::machine();
    let prefix = prefix
        .unwrap_or_else(|| format!("fp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let members = cluster::nodes(&nodes[0])?;
    ensure!(
        members.iter().any(|n| n.master),
        "CLUSTER NODES lists no master"
    );
    let dir = cluster_dir.as_deref();
    let read = |tokens: usize, load_seconds: f64| -> Result<Snapshot> {
        let nodes = cluster::memory(&members, dir)?;
        Ok(Snapshot {
            tokens,
            load_seconds,
            tokens_per_s: if load_seconds > 0.0 {
                tokens as f64 / load_seconds
            } else {
                0.0
            },
            totals: Totals::of(&nodes),
            nodes,
        })
    };
    let baseline = read(0, 0.0)?;
    eprintln!(
        "baseline: masters used_memory {} MiB, dataset {} MiB, keys {}",
        baseline.totals.masters_used_memory >> 20,
        baseline.totals.masters_dataset >> 20,
        baseline.totals.masters_keys
    );
    let store = Arc::new(store(&nodes, &prefix, None).await?);
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut rows: Vec<Snapshot> = Vec::new();
    let mut chains_done = 0usize;
    for &size in &sizes {
        let chains = size / 2;
        let (svc, writer) =
            adapter::service_with_writer(store.clone(), fixtures::keyring(), fixtures::policy(8))
                .await?;
        let svc = Arc::new(svc);
        let t0 = Instant::now();
        mint_chains(
            svc.clone(),
            chains - chains_done,
            concurrency,
            ids.clone(),
            cache_probe_n,
        )
        .await?;
        let load_seconds = t0.elapsed().as_secs_f64();
        // Every queued audit event stored before memory is read.
        drop(svc);
        tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .context("the audit writer did not finish")??;
        let added = (chains - chains_done) * 2;
        chains_done = chains;
        let mut row = read(chains * 2, load_seconds)?;
        row.tokens_per_s = added as f64 / load_seconds.max(1e-9);
        eprintln!(
            "{:>9} tokens: {:.0} tokens/s; masters used_memory {} MiB (dataset {} MiB), replicas {} MiB, keys {}, AOF {} MiB",
            row.tokens,
            row.tokens_per_s,
            row.totals.masters_used_memory >> 20,
            row.totals.masters_dataset >> 20,
            row.totals.replicas_used_memory >> 20,
            row.totals.masters_keys,
            row.totals.all_aof_bytes >> 20
        );
        rows.push(row);
        // What is measured so far survives a later failure.
        let partial = Out {
            tool: "writ-growth redis-footprint",
            machine: machine.clone(),
            note: NOTE,
            prefix: &prefix,
            cluster: members.clone(),
            baseline: baseline.clone(),
            rows: rows.clone(),
            slopes: Vec::new(),
            cache_probe: None,
            key_kinds: Vec::new(),
            retried_chains: RETRIED.load(Ordering::Relaxed),
            loadavg_after: report::loadavg(),
        };
        report::write_json(out, &partial)?;
    }
    drop(store);
    let mut slopes = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        slopes.push(slope(&baseline, row));
        if i > 0 {
            slopes.push(slope(&rows[i - 1], row));
        }
    }
    for s in &slopes {
        eprintln!(
            "{} -> {} tokens: masters {:.0} B/token (dataset {:.0}), replicas {:.0}, all RSS {:.0}, {:.2} keys/token, AOF {:.0} B/token",
            s.from_tokens,
            s.to_tokens,
            s.masters_used_memory_per_token,
            s.masters_dataset_per_token,
            s.replicas_used_memory_per_token,
            s.all_rss_per_token,
            s.keys_per_token,
            s.aof_bytes_per_token
        );
    }
    let key_kinds = key_kinds(&members, &prefix, 2000)?;
    let per_token = rows.last().map_or(1, |r| r.tokens.max(1)) as f64;
    for k in &key_kinds {
        eprintln!(
            "keys {:>4}: {:>9} keys, {:>7.0} B mean ({} sampled), {:>6.0} B per token",
            k.kind,
            k.keys,
            k.mean_bytes,
            k.sampled,
            k.estimated_bytes / per_token
        );
    }
    // The record cache of a Writ node, in a process of its own.
    let cache_probe = if cache_probe_n > 0 {
        let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|p| p.into_inner()));
        let file = tempfile::NamedTempFile::new()?;
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(file.path(), text)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("redis-cache-probe")
            .arg("--redis-nodes")
            .arg(nodes.join(","))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--entries")
            .arg(cache_probe_n.to_string())
            .arg(file.path())
            .output()
            .context("running redis-cache-probe")?;
        if !child.status.success() {
            bail!(
                "redis-cache-probe failed: {}",
                String::from_utf8_lossy(&child.stderr)
            );
        }
        let probe: CacheProbe =
            serde_json::from_slice(&child.stdout).context("redis-cache-probe's answer")?;
        eprintln!(
            "record cache: {} records cached, RSS {} -> {} MiB, {:.0} B per cached record",
            probe.found.min(probe.entries),
            probe.rss_before_bytes >> 20,
            probe.rss_after_bytes >> 20,
            probe.bytes_per_cached_record
        );
        Some(probe)
    } else {
        None
    };
    report::write_json(
        out,
        &Out {
            tool: "writ-growth redis-footprint",
            machine,
            note: NOTE,
            prefix: &prefix,
            cluster: members,
            baseline,
            rows,
            slopes,
            cache_probe,
            key_kinds,
            retried_chains: RETRIED.load(Ordering::Relaxed),
            loadavg_after: report::loadavg(),
        },
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `redis-cache-probe`: RSS of a process holding a fresh `RedisStore` before and after
/// reading each listed token once (each read caches the record).
pub async fn cache_probe(
    nodes: Vec<String>,
    prefix: String,
    entries: usize,
    ids: &Path,
) -> Result<()> {
    let text =
        std::fs::read_to_string(ids).with_context(|| format!("reading {}", ids.display()))?;
    let ids: Vec<TokenId> = text
        .lines()
        .map(|l| {
            l.parse()
                .map_err(|_| anyhow::anyhow!("not a token id: {l:?}"))
        })
        .collect::<Result<_>>()?;
    let store = Arc::new(store(&nodes, &prefix, Some(entries)).await?);
    // One read first, so connections and their buffers are in `before`.
    if let Some(first) = ids.first() {
        store.state(*first).await?;
    }
    let rss_before_bytes = super::rss_bytes();
    let next = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    let mut set = JoinSet::new();
    for _ in 0..16 {
        let (store, next, found, ids) = (store.clone(), next.clone(), found.clone(), ids.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                if store.get(*id).await?.is_some() {
                    found.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let rss_after_bytes = super::rss_bytes();
    let found = found.load(Ordering::Relaxed);
    let cached = found.min(entries).max(1);
    let probe = CacheProbe {
        entries,
        records: ids.len(),
        found,
        rss_before_bytes,
        rss_after_bytes,
        bytes_per_cached_record: (rss_after_bytes as f64 - rss_before_bytes as f64) / cached as f64,
    };
    println!("{}", serde_json::to_string(&probe)?);
    Ok(())
}
