//! [`MemoryStore`]: an in-process [`TokenStore`] with the same semantics as the durable
//! backends and none of their setup, so the layers above the store test fast.
//! Nothing survives the process.

use crate::api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, MAX_OPEN_CONSENTS_PER_TXN, PARTY_PAGE,
    PartyRevoked, PurgeStats, RevokeTarget, Revoked, StoreError, StoreStats, TokenStore, TreeEntry,
    TxnPage, TxnQuery, UseOutcome, admit_child, collect_consent_page, collect_page,
    commit_party_txn, consent_changeable, consent_open, mark_revoked, party_reason,
    party_txn_revocations, spend_use, txn_range,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use writ_core::limits::MAX_TOKENS_PER_TXN;
use writ_core::{
    Actor, ConsentError, ConsentId, ConsentRequest, Decision, Event, EventId, PartyDisable,
    TokenId, TokenRecord, TokenState, TxnId, UnixMillis,
};

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
    /// Mirrors `txns`: each transaction's root token.
    txns: BTreeMap<TxnId, TokenId>,
    /// How many tokens each transaction has held, purged ones included (the count the
    /// RocksDB store keeps in its `txns` values).
    txn_sizes: BTreeMap<TxnId, usize>,
    /// Mirrors `subject_txns`.
    subject_txns: BTreeSet<(String, TxnId)>,
    /// Mirrors `party_txns` and its inverse `txn_parties`.
    party_txns: BTreeSet<(String, TxnId)>,
    txn_parties: BTreeSet<(TxnId, String)>,
    /// Mirrors `events` and `event_log`.
    events: BTreeMap<(TxnId, EventId), Event>,
    event_log: BTreeSet<(EventId, TxnId)>,
    /// Mirrors `parties`: disabled parties.
    parties: BTreeMap<String, PartyDisable>,
    /// Mirrors `consents`: consent requests by id.
    consents: BTreeMap<ConsentId, ConsentRequest>,
    /// Mirrors `consent_keys`: the newest request under each action key.
    consent_keys: BTreeMap<[u8; 32], ConsentId>,
    /// Mirrors `consent_open`: (expires_at, id) of each request that may still change.
    consent_open: BTreeSet<(UnixMillis, ConsentId)>,
    /// Mirrors `consent_txns`: (txn, id) of every request.
    consent_txns: BTreeSet<(TxnId, ConsentId)>,
}

/// The bounds of one transaction's entries in `consent_txns`.
fn consent_txn_range(txn: TxnId) -> std::ops::RangeInclusive<(TxnId, ConsentId)> {
    (txn, ConsentId([0; 16]))..=(txn, ConsentId([0xff; 16]))
}

impl State {
    fn txn_ids(&self, txn: TxnId) -> Vec<TokenId> {
        let lo = (txn, TokenId([0; 16]));
        let hi = (txn, TokenId([0xff; 16]));
        self.txn_tokens.range(lo..=hi).map(|&(_, id)| id).collect()
    }

    /// Every token of `txn` with its place in the tree, in key order.
    fn txn_tree(&self, txn: TxnId) -> Vec<TreeEntry> {
        self.txn_ids(txn)
            .into_iter()
            .filter_map(|id| self.tokens.get(&id).map(TreeEntry::of))
            .collect()
    }

    fn child_ids(&self, parent: TokenId) -> Vec<TokenId> {
        let lo = (parent, TokenId([0; 16]));
        let hi = (parent, TokenId([0xff; 16]));
        self.children.range(lo..=hi).map(|&(_, id)| id).collect()
    }

    fn add_party(&mut self, txn: TxnId, party: &str) {
        self.party_txns.insert((party.to_owned(), txn));
        self.txn_parties.insert((txn, party.to_owned()));
    }

    fn append(&mut self, event: Event) {
        self.event_log.insert((event.id, event.txn));
        self.events.insert((event.txn, event.id), event);
    }

