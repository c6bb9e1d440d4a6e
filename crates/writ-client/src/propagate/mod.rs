//! Carrying a transaction token from hop to hop without gRPC plumbing in the handlers.
//!
//! * Inbound ([`TxnTokenLayer`]): a tonic server or an axum router verifies the
//!   `txn-token` of each request with Writ as this service; only active tokens reach the
//!   handler, as a [`TxnContext`] in the request's extensions and as [`current`].
//! * Outbound ([`DownscopeLayer`]): a client of one named [`Downstream`] sends each
//!   request with a child freshly narrowed from the current token, in its only
//!   `txn-token` header; [`downscope_for`] does the same for requests built by hand.
//!
//! No path forwards the parent token: the inbound layer removes the header before the
//! handler runs, and the outbound layer replaces whatever `txn-token` a request carries.

mod context;
mod inbound;
mod outbound;

pub use context::{TxnContext, current, scope};
pub use inbound::{InboundBody, RequireTxnToken, TxnTokenLayer};
pub use outbound::{
    DownscopeLayer, Downscoping, Downstream, OutboundError, downscope_for, downscope_from,
};
