//! Writ's benchmark harness (issue 4), shared by the `writ-load` and `writ-growth`
//! binaries and the criterion benches in `benches/`.
//!
//! It is its own cargo workspace (see `Cargo.toml`) so the baselines it links (JWT,
//! Biscuit, criterion) never touch the main workspace's dependency graph.
//!
//! Layout:
//! - [`adapter`]: the one place that calls the parts of Writ's API that are still
//!   moving (store writes, `Service::new` and its methods). When they change, only this
//!   file changes.
//! - [`fixtures`]: the requests, key ring and policy every measurement shares, so the
//!   load generator, the growth runs and the micro-benches measure the same chain.
//! - [`wire`]: the same chain as gRPC requests.
//! - [`baseline`]: the empty-RPC server, the floor Writ's RPCs are compared with.
//! - [`jwt`]: the EdDSA JWT baseline (an offline check), for criterion and `writ-load`.
//! - [`serve`]: starts Writ or the baseline on a thread with a runtime of its own
//!   (multi-thread or current-thread, with a chosen worker count).
//! - [`cluster`]: a Redis Cluster's nodes, memory, keys and append-only files, read
//!   through `redis-cli` (the Redis backend's footprint).
//! - [`report`]: latency summaries, machine facts and the JSON result files.
//! - [`svg`]: small hand-written SVG line charts for `bench/results/`.

/// The allocator the `writ` server binary uses, so every figure here (the floor and the
/// baselines included) runs on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod adapter;
pub mod baseline;
pub mod cluster;
pub mod fixtures;
pub mod jwt;
pub mod report;
pub mod serve;
pub mod svg;
pub mod wire;
