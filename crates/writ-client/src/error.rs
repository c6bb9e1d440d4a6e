//! The client's one error type. A refusal keeps Writ's status whole, so a caller can branch
//! on the stable `google.rpc.ErrorInfo` reason and its metadata instead of on messages.

use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

/// The `domain` of every `google.rpc.ErrorInfo` Writ answers.
pub const ERROR_DOMAIN: &str = "writ";

/// A boxed error, as tower and tonic pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect, or the address is invalid.
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        message: String,
    },
    /// A plaintext connection to a host that is not loopback was refused.
    #[error(
        "refusing plaintext gRPC to {addr}: not a loopback address (tokens and credentials would cross the network in the clear; connect with TLS)"
    )]
    Plaintext {
        /// The address given.
        addr: String,
    },
    /// A header value is not valid metadata.
    #[error("invalid {0}: not valid gRPC metadata")]
    Metadata(&'static str),
    /// A request carries more than one transaction token.
    #[error("txn-token: sent more than once; a request carries exactly one transaction token")]
    TxnTokenRepeated,
    /// The assertion source could not produce a client assertion; nothing was sent.
    #[error("the client assertion source failed: {0}")]
    Assertion(#[source] BoxError),
    /// The server refused or failed the request (or the connection failed: then the
    /// status has a `source`). [`ClientError::reason`] and its siblings read Writ's
    /// `google.rpc.ErrorInfo` from it.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl ClientError {
    /// The gRPC status, when the server answered one (or the transport made one up).
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The status code, when there is a status.
    pub fn code(&self) -> Option<Code> {
        self.status().map(tonic::Status::code)
    }

    /// Writ's `google.rpc.ErrorInfo` (domain `writ`), when the status carries one.
    pub fn error_info(&self) -> Option<tonic_types::ErrorInfo> {
        self.status()?
            .get_details_error_info()
            .filter(|i| i.domain == ERROR_DOMAIN)
    }

    /// The stable reason of a refusal (`NARROWING_REFUSED`, `TOKEN_REVOKED`,
    /// `CONSENT_PENDING`, …).
    pub fn reason(&self) -> Option<String> {
        self.error_info().map(|i| i.reason)
    }

    /// The refused dimension of `NARROWING_REFUSED` / `MINT_REFUSED` (`scopes`, `claims`,
    /// `audience`, `expiry`, `uses`, …).
    pub fn dimension(&self) -> Option<String> {
        self.metadata("dimension")
    }

    /// The invalid field of `INVALID_FIELD`.
    pub fn field(&self) -> Option<String> {
        self.metadata("field")
    }

    /// The consent request a `CONSENT_*` refusal is about.
    pub fn consent_request_id(&self) -> Option<String> {
        self.metadata("consentRequestId")
    }

    /// How long a rate-limited caller should wait (`google.rpc.RetryInfo` on
    /// `RESOURCE_EXHAUSTED`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.status()?
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.error_info()?.metadata.remove(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn refusal(reason: &str, meta: &[(&str, &str)]) -> ClientError {
        let details = ErrorDetails::with_error_info(
            reason,
            ERROR_DOMAIN,
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        ClientError::Status(tonic::Status::with_error_details(
            Code::PermissionDenied,
            "refused",
            details,
        ))
    }

    #[test]
    fn a_refusal_keeps_writs_reason_and_metadata() {
        let e = refusal("NARROWING_REFUSED", &[("dimension", "scopes")]);
        assert_eq!(e.code(), Some(Code::PermissionDenied));
        assert_eq!(e.reason().as_deref(), Some("NARROWING_REFUSED"));
        assert_eq!(e.dimension().as_deref(), Some("scopes"));
        assert_eq!(e.field(), None);
        let e = refusal("CONSENT_PENDING", &[("consentRequestId", "cns_1")]);
        assert_eq!(e.consent_request_id().as_deref(), Some("cns_1"));
        // Another domain's ErrorInfo is not Writ's.
        let other = ClientError::Status(tonic::Status::with_error_details(
            Code::Unavailable,
            "x",
            ErrorDetails::with_error_info("X", "example.com", std::collections::HashMap::new()),
        ));
        assert_eq!(other.reason(), None);
        assert_eq!(ClientError::TxnTokenRepeated.reason(), None);
    }
}
