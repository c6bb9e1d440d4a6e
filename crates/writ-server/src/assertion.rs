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
//!   can be replayed once against the new one. Several Writ nodes each keep their own
//!   cache, so an assertion can be used once per node; the [`ReplayCache`] trait is where
//!   a shared cache (Redis) plugs in.
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

/// Untrusted text for a message: Debug-quoted (escaped) and cut to 64 characters.
fn shown(text: &str) -> String {
    let mut cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
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
                shown(&given),
                shown(&own)
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

fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err(format!("a kid is 1 to {MAX_KID_BYTES} bytes"));
    }
    Ok(())
}

/// Whether `key` makes a verifier for `alg`: building one parses the key, so an invalid
/// point fails here, at load, instead of on every call. (RSA keys parse only when used;
/// their size is checked separately.)
fn probe(key: &DecodingKey, alg: Algorithm) -> bool {
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
                shown(label)
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
enum JwkKey {
    Ed25519(DecodingKey),
    P256(DecodingKey),
    P384(DecodingKey),
    Rsa(DecodingKey),
}

impl JwkKey {
    fn algs(&self) -> &'static [Algorithm] {
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

    fn into_key(self) -> DecodingKey {
        match self {
            JwkKey::Ed25519(k) | JwkKey::P256(k) | JwkKey::P384(k) | JwkKey::Rsa(k) => k,
        }
    }
}

fn jwk_str<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
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
fn decode_jwk(jwk: &Map<String, Value>) -> Result<JwkKey, String> {
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
            shown(kty),
            crv.map(|c| format!(" on curve {}", shown(c)))
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
            shown(declared),
            alg_str(alg)
        )));
    }
    if let Some(usage) = jwk_str(&jwk, "use").map_err(key_error)?
        && usage != "sig"
    {
        return Err(key_error(format!(
            "the JWK's `use` is {}, not \"sig\"",
            shown(usage)
        )));
    }
    let kid = jwk_str(&jwk, "kid").map_err(key_error)?.map(str::to_owned);
    Ok((alg, key.into_key(), kid))
}

fn alg_str(alg: Algorithm) -> &'static str {
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
        if config.jwt_svid_bundle.is_some() && !valid_trust_domain(&config.trust_domain) {
            return bad(format!(
                "trust domain {} is not a SPIFFE trust domain name (lowercase letters, \
                 digits, '.', '-', '_')",
                shown(&config.trust_domain)
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
    /// `keys_of` gives a party's registered keys (from the policy); a `sub` without any
    /// is checked as a JWT-SVID if a bundle is configured. On success the assertion's
    /// (`sub`, `jti`) is recorded, and the same pair is refused until it expires.
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
                    shown(other)
                )));
            }
        }
        let kid =
            kid.ok_or_else(|| rejected(format!("{NO_KEY}, and a JWT-SVID needs a `kid` header")))?;
        let bundle = self.bundle.load();
        let key = bundle.keys.get(kid).ok_or_else(|| {
            rejected(format!(
                "{NO_KEY}, and `kid` {} is not in the JWT-SVID bundle",
                shown(kid)
            ))
        })?;
        if !key.algs.contains(&alg) {
            return Err(rejected(format!(
                "`alg` {} does not match the JWT-SVID bundle key {} ({})",
                alg_str(alg),
                shown(kid),
                key.algs
                    .iter()
                    .map(|a| alg_str(*a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !signature_verifies(parts, &key.key, alg) {
            return Err(rejected(format!(
                "the signature does not verify with JWT-SVID bundle key {}",
                shown(kid)
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
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        let interval = interval.max(MIN_RELOAD_INTERVAL);
        tokio::spawn(async move {
            let Some(path) = this.config.jwt_svid_bundle.clone() else {
                return;
            };
            let start = tokio::time::Instant::now() + interval;
            let mut ticks = tokio::time::interval_at(start, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = ticks.tick() => {}
                }
                let worker = Arc::clone(&this);
                match tokio::task::spawn_blocking(move || worker.reload_bundle()).await {
                    Ok(Ok(true)) => tracing::info!(
                        path = %path.display(),
                        keys = this.bundle.load().keys.len(),
                        "reloaded the JWT-SVID bundle"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "keeping the previous JWT-SVID bundle");
                    }
                    Err(e) => tracing::warn!(error = %e, "the JWT-SVID bundle reload failed"),
                }
            }
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, its data is still
    // consistent enough to go on with (entries only added or removed whole).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bundle_error(path: &Path, message: String) -> AssertionError {
    AssertionError::Config(format!("JWT-SVID bundle {}: {message}", path.display()))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
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
            return Err(format!("`kid` {} appears twice", shown(kid)));
        }
        match bundle_key(jwk) {
            Ok(key) => {
                out.insert(kid.to_owned(), key);
            }
            Err(reason) => {
                tracing::warn!(kid = %shown(kid), %reason, "ignoring a JWT-SVID bundle key");
            }
        }
    }
    Ok(out)
}

fn bundle_key(jwk: &Map<String, Value>) -> Result<BundleKey, String> {
    if jwk
        .get("kid")
        .and_then(Value::as_str)
        .is_some_and(|k| check_kid(k).is_err())
    {
        return Err(format!("a kid is 1 to {MAX_KID_BYTES} bytes"));
    }
    let key = decode_jwk(jwk)?;
    let mut algs = key.algs().to_vec();
    if let Some(declared) = jwk_str(jwk, "alg")? {
        algs.retain(|a| alg_str(*a) == declared);
        if algs.is_empty() {
            return Err(format!("`alg` {} does not fit the key", shown(declared)));
        }
    }
    let key = key.into_key();
    if !algs.iter().all(|alg| probe(&key, *alg)) {
        return Err("not a valid public key".into());
    }
    Ok(BundleKey { key, algs })
}

/// Whether `td` is a SPIFFE trust domain name.
fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
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
            shown(domain)
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
struct Parts<'a> {
    /// `header.payload`: what the signature covers.
    signing_input: &'a str,
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(jwt: &str) -> Result<Parts<'_>, AssertionError> {
    if jwt.len() > MAX_ASSERTION_BYTES {
        return Err(malformed(format!(
            "{} bytes; at most {MAX_ASSERTION_BYTES}",
            jwt.len()
        )));
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
fn decode_part<T: for<'de> Deserialize<'de>>(part: &str, name: &str) -> Result<T, AssertionError> {
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
            .map_err(|_| rejected(format!("`alg` {} is not supported", shown(alg)))),
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

fn signature_verifies(parts: &Parts<'_>, key: &DecodingKey, alg: Algorithm) -> bool {
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
                    shown(kid)
                ))
            })?;
        if key.alg != alg {
            return Err(rejected(format!(
                "`alg` {} does not match the registered key {} ({})",
                alg_str(alg),
                shown(kid),
                alg_str(key.alg)
            )));
        }
        return if signature_verifies(parts, &key.key, alg) {
            Ok(key)
        } else {
            Err(rejected(format!(
                "the signature does not verify with registered key {}",
                shown(kid)
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
