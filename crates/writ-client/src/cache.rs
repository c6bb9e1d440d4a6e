//! An optional, strictly bounded cache of Validate verdicts, for a service that validates
//! the same token many times in a burst. Off by default: a caching service sees a
//! revocation up to the cache's TTL late (at most [`MAX_TTL`]).
//!
//! What it keeps: active answers that carry the token's info, for at most the configured
//! TTL and never past the token's expiry. What it never keeps: inactive answers (a token
//! that failed once is asked about again), use-limited tokens (`max_uses > 0`: an action
//! check spends a use, so every check goes to Writ), `require_action_check` tokens, answers
//! that require consent (an approval changes them), answers without info
//! (`decision_only`) and requests for a Txn-Token JWT. Entries are keyed by a keyed hash
//! (a random key per cache) of the token and the action: the cache never holds a secret.
//! One cache belongs to one identity: share it only between clients that act as the
//! same service.

use crate::proto as pb;
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a verdict may be cached, whatever the configuration says.
pub const MAX_TTL: Duration = Duration::from_secs(30);

type Key = [u8; 32];

/// A bounded cache of active Validate answers (see the module documentation). Cheap to
/// clone: clones share the entries.
#[derive(Clone)]
pub struct VerdictCache {
    shared: Arc<Shared>,
}

