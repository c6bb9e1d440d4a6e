//! The service's one error enum and its mapping to gRPC status codes, in one place.
//!
//! One rule decides the code: what can the caller do about it?
//! - `INVALID_ARGUMENT`: change the request (a malformed field, something too large, a
//!   child that narrows nothing, an idempotency key reused for another request);
//! - `UNAUTHENTICATED`: present a valid credential or token;
//! - `PERMISSION_DENIED`: ask for less, or as someone else (any widening, a loop, not the
//!   holder, the wrong role);
//! - `FAILED_PRECONDITION`: nothing, with this token now (expired, revoked, too few uses
//!   left, at the deepest depth);
//! - `RESOURCE_EXHAUSTED`: a count limit is reached (fan-out, tokens per transaction,
//!   watches); `NOT_FOUND`: no such token or transaction; `UNAVAILABLE`: retry later;
//!   `INTERNAL`: a JWT could not be signed or the signing keys not rotated (the server's
//!   log says why; the caller is told nothing more).
//!
//! Every message is cut to [`MAX_STATUS_MESSAGE`] bytes, so no request can make a large
//! `grpc-message` trailer.
//!
//! Every status also carries a `google.rpc.ErrorInfo` (AIP-193) in domain
//! [`ERROR_DOMAIN`]: a stable `reason` (UPPER_SNAKE_CASE, one per refusal a program
//! handles differently) and, where one applies, `metadata` naming the refused
//! `dimension`, the invalid `field` or the `consentRequestId`. Client libraries surface
//! them as typed errors; the message stays for people.

use crate::auth::AuthError;
use writ_api::FieldError;
use writ_core::ConsentError;
use writ_core::limits::MAX_DETAIL_BYTES;
use writ_core::narrow::{Dimension, NarrowingError};
use writ_core::text::truncate;
use writ_store::StoreError;

pub use writ_api::ERROR_DOMAIN;

/// Longest `grpc-message` the server sends, in bytes.
pub const MAX_STATUS_MESSAGE: usize = MAX_DETAIL_BYTES + 256;

/// Everything a Writ RPC can refuse or fail with. (Inactive tokens are not errors:
/// Validate answers them.)
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The caller could not be identified.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The operation requires an identity and none was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is identified but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The presented parent token is not usable.
    #[error("parent_token: {0}")]
    ParentToken(ParentProblem),
    /// The token presented to Revoke is not usable.
    #[error("token: {0}")]
    Token(ParentProblem),
    /// The parent already has the configured maximum of children.
    #[error("fan_out: the parent token already has {0} children (tokens.max_children)")]
    FanOut(u32),
    /// The transaction already holds the most tokens one tree may have.
    #[error("txn: the transaction already holds {0} tokens, the most one call tree may have")]
    TxnFull(usize),
    /// The parent has fewer uses left than the child would reserve.
    #[error("uses: the parent token has fewer uses left than the child's max_uses")]
    UsesLeft,
    /// The named token or transaction does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Mint refused by the rules.
    #[error("{0}")]
    MintRefused(NarrowingError),
    /// Downscope refused by the narrowing rules.
    #[error("{0}")]
    Narrowing(#[from] NarrowingError),
    /// A consent request's rule refused the operation.
    #[error(transparent)]
    Consent(#[from] ConsentError),
    /// The transaction already has the most open consent requests it may have.
    #[error(
        "the transaction already has {0} open consent requests, the most it may have; wait for one to be decided, redeemed or expire"
    )]
    TooManyConsents(usize),
    /// Nothing the caller can do with this request now (the message says why, naming
    /// the field).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The idempotency key already named a token issued for another request.
    #[error(
        "idempotency_key: already used for a different request (or by another caller's parent); use a new key"
    )]
    IdempotencyReused,

    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Signing a JWT or rotating the signing keys failed, or a rotation was refused for
    /// now.
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
}

/// The code of a refused narrowing (Mint or Downscope), by the rule above.
fn narrowing_code(d: Dimension) -> tonic::Code {
    use tonic::Code;
    match d {
        Dimension::Holder
        | Dimension::Scopes
        | Dimension::Claims
        | Dimension::Audience
        | Dimension::Targets
        | Dimension::Expiry
        | Dimension::Uses
        | Dimension::Loop
        | Dimension::Ceiling
        | Dimension::Party => Code::PermissionDenied,
        Dimension::ParentExpired | Dimension::Depth => Code::FailedPrecondition,
        Dimension::NotNarrower | Dimension::Size | Dimension::Context | Dimension::InvalidScope => {
            Code::InvalidArgument
        }
    }
}

