//! The policy: what a party may do with Writ (its [`Roles`]) and the most it may ever
//! hold.
//!
//! Narrowing bounds every hop by its parent, but a root is as wide as its minter asks, and
//! a parent says nothing about what its next audience should be trusted with. The
//! [`Registry`] bounds both from the operator's side: parties (kind, client type, roles, a
//! [`Ceiling`] of scopes and claims, whom they may call, how long their tokens may live,
//! enabled or not) and scopes (which kinds and client types may hold them, how long,
//! whether they are high-privilege). [`Registry::admit`] checks a new token against its
//! audience at Mint and at every Downscope, so no chain hands a party more than the policy
//! lets it hold, however wide the token it was derived from.
//!
//! A ceiling lives in the same lattice as tokens: a grant is within it when it holds only
//! the ceiling's scopes and narrows (as a child narrows its parent) every ceiling claim
//! that can constrain one of its scopes (see [`Ceiling::check`]).
//!
//! Unknown is never unconstrained: a scope the registry does not define is refused
//! (`invalid_scope`), and an identity it does not list is no party, unless the two
//! development settings ([`Registry::open_scopes`], [`Registry::open_trust_domain`]) say
//! otherwise. [`Registry::development`], used when no policy file is configured, turns
//! both on.
//!
//! Pure like the rest of the crate: `writ_server::policy` reads, validates and hot-reloads
//! the policy file into a [`Registry`]; the rules here take the issue time as an argument.

use crate::claims::Claims;
use crate::ids::UnixMillis;
use crate::model::{ActorKind, ClientType, Grant, Party};
use crate::narrow::{Dimension, NarrowingError};
use crate::text::Shown;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Deref;

