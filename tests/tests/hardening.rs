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
    let mut raw = TokenServiceClient::new(srv.channel().await);

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

    // Two client assertions: refused before either is read.
    let req = with_header(
        introspect(&root.token),
        "writ-client-assertion",
        &["a.b.c", "a.b.c"],
    );
    let status = raw.validate(req).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("writ-client-assertion: sent more than once"),
        "{status:?}"
    );

    // One value of each is still fine.
    let req = with_header(introspect(&root.token), "x-writ-caller", &["planner"]);
    let answer = raw.validate(req).await.expect("validated").into_inner();
    assert_active(&answer);
    let req = with_header(trip_mint(), "authorization", &[&bearer]);
    raw.mint(req).await.expect("minted");
}

/// Finding 12: one operator holds at most MAX_WATCHERS_PER_OPERATOR live watches, and the
/// server-wide MAX_WATCHERS still holds across operators.
#[tokio::test]
async fn watches_are_capped_per_operator_and_per_server() {
    use writ_server::chain::{MAX_WATCHERS, MAX_WATCHERS_PER_OPERATOR};
    use writ_server::config::CredentialConfig;

    let operators = MAX_WATCHERS / MAX_WATCHERS_PER_OPERATOR + 1;
    let creds: Vec<String> = (1..=operators).map(|i| format!("woc_{i:064x}")).collect();
    let configured = creds
        .iter()
        .enumerate()
        .map(|(i, c)| CredentialConfig {
            id: format!("ops{i}"),
            credential_blake3: writ_server::secrets::credential_hex(c),
        })
        .collect();
    let srv = TestServer::start_with(|c| c.operators = configured).await;
    let mut clients = Vec::new();
    for c in &creds {
        let client = srv.anonymous().await;
        clients.push(client.with_operator_credential(c).expect("metadata"));
    }
    let mut open: Vec<Vec<_>> = Vec::new();
    for (i, client) in clients.iter_mut().take(operators - 1).enumerate() {
        let mut mine = Vec::new();
        for _ in 0..MAX_WATCHERS_PER_OPERATOR {
            mine.push(ok(client.watch_events(Default::default()).await, "watch"));
        }
        open.push(mine);
        if i == 0 {
            // The server has room; this operator has not.
            assert_refused(
                client.watch_events(Default::default()).await,
                Code::ResourceExhausted,
                &["\"ops0\"", "watches"],
            );
        }
    }
    let last = operators - 1;
    assert_refused(
        clients[last].watch_events(Default::default()).await,
        Code::ResourceExhausted,
        &["watches are already open on this server"],
    );
    // A closed watch gives its place back once the server notices (bounded wait; the
    // loop only guards against hanging).
    drop(open[1].pop());
    let mut reopened = None;
    for _ in 0..300 {
        if let Ok(s) = clients[last].watch_events(Default::default()).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "a closed watch never gave its place back"
    );
}
