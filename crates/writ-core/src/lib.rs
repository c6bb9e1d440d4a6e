//! Writ's pure core: what a transaction token *is* and the rules that keep every hop
//! narrower than the one before it.
//!
//! This crate does no I/O, spawns nothing, never reads the clock and never draws
//! randomness: every rule takes `now` and every new token takes its entropy from the
//! caller. That keeps the security-critical logic deterministic, testable without
//! sleeping, and small enough to read in one sitting.
//!
//! Layout:
//! - [`ids`]: transaction ids, public token ids, timestamps.
//! - [`token`]: the opaque bearer-token format (prefix, entropy, keyed-blake3 tag) and
//!   server key rings; turns a presented string into the hash that storage keys on.
//! - [`text`]: the canonical form of free text, and how values are compared and shown.
//! - [`claims`]: typed claims (constraints and the scopes they apply to), their partial
//!   order and their evaluation.
//! - [`model`]: the token record every hop stores, parties and grants.
//! - [`narrow`]: minting and downscoping: the narrowing rules themselves.
//! - [`policy`]: roles, and the registry of parties and scopes (with each party's ceiling)
//!   that every new token's audience is checked against.
//! - [`consent`]: consent step-up: latent high-privilege scopes, consent requests and
//!   their states, the single-use token an approval is redeemed for.
//! - [`lifecycle`]: what changes after issue: revocation, uses, status, what narrowed;
//!   a party's disablement.
//! - [`audit`]: the events of the audit trail and their ordering ids.
//! - [`limits`]: hard bounds on every size a request can carry.
#![forbid(unsafe_code)]

pub mod audit;
pub mod claims;
pub mod consent;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod narrow;
pub mod policy;
pub mod text;
pub mod token;

pub use audit::{Event, EventId, EventKind};
pub use claims::{Attributes, Claim, Claims, Constraint, Denial, Value};
pub use consent::{
    Channel, ConsentAction, ConsentError, ConsentId, ConsentMark, ConsentRequest, ConsentState,
    ConsentStatus, Decision, PartyView,
};
pub use ids::{TokenId, TxnId, UnixMillis};
pub use lifecycle::{PartyDisable, Revocation, Status, TokenState};
pub use model::{Actor, ActorKind, AuthMethod, ClientType, Grant, Party, TokenRecord};
pub use narrow::{ChildRequest, Dimension, MintRequest, NarrowingError, Policy};
pub use policy::{
    Ceiling, PartyDef, PublicClientLimits, Registry, ResolvedParty, Role, Roles, ScopeDef,
};
pub use token::{KeyRing, SecretHash, ServerKey, TokenError, TokenSecret, VerifiedToken};
