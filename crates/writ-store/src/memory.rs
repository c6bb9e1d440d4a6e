//! [`MemoryStore`]: an in-process [`TokenStore`] with the same semantics as the durable
//! backends and none of their setup, so the layers above the store test fast.
//! Nothing survives the process.

use crate::api::{
    PurgeStats, RevokeTarget, StoreError, StoreStats, TokenStore, UseOutcome, admit_child,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use writ_core::limits::MAX_TOKENS_PER_TXN;
use writ_core::{Revocation, TokenId, TokenRecord, TokenState, TxnId, UnixMillis};

#[derive(Default)]
struct State {
    tokens: BTreeMap<TokenId, TokenRecord>,
    /// Mirrors the durable `txn_tokens` index: (txn, token) pairs sort like its keys.
    txn_tokens: BTreeSet<(TxnId, TokenId)>,
    /// Mutable state; no entry is the default state.
    states: BTreeMap<TokenId, TokenState>,
    /// Mirrors the durable `children` index: (parent, child) pairs.
    children: BTreeSet<(TokenId, TokenId)>,
    /// Mirrors the durable `expiry` index: (expires_at, token) pairs.
    expiry: BTreeSet<(UnixMillis, TokenId)>,
}

impl State {
    fn txn_ids(&self, txn: TxnId) -> Vec<TokenId> {
        let lo = (txn, TokenId([0; 16]));
        let hi = (txn, TokenId([0xff; 16]));
        self.txn_tokens.range(lo..=hi).map(|&(_, id)| id).collect()
    }

    fn child_ids(&self, parent: TokenId) -> Vec<TokenId> {
        let lo = (parent, TokenId([0; 16]));
        let hi = (parent, TokenId([0xff; 16]));
        self.children.range(lo..=hi).map(|&(_, id)| id).collect()
    }

    fn insert_child(&mut self, record: TokenRecord, max_children: u32) -> Result<(), StoreError> {
        if self.tokens.contains_key(&record.token_id) {
            return Err(StoreError::Conflict);
        }
        let parent_id = record.parent.ok_or(StoreError::ParentMissing)?;
        let parent = match self.tokens.get(&parent_id) {
            Some(p) if p.txn == record.txn => p,
            _ => return Err(StoreError::ParentMissing),
        };
        let mut pstate = self.states.get(&parent_id).cloned().unwrap_or_default();
        let lo = (record.txn, TokenId([0; 16]));
        let hi = (record.txn, TokenId([0xff; 16]));
        let held = self
            .txn_tokens
            .range(lo..=hi)
            .take(MAX_TOKENS_PER_TXN)
            .count();
        admit_child(parent, &mut pstate, &record, max_children, held)?;
        self.states.insert(parent_id, pstate);
        self.children.insert((parent_id, record.token_id));
        self.put_record(record);
        Ok(())
    }

    /// The record and its index entries.
    fn put_record(&mut self, record: TokenRecord) {
        self.txn_tokens.insert((record.txn, record.token_id));
        self.expiry
            .insert((record.grant.expires_at, record.token_id));
        self.tokens.insert(record.token_id, record);
    }

    fn purge_expired(&mut self, cutoff: UnixMillis, max_tokens: usize) -> PurgeStats {
        let lo = (UnixMillis(0), TokenId([0; 16]));
        let hi = (cutoff, TokenId([0; 16]));
        let due: Vec<(UnixMillis, TokenId)> = self
            .expiry
            .range(lo..hi)
            .take(max_tokens)
            .copied()
            .collect();
        for &(at, id) in &due {
            self.expiry.remove(&(at, id));
            self.states.remove(&id);
            for child in self.child_ids(id) {
                self.children.remove(&(id, child));
            }
            if let Some(record) = self.tokens.remove(&id) {
                self.txn_tokens.remove(&(record.txn, id));
                if let Some(parent) = record.parent {
                    self.children.remove(&(parent, id));
                }
            }
        }
        PurgeStats {
            tokens: due.len(),
            more: self.expiry.range(lo..hi).next().is_some(),
        }
    }

    fn stats(&self) -> StoreStats {
        let index =
            self.txn_tokens.len() + self.expiry.len() + self.states.len() + self.children.len();
        StoreStats {
            tokens: self.tokens.len() as u64,
            index_entries: index as u64,
        }
    }

    fn revoke(
        &mut self,
        target: RevokeTarget,
        by: &str,
        reason: &str,
        at: UnixMillis,
    ) -> Result<Vec<TokenId>, StoreError> {
        // (token, cause) pairs to revoke, in walk order.
        let mut todo: Vec<(TokenId, TokenId)> = Vec::new();
        match target {
            RevokeTarget::Token(root) => {
                if !self.tokens.contains_key(&root) {
                    return Err(StoreError::NotFound);
                }
                let mut seen = BTreeSet::from([root]);
                let mut queue = std::collections::VecDeque::from([root]);
                while let Some(id) = queue.pop_front() {
                    todo.push((id, root));
                    for child in self.child_ids(id) {
                        if seen.insert(child) {
                            queue.push_back(child);
                        }
                    }
                }
            }
            RevokeTarget::Txn(txn) => todo.extend(self.txn_ids(txn).into_iter().map(|id| (id, id))),
        }
        let mut revoked = Vec::new();
        for (id, cause) in todo {
            let state = self.states.entry(id).or_default();
            if state.revoked.is_none() {
                state.revoked = Some(Revocation {
                    at,
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                    cause,
                });
                revoked.push(id);
            }
        }
        Ok(revoked)
    }

    fn consume_use(&mut self, id: TokenId) -> UseOutcome {
        let Some(record) = self.tokens.get(&id) else {
            return UseOutcome::Unknown;
        };
        let max = record.grant.max_uses;
        let current = self.states.get(&id);
        if current.is_some_and(|s| s.revoked.is_some()) {
            return UseOutcome::Revoked;
        }
        let Some(max) = max else {
            return UseOutcome::Consumed { remaining: None };
        };
        let state = self.states.entry(id).or_default();
        if state.uses >= max {
            return UseOutcome::Exhausted;
        }
        state.uses += 1;
        UseOutcome::Consumed {
            remaining: Some(max - state.uses),
        }
    }
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way through an update, so a poisoned lock
        // still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &self.lock().tokens.len())
            .finish()
    }
}

