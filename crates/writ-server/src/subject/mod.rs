//! External subject tokens: the user's access or ID token (a JWT from the user's
//! authorization server) presented to the token endpoint, verified against its issuer's
//! JWKS before Writ mints a transaction for that user.
//!
//! Writ trusts only the issuers the operator lists (`[[subject_tokens.issuers]]`), each
//! with its exact `iss`, the `aud` values it accepts and its key set: a JWKS file
//! (re-read when it changes) or a JWKS URL (fetched, cached and refreshed under bounds:
//! the `keys` submodule). [`SubjectVerifier::verify`] works in this order: the token type
//! (refresh tokens never), cheap structural checks (size, base64url, JSON objects without
//! duplicate members, `alg`, `crit`, no key carried by the token itself, `typ`), the
//! issuer named by `iss`, key selection and the signature, and only then the claims
//! (`aud`, `exp`, `nbf`, `iat`, `sub`, the scope). So nothing but an authentic token's
//! claims is ever judged, and an error message names what failed without echoing the
//! token.
//!
//! The scope decides what the transaction may ever do, so it is never guessed: an access
//! token's `scope` (RFC 9068/8693, a space-separated string) or `scp` (an array), every
//! entry a well-formed Writ scope; a token without one is refused ([`SubjectError::NoScope`],
//! the Txn-Token draft's MUST). An ID token carries no scope: it is refused unless the
//! issuer's configuration names the scopes an ID token grants (`id_token_scopes`).
//!
//! Trade-offs:
//! - `exp` gets no leeway: the root token Writ mints never outlives the subject token, so
//!   an expired one would only mint a dead token. `nbf` and `iat` get `leeway_seconds`.
//! - The subject is the token's `sub` as it is; two issuers' users with the same `sub`
//!   are one Writ subject (the issuer is recorded in the context).
#![forbid(unsafe_code)]

mod keys;
#[cfg(test)]
mod tests;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writ_core::limits::{MAX_CLAIM_NAME_LEN, MAX_SCOPES, MAX_VALUE_LEN};
use writ_core::text::Shown;

use crate::assertion::{self, AssertionError};
use jsonwebtoken::Algorithm;

pub use keys::MAX_JWKS_BYTES;

/// RFC 8693 type of an OAuth access token (RFC 9068 JWT, or a plain JWT).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 type of an OpenID Connect ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// RFC 8693 type of a JWT of no more specific kind.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 type of a refresh token: never accepted.
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// Longest subject token accepted, in bytes; checked before anything is parsed.
pub const MAX_SUBJECT_TOKEN_BYTES: usize = 16 * 1024;

/// Most `aud` entries read from a token, and most audiences configured for an issuer.
const MAX_AUDIENCES: usize = 64;
/// Most `amr` entries recorded in the context.
const MAX_AMR: usize = 8;
/// Longest `amr` entry and `acr` recorded in the context, in bytes.
const MAX_AMR_BYTES: usize = 64;
const MAX_ACR_BYTES: usize = 256;
/// Longest `leeway_seconds`.
const MAX_LEEWAY_SECS: u64 = 300;

/// `[subject_tokens]`: the authorization servers whose tokens Writ accepts as subject
/// tokens of a token exchange.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectTokensConfig {
    /// Accepted issuers (`[[subject_tokens.issuers]]`). None: external subject tokens are
    /// refused.
    pub issuers: Vec<IssuerConfig>,
}

/// One accepted authorization server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// `aud` values accepted (a token must name at least one).
    pub audiences: Vec<String>,
    /// Its JWKS in a file (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// Its JWKS at a URL (fetched, cached, refreshed): `https`, or plain `http` to a
    /// loopback host only.
    pub jwks_uri: Option<String>,
    /// How often a `jwks_uri` is fetched again, in seconds (default 300).
    #[serde(default = "defaults::refresh")]
    pub jwks_refresh_seconds: u64,
    /// The shortest interval between two fetches (or file reads) caused by a token whose
    /// `kid` is unknown, or by a failed fetch, in seconds (default 30).
    #[serde(default = "defaults::min_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// How long the last good key set of a `jwks_uri` is used while fetches fail, in
    /// seconds (default 86400); after that its tokens are refused as unavailable.
    #[serde(default = "defaults::max_stale")]
    pub jwks_max_stale_seconds: u64,
    /// How long one fetch of a `jwks_uri` may take, in seconds (default 10).
    #[serde(default = "defaults::timeout")]
    pub jwks_timeout_seconds: u64,
    /// Clock skew allowed on `nbf` and `iat`, in seconds (default 30; `exp` gets none).
    #[serde(default = "defaults::leeway")]
    pub leeway_seconds: u64,
    /// The claim holding an access token's scope. Default: `scope`, or `scp` when the
    /// token has no `scope` (a token with both is refused: name one here).
    pub scope_claim: Option<String>,
    /// The scopes an ID token of this issuer grants (an ID token has none of its own).
    /// Default none: ID tokens are refused.
    #[serde(default)]
    pub id_token_scopes: Vec<String>,
}

