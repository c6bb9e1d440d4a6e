//! JWT-SVID client assertions, as a caller behind a TLS-terminating proxy sends them:
//! an ES256 key with its JWK (for a bundle) and the signing of claims.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // a test's signer, on the real clock

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// An ES256 signing key and its public JWK.
#[derive(Debug)]
pub struct Signer {
    private_pem: String,
    /// The public key, as a JWT-SVID bundle lists it.
    pub jwk: serde_json::Value,
}

impl Signer {
    /// A fresh key named `kid`.
    pub fn new(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw().to_vec();
        Signer {
            private_pem: pair.serialize_pem(),
            jwk: json!({
                "use": "jwt-svid", "kid": kid, "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
            }),
        }
    }

    /// `claims` signed, with `kid` in the header.
    pub fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// The real clock, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
