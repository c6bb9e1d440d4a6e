//! The OAuth face's errors (RFC 6749 §5.2, RFC 8693 §2.2.2) and their one mapping from
//! the service's, the auth seam's and the subject verifier's errors, in one place, as
//! [`crate::error`] is for gRPC.
//!
//! One rule decides the code, from what the caller can do about it:
//! - `invalid_request` (400): change the request (a malformed, missing or repeated
//!   parameter, a value out of range, more than one proof of identity);
//! - `invalid_client` (401, with `WWW-Authenticate`): authenticate (no proof, or one that
//!   does not hold);
//! - `unauthorized_client` (400): ask as another caller (the role is missing);
//!   RFC 8693 §2.2.2 puts every problem of the subject token here too: invalid, expired,
//!   revoked, exhausted, not the caller's, too deep, or unacceptable to the policy
//!   (`invalid_request` is RFC 6749's code for other grants and is never answered);
//! - `invalid_scope` (400): ask for fewer scopes or narrower claims; `invalid_target`
//!   (400): name another next hop. Both say the refused dimension in
//!   `error_description`;
//! - `unsupported_grant_type` (400): use token exchange;
//! - `temporarily_unavailable`: wait (429 with `Retry-After` when rate limited, 503 when
//!   storage or an issuer's keys are unavailable); `server_error` (500): nothing.
//!
//! Every answer, error or not, carries `Cache-Control: no-store` and `Pragma: no-cache`.
//! `error_description` is cut to [`MAX_STATUS_MESSAGE`] bytes and holds only the
//! characters RFC 6749 allows there (`"` becomes `'`, `\` becomes `/`, anything else
//! outside printable ASCII becomes `?`).

use crate::auth::AuthError;
use crate::error::{MAX_STATUS_MESSAGE, ParentProblem, ServiceError};
use crate::subject::SubjectError;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use std::time::Duration;
use writ_core::narrow::Dimension;
use writ_core::text::truncate;
use writ_store::StoreError;

/// `invalid_request`.
pub const INVALID_REQUEST: &str = "invalid_request";
/// `invalid_client`.
pub const INVALID_CLIENT: &str = "invalid_client";
/// `unauthorized_client`.
pub const UNAUTHORIZED_CLIENT: &str = "unauthorized_client";
/// `unsupported_grant_type`.
pub const UNSUPPORTED_GRANT_TYPE: &str = "unsupported_grant_type";
/// `invalid_scope`.
pub const INVALID_SCOPE: &str = "invalid_scope";
/// `invalid_target` (RFC 8693).
pub const INVALID_TARGET: &str = "invalid_target";
/// `temporarily_unavailable`.
pub const TEMPORARILY_UNAVAILABLE: &str = "temporarily_unavailable";
/// `server_error`.
pub const SERVER_ERROR: &str = "server_error";

/// `Cache-Control` of every token and introspection answer.
pub(crate) const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// `Pragma` of every token and introspection answer.
pub(crate) const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// An OAuth error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The RFC 6749 / RFC 8693 error code.
    pub error: &'static str,
    /// What exactly is wrong (already sanitised and bounded).
    pub description: String,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// An error with `status` and `error`, described by `description`.
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: describe(description.into()),
            retry_after: None,
        }
    }

    /// `invalid_request` (400).
    pub fn invalid_request(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, description)
    }

    /// `invalid_client` (401).
    pub fn invalid_client(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::UNAUTHORIZED, INVALID_CLIENT, description)
    }

    /// `invalid_scope` (400).
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, INVALID_SCOPE, description)
    }

    /// `invalid_target` (400).
    pub fn invalid_target(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, INVALID_TARGET, description)
    }

    /// `unauthorized_client` (400).
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, UNAUTHORIZED_CLIENT, description)
    }

    /// `unsupported_grant_type` (400).
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, UNSUPPORTED_GRANT_TYPE, description)
    }

    /// `temporarily_unavailable` (503), retry after `retry_after` seconds.
    pub fn unavailable(description: impl Into<String>, retry_after: u64) -> Self {
        OAuthError {
            retry_after: Some(retry_after.max(1)),
            ..OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                TEMPORARILY_UNAVAILABLE,
                description,
            )
        }
    }

    /// `server_error` (500). The cause stays in the server's log.
    pub fn server_error(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "OAuth endpoint failed");
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
            "the server failed; retry later",
        )
    }

    /// The JSON answer, with the headers every OAuth answer carries.
    pub fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"writ\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `value` as JSON with `status`, `Cache-Control: no-store` and `Pragma: no-cache`.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    // Serialising a `Value` cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    with_no_store(status, "application/json", bytes)
}

