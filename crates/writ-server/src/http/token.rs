//! `POST /token`: RFC 8693 token exchange for transaction tokens
//! (draft-ietf-oauth-transaction-tokens), on the same [`Service`](crate::service::Service)
//! methods as gRPC.
//!
//! **What the subject token is decides the path, never which parameters were sent**: a
//! string in Writ's token format (`writ_…`) is a Writ token and the exchange is a
//! Downscope by the caller, which must hold it (one that does not verify is
//! `invalid_request`, never tried as a JWT); anything else is an external subject token
//! (the user's access or ID token), verified by the
//! [`SubjectVerifier`](crate::subject::SubjectVerifier), and the exchange is a Mint by
//! the caller, which needs the minter role.
//!
//! Parameters (RFC 8693 and the draft's, then Writ's extensions):
//! - `grant_type` = `urn:ietf:params:oauth:grant-type:token-exchange`,
//!   `requested_token_type` = `urn:ietf:params:oauth:token-type:txn_token` (both
//!   required); `subject_token` and `subject_token_type` (required; the txn_token URN for
//!   a Writ token; `access_token`, `id_token` or `jwt` for an external one; never
//!   `refresh_token`); `actor_token` is refused: the authenticated caller is the actor.
//! - The next hop (the new token's audience, a party id): `audience`, unless `audience`
//!   names the trust domain (`<trust_domain>` or `spiffe://<trust_domain>`, the Txn-Token
//!   `aud`) or is absent, and then `resource`. Both naming parties must name the same
//!   one. A party the registry does not know is `invalid_target`.
//! - `scope` (space-separated): external subject: at most the subject token's scopes
//!   (default: all of them); Writ subject: required, the scopes the new token keeps.
//! - `request_context` → rctx and `request_details` → tctx: JSON objects of string values
//!   (each at most [`MAX_CONTEXT_BYTES`]), validated as gRPC's. With a Writ subject token
//!   both are refused (`invalid_request`): tctx is immutable along the chain and rctx can
//!   only shrink, by naming entries in `drop_request_context` (space-separated).
//! - `targets` (space-separated party ids): whom the new token's holder may pass it on
//!   to; default none. `purpose`: default (Writ subject) the parent's. `ttl_seconds`:
//!   default the configured `tokens.default_ttl_seconds` (external subject) or the
//!   parent's expiry (Writ subject); never beyond the subject token's expiry. `max_uses`:
//!   default unlimited (or what the parent has left).
//! - `txn_token_jwt=true`: answer a Txn-Token JWT (`txntoken+jwt`) instead of the opaque
//!   token, only for an audience the policy lets receive one (`txn_token_jwt`), else
//!   `invalid_request`. The opaque token is still issued and recorded (the JWT stands for
//!   it); its secret is not returned.
//! - Client authentication (`client_assertion`, `client_id`): see
//!   [`FormClientAuth`](crate::auth::FormClientAuth).

use super::HttpState;
use super::error::{OAuthError, json_response};
use super::form::Form;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service;
use crate::subject::ExternalSubject;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use writ_api::convert;
use writ_api::oauth::TXN_TOKEN_TYPE;
use writ_api::pb;
use writ_core::limits::{MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES};
use writ_core::policy::Role;
use writ_core::text::Shown;
use writ_core::token::TOKEN_PREFIX;
use writ_core::{MintRequest, Party, TokenRecord, TokenSecret};
use writ_store::TokenStore;

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an OAuth access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of an OpenID Connect ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// RFC 8693 token type of a JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type of a refresh token: never accepted.
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// The external subject token types accepted.
pub const EXTERNAL_TOKEN_TYPES: [&str; 3] = [ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE];
/// The extension parameter asking for a Txn-Token JWT.
pub const TXN_TOKEN_JWT: &str = "txn_token_jwt";
/// Longest lifetime `ttl_seconds` may ask for (the configured maximum applies too).
const MAX_TTL_PARAM: u32 = 86_400;

