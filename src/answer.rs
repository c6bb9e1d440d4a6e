//! What the server answers Validate with: `writ.v1.ValidateResponse` with its `TokenInfo`
//! already encoded. A token's `TokenInfo` is the same every time it is validated, so the
//! server encodes it once and splices the bytes into every later answer (issue 15: the
//! answer's encoding was a tenth of the server's work per Validate). On the wire nothing
//! changes: an embedded message and a `bytes` field are both a tag and a length-delimited
//! value, so clients decode [`ValidateAnswer`] as `pb::ValidateResponse`.
//!
//! [`server`] is the server stub generated for it (`build.rs`): `TokenService` method for
//! method, with Validate answering [`ValidateAnswer`]. Clients use `pb`'s.

use crate::pb;
use prost::Message;
use prost::bytes::Bytes;

/// `writ.v1.ValidateResponse` as the server writes it: the same fields with the same
/// numbers (held to the descriptor by a test), but `info` holds `TokenInfo` encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateAnswer {
    #[prost(bool, tag = "1")]
    pub active: bool,
    #[prost(enumeration = "crate::pb::InactiveReason", tag = "2")]
    pub inactive_reason: i32,
    /// An encoded `TokenInfo` ([`encode_info`]).
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub info: Option<Bytes>,
    #[prost(message, optional, tag = "4")]
    pub decision: Option<pb::ActionDecision>,
    #[prost(string, tag = "5")]
    pub txn_token_jwt: String,
}

/// `info` as [`ValidateAnswer::info`] carries it.
pub fn encode_info(info: &pb::TokenInfo) -> Bytes {
    Bytes::from(info.encode_to_vec())
}

/// The `TokenService` server stub whose Validate answers [`ValidateAnswer`].
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/answer/writ.v1.TokenService.rs"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost_types::field_descriptor_proto::{Label, Type};

    fn info() -> pb::TokenInfo {
        pb::TokenInfo {
            token_id: "tid_1".into(),
            txn: "txn_1".into(),
            depth: 2,
            subject: "user:alice".into(),
            scopes: vec!["read".into(), "write".into()],
            claims: [(
                "amount".to_owned(),
                pb::Constraint {
                    kind: Some(pb::constraint::Kind::Max(10)),
                    ..Default::default()
                },
            )]
            .into(),
            tctx: [("k".to_owned(), "v".to_owned())].into(),
            latent_scopes: vec!["write".into()],
            expires_at_unix_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    fn answer_of(r: &pb::ValidateResponse) -> ValidateAnswer {
        ValidateAnswer {
            active: r.active,
            inactive_reason: r.inactive_reason,
            info: r.info.as_ref().map(encode_info),
            decision: r.decision.clone(),
            txn_token_jwt: r.txn_token_jwt.clone(),
        }
    }

    #[test]
    fn an_answer_is_byte_for_byte_the_response_it_stands_for() {
        let cases = [
            pb::ValidateResponse {
                active: true,
                info: Some(info()),
                decision: Some(pb::ActionDecision {
                    allowed: false,
                    denied_by: "amount".into(),
                    reason: "over".into(),
                    consent_required: true,
                    consent_request_id: "csr_1".into(),
                }),
                txn_token_jwt: "e.y.j".into(),
                ..Default::default()
            },
            // An empty TokenInfo is still present (a zero-length value), as a message is.
            pb::ValidateResponse {
                active: true,
                info: Some(pb::TokenInfo::default()),
                ..Default::default()
            },
            pb::ValidateResponse {
                inactive_reason: pb::InactiveReason::Revoked.into(),
                ..Default::default()
            },
        ];
        for response in cases {
            let spliced = answer_of(&response).encode_to_vec();
            assert_eq!(spliced, response.encode_to_vec(), "{response:?}");
            assert_eq!(
                pb::ValidateResponse::decode(&spliced[..]).unwrap(),
                response
            );
        }
    }

    /// A field added to `ValidateResponse` in the proto must be added here too, or the
    /// server would never send it.
    #[test]
    fn the_answer_mirrors_every_field_of_the_response() {
        let fds = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let message = fds
            .file
            .iter()
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "ValidateResponse")
            .expect("ValidateResponse in the descriptor");
        let fields: Vec<(i32, &str, Type, Label, &str)> = message
            .field
            .iter()
            .map(|f| (f.number(), f.name(), f.r#type(), f.label(), f.type_name()))
            .collect();
        assert_eq!(
            fields,
            [
                (1, "active", Type::Bool, Label::Optional, ""),
                (
                    2,
                    "inactive_reason",
                    Type::Enum,
                    Label::Optional,
                    ".writ.v1.InactiveReason"
                ),
                (
                    3,
                    "info",
                    Type::Message,
                    Label::Optional,
                    ".writ.v1.TokenInfo"
                ),
                (
                    4,
                    "decision",
                    Type::Message,
                    Label::Optional,
                    ".writ.v1.ActionDecision"
                ),
                (5, "txn_token_jwt", Type::String, Label::Optional, ""),
            ],
            "ValidateResponse changed: change ValidateAnswer with it"
        );
    }
}
