//! Proven identities from signed JWTs: client assertions and JWT-SVIDs.
//!
//! A shared secret proves only that the caller once learnt it, and anyone who copies it
//! can use it forever. An assertion proves possession of a private key *for this call*: a
//! short-lived JWT, addressed to this Writ, signed by the caller, used once. Two kinds
//! arrive in the [`ASSERTION_HEADER`] metadata header:
//! - a **client assertion** (RFC 7523 §3, as used for client authentication): `iss` and
//!   `sub` are the party's id and the signature verifies with a key registered for that
//!   party in the policy ([`parse_registered_key`]: Ed25519 or P-256 only);
//! - a **JWT-SVID** (SPIFFE): `sub` is a SPIFFE ID in this Writ's trust domain, has no
//!   registered key, and the signature verifies with the key the header's `kid` names in
//!   the SPIFFE JWT bundle file (reloaded when it changes).
//!
//! [`AssertionVerifier::verify`] works in this order: cheap structural checks (size,
//! base64url, JSON, `alg`), key selection and the signature, then the claims (`aud`,
//! `exp`, `nbf`, `iat`, `jti`), and only then the replay check, which records the `jti`
//! atomically with asking whether it was seen. So only a verified assertion can enter the
//! replay cache: a forged one cannot poison it (burn someone's `jti`) or fill it.
//!
//! Trade-offs:
//! - **The replay cache is in memory** ([`MemoryReplayCache`]): a restarted server has
//!   forgotten which assertions were used. So an assertion whose `iat` is before this
//!   server started is refused: it could have been used with the previous process.
//!   Clients mint a fresh assertion for every call anyway, so this costs nothing but a
//!   retry. Residual: an assertion dated up to `leeway` in the future (a client clock
//!   that runs fast) and used with the previous process within `leeway` before a restart
//!   can be replayed once against the new one. Writ nodes that share a Redis Cluster also
//!   record each assertion there once their own cache admitted it ([`SharedReplay`],
//!   checked by the authenticator after `verify`), so an assertion is used once per trust
//!   domain, not once per node.
//! - **`jti` is required, JWT-SVIDs included.** Replay refusal needs it. Stock SPIRE
//!   JWT-SVIDs carry no `jti`, and its agent caches and hands out the same JWT-SVID for
//!   the same audience, which a replay check must refuse on second use: JWT-SVIDs work
//!   here only from an issuer that mints a fresh one, with a `jti`, per call (in SPIRE,
//!   entries with `jwt_svid_include_jti`, which also bypasses the agent's cache).
//! - A party with registered keys authenticates with those keys only: a JWT-SVID for its
//!   id is not consulted.
//! - The cache is bounded and refuses new assertions when full
//!   ([`AssertionError::ReplayCacheFull`]) rather than evict live entries, which would
//!   reopen replay. It needs about `calls per second × (lifetime + leeway)` entries.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writ_core::text::Shown;

/// The gRPC metadata header that carries one assertion (a compact JWS).
pub const ASSERTION_HEADER: &str = "writ-client-assertion";
/// Longest assertion accepted, in bytes; checked before anything is parsed.
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// Most keys tried for one client assertion without a `kid`; the policy loader should
/// refuse a party with more registered keys than this.
pub const MAX_KEYS_PER_PARTY: usize = 8;
/// Longest `jti`, in bytes.
pub const MAX_JTI_BYTES: usize = 256;
/// Longest `kid` (header or registered), in bytes.
pub const MAX_KID_BYTES: usize = 256;
/// Longest `sub`, in bytes (a SPIFFE ID's limit).
pub const MAX_SUBJECT_BYTES: usize = 2048;
/// Largest JWT-SVID bundle file, in bytes.
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;
/// Longest text of one registered key (PEM or JWK), in bytes.
const MAX_KEY_TEXT_BYTES: usize = 16 * 1024;
/// Shortest interval of the bundle reloader.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// RSA moduli accepted in a JWT-SVID bundle, in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

const PREFIX: &str = "writ-client-assertion: ";

/// Why an assertion, a registered key or the verifier's configuration was refused.
///
/// gRPC codes for [`AssertionVerifier::verify`]'s errors: [`Malformed`](Self::Malformed)
/// → `INVALID_ARGUMENT`; [`Rejected`](Self::Rejected) and [`Replayed`](Self::Replayed) →
/// `UNAUTHENTICATED`; [`ReplayCacheFull`](Self::ReplayCacheFull) → `RESOURCE_EXHAUSTED`.
/// [`Key`](Self::Key) and [`Config`](Self::Config) are configuration errors (loading the
/// policy or starting the server), never answers to a call. Messages never contain the
/// assertion or its signature.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// Not a compact JWS at all: too large, not base64url, not JSON.
    #[error("{PREFIX}{0}")]
    Malformed(String),
    /// Not trusted: bad or unverifiable signature, unknown key, refused `alg`, a claim
    /// missing or wrong (expired, too long-lived, not yet valid, wrong `aud`/`iss`/`sub`).
    #[error("{PREFIX}{0}")]
    Rejected(String),
    /// This `sub` already used this `jti` within its lifetime.
    #[error("{PREFIX}`jti` was already used; mint a fresh assertion for every call")]
    Replayed,
    /// The replay cache holds as many live assertions as it may, in total or for this
    /// `sub`; retry once some expire.
    #[error(
        "{PREFIX}too many live assertions {}; retry when some expire (use shorter-lived assertions)",
        if *.per_subject { "for this `sub`" } else { "in total" }
    )]
    ReplayCacheFull {
        /// Whether this subject's own limit was reached (else the total).
        per_subject: bool,
    },
    /// A registered key was refused ([`parse_registered_key`]).
    #[error("registered key: {0}")]
    Key(String),
    /// The verifier's configuration or its JWT-SVID bundle file is unusable.
    #[error("client assertions: {0}")]
    Config(String),
}

fn malformed(message: impl Into<String>) -> AssertionError {
    AssertionError::Malformed(message.into())
}

fn rejected(message: impl Into<String>) -> AssertionError {
    AssertionError::Rejected(message.into())
}

fn key_error(message: impl Into<String>) -> AssertionError {
    AssertionError::Key(message.into())
}

// ---------------------------------------------------------------------------------------
// Registered keys.

/// A public key registered for a party: Ed25519 (`EdDSA`) or P-256 (`ES256`).
///
/// Made only by [`parse_registered_key`], so its key is valid for its algorithm.
#[derive(Clone, Debug)]
pub struct RegisteredKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl RegisteredKey {
    /// The key id that selects this key when an assertion's header names one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies: `EdDSA` or `ES256`.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
}

/// Parses a party's registered public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`) or one
/// JWK JSON object, Ed25519 (`OKP`/`Ed25519`) or P-256 (`EC`/`P-256`). RSA keys, HMAC
/// secrets, other curves, private keys and certificates are refused, each with a message
/// that says so. A JWK's own `kid` is used when `kid` is `None`; when both are given they
/// must agree.
pub fn parse_registered_key(
    text: &str,
    kid: Option<String>,
) -> Result<RegisteredKey, AssertionError> {
    if let Some(k) = &kid {
        check_kid(k).map_err(key_error)?;
    }
    if text.len() > MAX_KEY_TEXT_BYTES {
        return Err(key_error(format!(
            "{} bytes; a public key is at most {MAX_KEY_TEXT_BYTES}",
            text.len()
        )));
    }
    let trimmed = text.trim();
    let (alg, key, jwk_kid) = if trimmed.starts_with("-----BEGIN") {
        let (alg, key) = registered_pem(trimmed)?;
        (alg, key, None)
    } else if trimmed.starts_with('{') {
        registered_jwk(trimmed)?
    } else {
        return Err(key_error(
            "expected a PEM public key (`-----BEGIN PUBLIC KEY-----`) or a JWK JSON object",
        ));
    };
    let kid = match (kid, jwk_kid) {
        (Some(given), Some(own)) if given != own => {
            return Err(key_error(format!(
                "kid {} differs from the JWK's own `kid` {}",
                Shown(&given),
                Shown(&own)
            )));
        }
        (given, own) => given.or(own),
    };
    if let Some(k) = &kid {
        check_kid(k).map_err(key_error)?;
    }
    if !probe(&key, alg) {
        return Err(key_error(format!(
            "not a valid {} public key",
            alg_name(alg)
        )));
    }
    Ok(RegisteredKey { kid, alg, key })
}

/// Checks one party's registered keys as a whole: at most [`MAX_KEYS_PER_PARTY`], and no
/// `kid` twice (a header `kid` must select exactly one key). For the policy loader.
pub fn check_party_keys(keys: &[RegisteredKey]) -> Result<(), AssertionError> {
    if keys.len() > MAX_KEYS_PER_PARTY {
        return Err(key_error(format!(
            "{} keys; a party registers at most {MAX_KEYS_PER_PARTY}",
            keys.len()
        )));
    }
    let mut kids = HashSet::new();
    for kid in keys.iter().filter_map(RegisteredKey::kid) {
        if !kids.insert(kid) {
            return Err(key_error(format!("kid {} is registered twice", Shown(kid))));
        }
    }
    Ok(())
}

pub(crate) fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err(format!("a kid is 1 to {MAX_KID_BYTES} bytes"));
    }
    Ok(())
}

/// Whether `key` makes a verifier for `alg`: building one parses the key, so an invalid
/// point fails here, at load, instead of on every call. (RSA keys parse only when used;
/// their size is checked separately.)
pub(crate) fn probe(key: &DecodingKey, alg: Algorithm) -> bool {
    // A one-byte signature: the verifier is built (the key parsed), then the signature
    // is refused, which `verify` reports as `Ok(false)`; a bad key is an `Err`.
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg).is_ok()
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "Ed25519 (EdDSA)",
        Algorithm::ES256 => "P-256 (ES256)",
        Algorithm::ES384 => "P-384 (ES384)",
        _ => "RSA",
    }
}

const ONLY: &str = "only Ed25519 (EdDSA) and P-256 (ES256) keys are accepted";

