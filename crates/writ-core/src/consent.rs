//! Consent step-up: the user approves one concrete high-privilege action before an agent
//! may perform it.
//!
//! A scope the policy marks high-privilege is *latent* in every token that holds it:
//! Downscope passes it on (narrowed as usual), but a Validate action check that needs it
//! is denied with `CONSENT_REQUIRED` ([`exercisable`]). The token's holder then asks for
//! consent to one action (the scope and exact attribute values) for one resource; the
//! server records a [`ConsentRequest`] that the user decides (on the consent page, or an
//! app that authenticated the user decides through the back-channel). Once approved, the
//! requester redeems it for a single-use, short-lived child of its token
//! ([`ConsentRequest::child_request`]): audience the resource, the one scope, an exact
//! claim per attribute, and a [`ConsentMark`] that makes that scope, and only it,
//! exercisable. Children never inherit the mark.
//!
//! Pure like the rest of the crate: the states and their transitions are here, the server
//! decides when they happen and the store applies them atomically.

use crate::claims::{Attributes, Claim, Claims, Constraint, Denial, Value};
use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::limits::{MAX_CONSENT_ATTRIBUTES, MAX_DETAIL_BYTES};
use crate::model::{Actor, ActorKind, AuthMethod, ClientType, Party, TokenRecord};
use crate::narrow::ChildRequest;
use crate::text::{Shown, truncate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A consent request's public id: `cns_` and 32 lowercase hex digits. The first 8 bytes
/// are its creation time in milliseconds (big-endian), so ids order by time; the rest are
/// random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsentId(pub [u8; 16]);

impl ConsentId {
    /// A new id created at `at` with 8 bytes of caller-supplied CSPRNG output.
    pub fn new(at: UnixMillis, entropy: [u8; 8]) -> ConsentId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&at.0.to_be_bytes());
        b[8..].copy_from_slice(&entropy);
        ConsentId(b)
    }

    /// When the request was created (the id's time part).
    pub fn created_at(&self) -> UnixMillis {
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.0[..8]);
        UnixMillis(u64::from_be_bytes(t))
    }
}

impl fmt::Display for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cns_")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Error for a string that is not a consent request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid consent request id: expected `cns_` followed by 32 lowercase hex digits")]
pub struct ConsentIdParseError;

impl FromStr for ConsentId {
    type Err = ConsentIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("cns_").ok_or(ConsentIdParseError)?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ConsentIdParseError);
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| ConsentIdParseError)?;
        }
        Ok(ConsentId(out))
    }
}

/// Carried by a token redeemed from an approved consent request: `scope` is exercisable
/// despite being high-privilege. Never inherited by a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentMark {
    /// The request the user approved.
    pub request: ConsentId,
    /// The one high-privilege scope the approval covers.
    pub scope: String,
}

/// One concrete action: a scope and the exact value of each attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentAction {
    /// The scope the action needs.
    pub scope: String,
    /// Each attribute's one value.
    pub attributes: BTreeMap<String, Value>,
}

impl ConsentAction {
    /// The action from a Validate-style action: every attribute must carry exactly one
    /// value (the user approves values, not lists), at most [`MAX_CONSENT_ATTRIBUTES`].
    pub fn from_attributes(
        scope: String,
        attributes: Attributes,
    ) -> Result<ConsentAction, ConsentError> {
        if attributes.len() > MAX_CONSENT_ATTRIBUTES {
            return Err(ConsentError::Attributes(format!(
                "at most {MAX_CONSENT_ATTRIBUTES} attributes"
            )));
        }
        let mut out = BTreeMap::new();
        for (name, mut values) in attributes {
            if values.len() != 1 {
                return Err(ConsentError::Attributes(format!(
                    "attribute {} must have exactly one value, not {}",
                    Shown(&name),
                    values.len()
                )));
            }
            out.insert(name, values.remove(0));
        }
        Ok(ConsentAction {
            scope,
            attributes: out,
        })
    }

    /// The action as Validate's attributes.
    pub fn as_attributes(&self) -> Attributes {
        self.attributes
            .iter()
            .map(|(k, v)| (k.clone(), vec![v.clone()]))
            .collect()
    }

