//! The consent page: where a person approves or denies one high-privilege action an
//! agent asks to perform for them (issue 12), served on the HTTP listener.
//!
//! - `GET /consent/{link}` shows the request the link names ([`Service::consent_by_link`]:
//!   a forged or unknown link is 404 before any storage read): who asks, for whom, what
//!   exactly, why and until when, and a form with Approve and Deny. A request that is no
//!   longer pending answers 410 saying what became of it, with no form.
//! - `POST /consent/{link}` (`csrf`, `decision=approve|deny`) records the decision
//!   ([`Service::decide_on_page`]) once the CSRF checks of [`csrf`] pass; refused: 403,
//!   nothing decided.
//! - With `[consent.sign_in]`, the user first signs in at the trust domain's OpenID
//!   Provider ([`signin`], `GET /consent/callback`); only the request's subject sees the
//!   buttons, and the decision is recorded as theirs (channel `page_signed_in`).
//!
//! Pages are server-rendered from compiled templates that escape every value ([`page`]),
//! use no JavaScript and no external asset (one inline style sheet, allowed by its hash),
//! and every response carries a strict Content-Security-Policy, `no-referrer`,
//! `no-store`, `nosniff` and `DENY` framing. The link is a capability: it is never logged
//! (the request layer records the route template `/consent/{link}`), never echoed in a
//! page, and never sent to the provider. Each request is charged to its caller's rate
//! limit through the auth seam (an anonymous browser: its peer address's `anonymous`
//! limit), and form bodies are read under the OAuth face's bounds.

mod csrf;
mod page;
mod signin;

pub use csrf::{CSRF_CONTEXT, CSRF_COOKIE};
pub use page::CSP;
pub use signin::{CALLBACK_PATH, SIGNED_IN_CONTEXT, SIGNED_IN_COOKIE, STATE_COOKIE, SignIn};

use super::HttpState;
use super::form::Form;
use crate::auth::{AuthError, FormClientAuth};
use crate::error::ServiceError;
use crate::service;
use askama::Template;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use page::{MessagePage, RequestPage};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use writ_core::{ConsentRequest, ConsentStatus};
use writ_store::TokenStore;

/// The page's route (the link is its last segment).
pub const PAGE_ROUTE: &str = "/consent/{link}";

/// `[consent.sign_in]`: the trust domain's OpenID Provider, where a user signs in before
/// the consent page shows a request (authorization code flow with PKCE, RFC 7636).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// The OpenID Provider's issuer identifier (the ID token's `iss`).
    pub issuer: String,
    /// Its authorization endpoint.
    pub authorization_endpoint: String,
    /// Its token endpoint.
    pub token_endpoint: String,
    /// Its JWKS at a URL: `https`, or plain `http` to a loopback host only.
    pub jwks_uri: Option<String>,
    /// Its JWKS in a file.
    pub jwks_file: Option<PathBuf>,
    /// Writ's client id at the provider (the ID token's `aud`).
    pub client_id: String,
    /// A file holding Writ's client secret (`client_secret_basic`); none: a public client
    /// (PKCE alone).
    pub client_secret_file: Option<PathBuf>,
}

/// What the consent pages need beyond the rest of the HTTP face.
#[derive(Debug, Default)]
pub struct Pages {
    /// Sign-in at the OpenID Provider, when configured.
    sign_in: Option<SignIn>,
}

impl Pages {
    /// The pages for Writ at `issuer`, with sign-in when `sign_in` configures it; the
    /// error names the setting that is wrong.
    pub fn new(issuer: &str, sign_in: Option<&SignInConfig>) -> Result<Pages, String> {
        Ok(Pages {
            sign_in: sign_in.map(|c| SignIn::new(c, issuer)).transpose()?,
        })
    }
}

