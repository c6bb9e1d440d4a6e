//! `writ-growth`: how Writ's costs grow (issue 4, figures 3 and 4).
//!
//! - `depth`: in-process Validate (the `Service`, no network) of a chain's leaf against
//!   chain depth (1, 4, 16, 64: the policy's max_depth is raised to 64), over RocksDB and
//!   over the in-memory store, so the store's share is visible.
//! - `tokens`: in-process Validate against the number of stored tokens (loaded straight
//!   into a RocksDB store with `Durability::Buffered`), with disk bytes per token at
//!   each size, then the time cleanup takes to purge them all.
//! - `cleanup`: time to purge N expired tokens, one fresh store per N.
//! - `claims`: in-process Validate against the number of typed claims on the token
//!   (1 to 32, the limit), each checked against an action attribute: does the decision
//!   grow with the grant? Over RocksDB and the memory store.
//! - `fanout`: in-process Downscope latency against how many tokens the transaction
//!   already holds, growing it two ways (all children under one parent, or spread over
//!   32 parents), so a cost that follows the parent's fan-out can be told from one that
//!   follows the transaction's size. RocksDB (sync and buffered) and the memory store.
//! - `footprint`: against live tokens (up to 10 million), the load rate, disk bytes per
//!   token (SST and WAL, before and after compaction), memory (the server process's RSS
//!   and this process's), and startup: a server process on the loaded data directory
//!   timed until it listens and answers a first Validate, then in-process reopens with
//!   cold and warm Validates.
//! - `redis-footprint`: memory per live token on the Redis Cluster backend: chains (a
//!   root and one downscoped child, the claims every measurement uses, with their audit
//!   events) minted through the in-process service over a `RedisStore`, and each node's
//!   `INFO memory`, keys and append-only files read before and at each size, so bytes
//!   per token are a slope between sizes; then a process of its own caches records
//!   through a fresh store (`redis-cache-probe`) to measure a Writ node's record cache.
//! - `plot-load`: draws throughput against concurrency from `writ-load` JSON results.
//!
//! Each subcommand writes a JSON result and an SVG chart.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use writ_bench::report::{self, Latency, Machine};
use writ_bench::svg::{Chart, Series};
use writ_bench::{adapter, fixtures, wire};
use writ_core::{Attributes, KeyRing, TokenSecret, UnixMillis};
use writ_server::service::{Service, now};
use writ_store::{Durability, MemoryStore, RocksStore, StoreOptions, TokenStore};

/// Growth measurements for Writ (issue 4).
#[derive(Debug, Parser)]
#[command(name = "writ-growth", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate latency and throughput against chain depth.
    Depth {
        /// Depths to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        depths: Vec<u32>,
        /// Validates per measurement.
        #[arg(long, default_value_t = 20_000)]
        iters: usize,
        /// Concurrent validating tasks for the throughput figure.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// JSON result.
        #[arg(long, default_value = "results/depth.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/depth.svg")]
        svg: PathBuf,
    },
    /// Validate latency and throughput, and disk use, against stored tokens.
    Tokens {
        /// Store sizes to measure at, ascending.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Validates per measurement.
        #[arg(long, default_value_t = 20_000)]
        probe: usize,
        /// Concurrent validating tasks for the throughput figure.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Where to put the store (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Skip the final purge (cleanup time).
        #[arg(long)]
        no_purge: bool,
        /// Validate each sampled token once before measuring (a warm block cache).
        #[arg(long)]
        warm: bool,
        /// JSON result.
        #[arg(long, default_value = "results/tokens.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/tokens.svg")]
        svg: PathBuf,
    },
    /// Cleanup time against the number of expired tokens: for each size, a fresh store
    /// is loaded and every token purged through `TokenStore::purge_expired` in batches
    /// of 1024, as the server's cleanup task does.
    Cleanup {
        /// Numbers of tokens, one fresh store each.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,30000,100000,300000"
        )]
        sizes: Vec<usize>,
        /// `max_tokens` of each `purge_expired` call (the server's cleanup task uses 1024).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// JSON result.
        #[arg(long, default_value = "results/cleanup.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/cleanup.svg")]
        svg: PathBuf,
    },
    /// Validate latency and throughput against the number of typed claims on the token
    /// (each evaluated against an action attribute), over RocksDB and the memory store.
    Claims {
        /// Claims per token (at most writ_core::limits::MAX_CLAIMS = 32).
        #[arg(long, value_delimiter = ',', default_value = "1,8,16,32")]
        sizes: Vec<usize>,
        /// Members of each allow-set and deny-set claim (at most MAX_SET_ITEMS = 64).
        #[arg(long, default_value_t = 8)]
        set_items: usize,
        /// Validates per measurement.
        #[arg(long, default_value_t = 20_000)]
        iters: usize,
        /// Concurrent validating tasks for the throughput figure.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// JSON result.
        #[arg(long, default_value = "results/claims.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/claims.svg")]
        svg: PathBuf,
    },
    /// Downscope latency against how many tokens the parent (siblings) and the
    /// transaction already hold, on RocksDB (sync and buffered) and the memory store.
    Fanout {
        /// Upper bounds of the buckets of k (the k-th Downscope of a transaction); the
        /// last is how many children each transaction gets (at most 1024 = the
        /// in-process fan-out ceiling; the transaction limit is 4096 tokens).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,250,500,1000")]
        fanouts: Vec<usize>,
        /// Transactions grown per store and mode.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Parents of the `spread` mode: the root gets this many children, then
        /// grandchildren are derived round-robin under them, so the transaction grows as
        /// in `siblings` mode while each parent's fan-out stays small.
        #[arg(long, default_value_t = 32)]
        spread_parents: usize,
        /// Skip the RocksDB store with Durability::Sync (an fsync per Downscope).
        #[arg(long)]
        no_sync: bool,
        /// JSON result.
        #[arg(long, default_value = "results/fanout.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/fanout.svg")]
        svg: PathBuf,
    },
    /// Memory, disk and startup time against live tokens: one fresh RocksDB store per
    /// size, loaded, then served by a server process (`writ_server::start`, timed to its
    /// first Validate) and reopened in-process.
    Footprint {
        /// Live root tokens, one fresh store each.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        sizes: Vec<usize>,
        /// Sequential validates of the warm measurement (in-process and over gRPC).
        #[arg(long, default_value_t = 5000)]
        probe: usize,
        /// Distinct tokens validated once each right after the reopen (cold reads).
        #[arg(long, default_value_t = 200)]
        cold: usize,
        /// Where to put the stores (default: a temporary directory); each size gets a
        /// subdirectory, removed after it is measured.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// JSON result.
        #[arg(long, default_value = "results/footprint.json")]
        out: PathBuf,
        /// SVG chart.
        #[arg(long, default_value = "results/footprint.svg")]
        svg: PathBuf,
    },
    /// Memory per live token on a Redis Cluster: chains of a root and one child minted
    /// through the service over a `RedisStore` (acknowledged as the server does: WAIT
    /// for the replicas), each node's `INFO memory` read before loading and at each
    /// size (cumulative, one namespace), then a Writ node's record cache measured.
    RedisFootprint {
        /// Seed nodes (`redis://host:port`, comma separated).
        #[arg(
            long,
            value_delimiter = ',',
            env = "WRIT_BENCH_REDIS_NODES",
            required = true
        )]
        redis_nodes: Vec<String>,
        /// The cluster's directory (`scripts/redis-cluster start DIR`): append-only file
        /// sizes are read from `DIR/<port>/appendonlydir`.
        #[arg(long)]
        cluster_dir: Option<PathBuf>,
        /// Live tokens (roots plus children) at which memory is read, ascending.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        sizes: Vec<usize>,
        /// Chains minted concurrently.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Distinct records the cache probe reads (the server's record_cache_entries
        /// default is 100000).
        #[arg(long, default_value_t = 100_000)]
        cache_probe: usize,
        /// Key prefix (default: one of this run's own).
        #[arg(long)]
        prefix: Option<String>,
        /// JSON result.
        #[arg(long, default_value = "results/redis-footprint.json")]
        out: PathBuf,
    },
    /// Reads each token id in a file once through a fresh `RedisStore` with a record
    /// cache of `--entries`, printing this process's RSS before and after as JSON:
    /// `redis-footprint` runs it to measure the record cache alone.
    #[command(hide = true)]
    RedisCacheProbe {
        /// Seed nodes.
        #[arg(long, value_delimiter = ',', required = true)]
        redis_nodes: Vec<String>,
        /// Key prefix.
        #[arg(long)]
        prefix: String,
        /// Record cache entries.
        #[arg(long)]
        entries: usize,
        /// One token id per line.
        ids: PathBuf,
    },
    /// Serves a data directory with the default configuration (on 127.0.0.1, an
    /// ephemeral port, printed on stdout) until stdin closes: `footprint` runs the
    /// server in a process of its own with this, to time its startup and read its RSS.
    #[command(hide = true)]
    ServeDataDir {
        /// The data directory (key ring and `db/`).
        data_dir: PathBuf,
    },
    /// The RocksDB store's hot tier, measured: stores `--tokens` roots (the standard
    /// record) with a tier large enough to hold them, reads each once through
    /// `get_with_state` (which fills the tier), and prints this process's RSS before and
    /// after the reads with the tier's own estimate, as JSON: bytes per cached token.
    HotTierProbe {
        /// Tokens stored and read.
        #[arg(long, default_value_t = 200_000)]
        tokens: usize,
    },
    /// Throughput against concurrency from writ-load JSON results, one line per label.
    PlotLoad {
        /// Chart title.
        #[arg(long)]
        title: String,
        /// SVG chart.
        #[arg(long)]
        svg: PathBuf,
        /// writ-load result files.
        files: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Depth {
            depths,
            iters,
            concurrency,
            out,
            svg,
        } => rt.block_on(depth(depths, iters, concurrency, &out, &svg)),
        Cmd::Tokens {
            sizes,
            probe,
            concurrency,
            dir,
            no_purge,
            warm,
            out,
            svg,
        } => rt.block_on(tokens(
            sizes,
            probe,
            concurrency,
            dir,
            !no_purge,
            warm,
            &out,
            &svg,
        )),
        Cmd::Cleanup {
            sizes,
            batch,
            out,
            svg,
        } => rt.block_on(cleanup(sizes, batch, &out, &svg)),
        Cmd::Claims {
            sizes,
            set_items,
            iters,
            concurrency,
            out,
            svg,
        } => rt.block_on(claims(sizes, set_items, iters, concurrency, &out, &svg)),
        Cmd::Fanout {
            fanouts,
            reps,
            spread_parents,
            no_sync,
            out,
            svg,
        } => rt.block_on(fanout(fanouts, reps, spread_parents, !no_sync, &out, &svg)),
        Cmd::Footprint {
            sizes,
            probe,
            cold,
            dir,
            out,
            svg,
        } => rt.block_on(footprint(sizes, probe, cold, dir, &out, &svg)),
        Cmd::ServeDataDir { data_dir } => rt.block_on(serve_data_dir(data_dir)),
        Cmd::RedisFootprint {
            redis_nodes,
            cluster_dir,
            sizes,
            concurrency,
            cache_probe,
            prefix,
            out,
        } => rt.block_on(redis_footprint::run(
            redis_nodes,
            cluster_dir,
            sizes,
            concurrency,
            cache_probe,
            prefix,
            &out,
        )),
        Cmd::RedisCacheProbe {
            redis_nodes,
            prefix,
            entries,
            ids,
        } => rt.block_on(redis_footprint::cache_probe(
            redis_nodes,
            prefix,
            entries,
            &ids,
        )),
        Cmd::HotTierProbe { tokens } => rt.block_on(hot_tier_probe(tokens)),
        Cmd::PlotLoad { title, svg, files } => plot_load(&title, &svg, &files),
    }
}