fn registered_pem(text: &str) -> Result<(Algorithm, DecodingKey), AssertionError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    use x509_parser::pem::Pem;
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    let mut blocks = Pem::iter_from_buffer(text.as_bytes());
    let pem = match blocks.next() {
        Some(Ok(pem)) => pem,
        Some(Err(e)) => return Err(key_error(format!("not valid PEM: {e}"))),
        None => return Err(key_error("no PEM block")),
    };
    if blocks.next().is_some() {
        return Err(key_error(
            "more than one PEM block; register one key per entry",
        ));
    }
    match pem.label.as_str() {
        "PUBLIC KEY" => {}
        label if label.contains("PRIVATE KEY") => {
            return Err(key_error(format!(
                "a private key (PEM {label:?}); register the public key only \
                 (`-----BEGIN PUBLIC KEY-----`) and keep the private key with the party"
            )));
        }
        "RSA PUBLIC KEY" => return Err(key_error(format!("an RSA key; {ONLY}"))),
        "CERTIFICATE" => {
            return Err(key_error(
                "a certificate; register its public key (`-----BEGIN PUBLIC KEY-----`)",
            ));
        }
        label => {
            return Err(key_error(format!(
                "PEM {} is not a public key; expected `-----BEGIN PUBLIC KEY-----`",
                Shown(label)
            )));
        }
    }
    let spki = match SubjectPublicKeyInfo::from_der(&pem.contents) {
        Ok(([], spki)) => spki,
        Ok(_) => return Err(key_error("trailing bytes after the public key")),
        Err(e) => return Err(key_error(format!("not a SubjectPublicKeyInfo: {e}"))),
    };
    let algorithm = &spki.algorithm;
    let bits = &spki.subject_public_key;
    if bits.unused_bits != 0 {
        return Err(key_error("the public key's bit string is not whole bytes"));
    }
    let point: &[u8] = &bits.data;
    if algorithm.algorithm == OID_SIG_ED25519 {
        if algorithm.parameters.is_some() || point.len() != 32 {
            return Err(key_error("not a valid Ed25519 public key"));
        }
        Ok((Algorithm::EdDSA, DecodingKey::from_ed_der(point)))
    } else if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            let named = curve.map_or_else(|| "unnamed".to_owned(), |c| c.to_id_string());
            return Err(key_error(format!(
                "an EC key on curve {named}, not P-256; {ONLY}"
            )));
        }
        check_p256_point(point)?;
        Ok((Algorithm::ES256, DecodingKey::from_ec_der(point)))
    } else if algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        Err(key_error(format!("an RSA key; {ONLY}")))
    } else {
        Err(key_error(format!(
            "a key of algorithm {}; {ONLY}",
            algorithm.algorithm.to_id_string()
        )))
    }
}

fn check_p256_point(point: &[u8]) -> Result<(), AssertionError> {
    match (point.len(), point.first()) {
        (65, Some(4)) | (33, Some(2 | 3)) => Ok(()),
        _ => Err(key_error("not a valid P-256 public key")),
    }
}

/// A public key decoded from a JWK, by type.
pub(crate) enum JwkKey {
    Ed25519(DecodingKey),
    P256(DecodingKey),
    P384(DecodingKey),
    Rsa(DecodingKey),
}

impl JwkKey {
    pub(crate) fn algs(&self) -> &'static [Algorithm] {
        match self {
            JwkKey::Ed25519(_) => &[Algorithm::EdDSA],
            JwkKey::P256(_) => &[Algorithm::ES256],
            JwkKey::P384(_) => &[Algorithm::ES384],
            JwkKey::Rsa(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        }
    }

    pub(crate) fn into_key(self) -> DecodingKey {
        match self {
            JwkKey::Ed25519(k) | JwkKey::P256(k) | JwkKey::P384(k) | JwkKey::Rsa(k) => k,
        }
    }
}

pub(crate) fn jwk_str<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("the JWK's `{name}` is not a string")),
    }
}

fn jwk_bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk_str(jwk, name)?.ok_or_else(|| format!("the JWK has no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("the JWK's `{name}` is not base64url"))
}

/// Decodes a public JWK of a type this module knows; refuses secrets and private keys.
pub(crate) fn decode_jwk(jwk: &Map<String, Value>) -> Result<JwkKey, String> {
    let kty = jwk_str(jwk, "kty")?.ok_or("the JWK has no `kty`")?;
    if kty == "oct" || jwk.contains_key("k") {
        return Err(
            "a symmetric (HMAC) secret; only public keys are accepted, never shared secrets".into(),
        );
    }
    if let Some(member) = ["d", "p", "q", "dp", "dq", "qi", "oth"]
        .into_iter()
        .find(|m| jwk.contains_key(*m))
    {
        return Err(format!(
            "a private key (the JWK has `{member}`); register the public key only"
        ));
    }
    let crv = jwk_str(jwk, "crv")?;
    match (kty, crv) {
        ("OKP", Some("Ed25519")) => {
            let x = jwk_bytes(jwk, "x")?;
            if x.len() != 32 {
                return Err("not a valid Ed25519 public key (`x` is not 32 bytes)".into());
            }
            Ok(JwkKey::Ed25519(DecodingKey::from_ed_der(&x)))
        }
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let size = if curve == "P-256" { 32 } else { 48 };
            let (x, y) = (jwk_bytes(jwk, "x")?, jwk_bytes(jwk, "y")?);
            if x.len() != size || y.len() != size {
                return Err(format!(
                    "not a valid {curve} public key (`x` and `y` are not {size} bytes)"
                ));
            }
            let point = [&[4u8][..], &x, &y].concat();
            let key = DecodingKey::from_ec_der(&point);
            Ok(if size == 32 {
                JwkKey::P256(key)
            } else {
                JwkKey::P384(key)
            })
        }
        ("RSA", _) => {
            let n = jwk_bytes(jwk, "n")?;
            let e = jwk_bytes(jwk, "e")?;
            let n = strip_zeros(&n);
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "an RSA key of {bits} bits; {} to {} bits are accepted",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                ));
            }
            let e = strip_zeros(&e);
            let odd = e.last().is_some_and(|b| b & 1 == 1);
            if e.len() > 4 || !odd || e == [1u8] {
                return Err("an RSA key with an unusable exponent `e`".into());
            }
            Ok(JwkKey::Rsa(DecodingKey::from_rsa_raw_components(n, e)))
        }
        (kty, crv) => Err(format!(
            "a JWK of type {}{}, which is not supported",
            Shown(kty),
            crv.map(|c| format!(" on curve {}", Shown(c)))
                .unwrap_or_default()
        )),
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[start..]
}

fn registered_jwk(text: &str) -> Result<(Algorithm, DecodingKey, Option<String>), AssertionError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| key_error(format!("not JSON: {e}")))?;
    let Value::Object(jwk) = value else {
        return Err(key_error("a JWK is a JSON object"));
    };
    if jwk.contains_key("keys") {
        return Err(key_error("a JWK set; register each key as its own entry"));
    }
    let key = decode_jwk(&jwk).map_err(key_error)?;
    let alg = match &key {
        JwkKey::Ed25519(_) => Algorithm::EdDSA,
        JwkKey::P256(_) => Algorithm::ES256,
        JwkKey::P384(_) => return Err(key_error(format!("a P-384 key; {ONLY}"))),
        JwkKey::Rsa(_) => return Err(key_error(format!("an RSA key; {ONLY}"))),
    };
    if let Some(declared) = jwk_str(&jwk, "alg").map_err(key_error)?
        && declared != alg_str(alg)
    {
        return Err(key_error(format!(
            "the JWK's `alg` {} does not fit its key ({})",
            Shown(declared),
            alg_str(alg)
        )));
    }
    if let Some(usage) = jwk_str(&jwk, "use").map_err(key_error)?
        && usage != "sig"
    {
        return Err(key_error(format!(
            "the JWK's `use` is {}, not \"sig\"",
            Shown(usage)
        )));
    }
    let kid = jwk_str(&jwk, "kid").map_err(key_error)?.map(str::to_owned);
    Ok((alg, key.into_key(), kid))
}

/// The algorithms a key accepts, for a refusal's message (`EdDSA, ES256`).
pub(crate) fn alg_names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| alg_str(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn alg_str(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "?",
    }
}

// ---------------------------------------------------------------------------------------
// Configuration and the verifier.

/// How assertions are checked.
#[derive(Clone, Debug)]
pub struct AssertionConfig {
    /// This Writ's identifier: every assertion's `aud` must contain it exactly (e.g.
    /// `spiffe://writ.local/writ`).
    pub audience: String,
    /// The SPIFFE trust domain of accepted JWT-SVIDs (e.g. `writ.local`).
    pub trust_domain: String,
    /// Longest time before `exp` an assertion may be presented.
    pub max_lifetime: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The SPIFFE JWT bundle (a JWK set); `None` accepts no JWT-SVIDs.
    pub jwt_svid_bundle: Option<PathBuf>,
    /// Most live assertions remembered (refused beyond, not evicted).
    pub max_replay_entries: usize,
    /// Most live assertions remembered for one `sub`.
    pub max_replay_entries_per_subject: usize,
}

impl AssertionConfig {
    /// Default lifetime bound: 5 minutes.
    pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(300);
    /// Default clock skew: 30 seconds.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
    /// Default bound of the replay cache (about 100 MB at the bound).
    pub const DEFAULT_MAX_REPLAY_ENTRIES: usize = 1_000_000;
    /// Default bound of the replay cache for one subject.
    pub const DEFAULT_MAX_REPLAY_ENTRIES_PER_SUBJECT: usize = 100_000;

    /// The defaults for this Writ's `audience` and `trust_domain`: 5 minutes' lifetime,
    /// 30 s of leeway, no JWT-SVID bundle, 1 000 000 live assertions (100 000 per `sub`).
    pub fn new(audience: impl Into<String>, trust_domain: impl Into<String>) -> Self {
        AssertionConfig {
            audience: audience.into(),
            trust_domain: trust_domain.into(),
            max_lifetime: Self::DEFAULT_MAX_LIFETIME,
            leeway: Self::DEFAULT_LEEWAY,
            jwt_svid_bundle: None,
            max_replay_entries: Self::DEFAULT_MAX_REPLAY_ENTRIES,
            max_replay_entries_per_subject: Self::DEFAULT_MAX_REPLAY_ENTRIES_PER_SUBJECT,
        }
    }
}

/// Which kind of assertion proved the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionKind {
    /// Signed with a key registered for the party.
    ClientAssertion,
    /// A JWT-SVID signed by a key of the trust domain's JWT bundle.
    JwtSvid,
}

/// A verified, first-time-seen assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The proven identity: the party id (client assertion) or SPIFFE ID (JWT-SVID).
    pub subject: String,
    /// How it was proven.
    pub kind: AssertionKind,
    /// The assertion's `exp` (Unix seconds).
    pub expires_at: u64,
    /// The `kid` of the key that verified it (registered or bundle), if it has one: for
    /// the audit trail, to tell which key was used.
    pub kid: Option<String>,
    /// The (`sub`, `jti`) pair as a [`SharedReplay`] records it ([`replay_key`]), and
    /// until when (Unix seconds): `exp` plus the leeway.
    pub replay: ([u8; 32], u64),
}

