//! The EdDSA JWT baseline: an offline check of a Txn-Token-like JWT (signature, issuer,
//! audience, expiry, then the standard action's scope and claims), as a service that
//! trusts signed tokens would do it. Criterion measures it in `benches/core.rs`;
//! `writ-load --jwt-baseline` times it in the same run as a load, so an online Validate
//! round trip can be compared with it on the same machine at the same moment.

use crate::fixtures;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Instant;

/// JWT claims equivalent to a depth-1 Writ record.
#[derive(Debug, Serialize, Deserialize)]
pub struct JwtClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    txn: String,
    scope: String,
    act: serde_json::Value,
    amount_max: i64,
    category_deny: Vec<String>,
    purpose: String,
    rctx: serde_json::Value,
}

/// PKCS#8 v1 DER wrapping of an Ed25519 seed (RFC 8410), as jsonwebtoken's EncodingKey
/// wants it: a fixed 16-byte header and the 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// A signed token and what its verifier holds.
#[allow(missing_debug_implementations)] // holds keys; never printed
pub struct JwtBaseline {
    /// The compact JWT.
    pub token: String,
    /// Its signing key (for the bare signature check's lower bound).
    pub signing: SigningKey,
    dec: DecodingKey,
    validation: Validation,
}

impl JwtBaseline {
    /// A token valid for an hour from `now_secs`.
    pub fn new(now_secs: u64) -> JwtBaseline {
        let seed = [9u8; 32];
        let signing = SigningKey::from_bytes(&seed);
        let enc = EncodingKey::from_ed_der(&ed25519_pkcs8(&seed));
        let dec = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
        let exp = now_secs + 3600;
        let claims = JwtClaims {
            iss: "writ.local".into(),
            sub: "alice".into(),
            aud: fixtures::hop(1),
            exp,
            iat: now_secs,
            txn: "txn_01a223d7eefc76b3e628d6ae9e1b3b9b".into(),
            scope: fixtures::SCOPE.into(),
            act: serde_json::json!({"sub": "agent-0", "act": {"sub": "local-minter"}}),
            amount_max: 999,
            category_deny: vec!["gambling".into()],
            purpose: "book a trip to Lisbon".into(),
            rctx: serde_json::json!({"req_ip": "203.0.113.7", "authn": "webauthn"}),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &enc)
            .expect("signing the baseline JWT");
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[fixtures::hop(1)]);
        validation.set_issuer(&["writ.local"]);
        JwtBaseline {
            token,
            signing,
            dec,
            validation,
        }
    }

    /// Verifies the token and checks the standard action against its claims: true when
    /// allowed (always, for this token).
    pub fn verify_and_check(&self) -> bool {
        let Ok(data) =
            jsonwebtoken::decode::<JwtClaims>(black_box(&self.token), &self.dec, &self.validation)
        else {
            return false;
        };
        let c = data.claims;
        c.scope.split(' ').any(|s| s == fixtures::SCOPE)
            && fixtures::AMOUNT <= c.amount_max
            && !c.category_deny.iter().any(|d| d == "travel")
    }

    /// Times `n` verifications one by one on this thread: nanoseconds each, sorted.
    pub fn time(&self, n: usize) -> Vec<u64> {
        let mut ns: Vec<u64> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert!(self.verify_and_check(), "the baseline JWT was refused");
                u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
            })
            .collect();
        ns.sort_unstable();
        ns
    }
}
