//! Writ's storage: where token records live between the hop that mints them and every
//! hop that validates them.
//!
//! The service logic only ever talks to the [`TokenStore`] trait. It is deliberately
//! small (insert, point read, per-transaction index scan, the state mutations:
//! deriving a child, revoking a subtree, a transaction or everything a disabled party
//! holds, consuming a use; the parties an operator disabled; and the housekeeping:
//! purging expired tokens through the expiry index, and a key-count diagnostic) and its
//! futures are `Send` and own their work, so a networked, distributed backend (a Redis Cluster store is
//! planned) can implement it without the core or the server changing. No RocksDB type
//! appears in this crate's public API.
//!
//! Layout:
//! - [`api`]: the [`TokenStore`] contract and the crate's one error type, [`StoreError`].
//! - `keys`: the byte layout of every key and the column-family names (the only place
//!   that knows them).
//! - `codec`: the versioned encodings of a stored [`TokenRecord`](writ_core::TokenRecord),
//!   [`TokenState`](writ_core::TokenState), audit event,
//!   [`PartyDisable`](writ_core::PartyDisable) and
//!   [`ConsentRequest`](writ_core::ConsentRequest).
//!
//! Column families (key layouts in `keys`): `tokens` (immutable records), `state`
//! (each token's mutable [`TokenState`](writ_core::TokenState); no row means the default
//! state), `txn_tokens` (index: the tokens of a transaction), `children` (index: the
//! children of a token, written by `insert_child` and walked by `revoke`), `expiry`
//! (index: tokens by expiry time, walked by `purge_expired`), `parties` (disabled
//! parties, read whole at start), `consents` (consent requests) with their indexes
//! `consent_keys`, `consent_open` and `consent_txns`, and `meta` (schema version); the
//! transaction-listing
//! indexes and the audit trail are in `keys`. Purging deletes a token with every entry
//! of every key space that belongs to it; RocksDB compaction then reclaims the disk
//! space.
//! - [`rocks`]: [`RocksStore`], the embedded, durable RocksDB backend.
//! - [`redis`]: [`RedisStore`], the shared backend of several stateless Writ nodes, on a
//!   Redis Cluster (its own key layout in `redis/keys.rs`).
//! - [`memory`]: [`MemoryStore`], an in-process backend with the same semantics, for
//!   fast tests of the layers above.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod any;
pub mod api;
mod codec;
mod keys;
pub mod memory;
pub mod redis;
pub mod rocks;

#[cfg(test)]
mod conformance;

pub use any::AnyStore;
pub use api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, MAX_OPEN_CONSENTS_PER_TXN,
    MAX_PARTY_REVOKED_IDS, PartyRevoked, PurgeStats, RevokeTarget, Revoked, StoreError, StoreStats,
    TokenStore, TreeEntry, TxnPage, TxnQuery, UseOutcome,
};
pub use memory::MemoryStore;
pub use redis::{
    FeedCursor, FeedRead, RedisAuth, RedisOptions, RedisStore, RedisTls, redact as redact_node_url,
};
pub use rocks::{Durability, HotTierStats, RocksStore, SizeEstimates, StoreOptions, WriterStats};