/// `bytes` of `content_type` with `status`, `Cache-Control: no-store` and `Pragma:
/// no-cache`.
pub(crate) fn with_no_store(
    status: StatusCode,
    content_type: &'static str,
    bytes: Vec<u8>,
) -> Response {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    headers.insert(header::PRAGMA, NO_CACHE);
    response
}

/// `s` with only the characters RFC 6749 allows in `error_description` (%x20-21 /
/// %x23-5B / %x5D-7E), cut to [`MAX_STATUS_MESSAGE`] bytes.
fn describe(s: String) -> String {
    let clean: String = s
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    // Only ASCII is left: the ellipsis `truncate` adds would not be; cut by hand.
    if clean.len() <= MAX_STATUS_MESSAGE {
        clean
    } else {
        let mut cut = truncate(clean, MAX_STATUS_MESSAGE - 2);
        cut.pop();
        cut.push_str("...");
        cut
    }
}

/// `d` in whole seconds, rounded up, at least 1 (`Retry-After`).
fn seconds_up(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The code of a refused narrowing (Mint or Downscope), by the rule of the module docs.
pub fn narrowing_code(d: Dimension) -> &'static str {
    match d {
        Dimension::Scopes | Dimension::Claims | Dimension::Ceiling | Dimension::InvalidScope => {
            INVALID_SCOPE
        }
        Dimension::Audience | Dimension::Targets | Dimension::Party | Dimension::Loop => {
            INVALID_TARGET
        }
        // The subject token itself cannot be used for this: not the caller's, expired, at
        // the deepest depth.
        Dimension::Holder | Dimension::ParentExpired | Dimension::Depth => INVALID_REQUEST,
        // A parameter's value: ttl_seconds, max_uses, drop_request_context, sizes, a new
        // token that narrows nothing.
        Dimension::Expiry
        | Dimension::Uses
        | Dimension::Context
        | Dimension::Size
        | Dimension::NotNarrower => INVALID_REQUEST,
    }
}

impl From<AuthError> for OAuthError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Limited { caller, limited } => OAuthError {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(seconds_up(limited.retry_after)),
                ..OAuthError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    TEMPORARILY_UNAVAILABLE,
                    format!("rate limit: {caller:?} is limited to {limited}"),
                )
            },
            AuthError::BadCredential | AuthError::Unproven(_) | AuthError::Forbidden(_) => {
                OAuthError::invalid_client(e.to_string())
            }
            // Two proofs, a header twice, a malformed value (RFC 6749: "utilizes more
            // than one mechanism for authenticating the client" is invalid_request).
            AuthError::Malformed(_) => OAuthError::invalid_request(e.to_string()),
            AuthError::Exhausted(_) | AuthError::Unavailable(_) => {
                OAuthError::unavailable(e.to_string(), 1)
            }
        }
    }
}

