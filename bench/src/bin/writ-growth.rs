//! `writ-growth`: how Writ's costs grow (issue 4, figures 3 and 4).
//!
//! - `depth`: in-process Validate (the `Service`, no network) of a chain's leaf against
//!   chain depth (1, 4, 16, 64: the policy's max_depth is raised to 64), over RocksDB and
//!   over the in-memory store, so the store's share is visible.
//! - `tokens`: in-process Validate against the number of stored tokens (loaded straight
//!   into a RocksDB store with `Durability::Buffered`), with disk bytes per token at
//!   each size, then the time cleanup takes to purge them all.
//! - `plot-load`: draws throughput against concurrency from `writ-load` JSON results.
//!
//! Each subcommand writes a JSON result and an SVG chart.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use writ_bench::report::{self, Latency, Machine};
use writ_bench::svg::{Chart, Series};
use writ_bench::{adapter, fixtures};
use writ_core::{TokenSecret, UnixMillis};
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
    // Latency: one at a time.
    let mut h = report::histogram();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..iters {
        let t = &tokens[pick(&mut seed, tokens.len())];
        let t0 = Instant::now();
        let ok = adapter::validate(svc, audience, t.expose(), true).await?;
        report::record(
            &mut h,
            u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        anyhow::ensure!(ok, "a stored token did not validate");
    }
    // Throughput: `concurrency` tasks share the same number of validates.
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for c in 0..concurrency {
        let (svc, tokens, audience) = (svc.clone(), tokens.clone(), audience.to_string());
        let n = iters / concurrency;
        set.spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            for _ in 0..n {
                let t = &tokens[pick(&mut seed, tokens.len())];
                adapter::validate(&svc, &audience, t.expose(), true).await?;
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
    let rocks = RocksStore::open(
        &tmp.path().join("db"),
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )?;
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
    let series = |store: &str, f: fn(&Probe) -> f64| Series {
        name: store.to_string(),
        points: rows
            .iter()
            .filter(|r| r.store == store)
            .map(|r| (f64::from(r.depth), f(&r.probe)))
            .collect(),
    };
    let chart = Chart {
        title: "In-process Validate vs chain depth (sequential)".into(),
        x_label: "chain depth (log)".into(),
        y_label: "latency (µs)".into(),
        log_x: true,
        series: vec![
            Series {
                name: "RocksDB, mean".into(),
                ..series("rocks", |p| p.latency.mean_us)
            },
            Series {
                name: "RocksDB, p99".into(),
                ..series("rocks", |p| p.latency.p99_us)
            },
            Series {
                name: "memory store, mean".into(),
                ..series("memory", |p| p.latency.mean_us)
            },
        ],
    };
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
    let store = Arc::new(RocksStore::open(
        &path,
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )?);
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
        if warm {
            // Validate every sampled token once first: the probe then measures a working
            // set that is in the block cache, not the first read after a flush.
            for t in sample.iter() {
                adapter::validate(&svc, &fixtures::hop(0), t.expose(), true).await?;
            }
        }
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
    let keys = fixtures::keyring();
    let policy = fixtures::policy(8);
    let issued_at = now();
    let mut set = JoinSet::new();
    for _ in 0..n {
        let mut chain = fixtures::record_chain(&keys, &policy, 0, issued_at)?;
        let Some((_, record)) = chain.pop() else {
            continue;
        };
        let store = store.clone();
        set.spawn(async move { adapter::put(store.as_ref(), record).await });
        while set.len() >= 64 {
            if let Some(r) = set.join_next().await {
                r??;
            }
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
        let store = Arc::new(RocksStore::open(
            &tmp.path().join("db"),
            StoreOptions {
                durability: Durability::Buffered,
                ..StoreOptions::default()
            },
        )?);
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
