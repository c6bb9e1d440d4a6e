//! The storage contract. Everything above the store (service logic, servers) is
//! generic over [`TokenStore`], so backends can be swapped without touching it.
//!
//! The methods return `Send` futures, as a multi-threaded gRPC server needs, and take
//! and return owned values only, as a networked backend needs. They are native
//! async-in-trait rather than boxed, so the trait is not object-safe: use it as a
//! generic bound.

use std::future::Future;
use std::sync::Arc;
use writ_core::{TokenId, TokenRecord, TxnId};

/// Everything that can go wrong in a store. One enum for every backend, so callers
/// map errors to responses once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A record with this token id already exists; nothing was written.
    #[error("a token with this id already exists")]
    Conflict,
    /// A stored value failed to decode, carries an unknown format version, or the store
    /// itself has an unexpected schema. Retrying will not help.
    #[error("corrupt store data: {what}")]
    Corrupt {
        /// What was found to be wrong.
        what: String,
    },
    /// The storage engine or its I/O failed; the message comes from the engine.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The task running the operation panicked or was cancelled (for example because
    /// the runtime is shutting down). Whether a pending write landed is unknown.
    #[error("storage task did not complete: {0}")]
    Task(String),
}

/// Storage for token records.
///
/// Futures must be polled inside a Tokio runtime. Dropping a pending future does not
/// cancel the operation: an `insert` whose future was dropped may still land.
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new record and all its index entries in one atomic write; durable before
    /// it resolves when the store is opened with
    /// [`Durability::Sync`](crate::Durability::Sync). `Err(Conflict)` if the id exists.
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One point read by public token id.
    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Ids of every token of one transaction, in key order (byte order of the token id),
    /// from an index scan, not a full scan.
    fn txn_tokens(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send;
}

/// A shared store is a store, so servers can hold `Arc<S>` and still pass it on as `S`.
impl<T: TokenStore> TokenStore for Arc<T> {
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::insert(self, record)
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        T::get(self, id)
    }

    fn txn_tokens(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        T::txn_tokens(self, txn)
    }
}
