//! Identifiers and time. Public ids are printable, prefixed (so a reader can tell a
//! transaction from a token at a glance) and never secret.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Milliseconds since the Unix epoch. The core never reads the clock; callers pass `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// `self + secs` seconds, saturating.
    pub fn plus_secs(self, secs: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(secs.saturating_mul(1000)))
    }
}

/// Error for an id string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind}: expected `{prefix}` followed by 32 lowercase hex digits")]
pub struct IdParseError {
    kind: &'static str,
    prefix: &'static str,
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The printable prefix of this id kind.
            pub const PREFIX: &'static str = $prefix;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = IdParseError { kind: $kind, prefix: $prefix };
                let hexpart = s.strip_prefix($prefix).ok_or(err.clone())?;
                if hexpart.len() != 32 || hexpart.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(err);
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(hexpart, &mut out).map_err(|_| err)?;
                Ok($name(out))
            }
        }
    };
}

hex_id!(
    /// A transaction id: shared by every token of one call chain and immutable along it.
    /// The first six bytes are the mint time in big-endian milliseconds, so ids sort by
    /// creation time (like UUIDv7); the other ten are random.
    TxnId,
    "txn_",
    "transaction id"
);

hex_id!(
    /// The public, non-secret id of one token: derived from the hash of its secret, used
    /// in audit records, chain views and logs. Knowing it grants nothing.
    TokenId,
    "tid_",
    "token id"
);

impl TxnId {
    /// Builds a time-ordered transaction id from the mint time and ten random bytes.
    pub fn new(now: UnixMillis, random: [u8; 10]) -> TxnId {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&now.0.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        TxnId(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let t = TxnId::new(UnixMillis(1_700_000_000_000), [7; 10]);
        assert_eq!(t.to_string().parse::<TxnId>(), Ok(t));
        let k = TokenId([0xab; 16]);
        assert_eq!(k.to_string().parse::<TokenId>(), Ok(k));
        assert!("tid_abc".parse::<TokenId>().is_err());
        assert!(k.to_string().parse::<TxnId>().is_err());
        assert!(k.to_string().to_uppercase().parse::<TokenId>().is_err());
    }

    #[test]
    fn txn_ids_sort_by_time() {
        let a = TxnId::new(UnixMillis(1_000), [0xff; 10]);
        let b = TxnId::new(UnixMillis(1_001), [0; 10]);
        assert!(a < b);
    }
}