/// `GET /consent/{link}`.
pub async fn show<S: TokenStore>(
    State(state): State<Arc<HttpState<S>>>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(limited) = charge(&state, &parts).await {
        return limited;
    }
    let link = link_of(&parts);
    let request = match state.service.consent_by_link(link).await {
        Ok(r) => r,
        Err(e) => return service_error(e),
    };
    let status = request.status(service::now());
    if status != ConsentStatus::Pending {
        return page::gone(&request, status);
    }
    let signed_in = match &state.consent.sign_in {
        None => None,
        Some(sign_in) => {
            let mac = |i: &[u8]| state.service.page_mac(SIGNED_IN_CONTEXT, i);
            match sign_in.signed_in(&parts.headers, link, mac, service::now_secs()) {
                Some(who) => Some(who),
                None => return start_sign_in(sign_in, link, &request),
            }
        }
    };
    if let Some(who) = &signed_in
        && who.subject != request.subject
    {
        let page = RequestPage::new(&request, None, Some(&who.subject));
        return page::html(StatusCode::FORBIDDEN, page.render());
    }
    let (cookie, new_cookie) = match csrf::csrf_cookie(&parts.headers) {
        Some(c) => (c, None),
        None => {
            let (bytes, text) = csrf::new_cookie();
            (
                bytes,
                Some(csrf::set_cookie(CSRF_COOKIE, &text, "Strict", None)),
            )
        }
    };
    let mac = state
        .service
        .page_mac(CSRF_CONTEXT, &csrf::token_input(link, &cookie));
    let page = RequestPage::new(
        &request,
        Some(csrf::encode_token(&mac)),
        signed_in.as_ref().map(|w| w.subject.as_str()),
    );
    let mut response = page::html(StatusCode::OK, page.render());
    if let Some(set) = new_cookie {
        set_cookie(&mut response, &set);
    }
    response
}

/// `POST /consent/{link}`.
pub async fn decide<S: TokenStore>(
    State(state): State<Arc<HttpState<S>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(limited) = charge(&state, &parts).await {
        return limited;
    }
    let link = link_of(&parts);
    if let Err(header) = csrf::check_origin(&parts.headers, &state.issuer) {
        return refused(&format!(
            "The browser says the form was sent from another site ({header}). Nothing was decided."
        ));
    }
    let form = match read_form(&state, &parts, body).await {
        Ok(form) => form,
        Err(page) => return *page,
    };
    let approve = match form.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return MessagePage::new(
                "This decision could not be read",
                vec!["decision: must be approve or deny. Nothing was decided.".into()],
            )
            .respond(StatusCode::BAD_REQUEST);
        }
    };
    let csrf_ok = match (csrf::csrf_cookie(&parts.headers), form.get("csrf")) {
        (Some(cookie), Some(token)) => {
            let expected = state
                .service
                .page_mac(CSRF_CONTEXT, &csrf::token_input(link, &cookie));
            csrf::token_matches(token, &expected)
        }
        _ => false,
    };
    if !csrf_ok {
        return refused(
            "The form's security token (csrf) or this browser's security cookie is missing or \
             does not match this page. Nothing was decided.",
        );
    }
    let signed_in = match &state.consent.sign_in {
        None => None,
        Some(sign_in) => {
            let mac = |i: &[u8]| state.service.page_mac(SIGNED_IN_CONTEXT, i);
            match sign_in.signed_in(&parts.headers, link, mac, service::now_secs()) {
                Some(who) => Some(who),
                None => {
                    return refused(
                        "You must sign in before you decide: open the consent link again. \
                         Nothing was decided.",
                    );
                }
            }
        }
    };
    match state.service.decide_on_page(link, approve, signed_in).await {
        Ok(request) => decided(&request, approve),
        Err(e) => decide_error(&state, link, e).await,
    }
}

/// `GET /consent/callback`: the OpenID Provider sends the browser back here.
pub async fn callback<S: TokenStore>(
    State(state): State<Arc<HttpState<S>>>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(limited) = charge(&state, &parts).await {
        return limited;
    }
    let Some(sign_in) = &state.consent.sign_in else {
        return not_found();
    };
    let query = match Form::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
        Ok(q) => q,
        Err(e) => {
            return MessagePage::new("The sign-in could not be read", vec![e.description])
                .respond(StatusCode::BAD_REQUEST);
        }
    };
    let now = service::now_secs();
    let (link, who) = match sign_in.finish(&query, &parts.headers, now).await {
        Ok(done) => done,
        Err(e) => return sign_in_error(&e),
    };
    tracing::info!(subject = %writ_core::text::Shown(&who.subject), "signed in for a consent page");
    let mac = |i: &[u8]| state.service.page_mac(SIGNED_IN_CONTEXT, i);
    let mut response = see_other(&format!("/consent/{link}"));
    set_cookie(
        &mut response,
        &SignIn::signed_in_cookie(&who, &link, mac, now),
    );
    set_cookie(
        &mut response,
        &csrf::set_cookie(STATE_COOKIE, "", "Lax", Some(0)),
    );
    response
}

