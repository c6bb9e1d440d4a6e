//! `writ-load`: drives a Writ server over real gRPC at a chosen concurrency and reports
//! throughput and latency (HdrHistogram: p50/p99/p99.9), with a progress line each
//! second and a JSON result file for `BENCHMARKS.md`.
//!
//! It starts Writ in-process (its own runtime on its own thread; flavour and workers are
//! options) on an ephemeral port with a temporary data directory, or targets
//! `--server ADDR` (over plaintext gRPC: a host that is not loopback only with
//! `--insecure-plaintext`). The `empty` mix drives the empty-RPC baseline server
//! instead, the floor issue 4 measures Validate against.
//!
//! Mixes:
//! - `validate`: Validate (with the standard action check unless `--no-action`) of
//!   pre-minted tokens at chain depth `--depth`, picked at random from `--tokens` chains.
//! - `chain`: each iteration mints a root and downscopes it `--depth` times; Mint and
//!   Downscope latencies are reported apart.
//! - `mint`: Mint only.
//! - `revoke`: `validate` while one extra task revokes whole chains (by root token id, as
//!   an operator) at `--revoke-rate` per second.
//! - `empty`: the empty unary RPC.
//!
//! With `--backend redis --redis-nodes A,B,C --nodes N` it starts N in-process Writ
//! servers sharing one Redis Cluster (each on its own port and runtime, all with the
//! first one's key ring and credentials, as nodes of one trust domain are deployed) and
//! spreads the connections over them round-robin; the token pool is minted through the
//! first node, so Validates on the others read tokens they did not mint.
//!
//! With `--rate R` the load is open-loop (R operations per second in total, spread over
//! the workers) and latency is measured from each operation's scheduled start, so a
//! stalled server cannot hide its queueing (no coordinated omission).

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use writ_bench::baseline::pb::{Empty, baseline_client::BaselineClient};
use writ_bench::report::{self, Latency, Machine};
use writ_bench::serve::{self, Flavor, RuntimeSpec, ServerHandle};
use writ_bench::{fixtures, wire};
use writ_client::WritClient;
use writ_server::config::{Backend, ValidationEvents};
use writ_store::Durability;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Mix {
    Validate,
    Chain,
    /// The whole chain a user sees: a Mint, then at each hop a Validate with the action
    /// check by the token's audience and (but at the last) a Downscope to the next hop;
    /// `--depth 3` is four hops. Counted per journey (`per_op.journey`).
    Journey,
    Mint,
    Revoke,
    Empty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum AuditValidations {
    All,
    Actions,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum BackendArg {
    Rocksdb,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum DurabilityArg {
    Sync,
    Buffered,
}

/// Load generator for Writ (issue 4).
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "writ-load", version)]
struct Args {
    /// What to send.
    #[arg(long, value_enum, default_value = "validate")]
    mix: Mix,
    /// Target this server (`http://host:port`) instead of starting one in-process. A
    /// host that is not loopback needs --insecure-plaintext.
    #[arg(long)]
    server: Option<String>,
    /// With --server: connect over plaintext gRPC even when its host is not loopback
    /// (`WritClient::connect_insecure`). Tokens and the minter and operator credentials
    /// then cross the network in the clear (Writ has no TLS yet); without this flag
    /// such a server is refused.
    #[arg(long, requires = "server")]
    insecure_plaintext: bool,
    /// With --server: the minter credential file (Mint, and minting the token pool).
    #[arg(long)]
    minter_credential_file: Option<PathBuf>,
    /// With --server and --mix revoke: the operator credential file.
    #[arg(long)]
    operator_credential_file: Option<PathBuf>,
    /// Requests in flight (one task each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the tasks share (round-robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open-loop total rate (operations per second); closed-loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Open-loop at this fraction of the throughput in a previous result file (say,
    /// half of the peak: `--rate-from peak.json --rate-fraction 0.5`).
    #[arg(long, requires = "rate_fraction", conflicts_with = "rate")]
    rate_from: Option<PathBuf>,
    /// See --rate-from.
    #[arg(long, requires = "rate_from")]
    rate_fraction: Option<f64>,
    /// Chain depth: of the validated tokens (0 = roots), or of each chain the `chain` mix
    /// builds.
    #[arg(long, default_value_t = 1)]
    depth: u32,
    /// Pre-minted chains to validate (validate and revoke mixes).
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Validate without an action check (plain introspection).
    #[arg(long)]
    no_action: bool,
    /// Validate asks for the verdict only (`decision_only`), without the token's context.
    #[arg(long)]
    decision_only: bool,
    /// Start the server (Writ, or the floor with `--mix empty`), mint the token pool,
    /// write one gRPC-framed request of the mix to this file for an external load
    /// generator (h2load: see BENCHMARKS.md), print the URL and path, and serve until
    /// interrupted. No load is generated.
    #[arg(long, value_name = "BODY_FILE")]
    serve_only: Option<PathBuf>,
    /// Revocations per second in the revoke mix.
    #[arg(long, default_value_t = 50.0)]
    revoke_rate: f64,
    /// In-process server: runtime flavour.
    #[arg(long, value_enum, default_value = "multi")]
    server_runtime: Flavor,
    /// In-process server: worker threads of a multi-thread runtime (default: the cores).
    #[arg(long)]
    server_workers: Option<usize>,
    /// In-process server: which validations the audit trail records
    /// (`audit.validations`: all, actions or none).
    #[arg(long, value_enum, default_value = "all")]
    audit_validations: AuditValidations,
    /// Worker threads of the load generator's own (multi-thread) runtime.
    #[arg(long, default_value_t = 2)]
    client_workers: usize,
    /// In-process server: storage.durability (RocksDB).
    #[arg(long, value_enum, default_value = "sync")]
    durability: DurabilityArg,
    /// Also time the EdDSA JWT baseline (an offline verify-and-check, `writ_bench::jwt`)
    /// on this process's main thread, 20,000 times just before the load and again just
    /// after it, and report both medians beside the load's figures.
    #[arg(long)]
    jwt_baseline: bool,
    /// In-process server: storage.hot_tier_mib (RocksDB; 0 turns the hot tier off).
    /// The server's default when not given.
    #[arg(long)]
    hot_tier_mib: Option<u64>,
    /// In-process servers: storage.backend.
    #[arg(long, value_enum, default_value = "rocksdb")]
    backend: BackendArg,
    /// With --backend redis: the cluster's seed nodes (`redis://host:port`, comma
    /// separated; `scripts/redis-cluster start` prints them).
    #[arg(long, value_delimiter = ',', env = "WRIT_BENCH_REDIS_NODES")]
    redis_nodes: Vec<String>,
    /// With --backend redis: Writ nodes started in-process on the one cluster, the
    /// connections spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With --backend redis: storage.redis.prefix (default: one of this run's own, so
    /// runs sharing a cluster never see each other's keys).
    #[arg(long)]
    redis_prefix: Option<String>,
    /// With --backend redis: storage.redis.record_cache_entries (default: the server's).
    #[arg(long)]
    record_cache: Option<usize>,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Free text stored in the result (say, "under load: other engineer compiling").
    #[arg(long)]
    label: Option<String>,
}

#[derive(Default)]
struct Shared {
    recording: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
    inactive: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

type Hists = BTreeMap<&'static str, Histogram<u64>>;

fn rec(hists: &mut Hists, shared: &Shared, kind: &'static str, since: Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared.done.fetch_add(1, Ordering::Relaxed);
    if shared.recording.load(Ordering::Relaxed) {
        report::record(hists.entry(kind).or_insert_with(report::histogram), ns);
    }
}

/// Mints a root for a chain of `depth`, recording the Mint (from `t0`) or its error.
async fn mint_root(
    minter: &mut WritClient,
    depth: u32,
    hists: &mut Hists,
    shared: &Shared,
    t0: Instant,
) -> Option<String> {
    match minter.mint(wire::mint_pb(depth)).await {
        Ok(r) => {
            rec(hists, shared, "mint", t0);
            Some(r.token)
        }
        Err(e) => {
            shared.error(e);
            None
        }
    }
}

/// One pre-minted chain: the root's public id (what an operator revokes) and the leaf's
/// secret (what is validated).
#[derive(Clone, Debug)]
struct Chain {
    root_id: String,
    leaf: String,
}

/// What one worker sends.
#[derive(Clone)]
enum Work {
    Validate {
        client: WritClient,
        pool: Arc<Vec<Chain>>,
        action: bool,
        decision_only: bool,
        must_be_active: bool,
    },
    Chain {
        minter: WritClient,
        hops: Vec<WritClient>,
        depth: u32,
    },
    Journey {
        minter: WritClient,
        /// One client per hop, `0..=depth`.
        hops: Vec<WritClient>,
        depth: u32,
    },
    Mint {
        minter: WritClient,
    },
    Empty {
        client: BaselineClient<Channel>,
    },
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

async fn worker(id: usize, mut work: Work, shared: Arc<Shared>, period: Option<Duration>) -> Hists {
    let mut hists = Hists::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let begin = Instant::now() + period.map_or(Duration::ZERO, |p| p.mul_f64(id as f64 / 64.0));
    let mut n: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let t0 = match period {
            Some(p) => {
                let at = begin + p * n;
                n = n.wrapping_add(1);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        match &mut work {
            Work::Validate {
                client,
                pool,
                action,
                decision_only,
                must_be_active,
            } => {
                let i = (xorshift(&mut seed) % pool.len() as u64) as usize;
                let mut req = wire::validate_pb(&pool[i].leaf, *action);
                req.decision_only = *decision_only;
                match client.validate(req).await {
                    Ok(r) => {
                        if !r.active {
                            shared.inactive.fetch_add(1, Ordering::Relaxed);
                            if *must_be_active {
                                shared.error(format!(
                                    "token inactive (reason {})",
                                    r.inactive_reason
                                ));
                                continue;
                            }
                        } else if r.decision.as_ref().is_some_and(|d| !d.allowed) {
                            shared.error("action denied");
                            continue;
                        }
                        rec(&mut hists, &shared, "validate", t0);
                    }
                    Err(e) => shared.error(e),
                }
            }
            Work::Chain {
                minter,
                hops,
                depth,
            } => {
                let Some(mut parent) = mint_root(minter, *depth, &mut hists, &shared, t0).await
                else {
                    continue;
                };
                for level in 1..=*depth {
                    let t = Instant::now();
                    let req = wire::downscope_pb(&parent, level, *depth);
                    match hops[level as usize - 1].downscope(req).await {
                        Ok(r) => {
                            rec(&mut hists, &shared, "downscope", t);
                            parent = r.token;
                        }
                        Err(e) => {
                            shared.error(e);
                            break;
                        }
                    }
                }
            }
            Work::Journey {
                minter,
                hops,
                depth,
            } => {
                let Some(mut token) = mint_root(minter, *depth, &mut hists, &shared, t0).await
                else {
                    continue;
                };
                let mut whole = true;
                for level in 0..=*depth {
                    let hop = &mut hops[level as usize];
                    let t = Instant::now();
                    match hop.validate(wire::validate_pb(&token, true)).await {
                        Ok(r) if r.active && r.decision.as_ref().is_some_and(|d| d.allowed) => {
                            rec(&mut hists, &shared, "validate", t);
                        }
                        Ok(r) => {
                            shared.error(format!(
                                "hop {level}: not allowed (active {}, reason {})",
                                r.active, r.inactive_reason
                            ));
                            whole = false;
                            break;
                        }
                        Err(e) => {
                            shared.error(e);
                            whole = false;
                            break;
                        }
                    }
                    if level == *depth {
                        break;
                    }
                    let t = Instant::now();
                    match hop
                        .downscope(wire::downscope_pb(&token, level + 1, *depth))
                        .await
                    {
                        Ok(r) => {
                            rec(&mut hists, &shared, "downscope", t);
                            token = r.token;
                        }
                        Err(e) => {
                            shared.error(e);
                            whole = false;
                            break;
                        }
                    }
                }
                if whole {
                    rec(&mut hists, &shared, "journey", t0);
                }
            }
            Work::Mint { minter } => match minter.mint(wire::mint_pb(0)).await {
                Ok(_) => rec(&mut hists, &shared, "mint", t0),
                Err(e) => shared.error(e),
            },
            Work::Empty { client } => match client.ping(Empty {}).await {
                Ok(_) => rec(&mut hists, &shared, "empty", t0),
                Err(e) => shared.error(e),
            },
        }
    }
    hists
}

/// Revokes whole chains, by root id, at `rate` per second until stopped or the pool is
/// used up.
async fn revoker(
    mut operator: WritClient,
    pool: Arc<Vec<Chain>>,
    rate: f64,
    shared: Arc<Shared>,
) -> Hists {
    let mut hists = Hists::new();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    for chain in pool.iter() {
        tick.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let t0 = Instant::now();
        let req = writ_client::proto::RevokeRequest {
            target: Some(writ_client::proto::revoke_request::Target::TokenId(
                chain.root_id.clone(),
            )),
            reason: "writ-load revoke mix".into(),
        };
        match operator.revoke(req).await {
            Ok(_) => rec(&mut hists, &shared, "revoke", t0),
            Err(e) => shared.error(e),
        }
    }
    hists
}

fn read_credential(path: &PathBuf) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Mints `n` chains of `depth` hops with `parallel` concurrent minters.
async fn mint_pool(
    minter: &WritClient,
    hops: &[WritClient],
    n: usize,
    depth: u32,
) -> Result<Vec<Chain>> {
    let parallel = 16.min(n.max(1));
    let mut tasks = Vec::new();
    for t in 0..parallel {
        let mut minter = minter.clone();
        let mut hops = hops.to_vec();
        let count = n / parallel + usize::from(t < n % parallel);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let root = minter.mint(wire::mint_pb(depth)).await?;
                let root_id = root.info.map(|i| i.token_id).unwrap_or_default();
                let mut leaf = root.token;
                for level in 1..=depth {
                    let req = wire::downscope_pb(&leaf, level, depth);
                    leaf = hops[level as usize - 1].downscope(req).await?.token;
                }
                out.push(Chain { root_id, leaf });
            }
            Ok::<_, writ_client::ClientError>(out)
        }));
    }
    let mut pool = Vec::with_capacity(n);
    for t in tasks {
        pool.extend(t.await??);
    }
    Ok(pool)
}

