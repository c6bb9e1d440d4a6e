//! The Redis key layout: the only place that knows key names and the bytes of the values
//! that are not codec-encoded records. Every key of one transaction carries the
//! transaction's hash tag (`{<txn hex>}`), so each lands in one hash slot and one
//! server-side function can change them atomically. Keys that span transactions (token
//! and consent pointers, listing indexes) carry their own tags and are written before the
//! transaction's commit, so a committed token is always found and listed.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{T}:m` | hash | `v` (version), `count` (tokens ever), `root` (first root's id) |
//! | `P:{T}:o` | list | nonces of the last 64 writes (a re-sent write is recognised) |
//! | `P:{T}:r` | hash | token id → record (immutable) |
//! | `P:{T}:s` | hash | token id → state (present for every token) |
//! | `P:{T}:t` | hash | token id → tree entry (parent, issue time) |
//! | `P:{T}:e` | zset | audit events: score = event id, member = id ‖ event |
//! | `P:{T}:c`, `P:{T}:k` | hash | consent id → request; action key → newest consent id |
//! | `P:tok:{tid}` | string | the token's transaction id |
//! | `P:cid:{id}`, `P:ckey:{key}` | string | a consent request's transaction id |
//! | `P:ix:t:{day.n}` | zset | transactions minted that day (lex order), bucket n of 16 |
//! | `P:ix:days:{d.n}` | zset | the days that have a bucket (score = member = day), bucket n of 16 |
//! | `P:ix:s:{digest.n}`, `P:ix:p:{digest.n}` | zset | transactions by subject, by party, bucket n of 16 |
//! | `P:cx` | zset | every consent request: member = id ‖ txn (lex order) |
//! | `P:co` | zset | requests that may still change: score = expiry, member = id ‖ txn |
//! | `P:parties` | hash | party → disablement |
//! | `P:hwm` | string | the greatest audit event id stored |

use crate::api::{StoreError, TreeEntry};
use writ_core::{ConsentId, EventId, TokenId, TxnId, UnixMillis};

/// Buckets of every index (a day's, a subject's, a party's), each in a slot of its own: a
/// transaction is entered in one, so a day's mints spread over the shards, and while one
/// shard cannot acknowledge writes a transaction is entered in a bucket elsewhere instead
/// of failing its Mint. Readers merge the buckets.
pub(super) const BUCKETS: u8 = 16;
pub(super) const DAY_MS: u64 = 86_400_000;

/// The names of every key, under one prefix (a namespace: one cluster may serve several
/// Writ deployments, or tests).
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

/// Is `prefix` usable as a key namespace? No hash-tag braces (the first `{…}` of a key
/// decides its slot) and nothing a person could misread.
pub(super) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn txn_key(&self, txn: TxnId, part: &str) -> String {
        format!("{}:{{{}}}:{part}", self.prefix, hex::encode(txn.0))
    }

    pub(super) fn meta(&self, txn: TxnId) -> String {
        self.txn_key(txn, "m")
    }
    /// The nonces of the transaction's recent writes (a sorted set by time applied).
    pub(super) fn ops(&self, txn: TxnId) -> String {
        self.txn_key(txn, "o")
    }
    pub(super) fn records(&self, txn: TxnId) -> String {
        self.txn_key(txn, "r")
    }
    pub(super) fn states(&self, txn: TxnId) -> String {
        self.txn_key(txn, "s")
    }
    pub(super) fn tree(&self, txn: TxnId) -> String {
        self.txn_key(txn, "t")
    }
    pub(super) fn events(&self, txn: TxnId) -> String {
        self.txn_key(txn, "e")
    }
    pub(super) fn consents(&self, txn: TxnId) -> String {
        self.txn_key(txn, "c")
    }
    pub(super) fn consent_keys(&self, txn: TxnId) -> String {
        self.txn_key(txn, "k")
    }

    pub(super) fn token(&self, id: TokenId) -> String {
        format!("{}:tok:{{{}}}", self.prefix, hex::encode(id.0))
    }
    pub(super) fn consent(&self, id: ConsentId) -> String {
        format!("{}:cid:{{{}}}", self.prefix, hex::encode(id.0))
    }
    pub(super) fn consent_key(&self, key: &[u8; 32]) -> String {
        format!("{}:ckey:{{{}}}", self.prefix, hex::encode(key))
    }
    /// A client assertion recorded as used (its `sub`/`jti` digest).
    pub(super) fn assertion(&self, key: &[u8; 32]) -> String {
        format!("{}:jti:{{{}}}", self.prefix, hex::encode(key))
    }

    /// The all-transactions index of one day.
    pub(super) fn day_index(&self, day: u64) -> Index {
        Index(format!("{}:ix:t:{{{day}", self.prefix))
    }
    pub(super) fn days(&self) -> Index {
        Index(format!("{}:ix:days:{{d", self.prefix))
    }
    pub(super) fn subject_index(&self, subject: &str) -> Index {
        Index(format!(
            "{}:ix:s:{{{}",
            self.prefix,
            digest("subject", subject)
        ))
    }
    pub(super) fn party_index(&self, party: &str) -> Index {
        Index(format!("{}:ix:p:{{{}", self.prefix, digest("party", party)))
    }
    pub(super) fn consent_index(&self) -> String {
        format!("{}:cx", self.prefix)
    }
    pub(super) fn open_consents(&self) -> String {
        format!("{}:co", self.prefix)
    }
    pub(super) fn parties(&self) -> String {
        format!("{}:parties", self.prefix)
    }
    pub(super) fn high_water(&self) -> String {
        format!("{}:hwm", self.prefix)
    }
    /// The live feed of audit events across nodes (a stream), and the nodes that have
    /// watchers (a sorted set: node → lease end). One hash tag, so they share a shard.
    pub(super) fn feed(&self) -> String {
        format!("{}:{{feed}}:stream", self.prefix)
    }
    pub(super) fn watching(&self) -> String {
        format!("{}:{{feed}}:watchers", self.prefix)
    }
    /// A `SCAN MATCH` pattern for every key of this namespace.
    pub(super) fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