    fn insert_child(
        &mut self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> Result<(), StoreError> {
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
        let held = self.txn_sizes.get(&record.txn).copied().unwrap_or_else(|| {
            self.txn_tokens
                .range(lo..=hi)
                .take(MAX_TOKENS_PER_TXN)
                .count()
        });
        admit_child(parent, &mut pstate, &record, max_children, held)?;
        if let Some(n) = self.txn_sizes.get_mut(&record.txn) {
            *n = held + 1;
        }
        self.states.insert(parent_id, pstate);
        self.children.insert((parent_id, record.token_id));
        self.add_party(record.txn, &record.audience.id);
        self.put_record(record);
        self.append(event);
        Ok(())
    }

    fn insert_root(&mut self, record: TokenRecord, event: Event) -> Result<(), StoreError> {
        if self.tokens.contains_key(&record.token_id) {
            return Err(StoreError::Conflict);
        }
        let txn = record.txn;
        self.txns.insert(txn, record.token_id);
        self.txn_sizes.insert(txn, 1);
        self.subject_txns.insert((record.subject.clone(), txn));
        self.add_party(txn, &record.current_actor().id.clone());
        self.add_party(txn, &record.audience.id.clone());
        self.put_record(record);
        self.append(event);
        Ok(())
    }

    fn root_of(&self, txn: TxnId) -> Option<(TokenRecord, TokenState)> {
        let id = self.txns.get(&txn)?;
        let record = self.tokens.get(id)?.clone();
        Some((record, self.states.get(id).cloned().unwrap_or_default()))
    }

    fn list_txns(&self, query: &TxnQuery) -> Result<TxnPage, StoreError> {
        let (lo, hi) = txn_range(query);
        let hi = hi.unwrap_or(TxnId([0xff; 16]));
        if lo >= hi {
            return Ok(TxnPage {
                roots: Vec::new(),
                next: None,
            });
        }
        fn keyed<'a>(
            set: &'a BTreeSet<(String, TxnId)>,
            key: &str,
            (lo, hi): (TxnId, TxnId),
        ) -> impl Iterator<Item = Result<TxnId, StoreError>> + 'a {
            set.range((key.to_owned(), lo)..(key.to_owned(), hi))
                .rev()
                .map(|(_, t)| Ok(*t))
        }
        let root_of = |t| Ok(self.root_of(t));
        // Lazily, so the scan budget bounds the work as in the durable store.
        match (&query.party, &query.subject) {
            (Some(p), _) => collect_page(query, keyed(&self.party_txns, p, (lo, hi)), root_of),
            (None, Some(s)) => collect_page(query, keyed(&self.subject_txns, s, (lo, hi)), root_of),
            (None, None) => collect_page(
                query,
                self.txns.range(lo..hi).rev().map(|(t, _)| Ok(*t)),
                root_of,
            ),
        }
    }

    fn events(&self, txn: TxnId, after: Option<EventId>, limit: usize) -> Vec<Event> {
        let lo = (
            txn,
            after.map_or(EventId(0), |a| EventId(a.0.saturating_add(1))),
        );
        let hi = (txn, EventId(u64::MAX));
        self.events
            .range(lo..=hi)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn purge_events(&mut self, cutoff: UnixMillis, max: usize) -> PurgeStats {
        let first_kept = EventId::first_at(cutoff);
        let due: Vec<(EventId, TxnId)> = self
            .event_log
            .iter()
            .take_while(|(id, _)| *id < first_kept)
            .take(max)
            .copied()
            .collect();
        for (id, txn) in &due {
            self.event_log.remove(&(*id, *txn));
            self.events.remove(&(*txn, *id));
        }
        PurgeStats {
            tokens: due.len(),
            more: self
                .event_log
                .first()
                .is_some_and(|(id, _)| *id < first_kept),
        }
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
                } else {
                    self.unindex_txn(&record);
                }
            }
        }
        PurgeStats {
            tokens: due.len(),
            more: self.expiry.range(lo..hi).next().is_some(),
        }
    }

    /// Drops a purged root's transaction from the listing indexes.
    fn unindex_txn(&mut self, root: &TokenRecord) {
        let txn = root.txn;
        self.txns.remove(&txn);
        self.txn_sizes.remove(&txn);
        self.subject_txns.remove(&(root.subject.clone(), txn));
        let parties: Vec<String> = self
            .txn_parties
            .range((txn, String::new())..)
            .take_while(|(t, _)| *t == txn)
            .map(|(_, p)| p.clone())
            .collect();
        for p in parties {
            self.txn_parties.remove(&(txn, p.clone()));
            self.party_txns.remove(&(p, txn));
        }
    }

    fn stats(&self) -> StoreStats {
        let index =
            self.txn_tokens.len() + self.expiry.len() + self.states.len() + self.children.len();
        let txn_index = self.txns.len()
            + self.subject_txns.len()
            + self.party_txns.len()
            + self.txn_parties.len();
        let consent_index =
            self.consent_keys.len() + self.consent_open.len() + self.consent_txns.len();
        StoreStats {
            tokens: self.tokens.len() as u64,
            index_entries: index as u64,
            txn_index_entries: txn_index as u64,
            events: self.events.len() as u64,
            consents: self.consents.len() as u64,
            consent_index_entries: consent_index as u64,
        }
    }

    fn revoke(
        &mut self,
        target: RevokeTarget,
        by: &Actor,
        reason: &str,
        event: EventId,
    ) -> Result<Revoked, StoreError> {
        let at = event.at();
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
        // No token: an unknown transaction (or one purged whole).
        let Some(any) = todo
            .first()
            .and_then(|(id, _)| self.tokens.get(id))
            .cloned()
        else {
            return Err(StoreError::NotFound);
        };
        let todo = todo
            .into_iter()
            .map(|(id, cause)| (id, self.state_of(id), cause));
        let states = mark_revoked(todo, at, by, reason);
        // Nothing new: nothing is recorded.
        if states.is_empty() {
            return Ok(Revoked {
                ids: Vec::new(),
                event: None,
            });
        }
        let event = Event::revoked(event, &any, target.token(), by, reason, states.len());
        self.put_revocation(&states, &event);
        Ok(Revoked {
            ids: states.into_iter().map(|(id, _)| id).collect(),
            event: Some(event),
        })
    }

    /// A token's state: the default state when it has no entry.
    fn state_of(&self, id: TokenId) -> TokenState {
        self.states.get(&id).cloned().unwrap_or_default()
    }

    /// Stores revoked tokens' new states with the revocation's event.
    fn put_revocation(&mut self, states: &[(TokenId, TokenState)], event: &Event) {
        for (id, state) in states {
            self.states.insert(*id, state.clone());
        }
        self.append(event.clone());
    }

    /// Up to `limit` transactions listed under `party`, after `after` (all when `None`),
    /// in order.
    fn party_page(&self, party: &str, after: Option<TxnId>, limit: usize) -> Vec<TxnId> {
        let lo = match after {
            Some(txn) => Bound::Excluded((party.to_owned(), txn)),
            None => Bound::Included((party.to_owned(), TxnId([0; 16]))),
        };
        let hi = Bound::Included((party.to_owned(), TxnId([0xff; 16])));
        self.party_txns
            .range((lo, hi))
            .take(limit)
            .map(|&(_, txn)| txn)
            .collect()
    }

    /// One transaction's part of a party's revocation.
    fn revoke_party_txn(
        &mut self,
        txn: TxnId,
        party: &str,
        by: &Actor,
        reason: &str,
        events: &dyn EventIssuer,
    ) -> Result<Vec<TokenId>, StoreError> {
        let found = party_txn_revocations(
            self.txn_tree(txn),
            party,
            |id| Ok(self.state_of(id)),
            |id| Ok(self.tokens.get(&id)),
        )?;
        let Some((todo, any)) = found else {
            return Ok(Vec::new());
        };
        commit_party_txn(todo, &any, by, reason, events, |states, event| {
            self.put_revocation(states, event);
            Ok(())
        })
    }

    fn insert_consent(
        &mut self,
        request: ConsentRequest,
        event: Event,
    ) -> Result<ConsentInsert, StoreError> {
        // Refused over the same bound as the durable store's encoding.
        crate::codec::encode_consent(&request)?;
        if self.consents.contains_key(&request.id) {
            return Err(StoreError::Conflict);
        }
        let now = request.created_at;
        if let Some(existing) = self
            .consent_keys
            .get(&request.key)
            .and_then(|id| self.consents.get(id))
            && consent_open(existing, now)
        {
            return Ok(ConsentInsert::Existing(Box::new(existing.clone())));
        }
        let open = self
            .consent_txns
            .range(consent_txn_range(request.txn))
            .filter(|(_, id)| self.consents.get(id).is_some_and(|r| consent_open(r, now)))
            .take(MAX_OPEN_CONSENTS_PER_TXN)
            .count();
        if open >= MAX_OPEN_CONSENTS_PER_TXN {
            return Err(StoreError::TooManyConsents {
                limit: MAX_OPEN_CONSENTS_PER_TXN,
            });
        }
        self.consent_keys.insert(request.key, request.id);
        self.consent_txns.insert((request.txn, request.id));
        self.put_consent(request);
        self.append(event);
        Ok(ConsentInsert::Inserted)
    }

    /// Stores a request's new state; one that can no longer change leaves the open index.
    fn put_consent(&mut self, request: ConsentRequest) {
        let entry = (request.expires_at, request.id);
        if consent_changeable(&request) {
            self.consent_open.insert(entry);
        } else {
            self.consent_open.remove(&entry);
        }
        self.consents.insert(request.id, request);
    }

    fn decide_consent(
        &mut self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> Result<ConsentRequest, StoreError> {
        let mut request = self
            .consents
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        request.decide(decision)?;
        self.put_consent(request.clone());
        self.append(event);
        Ok(request)
    }

    fn redeem_consent(
        &mut self,
        id: ConsentId,
        by: &str,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> Result<ConsentRequest, StoreError> {
        let mut request = self
            .consents
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let token = child.parent.ok_or(ConsentError::WrongToken(id))?;
        request.redeem(by, token, child.token_id, child.issued_at)?;
        // Checks everything before it changes anything: on an error nothing is written.
        self.insert_child(child, max_children, event)?;
        self.put_consent(request.clone());
        Ok(request)
    }

    fn expire_consents(
        &mut self,
        now: UnixMillis,
        max: usize,
        by: &Actor,
        events: &dyn EventIssuer,
    ) -> (usize, bool) {
        let due: Vec<(UnixMillis, ConsentId)> = self
            .consent_open
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .copied()
            .collect();
        let mut expired = 0;
        for entry in due {
            self.consent_open.remove(&entry);
            let Some(before) = self.consents.get(&entry.1).cloned() else {
                continue;
            };
            let mut request = before.clone();
            if request.expire(now) {
                let event = Event::consent_expired(events.issue(), &before, by);
                self.put_consent(request);
                self.append(event.clone());
                events.stored(event);
                expired += 1;
            }
        }
        let more = self.consent_open.first().is_some_and(|(at, _)| *at <= now);
        (expired, more)
    }

    fn purge_consents(&mut self, cutoff: UnixMillis, max: usize) -> PurgeStats {
        let mut due = self
            .consents
            .values()
            .take_while(|r| r.id.created_at() < cutoff)
            .filter(|r| !consent_changeable(r))
            .map(|r| r.id);
        let ids: Vec<ConsentId> = due.by_ref().take(max).collect();
        let more = due.next().is_some();
        for id in &ids {
            let Some(r) = self.consents.remove(id) else {
                continue;
            };
            self.consent_txns.remove(&(r.txn, r.id));
            self.consent_open.remove(&(r.expires_at, r.id));
            if self.consent_keys.get(&r.key) == Some(&r.id) {
                self.consent_keys.remove(&r.key);
            }
        }
        PurgeStats {
            tokens: ids.len(),
            more,
        }
    }

    fn list_consents(&self, query: &ConsentQuery) -> Result<ConsentPage, StoreError> {
        let hi = query.before.map_or(Bound::Unbounded, Bound::Excluded);
        let request = |id: &ConsentId| Ok((*id, self.consents.get(id).cloned()));
        match query.txn {
            Some(txn) => {
                let lo = Bound::Included((txn, ConsentId([0; 16])));
                let hi = match hi {
                    Bound::Excluded(id) => Bound::Excluded((txn, id)),
                    _ => Bound::Included((txn, ConsentId([0xff; 16]))),
                };
                collect_consent_page(
                    query,
                    self.consent_txns
                        .range((lo, hi))
                        .rev()
                        .map(|(_, id)| request(id)),
                )
            }
            None => collect_consent_page(
                query,
                self.consents
                    .range((Bound::Unbounded, hi))
                    .rev()
                    .map(|(id, _)| request(id)),
            ),
        }
    }

    fn consume_use(&mut self, id: TokenId, event: Option<Event>) -> UseOutcome {
        let outcome = self.consume(id);
        if let (UseOutcome::Consumed { .. }, Some(e)) = (outcome, event) {
            self.append(e);
        }
        outcome
    }

    fn consume(&mut self, id: TokenId) -> UseOutcome {
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
        spend_use(max, self.states.entry(id).or_default())
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
    fn insert(
        &self,
        record: TokenRecord,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().insert_root(record, event) }
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().tokens.get(&id).cloned()) }
    }

    fn sync(&self, _txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send {
        // Nothing to make durable: the store is memory.
        std::future::ready(Ok(()))
    }

    fn txn_tree(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TreeEntry>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().txn_tree(txn)) }
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
    ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send
    {
        let store = self.clone();
        async move {
            let state = store.lock();
            Ok(state.tokens.get(&id).map(|r| {
                (
                    Arc::new(r.clone()),
                    state.states.get(&id).cloned().unwrap_or_default(),
                )
            }))
        }
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().insert_child(record, max_children, event) }
    }

    fn revoke(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        event: EventId,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().revoke(target, &by, &reason, event) }
    }

    /// Walks the index a page at a time and takes the lock for each transaction on its
    /// own, as the durable store does, so other calls interleave.
    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<PartyRevoked, StoreError>> + Send {
        let store = self.clone();
        async move {
            let reason = party_reason(&party, &reason);
            let mut done = PartyRevoked::default();
            let mut after = None;
            loop {
                let page = store.lock().party_page(&party, after, PARTY_PAGE);
                for &txn in &page {
                    let ids = store
                        .lock()
                        .revoke_party_txn(txn, &party, &by, &reason, &*events)?;
                    done.add(ids);
                }
                if page.len() < PARTY_PAGE {
                    return Ok(done);
                }
                after = page.last().copied();
            }
        }
    }

    fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move {
            let mut state = store.lock();
            match disabled {
                Some(d) => state
                    .parties
                    .insert(party, PartyDisable::new(d.at, d.by, d.reason)),
                None => state.parties.remove(&party),
            };
            Ok(())
        }
    }

    fn disabled_parties(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PartyDisable)>, StoreError>> + Send {
        let store = self.clone();
        async move {
            let state = store.lock();
            Ok(state
                .parties
                .iter()
                .map(|(p, d)| (p.clone(), d.clone()))
                .collect())
        }
    }

    fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().consume_use(id, event)) }
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

    fn list_txns(
        &self,
        query: TxnQuery,
    ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().list_txns(&query) }
    }

    fn append_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        async move {
            let mut state = store.lock();
            for e in events {
                state.append(e);
            }
            Ok(())
        }
    }

    fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().events(txn, after, limit)) }
    }

    fn last_event_id(&self) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().event_log.last().map(|(id, _)| *id)) }
    }

    fn purge_events(
        &self,
        cutoff: UnixMillis,
        max_events: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().purge_events(cutoff, max_events)) }
    }

    fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().insert_consent(request, event) }
    }

    fn consent(
        &self,
        id: ConsentId,
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().consents.get(&id).cloned()) }
    }

    fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        let store = self.clone();
        async move {
            let state = store.lock();
            Ok(state
                .consent_keys
                .get(&key)
                .and_then(|id| state.consents.get(id))
                .cloned())
        }
    }

    fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().decide_consent(id, decision, event) }
    }

    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let store = self.clone();
        async move {
            store
                .lock()
                .redeem_consent(id, &by, child, max_children, event)
        }
    }

    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().expire_consents(now, max, &by, &*events)) }
    }

    fn purge_consents(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        let store = self.clone();
        async move { Ok(store.lock().purge_consents(cutoff, max)) }
    }

    fn list_consents(
        &self,
        query: ConsentQuery,
    ) -> impl Future<Output = Result<ConsentPage, StoreError>> + Send {
        let store = self.clone();
        async move { store.lock().list_consents(&query) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Shorthand};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        conformance::run(MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn audit_and_listing() {
        conformance::audit_and_listing(MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn a_listing_scan_stops_at_its_budget_and_continues_from_the_cursor() {
        use crate::api::{MAX_TXN_SCAN, TxnQuery};
        let store = MemoryStore::new();
        let n = MAX_TXN_SCAN as u64 + 50;
        for i in 0..n {
            let r = conformance::record(
                conformance::txn(1_000 + i),
                conformance::tid(i as u32),
                None,
            );
            store.put(r).await.unwrap();
        }
        // Nothing is revoked: a page examines the budget, finds nothing, and says where
        // to go on; the next examines the rest and ends.
        let query = |before| TxnQuery {
            subject: None,
            party: None,
            since: None,
            until: None,
            status: Some(writ_core::Status::Revoked),
            now: UnixMillis(0),
            before,
            limit: 10,
        };
        let first = store.list_txns(query(None)).await.unwrap();
        assert!(first.roots.is_empty());
        assert_eq!(first.next, Some(conformance::txn(1_000 + 50)));
        let second = store.list_txns(query(first.next)).await.unwrap();
        assert!(second.roots.is_empty());
        assert_eq!(second.next, None);
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
        a.put(r.clone()).await.unwrap();
        assert_eq!(b.get(r.token_id).await.unwrap(), Some(r));
        assert_eq!(format!("{b:?}"), "MemoryStore { tokens: 1 }");
    }
}
