#![allow(clippy::unwrap_used)]
//! Adversarial property tests: every attempt to get a child that permits more than its
//! parent (or root) must be refused, and every refusal must name a dimension that was
//! really violated.
//!
//! Parents, policies and roots come from proptest strategies over a small shared
//! vocabulary (so names, values, scopes and case-folded words collide). Requests and
//! actions, which depend on the parent, are drawn from a seeded RNG inside each case:
//! random, copied from the parent, mutated slightly narrower or wider, wider on exactly
//! one dimension, or grown past the size limits.
//!
//! An independent oracle (`violations`, `claim_within`) restates the rules semantically:
//! two claims are compared by searching for a witness, an action the child permits and
//! the parent does not: a value (boundaries of ranges and windows, case and width
//! variants of folded members, canonical and non-canonical paths around prefixes), or a
//! scope the parent's claim constrains and the child's does not. Only which kinds may be
//! compared at all is restated from the rules' table; whether one is within the other
//! never calls `narrow.rs` or `Constraint::is_narrowed_by`.
//!
//! The last sections attack the canonical text of `text` (forbidden characters, NFC,
//! case folding) and the token format, request digests and derived tokens.

use proptest::collection::{btree_map, btree_set, vec as pvec};
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use writ_core::lifecycle::{MAX_NARROWED_LINE, narrowed};
use writ_core::limits::{MAX_CLAIMS, MAX_CONTEXT_BYTES, MAX_GRANT_BYTES, MAX_RECORD_BYTES};
use writ_core::model::context_size;
use writ_core::narrow::{
    self, ChildRequest, Dimension, MintRequest, NewToken, Policy, request_digest,
};
use writ_core::text::{self, TextError};
use writ_core::token::{TOKEN_LEN, TOKEN_PREFIX, TokenError};
use writ_core::{
    ActorKind, Attributes, Claim, Claims, ClientType, Constraint, Grant, KeyRing, Party,
    SecretHash, ServerKey, TokenId, TokenRecord, TxnId, UnixMillis, Value, VerifiedToken,
};

const SCOPES: &[&str] = &["read", "write", "pay", "refund", "admin", "delete"];
/// A scope no generated parent ever holds.
const FOREIGN_SCOPE: &str = "root:all";
const PARTIES: &[&str] = &["gw", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
/// A party no generated parent ever targets or has seen act.
const OUTSIDER: &str = "mallory";
const NAMES: &[&str] = &["amount", "count", "category", "path", "region", "when"];
/// A claim name no generated parent ever carries.
const FRESH_NAME: &str = "nonce";
/// The name of the claims that push a grant towards (or past) the size limit.
const BULK_NAME: &str = "bulk";
/// Canonical text (see `vocabulary_is_canonical`): words that collide under case folding
/// and compatibility mapping, and paths around `/t`.
const STRS: &[&str] = &[
    "",
    "/",
    "/t",
    "/t/",
    "/t/1",
    "/t/1/",
    "/t/12",
    "/tx",
    "/u/",
    "health",
    "Health",
    "HEALTH",
    "ｈｅａｌｔｈ",
    "travel",
    "TRAVEL",
    "food",
    "x",
    "xy",
    "straße",
    "STRASSE",
];
/// Canonical paths: what prefix claims are made of.
const PATHS: &[&str] = &[
    "/", "/t", "/t/", "/t/1", "/t/1/", "/t/12", "/tx", "/u/", "/t/1/a",
];
const SEGMENTS: &[&str] = &["1", "12", "t", "x", "a"];
/// A string no generated set ever contains, in no case or width.
const FREE_STR: &str = "~free~";
const INTS: &[i64] = &[
    i64::MIN,
    i64::MIN + 1,
    -1,
    0,
    1,
    99,
    100,
    101,
    500,
    i64::MAX - 1,
    i64::MAX,
];
/// 2025-12-01T00:00:00Z, in Unix seconds.
const T0: i64 = 1_764_547_200;
const DAY: i64 = 86_400;
const TIMES: &[i64] = &[
    i64::MIN,
    -1,
    0,
    T0 - 1,
    T0,
    T0 + 1,
    T0 + DAY,
    T0 + 14 * DAY,
    i64::MAX,
];
const RCTX_KEYS: &[&str] = &["ip", "authn", "method"];
/// Overlaps `RCTX_KEYS` on `ip`: a key can be in both contexts.
const TCTX_KEYS: &[&str] = &["order", "cart", "ip"];
/// An rctx key no generated parent carries.
const ABSENT_KEY: &str = "absent";
const BASE: u64 = 1_700_000_000_000;
/// Sets larger than this (the bulk ones) are never turned into case-insensitive ones by
/// the generators: folding 64 members of 512 bytes is slow in a debug build.
const SMALL_SET: usize = 8;
const ACTIONS_PER_CHECK: usize = 40;

/// Case counts keep the default run short; `WRIT_PROPTEST_SCALE=50` soaks.
fn config(cases: u32) -> ProptestConfig {
    let scale: u32 = std::env::var("WRIT_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    ProptestConfig {
        cases: cases.saturating_mul(scale.max(1)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn party(id: &str) -> Party {
    Party {
        id: id.to_string(),
        kind: ActorKind::Agent,
        client_type: ClientType::Confidential,
    }
}

fn new_token(n: u64, now: UnixMillis) -> NewToken {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    let mut hash = [0xa5u8; 32];
    hash[..8].copy_from_slice(&n.to_le_bytes());
    NewToken {
        token: VerifiedToken {
            token_id: TokenId(id),
            secret_hash: SecretHash(hash),
        },
        txn: TxnId::new(now, [0xee; 10]),
        now,
        idempotency: None,
        auth: writ_core::AuthMethod::Mtls,
    }
}

fn every(c: Constraint) -> Claim {
    Claim::on_every_scope(c)
}

/// `p` extended by one path segment.
fn join(p: &str, seg: &str) -> String {
    if p.ends_with('/') {
        format!("{p}{seg}")
    } else {
        format!("{p}/{seg}")
    }
}

/// ASCII mapped to its fullwidth compatibility form (`a` -> `ａ`), the rest unchanged.
fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap(),
            _ => c,
        })
        .collect()
}

/// `n` distinct set members of about 512 bytes.
fn bulk_members(n: usize, tag: &str) -> BTreeSet<String> {
    (0..n).map(|i| format!("{tag}{i:0>510}")).collect()
}

fn nfc(s: &str) -> String {
    icu_normalizer::ComposingNormalizer::new_nfc()
        .normalize(s)
        .into_owned()
}

// ---------------------------------------------------------------------------------
// Strategies (parents, roots, policies, constraints, claims)
// ---------------------------------------------------------------------------------

fn int_s() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(INTS),
        2 => (-3i64..=3).prop_map(|d| 100 + d),
        1 => any::<i64>(),
    ]
}

fn time_s() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(TIMES),
        2 => (-3i64..=3, -1i64..=1).prop_map(|(d, s)| T0 + d * DAY + s),
        1 => any::<i64>(),
    ]
}

fn str_s() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(STRS).prop_map(String::from),
        1 => (select(STRS), select(STRS)).prop_map(|(a, b)| format!("{a}{b}")),
    ]
}

fn path_s() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(PATHS).prop_map(String::from),
        1 => (select(PATHS), select(SEGMENTS), any::<bool>()).prop_map(|(p, s, slash)| {
            let mut j = join(p, s);
            if slash {
                j.push('/');
            }
            j
        }),
    ]
}

fn value_s() -> impl Strategy<Value = Value> {
    prop_oneof![
        int_s().prop_map(Value::Int),
        str_s().prop_map(Value::Str),
        time_s().prop_map(Value::Time),
    ]
}

fn strs_s() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set(str_s(), 0..4)
}

/// Well-formed constraints: ranges and windows with `min ≤ max`, canonical prefix
/// paths, case-insensitive sets built folded.
fn constraint_s() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        prop_oneof![
            int_s().prop_map(Constraint::Max),
            int_s().prop_map(Constraint::Min),
            (int_s(), int_s()).prop_map(|(a, b)| Constraint::Range {
                min: a.min(b),
                max: a.max(b)
            }),
            (time_s(), time_s()).prop_map(|(a, b)| Constraint::Window {
                not_before: a.min(b),
                not_after: a.max(b)
            }),
            path_s().prop_map(Constraint::Prefix),
            value_s().prop_map(Constraint::Exact),
        ],
        prop_oneof![
            strs_s().prop_map(Constraint::AllowSet),
            strs_s().prop_map(Constraint::DenySet),
            strs_s().prop_map(Constraint::allow_folded),
            strs_s().prop_map(Constraint::deny_folded),
        ],
    ]
}

/// Constraints the wire should never let in (empty ranges and windows, prefixes that
/// are not paths, case-insensitive sets with unfolded members): the order must stay
/// sound on them even where it is not exact.
fn degenerate_s() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        (int_s(), int_s()).prop_map(|(min, max)| Constraint::Range { min, max }),
        (time_s(), time_s()).prop_map(|(not_before, not_after)| Constraint::Window {
            not_before,
            not_after
        }),
        str_s().prop_map(Constraint::Prefix),
        strs_s().prop_map(Constraint::AllowFolded),
        strs_s().prop_map(Constraint::DenyFolded),
    ]
}

fn any_constraint_s() -> impl Strategy<Value = Constraint> {
    prop_oneof![3 => constraint_s(), 1 => degenerate_s()]
}

fn vocab_set_s(
    vocab: &'static [&'static str],
    min: usize,
) -> impl Strategy<Value = BTreeSet<String>> {
    subsequence(vocab, min..=vocab.len()).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn applies_s() -> impl Strategy<Value = Option<BTreeSet<String>>> {
    prop_oneof![3 => Just(None), 2 => vocab_set_s(SCOPES, 1).prop_map(Some)]
}

fn claim_s() -> impl Strategy<Value = Claim> {
    (constraint_s(), applies_s()).prop_map(|(constraint, applies_to)| Claim {
        constraint,
        applies_to,
    })
}

fn claims_s() -> impl Strategy<Value = Claims> {
    btree_map(select(NAMES).prop_map(String::from), claim_s(), 0..5)
}

fn ctx_s(keys: &'static [&'static str]) -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(select(keys).prop_map(String::from), str_s(), 0..3)
}

fn policy_s() -> impl Strategy<Value = Policy> {
    let max_depth = prop_oneof![1 => 1u32..=3, 2 => 4u32..=10];
    (max_depth, any::<bool>()).prop_map(|(max_depth, allow_actor_loops)| Policy {
        default_ttl_secs: 300,
        max_ttl_secs: 900,
        max_depth,
        allow_actor_loops,
    })
}

fn uses_s() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![3 => Just(None), 1 => (1u32..=5).prop_map(Some)]
}

/// Sometimes a grant carries a bulk deny-set that puts it just under or just over
/// `MAX_GRANT_BYTES`.
fn grant_s() -> impl Strategy<Value = Grant> {
    let expiry = prop_oneof![
        8 => (1u64..=900_000).prop_map(|d| BASE + d),
        1 => (0u64..=3).prop_map(|d| BASE + d * 1000),
        1 => Just(u64::MAX),
    ];
    let targets = prop_oneof![
        vocab_set_s(PARTIES, 0),
        vocab_set_s(PARTIES, PARTIES.len() - 4)
    ];
    let bulk = prop_oneof![19 => Just(None), 1 => (56usize..=64).prop_map(Some)];
    (
        vocab_set_s(SCOPES, 0),
        claims_s(),
        targets,
        expiry,
        uses_s(),
        any::<bool>(),
        bulk,
    )
        .prop_map(
            |(scopes, mut claims, targets, exp, max_uses, require_action_check, bulk)| {
                // Claims mostly apply to scopes the grant holds (as a mint through the
                // wire should ensure); one naming only other scopes stays as it is.
                for c in claims.values_mut() {
                    if let Some(s) = &mut c.applies_to {
                        let held: BTreeSet<String> = s.intersection(&scopes).cloned().collect();
                        if !held.is_empty() {
                            *s = held;
                        }
                    }
                }
                if let Some(n) = bulk {
                    claims.insert(
                        BULK_NAME.into(),
                        every(Constraint::DenySet(bulk_members(n, "b"))),
                    );
                }
                Grant {
                    scopes,
                    claims,
                    targets,
                    expires_at: UnixMillis(exp),
                    max_uses,
                    require_action_check,
                }
            },
        )
}

/// An arbitrary parent record (not necessarily produced by `mint`/`downscope`), with
/// the policy it is judged under.
fn parent_s() -> impl Strategy<Value = (Policy, TokenRecord)> {
    let depth = prop_oneof![4 => 0u32..=3, 1 => 0u32..=12];
    (
        policy_s(),
        Just(PARTIES.to_vec()).prop_shuffle(),
        1usize..=3,
        grant_s(),
        depth,
        ctx_s(TCTX_KEYS),
        ctx_s(RCTX_KEYS),
        select(&["alice", "bob"][..]),
        any::<bool>(),
    )
        .prop_map(
            |(policy, order, n, grant, depth, tctx, rctx, subject, consented)| {
                // Sometimes a token redeemed from a consent (to one of its scopes).
                let consent = grant
                    .scopes
                    .iter()
                    .next()
                    .filter(|_| consented)
                    .map(|scope| writ_core::ConsentMark {
                        request: writ_core::ConsentId([5; 16]),
                        scope: scope.clone(),
                    });
                let record = TokenRecord {
                    token_id: TokenId([1; 16]),
                    secret_hash: SecretHash([2; 32]),
                    txn: TxnId::new(UnixMillis(BASE), [3; 10]),
                    parent: (depth > 0).then_some(TokenId([4; 16])),
                    depth,
                    subject: subject.to_string(),
                    trust_domain: "td.example".into(),
                    actors: order[..n].iter().map(|id| party(id)).collect(),
                    audience: party(order[n]),
                    grant,
                    purpose: "book a trip".into(),
                    tctx,
                    rctx,
                    issued_at: UnixMillis(BASE - 1000),
                    idempotency: None,
                    actor_auth: None,
                    consent,
                };
                (policy, record)
            },
        )
}