// The futures are lazy like every other backend's: nothing happens until polled.
impl TokenStore for MemoryStore {
    fn insert(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move {
            let mut state = store.lock();
            if state.tokens.contains_key(&record.token_id) {
                return Err(StoreError::Conflict);
            }
            state.put_record(record);
            Ok(())
        }
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().tokens.get(&id).cloned()) }
    }

    fn txn_tokens(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().txn_ids(txn)) }
    }

    fn state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send {
        let store = self.clone();
        async move {
            let state = store.lock();
            if !state.tokens.contains_key(&id) {
                return Ok(None);
            }
            Ok(Some(state.states.get(&id).cloned().unwrap_or_default()))
        }
    }

    fn get_with_state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<(TokenRecord, TokenState)>, StoreError>> + Send {
        let store = self.clone();
        async move {
            let state = store.lock();
            Ok(state.tokens.get(&id).map(|r| {
                (
                    r.clone(),
                    state.states.get(&id).cloned().unwrap_or_default(),
                )
            }))
        }
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().insert_child(record, max_children) }
    }

    fn revoke(
        &self,
        target: RevokeTarget,
        by: String,
        reason: String,
        at: UnixMillis,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().revoke(target, &by, &reason, at) }
    }

    fn consume_use(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().consume_use(id)) }
    }

    fn purge_expired(
        &self,
        cutoff: UnixMillis,
        max_tokens: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().purge_expired(cutoff, max_tokens)) }
    }

    /// Counts every map and set: a full pass, a diagnostic only.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().stats()) }
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
    async fn a_transaction_holds_a_bounded_number_of_tokens() {
        conformance::txn_holds_at_most_max_tokens(MemoryStore::new()).await;
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
