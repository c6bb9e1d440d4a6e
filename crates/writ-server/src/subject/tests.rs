//! Tests of subject-token verification: what is accepted, every refusal, and the key set
//! from a file and from a URL served by a local HTTP server.

use super::*;
use crate::assertion::alg_str;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::json;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://login.example.com";
const AUD: &str = "https://writ.example.com";

/// A 2048-bit RSA private key (openssl genrsa), fixed so tests need no slow keygen.
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDMmeEtNGd7xqI5
DoMx0rJb6hg8rbaNUeW5KI55E5bRJIvnJI4BF6gPAQREyz7xkqSHHN+jihV58SYi
ctKMf5M7yJ5T2cQmhEexA7hTcMmdA7SCBK4jFRKXC//unU2dyj+4Wcm3ImzTJt9O
q1Ec3pyvZJ/XSwlWlkm61MKH/0Y3pOT+vKLWJOsIknGe5+bdNF5A67iL0Marr/ss
w3z6xCXpya6eyCKOo+l1A6txvzldPunHjMnJFbGQ6TaK8R4WHqTFb4TEcA9y1INm
ftTx38CkPTpmrPCUntwLgGEco4fEdBroVPOnVTHznCPgTTfIr37fyd9Zw+lf7YXz
/4kXct6HAgMBAAECggEAZZmEWA5N1QkuRWcPfw5Bw6LbpkYdANBKY0fgd/9iRTkA
wCdG3QQCUHEQzZigCRXo3a9Y3r0TLRqy9ShPpbU0R9u3w6u/2+CUOTK/ta+sbmwI
lwf78S/lq1wqGzPB9zkXq1Pq9yYBJFmJSmeIP+3LoM03EpIQcQ7wTfaZIy+AjuBP
WNyAsytYkhV7az9Ohkwh0iDhget90L6rcI6mOx3yawe/wpHS2gNZvYBxBJXbDe+Z
mQJriRBY+RzFiOj95QERw73MCXM/aoKMOzSGd558jhXqbToQAsf/h6MkDzs74nVm
5IYvj2QZfRaVR+LLH+p2kXtlB4YoLld+xU4pVvhkAQKBgQD3dPKgXu/SlJVUWKVg
Lii66vL2e/5rN4zjdXZCx+ZQUxItTxAAAcP5i9+/lJ3Cq0wHvvkDTAAhq+Lk2Vep
O67BudVypZtmFpD/ezZGqAtK9EYnxEjayYlxotq39WYOrTCg72rr0I3HTWj3tkAu
1MJRVje69PyAY3ssrmJI9MkLMQKBgQDTqir5B1lAPsPeFjkCfH3a+tPaNHh+uWNP
ut9MPuqQzGEUfKOTu0S4xvO6fKrn8IsdXzNUntjhoSQIZfgMyFJBp4vZrY/fPwx2
F5SP9HUmjFPD0i6997N6ZVqOU4xtBsQIPgjVk6qmjKZQ7XLVE7mmZS6JDxscDM+i
S844ix0nNwKBgCu+N5mTzq8Z5t/XH7zFzBtmpvZdatcHJdebjwE1FwiB9sedn0Vx
CnSVfkL+gXjFERaZcqlbiPZqzRwJM47N5xGFyS6QCc1dFdqjrC+HSx+/2Jr0/q/2
Sl6VHDbCoXzcrqj0SaFP55AgpfqL9AKTR5pbNFTPM8d6Tm7SkLs20kcxAoGAEDJq
XWoRi1gCNwFuVWFfZB1jjsQLIG9hSR2crsH1wyTQnPe4sLpY1Obsia22ik8e5h19
2RDaudFR546d/6RonvuKORsN8mBpvLOrO6TSPiPo2QhBaWoGAuy0lEWSbllhMNxG
YsmM+ney1miFLAb5YuFFQVm1klzsmpfAbRVAItsCgYAjvQ2dbqDWdW7bwmvOsRuD
SomRG6aTRzinijIUsKtsc5cocUjOxtlrC3ZifyMY5PIOY4cP990Ik9tENTBHhieY
1/d1y+5re4pvOHSHTooy5zR/636+MCYFQGLLGfCGOunsaZcEag2repEQ4ju+UJXe
zUhZ2EwHD4+oF33+20/lig==
-----END PRIVATE KEY-----";
/// Its modulus, base64url.
const RSA_N: &str = "zJnhLTRne8aiOQ6DMdKyW-oYPK22jVHluSiOeROW0SSL5ySOAReoDwEERMs-8ZKkhxzfo4oVefEmInLSjH-TO8ieU9nEJoRHsQO4U3DJnQO0ggSuIxUSlwv_7p1Nnco_uFnJtyJs0ybfTqtRHN6cr2Sf10sJVpZJutTCh_9GN6Tk_ryi1iTrCJJxnufm3TReQOu4i9DGq6_7LMN8-sQl6cmunsgijqPpdQOrcb85XT7px4zJyRWxkOk2ivEeFh6kxW-ExHAPctSDZn7U8d_ApD06ZqzwlJ7cC4BhHKOHxHQa6FTzp1Ux85wj4E03yK9-38nfWcPpX-2F8_-JF3Lehw";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of an issuer, with its public JWK.
struct Key {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn ed25519(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Key {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": b64(pair.public_key_raw())}),
        }
    }

    fn p256(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        Key {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        }
    }

    /// The fixed RSA key, signing with `alg` (RS256 or PS256).
    fn rsa(kid: &str, alg: Algorithm) -> Key {
        Key {
            alg,
            encoding: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB"}),
        }
    }

    fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    /// The standard header: this key's `alg` and `kid`, `typ: at+jwt`.
    fn header(&self) -> Value {
        json!({"alg": alg_str(self.alg), "kid": self.kid(), "typ": "at+jwt"})
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.header(), claims)
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// Signs exactly these JSON texts (to send what a serializer would not).
    fn sign_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{input}.{signature}")
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW - 10, "exp": NOW + 300,
        "scope": "orders:read orders:write", "client_id": "web"})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(name);
    } else {
        claims[name] = value;
    }
    claims
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(path, doc.to_string()).unwrap();
}

