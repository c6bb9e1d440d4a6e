//! Writ's wire API: the `writ.v1` types generated from `proto/` (compiled once, by the
//! root `build.rs`) and [`convert`], the one place where wire types become core types.
//!
//! Every incoming request is validated while it is converted: ids, scopes, claims and
//! contexts are checked against [`writ_core::limits`] and every required field is
//! present, so handlers only ever see valid core values. Errors name the field.
//! [`oauth`] is the same for OAuth JSON (introspection answers, Txn-Token JWT claims).
//! [`answer`] is Validate's answer as the server writes it (its `TokenInfo` encoded once).
//! [`compact`] is the claim syntax the command line and the policy file share.
//! Both the server and the client link this crate; it never depends on the store.
#![forbid(unsafe_code)]

pub mod answer;
pub mod compact;
pub mod convert;
pub mod oauth;

/// Generated protobuf types and gRPC stubs for package `writ.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("writ.v1");
}

pub use convert::{ERROR_DOMAIN, FieldError, error_status};

/// The encoded `FileDescriptorSet` of `writ.v1` (with the files it imports), written by
/// the root `build.rs`: what server reflection serves, so `grpcurl` needs no proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/writ_descriptor.bin"));
