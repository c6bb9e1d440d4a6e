//! Several Writ nodes on one Redis Cluster (issue 14): what one node does, the others see
//! at once, and a party disabled through one is refused by all.

use std::time::Duration;
use writ_e2e::*;

use pb::InactiveReason;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_node_works_through_the_others_and_its_revocation_is_seen_at_once() {
    let a = TestServer::start_with(redis::use_cluster).await;
    let b = TestServer::start_node_of(&a).await;
    let c = TestServer::start_node_of(&a).await;
    let root = a.mint(trip_mint()).await.token;
    assert_active(&b.validate("planner", introspect(&root)).await);
    let kid = b
        .downscope(
            "planner",
            child(
                &root,
                build::agent("booking"),
                &["payments"],
                &["trips:book"],
                vec![],
            ),
        )
        .await
        .token;
    assert_active(&c.validate("booking", introspect(&kid)).await);
    assert_active(&a.validate("booking", introspect(&kid)).await);
    // Revoked through c: every node answers revoked on its very next Validate.
    c.revoke_as_holder("planner", &root, "done").await;
    for node in [&a, &b, &c] {
        assert_inactive(
            &node.validate("booking", introspect(&kid)).await,
            InactiveReason::Revoked,
        );
    }
}

/// Nodes that reach their cluster over TLS, as the ACL user DEPLOY.md gives, serve a
/// whole chain: mint, downscope, validate and revoke through different nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_tls_cluster_as_the_documented_acl_user_serve_a_chain() {
    let a = TestServer::start_with(redis::use_tls_cluster).await;
    let b = TestServer::start_node_of(&a).await;
    let root = a.mint(trip_mint()).await.token;
    let kid = b
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await
        .token;
    assert_active(&a.validate("booking", introspect(&kid)).await);
    b.revoke_as_holder("planner", &root, "done").await;
    assert_inactive(
        &a.validate("booking", introspect(&kid)).await,
        InactiveReason::Revoked,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_disabled_through_one_node_is_refused_by_the_others() {
    let a = TestServer::start_with(redis::use_cluster).await;
    let b = TestServer::start_node_of(&a).await;
    let root = a.mint(trip_mint()).await.token;
    // b admits booking before it knows.
    let early = b
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await
        .info
        .expect("the child's info")
        .token_id;
    ok(
        a.operator()
            .await
            .disable_party("booking", "key leaked")
            .await,
        "disable",
    );
    // Within a few of b's polls, b refuses booking as an audience, and what b admitted
    // is revoked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = b
            .party("planner")
            .await
            .downscope(child(
                &root,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![],
            ))
            .await;
        match r {
            Err(e) if e.to_string().contains("disabled") => break,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b still admits a disabled party"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let node = ok(b.operator().await.get_token(&early).await, "get_token")
        .token
        .expect("the token");
    assert_eq!(node.status, pb::TokenStatus::Revoked as i32, "{node:?}");
    // Enabled through a: b lets it act again.
    ok(a.operator().await.enable_party("booking").await, "enable");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = b
            .party("planner")
            .await
            .downscope(child(
                &root,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![],
            ))
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw the enablement"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An answer a node reads rather than writes ("revoked already", a retried Mint answered
/// with the token an earlier attempt stored) is given only once the replicas hold what was
/// read, as a write's would be: an earlier attempt whose write was not acknowledged must
/// not be acknowledged by its retry, or a failover could undo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_what_it_read_only_once_the_replicas_hold_it() {
    let a = TestServer::start_with(redis::use_cluster).await;
    // b asks for more replicas than each shard has: nothing it answers is acknowledged.
    let b = TestServer::start_node_of_with(&a, |c| {
        c.storage.redis.required_replicas = 3;
        c.storage.redis.ack_timeout_ms = 50;
    })
    .await;
    fn unavailable<T>(r: Result<T, writ_client::ClientError>, what: &str) {
        match r {
            Ok(_) => panic!("{what}: answered OK without the replicas"),
            Err(e) => assert_eq!(e.code(), Some(Code::Unavailable), "{what}: {e:?}"),
        }
    }
    let root = a.mint(trip_mint()).await.token;
    a.revoke_as_holder("planner", &root, "done").await;
    unavailable(
        b.party("planner")
            .await
            .revoke(revoke_token(&root, "again"))
            .await,
        "a holder's revoke of a revoked token",
    );
    let keyed = pb::MintRequest {
        idempotency_key: "7f3a9c1e-mint-once".into(),
        ..trip_mint()
    };
    let first = a.mint(keyed.clone()).await;
    unavailable(
        b.minter().await.mint(keyed.clone()).await,
        "a keyed Mint's retry",
    );
    // Through a node whose writes are acknowledged, the retry is answered as before.
    assert_eq!(a.mint(keyed).await.token, first.token);
}

/// A party disabled through one node and enabled again before another node read the
/// disablement: what that node admitted for the party meanwhile is revoked all the same,
/// because the enablement walks the party once more after every node has read the
/// disablement (or stopped admitting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_enabled_before_another_node_read_its_disablement_loses_what_it_got_meanwhile() {
    let a = TestServer::start_with(|c| {
        redis::use_cluster(c);
        c.storage.redis.party_sync_ms = 500;
        c.storage.redis.ack_timeout_ms = 100;
        c.storage.redis.response_timeout_ms = 600;
    })
    .await;
    // b does not re-read the set during this test: it stands for a node that had not
    // read it yet.
    let b = TestServer::start_node_of_with(&a, |c| c.storage.redis.party_sync_ms = 60_000).await;
    let root = a.mint(trip_mint()).await.token;
    ok(
        a.operator()
            .await
            .disable_party("booking", "key leaked")
            .await,
        "disable",
    );
    // b admits booking: it has not read the disablement.
    let meanwhile = b
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await
        .info
        .expect("the child's info")
        .token_id;
    ok(a.operator().await.enable_party("booking").await, "enable");
    let node = ok(b.operator().await.get_token(&meanwhile).await, "get_token")
        .token
        .expect("the token");
    assert_eq!(node.status, pb::TokenStatus::Revoked as i32, "{node:?}");
    // Enabled, booking is admitted again, and keeps what it gets.
    let after = a
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await
        .info
        .expect("the child's info")
        .token_id;
    let node = ok(a.operator().await.get_token(&after).await, "get_token")
        .token
        .expect("the token");
    assert_eq!(node.status, pb::TokenStatus::Active as i32, "{node:?}");
}

/// A client assertion proves its caller once per trust domain, not once per node: the
/// nodes share the record of the assertions used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_accepted_by_one_node_is_refused_by_the_others() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let bundle = tmp.path().join("jwt-bundle.json");
    let signer = jwt::Signer::new("k1");
    std::fs::write(
        &bundle,
        serde_json::json!({ "keys": [signer.jwk.clone()] }).to_string(),
    )
    .expect("writing the bundle");
    let with_bundle = bundle.clone();
    let a = TestServer::start_with(move |c| {
        redis::use_cluster(c);
        c.auth.jwt_svid_bundle = Some(with_bundle);
    })
    .await;
    let b = TestServer::start_node_of_with(&a, |c| c.auth.jwt_svid_bundle = Some(bundle)).await;
    let planner = a.spiffe("agent/planner");
    let root = a
        .mint(mint_request(
            "alice",
            build::agent(&planner),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await
        .token;
    let now = jwt::now();
    let claims = serde_json::json!({
        "sub": planner, "aud": a.spiffe("writ"), "iat": now, "exp": now + 60, "jti": "once-per-domain",
    });
    let assertion = signer.sign("k1", &claims);
    assert_active(&ok(
        asserting(&a, &assertion)
            .await
            .validate(introspect(&root))
            .await,
        "the assertion's first use",
    ));
    assert_refused(
        asserting(&b, &assertion)
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["jti"],
    );
}

/// A client of `srv` that proves itself with `assertion`.
async fn asserting(srv: &TestServer, assertion: &str) -> writ_client::WritClient {
    srv.anonymous()
        .await
        .with_client_assertion(assertion)
        .expect("a valid header")
}

/// A watcher on one node sees what every node stores: each announces its stored events
/// to the others once it learns that a node elsewhere has watchers (within a couple of
/// seconds), exactly once, never its own back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_node_sees_the_events_another_node_stores() {
    let a = TestServer::start_with(redis::use_cluster).await;
    let b = TestServer::start_node_of(&a).await;
    let mut watch = ok(
        b.operator()
            .await
            .watch_events(pb::WatchEventsRequest {
                kinds: vec![pb::EventKind::Minted.into(), pb::EventKind::Revoked.into()],
                ..Default::default()
            })
            .await,
        "watch",
    );
    // Until a knows of b's watcher, what a stores is not announced: mint through a until
    // b's watcher sees one of them.
    let mut probes = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    'live: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never announced to b"
        );
        probes.insert(a.mint(trip_mint()).await.info.expect("info").txn);
        while let Some(e) = next_within(&mut watch, Duration::from_secs(3)).await {
            if probes.contains(&e.txn) {
                break 'live;
            }
        }
    }
    let txn = a.mint(trip_mint()).await.info.expect("info").txn;
    let on_b = b.mint(trip_mint()).await.info.expect("info").txn;
    a.revoke_as_operator(revoke_txn(&txn, "done")).await;
    let marker = a.mint(trip_mint()).await.info.expect("info").txn;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = next_within(&mut watch, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("missing events; saw {seen:?}"));
        if !probes.contains(&e.txn) {
            seen.push((e.kind(), e.txn));
        }
    }
    seen.sort();
    let mut want = vec![
        (pb::EventKind::Minted, txn.clone()),
        (pb::EventKind::Minted, on_b),
        (pb::EventKind::Revoked, txn),
        (pb::EventKind::Minted, marker),
    ];
    want.sort();
    // Each exactly once: a duplicate would have taken the place of one of them.
    assert_eq!(seen, want);
}

/// The next event of `watch`, or `None` if none comes within `wait`.
async fn next_within(
    watch: &mut tonic::Streaming<pb::AuditEvent>,
    wait: Duration,
) -> Option<pb::AuditEvent> {
    match tokio::time::timeout(wait, watch.message()).await {
        Ok(Ok(Some(e))) => Some(e),
        Ok(other) => panic!("the watch ended: {other:?}"),
        Err(_) => None,
    }
}
