//! The chain every measurement uses, in core types (for in-process benches and store
//! loading) and in wire types (for the load generator): alice's transaction handed to
//! `agent-0`, narrowed hop by hop down to `agent-D`, with two scopes, an amount limit and
//! a deny-set. Each hop drops the next hop from its targets and lowers the amount, so
//! every child is strictly narrower, as Writ demands.
//!
//! Depends on `writ_core` alone, so the baselines crate (`baselines/`, which must not
//! link RocksDB) includes this same file.
//!
//! The action every Validate checks (scope `payments:charge`, `amount = 100`,
//! `category = "travel"`) is the one the JWT and Biscuit baselines check too.

use std::collections::{BTreeMap, BTreeSet};
use writ_core::claims::{Claim, Claims, Constraint};
use writ_core::narrow::{self, ChildRequest, MintRequest, NewToken, Policy};
use writ_core::{
    ActorKind, Attributes, ClientType, KeyRing, Party, ServerKey, TokenRecord, TokenSecret, TxnId,
    UnixMillis, Value,
};

/// The trust domain Writ's default configuration uses.
pub const TRUST_DOMAIN: &str = "writ.local";
/// The local minter's identity (the first actor of every chain).
pub const MINTER: &str = "local-minter";
/// The scope every action check asks for.
pub const SCOPE: &str = "payments:charge";
/// The amount limit at the root; hop `i` allows `ROOT_MAX_AMOUNT - i`.
pub const ROOT_MAX_AMOUNT: i64 = 1000;
/// The amount every action check states.
pub const AMOUNT: i64 = 100;
/// Lifetime of the tokens the harness mints: long enough to outlive any run.
pub const TTL_SECS: u64 = 86_400;

/// The identity of hop `i` (the audience of the token at depth `i`).
pub fn hop(i: u32) -> String {
    format!("agent-{i}")
}

/// A fixed key ring for in-process benches (never used for a real server).
pub fn keyring() -> KeyRing {
    let key = ServerKey {
        id: 1,
        key: [7u8; 32],
    };
    KeyRing::new(vec![key]).unwrap_or_else(|| unreachable!("one key, one id"))
}

/// The policy the harness runs under: deep chains (up to 64) and day-long tokens.
pub fn policy(max_depth: u32) -> Policy {
    Policy {
        default_ttl_secs: TTL_SECS,
        max_ttl_secs: TTL_SECS,
        max_depth,
        allow_actor_loops: false,
    }
}

fn agent(id: String) -> Party {
    Party {
        id,
        kind: ActorKind::Agent,
        client_type: ClientType::Confidential,
    }
}

fn targets(from: u32, depth: u32) -> BTreeSet<String> {
    (from..=depth).map(hop).collect()
}

fn root_claims() -> Claims {
    BTreeMap::from([
        (
            "amount".to_string(),
            Claim::on_every_scope(Constraint::Max(ROOT_MAX_AMOUNT)),
        ),
        (
            "category".to_string(),
            Claim::on_every_scope(Constraint::DenySet(BTreeSet::from(
                ["gambling".to_string()],
            ))),
        ),
    ])
}

/// The root of a chain that will be narrowed `depth` times.
pub fn mint_request(depth: u32) -> MintRequest {
    MintRequest {
        subject: "alice".into(),
        audience: agent(hop(0)),
        targets: targets(1, depth),
        scopes: BTreeSet::from([SCOPE.to_string(), "trips:book".to_string()]),
        claims: root_claims(),
        purpose: "book a trip to Lisbon".into(),
        tctx: BTreeMap::from([("trip".to_string(), "lisbon-2026".to_string())]),
        rctx: BTreeMap::from([
            ("req_ip".to_string(), "203.0.113.7".to_string()),
            ("authn".to_string(), "webauthn".to_string()),
        ]),
        ttl_secs: Some(TTL_SECS),
        max_uses: None,
        require_action_check: false,
    }
}

