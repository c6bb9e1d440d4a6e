//! Wire ⇄ core conversions. Wire → core validates (and is the only validation of
//! request shape in Writ); core → wire cannot fail.

use crate::pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use writ_core::lifecycle::{self, Status};
use writ_core::limits::*;
use writ_core::narrow::{ChildRequest, MintRequest};
use writ_core::{
    ActorKind, Claims, ClientType, Constraint, Event, EventId, EventKind, Party, TokenId,
    TokenRecord, TokenState, TxnId, UnixMillis, Value,
};

/// A request field that failed validation. Becomes `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `claims["amount"].allow`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

type Result<T> = std::result::Result<T, FieldError>;

fn bad<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// How an offending value is echoed in an error: quoted, escaped and cut to 64 chars,
/// so a huge input cannot blow up the error (and the `grpc-message` trailer).
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Characters that render as nothing or reorder text: refused so ids and values cannot
/// spoof what an operator reads in audit output.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A bounded, printable string: no control or invisible characters, at most `max` bytes.
fn text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return bad(field, format!("is {} bytes; the limit is {max}", s.len()));
    }
    if s.chars().any(|c| c.is_control() || is_invisible(c)) {
        return bad(field, "contains control or invisible characters");
    }
    Ok(())
}

/// A party or subject id: 1..=256 bytes of printable ASCII without spaces (ids travel in
/// gRPC metadata and must read the same to every operator).
pub fn id(field: &str, s: &str) -> Result<String> {
    if s.is_empty() {
        return bad(field, "is required");
    }
    if s.len() > MAX_ID_LEN {
        return bad(
            field,
            format!("is {} bytes; the limit is {MAX_ID_LEN}", s.len()),
        );
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return bad(
            field,
            format!("{} must be printable ASCII without spaces", shown(s)),
        );
    }
    Ok(s.to_string())
}

/// A claim, attribute or context key: 1..=64 bytes of `[A-Za-z0-9_.:-]`.
fn name(field: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_CLAIM_NAME_LEN {
        return bad(
            field,
            format!("names must be 1..={MAX_CLAIM_NAME_LEN} bytes"),
        );
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return bad(
            field,
            format!(
                "name {} may only contain letters, digits and _ . : -",
                shown(s)
            ),
        );
    }
    Ok(())
}

fn kind(field: &str, k: i32) -> Result<ActorKind> {
    match pb::ActorKind::try_from(k) {
        Ok(pb::ActorKind::User) => Ok(ActorKind::User),
        Ok(pb::ActorKind::Agent) => Ok(ActorKind::Agent),
        Ok(pb::ActorKind::Workload) => Ok(ActorKind::Workload),
        _ => bad(field, "must be USER, AGENT or WORKLOAD"),
    }
}

fn client_type(field: &str, c: i32) -> Result<ClientType> {
    match pb::ClientType::try_from(c) {
        Ok(pb::ClientType::Confidential) => Ok(ClientType::Confidential),
        Ok(pb::ClientType::Public) => Ok(ClientType::Public),
        _ => bad(field, "must be CONFIDENTIAL or PUBLIC"),
    }
}

/// A required party.
pub fn party(field: &str, p: Option<pb::Party>) -> Result<Party> {
    let Some(p) = p else {
        return bad(field, "is required");
    };
    Ok(Party {
        id: id(&format!("{field}.id"), &p.id)?,
        kind: kind(&format!("{field}.kind"), p.kind)?,
        client_type: client_type(&format!("{field}.client_type"), p.client_type)?,
    })
}

/// Scopes: RFC 6749 scope-tokens (printable ASCII except space, `"` and `\`), bounded.
pub fn scopes(field: &str, v: Vec<String>) -> Result<BTreeSet<String>> {
    if v.len() > MAX_SCOPES {
        return bad(
            field,
            format!("has {} entries; the limit is {MAX_SCOPES}", v.len()),
        );
    }
    v.into_iter()
        .map(|s| {
            let ok = !s.is_empty()
                && s.len() <= MAX_SCOPE_LEN
                && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if ok {
                Ok(s)
            } else {
                bad(field, format!("{} is not a valid scope (1..={MAX_SCOPE_LEN} printable ASCII, no space, quote or backslash)", shown(&s)))
            }
        })
        .collect()
}

/// Targets: party ids, bounded.
pub fn targets(field: &str, v: Vec<String>) -> Result<BTreeSet<String>> {
    if v.len() > MAX_TARGETS {
        return bad(
            field,
            format!("has {} entries; the limit is {MAX_TARGETS}", v.len()),
        );
    }
    v.iter().map(|t| id(field, t)).collect()
}

