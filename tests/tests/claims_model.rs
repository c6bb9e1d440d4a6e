//! The claim model end to end: claims that apply to some scopes, ranges and date windows,
//! case-insensitive sets, path prefixes, multi-valued attributes, tokens that answer only
//! action checks, request context a hop drops, and text the wire refuses.

use tonic::Code;
use writ_e2e::*;

fn int(i: i64) -> pb::Value {
    build::int(i)
}

fn text(s: &str) -> pb::Value {
    build::str(s)
}

/// A root for `planner` with `amount ≤ 500` on `payments:charge` only.
fn scoped_root() -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent("planner"),
        &["booking"],
        &["trips:search", "payments:charge"],
        vec![(
            "amount",
            build::applies_to(build::max(500), &["payments:charge"]),
        )],
    )
}

#[tokio::test]
async fn a_claim_on_some_scopes_needs_no_placeholder_attributes_elsewhere() {
    let s = TestServer::start().await;
    let root = s.mint(scoped_root()).await;
    let info = root.info.as_ref().expect("info");
    assert_eq!(
        info.claims["amount"].applies_to,
        strings(&["payments:charge"])
    );
    let token = root.token;
    // A search states no amount, and needs none.
    assert_allowed(
        &s.validate("planner", check(&token, "trips:search", vec![]))
            .await,
    );
    // A charge must state it, and it must pass.
    assert_denied(
        &s.validate("planner", check(&token, "payments:charge", vec![]))
            .await,
        "amount",
    );
    assert_denied(
        &s.validate(
            "planner",
            check(&token, "payments:charge", vec![("amount", int(501))]),
        )
        .await,
        "amount",
    );
    assert_allowed(
        &s.validate(
            "planner",
            check(&token, "payments:charge", vec![("amount", int(500))]),
        )
        .await,
    );

    // Restated without scopes, a claim keeps its parent's: the search still needs no amount.
    let narrower = child(
        &token,
        build::agent("booking"),
        &[],
        &["trips:search", "payments:charge"],
        vec![("amount", build::max(400))],
    );
    let kid = s.downscope("planner", narrower).await;
    let info = kid.info.expect("info");
    assert_eq!(
        info.claims["amount"].applies_to,
        strings(&["payments:charge"])
    );
    assert_allowed(
        &s.validate("booking", check(&kid.token, "trips:search", vec![]))
            .await,
    );
    // A child may make the claim apply to more scopes...
    let wider_reach = child(
        &token,
        build::agent("booking"),
        &[],
        &["trips:search", "payments:charge"],
        vec![(
            "amount",
            build::applies_to(build::max(400), &["trips:search", "payments:charge"]),
        )],
    );
    let kid = s.downscope("planner", wider_reach).await.token;
    assert_denied(
        &s.validate("booking", check(&kid, "trips:search", vec![]))
            .await,
        "amount",
    );
    // ...never to fewer, and never to a scope its parent does not hold.
    let elsewhere = child(
        &token,
        build::agent("booking"),
        &[],
        &["trips:search", "payments:charge"],
        vec![(
            "amount",
            build::applies_to(build::max(400), &["trips:search"]),
        )],
    );
    assert_refused(
        s.party("planner").await.downscope(elsewhere).await,
        Code::PermissionDenied,
        &["claims", "amount"],
    );
    let typo = child(
        &token,
        build::agent("booking"),
        &[],
        &["trips:search"],
        vec![(
            "nights",
            build::applies_to(build::max(3), &["trips:serach"]),
        )],
    );
    assert_refused(
        s.party("planner").await.downscope(typo).await,
        Code::PermissionDenied,
        &["trips:serach"],
    );
    // At Mint, a claim on a scope the token does not hold is a malformed request.
    let mut bad = scoped_root();
    bad.claims.insert(
        "nights".into(),
        build::applies_to(build::max(3), &["hotels:book"]),
    );
    assert_refused(
        s.minter().await.mint(bad).await,
        Code::InvalidArgument,
        &["applies_to", "hotels:book"],
    );
}

#[tokio::test]
async fn ranges_windows_case_insensitive_sets_and_paths() {
    let s = TestServer::start().await;
    let dec = |day: i64| 1_764_547_200 + (day - 1) * 86_400; // 2025-12-<day>
    let token = s
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking"],
            &["trips:book"],
            vec![
                ("amount", build::range(100, 500)),
                ("departure", build::window(dec(1), dec(15))),
                (
                    "category",
                    build::case_insensitive(build::deny(&["Gambling"])),
                ),
                ("path", build::prefix("/trips")),
            ],
        ))
        .await
        .token;
    let action = |amount: i64, day: i64, category: &str, path: &str| {
        check(
            &token,
            "trips:book",
            vec![
                ("amount", int(amount)),
                ("departure", build::time(dec(day))),
                ("category", text(category)),
                ("path", text(path)),
            ],
        )
    };
    assert_allowed(
        &s.validate("planner", action(100, 3, "travel", "/trips/9"))
            .await,
    );
    assert_denied(
        &s.validate("planner", action(99, 3, "travel", "/trips/9"))
            .await,
        "amount",
    );
    assert_denied(
        &s.validate("planner", action(501, 3, "travel", "/trips/9"))
            .await,
        "amount",
    );
    assert_denied(
        &s.validate("planner", action(200, 16, "travel", "/trips/9"))
            .await,
        "departure",
    );
    for sneaky in ["gambling", "GAMBLING", "ＧＡＭＢＬＩＮＧ"] {
        assert_denied(
            &s.validate("planner", action(200, 3, sneaky, "/trips/9"))
                .await,
            "category",
        );
    }
    for escape in [
        "/tripsX",
        "/trips/../admin",
        "/trips/%2e%2e/admin",
        "/trips//x",
    ] {
        assert_denied(
            &s.validate("planner", action(200, 3, "travel", escape))
                .await,
            "path",
        );
    }
    // A number is not a time: a window never accepts one.
    let untyped = check(
        &token,
        "trips:book",
        vec![
            ("amount", int(200)),
            ("departure", int(dec(3))),
            ("category", text("travel")),
            ("path", text("/trips/1")),
        ],
    );
    assert_denied(&s.validate("planner", untyped).await, "departure");
    // Text that only looks like an allowed value is refused before any rule sees it.
    for invisible in [
        "gam\u{AD}bling",
        "travel\u{200B}",
        "travel\u{FE0F}",
        "e\u{301}",
    ] {
        assert_refused(
            s.party("planner")
                .await
                .validate(action(200, 3, invisible, "/trips/1"))
                .await,
            Code::InvalidArgument,
            &["action.attributes[\"category\"]"],
        );
    }
}