impl From<ServiceError> for OAuthError {
    fn from(e: ServiceError) -> Self {
        let description = e.to_string();
        match e {
            ServiceError::Auth(a) => a.into(),
            ServiceError::Invalid(_) | ServiceError::IdempotencyReused => {
                OAuthError::invalid_request(description)
            }
            ServiceError::Unauthenticated(_) => OAuthError::invalid_client(description),
            ServiceError::PermissionDenied(_) => OAuthError::unauthorized_client(description),
            ServiceError::ParentToken(p) | ServiceError::Token(p) => {
                OAuthError::invalid_request(format!("subject_token: {}", problem(p)))
            }
            // Nothing more can be derived from this subject token.
            ServiceError::FanOut(_) | ServiceError::TxnFull(_) | ServiceError::UsesLeft => {
                OAuthError::invalid_request(format!("subject_token: {description}"))
            }
            ServiceError::NotFound(_) => OAuthError::invalid_request(description),
            // Consent operations have no OAuth face; the consent page maps its own.
            ServiceError::Consent(_)
            | ServiceError::TooManyConsents(_)
            | ServiceError::FailedPrecondition(_) => OAuthError::invalid_request(description),
            ServiceError::MintRefused(n) | ServiceError::Narrowing(n) => OAuthError::new(
                StatusCode::BAD_REQUEST,
                narrowing_code(n.dimension),
                n.to_string(),
            ),
            ServiceError::Store(StoreError::ParentRevoked) => {
                OAuthError::invalid_request("subject_token: the token is revoked")
            }
            ServiceError::Store(StoreError::ParentMissing | StoreError::NotFound) => {
                OAuthError::invalid_request("subject_token: not a valid token")
            }
            ServiceError::Store(
                StoreError::UsesExhausted
                | StoreError::FanOutExceeded { .. }
                | StoreError::TxnFull { .. },
            ) => OAuthError::invalid_request(format!("subject_token: {description}")),
            // A concurrent write under the same key: retrying is all it takes.
            // A JWT refused for what the token is (use-limited, action checks only).
            ServiceError::Signing(crate::signing::SigningError::Refused(why)) => {
                OAuthError::invalid_request(why)
            }
            ServiceError::Signing(_) => {
                tracing::error!(error = %description, "signing failure");
                OAuthError::unavailable("signing is unavailable; retry later", 1)
            }
            ServiceError::Store(StoreError::Conflict) => {
                OAuthError::unavailable("a concurrent request conflicted; retry", 1)
            }
            ServiceError::Store(_) => {
                // The engine's message stays in the server's log.
                tracing::error!(error = %description, "storage failure");
                OAuthError::unavailable("storage is unavailable; retry later", 1)
            }
        }
    }
}

/// What a subject token's problem says (never which of unknown and forged it was).
fn problem(p: ParentProblem) -> &'static str {
    match p {
        ParentProblem::Malformed | ParentProblem::Invalid => "not a valid token",
        ParentProblem::Revoked => "the token is revoked",
    }
}