fn mint_req_s() -> impl Strategy<Value = MintRequest> {
    let targets =
        prop_oneof![1 => vocab_set_s(PARTIES, 0), 3 => vocab_set_s(PARTIES, PARTIES.len() - 2)];
    (
        select(&PARTIES[1..]),
        targets,
        vocab_set_s(SCOPES, 0),
        claims_s(),
        ctx_s(TCTX_KEYS),
        ctx_s(RCTX_KEYS),
        prop_oneof![Just(None), (1u64..=900).prop_map(Some)],
        uses_s(),
        any::<bool>(),
    )
        .prop_map(
            |(aud, targets, scopes, claims, tctx, rctx, ttl_secs, max_uses, rac)| MintRequest {
                subject: "alice".into(),
                audience: party(aud),
                targets,
                scopes,
                claims,
                purpose: "plan".into(),
                tctx,
                rctx,
                ttl_secs,
                max_uses,
                require_action_check: rac,
            },
        )
}

// ---------------------------------------------------------------------------------
// Semantic helpers and the independent oracle
// ---------------------------------------------------------------------------------

fn same_kind(a: &Constraint, b: &Constraint) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The kind pairs the rules compare at all (parent, child): the same kind, a range under
/// a bound, an exact allow-set under a case-insensitive one, a case-insensitive deny-set
/// under an exact one, an exact value under anything. Restated from the documented table,
/// not from the code.
fn comparable(p: &Constraint, c: &Constraint) -> bool {
    use Constraint::*;
    same_kind(p, c)
        || matches!(
            (p, c),
            (Max(_) | Min(_), Range { .. })
                | (AllowFolded(_), AllowSet(_))
                | (DenySet(_), DenyFolded(_))
                // An exact value compares with every kind: within it iff it is permitted.
                | (_, Exact(_))
        )
}

/// Is `p` a canonical path (restated from the documentation of `Constraint::Prefix`)?
fn canonical_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    if p.contains(['\\', ';']) {
        return false;
    }
    // %XX only, never of / \\ . % ;, and UTF-8 once decoded.
    let mut bytes = Vec::new();
    let mut it = rest.bytes();
    while let Some(b) = it.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hex: Vec<u8> = it.by_ref().take(2).collect();
        let Some(v) = std::str::from_utf8(&hex)
            .ok()
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        else {
            return false;
        };
        if b"/\\.%;".contains(&v) {
            return false;
        }
        bytes.push(v);
    }
    let Ok(decoded) = String::from_utf8(bytes) else {
        return false;
    };
    let segments: Vec<&str> = decoded.split('/').collect();
    segments.iter().enumerate().all(|(i, s)| {
        let nfkc: String = icu_normalizer::ComposingNormalizer::new_nfkc()
            .normalize(s)
            .into_owned();
        !matches!(nfkc.as_str(), "." | "..")
            && !nfkc.contains(['/', '\\', ';', '%'])
            && (!s.is_empty() || i == segments.len() - 1)
    })
}

/// Is `c` what the wire lets in (see `degenerate_s`)? The order is exact only on these.
fn well_formed(c: &Constraint) -> bool {
    use Constraint::*;
    match c {
        Range { min, max } => min <= max,
        Window {
            not_before,
            not_after,
        } => not_before <= not_after,
        Prefix(p) => canonical_path(p),
        AllowFolded(s) | DenyFolded(s) => s.iter().all(|m| &text::fold(m) == m),
        _ => true,
    }
}

fn claim_well_formed(c: &Claim) -> bool {
    well_formed(&c.constraint) && c.applies_to.as_ref().is_none_or(|s| !s.is_empty())
}

fn tweak(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Int(i.wrapping_add(1)),
        Value::Str(s) => Value::Str(format!("{s}x")),
        Value::Time(t) => Value::Time(t.wrapping_add(1)),
    }
}

/// Case and width variants of a word: what a case-insensitive set must treat as one.
fn variants(s: &str) -> Vec<String> {
    let mut cap: String = s.chars().take(1).flat_map(char::to_uppercase).collect();
    cap.extend(s.chars().skip(1).flat_map(char::to_lowercase));
    let mut out = vec![
        s.to_string(),
        s.to_uppercase(),
        s.to_lowercase(),
        cap,
        fullwidth(s),
        fullwidth(&s.to_uppercase()),
    ];
    out.sort();
    out.dedup();
    out
}

/// Values around a prefix: itself, across and at its segment boundary, its parent, and
/// non-canonical spellings that step outside it (`..`, `.`, `//`, `%2e`, `%2f`, `\`).
fn path_candidates(p: &str) -> Vec<String> {
    let trimmed = p.trim_end_matches('/');
    let parent = match trimmed.rfind('/') {
        Some(i) => trimmed[..=i].to_string(),
        None => String::new(),
    };
    let mut shorter: Vec<char> = p.chars().collect();
    shorter.pop();
    vec![
        p.to_string(),
        format!("{p}x"),
        join(p, "1"),
        format!("{}/", join(p, "1")),
        format!("{p}/"),
        trimmed.to_string(),
        parent.clone(),
        parent.trim_end_matches('/').to_string(),
        shorter.into_iter().collect(),
        format!("{}/../u", p.trim_end_matches('/')),
        join(p, ".."),
        join(p, "./1"),
        join(p, "/1"),
        join(p, "%2e%2e/u"),
        join(p, "%2E%2e"),
        format!("{}%2F1", p.trim_end_matches('/')),
        format!("{}\\..\\u", p.trim_end_matches('/')),
        join(p, "..;/u"),
        join(p, "%252e%252e/u"),
        join(p, "%u002e%u002e/u"),
        join(p, "%c0%ae%c0%ae/u"),
        join(p, "．．/u"),
        join(p, "‥/u"),
        join(p, "a／.."),
        join(p, "caf%C3%A9"),
        p.to_uppercase(),
        fullwidth(p),
        "/".into(),
    ]
}

fn int_edges(b: i64) -> [i64; 6] {
    [
        b,
        b.saturating_sub(1),
        b.saturating_add(1),
        i64::MIN,
        i64::MAX,
        0,
    ]
}

/// Boundary values of a constraint: members and their case/width variants, bounds and
/// their neighbours, values around prefixes, a free string, and wrongly typed values.
fn candidates(c: &Constraint) -> Vec<Value> {
    use Constraint::*;
    let mut out = Vec::new();
    let strings = |out: &mut Vec<Value>, s: &BTreeSet<String>| {
        for (i, m) in s.iter().enumerate() {
            // Variants of the first members only (case-insensitive comparisons are slow
            // in a debug build, and bulk sets have 64 long members).
            if i < 2 {
                out.extend(variants(m).into_iter().map(Value::Str));
            } else {
                out.push(Value::Str(m.clone()));
            }
        }
        out.push(Value::Str(FREE_STR.into()));
        out.push(Value::Int(0));
        out.push(Value::Time(0));
    };
    match c {
        Max(b) | Min(b) => {
            out.extend(int_edges(*b).map(Value::Int));
            out.push(Value::Str(b.to_string()));
            out.push(Value::Time(*b));
        }
        Range { min, max } => {
            out.extend(int_edges(*min).map(Value::Int));
            out.extend(int_edges(*max).map(Value::Int));
            out.push(Value::Int(min / 2 + max / 2));
            out.push(Value::Time(*min));
            out.push(Value::Str(max.to_string()));
        }
        Window {
            not_before,
            not_after,
        } => {
            out.extend(int_edges(*not_before).map(Value::Time));
            out.extend(int_edges(*not_after).map(Value::Time));
            out.push(Value::Time(not_before / 2 + not_after / 2));
            out.push(Value::Int(*not_before));
            out.push(Value::Str(not_after.to_string()));
        }
        AllowSet(s) | DenySet(s) | AllowFolded(s) | DenyFolded(s) => strings(&mut out, s),
        Prefix(p) => {
            out.extend(path_candidates(p).into_iter().map(Value::Str));
            out.push(Value::Str(FREE_STR.into()));
            out.push(Value::Int(0));
        }
        Exact(v) => {
            out.push(v.clone());
            out.push(tweak(v));
            out.push(match v {
                Value::Int(i) => Value::Time(*i),
                Value::Time(t) => Value::Int(*t),
                Value::Str(_) => Value::Int(0),
            });
            if let Value::Str(s) = v {
                out.extend(variants(s).into_iter().map(Value::Str));
            }
        }
    }
    out
}

/// A value `c` permits and `p` does not, among both constraints' candidates and `extra`.
fn value_witness(p: &Constraint, c: &Constraint, extra: &[Value]) -> Option<Value> {
    candidates(p)
        .into_iter()
        .chain(candidates(c))
        .chain(extra.iter().cloned())
        .find(|v| c.permits(v).is_ok() && p.permits(v).is_err())
}

/// Semantic "child permits no value the parent does not", for comparable kinds.
/// Complete for well-formed constraints: if the child is wider, one of the candidates
/// is a witness.
fn constraint_within(p: &Constraint, c: &Constraint) -> bool {
    comparable(p, c) && value_witness(p, c, &[]).is_none()
}

/// Does `claim` constrain actions of `scope`? (Restated: `None` is every scope.)
fn applies(claim: &Claim, scope: &str) -> bool {
    match &claim.applies_to {
        None => true,
        Some(s) => s.contains(scope),
    }
}

/// A scope whose actions `p` constrains and `c` does not: there, an action that omits
/// the attribute (or states any value) passes the child and fails the parent.
fn scope_witness(p: &Claim, c: &Claim) -> Option<String> {
    let mut scopes: BTreeSet<String> = SCOPES.iter().map(|s| s.to_string()).collect();
    scopes.insert(FOREIGN_SCOPE.into());
    scopes.extend(p.applies_to.iter().flatten().cloned());
    scopes.extend(c.applies_to.iter().flatten().cloned());
    scopes.into_iter().find(|s| applies(p, s) && !applies(c, s))
}

/// Semantic `child ⊑ parent` for claims: comparable kinds, no scope witness and no value
/// witness.
fn claim_within(p: &Claim, c: &Claim) -> bool {
    scope_witness(p, c).is_none() && constraint_within(&p.constraint, &c.constraint)
}

/// Does prefix `p` match path `v`? Restated from the documentation: a prefix ending in
/// `/` matches what lies strictly below it, any other the path itself and what lies below it,
/// never a sibling sharing its first characters; only canonical paths ever match.
fn under(p: &str, v: &str) -> bool {
    canonical_path(v)
        && if p.ends_with('/') {
            v.len() > p.len() && v.starts_with(p)
        } else {
            v == p || v.starts_with(&format!("{p}/"))
        }
}

/// `authorize`, restated: the scope is granted, and every claim that applies to it finds
/// its attribute with at least one value, every one of which its constraint permits.
fn authorized(grant: &Grant, scope: &str, attrs: &Attributes) -> bool {
    grant.scopes.contains(scope)
        && grant.claims.iter().all(|(n, c)| {
            !applies(c, scope)
                || attrs.get(n).is_some_and(|vs| {
                    !vs.is_empty() && vs.iter().all(|v| c.constraint.permits(v).is_ok())
                })
        })
}

/// The grant a request would produce, merged from the parent as the rules describe.
/// The request's claims as the child would hold them: one restated without scopes keeps
/// the parent's claim's scopes (a new one without scopes constrains every scope).
fn requested_claims(pg: &Grant, req: &ChildRequest) -> Claims {
    req.claims
        .iter()
        .map(|(n, c)| {
            let mut c = c.clone();
            if c.applies_to.is_none() {
                c.applies_to = pg.claims.get(n).and_then(|p| p.applies_to.clone());
            }
            (n.clone(), c)
        })
        .collect()
}

fn merged_grant(pg: &Grant, req: &ChildRequest, expires_at: UnixMillis) -> Grant {
    let mut claims = pg.claims.clone();
    claims.extend(requested_claims(pg, req));
    Grant {
        scopes: req.scopes.clone(),
        claims,
        targets: req.targets.clone(),
        expires_at,
        max_uses: req.max_uses.or(pg.max_uses),
        require_action_check: pg.require_action_check || req.require_action_check,
    }
}

/// Every dimension the request violates, restated from the rules independently of
/// `narrow.rs`. A refusal must name one of these; an acceptance needs none.
fn violations(
    parent: &TokenRecord,
    caller: &str,
    req: &ChildRequest,
    policy: &Policy,
    now: UnixMillis,
) -> Vec<Dimension> {
    let pg = &parent.grant;
    let mut v = Vec::new();
    if now >= pg.expires_at {
        v.push(Dimension::ParentExpired);
    }
    if caller != parent.audience.id {
        v.push(Dimension::Holder);
    }
    if u64::from(parent.depth) + 1 > u64::from(policy.max_depth) {
        v.push(Dimension::Depth);
    }
    if !policy.allow_actor_loops {
        let acted: BTreeSet<&str> = parent.actors.iter().map(|a| a.id.as_str()).collect();
        let chain_after: BTreeSet<&str> = acted
            .iter()
            .copied()
            .chain([parent.audience.id.as_str(), req.audience.id.as_str()])
            .collect();
        if acted.contains(parent.audience.id.as_str())
            || acted.contains(req.audience.id.as_str())
            || req.audience.id == parent.audience.id
            || req.targets.iter().any(|t| chain_after.contains(t.as_str()))
        {
            v.push(Dimension::Loop);
        }
    }
    if !pg.targets.contains(&req.audience.id) {
        v.push(Dimension::Audience);
    }
    if !req.targets.is_subset(&pg.targets) {
        v.push(Dimension::Targets);
    }
    if !req.scopes.is_subset(&pg.scopes) {
        v.push(Dimension::Scopes);
    }
    let names_foreign_scope = |c: &Claim| {
        c.applies_to
            .as_ref()
            .is_some_and(|s| !s.is_subset(&pg.scopes))
    };
    let effective = requested_claims(pg, req);
    if req.claims.values().any(names_foreign_scope)
        || effective
            .iter()
            .any(|(n, c)| pg.claims.get(n).is_some_and(|p| !claim_within(p, c)))
    {
        v.push(Dimension::Claims);
    }
    match req.max_uses {
        Some(0) => v.push(Dimension::Uses),
        Some(c) if pg.max_uses.is_some_and(|p| c > p) => v.push(Dimension::Uses),
        _ => {}
    }
    if req.drop_rctx.iter().any(|k| !parent.rctx.contains_key(k)) {
        v.push(Dimension::Context);
    }
    let expiry = match req.ttl_secs {
        None => Some(pg.expires_at),
        Some(0) => None,
        Some(t) => Some(UnixMillis(now.0.saturating_add(t.saturating_mul(1000)))),
    };
    match expiry {
        Some(e) if e <= pg.expires_at => {
            if merged_grant(pg, req, e) == *pg {
                v.push(Dimension::NotNarrower);
            }
        }
        _ => v.push(Dimension::Expiry),
    }
    let merged = merged_grant(pg, req, pg.expires_at);
    let mut rctx = parent.rctx.clone();
    rctx.retain(|k, _| !req.drop_rctx.contains(k));
    let purpose = req.purpose.as_deref().unwrap_or(&parent.purpose);
    if merged.size() > MAX_GRANT_BYTES
        || merged.claims.len() > MAX_CLAIMS
        || context_size(purpose, &parent.tctx, &rctx) > MAX_CONTEXT_BYTES
    {
        v.push(Dimension::Size);
    }
    v
}

