//! `GET /.well-known/oauth-authorization-server` (RFC 8414 metadata) and
//! `GET /.well-known/jwks.json` (the keys that sign Writ's JWTs), both public.

use super::HttpState;
use super::token::{EXTERNAL_TOKEN_TYPES, TOKEN_EXCHANGE};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;
use writ_api::oauth::TXN_TOKEN_TYPE;
use writ_store::TokenStore;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/token";
/// The introspection endpoint's path.
pub const INTROSPECT_PATH: &str = "/introspect";
/// The RFC 8414 metadata's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// The JWKS's path.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// How long a verifier may cache the JWKS: short, so a rotated key is fetched soon.
pub const JWKS_MAX_AGE_SECS: u32 = 60;
/// How long a client may cache the metadata.
pub const METADATA_MAX_AGE_SECS: u32 = 300;

/// How callers authenticate at the token and introspection endpoints (RFC 8705 mTLS with
/// an X.509-SVID, RFC 7523 client assertions), and the algorithms assertions may use.
const AUTH_METHODS: [&str; 2] = ["tls_client_auth", "private_key_jwt"];
const ASSERTION_ALGS: [&str; 2] = ["EdDSA", "ES256"];

/// The RFC 8414 document for `issuer`, whose JWTs are signed with `algorithms`.
pub fn document(issuer: &str, algorithms: &[&str]) -> serde_json::Value {
    let mut subject_types = vec![TXN_TOKEN_TYPE];
    subject_types.extend(EXTERNAL_TOKEN_TYPES);
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "introspection_endpoint": format!("{issuer}{INTROSPECT_PATH}"),
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "grant_types_supported": [TOKEN_EXCHANGE],
        // No authorization endpoint: no response type.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_signing_alg_values_supported": algorithms,
        "tls_client_certificate_bound_access_tokens": false,
        // Token exchange (RFC 8693): what is issued and what may be exchanged.
        "issued_token_types_supported": [TXN_TOKEN_TYPE],
        "subject_token_types_supported": subject_types,
        "txn_token_signing_alg_values_supported": algorithms,
    })
}

/// `GET /.well-known/oauth-authorization-server`.
pub async fn metadata<S: TokenStore>(State(state): State<Arc<HttpState<S>>>) -> Response {
    let doc = document(&state.issuer, &state.signer.algorithms());
    cached(&doc, METADATA_MAX_AGE_SECS)
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks<S: TokenStore>(State(state): State<Arc<HttpState<S>>>) -> Response {
    cached(&state.signer.jwks(), JWKS_MAX_AGE_SECS)
}

/// `value` as JSON that may be cached for `max_age` seconds.
fn cached(value: &serde_json::Value, max_age: u32) -> Response {
    let mut response = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={max_age}"))
            .unwrap_or(HeaderValue::from_static("no-store")),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_the_endpoints_under_the_issuer() {
        let d = document("https://writ.example:7434", &["EdDSA"]);
        assert_eq!(d["issuer"], "https://writ.example:7434");
        assert_eq!(d["token_endpoint"], "https://writ.example:7434/token");
        assert_eq!(
            d["jwks_uri"],
            "https://writ.example:7434/.well-known/jwks.json"
        );
        assert_eq!(d["grant_types_supported"], json!([TOKEN_EXCHANGE]));
        assert_eq!(d["issued_token_types_supported"], json!([TXN_TOKEN_TYPE]));
        assert_eq!(
            d["introspection_signing_alg_values_supported"],
            json!(["EdDSA"])
        );
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["tls_client_auth", "private_key_jwt"])
        );
        let subject_types = d["subject_token_types_supported"].as_array().unwrap();
        assert!(
            !subject_types
                .iter()
                .any(|t| t.as_str().unwrap().ends_with("refresh_token"))
        );
    }
}