#[derive(Serialize)]
struct OpSummary {
    count: u64,
    throughput_ops_s: f64,
    latency: Latency,
}

#[derive(Serialize)]
struct ServerInfo {
    in_process: bool,
    /// The first server's URL.
    url: String,
    /// Every server the connections were spread over.
    urls: Vec<String>,
    runtime: Option<RuntimeSpec>,
    durability: Option<DurabilityArg>,
    backend: Option<BackendArg>,
    redis_prefix: Option<String>,
}

#[derive(Serialize)]
struct Output {
    tool: &'static str,
    args: Args,
    server: ServerInfo,
    machine_before: Machine,
    loadavg_after: String,
    elapsed_s: f64,
    ops: u64,
    errors: u64,
    inactive_answers: u64,
    throughput_ops_s: f64,
    latency: Latency,
    per_op: BTreeMap<String, OpSummary>,
    first_error: Option<String>,
    /// With `--jwt-baseline`: the offline check's timings in the same run.
    jwt_baseline: Option<JwtTiming>,
    /// This process's CPU time in the measured window per operation counted, by thread
    /// name (`server` is an in-process server's workers, `load` the client's) and in
    /// `total`: µs. Steadier than throughput on a shared machine.
    cpu_us_per_op: BTreeMap<String, f64>,
}

