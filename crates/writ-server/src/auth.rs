//! The caller-identity seam: the one place that decides who is calling. Nothing else in
//! the server reads caller metadata or the connection's certificate.
//!
//! A caller proves its identity in exactly one of these ways:
//! - **mTLS**: the SPIFFE ID of the X.509-SVID it presented in the TLS handshake
//!   (verified there by [`crate::tls`]: chain, validity, key usage, trust domain).
//! - **A JWT client assertion** (`writ-client-assertion`): signed by a key registered
//!   for the party (RFC 7523), or a JWT-SVID verified against the trust domain's JWT
//!   bundle ([`crate::assertion`]), for callers behind a TLS-terminating proxy. At the
//!   OAuth HTTP face the form's RFC 7523 `client_assertion` is the same proof.
//! - **A bearer credential** (`authorization: Bearer <credential>`) configured for a
//!   minter or operator.
//! - **Asserted** in `x-writ-caller`: development mode only (`auth.asserted_identities`,
//!   loopback listeners only). Anywhere else the header is refused, never ignored.
//!
//! Presenting two proofs at once is refused rather than resolved by picking one, and so
//! is any identity header sent twice: a proxy that adds its own value beside a client's
//! cannot be bypassed. What an identity may do (its roles) comes from the registry, never
//! from the request.

use crate::assertion::{
    ASSERTION_HEADER, AssertionError, AssertionKind, AssertionVerifier, SharedReplay,
};
use crate::error::ServiceError;
use crate::parties::Disabled;
use crate::policy::{Policy, PolicyHandle};
use crate::secrets::{Credentials, Role as CredentialRole};
use crate::tls::PeerInfo;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use writ_core::policy::{HOLDER_ROLES, Role, Roles};
use writ_core::{Actor, AuthMethod};

/// Metadata header carrying an asserted caller identity (development mode only).
pub const CALLER_HEADER: &str = "x-writ-caller";
/// Metadata header carrying a minter's or operator's bearer credential.
const AUTHORIZATION: &str = "authorization";
/// Every header that carries an identity: each may appear at most once.
const IDENTITY_HEADERS: [&str; 3] = [CALLER_HEADER, AUTHORIZATION, ASSERTION_HEADER];

/// The form parameter of an RFC 7523 client assertion (the OAuth HTTP face).
pub const CLIENT_ASSERTION: &str = "client_assertion";
/// The form parameter naming the assertion's type.
pub const CLIENT_ASSERTION_TYPE: &str = "client_assertion_type";
/// The only `client_assertion_type` accepted (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client authentication an OAuth request carries in its form: an RFC 7523 client
/// assertion (the same proof as the `writ-client-assertion` header, so never beside it or
/// another proof) and `client_id`, which proves nothing and must name the identity proven.
/// gRPC requests carry none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormClientAuth<'a> {
    /// `client_assertion_type`.
    pub assertion_type: Option<&'a str>,
    /// `client_assertion`.
    pub assertion: Option<&'a str>,
    /// `client_id`.
    pub client_id: Option<&'a str>,
}

impl<'a> FormClientAuth<'a> {
    /// The assertion, if one is presented with the RFC 7523 type.
    fn assertion(&self) -> Result<Option<&'a str>, AuthError> {
        match (self.assertion_type, self.assertion) {
            (None, None) => Ok(None),
            (Some(JWT_BEARER), Some(jwt)) => Ok(Some(jwt)),
            (Some(other), Some(_)) => Err(AuthError::Unproven(format!(
                "{CLIENT_ASSERTION_TYPE}: {} is not supported; only {JWT_BEARER}",
                writ_core::text::Shown(other)
            ))),
            (None, Some(_)) => Err(AuthError::Malformed(format!(
                "{CLIENT_ASSERTION_TYPE}: required with {CLIENT_ASSERTION} ({JWT_BEARER})"
            ))),
            (Some(_), None) => Err(AuthError::Malformed(format!(
                "{CLIENT_ASSERTION}: required with {CLIENT_ASSERTION_TYPE}"
            ))),
        }
    }

    /// `caller`, if `client_id` is absent or names it.
    fn check_client_id(&self, caller: Caller) -> Result<Caller, AuthError> {
        let Some(client_id) = self.client_id else {
            return Ok(caller);
        };
        match &caller {
            Caller::Known(i) if i.actor.id == client_id => Ok(caller),
            Caller::Known(i) => Err(AuthError::Unproven(format!(
                "client_id: {} is not the authenticated identity {}",
                writ_core::text::Shown(client_id),
                writ_core::text::Shown(&i.actor.id)
            ))),
            Caller::Anonymous => Err(AuthError::Unproven(format!(
                "client_id: {} proves nothing; authenticate with a client certificate \
                 (tls_client_auth) or a client assertion (private_key_jwt)",
                writ_core::text::Shown(client_id)
            ))),
        }
    }
}

