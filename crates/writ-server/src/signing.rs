//! The keys that sign Writ's JWTs (Txn-Token JWTs, signed introspection answers) and the
//! JWKS that publishes them.
//!
//! BASE VERSION (issue 11 skeleton): one Ed25519 key, generated in memory at start, no
//! persistence and no rotation. The public API below is what the HTTP face and Validate
//! use; the full version (persisted Ed25519 and ES256 keys, `kid`s, rotation with an
//! overlap window) keeps it.

use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

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
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            algorithm: SigningAlgorithm::EdDSA,
            jwt_ttl_seconds: 60,
        }
    }
}

/// A JWS algorithm Writ signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

/// Why signing keys could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key could not be generated, read or written.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The claims could not be signed.
    #[error("signing: {0}")]
    Sign(String),
}

/// The server's JWT signing keys. `Debug` never shows key material.
pub struct Signer {
    issuer: String,
    jwt_ttl_secs: u64,
    kid: String,
    key: jsonwebtoken::EncodingKey,
    public_raw: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// Loads the signing keys from `data_dir` (creating them on first start); JWTs name
    /// `issuer` (Writ's OAuth issuer identifier) as `iss`.
    pub fn load_or_create(
        _data_dir: &Path,
        config: &SigningConfig,
        issuer: String,
        _now_secs: u64,
    ) -> Result<Arc<Signer>, SigningError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| SigningError::Keys(e.to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| SigningError::Keys(e.to_string()))?;
        let public_raw = pair.public_key_raw().to_vec();
        let kid = hex::encode(&blake3::hash(&public_raw).as_bytes()[..8]);
        Ok(Arc::new(Signer {
            issuer,
            jwt_ttl_secs: config.jwt_ttl_seconds,
            kid,
            key,
            public_raw,
        }))
    }

    /// Signs `claims` as a compact JWS whose header names `alg`, `typ` and the signing
    /// key's `kid`.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> Result<String, SigningError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
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
        let exp = (now_secs + self.jwt_ttl_secs).min(record.grant.expires_at.0 / 1000);
        let jti = hex::encode(rand::random::<[u8; 16]>());
        let claims =
            writ_api::oauth::txn_token_claims(record, req_wl, &self.issuer, now_secs, exp, &jti);
        let jwt = self.sign(
            writ_api::oauth::TXN_TOKEN_JWT_TYP,
            &serde_json::Value::Object(claims),
        )?;
        Ok((jwt, exp))
    }

    /// The JWKS document (`{"keys": [...]}`): every public key a verifier may meet.
    pub fn jwks(&self) -> serde_json::Value {
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public_raw);
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid,
            "use": "sig", "alg": "EdDSA"
        }]})
    }

    /// The algorithms the JWKS may hold (for RFC 8414 metadata).
    pub fn algorithms(&self) -> Vec<&'static str> {
        vec!["EdDSA"]
    }
}
