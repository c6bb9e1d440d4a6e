//! The record every hop stores. One record per token; it carries everything Validate
//! needs, so validating a token at any depth is one read.

use crate::claims::{self, Claims, Denial, Value};
use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::token::SecretHash;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What kind of party acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActorKind {
    /// A person.
    User,
    /// An AI agent: traffic from it is marked as agent traffic.
    Agent,
    /// A non-agent service or gateway.
    Workload,
}

/// OAuth client type: can the party keep a credential secret?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientType {
    /// Holds its own credential (a server-side agent or service).
    Confidential,
    /// Cannot keep a secret (runs on a user's device, in a browser).
    Public,
}

/// A party in a call chain: an actor, or the audience a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    /// Stable identity (later: a SPIFFE id or registered client id).
    pub id: String,
    /// User, agent or workload.
    pub kind: ActorKind,
    /// Confidential or public client.
    pub client_type: ClientType,
}

/// The privileges a token carries: everything a child may only keep or reduce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// OAuth scopes.
    pub scopes: BTreeSet<String>,
    /// Typed claim constraints.
    pub claims: Claims,
    /// Agents and services the chain may still reach from here (children's audiences).
    pub targets: BTreeSet<String>,
    /// After this instant the token is inactive.
    pub expires_at: UnixMillis,
    /// How many allowed action checks the token may answer; `None` is unlimited. A child
    /// never holds more than its parent, and deriving it reserves its uses from the
    /// parent's budget (the store enforces that under concurrency), so a single-use token
    /// yields one use in total, however the chain branches.
    pub max_uses: Option<u32>,
}

impl Grant {
    /// May this grant perform `scope` with `attributes`?
    pub fn authorize(
        &self,
        scope: &str,
        attributes: &BTreeMap<String, Value>,
    ) -> Result<(), Denial> {
        claims::authorize(&self.scopes, &self.claims, scope, attributes)
    }

    /// Is the grant expired at `now`?
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }
}

/// One stored token: a node of a transaction's call tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (storage key).
    pub token_id: TokenId,
    /// Hash of the secret; the token itself is never stored.
    pub secret_hash: SecretHash,
    /// Transaction shared by the whole chain.
    pub txn: TxnId,
    /// The token this one was derived from; `None` at the root.
    pub parent: Option<TokenId>,
    /// 0 at the root, parent's depth + 1 below.
    pub depth: u32,
    /// The originating user (principal). Immutable along the chain.
    pub subject: String,
    /// Trust domain (the Txn-Token draft's `aud`). Immutable along the chain.
    pub trust_domain: String,
    /// Who acted at each hop, first (the minter) to last (the current actor, which
    /// derived this token and presents it).
    pub actors: Vec<Party>,
    /// The one party this token may be presented to, and the only one that may derive
    /// children from it.
    pub audience: Party,
    /// What the token permits.
    pub grant: Grant,
    /// Why the transaction exists, as stated at this hop.
    pub purpose: String,
    /// Transaction context, immutable along the chain.
    pub tctx: BTreeMap<String, String>,
    /// Request context of the originating request (IP, authentication method, ...).
    pub rctx: BTreeMap<String, String>,
    /// When this token was issued.
    pub issued_at: UnixMillis,
}

impl TokenRecord {
    /// The party that derived this token and presents it.
    pub fn current_actor(&self) -> &Party {
        // Every constructor in `narrow` puts at least the minter here.
        self.actors.last().unwrap_or(&self.audience)
    }
}