/// Who is calling: an authenticated identity with the roles it holds, or nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No identity presented.
    Anonymous,
    /// An identity, proven (or, in development mode, asserted) as `actor.auth` says.
    Known(Identity),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Who it is and how it proved it.
    pub actor: Actor,
    /// What it may do.
    pub roles: Roles,
}

impl Caller {
    /// A caller with `id`, proven by `auth`, holding `roles`.
    pub fn known(id: impl Into<String>, auth: AuthMethod, roles: &[Role]) -> Caller {
        Caller::Known(Identity {
            actor: Actor {
                id: id.into(),
                auth,
            },
            roles: Roles::of(roles),
        })
    }

    /// The caller's identity, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Known(i) => Some(&i.actor.id),
            Caller::Anonymous => None,
        }
    }

    /// The caller, if it holds one of `roles`: `UNAUTHENTICATED` for nobody (`needed` says
    /// what to present), `PERMISSION_DENIED` for a caller without the role.
    pub fn require(&self, roles: &[Role], needed: &str) -> Result<&Identity, ServiceError> {
        match self {
            Caller::Known(i) if i.roles.any(roles) => Ok(i),
            Caller::Known(i) => {
                let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                Err(ServiceError::PermissionDenied(format!(
                    "{:?} (roles: {}) needs the role {}",
                    i.actor.id,
                    if i.roles == Roles::NONE {
                        "none".to_owned()
                    } else {
                        i.roles.to_string()
                    },
                    wanted.join(" or ")
                )))
            }
            Caller::Anonymous => Err(ServiceError::Unauthenticated(needed.to_owned())),
        }
    }
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A credential was presented and is wrong.
    #[error("authorization: the credential is not valid")]
    BadCredential,
    /// A proof of identity was presented and does not hold (a client assertion that does
    /// not verify, an asserted identity outside development mode).
    #[error("{0}")]
    Unproven(String),
    /// Too many live client assertions to remember: try again later.
    #[error("{0}")]
    Exhausted(String),
    /// The caller is over its rate limit.
    #[error("rate limit: {caller:?} is limited to {limited}")]
    Limited {
        /// Who (an identity, or an anonymous peer).
        caller: String,
        /// The limit and when to retry.
        limited: crate::ratelimit::Limited,
    },
    /// A header is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The caller is identified but claims what it may not.
    #[error("{0}")]
    Forbidden(String),
    /// The proof could not be checked now (a shared record unreachable): retry.
    #[error("{0}")]
    Unavailable(String),
}

/// Identifies callers from the request: its connection's client certificate and its
/// metadata.
#[derive(Clone, Debug)]
pub struct Authenticator {
    credentials: Credentials,
    /// Development mode: `x-writ-caller` is accepted (unproven).
    asserted: bool,
    /// Verifies client assertions; `None` where none are configured (unit tests).
    assertions: Option<Arc<AssertionVerifier>>,
    /// The registry: roles, enabled, and client-assertion keys of each party.
    policy: Option<PolicyHandle>,
    /// Parties an operator disabled (the kill switch).
    disabled: Option<Arc<Disabled>>,
    /// Per-caller rate limits, charged once a caller is identified (or not).
    limits: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// Where nodes sharing a store record the assertions used, after this node's cache.
    shared_replay: Option<Arc<dyn SharedReplay>>,
}

/// A caller, and the assertion that proved it (its replay key and lifetime), if any.
struct Proven {
    caller: Caller,
    replay: Option<([u8; 32], u64)>,
}

impl From<Caller> for Proven {
    fn from(caller: Caller) -> Proven {
        Proven {
            caller,
            replay: None,
        }
    }
}

impl Authenticator {
    /// An authenticator that knows these credentialed identities and accepts no asserted
    /// identity and no client assertion.
    pub fn new(credentials: Credentials) -> Self {
        Authenticator {
            credentials,
            asserted: false,
            assertions: None,
            policy: None,
            disabled: None,
            limits: None,
            shared_replay: None,
        }
    }

    /// Also records each assertion used in `shared`, so nodes sharing it refuse an
    /// assertion another node accepted.
    pub fn with_shared_replay(mut self, shared: Arc<dyn SharedReplay>) -> Self {
        self.shared_replay = Some(shared);
        self
    }

