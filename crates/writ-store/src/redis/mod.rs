//! [`RedisStore`]: a [`TokenStore`] on a Redis Cluster, so several stateless Writ nodes
//! share one trust domain's tokens.
//!
//! Every key of one transaction carries the transaction's hash tag (see `keys`), so a
//! transaction lives on one shard. A mutation reads what it needs, applies the shared rule
//! of `api` in Rust (`admit_child`, `mark_revoked`, the party walk, `spend_use`, the
//! consent transitions), and writes the result with one server-side function
//! (`writ.lua`'s `writ_apply`) that refuses a write computed from a version of the
//! transaction that is no longer current; the store then reads again (optimistic
//! concurrency per transaction, where RocksStore holds a lock). Mutations of one
//! transaction from this process still queue on a lock striped by transaction, so they do
//! not make each other retry; across Writ nodes the version check alone serialises them.
//!
//! Durability: every write that changes a token, a use, a consent or a party is sent in
//! one pipeline with `WAIT <required_replicas> <ack_timeout>` on the same connection, and
//! is acknowledged only when that many replicas have it; otherwise the call fails
//! ([`StoreError::Backend`], answered `UNAVAILABLE`) and the caller retries (Mint and
//! Downscope under their idempotency key, Revoke as it is). The cluster's nodes run with
//! `appendfsync always` and `min-replicas-to-write` (see `scripts/redis-cluster` and
//! `deploy/`). A `WAIT` blocks its connection, so durable writes go through a small pool
//! of connections of their own and reads never queue behind one. The client re-sends a
//! command whose connection dropped; each write carries a nonce, and `writ_apply`
//! recognises one it already applied, so a re-sent write never applies twice.
//!
//! Expiry is Redis's own: every key of a transaction expires `retention` after its root
//! (a child never outlives its parent), events `event_retention` after the last one, so
//! the purge calls of [`TokenStore`] have nothing to do. What Writ caches is immutable:
//! the `(transaction, record)` of a token id. A token's state is read from its shard's
//! master on every call, so a revocation through one Writ node is seen by every other at
//! once.
//!
//! Layout, by concern: this file connects, holds the primitives (the durable write, the
//! transaction write, the striped lock, the record cache) and implements [`TokenStore`]
//! by calling `tokens` (records, states, children, uses), `revoke` (subtrees and the kill
//! switch), `listing` (indexes and listings), `audit` (the trail, statistics) and
//! `consent`. Key names are `keys`' alone; record bytes `codec`'s.

mod audit;
mod check;
mod consent;
mod feed;
mod keys;
mod listing;
mod revoke;
mod tokens;

#[cfg(test)]
mod tests;

use crate::api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, PartyRevoked, PurgeStats, RevokeTarget,
    Revoked, StoreError, StoreStats, TokenStore, TreeEntry, TxnPage, TxnQuery, UseOutcome,
};
pub use feed::{FeedCursor, FeedRead};
use keys::Keys;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Pipeline, RedisError, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;
use writ_core::{
    Actor, ConsentId, ConsentRequest, Decision, Event, EventId, PartyDisable, TokenId, TokenRecord,
    TokenState, TxnId, UnixMillis,
};

/// The function library every master must hold (loaded when the store connects, and
/// again if a node answers that it lacks it).
const FUNCTIONS: &str = include_str!("writ.lua");

/// The version of [`FUNCTIONS`], in the library's name and in every function's: nodes of
/// two releases side by side in a rolling upgrade each call their own functions, and a
/// node never replaces the library another node runs on. Bump it with any change to
/// `writ.lua`, and record the file's new digest in [`FUNCTIONS_DIGEST`] (a test holds the
/// two together).
const FUNCTIONS_VERSION: u32 = 2;

/// BLAKE3 of `writ.lua` at [`FUNCTIONS_VERSION`].
#[cfg(test)]
const FUNCTIONS_DIGEST: &str = "181f745b01f1a8c5a07a0ac2aa8a69ff235e9ad3c8e2c42631a4af5c9cae97df";

/// The name under which the library registers function `name`.
fn function(name: &str) -> String {
    format!("writ_{name}_v{FUNCTIONS_VERSION}")
}

/// How often a mutation reads again after its transaction changed under it before it
/// gives up ([`StoreError::Backend`]): only other Writ nodes' writes to the same
/// transaction can make it retry.
const MAX_ATTEMPTS: usize = 64;

