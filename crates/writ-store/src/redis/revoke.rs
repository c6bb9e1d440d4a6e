//! Revocation of a subtree or a transaction, and the kill switch's walk, on the cluster.
//! The marking and the party rule are `api`'s; this reads a transaction whole (tree and
//! states, at most `MAX_TOKENS_PER_TXN` entries) and writes every new revocation with its
//! event in one `writ_apply`.

use super::keys::{decode_tree, id16};
use super::{Commit, Inner, MAX_ATTEMPTS, TxnWrite, backend, contended, nonce};
use crate::api::{
    EventIssuer, PARTY_PAGE, PartyRevoked, RevokeTarget, Revoked, StoreError, TreeEntry,
    mark_revoked, party_reason, party_txn_revocations, plan_party_txn, settle_party_txn,
};
use crate::codec;
use redis::Pipeline;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use writ_core::{Actor, Event, EventId, TokenId, TokenRecord, TokenState, TxnId};

/// One transaction read whole for a revocation: its version, tree and every state.
struct Whole {
    version: String,
    tree: Vec<TreeEntry>,
    states: HashMap<TokenId, TokenState>,
}

impl Whole {
    fn state_of(&self, id: TokenId) -> TokenState {
        self.states.get(&id).cloned().unwrap_or_default()
    }
}

type Raw = Vec<(Vec<u8>, Vec<u8>)>;

