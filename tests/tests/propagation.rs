//! writ-client's propagation layers end to end, over a real server with proven identities
//! (mTLS): a three-service chain built only with the layers — the planner agent (a tonic
//! server) calls the booking service (an axum HTTP server) through the outbound layer over
//! a hyper client, which calls the payments API (a tonic server) through the outbound
//! layer over a tonic channel. Each hop checks what it received; every downstream's
//! headers are recorded as they arrive, to show the parent token is never forwarded.
//! Missing, repeated, forged, expired, revoked and wrong-audience tokens are refused at
//! each layer before the handler; the client's retries of Mint and Downscope after a lost
//! answer return the same token and spend nothing twice.
// Test code: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use writ_client::cache::VerdictCache;
use writ_client::propagate::{self, DownscopeLayer, Downscoping, Downstream, OutboundError};
use writ_client::propagate::{TxnContext, TxnTokenLayer};
use writ_client::{BoxError, TokenSecret, WritClient, build};
use writ_e2e::*;

const PLANNER: &str = "agent/planner";
const BOOKING: &str = "agent/booking";
const PAYMENTS: &str = "workload/payments";

// ---- one hop: what its handler ran with, what arrived on its wire ----

#[derive(Default)]
struct Hop {
    calls: AtomicU32,
    received: Mutex<Vec<pb::TokenInfo>>,
    wire: Mutex<Vec<http::HeaderMap>>,
}

