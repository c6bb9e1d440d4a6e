//! The stored forms of a [`TokenRecord`], a [`TokenState`], an audit [`Event`], a
//! [`PartyDisable`] and a [`ConsentRequest`]: one format-version byte followed by the
//! postcard encoding of the value.
//!
//! Postcard is compact and deterministic, but not self-describing: a field added to the
//! record changes the encoding. The version byte lets a later build recognise older
//! values (and refuse unknown ones) instead of misreading them.
//!
//! Records: version 4 (the consent mark of a token redeemed from a consent request) is
//! written; version 3 (how the current actor authenticated), version 2 (claims that apply
//! to some scopes, `require_action_check`, the idempotency digest) and version 1 are still
//! read, version 1 through its own types in [`v1`], so a store upgraded in place
//! keeps validating the tokens it holds. Audit events: version 2 (how the actor
//! authenticated) is written, version 1 still read. Party disablements: version 1.
//! Consent requests: version 1, at most `MAX_RECORD_BYTES` encoded (the server bounds
//! every part of a request; the store refuses one over the bound rather than keep it).
//!
//! Version 3 and 4 records and version 2 events only *append* an `Option` field, and postcard
//! encodes a struct as its fields in order and `None` as the single byte 0 (its stable
//! wire format): so an older body followed by one 0 byte is exactly the newer encoding of
//! the same value with that field `None` ("not recorded"), which is how they are read.

use crate::api::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use writ_core::limits::MAX_RECORD_BYTES;
use writ_core::{ConsentRequest, Event, PartyDisable, TokenRecord, TokenState};

/// Format version of record values written by this build.
const FORMAT_VERSION: u8 = 4;
/// Format version of state values written by this build.
const STATE_FORMAT_VERSION: u8 = 1;
/// Format version of audit events written by this build.
const EVENT_FORMAT_VERSION: u8 = 2;
/// Format version of party disablements written by this build.
const PARTY_FORMAT_VERSION: u8 = 1;
/// Format version of consent requests written by this build.
const CONSENT_FORMAT_VERSION: u8 = 1;

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
    let (version, body) = split_version(bytes, what)?;
    if version != expected {
        return Err(StoreError::Corrupt {
            what: format!("{what} has unknown format version {version}"),
        });
    }
    decode_body(body, what)
}

fn split_version<'a>(bytes: &'a [u8], what: &str) -> Result<(u8, &'a [u8]), StoreError> {
    bytes
        .split_first()
        .map(|(v, body)| (*v, body))
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("empty {what} value"),
        })
}

fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt { what };
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

/// Decodes a stored record of this build's version or of version 1. Unknown versions,
/// malformed bytes and trailing bytes are all [`StoreError::Corrupt`].
pub(crate) fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    const WHAT: &str = "token record";
    match split_version(bytes, WHAT)? {
        (1, body) => decode_body::<v1::TokenRecord>(body, WHAT).map(TokenRecord::from),
        (2, body) => decode_body(&with_none_appended(&with_none_appended(body)), WHAT),
        (3, body) => decode_body(&with_none_appended(body), WHAT),
        _ => decode_versioned(bytes, FORMAT_VERSION, WHAT),
    }
}

/// The record as version 1 stored it. Its constraints and values decode as today's (new
/// kinds were only appended); what it lacks takes the value that changes nothing.
mod v1 {
    use serde::Deserialize;
    use std::collections::{BTreeMap, BTreeSet};
    use writ_core::{Claim, Constraint, Grant, Party, SecretHash, TokenId, TxnId, UnixMillis};

    #[derive(Deserialize)]
    pub(super) struct TokenRecord {
        token_id: TokenId,
        secret_hash: SecretHash,
        txn: TxnId,
        parent: Option<TokenId>,
        depth: u32,
        subject: String,
        trust_domain: String,
        actors: Vec<Party>,
        audience: Party,
        grant: GrantV1,
        purpose: String,
        tctx: BTreeMap<String, String>,
        rctx: BTreeMap<String, String>,
        issued_at: UnixMillis,
    }

    #[derive(Deserialize)]
    struct GrantV1 {
        scopes: BTreeSet<String>,
        claims: BTreeMap<String, Constraint>,
        targets: BTreeSet<String>,
        expires_at: UnixMillis,
        max_uses: Option<u32>,
    }