    /// Charges every identified request to its caller's bucket, and every other one to
    /// its peer address's.
    pub fn with_limits(mut self, limits: Arc<crate::ratelimit::RateLimiter>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Refuses the parties in `disabled`.
    pub fn with_disabled(mut self, disabled: Arc<Disabled>) -> Self {
        self.disabled = Some(disabled);
        self
    }

    /// Takes each party's roles, and its client-assertion keys, from `policy`. Without
    /// one, every proven identity may hold, derive and check tokens (unit tests).
    pub fn with_policy(mut self, policy: PolicyHandle) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Also verifies client assertions with `verifier`.
    pub fn with_assertions(mut self, verifier: Arc<AssertionVerifier>) -> Self {
        self.assertions = Some(verifier);
        self
    }

    /// Development mode: accept identities asserted in `x-writ-caller`.
    pub fn with_asserted_identities(mut self, on: bool) -> Self {
        self.asserted = on;
        self
    }

    /// Decides who is calling `request`.
    pub async fn identify<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let info = request.extensions().get::<PeerInfo>();
        let ip = crate::ratelimit::peer_ip(request);
        let proven = self.identify_request(
            request.metadata().as_ref(),
            info,
            ip,
            FormClientAuth::default(),
        );
        self.first_use(proven).await
    }

    /// The caller, once a shared replay record (if any) has the assertion that proved it
    /// as used for the first time.
    async fn first_use(&self, proven: Result<Proven, AuthError>) -> Result<Caller, AuthError> {
        let proven = proven?;
        if let (Some(shared), Some((key, until))) = (&self.shared_replay, proven.replay) {
            match shared.first_use(key, until).await {
                Ok(true) => {}
                Ok(false) => return Err(AuthError::Unproven(AssertionError::Replayed.to_string())),
                Err(e) => {
                    return Err(AuthError::Unavailable(format!(
                        "recording the client assertion as used failed ({e}); retry with a fresh one"
                    )));
                }
            }
        }
        Ok(proven.caller)
    }

    /// Decides who is calling an HTTP request (the OAuth face): the same proofs as
    /// [`identify`](Self::identify), read from the same headers and the connection's
    /// [`PeerInfo`] in the request's extensions, plus the RFC 7523 client authentication of
    /// its form, `form` (one more way to present a client assertion, never a second proof).
    pub async fn identify_http(
        &self,
        parts: &::http::request::Parts,
        form: FormClientAuth<'_>,
    ) -> Result<Caller, AuthError> {
        let info = parts.extensions.get::<PeerInfo>();
        let ip = info.and_then(|p| p.remote_addr).map(|a| a.ip());
        let proven = self.identify_request(&parts.headers, info, ip, form);
        self.first_use(proven).await
    }

    /// The one path of every request: the connection's certificate still valid, the one
    /// proof presented, `client_id` naming the identity, then the rate limit charged once,
    /// to the caller identified or to the peer address `ip`.
    fn identify_request(
        &self,
        headers: &::http::HeaderMap,
        info: Option<&PeerInfo>,
        ip: Option<std::net::IpAddr>,
        form: FormClientAuth<'_>,
    ) -> Result<Proven, AuthError> {
        // The handshake checked the certificate's validity once; the connection may last
        // longer than the certificate.
        let now = i64::try_from(crate::service::now_secs()).unwrap_or(i64::MAX);
        if info.and_then(|p| p.not_after).is_some_and(|t| t < now) {
            return Err(AuthError::Unproven(
                "the connection's client certificate has expired since the handshake; \
                 reconnect with a current one"
                    .into(),
            ));
        }
        let peer = info
            .and_then(|p| p.spiffe_id.as_ref())
            .map(|id| id.to_string());
        let proven = self.identify_headers(headers, peer, form).and_then(|p| {
            Ok(Proven {
                caller: form.check_client_id(p.caller)?,
                replay: p.replay,
            })
        });
        if let Some(limits) = &self.limits {
            match proven.as_ref().map(|p| &p.caller) {
                Ok(Caller::Known(i)) => {
                    limits
                        .check(&i.actor.id, i.roles)
                        .map_err(|limited| AuthError::Limited {
                            caller: i.actor.id.clone(),
                            limited,
                        })?
                }
                // Nobody, or a proof that failed: the peer address pays.
                _ => limits
                    .check_anonymous(ip)
                    .map_err(|limited| AuthError::Limited {
                        caller: ip
                            .map_or_else(|| "anonymous".into(), |ip| format!("anonymous {ip}")),
                        limited,
                    })?,
            }
        }
        proven
    }

