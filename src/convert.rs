//! Wire ⇄ core conversions. Wire → core validates (and is the only validation of
//! request shape in Writ); core → wire cannot fail.

use crate::pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use writ_core::lifecycle::{self, Status};
use writ_core::limits::*;
use writ_core::narrow::{ChildRequest, MintRequest};
use writ_core::text::{self, Shown};
use writ_core::{
    ActorKind, Attributes, Claim, Claims, ClientType, ConsentAction, ConsentId, ConsentRequest,
    ConsentState, ConsentStatus, Constraint, Event, EventId, EventKind, Party, PartyView, TokenId,
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

impl FieldError {
    /// The same error with `parent` put before its path (which is relative to `parent`).
    fn within(self, parent: &str) -> FieldError {
        FieldError {
            field: format!("{parent}{}", self.field),
            message: self.message,
        }
    }
}

/// The `domain` of the `google.rpc.ErrorInfo` every Writ error status carries (its
/// `reason` is stable, its metadata names the field, dimension or consent request).
pub const ERROR_DOMAIN: &str = "writ";

/// A status carrying Writ's `google.rpc.ErrorInfo`: `reason` and `metadata` in domain
/// [`ERROR_DOMAIN`]. Every error status Writ answers is made here.
pub fn error_status(
    code: tonic::Code,
    message: impl Into<String>,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> tonic::Status {
    use tonic_types::StatusExt;
    let metadata: std::collections::HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    tonic::Status::with_error_details(
        code,
        message,
        tonic_types::ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

impl From<FieldError> for tonic::Status {
    /// `INVALID_ARGUMENT` with reason `INVALID_FIELD` and the field in its metadata.
    fn from(e: FieldError) -> Self {
        let field = e.field.clone();
        error_status(
            tonic::Code::InvalidArgument,
            e.to_string(),
            "INVALID_FIELD",
            [("field", field)],
        )
    }
}

type Result<T> = std::result::Result<T, FieldError>;

fn bad<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// A bounded string in the canonical form of [`writ_core::text`] (NFC, nothing invisible
/// or reordering, no edge spaces), at most `max` bytes. Refused, never rewritten.
pub fn text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return bad(field, format!("is {} bytes; the limit is {max}", s.len()));
    }
    text::check(s).map_err(|e| FieldError {
        field: field.into(),
        message: format!("{} {e}", Shown(s)),
    })
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
            format!("{} must be printable ASCII without spaces", Shown(s)),
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
                Shown(s)
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

/// One scope: an RFC 6749 scope-token (printable ASCII except space, `"` and `\`) of
/// 1..=[`MAX_SCOPE_LEN`] bytes.
pub fn scope(field: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCOPE_LEN
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        bad(
            field,
            format!(
                "{} is not a valid scope (1..={MAX_SCOPE_LEN} printable ASCII, no space, quote or backslash)",
                Shown(s)
            ),
        )
    }
}

/// Scopes: RFC 6749 scope-tokens ([`scope`]), at most [`MAX_SCOPES`].
pub fn scopes(field: &str, v: Vec<String>) -> Result<BTreeSet<String>> {
    if v.len() > MAX_SCOPES {
        return bad(
            field,
            format!("has {} entries; the limit is {MAX_SCOPES}", v.len()),
        );
    }
    v.into_iter()
        .map(|s| scope(field, &s).map(|()| s))
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

/// A set's members, bounded and canonical, and whether it compares case-insensitively.
fn string_set(field: &str, s: pb::StringSet) -> Result<(BTreeSet<String>, bool)> {
    if s.values.len() > MAX_SET_ITEMS {
        return bad(
            field,
            format!(
                "has {} members; the limit is {MAX_SET_ITEMS}",
                s.values.len()
            ),
        );
    }
    let ci = s.case_insensitive;
    let members = s
        .values
        .into_iter()
        .map(|v| {
            text(field, &v, MAX_VALUE_LEN)?;
            // The set keeps members folded; that form must be canonical too.
            if ci && text::check(&text::fold(&v)).is_err() {
                return bad(
                    field,
                    format!(
                        "{} has no canonical case-folded form (it folds to a space or a combining mark); use an exact set",
                        Shown(&v)
                    ),
                );
            }
            Ok(v)
        })
        .collect::<Result<_>>()?;
    Ok((members, ci))
}

/// A single wire value (exact claim value, or one item of an attribute).
pub fn value(field: &str, v: Option<pb::Value>) -> Result<Value> {
    match v.and_then(|v| v.kind) {
        Some(pb::value::Kind::Int(i)) => Ok(Value::Int(i)),
        Some(pb::value::Kind::Str(s)) => text(field, &s, MAX_VALUE_LEN).map(|()| Value::Str(s)),
        Some(pb::value::Kind::Time(t)) => Ok(Value::Time(t)),
        Some(pb::value::Kind::List(_)) => bad(field, "a list is not a single value"),
        None => bad(field, "a value must be int, str or time"),
    }
}

/// An action attribute: one value, or a list of 1..=[`MAX_ATTRIBUTE_VALUES`] values. Errors
/// name the offending item relative to the attribute (`[1]`, or nothing for the attribute
/// itself): its caller prefixes the attribute's own path, and only on an error.
fn attribute(v: pb::Value) -> Result<Vec<Value>> {
    match v.kind {
        Some(pb::value::Kind::List(list)) => {
            let n = list.values.len();
            if n == 0 || n > MAX_ATTRIBUTE_VALUES {
                return bad(
                    "",
                    format!("a list must hold 1..={MAX_ATTRIBUTE_VALUES} values; it holds {n}"),
                );
            }
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value("", Some(v)).map_err(|e| e.within(&format!("[{i}]"))))
                .collect()
        }
        kind => Ok(vec![value("", Some(pb::Value { kind }))?]),
    }
}

/// One claim: its constraint (an unset kind is refused, never skipped) and the scopes it
/// applies to.
pub fn claim(field: &str, c: pb::Constraint) -> Result<Claim> {
    use pb::constraint::Kind;
    let constraint = match c.kind {
        Some(Kind::Max(v)) => Constraint::Max(v),
        Some(Kind::Min(v)) => Constraint::Min(v),
        Some(Kind::Allow(s)) => match string_set(&format!("{field}.allow"), s)? {
            (members, false) => Constraint::AllowSet(members),
            (members, true) => Constraint::allow_folded(members),
        },
        Some(Kind::Deny(s)) => match string_set(&format!("{field}.deny"), s)? {
            (members, false) => Constraint::DenySet(members),
            (members, true) => Constraint::deny_folded(members),
        },
        Some(Kind::Prefix(p)) => {
            let f = format!("{field}.prefix");
            text(&f, &p, MAX_VALUE_LEN)?;
            writ_core::claims::path(&p).map_err(|why| FieldError {
                field: f,
                message: format!("{} is not a canonical resource path: {why}", Shown(&p)),
            })?;
            Constraint::Prefix(p)
        }
        Some(Kind::Exact(v)) => Constraint::Exact(value(&format!("{field}.exact"), Some(v))?),
        Some(Kind::Range(r)) if r.min > r.max => {
            return bad(format!("{field}.range"), "min must not exceed max");
        }
        Some(Kind::Range(r)) => Constraint::Range {
            min: r.min,
            max: r.max,
        },
        Some(Kind::Window(w)) if w.not_before > w.not_after => {
            return bad(
                format!("{field}.window"),
                "not_before must not exceed not_after",
            );
        }
        Some(Kind::Window(w)) => Constraint::Window {
            not_before: w.not_before,
            not_after: w.not_after,
        },
        None => {
            return bad(
                field,
                "a constraint kind (max, min, allow, deny, prefix, exact, range, window) is required",
            );
        }
    };
    let applies_to = if c.applies_to.is_empty() {
        None
    } else {
        Some(scopes(&format!("{field}.applies_to"), c.applies_to)?)
    };
    Ok(Claim {
        constraint,
        applies_to,
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
            let f = format!("{field}[{}]", Shown(&k));
            name(&f, &k)?;
            Ok((k, claim(&f, c)?))
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
            let f = format!("{field}[{}]", Shown(&k));
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

/// An optional idempotency key: [`MIN_IDEMPOTENCY_KEY_LEN`]..=[`MAX_IDEMPOTENCY_KEY_LEN`]
/// bytes of printable ASCII without spaces (a random UUID, say); empty means none. The
/// length is a floor, not a measure of randomness: the key is part of what a keyed token's
/// secret is derived from, so it should be random.
pub fn idempotency_key(s: String) -> Result<Option<String>> {
    if s.is_empty() {
        return Ok(None);
    }
    if !(MIN_IDEMPOTENCY_KEY_LEN..=MAX_IDEMPOTENCY_KEY_LEN).contains(&s.len())
        || !s.bytes().all(|b| b.is_ascii_graphic())
    {
        return bad(
            "idempotency_key",
            format!(
                "must be {MIN_IDEMPOTENCY_KEY_LEN}..={MAX_IDEMPOTENCY_KEY_LEN} bytes of printable ASCII without spaces (a random UUID, say)"
            ),
        );
    }
    Ok(Some(s))
}

/// Validates a Mint request; returns it and its idempotency key, if any.
pub fn mint_request(r: pb::MintRequest) -> Result<(MintRequest, Option<String>)> {
    let scopes = scopes("scopes", r.scopes)?;
    let claims = claims("claims", r.claims)?;
    // A claim on a scope the token does not hold would never apply: a typo that leaves the
    // intended scope unconstrained.
    for (name, c) in &claims {
        if let Some(s) = c.applies_to.iter().flatten().find(|s| !scopes.contains(*s)) {
            return bad(
                format!("claims[{}].applies_to", Shown(name)),
                format!("{} is not among the token's scopes", Shown(s)),
            );
        }
    }
    let req = MintRequest {
        subject: id("subject", &r.subject)?,
        audience: party("audience", r.audience)?,
        targets: targets("targets", r.targets)?,
        scopes,
        claims,
        purpose: purpose("purpose", r.purpose)?,
        tctx: context("tctx", r.tctx)?,
        rctx: context("rctx", r.rctx)?,
        ttl_secs: ttl(r.ttl_seconds),
        max_uses: (r.max_uses != 0).then_some(r.max_uses),
        require_action_check: r.require_action_check,
    };
    Ok((req, idempotency_key(r.idempotency_key)?))
}

/// A validated Downscope request: the presented parent token, the child's spec and the
/// idempotency key, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downscope {
    /// The parent token as presented.
    pub parent_token: String,
    /// What the child should hold.
    pub child: ChildRequest,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
}

/// Validates a Downscope request.
pub fn downscope_request(r: pb::DownscopeRequest) -> Result<Downscope> {
    if r.parent_token.is_empty() {
        return bad("parent_token", "is required");
    }
    if r.drop_rctx.len() > MAX_CONTEXT_ENTRIES {
        return bad(
            "drop_rctx",
            format!(
                "has {} entries; the limit is {MAX_CONTEXT_ENTRIES}",
                r.drop_rctx.len()
            ),
        );
    }
    let drop_rctx = r
        .drop_rctx
        .into_iter()
        .map(|k| name("drop_rctx", &k).map(|()| k))
        .collect::<Result<_>>()?;
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
        require_action_check: r.require_action_check,
        drop_rctx,
    };
    Ok(Downscope {
        parent_token: r.parent_token,
        child,
        idempotency_key: idempotency_key(r.idempotency_key)?,
    })
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
    Ok((target, reason(r.reason)?))
}

/// A revocation's reason: required, canonical text of at most [`MAX_VALUE_LEN`] bytes.
fn reason(r: String) -> Result<String> {
    if r.trim().is_empty() {
        return bad("reason", "is required");
    }
    text("reason", &r, MAX_VALUE_LEN)?;
    Ok(r)
}

/// Wire → core for the kill switch: the party's id and the (required) reason.
pub fn disable_party_request(r: pb::DisablePartyRequest) -> Result<(String, String)> {
    let party = id("party", &r.party)?;
    Ok((party, reason(r.reason)?))
}

/// An action to check: the required scope and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The scope the action needs.
    pub scope: String,
    /// Attributes the claims are evaluated against (each one or more values).
    pub attributes: Attributes,
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
            // Every Validate with an action runs this: the field's path is built only for
            // an error.
            let at = |e: FieldError| e.within(&format!("action.attributes[{}]", Shown(&k)));
            name("", &k).map_err(at)?;
            let values = attribute(v).map_err(at)?;
            Ok((k, values))
        })
        .collect::<Result<_>>()?;
    Ok(Some(Action { scope, attributes }))
}

