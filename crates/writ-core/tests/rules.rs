#![allow(clippy::unwrap_used)]
//! One deterministic test per refusal dimension and per accepted case of the narrowing
//! rules. Refusals check the returned `Dimension` and that the message names the
//! offending scope, claim, target or party.

use std::collections::{BTreeMap, BTreeSet};
use writ_core::narrow::{
    self, ChildRequest, Dimension, MintRequest, NarrowingError, NewToken, Policy,
};
use writ_core::{
    ActorKind, Claims, ClientType, Constraint, KeyRing, Party, ServerKey, TokenRecord, TxnId,
    UnixMillis, Value,
};

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const ROOT_TTL: u64 = 600;

fn party(id: &str) -> Party {
    Party {
        id: id.to_string(),
        kind: ActorKind::Agent,
        client_type: ClientType::Confidential,
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn new_token(n: u8, now: UnixMillis) -> NewToken {
    let ring = KeyRing::new(vec![ServerKey {
        id: 1,
        key: [7; 32],
    }])
    .unwrap();
    let (_, token) = ring.issue([n; 32]);
    NewToken {
        token,
        txn: TxnId::new(now, [n; 10]),
        now,
    }
}

fn root_claims() -> Claims {
    [
        ("amount", Constraint::Max(500)),
        ("nights", Constraint::Min(1)),
        ("category", Constraint::AllowSet(set(&["travel", "food"]))),
        ("blocked", Constraint::DenySet(set(&["health"]))),
        ("path", Constraint::Prefix("/trips/".into())),
        ("currency", Constraint::Exact(Value::Str("EUR".into()))),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), c))
    .collect()
}

fn mint_request(targets: &[&str]) -> MintRequest {
    MintRequest {
        subject: "alice".into(),
        audience: party("planner"),
        targets: set(targets),
        scopes: set(&["trips:read", "trips:book", "pay"]),
        claims: root_claims(),
        purpose: "book a trip".into(),
        tctx: [("order".to_string(), "o-1".to_string())].into(),
        rctx: [("ip".to_string(), "203.0.113.9".to_string())].into(),
        ttl_secs: Some(ROOT_TTL),
        max_uses: None,
    }
}

/// Root minted by `gateway` for `planner`, who may reach booker, payer and search.
fn root() -> TokenRecord {
    root_with_targets(&["booker", "payer", "search"])
}