    /// An exact-match claim per attribute. Each applies to every scope of the token it is
    /// put on, which holds only the action's scope ([`ConsentRequest::child_request`]);
    /// restated under a parent's claim of the same name it keeps that claim's scopes, so
    /// it narrows a parent claim on every scope as well as one on this scope.
    pub fn claims(&self) -> Claims {
        self.attributes
            .iter()
            .map(|(name, v)| {
                let claim = Claim {
                    constraint: Constraint::Exact(v.clone()),
                    applies_to: None,
                };
                (name.clone(), claim)
            })
            .collect()
    }

    /// Each attribute as `name = value`, in name order.
    pub fn attribute_lines(&self) -> Vec<String> {
        self.attributes
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect()
    }
}

/// How a decision reached Writ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// On the consent page, by whoever held the link.
    PageLink,
    /// On the consent page, after signing in at the trust domain's OpenID Provider as
    /// the request's subject.
    PageSignedIn,
    /// Through the back-channel, by an app (approver role) that authenticated the user.
    BackChannel,
    /// By an operator (command line), for the user.
    Operator,
}

impl Channel {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::PageLink => "page_link",
            Channel::PageSignedIn => "page_signed_in",
            Channel::BackChannel => "back_channel",
            Channel::Operator => "operator",
        }
    }
}

/// A user's decision, and who conveyed it how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or denied.
    pub approved: bool,
    /// When.
    pub at: UnixMillis,
    /// Who decided: the app or operator that conveyed it, or, on the page, the subject
    /// (signed in, or presumed from holding the link).
    pub by: String,
    /// How `by` authenticated (`None` on the page without sign-in).
    pub auth: Option<AuthMethod>,
    /// How the decision reached Writ.
    pub channel: Channel,
    /// The user the decision is for; must be the request's subject.
    pub subject: String,
}

/// Where a request stands, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentState {
    /// Waiting for the user.
    Pending,
    /// Decided (approved or denied).
    Decided(Decision),
    /// Approved and redeemed for `token`.
    Redeemed {
        /// The approval.
        decision: Decision,
        /// When it was redeemed.
        at: UnixMillis,
        /// The single-use token it was redeemed for.
        token: TokenId,
    },
    /// Neither decided nor redeemed in time.
    Expired {
        /// The request's expiry.
        at: UnixMillis,
    },
}

/// Where a request stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsentStatus {
    /// Waiting for the user.
    Pending,
    /// Approved, not yet redeemed.
    Approved,
    /// Denied.
    Denied,
    /// Approved and redeemed.
    Redeemed,
    /// Past its expiry before it was decided or redeemed.
    Expired,
}

impl ConsentStatus {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Pending => "pending",
            ConsentStatus::Approved => "approved",
            ConsentStatus::Denied => "denied",
            ConsentStatus::Redeemed => "redeemed",
            ConsentStatus::Expired => "expired",
        }
    }

    /// Nothing more can happen to it (an approved or pending request may still expire).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ConsentStatus::Denied | ConsentStatus::Redeemed | ConsentStatus::Expired
        )
    }
}

/// A party as the consent page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyView {
    /// Its identity.
    pub id: String,
    /// The registry's name for people, if it has one.
    pub display_name: Option<String>,
    /// User, agent or workload.
    pub kind: ActorKind,
    /// Confidential or public client.
    pub client_type: ClientType,
}

impl PartyView {
    /// The name people read: the display name, else the id.
    pub fn name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.id)
    }
}

/// One request for the user's consent to one action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRequest {
    /// Public id.
    pub id: ConsentId,
    /// The transaction of the requester's token.
    pub txn: TxnId,
    /// The requester's token: the redeemed token is its child.
    pub token: TokenId,
    /// The token's holder, who asked and alone may redeem.
    pub requester: Actor,
    /// The user the transaction acts for; only a decision for this subject counts.
    pub subject: String,
    /// What exactly.
    pub action: ConsentAction,
    /// The policy's description of the action's scope when the request was made.
    pub scope_description: String,
    /// The party that will check the redeemed token (its audience).
    pub resource: Party,
    /// Who asks: the token's actors, first to last, then its holder (the requester).
    pub chain: Vec<PartyView>,
    /// The resource as the page shows it.
    pub resource_view: PartyView,
    /// The transaction's purpose at the requester's hop.
    pub purpose: String,
    /// Why, in the requester's words (at most [`MAX_DETAIL_BYTES`]).
    pub reason: String,
    /// When it was made.
    pub created_at: UnixMillis,
    /// After this it can be neither decided nor redeemed.
    pub expires_at: UnixMillis,
    /// Identical requests (same token, action and resource) share it: see [`action_key`].
    pub key: [u8; 32],
    /// The blake3 hash of the link's secret; the link itself is never stored.
    pub link_hash: [u8; 32],
    /// Where it stands.
    pub state: ConsentState,
}

