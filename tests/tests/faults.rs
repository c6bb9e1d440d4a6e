//! Fault tests of the Redis Cluster backend (issue 14): three Writ nodes on one private
//! six-node cluster (3 masters, 3 replicas, `appendfsync always`, `min-replicas-to-write
//! 1`), mixed load, and a Redis master killed (SIGKILL) or stopped (SIGSTOP, a stale
//! master) mid-way. Every answer is recorded: an acknowledged token must validate
//! afterwards, an acknowledged revocation must never be undone, a single-use token must be
//! allowed at most once across all nodes, and every error must be `UNAVAILABLE`. Each test
//! prints its figures (`--nocapture`).
//!
//! A SIGKILLed master alone loses nothing on loopback: its replica has already read what
//! the socket carried. So the kills land while the replica lags: `FaultCluster::
//! stall_replica` stops it and pushes junk through the master until the replication
//! stream backs up in the master's output buffer; what the master takes from then on never
//! reaches the replica, and only `WAIT` stands between it and an acknowledgement. (With
//! `storage.redis.required_replicas = 0`, the mixed-load and burst tests fail: revocations
//! undone, tokens lost.) The `…_retried_while_the_replica_lags_…` tests send a request
//! twice during such a stall: a retry must not acknowledge what the first attempt left on
//! the master only ("revoked already", the token a keyed Mint or Downscope already stored).
//!
//! Each test starts its own cluster in its own directory and stops it at the end, so the
//! tests may run side by side; `tests/backends.rs` does not run this binary again (its
//! clusters are its own whatever the backend). The Writ node killed as a process is in
//! `crates/writ/tests/faults.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use writ_client::{ClientError, RetryPolicy, WritClient};
use writ_e2e::redis::{FaultCluster, Shard, txn_slot};
use writ_e2e::*;

use pb::InactiveReason;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// The clusters' node timeout: how long a master is silent before its replica is promoted.
const NODE_TIMEOUT_MS: u64 = 1000;

// ---- the three Writ nodes and their clients ----

/// One node's clients, without retries (every attempt's answer is recorded) and with a
/// generous deadline (a hang is an error, not a wait).
#[derive(Clone)]
struct Node {
    /// No identity yet: other callers are asserted from it.
    base: WritClient,
    minter: WritClient,
    operator: WritClient,
    planner: WritClient,
    booking: WritClient,
    payments: WritClient,
}

fn raw(c: WritClient) -> WritClient {
    c.with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(30))
}

impl Node {
    async fn of(srv: &TestServer) -> Node {
        Node {
            base: raw(srv.anonymous().await),
            minter: raw(srv.minter().await),
            operator: raw(srv.operator().await),
            planner: raw(srv.party("planner").await),
            booking: raw(srv.party("booking").await),
            payments: raw(srv.party("payments").await),
        }
    }

    async fn mint(&self, req: pb::MintRequest) -> Result<pb::MintResponse, ClientError> {
        self.minter.clone().mint(req).await
    }

    /// Downscope by the planner (the roots' holder).
    async fn downscope(
        &self,
        req: pb::DownscopeRequest,
    ) -> Result<pb::DownscopeResponse, ClientError> {
        self.planner.clone().downscope(req).await
    }

    async fn validate(
        &self,
        holder: &str,
        req: pb::ValidateRequest,
    ) -> Result<pb::ValidateResponse, ClientError> {
        self.holder(holder).validate(req).await
    }

    /// Revoke as `holder`, or as the operator (`"operator"`).
    async fn revoke(
        &self,
        holder: &str,
        req: pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, ClientError> {
        self.holder(holder).revoke(req).await
    }

    fn holder(&self, holder: &str) -> WritClient {
        match holder {
            "planner" => self.planner.clone(),
            "booking" => self.booking.clone(),
            "payments" => self.payments.clone(),
            "operator" => self.operator.clone(),
            other => self
                .base
                .clone()
                .as_caller(other)
                .expect("caller id is valid metadata"),
        }
    }
}

/// Three Writ nodes on `cluster`, sharing one key ring and namespace.
async fn three_nodes(cluster: &FaultCluster) -> (Vec<TestServer>, Vec<Node>) {
    let a = TestServer::start_with(|c| cluster.use_in(c)).await;
    let b = TestServer::start_node_of(&a).await;
    let c = TestServer::start_node_of(&a).await;
    let servers = vec![a, b, c];
    let mut nodes = Vec::new();
    for s in &servers {
        nodes.push(Node::of(s).await);
    }
    (servers, nodes)
}

// ---- what was acknowledged ----

/// What the test knows about a change: never attempted, attempted without an
/// acknowledgement (it may or may not have happened), acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ack {
    No,
    Maybe,
    Yes,
}

/// When an answer came, relative to the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Before the fault.
    Before = 0,
    /// From the fault until the replica was promoted.
    Failover = 1,
    /// From the promotion until the shard has a replica again.
    Degraded = 2,
    /// Afterwards.
    After = 3,
}

impl Phase {
    fn of(n: u8) -> Phase {
        match n {
            0 => Phase::Before,
            1 => Phase::Failover,
            2 => Phase::Degraded,
            _ => Phase::After,
        }
    }
}

/// An acknowledged token and what was done to it.
#[derive(Clone, Debug)]
struct Tracked {
    secret: String,
    id: String,
    txn: String,
    holder: &'static str,
    parent: Option<usize>,
    single_use: bool,
    expires_at_ms: u64,
    revoked: Ack,
    used: Ack,
}

