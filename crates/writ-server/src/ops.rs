//! The ops listener: what an orchestrator and a monitoring system ask a running server,
//! on a port of its own, in plaintext, speaking HTTP/1.1 and h2c on the one port.
//!
//! - `GET /metrics`: Prometheus (OpenMetrics) text, see [`crate::metrics`].
//! - `GET /healthz`: liveness: 200 as long as the process serves at all, 503 once its
//!   store has refused every write until a restart (a failed sync of RocksDB's WAL), so an
//!   orchestrator restarts it.
//! - `GET /readyz`: readiness: 200 while the store is open and the server is not shutting
//!   down, 503 otherwise.
//! - `grpc.health.v1.Health`: the same readiness for `""`, `writ.v1.TokenService` and
//!   `writ.v1.ChainService`, because Kubernetes' native gRPC probes cannot speak TLS and
//!   the main port is TLS by default. The main port serves the same statuses.
//!
//! Plaintext is acceptable beyond loopback: nothing here is a secret or names a caller
//! (labels are role names and fixed vocabularies; see `crate::metrics`). The listener is
//! up before the store opens (liveness answers during a long open; readiness does not
//! until it is done), readiness falls as soon as shutdown begins, before the grace
//! period, so load balancers drain, and the listener itself stops last. Connections are
//! capped like the main port's, more tightly ([`LIMITS`]).

use crate::metrics::{self, Metrics};
use crate::transport;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The services whose health is reported: the server as a whole (`""`) and each API.
pub const HEALTH_SERVICES: [&str; 3] = ["", "writ.v1.TokenService", "writ.v1.ChainService"];

/// What the ops listener admits: a few scrapers and probes, never a crowd.
pub const LIMITS: transport::Limits = transport::Limits {
    max: 64,
    per_peer: 32,
    first_byte: Duration::from_secs(10),
};

/// How long the ops listener's connections may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `[observability]`: the ops listener, logs and traces.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Serve the ops listener (default). Off: no metrics, no HTTP probes, no plaintext
    /// gRPC health (the main port still answers gRPC health over TLS).
    pub enabled: bool,
    /// Where the ops listener listens. Default `127.0.0.1:7435`. Plaintext: metrics carry
    /// no secrets and no caller identities beyond role names, so an address beyond
    /// loopback (for Prometheus and kubelet probes in a pod) is acceptable.
    pub listen: SocketAddr,
    /// `auto` (default: text on a terminal, JSON otherwise), `json` or `text`.
    pub log_format: crate::telemetry::LogFormat,
    /// The log filter when `RUST_LOG` is not set (`info`; e.g. `info,writ_server=debug`).
    pub log_level: String,
    /// Export traces over OTLP/gRPC to this collector, e.g. `http://collector:4317`
    /// (plaintext: a collector beside the server). None (default): no exporter, nothing
    /// is sent.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` traces carry. Default `writ`.
    pub service_name: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7435)),
            log_format: crate::telemetry::LogFormat::Auto,
            log_level: "info".into(),
            otlp_endpoint: None,
            service_name: "writ".into(),
        }
    }
}

impl ObservabilityConfig {
    /// Checks what the types cannot; the message names the field.
    pub fn validate(&self, main: SocketAddr) -> Result<(), String> {
        if self.enabled && self.listen == main && self.listen.port() != 0 {
            return Err(format!(
                "observability.listen = {} is the main listen address: the ops listener needs a port of its own",
                self.listen
            ));
        }
        if self.log_level.len() > 1024 {
            return Err("observability.log_level: at most 1024 bytes".into());
        }
        crate::telemetry::parse_level(&self.log_level).map_err(|e| e.to_string())?;
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint.parse().map_err(|e| {
                format!("observability.otlp_endpoint = {endpoint:?}: not a URL: {e}")
            })?;
            if endpoint.len() > 2048
                || uri.scheme_str() != Some("http")
                || uri.authority().is_none()
                || uri.query().is_some()
            {
                return Err(format!(
                    "observability.otlp_endpoint = {endpoint:?}: must be an http://HOST:PORT \
                     URL of an OTLP/gRPC collector (plaintext, e.g. a collector beside the \
                     server), at most 2048 bytes"
                ));
            }
        }
        let name = &self.service_name;
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(format!(
                "observability.service_name = {name:?}: 1 to 128 printable ASCII characters"
            ));
        }
        Ok(())
    }
}

/// Whether the server is ready, as `/readyz` and gRPC health (on both ports) answer.
/// Starts not ready.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    /// The store failed for good: not ready, and not live either.
    failed: AtomicBool,
    reporter: HealthReporter,
}

impl Readiness {
    /// Not ready; every service in [`HEALTH_SERVICES`] NOT_SERVING.
    pub async fn new() -> Arc<Readiness> {
        let reporter = HealthReporter::new();
        for s in HEALTH_SERVICES {
            reporter
                .set_service_status(s, ServingStatus::NotServing)
                .await;
        }
        Arc::new(Readiness {
            ready: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            reporter,
        })
    }

    /// The `grpc.health.v1.Health` service answering from this state (add it to any
    /// number of routers).
    pub fn health_service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Ready now?
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Ready: the store is open and the server accepts requests.
    pub async fn serving(&self) {
        self.set(true).await;
    }

    /// Not ready: shutdown has begun (or the server stopped).
    pub async fn not_serving(&self) {
        self.set(false).await;
    }

    /// The store refuses every write until a restart: not ready, and `/healthz` fails.
    pub async fn store_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.set(false).await;
    }

    /// Live: the store has not failed for good.
    pub fn is_live(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }

    async fn set(&self, ready: bool) {
        let ready = ready && self.is_live();
        self.ready.store(ready, Ordering::SeqCst);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for s in HEALTH_SERVICES {
            self.reporter.set_service_status(s, status).await;
        }
    }
}

