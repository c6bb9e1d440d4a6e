//! The OAuth face over real HTTPS (reqwest on rustls, the development CA as the root,
//! client certificates from the harness): RFC 8693 token exchange of a Writ token for a
//! narrower one, every error the token endpoint answers, Txn-Token JWTs for the parties
//! the policy allows, RFC 7662 introspection (exactly `{"active": false}` for anything
//! inactive or not the caller's) and its RFC 9701 signed form verified with the JWKS,
//! RFC 8414 metadata, and HTTP/1.1 beside HTTP/2.
// Test code: unwrap is the assertion, and JWTs are dated from the wall clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use writ_client::build;
use writ_e2e::*;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A proven server (development mode off) and its three parties: the `planner` agent, the
/// `booking` agent and the `payments` workload.
struct Scene {
    srv: TestServer,
    planner: String,
    booking: String,
    payments: String,
}

async fn scene() -> Scene {
    scene_with(|_| {}).await
}

async fn scene_with(configure: impl FnOnce(&mut Config)) -> Scene {
    let srv = TestServer::start_proven_with(configure).await;
    Scene {
        planner: srv.spiffe("agent/planner"),
        booking: srv.spiffe("agent/booking"),
        payments: srv.spiffe("workload/payments"),
        srv,
    }
}

impl Scene {
    /// alice's root for `planner`, which may reach `booking` and `payments`, minted over
    /// gRPC by the local minter.
    async fn root(&self) -> pb::MintResponse {
        self.srv
            .mint(pb::MintRequest {
                purpose: "book a trip".into(),
                tctx: [("trip".to_string(), "lisbon-2026".to_string())].into(),
                rctx: [("req_ip".to_string(), "203.0.113.7".to_string())].into(),
                ..mint_request(
                    "alice",
                    build::agent(&self.planner),
                    &[&self.booking, &self.payments],
                    &["trips:book", "payments:charge"],
                    vec![("amount", build::max(1000))],
                )
            })
            .await
    }

    /// POSTs a form to `path` as `client`.
    async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> HttpAnswer {
        post_form(client, &self.srv.http_url(path), pairs, &[]).await
    }
}

/// A form's parameters, in order (a name may repeat).
type Form<'a> = Vec<(&'a str, &'a str)>;

/// A token exchange of `subject` (a Writ token) for `audience` keeping `scope`, with
/// `extra` parameters.
fn exchange<'a>(
    subject: &'a str,
    audience: &'a str,
    scope: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", TXN_TOKEN),
        ("subject_token", subject),
        ("subject_token_type", TXN_TOKEN),
        ("audience", audience),
        ("scope", scope),
    ];
    v.extend_from_slice(extra);
    v
}

/// `pairs` without the parameter `name`.
fn without<'a>(pairs: &[(&'a str, &'a str)], name: &str) -> Vec<(&'a str, &'a str)> {
    pairs.iter().filter(|(k, _)| *k != name).copied().collect()
}

/// `pairs` with the parameter `name` set to `value`.
fn with<'a>(
    pairs: &[(&'a str, &'a str)],
    name: &'a str,
    value: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut v = without(pairs, name);
    v.push((name, value));
    v
}

