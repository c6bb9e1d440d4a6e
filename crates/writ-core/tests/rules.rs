#![allow(clippy::unwrap_used)]
//! One deterministic test per refusal dimension and per accepted case of the narrowing
//! rules. Refusals check the returned `Dimension` and that the message names the
//! offending scope, claim, target, party or key.

use std::collections::{BTreeMap, BTreeSet};
use writ_core::audit::{EventKind, MAX_EVENT_LIST_BYTES};
use writ_core::lifecycle::{MAX_NARROWED_LINE, narrowed};
use writ_core::limits::{MAX_CLAIMS, MAX_CONTEXT_BYTES, MAX_DETAIL_BYTES, MAX_GRANT_BYTES};
use writ_core::narrow::{
    self, ChildRequest, Dimension, MintRequest, NarrowingError, NewToken, Policy, request_digest,
};
use writ_core::text::SHOWN_CHARS;
use writ_core::token::TokenError;
use writ_core::{
    ActorKind, Attributes, Claim, Claims, ClientType, Constraint, Event, EventId, KeyRing, Party,
    ServerKey, TokenRecord, TxnId, UnixMillis, Value,
};

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const ROOT_TTL: u64 = 600;
/// 2025-12-01T00:00:00Z, in Unix seconds.
const T0: i64 = 1_764_547_200;
const DAY: i64 = 86_400;

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

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn every(c: Constraint) -> Claim {
    Claim::on_every_scope(c)
}

fn on(c: Constraint, scopes: &[&str]) -> Claim {
    Claim {
        constraint: c,
        applies_to: Some(set(scopes)),
    }
}

fn ring() -> KeyRing {
    KeyRing::new(vec![ServerKey {
        id: 1,
        key: [7; 32],
    }])
    .unwrap()
}

fn new_token(n: u8, now: UnixMillis) -> NewToken {
    let (_, token) = ring().issue([n; 32]);
    NewToken {
        token,
        txn: TxnId::new(now, [n; 10]),
        now,
        idempotency: None,
        auth: writ_core::AuthMethod::Mtls,
    }
}

fn root_claims() -> Claims {
    [
        ("amount", every(Constraint::Max(500))),
        ("nights", every(Constraint::Min(1))),
        (
            "category",
            every(Constraint::AllowSet(set(&["travel", "food"]))),
        ),
        ("blocked", every(Constraint::DenySet(set(&["health"])))),
        ("path", every(Constraint::Prefix("/trips/".into()))),
        ("currency", every(Constraint::Exact(s("EUR")))),
        ("guests", every(Constraint::Range { min: 1, max: 4 })),
        (
            "stay",
            every(Constraint::Window {
                not_before: T0,
                not_after: T0 + 14 * DAY,
            }),
        ),
        (
            "merchant",
            every(Constraint::allow_folded(strs(&["Acme", "Globex"]))),
        ),
        ("label", every(Constraint::deny_folded(strs(&["Gambling"])))),
        ("fee", on(Constraint::Max(50), &["pay"])),
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
        rctx: [
            ("ip".to_string(), "203.0.113.9".to_string()),
            ("authn".to_string(), "webauthn".to_string()),
        ]
        .into(),
        ttl_secs: Some(ROOT_TTL),
        max_uses: None,
        require_action_check: false,
    }
}

fn mint(req: MintRequest) -> Result<TokenRecord, NarrowingError> {
    mint_with(req, &Policy::default())
}

fn mint_with(req: MintRequest, policy: &Policy) -> Result<TokenRecord, NarrowingError> {
    narrow::mint(
        req,
        party("gateway"),
        "example.com",
        policy,
        new_token(1, NOW),
    )
}

/// Root minted by `gateway` for `planner`, who may reach booker, payer and search.
fn root() -> TokenRecord {
    root_with_targets(&["booker", "payer", "search"])
}

fn root_with_targets(targets: &[&str]) -> TokenRecord {
    mint(mint_request(targets)).unwrap()
}

/// A root whose targets may name its own audience (minted under a policy allowing loops),
/// so that a child may try to loop back.
fn looping_root(targets: &[&str]) -> TokenRecord {
    let policy = Policy {
        allow_actor_loops: true,
        ..Policy::default()
    };
    mint_with(mint_request(targets), &policy).unwrap()
}

/// A request identical in grant to `parent`'s, for `audience`.
/// Everything the parent holds, for `audience`: its targets less the parties already in
/// the chain (the parent's actors and holder, and `audience` itself), which no child may
/// name as reachable without allowing loops.
fn same_as(parent: &TokenRecord, audience: &str) -> ChildRequest {
    let in_chain = |t: &String| {
        t == audience || *t == parent.audience.id || parent.actors.iter().any(|a| a.id == *t)
    };
    ChildRequest {
        audience: party(audience),
        targets: parent
            .grant
            .targets
            .iter()
            .filter(|t| !in_chain(t))
            .cloned()
            .collect(),
        scopes: parent.grant.scopes.clone(),
        claims: Claims::new(),
        ttl_secs: None,
        purpose: None,
        max_uses: None,
        require_action_check: false,
        drop_rctx: BTreeSet::new(),
    }
}

/// A valid request: drops the `trips:read` scope, keeps everything else.
fn narrower(parent: &TokenRecord) -> ChildRequest {
    let mut req = same_as(parent, "booker");
    req.scopes.remove("trips:read");
    req
}

fn derive(
    parent: &TokenRecord,
    caller: &str,
    req: ChildRequest,
) -> Result<TokenRecord, NarrowingError> {
    narrow::downscope(parent, caller, req, &Policy::default(), new_token(2, NOW))
}

/// `req` with every one of the parent's targets, the child's own audience included, derived
/// under a policy that allows loops: the only way a child can keep its parent's targets.
fn derive_keeping_targets(
    parent: &TokenRecord,
    mut req: ChildRequest,
) -> Result<TokenRecord, NarrowingError> {
    req.targets = parent.grant.targets.clone();
    let loops = Policy {
        allow_actor_loops: true,
        ..Policy::default()
    };
    narrow::downscope(parent, &parent.audience.id, req, &loops, new_token(2, NOW))
}

/// Derives `req` from the standard root, as its holder.
fn from_root(
    req: impl FnOnce(&TokenRecord) -> ChildRequest,
) -> Result<TokenRecord, NarrowingError> {
    let parent = root();
    let req = req(&parent);
    derive(&parent, "planner", req)
}