/// What a key of the namespace holds, for [`StoreStats`](crate::StoreStats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyKind {
    Records,
    PerToken,
    Pointer,
    TxnIndex,
    Events,
    Consents,
    ConsentHash,
    ConsentPointer,
    ConsentIndex,
}

impl KeyKind {
    /// The command that counts its entries (`GET`: one).
    pub(super) fn counter(self) -> &'static str {
        match self {
            KeyKind::Pointer | KeyKind::ConsentPointer => "GET",
            KeyKind::TxnIndex | KeyKind::Events | KeyKind::ConsentIndex => "ZCARD",
            _ => "HLEN",
        }
    }

    pub(super) fn add(self, stats: &mut crate::StoreStats, n: u64) {
        let field = match self {
            KeyKind::Records => &mut stats.tokens,
            KeyKind::PerToken | KeyKind::Pointer => &mut stats.index_entries,
            KeyKind::TxnIndex => &mut stats.txn_index_entries,
            KeyKind::Events => &mut stats.events,
            KeyKind::Consents => &mut stats.consents,
            KeyKind::ConsentHash | KeyKind::ConsentPointer | KeyKind::ConsentIndex => {
                &mut stats.consent_index_entries
            }
        };
        *field += n;
    }
}

impl Keys {
    /// What `key` holds, or `None` for bookkeeping keys (meta, nonces, parties, the
    /// high-water mark) and keys of other namespaces.
    pub(super) fn kind(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if rest.starts_with('{') {
            return match rest.rsplit_once("}:")?.1 {
                "r" => Some(KeyKind::Records),
                "s" | "t" => Some(KeyKind::PerToken),
                "e" => Some(KeyKind::Events),
                "c" => Some(KeyKind::Consents),
                "k" => Some(KeyKind::ConsentHash),
                _ => None,
            };
        }
        let (head, _) = rest.split_once(':').unwrap_or((rest, ""));
        match head {
            "tok" => Some(KeyKind::Pointer),
            "cid" | "ckey" => Some(KeyKind::ConsentPointer),
            "ix" if !rest.starts_with("ix:days") => Some(KeyKind::TxnIndex),
            "cx" | "co" => Some(KeyKind::ConsentIndex),
            _ => None,
        }
    }
}

/// A short keyed digest naming an index key, so an id of any length (and any bytes) makes
/// a bounded key and spreads over slots.
/// A bucketed index (see [`BUCKETS`]): the keys of its buckets.
pub(super) struct Index(String);

impl Index {
    pub(super) fn bucket(&self, n: u8) -> String {
        format!("{}.{n}}}", self.0)
    }
    pub(super) fn buckets(&self) -> impl Iterator<Item = String> + '_ {
        (0..BUCKETS).map(|n| self.bucket(n))
    }
}

/// The bucket a transaction is entered in first.
pub(super) fn first_bucket(txn: TxnId) -> u8 {
    txn.0[15] % BUCKETS
}

