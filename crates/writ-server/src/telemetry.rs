//! Logs and traces: the one place the process's `tracing` subscriber is built, so the
//! binary and the tests log alike, and the request identity every log line of a request
//! carries.
//!
//! - **Format.** `[observability] log_format`: `text` (human, coloured on a terminal),
//!   `json` (one object a line: what a log pipeline parses), or `auto` (default: text on a
//!   terminal, JSON otherwise, as under Kubernetes or systemd). The filter comes from
//!   `RUST_LOG` when it is set, else from `log_level`.
//! - **Request identity.** The request layer ([`crate::metrics::grpc_layer`],
//!   [`crate::metrics::http_layer`]) opens one span per request with its `request_id`
//!   (the caller's `x-request-id` when it is a sane printable value of at most
//!   [`MAX_REQUEST_ID`] bytes, else a fresh random one, echoed back either way) and an
//!   empty `txn`, which the service fills in ([`record_txn`]) as soon as it knows the
//!   transaction. Every line logged inside the request carries both.
//! - **Traces.** With `otlp_endpoint` set, spans are exported over OTLP/gRPC (batched,
//!   flushed by [`Telemetry::shutdown`]); a request's span continues the trace of an
//!   incoming W3C `traceparent`/`tracestate`. Without it no exporter exists and nothing
//!   is sent.
//!
//! No token secret is ever a field: the service logs token ids and transactions only.

