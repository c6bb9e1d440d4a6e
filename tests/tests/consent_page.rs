//! The consent page over real HTTPS (reqwest with a cookie store, as a browser keeps
//! cookies): a consent link reached through the gRPC flow (mint → downscope →
//! RequestConsent) shows the request with strict headers; approving decides it once; the
//! link then says what became of it (410) and refuses another decision; the CSRF checks
//! refuse a form without its token, with another link's token or from another origin,
//! deciding nothing; a forged link is 404; an expired request says so; deny; and sign-in
//! at an OpenID Provider stand-in: the wrong user sees no buttons and is refused, the
//! request's subject decides with channel `page_signed_in`.
// Test code: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use writ_e2e::browser::*;
use writ_e2e::oidc::OpenIdProvider;
use writ_e2e::*;

/// A page's answer: status, headers and body.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    async fn read(r: reqwest::Response) -> Page {
        Page {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The form's CSRF token.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| {
            panic!("no CSRF token in the page:\n{}", self.body);
        });
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    fn expect(&self, status: u16, needles: &[&str]) -> &Page {
        assert_eq!(self.status, status, "{}", self.body);
        for n in needles {
            assert!(
                self.body.contains(n),
                "{n:?} is not in the page:\n{}",
                self.body
            );
        }
        self.assert_consent_headers();
        self
    }

    fn assert_consent_headers(&self) {
        let csp = self.header("content-security-policy");
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        for part in [
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert_eq!(self.header("referrer-policy"), "no-referrer");
        assert_eq!(self.header("cache-control"), "no-store");
        assert_eq!(self.header("x-content-type-options"), "nosniff");
        assert_eq!(self.header("x-frame-options"), "DENY");
        assert_eq!(self.header("content-type"), "text/html; charset=utf-8");
    }
}

/// The page URL on the server's HTTP listener (the consent URL's path).
fn page_url(srv: &TestServer, asked: &Asked) -> String {
    let path = &asked.url[asked.url.find("/consent/").unwrap()..];
    srv.http_url(path)
}

fn link(asked: &Asked) -> &str {
    asked.url.rsplit('/').next().unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Page {
    Page::read(client.get(url).send().await.unwrap()).await
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    origin: Option<&str>,
) -> Page {
    let mut r = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(form));
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    Page::read(r.send().await.unwrap()).await
}