/// The key under which a [`SharedReplay`] records (`sub`, `jti`): a digest every node
/// computes alike (unkeyed, so nodes agree; BLAKE3 is collision resistant), with each part
/// length-prefixed so no two pairs share one.
pub fn replay_key(sub: &str, jti: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("writ 2026-12 client assertion jti replay");
    for part in [sub, jti] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// A replay record several Writ nodes share (a store they all use), consulted after this
/// node's own [`ReplayCache`] admitted an assertion: so an assertion is used once per
/// trust domain, not once per node.
pub trait SharedReplay: Send + Sync + fmt::Debug {
    /// Records `key` until `until_unix_secs` unless it is recorded: `Ok(true)` the first
    /// time, `Ok(false)` for as long as it is. `Err`: the record could not be made (the
    /// caller cannot tell whether the key was used).
    fn first_use(
        &self,
        key: [u8; 32],
        until_unix_secs: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>;
}

/// A JWT-SVID bundle key: the key and the algorithms it may verify.
#[derive(Debug)]
struct BundleKey {
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

#[derive(Debug, Default)]
struct Bundle {
    keys: HashMap<String, BundleKey>,
    /// BLAKE3 of the file this was loaded from.
    digest: Option<[u8; 32]>,
}

/// Verifies assertions; one per server, shared by all calls.
pub struct AssertionVerifier {
    config: AssertionConfig,
    started_at: u64,
    replay: Arc<dyn ReplayCache>,
    bundle: ArcSwap<Bundle>,
    /// Serialises reloads, so an older read never replaces a newer one.
    reload: Mutex<()>,
}

impl fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionVerifier")
            .field("config", &self.config)
            .field("started_at", &self.started_at)
            .field("replay", &self.replay)
            .field("bundle_keys", &self.bundle.load().keys.len())
            .finish()
    }
}

impl AssertionVerifier {
    /// A verifier with an in-memory replay cache ([`MemoryReplayCache`]). `started_at` is
    /// when this process started (Unix seconds): assertions issued before are refused, as
    /// the replay cache does not know them. Loads the JWT-SVID bundle if configured.
    pub fn new(config: AssertionConfig, started_at_unix_secs: u64) -> Result<Self, AssertionError> {
        let cache = MemoryReplayCache::new(
            config.max_replay_entries,
            config.max_replay_entries_per_subject,
        );
        Self::with_replay_cache(config, started_at_unix_secs, Arc::new(cache))
    }

    /// [`new`](Self::new) with another replay cache (one shared by several nodes).
    pub fn with_replay_cache(
        config: AssertionConfig,
        started_at_unix_secs: u64,
        replay: Arc<dyn ReplayCache>,
    ) -> Result<Self, AssertionError> {
        let bad = |m: String| Err(AssertionError::Config(m));
        if config.audience.is_empty() {
            return bad("the audience (this Writ's identifier) is empty".into());
        }
        if config.max_lifetime.as_secs() == 0 {
            return bad("max_lifetime must be at least one second".into());
        }
        if config.max_replay_entries == 0 || config.max_replay_entries_per_subject == 0 {
            return bad("the replay cache's bounds must be at least 1".into());
        }
        if config.jwt_svid_bundle.is_some()
            && crate::tls::validate_trust_domain(&config.trust_domain).is_err()
        {
            return bad(format!(
                "trust domain {} is not a SPIFFE trust domain name (lowercase letters, \
                 digits, '.', '-', '_')",
                Shown(&config.trust_domain)
            ));
        }
        // Fail at startup, not on the first call, if the build has no JWT crypto.
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return bad("jsonwebtoken has no crypto provider (a build problem)".into());
        }
        let verifier = AssertionVerifier {
            config,
            started_at: started_at_unix_secs,
            replay,
            bundle: ArcSwap::from_pointee(Bundle::default()),
            reload: Mutex::new(()),
        };
        verifier.reload_bundle()?;
        Ok(verifier)
    }

    /// The configuration in use.
    pub fn config(&self) -> &AssertionConfig {
        &self.config
    }

    /// Verifies one assertion (the [`ASSERTION_HEADER`] value) at `now_unix_secs`.
    ///
    /// `keys_of` gives a party's registered keys (from the policy). For a `sub` with keys,
    /// a header `kid` must name one of them; without a `kid`, each key of the header's
    /// `alg` is tried (at most [`MAX_KEYS_PER_PARTY`]). A `sub` without keys is checked
    /// as a JWT-SVID if a bundle is configured. On success the (`sub`, `jti`) pair is
    /// recorded and refused until the assertion expires.
    pub fn verify(
        &self,
        jwt: &str,
        keys_of: &dyn Fn(&str) -> Option<Arc<[RegisteredKey]>>,
        now_unix_secs: u64,
    ) -> Result<VerifiedAssertion, AssertionError> {
        let now = now_unix_secs;
        let parts = split(jwt)?;
        let header: RawHeader = decode_part(parts.header, "header")?;
        let claims: RawClaims = decode_part(parts.payload, "payload")?;
        let alg = header_alg(&header)?;
        if header.crit.is_some() {
            return Err(rejected(
                "the header has `crit`: no JWS extensions are supported",
            ));
        }
        if header.b64.as_ref().is_some_and(|b| b != &Value::Bool(true)) {
            return Err(rejected("unencoded payloads (`b64`) are not supported"));
        }
        let kid = string_claim(&header.kid, "kid")?;
        if let Some(k) = kid {
            check_kid(k).map_err(|m| rejected(format!("header `kid`: {m}")))?;
        }
        let sub = string_claim(&claims.sub, "sub")?.ok_or_else(|| rejected("`sub` is required"))?;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES {
            return Err(rejected(format!(
                "`sub` must be 1 to {MAX_SUBJECT_BYTES} bytes"
            )));
        }

        // Key selection and the signature.
        let (kind, used_kid) = match keys_of(sub).filter(|keys| !keys.is_empty()) {
            Some(keys) => {
                let key = client_key(&keys, kid, alg, &parts)?;
                (AssertionKind::ClientAssertion, key.kid.clone())
            }
            None => {
                self.svid_key(sub, kid, alg, &header, &parts)?;
                (AssertionKind::JwtSvid, kid.map(str::to_owned))
            }
        };

        // The claims.
        if kind == AssertionKind::ClientAssertion {
            match string_claim(&claims.iss, "iss")? {
                None => return Err(rejected("`iss` is required (the party id, as `sub`)")),
                Some(iss) if iss != sub => {
                    return Err(rejected(
                        "`iss` must equal `sub` in a client assertion (both the party id)",
                    ));
                }
                Some(_) => {}
            }
        }
        let (exp, jti) = self.check_claims(&claims, now)?;

        // Last, and only for a verified assertion: seen before? (atomically recorded)
        let leeway = self.config.leeway.as_secs();
        match self
            .replay
            .check_and_record(sub, jti, exp.saturating_add(leeway), now)
        {
            Ok(()) => {}
            Err(Replay::Seen) => return Err(AssertionError::Replayed),
            Err(Replay::SubjectFull) => {
                return Err(AssertionError::ReplayCacheFull { per_subject: true });
            }
            Err(Replay::Full) => {
                return Err(AssertionError::ReplayCacheFull { per_subject: false });
            }
        }
        Ok(VerifiedAssertion {
            subject: sub.to_owned(),
            kind,
            expires_at: exp,
            kid: used_kid,
            replay: (replay_key(sub, jti), exp.saturating_add(leeway)),
        })
    }

    /// Checks a JWT-SVID's subject, finds its bundle key and verifies the signature.
    fn svid_key(
        &self,
        sub: &str,
        kid: Option<&str>,
        alg: Algorithm,
        header: &RawHeader,
        parts: &Parts<'_>,
    ) -> Result<(), AssertionError> {
        const NO_KEY: &str = "no registered key for `sub`";
        if self.config.jwt_svid_bundle.is_none() {
            return Err(rejected(NO_KEY));
        }
        // Part of choosing the key: the bundle speaks for its trust domain only.
        check_spiffe_id(sub, &self.config.trust_domain).map_err(|m| {
            rejected(format!(
                "{NO_KEY}, and it is not a JWT-SVID subject of this trust domain: `sub` {m}"
            ))
        })?;
        match string_claim(&header.typ, "typ")? {
            None | Some("JWT" | "JOSE") => {}
            Some(other) => {
                return Err(rejected(format!(
                    "a JWT-SVID's `typ` is \"JWT\" or \"JOSE\", not {}",
                    Shown(other)
                )));
            }
        }
        let kid =
            kid.ok_or_else(|| rejected(format!("{NO_KEY}, and a JWT-SVID needs a `kid` header")))?;
        let bundle = self.bundle.load();
        let key = bundle.keys.get(kid).ok_or_else(|| {
            rejected(format!(
                "{NO_KEY}, and `kid` {} is not in the JWT-SVID bundle",
                Shown(kid)
            ))
        })?;
        if !key.algs.contains(&alg) {
            return Err(rejected(format!(
                "`alg` {} does not match the JWT-SVID bundle key {} ({})",
                alg_str(alg),
                Shown(kid),
                alg_names(&key.algs)
            )));
        }
        if !signature_verifies(parts, &key.key, alg) {
            return Err(rejected(format!(
                "the signature does not verify with JWT-SVID bundle key {}",
                Shown(kid)
            )));
        }
        Ok(())
    }

    /// `aud`, `exp`, `nbf`, `iat` and `jti`; returns `exp` and `jti`.
    fn check_claims<'c>(
        &self,
        claims: &'c RawClaims,
        now: u64,
    ) -> Result<(u64, &'c str), AssertionError> {
        let leeway = self.config.leeway.as_secs();
        let max_lifetime = self.config.max_lifetime.as_secs();
        let latest = now.saturating_add(leeway);

        let audience = &self.config.audience;
        let named = match &claims.aud {
            None | Some(Value::Null) => return Err(rejected("`aud` is required")),
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => {
                if !auds.iter().all(Value::is_string) {
                    return Err(rejected("`aud` must be a string or an array of strings"));
                }
                auds.iter().any(|a| a.as_str() == Some(audience.as_str()))
            }
            Some(_) => return Err(rejected("`aud` must be a string or an array of strings")),
        };
        if !named {
            return Err(rejected(format!(
                "`aud` does not name this Writ (expected {audience:?})"
            )));
        }

        let exp = time_claim(&claims.exp, "exp")?.ok_or_else(|| rejected("`exp` is required"))?;
        if exp.saturating_add(leeway) < now {
            return Err(rejected(format!(
                "`exp` is {} s in the past: the assertion has expired",
                now - exp
            )));
        }
        if exp > latest.saturating_add(max_lifetime) {
            return Err(rejected(format!(
                "`exp` is {} s ahead; at most {max_lifetime} s",
                exp - now
            )));
        }
        if let Some(nbf) = time_claim(&claims.nbf, "nbf")?
            && nbf > latest
        {
            return Err(rejected(format!(
                "`nbf` is {} s ahead: not valid yet",
                nbf - now
            )));
        }
        let iat = time_claim(&claims.iat, "iat")?.ok_or_else(|| rejected("`iat` is required"))?;
        if iat > latest {
            return Err(rejected(format!(
                "`iat` is {} s in the future; check the client's clock",
                iat - now
            )));
        }
        if iat < self.started_at {
            return Err(rejected(
                "`iat` is before this server started, and it does not know which assertions \
                 were used before; mint a fresh assertion",
            ));
        }

        let jti = string_claim(&claims.jti, "jti")?.ok_or_else(|| rejected("`jti` is required"))?;
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(rejected(format!(
                "`jti` must be 1 to {MAX_JTI_BYTES} bytes"
            )));
        }
        Ok((exp, jti))
    }

    /// Re-reads the JWT-SVID bundle file. `Ok(true)` if its content changed and was
    /// loaded, `Ok(false)` if unchanged (or no bundle is configured). On error the
    /// previous bundle stays in use.
    ///
    /// Within the file, keys whose `use` is not `jwt-svid` are ignored, and so (with a
    /// warning) are JWT-SVID keys that cannot be used: no `kid`, an unsupported type, an
    /// RSA key under 2048 bits. Not JSON, no `keys` array, a duplicate `kid` or a file
    /// over 1 MiB are errors. A bundle with no usable key is accepted (and warned about):
    /// removing every key must revoke them.
    pub fn reload_bundle(&self) -> Result<bool, AssertionError> {
        let Some(path) = &self.config.jwt_svid_bundle else {
            return Ok(false);
        };
        let _serial = lock(&self.reload);
        let bytes = read_bounded(path).map_err(|m| bundle_error(path, m))?;
        let digest: [u8; 32] = blake3::hash(&bytes).into();
        if self.bundle.load().digest == Some(digest) {
            return Ok(false);
        }
        let keys = parse_bundle(&bytes).map_err(|m| bundle_error(path, m))?;
        if keys.is_empty() {
            tracing::warn!(path = %path.display(), "the JWT-SVID bundle has no usable key");
        }
        self.bundle.store(Arc::new(Bundle {
            keys,
            digest: Some(digest),
        }));
        Ok(true)
    }

    /// Reloads the JWT-SVID bundle every `interval` (at least 100 ms) until `stop` turns
    /// true or its sender is dropped. Errors are logged and keep the previous bundle.
    /// Ends at once if no bundle is configured.
    pub fn spawn_bundle_reloader(
        self: &Arc<Self>,
        interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let Some(path) = self.config.jwt_svid_bundle.clone() else {
            return tokio::spawn(async {});
        };
        let (worker, this) = (Arc::clone(self), Arc::clone(self));
        crate::periodic::every_blocking(
            interval.max(MIN_RELOAD_INTERVAL),
            crate::periodic::First::AfterInterval,
            stop,
            "JWT-SVID bundle reload",
            move || worker.reload_bundle(),
            move |reloaded| match reloaded {
                Ok(true) => tracing::info!(
                    path = %path.display(),
                    keys = this.bundle.load().keys.len(),
                    "reloaded the JWT-SVID bundle"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the previous JWT-SVID bundle"),
            },
        )
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, its data is still
    // consistent enough to go on with (entries only added or removed whole).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bundle_error(path: &Path, message: String) -> AssertionError {
    AssertionError::Config(format!("JWT-SVID bundle {}: {message}", path.display()))
}

pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    Ok(bytes)
}

