//! Writ's gRPC server: configuration, on-disk secrets, the caller-identity seam, the
//! service logic and its tonic face.
//!
//! Layout:
//! - [`config`]: defaults, the TOML file, validation.
//! - [`secrets`]: the data directory's lock and ownership checks, the server key ring and
//!   the local minter and operator credentials on disk.
//! - [`auth`]: the one seam that decides who is calling.
//! - [`assertion`]: proven identities from signed JWTs (client assertions, JWT-SVIDs) and
//!   their replay cache.
//! - [`policy`]: the policy file (parties, scopes, ceilings, registered keys): validated,
//!   hot-reloaded on SIGHUP and on change, and checked offline by `writ policy check`.
//! - [`service`]: Mint, Downscope, Validate and Revoke over any [`writ_store::TokenStore`].
//! - [`audit`]: the audit trail's event clock, batched writer and live feed.
//! - [`chain`]: the operators' chain queries (a transaction's tree, a token's ancestry,
//!   listings, the audit trail and its live watch).
//! - [`cleanup`]: the background task that reclaims expired tokens and old events.
//! - [`parties`]: the kill switch: disabled parties and the admission gate.
//! - [`ratelimit`]: per-caller token buckets by role (`RESOURCE_EXHAUSTED` with retry info).
//! - [`flood`]: refused and validated events beyond a per-caller budget, counted and stored
//!   as one aggregate per window.
//! - [`grpc`]: the tonic service; converts and maps errors, nothing more.
//! - [`transport`]: socket settings and the cap on accepted connections.
//! - [`tls`]: TLS over accepted connections, optional client X.509-SVIDs (SPIFFE IDs),
//!   hot-reloaded certificate, key and client CA bundle.
//! - [`pki`]: the local development CA, server certificate and `writ certs issue`.
//! - [`error`]: the service's error enum and its one mapping to gRPC codes.
//! - [`signing`]: the keys that sign Writ's JWTs, and their JWKS.
//! - [`subject`]: external subject tokens (the user's JWT from its authorization server).
//! - [`ops`]: the ops listener (`/metrics`, `/healthz`, `/readyz`, plaintext gRPC health)
//!   and the readiness both ports report.
//! - [`metrics`]: the server's Prometheus registry and the request layer that counts,
//!   times and spans every gRPC and HTTP request.
//! - [`telemetry`]: the process's log subscriber (text or JSON), request ids, OTLP traces.
//! - [`http`]: the OAuth face on its own listener: RFC 8693 token exchange, RFC 7662
//!   introspection, RFC 8414 metadata and the JWKS, on the same service and auth seam.
//!
//! [`start`] takes the data directory's lock before it reads or generates any secret and
//! holds it until the server has stopped and closed its store.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod answers;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod flood;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod parties;
pub(crate) mod periodic;
pub mod pki;
pub mod policy;
pub mod ratelimit;
pub mod secrets;
pub mod service;
pub mod signing;
pub mod subject;
pub mod telemetry;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writ_api::answer::server::token_service_server::TokenServiceServer;
use writ_api::pb::chain_service_server::ChainServiceServer;
use writ_core::limits::MAX_MESSAGE_BYTES;
use writ_store::{AnyStore, RedisStore, RocksStore, StoreOptions};

pub use config::Config;

