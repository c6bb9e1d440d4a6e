//! Prometheus metrics: one [`Registry`] per server, owned by an `Arc<Metrics>` that the
//! places where things happen count into (no global recorder: tests run many servers in
//! one process), and the request layer that counts and times every gRPC and HTTP request
//! and opens its log span ([`crate::telemetry`]).
//!
//! Every label is bounded: gRPC methods are those of the descriptor sets this server
//! serves (anything else is `unknown`), HTTP routes are the router's templates (never the
//! raw path), codes, results and dimensions are fixed vocabularies, rate-limit classes
//! are role names. No metric carries a token, a transaction or a caller's identity, so
//! the text is safe to serve in plaintext (see `[observability]`).
//!
//! Values that live elsewhere (tokens stored and the store's size, the audit queue, the
//! disabled parties) are read when scraped ([`Metrics::render`]), the store's off the
//! async threads.

use crate::telemetry;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// Latency buckets, in seconds: a Validate answers in tens of microseconds, an fsynced
/// Downscope in milliseconds, a slow disk or a deadline in seconds.
const LATENCY_BUCKETS: [f64; 17] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Chain depth buckets (the root is 0; the deepest configurable chain is 64).
const DEPTH_BUCKETS: [f64; 14] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0,
];

/// The content type of [`Metrics::render`]'s text (OpenMetrics, which Prometheus
/// negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcMethodLabels {
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    route: String,
    method: &'static str,
}

/// Which operation refused a new token.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    /// Mint.
    mint,
    /// Downscope.
    downscope,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    operation: Operation,
    dimension: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Values read when scraped, from the parts of the server that own them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Token records stored (RocksDB's estimate).
    pub tokens_stored: u64,
    /// Bytes of the store's table files on disk.
    pub store_sst_bytes: u64,
    /// Bytes of the store's memtables (written, not yet flushed to tables).
    pub store_memtable_bytes: u64,
    /// The RocksDB store's hot tier (zero on other backends).
    pub hot_tier: writ_store::HotTierStats,
    /// The RocksDB store's writer (zero on other backends).
    pub writer: writ_store::WriterStats,
    /// Validate's encoded answers.
    pub answers: crate::answers::AnswerStats,
    /// Audit events queued for the writer.
    pub audit_queue: u64,
    /// Parties an operator disabled (the kill switch).
    pub disabled_by_operator: u64,
    /// Parties the policy file disables.
    pub disabled_by_policy: u64,
}

/// Reads [`Observed`] when the metrics are scraped.
pub type Observe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Observed> + Send>> + Send + Sync>;

