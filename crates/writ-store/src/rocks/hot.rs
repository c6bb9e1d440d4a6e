//! The hot tier: the tokens Validate reads, as decoded records with their states, in
//! process memory. A Validate of a hot token costs one map lookup: no RocksDB read, no
//! decode, no copy of the record (it is shared as an `Arc`).
//!
//! Tokens come in two ways: a read that missed fills the tier with what RocksDB holds,
//! and a token just written (a Mint, a Downscope, a redeemed consent) is put in by its
//! write ([`HotTier::born`]), so the next hop, which reads it at once, finds it here.
//!
//! Coherence, which is the point of this module. Records never change. A state changes
//! only in a write made under its transaction's lock ([`RocksStore::committed`] or
//! [`RocksStore::locked`]: a revocation, a spent use, a derived child) or deleted by a
//! purge (under the same lock); each such write tells the tier ([`HotTier::changed`]
//! through `tokens::write_with_states`, [`HotTier::forget`]) after RocksDB has taken it
//! and before the lock is released and the caller answered. So from
//! the moment a revocation is acknowledged, the tier holds the revoked state or nothing.
//! The race left is a fill: a reader that missed, read the old state from RocksDB, and
//! would put it in after the writer told the tier. Each shard therefore counts the
//! changes made to its tokens (`generation`); a reader takes the count when it misses
//! ([`Miss`]) and its fill lands only if the count has not moved since. A fill that loses
//! is dropped (the next read misses again), never installed stale. Hence, under a
//! token's transaction lock, the tier holds its current state or nothing, and a write
//! there may take the state from the tier ([`HotTier::held`]) instead of reading RocksDB.
//!
//! Bounded by bytes (an estimate of each entry's heap footprint from its encoded size),
//! split evenly over the shards; each shard evicts with CLOCK: an entry read since the
//! hand last passed it gets a second chance, so a burst of once-read tokens does not push
//! out the ones read over and over.
//!
//! [`RocksStore::locked`]: super::RocksStore
//! [`RocksStore::committed`]: super::RocksStore

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use writ_core::{TokenId, TokenRecord, TokenState};

/// Shards, each with its own lock: Validates of different tokens rarely meet. A power of
/// two (see `shard_of`).
const SHARDS: usize = 64;

/// What a held token costs in memory, estimated from its encoded size: decoded, every
/// string and map is an allocation of its own (a map's first node holds eleven entries'
/// room), so a record takes several times its encoded bytes, plus the fixed parts (the
/// record, the entry, the map's and the ring's slots, the allocator's rounding). Fitted to
/// the resident memory measured per cached token (`writ-growth hot-tier-probe`,
/// BENCHMARKS.md), and rounded up.
const PER_ENCODED_BYTE: usize = 4;
const ENTRY_OVERHEAD: usize = 3072;

fn weight(encoded: usize) -> usize {
    PER_ENCODED_BYTE * encoded + ENTRY_OVERHEAD
}

/// What a state holds beyond its fixed part: a revocation's strings.
fn state_weight(state: &TokenState) -> usize {
    state
        .revoked
        .as_ref()
        .map_or(0, |r| r.by.len() + r.reason.len() + 64)
}

/// What the tier holds and how it has served, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotTierStats {
    /// Reads answered from the tier.
    pub hits: u64,
    /// Reads that went to RocksDB.
    pub misses: u64,
    /// Tokens held.
    pub entries: u64,
    /// Estimated bytes held.
    pub bytes: u64,
    /// The bound on `bytes`.
    pub budget: u64,
}

struct Entry {
    record: Arc<TokenRecord>,
    state: TokenState,
    /// The record's [`weight`] plus the state's [`state_weight`].
    weight: usize,
    /// Read since the clock hand last passed.
    referenced: bool,
    /// Which ring slot is this entry's (older slots of a re-inserted id are stale).
    slot: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<TokenId, Entry>,
    /// The clock: ids in insertion order, each with the slot number it was given.
    ring: VecDeque<(TokenId, u64)>,
    next_slot: u64,
    bytes: usize,
    /// Changes made to this shard's tokens' states (see the module docs).
    generation: u64,
}

impl Shard {
    /// Removes `id`'s entry and gives it back (for the caller to drop after the lock).
    fn remove(&mut self, id: &TokenId) -> Option<Entry> {
        let e = self.map.remove(id)?;
        self.bytes -= e.weight;
        Some(e)
    }

