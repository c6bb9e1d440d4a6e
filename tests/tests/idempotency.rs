//! Idempotent hops: a Mint or Downscope retried under the same key (after a lost answer or
//! a deadline) returns the same token, secret included, and spends nothing a second time.

use tonic::Code;
use writ_e2e::*;

fn keyed(req: pb::DownscopeRequest, key: &str) -> pb::DownscopeRequest {
    pb::DownscopeRequest {
        idempotency_key: key.into(),
        ..req
    }
}

async fn node(s: &TestServer, id: &str) -> pb::TokenNode {
    ok(s.operator().await.get_token(id).await, "get_token")
        .token
        .expect("the token")
}

#[tokio::test]
async fn a_retried_downscope_returns_the_same_child_and_spends_no_second_use_or_slot() {
    let s = TestServer::start_with(|c| c.tokens.max_children = 2).await;
    let root = s
        .mint(pb::MintRequest {
            max_uses: 2,
            ..trip_mint()
        })
        .await;
    let root_id = token_id(root.info.as_ref());
    let req = keyed(
        pb::DownscopeRequest {
            max_uses: 1,
            ..child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book"],
                vec![],
            )
        },
        "8d2c4f0a-hop-one",
    );
    let first = s.downscope("planner", req.clone()).await;
    for _ in 0..3 {
        let again = s.downscope("planner", req.clone()).await;
        assert_eq!(again.token, first.token, "the same secret, re-derived");
        assert_eq!(again.info, first.info, "the same record");
    }
    let parent = node(&s, &root_id).await;
    assert_eq!(
        (parent.children, parent.uses),
        (1, 1),
        "one slot, one use reserved"
    );
    // The child works, and a new key is a new child (the second slot, the second use).
    assert_active(&s.validate("booking", introspect(&first.token)).await);
    let second = s
        .downscope("planner", keyed(req.clone(), "8d2c4f0a-hop-two"))
        .await;
    assert_ne!(second.token, first.token);
    let parent = node(&s, &root_id).await;
    assert_eq!((parent.children, parent.uses), (2, 2));
    // The trail holds one downscoped event per child, not per call.
    let txn = root.info.as_ref().expect("info").txn.clone();
    let events = s.events(&txn).await;
    let downscoped = events
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Downscoped)
        .count();
    assert_eq!(downscoped, 2);
}

#[tokio::test]
async fn the_same_key_with_another_request_or_caller_or_parent_is_not_a_retry() {
    let s = TestServer::start().await;
    let root = s.mint(trip_mint()).await.token;
    let req = keyed(
        child(
            &root,
            build::agent("booking"),
            &["payments"],
            &["trips:book"],
            vec![],
        ),
        "3b7e1c9d-0a5f-4e2b",
    );
    let first = s.downscope("planner", req.clone()).await;
    let other = pb::DownscopeRequest {
        scopes: strings(&["payments:charge"]),
        ..req.clone()
    };
    assert_refused(
        s.party("planner").await.downscope(other).await,
        Code::InvalidArgument,
        &["idempotency_key"],
    );
    // Another caller under the same key meets the holder rule, not the stored child.
    assert_refused(
        s.party("mallory").await.downscope(req.clone()).await,
        Code::PermissionDenied,
        &["holder"],
    );
    // The same key under another parent is another child.
    let root2 = s.mint(trip_mint()).await.token;
    let under2 = s
        .downscope(
            "planner",
            pb::DownscopeRequest {
                parent_token: root2,
                ..req
            },
        )
        .await;
    assert_ne!(under2.token, first.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_all_get_the_one_child() {
    let s = TestServer::start().await;
    let root = s.mint(trip_mint()).await;
    let req = keyed(
        child(
            &root.token,
            build::agent("booking"),
            &["payments"],
            &["trips:book"],
            vec![],
        ),
        "race-5e0b8c1f2d3a",
    );
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = s.party("planner").await;
        let req = req.clone();
        tasks.push(tokio::spawn(async move { c.downscope(req).await }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(ok(t.await.expect("task"), "downscope").token);
    }
    assert_eq!(tokens.len(), 1, "every racing retry got the same child");
    let parent = node(&s, &token_id(root.info.as_ref())).await;
    assert_eq!(parent.children, 1);
}

#[tokio::test]
async fn a_retried_mint_returns_the_same_transaction_even_after_a_restart() {
    let mut s = TestServer::start().await;
    let req = pb::MintRequest {
        idempotency_key: "checkout-42-6a1f9e3b".into(),
        ..trip_mint()
    };
    let first = s.mint(req.clone()).await;
    s.restart().await;
    let again = s.mint(req.clone()).await;
    assert_eq!(again.token, first.token);
    assert_eq!(again.info, first.info);
    let changed = pb::MintRequest {
        subject: "bob".into(),
        ..req.clone()
    };
    assert_refused(
        s.minter().await.mint(changed).await,
        Code::InvalidArgument,
        &["idempotency_key"],
    );
    // Without a key, every Mint is a new transaction.
    let a = s.mint(trip_mint()).await;
    let b = s.mint(trip_mint()).await;
    assert_ne!(a.token, b.token);
}

#[tokio::test]
async fn a_key_used_again_after_the_window_is_a_new_request_never_the_old_token() {
    let s = TestServer::start_with(|c| c.tokens.idempotency_window_seconds = 1).await;
    let req = pb::MintRequest {
        idempotency_key: "checkout-2026-12-02-7f3a".into(),
        ..trip_mint()
    };
    let first = s.mint(req.clone()).await;
    // Two windows later the key is no longer a retry: a new transaction, whose token is
    // not the first one's string (which a thief may have kept, or an operator revoked).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    s.revoke_as_holder("planner", &first.token, "done").await;
    let again = s.mint(req).await;
    assert_ne!(again.token, first.token);
    assert_ne!(
        again.info.as_ref().expect("info").txn,
        first.info.as_ref().expect("info").txn
    );
    assert_active(&s.validate("planner", introspect(&again.token)).await);
    assert_inactive(
        &s.validate("planner", introspect(&first.token)).await,
        pb::InactiveReason::Revoked,
    );
}
