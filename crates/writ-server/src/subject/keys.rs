//! An issuer's key set: its JWKS, from a file or a URL, parsed into the keys subject
//! tokens may be verified with, and kept fresh under bounds.
//!
//! Bounds, so that neither a flood of tokens nor a misbehaving issuer can make Writ do
//! unbounded work: a fetch happens on schedule (every `jwks_refresh_seconds`), and
//! otherwise only when a token needs a key the set does not have (or there is no usable
//! set), at most once per `jwks_min_refresh_seconds` per issuer, however many tokens ask
//! (one fetch at a time; the others wait for it and look again). A response is at most
//! [`MAX_JWKS_BYTES`], within `jwks_timeout_seconds`, never redirected. A failed fetch
//! keeps the last good set, for at most `jwks_max_stale_seconds` since it was last
//! fetched; then the issuer's tokens are refused as unavailable. A file is the operator's
//! own copy and never goes stale.
//!
//! Keys are parsed by [`crate::assertion`]'s JWK decoder (public keys only; RSA of 2048
//! to 8192 bits); kept are the keys for RS256, PS256, ES256 or EdDSA, `use` `sig` or
//! none, narrowed by their own `alg` when they declare one. Others (encryption keys,
//! P-384, ...) are skipped with a warning.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use writ_core::text::Shown;

use super::{IssuerConfig, SubjectError};
use crate::assertion::{self, Parts, alg_names, alg_str, lock};

/// Largest JWKS response accepted from a `jwks_uri`, in bytes. (A file is read up to
/// [`assertion::MAX_BUNDLE_BYTES`].)
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How often the refresher re-reads a `jwks_file`, in seconds.
pub(super) const FILE_POLL_SECS: u64 = 5;
/// Most keys in one JWKS.
const MAX_JWKS_KEYS: usize = 64;
/// Most keys tried for a token without a `kid`.
const MAX_KEYS_TRIED: usize = 8;
/// The algorithms subject tokens may be signed with.
const ACCEPTED: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];
/// Longest error text kept and shown from a failed fetch.
const MAX_ERROR_BYTES: usize = 512;

/// One usable key of a set.
#[derive(Debug)]
pub(super) struct SetKey {
    kid: Option<String>,
    /// The accepted algorithms this key verifies (its type's, narrowed by its `alg`).
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// A parsed JWKS.
#[derive(Debug)]
pub(super) struct KeySet {
    keys: Vec<SetKey>,
    /// BLAKE3 of the document it was parsed from.
    digest: [u8; 32],
}

/// The set in use and when its source last confirmed it (Unix seconds).
#[derive(Debug)]
struct Loaded {
    set: Arc<KeySet>,
    confirmed_at: u64,
}

#[derive(Debug)]
enum Origin {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

/// The bookkeeping of attempts to (re)load the set.
#[derive(Debug, Default)]
struct Attempts {
    /// How many attempts were made (each one, success or failure, counts).
    count: u64,
    /// When the last one started (Unix seconds).
    last: Option<u64>,
    /// Why the last one failed, if it did.
    error: Option<String>,
}

/// One issuer's key set and how it is kept fresh.
#[derive(Debug)]
pub(super) struct KeySource {
    issuer: String,
    origin: Origin,
    refresh_secs: u64,
    min_refresh_secs: u64,
    max_stale_secs: u64,
    loaded: ArcSwapOption<Loaded>,
    attempts: Mutex<Attempts>,
    /// Held while the set is (re)loaded: one load at a time per issuer.
    loading: tokio::sync::Mutex<()>,
}

/// What a set says about a token's key.
enum Lookup {
    Verified,
    /// The set has no key for the token (an unknown `kid`): a newer set may.
    Unknown(String),
    /// The set's key refuses the token.
    Refused(String),
}

impl KeySource {
    /// The key source `config` names (exactly one of `jwks_file`, `jwks_uri`), with a
    /// `jwks_file` read and parsed now. Errors say what is wrong, naming the file.
    pub(super) fn new(config: &IssuerConfig) -> Result<KeySource, String> {
        if config.jwks_refresh_seconds == 0 || config.jwks_refresh_seconds > 86_400 {
            return Err("jwks_refresh_seconds is 1 to 86400".into());
        }
        if config.jwks_min_refresh_seconds == 0 || config.jwks_min_refresh_seconds > 3600 {
            return Err("jwks_min_refresh_seconds is 1 to 3600".into());
        }
        if config.jwks_max_stale_seconds < config.jwks_refresh_seconds {
            return Err(
                "jwks_max_stale_seconds must be at least jwks_refresh_seconds (else the set \
                 goes stale between two fetches)"
                    .into(),
            );
        }
        if config.jwks_timeout_seconds == 0 || config.jwks_timeout_seconds > 60 {
            return Err("jwks_timeout_seconds is 1 to 60".into());
        }
        let origin = match (&config.jwks_file, &config.jwks_uri) {
            (Some(path), None) => Origin::File(path.clone()),
            (None, Some(uri)) => url_origin(uri, config.jwks_timeout_seconds)?,
            (Some(_), Some(_)) => {
                return Err("name one of `jwks_file` and `jwks_uri`, not both".into());
            }
            (None, None) => return Err("name its key set: `jwks_file` or `jwks_uri`".into()),
        };
        let source = KeySource {
            issuer: config.issuer.clone(),
            origin,
            refresh_secs: config.jwks_refresh_seconds,
            min_refresh_secs: config.jwks_min_refresh_seconds,
            max_stale_secs: config.jwks_max_stale_seconds,
            loaded: ArcSwapOption::empty(),
            attempts: Mutex::new(Attempts::default()),
            loading: tokio::sync::Mutex::new(()),
        };
        if let Origin::File(path) = &source.origin {
            let bytes = assertion::read_bounded(path)
                .map_err(|m| format!("jwks_file {}: {m}", path.display()))?;
            source
                .apply(&bytes, crate::service::now_secs())
                .map_err(|m| format!("jwks_file {}: {m}", path.display()))?;
        }
        Ok(source)
    }

