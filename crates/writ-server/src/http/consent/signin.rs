//! Optional sign-in on the consent page at the trust domain's OpenID Provider
//! (`[consent.sign_in]`): OpenID Connect's authorization code flow with PKCE (RFC 7636,
//! S256), `state` and `nonce`, so that a decision is bound to the user the ID token names
//! rather than to whoever holds the link.
//!
//! - The page, without a valid sign-in for its link, answers 303 to the provider's
//!   authorization endpoint. The link never leaves Writ: `(link, code verifier, nonce)`
//!   wait in a bounded in-memory map ([`MAX_PENDING`] entries, [`PENDING_TTL`]) under a
//!   random `state`, bound to the browser by a `__Host-` cookie ([`STATE_COOKIE`]) whose
//!   hash the entry keeps.
//! - `GET /consent/callback` takes the entry (once), checks the cookie, exchanges the code
//!   at the token endpoint (`client_secret_basic` when a secret is configured, else a
//!   public client), and verifies the ID token: its signature with the provider's JWKS
//!   through [`SubjectVerifier`] (the same key handling as external subject tokens),
//!   then `aud` (= `client_id`, `azp` when several), `exp`, `iat`, `nonce` and `sub`.
//! - It then sets [`SIGNED_IN_COOKIE`]: issuer, `sub`, the link's hash and an expiry,
//!   MAC'd under a key derived from the server key; it vouches for this link only.
//!
//! Both cookies are `SameSite=Lax`: the provider's redirect back is a cross-site
//! navigation, on which `Strict` cookies are not sent. The form itself is protected by the
//! `Strict` CSRF cookie ([`super::csrf`]).

use super::SignInConfig;
use super::csrf::{cookie, decode32};
use crate::service::consent::SignedIn;
use crate::subject::{IssuerConfig, SubjectError, SubjectTokensConfig, SubjectVerifier};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use writ_core::text::Shown;

/// The cookie binding a sign-in in progress to the browser that started it.
pub const STATE_COOKIE: &str = "__Host-writ-signin-state";
/// The cookie saying who signed in, for which link.
pub const SIGNED_IN_COOKIE: &str = "__Host-writ-signin";
/// The MAC context of [`SIGNED_IN_COOKIE`].
pub const SIGNED_IN_CONTEXT: &str = "writ consent sign-in v1";
/// The callback's path on Writ's HTTP listener (the redirect URI is the issuer's).
pub const CALLBACK_PATH: &str = "/consent/callback";
/// Most sign-ins in progress at once; beyond it new ones are refused until some end.
pub const MAX_PENDING: usize = 4096;
/// How long a user has to sign in at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// How long a sign-in vouches for its link, in seconds.
pub const SIGNED_IN_SECS: u64 = 600;
/// Largest token endpoint answer read, in bytes.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// How long the token endpoint may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock skew allowed on the ID token's `iat`, in seconds.
const LEEWAY_SECS: u64 = 60;
/// Longest client secret read from its file.
const MAX_SECRET_BYTES: u64 = 1024;
/// Longest error code shown from the provider.
const MAX_PROVIDER_ERROR: usize = 128;

/// A sign-in that could not be started or finished; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// Too many sign-ins in progress.
    #[error("too many sign-ins are in progress; try again in a minute")]
    Busy,
    /// The callback's `state` is unknown, used or expired.
    #[error(
        "this sign-in is unknown, already finished or took too long; open the consent link again"
    )]
    UnknownState,
    /// The callback did not come back to the browser that started the sign-in.
    #[error("this sign-in was started in another browser; open the consent link again here")]
    OtherBrowser,
    /// The callback is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The provider answered an error (the user declined, ...).
    #[error("the sign-in was not completed: the provider answered {0}")]
    Provider(String),
    /// The token endpoint could not be used.
    #[error("the provider's token endpoint failed: {0}")]
    Exchange(String),
    /// The ID token does not verify.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    /// The provider's keys cannot be had right now.
    #[error("the provider's keys are unavailable: {0}")]
    Unavailable(String),
}

/// A sign-in in progress (no `Debug`: it holds the consent link).
struct Started {
    link: String,
    verifier: String,
    nonce: String,
    /// blake3 of the browser's [`STATE_COOKIE`].
    browser: [u8; 32],
    until: Instant,
}

