#![allow(clippy::unwrap_used)]
//! Adversarial property tests: every attempt to get a child that permits more than its
//! parent (or root) must be refused, and every refusal must name a dimension that was
//! really violated.
//!
//! Parents, policies and roots come from proptest strategies over a small shared
//! vocabulary (so names and values collide). Requests and actions, which depend on the
//! parent, are drawn from a seeded RNG inside each case: random, copied from the parent,
//! mutated slightly narrower or wider, or wider on exactly one dimension.
//!
//! An independent oracle (`violations`) restates the rules semantically: claims are
//! compared by searching for a value the child permits and the parent does not.

use proptest::collection::{btree_map, btree_set};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use writ_core::narrow::{self, ChildRequest, Dimension, MintRequest, NewToken, Policy};
use writ_core::token::{TOKEN_LEN, TOKEN_PREFIX, TokenError};
use writ_core::{
    ActorKind, Claims, ClientType, Constraint, Grant, KeyRing, Party, SecretHash, ServerKey,
    TokenId, TokenRecord, TxnId, UnixMillis, Value, VerifiedToken,
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
const STRS: &[&str] = &[
    "", "/", "/t", "/t/", "/t/1", "/t/1/", "/t/12", "/u/", "health", "travel", "food", "x", "xy",
];
/// A string no generated set ever contains and no generated prefix starts.
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
const BASE: u64 = 1_700_000_000_000;
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
    }
}

// ---------------------------------------------------------------------------------
// Strategies (parents, roots, policies, constraints)
// ---------------------------------------------------------------------------------

fn int_s() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(INTS),
        2 => (-3i64..=3).prop_map(|d| 100 + d),
        1 => any::<i64>(),
    ]
}

fn str_s() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(STRS).prop_map(String::from),
        1 => (select(STRS), select(STRS)).prop_map(|(a, b)| format!("{a}{b}")),
    ]
}

fn value_s() -> impl Strategy<Value = Value> {
    prop_oneof![int_s().prop_map(Value::Int), str_s().prop_map(Value::Str)]
}

fn constraint_s() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        int_s().prop_map(Constraint::Max),
        int_s().prop_map(Constraint::Min),
        btree_set(str_s(), 0..4).prop_map(Constraint::AllowSet),
        btree_set(str_s(), 0..4).prop_map(Constraint::DenySet),
        str_s().prop_map(Constraint::Prefix),
        value_s().prop_map(Constraint::Exact),
    ]
}

fn claims_s() -> impl Strategy<Value = Claims> {
    btree_map(select(NAMES).prop_map(String::from), constraint_s(), 0..5)
}

fn vocab_set_s(
    vocab: &'static [&'static str],
    min: usize,
) -> impl Strategy<Value = BTreeSet<String>> {
    subsequence(vocab, min..=vocab.len()).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn ctx_s() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(
        select(&["ip", "order", "method"][..]).prop_map(String::from),
        str_s(),
        0..3,
    )
}

fn policy_s() -> impl Strategy<Value = Policy> {
    (1u32..=10, any::<bool>()).prop_map(|(max_depth, allow_actor_loops)| Policy {
        default_ttl_secs: 300,
        max_ttl_secs: 900,
        max_depth,
        allow_actor_loops,
    })
}

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
    (vocab_set_s(SCOPES, 0), claims_s(), targets, expiry).prop_map(
        |(scopes, claims, targets, exp)| Grant {
            scopes,
            claims,
            targets,
            expires_at: UnixMillis(exp),
            max_uses: None,
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
        ctx_s(),
        ctx_s(),
        select(&["alice", "bob"][..]),
    )
        .prop_map(|(policy, order, n, grant, depth, tctx, rctx, subject)| {
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
            };
            (policy, record)
        })
}

