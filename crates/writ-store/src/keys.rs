//! The byte layout of every key and the names of the column families: the one place
//! that knows them, so a layout change is one diff and one schema-version bump.
//!
//! Integers are big-endian so that byte order, which is the engine's key order, is
//! numeric order. Ids are their raw 16 bytes.
//!
//! | column family | key                                | value                    |
//! |---------------|------------------------------------|--------------------------|
//! | `tokens`      | token id (16)                      | encoded record (`codec`) |
//! | `state`       | token id (16)                      | encoded state (`codec`)  |
//! | `txn_tokens`  | txn id (16) ‖ token id (16)        | parent (flag 1 ‖ id 16) ‖ issued_at ms (8); empty from builds before schema 4 |
//! | `children`    | parent token id (16) ‖ child token id (16) | empty            |
//! | `expiry`      | expires_at ms, u64 BE (8) ‖ token id (16) | empty             |
//! | `txns`        | txn id (16)                        | root token id (16)       |
//! | `subject_txns`| digest(subject) (16) ‖ txn id (16) | empty                    |
//! | `party_txns`  | digest(party) (16) ‖ txn id (16)   | empty                    |
//! | `txn_parties` | txn id (16) ‖ digest(party) (16)   | empty                    |
//! | `events`      | txn id (16) ‖ event id, u64 BE (8) | encoded event (`codec`)  |
//! | `event_log`   | event id, u64 BE (8) ‖ txn id (16) | empty                    |
//! | `parties`     | party id (its UTF-8 bytes)         | encoded disablement (`codec`) |
//! | `consents`    | consent id (16)                    | encoded request (`codec`) |
//! | `consent_keys`| action key (32)                    | consent id (16): the newest request under the key |
//! | `consent_open`| expires_at ms, u64 BE (8) ‖ consent id (16) | empty            |
//! | `consent_txns`| txn id (16) ‖ consent id (16)      | expires_at ms (8) while open; empty once closed |
//! | `meta`        | `schema_version`                   | u32 BE                   |
//!
//! Every key of a token is derivable from its record, so purging an expired token
//! (found through `expiry`) deletes its `tokens`, `state`, `txn_tokens` and `expiry`
//! rows, its `children` entry under its parent and every entry under itself; purging a
//! root also deletes its transaction's `txns`, `subject_txns`, `party_txns` and
//! `txn_parties` rows (the last lists the digests the `party_txns` keys need).
//!
//! Transaction ids begin with their mint time, so the three transaction indexes list
//! newest first by scanning backwards, and a time window is a key range. Subjects and
//! parties are variable-length strings, so their index keys hold a 128-bit digest instead
//! (blake3 in derive-key mode, not keyed: fixed length, so the transaction id that follows
//! is always at the same offset); a listing re-checks the subject on the root record.
//!
//! The audit trail (`events`, `event_log`) is kept apart from token state: purging a
//! token never touches it. `event_log` orders every event by id (its time), which is
//! what the audit retention walks.
//!
//! `parties` holds the parties an operator disabled, one row each, and nothing else: the
//! server reads it whole at start. Its keys are the ids themselves (not digests), so the
//! list reads back without any other index. It was added without a schema bump: opening
//! an older store creates it empty, and an older build refuses a store that has it
//! (RocksDB will not open a database with a column family left unopened), which is what a
//! kill switch wants: no build that ignores disablements serves the data.
//!
//! The consent families were added the same way (created empty in an older store). A
//! consent request's id begins with its creation time, so `consents` is walked oldest
//! first by the consent purge and newest first by a listing. `consent_open` holds the
//! requests that may still change (pending, or approved and not redeemed), by expiry:
//! what the expiry sweep walks; an entry goes when its request is denied, redeemed or
//! marked expired. `consent_txns` lists a transaction's requests; its value says whether
//! (and until when) one is open, so counting a transaction's open requests reads no
//! request. `consent_keys` answers "the newest request for this action": overwritten by
//! a newer request under the same key, deleted by the purge only while it still names
//! the purged request.

use writ_core::{ConsentId, EventId, TokenId, TxnId, UnixMillis};