#[derive(Default)]
struct Ledger {
    tokens: Vec<Tracked>,
    /// Acknowledged answers by operation.
    acked: BTreeMap<&'static str, usize>,
    /// Errors by (phase, operation, code).
    errors: BTreeMap<(Phase, &'static str, String), usize>,
    /// Allowed action checks per single-use token (index).
    allowed: BTreeMap<usize, usize>,
    /// Answers that contradict what was acknowledged.
    violations: Vec<String>,
    rounds: usize,
    /// Tokens checked after the fault, and answers read while checking.
    checked: usize,
}

impl Ledger {
    /// Whether `i` or an ancestor was revoked (the strongest knowledge along the line).
    fn revoked(&self, i: usize) -> Ack {
        let mut ack = Ack::No;
        let mut at = Some(i);
        while let Some(j) = at {
            ack = ack.max(self.tokens[j].revoked);
            at = self.tokens[j].parent;
        }
        ack
    }

    /// Checks an introspection of token `i` against what was acknowledged; returns a
    /// violation, if any.
    fn judge(&self, i: usize, answer: &pb::ValidateResponse) -> Option<String> {
        let t = &self.tokens[i];
        let revoked = self.revoked(i);
        let used = if t.single_use { t.used } else { Ack::No };
        let what = format!("{} ({} of {})", t.id, t.holder, t.txn);
        if answer.active {
            if revoked == Ack::Yes {
                return Some(format!("acknowledged revocation undone: {what} is active"));
            }
            if used == Ack::Yes {
                return Some(format!("acknowledged use undone: {what} is active"));
            }
            return None;
        }
        let reason = InactiveReason::try_from(answer.inactive_reason).ok();
        match reason {
            Some(InactiveReason::Revoked) if revoked > Ack::No => None,
            Some(InactiveReason::Exhausted) if revoked < Ack::Yes && used > Ack::No => None,
            Some(InactiveReason::Expired) if now_ms() >= t.expires_at_ms => None,
            Some(InactiveReason::Unknown) => Some(format!("acknowledged token lost: {what}")),
            other => Some(format!(
                "{what} answered inactive {other:?} (revoked {revoked:?}, used {used:?})"
            )),
        }
    }
}

fn now_ms() -> u64 {
    writ_server::service::now().0
}

fn code_name(e: &ClientError) -> String {
    match e.code() {
        Some(c) => format!("{c:?}"),
        None => "no status".into(),
    }
}

/// The shared state of one run: the ledger, the phase, and the workers' stop flag.
struct Run {
    ledger: Mutex<Ledger>,
    phase: AtomicU8,
    stop: AtomicBool,
    in_flight: AtomicUsize,
}

impl Run {
    fn new() -> Arc<Run> {
        Arc::new(Run {
            ledger: Mutex::default(),
            phase: AtomicU8::new(Phase::Before as u8),
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn phase(&self) -> Phase {
        Phase::of(self.phase.load(Ordering::SeqCst))
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Records an answer: `Some` when acknowledged, the error counted otherwise.
    fn note<T>(&self, op: &'static str, phase: Phase, r: Result<T, ClientError>) -> Option<T> {
        let mut l = self.ledger();
        match r {
            Ok(v) => {
                *l.acked.entry(op).or_default() += 1;
                Some(v)
            }
            Err(e) => {
                *l.errors.entry((phase, op, code_name(&e))).or_default() += 1;
                None
            }
        }
    }

    fn track(&self, t: Tracked) -> usize {
        let mut l = self.ledger();
        l.tokens.push(t);
        l.tokens.len() - 1
    }

    fn tracked(&self, i: usize) -> Tracked {
        self.ledger().tokens[i].clone()
    }

    fn rounds(&self) -> usize {
        self.ledger().rounds
    }

    /// Waits until `more` further rounds completed.
    async fn wait_rounds(&self, more: usize) {
        let target = self.rounds() + more;
        let end = Instant::now() + DEADLINE;
        while self.rounds() < target {
            if Instant::now() >= end {
                let l = self.ledger();
                panic!(
                    "{target} rounds of load not reached within {DEADLINE:?} (phase {:?}, {} rounds; acknowledged {:?}; errors {:?})",
                    self.phase(),
                    l.rounds,
                    l.acked,
                    l.errors
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `cond` every 100 ms until it holds; fails the test after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same, for a blocking condition (the cluster's state through redis-cli).
async fn wait_for_cluster(what: &str, cond: impl Fn() -> bool + Send + Sync + Clone + 'static) {
    wait_for(what, || {
        let cond = cond.clone();
        async move { tokio::task::spawn_blocking(cond).await.unwrap_or(false) }
    })
    .await;
}

fn tracked(secret: String, info: Option<pb::TokenInfo>, holder: &'static str) -> Tracked {
    let info = info.expect("an issued token comes with its info");
    Tracked {
        secret,
        id: info.token_id,
        txn: info.txn,
        holder,
        parent: None,
        single_use: info.max_uses == 1,
        expires_at_ms: info.expires_at_unix_ms,
        revoked: Ack::No,
        used: Ack::No,
    }
}

fn root_request() -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent("planner"),
        &["booking", "payments"],
        &["trips:book", "payments:charge"],
        vec![],
    )
}

fn single_use_child(parent: &str) -> pb::DownscopeRequest {
    pb::DownscopeRequest {
        max_uses: 1,
        ..child(
            parent,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        )
    }
}

fn payments_child(parent: &str) -> pb::DownscopeRequest {
    child(
        parent,
        build::workload("payments"),
        &[],
        &["payments:charge"],
        vec![],
    )
}

// ---- mixed load ----

/// One round of worker `k` (counted however far it got): Mint through one node; a single-use child for booking and an
/// unlimited one for payments through the others; the single-use child's action checked
/// twice at once through two nodes; a revocation (the root by its holder, the payments
/// child by its holder, the transaction by an operator, or none); the payments child
/// validated against what was acknowledged so far.
async fn round(run: &Run, nodes: &[Node], k: usize, r: usize) {
    if !round_ops(run, nodes, k, r).await {
        // Refused from the start (a Mint in the failover window): no busy loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.ledger().rounds += 1;
}

/// The operations of [`round`]; false when the Mint failed.
async fn round_ops(run: &Run, nodes: &[Node], k: usize, r: usize) -> bool {
    let n0 = (k + r) % nodes.len();
    let (n1, n2) = ((n0 + 1) % nodes.len(), (n0 + 2) % nodes.len());
    let phase = run.phase();
    let minted = nodes[n0].mint(root_request()).await;
    let Some(root) = run.note("mint", phase, minted) else {
        return false;
    };
    let root_i = run.track(tracked(root.token.clone(), root.info, "planner"));

    let phase = run.phase();
    let a = nodes[n1].downscope(single_use_child(&root.token)).await;
    let a = run.note("downscope", phase, a).map(|a| {
        let mut t = tracked(a.token, a.info, "booking");
        t.parent = Some(root_i);
        run.track(t)
    });
    let phase = run.phase();
    let b = nodes[n2].downscope(payments_child(&root.token)).await;
    let b = run.note("downscope", phase, b).map(|b| {
        let mut t = tracked(b.token, b.info, "payments");
        t.parent = Some(root_i);
        run.track(t)
    });

    if let Some(ai) = a {
        let secret = run.tracked(ai).secret;
        let phase = run.phase();
        let (x, y) = tokio::join!(
            nodes[n1].validate("booking", check(&secret, "trips:book", vec![])),
            nodes[n2].validate("booking", check(&secret, "trips:book", vec![])),
        );
        // The allowed answer first, then an error (a use perhaps spent): the other
        // answer, at once, may find the use spent.
        let mut answers = [x, y];
        answers.sort_by_key(|a| match a {
            Ok(v) if allowed(v) => 0,
            Err(_) => 1,
            Ok(_) => 2,
        });
        for answer in answers {
            note_check(run, ai, phase, answer);
        }
    }

    let phase = run.phase();
    let revocation = match r % 4 {
        0 => Some((
            root_i,
            nodes[n2]
                .revoke("planner", revoke_token(&root.token, "fault test"))
                .await,
        )),
        1 => match b {
            Some(bi) => {
                let secret = run.tracked(bi).secret;
                Some((
                    bi,
                    nodes[n0]
                        .revoke("payments", revoke_token(&secret, "fault test"))
                        .await,
                ))
            }
            None => None,
        },
        3 => {
            let txn = run.tracked(root_i).txn;
            Some((
                root_i,
                nodes[n1]
                    .revoke("operator", revoke_txn(&txn, "fault test"))
                    .await,
            ))
        }
        _ => None,
    };
    if let Some((i, answer)) = revocation {
        let ack = match run.note("revoke", phase, answer) {
            Some(_) => Ack::Yes,
            None => Ack::Maybe,
        };
        let mut l = run.ledger();
        l.tokens[i].revoked = l.tokens[i].revoked.max(ack);
    }

    if let Some(bi) = b {
        let secret = run.tracked(bi).secret;
        let phase = run.phase();
        let answer = nodes[n1].validate("payments", introspect(&secret)).await;
        if let Some(v) = run.note("validate", phase, answer) {
            let mut l = run.ledger();
            if let Some(bad) = l.judge(bi, &v) {
                l.violations.push(format!("during load ({phase:?}): {bad}"));
            }
        }
    }
    true
}

/// Whether an action check was allowed.
fn allowed(v: &pb::ValidateResponse) -> bool {
    v.active && v.decision.as_ref().is_some_and(|d| d.allowed)
}

/// Records an action check of single-use token `i`.
fn note_check(
    run: &Run,
    i: usize,
    phase: Phase,
    answer: Result<pb::ValidateResponse, ClientError>,
) {
    let Some(v) = run.note("action check", phase, answer) else {
        let mut l = run.ledger();
        l.tokens[i].used = l.tokens[i].used.max(Ack::Maybe);
        return;
    };
    let mut l = run.ledger();
    if allowed(&v) {
        *l.allowed.entry(i).or_default() += 1;
        l.tokens[i].used = Ack::Yes;
    } else if let Some(bad) = l.judge(i, &v) {
        l.violations
            .push(format!("action check ({phase:?}): {bad}"));
    }
}

/// Starts `workers` tasks running rounds until `run.stop`.
fn start_load(run: &Arc<Run>, nodes: &[Node], workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|k| {
            let (run, nodes) = (run.clone(), nodes.to_vec());
            tokio::spawn(async move {
                let mut r = 0;
                while !run.stop.load(Ordering::SeqCst) {
                    round(&run, &nodes, k, r).await;
                    r += 1;
                }
            })
        })
        .collect()
}

async fn stop_load(run: &Run, workers: Vec<tokio::task::JoinHandle<()>>) {
    run.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("a load task panicked");
    }
}

// ---- after the fault ----

/// An answer through `node`, retried (every 200 ms, within [`DEADLINE`]) while the cluster
/// answers UNAVAILABLE; any other error fails the test.
async fn settled<T, F, Fut>(what: &str, mut call: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let end = Instant::now() + DEADLINE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call().await {
            Ok(v) => return (v, attempts),
            Err(e) if e.code() == Some(Code::Unavailable) && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e} (attempt {attempts})"),
        }
    }
}

/// Every acknowledged token validated through the nodes in turn and judged; then every
/// single-use token not revoked is tried once more through every node: across the whole
/// run at most one action check may have been allowed.
async fn verify(run: &Run, nodes: &[Node]) {
    let count = run.ledger().tokens.len();
    for i in 0..count {
        let t = run.tracked(i);
        let node = &nodes[i % nodes.len()];
        let (v, _) = settled("validating after the fault", || {
            node.validate(t.holder, introspect(&t.secret))
        })
        .await;
        let mut l = run.ledger();
        l.checked += 1;
        if let Some(bad) = l.judge(i, &v) {
            l.violations.push(format!("after the fault: {bad}"));
        }
    }
    for i in 0..count {
        let t = run.tracked(i);
        if !t.single_use || run.ledger().revoked(i) == Ack::Yes {
            continue;
        }
        for node in nodes {
            let (v, _) = settled("an action check after the fault", || {
                node.validate("booking", check(&t.secret, "trips:book", vec![]))
            })
            .await;
            let mut l = run.ledger();
            l.checked += 1;
            if allowed(&v) {
                *l.allowed.entry(i).or_default() += 1;
                l.tokens[i].used = Ack::Yes;
            }
        }
    }
    let mut l = run.ledger();
    let twice: Vec<String> = l
        .allowed
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, n)| format!("single-use token {} allowed {n} times", l.tokens[i].id))
        .collect();
    l.violations.extend(twice);
}

/// Proves the nodes recovered without a restart: through each node, a Mint, Downscope and
/// Revoke on a transaction of `shard` (the one that failed over) all acknowledged, retried
/// while UNAVAILABLE within [`DEADLINE`]. Returns the attempts it took.
async fn recovered(nodes: &[Node], shard: &Shard) -> usize {
    let mut attempts = 0;
    for (n, node) in nodes.iter().enumerate() {
        let end = Instant::now() + DEADLINE;
        loop {
            attempts += 1;
            let done = async {
                let root = node.mint(root_request()).await?;
                let txn = token_info(&root).txn.clone();
                if !shard.serves(txn_slot(&txn)) {
                    return Ok::<bool, ClientError>(false);
                }
                let kid = node.downscope(payments_child(&root.token)).await?;
                node.revoke("payments", revoke_token(&kid.token, "recovered"))
                    .await?;
                Ok(true)
            }
            .await;
            match done {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) if e.code() == Some(Code::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("node {n} after recovery: {e}"),
            }
            assert!(
                Instant::now() < end,
                "node {n} did not recover within {DEADLINE:?}"
            );
        }
    }
    attempts
}

fn token_info(m: &pb::MintResponse) -> &pb::TokenInfo {
    m.info.as_ref().expect("a minted token comes with its info")
}

/// Prints the figures, then fails on any violation or on an error other than
/// UNAVAILABLE.
fn report(name: &str, run: &Run, shard: &Shard, extra: &[String]) {
    let l = run.ledger();
    let on_shard = l
        .tokens
        .iter()
        .filter(|t| shard.serves(txn_slot(&t.txn)))
        .count();
    let single = l.tokens.iter().filter(|t| t.single_use).count();
    let allowed_once = l.allowed.values().filter(|&&n| n == 1).count();
    let revoked_ack = (0..l.tokens.len())
        .filter(|&i| l.revoked(i) == Ack::Yes)
        .count();
    eprintln!("== {name}");
    eprintln!("rounds run: {}", l.rounds);
    eprintln!("operations acknowledged: {:?}", l.acked);
    eprintln!(
        "tokens acknowledged: {} ({} on the faulty shard, master {}), single-use: {single} ({allowed_once} allowed exactly once), revoked by an acknowledged revocation: {revoked_ack}",
        l.tokens.len(),
        on_shard,
        shard.master
    );
    eprintln!("answers checked after the fault: {}", l.checked);
    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    for ((phase, op, code), n) in &l.errors {
        eprintln!("errors: {phase:?} {op}: {code} × {n}");
        *by_code.entry(code.as_str()).or_default() += n;
    }
    eprintln!("errors by code: {by_code:?}");
    for line in extra {
        eprintln!("{line}");
    }
    eprintln!(
        "lost or contradicted: {} {:?}",
        l.violations.len(),
        l.violations
    );
    assert!(
        l.violations.is_empty(),
        "{name}: answers contradict what was acknowledged:\n{}",
        l.violations.join("\n")
    );
    let other: Vec<_> = by_code.keys().filter(|c| **c != "Unavailable").collect();
    assert!(
        other.is_empty(),
        "{name}: errors other than UNAVAILABLE: {other:?} ({:?})",
        l.errors
    );
    assert!(
        on_shard > 0,
        "{name}: no acknowledged token on the faulty shard"
    );
}

/// A key of `shard`'s slots (for `master-of`).
fn key_of(shard: &Shard) -> String {
    (0..)
        .map(|i| format!("probe{i}"))
        .find(|k| shard.serves(writ_e2e::redis::key_slot(k.as_bytes())))
        .expect("some key hashes into the shard")
}

/// Waits until `shard`'s slots are served by `by` (its promoted replica).
async fn wait_promoted(cluster: &Arc<FaultCluster>, shard: &Shard, by: u16) {
    let key = key_of(shard);
    let c = cluster.clone();
    wait_for_cluster(&format!("replica {by} promoted"), move || {
        c.master_of(&key) == Some(by)
    })
    .await;
}

async fn wait_healthy(cluster: &Arc<FaultCluster>) {
    let c = cluster.clone();
    wait_for_cluster("every shard with a linked replica", move || c.healthy()).await;
}

/// The victim: a master, its slots and its replica.
fn victim(cluster: &FaultCluster) -> (Shard, u16) {
    let shard = cluster
        .shards()
        .into_iter()
        .next()
        .expect("the cluster has masters");
    let replica = cluster
        .replica_of(shard.master)
        .expect("the master has a linked replica");
    (shard, replica)
}

// ---- the tests ----

/// A master killed (SIGKILL) during mixed load through three Writ nodes, just after its
/// replica fell behind for 0.3 s; the replica is promoted; the killed node restarted
/// rejoins as the shard's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_during_mixed_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let cluster = Arc::new(FaultCluster::start(NODE_TIMEOUT_MS));
    let (_servers, nodes) = three_nodes(&cluster).await;
    let run = Run::new();
    let workers = start_load(&run, &nodes, 6);
    run.wait_rounds(18).await;

    let (shard, replica) = victim(&cluster);
    // The replica lags for a moment (its stream held back), so writes in flight reach
    // only the master when it dies: what WAIT must not acknowledge.
    let c = cluster.clone();
    let tag = key_of(&shard);
    let master = shard.master;
    tokio::task::spawn_blocking(move || c.stall_replica(master, replica, &tag))
        .await
        .expect("stalling the replica");
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.enter(Phase::Failover);
    let killed_at = Instant::now();
    cluster.kill(shard.master);
    cluster.signal(replica, "CONT");
    wait_promoted(&cluster, &shard, replica).await;
    let failover = killed_at.elapsed();
    run.enter(Phase::Degraded);
    run.wait_rounds(6).await;
    cluster.restart(shard.master);
    wait_healthy(&cluster).await;
    let degraded = killed_at.elapsed();
    run.enter(Phase::After);
    run.wait_rounds(12).await;
    stop_load(&run, workers).await;

    let attempts = recovered(&nodes, &shard).await;
    verify(&run, &nodes).await;
    let window_errors: usize = run
        .ledger()
        .errors
        .iter()
        .filter(|((p, _, _), _)| matches!(p, Phase::Failover | Phase::Degraded))
        .map(|(_, n)| n)
        .sum();
    report(
        "a master killed during mixed load",
        &run,
        &shard,
        &[
            format!(
                "killed master {} at {:?} (its replica stalled 0.3 s before); replica {replica} promoted after {failover:?}; replica back after {degraded:?}",
                shard.master,
                killed_at - started
            ),
            format!("recovery without restart: {attempts} attempts through 3 nodes"),
            format!("wall time: {:?}", started.elapsed()),
        ],
    );
    assert!(
        window_errors > 0,
        "the failover window answered no error: the fault was not felt"
    );
}

/// A master stopped (SIGSTOP) for longer than the node timeout during mixed load: its
/// replica is promoted while it sleeps; continued (SIGCONT), it is a stale master until
/// it learns of the promotion. Nothing acknowledged may be lost, no revoked token may be
/// active again, no single use allowed twice, also in the moments after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_master_stopped_and_continued_lets_nothing_acknowledged_be_undone() {
    let started = Instant::now();
    let cluster = Arc::new(FaultCluster::start(NODE_TIMEOUT_MS));
    let (_servers, nodes) = three_nodes(&cluster).await;
    let run = Run::new();
    let workers = start_load(&run, &nodes, 6);
    run.wait_rounds(18).await;

    let (shard, replica) = victim(&cluster);
    run.enter(Phase::Failover);
    let stopped_at = Instant::now();
    cluster.signal(shard.master, "STOP");
    wait_promoted(&cluster, &shard, replica).await;
    let failover = stopped_at.elapsed();
    run.enter(Phase::Degraded);
    cluster.signal(shard.master, "CONT");
    // The stale master's moments: everything revoked or spent so far, asked through every
    // node while the old master wakes up and learns it was replaced.
    let mut stale_checks = 0;
    let stale_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < stale_end {
        let count = run.ledger().tokens.len();
        for i in 0..count {
            let (t, revoked) = {
                let l = run.ledger();
                (l.tokens[i].clone(), l.revoked(i))
            };
            if revoked != Ack::Yes && !(t.single_use && t.used == Ack::Yes) {
                continue;
            }
            let node = &nodes[stale_checks % nodes.len()];
            stale_checks += 1;
            let phase = run.phase();
            let answer = node.validate(t.holder, introspect(&t.secret)).await;
            if let Some(v) = run.note("validate", phase, answer) {
                let mut l = run.ledger();
                l.checked += 1;
                if let Some(bad) = l.judge(i, &v) {
                    l.violations.push(format!("after SIGCONT: {bad}"));
                }
            }
        }
    }
    wait_healthy(&cluster).await;
    let degraded = stopped_at.elapsed();
    run.enter(Phase::After);
    run.wait_rounds(12).await;
    stop_load(&run, workers).await;

    let attempts = recovered(&nodes, &shard).await;
    verify(&run, &nodes).await;
    report(
        "a stale master (SIGSTOP past the node timeout, then SIGCONT)",
        &run,
        &shard,
        &[
            format!(
                "stopped master {} at {:?}; replica {replica} promoted after {failover:?}; the old master a replica again after {degraded:?}",
                shard.master,
                stopped_at - started
            ),
            format!("revoked or spent tokens asked during the 2 s after SIGCONT: {stale_checks}"),
            format!("recovery without restart: {attempts} attempts through 3 nodes"),
            format!("wall time: {:?}", started.elapsed()),
        ],
    );
}

/// One revocation of the burst: its target, who sends it, and what it covers.
#[derive(Clone)]
enum Revocation {
    /// A token revoked by its holder.
    Holder(usize),
    /// A transaction revoked by an operator (its root's index).
    Txn(usize),
}

/// A master killed during a burst of revocations, while its replica lags (stopped for a
/// moment): the revocations in flight reached only the master. Every acknowledged
/// revocation stays; every one that failed is revoked or active, and succeeds when retried
/// after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_during_a_burst_of_revocations_undoes_none_acknowledged() {
    let started = Instant::now();
    let cluster = Arc::new(FaultCluster::start(NODE_TIMEOUT_MS));
    let (_servers, nodes) = three_nodes(&cluster).await;
    let run = Run::new();

