//! Minting and downscoping: the narrowing rules.
//!
//! [`mint`] builds a root record from a trusted minter's request. [`downscope`] builds a
//! child from a parent and refuses, naming the [`Dimension`], anything that would give
//! the child more than its parent: a scope the parent lacks, a wider or dropped claim,
//! an audience outside the parent's targets, wider targets, a later expiry, an
//! unchanged grant, a chain too deep, an actor loop, a caller that does not hold the
//! parent, or a record larger than the limits. Immutable fields (txn, subject, trust
//! domain, tctx) are copied, never taken from the request; a child may only drop `rctx`
//! entries it does not need to pass on.

use crate::claims::Claims;
use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::limits::{MAX_CLAIMS, MAX_CONTEXT_BYTES, MAX_GRANT_BYTES};
use crate::model::{AuthMethod, Grant, Party, TokenRecord, context_size};
use crate::text::Shown;
use crate::token::VerifiedToken;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Configured limits the rules enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a minted token when the request names none, in seconds.
    pub default_ttl_secs: u64,
    /// Longest lifetime a minted token may have, in seconds.
    pub max_ttl_secs: u64,
    /// Deepest chain allowed (the root is depth 0).
    pub max_depth: u32,
    /// Allow a party to appear twice in one chain (A → B → A).
    pub allow_actor_loops: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_ttl_secs: 300,
            max_ttl_secs: 900,
            max_depth: 8,
            allow_actor_loops: false,
        }
    }
}

/// The dimension a refused request tried to widen or violate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The parent is expired.
    ParentExpired,
    /// The caller is not the parent's audience (its holder).
    Holder,
    /// A requested scope is not held by the parent.
    Scopes,
    /// A claim is wider than, of another kind than, or would drop the parent's.
    Claims,
    /// The child's audience is not among the parent's targets.
    Audience,
    /// The child's targets are not a subset of the parent's.
    Targets,
    /// The child would outlive its parent, or the TTL is out of range.
    Expiry,
    /// The child grants exactly what the parent grants.
    NotNarrower,
    /// The child would carry more uses than its parent, or zero uses.
    Uses,
    /// The chain would exceed the maximum depth.
    Depth,
    /// A party would appear twice in the chain.
    Loop,
    /// The token would carry more claims, or a larger grant or context, than the limits.
    Size,
    /// A request-context entry to drop is not in the parent's.
    Context,
    /// The grant exceeds what the policy lets the audience ever hold (its ceiling, a
    /// scope's allowed kinds or client types or lifetime, the limits of public clients),
    /// or the holder may not call that audience.
    Ceiling,
    /// A scope the policy does not define (RFC 6749's `invalid_scope`): never treated as
    /// unconstrained.
    InvalidScope,
    /// The audience is not a party the policy admits (unregistered, disabled, or unable
    /// to hold tokens), or the request describes it otherwise than the registry does.
    Party,
}

impl Dimension {
    /// Stable machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::ParentExpired => "parent_expired",
            Dimension::Holder => "holder",
            Dimension::Scopes => "scopes",
            Dimension::Claims => "claims",
            Dimension::Audience => "audience",
            Dimension::Targets => "targets",
            Dimension::Expiry => "expiry",
            Dimension::NotNarrower => "not_narrower",
            Dimension::Uses => "uses",
            Dimension::Depth => "depth",
            Dimension::Loop => "loop",
            Dimension::Size => "size",
            Dimension::Context => "context",
            Dimension::Ceiling => "ceiling",
            Dimension::InvalidScope => "invalid_scope",
            Dimension::Party => "party",
        }
    }
}

/// A refused mint or downscope: which dimension, and a message naming the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", dimension.as_str())]
pub struct NarrowingError {
    /// The dimension refused.
    pub dimension: Dimension,
    /// What exactly was wrong.
    pub detail: String,
}

fn refuse<T>(dimension: Dimension, detail: impl fmt::Display) -> Result<T, NarrowingError> {
    Err(NarrowingError {
        dimension,
        detail: detail.to_string(),
    })
}

