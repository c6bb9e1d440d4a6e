//! Benchmarks of Writ in-process, with no network: the store's point read and write
//! (RocksDB, durable and buffered, and the in-memory store), and Validate, Downscope and
//! Mint end to end through the `Service` (via `writ_bench::adapter`). Each iteration is
//! one `block_on` on a Tokio runtime, so RocksDB's blocking-pool hop is included, as it
//! is in the server.

// A failed setup or a wrong answer should stop a bench loudly.
#![allow(clippy::unwrap_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use writ_bench::{adapter, fixtures};
use writ_core::narrow::Policy;
use writ_core::{KeyRing, TokenRecord};
use writ_server::service::now;
use writ_store::{Durability, MemoryStore, RocksStore, StoreOptions, TokenStore};

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A RocksDB store; `hot_tier: false` turns its hot tier off (reads from memtable and
/// block cache, as before issue 15).
fn rocks(durability: Durability, hot_tier: bool) -> (tempfile::TempDir, RocksStore) {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = StoreOptions::default();
    let store = RocksStore::open(
        &tmp.path().join("db"),
        StoreOptions {
            durability,
            hot_tier_mib: if hot_tier { defaults.hot_tier_mib } else { 0 },
            ..defaults
        },
    )
    .unwrap();
    (tmp, store)
}

fn roots(keys: &KeyRing, policy: &Policy, n: usize) -> Vec<TokenRecord> {
    (0..n)
        .map(|_| {
            let mut c = fixtures::record_chain(keys, policy, 0, now()).unwrap();
            c.pop().unwrap().1
        })
        .collect()
}

fn store_ops<S: TokenStore>(c: &mut Criterion, rt: &Runtime, name: &str, store: S, samples: usize) {
    let keys = fixtures::keyring();
    let policy = fixtures::policy(8);
    let store = Arc::new(store);
    let stored = roots(&keys, &policy, 1000);
    rt.block_on(async {
        for r in &stored {
            adapter::put(store.as_ref(), r.clone()).await.unwrap();
        }
    });
    let mut g = c.benchmark_group("store");
    g.sample_size(samples);
    let mut i = 0usize;
    g.bench_function(format!("{name}/get_with_state"), |b| {
        b.iter(|| {
            i = (i + 1) % stored.len();
            let id = stored[i].token_id;
            rt.block_on(store.get_with_state(black_box(id)))
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function(format!("{name}/put"), |b| {
        b.iter_batched(
            || roots(&keys, &policy, 1).remove(0),
            |r| rt.block_on(adapter::put(store.as_ref(), r)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
    let rt = rt();
    let (_t1, r) = rocks(Durability::Buffered, true);
    store_ops(c, &rt, "rocks_buffered", r, 20);
    let (_t0, r) = rocks(Durability::Buffered, false);
    store_ops(c, &rt, "rocks_buffered_hot_off", r, 20);
    let (_t2, r) = rocks(Durability::Sync, true);
    store_ops(c, &rt, "rocks_sync", r, 10);
    store_ops(c, &rt, "memory", MemoryStore::new(), 20);
}

fn service_ops<S: TokenStore>(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    store: S,
    samples: usize,
) {
    let svc = Arc::new(
        rt.block_on(adapter::service(
            Arc::new(store),
            fixtures::keyring(),
            fixtures::policy(8),
        ))
        .unwrap(),
    );
    // 256 chains of depth 1; Validate picks their leaves in turn.
    let leaves: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..256 {
            v.push(adapter::mint_chain(&svc, 1).await.unwrap().remove(1));
        }
        v
    });
    let audience = fixtures::hop(1);
    let mut g = c.benchmark_group("inprocess");
    g.sample_size(samples);
    let mut i = 0usize;
    g.bench_function(format!("{name}/validate_with_action"), |b| {
        b.iter(|| {
            i = (i + 1) % leaves.len();
            let ok = rt
                .block_on(adapter::validate(&svc, &audience, leaves[i].expose(), true))
                .unwrap();
            assert!(ok);
        })
    });
    g.bench_function(format!("{name}/downscope"), |b| {
        // A fresh root per child: fan-out and per-transaction limits never interfere.
        b.iter_batched(
            || {
                rt.block_on(adapter::mint(&svc, fixtures::mint_request(1)))
                    .unwrap()
                    .0
            },
            |root| {
                rt.block_on(adapter::downscope(
                    &svc,
                    &fixtures::hop(0),
                    root.expose(),
                    fixtures::child_request(1, 1),
                ))
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(format!("{name}/mint"), |b| {
        b.iter(|| {
            rt.block_on(adapter::mint(&svc, fixtures::mint_request(1)))
                .unwrap()
        })
    });
    g.finish();
}

fn service(c: &mut Criterion) {
    let rt = rt();
    let (_t1, r) = rocks(Durability::Buffered, true);
    service_ops(c, &rt, "rocks_buffered", r, 20);
    let (_t0, r) = rocks(Durability::Buffered, false);
    service_ops(c, &rt, "rocks_buffered_hot_off", r, 20);
    let (_t2, r) = rocks(Durability::Sync, true);
    service_ops(c, &rt, "rocks_sync", r, 10);
    service_ops(c, &rt, "memory", MemoryStore::new(), 20);
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
    targets = stores, service
}
criterion_main!(benches);
