//! Hardening over real gRPC: identity headers sent more than once are refused rather than
//! resolved by picking one (a proxy that appends its own value after a client's must not
//! be bypassable).

use tonic::Code;
use writ_e2e::pb::token_service_client::TokenServiceClient;
use writ_e2e::*;

/// A request carrying `values` of `header`.
fn with_header<T>(msg: T, header: &'static str, values: &[&str]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for v in values {
        req.metadata_mut()
            .append(header, v.parse().expect("a valid metadata value"));
    }
    req
}

/// Finding 3: the first value of a duplicated header used to win.
#[tokio::test]
async fn a_duplicated_identity_header_is_refused_naming_it() {
    let srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    let mut raw = TokenServiceClient::connect(srv.url())
        .await
        .expect("connecting");

    // Two asserted callers, the holder's first.
    let req = with_header(
        introspect(&root.token),
        "x-writ-caller",
        &["planner", "booking"],
    );
    let status = raw.validate(req).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("x-writ-caller"), "{status:?}");

    // The same for Downscope.
    let req = with_header(
        child(
            &root.token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ),
        "x-writ-caller",
        &["planner", "planner"],
    );
    let status = raw.downscope(req).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("x-writ-caller"), "{status:?}");

    // Two credentials, even the same valid one twice.
    let bearer = format!("Bearer {}", srv.credential());
    let req = with_header(trip_mint(), "authorization", &[&bearer, &bearer]);
    let status = raw.mint(req).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("authorization"), "{status:?}");

    // One value of each is still fine.
    let req = with_header(introspect(&root.token), "x-writ-caller", &["planner"]);
    let answer = raw.validate(req).await.expect("validated").into_inner();
    assert_active(&answer);
    let req = with_header(trip_mint(), "authorization", &[&bearer]);
    raw.mint(req).await.expect("minted");
}