/// Why a consent operation is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// The action's attributes cannot be approved as given.
    #[error("action.attributes: {0}")]
    Attributes(String),
    /// The user has not decided yet.
    #[error("consent request {0} is still waiting for the user's decision")]
    Pending(ConsentId),
    /// The user denied it.
    #[error("consent request {0} was denied")]
    Denied(ConsentId),
    /// Past its expiry.
    #[error("consent request {0} has expired")]
    Expired(ConsentId),
    /// Redeemed already: a consent is used once.
    #[error("consent request {0} has already been redeemed")]
    Redeemed(ConsentId),
    /// Decided already: a decision is final.
    #[error("consent request {0} has already been decided")]
    Decided(ConsentId),
    /// A decision for another user than the request's subject.
    #[error("the decision is not for the subject of consent request {0}")]
    WrongSubject(ConsentId),
    /// Redeemed by another party than the requester.
    #[error("consent request {0} was made by another party")]
    WrongParty(ConsentId),
    /// Redeemed with another token than the one the request was made with.
    #[error("consent request {0} was made with another token")]
    WrongToken(ConsentId),
}

impl ConsentRequest {
    /// Where the request stands at `now`: pending or approved past its expiry is expired.
    pub fn status(&self, now: UnixMillis) -> ConsentStatus {
        let expired = now >= self.expires_at;
        match &self.state {
            ConsentState::Pending if expired => ConsentStatus::Expired,
            ConsentState::Pending => ConsentStatus::Pending,
            ConsentState::Decided(d) if !d.approved => ConsentStatus::Denied,
            ConsentState::Decided(_) if expired => ConsentStatus::Expired,
            ConsentState::Decided(_) => ConsentStatus::Approved,
            ConsentState::Redeemed { .. } => ConsentStatus::Redeemed,
            ConsentState::Expired { .. } => ConsentStatus::Expired,
        }
    }