    /// The `kid`s of the set in use, sorted (tests).
    #[cfg(test)]
    pub(super) fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self
            .loaded
            .load()
            .as_ref()
            .map(|l| l.set.keys.iter().filter_map(|k| k.kid.clone()).collect())
            .unwrap_or_default();
        kids.sort();
        kids
    }

    /// How many loads were attempted (tests).
    #[cfg(test)]
    pub(super) fn attempt_count(&self) -> u64 {
        lock(&self.attempts).count
    }

    /// The set to verify with at `now`, if there is a usable one.
    fn usable(&self, now: u64) -> Option<Arc<KeySet>> {
        let loaded = self.loaded.load_full()?;
        let fresh = match self.origin {
            Origin::File(_) => true,
            Origin::Url { .. } => now.saturating_sub(loaded.confirmed_at) <= self.max_stale_secs,
        };
        fresh.then(|| Arc::clone(&loaded.set))
    }

    /// Verifies the signature of `parts` with the key `kid` names (or, without a `kid`,
    /// the keys for `alg`), reloading the set once, if allowed, when it has no such key
    /// or there is no usable set.
    pub(super) async fn verify_signature(
        &self,
        parts: &Parts<'_>,
        kid: Option<&str>,
        alg: Algorithm,
        now: u64,
    ) -> Result<(), SubjectError> {
        let mut reloaded = false;
        loop {
            let refusal = match self.usable(now) {
                Some(set) => match set.verify(parts, kid, alg, &self.issuer) {
                    Lookup::Verified => return Ok(()),
                    Lookup::Refused(m) => return Err(SubjectError::Invalid(m)),
                    Lookup::Unknown(m) => SubjectError::Invalid(m),
                },
                None => self.unavailable(now),
            };
            if reloaded || !self.reload_on_demand(now).await {
                return Err(refusal);
            }
            reloaded = true;
        }
    }

    /// Why no usable set exists.
    fn unavailable(&self, now: u64) -> SubjectError {
        let error = lock(&self.attempts).error.clone();
        let why = error.map_or_else(String::new, |e| format!("; the last attempt failed: {e}"));
        let message = match self.loaded.load_full() {
            Some(loaded) => format!(
                "the key set of issuer {} was last fetched {} s ago, longer than its \
                 jwks_max_stale_seconds ({}){why}",
                Shown(&self.issuer),
                now.saturating_sub(loaded.confirmed_at),
                self.max_stale_secs
            ),
            None => format!(
                "the key set of issuer {} could not be loaded yet{why}",
                Shown(&self.issuer)
            ),
        };
        SubjectError::Unavailable(message)
    }

