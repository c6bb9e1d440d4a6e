//! The service's one error enum and its mapping to gRPC status codes, in one place.

use crate::auth::AuthError;
use writ_api::FieldError;
use writ_core::narrow::{Dimension, NarrowingError};
use writ_store::StoreError;

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
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
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

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        use tonic::Code;
        let code = match &e {
            ServiceError::Invalid(_) => Code::InvalidArgument,
            ServiceError::Auth(AuthError::BadCredential) | ServiceError::Unauthenticated(_) => {
                Code::Unauthenticated
            }
            ServiceError::Auth(AuthError::Malformed(_)) => Code::InvalidArgument,
            ServiceError::Auth(AuthError::Forbidden(_)) => Code::PermissionDenied,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::ParentToken(ParentProblem::Malformed) => Code::InvalidArgument,
            ServiceError::ParentToken(ParentProblem::Invalid)
            | ServiceError::Token(ParentProblem::Invalid) => Code::Unauthenticated,
            ServiceError::ParentToken(ParentProblem::Revoked)
            | ServiceError::Token(ParentProblem::Revoked) => Code::FailedPrecondition,
            ServiceError::Token(ParentProblem::Malformed) => Code::InvalidArgument,
            ServiceError::FanOut(_) | ServiceError::TxnFull(_) => Code::ResourceExhausted,
            ServiceError::UsesLeft => Code::FailedPrecondition,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::MintRefused(n) if n.dimension == Dimension::Loop => {
                Code::PermissionDenied
            }
            ServiceError::MintRefused(_) => Code::InvalidArgument,
            ServiceError::Narrowing(n) => match n.dimension {
                Dimension::ParentExpired | Dimension::NotNarrower | Dimension::Depth => {
                    Code::FailedPrecondition
                }
                Dimension::Holder
                | Dimension::Scopes
                | Dimension::Claims
                | Dimension::Audience
                | Dimension::Targets
                | Dimension::Expiry
                | Dimension::Uses
                | Dimension::Loop => Code::PermissionDenied,
            },
            ServiceError::Store(StoreError::Conflict) => Code::Aborted,
            ServiceError::Store(StoreError::ParentRevoked | StoreError::UsesExhausted) => {
                Code::FailedPrecondition
            }
            ServiceError::Store(StoreError::FanOutExceeded { .. } | StoreError::TxnFull { .. }) => {
                Code::ResourceExhausted
            }
            ServiceError::Store(StoreError::ParentMissing) => Code::Unauthenticated,
            ServiceError::Store(StoreError::NotFound) => Code::NotFound,
            ServiceError::Store(_) => Code::Unavailable,
        };
        if code == Code::Unavailable {
            // The engine's message stays in the server's log, not in the caller's hands.
            tracing::error!(error = %e, "storage failure");
            return tonic::Status::unavailable("storage is unavailable; retry later");
        }
        tonic::Status::new(code, e.to_string())
    }
}
