#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! * [`WritClient`] (`client`): one connection acting as one caller, a method per RPC,
//!   deadlines ([`WritClient::with_timeout`]), safe retries ([`retry`]), per-call client
//!   assertions ([`WritClient::with_assertion_source`]); errors keep Writ's
//!   `google.rpc.ErrorInfo` ([`ClientError::reason`], [`ClientError::dimension`]).
//! * [`propagate`]: the inbound ([`propagate::TxnTokenLayer`]) and outbound
//!   ([`propagate::DownscopeLayer`]) tower layers.
//! * [`cache`]: the optional, bounded Validate verdict cache.
//! * [`build`]: constructors for parties, claims and action values.
//! * The `Txn-Token` header: [`TXN_TOKEN_HEADER`], [`attach_txn_token`], [`txn_token`],
//!   [`TokenSecret`].
//!
//! It links only the wire API (`writ-api`), tonic and tower, never the store: an agent
//! that embeds it does not pull in RocksDB.
#![forbid(unsafe_code)]

#[path = "builders.rs"]
pub mod build;
pub mod cache;
mod client;
mod error;
mod header;
pub mod propagate;
pub mod retry;

pub use client::{
    ASSERTION_HEADER, AssertionSource, CALLER_HEADER, Tls, Transport, TransportError, WritClient,
};
pub use error::{BoxError, ClientError, ERROR_DOMAIN};
pub use header::{
    TXN_TOKEN_HEADER, TXN_TOKEN_METADATA, TokenSecret, attach_txn_token, replace_txn_token_header,
    txn_token, txn_token_header,
};
pub use retry::RetryPolicy;
pub use writ_api::pb as proto;