/// How the store reaches its cluster and what it waits for.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Seed nodes (`redis://host:port`, or `rediss://host:port` for TLS); the rest of the
    /// cluster is discovered and reached the same way.
    pub nodes: Vec<String>,
    /// Certificates for `rediss://` nodes: the CA the nodes' certificates chain to (else
    /// the system's roots) and a client certificate (for `tls-auth-clients`).
    pub tls: RedisTls,
    /// The ACL user and password every connection authenticates as (`None`: Redis's
    /// `default` user, with the password if one is given).
    pub auth: RedisAuth,
    /// Namespace of every key (letters, digits, `-`, `_`, `.`).
    pub prefix: String,
    /// Replicas that must hold a write (`WAIT`) before it is acknowledged: the number of
    /// replicas per shard, so the replica a failover promotes has every acknowledged write.
    /// 0 acknowledges on the master's word alone (a single-node development cluster).
    pub required_replicas: u32,
    /// How long a write waits for its replicas before it fails unacknowledged.
    pub ack_timeout: Duration,
    /// Budget of one command, retries included (must exceed `ack_timeout`).
    pub response_timeout: Duration,
    /// Connections reserved for durable writes (each carries one `WAIT` at a time).
    pub write_connections: usize,
    /// How long a transaction's keys live past its root's expiry (investigation,
    /// idempotent retries).
    pub retention: Duration,
    /// How long a transaction's audit events live past the last one.
    pub event_retention: Duration,
    /// Let keys expire. Off only for tests whose records carry fixed, past timestamps.
    pub key_expiry: bool,
    /// How far back the listing indexes reach: entries of transactions minted longer ago
    /// are dropped as new ones arrive. At least the longest token lifetime plus
    /// `retention` (nothing older is stored).
    pub index_horizon: Duration,
    /// Most token records cached in memory (immutable; 0: no cache).
    pub record_cache: usize,
    /// Most bytes of (encoded) records cached in memory: records are up to about 48 KiB
    /// each, so the count alone does not bound the cache's memory.
    pub record_cache_bytes: usize,
    /// About how many entries the live feed of audit events across nodes keeps (a
    /// node that falls further behind ends its watchers).
    pub feed_entries: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            nodes: vec!["redis://127.0.0.1:7001".to_owned()],
            tls: RedisTls::default(),
            auth: RedisAuth::default(),
            prefix: "writ".to_owned(),
            required_replicas: 1,
            ack_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(3),
            write_connections: 16,
            retention: Duration::from_secs(3600),
            event_retention: Duration::from_secs(30 * 86_400),
            key_expiry: true,
            index_horizon: Duration::from_secs(2 * 86_400),
            record_cache: 100_000,
            record_cache_bytes: 128 << 20,
            feed_entries: 50_000,
        }
    }
}

/// PEM certificates for a cluster reached over TLS. Never printed.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA certificates the nodes' certificates must chain to; `None`: the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The client's certificate chain and private key, presented to the nodes.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("client", &self.client.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The credentials of every connection (Redis `AUTH`). The password is never printed.
#[derive(Clone, Default)]
pub struct RedisAuth {
    /// An ACL user; `None`: `default`.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The Redis Cluster store. Clones share one set of connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Keys,
    opts: RedisOptions,
    /// Reads (never blocked behind a `WAIT`).
    read: ClusterConnection,
    /// Durable writes, round-robin.
    writes: Vec<ClusterConnection>,
    /// The live feed's blocking reads (never ahead of anything else).
    feed: ClusterConnection,
    /// This process among the nodes announcing on the feed.
    origin: u64,
    next_write: AtomicUsize,
    /// Per-transaction serialisation within this process.
    stripes: Vec<AsyncMutex<()>>,
    stripe_hasher: RandomState,
    cache: RecordCache,
    /// Days already entered in the days index by this process.
    days: Mutex<HashSet<u64>>,
    /// Index buckets whose shard lately refused a write for want of replicas, and when:
    /// skipped for a while, since each refusal costs `ack_timeout` (the `WAIT` pipelined
    /// after the write runs anyway).
    refused_buckets: Mutex<HashMap<String, std::time::Instant>>,
    /// The greatest event id this process stored, and the greatest it has raised the
    /// cluster's high-water mark to.
    high_water: AtomicU64,
    high_water_stored: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.inner.opts.nodes.iter().map(|n| redact(n)).collect();
        f.debug_struct("RedisStore")
            .field("nodes", &nodes)
            .field("prefix", &self.inner.opts.prefix)
            .finish_non_exhaustive()
    }
}