    impl From<TokenRecord> for writ_core::TokenRecord {
        fn from(r: TokenRecord) -> Self {
            writ_core::TokenRecord {
                token_id: r.token_id,
                secret_hash: r.secret_hash,
                txn: r.txn,
                parent: r.parent,
                depth: r.depth,
                subject: r.subject,
                trust_domain: r.trust_domain,
                actors: r.actors,
                audience: r.audience,
                grant: Grant {
                    scopes: r.grant.scopes,
                    // Every claim applied to every scope.
                    claims: r
                        .grant
                        .claims
                        .into_iter()
                        .map(|(n, c)| (n, Claim::on_every_scope(c)))
                        .collect(),
                    targets: r.grant.targets,
                    expires_at: r.grant.expires_at,
                    max_uses: r.grant.max_uses,
                    require_action_check: false,
                },
                purpose: r.purpose,
                tctx: r.tctx,
                rctx: r.rctx,
                issued_at: r.issued_at,
                idempotency: None,
                actor_auth: None,
                consent: None,
            }
        }
    }
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

/// Decodes a stored audit event of this build's version or of version 1, with the same
/// refusals as [`decode`].
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    const WHAT: &str = "audit event";
    match split_version(bytes, WHAT)? {
        (1, body) => decode_body(&with_none_appended(body), WHAT),
        _ => decode_versioned(bytes, EVENT_FORMAT_VERSION, WHAT),
    }
}

/// Encodes a party's disablement for storage.
pub(crate) fn encode_party(disable: &PartyDisable) -> Result<Vec<u8>, StoreError> {
    encode_versioned(disable, PARTY_FORMAT_VERSION, "party disablement")
}

/// Decodes a stored disablement, with the same refusals as [`decode`].
pub(crate) fn decode_party(bytes: &[u8]) -> Result<PartyDisable, StoreError> {
    decode_versioned(bytes, PARTY_FORMAT_VERSION, "party disablement")
}