/// `POST /token`.
pub async fn handle<S: TokenStore>(
    State(state): State<Arc<HttpState<S>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let answer = async {
        let (form, caller) = super::read_and_identify(&state, &parts, body).await?;
        exchange(&state, &caller, &form).await
    };
    answer.await.unwrap_or_else(OAuthError::into_response)
}

/// What the exchange asks for, whatever the subject token is.
#[derive(Debug)]
struct Asked {
    next_hop: Party,
    scopes: Option<Vec<String>>,
    targets: Vec<String>,
    purpose: String,
    ttl_seconds: Option<u32>,
    max_uses: Option<u32>,
    jwt: bool,
}

async fn exchange<S: TokenStore>(
    state: &HttpState<S>,
    caller: &Caller,
    form: &Form,
) -> Result<Response, OAuthError> {
    let Caller::Known(identity) = caller else {
        return Err(OAuthError::invalid_client(
            "client authentication is required: a client certificate (tls_client_auth), a \
             client assertion (private_key_jwt) or a minter's bearer credential",
        ));
    };
    let grant_type = form.require("grant_type", TOKEN_EXCHANGE)?;
    if grant_type != TOKEN_EXCHANGE {
        return Err(OAuthError::unsupported_grant_type(format!(
            "grant_type: {} is not supported; only {TOKEN_EXCHANGE}",
            Shown(grant_type)
        )));
    }
    let requested = form.require("requested_token_type", TXN_TOKEN_TYPE)?;
    if requested != TXN_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type: {} is not issued; only {TXN_TOKEN_TYPE}",
            Shown(requested)
        )));
    }
    form.refuse(
        "actor_token",
        "not supported: the authenticated caller is the actor",
    )?;
    form.refuse(
        "actor_token_type",
        "not supported: the authenticated caller is the actor",
    )?;
    let subject_token = form.require("subject_token", "the token to exchange")?;
    let subject_type = form.require("subject_token_type", "an RFC 8693 token type URN")?;
    if subject_type == REFRESH_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(
            "subject_token_type: refresh tokens are never accepted as subject tokens",
        ));
    }
    let writ = subject_token.starts_with(TOKEN_PREFIX);
    match (writ, subject_type) {
        (true, TXN_TOKEN_TYPE) => {}
        (true, _) => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type: the subject token is a Writ token, so it must be {TXN_TOKEN_TYPE}"
            )));
        }
        (false, t) if EXTERNAL_TOKEN_TYPES.contains(&t) => {}
        (false, TXN_TOKEN_TYPE) => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type: {TXN_TOKEN_TYPE} but the subject token is no Writ token"
            )));
        }
        (false, t) => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type: {} is not accepted; use one of {}",
                Shown(t),
                EXTERNAL_TOKEN_TYPES.join(", ")
            )));
        }
    }
    let asked = asked(state, form)?;
    // The JWT is answered to the caller, for the next hop: both must be parties the policy
    // lets hold one (never an agent: an agent holds only what Writ can revoke at once).
    for (who, id) in [
        ("the caller", identity.actor.id.as_str()),
        ("the audience", asked.next_hop.id.as_str()),
    ] {
        if asked.jwt && !state.service.may_receive_jwt(id) {
            return Err(OAuthError::invalid_request(format!(
                "{TXN_TOKEN_JWT}: {who} {} may not receive Txn-Token JWTs (the policy's \
                 txn_token_jwt); ask for the opaque token",
                Shown(id)
            )));
        }
    }
    let jwt = asked.jwt;
    let (secret, record) = if writ {
        downscope(state, caller, form, asked, subject_token).await?
    } else {
        mint(state, caller, form, asked, subject_token, subject_type).await?
    };
    answer(state, &identity.actor.id, &secret, &record, jwt)
}