fn root_with_targets(targets: &[&str]) -> TokenRecord {
    narrow::mint(
        mint_request(targets),
        party("gateway"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap()
}

/// A request identical in grant to `parent`'s, for `audience`.
fn same_as(parent: &TokenRecord, audience: &str) -> ChildRequest {
    ChildRequest {
        audience: party(audience),
        targets: parent.grant.targets.clone(),
        scopes: parent.grant.scopes.clone(),
        claims: Claims::new(),
        ttl_secs: None,
        purpose: None,
        max_uses: None,
    }
}

/// A valid request: drops the `pay` scope, keeps everything else.
fn narrower(parent: &TokenRecord) -> ChildRequest {
    let mut req = same_as(parent, "booker");
    req.scopes.remove("pay");
    req
}

fn derive(
    parent: &TokenRecord,
    caller: &str,
    req: ChildRequest,
) -> Result<TokenRecord, NarrowingError> {
    narrow::downscope(parent, caller, req, &Policy::default(), new_token(2, NOW))
}

fn with_claim(mut req: ChildRequest, name: &str, c: Constraint) -> ChildRequest {
    req.claims.insert(name.to_string(), c);
    req
}

/// Asserts a refusal on `dim` whose message contains every one of `names`.
fn assert_refused(result: Result<TokenRecord, NarrowingError>, dim: Dimension, names: &[&str]) {
    let err = result.expect_err("the request should have been refused");
    assert_eq!(err.dimension, dim, "wrong dimension: {err}");
    for n in names {
        assert!(
            err.detail.contains(n),
            "message {:?} does not name {n}",
            err.detail
        );
    }
    assert!(
        err.to_string().starts_with(&format!("{}: ", dim.as_str())),
        "{err}"
    );
}

// ----------------------------------------------------------------------------------
// Accepted cases
// ----------------------------------------------------------------------------------

#[test]
fn mint_builds_a_root() {
    let r = root();
    assert_eq!(r.depth, 0);
    assert_eq!(r.parent, None);
    assert_eq!(r.actors, vec![party("gateway")]);
    assert_eq!(r.current_actor(), &party("gateway"));
    assert_eq!(r.audience, party("planner"));
    assert_eq!(r.trust_domain, "example.com");
    assert_eq!(r.grant.expires_at, NOW.plus_secs(ROOT_TTL));
    assert_eq!(r.grant.claims, root_claims());
    assert_eq!(r.issued_at, NOW);

    let mut req = mint_request(&["booker"]);
    req.ttl_secs = None;
    let r = narrow::mint(
        req,
        party("gateway"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap();
    assert_eq!(
        r.grant.expires_at,
        NOW.plus_secs(Policy::default().default_ttl_secs)
    );
}

#[test]
fn accepts_narrower_scopes_and_copies_immutables() {
    let parent = root();
    let child = derive(&parent, "planner", narrower(&parent)).unwrap();
    assert_eq!(child.grant.scopes, set(&["trips:read", "trips:book"]));
    assert_eq!(
        child.grant.claims, parent.grant.claims,
        "unnamed claims are inherited unchanged"
    );
    assert_eq!(child.grant.targets, parent.grant.targets);
    assert_eq!(
        child.grant.expires_at, parent.grant.expires_at,
        "no ttl inherits the parent's expiry"
    );
    assert_eq!(child.depth, 1);
    assert_eq!(child.parent, Some(parent.token_id));
    assert_ne!(child.token_id, parent.token_id);
    assert_eq!(child.actors, vec![party("gateway"), party("planner")]);
    assert_eq!(child.current_actor(), &party("planner"));
    assert_eq!(child.audience, party("booker"));
    assert_eq!(child.txn, parent.txn);
    assert_eq!(child.subject, parent.subject);
    assert_eq!(child.trust_domain, parent.trust_domain);
    assert_eq!(child.tctx, parent.tctx);
    assert_eq!(child.rctx, parent.rctx);
    assert_eq!(child.purpose, parent.purpose);
    assert_eq!(child.issued_at, NOW);
}

#[test]
fn accepts_the_txn_of_the_parent_not_of_the_new_token() {
    let parent = root();
    let mut nt = new_token(2, NOW);
    nt.txn = TxnId([0xff; 16]);
    let child = narrow::downscope(
        &parent,
        "planner",
        narrower(&parent),
        &Policy::default(),
        nt,
    )
    .unwrap();
    assert_eq!(child.txn, parent.txn);
}

#[test]
fn accepts_a_smaller_max() {
    let parent = root();
    let child = derive(
        &parent,
        "planner",
        with_claim(same_as(&parent, "booker"), "amount", Constraint::Max(200)),
    )
    .unwrap();
    assert_eq!(child.grant.claims["amount"], Constraint::Max(200));
    assert_eq!(child.grant.claims["nights"], Constraint::Min(1));
}

#[test]
fn accepts_a_larger_min() {
    let parent = root();
    let child = derive(
        &parent,
        "planner",
        with_claim(same_as(&parent, "booker"), "nights", Constraint::Min(2)),
    )
    .unwrap();
    assert_eq!(child.grant.claims["nights"], Constraint::Min(2));
}

#[test]
fn accepts_an_allow_subset() {
    let parent = root();
    let c = Constraint::AllowSet(set(&["travel"]));
    let child = derive(
        &parent,
        "planner",
        with_claim(same_as(&parent, "booker"), "category", c.clone()),
    )
    .unwrap();
    assert_eq!(child.grant.claims["category"], c);
}

#[test]
fn accepts_a_deny_superset() {
    let parent = root();
    let c = Constraint::DenySet(set(&["health", "gambling"]));
    let child = derive(
        &parent,
        "planner",
        with_claim(same_as(&parent, "booker"), "blocked", c.clone()),
    )
    .unwrap();
    assert_eq!(child.grant.claims["blocked"], c);
}

#[test]
fn accepts_a_longer_prefix() {
    let parent = root();
    let c = Constraint::Prefix("/trips/42/".into());
    let child = derive(
        &parent,
        "planner",
        with_claim(same_as(&parent, "booker"), "path", c.clone()),
    )
    .unwrap();
    assert_eq!(child.grant.claims["path"], c);
}

#[test]
fn accepts_an_exact_claim_restated_unchanged_alongside_a_narrowing() {
    let parent = root();
    let req = with_claim(
        narrower(&parent),
        "currency",
        Constraint::Exact(Value::Str("EUR".into())),
    );
    let child = derive(&parent, "planner", req).unwrap();
    assert_eq!(
        child.grant.claims["currency"],
        Constraint::Exact(Value::Str("EUR".into()))
    );
}

#[test]
fn accepts_a_new_claim() {
    let parent = root();
    let child = derive(
        &parent,
        "planner",
        with_claim(
            same_as(&parent, "booker"),
            "region",
            Constraint::Prefix("eu-".into()),
        ),
    )
    .unwrap();
    assert_eq!(child.grant.claims.len(), parent.grant.claims.len() + 1);
    assert_eq!(
        child.grant.claims["region"],
        Constraint::Prefix("eu-".into())
    );
}

#[test]
fn accepts_narrower_targets() {
    let parent = root();
    let mut req = same_as(&parent, "booker");
    req.targets = set(&["payer"]);
    let child = derive(&parent, "planner", req).unwrap();
    assert_eq!(child.grant.targets, set(&["payer"]));
}

#[test]
fn accepts_an_earlier_expiry() {
    let parent = root();
    let mut req = same_as(&parent, "booker");
    req.ttl_secs = Some(ROOT_TTL - 1);
    let child = derive(&parent, "planner", req).unwrap();
    assert_eq!(child.grant.expires_at, NOW.plus_secs(ROOT_TTL - 1));
}

#[test]
fn accepts_a_purpose_override() {
    let parent = root();
    let mut req = narrower(&parent);
    req.purpose = Some("book the hotel".into());
    let child = derive(&parent, "planner", req).unwrap();
    assert_eq!(child.purpose, "book the hotel");
}

#[test]
fn accepts_a_chain_to_exactly_max_depth() {
    let policy = Policy {
        max_depth: 2,
        ..Policy::default()
    };
    let parent = root_with_targets(&["booker", "payer", "search"]);
    let mut req = narrower(&parent);
    req.targets = set(&["payer"]);
    let child = narrow::downscope(&parent, "planner", req, &policy, new_token(2, NOW)).unwrap();
    let mut req = same_as(&child, "payer");
    req.targets = BTreeSet::new();
    let grandchild = narrow::downscope(&child, "booker", req, &policy, new_token(3, NOW)).unwrap();
    assert_eq!(grandchild.depth, 2);
    assert_eq!(
        grandchild.actors,
        vec![party("gateway"), party("planner"), party("booker")]
    );
}

#[test]
fn accepts_a_loop_when_policy_allows() {
    let policy = Policy {
        allow_actor_loops: true,
        ..Policy::default()
    };
    let parent = root_with_targets(&["booker", "gateway", "planner"]);
    for back in ["gateway", "planner"] {
        let mut req = narrower(&parent);
        req.audience = party(back);
        let child = narrow::downscope(&parent, "planner", req, &policy, new_token(2, NOW)).unwrap();
        assert_eq!(child.audience.id, back);
    }
}

// ----------------------------------------------------------------------------------
// Refusals, one per dimension
// ----------------------------------------------------------------------------------

#[test]
fn refuses_an_expired_parent() {
    let parent = root();
    for now in [
        parent.grant.expires_at,
        UnixMillis(parent.grant.expires_at.0 + 1),
    ] {
        let r = narrow::downscope(
            &parent,
            "planner",
            narrower(&parent),
            &Policy::default(),
            new_token(2, now),
        );
        assert_refused(r, Dimension::ParentExpired, &["expired"]);
    }
    let just_before = UnixMillis(parent.grant.expires_at.0 - 1);
    assert!(
        narrow::downscope(
            &parent,
            "planner",
            narrower(&parent),
            &Policy::default(),
            new_token(2, just_before)
        )
        .is_ok()
    );
}

#[test]
fn refuses_a_caller_that_does_not_hold_the_parent() {
    let parent = root();
    assert_refused(
        derive(&parent, "booker", narrower(&parent)),
        Dimension::Holder,
        &["\"booker\""],
    );
    // The refusal never names the real holder.
    assert!(
        !derive(&parent, "booker", narrower(&parent))
            .unwrap_err()
            .detail
            .contains("planner")
    );
    assert_refused(
        derive(&parent, "gateway", narrower(&parent)),
        Dimension::Holder,
        &["\"gateway\""],
    );
}

#[test]
fn refuses_a_scope_the_parent_lacks() {
    let parent = root();
    let mut req = narrower(&parent);
    req.scopes.insert("admin".into());
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Scopes,
        &["\"admin\""],
    );
}

#[test]
fn refuses_a_larger_max() {
    let parent = root();
    let req = with_claim(narrower(&parent), "amount", Constraint::Max(501));
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"amount\"", "max 501", "max 500"],
    );
}

#[test]
fn refuses_a_smaller_min() {
    let parent = root();
    let req = with_claim(narrower(&parent), "nights", Constraint::Min(0));
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"nights\"", "min 0"],
    );
}