/// Encodes a consent request for storage; refuses ([`StoreError::Corrupt`]) one whose
/// encoding exceeds `MAX_RECORD_BYTES`.
pub(crate) fn encode_consent(request: &ConsentRequest) -> Result<Vec<u8>, StoreError> {
    let bytes = encode_versioned(request, CONSENT_FORMAT_VERSION, "consent request")?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::Corrupt {
            what: format!(
                "consent request of {} bytes exceeds the limit of {MAX_RECORD_BYTES}",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Decodes a stored consent request, with the same refusals as [`decode`].
pub(crate) fn decode_consent(bytes: &[u8]) -> Result<ConsentRequest, StoreError> {
    decode_versioned(bytes, CONSENT_FORMAT_VERSION, "consent request")
}

/// An older body as the newer encoding of the same value with its appended `Option`
/// field `None` (see the module docs).
fn with_none_appended(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.extend_from_slice(body);
    v.push(0);
    v
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
    fn party_disablements_round_trip_and_refuse_bad_bytes() {
        let d = PartyDisable::new(writ_core::UnixMillis(7), "op".into(), "leaked".into());
        let bytes = encode_party(&d).unwrap();
        assert_eq!(bytes[0], PARTY_FORMAT_VERSION);
        assert_eq!(decode_party(&bytes).unwrap(), d);
        for len in 0..bytes.len() {
            assert!(matches!(
                decode_party(&bytes[..len]),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(
            matches!(decode_party(&bad), Err(StoreError::Corrupt { what }) if what.contains("version"))
        );
        let padded = [bytes.as_slice(), &[0]].concat();
        assert!(decode_party(&padded).is_err());
    }

    /// A version-1 record, as that build's types encoded it: the same fields without the
    /// claims' scopes, `require_action_check` and `idempotency`.
    #[derive(serde::Serialize)]
    struct RecordV1<'a> {
        token_id: writ_core::TokenId,
        secret_hash: writ_core::SecretHash,
        txn: writ_core::TxnId,
        parent: Option<writ_core::TokenId>,
        depth: u32,
        subject: &'a str,
        trust_domain: &'a str,
        actors: &'a [writ_core::Party],
        audience: &'a writ_core::Party,
        grant: GrantV1<'a>,
        purpose: &'a str,
        tctx: &'a std::collections::BTreeMap<String, String>,
        rctx: &'a std::collections::BTreeMap<String, String>,
        issued_at: writ_core::UnixMillis,
    }

    #[derive(serde::Serialize)]
    struct GrantV1<'a> {
        scopes: &'a std::collections::BTreeSet<String>,
        claims: std::collections::BTreeMap<&'a String, &'a writ_core::Constraint>,
        targets: &'a std::collections::BTreeSet<String>,
        expires_at: writ_core::UnixMillis,
        max_uses: Option<u32>,
    }

    #[test]
    fn version_1_records_still_decode() {
        let mut r = record(txn(1), tid(2), Some(tid(3)));
        r.rctx.insert("ip".into(), "203.0.113.7".into());
        let v1 = RecordV1 {
            token_id: r.token_id,
            secret_hash: r.secret_hash,
            txn: r.txn,
            parent: r.parent,
            depth: r.depth,
            subject: &r.subject,
            trust_domain: &r.trust_domain,
            actors: &r.actors,
            audience: &r.audience,
            grant: GrantV1 {
                scopes: &r.grant.scopes,
                claims: r
                    .grant
                    .claims
                    .iter()
                    .map(|(n, c)| (n, &c.constraint))
                    .collect(),
                targets: &r.grant.targets,
                expires_at: r.grant.expires_at,
                max_uses: r.grant.max_uses,
            },
            purpose: &r.purpose,
            tctx: &r.tctx,
            rctx: &r.rctx,
            issued_at: r.issued_at,
        };
        let bytes = postcard::to_extend(&v1, vec![1]).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert!(r.grant.claims.values().all(|c| c.applies_to.is_none()));
        assert!(!r.grant.require_action_check && r.idempotency.is_none());
        assert_eq!(decoded, r);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A version-3 record is a version-4 one without its last field (`consent`), and a
    /// version-2 one lacks `actor_auth` too: read as "not recorded", and recorded values
    /// round-trip.
    #[test]
    fn version_2_and_3_records_and_version_1_events_still_decode() {
        let mut r = record(txn(1), tid(2), Some(tid(3)));
        r.actor_auth = None;
        let v4 = encode(&r).unwrap();
        assert_eq!(v4[0], 4);
        assert_eq!(&v4[v4.len() - 2..], &[0, 0]);
        let mut v3 = v4[..v4.len() - 1].to_vec();
        v3[0] = 3;
        assert_eq!(decode(&v3).unwrap(), r);
        let mut v2 = v4[..v4.len() - 2].to_vec();
        v2[0] = 2;
        assert_eq!(decode(&v2).unwrap(), r);
        assert!(decode(&v2[..v2.len() - 1]).is_err());
        r.actor_auth = Some(writ_core::AuthMethod::ClientAssertion);
        assert_eq!(decode(&encode(&r).unwrap()).unwrap(), r);
        r.consent = Some(writ_core::ConsentMark {
            request: writ_core::ConsentId([5; 16]),
            scope: "payments.charge".into(),
        });
        assert_eq!(decode(&encode(&r).unwrap()).unwrap(), r);

        let mut e = writ_core::Event::minted(writ_core::EventId(7), &record(txn(1), tid(2), None));
        e.auth = None;
        let v2 = encode_event(&e).unwrap();
        assert_eq!((v2[0], v2.last()), (2, Some(&0)));
        let mut v1 = v2[..v2.len() - 1].to_vec();
        v1[0] = 1;
        assert_eq!(decode_event(&v1).unwrap(), e);
        e.auth = Some(writ_core::AuthMethod::Asserted);
        assert_eq!(decode_event(&encode_event(&e).unwrap()).unwrap(), e);
        let mut bad = v1.clone();
        bad[0] = 3;
        assert!(decode_event(&bad).is_err());
    }

    #[test]
    fn consent_requests_round_trip_and_refuse_bad_bytes() {
        let mut r = crate::conformance::consent_request(txn(1), tid(2), 1, 1_000);
        let bytes = encode_consent(&r).unwrap();
        assert_eq!(bytes[0], CONSENT_FORMAT_VERSION);
        assert_eq!(decode_consent(&bytes).unwrap(), r);
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    decode_consent(&bytes[..len]),
                    Err(StoreError::Corrupt { .. })
                ),
                "accepted a value truncated to {len} bytes"
            );
        }
        let padded = [bytes.as_slice(), &[0]].concat();
        assert!(matches!(
            decode_consent(&padded),
            Err(StoreError::Corrupt { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(
            matches!(decode_consent(&bad), Err(StoreError::Corrupt { what }) if what.contains("version"))
        );
        // Every state round-trips.
        let decision = writ_core::Decision {
            approved: true,
            at: writ_core::UnixMillis(1_500),
            by: "app:wallet".into(),
            auth: Some(writ_core::AuthMethod::Mtls),
            channel: writ_core::Channel::BackChannel,
            subject: r.subject.clone(),
        };
        for state in [
            writ_core::ConsentState::Decided(decision.clone()),
            writ_core::ConsentState::Redeemed {
                decision,
                at: writ_core::UnixMillis(1_600),
                token: tid(3),
            },
            writ_core::ConsentState::Expired {
                at: writ_core::UnixMillis(2_000),
            },
        ] {
            r.state = state;
            assert_eq!(decode_consent(&encode_consent(&r).unwrap()).unwrap(), r);
        }
        // One the server could never build is not stored.
        r.reason = "x".repeat(writ_core::limits::MAX_RECORD_BYTES);
        assert!(matches!(
            encode_consent(&r),
            Err(StoreError::Corrupt { what }) if what.contains("exceeds")
        ));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bytes = encode(&record(txn(1), tid(2), None)).unwrap();
        for v in [0, 5, 0xff] {
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