/// Records by public token id.
pub(crate) const CF_TOKENS: &str = "tokens";
/// Mutable state (revocation, uses, children) by token id; no row is the default state.
pub(crate) const CF_STATE: &str = "state";
/// Index: the children of each token, for revoking a subtree.
pub(crate) const CF_CHILDREN: &str = "children";
/// Index: the tokens of each transaction.
pub(crate) const CF_TXN_TOKENS: &str = "txn_tokens";
/// Index: tokens by expiry time, walked in key order by `purge_expired`.
pub(crate) const CF_EXPIRY: &str = "expiry";
/// Transactions by id, to their root token.
pub(crate) const CF_TXNS: &str = "txns";
/// Index: transactions by subject.
pub(crate) const CF_SUBJECT_TXNS: &str = "subject_txns";
/// Index: transactions by every party that acted in them or was an audience.
pub(crate) const CF_PARTY_TXNS: &str = "party_txns";
/// Inverse of `party_txns`, so purging a transaction finds its entries.
pub(crate) const CF_TXN_PARTIES: &str = "txn_parties";
/// The audit trail, by transaction then event id.
pub(crate) const CF_EVENTS: &str = "events";
/// Every event by id (time), for retention.
pub(crate) const CF_EVENT_LOG: &str = "event_log";
/// Disabled parties by id.
pub(crate) const CF_PARTIES: &str = "parties";
/// Consent requests by id.
pub(crate) const CF_CONSENTS: &str = "consents";
/// The newest consent request under each action key.
pub(crate) const CF_CONSENT_KEYS: &str = "consent_keys";
/// Index: consent requests that may still change, by expiry.
pub(crate) const CF_CONSENT_OPEN: &str = "consent_open";
/// Index: the consent requests of each transaction.
pub(crate) const CF_CONSENT_TXNS: &str = "consent_txns";
/// Store-wide metadata.
pub(crate) const CF_META: &str = "meta";

/// The consent families, added after `parties` without a schema bump.
#[cfg(test)]
pub(crate) const CONSENT_CFS: [&str; 4] = [
    CF_CONSENTS,
    CF_CONSENT_KEYS,
    CF_CONSENT_OPEN,
    CF_CONSENT_TXNS,
];

/// Every column family, in the order they are opened and compacted.
pub(crate) const ALL_CFS: [&str; 17] = [
    CF_TOKENS,
    CF_STATE,
    CF_TXN_TOKENS,
    CF_CHILDREN,
    CF_EXPIRY,
    CF_TXNS,
    CF_SUBJECT_TXNS,
    CF_PARTY_TXNS,
    CF_TXN_PARTIES,
    CF_EVENTS,
    CF_EVENT_LOG,
    CF_PARTIES,
    CF_CONSENTS,
    CF_CONSENT_KEYS,
    CF_CONSENT_OPEN,
    CF_CONSENT_TXNS,
    CF_META,
];

/// Version of this layout. Bump it on any incompatible change to a key or value.
/// Version 2 added the transaction indexes and the audit trail; a version-1 store is
/// upgraded in place on open (its transaction indexes rebuilt from the records).
/// Version 3 appends a token count to `txns` values; a version-2 store is opened as is
/// (its entries are counted by a scan on their next Downscope), and an older build
/// refuses a version-3 store instead of misreading the longer values.
/// Version 4 writes records in format 2 (see `codec`), which older builds cannot read;
/// a version-2 or -3 store is opened as is (its format-1 records are still read).
pub(crate) const SCHEMA_VERSION: u32 = 4;
/// Key in [`CF_META`] holding the schema version.
pub(crate) const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// Value of every index entry: the key says it all.
pub(crate) const EMPTY_VALUE: &[u8] = &[];

const ID_LEN: usize = 16;
/// Length of a `txn_tokens` key prefix: one transaction id.
pub(crate) const TXN_PREFIX_LEN: usize = ID_LEN;

/// Key of a record in [`CF_TOKENS`].
pub(crate) fn token_key(id: TokenId) -> [u8; ID_LEN] {
    id.0
}

/// Value of a [`CF_TXNS`] entry: the root's id, then how many tokens the transaction has
/// held, purged ones included (big-endian u32), so Downscope checks the transaction's size
/// limit without scanning it. Entries written before the count existed are just the id.
pub(crate) fn txn_value(root: TokenId, tokens: u32) -> [u8; ID_LEN + 4] {
    let mut v = [0u8; ID_LEN + 4];
    v[..ID_LEN].copy_from_slice(&root.0);
    v[ID_LEN..].copy_from_slice(&tokens.to_be_bytes());
    v
}

