//! Consent requests on the cluster: stored in their transaction's slot (`P:{T}:c`, the
//! newest request per action key in `P:{T}:k`), found through pointers by id and by action
//! key, listed through `P:cx` and swept for expiry through `P:co`. Every transition is
//! `writ_core::consent`'s rule, written with its event in one `writ_apply`; a redemption
//! writes the child exactly as `insert_child` does (`stage_child`).

use super::keys::{consent_member, decode_consent_member, id16};
use super::{Commit, Inner, MAX_ATTEMPTS, TxnWrite, backend, contended, nonce};
use crate::api::{
    ConsentInsert, ConsentPage, ConsentPager, ConsentQuery, EventIssuer, MAX_OPEN_CONSENTS_PER_TXN,
    PurgeStats, StoreError, consent_changeable, consent_open,
};
use crate::codec;
use redis::Pipeline;
use writ_core::{
    Actor, ConsentError, ConsentId, ConsentRequest, Decision, Event, TokenRecord, TxnId, UnixMillis,
};

/// What a new request reads of its transaction: version, whether the id exists, the
/// newest request under its key, every request.
type ConsentRead = (
    Option<String>,
    bool,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Vec<u8>)>,
);

/// Candidates read from the listing index per round.
const CHUNK: usize = 256;

impl Inner {
    fn consent_expiry(&self, r: &ConsentRequest) -> u64 {
        self.txn_expiry(r.expires_at)
    }

