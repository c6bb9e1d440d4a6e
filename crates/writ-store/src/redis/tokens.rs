//! Token records, states, children and uses on the cluster.

use super::keys::{encode_tree, id16};
use super::{Commit, Inner, MAX_ATTEMPTS, TxnWrite, backend, contended, function, nonce};
use crate::api::{StoreError, TreeEntry, UseOutcome, admit_child, spend_use};
use crate::codec;
use redis::Pipeline;
use std::sync::Arc;
use writ_core::{Event, TokenId, TokenRecord, TokenState, TxnId};

/// What a child insert reads of its transaction, in one round trip.
type ChildRead = (
    Option<String>,
    Option<u64>,
    bool,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// A token read through its pointer: transaction, record, raw state.
type Fetched = (TxnId, Arc<TokenRecord>, Option<Vec<u8>>);

impl Inner {
    /// The transaction and record of a token: from the cache, else through its pointer.
    pub(super) async fn lookup(
        &self,
        id: TokenId,
    ) -> Result<Option<(TxnId, Arc<TokenRecord>)>, StoreError> {
        if let Some(found) = self.cache.get(id) {
            return Ok(Some(found));
        }
        Ok(self.fetch(id).await?.map(|(txn, record, _)| (txn, record)))
    }

    /// A token read through its pointer: its transaction, record (cached from then on) and
    /// raw state, the last two in one round trip.
    async fn fetch(&self, id: TokenId) -> Result<Option<Fetched>, StoreError> {
        let txn: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.token(id))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let Some(txn) = txn else { return Ok(None) };
        let txn = TxnId(id16(&txn, "token pointer")?);
        let (record, state): (Option<Vec<u8>>, Option<Vec<u8>>) = Pipeline::new()
            .hget(self.keys.records(txn), &id.0[..])
            .hget(self.keys.states(txn), &id.0[..])
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        // A pointer without a record: an insert that was refused (or is still running).
        let Some(record) = record else {
            return Ok(None);
        };
        let size = record.len();
        let record = Arc::new(codec::decode(&record)?);
        self.cache.put(id, txn, record.clone(), size);
        Ok(Some((txn, record, state)))
    }

    /// A token's record and current state; the state always from the master (one round
    /// trip with the record cached, two without).
    pub(super) async fn get_with_state(
        &self,
        id: TokenId,
    ) -> Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError> {
        let (record, state) = match self.cache.get(id) {
            Some((txn, record)) => {
                let state: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg(self.keys.states(txn))
                    .arg(&id.0[..])
                    .query_async(&mut self.read_conn())
                    .await
                    .map_err(backend)?;
                (record, state)
            }
            None => match self.fetch(id).await? {
                Some((_, record, state)) => (record, state),
                None => return Ok(None),
            },
        };
        match state {
            Some(s) => Ok(Some((record, codec::decode_state(&s)?))),
            // Expired and gone since it was cached.
            None => {
                self.cache.forget(id);
                Ok(None)
            }
        }
    }

    pub(super) async fn txn_tree(&self, txn: TxnId) -> Result<Vec<TreeEntry>, StoreError> {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.keys.tree(txn))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let mut tree = raw
            .iter()
            .map(|(id, v)| super::keys::decode_tree(id, v))
            .collect::<Result<Vec<_>, _>>()?;
        tree.sort_by_key(|e| e.id);
        Ok(tree)
    }

    /// Claims a token id for `txn` across the cluster (its pointer), durably. Another
    /// transaction's claim is a [`StoreError::Conflict`]; this transaction's (an earlier
    /// attempt, or a concurrent duplicate) is left to the transaction's own check.
    pub(super) async fn claim(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let key = self.keys.token(record.token_id);
        let at = self.txn_expiry(record.grant.expires_at);
        let set: Option<String> = self
            .durable(claim_cmd(&key, record, Hold::Until(at)))
            .await?;
        if set.is_some() {
            return Ok(());
        }
        match self.owner(&key).await? {
            Some(t) if t == record.txn => Ok(()),
            Some(_) => Err(StoreError::Conflict),
            // Expired in between: claim again (once; a second miss is a real race).
            None => {
                let set: Option<String> = self
                    .durable(claim_cmd(&key, record, Hold::Until(at)))
                    .await?;
                set.map(|_| ()).ok_or(StoreError::Conflict)
            }
        }
    }

    /// The transaction a token id's pointer names, if any.
    async fn owner(&self, key: &str) -> Result<Option<TxnId>, StoreError> {
        let owner: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        owner
            .map(|t| id16(&t, "token pointer").map(TxnId))
            .transpose()
    }

    /// Claims the id of a root minted under an idempotency key, for a lease only: every
    /// attempt of a keyed Mint derives the same token id but starts a new transaction, so
    /// an attempt that failed between its claim and its commit must not hold the id for
    /// ever. Another transaction's claim is a [`StoreError::Conflict`] once that
    /// transaction holds the token (the service answers the retry with it), and a
    /// retryable [`StoreError::Backend`] while it does not (an attempt still running, or
    /// one that failed: its lease runs out). [`keep`](Self::keep) makes the claim the
    /// token's for good once its record is stored.
    pub(super) async fn claim_leased(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let key = self.keys.token(record.token_id);
        let lease = self.claim_lease();
        let set: Option<String> = self
            .durable(claim_cmd(&key, record, Hold::For(lease)))
            .await?;
        if set.is_some() {
            return Ok(());
        }
        let Some(owner) = self.owner(&key).await? else {
            return Err(unfinished(record.token_id));
        };
        if owner == record.txn {
            return Ok(());
        }
        // Stored by an earlier attempt whose answer was lost (or which failed after its
        // commit): its token for good, so the retry the service answers with it holds.
        let Some(earlier) = self.record(owner, record.token_id).await? else {
            return Err(unfinished(record.token_id));
        };
        self.keep(&earlier).await?;
        Err(StoreError::Conflict)
    }

    /// Gives up a leased claim of this attempt's (best effort: otherwise the lease runs
    /// out).
    pub(super) async fn release(&self, record: &TokenRecord) {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("release"))
            .arg(1)
            .arg(self.keys.token(record.token_id))
            .arg(&record.txn.0[..]);
        let released: Result<i64, _> = cmd.query_async(&mut self.write_conn()).await;
        if let Err(e) = released {
            tracing::debug!(error = %e, "releasing a claim; its lease will run out");
        }
    }

    /// How long a leased claim holds before its record must be stored: ten response
    /// timeouts, so an attempt that is merely slow (retries, a failover) keeps it.
    pub(super) fn claim_lease(&self) -> u64 {
        let ms = self.opts.response_timeout.as_millis().saturating_mul(10);
        u64::try_from(ms).unwrap_or(u64::MAX).max(10_000)
    }

    /// Makes a leased claim the token's until the transaction's expiry, durably, once its
    /// record is stored. If the lease ran out and another attempt took the id, the token
    /// this call stored is unreachable (its pointer names the other transaction) and the
    /// attempt fails as unfinished: its caller retries and is answered with the other's.
    async fn keep(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let at = self.txn_expiry(record.grant.expires_at);
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("hold"))
            .arg(1)
            .arg(self.keys.token(record.token_id))
            .arg(&record.txn.0[..])
            .arg(at);
        let held: i64 = self.call_durable(cmd).await?;
        if held == 1 {
            Ok(())
        } else {
            Err(unfinished(record.token_id))
        }
    }

    /// The writes every new token makes in its transaction: record, default state, tree
    /// entry, and its event.
    fn stage_token(
        &self,
        w: &mut TxnWrite,
        record: &TokenRecord,
        encoded: Vec<u8>,
        event: &Event,
        at: u64,
    ) -> Result<(), StoreError> {
        let txn = record.txn;
        let id = record.token_id.0.to_vec();
        w.hset(&self.keys.records(txn), at, vec![(id.clone(), encoded)]);
        w.hset(
            &self.keys.states(txn),
            at,
            vec![(id.clone(), codec::encode_state(&TokenState::default())?)],
        );
        w.hset(
            &self.keys.tree(txn),
            at,
            vec![(id, encode_tree(&TreeEntry::of(record)))],
        );
        self.stage_event(w, event)
    }

    /// Adds `event` to its transaction's trail in `w`.
    pub(super) fn stage_event(&self, w: &mut TxnWrite, event: &Event) -> Result<(), StoreError> {
        let member = super::keys::event_member(event.id, &codec::encode_event(event)?);
        w.zadd(
            &self.keys.events(event.txn),
            self.event_expiry(event.id),
            event.id.0,
            member,
        );
        Ok(())
    }

    pub(super) async fn insert(&self, record: TokenRecord, event: Event) -> Result<(), StoreError> {
        let encoded = codec::encode(&record)?;
        // A random id is never claimed twice; a keyed Mint's is derived, so its attempts
        // share it across transactions.
        let keyed = record.idempotency.is_some();
        // The claim and the indexes are on other shards than the transaction and each
        // other: written at once, all before the transaction's write.
        if !keyed {
            tokio::try_join!(self.claim(&record), self.index_root(&record))?;
            return self
                .insert_claimed(&record, encoded, &event)
                .await
                .map_err(|(e, _)| e);
        }
        let (claimed, indexed) = tokio::join!(self.claim_leased(&record), self.index_root(&record));
        claimed?;
        if let Err(e) = indexed {
            self.release(&record).await;
            return Err(e);
        }
        match self.insert_claimed(&record, encoded, &event).await {
            Ok(()) => self.keep(&record).await,
            Err((e, Attempt::NotCommitted)) => {
                // Nothing of this attempt is stored: its retry need not wait for the lease.
                self.release(&record).await;
                Err(e)
            }
            Err((e, Attempt::MaybeCommitted)) => Err(e),
        }
    }

    /// A root's transaction write, once its id is claimed and its indexes written. On an
    /// error, whether the write may have landed.
    pub(super) async fn insert_claimed(
        &self,
        record: &TokenRecord,
        encoded: Vec<u8>,
        event: &Event,
    ) -> Result<(), (StoreError, Attempt)> {
        let not = |e| (e, Attempt::NotCommitted);
        let (txn, id) = (record.txn, record.token_id);
        let at = self.txn_expiry(record.grant.expires_at);
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, count, root, exists): (
                Option<String>,
                Option<u64>,
                Option<Vec<u8>>,
                bool,
            ) = Pipeline::new()
                .hget(self.keys.meta(txn), "v")
                .hget(self.keys.meta(txn), "count")
                .hget(self.keys.meta(txn), "root")
                .hexists(self.keys.records(txn), &id.0[..])
                .query_async(&mut self.read_conn())
                .await
                .map_err(|e| not(backend(e)))?;
            if exists {
                return Err(not(StoreError::Conflict));
            }
            let mut w = TxnWrite::new(&self.keys, txn);
            let mut meta = vec![(
                b"count".to_vec(),
                (count.unwrap_or(0) + 1).to_string().into_bytes(),
            )];
            if root.is_none() {
                meta.push((b"root".to_vec(), id.0.to_vec()));
            }
            w.hset(&self.keys.meta(txn), at, meta);
            self.stage_token(&mut w, record, encoded.clone(), event, at)
                .map_err(not)?;
            match self
                .commit(&w, &version.unwrap_or_default(), &nonce)
                .await
                .map_err(|e| (e, Attempt::MaybeCommitted))?
            {
                Commit::Applied => {
                    self.saw_event(event.id);
                    return Ok(());
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(not(contended(txn)))
    }

    pub(super) async fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> Result<(), StoreError> {
        let parent = record.parent.ok_or(StoreError::ParentMissing)?;
        let encoded = codec::encode(&record)?;
        let nonce = nonce();
        let mut claimed = false;
        let _serial = self.lock(record.txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let mut w = TxnWrite::new(&self.keys, record.txn);
            let version = self
                .stage_child(&mut w, &record, encoded.clone(), parent, max_children)
                .await?;
            if !claimed {
                // Only once the rule admits the child: its pointer and party entry, so a
                // refused child leaves no claim on its id.
                tokio::try_join!(
                    self.claim(&record),
                    self.index_party(record.txn, &record.audience.id)
                )?;
                claimed = true;
            }
            self.stage_event(&mut w, &event)?;
            match self.commit(&w, &version, &nonce).await? {
                Commit::Applied => {
                    self.saw_event(event.id);
                    return Ok(());
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(record.txn))
    }

    /// Reads what admitting `record` under `parent` needs, applies [`admit_child`] and
    /// stages the child and the parent's new state in `w` (not the event). Returns the
    /// version read. Shared by `insert_child` and consent redemption.
    pub(super) async fn stage_child(
        &self,
        w: &mut TxnWrite,
        record: &TokenRecord,
        encoded: Vec<u8>,
        parent: TokenId,
        max_children: u32,
    ) -> Result<String, StoreError> {
        let txn = record.txn;
        let (version, count, exists, parent_record, parent_state): ChildRead = Pipeline::new()
            .hget(self.keys.meta(txn), "v")
            .hget(self.keys.meta(txn), "count")
            .hexists(self.keys.records(txn), &record.token_id.0[..])
            .hget(self.keys.records(txn), &parent.0[..])
            .hget(self.keys.states(txn), &parent.0[..])
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        if exists {
            return Err(StoreError::Conflict);
        }
        let (Some(parent_record), Some(parent_state)) = (parent_record, parent_state) else {
            return Err(StoreError::ParentMissing);
        };
        let parent_record = codec::decode(&parent_record)?;
        if parent_record.txn != txn {
            return Err(StoreError::ParentMissing);
        }
        let mut parent_state = codec::decode_state(&parent_state)?;
        let held = usize::try_from(count.unwrap_or(0)).unwrap_or(usize::MAX);
        admit_child(
            &parent_record,
            &mut parent_state,
            record,
            max_children,
            held,
        )?;
        // A child never outlives its parent, so the transaction's expiry stands.
        let at = self.txn_expiry(record.grant.expires_at);
        w.hset(
            &self.keys.meta(txn),
            at,
            vec![(b"count".to_vec(), (held + 1).to_string().into_bytes())],
        );
        let id = record.token_id.0.to_vec();
        w.hset(&self.keys.records(txn), at, vec![(id.clone(), encoded)]);
        w.hset(
            &self.keys.states(txn),
            at,
            vec![
                (id.clone(), codec::encode_state(&TokenState::default())?),
                (parent.0.to_vec(), codec::encode_state(&parent_state)?),
            ],
        );
        w.hset(
            &self.keys.tree(txn),
            at,
            vec![(id, encode_tree(&TreeEntry::of(record)))],
        );
        Ok(version.unwrap_or_default())
    }

    pub(super) async fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> Result<UseOutcome, StoreError> {
        let Some((txn, record)) = self.lookup(id).await? else {
            return Ok(UseOutcome::Unknown);
        };
        let Some(max) = record.grant.max_uses else {
            // Nothing to count: only the event is written (as RocksStore does).
            let Some((_, state)) = self.get_with_state(id).await? else {
                return Ok(UseOutcome::Unknown);
            };
            if state.revoked.is_some() {
                return Ok(UseOutcome::Revoked);
            }
            if let Some(e) = event {
                self.append_events(vec![e]).await?;
            }
            return Ok(UseOutcome::Consumed { remaining: None });
        };
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, state): (Option<String>, Option<Vec<u8>>) = Pipeline::new()
                .hget(self.keys.meta(txn), "v")
                .hget(self.keys.states(txn), &id.0[..])
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            let Some(state) = state else {
                self.cache.forget(id);
                return Ok(UseOutcome::Unknown);
            };
            let mut state = codec::decode_state(&state)?;
            let outcome = spend_use(max, &mut state);
            if !matches!(outcome, UseOutcome::Consumed { .. }) {
                return Ok(outcome);
            }
            let mut w = TxnWrite::new(&self.keys, txn);
            w.hset(
                &self.keys.states(txn),
                0,
                vec![(id.0.to_vec(), codec::encode_state(&state)?)],
            );
            if let Some(e) = &event {
                self.stage_event(&mut w, e)?;
            }
            match self
                .commit(&w, &version.unwrap_or_default(), &nonce)
                .await?
            {
                Commit::Applied => {
                    if let Some(e) = &event {
                        self.saw_event(e.id);
                    }
                    return Ok(outcome);
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(txn))
    }
}

/// `SET <pointer> <txn> NX [PXAT at]`.
/// How long a claim holds its pointer.
#[derive(Clone, Copy)]
enum Hold {
    /// Until this time (ms since the epoch; 0: no expiry).
    Until(u64),
    /// For this many milliseconds: a lease.
    For(u64),
}

fn claim_cmd(key: &str, record: &TokenRecord, hold: Hold) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(&record.txn.0[..]).arg("NX");
    match hold {
        Hold::Until(0) => {}
        Hold::Until(at) => {
            cmd.arg("PXAT").arg(at);
        }
        Hold::For(ms) => {
            cmd.arg("PX").arg(ms);
        }
    }
    cmd
}

/// Whether a failed root insert may have written its transaction.
pub(super) enum Attempt {
    /// It failed before its write was sent.
    NotCommitted,
    /// Its write was sent: it may have landed.
    MaybeCommitted,
}

/// A keyed Mint whose token id another attempt holds but has not stored yet.
fn unfinished(id: TokenId) -> StoreError {
    StoreError::Backend(format!(
        "redis: an earlier attempt to store token {id} under this idempotency key has not finished; retry"
    ))
}