    /// Reloads the set for a token that needs it, unless one was loaded less than
    /// `jwks_min_refresh_seconds` ago. `true` if a load happened (by this call or by
    /// another while this one waited): worth looking again.
    async fn reload_on_demand(&self, now: u64) -> bool {
        let seen = lock(&self.attempts).count;
        let _loading = self.loading.lock().await;
        {
            let attempts = lock(&self.attempts);
            if attempts.count != seen {
                return true;
            }
            if let Some(last) = attempts.last
                && now.saturating_sub(last) < self.min_refresh_secs
            {
                return false;
            }
        }
        if let Err(e) = self.reload(now).await {
            tracing::warn!(issuer = %Shown(&self.issuer), error = %e,
                "the issuer's key set could not be reloaded; keeping the last good one");
        }
        true
    }

    /// When the refresher should next reload this set (Unix seconds).
    pub(super) fn next_due(&self) -> u64 {
        let attempts = lock(&self.attempts);
        let Some(last) = attempts.last else {
            return 0;
        };
        let interval = match self.origin {
            Origin::File(_) => FILE_POLL_SECS,
            Origin::Url { .. } if attempts.error.is_some() => self.min_refresh_secs,
            Origin::Url { .. } => self.refresh_secs,
        };
        last.saturating_add(interval)
    }

    /// The refresher's reload, logged.
    pub(super) async fn refresh_scheduled(&self, now: u64) {
        let _loading = self.loading.lock().await;
        match self.reload(now).await {
            Ok(true) => tracing::info!(
                issuer = %Shown(&self.issuer),
                keys = self.loaded.load().as_ref().map_or(0, |l| l.set.keys.len()),
                "loaded the issuer's key set"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(issuer = %Shown(&self.issuer), error = %e,
                "the issuer's key set could not be reloaded; keeping the last good one"),
        }
    }

    /// Reads or fetches the set and loads it if it changed; `Ok(true)` if it did. Records
    /// the attempt. The caller holds `loading`.
    async fn reload(&self, now: u64) -> Result<bool, String> {
        {
            let mut attempts = lock(&self.attempts);
            attempts.count += 1;
            attempts.last = Some(now);
        }
        let result = match &self.origin {
            Origin::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    assertion::read_bounded(&path)
                        .map_err(|m| format!("jwks_file {}: {m}", path.display()))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
            Origin::Url { url, client } => fetch(client, url)
                .await
                .map_err(|m| format!("jwks_uri {url}: {m}")),
        }
        .and_then(|bytes| self.apply(&bytes, now));
        lock(&self.attempts).error = result
            .as_ref()
            .err()
            .map(|e| writ_core::text::truncate(e.clone(), MAX_ERROR_BYTES));
        result
    }

    /// Loads `bytes` as the set, confirmed at `now`; `Ok(true)` if it differs from the
    /// one in use. On error the set in use stays.
    fn apply(&self, bytes: &[u8], now: u64) -> Result<bool, String> {
        let digest: [u8; 32] = blake3::hash(bytes).into();
        if let Some(loaded) = self.loaded.load_full()
            && loaded.set.digest == digest
        {
            self.loaded.store(Some(Arc::new(Loaded {
                set: Arc::clone(&loaded.set),
                confirmed_at: now,
            })));
            return Ok(false);
        }
        let set = parse_jwks(bytes, &self.issuer)?;
        if set.keys.is_empty() {
            tracing::warn!(issuer = %Shown(&self.issuer), "the issuer's key set has no usable key");
        }
        self.loaded.store(Some(Arc::new(Loaded {
            set: Arc::new(KeySet { digest, ..set }),
            confirmed_at: now,
        })));
        Ok(true)
    }
}

impl KeySet {
    fn verify(&self, parts: &Parts<'_>, kid: Option<&str>, alg: Algorithm, issuer: &str) -> Lookup {
        let issuer = Shown(issuer);
        let Some(kid) = kid else {
            let mut candidates = self
                .keys
                .iter()
                .filter(|k| k.algs.contains(&alg))
                .take(MAX_KEYS_TRIED)
                .peekable();
            if candidates.peek().is_none() {
                return Lookup::Unknown(format!(
                    "the token has no `kid` and no key of issuer {issuer} is for `alg` {}",
                    alg_str(alg)
                ));
            }
            return if candidates.any(|k| assertion::signature_verifies(parts, &k.key, alg)) {
                Lookup::Verified
            } else {
                Lookup::Refused(format!(
                    "the signature does not verify with any key of issuer {issuer}"
                ))
            };
        };
        let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
            return Lookup::Unknown(format!(
                "`kid` {} is not in the key set of issuer {issuer}",
                Shown(kid)
            ));
        };
        if !key.algs.contains(&alg) {
            return Lookup::Refused(format!(
                "`alg` {} does not match the key {} of issuer {issuer} ({})",
                alg_str(alg),
                Shown(kid),
                alg_names(&key.algs)
            ));
        }
        if assertion::signature_verifies(parts, &key.key, alg) {
            Lookup::Verified
        } else {
            Lookup::Refused(format!(
                "the signature does not verify with the key {} of issuer {issuer}",
                Shown(kid)
            ))
        }
    }
}

/// A `jwks_uri`: `https`, or `http` to a loopback host; no credentials, no fragment.
fn url_origin(uri: &str, timeout_secs: u64) -> Result<Origin, String> {
    let bad = |m: &str| Err(format!("jwks_uri {}: {m}", Shown(uri)));
    let Ok(url) = reqwest::Url::parse(uri) else {
        return bad("not a URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry credentials");
    }
    if url.fragment().is_some() {
        return bad("must not have a fragment");
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let plain = match url.scheme() {
        "https" if !host.is_empty() => false,
        "http" if loopback => true,
        _ => return bad("must be an https URL (plain http only to a loopback host)"),
    };
    let timeout = std::time::Duration::from_secs(timeout_secs);
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!plain)
        .user_agent(concat!("writ/", env!("CARGO_PKG_VERSION")));
    if loopback {
        builder = builder.no_proxy();
    }
    let client = builder
        .build()
        .map_err(|e| format!("jwks_uri {}: no HTTP client: {}", Shown(uri), chain(&e)))?;
    Ok(Origin::Url { url, client })
}

/// One GET of a JWKS: 200 only, at most [`MAX_JWKS_BYTES`].
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(|e| format!("cannot fetch: {}", chain(&e)))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("answered HTTP {status}"));
    }
    if let Some(length) = response.content_length()
        && length > MAX_JWKS_BYTES as u64
    {
        return Err(format!(
            "the answer is {length} bytes; at most {MAX_JWKS_BYTES}"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the answer: {}", chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the answer is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources, on one line (reqwest's own text says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    writ_core::text::truncate(text, MAX_ERROR_BYTES)
}

/// The usable keys of a JWKS. Not JSON, no `keys` array, more than [`MAX_JWKS_KEYS`]
/// keys or a `kid` twice among the usable keys are errors; an unusable key is skipped.
fn parse_jwks(bytes: &[u8], issuer: &str) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array: not a JWK set")?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "{} keys; a key set has at most {MAX_JWKS_KEYS}",
            keys.len()
        ));
    }
    let mut out = Vec::new();
    let mut kids = HashSet::new();
    for (i, jwk) in keys.iter().enumerate() {
        let Value::Object(jwk) = jwk else {
            return Err(format!("keys[{i}] is not a JSON object"));
        };
        match set_key(jwk) {
            Ok(Some(key)) => {
                if let Some(kid) = &key.kid
                    && !kids.insert(kid.clone())
                {
                    return Err(format!("`kid` {} appears twice", Shown(kid)));
                }
                out.push(key);
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!(
                issuer = %Shown(issuer),
                index = i,
                %reason,
                "skipping a key of the issuer's key set"
            ),
        }
    }
    Ok(KeySet {
        keys: out,
        digest: [0; 32],
    })
}

