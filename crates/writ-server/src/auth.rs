//! The caller-identity seam: the one place that decides who is calling.
//!
//! Today minters and operators prove themselves with a configured credential
//! (`authorization: Bearer <credential>`), and any other caller *asserts* its identity in the `x-writ-caller`
//! metadata header. That assertion is not authenticated: it is an interim measure until
//! mTLS with SPIFFE-style identities and client credentials replace the body of
//! [`Authenticator::identify`]. Nothing else in the server reads caller metadata.
//!
//! Each identity header may appear at most once: a request carrying two values of
//! `x-writ-caller` or `authorization` is refused (`INVALID_ARGUMENT`) rather than resolved
//! by picking one, so a proxy that appends its own value after a client's cannot be
//! bypassed. Proxies must still strip these headers from clients.

use crate::error::ServiceError;
use crate::secrets::{Credentials, Role as CredentialRole};
use tonic::metadata::MetadataMap;
use writ_core::policy::{Role, Roles};
use writ_core::{Actor, AuthMethod};

/// Metadata header carrying an asserted caller identity (interim; see module docs).
pub const CALLER_HEADER: &str = "x-writ-caller";
/// Metadata header carrying a minter's or operator's bearer credential.
const AUTHORIZATION: &str = "authorization";

/// Who is calling: an authenticated identity with the roles it holds, or nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No identity presented.
    Anonymous,
    /// An identity, proven (or, in development mode, asserted) as `actor.auth` says.
    Known(Identity),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Who it is and how it proved it.
    pub actor: Actor,
    /// What it may do.
    pub roles: Roles,
}

impl Caller {
    /// A caller with `id`, proven by `auth`, holding `roles`.
    pub fn known(id: impl Into<String>, auth: AuthMethod, roles: &[Role]) -> Caller {
        Caller::Known(Identity {
            actor: Actor {
                id: id.into(),
                auth,
            },
            roles: Roles::of(roles),
        })
    }