/// A node URL fit for logs: any credentials (`redis://user:password@host`) replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// How a durable write that its replicas did not acknowledge in time ends its message.
const UNREPLICATED: &str = "not acknowledged";

/// Whether a durable write failed only because its shard could not acknowledge it with
/// the required replicas (the master refused it, `NOREPLICAS`, or `WAIT` fell short):
/// the shard answers, but has no replica to hold what it writes.
fn unreplicated(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(m) if m.ends_with(UNREPLICATED) || m.contains("NOREPLICAS"))
}

fn backend(e: RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// A count for `LIMIT` (Redis takes a signed 64-bit integer).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A reply of an unexpected shape.
fn reply_error(e: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: unexpected reply: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisStore {
    /// Connects to the cluster, checks that its shape and settings are ones the store's
    /// guarantees hold on (see `check`), loads Writ's functions on every master and starts
    /// the task that keeps the audit trail's high-water mark.
    pub async fn connect(opts: RedisOptions) -> Result<RedisStore, StoreError> {
        if !keys::valid_prefix(&opts.prefix) {
            return Err(StoreError::Backend(format!(
                "redis prefix {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                opts.prefix
            )));
        }
        if opts.nodes.is_empty() {
            return Err(StoreError::Backend("redis: no seed nodes".into()));
        }
        if opts.response_timeout <= opts.ack_timeout {
            return Err(StoreError::Backend(
                "redis: the response timeout must exceed the acknowledgement timeout".into(),
            ));
        }
        let tls = opts.nodes.iter().all(|n| n.starts_with("rediss://"));
        if !tls && opts.nodes.iter().any(|n| n.starts_with("rediss://")) {
            return Err(StoreError::Backend(
                "redis: the seed nodes mix redis:// and rediss://; use one scheme".into(),
            ));
        }
        if !tls && (opts.tls.ca_pem.is_some() || opts.tls.client.is_some()) {
            return Err(StoreError::Backend(
                "redis: certificates are set but the seed nodes are not rediss:// URLs".into(),
            ));
        }
        let mut builder = ClusterClientBuilder::new(opts.nodes.clone())
            .connection_timeout(Duration::from_secs(2).min(opts.response_timeout))
            .response_timeout(opts.response_timeout)
            .retries(3);
        if tls {
            // redis builds its rustls configuration on the process's provider: make it
            // ring, Writ's one provider, unless the process chose already.
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            builder =
                builder.certs(redis::TlsCertificates {
                    client_tls: opts.tls.client.as_ref().map(|(cert, key)| {
                        redis::ClientTlsConfig {
                            client_cert: cert.clone(),
                            client_key: key.clone(),
                        }
                    }),
                    root_cert: opts.tls.ca_pem.clone(),
                });
        }
        if let Some(user) = &opts.auth.username {
            builder = builder.username(user);
        }
        if let Some(password) = &opts.auth.password {
            builder = builder.password(password);
        }
        let client = builder.build().map_err(backend)?;
        let mut read = client.get_async_connection().await.map_err(backend)?;
        let mut writes = Vec::new();
        for _ in 0..opts.write_connections.max(1) {
            writes.push(client.get_async_connection().await.map_err(backend)?);
        }
        let feed = client.get_async_connection().await.map_err(backend)?;
        check::verify(&mut read, &opts).await?;
        load_functions(&mut read).await?;
        let inner = Arc::new(Inner {
            keys: Keys::new(&opts.prefix),
            stripes: (0..256).map(|_| AsyncMutex::new(())).collect(),
            stripe_hasher: RandomState::new(),
            cache: RecordCache::new(opts.record_cache, opts.record_cache_bytes),
            days: Mutex::default(),
            refused_buckets: Mutex::default(),
            high_water: AtomicU64::new(0),
            high_water_stored: AtomicU64::new(0),
            next_write: AtomicUsize::new(0),
            read,
            writes,
            feed,
            origin: rand::random(),
            opts,
        });
        tokio::spawn(audit::keep_high_water(Arc::downgrade(&inner)));
        let store = RedisStore { inner };
        store.open_feed().await?;
        Ok(store)
    }

    /// The options the store was connected with.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }

    /// Records a used client assertion's `key` until `until` unless it is recorded:
    /// `Ok(true)` the first time, `Ok(false)` while it is. Acknowledged by the replicas
    /// like a revocation: a record lost in a failover would let the assertion be used
    /// once more.
    pub async fn first_use(&self, key: [u8; 32], until: UnixMillis) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.keys.assertion(&key))
            .arg(1)
            .arg("NX")
            .arg("PXAT")
            .arg(until.0.max(1));
        let set: Option<String> = self.inner.durable(cmd).await?;
        Ok(set.is_some())
    }
}

