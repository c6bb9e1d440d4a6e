//! The audit trail and the transaction listing over real gRPC: every event kind recorded
//! in order with who did what, live watching with filters, listing transactions by
//! subject, actor, time window and status with cursor pagination, and operator-only
//! access.

use std::time::Duration;
use tonic::Code;
use writ_e2e::pb::{EventKind, TokenStatus};
use writ_e2e::*;

fn kinds(events: &[pb::AuditEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind()).collect()
}

#[tokio::test]
async fn every_event_kind_is_recorded_in_order() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    let root_id = token_id(root.info.as_ref());
    let booking = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book", "payments:charge"],
                vec![("amount", build::max(400))],
            ),
        )
        .await;
    let booking_id = token_id(booking.info.as_ref());
    // Validated: plain, allowed, denied, and presented to the wrong party.
    assert_active(&srv.validate("booking", introspect(&booking.token)).await);
    assert_allowed(
        &srv.validate(
            "booking",
            check(
                &booking.token,
                "trips:book",
                vec![
                    ("amount", build::int(300)),
                    ("category", build::str("hotel")),
                ],
            ),
        )
        .await,
    );
    assert_denied(
        &srv.validate(
            "booking",
            check(
                &booking.token,
                "trips:book",
                vec![("amount", build::int(900))],
            ),
        )
        .await,
        "amount",
    );
    assert_inactive(
        &srv.validate("payments", introspect(&booking.token)).await,
        pb::InactiveReason::WrongAudience,
    );
    // Refused: booking tries to widen the amount for payments.
    let widened = srv
        .party("booking")
        .await
        .downscope(child(
            &booking.token,
            build::workload("payments"),
            &[],
            &["payments:charge"],
            vec![("amount", build::max(5000))],
        ))
        .await;
    assert_refused(widened, Code::PermissionDenied, &["claims"]);
    // Revoked by an operator, then validated once more.
    srv.revoke_as_operator(revoke_token_id(&booking_id, "agent misbehaved"))
        .await;
    assert_inactive(
        &srv.validate("booking", introspect(&booking.token)).await,
        pb::InactiveReason::Revoked,
    );

    let events = srv.events_in_pages(&txn, 3).await;
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::Minted,
            EventKind::Downscoped,
            EventKind::Validated,
            EventKind::Validated,
            EventKind::Validated,
            EventKind::Validated,
            EventKind::Refused,
            EventKind::Revoked,
            EventKind::Validated,
        ]
    );
    // Ids and times increase; every event names the transaction and the user.
    for pair in events.windows(2) {
        assert!(pair[0].id < pair[1].id, "{} !< {}", pair[0].id, pair[1].id);
        assert!(pair[0].at_unix_ms <= pair[1].at_unix_ms);
    }
    assert!(events.iter().all(|e| e.txn == txn && e.subject == "alice"));

    let minted = &events[0];
    assert_eq!(
        (minted.actor.as_str(), minted.token_id.as_str()),
        (LOCAL_MINTER, root_id.as_str())
    );
    assert_eq!(minted.audience, "planner");
    assert_eq!(
        sorted_strings(&minted.scopes),
        vec!["payments:charge", "trips:book"]
    );

    let derived = &events[1];
    assert_eq!(derived.actor, "planner");
    assert_eq!(derived.token_id, booking_id);
    assert_eq!(derived.parent_token_id, root_id);
    assert_eq!(derived.audience, "booking");
    assert!(
        derived.narrowed.iter().any(|n| n.contains("amount")),
        "{:?}",
        derived.narrowed
    );

    let results: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.kind() == EventKind::Validated)
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.result.as_str()))
        .collect();
    assert_eq!(
        results,
        vec![
            ("booking", "", "active"),
            ("booking", "trips:book", "allowed"),
            ("booking", "trips:book", "denied"),
            ("payments", "", "inactive"),
            ("booking", "", "inactive"),
        ]
    );
    assert!(
        events[4].detail.contains("amount"),
        "{:?}",
        events[4].detail
    );
    assert_eq!(events[5].detail, "wrong_audience");
    assert_eq!(events[8].detail, "revoked");

    let refused = &events[6];
    assert_eq!(refused.actor, "booking");
    assert_eq!(refused.token_id, booking_id);
    assert_eq!(refused.dimension, "claims");
    assert!(refused.detail.contains("amount"), "{:?}", refused.detail);

    let revoked = &events[7];
    assert_eq!(revoked.actor, LOCAL_OPERATOR);
    assert_eq!(revoked.token_id, booking_id);
    assert_eq!(revoked.reason, "agent misbehaved");
    assert_eq!(revoked.revoked, 1);

    // Pages are consistent: page sizes 1, 4 and 100 all see the same trail.
    for page in [1, 4, 100] {
        assert_eq!(srv.events_in_pages(&txn, page).await, events, "page {page}");
    }
    // The trail is durable: a restart keeps it.
    let mut srv = srv;
    srv.restart().await;
    assert_eq!(srv.events_in_pages(&txn, 100).await, events);
}