use crate::ops::ObservabilityConfig;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The header that carries a request's id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a caller.
pub const MAX_REQUEST_ID: usize = 64;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (default).
    #[default]
    Auto,
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// Whether lines are JSON, for a writer that `terminal` says is (or is not) a terminal.
    pub fn is_json(self, terminal: bool) -> bool {
        match self {
            LogFormat::Auto => !terminal,
            LogFormat::Json => true,
            LogFormat::Text => false,
        }
    }
}

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` or `log_level` is no valid filter.
    #[error("log filter {source_name} = {value:?}: {reason}")]
    Filter {
        /// `RUST_LOG` or `observability.log_level`.
        source_name: &'static str,
        /// The value.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("observability.otlp_endpoint: building the OTLP exporter: {0}")]
    Otlp(String),
    /// Another subscriber is already the process's default.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// The installed subscriber's tracer provider, if traces are exported. Keep it for the
/// process's lifetime and call [`Telemetry::shutdown`] at exit, so the last spans are
/// sent.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (blocking work, run off the async threads: the
    /// exporter's own task needs them to send).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("writ: flushing traces: {e}"),
                Err(e) => eprintln!("writ: flushing traces: {e}"),
            }
        }
    }
}

/// The filter: `RUST_LOG` when set, else `log_level`.
fn filter(config: &ObservabilityConfig) -> Result<EnvFilter, TelemetryError> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| TelemetryError::Filter {
                source_name: "RUST_LOG",
                reason: e.to_string(),
                value,
            })
        }
        _ => parse_level(&config.log_level),
    }
}

/// `log_level` as a filter (also what configuration validation checks).
pub fn parse_level(level: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(level).map_err(|e| TelemetryError::Filter {
        source_name: "observability.log_level",
        value: level.to_owned(),
        reason: e.to_string(),
    })
}

/// Installs the process's subscriber, writing to stderr (see the module docs). Call it
/// inside the Tokio runtime: the OTLP exporter's client runs on it.
pub fn init(config: &ObservabilityConfig) -> Result<Telemetry, TelemetryError> {
    let terminal = std::io::stderr().is_terminal();
    install(config, filter(config)?, std::io::stderr, terminal)
}

/// [`init`] with `filter` instead of `RUST_LOG` or `log_level`, writing to `writer`,
/// which `terminal` says is (or is not) a terminal (tests capture the lines).
pub fn install<W>(
    config: &ObservabilityConfig,
    filter: EnvFilter,
    writer: W,
    terminal: bool,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if config.log_format.is_json(terminal) {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_writer(writer)
            .boxed()
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, &config.service_name)?),
        None => None,
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("writ"))
            .boxed()
    });
    let subscriber = Registry::default().with(fmt).with(traces).with(filter);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// A batching OTLP/gRPC span exporter to `endpoint`, naming this service `service_name`.
fn provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The request id of a request: the caller's `x-request-id` if it is sane (1 to
/// [`MAX_REQUEST_ID`] printable ASCII bytes without quotes or backslashes, and not a
/// Writ token, which must never reach a log), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> String {
    let mut given = headers.get_all(REQUEST_ID_HEADER).iter();
    match (given.next(), given.next()) {
        (Some(v), None) if sane_request_id(v.as_bytes()) => {
            // Sane means ASCII, so this is the same bytes.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => fresh_request_id(),
    }
}

/// See [`request_id`].
pub fn sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\''))
        && !id.starts_with(b"writ_")
}

/// 128 random bits, hex.
fn fresh_request_id() -> String {
    let mut digits = [0u8; 32];
    // 16 bytes are exactly 32 digits: this cannot fail.
    let _ = hex::encode_to_slice(rand::random::<[u8; 16]>(), &mut digits);
    digits.iter().map(|&d| char::from(d)).collect()
}

/// Reads W3C trace context from HTTP headers (gRPC metadata are HTTP/2 headers).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one request: `kind` (`grpc` or `http`), what was asked (`otel.name`: the
/// RPC or the method and route, which also names the trace span), its `request_id`, and
/// `txn`, empty until the service records it.
/// Continues the caller's trace when the headers carry a W3C `traceparent`.
pub fn request_span(
    kind: &'static str,
    name: &str,
    request_id: &str,
    headers: &HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        kind,
        request_id = %request_id,
        txn = tracing::field::Empty,
    );
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        // Only fails when the span is disabled (filtered out): nothing to continue then.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the transaction on the current request's span, so every later line of the
/// request carries it.
pub fn record_txn(txn: &writ_core::TxnId) {
    tracing::Span::current().record("txn", tracing::field::display(txn));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(REQUEST_ID_HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(&headers(&[b"req-42.a_b:c/d"])), "req-42.a_b:c/d");
        let max = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(request_id(&headers(&[max.as_bytes()])), max);
        let too_long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in [
            too_long.as_bytes(),
            b"has space",
            b"quote\"d",
            b"back\\slash",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            b"writ_AAAAsecret",
        ] {
            let got = request_id(&headers(&[bad]));
            assert_ne!(
                got.as_bytes(),
                bad,
                "{:?} was kept",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(got.len(), 32, "a fresh id is 128 bits of hex: {got}");
            assert!(got.bytes().all(|b| b.is_ascii_hexdigit()), "{got}");
        }
        // Absent, or sent twice: a fresh one, and never the same twice.
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(request_id(&headers(&[b"one", b"two"])).len(), 32);
    }

    /// Spans a tracer provider exported (synchronously, as each ends).
    #[derive(Clone, Debug, Default)]
    struct Collected(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Collected {
        fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send
        {
            self.0.lock().unwrap().extend(batch);
            std::future::ready(Ok(()))
        }
    }

    /// A request span continues the caller's W3C trace (same trace id, the caller's span
    /// as parent) and carries the request id and, once recorded, the transaction; a
    /// request without `traceparent` starts a trace of its own.
    #[test]
    fn a_request_span_continues_the_callers_trace() {
        let spans = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let txn = writ_core::TxnId::new(writ_core::UnixMillis(1_800_000_000_000), [7; 10]);
        tracing::subscriber::with_default(subscriber, || {
            let mut h = HeaderMap::new();
            h.insert(
                "traceparent",
                HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let span = request_span("grpc", "writ.v1.TokenService/Mint", "req-1", &h);
            span.in_scope(|| record_txn(&txn));
            drop(span);
            drop(request_span(
                "grpc",
                "writ.v1.TokenService/Validate",
                "req-2",
                &HeaderMap::new(),
            ));
        });
        let got = spans.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        let continued = &got[0];
        assert_eq!(continued.name, "writ.v1.TokenService/Mint");
        assert_eq!(
            continued.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(continued.parent_span_id.to_string(), "00f067aa0ba902b7");
        let attr = |k: &str| {
            continued
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("request_id").as_deref(), Some("req-1"));
        assert_eq!(attr("txn"), Some(txn.to_string()));
        let fresh = &got[1];
        assert_ne!(
            fresh.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(fresh.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    }

    /// With an endpoint, spans go to an OTLP exporter, and shutting it down flushes and
    /// returns even when the collector cannot be reached (the export fails, is reported,
    /// and the process still exits).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_exporter_flushes_at_shutdown_even_without_a_collector() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let provider = provider(&format!("http://{addr}"), "writ-test").unwrap();
        let subscriber = Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            drop(request_span(
                "grpc",
                "writ.v1.TokenService/Mint",
                "req-1",
                &HeaderMap::new(),
            ));
        });
        let telemetry = Telemetry {
            provider: Some(provider),
        };
        assert!(telemetry.exporting());
        telemetry.shutdown().await;
    }

    #[test]
    fn auto_is_json_unless_on_a_terminal() {
        assert!(LogFormat::Auto.is_json(false));
        assert!(!LogFormat::Auto.is_json(true));
        assert!(LogFormat::Json.is_json(true));
        assert!(!LogFormat::Text.is_json(false));
        assert!(parse_level("info,writ_server=debug").is_ok());
        assert!(parse_level("info,=[").is_err());
    }
}