/// Every dimension a mint request violates.
fn mint_violations(req: &MintRequest, minter: &str, policy: &Policy) -> Vec<Dimension> {
    let mut v = Vec::new();
    let ttl = req.ttl_secs.unwrap_or(policy.default_ttl_secs);
    if ttl == 0 || ttl > policy.max_ttl_secs {
        v.push(Dimension::Expiry);
    }
    if !policy.allow_actor_loops
        && (req.audience.id == minter
            || req.targets.contains(&req.audience.id)
            || req.targets.contains(minter))
    {
        v.push(Dimension::Loop);
    }
    if req.max_uses == Some(0) {
        v.push(Dimension::Uses);
    }
    let grant = Grant {
        scopes: req.scopes.clone(),
        claims: req.claims.clone(),
        targets: req.targets.clone(),
        expires_at: UnixMillis(0),
        max_uses: req.max_uses,
        require_action_check: req.require_action_check,
    };
    if grant.size() > MAX_GRANT_BYTES
        || context_size(&req.purpose, &req.tctx, &req.rctx) > MAX_CONTEXT_BYTES
    {
        v.push(Dimension::Size);
    }
    v
}

/// Candidate values of one claim name, over the claims of that name in every grant
/// (deduplicated), and those the first grant's claim of that name permits.
#[derive(Default)]
struct Pool {
    all: Vec<Value>,
    permitted: Vec<Value>,
}

/// Pools per claim name: computed once per check, shared by every action drawn in it.
type Pools = BTreeMap<String, Pool>;

fn pools(grants: &[&Grant]) -> Pools {
    let mut out = Pools::new();
    for g in grants {
        for (n, c) in &g.claims {
            out.entry(n.clone())
                .or_default()
                .all
                .extend(candidates(&c.constraint));
        }
    }
    for (n, pool) in out.iter_mut() {
        pool.all.sort();
        pool.all.dedup();
        pool.permitted = match grants[0].claims.get(n) {
            Some(c) => pool
                .all
                .iter()
                .filter(|v| c.constraint.permits(v).is_ok())
                .cloned()
                .collect(),
            None => pool.all.clone(),
        };
    }
    out
}

/// An action in `scope` that `child` must permit if its claims are satisfiable there:
/// every constrained attribute carries *every* candidate value the child permits (a
/// multi-valued attribute), and attributes the child does not constrain in this scope
/// are omitted (`hostile == false`) or carry every candidate, permitted or not.
fn witness(child: &Grant, pools: &Pools, scope: &str, hostile: bool) -> Option<Attributes> {
    let mut attrs = Attributes::new();
    for (n, pool) in pools {
        match child.claims.get(n) {
            Some(c) if applies(c, scope) => {
                if pool.permitted.is_empty() {
                    return None;
                }
                attrs.insert(n.clone(), pool.permitted.clone());
            }
            _ if hostile => {
                attrs.insert(n.clone(), pool.all.clone());
            }
            _ => {}
        }
    }
    Some(attrs)
}

// ---------------------------------------------------------------------------------
// The seeded generator for everything that depends on a parent
// ---------------------------------------------------------------------------------