/// [`writ_bench::jwt::JwtBaseline`] timed one call at a time (nanoseconds).
#[derive(Serialize, Clone, Copy)]
struct JwtTiming {
    calls: usize,
    before_p50_ns: u64,
    after_p50_ns: u64,
    before_p99_ns: u64,
    after_p99_ns: u64,
}

const JWT_CALLS: usize = 20_000;

fn jwt_times() -> Vec<u64> {
    let now = writ_server::service::now().0 / 1000;
    writ_bench::jwt::JwtBaseline::new(now).time(JWT_CALLS)
}

fn at(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// `--serve-only`: one request of the mix, framed as gRPC puts it on the wire (a
/// compression flag, a big-endian length, the message), for a load generator that sends
/// the same bytes again and again; then serve until Ctrl-C.
async fn serve_only(args: &Args, url: &str, body: &PathBuf, pool: &[Chain]) -> Result<()> {
    use prost::Message;
    let (path, message) = match args.mix {
        Mix::Empty => ("/bench.v1.Baseline/Ping", Vec::new()),
        Mix::Validate => {
            let chain = pool.first().context("no token minted")?;
            let mut req = wire::validate_pb(&chain.leaf, !args.no_action);
            req.decision_only = args.decision_only;
            ("/writ.v1.TokenService/Validate", req.encode_to_vec())
        }
        other => bail!("--serve-only serves the empty and validate mixes, not {other:?}"),
    };
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(&message);
    std::fs::write(body, &framed).with_context(|| format!("writing {}", body.display()))?;
    println!("url {url}{path}");
    println!("caller {}", fixtures::hop(args.depth));
    println!("body {} ({} bytes)", body.display(), framed.len());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let (Some(path), Some(f)) = (&args.rate_from, args.rate_fraction) {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let peak = v["throughput_ops_s"]
            .as_f64()
            .ok_or_else(|| anyhow!("{} has no throughput_ops_s", path.display()))?;
        args.rate = Some(peak * f);
        eprintln!("open loop at {:.0} ops/s ({f} of {peak:.0})", peak * f);
    }
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    if args.connections < args.nodes {
        bail!("--connections must be at least --nodes (each node gets its share)");
    }
    let machine_before = report::machine();
    let spec = RuntimeSpec {
        flavor: args.server_runtime,
        workers: args.server_workers,
    };
    if args.nodes == 0 || (args.nodes > 1 && args.backend != BackendArg::Redis) {
        bail!("--nodes N > 1 needs --backend redis (RocksDB serves one node)");
    }
    if args.backend == BackendArg::Redis && args.redis_nodes.is_empty() && args.server.is_none() {
        bail!("--backend redis needs --redis-nodes (scripts/redis-cluster start prints them)");
    }
    let redis_prefix = (args.backend == BackendArg::Redis && args.server.is_none()).then(|| {
        args.redis_prefix.clone().unwrap_or_else(|| {
            format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>())
        })
    });
    let mut servers: Vec<ServerHandle> = Vec::new();
    match (&args.server, args.mix) {
        (Some(_), _) => {}
        (None, Mix::Empty) => servers.push(serve::spawn_baseline(spec)?),
        (None, _) => {
            let (depth, durability, audit) = (args.depth, args.durability, args.audit_validations);
            let hot_tier_mib = args.hot_tier_mib;
            let (backend, nodes, cache) =
                (args.backend, args.redis_nodes.clone(), args.record_cache);
            let prefix = redis_prefix.clone().unwrap_or_default();
            let configure = move |c: &mut writ_server::Config| {
                c.tokens.max_depth = depth.max(c.tokens.max_depth);
                c.tokens.max_children = 1024;
                c.audit.validations = match audit {
                    AuditValidations::All => ValidationEvents::All,
                    AuditValidations::Actions => ValidationEvents::Actions,
                    AuditValidations::None => ValidationEvents::None,
                };
                c.storage.durability = match durability {
                    DurabilityArg::Sync => Durability::Sync,
                    DurabilityArg::Buffered => Durability::Buffered,
                };
                if let Some(mib) = hot_tier_mib {
                    c.storage.hot_tier_mib = mib;
                }
                if backend == BackendArg::Redis {
                    c.storage.backend = Backend::Redis;
                    c.storage.redis.nodes = nodes.clone();
                    c.storage.redis.prefix = prefix.clone();
                    if let Some(n) = cache {
                        c.storage.redis.record_cache_entries = n;
                    }
                }
            };
            let first = serve::spawn_writ(spec, configure.clone())?;
            for _ in 1..args.nodes {
                let node = serve::spawn_writ_node_of(&first, spec, configure.clone())?;
                servers.push(node);
            }
            servers.insert(0, first);
        }
    };
    let urls: Vec<String> = match &args.server {
        Some(u) => vec![u.clone()],
        None => servers.iter().map(ServerHandle::url).collect(),
    };
    let url = urls[0].clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load")
        .worker_threads(args.client_workers.max(1))
        .enable_all()
        .build()?;
    let in_process = !servers.is_empty();
    let writ_in_process = in_process && args.mix != Mix::Empty;
    let info = ServerInfo {
        in_process,
        url: url.clone(),
        urls: urls.clone(),
        runtime: in_process.then_some(spec),
        durability: (writ_in_process && args.backend == BackendArg::Rocksdb)
            .then_some(args.durability),
        backend: writ_in_process.then_some(args.backend),
        redis_prefix: redis_prefix.filter(|_| writ_in_process),
    };
    let data_dir = servers.first().and_then(|s| s.data_dir.clone());
    let jwt_before = args.jwt_baseline.then(jwt_times);
    let result = rt.block_on(run(&args, &urls, data_dir));
    let jwt = jwt_before.map(|before| {
        let after = jwt_times();
        JwtTiming {
            calls: JWT_CALLS,
            before_p50_ns: at(&before, 0.5),
            after_p50_ns: at(&after, 0.5),
            before_p99_ns: at(&before, 0.99),
            after_p99_ns: at(&after, 0.99),
        }
    });
    drop(rt);
    for s in servers {
        s.stop()?;
    }
    let measured = result?;
    if args.serve_only.is_some() {
        return Ok(());
    }
    summarize(args, info, machine_before, measured, jwt)
}