fn string_set(field: &str, s: Option<pb::StringSet>) -> Result<BTreeSet<String>> {
    let values = s.map(|s| s.values).unwrap_or_default();
    if values.len() > MAX_SET_ITEMS {
        return bad(
            field,
            format!("has {} members; the limit is {MAX_SET_ITEMS}", values.len()),
        );
    }
    values
        .into_iter()
        .map(|v| text(field, &v, MAX_VALUE_LEN).map(|()| v))
        .collect()
}

/// A wire value (exact claim value or action attribute).
pub fn value(field: &str, v: Option<pb::Value>) -> Result<Value> {
    match v.and_then(|v| v.kind) {
        Some(pb::value::Kind::Int(i)) => Ok(Value::Int(i)),
        Some(pb::value::Kind::Str(s)) => text(field, &s, MAX_VALUE_LEN).map(|()| Value::Str(s)),
        None => bad(field, "a value must be int or str"),
    }
}

/// One constraint; an unset kind is refused, never skipped.
pub fn constraint(field: &str, c: pb::Constraint) -> Result<Constraint> {
    use pb::constraint::Kind;
    Ok(match c.kind {
        Some(Kind::Max(v)) => Constraint::Max(v),
        Some(Kind::Min(v)) => Constraint::Min(v),
        Some(Kind::Allow(s)) => {
            Constraint::AllowSet(string_set(&format!("{field}.allow"), Some(s))?)
        }
        Some(Kind::Deny(s)) => Constraint::DenySet(string_set(&format!("{field}.deny"), Some(s))?),
        Some(Kind::Prefix(p)) => {
            text(&format!("{field}.prefix"), &p, MAX_VALUE_LEN)?;
            Constraint::Prefix(p)
        }
        Some(Kind::Exact(v)) => Constraint::Exact(value(&format!("{field}.exact"), Some(v))?),
        None => {
            return bad(
                field,
                "a constraint kind (max, min, allow, deny, prefix, exact) is required",
            );
        }
    })
}

/// Claims: bounded, named, each with a known constraint kind.
pub fn claims(field: &str, m: HashMap<String, pb::Constraint>) -> Result<Claims> {
    if m.len() > MAX_CLAIMS {
        return bad(
            field,
            format!("has {} entries; the limit is {MAX_CLAIMS}", m.len()),
        );
    }
    m.into_iter()
        .map(|(k, c)| {
            let f = format!("{field}[{}]", shown(&k));
            name(&f, &k)?;
            Ok((k, constraint(&f, c)?))
        })
        .collect()
}

/// `tctx` / `rctx`: bounded string maps.
pub fn context(field: &str, m: HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if m.len() > MAX_CONTEXT_ENTRIES {
        return bad(
            field,
            format!(
                "has {} entries; the limit is {MAX_CONTEXT_ENTRIES}",
                m.len()
            ),
        );
    }
    m.into_iter()
        .map(|(k, v)| {
            let f = format!("{field}[{}]", shown(&k));
            name(&f, &k)?;
            text(&f, &v, MAX_VALUE_LEN)?;
            Ok((k, v))
        })
        .collect()
}

fn purpose(field: &str, s: String) -> Result<String> {
    text(field, &s, MAX_VALUE_LEN).map(|()| s)
}

fn ttl(v: u32) -> Option<u64> {
    (v != 0).then_some(u64::from(v))
}

/// Validates a Mint request.
pub fn mint_request(r: pb::MintRequest) -> Result<MintRequest> {
    Ok(MintRequest {
        subject: id("subject", &r.subject)?,
        audience: party("audience", r.audience)?,
        targets: targets("targets", r.targets)?,
        scopes: scopes("scopes", r.scopes)?,
        claims: claims("claims", r.claims)?,
        purpose: purpose("purpose", r.purpose)?,
        tctx: context("tctx", r.tctx)?,
        rctx: context("rctx", r.rctx)?,
        ttl_secs: ttl(r.ttl_seconds),
        max_uses: (r.max_uses != 0).then_some(r.max_uses),
    })
}