/// A validated request to start a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MintRequest {
    /// The authenticated user the transaction acts for.
    pub subject: String,
    /// The first agent that will hold the token.
    pub audience: Party,
    /// Parties the chain may reach.
    pub targets: BTreeSet<String>,
    /// Scopes granted.
    pub scopes: BTreeSet<String>,
    /// Claim constraints.
    pub claims: Claims,
    /// Why.
    pub purpose: String,
    /// Transaction context.
    pub tctx: BTreeMap<String, String>,
    /// Request context.
    pub rctx: BTreeMap<String, String>,
    /// Lifetime in seconds; `None` means the policy's default.
    pub ttl_secs: Option<u64>,
    /// Allowed action checks; `None` is unlimited.
    pub max_uses: Option<u32>,
    /// Answer only action checks (see [`Grant::require_action_check`]).
    pub require_action_check: bool,
}

/// A validated request to derive a child for the next hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChildRequest {
    /// The next hop: the only party the child may be presented to.
    pub audience: Party,
    /// Parties reachable from the child; must be a subset of the parent's.
    pub targets: BTreeSet<String>,
    /// Scopes; must be a subset of the parent's.
    pub scopes: BTreeSet<String>,
    /// Claims to narrow or add. Parent claims not named here are inherited unchanged; a
    /// named one without `applies_to` keeps the parent's claim's scopes.
    pub claims: Claims,
    /// Lifetime in seconds; `None` means the parent's expiry.
    pub ttl_secs: Option<u64>,
    /// Purpose at this hop; `None` inherits the parent's.
    pub purpose: Option<String>,
    /// Allowed action checks; `None` inherits the parent's limit.
    pub max_uses: Option<u32>,
    /// Answer only action checks; a parent's `true` is inherited whatever this says.
    pub require_action_check: bool,
    /// `rctx` entries not to pass on (data minimisation); each must be in the parent's.
    pub drop_rctx: BTreeSet<String>,
}

/// Identity and placement of the new token, chosen by the caller of the rules.
#[derive(Clone, Copy, Debug)]
pub struct NewToken {
    /// The issued token's id and hash.
    pub token: VerifiedToken,
    /// Transaction id (ignored by [`downscope`], which inherits the parent's).
    pub txn: TxnId,
    /// Issue time.
    pub now: UnixMillis,
    /// The [`request_digest`] of a request made under an idempotency key.
    pub idempotency: Option<[u8; 32]>,
    /// How the party obtaining the token (the minter, or the deriving holder) authenticated.
    pub auth: AuthMethod,
}

/// The digest that identifies a request for idempotent retries: blake3 over a
/// deterministic encoding of the validated request and `scope` (who asks, from which
/// parent). Two requests have the same digest exactly when they ask for the same thing.
pub fn request_digest<T: Serialize + fmt::Debug>(scope: &[u8], req: &T) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("writ 2026-12 idempotent request digest v1");
    h.update(&(scope.len() as u64).to_be_bytes());
    h.update(scope);
    match postcard::to_allocvec(req) {
        Ok(bytes) => h.update(&bytes),
        // Cannot fail for these types (no unsized sequences); `Debug` is deterministic too.
        Err(_) => h.update(format!("{req:?}").as_bytes()),
    };
    *h.finalize().as_bytes()
}

/// Refuses a grant or context over the limits.
fn check_size(grant: &Grant, ctx: usize) -> Result<(), NarrowingError> {
    if grant.size() > MAX_GRANT_BYTES {
        return refuse(
            Dimension::Size,
            format_args!(
                "the grant would measure {} bytes; the limit is {MAX_GRANT_BYTES}",
                grant.size()
            ),
        );
    }
    if ctx > MAX_CONTEXT_BYTES {
        return refuse(
            Dimension::Size,
            format_args!(
                "the purpose and context would measure {ctx} bytes; the limit is {MAX_CONTEXT_BYTES}"
            ),
        );
    }
    Ok(())
}