mod defaults {
    pub(super) fn refresh() -> u64 {
        300
    }
    pub(super) fn min_refresh() -> u64 {
        30
    }
    pub(super) fn max_stale() -> u64 {
        86_400
    }
    pub(super) fn timeout() -> u64 {
        10
    }
    pub(super) fn leeway() -> u64 {
        30
    }
}

impl IssuerConfig {
    /// An issuer with the defaults and no key set yet (name `jwks_file` or `jwks_uri`).
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        IssuerConfig {
            issuer: issuer.into(),
            audiences,
            jwks_file: None,
            jwks_uri: None,
            jwks_refresh_seconds: defaults::refresh(),
            jwks_min_refresh_seconds: defaults::min_refresh(),
            jwks_max_stale_seconds: defaults::max_stale(),
            jwks_timeout_seconds: defaults::timeout(),
            leeway_seconds: defaults::leeway(),
            scope_claim: None,
            id_token_scopes: Vec::new(),
        }
    }
}

/// A verified external subject token: who the user is and what the token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSubject {
    /// The `iss` it was verified against.
    pub issuer: String,
    /// The user (`sub`).
    pub subject: String,
    /// The scopes the token grants; never empty-by-default: a token whose scope cannot be
    /// determined is refused.
    pub scopes: BTreeSet<String>,
    /// Its `exp` (Unix seconds): the root token never outlives it.
    pub expires_at: u64,
    /// What the token attests, recorded in the root's `tctx` (no hop changes or drops it):
    /// `subject_issuer`, and when the token
    /// says so `authn` (its `amr` values, else its `acr`), `acr` and `auth_time`. Keys
    /// and values are within `writ_api::convert::context`'s bounds.
    pub context: BTreeMap<String, String>,
}

/// Why a subject token was refused. Every variant but `Unavailable` is the caller's
/// problem (`invalid_request` at the token endpoint, as RFC 8693 §2.2.2 says).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The token type is not accepted (a refresh token, SAML, ...) or no issuer is
    /// configured.
    #[error("subject_token_type: {0}")]
    Unsupported(String),
    /// The token does not verify (signature, issuer, audience, expiry, ...); says what.
    #[error("subject_token: {0}")]
    Invalid(String),
    /// The token verifies but its scope cannot be determined.
    #[error("subject_token: the token's scope cannot be determined")]
    NoScope,
    /// The issuer's keys cannot be fetched right now.
    #[error("subject_token: the issuer's keys are unavailable: {0}")]
    Unavailable(String),
    /// The `[subject_tokens]` configuration is unusable (only from
    /// [`SubjectVerifier::new`], never from `verify`).
    #[error("subject_tokens: {0}")]
    Config(String),
}

fn invalid(message: impl Into<String>) -> SubjectError {
    SubjectError::Invalid(message.into())
}

/// The message of an error of the shared JOSE helpers in [`assertion`].
fn jose_message(e: AssertionError) -> String {
    match e {
        AssertionError::Malformed(m)
        | AssertionError::Rejected(m)
        | AssertionError::Key(m)
        | AssertionError::Config(m) => m,
        other => other.to_string(),
    }
}

/// What the caller says the token is (`subject_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Access,
    Id,
    Jwt,
}

