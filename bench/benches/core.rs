//! Micro-benchmarks of Writ's pure rules (`writ_core`, no I/O) and, in the same run,
//! the EdDSA JWT baseline issue 4 compares them with (jsonwebtoken, and bare
//! ed25519-dalek signature verification as its lower bound), checking the equivalent
//! of Writ's standard action: scope, `amount ≤ N`, `category ∉ {gambling}` and
//! audience. The Biscuit baseline is in `baselines/benches/biscuit.rs`.
//!
//! Sample sizes and measurement times are kept small so `cargo bench` takes minutes.

// A failed setup or a wrong answer should stop a bench loudly.
#![allow(clippy::unwrap_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Duration;
use writ_bench::fixtures;
use writ_core::UnixMillis;
use writ_core::narrow::{self, NewToken};

fn now() -> UnixMillis {
    writ_server::service::now()
}

/// Writ's side: tag check, narrowing, claim evaluation.
fn writ(c: &mut Criterion) {
    let keys = fixtures::keyring();
    let policy = fixtures::policy(8);
    let chain = fixtures::record_chain(&keys, &policy, 1, now()).unwrap();
    let (leaf_secret, leaf) = &chain[1];
    let (_, root) = &chain[0];
    let attrs = fixtures::attributes();

    let mut g = c.benchmark_group("writ_core");
    g.bench_function("verify_token_tag", |b| {
        b.iter(|| keys.verify(black_box(leaf_secret.expose())).unwrap())
    });
    g.bench_function("authorize_action", |b| {
        b.iter(|| {
            leaf.grant
                .authorize(black_box(fixtures::SCOPE), black_box(&attrs))
                .unwrap()
        })
    });
    g.bench_function("verify_tag_and_authorize", |b| {
        b.iter(|| {
            let v = keys.verify(black_box(leaf_secret.expose())).unwrap();
            black_box(v);
            leaf.grant.authorize(fixtures::SCOPE, &attrs).unwrap()
        })
    });
    g.bench_function("issue_token", |b| {
        b.iter(|| keys.issue(black_box([3u8; 32])))
    });
    g.bench_function("downscope_rules", |b| {
        let txn = root.txn;
        b.iter_batched(
            || {
                let (_, token) = keys.issue(rand::random());
                (
                    fixtures::child_request(1, 1),
                    NewToken {
                        token,
                        txn,
                        now: now(),
                        idempotency: None,
                        auth: writ_core::AuthMethod::Mtls,
                    },
                )
            },
            |(req, new)| narrow::downscope(root, &root.audience.id, req, &policy, new).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// JWT claims equivalent to a depth-1 Writ record.
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
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

fn jwt(c: &mut Criterion) {
    let seed = [9u8; 32];
    let signing = SigningKey::from_bytes(&seed);
    let enc = EncodingKey::from_ed_der(&ed25519_pkcs8(&seed));
    let dec = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
    let exp = now().0 / 1000 + 3600;
    let claims = JwtClaims {
        iss: "writ.local".into(),
        sub: "alice".into(),
        aud: fixtures::hop(1),
        exp,
        iat: exp - 3600,
        txn: "txn_01a223d7eefc76b3e628d6ae9e1b3b9b".into(),
        scope: fixtures::SCOPE.into(),
        act: serde_json::json!({"sub": "agent-0", "act": {"sub": "local-minter"}}),
        amount_max: 999,
        category_deny: vec!["gambling".into()],
        purpose: "book a trip to Lisbon".into(),
        rctx: serde_json::json!({"req_ip": "203.0.113.7", "authn": "webauthn"}),
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &enc).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[fixtures::hop(1)]);
    validation.set_issuer(&["writ.local"]);

    let mut g = c.benchmark_group("baseline_jwt");
    g.bench_function("eddsa_jwt_verify_and_check", |b| {
        b.iter(|| {
            let data =
                jsonwebtoken::decode::<JwtClaims>(black_box(&token), &dec, &validation).unwrap();
            let c = data.claims;
            let ok = c.scope.split(' ').any(|s| s == fixtures::SCOPE)
                && fixtures::AMOUNT <= c.amount_max
                && !c.category_deny.iter().any(|d| d == "travel");
            assert!(ok);
        })
    });
    let msg = token.as_bytes()[..token.rfind('.').unwrap()].to_vec();
    let sig = signing.sign(&msg);
    let vk = signing.verifying_key();
    g.bench_function("ed25519_signature_verify_only", |b| {
        b.iter(|| vk.verify(black_box(&msg), black_box(&sig)).unwrap())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = writ, jwt
}
criterion_main!(benches);