    /// The caller's identity, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Known(i) => Some(&i.actor.id),
            Caller::Anonymous => None,
        }
    }

    /// The caller, if it holds one of `roles`: `UNAUTHENTICATED` for nobody (`needed` says
    /// what to present), `PERMISSION_DENIED` for a caller without the role.
    pub fn require(&self, roles: &[Role], needed: &str) -> Result<&Identity, ServiceError> {
        match self {
            Caller::Known(i) if i.roles.any(roles) => Ok(i),
            Caller::Known(i) => {
                let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                Err(ServiceError::PermissionDenied(format!(
                    "{:?} (roles: {}) needs the role {}",
                    i.actor.id,
                    if i.roles == Roles::NONE {
                        "none".to_owned()
                    } else {
                        i.roles.to_string()
                    },
                    wanted.join(" or ")
                )))
            }
            Caller::Anonymous => Err(ServiceError::Unauthenticated(needed.to_owned())),
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
    /// The caller is identified but claims what it may not.
    #[error("{0}")]
    Forbidden(String),
}

/// Identifies callers from request metadata.
#[derive(Clone, Debug)]
pub struct Authenticator {
    credentials: Credentials,
}

impl Authenticator {
    /// An authenticator that knows these credentialed identities.
    pub fn new(credentials: Credentials) -> Self {
        Authenticator { credentials }
    }

    /// Decides who is calling. A bearer credential wins; if it is present it must be
    /// valid, and an `x-writ-caller` header beside it must name the same minter. Nobody
    /// may assert a minter's identity without its credential. A header sent more than
    /// once is malformed.
    pub fn identify(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        for header in [CALLER_HEADER, AUTHORIZATION] {
            if md.get_all(header).iter().nth(1).is_some() {
                return Err(AuthError::Malformed(format!(
                    "{header}: sent more than once; send exactly one value"
                )));
            }
        }
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
        if let Some(v) = md.get(AUTHORIZATION) {
            let value = v.to_str().map_err(|_| AuthError::BadCredential)?;
            // RFC 7235: the scheme is case-insensitive.
            let cred = match value.split_once(' ') {
                Some((scheme, cred)) if scheme.eq_ignore_ascii_case("bearer") => cred.trim(),
                _ => return Err(AuthError::BadCredential),
            };
            let (id, role) = self
                .credentials
                .identify(cred)
                .ok_or(AuthError::BadCredential)?;
            if asserted.as_deref().is_some_and(|a| a != id) {
                return Err(AuthError::Forbidden(format!(
                    "{CALLER_HEADER}: does not match the credential's identity"
                )));
            }
            let role = match role {
                CredentialRole::Minter => Role::Minter,
                CredentialRole::Operator => Role::Operator,
            };
            return Ok(Caller::known(id, AuthMethod::Bearer, &[role]));
        }
        match asserted {
            Some(id) if self.credentials.is_credentialed_id(&id) => {
                Err(AuthError::Forbidden(format!(
                    "{CALLER_HEADER}: {id:?} is a minter or operator and must present its credential"
                )))
            }
            Some(id) => Ok(Caller::known(
                id,
                AuthMethod::Asserted,
                &[Role::Agent, Role::ResourceServer],
            )),
            None => Ok(Caller::Anonymous),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secrets::credential_digest;

    const C1: &str = "wmc_00000000000000000000000000000001";
    const OPS: &str = "woc_00000000000000000000000000000003";

    fn auth() -> Authenticator {
        let mut m = Credentials::default();
        m.add("gw".into(), CredentialRole::Minter, credential_digest(C1));
        m.add(
            "ops".into(),
            CredentialRole::Operator,
            credential_digest(OPS),
        );
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
        let bearer = format!("Bearer {C1}");
        let lower = format!("bearer {C1}");
        assert_eq!(
            a.identify(&md(&[("authorization", &bearer)])),
            Ok(Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]))
        );
        assert_eq!(
            a.identify(&md(&[("authorization", &lower)])),
            Ok(Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]))
        );
        let wrong = format!("Bearer {C1}x");
        assert_eq!(
            a.identify(&md(&[("authorization", &wrong)])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            a.identify(&md(&[("authorization", "Bearer ")])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            a.identify(&md(&[("authorization", C1)])),
            Err(AuthError::BadCredential)
        );
        assert_eq!(
            a.identify(&md(&[(CALLER_HEADER, "planner")])),
            Ok(Caller::known(
                "planner",
                AuthMethod::Asserted,
                &[Role::Agent, Role::ResourceServer]
            ))
        );
        assert!(matches!(
            a.identify(&md(&[("authorization", &bearer), (CALLER_HEADER, "other")])),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            a.identify(&md(&[(CALLER_HEADER, "gw")])),
            Err(AuthError::Forbidden(_))
        ));
        let ops = format!("Bearer {OPS}");
        assert_eq!(
            a.identify(&md(&[("authorization", &ops)])),
            Ok(Caller::known("ops", AuthMethod::Bearer, &[Role::Operator]))
        );
        assert!(matches!(
            a.identify(&md(&[(CALLER_HEADER, "ops")])),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(a.identify(&md(&[])), Ok(Caller::Anonymous));
        assert!(matches!(
            a.identify(&md(&[(CALLER_HEADER, "a b")])),
            Err(AuthError::Malformed(_))
        ));
    }

    /// Finding 3: a second value must not be ignored (the first used to win).
    #[test]
    fn a_header_sent_twice_is_refused_naming_it() {
        let a = auth();
        let mut callers = md(&[(CALLER_HEADER, "planner")]);
        callers.append(CALLER_HEADER, "booking".parse().unwrap());
        match a.identify(&callers) {
            Err(AuthError::Malformed(m)) => assert!(m.starts_with(CALLER_HEADER), "{m}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
        // Even two identical values, and even when the first is a valid credential.
        let bearer = format!("Bearer {C1}");
        let mut creds = md(&[("authorization", &bearer)]);
        creds.append("authorization", bearer.parse().unwrap());
        match a.identify(&creds) {
            Err(AuthError::Malformed(m)) => assert!(m.starts_with("authorization"), "{m}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
        let mut mixed = md(&[("authorization", &bearer)]);
        mixed.append("authorization", "Bearer other".parse().unwrap());
        assert!(matches!(a.identify(&mixed), Err(AuthError::Malformed(_))));
        let err = crate::error::ServiceError::from(a.identify(&callers).unwrap_err());
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }
}