impl TokenKind {
    fn of(token_type: &str) -> Result<TokenKind, SubjectError> {
        match token_type {
            ACCESS_TOKEN_TYPE => Ok(TokenKind::Access),
            ID_TOKEN_TYPE => Ok(TokenKind::Id),
            JWT_TOKEN_TYPE => Ok(TokenKind::Jwt),
            REFRESH_TOKEN_TYPE => Err(SubjectError::Unsupported(
                "refresh tokens are never accepted as subject tokens".into(),
            )),
            other => Err(SubjectError::Unsupported(format!(
                "{} is not accepted for an external subject token (access_token, id_token \
                 or jwt)",
                Shown(other)
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TokenKind::Access => "an access token",
            TokenKind::Id => "an ID token",
            TokenKind::Jwt => "a JWT",
        }
    }

    /// Checks the header's `typ` (compared without case and without `application/`, as
    /// RFC 7515 says): a token of another kind (a logout token, a security event, a
    /// Txn-Token...) is never taken for a subject token.
    fn check_typ(self, typ: Option<&str>) -> Result<(), SubjectError> {
        let normal = typ.map(|t| {
            let lower = t.to_ascii_lowercase();
            match lower.strip_prefix("application/") {
                Some(rest) => rest.to_owned(),
                None => lower,
            }
        });
        let ok = matches!(
            (self, normal.as_deref()),
            (_, None | Some("jwt")) | (TokenKind::Access | TokenKind::Jwt, Some("at+jwt"))
        );
        if ok {
            return Ok(());
        }
        let expected = match self {
            TokenKind::Id => "absent or \"JWT\"",
            TokenKind::Access | TokenKind::Jwt => "\"at+jwt\", \"JWT\" or absent",
        };
        Err(invalid(format!(
            "`typ` {} is not accepted for {} (expected {expected})",
            Shown(typ.unwrap_or_default()),
            self.name()
        )))
    }
}

/// One configured issuer, ready to verify.
struct Issuer {
    config: IssuerConfig,
    keys: keys::KeySource,
    id_token_scopes: BTreeSet<String>,
}

/// Verifies external subject tokens against the configured issuers.
pub struct SubjectVerifier {
    issuers: Vec<Issuer>,
}

impl fmt::Debug for SubjectVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SubjectVerifier {
    /// A verifier for `config`'s issuers. Checks every issuer (a unique, non-empty `iss`;
    /// audiences; exactly one of `jwks_file` and `jwks_uri`, the URL `https` or loopback
    /// `http`; the bounds) and reads every `jwks_file` now: one that cannot be read or
    /// parsed fails the start, named. A `jwks_uri` is fetched later, by
    /// [`spawn_refresher`](Self::spawn_refresher) or the first token that needs it.
    pub fn new(config: &SubjectTokensConfig) -> Result<Arc<SubjectVerifier>, SubjectError> {
        let mut seen = HashSet::new();
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for (i, issuer) in config.issuers.iter().enumerate() {
            let name = format!(
                "[[subject_tokens.issuers]] #{} ({})",
                i + 1,
                Shown(&issuer.issuer)
            );
            let bad = |m: String| SubjectError::Config(format!("{name}: {m}"));
            check_issuer(issuer).map_err(bad)?;
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(bad("`issuer` is configured twice".into()));
            }
            let id_token_scopes =
                writ_api::convert::scopes("id_token_scopes", issuer.id_token_scopes.clone())
                    .map_err(|e| bad(e.to_string()))?;
            let keys = keys::KeySource::new(issuer).map_err(bad)?;
            issuers.push(Issuer {
                config: issuer.clone(),
                keys,
                id_token_scopes,
            });
        }
        if !issuers.is_empty() && jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none()
        {
            return Err(SubjectError::Config(
                "jsonwebtoken has no crypto provider (a build problem)".into(),
            ));
        }
        Ok(Arc::new(SubjectVerifier { issuers }))
    }

    /// Is any issuer configured?
    pub fn is_configured(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Verifies `token` of RFC 8693 type `token_type` at `now_secs`.
    ///
    /// May fetch the issuer's JWKS (at most once per `jwks_min_refresh_seconds` per
    /// issuer) when it has no usable key set or the token names a `kid` it does not know.
    pub async fn verify(
        &self,
        token: &str,
        token_type: &str,
        now_secs: u64,
    ) -> Result<ExternalSubject, SubjectError> {
        let kind = TokenKind::of(token_type)?;
        let (issuer, claims) = self.signed_claims(token, kind, now_secs).await?;
        issuer.check_claims(&claims, kind, now_secs)
    }

    /// Verifies an OpenID Connect ID token's structure and signature exactly as
    /// [`verify`](Self::verify) does, and answers its issuer and claims without judging
    /// them: the caller checks `aud`, `exp`, `nonce` and `sub` (the consent page's sign-in,
    /// whose rules are OpenID Connect's, not a subject token's).
    pub async fn verify_id_token_signature(
        &self,
        token: &str,
        now_secs: u64,
    ) -> Result<(String, Map<String, Value>), SubjectError> {
        let (issuer, claims) = self.signed_claims(token, TokenKind::Id, now_secs).await?;
        Ok((issuer.config.issuer.clone(), claims))
    }

    /// The checks before the claims: size, structure, header, `typ`, the issuer `iss`
    /// names and the signature with its key set.
    async fn signed_claims(
        &self,
        token: &str,
        kind: TokenKind,
        now_secs: u64,
    ) -> Result<(&Issuer, Map<String, Value>), SubjectError> {
        if self.issuers.is_empty() {
            return Err(SubjectError::Unsupported(
                "this server accepts no external subject tokens (no issuer is configured)".into(),
            ));
        }
        let parts = assertion::split_bounded(token, MAX_SUBJECT_TOKEN_BYTES)
            .map_err(|e| invalid(jose_message(e)))?;
        let StrictObject(header) =
            assertion::decode_part(parts.header, "header").map_err(|e| invalid(jose_message(e)))?;
        let StrictObject(claims) = assertion::decode_part(parts.payload, "payload")
            .map_err(|e| invalid(jose_message(e)))?;
        let alg = header_alg(&header)?;
        check_header(&header)?;
        kind.check_typ(string(&header, "typ")?)?;
        let kid = string(&header, "kid")?;
        if let Some(k) = kid {
            assertion::check_kid(k).map_err(|m| invalid(format!("header `kid`: {m}")))?;
        }
        let iss = string(&claims, "iss")?.ok_or_else(|| invalid("`iss` is required"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| invalid(format!("`iss` {} is not a configured issuer", Shown(iss))))?;
        issuer
            .keys
            .verify_signature(&parts, kid, alg, now_secs)
            .await?;
        Ok((issuer, claims))
    }

    /// Keeps every issuer's key set fresh until `stop` turns true or its sender is
    /// dropped: a `jwks_uri` is fetched at once, then every `jwks_refresh_seconds` (after
    /// a failure, every `jwks_min_refresh_seconds`); a `jwks_file` is re-read every 5
    /// seconds and loaded when it changed.
    /// Failures are logged and keep the last good set. Ends at once with no issuer.
    pub fn spawn_refresher(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if this.issuers.is_empty() {
                return;
            }
            loop {
                let now = crate::service::now_secs();
                let due = async {
                    for issuer in &this.issuers {
                        if issuer.keys.next_due() <= now {
                            issuer.keys.refresh_scheduled(now).await;
                        }
                    }
                };
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = due => {}
                }
                let next = this
                    .issuers
                    .iter()
                    .map(|i| i.keys.next_due())
                    .min()
                    .unwrap_or(u64::MAX);
                let wait = next
                    .saturating_sub(crate::service::now_secs())
                    .clamp(1, 3600);
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
                }
            }
        })
    }
}

