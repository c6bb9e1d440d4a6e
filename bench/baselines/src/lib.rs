//! The Biscuit baseline's crate (see `Cargo.toml` for why it stands apart from
//! `bench/`). It shares `bench/src/fixtures.rs`, the chain every measurement uses, so
//! Writ's side here is exactly the chain `bench/` measures.

#[path = "../../src/fixtures.rs"]
pub mod fixtures;
