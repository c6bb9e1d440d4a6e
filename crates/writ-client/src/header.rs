//! How a transaction token travels between hops: exactly one `Txn-Token` HTTP header or
//! `txn-token` gRPC metadata entry (the same HTTP/2 header), never `Authorization`, and
//! the type that holds a token secret so it cannot end up in a log by accident.

use crate::ClientError;
use http::{HeaderMap, HeaderValue};
use std::sync::Arc;
use tonic::metadata::MetadataValue;

/// The HTTP header (`Txn-Token`) and the gRPC metadata key (`txn-token`) that carry a
/// transaction token to the next hop: exactly one, never in `Authorization`.
pub use writ_api::oauth::{TXN_TOKEN_HEADER, TXN_TOKEN_METADATA};

/// A token secret (`writ_…`). `Debug` and `Display` are redacted; read it with
/// [`TokenSecret::expose`] only where it goes on the wire. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(Arc<str>);

impl TokenSecret {
    /// Wraps a token secret.
    pub fn new(token: impl Into<Arc<str>>) -> TokenSecret {
        TokenSecret(token.into())
    }

    /// The secret itself, for a Writ request or the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret as a `Txn-Token` header value, marked sensitive (never indexed by HPACK,
    /// redacted in `Debug`).
    pub fn header_value(&self) -> Result<HeaderValue, ClientError> {
        let mut v = HeaderValue::from_str(&self.0)
            .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA))?;
        v.set_sensitive(true);
        Ok(v)
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl std::fmt::Display for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Sets `token` as the one `txn-token` metadata entry of `request` (replacing any), for
/// the next hop. The value is marked sensitive: kept out of HPACK's dynamic table and out
/// of debug output.
pub fn attach_txn_token<T>(
    request: &mut tonic::Request<T>,
    token: &str,
) -> Result<(), ClientError> {
    let mut v: MetadataValue<tonic::metadata::Ascii> = token
        .parse()
        .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA))?;
    v.set_sensitive(true);
    request.metadata_mut().insert(TXN_TOKEN_METADATA, v);
    Ok(())
}

/// The transaction token `request` carries in `txn-token`: `None` when it carries none,
/// an error when it carries more than one (a proxy's beside the caller's: neither can be
/// trusted to be the one meant) or one that is not printable ASCII.
pub fn txn_token<T>(request: &tonic::Request<T>) -> Result<Option<&str>, ClientError> {
    let mut values = request.metadata().get_all(TXN_TOKEN_METADATA).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA)),
        (Some(_), Some(_)) => Err(ClientError::TxnTokenRepeated),
    }
}

/// [`txn_token`] on plain HTTP headers (`Txn-Token`, any case): `None` when absent, an
/// error when repeated or not visible ASCII.
pub fn txn_token_header(headers: &HeaderMap) -> Result<Option<&str>, ClientError> {
    let mut values = headers.get_all(TXN_TOKEN_METADATA).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| ClientError::Metadata(TXN_TOKEN_METADATA)),
        (Some(_), Some(_)) => Err(ClientError::TxnTokenRepeated),
    }
}

/// Removes every `Txn-Token` header of `headers` and sets `token` as the only one
/// (sensitive).
pub fn replace_txn_token_header(
    headers: &mut HeaderMap,
    token: &TokenSecret,
) -> Result<(), ClientError> {
    let v = token.header_value()?;
    // `remove` drops every value of the name; `insert` then adds exactly one.
    headers.remove(TXN_TOKEN_METADATA);
    headers.insert(TXN_TOKEN_METADATA, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_txn_token_rides_in_exactly_one_sensitive_metadata_entry() {
        assert_eq!(TXN_TOKEN_HEADER, "Txn-Token");
        assert_eq!(TXN_TOKEN_METADATA, "txn-token");
        let mut r = tonic::Request::new(());
        assert_eq!(txn_token(&r).unwrap(), None);
        attach_txn_token(&mut r, "writ_first").unwrap();
        attach_txn_token(&mut r, "writ_second").unwrap();
        assert_eq!(
            txn_token(&r).unwrap(),
            Some("writ_second"),
            "replaced, not added"
        );
        let v = r.metadata().get(TXN_TOKEN_METADATA).unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("writ_second"), "{v:?}");
        assert!(matches!(
            attach_txn_token(&mut r, "bad\nvalue"),
            Err(ClientError::Metadata(TXN_TOKEN_METADATA))
        ));
        r.metadata_mut()
            .append(TXN_TOKEN_METADATA, "writ_third".parse().unwrap());
        assert!(matches!(txn_token(&r), Err(ClientError::TxnTokenRepeated)));
    }

    #[test]
    fn http_headers_replace_every_txn_token_with_one_sensitive_child() {
        let mut h = HeaderMap::new();
        assert_eq!(txn_token_header(&h).unwrap(), None);
        // The header name is case-insensitive: Txn-Token and txn-token are one header.
        h.append(
            http::HeaderName::from_static("txn-token"),
            HeaderValue::from_static("writ_parent"),
        );
        h.append(
            http::HeaderName::try_from(TXN_TOKEN_HEADER).unwrap(),
            HeaderValue::from_static("writ_smuggled"),
        );
        assert!(matches!(
            txn_token_header(&h),
            Err(ClientError::TxnTokenRepeated)
        ));
        let child = TokenSecret::new("writ_child");
        replace_txn_token_header(&mut h, &child).unwrap();
        let all: Vec<_> = h.get_all(TXN_TOKEN_METADATA).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "writ_child");
        assert!(all[0].is_sensitive());
        assert_eq!(txn_token_header(&h).unwrap(), Some("writ_child"));
        h.insert(
            TXN_TOKEN_METADATA,
            HeaderValue::from_bytes(b"\xffx").unwrap(),
        );
        assert!(matches!(
            txn_token_header(&h),
            Err(ClientError::Metadata(_))
        ));
    }

    #[test]
    fn a_token_secret_never_shows_itself() {
        let t = TokenSecret::new("writ_secret123");
        assert_eq!(format!("{t:?}"), "TokenSecret(<redacted>)");
        assert_eq!(t.to_string(), "<redacted>");
        assert_eq!(t.expose(), "writ_secret123");
        let v = t.header_value().unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("secret"));
    }
}
