//! Every way to ask for more than one holds is refused with its own status code and a
//! message naming the dimension (and the offending scope, claim, party or field).

use tonic::Code;
use writ_e2e::*;

/// A root held by the planner with one claim of every kind.
fn rich_root() -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent("planner"),
        &["booking", "payments"],
        &["trips:book", "payments:charge"],
        vec![
            ("amount", build::max(1000)),
            ("nights", build::min(1)),
            ("category", build::deny(&["gambling", "health"])),
            ("region", build::allow(&["eu", "us"])),
            ("path", build::prefix("/trips/")),
            ("currency", build::exact(build::str("EUR"))),
        ],
    )
}

/// A valid narrowing of [`rich_root`] to booking, with `claim_list` on top.
fn to_booking(parent: &str, claim_list: Vec<(&str, pb::Constraint)>) -> pb::DownscopeRequest {
    child(
        parent,
        build::agent("booking"),
        &["payments"],
        &["trips:book"],
        claim_list,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wider_scopes_audiences_targets_and_expiry_are_refused() {
    let srv = TestServer::start().await;
    let root = srv
        .mint(pb::MintRequest {
            ttl_seconds: 60,
            ..rich_root()
        })
        .await
        .token;
    let mut planner = srv.party("planner").await;

    // Sanity: the baseline child is accepted, so each refusal below is due to its one change.
    ok(
        planner.downscope(to_booking(&root, vec![])).await,
        "baseline downscope",
    );

    // A scope the parent does not hold.
    let req = child(
        &root,
        build::agent("booking"),
        &[],
        &["trips:book", "admin:all"],
        vec![],
    );
    assert_refused(
        planner.downscope(req).await,
        Code::PermissionDenied,
        &["scopes:", "admin:all"],
    );

    // An audience outside the parent's targets.
    let req = child(&root, build::agent("hotels"), &[], &["trips:book"], vec![]);
    assert_refused(
        planner.downscope(req).await,
        Code::PermissionDenied,
        &["audience:", "hotels"],
    );

    // Targets wider than the parent's.
    let req = child(
        &root,
        build::agent("booking"),
        &["payments", "casino"],
        &["trips:book"],
        vec![],
    );
    assert_refused(
        planner.downscope(req).await,
        Code::PermissionDenied,
        &["targets:", "casino"],
    );

    // A lifetime past the parent's expiry.
    let req = pb::DownscopeRequest {
        ttl_seconds: 120,
        ..to_booking(&root, vec![])
    };
    assert_refused(
        planner.downscope(req).await,
        Code::PermissionDenied,
        &["expiry:"],
    );

    // A child that keeps every target keeps itself among them: a loop.
    let req = child(
        &root,
        build::agent("booking"),
        &["booking", "payments"],
        &["trips:book", "payments:charge"],
        vec![],
    );
    assert_refused(
        planner.downscope(req).await,
        Code::PermissionDenied,
        &["loop:", "booking"],
    );
    // Only where loops are allowed can a child keep every target, and then it must still
    // narrow something: the same grant, even restating every parent claim, is refused.
    let loops = TestServer::start_with(|c| c.tokens.allow_actor_loops = true).await;
    let root = loops.mint(rich_root()).await.token;
    let mut planner = loops.party("planner").await;
    for claims in [Default::default(), rich_root().claims] {
        let req = pb::DownscopeRequest {
            claims,
            ..child(
                &root,
                build::agent("booking"),
                &["booking", "payments"],
                &["trips:book", "payments:charge"],
                vec![],
            )
        };
        assert_refused(
            planner.downscope(req).await,
            Code::InvalidArgument,
            &["not_narrower:"],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_wider_claim_is_refused_naming_the_claim() {
    let srv = TestServer::start().await;
    let root = srv.mint(rich_root()).await.token;
    let mut planner = srv.party("planner").await;

    let cases: Vec<(&str, pb::Constraint, &str)> = vec![
        ("amount", build::max(1001), "max raised"),
        ("nights", build::min(0), "min lowered"),
        ("category", build::deny(&["gambling"]), "deny-set shrunk"),
        ("category", build::deny(&[]), "deny-set emptied"),
        (
            "region",
            build::allow(&["eu", "us", "asia"]),
            "allow-set grown",
        ),
        ("path", build::prefix("/trip"), "prefix shortened"),
        ("path", build::prefix("/hotels/"), "prefix replaced"),
        ("currency", build::exact(build::str("USD")), "exact changed"),
        (
            "currency",
            build::exact(build::int(1)),
            "exact changed type",
        ),
        ("amount", build::min(0), "kind changed max → min"),
        ("region", build::deny(&["cn"]), "kind changed allow → deny"),
        (
            "currency",
            build::allow(&["EUR"]),
            "kind changed exact → allow",
        ),
    ];
    for (name, c, what) in cases {
        let r = planner.downscope(to_booking(&root, vec![(name, c)])).await;
        let msg = assert_refused(
            r,
            Code::PermissionDenied,
            &["claims:", format!("{name:?}").as_str()],
        );
        assert!(msg.starts_with("claims:"), "{what}: {msg}");
    }

    // The same claims narrowed are accepted (the refusals above are about width, not shape).
    let narrower = vec![
        ("amount", build::max(999)),
        ("nights", build::min(2)),
        ("category", build::deny(&["gambling", "health", "crypto"])),
        ("region", build::allow(&["eu"])),
        ("path", build::prefix("/trips/lisbon/")),
        ("currency", build::exact(build::str("EUR"))),
    ];
    let c = ok(
        planner.downscope(to_booking(&root, narrower)).await,
        "narrower claims",
    )
    .info
    .expect("info");
    assert_eq!(c.claims.get("amount"), Some(&build::max(999)));
    assert_eq!(c.claims.get("region"), Some(&build::allow(&["eu"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_deeper_than_max_depth_are_refused() {
    let srv = TestServer::start_with(|c| c.tokens.max_depth = 2).await;
    let root = srv
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "payments", "ledger"],
            &["pay"],
            vec![],
        ))
        .await;
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments", "ledger"],
                &["pay"],
                vec![],
            ),
        )
        .await;
    let c2 = srv
        .downscope(
            "booking",
            child(
                &c1.token,
                build::agent("payments"),
                &["ledger"],
                &["pay"],
                vec![],
            ),
        )
        .await;
    assert_eq!(
        c2.info.expect("info").depth,
        2,
        "depth == max_depth is allowed"
    );
    let r = srv
        .party("payments")
        .await
        .downscope(child(
            &c2.token,
            build::workload("ledger"),
            &[],
            &["pay"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::FailedPrecondition, &["depth:", "3", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_loops_and_foreign_holders_are_refused() {
    let srv = TestServer::start().await;
    // A root whose first hop is among its own targets could only ever loop back to it.
    let r = srv
        .minter()
        .await
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "planner"],
            &["trips:book", "x"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::PermissionDenied, &["loop:", "planner"]);
    let root = srv
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "search"],
            &["trips:book", "x"],
            vec![],
        ))
        .await
        .token;
    // planner → booking naming the planner (or itself) as reachable again: a loop, refused
    // when the child would name it, not later.
    for back in ["planner", "booking"] {
        let r = srv
            .party("planner")
            .await
            .downscope(child(
                &root,
                build::agent("booking"),
                &["search", back],
                &["trips:book"],
                vec![],
            ))
            .await;
        assert_refused(r, Code::PermissionDenied, &["loop:", back]);
    }

    // The planner handing a token to itself is a loop too.
    let r = srv
        .party("planner")
        .await
        .downscope(child(
            &root,
            build::agent("planner"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::PermissionDenied, &["loop:", "planner"]);

    // Only the parent's audience may derive from it.
    for thief in ["booking", "payments"] {
        let r = srv
            .party(thief)
            .await
            .downscope(child(
                &root,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![],
            ))
            .await;
        assert_refused(r, Code::PermissionDenied, &["holder:", thief]);
    }
    // Claiming the minter's identity without its credential is refused outright.
    let r = srv
        .party(LOCAL_MINTER)
        .await
        .downscope(child(
            &root,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::PermissionDenied, &["minter"]);
    // The former holder of a child may not derive from it either.
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root,
                build::agent("booking"),
                &["search"],
                &["trips:book"],
                vec![],
            ),
        )
        .await
        .token;
    let r = srv
        .party("planner")
        .await
        .downscope(child(
            &c1,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::PermissionDenied, &["holder:", "planner"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_parents_are_refused() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await.token;
    let short = srv
        .mint(pb::MintRequest {
            ttl_seconds: 1,
            ..trip_mint()
        })
        .await
        .token;
    let mut planner = srv.party("planner").await;
    let req = |parent: &str| {
        child(
            parent,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        )
    };

    // Forged: one character changed, the tag no longer verifies.
    assert_refused(
        planner.downscope(req(&flip_middle(&root))).await,
        Code::Unauthenticated,
        &["parent_token"],
    );
    // Malformed: not a Writ token at all, or cut short (the same code: present a valid one).
    assert_refused(
        planner.downscope(req("not-a-token")).await,
        Code::Unauthenticated,
        &["parent_token"],
    );
    assert_refused(
        planner.downscope(req(&root[..root.len() - 3])).await,
        Code::Unauthenticated,
        &["parent_token"],
    );
    // Missing.
    assert_refused(
        planner.downscope(req("")).await,
        Code::InvalidArgument,
        &["parent_token"],
    );

    // Expired.
    sleep_past_one_second_ttl().await;
    assert_refused(
        planner.downscope(req(&short)).await,
        Code::FailedPrecondition,
        &["parent_expired"],
    );
    // The long-lived root still works.
    ok(
        planner.downscope(req(&root)).await,
        "downscope of a live parent",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_must_identify_themselves() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await.token;
    let mut anon = srv.anonymous().await;
    let r = anon
        .downscope(child(
            &root,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::Unauthenticated, &["identity"]);
    assert_refused(
        anon.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["identity"],
    );

    // A caller id that is not an id.
    let mut c = srv.party("two words").await;
    assert_refused(
        c.validate(introspect(&root)).await,
        Code::InvalidArgument,
        &["x-writ-caller"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_minters_may_mint() {
    let srv = TestServer::start().await;

    let r = srv.anonymous().await.mint(trip_mint()).await;
    assert_refused(r, Code::Unauthenticated, &["authorization"]);

    let mut wrong = srv
        .anonymous()
        .await
        .with_minter_credential("wmc_00000000000000000000000000000000")
        .expect("metadata");
    assert_refused(
        wrong.mint(trip_mint()).await,
        Code::Unauthenticated,
        &["authorization"],
    );
    // A near miss of the real credential is just as wrong.
    let near = flip_middle(&srv.credential());
    let mut near = srv
        .anonymous()
        .await
        .with_minter_credential(&near)
        .expect("metadata");
    assert_refused(
        near.mint(trip_mint()).await,
        Code::Unauthenticated,
        &["authorization"],
    );

    // A party asserting an identity is not a minter, not even one named like the minter.
    let r = srv.party("planner").await.mint(trip_mint()).await;
    assert_refused(r, Code::PermissionDenied, &["planner", "minter"]);
    let r = srv.party(LOCAL_MINTER).await.mint(trip_mint()).await;
    assert_refused(r, Code::PermissionDenied, &[LOCAL_MINTER, "minter"]);

    // Lifetimes are capped by configuration (default max_ttl_seconds = 900).
    let mut minter = srv.minter().await;
    let r = minter
        .mint(pb::MintRequest {
            ttl_seconds: 901,
            ..trip_mint()
        })
        .await;
    assert_refused(r, Code::PermissionDenied, &["ttl_seconds", "901", "900"]);
    let at_cap = ok(
        minter
            .mint(pb::MintRequest {
                ttl_seconds: 900,
                ..trip_mint()
            })
            .await,
        "mint at the cap",
    );
    let i = at_cap.info.expect("info");
    assert_eq!(i.expires_at_unix_ms - i.issued_at_unix_ms, 900_000);

    // A minter cannot hand the token to itself.
    let r = minter
        .mint(pb::MintRequest {
            audience: Some(build::workload(LOCAL_MINTER)),
            ..trip_mint()
        })
        .await;
    assert_refused(r, Code::PermissionDenied, &["loop", LOCAL_MINTER]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_request_fields_are_refused_naming_the_field() {
    let srv = TestServer::start().await;
    let mut minter = srv.minter().await;
    let base = trip_mint;

    let too_many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let cases: Vec<(pb::MintRequest, &str)> = vec![
        (
            pb::MintRequest {
                subject: String::new(),
                ..base()
            },
            "subject",
        ),
        (
            pb::MintRequest {
                subject: "alice smith".into(),
                ..base()
            },
            "subject",
        ),
        (
            pb::MintRequest {
                audience: None,
                ..base()
            },
            "audience",
        ),
        (
            pb::MintRequest {
                audience: Some(pb::Party {
                    kind: 0,
                    ..build::agent("planner")
                }),
                ..base()
            },
            "audience.kind",
        ),
        (
            pb::MintRequest {
                audience: Some(pb::Party {
                    client_type: 0,
                    ..build::agent("planner")
                }),
                ..base()
            },
            "audience.client_type",
        ),
        (
            pb::MintRequest {
                audience: Some(build::agent("")),
                ..base()
            },
            "audience.id",
        ),
        (
            pb::MintRequest {
                scopes: strings(&["trips book"]),
                ..base()
            },
            "scopes",
        ),
        (
            pb::MintRequest {
                scopes: too_many,
                ..base()
            },
            "scopes",
        ),
        (
            pb::MintRequest {
                targets: strings(&[""]),
                ..base()
            },
            "targets",
        ),
        (
            pb::MintRequest {
                claims: claims(vec![("amount", pb::Constraint::default())]),
                ..base()
            },
            "claims[\"amount\"]",
        ),
        (
            pb::MintRequest {
                claims: claims(vec![("bad name", build::max(1))]),
                ..base()
            },
            "claims[\"bad name\"]",
        ),
        (
            pb::MintRequest {
                purpose: "a\u{7}b".into(),
                ..base()
            },
            "purpose",
        ),
    ];
    for (req, field) in cases {
        let msg = assert_refused(minter.mint(req).await, Code::InvalidArgument, &[field]);
        assert!(
            msg.starts_with(&format!("{field}:")),
            "the message leads with the field: {msg}"
        );
    }

    // Downscope and Validate validate their fields the same way.
    let root = srv.mint(trip_mint()).await.token;
    let mut planner = srv.party("planner").await;
    let r = planner
        .downscope(pb::DownscopeRequest {
            audience: None,
            ..child(&root, build::agent("booking"), &[], &[], vec![])
        })
        .await;
    assert_refused(r, Code::InvalidArgument, &["audience"]);
    let r = planner
        .downscope(child(
            &root,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![("amount", pb::Constraint::default())],
        ))
        .await;
    assert_refused(r, Code::InvalidArgument, &["claims[\"amount\"]"]);
    let r = planner.validate(check(&root, "trips book", vec![])).await;
    assert_refused(r, Code::InvalidArgument, &["action.scope"]);
    let r = planner
        .validate(check(
            &root,
            "trips:book",
            vec![("amount", pb::Value { kind: None })],
        ))
        .await;
    assert_refused(r, Code::InvalidArgument, &["action.attributes[\"amount\"]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_minters_authenticate_by_their_credential_digest() {
    let secret = "wmc_an-edge-gateway-credential-of-enough-length";
    let srv = TestServer::start_with(|c| {
        c.minters = vec![writ_server::config::CredentialConfig {
            id: "edge-gateway".into(),
            // What `writ credential-hash` prints.
            credential_blake3: writ_server::secrets::credential_hex(secret),
        }];
    })
    .await;
    assert!(
        !srv.data_dir().join("minter.credential").exists(),
        "no local minter credential when minters are configured"
    );
    let mut gw = srv
        .anonymous()
        .await
        .with_minter_credential(secret)
        .expect("valid metadata");
    let minted = gw
        .mint(trip_mint())
        .await
        .expect("the configured minter mints");
    let act = minted.info.expect("info").act.expect("act");
    assert_eq!(act.id, "edge-gateway", "the minter is the first actor");
    let mut wrong = srv
        .anonymous()
        .await
        .with_minter_credential(&format!("{secret}x"))
        .expect("valid metadata");
    assert_refused(
        wrong.mint(trip_mint()).await,
        Code::Unauthenticated,
        &["credential"],
    );
}
