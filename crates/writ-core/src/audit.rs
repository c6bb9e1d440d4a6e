//! The audit trail's vocabulary: one [`Event`] per thing that happened in a transaction
//! (minted, downscoped, validated, refused, revoked), self-contained so it stays readable
//! after the tokens it names are purged, and ordered by an [`EventId`] that is also its
//! timestamp. Pure values: the store appends them, the server decides when.
//!
//! Under a flood, the events that change nothing (refused, validated) are stored one by
//! one only up to a per-caller budget per window; beyond it they are counted, and each
//! window's count is stored as one [`EventKind::Aggregated`] event ("N refusals by X in
//! this window"), so a flood costs the trail one event per caller and window.
//!
//! Every event is bounded ([`MAX_EVENT_BYTES`](crate::limits::MAX_EVENT_BYTES) encoded):
//! the constructors cut lists to [`MAX_EVENT_LIST_BYTES`] and details to
//! [`MAX_DETAIL_BYTES`], so a request that costs a caller a hundred bytes can never make
//! the server store and stream kilobytes.

pub use crate::consent::ConsentId;
use crate::consent::{ConsentRequest, ConsentState};
use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::lifecycle::narrowed;
use crate::limits::{MAX_DETAIL_BYTES, MAX_ID_LEN};
use crate::model::{Actor, AuthMethod, TokenRecord};
use crate::text::truncate;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Orders and dates an event: microseconds since the Unix epoch, made strictly increasing
/// by the issuer (see the server's event clock), so sorting by id is sorting by time and
/// ids never collide within one issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub u64);

impl EventId {
    /// When the event happened, in milliseconds.
    pub fn at(self) -> UnixMillis {
        UnixMillis(self.0 / 1000)
    }

    /// The first id at or after `at`.
    pub fn first_at(at: UnixMillis) -> EventId {
        EventId(at.0.saturating_mul(1000))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "evt_{:016x}", self.0)
    }
}

/// Error for a string that is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid event id: expected `evt_` followed by 16 lowercase hex digits")]
pub struct EventIdParseError;

impl FromStr for EventId {
    type Err = EventIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("evt_").ok_or(EventIdParseError)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(EventIdParseError);
        }
        u64::from_str_radix(hex, 16)
            .map(EventId)
            .map_err(|_| EventIdParseError)
    }
}

/// One thing that happened in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Order and time.
    pub id: EventId,
    /// The transaction.
    pub txn: TxnId,
    /// The user the transaction acts for, so the event reads on its own.
    pub subject: String,
    /// The token the event is about: the new token (minted, downscoped), the presented
    /// one (validated), the parent (refused), or the one revoked (`None`: the whole
    /// transaction, or several subtrees of it at once, as a disabled party's revocation
    /// may be).
    pub token: Option<TokenId>,
    /// Who did it: the minter, the deriving holder, the validating service, the revoker.
    pub actor: String,
    /// What happened.
    pub kind: EventKind,
    /// How `actor` proved its identity (`asserted` in development mode); `None` in events
    /// stored before identities were recorded.
    pub auth: Option<AuthMethod>,
}