/// Asserts a successful RFC 8693 answer; returns its `access_token`.
#[track_caller]
fn assert_issued(a: &HttpAnswer, scope: &str) -> String {
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["issued_token_type"], TXN_TOKEN, "{a:?}");
    assert_eq!(a.json["token_type"], "N_A", "{a:?}");
    assert_eq!(a.json["scope"], scope, "{a:?}");
    assert!(
        a.json.get("refresh_token").is_none(),
        "never a refresh token: {a:?}"
    );
    let expires_in = a.json["expires_in"].as_u64().expect("expires_in");
    assert!((1..=300).contains(&expires_in), "{a:?}");
    assert_eq!(a.header("cache-control"), "no-store", "{a:?}");
    assert_eq!(a.header("pragma"), "no-cache", "{a:?}");
    assert!(
        a.header("content-type").starts_with("application/json"),
        "{a:?}"
    );
    a.json["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Verifies `jwt` with the key its `kid` names in the published JWKS; returns its header
/// and claims. `aud`: the audience it must carry, if it carries one.
async fn verify_with_jwks(
    s: &Scene,
    jwt: &str,
    aud: Option<&str>,
) -> (jsonwebtoken::Header, Value) {
    let client = s.srv.http_client(None, HttpVersion::Any);
    let jwks = client
        .get(s.srv.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let kid = header.kid.clone().expect("a signed JWT names its key");
    let jwk = jwks.find(&kid).expect("the JWKS publishes the signing key");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[s.srv.config().issuer()]);
    validation.required_spec_claims.clear();
    match aud {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap_or_else(|e| panic!("{jwt} does not verify with the JWKS: {e}"));
    // A signature that covers nothing would pass anything: a changed claim must not.
    let parts: Vec<&str> = jwt.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["iat"] = json!(0);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
    (data.header, data.claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_exchanges_its_writ_token_for_a_narrower_one() {
    let s = scene().await;
    let root = s.root().await;
    for version in [HttpVersion::Http2, HttpVersion::Http1] {
        let planner = s
            .srv
            .http_client(Some(s.srv.svid("agent/planner")), version);
        let a = s
            .post(
                &planner,
                "/token",
                &exchange(
                    &root.token,
                    &s.booking,
                    "payments:charge",
                    &[("targets", &s.payments), ("purpose", "pay the hotel")],
                ),
            )
            .await;
        let child = assert_issued(&a, "payments:charge");
        assert_eq!(
            a.version,
            match version {
                HttpVersion::Http1 => reqwest::Version::HTTP_11,
                _ => reqwest::Version::HTTP_2,
            }
        );
        assert!(child.starts_with("writ_"), "the opaque token by default");

        // The new token validates over gRPC for its audience, narrower, with the chain.
        let mut booking = s.srv.svid_client("agent/booking").await;
        let info = assert_active(&ok(booking.validate(introspect(&child)).await, "validate"));
        assert_eq!(info.audience.as_ref().unwrap().id, s.booking);
        assert_eq!(info.scopes, vec!["payments:charge".to_string()]);
        assert_eq!(info.targets, vec![s.payments.clone()]);
        assert_eq!(info.purpose, "pay the hotel");
        assert_eq!(info.subject, "alice");
        assert_eq!(info.txn, root.info.as_ref().unwrap().txn);
        assert_eq!(
            act_ids(&info),
            vec![s.planner.clone(), LOCAL_MINTER.to_string()]
        );
        assert_eq!(info.actor_auth, pb::AuthMethod::Mtls as i32);
        // tctx is inherited unchanged, the claim too.
        assert_eq!(info.tctx["trip"], "lisbon-2026");
        assert!(info.claims.contains_key("amount"));
    }

    // The parent is still the planner's, untouched.
    let mut planner = s.srv.svid_client("agent/planner").await;
    let parent = assert_active(&ok(
        planner.validate(introspect(&root.token)).await,
        "validate",
    ));
    assert_eq!(parent.scopes.len(), 2);

    // rctx can only shrink, by name; the trust domain as audience names the next hop in
    // resource.
    let http = s.srv.http_svid_client("agent/planner");
    let a = s
        .post(
            &http,
            "/token",
            &with(
                &exchange(&root.token, "writ.local", "trips:book", &[]),
                "resource",
                &s.booking,
            )
            .into_iter()
            .chain([("drop_request_context", "req_ip"), ("ttl_seconds", "60")])
            .collect::<Vec<_>>(),
        )
        .await;
    let child = assert_issued(&a, "trips:book");
    assert!(a.json["expires_in"].as_u64().unwrap() <= 60, "{a:?}");
    let mut booking = s.srv.svid_client("agent/booking").await;
    let info = assert_active(&ok(booking.validate(introspect(&child)).await, "validate"));
    assert!(info.rctx.is_empty(), "req_ip was dropped: {:?}", info.rctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused_naming_the_dimension() {
    let s = scene().await;
    let root = s.root().await.token;
    let planner = s.srv.http_svid_client("agent/planner");
    let intruder = s.srv.spiffe("agent/intruder");
    let cases: Vec<(Form<'_>, &str, Vec<&str>)> = vec![
        // A scope the subject token does not hold.
        (
            exchange(&root, &s.booking, "payments:charge admin:all", &[]),
            "invalid_scope",
            vec!["scopes", "admin:all"],
        ),
        // A next hop outside the subject token's targets.
        (
            exchange(&root, &intruder, "trips:book", &[]),
            "invalid_target",
            vec!["audience", "intruder"],
        ),
        // Targets beyond the parent's.
        (
            exchange(&root, &s.booking, "trips:book", &[("targets", &intruder)]),
            "invalid_target",
            vec!["targets", "intruder"],
        ),
        // Back to the planner itself: a loop.
        (
            exchange(&root, &s.planner, "trips:book", &[]),
            "invalid_target",
            vec!["loop"],
        ),
        // No party at all.
        (
            exchange(&root, "spiffe://other.example/agent/x", "trips:book", &[]),
            "invalid_target",
            vec!["audience", "not a party"],
        ),
        // Outliving the parent.
        (
            exchange(&root, &s.booking, "trips:book", &[("ttl_seconds", "86400")]),
            "invalid_request",
            vec!["expiry"],
        ),
    ];
    for (pairs, error, needles) in cases {
        s.post(&planner, "/token", &pairs)
            .await
            .assert_error(400, error, &needles);
    }
    // Nothing was derived: the refusals are audited, no child exists.
    let txn = {
        let mut c = s.srv.svid_client("agent/planner").await;
        assert_active(&ok(c.validate(introspect(&root)).await, "validate")).txn
    };
    let events = s.srv.events(&txn).await;
    assert!(
        !events
            .iter()
            .any(|e| e.kind == pb::EventKind::Downscoped as i32)
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == pb::EventKind::Refused as i32
                && e.dimension == "scopes"
                && e.actor == s.planner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_the_token_endpoint_is_rfc_6749_shaped() {
    let s = scene().await;
    let root = s.root().await.token;
    let planner = s.srv.http_svid_client("agent/planner");
    let good = exchange(&root, &s.booking, "trips:book", &[]);

    // invalid_request: missing, repeated, malformed or unacceptable parameters.
    for (pairs, needle) in [
        (without(&good, "subject_token"), "subject_token: required"),
        (
            without(&good, "subject_token_type"),
            "subject_token_type: required",
        ),
        (
            without(&good, "requested_token_type"),
            "requested_token_type: required",
        ),
        (without(&good, "grant_type"), "grant_type: required"),
        (without(&good, "scope"), "scope: required"),
        (without(&good, "audience"), "audience: required"),
        (
            with(&good, "requested_token_type", ACCESS_TOKEN),
            "requested_token_type",
        ),
        (
            with(&good, "subject_token_type", ACCESS_TOKEN),
            "subject_token_type",
        ),
        (
            with(&good, "subject_token_type", REFRESH_TOKEN),
            "refresh tokens",
        ),
        (
            with(&good, "request_details", "{\"trip\":\"paris\"}"),
            "request_details",
        ),
        (
            with(&good, "request_context", "{\"req_ip\":\"10.0.0.1\"}"),
            "request_context",
        ),
        (with(&good, "actor_token", "x"), "actor_token"),
        (with(&good, "ttl_seconds", "soon"), "ttl_seconds"),
        (with(&good, "txn_token_jwt", "yes"), "txn_token_jwt"),
        (with(&good, "drop_request_context", "nope"), "drop_rctx"),
        (with(&good, "audience", "writ.local"), "resource: required"),
    ] {
        s.post(&planner, "/token", &pairs)
            .await
            .assert_error(400, "invalid_request", &[needle]);
    }
    // A parameter sent twice, however equal.
    let mut twice = good.clone();
    twice.push(("scope", "trips:book"));
    s.post(&planner, "/token", &twice).await.assert_error(
        400,
        "invalid_request",
        &["scope: sent more than once"],
    );
    // The wrong content type, and a body over the limit.
    let url = s.srv.http_url("/token");
    let json = HttpAnswer::read(
        planner
            .post(&url)
            .header("content-type", "application/json")
            .body(form_body(&good))
            .send()
            .await
            .unwrap(),
    )
    .await;
    json.assert_error(400, "invalid_request", &["Content-Type"]);
    let huge = "x".repeat(70 * 1024);
    s.post(&planner, "/token", &with(&good, "purpose", &huge))
        .await
        .assert_error(400, "invalid_request", &["larger than 65536"]);

    // invalid_client, 401 with a challenge: nobody, a wrong credential, a client_id that
    // is not the identity proven.
    let anonymous = s.srv.http_client(None, HttpVersion::Any);
    for (client, headers, pairs, needle) in [
        (
            &anonymous,
            vec![],
            good.clone(),
            "client authentication is required",
        ),
        (
            &anonymous,
            vec![("authorization", "Bearer wmc_not-a-credential")],
            good.clone(),
            "credential",
        ),
        (
            &planner,
            vec![],
            with(&good, "client_id", &s.booking),
            "client_id",
        ),
    ] {
        let a = post_form(client, &url, &pairs, &headers).await;
        a.assert_error(401, "invalid_client", &[needle]);
        assert!(a.header("www-authenticate").starts_with("Bearer"), "{a:?}");
    }
    // Two proofs at once: invalid_request.
    let bearer = format!("Bearer {}", s.srv.credential());
    post_form(&planner, &url, &good, &[("authorization", &bearer)])
        .await
        .assert_error(400, "invalid_request", &["one proof"]);
    // client_id naming the caller is fine.
    assert_issued(
        &s.post(&planner, "/token", &with(&good, "client_id", &s.planner))
            .await,
        "trips:book",
    );

    // invalid_request: a Writ-format string that does not verify (never tried as a JWT), a
    // token that is not the caller's, a revoked one.
    let forged = flip_middle(&root);
    for subject in ["writ_garbage", forged.as_str()] {
        s.post(&planner, "/token", &with(&good, "subject_token", subject))
            .await
            .assert_error(400, "invalid_request", &["subject_token"]);
    }
    let booking = s.srv.http_svid_client("agent/booking");
    s.post(
        &booking,
        "/token",
        &exchange(&root, &s.payments, "trips:book", &[]),
    )
    .await
    .assert_error(400, "invalid_request", &["holder"]);

    // unauthorized_client: a minter cannot hold a Writ token; an agent cannot mint from
    // an external subject token.
    let minter = s.srv.http_client(None, HttpVersion::Any);
    post_form(&minter, &url, &good, &[("authorization", &bearer)])
        .await
        .assert_error(400, "unauthorized_client", &["role"]);
    let external = [
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", TXN_TOKEN),
        (
            "subject_token",
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", s.planner.as_str()),
    ];
    s.post(&planner, "/token", &external).await.assert_error(
        400,
        "unauthorized_client",
        &["minter"],
    );
    // A minter's external subject token no configured issuer vouches for: refused, and
    // no transaction is started.
    let a = post_form(&minter, &url, &external, &[("authorization", &bearer)]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        ["invalid_request", "invalid_request"].contains(&a.json["error"].as_str().unwrap()),
        "{a:?}"
    );
    assert!(a.json.get("access_token").is_none());

    // unsupported_grant_type.
    s.post(
        &planner,
        "/token",
        &with(&good, "grant_type", "client_credentials"),
    )
    .await
    .assert_error(400, "unsupported_grant_type", &["client_credentials"]);

    // The holder still exchanges the same token once the errors are done.
    assert_issued(&s.post(&planner, "/token", &good).await, "trips:book");
    // Revoked: invalid_request.
    s.srv
        .revoke_as_operator(revoke_token_id(
            &{
                let mut c = s.srv.svid_client("agent/planner").await;
                assert_active(&ok(c.validate(introspect(&root)).await, "validate")).token_id
            },
            "compromised",
        ))
        .await;
    s.post(&planner, "/token", &good)
        .await
        .assert_error(400, "invalid_request", &["revoked"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_limit_is_told_when_to_retry() {
    let s = scene_with(|c| {
        c.limits.anonymous.requests_per_second = 1;
        c.limits.anonymous.burst = 1;
    })
    .await;
    let anonymous = s.srv.http_client(None, HttpVersion::Any);
    let pairs = [("token", "writ_x")];
    // A request refused for its form costs its sender all the same.
    post_form(
        &anonymous,
        &s.srv.http_url("/introspect"),
        &pairs,
        &[("content-type", "text/plain")],
    )
    .await
    .assert_error(400, "invalid_request", &["Content-Type"]);
    let a = s.post(&anonymous, "/introspect", &pairs).await;
    a.assert_error(429, "temporarily_unavailable", &["rate limit"]);
    assert!(
        a.header("retry-after").parse::<u64>().unwrap() >= 1,
        "{a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_token_jwts_go_only_to_parties_the_policy_allows() {
    let s = scene().await;
    let root = s.root().await;
    let planner = s.srv.http_svid_client("agent/planner");
    // An agent never receives a JWT (development policy: workloads only), whether it
    // would be the next hop or is the caller the JWT is answered to.
    s.post(
        &planner,
        "/token",
        &exchange(
            &root.token,
            &s.booking,
            "trips:book",
            &[("txn_token_jwt", "true")],
        ),
    )
    .await
    .assert_error(400, "invalid_request", &["txn_token_jwt", "planner"]);
    s.post(
        &planner,
        "/token",
        &exchange(
            &root.token,
            &s.payments,
            "payments:charge",
            &[("txn_token_jwt", "true")],
        ),
    )
    .await
    .assert_error(
        400,
        "invalid_request",
        &["txn_token_jwt", "the caller", "planner"],
    );
    // A workload holding a token asks for the next internal hop's JWT: given.
    let ledger = s.srv.spiffe("workload/ledger");
    let held = |max_uses: u32| {
        s.srv.mint(pb::MintRequest {
            purpose: "settle".into(),
            tctx: [("trip".to_string(), "lisbon-2026".to_string())].into(),
            max_uses,
            ..mint_request(
                "alice",
                build::workload(&s.payments),
                &[&ledger],
                &["payments:charge"],
                vec![],
            )
        })
    };
    let payments_root = held(0).await;
    let payments = s.srv.http_svid_client("workload/payments");
    let a = s
        .post(
            &payments,
            "/token",
            &exchange(
                &payments_root.token,
                &ledger,
                "payments:charge",
                &[("txn_token_jwt", "true")],
            ),
        )
        .await;
    let jwt = assert_issued(&a, "payments:charge");
    assert!(!jwt.starts_with("writ_"));
    assert!(a.json["expires_in"].as_u64().unwrap() <= 300);
    let (header, claims) = verify_with_jwks(&s, &jwt, Some("writ.local")).await;
    assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
    assert_eq!(claims["iss"], s.srv.config().issuer());
    assert_eq!(claims["aud"], "writ.local");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["txn"], payments_root.info.as_ref().unwrap().txn);
    assert_eq!(claims["scope"], "payments:charge");
    assert_eq!(claims["req_wl"], s.payments);
    assert_eq!(claims["tctx"]["trip"], "lisbon-2026");
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat <= now() && exp > now() && exp - iat <= 300, "{claims}");

    // A use-limited token is never stood for by a JWT (a JWT cannot spend a use): refused
    // before the child is stored, so the parent's single use is still there to pass on.
    let limited = held(1).await;
    s.post(
        &payments,
        "/token",
        &exchange(
            &limited.token,
            &ledger,
            "payments:charge",
            &[("txn_token_jwt", "true")],
        ),
    )
    .await
    .assert_error(400, "invalid_request", &["txn_token_jwt", "max_uses"]);
    let a = s
        .post(
            &payments,
            "/token",
            &exchange(&limited.token, &ledger, "payments:charge", &[]),
        )
        .await;
    assert_issued(&a, "payments:charge");

    // Introspection gives the same JWT on request (the phantom-token pattern), to the
    // workload holding an opaque token, and never to an agent.
    let a = s
        .post(
            &planner,
            "/token",
            &exchange(&root.token, &s.payments, "payments:charge", &[]),
        )
        .await;
    let opaque = assert_issued(&a, "payments:charge");
    let payments = s.srv.http_svid_client("workload/payments");
    let i = s
        .post(
            &payments,
            "/introspect",
            &[("token", opaque.as_str()), ("txn_token_jwt", "true")],
        )
        .await;
    assert_eq!(i.json["active"], true, "{i:?}");
    let jwt = i.json["txn_token"]
        .as_str()
        .expect("a txn_token")
        .to_owned();
    let (header, claims) = verify_with_jwks(&s, &jwt, Some("writ.local")).await;
    assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
    assert_eq!(claims["req_wl"], s.payments);
    assert_eq!(claims["scope"], "payments:charge");
    assert_eq!(claims["txn"], root.info.as_ref().unwrap().txn);
    assert!(
        claims["exp"].as_u64().unwrap() <= i.json["exp"].as_u64().unwrap(),
        "never past the opaque token: {claims}"
    );
    s.post(
        &planner,
        "/introspect",
        &[("token", root.token.as_str()), ("txn_token_jwt", "true")],
    )
    .await
    .assert_error(400, "invalid_request", &["txn_token_jwt", "planner"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_the_holder_and_exactly_inactive_to_anyone_else() {
    let s = scene().await;
    let root = s.root().await;
    let planner = s.srv.http_svid_client("agent/planner");
    let child = assert_issued(
        &s.post(
            &planner,
            "/token",
            &exchange(&root.token, &s.booking, "payments:charge", &[]),
        )
        .await,
        "payments:charge",
    );
    let booking = s.srv.http_svid_client("agent/booking");
    let a = s.post(&booking, "/introspect", &[("token", &child)]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("cache-control"), "no-store");
    let j = &a.json;
    assert_eq!(j["active"], true, "{a:?}");
    assert_eq!(j["scope"], "payments:charge");
    assert_eq!(j["sub"], "alice");
    assert_eq!(j["aud"], s.booking);
    assert_eq!(j["iss"], s.srv.config().issuer());
    assert_eq!(j["txn"], root.info.as_ref().unwrap().txn);
    // The current actor: the planner, which derived it.
    assert_eq!(j["client_id"], s.planner);
    let (iat, exp) = (j["iat"].as_u64().unwrap(), j["exp"].as_u64().unwrap());
    assert!(iat <= now() && now() < exp, "{j}");
    // With a hint, the same.
    let hinted = s
        .post(
            &booking,
            "/introspect",
            &[("token", &child), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(hinted.json["active"], true);

    // Inactive for every reason, exactly alike: another party's token, a revoked one, an
    // unknown one (tagged by this server's key, stored elsewhere), a forged one, garbage.
    let revoked = s
        .srv
        .mint(mint_request(
            "bob",
            build::agent(&s.booking),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await
        .token;
    let mut as_booking = s.srv.svid_client("agent/booking").await;
    ok(
        as_booking.revoke(revoke_token(&revoked, "done")).await,
        "revoke",
    );
    let elsewhere = TestServer::start_with_keys_of(&s.srv).await;
    let unknown = elsewhere
        .mint(mint_request(
            "carol",
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await
        .token;
    let forged = flip_middle(&child);
    let cases = [
        ("another party's", root.token.as_str()),
        ("revoked", revoked.as_str()),
        ("unknown", unknown.as_str()),
        ("forged", forged.as_str()),
        ("garbage", "hello"),
        ("huge garbage", &"x".repeat(10_000)),
    ];
    let mut answers = Vec::new();
    for (what, token) in cases {
        let a = s.post(&booking, "/introspect", &[("token", token)]).await;
        assert_eq!(a.status, 200, "{what}: {a:?}");
        assert_eq!(a.text, r#"{"active":false}"#, "{what}: exactly inactive");
        let mut headers: Vec<(String, String)> = a
            .headers
            .iter()
            // The date and the request's own id differ per answer by nature.
            .filter(|(k, _)| *k != "date" && *k != "x-request-id")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        answers.push((what, headers));
    }
    for (what, headers) in &answers[1..] {
        assert_eq!(
            headers, &answers[0].1,
            "{what}: headers differ from another reason's"
        );
    }

    // A caller must authenticate; a minter holds nothing to introspect.
    let anonymous = s.srv.http_client(None, HttpVersion::Any);
    s.post(&anonymous, "/introspect", &[("token", &child)])
        .await
        .assert_error(401, "invalid_client", &["authentication"]);
    s.post(&booking, "/introspect", &[]).await.assert_error(
        400,
        "invalid_request",
        &["token: required"],
    );
    let bearer = format!("Bearer {}", s.srv.credential());
    post_form(
        &anonymous,
        &s.srv.http_url("/introspect"),
        &[("token", &child)],
        &[("authorization", &bearer)],
    )
    .await
    .assert_error(400, "unauthorized_client", &["role"]);
}

/// Needs the full `writ_api::oauth::introspection` (issue 11's JWT work), which adds the
/// nested `act` chain; the skeleton on this branch carries the registered claims only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_nests_the_chain_of_actors_current_first() {
    let s = scene().await;
    let root = s.root().await;
    let planner = s.srv.http_svid_client("agent/planner");
    let child = assert_issued(
        &s.post(
            &planner,
            "/token",
            &exchange(&root.token, &s.booking, "payments:charge", &[]),
        )
        .await,
        "payments:charge",
    );
    let booking = s.srv.http_svid_client("agent/booking");
    let a = s.post(&booking, "/introspect", &[("token", &child)]).await;
    let act = &a.json["act"];
    assert_eq!(
        act["sub"], s.planner,
        "the outermost act is the current actor: {a:?}"
    );
    assert_eq!(act["act"]["sub"], LOCAL_MINTER, "{a:?}");
    assert!(act["act"].get("act").is_none(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_introspection_verifies_with_the_published_keys() {
    let s = scene().await;
    let root = s.root().await;
    let planner = s.srv.http_svid_client("agent/planner");
    let url = s.srv.http_url("/introspect");
    for accept in ["application/jwt", "application/token-introspection+jwt"] {
        let a = post_form(
            &planner,
            &url,
            &[("token", &root.token)],
            &[("accept", accept)],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.header("content-type"),
            "application/token-introspection+jwt"
        );
        assert_eq!(a.header("cache-control"), "no-store");
        let (header, claims) = verify_with_jwks(&s, &a.text, Some(&s.planner)).await;
        assert_eq!(header.typ.as_deref(), Some("token-introspection+jwt"));
        assert_eq!(claims["iss"], s.srv.config().issuer());
        assert_eq!(claims["aud"], s.planner);
        assert!(claims["iat"].as_u64().unwrap() <= now());
        let answer = &claims["token_introspection"];
        assert_eq!(answer["active"], true, "{claims}");
        assert_eq!(answer["sub"], "alice");
        assert_eq!(answer["scope"], "payments:charge trips:book");
    }
    // Inactive, signed too, and saying nothing more.
    let a = post_form(
        &planner,
        &url,
        &[("token", "hello")],
        &[("accept", "application/jwt")],
    )
    .await;
    let (_, claims) = verify_with_jwks(&s, &a.text, Some(&s.planner)).await;
    assert_eq!(claims["token_introspection"], json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_jwks_and_unknown_routes_over_both_http_versions() {
    let s = scene().await;
    let issuer = s.srv.config().issuer();
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let client = s.srv.http_client(None, version);
        let a = HttpAnswer::read(
            client
                .get(s.srv.http_url("/.well-known/oauth-authorization-server"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.version,
            match version {
                HttpVersion::Http1 => reqwest::Version::HTTP_11,
                _ => reqwest::Version::HTTP_2,
            }
        );
        let m = &a.json;
        assert_eq!(m["issuer"], issuer);
        assert_eq!(m["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(m["introspection_endpoint"], format!("{issuer}/introspect"));
        assert_eq!(m["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
        assert_eq!(m["grant_types_supported"], json!([TOKEN_EXCHANGE]));
        assert_eq!(m["issued_token_types_supported"], json!([TXN_TOKEN]));
        assert_eq!(
            m["token_endpoint_auth_methods_supported"],
            json!(["tls_client_auth", "private_key_jwt"])
        );
        assert!(
            !m["introspection_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .is_empty()
        );

        let a = HttpAnswer::read(
            client
                .get(s.srv.http_url("/.well-known/jwks.json"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.header("cache-control").contains("max-age="), "{a:?}");
        let keys = a.json["keys"].as_array().unwrap();
        assert!(!keys.is_empty());
        assert!(
            keys.iter()
                .all(|k| k["kid"].is_string() && k.get("d").is_none())
        );

        let a =
            HttpAnswer::read(client.get(s.srv.http_url("/nowhere")).send().await.unwrap()).await;
        assert_eq!(
            (a.status, a.json["error"].as_str()),
            (404, Some("not_found")),
            "{a:?}"
        );
        let a = HttpAnswer::read(client.get(s.srv.http_url("/token")).send().await.unwrap()).await;
        assert_eq!(
            (a.status, a.json["error"].as_str()),
            (405, Some("method_not_allowed")),
            "{a:?}"
        );
        assert_eq!(a.header("allow"), "POST");
        let a = HttpAnswer::read(
            client
                .post(s.srv.http_url("/.well-known/jwks.json"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 405, "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_in_the_form_is_one_proof_like_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("jwt-bundle.json");
    let signer = jwt::Signer::new("k1");
    std::fs::write(&bundle, json!({ "keys": [signer.jwk.clone()] }).to_string()).unwrap();
    let s = scene_with(|c| c.auth.jwt_svid_bundle = Some(bundle.clone())).await;
    let root = s.root().await.token;
    let aud = s.srv.spiffe("writ");
    let assertion = |jti: &str| {
        let now = now();
        signer.sign(
            "k1",
            &json!({"sub": s.planner, "aud": aud, "iat": now, "exp": now + 60, "jti": jti}),
        )
    };
    // Behind a TLS-terminating proxy: no client certificate, the assertion in the form.
    let proxied = s.srv.http_client(None, HttpVersion::Http1);
    let url = s.srv.http_url("/token");
    let one = assertion("one");
    let good = exchange(&root, &s.booking, "trips:book", &[]);
    let mut asserted = good.clone();
    asserted.extend([
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", one.as_str()),
        ("client_id", s.planner.as_str()),
    ]);
    let child = assert_issued(
        &post_form(&proxied, &url, &asserted, &[]).await,
        "trips:book",
    );
    let mut booking = s.srv.svid_client("agent/booking").await;
    let info = assert_active(&ok(booking.validate(introspect(&child)).await, "validate"));
    assert_eq!(info.actor_auth, pb::AuthMethod::JwtSvid as i32);
    // Replayed: the same proof, refused as at gRPC.
    post_form(&proxied, &url, &asserted, &[])
        .await
        .assert_error(401, "invalid_client", &["client_assertion:", "jti"]);
    // The form's assertion beside the header's, or beside a client certificate: two
    // proofs.
    let two = assertion("two");
    let three = assertion("three");
    let mut form_and_header = good.clone();
    form_and_header.extend([
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", two.as_str()),
    ]);
    post_form(
        &proxied,
        &url,
        &form_and_header,
        &[("writ-client-assertion", &three)],
    )
    .await
    .assert_error(400, "invalid_request", &["one proof", "client_assertion"]);
    let with_certificate = s.srv.http_svid_client("agent/planner");
    post_form(&with_certificate, &url, &form_and_header, &[])
        .await
        .assert_error(
            400,
            "invalid_request",
            &["client certificate", "client_assertion"],
        );
    // Another assertion type is refused as client authentication.
    let four = assertion("four");
    let mut saml = good.clone();
    saml.extend([
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        ),
        ("client_assertion", four.as_str()),
    ]);
    post_form(&proxied, &url, &saml, &[]).await.assert_error(
        401,
        "invalid_client",
        &["client_assertion_type"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_loopback_carries_the_peer_and_a_disabled_listener_is_not_bound() {
    let s = scene_with(|c| c.tls.enabled = false).await;
    assert!(s.srv.http_url("/token").starts_with("http://"));
    // No CA to trust: the client never starts TLS. HTTP/1.1, and HTTP/2 with prior
    // knowledge (h2c).
    for (version, expected) in [
        (HttpVersion::Http1, reqwest::Version::HTTP_11),
        (HttpVersion::Http2, reqwest::Version::HTTP_2),
    ] {
        let client = http_client("", None, version);
        let a = HttpAnswer::read(
            client
                .get(s.srv.http_url("/.well-known/oauth-authorization-server"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((a.status, a.version), (200, expected), "{a:?}");
    }
    let client = http_client("", None, HttpVersion::Http1);
    // No certificate without TLS: anonymous callers are refused, and rate-limited by
    // their address (the listener hands the auth seam the peer).
    let a = post_form(
        &client,
        &s.srv.http_url("/introspect"),
        &[("token", "x")],
        &[],
    )
    .await;
    a.assert_error(401, "invalid_client", &["authentication"]);

    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tmp.path().join("data"),
        ..Config::default()
    };
    config.http.enabled = false;
    let running = writ_server::start(config).await.unwrap();
    assert_eq!(running.http_addr, None);
    running.shutdown().await.unwrap();
}

/// A client that sends a form's headers and then stalls its body holds a buffer before it
/// is authenticated: it is cut off after the body read timeout (10 s) with
/// `invalid_request`, well before the request timeout (30 s, answered 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_before_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = scene_with(|c| c.tls.enabled = false).await;
    let mut conn = tokio::net::TcpStream::connect(s.srv.http_addr())
        .await
        .unwrap();
    conn.write_all(
        b"POST /token HTTP/1.1\r\nHost: writ\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
          grant_type=",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the body of the answer has arrived (or the connection closes).
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("}") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within a minute");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("invalid_request"), "{text}");
    assert!(text.contains("request body took longer"), "{text}");
}