/// The server's metrics. Cheap to count into from any thread.
pub struct Metrics {
    registry: Registry,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_duration: Histograms<GrpcMethodLabels>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<HttpRouteLabels>,
    refusals: Family<RefusalLabels, Counter>,
    minted: Counter,
    downscoped: Counter,
    revoked: Counter,
    validations: Family<ResultLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    chain_depth: Histogram,
    tokens_stored: Gauge,
    store_sst_bytes: Gauge,
    store_memtable_bytes: Gauge,
    hot_tier_reads: Family<ResultLabels, Counter>,
    hot_tier_entries: Gauge,
    hot_tier_bytes: Gauge,
    hot_tier_budget: Gauge,
    writer_groups: Counter,
    writer_jobs: Counter,
    writer_failed: Gauge,
    answer_reads: Family<ResultLabels, Counter>,
    answer_bytes: Gauge,
    answer_budget: Gauge,
    /// Serialises renders' catch-up of counters kept elsewhere (the hot tier's, the
    /// writer's, the encoded answers').
    catching_up: std::sync::Mutex<()>,
    cleanup_tokens: Counter,
    cleanup_events: Counter,
    cleanup_last_run: Gauge<f64, AtomicU64>,
    audit_queue: Gauge,
    aggregated: Family<KindLabels, Counter>,
    rate_limited: Family<ClassLabels, Counter>,
    disabled: Family<SourceLabels, Gauge>,
    observe: OnceLock<Observe>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        r.register(
            "writ_grpc_requests",
            "gRPC requests answered, by service, method and status code",
            grpc_requests.clone(),
        );
        let grpc_duration: Histograms<GrpcMethodLabels> = Family::new_with_constructor(latency);
        r.register_with_unit(
            "writ_grpc_request_duration",
            "Time to answer a gRPC request (to its response headers), by method",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "writ_http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration: Histograms<HttpRouteLabels> = Family::new_with_constructor(latency);
        r.register_with_unit(
            "writ_http_request_duration",
            "Time to answer an HTTP request (to its response headers), by route",
            Unit::Seconds,
            http_duration.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        r.register(
            "writ_refusals",
            "New tokens refused, by operation and the dimension that refused them",
            refusals.clone(),
        );
        let minted = Counter::default();
        r.register("writ_tokens_minted", "Root tokens minted", minted.clone());
        let downscoped = Counter::default();
        r.register(
            "writ_tokens_downscoped",
            "Child tokens derived by Downscope",
            downscoped.clone(),
        );
        let revoked = Counter::default();
        r.register(
            "writ_tokens_revoked",
            "Tokens newly revoked (by Revoke, with their descendants, and by the kill switch)",
            revoked.clone(),
        );
        let validations = Family::<ResultLabels, Counter>::default();
        r.register(
            "writ_validations",
            "Validate answers, by result: active, or why the token is inactive",
            validations.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        r.register(
            "writ_action_decisions",
            "Action checks of active tokens, by decision (allowed, denied)",
            decisions.clone(),
        );
        let chain_depth = Histogram::new(DEPTH_BUCKETS);
        r.register(
            "writ_chain_depth",
            "Depth of each token derived by Downscope (the root is 0)",
            chain_depth.clone(),
        );
        let tokens_stored = Gauge::default();
        r.register(
            "writ_tokens_stored",
            "Token records in the store (RocksDB's estimate, read at scrape time)",
            tokens_stored.clone(),
        );
        let store_sst_bytes = Gauge::default();
        r.register_with_unit(
            "writ_store_sst_files",
            "Size of the store's table files on disk",
            Unit::Bytes,
            store_sst_bytes.clone(),
        );
        let store_memtable_bytes = Gauge::default();
        r.register_with_unit(
            "writ_store_memtables",
            "Size of the store's memtables (written, not yet flushed)",
            Unit::Bytes,
            store_memtable_bytes.clone(),
        );
        let hot_tier_reads = Family::<ResultLabels, Counter>::default();
        r.register(
            "writ_store_hot_tier_reads",
            "Token reads with their state (Validate, and the chain queries) by whether the hot tier held the token (hit) or RocksDB was read (miss)",
            hot_tier_reads.clone(),
        );
        let hot_tier_entries = Gauge::default();
        r.register(
            "writ_store_hot_tier_entries",
            "Tokens held in the hot tier",
            hot_tier_entries.clone(),
        );
        let hot_tier_bytes = Gauge::default();
        r.register_with_unit(
            "writ_store_hot_tier",
            "Estimated size of the tokens held in the hot tier",
            Unit::Bytes,
            hot_tier_bytes.clone(),
        );
        let hot_tier_budget = Gauge::default();
        r.register_with_unit(
            "writ_store_hot_tier_budget",
            "The hot tier's bound (storage.hot_tier_mib)",
            Unit::Bytes,
            hot_tier_budget.clone(),
        );
        let answer_reads = Family::<ResultLabels, Counter>::default();
        r.register(
            "writ_validate_answer_cache_reads",
            "Validate answers by whether the token's TokenInfo was already encoded (hit) or was encoded afresh (miss)",
            answer_reads.clone(),
        );
        let answer_bytes = Gauge::default();
        r.register_with_unit(
            "writ_validate_answer_cache",
            "Size of the encoded TokenInfo answers kept",
            Unit::Bytes,
            answer_bytes.clone(),
        );
        let answer_budget = Gauge::default();
        r.register_with_unit(
            "writ_validate_answer_cache_budget",
            "The encoded answers' bound (storage.answer_cache_mib)",
            Unit::Bytes,
            answer_budget.clone(),
        );
        let writer_groups = Counter::default();
        r.register(
            "writ_store_writer_groups",
            "Groups of writes (Mint, Downscope, revocation, a spent use) the store's writer ran, each answered after one sync of the write-ahead log; jobs / groups is the mean group",
            writer_groups.clone(),
        );
        let writer_jobs = Counter::default();
        r.register(
            "writ_store_writer_jobs",
            "Writes (and calls that found nothing to write) run by the store's writer",
            writer_jobs.clone(),
        );
        let writer_failed = Gauge::default();
        r.register(
            "writ_store_writer_failed",
            "1 once a sync of the store's write-ahead log failed: every write is refused until a restart (and /healthz fails)",
            writer_failed.clone(),
        );
        let cleanup_tokens = Counter::default();
        r.register(
            "writ_cleanup_tokens_purged",
            "Expired tokens reclaimed by cleanup",
            cleanup_tokens.clone(),
        );
        let cleanup_events = Counter::default();
        r.register(
            "writ_cleanup_events_purged",
            "Audit events reclaimed by cleanup past their retention",
            cleanup_events.clone(),
        );
        let cleanup_last_run = Gauge::<f64, AtomicU64>::default();
        r.register(
            "writ_cleanup_last_run_timestamp_seconds",
            "When cleanup last finished a run (Unix seconds; 0: not yet)",
            cleanup_last_run.clone(),
        );
        let audit_queue = Gauge::default();
        r.register(
            "writ_audit_queue_depth",
            "Audit events queued for the writer, not yet stored",
            audit_queue.clone(),
        );
        let aggregated = Family::<KindLabels, Counter>::default();
        r.register(
            "writ_audit_events_aggregated",
            "Refused and validated events counted into an aggregate instead of stored one by one (flood bound), by kind",
            aggregated.clone(),
        );
        let rate_limited = Family::<ClassLabels, Counter>::default();
        r.register(
            "writ_rate_limited",
            "Requests refused by a rate limit, by the limit's class (a role, or anonymous)",
            rate_limited.clone(),
        );
        let disabled = Family::<SourceLabels, Gauge>::default();
        r.register(
            "writ_parties_disabled",
            "Disabled parties, by source (operator: the kill switch; policy: the policy file)",
            disabled.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("writ_build_info", "The running build (always 1)", build);
        Metrics {
            registry: r,
            grpc_requests,
            grpc_duration,
            http_requests,
            http_duration,
            refusals,
            minted,
            downscoped,
            revoked,
            validations,
            decisions,
            chain_depth,
            tokens_stored,
            store_sst_bytes,
            store_memtable_bytes,
            hot_tier_reads,
            hot_tier_entries,
            hot_tier_bytes,
            hot_tier_budget,
            answer_reads,
            answer_bytes,
            answer_budget,
            writer_groups,
            writer_jobs,
            writer_failed,
            catching_up: std::sync::Mutex::default(),
            cleanup_tokens,
            cleanup_events,
            cleanup_last_run,
            audit_queue,
            aggregated,
            rate_limited,
            disabled,
            observe: OnceLock::new(),
        }
    }

    /// Sets what [`render`](Self::render) reads from the rest of the server (once; later
    /// calls are ignored).
    pub fn observe_with(&self, observe: Observe) {
        let _ = self.observe.set(observe);
    }

    /// The text a scrape answers (see [`CONTENT_TYPE`]), after reading the observed values.
    pub async fn render(&self) -> String {
        if let Some(observe) = self.observe.get() {
            let o = observe().await;
            let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
            set(&self.tokens_stored, o.tokens_stored);
            set(&self.store_sst_bytes, o.store_sst_bytes);
            set(&self.store_memtable_bytes, o.store_memtable_bytes);
            set(&self.hot_tier_entries, o.hot_tier.entries);
            set(&self.hot_tier_bytes, o.hot_tier.bytes);
            set(&self.hot_tier_budget, o.hot_tier.budget);
            set(&self.writer_failed, u64::from(o.writer.failed));
            set(&self.answer_bytes, o.answers.bytes);
            set(&self.answer_budget, o.answers.budget);
            {
                // The tier and the answers count on their own; their counters here catch up.
                let _one = self
                    .catching_up
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let reads = |family: &Family<ResultLabels, Counter>, hits: u64, misses: u64| {
                    for (result, total) in [("hit", hits), ("miss", misses)] {
                        let c = family.get_or_create(&ResultLabels { result });
                        c.inc_by(total.saturating_sub(c.get()));
                    }
                };
                reads(&self.hot_tier_reads, o.hot_tier.hits, o.hot_tier.misses);
                reads(&self.answer_reads, o.answers.hits, o.answers.misses);
                for (c, total) in [
                    (&self.writer_groups, o.writer.groups),
                    (&self.writer_jobs, o.writer.jobs),
                ] {
                    c.inc_by(total.saturating_sub(c.get()));
                }
            }
            set(&self.audit_queue, o.audit_queue);
            set(
                &self
                    .disabled
                    .get_or_create(&SourceLabels { source: "operator" }),
                o.disabled_by_operator,
            );
            set(
                &self
                    .disabled
                    .get_or_create(&SourceLabels { source: "policy" }),
                o.disabled_by_policy,
            );
        }
        self.encode()
    }

    /// The registry as text, as it stands.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A root token was minted.
    pub fn minted(&self) {
        self.minted.inc();
    }

    /// A child token of `depth` was derived.
    pub fn downscoped(&self, depth: u32) {
        self.downscoped.inc();
        self.chain_depth.observe(f64::from(depth));
    }

    /// `n` tokens were newly revoked.
    pub fn revoked(&self, n: usize) {
        self.revoked.inc_by(n as u64);
    }

    /// `operation` refused a new token on `dimension` (a stable name from a fixed set).
    pub fn refused(&self, operation: Operation, dimension: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                operation,
                dimension,
            })
            .inc();
    }

    /// A Validate answered `result` (`active` or the inactive reason's name).
    pub fn validated(&self, result: &'static str) {
        self.validations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// An action check of an active token was decided.
    pub fn decided(&self, allowed: bool) {
        let decision = if allowed { "allowed" } else { "denied" };
        self.decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// A cleanup run purged `tokens` tokens and `events` events and finished at
    /// `unix_seconds`.
    pub fn cleaned(&self, tokens: usize, events: usize, unix_seconds: f64) {
        self.cleanup_tokens.inc_by(tokens as u64);
        self.cleanup_events.inc_by(events as u64);
        self.cleanup_last_run.set(unix_seconds);
    }

    /// An event of `kind` (`refused`, `validated`) was counted, not stored.
    pub fn aggregated(&self, kind: &'static str) {
        self.aggregated.get_or_create(&KindLabels { kind }).inc();
    }

    /// A request was refused by the `class` limit.
    pub fn rate_limited(&self, class: &'static str) {
        self.rate_limited
            .get_or_create(&ClassLabels { class })
            .inc();
    }
}

/// A gRPC method this server serves: its service, its name, and both as `service/method`
/// (the request span's name).
struct Method {
    service: String,
    method: String,
    name: String,
}

/// The gRPC methods this server serves, by request path. Anything else is counted as
/// `unknown`, so a client cannot grow the label set.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    use prost::Message;
    let sets = [
        writ_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for m in &service.method {
                    methods.insert(
                        format!("/{full}/{}", m.name()),
                        Method {
                            service: full.clone(),
                            method: m.name().to_owned(),
                            name: format!("{full}/{}", m.name()),
                        },
                    );
                }
            }
        }
    }
    methods
});