/// Checks one issuer's configuration, except its key source ([`keys::KeySource::new`]).
fn check_issuer(c: &IssuerConfig) -> Result<(), String> {
    if c.issuer.is_empty() {
        return Err("`issuer` is empty".into());
    }
    writ_api::convert::text("issuer", &c.issuer, MAX_VALUE_LEN).map_err(|e| e.to_string())?;
    if c.audiences.is_empty() {
        return Err(
            "`audiences` is empty: name the `aud` values this issuer's tokens carry \
                    for Writ"
                .into(),
        );
    }
    if c.audiences.len() > MAX_AUDIENCES {
        return Err(format!("more than {MAX_AUDIENCES} `audiences`"));
    }
    if let Some(a) = c
        .audiences
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_VALUE_LEN)
    {
        return Err(format!(
            "audience {} must be 1 to {MAX_VALUE_LEN} bytes",
            Shown(a)
        ));
    }
    if let Some(claim) = &c.scope_claim {
        let ok = !claim.is_empty()
            && claim.len() <= MAX_CLAIM_NAME_LEN
            && claim
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !ok {
            return Err(format!(
                "scope_claim {} is not a claim name (1 to {MAX_CLAIM_NAME_LEN} of letters, \
                 digits, _ . : -)",
                Shown(claim)
            ));
        }
    }
    if c.leeway_seconds > MAX_LEEWAY_SECS {
        return Err(format!("leeway_seconds is at most {MAX_LEEWAY_SECS}"));
    }
    Ok(())
}

