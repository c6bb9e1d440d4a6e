//! The record every hop stores. One record per token; it carries everything Validate
//! needs, so validating a token at any depth is one read.

use crate::claims::{self, Attributes, Claims, Constraint, Denial};
use crate::consent::ConsentMark;
use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::limits::SIZE_OVERHEAD;
use crate::token::SecretHash;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What kind of party acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ActorKind {
    /// A person.
    User,
    /// An AI agent: traffic from it is marked as agent traffic.
    Agent,
    /// A non-agent service or gateway.
    Workload,
}

impl ActorKind {
    /// Stable lower-case name, as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Agent => "agent",
            ActorKind::Workload => "workload",
        }
    }
}

/// OAuth client type: can the party keep a credential secret?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientType {
    /// Holds its own credential (a server-side agent or service).
    Confidential,
    /// Cannot keep a secret (runs on a user's device, in a browser).
    Public,
}

impl ClientType {
    /// Stable lower-case name, as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Confidential => "confidential",
            ClientType::Public => "public",
        }
    }
}

/// How a party proved who it is when it acted. Validate reports it for the current actor
/// and every audit event records it, so the evidence never overstates what was proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthMethod {
    /// A client certificate (an X.509-SVID) verified in the TLS handshake.
    Mtls,
    /// A JWT client assertion signed by a key registered for the party (RFC 7523).
    ClientAssertion,
    /// A JWT-SVID verified against the trust domain's JWT bundle.
    JwtSvid,
    /// A configured bearer credential (minters and operators).
    Bearer,
    /// Asserted in `x-writ-caller` and not proven: development mode only.
    Asserted,
    /// The server itself, finishing work an operator started (a party's disablement
    /// resumed after a restart, a consent request expiring).
    Internal,
    /// The holder of a consent page's link (unproven: whoever the user gave the link to).
    ConsentLink,
    /// A user signed in at the trust domain's OpenID Provider on the consent page (the ID
    /// token's `sub`).
    OidcSignIn,
}

impl AuthMethod {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::ClientAssertion => "client_assertion",
            AuthMethod::JwtSvid => "jwt_svid",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Asserted => "asserted",
            AuthMethod::Internal => "internal",
            AuthMethod::ConsentLink => "consent_link",
            AuthMethod::OidcSignIn => "oidc_sign_in",
        }
    }
}

/// An authenticated caller as the rules and the audit trail see it: who, and how it proved it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// Its identity (a SPIFFE ID, or a configured minter's or operator's id).
    pub id: String,
    /// How it proved that identity.
    pub auth: AuthMethod,
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
    /// The token answers only action checks: a Validate without an action finds it
    /// inactive, so plain introspection can never stand in for a spent use. Once set, every
    /// descendant keeps it.
    pub require_action_check: bool,
}

/// The measured size of a string (see [`SIZE_OVERHEAD`]).
pub(crate) fn str_size(s: &str) -> usize {
    s.len() + SIZE_OVERHEAD
}

fn set_size<'a>(items: impl IntoIterator<Item = &'a String>) -> usize {
    SIZE_OVERHEAD + items.into_iter().map(|s| str_size(s)).sum::<usize>()
}

fn constraint_size(c: &Constraint) -> usize {
    use Constraint::*;
    SIZE_OVERHEAD
        + match c {
            Max(_) | Min(_) | Exact(claims::Value::Int(_) | claims::Value::Time(_)) => {
                2 * SIZE_OVERHEAD
            }
            Range { .. } | Window { .. } => 4 * SIZE_OVERHEAD,
            AllowSet(s) | DenySet(s) | AllowFolded(s) | DenyFolded(s) => set_size(s),
            Prefix(p) | Exact(claims::Value::Str(p)) => str_size(p),
        }
}

impl Grant {
    /// May this grant perform `scope` with `attributes`?
    pub fn authorize(&self, scope: &str, attributes: &Attributes) -> Result<(), Denial> {
        claims::authorize(&self.scopes, &self.claims, scope, attributes)
    }

    /// The grant's measured size: every string's bytes plus [`SIZE_OVERHEAD`], and
    /// `SIZE_OVERHEAD` per number and container, which bounds its encoded size on the
    /// wire and in the store. At most [`MAX_GRANT_BYTES`](crate::limits::MAX_GRANT_BYTES).
    pub fn size(&self) -> usize {
        let claims: usize = self
            .claims
            .iter()
            .map(|(name, c)| {
                str_size(name)
                    + constraint_size(&c.constraint)
                    + c.applies_to.as_ref().map_or(0, set_size)
            })
            .sum();
        set_size(&self.scopes)
            + set_size(&self.targets)
            + SIZE_OVERHEAD
            + claims
            + 4 * SIZE_OVERHEAD
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
    /// Digest of the request that created this token under an idempotency key (see
    /// [`crate::narrow::request_digest`]): a retry under the same key must carry the same
    /// request and gets this token back. `None` without a key.
    pub idempotency: Option<[u8; 32]>,
    /// How the current actor (the minter at the root) authenticated when it obtained this
    /// token; `None` in records stored before identities were recorded.
    pub actor_auth: Option<AuthMethod>,
    /// Redeemed from an approved consent request: the one high-privilege scope it may
    /// exercise. Never inherited; `None` in records stored before consent existed.
    pub consent: Option<ConsentMark>,
}

/// The measured size of a token's context (see [`Grant::size`]): at most
/// [`MAX_CONTEXT_BYTES`](crate::limits::MAX_CONTEXT_BYTES).
pub fn context_size(
    purpose: &str,
    tctx: &BTreeMap<String, String>,
    rctx: &BTreeMap<String, String>,
) -> usize {
    let map = |m: &BTreeMap<String, String>| {
        SIZE_OVERHEAD
            + m.iter()
                .map(|(k, v)| str_size(k) + str_size(v))
                .sum::<usize>()
    };
    str_size(purpose) + map(tctx) + map(rctx)
}

impl TokenRecord {
    /// The measured size of this token's purpose, `tctx` and `rctx`.
    pub fn context_size(&self) -> usize {
        context_size(&self.purpose, &self.tctx, &self.rctx)
    }

    /// The party that derived this token and presents it.
    pub fn current_actor(&self) -> &Party {
        // Every constructor in `narrow` puts at least the minter here.
        self.actors.last().unwrap_or(&self.audience)
    }
}