    /// [`identify`](Self::identify) from the metadata and the SPIFFE ID of the
    /// connection's verified client certificate, if any.
    pub fn identify_parts(
        &self,
        md: &MetadataMap,
        peer: Option<String>,
    ) -> Result<Caller, AuthError> {
        self.identify_headers(md.as_ref(), peer, FormClientAuth::default())
            .map(|p| p.caller)
    }

    /// The one proof among the headers, the connection's SPIFFE ID `peer` and the form's
    /// client assertion, and the caller it proves.
    fn identify_headers(
        &self,
        headers: &::http::HeaderMap,
        peer: Option<String>,
        form: FormClientAuth<'_>,
    ) -> Result<Proven, AuthError> {
        // Each identity header looked up once (a lookup hashes the name); one value each.
        let mut found = [None; IDENTITY_HEADERS.len()];
        for (slot, header) in found.iter_mut().zip(IDENTITY_HEADERS) {
            let mut values = headers.get_all(header).iter();
            *slot = values.next();
            if values.next().is_some() {
                return Err(AuthError::Malformed(format!(
                    "{header}: sent more than once; send exactly one value"
                )));
            }
        }
        let [caller, authorization, assertion] = found;
        let form_assertion = form.assertion()?;
        let proofs = [
            peer.as_ref().map(|_| "a client certificate"),
            authorization.map(|_| AUTHORIZATION),
            assertion.map(|_| ASSERTION_HEADER),
            form_assertion.map(|_| CLIENT_ASSERTION),
            caller.map(|_| CALLER_HEADER),
        ];
        if caller.is_some() && !self.asserted {
            return Err(AuthError::Unproven(format!(
                "{CALLER_HEADER}: asserted identities are refused (development mode is off); \
                 prove the identity with a client certificate or a client assertion ({ASSERTION_HEADER})"
            )));
        }
        // Counted on every request; the message is built only for a refusal.
        if proofs.iter().flatten().nth(1).is_some() {
            let presented: Vec<&str> = proofs.into_iter().flatten().collect();
            return Err(AuthError::Malformed(format!(
                "present one proof of identity, not {}",
                presented.join(" and ")
            )));
        }
        if let Some(v) = authorization {
            return self
                .bearer(v.to_str().map_err(|_| AuthError::BadCredential)?)
                .map(Proven::from);
        }
        // One policy for the whole request: keys and roles never come from two.
        let policy = self.policy.as_ref().map(PolicyHandle::current);
        if let Some(v) = assertion {
            let jwt = v.to_str().map_err(|_| {
                AuthError::Malformed(format!("{ASSERTION_HEADER}: must be printable ASCII"))
            })?;
            return self.assertion(ASSERTION_HEADER, jwt, policy.as_deref());
        }
        if let Some(jwt) = form_assertion {
            return self.assertion(CLIENT_ASSERTION, jwt, policy.as_deref());
        }
        if let Some(id) = peer {
            return self
                .party(id, AuthMethod::Mtls, policy.as_deref())
                .map(Proven::from);
        }
        match caller {
            None => Ok(Caller::Anonymous.into()),
            Some(v) => {
                let id = v.to_str().map_err(|_| {
                    AuthError::Malformed(format!("{CALLER_HEADER}: must be printable ASCII"))
                })?;
                writ_api::convert::id(CALLER_HEADER, id)
                    .map_err(|e| AuthError::Malformed(e.to_string()))?;
                if self.credentials.is_credentialed_id(id) {
                    return Err(AuthError::Forbidden(format!(
                        "{CALLER_HEADER}: {id:?} is a minter or operator and must present its credential"
                    )));
                }
                self.party(id.to_owned(), AuthMethod::Asserted, policy.as_deref())
                    .map(Proven::from)
            }
        }
    }

    /// A minter's or operator's bearer credential (the `authorization` value).
    fn bearer(&self, value: &str) -> Result<Caller, AuthError> {
        // RFC 7235: the scheme is case-insensitive.
        let cred = match value.split_once(' ') {
            Some((scheme, cred)) if scheme.eq_ignore_ascii_case("bearer") => cred.trim(),
            _ => return Err(AuthError::BadCredential),
        };
        let (id, role) = self
            .credentials
            .identify(cred)
            .ok_or(AuthError::BadCredential)?;
        if self.disabled.as_ref().is_some_and(|d| d.contains(id)) {
            return Err(AuthError::Forbidden(format!(
                "{id:?} is disabled by an operator"
            )));
        }
        let role = match role {
            CredentialRole::Minter => Role::Minter,
            CredentialRole::Operator => Role::Operator,
        };
        Ok(Caller::known(id, AuthMethod::Bearer, &[role]))
    }

