//! Txn-Token JWTs from Validate, end to end over mTLS with a policy file: a resource
//! server the policy lets receive JWTs gets one for an active token, and the JWT verifies
//! against the published JWKS with an independent implementation (ring's Ed25519 and
//! ECDSA P-256, and this file's own JWS parsing; the server signs with jsonwebtoken),
//! with every claim checked. Agents and parties without `txn_token_jwt` are refused; a
//! revoked or expired token, a denied action, or a use-limited or action-check-only
//! token, gets none. Key rotation keeps a JWT
//! signed before it verifiable from the JWKS until the overlap ends, and then not.
// Test code: unwrap is the assertion, and claims are dated from the wall clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Code;
use writ_client::build;
use writ_e2e::*;

const PLANNER: &str = "spiffe://writ.local/agent/planner";
const BOOKING: &str = "spiffe://writ.local/agent/booking";
const PAYMENTS: &str = "spiffe://writ.local/payments";
const LEDGER: &str = "spiffe://writ.local/ledger";
/// The default issuer (`issuer` unset).
const ISSUER: &str = "https://localhost:7434";

/// Two agents, a payments API that may receive JWTs and a ledger that may not.
const POLICY: &str = r#"
trust_domain = "writ.local"

[scopes."trips:read"]
description = "Read the user's trips"

[scopes."payments:charge"]
description = "Charge the user's card"

[parties."spiffe://writ.local/agent/planner"]
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["trips:read", "payments:charge"]

[parties."spiffe://writ.local/agent/booking"]
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["trips:read", "payments:charge"]

[parties."spiffe://writ.local/payments"]
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["trips:read", "payments:charge"]
txn_token_jwt = true

[parties."spiffe://writ.local/ledger"]
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["trips:read", "payments:charge"]
"#;

async fn server(configure: impl FnOnce(&mut Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let srv = TestServer::start_proven_with(move |c| {
        c.policy = Some(path);
        configure(c)
    })
    .await;
    (srv, dir)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {s}"))
}

/// Verifies a compact JWS against `jwks` without jsonwebtoken: the header's `kid` must be
/// in the JWKS with the header's `alg`, and the signature must verify with ring. Returns
/// (header, claims), or why not.
fn verify(jwt: &str, jwks: &Value) -> Result<(Value, Value), String> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err(format!("{} parts, not 3", parts.len()));
    };
    let header: Value = serde_json::from_slice(&b64(h)).map_err(|e| e.to_string())?;
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let alg = header["alg"].as_str().ok_or("no alg")?;
    let jwk = jwks["keys"]
        .as_array()
        .ok_or("no keys")?
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    if jwk["alg"] != alg || jwk["use"] != "sig" {
        return Err(format!(
            "the JWK of {kid} is not for {alg} signatures: {jwk}"
        ));
    }
    let signed = format!("{h}.{c}");
    let signature = b64(s);
    let result = match alg {
        "EdDSA" => {
            assert_eq!(
                (&jwk["kty"], &jwk["crv"]),
                (&json!("OKP"), &json!("Ed25519"))
            );
            UnparsedPublicKey::new(&ED25519, b64(jwk["x"].as_str().unwrap()))
                .verify(signed.as_bytes(), &signature)
        }
        "ES256" => {
            assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-256")));
            let mut point = vec![4u8];
            point.extend(b64(jwk["x"].as_str().unwrap()));
            point.extend(b64(jwk["y"].as_str().unwrap()));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(signed.as_bytes(), &signature)
        }
        other => return Err(format!("unexpected alg {other}")),
    };
    result.map_err(|_| "bad signature".to_owned())?;
    let claims: Value = serde_json::from_slice(&b64(c)).map_err(|e| e.to_string())?;
    Ok((header, claims))
}

/// The JWKS and keys as an operator lists them.
async fn listed(srv: &TestServer) -> (Value, pb::ListSigningKeysResponse) {
    let r = ok(srv.operator().await.list_signing_keys().await, "list keys");
    (serde_json::from_str(&r.jwks_json).unwrap(), r)
}

