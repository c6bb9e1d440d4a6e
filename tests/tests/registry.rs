//! The party registry, end to end over mTLS: a policy file says what each party is (kind,
//! client type, roles) and the most it may hold (its ceiling); Mint and Downscope take the
//! audience's facts from it and refuse, naming the dimension, an unknown scope, a grant
//! above the ceiling, a mislabelled or unregistered audience. JWT client assertions are
//! verified with the keys the policy registers. A good policy reload applies while calls
//! run; a bad one is refused and the policy in force stays.
// Test code: unwrap is the assertion, and assertions are dated from the wall clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;
use writ_client::build;
use writ_e2e::*;

const PLANNER: &str = "spiffe://writ.local/agent/planner";
const BOOKING: &str = "spiffe://writ.local/agent/booking";
const KIOSK: &str = "spiffe://writ.local/agent/kiosk";

/// A closed policy: two scopes, a planner that may hold both, a booking agent capped at
/// `trips:read` and `payments:charge` with `amount ≤ 500`, and a public-client kiosk.
fn policy(extra: &str) -> String {
    format!(
        r#"
trust_domain = "writ.local"

[scopes."trips:read"]
description = "Read the user's trips"

[scopes."payments:charge"]
description = "Charge the user's card"
high_privilege = true

[parties."{PLANNER}"]
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["trips:read", "payments:charge"]
claims = ["amount:max:1000"]
claim_scopes = ["amount=payments:charge"]

[parties."{BOOKING}"]
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["trips:read", "payments:charge"]
claims = ["amount:max:500"]
claim_scopes = ["amount=payments:charge"]

[parties."{KIOSK}"]
kind = "agent"
client_type = "public"
roles = ["resource_server"]
scopes = ["trips:read"]
{extra}
"#
    )
}

fn write_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn server(policy_text: &str) -> (TestServer, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write_policy(&path, policy_text);
    let p = path.clone();
    let srv = TestServer::start_proven_with(move |c| c.policy = Some(p)).await;
    (srv, dir, path)
}