/// Loads this version's library on every master that lacks it (routed to every master by
/// the client; replicas receive it through replication). Never `REPLACE`: a library of
/// this version is this code (see [`FUNCTIONS_VERSION`]), and another version's belongs
/// to other nodes.
async fn load_functions(conn: &mut ClusterConnection) -> Result<(), StoreError> {
    let loaded: Result<Value, RedisError> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(FUNCTIONS)
        .query_async(conn)
        .await;
    match loaded {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// What a transaction write found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// Written (by this call, or by an earlier send of it).
    Applied,
    /// The transaction changed since it was read: read again.
    Stale,
}

/// One transaction's atomic write, for `writ_apply`: every key in the transaction's slot.
struct TxnWrite {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

/// Field-value pairs per `HSET` (Lua's `unpack` takes at most a few thousand values).
const CHUNK: usize = 256;

impl TxnWrite {
    fn new(keys: &Keys, txn: TxnId) -> TxnWrite {
        TxnWrite {
            keys: vec![keys.meta(txn), keys.ops(txn)],
            args: Vec::new(),
        }
    }

    fn key_index(&mut self, key: String) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i + 1,
            None => {
                self.keys.push(key);
                self.keys.len()
            }
        }
    }

    fn op(&mut self, op: &str, key: String, expire_at: u64, args: Vec<Vec<u8>>) {
        let index = self.key_index(key);
        self.args.push(op.as_bytes().to_vec());
        self.args.push(index.to_string().into_bytes());
        self.args.push(expire_at.to_string().into_bytes());
        self.args.push(args.len().to_string().into_bytes());
        self.args.extend(args);
    }

    /// `HSET key field value …`, in chunks.
    fn hset(&mut self, key: &str, expire_at: u64, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut pairs = pairs.into_iter().peekable();
        while pairs.peek().is_some() {
            let args = pairs
                .by_ref()
                .take(CHUNK)
                .flat_map(|(f, v)| [f, v])
                .collect();
            self.op("HSET", key.to_owned(), expire_at, args);
        }
    }

    /// `ZADD key score member`.
    fn zadd(&mut self, key: &str, expire_at: u64, score: u64, member: Vec<u8>) {
        self.op(
            "ZADD",
            key.to_owned(),
            expire_at,
            vec![score.to_string().into_bytes(), member],
        );
    }
}

/// A fresh nonce for one logical write (kept across its retries).
fn nonce() -> Vec<u8> {
    // Hex, so the version it becomes reads back as a string.
    hex::encode(rand::random::<[u8; 16]>()).into_bytes()
}

impl Inner {
    fn write_conn(&self) -> ClusterConnection {
        let i = self.next_write.fetch_add(1, Ordering::Relaxed) % self.writes.len();
        self.writes[i].clone()
    }

    fn read_conn(&self) -> ClusterConnection {
        self.read.clone()
    }

    fn feed_conn(&self) -> ClusterConnection {
        self.feed.clone()
    }

