//! The chain of [`crate::fixtures`] in wire types, for the load generator: the same
//! requests an agent would send through `writ-client`.

use crate::fixtures::{AMOUNT, ROOT_MAX_AMOUNT, SCOPE, hop};
use std::collections::HashMap;
use writ_client::build;
use writ_client::proto as pb;

fn targets(from: u32, depth: u32) -> impl Iterator<Item = String> {
    (from..=depth).map(hop)
}

fn strings(it: impl IntoIterator<Item = String>) -> Vec<String> {
    it.into_iter().collect()
}

/// [`crate::fixtures::mint_request`] as a gRPC request.
pub fn mint_pb(depth: u32) -> pb::MintRequest {
    pb::MintRequest {
        subject: "alice".into(),
        audience: Some(build::agent(&hop(0))),
        targets: strings(targets(1, depth)),
        scopes: vec![SCOPE.into(), "trips:book".into()],
        claims: HashMap::from([
            ("amount".to_string(), build::max(ROOT_MAX_AMOUNT)),
            ("category".to_string(), build::deny(&["gambling"])),
        ]),
        purpose: "book a trip to Lisbon".into(),
        tctx: HashMap::from([("trip".to_string(), "lisbon-2026".to_string())]),
        rctx: HashMap::from([
            ("req_ip".to_string(), "203.0.113.7".to_string()),
            ("authn".to_string(), "webauthn".to_string()),
        ]),
        ttl_seconds: 900,
        max_uses: 0,
        require_action_check: false,
        idempotency_key: String::new(),
    }
}

/// [`crate::fixtures::child_request`] as a gRPC request, deriving from `parent_token`.
pub fn downscope_pb(parent_token: &str, level: u32, depth: u32) -> pb::DownscopeRequest {
    pb::DownscopeRequest {
        parent_token: parent_token.into(),
        audience: Some(build::agent(&hop(level))),
        targets: strings(targets(level + 1, depth)),
        scopes: vec![SCOPE.into()],
        claims: HashMap::from([(
            "amount".to_string(),
            build::max(ROOT_MAX_AMOUNT - i64::from(level)),
        )]),
        ..Default::default()
    }
}

/// A Validate of `token` checking the standard action (or plain introspection).
pub fn validate_pb(token: &str, with_action: bool) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        decision_only: false,
        action: with_action.then(|| pb::Action {
            scope: SCOPE.into(),
            attributes: HashMap::from([
                ("amount".to_string(), build::int(AMOUNT)),
                ("category".to_string(), build::str("travel")),
            ]),
        }),
        ..Default::default()
    }
}