/// Directory of the RocksDB store inside the data directory.
pub const DB_DIR: &str = "db";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A secret file could not be created, read or trusted.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    /// The development CA or server certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The policy file could not be read or is not valid.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The JWT signing keys could not be loaded or created.
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    /// The subject-token issuers could not be set up.
    #[error(transparent)]
    Subject(#[from] subject::SubjectError),
    /// The client-assertion verifier could not be set up (e.g. the JWT bundle).
    #[error(transparent)]
    Assertion(#[from] assertion::AssertionError),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] writ_store::StoreError),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The ops listener's address (`[observability]`), if it is enabled.
    pub ops_addr: Option<SocketAddr>,
    /// The server's metrics (the HTTP listener counts into them too).
    pub metrics: Arc<metrics::Metrics>,
    /// Readiness, as `/readyz` and gRPC health report it.
    readiness: Arc<ops::Readiness>,
    /// The ops listener; stopped after the server.
    ops: Option<ops::OpsServer>,
    /// The OAuth HTTP listener's address actually bound; `None` with `http.enabled = false`.
    pub http_addr: Option<SocketAddr>,
    /// Serves the OAuth HTTP listener until the stop signal (with its own shutdown grace).
    http: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
    cleanup: JoinHandle<()>,
    /// Re-read TLS material and the JWT bundle when they change.
    reloaders: Vec<JoinHandle<()>>,
    /// Finishes the walks of disabled parties at start (aborted at shutdown; the next
    /// start resumes it).
    resume: JoinHandle<()>,
    /// Stores the flood guard's aggregates; stopped after the server, before the writer.
    drain_stop: watch::Sender<bool>,
    drain: JoinHandle<()>,
    audit_writer: JoinHandle<()>,
    /// The keys that sign Writ's JWTs.
    pub signer: Arc<signing::Signer>,
    /// Verifies external subject tokens.
    pub subjects: Arc<subject::SubjectVerifier>,
    /// Released last, off the async threads: closing the store flushes its memtables.
    store: Arc<AnyStore>,
    /// Held until the store is closed: one server per data directory.
    lock: secrets::DataDirLock,
}

/// The record of client assertions used, kept in the Redis Cluster the nodes share.
#[derive(Debug)]
struct SharedJti(writ_store::RedisStore);

impl assertion::SharedReplay for SharedJti {
    fn first_use(
        &self,
        key: [u8; 32],
        until_unix_secs: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>
    {
        let until = writ_core::UnixMillis(until_unix_secs.saturating_mul(1000));
        Box::pin(async move {
            self.0
                .first_use(key, until)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The live feed of audit events across the nodes sharing a Redis Cluster.
#[derive(Debug)]
struct SharedEvents(writ_store::RedisStore);

impl audit::SharedFeed for SharedEvents {
    fn announce(
        &self,
        events: Vec<writ_core::Event>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let store = self.0.clone();
        Box::pin(async move {
            if let Err(e) = store.announce(&events).await {
                tracing::warn!(error = %e, events = events.len(), "announcing events to the other nodes");
            }
        })
    }
}

/// Keeps the feed across nodes: says every second whether this node has watchers, learns
/// whether another node has (so this one announces what it stores), and while this node
/// has watchers reads what the others announce and hands it to them; a read that finds
/// the feed trimmed past it ends them. Until `stop`.
async fn read_feed(
    store: writ_store::RedisStore,
    audit: Arc<audit::Audit>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    const LEASE: std::time::Duration = std::time::Duration::from_secs(10);
    let mut cursor: Option<writ_store::FeedCursor> = None;
    let mut told: Option<tokio::time::Instant> = None;
    loop {
        let watching = audit.watchers() > 0;
        // Where this node's watchers start reading: taken before the other nodes can
        // learn of them (and start announcing), so nothing announced since is missed.
        if !watching {
            cursor = None;
        } else if cursor.is_none() {
            match store.feed_end().await {
                Ok(c) => cursor = Some(c),
                Err(e) => tracing::warn!(error = %e, "finding the end of the feed across nodes"),
            }
        }
        if told.is_none_or(|t| t.elapsed() >= EVERY) {
            told = Some(tokio::time::Instant::now());
            match store
                .watchers_elsewhere(watching && cursor.is_some(), service::now().0, LEASE)
                .await
            {
                Ok(elsewhere) => audit.feed_wanted(elsewhere),
                Err(e) => {
                    tracing::warn!(error = %e, "telling the other nodes about this node's watchers")
                }
            }
        }
        let read = match &mut cursor {
            Some(c) => tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = store.read_feed(c, EVERY) => r,
            },
            // Nobody to hand events to (or no place to start yet): read nothing.
            None => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
                continue;
            }
        };
        match read {
            Ok(read) => {
                if read.gap {
                    tracing::warn!(
                        "the feed across nodes was trimmed past this node; ending its watchers"
                    );
                    audit.feed_lost();
                }
                audit.announce_remote(read.events);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the feed across nodes");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        }
    }
}

/// How often the policy file is checked for changes (besides SIGHUP).
pub const POLICY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long shutdown waits for in-flight requests and open streams (say, a watcher that
/// stopped reading) before it drops the connections that are left.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long shutdown waits for the store to close once the server has let go of it.
const STORE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the server pings each HTTP/2 connection, and how long it waits for the
/// answer before it drops the connection: a peer that vanished (or a half-open socket
/// behind a NAT) does not hold its connection and streams until TCP gives up.
pub const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// See [`HTTP2_KEEPALIVE_INTERVAL`].
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (for up to [`SHUTDOWN_GRACE`], then
    /// drops what is left), stops cleanup, stores queued audit events and closes the store.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        // First of all, so load balancers stop sending new requests while the last ones
        // finish.
        self.readiness.not_serving().await;
        let _ = self.stop.send(true);
        let joined = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "connections still open after the shutdown grace period; dropping them"
                );
                self.task.abort();
                (&mut self.task).await
            }
        };
        self.finish(joined).await
    }

    /// Waits for the server to stop.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        let joined = (&mut self.task).await;
        self.finish(joined).await
    }

    async fn finish(
        self,
        joined: Result<Result<(), ServerError>, tokio::task::JoinError>,
    ) -> Result<(), ServerError> {
        let served = match joined {
            Ok(served) => served,
            // Aborted by `shutdown` after the grace period: a stop, not a failure.
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(ServerError::Transport(e.to_string())),
        };
        self.readiness.not_serving().await;
        let _ = self.stop.send(true);
        // Its own grace period ran alongside gRPC's.
        if let Some(http) = self.http {
            let _ = http.await;
        }
        self.resume.abort();
        let _ = self.resume.await;
        let _ = self.cleanup.await;
        for r in self.reloaders {
            let _ = r.await;
        }
        // Probes see "not ready" until the server is gone; then the listener stops.
        if let Some(ops) = self.ops {
            ops.shutdown().await;
        }
        let _ = self.drain_stop.send(true);
        let _ = self.drain.await;
        // The services are gone with the server, so the writer drains its queue and ends.
        let _ = self.audit_writer.await;
        // Normally the last handle: its drop flushes the store (blocking work). The RocksDB
        // writer may still hold it for a group whose callers went away; it closes the store
        // when that group is done.
        let closed = self.store.rocks().map(RocksStore::closed);
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        if let Some(closed) = closed
            && tokio::time::timeout(STORE_CLOSE_GRACE, closed)
                .await
                .is_err()
        {
            tracing::warn!(
                grace_seconds = STORE_CLOSE_GRACE.as_secs(),
                "the store is still open after shutdown (a task still holds it)"
            );
        }
        // Only now may another server open this data directory.
        drop(self.lock);
        served
    }
}

/// The server's TLS material, re-read when it changes: the configured files, or the
/// development CA's under `<data_dir>/tls/` (created on first start). `None`: plaintext.
fn tls_source(config: &Config) -> Result<Option<Arc<tls::TlsSource>>, ServerError> {
    if !config.tls.enabled {
        tracing::warn!("tls.enabled = false: plaintext gRPC; no client certificates");
        return Ok(None);
    }
    let files = match (&config.tls.cert, &config.tls.key, &config.tls.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        },
        _ => {
            let dev = pki::load_or_create_dev_tls(&config.data_dir, &config.trust_domain)?;
            tracing::info!(
                ca = %dev.ca_cert.display(),
                "TLS with the local development CA: clients trust this CA certificate; \
                 `writ certs issue NAME` signs client certificates with it"
            );
            dev.server_files()
        }
    };
    Ok(Some(tls::TlsSource::load(files, &config.trust_domain)?))
}

/// Server reflection, v1 and v1alpha (so every grpcurl works): `writ.v1`, the health
/// service and reflection itself.
struct Reflection<A, B> {
    v1: A,
    v1alpha: B,
}

impl Reflection<(), ()> {
    fn build() -> Result<
        Reflection<
            tonic_reflection::server::v1::ServerReflectionServer<
                impl tonic_reflection::server::v1::ServerReflection,
            >,
            tonic_reflection::server::v1alpha::ServerReflectionServer<
                impl tonic_reflection::server::v1alpha::ServerReflection,
            >,
        >,
        ServerError,
    > {
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(writ_api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let bad = |e: tonic_reflection::server::Error| {
            ServerError::Transport(format!("server reflection: {e}"))
        };
        Ok(Reflection {
            v1: builder().build_v1().map_err(bad)?,
            v1alpha: builder().build_v1alpha().map_err(bad)?,
        })
    }
}

/// What a scrape reads from the rest of the server. Weak handles: the metrics never keep
/// the store open (or the audit writer running) past shutdown.
fn observe(
    store: &Arc<AnyStore>,
    audit: &Arc<audit::Audit>,
    disabled: &Arc<parties::Disabled>,
    policy: &policy::PolicyHandle,
    answers: &Arc<answers::Answers>,
) -> metrics::Observe {
    let (store, audit) = (Arc::downgrade(store), Arc::downgrade(audit));
    let answers = Arc::downgrade(answers);
    let (disabled, policy) = (disabled.clone(), policy.clone());
    Box::new(move || {
        let (store, audit) = (store.clone(), audit.clone());
        let answered = answers.upgrade().map(|a| a.stats()).unwrap_or_default();
        let by_operator = disabled.count() as u64;
        let by_policy = policy
            .current()
            .registry()
            .parties
            .values()
            .filter(|p| !p.enabled)
            .count() as u64;
        Box::pin(async move {
            let store = store.upgrade();
            let rocks = store.as_ref().and_then(|s| s.rocks());
            let hot = rocks.map(RocksStore::hot_tier_stats).unwrap_or_default();
            let writer = rocks.map(RocksStore::writer_stats).unwrap_or_default();
            let sizes = match store {
                Some(store) if store.rocks().is_some() => tokio::task::spawn_blocking(move || {
                    store.rocks().map(RocksStore::size_estimates)
                })
                .await
                .ok()
                .flatten()
                .and_then(Result::ok)
                .unwrap_or_default(),
                // The Redis Cluster's memory is the cluster's own metric.
                Some(_) => writ_store::SizeEstimates::default(),
                None => writ_store::SizeEstimates::default(),
            };
            metrics::Observed {
                tokens_stored: sizes.tokens,
                store_sst_bytes: sizes.sst_bytes,
                store_memtable_bytes: sizes.memtable_bytes,
                hot_tier: hot,
                writer,
                answers: answered,
                audit_queue: audit.upgrade().map_or(0, |a| a.queue_depth() as u64),
                disabled_by_operator: by_operator,
                disabled_by_policy: by_policy,
            }
        })
    })
}

/// Waits for the RocksDB store's writer to fail for good (a sync of its WAL failed: every
/// write is refused until a restart); then the server stops being ready and live, so an
/// orchestrator restarts it. Ends with the store (the channel closes).
async fn watch_store(
    mut failed: tokio::sync::watch::Receiver<bool>,
    readiness: Arc<ops::Readiness>,
) {
    if failed.wait_for(|failed| *failed).await.is_ok() {
        tracing::error!("the store refuses every write until a restart: not ready, not live");
        readiness.store_failed().await;
    }
}

/// Opens the data directory and store, binds, and starts serving in the background.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_keepalive(config, HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT).await
}

/// [`start`] with other HTTP/2 keepalive settings (tests shorten them).
async fn start_with_keepalive(
    config: Config,
    keepalive_interval: std::time::Duration,
    keepalive_timeout: std::time::Duration,
) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    secrets::ensure_private_dir(&data_dir)?;
    // Before any secret is read or generated: a second server on this directory stops
    // here, and two first starts cannot race to create the secrets.
    let lock = secrets::lock_data_dir(&data_dir)?;
    let keys = secrets::load_or_create_key_ring(&data_dir)?;
    let mut credentials = secrets::Credentials::default();
    if config.minters.is_empty() {
        let digest = secrets::load_or_create_local_minter(&data_dir)?;
        credentials.add(
            secrets::LOCAL_MINTER_ID.into(),
            secrets::Role::Minter,
            digest,
        );
    }
    if config.operators.is_empty() {
        let digest = secrets::load_or_create_local_operator(&data_dir)?;
        credentials.add(
            secrets::LOCAL_OPERATOR_ID.into(),
            secrets::Role::Operator,
            digest,
        );
    }
    let configured = config.minters.iter().map(|m| (m, secrets::Role::Minter));
    for (m, role) in configured.chain(
        config
            .operators
            .iter()
            .map(|o| (o, secrets::Role::Operator)),
    ) {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&m.credential_blake3, &mut digest)
            .map_err(|e| config::ConfigError::Invalid(format!("{:?}: {e}", m.id)))?;
        credentials.add(m.id.clone(), role, digest);
    }
    let tls = tls_source(&config)?;
    let signer = signing::Signer::load_or_create(
        &data_dir,
        &config.signing,
        config.issuer(),
        service::now_secs(),
    )?;
    let subjects = subject::SubjectVerifier::new(&config.subject_tokens)?;
    let policy = policy::PolicyHandle::load(config.policy.as_deref(), &config.trust_domain)?;
    match &config.policy {
        Some(path) => tracing::info!(policy = %path.display(), "policy loaded"),
        None => tracing::warn!(
            "no policy file: the DEVELOPMENT policy is in force (any identity of the trust \
             domain is a party that may hold any scope); name one with `policy` or --policy"
        ),
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let limits =
        Arc::new(ratelimit::RateLimiter::new(&config.limits).with_metrics(metrics.clone()));
    let flood = Arc::new(
        flood::FloodGuard::from_config(&config.limits.events).with_metrics(metrics.clone()),
    );
    let started = service::now_secs();
    let mut assertion_config = assertion::AssertionConfig::new(
        config.auth.audience(&config.trust_domain),
        config.trust_domain.clone(),
    );
    assertion_config.jwt_svid_bundle = config.auth.jwt_svid_bundle.clone();
    let assertions = Arc::new(assertion::AssertionVerifier::new(
        assertion_config,
        started,
    )?);
    if config.auth.asserted_identities {
        tracing::warn!(
            "DEVELOPMENT MODE: identities asserted in x-writ-caller are accepted UNPROVEN; \
             every audit event they cause is marked `asserted`. Never run this in production."
        );
    }
    // Bind before opening the store: a busy port fails fast and leaves nothing running.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Transport(format!("binding {}: {e}", config.listen)))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServerError::Transport(e.to_string()))?;
    // The ops listener answers liveness while the store opens (readiness only after);
    // dropped, as on any error below, it stops.
    let readiness = ops::Readiness::new().await;
    let ops = match &config.observability {
        o if o.enabled => {
            let listener = TcpListener::bind(o.listen).await.map_err(|e| {
                ServerError::Transport(format!("binding observability.listen {}: {e}", o.listen))
            })?;
            let router = ops::router(metrics.clone(), readiness.clone());
            Some(
                ops::OpsServer::serve(listener, router)
                    .map_err(|e| ServerError::Transport(e.to_string()))?,
            )
        }
        _ => None,
    };
    let ops_addr = ops.as_ref().map(|o| o.addr);
    let http_listener = match config.http.enabled {
        true => Some(TcpListener::bind(config.http.listen).await.map_err(|e| {
            ServerError::Transport(format!("binding http.listen {}: {e}", config.http.listen))
        })?),
        false => None,
    };
    let http_addr = http_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(|e| ServerError::Transport(e.to_string()))?;
    let db_path = data_dir.join(DB_DIR);
    let opts = StoreOptions {
        durability: config.storage.durability,
        block_cache_mib: config.storage.block_cache_mib,
        hot_tier_mib: config.storage.hot_tier_mib,
    };
    let store = match config.storage.backend {
        config::Backend::Rocksdb => AnyStore::Rocks(
            tokio::task::spawn_blocking(move || RocksStore::open(&db_path, opts))
                .await
                .map_err(|e| ServerError::Transport(e.to_string()))??,
        ),
        config::Backend::Redis => {
            let redis = RedisStore::connect(config.redis_options()?).await?;
            let nodes: Vec<String> = config
                .storage
                .redis
                .nodes
                .iter()
                .map(|n| writ_store::redact_node_url(n))
                .collect();
            tracing::info!(nodes = ?nodes, "storage: Redis Cluster");
            AnyStore::Redis(redis)
        }
    };
    let store = Arc::new(store);
    let store_handle = store.clone();
    let (audit, audit_writer) = audit::Audit::start(store.clone()).await?;
    let audit_for_drain = audit.clone();
    let audit_for_cleanup = audit.clone();
    let disabled = parties::Disabled::new(writ_store::TokenStore::disabled_parties(&*store).await?);
    // A store other Writ nodes share: what is not a token change but must be shared goes
    // through it too (below).
    let shared = store.redis().cloned();
    if shared.is_some() {
        // Other nodes change the set too: re-read (below), and admit nothing when it
        // could not be. An admission's write may take a few commands' time.
        let r = &config.storage.redis;
        disabled.share(
            std::time::Duration::from_millis(r.party_sync_ms),
            std::time::Duration::from_millis(r.response_timeout_ms.saturating_mul(2)),
        );
    }
    let (stop, mut stopped) = watch::channel(false);
    // On a shared store, watchers here see what the other nodes store too.
    let feed_reader = shared.clone().map(|r| {
        audit.share(Arc::new(SharedEvents(r.clone())));
        tokio::spawn(read_feed(r, audit.clone(), stop.subscribe()))
    });
    let service = service::Service::new(
        store.clone(),
        keys,
        config.policy(),
        config.trust_domain.clone(),
        config.tokens.max_children,
        audit.clone(),
        config.audit.validations,
    )
    .with_idempotency_window(std::time::Duration::from_secs(
        config.tokens.idempotency_window_seconds,
    ))
    .with_policy(policy.clone(), config.auth.asserted_identities)
    .with_disabled(disabled.clone())
    .with_flood(flood.clone())
    .with_metrics(metrics.clone())
    .with_consent(service::consent::ConsentSettings {
        config: config.consent.clone(),
        issuer: config.issuer(),
    });
    let service = Arc::new(service);
    signer.use_policy(policy.clone());
    let answers = Arc::new(answers::Answers::new(config.storage.answer_cache_mib << 20));
    metrics.observe_with(observe(&store, &audit, &disabled, &policy, &answers));
    let resume = {
        let service = service.clone();
        tokio::spawn(async move { service.resume_disabled().await })
    };
    // On a store other Writ nodes share, a party disabled (or enabled) through another
    // node is picked up within `storage.redis.party_sync_ms`.
    let party_sync = match shared {
        None => None,
        Some(_) => {
            let every = std::time::Duration::from_millis(config.storage.redis.party_sync_ms);
            let (service, mut stopped) = (service.clone(), stop.subscribe());
            // Walks run on a task of their own, so a long one never delays the re-read
            // (a node that has not re-read for two intervals admits nothing).
            let (walks, mut to_walk) = tokio::sync::mpsc::unbounded_channel();
            let walker = {
                let service = service.clone();
                tokio::spawn(async move {
                    while let Some((party, why)) = to_walk.recv().await {
                        service.walk_disabled(party, why).await;
                    }
                })
            };
            Some(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    match service.sync_disabled().await {
                        Ok(newly) => {
                            for walk in newly {
                                let _ = walks.send(walk);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the disabled parties from the store")
                        }
                    }
                }
                drop(walks);
                let _ = walker.await;
            }))
        }
    };
    // Parties the policy file disables lose what they hold, at start and on every reload
    // that disables them.
    let policy_kill = {
        let (service, policy, mut stopped) = (service.clone(), policy.clone(), stop.subscribe());
        tokio::spawn(async move {
            let mut last = policy.current();
            service.disable_from_policy(None).await;
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(POLICY_POLL) => {}
                }
                let now = policy.current();
                if !Arc::ptr_eq(&now, &last) {
                    service.disable_from_policy(Some(last.registry())).await;
                    last = now;
                }
            }
        })
    };
    let auth = auth::Authenticator::new(credentials)
        .with_policy(policy.clone())
        .with_disabled(disabled)
        .with_limits(limits.clone())
        .with_assertions(assertions.clone())
        .with_asserted_identities(config.auth.asserted_identities);
    // Nodes sharing a store share the record of assertions used: one use per trust domain.
    let auth = match &shared {
        Some(r) => auth.with_shared_replay(Arc::new(SharedJti(r.clone()))),
        None => auth,
    };
    let chain = ChainServiceServer::new(chain::ChainGrpc::new(
        service.clone(),
        store.clone(),
        auth.clone(),
        audit,
        stop.subscribe(),
        signer.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    // A tree of up to 1000 nodes of a few KiB each.
    .max_encoding_message_size(32 * 1024 * 1024);
    let http_router = http::router(Arc::new(http::HttpState {
        service: service.clone(),
        auth: auth.clone(),
        signer: signer.clone(),
        subjects: subjects.clone(),
        issuer: config.issuer(),
        trust_domain: config.trust_domain.clone(),
        default_ttl_secs: config.tokens.default_ttl_seconds,
        body_limit: config.http.body_limit_bytes,
        reading: tokio::sync::Semaphore::new(http::MAX_BODIES_IN_FLIGHT),
        consent: http::consent::Pages::new(&config.issuer(), config.consent.sign_in.as_ref())
            .map_err(config::ConfigError::Invalid)?,
    }))
    // Counted, timed and spanned (request id, txn, traceparent) like every gRPC request.
    .layer(metrics::http_layer(metrics.clone()));
    let grpc = grpc::GrpcService::new(service, auth, signer.clone(), answers);

    let svc = TokenServiceServer::new(grpc)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        // Responses carry whole records; four times the request bound leaves headroom.
        .max_encoding_message_size(4 * MAX_MESSAGE_BYTES);

    let watched = store.rocks().map(RocksStore::writer_failed);
    let cleanup = tokio::spawn(cleanup::run_with_metrics(
        store,
        cleanup::Schedule {
            interval: std::time::Duration::from_secs(config.storage.cleanup_interval_seconds),
            token_retention: std::time::Duration::from_secs(config.storage.retention_seconds),
            audit_retention: std::time::Duration::from_secs(config.audit.retention_seconds),
        },
        stop.subscribe(),
        Some(audit_for_cleanup),
        Some(metrics.clone()),
    ));
    let incoming = transport::incoming(listener);
    let reflection = Reflection::build()?;
    let router = tonic::transport::Server::builder()
        .http2_max_header_list_size(16 * 1024)
        .max_concurrent_streams(256)
        .concurrency_limit_per_connection(256)
        .timeout(std::time::Duration::from_secs(30))
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .layer(metrics::grpc_layer(metrics.clone()))
        .add_service(svc)
        .add_service(chain)
        // No identity needed for these, but under the same connection caps.
        .add_service(readiness.health_service())
        .add_service(reflection.v1)
        .add_service(reflection.v1alpha);
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    // Nodes sharing a store each hold a copy of the signing keys' manifest: they rotate
    // only when an operator rolls a rotated manifest out to all of them (README).
    if shared.is_some() {
        tracing::warn!(
            "several nodes share this store: JWT signing keys are not rotated automatically \
             (rotate on one node with `writ keys rotate`, then give every node its manifest)"
        );
    }
    let mut reloaders = vec![
        assertions.spawn_bundle_reloader(
            std::time::Duration::from_secs(config.tls.reload_interval_seconds),
            stop.subscribe(),
        ),
        policy.spawn_watcher(POLICY_POLL, stop.subscribe()),
        policy_kill,
        limits.spawn_housekeeping(stop.subscribe()),
        // Automatic rotation of the JWT signing keys (one node alone), and removal of
        // retired ones.
        signer.spawn_rotation(shared.is_none(), stop.subscribe()),
        // The subject-token issuers' key sets (JWKS files and URLs).
        subjects.spawn_refresher(stop.subscribe()),
    ];
    reloaders.extend(party_sync);
    reloaders.extend(feed_reader);
    // Stopped only after the server has (its last requests may still count events), and
    // before the audit writer, which waits for every handle on the trail.
    let (drain_stop, drain_stopped) = watch::channel(false);
    let drain = flood.spawn_drain(audit_for_drain, drain_stopped);
    let handshake = std::time::Duration::from_secs(config.tls.handshake_timeout_seconds);
    let http = http_listener.map(|listener| {
        tokio::spawn(http::serve(
            listener,
            tls.clone().map(|source| (source, handshake)),
            http_router,
            std::time::Duration::from_secs(config.http.request_timeout_seconds),
            stop.subscribe(),
        ))
    });
    let task = match tls {
        Some(source) => {
            reloaders.push(source.spawn_reloader(
                std::time::Duration::from_secs(config.tls.reload_interval_seconds),
                stop.subscribe(),
            ));
            let incoming = tls::incoming(incoming, source, handshake);
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(|e| ServerError::Transport(e.to_string()))
            })
        }
        None => tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| ServerError::Transport(e.to_string()))
        }),
    };
    readiness.serving().await;
    if let Some(failed) = watched {
        tokio::spawn(watch_store(failed, readiness.clone()));
    }
    tracing::info!(
        addr = %local_addr,
        ops = %ops_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        data_dir = %data_dir.display(),
        tls = config.tls.enabled,
        "writ listening"
    );
    if let Some(addr) = http_addr {
        tracing::info!(addr = %addr, issuer = %config.issuer(), "OAuth HTTP listening");
    }
    Ok(RunningServer {
        local_addr,
        ops_addr,
        metrics,
        readiness,
        ops,
        http_addr,
        http,
        reloaders,
        resume,
        drain_stop,
        drain,
        stop,
        task,
        cleanup,
        audit_writer,
        signer,
        subjects,
        store: store_handle,
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OAuth listener on an ephemeral loopback port (tests run side by side).
    fn loopback_http() -> config::HttpConfig {
        config::HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        }
    }

    /// A store whose writer fails takes the server out of readiness and liveness; one
    /// that closes without failing leaves them alone.
    #[tokio::test]
    async fn a_failed_store_makes_the_server_unready_and_not_live() {
        let readiness = ops::Readiness::new().await;
        readiness.serving().await;
        let (fail, failed) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch_store(failed, readiness.clone()));
        fail.send_replace(true);
        watcher.await.unwrap();
        assert!(!readiness.is_live() && !readiness.is_ready());

        let readiness = ops::Readiness::new().await;
        readiness.serving().await;
        let (closed, failed) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch_store(failed, readiness.clone()));
        drop(closed);
        watcher.await.unwrap();
        assert!(readiness.is_live() && readiness.is_ready());
    }

    #[tokio::test]
    async fn refuses_plaintext_beyond_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "0.0.0.0:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            http: loopback_http(),
            ..Config::default()
        };
        config.observability.listen = "127.0.0.1:0".parse().unwrap();
        config.tls.enabled = false;
        let err = start(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains("allow_insecure_listen"), "{err}");
        // Development mode is refused beyond loopback, TLS or not.
        config.tls.enabled = true;
        config.auth.asserted_identities = true;
        let err = start(config).await.unwrap_err();
        assert!(err.to_string().contains("asserted_identities"), "{err}");
        assert!(
            !dir.path().join("data").exists(),
            "refused before touching the data dir"
        );
    }

    /// A peer that vanished without closing (here: one that never answers) does not hold
    /// its connection: the server pings an idle connection and drops it when the ping goes
    /// unanswered. Keepalive shortened to 200 ms; speaks raw HTTP/2 frames to see the ping.
    #[tokio::test]
    async fn a_peer_that_never_answers_a_ping_is_dropped() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const PING: u8 = 6;
        const SETTINGS: u8 = 4;
        const ACK: u8 = 1;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            http: loopback_http(),
            ..Config::default()
        };
        config.observability.listen = "127.0.0.1:0".parse().unwrap();
        // Raw HTTP/2 frames: plaintext (the ping is HTTP/2's, under TLS or not).
        config.tls.enabled = false;
        let short = Duration::from_millis(200);
        let server = start_with_keepalive(config, short, short).await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(server.local_addr)
            .await
            .unwrap();
        // The client preface and an empty SETTINGS frame; from then on, only reading.
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut frames: Vec<(u8, u8)> = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let mut head = [0u8; 9];
                if peer.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut body = vec![0u8; len];
                if peer.read_exact(&mut body).await.is_err() {
                    return;
                }
                let (kind, flags) = (head[3], head[4]);
                if kind == SETTINGS && flags & ACK == 0 {
                    // Acknowledge the server's settings, as every client must; never a ping.
                    let _ = peer.write_all(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]).await;
                }
                frames.push((kind, flags));
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the silent peer kept its connection: {frames:?}"
        );
        assert!(
            frames.contains(&(PING, 0)),
            "closed without a ping: {frames:?}"
        );
        server.shutdown().await.unwrap();
    }

    /// Finding 14: a second server on a data directory in use fails fast, naming it,
    /// before it touches any secret; the directory is free again once the first stops.
    #[tokio::test]
    async fn a_second_server_on_one_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            http: loopback_http(),
            ..Config::default()
        };
        config.observability.listen = "127.0.0.1:0".parse().unwrap();
        let first = start(config.clone()).await.unwrap();
        let err = start(config.clone()).await.unwrap_err();
        assert!(matches!(
            err,
            ServerError::Secrets(secrets::SecretsError::Locked { .. })
        ));
        let message = err.to_string();
        assert!(
            message.contains(&config.data_dir.display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use"), "{message}");
        first.shutdown().await.unwrap();
        start(config).await.unwrap().shutdown().await.unwrap();
    }
}
