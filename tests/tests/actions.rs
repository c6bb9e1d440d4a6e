//! Action checks: Validate with an action answers allowed, or denied by the scope or by
//! the one claim that refused it. Evaluation fails closed.

use writ_e2e::*;

fn pay(token: &str, attrs: Vec<(&str, pb::Value)>) -> pb::ValidateRequest {
    check(token, "payments:charge", attrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_allowed_or_denied_by_the_claim_that_refuses_them() {
    let srv = TestServer::start().await;
    let token = srv.mint(trip_mint()).await.token;
    let v = |req| srv.validate("planner", req);

    // No action asked: no decision.
    let r = v(introspect(&token)).await;
    assert_active(&r);
    assert!(r.decision.is_none(), "{r:?}");

    // Allowed: the scope is held, the amount within the max, the category not denied.
    assert_allowed(
        &v(pay(
            &token,
            vec![
                ("amount", build::int(500)),
                ("category", build::str("travel")),
            ],
        ))
        .await,
    );
    assert_allowed(
        &v(pay(
            &token,
            vec![
                ("amount", build::int(1000)),
                ("category", build::str("travel")),
            ],
        ))
        .await,
    );
    assert_allowed(
        &v(check(
            &token,
            "trips:book",
            vec![("amount", build::int(0)), ("category", build::str("hotel"))],
        ))
        .await,
    );
    // Attributes no claim names are unconstrained.
    assert_allowed(
        &v(pay(
            &token,
            vec![
                ("amount", build::int(1)),
                ("category", build::str("travel")),
                ("note", build::str("x")),
            ],
        ))
        .await,
    );

    // Amount over the limit.
    let why = assert_denied(
        &v(pay(
            &token,
            vec![
                ("amount", build::int(1001)),
                ("category", build::str("travel")),
            ],
        ))
        .await,
        "amount",
    );
    assert!(why.contains("1001"), "{why}");
    // A denied category.
    let why = assert_denied(
        &v(pay(
            &token,
            vec![
                ("amount", build::int(10)),
                ("category", build::str("gambling")),
            ],
        ))
        .await,
        "category",
    );
    assert!(why.contains("gambling"), "{why}");
    // A missing attribute fails closed.
    let why = assert_denied(
        &v(pay(&token, vec![("amount", build::int(10))])).await,
        "category",
    );
    assert!(why.contains("category"), "{why}");
    assert_denied(
        &v(pay(&token, vec![("category", build::str("travel"))])).await,
        "amount",
    );
    assert_denied(&v(pay(&token, vec![])).await, "amount");
    // The wrong type fails closed.
    assert_denied(
        &v(pay(
            &token,
            vec![
                ("amount", build::str("10")),
                ("category", build::str("travel")),
            ],
        ))
        .await,
        "amount",
    );
    assert_denied(
        &v(pay(
            &token,
            vec![("amount", build::int(10)), ("category", build::int(3))],
        ))
        .await,
        "category",
    );
    // A scope the token does not hold.
    let why = assert_denied(
        &v(check(
            &token,
            "payments:refund",
            vec![
                ("amount", build::int(10)),
                ("category", build::str("travel")),
            ],
        ))
        .await,
        "scope",
    );
    assert!(why.contains("payments:refund"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_claim_kind_evaluates_on_a_narrowed_child() {
    let srv = TestServer::start().await;
    let root = srv
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking"],
            &["trips:book"],
            vec![("amount", build::max(1000))],
        ))
        .await
        .token;
    let c = srv
        .downscope(
            "planner",
            child(
                &root,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![
                    ("amount", build::max(300)),
                    ("nights", build::min(2)),
                    ("region", build::allow(&["eu"])),
                    ("path", build::prefix("/trips/lisbon/")),
                    ("currency", build::exact(build::str("EUR"))),
                ],
            ),
        )
        .await
        .token;
    let good = || {
        vec![
            ("amount", build::int(300)),
            ("nights", build::int(2)),
            ("region", build::str("eu")),
            ("path", build::str("/trips/lisbon/hotel-1")),
            ("currency", build::str("EUR")),
        ]
    };
    let with = |name: &str, value: pb::Value| {
        let mut attrs = good();
        for a in &mut attrs {
            if a.0 == name {
                a.1 = value.clone();
            }
        }
        check(&c, "trips:book", attrs)
    };
    assert_allowed(
        &srv.validate("booking", check(&c, "trips:book", good()))
            .await,
    );
    // The parent allowed 301..=1000; the child does not.
    assert_denied(
        &srv.validate("booking", with("amount", build::int(301)))
            .await,
        "amount",
    );
    assert_denied(
        &srv.validate("booking", with("nights", build::int(1))).await,
        "nights",
    );
    assert_denied(
        &srv.validate("booking", with("region", build::str("us")))
            .await,
        "region",
    );
    assert_denied(
        &srv.validate("booking", with("path", build::str("/trips/porto/")))
            .await,
        "path",
    );
    assert_denied(
        &srv.validate("booking", with("currency", build::str("USD")))
            .await,
        "currency",
    );
    assert_denied(
        &srv.validate("booking", with("currency", build::int(1)))
            .await,
        "currency",
    );
    // The root, under the planner, still allows what the child refuses.
    assert_allowed(
        &srv.validate(
            "planner",
            check(&root, "trips:book", vec![("amount", build::int(999))]),
        )
        .await,
    );
}

#[tokio::test]
async fn a_decision_only_answer_carries_the_verdict_without_the_context() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    let ask = |amount: i64| pb::ValidateRequest {
        decision_only: true,
        ..check(
            &root.token,
            "trips:book",
            vec![
                ("amount", build::int(amount)),
                ("category", build::str("hotel")),
            ],
        )
    };
    let allowed = srv.validate("planner", ask(10)).await;
    assert!(allowed.active);
    assert!(allowed.info.is_none(), "{allowed:?}");
    assert!(allowed.decision.as_ref().is_some_and(|d| d.allowed));
    let denied = srv.validate("planner", ask(5000)).await;
    assert!(denied.active && denied.info.is_none());
    let d = denied.decision.expect("a decision");
    assert!(!d.allowed && d.denied_by == "amount", "{d:?}");
    // Inactive answers are the same either way.
    let wrong = srv.validate("booking", ask(10)).await;
    assert_inactive(&wrong, pb::InactiveReason::WrongAudience);
    // Without the flag the context is there, as before.
    let full = srv
        .validate(
            "planner",
            pb::ValidateRequest {
                decision_only: false,
                ..ask(10)
            },
        )
        .await;
    assert_eq!(assert_active(&full).subject, "alice");
}