    // 150 transactions of three tokens, acknowledged before the fault.
    let txns = 150;
    let mut setup = Vec::new();
    for k in 0..6 {
        let (run, nodes) = (run.clone(), nodes.clone());
        setup.push(tokio::spawn(async move {
            for j in (k..txns).step_by(6) {
                let node = &nodes[j % nodes.len()];
                let (root, _) = settled("minting", || node.mint(root_request())).await;
                let root_i = run.track(tracked(root.token.clone(), root.info, "planner"));
                for (req, holder) in [
                    (
                        child(
                            &root.token,
                            build::agent("booking"),
                            &[],
                            &["trips:book"],
                            vec![],
                        ),
                        "booking",
                    ),
                    (payments_child(&root.token), "payments"),
                ] {
                    let (kid, _) = settled("downscoping", || node.downscope(req.clone())).await;
                    let mut t = tracked(kid.token, kid.info, holder);
                    t.parent = Some(root_i);
                    run.track(t);
                }
            }
        }));
    }
    for s in setup {
        s.await.expect("setup task");
    }
    let jobs: Vec<Revocation> = {
        let l = run.ledger();
        let roots: Vec<usize> = (0..l.tokens.len())
            .filter(|&i| l.tokens[i].parent.is_none())
            .collect();
        roots
            .iter()
            .enumerate()
            .map(|(j, &root)| match j % 3 {
                0 => Revocation::Holder(root),
                // Its booking child (the setup tasks' tokens interleave in the ledger).
                1 => Revocation::Holder(
                    (0..l.tokens.len())
                        .find(|&i| {
                            l.tokens[i].parent == Some(root) && l.tokens[i].holder == "booking"
                        })
                        .expect("every root has a booking child"),
                ),
                _ => Revocation::Txn(root),
            })
            .collect()
    };
    let jobs = Arc::new(jobs);
    // Each job's revoked ack, kept by job index.
    let outcomes: Arc<Mutex<Vec<Ack>>> = Arc::new(Mutex::new(vec![Ack::No; jobs.len()]));
    let next = Arc::new(AtomicUsize::new(0));