/// The configured OpenID Provider and the sign-ins in progress. `Debug` shows neither
/// the client secret nor the sign-ins (they hold consent links).
pub struct SignIn {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    authorization: reqwest::Url,
    token_endpoint: reqwest::Url,
    redirect_uri: String,
    client: reqwest::Client,
    keys: Arc<SubjectVerifier>,
    pending: Mutex<HashMap<String, Started>>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

/// Where to send the browser to sign in, and the cookie binding it.
#[derive(Debug)]
pub struct Redirect {
    /// The authorization request URL.
    pub location: String,
    /// The `Set-Cookie` value of [`STATE_COOKIE`].
    pub set_cookie: String,
}

impl SignIn {
    /// The provider `config` names, for Writ at `writ_issuer` (its redirect URI is
    /// `{writ_issuer}/consent/callback`). Errors name the setting.
    pub fn new(config: &SignInConfig, writ_issuer: &str) -> Result<SignIn, String> {
        let bad = |m: String| format!("consent.sign_in: {m}");
        if config.issuer.is_empty() || config.issuer.len() > 256 {
            return Err(bad("issuer must be 1 to 256 bytes".into()));
        }
        if config.client_id.is_empty()
            || config.client_id.len() > 256
            || !config.client_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad(
                "client_id must be 1 to 256 printable ASCII characters".into()
            ));
        }
        let (authorization, _) =
            endpoint("authorization_endpoint", &config.authorization_endpoint).map_err(bad)?;
        let (token_endpoint, loopback) =
            endpoint("token_endpoint", &config.token_endpoint).map_err(bad)?;
        let client_secret = match &config.client_secret_file {
            None => None,
            Some(path) => Some(read_secret(path).map_err(bad)?),
        };
        let mut issuer = IssuerConfig::new(config.issuer.clone(), vec![config.client_id.clone()]);
        issuer.jwks_uri = config.jwks_uri.clone();
        issuer.jwks_file = config.jwks_file.clone();
        let keys = SubjectVerifier::new(&SubjectTokensConfig {
            issuers: vec![issuer],
        })
        .map_err(|e| bad(e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(EXCHANGE_TIMEOUT)
            .connect_timeout(EXCHANGE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!loopback)
            .user_agent(concat!("writ/", env!("CARGO_PKG_VERSION")));
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| bad(format!("no HTTP client: {e}")))?;
        Ok(SignIn {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            authorization,
            token_endpoint,
            redirect_uri: format!("{}{CALLBACK_PATH}", writ_issuer.trim_end_matches('/')),
            client,
            keys,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a sign-in for `link`: where to send the browser (with `login_hint` the
    /// request's subject) and the cookie that binds the sign-in to it.
    pub fn start(&self, link: &str, login_hint: &str) -> Result<Redirect, SignInError> {
        let state = random_text();
        let verifier = random_text();
        let nonce = random_text();
        let (browser, cookie_text) = super::csrf::new_cookie();
        let now = Instant::now();
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= MAX_PENDING {
                pending.retain(|_, s| s.until > now);
            }
            if pending.len() >= MAX_PENDING {
                return Err(SignInError::Busy);
            }
            pending.insert(
                state.clone(),
                Started {
                    link: link.to_owned(),
                    verifier: verifier.clone(),
                    nonce: nonce.clone(),
                    browser: *blake3::hash(&browser).as_bytes(),
                    until: now + PENDING_TTL,
                },
            );
        }
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let mut url = self.authorization.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", login_hint);
        Ok(Redirect {
            location: url.into(),
            set_cookie: super::csrf::set_cookie(
                STATE_COOKIE,
                &cookie_text,
                "Lax",
                Some(PENDING_TTL.as_secs()),
            ),
        })
    }

    /// Finishes the sign-in the callback's `query` names, in the browser that sent
    /// `headers`: the link it was for and who signed in.
    pub async fn finish(
        &self,
        query: &super::super::form::Form,
        headers: &axum::http::HeaderMap,
        now_secs: u64,
    ) -> Result<(String, SignedIn), SignInError> {
        let state = query
            .get("state")
            .ok_or_else(|| SignInError::Malformed("state: required".into()))?;
        let started = {
            let mut pending = lock(&self.pending);
            pending.remove(state).ok_or(SignInError::UnknownState)?
        };
        if started.until <= Instant::now() {
            return Err(SignInError::UnknownState);
        }
        let bound = cookie(headers, STATE_COOKIE)
            .and_then(decode32)
            .is_some_and(|c| {
                writ_core::token::ct_eq_32(blake3::hash(&c).as_bytes(), &started.browser)
            });
        if !bound {
            return Err(SignInError::OtherBrowser);
        }
        if let Some(error) = query.get("error") {
            return Err(SignInError::Provider(writ_core::text::truncate(
                Shown(error).to_string(),
                MAX_PROVIDER_ERROR,
            )));
        }
        let code = query
            .get("code")
            .ok_or_else(|| SignInError::Malformed("code: required".into()))?;
        let id_token = self.exchange(code, &started.verifier).await?;
        let subject = self
            .check_id_token(&id_token, &started.nonce, now_secs)
            .await?;
        Ok((
            started.link,
            SignedIn {
                issuer: self.issuer.clone(),
                subject,
            },
        ))
    }

    /// The authorization code for the ID token, at the token endpoint.
    async fn exchange(&self, code: &str, verifier: &str) -> Result<String, SignInError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let mut request = self.client.post(self.token_endpoint.clone());
        match &self.client_secret {
            // RFC 6749 §2.3.1: both form-urlencoded, then Basic.
            Some(secret) => {
                let pair = format!("{}:{}", form_encode(&self.client_id), form_encode(secret));
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(pair)),
                );
            }
            None => form.push(("client_id", self.client_id.as_str())),
        }
        let fail = |m: String| SignInError::Exchange(writ_core::text::truncate(m, 512));
        let mut response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| fail(format!("cannot reach it: {e}")))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(format!("reading its answer: {e}")))?
        {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(fail(format!(
                    "its answer is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| fail(format!("it answered HTTP {status} without JSON")))?;
        if !status.is_success() {
            let error = json.get("error").and_then(Value::as_str).unwrap_or("?");
            return Err(fail(format!(
                "it answered HTTP {status}: {}",
                Shown(&writ_core::text::truncate(
                    error.to_owned(),
                    MAX_PROVIDER_ERROR
                ))
            )));
        }
        json.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail("its answer has no id_token".into()))
    }

    /// The ID token's `sub`, after its signature (with the provider's JWKS) and claims.
    async fn check_id_token(
        &self,
        token: &str,
        nonce: &str,
        now: u64,
    ) -> Result<String, SignInError> {
        let (_, claims) = self
            .keys
            .verify_id_token_signature(token, now)
            .await
            .map_err(|e| match e {
                SubjectError::Unavailable(m) => SignInError::Unavailable(m),
                SubjectError::Invalid(m) => SignInError::IdToken(m),
                other => SignInError::IdToken(other.to_string()),
            })?;
        check_claims(&claims, &self.client_id, nonce, now).map_err(SignInError::IdToken)
    }

    /// Who signed in for `link`, from a valid [`SIGNED_IN_COOKIE`] in `headers`
    /// (`mac`: the server's MAC under [`SIGNED_IN_CONTEXT`]).
    pub fn signed_in(
        &self,
        headers: &axum::http::HeaderMap,
        link: &str,
        mac: impl Fn(&[u8]) -> [u8; 32],
        now_secs: u64,
    ) -> Option<SignedIn> {
        let raw = URL_SAFE_NO_PAD
            .decode(cookie(headers, SIGNED_IN_COOKIE)?)
            .ok()?;
        let (body, tag) = raw.split_at_checked(raw.len().checked_sub(32)?)?;
        let tag: [u8; 32] = tag.try_into().ok()?;
        if !writ_core::token::ct_eq_32(&mac(body), &tag) {
            return None;
        }
        let cookie = SignedInCookie::decode(body)?;
        let for_link =
            writ_core::token::ct_eq_32(&cookie.link_hash, blake3::hash(link.as_bytes()).as_bytes());
        (for_link && cookie.until > now_secs && cookie.issuer == self.issuer).then_some(SignedIn {
            issuer: cookie.issuer,
            subject: cookie.subject,
        })
    }

    /// The `Set-Cookie` value saying `who` signed in for `link` until `now + SIGNED_IN_SECS`.
    pub fn signed_in_cookie(
        who: &SignedIn,
        link: &str,
        mac: impl Fn(&[u8]) -> [u8; 32],
        now_secs: u64,
    ) -> String {
        let body = SignedInCookie {
            until: now_secs + SIGNED_IN_SECS,
            link_hash: *blake3::hash(link.as_bytes()).as_bytes(),
            issuer: who.issuer.clone(),
            subject: who.subject.clone(),
        }
        .encode();
        let mut value = body.clone();
        value.extend_from_slice(&mac(&body));
        super::csrf::set_cookie(
            SIGNED_IN_COOKIE,
            &URL_SAFE_NO_PAD.encode(value),
            "Lax",
            Some(SIGNED_IN_SECS),
        )
    }

    /// How many sign-ins are in progress (tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// What [`SIGNED_IN_COOKIE`] says (before its MAC): version 1 ‖ until (u64) ‖ link hash
/// (32) ‖ issuer (u16 length ‖ bytes) ‖ subject (u16 length ‖ bytes).
#[derive(Debug, PartialEq, Eq)]
struct SignedInCookie {
    until: u64,
    link_hash: [u8; 32],
    issuer: String,
    subject: String,
}

impl SignedInCookie {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend_from_slice(&self.until.to_be_bytes());
        out.extend_from_slice(&self.link_hash);
        for s in [&self.issuer, &self.subject] {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<SignedInCookie> {
        let (&version, rest) = b.split_first()?;
        if version != 1 {
            return None;
        }
        let (until, rest) = rest.split_at_checked(8)?;
        let (link_hash, mut rest) = rest.split_at_checked(32)?;
        let mut text = || {
            let (len, tail) = rest.split_at_checked(2)?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            let (s, tail) = tail.split_at_checked(len)?;
            rest = tail;
            String::from_utf8(s.to_vec()).ok()
        };
        let issuer = text()?;
        let subject = text()?;
        if !rest.is_empty() {
            return None;
        }
        Some(SignedInCookie {
            until: u64::from_be_bytes(until.try_into().ok()?),
            link_hash: link_hash.try_into().ok()?,
            issuer,
            subject,
        })
    }
}

/// OpenID Connect Core §3.1.3.7 on a signature-checked ID token: `aud` names
/// `client_id` (and `azp` is it when present, required with several audiences), `exp`
/// is in the future, `iat` not, `nonce` is the one sent; answers `sub`.
fn check_claims(
    claims: &serde_json::Map<String, Value>,
    client_id: &str,
    nonce: &str,
    now: u64,
) -> Result<String, String> {
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) if a.len() <= 64 => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err("`aud` is missing or not a string or an array of strings".into()),
    };
    if !audiences.contains(&client_id) {
        return Err(format!(
            "`aud` does not name this client ({})",
            Shown(client_id)
        ));
    }
    match claims.get("azp") {
        None if audiences.len() > 1 => {
            return Err("`azp` is required when `aud` names several clients".into());
        }
        None => {}
        Some(Value::String(azp)) if azp == client_id => {}
        Some(_) => return Err(format!("`azp` is not this client ({})", Shown(client_id))),
    }
    let date = |name: &str| claims.get(name).and_then(Value::as_f64);
    match date("exp") {
        Some(exp) if exp > now as f64 => {}
        Some(_) => return Err("`exp` has passed: the ID token has expired".into()),
        None => return Err("`exp` is required".into()),
    }
    if date("iat").is_some_and(|iat| iat > (now + LEEWAY_SECS) as f64) {
        return Err("`iat` is in the future: check the provider's clock".into());
    }
    let sent = claims.get("nonce").and_then(Value::as_str);
    if sent != Some(nonce) {
        return Err("`nonce` is not the one this sign-in sent".into());
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("`sub` is required")?;
    writ_api::convert::id("sub", sub).map_err(|e| e.to_string())
}

/// An endpoint URL: `https`, or `http` to a loopback host; no credentials or fragment.
/// Answers the URL and whether it is plain loopback HTTP.
fn endpoint(name: &str, uri: &str) -> Result<(reqwest::Url, bool), String> {
    let bad = |m: &str| Err(format!("{name} {}: {m}", Shown(uri)));
    let Ok(url) = reqwest::Url::parse(uri) else {
        return bad("not a URL");
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return bad("must carry no credentials and no fragment");
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok((url, false)),
        "http" if loopback => Ok((url, true)),
        _ => bad("must be an https URL (plain http only to a loopback host)"),
    }
}

/// The client secret from its file: trimmed, 1 to 1024 bytes.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("client_secret_file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() || secret.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "client_secret_file {}: must hold 1 to {MAX_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    Ok(secret.to_owned())
}

/// 256 random bits as base64url (43 characters: also a valid PKCE verifier).
fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `s` form-urlencoded (RFC 6749 Appendix B).
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> SignInConfig {
        SignInConfig {
            issuer: "https://op.example".into(),
            authorization_endpoint: "https://op.example/authorize?tenant=t".into(),
            token_endpoint: "http://127.0.0.1:9/token".into(),
            jwks_uri: Some("http://127.0.0.1:9/jwks".into()),
            jwks_file: None,
            client_id: "writ".into(),
            client_secret_file: None,
        }
    }

    fn mac(input: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&[9; 32], input).as_bytes()
    }

    fn headers(cookie: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_str(cookie).unwrap(),
        );
        h
    }

    /// The `name=value` of a `Set-Cookie` value.
    fn pair(set_cookie: &str) -> &str {
        set_cookie.split(';').next().unwrap()
    }

    #[test]
    fn the_authorization_request_carries_pkce_state_and_nonce_but_never_the_link() {
        let s = SignIn::new(&config(), "https://writ.example").unwrap();
        let link = "L".repeat(70);
        let r = s.start(&link, "alice").unwrap();
        assert!(!r.location.contains(&link));
        let url = reqwest::Url::parse(&r.location).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "t", "the endpoint's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "writ");
        assert_eq!(q["redirect_uri"], "https://writ.example/consent/callback");
        assert_eq!(q["scope"], "openid");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["login_hint"], "alice");
        assert_eq!(q["state"].len(), 43);
        assert_eq!(q["nonce"].len(), 43);
        // The challenge is the S256 of the verifier kept for this state.
        let pending = lock(&s.pending);
        let started = &pending[&q["state"]];
        assert_eq!(started.link, link);
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            started.verifier.as_bytes(),
        ));
        assert_eq!(q["code_challenge"], challenge);
        assert_eq!(started.nonce, q["nonce"]);
        assert!(r.set_cookie.starts_with(STATE_COOKIE));
        assert!(r.set_cookie.contains("SameSite=Lax"));
        assert!(r.set_cookie.contains("Secure; HttpOnly"));
    }

    #[tokio::test]
    async fn a_callback_needs_its_state_once_in_the_browser_that_started_it() {
        let s = SignIn::new(&config(), "https://writ.example").unwrap();
        let r = s.start("link", "alice").unwrap();
        let url = reqwest::Url::parse(&r.location).unwrap();
        let state: String = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let form = |q: &str| crate::http::form::Form::parse(q.as_bytes()).unwrap();
        // Another browser (no cookie, or another one): refused, and the state is spent.
        let e = s
            .finish(&form(&format!("state={state}&code=c")), &headers("a=b"), 0)
            .await
            .unwrap_err();
        assert_eq!(e, SignInError::OtherBrowser);
        assert_eq!(s.pending(), 0);
        let e = s
            .finish(
                &form(&format!("state={state}&code=c")),
                &headers(pair(&r.set_cookie)),
                0,
            )
            .await
            .unwrap_err();
        assert_eq!(e, SignInError::UnknownState);
        // The provider's error is reported (escaped), the right browser's state spent.
        let r = s.start("link", "alice").unwrap();
        let url = reqwest::Url::parse(&r.location).unwrap();
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let e = s
            .finish(
                &form(&format!("state={state}&error=access_denied")),
                &headers(pair(&r.set_cookie)),
                0,
            )
            .await
            .unwrap_err();
        assert_eq!(e, SignInError::Provider("\"access_denied\"".into()));
        let e = s
            .finish(&form("code=c"), &headers(pair(&r.set_cookie)), 0)
            .await
            .unwrap_err();
        assert!(matches!(e, SignInError::Malformed(m) if m.starts_with("state")));
    }

    #[test]
    fn sign_ins_in_progress_are_bounded() {
        let s = SignIn::new(&config(), "https://writ.example").unwrap();
        for _ in 0..MAX_PENDING {
            s.start("link", "alice").unwrap();
        }
        assert_eq!(s.start("link", "alice").unwrap_err(), SignInError::Busy);
        // Expired ones make room.
        for started in lock(&s.pending).values_mut().take(3) {
            started.until = Instant::now() - Duration::from_secs(1);
        }
        s.start("link", "alice").unwrap();
        assert_eq!(s.pending(), MAX_PENDING - 2);
    }

    #[test]
    fn the_signed_in_cookie_vouches_for_its_link_its_issuer_and_its_time() {
        let s = SignIn::new(&config(), "https://writ.example").unwrap();
        let who = SignedIn {
            issuer: "https://op.example".into(),
            subject: "alice".into(),
        };
        let set = SignIn::signed_in_cookie(&who, "link-a", mac, 1000);
        assert!(set.contains("SameSite=Lax") && set.contains(&format!("Max-Age={SIGNED_IN_SECS}")));
        let h = headers(pair(&set));
        assert_eq!(s.signed_in(&h, "link-a", mac, 1000), Some(who.clone()));
        assert_eq!(s.signed_in(&h, "link-b", mac, 1000), None, "another link");
        assert_eq!(
            s.signed_in(&h, "link-a", mac, 1000 + SIGNED_IN_SECS),
            None,
            "expired"
        );
        let other_key = |i: &[u8]| *blake3::keyed_hash(&[8; 32], i).as_bytes();
        assert_eq!(s.signed_in(&h, "link-a", other_key, 1000), None, "forged");
        // Tampered: another subject under the old MAC.
        let value = pair(&set).split_once('=').unwrap().1;
        let mut raw = URL_SAFE_NO_PAD.decode(value).unwrap();
        let at = raw.len() - 32 - 5;
        raw[at] = b'm';
        let tampered = format!("{SIGNED_IN_COOKIE}={}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(s.signed_in(&headers(&tampered), "link-a", mac, 1000), None);
        // Another issuer's sign-in (the configuration changed).
        let stranger = SignedIn {
            issuer: "https://other.example".into(),
            ..who
        };
        let set = SignIn::signed_in_cookie(&stranger, "link-a", mac, 1000);
        assert_eq!(s.signed_in(&headers(pair(&set)), "link-a", mac, 1000), None);
        assert_eq!(s.signed_in(&headers("x=y"), "link-a", mac, 1000), None);
    }

    #[test]
    fn id_token_claims_follow_openid_connect() {
        let good = json!({"iss": "https://op.example", "aud": "writ", "sub": "alice",
            "exp": 2000, "iat": 1000, "nonce": "n"});
        let check = |c: &Value| check_claims(c.as_object().unwrap(), "writ", "n", 1500);
        assert_eq!(check(&good), Ok("alice".into()));
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        assert_eq!(check(&with("aud", json!(["writ"]))), Ok("alice".into()));
        assert_eq!(
            check(&with("aud", json!(["writ", "x"])).clone()).unwrap_err(),
            "`azp` is required when `aud` names several clients"
        );
        let mut azp = with("aud", json!(["writ", "x"]));
        azp["azp"] = json!("writ");
        assert_eq!(check(&azp), Ok("alice".into()));
        for (bad, needle) in [
            (with("aud", json!("other")), "`aud`"),
            (without("aud"), "`aud`"),
            (with("azp", json!("other")), "`azp`"),
            (with("exp", json!(1500)), "`exp`"),
            (without("exp"), "`exp`"),
            (with("iat", json!(1500 + LEEWAY_SECS + 1)), "`iat`"),
            (with("nonce", json!("m")), "`nonce`"),
            (without("nonce"), "`nonce`"),
            (without("sub"), "`sub`"),
            (with("sub", json!("")), "sub"),
        ] {
            let e = check(&bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn the_configuration_is_checked() {
        let mut c = config();
        c.token_endpoint = "http://op.example/token".into();
        assert!(
            SignIn::new(&c, "https://w")
                .unwrap_err()
                .contains("token_endpoint")
        );
        let mut c = config();
        c.authorization_endpoint = "https://u:p@op.example/a".into();
        assert!(
            SignIn::new(&c, "https://w")
                .unwrap_err()
                .contains("authorization_endpoint")
        );
        let mut c = config();
        c.jwks_uri = None;
        assert!(SignIn::new(&c, "https://w").unwrap_err().contains("jwks"));
        let mut c = config();
        c.client_id = String::new();
        assert!(
            SignIn::new(&c, "https://w")
                .unwrap_err()
                .contains("client_id")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut c = config();
        c.client_secret_file = Some(path.clone());
        let s = SignIn::new(&c, "https://w").unwrap();
        assert_eq!(s.client_secret.as_deref(), Some("s3cret"));
        s.start("the-link", "alice").unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("the-link"),
            "{shown}"
        );
        std::fs::write(&path, "").unwrap();
        assert!(
            SignIn::new(&c, "https://w")
                .unwrap_err()
                .contains("client_secret_file")
        );
    }
}
