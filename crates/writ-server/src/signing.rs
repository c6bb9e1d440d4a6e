//! The keys that sign Writ's JWTs (Txn-Token JWTs, signed introspection answers), their
//! rotation, and the JWKS that publishes them.
//!
//! # Keys
//!
//! Two algorithms, both always kept and published: Ed25519 (`EdDSA`) and P-256 (`ES256`);
//! `[signing] algorithm` picks the one that signs. Each key's `kid` is its RFC 7638 JWK
//! thumbprint (SHA-256, base64url), so a `kid` names exactly one public key.
//!
//! # Rotation: publish before use, retire with an overlap
//!
//! Each algorithm has one *current* key (it signs), one *next* key (already in the JWKS,
//! so a verifier that caches the JWKS knows it before it signs anything) and any number
//! of *retired* keys (still in the JWKS for `overlap_seconds` after they stopped signing,
//! so the JWTs they signed keep verifying; then removed from the JWKS and deleted). A
//! rotation, of both algorithms at once, promotes next → current, current → retired and
//! makes a new next. It happens when an operator asks (`writ keys rotate`) and
//! automatically once the current keys are `rotate_after_seconds` old, checked by a task
//! that also removes retired keys once their overlap ended (so removal is late by at most
//! its period, [`Signer::check_interval`]). At most [`MAX_RETIRED`] retired keys per
//! algorithm are kept: beyond that, a rotation drops the oldest retired key that can no
//! longer verify a live JWT (it retired more than a JWT lifetime ago), or is refused.
//!
//! # On disk, and crash safety
//!
//! One file, `<data_dir>/signing-keys.toml` (0600, in the 0700 data directory the server
//! holds locked), lists every key with its state, its timestamps and its private key
//! (PKCS#8 PEM): a manifest that is the whole truth. The first one is installed without
//! ever replacing a file ([`crate::secrets`]); every later state (a rotation, a removal) is
//! written whole to a temporary file, synced, renamed over the manifest, and the
//! directory synced ([`crate::secrets`]'s `replace_private`) *before* it takes effect in
//! memory and before a rotation is acknowledged. So an acknowledged rotation survives
//! kill -9, and a crash half way leaves the manifest before or after, whole: never a
//! state without a current key. A temporary file a crash left behind is deleted at the
//! next start. A manifest that does not parse or breaks an invariant (a `kid` that is not
//! its key's thumbprint, an algorithm without exactly one current and one next key) stops
//! the server rather than being replaced.
//!
//! # Sharing
//!
//! The [`Signer`] is shared (`Arc`) by the gRPC and HTTP faces; its key set sits behind
//! an [`ArcSwap`], so [`Signer::sign`] and [`Signer::jwks`] never wait for a rotation (which
//! builds the next set aside, persists it, then swaps it in). Rotations and removals run
//! one at a time. Key material never appears in `Debug`, logs or errors: logs name kids.

use arc_swap::ArcSwap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// File name of the JWT signing keys' manifest inside the data directory.
pub const SIGNING_KEYS_FILE: &str = "signing-keys.toml";
/// Most retired keys kept (and published) per algorithm.
pub const MAX_RETIRED: usize = 8;
/// Longest `jwt_ttl_seconds`: a Txn-Token JWT cannot be recalled, so it lives minutes.
pub const MAX_JWT_TTL_SECS: u64 = 300;
/// Longest `rotate_after_seconds` and `overlap_seconds` (one year).
pub const MAX_ROTATION_SECS: u64 = 365 * 86_400;
/// Format version of the manifest.
const FORMAT_VERSION: u32 = 1;

/// `[signing]`: the JWT signing keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// Which key signs: `EdDSA` (Ed25519, default) or `ES256` (P-256). Both are kept and
    /// published, so a verifier may support either.
    pub algorithm: SigningAlgorithm,
    /// Lifetime of a Txn-Token JWT, in seconds (never beyond the opaque token it stands
    /// for). Default 60; at most 300.
    pub jwt_ttl_seconds: u64,
    /// Rotate the keys automatically once the current ones are this old. Default 30
    /// days; at least `overlap_seconds`.
    pub rotate_after_seconds: u64,
    /// How long a retired key stays published after it stopped signing. Default 86400;
    /// at least twice `jwt_ttl_seconds` (the JWTs it signed, plus a verifier's JWKS
    /// cache).
    pub overlap_seconds: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            algorithm: SigningAlgorithm::EdDSA,
            jwt_ttl_seconds: 60,
            rotate_after_seconds: 30 * 86_400,
            overlap_seconds: 86_400,
        }
    }
}

impl SigningConfig {
    /// Checks the ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_ttl_seconds == 0 || self.jwt_ttl_seconds > MAX_JWT_TTL_SECS {
            return Err(format!(
                "signing.jwt_ttl_seconds = {} must be in 1..={MAX_JWT_TTL_SECS}",
                self.jwt_ttl_seconds
            ));
        }
        let floor = 2 * self.jwt_ttl_seconds;
        if self.overlap_seconds < floor || self.overlap_seconds > MAX_ROTATION_SECS {
            return Err(format!(
                "signing.overlap_seconds = {} must be in {floor}..={MAX_ROTATION_SECS}: at least \
                 twice signing.jwt_ttl_seconds, so a retired key outlives the JWTs it signed and \
                 the verifiers' cached JWKS",
                self.overlap_seconds
            ));
        }
        if self.rotate_after_seconds < self.overlap_seconds
            || self.rotate_after_seconds > MAX_ROTATION_SECS
        {
            return Err(format!(
                "signing.rotate_after_seconds = {} must be in {}..={MAX_ROTATION_SECS} (at least \
                 signing.overlap_seconds)",
                self.rotate_after_seconds, self.overlap_seconds
            ));
        }
        Ok(())
    }
}

/// A JWS algorithm Writ signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl SigningAlgorithm {
    /// Every algorithm, in the order the JWKS lists them.
    pub const ALL: [SigningAlgorithm; 2] = [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::ES256 => "ES256",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            SigningAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
            SigningAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not signing yet: the next rotation makes it current.
    Next,
    /// Signs (if its algorithm is the configured one) and is published.
    Current,
    /// No longer signs; published until its overlap ends, then deleted.
    Retired,
}