#[test]
fn refuses_an_allow_superset() {
    let parent = root();
    let req = with_claim(
        narrower(&parent),
        "category",
        Constraint::AllowSet(set(&["travel", "health"])),
    );
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"category\"", "health"],
    );
}

#[test]
fn refuses_a_deny_subset() {
    let parent = root();
    let req = with_claim(
        narrower(&parent),
        "blocked",
        Constraint::DenySet(BTreeSet::new()),
    );
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"blocked\""],
    );
}

#[test]
fn refuses_a_shorter_or_sibling_prefix() {
    let parent = root();
    for p in ["/trips", "/", "", "/admin/", "/tripsx/"] {
        let req = with_claim(narrower(&parent), "path", Constraint::Prefix(p.into()));
        assert_refused(
            derive(&parent, "planner", req),
            Dimension::Claims,
            &["\"path\""],
        );
    }
}

#[test]
fn refuses_a_changed_exact_value() {
    let parent = root();
    for v in [
        Value::Str("USD".into()),
        Value::Str("EURx".into()),
        Value::Int(0),
    ] {
        let req = with_claim(narrower(&parent), "currency", Constraint::Exact(v));
        assert_refused(
            derive(&parent, "planner", req),
            Dimension::Claims,
            &["\"currency\""],
        );
    }
}