/// The JWT-SVID keys of a SPIFFE bundle (a JWK set), by `kid`.
fn parse_bundle(bytes: &[u8]) -> Result<HashMap<String, BundleKey>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array: a SPIFFE bundle is a JWK set")?;
    let mut out = HashMap::new();
    let mut kids = HashSet::new();
    for (i, jwk) in keys.iter().enumerate() {
        let Value::Object(jwk) = jwk else {
            return Err(format!("keys[{i}] is not a JSON object"));
        };
        if jwk.get("use").and_then(Value::as_str) != Some("jwt-svid") {
            continue;
        }
        let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
            tracing::warn!(index = i, "ignoring a JWT-SVID bundle key without a `kid`");
            continue;
        };
        if !kids.insert(kid.to_owned()) {
            return Err(format!("`kid` {} appears twice", Shown(kid)));
        }
        match bundle_key(kid, jwk) {
            Ok(key) => {
                out.insert(kid.to_owned(), key);
            }
            Err(reason) => {
                tracing::warn!(kid = %Shown(kid), %reason, "ignoring a JWT-SVID bundle key");
            }
        }
    }
    Ok(out)
}

fn bundle_key(kid: &str, jwk: &Map<String, Value>) -> Result<BundleKey, String> {
    check_kid(kid)?;
    let key = decode_jwk(jwk)?;
    let mut algs = key.algs().to_vec();
    if let Some(declared) = jwk_str(jwk, "alg")? {
        algs.retain(|a| alg_str(*a) == declared);
        if algs.is_empty() {
            return Err(format!("`alg` {} does not fit the key", Shown(declared)));
        }
    }
    let key = key.into_key();
    if !algs.iter().all(|alg| probe(&key, *alg)) {
        return Err("not a valid public key".into());
    }
    Ok(BundleKey { key, algs })
}

/// Checks that `id` is `spiffe://<trust_domain>/<path>` with a valid, non-empty path.
fn check_spiffe_id(id: &str, trust_domain: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("is not a SPIFFE ID (`spiffe://<trust domain>/<path>`)")?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain != trust_domain {
        return Err(format!(
            "is in trust domain {}, not {trust_domain:?}",
            Shown(domain)
        ));
    }
    if path.is_empty() {
        return Err("has no path after the trust domain".into());
    }
    let bad_segment = path.split('/').any(|segment| {
        segment.is_empty()
            || segment == "."
            || segment == ".."
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    if bad_segment {
        return Err("has an invalid path (segments of letters, digits, '-', '.', '_')".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parsing and signatures.

/// The three parts of a compact JWS, still encoded.
pub(crate) struct Parts<'a> {
    /// `header.payload`: what the signature covers.
    pub(crate) signing_input: &'a str,
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
}

fn split(jwt: &str) -> Result<Parts<'_>, AssertionError> {
    split_bounded(jwt, MAX_ASSERTION_BYTES)
}

/// [`split`] with another size bound (`max` bytes): external subject tokens are larger.
pub(crate) fn split_bounded(jwt: &str, max: usize) -> Result<Parts<'_>, AssertionError> {
    if jwt.len() > max {
        return Err(malformed(format!("{} bytes; at most {max}", jwt.len())));
    }
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !jwt.bytes().all(|b| base64url(b) || b == b'.') {
        return Err(malformed(
            "not a compact JWS: only base64url characters and two dots are allowed",
        ));
    }
    let mut it = jwt.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(header), Some(payload), Some(signature), None)
            if !header.is_empty() && !payload.is_empty() =>
        {
            Ok(Parts {
                signing_input: &jwt[..header.len() + 1 + payload.len()],
                header,
                payload,
                signature,
            })
        }
        _ => Err(malformed("not a compact JWS (`header.payload.signature`)")),
    }
}

/// The header members this module reads; others are ignored (in particular `jwk`,
/// `jku`, `x5c` and `x5u`: a key never comes from the token itself).
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    typ: Option<Value>,
    crit: Option<Value>,
    b64: Option<Value>,
}

/// The claims this module reads; others are ignored.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
}

/// Decodes a base64url JSON object. A member given twice is refused (serde's derived
/// `Deserialize` does that for the members read), so signer and verifier cannot read
/// different values from one token.
pub(crate) fn decode_part<T: for<'de> Deserialize<'de>>(
    part: &str,
    name: &str,
) -> Result<T, AssertionError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("the {name} is not base64url")))?;
    // A derived `Deserialize` also takes a JSON array; a JOSE part is an object.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(malformed(format!("the {name} is not a JSON object")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| malformed(format!("the {name} is not a valid JSON object: {e}")))
}

fn header_alg(header: &RawHeader) -> Result<Algorithm, AssertionError> {
    let alg = string_claim(&header.alg, "alg")?.ok_or_else(|| rejected("`alg` is required"))?;
    match alg {
        "none" => Err(rejected(
            "`alg` \"none\" is refused: an assertion must be signed",
        )),
        "HS256" | "HS384" | "HS512" => Err(rejected(format!(
            "`alg` {alg} (a shared-secret MAC) is refused: sign with a private key"
        ))),
        _ => alg
            .parse::<Algorithm>()
            .map_err(|_| rejected(format!("`alg` {} is not supported", Shown(alg)))),
    }
}

fn string_claim<'v>(
    value: &'v Option<Value>,
    name: &str,
) -> Result<Option<&'v str>, AssertionError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(rejected(format!("`{name}` must be a string"))),
    }
}

fn time_claim(value: &Option<Value>, name: &str) -> Result<Option<u64>, AssertionError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            rejected(format!(
                "`{name}` must be a NumericDate: whole seconds since the Unix epoch"
            ))
        }),
    }
}

pub(crate) fn signature_verifies(parts: &Parts<'_>, key: &DecodingKey, alg: Algorithm) -> bool {
    // `Ok(false)`: a wrong signature; `Err`: not even decodable (or a key/alg mismatch,
    // which the callers exclude). Both refuse.
    matches!(
        jsonwebtoken::crypto::verify(parts.signature, parts.signing_input.as_bytes(), key, alg),
        Ok(true)
    )
}

/// Chooses a party's registered key for a client assertion and verifies the signature.
fn client_key<'k>(
    keys: &'k [RegisteredKey],
    kid: Option<&str>,
    alg: Algorithm,
    parts: &Parts<'_>,
) -> Result<&'k RegisteredKey, AssertionError> {
    if !matches!(alg, Algorithm::EdDSA | Algorithm::ES256) {
        return Err(rejected(format!(
            "`alg` {} is not accepted for client assertions: EdDSA or ES256",
            alg_str(alg)
        )));
    }
    if let Some(kid) = kid {
        let key = keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(|| {
                rejected(format!(
                    "`kid` {} names no registered key of `sub`",
                    Shown(kid)
                ))
            })?;
        if key.alg != alg {
            return Err(rejected(format!(
                "`alg` {} does not match the registered key {} ({})",
                alg_str(alg),
                Shown(kid),
                alg_str(key.alg)
            )));
        }
        return if signature_verifies(parts, &key.key, alg) {
            Ok(key)
        } else {
            Err(rejected(format!(
                "the signature does not verify with registered key {}",
                Shown(kid)
            )))
        };
    }
    let mut candidates = keys
        .iter()
        .filter(|k| k.alg == alg)
        .take(MAX_KEYS_PER_PARTY)
        .peekable();
    if candidates.peek().is_none() {
        return Err(rejected(format!(
            "no registered key of `sub` is for `alg` {}",
            alg_str(alg)
        )));
    }
    candidates
        .find(|key| signature_verifies(parts, &key.key, alg))
        .ok_or_else(|| rejected("the signature does not verify with any registered key of `sub`"))
}

// ---------------------------------------------------------------------------------------
// The replay cache.

