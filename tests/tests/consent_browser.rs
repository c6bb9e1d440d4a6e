//! The consent page in a real headless Chromium (Debian's `chromium`, driven through
//! `chromium-driver` by thirtyfour): the consent URL exactly as RequestConsent answered
//! it opens the page, which describes the action; the person clicks Approve; the agent
//! redeems the approval over gRPC, and the token it gets allows exactly that action,
//! once, and nothing else. A second run denies, and the redemption is refused.
//!
//! `WRIT_UPDATE_SCREENSHOTS=1` writes the page before the click to
//! `docs/consent-page.png` (the README shows it); the screenshot is always decoded and
//! checked. Without Chromium the tests print a SKIP notice and pass, unless
//! `WRIT_REQUIRE_BROWSER=1`.
// Test code: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;
use thirtyfour::prelude::{By, ElementQueryable, Key};
use tonic::Code;
use writ_e2e::browser::*;
use writ_e2e::*;

/// The README's screenshot.
fn screenshot() -> PathBuf {
    repo_root().join("docs/consent-page.png")
}

/// Waits (bounded) for the page's `<h1>` to read `title`.
async fn wait_for_title(browser: &Browser, title: &str) {
    let found = browser
        .driver
        .query(By::XPath(format!("//h1[normalize-space()=\"{title}\"]")))
        .wait(Duration::from_secs(20), Duration::from_millis(100))
        .first()
        .await;
    if found.is_err() {
        let source = browser.driver.source().await.unwrap_or_default();
        panic!("no <h1>{title}</h1> within 20 s; the page is:\n{source}");
    }
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .driver
        .find(By::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// `req` as the payments API.
async fn validate(srv: &TestServer, token: &str, action: pb::Action) -> pb::ValidateResponse {
    srv.validate(
        PAYMENTS,
        pb::ValidateRequest {
            token: token.into(),
            action: Some(action),
            ..Default::default()
        },
    )
    .await
}

fn redeem(asked: &Asked) -> pb::RedeemConsentRequest {
    pb::RedeemConsentRequest {
        id: asked.id.clone(),
        token: asked.token.clone(),
        ttl_seconds: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_in_a_browser_and_the_agent_may_do_exactly_that_once() {
    let Some(browser) = Browser::start("consent_browser (approve)", 820, 1240).await else {
        return;
    };
    let (srv, _dir) = consent_server(|_| {}).await;
    let asked = ask(
        &srv,
        450,
        "Book the Lisbon flight on 12 March (TAP, seat 14C)",
    )
    .await;

    // The latent scope: the booking agent's own token may not charge yet.
    let before = srv
        .validate(
            BOOKING,
            pb::ValidateRequest {
                token: asked.token.clone(),
                action: Some(charge(450)),
                ..Default::default()
            },
        )
        .await;
    let before = before.decision.unwrap();
    assert!(before.consent_required && !before.allowed, "{before:?}");

    browser.driver.goto(&asked.url).await.unwrap();
    wait_for_title(&browser, "Approve this action?").await;
    let summary = text_of(&browser, "#summary").await;
    let expected = format!(
        "{CHARGE_DESCRIPTION} ({CHARGE}) with amount = 450, currency = \"EUR\", at Payments API, \
         requested by Booking agent on behalf of Trip planner"
    );
    assert!(summary.starts_with(&expected), "{summary}");
    assert!(summary.ends_with(&format!(", for {ALICE}")), "{summary}");
    let body = text_of(&browser, "main").await;
    for needle in [
        "Booking agent",
        "AI agent",
        "Trip planner",
        "Payments API",
        "Lisbon trip",
        "seat 14C",
        "UTC",
    ] {
        assert!(body.contains(needle), "{needle:?} not shown:\n{body}");
    }

    // The page as the person sees it, before they decide.
    let png = browser.driver.screenshot_as_png().await.unwrap();
    let (w, h) = check_png(&png, 600, 800);
    if std::env::var("WRIT_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        std::fs::write(screenshot(), &png).unwrap();
        eprintln!(
            "wrote {} ({w}×{h}, {} bytes)",
            screenshot().display(),
            png.len()
        );
    }
    // The committed screenshot decodes too.
    check_png(&std::fs::read(screenshot()).unwrap(), 600, 800);

    browser
        .driver
        .find(By::Css("button[value='approve']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_title(&browser, "Approved").await;
    assert!(
        text_of(&browser, "main")
            .await
            .contains("You can close this page; the agent continues.")
    );
    let info = consent_info(&srv, &asked.id).await;
    assert_eq!(info.status(), pb::ConsentStatus::Approved);
    assert_eq!(info.channel, "page_link");

    // Reloading the link says it was decided.
    browser.driver.goto(&asked.url).await.unwrap();
    wait_for_title(&browser, "This request was already approved").await;
    browser.close().await;

    // The agent redeems: a single-use token for exactly that action at payments.
    let (mut client, booking) = token_service(&srv, BOOKING).await;
    let redeemed = client
        .redeem_consent(as_caller(&booking, redeem(&asked)))
        .await
        .unwrap()
        .into_inner();
    let info = redeemed.info.unwrap();
    assert_eq!(info.scopes, vec![CHARGE.to_string()]);
    assert_eq!(info.audience.unwrap().id, PAYMENTS);
    assert_eq!(info.consent_request_id, asked.id);
    // Redeeming again is refused.
    let again = client
        .redeem_consent(as_caller(&booking, redeem(&asked)))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // Nothing else: other values, another scope.
    let more = validate(&srv, &redeemed.token, charge(451)).await;
    assert!(more.active && !more.decision.unwrap().allowed);
    let other_scope = validate(
        &srv,
        &redeemed.token,
        pb::Action {
            scope: "trips:read".into(),
            attributes: Default::default(),
        },
    )
    .await;
    assert!(!other_scope.decision.unwrap().allowed);
    // Exactly that action, once.
    let ok = validate(&srv, &redeemed.token, charge(450)).await;
    assert!(ok.active, "{ok:?}");
    assert!(ok.decision.unwrap().allowed);
    let twice = validate(&srv, &redeemed.token, charge(450)).await;
    assert!(!twice.active);
    assert_eq!(twice.inactive_reason(), pb::InactiveReason::Exhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_denies_in_a_browser_and_nothing_can_be_redeemed() {
    let Some(browser) = Browser::start("consent_browser (deny)", 820, 1280).await else {
        return;
    };
    let (srv, _dir) = consent_server(|_| {}).await;
    let asked = ask(&srv, 450, "Book the Lisbon flight").await;
    browser.driver.goto(&asked.url).await.unwrap();
    wait_for_title(&browser, "Approve this action?").await;
    // Keyboard-operable: Deny is a real button reached and pressed without a mouse.
    let deny = browser
        .driver
        .find(By::Css("button[value='deny']"))
        .await
        .unwrap();
    deny.send_keys(Key::Enter).await.unwrap();
    wait_for_title(&browser, "Denied").await;
    browser.close().await;
    let info = consent_info(&srv, &asked.id).await;
    assert_eq!(info.status(), pb::ConsentStatus::Denied);
    let (mut client, booking) = token_service(&srv, BOOKING).await;
    let refused = client
        .redeem_consent(as_caller(&booking, redeem(&asked)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}
