//! Consent step-up end to end over gRPC with proven identities: a high-privilege scope is
//! latent (Downscope passes it on, its action check answers CONSENT_REQUIRED), the holder
//! asks the user (RequestConsent: a consent URL and a request id, identical requests not
//! duplicated), an approver app decides for the user (only for the token's subject), the
//! requester redeems the approval for a single-use token that allows exactly the action
//! once and nothing else. Denied, pending, expired, already redeemed, revoked and
//! mismatched requests fail with precise statuses, and the audit trail holds every step.
// Test code: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tonic::Code;
use writ_e2e::consent::*;
use writ_e2e::pb::EventKind;
use writ_e2e::*;

fn decision(r: &pb::ValidateResponse) -> pb::ActionDecision {
    r.decision.clone().expect("an action was asked")
}

/// The path of a consent URL: `https://host/consent/<70 characters of base64url>`.
#[track_caller]
fn assert_consent_url(url: &str, issuer: &str) -> String {
    let link = url
        .strip_prefix(&format!("{issuer}/consent/"))
        .unwrap_or_else(|| panic!("{url} is not under {issuer}/consent/"));
    assert_eq!(link.len(), 70, "{url}");
    assert!(
        link.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{url}"
    );
    link.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latent_scope_is_exercised_once_after_the_user_consents() {
    let cs = ConsentServer::start(|_| {}).await;
    let issuer = cs.srv.config().issuer();
    let (booking_token, booking_info) = cs.booking_token().await;
    let txn = booking_info.txn.clone();
    assert_eq!(booking_info.latent_scopes, vec![CHARGE.to_owned()]);

    // Downscope passes the latent scope on; its action check answers CONSENT_REQUIRED.
    let (pay_token, pay_info) = cs.payments_token(&booking_token, &[READ, CHARGE]).await;
    assert_eq!(pay_info.latent_scopes, vec![CHARGE.to_owned()]);
    let mut payments = cs.client(PAYMENTS).await;
    let r = ok(
        payments
            .validate(checking(&pay_token, charge(450, "EUR")))
            .await,
        "validate",
    );
    let reason = assert_denied(&r, "consent");
    assert!(reason.starts_with("CONSENT_REQUIRED"), "{reason}");
    let d = decision(&r);
    assert!(d.consent_required, "{d:?}");
    assert_eq!(d.consent_request_id, "", "no request yet");
    // No use spent, nothing else affected: plain introspection is active and names the
    // latent scope; a scope denial takes precedence over consent.
    let info = assert_active(&ok(
        payments.validate(introspect(&pay_token)).await,
        "introspect",
    ));
    assert_eq!(info.scopes, vec![CHARGE.to_owned(), READ.to_owned()]);
    assert_eq!(info.latent_scopes, vec![CHARGE.to_owned()]);
    let r = ok(
        payments
            .validate(checking(&pay_token, charge(5000, "EUR")))
            .await,
        "validate",
    );
    assert_denied(&r, "amount");
    assert!(!decision(&r).consent_required);
    // An ordinary scope is unaffected.
    let r = ok(
        payments.validate(check(&pay_token, READ, vec![])).await,
        "validate",
    );
    assert_allowed(&r);

    // The holder asks the user.
    let mut booking = cs.client(BOOKING).await;
    let asked = ok(
        booking
            .request_consent(ask(&booking_token, charge(450, "EUR"), PAYMENTS))
            .await,
        "request consent",
    );
    assert!(!asked.existing);
    let link = assert_consent_url(&asked.consent_url, &issuer);
    let req = asked.request.clone().unwrap();
    assert!(req.id.starts_with("cns_"), "{req:?}");
    assert_eq!(req.status(), pb::ConsentStatus::Pending);
    assert_eq!(
        (req.subject.as_str(), req.requester.as_str()),
        ("alice", BOOKING)
    );
    assert_eq!(req.requester_auth(), pb::AuthMethod::Mtls);
    assert_eq!(req.scope_description, CHARGE_DESCRIPTION);
    assert_eq!(req.purpose, "book the Lisbon trip");
    assert_eq!(req.token_id, booking_info.token_id);
    let chain: Vec<(&str, &str)> = req
        .chain
        .iter()
        .map(|p| (p.id.as_str(), p.display_name.as_str()))
        .collect();
    assert_eq!(
        chain,
        vec![
            (LOCAL_MINTER, ""),
            (PLANNER, "Trip planner"),
            (BOOKING, "Booking agent")
        ]
    );
    assert_eq!(req.resource.as_ref().unwrap().display_name, "Payments API");
    assert!(
        req.description.starts_with(&format!("{CHARGE_DESCRIPTION} ({CHARGE}) with amount = 450, currency = \"EUR\", at Payments API, requested by Booking agent")),
        "{}",
        req.description
    );
    assert!(
        !format!("{req:?}").contains(&link),
        "the link only in the URL"
    );

    // Validate now names the request.
    let r = ok(
        payments
            .validate(checking(&pay_token, charge(450, "EUR")))
            .await,
        "validate",
    );
    assert_eq!(decision(&r).consent_request_id, req.id);
    // Other values are another action: no request for them.
    let r = ok(
        payments
            .validate(checking(&pay_token, charge(451, "EUR")))
            .await,
        "validate",
    );
    assert!(decision(&r).consent_required);
    assert_eq!(decision(&r).consent_request_id, "");

    // An identical request answers the same request and URL.
    let again = ok(
        booking
            .request_consent(ask(&booking_token, charge(450, "EUR"), PAYMENTS))
            .await,
        "request consent again",
    );
    assert!(again.existing);
    assert_eq!(again.consent_url, asked.consent_url);
    assert_eq!(again.request.unwrap().id, req.id);

    // Redeeming before the user decided.
    assert_refused(
        booking.redeem_consent(&req.id, &booking_token, 0).await,
        Code::FailedPrecondition,
        &[&req.id, "waiting"],
    );

    // The back-channel: only a decision for the token's subject counts.
    let mut wallet = cs.client(WALLET).await;
    assert_refused(
        wallet.decide_consent(&req.id, true, "mallory").await,
        Code::PermissionDenied,
        &[&req.id, "subject"],
    );
    let unchanged = ok(
        cs.srv.operator().await.get_consent(&req.id).await,
        "get consent",
    );
    assert_eq!(unchanged.status(), pb::ConsentStatus::Pending);
    // A holder is no approver.
    assert_refused(
        booking.decide_consent(&req.id, true, "alice").await,
        Code::PermissionDenied,
        &["approver"],
    );
    let approved = ok(
        wallet.decide_consent(&req.id, true, "alice").await,
        "approve",
    )
    .request
    .unwrap();
    assert_eq!(approved.status(), pb::ConsentStatus::Approved);
    assert_eq!(
        (approved.decided_by.as_str(), approved.channel.as_str()),
        (WALLET, "back_channel")
    );
    assert_eq!(approved.decided_by_auth(), pb::AuthMethod::Mtls);
    // A decision is final.
    assert_refused(
        wallet.decide_consent(&req.id, false, "alice").await,
        Code::FailedPrecondition,
        &[&req.id, "decided"],
    );
    // Another party, even presenting the requester's token, may not redeem.
    assert_refused(
        cs.client(PLANNER)
            .await
            .redeem_consent(&req.id, &booking_token, 0)
            .await,
        Code::PermissionDenied,
        &[&req.id, "another party"],
    );

    // Redeemed: exactly the action, once, for the payments API.
    let redeemed = ok(
        booking.redeem_consent(&req.id, &booking_token, 0).await,
        "redeem",
    );
    let one = redeemed.info.clone().unwrap();
    assert_eq!(one.audience.as_ref().unwrap().id, PAYMENTS);
    assert_eq!(one.scopes, vec![CHARGE.to_owned()]);
    assert_eq!(one.max_uses, 1);
    assert!(one.require_action_check);
    assert_eq!(one.consent_request_id, req.id);
    assert!(one.latent_scopes.is_empty(), "{one:?}");
    assert_eq!(one.parent_token_id, booking_info.token_id);
    assert!(one.expires_at_unix_ms <= one.issued_at_unix_ms + 60_000);
    assert_refused(
        booking.redeem_consent(&req.id, &booking_token, 0).await,
        Code::FailedPrecondition,
        &[&req.id, "already been redeemed"],
    );
    // Denials spend no use: other values, another scope, plain introspection.
    let r = ok(
        payments
            .validate(checking(&redeemed.token, charge(500, "EUR")))
            .await,
        "validate",
    );
    assert_denied(&r, "amount");
    let r = ok(
        payments
            .validate(checking(&redeemed.token, charge(450, "USD")))
            .await,
        "validate",
    );
    assert_denied(&r, "currency");
    let r = ok(
        payments
            .validate(check(&redeemed.token, READ, vec![]))
            .await,
        "validate",
    );
    assert_denied(&r, "scope");
    assert_inactive(
        &ok(
            payments.validate(introspect(&redeemed.token)).await,
            "introspect",
        ),
        pb::InactiveReason::ActionRequired,
    );
    // Only the payments API may present it.
    assert_inactive(
        &ok(
            booking
                .validate(checking(&redeemed.token, charge(450, "EUR")))
                .await,
            "validate",
        ),
        pb::InactiveReason::WrongAudience,
    );
    let r = ok(
        payments
            .validate(checking(&redeemed.token, charge(450, "EUR")))
            .await,
        "validate",
    );
    assert_allowed(&r);
    assert_inactive(
        &ok(
            payments
                .validate(checking(&redeemed.token, charge(450, "EUR")))
                .await,
            "validate",
        ),
        pb::InactiveReason::Exhausted,
    );
    // The consent covers only the redeemed token: the latent one still asks.
    let r = ok(
        payments
            .validate(checking(&pay_token, charge(450, "EUR")))
            .await,
        "validate",
    );
    assert!(decision(&r).consent_required);
    assert_eq!(
        decision(&r).consent_request_id,
        "",
        "redeemed: no longer open"
    );

    // The operator's views.
    let mut op = cs.srv.operator().await;
    let shown = ok(op.get_consent(&req.id).await, "get consent");
    assert_eq!(shown.status(), pb::ConsentStatus::Redeemed);
    assert_eq!(shown.redeemed_token_id, one.token_id);
    let listed = ok(
        op.list_consents(pb::ListConsentsRequest {
            txn: txn.clone(),
            ..Default::default()
        })
        .await,
        "list consents",
    );
    assert_eq!(
        listed
            .requests
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec![req.id.as_str()]
    );
    let redeemed_only = ok(
        op.list_consents(pb::ListConsentsRequest {
            status: pb::ConsentStatus::Pending.into(),
            subject: "alice".into(),
            ..Default::default()
        })
        .await,
        "list consents",
    );
    assert!(redeemed_only.requests.is_empty(), "{redeemed_only:?}");
    assert_refused(
        booking.get_consent(&req.id).await,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_refused(
        booking.list_consents(Default::default()).await,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_refused(
        op.get_consent("cns_00000000000000000000000000000000").await,
        Code::NotFound,
        &["cns_00000000000000000000000000000000"],
    );

    // The trail: requested once, approved by the app, redeemed, and the validations.
    let events = cs.srv.events(&txn).await;
    let of = |k: EventKind| events.iter().filter(|e| e.kind() == k).collect::<Vec<_>>();
    let requested = of(EventKind::ConsentRequested);
    assert_eq!(requested.len(), 1, "{events:?}");
    assert_eq!(
        (
            requested[0].actor.as_str(),
            requested[0].consent_request_id.as_str()
        ),
        (BOOKING, req.id.as_str())
    );
    assert_eq!(requested[0].action, CHARGE);
    assert_eq!(requested[0].audience, PAYMENTS);
    let approved = of(EventKind::ConsentApproved);
    assert_eq!(approved.len(), 1);
    assert_eq!(
        (approved[0].actor.as_str(), approved[0].channel.as_str()),
        (WALLET, "back_channel")
    );
    assert_eq!(approved[0].actor_auth(), pb::AuthMethod::Mtls);
    let redeemed_events = of(EventKind::ConsentRedeemed);
    assert_eq!(redeemed_events.len(), 1);
    assert_eq!(redeemed_events[0].token_id, one.token_id);
    assert_eq!(redeemed_events[0].parent_token_id, booking_info.token_id);
    assert!(
        of(EventKind::Validated)
            .iter()
            .any(|e| e.result == "denied" && e.detail.contains("CONSENT_REQUIRED")),
        "{events:?}"
    );
    assert!(
        of(EventKind::Validated)
            .iter()
            .any(|e| e.token_id == one.token_id && e.result == "allowed"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_approved_or_redeemed_are_refused_precisely() {
    let cs = ConsentServer::start(|_| {}).await;
    let (booking_token, info) = cs.booking_token().await;
    let mut booking = cs.client(BOOKING).await;

    // Nothing to ask for an ordinary scope.
    let read = pb::Action {
        scope: READ.into(),
        attributes: Default::default(),
    };
    assert_refused(
        booking
            .request_consent(ask(&booking_token, read, PAYMENTS))
            .await,
        Code::FailedPrecondition,
        &["action.scope", READ, "needs no consent"],
    );
    // Nor for an action the grant denies anyway.
    assert_refused(
        booking
            .request_consent(ask(&booking_token, charge(5000, "EUR"), PAYMENTS))
            .await,
        Code::PermissionDenied,
        &["amount"],
    );
    // A list of values is not one action.
    let mut list = charge(450, "EUR");
    list.attributes.insert(
        "amount".into(),
        build::list(vec![build::int(1), build::int(2)]),
    );
    assert_refused(
        booking
            .request_consent(ask(&booking_token, list, PAYMENTS))
            .await,
        Code::InvalidArgument,
        &["action.attributes", "exactly one value"],
    );
    // A resource the redeemed token could not be issued to.
    assert_refused(
        booking
            .request_consent(ask(
                &booking_token,
                charge(450, "EUR"),
                "spiffe://writ.local/api/elsewhere",
            ))
            .await,
        Code::PermissionDenied,
        &["resource"],
    );
    assert_refused(
        booking
            .request_consent(ask(&booking_token, charge(450, "EUR"), PLANNER))
            .await,
        Code::PermissionDenied,
        &[],
    );
    // Only the holder asks, and learns nothing about the token otherwise.
    let m = assert_refused(
        cs.client(PLANNER)
            .await
            .request_consent(ask(&booking_token, charge(450, "EUR"), PAYMENTS))
            .await,
        Code::PermissionDenied,
        &["does not hold"],
    );
    assert!(!m.contains(BOOKING), "{m}");
    // The reason is required and bounded.
    let mut no_reason = ask(&booking_token, charge(450, "EUR"), PAYMENTS);
    no_reason.reason.clear();
    assert_refused(
        booking.request_consent(no_reason).await,
        Code::InvalidArgument,
        &["reason"],
    );
    let mut long = ask(&booking_token, charge(450, "EUR"), PAYMENTS);
    long.reason = "x".repeat(513);
    assert_refused(
        booking.request_consent(long).await,
        Code::InvalidArgument,
        &["reason", "512"],
    );
    // A forged token never reaches the store.
    assert_refused(
        booking
            .request_consent(ask(
                &flip_middle(&booking_token),
                charge(450, "EUR"),
                PAYMENTS,
            ))
            .await,
        Code::Unauthenticated,
        &["token"],
    );

    // Denied: the requester cannot redeem, and the trail says who denied how.
    let denied = ok(
        booking
            .request_consent(ask(&booking_token, charge(300, "EUR"), PAYMENTS))
            .await,
        "request",
    )
    .request
    .unwrap();
    let mut op = cs.srv.operator().await;
    let d = ok(op.decide_consent(&denied.id, false, "alice").await, "deny")
        .request
        .unwrap();
    assert_eq!(d.status(), pb::ConsentStatus::Denied);
    assert_eq!(d.channel, "operator");
    assert_refused(
        booking.redeem_consent(&denied.id, &booking_token, 0).await,
        Code::PermissionDenied,
        &[&denied.id, "denied"],
    );
    // A denied request is no longer open: asking again makes a new one.
    let fresh = ok(
        booking
            .request_consent(ask(&booking_token, charge(300, "EUR"), PAYMENTS))
            .await,
        "request again",
    );
    assert!(!fresh.existing);
    assert_ne!(fresh.request.unwrap().id, denied.id);

    // A revoked transaction redeems nothing.
    let approved = ok(
        booking
            .request_consent(ask(&booking_token, charge(200, "EUR"), PAYMENTS))
            .await,
        "request",
    )
    .request
    .unwrap();
    ok(
        cs.client(WALLET)
            .await
            .decide_consent(&approved.id, true, "alice")
            .await,
        "approve",
    );
    cs.srv
        .revoke_as_operator(revoke_txn(&info.txn, "compromised"))
        .await;
    assert_refused(
        booking
            .redeem_consent(&approved.id, &booking_token, 0)
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );
    assert_refused(
        booking
            .request_consent(ask(&booking_token, charge(100, "EUR"), PAYMENTS))
            .await,
        Code::FailedPrecondition,
        &["revoked"],
    );

    let events = cs.srv.events(&info.txn).await;
    let denied_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == EventKind::ConsentDenied)
        .collect();
    assert_eq!(denied_events.len(), 1, "{events:?}");
    assert_eq!(denied_events[0].actor, LOCAL_OPERATOR);
    assert_eq!(denied_events[0].channel, "operator");
    assert_eq!(denied_events[0].actor_auth(), pb::AuthMethod::Bearer);
    assert!(
        !events
            .iter()
            .any(|e| e.kind() == EventKind::ConsentRedeemed),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unredeemed_approval_expires_and_cleanup_records_it() {
    let cs = ConsentServer::start(|c| {
        c.consent.request_ttl_seconds = 2;
        c.storage.cleanup_interval_seconds = 1;
    })
    .await;
    let (booking_token, info) = cs.booking_token().await;
    let mut booking = cs.client(BOOKING).await;
    let req = ok(
        booking
            .request_consent(ask(&booking_token, charge(450, "EUR"), PAYMENTS))
            .await,
        "request",
    )
    .request
    .unwrap();
    assert_eq!(req.expires_at_unix_ms, req.created_at_unix_ms + 2_000);
    ok(
        cs.client(WALLET)
            .await
            .decide_consent(&req.id, true, "alice")
            .await,
        "approve",
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_refused(
        booking.redeem_consent(&req.id, &booking_token, 0).await,
        Code::FailedPrecondition,
        &[&req.id, "expired"],
    );
    assert_refused(
        cs.client(WALLET)
            .await
            .decide_consent(&req.id, false, "alice")
            .await,
        Code::FailedPrecondition,
        &[&req.id],
    );
    // Cleanup runs every second; wait for its event (bounded, not a timing assertion).
    let mut expired = Vec::new();
    for _ in 0..100 {
        expired = cs
            .srv
            .events(&info.txn)
            .await
            .into_iter()
            .filter(|e| e.kind() == EventKind::ConsentExpired)
            .collect();
        if !expired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired.len(), 1, "one consent_expired event");
    assert_eq!(expired[0].consent_request_id, req.id);
    assert_eq!(expired[0].detail, "approved");
    assert_eq!(expired[0].actor_auth(), pb::AuthMethod::Internal);
    let shown = ok(
        cs.srv.operator().await.get_consent(&req.id).await,
        "get consent",
    );
    assert_eq!(shown.status(), pb::ConsentStatus::Expired);
    // An expired request is no longer open: an identical one is new.
    let again = ok(
        booking
            .request_consent(ask(&booking_token, charge(450, "EUR"), PAYMENTS))
            .await,
        "request again",
    );
    assert!(!again.existing);
}