struct Gen(SmallRng);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(SmallRng::seed_from_u64(seed))
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
    fn small(&mut self, n: usize) -> i64 {
        self.below(n) as i64
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn pick_in<T: Clone>(&mut self, s: &BTreeSet<T>) -> Option<T> {
        if s.is_empty() {
            None
        } else {
            s.iter().nth(self.below(s.len())).cloned()
        }
    }
    fn int(&mut self) -> i64 {
        match self.below(4) {
            0 | 1 => *self.pick(INTS),
            2 => 100 + self.0.random_range(-3..=3),
            _ => self.0.random(),
        }
    }
    fn time(&mut self) -> i64 {
        match self.below(4) {
            0 | 1 => *self.pick(TIMES),
            2 => T0 + self.0.random_range(-3..=3) * DAY + self.0.random_range(-1..=1),
            _ => self.0.random(),
        }
    }
    fn string(&mut self) -> String {
        if self.chance(0.85) {
            self.pick(STRS).to_string()
        } else {
            format!("{}{}", self.pick(STRS), self.pick(STRS))
        }
    }
    fn path(&mut self) -> String {
        if self.chance(0.7) {
            self.pick(PATHS).to_string()
        } else {
            let (base, seg) = (*self.pick::<&str>(PATHS), *self.pick::<&str>(SEGMENTS));
            let mut p = join(base, seg);
            if self.chance(0.3) {
                p.push('/');
            }
            p
        }
    }
    fn value(&mut self) -> Value {
        match self.below(3) {
            0 => Value::Int(self.int()),
            1 => Value::Str(self.string()),
            _ => Value::Time(self.time()),
        }
    }
    fn str_set(&mut self, max: usize) -> BTreeSet<String> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.string()).collect()
    }
    fn ordered(&mut self, time: bool) -> (i64, i64) {
        let (a, b) = if time {
            (self.time(), self.time())
        } else {
            (self.int(), self.int())
        };
        (a.min(b), a.max(b))
    }
    fn constraint(&mut self) -> Constraint {
        use Constraint::*;
        match self.below(10) {
            0 => Max(self.int()),
            1 => Min(self.int()),
            2 => {
                let (min, max) = self.ordered(false);
                Range { min, max }
            }
            3 => {
                let (not_before, not_after) = self.ordered(true);
                Window {
                    not_before,
                    not_after,
                }
            }
            4 => AllowSet(self.str_set(4)),
            5 => DenySet(self.str_set(4)),
            6 => Constraint::allow_folded(self.str_set(4)),
            7 => Constraint::deny_folded(self.str_set(4)),
            8 => Prefix(self.path()),
            _ => Exact(self.value()),
        }
    }
    fn subset<T: Ord + Clone>(&mut self, s: &BTreeSet<T>, keep: f64) -> BTreeSet<T> {
        s.iter().filter(|_| self.chance(keep)).cloned().collect()
    }
    fn vocab_set(&mut self, vocab: &[&str], p: f64) -> BTreeSet<String> {
        vocab
            .iter()
            .filter(|_| self.chance(p))
            .map(|s| s.to_string())
            .collect()
    }

    /// `None` (every scope) or a non-empty set of scopes, drawn from `held` when given.
    fn applies_to(&mut self, held: Option<&BTreeSet<String>>) -> Option<BTreeSet<String>> {
        if self.chance(0.6) {
            return None;
        }
        let mut s = match held {
            Some(h) => self.subset(h, 0.5),
            None => self.vocab_set(SCOPES, 0.4),
        };
        if s.is_empty() {
            match held {
                Some(h) => s.insert(self.pick_in(h)?),
                None => s.insert(self.pick(SCOPES).to_string()),
            };
        }
        Some(s)
    }

    fn claim(&mut self, held: Option<&BTreeSet<String>>) -> Claim {
        Claim {
            constraint: self.constraint(),
            applies_to: self.applies_to(held),
        }
    }

    /// A constraint at least as narrow as `c` (possibly equal, possibly of the kind the
    /// rules let narrow it: a range under a bound, an exact set under a folded one, a
    /// folded deny-set over an exact one).
    fn narrow(&mut self, c: &Constraint) -> Constraint {
        use Constraint::*;
        match c {
            Max(b) => match self.below(5) {
                0 => Max(i64::MIN),
                1 | 2 => Max(b.saturating_sub(self.small(3))),
                _ => {
                    let max = b.saturating_sub(self.small(3));
                    let min = if self.chance(0.3) {
                        i64::MIN
                    } else {
                        max.saturating_sub(self.small(200))
                    };
                    Range { min, max }
                }
            },
            Min(b) => match self.below(5) {
                0 => Min(i64::MAX),
                1 | 2 => Min(b.saturating_add(self.small(3))),
                _ => {
                    let min = b.saturating_add(self.small(3));
                    let max = if self.chance(0.3) {
                        i64::MAX
                    } else {
                        min.saturating_add(self.small(200))
                    };
                    Range { min, max }
                }
            },
            Range { min, max } => {
                let (lo, hi) = self.inside(*min, *max);
                Range { min: lo, max: hi }
            }
            Window {
                not_before,
                not_after,
            } => {
                let (lo, hi) = self.inside(*not_before, *not_after);
                Window {
                    not_before: lo,
                    not_after: hi,
                }
            }
            AllowSet(s) => AllowSet(self.subset(s, 0.7)),
            DenySet(s) => {
                let mut s = s.clone();
                s.extend(self.str_set(2));
                if s.len() <= SMALL_SET && self.chance(0.3) {
                    Constraint::deny_folded(s)
                } else {
                    DenySet(s)
                }
            }
            AllowFolded(s) => {
                if self.chance(0.4) {
                    // Exact members, in any case or width, whose fold the parent allows.
                    let members: Vec<String> = s.iter().flat_map(|m| variants(m)).collect();
                    AllowSet(
                        members
                            .into_iter()
                            .filter(|v| self.chance(0.4) && s.contains(&text::fold(v)))
                            .collect(),
                    )
                } else {
                    AllowFolded(self.subset(s, 0.7))
                }
            }
            DenyFolded(s) => {
                let mut s = s.clone();
                let extra = self.str_set(2);
                s.extend(extra.iter().map(|x| text::fold(x)));
                DenyFolded(s)
            }
            Prefix(p) => match self.below(4) {
                0 => Prefix(p.clone()),
                1 if !p.ends_with('/') => Prefix(format!("{p}/")),
                _ => {
                    let seg = *self.pick::<&str>(SEGMENTS);
                    let mut j = join(p, seg);
                    if self.chance(0.3) {
                        j.push('/');
                    }
                    Prefix(j)
                }
            },
            Exact(v) => Exact(v.clone()),
        }
    }

    /// A sub-interval of `lo..=hi` (for an empty one, bounds moved inwards).
    fn inside(&mut self, lo: i64, hi: i64) -> (i64, i64) {
        let a = lo.saturating_add(self.small(3));
        let b = hi.saturating_sub(self.small(3));
        if lo > hi {
            (a, b)
        } else {
            let a = a.min(hi);
            (a, b.max(a))
        }
    }

    /// A claim at least as narrow as `c` whose scopes name only `held` ones.
    fn narrow_claim(&mut self, c: &Claim, held: &BTreeSet<String>) -> Claim {
        let applies_to = match &c.applies_to {
            None => None,
            Some(s) if s.is_subset(held) => match self.below(4) {
                0 => None,
                1 | 2 => {
                    // At least one more scope when the parent holds one.
                    let more: BTreeSet<String> = held.difference(s).cloned().collect();
                    let mut s = s.clone();
                    s.extend(self.pick_in(&more));
                    s.extend(self.subset(&more, 0.3));
                    Some(s)
                }
                _ => Some(s.clone()),
            },
            Some(_) => None,
        };
        Claim {
            constraint: self.narrow(&c.constraint),
            applies_to,
        }
    }

    /// A constraint of a kind the rules never compare with `c`.
    fn other_kind(&mut self, c: &Constraint) -> Constraint {
        loop {
            let o = self.constraint();
            if !comparable(c, &o) {
                return o;
            }
        }
    }

    /// A constraint that permits something `c` does not, or is of a kind never compared
    /// with it. Checked with the oracle, not with the rules.
    fn widen(&mut self, c: &Constraint) -> Constraint {
        use Constraint::*;
        if self.chance(0.2) {
            return self.other_kind(c);
        }
        let w = match c {
            Max(b) if *b < i64::MAX => {
                let up = b.saturating_add(1 + self.small(3));
                if self.chance(0.3) {
                    Range {
                        min: up.saturating_sub(self.small(50)),
                        max: up,
                    }
                } else {
                    Max(if self.chance(0.3) { i64::MAX } else { up })
                }
            }
            Min(b) if *b > i64::MIN => {
                let down = b.saturating_sub(1 + self.small(3));
                if self.chance(0.3) {
                    Range {
                        min: down,
                        max: down.saturating_add(self.small(50)),
                    }
                } else {
                    Min(if self.chance(0.3) { i64::MIN } else { down })
                }
            }
            Range { min, max }
            | Window {
                not_before: min,
                not_after: max,
            } if min <= max => {
                let (lo, hi) = match self.below(2) {
                    0 if *min > i64::MIN => (min.saturating_sub(1 + self.small(3)), *max),
                    _ if *max < i64::MAX => (*min, max.saturating_add(1 + self.small(3))),
                    _ => (min.saturating_sub(1), *max),
                };
                if matches!(c, Range { .. }) {
                    Range { min: lo, max: hi }
                } else {
                    Window {
                        not_before: lo,
                        not_after: hi,
                    }
                }
            }
            AllowSet(s) => {
                if self.chance(0.3) {
                    Constraint::allow_folded(s.iter().cloned())
                } else {
                    let mut s = s.clone();
                    let extra = (0..8).map(|_| self.string()).find(|x| !s.contains(x));
                    s.insert(extra.unwrap_or_else(|| FREE_STR.to_string()));
                    AllowSet(s)
                }
            }
            DenySet(s) if !s.is_empty() => {
                let gone = self.pick_in(s).unwrap();
                if s.len() <= SMALL_SET && self.chance(0.3) {
                    // Case-insensitive, but no longer covering `gone` in any case.
                    let g = text::fold(&gone);
                    Constraint::deny_folded(s.iter().filter(|m| text::fold(m) != g).cloned())
                } else {
                    let mut s = self.subset(s, 0.5);
                    s.remove(&gone);
                    DenySet(s)
                }
            }
            AllowFolded(s) => {
                let extra = (0..8)
                    .map(|_| self.string())
                    .find(|x| !s.contains(&text::fold(x)))
                    .unwrap_or_else(|| FREE_STR.to_string());
                if self.chance(0.4) {
                    let mut members = self.subset(s, 0.5);
                    members.insert(if self.chance(0.5) {
                        extra.to_uppercase()
                    } else {
                        extra
                    });
                    AllowSet(members)
                } else {
                    let mut s = s.clone();
                    s.insert(text::fold(&extra));
                    AllowFolded(s)
                }
            }
            DenyFolded(s) if !s.is_empty() => {
                if self.chance(0.3) {
                    DenySet(s.iter().flat_map(|m| variants(m)).collect())
                } else {
                    let gone = self.pick_in(s).unwrap();
                    let mut s = s.clone();
                    s.remove(&gone);
                    DenyFolded(s)
                }
            }
            Prefix(p) if p != "/" => {
                let trimmed = p.trim_end_matches('/');
                match self.below(4) {
                    0 if p.ends_with('/') => Prefix(trimmed.to_string()),
                    1 => Prefix(match trimmed.rfind('/') {
                        Some(i) => trimmed[..=i].to_string(),
                        None => "/".into(),
                    }),
                    2 if !p.ends_with('/') => Prefix(format!("{p}x")),
                    _ => Prefix(format!("/~{}", p.trim_start_matches('/'))),
                }
            }
            Exact(v) => {
                let mut o = tweak(v);
                if self.chance(0.3) {
                    o = self.value();
                    if &o == v {
                        o = tweak(v);
                    }
                }
                Exact(o)
            }
            _ => self.other_kind(c),
        };
        if constraint_within(c, &w) {
            self.other_kind(c)
        } else {
            w
        }
    }

    /// A claim that permits something `c` does not: a wider constraint, or the same
    /// constraint on fewer (or other) scopes among `held`.
    fn widen_claim(&mut self, c: &Claim, held: &BTreeSet<String>) -> Claim {
        if self.chance(0.35) {
            let applies_to = match &c.applies_to {
                None => {
                    let mut s = self.subset(held, 0.5);
                    if s.is_empty() {
                        s.insert(
                            held.iter()
                                .next()
                                .cloned()
                                .unwrap_or_else(|| self.pick(SCOPES).to_string()),
                        );
                    }
                    Some(s)
                }
                Some(s) => {
                    let gone = self.pick_in(s).unwrap_or_default();
                    let mut t = s.clone();
                    t.remove(&gone);
                    let others: BTreeSet<String> =
                        held.iter().filter(|x| **x != gone).cloned().collect();
                    t.extend(self.subset(&others, 0.3));
                    if t.is_empty() {
                        t.extend(others.into_iter().take(1));
                    }
                    (!t.is_empty()).then_some(t)
                }
            };
            if let Some(a) = applies_to {
                let w = Claim {
                    constraint: if self.chance(0.5) {
                        c.constraint.clone()
                    } else {
                        self.narrow(&c.constraint)
                    },
                    applies_to: Some(a),
                };
                if !claim_within(c, &w) {
                    return w;
                }
            }
        }
        Claim {
            constraint: self.widen(&c.constraint),
            applies_to: c.applies_to.clone(),
        }
    }

    fn ttl(&mut self, expires_at: UnixMillis, now: UnixMillis) -> Option<u64> {
        let remaining = expires_at.0.saturating_sub(now.0) / 1000;
        match self.below(9) {
            0..=2 => None,
            3 => Some(remaining),
            4 => Some(remaining.saturating_add(1)),
            5 => Some(0),
            6 => Some(u64::MAX),
            7 => Some(remaining.saturating_sub(1).max(1)),
            _ => Some(self.0.random_range(1..=1000)),
        }
    }

    fn uses(&mut self, parent: Option<u32>) -> Option<u32> {
        match self.below(10) {
            0..=5 => None,
            6 => Some(0),
            7 => Some(parent.map_or(1, |p| p.saturating_add(1))),
            8 => Some(parent.map_or(1, |p| p.saturating_sub(1))),
            _ => Some(self.0.random_range(1..=6)),
        }
    }

    /// rctx keys to drop: some of the parent's, rarely one it lacks.
    fn drops(&mut self, parent: &TokenRecord) -> BTreeSet<String> {
        let keys: BTreeSet<String> = parent.rctx.keys().cloned().collect();
        let mut d = if self.chance(0.35) {
            self.subset(&keys, 0.5)
        } else {
            BTreeSet::new()
        };
        if self.chance(0.06) {
            d.insert(if self.chance(0.5) {
                ABSENT_KEY.to_string()
            } else {
                self.pick(TCTX_KEYS).to_string()
            });
        }
        d
    }

    /// Grows a request towards or past a size limit: a bulk claim, a long purpose, or
    /// claims up to about `MAX_CLAIMS`.
    fn oversize(&mut self, req: &mut ChildRequest) {
        match self.below(3) {
            0 => {
                let n = 58 + self.below(7);
                req.claims.insert(
                    format!("{BULK_NAME}2"),
                    every(Constraint::DenySet(bulk_members(n, "o"))),
                );
            }
            1 => req.purpose = Some("p".repeat(MAX_CONTEXT_BYTES - self.below(200))),
            _ => {
                for i in 0..MAX_CLAIMS + 1 - self.below(6) {
                    req.claims
                        .insert(format!("f{i}"), every(Constraint::Max(i as i64)));
                }
            }
        }
    }

    fn audience_from(&mut self, targets: &BTreeSet<String>) -> Party {
        match self.pick_in(targets) {
            Some(t) if self.chance(0.85) => party(&t),
            _ if self.chance(0.2) => party(OUTSIDER),
            _ => party(self.pick::<&str>(PARTIES)),
        }
    }

    /// Any request: fully random, a copy of the parent's grant, or the parent's grant
    /// mutated slightly in either direction on every dimension; sometimes grown past a
    /// size limit.
    fn request(&mut self, parent: &TokenRecord, now: UnixMillis) -> (String, ChildRequest) {
        let pg = &parent.grant;
        let caller = if self.chance(0.9) {
            parent.audience.id.clone()
        } else {
            self.pick(PARTIES).to_string()
        };
        let purpose = self.chance(0.3).then(|| "sub-task".to_string());
        let mut req = match self.below(6) {
            0 => ChildRequest {
                audience: self.audience_from(&pg.targets),
                targets: self.vocab_set(PARTIES, 0.5),
                scopes: {
                    let mut s = self.vocab_set(SCOPES, 0.5);
                    if self.chance(0.1) {
                        s.insert(FOREIGN_SCOPE.into());
                    }
                    s
                },
                claims: (0..self.below(4))
                    .map(|_| (self.pick(NAMES).to_string(), self.claim(None)))
                    .collect(),
                ttl_secs: self.ttl(pg.expires_at, now),
                purpose,
                max_uses: None,
                require_action_check: false,
                drop_rctx: BTreeSet::new(),
            },
            1 => ChildRequest {
                audience: self.audience_from(&pg.targets),
                targets: pg.targets.clone(),
                scopes: pg.scopes.clone(),
                claims: if self.chance(0.5) {
                    pg.claims.clone()
                } else {
                    Claims::new()
                },
                ttl_secs: if self.chance(0.6) {
                    None
                } else {
                    self.ttl(pg.expires_at, now)
                },
                purpose,
                max_uses: None,
                require_action_check: false,
                drop_rctx: BTreeSet::new(),
            },
            _ => {
                let mut targets = self.subset(&pg.targets, 0.8);
                if self.chance(0.1) {
                    targets.insert(self.pick(PARTIES).to_string());
                }
                let mut scopes = self.subset(&pg.scopes, 0.8);
                if self.chance(0.1) {
                    scopes.insert(
                        if self.chance(0.5) {
                            FOREIGN_SCOPE
                        } else {
                            *self.pick(SCOPES)
                        }
                        .to_string(),
                    );
                }
                let mut claims = Claims::new();
                for (n, c) in &pg.claims {
                    let child = match self.below(12) {
                        0..=3 => continue,
                        4 => c.clone(),
                        5..=8 => self.narrow_claim(c, &pg.scopes),
                        9 | 10 => self.widen_claim(c, &pg.scopes),
                        _ => self.claim(Some(&pg.scopes)),
                    };
                    claims.insert(n.clone(), child);
                }
                for _ in 0..self.below(3) {
                    let name = if self.chance(0.5) {
                        FRESH_NAME
                    } else {
                        *self.pick(NAMES)
                    };
                    let mut c = self.claim(Some(&pg.scopes));
                    if self.chance(0.08) {
                        c.applies_to
                            .get_or_insert_with(BTreeSet::new)
                            .insert(FOREIGN_SCOPE.into());
                    }
                    claims.insert(name.to_string(), c);
                }
                ChildRequest {
                    audience: self.audience_from(&pg.targets),
                    targets,
                    scopes,
                    claims,
                    ttl_secs: self.ttl(pg.expires_at, now),
                    purpose,
                    max_uses: None,
                    require_action_check: false,
                    drop_rctx: BTreeSet::new(),
                }
            }
        };
        req.max_uses = self.uses(pg.max_uses);
        req.require_action_check = self.chance(0.25);
        req.drop_rctx = self.drops(parent);
        if self.chance(0.04) {
            self.oversize(&mut req);
        }
        (caller, req)
    }

    /// A request that narrows gently (so chains grow long): a fresh audience from the
    /// targets, one or two small narrowings, everything else kept.
    fn gentle_request(
        &mut self,
        parent: &TokenRecord,
        now: UnixMillis,
        allow_loops: bool,
    ) -> ChildRequest {
        let pg = &parent.grant;
        let acting: BTreeSet<&str> = parent
            .actors
            .iter()
            .map(|a| a.id.as_str())
            .chain([parent.audience.id.as_str()])
            .collect();
        let fresh: BTreeSet<String> = pg
            .targets
            .iter()
            .filter(|t| allow_loops || !acting.contains(t.as_str()))
            .cloned()
            .collect();
        let audience = match self.pick_in(&fresh) {
            Some(t) => party(&t),
            None => self.audience_from(&pg.targets),
        };
        // Onward targets: none already in the chain (unless loops are allowed).
        let targets = pg
            .targets
            .iter()
            .filter(|t| allow_loops || (!acting.contains(t.as_str()) && **t != audience.id))
            .cloned()
            .collect();
        let mut req = ChildRequest {
            audience,
            targets,
            scopes: pg.scopes.clone(),
            claims: Claims::new(),
            ttl_secs: None,
            purpose: None,
            max_uses: None,
            require_action_check: false,
            drop_rctx: BTreeSet::new(),
        };
        for _ in 0..1 + self.below(2) {
            match self.below(9) {
                0 => {
                    if let Some(s) = self.pick_in(&req.scopes) {
                        req.scopes.remove(&s);
                    }
                }
                1 => {
                    if let Some(t) = self.pick_in(&req.targets) {
                        req.targets.remove(&t);
                    }
                }
                2 | 3 => {
                    let names: BTreeSet<String> = pg.claims.keys().cloned().collect();
                    if let Some(n) = self.pick_in(&names) {
                        let c = self.narrow_claim(&pg.claims[&n], &pg.scopes);
                        req.claims.insert(n, c);
                    }
                }
                4 => {
                    let n = self.pick(NAMES).to_string();
                    let c = match pg.claims.get(&n) {
                        Some(p) => self.narrow_claim(p, &pg.scopes),
                        None => self.claim(Some(&pg.scopes)),
                    };
                    req.claims.insert(n, c);
                }
                5 => req.require_action_check = true,
                6 => {
                    let keys: BTreeSet<String> = parent.rctx.keys().cloned().collect();
                    req.drop_rctx = self.subset(&keys, 0.5);
                    req.max_uses = pg.max_uses.map(|u| u.saturating_sub(1).max(1));
                }
                7 => req.max_uses = Some(pg.max_uses.unwrap_or(4).min(1 + self.below(4) as u32)),
                _ => {
                    let remaining = pg.expires_at.0.saturating_sub(now.0) / 1000;
                    req.ttl_secs = Some(remaining.saturating_sub(self.below(3) as u64).max(1));
                }
            }
        }
        req
    }

    /// A random action biased towards what `grants[0]` permits, using boundary values of
    /// every grant's claims (so the action sits where a wider child would differ). An
    /// attribute usually carries one value, sometimes several, sometimes none.
    fn action(&mut self, grants: &[&Grant], pools: &Pools) -> (String, Attributes) {
        let first = grants[0];
        let scope = match self.pick_in(&first.scopes) {
            Some(s) if self.chance(0.85) => s,
            _ if self.chance(0.2) => FOREIGN_SCOPE.to_string(),
            _ => self.pick(SCOPES).to_string(),
        };
        let mut names: BTreeSet<String> = NAMES.iter().map(|s| s.to_string()).collect();
        names.insert(FRESH_NAME.into());
        for g in grants {
            names.extend(g.claims.keys().cloned());
        }
        let mut attrs = Attributes::new();
        for n in names {
            if self.chance(0.04) {
                continue;
            }
            let empty = Pool::default();
            let pool = pools.get(&n).unwrap_or(&empty);
            let permitted = match first.claims.get(&n) {
                Some(c) if applies(c, &scope) => &pool.permitted,
                _ => &pool.all,
            };
            let k = match self.below(25) {
                0 => 0,
                1..=4 => 2 + self.below(3),
                _ => 1,
            };
            let values = (0..k)
                .map(|_| {
                    if !permitted.is_empty() && self.chance(0.9) {
                        self.pick(permitted).clone()
                    } else if !pool.all.is_empty() && self.chance(0.7) {
                        self.pick(&pool.all).clone()
                    } else {
                        self.value()
                    }
                })
                .collect();
            attrs.insert(n, values);
        }
        (scope, attrs)
    }
}

