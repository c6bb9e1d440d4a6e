//! Client library for agents, services and operators: Mint, Downscope, Validate and
//! Revoke, and the operators' chain queries and audit trail, over gRPC.
//!
//! It links only the wire API (`writ-api`) and tonic, never the store, so an agent
//! that embeds it does not pull in RocksDB. A client proves who it is with the client
//! certificate of its TLS connection ([`WritClient::connect_tls`] with a [`Tls`]
//! identity), a JWT client assertion ([`WritClient::with_client_assertion`]), or a minter's
//! or operator's credential ([`WritClient::with_minter_credential`]);
//! [`WritClient::as_caller`] asserts an identity, which only a server in development mode
//! accepts.
//!
//! Between hops a transaction token travels in exactly one `Txn-Token` HTTP header
//! ([`TXN_TOKEN_HEADER`]) or `txn-token` gRPC metadata entry ([`TXN_TOKEN_METADATA`]),
//! never in `Authorization`: [`attach_txn_token`] sets it on an outgoing request and
//! [`txn_token`] reads it from an incoming one.
#![forbid(unsafe_code)]

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use writ_api::pb::{
    self, chain_service_client::ChainServiceClient, token_service_client::TokenServiceClient,
};

pub use writ_api::pb as proto;

/// Metadata header carrying an asserted identity (development mode only).
pub const CALLER_HEADER: &str = "x-writ-caller";
/// Metadata header carrying a JWT client assertion.
pub const ASSERTION_HEADER: &str = "writ-client-assertion";

/// The HTTP header (`Txn-Token`) and the gRPC metadata key (`txn-token`) that carry a
/// transaction token to the next hop: exactly one, never in `Authorization`.
pub use writ_api::oauth::{TXN_TOKEN_HEADER, TXN_TOKEN_METADATA};

/// Sets `token` as the one `txn-token` metadata entry of `request` (replacing any), for
/// the next hop. The value is marked sensitive: kept out of HPACK's dynamic table and out
/// of debug output.
pub fn attach_txn_token<T>(
    request: &mut tonic::Request<T>,
    token: &str,
) -> Result<(), ClientError> {
    let mut v: MetadataValue<tonic::metadata::Ascii> = token
        .parse()
        .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA))?;
    v.set_sensitive(true);
    request.metadata_mut().insert(TXN_TOKEN_METADATA, v);
    Ok(())
}

