//! `POST /introspect`: RFC 7662 token introspection for the resource server or agent a
//! token was issued to, through [`Service::validate`](crate::service::Service::validate)
//! (the same holder binding, audit trail and rate limit as gRPC's Validate).
//!
//! An active token answers [`writ_api::oauth::introspection`] plus `iss`; anything else
//! (inactive, revoked, expired, unknown, malformed, or another party's) answers exactly
//! `{"active": false}`, with the same status and headers whatever the reason. With
//! `Accept: application/jwt` (or `application/token-introspection+jwt`) the answer is an
//! RFC 9701 signed JWT (`typ: token-introspection+jwt`; `iss`, `aud` = the caller, `iat`,
//! `token_introspection` = the JSON answer). `token_type_hint` is accepted and ignored:
//! Writ issues one kind of token. `txn_token_jwt=true` (for a caller the policy marks
//! `txn_token_jwt`, asked before the token is looked at) adds `txn_token`: a Txn-Token JWT
//! standing for the active token, for the caller's own internal calls (the phantom-token
//! pattern), exactly as gRPC Validate's option.

use super::HttpState;
use super::error::{OAuthError, json_response, with_no_store};
use super::form::Form;
use crate::auth::Caller;
use crate::service::{self, Validation};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use writ_store::TokenStore;

/// The JOSE `typ` of a signed introspection answer (RFC 9701).
pub const INTROSPECTION_JWT_TYP: &str = "token-introspection+jwt";
/// The media type of a signed introspection answer (RFC 9701).
pub const INTROSPECTION_JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// `POST /introspect`.
pub async fn handle<S: TokenStore>(
    State(state): State<Arc<HttpState<S>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let answer = async {
        let (form, caller) = super::read_and_identify(&state, &parts, body).await?;
        introspect(&state, &caller, &form, wants_jwt(&parts.headers)).await
    };
    answer.await.unwrap_or_else(OAuthError::into_response)
}

async fn introspect<S: TokenStore>(
    state: &HttpState<S>,
    caller: &Caller,
    form: &Form,
    jwt: bool,
) -> Result<Response, OAuthError> {
    let Caller::Known(identity) = caller else {
        return Err(OAuthError::invalid_client(
            "client authentication is required: a client certificate (tls_client_auth) or a \
             client assertion (private_key_jwt) of the party the token was issued to",
        ));
    };
    let token = form.require("token", "the token to introspect")?;
    let want_txn_token = form.flag(super::token::TXN_TOKEN_JWT)?;
    if want_txn_token && !state.service.may_receive_jwt(&identity.actor.id) {
        return Err(OAuthError::invalid_request(format!(
            "{}: {} may not receive Txn-Token JWTs (the policy's txn_token_jwt)",
            super::token::TXN_TOKEN_JWT,
            writ_core::text::Shown(&identity.actor.id)
        )));
    }
    let answer = match state.service.validate(caller, token, None).await? {
        Validation::Active { record, .. } => {
            let latent = state.service.latent_scopes(&record);
            let mut m = writ_api::oauth::introspection(&record, &latent);
            m.insert("iss".into(), state.issuer.clone().into());
            // Never for a use-limited or action-check-only token (`jwt_refusal`).
            if want_txn_token && crate::signing::jwt_refusal(&record.grant).is_none() {
                let (jwt, _) = state
                    .signer
                    .txn_token(&record, &identity.actor.id, service::now_secs())
                    .map_err(|e| OAuthError::server_error(&e))?;
                m.insert("txn_token".into(), jwt.into());
            }
            Value::Object(m)
        }
        // Whatever the reason: nothing else, so no caller learns why.
        Validation::Inactive(_) => json!({"active": false}),
    };
    if !jwt {
        return Ok(json_response(StatusCode::OK, &answer));
    }
    let claims = json!({
        "iss": state.issuer,
        "aud": identity.actor.id,
        "iat": service::now_secs(),
        "token_introspection": answer,
    });
    let signed = state
        .signer
        .sign(INTROSPECTION_JWT_TYP, &claims)
        .map_err(|e| OAuthError::server_error(&e))?;
    Ok(with_no_store(
        StatusCode::OK,
        INTROSPECTION_JWT_MEDIA_TYPE,
        signed.into_bytes(),
    ))
}

/// Does `Accept` ask for the signed answer (`application/jwt` or
/// `application/token-introspection+jwt`, not with `q=0`)?
pub fn wants_jwt(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            !refused
                && (media.eq_ignore_ascii_case("application/jwt")
                    || media.eq_ignore_ascii_case(INTROSPECTION_JWT_MEDIA_TYPE))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_signed_answer_is_given_only_when_accepted() {
        for yes in [
            &["application/jwt"][..],
            &["Application/JWT"],
            &["application/json;q=0.5, application/jwt"],
            &["text/html", "application/token-introspection+jwt; q=1"],
        ] {
            assert!(wants_jwt(&accept(yes)), "{yes:?}");
        }
        for no in [
            &[][..],
            &["application/json"],
            &["*/*"],
            &["application/jwt;q=0"],
            &["application/jwt-not"],
        ] {
            assert!(!wants_jwt(&accept(no)), "{no:?}");
        }
    }
}
