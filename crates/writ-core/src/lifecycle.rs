//! What happens to a token after it is issued: its mutable state (revocation, uses,
//! children) and the status derived from it, and the disablement of a party (the kill
//! switch for a compromised agent). Still pure: the store persists these values and the
//! server decides when to write them.

use crate::audit::bounded_detail;
use crate::ids::{TokenId, UnixMillis};
use crate::model::TokenRecord;
use crate::text::truncate;
use serde::{Deserialize, Serialize};

/// Why and by whom a token was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    pub at: UnixMillis,
    /// Who asked (an operator's identity).
    pub by: String,
    /// Why, as the operator said.
    pub reason: String,
    /// The token the operator revoked: this one, or the ancestor whose revocation reached it.
    pub cause: TokenId,
}

/// Why, when and by whom an operator disabled a party: while it is recorded, the party
/// holds no new token, and disabling it revoked every token it held or had derived. Enabling
/// the party again removes the record and restores nothing that was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyDisable {
    /// When.
    pub at: UnixMillis,
    /// Who disabled it (an operator's identity).
    pub by: String,
    /// Why, as the operator said: at most
    /// [`MAX_DETAIL_BYTES`](crate::limits::MAX_DETAIL_BYTES) (see [`PartyDisable::new`]).
    pub reason: String,
}

impl PartyDisable {
    /// A disablement by `by` at `at`, its reason cut to
    /// [`MAX_DETAIL_BYTES`](crate::limits::MAX_DETAIL_BYTES) as an audit
    /// event's detail is, so a stored disablement is bounded whatever the request carried.
    pub fn new(at: UnixMillis, by: String, reason: String) -> PartyDisable {
        PartyDisable {
            at,
            by,
            reason: bounded_detail(reason),
        }
    }
}

/// The mutable part of a stored token. Only the store changes it, under its per-transaction
/// serialisation, so concurrent Downscope, Validate and Revoke never lose an update.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// Set once, never cleared: a revoked token cannot be un-revoked.
    pub revoked: Option<Revocation>,
    /// Uses consumed by successful action checks.
    pub uses: u32,
    /// Children derived so far.
    pub children: u32,
}

/// A token's status at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked, directly or through an ancestor.
    Revoked,
    /// Every use it carried has been consumed.
    Exhausted,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
            Status::Exhausted => "exhausted",
        }
    }
}

/// Status of `record` in `state` at `now`. Revocation outranks expiry, which outranks
/// exhaustion: the most permanent reason is the one reported.
pub fn status(record: &TokenRecord, state: &TokenState, now: UnixMillis) -> Status {
    if state.revoked.is_some() {
        Status::Revoked
    } else if record.grant.is_expired(now) {
        Status::Expired
    } else if record.grant.max_uses.is_some_and(|m| state.uses >= m) {
        Status::Exhausted
    } else {
        Status::Active
    }
}

/// "`kind` dropped: …" for the parent's items the child does not keep, if any.
fn dropped<'a>(
    kind: &str,
    parent: impl IntoIterator<Item = &'a String>,
    keeps: impl Fn(&str) -> bool,
) -> Option<String> {
    let gone: Vec<&str> = parent
        .into_iter()
        .map(String::as_str)
        .filter(|x| !keeps(x))
        .collect();
    (!gone.is_empty()).then(|| format!("{kind} dropped: {}", gone.join(" ")))
}

/// Longest line [`narrowed`] returns, in bytes.
pub const MAX_NARROWED_LINE: usize = 256;