/// The request hop `level - 1` sends to derive the token for hop `level` (1-based) in a
/// chain of `depth` hops.
pub fn child_request(level: u32, depth: u32) -> ChildRequest {
    ChildRequest {
        audience: agent(hop(level)),
        targets: targets(level + 1, depth),
        scopes: BTreeSet::from([SCOPE.to_string()]),
        claims: BTreeMap::from([(
            "amount".to_string(),
            Claim::on_every_scope(Constraint::Max(ROOT_MAX_AMOUNT - i64::from(level))),
        )]),
        ttl_secs: None,
        purpose: None,
        max_uses: None,
        require_action_check: false,
        drop_rctx: BTreeSet::new(),
    }
}

/// The attributes of the action every Validate checks.
pub fn attributes() -> Attributes {
    BTreeMap::from([
        ("amount".to_string(), vec![Value::Int(AMOUNT)]),
        ("category".to_string(), vec![Value::Str("travel".into())]),
    ])
}

/// The minter as a core party.
pub fn minter() -> Party {
    Party {
        id: MINTER.into(),
        kind: ActorKind::Workload,
        client_type: ClientType::Confidential,
    }
}

/// A whole chain built with the core rules alone (no store): the root and `depth`
/// descendants, each with its secret. For loading stores and for micro-benches.
pub fn record_chain(
    keys: &KeyRing,
    policy: &Policy,
    depth: u32,
    now: UnixMillis,
) -> Result<Vec<(TokenSecret, TokenRecord)>, narrow::NarrowingError> {
    let txn = TxnId::new(now, rand::random());
    let (secret, token) = keys.issue(rand::random());
    let root = narrow::mint(
        mint_request(depth),
        minter(),
        TRUST_DOMAIN,
        policy,
        NewToken {
            token,
            txn,
            now,
            idempotency: None,
            auth: writ_core::AuthMethod::Mtls,
        },
    )?;
    let mut chain = vec![(secret, root)];
    for level in 1..=depth {
        let parent = &chain[chain.len() - 1].1;
        let (secret, token) = keys.issue(rand::random());
        let child = narrow::downscope(
            parent,
            &parent.audience.id,
            child_request(level, depth),
            policy,
            NewToken {
                token,
                txn,
                now,
                idempotency: None,
                auth: writ_core::AuthMethod::Mtls,
            },
        )?;
        chain.push((secret, child));
    }
    Ok(chain)
}

/// A root like [`mint_request`]`(0)` but whose grant carries `n` typed claims
/// (`c00`, `c01`, ...), each on every scope, cycling through six kinds: max, min,
/// allow-set and deny-set (of `set_items` members each), prefix and exact. `n` must stay
/// within `writ_core::limits::MAX_CLAIMS` and `set_items` within `MAX_SET_ITEMS`.
pub fn claims_mint_request(n: usize, set_items: usize) -> MintRequest {
    let mut req = mint_request(0);
    req.claims = (0..n)
        .map(|i| (claim_name(i), Claim::on_every_scope(claim(i, set_items))))
        .collect();
    req
}

fn claim_name(i: usize) -> String {
    format!("c{i:02}")
}

fn claim(i: usize, set_items: usize) -> Constraint {
    let set = |tag: &str| (0..set_items).map(|j| format!("{tag}{j}")).collect();
    match i % 6 {
        0 => Constraint::Max(ROOT_MAX_AMOUNT),
        1 => Constraint::Min(10),
        2 => Constraint::AllowSet(set("v")),
        3 => Constraint::DenySet(set("d")),
        4 => Constraint::Prefix("/trips/lisbon/".into()),
        _ => Constraint::Exact(Value::Str("EUR".into())),
    }
}

/// Attributes that every claim of [`claims_mint_request`]`(n, set_items)` permits (each
/// claim is evaluated: none is skipped), one per claim.
pub fn claims_attributes(n: usize, set_items: usize) -> Attributes {
    (0..n)
        .map(|i| {
            let v = match i % 6 {
                0 => Value::Int(AMOUNT),
                1 => Value::Int(AMOUNT),
                // The last member of the allow-set.
                2 => Value::Str(format!("v{}", set_items.saturating_sub(1))),
                3 => Value::Str("travel".into()),
                4 => Value::Str("/trips/lisbon/hotel/42".into()),
                _ => Value::Str("EUR".into()),
            };
            (claim_name(i), vec![v])
        })
        .collect()
}