/// The parameters both paths share.
fn asked<S: TokenStore>(state: &HttpState<S>, form: &Form) -> Result<Asked, OAuthError> {
    let next_hop = next_hop(
        form.get("audience"),
        form.get("resource"),
        &state.trust_domain,
    )?;
    let next_hop = state.service.party(next_hop).ok_or_else(|| {
        OAuthError::invalid_target(format!(
            "audience: {} is not a party of this trust domain",
            Shown(next_hop)
        ))
    })?;
    let scopes = form
        .get("scope")
        .map(|s| {
            let tokens: Vec<String> = s.split(' ').map(str::to_owned).collect();
            if tokens.iter().any(String::is_empty) {
                return Err(OAuthError::invalid_scope(
                    "scope: malformed: scope-tokens separated by single spaces",
                ));
            }
            convert::scopes("scope", tokens.clone())
                .map_err(|e| OAuthError::invalid_scope(e.to_string()))?;
            Ok(tokens)
        })
        .transpose()?;
    Ok(Asked {
        next_hop,
        scopes,
        targets: words(form, "targets"),
        purpose: form.get("purpose").unwrap_or_default().to_owned(),
        ttl_seconds: form.number("ttl_seconds", MAX_TTL_PARAM)?,
        max_uses: form.number("max_uses", u32::MAX)?,
        jwt: form.flag(TXN_TOKEN_JWT)?,
    })
}