fn sorted_strings(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn store_refusals_are_recorded_with_their_limit() {
    let srv = TestServer::start_with(|c| c.tokens.max_children = 1).await;
    let root = srv.mint(trip_mint()).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    let req = || {
        child(
            &root.token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        )
    };
    srv.downscope("planner", req()).await;
    let second = srv.party("planner").await.downscope(req()).await;
    assert_refused(second, Code::ResourceExhausted, &["fan_out"]);
    let events = srv.events_in_pages(&txn, 100).await;
    assert_eq!(
        kinds(&events),
        vec![EventKind::Minted, EventKind::Downscoped, EventKind::Refused]
    );
    assert_eq!(events[2].dimension, "fan_out");
}

#[tokio::test]
async fn validations_can_be_left_out_of_the_trail() {
    use writ_server::config::ValidationEvents;
    let srv = TestServer::start_with(|c| c.audit.validations = ValidationEvents::Actions).await;
    let root = srv.mint(trip_mint()).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    assert_active(&srv.validate("planner", introspect(&root.token)).await);
    assert_allowed(
        &srv.validate(
            "planner",
            check(
                &root.token,
                "trips:book",
                vec![("amount", build::int(1)), ("category", build::str("hotel"))],
            ),
        )
        .await,
    );
    let events = srv.events_in_pages(&txn, 100).await;
    assert_eq!(
        kinds(&events),
        vec![EventKind::Minted, EventKind::Validated]
    );
    assert_eq!(events[1].result, "allowed");
}

/// The next event on `stream`, or a panic if none comes within a generous bound (a
/// guard against hanging the suite, not a timing assertion).
async fn next_event(stream: &mut tonic::Streaming<pb::AuditEvent>) -> pb::AuditEvent {
    match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
        Ok(Ok(Some(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn watchers_see_live_events_through_their_filters() {
    let srv = TestServer::start().await;
    let mut op = srv.operator().await;
    let mut bob_lifecycle = ok(
        op.watch_events(pb::WatchEventsRequest {
            subject: "bob".into(),
            kinds: vec![EventKind::Minted.into(), EventKind::Revoked.into()],
            ..Default::default()
        })
        .await,
        "watch",
    );
    let mut everything = ok(
        op.watch_events(pb::WatchEventsRequest::default()).await,
        "watch",
    );
    // Alice's transaction passes only the unfiltered watch.
    let alice = srv.mint(trip_mint()).await;
    let bob = srv
        .mint(pb::MintRequest {
            subject: "bob".into(),
            ..trip_mint()
        })
        .await;
    let bob_txn = bob.info.as_ref().expect("info").txn.clone();
    let derived = srv
        .downscope(
            "planner",
            child(
                &bob.token,
                build::agent("booking"),
                &[],
                &["trips:book"],
                vec![],
            ),
        )
        .await;
    assert_active(&srv.validate("booking", introspect(&derived.token)).await);
    srv.revoke_as_operator(revoke_txn(&bob_txn, "done")).await;

    let first = next_event(&mut bob_lifecycle).await;
    assert_eq!(
        (first.kind(), first.txn.as_str()),
        (EventKind::Minted, bob_txn.as_str())
    );
    let second = next_event(&mut bob_lifecycle).await;
    assert_eq!(
        (second.kind(), second.reason.as_str()),
        (EventKind::Revoked, "done")
    );

    // The feed is in roughly, not strictly, id order (queued validations are announced
    // when their batch is written): compare in id order.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = next_event(&mut everything).await;
        seen.push((e.id.clone(), e.kind(), e.subject.clone()));
    }
    seen.sort();
    let seen: Vec<(EventKind, String)> = seen.into_iter().map(|(_, k, s)| (k, s)).collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Minted, "alice".to_string()),
            (EventKind::Minted, "bob".to_string()),
            (EventKind::Downscoped, "bob".to_string()),
            (EventKind::Validated, "bob".to_string()),
            (EventKind::Revoked, "bob".to_string()),
        ]
    );
    drop(alice);

    // A watch for one transaction, by id.
    let mut one = ok(
        op.watch_events(pb::WatchEventsRequest {
            txn: bob_txn.clone(),
            ..Default::default()
        })
        .await,
        "watch",
    );
    srv.mint(trip_mint()).await;
    assert_inactive(
        &srv.validate("booking", introspect(&derived.token)).await,
        pb::InactiveReason::Revoked,
    );
    let e = next_event(&mut one).await;
    assert_eq!(
        (e.kind(), e.txn.as_str()),
        (EventKind::Validated, bob_txn.as_str())
    );
}

#[tokio::test]
async fn shutdown_ends_open_watches_even_one_that_stopped_reading() {
    let mut srv = TestServer::start().await;
    let mut idle = ok(
        srv.operator()
            .await
            .watch_events(pb::WatchEventsRequest::default())
            .await,
        "watch",
    );
    // This one never reads: more events than its buffers hold back the server's sends.
    let stuck = ok(
        srv.operator()
            .await
            .watch_events(pb::WatchEventsRequest::default())
            .await,
        "watch",
    );
    let root = srv.mint(trip_mint()).await;
    let mut planner = srv.party("planner").await;
    for _ in 0..1500 {
        ok(planner.validate(introspect(&root.token)).await, "validate");
    }
    // Graceful shutdown must not wait forever on either stream.
    tokio::time::timeout(Duration::from_secs(60), srv.stop())
        .await
        .expect("shutdown completed with watchers connected");
    // The idle watcher is told why its stream ended (after the events it was sent).
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match idle.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended");
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {} // the connection closed before the status arrived
        Ok(Some(_)) => unreachable!(),
    }
    drop(stuck);
}