/// One Validate measurement: sequential latency, and throughput with `concurrency` tasks.
#[derive(Clone, Debug, Serialize)]
struct Probe {
    latency: Latency,
    throughput_ops_s: f64,
}

async fn probe<S: TokenStore>(
    svc: &Arc<Service<S>>,
    audience: &str,
    tokens: &Arc<Vec<TokenSecret>>,
    iters: usize,
    concurrency: usize,
) -> Result<Probe> {
    let attributes = Arc::new(fixtures::attributes());
    probe_with(svc, audience, tokens, &attributes, iters, concurrency).await
}

/// [`probe`] with the action's attributes given (scope `fixtures::SCOPE`); every
/// Validate must be active and allowed.
async fn probe_with<S: TokenStore>(
    svc: &Arc<Service<S>>,
    audience: &str,
    tokens: &Arc<Vec<TokenSecret>>,
    attributes: &Arc<Attributes>,
    iters: usize,
    concurrency: usize,
) -> Result<Probe> {
    // Latency: one at a time.
    let mut h = report::histogram();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..iters {
        let t = &tokens[pick(&mut seed, tokens.len())];
        let t0 = Instant::now();
        let ok = adapter::validate_action(
            svc,
            audience,
            t.expose(),
            fixtures::SCOPE,
            BTreeMap::clone(attributes),
        )
        .await?;
        report::record(&mut h, nanos(t0));
        anyhow::ensure!(ok, "a stored token did not validate");
    }
    // Throughput: `concurrency` tasks share the same number of validates.
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for c in 0..concurrency {
        let (svc, tokens, audience) = (svc.clone(), tokens.clone(), audience.to_string());
        let attributes = attributes.clone();
        let n = iters / concurrency;
        set.spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            for _ in 0..n {
                let t = &tokens[pick(&mut seed, tokens.len())];
                adapter::validate_action(
                    &svc,
                    &audience,
                    t.expose(),
                    fixtures::SCOPE,
                    BTreeMap::clone(&attributes),
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(n)
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        done += r??;
    }
    Ok(Probe {
        latency: Latency::of(&h),
        throughput_ops_s: done as f64 / t0.elapsed().as_secs_f64(),
    })
}

/// Nanoseconds since `t0`.
fn nanos(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Latency against `x` (log scale): RocksDB mean and p99, memory store mean, from
/// `points(store, measure)`.
fn probe_chart(
    title: &str,
    x_label: &str,
    points: impl Fn(&str, fn(&Probe) -> f64) -> Vec<(f64, f64)>,
) -> Chart {
    let line = |name: &str, store: &str, f: fn(&Probe) -> f64| Series {
        name: name.into(),
        points: points(store, f),
    };
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: "latency (µs)".into(),
        log_x: true,
        series: vec![
            line("RocksDB, mean", "rocks", |p| p.latency.mean_us),
            line("RocksDB, p99", "rocks", |p| p.latency.p99_us),
            line("memory store, mean", "memory", |p| p.latency.mean_us),
        ],
    }
}

/// A RocksDB store at `path` with the default options and `durability`.
fn open_store(path: &Path, durability: Durability) -> Result<RocksStore> {
    let opts = StoreOptions {
        durability,
        ..StoreOptions::default()
    };
    Ok(RocksStore::open(path, opts)?)
}

fn pick(s: &mut u64, n: usize) -> usize {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s % n as u64) as usize
}

#[derive(Serialize)]
struct DepthRow {
    store: &'static str,
    depth: u32,
    probe: Probe,
}

#[derive(Serialize)]
struct DepthOut {
    tool: &'static str,
    machine: Machine,
    iters: usize,
    concurrency: usize,
    rows: Vec<DepthRow>,
}

async fn depth_on<S: TokenStore>(
    name: &'static str,
    store: S,
    depths: &[u32],
    iters: usize,
    concurrency: usize,
    rows: &mut Vec<DepthRow>,
) -> Result<()> {
    let svc = Arc::new(
        adapter::service(Arc::new(store), fixtures::keyring(), fixtures::policy(64)).await?,
    );
    for &d in depths {
        let mut leaves = Vec::new();
        for _ in 0..64 {
            let mut chain = adapter::mint_chain(&svc, d).await?;
            leaves.extend(chain.pop());
        }
        let leaves = Arc::new(leaves);
        let p = probe(&svc, &fixtures::hop(d), &leaves, iters, concurrency).await?;
        eprintln!(
            "{name:<6} depth {d:>2}: {}  |  {:.0} validates/s with {concurrency} tasks",
            p.latency, p.throughput_ops_s
        );
        rows.push(DepthRow {
            store: name,
            depth: d,
            probe: p,
        });
    }
    Ok(())
}

async fn depth(
    depths: Vec<u32>,
    iters: usize,
    concurrency: usize,
    out: &Path,
    svg: &Path,
) -> Result<()> {
    let machine = report::machine();
    let tmp = tempfile::tempdir()?;
    let rocks = open_store(&tmp.path().join("db"), Durability::Buffered)?;
    let mut rows = Vec::new();
    depth_on("rocks", rocks, &depths, iters, concurrency, &mut rows).await?;
    depth_on(
        "memory",
        MemoryStore::new(),
        &depths,
        iters,
        concurrency,
        &mut rows,
    )
    .await?;
    let points = |store: &str, f: fn(&Probe) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.store == store)
            .map(|r| (f64::from(r.depth), f(&r.probe)))
            .collect()
    };
    let chart = probe_chart(
        "In-process Validate vs chain depth (sequential)",
        "chain depth (log)",
        points,
    );
    write_svg(svg, &chart)?;
    report::write_json(
        out,
        &DepthOut {
            tool: "writ-growth depth",
            machine,
            iters,
            concurrency,
            rows,
        },
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

#[derive(Serialize)]
struct TokensRow {
    tokens: usize,
    load_seconds: f64,
    load_tokens_s: f64,
    disk_bytes: u64,
    disk_bytes_per_token: f64,
    probe: Probe,
    /// With `--warm`: the sample's first reads, one at a time (before the probe).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_read: Option<Latency>,
}

#[derive(Serialize)]
struct Purge {
    tokens: usize,
    seconds: f64,
    tokens_s: f64,
    disk_bytes_before_compaction: u64,
    compact_seconds: f64,
    disk_bytes_after_compaction: u64,
}

#[derive(Serialize)]
struct TokensOut<'a> {
    tool: &'static str,
    machine: &'a Machine,
    note: &'static str,
    probe: usize,
    concurrency: usize,
    rows: &'a [TokensRow],
    /// After a full compaction at the end (absent while the run is still going).
    compacted_disk_bytes: Option<u64>,
    compacted_disk_bytes_per_million: Option<f64>,
    purge: Option<Purge>,
    loadavg_after: String,
}

