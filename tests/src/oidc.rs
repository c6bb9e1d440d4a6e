//! A small OpenID Provider stand-in for the consent page's sign-in: an axum server on
//! `127.0.0.1:0` with an authorization endpoint that signs in whichever user the test
//! chose (no login form: it redirects straight back with a code), a token endpoint that
//! checks the code, the redirect URI and the PKCE verifier and answers an Ed25519-signed
//! ID token carrying the authorization request's `nonce`, and its JWKS.
//!
//! It records every authorization request's parameters so a test can check what Writ
//! sent to the provider (and that the consent link was not among it).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use writ_server::http::consent::SignInConfig;

/// The client id Writ is registered under at the stand-in.
pub const CLIENT_ID: &str = "writ-consent";
/// The signing key's `kid`.
const KID: &str = "op-ed25519-1";

/// A code the authorization endpoint issued, until the token endpoint takes it.
#[derive(Debug, Clone)]
struct Grant {
    user: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

#[derive(Debug)]
struct Op {
    issuer: String,
    private_pem: String,
    jwk: Value,
    user: Mutex<String>,
    codes: Mutex<HashMap<String, Grant>>,
    authorizations: Mutex<Vec<HashMap<String, String>>>,
    exchanges: Mutex<Vec<HashMap<String, String>>>,
}

/// The running stand-in; stops when dropped.
#[derive(Debug)]
pub struct OpenIdProvider {
    addr: SocketAddr,
    op: Arc<Op>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OpenIdProvider {
    /// Starts the stand-in; it signs in `user` until [`OpenIdProvider::sign_in_as`] says
    /// otherwise.
    pub async fn start(user: &str) -> OpenIdProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OpenID Provider stand-in");
        let addr = listener.local_addr().expect("its address");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        let op = Arc::new(Op {
            issuer: format!("http://{addr}"),
            private_pem: pair.serialize_pem(),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KID,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
            }),
            user: Mutex::new(user.to_owned()),
            codes: Mutex::new(HashMap::new()),
            authorizations: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .route("/jwks", axum::routing::get(jwks))
            .with_state(op.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OpenIdProvider { addr, op, task }
    }

    /// The user the next sign-in is for.
    pub fn sign_in_as(&self, user: &str) {
        *lock(&self.op.user) = user.to_owned();
    }

    /// Its issuer identifier (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> String {
        self.op.issuer.clone()
    }

    /// `[consent.sign_in]` for Writ to use it (a public client: PKCE alone).
    pub fn config(&self) -> SignInConfig {
        SignInConfig {
            issuer: self.issuer(),
            authorization_endpoint: format!("http://{}/authorize", self.addr),
            token_endpoint: format!("http://{}/token", self.addr),
            jwks_uri: Some(format!("http://{}/jwks", self.addr)),
            jwks_file: None,
            client_id: CLIENT_ID.into(),
            client_secret_file: None,
        }
    }

    /// The parameters of every authorization request so far.
    pub fn authorizations(&self) -> Vec<HashMap<String, String>> {
        lock(&self.op.authorizations).clone()
    }

    /// The form of every token request so far.
    pub fn exchanges(&self) -> Vec<HashMap<String, String>> {
        lock(&self.op.exchanges).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": error }).to_string(),
    )
        .into_response()
}

/// Signs in the chosen user at once and redirects back with a code.
async fn authorize(State(op): State<Arc<Op>>, uri: axum::http::Uri) -> Response {
    let q: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    lock(&op.authorizations).push(q.clone());
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let good = get("response_type") == "code"
        && get("client_id") == CLIENT_ID
        && get("scope").split(' ').any(|s| s == "openid")
        && get("code_challenge_method") == "S256"
        && !get("code_challenge").is_empty()
        && !get("state").is_empty()
        && !get("nonce").is_empty()
        && get("redirect_uri").starts_with("https://");
    if !good {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let mut code = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut code).is_err() {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    }
    let code = URL_SAFE_NO_PAD.encode(code);
    lock(&op.codes).insert(
        code.clone(),
        Grant {
            user: lock(&op.user).clone(),
            nonce: get("nonce"),
            challenge: get("code_challenge"),
            redirect_uri: get("redirect_uri"),
        },
    );
    let mut back = reqwest::Url::parse(&get("redirect_uri")).expect("checked above");
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, back.to_string())],
    )
        .into_response()
}

/// The code, once, for an ID token: redirect URI and PKCE verifier must match.
async fn token(State(op): State<Arc<Op>>, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    lock(&op.exchanges).push(form.clone());
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    if get("grant_type") != "authorization_code" || get("client_id") != CLIENT_ID {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let Some(grant) = lock(&op.codes).remove(&get("code")) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        get("code_verifier").as_bytes(),
    ));
    if challenge != grant.challenge || get("redirect_uri") != grant.redirect_uri {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let now = writ_server::service::now_secs();
    let claims = json!({
        "iss": op.issuer, "aud": CLIENT_ID, "sub": grant.user, "nonce": grant.nonce,
        "iat": now, "exp": now + 300, "auth_time": now, "amr": ["pwd"],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(KID.into());
    let Ok(key) = jsonwebtoken::EncodingKey::from_ed_pem(op.private_pem.as_bytes()) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    let Ok(id_token) = jsonwebtoken::encode(&header, &claims, &key) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "access_token": "opaque", "token_type": "Bearer", "expires_in": 300,
            "id_token": id_token,
        })
        .to_string(),
    )
        .into_response()
}

async fn jwks(State(op): State<Arc<Op>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "keys": [op.jwk] }).to_string(),
    )
        .into_response()
}