/// The code of a refused consent operation, by the rule above: wait or give up
/// (pending, expired, redeemed, decided), ask as someone else or not at all (denied, the
/// wrong subject, party or token), or change the request (attributes).
fn consent_code(e: &ConsentError) -> tonic::Code {
    use tonic::Code;
    match e {
        ConsentError::Pending(_)
        | ConsentError::Expired(_)
        | ConsentError::Redeemed(_)
        | ConsentError::Decided(_) => Code::FailedPrecondition,
        ConsentError::Denied(_)
        | ConsentError::WrongSubject(_)
        | ConsentError::WrongParty(_)
        | ConsentError::WrongToken(_) => Code::PermissionDenied,
        ConsentError::Attributes(_) => Code::InvalidArgument,
    }
}

/// Why a presented parent token cannot be downscoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParentProblem {
    /// Not a Writ token at all.
    #[error("malformed token")]
    Malformed,
    /// Fails its integrity check, or no such token exists.
    #[error("not a valid token")]
    Invalid,
    /// Revoked (directly or through an ancestor): it may derive nothing.
    #[error("the token is revoked")]
    Revoked,
}

/// The machine-readable reason of `e` and its metadata (the `google.rpc.ErrorInfo` of
/// its status). Reasons are stable: clients branch on them.
fn error_info(e: &ServiceError) -> (&'static str, Vec<(&'static str, String)>) {
    use ParentProblem::{Invalid, Malformed, Revoked};
    let none = Vec::new;
    match e {
        ServiceError::Invalid(f) => ("INVALID_FIELD", vec![("field", f.field.clone())]),
        ServiceError::Auth(a) => (
            match a {
                AuthError::BadCredential => "BAD_CREDENTIAL",
                AuthError::Unproven(_) => "UNPROVEN_IDENTITY",
                AuthError::Exhausted(_) => "ASSERTIONS_EXHAUSTED",
                AuthError::Limited { .. } => "RATE_LIMITED",
                AuthError::Malformed(_) => "MALFORMED_HEADER",
                AuthError::Forbidden(_) => "FORBIDDEN",
                AuthError::Unavailable(_) => "UNAVAILABLE",
            },
            none(),
        ),
        ServiceError::Unauthenticated(_) => ("UNAUTHENTICATED", none()),
        ServiceError::PermissionDenied(_) => ("FORBIDDEN", none()),
        ServiceError::ParentToken(Malformed | Invalid)
        | ServiceError::Store(StoreError::ParentMissing) => ("PARENT_TOKEN_INVALID", none()),
        ServiceError::ParentToken(Revoked) | ServiceError::Store(StoreError::ParentRevoked) => {
            ("PARENT_TOKEN_REVOKED", none())
        }
        ServiceError::Token(Malformed | Invalid) => ("TOKEN_INVALID", none()),
        ServiceError::Token(Revoked) => ("TOKEN_REVOKED", none()),
        ServiceError::FanOut(_) | ServiceError::Store(StoreError::FanOutExceeded { .. }) => {
            ("FAN_OUT_EXCEEDED", none())
        }
        ServiceError::TxnFull(_) | ServiceError::Store(StoreError::TxnFull { .. }) => {
            ("TXN_FULL", none())
        }
        ServiceError::UsesLeft | ServiceError::Store(StoreError::UsesExhausted) => {
            ("NOT_ENOUGH_USES", none())
        }
        ServiceError::NotFound(_) | ServiceError::Store(StoreError::NotFound) => {
            ("NOT_FOUND", none())
        }
        ServiceError::MintRefused(n) => (
            "MINT_REFUSED",
            vec![("dimension", n.dimension.as_str().to_owned())],
        ),
        ServiceError::Narrowing(n) => (
            "NARROWING_REFUSED",
            vec![("dimension", n.dimension.as_str().to_owned())],
        ),
        ServiceError::IdempotencyReused => ("IDEMPOTENCY_KEY_REUSED", none()),
        ServiceError::Consent(c) | ServiceError::Store(StoreError::Consent(c)) => {
            let (reason, id) = match c {
                ConsentError::Attributes(_) => ("CONSENT_ATTRIBUTES", None),
                ConsentError::Pending(id) => ("CONSENT_PENDING", Some(id)),
                ConsentError::Denied(id) => ("CONSENT_DENIED", Some(id)),
                ConsentError::Expired(id) => ("CONSENT_EXPIRED", Some(id)),
                ConsentError::Redeemed(id) => ("CONSENT_REDEEMED", Some(id)),
                ConsentError::Decided(id) => ("CONSENT_DECIDED", Some(id)),
                ConsentError::WrongSubject(id) => ("CONSENT_WRONG_SUBJECT", Some(id)),
                ConsentError::WrongParty(id) => ("CONSENT_WRONG_PARTY", Some(id)),
                ConsentError::WrongToken(id) => ("CONSENT_WRONG_TOKEN", Some(id)),
            };
            let meta = id.map(|id| vec![("consentRequestId", id.to_string())]);
            (reason, meta.unwrap_or_default())
        }
        ServiceError::TooManyConsents(_)
        | ServiceError::Store(StoreError::TooManyConsents { .. }) => ("TOO_MANY_CONSENTS", none()),
        ServiceError::FailedPrecondition(_) => ("FAILED_PRECONDITION", none()),
        ServiceError::Store(StoreError::Conflict) => ("CONFLICT", none()),
        ServiceError::Store(_) => ("STORAGE_UNAVAILABLE", none()),
        ServiceError::Signing(crate::signing::SigningError::Refused(_)) => {
            ("SIGNING_REFUSED", none())
        }
        ServiceError::Signing(_) => ("SIGNING_FAILED", none()),
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        use tonic::Code;
        if let ServiceError::Auth(AuthError::Limited { caller, limited }) = &e {
            // RESOURCE_EXHAUSTED with google.rpc.RetryInfo and `retry-after`.
            return crate::ratelimit::status(limited, caller);
        }
        let code = match &e {
            ServiceError::Auth(AuthError::Limited { .. }) => Code::ResourceExhausted,
            ServiceError::Invalid(_) => Code::InvalidArgument,
            ServiceError::Auth(AuthError::BadCredential | AuthError::Unproven(_))
            | ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::Auth(AuthError::Exhausted(_)) => Code::ResourceExhausted,
            ServiceError::Auth(AuthError::Malformed(_)) => Code::InvalidArgument,
            ServiceError::Auth(AuthError::Forbidden(_)) => Code::PermissionDenied,
            ServiceError::Auth(AuthError::Unavailable(_)) => Code::Unavailable,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            // A token that does not verify or is not stored, malformed or not: present a
            // valid one. (Only Validate tells these apart, as an inactive reason.)
            ServiceError::ParentToken(ParentProblem::Malformed | ParentProblem::Invalid)
            | ServiceError::Token(ParentProblem::Malformed | ParentProblem::Invalid) => {
                Code::Unauthenticated
            }
            ServiceError::ParentToken(ParentProblem::Revoked)
            | ServiceError::Token(ParentProblem::Revoked) => Code::FailedPrecondition,
            ServiceError::FanOut(_) | ServiceError::TxnFull(_) => Code::ResourceExhausted,
            ServiceError::UsesLeft => Code::FailedPrecondition,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::MintRefused(n) | ServiceError::Narrowing(n) => {
                narrowing_code(n.dimension)
            }
            ServiceError::IdempotencyReused => Code::InvalidArgument,
            ServiceError::Consent(c) => consent_code(c),
            ServiceError::TooManyConsents(_) => Code::ResourceExhausted,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Store(StoreError::Conflict) => Code::Aborted,
            ServiceError::Store(StoreError::ParentRevoked | StoreError::UsesExhausted) => {
                Code::FailedPrecondition
            }
            ServiceError::Store(StoreError::FanOutExceeded { .. } | StoreError::TxnFull { .. }) => {
                Code::ResourceExhausted
            }
            ServiceError::Store(StoreError::ParentMissing) => Code::Unauthenticated,
            ServiceError::Store(StoreError::NotFound) => Code::NotFound,
            ServiceError::Store(StoreError::Consent(c)) => consent_code(c),
            ServiceError::Store(StoreError::TooManyConsents { .. }) => Code::ResourceExhausted,
            ServiceError::Store(_) => Code::Unavailable,
            ServiceError::Signing(crate::signing::SigningError::Refused(_)) => {
                Code::FailedPrecondition
            }
            ServiceError::Signing(_) => Code::Internal,
        };
        let (reason, metadata) = error_info(&e);
        if code == Code::Internal {
            // Never key material in it, but file paths and causes stay in the server's log.
            tracing::error!(error = %e, "JWT signing failure");
            let message = "JWT signing failed; see the server's log".to_owned();
            return writ_api::error_status(code, message, reason, metadata);
        }
        if code == Code::Unavailable {
            // The engine's message stays in the server's log, not in the caller's hands.
            tracing::error!(error = %e, "storage failure");
            let message = "storage is unavailable; retry later".to_owned();
            return writ_api::error_status(code, message, reason, metadata);
        }
        let message = truncate(e.to_string(), MAX_STATUS_MESSAGE);
        writ_api::error_status(code, message, reason, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::ConsentId;

    /// The `google.rpc.ErrorInfo` a client branches on: a refused narrowing names its
    /// dimension, a consent refusal its request, an invalid field the field; storage
    /// failures keep their engine message out of it.
    #[test]
    fn every_status_carries_writs_reason_and_its_metadata() {
        use tonic_types::StatusExt;
        let info = |e: ServiceError| {
            let s = tonic::Status::from(e);
            let i = s.get_details_error_info().expect("ErrorInfo");
            assert_eq!(i.domain, ERROR_DOMAIN);
            assert!(
                i.reason
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{}",
                i.reason
            );
            (s.code(), i.reason, i.metadata)
        };
        let (code, reason, meta) = info(ServiceError::Narrowing(NarrowingError {
            dimension: Dimension::Scopes,
            detail: "payments.refund is not held".into(),
        }));
        assert_eq!(
            (code, reason.as_str()),
            (tonic::Code::PermissionDenied, "NARROWING_REFUSED")
        );
        assert_eq!(meta.get("dimension").map(String::as_str), Some("scopes"));
        let (_, reason, meta) = info(ServiceError::MintRefused(NarrowingError {
            dimension: Dimension::Ceiling,
            detail: String::new(),
        }));
        assert_eq!(reason, "MINT_REFUSED");
        assert_eq!(meta.get("dimension").map(String::as_str), Some("ceiling"));
        let id = ConsentId([7; 16]);
        let (_, reason, meta) = info(ServiceError::Store(StoreError::Consent(
            ConsentError::Pending(id),
        )));
        assert_eq!(reason, "CONSENT_PENDING");
        assert_eq!(meta.get("consentRequestId"), Some(&id.to_string()));
        let (code, reason, meta) = info(ServiceError::Invalid(FieldError {
            field: "scopes[0]".into(),
            message: "empty".into(),
        }));
        assert_eq!(
            (code, reason.as_str()),
            (tonic::Code::InvalidArgument, "INVALID_FIELD")
        );
        assert_eq!(meta.get("field").map(String::as_str), Some("scopes[0]"));
        assert_eq!(
            info(ServiceError::IdempotencyReused).1,
            "IDEMPOTENCY_KEY_REUSED"
        );
        assert_eq!(
            info(ServiceError::ParentToken(ParentProblem::Revoked)).1,
            "PARENT_TOKEN_REVOKED"
        );
        let (code, reason, _) = info(ServiceError::Store(StoreError::Backend(
            "disk on fire".into(),
        )));
        assert_eq!(
            (code, reason.as_str()),
            (tonic::Code::Unavailable, "STORAGE_UNAVAILABLE")
        );
    }

    /// Each consent refusal gets the code of what the caller can do about it, and a
    /// message naming the request.
    #[test]
    fn consent_refusals_map_to_what_the_caller_can_do() {
        use tonic::Code;
        let id = ConsentId([1; 16]);
        for (e, code) in [
            (ConsentError::Pending(id), Code::FailedPrecondition),
            (ConsentError::Expired(id), Code::FailedPrecondition),
            (ConsentError::Redeemed(id), Code::FailedPrecondition),
            (ConsentError::Decided(id), Code::FailedPrecondition),
            (ConsentError::Denied(id), Code::PermissionDenied),
            (ConsentError::WrongSubject(id), Code::PermissionDenied),
            (ConsentError::WrongParty(id), Code::PermissionDenied),
            (ConsentError::WrongToken(id), Code::PermissionDenied),
        ] {
            let status = tonic::Status::from(ServiceError::Consent(e.clone()));
            assert_eq!(status.code(), code, "{e}");
            assert!(status.message().contains(&id.to_string()), "{status:?}");
            // The same refusal reported by the store maps alike.
            let status = tonic::Status::from(ServiceError::Store(StoreError::Consent(e)));
            assert_eq!(status.code(), code);
        }
        let attrs = ConsentError::Attributes("attribute \"a\" must have exactly one value".into());
        let status = tonic::Status::from(ServiceError::Consent(attrs));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("action.attributes"),
            "{status:?}"
        );
        assert_eq!(
            tonic::Status::from(ServiceError::TooManyConsents(32)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            tonic::Status::from(ServiceError::Store(StoreError::TooManyConsents {
                limit: 32
            }))
            .code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            tonic::Status::from(ServiceError::FailedPrecondition("x".into())).code(),
            Code::FailedPrecondition
        );
    }
}