fn with_claim(req: ChildRequest, name: &str, c: Constraint) -> ChildRequest {
    with_scoped_claim(req, name, every(c))
}

fn with_scoped_claim(mut req: ChildRequest, name: &str, c: Claim) -> ChildRequest {
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

/// Asserts that a child narrowing only claim `name` to `c` is accepted and carries it.
fn assert_claim_accepted(name: &str, c: Claim) {
    // Alone when it changes the claim; alongside a scope narrowing when it restates it.
    let child = from_root(|p| {
        let req = if p.grant.claims.get(name) == Some(&c) {
            narrower(p)
        } else {
            same_as(p, "booker")
        };
        with_scoped_claim(req, name, c.clone())
    })
    .unwrap_or_else(|e| panic!("{name}: {c} refused: {e}"));
    assert_eq!(child.grant.claims[name], c);
}

/// Asserts that narrowing claim `name` to `c` is refused on `Claims`, naming the claim.
fn assert_claim_refused(name: &str, c: Claim) {
    let shown = c.to_string();
    let r = from_root(|p| with_scoped_claim(narrower(p), name, c));
    assert!(r.is_err(), "{name}: {shown} was accepted");
    assert_refused(r, Dimension::Claims, &[&format!("{name:?}")]);
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
    assert!(!r.grant.require_action_check);
    assert_eq!(r.issued_at, NOW);
    assert_eq!(r.idempotency, None);

    let mut req = mint_request(&["booker"]);
    req.ttl_secs = None;
    req.require_action_check = true;
    let r = mint(req).unwrap();
    assert_eq!(
        r.grant.expires_at,
        NOW.plus_secs(Policy::default().default_ttl_secs)
    );
    assert!(r.grant.require_action_check);
}

#[test]
fn records_carry_the_idempotency_digest_they_were_issued_under() {
    let req = mint_request(&["booker"]);
    let digest = request_digest(b"gateway", &req);
    let mut nt = new_token(1, NOW);
    nt.idempotency = Some(digest);
    let r = narrow::mint(req, party("gateway"), "example.com", &Policy::default(), nt).unwrap();
    assert_eq!(r.idempotency, Some(digest));

    let parent = root();
    let req = narrower(&parent);
    let digest = request_digest(parent.token_id.to_string().as_bytes(), &req);
    let mut nt = new_token(2, NOW);
    nt.idempotency = Some(digest);
    let child = narrow::downscope(&parent, "planner", req, &Policy::default(), nt).unwrap();
    assert_eq!(child.idempotency, Some(digest));
    assert_eq!(
        derive(&parent, "planner", narrower(&parent))
            .unwrap()
            .idempotency,
        None,
        "never inherited from the parent"
    );
}

#[test]
fn accepts_narrower_scopes_and_copies_immutables() {
    let parent = root();
    let child = derive(&parent, "planner", narrower(&parent)).unwrap();
    assert_eq!(child.grant.scopes, set(&["trips:book", "pay"]));
    assert_eq!(
        child.grant.claims, parent.grant.claims,
        "unnamed claims are inherited unchanged"
    );
    assert_eq!(
        child.grant.targets,
        set(&["payer", "search"]),
        "all but its own audience"
    );
    assert_eq!(
        child.grant.expires_at, parent.grant.expires_at,
        "no ttl inherits the parent's expiry"
    );
    assert!(!child.grant.require_action_check);
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
    assert_eq!(child.rctx, parent.rctx, "nothing dropped, everything kept");
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
    let child =
        from_root(|p| with_claim(same_as(p, "booker"), "amount", Constraint::Max(200))).unwrap();
    assert_eq!(child.grant.claims["amount"], every(Constraint::Max(200)));
    assert_eq!(child.grant.claims["nights"], every(Constraint::Min(1)));
}

#[test]
fn accepts_a_larger_min() {
    assert_claim_accepted("nights", every(Constraint::Min(2)));
}

#[test]
fn accepts_an_allow_subset() {
    assert_claim_accepted("category", every(Constraint::AllowSet(set(&["travel"]))));
}

#[test]
fn accepts_a_deny_superset() {
    assert_claim_accepted(
        "blocked",
        every(Constraint::DenySet(set(&["health", "gambling"]))),
    );
}

#[test]
fn accepts_a_longer_prefix() {
    assert_claim_accepted("path", every(Constraint::Prefix("/trips/42/".into())));
    assert_claim_accepted("path", every(Constraint::Prefix("/trips/42".into())));
}

#[test]
fn accepts_an_exact_claim_restated_unchanged_alongside_a_narrowing() {
    let child =
        from_root(|p| with_claim(narrower(p), "currency", Constraint::Exact(s("EUR")))).unwrap();
    assert_eq!(
        child.grant.claims["currency"],
        every(Constraint::Exact(s("EUR")))
    );
}

#[test]
fn accepts_a_new_claim() {
    let parent = root();
    let c = on(Constraint::Prefix("/eu".into()), &["trips:book"]);
    let child = derive(
        &parent,
        "planner",
        with_scoped_claim(same_as(&parent, "booker"), "region", c.clone()),
    )
    .unwrap();
    assert_eq!(child.grant.claims.len(), parent.grant.claims.len() + 1);
    assert_eq!(child.grant.claims["region"], c);
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
    let parent = looping_root(&["booker", "gateway", "planner"]);
    for back in ["gateway", "planner"] {
        let mut req = narrower(&parent);
        req.audience = party(back);
        let child = narrow::downscope(&parent, "planner", req, &policy, new_token(2, NOW)).unwrap();
        assert_eq!(child.audience.id, back);
    }
}

// ---- the new claim kinds and their cross-kind pairs ----

#[test]
fn accepts_a_range_within_a_max_a_min_or_a_range() {
    let r = |min, max| every(Constraint::Range { min, max });
    // Under max 500: any range topping out at 500 or below, however low it starts.
    assert_claim_accepted("amount", r(0, 500));
    assert_claim_accepted("amount", r(i64::MIN, 499));
    // Under min 1: any range starting at 1 or above.
    assert_claim_accepted("nights", r(1, 1));
    assert_claim_accepted("nights", r(3, i64::MAX));
    // Under range 1..=4: a range inside it, the same range.
    assert_claim_accepted("guests", r(2, 3));
    assert_claim_accepted("guests", r(1, 4));
}

#[test]
fn accepts_a_narrower_window() {
    let w = |a, b| {
        every(Constraint::Window {
            not_before: a,
            not_after: b,
        })
    };
    assert_claim_accepted("stay", w(T0 + DAY, T0 + 2 * DAY));
    assert_claim_accepted("stay", w(T0, T0 + 14 * DAY));
    assert_claim_accepted("stay", w(T0 + 14 * DAY, T0 + 14 * DAY));
}

#[test]
fn accepts_an_exact_set_within_a_case_insensitive_allow_set() {
    // Each member's fold is in the parent's folded set, whatever its case or width.
    for members in [
        &["acme"][..],
        &["ACME", "globex"],
        &["Acme", "ＧＬＯＢＥＸ", "GlObEx"],
    ] {
        assert_claim_accepted("merchant", every(Constraint::AllowSet(set(members))));
    }
    // A case-insensitive subset is narrower too.
    assert_claim_accepted(
        "merchant",
        every(Constraint::allow_folded(strs(&["GLOBEX"]))),
    );
}

#[test]
fn accepts_a_case_insensitive_deny_set_covering_an_exact_one() {
    // Parent: exact deny {health}. A deny-ci containing fold("health") denies at least that.
    assert_claim_accepted("blocked", every(Constraint::deny_folded(strs(&["HEALTH"]))));
    assert_claim_accepted(
        "blocked",
        every(Constraint::deny_folded(strs(&["Health", "casino"]))),
    );
    // Parent: deny-ci {gambling}. A deny-ci superset is narrower.
    assert_claim_accepted(
        "label",
        every(Constraint::deny_folded(strs(&["GAMBLING", "Betting"]))),
    );
}

#[test]
fn accepts_a_claim_on_more_scopes() {
    // `fee` constrains `pay` only; constraining more scopes (all of them, listed) is
    // narrower.
    assert_claim_accepted("fee", on(Constraint::Max(50), &["pay", "trips:book"]));
    assert_claim_accepted("fee", on(Constraint::Max(10), &["pay"]));
    assert_claim_accepted(
        "fee",
        on(Constraint::Max(50), &["pay", "trips:book", "trips:read"]),
    );
    // Restated without scopes, it keeps the parent's: narrowing a value is not moving it.
    let child =
        from_root(|p| with_scoped_claim(same_as(p, "booker"), "fee", every(Constraint::Max(10))))
            .unwrap();
    assert_eq!(child.grant.claims["fee"], on(Constraint::Max(10), &["pay"]));
    // A claim may name a scope the child itself drops, as long as the parent holds it.
    let child = from_root(|p| {
        with_scoped_claim(
            narrower(p),
            "fee",
            on(Constraint::Max(50), &["pay", "trips:read"]),
        )
    })
    .unwrap();
    assert!(!child.grant.scopes.contains("trips:read"));
}

#[test]
fn accepts_a_prefix_below_the_parent_at_a_segment_boundary() {
    let mut req = mint_request(&["booker"]);
    req.claims = [(
        "path".to_string(),
        every(Constraint::Prefix("/trips".into())),
    )]
    .into();
    let parent = mint(req).unwrap();
    for ok in ["/trips", "/trips/", "/trips/12", "/trips/12/"] {
        let req = with_claim(narrower(&parent), "path", Constraint::Prefix(ok.into()));
        let r = derive(&parent, "planner", req);
        assert!(r.is_ok(), "{ok}: {r:?}");
    }
    // `/trips` -> `/trips/` drops exactly `/trips` itself: a narrowing.
    let req = with_claim(
        same_as(&parent, "booker"),
        "path",
        Constraint::Prefix("/trips/".into()),
    );
    let child = derive(&parent, "planner", req).unwrap();
    let attrs = |p: &str| -> Attributes { [("path".to_string(), vec![s(p)])].into() };
    assert!(parent.grant.authorize("pay", &attrs("/trips")).is_ok());
    assert!(child.grant.authorize("pay", &attrs("/trips")).is_err());
    assert!(child.grant.authorize("pay", &attrs("/trips/1")).is_ok());
}

#[test]
fn require_action_check_is_settable_and_inherited() {
    let parent = root();
    // Setting it is a narrowing on its own.
    let mut req = same_as(&parent, "booker");
    req.require_action_check = true;
    let child = derive_keeping_targets(&parent, req).unwrap();
    assert!(child.grant.require_action_check);
    assert_eq!(narrowed(&parent, &child), vec!["action checks required"]);
    // Once set, a child that asks for `false` keeps it.
    let grandchild = narrow::downscope(
        &child,
        "booker",
        {
            let mut r = same_as(&child, "payer");
            r.targets.remove("payer");
            r
        },
        &Policy::default(),
        new_token(3, NOW),
    )
    .unwrap();
    assert!(grandchild.grant.require_action_check, "cleared by a child");
    // A root minted with it passes it down.
    let mut req = mint_request(&["booker"]);
    req.require_action_check = true;
    let root = mint(req).unwrap();
    let child = derive(&root, "planner", narrower(&root)).unwrap();
    assert!(child.grant.require_action_check);
    // Restating it on a parent that has it is no narrowing.
    let mut req = same_as(&root, "booker");
    req.require_action_check = true;
    assert_refused(
        derive_keeping_targets(&root, req),
        Dimension::NotNarrower,
        &[],
    );
}

#[test]
fn dropping_rctx_removes_only_those_keys() {
    let parent = root();
    let mut req = narrower(&parent);
    req.drop_rctx = set(&["ip"]);
    let child = derive(&parent, "planner", req).unwrap();
    assert_eq!(
        child.rctx,
        BTreeMap::from([("authn".to_string(), "webauthn".to_string())]),
        "the other key keeps its value"
    );
    assert_eq!(child.tctx, parent.tctx, "tctx never changes");
    assert!(narrowed(&parent, &child).contains(&"rctx dropped: ip".to_string()));
    let mut req = narrower(&parent);
    req.drop_rctx = set(&["ip", "authn"]);
    assert!(derive(&parent, "planner", req).unwrap().rctx.is_empty());
    // A grandchild can drop only what its parent still has.
    let mut req = same_as(&child, "payer");
    req.targets.remove("payer");
    req.drop_rctx = set(&["ip"]);
    let r = narrow::downscope(&child, "booker", req, &Policy::default(), new_token(3, NOW));
    assert_refused(r, Dimension::Context, &["\"ip\""]);
}

#[test]
fn accepts_a_grant_and_context_exactly_at_the_limits() {
    let parent = root();
    let pad = |n: usize| {
        with_claim(
            narrower(&parent),
            "pad",
            Constraint::DenySet(["x".repeat(n)].into()),
        )
    };
    let probe = derive(&parent, "planner", pad(1)).unwrap();
    let room = MAX_GRANT_BYTES - probe.grant.size();
    let at = derive(&parent, "planner", pad(1 + room)).unwrap();
    assert_eq!(at.grant.size(), MAX_GRANT_BYTES);
    assert_refused(
        derive(&parent, "planner", pad(2 + room)),
        Dimension::Size,
        &[
            &(MAX_GRANT_BYTES + 1).to_string(),
            &MAX_GRANT_BYTES.to_string(),
        ],
    );

    let purpose = |n: usize| {
        let mut req = narrower(&parent);
        req.purpose = Some("p".repeat(n));
        req
    };
    let probe = derive(&parent, "planner", purpose(1)).unwrap();
    let room = MAX_CONTEXT_BYTES - probe.context_size();
    let at = derive(&parent, "planner", purpose(1 + room)).unwrap();
    assert_eq!(at.context_size(), MAX_CONTEXT_BYTES);
    assert_refused(
        derive(&parent, "planner", purpose(2 + room)),
        Dimension::Size,
        &[
            &(MAX_CONTEXT_BYTES + 1).to_string(),
            &MAX_CONTEXT_BYTES.to_string(),
        ],
    );
    // The context is measured after the drops: dropping `ip` makes room for a longer
    // purpose.
    let ip = parent.rctx["ip"].len();
    let mut req = purpose(2 + room + ip);
    req.drop_rctx = set(&["ip"]);
    assert!(derive(&parent, "planner", req).is_ok());
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
    let r = from_root(|p| with_claim(narrower(p), "amount", Constraint::Max(501)));
    assert_refused(r, Dimension::Claims, &["\"amount\"", "max 501", "max 500"]);
}

#[test]
fn refuses_a_smaller_min() {
    let r = from_root(|p| with_claim(narrower(p), "nights", Constraint::Min(0)));
    assert_refused(r, Dimension::Claims, &["\"nights\"", "min 0"]);
}

#[test]
fn refuses_an_allow_superset() {
    let r = from_root(|p| {
        with_claim(
            narrower(p),
            "category",
            Constraint::AllowSet(set(&["travel", "health"])),
        )
    });
    assert_refused(r, Dimension::Claims, &["\"category\"", "health"]);
}

#[test]
fn refuses_a_deny_subset() {
    assert_claim_refused("blocked", every(Constraint::DenySet(BTreeSet::new())));
}

#[test]
fn refuses_a_shorter_or_sibling_prefix() {
    for p in ["/trips", "/", "", "/admin/", "/tripsx/", "/trip"] {
        assert_claim_refused("path", every(Constraint::Prefix(p.into())));
    }
}

#[test]
fn refuses_a_prefix_across_a_segment_boundary() {
    let mut req = mint_request(&["booker"]);
    req.claims = [(
        "path".to_string(),
        every(Constraint::Prefix("/trips".into())),
    )]
    .into();
    let parent = mint(req).unwrap();
    for bad in ["/tripsX", "/trips-old", "/trip", "/tripsX/", "/"] {
        let req = with_claim(narrower(&parent), "path", Constraint::Prefix(bad.into()));
        assert_refused(
            derive(&parent, "planner", req),
            Dimension::Claims,
            &["\"path\""],
        );
    }
}

#[test]
fn refuses_a_changed_exact_value() {
    for v in [s("USD"), s("EURx"), s("eur"), Value::Int(0), Value::Time(0)] {
        assert_claim_refused("currency", every(Constraint::Exact(v)));
    }
    // A time is never the integer with the same number, in either direction.
    let mut req = mint_request(&["booker"]);
    req.claims = [
        ("at".to_string(), every(Constraint::Exact(Value::Time(T0)))),
        ("n".to_string(), every(Constraint::Exact(Value::Int(T0)))),
    ]
    .into();
    let parent = mint(req).unwrap();
    for (name, other) in [("at", Value::Int(T0)), ("n", Value::Time(T0))] {
        let req = with_claim(narrower(&parent), name, Constraint::Exact(other.clone()));
        assert_refused(
            derive(&parent, "planner", req),
            Dimension::Claims,
            &[&format!("{name:?}")],
        );
        let attrs: Attributes = [
            ("at".to_string(), vec![Value::Time(T0)]),
            ("n".to_string(), vec![Value::Int(T0)]),
        ]
        .into();
        let mut wrong = attrs.clone();
        wrong.insert(name.into(), vec![other]);
        assert_eq!(parent.grant.authorize("pay", &attrs), Ok(()));
        assert_eq!(
            parent.grant.authorize("pay", &wrong).unwrap_err().denied_by,
            name
        );
    }
}

#[test]
fn refuses_a_claim_of_another_kind() {
    // Even a semantically narrower claim of another kind is refused: only the listed
    // cross-kind pairs ever compare, and an exact value the parent's claim permits.
    let r = from_root(|p| with_claim(narrower(p), "amount", Constraint::Exact(Value::Int(501))));
    assert_refused(r, Dimension::Claims, &["\"amount\"", "exact 501"]);
    for (name, c) in [
        ("category", Constraint::DenySet(set(&["health"]))),
        ("amount", Constraint::Min(0)),
        ("nights", Constraint::Max(5)),
        ("path", Constraint::Exact(s("/hotels/1"))),
        ("amount", Constraint::Exact(s("10"))),
        ("blocked", Constraint::AllowSet(set(&["travel"]))),
    ] {
        assert_claim_refused(name, every(c));
    }
}

#[test]
fn accepts_an_exact_value_the_parent_permits() {
    // How a redeemed consent pins the one action the user approved.
    assert_claim_accepted("amount", every(Constraint::Exact(Value::Int(10))));
    assert_claim_accepted("path", every(Constraint::Exact(s("/trips/1"))));
    assert_claim_accepted("stay", every(Constraint::Exact(Value::Time(T0))));
}

#[test]
fn refuses_a_range_wider_than_its_max_min_or_range() {
    let r = |min, max| every(Constraint::Range { min, max });
    assert_claim_refused("amount", r(0, 501));
    assert_claim_refused("amount", r(i64::MIN, i64::MAX));
    assert_claim_refused("nights", r(0, 5));
    assert_claim_refused("guests", r(0, 4));
    assert_claim_refused("guests", r(1, 5));
    assert_claim_refused("guests", r(-10, 10));
    // A bare bound is unbounded on its other side: never within a range.
    assert_claim_refused("guests", every(Constraint::Max(4)));
    assert_claim_refused("guests", every(Constraint::Min(1)));
    // A window is not a range, even with the same numbers.
    assert_claim_refused(
        "guests",
        every(Constraint::Window {
            not_before: 1,
            not_after: 4,
        }),
    );
}

#[test]
fn refuses_a_wider_window_or_another_kind_for_a_window() {
    let w = |a, b| {
        every(Constraint::Window {
            not_before: a,
            not_after: b,
        })
    };
    assert_claim_refused("stay", w(T0 - 1, T0 + DAY));
    assert_claim_refused("stay", w(T0, T0 + 14 * DAY + 1));
    assert_claim_refused("stay", w(i64::MIN, i64::MAX));
    assert_claim_refused("stay", every(Constraint::Exact(Value::Time(T0 - 1))));
    assert_claim_refused("stay", every(Constraint::Exact(Value::Int(T0))));
    assert_claim_refused("stay", every(Constraint::Range { min: T0, max: T0 }));
}

#[test]
fn refuses_case_insensitive_widenings() {
    // A member whose fold is not in the parent's folded set.
    assert_claim_refused(
        "merchant",
        every(Constraint::AllowSet(set(&["acme", "initech"]))),
    );
    assert_claim_refused(
        "merchant",
        every(Constraint::allow_folded(strs(&["Acme", "Initech"]))),
    );
    // Exact allow -> case-insensitive allow: admits `TRAVEL`, which the parent refuses.
    assert_claim_refused(
        "category",
        every(Constraint::allow_folded(strs(&["travel"]))),
    );
    // Case-insensitive deny -> exact deny: lets `GAMBLING` through.
    assert_claim_refused(
        "label",
        every(Constraint::DenySet(set(&[
            "gambling", "Gambling", "GAMBLING",
        ]))),
    );
    // A case-insensitive deny that does not cover the parent's exact member.
    assert_claim_refused("blocked", every(Constraint::deny_folded(strs(&["casino"]))));
    assert_claim_refused("label", every(Constraint::deny_folded(Vec::new())));
}

#[test]
fn refuses_a_claim_on_fewer_scopes() {
    // `amount` constrains every scope: limiting it to `pay` frees `trips:book`.
    assert_claim_refused("amount", on(Constraint::Max(100), &["pay"]));
    assert_claim_refused(
        "amount",
        on(Constraint::Max(100), &["pay", "trips:book", "trips:read"]),
    );
    // `fee` constrains `pay`: moving it to another scope frees `pay`.
    assert_claim_refused("fee", on(Constraint::Max(10), &["trips:book"]));
}

#[test]
fn refuses_a_claim_naming_a_scope_the_parent_lacks() {
    let r = from_root(|p| {
        with_scoped_claim(
            narrower(p),
            "fee",
            on(Constraint::Max(50), &["pay", "admin"]),
        )
    });
    assert_refused(r, Dimension::Claims, &["\"fee\"", "\"admin\""]);
    // A new claim too: it would never apply.
    let r =
        from_root(|p| with_scoped_claim(narrower(p), "nonce", on(Constraint::Max(1), &["admin"])));
    assert_refused(r, Dimension::Claims, &["\"nonce\"", "\"admin\""]);
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
    // Keeping its own audience among its targets is a loop, so without loops a child
    // always narrows its targets; with them, it may narrow nothing, and is refused.
    assert_refused(
        derive(&parent, "planner", {
            let mut req = same_as(&parent, "booker");
            req.targets = parent.grant.targets.clone();
            req
        }),
        Dimension::Loop,
        &["booker"],
    );
    assert_refused(
        derive_keeping_targets(&parent, same_as(&parent, "booker")),
        Dimension::NotNarrower,
        &[],
    );
    // Restating every claim, a ttl landing exactly on the parent's expiry, another
    // purpose, and dropping request context are still no narrowing of the grant.
    let mut req = same_as(&parent, "booker");
    req.claims = parent.grant.claims.clone();
    req.ttl_secs = Some(ROOT_TTL);
    req.purpose = Some("different purpose".into());
    req.drop_rctx = set(&["ip"]);
    assert_refused(
        derive_keeping_targets(&parent, req),
        Dimension::NotNarrower,
        &[],
    );
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
    let parent = looping_root(&["booker", "gateway", "planner"]);
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
fn refuses_more_uses_than_the_parent_and_zero_uses() {
    let root = limited_root(Some(1));
    let mut req = narrower(&root);
    req.max_uses = Some(2);
    assert_refused(
        derive(&root, "planner", req),
        Dimension::Uses,
        &["max_uses 2", "1"],
    );
    let mut req = narrower(&root);
    req.max_uses = Some(0);
    assert_refused(
        derive(&root, "planner", req),
        Dimension::Uses,
        &["max_uses"],
    );
    let mut req = mint_request(&["booker"]);
    req.max_uses = Some(0);
    assert_eq!(mint(req).unwrap_err().dimension, Dimension::Uses);
}

#[test]
fn refuses_dropping_an_rctx_key_the_parent_lacks() {
    let parent = root();
    let mut req = narrower(&parent);
    req.drop_rctx = set(&["ip", "device"]);
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Context,
        &["\"device\""],
    );
    // tctx keys are not request context: they can never be dropped.
    let mut req = narrower(&parent);
    req.drop_rctx = set(&["order"]);
    assert_refused(
        derive(&parent, "planner", req),
        Dimension::Context,
        &["\"order\""],
    );
}

#[test]
fn refuses_a_child_whose_merged_claims_exceed_the_bound() {
    let mut req = mint_request(&["booker", "payer", "search"]);
    req.claims = (0..MAX_CLAIMS)
        .map(|i| (format!("c{i}"), every(Constraint::Max(1))))
        .collect();
    let root = mint(req).unwrap();
    let req = with_claim(narrower(&root), "one_more", Constraint::Max(1));
    assert_refused(
        derive(&root, "planner", req),
        Dimension::Size,
        &["33 claims", "limit"],
    );
    // Narrowing the existing ones keeps the count: accepted.
    let req = with_claim(narrower(&root), "c0", Constraint::Max(0));
    assert!(derive(&root, "planner", req).is_ok());
}

#[test]
fn refuses_a_grant_over_the_size_limit() {
    let big: BTreeSet<String> = (0..64).map(|i| format!("{i:0>512}")).collect();
    let r = from_root(|p| with_claim(narrower(p), "pad", Constraint::DenySet(big.clone())));
    assert_refused(r, Dimension::Size, &["grant", "32768"]);
    let mut req = mint_request(&["booker"]);
    req.claims
        .insert("pad".into(), every(Constraint::AllowSet(big)));
    assert_refused(mint(req), Dimension::Size, &["grant", "32768"]);
}

#[test]
fn refuses_a_context_over_the_size_limit() {
    let r = from_root(|p| {
        let mut req = narrower(p);
        req.purpose = Some("p".repeat(MAX_CONTEXT_BYTES));
        req
    });
    assert_refused(r, Dimension::Size, &["context", "16384"]);
    let mut req = mint_request(&["booker"]);
    req.tctx = (0..32)
        .map(|i| (format!("k{i}"), "v".repeat(512)))
        .collect();
    assert_refused(mint(req), Dimension::Size, &["context", "16384"]);
}

#[test]
fn refuses_a_mint_with_a_ttl_out_of_range() {
    for ttl in [0, Policy::default().max_ttl_secs + 1] {
        let mut req = mint_request(&["booker"]);
        req.ttl_secs = Some(ttl);
        let err = mint(req).unwrap_err();
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

#[test]
fn refuses_a_mint_whose_audience_is_among_its_targets() {
    let err = mint(mint_request(&["booker", "planner"])).unwrap_err();
    assert_eq!(err.dimension, Dimension::Loop);
    assert!(err.detail.contains("\"planner\""), "{err}");
    let policy = Policy {
        allow_actor_loops: true,
        ..Policy::default()
    };
    let root = mint_with(mint_request(&["booker", "planner"]), &policy).unwrap();
    assert!(root.grant.targets.contains("planner"));
    assert_eq!(root, looping_root(&["booker", "planner"]));
}

#[test]
fn refuses_a_mint_with_more_claims_than_the_limit() {
    let mut req = mint_request(&["booker"]);
    req.claims = (0..=MAX_CLAIMS)
        .map(|i| (format!("c{i}"), every(Constraint::Max(1))))
        .collect();
    assert_refused(mint(req), Dimension::Size, &["limit"]);
}

// ----------------------------------------------------------------------------------
// Action checks
// ----------------------------------------------------------------------------------

fn good_attributes() -> Attributes {
    [
        ("amount", Value::Int(500)),
        ("nights", Value::Int(1)),
        ("category", s("travel")),
        ("blocked", s("hotel")),
        ("path", s("/trips/42")),
        ("currency", s("EUR")),
        ("guests", Value::Int(4)),
        ("stay", Value::Time(T0 + 14 * DAY)),
        ("merchant", s("ACME")),
        ("label", s("travel")),
        ("fee", Value::Int(50)),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), vec![v]))
    .collect()
}

fn with_attr(name: &str, values: Vec<Value>) -> Attributes {
    let mut a = good_attributes();
    a.insert(name.into(), values);
    a
}

#[test]
fn authorize_passes_the_scope_and_every_claim() {
    let g = root().grant;
    assert_eq!(g.authorize("pay", &good_attributes()), Ok(()));
    let extra = with_attr("unconstrained", vec![Value::Int(1)]);
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
        ("category", s("health")),
        ("category", s("TRAVEL")),
        ("blocked", s("health")),
        ("path", s("/trips")),
        ("path", s("/trips/../admin")),
        ("currency", s("USD")),
        ("guests", Value::Int(5)),
        ("guests", Value::Int(0)),
        ("stay", Value::Time(T0 - 1)),
        ("stay", Value::Time(T0 + 14 * DAY + 1)),
        ("merchant", s("Initech")),
        ("label", s("GAMBLING")),
        ("label", s("ｇａｍｂｌｉｎｇ")),
        ("fee", Value::Int(51)),
    ] {
        let a = with_attr(name, vec![bad.clone()]);
        assert_eq!(
            g.authorize("pay", &a).unwrap_err().denied_by,
            name,
            "{name} = {bad}"
        );
    }
}