/// The signing key's kid and the configured algorithm's next key's.
fn signing_and_next(keys: &[pb::SigningKey], alg: &str) -> (String, String) {
    let find = |state: pb::SigningKeyState| {
        keys.iter()
            .find(|k| k.alg == alg && k.state == state as i32)
            .map(|k| k.kid.clone())
            .unwrap()
    };
    let current = find(pb::SigningKeyState::Current);
    assert!(
        keys.iter().any(|k| k.kid == current && k.signing),
        "{keys:?}"
    );
    (current, find(pb::SigningKeyState::Next))
}

/// The RFC 8693 `act` a TokenInfo's actor chain makes (built from the protobuf answer,
/// apart from the server's JSON code).
fn act_of(a: &pb::Act) -> Value {
    let kind = match pb::ActorKind::try_from(a.kind).unwrap() {
        pb::ActorKind::Agent => "agent",
        pb::ActorKind::User => "user",
        pb::ActorKind::Workload => "workload",
        pb::ActorKind::Unspecified => panic!("unspecified kind"),
    };
    let client = match pb::ClientType::try_from(a.client_type).unwrap() {
        pb::ClientType::Confidential => "confidential",
        pb::ClientType::Public => "public",
        pb::ClientType::Unspecified => panic!("unspecified client type"),
    };
    let mut v = json!({"sub": a.id, "kind": kind, "client_type": client});
    if let Some(inner) = &a.act {
        v["act"] = act_of(inner);
    }
    v
}

/// alice's chain: the local minter → planner (agent) → booking (agent) → the resource
/// server `audience`. Returns (the audience's token, the planner's, the root's txn).
async fn chain_to(srv: &TestServer, audience: &str) -> (pb::DownscopeResponse, String, String) {
    let root = srv
        .mint(pb::MintRequest {
            purpose: "book a trip".into(),
            tctx: [("trip".to_string(), "lisbon-2026".to_string())].into(),
            rctx: [
                ("req_ip".to_string(), "203.0.113.7".to_string()),
                ("authn".to_string(), "passkey".to_string()),
            ]
            .into(),
            ..mint_request(
                "alice",
                build::agent(PLANNER),
                &[BOOKING, PAYMENTS, LEDGER],
                &["trips:read", "payments:charge"],
                vec![
                    (
                        "amount",
                        build::applies_to(build::max(500), &["payments:charge"]),
                    ),
                    (
                        "category",
                        build::case_insensitive(build::deny(&["Gambling"])),
                    ),
                    ("path", build::prefix("/trips")),
                ],
            )
        })
        .await;
    let txn = root.info.as_ref().unwrap().txn.clone();
    let mut planner = srv.svid_client("agent/planner").await;
    let to_booking = ok(
        planner
            .downscope(child(
                &root.token,
                build::agent(BOOKING),
                &[PAYMENTS, LEDGER],
                &["trips:read", "payments:charge"],
                vec![(
                    "amount",
                    build::applies_to(build::max(300), &["payments:charge"]),
                )],
            ))
            .await,
        "planner → booking",
    );
    let mut booking = srv.svid_client("agent/booking").await;
    let to_api = ok(
        booking
            .downscope(child(
                &to_booking.token,
                build::workload(audience),
                &[],
                &["payments:charge"],
                vec![],
            ))
            .await,
        "booking → resource server",
    );
    (to_api, root.token, txn)
}