/// Everything `child` permits (random boundary actions and, per scope, the multi-valued
/// witnesses) is permitted by every one of `ancestors`.
fn check_no_escalation(
    g: &mut Gen,
    child: &Grant,
    ancestors: &[&Grant],
) -> Result<(), TestCaseError> {
    let mut all = vec![child];
    all.extend_from_slice(ancestors);
    let pools = pools(&all);
    for _ in 0..ACTIONS_PER_CHECK {
        let (scope, attrs) = g.action(&all, &pools);
        if child.authorize(&scope, &attrs).is_ok() {
            for (i, a) in ancestors.iter().enumerate() {
                prop_assert!(
                    a.authorize(&scope, &attrs).is_ok(),
                    "escalation: child permits {scope} {attrs:?} but ancestor {i} denies: {:?}\nchild {child:?}\nancestor {a:?}",
                    a.authorize(&scope, &attrs)
                );
            }
        }
    }
    for scope in &child.scopes {
        for hostile in [false, true] {
            let Some(w) = witness(child, &pools, scope, hostile) else {
                continue;
            };
            prop_assert!(
                child.authorize(scope, &w).is_ok(),
                "witness {scope} {w:?} not permitted by {child:?}: {:?}",
                child.authorize(scope, &w)
            );
            for (i, a) in ancestors.iter().enumerate() {
                prop_assert!(
                    a.authorize(scope, &w).is_ok(),
                    "escalation: child permits witness {scope} {w:?} but ancestor {i} denies: {:?}",
                    a.authorize(scope, &w)
                );
            }
        }
    }
    Ok(())
}

/// The structural invariants of a child accepted for `req`.
fn check_child(
    parent: &TokenRecord,
    req: &ChildRequest,
    child: &TokenRecord,
    policy: &Policy,
    now: UnixMillis,
) -> Result<(), TestCaseError> {
    let (pg, cg) = (&parent.grant, &child.grant);
    // A consent covers one action of the token it was redeemed for, never a descendant.
    prop_assert!(child.consent.is_none(), "consent mark inherited");
    prop_assert!(cg.expires_at <= pg.expires_at, "child outlives parent");
    prop_assert!(cg.expires_at > now, "child born expired");
    prop_assert!(cg.scopes.is_subset(&pg.scopes), "scopes widened");
    prop_assert!(cg.targets.is_subset(&pg.targets), "targets widened");
    prop_assert!(
        pg.targets.contains(&child.audience.id),
        "audience outside parent targets"
    );
    for (n, p) in &pg.claims {
        let Some(c) = cg.claims.get(n) else {
            return Err(TestCaseError::fail(format!("claim {n} dropped")));
        };
        prop_assert!(
            claim_within(p, c),
            "claim {n} widened: {p} -> {c} (scope witness {:?}, value witness {:?})",
            scope_witness(p, c),
            value_witness(&p.constraint, &c.constraint, &[])
        );
        prop_assert!(p.is_narrowed_by(c), "claim {n}: {p} -> {c}");
    }
    let requested = requested_claims(pg, req);
    for (n, c) in &cg.claims {
        match requested.get(n) {
            Some(r) => {
                prop_assert_eq!(r, c, "claim {} is not the one requested", n);
                // Scopes the request named (inherited ones are the parent's business).
                if let Some(s) = req.claims.get(n).and_then(|x| x.applies_to.as_ref()) {
                    prop_assert!(
                        s.is_subset(&pg.scopes),
                        "claim {n} names a scope the parent lacks"
                    );
                }
            }
            None => prop_assert_eq!(pg.claims.get(n), Some(c), "claim {} invented", n),
        }
    }
    prop_assert_ne!(cg, pg, "child grant identical to parent's");
    prop_assert!(
        cg.require_action_check == (pg.require_action_check || req.require_action_check),
        "require_action_check: parent {}, request {}, child {}",
        pg.require_action_check,
        req.require_action_check,
        cg.require_action_check
    );
    match (pg.max_uses, cg.max_uses) {
        (Some(p), Some(c)) => prop_assert!((1..=p).contains(&c), "uses {p} -> {c}"),
        (Some(p), None) => prop_assert!(false, "uses {p} -> unlimited"),
        (None, Some(c)) => prop_assert!(c >= 1),
        (None, None) => {}
    }
    prop_assert_eq!(child.txn, parent.txn);
    prop_assert_eq!(&child.subject, &parent.subject);
    prop_assert_eq!(&child.trust_domain, &parent.trust_domain);
    prop_assert_eq!(&child.tctx, &parent.tctx);
    for (k, v) in &child.rctx {
        prop_assert_eq!(
            parent.rctx.get(k),
            Some(v),
            "rctx {} invented or changed",
            k
        );
    }
    let mut kept = parent.rctx.clone();
    kept.retain(|k, _| !req.drop_rctx.contains(k));
    prop_assert_eq!(
        &child.rctx,
        &kept,
        "rctx is not the parent's minus the drops"
    );
    prop_assert_eq!(
        &child.purpose,
        req.purpose.as_ref().unwrap_or(&parent.purpose)
    );
    prop_assert_eq!(child.parent, Some(parent.token_id));
    prop_assert_eq!(child.depth, parent.depth + 1);
    prop_assert!(
        child.depth <= policy.max_depth,
        "depth {} > max {}",
        child.depth,
        policy.max_depth
    );
    let mut actors = parent.actors.clone();
    actors.push(parent.audience.clone());
    prop_assert_eq!(&child.actors, &actors);
    prop_assert_eq!(child.current_actor(), &parent.audience);
    prop_assert_eq!(child.issued_at, now);
    prop_assert_eq!(child.idempotency, None);
    if !policy.allow_actor_loops {
        let ids: BTreeSet<&str> = child.actors.iter().map(|a| a.id.as_str()).collect();
        prop_assert_eq!(ids.len(), child.actors.len(), "an actor repeats");
        prop_assert!(
            !ids.contains(child.audience.id.as_str()),
            "audience already acted"
        );
    }
    prop_assert!(cg.size() <= MAX_GRANT_BYTES, "grant of {} bytes", cg.size());
    prop_assert!(cg.claims.len() <= MAX_CLAIMS);
    prop_assert!(child.context_size() <= MAX_CONTEXT_BYTES);
    let encoded = postcard::to_allocvec(child).unwrap().len();
    prop_assert!(encoded <= MAX_RECORD_BYTES, "record of {encoded} bytes");
    let lines = narrowed(parent, child);
    prop_assert!(!lines.is_empty(), "an accepted child narrowed nothing");
    for l in &lines {
        prop_assert!(l.len() <= MAX_NARROWED_LINE, "{} bytes: {}", l.len(), l);
    }
    Ok(())
}

/// Runs one downscope and checks it against the oracle; returns the child if accepted.
fn attempt(
    parent: &TokenRecord,
    caller: &str,
    req: ChildRequest,
    policy: &Policy,
    now: UnixMillis,
    n: u64,
) -> Result<Option<TokenRecord>, TestCaseError> {
    let expected = violations(parent, caller, &req, policy, now);
    let kept = req.clone();
    match narrow::downscope(parent, caller, req, policy, new_token(n, now)) {
        Ok(child) => {
            prop_assert!(
                expected.is_empty(),
                "accepted despite {expected:?}: caller {caller} req {kept:?}"
            );
            check_child(parent, &kept, &child, policy, now)?;
            Ok(Some(child))
        }
        Err(e) => {
            prop_assert!(
                expected.contains(&e.dimension),
                "refused on {:?} ({}) but the oracle found only {expected:?}: caller {caller} req {kept:?}",
                e.dimension,
                e.detail
            );
            prop_assert!(!e.detail.is_empty());
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------
// Properties 1, 2: one hop from an arbitrary parent
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(384))]

    /// Whenever downscope accepts, the child permits nothing the parent does not and
    /// keeps every structural invariant; whatever it decides agrees with the oracle.
    #[test]
    fn accepted_children_never_escalate((policy, parent) in parent_s(), seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        for i in 0..8 {
            let now = match g.below(10) {
                0 => UnixMillis(parent.grant.expires_at.0.saturating_sub(1)),
                1 => parent.grant.expires_at,
                2 => UnixMillis(parent.grant.expires_at.0.saturating_add(1)),
                3 => UnixMillis(BASE + g.0.random_range(0..5000)),
                _ => UnixMillis(BASE),
            };
            let (caller, req) = g.request(&parent, now);
            if let Some(child) = attempt(&parent, &caller, req, &policy, now, i)? {
                check_no_escalation(&mut g, &child.grant, &[&parent.grant])?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Property 3: chains
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// A chain of 1..=10 hops, each derived by the previous audience: every accepted
    /// token at any depth permits nothing the root (or any ancestor) does not, never
    /// clears `require_action_check`, never gains request context, and no token is
    /// deeper than the policy allows.
    #[test]
    fn chains_never_exceed_the_root(
        mut root_req in mint_req_s(),
        policy in policy_s(),
        hops in 1usize..=10,
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let mut now = UnixMillis(BASE);
        if !policy.allow_actor_loops {
            root_req.targets.remove(&root_req.audience.id);
            root_req.targets.remove("gw");
        }
        prop_assert_eq!(mint_violations(&root_req, "gw", &policy), vec![]);
        let root = narrow::mint(root_req.clone(), party("gw"), "td.example", &policy, new_token(0, now)).unwrap();
        prop_assert_eq!(root.depth, 0);
        prop_assert_eq!(&root.actors, &vec![party("gw")]);
        prop_assert_eq!(&root.grant.scopes, &root_req.scopes);
        prop_assert_eq!(&root.grant.claims, &root_req.claims);
        prop_assert_eq!(root.grant.require_action_check, root_req.require_action_check);
        prop_assert_eq!(root.grant.expires_at, now.plus_secs(root_req.ttl_secs.unwrap_or(300)));

        let mut chain = vec![root];
        let mut past_max_depth = 0;
        for attempt_no in 0..hops * 3 {
            if chain.len() > hops {
                break;
            }
            now = UnixMillis(now.0 + g.0.random_range(0..3000));
            let cur = chain.last().unwrap();
            // At the deepest allowed token, two attempts (refused on depth) are enough.
            if cur.depth >= policy.max_depth {
                past_max_depth += 1;
                if past_max_depth > 2 {
                    break;
                }
            }
            let (caller, req) = if g.chance(0.75) {
                (cur.audience.id.clone(), g.gentle_request(cur, now, policy.allow_actor_loops))
            } else {
                g.request(cur, now)
            };
            if let Some(child) = attempt(cur, &caller, req, &policy, now, attempt_no as u64 + 1)? {
                let ancestors: Vec<&Grant> = chain.iter().rev().map(|t| &t.grant).collect();
                check_no_escalation(&mut g, &child.grant, &ancestors)?;
                prop_assert!(child.depth as usize == chain.len());
                chain.push(child);
            }
        }
        let root = &chain[0];
        for pair in chain.windows(2) {
            prop_assert!(pair[1].grant.require_action_check >= pair[0].grant.require_action_check);
        }
        for t in &chain {
            prop_assert!(t.depth <= policy.max_depth);
            prop_assert!(t.grant.scopes.is_subset(&root.grant.scopes));
            prop_assert!(t.grant.targets.is_subset(&root.grant.targets));
            prop_assert!(t.grant.expires_at <= root.grant.expires_at);
            prop_assert!(t.grant.require_action_check >= root.grant.require_action_check);
            prop_assert_eq!(t.txn, root.txn);
            prop_assert_eq!(&t.subject, &root.subject);
            prop_assert_eq!(&t.trust_domain, &root.trust_domain);
            prop_assert_eq!(&t.tctx, &root.tctx);
            for (k, v) in &t.rctx {
                prop_assert_eq!(root.rctx.get(k), Some(v));
            }
            prop_assert_eq!(t.actors.len(), t.depth as usize + 1);
            for (n, p) in &root.grant.claims {
                prop_assert!(t.grant.claims.get(n).is_some_and(|c| p.is_narrowed_by(c)), "claim {n} of the root");
            }
        }
        // Semantically too, the deepest token's claims are within the root's (each hop's
        // were checked against its parent by `check_child`).
        let last = chain.last().unwrap();
        for (n, p) in &root.grant.claims {
            let c = &last.grant.claims[n];
            prop_assert!(claim_within(p, c), "claim {n}: root {p} -> depth {} {c}", last.depth);
        }
    }
}

// ---------------------------------------------------------------------------------
// Property 4: the partial order on constraints and claims
// ---------------------------------------------------------------------------------

/// One constraint of a partial-order check, with what it permits of a shared pool of
/// values (the candidates of every constraint in the check, and some random values).
struct Judged<'a> {
    c: &'a Constraint,
    permits: Vec<bool>,
    well_formed: bool,
}

fn judge<'a>(all: &[&'a Constraint], extra: &[Value]) -> (Vec<Value>, Vec<Judged<'a>>) {
    let mut pool: Vec<Value> = all.iter().flat_map(|c| candidates(c)).collect();
    pool.extend(extra.iter().cloned());
    pool.sort();
    pool.dedup();
    let judged = all
        .iter()
        .map(|c| Judged {
            c,
            permits: pool.iter().map(|v| c.permits(v).is_ok()).collect(),
            well_formed: well_formed(c),
        })
        .collect();
    (pool, judged)
}

/// Soundness (whatever the rules accept, no value separates) on every input; exactness
/// (whatever they refuse between comparable kinds, some value separates) on well-formed
/// ones.
fn check_sound_and_exact(
    pool: &[Value],
    pj: &Judged<'_>,
    cj: &Judged<'_>,
) -> Result<(), TestCaseError> {
    let (p, c) = (pj.c, cj.c);
    let witness = (0..pool.len())
        .find(|&i| cj.permits[i] && !pj.permits[i])
        .map(|i| &pool[i]);
    if p.is_narrowed_by(c) {
        prop_assert!(
            comparable(p, c),
            "{p} narrowed by {c}, a kind pair never compared"
        );
        prop_assert!(
            witness.is_none(),
            "{c} permits {:?} but its parent {p} does not",
            witness
        );
    } else if comparable(p, c) && pj.well_formed && cj.well_formed {
        prop_assert!(
            witness.is_some(),
            "{p} is not narrowed by {c}, yet no value separates them"
        );
    }
    if p.is_narrowed_by(c) && c.is_narrowed_by(p) {
        prop_assert_eq!(p, c, "the order is not antisymmetric");
    }
    Ok(())
}