    /// A JWT client assertion or JWT-SVID, presented in `field` (the header, or the form's
    /// `client_assertion`).
    fn assertion(
        &self,
        field: &str,
        jwt: &str,
        policy: Option<&Policy>,
    ) -> Result<Proven, AuthError> {
        let Some(verifier) = &self.assertions else {
            return Err(AuthError::Unproven(format!(
                "{field}: client assertions are not configured"
            )));
        };
        let now = crate::service::now_secs();
        let keys_of = |id: &str| policy.and_then(|p| p.keys_of(id));
        // The verifier's messages name the header; name where this one was presented.
        let named = |m: String| match m.strip_prefix(ASSERTION_HEADER) {
            Some(rest) if field != ASSERTION_HEADER => format!("{field}{rest}"),
            _ => m,
        };
        let verified = verifier.verify(jwt, &keys_of, now).map_err(|e| match e {
            AssertionError::Malformed(m) => AuthError::Malformed(named(m)),
            AssertionError::ReplayCacheFull { .. } => AuthError::Exhausted(named(e.to_string())),
            other => AuthError::Unproven(named(other.to_string())),
        })?;
        let method = match verified.kind {
            AssertionKind::ClientAssertion => AuthMethod::ClientAssertion,
            AssertionKind::JwtSvid => AuthMethod::JwtSvid,
        };
        // A party id is a SPIFFE ID of at most `MAX_ID_LEN` bytes, however it is proven.
        let subject = crate::tls::SpiffeId::parse(&verified.subject)
            .map_err(|e| AuthError::Unproven(format!("{field}: `sub`: {e}")))?;
        Ok(Proven {
            caller: self.party(subject.to_string(), method, policy)?,
            replay: Some(verified.replay),
        })
    }