/// A validated RequestConsent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentAsk {
    /// The holder's token as presented.
    pub token: String,
    /// The action: the scope and one value per attribute.
    pub action: ConsentAction,
    /// The party that will check the redeemed token.
    pub resource: String,
    /// Why, for the user.
    pub reason: String,
}

/// Validates a RequestConsent request: the token, the action (one value per attribute),
/// the resource's id and the reason (required, at most [`MAX_DETAIL_BYTES`]).
pub fn request_consent_request(r: pb::RequestConsentRequest) -> Result<ConsentAsk> {
    if r.token.is_empty() {
        return bad("token", "is required");
    }
    let Some(a) = action(r.action)? else {
        return bad("action", "is required");
    };
    let action = ConsentAction::from_attributes(a.scope, a.attributes).map_err(|e| FieldError {
        field: "action.attributes".into(),
        message: match e {
            writ_core::ConsentError::Attributes(m) => m,
            other => other.to_string(),
        },
    })?;
    let resource = id("resource", &r.resource)?;
    if r.reason.trim().is_empty() {
        return bad("reason", "is required: say why, for the user");
    }
    text("reason", &r.reason, MAX_DETAIL_BYTES)?;
    Ok(ConsentAsk {
        token: r.token,
        action,
        resource,
        reason: r.reason,
    })
}