/// Any other method on a consent route: 405 with `Allow`, as a page.
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = MessagePage::new(
        "This page cannot be used this way",
        vec![format!("Use {allow}.")],
    )
    .respond(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The 404 page of a link that names no request.
pub fn not_found() -> Response {
    MessagePage::new(
        "This consent link is not valid",
        vec!["It may be mistyped or copied incompletely. Nothing can be decided here.".into()],
    )
    .respond(StatusCode::NOT_FOUND)
}

/// The link: the path's last segment (the route matched one segment after `/consent/`).
fn link_of(parts: &Parts) -> &str {
    parts
        .uri
        .path()
        .strip_prefix("/consent/")
        .unwrap_or_default()
}

/// Charges the request to its caller's rate limit (an anonymous browser: its peer
/// address's); over it, the 429 page (with `Retry-After`) to answer.
async fn charge<S: TokenStore>(state: &HttpState<S>, parts: &Parts) -> Option<Response> {
    match state
        .auth
        .identify_http(parts, FormClientAuth::default())
        .await
    {
        Err(AuthError::Limited { limited, .. }) => {
            let secs = limited.retry_after.as_secs().max(1);
            let mut response = MessagePage::new(
                "Too many requests",
                vec![format!("Wait {secs} s and reload this page.")],
            )
            .respond(StatusCode::TOO_MANY_REQUESTS);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Some(response)
        }
        // Who the browser is does not matter here: the link (and the sign-in) decide.
        _ => None,
    }
}

/// The form, read under the OAuth face's bounds; a refusal as a page.
async fn read_form<S: TokenStore>(
    state: &HttpState<S>,
    parts: &Parts,
    body: axum::body::Body,
) -> Result<Form, Box<Response>> {
    let Ok(_slot) = state.reading.try_acquire() else {
        let mut response = MessagePage::new(
            "Writ is busy",
            vec!["Too many requests are being read; try again in a moment.".into()],
        )
        .respond(StatusCode::SERVICE_UNAVAILABLE);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        return Err(Box::new(response));
    };
    let read = tokio::time::timeout(
        super::BODY_READ_TIMEOUT,
        Form::read(&parts.headers, body, state.body_limit),
    )
    .await;
    let why = match read {
        Ok(Ok(form)) => return Ok(form),
        Ok(Err(e)) => e.description,
        Err(_) => format!(
            "the form took longer than {} s to arrive",
            super::BODY_READ_TIMEOUT.as_secs()
        ),
    };
    Err(Box::new(
        MessagePage::new(
            "This decision could not be read",
            vec![why, "Nothing was decided.".into()],
        )
        .respond(StatusCode::BAD_REQUEST),
    ))
}

/// The page after a decision.
fn decided(request: &ConsentRequest, approved: bool) -> Response {
    let (title, line) = if approved {
        ("Approved", "You can close this page; the agent continues.")
    } else {
        (
            "Denied",
            "You can close this page; the agent may not perform this action.",
        )
    };
    MessagePage::new(title, vec![line.into()])
        .about(request)
        .respond(StatusCode::OK)
}

/// A refused decision (403), saying why; nothing was decided.
fn refused(why: &str) -> Response {
    MessagePage::new("This decision was refused", vec![why.to_owned()])
        .respond(StatusCode::FORBIDDEN)
}

/// A decision the service refused: a request no longer pending says what became of it
/// (410); otherwise the refusal's status.
async fn decide_error<S: TokenStore>(
    state: &HttpState<S>,
    link: &str,
    e: ServiceError,
) -> Response {
    let message = e.to_string();
    let code = tonic::Status::from(e).code();
    if code == tonic::Code::FailedPrecondition
        && let Ok(request) = state.service.consent_by_link(link).await
    {
        let status = request.status(service::now());
        if status != ConsentStatus::Pending {
            return page::gone(&request, status);
        }
        return MessagePage::new("This request cannot be decided now", vec![message])
            .about(&request)
            .respond(StatusCode::CONFLICT);
    }
    error_page(code, message)
}

/// A service error as a page, by its gRPC code (the one mapping, `crate::error`).
fn service_error(e: ServiceError) -> Response {
    let message = e.to_string();
    error_page(tonic::Status::from(e).code(), message)
}

/// The page of an error with gRPC `code` and `message`.
fn error_page(code: tonic::Code, message: String) -> Response {
    use tonic::Code;
    let (status, title) = match code {
        Code::NotFound => return not_found(),
        Code::PermissionDenied | Code::Unauthenticated => {
            (StatusCode::FORBIDDEN, "This decision was refused")
        }
        Code::FailedPrecondition => (StatusCode::CONFLICT, "This request cannot be decided now"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "This request could not be read"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Writ is busy"),
        _ => {
            tracing::error!(error = %message, "the consent page failed");
            return MessagePage::new(
                "Something went wrong",
                vec!["Writ could not show or record this decision; try again later.".into()],
            )
            .respond(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let mut response = MessagePage::new(title, vec![message]).respond(status);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    response
}

/// A sign-in that failed, as a page.
fn sign_in_error(e: &signin::SignInError) -> Response {
    use signin::SignInError as E;
    let status = match e {
        E::Busy | E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::UnknownState | E::Malformed(_) => StatusCode::BAD_REQUEST,
        E::OtherBrowser | E::Provider(_) | E::IdToken(_) => StatusCode::FORBIDDEN,
        E::Exchange(_) => StatusCode::BAD_GATEWAY,
    };
    if matches!(e, E::Exchange(_) | E::IdToken(_) | E::Unavailable(_)) {
        tracing::warn!(error = %e, "a consent page sign-in failed");
    }
    MessagePage::new("The sign-in did not work", vec![e.to_string()]).respond(status)
}

/// Sends the browser to the OpenID Provider to sign in for `link`.
fn start_sign_in(sign_in: &SignIn, link: &str, request: &ConsentRequest) -> Response {
    match sign_in.start(link, &request.subject) {
        Ok(redirect) => {
            let mut response = see_other(&redirect.location);
            set_cookie(&mut response, &redirect.set_cookie);
            response
        }
        Err(e) => sign_in_error(&e),
    }
}

/// 303 to `location`, with the consent headers.
fn see_other(location: &str) -> Response {
    let mut response = page::html(StatusCode::SEE_OTHER, Ok(String::new()));
    match HeaderValue::from_str(location) {
        Ok(v) => {
            response.headers_mut().insert(header::LOCATION, v);
            response
        }
        Err(_) => page::html(
            StatusCode::INTERNAL_SERVER_ERROR,
            Ok("<!doctype html><title>Error</title><p>Bad redirect.</p>".into()),
        ),
    }
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_have_precise_statuses_and_never_show_more_than_the_error() {
        assert_eq!(not_found().status(), StatusCode::NOT_FOUND);
        let cases = [
            (ServiceError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (
                ServiceError::PermissionDenied("wrong subject".into()),
                StatusCode::FORBIDDEN,
            ),
            (
                ServiceError::Store(writ_store::StoreError::Backend("disk".into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (e, status) in cases {
            let r = service_error(e);
            assert_eq!(r.status(), status);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        }
        let r = error_page(tonic::Code::Internal, "secret detail".into());
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = error_page(tonic::Code::ResourceExhausted, "too many".into());
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = error_page(tonic::Code::FailedPrecondition, "decided".into());
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = method_not_allowed("GET, HEAD, POST");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD, POST");
    }

    #[test]
    fn a_redirect_carries_the_consent_headers() {
        let r = see_other("https://op.example/authorize?state=s");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://op.example/authorize?state=s"
        );
        assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
    }

    #[test]
    fn the_link_is_the_last_segment() {
        let (parts, _) = axum::http::Request::get("/consent/abc")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(link_of(&parts), "abc");
    }
}
