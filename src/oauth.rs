//! The OAuth JSON forms of a token record: the RFC 7662 introspection answer and the
//! claims of a Txn-Token JWT (draft-ietf-oauth-transaction-tokens), with the chain of
//! actors as nested RFC 8693 `act` and the claim constraints as RFC 9396
//! `authorization_details`. The one place where a record becomes OAuth JSON, as
//! [`crate::convert`] is for protobuf. Pure functions: no I/O, no clock.
//!
//! # `act`: who acted
//!
//! The record's actors, nested as RFC 8693 says: the outermost object is the current
//! actor (the party that derived the token and presents it), each `act` inside it the
//! actor before, down to the innermost, the first (the minter). Each level is
//! `{"sub": <party id>, "kind": "agent"|"workload"|"user", "client_type":
//! "confidential"|"public"}`: the party's identity as Writ authenticated it and its kind
//! and client type as the registry (or the narrowing rules) recorded them, nothing the
//! party said about itself. Only the outermost level decides access (RFC 8693 §4.1).
//!
//! # `authorization_details`: what the token permits beyond its scopes
//!
//! One object per claim, in claim-name order, each of the type [`CLAIM_DETAIL_TYPE`]
//! (`"writ_claim"`):
//!
//! ```json
//! {"type": "writ_claim", "name": "amount", "actions": ["payments:charge"],
//!  "constraint": {"kind": "max", "value": 500}}
//! ```
//!
//! - `name`: the action attribute the claim constrains.
//! - `actions`: the scopes it constrains (sorted); absent: every scope of the token.
//! - `constraint`: one of the kinds below. Integers and times are JSON integers in the
//!   signed 64-bit range (a JavaScript verifier must read them without rounding); times
//!   are Unix seconds; string sets are sorted.
//!
//! | `kind` | members | an attribute value `v` passes when |
//! |---|---|---|
//! | `max` | `value` (integer) | `v ≤ value` |
//! | `min` | `value` (integer) | `v ≥ value` |
//! | `range` | `min`, `max` (integers) | `min ≤ v ≤ max` |
//! | `window` | `not_before`, `not_after` (Unix seconds) | `v` is a time and `not_before ≤ v ≤ not_after` |
//! | `exact` | `type` (`"int"`, `"string"` or `"time"`), `value` | `v` has that type and equals `value` |
//! | `allow` | `values` (strings) | `v ∈ values` |
//! | `deny` | `values` (strings) | `v ∉ values` |
//! | `allow-ci` | `values` (case-folded strings) | `fold(v) ∈ values` |
//! | `deny-ci` | `values` (case-folded strings) | `fold(v) ∉ values` |
//! | `prefix` | `value` (a path) | `v` is a canonical path equal to `value` or below it (a `value` ending in `/`: strictly below) |
//!
//! An action passes a claim when it names the attribute and every value it names passes;
//! an action that does not name it is denied. **A verifier that meets a `type` or `kind`
//! it does not know, or a member it does not expect, must deny the action**, never skip
//! the claim: a constraint that is skipped widens the token. [`parse_authorization_details`]
//! reads this form back into core claims exactly (the form is lossless) and refuses
//! anything else.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use writ_core::{ActorKind, Claim, Claims, ClientType, Constraint, Party, TokenRecord};

/// RFC 8693 token type of a transaction token.
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// The JOSE `typ` of a Txn-Token JWT.
pub const TXN_TOKEN_JWT_TYP: &str = "txntoken+jwt";
/// The HTTP header that carries a transaction token between hops (exactly one).
pub const TXN_TOKEN_HEADER: &str = "Txn-Token";
/// The gRPC metadata key that carries a transaction token between hops.
pub const TXN_TOKEN_METADATA: &str = "txn-token";
/// The RFC 9396 `type` of the `authorization_details` entries that carry Writ's claims.
pub const CLAIM_DETAIL_TYPE: &str = "writ_claim";
/// The RFC 7662 `token_type` of an introspected Writ token: not an access token (no
/// `Authorization` scheme), as the token exchange answers `token_type: N_A`.
pub const INTROSPECTED_TOKEN_TYPE: &str = "N_A";
/// The member of an introspection answer that holds Writ's own facts about the token.
pub const WRIT_MEMBER: &str = "writ";