/// Validates a DecideConsent request: the request id, approve or deny, and the user the
/// caller authenticated.
pub fn decide_consent_request(r: pb::DecideConsentRequest) -> Result<(ConsentId, bool, String)> {
    let id = consent_id("id", &r.id)?;
    Ok((id, r.approve, self::id("subject", &r.subject)?))
}

/// Validates a RedeemConsent request: the request id, the token it was made with and the
/// lifetime asked for (none: the configured one).
pub fn redeem_consent_request(
    r: pb::RedeemConsentRequest,
) -> Result<(ConsentId, String, Option<u64>)> {
    let id = consent_id("id", &r.id)?;
    if r.token.is_empty() {
        return bad("token", "is required");
    }
    Ok((id, r.token, ttl(r.ttl_seconds)))
}

/// A consent request id (`cns_…`), required.
fn consent_id(field: &str, s: &str) -> Result<ConsentId> {
    if s.is_empty() {
        return bad(field, "is required");
    }
    parsed(field, s)
}

/// Validates a GetConsent request.
pub fn get_consent_request(r: pb::GetConsentRequest) -> Result<ConsentId> {
    consent_id("id", &r.id)
}

/// A validated ListConsents request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentListing {
    /// Only requests with this status.
    pub status: Option<ConsentStatus>,
    /// Only requests for this user.
    pub subject: Option<String>,
    /// Only requests of this transaction.
    pub txn: Option<TxnId>,
    /// Only requests older than this one (the cursor).
    pub before: Option<ConsentId>,
    /// Most requests to return.
    pub page_size: usize,
}

/// Validates a ListConsents request.
pub fn list_consents_request(r: pb::ListConsentsRequest) -> Result<ConsentListing> {
    let status = match pb::ConsentStatus::try_from(r.status) {
        Ok(pb::ConsentStatus::Unspecified) => None,
        Ok(pb::ConsentStatus::Pending) => Some(ConsentStatus::Pending),
        Ok(pb::ConsentStatus::Approved) => Some(ConsentStatus::Approved),
        Ok(pb::ConsentStatus::Denied) => Some(ConsentStatus::Denied),
        Ok(pb::ConsentStatus::Redeemed) => Some(ConsentStatus::Redeemed),
        Ok(pb::ConsentStatus::Expired) => Some(ConsentStatus::Expired),
        Err(_) => return bad("status", format!("unknown status {}", r.status)),
    };
    let txn = if r.txn.is_empty() {
        None
    } else {
        Some(parsed("txn", &r.txn)?)
    };
    let before = if r.after.is_empty() {
        None
    } else {
        Some(parsed("after", &r.after)?)
    };
    Ok(ConsentListing {
        status,
        subject: optional_id("subject", &r.subject)?,
        txn,
        before,
        page_size: page_size(r.page_size, 100, MAX_PAGE_SIZE)?,
    })
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
        Value::Time(t) => pb::value::Kind::Time(*t),
    };
    pb::Value { kind: Some(kind) }
}