impl Issuer {
    /// The claims of a token whose signature verified with this issuer's keys.
    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        kind: TokenKind,
        now: u64,
    ) -> Result<ExternalSubject, SubjectError> {
        let config = &self.config;
        let latest = now.saturating_add(config.leeway_seconds);

        let named = match claims.get("aud") {
            None | Some(Value::Null) => return Err(invalid("`aud` is required")),
            Some(Value::String(aud)) => config.audiences.contains(aud),
            Some(Value::Array(auds)) => {
                if auds.len() > MAX_AUDIENCES {
                    return Err(invalid(format!(
                        "`aud` has {} entries; at most {MAX_AUDIENCES}",
                        auds.len()
                    )));
                }
                if !auds.iter().all(Value::is_string) {
                    return Err(invalid("`aud` must be a string or an array of strings"));
                }
                auds.iter()
                    .filter_map(Value::as_str)
                    .any(|a| config.audiences.iter().any(|c| c == a))
            }
            Some(_) => return Err(invalid("`aud` must be a string or an array of strings")),
        };
        if !named {
            return Err(invalid(format!(
                "`aud` names none of the audiences accepted from issuer {}",
                Shown(&config.issuer)
            )));
        }

        let exp = numeric_date(claims, "exp")?
            .map(f64::floor)
            .ok_or_else(|| invalid("`exp` is required"))? as u64;
        if exp <= now {
            return Err(invalid(format!(
                "`exp` is {} s in the past: the token has expired",
                now - exp
            )));
        }
        for name in ["nbf", "iat"] {
            if let Some(at) = numeric_date(claims, name)?.map(f64::ceil)
                && at as u64 > latest
            {
                let what = if name == "nbf" {
                    "the token is not valid yet"
                } else {
                    "check the issuer's clock"
                };
                return Err(invalid(format!(
                    "`{name}` is {} s in the future: {what}",
                    at as u64 - now
                )));
            }
        }

        let sub = string(claims, "sub")?.ok_or_else(|| invalid("`sub` is required"))?;
        let subject = writ_api::convert::id("sub", sub).map_err(|e| invalid(e.to_string()))?;
        let scopes = self.scopes(claims, kind)?;
        Ok(ExternalSubject {
            issuer: config.issuer.clone(),
            subject,
            scopes,
            expires_at: exp,
            context: self.context(claims),
        })
    }

    /// The token's scopes; [`SubjectError::NoScope`] when they cannot be determined.
    fn scopes(
        &self,
        claims: &Map<String, Value>,
        kind: TokenKind,
    ) -> Result<BTreeSet<String>, SubjectError> {
        if kind == TokenKind::Id {
            // What the token is decides, not the type the caller named: a token that
            // carries a scope or a `client_id` is an access token, whose own scope is read
            // (as an ID token it would get `id_token_scopes`, possibly wider).
            if let Some(m) = ["scope", "scp", "client_id"]
                .into_iter()
                .find(|m| claims.contains_key(*m))
            {
                return Err(SubjectError::Invalid(format!(
                    "the token carries `{m}`: it is an access token, not an ID token; present \
                     it as urn:ietf:params:oauth:token-type:access_token"
                )));
            }
            // An ID token says who the user is, not what any client may do.
            if self.id_token_scopes.is_empty() {
                return Err(SubjectError::NoScope);
            }
            return Ok(self.id_token_scopes.clone());
        }
        let (name, value) = match &self.config.scope_claim {
            Some(name) => (name.as_str(), claims.get(name)),
            None => match (claims.get("scope"), claims.get("scp")) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "the token has both `scope` and `scp`; the issuer's `scope_claim` must \
                         name the one to read",
                    ));
                }
                (Some(scope), None) => ("scope", Some(scope)),
                (None, scp) => ("scp", scp),
            },
        };
        let items: Vec<&str> = match value {
            None | Some(Value::Null) => return Err(SubjectError::NoScope),
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .take(MAX_SCOPES + 1)
                .collect(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_SCOPES {
                    return Err(too_many_scopes(name));
                }
                items
                    .iter()
                    .map(|v| {
                        v.as_str().ok_or_else(|| {
                            invalid(format!("`{name}` must be a string or an array of strings"))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => {
                return Err(invalid(format!(
                    "`{name}` must be a space-separated string or an array of strings"
                )));
            }
        };
        if items.len() > MAX_SCOPES {
            return Err(too_many_scopes(name));
        }
        let mut scopes = BTreeSet::new();
        for scope in items {
            writ_api::convert::scope(name, scope).map_err(|e| invalid(e.to_string()))?;
            scopes.insert(scope.to_owned());
        }
        if scopes.is_empty() {
            return Err(SubjectError::NoScope);
        }
        Ok(scopes)
    }

    /// What the token says of how the user authenticated, bounded and sanitised: entries
    /// that are not short printable ASCII are left out, never refused.
    fn context(&self, claims: &Map<String, Value>) -> BTreeMap<String, String> {
        let mut context = BTreeMap::new();
        context.insert("subject_issuer".to_owned(), self.config.issuer.clone());
        let amr: Vec<&str> = match claims.get("amr") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|m| printable(m, MAX_AMR_BYTES))
                .take(MAX_AMR)
                .collect(),
            _ => Vec::new(),
        };
        let acr = claims
            .get("acr")
            .and_then(Value::as_str)
            .filter(|a| printable(a, MAX_ACR_BYTES));
        if !amr.is_empty() {
            context.insert("authn".to_owned(), amr.join(" "));
        } else if let Some(acr) = acr {
            context.insert("authn".to_owned(), acr.to_owned());
        }
        if let Some(acr) = acr {
            context.insert("acr".to_owned(), acr.to_owned());
        }
        if let Some(Value::Number(n)) = claims.get("auth_time")
            && let Some(t) = n.as_u64()
        {
            context.insert("auth_time".to_owned(), t.to_string());
        }
        context
    }
}

fn too_many_scopes(name: &str) -> SubjectError {
    invalid(format!("`{name}` has more than {MAX_SCOPES} scopes"))
}

/// 1 to `max` bytes of printable ASCII without spaces.
fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The signature algorithm: RS256, PS256, ES256 or EdDSA; never `none` or a MAC.
fn header_alg(header: &Map<String, Value>) -> Result<Algorithm, SubjectError> {
    let alg = string(header, "alg")?.ok_or_else(|| invalid("`alg` is required"))?;
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "PS256" => Ok(Algorithm::PS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "none" => Err(invalid(
            "`alg` \"none\" is refused: a subject token must be signed",
        )),
        "HS256" | "HS384" | "HS512" => Err(invalid(format!(
            "`alg` {alg} (a shared-secret MAC) is refused: only public-key signatures are \
             accepted"
        ))),
        other => Err(invalid(format!(
            "`alg` {} is not accepted (RS256, PS256, ES256 or EdDSA)",
            Shown(other)
        ))),
    }
}

/// No JWS extensions, and no key that the token carries or points to: keys come from
/// the issuer's configured key set only.
fn check_header(header: &Map<String, Value>) -> Result<(), SubjectError> {
    if header.contains_key("crit") {
        return Err(invalid(
            "the header has `crit`: no JWS extensions are supported",
        ));
    }
    if header.contains_key("b64") {
        return Err(invalid("unencoded payloads (`b64`) are not supported"));
    }
    if let Some(member) = ["jwk", "jku", "x5u", "x5c"]
        .into_iter()
        .find(|m| header.contains_key(*m))
    {
        return Err(invalid(format!(
            "the header has `{member}`: keys come only from the issuer's configured key set"
        )));
    }
    Ok(())
}

/// A string member (`null` counts as absent).
fn string<'m>(map: &'m Map<String, Value>, name: &str) -> Result<Option<&'m str>, SubjectError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
    }
}

/// A NumericDate (RFC 7519: seconds since the epoch, possibly fractional).
fn numeric_date(map: &Map<String, Value>, name: &str) -> Result<Option<f64>, SubjectError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            // Beyond year 5000 is no date anyone means.
            Some(t) if t.is_finite() && (0.0..1e11).contains(&t) => Ok(Some(t)),
            _ => Err(invalid(format!("`{name}` is not a usable NumericDate"))),
        },
        Some(_) => Err(invalid(format!(
            "`{name}` must be a NumericDate: seconds since the Unix epoch"
        ))),
    }
}

/// A JSON object whose members are all distinct: a member given twice is refused, so the
/// issuer and Writ cannot read different values from one token.
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(A::Error::custom(format_args!(
                            "member {} appears twice",
                            Shown(&key)
                        )));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(Members)
    }
}