/// The space-separated words of `name` (none when absent).
fn words(form: &Form, name: &str) -> Vec<String> {
    form.get(name)
        .map(|v| {
            v.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The next hop's party id: `audience`, unless it names the trust domain (or is absent),
/// then `resource`. See the module docs.
pub fn next_hop<'a>(
    audience: Option<&'a str>,
    resource: Option<&'a str>,
    trust_domain: &str,
) -> Result<&'a str, OAuthError> {
    let names_trust_domain = |a: &str| {
        a == trust_domain
            || a.strip_prefix("spiffe://")
                .is_some_and(|td| td == trust_domain)
    };
    match (audience, resource) {
        (Some(a), None) if !names_trust_domain(a) => Ok(a),
        (Some(a), Some(r)) if !names_trust_domain(a) => {
            if a == r {
                Ok(a)
            } else {
                Err(OAuthError::invalid_target(format!(
                    "resource: {} names another next hop than audience {}",
                    Shown(r),
                    Shown(a)
                )))
            }
        }
        (_, Some(r)) => Ok(r),
        (Some(_), None) => Err(OAuthError::invalid_request(
            "resource: required when audience names the trust domain: the next hop's party id",
        )),
        (None, None) => Err(OAuthError::invalid_request(
            "audience: required: the next hop's party id (or the trust domain, with the next \
             hop in resource)",
        )),
    }
}

/// A Writ subject token: a Downscope by the caller, its holder.
async fn downscope<S: TokenStore>(
    state: &HttpState<S>,
    caller: &Caller,
    form: &Form,
    asked: Asked,
    subject_token: &str,
) -> Result<(TokenSecret, TokenRecord), OAuthError> {
    let jwt = asked.jwt;
    form.refuse(
        "request_details",
        "the transaction context (tctx) is immutable along the chain; omit it when the \
         subject token is a Writ token",
    )?;
    form.refuse(
        "request_context",
        "the request context (rctx) can only shrink along the chain; name the entries not \
         to pass on in drop_request_context",
    )?;
    let scopes = asked.scopes.ok_or_else(|| {
        OAuthError::invalid_request(
            "scope: required when the subject token is a Writ token: the scopes the new \
             token keeps (space-separated)",
        )
    })?;
    let request = pb::DownscopeRequest {
        parent_token: subject_token.to_owned(),
        audience: Some(convert::party_pb(&asked.next_hop)),
        targets: asked.targets,
        scopes,
        claims: HashMap::new(),
        ttl_seconds: asked.ttl_seconds.unwrap_or(0),
        max_uses: asked.max_uses.unwrap_or(0),
        purpose: asked.purpose,
        require_action_check: false,
        drop_rctx: words(form, "drop_request_context"),
        idempotency_key: String::new(),
    };
    let d = convert::downscope_request(request).map_err(ServiceError::from)?;
    Ok(state
        .service
        .downscope_checked(caller, &d.parent_token, d.child, None, &jwt_check(jwt))
        .await?)
}

/// An external subject token: a Mint by the caller, a minter, for the token's user.
async fn mint<S: TokenStore>(
    state: &HttpState<S>,
    caller: &Caller,
    form: &Form,
    asked: Asked,
    subject_token: &str,
    subject_type: &str,
) -> Result<(TokenSecret, TokenRecord), OAuthError> {
    let jwt = asked.jwt;
    // Before the subject token is looked at: a caller that may not mint learns nothing
    // about it. (The service checks the role again.)
    caller.require(
        &[Role::Minter],
        "exchanging an external subject token mints a transaction: a minter's identity",
    )?;
    form.refuse(
        "drop_request_context",
        "only a Writ subject token's request context can be narrowed",
    )?;
    let tctx = context(form, "request_details")?;
    let rctx = context(form, "request_context")?;
    let now = service::now_secs();
    let subject = state
        .subjects
        .verify(subject_token, subject_type, now)
        .await?;
    let request = external_mint(asked, subject, tctx, rctx, state.default_ttl_secs, now)?;
    Ok(state
        .service
        .mint_checked(caller, request, None, &jwt_check(jwt))
        .await?)
}

/// The context entries taken from an external subject token (`ExternalSubject::context`),
/// recorded in `tctx`; a caller may not set them itself.
pub const SUBJECT_CONTEXT: [&str; 4] = ["subject_issuer", "authn", "acr", "auth_time"];

/// The Mint a verified external subject token asks for at `now` (Unix seconds): for the
/// token's user, with the requested scopes if the token grants them all (else
/// `invalid_scope`) or all of the token's, `tctx` from `request_details`, `rctx` from
/// `request_context`, and what the token says (issuer, authentication) added to `tctx`
/// under names the caller may not use ([`SUBJECT_CONTEXT`]), living `ttl_seconds` or `default_ttl_secs`, never beyond the token's `exp`.
fn external_mint(
    asked: Asked,
    subject: ExternalSubject,
    mut tctx: HashMap<String, String>,
    rctx: HashMap<String, String>,
    default_ttl_secs: u64,
    now: u64,
) -> Result<MintRequest, OAuthError> {
    let remaining = subject.expires_at.saturating_sub(now);
    if remaining == 0 {
        return Err(OAuthError::invalid_request("subject_token: expired"));
    }
    convert::id("subject_token: sub", &subject.subject)
        .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
    let scopes: Vec<String> = match asked.scopes {
        Some(requested) => {
            if let Some(s) = requested.iter().find(|s| !subject.scopes.contains(*s)) {
                return Err(OAuthError::invalid_scope(format!(
                    "scope: {} is not granted by the subject token",
                    Shown(s)
                )));
            }
            requested
        }
        None => {
            let all: Vec<String> = subject.scopes.iter().cloned().collect();
            convert::scopes("subject_token: scope", all.clone())
                .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
            all
        }
    };
    if scopes.is_empty() {
        return Err(OAuthError::invalid_request(
            "subject_token: the token grants no scope",
        ));
    }
    // What the subject token says (its issuer, how the user authenticated) goes into
    // `tctx`, which no later hop can change or drop; the caller may not supply these
    // names in either context, so nothing the caller wrote reads as the issuer's word.
    for name in SUBJECT_CONTEXT {
        for (param, map) in [("request_details", &tctx), ("request_context", &rctx)] {
            if map.contains_key(name) {
                return Err(OAuthError::invalid_request(format!(
                    "{param}[{}]: set only from the subject token; leave it out",
                    Shown(name)
                )));
            }
        }
    }
    for (k, v) in subject.context {
        tctx.insert(k, v);
    }
    let ttl = asked
        .ttl_seconds
        .map_or(default_ttl_secs, u64::from)
        .min(remaining);
    let request = pb::MintRequest {
        subject: subject.subject,
        audience: Some(convert::party_pb(&asked.next_hop)),
        targets: asked.targets,
        scopes,
        claims: HashMap::new(),
        purpose: asked.purpose,
        tctx,
        rctx,
        ttl_seconds: u32::try_from(ttl).unwrap_or(u32::MAX),
        max_uses: asked.max_uses.unwrap_or(0),
        require_action_check: false,
        idempotency_key: String::new(),
    };
    let (request, _) = convert::mint_request(request).map_err(ServiceError::from)?;
    Ok(request)
}

/// `name` as a context map: a JSON object of string values, each key once, at most
/// [`MAX_CONTEXT_BYTES`] long, then validated as gRPC's `tctx`/`rctx`.
fn context(form: &Form, name: &str) -> Result<HashMap<String, String>, OAuthError> {
    let Some(raw) = form.get(name) else {
        return Ok(HashMap::new());
    };
    if raw.len() > MAX_CONTEXT_BYTES {
        return Err(OAuthError::invalid_request(format!(
            "{name}: is {} bytes; the limit is {MAX_CONTEXT_BYTES}",
            raw.len()
        )));
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let pairs = de
        .deserialize_map(StrictObject)
        .and_then(|pairs| de.end().map(|()| pairs))
        .map_err(|e| {
            OAuthError::invalid_request(format!(
                "{name}: must be a JSON object of strings, each key once: {e}"
            ))
        })?;
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.len() == MAX_CONTEXT_ENTRIES {
            return Err(OAuthError::invalid_request(format!(
                "{name}: has more than {MAX_CONTEXT_ENTRIES} entries"
            )));
        }
        map.insert(k, v);
    }
    convert::context(name, map.clone()).map_err(ServiceError::from)?;
    Ok(map)
}

/// A JSON object's entries, refusing anything but string values and any key twice.
struct StrictObject;

impl<'de> Visitor<'de> for StrictObject {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, String)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, String>()? {
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(serde::de::Error::custom(format_args!(
                    "key {} appears twice",
                    Shown(&k)
                )));
            }
            // Bounded: the raw text is at most MAX_CONTEXT_BYTES.
            out.push((k, v));
        }
        Ok(out)
    }
}