/// What a child narrowed relative to its parent, one human-readable line per change
/// (each at most [`MAX_NARROWED_LINE`] bytes), for chain views and audit. Empty only when
/// nothing changed.
pub fn narrowed(parent: &TokenRecord, child: &TokenRecord) -> Vec<String> {
    let (pg, cg) = (&parent.grant, &child.grant);
    let mut out = Vec::new();
    out.extend(dropped("scopes", &pg.scopes, |s| cg.scopes.contains(s)));
    out.extend(dropped("targets", &pg.targets, |t| cg.targets.contains(t)));
    for (name, c) in &cg.claims {
        match pg.claims.get(name) {
            None => out.push(format!("claim {name} added: {c}")),
            // Where it applies is shown only when that changed too.
            Some(p) if p.applies_to == c.applies_to && p != c => out.push(format!(
                "claim {name}: {} -> {}",
                p.constraint, c.constraint
            )),
            Some(p) if p != c => out.push(format!("claim {name}: {p} -> {c}")),
            Some(_) => {}
        }
    }
    if cg.expires_at < pg.expires_at {
        out.push(format!(
            "expiry {} s earlier",
            (pg.expires_at.0 - cg.expires_at.0).div_ceil(1000)
        ));
    }
    if cg.max_uses != pg.max_uses {
        let show = |u: Option<u32>| u.map_or("unlimited".to_string(), |u| u.to_string());
        out.push(format!(
            "max_uses {} -> {}",
            show(pg.max_uses),
            show(cg.max_uses)
        ));
    }
    if cg.require_action_check && !pg.require_action_check {
        out.push("action checks required".to_string());
    }
    out.extend(dropped("rctx", parent.rctx.keys(), |k| {
        child.rctx.contains_key(k)
    }));
    out.into_iter()
        .map(|line| truncate(line, MAX_NARROWED_LINE))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Claim, Constraint};
    use crate::ids::TxnId;
    use crate::limits::MAX_DETAIL_BYTES;
    use crate::model::Grant;
    use crate::model::{ActorKind, ClientType, Party};
    use crate::token::SecretHash;

    fn grant() -> Grant {
        Grant {
            scopes: ["a".to_string(), "b".to_string()].into(),
            claims: [(
                "amount".to_string(),
                Claim::on_every_scope(Constraint::Max(100)),
            )]
            .into(),
            targets: ["x".to_string(), "y".to_string()].into(),
            expires_at: UnixMillis(10_000),
            max_uses: Some(3),
            require_action_check: false,
        }
    }

    fn record(g: Grant) -> TokenRecord {
        let p = Party {
            id: "p".into(),
            kind: ActorKind::Agent,
            client_type: ClientType::Public,
        };
        TokenRecord {
            token_id: TokenId([1; 16]),
            secret_hash: SecretHash([0; 32]),
            txn: TxnId([2; 16]),
            parent: None,
            depth: 0,
            subject: "alice".into(),
            trust_domain: "t".into(),
            actors: vec![p.clone()],
            audience: p,
            grant: g,
            purpose: String::new(),
            tctx: Default::default(),
            rctx: Default::default(),
            issued_at: UnixMillis(0),
            idempotency: None,
            actor_auth: None,
            consent: None,
        }
    }

    #[test]
    fn status_ranks_revoked_over_expired_over_exhausted() {
        let r = record(grant());
        let mut s = TokenState::default();
        assert_eq!(status(&r, &s, UnixMillis(0)), Status::Active);
        s.uses = 3;
        assert_eq!(status(&r, &s, UnixMillis(0)), Status::Exhausted);
        assert_eq!(status(&r, &s, UnixMillis(10_000)), Status::Expired);
        s.revoked = Some(Revocation {
            at: UnixMillis(1),
            by: "op".into(),
            reason: "r".into(),
            cause: TokenId([1; 16]),
        });
        assert_eq!(status(&r, &s, UnixMillis(10_000)), Status::Revoked);
        let unlimited = record(Grant {
            max_uses: None,
            ..grant()
        });
        let busy = TokenState {
            uses: u32::MAX,
            ..TokenState::default()
        };
        assert_eq!(status(&unlimited, &busy, UnixMillis(0)), Status::Active);
    }

    #[test]
    fn a_disablement_keeps_a_bounded_reason() {
        let short = PartyDisable::new(UnixMillis(5), "op".into(), "leaked key".into());
        assert_eq!(short.reason, "leaked key");
        let long = PartyDisable::new(UnixMillis(5), "op".into(), "é".repeat(MAX_DETAIL_BYTES));
        assert!(long.reason.len() <= MAX_DETAIL_BYTES && long.reason.ends_with('…'));
    }

    #[test]
    fn narrowed_lists_every_change() {
        let mut p = record(grant());
        p.rctx = [
            ("ip".to_string(), "1".to_string()),
            ("authn".to_string(), "pw".to_string()),
        ]
        .into();
        assert!(narrowed(&p, &p).is_empty());
        let mut c = record(Grant {
            scopes: ["a".to_string()].into(),
            claims: [
                (
                    "amount".to_string(),
                    Claim::on_every_scope(Constraint::Max(50)),
                ),
                (
                    "cat".to_string(),
                    Claim::on_every_scope(Constraint::DenySet(["h".to_string()].into())),
                ),
            ]
            .into(),
            targets: ["y".to_string()].into(),
            expires_at: UnixMillis(4_000),
            max_uses: Some(1),
            require_action_check: true,
        });
        c.rctx = [("authn".to_string(), "pw".to_string())].into();
        assert_eq!(
            narrowed(&p, &c),
            vec![
                "scopes dropped: b",
                "targets dropped: x",
                "claim amount: max 100 -> max 50",
                "claim cat added: deny {\"h\"}",
                "expiry 6 s earlier",
                "max_uses 3 -> 1",
                "action checks required",
                "rctx dropped: ip",
            ]
        );
        let mut wide = p.clone();
        wide.grant.scopes = (0..64).map(|i| format!("{i:0>120}")).collect();
        let lines = narrowed(&wide, &p);
        assert!(
            lines[0].len() <= MAX_NARROWED_LINE && lines[0].ends_with('…'),
            "{}",
            lines[0]
        );
    }
}
