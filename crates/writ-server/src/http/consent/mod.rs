//! The consent page: where a person approves or denies one high-privilege action an
//! agent asks to perform for them.
//!
//! SKELETON: the configuration is fixed; the page lands with the page part of issue 12.

use serde::Deserialize;
use std::path::PathBuf;

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