    /// Evicts one entry, by the clock, and gives it back; `None` when nothing is left.
    fn evict_one(&mut self) -> Option<Entry> {
        while let Some((id, slot)) = self.ring.pop_front() {
            let Some(entry) = self.map.get_mut(&id) else {
                continue; // removed since
            };
            if entry.slot != slot {
                continue; // a stale slot of an id inserted again
            }
            if entry.referenced {
                entry.referenced = false;
                self.ring.push_back((id, slot));
                continue;
            }
            return self.remove(&id);
        }
        None
    }

    /// Evicts by the clock until the shard holds at most `limit` bytes (or nothing is left),
    /// into `out`: the caller drops them once the shard's lock is released.
    fn evict_to(&mut self, limit: usize, out: &mut Vec<Entry>) {
        while self.bytes > limit {
            match self.evict_one() {
                Some(e) => out.push(e),
                None => break,
            }
        }
    }

    /// Inserts, evicting by the clock to stay within `budget`: gives back what it evicted
    /// or replaced, for the caller to drop once the shard's lock is released.
    fn insert(
        &mut self,
        budget: usize,
        record: Arc<TokenRecord>,
        state: TokenState,
        weight: usize,
    ) -> Vec<Entry> {
        let id = record.token_id;
        let mut out: Vec<Entry> = self.remove(&id).into_iter().collect();
        self.evict_to(budget.saturating_sub(weight), &mut out);
        let slot = self.next_slot;
        self.next_slot += 1;
        self.ring.push_back((id, slot));
        self.map.insert(
            id,
            Entry {
                record,
                state,
                weight,
                referenced: false,
                slot,
            },
        );
        self.bytes += weight;
        // Stale slots (removed or re-inserted ids) are skipped by the hand; drop them when
        // they outnumber the live ones, so the ring stays proportional to the map.
        if self.ring.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ring
                .retain(|(id, slot)| map.get(id).is_some_and(|e| e.slot == *slot));
        }
        out
    }
}

/// A read that missed: the shard's generation then, which a fill must still find.
#[derive(Debug)]
pub(super) struct Miss {
    shard: usize,
    generation: u64,
}