/// What happened, with what an investigator needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A transaction began.
    Minted {
        /// The first hop's audience.
        audience: String,
        /// The scopes granted.
        scopes: Vec<String>,
        /// When the token expires.
        expires_at: UnixMillis,
    },
    /// A hop derived a narrower child.
    Downscoped {
        /// The token it was derived from.
        parent: TokenId,
        /// The next hop.
        audience: String,
        /// The scopes the child keeps.
        scopes: Vec<String>,
        /// What narrowed relative to the parent, one line per change.
        narrowed: Vec<String>,
    },
    /// A service introspected a token (optionally checking an action).
    Validated {
        /// The scope of the action checked, if one was.
        action: Option<String>,
        /// `active` (no action asked), `allowed`, `denied` or `inactive`.
        result: String,
        /// Why denied or inactive; empty otherwise.
        detail: String,
    },
    /// A Downscope was refused.
    Refused {
        /// The dimension refused: a narrowing dimension (`scopes`, `claims`, ...) or a
        /// limit (`fan_out`, `txn_size`, `uses`, `revoked`).
        dimension: String,
        /// The refusal's message.
        detail: String,
    },
    /// A token and its subtree, or the whole transaction, was revoked.
    Revoked {
        /// Why, as the revoker said.
        reason: String,
        /// How many tokens this revocation made inactive (already-revoked ones excluded).
        revoked: u32,
    },
    /// Refused or validated events by one caller that were counted rather than stored one
    /// by one, because the caller exceeded its budget of such events in a window ("N
    /// refusals by X in this window"). Stored under the transaction of the first event
    /// counted (a sample: the count spans every transaction the caller touched in the
    /// window). Appended last: postcard encodes the variant's index, so events stored
    /// before it existed still read.
    Aggregated {
        /// What was counted: `refused` or `validated` (see [`Counted`]).
        kind: String,
        /// How many such events were counted and not stored.
        count: u32,
        /// The window's start (inclusive).
        window_start: UnixMillis,
        /// The window's end (exclusive).
        window_end: UnixMillis,
    },
    /// A token's holder asked the user's consent to one high-privilege action (the
    /// event's token is the requester's). Consent events are appended after `Aggregated`
    /// for the same reason.
    ConsentRequested {
        /// The request.
        request: ConsentId,
        /// The action's scope.
        scope: String,
        /// The action's attributes, `name = value`.
        attributes: Vec<String>,
        /// The party that will check the redeemed token.
        resource: String,
        /// Why, in the requester's words.
        reason: String,
        /// Until when it can be decided and redeemed.
        expires_at: UnixMillis,
    },
    /// The user approved (the actor conveyed it: an app, an operator, or the page).
    ConsentApproved {
        /// The request.
        request: ConsentId,
        /// How the decision reached Writ (`page_link`, `page_signed_in`, `back_channel`,
        /// `operator`).
        channel: String,
    },
    /// The user denied.
    ConsentDenied {
        /// The request.
        request: ConsentId,
        /// How the decision reached Writ.
        channel: String,
    },
    /// The requester redeemed an approval for a single-use token (the event's token).
    ConsentRedeemed {
        /// The request.
        request: ConsentId,
        /// The requester's token, the new token's parent.
        parent: TokenId,
        /// The new token's audience (the resource).
        audience: String,
        /// The new token's scope.
        scopes: Vec<String>,
    },
    /// A request expired before it was decided, or approved and never redeemed.
    ConsentExpired {
        /// The request.
        request: ConsentId,
        /// `pending` or `approved`: where it stood.
        was: String,
    },
}

/// The events that may be counted instead of stored under a flood: those that change
/// nothing. Minted, downscoped and revoked events, and a validation that spent a use, are
/// always stored one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counted {
    /// Refused Downscopes.
    Refused,
    /// Validations that spent nothing.
    Validated,
}

impl Counted {
    /// Stable lower-case name: the [`EventKind::name`] of the events counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Counted::Refused => "refused",
            Counted::Validated => "validated",
        }
    }
}

/// The actor of an [`EventKind::Aggregated`] event that counts the callers beyond the
/// most the server tracks one by one (not a valid party id).
pub const OTHER_CALLERS: &str = "*";

impl EventKind {
    /// Stable lower-case name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Minted { .. } => "minted",
            EventKind::Downscoped { .. } => "downscoped",
            EventKind::Validated { .. } => "validated",
            EventKind::Refused { .. } => "refused",
            EventKind::Revoked { .. } => "revoked",
            EventKind::Aggregated { .. } => "aggregated",
            EventKind::ConsentRequested { .. } => "consent_requested",
            EventKind::ConsentApproved { .. } => "consent_approved",
            EventKind::ConsentDenied { .. } => "consent_denied",
            EventKind::ConsentRedeemed { .. } => "consent_redeemed",
            EventKind::ConsentExpired { .. } => "consent_expired",
        }
    }
}

/// Most bytes of one list (scopes, narrowed lines) an event keeps.
pub const MAX_EVENT_LIST_BYTES: usize = 4096;

/// The first items of `items` that fit in [`MAX_EVENT_LIST_BYTES`], and a last item
/// `… (+N more)` saying how many did not.
fn bounded_list(items: impl ExactSizeIterator<Item = String>) -> Vec<String> {
    let total = items.len();
    let mut used = 0;
    let mut out = Vec::new();
    for item in items {
        if used + item.len() > MAX_EVENT_LIST_BYTES {
            out.push(format!("… (+{} more)", total - out.len()));
            break;
        }
        used += item.len();
        out.push(item);
    }
    out
}

/// A detail as events keep it: at most [`MAX_DETAIL_BYTES`].
pub fn bounded_detail(detail: String) -> String {
    truncate(detail, MAX_DETAIL_BYTES)
}