    /// The transaction a consent request belongs to, through its pointer.
    async fn consent_txn(&self, id: ConsentId) -> Result<Option<TxnId>, StoreError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.consent(id))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        raw.map(|t| Ok(TxnId(id16(&t, "consent pointer")?)))
            .transpose()
    }

    async fn read_consent(
        &self,
        txn: TxnId,
        id: ConsentId,
    ) -> Result<(String, Option<ConsentRequest>), StoreError> {
        let (version, raw): (Option<String>, Option<Vec<u8>>) = Pipeline::new()
            .hget(self.keys.meta(txn), "v")
            .hget(self.keys.consents(txn), &id.0[..])
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let request = raw.map(|r| codec::decode_consent(&r)).transpose()?;
        Ok((version.unwrap_or_default(), request))
    }

    pub(super) async fn consent(
        &self,
        id: ConsentId,
    ) -> Result<Option<(TxnId, ConsentRequest)>, StoreError> {
        let Some(txn) = self.consent_txn(id).await? else {
            return Ok(None);
        };
        Ok(self.read_consent(txn, id).await?.1.map(|r| (txn, r)))
    }

    pub(super) async fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> Result<Option<ConsentRequest>, StoreError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.consent_key(&key))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let Some(txn) = raw else { return Ok(None) };
        let txn = TxnId(id16(&txn, "consent key pointer")?);
        let id: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.consent_keys(txn))
            .arg(&key[..])
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let Some(id) = id else { return Ok(None) };
        let id = ConsentId(id16(&id, "consent key entry")?);
        Ok(self.read_consent(txn, id).await?.1)
    }

    /// Stages a request's new value (and, for a new one, its key entry) in `w`.
    fn stage_consent(
        &self,
        w: &mut TxnWrite,
        r: &ConsentRequest,
        new: bool,
    ) -> Result<(), StoreError> {
        let at = self.consent_expiry(r);
        w.hset(
            &self.keys.consents(r.txn),
            at,
            vec![(r.id.0.to_vec(), codec::encode_consent(r)?)],
        );
        if new {
            w.hset(
                &self.keys.consent_keys(r.txn),
                at,
                vec![(r.key.to_vec(), r.id.0.to_vec())],
            );
        }
        Ok(())
    }

    /// Drops a request that can no longer change from the expiry sweep's index.
    async fn close(&self, r: &ConsentRequest) -> Result<(), StoreError> {
        if consent_changeable(r) {
            return Ok(());
        }
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.open_consents())
            .arg(consent_member(r.id, r.txn))
            .query_async(&mut self.write_conn())
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(super) async fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> Result<ConsentInsert, StoreError> {
        codec::encode_consent(&request)?;
        let (id, txn) = (request.id, request.txn);
        let at = self.consent_expiry(&request);
        // The pointers and index entries first, so a stored request is always found.
        let mut claim = redis::cmd("SET");
        claim.arg(self.keys.consent(id)).arg(&txn.0[..]).arg("NX");
        if at > 0 {
            claim.arg("PXAT").arg(at);
        }
        let claimed: Option<String> = self.durable(claim).await?;
        if claimed.is_none() && self.consent_txn(id).await? != Some(txn) {
            return Err(StoreError::Conflict);
        }
        let mut by_key = redis::cmd("SET");
        by_key
            .arg(self.keys.consent_key(&request.key))
            .arg(&txn.0[..]);
        if at > 0 {
            by_key.arg("PXAT").arg(at);
        }
        let _: String = self.durable(by_key).await?;
        let member = consent_member(id, txn);
        let mut listed = redis::cmd("ZADD");
        listed.arg(self.keys.consent_index()).arg(0).arg(&member);
        let _: i64 = self.durable(listed).await?;
        let mut open = redis::cmd("ZADD");
        open.arg(self.keys.open_consents())
            .arg(request.expires_at.0)
            .arg(&member);
        let _: i64 = self.durable(open).await?;

        let nonce = nonce();
        let now = request.created_at;
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, exists, newest, all): ConsentRead = Pipeline::new()
                .hget(self.keys.meta(txn), "v")
                .hexists(self.keys.consents(txn), &id.0[..])
                .hget(self.keys.consent_keys(txn), &request.key[..])
                .hgetall(self.keys.consents(txn))
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            if exists {
                return Err(StoreError::Conflict);
            }
            let all = all
                .iter()
                .map(|(_, r)| codec::decode_consent(r))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(newest) = newest
                && let Some(existing) = all.iter().find(|r| r.id.0[..] == newest[..])
                && consent_open(existing, now)
            {
                // Answered from a read: as durable as an insert first.
                self.barrier(txn).await?;
                return Ok(ConsentInsert::Existing(Box::new(existing.clone())));
            }
            if all.iter().filter(|r| consent_open(r, now)).count() >= MAX_OPEN_CONSENTS_PER_TXN {
                return Err(StoreError::TooManyConsents {
                    limit: MAX_OPEN_CONSENTS_PER_TXN,
                });
            }
            let mut w = TxnWrite::new(&self.keys, txn);
            self.stage_consent(&mut w, &request, true)?;
            self.stage_event(&mut w, &event)?;
            match self
                .commit(&w, &version.unwrap_or_default(), &nonce)
                .await?
            {
                Commit::Applied => {
                    self.saw_event(event.id);
                    return Ok(ConsentInsert::Inserted);
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(txn))
    }

    pub(super) async fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> Result<ConsentRequest, StoreError> {
        let txn = self.consent_txn(id).await?.ok_or(StoreError::NotFound)?;
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, request) = self.read_consent(txn, id).await?;
            let mut request = request.ok_or(StoreError::NotFound)?;
            request.decide(decision.clone())?;
            let mut w = TxnWrite::new(&self.keys, txn);
            self.stage_consent(&mut w, &request, false)?;
            self.stage_event(&mut w, &event)?;
            match self.commit(&w, &version, &nonce).await? {
                Commit::Applied => {
                    self.saw_event(event.id);
                    self.close(&request).await?;
                    return Ok(request);
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(txn))
    }

    pub(super) async fn redeem_consent(
        &self,
        id: ConsentId,
        by: &str,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> Result<ConsentRequest, StoreError> {
        let txn = self.consent_txn(id).await?.ok_or(StoreError::NotFound)?;
        let token = child.parent.ok_or(ConsentError::WrongToken(id))?;
        let encoded = codec::encode(&child)?;
        let nonce = nonce();
        let mut claimed = false;
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, request) = self.read_consent(txn, id).await?;
            let mut request = request.ok_or(StoreError::NotFound)?;
            request.redeem(by, token, child.token_id, child.issued_at)?;
            if !claimed {
                // Only once the rule admits it: the child's pointer and party entry.
                if child.txn != txn {
                    return Err(StoreError::ParentMissing);
                }
                tokio::try_join!(
                    self.claim(&child),
                    self.index_party(child.txn, &child.audience.id)
                )?;
                claimed = true;
            }
            let mut w = TxnWrite::new(&self.keys, txn);
            let seen = self
                .stage_child(&mut w, &child, encoded.clone(), token, max_children)
                .await?;
            if seen != version {
                Self::backoff(attempt).await;
                continue;
            }
            self.stage_consent(&mut w, &request, false)?;
            self.stage_event(&mut w, &event)?;
            match self.commit(&w, &version, &nonce).await? {
                Commit::Applied => {
                    self.saw_event(event.id);
                    self.close(&request).await?;
                    return Ok(request);
                }
                Commit::Stale => Self::backoff(attempt).await,
            }
        }
        Err(contended(txn))
    }

    pub(super) async fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: &Actor,
        events: &dyn EventIssuer,
    ) -> Result<(usize, bool), StoreError> {
        let due = self.due_consents(now, max).await?;
        let mut expired = 0;
        for member in due {
            let (id, txn) = decode_consent_member(&member)?;
            if self.expire_one(txn, id, now, by, events).await? {
                expired += 1;
            }
            let _: i64 = redis::cmd("ZREM")
                .arg(self.keys.open_consents())
                .arg(&member)
                .query_async(&mut self.write_conn())
                .await
                .map_err(backend)?;
        }
        let more = !self.due_consents(now, 1).await?.is_empty();
        Ok((expired, more))
    }

    async fn due_consents(&self, now: UnixMillis, max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        redis::cmd("ZRANGE")
            .arg(self.keys.open_consents())
            .arg("-inf")
            .arg(now.0)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(super::count(max))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)
    }

    /// Marks one request expired, with its event; `false` when there was nothing to mark.
    async fn expire_one(
        &self,
        txn: TxnId,
        id: ConsentId,
        now: UnixMillis,
        by: &Actor,
        events: &dyn EventIssuer,
    ) -> Result<bool, StoreError> {
        let nonce = nonce();
        let _serial = self.lock(txn).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (version, before) = self.read_consent(txn, id).await?;
            let Some(before) = before else {
                return Ok(false);
            };
            let mut request = before.clone();
            if !request.expire(now) {
                return Ok(false);
            }
            let event = Event::consent_expired(events.issue(), &before, by);
            let mut w = TxnWrite::new(&self.keys, txn);
            let written = match self
                .stage_consent(&mut w, &request, false)
                .and_then(|()| self.stage_event(&mut w, &event))
            {
                Ok(()) => self.commit(&w, &version, &nonce).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(Commit::Applied) => {
                    self.saw_event(event.id);
                    events.stored(event);
                    return Ok(true);
                }
                Ok(Commit::Stale) => {
                    events.abandoned(event.id);
                    Self::backoff(attempt).await;
                }
                Err(e) => {
                    events.abandoned(event.id);
                    return Err(e);
                }
            }
        }
        Err(contended(txn))
    }

    pub(super) async fn list_consents(
        &self,
        query: &ConsentQuery,
    ) -> Result<ConsentPage, StoreError> {
        let mut pager = ConsentPager::new(query);
        if let Some(txn) = query.txn {
            let all: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(self.keys.consents(txn))
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            let mut all = all
                .iter()
                .map(|(_, r)| codec::decode_consent(r))
                .collect::<Result<Vec<_>, _>>()?;
            all.sort_by_key(|r| std::cmp::Reverse(r.id));
            for r in all {
                if query.before.is_some_and(|b| r.id >= b) {
                    continue;
                }
                if let Some(page) = pager.offer(r.id, Some(r)) {
                    return Ok(page);
                }
            }
            return Ok(pager.end());
        }
        let mut before = query.before;
        loop {
            let max = before.map_or(b"+".to_vec(), |b| {
                let mut v = vec![b'('];
                v.extend_from_slice(&b.0);
                v
            });
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(self.keys.consent_index())
                .arg(max)
                .arg("-")
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(CHUNK)
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            if members.is_empty() {
                return Ok(pager.end());
            }
            for m in &members {
                let (id, txn) = decode_consent_member(m)?;
                let request = self.read_consent(txn, id).await?.1;
                if let Some(page) = pager.offer(id, request) {
                    return Ok(page);
                }
                before = Some(id);
            }
        }
    }

    /// Drops listing entries of requests created before `cutoff` that are gone (expired
    /// with their transaction). Requests themselves expire by themselves: nothing is
    /// counted as deleted.
    pub(super) async fn trim_consent_index(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> Result<PurgeStats, StoreError> {
        let mut bound = vec![b'('];
        bound.extend_from_slice(&ConsentId::new(cutoff, [0; 8]).0);
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(self.keys.consent_index())
            .arg("-")
            .arg(bound)
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(super::count(max))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        for m in members {
            let (id, txn) = decode_consent_member(&m)?;
            if self.read_consent(txn, id).await?.1.is_none() {
                let _: i64 = redis::cmd("ZREM")
                    .arg(self.keys.consent_index())
                    .arg(&m)
                    .query_async(&mut self.write_conn())
                    .await
                    .map_err(backend)?;
            }
        }
        Ok(PurgeStats::default())
    }
}