fn check_claims_sound_and_exact(
    pool: &[Value],
    (p, pj): (&Claim, &Judged<'_>),
    (c, cj): (&Claim, &Judged<'_>),
) -> Result<(), TestCaseError> {
    let scope = scope_witness(p, c);
    let value = (0..pool.len())
        .find(|&i| cj.permits[i] && !pj.permits[i])
        .map(|i| &pool[i]);
    if p.is_narrowed_by(c) {
        prop_assert!(comparable(&p.constraint, &c.constraint));
        prop_assert!(
            scope.is_none(),
            "{c} frees scope {:?} that {p} constrains",
            scope
        );
        prop_assert!(
            value.is_none(),
            "{c} permits {:?} but its parent {p} does not",
            value
        );
    } else if comparable(&p.constraint, &c.constraint)
        && claim_well_formed(p)
        && claim_well_formed(c)
    {
        prop_assert!(
            scope.is_some() || value.is_some(),
            "{p} is not narrowed by {c}, yet no scope or value separates them"
        );
    }
    if p.is_narrowed_by(c) && c.is_narrowed_by(p) {
        prop_assert_eq!(p, c, "the order is not antisymmetric");
    }
    Ok(())
}

fn all_scopes() -> BTreeSet<String> {
    SCOPES.iter().map(|s| s.to_string()).collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn constraint_order_is_a_sound_partial_order(
        a in constraint_s(),
        x in any_constraint_s(),
        y in any_constraint_s(),
        z in constraint_s(),
        d in degenerate_s(),
        extra in pvec(value_s(), 0..6),
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let b = g.narrow(&a);
        let c = g.narrow(&b);
        let w = g.widen(&a);
        let dn = g.narrow(&d);
        for k in [&a, &b, &c, &w, &x, &y, &z, &d, &dn] {
            prop_assert!(k.is_narrowed_by(k), "not reflexive: {k}");
        }
        prop_assert!(a.is_narrowed_by(&b) && b.is_narrowed_by(&c), "narrow() produced a wider constraint: {a} -> {b} -> {c}");
        prop_assert!(a.is_narrowed_by(&c), "not transitive: {a} ⊒ {b} ⊒ {c}");
        prop_assert!(d.is_narrowed_by(&dn), "narrow() produced a wider constraint: {d} -> {dn}");
        prop_assert!(!a.is_narrowed_by(&w), "widen() produced {w} from {a}");
        for (p, q, r) in [(&x, &y, &z), (&a, &x, &c), (&x, &a, &b), (&a, &b, &x), (&d, &dn, &x)] {
            if p.is_narrowed_by(q) && q.is_narrowed_by(r) {
                prop_assert!(p.is_narrowed_by(r), "not transitive: {p} ⊒ {q} ⊒ {r}");
            }
        }
        let (pool, judged) = judge(&[&a, &b, &c, &w, &x, &y, &z, &d, &dn], &extra);
        for p in &judged {
            for q in &judged {
                check_sound_and_exact(&pool, p, q)?;
            }
        }
    }

    /// The same for whole claims: a narrower constraint on at least the same scopes.
    #[test]
    fn claim_order_is_sound_and_exact(
        a in claim_s(),
        x in claim_s(),
        y in claim_s(),
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let held = all_scopes();
        let b = g.narrow_claim(&a, &held);
        let w = g.widen_claim(&a, &held);
        prop_assert!(a.is_narrowed_by(&b), "narrow_claim() produced a wider claim: {a} -> {b}");
        prop_assert!(!a.is_narrowed_by(&w), "widen_claim() produced {w} from {a}");
        let all = [&a, &b, &w, &x, &y];
        let constraints: Vec<&Constraint> = all.iter().map(|c| &c.constraint).collect();
        let (pool, judged) = judge(&constraints, &[]);
        for (p, pj) in all.iter().zip(&judged) {
            for (q, qj) in all.iter().zip(&judged) {
                check_claims_sound_and_exact(&pool, (p, pj), (q, qj))?;
            }
        }
    }

    /// Evaluation fails closed on the wrong type, for every kind.
    #[test]
    fn constraints_fail_closed_on_wrong_types(c in any_constraint_s(), i in int_s(), t in time_s(), s in str_s()) {
        use Constraint::*;
        let (int, time, string) = (Value::Int(i), Value::Time(t), Value::Str(s));
        match &c {
            Max(_) | Min(_) | Range { .. } => {
                prop_assert!(c.permits(&string).is_err() && c.permits(&time).is_err());
            }
            Window { .. } => prop_assert!(c.permits(&string).is_err() && c.permits(&int).is_err()),
            Exact(v) => {
                // The same number as the other numeric type, too: a time is not an integer.
                let twin = match v {
                    Value::Int(n) => Value::Time(*n),
                    Value::Time(n) => Value::Int(*n),
                    Value::Str(s) => Value::Int(s.len() as i64),
                };
                for x in [&int, &time, &string, &twin] {
                    prop_assert_eq!(c.permits(x).is_ok(), v == x, "{} on {:?}", c, x);
                }
            }
            _ => prop_assert!(c.permits(&int).is_err() && c.permits(&time).is_err()),
        }
    }

    /// `Grant::authorize` agrees with its restatement on random multi-valued actions, and
    /// a denial names the scope or a claim on the scope that really denies.
    #[test]
    fn authorize_agrees_with_its_restatement(grant in grant_s(), seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        let pools = pools(&[&grant]);
        for _ in 0..20 {
            let (scope, attrs) = g.action(&[&grant], &pools);
            let verdict = grant.authorize(&scope, &attrs);
            prop_assert_eq!(verdict.is_ok(), authorized(&grant, &scope, &attrs), "{} {:?}: {:?}", scope, attrs, verdict);
            if let Err(d) = verdict {
                if d.denied_by == "scope" {
                    prop_assert!(!grant.scopes.contains(&scope));
                } else {
                    let c = &grant.claims[&d.denied_by];
                    prop_assert!(applies(c, &scope));
                    let ok = attrs.get(&d.denied_by).is_some_and(|vs| !vs.is_empty() && vs.iter().all(|v| c.constraint.permits(v).is_ok()));
                    prop_assert!(!ok, "{} denied {:?} but permits it", d.denied_by, attrs.get(&d.denied_by));
                }
            }
        }
    }

    /// A prefix permits exactly the canonical paths below it (and, without a trailing
    /// `/`, the path itself), at a segment boundary: never a sibling, never a path with `..`, `.`, `//`, `\` or an encoded
    /// separator or dot, whatever the prefix (canonical or not).
    #[test]
    fn prefixes_permit_only_canonical_paths_below_them(p in prop_oneof![3 => path_s(), 1 => str_s()], q in path_s()) {
        let c = Constraint::Prefix(p.clone());
        for v in path_candidates(&p).into_iter().chain(path_candidates(&q)) {
            prop_assert_eq!(c.permits(&Value::Str(v.clone())).is_ok(), under(&p, &v), "prefix {:?}, path {:?}", p, v);
        }
    }

    /// An action that omits an attribute some claim on its scope constrains, or states it
    /// with no value, is denied, by that claim or an earlier one on the scope; once the
    /// claim no longer applies to the scope, it no longer denies.
    #[test]
    fn missing_attributes_fail_closed(mut grant in grant_s(), seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        grant.scopes.insert(g.pick::<&str>(SCOPES).to_string());
        let scope = g.pick_in(&grant.scopes).unwrap();
        let name = g.pick::<&str>(NAMES).to_string();
        let mut c = g.claim(None);
        if let Some(s) = &mut c.applies_to {
            s.insert(scope.clone());
        }
        grant.claims.insert(name.clone(), c);
        let (_, mut attrs) = g.action(&[&grant], &pools(&[&grant]));
        if g.chance(0.5) {
            attrs.remove(&name);
        } else {
            attrs.insert(name.clone(), Vec::new());
        }
        let denial = grant.authorize(&scope, &attrs);
        prop_assert!(denial.is_err());
        let d = denial.unwrap_err();
        // Claims are checked in name order, so an earlier claim may deny first.
        prop_assert!(d.denied_by <= name, "{} denied, after {}", d.denied_by, name);
        prop_assert!(applies(&grant.claims[&d.denied_by], &scope));
        let elsewhere = SCOPES.iter().find(|s| **s != scope).unwrap().to_string();
        grant.claims.get_mut(&name).unwrap().applies_to = Some([elsewhere].into());
        if let Err(d) = grant.authorize(&scope, &attrs) {
            prop_assert_ne!(d.denied_by, name);
        }
    }
}

// ---------------------------------------------------------------------------------
// Property 5: wider on exactly one dimension
// ---------------------------------------------------------------------------------

const DIMENSIONS: [Dimension; 13] = [
    Dimension::ParentExpired,
    Dimension::Holder,
    Dimension::Scopes,
    Dimension::Claims,
    Dimension::Audience,
    Dimension::Targets,
    Dimension::Expiry,
    Dimension::NotNarrower,
    Dimension::Uses,
    Dimension::Depth,
    Dimension::Loop,
    Dimension::Size,
    Dimension::Context,
];

proptest! {
    #![proptest_config(config(512))]

    /// Start from a request that would be accepted, then break exactly one dimension:
    /// the refusal names that dimension, and the message names the culprit.
    #[test]
    fn one_wider_dimension_is_refused_with_that_dimension(
        (mut policy, mut parent) in parent_s(),
        dim in select(&DIMENSIONS[..]),
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        // Make the parent admit a valid child: alive, shallow, under the size limits,
        // with a fresh target and, for the claims dimension, a claim to widen.
        let lifetime = g.0.random_range(1..=900_000);
        parent.grant.expires_at = UnixMillis(BASE + lifetime);
        parent.depth = parent.depth.min(policy.max_depth - 1);
        parent.grant.claims.remove(BULK_NAME);
        let acting: BTreeSet<String> =
            parent.actors.iter().map(|a| a.id.clone()).chain([parent.audience.id.clone()]).collect();
        let unused: Vec<&str> = PARTIES.iter().copied().filter(|p| !acting.contains(*p)).collect();
        let fresh = g.pick(&unused).to_string();
        parent.grant.targets.insert(fresh.clone());
        if parent.grant.claims.is_empty() {
            let c = g.claim(None);
            parent.grant.claims.insert(g.pick(NAMES).to_string(), c);
        }
        let pg = parent.grant.clone();
        let now = UnixMillis(BASE + g.0.random_range(0..lifetime.min(1000)));
        let remaining = (pg.expires_at.0 - now.0) / 1000;

        // The valid baseline: narrower (a fresh claim) and otherwise a random narrowing.
        let mut caller = parent.audience.id.clone();
        let rctx_keys: BTreeSet<String> = parent.rctx.keys().cloned().collect();
        let onward: BTreeSet<String> = pg
            .targets
            .iter()
            .filter(|t| !acting.contains(*t) && **t != fresh)
            .cloned()
            .collect();
        let mut req = ChildRequest {
            audience: party(&fresh),
            targets: g.subset(&onward, 0.8),
            scopes: g.subset(&pg.scopes, 0.8),
            claims: Claims::new(),
            ttl_secs: if remaining >= 1 && g.chance(0.5) { Some(g.0.random_range(1..=remaining)) } else { None },
            purpose: g.chance(0.3).then(|| "sub-task".to_string()),
            max_uses: match pg.max_uses {
                Some(p) if g.chance(0.5) => Some(g.0.random_range(1..=p)),
                None if g.chance(0.3) => Some(g.0.random_range(1..=5)),
                _ => None,
            },
            require_action_check: g.chance(0.3),
            drop_rctx: g.subset(&rctx_keys, 0.4),
        };
        for (n, c) in &pg.claims {
            if g.chance(0.5) {
                let narrower = g.narrow_claim(c, &pg.scopes);
                req.claims.insert(n.clone(), narrower);
            }
        }
        let extra = g.claim(Some(&pg.scopes));
        req.claims.insert(FRESH_NAME.into(), extra);
        prop_assert_eq!(violations(&parent, &caller, &req, &policy, now), vec![], "baseline invalid: {:?}", req);

        let mut now = now;
        let culprit: Option<String> = match dim {
            Dimension::ParentExpired => {
                now = UnixMillis(pg.expires_at.0 + if g.chance(0.5) { 0 } else { g.0.random_range(1..100_000) });
                req.ttl_secs = None;
                None
            }
            Dimension::Uses => {
                req.max_uses = match pg.max_uses {
                    Some(p) if g.chance(0.6) => Some(p + 1 + g.below(3) as u32),
                    _ => Some(0),
                };
                Some("max_uses".to_string())
            }
            Dimension::Holder => {
                caller = if g.chance(0.5) { OUTSIDER.to_string() } else { fresh.clone() };
                Some(format!("{caller:?}"))
            }
            Dimension::Scopes => {
                let extra: Vec<&str> = SCOPES.iter().copied().filter(|s| !pg.scopes.contains(*s)).collect();
                let s = if extra.is_empty() || g.chance(0.3) { FOREIGN_SCOPE } else { *g.pick(&extra) };
                req.scopes.insert(s.to_string());
                Some(format!("{s:?}"))
            }
            Dimension::Claims => {
                let names: BTreeSet<String> = pg.claims.keys().cloned().collect();
                let n = if g.chance(0.8) { g.pick_in(&names).unwrap() } else { FRESH_NAME.to_string() };
                let w = match pg.claims.get(&n) {
                    Some(p) if g.chance(0.85) => g.widen_claim(p, &pg.scopes),
                    // A scope the parent does not hold: on a restated or a new claim.
                    Some(p) => Claim {
                        constraint: p.constraint.clone(),
                        applies_to: Some([FOREIGN_SCOPE.to_string()].into()),
                    },
                    None => {
                        let mut c = req.claims[&n].clone();
                        c.applies_to.get_or_insert_with(BTreeSet::new).insert(FOREIGN_SCOPE.into());
                        c
                    }
                };
                req.claims.insert(n.clone(), w);
                Some(format!("{n:?}"))
            }
            Dimension::Audience => {
                req.audience = party(OUTSIDER);
                Some(format!("{OUTSIDER:?}"))
            }
            Dimension::Targets => {
                let extra: Vec<&str> = PARTIES
                    .iter()
                    .copied()
                    .filter(|p| !pg.targets.contains(*p) && !acting.contains(*p))
                    .collect();
                let t = if extra.is_empty() || g.chance(0.3) { OUTSIDER } else { *g.pick(&extra) };
                req.targets.insert(t.to_string());
                Some(format!("{t:?}"))
            }
            Dimension::Expiry => {
                req.ttl_secs = Some(match g.below(4) {
                    0 => 0,
                    1 => u64::MAX,
                    _ => (pg.expires_at.0 - now.0).div_ceil(1000) + g.0.random_range(0..3),
                });
                if req.ttl_secs == Some(remaining) {
                    req.ttl_secs = Some(remaining + 1);
                }
                None
            }
            Dimension::NotNarrower => {
                // Keeping every target keeps the child's own audience among them, a loop
                // unless loops are allowed: only then can a child narrow nothing.
                policy.allow_actor_loops = true;
                req.targets = pg.targets.clone();
                req.scopes = pg.scopes.clone();
                // Restating every claim, unless one names a scope the parent lacks (a
                // root may carry such a claim; restating it is refused on claims).
                let restatable = pg.claims.values().all(|c| c.applies_to.as_ref().is_none_or(|s| s.is_subset(&pg.scopes)));
                req.claims = if restatable && g.chance(0.5) { pg.claims.clone() } else { Claims::new() };
                req.ttl_secs = None;
                req.max_uses = if g.chance(0.5) { pg.max_uses } else { None };
                req.require_action_check = pg.require_action_check && g.chance(0.5);
                None
            }
            Dimension::Depth => {
                parent.depth = match g.below(3) {
                    0 => policy.max_depth,
                    1 => policy.max_depth + g.0.random_range(1..100),
                    _ => u32::MAX,
                };
                None
            }
            Dimension::Loop => {
                policy.allow_actor_loops = false;
                let back = if g.chance(0.3) { parent.audience.id.clone() } else { g.pick(&parent.actors).id.clone() };
                parent.grant.targets.insert(back.clone());
                req.audience = party(&back);
                Some(format!("{back:?}"))
            }
            Dimension::Size => match g.below(3) {
                0 => {
                    req.claims.insert(BULK_NAME.into(), every(Constraint::DenySet(bulk_members(64, "o"))));
                    Some("grant".to_string())
                }
                1 => {
                    req.purpose = Some("p".repeat(MAX_CONTEXT_BYTES - g.below(8)));
                    Some("context".to_string())
                }
                _ => {
                    let mut i = 0;
                    while merged_grant(&pg, &req, pg.expires_at).claims.len() <= MAX_CLAIMS {
                        req.claims.insert(format!("f{i}"), every(Constraint::Max(i)));
                        i += 1;
                    }
                    Some(format!("{} claims", MAX_CLAIMS + 1))
                }
            },
            Dimension::Context => {
                let tctx_only: Vec<String> =
                    parent.tctx.keys().filter(|k| !parent.rctx.contains_key(*k)).cloned().collect();
                let k = if tctx_only.is_empty() || g.chance(0.5) { ABSENT_KEY.to_string() } else { g.pick(&tctx_only).clone() };
                req.drop_rctx.insert(k.clone());
                Some(format!("{k:?}"))
            }
            // Decided by the policy (`writ_core::policy`), never by the narrowing rules.
            Dimension::Ceiling | Dimension::InvalidScope | Dimension::Party => None,
        };
        let expected = violations(&parent, &caller, &req, &policy, now);
        prop_assert_eq!(&expected, &vec![dim], "the test broke more than one dimension: {:?}", req);
        let shown = format!("{req:?}");
        match narrow::downscope(&parent, &caller, req, &policy, new_token(9, now)) {
            Ok(child) => prop_assert!(false, "accepted a request wider on {dim:?}: {shown} -> {child:?}"),
            Err(e) => {
                prop_assert_eq!(e.dimension, dim, "{}", e.detail);
                if let Some(name) = culprit {
                    prop_assert!(e.detail.contains(&name), "message {:?} does not name {}", e.detail, name);
                }
                prop_assert!(e.to_string().starts_with(dim.as_str()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Property 6: minting agrees with its oracle
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// A mint is refused exactly when the oracle finds a violation (ttl out of range, the
    /// first hop being the minter or among its own targets without loops allowed, zero
    /// uses, a grant or context over the limits), on one of those dimensions; a root
    /// carries exactly what was asked.
    #[test]
    fn mint_agrees_with_its_oracle(mut req in mint_req_s(), policy in policy_s(), seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        match g.below(10) {
            0 => req.ttl_secs = Some(*g.pick(&[0, 1, 900, 901, u64::MAX])),
            1 => req.audience = party("gw"),
            2 => { req.targets.insert(req.audience.id.clone()); }
            3 => req.max_uses = Some(g.below(2) as u32),
            4 => {
                let n = 58 + g.below(7);
                req.claims.insert(BULK_NAME.into(), every(Constraint::AllowSet(bulk_members(n, "m"))));
            }
            5 => req.purpose = "p".repeat(MAX_CONTEXT_BYTES - g.below(300)),
            _ => {}
        }
        let expected = mint_violations(&req, "gw", &policy);
        let digest = g.chance(0.5).then(|| request_digest(b"gw", &req));
        let mut nt = new_token(0, UnixMillis(BASE));
        nt.idempotency = digest;
        match narrow::mint(req.clone(), party("gw"), "td.example", &policy, nt) {
            Ok(root) => {
                prop_assert!(expected.is_empty(), "minted despite {:?}: {:?}", expected, req);
                prop_assert_eq!(root.depth, 0);
                prop_assert_eq!(root.parent, None);
                prop_assert_eq!(&root.actors, &vec![party("gw")]);
                prop_assert_eq!(&root.audience, &req.audience);
                prop_assert_eq!(&root.grant.scopes, &req.scopes);
                prop_assert_eq!(&root.grant.claims, &req.claims);
                prop_assert_eq!(&root.grant.targets, &req.targets);
                prop_assert_eq!(root.grant.max_uses, req.max_uses);
                prop_assert_eq!(root.grant.require_action_check, req.require_action_check);
                prop_assert_eq!(root.grant.expires_at, UnixMillis(BASE).plus_secs(req.ttl_secs.unwrap_or(300)));
                prop_assert_eq!(&root.tctx, &req.tctx);
                prop_assert_eq!(&root.rctx, &req.rctx);
                prop_assert_eq!(&root.purpose, &req.purpose);
                prop_assert_eq!(root.idempotency, digest);
                prop_assert!(root.grant.size() <= MAX_GRANT_BYTES && root.context_size() <= MAX_CONTEXT_BYTES);
            }
            Err(e) => prop_assert!(expected.contains(&e.dimension), "refused on {:?} ({}), oracle: {:?}", e.dimension, e.detail, expected),
        }
    }

    /// The size measures bound the encoded size (postcard, the store's encoding), as
    /// `Grant::size` promises.
    #[test]
    fn size_measures_bound_the_encoding(
        mut grant in grant_s(),
        tctx in ctx_s(TCTX_KEYS),
        rctx in ctx_s(RCTX_KEYS),
        purpose in str_s(),
        long in 0usize..3000,
        wide in 0usize..=64,
        width in 1usize..=128,
    ) {
        // Every part of a grant long enough that leaving it out of the measure shows:
        // scopes, targets, claim names and the scopes a claim applies to.
        let many = |tag: &str| -> BTreeSet<String> { (0..wide).map(|i| format!("{tag}{i:0>width$}")).collect() };
        grant.scopes.extend(many("s"));
        grant.targets.extend(many("t"));
        grant.claims.insert("n".repeat(width), Claim { constraint: Constraint::Max(0), applies_to: Some(many("a")) });
        let encoded = postcard::to_allocvec(&grant).unwrap().len();
        prop_assert!(encoded <= grant.size(), "{} encoded > {} measured", encoded, grant.size());
        let purpose = format!("{purpose}{}", "é".repeat(long));
        let encoded = postcard::to_allocvec(&(&purpose, &tctx, &rctx)).unwrap().len();
        let measured = context_size(&purpose, &tctx, &rctx);
        prop_assert!(encoded <= measured, "{} encoded > {} measured", encoded, measured);
    }
}

// ---------------------------------------------------------------------------------
// Property 7: canonical text and case-insensitive comparison
// ---------------------------------------------------------------------------------

/// Characters `text::check` must refuse anywhere: controls (Cc), format characters (Cf:
/// soft hyphen, bidi controls, tags, BOM, ...), default-ignorables (CGJ, Hangul fillers,
/// Khmer vowels, Mongolian selectors, variation selectors), spaces other than U+0020,
/// line and paragraph separators, private use, noncharacters and unassigned code points.
const FORBIDDEN: &[(u32, u32)] = &[
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x00A0, 0x00A0),
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x0378, 0x0379),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x1680, 0x1680),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2000, 0x200A),
    (0x200B, 0x200F),
    (0x2028, 0x2029),
    (0x202A, 0x202E),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x2060, 0x206F),
    (0x3000, 0x3000),
    (0x3164, 0x3164),
    (0xE000, 0xF8FF),
    (0xFDD0, 0xFDEF),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFFE, 0xFFFF),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
    (0xF0000, 0xFFFFD),
    (0x10FFFE, 0x10FFFF),
];

fn forbidden_char_s() -> impl Strategy<Value = char> {
    select(FORBIDDEN)
        .prop_flat_map(|(a, b)| a..=b)
        .prop_map(|cp| char::from_u32(cp).unwrap())
}

/// Letters and symbols that are canonical and fold to canonical text, in many scripts
/// and compatibility forms.
const SAFE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\
    àéîõüçñßøåæÀÉÎÕÜÇÑØÅÆſαβγδεζηθικλμνξοπρςστυφχψωάέήίόύώΑΒΓΔΣΩ\
    абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЯЖ東京大阪가나다ابتשלום\
    ｈｅｌｏＨＥＬＯ１２３ﬁﬂᎠᎡꭰꭱ😀🚀✓€£¥-_.:/@#+=!?()[]{}<>%&*'\",;~|$^`\\";
/// Combining marks, never first.
const MARKS: &str = "\u{300}\u{301}\u{308}\u{30A}\u{323}";

/// Canonical text: a letter or digit first, then safe characters, marks and inner
/// spaces, normalised to NFC.
fn safe_text_s() -> impl Strategy<Value = String> {
    let first: Vec<char> = SAFE.chars().filter(|c| c.is_alphanumeric()).collect();
    let rest: Vec<char> = SAFE.chars().chain(MARKS.chars()).chain([' ']).collect();
    (select(first), pvec(select(rest), 0..16)).prop_map(|(first, rest)| {
        let mut s: String = std::iter::once(first).chain(rest).collect();
        while s.ends_with(' ') {
            s.pop();
        }
        nfc(&s)
    })
}

/// Byte offsets where a character may be inserted into `s`.
fn boundary(s: &str, at: &Index) -> usize {
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    bounds[at.index(bounds.len())]
}

/// `c` in a compatibility or case form that folds to `c.to_lowercase()`.
fn disguise(c: char, how: u8) -> String {
    let from = |base: u32, off: u32| char::from_u32(base + off).unwrap().to_string();
    match (how, c) {
        (0, _) => c.to_ascii_lowercase().to_string(),
        (1, _) => c.to_ascii_uppercase().to_string(),
        (2, _) => fullwidth(&c.to_ascii_lowercase().to_string()),
        (3, _) => fullwidth(&c.to_ascii_uppercase().to_string()),
        // Mathematical bold (𝐀, 𝐚, 𝟎).
        (4, 'A'..='Z') => from(0x1D400, c as u32 - 'A' as u32),
        (4, 'a'..='z') => from(0x1D41A, c as u32 - 'a' as u32),
        (4, '0'..='9') => from(0x1D7CE, c as u32 - '0' as u32),
        // Circled (Ⓐ, ⓐ, ①).
        (5, 'A'..='Z') => from(0x24B6, c as u32 - 'A' as u32),
        (5, 'a'..='z') => from(0x24D0, c as u32 - 'a' as u32),
        (5, '1'..='9') => from(0x2460, c as u32 - '1' as u32),
        // Kelvin sign, long s.
        (6, 'k' | 'K') => "\u{212A}".into(),
        (6, 's' | 'S') => "ſ".into(),
        _ => c.to_string(),
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any forbidden character, anywhere in otherwise canonical text, is refused, and
    /// the error names that character and its byte offset.
    #[test]
    fn text_check_refuses_forbidden_characters(
        base in prop_oneof![1 => Just(String::new()), 4 => safe_text_s()],
        c in forbidden_char_s(),
        at in any::<Index>(),
    ) {
        let i = boundary(&base, &at);
        let mut s = base.clone();
        s.insert(i, c);
        match text::check(&s) {
            Err(TextError::Forbidden { code, at, .. }) => {
                prop_assert_eq!(code, c as u32, "in {:?}", s);
                prop_assert_eq!(at, i, "in {:?}", s);
            }
            other => prop_assert!(false, "{s:?} (U+{:04X} at {i}): {other:?}", c as u32),
        }
    }

    /// Canonical text is accepted; with a space at either edge, a combining mark first,
    /// or a decomposed character anywhere, it is not.
    #[test]
    fn text_check_accepts_safe_nfc_text_and_refuses_its_edges(s in safe_text_s(), at in any::<Index>()) {
        prop_assert_eq!(text::check(&s), Ok(()), "{:?}", s);
        prop_assert_eq!(text::check(&format!(" {s}")), Err(TextError::EdgeSpace));
        prop_assert_eq!(text::check(&format!("{s} ")), Err(TextError::EdgeSpace));
        prop_assert_eq!(text::check(&format!("\u{301}{s}")), Err(TextError::LeadingMark));
        let mut d = s.clone();
        d.insert_str(boundary(&s, &at), "e\u{301}");
        prop_assert_eq!(text::check(&d), Err(TextError::NotNfc), "{:?}", d);
    }

    /// Folding is idempotent and yields canonical text.
    #[test]
    fn fold_is_idempotent_and_canonical(s in safe_text_s()) {
        let f = text::fold(&s);
        prop_assert_eq!(text::fold(&f), f.clone(), "{:?}", s);
        prop_assert_eq!(text::check(&f), Ok(()), "{:?} folds to {:?}", s, f);
    }

    /// Folding ignores the case and width of ASCII letters.
    #[test]
    fn fold_ignores_ascii_case_and_width(s in "[a-zA-Z]{0,24}") {
        let lower = s.to_ascii_lowercase();
        prop_assert_eq!(text::fold(&s.to_ascii_uppercase()), lower.clone());
        prop_assert_eq!(text::fold(&lower), lower.clone());
        prop_assert_eq!(text::fold(&s), lower.clone());
        prop_assert_eq!(text::fold(&fullwidth(&s)), lower);
    }

    /// A case-insensitive deny-set cannot be bypassed by case, width or compatibility
    /// variants of a member (fullwidth, mathematical bold, circled, Kelvin sign, long s,
    /// ligatures, ß), and a case-insensitive allow-set admits every one of them.
    #[test]
    fn case_insensitive_deny_cannot_be_bypassed(
        member in "[a-zA-Z0-9]{1,12}",
        hows in pvec(0u8..8, 12),
        ligature in any::<bool>(),
    ) {
        let lower = member.to_ascii_lowercase();
        let mut variant: String = member.chars().zip(hows.iter().cycle()).map(|(c, h)| disguise(c, *h)).collect();
        if ligature {
            variant = variant.replace("fi", "ﬁ").replace("ss", "ß").replace("st", "ﬆ");
        }
        let deny = Constraint::deny_folded([member.clone()]);
        prop_assert!(deny.permits(&Value::Str(variant.clone())).is_err(), "deny-ci {{{}}} permits {:?}", member, variant);
        prop_assert!(deny.permits(&Value::Str(lower.clone())).is_err());
        let allow = Constraint::allow_folded([member.clone()]);
        prop_assert_eq!(allow.permits(&Value::Str(variant.clone())), Ok(()), "{:?}", variant);
        // The folded deny-set narrows the exact one, and denies the variant in a
        // multi-valued attribute too.
        let exact = Constraint::DenySet([lower].into());
        prop_assert!(exact.is_narrowed_by(&deny));
        let grant = Grant {
            scopes: ["pay".to_string()].into(),
            claims: [("category".to_string(), every(deny))].into(),
            targets: BTreeSet::new(),
            expires_at: UnixMillis(u64::MAX),
            max_uses: None,
            require_action_check: false,
        };
        let attrs: Attributes = [("category".to_string(), vec![Value::Str("ok".into()), Value::Str(variant.clone())])].into();
        prop_assert_eq!(grant.authorize("pay", &attrs).unwrap_err().denied_by, "category");
    }
}

/// Some canonical text has no canonical folded form: a lone spacing accent folds to a
/// space and a combining mark. Folding is still stable on it (comparisons agree), and the
/// wire refuses such a member for a case-insensitive set (see `writ_api::convert`), since
/// the set stores members folded.
#[test]
fn text_whose_fold_is_not_canonical_folds_stably() {
    for s in ["¨", "´ok", "˜", "΄", "῾", "゛", "\u{FE70}", "ำ", "ﾞ"] {
        assert_eq!(text::check(s), Ok(()), "{s:?}");
        let f = text::fold(s);
        assert!(text::check(&f).is_err(), "{s:?} folds to canonical {f:?}");
        assert_eq!(text::fold(&f), f, "fold is idempotent on {s:?}");
    }
}

/// Every word the generators use is canonical text, every prefix a canonical path, and
/// the restated path rule agrees with `claims::path` on every path candidate.
#[test]
fn vocabulary_is_canonical() {
    for s in STRS
        .iter()
        .chain(PATHS)
        .chain(SEGMENTS)
        .chain(SCOPES)
        .chain(PARTIES)
        .chain(NAMES)
        .chain(RCTX_KEYS)
        .chain(TCTX_KEYS)
        .chain([
            &FREE_STR,
            &FOREIGN_SCOPE,
            &OUTSIDER,
            &FRESH_NAME,
            &ABSENT_KEY,
        ])
    {
        assert_eq!(text::check(s), Ok(()), "{s:?}");
        for v in variants(s) {
            assert_eq!(text::check(&v), Ok(()), "{v:?}");
        }
    }
    for p in PATHS {
        assert!(canonical_path(p), "{p}");
        for seg in SEGMENTS {
            assert!(canonical_path(&join(p, seg)), "{p} + {seg}");
        }
        for v in path_candidates(p) {
            assert_eq!(
                canonical_path(&v),
                writ_core::claims::path(&v).is_ok(),
                "{v:?}"
            );
        }
    }
    // The candidates really step outside: a `..`, `%2e` or `//` path is never canonical.
    assert!(!canonical_path("/t/../u") && !canonical_path("/t/%2E%2e") && !canonical_path("/t//1"));
    assert!(canonical_path("/t/") && canonical_path("/"));
}

// ---------------------------------------------------------------------------------
// Property 8: bounded messages, request digests
// ---------------------------------------------------------------------------------

/// Longest message a constraint may print, whatever its size.
const MESSAGE_BOUND: usize = 2048;

proptest! {
    #![proptest_config(config(48))]

    /// `Display` and `permits`' reasons never print a whole set or a whole value: they
    /// stay under a fixed bound for sets of 64 members of 512 characters.
    #[test]
    fn messages_are_bounded(
        n in 0usize..=64,
        len in 0usize..=512,
        alphabet in select(&["x", "é", "東", "😀", "\"\\", "\u{301}a"][..]),
        kind in 0usize..6,
    ) {
        let word = |i: usize| format!("{i}{}", alphabet.repeat(len / alphabet.chars().count().max(1)));
        let members: BTreeSet<String> = (0..n).map(word).collect();
        let long = word(999);
        let c = match kind {
            0 => Constraint::AllowSet(members),
            1 => Constraint::DenySet(members.clone()),
            2 => Constraint::AllowFolded(members),
            3 => Constraint::DenyFolded(members),
            4 => Constraint::Prefix(long.clone()),
            _ => Constraint::Exact(Value::Str(long.clone())),
        };
        let shown = c.to_string();
        prop_assert!(shown.len() <= MESSAGE_BOUND, "{} bytes", shown.len());
        let claim = Claim { constraint: c.clone(), applies_to: Some((0..64).map(|i| format!("{i:0>128}")).collect()) };
        prop_assert!(claim.to_string().len() <= 2 * MESSAGE_BOUND);
        for v in [Value::Str(long.clone()), Value::Str(word(0)), Value::Int(1), Value::Time(1)] {
            if let Err(why) = c.permits(&v) {
                prop_assert!(why.len() <= MESSAGE_BOUND, "{} bytes", why.len());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Two requests have the same digest exactly when they, and the scopes they are made
    /// under, are equal.
    #[test]
    fn request_digests_identify_requests(
        (_, parent) in parent_s(),
        s1 in pvec(any::<u8>(), 0..6),
        s2 in pvec(any::<u8>(), 0..6),
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let now = UnixMillis(BASE);
        let (_, a) = g.request(&parent, now);
        let b = if g.chance(0.3) { a.clone() } else { g.request(&parent, now).1 };
        let s2 = if g.chance(0.3) { s1.clone() } else { s2 };
        prop_assert_eq!(request_digest(&s1, &a), request_digest(&s1, &a.clone()));
        prop_assert_eq!(
            request_digest(&s1, &a) == request_digest(&s2, &b),
            s1 == s2 && a == b,
            "{:?} / {:?}", a, b
        );
        let mut c = a.clone();
        c.require_action_check = !c.require_action_check;
        prop_assert_ne!(request_digest(&s1, &a), request_digest(&s1, &c));
        let mut c = a.clone();
        if !c.drop_rctx.remove("ip") {
            c.drop_rctx.insert("ip".into());
        }
        prop_assert_ne!(request_digest(&s1, &a), request_digest(&s1, &c));
    }
}

// ---------------------------------------------------------------------------------
// Property 9: the token format
// ---------------------------------------------------------------------------------

fn key_ring(id: u32, key: [u8; 32]) -> KeyRing {
    KeyRing::new(vec![ServerKey { id, key }]).unwrap()
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&s[TOKEN_PREFIX.len()..])
        .unwrap()
}

fn encode(raw: &[u8]) -> String {
    use base64::Engine;
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn issued_tokens_round_trip(kid in any::<u32>(), key in any::<[u8; 32]>(), entropy in any::<[u8; 32]>()) {
        let ring = key_ring(kid, key);
        let (secret, v) = ring.issue(entropy);
        let s = secret.expose();
        prop_assert_eq!(s.len(), TOKEN_LEN);
        prop_assert!(s.starts_with(TOKEN_PREFIX));
        prop_assert!(s[TOKEN_PREFIX.len()..].bytes().all(|b| B64.contains(&b)));
        prop_assert_eq!(ring.verify(s), Ok(v));
        prop_assert_eq!(ring.issue(entropy).1, v, "issuing is deterministic in the entropy");
        let shown = format!("{secret:?}");
        prop_assert!(!shown.contains(&s[TOKEN_PREFIX.len()..]));
        let raw = decode(s);
        prop_assert_eq!(raw.len(), 53);
        prop_assert_eq!(raw[0], 1);
        prop_assert_eq!(&raw[1..5], &kid.to_be_bytes()[..]);
        prop_assert_eq!(&raw[5..37], &entropy[..]);
    }

    #[test]
    fn distinct_entropies_give_distinct_ids(e1 in any::<[u8; 32]>(), e2 in any::<[u8; 32]>(), bit in 0usize..256) {
        let ring = key_ring(1, [7; 32]);
        // One random pair, and a pair one bit apart.
        let mut e3 = e1;
        e3[bit / 8] ^= 1 << (bit % 8);
        for (a, b) in [(e1, e2), (e1, e3)] {
            if a == b {
                continue;
            }
            let (sa, va) = ring.issue(a);
            let (sb, vb) = ring.issue(b);
            prop_assert_ne!(sa.expose(), sb.expose());
            prop_assert_ne!(va.token_id, vb.token_id);
            prop_assert!(!va.secret_hash.ct_eq(&vb.secret_hash));
        }
    }

    /// Any change to an issued token's string (a character substituted, a byte flipped,
    /// truncated, extended, or bits flipped in the decoded bytes and re-encoded) fails.
    #[test]
    fn tampered_tokens_never_verify(
        entropy in any::<[u8; 32]>(),
        pos in any::<Index>(),
        ch in prop_oneof![select(B64.to_vec()).prop_map(char::from), any::<char>()],
        mask in 1u8..=255,
        cut in any::<Index>(),
        tail in "[A-Za-z0-9_=+/ -]{1,8}",
        raw_pos in 0usize..53,
    ) {
        let ring = key_ring(3, [9; 32]);
        let (secret, _) = ring.issue(entropy);
        let s = secret.expose();
        let i = pos.index(s.len());

        let mut chars: Vec<char> = s.chars().collect();
        if chars[i] != ch {
            chars[i] = ch;
            let t: String = chars.into_iter().collect();
            prop_assert!(ring.verify(&t).is_err(), "substitution at {i} accepted: {t}");
        }

        let mut bytes = s.as_bytes().to_vec();
        bytes[i] ^= mask;
        if let Ok(t) = String::from_utf8(bytes) {
            prop_assert!(ring.verify(&t).is_err(), "byte flip at {i} accepted");
        }

        let k = cut.index(s.len());
        prop_assert_eq!(ring.verify(&s[..k]), Err(TokenError::Malformed));
        prop_assert_eq!(ring.verify(&format!("{s}{tail}")), Err(TokenError::Malformed));
        let prepended = format!("{tail}{s}");
        prop_assert!(ring.verify(&prepended).is_err());
        prop_assert!(ring.verify(&s.to_uppercase()).is_err());

        let mut raw = decode(s);
        raw[raw_pos] ^= mask;
        let t = encode(&raw);
        prop_assert_eq!(t.len(), TOKEN_LEN);
        let verdict = ring.verify(&t);
        if raw_pos == 0 {
            prop_assert_eq!(verdict, Err(TokenError::Malformed), "version byte change");
        } else {
            prop_assert_eq!(verdict, Err(TokenError::Forged), "raw flip at {}", raw_pos);
        }
    }

    /// Tokens from another key, or another key id, never verify; arbitrary strings of
    /// the right shape never verify.
    #[test]
    fn foreign_and_random_tokens_never_verify(
        entropy in any::<[u8; 32]>(),
        key in any::<[u8; 32]>(),
        kid in any::<u32>(),
        junk in pvec(select(B64.to_vec()), TOKEN_LEN - TOKEN_PREFIX.len()),
    ) {
        let ring = key_ring(3, [9; 32]);
        prop_assume!(key != [9; 32]);
        let (other, _) = key_ring(3, key).issue(entropy);
        prop_assert_eq!(ring.verify(other.expose()), Err(TokenError::Forged));
        if kid != 3 {
            let (other, _) = key_ring(kid, [9; 32]).issue(entropy);
            prop_assert_eq!(ring.verify(other.expose()), Err(TokenError::Forged));
        }
        let junk = format!("{TOKEN_PREFIX}{}", String::from_utf8(junk).unwrap());
        prop_assert!(ring.verify(&junk).is_err());
    }

    /// Derived tokens: one per ring key, in ring order, deterministic in the scope,
    /// different for another scope, each verifying with the ring and with its own key
    /// only; a rotated ring derives the same tokens in its own order.
    #[test]
    fn derived_tokens_are_deterministic_per_scope_and_key(
        keys in btree_map(any::<u32>(), any::<[u8; 32]>(), 1..4),
        s1 in pvec(any::<u8>(), 0..12),
        s2 in pvec(any::<u8>(), 0..12),
    ) {
        let keys: Vec<ServerKey> = keys.into_iter().map(|(id, key)| ServerKey { id, key }).collect();
        let ring = KeyRing::new(keys.clone()).unwrap();
        let a: Vec<_> = ring.issue_derived(&s1).collect();
        prop_assert_eq!(a.len(), keys.len());
        prop_assert_eq!(&a, &ring.issue_derived(&s1).collect::<Vec<_>>());
        let ids: BTreeSet<TokenId> = a.iter().map(|(_, v)| v.token_id).collect();
        prop_assert_eq!(ids.len(), a.len(), "two keys derived one token");
        // The entropy itself is keyed: another key derives other entropy for the scope,
        // so nobody without the key can compute a derived token's secret part.
        let entropy: BTreeSet<Vec<u8>> = a.iter().map(|(t, _)| decode(t.expose())[5..37].to_vec()).collect();
        prop_assert_eq!(entropy.len(), a.len(), "two keys derived the same entropy");
        prop_assert!(!entropy.contains(blake3::hash(&s1).as_bytes().as_slice()));
        for (i, (secret, v)) in a.iter().enumerate() {
            prop_assert_eq!(ring.verify(secret.expose()), Ok(*v));
            for (j, k) in keys.iter().enumerate() {
                let alone = key_ring(k.id, k.key).verify(secret.expose());
                prop_assert_eq!(alone.is_ok(), i == j, "token {} under key {}", i, j);
            }
        }
        if s1 != s2 {
            for (_, v) in ring.issue_derived(&s2) {
                prop_assert!(!ids.contains(&v.token_id), "two scopes derived one token");
            }
        }
        let mut rotated = keys.clone();
        rotated.reverse();
        let r: Vec<_> = KeyRing::new(rotated).unwrap().issue_derived(&s1).collect();
        let mut back = a.clone();
        back.reverse();
        prop_assert_eq!(r, back);
    }
}
