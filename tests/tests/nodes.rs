//! Several Writ nodes on one Redis Cluster (issue 14): what one node does, the others see
//! at once, and a party disabled through one is refused by all.

use std::time::Duration;
use writ_e2e::*;

use pb::InactiveReason;

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
