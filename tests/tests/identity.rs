//! Proven identities, end to end over real TLS: who may connect (client certificates of
//! the trust domain's CA, valid and of this trust domain), JWT-SVID client assertions,
//! holder binding against the *authenticated* identity (a stolen token is useless to
//! another party, and the attempt is audited), asserted identities refused outside
//! development mode, how each actor authenticated in Validate and the audit trail, and
//! rotation of the server's certificate and trust bundle without a restart.
// Test code: unwrap is the assertion, and certificates are dated from the wall clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, SystemTime};
use tonic::Code;
use writ_client::build;
use writ_e2e::*;
use writ_server::pki::Ca;
use writ_server::tls::SpiffeId;

/// A root for `audience` that may reach `targets`.
fn mint_to(audience: &str, targets: &[&str]) -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent(audience),
        targets,
        &["trips:book", "payments:charge"],
        vec![("amount", build::max(1000))],
    )
}

/// The development CA of `srv`, to sign certificates the harness does not make.
fn dev_ca(srv: &TestServer) -> Ca {
    let read = |f: &str| std::fs::read_to_string(srv.data_dir().join("tls").join(f)).unwrap();
    Ca::from_pem(&read("ca.pem"), &read("ca-key.pem")).unwrap()
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_certificates_of_this_trust_domain_connect() {
    let srv = TestServer::start_proven().await;
    let planner = srv.spiffe("agent/planner");
    let root = srv.mint(mint_to(&planner, &[])).await.token;

    // The right certificate: it validates its own token, proven by mTLS.
    let mut c = srv.svid_client("agent/planner").await;
    let info = assert_active(&ok(c.validate(introspect(&root)).await, "validate"));
    assert_eq!(info.audience.unwrap().id, planner);

    // No certificate: connected, but nobody.
    let mut anon = srv.connect_with(None).await.unwrap();
    assert_refused(
        anon.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["identity"],
    );

    let now = SystemTime::now();
    let id = SpiffeId::parse(&planner).unwrap();
    let refused = |what: &str, pem: writ_server::pki::IssuedPem| {
        let srv = &srv;
        let what = what.to_owned();
        let root = root.clone();
        async move {
            // The handshake fails (connect), or at the latest the first call does.
            match srv.connect_with(Some((pem.cert_pem, pem.key_pem))).await {
                Err(_) => {}
                Ok(mut c) => {
                    let r = c.validate(introspect(&root)).await;
                    assert!(r.is_err(), "{what}: a call succeeded: {r:?}");
                }
            }
        }
    };
    // Expired.
    let expired = dev_ca(&srv)
        .issue_svid(&id, now - hours(48), now - hours(24))
        .unwrap();
    refused("an expired certificate", expired).await;
    // From another CA, naming the same identity.
    let other = Ca::generate("other", "writ.local", now - hours(1), now + hours(24)).unwrap();
    refused(
        "another CA",
        other
            .issue_svid(&id, now - hours(1), now + hours(1))
            .unwrap(),
    )
    .await;
    // Signed by the right CA, for another trust domain.
    let foreign = SpiffeId::parse("spiffe://evil.example/agent/planner").unwrap();
    refused(
        "another trust domain",
        dev_ca(&srv)
            .issue_svid(&foreign, now - hours(1), now + hours(1))
            .unwrap(),
    )
    .await;

    // The server still serves the right certificate afterwards.
    ok(
        c.validate(introspect(&root)).await,
        "validate after refusals",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_token_is_useless_to_another_authenticated_party_and_audited() {
    let srv = TestServer::start_proven().await;
    let (planner, booking, payments) = (
        srv.spiffe("agent/planner"),
        srv.spiffe("agent/booking"),
        srv.spiffe("workload/payments"),
    );
    let root = srv.mint(mint_to(&planner, &[&booking, &payments])).await;
    let mut as_planner = srv.svid_client("agent/planner").await;
    let derived = ok(
        as_planner
            .downscope(child(
                &root.token,
                build::agent(&booking),
                &[&payments],
                &["payments:charge"],
                vec![],
            ))
            .await,
        "the holder downscopes",
    );
    let info = derived.info.unwrap();
    assert_eq!(info.actor_auth, pb::AuthMethod::Mtls as i32);
    assert_eq!(act_ids(&info)[0], planner);

    // The payments workload steals booking's token.
    let mut thief = srv.svid_client("workload/payments").await;
    assert_refused(
        thief
            .downscope(child(
                &derived.token,
                build::workload(&payments),
                &[],
                &["payments:charge"],
                vec![],
            ))
            .await,
        Code::PermissionDenied,
        &["holder"],
    );
    assert_inactive(
        &ok(thief.validate(introspect(&derived.token)).await, "validate"),
        pb::InactiveReason::WrongAudience,
    );
    assert_refused(
        thief.revoke(revoke_token(&derived.token, "mine now")).await,
        Code::Unauthenticated,
        &["token"],
    );
    // The rightful holder still holds it.
    let mut as_booking = srv.svid_client("agent/booking").await;
    let held = assert_active(&ok(
        as_booking.validate(introspect(&derived.token)).await,
        "the holder validates",
    ));
    assert_eq!(held.actor_auth, pb::AuthMethod::Mtls as i32);

    // The trail names the thief, proven by mTLS.
    let events = srv.events(&info.txn).await;
    let refused = events
        .iter()
        .find(|e| e.kind == pb::EventKind::Refused as i32)
        .expect("the stolen downscope is audited");
    assert_eq!(refused.actor, payments);
    assert_eq!(refused.dimension, "holder");
    assert_eq!(refused.actor_auth, pb::AuthMethod::Mtls as i32);
    let validated = events
        .iter()
        .find(|e| e.kind == pb::EventKind::Validated as i32 && e.actor == payments)
        .expect("the stolen validation is audited");
    assert_eq!(validated.detail, "wrong_audience");
    let minted = &events[0];
    assert_eq!(minted.actor_auth, pb::AuthMethod::Bearer as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asserted_identities_are_refused_unless_in_development_mode() {
    let srv = TestServer::start_proven().await;
    let planner = srv.spiffe("agent/planner");
    let root = srv.mint(mint_to(&planner, &[])).await.token;
    // Claiming the holder's identity in x-writ-caller gets nothing.
    let mut liar = srv
        .connect_with(None)
        .await
        .unwrap()
        .as_caller(&planner)
        .unwrap();
    assert_refused(
        liar.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["x-writ-caller", "development mode"],
    );
    // Not even beside a real certificate.
    let mut both = srv
        .svid_client("agent/planner")
        .await
        .as_caller(&planner)
        .unwrap();
    assert_refused(
        both.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["x-writ-caller"],
    );

    // In development mode the assertion is accepted, and the evidence says so.
    let dev = TestServer::start().await;
    let root = dev.mint(mint_to("planner", &["booking"])).await.token;
    let c = dev
        .downscope(
            "planner",
            child(&root, build::agent("booking"), &[], &["trips:book"], vec![]),
        )
        .await;
    let info = c.info.unwrap();
    assert_eq!(info.actor_auth, pb::AuthMethod::Asserted as i32);
    let events = dev.events(&info.txn).await;
    let downscoped = events
        .iter()
        .find(|e| e.kind == pb::EventKind::Downscoped as i32)
        .unwrap();
    assert_eq!(downscoped.actor_auth, pb::AuthMethod::Asserted as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svid_assertions_prove_a_caller_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("jwt-bundle.json");
    let signer = jwt::Signer::new("k1");
    std::fs::write(
        &bundle,
        serde_json::json!({ "keys": [signer.jwk.clone()] }).to_string(),
    )
    .unwrap();
    let srv =
        TestServer::start_proven_with(|c| c.auth.jwt_svid_bundle = Some(bundle.clone())).await;
    let planner = srv.spiffe("agent/planner");
    let root = srv.mint(mint_to(&planner, &[])).await.token;
    let aud = srv.spiffe("writ");
    let claims = |jti: &str, exp_in: u64, aud: &str| {
        let now = jwt::now();
        serde_json::json!({"sub": planner, "aud": aud, "iat": now, "exp": now + exp_in, "jti": jti})
    };
    let asserting = |jwt: String| {
        let srv = &srv;
        async move {
            srv.connect_with(None)
                .await
                .unwrap()
                .with_client_assertion(&jwt)
                .unwrap()
        }
    };

    // Valid: proven as a JWT-SVID.
    let good = signer.sign("k1", &claims("one", 60, &aud));
    let info = assert_active(&ok(
        asserting(good.clone())
            .await
            .validate(introspect(&root))
            .await,
        "a valid JWT-SVID",
    ));
    assert_eq!(info.audience.unwrap().id, planner);
    // Replayed.
    assert_refused(
        asserting(good).await.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["jti"],
    );
    // Lives too long, names another audience, or an unknown key.
    assert_refused(
        asserting(signer.sign("k1", &claims("two", 3600, &aud)))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["exp"],
    );
    assert_refused(
        asserting(signer.sign("k1", &claims("three", 60, "spiffe://writ.local/other")))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["aud"],
    );
    assert_refused(
        asserting(signer.sign("k2", &claims("four", 60, &aud)))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["kid"],
    );
    // Expired (beyond the clock-skew allowance).
    let now = jwt::now();
    let old = serde_json::json!({"sub": planner, "aud": aud, "iat": now, "exp": now - 120, "jti": "five"});
    assert_refused(
        asserting(signer.sign("k1", &old))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["exp"],
    );
    // Signed by a key the bundle does not hold, under a kid it does.
    let impostor = jwt::Signer::new("k1");
    assert_refused(
        asserting(impostor.sign("k1", &claims("six", 60, &aud)))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["signature"],
    );
    // A subject longer than any party id (256 bytes) proves no party, even when signed.
    let now = jwt::now();
    let long = format!("spiffe://writ.local/agent/{}", "a".repeat(300));
    let too_long =
        serde_json::json!({"sub": long, "aud": aud, "iat": now, "exp": now + 60, "jti": "seven"});
    assert_refused(
        asserting(signer.sign("k1", &too_long))
            .await
            .validate(introspect(&root))
            .await,
        Code::Unauthenticated,
        &["sub"],
    );
}

/// The server's certificate and trust bundle are files re-read when they change: after a
/// rotation to a new CA, new connections use the new material, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = SystemTime::now();
    let write_ca = |ca: &Ca| {
        let server = ca
            .issue_server(
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
                None,
                now - hours(1),
                now + hours(24),
            )
            .unwrap();
        // The key first, then the certificate: the reloader waits for a matching pair.
        std::fs::write(dir.join("server-key.pem"), &server.key_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("bundle.pem"), ca.cert_pem()).unwrap();
    };
    let old = Ca::generate("old", "writ.local", now - hours(1), now + hours(48)).unwrap();
    write_ca(&old);
    let d = dir.to_owned();
    let srv = TestServer::start_proven_with(move |c| {
        c.tls.cert = Some(d.join("server.pem"));
        c.tls.key = Some(d.join("server-key.pem"));
        c.tls.client_ca = Some(d.join("bundle.pem"));
        c.tls.reload_interval_seconds = 1;
    })
    .await;
    let id = SpiffeId::parse(&srv.spiffe("agent/planner")).unwrap();
    let client_of = |ca: &Ca| {
        let svid = ca.issue_svid(&id, now - hours(1), now + hours(1)).unwrap();
        writ_client::Tls {
            ca_pem: ca.cert_pem().to_owned(),
            identity: Some((svid.cert_pem, svid.key_pem)),
            domain: None,
        }
    };
    let root = srv.mint(mint_to(&id.to_string(), &[])).await.token;
    let validate = |tls: writ_client::Tls| {
        let (url, root) = (srv.url(), root.clone());
        async move {
            let mut c = writ_client::WritClient::connect_tls(&url, tls).await?;
            c.validate(introspect(&root)).await
        }
    };
    let mut old_conn = writ_client::WritClient::connect_tls(&srv.url(), client_of(&old))
        .await
        .unwrap();
    ok(
        old_conn.validate(introspect(&root)).await,
        "before rotation",
    );
    let new = Ca::generate("new", "writ.local", now - hours(1), now + hours(48)).unwrap();
    assert!(
        validate(client_of(&new)).await.is_err(),
        "the new CA is not trusted yet"
    );

    write_ca(&new);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if validate(client_of(&new)).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated material was never used"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New connections from the old CA are refused; the open connection keeps working.
    assert!(validate(client_of(&old)).await.is_err());
    ok(
        old_conn.validate(introspect(&root)).await,
        "an open connection",
    );
}

/// The kill switch: disabling a party revokes at once every live token it holds (as
/// audience) or presents (as current actor), with their descendants, in every
/// transaction; it can neither call Writ nor hold a new token; both are audited; enabling
/// it again restores nothing that was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_party_revokes_everything_it_holds_and_refuses_it_new_tokens() {
    let mut srv = TestServer::start_proven().await;
    let (planner, booking, payments) = (
        srv.spiffe("agent/planner"),
        srv.spiffe("agent/booking"),
        srv.spiffe("workload/payments"),
    );
    let mut as_planner = srv.svid_client("agent/planner").await;
    let mut as_booking = srv.svid_client("agent/booking").await;
    // Two transactions: booking holds a token in each and derived one for payments in the
    // first; an unrelated transaction of the planner alone.
    let mut held = Vec::new();
    let mut presented = Vec::new();
    let mut txns = Vec::new();
    for _ in 0..2 {
        let root = srv.mint(mint_to(&planner, &[&booking, &payments])).await;
        let to_booking = ok(
            as_planner
                .downscope(child(
                    &root.token,
                    build::agent(&booking),
                    &[&payments],
                    &["payments:charge"],
                    vec![],
                ))
                .await,
            "to booking",
        );
        held.push(to_booking.token.clone());
        txns.push(to_booking.info.clone().unwrap().txn);
        presented.push(
            ok(
                as_booking
                    .downscope(child(
                        &to_booking.token,
                        build::workload(&payments),
                        &[],
                        &["payments:charge"],
                        vec![],
                    ))
                    .await,
                "booking to payments",
            )
            .token,
        );
    }
    let unrelated = srv.mint(mint_to(&planner, &[])).await.token;

    let r = ok(
        srv.operator()
            .await
            .disable_party(&booking, "key leaked")
            .await,
        "disable",
    );
    assert_eq!((r.revoked, r.txns), (4, 2), "{r:?}");

    // Every token booking held or presented is inactive for its audience.
    let mut as_payments = srv.svid_client("workload/payments").await;
    for t in &presented {
        assert_inactive(
            &ok(as_payments.validate(introspect(t)).await, "validate"),
            pb::InactiveReason::Revoked,
        );
    }
    // Booking itself can no longer call Writ.
    assert_refused(
        as_booking.validate(introspect(&held[0])).await,
        Code::PermissionDenied,
        &["disabled"],
    );
    // Nobody can give booking a new token.
    let root = srv.mint(mint_to(&planner, &[&booking])).await.token;
    assert_refused(
        as_planner
            .downscope(child(
                &root,
                build::agent(&booking),
                &[],
                &["trips:book"],
                vec![],
            ))
            .await,
        Code::PermissionDenied,
        &["party", "disabled"],
    );
    assert_refused(
        srv.minter().await.mint(mint_to(&booking, &[])).await,
        Code::PermissionDenied,
        &["disabled"],
    );
    // The unrelated transaction is untouched.
    assert_active(&ok(
        as_planner.validate(introspect(&unrelated)).await,
        "unrelated",
    ));
    // Audited: one revocation per transaction, by the operator, proven by its credential.
    for txn in &txns {
        let events = srv.events(txn).await;
        let revoked: Vec<_> = events
            .iter()
            .filter(|e| e.kind == pb::EventKind::Revoked as i32)
            .collect();
        assert_eq!(revoked.len(), 1, "{events:?}");
        assert_eq!(revoked[0].revoked, 2);
        assert!(revoked[0].reason.contains("key leaked"), "{:?}", revoked[0]);
        assert_eq!(revoked[0].actor_auth, pb::AuthMethod::Bearer as i32);
    }

    // Survives a restart; enabling restores nothing.
    srv.restart().await;
    let mut as_booking = srv.svid_client("agent/booking").await;
    assert_refused(
        as_booking.validate(introspect(&held[0])).await,
        Code::PermissionDenied,
        &["disabled"],
    );
    let r = ok(srv.operator().await.enable_party(&booking).await, "enable");
    assert!(r.was_disabled);
    assert_inactive(
        &ok(as_booking.validate(introspect(&held[1])).await, "validate"),
        pb::InactiveReason::Revoked,
    );
    // A non-operator cannot flip the switch.
    let mut as_planner = srv.svid_client("agent/planner").await;
    assert_refused(
        as_planner.disable_party(&booking, "mine").await,
        Code::PermissionDenied,
        &["operator"],
    );
}

/// A connection outlives its handshake: once its client certificate has expired, the
/// identity it proved is refused on it, and a fresh certificate is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_during_a_connection_stops_proving_anything() {
    let srv = TestServer::start_proven().await;
    let planner = srv.spiffe("agent/planner");
    let root = srv.mint(mint_to(&planner, &[])).await.token;
    let now = SystemTime::now();
    let short = dev_ca(&srv)
        .issue_svid(
            &SpiffeId::parse(&planner).unwrap(),
            now - hours(1),
            now + Duration::from_secs(3),
        )
        .unwrap();
    let mut c = srv
        .connect_with(Some((short.cert_pem, short.key_pem)))
        .await
        .unwrap();
    ok(
        c.validate(introspect(&root)).await,
        "while the certificate is valid",
    );
    // Past its expiry (whole seconds), on the same connection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_refused(
        c.validate(introspect(&root)).await,
        Code::Unauthenticated,
        &["expired"],
    );
}

/// A crash between storing a party's disablement and finishing its walk loses nothing:
/// the next start finishes the walk (here the disablement is stored with no walk at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disablement_whose_walk_never_ran_is_finished_at_start() {
    let mut srv = TestServer::start_proven().await;
    let booking = srv.spiffe("agent/booking");
    let held = srv.mint(mint_to(&booking, &[])).await;
    let id = held.info.unwrap().token_id;
    srv.stop().await;
    {
        use writ_store::TokenStore;
        let store = writ_e2e::redis::open_store(srv.config()).await;
        let why = writ_core::PartyDisable::new(
            writ_core::UnixMillis(1),
            "local-operator".into(),
            "crashed".into(),
        );
        store
            .set_party_disabled(booking.clone(), Some(why))
            .await
            .unwrap();
    }
    srv.restart().await;
    let mut operator = srv.operator().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let node = ok(operator.get_token(&id).await, "get_token")
            .token
            .unwrap();
        if node.status == pb::TokenStatus::Revoked as i32 {
            let by = node.revocation.unwrap();
            assert!(by.reason.contains("crashed"), "{by:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the walk was never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