#[tokio::test]
async fn every_item_of_a_list_must_pass_and_a_check_spends_one_use() {
    let s = TestServer::start().await;
    let token = s
        .mint(pb::MintRequest {
            max_uses: 2,
            ..mint_request(
                "alice",
                build::agent("planner"),
                &[],
                &["cart:buy"],
                vec![("item", build::allow(&["book", "pen", "ink"]))],
            )
        })
        .await
        .token;
    let buy = |items: &[&str]| {
        check(
            &token,
            "cart:buy",
            vec![("item", build::list(items.iter().map(|i| text(i)).collect()))],
        )
    };
    let why = assert_denied(&s.validate("planner", buy(&["book", "gun"])).await, "item");
    assert!(why.starts_with("item 1:"), "{why}");
    assert_allowed(&s.validate("planner", buy(&["book", "pen", "ink"])).await);
    assert_allowed(&s.validate("planner", buy(&["pen"])).await);
    // Two checks, two uses, however many items they named.
    assert_inactive(
        &s.validate("planner", buy(&["book"])).await,
        pb::InactiveReason::Exhausted,
    );
}

#[tokio::test]
async fn a_token_that_requires_action_checks_is_inactive_to_plain_introspection() {
    let s = TestServer::start().await;
    let root = s
        .mint(pb::MintRequest {
            max_uses: 1,
            require_action_check: true,
            ..mint_request(
                "alice",
                build::agent("planner"),
                &["booking"],
                &["trips:book", "trips:search"],
                vec![],
            )
        })
        .await
        .token;
    assert_inactive(
        &s.validate("planner", introspect(&root)).await,
        pb::InactiveReason::ActionRequired,
    );
    let decision_only = pb::ValidateRequest {
        decision_only: true,
        ..introspect(&root)
    };
    assert_inactive(
        &s.validate("planner", decision_only).await,
        pb::InactiveReason::ActionRequired,
    );
    // Refused introspections are in the trail like any inactive answer.
    let txn = ok(
        s.operator()
            .await
            .list_transactions(Default::default())
            .await,
        "list",
    )
    .transactions[0]
        .txn
        .clone();
    let events = s.events(&txn).await;
    let refused_introspections = events
        .iter()
        .filter(|e| e.result == "inactive" && e.detail == "action_required")
        .count();
    assert_eq!(refused_introspections, 2);
    // A child keeps the requirement even when its request does not repeat it.
    let kid = s
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await;
    assert!(kid.info.as_ref().expect("info").require_action_check);
    assert_inactive(
        &s.validate("booking", introspect(&kid.token)).await,
        pb::InactiveReason::ActionRequired,
    );
    assert_allowed(
        &s.validate("booking", check(&kid.token, "trips:book", vec![]))
            .await,
    );
    assert_inactive(
        &s.validate("booking", check(&kid.token, "trips:book", vec![]))
            .await,
        pb::InactiveReason::Exhausted,
    );
}

#[tokio::test]
async fn a_hop_drops_request_context_it_need_not_pass_on() {
    let s = TestServer::start().await;
    let mint = pb::MintRequest {
        rctx: [
            ("req_ip".to_string(), "203.0.113.7".to_string()),
            ("authn".to_string(), "webauthn".to_string()),
        ]
        .into(),
        ..trip_mint()
    };
    let root = s.mint(mint).await.token;
    let req = pb::DownscopeRequest {
        drop_rctx: strings(&["req_ip"]),
        ..child(
            &root,
            build::agent("booking"),
            &["payments"],
            &["trips:book"],
            vec![],
        )
    };
    let kid = s.downscope("planner", req).await;
    let info = kid.info.expect("info");
    assert_eq!(info.rctx.keys().collect::<Vec<_>>(), vec!["authn"]);
    assert_eq!(info.tctx["trip"], "lisbon-2026", "tctx never changes");
    // What the child dropped is gone for its descendants too, and may not be dropped again.
    let again = pb::DownscopeRequest {
        drop_rctx: strings(&["req_ip"]),
        ..child(
            &kid.token,
            build::workload("payments"),
            &[],
            &["trips:book"],
            vec![],
        )
    };
    assert_refused(
        s.party("booking").await.downscope(again).await,
        Code::InvalidArgument,
        &["drop_rctx", "req_ip"],
    );
}