    let (shard, replica) = victim(&cluster);
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let (run, nodes, next, outcomes, jobs) = (
                run.clone(),
                nodes.clone(),
                next.clone(),
                outcomes.clone(),
                jobs.clone(),
            );
            async move {
                loop {
                    let j = next.fetch_add(1, Ordering::SeqCst);
                    if j >= jobs.len() {
                        return;
                    }
                    let phase = run.phase();
                    run.in_flight.fetch_add(1, Ordering::SeqCst);
                    let node = nodes[j % nodes.len()].clone();
                    let answer = send_revocation(&run, &jobs[j], node).await;
                    run.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let ack = match run.note("revoke", phase, answer) {
                        Some(_) => Ack::Yes,
                        None => Ack::Maybe,
                    };
                    outcomes.lock().unwrap_or_else(PoisonError::into_inner)[j] = ack;
                    run.ledger().rounds += 1;
                }
            }
        })
        .collect();
    let fault = async {
        run.wait_rounds(20).await;
        // The replica lags: what the master takes now reaches only the master.
        let c = cluster.clone();
        let tag = key_of(&shard);
        let master = shard.master;
        tokio::task::spawn_blocking(move || c.stall_replica(master, replica, &tag))
            .await
            .expect("stalling the replica");
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.enter(Phase::Failover);
        let in_flight = run.in_flight.load(Ordering::SeqCst);
        let done = run.rounds();
        cluster.kill(shard.master);
        cluster.signal(replica, "CONT");
        (in_flight, done, Instant::now())
    };
    let (_, (in_flight, done_at_kill, killed_at)) = tokio::join!(futures_join_all(burst), fault);
    wait_promoted(&cluster, &shard, replica).await;
    let failover = killed_at.elapsed();
    run.enter(Phase::Degraded);
    cluster.restart(shard.master);
    wait_healthy(&cluster).await;
    run.enter(Phase::After);

    // What each job's outcome means for its tokens.
    let outcomes = outcomes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (j, ack) in outcomes.iter().enumerate() {
        let (Revocation::Holder(i) | Revocation::Txn(i)) = jobs[j];
        run.ledger().tokens[i].revoked = *ack;
    }
    // Errored revocations as they stand: revoked or active, both fine; then retried.
    let mut errored_revoked = 0;
    let mut errored_active = 0;
    let mut retry_attempts = 0;
    for (j, ack) in outcomes.iter().enumerate() {
        if *ack != Ack::Maybe {
            continue;
        }
        let (Revocation::Holder(i) | Revocation::Txn(i)) = jobs[j];
        let t = run.tracked(i);
        let node = &nodes[j % nodes.len()];
        let (v, _) = settled("validating an errored revocation's target", || {
            node.validate(t.holder, introspect(&t.secret))
        })
        .await;
        match (v.active, InactiveReason::try_from(v.inactive_reason)) {
            (true, _) => errored_active += 1,
            (false, Ok(InactiveReason::Revoked)) => errored_revoked += 1,
            other => panic!("an errored revocation's target answered {other:?}"),
        }
        let (_, attempts) = settled("retrying an errored revocation", || {
            send_revocation(&run, &jobs[j], node.clone())
        })
        .await;
        retry_attempts += attempts;
        run.ledger().tokens[i].revoked = Ack::Yes;
    }
    verify(&run, &nodes).await;
    let errored = outcomes.iter().filter(|a| **a == Ack::Maybe).count();
    report(
        "a master killed during a burst of revocations",
        &run,
        &shard,
        &[
            format!(
                "revocations: {} sent, {} acknowledged, {errored} errored ({errored_revoked} revoked anyway, {errored_active} still active), all {errored} acknowledged when retried after recovery ({retry_attempts} attempts)",
                jobs.len(),
                outcomes.iter().filter(|a| **a == Ack::Yes).count(),
            ),
            format!(
                "replica {replica} stalled 0.3 s (stopped, its stream held back), then master {} killed with {in_flight} revocations in flight ({done_at_kill} answered before); promoted after {failover:?}",
                shard.master
            ),
            format!("wall time: {:?}", started.elapsed()),
        ],
    );
    assert!(
        errored > 0,
        "no revocation failed: the master's death was not felt"
    );
}