fn mint_req_s() -> impl Strategy<Value = MintRequest> {
    let targets =
        prop_oneof![1 => vocab_set_s(PARTIES, 0), 3 => vocab_set_s(PARTIES, PARTIES.len() - 2)];
    (
        select(&PARTIES[1..]),
        targets,
        vocab_set_s(SCOPES, 0),
        claims_s(),
        ctx_s(),
        ctx_s(),
        prop_oneof![Just(None), (1u64..=900).prop_map(Some)],
    )
        .prop_map(
            |(aud, targets, scopes, claims, tctx, rctx, ttl_secs)| MintRequest {
                subject: "alice".into(),
                audience: party(aud),
                targets,
                scopes,
                claims,
                purpose: "plan".into(),
                tctx,
                rctx,
                ttl_secs,
                max_uses: None,
            },
        )
}

// ---------------------------------------------------------------------------------
// Semantic helpers and the independent oracle
// ---------------------------------------------------------------------------------

fn same_kind(a: &Constraint, b: &Constraint) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn tweak(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Int(i.wrapping_add(1)),
        Value::Str(s) => Value::Str(format!("{s}x")),
    }
}

/// Boundary values of a constraint: members, bounds and their neighbours, prefixes and
/// their extensions and truncations, a free string, and wrongly typed values.
fn candidates(c: &Constraint) -> Vec<Value> {
    use Constraint::*;
    let mut out = Vec::new();
    match c {
        Max(b) | Min(b) => {
            for i in [
                *b,
                b.saturating_sub(1),
                b.saturating_add(1),
                i64::MIN,
                i64::MAX,
                0,
            ] {
                out.push(Value::Int(i));
            }
            out.push(Value::Str(b.to_string()));
        }
        AllowSet(s) | DenySet(s) => {
            out.extend(s.iter().cloned().map(Value::Str));
            out.push(Value::Str(FREE_STR.into()));
            out.push(Value::Int(0));
        }
        Prefix(p) => {
            out.push(Value::Str(p.clone()));
            out.push(Value::Str(format!("{p}x")));
            out.push(Value::Str(format!("{p}/1")));
            let mut shorter = p.clone();
            shorter.pop();
            out.push(Value::Str(shorter));
            out.push(Value::Str(FREE_STR.into()));
            out.push(Value::Int(0));
        }
        Exact(v) => {
            out.push(v.clone());
            out.push(tweak(v));
            out.push(match v {
                Value::Int(i) => Value::Str(i.to_string()),
                Value::Str(_) => Value::Int(0),
            });
        }
    }
    out
}

/// Semantic "child permits nothing the parent does not", restricted (like the rules)
/// to constraints of one kind. Complete for one kind: if the child is wider, one of the
/// candidates is a value it permits and the parent does not.
fn semantically_within(p: &Constraint, c: &Constraint) -> bool {
    same_kind(p, c)
        && candidates(p)
            .iter()
            .chain(candidates(c).iter())
            .all(|v| c.permits(v).is_err() || p.permits(v).is_ok())
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
        if acted.contains(parent.audience.id.as_str())
            || acted.contains(req.audience.id.as_str())
            || req.audience.id == parent.audience.id
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
    if req
        .claims
        .iter()
        .any(|(n, c)| pg.claims.get(n).is_some_and(|p| !semantically_within(p, c)))
    {
        v.push(Dimension::Claims);
    }
    let expiry = match req.ttl_secs {
        None => Some(pg.expires_at),
        Some(0) => None,
        Some(t) => Some(UnixMillis(now.0.saturating_add(t.saturating_mul(1000)))),
    };
    match expiry {
        Some(e) if e <= pg.expires_at => {
            let mut claims = pg.claims.clone();
            claims.extend(req.claims.clone());
            let grant = Grant {
                scopes: req.scopes.clone(),
                claims,
                targets: req.targets.clone(),
                expires_at: e,
                max_uses: None,
            };
            if grant == *pg {
                v.push(Dimension::NotNarrower);
            }
        }
        _ => v.push(Dimension::Expiry),
    }
    v
}