struct Shared {
    hash_key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    /// Insertion order, for eviction; an item whose `seq` no longer matches its entry is
    /// stale and skipped.
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

struct Entry {
    answer: pb::ValidateResponse,
    until: Instant,
    seq: u64,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache")
            .field("ttl", &self.shared.ttl)
            .field("capacity", &self.shared.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl VerdictCache {
    /// A cache keeping at most `capacity` verdicts (at least 1) for at most `ttl` each
    /// (capped at [`MAX_TTL`]).
    pub fn new(ttl: Duration, capacity: usize) -> VerdictCache {
        use rand::Rng;
        VerdictCache {
            shared: Arc::new(Shared {
                hash_key: rand::rng().random(),
                ttl: ttl.min(MAX_TTL),
                capacity: capacity.max(1),
                entries: Mutex::default(),
            }),
        }
    }

    /// The TTL in force (the configured one, capped).
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Entries held now (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every verdict.
    pub fn clear(&self) {
        let mut e = self.lock();
        e.map.clear();
        e.order.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves nothing half-written that matters:
        // entries are inserted whole.
        self.shared
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of `req`, or `None` when such a request is never answered from the cache.
    pub(crate) fn key(&self, req: &pb::ValidateRequest) -> Option<Key> {
        if req.txn_token_jwt || req.decision_only {
            return None;
        }
        let mut h = blake3::Hasher::new_keyed(&self.shared.hash_key);
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(req.token.as_bytes());
        if let Some(action) = &req.action {
            field(b"action");
            field(action.scope.as_bytes());
            let mut attrs: Vec<_> = action.attributes.iter().collect();
            attrs.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in attrs {
                field(name.as_bytes());
                // A Value holds no map: its encoding is deterministic.
                field(&value.encode_to_vec());
            }
        }
        Some(*h.finalize().as_bytes())
    }

    pub(crate) fn get(&self, key: &Key) -> Option<pb::ValidateResponse> {
        self.get_at(key, Instant::now())
    }

    pub(crate) fn get_at(&self, key: &Key, now: Instant) -> Option<pb::ValidateResponse> {
        let mut e = self.lock();
        match e.map.get(key) {
            Some(entry) if entry.until > now => Some(entry.answer.clone()),
            Some(_) => {
                e.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, key: Key, answer: &pb::ValidateResponse) {
        self.insert_at(key, answer, Instant::now(), now_unix_ms());
    }

    /// Keeps `answer` if it may be kept (module documentation), until the TTL or the
    /// token's expiry, whichever comes first.
    pub(crate) fn insert_at(
        &self,
        key: Key,
        answer: &pb::ValidateResponse,
        now: Instant,
        now_unix_ms: u64,
    ) {
        let Some(lifetime) = self.lifetime(answer, now_unix_ms) else {
            return;
        };
        let mut e = self.lock();
        if !e.map.contains_key(&key) && e.map.len() >= self.shared.capacity {
            e.map.retain(|_, v| v.until > now);
            while e.map.len() >= self.shared.capacity {
                let Some((old, seq)) = e.order.pop_front() else {
                    break;
                };
                if e.map.get(&old).is_some_and(|v| v.seq == seq) {
                    e.map.remove(&old);
                }
            }
        }
        e.seq += 1;
        let seq = e.seq;
        e.map.insert(
            key,
            Entry {
                answer: answer.clone(),
                until: now + lifetime,
                seq,
            },
        );
        e.order.push_back((key, seq));
        // Stale order items (re-inserted or removed keys) never outnumber live ones twice.
        if e.order.len() > 2 * self.shared.capacity {
            let Entries { map, order, .. } = &mut *e;
            order.retain(|(k, s)| map.get(k).is_some_and(|v| v.seq == *s));
        }
    }

    /// How long `answer` may be kept, or `None` when it may not.
    fn lifetime(&self, answer: &pb::ValidateResponse, now_unix_ms: u64) -> Option<Duration> {
        let info = answer.info.as_ref()?;
        let consent = answer.decision.as_ref().is_some_and(|d| d.consent_required);
        if !answer.active
            || info.max_uses > 0
            || info.require_action_check
            || !info.consent_request_id.is_empty()
            || consent
        {
            return None;
        }
        let left = Duration::from_millis(info.expires_at_unix_ms.checked_sub(now_unix_ms)?);
        let lifetime = self.shared.ttl.min(left);
        (!lifetime.is_zero()).then_some(lifetime)
    }
}

/// Milliseconds since the Unix epoch: a token's expiry is on the server's wall clock.
#[allow(clippy::disallowed_methods)] // The client has no service clock to take it from.
fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn active(expires_in_ms: u64, max_uses: u32) -> pb::ValidateResponse {
        pb::ValidateResponse {
            active: true,
            info: Some(pb::TokenInfo {
                token_id: "tok".into(),
                expires_at_unix_ms: NOW_MS + expires_in_ms,
                max_uses,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn req(token: &str) -> pb::ValidateRequest {
        pb::ValidateRequest {
            token: token.into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_live_the_ttl_at_most_and_never_past_expiry() {
        let c = VerdictCache::new(Duration::from_secs(5), 10);
        let t0 = Instant::now();
        let k = c.key(&req("writ_a")).unwrap();
        c.insert_at(k, &active(60_000, 0), t0, NOW_MS);
        assert!(c.get_at(&k, t0 + Duration::from_millis(4_999)).is_some());
        assert!(c.get_at(&k, t0 + Duration::from_secs(5)).is_none(), "TTL");
        assert!(c.is_empty(), "an expired entry is dropped when met");
        // The token expires in 2 s: the entry lives 2 s, not 5.
        c.insert_at(k, &active(2_000, 0), t0, NOW_MS);
        assert!(c.get_at(&k, t0 + Duration::from_millis(1_999)).is_some());
        assert!(
            c.get_at(&k, t0 + Duration::from_secs(2)).is_none(),
            "expiry"
        );
        // Already expired on the server's clock: not kept.
        c.insert_at(k, &active(0, 0), t0, NOW_MS);
        assert!(c.is_empty());
        let mut past = active(0, 0);
        past.info.as_mut().unwrap().expires_at_unix_ms = NOW_MS - 1;
        c.insert_at(k, &past, t0, NOW_MS);
        assert!(c.is_empty());
    }

    #[test]
    fn the_ttl_is_capped() {
        let c = VerdictCache::new(Duration::from_secs(3600), 10);
        assert_eq!(c.ttl(), MAX_TTL);
        let t0 = Instant::now();
        let k = c.key(&req("writ_a")).unwrap();
        c.insert_at(k, &active(3_600_000, 0), t0, NOW_MS);
        assert!(c.get_at(&k, t0 + MAX_TTL).is_none());
    }

    #[test]
    fn use_limited_action_required_consent_and_inactive_answers_are_never_kept() {
        let c = VerdictCache::new(Duration::from_secs(5), 10);
        let t0 = Instant::now();
        let k = c.key(&req("writ_a")).unwrap();
        c.insert_at(k, &active(60_000, 1), t0, NOW_MS);
        assert!(c.is_empty(), "max_uses > 0");
        let mut a = active(60_000, 0);
        a.info.as_mut().unwrap().require_action_check = true;
        c.insert_at(k, &a, t0, NOW_MS);
        assert!(c.is_empty(), "require_action_check");
        let mut a = active(60_000, 0);
        a.decision = Some(pb::ActionDecision {
            consent_required: true,
            denied_by: "consent".into(),
            ..Default::default()
        });
        c.insert_at(k, &a, t0, NOW_MS);
        assert!(c.is_empty(), "consent required");
        let mut a = active(60_000, 0);
        a.info.as_mut().unwrap().consent_request_id = "cns_x".into();
        c.insert_at(k, &a, t0, NOW_MS);
        assert!(c.is_empty(), "redeemed consent token");
        let inactive = pb::ValidateResponse {
            active: false,
            inactive_reason: pb::InactiveReason::Revoked.into(),
            ..Default::default()
        };
        c.insert_at(k, &inactive, t0, NOW_MS);
        assert!(c.is_empty(), "inactive");
        // Requests that are never answered from the cache.
        let jwt = pb::ValidateRequest {
            txn_token_jwt: true,
            ..req("writ_a")
        };
        assert!(c.key(&jwt).is_none());
        let decision_only = pb::ValidateRequest {
            decision_only: true,
            ..req("writ_a")
        };
        assert!(c.key(&decision_only).is_none());
    }

    #[test]
    fn capacity_is_bounded_oldest_first() {
        let c = VerdictCache::new(Duration::from_secs(5), 3);
        let t0 = Instant::now();
        let keys: Vec<_> = (0..5)
            .map(|i| c.key(&req(&format!("writ_{i}"))).unwrap())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            c.insert_at(
                *k,
                &active(60_000, 0),
                t0 + Duration::from_millis(i as u64),
                NOW_MS,
            );
            assert!(c.len() <= 3);
        }
        let now = t0 + Duration::from_millis(10);
        assert!(c.get_at(&keys[0], now).is_none());
        assert!(c.get_at(&keys[1], now).is_none());
        for k in &keys[2..] {
            assert!(c.get_at(k, now).is_some());
        }
        // Re-inserting a held key does not evict another; expired ones go first.
        c.insert_at(
            keys[4],
            &active(60_000, 0),
            t0 + Duration::from_secs(2),
            NOW_MS,
        );
        assert_eq!(c.len(), 3);
        let later = t0 + Duration::from_secs(6);
        let fresh = c.key(&req("writ_fresh")).unwrap();
        c.insert_at(fresh, &active(60_000, 0), later, NOW_MS);
        assert_eq!(c.len(), 2, "the expired entries were purged: {c:?}");
        assert!(
            c.get_at(&keys[4], later).is_some(),
            "the refreshed one stays"
        );
        // Many re-insertions keep the order queue bounded.
        for i in 0..100u64 {
            c.insert_at(
                fresh,
                &active(60_000, 0),
                later + Duration::from_millis(i),
                NOW_MS,
            );
        }
        assert!(c.lock().order.len() <= 6);
    }

    #[test]
    fn keys_hash_token_and_action_never_hold_the_secret() {
        let c = VerdictCache::new(Duration::from_secs(5), 3);
        let other = VerdictCache::new(Duration::from_secs(5), 3);
        let plain = c.key(&req("writ_a")).unwrap();
        assert_ne!(plain, c.key(&req("writ_b")).unwrap());
        assert_ne!(plain, other.key(&req("writ_a")).unwrap(), "keyed per cache");
        let action = |scope: &str, attrs: Vec<(&str, i64)>| pb::ValidateRequest {
            action: Some(pb::Action {
                scope: scope.into(),
                attributes: attrs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), crate::build::int(v)))
                    .collect(),
            }),
            ..req("writ_a")
        };
        let a = c
            .key(&action("pay", vec![("amount", 5), ("n", 1)]))
            .unwrap();
        assert_ne!(a, plain);
        assert_eq!(
            a,
            c.key(&action("pay", vec![("n", 1), ("amount", 5)]))
                .unwrap()
        );
        assert_ne!(
            a,
            c.key(&action("pay", vec![("amount", 6), ("n", 1)]))
                .unwrap()
        );
        assert_ne!(
            a,
            c.key(&action("book", vec![("amount", 5), ("n", 1)]))
                .unwrap()
        );
    }
}