#[test]
fn refuses_a_claim_of_another_kind() {
    let parent = root();
    // Even a semantically narrower claim of another kind is refused: kinds never compare.
    let req = with_claim(
        narrower(&parent),
        "amount",
        Constraint::Exact(Value::Int(10)),
    );
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"amount\"", "exact 10"],
    );
    let req = with_claim(
        narrower(&parent),
        "category",
        Constraint::DenySet(set(&["health"])),
    );
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Claims,
        &["\"category\""],
    );
}

#[test]
fn refuses_an_audience_outside_the_targets() {
    let parent = root();
    let mut req = narrower(&parent);
    req.audience = party("mallory");
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Audience,
        &["\"mallory\""],
    );
}

#[test]
fn refuses_a_target_the_parent_lacks() {
    let parent = root();
    let mut req = narrower(&parent);
    req.targets.insert("mallory".into());
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Targets,
        &["\"mallory\""],
    );
}

#[test]
fn refuses_a_later_expiry() {
    let parent = root();
    for (ttl, names) in [
        (ROOT_TTL + 1, &["1000 ms"][..]),
        (u64::MAX, &[][..]),
        (0, &["ttl"][..]),
    ] {
        let mut req = narrower(&parent);
        req.ttl_secs = Some(ttl);
        assert_refused(derive(&parent, "planner", req), Dimension::Expiry, names);
    }
}