/// Why [`ReplayCache::check_and_record`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// This (subject, jti) was recorded and has not expired.
    Seen,
    /// The subject has as many live entries as it may.
    SubjectFull,
    /// The cache has as many live entries as it may.
    Full,
}

/// Remembers the (subject, jti) of verified assertions until they expire.
pub trait ReplayCache: Send + Sync + fmt::Debug {
    /// Atomically: refuses if (`subject`, `jti`) is recorded and live, else records it
    /// until `expires_at` (Unix seconds, inclusive: the last second the verifier would
    /// still accept the assertion). `now` is the current time, for purging.
    fn check_and_record(
        &self,
        subject: &str,
        jti: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Replay>;
}

const SHARDS: usize = 32;

/// 128-bit digests stand in for the strings: fixed-size entries (about 100 bytes each
/// with the indexes), keyed per process so nobody can aim for a collision offline.
type Digest = [u8; 16];

/// The in-memory [`ReplayCache`]: shards by subject, each a mutex over a map of live
/// entries and an index by expiry, purged as it goes (each entry once). Bounded in total
/// and per subject; full, it refuses rather than evicts.
pub struct MemoryReplayCache {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    max_entries: usize,
    max_per_subject: usize,
    hash_key: [u8; 32],
}

impl fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("len", &self.len())
            .field("max_entries", &self.max_entries)
            .field("max_per_subject", &self.max_per_subject)
            .finish()
    }
}

#[derive(Default)]
struct Shard {
    /// Live entries: (subject, jti) digest → expiry.
    seen: HashMap<Digest, u64>,
    /// Live entries per subject digest.
    per_subject: HashMap<Digest, usize>,
    /// Expiry → entries expiring then: (entry digest, subject digest).
    by_expiry: BTreeMap<u64, Vec<(Digest, Digest)>>,
}

impl Shard {
    /// Drops the entries that expired before `now`; returns how many.
    fn purge(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        while let Some(first) = self.by_expiry.first_entry() {
            if *first.key() >= now {
                break;
            }
            for (entry, subject) in first.remove() {
                if self.seen.remove(&entry).is_some() {
                    dropped += 1;
                    if let Some(count) = self.per_subject.get_mut(&subject) {
                        *count -= 1;
                        if *count == 0 {
                            self.per_subject.remove(&subject);
                        }
                    }
                }
            }
        }
        dropped
    }
}

impl MemoryReplayCache {
    /// A cache of at most `max_entries` live entries, `max_per_subject` for one subject.
    pub fn new(max_entries: usize, max_per_subject: usize) -> Self {
        MemoryReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            max_entries,
            max_per_subject,
            hash_key: rand::random(),
        }
    }

    /// Entries held (live, or expired and not yet purged).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn digest(&self, parts: &[&[u8]]) -> Digest {
        let mut hasher = blake3::Hasher::new_keyed(&self.hash_key);
        for part in parts {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        out
    }

    fn purge(&self, shard: &mut Shard, now: u64) {
        let dropped = shard.purge(now);
        if dropped > 0 {
            self.len.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    /// Takes one slot of the total bound, if one is free.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_entries).then_some(n + 1)
            })
            .is_ok()
    }
}

