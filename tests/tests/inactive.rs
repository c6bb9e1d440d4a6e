//! Tokens that are not active are an answer, not an error, and the answer says only why.

use tonic::Code;
use writ_e2e::pb::InactiveReason;
use writ_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_inactive() {
    let srv = TestServer::start().await;
    let short = srv
        .mint(pb::MintRequest {
            ttl_seconds: 1,
            ..trip_mint()
        })
        .await
        .token;
    let long = srv.mint(trip_mint()).await.token;
    // A child with a one-second lifetime under a long-lived parent.
    let child_short = srv
        .downscope(
            "planner",
            pb::DownscopeRequest {
                ttl_seconds: 1,
                ..child(&long, build::agent("booking"), &[], &["trips:book"], vec![])
            },
        )
        .await
        .token;
    assert_active(&srv.validate("planner", introspect(&short)).await);
    assert_active(&srv.validate("booking", introspect(&child_short)).await);

    sleep_past_one_second_ttl().await;

    assert_inactive(
        &srv.validate("planner", introspect(&short)).await,
        InactiveReason::Expired,
    );
    assert_inactive(
        &srv.validate(
            "planner",
            check(&short, "trips:book", vec![("amount", build::int(1))]),
        )
        .await,
        InactiveReason::Expired,
    );
    assert_inactive(
        &srv.validate("booking", introspect(&child_short)).await,
        InactiveReason::Expired,
    );
    assert_active(&srv.validate("planner", introspect(&long)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_truncated_tokens_are_malformed() {
    let srv = TestServer::start().await;
    let token = srv.mint(trip_mint()).await.token;
    let forged = flip_middle(&token);
    assert_eq!(forged.len(), token.len());
    assert!(forged.starts_with("writ_"));

    let cases = [
        forged,
        token[..token.len() - 1].to_string(),
        token[..token.len() / 2].to_string(),
        format!("{token}A"),
        token.replacen("writ_", "wrat_", 1),
        token.to_uppercase(),
        "writ_".to_string(),
        "garbage".to_string(),
        String::new(),
    ];
    for t in &cases {
        assert_inactive(
            &srv.validate("planner", introspect(t)).await,
            InactiveReason::Malformed,
        );
    }
    // The genuine token is unaffected.
    assert_active(&srv.validate("planner", introspect(&token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_another_server_are_malformed_or_unknown() {
    let a = TestServer::start().await;
    let a_token = a.mint(trip_mint()).await.token;

    // A server with its own key: its tokens fail A's integrity check, and vice versa.
    let b = TestServer::start().await;
    let b_token = b.mint(trip_mint()).await.token;
    assert_active(&b.validate("planner", introspect(&b_token)).await);
    assert_inactive(
        &a.validate("planner", introspect(&b_token)).await,
        InactiveReason::Malformed,
    );
    assert_inactive(
        &b.validate("planner", introspect(&a_token)).await,
        InactiveReason::Malformed,
    );

    // A server sharing A's key but not its records: its tokens verify on A and are unknown there.
    let c = TestServer::start_with_keys_of(&a).await;
    assert_ne!(
        c.credential(),
        a.credential(),
        "each data directory has its own minter credential"
    );
    let c_token = c.mint(trip_mint()).await.token;
    assert_active(&c.validate("planner", introspect(&c_token)).await);
    assert_inactive(
        &a.validate("planner", introspect(&c_token)).await,
        InactiveReason::Unknown,
    );
    assert_inactive(
        &c.validate("planner", introspect(&a_token)).await,
        InactiveReason::Unknown,
    );
    // Unknown is decided before the audience: a stranger learns nothing more.
    assert_inactive(
        &a.validate("booking", introspect(&c_token)).await,
        InactiveReason::Unknown,
    );
    // An unknown parent cannot be downscoped either.
    let r = a
        .party("planner")
        .await
        .downscope(child(
            &c_token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(r, Code::Unauthenticated, &["parent_token"]);
    // A's own token is still fine on A.
    assert_active(&a.validate("planner", introspect(&a_token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_says_nothing_more() {
    let srv = TestServer::start().await;
    let token = srv.mint(trip_mint()).await.token;
    let r = srv
        .validate(
            "booking",
            check(
                &token,
                "trips:book",
                vec![
                    ("amount", build::int(1)),
                    ("category", build::str("travel")),
                ],
            ),
        )
        .await;
    assert_inactive(&r, InactiveReason::WrongAudience);
}
