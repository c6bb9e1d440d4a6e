//! External subject tokens: the user's access or ID token (a JWT from the user's
//! authorization server) presented to the token endpoint, verified against its issuer's
//! JWKS before Writ mints a transaction for that user.
//!
//! BASE VERSION (issue 11 skeleton): the configuration and the API the token endpoint
//! uses; no issuer is ever accepted yet. The full version verifies signatures (RS256,
//! ES256, EdDSA), `iss`, `aud`, `exp`, `nbf`, reads the scope, and fetches JWKS from a
//! file or a URL with a bounded refresh.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// `[subject_tokens]`: the authorization servers whose tokens Writ accepts as subject
/// tokens of a token exchange.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectTokensConfig {
    /// Accepted issuers (`[[subject_tokens.issuers]]`). None: external subject tokens are
    /// refused.
    pub issuers: Vec<IssuerConfig>,
}

/// One accepted authorization server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// `aud` values accepted (a token must name at least one).
    pub audiences: Vec<String>,
    /// Its JWKS in a file (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// Its JWKS at a URL (fetched, cached, refreshed).
    pub jwks_uri: Option<String>,
}

/// A verified external subject token: who the user is and what the token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSubject {
    /// The `iss` it was verified against.
    pub issuer: String,
    /// The user (`sub`).
    pub subject: String,
    /// The scopes the token grants; never empty-by-default: a token whose scope cannot be
    /// determined is refused.
    pub scopes: BTreeSet<String>,
    /// Its `exp` (Unix seconds): the root token never outlives it.
    pub expires_at: u64,
    /// Request context worth recording (`rctx`), such as how the user authenticated.
    pub context: BTreeMap<String, String>,
}

/// Why a subject token was refused. Every variant but `Unavailable` is the caller's
/// problem (`invalid_request`/`invalid_grant` at the token endpoint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The token type is not accepted (a refresh token, SAML, ...) or no issuer is
    /// configured.
    #[error("subject_token_type: {0}")]
    Unsupported(String),
    /// The token does not verify (signature, issuer, audience, expiry, ...); says what.
    #[error("subject_token: {0}")]
    Invalid(String),
    /// The token verifies but its scope cannot be determined.
    #[error("subject_token: the token's scope cannot be determined")]
    NoScope,
    /// The issuer's keys cannot be fetched right now.
    #[error("subject_token: the issuer's keys are unavailable: {0}")]
    Unavailable(String),
}

/// Verifies external subject tokens against the configured issuers.
#[derive(Debug)]
pub struct SubjectVerifier {
    issuers: Vec<IssuerConfig>,
}

impl SubjectVerifier {
    /// A verifier for `config`'s issuers.
    pub fn new(config: &SubjectTokensConfig) -> Result<Arc<SubjectVerifier>, SubjectError> {
        Ok(Arc::new(SubjectVerifier {
            issuers: config.issuers.clone(),
        }))
    }

    /// Is any issuer configured?
    pub fn is_configured(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Verifies `token` of RFC 8693 type `token_type` at `now_secs`.
    pub async fn verify(
        &self,
        _token: &str,
        token_type: &str,
        _now_secs: u64,
    ) -> Result<ExternalSubject, SubjectError> {
        Err(SubjectError::Unsupported(format!(
            "{token_type:?} subject tokens are not accepted by this server yet"
        )))
    }
}