#[test]
fn authorize_checks_every_item_of_a_multi_valued_attribute() {
    let g = root().grant;
    let ok = with_attr("category", vec![s("travel"), s("food"), s("travel")]);
    assert_eq!(g.authorize("pay", &ok), Ok(()));
    for (name, values) in [
        ("category", vec![s("travel"), s("health")]),
        ("amount", vec![Value::Int(1), Value::Int(501)]),
        ("label", vec![s("travel"), s("Gambling")]),
        ("stay", vec![Value::Time(T0), Value::Int(T0)]),
        ("path", vec![s("/trips/1"), s("/trips/1/../../admin")]),
    ] {
        let d = g
            .authorize("pay", &with_attr(name, values.clone()))
            .unwrap_err();
        assert_eq!(d.denied_by, name, "{values:?}");
        assert!(d.reason.starts_with("item 1:"), "{d:?}");
    }
    // An attribute with no values is as good as missing.
    let d = g
        .authorize("pay", &with_attr("amount", Vec::new()))
        .unwrap_err();
    assert_eq!(d.denied_by, "amount");
}

#[test]
fn authorize_applies_a_scoped_claim_only_to_its_scopes() {
    let g = root().grant;
    let mut a = good_attributes();
    a.insert("fee".into(), vec![Value::Int(10_000)]);
    assert_eq!(g.authorize("trips:book", &a), Ok(()));
    assert_eq!(g.authorize("pay", &a).unwrap_err().denied_by, "fee");
    a.remove("fee");
    assert_eq!(g.authorize("trips:book", &a), Ok(()), "not required there");
    assert_eq!(g.authorize("pay", &a).unwrap_err().denied_by, "fee");
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
        ("amount", s("1")),
        ("amount", Value::Time(1)),
        ("nights", s("5")),
        ("category", Value::Int(1)),
        ("blocked", Value::Int(1)),
        ("path", Value::Int(1)),
        ("currency", Value::Int(0)),
        ("guests", Value::Time(2)),
        ("stay", Value::Int(T0 + 1)),
        ("stay", s("2025-12-02")),
        ("merchant", Value::Int(1)),
        ("label", Value::Time(1)),
        ("fee", s("10")),
    ] {
        let a = with_attr(name, vec![wrong.clone()]);
        assert_eq!(
            g.authorize("pay", &a).unwrap_err().denied_by,
            name,
            "{name} = {wrong:?}"
        );
    }
}

