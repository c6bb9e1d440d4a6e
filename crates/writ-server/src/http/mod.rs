//! Writ's OAuth face over HTTP, on its own listener (`[http]`): RFC 8693 token exchange
//! (`POST /token`, [`token`]), RFC 7662 introspection (`POST /introspect`,
//! [`introspect`]), RFC 8414 metadata and the JWKS ([`metadata`]), and the consent page
//! where a person approves or denies an agent's high-privilege action ([`consent`]).
//!
//! It adds no rule of its own: every endpoint calls the same
//! [`Service`](crate::service::Service) methods as gRPC (Mint, Downscope, Validate),
//! identifies its caller through the same [`Authenticator`] (which charges the rate
//! limits), and converts requests through `writ_api::convert`. What it owns is the OAuth
//! shape: strict forms ([`form`]), the parameters of a token exchange, and the one
//! mapping to OAuth errors ([`error`]).
//!
//! The listener takes connections under the caps of [`crate::transport`] and, with TLS,
//! through the same hot-reloaded [`TlsSource`] as gRPC (client certificates verified as
//! X.509-SVIDs), offering `h2` and `http/1.1`. Each connection's [`PeerInfo`] rides in
//! every request's extensions, so the auth seam reads it exactly as for gRPC. A request
//! that takes longer than `http.request_timeout_seconds` is answered 503; a stopping
//! server lets open requests finish for up to [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE).

pub mod consent;
pub mod error;
pub mod form;
pub mod introspect;
pub mod metadata;
pub mod token;

use crate::auth::{AuthError, Authenticator, Caller, FormClientAuth};
use crate::service::Service;
use crate::signing::Signer;
use crate::subject::SubjectVerifier;
use crate::tls::{self, PeerInfo, TlsSource};
use crate::transport;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use error::{OAuthError, json_response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};
use writ_store::TokenStore;

/// How long a client may take to send a request's headers (HTTP/1.1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block accepted (HTTP/2), as for gRPC.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Most concurrent streams on one HTTP/2 connection. Lower than gRPC's 256: every OAuth
/// request buffers a form body before it is authenticated.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Most request bodies being read at once, over every connection: with the default body
/// limit, at most 16 MiB buffered before authentication. Beyond it, 503 with `Retry-After`.
pub const MAX_BODIES_IN_FLIGHT: usize = 256;
/// How long a client may take to send a request's body (a slow sender holds its buffer).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoints share.
#[derive(Debug)]
pub struct HttpState<S> {
    /// The service gRPC calls too.
    pub service: Arc<Service<S>>,
    /// The one identity seam.
    pub auth: Authenticator,
    /// Signs Txn-Token JWTs and introspection answers; publishes the JWKS.
    pub signer: Arc<Signer>,
    /// Verifies external subject tokens.
    pub subjects: Arc<SubjectVerifier>,
    /// Writ's issuer identifier (`Config::issuer()`).
    pub issuer: String,
    /// The trust domain (an `audience` naming it names no party).
    pub trust_domain: String,
    /// A minted token's lifetime when the exchange names none (`tokens.default_ttl_seconds`).
    pub default_ttl_secs: u64,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Bodies being read ([`MAX_BODIES_IN_FLIGHT`]).
    pub reading: tokio::sync::Semaphore,
    /// The consent page's sign-in at the OpenID Provider, if configured.
    pub consent: consent::Pages,
}