/// The root and, if recorded, the token count of a [`CF_TXNS`] value.
pub(crate) fn of_txn_value(v: &[u8]) -> Option<(TokenId, Option<u32>)> {
    let root = TokenId(v.get(..ID_LEN)?.try_into().ok()?);
    match v.len() - ID_LEN {
        0 => Some((root, None)),
        4 => Some((root, Some(u32::from_be_bytes(v[ID_LEN..].try_into().ok()?)))),
        _ => None,
    }
}

/// The prefix every [`CF_TXN_TOKENS`] key of one transaction starts with.
pub(crate) fn txn_prefix(txn: TxnId) -> [u8; TXN_PREFIX_LEN] {
    txn.0
}

/// Key of a [`CF_TXN_TOKENS`] index entry.
pub(crate) fn txn_token_key(txn: TxnId, id: TokenId) -> [u8; 2 * ID_LEN] {
    let mut k = [0u8; 2 * ID_LEN];
    k[..ID_LEN].copy_from_slice(&txn.0);
    k[ID_LEN..].copy_from_slice(&id.0);
    k
}

/// Length of a [`CF_TXN_TOKENS`] value: where the token sits in its tree.
const TREE_VALUE_LEN: usize = 1 + ID_LEN + 8;

/// A [`CF_TXN_TOKENS`] value: the token's parent (`1 ‖ id`, or `0 ‖ zeros` at the root) and
/// issue time, so a transaction's tree is read from the index without its records.
pub(crate) fn tree_value(parent: Option<TokenId>, issued_at: UnixMillis) -> [u8; TREE_VALUE_LEN] {
    let mut v = [0u8; TREE_VALUE_LEN];
    if let Some(p) = parent {
        v[0] = 1;
        v[1..=ID_LEN].copy_from_slice(&p.0);
    }
    v[1 + ID_LEN..].copy_from_slice(&issued_at.0.to_be_bytes());
    v
}

/// What a [`CF_TXN_TOKENS`] value says: `Some(None)` for an empty value (written before
/// schema 4: read the record instead), `None` for a value of another shape.
pub(crate) fn of_tree_value(v: &[u8]) -> Option<Option<(Option<TokenId>, UnixMillis)>> {
    if v.is_empty() {
        return Some(None);
    }
    if v.len() != TREE_VALUE_LEN {
        return None;
    }
    let parent = match v[0] {
        0 => None,
        1 => Some(TokenId(v[1..=ID_LEN].try_into().ok()?)),
        _ => return None,
    };
    let at = u64::from_be_bytes(v[1 + ID_LEN..].try_into().ok()?);
    Some(Some((parent, UnixMillis(at))))
}

/// The token id of a [`CF_TXN_TOKENS`] key; `None` if the key has the wrong length.
pub(crate) fn token_id_of_txn_key(key: &[u8]) -> Option<TokenId> {
    if key.len() != 2 * ID_LEN {
        return None;
    }
    let id: [u8; ID_LEN] = key[ID_LEN..].try_into().ok()?;
    Some(TokenId(id))
}

/// Length of a `children` key prefix: one parent token id.
pub(crate) const PARENT_PREFIX_LEN: usize = ID_LEN;

/// Key of a token's row in [`CF_STATE`].
pub(crate) fn state_key(id: TokenId) -> [u8; ID_LEN] {
    id.0
}

/// The prefix every [`CF_CHILDREN`] key of one parent starts with.
pub(crate) fn children_prefix(parent: TokenId) -> [u8; PARENT_PREFIX_LEN] {
    parent.0
}

/// Key of a [`CF_CHILDREN`] index entry.
pub(crate) fn child_key(parent: TokenId, child: TokenId) -> [u8; 2 * ID_LEN] {
    let mut k = [0u8; 2 * ID_LEN];
    k[..ID_LEN].copy_from_slice(&parent.0);
    k[ID_LEN..].copy_from_slice(&child.0);
    k
}

/// The child token id of a [`CF_CHILDREN`] key; `None` if the key has the wrong length.
pub(crate) fn child_id_of_child_key(key: &[u8]) -> Option<TokenId> {
    if key.len() != 2 * ID_LEN {
        return None;
    }
    let id: [u8; ID_LEN] = key[ID_LEN..].try_into().ok()?;
    Some(TokenId(id))
}