impl Event {
    /// The event of a newly minted root token.
    pub fn minted(id: EventId, root: &TokenRecord) -> Event {
        Event {
            id,
            txn: root.txn,
            subject: root.subject.clone(),
            token: Some(root.token_id),
            actor: root.current_actor().id.clone(),
            kind: EventKind::Minted {
                audience: root.audience.id.clone(),
                scopes: bounded_list(root.grant.scopes.iter().cloned()),
                expires_at: root.grant.expires_at,
            },
            auth: root.actor_auth,
        }
    }

    /// The event of `child`, derived from `parent`.
    pub fn downscoped(id: EventId, parent: &TokenRecord, child: &TokenRecord) -> Event {
        Event {
            id,
            txn: child.txn,
            subject: child.subject.clone(),
            token: Some(child.token_id),
            actor: child.current_actor().id.clone(),
            kind: EventKind::Downscoped {
                // Every child has a parent; the fallback never shows.
                parent: child.parent.unwrap_or(child.token_id),
                audience: child.audience.id.clone(),
                scopes: bounded_list(child.grant.scopes.iter().cloned()),
                narrowed: bounded_list(narrowed(parent, child).into_iter()),
            },
            auth: child.actor_auth,
        }
    }

    /// The event of a validation of `record` by `service`.
    pub fn validated(
        id: EventId,
        record: &TokenRecord,
        service: &Actor,
        action: Option<String>,
        result: &str,
        detail: String,
    ) -> Event {
        Event {
            id,
            txn: record.txn,
            subject: record.subject.clone(),
            token: Some(record.token_id),
            actor: service.id.clone(),
            kind: EventKind::Validated {
                action,
                result: result.to_owned(),
                detail: bounded_detail(detail),
            },
            auth: Some(service.auth),
        }
    }

    /// The event of a revocation by `by` of `token` and its subtree (`None`: the whole
    /// transaction, or several subtrees) in the transaction of `any` (any of its tokens),
    /// which made `count` tokens inactive.
    pub fn revoked(
        id: EventId,
        any: &TokenRecord,
        token: Option<TokenId>,
        by: &Actor,
        reason: &str,
        count: usize,
    ) -> Event {
        Event {
            id,
            txn: any.txn,
            subject: any.subject.clone(),
            token,
            actor: by.id.clone(),
            kind: EventKind::Revoked {
                reason: bounded_detail(reason.to_owned()),
                revoked: u32::try_from(count).unwrap_or(u32::MAX),
            },
            auth: Some(by.auth),
        }
    }

    /// The event of a refused Downscope of `parent` by `actor`.
    pub fn refused(
        id: EventId,
        parent: &TokenRecord,
        actor: &Actor,
        dimension: &str,
        detail: String,
    ) -> Event {
        Event {
            id,
            txn: parent.txn,
            subject: parent.subject.clone(),
            token: Some(parent.token_id),
            actor: actor.id.clone(),
            kind: EventKind::Refused {
                dimension: dimension.to_owned(),
                detail: bounded_detail(detail),
            },
            auth: Some(actor.auth),
        }
    }

    /// The event of `count` `counted` events by `caller` (`None`: the callers beyond the
    /// most tracked one by one, shown as [`OTHER_CALLERS`]) in `[window_start,
    /// window_end)`, stored under `sample_txn`, the transaction of the first one counted.
    /// Its subject is empty and it names no token: the count spans every transaction the
    /// caller touched in the window. Bounded like every event: the actor is cut to
    /// [`MAX_ID_LEN`] bytes.
    pub fn aggregated(
        id: EventId,
        sample_txn: TxnId,
        caller: Option<&Actor>,
        counted: Counted,
        count: u32,
        window_start: UnixMillis,
        window_end: UnixMillis,
    ) -> Event {
        Event {
            id,
            txn: sample_txn,
            subject: String::new(),
            token: None,
            actor: caller.map_or_else(
                || OTHER_CALLERS.to_owned(),
                |c| truncate(c.id.clone(), MAX_ID_LEN),
            ),
            kind: EventKind::Aggregated {
                kind: counted.as_str().to_owned(),
                count,
                window_start,
                window_end: window_end.max(window_start),
            },
            auth: caller.map(|c| c.auth),
        }
    }
}

impl Event {
    fn of_consent(
        id: EventId,
        r: &ConsentRequest,
        token: TokenId,
        actor: &Actor,
        kind: EventKind,
    ) -> Event {
        Event {
            id,
            txn: r.txn,
            subject: r.subject.clone(),
            token: Some(token),
            actor: actor.id.clone(),
            kind,
            auth: Some(actor.auth),
        }
    }