/// Writes the tokens chart and JSON; called after every size, so a run stopped early
/// still leaves what it measured.
fn write_tokens(out: &Path, svg: &Path, doc: &TokensOut<'_>) -> Result<()> {
    let rows = doc.rows;
    let chart = Chart {
        title: "In-process Validate vs stored tokens (RocksDB)".into(),
        x_label: "stored tokens (log)".into(),
        y_label: "latency (µs)".into(),
        log_x: true,
        series: vec![
            Series {
                name: "mean".into(),
                points: rows
                    .iter()
                    .map(|r| (r.tokens as f64, r.probe.latency.mean_us))
                    .collect(),
            },
            Series {
                name: "p99".into(),
                points: rows
                    .iter()
                    .map(|r| (r.tokens as f64, r.probe.latency.p99_us))
                    .collect(),
            },
        ],
    };
    write_svg(svg, &chart)?;
    report::write_json(out, doc)
}

const TOKENS_NOTE: &str = "root tokens (depth 0) inserted through TokenStore::insert (with their minted events) into a RocksDB store opened with Durability::Buffered; probes validate tokens sampled uniformly from all loaded";

/// Keeps at most `cap` secrets, each loaded token equally likely to be kept, so probes
/// hit old and new tokens alike.
struct Reservoir {
    cap: usize,
    seen: u64,
    seed: u64,
    kept: Vec<TokenSecret>,
}