#[tokio::test]
async fn only_operators_read_the_trail_and_bad_requests_name_their_field() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    let req = || pb::ListEventsRequest {
        txn: txn.clone(),
        ..Default::default()
    };
    assert_refused(
        srv.party("planner").await.list_events(req()).await,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_refused(
        srv.anonymous().await.list_events(req()).await,
        Code::Unauthenticated,
        &["operator"],
    );
    assert_refused(
        srv.minter()
            .await
            .list_transactions(Default::default())
            .await,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_refused(
        srv.party("planner")
            .await
            .watch_events(Default::default())
            .await,
        Code::PermissionDenied,
        &["operator"],
    );
    let mut op = srv.operator().await;
    for (bad, field) in [
        (
            pb::ListEventsRequest {
                txn: "txn_nope".into(),
                ..Default::default()
            },
            "txn",
        ),
        (
            pb::ListEventsRequest {
                after: "evt_x".into(),
                ..req()
            },
            "after",
        ),
        (
            pb::ListEventsRequest {
                page_size: 5000,
                ..req()
            },
            "page_size",
        ),
    ] {
        assert_refused(op.list_events(bad).await, Code::InvalidArgument, &[field]);
    }
    for (bad, field) in [
        (
            pb::ListTransactionsRequest {
                cursor: "tid_00".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            pb::ListTransactionsRequest {
                subject: "has space".into(),
                ..Default::default()
            },
            "subject",
        ),
        (
            pb::ListTransactionsRequest {
                since_unix_ms: 10,
                until_unix_ms: 5,
                ..Default::default()
            },
            "until_unix_ms",
        ),
        (
            // Microseconds by mistake: beyond the 48 bits a transaction id holds.
            pb::ListTransactionsRequest {
                since_unix_ms: 1_700_000_000_000_000,
                ..Default::default()
            },
            "since_unix_ms",
        ),
        (
            pb::ListTransactionsRequest {
                status: 99,
                ..Default::default()
            },
            "status",
        ),
    ] {
        assert_refused(
            op.list_transactions(bad).await,
            Code::InvalidArgument,
            &[field],
        );
    }
    assert_refused(
        op.watch_events(pb::WatchEventsRequest {
            kinds: vec![42],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["kinds[0]"],
    );
    // An unknown transaction has an empty trail, not an error.
    let unknown = ok(
        op.list_events(pb::ListEventsRequest {
            txn: format!("txn_{}", "0".repeat(32)),
            ..Default::default()
        })
        .await,
        "list_events",
    );
    assert!(unknown.events.is_empty() && unknown.next_cursor.is_empty());
}

#[tokio::test]
async fn transactions_list_newest_first_with_filters_and_pages() {
    let srv = TestServer::start().await;
    // Six transactions: carol, dave, carol, dave, carol, dave (oldest first).
    let mut minted = Vec::new();
    for i in 0..6 {
        let subject = if i % 2 == 0 { "carol" } else { "dave" };
        let r = srv
            .mint(pb::MintRequest {
                subject: subject.into(),
                ..trip_mint()
            })
            .await;
        minted.push(r);
    }
    let txn = |i: usize| minted[i].info.as_ref().expect("info").txn.clone();
    // Transaction 2 reaches the auditor agent; transaction 3 is revoked.
    srv.downscope(
        "planner",
        child(
            &minted[2].token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ),
    )
    .await;
    srv.revoke_as_operator(revoke_txn(&txn(3), "suspicious"))
        .await;

    let mut op = srv.operator().await;
    let mut list = async |req: pb::ListTransactionsRequest| {
        let r = ok(op.list_transactions(req).await, "list_transactions");
        let txns: Vec<String> = r.transactions.iter().map(|t| t.txn.clone()).collect();
        (txns, r.next_cursor, r.transactions)
    };
    let (all, _, summaries) = list(Default::default()).await;
    // Newest first is descending id order (ids begin with the mint millisecond; mints in
    // the same millisecond order by their random part).
    let newest_first = |is: &[usize]| {
        let mut v: Vec<String> = is.iter().map(|&i| txn(i)).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    };
    assert_eq!(all, newest_first(&[0, 1, 2, 3, 4, 5]));
    let first = summaries
        .iter()
        .find(|t| t.txn == txn(0))
        .expect("the first transaction is listed");
    assert_eq!(first.subject, "carol");
    assert_eq!(first.minted_by, LOCAL_MINTER);
    assert_eq!(first.audience.as_ref().expect("audience").id, "planner");
    assert_eq!(first.root_token_id, token_id(minted[0].info.as_ref()));
    assert_eq!(first.status(), TokenStatus::Active);

    let by_subject = list(pb::ListTransactionsRequest {
        subject: "carol".into(),
        ..Default::default()
    })
    .await
    .0;
    assert_eq!(by_subject, newest_first(&[0, 2, 4]));
    let by_actor = list(pb::ListTransactionsRequest {
        actor: "booking".into(),
        ..Default::default()
    })
    .await
    .0;
    assert_eq!(by_actor, vec![txn(2)]);
    let revoked = list(pb::ListTransactionsRequest {
        status: TokenStatus::Revoked.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(revoked.0, vec![txn(3)]);
    assert_eq!(revoked.2[0].status(), TokenStatus::Revoked);
    let active_dave = list(pb::ListTransactionsRequest {
        subject: "dave".into(),
        status: TokenStatus::Active.into(),
        ..Default::default()
    })
    .await
    .0;
    assert_eq!(active_dave, newest_first(&[1, 5]));
    // A time window [since, until): transaction ids carry their mint millisecond.
    let issued = |i: usize| minted[i].info.as_ref().expect("info").issued_at_unix_ms;
    let (since, until) = (issued(2), issued(4) + 1);
    let window = list(pb::ListTransactionsRequest {
        since_unix_ms: since,
        until_unix_ms: until,
        ..Default::default()
    })
    .await
    .0;
    let inside: Vec<usize> = (0..6)
        .filter(|&i| issued(i) >= since && issued(i) < until)
        .collect();
    let expected = newest_first(&inside);
    assert_eq!(window, expected);
    assert!(window.contains(&txn(2)) && window.contains(&txn(4)));
    // Pages of two, following the cursor, see every transaction once, newest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (txns, next, _) = list(pb::ListTransactionsRequest {
            page_size: 2,
            cursor: cursor.clone(),
            ..Default::default()
        })
        .await;
        assert!(txns.len() <= 2);
        seen.extend(txns);
        if next.is_empty() {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn open_watches_are_bounded_and_released() {
    let srv = TestServer::start().await;
    let mut op = srv.operator().await;
    let mut open = Vec::new();
    // One operator reaches its own cap first (the server-wide one: tests/hardening.rs).
    for _ in 0..writ_server::chain::MAX_WATCHERS_PER_OPERATOR {
        open.push(ok(op.watch_events(Default::default()).await, "watch"));
    }
    assert_refused(
        op.watch_events(Default::default()).await,
        Code::ResourceExhausted,
        &["watches"],
    );
    // Closing one frees its place once the server notices (bounded wait, no timing
    // assertion: the loop only guards against hanging).
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..300 {
        if let Ok(s) = op.watch_events(Default::default()).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "a closed watch never gave its place back"
    );
}

#[tokio::test]
async fn with_validations_off_only_the_token_changes_are_recorded() {
    use writ_server::config::ValidationEvents;
    let srv = TestServer::start_with(|c| c.audit.validations = ValidationEvents::None).await;
    let root = srv
        .mint(pb::MintRequest {
            max_uses: 2,
            ..trip_mint()
        })
        .await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    assert_active(&srv.validate("planner", introspect(&root.token)).await);
    // Even a validation that spends a use is not recorded (the use itself is).
    assert_allowed(
        &srv.validate(
            "planner",
            check(
                &root.token,
                "trips:book",
                vec![("amount", build::int(1)), ("category", build::str("hotel"))],
            ),
        )
        .await,
    );
    srv.revoke_as_operator(revoke_txn(&txn, "done")).await;
    let events = srv.events_in_pages(&txn, 100).await;
    assert_eq!(kinds(&events), vec![EventKind::Minted, EventKind::Revoked]);
}