fn root(scopes: &[&str], amount: i64) -> pb::MintRequest {
    mint_request(
        "alice",
        build::agent(PLANNER),
        &[BOOKING, KIOSK],
        scopes,
        vec![("amount", build::max(amount))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_stay_within_the_registry() {
    let (srv, _dir, _) = server(&policy("")).await;
    let mut minter = srv.minter().await;

    // An unknown scope is refused, never treated as unconstrained.
    assert_refused(
        minter
            .mint(root(&["trips:read", "trips:delete"], 100))
            .await,
        Code::InvalidArgument,
        &["invalid_scope", "trips:delete"],
    );
    // The audience's kind comes from the registry: a request that labels it otherwise is
    // refused.
    let mut mislabelled = root(&["trips:read"], 100);
    mislabelled.audience = Some(build::workload(PLANNER));
    assert_refused(
        minter.mint(mislabelled).await,
        Code::PermissionDenied,
        &["party", "agent"],
    );
    // An unregistered audience.
    let mut stranger = root(&["trips:read"], 100);
    stranger.audience = Some(build::agent("spiffe://writ.local/agent/stranger"));
    assert_refused(
        minter.mint(stranger).await,
        Code::PermissionDenied,
        &["party", "not a registered party"],
    );
    // Above the planner's ceiling (amount ≤ 1000 on payments:charge).
    assert_refused(
        minter.mint(root(&["payments:charge"], 5000)).await,
        Code::PermissionDenied,
        &["ceiling"],
    );

    let parent = ok(
        minter
            .mint(root(&["trips:read", "payments:charge"], 1000))
            .await,
        "a root within the ceiling",
    );
    let mut planner = srv.svid_client("agent/planner").await;
    // Booking may hold at most amount ≤ 500.
    assert_refused(
        planner
            .downscope(child(
                &parent.token,
                build::agent(BOOKING),
                &[],
                &["payments:charge"],
                vec![("amount", build::max(800))],
            ))
            .await,
        Code::PermissionDenied,
        &["ceiling", "amount"],
    );
    let booked = ok(
        planner
            .downscope(child(
                &parent.token,
                build::agent(BOOKING),
                &[],
                &["payments:charge"],
                vec![("amount", build::max(400))],
            ))
            .await,
        "within booking's ceiling",
    );
    // Validate reports the registry's facts about the current actor.
    let mut booking = srv.svid_client("agent/booking").await;
    let info = assert_active(&ok(
        booking.validate(introspect(&booked.token)).await,
        "validate",
    ));
    assert!(info.agent_traffic);
    assert_eq!(info.actor_client_type, pb::ClientType::Confidential as i32);
    assert_eq!(info.actor_auth, pb::AuthMethod::Mtls as i32);
    // The refusal is in the trail with its dimension.
    let events = srv.events(&info.txn).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == pb::EventKind::Refused as i32 && e.dimension == "ceiling"),
        "{events:?}"
    );

    // A public client gets the stricter limits: not a high-privilege scope, and only
    // limited, action-checked uses.
    let mut kiosk_req = child(
        &parent.token,
        build::agent(KIOSK),
        &[],
        &["trips:read"],
        vec![],
    );
    kiosk_req.audience = Some(pb::Party {
        id: KIOSK.into(),
        kind: pb::ActorKind::Agent.into(),
        client_type: pb::ClientType::Public.into(),
    });
    assert_refused(
        planner.downscope(kiosk_req.clone()).await,
        Code::PermissionDenied,
        &["ceiling", "public client"],
    );
    kiosk_req.max_uses = 3;
    kiosk_req.require_action_check = true;
    kiosk_req.ttl_seconds = 60;
    ok(
        planner.downscope(kiosk_req).await,
        "a public client within its limits",
    );

    // An unregistered identity with a valid certificate is refused at the door.
    let mut stranger = srv.svid_client("agent/stranger").await;
    assert_refused(
        stranger.validate(introspect(&booked.token)).await,
        Code::PermissionDenied,
        &["not a registered party"],
    );
}

/// The planner derives a `trips:read` token for booking.
async fn booking_may_search(
    srv: &TestServer,
    parent: &str,
) -> Result<pb::DownscopeResponse, writ_client::ClientError> {
    let mut c = srv
        .connect_with(Some(srv.svid("agent/planner")))
        .await
        .unwrap();
    c.downscope(child(
        parent,
        build::agent(BOOKING),
        &[],
        &["trips:read"],
        vec![],
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_reload_applies_and_a_bad_one_keeps_the_policy_under_load() {
    let (srv, _dir, path) = server(&policy("")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Load: the planner validates its token continuously while the policy changes.
    let parent = srv.mint(root(&["trips:read"], 100)).await.token;
    let mut planner = srv.svid_client("agent/planner").await;
    let load = {
        let stop = stop.clone();
        let parent = parent.clone();
        tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = planner.validate(introspect(&parent)).await;
                assert_active(&ok(r, "validate under reloads"));
                calls += 1;
            }
            calls
        })
    };
    // A good reload takes trips:read out of booking's ceiling.
    let narrowed = policy("").replace(
        &format!("[parties.\"{BOOKING}\"]\nkind = \"agent\"\nclient_type = \"confidential\"\nroles = [\"agent\", \"resource_server\"]\nscopes = [\"trips:read\", \"payments:charge\"]"),
        &format!("[parties.\"{BOOKING}\"]\nkind = \"agent\"\nclient_type = \"confidential\"\nroles = [\"agent\", \"resource_server\"]\nscopes = [\"payments:charge\"]"),
    );
    assert_ne!(narrowed, policy(""), "the test edits the policy");
    ok(booking_may_search(&srv, &parent).await, "before the reload");
    write_policy(&path, &narrowed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match booking_may_search(&srv, &parent).await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the good reload never applied"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_refused(
        booking_may_search(&srv, &parent).await,
        Code::PermissionDenied,
        &["ceiling"],
    );

    // A bad file (an unknown key) is refused; the narrowed policy stays in force.
    write_policy(&path, &format!("{narrowed}\nnot_a_setting = true\n"));
    // Give the watcher several polls to (wrongly) apply anything.
    tokio::time::sleep(writ_server::POLICY_POLL * 3).await;
    assert_refused(
        booking_may_search(&srv, &parent).await,
        Code::PermissionDenied,
        &["ceiling"],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0, "the load ran");
}

/// Validate keeps a token's encoded answer, but its latent scopes follow the policy in
/// force: a reload that stops marking a scope high-privilege shows in the very answers
/// that were kept before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_answers_follow_a_reload_of_the_policy() {
    let (srv, _dir, path) = server(&policy("")).await;
    let token = srv
        .mint(root(&["trips:read", "payments:charge"], 100))
        .await
        .token;
    let mut planner = srv.svid_client("agent/planner").await;
    for _ in 0..3 {
        let info = assert_active(&ok(planner.validate(introspect(&token)).await, "validate"));
        assert_eq!(info.latent_scopes, ["payments:charge"], "{info:?}");
    }
    let relaxed = policy("").replace("high_privilege = true\n", "");
    assert_ne!(relaxed, policy(""), "the test edits the policy");
    write_policy(&path, &relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = assert_active(&ok(planner.validate(introspect(&token)).await, "validate"));
        if info.latent_scopes.is_empty() {
            // Everything else in the answer is as it was.
            assert_eq!(info.scopes, ["payments:charge", "trips:read"], "{info:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the kept answer never followed the reload: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RFC 7523 client assertions, verified with the key the policy registers for the party.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_assertions_are_verified_with_registered_keys() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
    let public = pair.public_key_pem();
    let text = policy("").replace(
        "claim_scopes = [\"amount=payments:charge\"]\n\n[parties.\"spiffe://writ.local/agent/booking\"]",
        &format!(
            "claim_scopes = [\"amount=payments:charge\"]\nkeys = [{{ kid = \"k1\", public_key = \"\"\"\n{public}\"\"\" }}]\n\n[parties.\"spiffe://writ.local/agent/booking\"]"
        ),
    );
    assert!(text.contains("kid = \"k1\""), "the test registers a key");
    let (srv, _dir, _) = server(&text).await;
    let parent = srv.mint(root(&["trips:read"], 100)).await.token;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |jti: &str, iss: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({
            "iss": iss, "sub": PLANNER, "aud": "spiffe://writ.local/writ",
            "iat": now, "exp": now + 60, "jti": jti,
        });
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let with = |jwt: String| {
        let srv = &srv;
        async move {
            srv.connect_with(None)
                .await
                .unwrap()
                .with_client_assertion(&jwt)
                .unwrap()
        }
    };
    let info = assert_active(&ok(
        with(sign("a", PLANNER))
            .await
            .validate(introspect(&parent))
            .await,
        "a registered key's assertion",
    ));
    assert_eq!(info.audience.unwrap().id, PLANNER);
    assert_refused(
        with(sign("a", PLANNER))
            .await
            .validate(introspect(&parent))
            .await,
        Code::Unauthenticated,
        &["jti"],
    );
    assert_refused(
        with(sign("b", BOOKING))
            .await
            .validate(introspect(&parent))
            .await,
        Code::Unauthenticated,
        &["iss"],
    );
}

/// Disabling a party in the policy file is the kill switch too: after the reload, every
/// token it holds or presents is revoked, and it can hold no new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_disabled_in_the_policy_loses_what_it_holds() {
    let (srv, _dir, path) = server(&policy("")).await;
    let root = srv.mint(root(&["trips:read"], 100)).await.token;
    let mut planner = srv.svid_client("agent/planner").await;
    let to_booking = ok(
        planner
            .downscope(child(
                &root,
                build::agent(BOOKING),
                &[KIOSK],
                &["trips:read"],
                vec![],
            ))
            .await,
        "to booking",
    );
    let mut kiosk_req = child(
        &to_booking.token,
        build::agent(KIOSK),
        &[],
        &["trips:read"],
        vec![],
    );
    kiosk_req.audience = Some(pb::Party {
        id: KIOSK.into(),
        kind: pb::ActorKind::Agent.into(),
        client_type: pb::ClientType::Public.into(),
    });
    kiosk_req.max_uses = 3;
    kiosk_req.require_action_check = true;
    kiosk_req.ttl_seconds = 60;
    let mut booking = srv.svid_client("agent/booking").await;
    let to_kiosk = ok(booking.downscope(kiosk_req).await, "booking to the kiosk");
    let mut kiosk = srv.svid_client("agent/kiosk").await;
    assert_allowed(&ok(
        kiosk
            .validate(check(
                &to_kiosk.token,
                "trips:read",
                vec![("amount", build::int(1))],
            ))
            .await,
        "before",
    ));

    let disabled = policy("").replace(
        "claim_scopes = [\"amount=payments:charge\"]\n\n[parties.\"spiffe://writ.local/agent/kiosk\"]",
        "claim_scopes = [\"amount=payments:charge\"]\nenabled = false\n\n[parties.\"spiffe://writ.local/agent/kiosk\"]",
    );
    assert!(
        disabled.contains("enabled = false"),
        "the test disables booking"
    );
    write_policy(&path, &disabled);
    let kiosk_token_id = to_kiosk.info.unwrap().token_id;
    let mut operator = srv.operator().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let node = ok(operator.get_token(&kiosk_token_id).await, "get_token")
            .token
            .unwrap();
        if node.status == pb::TokenStatus::Revoked as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never revoked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_inactive(
        &ok(
            kiosk
                .validate(check(
                    &to_kiosk.token,
                    "trips:read",
                    vec![("amount", build::int(1))],
                ))
                .await,
            "validate",
        ),
        pb::InactiveReason::Revoked,
    );
    // Booking can neither call Writ nor be given a new token.
    assert_refused(
        booking.validate(introspect(&to_booking.token)).await,
        Code::PermissionDenied,
        &["disabled"],
    );
    assert_refused(
        planner
            .downscope(child(
                &root,
                build::agent(BOOKING),
                &[],
                &["trips:read"],
                vec![],
            ))
            .await,
        Code::PermissionDenied,
        &["party", "disabled"],
    );
}