/// The transaction token `request` carries in `txn-token`: `None` when it carries none,
/// an error when it carries more than one (a proxy's beside the caller's: neither can be
/// trusted to be the one meant) or one that is not printable ASCII.
pub fn txn_token<T>(request: &tonic::Request<T>) -> Result<Option<&str>, ClientError> {
    let mut values = request.metadata().get_all(TXN_TOKEN_METADATA).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA)),
        (Some(_), Some(_)) => Err(ClientError::TxnTokenRepeated),
    }
}

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

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, or the address is invalid.
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        message: String,
    },
    /// A plaintext connection to a host that is not loopback was refused.
    #[error(
        "refusing plaintext gRPC to {addr}: not a loopback address (tokens and credentials would cross the network in the clear; connect with TLS)"
    )]
    Plaintext {
        /// The address given.
        addr: String,
    },
    /// A header value is not valid metadata.
    #[error("invalid {0}: not valid gRPC metadata")]
    Metadata(&'static str),
    /// A request carries more than one transaction token.
    #[error("txn-token: sent more than once; a request carries exactly one transaction token")]
    TxnTokenRepeated,
    /// The server refused or failed the request.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
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

fn uri_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Is `uri`'s host `localhost` or a loopback IP address?
fn is_loopback(uri: &str) -> bool {
    let Ok(uri) = uri.parse::<tonic::codegen::http::Uri>() else {
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

/// A connection to a Writ server, acting as one caller. `Debug` never prints the
/// credential.
#[derive(Clone)]
pub struct WritClient {
    inner: TokenServiceClient<Channel>,
    chain: ChainServiceClient<Channel>,
    caller: Option<MetadataValue<tonic::metadata::Ascii>>,
    credential: Option<MetadataValue<tonic::metadata::Ascii>>,
    assertion: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for WritClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritClient")
            .field("caller", &self.caller)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
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
        Ok(WritClient::over(channel))
    }

    fn over(channel: Channel) -> WritClient {
        WritClient {
            inner: TokenServiceClient::new(channel.clone()),
            chain: ChainServiceClient::new(channel),
            caller: None,
            credential: None,
            assertion: None,
        }
    }

    /// Proves the caller's identity with a JWT client assertion (sets
    /// `writ-client-assertion`). An assertion is single-use: set a fresh one per call.
    pub fn with_client_assertion(mut self, jwt: &str) -> Result<WritClient, ClientError> {
        let mut v: MetadataValue<tonic::metadata::Ascii> = jwt
            .parse()
            .map_err(|_| ClientError::Metadata(ASSERTION_HEADER))?;
        v.set_sensitive(true);
        self.assertion = Some(v);
        Ok(self)
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
        let mut v: MetadataValue<tonic::metadata::Ascii> = v
            .parse()
            .map_err(|_| ClientError::Metadata("authorization"))?;
        // Keeps it out of HPACK's dynamic table and out of debug output.
        v.set_sensitive(true);
        self.credential = Some(v);
        Ok(self)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(c) = &self.caller {
            r.metadata_mut().insert(CALLER_HEADER, c.clone());
        }
        if let Some(c) = &self.credential {
            r.metadata_mut().insert("authorization", c.clone());
        }
        if let Some(c) = &self.assertion {
            r.metadata_mut().insert(ASSERTION_HEADER, c.clone());
        }
        r
    }

    /// Starts a transaction (minters only).
    pub async fn mint(&mut self, req: pb::MintRequest) -> Result<pb::MintResponse, ClientError> {
        let r = self.request(req);
        Ok(self.inner.mint(r).await?.into_inner())
    }

    /// Derives a child token for the next hop (the parent's audience only).
    pub async fn downscope(
        &mut self,
        req: pb::DownscopeRequest,
    ) -> Result<pb::DownscopeResponse, ClientError> {
        let r = self.request(req);
        Ok(self.inner.downscope(r).await?.into_inner())
    }

    /// Revokes a token and its descendants: by the token itself (its holder), or by token id
    /// or transaction (operators).
    pub async fn revoke(
        &mut self,
        req: pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, ClientError> {
        let r = self.request(req);
        Ok(self.inner.revoke(r).await?.into_inner())
    }

    /// The kill switch (operators): disables `party`, revoking every live token it holds
    /// or presents with their descendants; it can hold no new token until enabled.
    pub async fn disable_party(
        &mut self,
        party: &str,
        reason: &str,
    ) -> Result<pb::DisablePartyResponse, ClientError> {
        let r = self.request(pb::DisablePartyRequest {
            party: party.into(),
            reason: reason.into(),
        });
        Ok(self.chain.disable_party(r).await?.into_inner())
    }

    /// Lets a disabled party act again (operators). Restores nothing that was revoked.
    pub async fn enable_party(
        &mut self,
        party: &str,
    ) -> Result<pb::EnablePartyResponse, ClientError> {
        let r = self.request(pb::EnablePartyRequest {
            party: party.into(),
        });
        Ok(self.chain.enable_party(r).await?.into_inner())
    }

    /// The JWT signing keys and the JWKS that publishes them (operators).
    pub async fn list_signing_keys(&mut self) -> Result<pb::ListSigningKeysResponse, ClientError> {
        let r = self.request(pb::ListSigningKeysRequest {});
        Ok(self.chain.list_signing_keys(r).await?.into_inner())
    }

    /// Rotates the JWT signing keys now (operators); answers the keys after the rotation,
    /// which is on disk by then.
    pub async fn rotate_signing_keys(
        &mut self,
    ) -> Result<pb::RotateSigningKeysResponse, ClientError> {
        let r = self.request(pb::RotateSigningKeysRequest {});
        Ok(self.chain.rotate_signing_keys(r).await?.into_inner())
    }

    /// One page of a transaction's tree (see `GetTransactionRequest`).
    pub async fn get_transaction_page(
        &mut self,
        req: pb::GetTransactionRequest,
    ) -> Result<pb::Transaction, ClientError> {
        let r = self.request(req);
        Ok(self.chain.get_transaction(r).await?.into_inner())
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
        let r = self.request(pb::GetTokenRequest {
            token_id: token_id.to_string(),
        });
        Ok(self.chain.get_token(r).await?.into_inner())
    }

    /// Transactions, newest first, filtered and paginated (operators).
    pub async fn list_transactions(
        &mut self,
        req: pb::ListTransactionsRequest,
    ) -> Result<pb::ListTransactionsResponse, ClientError> {
        let r = self.request(req);
        Ok(self.chain.list_transactions(r).await?.into_inner())
    }

    /// One page of a transaction's audit trail, oldest first (operators).
    pub async fn list_events(
        &mut self,
        req: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, ClientError> {
        let r = self.request(req);
        Ok(self.chain.list_events(r).await?.into_inner())
    }

    /// Audit events as they happen (operators). The stream yields an error and ends if
    /// the watcher falls behind; it ends when the server stops.
    pub async fn watch_events(
        &mut self,
        req: pb::WatchEventsRequest,
    ) -> Result<tonic::Streaming<pb::AuditEvent>, ClientError> {
        let r = self.request(req);
        Ok(self.chain.watch_events(r).await?.into_inner())
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

    /// Introspects a token presented to this caller, optionally checking one action (and,
    /// with `txn_token_jwt`, answering a Txn-Token JWT).
    pub async fn validate(
        &mut self,
        req: pb::ValidateRequest,
    ) -> Result<pb::ValidateResponse, ClientError> {
        let r = self.request(req);
        Ok(self.inner.validate(r).await?.into_inner())
    }

    /// Asks the user's consent to one high-privilege action (the token's holder): answers
    /// the request and the consent URL to give to the user (and only to the user).
    pub async fn request_consent(
        &mut self,
        req: pb::RequestConsentRequest,
    ) -> Result<pb::RequestConsentResponse, ClientError> {
        let r = self.request(req);
        Ok(self.inner.request_consent(r).await?.into_inner())
    }

    /// Records the user's decision on consent request `id` for `subject` (an approver app
    /// that authenticated the user, or an operator).
    pub async fn decide_consent(
        &mut self,
        id: &str,
        approve: bool,
        subject: &str,
    ) -> Result<pb::DecideConsentResponse, ClientError> {
        let r = self.request(pb::DecideConsentRequest {
            id: id.into(),
            approve,
            subject: subject.into(),
        });
        Ok(self.inner.decide_consent(r).await?.into_inner())
    }

    /// Redeems approved consent request `id` for its single-use token (the requester,
    /// presenting the token it asked with; `ttl_seconds` 0: the configured lifetime).
    pub async fn redeem_consent(
        &mut self,
        id: &str,
        token: &str,
        ttl_seconds: u32,
    ) -> Result<pb::RedeemConsentResponse, ClientError> {
        let r = self.request(pb::RedeemConsentRequest {
            id: id.into(),
            token: token.into(),
            ttl_seconds,
        });
        Ok(self.inner.redeem_consent(r).await?.into_inner())
    }

    /// Consent requests, newest first, filtered and paginated (operators).
    pub async fn list_consents(
        &mut self,
        req: pb::ListConsentsRequest,
    ) -> Result<pb::ListConsentsResponse, ClientError> {
        let r = self.request(req);
        Ok(self.chain.list_consents(r).await?.into_inner())
    }

    /// One consent request (operators).
    pub async fn get_consent(&mut self, id: &str) -> Result<pb::ConsentRequestInfo, ClientError> {
        let r = self.request(pb::GetConsentRequest { id: id.into() });
        Ok(self.chain.get_consent(r).await?.into_inner())
    }
}

/// Convenience constructors for the wire types agents build most.
pub mod build {
    use super::pb;

    /// A party with a kind and client type.
    pub fn party(id: &str, kind: pb::ActorKind, client_type: pb::ClientType) -> pb::Party {
        pb::Party {
            id: id.to_string(),
            kind: kind.into(),
            client_type: client_type.into(),
        }
    }

    /// A confidential agent.
    pub fn agent(id: &str) -> pb::Party {
        party(id, pb::ActorKind::Agent, pb::ClientType::Confidential)
    }

    /// A confidential workload (API, service).
    pub fn workload(id: &str) -> pb::Party {
        party(id, pb::ActorKind::Workload, pb::ClientType::Confidential)
    }

    fn c(kind: pb::constraint::Kind) -> pb::Constraint {
        pb::Constraint {
            kind: Some(kind),
            applies_to: Vec::new(),
        }
    }

    fn string_set(set: &[&str]) -> pb::StringSet {
        pb::StringSet {
            values: set.iter().map(|s| s.to_string()).collect(),
            case_insensitive: false,
        }
    }

    /// value ≤ `v`.
    pub fn max(v: i64) -> pb::Constraint {
        c(pb::constraint::Kind::Max(v))
    }
    /// value ≥ `v`.
    pub fn min(v: i64) -> pb::Constraint {
        c(pb::constraint::Kind::Min(v))
    }
    /// value ∈ `set`.
    pub fn allow(set: &[&str]) -> pb::Constraint {
        c(pb::constraint::Kind::Allow(string_set(set)))
    }
    /// value ∉ `set`.
    pub fn deny(set: &[&str]) -> pb::Constraint {
        c(pb::constraint::Kind::Deny(string_set(set)))
    }
    /// `min <= value <= max`.
    pub fn range(min: i64, max: i64) -> pb::Constraint {
        c(pb::constraint::Kind::Range(pb::Range { min, max }))
    }
    /// `not_before <= time <= not_after`, Unix seconds.
    pub fn window(not_before: i64, not_after: i64) -> pb::Constraint {
        c(pb::constraint::Kind::Window(pb::Window {
            not_before,
            not_after,
        }))
    }
    /// The same allow or deny set, compared case-insensitively.
    pub fn case_insensitive(mut c: pb::Constraint) -> pb::Constraint {
        if let Some(pb::constraint::Kind::Allow(s) | pb::constraint::Kind::Deny(s)) = &mut c.kind {
            s.case_insensitive = true;
        }
        c
    }
    /// The claim, limited to actions of these scopes.
    pub fn applies_to(mut c: pb::Constraint, scopes: &[&str]) -> pb::Constraint {
        c.applies_to = scopes.iter().map(|s| s.to_string()).collect();
        c
    }
    /// value starts with `p`.
    pub fn prefix(p: &str) -> pb::Constraint {
        c(pb::constraint::Kind::Prefix(p.to_string()))
    }
    /// value == `v`.
    pub fn exact(v: pb::Value) -> pb::Constraint {
        c(pb::constraint::Kind::Exact(v))
    }
    /// An integer value.
    pub fn int(v: i64) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::Int(v)),
        }
    }
    /// A string value.
    pub fn str(v: &str) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::Str(v.to_string())),
        }
    }
    /// A point in time, Unix seconds.
    pub fn time(v: i64) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::Time(v)),
        }
    }
    /// Several items of one action attribute; every one must pass.
    pub fn list(values: Vec<pb::Value>) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::List(pb::ValueList { values })),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    #[test]
    fn a_txn_token_rides_in_exactly_one_sensitive_metadata_entry() {
        assert_eq!(TXN_TOKEN_HEADER, "Txn-Token");
        assert_eq!(TXN_TOKEN_METADATA, "txn-token");
        let mut r = tonic::Request::new(());
        assert_eq!(txn_token(&r).unwrap(), None);
        attach_txn_token(&mut r, "writ_first").unwrap();
        attach_txn_token(&mut r, "writ_second").unwrap();
        assert_eq!(
            txn_token(&r).unwrap(),
            Some("writ_second"),
            "replaced, not added"
        );
        let v = r.metadata().get(TXN_TOKEN_METADATA).unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("writ_second"), "{v:?}");
        assert!(matches!(
            attach_txn_token(&mut r, "bad\nvalue"),
            Err(ClientError::Metadata(TXN_TOKEN_METADATA))
        ));
        r.metadata_mut()
            .append(TXN_TOKEN_METADATA, "writ_third".parse().unwrap());
        assert!(matches!(txn_token(&r), Err(ClientError::TxnTokenRepeated)));
    }

    #[tokio::test]
    async fn connect_refuses_a_remote_plaintext_address() {
        let e = WritClient::connect("http://192.0.2.1:7433")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Plaintext { .. }), "{e}");
    }
}