    /// The party `id`, proven by `auth`, with the roles the registry gives it: refused
    /// when disabled, or when the registry does not know it (unless the trust domain is
    /// open). An asserted identity the registry cannot resolve (development mode, a name
    /// that is no SPIFFE ID) may hold, derive and check tokens.
    fn party(
        &self,
        id: String,
        auth: AuthMethod,
        policy: Option<&Policy>,
    ) -> Result<Caller, AuthError> {
        let holder = Roles::of(&HOLDER_ROLES);
        if self.disabled.as_ref().is_some_and(|d| d.contains(&id)) {
            return Err(AuthError::Forbidden(format!(
                "{id:?} is disabled by an operator"
            )));
        }
        let Some(policy) = policy else {
            return Ok(Caller::known(id, auth, &HOLDER_ROLES));
        };
        let roles = match policy.registry().resolve(&id) {
            Some(p) if !p.enabled => {
                return Err(AuthError::Forbidden(format!(
                    "{id:?} is disabled by the policy"
                )));
            }
            // An asserted name proves nothing: never a registered minter's, operator's or
            // approver's powers, only what any development party may do.
            Some(p) if auth == AuthMethod::Asserted => p.effective_roles().and(holder),
            Some(p) => p.effective_roles(),
            None if auth == AuthMethod::Asserted => holder,
            None => {
                return Err(AuthError::Forbidden(format!(
                    "{id:?} is not a registered party (the trust domain is closed)"
                )));
            }
        };
        Ok(Caller::Known(Identity {
            actor: Actor { id, auth },
            roles,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::credential_digest;

    const C1: &str = "wmc_00000000000000000000000000000001";
    const OPS: &str = "woc_00000000000000000000000000000003";

    /// A shared replay record that answers as told.
    #[derive(Debug)]
    struct Shared(Result<bool, String>);

    impl SharedReplay for Shared {
        fn first_use(
            &self,
            _key: [u8; 32],
            _until_unix_secs: u64,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>
        {
            Box::pin(std::future::ready(self.0.clone()))
        }
    }

    /// On a shared store, an assertion proves its caller only if the shared record takes
    /// it as used for the first time: used elsewhere is a replay, unrecordable is
    /// retryable (never accepted on this node's word alone).
    #[tokio::test]
    async fn a_shared_replay_record_decides_an_assertions_first_use() {
        let caller = Caller::known("spiffe://td/agent/a", AuthMethod::ClientAssertion, &[]);
        let proven = || {
            Ok(Proven {
                caller: caller.clone(),
                replay: Some(([7; 32], 100)),
            })
        };
        let with = |answer| auth().with_shared_replay(Arc::new(Shared(answer)));
        assert_eq!(with(Ok(true)).first_use(proven()).await, Ok(caller.clone()));
        let replayed = with(Ok(false)).first_use(proven()).await;
        assert!(
            matches!(&replayed, Err(AuthError::Unproven(m)) if m.contains("jti")),
            "{replayed:?}"
        );
        let down = with(Err("cluster down".into())).first_use(proven()).await;
        assert!(matches!(&down, Err(AuthError::Unavailable(_))), "{down:?}");
        // A caller proven otherwise (no assertion) is not looked up at all.
        let bearer = Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]);
        assert_eq!(
            with(Err("cluster down".into()))
                .first_use(Ok(bearer.clone().into()))
                .await,
            Ok(bearer)
        );
    }

    fn auth() -> Authenticator {
        let mut m = Credentials::default();
        m.add("gw".into(), CredentialRole::Minter, credential_digest(C1));
        m.add(
            "ops".into(),
            CredentialRole::Operator,
            credential_digest(OPS),
        );
        Authenticator::new(m).with_asserted_identities(true)
    }

    fn who(a: &Authenticator, m: &MetadataMap) -> Result<Caller, AuthError> {
        a.identify_parts(m, None)
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn identifies_minters_parties_and_nobody() {
        let a = auth();
        let bearer = format!("Bearer {C1}");
        let lower = format!("bearer {C1}");
        assert_eq!(
            who(&a, &md(&[("authorization", &bearer)])),
            Ok(Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]))
        );
        assert_eq!(
            who(&a, &md(&[("authorization", &lower)])),
            Ok(Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]))
        );
        let wrong = format!("Bearer {C1}x");
        assert_eq!(
            who(&a, &md(&[("authorization", &wrong)])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            who(&a, &md(&[("authorization", "Bearer ")])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            who(&a, &md(&[("authorization", C1)])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            who(&a, &md(&[(CALLER_HEADER, "planner")])),
            Ok(Caller::known(
                "planner",
                AuthMethod::Asserted,
                &[Role::Agent, Role::ResourceServer]
            ))
        );
        // Two proofs: refused, whichever they name.
        for other in ["other", "gw"] {
            assert!(matches!(
                who(&a, &md(&[("authorization", &bearer), (CALLER_HEADER, other)])),
                Err(AuthError::Malformed(m)) if m.contains("one proof")
            ));
        }
        assert!(matches!(
            who(&a, &md(&[(CALLER_HEADER, "gw")])),
            Err(AuthError::Forbidden(_))
        ));
        let ops = format!("Bearer {OPS}");
        assert_eq!(
            who(&a, &md(&[("authorization", &ops)])),
            Ok(Caller::known("ops", AuthMethod::Bearer, &[Role::Operator]))
        );
        assert!(matches!(
            who(&a, &md(&[(CALLER_HEADER, "ops")])),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(who(&a, &md(&[])), Ok(Caller::Anonymous));
        assert!(matches!(
            who(&a, &md(&[(CALLER_HEADER, "a b")])),
            Err(AuthError::Malformed(_))
        ));
    }

    /// Finding 3: a second value must not be ignored (the first used to win).
    #[test]
    fn a_header_sent_twice_is_refused_naming_it() {
        let a = auth();
        let mut callers = md(&[(CALLER_HEADER, "planner")]);
        callers.append(CALLER_HEADER, "booking".parse().unwrap());
        match who(&a, &callers) {
            Err(AuthError::Malformed(m)) => assert!(m.starts_with(CALLER_HEADER), "{m}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
        // Even two identical values, and even when the first is a valid credential.
        let bearer = format!("Bearer {C1}");
        let mut creds = md(&[("authorization", &bearer)]);
        creds.append("authorization", bearer.parse().unwrap());
        match who(&a, &creds) {
            Err(AuthError::Malformed(m)) => assert!(m.starts_with("authorization"), "{m}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
        let mut mixed = md(&[("authorization", &bearer)]);
        mixed.append("authorization", "Bearer other".parse().unwrap());
        assert!(matches!(who(&a, &mixed), Err(AuthError::Malformed(_))));
        let err = crate::error::ServiceError::from(who(&a, &callers).unwrap_err());
        // The client assertion header too.
        let mut jwts = md(&[(ASSERTION_HEADER, "a.b.c")]);
        jwts.append(ASSERTION_HEADER, "d.e.f".parse().unwrap());
        assert!(
            matches!(who(&a, &jwts), Err(AuthError::Malformed(m)) if m.starts_with(ASSERTION_HEADER))
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    /// Outside development mode an asserted identity is refused, never ignored; a client
    /// certificate is an identity proven by mTLS and cannot be combined with another proof.
    #[test]
    fn asserted_identities_only_in_development_mode_and_one_proof_at_a_time() {
        let mut m = Credentials::default();
        m.add("gw".into(), CredentialRole::Minter, credential_digest(C1));
        let a = Authenticator::new(m);
        let spiffe = "spiffe://writ.local/agent/planner".to_owned();
        match a.identify_parts(&md(&[(CALLER_HEADER, "planner")]), None) {
            Err(e @ AuthError::Unproven(_)) => {
                assert!(e.to_string().starts_with(CALLER_HEADER), "{e}");
                let status = tonic::Status::from(crate::error::ServiceError::from(e));
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
            other => panic!("expected Unproven, got {other:?}"),
        }
        // Even beside a valid client certificate.
        assert!(matches!(
            a.identify_parts(&md(&[(CALLER_HEADER, "planner")]), Some(spiffe.clone())),
            Err(AuthError::Unproven(_))
        ));
        assert_eq!(
            a.identify_parts(&md(&[]), Some(spiffe.clone())),
            Ok(Caller::known(
                spiffe.clone(),
                AuthMethod::Mtls,
                &[Role::Agent, Role::ResourceServer]
            ))
        );
        let bearer = format!("Bearer {C1}");
        assert!(matches!(
            a.identify_parts(&md(&[("authorization", &bearer)]), Some(spiffe.clone())),
            Err(AuthError::Malformed(m)) if m.contains("client certificate and authorization")
        ));
        // No verifier configured: a client assertion proves nothing.
        assert!(matches!(
            a.identify_parts(&md(&[(ASSERTION_HEADER, "a.b.c")]), None),
            Err(AuthError::Unproven(_))
        ));
        assert_eq!(a.identify_parts(&md(&[]), None), Ok(Caller::Anonymous));
    }

    /// An HTTP request: its headers, and the connection's verified SPIFFE ID as the
    /// listener puts it in the extensions.
    fn http_parts(headers: &[(&str, &str)], spiffe: Option<&str>) -> ::http::request::Parts {
        let mut builder = ::http::Request::builder().method("POST").uri("/token");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts.extensions.insert(PeerInfo {
            remote_addr: Some("127.0.0.1:5000".parse().unwrap()),
            spiffe_id: spiffe.map(|s| crate::tls::SpiffeId::parse(s).unwrap()),
            not_after: None,
        });
        parts
    }

    /// The HTTP entry point shares the seam: the same proofs from the same headers and
    /// the connection's certificate; the form's RFC 7523 assertion is one more way to
    /// present a client assertion, never a second proof; `client_id` must name whoever
    /// was proven.
    #[tokio::test]
    async fn http_requests_prove_one_identity_through_the_same_seam() {
        let a = auth();
        let spiffe = "spiffe://writ.local/agent/planner";
        let bearer = format!("Bearer {C1}");
        let none = FormClientAuth::default();
        assert_eq!(
            a.identify_http(&http_parts(&[("authorization", &bearer)], None), none)
                .await,
            Ok(Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]))
        );
        assert_eq!(
            a.identify_http(&http_parts(&[], Some(spiffe)), none).await,
            Ok(Caller::known(
                spiffe,
                AuthMethod::Mtls,
                &[Role::Agent, Role::ResourceServer]
            ))
        );
        assert_eq!(
            a.identify_http(&http_parts(&[], None), none).await,
            Ok(Caller::Anonymous)
        );
        let form = FormClientAuth {
            assertion_type: Some(JWT_BEARER),
            assertion: Some("a.b.c"),
            client_id: None,
        };
        // No verifier configured here: the form's assertion is a client assertion.
        assert!(matches!(
            a.identify_http(&http_parts(&[], None), form).await,
            Err(AuthError::Unproven(m)) if m.starts_with(CLIENT_ASSERTION)
        ));
        // Beside the header, a certificate or a credential: two proofs.
        for (headers, spiffe) in [
            (vec![(ASSERTION_HEADER, "d.e.f")], None),
            (vec![], Some(spiffe)),
            (vec![("authorization", bearer.as_str())], None),
        ] {
            assert!(
                matches!(
                    a.identify_http(&http_parts(&headers, spiffe), form).await,
                    Err(AuthError::Malformed(m)) if m.contains("one proof") && m.contains(CLIENT_ASSERTION)
                ),
                "{headers:?} {spiffe:?}"
            );
        }
        // The assertion's type is RFC 7523's, and each needs the other.
        let typed = |t: Option<&'static str>, jwt: Option<&'static str>| FormClientAuth {
            assertion_type: t,
            assertion: jwt,
            client_id: None,
        };
        assert!(matches!(
            a.identify_http(&http_parts(&[], None), typed(Some("urn:x:saml"), Some("a.b.c"))).await,
            Err(AuthError::Unproven(m)) if m.starts_with(CLIENT_ASSERTION_TYPE)
        ));
        assert!(matches!(
            a.identify_http(&http_parts(&[], None), typed(None, Some("a.b.c"))).await,
            Err(AuthError::Malformed(m)) if m.starts_with(CLIENT_ASSERTION_TYPE)
        ));
        assert!(matches!(
            a.identify_http(&http_parts(&[], None), typed(Some(JWT_BEARER), None)).await,
            Err(AuthError::Malformed(m)) if m.starts_with(CLIENT_ASSERTION)
        ));
        // client_id names the proven identity, or the request is refused.
        let claiming = |id: &'static str| FormClientAuth {
            client_id: Some(id),
            ..FormClientAuth::default()
        };
        assert!(
            a.identify_http(&http_parts(&[], Some(spiffe)), claiming(spiffe))
                .await
                .is_ok()
        );
        assert!(matches!(
            a.identify_http(&http_parts(&[("authorization", &bearer)], None), claiming(spiffe)).await,
            Err(AuthError::Unproven(m)) if m.starts_with("client_id")
        ));
        assert!(matches!(
            a.identify_http(&http_parts(&[], None), claiming("gw")).await,
            Err(AuthError::Unproven(m)) if m.contains("proves nothing")
        ));
        // A header sent twice, as for gRPC.
        assert!(matches!(
            a.identify_http(
                &http_parts(&[("authorization", &bearer), ("authorization", &bearer)], None),
                none
            ).await,
            Err(AuthError::Malformed(m)) if m.starts_with("authorization")
        ));
    }

    /// Rate limits are charged once per HTTP request too: to the caller, or to the peer
    /// address of a request that proves nobody.
    #[tokio::test]
    async fn http_requests_are_rate_limited_like_grpc_ones() {
        let config: crate::ratelimit::RateLimitConfig =
            toml::from_str("anonymous = { requests_per_second = 1, burst = 1 }\n").unwrap();
        let a = auth().with_limits(Arc::new(crate::ratelimit::RateLimiter::new(&config)));
        let parts = http_parts(&[], None);
        assert_eq!(
            a.identify_http(&parts, FormClientAuth::default()).await,
            Ok(Caller::Anonymous)
        );
        assert!(matches!(
            a.identify_http(&parts, FormClientAuth::default()).await,
            Err(AuthError::Limited { caller, .. }) if caller == "anonymous 127.0.0.1"
        ));
    }

    /// An asserted name proves nothing: even in development mode it never carries a
    /// registered party's operator (or minter) role, which the same identity proven by
    /// mTLS does. A disabled credentialed caller is refused at the door.
    #[test]
    fn asserted_names_never_carry_powers_and_disabled_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        let alice = "spiffe://writ.local/ops/alice";
        std::fs::write(
            &file,
            format!(
                "trust_domain = \"writ.local\"\n[parties.\"{alice}\"]\nkind = \"user\"\n\
                 client_type = \"confidential\"\nroles = [\"operator\", \"agent\"]\nscopes = []\n"
            ),
        )
        .unwrap();
        let policy = PolicyHandle::load(Some(&file), "writ.local").unwrap();
        let why = writ_core::PartyDisable::new(writ_core::UnixMillis(1), "ops".into(), "x".into());
        let a = auth()
            .with_policy(policy)
            .with_disabled(Disabled::new(vec![("gw".into(), why)]));
        assert_eq!(
            a.identify_parts(&md(&[(CALLER_HEADER, alice)]), None),
            Ok(Caller::known(alice, AuthMethod::Asserted, &[Role::Agent]))
        );
        assert_eq!(
            a.identify_parts(&md(&[]), Some(alice.to_owned())),
            Ok(Caller::known(
                alice,
                AuthMethod::Mtls,
                &[Role::Agent, Role::Operator]
            ))
        );
        let bearer = format!("Bearer {C1}");
        assert!(matches!(
            a.identify_parts(&md(&[("authorization", &bearer)]), None),
            Err(AuthError::Forbidden(m)) if m.contains("disabled")
        ));
    }
}
