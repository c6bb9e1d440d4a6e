//! The listing indexes (transactions by day, by subject, by party) and the listings read
//! through them. Each index is a sorted set of raw transaction ids in lex order (ids begin
//! with their mint time), written durably *before* the transaction's commit, so every
//! committed transaction is listed and found by the kill switch. An index entry whose
//! transaction never committed (or expired) is skipped: the status always comes from the
//! transaction's own keys, so an index can lag but never make a revoked or expired token
//! look active. The page rule is `api`'s (`TxnPager`).
//!
//! Every index is split into buckets on different slots (`keys::BUCKETS`). A transaction
//! is entered in its first bucket, or, while that bucket's shard cannot acknowledge a
//! write (a shard left without a replica), in the next one that can: so a shard without a
//! replica fails the Mints of the transactions it holds, not every Mint of a party,
//! subject or day whose index happens to live there. Readers merge the buckets.

use super::keys::{BUCKETS, Index, day_of, first_bucket, id16};
use super::{Inner, backend, function};
use crate::api::{StoreError, TxnPage, TxnPager, TxnQuery, txn_range};
use crate::codec;
use redis::Value;
use writ_core::{TokenRecord, TokenState, TxnId, UnixMillis};

/// How long an index bucket whose shard refused a write is tried only after the others
/// (never skipped: the order alone changes, so a bucket whose shard healed costs nothing).
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Most buckets remembered as refused.
const MAX_REFUSED: usize = 4096;

/// Candidates read from an index per round.
const CHUNK: usize = 256;

/// A lex bound on raw ids: `[id` (inclusive) or `(id` (exclusive).
fn bound(inclusive: bool, id: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    b.push(if inclusive { b'[' } else { b'(' });
    b.extend_from_slice(id);
    b
}

impl Inner {
    /// Enters `txn` in one bucket of `index`, durably: its first bucket, or the next whose
    /// shard acknowledges the write. Only a write its shard refused for want of replicas
    /// moves on (at once, or after `ack_timeout`); any other failure fails the call.
    async fn index(&self, index: Index, txn: TxnId, expire_at: u64) -> Result<(), StoreError> {
        self.enter(&index, first_bucket(txn), |key| {
            self.index_bucket(key, txn, expire_at)
        })
        .await
    }