fn issuer_with_file(path: &Path) -> IssuerConfig {
    let mut issuer = IssuerConfig::new(ISS, vec![AUD.into(), "other-api".into()]);
    issuer.jwks_file = Some(path.to_owned());
    issuer
}

fn verifier_of(issuers: Vec<IssuerConfig>) -> Arc<SubjectVerifier> {
    SubjectVerifier::new(&SubjectTokensConfig { issuers }).unwrap()
}

/// A verifier of one issuer whose JWKS file holds `keys`, adjusted by `tweak`.
fn file_verifier(
    dir: &Path,
    keys: &[&Key],
    tweak: impl FnOnce(&mut IssuerConfig),
) -> Arc<SubjectVerifier> {
    let path = dir.join("jwks.json");
    write_jwks(&path, keys);
    let mut issuer = issuer_with_file(&path);
    tweak(&mut issuer);
    verifier_of(vec![issuer])
}

async fn verify(v: &SubjectVerifier, token: &str) -> Result<ExternalSubject, SubjectError> {
    v.verify(token, ACCESS_TOKEN_TYPE, NOW).await
}

/// The message of an `Invalid` refusal (panics on anything else).
fn refusal(result: Result<ExternalSubject, SubjectError>) -> String {
    match result {
        Err(SubjectError::Invalid(m)) => m,
        other => panic!("expected an Invalid refusal, got {other:?}"),
    }
}

fn refused_with(result: Result<ExternalSubject, SubjectError>, expected: &str) {
    let message = refusal(result);
    assert!(
        message.contains(expected),
        "{message:?} does not contain {expected:?}"
    );
}

#[tokio::test]
async fn rs256_ps256_es256_and_eddsa_tokens_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (rs, ps) = (
        Key::rsa("rsa", Algorithm::RS256),
        Key::rsa("rsa", Algorithm::PS256),
    );
    let (ec, ed) = (Key::p256("ec"), Key::ed25519("ed"));
    let v = file_verifier(dir.path(), &[&rs, &ec, &ed], |_| {});
    let expected = ExternalSubject {
        issuer: ISS.into(),
        subject: "alice".into(),
        scopes: ["orders:read".to_owned(), "orders:write".to_owned()].into(),
        expires_at: NOW + 300,
        context: [("subject_issuer".to_owned(), ISS.to_owned())].into(),
    };
    for key in [&rs, &ps, &ec, &ed] {
        let got = verify(&v, &key.sign(&claims())).await;
        assert_eq!(got.as_ref(), Ok(&expected), "{:?}", key.alg);
    }
    // A plain JWT header (`typ: JWT`, or none) is accepted for an access token too, and
    // `aud` may be an array naming any accepted audience.
    let plain = json!({"alg": "EdDSA", "kid": "ed", "typ": "JWT"});
    let c = with(claims(), "aud", json!(["someone-else", "other-api"]));
    assert_eq!(
        verify(&v, &ed.sign_with(&plain, &c)).await,
        Ok(expected.clone())
    );
    let bare = json!({"alg": "EdDSA", "kid": "ed"});
    assert_eq!(
        verify(&v, &ed.sign_with(&bare, &claims())).await,
        Ok(expected.clone())
    );
    // The generic JWT type reads the scope like an access token.
    let got = v.verify(&ec.sign(&claims()), JWT_TOKEN_TYPE, NOW).await;
    assert_eq!(got, Ok(expected.clone()));
    // A fractional NumericDate is read (exp rounded down).
    let c = with(claims(), "exp", json!((NOW + 300) as f64 + 0.75));
    assert_eq!(
        verify(&v, &ed.sign(&c)).await.unwrap().expires_at,
        NOW + 300
    );
    // Without a `kid`, the keys for the header's `alg` are tried.
    let no_kid = json!({"alg": "ES256", "typ": "at+jwt"});
    assert_eq!(
        verify(&v, &ec.sign_with(&no_kid, &claims())).await,
        Ok(expected)
    );
}