/// An `authorization_details` value that is not Writ's claim form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorization_details{path}: {message}")]
pub struct DetailsError {
    /// Where, as a JSON path below `authorization_details` (e.g. `[2].constraint.kind`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn secs(ms: writ_core::UnixMillis) -> u64 {
    ms.0 / 1000
}

/// The token's scopes, space-separated, leaving out those in `omit`.
fn scope(record: &TokenRecord, omit: &[String]) -> String {
    record
        .grant
        .scopes
        .iter()
        .filter(|s| !omit.contains(s))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn kind_name(k: ActorKind) -> &'static str {
    k.as_str()
}

fn client_name(c: ClientType) -> &'static str {
    c.as_str()
}

/// One level of `act`, with the level before it nested inside.
fn act_level(p: &Party, inner: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("sub".into(), p.id.clone().into());
    m.insert("kind".into(), kind_name(p.kind).into());
    m.insert("client_type".into(), client_name(p.client_type).into());
    if let Some(inner) = inner {
        m.insert("act".into(), inner);
    }
    Value::Object(m)
}

/// The chain of actors as nested RFC 8693 `act`: outermost the current actor
/// (`actors.last()`), innermost the first (the minter). `Null` for no actors (a record
/// always has at least its minter).
pub fn act(actors: &[Party]) -> Value {
    actors
        .iter()
        .fold(None, |inner, p| Some(act_level(p, inner)))
        .unwrap_or(Value::Null)
}

fn strings(set: &BTreeSet<String>) -> Value {
    Value::Array(set.iter().cloned().map(Value::String).collect())
}

/// The JSON form of one constraint (see the module documentation).
pub fn constraint_json(c: &Constraint) -> Value {
    use writ_core::Value as V;
    let kind = c.kind();
    match c {
        Constraint::Max(v) | Constraint::Min(v) => json!({"kind": kind, "value": v}),
        Constraint::Range { min, max } => json!({"kind": kind, "min": min, "max": max}),
        Constraint::Window {
            not_before,
            not_after,
        } => json!({"kind": kind, "not_before": not_before, "not_after": not_after}),
        Constraint::Exact(V::Int(i)) => json!({"kind": kind, "type": "int", "value": i}),
        Constraint::Exact(V::Str(s)) => json!({"kind": kind, "type": "string", "value": s}),
        Constraint::Exact(V::Time(t)) => json!({"kind": kind, "type": "time", "value": t}),
        Constraint::AllowSet(s)
        | Constraint::DenySet(s)
        | Constraint::AllowFolded(s)
        | Constraint::DenyFolded(s) => json!({"kind": kind, "values": strings(s)}),
        Constraint::Prefix(p) => json!({"kind": kind, "value": p}),
    }
}

/// The claims as RFC 9396 `authorization_details` (see the module documentation): one
/// entry per claim, in name order; an empty array for none.
pub fn authorization_details(claims: &Claims) -> Value {
    Value::Array(
        claims
            .iter()
            .map(|(name, claim)| {
                let mut m = Map::new();
                m.insert("type".into(), CLAIM_DETAIL_TYPE.into());
                m.insert("name".into(), name.clone().into());
                if let Some(scopes) = &claim.applies_to {
                    m.insert("actions".into(), strings(scopes));
                }
                m.insert("constraint".into(), constraint_json(&claim.constraint));
                Value::Object(m)
            })
            .collect(),
    )
}