/// Checks every claim of `claims` against the token `info` describes, requested by
/// `req_wl`, issued no earlier than `since`, with a lifetime of at most `ttl`.
fn check_claims(claims: &Value, info: &pb::TokenInfo, req_wl: &str, since: u64, ttl: u64) {
    let obj = claims.as_object().unwrap();
    let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "act",
            "aud",
            "authorization_details",
            "exp",
            "iat",
            "iss",
            "jti",
            "rctx",
            "req_wl",
            "scope",
            "sub",
            "tctx",
            "txn"
        ],
        "{claims}"
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(
        claims["aud"], "writ.local",
        "the trust domain, not a service"
    );
    assert_eq!(claims["txn"], info.txn.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "payments:charge");
    assert_eq!(claims["req_wl"], req_wl);
    assert_eq!(claims["tctx"], json!({"trip": "lisbon-2026"}));
    assert_eq!(
        claims["rctx"],
        json!({"req_ip": "203.0.113.7", "authn": "passkey"})
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    // Nested act: outermost the current actor (booking), innermost the minter.
    let act = &claims["act"];
    assert_eq!(act, &act_of(info.act.as_ref().unwrap()));
    assert_eq!(act["sub"], BOOKING);
    assert_eq!(act["kind"], "agent");
    assert_eq!(act["act"]["sub"], PLANNER);
    assert_eq!(act["act"]["act"]["sub"], "local-minter");
    assert!(act["act"]["act"].get("act").is_none(), "{act}");
    // The claims as they narrowed along the chain, in Writ's documented form.
    assert_eq!(
        claims["authorization_details"],
        json!([
            {"type": "writ_claim", "name": "amount", "actions": ["payments:charge"],
             "constraint": {"kind": "max", "value": 300}},
            {"type": "writ_claim", "name": "category",
             "constraint": {"kind": "deny-ci", "values": ["gambling"]}},
            {"type": "writ_claim", "name": "path",
             "constraint": {"kind": "prefix", "value": "/trips"}},
        ])
    );
    // Lifetime: from now, at most the JWT lifetime, never past the opaque token.
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(iat >= since && iat <= now_secs(), "iat {iat}");
    assert!(exp > iat, "exp {exp} iat {iat}");
    assert!(exp <= iat + ttl, "exp {exp} iat {iat} ttl {ttl}");
    assert!(exp <= info.expires_at_unix_ms / 1000, "exp {exp}");
}