impl Hop {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The handler ran with `ctx` (from the request's extensions); the task-local current
    /// transaction is the same.
    fn handled(&self, ctx: &TxnContext) {
        let current = propagate::current().expect("the handler runs in the current transaction");
        assert_eq!(current.info().token_id, ctx.info().token_id);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.received.lock().unwrap().push(ctx.info().clone());
    }

    fn last_received(&self) -> pb::TokenInfo {
        self.received.lock().unwrap().last().cloned().unwrap()
    }

    fn wire(&self) -> Vec<http::HeaderMap> {
        self.wire.lock().unwrap().clone()
    }
}

/// The outermost layer of a server: records every request's headers as they arrived.
fn recorder<B>(
    hop: Arc<Hop>,
) -> tower::util::MapRequestLayer<impl Fn(http::Request<B>) -> http::Request<B> + Clone> {
    tower::util::MapRequestLayer::new(move |req: http::Request<B>| {
        hop.wire.lock().unwrap().push(req.headers().clone());
        req
    })
}

/// Every `txn-token` value of a recorded request.
fn txn_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("txn-token")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Whether any header value of `headers` contains `secret`.
fn carries(headers: &http::HeaderMap, secret: &str) -> bool {
    headers
        .values()
        .any(|v| contains_bytes(v.as_bytes(), secret.as_bytes()))
}

// ---- the services ----

/// The payments API: a tonic service whose handler only records what it got.
struct PaymentsApi {
    hop: Arc<Hop>,
}

#[tonic::async_trait]
impl Health for PaymentsApi {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let ctx = req.extensions().get::<TxnContext>().unwrap().clone();
        self.hop.handled(&ctx);
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The planner agent: a tonic service whose handler books through the booking service.
struct PlannerAgent {
    hop: Arc<Hop>,
    booking_url: String,
    booking: Downscoping<HttpClient>,
}

#[tonic::async_trait]
impl Health for PlannerAgent {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let ctx = req.extensions().get::<TxnContext>().unwrap().clone();
        self.hop.handled(&ctx);
        // A careless handler passes its own token along, twice: the outbound layer must
        // send the child instead, once.
        let call = http::Request::post(format!("{}/book", self.booking_url))
            .header("txn-token", ctx.token().expose())
            .header("Txn-Token", ctx.token().expose())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let answer = self
            .booking
            .clone()
            .oneshot(call)
            .await
            .map_err(tonic::Status::from_error)?;
        if answer.status() != http::StatusCode::OK {
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            return Err(tonic::Status::internal(format!(
                "booking answered: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

/// The booking service's state: its hop and its client of the payments API.
struct Booking {
    hop: Arc<Hop>,
    payments: Downscoping<tonic::transport::Channel>,
}

/// `POST /book`: charges through the payments API.
async fn book(
    axum::extract::State(st): axum::extract::State<Arc<Booking>>,
    axum::Extension(ctx): axum::Extension<TxnContext>,
) -> (http::StatusCode, String) {
    st.hop.handled(&ctx);
    let mut payments = HealthClient::new(st.payments.clone());
    let mut charge = tonic::Request::new(HealthCheckRequest::default());
    charge
        .metadata_mut()
        .insert("x-amount", "150".parse().unwrap());
    match payments.check(charge).await {
        Ok(_) => (http::StatusCode::OK, "booked".into()),
        Err(s) => (
            http::StatusCode::BAD_GATEWAY,
            format!("payments: {}", s.message()),
        ),
    }
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Serves `api` over plaintext gRPC on loopback behind the recorder and `inbound`.
async fn serve_grpc<H: Health>(hop: &Arc<Hop>, inbound: TxnTokenLayer, api: H) -> SocketAddr {
    let (l, addr) = listener().await;
    let layers = ServiceBuilder::new()
        .layer(recorder::<tonic::body::Body>(hop.clone()))
        .layer(inbound)
        .into_inner();
    let server = tonic::transport::Server::builder()
        .layer(layers)
        .add_service(HealthServer::new(api))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
    tokio::spawn(server);
    addr
}

/// Serves `router` over plain HTTP on loopback.
async fn serve_http(router: axum::Router) -> SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    addr
}

/// The payments API's action: a charge of the `x-amount` the request names.
fn charge(head: &http::request::Parts) -> Option<pb::Action> {
    let mut attributes = std::collections::HashMap::new();
    if let Some(amount) = head.headers.get("x-amount") {
        let amount = amount.to_str().ok()?.parse().ok()?;
        attributes.insert("amount".to_owned(), build::int(amount));
    }
    Some(pb::Action {
        scope: "payments:charge".into(),
        attributes,
    })
}

/// The three services, each with its own proven identity.
struct Chain {
    planner: Arc<Hop>,
    booking: Arc<Hop>,
    payments: Arc<Hop>,
    planner_addr: SocketAddr,
    booking_addr: SocketAddr,
    payments_addr: SocketAddr,
    /// The planner's outbound client of the booking service (for the refusal checks).
    planner_to_booking: Downscoping<HttpClient>,
    planner_client: WritClient,
}

fn booking_downstream(srv: &TestServer) -> Downstream {
    Downstream::new(build::agent(&srv.spiffe(BOOKING)))
        .scopes(&["trips:book", "payments:charge"])
        .claim("amount", build::max(500))
        .targets(&[&srv.spiffe(PAYMENTS)])
        .purpose("book the flight")
}

async fn start_chain(srv: &TestServer) -> Chain {
    let (planner, booking, payments) = (
        Arc::new(Hop::default()),
        Arc::new(Hop::default()),
        Arc::new(Hop::default()),
    );

    // payments: checks payments:charge on every request.
    let payments_client = srv.svid_client(PAYMENTS).await;
    let payments_addr = serve_grpc(
        &payments,
        TxnTokenLayer::new(payments_client).action(charge),
        PaymentsApi {
            hop: payments.clone(),
        },
    )
    .await;

    // booking: checks trips:book; calls payments with a child for payments only.
    let booking_client = srv.svid_client(BOOKING).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{payments_addr}"))
        .unwrap()
        .connect_lazy();
    let to_payments = DownscopeLayer::new(
        booking_client.clone(),
        Downstream::new(build::workload(&srv.spiffe(PAYMENTS)))
            .scopes(&["payments:charge"])
            .claim("amount", build::max(200))
            .ttl(Duration::from_secs(60)),
    )
    .layer(channel);
    let router = axum::Router::new()
        .route("/book", axum::routing::post(book))
        .with_state(Arc::new(Booking {
            hop: booking.clone(),
            payments: to_payments,
        }))
        .layer(
            ServiceBuilder::new()
                .layer(recorder::<axum::body::Body>(booking.clone()))
                .layer(TxnTokenLayer::new(booking_client).require_scope("trips:book")),
        );
    let booking_addr = serve_http(router).await;

    // planner: plain introspection; calls booking over HTTP.
    let planner_client = srv.svid_client(PLANNER).await;
    let planner_to_booking =
        DownscopeLayer::new(planner_client.clone(), booking_downstream(srv)).layer(http_client());
    let planner_addr = serve_grpc(
        &planner,
        TxnTokenLayer::new(planner_client.clone()),
        PlannerAgent {
            hop: planner.clone(),
            booking_url: format!("http://{booking_addr}"),
            booking: planner_to_booking.clone(),
        },
    )
    .await;
    Chain {
        planner,
        booking,
        payments,
        planner_addr,
        booking_addr,
        payments_addr,
        planner_to_booking,
        planner_client,
    }
}

/// The gateway's root for the planner: alice's trip, reaching booking and payments.
fn trip(srv: &TestServer) -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent(&srv.spiffe(PLANNER)),
        &[&srv.spiffe(BOOKING), &srv.spiffe(PAYMENTS)],
        &["trips:book", "payments:charge"],
        vec![(
            "amount",
            build::applies_to(build::max(1000), &["payments:charge"]),
        )],
    )
}

/// A root held directly by `audience` (for probing that hop alone).
fn held_by(audience: pb::Party, scopes: &[&str]) -> pb::MintRequest {
    mint_request("alice", audience, &[], scopes, vec![])
}

// ---- probes: requests sent straight to one hop ----

/// Calls a gRPC hop with these `txn-token` values.
async fn grpc_probe(addr: SocketAddr, tokens: &[&str]) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut r = tonic::Request::new(HealthCheckRequest::default());
    for t in tokens {
        r.metadata_mut().append("txn-token", t.parse().unwrap());
    }
    HealthClient::new(channel).check(r).await.map(|_| ())
}

/// POSTs `/book` to an HTTP hop with these `Txn-Token` values: status and JSON body.
async fn http_probe(addr: SocketAddr, tokens: &[&str]) -> (u16, serde_json::Value) {
    let mut r = http::Request::post(format!("http://{addr}/book"));
    for t in tokens {
        r = r.header("Txn-Token", *t);
    }
    let answer = http_client()
        .request(r.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Mints a one-second token for `audience` and waits until its holder sees it expired.
async fn expired_token(
    srv: &TestServer,
    holder: &mut WritClient,
    audience: pb::Party,
    scopes: &[&str],
) -> String {
    let t = srv
        .mint(pb::MintRequest {
            ttl_seconds: 1,
            ..held_by(audience, scopes)
        })
        .await
        .token;
    for _ in 0..100 {
        let r = ok(holder.validate(introspect(&t)).await, "validate");
        if !r.active {
            assert_inactive(&r, pb::InactiveReason::Expired);
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a one-second token never expired");
}

/// The tokens a hop must refuse, with what the refusal must name.
async fn bad_tokens(
    srv: &TestServer,
    hop: &str,
    audience: pb::Party,
    scopes: &[&str],
    someone_else: pb::Party,
) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let valid = srv.mint(held_by(audience.clone(), scopes)).await.token;
    let other = srv.mint(held_by(audience.clone(), scopes)).await.token;
    let revoked = srv.mint(held_by(audience.clone(), scopes)).await;
    srv.revoke_as_operator(revoke_token_id(&token_id(revoked.info.as_ref()), "test"))
        .await;
    let mut holder = srv.svid_client(hop).await;
    let expired = expired_token(srv, &mut holder, audience, scopes).await;
    let foreign = srv.mint(held_by(someone_else, scopes)).await.token;
    vec![
        ("missing", vec![], "missing"),
        ("repeated", vec![valid.clone(), other], "more than once"),
        ("forged", vec![flip_middle(&valid)], "inactive"),
        ("expired", vec![expired], "inactive (expired)"),
        ("revoked", vec![revoked.token], "inactive (revoked)"),
        ("wrong audience", vec![foreign], "inactive (wrong_audience)"),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[track_caller]
fn assert_grpc_refused(r: Result<(), tonic::Status>, code: Code, needle: &str, tokens: &[String]) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains("txn-token"), "{s:?}");
    assert!(s.message().contains(needle), "{needle}: {s:?}");
    for t in tokens {
        assert!(
            !s.message().contains(t.as_str()),
            "the refusal names no token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_service_chain_narrows_at_every_hop_and_refuses_bad_tokens_before_handlers() {
    let srv = TestServer::start_proven().await;
    let chain = start_chain(&srv).await;

    // Each layer refuses every bad token; no handler runs.
    let planner_party = build::agent(&srv.spiffe(PLANNER));
    let booking_party = build::agent(&srv.spiffe(BOOKING));
    let payments_party = build::workload(&srv.spiffe(PAYMENTS));
    let all = ["trips:book", "payments:charge"];
    for (what, tokens, needle) in bad_tokens(
        &srv,
        PLANNER,
        planner_party.clone(),
        &all,
        booking_party.clone(),
    )
    .await
    {
        let r = grpc_probe(chain.planner_addr, &refs(&tokens)).await;
        assert_grpc_refused(r, Code::Unauthenticated, needle, &tokens);
        assert_eq!(chain.planner.calls(), 0, "planner, {what}");
    }
    for (what, tokens, needle) in bad_tokens(
        &srv,
        BOOKING,
        booking_party.clone(),
        &all,
        planner_party.clone(),
    )
    .await
    {
        let (status, json) = http_probe(chain.booking_addr, &refs(&tokens)).await;
        assert_eq!(status, 401, "booking, {what}: {json}");
        assert_eq!(json["error"], "invalid_token", "{what}");
        let d = json["error_description"].as_str().unwrap();
        assert!(d.contains("txn-token") && d.contains(needle), "{what}: {d}");
        assert!(tokens.iter().all(|t| !d.contains(t.as_str())));
        assert_eq!(chain.booking.calls(), 0, "booking, {what}");
    }
    for (what, tokens, needle) in bad_tokens(
        &srv,
        PAYMENTS,
        payments_party.clone(),
        &all,
        booking_party.clone(),
    )
    .await
    {
        let r = grpc_probe(chain.payments_addr, &refs(&tokens)).await;
        assert_grpc_refused(r, Code::Unauthenticated, needle, &tokens);
        assert_eq!(chain.payments.calls(), 0, "payments, {what}");
    }
    // Active, but without the scope the layer requires: denied, not handled.
    let no_charge = srv
        .mint(held_by(payments_party.clone(), &["trips:book"]))
        .await
        .token;
    let r = grpc_probe(chain.payments_addr, &[&no_charge]).await;
    assert_grpc_refused(r, Code::PermissionDenied, "payments:charge", &[no_charge]);
    let no_booking = srv
        .mint(held_by(booking_party.clone(), &["payments:charge"]))
        .await
        .token;
    let (status, json) = http_probe(chain.booking_addr, &[&no_booking]).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{json}"
    );
    assert_eq!(
        (
            chain.planner.calls(),
            chain.booking.calls(),
            chain.payments.calls()
        ),
        (0, 0, 0)
    );

    // The whole chain, carried only by the layers.
    chain.booking.wire.lock().unwrap().clear();
    chain.payments.wire.lock().unwrap().clear();
    let root = srv.mint(trip(&srv)).await;
    grpc_probe(chain.planner_addr, &[&root.token])
        .await
        .unwrap_or_else(|s| panic!("the chain failed: {s:?}"));
    assert_eq!(
        (
            chain.planner.calls(),
            chain.booking.calls(),
            chain.payments.calls()
        ),
        (1, 1, 1)
    );
    let root_id = token_id(root.info.as_ref());

    // Each hop received a token for itself, narrower than the one before.
    let at_planner = chain.planner.last_received();
    assert_eq!(at_planner.token_id, root_id);
    assert_eq!(
        at_planner.audience.as_ref().unwrap().id,
        srv.spiffe(PLANNER)
    );
    let at_booking = chain.booking.last_received();
    assert_eq!(
        at_booking.audience.as_ref().unwrap().id,
        srv.spiffe(BOOKING)
    );
    assert_eq!(at_booking.parent_token_id, root_id);
    assert_eq!(at_booking.depth, 1);
    assert_eq!(
        at_booking.scopes,
        sorted(&["trips:book", "payments:charge"])
    );
    assert_eq!(
        at_booking.claims["amount"],
        build::applies_to(build::max(500), &["payments:charge"])
    );
    assert_eq!(at_booking.targets, strings(&[&srv.spiffe(PAYMENTS)]));
    assert_eq!(at_booking.purpose, "book the flight");
    assert_eq!(act_ids(&at_booking)[0], srv.spiffe(PLANNER));
    let at_payments = chain.payments.last_received();
    assert_eq!(
        at_payments.audience.as_ref().unwrap().id,
        srv.spiffe(PAYMENTS)
    );
    assert_eq!(at_payments.parent_token_id, at_booking.token_id);
    assert_eq!(at_payments.depth, 2);
    assert_eq!(at_payments.scopes, strings(&["payments:charge"]));
    assert_eq!(
        at_payments.claims["amount"],
        build::applies_to(build::max(200), &["payments:charge"])
    );
    assert!(at_payments.targets.is_empty());
    assert_eq!(act_ids(&at_payments)[0], srv.spiffe(BOOKING));
    assert!(at_payments.expires_at_unix_ms <= at_booking.expires_at_unix_ms);

    // On the wire: each downstream got exactly one txn-token, its own, never a parent's,
    // although the planner's handler tried to pass its own token along twice.
    let booking_wire = chain.booking.wire();
    assert_eq!(booking_wire.len(), 1);
    let booking_token = match &txn_tokens(&booking_wire[0])[..] {
        [one] => one.clone(),
        other => panic!("booking received {} txn-tokens", other.len()),
    };
    assert_ne!(booking_token, root.token);
    assert!(
        !carries(&booking_wire[0], &root.token),
        "the root reached booking"
    );
    let payments_wire = chain.payments.wire();
    assert_eq!(payments_wire.len(), 1);
    let payments_token = match &txn_tokens(&payments_wire[0])[..] {
        [one] => one.clone(),
        other => panic!("payments received {} txn-tokens", other.len()),
    };
    assert!(
        !carries(&payments_wire[0], &root.token),
        "the root reached payments"
    );
    assert!(
        !carries(&payments_wire[0], &booking_token),
        "booking's token reached payments"
    );
    // And they are the tokens the hops were told about.
    let mut as_payments = srv.svid_client(PAYMENTS).await;
    let seen = assert_active(&ok(
        as_payments.validate(introspect(&payments_token)).await,
        "validate",
    ));
    assert_eq!(seen.token_id, at_payments.token_id);

    // The transaction's tree holds exactly the three tokens.
    let tree = ok(
        srv.operator().await.get_transaction(&at_planner.txn).await,
        "tree",
    );
    assert_eq!(tree.tokens.len(), 3, "{tree:?}");

    // The outbound layer sends nothing without a current token…
    let before = chain.booking.wire().len();
    let call = || {
        http::Request::post(format!("http://{}/book", chain.booking_addr))
            .header("txn-token", root.token.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let e = chain
        .planner_to_booking
        .clone()
        .oneshot(call())
        .await
        .unwrap_err();
    let e = e.downcast::<OutboundError>().unwrap();
    assert!(matches!(*e, OutboundError::NoCurrentToken { .. }), "{e}");
    // …nor when Writ refuses the narrowing (here: wider than the parent).
    let root_ctx = TxnContext::new(
        TokenSecret::new(root.token.clone()),
        at_planner.clone(),
        None,
    );
    let wider = DownscopeLayer::new(
        chain.planner_client.clone(),
        booking_downstream(&srv).claim("amount", build::max(5000)),
    )
    .layer(http_client());
    let e = propagate::scope(root_ctx.clone(), wider.oneshot(call()))
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(&root.token), "{e}");
    let e = e.downcast::<OutboundError>().unwrap();
    let OutboundError::Downscope { source, .. } = &*e else {
        panic!("{e}");
    };
    assert_eq!(
        source.reason().as_deref(),
        Some("NARROWING_REFUSED"),
        "{source}"
    );
    assert_eq!(source.dimension().as_deref(), Some("claims"), "{source}");
    assert_eq!(chain.booking.wire().len(), before, "nothing was sent");
    assert_eq!(chain.booking.calls(), 1);

    // A request built by hand gets its child from downscope_for.
    let child = propagate::scope(
        root_ctx,
        propagate::downscope_for(&chain.planner_client, &booking_downstream(&srv)),
    )
    .await
    .unwrap();
    assert_ne!(child.token().expose(), root.token);
    assert_eq!(
        child.info().audience.as_ref().unwrap().id,
        srv.spiffe(BOOKING)
    );
    assert!(!format!("{child:?}").contains(child.token().expose()));
    let (status, _) = http_probe(chain.booking_addr, &[child.token().expose()]).await;
    assert_eq!(status, 200);
    assert_eq!(chain.booking.calls(), 2);

    // A revoked transaction stops the chain at its first hop.
    srv.revoke_as_operator(revoke_txn(&at_planner.txn, "test"))
        .await;
    let r = grpc_probe(chain.planner_addr, &[&root.token]).await;
    assert_grpc_refused(
        r,
        Code::Unauthenticated,
        "inactive (revoked)",
        std::slice::from_ref(&root.token),
    );
    assert_eq!(chain.planner.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_layer_fails_closed_when_writ_is_unreachable() {
    let mut gone = TestServer::start_proven().await;
    let token = gone
        .mint(held_by(
            build::agent(&gone.spiffe(BOOKING)),
            &["trips:book"],
        ))
        .await
        .token;
    let client = gone
        .svid_client(BOOKING)
        .await
        .with_retry(writ_client::RetryPolicy::none());
    gone.stop().await;
    let hop = Arc::new(Hop::default());
    let handler_hop = hop.clone();
    let router = axum::Router::new()
        .route(
            "/book",
            axum::routing::post(move || {
                handler_hop.calls.fetch_add(1, Ordering::SeqCst);
                async { "booked" }
            }),
        )
        .layer(TxnTokenLayer::new(client));
    let request = |grpc: bool| {
        let mut r = http::Request::post("/book").header("txn-token", token.as_str());
        if grpc {
            r = r.header("content-type", "application/grpc");
        }
        r.body(axum::body::Body::empty()).unwrap()
    };
    let answer = router.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(answer.status(), 503);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "temporarily_unavailable");
    let answer = router.oneshot(request(true)).await.unwrap();
    assert_eq!(answer.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(hop.calls(), 0, "the handler never ran");
}

// ---- a lost answer, and the retry that finds the same token ----

/// Lets the first call to `path` reach the server, keeps its answer's bytes and reports
/// UNAVAILABLE instead, as if the answer was lost on the way back.
#[derive(Clone)]
struct LoseFirstAnswer {
    path: &'static str,
    calls: Arc<AtomicU32>,
    lost: Arc<Mutex<Vec<Bytes>>>,
}

impl LoseFirstAnswer {
    fn new(path: &'static str) -> LoseFirstAnswer {
        LoseFirstAnswer {
            path,
            calls: Default::default(),
            lost: Default::default(),
        }
    }
}

impl<S> Layer<S> for LoseFirstAnswer {
    type Service = LoseFirstAnswerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoseFirstAnswerService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct LoseFirstAnswerService<S> {
    inner: S,
    layer: LoseFirstAnswer,
}

impl<S> Service<http::Request<tonic::body::Body>> for LoseFirstAnswerService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let lose = req.uri().path() == self.layer.path
            && self.layer.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let lost = self.layer.lost.clone();
        Box::pin(async move {
            let answer = inner.call(req).await.map_err(Into::into)?;
            if !lose {
                return Ok(answer);
            }
            let body = answer.into_body().collect().await?.to_bytes();
            lost.lock().unwrap().push(body);
            Err(Box::new(tonic::Status::unavailable(
                "the answer was lost on the way back",
            )) as BoxError)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_answer_returns_the_same_token_and_spends_nothing_twice() {
    let srv = TestServer::start_proven().await;
    let subject = "alice-idempotent";

    // Mint: the first answer is lost; the retry answers the same root.
    let lose_mint = LoseFirstAnswer::new("/writ.v1.TokenService/Mint");
    let mut minter = srv.minter().await.with_layer(lose_mint.clone());
    let root = ok(
        minter
            .mint(pb::MintRequest {
                max_uses: 5,
                ..mint_request(
                    subject,
                    build::agent(&srv.spiffe(PLANNER)),
                    &[&srv.spiffe(BOOKING)],
                    &["trips:book"],
                    vec![],
                )
            })
            .await,
        "mint",
    );
    assert_eq!(lose_mint.calls.load(Ordering::SeqCst), 2, "sent twice");
    let lost = lose_mint.lost.lock().unwrap().clone();
    assert!(
        contains_bytes(&lost[0], root.token.as_bytes()),
        "the retry answered the token of the lost answer"
    );
    let txn = root.info.as_ref().unwrap().txn.clone();
    let mut operator = srv.operator().await;
    let txns = ok(
        operator
            .list_transactions(pb::ListTransactionsRequest {
                subject: subject.into(),
                ..Default::default()
            })
            .await,
        "list",
    );
    assert_eq!(txns.transactions.len(), 1, "one transaction: {txns:?}");
    assert_eq!(txns.transactions[0].txn, txn);

    // Downscope: the first answer is lost; the retry answers the same child, and the
    // use-limited parent reserved its uses once.
    let lose_downscope = LoseFirstAnswer::new("/writ.v1.TokenService/Downscope");
    let mut planner = srv
        .svid_client(PLANNER)
        .await
        .with_layer(lose_downscope.clone());
    let derived = ok(
        planner
            .downscope(pb::DownscopeRequest {
                max_uses: 2,
                ..child(
                    &root.token,
                    build::agent(&srv.spiffe(BOOKING)),
                    &[],
                    &["trips:book"],
                    vec![],
                )
            })
            .await,
        "downscope",
    );
    assert_eq!(lose_downscope.calls.load(Ordering::SeqCst), 2, "sent twice");
    let lost = lose_downscope.lost.lock().unwrap().clone();
    assert!(contains_bytes(&lost[0], derived.token.as_bytes()));
    let tree = ok(operator.get_transaction(&txn).await, "tree");
    assert_eq!(tree.tokens.len(), 2, "one child: {tree:?}");
    let root_node = tree
        .tokens
        .iter()
        .find(|n| n.info.as_ref().unwrap().token_id == token_id(root.info.as_ref()))
        .unwrap();
    assert_eq!(
        (root_node.children, root_node.uses),
        (1, 2),
        "{root_node:?}"
    );

    // Never retried: an action check on a use-limited token would spend a use twice.
    let lose_check = LoseFirstAnswer::new("/writ.v1.TokenService/Validate");
    let mut booking = srv
        .svid_client(BOOKING)
        .await
        .with_layer(lose_check.clone());
    let e = booking
        .validate(check(&derived.token, "trips:book", vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable));
    assert_eq!(lose_check.calls.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_verdicts_see_a_revocation_late_and_limited_tokens_never() {
    let srv = TestServer::start_proven().await;
    let planner = build::agent(&srv.spiffe(PLANNER));
    let cache = VerdictCache::new(Duration::from_secs(30), 100);
    let mut cached = srv
        .svid_client(PLANNER)
        .await
        .with_verdict_cache(cache.clone());
    let mut fresh = srv.svid_client(PLANNER).await;

    let open = srv.mint(held_by(planner.clone(), &["trips:book"])).await;
    assert_active(&ok(
        cached.validate(introspect(&open.token)).await,
        "validate",
    ));
    assert_eq!(cache.len(), 1);
    srv.revoke_as_operator(revoke_token_id(&token_id(open.info.as_ref()), "test"))
        .await;
    assert_inactive(
        &ok(fresh.validate(introspect(&open.token)).await, "validate"),
        pb::InactiveReason::Revoked,
    );
    // The trade-off the cache documents: up to its TTL late.
    assert_active(&ok(
        cached.validate(introspect(&open.token)).await,
        "validate",
    ));
    cache.clear();
    assert_inactive(
        &ok(cached.validate(introspect(&open.token)).await, "validate"),
        pb::InactiveReason::Revoked,
    );

    let limited = srv
        .mint(pb::MintRequest {
            max_uses: 3,
            ..held_by(planner, &["trips:book"])
        })
        .await;
    assert_active(&ok(
        cached.validate(introspect(&limited.token)).await,
        "validate",
    ));
    assert!(cache.is_empty(), "a use-limited token is never cached");
    srv.revoke_as_operator(revoke_token_id(&token_id(limited.info.as_ref()), "test"))
        .await;
    assert_inactive(
        &ok(
            cached.validate(introspect(&limited.token)).await,
            "validate",
        ),
        pb::InactiveReason::Revoked,
    );
}
