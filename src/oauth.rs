//! The OAuth JSON forms of a token record: the RFC 7662 introspection answer and the
//! claims of a Txn-Token JWT (draft-ietf-oauth-transaction-tokens), with the chain of
//! actors as nested RFC 8693 `act` and the claim constraints as RFC 9396
//! `authorization_details`. The one place where a record becomes OAuth JSON, as
//! [`crate::convert`] is for protobuf.
//!
//! BASE VERSION (issue 11 skeleton): the registered claims only; `act`,
//! `authorization_details` and agent marking are filled in by the full version, which
//! keeps these signatures.

use serde_json::{Map, Value, json};
use writ_core::TokenRecord;

/// RFC 8693 token type of a transaction token.
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// The JOSE `typ` of a Txn-Token JWT.
pub const TXN_TOKEN_JWT_TYP: &str = "txntoken+jwt";
/// The HTTP header that carries a transaction token between hops (exactly one).
pub const TXN_TOKEN_HEADER: &str = "Txn-Token";
/// The gRPC metadata key that carries a transaction token between hops.
pub const TXN_TOKEN_METADATA: &str = "txn-token";

fn secs(ms: writ_core::UnixMillis) -> u64 {
    ms.0 / 1000
}

fn scope(record: &TokenRecord) -> String {
    record
        .grant
        .scopes
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The RFC 7662 answer for an active token (`active: true` included).
pub fn introspection(record: &TokenRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("active".into(), Value::Bool(true));
    m.insert("scope".into(), scope(record).into());
    m.insert("sub".into(), record.subject.clone().into());
    m.insert("aud".into(), record.audience.id.clone().into());
    m.insert("iat".into(), secs(record.issued_at).into());
    m.insert("exp".into(), secs(record.grant.expires_at).into());
    m.insert("txn".into(), record.txn.to_string().into());
    m.insert("client_id".into(), record.current_actor().id.clone().into());
    m
}

/// The claims of a Txn-Token JWT standing for `record`, requested by the workload
/// `req_wl`, issued by `issuer` at `iat` (Unix seconds) until `exp` (never later than
/// the record's expiry: the caller caps it), with the unique id `jti`.
pub fn txn_token_claims(
    record: &TokenRecord,
    req_wl: &str,
    issuer: &str,
    iat: u64,
    exp: u64,
    jti: &str,
) -> Map<String, Value> {
    let exp = exp.min(secs(record.grant.expires_at));
    let v = json!({
        "iss": issuer,
        "iat": iat,
        "exp": exp,
        "aud": record.trust_domain,
        "txn": record.txn.to_string(),
        "sub": record.subject,
        "scope": scope(record),
        "req_wl": req_wl,
        "tctx": record.tctx,
        "rctx": record.rctx,
        "jti": jti,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