fn digest(kind: &str, id: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key("writ redis index key v1");
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    hex::encode(&h.finalize().as_bytes()[..16])
}

/// The day (since the epoch) a transaction was minted, from its id.
pub(super) fn day_of(txn: TxnId) -> u64 {
    mint_ms(txn) / DAY_MS
}

/// A transaction's mint time, from its id's first six bytes.
pub(super) fn mint_ms(txn: TxnId) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&txn.0[..6]);
    u64::from_be_bytes(b)
}

/// A tree entry's value: parent flag, parent id, issue time (25 bytes).
pub(super) fn encode_tree(e: &TreeEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.push(u8::from(e.parent.is_some()));
    v.extend_from_slice(&e.parent.map_or([0; 16], |p| p.0));
    v.extend_from_slice(&e.issued_at.0.to_be_bytes());
    v
}

pub(super) fn decode_tree(id: &[u8], v: &[u8]) -> Result<TreeEntry, StoreError> {
    let (Ok(id), true) = (<[u8; 16]>::try_from(id), v.len() == 25) else {
        return Err(corrupt("tree entry"));
    };
    let mut parent = [0u8; 16];
    parent.copy_from_slice(&v[1..17]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&v[17..25]);
    Ok(TreeEntry {
        id: TokenId(id),
        parent: (v[0] == 1).then_some(TokenId(parent)),
        issued_at: UnixMillis(u64::from_be_bytes(at)),
    })
}

/// An event's member in its transaction's event set: the id first, so members of equal
/// score (never, ids are unique) still sort by id.
pub(super) fn event_member(id: EventId, encoded: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + encoded.len());
    m.extend_from_slice(&id.0.to_be_bytes());
    m.extend_from_slice(encoded);
    m
}

/// The encoded event of a member.
pub(super) fn event_of_member(m: &[u8]) -> Result<&[u8], StoreError> {
    m.get(8..).ok_or_else(|| corrupt("event member"))
}

/// A consent index member: id ‖ transaction.
pub(super) fn consent_member(id: ConsentId, txn: TxnId) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&id.0);
    m.extend_from_slice(&txn.0);
    m
}

pub(super) fn decode_consent_member(m: &[u8]) -> Result<(ConsentId, TxnId), StoreError> {
    match (m.get(..16), m.get(16..32)) {
        (Some(a), Some(b)) if m.len() == 32 => {
            let (mut id, mut txn) = ([0u8; 16], [0u8; 16]);
            id.copy_from_slice(a);
            txn.copy_from_slice(b);
            Ok((ConsentId(id), TxnId(txn)))
        }
        _ => Err(corrupt("consent index member")),
    }
}

/// Sixteen raw bytes as an id.
pub(super) fn id16(b: &[u8], what: &str) -> Result<[u8; 16], StoreError> {
    <[u8; 16]>::try_from(b).map_err(|_| corrupt(what))
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("redis: malformed {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_transaction_shares_one_hash_tag() {
        let k = Keys::new("writ");
        let t = TxnId([0xab; 16]);
        let tag = format!("{{{}}}", hex::encode(t.0));
        for key in [
            k.meta(t),
            k.ops(t),
            k.records(t),
            k.states(t),
            k.tree(t),
            k.events(t),
            k.consents(t),
            k.consent_keys(t),
        ] {
            assert_eq!(key.find('{'), key.find(&tag), "{key}");
        }
        assert_ne!(k.token(TokenId([1; 16])), k.token(TokenId([2; 16])));
    }

    #[test]
    fn prefixes_cannot_carry_a_hash_tag() {
        assert!(valid_prefix("writ"));
        assert!(valid_prefix("t-1_a.b"));
        for bad in ["", "a{b", "a}b", "a b", "a:b", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn tree_entries_and_members_round_trip() {
        let e = TreeEntry {
            id: TokenId([3; 16]),
            parent: Some(TokenId([4; 16])),
            issued_at: UnixMillis(99),
        };
        assert_eq!(decode_tree(&e.id.0, &encode_tree(&e)).unwrap(), e);
        let root = TreeEntry { parent: None, ..e };
        assert_eq!(decode_tree(&e.id.0, &encode_tree(&root)).unwrap(), root);
        assert!(decode_tree(&e.id.0, &[0; 24]).is_err());
        let (c, t) = (ConsentId([5; 16]), TxnId([6; 16]));
        assert_eq!(
            decode_consent_member(&consent_member(c, t)).unwrap(),
            (c, t)
        );
        assert_eq!(mint_ms(TxnId::new(UnixMillis(123_456), [0; 10])), 123_456);
    }
}