/// Builds a root record. `minter` becomes the first actor and `trust_domain` comes from
/// configuration, never from the request.
pub fn mint(
    req: MintRequest,
    minter: Party,
    trust_domain: &str,
    policy: &Policy,
    new: NewToken,
) -> Result<TokenRecord, NarrowingError> {
    let ttl = req.ttl_secs.unwrap_or(policy.default_ttl_secs);
    if ttl == 0 || ttl > policy.max_ttl_secs {
        return refuse(
            Dimension::Expiry,
            format_args!("ttl_seconds {ttl} is outside 1..={}", policy.max_ttl_secs),
        );
    }
    if !policy.allow_actor_loops {
        if req.audience.id == minter.id {
            return refuse(
                Dimension::Loop,
                format_args!("audience {} is the minter itself", Shown(&minter.id)),
            );
        }
        // The first hop (or the minter) could only be reached again by a loop: refused
        // now, not at the Downscope that would try.
        if let Some(t) = [&req.audience.id, &minter.id]
            .into_iter()
            .find(|p| req.targets.contains(*p))
        {
            return refuse(
                Dimension::Loop,
                format_args!("target {} already acts in this chain", Shown(t)),
            );
        }
    }
    if req.max_uses == Some(0) {
        return refuse(
            Dimension::Uses,
            "max_uses must be at least 1 (0 means unlimited on the wire)",
        );
    }
    if req.claims.len() > MAX_CLAIMS {
        return refuse(
            Dimension::Size,
            format_args!(
                "the token would carry {} claims; the limit is {MAX_CLAIMS}",
                req.claims.len()
            ),
        );
    }
    let grant = Grant {
        scopes: req.scopes,
        claims: req.claims,
        targets: req.targets,
        expires_at: new.now.plus_secs(ttl),
        max_uses: req.max_uses,
        require_action_check: req.require_action_check,
    };
    check_size(&grant, context_size(&req.purpose, &req.tctx, &req.rctx))?;
    Ok(TokenRecord {
        token_id: new.token.token_id,
        secret_hash: new.token.secret_hash,
        txn: new.txn,
        parent: None,
        depth: 0,
        subject: req.subject,
        trust_domain: trust_domain.to_string(),
        actors: vec![minter],
        audience: req.audience,
        grant,
        purpose: req.purpose,
        tctx: req.tctx,
        rctx: req.rctx,
        issued_at: new.now,
        idempotency: new.idempotency,
        actor_auth: Some(new.auth),
        // Only a redemption marks a token; a child never inherits the mark.
        consent: None,
    })
}

