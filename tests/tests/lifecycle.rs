//! The token lifecycle: revocation of subtrees and transactions (by operators and by
//! holders), use limits consumed by allowed actions and reserved by children, the
//! fan-out limit, and all of it holding under concurrency and across a restart.

use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Barrier;
use tonic::Code;
use writ_e2e::pb::InactiveReason;
use writ_e2e::*;

/// A token id that is well-formed but names no token.
const UNKNOWN_TID: &str = "tid_00000000000000000000000000000000";
/// A transaction id that is well-formed but names no transaction.
const UNKNOWN_TXN: &str = "txn_00000000000000000000000000000000";

/// alice's transaction for the planner, which may reach booking, payments, search and
/// the ledger.
fn branching_mint() -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent("planner"),
        &["booking", "payments", "search", "ledger"],
        &["trips:book", "payments:charge", "search:query"],
        vec![("amount", build::max(1000))],
    )
}

/// A single-hop mint for the planner with one scope and `max_uses`.
fn limited_mint(max_uses: u32) -> pb::MintRequest {
    pb::MintRequest {
        max_uses,
        ..mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "payments"],
            &["trips:book", "payments:charge"],
            vec![],
        )
    }
}

/// The branching tree of several tests: root (planner) → A (booking) → A1 (payments),
/// and root → B (search).
struct Tree {
    root: pb::MintResponse,
    a: pb::DownscopeResponse,
    a1: pb::DownscopeResponse,
    b: pb::DownscopeResponse,
}

impl Tree {
    async fn build(srv: &TestServer) -> Tree {
        let root = srv.mint(branching_mint()).await;
        let a = srv
            .downscope(
                "planner",
                child(
                    &root.token,
                    build::agent("booking"),
                    &["payments", "ledger"],
                    &["trips:book", "payments:charge"],
                    vec![("amount", build::max(500))],
                ),
            )
            .await;
        let b = srv
            .downscope(
                "planner",
                child(
                    &root.token,
                    build::agent("search"),
                    &[],
                    &["search:query"],
                    vec![],
                ),
            )
            .await;
        let a1 = srv
            .downscope(
                "booking",
                child(
                    &a.token,
                    build::workload("payments"),
                    &["ledger"],
                    &["payments:charge"],
                    vec![("amount", build::max(100))],
                ),
            )
            .await;
        Tree { root, a, a1, b }
    }

    fn root_id(&self) -> String {
        token_id(self.root.info.as_ref())
    }
    fn a_id(&self) -> String {
        token_id(self.a.info.as_ref())
    }
    fn a1_id(&self) -> String {
        token_id(self.a1.info.as_ref())
    }
    fn b_id(&self) -> String {
        token_id(self.b.info.as_ref())
    }
    fn txn(&self) -> String {
        self.root.info.as_ref().expect("info").txn.clone()
    }

    /// Validation answers for (root, A, A1, B), each by its own audience.
    async fn validate_all(&self, srv: &TestServer) -> [pb::ValidateResponse; 4] {
        [
            srv.validate("planner", introspect(&self.root.token)).await,
            srv.validate("booking", introspect(&self.a.token)).await,
            srv.validate("payments", introspect(&self.a1.token)).await,
            srv.validate("search", introspect(&self.b.token)).await,
        ]
    }
}

