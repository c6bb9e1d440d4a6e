//! The typed client: one connection to Writ acting as one caller, with a method per RPC,
//! per-attempt deadlines, safe retries ([`crate::retry`]) and, if asked for, cached Validate
//! verdicts ([`crate::cache`]).

use crate::cache::VerdictCache;
use crate::error::{BoxError, ClientError};
use crate::retry::{self, RetryPolicy, Safety};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;
use writ_api::pb::{
    self, chain_service_client::ChainServiceClient, token_service_client::TokenServiceClient,
};

/// Metadata header carrying an asserted identity (development mode only).
pub const CALLER_HEADER: &str = "x-writ-caller";
/// Metadata header carrying a JWT client assertion.
pub const ASSERTION_HEADER: &str = "writ-client-assertion";

/// What carries the client's gRPC requests: a tonic [`Channel`], possibly under tower
/// layers added with [`WritClient::with_layer`].
pub type Transport = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A failure of the [`Transport`] (the connection, or a layer under the client). Its
/// source is the original error, which tonic reads to choose the status (a `Status` a
/// layer returned is the call's status).
#[derive(Debug)]
pub struct TransportError(BoxError);

impl TransportError {
    /// Wraps a transport failure.
    pub fn new(e: impl Into<BoxError>) -> TransportError {
        TransportError(e.into())
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Produces a fresh JWT client assertion for each request (an assertion is single-use).
pub type AssertionSource = Arc<dyn Fn() -> Result<String, BoxError> + Send + Sync>;

/// How to reach a Writ server over TLS: the CA certificate(s) to trust (PEM; a local
/// server's is `<data_dir>/tls/ca.pem`), and optionally the client certificate and key
/// that prove this client's SPIFFE ID.
#[derive(Clone)]
pub struct Tls {
    /// PEM CA certificates the server's certificate must chain to.
    pub ca_pem: String,
    /// PEM client certificate (an X.509-SVID) and its PEM private key.
    pub identity: Option<(String, String)>,
    /// The name to check the server's certificate against; default: the address's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity.as_ref().map(|_| "<certificate>"))
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Assertion {
    Fixed(MetadataValue<Ascii>),
    Source(AssertionSource),
}

/// A connection to a Writ server, acting as one caller. Cheap to clone (clones share the
/// connection). `Debug` never prints a credential or an assertion.
///
/// Every call is bounded by [`WritClient::with_timeout`] per attempt when set, and the
/// calls that are safe to repeat are retried under [`WritClient::with_retry`] (on by
/// default): see [`crate::retry`].
#[derive(Clone)]
pub struct WritClient {
    transport: Transport,
    tokens: TokenServiceClient<Transport>,
    chain: ChainServiceClient<Transport>,
    caller: Option<MetadataValue<Ascii>>,
    credential: Option<MetadataValue<Ascii>>,
    assertion: Option<Assertion>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
    cache: Option<VerdictCache>,
}

impl std::fmt::Debug for WritClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritClient")
            .field("caller", &self.caller)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("assertion", &self.assertion.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A failed connection to `addr`, with every cause (tonic's own message is only
/// "transport error"; the cause says, for instance, that the server's certificate has an
/// unknown issuer).
fn connect_error(addr: &str, e: &(dyn std::error::Error + 'static)) -> ClientError {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    ClientError::Connect {
        addr: addr.to_string(),
        message,
    }
}

pub(crate) fn uri_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Is `uri`'s host `localhost` or a loopback IP address?
pub(crate) fn is_loopback(uri: &str) -> bool {
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn sensitive(value: &str, name: &'static str) -> Result<MetadataValue<Ascii>, ClientError> {
    let mut v: MetadataValue<Ascii> = value.parse().map_err(|_| ClientError::Metadata(name))?;
    // Keeps it out of HPACK's dynamic table and out of debug output.
    v.set_sensitive(true);
    Ok(v)
}

impl WritClient {
    /// Connects over plaintext gRPC to `addr` (`http://host:port`, or `host:port`) on a
    /// loopback address (a server with `tls.enabled = false`). A non-loopback host is
    /// refused ([`ClientError::Plaintext`]): tokens and credentials would cross the
    /// network in the clear. [`WritClient::connect_insecure`] accepts that risk explicitly.
    pub async fn connect(addr: &str) -> Result<WritClient, ClientError> {
        let uri = uri_of(addr);
        if !is_loopback(&uri) {
            return Err(ClientError::Plaintext {
                addr: addr.to_string(),
            });
        }
        Self::connect_insecure(addr).await
    }

    /// Connects to `addr` over plaintext gRPC even when it is not a loopback address.
    pub async fn connect_insecure(addr: &str) -> Result<WritClient, ClientError> {
        let endpoint = Endpoint::from_shared(uri_of(addr)).map_err(|e| connect_error(addr, &e))?;
        Self::open(addr, endpoint).await
    }

    /// Connects over TLS to `addr` (`https://host:port`, or `host:port`), trusting
    /// `tls.ca_pem` and presenting `tls.identity` if set.
    pub async fn connect_tls(addr: &str, tls: Tls) -> Result<WritClient, ClientError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let uri = if addr.contains("://") {
            addr.replacen("http://", "https://", 1)
        } else {
            format!("https://{addr}")
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        let endpoint = Endpoint::from_shared(uri)
            .and_then(|e| e.tls_config(config))
            .map_err(|e| connect_error(addr, &e))?;
        Self::open(addr, endpoint).await
    }

    async fn open(addr: &str, endpoint: Endpoint) -> Result<WritClient, ClientError> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(addr, &e))?;
        Ok(WritClient::from_channel(channel))
    }

    /// A client over a channel the caller configured itself (its own endpoint settings,
    /// TLS, load balancing). It acts as nobody until given an identity.
    pub fn from_channel(channel: Channel) -> WritClient {
        WritClient::over(Transport::new(channel.map_err(TransportError::new)))
    }

    fn over(transport: Transport) -> WritClient {
        WritClient {
            tokens: TokenServiceClient::new(transport.clone()),
            chain: ChainServiceClient::new(transport.clone()),
            transport,
            caller: None,
            credential: None,
            assertion: None,
            timeout: None,
            retry: RetryPolicy::default(),
            cache: None,
        }
    }

    /// Puts `layer` under the client, around its connection: every attempt of every call
    /// goes through it (metrics, tracing, fault injection in tests).
    pub fn with_layer<L>(mut self, layer: L) -> WritClient
    where
        L: tower::Layer<Transport>,
        L::Service: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
            Into<BoxError> + 'static,
        <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    {
        let transport = Transport::new(layer.layer(self.transport).map_err(TransportError::new));
        self.tokens = TokenServiceClient::new(transport.clone());
        self.chain = ChainServiceClient::new(transport.clone());
        self.transport = transport;
        self
    }

    /// Bounds each attempt of each call (but not an event stream once it flows) by
    /// `timeout`: sent as `grpc-timeout` and enforced here (`DEADLINE_EXCEEDED`). A call
    /// that retries may take up to its attempts times `timeout` plus the backoffs.
    pub fn with_timeout(mut self, timeout: Duration) -> WritClient {
        self.timeout = Some(timeout);
        self
    }

    /// How the calls that are safe to repeat are retried ([`RetryPolicy::none`]: never).
    pub fn with_retry(mut self, policy: RetryPolicy) -> WritClient {
        self.retry = policy;
        self
    }

    /// Answers Validate from `cache` when it can (off by default; read
    /// [`crate::cache`] for what is kept and the revocation delay it costs).
    pub fn with_verdict_cache(mut self, cache: VerdictCache) -> WritClient {
        self.cache = Some(cache);
        self
    }

    /// Proves the caller's identity with a JWT client assertion (sets
    /// `writ-client-assertion`). An assertion is single-use: this client can make one
    /// call with it. A long-lived client uses [`WritClient::with_assertion_source`].
    pub fn with_client_assertion(mut self, jwt: &str) -> Result<WritClient, ClientError> {
        self.assertion = Some(Assertion::Fixed(sensitive(jwt, ASSERTION_HEADER)?));
        Ok(self)
    }

    /// Proves the caller's identity with a fresh JWT client assertion for every request
    /// (each attempt of a retried call included), made by `source`. A failing source
    /// fails the call before anything is sent ([`ClientError::Assertion`]).
    pub fn with_assertion_source<F>(mut self, source: F) -> WritClient
    where
        F: Fn() -> Result<String, BoxError> + Send + Sync + 'static,
    {
        self.assertion = Some(Assertion::Source(Arc::new(source)));
        self
    }

    /// Asserts the identity `id` (sets `x-writ-caller`): accepted only by a server in
    /// development mode.
    pub fn as_caller(mut self, id: &str) -> Result<WritClient, ClientError> {
        self.caller = Some(
            id.parse()
                .map_err(|_| ClientError::Metadata(CALLER_HEADER))?,
        );
        Ok(self)
    }

    /// Acts as an operator holding `credential` (sets `authorization: Bearer ...`); the
    /// server tells minters and operators apart by the credential.
    pub fn with_operator_credential(self, credential: &str) -> Result<WritClient, ClientError> {
        self.with_minter_credential(credential)
    }

    /// Acts as a minter holding `credential` (sets `authorization: Bearer ...`).
    pub fn with_minter_credential(mut self, credential: &str) -> Result<WritClient, ClientError> {
        let v = format!("Bearer {}", credential.trim());
        self.credential = Some(sensitive(&v, "authorization")?);
        Ok(self)
    }

    /// One attempt's request: the caller's proof (a fresh assertion) and the deadline.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, ClientError> {
        let mut r = tonic::Request::new(msg);
        if let Some(c) = &self.caller {
            r.metadata_mut().insert(CALLER_HEADER, c.clone());
        }
        if let Some(c) = &self.credential {
            r.metadata_mut().insert("authorization", c.clone());
        }
        match &self.assertion {
            Some(Assertion::Fixed(v)) => {
                r.metadata_mut().insert(ASSERTION_HEADER, v.clone());
            }
            Some(Assertion::Source(source)) => {
                let jwt = source().map_err(ClientError::Assertion)?;
                r.metadata_mut()
                    .insert(ASSERTION_HEADER, sensitive(&jwt, ASSERTION_HEADER)?);
            }
            None => {}
        }
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        Ok(r)
    }

    /// Sends `msg` with `f` over a clone of `client`, retrying what `safety` allows. Boxed
    /// and `Send` here, where the types are concrete: a future proven `Send` only at a
    /// generic use site (a tower service) trips a compiler limitation (rust#102211).
    fn call<'a, C, Req, Resp, F, Fut>(
        &'a self,
        client: &'a C,
        safety: Safety,
        mut msg: Req,
        f: F,
    ) -> Pin<Box<dyn Future<Output = Result<Resp, ClientError>> + Send + 'a>>
    where
        C: Clone + Send + Sync + 'a,
        Req: Clone + Default + Send + 'a,
        Resp: Send + 'a,
        F: Fn(C, tonic::Request<Req>) -> Fut + Send + 'a,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'a,
    {
        Box::pin(async move {
            let attempts = match safety {
                Safety::Idempotent => self.retry.attempts(),
                Safety::Once => 1,
            };
            let mut attempt = 1;
            loop {
                // Each attempt that may be retried sends a copy; the last sends `msg` itself.
                let this = if attempt < attempts {
                    msg.clone()
                } else {
                    std::mem::take(&mut msg)
                };
                let sent = f(client.clone(), self.request(this)?);
                let answer = match self.timeout {
                    Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded(format!(
                            "no answer from Writ within {t:?}"
                        )))
                    }),
                    None => sent.await,
                };
                match answer {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if attempt < attempts && retry::retryable(safety, s.code()) => {
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(s) => return Err(s.into()),
                }
            }
        })
    }