#[test]
fn prefixes_match_whole_segments_of_canonical_paths() {
    let trips = Constraint::Prefix("/trips".into());
    let below = Constraint::Prefix("/trips/".into());
    for ok in ["/trips", "/trips/", "/trips/12", "/trips/12/legs/"] {
        assert_eq!(trips.permits(&s(ok)), Ok(()), "/trips permits {ok}");
    }
    for ok in ["/trips/12", "/trips/12/legs"] {
        assert_eq!(below.permits(&s(ok)), Ok(()), "/trips/ permits {ok}");
    }
    assert!(
        below.permits(&s("/trips")).is_err(),
        "/trips/ excludes /trips"
    );
    for bad in [
        "/tripsX",
        "/trips-old/1",
        "/trip",
        "/trips/../admin",
        "/trips/..",
        "/trips/./x",
        "/trips//x",
        "/trips/%2e%2e/admin",
        "/trips/%2E%2E/admin",
        "/trips%2Fadmin",
        "/trips%2fadmin",
        "/trips/%5c..",
        "/trips\\..\\admin",
        "trips/1",
        "",
    ] {
        assert!(trips.permits(&s(bad)).is_err(), "/trips permits {bad}");
        assert!(below.permits(&s(bad)).is_err(), "/trips/ permits {bad}");
    }
}