/// One JWK as a [`SetKey`]; `Ok(None)` for a key not meant for signatures.
fn set_key(jwk: &Map<String, Value>) -> Result<Option<SetKey>, String> {
    if let Some(usage) = assertion::jwk_str(jwk, "use")?
        && usage != "sig"
    {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Ok(None);
        }
    }
    let kid = assertion::jwk_str(jwk, "kid")?.map(str::to_owned);
    if let Some(kid) = &kid {
        assertion::check_kid(kid)?;
    }
    let key = assertion::decode_jwk(jwk)?;
    let mut algs: Vec<Algorithm> = key
        .algs()
        .iter()
        .copied()
        .filter(|a| ACCEPTED.contains(a))
        .collect();
    if let Some(declared) = assertion::jwk_str(jwk, "alg")? {
        algs.retain(|a| alg_str(*a) == declared);
    }
    if algs.is_empty() {
        return Err(format!(
            "{}: not a key for RS256, PS256, ES256 or EdDSA",
            kid.as_deref().map_or_else(
                || "a key without `kid`".to_owned(),
                |k| format!("`kid` {}", Shown(k))
            )
        ));
    }
    let key = key.into_key();
    if !algs.iter().all(|alg| assertion::probe(&key, *alg)) {
        return Err("not a valid public key".into());
    }
    Ok(Some(SetKey { kid, algs, key }))
}