/// An attribute on the wire: a single value, or a list of several.
pub fn attribute_pb(values: &[Value]) -> pb::Value {
    match values {
        [one] => value_pb(one),
        many => pb::Value {
            kind: Some(pb::value::Kind::List(pb::ValueList {
                values: many.iter().map(value_pb).collect(),
            })),
        },
    }
}

/// A core claim on the wire.
pub fn claim_pb(c: &Claim) -> pb::Constraint {
    use pb::constraint::Kind;
    let set = |s: &BTreeSet<String>, case_insensitive| pb::StringSet {
        values: s.iter().cloned().collect(),
        case_insensitive,
    };
    let kind = match &c.constraint {
        Constraint::Max(v) => Kind::Max(*v),
        Constraint::Min(v) => Kind::Min(*v),
        Constraint::AllowSet(s) => Kind::Allow(set(s, false)),
        Constraint::DenySet(s) => Kind::Deny(set(s, false)),
        Constraint::AllowFolded(s) => Kind::Allow(set(s, true)),
        Constraint::DenyFolded(s) => Kind::Deny(set(s, true)),
        Constraint::Prefix(p) => Kind::Prefix(p.clone()),
        Constraint::Exact(v) => Kind::Exact(value_pb(v)),
        Constraint::Range { min, max } => Kind::Range(pb::Range {
            min: *min,
            max: *max,
        }),
        Constraint::Window {
            not_before,
            not_after,
        } => Kind::Window(pb::Window {
            not_before: *not_before,
            not_after: *not_after,
        }),
    };
    pb::Constraint {
        kind: Some(kind),
        applies_to: c.applies_to.iter().flatten().cloned().collect(),
    }
}

/// Claims on the wire.
pub fn claims_pb(c: &Claims) -> HashMap<String, pb::Constraint> {
    c.iter().map(|(k, v)| (k.clone(), claim_pb(v))).collect()
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

/// Everything a record says, for Validate and the mint/downscope responses, with the
/// scopes it holds but may not exercise without the user's consent (`latent`: the
/// registry decides, so the server passes them). Never the secret.
pub fn token_info(r: &TokenRecord, latent: Vec<String>) -> pb::TokenInfo {
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
        require_action_check: r.grant.require_action_check,
        actor_auth: auth_method_pb(r.actor_auth).into(),
        latent_scopes: latent,
        consent_request_id: r
            .consent
            .as_ref()
            .map(|m| m.request.to_string())
            .unwrap_or_default(),
    }
}