/// What a run measured.
struct Measured {
    /// Seconds in the measured window.
    elapsed: f64,
    hists: Hists,
    shared: Arc<Shared>,
    /// This process's CPU by thread name at the start and the end of the window.
    cpu: (BTreeMap<String, f64>, BTreeMap<String, f64>),
}

async fn run(args: &Args, urls: &[String], data_dir: Option<PathBuf>) -> Result<Measured> {
    let url = urls[0].as_str();
    // Connection `i` goes to server `i % servers`.
    let url_of = |i: usize| urls[i % urls.len()].as_str();
    let credential = |name: &str, flag: &Option<PathBuf>| -> Result<String> {
        match (flag, &data_dir) {
            (Some(p), _) => read_credential(p),
            (None, Some(d)) => read_credential(&d.join(name)),
            (None, None) => bail!("--server needs the {name} file (see --help)"),
        }
    };
    // One connection per --connections; tasks share them round-robin.
    let mut works: Vec<Work> = Vec::with_capacity(args.concurrency);
    let mut pool = Arc::new(Vec::new());
    let mut operator = None;
    if args.mix == Mix::Empty {
        let mut conns = Vec::new();
        for i in 0..args.connections {
            let ch = Endpoint::from_shared(url_of(i).to_string())?
                .connect()
                .await?;
            conns.push(BaselineClient::new(ch));
        }
        for i in 0..args.concurrency {
            works.push(Work::Empty {
                client: conns[i % conns.len()].clone(),
            });
        }
    } else {
        let mut conns = Vec::new();
        for i in 0..args.connections {
            conns.push(if args.insecure_plaintext {
                WritClient::connect_insecure(url_of(i)).await?
            } else {
                WritClient::connect(url_of(i)).await?
            });
        }
        let minter_cred = credential("minter.credential", &args.minter_credential_file)?;
        let minters: Vec<WritClient> = conns
            .iter()
            .map(|c| c.clone().with_minter_credential(&minter_cred))
            .collect::<Result<_, _>>()?;
        let hops_of = |c: &WritClient| -> Result<Vec<WritClient>> {
            (0..args.depth.max(1))
                .map(|l| -> Result<WritClient> { Ok(c.clone().as_caller(&fixtures::hop(l))?) })
                .collect()
        };
        if matches!(args.mix, Mix::Validate | Mix::Revoke) {
            let t = Instant::now();
            pool = Arc::new(
                mint_pool(&minters[0], &hops_of(&conns[0])?, args.tokens, args.depth).await?,
            );
            eprintln!(
                "minted {} chains of depth {} in {:.1} s",
                pool.len(),
                args.depth,
                t.elapsed().as_secs_f64()
            );
            if args.mix == Mix::Revoke {
                let op_cred = credential("operator.credential", &args.operator_credential_file)?;
                operator = Some(conns[0].clone().with_operator_credential(&op_cred)?);
            }
        }
        for i in 0..args.concurrency {
            let conn = &conns[i % conns.len()];
            works.push(match args.mix {
                Mix::Validate | Mix::Revoke => Work::Validate {
                    client: conn.clone().as_caller(&fixtures::hop(args.depth))?,
                    pool: pool.clone(),
                    action: !args.no_action,
                    decision_only: args.decision_only,
                    must_be_active: args.mix == Mix::Validate,
                },
                Mix::Chain => Work::Chain {
                    minter: minters[i % minters.len()].clone(),
                    hops: hops_of(conn)?,
                    depth: args.depth,
                },
                Mix::Journey => Work::Journey {
                    minter: minters[i % minters.len()].clone(),
                    hops: (0..=args.depth)
                        .map(|l| -> Result<WritClient> {
                            Ok(conn.clone().as_caller(&fixtures::hop(l))?)
                        })
                        .collect::<Result<_>>()?,
                    depth: args.depth,
                },
                Mix::Mint => Work::Mint {
                    minter: minters[i % minters.len()].clone(),
                },
                Mix::Empty => unreachable!("handled above"),
            });
        }
    }
    let shared = Arc::new(Shared::default());
    if let Some(body) = &args.serve_only {
        serve_only(args, url, body, &pool).await?;
        return Ok(Measured {
            elapsed: 0.0,
            hists: Hists::new(),
            shared,
            cpu: Default::default(),
        });
    }
    let period = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r.max(0.001)));
    let mut tasks = Vec::new();
    for (i, w) in works.into_iter().enumerate() {
        tasks.push(tokio::spawn(worker(i, w, shared.clone(), period)));
    }
    if let Some(op) = operator {
        tasks.push(tokio::spawn(revoker(
            op,
            pool.clone(),
            args.revoke_rate,
            shared.clone(),
        )));
    }
    // Progress, once a second.
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.duration);
    let mut measured_from = None;
    let mut cpu_from = BTreeMap::new();
    let mut last = 0u64;
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        let now = Instant::now();
        if measured_from.is_none() && now >= start + warmup {
            shared.recording.store(true, Ordering::Relaxed);
            measured_from = Some(now);
            cpu_from = report::cpu_seconds();
        }
        if now >= start + total {
            break;
        }
        let next_edge = if measured_from.is_none() {
            start + warmup
        } else {
            start + total
        };
        tokio::select! {
            _ = tick.tick() => {
                let done = shared.done.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {:<7} {:>9} ops/s  errors {}",
                    start.elapsed().as_secs_f64(),
                    if measured_from.is_some() { "measure" } else { "warmup" },
                    done - last,
                    shared.errors.load(Ordering::Relaxed)
                );
                last = done;
            }
            _ = tokio::time::sleep_until(next_edge.into()) => {}
        }
    }
    shared.recording.store(false, Ordering::Relaxed);
    let cpu_to = report::cpu_seconds();
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = measured_from.map_or(0.0, |m| m.elapsed().as_secs_f64());
    let mut hists = Hists::new();
    for t in tasks {
        let h = tokio::time::timeout(Duration::from_secs(35), t)
            .await
            .map_err(|_| anyhow!("a worker did not stop within 35 s"))??;
        for (k, v) in h {
            hists.entry(k).or_insert_with(report::histogram).add(&v)?;
        }
    }
    Ok(Measured {
        elapsed,
        hists,
        shared,
        cpu: (cpu_from, cpu_to),
    })
}