impl KeyState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }
}

/// What an operator sees of one key (never its material). Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// The algorithm.
    pub alg: SigningAlgorithm,
    /// Next, current or retired.
    pub state: KeyState,
    /// This key signs new JWTs now (the current key of the configured algorithm).
    pub signing: bool,
    /// When it was generated (and published).
    pub created_at: u64,
    /// When it became current (current and retired keys).
    pub activated_at: Option<u64>,
    /// When it was retired (retired keys).
    pub retired_at: Option<u64>,
    /// Next and current keys: when automatic rotation promotes or retires it.
    pub rotates_at: Option<u64>,
    /// Retired keys: when it leaves the JWKS and is deleted.
    pub removed_at: Option<u64>,
}

/// Why signing keys could not be loaded, created, rotated or used. Never carries key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key could not be generated, read or written, or the manifest is not valid.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The claims could not be signed.
    #[error("signing: {0}")]
    Sign(String),
    /// The manifest could not be read, written or trusted.
    #[error("signing keys: {0}")]
    File(#[from] crate::secrets::SecretsError),
    /// A rotation was refused (too many retired keys still verify live JWTs).
    #[error("rotation refused: {0}")]
    Refused(String),
}

/// Why a token with `grant` may never be stood for by a Txn-Token JWT, if it may not: a
/// JWT is verified offline, so it cannot spend a use or be held to action checks, and
/// replaying it would exceed what the opaque token allows. The one rule every face
/// (Validate, introspection, the token endpoint) applies, through [`Signer::txn_token`].
pub fn jwt_refusal(grant: &writ_core::Grant) -> Option<&'static str> {
    if grant.max_uses.is_some() {
        Some(
            "txn_token_jwt: the token is use-limited (max_uses), and a JWT cannot spend a use; check it with Validate",
        )
    } else if grant.require_action_check {
        Some(
            "txn_token_jwt: the token answers only action checks (require_action_check), which a JWT cannot make; check it with Validate",
        )
    } else {
        None
    }
}

/// A private key's PEM, which `Debug` never shows.
#[derive(Clone)]
struct Pem(String);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<private key>")
    }
}

/// One key: its public facts, its JWK, and its private key (PEM, and parsed for signing).
#[derive(Clone)]
struct Key {
    kid: String,
    alg: SigningAlgorithm,
    state: KeyState,
    created_at: u64,
    activated_at: Option<u64>,
    retired_at: Option<u64>,
    jwk: Value,
    pem: Pem,
    encoding: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of `alg`'s raw public key (Ed25519: 32 bytes; P-256: the uncompressed
/// point), with its RFC 7638 thumbprint as `kid`.
fn public_jwk(alg: SigningAlgorithm, raw: &[u8]) -> Result<(String, Value), SigningError> {
    // RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace.
    let (canonical, mut jwk) = match alg {
        SigningAlgorithm::EdDSA => {
            if raw.len() != 32 {
                return Err(SigningError::Keys(
                    "an Ed25519 public key has 32 bytes".into(),
                ));
            }
            let x = b64(raw);
            (
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            )
        }
        SigningAlgorithm::ES256 => {
            if raw.len() != 65 || raw[0] != 4 {
                return Err(SigningError::Keys(
                    "a P-256 public key is an uncompressed point of 65 bytes".into(),
                ));
            }
            let (x, y) = (b64(&raw[1..33]), b64(&raw[33..]));
            (
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            )
        }
    };
    let kid = b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
    if let Value::Object(m) = &mut jwk {
        m.insert("kid".into(), kid.clone().into());
        m.insert("use".into(), "sig".into());
        m.insert("alg".into(), alg.as_str().into());
    }
    Ok((kid, jwk))
}

impl Key {
    /// A key from its PKCS#8 PEM; its `kid` is computed.
    fn from_pem(
        alg: SigningAlgorithm,
        pem: String,
        state: KeyState,
        created_at: u64,
    ) -> Result<Key, SigningError> {
        let pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, alg.rcgen()).map_err(|_| {
                SigningError::Keys(format!(
                    "a private key is not a PKCS#8 {} key",
                    alg.as_str()
                ))
            })?;
        let (kid, jwk) = public_jwk(alg, pair.public_key_raw())?;
        let encoding = match alg {
            SigningAlgorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()),
            SigningAlgorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .map_err(|_| SigningError::Keys(format!("key {kid}: not a usable {} key", alg.as_str())))?;
        Ok(Key {
            kid,
            alg,
            state,
            created_at,
            activated_at: None,
            retired_at: None,
            jwk,
            pem: Pem(pem),
            encoding,
        })
    }

    /// A new key from the operating system's RNG (through ring), created at `now`.
    fn generate(alg: SigningAlgorithm, state: KeyState, now: u64) -> Result<Key, SigningError> {
        let pair = rcgen::KeyPair::generate_for(alg.rcgen())
            .map_err(|e| SigningError::Keys(format!("generating an {} key: {e}", alg.as_str())))?;
        let mut key = Key::from_pem(alg, pair.serialize_pem(), state, now)?;
        if state == KeyState::Current {
            key.activated_at = Some(now);
        }
        Ok(key)
    }
}

/// The manifest on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: String,
    alg: SigningAlgorithm,
    state: KeyState,
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activated_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<u64>,
    private_key: String,
}

/// Every key, in JWKS order (by algorithm: current, next, retired newest first), and the
/// JWKS document they make.
#[derive(Debug)]
struct KeySet {
    keys: Vec<Key>,
    jwks: Value,
}

