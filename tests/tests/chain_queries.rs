//! Operators' chain queries over real gRPC: a transaction's whole tree with each node's
//! status and what it narrowed, and one token with its ancestry.

use tonic::Code;
use writ_e2e::pb::TokenStatus;
use writ_e2e::*;

/// root(planner) → booking, root → search, booking → payments; then booking is revoked.
async fn branching_tree(srv: &TestServer) -> (pb::MintResponse, Vec<pb::DownscopeResponse>) {
    let root = srv
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "payments", "search"],
            &["trips:book", "payments:charge", "search:query"],
            vec![("amount", build::max(1000))],
        ))
        .await;
    let booking = srv
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
    let search = srv
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
    let payments = srv
        .downscope(
            "booking",
            child(
                &booking.token,
                build::workload("payments"),
                &[],
                &["payments:charge"],
                vec![],
            ),
        )
        .await;
    let ids = srv
        .revoke_as_operator(revoke_token_id(
            &token_id(booking.info.as_ref()),
            "compromised",
        ))
        .await;
    assert_eq!(ids.len(), 2);
    (root, vec![booking, search, payments])
}

fn status(n: &pb::TokenNode) -> TokenStatus {
    TokenStatus::try_from(n.status).expect("known status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_reads_as_a_tree_with_status_and_narrowing() {
    let srv = TestServer::start().await;
    let (root, hops) = branching_tree(&srv).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    let tree = srv
        .operator()
        .await
        .get_transaction(&txn)
        .await
        .expect("tree");
    assert_eq!(tree.txn, txn);
    assert_eq!(tree.subject, "alice");
    assert!(!tree.truncated);
    let ids: Vec<String> = tree
        .tokens
        .iter()
        .map(|n| token_id(n.info.as_ref()))
        .collect();
    let [booking, search, payments] = [0, 1, 2].map(|i| token_id(hops[i].info.as_ref()));
    // Depth-first, parents before children, siblings in issue order.
    assert_eq!(
        ids,
        vec![
            token_id(root.info.as_ref()),
            booking.clone(),
            payments,
            search
        ]
    );
    let statuses: Vec<TokenStatus> = tree.tokens.iter().map(status).collect();
    assert_eq!(
        statuses,
        vec![
            TokenStatus::Active,
            TokenStatus::Revoked,
            TokenStatus::Revoked,
            TokenStatus::Active
        ]
    );
    let b = &tree.tokens[1];
    assert_eq!(
        b.narrowed,
        vec![
            "scopes dropped: search:query".to_string(),
            "targets dropped: booking search".to_string(),
            "claim amount: max 1000 -> max 500".to_string(),
        ]
    );
    let rev = b.revocation.as_ref().expect("revocation");
    assert_eq!(
        (rev.by.as_str(), rev.reason.as_str()),
        ("local-operator", "compromised")
    );
    assert_eq!(rev.cause_token_id, booking);
    let p = tree.tokens[2].revocation.as_ref().expect("revocation");
    assert_eq!(
        p.cause_token_id, booking,
        "the descendant names the revoked ancestor"
    );
    assert!(
        tree.tokens[0].narrowed.is_empty(),
        "the root narrows nothing"
    );
    assert_eq!(tree.tokens[0].children, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_with_its_ancestry() {
    let srv = TestServer::start().await;
    let (root, hops) = branching_tree(&srv).await;
    let payments = token_id(hops[2].info.as_ref());
    let r = srv
        .operator()
        .await
        .get_token(&payments)
        .await
        .expect("token");
    let node = r.token.expect("node");
    assert_eq!(token_id(node.info.as_ref()), payments);
    assert_eq!(status(&node), TokenStatus::Revoked);
    let ancestors: Vec<String> = r
        .ancestors
        .iter()
        .map(|n| token_id(n.info.as_ref()))
        .collect();
    assert_eq!(
        ancestors,
        vec![
            token_id(root.info.as_ref()),
            token_id(hops[0].info.as_ref())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_queries_are_for_operators_and_name_what_is_missing() {
    let srv = TestServer::start().await;
    let (root, _) = branching_tree(&srv).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    let r = srv.anonymous().await.get_transaction(&txn).await;
    assert_refused(r, Code::Unauthenticated, &["operator"]);
    let r = srv.party("planner").await.get_transaction(&txn).await;
    assert_refused(r, Code::PermissionDenied, &["operator"]);
    let r = srv
        .minter()
        .await
        .get_token(&token_id(root.info.as_ref()))
        .await;
    assert_refused(r, Code::PermissionDenied, &["operator"]);
    let r = srv
        .operator()
        .await
        .get_transaction("txn_00000000000000000000000000000000")
        .await;
    assert_refused(r, Code::NotFound, &["txn"]);
    let r = srv
        .operator()
        .await
        .get_token("tid_00000000000000000000000000000000")
        .await;
    assert_refused(r, Code::NotFound, &["token_id"]);
    let r = srv.operator().await.get_transaction("nonsense").await;
    assert_refused(r, Code::InvalidArgument, &["txn"]);
}