/// Sends one revocation of the burst through `node`.
async fn send_revocation(
    run: &Run,
    job: &Revocation,
    node: Node,
) -> Result<pb::RevokeResponse, ClientError> {
    match *job {
        Revocation::Holder(i) => {
            let t = run.tracked(i);
            node.revoke(t.holder, revoke_token(&t.secret, "burst"))
                .await
        }
        Revocation::Txn(i) => {
            let t = run.tracked(i);
            node.revoke("operator", revoke_txn(&t.txn, "burst")).await
        }
    }
}

/// Runs futures to completion side by side.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(fs: Vec<F>) {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("a burst task panicked");
    }
}

/// While a shard's only replica is stalled, a write reaches only its master and must not
/// be acknowledged, and neither may an answer read from such a write. Revoke by the
/// holder: the first attempt fails (its WAIT times out) but leaves the token revoked on the
/// master; the retry must not answer "revoked already" before the replica holds it.
/// The master then dies and the promoted replica never held that write: an acknowledged
/// revocation would be undone. (Fails on a base without the store's sync barrier.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_retried_while_the_replica_lags_is_acknowledged_only_once_replicated() {
    unreplicated_answers(
        "a revocation retried while the replica lags",
        Retried::Revoke,
    )
    .await;
}

/// The same for Downscope under an idempotency key: the retry finds the child the first
/// attempt stored on the master only, and must not return it before the replica holds it;
/// otherwise the acknowledged child is lost when the master dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_downscope_retried_while_the_replica_lags_is_acknowledged_only_once_replicated() {
    unreplicated_answers(
        "a keyed downscope retried while the replica lags",
        Retried::Downscope,
    )
    .await;
}