/// One action per scope that the grant permits, if its claims are satisfiable: every
/// attribute at the tightest boundary the grant allows.
fn witness(grant: &Grant) -> Option<BTreeMap<String, Value>> {
    grant
        .claims
        .iter()
        .map(|(n, c)| {
            candidates(c)
                .into_iter()
                .find(|v| c.permits(v).is_ok())
                .map(|v| (n.clone(), v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The seeded generator for everything that depends on a parent
// ---------------------------------------------------------------------------------

struct Gen(StdRng);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(StdRng::seed_from_u64(seed))
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
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
    fn string(&mut self) -> String {
        if self.chance(0.85) {
            self.pick(STRS).to_string()
        } else {
            format!("{}{}", self.pick(STRS), self.pick(STRS))
        }
    }
    fn value(&mut self) -> Value {
        if self.chance(0.5) {
            Value::Int(self.int())
        } else {
            Value::Str(self.string())
        }
    }
    fn str_set(&mut self, max: usize) -> BTreeSet<String> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.string()).collect()
    }
    fn constraint(&mut self) -> Constraint {
        match self.below(6) {
            0 => Constraint::Max(self.int()),
            1 => Constraint::Min(self.int()),
            2 => Constraint::AllowSet(self.str_set(4)),
            3 => Constraint::DenySet(self.str_set(4)),
            4 => Constraint::Prefix(self.string()),
            _ => Constraint::Exact(self.value()),
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

    /// A constraint at least as narrow as `c` (possibly equal).
    fn narrow(&mut self, c: &Constraint) -> Constraint {
        use Constraint::*;
        match c {
            Max(b) => Max(if self.chance(0.15) {
                i64::MIN
            } else {
                b.saturating_sub(self.below(3) as i64)
            }),
            Min(b) => Min(if self.chance(0.15) {
                i64::MAX
            } else {
                b.saturating_add(self.below(3) as i64)
            }),
            AllowSet(s) => AllowSet(self.subset(s, 0.7)),
            DenySet(s) => {
                let mut s = s.clone();
                s.extend(self.str_set(2));
                DenySet(s)
            }
            Prefix(p) => {
                if self.chance(0.4) {
                    Prefix(p.clone())
                } else {
                    Prefix(format!("{p}{}", self.pick(&["/", "1", "x", "/t/", "2/"])))
                }
            }
            Exact(v) => Exact(v.clone()),
        }
    }

    fn other_kind(&mut self, c: &Constraint) -> Constraint {
        loop {
            let o = self.constraint();
            if !same_kind(c, &o) {
                return o;
            }
        }
    }

    /// A constraint that permits something `c` does not, or is of another kind.
    fn widen(&mut self, c: &Constraint) -> Constraint {
        use Constraint::*;
        if self.chance(0.2) {
            return self.other_kind(c);
        }
        match c {
            Max(b) if *b < i64::MAX => Max(if self.chance(0.3) {
                i64::MAX
            } else {
                b.saturating_add(1 + self.below(3) as i64)
            }),
            Min(b) if *b > i64::MIN => Min(if self.chance(0.3) {
                i64::MIN
            } else {
                b.saturating_sub(1 + self.below(3) as i64)
            }),
            AllowSet(s) => {
                let mut s = s.clone();
                let extra = (0..8).map(|_| self.string()).find(|x| !s.contains(x));
                s.insert(extra.unwrap_or_else(|| FREE_STR.to_string()));
                AllowSet(s)
            }
            DenySet(s) if !s.is_empty() => {
                let gone = self.pick_in(s).unwrap();
                let mut s = self.subset(s, 0.5);
                s.remove(&gone);
                DenySet(s)
            }
            Prefix(p) if !p.is_empty() => {
                if self.chance(0.5) {
                    let keep = self.below(p.chars().count());
                    Prefix(p.chars().take(keep).collect())
                } else {
                    Prefix(format!("~{p}"))
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

    fn audience_from(&mut self, targets: &BTreeSet<String>) -> Party {
        match self.pick_in(targets) {
            Some(t) if self.chance(0.85) => party(&t),
            _ if self.chance(0.2) => party(OUTSIDER),
            _ => party(self.pick::<&str>(PARTIES)),
        }
    }

    /// Any request: fully random, a copy of the parent's grant, or the parent's grant
    /// mutated slightly in either direction on every dimension.
    fn request(&mut self, parent: &TokenRecord, now: UnixMillis) -> (String, ChildRequest) {
        let pg = &parent.grant;
        let caller = if self.chance(0.9) {
            parent.audience.id.clone()
        } else {
            self.pick(PARTIES).to_string()
        };
        let purpose = self.chance(0.3).then(|| "sub-task".to_string());
        let req = match self.below(6) {
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
                    .map(|_| (self.pick(NAMES).to_string(), self.constraint()))
                    .collect(),
                ttl_secs: self.ttl(pg.expires_at, now),
                purpose,
                max_uses: None,
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
                        5..=8 => self.narrow(c),
                        9 | 10 => self.widen(c),
                        _ => self.constraint(),
                    };
                    claims.insert(n.clone(), child);
                }
                for _ in 0..self.below(3) {
                    let name = if self.chance(0.5) {
                        FRESH_NAME
                    } else {
                        *self.pick(NAMES)
                    };
                    claims.insert(name.to_string(), self.constraint());
                }
                ChildRequest {
                    audience: self.audience_from(&pg.targets),
                    targets,
                    scopes,
                    claims,
                    ttl_secs: self.ttl(pg.expires_at, now),
                    purpose,
                    max_uses: None,
                }
            }
        };
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
        let mut req = ChildRequest {
            audience,
            targets: pg.targets.clone(),
            scopes: pg.scopes.clone(),
            claims: Claims::new(),
            ttl_secs: None,
            purpose: None,
            max_uses: None,
        };
        for _ in 0..1 + self.below(2) {
            match self.below(6) {
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
                        let c = self.narrow(&pg.claims[&n]);
                        req.claims.insert(n, c);
                    }
                }
                4 => {
                    let n = self.pick(NAMES).to_string();
                    let c = match pg.claims.get(&n) {
                        Some(p) => self.narrow(p),
                        None => self.constraint(),
                    };
                    req.claims.insert(n, c);
                }
                _ => {
                    let remaining = pg.expires_at.0.saturating_sub(now.0) / 1000;
                    req.ttl_secs = Some(remaining.saturating_sub(self.below(3) as u64).max(1));
                }
            }
        }
        req
    }

    /// A random action biased towards what `grants[0]` permits, using boundary values of
    /// every grant's claims (so the action sits where a wider child would differ).
    fn action(&mut self, grants: &[&Grant]) -> (String, BTreeMap<String, Value>) {
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
        let mut attrs = BTreeMap::new();
        for n in names {
            if self.chance(0.04) {
                continue;
            }
            let mut pool: Vec<Value> = grants
                .iter()
                .filter_map(|g| g.claims.get(&n))
                .flat_map(candidates)
                .collect();
            pool.push(self.value());
            let permitted: Vec<Value> = match first.claims.get(&n) {
                Some(c) => pool
                    .iter()
                    .filter(|v| c.permits(v).is_ok())
                    .cloned()
                    .collect(),
                None => pool.clone(),
            };
            let v = if !permitted.is_empty() && self.chance(0.85) {
                self.pick(&permitted).clone()
            } else {
                self.pick(&pool).clone()
            };
            attrs.insert(n, v);
        }
        (scope, attrs)
    }
}

/// Everything `child` permits (random boundary actions and, per scope, the tightest
/// witness) is permitted by every one of `ancestors`.
fn check_no_escalation(
    g: &mut Gen,
    child: &Grant,
    ancestors: &[&Grant],
) -> Result<(), TestCaseError> {
    let mut all = vec![child];
    all.extend_from_slice(ancestors);
    for _ in 0..ACTIONS_PER_CHECK {
        let (scope, attrs) = g.action(&all);
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
    if let Some(w) = witness(child) {
        for scope in &child.scopes {
            prop_assert!(
                child.authorize(scope, &w).is_ok(),
                "witness {w:?} not permitted by {child:?}"
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

/// The structural invariants of an accepted child.
fn check_child(
    parent: &TokenRecord,
    child: &TokenRecord,
    policy: &Policy,
    now: UnixMillis,
) -> Result<(), TestCaseError> {
    let (pg, cg) = (&parent.grant, &child.grant);
    prop_assert!(cg.expires_at <= pg.expires_at, "child outlives parent");
    prop_assert!(cg.expires_at > now, "child born expired");
    prop_assert!(cg.scopes.is_subset(&pg.scopes), "scopes widened");
    prop_assert!(cg.targets.is_subset(&pg.targets), "targets widened");
    prop_assert!(
        pg.targets.contains(&child.audience.id),
        "audience outside parent targets"
    );
    for (n, p) in &pg.claims {
        let c = cg.claims.get(n);
        prop_assert!(c.is_some(), "claim {n} dropped");
        prop_assert!(
            p.is_narrowed_by(c.unwrap()),
            "claim {n} widened: {p} -> {}",
            c.unwrap()
        );
    }
    prop_assert_ne!(cg, pg, "child grant identical to parent's");
    prop_assert_eq!(child.txn, parent.txn);
    prop_assert_eq!(&child.subject, &parent.subject);
    prop_assert_eq!(&child.trust_domain, &parent.trust_domain);
    prop_assert_eq!(&child.tctx, &parent.tctx);
    prop_assert_eq!(&child.rctx, &parent.rctx);
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
    if !policy.allow_actor_loops {
        let ids: BTreeSet<&str> = child.actors.iter().map(|a| a.id.as_str()).collect();
        prop_assert_eq!(ids.len(), child.actors.len(), "an actor repeats");
        prop_assert!(
            !ids.contains(child.audience.id.as_str()),
            "audience already acted"
        );
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
    let shown = format!("{req:?}");
    match narrow::downscope(parent, caller, req, policy, new_token(n, now)) {
        Ok(child) => {
            prop_assert!(
                expected.is_empty(),
                "accepted despite {expected:?}: caller {caller} req {shown}"
            );
            check_child(parent, &child, policy, now)?;
            Ok(Some(child))
        }
        Err(e) => {
            prop_assert!(
                expected.contains(&e.dimension),
                "refused on {:?} ({}) but the oracle found only {expected:?}: caller {caller} req {shown}",
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
    /// token at any depth permits nothing the root (or any ancestor) does not, and no
    /// token is deeper than the policy allows.
    #[test]
    fn chains_never_exceed_the_root(
        root_req in mint_req_s(),
        policy in policy_s(),
        hops in 1usize..=10,
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let mut now = UnixMillis(BASE);
        let root = narrow::mint(root_req.clone(), party("gw"), "td.example", &policy, new_token(0, now)).unwrap();
        prop_assert_eq!(root.depth, 0);
        prop_assert_eq!(&root.actors, &vec![party("gw")]);
        prop_assert_eq!(&root.grant.scopes, &root_req.scopes);
        prop_assert_eq!(&root.grant.claims, &root_req.claims);
        prop_assert_eq!(root.grant.expires_at, now.plus_secs(root_req.ttl_secs.unwrap_or(300)));

        let mut chain = vec![root];
        for attempt_no in 0..hops * 3 {
            if chain.len() > hops {
                break;
            }
            now = UnixMillis(now.0 + g.0.random_range(0..3000));
            let cur = chain.last().unwrap();
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
        for t in &chain {
            prop_assert!(t.depth <= policy.max_depth);
            prop_assert!(t.grant.scopes.is_subset(&root.grant.scopes));
            prop_assert!(t.grant.targets.is_subset(&root.grant.targets));
            prop_assert!(t.grant.expires_at <= root.grant.expires_at);
            prop_assert_eq!(t.txn, root.txn);
            prop_assert_eq!(&t.subject, &root.subject);
            prop_assert_eq!(&t.trust_domain, &root.trust_domain);
            prop_assert_eq!(&t.tctx, &root.tctx);
            prop_assert_eq!(&t.rctx, &root.rctx);
            prop_assert_eq!(t.actors.len(), t.depth as usize + 1);
            for (n, p) in &root.grant.claims {
                prop_assert!(t.grant.claims.get(n).is_some_and(|c| p.is_narrowed_by(c)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Property 4: the partial order on constraints
// ---------------------------------------------------------------------------------

fn check_sound_and_exact(
    p: &Constraint,
    c: &Constraint,
    extra: &[Value],
) -> Result<(), TestCaseError> {
    let pool: Vec<Value> = candidates(p)
        .into_iter()
        .chain(candidates(c))
        .chain(extra.iter().cloned())
        .collect();
    if p.is_narrowed_by(c) {
        prop_assert!(same_kind(p, c), "{p} narrowed by another kind {c}");
        for v in &pool {
            prop_assert!(
                c.permits(v).is_err() || p.permits(v).is_ok(),
                "{c} permits {v} but its parent {p} does not"
            );
        }
    } else if same_kind(p, c) {
        prop_assert!(
            pool.iter()
                .any(|v| c.permits(v).is_ok() && p.permits(v).is_err()),
            "{p} is not narrowed by {c}, yet no value separates them"
        );
    }
    if p.is_narrowed_by(c) && c.is_narrowed_by(p) {
        prop_assert_eq!(p, c, "the order is not antisymmetric");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn constraint_order_is_a_sound_partial_order(
        a in constraint_s(),
        x in constraint_s(),
        y in constraint_s(),
        z in constraint_s(),
        extra in proptest::collection::vec(value_s(), 0..6),
        seed in any::<u64>(),
    ) {
        let mut g = Gen::new(seed);
        let b = g.narrow(&a);
        let c = g.narrow(&b);
        let w = g.widen(&a);
        for k in [&a, &b, &c, &w, &x, &y, &z] {
            prop_assert!(k.is_narrowed_by(k), "not reflexive: {k}");
        }
        prop_assert!(a.is_narrowed_by(&b) && b.is_narrowed_by(&c), "narrow() produced a wider constraint");
        prop_assert!(a.is_narrowed_by(&c), "not transitive: {a} ⊒ {b} ⊒ {c}");
        prop_assert!(!a.is_narrowed_by(&w), "widen() produced {w} from {a}");
        for (p, q, r) in [(&x, &y, &z), (&a, &x, &c), (&x, &a, &b), (&a, &b, &x)] {
            if p.is_narrowed_by(q) && q.is_narrowed_by(r) {
                prop_assert!(p.is_narrowed_by(r), "not transitive: {p} ⊒ {q} ⊒ {r}");
            }
        }
        let all = [&a, &b, &c, &w, &x, &y, &z];
        for p in all {
            for q in all {
                check_sound_and_exact(p, q, &extra)?;
            }
        }
    }

    /// Evaluation fails closed on the wrong type, for every non-exact kind.
    #[test]
    fn constraints_fail_closed_on_wrong_types(c in constraint_s(), i in int_s(), s in str_s()) {
        match &c {
            Constraint::Max(_) | Constraint::Min(_) => prop_assert!(c.permits(&Value::Str(s)).is_err()),
            Constraint::Exact(v) => prop_assert_eq!(c.permits(&Value::Int(i)).is_ok(), v == &Value::Int(i)),
            _ => prop_assert!(c.permits(&Value::Int(i)).is_err()),
        }
    }

    /// An action that omits an attribute some claim constrains is denied, by that claim.
    #[test]
    fn missing_attributes_fail_closed(mut grant in grant_s(), seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        let c = g.constraint();
        grant.claims.entry(g.pick::<&str>(NAMES).to_string()).or_insert(c);
        grant.scopes.insert(g.pick::<&str>(SCOPES).to_string());
        let (_, mut attrs) = g.action(&[&grant]);
        let names: BTreeSet<String> = grant.claims.keys().cloned().collect();
        let gone = g.pick_in(&names).unwrap();
        attrs.remove(&gone);
        let scope = g.pick_in(&grant.scopes).unwrap();
        let denial = grant.authorize(&scope, &attrs);
        prop_assert!(denial.is_err());
        // Claims are checked in name order, so an earlier claim may deny first.
        prop_assert!(denial.unwrap_err().denied_by <= gone);
    }
}

// ---------------------------------------------------------------------------------
// Property 5: wider on exactly one dimension
// ---------------------------------------------------------------------------------

const DIMENSIONS: [Dimension; 10] = [
    Dimension::ParentExpired,
    Dimension::Holder,
    Dimension::Scopes,
    Dimension::Claims,
    Dimension::Audience,
    Dimension::Targets,
    Dimension::Expiry,
    Dimension::NotNarrower,
    Dimension::Depth,
    Dimension::Loop,
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
        // Make the parent admit a valid child: alive, shallow, with a fresh target and,
        // for the claims dimension, a claim to widen.
        let lifetime = g.0.random_range(1..=900_000);
        parent.grant.expires_at = UnixMillis(BASE + lifetime);
        parent.depth = parent.depth.min(policy.max_depth - 1);
        let acting: BTreeSet<String> =
            parent.actors.iter().map(|a| a.id.clone()).chain([parent.audience.id.clone()]).collect();
        let unused: Vec<&str> = PARTIES.iter().copied().filter(|p| !acting.contains(*p)).collect();
        let fresh = g.pick(&unused).to_string();
        parent.grant.targets.insert(fresh.clone());
        if parent.grant.claims.is_empty() {
            let c = g.constraint();
            parent.grant.claims.insert(g.pick(NAMES).to_string(), c);
        }
        let pg = parent.grant.clone();
        let now = UnixMillis(BASE + g.0.random_range(0..lifetime.min(1000)));
        let remaining = (pg.expires_at.0 - now.0) / 1000;

        // The valid baseline: narrower (a fresh claim) and otherwise a random narrowing.
        let mut caller = parent.audience.id.clone();
        let mut req = ChildRequest {
            audience: party(&fresh),
            targets: g.subset(&pg.targets, 0.8),
            scopes: g.subset(&pg.scopes, 0.8),
            claims: Claims::new(),
            ttl_secs: if remaining >= 1 && g.chance(0.5) { Some(g.0.random_range(1..=remaining)) } else { None },
            purpose: None,
            max_uses: None,
        };
        for (n, c) in &pg.claims {
            if g.chance(0.5) {
                let narrower = g.narrow(c);
                req.claims.insert(n.clone(), narrower);
            }
        }
        req.claims.insert(FRESH_NAME.into(), g.constraint());
        prop_assert_eq!(violations(&parent, &caller, &req, &policy, now), vec![], "baseline invalid: {:?}", req);

        let mut now = now;
        let culprit: Option<String> = match dim {
            Dimension::ParentExpired => {
                now = UnixMillis(pg.expires_at.0 + if g.chance(0.5) { 0 } else { g.0.random_range(1..100_000) });
                req.ttl_secs = None;
                None
            }
            Dimension::Uses => {
                req.max_uses = Some(0);
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
                let n = g.pick_in(&names).unwrap();
                let w = g.widen(&pg.claims[&n]);
                req.claims.insert(n.clone(), w);
                Some(format!("{n:?}"))
            }
            Dimension::Audience => {
                req.audience = party(OUTSIDER);
                Some(format!("{OUTSIDER:?}"))
            }
            Dimension::Targets => {
                let extra: Vec<&str> = PARTIES.iter().copied().filter(|p| !pg.targets.contains(*p)).collect();
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
                req.targets = pg.targets.clone();
                req.scopes = pg.scopes.clone();
                req.claims = if g.chance(0.5) { pg.claims.clone() } else { Claims::new() };
                req.ttl_secs = None;
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
// Property 6: the token format
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
        pos in any::<prop::sample::Index>(),
        ch in prop_oneof![select(B64.to_vec()).prop_map(char::from), any::<char>()],
        mask in 1u8..=255,
        cut in any::<prop::sample::Index>(),
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
        junk in proptest::collection::vec(select(B64.to_vec()), TOKEN_LEN - TOKEN_PREFIX.len()),
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
}