/// `(service, method, service/method)` of a gRPC request path, or `unknown`.
fn grpc_method(path: &str) -> (&'static str, &'static str, &'static str) {
    METHODS
        .get(path)
        .map_or(("unknown", "unknown", "unknown"), |m| {
            (m.service.as_str(), m.method.as_str(), m.name.as_str())
        })
}

/// The canonical name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code of a gRPC response as its headers show it: `grpc-status` in a trailers-only
/// response (every error), OK otherwise.
fn grpc_code(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        None => "OK",
        Some(v) => code_name(tonic::Code::from_bytes(v.as_bytes())),
    }
}

/// A bounded name for an HTTP method.
fn http_method(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Grpc,
    Http,
}

/// Counts, times and spans every request (a tower layer). See [`grpc_layer`] and
/// [`http_layer`].
#[derive(Clone, Debug)]
pub struct RequestLayer {
    metrics: Arc<Metrics>,
    kind: Kind,
}

/// The request layer of a gRPC server (tonic's `Server::builder().layer(…)`, or a tonic
/// router turned into an axum router): `writ_grpc_requests_total` and
/// `writ_grpc_request_duration_seconds`, the request's span and its `x-request-id`.
pub fn grpc_layer(metrics: Arc<Metrics>) -> RequestLayer {
    RequestLayer {
        metrics,
        kind: Kind::Grpc,
    }
}

