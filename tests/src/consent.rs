//! Consent step-up fixtures: a closed policy with one high-privilege scope, the parties of
//! the trip scenario as proven identities (certificates from the server's development
//! CA), and the chain gateway → planner → booking that brings a latent
//! `payments:charge` to the booking agent.

use crate::{TestServer, build, child, mint_request, ok, pb};
use std::path::PathBuf;
use writ_client::WritClient;

/// The trust domain of [`policy`].
pub const TRUST_DOMAIN: &str = "writ.local";
/// The planner agent (first hop).
pub const PLANNER: &str = "spiffe://writ.local/agent/planner";
/// The booking agent: holds the latent scope and asks for consent.
pub const BOOKING: &str = "spiffe://writ.local/agent/booking";
/// The payments API: checks the redeemed token.
pub const PAYMENTS: &str = "spiffe://writ.local/api/payments";
/// An app that authenticated the user and decides for them (approver role).
pub const WALLET: &str = "spiffe://writ.local/app/wallet";
/// The high-privilege scope.
pub const CHARGE: &str = "payments:charge";
/// An ordinary scope.
pub const READ: &str = "trips:read";
/// What the policy says `payments:charge` does.
pub const CHARGE_DESCRIPTION: &str = "Charge the user's card";

/// The policy: `payments:charge` is high-privilege (amount ≤ 1000 for the agents), the
/// payments API may hold it, the wallet app decides consents.
pub fn policy() -> String {
    format!(
        r#"
trust_domain = "{TRUST_DOMAIN}"

[scopes."{READ}"]
description = "Read the user's trips"

[scopes."{CHARGE}"]
description = "{CHARGE_DESCRIPTION}"
high_privilege = true

[parties."{PLANNER}"]
name = "Trip planner"
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["{READ}", "{CHARGE}"]
claims = ["amount:max:1000"]
claim_scopes = ["amount={CHARGE}"]

[parties."{BOOKING}"]
name = "Booking agent"
kind = "agent"
client_type = "confidential"
roles = ["agent", "resource_server"]
scopes = ["{READ}", "{CHARGE}"]
claims = ["amount:max:1000"]
claim_scopes = ["amount={CHARGE}"]

[parties."{PAYMENTS}"]
name = "Payments API"
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["{READ}", "{CHARGE}"]

[parties."{WALLET}"]
name = "Wallet app"
kind = "workload"
client_type = "confidential"
roles = ["approver"]
scopes = []
"#
    )
}

/// A server under [`policy`] accepting proven identities only, after `configure`.
#[derive(Debug)]
pub struct ConsentServer {
    /// The server.
    pub srv: TestServer,
    /// Holds the policy file.
    _dir: tempfile::TempDir,
}

impl ConsentServer {
    /// Starts it.
    pub async fn start(configure: impl FnOnce(&mut crate::Config)) -> ConsentServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path: PathBuf = dir.path().join("policy.toml");
        std::fs::write(&path, policy()).expect("writing the policy");
        let srv = TestServer::start_proven_with(move |c| {
            c.policy = Some(path);
            configure(c);
        })
        .await;
        ConsentServer { srv, _dir: dir }
    }

    /// A client proving `id` (a SPIFFE ID of [`TRUST_DOMAIN`]) with a certificate.
    pub async fn client(&self, id: &str) -> WritClient {
        let path = id
            .strip_prefix(&format!("spiffe://{TRUST_DOMAIN}/"))
            .expect("a SPIFFE ID of the trust domain");
        self.srv.svid_client(path).await
    }

    /// A new transaction for alice: minted to the planner (amount ≤ 1000 on
    /// `payments:charge`), downscoped to the booking agent, which may reach the payments
    /// API. Returns the booking agent's token and its info.
    pub async fn booking_token(&self) -> (String, pb::TokenInfo) {
        let root = self
            .srv
            .mint(pb::MintRequest {
                purpose: "book the Lisbon trip".into(),
                ..mint_request(
                    "alice",
                    build::agent(PLANNER),
                    &[BOOKING, PAYMENTS],
                    &[READ, CHARGE],
                    vec![("amount", build::applies_to(build::max(1000), &[CHARGE]))],
                )
            })
            .await;
        let booking = ok(
            self.client(PLANNER)
                .await
                .downscope(child(
                    &root.token,
                    build::agent(BOOKING),
                    &[PAYMENTS],
                    &[READ, CHARGE],
                    vec![],
                ))
                .await,
            "downscope to booking",
        );
        (booking.token, booking.info.expect("info"))
    }

    /// The booking agent's child of `token` for the payments API, holding `scopes`
    /// (a plain Downscope: `payments:charge` is passed on latent).
    pub async fn payments_token(&self, token: &str, scopes: &[&str]) -> (String, pb::TokenInfo) {
        let r = ok(
            self.client(BOOKING)
                .await
                .downscope(child(token, build::workload(PAYMENTS), &[], scopes, vec![]))
                .await,
            "downscope to payments",
        );
        (r.token, r.info.expect("info"))
    }
}

/// The charge action: `amount` and `currency`.
pub fn charge(amount: i64, currency: &str) -> pb::Action {
    pb::Action {
        scope: CHARGE.into(),
        attributes: [
            ("amount".to_owned(), build::int(amount)),
            ("currency".to_owned(), build::str(currency)),
        ]
        .into(),
    }
}

/// A RequestConsent of `action` with `token` for `resource`.
pub fn ask(token: &str, action: pb::Action, resource: &str) -> pb::RequestConsentRequest {
    pb::RequestConsentRequest {
        token: token.into(),
        action: Some(action),
        resource: resource.into(),
        reason: "pay for the Lisbon flight".into(),
    }
}

/// A Validate of `token` checking `action`.
pub fn checking(token: &str, action: pb::Action) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        action: Some(action),
        ..Default::default()
    }
}
