//! Per-caller limits over real gRPC: a caller over its rate limit is answered
//! RESOURCE_EXHAUSTED with retry information, other callers unaffected; beyond a caller's
//! budget, refused and validated events are stored as one aggregate, not one by one.
// Test code: unwrap is the assertion.
#![allow(clippy::unwrap_used)]
use tonic::Code;
use tonic_types::StatusExt;
use writ_e2e::pb::EventKind;
use writ_e2e::*;
use writ_server::ratelimit::RoleLimit;

#[tokio::test]
async fn a_caller_over_its_limit_is_resource_exhausted_with_retry_info() {
    let srv = TestServer::start_with(|c| {
        c.limits.operator = RoleLimit {
            requests_per_second: 1,
            burst: 3,
        };
    })
    .await;
    let mut op = srv.operator().await;
    let unknown = "tid_00000000000000000000000000000001";
    for _ in 0..3 {
        let e = op.revoke(revoke_token_id(unknown, "x")).await.unwrap_err();
        let writ_client::ClientError::Status(s) = e else {
            panic!("{e}")
        };
        assert_eq!(s.code(), Code::NotFound);
    }
    let e = op.revoke(revoke_token_id(unknown, "x")).await.unwrap_err();
    let writ_client::ClientError::Status(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let retry = s.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() <= std::time::Duration::from_secs(1));
    assert_eq!(s.metadata().get("retry-after").unwrap(), "1");
    assert!(s.message().contains("local-operator"));
    // Other callers are not affected.
    let minted = srv.mint(trip_mint()).await;
    assert!(minted.token.starts_with("writ_"));
}

#[tokio::test]
async fn a_validation_flood_is_stored_as_one_aggregate() {
    let mut srv = TestServer::start_with(|c| {
        c.limits.events.events_per_window = 2;
        c.limits.events.window_seconds = 3600;
    })
    .await;
    let root = srv.mint(trip_mint()).await;
    let txn = root.info.as_ref().unwrap().txn.clone();
    for _ in 0..10 {
        let r = srv.validate("booking", introspect(&root.token)).await;
        assert!(!r.active);
    }
    srv.restart().await;
    let events = srv.events(&txn).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Minted,
            EventKind::Validated,
            EventKind::Validated,
            EventKind::Aggregated
        ]
    );
    let agg = &events[3];
    assert_eq!(
        (agg.count, agg.aggregated_kind(), agg.actor.as_str()),
        (8, EventKind::Validated, "booking")
    );
}