#[test]
fn a_slash_prefix_matches_only_paths_strictly_below_it() {
    let below = Constraint::Prefix("/trips/".into());
    assert!(below.permits(&s("/trips/")).is_err());
}

#[test]
fn case_insensitive_sets_match_every_case_and_width() {
    let g = root().grant;
    for v in ["acme", "ACME", "Acme", "ａｃｍｅ", "ＡＣＭＥ", "globex"] {
        assert_eq!(
            g.authorize("pay", &with_attr("merchant", vec![s(v)])),
            Ok(()),
            "{v}"
        );
    }
    for v in [
        "gambling",
        "GAMBLING",
        "Gambling",
        "gAmBlInG",
        "ｇａｍｂｌｉｎｇ",
        "ＧＡＭＢＬＩＮＧ",
    ] {
        assert_eq!(
            g.authorize("pay", &with_attr("label", vec![s(v)]))
                .unwrap_err()
                .denied_by,
            "label",
            "{v}"
        );
    }
    // Members are stored folded.
    assert_eq!(
        Constraint::deny_folded(strs(&["GAMBLING", "Straße"])),
        Constraint::DenyFolded(set(&["gambling", "strasse"]))
    );
}

// ----------------------------------------------------------------------------------
// Idempotent retries: request digests and derived tokens
// ----------------------------------------------------------------------------------

