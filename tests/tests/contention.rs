//! Contention on one transaction over real gRPC: a flood of holder revokes of an already
//! revoked token writes nothing and holds up nobody else's Mint or Validate.

use std::time::Duration;
use writ_e2e::pb::EventKind;
use writ_e2e::*;

const REVOKES: usize = 2_000;
const OTHERS: usize = 40;
/// Connections the revokes are spread over (each well under the server's 256 streams).
const CONNECTIONS: usize = 16;

#[test]
fn repeated_revokes_of_a_revoked_token_write_nothing_and_block_nobody() {
    // A small blocking pool, as a busy server's would be once its threads are taken.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .expect("building the runtime");
    rt.block_on(async {
        let srv = TestServer::start().await;
        let hot = srv.mint(trip_mint()).await;
        let hot_id = token_id(hot.info.as_ref());
        let hot_txn = hot.info.as_ref().expect("info").txn.clone();
        assert_eq!(
            srv.revoke_as_holder("planner", &hot.token, "done").await,
            vec![hot_id.clone()]
        );

        let mut holders = Vec::new();
        for _ in 0..CONNECTIONS {
            holders.push(srv.party("planner").await);
        }
        let revokes: Vec<_> = (0..REVOKES)
            .map(|i| {
                let mut holder = holders[i % CONNECTIONS].clone();
                let req = revoke_token(&hot.token, "again");
                tokio::spawn(async move { holder.revoke(req).await })
            })
            .collect();
        // Meanwhile, other transactions are minted and validated by their audience.
        let (minter, planner) = (srv.minter().await, srv.party("planner").await);
        let others: Vec<_> = (0..OTHERS)
            .map(|_| {
                let (mut minter, mut planner) = (minter.clone(), planner.clone());
                tokio::spawn(async move {
                    let minted = ok(minter.mint(trip_mint()).await, "mint");
                    let txn = minted.info.as_ref().expect("info").txn.clone();
                    let answer = ok(
                        planner.validate(introspect(&minted.token)).await,
                        "validate",
                    );
                    assert_eq!(assert_active(&answer).txn, txn);
                    txn
                })
            })
            .collect();
        let (txns, answers) = tokio::time::timeout(Duration::from_secs(120), async {
            let mut txns = Vec::new();
            for task in others {
                txns.push(task.await.expect("a mint and validate task"));
            }
            let mut answers = Vec::new();
            for task in revokes {
                answers.push(task.await.expect("a revoke task"));
            }
            (txns, answers)
        })
        .await
        .expect("Mint, Validate and the revokes did not all answer within 120 s");

        assert_eq!(txns.len(), OTHERS);
        assert!(txns.iter().all(|t| *t != hot_txn));
        assert_eq!(answers.len(), REVOKES);
        for answer in answers {
            let ids = ok(answer, "repeated revoke").revoked_token_ids;
            assert_eq!(ids, Vec::<String>::new(), "nothing new to revoke");
        }
        // Operators find nothing new either: it exists, so no NOT_FOUND.
        assert_eq!(
            srv.revoke_as_operator(revoke_txn(&hot_txn, "again")).await,
            Vec::<String>::new()
        );
        assert_eq!(
            srv.revoke_as_operator(revoke_token_id(&hot_id, "again"))
                .await,
            Vec::<String>::new()
        );
        let events = srv.events(&hot_txn).await;
        let revoked = events
            .iter()
            .filter(|e| e.kind() == EventKind::Revoked)
            .count();
        assert_eq!(revoked, 1, "one revocation, one event: {events:?}");
        assert_inactive(
            &srv.validate("planner", introspect(&hot.token)).await,
            pb::InactiveReason::Revoked,
        );
    });
}

/// Validators call for one token over and over (from the server's memory, after the first)
/// while its holder revokes it, five times over: every Validate sent after the revocation
/// was answered says revoked, however many were in flight around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validate_sent_after_a_revocation_is_answered_says_revoked() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const VALIDATORS: usize = 6;
    let srv = TestServer::start().await;
    let planner = srv.party("planner").await;
    for round in 0..5 {
        let minted = srv.mint(trip_mint()).await;
        let acked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (before, after) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let validators: Vec<_> = (0..VALIDATORS)
            .map(|_| {
                let (mut planner, token) = (planner.clone(), minted.token.clone());
                let (acked, stop) = (acked.clone(), stop.clone());
                let (before, after) = (before.clone(), after.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Acquire) {
                        let sent_after = acked.load(Ordering::Acquire);
                        let answer = ok(planner.validate(introspect(&token)).await, "validate");
                        if sent_after {
                            assert_inactive(&answer, pb::InactiveReason::Revoked);
                            after.fetch_add(1, Ordering::Relaxed);
                        } else {
                            before.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        while before.load(Ordering::Relaxed) < 50 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let revoked = srv.revoke_as_holder("planner", &minted.token, "done").await;
        assert_eq!(revoked.len(), 1, "round {round}");
        acked.store(true, Ordering::Release);
        while after.load(Ordering::Relaxed) < 50 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::Release);
        for v in validators {
            v.await.expect("a validator");
        }
    }
}