/// The resource server asks for a JWT and checks it as a verifier would.
async fn jwt_for(srv: &TestServer, token: &str) -> (String, pb::ValidateResponse) {
    let mut api = srv.svid_client("payments").await;
    let r = ok(api.validate_with_jwt(token).await, "validate with a JWT");
    (r.txn_token_jwt.clone(), r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_token_jwt_verifies_independently_with_every_claim_under_both_algorithms() {
    let (mut srv, _dir) = server(|_| {}).await;
    let mut kids = Vec::new();
    for alg in ["EdDSA", "ES256"] {
        if alg == "ES256" {
            // Same keys on disk, the other one signing.
            srv.restart_with(|c| {
                c.signing.algorithm = writ_server::signing::SigningAlgorithm::ES256
            })
            .await;
        }
        let since = now_secs();
        let (api_token, _, txn) = chain_to(&srv, PAYMENTS).await;
        let (jwt, r) = jwt_for(&srv, &api_token.token).await;
        let info = assert_active(&r);
        assert_eq!(info.txn, txn);
        assert!(!jwt.is_empty(), "an active token gets a JWT");
        let (jwks, keys) = listed(&srv).await;
        assert_eq!(keys.algorithm, alg);
        let (signing, _) = signing_and_next(&keys.keys, alg);
        let (header, claims) = verify(&jwt, &jwks).unwrap();
        assert_eq!(
            header,
            json!({"alg": alg, "typ": "txntoken+jwt", "kid": signing}),
            "exactly alg, typ and kid"
        );
        check_claims(&claims, &info, PAYMENTS, since, 60);
        // Tampering is caught by the independent verifier.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut forged = claims.clone();
        forged["scope"] = json!("payments:charge trips:read");
        parts[1] =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string().as_bytes());
        assert_eq!(
            verify(&parts.join("."), &jwks).unwrap_err(),
            "bad signature"
        );
        // The JWT is not the opaque token, and the opaque token is not in it.
        assert!(!jwt.contains(&api_token.token));
        // Without asking, none.
        let plain = srv
            .svid_client("payments")
            .await
            .validate(introspect(&api_token.token))
            .await
            .unwrap();
        assert!(plain.active && plain.txn_token_jwt.is_empty());
        kids.push(keys.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>());
    }
    assert_eq!(kids[0], kids[1], "the keys persist across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_parties_without_txn_token_jwt_are_refused() {
    let (srv, _dir) = server(|_| {}).await;
    let (api_token, root, _) = chain_to(&srv, PAYMENTS).await;
    // The planner agent holds the root: it may validate it, never get a JWT for it.
    let mut planner = srv.svid_client("agent/planner").await;
    assert_refused(
        planner.validate_with_jwt(&root).await,
        Code::PermissionDenied,
        &["txn_token_jwt", PLANNER],
    );
    assert!(
        ok(planner.validate(introspect(&root)).await, "validate").active,
        "plain Validate still answers"
    );
    // A workload the policy does not mark.
    let (ledger_token, _, _) = chain_to(&srv, LEDGER).await;
    let mut ledger = srv.svid_client("ledger").await;
    assert_refused(
        ledger.validate_with_jwt(&ledger_token.token).await,
        Code::PermissionDenied,
        &["txn_token_jwt", LEDGER],
    );
    // Refused before anything is looked up: even for a token that is not its.
    assert_refused(
        ledger.validate_with_jwt(&api_token.token).await,
        Code::PermissionDenied,
        &["txn_token_jwt"],
    );
    // Nobody at all.
    assert_refused(
        srv.anonymous()
            .await
            .validate_with_jwt(&api_token.token)
            .await,
        Code::Unauthenticated,
        &[],
    );
    // The marked party is refused for a token that is not its own (wrong audience:
    // inactive, and no JWT).
    let (jwt, r) = jwt_for(&srv, &ledger_token.token).await;
    assert_inactive(&r, pb::InactiveReason::WrongAudience);
    assert!(jwt.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_denied_tokens_get_no_jwt() {
    let (srv, _dir) = server(|_| {}).await;
    // An action check that allows gets one; one that denies does not.
    let (api_token, _, _) = chain_to(&srv, PAYMENTS).await;
    let mut api = srv.svid_client("payments").await;
    let ask = |amount: i64| pb::ValidateRequest {
        txn_token_jwt: true,
        ..check(
            &api_token.token,
            "payments:charge",
            vec![
                ("amount", build::int(amount)),
                ("category", build::str("travel")),
                ("path", build::str("/trips/12")),
            ],
        )
    };
    let allowed = ok(api.validate(ask(100)).await, "allowed");
    assert_allowed(&allowed);
    assert!(!allowed.txn_token_jwt.is_empty());
    let denied = ok(api.validate(ask(301)).await, "denied");
    assert_denied(&denied, "amount");
    assert!(
        denied.txn_token_jwt.is_empty(),
        "a denied action gets no JWT"
    );

    // Revoked: at once, no JWT (the one issued before lives out its short lifetime).
    let (jwt, _) = jwt_for(&srv, &api_token.token).await;
    assert!(!jwt.is_empty());
    let mut holder = srv.svid_client("payments").await;
    ok(
        holder
            .revoke(revoke_token(&api_token.token, "compromised"))
            .await,
        "revoke",
    );
    let (jwt, r) = jwt_for(&srv, &api_token.token).await;
    assert_inactive(&r, pb::InactiveReason::Revoked);
    assert!(jwt.is_empty());

    // Expired: none either.
    let short = srv
        .mint(pb::MintRequest {
            ttl_seconds: 1,
            ..mint_request(
                "alice",
                build::workload(PAYMENTS),
                &[],
                &["payments:charge"],
                vec![],
            )
        })
        .await;
    sleep_past_one_second_ttl().await;
    let (jwt, r) = jwt_for(&srv, &short.token).await;
    assert_inactive(&r, pb::InactiveReason::Expired);
    assert!(jwt.is_empty());

    // Use-limited or action-check-only: the answer stands, without a JWT (a JWT cannot
    // spend a use, so replaying it would exceed the token's uses).
    for (max_uses, require_action_check) in [(3, false), (0, true)] {
        let limited = srv
            .mint(pb::MintRequest {
                max_uses,
                require_action_check,
                ..mint_request(
                    "alice",
                    build::workload(PAYMENTS),
                    &[],
                    &["payments:charge"],
                    vec![],
                )
            })
            .await;
        let r = ok(
            api.validate(pb::ValidateRequest {
                txn_token_jwt: true,
                ..check(&limited.token, "payments:charge", vec![])
            })
            .await,
            "limited",
        );
        assert_allowed(&r);
        assert!(
            r.txn_token_jwt.is_empty(),
            "max_uses {max_uses}, require_action_check {require_action_check}: no JWT"
        );
    }
}

fn key_file(srv: &TestServer) -> PathBuf {
    srv.data_dir().join("signing-keys.toml")
}

fn file_mentions(path: &Path, kid: &str) -> bool {
    std::fs::read_to_string(path).unwrap().contains(kid)
}

/// Rotation through RotateSigningKeys (what `writ keys rotate` calls): the next key was
/// published before it signs, the old key keeps verifying JWTs it signed until the overlap
/// ends (2 s here), then leaves the JWKS and the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_jwts_verifiable_until_the_overlap_ends() {
    let (srv, _dir) = server(|c| {
        c.signing.jwt_ttl_seconds = 1;
        c.signing.overlap_seconds = 2;
    })
    .await;
    let (api_token, _, _) = chain_to(&srv, PAYMENTS).await;
    let (jwks_before, keys) = listed(&srv).await;
    let (old, next) = signing_and_next(&keys.keys, "EdDSA");
    let (jwt_old, _) = jwt_for(&srv, &api_token.token).await;
    assert_eq!(verify(&jwt_old, &jwks_before).unwrap().0["kid"], old);

    // Only operators rotate.
    assert_refused(
        srv.svid_client("agent/planner")
            .await
            .rotate_signing_keys()
            .await,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_refused(
        srv.anonymous().await.rotate_signing_keys().await,
        Code::Unauthenticated,
        &[],
    );
    assert_refused(
        srv.svid_client("payments").await.list_signing_keys().await,
        Code::PermissionDenied,
        &["operator"],
    );

    let rotated = ok(srv.operator().await.rotate_signing_keys().await, "rotate");
    let retired = rotated.keys.iter().find(|k| k.kid == old).unwrap();
    assert_eq!(retired.state, pb::SigningKeyState::Retired as i32);
    assert!(!retired.signing);
    assert_eq!(
        retired.removed_at_unix_ms,
        retired.retired_at_unix_ms + 2_000
    );
    let (current, new_next) = signing_and_next(&rotated.keys, "EdDSA");
    assert_eq!(current, next, "the next key was promoted");
    assert!(new_next != old && new_next != next);

    // The old JWT still verifies from the JWKS published now.
    let (jwks_during, listed_keys) = listed(&srv).await;
    assert_eq!(listed_keys.keys, rotated.keys);
    assert!(verify(&jwt_old, &jwks_during).is_ok());
    // New JWTs are signed by the promoted key, which a verifier that cached the JWKS
    // before the rotation already knows: published before use.
    let (jwt_new, _) = jwt_for(&srv, &api_token.token).await;
    assert_eq!(verify(&jwt_new, &jwks_before).unwrap().0["kid"], next);
    assert!(verify(&jwt_new, &jwks_during).is_ok());

    // Once the overlap ends the periodic check removes the old key (both algorithms'):
    // waited for with a deadline, never timed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let jwks_after = loop {
        let (jwks, keys) = listed(&srv).await;
        if keys
            .keys
            .iter()
            .all(|k| k.state != pb::SigningKeyState::Retired as i32)
        {
            break jwks;
        }
        assert!(
            Instant::now() < deadline,
            "retired keys still listed: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        verify(&jwt_old, &jwks_after).unwrap_err(),
        format!("kid {old} is not in the JWKS")
    );
    assert!(verify(&jwt_new, &jwks_after).is_ok());
    assert_eq!(jwks_after["keys"].as_array().unwrap().len(), 4);
    assert!(!file_mentions(&key_file(&srv), &old), "deleted from disk");
    assert!(file_mentions(&key_file(&srv), &next));
}