/// The same for Mint under an idempotency key (subjects and audiences varied, as their
/// listing entries are written first, each on its own shard): the retry finds the root the
/// first attempt stored on the master only. Only the transactions that land on the stalled
/// shard can show it (about a third). A retry must also never answer anything but the
/// token or UNAVAILABLE (on this base a keyed Mint retry can answer ABORTED: CONFLICT).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_mint_retried_while_the_replica_lags_is_acknowledged_only_once_replicated() {
    unreplicated_answers("a keyed mint retried while the replica lags", Retried::Mint).await;
}

/// The child audiences of [`unreplicated_answers`], one per root.
const AUDIENCES: [&str; 10] = [
    "svc0", "svc1", "svc2", "svc3", "svc4", "svc5", "svc6", "svc7", "svc8", "svc9",
];

/// What [`unreplicated_answers`] sends twice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retried {
    Revoke,
    Downscope,
    Mint,
}

async fn unreplicated_answers(name: &str, what: Retried) {
    let started = Instant::now();
    let cluster = Arc::new(FaultCluster::start(NODE_TIMEOUT_MS));
    let (servers, nodes) = three_nodes(&cluster).await;
    let node = &nodes[0];
    let run = Run::new();
    let (shard, replica) = match what {
        Retried::Mint => {
            // Every Mint also enters the minter's party index, one key on one shard: a
            // victim that holds it would refuse every Mint before its transaction.
            settled("minting", || node.mint(root_request())).await;
            let pattern = format!("{}:ix:p:*", servers[0].config().storage.redis.prefix);
            let shard = cluster
                .shards()
                .into_iter()
                .find(|s| {
                    cluster
                        .cli(s.master, &["--scan", "--pattern", &pattern])
                        .is_some_and(|keys| keys.trim().is_empty())
                })
                .expect("a shard without party index keys");
            let replica = cluster
                .replica_of(shard.master)
                .expect("the master has a linked replica");
            (shard, replica)
        }
        _ => victim(&cluster),
    };

    // Roots whose transactions live on the victim's shard, each with a child audience
    // of its own: a Downscope also writes its audience's listing entry, on whichever
    // shard that key hashes to, so the audiences vary.
    let mut roots = Vec::new();
    let root = pb::MintRequest {
        targets: strings(&AUDIENCES),
        ..root_request()
    };
    while roots.len() < AUDIENCES.len() {
        let (root, _) = settled("minting", || node.mint(root.clone())).await;
        if shard.serves(txn_slot(&token_info(&root).txn)) {
            roots.push(run.track(tracked(root.token.clone(), root.info, "planner")));
        }
    }

    let junk = cluster.stall_replica(shard.master, replica, &key_of(&shard));
    let stalled = Instant::now();
    run.enter(Phase::Failover);
    // Each root revoked by its holder, then again; or each deriving a child under an
    // idempotency key, then the same request again.
    let sends = match what {
        Retried::Mint => 30,
        _ => roots.len(),
    };
    let attempts: Vec<_> = (0..sends)
        .map(|n| {
            let i = roots[n % roots.len()];
            let (t, node) = (run.tracked(i), node.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut issued = None;
                let audience = AUDIENCES[n % AUDIENCES.len()];
                let mint = pb::MintRequest {
                    subject: format!("user{n}"),
                    audience: Some(build::agent(audience)),
                    idempotency_key: format!("faults-retry-{n}-{}", rand::random::<u64>()),
                    ..root_request()
                };
                let req = pb::DownscopeRequest {
                    idempotency_key: format!("faults-retry-{n}-{}", rand::random::<u64>()),
                    ..child(
                        &t.secret,
                        build::workload(audience),
                        &[],
                        &["payments:charge"],
                        vec![],
                    )
                };
                for _ in 0..2 {
                    let answer = match what {
                        Retried::Revoke => node
                            .revoke("planner", revoke_token(&t.secret, "unreplicated"))
                            .await
                            .map(|_| ()),
                        Retried::Downscope => node.downscope(req.clone()).await.map(|kid| {
                            issued = Some(tracked(kid.token, kid.info, audience));
                        }),
                        Retried::Mint => node.mint(mint.clone()).await.map(|root| {
                            issued = Some(tracked(root.token, root.info, audience));
                        }),
                    };
                    answers.push(answer);
                }
                (i, answers, issued)
            })
        })
        .collect();
    let mut results = Vec::new();
    for a in attempts {
        results.push(a.await.expect("an attempt task panicked"));
    }
    let stalled_for = stalled.elapsed();
    cluster.kill(shard.master);
    cluster.signal(replica, "CONT");
    let mut acknowledged = Vec::new();
    for (i, answers, issued) in results {
        let ok = answers.iter().any(Result::is_ok);
        for a in answers {
            run.note("while the replica lagged", Phase::Failover, a);
        }
        if !ok {
            // Sent, never acknowledged: revoked or not, both fine.
            if what == Retried::Revoke {
                run.ledger().tokens[i].revoked = Ack::Maybe;
            }
            continue;
        }
        match issued {
            None => {
                run.ledger().tokens[i].revoked = Ack::Yes;
                acknowledged.push(format!("revocation of {}", run.tracked(i).id));
            }
            Some(mut t) => {
                if what == Retried::Downscope {
                    t.parent = Some(i);
                }
                if shard.serves(txn_slot(&t.txn)) {
                    acknowledged.push(format!("{} {}", t.holder, t.id));
                }
                run.track(t);
            }
        }
    }
    wait_promoted(&cluster, &shard, replica).await;
    run.enter(Phase::Degraded);
    cluster.restart(shard.master);
    wait_healthy(&cluster).await;
    run.enter(Phase::After);
    verify(&run, &nodes).await;
    report(
        name,
        &run,
        &shard,
        &[
            format!(
                "replica {replica} stalled ({junk} MiB of junk held its stream back), master {} killed {stalled_for:?} later; acknowledged meanwhile on its shard: {acknowledged:?}",
                shard.master
            ),
            format!("wall time: {:?}", started.elapsed()),
        ],
    );
}