/// Reads `authorization_details` in Writ's form back into claims, exactly. Anything else
/// is refused, naming where: another `type`, an unknown `kind` or member, a wrong type, a
/// claim named twice, an empty `actions`. A verifier that gets an error must deny.
pub fn parse_authorization_details(details: &Value) -> Result<Claims, DetailsError> {
    let err = |path: String, message: &str| DetailsError {
        path,
        message: message.to_owned(),
    };
    let Value::Array(entries) = details else {
        return Err(err(String::new(), "must be an array"));
    };
    let mut claims = Claims::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |member: &str| format!("[{i}]{member}");
        let Value::Object(m) = entry else {
            return Err(err(at(""), "must be an object"));
        };
        for key in m.keys() {
            if !["type", "name", "actions", "constraint"].contains(&key.as_str()) {
                return Err(err(at(&format!(".{key}")), "unknown member: deny"));
            }
        }
        if m.get("type").and_then(Value::as_str) != Some(CLAIM_DETAIL_TYPE) {
            return Err(err(
                at(".type"),
                "unknown type (expected \"writ_claim\"): deny",
            ));
        }
        let Some(name) = m.get("name").and_then(Value::as_str) else {
            return Err(err(at(".name"), "must be a string"));
        };
        let applies_to = match m.get("actions") {
            None => None,
            Some(a) => {
                let set = string_set(a).ok_or_else(|| {
                    err(
                        at(".actions"),
                        "must be a non-empty array of distinct strings",
                    )
                })?;
                if set.is_empty() {
                    return Err(err(at(".actions"), "must not be empty"));
                }
                Some(set)
            }
        };
        let constraint = m
            .get("constraint")
            .ok_or_else(|| err(at(".constraint"), "missing"))
            .and_then(|c| parse_constraint(c).map_err(|(p, msg)| err(at(&p), msg)))?;
        if claims
            .insert(
                name.to_owned(),
                Claim {
                    constraint,
                    applies_to,
                },
            )
            .is_some()
        {
            return Err(err(at(".name"), "a claim on this attribute appears twice"));
        }
    }
    Ok(claims)
}

/// A JSON array of distinct strings.
fn string_set(v: &Value) -> Option<BTreeSet<String>> {
    let items = v.as_array()?;
    let set: BTreeSet<String> = items
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    (set.len() == items.len()).then_some(set)
}

/// One constraint object, or (its path below `constraint`, what is wrong).
fn parse_constraint(c: &Value) -> Result<Constraint, (String, &'static str)> {
    use writ_core::Value as V;
    let Value::Object(m) = c else {
        return Err((".constraint".into(), "must be an object"));
    };
    let Some(kind) = m.get("kind").and_then(Value::as_str) else {
        return Err((".constraint.kind".into(), "must be a string"));
    };
    let members: &[&str] = match kind {
        "max" | "min" | "prefix" => &["value"],
        "range" => &["min", "max"],
        "window" => &["not_before", "not_after"],
        "exact" => &["type", "value"],
        "allow" | "deny" | "allow-ci" | "deny-ci" => &["values"],
        _ => return Err((".constraint.kind".into(), "unknown constraint kind: deny")),
    };
    if let Some(extra) = m
        .keys()
        .find(|k| k.as_str() != "kind" && !members.contains(&k.as_str()))
    {
        // The path names the member; the message stays static.
        return Err((format!(".constraint.{extra}"), "unknown member: deny"));
    }
    let int = |key: &str| {
        m.get(key).and_then(Value::as_i64).ok_or_else(|| {
            (
                format!(".constraint.{key}"),
                "must be a signed 64-bit integer",
            )
        })
    };
    let text = |key: &str| {
        m.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| (format!(".constraint.{key}"), "must be a string"))
    };
    let set = || {
        m.get("values").and_then(string_set).ok_or_else(|| {
            (
                ".constraint.values".to_owned(),
                "must be an array of distinct strings",
            )
        })
    };
    Ok(match kind {
        "max" => Constraint::Max(int("value")?),
        "min" => Constraint::Min(int("value")?),
        "range" => Constraint::Range {
            min: int("min")?,
            max: int("max")?,
        },
        "window" => Constraint::Window {
            not_before: int("not_before")?,
            not_after: int("not_after")?,
        },
        "prefix" => Constraint::Prefix(text("value")?),
        "allow" => Constraint::AllowSet(set()?),
        "deny" => Constraint::DenySet(set()?),
        "allow-ci" => Constraint::AllowFolded(set()?),
        "deny-ci" => Constraint::DenyFolded(set()?),
        // "exact": the only kind left.
        _ => Constraint::Exact(match text("type")?.as_str() {
            "int" => V::Int(int("value")?),
            "time" => V::Time(int("value")?),
            "string" => V::Str(text("value")?),
            _ => {
                return Err((
                    ".constraint.type".into(),
                    "must be \"int\", \"string\" or \"time\"",
                ));
            }
        }),
    })
}