/// Core → wire for how an actor authenticated (`None`: not recorded).
pub fn auth_method_pb(m: Option<writ_core::AuthMethod>) -> pb::AuthMethod {
    use writ_core::AuthMethod as A;
    match m {
        None => pb::AuthMethod::Unspecified,
        Some(A::Mtls) => pb::AuthMethod::Mtls,
        Some(A::ClientAssertion) => pb::AuthMethod::ClientAssertion,
        Some(A::JwtSvid) => pb::AuthMethod::JwtSvid,
        Some(A::Bearer) => pb::AuthMethod::Bearer,
        Some(A::Asserted) => pb::AuthMethod::Asserted,
        Some(A::Internal) => pb::AuthMethod::Internal,
        Some(A::ConsentLink) => pb::AuthMethod::ConsentLink,
        Some(A::OidcSignIn) => pb::AuthMethod::OidcSignIn,
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

/// Validates a GetTransaction request: the transaction, the token to continue after, and
/// the page size (default and limit [`MAX_PAGE_SIZE`]).
pub fn get_transaction_request(
    r: pb::GetTransactionRequest,
) -> Result<(TxnId, Option<TokenId>, usize)> {
    let txn = parsed("txn", &r.txn)?;
    let after = if r.cursor.is_empty() {
        None
    } else {
        Some(parsed("cursor", &r.cursor)?)
    };
    Ok((
        txn,
        after,
        page_size(r.page_size, MAX_PAGE_SIZE, MAX_PAGE_SIZE)?,
    ))
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
    /// Does `e` pass the filter? An aggregate of refused (validated) events passes a
    /// filter on refused (validated) events too: a watcher of refusals must not go blind
    /// when a flood of them is counted instead of stored one by one.
    pub fn matches(&self, e: &Event) -> bool {
        let kind_matches = || {
            self.kinds.contains(e.kind.name())
                || matches!(&e.kind, EventKind::Aggregated { kind, .. } if self.kinds.contains(kind.as_str()))
        };
        self.txn.is_none_or(|t| t == e.txn)
            && self.subject.as_ref().is_none_or(|s| *s == e.subject)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && (self.kinds.is_empty() || kind_matches())
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
            Ok(pb::EventKind::Aggregated) => "aggregated",
            Ok(pb::EventKind::ConsentRequested) => "consent_requested",
            Ok(pb::EventKind::ConsentApproved) => "consent_approved",
            Ok(pb::EventKind::ConsentDenied) => "consent_denied",
            Ok(pb::EventKind::ConsentRedeemed) => "consent_redeemed",
            Ok(pb::EventKind::ConsentExpired) => "consent_expired",
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
        actor_auth: auth_method_pb(e.auth).into(),
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
        EventKind::Aggregated {
            kind,
            count,
            window_start,
            window_end,
        } => {
            out.aggregated_kind = match kind.as_str() {
                "refused" => pb::EventKind::Refused,
                "validated" => pb::EventKind::Validated,
                _ => pb::EventKind::Unspecified,
            }
            .into();
            out.count = *count;
            out.window_start_unix_ms = window_start.0;
            out.window_end_unix_ms = window_end.0;
            pb::EventKind::Aggregated
        }
        EventKind::ConsentRequested {
            request,
            scope,
            attributes,
            resource,
            reason,
            expires_at,
        } => {
            out.consent_request_id = request.to_string();
            out.action = scope.clone();
            out.attributes = attributes.clone();
            out.audience = resource.clone();
            out.reason = reason.clone();
            out.expires_at_unix_ms = expires_at.0;
            pb::EventKind::ConsentRequested
        }
        EventKind::ConsentApproved { request, channel } => {
            out.consent_request_id = request.to_string();
            out.channel = channel.clone();
            pb::EventKind::ConsentApproved
        }
        EventKind::ConsentDenied { request, channel } => {
            out.consent_request_id = request.to_string();
            out.channel = channel.clone();
            pb::EventKind::ConsentDenied
        }
        EventKind::ConsentRedeemed {
            request,
            parent,
            audience,
            scopes,
        } => {
            out.consent_request_id = request.to_string();
            out.parent_token_id = parent.to_string();
            out.audience = audience.clone();
            out.scopes = scopes.clone();
            pb::EventKind::ConsentRedeemed
        }
        EventKind::ConsentExpired { request, was } => {
            out.consent_request_id = request.to_string();
            out.detail = was.clone();
            pb::EventKind::ConsentExpired
        }
    };
    out.kind = kind.into();
    out
}

/// Core → wire for a consent status.
pub fn consent_status_pb(s: ConsentStatus) -> pb::ConsentStatus {
    match s {
        ConsentStatus::Pending => pb::ConsentStatus::Pending,
        ConsentStatus::Approved => pb::ConsentStatus::Approved,
        ConsentStatus::Denied => pb::ConsentStatus::Denied,
        ConsentStatus::Redeemed => pb::ConsentStatus::Redeemed,
        ConsentStatus::Expired => pb::ConsentStatus::Expired,
    }
}

fn consent_party_pb(p: &PartyView) -> pb::ConsentParty {
    pb::ConsentParty {
        id: p.id.clone(),
        display_name: p.display_name.clone().unwrap_or_default(),
        kind: kind_pb(p.kind).into(),
        client_type: client_type_pb(p.client_type).into(),
    }
}

/// Core → wire for a consent request as it stands at `now`. Never its link.
pub fn consent_info(r: &ConsentRequest, now: UnixMillis) -> pb::ConsentRequestInfo {
    let mut info = pb::ConsentRequestInfo {
        id: r.id.to_string(),
        txn: r.txn.to_string(),
        token_id: r.token.to_string(),
        requester: r.requester.id.clone(),
        requester_auth: auth_method_pb(Some(r.requester.auth)).into(),
        subject: r.subject.clone(),
        action: Some(pb::Action {
            scope: r.action.scope.clone(),
            attributes: r
                .action
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), value_pb(v)))
                .collect(),
        }),
        scope_description: r.scope_description.clone(),
        resource: Some(consent_party_pb(&r.resource_view)),
        chain: r.chain.iter().map(consent_party_pb).collect(),
        purpose: r.purpose.clone(),
        reason: r.reason.clone(),
        description: r.describe(),
        created_at_unix_ms: r.created_at.0,
        expires_at_unix_ms: r.expires_at.0,
        status: consent_status_pb(r.status(now)).into(),
        ..Default::default()
    };
    if let Some(d) = r.decision() {
        info.decided_by = d.by.clone();
        info.decided_by_auth = auth_method_pb(d.auth).into();
        info.channel = d.channel.as_str().to_owned();
        info.decided_at_unix_ms = d.at.0;
    }
    if let ConsentState::Redeemed { at, token, .. } = &r.state {
        info.redeemed_at_unix_ms = at.0;
        info.redeemed_token_id = token.to_string();
    }
    info
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
                    claims: [("amount".into(), pb::Constraint::default())].into(),
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
                            ..Default::default()
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

    fn with_claim(c: pb::Constraint) -> pb::MintRequest {
        pb::MintRequest {
            scopes: vec!["pay".into()],
            claims: [("c".into(), c)].into(),
            ..mint()
        }
    }

    fn kind(k: pb::constraint::Kind) -> pb::Constraint {
        pb::Constraint {
            kind: Some(k),
            ..Default::default()
        }
    }

    #[test]
    fn claims_are_refused_at_the_wire_unless_well_formed() {
        use pb::constraint::Kind;
        let set = |v: &[&str]| pb::StringSet {
            values: v.iter().map(|s| s.to_string()).collect(),
            case_insensitive: false,
        };
        let cases: Vec<(pb::Constraint, &str)> = vec![
            (
                kind(Kind::Deny(set(&["gam\u{AD}bling"]))),
                "claims[\"c\"].deny",
            ),
            (kind(Kind::Allow(set(&["e\u{301}"]))), "claims[\"c\"].allow"),
            (
                kind(Kind::Prefix("/trips/../admin".into())),
                "claims[\"c\"].prefix",
            ),
            (kind(Kind::Prefix("trips".into())), "claims[\"c\"].prefix"),
            (
                kind(Kind::Range(pb::Range { min: 5, max: 4 })),
                "claims[\"c\"].range",
            ),
            (
                kind(Kind::Window(pb::Window {
                    not_before: 5,
                    not_after: 4,
                })),
                "claims[\"c\"].window",
            ),
            (
                kind(Kind::Exact(pb::Value {
                    kind: Some(pb::value::Kind::List(pb::ValueList::default())),
                })),
                "claims[\"c\"].exact",
            ),
            (
                pb::Constraint {
                    applies_to: vec!["payments".into()],
                    ..kind(Kind::Max(5))
                },
                "claims[\"c\"].applies_to",
            ),
        ];
        for (c, field) in cases {
            let err = mint_request(with_claim(c)).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().len() < 300, "{err}");
        }
        let accent = kind(Kind::Allow(pb::StringSet {
            values: vec!["¨".into()],
            case_insensitive: true,
        }));
        assert_eq!(
            mint_request(with_claim(accent)).unwrap_err().field,
            "claims[\"c\"].allow"
        );
        let folded = kind(Kind::Deny(pb::StringSet {
            values: vec!["Gambling".into()],
            case_insensitive: true,
        }));
        let (req, key) = mint_request(with_claim(folded)).unwrap();
        assert_eq!(
            req.claims["c"].constraint,
            Constraint::DenyFolded(["gambling".to_string()].into())
        );
        assert_eq!(key, None);
    }

    #[test]
    fn attributes_take_lists_and_canonical_text_only() {
        let attr = |v: pb::value::Kind| {
            action(Some(pb::Action {
                scope: "pay".into(),
                attributes: [("a".into(), pb::Value { kind: Some(v) })].into(),
            }))
        };
        let str_v = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Str(s.into())),
        };
        let list = |v: Vec<pb::Value>| pb::value::Kind::List(pb::ValueList { values: v });
        let got = attr(list(vec![str_v("x"), str_v("y")])).unwrap().unwrap();
        assert_eq!(
            got.attributes["a"],
            vec![Value::Str("x".into()), Value::Str("y".into())]
        );
        assert_eq!(
            attr(pb::value::Kind::Time(7)).unwrap().unwrap().attributes["a"],
            vec![Value::Time(7)]
        );
        for (bad, field) in [
            (list(vec![]), r#"action.attributes["a"]"#),
            (
                list(vec![
                    str_v("x"),
                    pb::Value {
                        kind: Some(list(vec![str_v("x")])),
                    },
                ]),
                r#"action.attributes["a"][1]"#,
            ),
            (
                list((0..=MAX_ATTRIBUTE_VALUES).map(|_| str_v("x")).collect()),
                r#"action.attributes["a"]"#,
            ),
            (
                pb::value::Kind::Str("gambling\u{FE0F}".into()),
                r#"action.attributes["a"]"#,
            ),
            (
                list(vec![str_v("x"), str_v("Gambling ")]),
                r#"action.attributes["a"][1]"#,
            ),
        ] {
            let err = attr(bad).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let err = action(Some(pb::Action {
            scope: "pay".into(),
            attributes: [("a b".into(), str_v("x"))].into(),
        }))
        .unwrap_err();
        assert_eq!(err.field, r#"action.attributes["a b"]"#, "{err}");
    }

    #[test]
    fn idempotency_keys_and_drops_are_checked() {
        assert_eq!(idempotency_key(String::new()), Ok(None));
        let uuid = "0f8b2c4e-9a1d-4c3b-8e7f-5a6b7c8d9e0f";
        assert_eq!(idempotency_key(uuid.into()), Ok(Some(uuid.into())));
        assert!(idempotency_key("short-key".into()).is_err());
        for bad in ["a b", "é", &"k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)] {
            assert_eq!(
                idempotency_key(bad.into()).unwrap_err().field,
                "idempotency_key"
            );
        }
        let d = downscope_request(pb::DownscopeRequest {
            parent_token: "t".into(),
            audience: agent("b"),
            drop_rctx: vec!["bad key".into()],
            ..Default::default()
        });
        assert_eq!(d.unwrap_err().field, "drop_rctx");
    }

    #[test]
    fn the_largest_record_fits_its_bound_on_the_wire() {
        use prost::Message;
        use writ_core::{Grant, SecretHash};
        let long = |c: char, n: usize| c.to_string().repeat(n);
        let p = |i: usize| Party {
            id: format!("{i:0>width$}", width = MAX_ID_LEN),
            kind: ActorKind::Agent,
            client_type: ClientType::Public,
        };
        // Grow a grant and a context to just under their limits.
        let mut grant = Grant {
            scopes: (0..MAX_SCOPES)
                .map(|i| format!("{i:0>width$}", width = MAX_SCOPE_LEN))
                .collect(),
            claims: Claims::new(),
            targets: (0..MAX_TARGETS).map(|i| format!("{i:0>64}")).collect(),
            expires_at: UnixMillis(u64::MAX),
            max_uses: Some(u32::MAX),
            require_action_check: true,
        };
        let mut n = 0;
        while grant.size() < MAX_GRANT_BYTES - 600 {
            grant.claims.insert(
                format!("{n:0>width$}", width = MAX_CLAIM_NAME_LEN),
                Claim::on_every_scope(Constraint::Exact(Value::Str(long('x', 400)))),
            );
            n += 1;
        }
        let ctx: BTreeMap<String, String> = (0..13)
            .map(|i| (format!("{i:0>64}"), long('y', MAX_VALUE_LEN)))
            .collect();
        let record = TokenRecord {
            token_id: TokenId([1; 16]),
            secret_hash: SecretHash([2; 32]),
            txn: TxnId([3; 16]),
            parent: Some(TokenId([4; 16])),
            depth: MAX_DEPTH_CEILING,
            subject: p(0).id,
            trust_domain: long('t', 255),
            actors: (0..=MAX_DEPTH_CEILING as usize).map(p).collect(),
            audience: p(99),
            grant,
            purpose: long('p', MAX_VALUE_LEN),
            tctx: ctx.clone(),
            rctx: ctx,
            issued_at: UnixMillis(u64::MAX),
            idempotency: Some([5; 32]),
            actor_auth: None,
            consent: None,
        };
        assert!(record.grant.size() <= MAX_GRANT_BYTES);
        assert!(record.context_size() <= MAX_CONTEXT_BYTES);
        let wire = token_info(&record, Vec::new()).encoded_len();
        assert!(
            wire <= MAX_RECORD_BYTES,
            "{wire} bytes on the wire; the bound is {MAX_RECORD_BYTES}"
        );
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
        let every = Claim::on_every_scope;
        let c: Claims = [
            ("a".to_string(), every(Constraint::Max(5))),
            (
                "b".to_string(),
                every(Constraint::DenySet(["x".to_string()].into())),
            ),
            (
                "c".to_string(),
                every(Constraint::Exact(Value::Str("EUR".into()))),
            ),
            (
                "d".to_string(),
                every(Constraint::deny_folded(["Gambling".to_string()])),
            ),
            ("e".to_string(), every(Constraint::Range { min: 1, max: 9 })),
            (
                "f".to_string(),
                Claim {
                    constraint: Constraint::Window {
                        not_before: 10,
                        not_after: 20,
                    },
                    applies_to: Some(["pay".to_string()].into()),
                },
            ),
            ("g".to_string(), every(Constraint::Exact(Value::Time(3)))),
        ]
        .into();
        assert_eq!(claims_from_pb(claims_pb(&c)).unwrap(), c);
    }

    /// Issue 10: an aggregate's wire form says what was counted, how many, when, by whom;
    /// and a watcher of refusals sees aggregated refusals.
    #[test]
    fn aggregated_events_on_the_wire_and_in_watch_filters() {
        use writ_core::audit::{Counted, OTHER_CALLERS};
        let txn = TxnId::new(UnixMillis(1_000), [4; 10]);
        let x = writ_core::Actor {
            id: "spiffe://example.org/flooder".into(),
            auth: writ_core::AuthMethod::Mtls,
        };
        let e = Event::aggregated(
            EventId(5_000_000),
            txn,
            Some(&x),
            Counted::Refused,
            42,
            UnixMillis(1_000),
            UnixMillis(11_000),
        );
        let w = event_pb(&e);
        assert_eq!(w.kind(), pb::EventKind::Aggregated);
        assert_eq!(w.aggregated_kind(), pb::EventKind::Refused);
        assert_eq!(
            (w.count, w.window_start_unix_ms, w.window_end_unix_ms),
            (42, 1_000, 11_000)
        );
        assert_eq!(w.txn, txn.to_string());
        assert_eq!(w.actor, x.id);
        assert_eq!(w.actor_auth(), pb::AuthMethod::Mtls);
        assert!(w.subject.is_empty() && w.token_id.is_empty() && w.detail.is_empty());
        let other = Event::aggregated(
            EventId(5_000_001),
            txn,
            None,
            Counted::Validated,
            3,
            UnixMillis(1_000),
            UnixMillis(11_000),
        );
        let w = event_pb(&other);
        assert_eq!(w.aggregated_kind(), pb::EventKind::Validated);
        assert_eq!(w.actor, OTHER_CALLERS);

        let filter = |kinds: &[pb::EventKind]| {
            watch_events_request(pb::WatchEventsRequest {
                kinds: kinds.iter().map(|k| *k as i32).collect(),
                ..Default::default()
            })
            .unwrap()
        };
        assert!(filter(&[]).matches(&e));
        assert!(filter(&[pb::EventKind::Aggregated]).matches(&e));
        assert!(filter(&[pb::EventKind::Refused]).matches(&e));
        assert!(!filter(&[pb::EventKind::Validated]).matches(&e));
        assert!(filter(&[pb::EventKind::Validated]).matches(&other));
        assert!(!filter(&[pb::EventKind::Minted]).matches(&other));
        let by_actor = watch_events_request(pb::WatchEventsRequest {
            actor: x.id.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(by_actor.matches(&e) && !by_actor.matches(&other));
    }

    fn consent_ask() -> pb::RequestConsentRequest {
        pb::RequestConsentRequest {
            token: "writ_x".into(),
            action: Some(pb::Action {
                scope: "payments.charge".into(),
                attributes: [
                    ("amount".to_owned(), value_pb(&Value::Int(450))),
                    ("currency".to_owned(), value_pb(&Value::Str("EUR".into()))),
                ]
                .into(),
            }),
            resource: "spiffe://td/svc/payments".into(),
            reason: "book the Lisbon flight".into(),
        }
    }

    /// Every refusal names its field; a list of values is not an approvable action.
    #[test]
    fn consent_requests_are_validated_field_by_field() {
        let ok = request_consent_request(consent_ask()).unwrap();
        assert_eq!(ok.action.scope, "payments.charge");
        assert_eq!(ok.action.attributes["amount"], Value::Int(450));
        let field = |r: pb::RequestConsentRequest| request_consent_request(r).unwrap_err().field;
        assert_eq!(
            field(pb::RequestConsentRequest {
                token: String::new(),
                ..consent_ask()
            }),
            "token"
        );
        assert_eq!(
            field(pb::RequestConsentRequest {
                action: None,
                ..consent_ask()
            }),
            "action"
        );
        assert_eq!(
            field(pb::RequestConsentRequest {
                resource: String::new(),
                ..consent_ask()
            }),
            "resource"
        );
        assert_eq!(
            field(pb::RequestConsentRequest {
                reason: " ".into(),
                ..consent_ask()
            }),
            "reason"
        );
        assert_eq!(
            field(pb::RequestConsentRequest {
                reason: "x".repeat(MAX_DETAIL_BYTES + 1),
                ..consent_ask()
            }),
            "reason"
        );
        let mut list = consent_ask();
        list.action.as_mut().unwrap().attributes.insert(
            "amount".into(),
            attribute_pb(&[Value::Int(1), Value::Int(2)]),
        );
        let e = request_consent_request(list).unwrap_err();
        assert_eq!(e.field, "action.attributes");
        assert!(e.message.contains("exactly one value"), "{e}");
        let e = decide_consent_request(pb::DecideConsentRequest {
            id: "cns_nope".into(),
            approve: true,
            subject: "alice".into(),
        })
        .unwrap_err();
        assert_eq!(e.field, "id");
        let e = decide_consent_request(pb::DecideConsentRequest {
            id: ConsentId([1; 16]).to_string(),
            approve: true,
            subject: String::new(),
        })
        .unwrap_err();
        assert_eq!(e.field, "subject");
        let (_, _, ttl) = redeem_consent_request(pb::RedeemConsentRequest {
            id: ConsentId([1; 16]).to_string(),
            token: "writ_x".into(),
            ttl_seconds: 0,
        })
        .unwrap();
        assert_eq!(ttl, None);
        let e = list_consents_request(pb::ListConsentsRequest {
            status: 99,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "status");
        let l = list_consents_request(pb::ListConsentsRequest {
            status: pb::ConsentStatus::Approved.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (l.status, l.page_size),
            (Some(ConsentStatus::Approved), 100)
        );
    }

    /// The wire view of a request: its status at the instant asked, the decision and the
    /// redemption once there are; never its link.
    #[test]
    fn consent_info_shows_the_request_as_it_stands() {
        use writ_core::{Actor, AuthMethod, Channel, ConsentState, Decision};
        let action = ConsentAction {
            scope: "payments.charge".into(),
            attributes: [("amount".to_owned(), Value::Int(450))].into(),
        };
        let view = |id: &str, kind| PartyView {
            id: id.into(),
            display_name: Some(format!("{id}!")),
            kind,
            client_type: ClientType::Confidential,
        };
        let mut r = ConsentRequest {
            id: ConsentId::new(UnixMillis(1_000), [3; 8]),
            txn: TxnId([1; 16]),
            token: TokenId([2; 16]),
            requester: Actor {
                id: "booking".into(),
                auth: AuthMethod::Mtls,
            },
            subject: "alice".into(),
            key: [0; 32],
            action,
            scope_description: "charge your card".into(),
            resource: Party {
                id: "payments".into(),
                kind: ActorKind::Workload,
                client_type: ClientType::Confidential,
            },
            chain: vec![
                view("planner", ActorKind::Agent),
                view("booking", ActorKind::Agent),
            ],
            resource_view: view("payments", ActorKind::Workload),
            purpose: "trip".into(),
            reason: "flight".into(),
            created_at: UnixMillis(1_000),
            expires_at: UnixMillis(61_000),
            link_hash: [9; 32],
            state: ConsentState::Pending,
        };
        let info = consent_info(&r, UnixMillis(2_000));
        assert_eq!(info.status, pb::ConsentStatus::Pending as i32);
        assert_eq!(info.chain.len(), 2);
        assert_eq!(info.chain[1].display_name, "booking!");
        assert_eq!(
            info.action.as_ref().unwrap().attributes["amount"],
            value_pb(&Value::Int(450))
        );
        assert_eq!(info.requester_auth, pb::AuthMethod::Mtls as i32);
        assert!(
            info.description
                .starts_with("charge your card (payments.charge)"),
            "{}",
            info.description
        );
        assert_eq!(
            consent_info(&r, UnixMillis(61_000)).status,
            pb::ConsentStatus::Expired as i32
        );
        let decision = Decision {
            approved: true,
            at: UnixMillis(3_000),
            by: "alice".into(),
            auth: None,
            channel: Channel::PageLink,
            subject: "alice".into(),
        };
        r.state = ConsentState::Redeemed {
            decision,
            at: UnixMillis(4_000),
            token: TokenId([5; 16]),
        };
        let info = consent_info(&r, UnixMillis(5_000));
        assert_eq!(info.status, pb::ConsentStatus::Redeemed as i32);
        assert_eq!(
            (info.channel.as_str(), info.decided_by.as_str()),
            ("page_link", "alice")
        );
        assert_eq!(info.decided_by_auth, pb::AuthMethod::Unspecified as i32);
        assert_eq!(info.redeemed_token_id, TokenId([5; 16]).to_string());
        assert!(
            !format!("{info:?}").contains("0909"),
            "never the link's hash"
        );
    }
}