#[test]
fn request_digest_identifies_the_request() {
    let parent = root();
    let base = narrower(&parent);
    let scope = b"planner|tid_1|key-1";
    let d = request_digest(scope, &base);
    assert_eq!(request_digest(scope, &base.clone()), d, "deterministic");
    assert_ne!(request_digest(b"planner|tid_1|key-2", &base), d, "scope");
    assert_ne!(request_digest(b"", &base), d, "empty scope");
    type Change = fn(&mut ChildRequest);
    let changes: Vec<(&str, Change)> = vec![
        ("audience", |r| r.audience = party("payer")),
        ("audience kind", |r| r.audience.kind = ActorKind::Workload),
        ("audience client type", |r| {
            r.audience.client_type = ClientType::Public
        }),
        ("targets", |r| {
            r.targets.remove("search");
        }),
        ("scopes", |r| {
            r.scopes.remove("pay");
        }),
        ("claim added", |r| {
            r.claims.insert("amount".into(), every(Constraint::Max(1)));
        }),
        ("claim applies_to", |r| {
            r.claims
                .insert("amount".into(), on(Constraint::Max(1), &["pay"]));
        }),
        ("ttl", |r| r.ttl_secs = Some(1)),
        ("purpose", |r| r.purpose = Some(String::new())),
        ("max_uses", |r| r.max_uses = Some(1)),
        ("require_action_check", |r| r.require_action_check = true),
        ("drop_rctx", |r| {
            r.drop_rctx.insert("ip".into());
        }),
    ];
    let mut seen = BTreeSet::from([d]);
    for (what, change) in changes {
        let mut req = base.clone();
        change(&mut req);
        assert_ne!(req, base, "{what}: the change changed nothing");
        let dr = request_digest(scope, &req);
        assert!(
            seen.insert(dr),
            "{what}: digest collides with another request"
        );
    }
    // Mint requests too.
    let m = mint_request(&["booker"]);
    let dm = request_digest(b"gateway", &m);
    let mut m2 = m.clone();
    m2.require_action_check = true;
    assert_ne!(request_digest(b"gateway", &m2), dm);
    assert_eq!(request_digest(b"gateway", &m.clone()), dm);
}