async fn status_of(srv: &TestServer, asked: &Asked) -> pb::ConsentStatus {
    consent_info(srv, &asked.id).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_request_and_one_approval_decides_it() {
    let (srv, _dir) = consent_server(|_| {}).await;
    let asked = ask(&srv, 450, "Book the Lisbon flight <b>now</b> & pay").await;
    let issuer = srv.config().issuer();
    assert!(
        asked.url.starts_with(&format!("{issuer}/consent/")),
        "{}",
        asked.url
    );
    assert_eq!(link(&asked).len(), 70);
    let url = page_url(&srv, &asked);
    let client = page_client(&srv);

    let page = get(&client, &url).await;
    page.expect(
        200,
        &[
            "Approve this action?",
            CHARGE_DESCRIPTION.replace('\'', "&#39;").as_str(),
            CHARGE,
            "<code>amount</code>",
            "<code>450</code>",
            "Booking agent",
            BOOKING,
            "Trip planner",
            "AI agent",
            "confidential client",
            "Payments API",
            ALICE,
            "Lisbon trip",
            "Book the Lisbon flight",
            " UTC</time>",
            "value=\"approve\"",
            "value=\"deny\"",
        ],
    );
    // The requester's words are escaped; the link appears nowhere in the page.
    assert!(!page.body.contains("<b>now</b>"), "{}", page.body);
    assert!(page.body.contains("&#60;b&#62;now") || page.body.contains("&lt;b&gt;now"));
    assert!(!page.body.contains(link(&asked)));
    let cookie = page.header("set-cookie");
    assert!(
        cookie.starts_with("__Host-writ-csrf=")
            && cookie.contains("Path=/; Secure; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    let csrf = page.csrf();

    // The form without its token, from another origin, or with a bad decision: refused,
    // nothing decided.
    post(&client, &url, &[("decision", "approve")], None)
        .await
        .expect(403, &["csrf", "Nothing was decided"]);
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "approve")],
        Some("https://evil.example"),
    )
    .await
    .expect(403, &["another site", "Nothing was decided"]);
    post(&client, &url, &[("csrf", &csrf), ("decision", "yes")], None)
        .await
        .expect(400, &["decision: must be approve or deny"]);
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("csrf", &csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(400, &["csrf: sent more than once"]);
    // Without the browser's cookie (another client), the token alone does not decide.
    post(
        &page_client(&srv),
        &url,
        &[("csrf", &csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(403, &["csrf"]);
    // Another link's token (same browser, same cookie) does not decide this one.
    let other = ask(&srv, 300, "Book the hotel").await;
    let other_csrf = get(&client, &page_url(&srv, &other)).await.csrf();
    assert_ne!(other_csrf, csrf);
    post(
        &client,
        &url,
        &[("csrf", &other_csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(403, &["csrf"]);
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Pending);

    // The browser's own form, from Writ's origin: approved.
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "approve")],
        Some(&issuer),
    )
    .await
    .expect(
        200,
        &["Approved", "You can close this page; the agent continues."],
    );
    let info = consent_info(&srv, &asked.id).await;
    assert_eq!(info.status(), pb::ConsentStatus::Approved);
    assert_eq!(info.channel, "page_link");
    assert_eq!(info.decided_by, ALICE);
    assert_eq!(
        status_of(&srv, &other).await,
        pb::ConsentStatus::Pending,
        "the other request is untouched"
    );

    // The link stops working and says so; another decision is refused.
    get(&client, &url).await.expect(
        410,
        &["This request was already approved", "no longer works"],
    );
    let again = post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "deny")],
        None,
    )
    .await;
    again.expect(410, &["already approved"]);
    assert!(!again.body.contains("<form"));
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Approved);

    // The request layer labels the page by its route, never by the link.
    let metrics = srv.ops_get("/metrics").await;
    assert!(metrics.body.contains("/consent/{link}"), "{}", metrics.body);
    assert!(!metrics.body.contains(link(&asked)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unknown_and_malformed_links_are_404_without_echo() {
    let (srv, _dir) = consent_server(|_| {}).await;
    let client = page_client(&srv);
    let forged = "A".repeat(70);
    for path in [
        format!("/consent/{forged}"),
        "/consent/short".to_owned(),
        format!("/consent/{forged}/more"),
    ] {
        let page = get(&client, &srv.http_url(&path)).await;
        page.expect(404, &["This consent link is not valid"]);
        assert!(!page.body.contains(&forged));
        assert!(
            page.header("set-cookie").is_empty(),
            "no cookie for a bad link"
        );
    }
    // A POST to a forged link with a well-formed CSRF token from a real page.
    let asked = ask(&srv, 100, "Lunch").await;
    let csrf = get(&client, &page_url(&srv, &asked)).await.csrf();
    post(
        &client,
        &srv.http_url(&format!("/consent/{forged}")),
        &[("csrf", &csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(403, &["csrf"]);
    // Other methods: 405 naming the allowed ones.
    let r = client.put(page_url(&srv, &asked)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, POST");
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_is_final_and_the_page_says_so() {
    let (srv, _dir) = consent_server(|_| {}).await;
    let asked = ask(&srv, 450, "Book the Lisbon flight").await;
    let url = page_url(&srv, &asked);
    let client = page_client(&srv);
    let csrf = get(&client, &url).await.csrf();
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "deny")],
        None,
    )
    .await
    .expect(200, &["Denied", "may not perform this action"]);
    let info = consent_info(&srv, &asked.id).await;
    assert_eq!(info.status(), pb::ConsentStatus::Denied);
    assert_eq!(info.channel, "page_link");
    get(&client, &url)
        .await
        .expect(410, &["This request was denied"]);
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(410, &["denied"]);
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_says_so_and_cannot_be_decided() {
    let (srv, _dir) = consent_server(|c| c.consent.request_ttl_seconds = 2).await;
    let asked = ask(&srv, 450, "Book the Lisbon flight").await;
    let url = page_url(&srv, &asked);
    let client = page_client(&srv);
    let csrf = get(&client, &url).await.csrf();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    get(&client, &url).await.expect(
        410,
        &["This request has expired", "The agent has to ask again"],
    );
    post(
        &client,
        &url,
        &[("csrf", &csrf), ("decision", "approve")],
        None,
    )
    .await
    .expect(410, &["expired"]);
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Expired);
}

/// Follows the sign-in: the page's 303 to the provider, the provider's 303 back to the
/// callback, the callback's 303 to the page. Answers the page.
async fn sign_in(client: &reqwest::Client, op: &OpenIdProvider, url: &str, link: &str) -> Page {
    let first = get(client, url).await;
    assert_eq!(first.status, 303, "{}", first.body);
    first.assert_consent_headers();
    let to_op = first.header("location");
    assert!(
        to_op.starts_with(&format!("{}/authorize?", op.issuer())),
        "{to_op}"
    );
    assert!(!to_op.contains(link), "the link never goes to the provider");
    assert!(
        first
            .header("set-cookie")
            .contains("__Host-writ-signin-state=")
    );
    let back = client.get(&to_op).send().await.unwrap();
    assert_eq!(back.status().as_u16(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.contains("/consent/callback?"), "{callback}");
    let signed = get(client, &callback).await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    signed.assert_consent_headers();
    assert!(signed.header("set-cookie").contains("__Host-writ-signin="));
    assert_eq!(signed.header("location"), format!("/consent/{link}"));
    // The callback works once.
    get(client, &callback)
        .await
        .expect(400, &["already finished"]);
    get(client, url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sign_in_only_the_subject_decides() {
    let op = OpenIdProvider::start("mallory").await;
    let config = op.config();
    let (srv, _dir) = consent_server(move |c| c.consent.sign_in = Some(config)).await;
    let asked = ask(&srv, 450, "Book the Lisbon flight").await;
    let url = page_url(&srv, &asked);

    // mallory signs in: the page names her and offers no buttons; a POST is refused.
    let mallory = page_client(&srv);
    let page = sign_in(&mallory, &op, &url, link(&asked)).await;
    page.expect(
        403,
        &["Signed in as <strong>mallory</strong>", "not for you"],
    );
    assert!(!page.body.contains("<form"));
    post(
        &mallory,
        &url,
        &[("csrf", "x"), ("decision", "approve")],
        None,
    )
    .await
    .expect(403, &[]);
    assert_eq!(status_of(&srv, &asked).await, pb::ConsentStatus::Pending);

    // Without signing in, a POST is refused even with a valid page token from elsewhere.
    let anonymous = page_client(&srv);
    let first = get(&anonymous, &url).await;
    assert_eq!(first.status, 303);
    post(
        &anonymous,
        &url,
        &[("csrf", "x"), ("decision", "approve")],
        None,
    )
    .await
    .expect(403, &[]);

    // alice signs in and approves.
    op.sign_in_as(ALICE);
    let alice = page_client(&srv);
    let page = sign_in(&alice, &op, &url, link(&asked)).await;
    page.expect(
        200,
        &["Signed in as <strong>alice</strong>", "value=\"approve\""],
    );
    post(
        &alice,
        &url,
        &[("csrf", &page.csrf()), ("decision", "approve")],
        None,
    )
    .await
    .expect(200, &["Approved"]);
    let info = consent_info(&srv, &asked.id).await;
    assert_eq!(info.status(), pb::ConsentStatus::Approved);
    assert_eq!(info.channel, "page_signed_in");
    assert_eq!(info.decided_by, ALICE);

    // What Writ asked the provider: PKCE S256, its callback, a fresh state and nonce.
    let asks = op.authorizations();
    assert_eq!(asks.len(), 2, "mallory's and alice's sign-ins: {asks:?}");
    for a in &asks {
        assert_eq!(a["code_challenge_method"], "S256");
        assert_eq!(
            a["redirect_uri"],
            format!("{}/consent/callback", srv.config().issuer())
        );
        assert_eq!(a["login_hint"], ALICE);
        assert!(a.values().all(|v| !v.contains(link(&asked))));
    }
    assert_ne!(asks[0]["state"], asks[1]["state"]);
    assert_ne!(asks[0]["nonce"], asks[1]["nonce"]);
    // The code was exchanged with its verifier, by a public client.
    for e in op.exchanges() {
        assert_eq!(e["grant_type"], "authorization_code");
        assert_eq!(e["code_verifier"].len(), 43);
    }
}
