//! Operability end to end: a full scenario over real gRPC, then what an operator's tools
//! see of it. The metrics count exactly what the scenario did; `/healthz`, `/readyz` and
//! gRPC health answer on the ops port (plaintext) and on the main port (TLS); reflection
//! lists the services; every log line of a request carries its `request_id` and `txn`;
//! and no token secret appears anywhere in the logs or the metrics.
//!
//! This binary installs a capturing JSON subscriber as the process's global default (one
//! per process, so every test here shares it).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use writ_e2e::*;

/// Every log line the process wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).expect("UTF-8 log lines")
    }

    /// Every line, parsed (each must be one JSON object).
    fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// The process's subscriber: JSON at `info`, as `writ serve` logs where stderr is no
/// terminal, whatever RUST_LOG says.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let config = Config::default().observability;
        let filter = writ_server::telemetry::parse_level("info").expect("a filter");
        let telemetry =
            writ_server::telemetry::install(&config, filter, move || writer.clone(), false)
                .expect("installing the subscriber");
        assert!(!telemetry.exporting(), "no OTLP endpoint: nothing exported");
        captured
    })
}

/// The value of the sample `line` (its name and labels exactly) in a scrape.
fn sample(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {line:?} in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

async fn health(channel: tonic::transport::Channel, service: &str) -> ServingStatus {
    let answer: HealthCheckResponse = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
        .into_inner();
    answer.status()
}

/// A request of `message` as the asserted caller `id`, carrying `x-request-id`.
fn as_caller<T>(message: T, id: &str, request_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("x-writ-caller", id.parse().expect("metadata"));
    r.metadata_mut()
        .insert("x-request-id", request_id.parse().expect("metadata"));
    r
}

#[tokio::test]
async fn a_scenario_is_counted_probed_reflected_and_logged_without_secrets() {
    let logs = logs();
    let srv = TestServer::start().await;

    // ---- the scenario, over real gRPC (TLS) ----
    let minted = srv.mint(trip_mint()).await;
    let root = minted.token.clone();
    let txn = minted.info.as_ref().expect("info").txn.clone();
    let mut tokens = pb::token_service_client::TokenServiceClient::new(srv.channel().await);
    let derived = tokens
        .downscope(as_caller(
            child(
                &root,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![("amount", build::max(500))],
            ),
            "planner",
            "e2e-downscope-1",
        ))
        .await
        .expect("downscope");
    assert_eq!(
        derived
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().ok()),
        Some(Some("e2e-downscope-1")),
        "the request id is echoed back"
    );
    let child_token = derived.into_inner().token;
    let checked = srv
        .validate(
            "booking",
            check(
                &child_token,
                "trips:book",
                vec![
                    ("amount", build::int(300)),
                    ("category", build::str("hotel")),
                ],
            ),
        )
        .await;
    assert_allowed(&checked);
    // An escalation: an audience (and a scope) beyond what the parent carries.
    let escalation = tokens
        .downscope(as_caller(
            child(
                &child_token,
                build::agent("hotel"),
                &[],
                &["payments:charge"],
                vec![],
            ),
            "booking",
            "e2e-escalation-1",
        ))
        .await;
    let refused = escalation.expect_err("an escalation is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.metadata().get("x-request-id").is_some(),
        "an error carries the request id too"
    );
    let revoked = srv.revoke_as_holder("planner", &root, "done").await;
    assert_eq!(revoked.len(), 2, "the root and its child");
    assert_inactive(
        &srv.validate("booking", introspect(&child_token)).await,
        pb::InactiveReason::Revoked,
    );
    let secrets = [root.clone(), child_token.clone()];
    // The kill switch: one party disabled by an operator.
    srv.operator()
        .await
        .disable_party("hotel", "compromised")
        .await
        .expect("disabling a party");

    // ---- health and readiness ----
    let healthz = srv.ops_get("/healthz").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let readyz = srv.ops_get("/readyz").await;
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready\n"));
    assert!(readyz.headers.contains_key("x-request-id"));
    for service in ["", "writ.v1.TokenService", "writ.v1.ChainService"] {
        assert_eq!(
            health(srv.channel().await, service).await,
            ServingStatus::Serving,
            "TLS, main port: {service:?}"
        );
        assert_eq!(
            health(srv.ops_channel().await, service).await,
            ServingStatus::Serving,
            "plaintext, ops port: {service:?}"
        );
    }
    let unknown = HealthClient::new(srv.ops_channel().await)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    // ---- reflection, both versions, on the main port ----
    let listed = reflect_v1(srv.channel().await).await;
    for s in [
        "writ.v1.TokenService",
        "writ.v1.ChainService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(listed.contains(&s.to_string()), "v1 lists {s}: {listed:?}");
    }
    let listed = reflect_v1alpha(srv.channel().await).await;
    assert!(
        listed.contains(&"writ.v1.TokenService".to_string()),
        "v1alpha: {listed:?}"
    );

    // ---- metrics: exactly what the scenario did ----
    let scrape = srv.ops_get("/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        scrape.headers
    );
    let text = scrape.body;
    let grpc = |method: &str, code: &str| {
        sample(
            &text,
            &format!(
                "writ_grpc_requests_total{{service=\"writ.v1.TokenService\",method=\"{method}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(grpc("Mint", "OK"), 1.0);
    assert_eq!(grpc("Downscope", "OK"), 1.0);
    assert_eq!(grpc("Downscope", "PERMISSION_DENIED"), 1.0);
    assert_eq!(grpc("Validate", "OK"), 2.0);
    assert_eq!(grpc("Revoke", "OK"), 1.0);
    assert_eq!(
        sample(
            &text,
            "writ_grpc_request_duration_seconds_count{service=\"writ.v1.TokenService\",method=\"Validate\"}"
        ),
        2.0
    );
    for (line, want) in [
        ("writ_tokens_minted_total", 1.0),
        ("writ_tokens_downscoped_total", 1.0),
        ("writ_tokens_revoked_total", 2.0),
        (
            "writ_refusals_total{operation=\"downscope\",dimension=\"audience\"}",
            1.0,
        ),
        ("writ_validations_total{result=\"active\"}", 1.0),
        ("writ_validations_total{result=\"revoked\"}", 1.0),
        ("writ_action_decisions_total{decision=\"allowed\"}", 1.0),
        ("writ_chain_depth_count", 1.0),
        ("writ_chain_depth_bucket{le=\"1.0\"}", 1.0),
        ("writ_parties_disabled{source=\"operator\"}", 1.0),
        ("writ_parties_disabled{source=\"policy\"}", 0.0),
        ("writ_build_info{version=\"0.1.0\"}", 1.0),
        (
            "writ_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"}",
            1.0,
        ),
        (
            "writ_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, line), want, "{line}");
    }
    // RocksDB's estimate; a Redis Cluster's memory is the cluster's own metric.
    if writ_e2e::redis::test_backend() == writ_server::config::Backend::Rocksdb {
        assert!(sample(&text, "writ_tokens_stored") >= 1.0, "{text}");
    }
    assert!(sample(&text, "writ_audit_queue_depth") >= 0.0);
    assert!(
        sample(
            &text,
            "writ_grpc_requests_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}"
        ) >= 3.0,
        "health checks are counted on the main port"
    );

    // ---- logs: request identity on every line, no secret anywhere ----
    let all = logs.text();
    for secret in &secrets {
        assert!(!all.contains(secret.as_str()), "a token secret was logged");
        assert!(
            !text.contains(secret.as_str()),
            "a token secret is in the metrics"
        );
        // Not even its random part without the prefix.
        let body = secret.trim_start_matches("writ_");
        assert!(!all.contains(body) && !text.contains(body));
    }
    let lines = logs.lines();
    let in_request: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "request")
        .collect();
    assert!(!in_request.is_empty(), "no request lines in:\n{all}");
    for l in &in_request {
        let id = l["span"]["request_id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "a request line without request_id: {l}");
    }
    let of_txn = |message: &str| -> Vec<&serde_json::Value> {
        in_request
            .iter()
            .copied()
            .filter(|l| l["message"] == message && l["span"]["txn"] == txn.as_str())
            .collect()
    };
    for message in ["minted", "downscoped", "revoked"] {
        assert_eq!(
            of_txn(message).len(),
            1,
            "one {message:?} line carrying txn {txn} in its request span:\n{all}"
        );
    }
    let downscoped = of_txn("downscoped");
    assert_eq!(
        downscoped[0]["span"]["request_id"], "e2e-downscope-1",
        "the caller's request id: {}",
        downscoped[0]
    );
}

/// The services reflection v1 lists.
async fn reflect_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1")
        .into_inner();
    let answer: ServerReflectionResponse =
        stream.next().await.expect("an answer").expect("a listing");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a listing: {other:?}"),
    }
}

/// The services reflection v1alpha lists.
async fn reflect_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let answer: ServerReflectionResponse =
        stream.next().await.expect("an answer").expect("a listing");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a listing: {other:?}"),
    }
}

/// Readiness falls as soon as shutdown begins, while the server still finishes what is
/// in flight: a health watch on the main port (an open stream, so shutdown waits in its
/// grace period) sees NOT_SERVING, and meanwhile the ops port answers 503 and
/// NOT_SERVING.
#[tokio::test]
async fn readiness_falls_when_shutdown_begins_before_the_grace_period() {
    logs();
    let mut srv = TestServer::start().await;
    let ops = srv.ops_addr();
    let ops_channel = srv.ops_channel().await;
    let mut watch = HealthClient::new(srv.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a health watch")
        .into_inner();
    let first = watch.next().await.expect("a status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopped = srv.begin_shutdown();
    let next = watch
        .next()
        .await
        .expect("the watch stays open during the grace period")
        .expect("a status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    // The watch holds the server in its grace period: the ops listener still answers.
    let readyz = http_get(ops, "/readyz").await;
    assert_eq!((readyz.status, readyz.body.as_str()), (503, "not ready\n"));
    assert_eq!(http_get(ops, "/healthz").await.status, 200, "still alive");
    assert_eq!(health(ops_channel, "").await, ServingStatus::NotServing);
    // Letting go of the stream lets the shutdown finish.
    drop(watch);
    stopped.await.expect("the shutdown task");
}