#[test]
fn derived_tokens_are_deterministic_per_scope_and_key() {
    let k1 = ServerKey {
        id: 1,
        key: [1; 32],
    };
    let k2 = ServerKey {
        id: 2,
        key: [2; 32],
    };
    let ring = KeyRing::new(vec![k1.clone(), k2.clone()]).unwrap();
    let a: Vec<_> = ring.issue_derived(b"scope-a").collect();
    assert_eq!(a.len(), 2, "one token per key");
    let again: Vec<_> = ring.issue_derived(b"scope-a").collect();
    assert_eq!(a, again, "deterministic");
    for (secret, v) in &a {
        assert_eq!(ring.verify(secret.expose()), Ok(*v));
    }
    assert_ne!(a[0], a[1], "one token per key, all different");
    // The entropy is derived from the key, not from the scope alone.
    let entropy = |t: &writ_core::TokenSecret| {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t.expose()["writ_".len()..])
            .unwrap();
        raw[5..37].to_vec()
    };
    assert_ne!(entropy(&a[0].0), entropy(&a[1].0));
    // The signing key's token comes first: only k1 verifies it.
    let only = |k: &ServerKey| KeyRing::new(vec![k.clone()]).unwrap();
    assert!(only(&k1).verify(a[0].0.expose()).is_ok());
    assert_eq!(only(&k2).verify(a[0].0.expose()), Err(TokenError::Forged));
    assert!(only(&k2).verify(a[1].0.expose()).is_ok());

    let b: Vec<_> = ring.issue_derived(b"scope-b").collect();
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x.0, y.0, "another scope, another token");
        assert_ne!(x.1.token_id, y.1.token_id);
    }
    // The same id under another key derives another token.
    let other = KeyRing::new(vec![ServerKey {
        id: 1,
        key: [9; 32],
    }])
    .unwrap();
    let c: Vec<_> = other.issue_derived(b"scope-a").collect();
    assert_ne!(c[0].0, a[0].0);
    assert_ne!(entropy(&c[0].0), entropy(&a[0].0), "same id, another key");
    // After rotation the old key's token is still derived (second), so a retry finds it.
    let rotated = KeyRing::new(vec![k2, k1.clone()]).unwrap();
    let r: Vec<_> = rotated.issue_derived(b"scope-a").collect();
    assert_eq!(r[1], a[0]);
    assert_eq!(r[0], a[1]);
    // A derived token is not the token of any fixed entropy the caller could pick.
    assert_ne!(only(&k1).issue([0; 32]).0, a[0].0);
}

