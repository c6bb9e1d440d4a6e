//! Writ nodes killed during load, clients sending Mint, Downscope, Validate and Revoke
//! meanwhile; prints its figures (`--nocapture`).
//!
//! - Issue 14: three `writ serve` processes on one private six-node Redis Cluster, each
//!   client through its own node only; one process is killed with SIGKILL mid-way. The
//!   clients of the other two nodes must see no error at all, and every token acknowledged
//!   through any node (the killed one included) must afterwards validate, or be revoked,
//!   through the others.
//! - Issue 15: one node on RocksDB, whose writer group-commits the writes of many clients,
//!   killed with SIGKILL mid-way and started again on its data directory: every token it
//!   acknowledged validates, or is revoked if its revocation was acknowledged.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use writ_client::proto as pb;
use writ_client::{ClientError, RetryPolicy, WritClient, build};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");
/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    common::repo_root().join("scripts/redis-cluster")
}

/// A private cluster in its own directory, stopped (and removed) on drop; its watchdog
/// stops it too if this process dies.
struct Cluster {
    dir: PathBuf,
    nodes: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(script())
            .arg("start")
            .arg(dir)
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
        let nodes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        Cluster {
            dir: dir.to_path_buf(),
            nodes,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .arg("--clean")
            .output();
    }
}

/// A `writ serve` process on the cluster (plaintext on loopback, asserted identities);
/// killed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
    ops_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