    /// The event of a new consent request.
    pub fn consent_requested(id: EventId, r: &ConsentRequest) -> Event {
        let kind = EventKind::ConsentRequested {
            request: r.id,
            scope: r.action.scope.clone(),
            attributes: bounded_list(r.action.attribute_lines().into_iter()),
            resource: r.resource.id.clone(),
            reason: bounded_detail(r.reason.clone()),
            expires_at: r.expires_at,
        };
        Event::of_consent(id, r, r.token, &r.requester, kind)
    }

    /// The event of a decision on `r` conveyed by `by` (`approved` or not, through
    /// `channel`).
    pub fn consent_decided(
        id: EventId,
        r: &ConsentRequest,
        by: &Actor,
        approved: bool,
        channel: &str,
    ) -> Event {
        let (request, channel) = (r.id, channel.to_owned());
        let kind = if approved {
            EventKind::ConsentApproved { request, channel }
        } else {
            EventKind::ConsentDenied { request, channel }
        };
        Event::of_consent(id, r, r.token, by, kind)
    }

    /// The event of `r` redeemed for `child`.
    pub fn consent_redeemed(id: EventId, r: &ConsentRequest, child: &TokenRecord) -> Event {
        let kind = EventKind::ConsentRedeemed {
            request: r.id,
            parent: r.token,
            audience: child.audience.id.clone(),
            scopes: bounded_list(child.grant.scopes.iter().cloned()),
        };
        let mut e = Event::of_consent(id, r, child.token_id, &r.requester, kind);
        e.auth = child.actor_auth;
        e
    }