/// What a party may do with Writ. Roles come from the registry (or, for bearer
/// credentials, from the configuration), never from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Starts transactions (Mint).
    Minter,
    /// Holds tokens and derives children for the next hop (Downscope).
    Agent,
    /// Holds tokens and checks them (Validate) before it serves a request.
    ResourceServer,
    /// Reads call chains and the audit trail, revokes, disables parties.
    Operator,
    /// Decides consent requests for users (back-channel).
    Approver,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 5] = [
        Role::Minter,
        Role::Agent,
        Role::ResourceServer,
        Role::Operator,
        Role::Approver,
    ];

    /// Stable lower-case name, as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Minter => "minter",
            Role::Agent => "agent",
            Role::ResourceServer => "resource_server",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Role`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set holding `roles`.
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }

    /// Does the set hold `role`?
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Does the set hold any of `roles`?
    pub fn any(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.contains(*r))
    }

    /// The roles held in both sets.
    pub fn and(self, other: Roles) -> Roles {
        Roles(self.0 & other.0)
    }

    /// The roles held, in order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Role::as_str))
            .finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

/// The roles a party holds tokens with: the only ones a token's audience may have.
pub const HOLDER_ROLES: [Role; 2] = [Role::Agent, Role::ResourceServer];

/// One scope the registry defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeDef {
    /// The scope itself (an RFC 6749 scope-token).
    pub name: String,
    /// What it permits, for people reading the policy and the audit trail.
    pub description: String,
    /// Refused for public-client audiences unless [`PublicClientLimits::high_privilege`].
    pub high_privilege: bool,
    /// Longest lifetime of a token holding it, in seconds; `None`: no limit of its own.
    pub max_ttl_secs: Option<u64>,
    /// Kinds of party that may hold it; `None`: every kind.
    pub kinds: Option<BTreeSet<ActorKind>>,
    /// Client types that may hold it; `None`: both.
    pub client_types: Option<BTreeSet<ClientType>>,
}

/// The most a party may ever hold: scopes and claims in the same lattice as a token's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ceiling {
    /// Every scope the party may hold.
    pub scopes: BTreeSet<String>,
    /// Claims every token it holds must narrow (where they can constrain its scopes).
    pub claims: Claims,
}

impl Ceiling {
    /// Is a token holding `grant` within this ceiling? Its scopes must be among the
    /// ceiling's, and every ceiling claim that applies to one of its scopes must be
    /// narrowed by the grant's claim of the same name, as a parent's claim by a child's
    /// ([`Claim::is_narrowed_by`](crate::Claim::is_narrowed_by)), with the claims' scopes
    /// compared over the grant's scopes: the grant's claim must apply to each of them the
    /// ceiling's claim applies to. A ceiling claim on none of the grant's scopes constrains
    /// nothing the grant permits, so it is not required (and the wire refuses a claim on a
    /// scope the token does not hold); dropping any other is above the ceiling. `Err` is
    /// the detail, naming the first offending scope or claim (never a whole set).
    pub fn check(&self, grant: &Grant) -> Result<(), String> {
        if let Some(s) = grant.scopes.difference(&self.scopes).next() {
            return Err(format!("scope {} is above its ceiling", Shown(s)));
        }
        for (name, c) in &self.claims {
            if !grant.scopes.iter().any(|s| c.applies(s)) {
                continue;
            }
            let Some(g) = grant.claims.get(name) else {
                return Err(format!(
                    "claim {} ({c}) of its ceiling is missing",
                    Shown(name)
                ));
            };
            let covers = match &g.applies_to {
                None => true,
                Some(on) => grant
                    .scopes
                    .iter()
                    .filter(|s| c.applies(s))
                    .all(|s| on.contains(s)),
            };
            if !covers || !c.constraint.is_narrowed_by(&g.constraint) {
                let (shown_g, shown_c) = if covers {
                    (g.constraint.to_string(), c.constraint.to_string())
                } else {
                    (g.to_string(), c.to_string())
                };
                return Err(format!(
                    "claim {}: {shown_g} is not within its ceiling's {shown_c}",
                    Shown(name)
                ));
            }
        }
        Ok(())
    }
}

/// One party the registry knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyDef {
    /// Its identity (a SPIFFE ID of the trust domain).
    pub id: String,
    /// A name for people.
    pub display_name: Option<String>,
    /// User, agent or workload.
    pub kind: ActorKind,
    /// Confidential or public client.
    pub client_type: ClientType,
    /// What it may do with Writ.
    pub roles: Roles,
    /// The most it may ever hold. `None`: nothing beyond the scopes' own rules. The policy
    /// loader requires one for every registered party that can hold tokens; only
    /// unregistered identities of an open trust domain (development) have none.
    pub ceiling: Option<Ceiling>,
    /// The parties it may derive tokens for (the audiences of its children); `None`: any.
    pub targets: Option<BTreeSet<String>>,
    /// Longest lifetime of a token it holds, in seconds; `None`: no limit of its own.
    pub max_ttl_secs: Option<u64>,
    /// A disabled party holds no role: it may not act, and no token is issued to it.
    pub enabled: bool,
    /// It may receive Txn-Token JWTs (the phantom-token pattern: an internal service that
    /// verifies them offline against the JWKS). Never an agent or a public client: an
    /// agent gets opaque tokens only, which Writ can revoke at once.
    pub txn_token_jwt: bool,
}

/// Stricter limits on tokens whose audience is a public client (one that cannot keep a
/// secret: a token it holds is more likely to leak).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicClientLimits {
    /// Longest lifetime, in seconds.
    pub max_ttl_secs: u64,
    /// Most uses (allowed action checks); `None`: no limit, so unlimited tokens are allowed.
    pub max_uses: Option<u32>,
    /// The token must answer only action checks (so its uses bound every use).
    pub require_action_check: bool,
    /// High-privilege scopes are allowed.
    pub high_privilege: bool,
}

impl Default for PublicClientLimits {
    /// Strict: two minutes, at most 10 uses, action checks only, no high-privilege scope.
    fn default() -> Self {
        PublicClientLimits {
            max_ttl_secs: 120,
            max_uses: Some(10),
            require_action_check: true,
            high_privilege: false,
        }
    }
}

/// The parties and scopes a grant is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    /// The trust domain every party's SPIFFE ID belongs to.
    pub trust_domain: String,
    /// Development setting: an identity of the trust domain that is not listed is still a
    /// party ([`Registry::resolve`]), with no ceiling. Off in production.
    pub open_trust_domain: bool,
    /// Development setting: a scope that is not defined is accepted, with no rules of its
    /// own. Off in production: an unknown scope is `invalid_scope`.
    pub open_scopes: bool,
    /// Defined scopes, by name.
    pub scopes: BTreeMap<String, ScopeDef>,
    /// Registered parties, by id.
    pub parties: BTreeMap<String, PartyDef>,
    /// Limits on tokens for public clients.
    pub public_clients: PublicClientLimits,
}

/// A party as the registry sees it: registered, or (open trust domain only) derived from
/// its identity. Dereferences to its [`PartyDef`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedParty<'a> {
    /// Its definition (borrowed from the registry when registered).
    pub def: Cow<'a, PartyDef>,
    /// Listed in the registry (rather than admitted by an open trust domain).
    pub registered: bool,
}

impl Deref for ResolvedParty<'_> {
    type Target = PartyDef;
    fn deref(&self) -> &PartyDef {
        &self.def
    }
}

impl ResolvedParty<'_> {
    /// The party as records and events name it.
    pub fn party(&self) -> Party {
        Party {
            id: self.def.id.clone(),
            kind: self.def.kind,
            client_type: self.def.client_type,
        }
    }

    /// The roles it may act with now: none when disabled.
    pub fn effective_roles(&self) -> Roles {
        if self.def.enabled {
            self.def.roles
        } else {
            Roles::NONE
        }
    }

    /// Refuses (`party`) a request that describes this party otherwise than the registry:
    /// another kind or client type (a public client passed off as confidential would
    /// escape the public clients' limits).
    pub fn check_description(&self, described: &Party) -> Result<(), NarrowingError> {
        let d = &self.def;
        let wrong = if described.id != d.id {
            Some(format!("is not {}", Shown(&described.id)))
        } else if described.kind != d.kind {
            Some(format!(
                "is a {} party, not a {} party",
                d.kind.as_str(),
                described.kind.as_str()
            ))
        } else if described.client_type != d.client_type {
            Some(format!(
                "is a {} client, not a {} client",
                d.client_type.as_str(),
                described.client_type.as_str()
            ))
        } else {
            None
        };
        match wrong {
            Some(why) => refuse(Dimension::Party, format_args!("{} {why}", Shown(&d.id))),
            None => Ok(()),
        }
    }
}

fn refuse<T>(dimension: Dimension, detail: impl fmt::Display) -> Result<T, NarrowingError> {
    Err(NarrowingError {
        dimension,
        detail: detail.to_string(),
    })
}

/// The path of `id` if it is a SPIFFE ID of `trust_domain` (`spiffe://<td>/<path>`), with
/// the specification's path rules: non-empty segments of `[A-Za-z0-9._-]`, none `.` or
/// `..`. String operations only; the server parses identities fully where they enter.
fn spiffe_path<'a>(trust_domain: &str, id: &'a str) -> Option<&'a str> {
    let path = id
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix('/')?;
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    path.split('/').all(segment_ok).then_some(path)
}