impl Node {
    /// Starts a node over `tmp/name` on the Redis Cluster `nodes` (on RocksDB there when
    /// `None`), with a copy of `keys_of`'s server key ring when given (every node of a
    /// trust domain shares it).
    fn start(tmp: &Path, name: &str, nodes: Option<&str>, keys_of: Option<&Node>) -> Node {
        let data_dir = tmp.join(name);
        std::fs::create_dir_all(&data_dir).expect("the data directory");
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700");
        if let Some(other) = keys_of {
            let copy = data_dir.join("server-keys.toml");
            std::fs::copy(other.data_dir.join("server-keys.toml"), &copy)
                .expect("copying the key ring");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
        }
        let config = tmp.join(format!("{name}.toml"));
        let redis = match nodes {
            Some(_) => "[storage.redis]\nprefix = \"faults-nodes\"\n",
            None => "",
        };
        std::fs::write(
            &config,
            format!("[auth]\nasserted_identities = true\n[tls]\nenabled = false\n{redis}"),
        )
        .expect("the configuration");
        let (port, ops_port) = (free_port(), free_port());
        let log = tmp.join(format!("{name}.log"));
        let mut command = Command::new(WRIT);
        command.arg("serve");
        if let Some(nodes) = nodes {
            command.arg("--redis-nodes").arg(nodes);
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("WRIT_HTTP_LISTEN", "127.0.0.1:0")
            .env("WRIT_OPS_LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("WRIT_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the log"))
            .spawn()
            .expect("spawning writ serve");
        let mut node = Node {
            child: Some(child),
            port,
            ops_port,
            data_dir,
            log,
        };
        let end = Instant::now() + DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Listening, and the minter credential written (the store is open by then).
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            || !node.data_dir.join("minter.credential").exists()
        {
            if let Some(st) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("writ serve exited with {st}:\n{}", node.log());
            }
            assert!(
                Instant::now() < end,
                "{name} did not start:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A counter or gauge of the node's metrics (its ops listener, plain HTTP/1.1).
    fn metric(&self, name: &str) -> u64 {
        use std::io::{Read, Write};
        let mut conn = TcpStream::connect(("127.0.0.1", self.ops_port)).expect("the ops port");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .expect("a metrics request");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("the metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    /// SIGKILL, as in a crash; returns once the process is reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaping writ serve");
        }
    }

    async fn clients(&self) -> Clients {
        let raw = |c: WritClient| {
            c.with_retry(RetryPolicy::none())
                .with_timeout(Duration::from_secs(30))
        };
        let base = WritClient::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url()));
        let cred = std::fs::read_to_string(self.data_dir.join("minter.credential"))
            .expect("the minter credential");
        Clients {
            minter: raw(base
                .clone()
                .with_minter_credential(cred.trim())
                .expect("credential")),
            planner: raw(base.clone().as_caller("planner").expect("caller")),
            payments: raw(base.as_caller("payments").expect("caller")),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
struct Clients {
    minter: WritClient,
    planner: WritClient,
    payments: WritClient,
}

/// An acknowledged token.
struct Tracked {
    secret: String,
    holder: &'static str,
    revoked: bool,
    /// A revocation was sent and not acknowledged: revoked or active, both fine.
    maybe_revoked: bool,
    node: usize,
}

#[derive(Default)]
struct Ledger {
    tokens: Vec<Tracked>,
    acked: BTreeMap<(usize, &'static str), usize>,
    errors: BTreeMap<(usize, bool, &'static str, String), usize>,
    rounds: [usize; 3],
}

struct Run {
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    killed: AtomicBool,
}

impl Run {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note<T>(&self, node: usize, op: &'static str, r: Result<T, ClientError>) -> Option<T> {
        let mut l = self.ledger();
        match r {
            Ok(v) => {
                *l.acked.entry((node, op)).or_default() += 1;
                Some(v)
            }
            Err(e) => {
                let code = e
                    .code()
                    .map_or_else(|| "no status".to_owned(), |c| format!("{c:?}"));
                let after = self.killed.load(Ordering::SeqCst);
                *l.errors.entry((node, after, op, code)).or_default() += 1;
                None
            }
        }
    }
}

/// One client's loop through its own node: Mint; a payments child; the child validated;
/// every third round the child revoked by its holder.
async fn load(run: Arc<Run>, node: usize, c: Clients) {
    let mut r = 0usize;
    while !run.stop.load(Ordering::SeqCst) {
        r += 1;
        let req = pb::MintRequest {
            subject: "alice".into(),
            audience: Some(build::agent("planner")),
            targets: vec!["payments".into()],
            scopes: vec!["payments:charge".into()],
            ..Default::default()
        };
        let Some(root) = run.note(node, "mint", c.minter.clone().mint(req).await) else {
            // The killed node's clients: no busy loop.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let kid = pb::DownscopeRequest {
            parent_token: root.token.clone(),
            audience: Some(build::workload("payments")),
            scopes: vec!["payments:charge".into()],
            ..Default::default()
        };
        let kid = run.note(node, "downscope", c.planner.clone().downscope(kid).await);
        // The child's index, taken under the same lock as its push (other tasks push too).
        let mut kid_index = None;
        {
            let mut l = run.ledger();
            for (secret, holder) in [(Some(root.token.clone()), "planner")]
                .into_iter()
                .chain([(kid.as_ref().map(|k| k.token.clone()), "payments")])
            {
                if let Some(secret) = secret {
                    kid_index = (holder == "payments").then_some(l.tokens.len());
                    l.tokens.push(Tracked {
                        secret,
                        holder,
                        revoked: false,
                        maybe_revoked: false,
                        node,
                    });
                }
            }
        }
        let (Some(kid), Some(kid_index)) = (kid, kid_index) else {
            continue;
        };
        let check = pb::ValidateRequest {
            token: kid.token.clone(),
            ..Default::default()
        };
        if let Some(v) = run.note(node, "validate", c.payments.clone().validate(check).await) {
            assert!(v.active, "a fresh child answered inactive: {v:?}");
        }
        if r.is_multiple_of(3) {
            let req = pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Token(kid.token.clone())),
                reason: "node fault test".into(),
            };
            let done = run
                .note(node, "revoke", c.payments.clone().revoke(req).await)
                .is_some();
            let mut l = run.ledger();
            l.tokens[kid_index].revoked = done;
            l.tokens[kid_index].maybe_revoked = !done;
        }
        run.ledger().rounds[node] += 1;
    }
}

/// Validates acknowledged token `i` through `via` by its holder: the node it was
/// acknowledged through, and what is wrong, if anything (active though its revocation was
/// acknowledged, or inactive for any reason but a revocation that was sent).
async fn recheck(run: &Run, i: usize, via: &Clients) -> (usize, Option<String>) {
    let (secret, holder, revoked, maybe, node) = {
        let l = run.ledger();
        let t = &l.tokens[i];
        (
            t.secret.clone(),
            t.holder,
            t.revoked,
            t.maybe_revoked,
            t.node,
        )
    };
    let mut client = match holder {
        "planner" => via.planner.clone(),
        _ => via.payments.clone(),
    };
    let v = client
        .validate(pb::ValidateRequest {
            token: secret,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("validating token {i} again: {e}"));
    let reason = pb::InactiveReason::try_from(v.inactive_reason).ok();
    let fine = match (v.active, reason) {
        (true, _) => !revoked,
        (false, Some(pb::InactiveReason::Revoked)) => revoked || maybe,
        _ => false,
    };
    let problem = (!fine).then(|| format!("token {i} (revoked {revoked}, maybe {maybe}): {v:?}"));
    (node, problem)
}

async fn wait_rounds(run: &Run, nodes: &[usize], more: usize) {
    let sum = |run: &Run| {
        let l = run.ledger();
        nodes.iter().map(|&n| l.rounds[n]).sum::<usize>()
    };
    let target = sum(run) + more;
    let end = Instant::now() + DEADLINE;
    while sum(run) < target {
        assert!(
            Instant::now() < end,
            "{more} rounds not run within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writ_node_killed_during_load_costs_the_other_nodes_clients_nothing() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let cluster = Cluster::start(&tmp.path().join("redis"));
    let nodes = Some(cluster.nodes.as_str());
    let a = Node::start(tmp.path(), "a", nodes, None);
    let b = Node::start(tmp.path(), "b", nodes, Some(&a));
    let mut c = Node::start(tmp.path(), "c", nodes, Some(&a));
    let clients = [a.clients().await, b.clients().await, c.clients().await];
    let run = Arc::new(Run {
        ledger: Mutex::default(),
        stop: AtomicBool::new(false),
        killed: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for (n, cl) in clients.iter().enumerate() {
        for _ in 0..2 {
            tasks.push(tokio::spawn(load(run.clone(), n, cl.clone())));
        }
    }
    wait_rounds(&run, &[0, 1, 2], 30).await;
    run.killed.store(true, Ordering::SeqCst);
    let killed_at = started.elapsed();
    c.kill();
    wait_rounds(&run, &[0, 1], 40).await;
    run.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("a load task panicked");
    }

    // Every acknowledged token, through the surviving nodes in turn.
    let survivors = [&clients[0], &clients[1]];
    let mut lost = Vec::new();
    let (count, mut by_c) = (run.ledger().tokens.len(), 0);
    for i in 0..count {
        let (node, problem) = recheck(&run, i, survivors[i % 2]).await;
        by_c += usize::from(node == 2);
        lost.extend(problem.map(|p| format!("through node {node}: {p}")));
    }
    let checked = count;
    let l = run.ledger();
    eprintln!("== a Writ node killed during load");
    eprintln!("rounds run per node: {:?}", l.rounds);
    eprintln!("operations acknowledged (node, op): {:?}", l.acked);
    eprintln!("errors (node, after the kill, op, code): {:?}", l.errors);
    eprintln!(
        "node c SIGKILLed at {killed_at:?}; tokens checked through a and b afterwards: {checked} ({by_c} acknowledged through c)"
    );
    eprintln!("lost or contradicted: {} {lost:?}", lost.len());
    eprintln!("wall time: {:?}", started.elapsed());
    let survivor_errors: Vec<_> = l.errors.iter().filter(|((n, ..), _)| *n != 2).collect();
    assert!(
        survivor_errors.is_empty(),
        "the other nodes' clients saw errors: {survivor_errors:?}\nnode a:\n{}\nnode b:\n{}",
        a.log(),
        b.log()
    );
    assert!(
        lost.is_empty(),
        "acknowledged tokens lost or wrong: {lost:?}"
    );
    assert!(by_c > 0, "nothing was acknowledged through the killed node");
    assert!(
        l.errors.keys().any(|(n, after, ..)| *n == 2 && *after),
        "the killed node's clients saw no error: was it killed?"
    );
}

/// Issue 15: one node on RocksDB (durability `sync`), its writer group-committing the
/// writes of 16 clients, SIGKILLed mid-load and started again on its data directory. Every
/// token it acknowledged must validate, or answer revoked if its revocation was
/// acknowledged (either, if a revocation was in flight); writes in flight at the kill
/// may be lost, never an acknowledged one. A SIGKILL keeps the page cache, so this catches
/// an answer given before its write reached the WAL (it fails when the WAL is buffered in
/// the process), not a missing fsync: `rocks::tests` checks that answers wait for the
/// group's sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_between_group_commits_loses_nothing_it_acknowledged() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut node = Node::start(tmp.path(), "rocks", None, None);
    let clients = node.clients().await;
    let run = Arc::new(Run {
        ledger: Mutex::default(),
        stop: AtomicBool::new(false),
        killed: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..16)
        .map(|_| tokio::spawn(load(run.clone(), 0, clients.clone())))
        .collect();
    wait_rounds(&run, &[0], 200).await;
    let (groups, jobs) = (
        node.metric("writ_store_writer_groups_total"),
        node.metric("writ_store_writer_jobs_total"),
    );
    run.killed.store(true, Ordering::SeqCst);
    node.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("a load task panicked");
    }

    let node = Node::start(tmp.path(), "rocks", None, None);
    let after = node.clients().await;
    let mut lost = Vec::new();
    let count = run.ledger().tokens.len();
    for i in 0..count {
        lost.extend(recheck(&run, i, &after).await.1);
    }
    let l = run.ledger();
    eprintln!("== a RocksDB node killed between group commits");
    eprintln!("rounds run: {}", l.rounds[0]);
    eprintln!("operations acknowledged: {:?}", l.acked);
    eprintln!("errors (after the kill, op, code): {:?}", l.errors);
    eprintln!(
        "writer before the kill: {jobs} jobs in {groups} groups ({:.1} per sync)",
        jobs as f64 / groups.max(1) as f64
    );
    eprintln!(
        "tokens checked after the restart: {count}; lost or contradicted: {} {lost:?}",
        lost.len()
    );
    eprintln!("wall time: {:?}", started.elapsed());
    assert!(
        lost.is_empty(),
        "acknowledged tokens lost or wrong: {lost:?}\n{}",
        node.log()
    );
    assert!(count > 0 && groups > 0, "nothing was acknowledged");
    assert!(
        jobs > groups,
        "no sync answered more than one write ({jobs} jobs, {groups} groups): no group commit"
    );
    assert!(
        l.errors.keys().any(|(_, after, ..)| *after),
        "no request failed at the kill: was it killed mid-load?"
    );
}