    /// The decision, if there is one.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.state {
            ConsentState::Decided(d) | ConsentState::Redeemed { decision: d, .. } => Some(d),
            ConsentState::Pending | ConsentState::Expired { .. } => None,
        }
    }

    /// Records the user's decision: only while pending and unexpired, and only for the
    /// request's subject.
    pub fn decide(&mut self, decision: Decision) -> Result<(), ConsentError> {
        match self.status(decision.at) {
            ConsentStatus::Pending => {}
            ConsentStatus::Expired => return Err(ConsentError::Expired(self.id)),
            _ => return Err(ConsentError::Decided(self.id)),
        }
        if decision.subject != self.subject {
            return Err(ConsentError::WrongSubject(self.id));
        }
        self.state = ConsentState::Decided(decision);
        Ok(())
    }

    /// May `by`, presenting token `token`, redeem the request at `now`? Only the
    /// requester, with the token it asked with, once, approved and unexpired.
    pub fn check_redeem(
        &self,
        by: &str,
        token: TokenId,
        now: UnixMillis,
    ) -> Result<(), ConsentError> {
        if by != self.requester.id {
            return Err(ConsentError::WrongParty(self.id));
        }
        if token != self.token {
            return Err(ConsentError::WrongToken(self.id));
        }
        match self.status(now) {
            ConsentStatus::Approved => Ok(()),
            ConsentStatus::Pending => Err(ConsentError::Pending(self.id)),
            ConsentStatus::Denied => Err(ConsentError::Denied(self.id)),
            ConsentStatus::Redeemed => Err(ConsentError::Redeemed(self.id)),
            ConsentStatus::Expired => Err(ConsentError::Expired(self.id)),
        }
    }

    /// Marks the request redeemed for `token` at `at` (after [`check_redeem`](Self::check_redeem)).
    pub fn redeem(
        &mut self,
        by: &str,
        token: TokenId,
        child: TokenId,
        at: UnixMillis,
    ) -> Result<(), ConsentError> {
        self.check_redeem(by, token, at)?;
        let Some(decision) = self.decision().cloned() else {
            return Err(ConsentError::Pending(self.id));
        };
        self.state = ConsentState::Redeemed {
            decision,
            at,
            token: child,
        };
        Ok(())
    }

    /// Is it open at `now`: may it still be decided or redeemed? An open request is
    /// answered again for an identical one, and names itself in `CONSENT_REQUIRED`.
    pub fn is_open(&self, now: UnixMillis) -> bool {
        !self.status(now).is_final()
    }

    /// Can its stored state still change, whatever the time: pending (to be decided or
    /// marked expired) or approved and not redeemed (to be redeemed or marked expired)?
    pub fn can_change(&self) -> bool {
        matches!(
            self.state,
            ConsentState::Pending | ConsentState::Decided(Decision { approved: true, .. })
        )
    }

    /// Marks a request that expired undecided or unredeemed as expired (for the trail);
    /// `true` if it changed.
    pub fn expire(&mut self, now: UnixMillis) -> bool {
        let stale = self.can_change() && now >= self.expires_at;
        if stale {
            self.state = ConsentState::Expired {
                at: self.expires_at,
            };
        }
        stale
    }

    /// The child the approval is redeemed for: audience the resource, reaching no one
    /// further, the one scope, an exact claim per attribute, one use, action checks only,
    /// living `ttl_secs` (never past its parent: the narrowing rules cap it).
    pub fn child_request(&self, ttl_secs: u64) -> ChildRequest {
        ChildRequest {
            audience: self.resource.clone(),
            targets: BTreeSet::new(),
            scopes: [self.action.scope.clone()].into(),
            claims: self.action.claims(),
            ttl_secs: Some(ttl_secs),
            purpose: None,
            max_uses: Some(1),
            require_action_check: true,
            drop_rctx: BTreeSet::new(),
        }
    }

    /// The mark the redeemed token carries.
    pub fn mark(&self) -> ConsentMark {
        ConsentMark {
            request: self.id,
            scope: self.action.scope.clone(),
        }
    }

    /// The request in one sentence: what, with which values, requested by whom on whose
    /// behalf, for whom.
    pub fn describe(&self) -> String {
        let what = if self.scope_description.is_empty() {
            self.action.scope.clone()
        } else {
            format!("{} ({})", self.scope_description, self.action.scope)
        };
        let values = self.action.attribute_lines();
        let with = if values.is_empty() {
            String::new()
        } else {
            format!(" with {}", values.join(", "))
        };
        let mut chain = self.chain.iter().rev().map(PartyView::name);
        let by = chain.next().unwrap_or("?");
        let behalf: Vec<&str> = chain.collect();
        let behalf = if behalf.is_empty() {
            String::new()
        } else {
            format!(" on behalf of {}", behalf.join(", "))
        };
        truncate(
            format!(
                "{what}{with}, at {}, requested by {by}{behalf}, for {}",
                self.resource_view.name(),
                self.subject
            ),
            4 * MAX_DETAIL_BYTES,
        )
    }
}

/// Identical requests share this key: the same token, action and resource (the reason is
/// not part of it: a second request while one is pending gets that one).
pub fn action_key(token: TokenId, action: &ConsentAction, resource: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("writ consent action key v1");
    h.update(&token.0);
    let body = postcard::to_allocvec(&(action, resource)).unwrap_or_default();
    h.update(&(body.len() as u64).to_be_bytes());
    h.update(&body);
    *h.finalize().as_bytes()
}

/// Validate's consent rule, after the grant allowed the action: a high-privilege scope is
/// latent unless the token was redeemed from a consent to exactly that scope (its claims
/// pin the attributes). `Err` is the `CONSENT_REQUIRED` denial.
pub fn exercisable(record: &TokenRecord, scope: &str, high_privilege: bool) -> Result<(), Denial> {
    if !high_privilege || record.consent.as_ref().is_some_and(|m| m.scope == scope) {
        return Ok(());
    }
    Err(Denial {
        denied_by: CONSENT_DENIED_BY.to_owned(),
        reason: format!(
            "{CONSENT_REQUIRED}: scope {} is high-privilege: the user must approve this action first (RequestConsent)",
            Shown(scope)
        ),
    })
}

