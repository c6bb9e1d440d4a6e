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
use ed25519_dalek::{Signer, Verifier};
use std::hint::black_box;
use std::time::Duration;
use writ_bench::fixtures;
use writ_bench::jwt::JwtBaseline;
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

fn jwt(c: &mut Criterion) {
    let base = JwtBaseline::new(now().0 / 1000);
    let mut g = c.benchmark_group("baseline_jwt");
    g.bench_function("eddsa_jwt_verify_and_check", |b| {
        b.iter(|| assert!(base.verify_and_check()))
    });
    let token = &base.token;
    let msg = token.as_bytes()[..token.rfind('.').unwrap()].to_vec();
    let sig = base.signing.sign(&msg);
    let vk = base.signing.verifying_key();
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