fn summarize(
    args: Args,
    server: ServerInfo,
    machine_before: Machine,
    measured: Measured,
    jwt: Option<JwtTiming>,
) -> Result<()> {
    let Measured {
        elapsed,
        hists,
        shared,
        cpu: (cpu_from, cpu_to),
    } = measured;
    let mut all = report::histogram();
    let mut per_op = BTreeMap::new();
    for (k, h) in &hists {
        // The revoker runs beside the load: its operations are reported, not counted in;
        // a journey is reported apart from the calls it is made of.
        if *k != "revoke" && *k != "journey" {
            all.add(h)?;
        }
        per_op.insert(
            k.to_string(),
            OpSummary {
                count: h.len(),
                throughput_ops_s: h.len() as f64 / elapsed.max(1e-9),
                latency: Latency::of(h),
            },
        );
    }
    let ops = all.len();
    let cpu_us_per_op = report::cpu_us_per_op(&cpu_from, &cpu_to, ops);
    let out = Output {
        tool: "writ-load",
        server,
        machine_before,
        loadavg_after: report::loadavg(),
        elapsed_s: elapsed,
        ops,
        errors: shared.errors.load(Ordering::Relaxed),
        inactive_answers: shared.inactive.load(Ordering::Relaxed),
        throughput_ops_s: ops as f64 / elapsed.max(1e-9),
        latency: Latency::of(&all),
        per_op,
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        jwt_baseline: jwt,
        cpu_us_per_op,
        args,
    };
    if let Some(j) = &out.jwt_baseline {
        println!(
            "EdDSA JWT verify-and-check, in process: p50 {:.1} µs before the load, {:.1} µs after (p99 {:.1} / {:.1})",
            j.before_p50_ns as f64 / 1e3,
            j.after_p50_ns as f64 / 1e3,
            j.before_p99_ns as f64 / 1e3,
            j.after_p99_ns as f64 / 1e3
        );
    }
    println!(
        "mix {:?}  concurrency {}  connections {}  server {}",
        out.args.mix,
        out.args.concurrency,
        out.args.connections,
        match &out.server.runtime {
            Some(r) => format!(
                "in-process {:?} workers {:?} audit.validations {:?} backend {:?} x{}",
                r.flavor,
                r.workers,
                out.args.audit_validations,
                out.server.backend,
                out.server.urls.len()
            ),
            None => out.server.url.clone(),
        }
    );
    println!(
        "{:.0} ops/s over {:.1} s ({} ops, {} errors, {} inactive answers)",
        out.throughput_ops_s, out.elapsed_s, out.ops, out.errors, out.inactive_answers
    );
    for (k, s) in &out.per_op {
        println!("  {k:<10} {:>9.0} ops/s  {}", s.throughput_ops_s, s.latency);
    }
    let cpu: Vec<String> = out
        .cpu_us_per_op
        .iter()
        .map(|(k, us)| format!("{k} {us:.1}"))
        .collect();
    println!("CPU µs per op: {}", cpu.join("  "));
    if let Some(e) = &out.first_error {
        println!("first error: {e}");
    }
    if let Some(path) = &out.args.out {
        report::write_json(path, &out)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