/// Validates a Downscope request; returns the presented parent token and the child spec.
pub fn downscope_request(r: pb::DownscopeRequest) -> Result<(String, ChildRequest)> {
    if r.parent_token.is_empty() {
        return bad("parent_token", "is required");
    }
    let child = ChildRequest {
        audience: party("audience", r.audience)?,
        targets: targets("targets", r.targets)?,
        scopes: scopes("scopes", r.scopes)?,
        claims: claims("claims", r.claims)?,
        ttl_secs: ttl(r.ttl_seconds),
        max_uses: (r.max_uses != 0).then_some(r.max_uses),
        purpose: if r.purpose.is_empty() {
            None
        } else {
            Some(purpose("purpose", r.purpose)?)
        },
    };
    Ok((r.parent_token, child))
}

/// What a Revoke request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// The token itself, presented by its holder.
    Token(String),
    /// A token by public id (operators).
    TokenId(TokenId),
    /// A whole transaction (operators).
    Txn(TxnId),
}

/// Validates a Revoke request: the target and the reason (required, bounded).
pub fn revoke_request(r: pb::RevokeRequest) -> Result<(RevokeTarget, String)> {
    use pb::revoke_request::Target;
    let target = match r.target {
        Some(Target::Token(t)) if !t.is_empty() => RevokeTarget::Token(t),
        Some(Target::TokenId(id)) => RevokeTarget::TokenId(parsed("token_id", &id)?),
        Some(Target::Txn(txn)) => RevokeTarget::Txn(parsed("txn", &txn)?),
        _ => return bad("target", "one of token, token_id or txn is required"),
    };
    if r.reason.trim().is_empty() {
        return bad("reason", "is required");
    }
    text("reason", &r.reason, MAX_VALUE_LEN)?;
    Ok((target, r.reason))
}

/// An action to check: the required scope and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The scope the action needs.
    pub scope: String,
    /// Attributes the claims are evaluated against.
    pub attributes: BTreeMap<String, Value>,
}

/// Validates the optional action of a Validate request.
pub fn action(a: Option<pb::Action>) -> Result<Option<Action>> {
    let Some(a) = a else { return Ok(None) };
    if a.scope.is_empty() {
        return bad("action.scope", "is required");
    }
    let scope = scopes("action.scope", vec![a.scope])?.into_iter().next();
    let Some(scope) = scope else {
        return bad("action.scope", "is required");
    };
    if a.attributes.len() > MAX_ATTRIBUTES {
        return bad(
            "action.attributes",
            format!(
                "has {} entries; the limit is {MAX_ATTRIBUTES}",
                a.attributes.len()
            ),
        );
    }
    let attributes = a
        .attributes
        .into_iter()
        .map(|(k, v)| {
            let f = format!("action.attributes[{}]", shown(&k));
            name(&f, &k)?;
            Ok((k, value(&f, Some(v))?))
        })
        .collect::<Result<_>>()?;
    Ok(Some(Action { scope, attributes }))
}

// ---- core → wire ----

fn kind_pb(k: ActorKind) -> pb::ActorKind {
    match k {
        ActorKind::User => pb::ActorKind::User,
        ActorKind::Agent => pb::ActorKind::Agent,
        ActorKind::Workload => pb::ActorKind::Workload,
    }
}

fn client_type_pb(c: ClientType) -> pb::ClientType {
    match c {
        ClientType::Confidential => pb::ClientType::Confidential,
        ClientType::Public => pb::ClientType::Public,
    }
}

/// A core party on the wire.
pub fn party_pb(p: &Party) -> pb::Party {
    pb::Party {
        id: p.id.clone(),
        kind: kind_pb(p.kind).into(),
        client_type: client_type_pb(p.client_type).into(),
    }
}

/// A core value on the wire.
pub fn value_pb(v: &Value) -> pb::Value {
    let kind = match v {
        Value::Int(i) => pb::value::Kind::Int(*i),
        Value::Str(s) => pb::value::Kind::Str(s.clone()),
    };
    pb::Value { kind: Some(kind) }
}

/// A core constraint on the wire.
pub fn constraint_pb(c: &Constraint) -> pb::Constraint {
    use pb::constraint::Kind;
    let set = |s: &BTreeSet<String>| pb::StringSet {
        values: s.iter().cloned().collect(),
    };
    let kind = match c {
        Constraint::Max(v) => Kind::Max(*v),
        Constraint::Min(v) => Kind::Min(*v),
        Constraint::AllowSet(s) => Kind::Allow(set(s)),
        Constraint::DenySet(s) => Kind::Deny(set(s)),
        Constraint::Prefix(p) => Kind::Prefix(p.clone()),
        Constraint::Exact(v) => Kind::Exact(value_pb(v)),
    };
    pb::Constraint { kind: Some(kind) }
}

