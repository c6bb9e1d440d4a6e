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
//! | `txn_tokens`  | txn id (16) ‖ token id (16)        | empty                    |
//! | `children`    | parent token id (16) ‖ child token id (16) | empty            |
//! | `expiry`      | expires_at ms, u64 BE (8) ‖ token id (16) | empty             |
//! | `meta`        | `schema_version`                   | u32 BE                   |
//!
//! Every key of a token is derivable from its record, so purging an expired token
//! (found through `expiry`) deletes its `tokens`, `state`, `txn_tokens` and `expiry`
//! rows, its `children` entry under its parent and every entry under itself.

use writ_core::{TokenId, TxnId, UnixMillis};

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
/// Store-wide metadata.
pub(crate) const CF_META: &str = "meta";

/// Version of this layout. Bump it on any incompatible change to a key or value.
pub(crate) const SCHEMA_VERSION: u32 = 1;
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
        assert_eq!(decode_schema_version(&[0, 1]), None);
    }

    #[test]
    fn column_families_are_distinct() {
        let mut names = [
            CF_TOKENS,
            CF_STATE,
            CF_TXN_TOKENS,
            CF_CHILDREN,
            CF_EXPIRY,
            CF_META,
        ];
        names.sort_unstable();
        let n = names.len();
        let mut dedup = names.to_vec();
        dedup.dedup();
        assert_eq!(dedup.len(), n);
        assert!(!names.contains(&"default"));
    }
}