impl Inner {
    async fn read_whole(&self, txn: TxnId) -> Result<Whole, StoreError> {
        let (version, tree, states): (Option<String>, Raw, Raw) = Pipeline::new()
            .hget(self.keys.meta(txn), "v")
            .hgetall(self.keys.tree(txn))
            .hgetall(self.keys.states(txn))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let mut tree = tree
            .iter()
            .map(|(id, v)| decode_tree(id, v))
            .collect::<Result<Vec<_>, _>>()?;
        tree.sort_by_key(|e| e.id);
        let states = states
            .iter()
            .map(|(id, s)| Ok((TokenId(id16(id, "state field")?), codec::decode_state(s)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Whole {
            version: version.unwrap_or_default(),
            tree,
            states,
        })
    }

    /// Reads the records of `ids` into `into`, a chunk per round trip.
    async fn read_records(
        &self,
        txn: TxnId,
        ids: &[TokenId],
        into: &mut BTreeMap<TokenId, TokenRecord>,
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(super::CHUNK) {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(self.keys.records(txn));
            for id in chunk {
                hmget.arg(&id.0[..]);
            }
            let raw: Vec<Option<Vec<u8>>> = hmget
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            for (id, r) in chunk.iter().zip(raw) {
                if let Some(r) = r {
                    into.insert(*id, codec::decode(&r)?);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn record(
        &self,
        txn: TxnId,
        id: TokenId,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.records(txn))
            .arg(&id.0[..])
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        raw.map(|r| codec::decode(&r)).transpose()
    }

    /// Stages new states and their event.
    fn stage_revocation(
        &self,
        txn: TxnId,
        states: &[(TokenId, TokenState)],
        event: &Event,
    ) -> Result<TxnWrite, StoreError> {
        let mut w = TxnWrite::new(&self.keys, txn);
        let pairs = states
            .iter()
            .map(|(id, s)| Ok((id.0.to_vec(), codec::encode_state(s)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        w.hset(&self.keys.states(txn), 0, pairs);
        self.stage_event(&mut w, event)?;
        Ok(w)
    }

    pub(super) async fn revoke(
        &self,
        target: RevokeTarget,
        by: &Actor,
        reason: &str,
        event: EventId,
    ) -> Result<Revoked, StoreError> {
        let txn = match target {
            RevokeTarget::Txn(txn) => txn,
            RevokeTarget::Token(id) => match self.lookup(id).await? {
                Some((txn, _)) => txn,
                None => return Err(StoreError::NotFound),
            },
        };
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let whole = self.read_whole(txn).await?;
            let todo = match target {
                RevokeTarget::Token(root) => subtree(&whole.tree, root),
                RevokeTarget::Txn(_) => whole.tree.iter().map(|e| (e.id, e.id)).collect(),
            };
            let Some(&(first, _)) = todo.first() else {
                return Err(StoreError::NotFound);
            };
            let Some(any) = self.record(txn, first).await? else {
                return Err(StoreError::NotFound);
            };
            let todo = todo
                .into_iter()
                .map(|(id, cause)| (id, whole.state_of(id), cause));
            let states = mark_revoked(todo, event.at(), by, reason);
            if states.is_empty() {
                // "Revoked already" is an answer too: only once the replicas hold it.
                self.barrier(txn).await?;
                return Ok(Revoked {
                    ids: Vec::new(),
                    event: None,
                });
            }
            let ev = Event::revoked(event, &any, target.token(), by, reason, states.len());
            let w = self.stage_revocation(txn, &states, &ev)?;
            match self.commit(&w, &whole.version, &nonce).await? {
                Commit::Applied => {
                    self.saw_event(event);
                    return Ok(Revoked {
                        ids: states.into_iter().map(|(id, _)| id).collect(),
                        event: Some(ev),
                    });
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(txn))
    }

    pub(super) async fn revoke_party(
        &self,
        party: &str,
        by: &Actor,
        reason: &str,
        events: Arc<dyn EventIssuer>,
    ) -> Result<PartyRevoked, StoreError> {
        let reason = party_reason(party, reason);
        let mut done = PartyRevoked::default();
        let mut after: Option<TxnId> = None;
        // A transaction that cannot be revoked now (its shard failing over, say) does not
        // stop the walk: every other one is revoked, and the first error is answered at
        // the end, so the caller walks again.
        let mut failed: Option<StoreError> = None;
        loop {
            let page = self.party_page(party, after, PARTY_PAGE).await?;
            for &txn in &page {
                match self
                    .revoke_party_txn(txn, party, by, &reason, &*events)
                    .await
                {
                    Ok(ids) => done.add(ids),
                    Err(e) => {
                        tracing::warn!(%txn, error = %e, "revoking a disabled party's tokens in one transaction failed; walking on");
                        failed.get_or_insert(e);
                    }
                }
            }
            if page.len() < PARTY_PAGE {
                return match failed {
                    None => Ok(done),
                    Some(e) => Err(e),
                };
            }
            after = page.last().copied();
        }
    }

    /// One transaction's part of a party's revocation.
    async fn revoke_party_txn(
        &self,
        txn: TxnId,
        party: &str,
        by: &Actor,
        reason: &str,
        events: &dyn EventIssuer,
    ) -> Result<Vec<TokenId>, StoreError> {
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        // Records never change: read once, and only those of tokens not yet revoked.
        let mut records: BTreeMap<TokenId, TokenRecord> = BTreeMap::new();
        for attempt in 0..MAX_ATTEMPTS {
            let whole = self.read_whole(txn).await?;
            let wanted: Vec<TokenId> = whole
                .tree
                .iter()
                .map(|e| e.id)
                .filter(|id| !records.contains_key(id) && whole.state_of(*id).revoked.is_none())
                .collect();
            self.read_records(txn, &wanted, &mut records).await?;
            let found = party_txn_revocations(
                whole.tree.clone(),
                party,
                |id| Ok(whole.state_of(id)),
                |id| Ok(records.get(&id)),
            )?;
            let Some((todo, any)) = found else {
                self.barrier(txn).await?;
                return Ok(Vec::new());
            };
            let Some((states, event)) = plan_party_txn(todo, &any, by, reason, events) else {
                return Ok(Vec::new());
            };
            let written = match self.stage_revocation(txn, &states, &event) {
                Ok(w) => self.commit(&w, &whole.version, &nonce).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(Commit::Stale) => {
                    events.abandoned(event.id);
                    Self::backoff(attempt).await;
                }
                Ok(Commit::Applied) => {
                    self.saw_event(event.id);
                    return settle_party_txn(states, event, Ok(()), events);
                }
                Err(e) => return settle_party_txn(states, event, Err(e), events),
            }
        }
        Err(contended(txn))
    }
}

/// `(token, cause)` for `root` and every descendant, breadth first, children in id order;
/// empty when `root` is not in the tree.
fn subtree(tree: &[TreeEntry], root: TokenId) -> Vec<(TokenId, TokenId)> {
    if !tree.iter().any(|e| e.id == root) {
        return Vec::new();
    }
    let mut children: BTreeMap<TokenId, BTreeSet<TokenId>> = BTreeMap::new();
    for e in tree {
        if let Some(p) = e.parent {
            children.entry(p).or_default().insert(e.id);
        }
    }
    let mut seen = BTreeSet::from([root]);
    let mut queue = VecDeque::from([root]);
    let mut out = Vec::new();
    while let Some(id) = queue.pop_front() {
        out.push((id, root));
        for &child in children.get(&id).into_iter().flatten() {
            if seen.insert(child) {
                queue.push_back(child);
            }
        }
    }
    out
}