// ----------------------------------------------------------------------------------
// What narrowed, audit events and bounded messages
// ----------------------------------------------------------------------------------

#[test]
fn narrowed_describes_a_real_child() {
    let parent = limited_root(Some(3));
    let mut req = narrower(&parent);
    req.targets.remove("search");
    req.ttl_secs = Some(ROOT_TTL - 10);
    req.max_uses = Some(1);
    req.require_action_check = true;
    req.drop_rctx = set(&["ip"]);
    req.claims
        .insert("amount".into(), every(Constraint::Max(200)));
    req.claims.insert(
        "fee".into(),
        on(Constraint::Max(50), &["pay", "trips:book"]),
    );
    req.claims
        .insert("zone".into(), every(Constraint::Range { min: 1, max: 2 }));
    let child = derive(&parent, "planner", req).unwrap();
    let lines = narrowed(&parent, &child);
    assert_eq!(
        lines,
        vec![
            "scopes dropped: trips:read",
            "targets dropped: booker search",
            "claim amount: max 500 -> max 200",
            "claim fee: max 50 on {\"pay\"} -> max 50 on {\"pay\",\"trips:book\"}",
            "claim zone added: range 1..=2",
            "expiry 10 s earlier",
            "max_uses 3 -> 1",
            "action checks required",
            "rctx dropped: ip",
        ]
    );
    let e = Event::downscoped(EventId(7), &parent, &child);
    assert_eq!(e.token, Some(child.token_id));
    assert_eq!(e.actor, "planner");
    match e.kind {
        EventKind::Downscoped {
            parent: p,
            audience,
            scopes,
            narrowed: n,
        } => {
            assert_eq!(p, parent.token_id);
            assert_eq!(audience, "booker");
            assert_eq!(scopes, vec!["pay", "trips:book"]);
            assert_eq!(n, lines);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn narrowed_lines_and_event_lists_are_bounded() {
    let mut req = mint_request(&["booker"]);
    req.scopes = (0..64).map(|i| format!("{i:0>128}")).collect();
    let parent = mint(req).unwrap();
    let mut req = same_as(&parent, "booker");
    req.scopes = parent.grant.scopes.iter().skip(20).cloned().collect();
    let child = derive(&parent, "planner", req).unwrap();
    let lines = narrowed(&parent, &child);
    assert!(lines[0].starts_with("scopes dropped: "), "{lines:?}");
    assert!(lines[0].len() <= MAX_NARROWED_LINE && lines[0].ends_with('…'));
    let e = Event::downscoped(EventId(1), &parent, &child);
    let EventKind::Downscoped { scopes, .. } = e.kind else {
        panic!("not a downscoped event");
    };
    let (marker, kept) = scopes.split_last().unwrap();
    assert_eq!(
        marker,
        &format!("… (+{} more)", 44 - kept.len()),
        "the last item says how many were left out"
    );
    let kept_bytes: usize = kept.iter().map(String::len).sum();
    assert!(kept_bytes <= MAX_EVENT_LIST_BYTES, "{kept_bytes}");
    assert!(kept.len() < 44);
}

#[test]
fn refusals_and_denials_never_print_a_whole_set() {
    let big: BTreeSet<String> = (0..64).map(|i| format!("{i:0>500}")).collect();
    let c = Constraint::AllowSet(big.clone());
    let why = c.permits(&s(&"y".repeat(512))).unwrap_err();
    assert!(why.len() < 400, "{} bytes: {why}", why.len());
    assert!(why.contains("more)"), "{why}");
    // Values are cut to SHOWN_CHARS characters.
    let long = "z".repeat(10_000);
    let why = Constraint::Max(1).permits(&s(&long)).unwrap_err();
    assert!(why.len() < SHOWN_CHARS + 100, "{why}");
    let why = Constraint::Prefix(long.clone())
        .permits(&s("/x"))
        .unwrap_err();
    assert!(why.len() < SHOWN_CHARS + 100, "{why}");
    // A refused claim between two huge sets, and the refused event that records it.
    let big: BTreeSet<String> = big.into_iter().take(60).collect();
    let mut req = mint_request(&["booker"]);
    req.claims = [(
        "n".repeat(64),
        on(Constraint::AllowSet(big.clone()), &["pay"]),
    )]
    .into();
    let parent = mint(req).unwrap();
    let mut wider = big.clone();
    wider.insert("w".repeat(512));
    let req = with_scoped_claim(
        narrower(&parent),
        &"n".repeat(64),
        on(Constraint::AllowSet(wider), &["pay"]),
    );
    let err = derive(&parent, "planner", req).unwrap_err();
    assert_eq!(err.dimension, Dimension::Claims);
    assert!(err.detail.len() < 1500, "{} bytes", err.detail.len());
    let e = Event::refused(
        EventId(1),
        &parent,
        &writ_core::Actor {
            id: "planner".into(),
            auth: writ_core::AuthMethod::Mtls,
        },
        "claims",
        err.detail,
    );
    let EventKind::Refused { detail, .. } = e.kind else {
        panic!("not a refused event");
    };
    assert!(detail.len() <= MAX_DETAIL_BYTES);
}

// ---- use limits ----

fn limited_root(uses: Option<u32>) -> TokenRecord {
    let mut req = mint_request(&["booker", "payer", "search"]);
    req.max_uses = uses;
    mint(req).unwrap()
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