impl From<SubjectError> for OAuthError {
    fn from(e: SubjectError) -> Self {
        match e {
            SubjectError::Unsupported(_) => OAuthError::invalid_request(e.to_string()),
            SubjectError::Invalid(_) | SubjectError::NoScope => {
                OAuthError::invalid_request(e.to_string())
            }
            // The details (the JWKS URL, the fetch error) stay in the server's log.
            SubjectError::Unavailable(_) | SubjectError::Config(_) => {
                tracing::warn!(error = %e, "a subject token's issuer is unavailable");
                OAuthError::unavailable(
                    "subject_token: the issuer's keys are unavailable; retry later",
                    5,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::NarrowingError;

    const EVERY_DIMENSION: [Dimension; 16] = [
        Dimension::ParentExpired,
        Dimension::Holder,
        Dimension::Scopes,
        Dimension::Claims,
        Dimension::Audience,
        Dimension::Targets,
        Dimension::Expiry,
        Dimension::NotNarrower,
        Dimension::Uses,
        Dimension::Depth,
        Dimension::Loop,
        Dimension::Size,
        Dimension::Context,
        Dimension::Ceiling,
        Dimension::InvalidScope,
        Dimension::Party,
    ];

    /// Every dimension has its code, and the answer names the dimension and its detail.
    #[test]
    fn every_refused_dimension_maps_to_its_code_and_is_named() {
        for d in EVERY_DIMENSION {
            let expected = match d {
                Dimension::Scopes
                | Dimension::Claims
                | Dimension::Ceiling
                | Dimension::InvalidScope => INVALID_SCOPE,
                Dimension::Audience | Dimension::Targets | Dimension::Party | Dimension::Loop => {
                    INVALID_TARGET
                }
                Dimension::Holder | Dimension::ParentExpired | Dimension::Depth => INVALID_REQUEST,
                Dimension::Expiry
                | Dimension::Uses
                | Dimension::Context
                | Dimension::Size
                | Dimension::NotNarrower => INVALID_REQUEST,
            };
            let refusal = NarrowingError {
                dimension: d,
                detail: "scope \"x\" is not held".into(),
            };
            for e in [
                ServiceError::Narrowing(refusal.clone()),
                ServiceError::MintRefused(refusal.clone()),
            ] {
                let o = OAuthError::from(e);
                assert_eq!(o.error, expected, "{d:?}");
                assert_eq!(o.status, StatusCode::BAD_REQUEST, "{d:?}");
                assert_eq!(
                    o.description,
                    format!("{}: scope 'x' is not held", d.as_str()),
                    "{d:?}"
                );
            }
        }
    }

    #[test]
    fn authentication_failures_are_invalid_client_with_401_and_a_challenge() {
        for e in [
            AuthError::BadCredential,
            AuthError::Unproven("writ-client-assertion: bad signature".into()),
            AuthError::Forbidden("\"x\" is disabled by an operator".into()),
        ] {
            let o = OAuthError::from(ServiceError::from(e));
            assert_eq!(
                (o.status, o.error),
                (StatusCode::UNAUTHORIZED, INVALID_CLIENT)
            );
            let r = o.into_response();
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(r.headers()[header::PRAGMA], "no-cache");
        }
        let o = OAuthError::from(ServiceError::Unauthenticated("who?".into()));
        assert_eq!(
            (o.status, o.error),
            (StatusCode::UNAUTHORIZED, INVALID_CLIENT)
        );
        // Two proofs at once: the request is malformed.
        let o = OAuthError::from(AuthError::Malformed("present one proof".into()));
        assert_eq!(
            (o.status, o.error),
            (StatusCode::BAD_REQUEST, INVALID_REQUEST)
        );
        let o = OAuthError::from(ServiceError::PermissionDenied("needs minter".into()));
        assert_eq!(o.error, UNAUTHORIZED_CLIENT);
    }

    #[test]
    fn unusable_subject_tokens_are_invalid_request_and_faults_ask_to_wait() {
        for p in [
            ParentProblem::Malformed,
            ParentProblem::Invalid,
            ParentProblem::Revoked,
        ] {
            let o = OAuthError::from(ServiceError::ParentToken(p));
            assert_eq!(o.error, INVALID_REQUEST);
            assert!(o.description.starts_with("subject_token: "), "{o:?}");
        }
        for e in [
            ServiceError::FanOut(16),
            ServiceError::TxnFull(4096),
            ServiceError::UsesLeft,
            ServiceError::Store(StoreError::ParentRevoked),
            ServiceError::Store(StoreError::UsesExhausted),
        ] {
            assert_eq!(OAuthError::from(e).error, INVALID_REQUEST);
        }
        let o = OAuthError::from(ServiceError::Store(StoreError::Task("disk on fire".into())));
        assert_eq!(
            (o.status, o.error),
            (StatusCode::SERVICE_UNAVAILABLE, TEMPORARILY_UNAVAILABLE)
        );
        assert!(
            !o.description.contains("disk"),
            "engine details stay in the log"
        );
        assert_eq!(o.retry_after, Some(1));
        let limited = crate::ratelimit::Limited {
            retry_after: Duration::from_millis(1500),
            class: "agent",
            limit: crate::ratelimit::RoleLimit {
                requests_per_second: 1,
                burst: 1,
            },
        };
        let o = OAuthError::from(AuthError::Limited {
            caller: "a".into(),
            limited,
        });
        assert_eq!(o.status, StatusCode::TOO_MANY_REQUESTS);
        let r = o.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn subject_errors_map_by_whose_problem_it_is() {
        let o = OAuthError::from(SubjectError::Unsupported("refresh tokens".into()));
        assert_eq!(o.error, INVALID_REQUEST);
        assert!(o.description.starts_with("subject_token_type"), "{o:?}");
        assert_eq!(
            OAuthError::from(SubjectError::Invalid("expired".into())).error,
            INVALID_REQUEST
        );
        assert_eq!(
            OAuthError::from(SubjectError::NoScope).error,
            INVALID_REQUEST
        );
        let o = OAuthError::from(SubjectError::Unavailable("jwks".into()));
        assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn descriptions_hold_only_allowed_characters_and_are_bounded() {
        let o = OAuthError::invalid_request("scope: \"caf\u{e9}\\x\"\n");
        assert_eq!(o.description, "scope: 'caf?/x'?");
        let o = OAuthError::invalid_request("x".repeat(10_000));
        assert!(o.description.len() <= MAX_STATUS_MESSAGE);
        assert!(o.description.ends_with("..."));
        assert!(o.description.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }
}