#[tokio::test]
async fn the_context_records_how_the_user_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    let c = with(claims(), "amr", json!(["pwd", "otp", "bad value", 7]));
    let c = with(c, "acr", json!("urn:example:loa:2"));
    let c = with(c, "auth_time", json!(NOW - 60));
    let got = verify(&v, &ed.sign(&c)).await.unwrap();
    let expected: BTreeMap<String, String> = [
        ("subject_issuer", ISS),
        ("authn", "pwd otp"),
        ("acr", "urn:example:loa:2"),
        ("auth_time", &(NOW - 60).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(got.context, expected);
    // Whatever is recorded passes the wire's own context check.
    writ_api::convert::context("rctx", got.context.into_iter().collect()).unwrap();
    // Only `acr`: it is the `authn`. Oversized or non-ASCII values are left out.
    let c = with(claims(), "acr", json!("silver"));
    let c = with(c, "amr", json!(["é", "x".repeat(65)]));
    let got = verify(&v, &ed.sign(&c)).await.unwrap();
    assert_eq!(got.context["authn"], "silver");
    assert_eq!(got.context.len(), 3);
    let c = with(claims(), "acr", json!("a".repeat(257)));
    let got = verify(&v, &ed.sign(&c)).await.unwrap();
    assert_eq!(got.context.len(), 1, "{:?}", got.context);
}

#[tokio::test]
async fn the_scope_is_read_from_scope_or_scp_and_must_be_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    let scopes = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    // `scp` as an array (Okta) and as a string (Entra).
    let c = with(
        with(claims(), "scope", Value::Null),
        "scp",
        json!(["a", "b", "a"]),
    );
    assert_eq!(
        verify(&v, &ed.sign(&c)).await.unwrap().scopes,
        scopes(&["a", "b"])
    );
    let c = with(with(claims(), "scope", Value::Null), "scp", json!("a  b"));
    assert_eq!(
        verify(&v, &ed.sign(&c)).await.unwrap().scopes,
        scopes(&["a", "b"])
    );
    // `scope` as an array too.
    let c = with(claims(), "scope", json!(["x"]));
    assert_eq!(
        verify(&v, &ed.sign(&c)).await.unwrap().scopes,
        scopes(&["x"])
    );
    // Both: ambiguous.
    let c = with(claims(), "scp", json!(["admin"]));
    refused_with(verify(&v, &ed.sign(&c)).await, "both `scope` and `scp`");
    // None, empty, or only spaces: the scope cannot be determined.
    for scope in [Value::Null, json!(""), json!("   "), json!([])] {
        let c = with(claims(), "scope", scope.clone());
        assert_eq!(
            verify(&v, &ed.sign(&c)).await,
            Err(SubjectError::NoScope),
            "{scope}"
        );
    }
    // Malformed entries and too many are refused, naming the claim.
    for (scope, expected) in [
        (
            json!("read \"write\""),
            "scope: \"\\\"write\\\"\" is not a valid scope",
        ),
        (
            json!(["ok", 3]),
            "`scope` must be a string or an array of strings",
        ),
        (json!(["has space"]), "is not a valid scope"),
        (
            json!({"read": true}),
            "`scope` must be a space-separated string",
        ),
        (json!("x".repeat(129)), "is not a valid scope"),
    ] {
        refused_with(
            verify(&v, &ed.sign(&with(claims(), "scope", scope))).await,
            expected,
        );
    }
    let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
    refused_with(
        verify(
            &v,
            &ed.sign(&with(claims(), "scope", json!(many.join(" ")))),
        )
        .await,
        "more than 64 scopes",
    );
    refused_with(
        verify(&v, &ed.sign(&with(claims(), "scope", json!(many)))).await,
        "more than 64 scopes",
    );
    // A configured claim name is the only one read.
    let v = file_verifier(dir.path(), &[&ed], |i| {
        i.scope_claim = Some("permissions".into())
    });
    let c = with(claims(), "permissions", json!(["p:1"]));
    assert_eq!(
        verify(&v, &ed.sign(&c)).await.unwrap().scopes,
        scopes(&["p:1"])
    );
    assert_eq!(
        verify(&v, &ed.sign(&claims())).await,
        Err(SubjectError::NoScope)
    );
}

#[tokio::test]
async fn id_tokens_need_configured_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let header = json!({"alg": "EdDSA", "kid": "ed", "typ": "JWT"});
    let id_claims = with(
        with(claims(), "scope", Value::Null),
        "client_id",
        Value::Null,
    );
    let id_token = ed.sign_with(&header, &id_claims);
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    assert_eq!(
        v.verify(&id_token, ID_TOKEN_TYPE, NOW).await,
        Err(SubjectError::NoScope)
    );
    let v = file_verifier(dir.path(), &[&ed], |i| {
        i.id_token_scopes = vec!["profile:read".into()];
    });
    let got = v.verify(&id_token, ID_TOKEN_TYPE, NOW).await.unwrap();
    assert_eq!(got.scopes, ["profile:read".to_owned()].into());
    assert_eq!(got.subject, "alice");
    // What the token is decides, not the type named: an access token (it carries a
    // scope, an `scp` or a `client_id`) presented as an ID token never gets the ID
    // tokens' scopes, which may be wider than its own.
    for (member, value) in [
        ("scope", json!("orders:read")),
        ("scp", json!(["orders:read"])),
        ("client_id", json!("web")),
    ] {
        let token = ed.sign_with(&header, &with(id_claims.clone(), member, value));
        refused_with(
            v.verify(&token, ID_TOKEN_TYPE, NOW).await,
            &format!("carries `{member}`"),
        );
    }
    // An access token (`typ: at+jwt`) is not an ID token.
    refused_with(
        v.verify(&ed.sign(&claims()), ID_TOKEN_TYPE, NOW).await,
        "`typ` \"at+jwt\" is not accepted for an ID token",
    );
}

#[tokio::test]
async fn token_types_other_than_access_id_and_jwt_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    let token = ed.sign(&claims());
    assert_eq!(
        v.verify(&token, REFRESH_TOKEN_TYPE, NOW).await,
        Err(SubjectError::Unsupported(
            "refresh tokens are never accepted as subject tokens".into()
        ))
    );
    for other in [
        "urn:ietf:params:oauth:token-type:saml2",
        "urn:ietf:params:oauth:token-type:txn_token",
        "",
    ] {
        let e = v.verify(&token, other, NOW).await.unwrap_err();
        assert!(matches!(e, SubjectError::Unsupported(_)), "{other}: {e:?}");
    }
    // With no issuer configured, nothing is accepted, and refresh tokens are still named.
    let none = verifier_of(Vec::new());
    assert!(!none.is_configured());
    assert!(v.is_configured());
    let e = none
        .verify(&token, ACCESS_TOKEN_TYPE, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SubjectError::Unsupported(m) if m.contains("no issuer is configured")),
        "{e:?}"
    );
    let e = none
        .verify(&token, REFRESH_TOKEN_TYPE, NOW)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("refresh tokens are never accepted"),
        "{e}"
    );
}