/// Claims on the wire.
pub fn claims_pb(c: &Claims) -> HashMap<String, pb::Constraint> {
    c.iter()
        .map(|(k, v)| (k.clone(), constraint_pb(v)))
        .collect()
}

/// The actor chain nested RFC 8693-style: current actor outermost.
pub fn act_pb(actors: &[Party]) -> Option<pb::Act> {
    actors.iter().fold(None, |inner, p| {
        Some(pb::Act {
            id: p.id.clone(),
            kind: kind_pb(p.kind).into(),
            client_type: client_type_pb(p.client_type).into(),
            act: inner.map(Box::new),
        })
    })
}

/// Everything a record says, for Validate and the mint/downscope responses. Never the secret.
pub fn token_info(r: &TokenRecord) -> pb::TokenInfo {
    let actor = r.current_actor();
    pb::TokenInfo {
        token_id: r.token_id.to_string(),
        txn: r.txn.to_string(),
        parent_token_id: r.parent.map(|p| p.to_string()).unwrap_or_default(),
        depth: r.depth,
        subject: r.subject.clone(),
        trust_domain: r.trust_domain.clone(),
        act: act_pb(&r.actors),
        audience: Some(party_pb(&r.audience)),
        targets: r.grant.targets.iter().cloned().collect(),
        scopes: r.grant.scopes.iter().cloned().collect(),
        claims: claims_pb(&r.grant.claims),
        purpose: r.purpose.clone(),
        tctx: r.tctx.clone().into_iter().collect(),
        rctx: r.rctx.clone().into_iter().collect(),
        issued_at_unix_ms: r.issued_at.0,
        expires_at_unix_ms: r.grant.expires_at.0,
        agent_traffic: actor.kind == ActorKind::Agent,
        actor_client_type: client_type_pb(actor.client_type).into(),
        max_uses: r.grant.max_uses.unwrap_or(0),
    }
}

/// Wire → core for a constraint, used by clients that read `TokenInfo` back.
pub fn claims_from_pb(m: HashMap<String, pb::Constraint>) -> Result<Claims> {
    claims("claims", m)
}

/// Parses an id-like string field (`txn_…`, `tid_…`, `evt_…`), naming the field on failure.
pub fn parsed<T: std::str::FromStr>(field: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| FieldError {
        field: field.into(),
        message: e.to_string(),
    })
}

/// An optional id filter: empty means "no filter".
fn optional_id(field: &str, s: &str) -> Result<Option<String>> {
    if s.is_empty() {
        Ok(None)
    } else {
        id(field, s).map(Some)
    }
}

/// A page size: 0 means `default`, more than `max` is refused.
fn page_size(v: u32, default: usize, max: usize) -> Result<usize> {
    match v as usize {
        0 => Ok(default),
        n if n > max => bad("page_size", format!("is {n}; the limit is {max}")),
        n => Ok(n),
    }
}

/// Most items one listing page carries.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Core → wire for a status.
pub fn status_pb(s: Status) -> pb::TokenStatus {
    match s {
        Status::Active => pb::TokenStatus::Active,
        Status::Expired => pb::TokenStatus::Expired,
        Status::Revoked => pb::TokenStatus::Revoked,
        Status::Exhausted => pb::TokenStatus::Exhausted,
    }
}

/// A validated ListTransactions request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnListing {
    /// Only this user's transactions.
    pub subject: Option<String>,
    /// Only transactions this party acted in or was an audience of.
    pub actor: Option<String>,
    /// Minted at or after.
    pub since: Option<UnixMillis>,
    /// Minted before.
    pub until: Option<UnixMillis>,
    /// Root token status.
    pub status: Option<Status>,
    /// Most transactions to return.
    pub page_size: usize,
    /// Only transactions older than this one (the cursor).
    pub before: Option<TxnId>,
}

