//! [`MemoryStore`]: an in-process [`TokenStore`] with the same semantics as the durable
//! backends and none of their setup, so the layers above the store test fast.
//! Nothing survives the process.

use crate::api::{StoreError, TokenStore};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use writ_core::{TokenId, TokenRecord, TxnId};

#[derive(Default)]
struct State {
    tokens: BTreeMap<TokenId, TokenRecord>,
    /// Mirrors the durable `txn_tokens` index: (txn, token) pairs sort like its keys.
    txn_tokens: BTreeSet<(TxnId, TokenId)>,
}

/// An in-memory token store. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way through an update, so a poisoned lock
        // still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &self.state().tokens.len())
            .finish()
    }
}

// The futures are lazy like every other backend's: nothing happens until polled.
impl TokenStore for MemoryStore {
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move {
            let mut state = store.state();
            if state.tokens.contains_key(&record.token_id) {
                return Err(StoreError::Conflict);
            }
            state.txn_tokens.insert((record.txn, record.token_id));
            state.tokens.insert(record.token_id, record);
            Ok(())
        }
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.state().tokens.get(&id).cloned()) }
    }

    fn txn_tokens(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        let store = self.clone();
        async move {
            let lo = (txn, TokenId([0; 16]));
            let hi = (txn, TokenId([0xff; 16]));
            Ok(store
                .state()
                .txn_tokens
                .range(lo..=hi)
                .map(|&(_, id)| id)
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        conformance::run(MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn conformance_through_arc_on_one_thread() {
        conformance::run(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn clones_share_data() {
        let a = MemoryStore::new();
        let b = a.clone();
        let r = conformance::record(conformance::txn(1), conformance::tid(1), None);
        a.insert(r.clone()).await.unwrap();
        assert_eq!(b.get(r.token_id).await.unwrap(), Some(r));
        assert_eq!(format!("{b:?}"), "MemoryStore { tokens: 1 }");
    }
}
