//! The token exchange from the user's own token: an access token from the user's
//! authorization server (a JWT, its JWKS served by a local HTTP server) exchanged by a
//! minter at `POST /token` for a root transaction token, never wider than the user's
//! token; then the holder's exchange of that root for a narrower token, and introspection
//! showing the whole chain. Every refusal of an external subject token answers its RFC
//! 6749 error and starts no transaction.
// Test code: unwrap is the assertion, and JWTs are dated from the wall clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use writ_e2e::*;
use writ_server::subject::IssuerConfig;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "https://writ.example";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An ES256 key of the user's authorization server.
struct IdpKey {
    kid: String,
    private_pem: String,
    jwk: Value,
}

impl IdpKey {
    fn new(kid: &str) -> IdpKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // Uncompressed point: 0x04 ‖ x ‖ y.
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4));
        IdpKey {
            kid: kid.into(),
            private_pem: pair.serialize_pem(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
            }),
        }
    }

    /// `claims` signed as an RFC 9068 access token (`typ: at+jwt`).
    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// alice's access token for Writ, valid for ten minutes, with `scope`.
fn access_token_claims(scope: &str) -> Value {
    let t = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": scope,
        "iat": t, "nbf": t, "exp": t + 600, "client_id": "travel-app", "jti": "at-1",
        "amr": ["pwd", "otp"],
    })
}

/// Serves `{"keys": [jwk]}` at `http://127.0.0.1:PORT/jwks`, counting the requests.
async fn serve_jwks(jwk: Value) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let body = json!({ "keys": [jwk] }).to_string();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks"), hits)
}

