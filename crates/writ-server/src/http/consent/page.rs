//! What the consent page shows: a [`ConsentRequest`] as a view of plain strings,
//! rendered by compiled templates (`templates/consent/`) that escape every value, and
//! the headers every consent response carries.

use askama::Template;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};
use writ_core::model::{ActorKind, ClientType};
use writ_core::{ConsentRequest, ConsentStatus, PartyView, UnixMillis};

/// The page's only style sheet, inline (no external assets); allowed by its hash.
pub const CSS: &str = include_str!("../../../templates/consent/style.css");

/// `Content-Security-Policy` of every consent response: nothing but the inline style
/// sheet loads, the form posts only to Writ, no page may frame it.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, CSS.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
});

/// A party as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyLine {
    /// Its display name, else its id.
    pub name: String,
    /// Its id, when the name is a display name.
    pub id: Option<String>,
    /// An AI agent.
    pub agent: bool,
    /// What it is, in words.
    pub kind: &'static str,
    /// Confidential or public client, in words.
    pub client: &'static str,
}

impl From<&PartyView> for PartyLine {
    fn from(p: &PartyView) -> Self {
        PartyLine {
            name: p.name().to_owned(),
            id: p.display_name.as_ref().map(|_| p.id.clone()),
            agent: p.kind == ActorKind::Agent,
            kind: match p.kind {
                ActorKind::User => "person",
                ActorKind::Agent => "AI agent",
                ActorKind::Workload => "service",
            },
            client: match p.client_type {
                ClientType::Confidential => "confidential client",
                ClientType::Public => "public client",
            },
        }
    }
}

/// The page of a pending request.
#[derive(Debug, Template)]
#[template(path = "consent/request.html")]
pub struct RequestPage {
    css: &'static str,
    title: &'static str,
    summary: String,
    scope: String,
    scope_description: String,
    attributes: Vec<(String, String)>,
    resource: PartyLine,
    requester: PartyLine,
    behalf: Vec<PartyLine>,
    subject: String,
    purpose: String,
    reason: String,
    expires: String,
    expires_iso: String,
    /// The form's CSRF token; `None`: no form (the signed-in user is not the subject).
    csrf: Option<String>,
    /// The user signed in at the OpenID Provider, if sign-in is on.
    signed_in: Option<String>,
    /// The signed-in user (if any) is the request's subject.
    decidable: bool,
}

impl RequestPage {
    /// The page for `request`: with a form carrying `csrf` when there is one, and
    /// `signed_in` the user signed in at the OpenID Provider.
    pub fn new(request: &ConsentRequest, csrf: Option<String>, signed_in: Option<&str>) -> Self {
        let mut chain = request.chain.iter().rev().map(PartyLine::from);
        let requester = chain.next().unwrap_or_else(|| PartyLine {
            name: request.requester.id.clone(),
            id: None,
            agent: false,
            kind: "party",
            client: "client",
        });
        let (expires, expires_iso) = utc(request.expires_at);
        RequestPage {
            css: CSS,
            title: "Approve this action?",
            summary: request.describe(),
            scope: request.action.scope.clone(),
            scope_description: request.scope_description.clone(),
            attributes: request
                .action
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            resource: PartyLine::from(&request.resource_view),
            requester,
            behalf: chain.collect(),
            subject: request.subject.clone(),
            purpose: request.purpose.clone(),
            reason: request.reason.clone(),
            expires,
            expires_iso,
            decidable: signed_in.is_none_or(|s| s == request.subject),
            csrf,
            signed_in: signed_in.map(str::to_owned),
        }
    }
}

/// Every other page: a title, a few lines and, for a request, its summary.
#[derive(Debug, Template)]
#[template(path = "consent/message.html")]
pub struct MessagePage {
    css: &'static str,
    title: String,
    lines: Vec<String>,
    summary: Option<String>,
}

impl MessagePage {
    /// A page saying `title` and `lines`.
    pub fn new(title: impl Into<String>, lines: Vec<String>) -> Self {
        MessagePage {
            css: CSS,
            title: title.into(),
            lines,
            summary: None,
        }
    }