/// The request layer of an axum router (`Router::layer(…)`, so the matched route is
/// known): `writ_http_requests_total` and `writ_http_request_duration_seconds` by route
/// template, the request's span and its `x-request-id`.
pub fn http_layer(metrics: Arc<Metrics>) -> RequestLayer {
    RequestLayer {
        metrics,
        kind: Kind::Http,
    }
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            metrics: self.metrics.clone(),
            kind: self.kind,
        }
    }
}

/// The service [`RequestLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct RequestService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    kind: Kind,
}

/// What one request is counted as.
enum Label {
    Grpc(&'static str, &'static str),
    Http(String, &'static str),
}

/// Counts a request when it is answered, or as cancelled if its future is dropped first
/// (a client that went away, or the server's deadline).
struct Tally {
    metrics: Arc<Metrics>,
    label: Option<Label>,
    started: Instant,
}

impl Tally {
    /// Counts the answer: a gRPC code, or an HTTP status.
    fn answered(&mut self, code: &'static str, status: u16) {
        let Some(label) = self.label.take() else {
            return;
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let m = &self.metrics;
        match label {
            Label::Grpc(service, method) => {
                m.grpc_requests
                    .get_or_create(&GrpcLabels {
                        service,
                        method,
                        code,
                    })
                    .inc();
                m.grpc_duration
                    .get_or_create(&GrpcMethodLabels { service, method })
                    .observe(elapsed);
            }
            Label::Http(route, method) => {
                m.http_duration
                    .get_or_create(&HttpRouteLabels {
                        route: route.clone(),
                        method,
                    })
                    .observe(elapsed);
                m.http_requests
                    .get_or_create(&HttpLabels {
                        route,
                        method,
                        status,
                    })
                    .inc();
            }
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // 499: the client closed the request (nginx's convention).
        self.answered("CANCELLED", 499);
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = telemetry::request_id(req.headers());
        let (label, span) = match self.kind {
            Kind::Grpc => {
                let (service, method, name) = grpc_method(req.uri().path());
                let span = telemetry::request_span("grpc", name, &id, req.headers());
                (Label::Grpc(service, method), span)
            }
            Kind::Http => {
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
                let method = http_method(req.method());
                let name = format!("{method} {route}");
                let span = telemetry::request_span("http", &name, &id, req.headers());
                (Label::Http(route, method), span)
            }
        };
        let mut tally = Tally {
            metrics: self.metrics.clone(),
            label: Some(label),
            started,
        };
        // The clone that was made ready goes with this call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut answer = inner.call(req).await;
                match &mut answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        tally.answered(grpc_code(response.headers()), status);
                        if let Ok(mut v) = http::HeaderValue::from_str(&id) {
                            // Never indexed by HPACK: a value that never repeats would only
                            // churn the connection's dynamic table (an insert, a search and
                            // evictions of reusable entries on every answer).
                            v.set_sensitive(true);
                            response
                                .headers_mut()
                                .insert(telemetry::REQUEST_ID_HEADER, v);
                        }
                    }
                    Err(_) => tally.answered("UNKNOWN", 500),
                }
                answer
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service};

