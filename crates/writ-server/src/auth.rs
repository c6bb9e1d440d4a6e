//! The caller-identity seam: the one place that decides who is calling.
//!
//! Today a minter proves itself with a configured credential (`authorization: Bearer
//! <credential>`), and any other caller *asserts* its identity in the `x-writ-caller`
//! metadata header. That assertion is not authenticated: it is an interim measure until
//! mTLS with SPIFFE-style identities and client credentials replace the body of
//! [`Authenticator::identify`]. Nothing else in the server reads caller metadata.

use crate::secrets::Minters;
use tonic::metadata::MetadataMap;

/// Metadata header carrying an asserted caller identity (interim; see module docs).
pub const CALLER_HEADER: &str = "x-writ-caller";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A configured minter, authenticated by its credential.
    Minter(String),
    /// A party identified by `id` (an agent, service or API).
    Party(String),
    /// No identity presented.
    Anonymous,
}

impl Caller {
    /// The caller's identity, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Minter(id) | Caller::Party(id) => Some(id),
            Caller::Anonymous => None,
        }
    }
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A credential was presented and is wrong.
    #[error("authorization: the credential is not valid")]
    BadCredential,
    /// A header is malformed.
    #[error("{0}")]
    Malformed(String),
}

/// Identifies callers from request metadata.
#[derive(Clone, Debug)]
pub struct Authenticator {
    minters: Minters,
}

impl Authenticator {
    /// An authenticator that knows these minters.
    pub fn new(minters: Minters) -> Self {
        Authenticator { minters }
    }

    /// Decides who is calling. A bearer credential wins; if it is present it must be
    /// valid, and an `x-writ-caller` header beside it must name the same minter.
    pub fn identify(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        let asserted = match md.get(CALLER_HEADER) {
            None => None,
            Some(v) => {
                let s = v.to_str().map_err(|_| {
                    AuthError::Malformed(format!("{CALLER_HEADER}: must be printable ASCII"))
                })?;
                writ_api::convert::id(CALLER_HEADER, s)
                    .map_err(|e| AuthError::Malformed(e.to_string()))?;
                Some(s.to_string())
            }
        };
        if let Some(v) = md.get("authorization") {
            let cred = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    AuthError::Malformed("authorization: expected `Bearer <credential>`".into())
                })?;
            let id = self
                .minters
                .identify(cred.trim())
                .ok_or(AuthError::BadCredential)?;
            if asserted.as_deref().is_some_and(|a| a != id) {
                return Err(AuthError::Malformed(format!(
                    "{CALLER_HEADER}: does not match the credential's identity"
                )));
            }
            return Ok(Caller::Minter(id.to_string()));
        }
        Ok(asserted.map_or(Caller::Anonymous, Caller::Party))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::credential_digest;

    fn auth() -> Authenticator {
        let mut m = Minters::default();
        m.add("gw".into(), credential_digest("c1"));
        Authenticator::new(m)
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn identifies_minters_parties_and_nobody() {
        let a = auth();
        assert_eq!(
            a.identify(&md(&[("authorization", "Bearer c1")])),
            Ok(Caller::Minter("gw".into()))
        );
        assert_eq!(
            a.identify(&md(&[("authorization", "Bearer c2")])),
            Err(AuthError::BadCredential)
        );
        assert!(a.identify(&md(&[("authorization", "c1")])).is_err());
        assert_eq!(
            a.identify(&md(&[(CALLER_HEADER, "planner")])),
            Ok(Caller::Party("planner".into()))
        );
        assert!(
            a.identify(&md(&[
                ("authorization", "Bearer c1"),
                (CALLER_HEADER, "other")
            ]))
            .is_err()
        );
        assert_eq!(a.identify(&md(&[])), Ok(Caller::Anonymous));
        assert!(a.identify(&md(&[(CALLER_HEADER, "a b")])).is_err());
    }
}
