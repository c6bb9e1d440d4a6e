//! The stored form of a [`TokenRecord`]: one format-version byte followed by the
//! postcard encoding of the record.
//!
//! Postcard is compact and deterministic, but not self-describing: a field added to the
//! record changes the encoding. The version byte lets a later build recognise older
//! values (and refuse unknown ones) instead of misreading them.

use crate::api::StoreError;
use writ_core::TokenRecord;

/// Format version of values written by this build.
const FORMAT_VERSION: u8 = 1;

/// Encodes a record for storage.
pub(crate) fn encode(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![FORMAT_VERSION]).map_err(|e| StoreError::Corrupt {
        what: format!("token record could not be encoded: {e}"),
    })
}

/// Decodes a stored record. Unknown versions, malformed bytes and trailing bytes are
/// all [`StoreError::Corrupt`].
pub(crate) fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt { what };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty token record value".to_owned()))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "token record has unknown format version {version}"
        )));
    }
    let (record, rest) = postcard::take_from_bytes::<TokenRecord>(body)
        .map_err(|e| corrupt(format!("token record failed to decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "token record has {} trailing bytes",
            rest.len()
        )));
    }
    Ok(record)
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