    /// Starts a transaction (minters only). Always sent with an idempotency key (a random
    /// one when `req` has none), reused by every retry: a retry after a lost answer
    /// returns the token already minted.
    pub async fn mint(
        &mut self,
        mut req: pb::MintRequest,
    ) -> Result<pb::MintResponse, ClientError> {
        if req.idempotency_key.is_empty() {
            req.idempotency_key = retry::idempotency_key();
        }
        self.call(
            &self.tokens,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.mint(r).await },
        )
        .await
    }

    /// Derives a child token for the next hop (the parent's audience only). Always sent
    /// with an idempotency key, as [`WritClient::mint`]: a retry spends nothing twice.
    pub async fn downscope(
        &mut self,
        mut req: pb::DownscopeRequest,
    ) -> Result<pb::DownscopeResponse, ClientError> {
        if req.idempotency_key.is_empty() {
            req.idempotency_key = retry::idempotency_key();
        }
        self.call(
            &self.tokens,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.downscope(r).await },
        )
        .await
    }

    /// Introspects a token presented to this caller, optionally checking one action (and,
    /// with `txn_token_jwt`, answering a Txn-Token JWT). Retried only without an action
    /// (an action check on a use-limited token spends a use); answered from the verdict
    /// cache when one is set and the answer may be cached.
    pub async fn validate(
        &mut self,
        req: pb::ValidateRequest,
    ) -> Result<pb::ValidateResponse, ClientError> {
        let key = self.cache.as_ref().and_then(|c| c.key(&req));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(hit) = cache.get(key)
        {
            return Ok(hit);
        }
        let safety = if req.action.is_none() {
            Safety::Idempotent
        } else {
            Safety::Once
        };
        let answer = self
            .call(&self.tokens, safety, req, |mut c, r| async move {
                c.validate(r).await
            })
            .await?;
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.insert(key, &answer);
        }
        Ok(answer)
    }

    /// Introspects `token` (presented to this caller) and asks for a Txn-Token JWT
    /// standing for it: the answer's `txn_token_jwt` holds it when the token is active.
    /// `PERMISSION_DENIED` for a caller the policy does not let receive JWTs.
    pub async fn validate_with_jwt(
        &mut self,
        token: &str,
    ) -> Result<pb::ValidateResponse, ClientError> {
        self.validate(pb::ValidateRequest {
            token: token.to_owned(),
            txn_token_jwt: true,
            ..Default::default()
        })
        .await
    }

    /// Revokes a token and its descendants: by the token itself (its holder), or by token
    /// id or transaction (operators). Retried: revoking twice is harmless.
    pub async fn revoke(
        &mut self,
        req: pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, ClientError> {
        self.call(
            &self.tokens,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.revoke(r).await },
        )
        .await
    }

    /// Asks the user's consent to one high-privilege action (the token's holder): answers
    /// the request and the consent URL to give to the user (and only to the user).
    /// Retried: an identical open request is answered again.
    pub async fn request_consent(
        &mut self,
        req: pb::RequestConsentRequest,
    ) -> Result<pb::RequestConsentResponse, ClientError> {
        self.call(
            &self.tokens,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.request_consent(r).await },
        )
        .await
    }

    /// Records the user's decision on consent request `id` for `subject` (an approver app
    /// that authenticated the user, or an operator). Never retried.
    pub async fn decide_consent(
        &mut self,
        id: &str,
        approve: bool,
        subject: &str,
    ) -> Result<pb::DecideConsentResponse, ClientError> {
        let req = pb::DecideConsentRequest {
            id: id.into(),
            approve,
            subject: subject.into(),
        };
        self.call(&self.tokens, Safety::Once, req, |mut c, r| async move {
            c.decide_consent(r).await
        })
        .await
    }

    /// Redeems approved consent request `id` for its single-use token (the requester,
    /// presenting the token it asked with; `ttl_seconds` 0: the configured lifetime).
    /// Never retried: the token is returned once.
    pub async fn redeem_consent(
        &mut self,
        id: &str,
        token: &str,
        ttl_seconds: u32,
    ) -> Result<pb::RedeemConsentResponse, ClientError> {
        let req = pb::RedeemConsentRequest {
            id: id.into(),
            token: token.into(),
            ttl_seconds,
        };
        self.call(&self.tokens, Safety::Once, req, |mut c, r| async move {
            c.redeem_consent(r).await
        })
        .await
    }

    /// The kill switch (operators): disables `party`, revoking every live token it holds
    /// or presents with their descendants; it can hold no new token until enabled.
    pub async fn disable_party(
        &mut self,
        party: &str,
        reason: &str,
    ) -> Result<pb::DisablePartyResponse, ClientError> {
        let req = pb::DisablePartyRequest {
            party: party.into(),
            reason: reason.into(),
        };
        self.call(&self.chain, Safety::Once, req, |mut c, r| async move {
            c.disable_party(r).await
        })
        .await
    }

    /// Lets a disabled party act again (operators). Restores nothing that was revoked.
    pub async fn enable_party(
        &mut self,
        party: &str,
    ) -> Result<pb::EnablePartyResponse, ClientError> {
        let req = pb::EnablePartyRequest {
            party: party.into(),
        };
        self.call(&self.chain, Safety::Once, req, |mut c, r| async move {
            c.enable_party(r).await
        })
        .await
    }

    /// The JWT signing keys and the JWKS that publishes them (operators).
    pub async fn list_signing_keys(&mut self) -> Result<pb::ListSigningKeysResponse, ClientError> {
        let req = pb::ListSigningKeysRequest {};
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_signing_keys(r).await },
        )
        .await
    }

    /// Rotates the JWT signing keys now (operators); answers the keys after the rotation,
    /// which is on disk by then. Never retried.
    pub async fn rotate_signing_keys(
        &mut self,
    ) -> Result<pb::RotateSigningKeysResponse, ClientError> {
        let req = pb::RotateSigningKeysRequest {};
        self.call(&self.chain, Safety::Once, req, |mut c, r| async move {
            c.rotate_signing_keys(r).await
        })
        .await
    }

    /// One page of a transaction's tree (see `GetTransactionRequest`).
    pub async fn get_transaction_page(
        &mut self,
        req: pb::GetTransactionRequest,
    ) -> Result<pb::Transaction, ClientError> {
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.get_transaction(r).await },
        )
        .await
    }

    /// A whole transaction's tree, following `next_cursor` from page to page: the tokens
    /// in depth-first order, each parent before its children.
    pub async fn get_transaction(&mut self, txn: &str) -> Result<pb::Transaction, ClientError> {
        let mut whole = self
            .get_transaction_page(pb::GetTransactionRequest {
                txn: txn.to_string(),
                ..Default::default()
            })
            .await?;
        while !whole.next_cursor.is_empty() {
            let page = self
                .get_transaction_page(pb::GetTransactionRequest {
                    txn: txn.to_string(),
                    cursor: std::mem::take(&mut whole.next_cursor),
                    page_size: 0,
                })
                .await?;
            whole.tokens.extend(page.tokens);
            whole.next_cursor = page.next_cursor;
            whole.truncated = page.truncated;
        }
        Ok(whole)
    }

    /// One token with its ancestry (operators).
    pub async fn get_token(&mut self, token_id: &str) -> Result<pb::GetTokenResponse, ClientError> {
        let req = pb::GetTokenRequest {
            token_id: token_id.to_string(),
        };
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.get_token(r).await },
        )
        .await
    }

    /// Transactions, newest first, filtered and paginated (operators).
    pub async fn list_transactions(
        &mut self,
        req: pb::ListTransactionsRequest,
    ) -> Result<pb::ListTransactionsResponse, ClientError> {
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_transactions(r).await },
        )
        .await
    }

    /// One page of a transaction's audit trail, oldest first (operators).
    pub async fn list_events(
        &mut self,
        req: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, ClientError> {
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_events(r).await },
        )
        .await
    }

    /// Audit events as they happen (operators). The stream yields an error and ends if
    /// the watcher falls behind; it ends when the server stops. Never retried, and no
    /// deadline applies to it.
    pub async fn watch_events(
        &mut self,
        req: pb::WatchEventsRequest,
    ) -> Result<tonic::Streaming<pb::AuditEvent>, ClientError> {
        let mut r = self.request(req)?;
        r.metadata_mut().remove("grpc-timeout");
        Ok(self.chain.watch_events(r).await?.into_inner())
    }

    /// Consent requests, newest first, filtered and paginated (operators).
    pub async fn list_consents(
        &mut self,
        req: pb::ListConsentsRequest,
    ) -> Result<pb::ListConsentsResponse, ClientError> {
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_consents(r).await },
        )
        .await
    }

    /// One consent request (operators).
    pub async fn get_consent(&mut self, id: &str) -> Result<pb::ConsentRequestInfo, ClientError> {
        let req = pb::GetConsentRequest { id: id.into() };
        self.call(
            &self.chain,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.get_consent(r).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message;
    use std::sync::Mutex;
    use tonic::Code;

    #[test]
    fn only_loopback_hosts_are_plaintext_by_default() {
        for ok in [
            "127.0.0.1:7433",
            "http://localhost:1",
            "http://[::1]:7433",
            "127.9.9.9:1",
        ] {
            assert!(is_loopback(&uri_of(ok)), "{ok}");
        }
        for remote in [
            "10.0.0.1:7433",
            "http://writ.example.com:7433",
            "[2001:db8::1]:1",
            "::",
        ] {
            assert!(!is_loopback(&uri_of(remote)), "{remote}");
        }
    }

    #[tokio::test]
    async fn connect_refuses_a_remote_plaintext_address() {
        let e = WritClient::connect("http://192.0.2.1:7433")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Plaintext { .. }), "{e}");
    }

    /// What a fake server saw: the path, the request message and some metadata.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        body: Vec<u8>,
        assertion: Option<String>,
        timeout: Option<String>,
    }

    /// A client over a fake transport answering every call with `code`.
    fn failing(code: Code) -> (WritClient, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let log = log.clone();
            async move {
                let path = req.uri().path().to_string();
                let (assertion, timeout) = {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    (header(ASSERTION_HEADER), header("grpc-timeout"))
                };
                let framed = req.into_body().collect().await.unwrap().to_bytes();
                log.lock().unwrap().push(Seen {
                    path,
                    body: framed[5..].to_vec(),
                    assertion,
                    timeout,
                });
                Ok::<_, TransportError>(tonic::Status::new(code, "fake").into_http())
            }
        });
        let client = WritClient::over(Transport::new(svc)).with_retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        });
        (client, seen)
    }

    fn paths(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<String> {
        let mut s = seen.lock().unwrap();
        let out = s.iter().map(|x| x.path.clone()).collect();
        s.clear();
        out
    }

    #[tokio::test]
    async fn mint_and_downscope_retry_with_one_idempotency_key() {
        let (mut c, seen) = failing(Code::Unavailable);
        let e = c.mint(pb::MintRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::Unavailable));
        let keys: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                pb::MintRequest::decode(&s.body[..])
                    .unwrap()
                    .idempotency_key
            })
            .collect();
        assert_eq!(keys.len(), 3, "three attempts");
        assert_eq!(keys[0].len(), 32, "a generated key: {keys:?}");
        assert!(keys.iter().all(|k| k == &keys[0]), "one key: {keys:?}");
        seen.lock().unwrap().clear();

        // Another call gets another key; a key the caller set is kept.
        c.mint(pb::MintRequest::default()).await.unwrap_err();
        let other = pb::MintRequest::decode(&seen.lock().unwrap()[0].body[..])
            .unwrap()
            .idempotency_key;
        assert_ne!(other, keys[0]);
        seen.lock().unwrap().clear();

        let req = pb::DownscopeRequest {
            idempotency_key: "caller-chosen-key-0001".into(),
            ..Default::default()
        };
        c.downscope(req).await.unwrap_err();
        let keys: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                pb::DownscopeRequest::decode(&s.body[..])
                    .unwrap()
                    .idempotency_key
            })
            .collect();
        assert_eq!(keys, vec!["caller-chosen-key-0001"; 3]);
    }

    #[tokio::test]
    async fn only_safe_calls_are_retried() {
        let (mut c, seen) = failing(Code::Unavailable);
        let plain = pb::ValidateRequest {
            token: "writ_x".into(),
            ..Default::default()
        };
        c.validate(plain.clone()).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 3, "validate without an action");
        let action = pb::ValidateRequest {
            action: Some(pb::Action {
                scope: "s".into(),
                ..Default::default()
            }),
            ..plain
        };
        c.validate(action).await.unwrap_err();
        assert_eq!(
            paths(&seen),
            vec!["/writ.v1.TokenService/Validate"],
            "an action check may spend a use"
        );
        c.revoke(pb::RevokeRequest::default()).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 3, "revoke");
        c.request_consent(pb::RequestConsentRequest::default())
            .await
            .unwrap_err();
        assert_eq!(paths(&seen).len(), 3, "request_consent");
        c.decide_consent("cns_x", true, "alice").await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1, "decide_consent");
        c.redeem_consent("cns_x", "writ_x", 0).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1, "redeem_consent");
        c.disable_party("p", "r").await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1, "disable_party");
        c.rotate_signing_keys().await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1, "rotate_signing_keys");
        c.get_token("tok").await.unwrap_err();
        assert_eq!(paths(&seen).len(), 3, "a read");

        // Deadline exceeded is retried for safe calls; other codes are answers.
        let (mut c, seen) = failing(Code::DeadlineExceeded);
        c.mint(pb::MintRequest::default()).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 3);
        c.redeem_consent("cns_x", "writ_x", 0).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1);
        for code in [
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            let (mut c, seen) = failing(code);
            let e = c.mint(pb::MintRequest::default()).await.unwrap_err();
            assert_eq!(e.code(), Some(code));
            assert_eq!(paths(&seen).len(), 1, "{code:?}");
        }
        // No retries at all.
        let (c, seen) = failing(Code::Unavailable);
        let mut c = c.with_retry(RetryPolicy::none());
        c.mint(pb::MintRequest::default()).await.unwrap_err();
        assert_eq!(paths(&seen).len(), 1);
    }

    #[tokio::test]
    async fn every_attempt_carries_a_fresh_assertion_and_the_deadline() {
        let (c, seen) = failing(Code::Unavailable);
        let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = n.clone();
        let mut c = c
            .with_timeout(Duration::from_secs(2))
            .with_assertion_source(move || {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(format!("jwt-{i}"))
            });
        c.revoke(pb::RevokeRequest::default()).await.unwrap_err();
        let s = seen.lock().unwrap().clone();
        let assertions: Vec<_> = s.iter().map(|x| x.assertion.clone().unwrap()).collect();
        assert_eq!(assertions, vec!["jwt-0", "jwt-1", "jwt-2"]);
        assert!(s.iter().all(|x| x.timeout.is_some()), "grpc-timeout: {s:?}");
        assert!(!format!("{c:?}").contains("jwt-"));

        // A failing source sends nothing.
        let (c, seen) = failing(Code::Unavailable);
        let mut c = c.with_assertion_source(|| Err("no key".into()));
        let e = c.revoke(pb::RevokeRequest::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::Assertion(_)), "{e}");
        assert!(paths(&seen).is_empty());
    }

    #[tokio::test]
    async fn a_silent_server_answers_deadline_exceeded() {
        let svc = tower::service_fn(|_req: http::Request<tonic::body::Body>| {
            std::future::pending::<Result<http::Response<tonic::body::Body>, TransportError>>()
        });
        let mut c = WritClient::over(Transport::new(svc))
            .with_timeout(Duration::from_millis(20))
            .with_retry(RetryPolicy::none());
        let e = c
            .validate(pb::ValidateRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    }
}