    /// Runs `write` on bucket `first` of `index`, or on the next ones in turn while their
    /// shards refuse it for want of replicas.
    async fn enter<F, Fut>(&self, index: &Index, first: u8, write: F) -> Result<(), StoreError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let order: Vec<String> = (0..BUCKETS)
            .map(|i| index.bucket((first + i) % BUCKETS))
            .collect();
        // Buckets refused lately go last (each refusal costs `ack_timeout`).
        let (fresh, stale): (Vec<String>, Vec<String>) = {
            let mut refused = super::lock(&self.refused_buckets);
            let now = std::time::Instant::now();
            refused.retain(|_, at| now.duration_since(*at) < REFUSED_FOR);
            order.into_iter().partition(|k| !refused.contains_key(k))
        };
        let mut first_refusal = None;
        for key in fresh.into_iter().chain(stale) {
            match write(key.clone()).await {
                Err(e) if super::unreplicated(&e) => {
                    let mut refused = super::lock(&self.refused_buckets);
                    if refused.len() < MAX_REFUSED {
                        refused.insert(key, std::time::Instant::now());
                    }
                    first_refusal.get_or_insert(e);
                }
                done => return done,
            }
        }
        Err(first_refusal.unwrap_or_else(|| StoreError::Backend("redis: no index bucket".into())))
    }

    /// Enters `txn` in one bucket, durably, trimming entries past the horizon.
    async fn index_bucket(
        &self,
        key: String,
        txn: TxnId,
        expire_at: u64,
    ) -> Result<(), StoreError> {
        let horizon = UnixMillis(
            super::keys::mint_ms(txn).saturating_sub(self.opts.index_horizon.as_millis() as u64),
        );
        let trim = match self.opts.key_expiry {
            true => TxnId::new(horizon, [0; 10]).0.to_vec(),
            false => Vec::new(),
        };
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("index"))
            .arg(1)
            .arg(key)
            .arg(&txn.0[..])
            .arg(expire_at)
            .arg(trim);
        let _: i64 = self.durable(cmd).await?;
        Ok(())
    }

    /// Enters a new root's transaction in the day, subject and party indexes.
    pub(super) async fn index_root(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let txn = record.txn;
        let at = self.txn_expiry(record.grant.expires_at);
        let day = day_of(txn);
        let days = async {
            if super::lock(&self.days).contains(&day) {
                return Ok(());
            }
            let first = (day % u64::from(BUCKETS)) as u8;
            self.enter(&self.keys.days(), first, |key| async move {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(key).arg(day).arg(day);
                let _: i64 = self.durable(cmd).await?;
                Ok(())
            })
            .await?;
            super::lock(&self.days).insert(day);
            // A new day: days past the horizon hold no transaction any more (their keys
            // expired), and a listing that reads to the end must not visit every day since
            // the first deployment.
            if self.opts.key_expiry {
                let horizon_days = (self.opts.index_horizon.as_millis() as u64)
                    .div_ceil(super::keys::DAY_MS)
                    .saturating_add(1);
                for key in self.keys.days().buckets() {
                    let mut trim = redis::cmd("ZREMRANGEBYSCORE");
                    trim.arg(key)
                        .arg("-inf")
                        .arg(format!("({}", day.saturating_sub(horizon_days)));
                    let trimmed: Result<i64, _> = trim.query_async(&mut self.write_conn()).await;
                    if let Err(e) = trimmed {
                        tracing::debug!(error = %e, "trimming the days index; the next new day will");
                    }
                }
            }
            Ok(())
        };
        let audience = async {
            match record.audience.id != record.current_actor().id {
                true => self.index_party(txn, &record.audience.id).await,
                false => Ok(()),
            }
        };
        // Each on its own shard, each acknowledged: at once, not one after another.
        tokio::try_join!(
            days,
            self.index(self.keys.day_index(day), txn, at),
            self.index(self.keys.subject_index(&record.subject), txn, at),
            self.index_party(txn, &record.current_actor().id),
            audience,
        )?;
        Ok(())
    }

    /// Enters `txn` under `party` (an actor or audience of one of its tokens).
    pub(super) async fn index_party(&self, txn: TxnId, party: &str) -> Result<(), StoreError> {
        // The party index is what the kill switch walks: it lives as long as anything of
        // the transaction can (its keys' expiry is extended by every new token, so the
        // horizon, not the token, bounds it).
        let at = match self.opts.key_expiry {
            true => UnixMillis(super::keys::mint_ms(txn))
                .0
                .saturating_add(self.opts.index_horizon.as_millis() as u64),
            false => 0,
        };
        self.index(self.keys.party_index(party), txn, at).await
    }

    /// Up to `limit` transactions under `party`, after `after`, in id order.
    pub(super) async fn party_page(
        &self,
        party: &str,
        after: Option<TxnId>,
        limit: usize,
    ) -> Result<Vec<TxnId>, StoreError> {
        let lo = after.map_or(b"-".to_vec(), |t| bound(false, &t.0));
        let mut found = Vec::new();
        for key in self.keys.party_index(party).buckets() {
            found.extend(
                self.lex_range(key, lo.clone(), b"+".to_vec(), false, limit)
                    .await?,
            );
        }
        // A transaction entered in two buckets (a retried Mint) is one.
        found.sort_unstable();
        found.dedup();
        found.truncate(limit);
        Ok(found)
    }

    /// Up to `n` transaction ids of index `key` between the lex bounds `from` and `to`
    /// (`from` the greater one when `rev`).
    async fn lex_range(
        &self,
        key: String,
        from: Vec<u8>,
        to: Vec<u8>,
        rev: bool,
        n: usize,
    ) -> Result<Vec<TxnId>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key).arg(from).arg(to).arg("BYLEX");
        if rev {
            cmd.arg("REV");
        }
        let raw: Vec<Vec<u8>> = cmd
            .arg("LIMIT")
            .arg(0)
            .arg(super::count(n))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        raw.iter()
            .map(|m| Ok(TxnId(id16(m, "index member")?)))
            .collect()
    }

    /// Up to `n` ids of `index` (its buckets merged) in `[lo, hi)`, newest first.
    async fn newest(
        &self,
        index: Index,
        lo: TxnId,
        hi: Option<TxnId>,
        n: usize,
    ) -> Result<Vec<TxnId>, StoreError> {
        let max = hi.map_or(b"+".to_vec(), |h| bound(false, &h.0));
        let mut found = Vec::new();
        for key in index.buckets() {
            found.extend(
                self.lex_range(key, max.clone(), bound(true, &lo.0), true, n)
                    .await?,
            );
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.dedup();
        found.truncate(n);
        Ok(found)
    }

    /// Up to `n` transactions of every subject in `[lo, hi)`, newest first: the newest day
    /// with any, its buckets merged.
    async fn newest_of_all(
        &self,
        lo: TxnId,
        hi: Option<TxnId>,
        n: usize,
    ) -> Result<Vec<TxnId>, StoreError> {
        let top = hi.map_or(u64::MAX, day_of);
        let mut days: Vec<u64> = Vec::new();
        for key in self.keys.days().buckets() {
            let some: Vec<u64> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(top)
                .arg(day_of(lo))
                .arg("BYSCORE")
                .arg("REV")
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            days.extend(some);
        }
        days.sort_unstable_by(|a, b| b.cmp(a));
        days.dedup();
        for day in days {
            let found = self.newest(self.keys.day_index(day), lo, hi, n).await?;
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Ok(Vec::new())
    }

    /// A transaction's first root with its state, if it is still stored.
    async fn root_of(&self, txn: TxnId) -> Result<Option<(TokenRecord, TokenState)>, StoreError> {
        let reply: Value = redis::cmd("FCALL_RO")
            .arg(function("root"))
            .arg(3)
            .arg(self.keys.meta(txn))
            .arg(self.keys.records(txn))
            .arg(self.keys.states(txn))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let (record, state): (Option<Vec<u8>>, Option<Vec<u8>>) = match reply {
            Value::Nil => return Ok(None),
            other => redis::from_redis_value(other).map_err(super::reply_error)?,
        };
        match (record, state) {
            (Some(r), Some(s)) => Ok(Some((codec::decode(&r)?, codec::decode_state(&s)?))),
            _ => Ok(None),
        }
    }

    pub(super) async fn list_txns(&self, query: &TxnQuery) -> Result<TxnPage, StoreError> {
        let (lo, mut hi) = txn_range(query);
        let mut pager = TxnPager::new(query);
        loop {
            if hi.is_some_and(|h| h <= lo) {
                return Ok(pager.end());
            }
            let chunk = match (&query.party, &query.subject) {
                (Some(p), _) => self.newest(self.keys.party_index(p), lo, hi, CHUNK).await?,
                (None, Some(s)) => {
                    self.newest(self.keys.subject_index(s), lo, hi, CHUNK)
                        .await?
                }
                (None, None) => self.newest_of_all(lo, hi, CHUNK).await?,
            };
            let Some(&last) = chunk.last() else {
                return Ok(pager.end());
            };
            for txn in chunk {
                if let Some(page) = pager.offer(txn, self.root_of(txn).await?) {
                    return Ok(page);
                }
            }
            hi = Some(last);
        }
    }
}