    /// Also shows which request it is about.
    pub fn about(mut self, request: &ConsentRequest) -> Self {
        self.summary = Some(request.describe());
        self
    }

    /// The page with `status` and the consent headers.
    pub fn respond(&self, status: StatusCode) -> Response {
        html(status, self.render())
    }
}

/// The page of a request the link no longer decides (410): what became of it.
pub fn gone(request: &ConsentRequest, status: ConsentStatus) -> Response {
    let (title, line) = match status {
        ConsentStatus::Approved => (
            "This request was already approved",
            "The decision is final; this link no longer works.",
        ),
        ConsentStatus::Redeemed => (
            "This request was approved and used",
            "The agent has performed the action or is doing so; this link no longer works.",
        ),
        ConsentStatus::Denied => (
            "This request was denied",
            "The agent may not perform this action; this link no longer works.",
        ),
        ConsentStatus::Expired | ConsentStatus::Pending => (
            "This request has expired",
            "It was not decided in time; this link no longer works. The agent has to ask again.",
        ),
    };
    MessagePage::new(title, vec![line.to_owned()])
        .about(request)
        .respond(StatusCode::GONE)
}

/// `page` rendered as the body of an HTML response with `status` and the consent
/// headers; a template that fails to render is a 500 with a fixed body.
pub fn html(status: StatusCode, page: askama::Result<String>) -> Response {
    let (status, body) = match page {
        Ok(body) => (status, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering a consent page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be shown.</p>".to_owned(),
            )
        }
    };
    let mut response = (status, body).into_response();
    secure(response.headers_mut());
    response
}

/// The headers every consent response carries (pages and redirects alike).
pub fn secure(headers: &mut HeaderMap) {
    let fixed = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(csp) = HeaderValue::from_str(&CSP) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
}