/// Key of an [`CF_EXPIRY`] index entry.
pub(crate) fn expiry_key(expires_at: UnixMillis, id: TokenId) -> [u8; 8 + ID_LEN] {
    let mut k = [0u8; 8 + ID_LEN];
    k[..8].copy_from_slice(&expires_at.0.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// The token id of a [`CF_EXPIRY`] key; `None` if the key has the wrong length.
pub(crate) fn token_id_of_expiry_key(key: &[u8]) -> Option<TokenId> {
    if key.len() != 8 + ID_LEN {
        return None;
    }
    let id: [u8; ID_LEN] = key[8..].try_into().ok()?;
    Some(TokenId(id))
}

/// Length of a digest of a subject or party in index keys.
pub(crate) const DIGEST_LEN: usize = 16;

/// The index digest of a subject or party id: fixed-length, domain-separated (blake3's
/// derive-key mode with a Writ context; not secret, so it hides nothing from someone who
/// can read the store) and 128 bits, so collisions do not happen in practice (and a
/// listing re-checks the subject anyway).
pub(crate) fn digest(id: &str) -> [u8; DIGEST_LEN] {
    let hash = blake3::Hasher::new_derive_key("writ 2026 index digest v1")
        .update(id.as_bytes())
        .finalize();
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&hash.as_bytes()[..DIGEST_LEN]);
    out
}

/// Key of a `subject_txns` or `party_txns` entry.
pub(crate) fn digest_txn_key(digest: &[u8; DIGEST_LEN], txn: TxnId) -> [u8; DIGEST_LEN + ID_LEN] {
    let mut k = [0u8; DIGEST_LEN + ID_LEN];
    k[..DIGEST_LEN].copy_from_slice(digest);
    k[DIGEST_LEN..].copy_from_slice(&txn.0);
    k
}

/// The transaction id of a `txns` key or of the end of a `subject_txns`/`party_txns`
/// key; `None` if the key is too short.
pub(crate) fn txn_of_suffix(key: &[u8]) -> Option<TxnId> {
    let id: [u8; ID_LEN] = key.get(key.len().checked_sub(ID_LEN)?..)?.try_into().ok()?;
    Some(TxnId(id))
}

/// Key of a `txn_parties` entry.
pub(crate) fn txn_party_key(txn: TxnId, digest: &[u8; DIGEST_LEN]) -> [u8; ID_LEN + DIGEST_LEN] {
    let mut k = [0u8; ID_LEN + DIGEST_LEN];
    k[..ID_LEN].copy_from_slice(&txn.0);
    k[ID_LEN..].copy_from_slice(digest);
    k
}

/// The party digest of a `txn_parties` key; `None` if the key has the wrong length.
pub(crate) fn digest_of_txn_party_key(key: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    if key.len() != ID_LEN + DIGEST_LEN {
        return None;
    }
    key[ID_LEN..].try_into().ok()
}

/// Key of an `events` entry.
pub(crate) fn event_key(txn: TxnId, id: EventId) -> [u8; ID_LEN + 8] {
    let mut k = [0u8; ID_LEN + 8];
    k[..ID_LEN].copy_from_slice(&txn.0);
    k[ID_LEN..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// Key of an `event_log` entry.
pub(crate) fn event_log_key(id: EventId, txn: TxnId) -> [u8; 8 + ID_LEN] {
    let mut k = [0u8; 8 + ID_LEN];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&txn.0);
    k
}

/// The event id and transaction of an `event_log` key.
pub(crate) fn of_event_log_key(key: &[u8]) -> Option<(EventId, TxnId)> {
    if key.len() != 8 + ID_LEN {
        return None;
    }
    let id = u64::from_be_bytes(key[..8].try_into().ok()?);
    let txn: [u8; ID_LEN] = key[8..].try_into().ok()?;
    Some((EventId(id), TxnId(txn)))
}

/// Key of a party's row in [`CF_PARTIES`]: its id.
pub(crate) fn party_key(party: &str) -> &[u8] {
    party.as_bytes()
}

/// The party id of a [`CF_PARTIES`] key; `None` if it is not UTF-8.
pub(crate) fn party_of_key(key: &[u8]) -> Option<String> {
    String::from_utf8(key.to_vec()).ok()
}

/// Key of a request in [`CF_CONSENTS`]; also the value of a [`CF_CONSENT_KEYS`] entry.
pub(crate) fn consent_key(id: ConsentId) -> [u8; ID_LEN] {
    id.0
}

/// The consent id of a [`CF_CONSENTS`] key or [`CF_CONSENT_KEYS`] value; `None` if it has
/// the wrong length.
pub(crate) fn consent_id_of(bytes: &[u8]) -> Option<ConsentId> {
    Some(ConsentId(bytes.try_into().ok()?))
}

/// Key of a [`CF_CONSENT_KEYS`] entry: the request's action key.
pub(crate) fn consent_action_key(key: &[u8; 32]) -> &[u8] {
    key
}

/// Key of a [`CF_CONSENT_OPEN`] entry.
pub(crate) fn consent_open_key(expires_at: UnixMillis, id: ConsentId) -> [u8; 8 + ID_LEN] {
    let mut k = [0u8; 8 + ID_LEN];
    k[..8].copy_from_slice(&expires_at.0.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// The consent id of a [`CF_CONSENT_OPEN`] key; `None` if the key has the wrong length.
pub(crate) fn consent_id_of_open_key(key: &[u8]) -> Option<ConsentId> {
    if key.len() != 8 + ID_LEN {
        return None;
    }
    consent_id_of(&key[8..])
}

/// Key of a [`CF_CONSENT_TXNS`] entry.
pub(crate) fn consent_txn_key(txn: TxnId, id: ConsentId) -> [u8; 2 * ID_LEN] {
    let mut k = [0u8; 2 * ID_LEN];
    k[..ID_LEN].copy_from_slice(&txn.0);
    k[ID_LEN..].copy_from_slice(&id.0);
    k
}

/// The consent id of a [`CF_CONSENT_TXNS`] key; `None` if the key has the wrong length.
pub(crate) fn consent_id_of_txn_key(key: &[u8]) -> Option<ConsentId> {
    if key.len() != 2 * ID_LEN {
        return None;
    }
    consent_id_of(&key[ID_LEN..])
}

/// A [`CF_CONSENT_TXNS`] value: the request's expiry while it is open, nothing once it is
/// closed (denied, redeemed or marked expired).
pub(crate) fn consent_txn_value(open_until: Option<UnixMillis>) -> Vec<u8> {
    open_until.map_or_else(Vec::new, |at| at.0.to_be_bytes().to_vec())
}

/// What a [`CF_CONSENT_TXNS`] value says: `Some(Some(expiry))` while open, `Some(None)`
/// once closed, `None` for a value of another shape.
pub(crate) fn of_consent_txn_value(v: &[u8]) -> Option<Option<UnixMillis>> {
    match v.len() {
        0 => Some(None),
        8 => Some(Some(UnixMillis(u64::from_be_bytes(v.try_into().ok()?)))),
        _ => None,
    }
}

/// The stored form of a schema version.
pub(crate) fn encode_schema_version(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

/// A stored schema version; `None` if the value has the wrong length.
pub(crate) fn decode_schema_version(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(first: u8, last: u8) -> TokenId {
        let mut b = [0u8; 16];
        b[0] = first;
        b[15] = last;
        TokenId(b)
    }

    fn txn(last: u8) -> TxnId {
        let mut b = [0u8; 16];
        b[15] = last;
        TxnId(b)
    }

    #[test]
    fn txn_keys_group_by_txn_then_order_by_token_id() {
        let mut keys = [
            txn_token_key(txn(2), tid(0, 0)),
            txn_token_key(txn(1), tid(9, 0)),
            txn_token_key(txn(1), tid(0, 1)),
            txn_token_key(txn(1), tid(0, 0)),
            txn_token_key(txn(0xff), tid(0xff, 0xff)),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                (
                    k[..TXN_PREFIX_LEN].to_vec(),
                    token_id_of_txn_key(k).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (txn_prefix(txn(1)).to_vec(), tid(0, 0)),
                (txn_prefix(txn(1)).to_vec(), tid(0, 1)),
                (txn_prefix(txn(1)).to_vec(), tid(9, 0)),
                (txn_prefix(txn(2)).to_vec(), tid(0, 0)),
                (txn_prefix(txn(0xff)).to_vec(), tid(0xff, 0xff)),
            ]
        );
        // Every key of a transaction starts with its prefix and with no other.
        assert!(txn_token_key(txn(1), tid(7, 7)).starts_with(&txn_prefix(txn(1))));
        assert!(!txn_token_key(txn(1), tid(7, 7)).starts_with(&txn_prefix(txn(2))));
    }

    #[test]
    fn txn_key_round_trips_and_rejects_wrong_lengths() {
        let k = txn_token_key(txn(3), tid(4, 5));
        assert_eq!(token_id_of_txn_key(&k), Some(tid(4, 5)));
        assert_eq!(token_id_of_txn_key(&k[..31]), None);
        assert_eq!(token_id_of_txn_key(&[k.as_slice(), &[0]].concat()), None);
        assert_eq!(token_key(tid(4, 5)), tid(4, 5).0);
    }

    #[test]
    fn child_keys_group_by_parent_and_round_trip() {
        let mut keys = [
            child_key(tid(2, 0), tid(0, 0)),
            child_key(tid(1, 0), tid(9, 0)),
            child_key(tid(1, 0), tid(0, 1)),
            child_key(tid(1, 1), tid(0, 0)),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                (
                    k[..PARENT_PREFIX_LEN].to_vec(),
                    child_id_of_child_key(k).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (children_prefix(tid(1, 0)).to_vec(), tid(0, 1)),
                (children_prefix(tid(1, 0)).to_vec(), tid(9, 0)),
                (children_prefix(tid(1, 1)).to_vec(), tid(0, 0)),
                (children_prefix(tid(2, 0)).to_vec(), tid(0, 0)),
            ]
        );
        let k = child_key(tid(3, 4), tid(5, 6));
        assert!(k.starts_with(&children_prefix(tid(3, 4))));
        assert!(!k.starts_with(&children_prefix(tid(5, 6))));
        assert_eq!(&k[..16], &tid(3, 4).0);
        assert_eq!(child_id_of_child_key(&k), Some(tid(5, 6)));
        assert_eq!(child_id_of_child_key(&k[..31]), None);
        assert_eq!(child_id_of_child_key(&[k.as_slice(), &[0]].concat()), None);
        assert_eq!(state_key(tid(4, 5)), tid(4, 5).0);
    }

    #[test]
    fn expiry_keys_sort_numerically_then_by_token_id() {
        // Little-endian or decimal text would put 256 before 255 or 10 before 9.
        let times = [
            0u64,
            9,
            10,
            255,
            256,
            65_536,
            1 << 32,
            1_700_000_000_000,
            u64::MAX,
        ];
        let mut keys: Vec<_> = times
            .iter()
            .rev()
            .map(|&t| expiry_key(UnixMillis(t), tid(0, 0)))
            .collect();
        keys.sort();
        let sorted: Vec<u64> = keys
            .iter()
            .map(|k| u64::from_be_bytes(k[..8].try_into().unwrap()))
            .collect();
        assert_eq!(sorted, times);
        assert!(expiry_key(UnixMillis(5), tid(0xff, 0)) < expiry_key(UnixMillis(6), tid(0, 0)));
        assert!(expiry_key(UnixMillis(5), tid(1, 0)) < expiry_key(UnixMillis(5), tid(2, 0)));
        assert_eq!(&expiry_key(UnixMillis(5), tid(1, 2))[8..], &tid(1, 2).0);
        let k = expiry_key(UnixMillis(5), tid(1, 2));
        assert_eq!(token_id_of_expiry_key(&k), Some(tid(1, 2)));
        assert_eq!(token_id_of_expiry_key(&k[..23]), None);
        // Every expires_at below a cutoff sorts before the cutoff's 8 bytes alone.
        assert!(
            expiry_key(UnixMillis(4), tid(0xff, 0xff)).as_slice() < 5u64.to_be_bytes().as_slice()
        );
        assert!(k.as_slice() >= 5u64.to_be_bytes().as_slice());
    }

    #[test]
    fn schema_version_round_trips() {
        assert_eq!(
            decode_schema_version(&encode_schema_version(SCHEMA_VERSION)),
            Some(SCHEMA_VERSION)
        );
        assert_eq!(encode_schema_version(1), [0, 0, 0, 1]);
    }

    #[test]
    fn index_keys_order_by_digest_then_time_and_round_trip() {
        let early = TxnId::new(UnixMillis(1_000), [0xff; 10]);
        let late = TxnId::new(UnixMillis(2_000), [0; 10]);
        let (a, b) = (digest("alice"), digest("bob"));
        assert_ne!(a, b);
        assert_eq!(a, digest("alice"));
        assert!(digest_txn_key(&a, early) < digest_txn_key(&a, late));
        assert_eq!(txn_of_suffix(&digest_txn_key(&b, late)), Some(late));
        assert_eq!(txn_of_suffix(&late.0), Some(late));
        assert_eq!(txn_of_suffix(&[0; 15]), None);
        let k = txn_party_key(late, &b);
        assert_eq!(digest_of_txn_party_key(&k), Some(b));
        assert_eq!(digest_of_txn_party_key(&k[..31]), None);
        // Events of a transaction sort by id; the log sorts by id across transactions.
        assert!(event_key(early, EventId(5)) < event_key(early, EventId(256)));
        assert!(event_log_key(EventId(5), late) < event_log_key(EventId(6), early));
        assert_eq!(
            of_event_log_key(&event_log_key(EventId(7), late)),
            Some((EventId(7), late))
        );
        assert_eq!(of_event_log_key(&[0; 23]), None);
        assert_eq!(decode_schema_version(&[0, 1]), None);
    }

    #[test]
    fn tree_values_round_trip() {
        let p = TokenId([9; 16]);
        let at = UnixMillis(1_700_000_000_123);
        assert_eq!(
            of_tree_value(&tree_value(Some(p), at)),
            Some(Some((Some(p), at)))
        );
        assert_eq!(of_tree_value(&tree_value(None, at)), Some(Some((None, at))));
        assert_eq!(
            of_tree_value(EMPTY_VALUE),
            Some(None),
            "older builds' empty values"
        );
        assert_eq!(of_tree_value(&[0; 24]), None);
        let mut bad = tree_value(Some(p), at);
        bad[0] = 2;
        assert_eq!(of_tree_value(&bad), None);
    }

    #[test]
    fn party_keys_round_trip() {
        for party in ["agent:rogue", "spiffe://example.com/ns/a/sa/é", ""] {
            assert_eq!(party_of_key(party_key(party)).as_deref(), Some(party));
        }
        assert_eq!(party_of_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn consent_keys_order_and_round_trip() {
        let early = ConsentId::new(UnixMillis(1_000), [0xff; 8]);
        let late = ConsentId::new(UnixMillis(1_001), [0; 8]);
        // Ids order by creation time, and so do their keys.
        assert!(consent_key(early) < consent_key(late));
        assert_eq!(consent_id_of(&consent_key(late)), Some(late));
        assert_eq!(consent_id_of(&[0; 15]), None);
        assert_eq!(consent_id_of(&[0; 17]), None);
        assert_eq!(consent_action_key(&[7; 32]), &[7; 32]);
        // Open requests order by expiry, then id.
        let k = consent_open_key(UnixMillis(5), late);
        assert!(consent_open_key(UnixMillis(5), early) < k);
        assert!(k < consent_open_key(UnixMillis(6), early));
        assert!(k.as_slice() < 6u64.to_be_bytes().as_slice());
        assert_eq!(consent_id_of_open_key(&k), Some(late));
        assert_eq!(consent_id_of_open_key(&k[..23]), None);
        // A transaction's requests group under it, oldest first.
        let (a, b) = (txn(1), txn(2));
        let ka = consent_txn_key(a, late);
        assert!(consent_txn_key(a, early) < ka);
        assert!(ka < consent_txn_key(b, early));
        assert!(ka.starts_with(&txn_prefix(a)));
        assert_eq!(consent_id_of_txn_key(&ka), Some(late));
        assert_eq!(consent_id_of_txn_key(&ka[..31]), None);
        let open = consent_txn_value(Some(UnixMillis(1_700_000_000_000)));
        assert_eq!(
            of_consent_txn_value(&open),
            Some(Some(UnixMillis(1_700_000_000_000)))
        );
        assert_eq!(of_consent_txn_value(&consent_txn_value(None)), Some(None));
        assert_eq!(of_consent_txn_value(&[0; 4]), None);
    }

    #[test]
    fn column_families_are_distinct() {
        let mut names = ALL_CFS;
        names.sort_unstable();
        let n = names.len();
        let mut dedup = names.to_vec();
        dedup.dedup();
        assert_eq!(dedup.len(), n);
        assert!(!names.contains(&"default"));
        assert!(CONSENT_CFS.iter().all(|c| ALL_CFS.contains(c)));
    }
}
