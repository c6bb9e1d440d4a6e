//! Validate's `TokenInfo`, encoded once per token. What a token records never changes
//! after it is minted, so neither does the `TokenInfo` an answer shows, except its latent
//! scopes, which follow the policy in force. The first Validate of a token encodes it;
//! later ones splice the same bytes into their answers ([`writ_api::answer`]). Each entry
//! keeps the digest of the policy it was made under and is used only under that policy.
//!
//! It holds what an answer shows, never whether to answer: it is read only after the
//! token was found, its secret checked and its state found active. Bounded by bytes
//! (`storage.answer_cache_mib`); quick_cache evicts by CLOCK-Pro.

use prost::bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use writ_core::TokenId;

/// What one entry costs beyond its bytes: the key, the policy digest, the `Bytes` handle
/// and its shared header, the table's slot (rounded up).
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone)]
struct Encoded {
    policy: [u8; 32],
    info: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<TokenId, Encoded> for ByBytes {
    fn weight(&self, _: &TokenId, v: &Encoded) -> u64 {
        v.info.len() as u64 + ENTRY_OVERHEAD
    }
}

/// The encoded `TokenInfo` answers of recently validated tokens.
pub struct Answers {
    /// `None`: off (`storage.answer_cache_mib = 0`), every answer is encoded afresh.
    cache: Option<quick_cache::sync::Cache<TokenId, Encoded, ByBytes>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache holds and how it has served, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerStats {
    /// Answers that reused an encoding.
    pub hits: u64,
    /// Answers encoded afresh (and then kept).
    pub misses: u64,
    /// Tokens held.
    pub entries: u64,
    /// Bytes held, with each entry's overhead.
    pub bytes: u64,
    /// The bound.
    pub budget: u64,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Answers {
    /// A cache of at most `budget` bytes; 0 turns it off.
    pub fn new(budget: u64) -> Answers {
        // quick_cache sizes its table for this many entries up front; a typical encoded
        // TokenInfo is a few hundred bytes.
        let estimated = usize::try_from(budget / 512).unwrap_or(usize::MAX).max(16);
        Answers {
            cache: (budget > 0)
                .then(|| quick_cache::sync::Cache::with_weighter(estimated, budget, ByBytes)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The encoded `TokenInfo` of token `id` under the policy whose digest is `policy`:
    /// the one kept, or `encode`'s (then kept).
    pub fn info(&self, id: TokenId, policy: &[u8; 32], encode: impl FnOnce() -> Bytes) -> Bytes {
        let Some(cache) = &self.cache else {
            return encode();
        };
        if let Some(kept) = cache.get(&id)
            && kept.policy == *policy
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return kept.info;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let info = encode();
        cache.insert(
            id,
            Encoded {
                policy: *policy,
                info: info.clone(),
            },
        );
        info
    }

    /// For the metrics.
    pub fn stats(&self) -> AnswerStats {
        AnswerStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cache.as_ref().map_or(0, |c| c.len() as u64),
            bytes: self.cache.as_ref().map_or(0, |c| c.weight()),
            budget: self.cache.as_ref().map_or(0, |c| c.capacity()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn id(n: u8) -> TokenId {
        TokenId([n; 16])
    }

    #[test]
    fn a_token_is_encoded_once_per_policy() {
        let answers = Answers::new(1 << 20);
        let encoded = Cell::new(0);
        let encode = |what: &'static [u8]| {
            encoded.set(encoded.get() + 1);
            Bytes::from_static(what)
        };
        assert_eq!(answers.info(id(1), &[1; 32], || encode(b"a")), &b"a"[..]);
        assert_eq!(answers.info(id(1), &[1; 32], || encode(b"x")), &b"a"[..]);
        assert_eq!(encoded.get(), 1);
        // Another policy may mark other scopes latent: encoded again, and kept.
        assert_eq!(answers.info(id(1), &[2; 32], || encode(b"b")), &b"b"[..]);
        assert_eq!(answers.info(id(1), &[2; 32], || encode(b"x")), &b"b"[..]);
        assert_eq!(encoded.get(), 2);
        // Another token is its own entry.
        assert_eq!(answers.info(id(2), &[2; 32], || encode(b"c")), &b"c"[..]);
        let s = answers.stats();
        assert_eq!((s.hits, s.misses, s.entries), (2, 3, 2));
    }

    #[test]
    fn the_cache_keeps_to_its_budget() {
        let budget = 64 * 1024;
        let answers = Answers::new(budget);
        let big = Bytes::from(vec![7u8; 1000]);
        for n in 0..=255u8 {
            for m in 0..4u8 {
                let mut key = [n; 16];
                key[0] = m;
                answers.info(TokenId(key), &[0; 32], || big.clone());
            }
        }
        let s = answers.stats();
        assert_eq!(s.misses, 1024);
        assert!(s.bytes <= budget, "{s:?}");
        assert!(s.entries > 0 && s.entries <= budget / 1160 + 1, "{s:?}");
    }

    #[test]
    fn off_encodes_every_time() {
        let answers = Answers::new(0);
        let encoded = Cell::new(0);
        for _ in 0..3 {
            answers.info(id(1), &[0; 32], || {
                encoded.set(encoded.get() + 1);
                Bytes::from_static(b"a")
            });
        }
        assert_eq!(encoded.get(), 3);
        assert_eq!(answers.stats(), AnswerStats::default());
    }
}