/// The exchange of `subject` (an external access token) for a root for `audience`.
fn exchange<'a>(
    subject: &'a str,
    audience: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", TXN_TOKEN),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", audience),
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test]
async fn a_users_access_token_becomes_a_root_never_wider_and_the_chain_goes_on() {
    let idp = IdpKey::new("idp-2026");
    let (jwks_uri, hits) = serve_jwks(idp.jwk.clone()).await;
    let srv = TestServer::start_proven_with(|c| {
        c.subject_tokens.issuers = vec![IssuerConfig {
            jwks_uri: Some(jwks_uri),
            ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
        }];
    })
    .await;
    let planner = srv.spiffe("agent/planner");
    let booking = srv.spiffe("agent/booking");
    let url = srv.http_url("/token");
    let bearer = format!("Bearer {}", srv.credential());
    let auth = [("authorization", bearer.as_str())];
    let minter = srv.http_client(None, HttpVersion::Any);

    // The minter (the gateway that authenticated alice) exchanges her access token for a
    // root held by planner, which may pass it to booking: the scope asked for is within
    // the token's.
    let access = idp.sign(&access_token_claims("trips:book payments:charge profile"));
    let form = exchange(
        &access,
        &planner,
        &[
            ("scope", "trips:book payments:charge"),
            ("targets", booking.as_str()),
            ("request_context", r#"{"req_ip":"203.0.113.7"}"#),
            ("request_details", r#"{"trip":"lisbon-2026"}"#),
            ("purpose", "book a trip"),
        ],
    );
    let a = post_form(&minter, &url, &form, &auth).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["issued_token_type"], TXN_TOKEN, "{a:?}");
    assert_eq!(a.json["token_type"], "N_A", "{a:?}");
    assert_eq!(a.json["scope"], "payments:charge trips:book", "{a:?}");
    assert!(a.json.get("refresh_token").is_none(), "{a:?}");
    assert_eq!(a.header("cache-control"), "no-store");
    let expires_in = a.json["expires_in"].as_u64().unwrap();
    assert!(
        (1..=600).contains(&expires_in),
        "never beyond the access token: {a:?}"
    );
    let root = a.json["access_token"].as_str().unwrap().to_owned();
    assert!(root.starts_with("writ_"), "an opaque Writ token by default");
    assert!(hits.load(Ordering::SeqCst) >= 1, "the JWKS was fetched");

    // It is a root for alice, held by planner, with the contexts asked for and the
    // issuer and authentication the access token stated.
    let v = ok(
        srv.svid_client("agent/planner")
            .await
            .validate(introspect(&root))
            .await,
        "validate",
    );
    assert!(v.active, "{v:?}");
    let info = v.info.unwrap();
    assert_eq!(info.subject, "alice");
    assert_eq!(info.depth, 0);
    assert_eq!(info.audience.as_ref().unwrap().id, planner);
    assert_eq!(
        sorted(&info.scopes.iter().map(String::as_str).collect::<Vec<_>>()),
        ["payments:charge", "trips:book"]
    );
    assert_eq!(info.tctx["trip"], "lisbon-2026");
    assert_eq!(info.rctx["req_ip"], "203.0.113.7");
    assert_eq!(
        info.tctx["subject_issuer"], ISSUER,
        "recorded where no hop drops it"
    );
    assert_eq!(info.tctx["authn"], "pwd otp");
    assert!(info.expires_at_unix_ms / 1000 <= now() + 600);

    // The holder exchanges it for a narrower token for booking (a Downscope by what the
    // subject token is); booking introspects it and sees the chain, current actor first.
    let planner_http = srv.http_svid_client("agent/planner");
    let form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", TXN_TOKEN),
        ("subject_token", root.as_str()),
        ("subject_token_type", TXN_TOKEN),
        ("audience", booking.as_str()),
        ("scope", "trips:book"),
    ];
    let a = post_form(&planner_http, &url, &form, &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    let child = a.json["access_token"].as_str().unwrap().to_owned();
    let booking_http = srv.http_svid_client("agent/booking");
    let i = post_form(
        &booking_http,
        &srv.http_url("/introspect"),
        &[("token", child.as_str())],
        &[],
    )
    .await;
    assert_eq!(i.status, 200, "{i:?}");
    assert_eq!(i.json["active"], true, "{i:?}");
    assert_eq!(i.json["sub"], "alice");
    assert_eq!(i.json["scope"], "trips:book");
    assert_eq!(
        i.json["act"]["sub"],
        planner.as_str(),
        "outermost = current actor: {i:?}"
    );
    assert!(
        i.json["act"]["act"]["sub"].is_string(),
        "the minter below it: {i:?}"
    );
    assert_eq!(i.json["agent_traffic"], true, "{i:?}");

    // Never wider than the access token: a scope it does not grant is invalid_scope.
    post_form(
        &minter,
        &url,
        &exchange(&access, &planner, &[("scope", "trips:book admin")]),
        &auth,
    )
    .await
    .assert_error(400, "invalid_scope", &["admin"]);

    // Refusals of the subject token itself, each starting nothing.
    let stranger = IdpKey::new("idp-2026"); // the same kid, another key: a forgery
    let expired = {
        let mut c = access_token_claims("trips:book");
        c["iat"] = json!(now() - 1200);
        c["nbf"] = json!(now() - 1200);
        c["exp"] = json!(now() - 600);
        idp.sign(&c)
    };
    let wrong_aud = {
        let mut c = access_token_claims("trips:book");
        c["aud"] = json!("https://another.example");
        idp.sign(&c)
    };
    let wrong_iss = {
        let mut c = access_token_claims("trips:book");
        c["iss"] = json!("https://evil.example");
        idp.sign(&c)
    };
    let no_scope = {
        let mut c = access_token_claims("trips:book");
        c.as_object_mut().unwrap().remove("scope");
        idp.sign(&c)
    };
    let forged = stranger.sign(&access_token_claims("trips:book"));
    for (what, token, needle) in [
        ("expired", expired.as_str(), "exp"),
        ("another audience", wrong_aud.as_str(), "aud"),
        ("another issuer", wrong_iss.as_str(), "iss"),
        ("no scope", no_scope.as_str(), "scope"),
        ("signed by another key", forged.as_str(), "signature"),
    ] {
        let a = post_form(&minter, &url, &exchange(token, &planner, &[]), &auth).await;
        assert_eq!(a.status, 400, "{what}: {a:?}");
        assert_eq!(a.json["error"], "invalid_request", "{what}: {a:?}");
        let description = a.json["error_description"].as_str().unwrap();
        assert!(description.contains(needle), "{what}: {description}");
        assert!(
            !description.contains(token),
            "{what}: the token is never echoed"
        );
        assert!(a.json.get("access_token").is_none());
    }
    // A refresh token is never a subject token, whatever it holds.
    let a = post_form(
        &minter,
        &url,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("requested_token_type", TXN_TOKEN),
            ("subject_token", access.as_str()),
            ("subject_token_type", REFRESH_TOKEN),
            ("audience", planner.as_str()),
        ],
        &auth,
    )
    .await;
    a.assert_error(400, "invalid_request", &["refresh"]);
    // Only a minter mints: an agent presenting alice's access token is refused before the
    // token is looked at.
    post_form(&planner_http, &url, &exchange(&access, &planner, &[]), &[])
        .await
        .assert_error(400, "unauthorized_client", &["minter"]);

    // One transaction was started by all of this: the first exchange's.
    let txns = ok(
        srv.operator()
            .await
            .list_transactions(pb::ListTransactionsRequest {
                subject: "alice".into(),
                ..Default::default()
            })
            .await,
        "list",
    );
    assert_eq!(txns.transactions.len(), 1, "{txns:?}");
}