#[tokio::test]
async fn claims_that_fail_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    let cases: Vec<(Value, &str)> = vec![
        (
            with(claims(), "iss", json!("https://evil.example")),
            "`iss` \"https://evil.example\" is not a configured issuer",
        ),
        (with(claims(), "iss", Value::Null), "`iss` is required"),
        (
            with(claims(), "iss", json!(ISS.to_owned() + "/")),
            "is not a configured issuer",
        ),
        (
            with(claims(), "aud", json!("https://other.example")),
            "`aud` names none of the audiences accepted",
        ),
        (with(claims(), "aud", json!(["a", "b"])), "`aud` names none"),
        (
            with(claims(), "aud", json!([AUD, 1])),
            "`aud` must be a string or an array of strings",
        ),
        (with(claims(), "aud", Value::Null), "`aud` is required"),
        (
            with(claims(), "exp", json!(NOW - 5)),
            "`exp` is 5 s in the past: the token has expired",
        ),
        (with(claims(), "exp", json!(NOW)), "the token has expired"),
        (with(claims(), "exp", Value::Null), "`exp` is required"),
        (
            with(claims(), "exp", json!("soon")),
            "`exp` must be a NumericDate",
        ),
        (
            with(claims(), "exp", json!(-1)),
            "`exp` is not a usable NumericDate",
        ),
        (
            with(claims(), "nbf", json!(NOW + 31)),
            "`nbf` is 31 s in the future: the token is not valid yet",
        ),
        (
            with(claims(), "iat", json!(NOW + 100)),
            "`iat` is 100 s in the future",
        ),
        (with(claims(), "sub", Value::Null), "`sub` is required"),
        (with(claims(), "sub", json!(42)), "`sub` must be a string"),
        (with(claims(), "sub", json!("")), "sub: is required"),
        (
            with(claims(), "sub", json!("alice smith")),
            "must be printable ASCII without spaces",
        ),
        (
            with(claims(), "sub", json!("a".repeat(257))),
            "sub: is 257 bytes; the limit is 256",
        ),
    ];
    for (c, expected) in cases {
        let token = ed.sign(&c);
        let message = refusal(verify(&v, &token).await);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        // Never the token, nor its signature.
        assert!(!message.contains(&token) && !message.contains(token.rsplit('.').next().unwrap()));
    }
    // Within the leeway, `nbf` and `iat` are fine; a leeway of 0 is strict.
    let c = with(
        with(claims(), "nbf", json!(NOW + 30)),
        "iat",
        json!(NOW + 30),
    );
    verify(&v, &ed.sign(&c)).await.unwrap();
    let strict = file_verifier(dir.path(), &[&ed], |i| i.leeway_seconds = 0);
    refused_with(
        verify(&strict, &ed.sign(&c)).await,
        "`nbf` is 30 s in the future",
    );
}

#[tokio::test]
async fn signatures_algorithms_and_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, ec, rs) = (
        Key::ed25519("ed"),
        Key::p256("ec"),
        Key::rsa("rsa", Algorithm::RS256),
    );
    let mut pinned = Key::rsa("rsa-rs", Algorithm::PS256);
    pinned.jwk["alg"] = json!("RS256");
    let v = file_verifier(dir.path(), &[&ed, &ec, &rs, &pinned], |_| {});

    // Signed by another key under a known `kid`.
    let impostor = Key::ed25519("ed");
    refused_with(
        verify(&v, &impostor.sign(&claims())).await,
        "the signature does not verify with the key \"ed\"",
    );
    // A changed payload under a good signature.
    let token = ed.sign(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(with(claims(), "sub", json!("mallory"))
        .to_string()
        .as_bytes());
    parts[1] = &forged;
    refused_with(verify(&v, &parts.join(".")).await, "does not verify");
    // No `kid` and no key verifies.
    let no_kid = json!({"alg": "EdDSA", "typ": "at+jwt"});
    refused_with(
        verify(&v, &impostor.sign_with(&no_kid, &claims())).await,
        "does not verify with any key",
    );

    // `alg` none and HMAC, whatever the signature.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "ed"}).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    refused_with(verify(&v, &none).await, "`alg` \"none\" is refused");
    let hmac = Key {
        alg: Algorithm::HS256,
        encoding: EncodingKey::from_secret(RSA_N.as_bytes()).unwrap(),
        jwk: json!({"kid": "ed"}),
    };
    refused_with(
        verify(&v, &hmac.sign(&claims())).await,
        "`alg` HS256 (a shared-secret MAC) is refused",
    );
    refused_with(
        verify(
            &v,
            &ed.sign_with(&json!({"alg": "ES384", "kid": "ed"}), &claims()),
        )
        .await,
        "`alg` \"ES384\" is not accepted",
    );
    refused_with(
        verify(&v, &ed.sign_with(&json!({"kid": "ed"}), &claims())).await,
        "`alg` is required",
    );
    // The header's alg must fit the key: type and curve, and the JWK's own `alg`.
    let mut ed_as_ec = ed.header();
    ed_as_ec["kid"] = json!("ec");
    refused_with(
        verify(&v, &ed.sign_with(&ed_as_ec, &claims())).await,
        "`alg` EdDSA does not match the key \"ec\"",
    );
    let mut rsa_as_ed = rs.header();
    rsa_as_ed["kid"] = json!("ed");
    refused_with(
        verify(&v, &rs.sign_with(&rsa_as_ed, &claims())).await,
        "`alg` RS256 does not match the key \"ed\" of issuer \"https://login.example.com\" (EdDSA)",
    );
    refused_with(
        verify(&v, &pinned.sign(&claims())).await,
        "`alg` PS256 does not match the key \"rsa-rs\"",
    );
    // An unknown `kid`.
    refused_with(
        verify(&v, &Key::ed25519("nope").sign(&claims())).await,
        "`kid` \"nope\" is not in the key set of issuer",
    );
    // Keys carried by the token, extensions and foreign `typ`s are refused.
    for (member, value) in [
        ("jwk", ed.jwk.clone()),
        ("jku", json!("https://evil.example/jwks")),
        ("x5u", json!("https://evil.example/cert")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("b64", json!(false)),
    ] {
        let mut header = ed.header();
        header[member] = value;
        refused_with(
            verify(&v, &ed.sign_with(&header, &claims())).await,
            &format!("`{member}`"),
        );
    }
    for typ in ["txntoken+jwt", "logout+jwt", "secevent+jwt", "dpop+jwt"] {
        let mut header = ed.header();
        header["typ"] = json!(typ);
        refused_with(
            verify(&v, &ed.sign_with(&header, &claims())).await,
            "is not accepted for an access token",
        );
    }
    let mut header = ed.header();
    header["typ"] = json!("application/AT+JWT");
    verify(&v, &ed.sign_with(&header, &claims())).await.unwrap();
}

#[tokio::test]
async fn malformed_tokens_are_refused_before_any_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::ed25519("ed");
    let v = file_verifier(dir.path(), &[&ed], |_| {});
    // Oversized.
    let big = with(claims(), "pad", json!("x".repeat(MAX_SUBJECT_TOKEN_BYTES)));
    refused_with(verify(&v, &ed.sign(&big)).await, "bytes; at most 16384");
    // Just under the bound is fine (larger than a client assertion may be).
    let fits = with(claims(), "pad", json!("x".repeat(10_000)));
    verify(&v, &ed.sign(&fits)).await.unwrap();
    // Duplicate members, in the payload and in the header.
    let dup_sub = r#"{"iss":"https://login.example.com","aud":"https://writ.example.com","sub":"alice","sub":"admin","exp":1800000300,"scope":"a"}"#;
    refused_with(
        verify(&v, &ed.sign_raw(&ed.header().to_string(), dup_sub)).await,
        "member \"sub\" appears twice",
    );
    let dup_alg = r#"{"alg":"EdDSA","kid":"ed","alg":"none"}"#;
    refused_with(
        verify(&v, &ed.sign_raw(dup_alg, &claims().to_string())).await,
        "member \"alg\" appears twice",
    );
    for (token, expected) in [
        ("not a jwt", "only base64url characters"),
        ("a.b", "not a compact JWS"),
        ("a.b.c.d", "not a compact JWS"),
        ("e30.e30.", "`alg` is required"),
        ("W10.e30.", "the header is not a JSON object"),
        ("!!.e30.", "only base64url"),
        ("eyJ.e30.", "the header is not"),
    ] {
        refused_with(verify(&v, token).await, expected);
    }
}

