//! The stored forms of a [`TokenRecord`] and of a [`TokenState`]: one format-version
//! byte followed by the postcard encoding of the value.
//!
//! Postcard is compact and deterministic, but not self-describing: a field added to the
//! record changes the encoding. The version byte lets a later build recognise older
//! values (and refuse unknown ones) instead of misreading them.

use crate::api::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use writ_core::{Event, TokenRecord, TokenState};

/// Format version of record values written by this build.
const FORMAT_VERSION: u8 = 1;
/// Format version of state values written by this build.
const STATE_FORMAT_VERSION: u8 = 1;
/// Format version of audit events written by this build.
const EVENT_FORMAT_VERSION: u8 = 1;

fn encode_versioned<T: Serialize>(
    value: &T,
    version: u8,
    what: &str,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![version]).map_err(|e| StoreError::Corrupt {
        what: format!("{what} could not be encoded: {e}"),
    })
}

fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    expected: u8,
    what: &str,
) -> Result<T, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt { what };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt(format!("empty {what} value")))?;
    if version != expected {
        return Err(corrupt(format!(
            "{what} has unknown format version {version}"
        )));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| corrupt(format!("{what} failed to decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{what} has {} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Encodes a record for storage.
pub(crate) fn encode(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    encode_versioned(record, FORMAT_VERSION, "token record")
}

/// Decodes a stored record. Unknown versions, malformed bytes and trailing bytes are
/// all [`StoreError::Corrupt`].
pub(crate) fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    decode_versioned(bytes, FORMAT_VERSION, "token record")
}

/// Encodes a token's mutable state for storage.
pub(crate) fn encode_state(state: &TokenState) -> Result<Vec<u8>, StoreError> {
    encode_versioned(state, STATE_FORMAT_VERSION, "token state")
}

/// Decodes a stored state, with the same refusals as [`decode`].
pub(crate) fn decode_state(bytes: &[u8]) -> Result<TokenState, StoreError> {
    decode_versioned(bytes, STATE_FORMAT_VERSION, "token state")
}

/// Encodes an audit event for storage.
pub(crate) fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    encode_versioned(event, EVENT_FORMAT_VERSION, "audit event")
}

/// Decodes a stored audit event, with the same refusals as [`decode`].
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    decode_versioned(bytes, EVENT_FORMAT_VERSION, "audit event")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{record, tid, txn};

    #[test]
    fn round_trip() {
        let r = record(txn(1), tid(2), Some(tid(3)));
        let bytes = encode(&r).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), r);
        let root = record(txn(1), tid(3), None);
        assert_eq!(decode(&encode(&root).unwrap()).unwrap(), root);
    }

    #[test]
    fn state_round_trips_and_refuses_bad_bytes() {
        let mut s = TokenState {
            revoked: None,
            uses: 3,
            children: 7,
        };
        let bytes = encode_state(&s).unwrap();
        assert_eq!(bytes[0], STATE_FORMAT_VERSION);
        assert_eq!(decode_state(&bytes).unwrap(), s);
        s.revoked = Some(writ_core::Revocation {
            at: writ_core::UnixMillis(5),
            by: "op".to_owned(),
            reason: "leak".to_owned(),
            cause: tid(9),
        });
        let bytes = encode_state(&s).unwrap();
        assert_eq!(decode_state(&bytes).unwrap(), s);
        for len in 0..bytes.len() {
            assert!(matches!(
                decode_state(&bytes[..len]),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let padded = [bytes.as_slice(), &[0]].concat();
        assert!(matches!(
            decode_state(&padded),
            Err(StoreError::Corrupt { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = 0xff;
        assert!(
            matches!(decode_state(&bad), Err(StoreError::Corrupt { what }) if what.contains("version"))
        );
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bytes = encode(&record(txn(1), tid(2), None)).unwrap();
        for v in [0, 2, 0xff] {
            bytes[0] = v;
            assert!(
                matches!(decode(&bytes), Err(StoreError::Corrupt { what }) if what.contains("version"))
            );
        }
    }

    #[test]
    fn truncated_empty_and_padded_bytes_are_rejected() {
        let bytes = encode(&record(txn(1), tid(2), None)).unwrap();
        for len in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(StoreError::Corrupt { .. })),
                "accepted a value truncated to {len} bytes"
            );
        }
        let padded = [bytes.as_slice(), &[0]].concat();
        assert!(matches!(decode(&padded), Err(StoreError::Corrupt { .. })));
    }
}