    /// Answers every request with `status` and, if given, a `grpc-status` header.
    #[derive(Clone)]
    struct Answer(u16, Option<&'static str>);

    impl<B> tower::Service<http::Request<B>> for Answer {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<B>) -> Self::Future {
            let mut r = http::Response::builder().status(self.0);
            if let Some(code) = self.1 {
                r = r.header("grpc-status", code);
            }
            std::future::ready(Ok(r.body(()).unwrap()))
        }
    }

    fn request(path: &str, id: Option<&str>) -> http::Request<()> {
        let mut r = http::Request::builder().uri(path);
        if let Some(id) = id {
            r = r.header(telemetry::REQUEST_ID_HEADER, id);
        }
        r.body(()).unwrap()
    }

    /// The sample lines of `name` in `text`.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    #[tokio::test]
    async fn grpc_requests_are_labelled_by_known_method_and_code() {
        let m = Arc::new(Metrics::new());
        let mut ok = grpc_layer(m.clone()).layer(Answer(200, None));
        let mut refused = grpc_layer(m.clone()).layer(Answer(200, Some("7")));
        let answer = ok
            .call(request("/writ.v1.TokenService/Validate", Some("abc-1")))
            .await
            .unwrap();
        assert_eq!(answer.headers()["x-request-id"], "abc-1", "echoed back");
        assert!(
            answer.headers()["x-request-id"].is_sensitive(),
            "kept out of HPACK's dynamic table"
        );
        refused
            .call(request("/writ.v1.TokenService/Downscope", None))
            .await
            .unwrap();
        // A path the server does not serve never becomes a label of its own.
        ok.call(request("/evil.Service/Anything-writ_secret", None))
            .await
            .unwrap();
        let text = m.encode();
        let requests = samples(&text, "writ_grpc_requests_total");
        assert!(
            requests.contains(
                &"writ_grpc_requests_total{service=\"writ.v1.TokenService\",method=\"Validate\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(
            requests.contains(
                &"writ_grpc_requests_total{service=\"writ.v1.TokenService\",method=\"Downscope\",code=\"PERMISSION_DENIED\"} 1"
            ),
            "{text}"
        );
        assert!(
            requests.contains(
                &"writ_grpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("evil"), "{text}");
        assert!(
            text.contains(
                "writ_grpc_request_duration_seconds_count{service=\"writ.v1.TokenService\",method=\"Validate\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn http_requests_are_labelled_by_route_template_and_status() {
        use axum::routing::get;
        let m = Arc::new(Metrics::new());
        let mut app = axum::Router::new()
            .route("/things/{id}", get(|| async { "thing" }))
            .layer(http_layer(m.clone()));
        for path in ["/things/1", "/things/2", "/nowhere"] {
            let req = http::Request::get(path)
                .header(telemetry::REQUEST_ID_HEADER, "bad id with spaces")
                .body(axum::body::Body::empty())
                .unwrap();
            let answer = app.call(req).await.unwrap();
            let id = answer.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(id.len(), 32, "a fresh id replaces an insane one: {id}");
        }
        let text = m.encode();
        assert!(
            text.contains(
                "writ_http_requests_total{route=\"/things/{id}\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "writ_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("/things/1"), "{text}");
    }

    #[tokio::test]
    async fn a_dropped_request_counts_as_cancelled() {
        let m = Arc::new(Metrics::new());
        /// Never answers.
        #[derive(Clone)]
        struct Never;
        impl<B> tower::Service<http::Request<B>> for Never {
            type Response = http::Response<()>;
            type Error = Infallible;
            type Future = std::future::Pending<Result<http::Response<()>, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<B>) -> Self::Future {
                std::future::pending()
            }
        }
        let mut svc = grpc_layer(m.clone()).layer(Never);
        let call = svc.call(request("/writ.v1.TokenService/Mint", None));
        drop(call);
        assert!(
            m.encode().contains(
                "writ_grpc_requests_total{service=\"writ.v1.TokenService\",method=\"Mint\",code=\"CANCELLED\"} 1"
            ),
            "{}",
            m.encode()
        );
    }

    #[tokio::test]
    async fn counters_and_observed_values_are_rendered() {
        let m = Metrics::new();
        m.minted();
        m.downscoped(2);
        m.revoked(3);
        m.refused(Operation::downscope, "scope");
        m.validated("active");
        m.validated("revoked");
        m.decided(false);
        m.rate_limited("agent");
        m.aggregated("refused");
        m.cleaned(4, 5, 1.5);
        m.observe_with(Box::new(|| {
            Box::pin(async {
                Observed {
                    tokens_stored: 7,
                    store_sst_bytes: 1024,
                    store_memtable_bytes: 2048,
                    hot_tier: writ_store::HotTierStats {
                        hits: 9,
                        misses: 3,
                        entries: 2,
                        bytes: 4096,
                        budget: 8192,
                    },
                    writer: writ_store::WriterStats {
                        groups: 4,
                        jobs: 10,
                        failed: true,
                    },
                    answers: crate::answers::AnswerStats {
                        hits: 5,
                        misses: 2,
                        entries: 2,
                        bytes: 900,
                        budget: 1 << 20,
                    },
                    audit_queue: 1,
                    disabled_by_operator: 2,
                    disabled_by_policy: 1,
                }
            })
        }));
        let text = m.render().await;
        for line in [
            "writ_tokens_minted_total 1",
            "writ_tokens_downscoped_total 1",
            "writ_tokens_revoked_total 3",
            "writ_refusals_total{operation=\"downscope\",dimension=\"scope\"} 1",
            "writ_validations_total{result=\"active\"} 1",
            "writ_validations_total{result=\"revoked\"} 1",
            "writ_action_decisions_total{decision=\"denied\"} 1",
            "writ_rate_limited_total{class=\"agent\"} 1",
            "writ_audit_events_aggregated_total{kind=\"refused\"} 1",
            "writ_cleanup_tokens_purged_total 4",
            "writ_cleanup_events_purged_total 5",
            "writ_cleanup_last_run_timestamp_seconds 1.5",
            "writ_chain_depth_bucket{le=\"2.0\"} 1",
            "writ_tokens_stored 7",
            "writ_store_sst_files_bytes 1024",
            "writ_store_memtables_bytes 2048",
            "writ_store_hot_tier_reads_total{result=\"hit\"} 9",
            "writ_store_hot_tier_reads_total{result=\"miss\"} 3",
            "writ_store_hot_tier_entries 2",
            "writ_store_hot_tier_bytes 4096",
            "writ_store_hot_tier_budget_bytes 8192",
            "writ_store_writer_groups_total 4",
            "writ_store_writer_jobs_total 10",
            "writ_store_writer_failed 1",
            "writ_validate_answer_cache_reads_total{result=\"hit\"} 5",
            "writ_validate_answer_cache_reads_total{result=\"miss\"} 2",
            "writ_validate_answer_cache_bytes 900",
            "writ_validate_answer_cache_budget_bytes 1048576",
            "writ_audit_queue_depth 1",
            "writ_parties_disabled{source=\"operator\"} 2",
            "writ_parties_disabled{source=\"policy\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Counters kept elsewhere catch up to their totals: a second scrape adds nothing.
        let again = m.render().await;
        assert!(
            again
                .lines()
                .any(|l| l == "writ_store_hot_tier_reads_total{result=\"hit\"} 9"),
            "{again}"
        );
    }
}
