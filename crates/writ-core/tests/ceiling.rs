#![allow(clippy::unwrap_used)]
//! Adversarial property tests of the registry: a grant admitted for an audience must never
//! permit what the audience's ceiling does not, whatever scopes and claims it carries.
//!
//! Ceilings and grants are drawn over a small shared vocabulary (so names, values and
//! scopes collide), the grant often copied from the ceiling and then narrowed, widened or
//! stripped one claim at a time. The oracle is semantic and independent of
//! `Ceiling::check`: every action (a scope and attributes, with boundary values, case and
//! width variants and paths around the prefixes) the grant authorizes must be authorized
//! by the ceiling as a grant of its own (`claims::authorize`).

use proptest::collection::{btree_map, btree_set, vec as pvec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use std::collections::{BTreeMap, BTreeSet};
use writ_core::claims::authorize;
use writ_core::policy::{Ceiling, PartyDef, Registry, Role, Roles, ScopeDef};
use writ_core::{
    ActorKind, Attributes, Claim, Claims, ClientType, Constraint, Dimension, Grant, UnixMillis,
    Value,
};

const SCOPES: &[&str] = &["read", "write", "pay", "refund", "admin"];
const NAMES: &[&str] = &["amount", "category", "path"];
const INTS: &[i64] = &[i64::MIN, -1, 0, 1, 99, 100, 101, 500, i64::MAX];
const WORDS: &[&str] = &[
    "health",
    "Health",
    "HEALTH",
    "ｈｅａｌｔｈ",
    "travel",
    "TRAVEL",
    "food",
    "x",
];
const PATHS: &[&str] = &["/", "/t", "/t/", "/t/1", "/t/1/", "/t/12", "/tx", "/u/"];
/// Values actions carry for `path`: the prefixes' vocabulary, deeper paths and a
/// non-canonical one that must never pass.
const ACTION_PATHS: &[&str] = &[
    "/", "/t", "/t/", "/t/1", "/t/1/a", "/t/12", "/tx", "/u/", "/u/v", "/t/../u",
];
const AUDIENCE: &str = "spiffe://writ.local/agent/a";
const T0: UnixMillis = UnixMillis(1_800_000_000_000);

fn set(items: Vec<&str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

fn words() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set(select(WORDS), 0..4).prop_map(|s| s.into_iter().map(str::to_owned).collect())
}

/// A constraint of any kind over the vocabulary (mostly the name's natural kind, so that
/// comparisons are often possible).
fn constraint(name: &'static str) -> BoxedStrategy<Constraint> {
    let int = || select(INTS);
    let natural = match name {
        "amount" => prop_oneof![
            int().prop_map(Constraint::Max),
            int().prop_map(Constraint::Min),
            (int(), int()).prop_map(|(a, b)| Constraint::Range {
                min: a.min(b),
                max: a.max(b)
            }),
        ]
        .boxed(),
        "category" => prop_oneof![
            words().prop_map(Constraint::AllowSet),
            words().prop_map(Constraint::DenySet),
            words().prop_map(Constraint::allow_folded),
            words().prop_map(Constraint::deny_folded),
        ]
        .boxed(),
        _ => select(PATHS)
            .prop_map(|p| Constraint::Prefix(p.to_owned()))
            .boxed(),
    };
    prop_oneof![
        8 => natural,
        1 => int().prop_map(|i| Constraint::Exact(Value::Int(i))),
    ]
    .boxed()
}

fn applies_to() -> impl Strategy<Value = Option<BTreeSet<String>>> {
    prop_oneof![
        Just(None),
        btree_set(select(SCOPES), 1..3).prop_map(|s| Some(set(s.into_iter().collect()))),
    ]
}

fn claim(name: &'static str) -> impl Strategy<Value = Claim> {
    (constraint(name), applies_to()).prop_map(|(constraint, applies_to)| Claim {
        constraint,
        applies_to,
    })
}

fn claims() -> impl Strategy<Value = Claims> {
    (
        proptest::option::of(claim("amount")),
        proptest::option::of(claim("category")),
        proptest::option::of(claim("path")),
    )
        .prop_map(|(a, c, p)| {
            NAMES
                .iter()
                .zip([a, c, p])
                .filter_map(|(n, c)| Some(((*n).to_owned(), c?)))
                .collect()
        })
}

fn ceiling() -> impl Strategy<Value = Ceiling> {
    (btree_set(select(SCOPES), 0..=SCOPES.len()), claims()).prop_map(|(scopes, claims)| Ceiling {
        scopes: set(scopes.into_iter().collect()),
        claims,
    })
}

/// What a grant does with one of the ceiling's claims (or with a name it lacks).
#[derive(Clone, Debug)]
enum Take {
    Copy,
    Drop,
    Other(Claim),
}

fn take(name: &'static str) -> impl Strategy<Value = Take> {
    prop_oneof![
        3 => Just(Take::Copy),
        1 => Just(Take::Drop),
        3 => claim(name).prop_map(Take::Other),
    ]
}

fn ttl() -> impl Strategy<Value = u64> {
    select(&[1u64, 60, 119, 120, 121, 300, 301, 900][..])
}

/// A ceiling and a grant near it: scopes mostly among the ceiling's, each claim copied,
/// dropped or redrawn (narrower, wider, another kind or other scopes), and sometimes one
/// claim the ceiling does not name.
fn ceiling_and_grant() -> impl Strategy<Value = (Ceiling, Grant)> {
    (
        ceiling(),
        btree_set(select(SCOPES), 0..=SCOPES.len()),
        any::<bool>(),
        (take("amount"), take("category"), take("path")),
        ttl(),
    )
        .prop_map(|(ceiling, scopes, stay_inside, takes, ttl)| {
            let mut scopes = set(scopes.into_iter().collect());
            if stay_inside {
                scopes.retain(|s| ceiling.scopes.contains(s));
            }
            let mut claims = Claims::new();
            for (name, t) in NAMES.iter().zip([takes.0, takes.1, takes.2]) {
                let c = match t {
                    Take::Copy => ceiling.claims.get(*name).cloned(),
                    Take::Drop => None,
                    Take::Other(c) => Some(c),
                };
                if let Some(c) = c {
                    claims.insert((*name).to_owned(), c);
                }
            }
            let grant = Grant {
                scopes,
                claims,
                targets: BTreeSet::new(),
                expires_at: T0.plus_secs(ttl),
                max_uses: None,
                require_action_check: false,
            };
            (ceiling, grant)
        })
}

fn action() -> impl Strategy<Value = (String, Attributes)> {
    let values = |v: BoxedStrategy<Value>| proptest::option::of(pvec(v, 1..3));
    (
        select(SCOPES),
        values(select(INTS).prop_map(Value::Int).boxed()),
        values(select(WORDS).prop_map(|w| Value::Str(w.to_owned())).boxed()),
        values(
            select(ACTION_PATHS)
                .prop_map(|p| Value::Str(p.to_owned()))
                .boxed(),
        ),
    )
        .prop_map(|(scope, amount, category, path)| {
            let attrs: Attributes = NAMES
                .iter()
                .zip([amount, category, path])
                .filter_map(|(n, v)| Some(((*n).to_owned(), v?)))
                .collect();
            (scope.to_owned(), attrs)
        })
}

fn scope_def(name: &str) -> ScopeDef {
    ScopeDef {
        name: name.to_owned(),
        description: String::new(),
        high_privilege: false,
        max_ttl_secs: None,
        kinds: None,
        client_types: None,
    }
}

/// A closed registry defining `defined`, with one registered agent holding `ceiling`.
fn registry(defined: &[&str], ceiling: Ceiling, max_ttl_secs: Option<u64>) -> Registry {
    let party = PartyDef {
        id: AUDIENCE.to_owned(),
        display_name: None,
        kind: ActorKind::Agent,
        client_type: ClientType::Confidential,
        roles: Roles::of(&[Role::Agent]),
        ceiling: Some(ceiling),
        targets: None,
        max_ttl_secs,
        enabled: true,
        txn_token_jwt: false,
    };
    Registry {
        trust_domain: "writ.local".to_owned(),
        open_trust_domain: false,
        open_scopes: false,
        scopes: defined
            .iter()
            .map(|s| ((*s).to_owned(), scope_def(s)))
            .collect(),
        parties: BTreeMap::from([(AUDIENCE.to_owned(), party)]),
        public_clients: Default::default(),
    }
}

fn admit(r: &Registry, grant: &Grant) -> Result<(), writ_core::NarrowingError> {
    r.admit(&r.resolve(AUDIENCE).unwrap(), None, grant, T0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Soundness: what an admitted grant authorizes, its ceiling authorizes.
    #[test]
    fn an_admitted_grant_permits_nothing_above_its_ceiling(
        (ceiling, grant) in ceiling_and_grant(),
        actions in pvec(action(), 48),
    ) {
        let r = registry(SCOPES, ceiling.clone(), None);
        if admit(&r, &grant).is_err() {
            return Ok(());
        }
        prop_assert!(grant.scopes.is_subset(&ceiling.scopes));
        for (scope, attrs) in &actions {
            if authorize(&grant.scopes, &grant.claims, scope, attrs).is_ok() {
                let above = authorize(&ceiling.scopes, &ceiling.claims, scope, attrs);
                prop_assert!(
                    above.is_ok(),
                    "the grant permits {scope} with {attrs:?}, its ceiling does not: {above:?}"
                );
            }
        }
    }

    /// A scope outside the ceiling is refused, whatever else the grant carries.
    #[test]
    fn a_scope_outside_the_ceiling_is_refused((ceiling, grant) in ceiling_and_grant()) {
        let r = registry(SCOPES, ceiling.clone(), None);
        if let Some(outside) = grant.scopes.difference(&ceiling.scopes).next() {
            let e = admit(&r, &grant).unwrap_err();
            prop_assert_eq!(e.dimension, Dimension::Ceiling);
            prop_assert!(e.detail.contains(&format!("scope {outside:?}")), "{}", e.detail);
        }
    }

    /// The ceiling itself, on any of its scopes, is admitted; dropping or widening any
    /// ceiling claim that applies to one of those scopes is refused.
    #[test]
    fn dropping_or_widening_a_ceiling_claim_is_refused(
        ceiling in ceiling(),
        keep in btree_set(select(SCOPES), 1..=SCOPES.len()),
        name in select(NAMES),
        ttl in ttl(),
    ) {
        let scopes: BTreeSet<String> = ceiling
            .scopes
            .iter()
            .filter(|s| keep.contains(s.as_str()))
            .cloned()
            .collect();
        let exact = Grant {
            scopes,
            claims: ceiling.claims.clone(),
            targets: BTreeSet::new(),
            expires_at: T0.plus_secs(ttl),
            max_uses: None,
            require_action_check: false,
        };
        let r = registry(SCOPES, ceiling.clone(), None);
        prop_assert_eq!(admit(&r, &exact), Ok(()));
        let Some(c) = ceiling.claims.get(name) else { return Ok(()) };
        if !exact.scopes.iter().any(|s| c.applies(s)) {
            return Ok(());
        }
        let mut dropped = exact.clone();
        dropped.claims.remove(name);
        let e = admit(&r, &dropped).unwrap_err();
        prop_assert_eq!(e.dimension, Dimension::Ceiling);
        prop_assert!(e.detail.contains(&format!("claim {name:?}")), "{}", e.detail);
        // Wider: every scope lifted off a scoped claim, or a bound moved outwards.
        let wider = match (&c.constraint, &c.applies_to) {
            (_, Some(_)) if exact.scopes.iter().any(|s| !c.applies(s)) => None,
            (Constraint::Max(m), _) if *m < i64::MAX => Some(Constraint::Max(m + 1)),
            (Constraint::Min(m), _) if *m > i64::MIN => Some(Constraint::Min(m - 1)),
            (Constraint::Prefix(p), _) if p != "/" => Some(Constraint::Prefix("/".into())),
            (Constraint::DenySet(s), _) if !s.is_empty() => Some(Constraint::DenySet(BTreeSet::new())),
            (Constraint::AllowSet(s), _) => {
                let mut s = s.clone();
                s.insert("~free~".into());
                Some(Constraint::AllowSet(s))
            }
            _ => None,
        };
        if let Some(constraint) = wider {
            let mut widened = exact.clone();
            widened.claims.insert(name.to_owned(), Claim { constraint, applies_to: c.applies_to.clone() });
            let e = admit(&r, &widened).unwrap_err();
            prop_assert_eq!(e.dimension, Dimension::Ceiling);
        }
    }

    /// A closed policy refuses a scope it does not define, as `invalid_scope`, before any
    /// other check that could pass or refuse it (even for a ceiling that "holds" it).
    #[test]
    fn an_unknown_scope_is_always_refused_in_a_closed_policy(
        defined in btree_set(select(SCOPES), 0..SCOPES.len()),
        (ceiling, grant) in ceiling_and_grant(),
    ) {
        let defined: Vec<&str> = defined.into_iter().collect();
        let mut ceiling = ceiling;
        ceiling.scopes.extend(SCOPES.iter().map(|s| (*s).to_owned()));
        let r = registry(&defined, ceiling, None);
        let unknown: Vec<&String> = grant.scopes.iter().filter(|s| !defined.contains(&s.as_str())).collect();
        match admit(&r, &grant) {
            Ok(()) => prop_assert!(unknown.is_empty()),
            Err(e) if !unknown.is_empty() => {
                prop_assert_eq!(e.dimension, Dimension::InvalidScope);
                prop_assert_eq!(e.detail, format!("unknown scope {:?}", unknown[0]));
            }
            Err(e) => prop_assert_ne!(e.dimension, Dimension::InvalidScope),
        }
    }

    /// An admitted grant lives no longer than its audience and every scope allow.
    #[test]
    fn an_admitted_grant_lives_within_every_limit(
        party_ttl in proptest::option::of(ttl()),
        scope_ttls in btree_map(select(SCOPES), proptest::option::of(ttl()), 0..SCOPES.len()),
        grant_ttl_ms in 0u64..1_000_000,
        scopes in btree_set(select(SCOPES), 0..3),
    ) {
        let all = Ceiling { scopes: set(SCOPES.to_vec()), claims: Claims::new() };
        let mut r = registry(SCOPES, all, party_ttl);
        for (s, t) in &scope_ttls {
            r.scopes.get_mut(*s).unwrap().max_ttl_secs = *t;
        }
        let grant = Grant {
            scopes: set(scopes.into_iter().collect()),
            claims: Claims::new(),
            targets: BTreeSet::new(),
            expires_at: UnixMillis(T0.0 + grant_ttl_ms),
            max_uses: None,
            require_action_check: false,
        };
        let limits = party_ttl.into_iter().chain(
            grant.scopes.iter().filter_map(|s| r.scopes[s].max_ttl_secs),
        );
        let within = limits.into_iter().all(|l| grant_ttl_ms <= l * 1000);
        match admit(&r, &grant) {
            Ok(()) => prop_assert!(within),
            Err(e) => {
                prop_assert!(!within, "{e}");
                prop_assert_eq!(e.dimension, Dimension::Ceiling);
            }
        }
    }
}

/// The soundness property is not vacuous: a good share of the generated grants is
/// admitted, and a good share refused for a claim.
#[test]
fn the_generators_reach_both_sides_of_the_ceiling() {
    let mut runner = TestRunner::deterministic();
    let strategy = ceiling_and_grant();
    let (mut admitted, mut claim_refused, mut with_claims) = (0, 0, 0);
    for _ in 0..2000 {
        let (ceiling, grant) = strategy.new_tree(&mut runner).unwrap().current();
        let r = registry(SCOPES, ceiling, None);
        match admit(&r, &grant) {
            Ok(()) => {
                admitted += 1;
                if !grant.claims.is_empty() && !grant.scopes.is_empty() {
                    with_claims += 1;
                }
            }
            Err(e) if e.detail.contains("claim") => claim_refused += 1,
            Err(_) => {}
        }
    }
    assert!(admitted > 300, "only {admitted} of 2000 admitted");
    assert!(with_claims > 100, "only {with_claims} admitted with claims");
    assert!(
        claim_refused > 300,
        "only {claim_refused} refused for a claim"
    );
}