#[test]
fn refuses_a_grant_identical_to_the_parent() {
    let parent = root();
    assert_refused(
        derive(&parent, "planner", same_as(&parent, "booker")),
        Dimension::NotNarrower,
        &[],
    );
    // Restating every claim, and a ttl landing exactly on the parent's expiry, is
    // still no narrowing.
    let mut req = same_as(&parent, "booker");
    req.claims = parent.grant.claims.clone();
    req.ttl_secs = Some(ROOT_TTL);
    req.purpose = Some("different purpose".into());
    assert_refused(derive(&parent, "planner", req), Dimension::NotNarrower, &[]);
}

#[test]
fn refuses_a_chain_deeper_than_max_depth() {
    let policy = Policy {
        max_depth: 1,
        ..Policy::default()
    };
    let parent = root();
    let child = narrow::downscope(
        &parent,
        "planner",
        narrower(&parent),
        &policy,
        new_token(2, NOW),
    )
    .unwrap();
    let mut req = same_as(&child, "payer");
    req.targets = BTreeSet::new();
    let r = narrow::downscope(&child, "booker", req, &policy, new_token(3, NOW));
    assert_refused(r, Dimension::Depth, &["depth 2", "max_depth 1"]);
}

#[test]
fn refuses_a_parent_at_the_largest_depth_without_wrapping() {
    let mut parent = root();
    parent.depth = u32::MAX;
    let policy = Policy {
        max_depth: u32::MAX,
        ..Policy::default()
    };
    let r = narrow::downscope(
        &parent,
        "planner",
        narrower(&parent),
        &policy,
        new_token(2, NOW),
    );
    assert_refused(r, Dimension::Depth, &["4294967296"]);
}

#[test]
fn refuses_an_audience_that_already_acted() {
    let parent = root_with_targets(&["booker", "gateway", "planner"]);
    let mut req = narrower(&parent);
    req.audience = party("gateway");
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Loop,
        &["\"gateway\""],
    );
    // Delegating to oneself is a loop too.
    let mut req = narrower(&parent);
    req.audience = party("planner");
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Loop,
        &["\"planner\""],
    );
}

#[test]
fn refuses_a_mint_with_a_ttl_out_of_range() {
    for ttl in [0, Policy::default().max_ttl_secs + 1] {
        let mut req = mint_request(&["booker"]);
        req.ttl_secs = Some(ttl);
        let err = narrow::mint(
            req,
            party("gateway"),
            "example.com",
            &Policy::default(),
            new_token(1, NOW),
        )
        .unwrap_err();
        assert_eq!(err.dimension, Dimension::Expiry);
        assert!(err.detail.contains(&ttl.to_string()), "{err}");
    }
}