/// The `denied_by` of a [`exercisable`] denial.
pub const CONSENT_DENIED_BY: &str = "consent";
/// The reason code a [`exercisable`] denial starts with.
pub const CONSENT_REQUIRED: &str = "CONSENT_REQUIRED";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn party(id: &str, kind: ActorKind) -> PartyView {
        PartyView {
            id: id.into(),
            display_name: None,
            kind,
            client_type: ClientType::Confidential,
        }
    }

    fn request(now: u64) -> ConsentRequest {
        let action = ConsentAction {
            scope: "payments.charge".into(),
            attributes: [
                ("amount".to_owned(), Value::Int(45000)),
                ("currency".to_owned(), Value::Str("EUR".into())),
            ]
            .into(),
        };
        ConsentRequest {
            id: ConsentId::new(UnixMillis(now), [7; 8]),
            txn: TxnId([1; 16]),
            token: TokenId([2; 16]),
            requester: Actor {
                id: "spiffe://td/agent/booking".into(),
                auth: AuthMethod::Mtls,
            },
            subject: "alice".into(),
            key: action_key(TokenId([2; 16]), &action, "spiffe://td/svc/pay"),
            action,
            scope_description: "charge your card".into(),
            resource: Party {
                id: "spiffe://td/svc/pay".into(),
                kind: ActorKind::Workload,
                client_type: ClientType::Confidential,
            },
            chain: vec![
                party("spiffe://td/gw", ActorKind::Workload),
                PartyView {
                    display_name: Some("planner".into()),
                    ..party("spiffe://td/agent/planner", ActorKind::Agent)
                },
                PartyView {
                    display_name: Some("booking-agent".into()),
                    ..party("spiffe://td/agent/booking", ActorKind::Agent)
                },
            ],
            resource_view: PartyView {
                display_name: Some("payments".into()),
                ..party("spiffe://td/svc/pay", ActorKind::Workload)
            },
            purpose: "Lisbon trip".into(),
            reason: "book the flight".into(),
            created_at: UnixMillis(now),
            expires_at: UnixMillis(now + 300_000),
            link_hash: [0; 32],
            state: ConsentState::Pending,
        }
    }

    fn decision(approved: bool, at: u64, subject: &str) -> Decision {
        Decision {
            approved,
            at: UnixMillis(at),
            by: "app".into(),
            auth: Some(AuthMethod::Mtls),
            channel: Channel::BackChannel,
            subject: subject.into(),
        }
    }

    #[test]
    fn ids_order_by_time_and_round_trip() {
        let a = ConsentId::new(UnixMillis(1000), [0xff; 8]);
        let b = ConsentId::new(UnixMillis(1001), [0; 8]);
        assert!(a < b);
        assert_eq!(a.created_at(), UnixMillis(1000));
        assert_eq!(a.to_string().parse::<ConsentId>(), Ok(a));
        for bad in [
            "",
            "cns_",
            "cns_00",
            "CNS_00000000000000000000000000000000",
            "cns_0000000000000000000000000000000G",
        ] {
            assert!(bad.parse::<ConsentId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_decision_counts_only_for_the_subject_while_pending() {
        let mut r = request(1000);
        assert_eq!(
            r.decide(decision(true, 2000, "mallory")),
            Err(ConsentError::WrongSubject(r.id))
        );
        assert_eq!(r.status(UnixMillis(2000)), ConsentStatus::Pending);
        r.decide(decision(true, 2000, "alice")).unwrap();
        assert_eq!(r.status(UnixMillis(2000)), ConsentStatus::Approved);
        assert_eq!(
            r.decide(decision(false, 2001, "alice")),
            Err(ConsentError::Decided(r.id))
        );
        assert_eq!(r.status(UnixMillis(1000 + 300_000)), ConsentStatus::Expired);
        let mut late = request(1000);
        assert_eq!(
            late.decide(decision(true, 301_000, "alice")),
            Err(ConsentError::Expired(late.id))
        );
    }

    #[test]
    fn only_the_requester_redeems_with_its_token_once() {
        let mut r = request(1000);
        let (by, tok) = (r.requester.id.clone(), r.token);
        assert_eq!(
            r.check_redeem(&by, tok, UnixMillis(1500)),
            Err(ConsentError::Pending(r.id))
        );
        r.decide(decision(true, 2000, "alice")).unwrap();
        assert_eq!(
            r.check_redeem("spiffe://td/agent/other", tok, UnixMillis(2500)),
            Err(ConsentError::WrongParty(r.id))
        );
        assert_eq!(
            r.check_redeem(&by, TokenId([9; 16]), UnixMillis(2500)),
            Err(ConsentError::WrongToken(r.id))
        );
        assert_eq!(
            r.check_redeem(&by, tok, UnixMillis(301_000)),
            Err(ConsentError::Expired(r.id))
        );
        r.redeem(&by, tok, TokenId([3; 16]), UnixMillis(2500))
            .unwrap();
        assert_eq!(r.status(UnixMillis(2600)), ConsentStatus::Redeemed);
        assert_eq!(
            r.redeem(&by, tok, TokenId([4; 16]), UnixMillis(2600)),
            Err(ConsentError::Redeemed(r.id))
        );
        let mut denied = request(1000);
        denied.decide(decision(false, 2000, "alice")).unwrap();
        assert_eq!(
            denied.check_redeem(&by, tok, UnixMillis(2500)),
            Err(ConsentError::Denied(denied.id))
        );
        assert!(
            !denied.expire(UnixMillis(400_000)),
            "a denial stays a denial"
        );
    }

    #[test]
    fn expiry_is_recorded_once_for_pending_and_unredeemed_requests() {
        let mut r = request(1000);
        assert!(r.is_open(UnixMillis(2000)) && r.can_change());
        assert!(
            !r.is_open(UnixMillis(301_000)) && r.can_change(),
            "stale, not yet marked"
        );
        assert!(!r.expire(UnixMillis(2000)));
        assert!(r.expire(UnixMillis(301_000)));
        assert!(!r.expire(UnixMillis(302_000)));
        assert_eq!(r.status(UnixMillis(302_000)), ConsentStatus::Expired);
        assert!(!r.can_change());
    }

    #[test]
    fn the_child_is_exactly_the_action_once() {
        let r = request(1000);
        let c = r.child_request(60);
        assert_eq!(c.audience, r.resource);
        assert!(c.targets.is_empty());
        assert_eq!(c.scopes, ["payments.charge".to_owned()].into());
        assert_eq!(c.max_uses, Some(1));
        assert!(c.require_action_check);
        assert_eq!(c.claims.len(), 2);
        assert_eq!(
            c.claims["amount"].constraint,
            Constraint::Exact(Value::Int(45000))
        );
        assert_eq!(c.claims["amount"].applies_to, None);
    }

    #[test]
    fn lists_are_not_approvable_and_keys_name_the_action() {
        let e = ConsentAction::from_attributes(
            "s".into(),
            [("a".to_owned(), vec![Value::Int(1), Value::Int(2)])].into(),
        );
        assert!(matches!(e, Err(ConsentError::Attributes(_))));
        let a = ConsentAction::from_attributes(
            "s".into(),
            [("a".to_owned(), vec![Value::Int(1)])].into(),
        )
        .unwrap();
        let b = ConsentAction::from_attributes(
            "s".into(),
            [("a".to_owned(), vec![Value::Int(2)])].into(),
        )
        .unwrap();
        let t = TokenId([1; 16]);
        assert_eq!(action_key(t, &a, "r"), action_key(t, &a.clone(), "r"));
        assert_ne!(action_key(t, &a, "r"), action_key(t, &b, "r"));
        assert_ne!(action_key(t, &a, "r"), action_key(t, &a, "q"));
        assert_ne!(
            action_key(t, &a, "r"),
            action_key(TokenId([2; 16]), &a, "r")
        );
    }

    #[test]
    fn the_description_says_what_for_whom_by_whom() {
        let d = request(1000).describe();
        assert_eq!(
            d,
            "charge your card (payments.charge) with amount = 45000, currency = \"EUR\", at payments, requested by booking-agent on behalf of planner, spiffe://td/gw, for alice"
        );
    }
}