/// Reads a request's form and identifies its caller through the auth seam (with the
/// form's client authentication). A request whose form is refused is charged to its
/// caller's rate limit all the same (identified without the form).
pub(crate) async fn read_and_identify<S: TokenStore>(
    state: &HttpState<S>,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<(form::Form, Caller), OAuthError> {
    let read = async {
        let Ok(_slot) = state.reading.try_acquire() else {
            return Err(OAuthError::unavailable(
                "too many requests are being read; retry shortly",
                1,
            ));
        };
        tokio::time::timeout(
            BODY_READ_TIMEOUT,
            form::Form::read(&parts.headers, body, state.body_limit),
        )
        .await
        .unwrap_or_else(|_| {
            Err(OAuthError::invalid_request(format!(
                "the request body took longer than {} s to arrive",
                BODY_READ_TIMEOUT.as_secs()
            )))
        })
    };
    let form = match read.await {
        Ok(form) => form,
        Err(refused) => {
            return Err(
                match state
                    .auth
                    .identify_http(parts, FormClientAuth::default())
                    .await
                {
                    Err(limited @ AuthError::Limited { .. }) => limited.into(),
                    _ => refused,
                },
            );
        }
    };
    let caller = state.auth.identify_http(parts, form.client_auth()).await?;
    Ok((form, caller))
}

/// The routes, over `state`. Unknown paths answer 404 and known paths with another method
/// 405, both as JSON.
pub fn router<S: TokenStore>(state: Arc<HttpState<S>>) -> Router {
    Router::new()
        .route(metadata::TOKEN_PATH, post(token::handle::<S>))
        .route(metadata::INTROSPECT_PATH, post(introspect::handle::<S>))
        .route(metadata::METADATA_PATH, get(metadata::metadata::<S>))
        .route(metadata::JWKS_PATH, get(metadata::jwks::<S>))
        .route(
            consent::PAGE_ROUTE,
            get(consent::show::<S>)
                .post(consent::decide::<S>)
                .fallback(|| async { consent::method_not_allowed("GET, HEAD, POST") }),
        )
        .route(
            consent::CALLBACK_PATH,
            get(consent::callback::<S>)
                .fallback(|| async { consent::method_not_allowed("GET, HEAD") }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    // Never echoed: a consent path may hold a link.
    if request.uri().path().starts_with("/consent/") {
        return consent::not_found();
    }
    let path = writ_core::text::Shown(request.uri().path()).to_string();
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "error_description": format!("no endpoint at {path}")}),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let allow = match request.uri().path() {
        metadata::TOKEN_PATH | metadata::INTROSPECT_PATH => "POST",
        _ => "GET, HEAD",
    };
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({
            "error": "method_not_allowed",
            "error_description": format!("{} {}: use {allow}", request.method(), request.uri().path()),
        }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Serves `router` on `listener` until `stop` turns true: over TLS from `tls` (with its
/// handshake timeout), or plaintext. Then lets open requests finish for up to
/// [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE) and drops what is left.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(Arc<TlsSource>, Duration)>,
    router: Router,
    request_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let conns = transport::incoming(listener);
    match tls {
        Some((source, handshake)) => {
            let conns = tls::incoming_with_alpn(conns, source, handshake, tls::Alpn::H2Http11);
            serve_conns(
                Box::pin(conns),
                |c: &tls::TlsConn| c.peer().clone(),
                router,
                request_timeout,
                stop,
            )
            .await
        }
        None => {
            serve_conns(
                Box::pin(conns),
                |c: &transport::Conn| PeerInfo {
                    remote_addr: tonic::transport::server::Connected::connect_info(c).remote_addr(),
                    spiffe_id: None,
                    not_after: None,
                },
                router,
                request_timeout,
                stop,
            )
            .await
        }
    }
}

type Conns<C> = Pin<Box<dyn Stream<Item = io::Result<C>> + Send>>;

async fn serve_conns<C>(
    mut conns: Conns<C>,
    peer_of: fn(&C) -> PeerInfo,
    router: Router,
    request_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(crate::HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut failed_accept = false;
    loop {
        // Not in a tight loop: the cause (say, no descriptor left) takes time to go.
        if std::mem::take(&mut failed_accept) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            next = conns.next() => match next {
                None => break,
                // A failed accept (say, out of descriptors) is not the listener's end.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting an HTTP connection failed");
                    failed_accept = true;
                }
                Some(Ok(conn)) => {
                    let service = WithPeer {
                        peer: peer_of(&conn),
                        router: router.clone(),
                        timeout: request_timeout,
                    };
                    let connection = builder
                        .serve_connection(TokioIo::new(conn), service)
                        .into_owned();
                    let watched = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(e) = watched.await {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                    });
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // No new connections; open ones finish their requests, then close.
    drop(conns);
    if tokio::time::timeout(crate::SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP connections still open after the shutdown grace period; dropping them"
        );
    }
    connections.shutdown().await;
}

/// The router, for one connection: each request gets the connection's [`PeerInfo`] and a
/// deadline.
#[derive(Clone)]
struct WithPeer {
    peer: PeerInfo,
    router: Router,
    timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for WithPeer {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        let mut router = self.router.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let answer = tower_service::Service::call(&mut router, request);
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(OAuthError::unavailable(
                    format!(
                        "the request took longer than {} s (http.request_timeout_seconds)",
                        timeout.as_secs()
                    ),
                    1,
                )
                .into_response()),
            }
        })
    }
}