/// What the HTTP handlers read.
#[derive(Clone, Debug)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The ops router: the HTTP endpoints and gRPC health, each under its request layer.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> axum::Router {
    let grpc = tonic::service::Routes::new(readiness.health_service())
        .into_axum_router()
        .layer(metrics::grpc_layer(metrics.clone()));
    axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState {
            metrics: metrics.clone(),
            readiness,
        })
        .layer(metrics::http_layer(metrics))
        .merge(grpc)
}

async fn scrape(State(s): State<OpsState>) -> impl IntoResponse {
    let text = s.metrics.render().await;
    (
        [
            (http::header::CONTENT_TYPE, metrics::CONTENT_TYPE),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
}

async fn healthz(State(s): State<OpsState>) -> impl IntoResponse {
    let (status, body) = if s.readiness.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store refuses every write until a restart\n",
        )
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let (status, body) = if s.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

/// The running ops listener. Dropping it stops it at once; [`OpsServer::shutdown`] lets
/// its connections finish first.
#[derive(Debug)]
pub struct OpsServer {
    /// The address bound.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OpsServer {
    /// Serves `router` on `listener` until shut down.
    pub fn serve(listener: TcpListener, router: axum::Router) -> std::io::Result<OpsServer> {
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut incoming = std::pin::pin!(transport::incoming_limited(listener, LIMITS));
            let graceful = GracefulShutdown::new();
            loop {
                let conn = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    conn = incoming.next() => conn,
                };
                let conn = match conn {
                    Some(Ok(conn)) => conn,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "ops listener: accepting a connection");
                        // Not in a tight loop: the cause (say, no descriptor left) takes
                        // time to go.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    None => break,
                };
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(64 * 1024);
                builder
                    .http2()
                    .max_concurrent_streams(32)
                    .max_header_list_size(16 * 1024);
                let svc = TowerToHyperService::new(router.clone());
                let served = builder
                    .serve_connection(TokioIo::new(conn), svc)
                    .into_owned();
                let served = graceful.watch(served);
                tokio::spawn(async move {
                    if let Err(e) = served.await {
                        tracing::debug!(error = %e, "ops listener: connection ended");
                    }
                });
            }
            if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::debug!("ops listener: connections still open at shutdown");
            }
        });
        Ok(OpsServer { addr, stop, task })
    }

    /// Stops accepting and waits (up to [`SHUTDOWN_GRACE`]) for open connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE * 2, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::Service;

    async fn get(app: &mut axum::Router, path: &str) -> (StatusCode, String) {
        let req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let answer = app.call(req).await.unwrap();
        let status = answer.status();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Readiness starts false, rises when serving and falls at shutdown, for `/readyz`
    /// and gRPC health alike; liveness answers throughout, until the store fails for good.
    #[tokio::test]
    async fn readiness_flips_at_start_and_at_shutdown() {
        use tonic_health::pb::health_server::Health;
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new().await;
        let mut app = router(metrics.clone(), readiness.clone());
        let health = HealthService::from_health_reporter(readiness.reporter.clone());
        let check = |service: &str| {
            let req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            });
            let health = &health;
            async move { health.check(req).await.unwrap().into_inner().status }
        };
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        let not = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

        assert_eq!(
            get(&mut app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(&mut app, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        for s in HEALTH_SERVICES {
            assert_eq!(check(s).await, not, "{s:?} before the store is open");
        }
        readiness.serving().await;
        assert_eq!(
            get(&mut app, "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        for s in HEALTH_SERVICES {
            assert_eq!(check(s).await, serving, "{s:?}");
        }
        readiness.not_serving().await;
        assert_eq!(
            get(&mut app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&mut app, "/healthz").await.0, StatusCode::OK);
        for s in HEALTH_SERVICES {
            assert_eq!(check(s).await, not, "{s:?} at shutdown");
        }
        // A store that failed for good: not live, and never ready again.
        readiness.store_failed().await;
        readiness.serving().await;
        assert_eq!(
            get(&mut app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(&mut app, "/healthz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        for s in HEALTH_SERVICES {
            assert_eq!(check(s).await, not, "{s:?} after the store failed");
        }
        // Every probe was counted, by route template and status.
        let (status, text) = get(&mut app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                "writ_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"503\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "writ_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_configuration_is_checked() {
        let main: SocketAddr = "127.0.0.1:7433".parse().unwrap();
        let ok = ObservabilityConfig::default();
        ok.validate(main).unwrap();
        let bad = |f: &dyn Fn(&mut ObservabilityConfig), field: &str| {
            let mut c = ObservabilityConfig::default();
            f(&mut c);
            let e = c.validate(main).unwrap_err();
            assert!(e.contains(field), "{e}");
        };
        bad(&|c| c.listen = main, "observability.listen");
        bad(&|c| c.log_level = "info,=[".into(), "log_level");
        bad(
            &|c| c.otlp_endpoint = Some("https://collector:4317".into()),
            "otlp_endpoint",
        );
        bad(
            &|c| c.otlp_endpoint = Some("collector:4317".into()),
            "otlp_endpoint",
        );
        bad(&|c| c.service_name = String::new(), "service_name");
        bad(&|c| c.service_name = "a\nb".into(), "service_name");
        let c = ObservabilityConfig {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..Default::default()
        };
        c.validate(main).unwrap();
        // Off: the address does not matter.
        let c = ObservabilityConfig {
            enabled: false,
            listen: main,
            ..Default::default()
        };
        c.validate(main).unwrap();
    }
}