/// Derives a child of `parent` for the caller `caller_id`. Revocation is the store's
/// business; everything else that can refuse a child is decided here.
pub fn downscope(
    parent: &TokenRecord,
    caller_id: &str,
    req: ChildRequest,
    policy: &Policy,
    new: NewToken,
) -> Result<TokenRecord, NarrowingError> {
    let pg = &parent.grant;
    // Holder first, and without naming the real holder: a thief who presents a leaked
    // token under a guessed identity learns neither who holds it nor whether it is alive.
    if caller_id != parent.audience.id {
        return refuse(
            Dimension::Holder,
            format_args!("caller {} does not hold the parent token", Shown(caller_id)),
        );
    }
    if pg.is_expired(new.now) {
        return refuse(Dimension::ParentExpired, "the parent token has expired");
    }
    // Checked: a stored depth of u32::MAX must not wrap around to 0 and pass.
    let depth = match parent.depth.checked_add(1) {
        Some(depth) if depth <= policy.max_depth => depth,
        _ => {
            let depth = u64::from(parent.depth) + 1;
            return refuse(
                Dimension::Depth,
                format_args!("depth {depth} exceeds max_depth {}", policy.max_depth),
            );
        }
    };
    // The parent's holder becomes the child's current actor.
    let actor = parent.audience.clone();
    if !policy.allow_actor_loops {
        if parent.actors.iter().any(|a| a.id == actor.id) {
            return refuse(
                Dimension::Loop,
                format_args!("actor {} already acted in this chain", Shown(&actor.id)),
            );
        }
        let in_chain = |id: &str| id == actor.id || parent.actors.iter().any(|a| a.id == id);
        if in_chain(&req.audience.id) {
            return refuse(
                Dimension::Loop,
                format_args!(
                    "audience {} already acts in this chain",
                    Shown(&req.audience.id)
                ),
            );
        }
        // As at Mint: a target already in the chain (or the child's own audience) could
        // only ever be reached by a loop, so naming one is refused now.
        if let Some(t) = req
            .targets
            .iter()
            .find(|t| **t == req.audience.id || in_chain(t))
        {
            return refuse(
                Dimension::Loop,
                format_args!("target {} already acts in this chain", Shown(t)),
            );
        }
    }
    if !pg.targets.contains(&req.audience.id) {
        return refuse(
            Dimension::Audience,
            format_args!(
                "audience {} is not among the parent's targets",
                Shown(&req.audience.id)
            ),
        );
    }
    if let Some(t) = req.targets.difference(&pg.targets).next() {
        return refuse(
            Dimension::Targets,
            format_args!("target {} is not among the parent's targets", Shown(t)),
        );
    }
    if let Some(s) = req.scopes.difference(&pg.scopes).next() {
        return refuse(
            Dimension::Scopes,
            format_args!("scope {} is not held by the parent", Shown(s)),
        );
    }
    let mut claims = pg.claims.clone();
    for (name, mut c) in req.claims {
        // A scope the parent does not hold is a typo: the claim would never apply.
        if let Some(s) = c
            .applies_to
            .iter()
            .flatten()
            .find(|s| !pg.scopes.contains(*s))
        {
            return refuse(
                Dimension::Claims,
                format_args!(
                    "claim {}: applies to scope {}, which the parent does not hold",
                    Shown(&name),
                    Shown(s)
                ),
            );
        }
        // A claim restated without scopes keeps the parent's: narrowing a value says
        // nothing about where it applies.
        if c.applies_to.is_none()
            && let Some(p) = pg.claims.get(&name)
        {
            c.applies_to.clone_from(&p.applies_to);
        }
        if let Some(p) = pg.claims.get(&name)
            && !p.is_narrowed_by(&c)
        {
            let (shown_c, shown_p) = if p.applies_to == c.applies_to {
                (c.constraint.to_string(), p.constraint.to_string())
            } else {
                (c.to_string(), p.to_string())
            };
            return refuse(
                Dimension::Claims,
                format_args!(
                    "claim {}: {shown_c} is not within the parent's {shown_p}",
                    Shown(&name)
                ),
            );
        }
        claims.insert(name, c);
    }
    // Each hop may add claims; the merged set stays within the same bound as a request's.
    if claims.len() > MAX_CLAIMS {
        return refuse(
            Dimension::Size,
            format_args!(
                "the child would carry {} claims; the limit is {MAX_CLAIMS}",
                claims.len()
            ),
        );
    }
    let expires_at = match req.ttl_secs {
        None => pg.expires_at,
        Some(0) => return refuse(Dimension::Expiry, "ttl_seconds must be at least 1"),
        Some(ttl) => new.now.plus_secs(ttl),
    };
    if expires_at > pg.expires_at {
        return refuse(
            Dimension::Expiry,
            format_args!(
                "the child would expire {} ms after its parent",
                expires_at.0 - pg.expires_at.0
            ),
        );
    }
    let max_uses = match (req.max_uses, pg.max_uses) {
        (Some(0), _) => return refuse(Dimension::Uses, "max_uses must be at least 1"),
        (Some(c), Some(p)) if c > p => {
            return refuse(
                Dimension::Uses,
                format_args!("max_uses {c} exceeds the parent's {p}"),
            );
        }
        (Some(c), _) => Some(c),
        (None, p) => p,
    };
    let mut rctx = parent.rctx.clone();
    for key in &req.drop_rctx {
        if rctx.remove(key).is_none() {
            return refuse(
                Dimension::Context,
                format_args!("drop_rctx: {} is not in the parent's rctx", Shown(key)),
            );
        }
    }
    let grant = Grant {
        scopes: req.scopes,
        claims,
        targets: req.targets,
        expires_at,
        max_uses,
        require_action_check: pg.require_action_check || req.require_action_check,
    };
    if grant == *pg {
        return refuse(
            Dimension::NotNarrower,
            "the child grants exactly the parent's scopes, claims, targets, expiry and uses; each hop must narrow at least one",
        );
    }
    let purpose = req.purpose.unwrap_or_else(|| parent.purpose.clone());
    check_size(&grant, context_size(&purpose, &parent.tctx, &rctx))?;
    let mut actors = parent.actors.clone();
    actors.push(actor);
    Ok(TokenRecord {
        token_id: new.token.token_id,
        secret_hash: new.token.secret_hash,
        txn: parent.txn,
        parent: Some(parent.token_id),
        depth,
        subject: parent.subject.clone(),
        trust_domain: parent.trust_domain.clone(),
        actors,
        audience: req.audience,
        grant,
        purpose,
        tctx: parent.tctx.clone(),
        rctx,
        issued_at: new.now,
        idempotency: new.idempotency,
        actor_auth: Some(new.auth),
        // Only a redemption marks a token; a child never inherits the mark.
        consent: None,
    })
}

/// The token id a record would be stored under; convenience for callers.
pub fn id_of(record: &TokenRecord) -> TokenId {
    record.token_id
}