#[tokio::test]
async fn a_changed_jwks_file_is_read_on_an_unknown_kid_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Key::ed25519("old"), Key::p256("new"));
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&old]);
    let v = verifier_of(vec![issuer_with_file(&path)]);
    let new_token = new.sign(&claims());
    // Unknown: the file is read again (unchanged), and the kid is still unknown.
    refused_with(
        verify(&v, &new_token).await,
        "`kid` \"new\" is not in the key set",
    );
    write_jwks(&path, &[&old, &new]);
    // Within the minimum interval, the file is not read again.
    refused_with(
        v.verify(&new_token, ACCESS_TOKEN_TYPE, NOW + 29).await,
        "`kid` \"new\" is not in the key set",
    );
    v.verify(&new_token, ACCESS_TOKEN_TYPE, NOW + 30)
        .await
        .unwrap();
    // A broken file keeps the last good set.
    std::fs::write(&path, "{\"keys\": [tr").unwrap();
    refused_with(
        v.verify(
            &Key::ed25519("third").sign(&claims()),
            ACCESS_TOKEN_TYPE,
            NOW + 60,
        )
        .await,
        "`kid` \"third\"",
    );
    v.verify(&new_token, ACCESS_TOKEN_TYPE, NOW + 61)
        .await
        .unwrap();
    v.verify(&old.sign(&claims()), ACCESS_TOKEN_TYPE, NOW + 61)
        .await
        .unwrap();
    // Removing a key from the file revokes it.
    write_jwks(&path, &[&new]);
    refused_with(
        v.verify(
            &Key::ed25519("fourth").sign(&claims()),
            ACCESS_TOKEN_TYPE,
            NOW + 90,
        )
        .await,
        "`kid` \"fourth\"",
    );
    refused_with(
        v.verify(&old.sign(&claims()), ACCESS_TOKEN_TYPE, NOW + 91)
            .await,
        "`kid` \"old\" is not in the key set",
    );
}