/// With a JWT answer, a token no JWT may stand for (use-limited, action checks only) is
/// refused before it is stored, so nothing is issued that nobody holds.
fn jwt_check(jwt: bool) -> impl Fn(&TokenRecord) -> Result<(), ServiceError> + Sync {
    move |record| match crate::signing::jwt_refusal(&record.grant) {
        Some(why) if jwt => Err(ServiceError::Signing(
            crate::signing::SigningError::Refused(why.to_owned()),
        )),
        _ => Ok(()),
    }
}

/// The RFC 8693 answer: the opaque token (or a Txn-Token JWT standing for it).
fn answer<S: TokenStore>(
    state: &HttpState<S>,
    requester: &str,
    secret: &TokenSecret,
    record: &TokenRecord,
    jwt: bool,
) -> Result<Response, OAuthError> {
    let now_ms = service::now().0;
    let (access_token, expires_in) = if jwt {
        let now = now_ms / 1000;
        let (jwt, exp) = state
            .signer
            .txn_token(record, requester, now)
            .map_err(|e| OAuthError::server_error(&e))?;
        (jwt, exp.saturating_sub(now))
    } else {
        (
            secret.expose().to_owned(),
            record.grant.expires_at.0.saturating_sub(now_ms) / 1000,
        )
    };
    let scope: Vec<&str> = record.grant.scopes.iter().map(String::as_str).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": access_token,
            "issued_token_type": TXN_TOKEN_TYPE,
            "token_type": "N_A",
            "expires_in": expires_in,
            "scope": scope.join(" "),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "writ.local";
    const PLANNER: &str = "spiffe://writ.local/agent/planner";

    #[test]
    fn the_next_hop_is_the_audience_unless_it_names_the_trust_domain() {
        assert_eq!(next_hop(Some(PLANNER), None, TD).unwrap(), PLANNER);
        assert_eq!(next_hop(Some(PLANNER), Some(PLANNER), TD).unwrap(), PLANNER);
        for td in [TD, "spiffe://writ.local"] {
            assert_eq!(next_hop(Some(td), Some(PLANNER), TD).unwrap(), PLANNER);
            let e = next_hop(Some(td), None, TD).unwrap_err();
            assert_eq!(e.error, "invalid_request");
            assert!(e.description.starts_with("resource: required"), "{e:?}");
        }
        assert_eq!(next_hop(None, Some(PLANNER), TD).unwrap(), PLANNER);
        let e = next_hop(None, None, TD).unwrap_err();
        assert!(e.description.starts_with("audience: required"), "{e:?}");
        let e = next_hop(Some(PLANNER), Some("spiffe://writ.local/agent/x"), TD).unwrap_err();
        assert_eq!(e.error, "invalid_target");
        // Another trust domain is a party id like any other (the registry refuses it).
        assert_eq!(
            next_hop(Some("spiffe://other.example"), None, TD).unwrap(),
            "spiffe://other.example"
        );
        assert_eq!(
            next_hop(Some("writ.local.evil"), None, TD).unwrap(),
            "writ.local.evil"
        );
    }

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn contexts_are_json_objects_of_strings_bounded_and_validated() {
        let f = form("c=%7B%22req_ip%22%3A%22203.0.113.7%22%2C%22authn%22%3A%22mfa%22%7D");
        let c = context(&f, "c").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c["req_ip"], "203.0.113.7");
        assert!(context(&form(""), "c").unwrap().is_empty());
        for (bad, needle) in [
            ("[1]", "JSON object"),
            ("{\"a\":1}", "JSON object"),
            ("{\"a\":\"x\",\"a\":\"y\"}", "twice"),
            ("{\"a\":\"x\"} trailing", "JSON object"),
            ("{\"bad key\":\"x\"}", "c["),
            ("not json", "JSON object"),
        ] {
            let body = format!("c={}", form_urlencoded_encode(bad));
            let e = context(&form(&body), "c").unwrap_err();
            assert_eq!(e.error, "invalid_request");
            assert!(e.description.starts_with("c"), "{bad}: {e:?}");
            assert!(e.description.contains(needle), "{bad}: {e:?}");
        }
        let many: Vec<String> = (0..=MAX_CONTEXT_ENTRIES)
            .map(|i| format!("\"k{i}\":\"v\""))
            .collect();
        let body = format!(
            "c={}",
            form_urlencoded_encode(&format!("{{{}}}", many.join(",")))
        );
        let e = context(&form(&body), "c").unwrap_err();
        assert!(e.description.contains("entries"), "{e:?}");
        let huge = format!("{{\"k\":\"{}\"}}", "x".repeat(MAX_CONTEXT_BYTES));
        let body = format!("c={}", form_urlencoded_encode(&huge));
        let e = context(&form(&body), "c").unwrap_err();
        assert!(e.description.contains("bytes"), "{e:?}");
    }

    fn asked(scopes: Option<&[&str]>, ttl: Option<u32>) -> Asked {
        Asked {
            next_hop: Party {
                id: PLANNER.into(),
                kind: writ_core::ActorKind::Agent,
                client_type: writ_core::ClientType::Confidential,
            },
            scopes: scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
            targets: vec!["spiffe://writ.local/workload/payments".into()],
            purpose: "book a trip".into(),
            ttl_seconds: ttl,
            max_uses: None,
            jwt: false,
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn alice(scopes: &[&str], expires_in: u64) -> ExternalSubject {
        ExternalSubject {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: NOW + expires_in,
            context: [("authn".to_string(), "mfa".to_string())].into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The Mint an external subject token asks for: the token's user, never more scope
    /// than the token's, never longer than its life.
    #[test]
    fn an_external_subject_mints_within_its_token() {
        let both = ["trips:book", "payments:charge"];
        // No scope asked: all of the token's; the default lifetime when it fits.
        let m = external_mint(
            asked(None, None),
            alice(&both, 3600),
            map(&[("trip", "lisbon")]),
            map(&[("req_ip", "203.0.113.7")]),
            300,
            NOW,
        )
        .unwrap();
        assert_eq!(m.subject, "alice");
        assert_eq!(m.audience.id, PLANNER);
        assert_eq!(m.scopes.len(), 2);
        assert_eq!(m.ttl_secs, Some(300));
        assert_eq!(m.tctx["trip"], "lisbon");
        assert_eq!(m.rctx["req_ip"], "203.0.113.7");
        assert_eq!(
            m.tctx["authn"], "mfa",
            "what the token says, where no hop drops it"
        );
        assert!(!m.rctx.contains_key("authn"));
        assert_eq!(m.purpose, "book a trip");
        assert_eq!(m.targets.len(), 1);
        // A subset asked: that subset.
        let m = external_mint(
            asked(Some(&["trips:book"]), None),
            alice(&both, 3600),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap();
        assert_eq!(m.scopes, ["trips:book".to_string()].into());
        // More than the token grants: invalid_scope, naming the scope.
        let e = external_mint(
            asked(Some(&["trips:book", "admin:all"]), None),
            alice(&both, 3600),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.error, "invalid_scope");
        assert!(e.description.contains("admin:all"), "{e:?}");
        // Never beyond the token's exp, asked for or by default.
        for ttl in [None, Some(600)] {
            let m = external_mint(
                asked(None, ttl),
                alice(&both, 42),
                map(&[]),
                map(&[]),
                300,
                NOW,
            )
            .unwrap();
            assert_eq!(m.ttl_secs, Some(42));
        }
        let m = external_mint(
            asked(None, Some(60)),
            alice(&both, 3600),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap();
        assert_eq!(m.ttl_secs, Some(60));
        // Expired (or expiring this second): invalid_request.
        let e = external_mint(
            asked(None, None),
            alice(&both, 0),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.error, "invalid_request");
        // A token granting nothing, or a user id Writ cannot carry: invalid_request.
        let e = external_mint(
            asked(None, None),
            alice(&[], 3600),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.error, "invalid_request");
        let mut odd = alice(&both, 3600);
        odd.subject = "alice smith".into();
        let e = external_mint(asked(None, None), odd, map(&[]), map(&[]), 300, NOW).unwrap_err();
        assert_eq!(e.error, "invalid_request");
        assert!(e.description.contains("sub"), "{e:?}");
        // The caller never writes what reads as the issuer's word, in either context,
        // even where the token says nothing of it.
        for (details, context, param) in [
            (
                map(&[]),
                map(&[("authn", "mfa")]),
                "request_context['authn']",
            ),
            (
                map(&[("subject_issuer", "x")]),
                map(&[]),
                "request_details['subject_issuer']",
            ),
            (map(&[("acr", "gold")]), map(&[]), "request_details['acr']"),
        ] {
            let e = external_mint(
                asked(None, None),
                alice(&both, 3600),
                details,
                context,
                300,
                NOW,
            )
            .unwrap_err();
            assert_eq!(e.error, "invalid_request");
            assert!(e.description.starts_with(param), "{e:?}");
        }
        // The token's scopes are validated as any request's: one Writ cannot carry makes
        // the token unusable here.
        let e = external_mint(
            asked(None, None),
            alice(&["bad scope\\"], 3600),
            map(&[]),
            map(&[]),
            300,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.error, "invalid_request");
    }

    fn form_urlencoded_encode(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }
}
