//! The audit trail's vocabulary: one [`Event`] per thing that happened in a transaction
//! (minted, downscoped, validated, refused, revoked), self-contained so it stays readable
//! after the tokens it names are purged, and ordered by an [`EventId`] that is also its
//! timestamp. Pure values: the store appends them, the server decides when.
//!
//! Every event is bounded ([`MAX_EVENT_BYTES`](crate::limits::MAX_EVENT_BYTES) encoded):
//! the constructors cut lists to [`MAX_EVENT_LIST_BYTES`] and details to
//! [`MAX_DETAIL_BYTES`], so a request that costs a caller a hundred bytes can never make
//! the server store and stream kilobytes.

use crate::ids::{TokenId, TxnId, UnixMillis};
use crate::lifecycle::narrowed;
use crate::limits::MAX_DETAIL_BYTES;
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
}

impl EventKind {
    /// Stable lower-case name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Minted { .. } => "minted",
            EventKind::Downscoped { .. } => "downscoped",
            EventKind::Validated { .. } => "validated",
            EventKind::Refused { .. } => "refused",
            EventKind::Revoked { .. } => "revoked",
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
}