    /// This process's serialisation of one transaction's mutations.
    async fn lock(&self, txn: TxnId) -> tokio::sync::MutexGuard<'_, ()> {
        let i = self.stripe_hasher.hash_one(txn.0) as usize % self.stripes.len();
        self.stripes[i].lock().await
    }

    /// When a key that lives `keep` past `at` expires, or 0 (no expiry).
    fn expire_at(&self, at: UnixMillis, keep: Duration) -> u64 {
        match self.opts.key_expiry {
            true => at.0.saturating_add(keep.as_millis() as u64),
            false => 0,
        }
    }

    /// When a transaction's keys expire, given its tokens' latest expiry.
    fn txn_expiry(&self, expires_at: UnixMillis) -> u64 {
        self.expire_at(expires_at, self.opts.retention)
    }

    fn event_expiry(&self, id: EventId) -> u64 {
        self.expire_at(id.at(), self.opts.event_retention)
    }

    /// Runs one single-slot command on a write connection with `WAIT` pipelined after it,
    /// and answers its reply only if the required replicas acknowledged it.
    async fn durable<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.write_conn();
        let mut pipe = Pipeline::new();
        pipe.add_command(cmd);
        let required = self.opts.required_replicas;
        if required == 0 {
            let (reply,): (T,) = pipe.query_async(&mut conn).await.map_err(backend)?;
            return Ok(reply);
        }
        pipe.cmd("WAIT")
            .arg(required)
            .arg(self.opts.ack_timeout.as_millis() as u64);
        let (reply, acked): (T, i64) = pipe.query_async(&mut conn).await.map_err(backend)?;
        if acked < i64::from(required) {
            return Err(StoreError::Backend(format!(
                "redis: the write reached {acked} of {required} replicas in time; {UNREPLICATED}"
            )));
        }
        Ok(reply)
    }

    /// Returns once the replicas hold everything the transaction's master holds now: for an
    /// answer read rather than written ("revoked already", a retry answered with the token
    /// an earlier attempt stored), which must not be undone by a failover either. A write
    /// (`writ_touch`), so the `WAIT` after it counts the master's replication offset past
    /// every earlier write of the slot, whichever connection made it.
    async fn barrier(&self, txn: TxnId) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("touch")).arg(1).arg(self.keys.meta(txn));
        let _: i64 = self.call_durable(cmd).await?;
        Ok(())
    }

    /// [`durable`](Self::durable) for an `FCALL`, loading Writ's functions first if the
    /// master lacks them (a node that joined, or a restart without its data).
    async fn call_durable<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        match self.durable(cmd.clone()).await {
            Err(StoreError::Backend(m)) if m.contains("Function not found") => {
                load_functions(&mut self.read_conn()).await?;
                self.durable(cmd).await
            }
            other => other,
        }
    }

    /// Applies `write` if the transaction is still at `version` ("" for a new one).
    async fn commit(
        &self,
        write: &TxnWrite,
        version: &str,
        nonce: &[u8],
    ) -> Result<Commit, StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("apply")).arg(write.keys.len());
        for k in &write.keys {
            cmd.arg(k);
        }
        cmd.arg(version).arg(nonce);
        for a in &write.args {
            cmd.arg(&a[..]);
        }
        let reply: (i64, String) = self.call_durable(cmd).await?;
        match reply.0 {
            1 | 2 => Ok(Commit::Applied),
            0 => Ok(Commit::Stale),
            n => Err(StoreError::Backend(format!(
                "redis: writ_apply answered {n}"
            ))),
        }
    }

    /// A transaction's version ("" if it has none yet).
    #[cfg(test)]
    async fn version(&self, txn: TxnId) -> Result<String, StoreError> {
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.keys.meta(txn))
            .arg("v")
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        Ok(v.unwrap_or_default())
    }

    /// Waits a little before reading a contended transaction again.
    async fn backoff(attempt: usize) {
        let cap = 1u64 << attempt.min(6);
        let micros = rand::random_range(0..=cap * 100);
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }

    /// Notes an event id stored, for the high-water mark.
    fn saw_event(&self, id: EventId) {
        self.high_water.fetch_max(id.0, Ordering::Relaxed);
    }
}

fn contended(txn: TxnId) -> StoreError {
    StoreError::Backend(format!(
        "redis: transaction {txn} changed under {MAX_ATTEMPTS} attempts in a row; try again"
    ))
}

/// Immutable `(transaction, record)` pairs by token id, bounded by entry count and bytes: what a
/// Validate needs to find a token's shard and judge it, never its state.
struct RecordCache {
    cap: usize,
    cap_bytes: usize,
    map: Mutex<Cached>,
}

/// The cached records, each with its encoded size, and their total.
#[derive(Default)]
struct Cached {
    records: HashMap<TokenId, (TxnId, Arc<TokenRecord>, usize)>,
    bytes: usize,
}

impl Cached {
    fn remove(&mut self, id: &TokenId) {
        if let Some((_, _, size)) = self.records.remove(id) {
            self.bytes -= size;
        }
    }
}