pub(super) struct HotTier {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HotTier {
    /// A tier of at most `budget` bytes; 0 turns it off (every read misses).
    pub(super) fn new(budget: usize) -> HotTier {
        HotTier {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: budget / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard_of(id: &TokenId) -> usize {
        // Token ids are hash output, but mixing all their bytes costs nothing and spreads
        // ids that are not (tests', say) too.
        let (a, b) = id.0.split_at(8);
        let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
        let mixed = (word(a) ^ word(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - SHARDS.trailing_zeros())) as usize
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The token's record and current state, or the [`Miss`] a fill must present.
    pub(super) fn get(&self, id: &TokenId) -> Result<(Arc<TokenRecord>, TokenState), Miss> {
        let i = Self::shard_of(id);
        let mut shard = self.shard(i);
        match shard.map.get_mut(id) {
            Some(e) => {
                e.referenced = true;
                let hit = (e.record.clone(), e.state.clone());
                drop(shard);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(hit)
            }
            None => {
                let generation = shard.generation;
                drop(shard);
                self.misses.fetch_add(1, Ordering::Relaxed);
                Err(Miss {
                    shard: i,
                    generation,
                })
            }
        }
    }

    /// The token's record alone, if held (records never change). Not counted.
    pub(super) fn record(&self, id: &TokenId) -> Option<Arc<TokenRecord>> {
        let shard = self.shard(Self::shard_of(id));
        shard.map.get(id).map(|e| e.record.clone())
    }

    /// The token's record and state, if held, not counted as a read: for a write under the
    /// token's transaction lock, where the tier's state is RocksDB's (see the module docs).
    pub(super) fn held(&self, id: &TokenId) -> Option<(Arc<TokenRecord>, TokenState)> {
        let shard = self.shard(Self::shard_of(id));
        shard
            .map
            .get(id)
            .map(|e| (e.record.clone(), e.state.clone()))
    }

    /// Holds a token just written (`encoded` bytes of record) with the state a new token
    /// has, the default: the next hop's first Validate or Downscope of it reads memory.
    /// Under the token's transaction lock, after RocksDB took the write, so no change of
    /// its state can come before; a racing fill holds the same. Not marked read: a token
    /// never read is the first the clock evicts.
    pub(super) fn born(&self, record: Arc<TokenRecord>, encoded: usize) {
        let shard = Self::shard_of(&record.token_id);
        self.hold(shard, None, record, TokenState::default(), encoded);
    }

    /// Holds what a read that missed found in RocksDB (`encoded` bytes of record), unless
    /// a state of this shard changed since the miss: then what was read may be older than
    /// what a writer has since told the tier, and it is dropped.
    pub(super) fn fill(
        &self,
        miss: Miss,
        record: Arc<TokenRecord>,
        state: TokenState,
        encoded: usize,
    ) {
        if Self::shard_of(&record.token_id) == miss.shard {
            self.hold(miss.shard, Some(miss.generation), record, state, encoded);
        }
    }

    /// Puts an entry in shard `i`, unless it alone would pass the shard's share or the
    /// shard's generation is no longer `generation` (when one is given).
    fn hold(
        &self,
        i: usize,
        generation: Option<u64>,
        record: Arc<TokenRecord>,
        state: TokenState,
        encoded: usize,
    ) {
        let weight = weight(encoded) + state_weight(&state);
        if weight > self.shard_budget {
            return;
        }
        let evicted = {
            let mut shard = self.shard(i);
            if generation.is_some_and(|g| g != shard.generation) {
                return;
            }
            shard.insert(self.shard_budget, record, state, weight)
        };
        // Freed after the lock: a Validate reading this shard does not wait on the frees
        // (a token's write holds one in, and so usually evicts one, on the writer thread).
        drop(evicted);
    }

    /// A write under the token's transaction lock set its state to `state` (RocksDB has
    /// it): the tier's copy, if any, follows, and fills begun before this do not land.
    pub(super) fn changed(&self, id: &TokenId, state: &TokenState) {
        let mut evicted = Vec::new();
        let mut guard = self.shard(Self::shard_of(id));
        let shard = &mut *guard;
        shard.generation += 1;
        let Some(e) = shard.map.get_mut(id) else {
            return;
        };
        // A revoked state weighs more: re-weigh, and evict (by the clock) if that passes the
        // shard's share.
        let (old, new) = (state_weight(&e.state), state_weight(state));
        e.state = state.clone();
        e.weight = e.weight - old + new;
        shard.bytes = shard.bytes - old + new;
        shard.evict_to(self.shard_budget, &mut evicted);
        drop(guard); // before `evicted`: freed after the lock
    }

    /// The token was deleted (purged): dropped, and fills begun before this do not land.
    pub(super) fn forget(&self, id: &TokenId) {
        let removed = {
            let mut shard = self.shard(Self::shard_of(id));
            shard.generation += 1;
            shard.remove(id)
        };
        drop(removed); // freed after the lock
    }

    /// Drops everything, and fills begun before this do not land: after a write that may
    /// not have told the tier what it changed (it panicked).
    pub(super) fn clear(&self) {
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            shard.generation += 1;
            shard.map.clear();
            shard.ring.clear();
            shard.bytes = 0;
        }
    }

    pub(super) fn stats(&self) -> HotTierStats {
        let (mut entries, mut bytes) = (0, 0);
        for i in 0..SHARDS {
            let shard = self.shard(i);
            entries += shard.map.len() as u64;
            bytes += shard.bytes as u64;
        }
        HotTierStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
            budget: (self.shard_budget * SHARDS) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::{Revocation, TxnId, UnixMillis};

    /// The `n`th record (from 0) whose id falls in `shard`.
    fn record(n: usize, shard: usize) -> Arc<TokenRecord> {
        let id = (0u32..)
            .map(|i| {
                TokenId(
                    [i.to_be_bytes(), [7; 4], [9; 4], [1; 4]]
                        .concat()
                        .try_into()
                        .unwrap(),
                )
            })
            .filter(|id| HotTier::shard_of(id) == shard)
            .nth(n)
            .unwrap();
        Arc::new(crate::conformance::record(TxnId([3; 16]), id, None))
    }

    fn revoked() -> TokenState {
        TokenState {
            revoked: Some(Revocation {
                at: UnixMillis(1),
                by: "ops".to_owned(),
                reason: "test".into(),
                cause: TokenId([0; 16]),
            }),
            ..TokenState::default()
        }
    }

    #[test]
    fn a_fill_begun_before_a_change_never_lands() {
        let tier = HotTier::new(1 << 20);
        let r = record(1, 0);
        let id = r.token_id;
        // A reader misses and reads the old state from the store...
        let miss = tier.get(&id).unwrap_err();
        // ...a revocation is written and told to the tier (nothing held yet)...
        tier.changed(&id, &revoked());
        // ...and the reader's fill, with the state it read before, is dropped.
        tier.fill(miss, r.clone(), TokenState::default(), 400);
        assert!(tier.get(&id).is_err(), "a stale state was installed");
        // A fill begun after the change lands, and a later change updates it in place.
        let miss = tier.get(&id).unwrap_err();
        tier.fill(miss, r.clone(), TokenState::default(), 400);
        assert_eq!(tier.get(&id).unwrap().1, TokenState::default());
        tier.changed(&id, &revoked());
        assert_eq!(tier.get(&id).unwrap().1, revoked());
        // A change of another token in the same shard also stops a fill in flight (the
        // generation is per shard); one in another shard does not.
        let other = record(2, 0);
        let miss = tier.get(&other.token_id).unwrap_err();
        tier.changed(&id, &revoked());
        tier.fill(miss, other.clone(), TokenState::default(), 400);
        assert!(tier.get(&other.token_id).is_err());
        let miss = tier.get(&other.token_id).unwrap_err();
        tier.changed(&record(3, 1).token_id, &revoked());
        tier.fill(miss, other.clone(), TokenState::default(), 400);
        assert!(tier.get(&other.token_id).is_ok());
        // Forgotten (purged): gone, and a fill in flight does not bring it back.
        let miss = Miss {
            shard: 0,
            generation: tier.shard(0).generation,
        };
        tier.forget(&id);
        assert!(tier.get(&id).is_err());
        tier.fill(miss, r, TokenState::default(), 400);
        assert!(tier.get(&id).is_err());
    }

    #[test]
    fn the_tier_stays_within_its_budget_and_keeps_what_is_read() {
        let budget = 64 * 4 * weight(400); // four entries per shard
        let tier = HotTier::new(budget);
        let hot = record(0, 7);
        let miss = tier.get(&hot.token_id).unwrap_err();
        tier.fill(miss, hot.clone(), TokenState::default(), 400);
        for i in 1..=40 {
            let r = record(i, 7);
            // The hot token is read between every two fills.
            assert!(tier.get(&hot.token_id).is_ok(), "evicted after {i} fills");
            let miss = tier.get(&r.token_id).unwrap_err();
            tier.fill(miss, r, TokenState::default(), 400);
            let stats = tier.stats();
            assert!(stats.bytes <= stats.budget, "{stats:?}");
            assert!(tier.shard(7).bytes <= tier.shard_budget);
            assert!(tier.shard(7).map.len() <= 4);
        }
        // The ring does not grow without bound over re-inserted and removed ids.
        for _ in 0..1000 {
            let r = record(41, 7);
            if let Err(miss) = tier.get(&r.token_id) {
                tier.fill(miss, r.clone(), TokenState::default(), 400);
            }
            tier.forget(&r.token_id);
        }
        assert!(tier.shard(7).ring.len() <= 2 * 4 + 64 + 1);
        // An entry larger than a shard's share is never held; a tier of 0 holds nothing.
        let big = record(50, 9);
        let miss = tier.get(&big.token_id).unwrap_err();
        tier.fill(miss, big.clone(), TokenState::default(), budget);
        assert!(tier.get(&big.token_id).is_err());
        let off = HotTier::new(0);
        let miss = off.get(&big.token_id).unwrap_err();
        off.fill(miss, big.clone(), TokenState::default(), 1);
        assert!(off.get(&big.token_id).is_err());
        assert_eq!(off.stats().entries, 0);
        // A revocation's strings count: a shard filled to its share stays within it when
        // its tokens are revoked with long reasons.
        let tight = HotTier::new(64 * 4 * weight(400));
        for i in 0..4 {
            let r = record(60 + i, 3);
            let miss = tight.get(&r.token_id).unwrap_err();
            tight.fill(miss, r, TokenState::default(), 400);
        }
        let mut long = revoked();
        long.revoked.as_mut().unwrap().reason = "x".repeat(512);
        for i in 0..4 {
            tight.changed(&record(60 + i, 3).token_id, &long);
            assert!(tight.shard(3).bytes <= tight.shard_budget);
        }
        assert!(tight.shard(3).map.len() < 4, "nothing was evicted");
    }
}