/// Validates a ListTransactions request.
pub fn list_transactions_request(r: pb::ListTransactionsRequest) -> Result<TxnListing> {
    // Transaction ids hold their mint time in 48 bits; larger values (microseconds by
    // mistake, say) would wrap, so they are refused.
    const MAX_MS: u64 = (1 << 48) - 1;
    let time = |field: &str, v: u64| match v {
        0 => Ok(None),
        v if v > MAX_MS => bad(
            field,
            format!("{v} is not Unix milliseconds (at most {MAX_MS})"),
        ),
        v => Ok(Some(UnixMillis(v))),
    };
    let since = time("since_unix_ms", r.since_unix_ms)?;
    let until = time("until_unix_ms", r.until_unix_ms)?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return bad("until_unix_ms", "must be after since_unix_ms");
    }
    let status = match pb::TokenStatus::try_from(r.status) {
        Ok(pb::TokenStatus::Unspecified) => None,
        Ok(pb::TokenStatus::Active) => Some(Status::Active),
        Ok(pb::TokenStatus::Expired) => Some(Status::Expired),
        Ok(pb::TokenStatus::Revoked) => Some(Status::Revoked),
        Ok(pb::TokenStatus::Exhausted) => Some(Status::Exhausted),
        Err(_) => return bad("status", format!("unknown status {}", r.status)),
    };
    let before = if r.cursor.is_empty() {
        None
    } else {
        Some(parsed("cursor", &r.cursor)?)
    };
    Ok(TxnListing {
        subject: optional_id("subject", &r.subject)?,
        actor: optional_id("actor", &r.actor)?,
        since,
        until,
        status,
        page_size: page_size(r.page_size, 50, MAX_PAGE_SIZE)?,
        before,
    })
}

/// Validates a ListEvents request: the transaction, the cursor and the page size.
pub fn list_events_request(r: pb::ListEventsRequest) -> Result<(TxnId, Option<EventId>, usize)> {
    let txn = parsed("txn", &r.txn)?;
    let after = if r.after.is_empty() {
        None
    } else {
        Some(parsed("after", &r.after)?)
    };
    Ok((txn, after, page_size(r.page_size, 100, MAX_PAGE_SIZE)?))
}

/// Which live events a watcher wants. Every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only this transaction.
    pub txn: Option<TxnId>,
    /// Only this user's transactions.
    pub subject: Option<String>,
    /// Only events by this party.
    pub actor: Option<String>,
    /// Only these kinds (by name); empty means all.
    pub kinds: BTreeSet<&'static str>,
}

impl WatchFilter {
    /// Does `e` pass the filter?
    pub fn matches(&self, e: &Event) -> bool {
        self.txn.is_none_or(|t| t == e.txn)
            && self.subject.as_ref().is_none_or(|s| *s == e.subject)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && (self.kinds.is_empty() || self.kinds.contains(e.kind.name()))
    }
}

/// Validates a WatchEvents request.
pub fn watch_events_request(r: pb::WatchEventsRequest) -> Result<WatchFilter> {
    let txn = if r.txn.is_empty() {
        None
    } else {
        Some(parsed("txn", &r.txn)?)
    };
    let mut kinds = BTreeSet::new();
    for (i, k) in r.kinds.iter().enumerate() {
        let name = match pb::EventKind::try_from(*k) {
            Ok(pb::EventKind::Minted) => "minted",
            Ok(pb::EventKind::Downscoped) => "downscoped",
            Ok(pb::EventKind::Validated) => "validated",
            Ok(pb::EventKind::Refused) => "refused",
            Ok(pb::EventKind::Revoked) => "revoked",
            _ => return bad(format!("kinds[{i}]"), format!("unknown event kind {k}")),
        };
        kinds.insert(name);
    }
    Ok(WatchFilter {
        txn,
        subject: optional_id("subject", &r.subject)?,
        actor: optional_id("actor", &r.actor)?,
        kinds,
    })
}

/// Core → wire for an audit event.
pub fn event_pb(e: &Event) -> pb::AuditEvent {
    let mut out = pb::AuditEvent {
        id: e.id.to_string(),
        at_unix_ms: e.id.at().0,
        txn: e.txn.to_string(),
        subject: e.subject.clone(),
        token_id: e.token.map(|t| t.to_string()).unwrap_or_default(),
        actor: e.actor.clone(),
        ..Default::default()
    };
    let kind = match &e.kind {
        EventKind::Minted {
            audience,
            scopes,
            expires_at,
        } => {
            out.audience = audience.clone();
            out.scopes = scopes.clone();
            out.expires_at_unix_ms = expires_at.0;
            pb::EventKind::Minted
        }
        EventKind::Downscoped {
            parent,
            audience,
            scopes,
            narrowed,
        } => {
            out.parent_token_id = parent.to_string();
            out.audience = audience.clone();
            out.scopes = scopes.clone();
            out.narrowed = narrowed.clone();
            pb::EventKind::Downscoped
        }
        EventKind::Validated {
            action,
            result,
            detail,
        } => {
            out.action = action.clone().unwrap_or_default();
            out.result = result.clone();
            out.detail = detail.clone();
            pb::EventKind::Validated
        }
        EventKind::Refused { dimension, detail } => {
            out.dimension = dimension.clone();
            out.detail = detail.clone();
            pb::EventKind::Refused
        }
        EventKind::Revoked { reason, revoked } => {
            out.reason = reason.clone();
            out.revoked = *revoked;
            pb::EventKind::Revoked
        }
    };
    out.kind = kind.into();
    out
}