impl RecordCache {
    fn new(cap: usize, cap_bytes: usize) -> RecordCache {
        RecordCache {
            cap,
            cap_bytes,
            map: Mutex::default(),
        }
    }

    fn get(&self, id: TokenId) -> Option<(TxnId, Arc<TokenRecord>)> {
        lock(&self.map)
            .records
            .get(&id)
            .map(|(txn, r, _)| (*txn, r.clone()))
    }

    /// Caches `record` (`size` bytes encoded), dropping arbitrary entries (the hasher is
    /// seeded at random) while either bound would be passed.
    fn put(&self, id: TokenId, txn: TxnId, record: Arc<TokenRecord>, size: usize) {
        if self.cap == 0 || size > self.cap_bytes {
            return;
        }
        let mut cached = lock(&self.map);
        cached.remove(&id);
        while cached.records.len() >= self.cap || cached.bytes + size > self.cap_bytes {
            let Some(victim) = cached.records.keys().next().copied() else {
                break;
            };
            cached.remove(&victim);
        }
        cached.records.insert(id, (txn, record, size));
        cached.bytes += size;
    }

    fn forget(&self, id: TokenId) {
        lock(&self.map).remove(&id);
    }

    /// Entries and bytes held (tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let cached = lock(&self.map);
        (cached.records.len(), cached.bytes)
    }
}

impl TokenStore for RedisStore {
    fn insert(
        &self,
        record: TokenRecord,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.insert(record, event).await }
    }

    fn sync(&self, txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.barrier(txn).await }
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move {
            Ok(inner
                .get_with_state(id)
                .await?
                .map(|(r, _)| Arc::unwrap_or_clone(r)))
        }
    }

    fn txn_tree(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TreeEntry>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.txn_tree(txn).await }
    }

    fn state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { Ok(inner.get_with_state(id).await?.map(|(_, s)| s)) }
    }

    fn get_with_state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send
    {
        let inner = self.inner.clone();
        async move { inner.get_with_state(id).await }
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.insert_child(record, max_children, event).await }
    }

    fn revoke(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        event: EventId,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.revoke(target, &by, &reason, event).await }
    }

    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<PartyRevoked, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.revoke_party(&party, &by, &reason, events).await }
    }

    fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.set_party_disabled(party, disabled).await }
    }

    fn disabled_parties(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PartyDisable)>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.disabled_parties().await }
    }

    fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.consume_use(id, event).await }
    }

    /// Nothing to do: a transaction's keys expire by themselves, `retention` after its
    /// root.
    async fn purge_expired(
        &self,
        _cutoff: UnixMillis,
        _max_tokens: usize,
    ) -> Result<PurgeStats, StoreError> {
        Ok(PurgeStats::default())
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.stats().await }
    }

    fn list_txns(
        &self,
        query: TxnQuery,
    ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.list_txns(&query).await }
    }

    fn append_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.append_events(events).await }
    }

    fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.events(txn, after, limit).await }
    }

    fn last_event_id(&self) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.last_event_id().await }
    }

    /// Nothing to do: events expire by themselves, `event_retention` after the last one
    /// of their transaction.
    async fn purge_events(
        &self,
        _cutoff: UnixMillis,
        _max_events: usize,
    ) -> Result<PurgeStats, StoreError> {
        Ok(PurgeStats::default())
    }

    fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.insert_consent(request, event).await }
    }

    fn consent(
        &self,
        id: ConsentId,
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { Ok(inner.consent(id).await?.map(|(_, r)| r)) }
    }

    fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.consent_by_key(key).await }
    }

    fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.decide_consent(id, decision, event).await }
    }

    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let inner = self.inner.clone();
        async move {
            inner
                .redeem_consent(id, &by, child, max_children, event)
                .await
        }
    }

    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.expire_consents(now, max, &by, &*events).await }
    }

    /// Requests expire by themselves (`retention` after their expiry); this only trims
    /// the listing index of requests that are gone.
    fn purge_consents(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.trim_consent_index(cutoff, max).await }
    }

    fn list_consents(
        &self,
        query: ConsentQuery,
    ) -> impl Future<Output = Result<ConsentPage, StoreError>> + Send {
        let inner = self.inner.clone();
        async move { inner.list_consents(&query).await }
    }
}