#[test]
fn refuses_a_mint_to_the_minter_itself() {
    let err = narrow::mint(
        mint_request(&["booker"]),
        party("planner"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap_err();
    assert_eq!(err.dimension, Dimension::Loop);
    assert!(err.detail.contains("\"planner\""), "{err}");
}

// ----------------------------------------------------------------------------------
// Action checks
// ----------------------------------------------------------------------------------

fn good_attributes() -> BTreeMap<String, Value> {
    [
        ("amount", Value::Int(500)),
        ("nights", Value::Int(1)),
        ("category", Value::Str("travel".into())),
        ("blocked", Value::Str("hotel".into())),
        ("path", Value::Str("/trips/42".into())),
        ("currency", Value::Str("EUR".into())),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

#[test]
fn authorize_passes_the_scope_and_every_claim() {
    let g = root().grant;
    assert_eq!(g.authorize("pay", &good_attributes()), Ok(()));
    let mut extra = good_attributes();
    extra.insert("unconstrained".into(), Value::Int(1));
    assert_eq!(
        g.authorize("pay", &extra),
        Ok(()),
        "attributes no claim names are free"
    );
}

#[test]
fn authorize_denies_an_ungranted_scope() {
    let d = root()
        .grant
        .authorize("admin", &good_attributes())
        .unwrap_err();
    assert_eq!(d.denied_by, "scope");
    assert!(d.reason.contains("\"admin\""));
}

#[test]
fn authorize_denies_each_violated_claim() {
    let g = root().grant;
    for (name, bad) in [
        ("amount", Value::Int(501)),
        ("nights", Value::Int(0)),
        ("category", Value::Str("health".into())),
        ("blocked", Value::Str("health".into())),
        ("path", Value::Str("/trips".into())),
        ("currency", Value::Str("USD".into())),
    ] {
        let mut a = good_attributes();
        a.insert(name.into(), bad);
        assert_eq!(g.authorize("pay", &a).unwrap_err().denied_by, name);
    }
}

#[test]
fn authorize_fails_closed_on_a_missing_attribute() {
    let g = root().grant;
    for name in root_claims().keys() {
        let mut a = good_attributes();
        a.remove(name);
        let d = g.authorize("pay", &a).unwrap_err();
        assert_eq!(&d.denied_by, name);
        assert!(d.reason.contains(name.as_str()));
    }
}

#[test]
fn authorize_fails_closed_on_a_wrongly_typed_attribute() {
    let g = root().grant;
    for (name, wrong) in [
        ("amount", Value::Str("1".into())),
        ("nights", Value::Str("5".into())),
        ("category", Value::Int(1)),
        ("blocked", Value::Int(1)),
        ("path", Value::Int(1)),
        ("currency", Value::Int(0)),
    ] {
        let mut a = good_attributes();
        a.insert(name.into(), wrong);
        assert_eq!(g.authorize("pay", &a).unwrap_err().denied_by, name);
    }
}

// ---- use limits ----

fn limited_root(uses: Option<u32>) -> TokenRecord {
    let mut req = mint_request(&["booker", "payer", "search"]);
    req.max_uses = uses;
    narrow::mint(
        req,
        party("gateway"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap()
}

#[test]
fn children_inherit_or_lower_the_use_limit() {
    let root = limited_root(Some(3));
    assert_eq!(root.grant.max_uses, Some(3));
    let inherited = derive(&root, "planner", narrower(&root)).unwrap();
    assert_eq!(inherited.grant.max_uses, Some(3));
    let mut req = same_as(&root, "booker");
    req.max_uses = Some(1);
    let lowered = derive(&root, "planner", req).unwrap();
    assert_eq!(
        lowered.grant.max_uses,
        Some(1),
        "a lower limit alone is a narrowing"
    );
    let unlimited = limited_root(None);
    let mut req = narrower(&unlimited);
    req.max_uses = Some(5);
    assert_eq!(
        derive(&unlimited, "planner", req).unwrap().grant.max_uses,
        Some(5)
    );
}

#[test]
fn refuses_more_uses_than_the_parent_and_zero_uses() {
    let root = limited_root(Some(1));
    let mut req = narrower(&root);
    req.max_uses = Some(2);
    let err = derive(&root, "planner", req).unwrap_err();
    assert_eq!(err.dimension, Dimension::Uses);
    assert!(
        err.detail.contains("max_uses 2") && err.detail.contains("1"),
        "{err}"
    );
    let mut req = narrower(&root);
    req.max_uses = Some(0);
    assert_eq!(
        derive(&root, "planner", req).unwrap_err().dimension,
        Dimension::Uses
    );
    let mut req = mint_request(&["booker"]);
    req.max_uses = Some(0);
    let err = narrow::mint(
        req,
        party("gateway"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap_err();
    assert_eq!(err.dimension, Dimension::Uses);
}

#[test]
fn refuses_a_child_whose_merged_claims_exceed_the_bound() {
    let mut req = mint_request(&["booker", "payer", "search"]);
    req.claims = (0..writ_core::limits::MAX_CLAIMS)
        .map(|i| (format!("c{i}"), Constraint::Max(1)))
        .collect();
    let root = narrow::mint(
        req,
        party("gateway"),
        "example.com",
        &Policy::default(),
        new_token(1, NOW),
    )
    .unwrap();
    let req = with_claim(narrower(&root), "one_more", Constraint::Max(1));
    assert_refused(derive(&root, "planner", req), Dimension::Claims, &["limit"]);
}