impl ReplayCache for MemoryReplayCache {
    fn check_and_record(
        &self,
        subject: &str,
        jti: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Replay> {
        let subject_digest = self.digest(&[subject.as_bytes()]);
        let entry = self.digest(&[subject.as_bytes(), jti.as_bytes()]);
        let shard = &self.shards[usize::from(subject_digest[0]) % SHARDS];
        for attempt in 0..2 {
            let mut guard = lock(shard);
            self.purge(&mut guard, now);
            if guard.seen.contains_key(&entry) {
                return Err(Replay::Seen);
            }
            let count = guard.per_subject.get(&subject_digest).copied().unwrap_or(0);
            if count >= self.max_per_subject {
                return Err(Replay::SubjectFull);
            }
            if self.reserve() {
                guard.seen.insert(entry, expires_at);
                *guard.per_subject.entry(subject_digest).or_insert(0) += 1;
                guard
                    .by_expiry
                    .entry(expires_at)
                    .or_default()
                    .push((entry, subject_digest));
                return Ok(());
            }
            drop(guard);
            if attempt == 0 {
                // Full, perhaps of expired entries in shards nobody has touched since:
                // purge them all (one shard at a time, never two locks), then look again.
                for other in self.shards.iter() {
                    self.purge(&mut lock(other), now);
                }
            }
        }
        Err(Replay::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const STARTED: u64 = NOW - 600;
    const AUD: &str = "spiffe://writ.local/writ";
    const PARTY: &str = "spiffe://writ.local/agent/a";
    const OTHER: &str = "spiffe://writ.local/agent/b";
    const WORKLOAD: &str = "spiffe://writ.local/ns/prod/sa/w";

    /// A 2048-bit RSA public key (openssl), only to be refused or loaded, never used.
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqbF/h3ovbQtKRIct6LWO
Jz32zSEVB1bap38QVjFKRPaJfszPgP0zc+Y8Fpfez4O1PxLILlxHtoNUV65R1kay
+1jVKPAX8oJDPAGV4KFoRRb4WxmTrJW5dzQ5FslShRaLq/U33CFe07jLBHDvV+6B
d/bSJs6qENabtxiayqTg93ce9Ysu5Kuo08H/H9bWsLfTVhNcAioFERIt+8zFLsmD
Avj9sTtOE/rQ528pyAT30xw06n484KJ4X8mSOAjHah3aFwFvDbH5VM/F6LXT7BTt
He1M0ViL0ozmq/Jzbh15pvU6yxv+3D25752l/crbqBKxd0icOMGeNw7xXJFOGrNj
7QIDAQAB
-----END PUBLIC KEY-----";
    const RSA_N: &str = "qbF_h3ovbQtKRIct6LWOJz32zSEVB1bap38QVjFKRPaJfszPgP0zc-Y8Fpfez4O1PxLILlxHtoNUV65R1kay-1jVKPAX8oJDPAGV4KFoRRb4WxmTrJW5dzQ5FslShRaLq_U33CFe07jLBHDvV-6Bd_bSJs6qENabtxiayqTg93ce9Ysu5Kuo08H_H9bWsLfTVhNcAioFERIt-8zFLsmDAvj9sTtOE_rQ528pyAT30xw06n484KJ4X8mSOAjHah3aFwFvDbH5VM_F6LXT7BTtHe1M0ViL0ozmq_Jzbh15pvU6yxv-3D25752l_crbqBKxd0icOMGeNw7xXJFOGrNj7Q";

    /// A key pair that signs test assertions.
    struct Signer {
        alg: Algorithm,
        private_pem: String,
        public_pem: String,
        raw_public: Vec<u8>,
    }

    impl Signer {
        fn ed25519() -> Self {
            Self::generate(&rcgen::PKCS_ED25519, Algorithm::EdDSA)
        }

        fn p256() -> Self {
            Self::generate(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
        }

        fn generate(kind: &'static rcgen::SignatureAlgorithm, alg: Algorithm) -> Self {
            let pair = rcgen::KeyPair::generate_for(kind).unwrap();
            Signer {
                alg,
                private_pem: pair.serialize_pem(),
                public_pem: pair.public_key_pem(),
                raw_public: pair.public_key_raw().to_vec(),
            }
        }

        fn registered(&self, kid: Option<&str>) -> RegisteredKey {
            parse_registered_key(&self.public_pem, kid.map(str::to_owned)).unwrap()
        }

        /// The public key as a JWK (`use` and `kid` added by the caller).
        fn jwk(&self) -> Value {
            let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            match self.alg {
                Algorithm::EdDSA => {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&self.raw_public)})
                }
                _ => json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64(&self.raw_public[1..33]), "y": b64(&self.raw_public[33..]),
                }),
            }
        }

        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = kid.map(str::to_owned);
            let key = match self.alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(self.private_pem.as_bytes()),
                _ => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
            }
            .unwrap();
            jsonwebtoken::encode(&header, claims, &key).unwrap()
        }
    }

    fn claims(sub: &str, jti: &str) -> Value {
        json!({"iss": sub, "sub": sub, "aud": AUD, "iat": NOW, "exp": NOW + 60, "jti": jti})
    }

    fn verifier() -> AssertionVerifier {
        AssertionVerifier::new(AssertionConfig::new(AUD, "writ.local"), STARTED).unwrap()
    }

    type Registry = HashMap<String, Arc<[RegisteredKey]>>;

    fn registry(entries: Vec<(&str, Vec<RegisteredKey>)>) -> Registry {
        entries
            .into_iter()
            .map(|(party, keys)| (party.to_owned(), Arc::from(keys)))
            .collect()
    }

    fn verify_at(
        v: &AssertionVerifier,
        reg: &Registry,
        jwt: &str,
        now: u64,
    ) -> Result<VerifiedAssertion, AssertionError> {
        v.verify(jwt, &|sub| reg.get(sub).cloned(), now)
    }

    fn verify(
        v: &AssertionVerifier,
        reg: &Registry,
        jwt: &str,
    ) -> Result<VerifiedAssertion, AssertionError> {
        verify_at(v, reg, jwt, NOW)
    }

    /// The refusal's message, after checking it is a `Rejected` (UNAUTHENTICATED).
    #[track_caller]
    fn rejection(result: Result<VerifiedAssertion, AssertionError>) -> String {
        match result {
            Err(e @ AssertionError::Rejected(_)) => {
                let message = e.to_string();
                assert!(message.starts_with(PREFIX), "{message}");
                message
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// Checks that `result` is a `Rejected` whose message contains `expected`.
    #[track_caller]
    fn rejected_with(result: Result<VerifiedAssertion, AssertionError>, expected: &str) {
        let m = rejection(result);
        assert!(m.contains(expected), "{m}\n  does not say: {expected}");
    }

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn a_valid_ed25519_assertion_proves_its_party() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let verified = verify(&verifier(), &reg, &ed.sign(None, &claims(PARTY, "j1"))).unwrap();
        assert_eq!(
            verified,
            VerifiedAssertion {
                subject: PARTY.into(),
                kind: AssertionKind::ClientAssertion,
                expires_at: NOW + 60,
                kid: None,
                replay: (
                    replay_key(PARTY, "j1"),
                    NOW + 60 + verifier().config.leeway.as_secs()
                ),
            }
        );
        assert_ne!(replay_key(PARTY, "j1"), replay_key(PARTY, "j2"));
        assert_ne!(replay_key("ab", "c"), replay_key("a", "bc"));
    }

    #[test]
    fn a_valid_es256_assertion_with_a_jwk_registered_key() {
        let ec = Signer::p256();
        let mut jwk = ec.jwk();
        jwk["kid"] = json!("ec-1");
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        let key = parse_registered_key(&jwk.to_string(), None).unwrap();
        assert_eq!((key.kid(), key.alg()), (Some("ec-1"), Algorithm::ES256));
        let reg = registry(vec![(PARTY, vec![key])]);
        let verified = verify(
            &verifier(),
            &reg,
            &ec.sign(Some("ec-1"), &claims(PARTY, "j1")),
        );
        assert_eq!(verified.unwrap().kid.as_deref(), Some("ec-1"));
        // The same key as PEM verifies too.
        let reg = registry(vec![(PARTY, vec![ec.registered(None)])]);
        verify(&verifier(), &reg, &ec.sign(None, &claims(PARTY, "j2"))).unwrap();
    }

    #[test]
    fn time_claims_are_checked() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = verifier();
        let with = |jti: &str, changes: Value| {
            let mut c = claims(PARTY, jti);
            for (k, val) in changes.as_object().unwrap() {
                c[k] = val.clone();
            }
            ed.sign(None, &c)
        };
        // Expired beyond the leeway; within it, still good.
        rejected_with(
            verify(&v, &reg, &with("a", json!({"exp": NOW - 31}))),
            "`exp` is 31 s in the past",
        );
        verify(&v, &reg, &with("b", json!({"exp": NOW - 30}))).unwrap();
        // Too long-lived.
        rejected_with(
            verify(&v, &reg, &with("c", json!({"exp": NOW + 600}))),
            "`exp` is 600 s ahead; at most 300 s",
        );
        verify(&v, &reg, &with("d", json!({"exp": NOW + 330}))).unwrap();
        // Not valid yet.
        rejected_with(
            verify(&v, &reg, &with("e", json!({"nbf": NOW + 31}))),
            "`nbf` is 31 s ahead",
        );
        verify(&v, &reg, &with("f", json!({"nbf": NOW + 30}))).unwrap();
        // Issued in the future.
        rejected_with(
            verify(&v, &reg, &with("g", json!({"iat": NOW + 31}))),
            "`iat` is 31 s in the future",
        );
        // Not a NumericDate.
        rejected_with(
            verify(&v, &reg, &with("h", json!({"exp": "soon"}))),
            "`exp` must be a NumericDate",
        );
        rejected_with(
            verify(&v, &reg, &with("i", json!({"exp": -5}))),
            "`exp` must be a NumericDate",
        );
    }

    #[test]
    fn exp_iat_and_jti_are_required() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = verifier();
        for claim in ["exp", "iat", "jti", "aud", "iss", "sub"] {
            let mut c = claims(PARTY, &format!("jti-{claim}"));
            c.as_object_mut().unwrap().remove(claim);
            let m = rejection(verify(&v, &reg, &ed.sign(None, &c)));
            assert!(
                m.contains(&format!("`{claim}` is required")),
                "{claim}: {m}"
            );
        }
        for bad_jti in [json!(""), json!("x".repeat(257)), json!(7)] {
            let mut c = claims(PARTY, "unused");
            c["jti"] = bad_jti;
            rejected_with(verify(&v, &reg, &ed.sign(None, &c)), "`jti` must be");
        }
    }

    #[test]
    fn an_assertion_issued_before_the_server_started_is_refused() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = AssertionVerifier::new(AssertionConfig::new(AUD, "writ.local"), NOW).unwrap();
        let mut c = claims(PARTY, "j1");
        c["iat"] = json!(NOW - 1);
        rejected_with(
            verify(&v, &reg, &ed.sign(None, &c)),
            "`iat` is before this server started",
        );
        c["iat"] = json!(NOW);
        verify(&v, &reg, &ed.sign(None, &c)).unwrap();
    }

    #[test]
    fn aud_must_name_this_writ() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = verifier();
        let mut c = claims(PARTY, "j1");
        for wrong in [
            json!("spiffe://writ.local/other"),
            json!(["spiffe://writ.local/other", "x"]),
            json!([]),
            json!(AUD.to_uppercase()),
        ] {
            c["aud"] = wrong;
            rejected_with(
                verify(&v, &reg, &ed.sign(None, &c)),
                "`aud` does not name this Writ (expected \"spiffe://writ.local/writ\")",
            );
        }
        c["aud"] = json!(["spiffe://writ.local/other", 5]);
        rejected_with(verify(&v, &reg, &ed.sign(None, &c)), "an array of strings");
        c["aud"] = json!(["spiffe://writ.local/other", AUD]);
        verify(&v, &reg, &ed.sign(None, &c)).unwrap();
    }

    #[test]
    fn iss_must_equal_sub() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let mut c = claims(PARTY, "j1");
        c["iss"] = json!(OTHER);
        rejected_with(
            verify(&verifier(), &reg, &ed.sign(None, &c)),
            "`iss` must equal `sub`",
        );
    }

    #[test]
    fn a_replayed_jti_is_refused_and_another_subject_may_reuse_it() {
        let ed = Signer::ed25519();
        let reg = registry(vec![
            (PARTY, vec![ed.registered(None)]),
            (OTHER, vec![ed.registered(None)]),
        ]);
        let v = verifier();
        let jwt = ed.sign(None, &claims(PARTY, "same"));
        verify(&v, &reg, &jwt).unwrap();
        let replay = verify_at(&v, &reg, &jwt, NOW + 5).unwrap_err();
        assert!(matches!(replay, AssertionError::Replayed), "{replay:?}");
        assert!(replay.to_string().contains("`jti` was already used"));
        // A fresh assertion with the same jti is still a replay of (sub, jti).
        let again = ed.sign(
            None,
            &json!({"iss": PARTY, "sub": PARTY, "aud": AUD,
            "iat": NOW + 1, "exp": NOW + 50, "jti": "same"}),
        );
        assert!(matches!(
            verify(&v, &reg, &again),
            Err(AssertionError::Replayed)
        ));
        verify(&v, &reg, &ed.sign(None, &claims(OTHER, "same"))).unwrap();
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (ed, stranger) = (Signer::ed25519(), Signer::ed25519());
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        rejected_with(
            verify(&verifier(), &reg, &stranger.sign(None, &claims(PARTY, "j"))),
            "does not verify with any registered key",
        );
        // A tampered payload, the signature kept, fails as well.
        let jwt = ed.sign(None, &claims(PARTY, "j"));
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut c = claims(PARTY, "j");
        c["sub"] = json!(PARTY);
        c["exp"] = json!(NOW + 61);
        let forged = format!("{}.{}.{}", parts[0], b64(&c.to_string()), parts[2]);
        rejected_with(verify(&verifier(), &reg, &forged), "does not verify");
    }

    #[test]
    fn alg_none_and_alg_confusion_are_refused() {
        let ed = Signer::ed25519();
        let ec = Signer::p256();
        let reg = registry(vec![(PARTY, vec![ed.registered(Some("k1"))])]);
        let v = verifier();
        let payload = b64(&claims(PARTY, "j").to_string());

        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        rejected_with(verify(&v, &reg, &none), "`alg` \"none\" is refused");

        // HS256 keyed with the public key's text: the classic confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims(PARTY, "j"),
            &EncodingKey::from_secret(ed.public_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        rejected_with(
            verify(&v, &reg, &hs),
            "`alg` HS256 (a shared-secret MAC) is refused",
        );

        // ES256 against an Ed25519 key: by kid, and without one.
        rejected_with(
            verify(&v, &reg, &ec.sign(Some("k1"), &claims(PARTY, "j"))),
            "`alg` ES256 does not match the registered key",
        );
        rejected_with(
            verify(&v, &reg, &ec.sign(None, &claims(PARTY, "j"))),
            "no registered key of `sub` is for `alg` ES256",
        );

        // An algorithm nobody registers keys for.
        let rs = format!("{}.{payload}.AAAA", b64(r#"{"alg":"RS256"}"#));
        rejected_with(
            verify(&v, &reg, &rs),
            "`alg` RS256 is not accepted for client assertions",
        );
        let odd = format!("{}.{payload}.AAAA", b64(r#"{"alg":"ES256K"}"#));
        rejected_with(verify(&v, &reg, &odd), "`alg` \"ES256K\" is not supported");

        // A key embedded in the header is not trusted: the stranger's own `jwk`.
        let stranger = Signer::ed25519();
        let mut header = Header::new(Algorithm::EdDSA);
        header.jwk = Some(serde_json::from_value(stranger.jwk()).unwrap());
        let key = EncodingKey::from_ed_pem(stranger.private_pem.as_bytes()).unwrap();
        let embedded = jsonwebtoken::encode(&header, &claims(PARTY, "j"), &key).unwrap();
        rejected_with(verify(&v, &reg, &embedded), "does not verify");
    }

    #[test]
    fn an_unknown_party_without_a_bundle_is_refused() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)]), (OTHER, vec![])]);
        for sub in [OTHER, "spiffe://writ.local/nobody"] {
            let m = rejection(verify(&verifier(), &reg, &ed.sign(None, &claims(sub, "j"))));
            assert!(m.ends_with("no registered key for `sub`"), "{m}");
        }
    }

    #[test]
    fn the_kid_selects_the_key() {
        let (a, b) = (Signer::ed25519(), Signer::p256());
        let reg = registry(vec![(
            PARTY,
            vec![a.registered(Some("a")), b.registered(Some("b"))],
        )]);
        let v = verifier();
        let got = verify(&v, &reg, &b.sign(Some("b"), &claims(PARTY, "1"))).unwrap();
        assert_eq!(got.kid.as_deref(), Some("b"));
        let got = verify(&v, &reg, &a.sign(Some("a"), &claims(PARTY, "2"))).unwrap();
        assert_eq!(got.kid.as_deref(), Some("a"));
        // Without a kid, each key of the header's alg is tried.
        let got = verify(&v, &reg, &b.sign(None, &claims(PARTY, "3"))).unwrap();
        assert_eq!(got.kid.as_deref(), Some("b"));
        // A kid naming no key, or another key, is refused.
        rejected_with(
            verify(&v, &reg, &a.sign(Some("zz"), &claims(PARTY, "4"))),
            "`kid` \"zz\" names no registered key of `sub`",
        );
        let second = Signer::ed25519();
        let reg = registry(vec![(
            PARTY,
            vec![a.registered(Some("a")), second.registered(Some("c"))],
        )]);
        rejected_with(
            verify(&v, &reg, &second.sign(Some("a"), &claims(PARTY, "5"))),
            "does not verify with registered key \"a\"",
        );
        let got = verify(&v, &reg, &second.sign(None, &claims(PARTY, "6"))).unwrap();
        assert_eq!(
            got.kid.as_deref(),
            Some("c"),
            "the second Ed25519 key was tried"
        );
        // Without a kid, at most MAX_KEYS_PER_PARTY keys are tried, even if more are
        // registered (the policy loader refuses that, but the verifier does not rely on it).
        let mut keys: Vec<RegisteredKey> = (0..MAX_KEYS_PER_PARTY)
            .map(|_| Signer::ed25519().registered(None))
            .collect();
        keys.push(second.registered(None));
        let reg = registry(vec![(PARTY, keys)]);
        rejected_with(
            verify(&v, &reg, &second.sign(None, &claims(PARTY, "7"))),
            "does not verify with any registered key of `sub`",
        );
    }

    #[test]
    fn a_forged_assertion_does_not_enter_the_replay_cache() {
        let (ed, stranger) = (Signer::ed25519(), Signer::ed25519());
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = verifier();
        rejection(verify(&v, &reg, &stranger.sign(None, &claims(PARTY, "X"))));
        // A verified one whose other claims fail does not either.
        let mut wrong_aud = claims(PARTY, "X");
        wrong_aud["aud"] = json!("elsewhere");
        rejection(verify(&v, &reg, &ed.sign(None, &wrong_aud)));
        verify(&v, &reg, &ed.sign(None, &claims(PARTY, "X"))).unwrap();
    }

    #[test]
    fn structural_problems_are_malformed() {
        let ed = Signer::ed25519();
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let v = verifier();
        let good = ed.sign(None, &claims(PARTY, "j"));
        let (header, rest) = good.split_once('.').unwrap();
        let huge = format!("{good}{}", "A".repeat(MAX_ASSERTION_BYTES));
        let cases = [
            (String::new(), "not a compact JWS"),
            ("abc".into(), "not a compact JWS"),
            (format!("{good}.x"), "not a compact JWS"),
            (format!("Bearer {good}"), "only base64url"),
            (huge, "bytes; at most 8192"),
            (format!("{header}.%%%.x"), "only base64url"),
            (
                format!("{}.{rest}", b64("[1,2,3,4,5]")),
                "header is not a JSON object",
            ),
            (
                format!("{}.{rest}", b64(r#"{"alg":"EdDSA","alg":"none"}"#)),
                "duplicate field",
            ),
            (
                format!("{header}.{}.AA", b64("not json")),
                "payload is not a JSON object",
            ),
            (format!("{header}.{}.AA", "A"), "payload is not base64url"),
        ];
        for (jwt, expected) in cases {
            match verify(&v, &reg, &jwt) {
                Err(e @ AssertionError::Malformed(_)) => {
                    let m = e.to_string();
                    assert!(m.starts_with(PREFIX) && m.contains(expected), "{m}");
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
        // `crit` extensions are not understood, so refused.
        let mut header = Header::new(Algorithm::EdDSA);
        header.crit = Some(vec!["exp".into()]);
        let key = EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap();
        let crit = jsonwebtoken::encode(&header, &claims(PARTY, "c"), &key).unwrap();
        rejected_with(verify(&v, &reg, &crit), "`crit`");
        // Nor are unencoded payloads (RFC 7797): `b64`, when present, is true.
        let payload = b64(&claims(PARTY, "b").to_string());
        for header in [
            r#"{"alg":"EdDSA","b64":false}"#,
            r#"{"alg":"EdDSA","b64":"no"}"#,
        ] {
            let jwt = format!("{}.{payload}.AAAA", b64(header));
            rejected_with(
                verify(&v, &reg, &jwt),
                "unencoded payloads (`b64`) are not supported",
            );
        }
    }

    #[test]
    fn messages_never_echo_the_assertion() {
        let (ed, stranger) = (Signer::ed25519(), Signer::ed25519());
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let jwt = stranger.sign(None, &claims(PARTY, "j"));
        let signature = jwt.rsplit('.').next().unwrap();
        let m = verify(&verifier(), &reg, &jwt).unwrap_err().to_string();
        assert!(!m.contains(signature) && !m.contains(&jwt[..20]), "{m}");
    }

    #[test]
    fn registered_keys_refuse_what_is_not_an_ed25519_or_p256_public_key() {
        let refused = |text: &str, expected: &str| {
            let e = parse_registered_key(text, None).unwrap_err();
            assert!(matches!(e, AssertionError::Key(_)), "{e:?}");
            assert!(e.to_string().contains(expected), "{expected}: {e}");
        };
        refused(
            RSA_PEM,
            "an RSA key; only Ed25519 (EdDSA) and P-256 (ES256)",
        );
        let ed = Signer::ed25519();
        refused(&ed.private_pem, "a private key (PEM \"PRIVATE KEY\")");
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        refused(
            &p384.public_key_pem(),
            "an EC key on curve 1.3.132.0.34, not P-256",
        );
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap())
            .unwrap();
        refused(&cert.pem(), "a certificate");
        refused(
            &format!("{}\n{}", ed.public_pem, ed.public_pem),
            "more than one PEM block",
        );
        refused("secret", "expected a PEM public key");
        refused(
            &json!({"kty": "oct", "k": "c2VjcmV0"}).to_string(),
            "a symmetric (HMAC) secret",
        );
        refused(
            &json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"}).to_string(),
            "an RSA key",
        );
        let mut private = ed.jwk();
        private["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        refused(&private.to_string(), "a private key (the JWK has `d`)");
        refused(
            &json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}).to_string(),
            "not 32 bytes",
        );
        refused(&json!({"keys": [ed.jwk()]}).to_string(), "a JWK set");
        let mut wrong_alg = ed.jwk();
        wrong_alg["alg"] = json!("ES256");
        refused(&wrong_alg.to_string(), "does not fit its key");
        // Not a point on P-256.
        let bad_point = json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        refused(
            &bad_point.to_string(),
            "not a valid P-256 (ES256) public key",
        );
        // A kid that disagrees with the JWK's own.
        let mut with_kid = ed.jwk();
        with_kid["kid"] = json!("own");
        let e = parse_registered_key(&with_kid.to_string(), Some("other".into())).unwrap_err();
        assert!(
            e.to_string().contains("differs from the JWK's own `kid`"),
            "{e}"
        );
        assert_eq!(
            parse_registered_key(&with_kid.to_string(), None)
                .unwrap()
                .kid(),
            Some("own")
        );
    }

    #[test]
    fn a_party_registers_at_most_eight_keys_with_distinct_kids() {
        let ed = Signer::ed25519();
        let keys: Vec<RegisteredKey> = (0..8)
            .map(|i| ed.registered(Some(&i.to_string())))
            .collect();
        check_party_keys(&keys).unwrap();
        let e = check_party_keys(&[keys.clone(), vec![ed.registered(None)]].concat()).unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
        let e =
            check_party_keys(&[ed.registered(Some("a")), ed.registered(Some("a"))]).unwrap_err();
        assert!(
            e.to_string().contains("kid \"a\" is registered twice"),
            "{e}"
        );
        check_party_keys(&[ed.registered(None), ed.registered(None)]).unwrap();
    }

    #[test]
    fn the_replay_cache_refuses_rather_than_evicts_and_frees_expired_entries() {
        let cache = MemoryReplayCache::new(3, 2);
        cache.check_and_record("a", "1", NOW + 10, NOW).unwrap();
        cache.check_and_record("a", "2", NOW + 20, NOW).unwrap();
        assert_eq!(
            cache.check_and_record("a", "3", NOW + 10, NOW),
            Err(Replay::SubjectFull)
        );
        cache.check_and_record("b", "1", NOW + 10, NOW).unwrap();
        assert_eq!(
            cache.check_and_record("c", "1", NOW + 10, NOW),
            Err(Replay::Full)
        );
        // Nothing was evicted: every live entry is still a replay.
        for (s, j) in [("a", "1"), ("a", "2"), ("b", "1")] {
            assert_eq!(
                cache.check_and_record(s, j, NOW + 10, NOW),
                Err(Replay::Seen),
                "{s} {j}"
            );
        }
        assert_eq!(cache.len(), 3);
        // The last second of an entry's life still counts; after it, the slot is free
        // (purged from shards that were not touched, too).
        assert_eq!(
            cache.check_and_record("c", "1", NOW + 30, NOW + 10),
            Err(Replay::Full)
        );
        cache
            .check_and_record("c", "1", NOW + 30, NOW + 11)
            .unwrap();
        cache
            .check_and_record("c", "2", NOW + 30, NOW + 11)
            .unwrap();
        assert_eq!(cache.len(), 3, "a/1 and b/1 purged; a/2, c/1, c/2 live");
        cache
            .check_and_record("a", "1", NOW + 30, NOW + 11)
            .unwrap_err();
        cache
            .check_and_record("a", "3", NOW + 30, NOW + 21)
            .unwrap();
        // Distinct pairs are distinct entries, even when the concatenations agree.
        let cache = MemoryReplayCache::new(10, 10);
        cache.check_and_record("ab", "c", NOW, NOW).unwrap();
        cache.check_and_record("a", "bc", NOW, NOW).unwrap();
    }

    #[test]
    fn a_full_replay_cache_refuses_with_its_own_error() {
        let ed = Signer::ed25519();
        let reg = registry(vec![
            (PARTY, vec![ed.registered(None)]),
            (OTHER, vec![ed.registered(None)]),
        ]);
        let mut config = AssertionConfig::new(AUD, "writ.local");
        config.max_replay_entries = 2;
        config.max_replay_entries_per_subject = 1;
        let v = AssertionVerifier::new(config, STARTED).unwrap();
        verify(&v, &reg, &ed.sign(None, &claims(PARTY, "1"))).unwrap();
        let e = verify(&v, &reg, &ed.sign(None, &claims(PARTY, "2"))).unwrap_err();
        assert!(
            matches!(e, AssertionError::ReplayCacheFull { per_subject: true }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("too many live assertions for this `sub`"),
            "{e}"
        );
        verify(&v, &reg, &ed.sign(None, &claims(OTHER, "1"))).unwrap();
        let third = "spiffe://writ.local/agent/c";
        let reg = registry(vec![(third, vec![ed.registered(None)])]);
        let e = verify(&v, &reg, &ed.sign(None, &claims(third, "1"))).unwrap_err();
        assert!(
            matches!(e, AssertionError::ReplayCacheFull { per_subject: false }),
            "{e:?}"
        );
        // Once the first ones expire (exp + leeway), there is room again.
        verify_at(&v, &reg, &ed.sign(None, &claims(third, "2")), NOW + 91).unwrap_err();
        let mut late = claims(third, "2");
        late["exp"] = json!(NOW + 200);
        verify_at(&v, &reg, &ed.sign(None, &late), NOW + 91).unwrap();
    }

    // JWT-SVIDs.

    fn bundle_file(dir: &Path, keys: &[Value]) -> PathBuf {
        let path = dir.join("bundle.json");
        write_bundle(&path, keys);
        path
    }

    fn write_bundle(path: &Path, keys: &[Value]) {
        let doc = json!({"keys": keys, "spiffe_refresh_hint": 300, "spiffe_sequence": 1});
        std::fs::write(path, doc.to_string()).unwrap();
    }

    fn svid_key(signer: &Signer, kid: &str) -> Value {
        let mut jwk = signer.jwk();
        jwk["use"] = json!("jwt-svid");
        jwk["kid"] = json!(kid);
        jwk
    }

    fn svid_claims(sub: &str, jti: &str) -> Value {
        json!({"sub": sub, "aud": [AUD], "iat": NOW, "exp": NOW + 120, "jti": jti})
    }

    fn svid_verifier(bundle: PathBuf) -> AssertionVerifier {
        let mut config = AssertionConfig::new(AUD, "writ.local");
        config.jwt_svid_bundle = Some(bundle);
        AssertionVerifier::new(config, STARTED).unwrap()
    }

    #[test]
    fn a_jwt_svid_verifies_against_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (ec, ed) = (Signer::p256(), Signer::ed25519());
        // An X.509 authority key (another `use`) is ignored; so are an RSA key too small
        // and JWT-SVID keys without a usable `kid` (none, or longer than 256 bytes).
        let x509 = json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA",
            "x5c": ["AAAA"]});
        let small_rsa = json!({"use": "jwt-svid", "kid": "small", "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"});
        let rsa = json!({"use": "jwt-svid", "kid": "rsa", "kty": "RSA", "n": RSA_N, "e": "AQAB"});
        let mut no_kid = svid_key(&Signer::ed25519(), "unused");
        no_kid.as_object_mut().unwrap().remove("kid");
        let long_kid = svid_key(&Signer::ed25519(), &"k".repeat(MAX_KID_BYTES + 1));
        let path = bundle_file(
            dir.path(),
            &[
                x509,
                svid_key(&ec, "ec"),
                svid_key(&ed, "ed"),
                small_rsa,
                rsa,
                no_kid,
                long_kid,
            ],
        );
        let v = svid_verifier(path);
        let keys: Vec<String> = {
            let mut k: Vec<String> = v.bundle.load().keys.keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys, ["ec", "ed", "rsa"]);
        let reg = registry(vec![(PARTY, vec![ed.registered(None)])]);
        let got = verify(&v, &reg, &ec.sign(Some("ec"), &svid_claims(WORKLOAD, "1"))).unwrap();
        assert_eq!(
            got,
            VerifiedAssertion {
                subject: WORKLOAD.into(),
                kind: AssertionKind::JwtSvid,
                expires_at: NOW + 120,
                kid: Some("ec".into()),
                replay: (
                    replay_key(WORKLOAD, "1"),
                    NOW + 120 + v.config.leeway.as_secs()
                ),
            }
        );
        verify(&v, &reg, &ed.sign(Some("ed"), &svid_claims(WORKLOAD, "2"))).unwrap();
        // Replays are refused here too.
        let jwt = ed.sign(Some("ed"), &svid_claims(WORKLOAD, "3"));
        verify(&v, &reg, &jwt).unwrap();
        assert!(matches!(
            verify(&v, &reg, &jwt),
            Err(AssertionError::Replayed)
        ));
        // A key of the bundle with the wrong alg, or signed by another key.
        rejected_with(
            verify(&v, &reg, &ed.sign(Some("ec"), &svid_claims(WORKLOAD, "4"))),
            "`alg` EdDSA does not match the JWT-SVID bundle key \"ec\" (ES256)",
        );
        rejected_with(
            verify(
                &v,
                &reg,
                &Signer::p256().sign(Some("ec"), &svid_claims(WORKLOAD, "5")),
            ),
            "does not verify with JWT-SVID bundle key \"ec\"",
        );
        // A registered party is not looked up in the bundle.
        rejected_with(
            verify(&v, &reg, &ec.sign(Some("ec"), &svid_claims(PARTY, "6"))),
            "names no registered key of `sub`",
        );
        // `typ`, when present, is JWT or JOSE.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed".into());
        header.typ = Some("at+jwt".into());
        let key = EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap();
        let at = jsonwebtoken::encode(&header, &svid_claims(WORKLOAD, "7"), &key).unwrap();
        rejected_with(verify(&v, &reg, &at), "`typ` is \"JWT\" or \"JOSE\"");
    }

    #[test]
    fn a_jwt_svid_must_be_of_this_trust_domain_and_name_a_bundle_key() {
        let dir = tempfile::tempdir().unwrap();
        let ec = Signer::p256();
        let v = svid_verifier(bundle_file(dir.path(), &[svid_key(&ec, "ec")]));
        let reg = Registry::new();
        for (sub, expected) in [
            (
                "spiffe://evil.example/ns/prod/sa/w",
                "is in trust domain \"evil.example\"",
            ),
            (
                "spiffe://writ.local.evil/w",
                "is in trust domain \"writ.local.evil\"",
            ),
            ("spiffe://writ.local", "has no path"),
            ("spiffe://writ.local/", "has no path"),
            ("spiffe://writ.local/a//b", "invalid path"),
            ("spiffe://writ.local/a/../b", "invalid path"),
            ("spiffe://writ.local/a?b", "invalid path"),
            ("https://writ.local/w", "is not a SPIFFE ID"),
        ] {
            let m = rejection(verify(
                &v,
                &reg,
                &ec.sign(Some("ec"), &svid_claims(sub, "1")),
            ));
            assert!(m.contains(expected), "{sub}: {m}");
        }
        rejected_with(
            verify(
                &v,
                &reg,
                &ec.sign(Some("nope"), &svid_claims(WORKLOAD, "1")),
            ),
            "`kid` \"nope\" is not in the JWT-SVID bundle",
        );
        rejected_with(
            verify(&v, &reg, &ec.sign(None, &svid_claims(WORKLOAD, "1"))),
            "a JWT-SVID needs a `kid` header",
        );
        // The claims are checked as for client assertions (jti included).
        let mut c = svid_claims(WORKLOAD, "1");
        c.as_object_mut().unwrap().remove("jti");
        rejected_with(
            verify(&v, &reg, &ec.sign(Some("ec"), &c)),
            "`jti` is required",
        );
        c["jti"] = json!("1");
        c["aud"] = json!("spiffe://writ.local/other");
        rejected_with(
            verify(&v, &reg, &ec.sign(Some("ec"), &c)),
            "`aud` does not name this Writ",
        );
        verify(&v, &reg, &ec.sign(Some("ec"), &svid_claims(WORKLOAD, "1"))).unwrap();
    }

    #[test]
    fn the_bundle_reloads_new_keys_and_keeps_the_old_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Signer::p256(), Signer::ed25519());
        let path = bundle_file(dir.path(), &[svid_key(&old, "old")]);
        let v = svid_verifier(path.clone());
        let reg = Registry::new();
        let new_svid = new.sign(Some("new"), &svid_claims(WORKLOAD, "n1"));
        rejection(verify(&v, &reg, &new_svid));
        assert!(!v.reload_bundle().unwrap(), "unchanged");

        write_bundle(&path, &[svid_key(&old, "old"), svid_key(&new, "new")]);
        assert!(v.reload_bundle().unwrap());
        verify(&v, &reg, &new_svid).unwrap();

        for broken in ["{\"keys\": [tr", "{}", "[]", ""] {
            std::fs::write(&path, broken).unwrap();
            let e = v.reload_bundle().unwrap_err();
            assert!(matches!(e, AssertionError::Config(_)), "{e:?}");
            assert!(e.to_string().contains("JWT-SVID bundle"), "{e}");
        }
        // Over MAX_BUNDLE_BYTES, a bundle is refused even though it is otherwise valid.
        let padded = format!(
            "{}{}",
            json!({"keys": [svid_key(&old, "old")]}),
            " ".repeat(MAX_BUNDLE_BYTES as usize)
        );
        std::fs::write(&path, padded).unwrap();
        let e = v.reload_bundle().unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        let dup = json!({"keys": [svid_key(&old, "old"), svid_key(&new, "old")]});
        std::fs::write(&path, dup.to_string()).unwrap();
        let e = v.reload_bundle().unwrap_err();
        assert!(e.to_string().contains("`kid` \"old\" appears twice"), "{e}");
        std::fs::remove_file(&path).unwrap();
        v.reload_bundle().unwrap_err();
        // Both keys still work.
        verify(
            &v,
            &reg,
            &old.sign(Some("old"), &svid_claims(WORKLOAD, "o1")),
        )
        .unwrap();
        verify(
            &v,
            &reg,
            &new.sign(Some("new"), &svid_claims(WORKLOAD, "n2")),
        )
        .unwrap();

        // Removing every key revokes them.
        write_bundle(&path, &[]);
        assert!(v.reload_bundle().unwrap());
        rejection(verify(
            &v,
            &reg,
            &old.sign(Some("old"), &svid_claims(WORKLOAD, "o2")),
        ));

        // A broken bundle at startup is an error.
        std::fs::write(&path, "nope").unwrap();
        let mut config = AssertionConfig::new(AUD, "writ.local");
        config.jwt_svid_bundle = Some(path);
        let e = AssertionVerifier::new(config, STARTED).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[tokio::test]
    async fn the_reloader_picks_up_a_changed_bundle_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Signer::p256(), Signer::ed25519());
        let path = bundle_file(dir.path(), &[svid_key(&old, "old")]);
        let v = Arc::new(svid_verifier(path.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = v.spawn_bundle_reloader(Duration::from_millis(100), stopped);
        write_bundle(&path, &[svid_key(&new, "new")]);
        let reg = Registry::new();
        let mut n = 0;
        let verified = loop {
            n += 1;
            let jwt = new.sign(Some("new"), &svid_claims(WORKLOAD, &n.to_string()));
            match verify(&v, &reg, &jwt) {
                Ok(verified) => break verified,
                Err(_) if n < 600 => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("the reloader never loaded the new bundle: {e}"),
            }
        };
        assert_eq!(verified.kid.as_deref(), Some("new"));
        stop.send(true).unwrap();
        task.await.unwrap();
        // It also stops when the sender is dropped.
        let (stop, stopped) = watch::channel(false);
        let task = v.spawn_bundle_reloader(Duration::from_millis(100), stopped);
        drop(stop);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the reloader stops once its sender is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn without_a_bundle_the_reloader_ends_at_once() {
        let v = Arc::new(verifier());
        let (_stop, stopped) = watch::channel(false);
        let task = v.spawn_bundle_reloader(Duration::from_millis(100), stopped);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the reloader ends at once when no bundle is configured")
            .unwrap();
    }

    #[test]
    fn the_configuration_is_checked() {
        let mut config = AssertionConfig::new("", "writ.local");
        assert!(AssertionVerifier::new(config.clone(), 0).is_err());
        config.audience = AUD.into();
        config.max_replay_entries = 0;
        assert!(AssertionVerifier::new(config.clone(), 0).is_err());
        config.max_replay_entries = 1;
        config.trust_domain = "Writ Local".into();
        config.jwt_svid_bundle = Some("/nonexistent".into());
        let e = AssertionVerifier::new(config, 0).unwrap_err();
        assert!(e.to_string().contains("not a SPIFFE trust domain"), "{e}");
    }
}
