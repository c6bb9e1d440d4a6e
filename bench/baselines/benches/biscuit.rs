//! The Biscuit baseline (biscuit-auth 6): parse + verify + authorize a two-block token
//! (authority + one attenuation, like a depth-1 Writ chain) with checks equivalent to
//! Writ's standard action (scope, `amount ≤ N`, `category ≠ gambling`, audience), and
//! attenuation (appending a block). Writ's pure rules run in the same process as
//! anchors: the tag check plus the action check (what Validate does besides its one
//! store read) and the narrowing rules (what Downscope does besides its store write).
//! The in-process Validate and Downscope through the store are in `bench/benches`; the
//! anchors, measured in both runs, relate the two.

// A failed setup or a wrong answer should stop a bench loudly.
#![allow(clippy::unwrap_used)]

/// The allocator Writ's server and the other benches run on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use biscuit_auth::builder::{AuthorizerBuilder, BlockBuilder};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use writ_baselines::fixtures;
use writ_core::UnixMillis;
use writ_core::narrow::{self, NewToken};

// A bench, not the core: it may read the clock.
#[allow(clippy::disallowed_methods)]
fn now() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

fn writ_anchor(c: &mut Criterion) {
    let keys = fixtures::keyring();
    let policy = fixtures::policy(8);
    let chain = fixtures::record_chain(&keys, &policy, 1, now()).unwrap();
    let (leaf_secret, leaf) = &chain[1];
    let (_, root) = &chain[0];
    let attrs = fixtures::attributes();
    let mut g = c.benchmark_group("writ_core");
    g.bench_function("verify_tag_and_authorize", |b| {
        b.iter(|| {
            let v = keys.verify(black_box(leaf_secret.expose())).unwrap();
            black_box(v);
            leaf.grant.authorize(fixtures::SCOPE, &attrs).unwrap()
        })
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

const AUTHORITY: &str = r#"
    right("payments:charge");
    right("trips:book");
    audience("agent-0");
    check if amount($a), $a <= 1000;
    check if category($c), $c != "gambling";
"#;

const ATTENUATION: &str = r#"
    check if audience("agent-1");
    check if operation("payments:charge");
    check if amount($a), $a <= 999;
"#;

const AUTHORIZER: &str = r#"
    audience("agent-1");
    operation("payments:charge");
    amount(100);
    category("travel");
    allow if operation($op), right($op);
"#;

/// An authorizer builder whose time limit (1 ms by default) cannot fail a run on a
/// loaded machine: the bench measures the cost, not the limit.
fn authorizer() -> AuthorizerBuilder {
    AuthorizerBuilder::new().set_limits(AuthorizerLimits {
        max_time: Duration::from_secs(1),
        ..AuthorizerLimits::default()
    })
}

fn biscuit(c: &mut Criterion) {
    let root = KeyPair::new();
    let token = Biscuit::builder()
        .code(AUTHORITY)
        .unwrap()
        .build(&root)
        .unwrap();
    let attenuated = token
        .append(BlockBuilder::new().code(ATTENUATION).unwrap())
        .unwrap();
    let bytes = attenuated.to_vec().unwrap();
    let public = root.public();

    let mut g = c.benchmark_group("baseline_biscuit");
    g.bench_function("parse_verify_and_authorize", |b| {
        b.iter(|| {
            let t = Biscuit::from(black_box(&bytes), public).unwrap();
            let mut a = authorizer().code(AUTHORIZER).unwrap().build(&t).unwrap();
            a.authorize().unwrap()
        })
    });
    g.bench_function("authorize_parsed_token", |b| {
        b.iter(|| {
            let mut a = authorizer()
                .code(AUTHORIZER)
                .unwrap()
                .build(black_box(&attenuated))
                .unwrap();
            a.authorize().unwrap()
        })
    });
    g.bench_function("attenuate_append_block", |b| {
        b.iter(|| {
            token
                .append(BlockBuilder::new().code(ATTENUATION).unwrap())
                .unwrap()
        })
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
    targets = writ_anchor, biscuit
}
criterion_main!(benches);