    /// The event of `r` expiring, recorded by the server (`by`): built before
    /// [`ConsentRequest::expire`] changes its state, which says where it stood.
    pub fn consent_expired(id: EventId, r: &ConsentRequest, by: &Actor) -> Event {
        let was = match r.state {
            ConsentState::Pending => "pending",
            _ => "approved",
        };
        let kind = EventKind::ConsentExpired {
            request: r.id,
            was: was.to_owned(),
        };
        Event::of_consent(id, r, r.token, by, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_by_time_and_round_trip() {
        let a = EventId::first_at(UnixMillis(1_700_000_000_000));
        let b = EventId(a.0 + 1);
        assert!(a < b);
        assert_eq!(a.at(), UnixMillis(1_700_000_000_000));
        assert_eq!(b.at(), a.at());
        assert_eq!(b.to_string().parse::<EventId>(), Ok(b));
        for bad in [
            "",
            "evt_",
            "evt_123",
            "evt_000000000000000G",
            "EVT_0000000000000001",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
        assert!("evt_00000000000000AB".parse::<EventId>().is_err());
    }

    /// A record of alice's transaction for `planner`, minted by `gw`.
    fn record() -> TokenRecord {
        use crate::model::{ActorKind, ClientType, Party};
        use crate::narrow::{MintRequest, NewToken, Policy};
        use crate::token::{KeyRing, ServerKey};
        let ring = KeyRing::new(vec![ServerKey {
            id: 1,
            key: [7; 32],
        }])
        .expect("one key");
        let (_, token) = ring.issue([3; 32]);
        let now = UnixMillis(1_700_000_000_000);
        let party = |id: &str| Party {
            id: id.into(),
            kind: ActorKind::Agent,
            client_type: ClientType::Confidential,
        };
        let req = MintRequest {
            subject: "alice".into(),
            audience: party("planner"),
            targets: ["booking".to_string()].into(),
            scopes: ["trips:book".to_string()].into(),
            claims: Default::default(),
            purpose: String::new(),
            tctx: Default::default(),
            rctx: Default::default(),
            ttl_secs: None,
            max_uses: None,
            require_action_check: false,
        };
        let new = NewToken {
            token,
            txn: TxnId::new(now, [1; 10]),
            now,
            idempotency: None,
            auth: AuthMethod::Bearer,
        };
        crate::narrow::mint(req, party("gw"), "example.org", &Policy::default(), new)
            .expect("a valid mint")
    }

    fn encoded_len(e: &Event) -> usize {
        postcard::to_allocvec(e).expect("encodes").len()
    }

    /// Issue 10: whatever a caller makes the server say (a refusal's or a denial's
    /// message, a revoker's reason), the stored event keeps at most MAX_DETAIL_BYTES of it.
    #[test]
    fn huge_refusal_denial_and_revocation_reasons_are_cut() {
        let r = record();
        let planner = Actor {
            id: "planner".into(),
            auth: AuthMethod::Mtls,
        };
        // Multi-byte characters, so the cut must also land on a character boundary.
        let huge = "é".repeat(100_000);
        let refused = Event::refused(EventId(1), &r, &planner, "claims", huge.clone());
        let validated = Event::validated(
            EventId(2),
            &r,
            &planner,
            Some("trips:book".into()),
            "denied",
            huge.clone(),
        );
        let revoked = Event::revoked(EventId(3), &r, None, &planner, &huge, 1);
        for (e, text) in [
            (
                &refused,
                match &refused.kind {
                    EventKind::Refused { detail, .. } => detail,
                    other => panic!("{other:?}"),
                },
            ),
            (
                &validated,
                match &validated.kind {
                    EventKind::Validated { detail, .. } => detail,
                    other => panic!("{other:?}"),
                },
            ),
            (
                &revoked,
                match &revoked.kind {
                    EventKind::Revoked { reason, .. } => reason,
                    other => panic!("{other:?}"),
                },
            ),
        ] {
            assert!(text.len() <= MAX_DETAIL_BYTES, "{} bytes", text.len());
            assert!(text.len() > MAX_DETAIL_BYTES / 2, "cut, not emptied");
            assert!(text.ends_with('…'), "the cut is marked");
            assert!(encoded_len(e) <= crate::limits::MAX_EVENT_BYTES);
        }
    }

    #[test]
    fn aggregated_events_are_bounded_and_read_on_their_own() {
        let txn = TxnId::new(UnixMillis(1_000), [2; 10]);
        let x = Actor {
            id: format!("spiffe://example.org/{}", "a".repeat(10_000)),
            auth: AuthMethod::Mtls,
        };
        let e = Event::aggregated(
            EventId(9),
            txn,
            Some(&x),
            Counted::Refused,
            1234,
            UnixMillis(60_000),
            UnixMillis(70_000),
        );
        assert_eq!(e.kind.name(), "aggregated");
        assert_eq!(e.txn, txn);
        assert_eq!((e.subject.as_str(), e.token), ("", None));
        assert!(e.actor.len() <= MAX_ID_LEN);
        assert_eq!(e.auth, Some(AuthMethod::Mtls));
        assert_eq!(
            e.kind,
            EventKind::Aggregated {
                kind: "refused".into(),
                count: 1234,
                window_start: UnixMillis(60_000),
                window_end: UnixMillis(70_000),
            }
        );
        assert!(encoded_len(&e) <= crate::limits::MAX_EVENT_BYTES);
        let back: Event =
            postcard::from_bytes(&postcard::to_allocvec(&e).expect("encodes")).expect("decodes");
        assert_eq!(back, e);
        // The catch-all of the callers beyond the tracked ones.
        let other = Event::aggregated(
            EventId(10),
            txn,
            None,
            Counted::Validated,
            7,
            UnixMillis(5),
            UnixMillis(1),
        );
        assert_eq!(other.actor, OTHER_CALLERS);
        assert_eq!(other.auth, None);
        assert!(matches!(
            other.kind,
            EventKind::Aggregated { ref kind, window_start, window_end, .. }
                if kind == "validated" && window_end >= window_start
        ));
    }

    /// The new variant is appended: events stored before it keep their encoding (postcard
    /// writes the variant's index first), so a store written by an older build still reads.
    #[test]
    fn appending_aggregated_keeps_older_variants_encoding() {
        let r = record();
        let ops = Actor {
            id: "ops".into(),
            auth: AuthMethod::Bearer,
        };
        let revoked = Event::revoked(EventId(1), &r, None, &ops, "leaked", 1);
        let bytes = postcard::to_allocvec(&revoked).expect("encodes");
        // id (varint), txn (16), subject, token (None), actor, then the kind's index.
        let at = 1 + 16 + 1 + "alice".len() + 1 + 1 + "ops".len();
        assert_eq!(bytes[at], 4, "revoked is still variant 4");
        let agg = Event::aggregated(
            EventId(1),
            r.txn,
            Some(&ops),
            Counted::Validated,
            1,
            UnixMillis(0),
            UnixMillis(1),
        );
        let bytes = postcard::to_allocvec(&agg).expect("encodes");
        let at = 1 + 16 + 1 + 1 + 1 + "ops".len();
        assert_eq!(bytes[at], 5, "aggregated is appended as variant 5");
    }
}
