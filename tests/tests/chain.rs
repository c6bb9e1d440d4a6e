//! The three-hop chain of the issue: gateway → planner (agent) → booking (agent) →
//! payments (API), each hop narrower, each token validated by its own audience.

use tonic::Code;
use writ_e2e::pb::{ActorKind, ClientType, InactiveReason};
use writ_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_chain_narrows_and_records_the_actors() {
    let srv = TestServer::start().await;

    // Hop 0: the gateway mints alice's transaction for the planner agent.
    let root = srv.mint(trip_mint()).await;
    assert!(
        root.token.starts_with("writ_"),
        "tokens carry the scanner prefix"
    );
    let root_info = root.info.clone().expect("mint returns the token info");

    // Hop 1: the planner derives a token for booking, which may still reach payments.
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book", "payments:charge"],
                vec![("amount", build::max(500))],
            ),
        )
        .await;
    // Hop 2: booking derives a token for the payments API: no further targets.
    let c2 = srv
        .downscope(
            "booking",
            child(
                &c1.token,
                build::workload("payments"),
                &[],
                &["payments:charge"],
                vec![("category", build::deny(&["gambling", "health"]))],
            ),
        )
        .await;
    assert_ne!(root.token, c1.token);
    assert_ne!(c1.token, c2.token);

    // Each audience validates its own token.
    let v0 = assert_active(&srv.validate("planner", introspect(&root.token)).await);
    let v1 = assert_active(&srv.validate("booking", introspect(&c1.token)).await);
    let v2 = assert_active(&srv.validate("payments", introspect(&c2.token)).await);
    assert_eq!(
        Some(&v0),
        root.info.as_ref(),
        "validate returns what mint returned"
    );
    assert_eq!(
        Some(&v1),
        c1.info.as_ref(),
        "validate returns what downscope returned"
    );
    assert_eq!(
        Some(&v2),
        c2.info.as_ref(),
        "validate returns what downscope returned"
    );

    // Depth, transaction, subject, trust domain, contexts and purpose.
    assert_eq!([v0.depth, v1.depth, v2.depth], [0, 1, 2]);
    assert!(v0.txn.starts_with("txn_"), "{}", v0.txn);
    for v in [&v0, &v1, &v2] {
        assert!(v.token_id.starts_with("tid_"), "{}", v.token_id);
        assert_eq!(v.txn, root_info.txn, "txn is immutable along the chain");
        assert_eq!(v.subject, "alice");
        assert_eq!(v.trust_domain, "writ.local");
        assert_eq!(v.tctx.get("trip").map(String::as_str), Some("lisbon-2026"));
        assert_eq!(
            v.rctx.get("req_ip").map(String::as_str),
            Some("203.0.113.7")
        );
        assert_eq!(
            v.purpose, "book a trip",
            "an empty purpose inherits the parent's"
        );
        let dump = format!("{v:?}");
        for t in [&root.token, &c1.token, &c2.token] {
            assert!(!dump.contains(&t[5..]), "token info never carries a token");
        }
    }
    assert_ne!(v0.token_id, v1.token_id);
    assert_ne!(v1.token_id, v2.token_id);

    // Parent links.
    assert_eq!(v0.parent_token_id, "");
    assert_eq!(v1.parent_token_id, v0.token_id);
    assert_eq!(v2.parent_token_id, v1.token_id);

    // The act chain nests the current actor outermost, the minter innermost.
    assert_eq!(
        act_chain(&v0),
        vec![(LOCAL_MINTER.to_string(), ActorKind::Workload)]
    );
    assert_eq!(
        act_chain(&v1),
        vec![
            ("planner".to_string(), ActorKind::Agent),
            (LOCAL_MINTER.to_string(), ActorKind::Workload)
        ]
    );
    assert_eq!(
        act_chain(&v2),
        vec![
            ("booking".to_string(), ActorKind::Agent),
            ("planner".to_string(), ActorKind::Agent),
            (LOCAL_MINTER.to_string(), ActorKind::Workload),
        ]
    );
    let outer = v2.act.as_ref().expect("act");
    assert_eq!(outer.client_type(), ClientType::Confidential);

    // Agent traffic: false at the root (the minter is a workload), true once an agent acts.
    assert!(
        !v0.agent_traffic,
        "the root's current actor is the minter, a workload"
    );
    assert!(v1.agent_traffic, "the planner agent presents hop 1");
    assert!(v2.agent_traffic, "the booking agent presents hop 2");
    for v in [&v0, &v1, &v2] {
        assert_eq!(v.actor_client_type(), ClientType::Confidential);
    }

    // Audiences.
    let aud = |v: &pb::TokenInfo| {
        let a = v.audience.as_ref().expect("audience");
        (a.id.clone(), a.kind())
    };
    assert_eq!(aud(&v0), ("planner".to_string(), ActorKind::Agent));
    assert_eq!(aud(&v1), ("booking".to_string(), ActorKind::Agent));
    assert_eq!(aud(&v2), ("payments".to_string(), ActorKind::Workload));

    // The grant narrows hop by hop.
    assert_eq!(v0.targets, strings(&["booking", "payments"]));
    assert_eq!(v1.targets, strings(&["payments"]));
    assert!(v2.targets.is_empty());
    assert_eq!(v0.scopes, strings(&["payments:charge", "trips:book"]));
    assert_eq!(v2.scopes, strings(&["payments:charge"]));
    assert_eq!(
        v0.claims,
        claims(vec![
            ("amount", build::max(1000)),
            ("category", build::deny(&["gambling"]))
        ])
    );
    assert_eq!(
        v1.claims,
        claims(vec![
            ("amount", build::max(500)),
            ("category", build::deny(&["gambling"]))
        ]),
        "unnamed parent claims are inherited"
    );
    assert_eq!(
        v2.claims,
        claims(vec![
            ("amount", build::max(500)),
            ("category", build::deny(&["gambling", "health"]))
        ])
    );
    assert!(v0.issued_at_unix_ms < v0.expires_at_unix_ms);
    assert!(v1.expires_at_unix_ms <= v0.expires_at_unix_ms);
    assert!(v2.expires_at_unix_ms <= v1.expires_at_unix_ms);
    assert!(v1.issued_at_unix_ms >= v0.issued_at_unix_ms);

    // The payments API checks the actual charge against the narrowed grant.
    let charge = |amount: i64, category: &str| {
        check(
            &c2.token,
            "payments:charge",
            vec![
                ("amount", build::int(amount)),
                ("category", build::str(category)),
            ],
        )
    };
    assert_allowed(&srv.validate("payments", charge(500, "travel")).await);
    assert_denied(
        &srv.validate("payments", charge(501, "travel")).await,
        "amount",
    );
    assert_denied(
        &srv.validate("payments", charge(100, "health")).await,
        "category",
    );
    assert_denied(
        &srv.validate(
            "payments",
            check(&c2.token, "trips:book", vec![("amount", build::int(1))]),
        )
        .await,
        "scope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_validated_by_a_party_other_than_its_audience_is_inactive() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book"],
                vec![],
            ),
        )
        .await;

    // The root belongs to the planner, not to booking or payments.
    for party in ["booking", "payments", "planner2"] {
        assert_inactive(
            &srv.validate(party, introspect(&root.token)).await,
            InactiveReason::WrongAudience,
        );
    }
    // Nobody may assert the minter's identity without its credential.
    let r = srv
        .party(LOCAL_MINTER)
        .await
        .validate(introspect(&root.token))
        .await;
    assert_refused(r, Code::PermissionDenied, &["minter"]);
    // The child belongs to booking; its former holder, the planner, may not use it.
    assert_inactive(
        &srv.validate("planner", introspect(&c1.token)).await,
        InactiveReason::WrongAudience,
    );
    assert_inactive(
        &srv.validate("payments", check(&c1.token, "trips:book", vec![]))
            .await,
        InactiveReason::WrongAudience,
    );
    // ...while the right audiences still see them active.
    assert_active(&srv.validate("planner", introspect(&root.token)).await);
    assert_active(&srv.validate("booking", introspect(&c1.token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downscope_options_ttl_purpose_and_added_claims() {
    let srv = TestServer::start().await;
    let root = srv
        .mint(pb::MintRequest {
            ttl_seconds: 600,
            ..trip_mint()
        })
        .await;
    let r = root.info.clone().expect("info");
    assert_eq!(
        r.expires_at_unix_ms - r.issued_at_unix_ms,
        600_000,
        "ttl_seconds sets the lifetime"
    );

    let req = pb::DownscopeRequest {
        ttl_seconds: 60,
        purpose: "pay the hotel".into(),
        ..child(
            &root.token,
            build::agent("booking"),
            &["payments"],
            &["trips:book", "payments:charge"],
            vec![("currency", build::exact(build::str("EUR")))],
        )
    };
    let c = srv.downscope("planner", req).await.info.expect("info");
    assert_eq!(c.expires_at_unix_ms - c.issued_at_unix_ms, 60_000);
    assert_eq!(c.purpose, "pay the hotel");
    assert_eq!(
        c.claims.get("currency"),
        Some(&build::exact(build::str("EUR"))),
        "a child may add a claim"
    );
    assert_eq!(c.claims.len(), 3);
}