impl Reservoir {
    fn offer(&mut self, s: TokenSecret) {
        self.seen += 1;
        if self.kept.len() < self.cap {
            self.kept.push(s);
        } else {
            let j = pick(
                &mut self.seed,
                usize::try_from(self.seen).unwrap_or(usize::MAX),
            );
            if j < self.cap {
                self.kept[j] = s;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn tokens(
    sizes: Vec<usize>,
    probe_n: usize,
    concurrency: usize,
    dir: Option<PathBuf>,
    purge: bool,
    warm: bool,
    out: &Path,
    svg: &Path,
) -> Result<()> {
    let machine = report::machine();
    let tmp = tempfile::tempdir()?;
    let path = dir.unwrap_or_else(|| tmp.path().join("db"));
    let store = Arc::new(open_store(&path, Durability::Buffered)?);
    let keys = fixtures::keyring();
    let policy = fixtures::policy(8);
    let svc = Arc::new(adapter::service(store.clone(), keys.clone(), policy.clone()).await?);
    let mut reservoir = Reservoir {
        cap: 10_000,
        seen: 0,
        seed: 0x1234_5678_9ABC_DEF1,
        kept: Vec::new(),
    };
    let mut loaded = 0usize;
    let mut rows = Vec::new();
    for &size in &sizes {
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        let issued_at = now();
        while loaded < size {
            let mut chain = fixtures::record_chain(&keys, &policy, 0, issued_at)?;
            let Some((secret, record)) = chain.pop() else {
                continue;
            };
            reservoir.offer(secret);
            let store = store.clone();
            set.spawn(async move { adapter::put(store.as_ref(), record).await });
            loaded += 1;
            while set.len() >= 64 {
                if let Some(r) = set.join_next().await {
                    r??;
                }
            }
            if loaded.is_multiple_of(250_000) {
                eprintln!(
                    "  loaded {loaded} tokens ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let load_seconds = t0.elapsed().as_secs_f64();
        let disk = report::dir_bytes(&path);
        let sample = Arc::new(reservoir.kept.clone());
        let first_read = if warm {
            // Validate every sampled token once first: the probe then measures a working
            // set held in memory (the hot tier, the block cache), not the first read after
            // a flush. Those first reads are timed too: what a token outside the working
            // set costs at this size.
            let mut h = report::histogram();
            for t in sample.iter() {
                let t0 = Instant::now();
                adapter::validate(&svc, &fixtures::hop(0), t.expose(), true).await?;
                report::record(&mut h, nanos(t0));
            }
            let first = Latency::of(&h);
            eprintln!("{size:>9} tokens, first reads of the sample: {first}");
            Some(first)
        } else {
            None
        };
        let p = probe(&svc, &fixtures::hop(0), &sample, probe_n, concurrency).await?;
        eprintln!(
            "{size:>9} tokens: {}  |  {:.0} validates/s with {concurrency} tasks  |  {:.0} B/token on disk",
            p.latency,
            p.throughput_ops_s,
            disk as f64 / size as f64
        );
        let prev = rows.last().map_or(0, |r: &TokensRow| r.tokens);
        rows.push(TokensRow {
            tokens: size,
            load_seconds,
            load_tokens_s: (size - prev) as f64 / load_seconds,
            disk_bytes: disk,
            disk_bytes_per_token: disk as f64 / size as f64,
            probe: p,
            first_read,
        });
        write_tokens(
            out,
            svg,
            &TokensOut {
                tool: "writ-growth tokens",
                machine: &machine,
                note: TOKENS_NOTE,
                probe: probe_n,
                concurrency,
                rows: &rows,
                compacted_disk_bytes: None,
                compacted_disk_bytes_per_million: None,
                purge: None,
                loadavg_after: report::loadavg(),
            },
        )?;
    }
    let t0 = Instant::now();
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || s2.compact_all()).await??;
    let compacted = report::dir_bytes(&path);
    eprintln!(
        "compacted in {:.1} s: {compacted} bytes for {loaded} tokens",
        t0.elapsed().as_secs_f64()
    );
    let purge = if purge {
        let t0 = Instant::now();
        let n = adapter::purge_before(store.as_ref(), UnixMillis(u64::MAX), 1024).await?;
        let seconds = t0.elapsed().as_secs_f64();
        let before = report::dir_bytes(&path);
        let t1 = Instant::now();
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || s2.compact_all()).await??;
        let compact_seconds = t1.elapsed().as_secs_f64();
        let after = report::dir_bytes(&path);
        eprintln!(
            "purged {n} tokens in {seconds:.1} s; compaction {compact_seconds:.1} s: {before} -> {after} bytes"
        );
        Some(Purge {
            tokens: n,
            seconds,
            tokens_s: n as f64 / seconds,
            disk_bytes_before_compaction: before,
            compact_seconds,
            disk_bytes_after_compaction: after,
        })
    } else {
        None
    };
    write_tokens(
        out,
        svg,
        &TokensOut {
            tool: "writ-growth tokens",
            machine: &machine,
            note: TOKENS_NOTE,
            probe: probe_n,
            concurrency,
            rows: &rows,
            compacted_disk_bytes: Some(compacted),
            compacted_disk_bytes_per_million: Some(compacted as f64 / loaded.max(1) as f64 * 1e6),
            purge,
            loadavg_after: report::loadavg(),
        },
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

#[derive(Serialize)]
struct CleanupRow {
    tokens: usize,
    load_seconds: f64,
    purge_seconds: f64,
    purged_tokens_s: f64,
}

#[derive(Serialize)]
struct CleanupOut {
    tool: &'static str,
    batch: usize,
    machine: Machine,
    note: &'static str,
    rows: Vec<CleanupRow>,
    loadavg_after: String,
}

/// Loads `n` root tokens into `store` with 64 inserts in flight.
async fn load_roots(store: &Arc<RocksStore>, n: usize) -> Result<()> {
    load_roots_with(store, n, &fixtures::keyring(), None).await
}

/// Loads `n` root tokens issued under `keys` into `store` with 64 inserts in flight,
/// offering each secret to `sample` if given.
async fn load_roots_with(
    store: &Arc<RocksStore>,
    n: usize,
    keys: &KeyRing,
    mut sample: Option<&mut Reservoir>,
) -> Result<()> {
    let policy = fixtures::policy(8);
    let issued_at = now();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 1..=n {
        let mut chain = fixtures::record_chain(keys, &policy, 0, issued_at)?;
        let Some((secret, record)) = chain.pop() else {
            continue;
        };
        if let Some(s) = sample.as_deref_mut() {
            s.offer(secret);
        }
        let store = store.clone();
        set.spawn(async move { adapter::put(store.as_ref(), record).await });
        while set.len() >= 64 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
        if i.is_multiple_of(1_000_000) {
            eprintln!("  loaded {i} tokens ({:.0} s)", t0.elapsed().as_secs_f64());
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

async fn cleanup(sizes: Vec<usize>, batch: usize, out: &Path, svg: &Path) -> Result<()> {
    let machine = report::machine();
    let mut rows = Vec::new();
    for &n in &sizes {
        let tmp = tempfile::tempdir()?;
        let store = Arc::new(open_store(&tmp.path().join("db"), Durability::Buffered)?);
        let t0 = Instant::now();
        load_roots(&store, n).await?;
        let load_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let purged = adapter::purge_before(store.as_ref(), UnixMillis(u64::MAX), batch).await?;
        let purge_seconds = t1.elapsed().as_secs_f64();
        anyhow::ensure!(purged == n, "purged {purged} of {n} tokens");
        eprintln!(
            "{n:>8} tokens: loaded in {load_seconds:.1} s, purged in {purge_seconds:.2} s ({:.0} tokens/s)",
            n as f64 / purge_seconds
        );
        rows.push(CleanupRow {
            tokens: n,
            load_seconds,
            purge_seconds,
            purged_tokens_s: n as f64 / purge_seconds,
        });
    }
    let chart = Chart {
        title: "Cleanup: time to purge N expired tokens (RocksDB)".into(),
        x_label: "expired tokens (log)".into(),
        y_label: "seconds".into(),
        log_x: true,
        series: vec![Series {
            name: "purge time".into(),
            points: rows
                .iter()
                .map(|r| (r.tokens as f64, r.purge_seconds))
                .collect(),
        }],
    };
    write_svg(svg, &chart)?;
    report::write_json(
        out,
        &CleanupOut {
            tool: "writ-growth cleanup",
            batch,
            machine,
            note: "root tokens loaded through TokenStore::insert (Durability::Buffered) into a fresh store per size, then purged with purge_expired(cutoff = u64::MAX, batch) until none is left",
            rows,
            loadavg_after: report::loadavg(),
        },
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

#[derive(Serialize)]
struct ClaimsRow {
    store: &'static str,
    claims: usize,
    /// The minted record encoded as JSON (a proxy for how the record grows: the store
    /// writes a more compact postcard encoding).
    record_json_bytes: usize,
    probe: Probe,
}

#[derive(Serialize)]
struct ClaimsOut {
    tool: &'static str,
    machine: Machine,
    note: &'static str,
    set_items: usize,
    iters: usize,
    concurrency: usize,
    rows: Vec<ClaimsRow>,
    loadavg_after: String,
}

async fn claims_on<S: TokenStore>(
    name: &'static str,
    store: S,
    sizes: &[usize],
    set_items: usize,
    iters: usize,
    concurrency: usize,
    rows: &mut Vec<ClaimsRow>,
) -> Result<()> {
    let svc = Arc::new(
        adapter::service(Arc::new(store), fixtures::keyring(), fixtures::policy(8)).await?,
    );
    for &n in sizes {
        let mut tokens = Vec::new();
        let mut record_json_bytes = 0;
        for _ in 0..64 {
            let (secret, record) =
                adapter::mint(&svc, fixtures::claims_mint_request(n, set_items)).await?;
            record_json_bytes = serde_json::to_vec(&record)?.len();
            tokens.push(secret);
        }
        let attributes = Arc::new(fixtures::claims_attributes(n, set_items));
        let tokens = Arc::new(tokens);
        let p = probe_with(
            &svc,
            &fixtures::hop(0),
            &tokens,
            &attributes,
            iters,
            concurrency,
        )
        .await?;
        eprintln!(
            "{name:<6} {n:>2} claims: {}  |  {:.0} validates/s with {concurrency} tasks  |  record {record_json_bytes} B as JSON",
            p.latency, p.throughput_ops_s
        );
        rows.push(ClaimsRow {
            store: name,
            claims: n,
            record_json_bytes,
            probe: p,
        });
    }
    Ok(())
}

/// In-process Validate (with an action whose attributes every claim is checked against)
/// against the number of claims on the token, over RocksDB (buffered) and the memory
/// store: does the decision's cost grow with the grant?
async fn claims(
    sizes: Vec<usize>,
    set_items: usize,
    iters: usize,
    concurrency: usize,
    out: &Path,
    svg: &Path,
) -> Result<()> {
    use writ_core::limits::{MAX_ATTRIBUTES, MAX_CLAIMS, MAX_SET_ITEMS};
    anyhow::ensure!(
        sizes
            .iter()
            .all(|n| (1..=MAX_CLAIMS.min(MAX_ATTRIBUTES)).contains(n)),
        "claims per token must be within 1..={MAX_CLAIMS}"
    );
    anyhow::ensure!(
        (1..=MAX_SET_ITEMS).contains(&set_items),
        "--set-items must be within 1..={MAX_SET_ITEMS}"
    );
    let machine = report::machine();
    let tmp = tempfile::tempdir()?;
    let rocks = open_store(&tmp.path().join("db"), Durability::Buffered)?;
    let mut rows = Vec::new();
    claims_on(
        "rocks",
        rocks,
        &sizes,
        set_items,
        iters,
        concurrency,
        &mut rows,
    )
    .await?;
    claims_on(
        "memory",
        MemoryStore::new(),
        &sizes,
        set_items,
        iters,
        concurrency,
        &mut rows,
    )
    .await?;
    let points = |store: &str, f: fn(&Probe) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.store == store)
            .map(|r| (r.claims as f64, f(&r.probe)))
            .collect()
    };
    let chart = probe_chart(
        "In-process Validate vs claims on the token (sequential)",
        "claims, each checked (log)",
        points,
    );
    write_svg(svg, &chart)?;
    report::write_json(
        out,
        &ClaimsOut {
            tool: "writ-growth claims",
            machine,
            note: "64 root tokens per size minted through the service, each with N claims cycling max, min, allow-set, deny-set (set_items members each), prefix, exact; Validate as agent-0 with scope payments:charge and one permitted attribute per claim (audit.validations = all)",
            set_items,
            iters,
            concurrency,
            rows,
            loadavg_after: report::loadavg(),
        },
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

#[derive(Serialize)]
struct FanoutRow {
    store: &'static str,
    mode: &'static str,
    /// The Downscopes k_from..=k_to of each transaction (the k-th finds k tokens in the
    /// transaction: the root and k - 1 descendants).
    k_from: usize,
    k_to: usize,
    /// Most children the parent already had at one of these Downscopes.
    max_existing_siblings: usize,
    downscopes: u64,
    latency: Latency,
}

#[derive(Serialize)]
struct FanoutOut {
    tool: &'static str,
    machine: Machine,
    note: &'static str,
    reps: usize,
    spread_parents: usize,
    rows: Vec<FanoutRow>,
    loadavg_after: String,
}

const FANOUT_MODES: [&str; 2] = ["siblings", "spread"];

async fn fanout_on<S: TokenStore>(
    name: &'static str,
    store: S,
    bounds: &[usize],
    reps: usize,
    spread_parents: usize,
    rows: &mut Vec<FanoutRow>,
) -> Result<()> {
    let svc = adapter::service(Arc::new(store), fixtures::keyring(), fixtures::policy(8)).await?;
    let max = bounds.last().copied().unwrap_or(0);
    let (holder0, holder1) = (fixtures::hop(0), fixtures::hop(1));
    for mode in FANOUT_MODES {
        let mut hists: Vec<_> = bounds.iter().map(|_| report::histogram()).collect();
        let mut max_siblings = vec![0usize; bounds.len()];
        for _ in 0..reps {
            let (root, _) = adapter::mint(&svc, fixtures::mint_request(2)).await?;
            // Spread mode: the root's children, and how many children each has.
            let mut parents: Vec<(TokenSecret, usize)> = Vec::new();
            let mut root_children = 0usize;
            for k in 1..=max {
                let b = bounds
                    .iter()
                    .position(|&u| k <= u)
                    .unwrap_or(bounds.len() - 1);
                let under_root = mode == "siblings" || parents.len() < spread_parents;
                let (siblings, t0, result) = if under_root {
                    let t0 = Instant::now();
                    let r = adapter::downscope(
                        &svc,
                        &holder0,
                        root.expose(),
                        fixtures::child_request(1, 2),
                    )
                    .await;
                    (root_children, t0, r)
                } else {
                    let i = (k - spread_parents - 1) % spread_parents;
                    let t0 = Instant::now();
                    let r = adapter::downscope(
                        &svc,
                        &holder1,
                        parents[i].0.expose(),
                        fixtures::child_request(2, 2),
                    )
                    .await;
                    let before = parents[i].1;
                    parents[i].1 += 1;
                    (before, t0, r)
                };
                let ns = nanos(t0);
                let (child, _) = result.with_context(|| format!("{mode} Downscope {k}"))?;
                report::record(&mut hists[b], ns);
                max_siblings[b] = max_siblings[b].max(siblings);
                if under_root {
                    root_children += 1;
                    if mode == "spread" {
                        parents.push((child, 0));
                    }
                }
            }
        }
        let mut from = 1;
        for (i, &to) in bounds.iter().enumerate() {
            let h = &hists[i];
            if !h.is_empty() {
                let latency = Latency::of(h);
                eprintln!(
                    "{name:<13} {mode:<8} k {from:>4}..={to:<4}: {latency}  (parent had up to {} children)",
                    max_siblings[i]
                );
                rows.push(FanoutRow {
                    store: name,
                    mode,
                    k_from: from,
                    k_to: to,
                    max_existing_siblings: max_siblings[i],
                    downscopes: h.len(),
                    latency,
                });
            }
            from = to + 1;
        }
    }
    Ok(())
}

/// In-process Downscope latency against the number of tokens already derived in the
/// transaction. Two ways to grow a transaction to the same size: `siblings` (every
/// child under the root, so fan-out = transaction size - 1) and `spread` (children
/// spread over `spread_parents` parents, so fan-out stays small). If both modes grow
/// alike, Downscope's cost follows the transaction's size, not the parent's fan-out.
async fn fanout(
    bounds: Vec<usize>,
    reps: usize,
    spread_parents: usize,
    sync: bool,
    out: &Path,
    svg: &Path,
) -> Result<()> {
    use writ_core::limits::MAX_TOKENS_PER_TXN;
    anyhow::ensure!(
        !bounds.is_empty() && bounds.windows(2).all(|w| w[0] < w[1]) && bounds[0] >= 1,
        "--fanouts must be ascending and at least 1"
    );
    let max = bounds[bounds.len() - 1];
    anyhow::ensure!(
        max <= adapter::MAX_CHILDREN as usize && max < MAX_TOKENS_PER_TXN,
        "the largest fan-out must be at most {} (the in-process fan-out ceiling)",
        adapter::MAX_CHILDREN
    );
    anyhow::ensure!(spread_parents >= 1, "--spread-parents must be at least 1");
    let machine = report::machine();
    let mut rows = Vec::new();
    let mut durabilities = vec![("rocks-buffered", Durability::Buffered)];
    if sync {
        durabilities.insert(0, ("rocks-sync", Durability::Sync));
    }
    for (name, durability) in durabilities {
        let tmp = tempfile::tempdir()?;
        let rocks = open_store(&tmp.path().join("db"), durability)?;
        fanout_on(name, rocks, &bounds, reps, spread_parents, &mut rows).await?;
    }
    fanout_on(
        "memory",
        MemoryStore::new(),
        &bounds,
        reps,
        spread_parents,
        &mut rows,
    )
    .await?;
    // The chart leaves out the fsync'd store: its flat fsync cost would squash the rest.
    let mut series = Vec::new();
    for store in ["rocks-buffered", "memory"] {
        for mode in FANOUT_MODES {
            series.push(Series {
                name: format!("{store}, {mode}, mean"),
                points: rows
                    .iter()
                    .filter(|r| r.store == store && r.mode == mode)
                    .map(|r| (r.k_to as f64, r.latency.mean_us))
                    .collect(),
            });
        }
    }
    let chart = Chart {
        title: "In-process Downscope vs tokens already in the transaction".into(),
        x_label: "k-th Downscope of the transaction (bucket upper bound, log)".into(),
        y_label: "latency (µs)".into(),
        log_x: true,
        series,
    };
    write_svg(svg, &chart)?;
    report::write_json(
        out,
        &FanoutOut {
            tool: "writ-growth fanout",
            machine,
            note: "per transaction: one root (mint_request(2)), then Downscopes one at a time. siblings: every child derived from the root by agent-0; spread: the first spread_parents children from the root, the rest derived round-robin from those children by agent-1. Latency of the k-th Downscope, bucketed by k",
            reps,
            spread_parents,
            rows,
            loadavg_after: report::loadavg(),
        },
    )?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

async fn hot_tier_probe(tokens: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RocksStore::open(
        &dir.path().join("db"),
        StoreOptions {
            durability: Durability::Buffered,
            hot_tier_mib: 16 * 1024,
            ..StoreOptions::default()
        },
    )?);
    let (keys, policy) = (fixtures::keyring(), fixtures::policy(8));
    let issued_at = now();
    let mut ids = Vec::with_capacity(tokens);
    let mut set = JoinSet::new();
    for _ in 0..tokens {
        let Some((_, record)) = fixtures::record_chain(&keys, &policy, 0, issued_at)?.pop() else {
            continue;
        };
        ids.push(record.token_id);
        let store = store.clone();
        set.spawn(async move { adapter::put(store.as_ref(), record).await });
        while set.len() >= 64 {
            set.join_next().await.context("a put")???;
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let before = rss_bytes();
    for id in &ids {
        store.get_with_state(*id).await?.context("a stored token")?;
    }
    let after = rss_bytes();
    let stats = store.hot_tier_stats();
    let out = serde_json::json!({
        "tokens": tokens,
        "rss_before_reads_bytes": before,
        "rss_after_reads_bytes": after,
        "rss_per_cached_token_bytes": (after.saturating_sub(before)) as f64 / stats.entries.max(1) as f64,
        "tier_entries": stats.entries,
        "tier_estimate_bytes": stats.bytes,
        "tier_estimate_per_token_bytes": stats.bytes as f64 / stats.entries.max(1) as f64,
    });
    println!("{out}");
    Ok(())
}

/// Resident set size of this process (VmRSS of /proc/self/status), in bytes.
fn rss_bytes() -> u64 {
    rss_of("/proc/self/status")
}

/// VmRSS of a /proc/PID/status file, in bytes (0 if unreadable).
fn rss_of(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A RocksDB directory's bytes: SST files, WAL (`*.log`) files, and everything.
#[derive(Clone, Copy, Debug, Serialize)]
struct Disk {
    sst_bytes: u64,
    wal_bytes: u64,
    total_bytes: u64,
}

fn disk(db: &Path) -> Disk {
    let (mut sst, mut wal) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(db) {
        for e in entries.flatten() {
            let len = e.metadata().map_or(0, |m| m.len());
            match e.path().extension().and_then(|x| x.to_str()) {
                Some("sst") => sst += len,
                Some("log") => wal += len,
                _ => {}
            }
        }
    }
    Disk {
        sst_bytes: sst,
        wal_bytes: wal,
        total_bytes: report::dir_bytes(db),
    }
}

/// Reopening the store in-process as `writ_server::start` does.
#[derive(Serialize)]
struct Reopen {
    /// `RocksStore::open` with the server's default StoreOptions (WAL replay included).
    open_seconds: f64,
    /// Building the service: `Audit::start` (reads the last event id) and `Service::new`.
    service_seconds: f64,
    /// The first Validate after the reopen, of a token not read since.
    first_validate_us: f64,
    rss_bytes: u64,
}

#[derive(Serialize)]
struct FootprintRow {
    tokens: usize,
    load_seconds: f64,
    load_tokens_s: f64,
    rss_before_load_bytes: u64,
    rss_after_load_bytes: u64,
    rss_after_close_bytes: u64,
    disk_after_load: Disk,
    disk_bytes_per_token: f64,
    /// From spawning a process that runs `writ_server::start` (default configuration)
    /// on the data directory until it listens.
    server_listen_seconds: f64,
    /// From spawning it until the first Validate over gRPC (a fresh connection) has
    /// answered active.
    server_first_validate_seconds: f64,
    /// Sequential Validates over gRPC right after, on one connection.
    server_warm: Latency,
    /// The server process's RSS after the first Validate.
    server_rss_started_bytes: u64,
    /// The server process's RSS after the warm Validates.
    server_rss_warm_bytes: u64,
    /// The in-process reopen after the server stopped.
    reopen: Reopen,
    /// `cold` distinct tokens, each validated once right after the reopen.
    cold_distinct: Latency,
    /// Then: sequential latency and throughput over the sampled tokens.
    warm: Probe,
    rss_after_warm_bytes: u64,
    compact_seconds: f64,
    disk_after_compaction: Disk,
    compacted_bytes_per_token: f64,
    rss_after_compaction_bytes: u64,
    /// Reopening again, after the compaction (no WAL to replay).
    reopen_compacted: Reopen,
}

#[derive(Serialize)]
struct FootprintOut<'a> {
    tool: &'static str,
    machine: &'a Machine,
    note: &'static str,
    store_options: StoreOptions,
    probe: usize,
    cold: usize,
    rows: &'a [FootprintRow],
    loadavg_after: String,
}

/// Opens the store as the server would and builds the service on it; validates `first`.
async fn reopen(
    db: &Path,
    opts: StoreOptions,
    keys: &KeyRing,
    first: &TokenSecret,
) -> Result<(
    Reopen,
    Arc<RocksStore>,
    Arc<Service<RocksStore>>,
    tokio::task::JoinHandle<()>,
)> {
    let t0 = Instant::now();
    let path = db.to_owned();
    let store =
        Arc::new(tokio::task::spawn_blocking(move || RocksStore::open(&path, opts)).await??);
    let open_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (svc, writer) =
        adapter::service_with_writer(store.clone(), keys.clone(), fixtures::policy(8)).await?;
    let service_seconds = t1.elapsed().as_secs_f64();
    let svc = Arc::new(svc);
    let t2 = Instant::now();
    let ok = adapter::validate(&svc, &fixtures::hop(0), first.expose(), true).await?;
    let first_validate_us = nanos(t2) as f64 / 1000.0;
    anyhow::ensure!(ok, "a stored token did not validate after the reopen");
    Ok((
        Reopen {
            open_seconds,
            service_seconds,
            first_validate_us,
            rss_bytes: rss_bytes(),
        },
        store,
        svc,
        writer,
    ))
}

/// Drops the service, waits for its audit writer, and drops the store (closing it).
async fn close(
    store: Arc<RocksStore>,
    svc: Arc<Service<RocksStore>>,
    writer: tokio::task::JoinHandle<()>,
) -> Result<()> {
    drop(svc);
    writer.await?;
    anyhow::ensure!(
        Arc::strong_count(&store) == 1,
        "the store is still shared after the service stopped"
    );
    drop(store);
    Ok(())
}

async fn footprint_one(
    n: usize,
    probe_n: usize,
    cold_n: usize,
    data_dir: &Path,
) -> Result<FootprintRow> {
    use writ_server::secrets;
    secrets::ensure_private_dir(data_dir)?;
    // The server's own key ring, so the tokens loaded here validate through `start`.
    let keys = secrets::load_or_create_key_ring(data_dir)?;
    let db = data_dir.join(writ_server::DB_DIR);
    let defaults = writ_server::Config::default();
    let server_opts = StoreOptions {
        durability: defaults.storage.durability,
        block_cache_mib: defaults.storage.block_cache_mib,
        hot_tier_mib: defaults.storage.hot_tier_mib,
    };
    let rss_before_load_bytes = rss_bytes();
    let store = Arc::new(RocksStore::open(
        &db,
        StoreOptions {
            durability: Durability::Buffered,
            ..server_opts
        },
    )?);
    let mut reservoir = Reservoir {
        cap: (cold_n + 2).max(1000),
        seen: 0,
        seed: 0x0F0F_1234_5678_9ABC,
        kept: Vec::new(),
    };
    let t0 = Instant::now();
    load_roots_with(&store, n, &keys, Some(&mut reservoir)).await?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let rss_after_load_bytes = rss_bytes();
    let disk_after_load = disk(&db);
    anyhow::ensure!(
        Arc::strong_count(&store) == 1,
        "the store is still shared after loading"
    );
    drop(store);
    let rss_after_close_bytes = rss_bytes();
    let sample = reservoir.kept;
    anyhow::ensure!(
        sample.len() >= cold_n + 2,
        "load more tokens than --cold + 2"
    );
    eprintln!(
        "{n:>9} tokens: loaded in {load_seconds:.1} s ({:.0} tokens/s), {:.0} B/token on disk (sst {} + wal {}), RSS {} -> {} MiB",
        n as f64 / load_seconds,
        disk_after_load.total_bytes as f64 / n as f64,
        disk_after_load.sst_bytes,
        disk_after_load.wal_bytes,
        rss_before_load_bytes >> 20,
        rss_after_load_bytes >> 20
    );

    // The server as `writ serve` starts it (default configuration) on this data dir, in
    // a process of its own: from spawning it until it listens, and until the first
    // Validate over gRPC (a fresh connection) answers.
    let t0 = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve-data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning the server process")?;
    let status = format!("/proc/{}/status", child.id());
    let stdout = child.stdout.take().context("the server's stdout")?;
    let addr = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .map(|_| line.trim().to_string())
    })
    .await??;
    anyhow::ensure!(!addr.is_empty(), "the server process did not start");
    let server_listen_seconds = t0.elapsed().as_secs_f64();
    let mut client = writ_client::WritClient::connect(&format!("http://{addr}"))
        .await?
        .as_caller(&fixtures::hop(0))?;
    let r = client
        .validate(wire::validate_pb(sample[0].expose(), true))
        .await?;
    let server_first_validate_seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(r.active, "the first Validate over gRPC was not active");
    let server_rss_started_bytes = rss_of(&status);
    let mut h = report::histogram();
    let mut seed = 0x5555_AAAA_1234_0001u64;
    for _ in 0..probe_n {
        let t = &sample[pick(&mut seed, sample.len())];
        let t1 = Instant::now();
        let r = client.validate(wire::validate_pb(t.expose(), true)).await?;
        report::record(&mut h, nanos(t1));
        anyhow::ensure!(r.active, "a stored token did not validate over gRPC");
    }
    let server_warm = Latency::of(&h);
    let server_rss_warm_bytes = rss_of(&status);
    drop(client);
    drop(child.stdin.take());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await??;
    anyhow::ensure!(exit.success(), "the server process ended with {exit}");
    eprintln!(
        "{n:>9} tokens: server process listening after {:.3} s, first Validate answered after {:.3} s, RSS {} MiB (after {probe_n} Validates {} MiB); warm gRPC Validate {server_warm}",
        server_listen_seconds,
        server_first_validate_seconds,
        server_rss_started_bytes >> 20,
        server_rss_warm_bytes >> 20
    );

    // In-process reopen, then cold and warm Validates.
    let (reopened, store, svc, writer) = reopen(&db, server_opts, &keys, &sample[1]).await?;
    let mut h = report::histogram();
    for t in &sample[2..2 + cold_n] {
        let t1 = Instant::now();
        let ok = adapter::validate(&svc, &fixtures::hop(0), t.expose(), true).await?;
        report::record(&mut h, nanos(t1));
        anyhow::ensure!(ok, "a stored token did not validate");
    }
    let cold_distinct = Latency::of(&h);
    let sample = Arc::new(sample);
    let warm = probe(&svc, &fixtures::hop(0), &sample, probe_n, 8).await?;
    let rss_after_warm_bytes = rss_bytes();
    eprintln!(
        "{n:>9} tokens: reopen {:.3} s + service {:.3} s; first Validate {:.0} µs; {cold_n} cold: {cold_distinct}; warm: {} | {:.0}/s",
        reopened.open_seconds,
        reopened.service_seconds,
        reopened.first_validate_us,
        warm.latency,
        warm.throughput_ops_s
    );
    let t0 = Instant::now();
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || s2.compact_all()).await??;
    let compact_seconds = t0.elapsed().as_secs_f64();
    let disk_after_compaction = disk(&db);
    let rss_after_compaction_bytes = rss_bytes();
    close(store, svc, writer).await?;
    let (reopen_compacted, store, svc, writer) =
        reopen(&db, server_opts, &keys, &sample[sample.len() - 1]).await?;
    close(store, svc, writer).await?;
    eprintln!(
        "{n:>9} tokens: compaction {compact_seconds:.1} s -> {:.0} B/token; reopen after it {:.3} s + {:.3} s, first Validate {:.0} µs; RSS {} MiB",
        disk_after_compaction.total_bytes as f64 / n as f64,
        reopen_compacted.open_seconds,
        reopen_compacted.service_seconds,
        reopen_compacted.first_validate_us,
        rss_after_compaction_bytes >> 20
    );
    Ok(FootprintRow {
        tokens: n,
        load_seconds,
        load_tokens_s: n as f64 / load_seconds,
        rss_before_load_bytes,
        rss_after_load_bytes,
        rss_after_close_bytes,
        disk_after_load,
        disk_bytes_per_token: disk_after_load.total_bytes as f64 / n as f64,
        server_listen_seconds,
        server_first_validate_seconds,
        server_warm,
        server_rss_started_bytes,
        server_rss_warm_bytes,
        reopen: reopened,
        cold_distinct,
        warm,
        rss_after_warm_bytes,
        compact_seconds,
        disk_after_compaction,
        compacted_bytes_per_token: disk_after_compaction.total_bytes as f64 / n as f64,
        rss_after_compaction_bytes,
        reopen_compacted,
    })
}

/// Memory, disk and startup against live tokens: what a server holding N tokens costs
/// to keep and to restart. For each size, a fresh data directory: the server's key ring
/// is created in it, that many root tokens are loaded into its store
/// (Durability::Buffered, 64 inserts in flight), and the store is closed (without a
/// flush, as a stopped server leaves it). Then a process of its own (`serve-data-dir`:
/// `writ_server::start` with the default configuration) is timed from spawn until it
/// listens and until a first Validate over gRPC answers, and its RSS read; this startup
/// includes replaying the WAL. After it stops, the store is reopened in-process (open +
/// `Audit::start`), cold and warm Validates are timed, the store is compacted and
/// reopened once more. The measuring process's own RSS figures include the loader's
/// memory and what its allocator kept after freeing.
async fn footprint(
    sizes: Vec<usize>,
    probe_n: usize,
    cold_n: usize,
    dir: Option<PathBuf>,
    out: &Path,
    svg: &Path,
) -> Result<()> {
    let machine = report::machine();
    let tmp = tempfile::tempdir()?;
    let base = dir.unwrap_or_else(|| tmp.path().to_owned());
    let defaults = writ_server::Config::default();
    let store_options = StoreOptions {
        durability: defaults.storage.durability,
        block_cache_mib: defaults.storage.block_cache_mib,
        hot_tier_mib: defaults.storage.hot_tier_mib,
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        let data_dir = base.join(format!("footprint-{n}"));
        anyhow::ensure!(
            !data_dir.exists(),
            "{} exists already; footprint needs a fresh data directory",
            data_dir.display()
        );
        let row = footprint_one(n, probe_n, cold_n, &data_dir).await;
        let _ = std::fs::remove_dir_all(&data_dir);
        rows.push(row?);
        let doc = FootprintOut {
            tool: "writ-growth footprint",
            machine: &machine,
            note: "the server runs in a process of its own (server_* fields: its startup, first Validate and RSS); the other RSS figures are this measuring process's, which loads, reopens and validates in-process, so they include the loader's memory and memory the allocator kept after freeing; WAL replay after the load (the store is closed without a flush, as a stopped server is) falls to the server process's startup; disk is the db directory (SST + WAL + manifest and logs); the store is loaded with Durability::Buffered and reopened with the server's default StoreOptions",
            store_options,
            probe: probe_n,
            cold: cold_n,
            rows: &rows,
            loadavg_after: report::loadavg(),
        };
        write_footprint(out, svg, &doc)?;
    }
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

/// The server process of `footprint`: serves `data_dir` until stdin closes.
async fn serve_data_dir(data_dir: PathBuf) -> Result<()> {
    use std::io::{Read, Write};
    let mut config = writ_server::Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir,
        ..writ_server::Config::default()
    };
    // Several servers may run at once: no fixed ops port.
    config.observability.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Plaintext with asserted identities on loopback, like the other benchmarks.
    config.tls.enabled = false;
    config.auth.asserted_identities = true;
    // One benchmark client exceeds any per-caller limit by design.
    config.limits.enabled = false;
    let running = writ_server::start(config).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", running.local_addr)?;
    out.flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await??;
    running.shutdown().await?;
    Ok(())
}

fn write_footprint(out: &Path, svg: &Path, doc: &FootprintOut<'_>) -> Result<()> {
    let line = |name: &str, f: fn(&FootprintRow) -> f64| Series {
        name: name.into(),
        points: doc.rows.iter().map(|r| (r.tokens as f64, f(r))).collect(),
    };
    let chart = Chart {
        title: "Footprint vs live tokens (RocksDB)".into(),
        x_label: "live tokens (log)".into(),
        y_label: "MiB, or startup in ms".into(),
        log_x: true,
        series: vec![
            line("server RSS after warm-up (MiB)", |r| {
                r.server_rss_warm_bytes as f64 / 1048576.0
            }),
            line("disk after compaction (MiB)", |r| {
                r.disk_after_compaction.total_bytes as f64 / 1048576.0
            }),
            line("start → first gRPC Validate (ms)", |r| {
                r.server_first_validate_seconds * 1000.0
            }),
            line("reopen after compaction (ms)", |r| {
                (r.reopen_compacted.open_seconds + r.reopen_compacted.service_seconds) * 1000.0
            }),
        ],
    };
    write_svg(svg, &chart)?;
    report::write_json(out, doc)
}

fn write_svg(path: &Path, chart: &Chart) -> Result<()> {
    if let Some(d) = path.parent()
        && !d.as_os_str().is_empty()
    {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, chart.render()).with_context(|| format!("writing {}", path.display()))
}

fn series_name(label: &str) -> String {
    match label.rsplit_once("-c") {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head.into(),
        _ => label.into(),
    }
}

fn plot_load(title: &str, svg: &Path, files: &[PathBuf]) -> Result<()> {
    let mut series: Vec<Series> = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        // One line per label with its concurrency suffix ("-c64") taken off.
        let label = v["args"]["label"]
            .as_str()
            .map(series_name)
            .unwrap_or_else(|| v["args"]["mix"].as_str().unwrap_or("?").to_string());
        let x = v["args"]["concurrency"].as_f64().unwrap_or(0.0);
        let y = v["throughput_ops_s"].as_f64().unwrap_or(0.0);
        match series.iter_mut().find(|s| s.name == label) {
            Some(s) => s.points.push((x, y)),
            None => series.push(Series {
                name: label,
                points: vec![(x, y)],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let chart = Chart {
        title: title.into(),
        x_label: "concurrency (requests in flight, log)".into(),
        y_label: "throughput (requests/s)".into(),
        log_x: true,
        series,
    };
    write_svg(svg, &chart)?;
    eprintln!("wrote {}", svg.display());
    Ok(())
}

#[path = "writ-growth/redis_footprint.rs"]
mod redis_footprint;