#[test]
fn jwks_documents_are_parsed_strictly_and_unusable_keys_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let (ed, ec) = (Key::ed25519("ed"), Key::p256("ec"));
    let mut enc = Key::p256("enc").jwk;
    enc["use"] = json!("enc");
    let mut wrap = Key::p256("wrap").jwk;
    wrap["key_ops"] = json!(["wrapKey"]);
    let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": b64(&[1u8; 48]), "y": b64(&[2u8; 48])});
    let small_rsa = json!({"kty": "RSA", "kid": "small", "n": b64(&[0xffu8; 128]), "e": "AQAB"});
    let secret = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
    let private = with(ed.jwk.clone(), "d", json!("AAAA"));
    let private = with(private, "kid", json!("private"));
    let mut hs = ec.jwk.clone();
    hs["kid"] = json!("hs");
    hs["alg"] = json!("HS256");
    let doc = json!({"keys": [ed.jwk, ec.jwk, enc, wrap, p384, small_rsa, secret, private, hs]});
    std::fs::write(&path, doc.to_string()).unwrap();
    let source = keys::KeySource::new(&issuer_with_file(&path)).unwrap();
    let kids = source.kids();
    assert_eq!(kids, ["ec", "ed"]);

    for (text, expected) in [
        ("nope".to_owned(), "not JSON"),
        ("{}".to_owned(), "no `keys` array"),
        ("[]".to_owned(), "no `keys` array"),
        (
            json!({"keys": [1]}).to_string(),
            "keys[0] is not a JSON object",
        ),
        (
            json!({"keys": [Key::ed25519("k").jwk, Key::p256("k").jwk]}).to_string(),
            "`kid` \"k\" appears twice",
        ),
        (
            json!({"keys": vec![json!({"kty": "OKP"}); 65]}).to_string(),
            "65 keys; a key set has at most 64",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = keys::KeySource::new(&issuer_with_file(&path)).unwrap_err();
        assert!(e.contains(expected), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
    // An empty set is a set (every key removed).
    std::fs::write(&path, r#"{"keys": []}"#).unwrap();
    assert!(
        keys::KeySource::new(&issuer_with_file(&path))
            .unwrap()
            .kids()
            .is_empty()
    );
}

#[test]
fn the_configuration_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&Key::ed25519("ed")]);
    let good = issuer_with_file(&path);
    let check = |issuers: Vec<IssuerConfig>| -> String {
        match SubjectVerifier::new(&SubjectTokensConfig { issuers }) {
            Err(SubjectError::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    };
    let tweak = |f: &dyn Fn(&mut IssuerConfig)| {
        let mut issuer = good.clone();
        f(&mut issuer);
        vec![issuer]
    };
    let missing = dir.path().join("missing.json");
    for (issuers, expected) in [
        (
            tweak(&|i| i.jwks_uri = Some("https://login.example.com/jwks".into())),
            "not both",
        ),
        (tweak(&|i| i.jwks_file = None), "`jwks_file` or `jwks_uri`"),
        (
            tweak(&|i| {
                i.jwks_file = None;
                i.jwks_uri = Some("http://login.example.com/jwks".into());
            }),
            "must be an https URL (plain http only to a loopback host)",
        ),
        (
            tweak(&|i| {
                i.jwks_file = None;
                i.jwks_uri = Some("http://10.0.0.1/jwks".into());
            }),
            "must be an https URL",
        ),
        (
            tweak(&|i| {
                i.jwks_file = None;
                i.jwks_uri = Some("ftp://login.example.com/jwks".into());
            }),
            "must be an https URL",
        ),
        (
            tweak(&|i| {
                i.jwks_file = None;
                i.jwks_uri = Some("https://user:pw@login.example.com/jwks".into());
            }),
            "must not carry credentials",
        ),
        (
            tweak(&|i| {
                i.jwks_file = None;
                i.jwks_uri = Some("login.example.com/jwks".into());
            }),
            "not a URL",
        ),
        (
            tweak(&|i| i.jwks_file = Some(missing.clone())),
            "missing.json: cannot open",
        ),
        (tweak(&|i| i.audiences.clear()), "`audiences` is empty"),
        (
            tweak(&|i| i.audiences = vec![String::new()]),
            "must be 1 to 512 bytes",
        ),
        (tweak(&|i| i.issuer.clear()), "`issuer` is empty"),
        (tweak(&|i| i.issuer = "iss\u{200b}".into()), "issuer:"),
        (
            tweak(&|i| i.id_token_scopes = vec!["a b".into()]),
            "id_token_scopes",
        ),
        (
            tweak(&|i| i.scope_claim = Some("sc ope".into())),
            "scope_claim",
        ),
        (
            tweak(&|i| i.leeway_seconds = 301),
            "leeway_seconds is at most 300",
        ),
        (
            tweak(&|i| i.jwks_refresh_seconds = 0),
            "jwks_refresh_seconds",
        ),
        (
            tweak(&|i| i.jwks_min_refresh_seconds = 0),
            "jwks_min_refresh_seconds",
        ),
        (
            tweak(&|i| i.jwks_max_stale_seconds = 299),
            "jwks_max_stale_seconds",
        ),
        (
            tweak(&|i| i.jwks_timeout_seconds = 61),
            "jwks_timeout_seconds",
        ),
        (
            vec![good.clone(), good.clone()],
            "#2 (\"https://login.example.com\"): `issuer` is configured twice",
        ),
    ] {
        let message = check(issuers);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // Loopback http is allowed (tests, a sidecar), and so is https anywhere.
    for uri in [
        "http://127.0.0.1:8080/jwks",
        "http://[::1]/jwks",
        "http://localhost/jwks",
        "https://login.example.com/.well-known/jwks.json",
    ] {
        let mut issuer = good.clone();
        issuer.jwks_file = None;
        issuer.jwks_uri = Some(uri.into());
        verifier_of(vec![issuer]);
    }
    // The TOML keys, with their defaults.
    let parsed: SubjectTokensConfig = toml::from_str(
        r#"
        [[issuers]]
        issuer = "https://login.example.com"
        audiences = ["writ"]
        jwks_uri = "https://login.example.com/jwks"
        id_token_scopes = ["profile:read"]
        "#,
    )
    .unwrap();
    let issuer = &parsed.issuers[0];
    assert_eq!(
        (
            issuer.jwks_refresh_seconds,
            issuer.jwks_min_refresh_seconds,
            issuer.jwks_max_stale_seconds,
            issuer.jwks_timeout_seconds,
            issuer.leeway_seconds,
        ),
        (300, 30, 86_400, 10, 30)
    );
    let unknown = toml::from_str::<SubjectTokensConfig>(
        "[[issuers]]\nissuer = \"x\"\naudiences = [\"a\"]\njwks_url = \"https://x\"\n",
    );
    assert!(unknown.is_err(), "unknown keys are refused");
}

// ---------------------------------------------------------------------------------------
// A JWKS served over HTTP.

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    Json(String),
    /// The same body without a Content-Length (chunked).
    Chunked(String),
    Status(u16),
    Redirect(String),
}

#[derive(Clone)]
struct Served {
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    addr: std::net::SocketAddr,
}

impl Served {
    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn serve_keys(&self, keys: &[&Key]) {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        self.set(Reply::Json(doc.to_string()));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }
}

async fn answer(
    axum::extract::State(served): axum::extract::State<Served>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    served.hits.fetch_add(1, Ordering::SeqCst);
    let reply = served.reply.lock().unwrap().clone();
    match reply {
        Reply::Json(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Reply::Chunked(body) => {
            let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = body
                .into_bytes()
                .chunks(8192)
                .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
                .collect();
            axum::body::Body::from_stream(tokio_stream::iter(chunks)).into_response()
        }
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Redirect(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
    }
}

/// A JWKS endpoint on 127.0.0.1 serving `keys`, and a verifier of one issuer using it.
async fn url_verifier(
    keys: &[&Key],
    tweak: impl FnOnce(&mut IssuerConfig),
) -> (Arc<SubjectVerifier>, Served) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = Served {
        reply: Arc::new(Mutex::new(Reply::Status(500))),
        hits: Arc::new(AtomicUsize::new(0)),
        addr: listener.local_addr().unwrap(),
    };
    served.serve_keys(keys);
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(answer))
        .with_state(served.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut issuer = IssuerConfig::new(ISS, vec![AUD.into()]);
    issuer.jwks_uri = Some(served.uri());
    tweak(&mut issuer);
    (verifier_of(vec![issuer]), served)
}

async fn verify_at(
    v: &SubjectVerifier,
    token: &str,
    now: u64,
) -> Result<ExternalSubject, SubjectError> {
    v.verify(token, ACCESS_TOKEN_TYPE, now).await
}

fn unavailable(result: Result<ExternalSubject, SubjectError>) -> String {
    match result {
        Err(SubjectError::Unavailable(m)) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_once_and_cached() {
    let (ed, rs) = (Key::ed25519("ed"), Key::rsa("rsa", Algorithm::PS256));
    let (v, served) = url_verifier(&[&ed, &rs], |_| {}).await;
    assert_eq!(served.hits(), 0, "nothing is fetched before it is needed");
    for i in 0..5 {
        verify_at(&v, &ed.sign(&claims()), NOW + i).await.unwrap();
    }
    verify_at(&v, &rs.sign(&claims()), NOW + 5).await.unwrap();
    assert_eq!(served.hits(), 1);
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_min_interval() {
    let (a, b) = (Key::ed25519("a"), Key::p256("b"));
    let (v, served) = url_verifier(&[&a], |_| {}).await;
    verify_at(&v, &a.sign(&claims()), NOW).await.unwrap();
    assert_eq!(served.hits(), 1);
    // A flood of random kids right after: no fetch at all.
    for i in 0..20 {
        let token = Key::ed25519(&format!("random-{i}")).sign(&claims());
        refused_with(
            verify_at(&v, &token, NOW + 1).await,
            "is not in the key set",
        );
    }
    assert_eq!(served.hits(), 1);
    // Many at once, once the interval has passed: one fetch between them.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (v, token) = (
            v.clone(),
            Key::ed25519(&format!("burst-{i}")).sign(&claims()),
        );
        flood.spawn(async move { verify_at(&v, &token, NOW + 30).await });
    }
    while let Some(result) = flood.join_next().await {
        refused_with(result.unwrap(), "is not in the key set");
    }
    assert_eq!(served.hits(), 2);
    // The issuer rotates in `b`: found once the interval since the last fetch has passed.
    served.serve_keys(&[&a, &b]);
    let token = b.sign(&claims());
    refused_with(verify_at(&v, &token, NOW + 59).await, "`kid` \"b\"");
    assert_eq!(served.hits(), 2);
    verify_at(&v, &token, NOW + 60).await.unwrap();
    assert_eq!(served.hits(), 3);
    verify_at(&v, &token, NOW + 61).await.unwrap();
    assert_eq!(served.hits(), 3);
}

#[tokio::test]
async fn the_last_good_set_is_kept_while_fetches_fail_until_it_is_too_old() {
    let (a, b) = (Key::ed25519("a"), Key::p256("b"));
    let (v, served) = url_verifier(&[&a], |i| {
        i.jwks_refresh_seconds = 60;
        i.jwks_max_stale_seconds = 600;
    })
    .await;
    // Long-lived tokens: this test runs the clock forward.
    let c = with(claims(), "exp", json!(NOW + 3600));
    let token = a.sign(&c);
    verify_at(&v, &token, NOW).await.unwrap();
    served.set(Reply::Status(503));
    // An unknown kid makes a fetch, which fails: the set in use stays.
    refused_with(verify_at(&v, &b.sign(&c), NOW + 30).await, "`kid` \"b\"");
    assert_eq!(served.hits(), 2);
    verify_at(&v, &token, NOW + 31).await.unwrap();
    verify_at(&v, &token, NOW + 600).await.unwrap();
    // Older than jwks_max_stale_seconds since the last good fetch: unavailable, and the
    // message says why.
    let message = unavailable(verify_at(&v, &token, NOW + 601).await);
    assert!(message.contains("last fetched 601 s ago"), "{message}");
    assert!(message.contains("answered HTTP 503"), "{message}");
    assert_eq!(served.hits(), 3);
    // Refetched at most once per minimum interval, here too.
    unavailable(verify_at(&v, &token, NOW + 602).await);
    assert_eq!(served.hits(), 3);
    // The issuer recovers.
    served.serve_keys(&[&a, &b]);
    verify_at(&v, &token, NOW + 631).await.unwrap();
    verify_at(&v, &b.sign(&c), NOW + 632).await.unwrap();
    assert_eq!(served.hits(), 4);
}

#[tokio::test]
async fn bad_answers_are_refused_and_never_make_a_set() {
    let a = Key::ed25519("a");
    let token = a.sign(&claims());
    let doc = json!({"keys": [a.jwk.clone()]}).to_string();
    let padded = format!("{doc}{}", " ".repeat(MAX_JWKS_BYTES));
    let cases = [
        (Reply::Status(500), "answered HTTP 500"),
        (Reply::Status(404), "answered HTTP 404"),
        (
            Reply::Redirect("http://127.0.0.1:1/jwks".into()),
            "answered HTTP 302",
        ),
        (Reply::Json("not json".into()), "not JSON"),
        (Reply::Json(padded.clone()), "bytes; at most 262144"),
        (Reply::Chunked(padded), "larger than 262144 bytes"),
    ];
    for (reply, expected) in cases {
        let (v, served) = url_verifier(&[], |_| {}).await;
        served.set(reply);
        let message = unavailable(verify_at(&v, &token, NOW).await);
        assert!(message.contains("could not be loaded yet"), "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert_eq!(served.hits(), 1);
        // Not fetched again within the minimum interval.
        unavailable(verify_at(&v, &token, NOW + 29).await);
        assert_eq!(served.hits(), 1);
    }
    // A chunked answer within the bound is read whole.
    let (v, served) = url_verifier(&[], |_| {}).await;
    let big = format!("{doc}{}", " ".repeat(100_000));
    served.set(Reply::Chunked(big));
    verify_at(&v, &token, NOW).await.unwrap();
    // Nothing listening: unavailable, naming the URL.
    let mut issuer = IssuerConfig::new(ISS, vec![AUD.into()]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    issuer.jwks_uri = Some(format!("http://{closed}/jwks"));
    let v = verifier_of(vec![issuer]);
    let message = unavailable(verify_at(&v, &token, NOW).await);
    assert!(
        message.contains(&format!("jwks_uri http://{closed}/jwks: cannot fetch")),
        "{message}"
    );
}

#[tokio::test]
async fn the_refresher_fetches_urls_rereads_files_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Key::ed25519("a"), Key::p256("b"));
    let (url_v, served) = url_verifier(&[&a], |_| {}).await;
    let (stop, stopped) = watch::channel(false);
    let task = url_v.spawn_refresher(stopped);
    let mut waited = 0;
    while served.hits() == 0 {
        assert!(waited < 600, "the refresher never fetched the JWKS");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    // Fetched at start: a token verifies without a fetch of its own.
    let now = crate::service::now_secs();
    let c = with(with(claims(), "exp", json!(now + 300)), "iat", json!(now));
    url_v
        .verify(&a.sign(&c), ACCESS_TOKEN_TYPE, now)
        .await
        .unwrap();
    assert_eq!(served.hits(), 1);
    stop.send(true).unwrap();
    task.await.unwrap();

    // A file: the refresher notices the change without any token asking.
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&a]);
    let file_v = verifier_of(vec![issuer_with_file(&path)]);
    let (stop, stopped) = watch::channel(false);
    let task = file_v.spawn_refresher(stopped);
    // Its first read (unchanged) comes at once; change the file after it.
    let mut waited = 0;
    while file_v.issuers[0].keys.attempt_count() == 0 {
        assert!(waited < 600, "the refresher never read the file");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    write_jwks(&path, &[&b]);
    let token = b.sign(
        &json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300,
        "scope": "s"}),
    );
    let mut tries = 0;
    loop {
        // At `now` 0, no token may cause a read (the last was later): only the refresher
        // can load the new file.
        match file_v.verify(&token, ACCESS_TOKEN_TYPE, 0).await {
            Ok(_) => break,
            Err(e) if tries < 600 => {
                assert!(matches!(e, SubjectError::Invalid(_)), "{e:?}");
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the refresher never re-read the file: {e}"),
        }
    }
    // It also stops when the sender is dropped, and at once with no issuer.
    drop(stop);
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("the refresher stops once its sender is dropped")
        .unwrap();
    let (_stop, stopped) = watch::channel(false);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        verifier_of(Vec::new()).spawn_refresher(stopped),
    )
    .await
    .expect("without issuers the refresher ends at once")
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Within the server.

fn server_config(dir: &Path, issuer: IssuerConfig) -> crate::config::Config {
    let mut config = crate::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        ..crate::config::Config::default()
    };
    config.tls.enabled = false;
    config.subject_tokens.issuers = vec![issuer];
    config
}

#[tokio::test]
async fn a_server_refuses_to_start_with_an_unreadable_jwks_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("idp-jwks.json");
    let err = crate::start(server_config(dir.path(), issuer_with_file(&missing)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::ServerError::Subject(SubjectError::Config(_))),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("cannot open"), "{message}");
}

#[tokio::test]
async fn a_running_server_fetches_the_jwks_and_verifies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Key::p256("a");
    let (_, served) = url_verifier(&[&a], |_| {}).await;
    let mut issuer = IssuerConfig::new(ISS, vec![AUD.into()]);
    issuer.jwks_uri = Some(served.uri());
    let server = crate::start(server_config(dir.path(), issuer))
        .await
        .unwrap();
    assert!(server.subjects.is_configured());
    let mut waited = 0;
    while served.hits() == 0 {
        assert!(
            waited < 600,
            "the server's refresher never fetched the JWKS"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    let now = crate::service::now_secs();
    let c = json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, "scope": "s"});
    let got = server
        .subjects
        .verify(&a.sign(&c), ACCESS_TOKEN_TYPE, now)
        .await
        .unwrap();
    assert_eq!(got.subject, "alice");
    assert_eq!(served.hits(), 1);
    server.shutdown().await.unwrap();
}