/// Core → wire for a transaction listed by its root token.
pub fn txn_summary(
    root: &TokenRecord,
    state: &TokenState,
    now: UnixMillis,
) -> pb::TransactionSummary {
    pb::TransactionSummary {
        txn: root.txn.to_string(),
        subject: root.subject.clone(),
        root_token_id: root.token_id.to_string(),
        minted_by: root.current_actor().id.clone(),
        audience: Some(party_pb(&root.audience)),
        scopes: root.grant.scopes.iter().cloned().collect(),
        minted_at_unix_ms: root.issued_at.0,
        expires_at_unix_ms: root.grant.expires_at.0,
        status: status_pb(lifecycle::status(root, state, now)).into(),
        purpose: root.purpose.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn agent(id: &str) -> Option<pb::Party> {
        Some(pb::Party {
            id: id.into(),
            kind: pb::ActorKind::Agent.into(),
            client_type: pb::ClientType::Confidential.into(),
        })
    }

    fn mint() -> pb::MintRequest {
        pb::MintRequest {
            subject: "alice".into(),
            audience: agent("planner"),
            ..Default::default()
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases: Vec<(pb::MintRequest, &str)> = vec![
            (
                pb::MintRequest {
                    subject: String::new(),
                    ..mint()
                },
                "subject",
            ),
            (
                pb::MintRequest {
                    audience: None,
                    ..mint()
                },
                "audience",
            ),
            (
                pb::MintRequest {
                    audience: Some(pb::Party {
                        kind: 0,
                        ..agent("x").unwrap()
                    }),
                    ..mint()
                },
                "audience.kind",
            ),
            (
                pb::MintRequest {
                    audience: Some(pb::Party {
                        client_type: 9,
                        ..agent("x").unwrap()
                    }),
                    ..mint()
                },
                "audience.client_type",
            ),
            (
                pb::MintRequest {
                    scopes: vec!["a b".into()],
                    ..mint()
                },
                "scopes",
            ),
            (
                pb::MintRequest {
                    scopes: (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect(),
                    ..mint()
                },
                "scopes",
            ),
            (
                pb::MintRequest {
                    targets: vec!["".into()],
                    ..mint()
                },
                "targets",
            ),
            (
                pb::MintRequest {
                    claims: [("amount".into(), pb::Constraint { kind: None })].into(),
                    ..mint()
                },
                "claims[\"amount\"]",
            ),
            (
                pb::MintRequest {
                    claims: [(
                        "bad name".into(),
                        pb::Constraint {
                            kind: Some(pb::constraint::Kind::Max(1)),
                        },
                    )]
                    .into(),
                    ..mint()
                },
                "claims[\"bad name\"]",
            ),
            (
                pb::MintRequest {
                    tctx: [("k".into(), "x".repeat(MAX_VALUE_LEN + 1))].into(),
                    ..mint()
                },
                "tctx[\"k\"]",
            ),
            (
                pb::MintRequest {
                    purpose: "a\u{0}b".into(),
                    ..mint()
                },
                "purpose",
            ),
        ];
        for (req, field) in cases {
            let err = mint_request(req).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        assert!(mint_request(mint()).is_ok());
    }

    #[test]
    fn act_nests_current_actor_outermost() {
        let p = |id: &str| Party {
            id: id.into(),
            kind: ActorKind::Agent,
            client_type: ClientType::Public,
        };
        let act = act_pb(&[p("gw"), p("planner"), p("booking")]).unwrap();
        assert_eq!(act.id, "booking");
        let inner = act.act.unwrap();
        assert_eq!(inner.id, "planner");
        assert_eq!(inner.act.unwrap().id, "gw");
    }

    #[test]
    fn constraints_round_trip() {
        let c: Claims = [
            ("a".to_string(), Constraint::Max(5)),
            (
                "b".to_string(),
                Constraint::DenySet(["x".to_string()].into()),
            ),
            ("c".to_string(), Constraint::Exact(Value::Str("EUR".into()))),
        ]
        .into();
        assert_eq!(claims_from_pb(claims_pb(&c)).unwrap(), c);
    }
}