/// Milliseconds shown as whole seconds, rounded up (a lifetime over a limit by 1 ms still
/// reads as over it).
fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl Registry {
    /// The built-in policy used when no policy file is configured, for development: any
    /// identity of `trust_domain` is a party (open trust domain) and any well-formed scope
    /// is known (open scopes); nothing is registered, and public clients get the default
    /// limits.
    pub fn development(trust_domain: impl Into<String>) -> Registry {
        Registry {
            trust_domain: trust_domain.into(),
            open_trust_domain: true,
            open_scopes: true,
            scopes: BTreeMap::new(),
            parties: BTreeMap::new(),
            public_clients: PublicClientLimits::default(),
        }
    }

    /// The party `id` names: a registered one, or, only with an open trust domain, an
    /// unregistered SPIFFE ID of this trust domain with defaults: its kind from the path's
    /// first segment (`/agent/…` an agent, `/user/…` a user, anything else a workload; the
    /// CA that issued its certificate is the operator's, so the path is not self-reported),
    /// a confidential client (it authenticated with a key), the roles agent and
    /// resource_server (never minter, operator or approver), no ceiling, no limit on whom
    /// it calls or on lifetime, enabled. `None`: no party.
    pub fn resolve(&self, id: &str) -> Option<ResolvedParty<'_>> {
        if let Some(def) = self.parties.get(id) {
            return Some(ResolvedParty {
                def: Cow::Borrowed(def),
                registered: true,
            });
        }
        if !self.open_trust_domain {
            return None;
        }
        let path = spiffe_path(&self.trust_domain, id)?;
        let kind = match path.split('/').next() {
            Some("agent") => ActorKind::Agent,
            Some("user") => ActorKind::User,
            _ => ActorKind::Workload,
        };
        Some(ResolvedParty {
            def: Cow::Owned(PartyDef {
                id: id.to_owned(),
                display_name: None,
                kind,
                client_type: ClientType::Confidential,
                roles: Roles::of(&HOLDER_ROLES),
                ceiling: None,
                targets: None,
                max_ttl_secs: None,
                enabled: true,
                // Development: any workload (never an agent) may receive JWTs.
                txn_token_jwt: kind == ActorKind::Workload,
            }),
            registered: false,
        })
    }

    /// Is `scope` high-privilege, so that exercising it needs the user's consent (see
    /// [`crate::consent`])? An undefined scope (open scopes) is not.
    pub fn requires_consent(&self, scope: &str) -> bool {
        self.scopes.get(scope).is_some_and(|d| d.high_privilege)
    }

    /// The policy's description of `scope` (empty when it has none).
    pub fn scope_description(&self, scope: &str) -> &str {
        self.scopes
            .get(scope)
            .map_or("", |d| d.description.as_str())
    }

    /// [`resolve`](Self::resolve) for a token's audience: an identity that is no party is
    /// refused (`party`).
    pub fn audience(&self, id: &str) -> Result<ResolvedParty<'_>, NarrowingError> {
        match self.resolve(id) {
            Some(p) => Ok(p),
            None => refuse(
                Dimension::Party,
                format_args!("audience {} is not a registered party", Shown(id)),
            ),
        }
    }

    /// The checks Mint and Downscope apply to a new token for `audience`, issued at
    /// `issued_at` and derived by `holder` (the parent's audience; `None` at Mint), in this
    /// order, the first failure naming its dimension and culprit:
    /// 1. `party`: the audience is disabled, or holds neither role agent nor
    ///    resource_server;
    /// 2. `invalid_scope`: a scope the registry does not define (unless open scopes);
    /// 3. `ceiling`: a scope whose kinds or client types exclude the audience;
    /// 4. `ceiling`: the grant is above the audience's ceiling ([`Ceiling::check`]);
    /// 5. `ceiling`: a lifetime longer than the audience's or one of its scopes' longest;
    /// 6. `ceiling`: for a public-client audience, a lifetime, a use count (or unlimited
    ///    uses) above [`PublicClientLimits`], no `require_action_check` where required, or
    ///    a high-privilege scope where none is allowed;
    /// 7. `ceiling`: the holder may only call its `targets`, and the audience is not one.
    pub fn admit(
        &self,
        audience: &ResolvedParty<'_>,
        holder: Option<&ResolvedParty<'_>>,
        grant: &Grant,
        issued_at: UnixMillis,
    ) -> Result<(), NarrowingError> {
        let a = &audience.def;
        let who = Shown(&a.id);
        if !a.enabled {
            return refuse(Dimension::Party, format_args!("audience {who} is disabled"));
        }
        if !a.roles.any(&HOLDER_ROLES) {
            return refuse(
                Dimension::Party,
                format_args!("audience {who} holds neither role agent nor resource_server"),
            );
        }
        let mut defs = Vec::with_capacity(grant.scopes.len());
        for s in &grant.scopes {
            match self.scopes.get(s) {
                Some(def) => defs.push(def),
                None if self.open_scopes => {}
                None => {
                    return refuse(
                        Dimension::InvalidScope,
                        format_args!("unknown scope {}", Shown(s)),
                    );
                }
            }
        }
        for def in &defs {
            let scope = Shown(&def.name);
            if let Some(kinds) = &def.kinds
                && !kinds.contains(&a.kind)
            {
                return refuse(
                    Dimension::Ceiling,
                    format_args!(
                        "scope {scope} may not be held by audience {who} (kind {})",
                        a.kind.as_str()
                    ),
                );
            }
            if let Some(types) = &def.client_types
                && !types.contains(&a.client_type)
            {
                return refuse(
                    Dimension::Ceiling,
                    format_args!(
                        "scope {scope} may not be held by audience {who} (client type {})",
                        a.client_type.as_str()
                    ),
                );
            }
        }
        if let Some(ceiling) = &a.ceiling {
            ceiling.check(grant).or_else(|detail| {
                refuse(Dimension::Ceiling, format_args!("audience {who}: {detail}"))
            })?;
        }
        let lifetime_ms = grant.expires_at.0.saturating_sub(issued_at.0);
        let over = |limit_secs: u64| lifetime_ms > limit_secs.saturating_mul(1000);
        if let Some(max) = a.max_ttl_secs
            && over(max)
        {
            return refuse(
                Dimension::Ceiling,
                format_args!(
                    "a lifetime of {} s exceeds the {max} s audience {who} may hold a token",
                    secs(lifetime_ms)
                ),
            );
        }
        for def in &defs {
            if let Some(max) = def.max_ttl_secs
                && over(max)
            {
                return refuse(
                    Dimension::Ceiling,
                    format_args!(
                        "a lifetime of {} s exceeds the {max} s scope {} may be held",
                        secs(lifetime_ms),
                        Shown(&def.name)
                    ),
                );
            }
        }
        if a.client_type == ClientType::Public {
            let limits = &self.public_clients;
            let public = |detail: fmt::Arguments<'_>| {
                refuse(
                    Dimension::Ceiling,
                    format_args!("audience {who} is a public client: {detail}"),
                )
            };
            if over(limits.max_ttl_secs) {
                return public(format_args!(
                    "a lifetime of {} s exceeds its {} s",
                    secs(lifetime_ms),
                    limits.max_ttl_secs
                ));
            }
            match (grant.max_uses, limits.max_uses) {
                (None, Some(max)) => {
                    return public(format_args!("unlimited uses; it may have at most {max}"));
                }
                (Some(uses), Some(max)) if uses > max => {
                    return public(format_args!("{uses} uses exceed its {max}"));
                }
                _ => {}
            }
            if limits.require_action_check && !grant.require_action_check {
                return public(format_args!("its tokens must require action checks"));
            }
            if !limits.high_privilege
                && let Some(def) = defs.iter().find(|d| d.high_privilege)
            {
                return public(format_args!("scope {} is high-privilege", Shown(&def.name)));
            }
        }
        if let Some(h) = holder
            && let Some(targets) = &h.def.targets
            && !targets.contains(&a.id)
        {
            return refuse(
                Dimension::Ceiling,
                format_args!("holder {} may not call audience {who}", Shown(&h.def.id)),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::claims::{Claim, Constraint};

    #[test]
    fn role_sets_hold_exactly_their_roles() {
        let r = Roles::of(&[Role::Agent, Role::Operator]);
        assert!(r.contains(Role::Agent) && r.contains(Role::Operator));
        assert!(!r.contains(Role::Minter) && !r.contains(Role::Approver));
        assert!(r.any(&[Role::Minter, Role::Operator]));
        assert!(!Roles::NONE.any(&Role::ALL));
        assert_eq!(r.to_string(), "agent, operator");
    }

    const TD: &str = "writ.local";
    const BOOKING: &str = "spiffe://writ.local/agent/booking";
    const PAYMENTS: &str = "spiffe://writ.local/api/payments";
    const PHONE: &str = "spiffe://writ.local/agent/phone";
    const OFF: &str = "spiffe://writ.local/agent/off";
    const GATEWAY: &str = "spiffe://writ.local/gw";
    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn scope(name: &str) -> ScopeDef {
        ScopeDef {
            name: name.into(),
            description: String::new(),
            high_privilege: false,
            max_ttl_secs: None,
            kinds: None,
            client_types: None,
        }
    }

    fn party(id: &str, kind: ActorKind, roles: &[Role], ceiling: Option<Ceiling>) -> PartyDef {
        PartyDef {
            id: id.into(),
            display_name: None,
            kind,
            client_type: ClientType::Confidential,
            roles: Roles::of(roles),
            ceiling,
            targets: None,
            max_ttl_secs: None,
            enabled: true,
            txn_token_jwt: false,
        }
    }

    fn ceiling(scopes: &[&str], claims: &[(&str, Claim)]) -> Ceiling {
        Ceiling {
            scopes: set(scopes),
            claims: claims
                .iter()
                .map(|(n, c)| (n.to_string(), c.clone()))
                .collect(),
        }
    }

    fn amount(max: i64) -> Claim {
        Claim {
            constraint: Constraint::Max(max),
            applies_to: Some(set(&["payments:charge"])),
        }
    }

    fn merchant(members: &[&str]) -> Claim {
        Claim::on_every_scope(Constraint::AllowSet(set(members)))
    }

    fn registry() -> Registry {
        let mut charge = scope("payments:charge");
        charge.high_privilege = true;
        charge.max_ttl_secs = Some(120);
        charge.kinds = Some([ActorKind::Agent, ActorKind::Workload].into());
        charge.client_types = Some([ClientType::Confidential].into());
        let mut admin = scope("admin");
        admin.kinds = Some([ActorKind::Workload].into());
        let booking_ceiling = ceiling(
            &["trips:read", "payments:charge", "admin"],
            &[
                ("amount", amount(500)),
                ("merchant", merchant(&["tap", "ryanair"])),
            ],
        );
        let mut booking = party(
            BOOKING,
            ActorKind::Agent,
            &[Role::Agent],
            Some(booking_ceiling),
        );
        booking.targets = Some(set(&[PAYMENTS]));
        booking.max_ttl_secs = Some(300);
        let mut phone = party(
            PHONE,
            ActorKind::Agent,
            &[Role::Agent],
            Some(ceiling(&["trips:read", "payments:charge", "hp"], &[])),
        );
        phone.client_type = ClientType::Public;
        let mut off = party(
            OFF,
            ActorKind::Agent,
            &[Role::Agent],
            Some(Ceiling::default()),
        );
        off.enabled = false;
        let mut hp = scope("hp");
        hp.high_privilege = true;
        Registry {
            trust_domain: TD.into(),
            open_trust_domain: false,
            open_scopes: false,
            scopes: [scope("trips:read"), charge, admin, hp]
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            parties: [
                booking,
                party(
                    PAYMENTS,
                    ActorKind::Workload,
                    &[Role::ResourceServer],
                    Some(ceiling(&["trips:read", "payments:charge"], &[])),
                ),
                phone,
                off,
                party(GATEWAY, ActorKind::Workload, &[Role::Minter], None),
            ]
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect(),
            public_clients: PublicClientLimits::default(),
        }
    }

    fn grant(scopes: &[&str], claims: &[(&str, Claim)], ttl_secs: u64) -> Grant {
        Grant {
            scopes: set(scopes),
            claims: claims
                .iter()
                .map(|(n, c)| (n.to_string(), c.clone()))
                .collect(),
            targets: BTreeSet::new(),
            expires_at: T0.plus_secs(ttl_secs),
            max_uses: None,
            require_action_check: false,
        }
    }

    fn refusal(r: &Registry, to: &str, holder: Option<&str>, g: &Grant) -> (Dimension, String) {
        let a = r.resolve(to).unwrap();
        let h = holder.map(|h| r.resolve(h).unwrap());
        let e = r.admit(&a, h.as_ref(), g, T0).unwrap_err();
        (e.dimension, e.detail)
    }

    fn booking_grant() -> Grant {
        grant(
            &["trips:read", "payments:charge"],
            &[
                ("amount", amount(200)),
                ("merchant", merchant(&["tap"])),
                ("extra", Claim::on_every_scope(Constraint::Min(1))),
            ],
            100,
        )
    }

    #[test]
    fn a_grant_within_the_ceiling_is_admitted() {
        let r = registry();
        let booking = r.resolve(BOOKING).unwrap();
        assert!(booking.registered);
        assert_eq!(r.admit(&booking, None, &booking_grant(), T0), Ok(()));
        // The ceiling itself, exactly.
        let exact = grant(
            &["trips:read", "payments:charge"],
            &[
                ("amount", amount(500)),
                ("merchant", merchant(&["tap", "ryanair"])),
            ],
            120,
        );
        assert_eq!(r.admit(&booking, None, &exact, T0), Ok(()));
        // A holder whose targets name the audience.
        let payments = r.resolve(PAYMENTS).unwrap();
        let g = grant(&["payments:charge"], &[], 60);
        assert_eq!(r.admit(&payments, Some(&booking), &g, T0), Ok(()));
    }

    #[test]
    fn audiences_that_cannot_hold_tokens_are_refused_as_parties() {
        let r = registry();
        let g = grant(&["trips:read"], &[], 60);
        let (d, why) = refusal(&r, OFF, None, &g);
        assert_eq!(
            (d, why.as_str()),
            (
                Dimension::Party,
                "audience \"spiffe://writ.local/agent/off\" is disabled"
            )
        );
        let (d, why) = refusal(&r, GATEWAY, None, &g);
        assert_eq!(d, Dimension::Party);
        assert!(
            why.contains("neither role agent nor resource_server"),
            "{why}"
        );
        let e = r.audience("spiffe://writ.local/agent/nobody").unwrap_err();
        assert_eq!(e.dimension, Dimension::Party);
        // Disabled: no role to act with either.
        assert_eq!(r.resolve(OFF).unwrap().effective_roles(), Roles::NONE);
        assert_eq!(
            r.resolve(BOOKING).unwrap().effective_roles(),
            Roles::of(&[Role::Agent])
        );
    }

    #[test]
    fn unknown_scopes_are_invalid_unless_scopes_are_open() {
        let mut r = registry();
        let g = grant(&["trips:read", "trips:write"], &[], 60);
        assert_eq!(
            refusal(&r, PAYMENTS, None, &g),
            (
                Dimension::InvalidScope,
                "unknown scope \"trips:write\"".into()
            )
        );
        // Checked before the ceiling, which does not hold it either.
        r.open_scopes = true;
        let (d, why) = refusal(&r, PAYMENTS, None, &g);
        assert_eq!(d, Dimension::Ceiling);
        assert!(
            why.contains("scope \"trips:write\" is above its ceiling"),
            "{why}"
        );
    }

    #[test]
    fn scopes_name_the_kinds_and_client_types_that_may_hold_them() {
        let r = registry();
        // admin: workloads only; booking is an agent (its ceiling holds admin all the same).
        let (d, why) = refusal(&r, BOOKING, None, &grant(&["admin"], &[], 60));
        assert_eq!(d, Dimension::Ceiling);
        assert!(
            why.contains("scope \"admin\" may not be held") && why.ends_with("(kind agent)"),
            "{why}"
        );
        // payments:charge: confidential clients only.
        let g = grant(&["payments:charge"], &[], 60);
        let (d, why) = refusal(&r, PHONE, None, &g);
        assert_eq!(d, Dimension::Ceiling);
        assert!(why.ends_with("(client type public)"), "{why}");
    }

    #[test]
    fn the_ceiling_bounds_scopes_and_claims() {
        let r = registry();
        let mut g = booking_grant();
        g.scopes.insert("hp".into());
        let (d, why) = refusal(&r, BOOKING, None, &g);
        assert_eq!(d, Dimension::Ceiling);
        assert!(why.ends_with("scope \"hp\" is above its ceiling"), "{why}");

        let mut wider = booking_grant();
        wider.claims.insert("amount".into(), amount(501));
        let (d, why) = refusal(&r, BOOKING, None, &wider);
        assert_eq!(d, Dimension::Ceiling);
        assert!(
            why.ends_with("claim \"amount\": max 501 is not within its ceiling's max 500"),
            "{why}"
        );

        let mut dropped = booking_grant();
        dropped.claims.remove("merchant");
        let (_, why) = refusal(&r, BOOKING, None, &dropped);
        assert!(
            why.contains(
                "claim \"merchant\" (allow {\"ryanair\",\"tap\"}) of its ceiling is missing"
            ),
            "{why}"
        );

        // A claim of another kind is not within the ceiling's.
        let mut kind = booking_grant();
        kind.claims.insert(
            "amount".into(),
            Claim {
                constraint: Constraint::Min(1),
                ..amount(0)
            },
        );
        assert_eq!(refusal(&r, BOOKING, None, &kind).0, Dimension::Ceiling);

        // On fewer of the grant's scopes than the ceiling's claim.
        let mut narrow_scopes = booking_grant();
        narrow_scopes.claims.insert(
            "merchant".into(),
            Claim {
                applies_to: Some(set(&["trips:read"])),
                ..merchant(&["tap"])
            },
        );
        let (_, why) = refusal(&r, BOOKING, None, &narrow_scopes);
        assert!(why.contains("on {\"trips:read\"} is not within"), "{why}");
    }

    #[test]
    fn a_ceiling_claim_on_none_of_the_grants_scopes_is_not_required() {
        let r = registry();
        let booking = r.resolve(BOOKING).unwrap();
        // amount applies to payments:charge only: a trips:read grant need not carry it
        // (and the wire would refuse a claim on a scope the token does not hold).
        let g = grant(&["trips:read"], &[("merchant", merchant(&["tap"]))], 60);
        assert_eq!(r.admit(&booking, None, &g, T0), Ok(()));
        // merchant applies to every scope: never optional.
        let g = grant(&["trips:read"], &[], 60);
        assert_eq!(refusal(&r, BOOKING, None, &g).0, Dimension::Ceiling);
        // A grant claim scoped beyond the grant's scopes (inherited down a chain) is fine.
        let inherited = Claim {
            applies_to: Some(set(&["trips:read", "payments:charge"])),
            ..merchant(&["tap"])
        };
        let g = grant(&["trips:read"], &[("merchant", inherited)], 60);
        assert_eq!(r.admit(&booking, None, &g, T0), Ok(()));
    }

    #[test]
    fn lifetimes_are_bounded_by_the_audience_and_each_scope() {
        let r = registry();
        let (d, why) = refusal(
            &r,
            BOOKING,
            None,
            &grant(&["trips:read"], &[("merchant", merchant(&["tap"]))], 301),
        );
        assert_eq!(d, Dimension::Ceiling);
        assert!(
            why.contains("a lifetime of 301 s exceeds the 300 s audience"),
            "{why}"
        );
        let mut g = booking_grant();
        g.expires_at = UnixMillis(T0.0 + 120_001);
        let (_, why) = refusal(&r, BOOKING, None, &g);
        assert!(
            why.contains("a lifetime of 121 s exceeds the 120 s scope \"payments:charge\""),
            "{why}"
        );
        g.expires_at = T0.plus_secs(120);
        assert_eq!(r.admit(&r.resolve(BOOKING).unwrap(), None, &g, T0), Ok(()));
    }

    #[test]
    fn public_clients_get_the_stricter_limits() {
        let mut r = registry();
        let ok = Grant {
            max_uses: Some(10),
            require_action_check: true,
            ..grant(&["trips:read"], &[], 120)
        };
        let phone = r.resolve(PHONE).unwrap();
        assert_eq!(r.admit(&phone, None, &ok, T0), Ok(()));
        let cases = [
            (
                Grant {
                    expires_at: T0.plus_secs(121),
                    ..ok.clone()
                },
                "a lifetime of 121 s exceeds its 120 s",
            ),
            (
                Grant {
                    max_uses: None,
                    ..ok.clone()
                },
                "unlimited uses; it may have at most 10",
            ),
            (
                Grant {
                    max_uses: Some(11),
                    ..ok.clone()
                },
                "11 uses exceed its 10",
            ),
            (
                Grant {
                    require_action_check: false,
                    ..ok.clone()
                },
                "its tokens must require action checks",
            ),
            (
                Grant {
                    scopes: set(&["trips:read", "hp"]),
                    ..ok.clone()
                },
                "scope \"hp\" is high-privilege",
            ),
        ];
        for (g, expected) in &cases {
            let (d, why) = refusal(&r, PHONE, None, g);
            assert_eq!(d, Dimension::Ceiling);
            assert_eq!(
                why,
                format!("audience \"{PHONE}\" is a public client: {expected}")
            );
        }
        // Confidential clients are not held to them.
        let payments = r.resolve(PAYMENTS).unwrap();
        let g = grant(&["trips:read"], &[], 900);
        assert_eq!(r.admit(&payments, None, &g, T0), Ok(()));
        // Relaxed limits.
        r.public_clients = PublicClientLimits {
            max_ttl_secs: 600,
            max_uses: None,
            require_action_check: false,
            high_privilege: true,
        };
        let phone = r.resolve(PHONE).unwrap();
        let g = grant(&["trips:read", "hp"], &[], 600);
        assert_eq!(r.admit(&phone, None, &g, T0), Ok(()));
    }

    #[test]
    fn a_holder_calls_only_its_targets() {
        let r = registry();
        let g = Grant {
            max_uses: Some(1),
            require_action_check: true,
            ..grant(&["trips:read"], &[], 60)
        };
        let (d, why) = refusal(&r, PHONE, Some(BOOKING), &g);
        assert_eq!(d, Dimension::Ceiling);
        assert_eq!(
            why,
            format!("holder \"{BOOKING}\" may not call audience \"{PHONE}\"")
        );
        // A holder without targets calls anyone.
        let phone = r.resolve(PHONE).unwrap();
        let payments = r.resolve(PAYMENTS).unwrap();
        assert_eq!(r.admit(&phone, Some(&payments), &g, T0), Ok(()));
    }

    #[test]
    fn checks_run_in_order_and_the_first_failure_is_reported() {
        let mut r = registry();
        let phone = r.parties.get_mut(PHONE).unwrap();
        phone.enabled = false;
        phone.max_ttl_secs = Some(100);
        phone
            .ceiling
            .as_mut()
            .unwrap()
            .claims
            .insert("merchant".into(), merchant(&["tap"]));
        // Wrong on every count; each step fixes the one reported.
        let mut g = grant(&["trips:read", "hp", "admin", "nope"], &[], 10_000);
        let expect = |r: &Registry, g: &Grant, d: Dimension, part: &str| {
            let (got, why) = refusal(r, PHONE, Some(BOOKING), g);
            assert_eq!(got, d, "{why}");
            assert!(why.contains(part), "{why} does not say {part}");
        };
        expect(&r, &g, Dimension::Party, "is disabled");
        r.parties.get_mut(PHONE).unwrap().enabled = true;
        expect(&r, &g, Dimension::InvalidScope, "unknown scope \"nope\"");
        g.scopes.remove("nope");
        expect(
            &r,
            &g,
            Dimension::Ceiling,
            "scope \"admin\" may not be held",
        );
        g.scopes.remove("admin");
        expect(&r, &g, Dimension::Ceiling, "claim \"merchant\"");
        g.claims.insert("merchant".into(), merchant(&["tap"]));
        expect(&r, &g, Dimension::Ceiling, "exceeds the 100 s audience");
        g.expires_at = T0.plus_secs(100);
        expect(&r, &g, Dimension::Ceiling, "unlimited uses");
        g.max_uses = Some(1);
        g.require_action_check = true;
        expect(&r, &g, Dimension::Ceiling, "scope \"hp\" is high-privilege");
        g.scopes.remove("hp");
        expect(&r, &g, Dimension::Ceiling, "may not call");
        let phone = r.resolve(PHONE).unwrap();
        assert_eq!(r.admit(&phone, None, &g, T0), Ok(()));
    }

    #[test]
    fn an_open_trust_domain_resolves_its_identities_with_defaults() {
        let mut r = registry();
        assert_eq!(r.resolve("spiffe://writ.local/agent/new"), None);
        r.open_trust_domain = true;
        let cases = [
            ("spiffe://writ.local/agent/new", ActorKind::Agent),
            ("spiffe://writ.local/user/alice", ActorKind::User),
            ("spiffe://writ.local/api/x", ActorKind::Workload),
            ("spiffe://writ.local/agents/x", ActorKind::Workload),
            ("spiffe://writ.local/agent", ActorKind::Agent),
        ];
        for (id, kind) in cases {
            let p = r.resolve(id).unwrap();
            assert!(!p.registered, "{id}");
            assert_eq!(p.kind, kind, "{id}");
            assert_eq!(p.client_type, ClientType::Confidential);
            assert_eq!(p.roles, Roles::of(&[Role::Agent, Role::ResourceServer]));
            assert!(!p.roles.any(&[Role::Minter, Role::Operator, Role::Approver]));
            assert_eq!(p.ceiling, None);
            assert!(p.enabled);
        }
        for bad in [
            "spiffe://other.td/agent/x",
            "spiffe://writ.local.evil/agent/x",
            "spiffe://writ.localx/agent/x",
            "spiffe://writ.local",
            "spiffe://writ.local/",
            "spiffe://writ.local/agent/",
            "spiffe://writ.local//agent",
            "spiffe://writ.local/agent/../x",
            "spiffe://writ.local/agent/a b",
            "SPIFFE://writ.local/agent/x",
            "booking",
        ] {
            assert_eq!(r.resolve(bad), None, "{bad}");
        }
        // Registered parties keep their definition.
        assert!(r.resolve(GATEWAY).unwrap().registered);
        // Unregistered: no ceiling, but the scopes' own rules and the holder's targets.
        let new = r.resolve("spiffe://writ.local/agent/new").unwrap();
        let g = grant(&["admin"], &[], 60);
        assert_eq!(
            r.admit(&new, None, &g, T0).unwrap_err().dimension,
            Dimension::Ceiling
        );
        let g = grant(&["trips:read", "hp"], &[], 86_400);
        assert_eq!(r.admit(&new, None, &g, T0), Ok(()));
        let booking = r.resolve(BOOKING).unwrap();
        assert_eq!(
            r.admit(&new, Some(&booking), &g, T0).unwrap_err().dimension,
            Dimension::Ceiling
        );
    }

    #[test]
    fn the_development_registry_is_open() {
        let r = Registry::development(TD);
        assert!(r.open_scopes && r.open_trust_domain);
        assert!(r.parties.is_empty() && r.scopes.is_empty());
        let p = r.audience("spiffe://writ.local/agent/a").unwrap();
        let g = grant(&["anything:at-all"], &[], 900);
        assert_eq!(r.admit(&p, None, &g, T0), Ok(()));
        assert!(r.audience("planner").is_err());
    }

    #[test]
    fn requests_must_describe_a_party_as_registered() {
        let r = registry();
        let p = r.resolve(PHONE).unwrap();
        assert_eq!(p.check_description(&p.party()), Ok(()));
        let mut claimed = p.party();
        claimed.client_type = ClientType::Confidential;
        let e = p.check_description(&claimed).unwrap_err();
        assert_eq!(e.dimension, Dimension::Party);
        assert!(
            e.detail
                .contains("is a public client, not a confidential client"),
            "{}",
            e.detail
        );
        claimed = p.party();
        claimed.kind = ActorKind::Workload;
        assert!(
            p.check_description(&claimed)
                .unwrap_err()
                .detail
                .contains("agent party, not a workload")
        );
    }

    #[test]
    fn refusals_stay_small() {
        let mut r = registry();
        let long = format!("spiffe://writ.local/agent/{}", "x".repeat(200));
        let mut p = party(
            &long,
            ActorKind::Agent,
            &[Role::Agent],
            Some(Ceiling::default()),
        );
        p.targets = Some(BTreeSet::new());
        r.parties.insert(long.clone(), p);
        let big: BTreeSet<String> = (0..64).map(|i| format!("{i:0>500}")).collect();
        let claims = [("c", Claim::on_every_scope(Constraint::AllowSet(big)))];
        let mut c = ceiling(&["trips:read"], &claims);
        c.claims.get_mut("c").unwrap().applies_to = None;
        r.parties.get_mut(&long).unwrap().ceiling = Some(c);
        let (_, why) = refusal(&r, &long, None, &grant(&["trips:read"], &[], 60));
        assert!(why.len() < 400, "{} bytes: {why}", why.len());
        let (_, why) = refusal(&r, PAYMENTS, Some(&long), &grant(&["trips:read"], &[], 60));
        assert!(why.len() < 300, "{why}");
    }
}