/// A1 (the payments workload) derives a child for the ledger.
fn ledger_child(a1_token: &str) -> pb::DownscopeRequest {
    child(
        a1_token,
        build::workload("ledger"),
        &[],
        &["payments:charge"],
        vec![],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_id_revokes_its_subtree_and_nothing_else() {
    let srv = TestServer::start().await;
    let t = Tree::build(&srv).await;
    for v in t.validate_all(&srv).await {
        assert_active(&v);
    }

    let revoked = srv
        .revoke_as_operator(revoke_token_id(&t.a_id(), "booking agent compromised"))
        .await;
    let mut got = revoked.clone();
    got.sort();
    assert_eq!(
        got,
        sorted(&[&t.a_id(), &t.a1_id()]),
        "exactly A and its descendant are newly revoked"
    );

    let [root, a, a1, b] = t.validate_all(&srv).await;
    assert_inactive(&a, InactiveReason::Revoked);
    assert_inactive(&a1, InactiveReason::Revoked);
    assert_active(&root);
    assert_active(&b);
    // An action check on a revoked token is no different: inactive, no decision.
    assert_inactive(
        &srv.validate("booking", check(&t.a.token, "trips:book", vec![]))
            .await,
        InactiveReason::Revoked,
    );

    // The revoked descendant may derive nothing; its holder learns why.
    assert_refused(
        srv.party("payments")
            .await
            .downscope(ledger_child(&t.a1.token))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
    assert_refused(
        srv.party("booking")
            .await
            .downscope(child(
                &t.a.token,
                build::workload("payments"),
                &[],
                &["payments:charge"],
                vec![],
            ))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
    // The untouched branches still derive.
    srv.downscope(
        "planner",
        child(
            &t.root.token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ),
    )
    .await;

    // Revoking again revokes nothing new, by id or by the token itself.
    assert_eq!(
        srv.revoke_as_operator(revoke_token_id(&t.a_id(), "again"))
            .await,
        Vec::<String>::new()
    );
    assert_eq!(
        srv.revoke_as_holder("payments", &t.a1.token, "again").await,
        Vec::<String>::new()
    );
    // Revoking the root now revokes the rest, and none of the already revoked ones again.
    let mut rest = srv
        .revoke_as_operator(revoke_token_id(&t.root_id(), "trip cancelled"))
        .await;
    rest.sort();
    assert!(
        rest.contains(&t.root_id()) && rest.contains(&t.b_id()),
        "{rest:?}"
    );
    assert!(
        !rest.contains(&t.a_id()) && !rest.contains(&t.a1_id()),
        "a revocation is reported once: {rest:?}"
    );
    for v in t.validate_all(&srv).await {
        assert_inactive(&v, InactiveReason::Revoked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_revokes_its_own_token_and_nobody_else_can() {
    let srv = TestServer::start().await;
    let t = Tree::build(&srv).await;

    // Presenting a token is not enough: a thief (anonymous, or under another name)
    // learns nothing, exactly as for a token that does not exist, and revokes nothing.
    for mut thief in [
        srv.anonymous().await,
        srv.party("search").await,
        srv.party("planner").await,
    ] {
        assert_refused(
            thief.revoke(revoke_token(&t.a.token, "stolen")).await,
            Code::Unauthenticated,
            &["token", "not a valid token"],
        );
    }
    assert_active(&srv.validate("booking", introspect(&t.a.token)).await);

    // booking holds A and revokes it by presenting it; no credential needed.
    let mut revoked = srv
        .revoke_as_holder("booking", &t.a.token, "done booking")
        .await;
    revoked.sort();
    assert_eq!(revoked, sorted(&[&t.a_id(), &t.a1_id()]));
    let [root, a, a1, b] = t.validate_all(&srv).await;
    assert_active(&root);
    assert_inactive(&a, InactiveReason::Revoked);
    assert_inactive(&a1, InactiveReason::Revoked);
    assert_active(&b);

    // Presenting it again revokes nothing new.
    assert_eq!(
        srv.revoke_as_holder("booking", &t.a.token, "again").await,
        Vec::<String>::new()
    );

    // A forged token proves nothing; garbage is not a token.
    let mut anon = srv.anonymous().await;
    assert_refused(
        anon.revoke(revoke_token(&flip_middle(&t.root.token), "forged"))
            .await,
        Code::Unauthenticated,
        &["token", "not a valid token"],
    );
    assert_refused(
        anon.revoke(revoke_token("not-a-writ-token", "garbage"))
            .await,
        Code::Unauthenticated,
        &["token", "malformed"],
    );
    // A token from another server with the same keys is unknown here.
    let other = TestServer::start_with_keys_of(&srv).await;
    let foreign = other.mint(branching_mint()).await;
    assert_refused(
        anon.revoke(revoke_token(&foreign.token, "unknown")).await,
        Code::Unauthenticated,
        &["token", "not a valid token"],
    );
    // A reason is required here too.
    assert_refused(
        anon.revoke(revoke_token(&t.root.token, "")).await,
        Code::InvalidArgument,
        &["reason"],
    );
    // None of the refusals revoked anything.
    assert_active(&srv.validate("planner", introspect(&t.root.token)).await);
    assert_active(&srv.validate("search", introspect(&t.b.token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_transaction_revokes_every_token_of_it() {
    let srv = TestServer::start().await;
    let t = Tree::build(&srv).await;
    let other = srv.mint(branching_mint()).await;

    let mut revoked = srv
        .revoke_as_operator(revoke_txn(&t.txn(), "fraud suspected"))
        .await;
    revoked.sort();
    assert_eq!(
        revoked,
        sorted(&[&t.root_id(), &t.a_id(), &t.a1_id(), &t.b_id()])
    );
    for v in t.validate_all(&srv).await {
        assert_inactive(&v, InactiveReason::Revoked);
    }
    assert_refused(
        srv.party("planner")
            .await
            .downscope(child(
                &t.root.token,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![],
            ))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
    // Another transaction of the same subject is untouched.
    assert_active(&srv.validate("planner", introspect(&other.token)).await);
    // Again: nothing new.
    assert_eq!(
        srv.revoke_as_operator(revoke_txn(&t.txn(), "again")).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_revoke_by_id_or_transaction() {
    let srv = TestServer::start().await;
    let t = Tree::build(&srv).await;
    let a_id = t.a_id();
    let txn = t.txn();

    for req in [
        revoke_token_id(&a_id, "no credential"),
        revoke_txn(&txn, "no credential"),
    ] {
        assert_refused(
            srv.anonymous().await.revoke(req).await,
            Code::Unauthenticated,
            &["operator", "identity"],
        );
    }
    for req in [
        revoke_token_id(&a_id, "a party"),
        revoke_txn(&txn, "a party"),
    ] {
        // Not even the token's own audience: possession of the token is the holder's
        // authority, an asserted identity is none.
        assert_refused(
            srv.party("booking").await.revoke(req).await,
            Code::PermissionDenied,
            &["booking", "role operator"],
        );
    }
    for req in [
        revoke_token_id(&a_id, "the minter"),
        revoke_txn(&txn, "the minter"),
    ] {
        assert_refused(
            srv.minter().await.revoke(req).await,
            Code::PermissionDenied,
            &[LOCAL_MINTER, "role operator"],
        );
    }
    // A wrong credential is no credential.
    let mut forged = srv
        .anonymous()
        .await
        .with_operator_credential("woc_00000000000000000000000000000000")
        .expect("valid metadata");
    assert_refused(
        forged
            .revoke(revoke_token_id(&a_id, "wrong credential"))
            .await,
        Code::Unauthenticated,
        &["credential"],
    );
    // The operator itself must say why, and name something that exists, well-formed.
    let mut op = srv.operator().await;
    for reason in ["", "   "] {
        assert_refused(
            op.revoke(revoke_token_id(&a_id, reason)).await,
            Code::InvalidArgument,
            &["reason"],
        );
    }
    assert_refused(
        op.revoke(revoke_token_id(UNKNOWN_TID, "unknown")).await,
        Code::NotFound,
        &["token_id", UNKNOWN_TID],
    );
    assert_refused(
        op.revoke(revoke_txn(UNKNOWN_TXN, "unknown")).await,
        Code::NotFound,
        &["txn", UNKNOWN_TXN],
    );
    assert_refused(
        op.revoke(revoke_token_id("tid_abc", "malformed")).await,
        Code::InvalidArgument,
        &["token_id", "tid_"],
    );
    assert_refused(
        op.revoke(revoke_token_id(&txn, "a txn is not a token id"))
            .await,
        Code::InvalidArgument,
        &["token_id"],
    );
    assert_refused(
        op.revoke(revoke_txn("txn_xyz", "malformed")).await,
        Code::InvalidArgument,
        &["txn", "txn_"],
    );
    assert_refused(
        op.revoke(pb::RevokeRequest {
            target: None,
            reason: "no target".into(),
        })
        .await,
        Code::InvalidArgument,
        &["target"],
    );

    // Nothing was revoked by any refusal.
    for v in t.validate_all(&srv).await {
        assert_active(&v);
    }
    // And the operator credential is not a minter's.
    assert_refused(
        srv.operator().await.mint(branching_mint()).await,
        Code::PermissionDenied,
        &["minter"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_token_allows_exactly_one_action_under_concurrency() {
    let srv = TestServer::start().await;
    let minted = srv.mint(limited_mint(1)).await;
    assert_eq!(minted.info.as_ref().expect("info").max_uses, 1);
    // Introspection consumes nothing.
    for _ in 0..3 {
        let info = assert_active(&srv.validate("planner", introspect(&minted.token)).await);
        assert_eq!(info.max_uses, 1);
    }

    const N: usize = 32;
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = Vec::new();
    for _ in 0..N {
        let mut client = srv.party("planner").await;
        let barrier = barrier.clone();
        let req = check(&minted.token, "trips:book", vec![]);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.validate(req).await
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        let r = ok(task.await.expect("the task ran"), "validate");
        if r.active {
            assert_allowed(&r);
            allowed += 1;
        } else {
            assert_inactive(&r, InactiveReason::Exhausted);
        }
    }
    assert_eq!(
        allowed, 1,
        "exactly one of {N} concurrent checks got the use"
    );
    assert_inactive(
        &srv.validate("planner", introspect(&minted.token)).await,
        InactiveReason::Exhausted,
    );

    // A denied action consumes nothing: the use is still there for an allowed one.
    let minted = srv.mint(limited_mint(1)).await;
    assert_denied(
        &srv.validate("planner", check(&minted.token, "search:query", vec![]))
            .await,
        "scope",
    );
    assert_allowed(
        &srv.validate("planner", check(&minted.token, "trips:book", vec![]))
            .await,
    );
    assert_inactive(
        &srv.validate("planner", check(&minted.token, "trips:book", vec![]))
            .await,
        InactiveReason::Exhausted,
    );

    // Unlimited (0) means unlimited.
    let unlimited = srv.mint(limited_mint(0)).await;
    assert_eq!(unlimited.info.as_ref().expect("info").max_uses, 0);
    for _ in 0..5 {
        assert_allowed(
            &srv.validate("planner", check(&unlimited.token, "trips:book", vec![]))
                .await,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_reserve_uses_from_their_parent() {
    let srv = TestServer::start().await;
    let root = srv.mint(limited_mint(3)).await;
    let to_booking = |max_uses: u32, scopes: &[&str]| pb::DownscopeRequest {
        max_uses,
        ..child(&root.token, build::agent("booking"), &[], scopes, vec![])
    };

    let c1 = srv
        .downscope("planner", to_booking(2, &["trips:book"]))
        .await;
    assert_eq!(c1.info.as_ref().expect("info").max_uses, 2);
    // 2 of 3 are reserved: another 2 do not fit...
    assert_refused(
        srv.party("planner")
            .await
            .downscope(to_booking(2, &["trips:book"]))
            .await,
        Code::FailedPrecondition,
        &["uses"],
    );
    // ...and more than the parent ever had is an escalation, whatever is left.
    assert_refused(
        srv.party("planner")
            .await
            .downscope(to_booking(4, &["trips:book"]))
            .await,
        Code::PermissionDenied,
        &["uses", "4"],
    );
    // 0 takes what is left: 1.
    let c2 = srv
        .downscope("planner", to_booking(0, &["payments:charge"]))
        .await;
    assert_eq!(c2.info.as_ref().expect("info").max_uses, 1);
    // Every use of the root is passed on: it is exhausted, and can pass on no more.
    assert_inactive(
        &srv.validate("planner", introspect(&root.token)).await,
        InactiveReason::Exhausted,
    );
    assert_refused(
        srv.party("planner")
            .await
            .downscope(to_booking(0, &["trips:book"]))
            .await,
        Code::FailedPrecondition,
        &["uses"],
    );

    // Each child spends its own reservation.
    for _ in 0..2 {
        assert_allowed(
            &srv.validate("booking", check(&c1.token, "trips:book", vec![]))
                .await,
        );
    }
    assert_inactive(
        &srv.validate("booking", check(&c1.token, "trips:book", vec![]))
            .await,
        InactiveReason::Exhausted,
    );
    assert_allowed(
        &srv.validate("booking", check(&c2.token, "payments:charge", vec![]))
            .await,
    );
    assert_inactive(
        &srv.validate("booking", introspect(&c2.token)).await,
        InactiveReason::Exhausted,
    );

    // A limited child of an unlimited parent reserves nothing from it.
    let free = srv.mint(limited_mint(0)).await;
    let limited = srv
        .downscope(
            "planner",
            pb::DownscopeRequest {
                max_uses: 5,
                ..child(
                    &free.token,
                    build::agent("booking"),
                    &[],
                    &["trips:book"],
                    vec![],
                )
            },
        )
        .await;
    assert_eq!(limited.info.as_ref().expect("info").max_uses, 5);
    assert_active(&srv.validate("planner", introspect(&free.token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_is_bounded_by_max_children() {
    let srv = TestServer::start_with(|c| c.tokens.max_children = 2).await;
    let root = srv.mint(limited_mint(0)).await;
    let sibling = |ttl: u32| pb::DownscopeRequest {
        ttl_seconds: ttl,
        ..child(
            &root.token,
            build::agent("booking"),
            &["payments"],
            &["trips:book"],
            vec![],
        )
    };
    let first = srv.downscope("planner", sibling(60)).await;
    srv.downscope("planner", sibling(61)).await;
    assert_refused(
        srv.party("planner").await.downscope(sibling(62)).await,
        Code::ResourceExhausted,
        &["fan_out", "2"],
    );
    // The limit is per token: a child still has its own.
    srv.downscope(
        "booking",
        child(
            &first.token,
            build::workload("payments"),
            &[],
            &["trips:book"],
            vec![],
        ),
    )
    .await;
    // The root itself stays usable.
    assert_active(&srv.validate("planner", introspect(&root.token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_child_derived_during_a_revocation_survives_it() {
    let srv = TestServer::start_with(|c| c.tokens.max_children = 64).await;
    let root = srv.mint(branching_mint()).await;
    let root_id = token_id(root.info.as_ref());
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book", "payments:charge"],
                vec![],
            ),
        )
        .await;
    let c1_id = token_id(c1.info.as_ref());

    const N: usize = 24;
    let barrier = Arc::new(Barrier::new(N + 1));
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut client = srv.party("booking").await;
        let barrier = barrier.clone();
        let ttl = 60 + u32::try_from(i).expect("small");
        let req = pb::DownscopeRequest {
            ttl_seconds: ttl,
            ..child(
                &c1.token,
                build::workload("payments"),
                &[],
                &["payments:charge"],
                vec![("amount", build::max(i64::from(ttl)))],
            )
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            // Spread the attempts around the revocation.
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(ttl % 7))).await;
            client.downscope(req).await
        }));
    }
    let mut op = srv.operator().await;
    let revoker = {
        let barrier = barrier.clone();
        let req = revoke_token_id(&root_id, "race");
        tokio::spawn(async move {
            barrier.wait().await;
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            op.revoke(req).await
        })
    };

    let mut created = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("the task ran") {
            Ok(r) => created.push(r),
            Err(e) => {
                assert_refused::<()>(Err(e), Code::FailedPrecondition, &["revoked"]);
                refused += 1;
            }
        }
    }
    let revoked: HashSet<String> = ok(revoker.await.expect("the task ran"), "revoke")
        .revoked_token_ids
        .into_iter()
        .collect();
    assert_eq!(created.len() + refused, N);
    assert!(
        revoked.contains(&root_id) && revoked.contains(&c1_id),
        "{revoked:?}"
    );

    // Every child that was created is revoked, listed by the revocation, and usable for
    // nothing.
    for c in &created {
        let id = token_id(c.info.as_ref());
        assert!(
            revoked.contains(&id),
            "child {id} was created but not revoked with its ancestors"
        );
        assert_inactive(
            &srv.validate("payments", introspect(&c.token)).await,
            InactiveReason::Revoked,
        );
        assert_inactive(
            &srv.validate("payments", check(&c.token, "payments:charge", vec![]))
                .await,
            InactiveReason::Revoked,
        );
    }
    assert_eq!(
        revoked.len(),
        2 + created.len(),
        "the revocation lists root, c1 and the created children, nothing else"
    );
    // And no new child can be derived anymore.
    assert_refused(
        srv.party("booking")
            .await
            .downscope(child(
                &c1.token,
                build::workload("payments"),
                &[],
                &["payments:charge"],
                vec![],
            ))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_consumed_uses_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let operator_credential = srv.operator_credential();
    assert!(!operator_credential.is_empty());
    assert_ne!(operator_credential, srv.credential());

    let t = Tree::build(&srv).await;
    let limited = srv.mint(limited_mint(3)).await;
    assert_allowed(
        &srv.validate("planner", check(&limited.token, "trips:book", vec![]))
            .await,
    );
    let reserved = srv
        .downscope(
            "planner",
            pb::DownscopeRequest {
                max_uses: 1,
                ..child(
                    &limited.token,
                    build::agent("booking"),
                    &[],
                    &["trips:book"],
                    vec![],
                )
            },
        )
        .await;
    let mut revoked = srv
        .revoke_as_operator(revoke_token_id(&t.a_id(), "before restart"))
        .await;
    revoked.sort();
    assert_eq!(revoked, sorted(&[&t.a_id(), &t.a1_id()]));

    srv.restart().await;

    assert_eq!(
        srv.operator_credential(),
        operator_credential,
        "the operator credential is kept, not regenerated"
    );
    let [root, a, a1, b] = t.validate_all(&srv).await;
    assert_active(&root);
    assert_inactive(&a, InactiveReason::Revoked);
    assert_inactive(&a1, InactiveReason::Revoked);
    assert_active(&b);
    assert_refused(
        srv.party("payments")
            .await
            .downscope(ledger_child(&t.a1.token))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
    assert_eq!(
        srv.revoke_as_operator(revoke_token_id(&t.a_id(), "after restart"))
            .await,
        Vec::<String>::new(),
        "the revocation is remembered"
    );

    // 3 uses: 1 consumed and 1 reserved before the restart, so exactly 1 is left.
    assert_allowed(
        &srv.validate("planner", check(&limited.token, "trips:book", vec![]))
            .await,
    );
    assert_inactive(
        &srv.validate("planner", check(&limited.token, "trips:book", vec![]))
            .await,
        InactiveReason::Exhausted,
    );
    assert_allowed(
        &srv.validate("booking", check(&reserved.token, "trips:book", vec![]))
            .await,
    );
    assert_inactive(
        &srv.validate("booking", introspect(&reserved.token)).await,
        InactiveReason::Exhausted,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_reclaimed_after_the_retention_window() {
    // The shortest retention allowed: two idempotency windows of one second.
    let srv = TestServer::start_with(|c| {
        c.tokens.idempotency_window_seconds = 1;
        c.storage.retention_seconds = 2;
        c.storage.cleanup_interval_seconds = 1;
    })
    .await;
    let short = srv
        .mint(pb::MintRequest {
            ttl_seconds: 1,
            ..trip_mint()
        })
        .await;
    let long = srv.mint(trip_mint()).await;
    // Expired but not yet reclaimed: the store still knows it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let first = srv.validate("planner", introspect(&short.token)).await;
    assert!(!first.active);
    // After a cleanup pass the record, its state and its indexes are gone: the token is
    // unknown, while the live one is untouched.
    let mut reclaimed = false;
    for _ in 0..80 {
        let r = srv.validate("planner", introspect(&short.token)).await;
        if r.inactive_reason == InactiveReason::Unknown as i32 {
            reclaimed = true;
            break;
        }
        assert_inactive(&r, InactiveReason::Expired);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reclaimed, "cleanup never reclaimed the expired token");
    assert_active(&srv.validate("planner", introspect(&long.token)).await);
}