/// `at` for people (`2026-12-02 13:05:00 UTC`) and for `<time datetime>` (RFC 3339).
pub fn utc(at: UnixMillis) -> (String, String) {
    let time = UNIX_EPOCH + Duration::from_secs(at.0 / 1000);
    let iso = humantime::format_rfc3339_seconds(time).to_string();
    let shown = format!("{} UTC", iso.trim_end_matches('Z').replacen('T', " ", 1));
    (shown, iso)
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::claims::Value;
    use writ_core::model::{Actor, AuthMethod, Party};
    use writ_core::{ConsentAction, ConsentId, ConsentState, TokenId, TxnId};

    const HOSTILE: &str = "<script>alert(1)</script>\"'&";

    fn party(id: &str, name: Option<&str>, kind: ActorKind) -> PartyView {
        PartyView {
            id: id.into(),
            display_name: name.map(str::to_owned),
            kind,
            client_type: ClientType::Confidential,
        }
    }

    pub(crate) fn request(hostile: &str) -> ConsentRequest {
        let action = ConsentAction {
            scope: "payments.charge".into(),
            attributes: [
                ("amount".to_owned(), Value::Int(45000)),
                ("note".to_owned(), Value::Str(hostile.into())),
            ]
            .into(),
        };
        ConsentRequest {
            id: ConsentId::new(UnixMillis(1_800_000_000_000), [7; 8]),
            txn: TxnId([1; 16]),
            token: TokenId([2; 16]),
            requester: Actor {
                id: "spiffe://td/agent/booking".into(),
                auth: AuthMethod::Mtls,
            },
            subject: "alice".into(),
            key: [0; 32],
            action,
            scope_description: format!("charge your card {hostile}"),
            resource: Party {
                id: "spiffe://td/svc/pay".into(),
                kind: ActorKind::Workload,
                client_type: ClientType::Confidential,
            },
            chain: vec![
                party("spiffe://td/gw", None, ActorKind::Workload),
                party("spiffe://td/agent/planner", Some(hostile), ActorKind::Agent),
                party(
                    "spiffe://td/agent/booking",
                    Some("booking-agent"),
                    ActorKind::Agent,
                ),
            ],
            resource_view: party("spiffe://td/svc/pay", Some("payments"), ActorKind::Workload),
            purpose: "Lisbon trip".into(),
            reason: format!("book the flight {hostile}"),
            created_at: UnixMillis(1_800_000_000_000),
            expires_at: UnixMillis(1_800_000_300_000),
            link_hash: [0; 32],
            state: ConsentState::Pending,
        }
    }

    #[test]
    fn the_page_says_who_what_for_whom_why_until_when() {
        let r = request("x");
        let page = RequestPage::new(&r, Some("CSRFTOKEN".into()), None)
            .render()
            .unwrap();
        for needle in [
            "booking-agent",
            "spiffe://td/agent/booking",
            "AI agent",
            "confidential client",
            "spiffe://td/gw",
            "payments",
            "alice",
            "payments.charge",
            "charge your card x",
            "<code>amount</code>",
            "<code>45000</code>",
            "Lisbon trip",
            "book the flight x",
            "2027-01-15 08:05:00 UTC",
            "name=\"csrf\" value=\"CSRFTOKEN\"",
            "value=\"approve\"",
            "value=\"deny\"",
            "<meta name=\"viewport\"",
        ] {
            assert!(page.contains(needle), "{needle} missing from\n{page}");
        }
        // The describe() sentence, escaped.
        assert!(page.contains("requested by booking-agent on behalf of x, spiffe://td/gw"));
        // No script, no external asset, the form posts to the page itself.
        assert!(!page.contains("<script"));
        assert!(!page.contains("src="));
        assert!(!page.contains("href="));
        assert!(!page.contains("action="));
    }

    #[test]
    fn hostile_strings_are_escaped_everywhere() {
        let r = request(HOSTILE);
        let page = RequestPage::new(&r, Some("t".into()), Some(HOSTILE))
            .render()
            .unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains(HOSTILE));
        assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"));
        let gone = MessagePage::new(HOSTILE, vec![HOSTILE.into()])
            .about(&r)
            .render()
            .unwrap();
        assert!(!gone.contains("<script>"), "{gone}");
    }

    #[test]
    fn a_signed_in_user_who_is_not_the_subject_gets_no_buttons() {
        let r = request("x");
        let page = RequestPage::new(&r, None, Some("mallory"))
            .render()
            .unwrap();
        assert!(page.contains("Signed in as <strong>mallory</strong>"));
        assert!(page.contains("not for you"));
        assert!(!page.contains("<form"));
        assert!(!page.contains("<button"));
        let page = RequestPage::new(&r, Some("t".into()), Some("alice"))
            .render()
            .unwrap();
        assert!(page.contains("Signed in as <strong>alice</strong>"));
        assert!(!page.contains("not for you"));
        assert!(page.contains("<button"));
    }

    #[test]
    fn every_response_carries_the_security_headers() {
        let r = request("x");
        for response in [
            gone(&r, ConsentStatus::Approved),
            MessagePage::new("t", vec![]).respond(StatusCode::FORBIDDEN),
            html(StatusCode::OK, RequestPage::new(&r, None, None).render()),
        ] {
            let h = response.headers();
            assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
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
        }
        assert_eq!(gone(&r, ConsentStatus::Expired).status(), StatusCode::GONE);
    }

    #[test]
    fn the_style_hash_is_the_inline_style_sheets() {
        use base64::Engine;
        let page = MessagePage::new("t", vec![]).render().unwrap();
        let start = page.find("<style>").unwrap() + "<style>".len();
        let end = page.find("</style>").unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &page.as_bytes()[start..end]);
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        assert!(CSP.contains(&format!("'sha256-{hash}'")), "{}", *CSP);
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(
            utc(UnixMillis(1_800_000_300_999)),
            (
                "2027-01-15 08:05:00 UTC".to_owned(),
                "2027-01-15T08:05:00Z".to_owned()
            )
        );
    }
}