fn context(m: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Is the current actor (the party presenting the token) an AI agent?
pub fn agent_traffic(record: &TokenRecord) -> bool {
    record.current_actor().kind == ActorKind::Agent
}

/// The RFC 7662 answer for an active token (`active: true` included). Never the secret.
///
/// Registered members: `active`, `scope`, `client_id` (the current actor), `token_type`
/// ([`INTROSPECTED_TOKEN_TYPE`]), `sub` (the principal), `aud` (the audience party: the
/// one caller the token may be presented to), `iat`, `exp`. `iss` is the caller's to add
/// (the record does not know it). Then `txn`, `tctx` and `rctx` as a Txn-Token carries
/// them, `act` (nested, outermost the current actor), `agent_traffic` (the current actor
/// is an AI agent), `authorization_details` (the claims, possibly `[]`), and under
/// [`WRIT_MEMBER`] Writ's own facts: `token_id`, `parent_token_id` (absent at the root),
/// `depth` (0 at the root), `purpose`, `targets` (the parties the chain may still reach),
/// `max_uses` (the budget the token was issued with; absent: unlimited),
/// `require_action_check` (plain introspection must not stand in for an action check),
/// `audience_kind` and `audience_client_type`, and `actor_auth` (how the current actor
/// authenticated; absent in old records), `consent_request_id` (redeemed from that
/// consent request). `latent_scope` (space-separated, absent when none): the scopes among
/// `scope` that the policy marks high-privilege and the token may not exercise without the
/// user's consent (`latent`, which the server computes from its registry).
pub fn introspection(record: &TokenRecord, latent: &[String]) -> Map<String, Value> {
    let mut writ = Map::new();
    writ.insert("token_id".into(), record.token_id.to_string().into());
    if let Some(parent) = record.parent {
        writ.insert("parent_token_id".into(), parent.to_string().into());
    }
    writ.insert("depth".into(), record.depth.into());
    writ.insert("purpose".into(), record.purpose.clone().into());
    writ.insert("targets".into(), strings(&record.grant.targets));
    if let Some(n) = record.grant.max_uses {
        writ.insert("max_uses".into(), n.into());
    }
    writ.insert(
        "require_action_check".into(),
        record.grant.require_action_check.into(),
    );
    writ.insert(
        "audience_kind".into(),
        kind_name(record.audience.kind).into(),
    );
    writ.insert(
        "audience_client_type".into(),
        client_name(record.audience.client_type).into(),
    );
    if let Some(auth) = record.actor_auth {
        writ.insert("actor_auth".into(), auth.as_str().into());
    }
    if let Some(mark) = &record.consent {
        writ.insert("consent_request_id".into(), mark.request.to_string().into());
    }

    let mut m = Map::new();
    m.insert("active".into(), Value::Bool(true));
    // What the token holds (RFC 7662), latent scopes included.
    m.insert("scope".into(), scope(record, &[]).into());
    if !latent.is_empty() {
        m.insert("latent_scope".into(), latent.join(" ").into());
    }
    m.insert("client_id".into(), record.current_actor().id.clone().into());
    m.insert("token_type".into(), INTROSPECTED_TOKEN_TYPE.into());
    m.insert("sub".into(), record.subject.clone().into());
    m.insert("aud".into(), record.audience.id.clone().into());
    m.insert("iat".into(), secs(record.issued_at).into());
    m.insert("exp".into(), secs(record.grant.expires_at).into());
    m.insert("txn".into(), record.txn.to_string().into());
    m.insert("tctx".into(), context(&record.tctx));
    m.insert("rctx".into(), context(&record.rctx));
    m.insert("act".into(), act(&record.actors));
    m.insert("agent_traffic".into(), agent_traffic(record).into());
    m.insert(
        "authorization_details".into(),
        authorization_details(&record.grant.claims),
    );
    m.insert(WRIT_MEMBER.into(), Value::Object(writ));
    m
}

/// The claims of a Txn-Token JWT standing for `record`, requested by the workload
/// `req_wl`, issued by `issuer` at `iat` (Unix seconds) until `exp` (never later than
/// the record's expiry: capped here too), with the unique id `jti`.
///
/// The draft's claims: `iss`, `iat`, `exp`, `aud` (the trust domain, not a service),
/// `txn`, `sub`, `scope`, `req_wl` (one string), `tctx` and `rctx` (JSON objects), `jti`;
/// plus `act` (nested, outermost the current actor) and `authorization_details` (the
/// claims, possibly `[]`; see the module documentation). `scope` leaves out the `latent`
/// scopes: a JWT is checked offline, where no consent can be asked for.
pub fn txn_token_claims(
    record: &TokenRecord,
    latent: &[String],
    req_wl: &str,
    issuer: &str,
    iat: u64,
    exp: u64,
    jti: &str,
) -> Map<String, Value> {
    let exp = exp.min(secs(record.grant.expires_at));
    let mut m = Map::new();
    m.insert("iss".into(), issuer.into());
    m.insert("iat".into(), iat.into());
    m.insert("exp".into(), exp.into());
    m.insert("aud".into(), record.trust_domain.clone().into());
    m.insert("txn".into(), record.txn.to_string().into());
    m.insert("sub".into(), record.subject.clone().into());
    m.insert("scope".into(), scope(record, latent).into());
    m.insert("req_wl".into(), req_wl.into());
    m.insert("tctx".into(), context(&record.tctx));
    m.insert("rctx".into(), context(&record.rctx));
    m.insert("jti".into(), jti.into());
    m.insert("act".into(), act(&record.actors));
    m.insert(
        "authorization_details".into(),
        authorization_details(&record.grant.claims),
    );
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;
    use writ_core::{AuthMethod, Grant, SecretHash, TokenId, TxnId, UnixMillis, Value as V};

    fn party(id: &str, kind: ActorKind, client_type: ClientType) -> Party {
        Party {
            id: id.into(),
            kind,
            client_type,
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Every constraint kind, some limited to scopes.
    fn every_kind() -> Claims {
        let on = |c: Constraint, scopes: Option<&[&str]>| Claim {
            constraint: c,
            applies_to: scopes.map(set),
        };
        [
            ("a_max", on(Constraint::Max(500), Some(&["pay"]))),
            ("b_min", on(Constraint::Min(-3), None)),
            ("c_exact_int", on(Constraint::Exact(V::Int(7)), None)),
            (
                "d_exact_str",
                on(Constraint::Exact(V::Str("EUR".into())), None),
            ),
            (
                "e_exact_time",
                on(Constraint::Exact(V::Time(1_796_000_000)), None),
            ),
            (
                "f_range",
                on(Constraint::Range { min: 1, max: 9 }, Some(&["pay", "read"])),
            ),
            (
                "g_window",
                on(
                    Constraint::Window {
                        not_before: 1_796_000_000,
                        not_after: 1_797_000_000,
                    },
                    None,
                ),
            ),
            (
                "h_allow",
                on(Constraint::AllowSet(set(&["tap", "ba"])), None),
            ),
            ("i_deny", on(Constraint::DenySet(set(&["x"])), None)),
            (
                "j_allow_ci",
                on(Constraint::allow_folded(["Paris".to_string()]), None),
            ),
            (
                "k_deny_ci",
                on(Constraint::deny_folded(["Gambling".to_string()]), None),
            ),
            ("l_prefix", on(Constraint::Prefix("/trips/".into()), None)),
            ("m_max_i64", on(Constraint::Max(i64::MAX), None)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect()
    }

    /// A depth-2 record (three actors: the minter, a planner agent, a booking agent)
    /// presented to a payments API.
    fn record() -> TokenRecord {
        TokenRecord {
            token_id: TokenId([0x11; 16]),
            secret_hash: SecretHash([0x22; 32]),
            txn: TxnId([0x33; 16]),
            parent: Some(TokenId([0x44; 16])),
            depth: 2,
            subject: "alice".into(),
            trust_domain: "bank.example".into(),
            actors: vec![
                party("gateway", ActorKind::Workload, ClientType::Confidential),
                party(
                    "spiffe://bank.example/agent/planner",
                    ActorKind::Agent,
                    ClientType::Confidential,
                ),
                party(
                    "spiffe://bank.example/agent/booking",
                    ActorKind::Agent,
                    ClientType::Public,
                ),
            ],
            audience: party(
                "spiffe://bank.example/payments",
                ActorKind::Workload,
                ClientType::Confidential,
            ),
            grant: Grant {
                scopes: set(&["read", "pay"]),
                claims: [(
                    "amount".to_string(),
                    Claim {
                        constraint: Constraint::Max(500),
                        applies_to: Some(set(&["pay"])),
                    },
                )]
                .into(),
                targets: set(&["spiffe://bank.example/ledger"]),
                expires_at: UnixMillis(1_800_000_900_999),
                max_uses: Some(3),
                require_action_check: false,
            },
            purpose: "book a trip".into(),
            tctx: BTreeMap::from([("trip".to_string(), "t-1".to_string())]),
            rctx: BTreeMap::from([("req_ip".to_string(), "198.51.100.7".to_string())]),
            issued_at: UnixMillis(1_800_000_000_500),
            idempotency: None,
            actor_auth: Some(AuthMethod::Mtls),
            consent: None,
        }
    }

    const ACT_DEPTH_3: &str = r#"{"sub":"spiffe://bank.example/agent/booking","kind":"agent","client_type":"public","act":{"sub":"spiffe://bank.example/agent/planner","kind":"agent","client_type":"confidential","act":{"sub":"gateway","kind":"workload","client_type":"confidential"}}}"#;

    #[test]
    fn act_nests_the_current_actor_outermost_and_the_minter_innermost() {
        let r = record();
        let expected: Value = serde_json::from_str(ACT_DEPTH_3).unwrap();
        assert_eq!(act(&r.actors), expected);
        // A root: one level, no nested act.
        assert_eq!(
            act(&r.actors[..1]),
            json!({"sub": "gateway", "kind": "workload", "client_type": "confidential"})
        );
        assert_eq!(act(&[]), Value::Null);
    }

    #[test]
    fn introspection_golden() {
        let got = Value::Object(introspection(&record(), &[]));
        let expected = json!({
            "active": true,
            "scope": "pay read",
            "client_id": "spiffe://bank.example/agent/booking",
            "token_type": "N_A",
            "sub": "alice",
            "aud": "spiffe://bank.example/payments",
            "iat": 1_800_000_000u64,
            "exp": 1_800_000_900u64,
            "txn": "txn_33333333333333333333333333333333",
            "tctx": {"trip": "t-1"},
            "rctx": {"req_ip": "198.51.100.7"},
            "act": serde_json::from_str::<Value>(ACT_DEPTH_3).unwrap(),
            "agent_traffic": true,
            "authorization_details": [{
                "type": "writ_claim", "name": "amount", "actions": ["pay"],
                "constraint": {"kind": "max", "value": 500}
            }],
            "writ": {
                "token_id": "tid_11111111111111111111111111111111",
                "parent_token_id": "tid_44444444444444444444444444444444",
                "depth": 2,
                "purpose": "book a trip",
                "targets": ["spiffe://bank.example/ledger"],
                "max_uses": 3,
                "require_action_check": false,
                "audience_kind": "workload",
                "audience_client_type": "confidential",
                "actor_auth": "mtls"
            }
        });
        assert_eq!(got, expected);
        // Never the secret, nor its hash.
        let text = got.to_string();
        assert!(!text.contains("2222"), "{text}");
    }

    #[test]
    fn introspection_of_a_root_by_a_workload_is_not_agent_traffic() {
        let mut r = record();
        r.actors.truncate(1);
        r.parent = None;
        r.depth = 0;
        r.grant.max_uses = None;
        r.grant.claims.clear();
        r.actor_auth = None;
        let m = introspection(&r, &[]);
        assert_eq!(m["agent_traffic"], json!(false));
        assert_eq!(m["client_id"], json!("gateway"));
        assert_eq!(m["authorization_details"], json!([]));
        let writ = m["writ"].as_object().unwrap();
        for absent in ["parent_token_id", "max_uses", "actor_auth"] {
            assert!(!writ.contains_key(absent), "{absent}: {writ:?}");
        }
    }

    #[test]
    fn txn_token_claims_golden() {
        let r = record();
        let got = Value::Object(txn_token_claims(
            &r,
            &[],
            "spiffe://bank.example/payments",
            "https://writ.bank.example",
            1_800_000_100,
            1_800_000_160,
            "jti-1",
        ));
        let expected = json!({
            "iss": "https://writ.bank.example",
            "iat": 1_800_000_100u64,
            "exp": 1_800_000_160u64,
            "aud": "bank.example",
            "txn": "txn_33333333333333333333333333333333",
            "sub": "alice",
            "scope": "pay read",
            "req_wl": "spiffe://bank.example/payments",
            "tctx": {"trip": "t-1"},
            "rctx": {"req_ip": "198.51.100.7"},
            "jti": "jti-1",
            "act": serde_json::from_str::<Value>(ACT_DEPTH_3).unwrap(),
            "authorization_details": [{
                "type": "writ_claim", "name": "amount", "actions": ["pay"],
                "constraint": {"kind": "max", "value": 500}
            }]
        });
        assert_eq!(got, expected);
        // The JWT never outlives the record (expires_at 1_800_000_900.999 s).
        let late = txn_token_claims(&r, &[], "w", "https://i", 1_800_000_890, u64::MAX, "j");
        assert_eq!(late["exp"], json!(1_800_000_900u64));
    }

    /// Introspection shows what the token holds and names its latent scopes apart; a
    /// Txn-Token JWT leaves them out (no consent can be asked for offline).
    #[test]
    fn latent_scopes_are_named_in_introspection_and_left_out_of_jwts() {
        let r = record();
        let latent = vec!["pay".to_owned()];
        let m = introspection(&r, &latent);
        assert_eq!(m["scope"], json!("pay read"));
        assert_eq!(m["latent_scope"], json!("pay"));
        assert!(!introspection(&r, &[]).contains_key("latent_scope"));
        let jwt = txn_token_claims(
            &r,
            &latent,
            "w",
            "https://i",
            1_800_000_100,
            1_800_000_160,
            "j",
        );
        assert_eq!(jwt["scope"], json!("read"));
        let mut consented = record();
        consented.consent = Some(writ_core::ConsentMark {
            request: writ_core::ConsentId([0xab; 16]),
            scope: "pay".into(),
        });
        let m = introspection(&consented, &[]);
        assert_eq!(
            m["writ"]["consent_request_id"],
            json!("cns_abababababababababababababababab")
        );
    }

    #[test]
    fn every_constraint_kind_has_a_golden_form() {
        let got = authorization_details(&every_kind());
        let d = |name: &str, constraint: Value| json!({"type": "writ_claim", "name": name, "constraint": constraint});
        let expected = json!([
            {"type": "writ_claim", "name": "a_max", "actions": ["pay"],
             "constraint": {"kind": "max", "value": 500}},
            d("b_min", json!({"kind": "min", "value": -3})),
            d("c_exact_int", json!({"kind": "exact", "type": "int", "value": 7})),
            d("d_exact_str", json!({"kind": "exact", "type": "string", "value": "EUR"})),
            d("e_exact_time", json!({"kind": "exact", "type": "time", "value": 1_796_000_000})),
            {"type": "writ_claim", "name": "f_range", "actions": ["pay", "read"],
             "constraint": {"kind": "range", "min": 1, "max": 9}},
            d("g_window", json!({"kind": "window", "not_before": 1_796_000_000, "not_after": 1_797_000_000})),
            d("h_allow", json!({"kind": "allow", "values": ["ba", "tap"]})),
            d("i_deny", json!({"kind": "deny", "values": ["x"]})),
            d("j_allow_ci", json!({"kind": "allow-ci", "values": ["paris"]})),
            d("k_deny_ci", json!({"kind": "deny-ci", "values": ["gambling"]})),
            d("l_prefix", json!({"kind": "prefix", "value": "/trips/"})),
            d("m_max_i64", json!({"kind": "max", "value": i64::MAX})),
        ]);
        assert_eq!(got, expected);
        // Exact text, too: integers stay integers, whatever their size.
        assert!(
            got.to_string()
                .contains(r#"{"kind":"max","value":9223372036854775807}"#),
            "{got}"
        );
    }

    #[test]
    fn the_form_is_lossless() {
        let claims = every_kind();
        let json = authorization_details(&claims);
        // Through text, as a verifier receives it.
        let reread: Value = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(parse_authorization_details(&reread).unwrap(), claims);
        assert_eq!(
            parse_authorization_details(&json!([])).unwrap(),
            Claims::new()
        );
    }

    /// A verifier must deny what it does not understand: the parser refuses every
    /// unknown type, kind or member instead of skipping it.
    #[test]
    fn unknown_kinds_types_and_members_are_refused_naming_where() {
        let ok =
            json!({"type": "writ_claim", "name": "n", "constraint": {"kind": "max", "value": 1}});
        assert!(parse_authorization_details(&json!([ok.clone()])).is_ok());
        let with = |pointer: &str, v: Value| {
            let mut e = ok.clone();
            *e.pointer_mut(pointer).unwrap() = v;
            json!([e])
        };
        let cases = [
            (
                with("/constraint/kind", json!("regex")),
                "[0].constraint.kind",
            ),
            (with("/type", json!("payment_initiation")), "[0].type"),
            (
                with("/constraint/value", json!("1")),
                "[0].constraint.value",
            ),
            (
                with("/constraint/value", json!(1.5)),
                "[0].constraint.value",
            ),
            (with("/name", json!(5)), "[0].name"),
            (
                with(
                    "/constraint",
                    json!({"kind": "max", "value": 1, "unless": "x"}),
                ),
                "[0].constraint.unless",
            ),
            (
                with(
                    "/constraint",
                    json!({"kind": "exact", "type": "float", "value": 1}),
                ),
                "[0].constraint.type",
            ),
            (
                with(
                    "/constraint",
                    json!({"kind": "allow", "values": ["a", "a"]}),
                ),
                "[0].constraint.values",
            ),
            (
                json!([{"type": "writ_claim", "name": "n", "constraint": {"kind": "max", "value": 1}, "locations": []}]),
                "[0].locations",
            ),
            (
                json!([{"type": "writ_claim", "name": "n", "actions": [], "constraint": {"kind": "max", "value": 1}}]),
                "[0].actions",
            ),
            (json!([ok.clone(), ok.clone()]), "[1].name"),
            (json!({"type": "writ_claim"}), ""),
        ];
        for (bad, path) in cases {
            let e = parse_authorization_details(&bad).unwrap_err();
            assert_eq!(e.path, path, "{bad}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("authorization_details{path}:")),
                "{e}"
            );
        }
    }
}