impl KeySet {
    /// Orders `keys`, checks the invariants and builds the JWKS.
    fn new(mut keys: Vec<Key>) -> Result<KeySet, SigningError> {
        let rank = |k: &Key| match k.state {
            KeyState::Current => 0,
            KeyState::Next => 1,
            KeyState::Retired => 2,
        };
        keys.sort_by(|a, b| {
            (a.alg, rank(a), std::cmp::Reverse(a.retired_at)).cmp(&(
                b.alg,
                rank(b),
                std::cmp::Reverse(b.retired_at),
            ))
        });
        for alg in SigningAlgorithm::ALL {
            let of = |state| {
                keys.iter()
                    .filter(|k| k.alg == alg && k.state == state)
                    .count()
            };
            if of(KeyState::Current) != 1 || of(KeyState::Next) != 1 {
                return Err(SigningError::Keys(format!(
                    "{} needs exactly one current and one next key",
                    alg.as_str()
                )));
            }
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err(SigningError::Keys(format!("key {} appears twice", k.kid)));
            }
            let coherent = match k.state {
                KeyState::Next => k.activated_at.is_none() && k.retired_at.is_none(),
                KeyState::Current => k.activated_at.is_some() && k.retired_at.is_none(),
                KeyState::Retired => k.activated_at.is_some() && k.retired_at.is_some(),
            };
            if !coherent {
                return Err(SigningError::Keys(format!(
                    "key {}: a {} key {} activated_at and {} retired_at",
                    k.kid,
                    k.state.as_str(),
                    if k.state == KeyState::Next {
                        "has no"
                    } else {
                        "has"
                    },
                    if k.state == KeyState::Retired {
                        "a"
                    } else {
                        "no"
                    },
                )));
            }
        }
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        Ok(KeySet { keys, jwks })
    }

    /// A current and a next key of each algorithm, made at `now`.
    fn initial(now: u64) -> Result<KeySet, SigningError> {
        let mut keys = Vec::new();
        for alg in SigningAlgorithm::ALL {
            keys.push(Key::generate(alg, KeyState::Current, now)?);
            keys.push(Key::generate(alg, KeyState::Next, now)?);
        }
        KeySet::new(keys)
    }

    fn current(&self, alg: SigningAlgorithm) -> Option<&Key> {
        self.keys
            .iter()
            .find(|k| k.alg == alg && k.state == KeyState::Current)
    }

    /// The set without the retired keys whose overlap ended at `now`; `None` if none did.
    fn pruned(&self, now: u64, overlap: u64) -> Result<Option<KeySet>, SigningError> {
        let over = |k: &Key| {
            k.retired_at
                .is_some_and(|r| r.saturating_add(overlap) <= now)
        };
        if !self.keys.iter().any(over) {
            return Ok(None);
        }
        KeySet::new(self.keys.iter().filter(|k| !over(k)).cloned().collect()).map(Some)
    }

    /// The set after a rotation at `now`: each algorithm's next key becomes current, its
    /// current key retires, and a new next key is made. Retired keys whose overlap ended
    /// are dropped; beyond [`MAX_RETIRED`], the oldest that retired more than `ttl` ago
    /// (it can verify no live JWT) too, or the rotation is refused.
    fn rotated(&self, now: u64, overlap: u64, ttl: u64) -> Result<KeySet, SigningError> {
        let mut keys: Vec<Key> = Vec::with_capacity(self.keys.len() + 2);
        for k in &self.keys {
            let mut k = k.clone();
            match k.state {
                KeyState::Current => {
                    k.state = KeyState::Retired;
                    k.retired_at = Some(now);
                }
                KeyState::Next => {
                    k.state = KeyState::Current;
                    k.activated_at = Some(now);
                }
                KeyState::Retired => {}
            }
            keys.push(k);
        }
        for alg in SigningAlgorithm::ALL {
            keys.push(Key::generate(alg, KeyState::Next, now)?);
        }
        keys.retain(|k| k.retired_at.is_none_or(|r| r.saturating_add(overlap) > now));
        for alg in SigningAlgorithm::ALL {
            loop {
                let retired: Vec<&Key> = keys
                    .iter()
                    .filter(|k| k.alg == alg && k.state == KeyState::Retired)
                    .collect();
                if retired.len() <= MAX_RETIRED {
                    break;
                }
                let oldest = retired
                    .iter()
                    .min_by_key(|k| k.retired_at)
                    .map(|k| (k.kid.clone(), k.retired_at.unwrap_or(0)));
                match oldest {
                    Some((kid, at)) if at.saturating_add(ttl) <= now => {
                        tracing::warn!(
                            kid = %kid, alg = alg.as_str(),
                            "more than {MAX_RETIRED} retired signing keys: removing the oldest \
                             before its overlap ends (no JWT it signed is still valid)"
                        );
                        keys.retain(|k| k.kid != kid);
                    }
                    _ => {
                        return Err(SigningError::Refused(format!(
                            "{} already has {MAX_RETIRED} retired keys, and the oldest may \
                             still verify live JWTs; retry in {ttl} seconds",
                            alg.as_str()
                        )));
                    }
                }
            }
        }
        KeySet::new(keys)
    }

    /// The manifest's text.
    fn to_file(&self) -> Result<String, SigningError> {
        let file = KeyFile {
            version: FORMAT_VERSION,
            keys: self
                .keys
                .iter()
                .map(|k| KeyEntry {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    state: k.state,
                    created_at: k.created_at,
                    activated_at: k.activated_at,
                    retired_at: k.retired_at,
                    private_key: k.pem.0.clone(),
                })
                .collect(),
        };
        let body = toml::to_string(&file)
            .map_err(|e| SigningError::Keys(format!("writing the manifest: {e}")))?;
        Ok(format!(
            "# Writ's JWT signing keys (private). Managed by the server: `writ keys list` shows \
             them,\n# `writ keys rotate` rotates them. Do not edit: a kid must be its key's \
             thumbprint.\n{body}"
        ))
    }

    /// A manifest's keys. Errors never quote the file: it holds private keys.
    fn from_file(text: &str) -> Result<KeySet, SigningError> {
        let file: KeyFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            SigningError::Keys(format!(
                "the manifest is not valid (near line {at}; details withheld: the file holds \
                 private keys)"
            ))
        })?;
        if file.version != FORMAT_VERSION {
            return Err(SigningError::Keys(format!(
                "manifest format {} is not one this build reads ({FORMAT_VERSION})",
                file.version
            )));
        }
        let keys = file
            .keys
            .into_iter()
            .map(|e| {
                let mut k = Key::from_pem(e.alg, e.private_key, e.state, e.created_at)?;
                if k.kid != e.kid {
                    return Err(SigningError::Keys(format!(
                        "key {} is not the thumbprint of its key ({})",
                        e.kid, k.kid
                    )));
                }
                k.activated_at = e.activated_at;
                k.retired_at = e.retired_at;
                Ok(k)
            })
            .collect::<Result<Vec<_>, _>>()?;
        KeySet::new(keys)
    }

    fn kids(&self, state: KeyState) -> String {
        self.keys
            .iter()
            .filter(|k| k.state == state)
            .map(|k| format!("{}:{}", k.alg.as_str(), k.kid))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The server's JWT signing keys. `Debug` never shows key material.
pub struct Signer {
    issuer: String,
    config: SigningConfig,
    path: PathBuf,
    keys: ArcSwap<KeySet>,
    /// One rotation or removal at a time (each reads, persists, then swaps the set).
    writer: Mutex<()>,
    /// The registry whose high-privilege scopes JWTs leave out (set once at start).
    policy: std::sync::OnceLock<crate::policy::PolicyHandle>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .field("algorithm", &self.config.algorithm)
            .field(
                "kids",
                &keys.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the signing keys from `data_dir` (creating them on first start); JWTs name
    /// `issuer` (Writ's OAuth issuer identifier) as `iss`. Retired keys whose overlap
    /// ended by `now_secs` are removed. The data directory must be the server's, and
    /// locked by it.
    pub fn load_or_create(
        data_dir: &Path,
        config: &SigningConfig,
        issuer: String,
        now_secs: u64,
    ) -> Result<Arc<Signer>, SigningError> {
        use crate::secrets;
        config.validate().map_err(SigningError::Keys)?;
        let path = data_dir.join(SIGNING_KEYS_FILE);
        let stale = secrets::remove_stale_temporaries(&path)?;
        if stale > 0 {
            tracing::warn!(
                removed = stale,
                "removed temporary signing-key files an interrupted write left behind"
            );
        }
        if !path.exists() {
            let set = KeySet::initial(now_secs)?;
            if secrets::install_private(&path, &set.to_file()?)? {
                tracing::info!(
                    path = %path.display(), current = %set.kids(KeyState::Current),
                    next = %set.kids(KeyState::Next), "generated new JWT signing keys"
                );
            }
        }
        let set = KeySet::from_file(&secrets::read_private(&path)?)?;
        let signer = Signer {
            issuer,
            config: config.clone(),
            path,
            keys: ArcSwap::from_pointee(set),
            writer: Mutex::new(()),
            policy: std::sync::OnceLock::new(),
        };
        signer.prune_at(now_secs)?;
        let keys = signer.keys.load();
        tracing::info!(
            algorithm = config.algorithm.as_str(),
            current = %keys.kids(KeyState::Current),
            next = %keys.kids(KeyState::Next),
            retired = %keys.kids(KeyState::Retired),
            "JWT signing keys loaded"
        );
        Ok(Arc::new(signer))
    }

    /// Leaves the scopes `policy` marks high-privilege (latent in a token without a
    /// consent to them) out of every JWT's `scope`. Set once; later calls change nothing.
    pub fn use_policy(&self, policy: crate::policy::PolicyHandle) {
        let _ = self.policy.set(policy);
    }

    /// Persists `set`, then makes it the one in force.
    fn install(&self, set: KeySet) -> Result<(), SigningError> {
        crate::secrets::replace_private(&self.path, &set.to_file()?)?;
        self.keys.store(Arc::new(set));
        Ok(())
    }

    /// Rotates every algorithm's keys at `now` (next → current, current → retired, a new
    /// next), durably: when this returns `Ok`, the new state is on disk. Returns the keys
    /// after the rotation.
    pub fn rotate_at(&self, now: u64) -> Result<Vec<KeyInfo>, SigningError> {
        let _one = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.keys.load_full();
        let after = before.rotated(
            now,
            self.config.overlap_seconds,
            self.config.jwt_ttl_seconds,
        )?;
        let (retired, current, next) = (
            before.kids(KeyState::Current),
            after.kids(KeyState::Current),
            after.kids(KeyState::Next),
        );
        self.install(after)?;
        tracing::info!(
            retired = %retired, current = %current, next = %next,
            "JWT signing keys rotated"
        );
        Ok(self.keys_at())
    }

    /// Removes the retired keys whose overlap ended at `now` from the JWKS and the disk.
    /// Whether any was.
    pub fn prune_at(&self, now: u64) -> Result<bool, SigningError> {
        let _one = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.keys.load_full();
        let Some(after) = before.pruned(now, self.config.overlap_seconds)? else {
            return Ok(false);
        };
        let removed: Vec<&str> = before
            .keys
            .iter()
            .filter(|k| !after.keys.iter().any(|a| a.kid == k.kid))
            .map(|k| k.kid.as_str())
            .collect();
        tracing::info!(removed = %removed.join(","), "retired JWT signing keys removed");
        self.install(after)?;
        Ok(true)
    }

    /// Are the current keys due for automatic rotation at `now`?
    fn due(&self, now: u64) -> bool {
        let keys = self.keys.load();
        keys.keys
            .iter()
            .filter_map(|k| (k.state == KeyState::Current).then_some(k.activated_at))
            .flatten()
            .min()
            .is_some_and(|at| at.saturating_add(self.config.rotate_after_seconds) <= now)
    }

    /// The periodic check: rotates if the current keys are `rotate_after_seconds` old,
    /// and removes retired keys whose overlap ended.
    pub fn tick(&self, now: u64) -> Result<(), SigningError> {
        self.tick_with(now, true)
    }

    /// [`tick`](Self::tick), rotating only if `rotate` (removal of retired keys is the
    /// same on every node holding one manifest, so it always runs).
    fn tick_with(&self, now: u64, rotate: bool) -> Result<(), SigningError> {
        if rotate && self.due(now) {
            tracing::info!("the current JWT signing keys reached rotate_after_seconds");
            self.rotate_at(now)?;
        }
        self.prune_at(now)?;
        Ok(())
    }

    /// Rotates now (for `writ keys rotate`), off the async threads.
    pub async fn rotate(self: &Arc<Self>) -> Result<Vec<KeyInfo>, SigningError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.rotate_at(crate::service::now_secs()))
            .await
            .map_err(|e| SigningError::Keys(format!("the rotation task failed: {e}")))?
    }

    /// How often the periodic check runs: a quarter of the shorter of the overlap and
    /// the rotation age, between 1 and 60 seconds.
    pub fn check_interval(&self) -> Duration {
        let shortest = self
            .config
            .overlap_seconds
            .min(self.config.rotate_after_seconds);
        Duration::from_secs((shortest / 4).clamp(1, 60))
    }

    /// Starts the periodic check ([`Signer::tick`] every [`Signer::check_interval`]); it
    /// ends when `stop` turns true. With `rotate` false it only removes retired keys:
    /// nodes that each hold a copy of one manifest (several nodes on one store) would each
    /// rotate to a different next key, and publish different key sets.
    pub fn spawn_rotation(
        self: &Arc<Self>,
        rotate: bool,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let signer = self.clone();
        crate::periodic::every_blocking(
            self.check_interval(),
            crate::periodic::First::Now,
            stop,
            "JWT signing key rotation",
            move || signer.tick_with(crate::service::now_secs(), rotate),
            |ticked| {
                if let Err(e) = ticked {
                    tracing::error!(error = %e, "JWT signing key rotation");
                }
            },
        )
    }

    /// Every key, in JWKS order, as an operator sees it.
    pub fn keys_at(&self) -> Vec<KeyInfo> {
        let keys = self.keys.load();
        let rotates_at = keys
            .keys
            .iter()
            .filter_map(|k| (k.state == KeyState::Current).then_some(k.activated_at))
            .flatten()
            .min()
            .map(|at| at.saturating_add(self.config.rotate_after_seconds));
        keys.keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid.clone(),
                alg: k.alg,
                state: k.state,
                signing: k.state == KeyState::Current && k.alg == self.config.algorithm,
                created_at: k.created_at,
                activated_at: k.activated_at,
                retired_at: k.retired_at,
                rotates_at: (k.state != KeyState::Retired)
                    .then_some(rotates_at)
                    .flatten(),
                removed_at: k
                    .retired_at
                    .map(|r| r.saturating_add(self.config.overlap_seconds)),
            })
            .collect()
    }

    /// The `kid` of the key that signs now.
    pub fn signing_kid(&self) -> String {
        self.keys
            .load()
            .current(self.config.algorithm)
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// The algorithm that signs.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.config.algorithm
    }

    /// The lifetime of a Txn-Token JWT, in seconds.
    pub fn jwt_ttl_secs(&self) -> u64 {
        self.config.jwt_ttl_seconds
    }

    /// Signs `claims` as a compact JWS whose header names `alg`, `typ` and the signing
    /// key's `kid`.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> Result<String, SigningError> {
        let keys = self.keys.load();
        let key = keys
            .current(self.config.algorithm)
            .ok_or_else(|| SigningError::Sign("no current key".into()))?;
        let mut header = jsonwebtoken::Header::new(key.alg.jwt());
        header.typ = Some(typ.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| SigningError::Sign(e.to_string()))
    }

    /// Writ's issuer identifier, as JWTs carry it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A Txn-Token JWT standing for `record`, requested by the workload `req_wl`, issued
    /// at `now_secs`: its text and its `exp` (Unix seconds). It lives the configured JWT
    /// lifetime, never beyond the record's expiry. The caller decides whether the token is
    /// active and whether its receiver may hold a JWT.
    pub fn txn_token(
        &self,
        record: &writ_core::TokenRecord,
        req_wl: &str,
        now_secs: u64,
    ) -> Result<(String, u64), SigningError> {
        if let Some(why) = jwt_refusal(&record.grant) {
            return Err(SigningError::Refused(why.to_owned()));
        }
        let exp = now_secs
            .saturating_add(self.config.jwt_ttl_seconds)
            .min(record.grant.expires_at.0 / 1000);
        let jti = b64(&rand::random::<[u8; 16]>());
        // Latent scopes are left out: a JWT is checked offline, where no consent can be
        // asked for.
        let latent = self.policy.get().map_or_else(Vec::new, |p| {
            crate::service::consent::latent_scopes(p.current().registry(), record)
        });
        let claims = writ_api::oauth::txn_token_claims(
            record,
            &latent,
            req_wl,
            &self.issuer,
            now_secs,
            exp,
            &jti,
        );
        let jwt = self.sign(
            writ_api::oauth::TXN_TOKEN_JWT_TYP,
            &serde_json::Value::Object(claims),
        )?;
        Ok((jwt, exp))
    }

    /// The JWKS document (`{"keys": [...]}`): every public key a verifier may meet (each
    /// algorithm's current, next and retired keys), each with `kid`, `use: sig` and `alg`.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks.clone()
    }

    /// The algorithms the JWKS may hold (for RFC 8414 metadata).
    pub fn algorithms(&self) -> Vec<&'static str> {
        SigningAlgorithm::ALL.iter().map(|a| a.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use writ_core::{
        ActorKind, ClientType, Grant, Party, SecretHash, TokenId, TokenRecord, TxnId, UnixMillis,
    };

    const T0: u64 = 1_800_000_000;

    fn config(algorithm: SigningAlgorithm) -> SigningConfig {
        SigningConfig {
            algorithm,
            jwt_ttl_seconds: 60,
            rotate_after_seconds: 10_000,
            overlap_seconds: 1_000,
        }
    }

    fn load(dir: &Path, c: &SigningConfig, now: u64) -> Arc<Signer> {
        Signer::load_or_create(dir, c, "https://writ.example".into(), now).unwrap()
    }

    fn states(s: &Signer) -> Vec<(SigningAlgorithm, KeyState, String)> {
        s.keys_at()
            .into_iter()
            .map(|k| (k.alg, k.state, k.kid))
            .collect()
    }

    fn kid_of(s: &Signer, alg: SigningAlgorithm, state: KeyState) -> Vec<String> {
        s.keys_at()
            .into_iter()
            .filter(|k| k.alg == alg && k.state == state)
            .map(|k| k.kid)
            .collect()
    }

    fn jwks_kids(s: &Signer) -> Vec<String> {
        s.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Verifies `jwt` against the JWKS with jsonwebtoken (the e2e tests use another
    /// library), returning the header and claims.
    fn verify(s: &Signer, jwt: &str) -> Result<(jsonwebtoken::Header, Value), String> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
        let kid = header.kid.clone().ok_or("no kid")?;
        let jwks = s.jwks();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .ok_or("kid not in the JWKS")?;
        let key = match jwk["kty"].as_str() {
            Some("OKP") => {
                jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap())
            }
            _ => jsonwebtoken::DecodingKey::from_ec_components(
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap(),
            ),
        }
        .map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &v).map_err(|e| e.to_string())?;
        Ok((header, data.claims))
    }

    #[test]
    fn kids_are_rfc_7638_thumbprints() {
        // RFC 8037 appendix A.3: the thumbprint of the Ed25519 key of A.2.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let (kid, jwk) = public_jwk(SigningAlgorithm::EdDSA, &x).unwrap();
        assert_eq!(kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(
            jwk,
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                   "kid": kid, "use": "sig", "alg": "EdDSA"})
        );
        // P-256: the canonical members x, y; a point of another length is refused.
        let mut point = vec![4u8];
        point.extend([1u8; 32]);
        point.extend([2u8; 32]);
        let (kid, jwk) = public_jwk(SigningAlgorithm::ES256, &point).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(&[1; 32]),
            b64(&[2; 32])
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        assert_eq!(kid, b64(digest.as_ref()));
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["y"], b64(&[2; 32]));
        assert!(public_jwk(SigningAlgorithm::ES256, &point[1..]).is_err());
        assert!(public_jwk(SigningAlgorithm::EdDSA, &point).is_err());
    }

    #[test]
    fn keys_are_created_private_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::EdDSA);
        let s = load(dir.path(), &c, T0);
        let path = dir.path().join(SIGNING_KEYS_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Two algorithms, a current and a next key each, all published.
        let before = states(&s);
        assert_eq!(before.len(), 4);
        for alg in SigningAlgorithm::ALL {
            assert_eq!(kid_of(&s, alg, KeyState::Current).len(), 1);
            assert_eq!(kid_of(&s, alg, KeyState::Next).len(), 1);
        }
        assert_eq!(
            jwks_kids(&s),
            before.iter().map(|(_, _, k)| k.clone()).collect::<Vec<_>>()
        );
        // Public members only, never a private one (`d`).
        for k in s.jwks()["keys"].as_array().unwrap() {
            let mut members: Vec<&str> =
                k.as_object().unwrap().keys().map(String::as_str).collect();
            members.sort_unstable();
            let expected: &[&str] = match k["alg"].as_str() {
                Some("EdDSA") => &["alg", "crv", "kid", "kty", "use", "x"],
                _ => &["alg", "crv", "kid", "kty", "use", "x", "y"],
            };
            assert_eq!(members, expected, "{k}");
        }
        let jwt = s.sign("JWT", &json!({"a": 1})).unwrap();
        drop(s);
        let again = load(dir.path(), &c, T0 + 5);
        assert_eq!(states(&again), before);
        assert_eq!(verify(&again, &jwt).unwrap().1, json!({"a": 1}));
        // A readable manifest is refused, like every secret.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Signer::load_or_create(dir.path(), &c, "https://i".into(), T0).unwrap_err();
        assert!(e.to_string().contains("permissions"), "{e}");
    }

    #[test]
    fn both_algorithms_sign_with_their_current_key_and_name_it() {
        let dir = tempfile::tempdir().unwrap();
        for alg in SigningAlgorithm::ALL {
            let s = load(dir.path(), &config(alg), T0);
            let jwt = s.sign("txntoken+jwt", &json!({"x": "y"})).unwrap();
            let (header, claims) = verify(&s, &jwt).unwrap();
            assert_eq!(header.alg, alg.jwt());
            assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
            assert_eq!(header.kid, kid_of(&s, alg, KeyState::Current).pop());
            assert_eq!(header.kid.as_deref(), Some(s.signing_kid().as_str()));
            assert_eq!(claims, json!({"x": "y"}));
            // The header is exactly alg, typ and kid.
            let raw = jwt.split('.').next().unwrap();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .unwrap();
            let h: BTreeMap<String, Value> = serde_json::from_slice(&raw).unwrap();
            assert_eq!(
                h.keys().map(String::as_str).collect::<Vec<_>>(),
                ["alg", "kid", "typ"]
            );
            let signing: Vec<KeyInfo> = s.keys_at().into_iter().filter(|k| k.signing).collect();
            assert_eq!(signing.len(), 1);
            assert_eq!(signing[0].alg, alg);
            assert_eq!(s.algorithms(), ["EdDSA", "ES256"]);
        }
    }

    /// Next → current → retired → removed, with publish-before-use: the key that signs
    /// after a rotation was in the JWKS before it; the one that signed before stays until
    /// its overlap ends (checked by the periodic tick on an injected clock), then is gone
    /// from the JWKS and from the disk.
    #[test]
    fn rotation_publishes_before_use_and_removes_after_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::ES256);
        let s = load(dir.path(), &c, T0);
        let ed = SigningAlgorithm::EdDSA;
        let es = SigningAlgorithm::ES256;
        let old = kid_of(&s, es, KeyState::Current).pop().unwrap();
        let next = kid_of(&s, es, KeyState::Next).pop().unwrap();
        let old_ed = kid_of(&s, ed, KeyState::Current).pop().unwrap();
        let jwt_before = s.sign("JWT", &json!({"n": 1})).unwrap();
        assert!(jwks_kids(&s).contains(&next), "published before use");

        let after = s.rotate_at(T0 + 100).unwrap();
        assert_eq!(after, s.keys_at());
        assert_eq!(kid_of(&s, es, KeyState::Current), vec![next.clone()]);
        assert_eq!(kid_of(&s, es, KeyState::Retired), vec![old.clone()]);
        assert_eq!(kid_of(&s, ed, KeyState::Retired), vec![old_ed.clone()]);
        let new_next = kid_of(&s, es, KeyState::Next).pop().unwrap();
        assert!(![old.as_str(), next.as_str()].contains(&new_next.as_str()));
        assert_eq!(s.signing_kid(), next);
        let retired = after.iter().find(|k| k.kid == old).unwrap();
        assert_eq!(
            (retired.activated_at, retired.retired_at, retired.removed_at),
            (Some(T0), Some(T0 + 100), Some(T0 + 1_100))
        );
        let current = after.iter().find(|k| k.kid == next).unwrap();
        assert_eq!(current.activated_at, Some(T0 + 100));
        assert_eq!(current.rotates_at, Some(T0 + 10_100));
        // Old JWTs still verify; new ones are signed by the former next key.
        assert!(verify(&s, &jwt_before).is_ok());
        let jwt_after = s.sign("JWT", &json!({"n": 2})).unwrap();
        assert_eq!(verify(&s, &jwt_after).unwrap().0.kid, Some(next.clone()));
        assert_eq!(jwks_kids(&s).len(), 6);

        // Within the overlap, nothing is removed.
        s.tick(T0 + 1_099).unwrap();
        assert!(jwks_kids(&s).contains(&old));
        // At its end, the retired keys go from the JWKS and the disk.
        s.tick(T0 + 1_100).unwrap();
        assert!(!jwks_kids(&s).contains(&old));
        assert!(!jwks_kids(&s).contains(&old_ed));
        assert_eq!(jwks_kids(&s).len(), 4);
        assert_eq!(verify(&s, &jwt_before).unwrap_err(), "kid not in the JWKS");
        assert!(verify(&s, &jwt_after).is_ok());
        let text = fs::read_to_string(dir.path().join(SIGNING_KEYS_FILE)).unwrap();
        assert!(
            !text.contains(&old) && text.contains(&next),
            "{}",
            text.len()
        );
        // A reload sees the same.
        let again = load(dir.path(), &c, T0 + 1_101);
        assert_eq!(states(&again), states(&s));
    }

    /// Nodes sharing a store each hold a copy of the manifest: there the periodic check
    /// never rotates (each node would make its own next key), however old the keys.
    #[test]
    fn a_node_on_a_shared_store_never_rotates_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::EdDSA);
        let s = load(dir.path(), &c, T0);
        let first = s.signing_kid();
        s.tick_with(T0 + 10_000_000, false).unwrap();
        assert_eq!(s.signing_kid(), first);
        s.tick_with(T0 + 10_000_000, true).unwrap();
        assert_ne!(s.signing_kid(), first, "due, on a node alone");
    }

    #[test]
    fn keys_rotate_automatically_by_age_and_retired_ones_expire_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::EdDSA);
        let s = load(dir.path(), &c, T0);
        let first = s.signing_kid();
        s.tick(T0 + 9_999).unwrap();
        assert_eq!(s.signing_kid(), first, "not yet due");
        s.tick(T0 + 10_000).unwrap();
        assert_ne!(s.signing_kid(), first);
        assert_eq!(
            kid_of(&s, SigningAlgorithm::EdDSA, KeyState::Retired),
            vec![first.clone()]
        );
        drop(s);
        // A server that was down past the overlap removes the key when it starts.
        let s = load(dir.path(), &c, T0 + 11_000);
        assert!(kid_of(&s, SigningAlgorithm::EdDSA, KeyState::Retired).is_empty());
        assert!(
            !fs::read_to_string(dir.path().join(SIGNING_KEYS_FILE))
                .unwrap()
                .contains(&first)
        );
    }

    #[test]
    fn retired_keys_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = SigningConfig {
            overlap_seconds: 100_000,
            rotate_after_seconds: 200_000,
            ..config(SigningAlgorithm::EdDSA)
        };
        let s = load(dir.path(), &c, T0);
        // Rotations in quick succession: past MAX_RETIRED, refused while the oldest
        // retired key may still verify a live JWT (retired less than a JWT lifetime ago).
        for i in 0..MAX_RETIRED as u64 {
            s.rotate_at(T0 + i).unwrap();
        }
        let e = s.rotate_at(T0 + 10).unwrap_err();
        assert!(matches!(e, SigningError::Refused(_)), "{e}");
        assert_eq!(
            kid_of(&s, SigningAlgorithm::EdDSA, KeyState::Retired).len(),
            MAX_RETIRED
        );
        // Once it can verify none, the oldest makes room.
        let oldest = s
            .keys_at()
            .into_iter()
            .filter(|k| k.alg == SigningAlgorithm::EdDSA && k.state == KeyState::Retired)
            .min_by_key(|k| k.retired_at)
            .unwrap()
            .kid;
        s.rotate_at(T0 + 60).unwrap();
        let retired = kid_of(&s, SigningAlgorithm::EdDSA, KeyState::Retired);
        assert_eq!(retired.len(), MAX_RETIRED);
        assert!(!retired.contains(&oldest));
    }

    /// A crash half way through a rotation leaves the manifest before or after, whole,
    /// and at worst a temporary file, which the next start removes.
    #[test]
    fn a_crash_half_way_leaves_a_usable_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::EdDSA);
        let s = load(dir.path(), &c, T0);
        let before = states(&s);
        let path = dir.path().join(SIGNING_KEYS_FILE);
        // Killed after writing the next manifest to its temporary file, before the rename:
        // a partial or a whole temporary file, the manifest untouched.
        let rotated = s.keys.load().rotated(T0 + 1, 1_000, 60).unwrap();
        let whole = rotated.to_file().unwrap();
        let tmp1 = dir
            .path()
            .join(format!(".{SIGNING_KEYS_FILE}.4242.00000000000000aa.tmp"));
        let tmp2 = dir
            .path()
            .join(format!(".{SIGNING_KEYS_FILE}.4242.00000000000000bb.tmp"));
        fs::write(&tmp1, &whole[..whole.len() / 2]).unwrap();
        fs::write(&tmp2, &whole).unwrap();
        drop(s);
        let again = load(dir.path(), &c, T0 + 2);
        assert_eq!(states(&again), before, "the acknowledged state");
        assert!(!tmp1.exists() && !tmp2.exists(), "temporaries removed");
        // Killed after the rename: the rotated state, whole.
        let kept = fs::read_to_string(&path).unwrap();
        crate::secrets::replace_private(&path, &whole).unwrap();
        let rotated_states: Vec<_> = rotated
            .keys
            .iter()
            .map(|k| (k.alg, k.state, k.kid.clone()))
            .collect();
        assert_eq!(states(&load(dir.path(), &c, T0 + 3)), rotated_states);
        // An acknowledged rotation is on disk before it is answered.
        crate::secrets::replace_private(&path, &kept).unwrap();
        let s = load(dir.path(), &c, T0 + 4);
        let answered = s.rotate_at(T0 + 5).unwrap();
        drop(s);
        let reloaded = load(dir.path(), &c, T0 + 6).keys_at();
        assert_eq!(reloaded, answered);
        // A damaged manifest stops the server instead of being replaced by new keys, and
        // the error quotes none of it.
        fs::write(&path, &kept[..kept.len() - 40]).unwrap();
        let e = Signer::load_or_create(dir.path(), &c, "https://i".into(), T0).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("not valid") || message.contains("PKCS#8"),
            "{message}"
        );
        assert!(
            !message.contains("BEGIN") && !message.contains("MC4CAQ"),
            "{message}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), kept[..kept.len() - 40]);
    }

    #[test]
    fn a_manifest_that_breaks_an_invariant_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(SigningAlgorithm::EdDSA);
        let s = load(dir.path(), &c, T0);
        let path = dir.path().join(SIGNING_KEYS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        drop(s);
        let ed_current = text.find("state = \"current\"").unwrap();
        let cases = [
            // A kid that is not its key's thumbprint.
            (text.replacen("kid = \"", "kid = \"x", 1), "thumbprint"),
            // Two current keys of one algorithm, no next.
            (
                text.replace("state = \"next\"", "state = \"current\""),
                "exactly one",
            ),
            // A future format.
            (text.replace("version = 1", "version = 2"), "format 2"),
            (
                format!(
                    "{}{}",
                    &text[..ed_current],
                    &text[ed_current..].replacen("current", "retired", 1)
                ),
                "exactly one",
            ),
        ];
        for (bad, needle) in cases {
            crate::secrets::replace_private(&path, &bad).unwrap();
            let e = Signer::load_or_create(dir.path(), &c, "https://i".into(), T0).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn debug_and_errors_never_show_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(dir.path(), &config(SigningAlgorithm::EdDSA), T0);
        let text = fs::read_to_string(dir.path().join(SIGNING_KEYS_FILE)).unwrap();
        // A line of base64 from inside a PEM body.
        let body_line = text
            .lines()
            .find(|l| {
                l.len() > 20 && !l.contains('=') && !l.starts_with('#') && !l.contains("BEGIN")
            })
            .unwrap()
            .to_owned();
        let shown = format!("{s:?} {:?}", s.keys.load());
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(!shown.contains(&body_line), "{shown}");
        assert!(shown.contains(&s.signing_kid()), "{shown}");
        assert!(format!("{:?}", Pem("secret".into())) == "<private key>");
    }

    #[test]
    fn config_ranges_name_the_key() {
        SigningConfig::default().validate().unwrap();
        let bad = [
            (
                SigningConfig {
                    jwt_ttl_seconds: 0,
                    ..Default::default()
                },
                "jwt_ttl_seconds",
            ),
            (
                SigningConfig {
                    jwt_ttl_seconds: 301,
                    ..Default::default()
                },
                "jwt_ttl_seconds",
            ),
            (
                SigningConfig {
                    jwt_ttl_seconds: 60,
                    overlap_seconds: 119,
                    ..Default::default()
                },
                "overlap_seconds",
            ),
            (
                SigningConfig {
                    overlap_seconds: 1_000,
                    rotate_after_seconds: 999,
                    ..Default::default()
                },
                "rotate_after_seconds",
            ),
        ];
        for (c, key) in bad {
            let e = c.validate().unwrap_err();
            assert!(e.contains(&format!("signing.{key}")), "{e}");
        }
        SigningConfig {
            jwt_ttl_seconds: 1,
            overlap_seconds: 2,
            rotate_after_seconds: 2,
            ..Default::default()
        }
        .validate()
        .unwrap();
        // The server's configuration checks them too.
        let mut c = crate::config::Config::default();
        c.signing.overlap_seconds = 60;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("signing.overlap_seconds"), "{e}");
        let c: crate::config::Config =
            toml::from_str("[signing]\nalgorithm = \"ES256\"\noverlap_seconds = 600\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.signing.algorithm, SigningAlgorithm::ES256);
        assert!(
            toml::from_str::<crate::config::Config>("[signing]\nalgorithm = \"RS256\"\n").is_err()
        );
    }

    #[test]
    fn a_txn_token_never_outlives_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(dir.path(), &config(SigningAlgorithm::EdDSA), T0);
        let p = |id: &str| Party {
            id: id.into(),
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        let record = TokenRecord {
            token_id: TokenId([1; 16]),
            secret_hash: SecretHash([2; 32]),
            txn: TxnId([3; 16]),
            parent: None,
            depth: 0,
            subject: "alice".into(),
            trust_domain: "writ.local".into(),
            actors: vec![p("gw")],
            audience: p("api"),
            grant: Grant {
                scopes: ["read".to_string()].into(),
                claims: Default::default(),
                targets: Default::default(),
                expires_at: UnixMillis((T0 + 30) * 1000 + 999),
                max_uses: None,
                require_action_check: false,
            },
            purpose: String::new(),
            tctx: Default::default(),
            rctx: Default::default(),
            issued_at: UnixMillis(T0 * 1000),
            idempotency: None,
            actor_auth: None,
            consent: None,
        };
        let (jwt, exp) = s.txn_token(&record, "api", T0).unwrap();
        assert_eq!(exp, T0 + 30, "capped by the record");
        let (header, claims) = verify(&s, &jwt).unwrap();
        assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
        assert_eq!(claims["exp"], json!(T0 + 30));
        assert_eq!(claims["iat"], json!(T0));
        assert_eq!(claims["iss"], "https://writ.example");
        assert_eq!(claims["req_wl"], "api");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        let (_, exp) = s.txn_token(&record, "api", T0 - 100).unwrap();
        assert_eq!(exp, T0 - 40, "the configured lifetime");
    }
}