/// The example configuration documents every key of an issuer: uncommented, its block
/// parses, shows the defaults and makes a verifier.
#[test]
fn the_example_configuration_documents_the_issuer_keys() {
    let example = include_str!("../../../../deploy/writ.example.toml");
    let start = example
        .find("# [[subject_tokens.issuers]]")
        .expect("the example has a [[subject_tokens.issuers]] block");
    let block: String = example[start..]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let config: crate::config::Config = toml::from_str(&format!("{}{block}", &example[..start]))
        .expect("the uncommented block parses");
    let issuer = &config.subject_tokens.issuers[0];
    let defaults = IssuerConfig::new("", Vec::new());
    assert_eq!(
        (
            issuer.jwks_refresh_seconds,
            issuer.jwks_min_refresh_seconds,
            issuer.jwks_max_stale_seconds,
            issuer.jwks_timeout_seconds,
            issuer.leeway_seconds,
            &issuer.scope_claim,
            &issuer.id_token_scopes,
        ),
        (
            defaults.jwks_refresh_seconds,
            defaults.jwks_min_refresh_seconds,
            defaults.jwks_max_stale_seconds,
            defaults.jwks_timeout_seconds,
            defaults.leeway_seconds,
            &defaults.scope_claim,
            &defaults.id_token_scopes,
        )
    );
    // Every key of IssuerConfig is named in the block (commented or not).
    for key in [
        "issuer",
        "audiences",
        "jwks_file",
        "jwks_uri",
        "jwks_refresh_seconds",
        "jwks_min_refresh_seconds",
        "jwks_max_stale_seconds",
        "jwks_timeout_seconds",
        "leeway_seconds",
        "scope_claim",
        "id_token_scopes",
    ] {
        assert!(
            block.contains(&format!("{key} = ")),
            "{key} is not documented"
        );
    }
    SubjectVerifier::new(&config.subject_tokens).unwrap();
}
