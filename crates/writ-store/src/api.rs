//! The storage contract. Everything above the store (service logic, servers) is
//! generic over [`TokenStore`], so backends can be swapped without touching it.
//!
//! The methods return `Send` futures, as a multi-threaded gRPC server needs, and take
//! and return owned values only, as a networked backend needs. They are native
//! async-in-trait rather than boxed, so the trait is not object-safe: use it as a
//! generic bound.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use writ_core::audit::bounded_detail;
use writ_core::lifecycle::{self, Status};
use writ_core::limits::MAX_TOKENS_PER_TXN;
use writ_core::{
    Actor, ConsentError, ConsentId, ConsentRequest, ConsentStatus, Decision, Event, EventId,
    PartyDisable, Revocation, TokenId, TokenRecord, TokenState, TxnId, UnixMillis,
};

/// Everything that can go wrong in a store. One enum for every backend, so callers
/// map errors to responses once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A record with this token id already exists; nothing was written.
    #[error("a token with this id already exists")]
    Conflict,
    /// A stored value failed to decode, carries an unknown format version, or the store
    /// itself has an unexpected schema. Retrying will not help.
    #[error("corrupt store data: {what}")]
    Corrupt {
        /// What was found to be wrong.
        what: String,
    },
    /// `insert_child` was given a record without a parent, or whose parent does not
    /// exist in the same transaction; nothing was written.
    #[error("the parent token does not exist")]
    ParentMissing,
    /// `insert_child`: the parent is revoked, so it may derive no children.
    #[error("the parent token is revoked")]
    ParentRevoked,
    /// `insert_child`: the parent already has `limit` children.
    #[error("the parent token already has the maximum of {limit} children")]
    FanOutExceeded {
        /// The fan-out limit that was reached.
        limit: u32,
    },
    /// `insert_child`: the transaction has already held `limit` tokens, purged ones
    /// included (`writ_core::limits::MAX_TOKENS_PER_TXN`).
    #[error("the transaction has already issued the maximum of {limit} tokens")]
    TxnFull {
        /// The per-transaction limit that was reached.
        limit: usize,
    },
    /// `insert_child`: the parent's remaining uses cannot cover the child's `max_uses`.
    #[error("the parent token has too few uses left to reserve the child's uses")]
    UsesExhausted,
    /// The token named does not exist.
    #[error("no such token")]
    NotFound,
    /// The storage engine or its I/O failed; the message comes from the engine.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The task running the operation panicked or was cancelled (for example because
    /// the runtime is shutting down). Whether a pending write landed is unknown.
    #[error("storage task did not complete: {0}")]
    Task(String),
    /// A consent request's rule refused the operation ([`ConsentError`]); nothing was
    /// written.
    #[error(transparent)]
    Consent(#[from] ConsentError),
    /// `insert_consent`: the transaction already has `limit` open (pending or approved,
    /// unexpired) consent requests.
    #[error("the transaction already has the maximum of {limit} open consent requests")]
    TooManyConsents {
        /// The limit that was reached.
        limit: usize,
    },
}

/// One token's place in its transaction's tree, from [`TokenStore::txn_tree`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    /// The token.
    pub id: TokenId,
    /// The token it was derived from; `None` at the root.
    pub parent: Option<TokenId>,
    /// When it was issued (orders siblings).
    pub issued_at: UnixMillis,
}

impl TreeEntry {
    /// Where `record` sits in its tree.
    pub fn of(record: &TokenRecord) -> TreeEntry {
        TreeEntry {
            id: record.token_id,
            parent: record.parent,
            issued_at: record.issued_at,
        }
    }
}

/// What [`TokenStore::revoke`] revokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevokeTarget {
    /// One token and every descendant derived from it through
    /// [`TokenStore::insert_child`]; each gets this token as its revocation's `cause`.
    Token(TokenId),
    /// Every token of one transaction; each is its own `cause`.
    Txn(TxnId),
}

impl RevokeTarget {
    /// The token named, if the target is one token's subtree.
    pub fn token(self) -> Option<TokenId> {
        match self {
            RevokeTarget::Token(t) => Some(t),
            RevokeTarget::Txn(_) => None,
        }
    }
}

/// The result of [`TokenStore::consume_use`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UseOutcome {
    /// One use was consumed. `remaining` is how many are left after it; `None` for a
    /// token with unlimited uses (for which nothing is written).
    Consumed {
        /// Uses left after this one; `None` when unlimited.
        remaining: Option<u32>,
    },
    /// Every use is already consumed (or reserved by children); nothing changed.
    Exhausted,
    /// The token is revoked; nothing changed.
    Revoked,
    /// No such token.
    Unknown,
}

/// The result of [`TokenStore::purge_expired`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PurgeStats {
    /// How many tokens were deleted (with everything that belongs to them); strictly,
    /// how many expiry-index entries, so a stray entry whose record is already gone
    /// (say, deleted by a concurrent purge) counts too.
    pub tokens: usize,
    /// Whether tokens that expired before the cutoff remain, so another call has work.
    pub more: bool,
}

/// Key counts of a store, from [`TokenStore::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoreStats {
    /// Stored token records.
    pub tokens: u64,
    /// Entries in every per-token key space besides the records: the `txn_tokens`,
    /// `expiry` and `children` indexes and the `state` rows.
    pub index_entries: u64,
    /// Entries of the transaction-listing indexes (`txns`, `subject_txns`, `party_txns`,
    /// `txn_parties`): a handful per transaction, gone with its root token.
    pub txn_index_entries: u64,
    /// Stored audit events (kept apart from tokens, with their own retention).
    pub events: u64,
    /// Stored consent requests (kept until `purge_consents`, apart from tokens).
    pub consents: u64,
    /// Entries of the consent indexes (`consent_keys`, `consent_open`, `consent_txns`).
    pub consent_index_entries: u64,
}

/// What [`TokenStore::revoke`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The tokens newly revoked, in walk order.
    pub ids: Vec<TokenId>,
    /// The audit event written with the revocation; `None` when nothing was newly
    /// revoked, in which case nothing at all was written.
    pub event: Option<Event>,
}

/// Most token ids a [`PartyRevoked`] lists: a party may have held very many tokens, and
/// the answer stays bounded (the counts are always whole).
pub const MAX_PARTY_REVOKED_IDS: usize = 1000;

/// What [`TokenStore::revoke_party`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartyRevoked {
    /// Tokens newly revoked, at most [`MAX_PARTY_REVOKED_IDS`] of them, in no particular
    /// order; [`revoked`](Self::revoked) counts them all.
    pub ids: Vec<TokenId>,
    /// How many tokens were newly revoked.
    pub revoked: u64,
    /// Transactions in which something was newly revoked: one `revoked` event each.
    pub txns: u64,
    /// Transactions examined: the party's entries in the `party_txns` index.
    pub scanned: u64,
}

impl PartyRevoked {
    /// Counts one examined transaction and what was newly revoked in it.
    pub(crate) fn add(&mut self, ids: Vec<TokenId>) {
        self.scanned += 1;
        if ids.is_empty() {
            return;
        }
        self.txns += 1;
        self.revoked += ids.len() as u64;
        let room = MAX_PARTY_REVOKED_IDS.saturating_sub(self.ids.len());
        self.ids.extend(ids.into_iter().take(room));
    }
}

/// Transactions per page of a party's walk through the `party_txns` index (see
/// [`TokenStore::revoke_party`]), in every backend: the walk holds one page of ids at a
/// time.
pub(crate) const PARTY_PAGE: usize = 256;

/// Where a store call that writes an unknown number of audit events (one per transaction,
/// [`TokenStore::revoke_party`]) gets their ids, and how it reports each one back.
///
/// An event and the change it describes are one atomic write, and an issued id must stay
/// visible as pending until its event is stored (readers paging by id show nothing past a
/// pending id), so the ids cannot be handed over in advance: the store asks for one just
/// before each write and settles it right after. The server implements this over its event
/// clock (issue a pending id; on `stored`, announce the event and settle the id; on
/// `abandoned`, settle it).
///
/// The store calls it from its own threads while it holds a transaction's lock: every
/// method must be quick and must not call the store.
pub trait EventIssuer: Send + Sync + 'static {
    /// A new event id, later than every id issued before it; its time is the change's.
    fn issue(&self) -> EventId;
    /// `event` (under an id from [`issue`](Self::issue)) is stored, with its change.
    fn stored(&self, event: Event);
    /// Nothing is stored under `id`: its transaction's write failed.
    fn abandoned(&self, id: EventId);
}

/// Does `party` hold `record` (its audience) or present it (its current actor, who derived
/// it)? The tokens [`TokenStore::revoke_party`] revokes, with their subtrees.
fn involves(record: &TokenRecord, party: &str) -> bool {
    record.audience.id == party || record.current_actor().id == party
}

/// One token of a transaction as [`party_revocations`] sees it.
struct PartyNode {
    /// The token.
    id: TokenId,
    /// The token it was derived from.
    parent: Option<TokenId>,
    /// Its current state.
    state: TokenState,
    /// Whether the party holds or presents it ([`involves`]).
    involved: bool,
}

/// What disabling `party` revokes in one transaction, read under its serialisation, the
/// same way by every backend: the transaction's `tree`, each token's state through
/// `state_of` and, only for a token not yet revoked, its record through `record_of` (a
/// revoked token changes nothing, so a second walk reads states alone). A token whose
/// record is gone is not the party's. Returns [`party_revocations`] of it and a record of
/// the transaction for the event, or `None` when every token is revoked already (or the
/// transaction is gone): nothing to do.
pub(crate) fn party_txn_revocations<R: std::borrow::Borrow<TokenRecord>>(
    tree: Vec<TreeEntry>,
    party: &str,
    mut state_of: impl FnMut(TokenId) -> Result<TokenState, StoreError>,
    mut record_of: impl FnMut(TokenId) -> Result<Option<R>, StoreError>,
) -> Result<Option<PartyTodo>, StoreError> {
    let mut nodes = Vec::with_capacity(tree.len());
    let mut any: Option<TokenRecord> = None;
    for entry in tree {
        let state = state_of(entry.id)?;
        let involved = match state.revoked {
            Some(_) => false,
            None => match record_of(entry.id)? {
                Some(record) => {
                    let record = record.borrow();
                    if any.is_none() {
                        any = Some(record.clone());
                    }
                    involves(record, party)
                }
                None => false,
            },
        };
        nodes.push(PartyNode {
            id: entry.id,
            parent: entry.parent,
            state,
            involved,
        });
    }
    Ok(any.map(|any| (party_revocations(nodes), any)))
}

/// One transaction's part of a party's revocation, from [`party_txn_revocations`]: each
/// `(token, its state, cause)` to revoke, and a record of the transaction for the event.
pub(crate) type PartyTodo = (Vec<(TokenId, TokenState, TokenId)>, TokenRecord);

/// What disabling a party revokes in one transaction, given every token of it: each token
/// not yet revoked that the party is involved in, and every not yet revoked descendant of
/// one, as `(token, its state, cause)`. The cause is the topmost involved token above (or
/// at) the token, as if that token had been revoked with [`RevokeTarget::Token`]. Walks the
/// tree from its roots through the parent links, so it needs no order of `nodes`. The one
/// rule every backend applies, under the transaction's serialisation.
fn party_revocations(nodes: Vec<PartyNode>) -> Vec<(TokenId, TokenState, TokenId)> {
    let ids: std::collections::BTreeSet<TokenId> = nodes.iter().map(|n| n.id).collect();
    let mut children: BTreeMap<TokenId, Vec<usize>> = BTreeMap::new();
    let mut queue = VecDeque::new();
    for (i, n) in nodes.iter().enumerate() {
        match n.parent.filter(|p| ids.contains(p)) {
            Some(p) => children.entry(p).or_default().push(i),
            // A root, or (never, as a child does not outlive its parent) an orphan.
            None => queue.push_back((i, None)),
        }
    }
    let mut nodes: Vec<Option<PartyNode>> = nodes.into_iter().map(Some).collect();
    let mut out = Vec::new();
    while let Some((i, inherited)) = queue.pop_front() {
        let Some(node) = nodes.get_mut(i).and_then(Option::take) else {
            continue;
        };
        // A revoked token's descendants were revoked with it; nothing new below it.
        let cause = match node.state.revoked {
            Some(_) => None,
            None => inherited.or(node.involved.then_some(node.id)),
        };
        for &child in children.get(&node.id).map_or(&[][..], Vec::as_slice) {
            queue.push_back((child, cause));
        }
        if let Some(cause) = cause {
            out.push((node.id, node.state, cause));
        }
    }
    out
}

/// The reason a disabled party's revocations and their events carry: `party <id>
/// disabled: <reason>`, bounded as every event detail is.
pub(crate) fn party_reason(party: &str, reason: &str) -> String {
    bounded_detail(format!("party {party} disabled: {reason}"))
}

/// The revocation rule of [`TokenStore::revoke`] and [`TokenStore::revoke_party`]: each
/// token of `todo` (`(token, its state, cause)`) not revoked yet gets a revocation at `at`
/// by `by` for `reason` with its cause; one already revoked is left out, as a revocation is
/// never overwritten. Returns the tokens newly revoked with their new states, in `todo`'s
/// order.
pub(crate) fn mark_revoked(
    todo: impl IntoIterator<Item = (TokenId, TokenState, TokenId)>,
    at: UnixMillis,
    by: &Actor,
    reason: &str,
) -> Vec<(TokenId, TokenState)> {
    todo.into_iter()
        .filter(|(_, state, _)| state.revoked.is_none())
        .map(|(token, mut state, cause)| {
            state.revoked = Some(Revocation {
                at,
                by: by.id.clone(),
                reason: reason.to_owned(),
                cause,
            });
            (token, state)
        })
        .collect()
}

/// Writes one transaction's part of a party's revocation: when `todo` (from
/// [`party_revocations`]) is not empty, issues an event id, marks every token revoked at
/// its time with `by` and `reason` ([`mark_revoked`]), builds the `revoked` event (about the one token whose
/// subtree this is, or none when there are several) and hands both to `write`, which must
/// store them in one atomic write. Reports the event to `events` as stored or abandoned.
/// Returns the ids newly revoked; nothing is issued or written for an empty `todo`.
pub(crate) fn commit_party_txn(
    todo: Vec<(TokenId, TokenState, TokenId)>,
    any: &TokenRecord,
    by: &Actor,
    reason: &str,
    events: &dyn EventIssuer,
    write: impl FnOnce(&[(TokenId, TokenState)], &Event) -> Result<(), StoreError>,
) -> Result<Vec<TokenId>, StoreError> {
    let Some((states, event)) = plan_party_txn(todo, any, by, reason, events) else {
        return Ok(Vec::new());
    };
    let written = write(&states, &event);
    settle_party_txn(states, event, written, events)
}

/// The first half of [`commit_party_txn`], for a backend whose write is asynchronous:
/// issues the event id and builds the new states and the event (`None` for an empty
/// `todo`: nothing issued). Hand the write's result to [`settle_party_txn`].
pub(crate) fn plan_party_txn(
    todo: Vec<(TokenId, TokenState, TokenId)>,
    any: &TokenRecord,
    by: &Actor,
    reason: &str,
    events: &dyn EventIssuer,
) -> Option<(Vec<(TokenId, TokenState)>, Event)> {
    let &(_, _, first) = todo.first()?;
    let single = todo.iter().all(|&(_, _, cause)| cause == first);
    let id = events.issue();
    let states = mark_revoked(todo, id.at(), by, reason);
    let event = Event::revoked(id, any, single.then_some(first), by, reason, states.len());
    Some((states, event))
}

/// The second half of [`commit_party_txn`]: reports the event as stored or abandoned and
/// returns the ids newly revoked.
pub(crate) fn settle_party_txn(
    states: Vec<(TokenId, TokenState)>,
    event: Event,
    written: Result<(), StoreError>,
    events: &dyn EventIssuer,
) -> Result<Vec<TokenId>, StoreError> {
    match written {
        Ok(()) => {
            events.stored(event);
            Ok(states.into_iter().map(|(token, _)| token).collect())
        }
        Err(e) => {
            events.abandoned(event.id);
            Err(e)
        }
    }
}

/// The use rule of [`TokenStore::consume_use`] for a token with `max` uses, applied to its
/// current state under the transaction's serialisation: a revoked token spends nothing,
/// an exhausted one neither; otherwise one use is counted in `state`.
pub(crate) fn spend_use(max: u32, state: &mut TokenState) -> UseOutcome {
    if state.revoked.is_some() {
        return UseOutcome::Revoked;
    }
    if state.uses >= max {
        return UseOutcome::Exhausted;
    }
    state.uses += 1;
    UseOutcome::Consumed {
        remaining: Some(max - state.uses),
    }
}

/// Most index entries one [`TokenStore::list_txns`] call examines, so a selective status
/// filter costs bounded work per call; the caller continues from the returned cursor.
pub const MAX_TXN_SCAN: usize = 10_000;

/// Which transactions [`TokenStore::list_txns`] returns: newest first, each filter
/// optional, all given filters must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnQuery {
    /// Only transactions acting for this user.
    pub subject: Option<String>,
    /// Only transactions in which this party acted or was an audience.
    pub party: Option<String>,
    /// Only transactions minted at or after this instant.
    pub since: Option<UnixMillis>,
    /// Only transactions minted before this instant.
    pub until: Option<UnixMillis>,
    /// Only transactions whose root token has this status at `now`.
    pub status: Option<Status>,
    /// The instant statuses are computed at.
    pub now: UnixMillis,
    /// Continue after this transaction (a previous page's `next`): only older ones.
    pub before: Option<TxnId>,
    /// Most transactions to return (at least 1).
    pub limit: usize,
}

/// One page of [`TokenStore::list_txns`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPage {
    /// Each matching transaction's root token and its state, newest first.
    pub roots: Vec<(TokenRecord, TokenState)>,
    /// Where to continue (pass as `before`); `None` when the scan reached the end of the
    /// range. A full page always returns a cursor, so the page after it may be empty.
    pub next: Option<TxnId>,
}

/// Does the transaction of `root` match the filters of `query` that its index scan did
/// not apply? Stores scan the party index when `party` is given (else the subject index
/// when `subject` is, else all transactions), bounded by the time window and cursor;
/// this checks the rest. One rule for every backend.
pub(crate) fn txn_matches(query: &TxnQuery, root: &TokenRecord, state: &TokenState) -> bool {
    query.subject.as_ref().is_none_or(|s| *s == root.subject)
        && query
            .status
            .is_none_or(|want| lifecycle::status(root, state, query.now) == want)
}

/// The transaction-id range a query scans: from `since` (inclusive) to the earlier of
/// `until` and the cursor (exclusive). Transaction ids begin with their mint time.
pub(crate) fn txn_range(query: &TxnQuery) -> (TxnId, Option<TxnId>) {
    let lo = TxnId::new(query.since.unwrap_or(UnixMillis(0)), [0; 10]);
    let until = query.until.map(|u| TxnId::new(u, [0; 10]));
    let hi = match (until, query.before) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (lo, hi)
}

/// Builds a page from `candidates` (transaction ids from an index, newest first, already
/// within [`txn_range`]), reading each one's root through `root_of` and keeping those
/// that [`txn_matches`]. Stops at `query.limit` matches or [`MAX_TXN_SCAN`] candidates.
pub(crate) fn collect_page(
    query: &TxnQuery,
    candidates: impl Iterator<Item = Result<TxnId, StoreError>>,
    mut root_of: impl FnMut(TxnId) -> Result<Option<(TokenRecord, TokenState)>, StoreError>,
) -> Result<TxnPage, StoreError> {
    let mut pager = TxnPager::new(query);
    for candidate in candidates {
        let txn = candidate?;
        if let Some(page) = pager.offer(txn, root_of(txn)?) {
            return Ok(page);
        }
    }
    Ok(pager.end())
}

/// [`collect_page`] one candidate at a time, for a backend that reads candidates and
/// their roots in batches (asynchronously): the same rule, in one place.
pub(crate) struct TxnPager<'q> {
    query: &'q TxnQuery,
    roots: Vec<(TokenRecord, TokenState)>,
    scanned: usize,
}

impl<'q> TxnPager<'q> {
    pub(crate) fn new(query: &'q TxnQuery) -> TxnPager<'q> {
        TxnPager {
            query,
            roots: Vec::new(),
            scanned: 0,
        }
    }

    /// Examines the next candidate (newest first) with its root, if it has one. `Some`
    /// when the page is complete (its limit or the scan budget reached).
    pub(crate) fn offer(
        &mut self,
        txn: TxnId,
        root: Option<(TokenRecord, TokenState)>,
    ) -> Option<TxnPage> {
        if let Some((record, state)) = root
            && txn_matches(self.query, &record, &state)
        {
            self.roots.push((record, state));
        }
        self.scanned += 1;
        if self.roots.len() >= self.query.limit.max(1) || self.scanned >= MAX_TXN_SCAN {
            return Some(TxnPage {
                roots: std::mem::take(&mut self.roots),
                next: Some(txn),
            });
        }
        None
    }

    /// The page when the candidates ran out.
    pub(crate) fn end(self) -> TxnPage {
        TxnPage {
            roots: self.roots,
            next: None,
        }
    }
}

/// Most open (pending or approved, unexpired) consent requests one transaction may have:
/// a holder cannot make the store keep unbounded requests for one transaction.
pub const MAX_OPEN_CONSENTS_PER_TXN: usize = 32;

/// What [`TokenStore::insert_consent`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsentInsert {
    /// The request was stored with its event.
    Inserted,
    /// An identical request (same [`ConsentRequest::key`]) is open: nothing was written,
    /// and this is that request.
    Existing(Box<ConsentRequest>),
}

/// Which consent requests [`TokenStore::list_consents`] returns: newest first (by id),
/// each filter optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentQuery {
    /// Only requests with this status at `now`.
    pub status: Option<ConsentStatus>,
    /// Only requests for this user.
    pub subject: Option<String>,
    /// Only requests of this transaction.
    pub txn: Option<TxnId>,
    /// The instant statuses are computed at.
    pub now: UnixMillis,
    /// Continue after this request (a previous page's `next`): only older ones.
    pub before: Option<ConsentId>,
    /// Most requests to return (at least 1).
    pub limit: usize,
}

/// One page of [`TokenStore::list_consents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentPage {
    /// Matching requests, newest first.
    pub requests: Vec<ConsentRequest>,
    /// Where to continue (pass as `before`); `None` when the scan reached the end. Like
    /// [`TxnPage::next`], bounded by [`MAX_TXN_SCAN`] requests examined per call.
    pub next: Option<ConsentId>,
}

/// Does `r` match the filters of `query`? One rule for every backend.
pub(crate) fn consent_matches(query: &ConsentQuery, r: &ConsentRequest) -> bool {
    query.subject.as_ref().is_none_or(|s| *s == r.subject)
        && query.txn.is_none_or(|t| t == r.txn)
        && query.status.is_none_or(|want| r.status(query.now) == want)
}

/// Is `r` open at `now` ([`ConsentRequest::is_open`])? An open request with the same key
/// is answered instead of a new one, and open requests count against
/// [`MAX_OPEN_CONSENTS_PER_TXN`].
pub(crate) fn consent_open(r: &ConsentRequest, now: UnixMillis) -> bool {
    r.is_open(now)
}

/// Can `r` still change ([`ConsentRequest::can_change`])? Such a request stays in the open
/// index until it is closed, and is never purged.
pub(crate) fn consent_changeable(r: &ConsentRequest) -> bool {
    r.can_change()
}

/// Builds a page of [`TokenStore::list_consents`] from `candidates` (newest first, already
/// before the cursor; `None` for an index entry whose request is gone), keeping those that
/// [`consent_matches`]. Stops at `query.limit` matches or [`MAX_TXN_SCAN`] candidates,
/// with the last one examined as the cursor, as [`collect_page`] does.
pub(crate) fn collect_consent_page(
    query: &ConsentQuery,
    candidates: impl Iterator<Item = Result<(ConsentId, Option<ConsentRequest>), StoreError>>,
) -> Result<ConsentPage, StoreError> {
    let mut pager = ConsentPager::new(query);
    for candidate in candidates {
        let (id, request) = candidate?;
        if let Some(page) = pager.offer(id, request) {
            return Ok(page);
        }
    }
    Ok(pager.end())
}

/// [`collect_consent_page`] one candidate at a time (see [`TxnPager`]).
pub(crate) struct ConsentPager<'q> {
    query: &'q ConsentQuery,
    requests: Vec<ConsentRequest>,
    scanned: usize,
}

impl<'q> ConsentPager<'q> {
    pub(crate) fn new(query: &'q ConsentQuery) -> ConsentPager<'q> {
        ConsentPager {
            query,
            requests: Vec::new(),
            scanned: 0,
        }
    }

    /// Examines the next candidate (newest first). `Some` when the page is complete.
    pub(crate) fn offer(
        &mut self,
        id: ConsentId,
        request: Option<ConsentRequest>,
    ) -> Option<ConsentPage> {
        if let Some(r) = request
            && consent_matches(self.query, &r)
        {
            self.requests.push(r);
        }
        self.scanned += 1;
        if self.requests.len() >= self.query.limit.max(1) || self.scanned >= MAX_TXN_SCAN {
            return Some(ConsentPage {
                requests: std::mem::take(&mut self.requests),
                next: Some(id),
            });
        }
        None
    }

    /// The page when the candidates ran out.
    pub(crate) fn end(self) -> ConsentPage {
        ConsentPage {
            requests: self.requests,
            next: None,
        }
    }
}

/// Storage for token records.
///
/// Every mutation of a token's state (`insert_child`, `revoke`, `revoke_party`,
/// `consume_use`, and `insert`) runs its read-check-write serialised with every other
/// mutation of the same transaction, so none loses an update and a child derived while an
/// ancestor is being revoked is either revoked with it or refused.
///
/// Futures must be polled inside a Tokio runtime. Dropping a pending future abandons the
/// operation at most while it has not started (say, while it waits for its
/// transaction): a write whose future was dropped may still land.
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new root record, all its index entries (including the transaction's, for
    /// [`list_txns`](TokenStore::list_txns)) and its `minted` audit event in one atomic
    /// write; durable before it resolves when the store is opened with
    /// [`Durability::Sync`](crate::Durability::Sync). `Err(Conflict)` if the id exists.
    fn insert(
        &self,
        record: TokenRecord,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One point read by public token id.
    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Returns once what the store holds of `txn` is as durable as a write it
    /// acknowledges: for an answer that was read rather than written ("revoked already",
    /// a retry answered with the token an earlier attempt stored), whose write may have
    /// failed to be acknowledged. On RocksDB, a wait for the writer's next group sync
    /// (a write of the group in hand is visible before it is synced); a replication
    /// barrier on a replicated store; a no-op in memory.
    fn sync(&self, txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every token of one transaction with its place in the tree (parent, issue time),
    /// in key order (byte order of the token id), from an index scan: neither a full scan
    /// nor (for tokens written by this schema) a read of their records.
    fn txn_tree(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TreeEntry>, StoreError>> + Send;

    /// The mutable state of a token: the default state if the token exists but has never
    /// changed, `None` if it does not exist.
    fn state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send;

    /// A token's record and its state in one round trip: what Validate, Downscope and the
    /// chain views need, read together.
    fn get_with_state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send;

    /// Stores a child token derived from `record.parent`, atomically with respect to
    /// every other mutation of the transaction. Refuses, writing nothing:
    /// [`Conflict`](StoreError::Conflict) if the child's id exists,
    /// [`ParentMissing`](StoreError::ParentMissing) if `record.parent` is `None` or names
    /// no token of `record.txn`, [`ParentRevoked`](StoreError::ParentRevoked),
    /// [`FanOutExceeded`](StoreError::FanOutExceeded) if the parent already has
    /// `max_children` children, and [`UsesExhausted`](StoreError::UsesExhausted) if both
    /// have a `max_uses` and the parent's consumed plus reserved uses plus the child's
    /// would exceed the parent's.
    ///
    /// On success, in one atomic write (durable per the store's durability): the record
    /// and its indexes, the parent→child link, the parent's state with `children`
    /// incremented and, when both have a `max_uses`, the child's uses added to `uses`,
    /// and the `downscoped` audit event.
    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes a token and every descendant (or every token of a transaction) in one
    /// atomic write, skipping tokens already revoked: a revocation is never overwritten.
    /// The same write appends the `revoked` audit event, with id `event` (whose time is
    /// the revocation's). Returns the ids newly revoked and the event.
    ///
    /// When nothing is newly revoked (everything named is revoked already), nothing is
    /// written, neither state nor event (nor an fsync): the answer is no ids and
    /// `event: None`. [`NotFound`](StoreError::NotFound) for an unknown token, and for a
    /// transaction that holds no token (unknown, or purged whole).
    fn revoke(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        event: EventId,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send;

    /// The kill switch's revocation: revokes every token `party` holds or presents (each
    /// not yet revoked whose audience or current actor is `party`) with every descendant,
    /// in every transaction. The party's own disablement is
    /// [`set_party_disabled`](TokenStore::set_party_disabled); this changes only tokens.
    ///
    /// Walks the `party_txns` index for `party` (every transaction in which it acted or
    /// was an audience) a page at a time, never loading it whole, and handles each
    /// transaction under its serialisation, as [`revoke`](TokenStore::revoke) does: one
    /// atomic write per transaction with something new to revoke, holding every token
    /// revoked there and one `revoked` audit event (actor `by`; reason `party <party>
    /// disabled: <reason>`, bounded; `token` the one token whose subtree was revoked, or
    /// `None` when the party held several apart in the transaction). Every token revoked
    /// gets that reason, `by`, the event's time, and as its `cause` the topmost token of the
    /// party above it or itself. Descendants are revoked whoever holds them: a token where
    /// the party is only an earlier actor descends from one the party held. Already-revoked
    /// tokens are skipped, and a transaction with nothing new writes nothing and issues no
    /// event id: a second call revokes nothing and writes nothing. Expired tokens still
    /// stored are revoked too: they are inactive only by the clock, which may step back.
    ///
    /// Event ids: how many events there will be is known only as the walk goes, so
    /// `events` issues each one just before its transaction's write and is told right
    /// after whether it was stored (see [`EventIssuer`]).
    ///
    /// What the walk sees: a token's record and its index entries are one atomic write,
    /// so every token stored before this call starts is found. A token stored while the
    /// walk runs may be missed: the caller must first stop admitting new tokens for the
    /// party (and let inserts already admitted finish). A child that another party derives
    /// under one of the party's tokens meanwhile is revoked with it or refused, as for
    /// `revoke`. Several transactions may be in hand at once, each under its own lock
    /// (never two locks held by one write).
    ///
    /// On an error the transactions already handled stay revoked: call again. A store
    /// whose transactions fail apart (Redis, by shard) walks on past a transaction it
    /// cannot revoke and answers the first error once it has tried every one. A future dropped mid-walk stops it between transactions (a transaction
    /// being written lands whole, with its event).
    ///
    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<PartyRevoked, StoreError>> + Send;

    /// Records (`Some`) or clears (`None`) a party's disablement, kept until cleared,
    /// across restarts. Recording replaces an earlier record of the party; clearing one
    /// that is not there does nothing. Durable before it resolves, whatever the store's
    /// durability. Touches no token: disabling revokes nothing by itself
    /// ([`revoke_party`](TokenStore::revoke_party) does), and enabling restores nothing.
    /// The reason is cut to `writ_core::limits::MAX_DETAIL_BYTES` if it is longer.
    fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every disabled party with its record, in byte order of the ids. Read whole: the
    /// server loads it once at start and keeps the set in memory.
    fn disabled_parties(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PartyDisable)>, StoreError>> + Send;

    /// Atomically consumes one use of a token, if it is known, not revoked and not
    /// exhausted. Expiry is not checked here. On `Consumed`, `event` (the validation that
    /// spent the use) is written in the same atomic write, so a spent use is never
    /// missing from the trail; otherwise it is not written.
    fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send;

    /// Deletes up to `max_tokens` tokens whose `expires_at < cutoff`, found in expiry
    /// order through the expiry index (never a scan of live data), and with each one
    /// everything that belongs to it: its record, state row, transaction-index and
    /// expiry-index entries, its link under its parent and every link under itself.
    /// A child never outlives its parent, so a lineage expires (and goes) together.
    ///
    /// Each token is deleted under its transaction's lock, so a concurrent
    /// `insert_child` under an expiring parent either lands first (and its link is
    /// deleted with the parent) or finds the parent gone
    /// ([`ParentMissing`](StoreError::ParentMissing)). Deletes are written in batches,
    /// durable per the store's durability by the time the call returns. `more` says
    /// whether expired tokens below the cutoff remain.
    fn purge_expired(
        &self,
        cutoff: UnixMillis,
        max_tokens: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send;

    /// Counts the records and the index and state entries. A diagnostic for tests and
    /// operators: it scans every key space in full, so its cost grows with the store;
    /// never call it on a request path.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;

    /// Transactions matching `query`, newest first, through the transaction, subject or
    /// party index (never a scan of the tokens), examining at most [`MAX_TXN_SCAN`]
    /// index entries per call. A transaction is listed while its root token is stored.
    fn list_txns(
        &self,
        query: TxnQuery,
    ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send;

    /// Appends audit events that accompany no token change (validated, refused), in one
    /// atomic write. Ids must be unique. Once it returns the events survive a crash of
    /// the process; against power loss they may stay buffered until the store's next
    /// durable write (nobody waits on them, so they are not synced one batch at a time).
    fn append_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` events of one transaction with ids after `after`, in id order. On a
    /// store several nodes write, two events may share an id; such events are never split
    /// between pages, so a page may then hold a few more than `limit`.
    fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The greatest event id stored, so a restarted issuer keeps ids increasing.
    fn last_event_id(&self) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send;

    /// Deletes up to `max_events` events older than `cutoff`, oldest first, through the
    /// event log's time order. Independent of token purging: the audit trail has its own
    /// retention. `PurgeStats::tokens` counts events here.
    fn purge_events(
        &self,
        cutoff: UnixMillis,
        max_events: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send;

    /// Stores a new consent request with its `consent_requested` event, serialised with
    /// every other mutation of its transaction. If an open request
    /// (`consent_open` at `request.created_at`) has the same [`ConsentRequest::key`],
    /// writes nothing and answers [`ConsentInsert::Existing`] with it. Refuses, writing
    /// nothing: [`TooManyConsents`](StoreError::TooManyConsents) when the transaction
    /// already has [`MAX_OPEN_CONSENTS_PER_TXN`] open requests,
    /// [`Conflict`](StoreError::Conflict) when the id exists. Durable per the store's
    /// durability.
    fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send;

    /// One consent request by id.
    fn consent(
        &self,
        id: ConsentId,
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send;

    /// The most recent request stored under `key` ([`ConsentRequest::key`]), whatever
    /// its status (the caller judges it): what Validate names in a `CONSENT_REQUIRED`
    /// answer.
    fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send;

    /// Records a decision ([`ConsentRequest::decide`], the one rule) and its event
    /// (`consent_approved` or `consent_denied`) in one atomic write under the
    /// transaction's serialisation. [`NotFound`](StoreError::NotFound) for an unknown id,
    /// [`Consent`](StoreError::Consent) when the rule refuses (decided, expired, another
    /// subject). Returns the request as stored. Durable before it resolves, whatever the
    /// store's durability.
    fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send;

    /// Redeems an approved request for `child` (a child of `child.parent`, which must be
    /// the request's token) in one atomic write under the transaction's serialisation:
    /// [`ConsentRequest::redeem`] by `by` at `child.issued_at` (the one rule: requester,
    /// token, approved, unexpired, once), then everything
    /// [`insert_child`](TokenStore::insert_child) checks and writes (`admit_child`),
    /// the request as redeemed, and `event` (`consent_redeemed`). Refuses, writing
    /// nothing, with `insert_child`'s errors, [`NotFound`](StoreError::NotFound) for an
    /// unknown id, and [`Consent`](StoreError::Consent) (the rule's refusals first;
    /// `WrongToken` also for a child without a parent). A refusal by `insert_child`'s
    /// checks (say, the parent revoked) leaves the request approved. Durable before it
    /// resolves.
    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send;

    /// Marks requests that may still change (pending, or approved and not redeemed) but
    /// are past their expiry at `now` as expired ([`ConsentRequest::expire`]), each under
    /// its transaction's serialisation with a `consent_expired` event (actor `by`) in the
    /// same atomic write, whose id `events` issues just before that write (see
    /// [`EventIssuer`]), in expiry order through an index of such requests (never a scan
    /// of every request), examining at most `max` entries of that index. Returns how
    /// many it expired and whether more remain. A request is marked once: a second call
    /// writes nothing for it. Durable per the store's durability.
    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send;

    /// Deletes up to `max` requests created before `cutoff` (oldest first, by id) that
    /// can no longer change (denied, redeemed, or marked expired: one past its expiry
    /// that [`expire_consents`](TokenStore::expire_consents) has not marked yet is kept,
    /// so its expiry reaches the trail), with every index entry of theirs; the newest
    /// request under an action key keeps the key's entry. Examines at most
    /// [`MAX_TXN_SCAN`] requests per call. `PurgeStats::tokens` counts requests here;
    /// `more` says whether a deletable one remains (when the scan budget ends the call
    /// first, whether this call deleted anything, so a caller looping on `more` never
    /// spins on requests it cannot delete). Never touches tokens or events.
    fn purge_consents(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send;

    /// Consent requests matching `query`, newest first, examining at most
    /// [`MAX_TXN_SCAN`] requests per call.
    fn list_consents(
        &self,
        query: ConsentQuery,
    ) -> impl Future<Output = Result<ConsentPage, StoreError>> + Send;
}

/// A shared store is a store, so servers can hold `Arc<S>` and still pass it on as `S`.
impl<T: TokenStore> TokenStore for Arc<T> {
    fn insert(
        &self,
        record: TokenRecord,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::insert(self, record, event)
    }

    fn get(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send {
        T::get(self, id)
    }

    fn sync(&self, txn: TxnId) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::sync(self, txn)
    }

    fn txn_tree(
        &self,
        txn: TxnId,
    ) -> impl Future<Output = Result<Vec<TreeEntry>, StoreError>> + Send {
        T::txn_tree(self, txn)
    }

    fn state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<TokenState>, StoreError>> + Send {
        T::state(self, id)
    }

    fn get_with_state(
        &self,
        id: TokenId,
    ) -> impl Future<Output = Result<Option<(Arc<TokenRecord>, TokenState)>, StoreError>> + Send
    {
        T::get_with_state(self, id)
    }

    fn insert_child(
        &self,
        record: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::insert_child(self, record, max_children, event)
    }

    fn revoke(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        event: EventId,
    ) -> impl Future<Output = Result<Revoked, StoreError>> + Send {
        T::revoke(self, target, by, reason, event)
    }

    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<PartyRevoked, StoreError>> + Send {
        T::revoke_party(self, party, by, reason, events)
    }

    fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::set_party_disabled(self, party, disabled)
    }

    fn disabled_parties(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PartyDisable)>, StoreError>> + Send {
        T::disabled_parties(self)
    }

    fn consume_use(
        &self,
        id: TokenId,
        event: Option<Event>,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send {
        T::consume_use(self, id, event)
    }

    fn purge_expired(
        &self,
        cutoff: UnixMillis,
        max_tokens: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        T::purge_expired(self, cutoff, max_tokens)
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        T::stats(self)
    }

    fn list_txns(
        &self,
        query: TxnQuery,
    ) -> impl Future<Output = Result<TxnPage, StoreError>> + Send {
        T::list_txns(self, query)
    }

    fn append_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::append_events(self, events)
    }

    fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        T::events(self, txn, after, limit)
    }

    fn last_event_id(&self) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
        T::last_event_id(self)
    }

    fn purge_events(
        &self,
        cutoff: UnixMillis,
        max_events: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        T::purge_events(self, cutoff, max_events)
    }

    fn insert_consent(
        &self,
        request: ConsentRequest,
        event: Event,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send {
        T::insert_consent(self, request, event)
    }

    fn consent(
        &self,
        id: ConsentId,
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        T::consent(self, id)
    }

    fn consent_by_key(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Option<ConsentRequest>, StoreError>> + Send {
        T::consent_by_key(self, key)
    }

    fn decide_consent(
        &self,
        id: ConsentId,
        decision: Decision,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        T::decide_consent(self, id, decision, event)
    }

    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        T::redeem_consent(self, id, by, child, max_children, event)
    }

    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>,
    ) -> impl Future<Output = Result<(usize, bool), StoreError>> + Send {
        T::expire_consents(self, now, max, by, events)
    }

    fn purge_consents(
        &self,
        cutoff: UnixMillis,
        max: usize,
    ) -> impl Future<Output = Result<PurgeStats, StoreError>> + Send {
        T::purge_consents(self, cutoff, max)
    }

    fn list_consents(
        &self,
        query: ConsentQuery,
    ) -> impl Future<Output = Result<ConsentPage, StoreError>> + Send {
        T::list_consents(self, query)
    }
}

/// The rule every backend applies, while it holds the transaction's serialisation,
/// before a child joins its parent: the parent is not revoked, has room for another
/// child, the transaction has room for another token, and the parent's remaining uses
/// cover the child's. On success `parent_state` carries the reservation and the new child
/// count, ready to be written with the child. Kept here, once, so a networked backend
/// enforces exactly the same thing.
pub(crate) fn admit_child(
    parent: &TokenRecord,
    parent_state: &mut TokenState,
    child: &TokenRecord,
    max_children: u32,
    tokens_in_txn: usize,
) -> Result<(), StoreError> {
    if parent_state.revoked.is_some() {
        return Err(StoreError::ParentRevoked);
    }
    if parent_state.children >= max_children {
        return Err(StoreError::FanOutExceeded {
            limit: max_children,
        });
    }
    if tokens_in_txn >= MAX_TOKENS_PER_TXN {
        return Err(StoreError::TxnFull {
            limit: MAX_TOKENS_PER_TXN,
        });
    }
    if let (Some(n), Some(p)) = (child.grant.max_uses, parent.grant.max_uses) {
        match parent_state.uses.checked_add(n) {
            Some(total) if total <= p => parent_state.uses = total,
            _ => return Err(StoreError::UsesExhausted),
        }
    }
    parent_state.children += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Issued, by, record, tid, txn};
    use std::collections::BTreeSet;

    const ROGUE: &str = "agent:rogue";

    /// `(id, parent, held by the rogue, revoked)` of one transaction: R (the root) has the
    /// children A (the rogue's, with a descendant B and a grandchild C the rogue holds
    /// again), D (not the rogue's) and E (the rogue's, revoked already, with its child F).
    fn shape() -> Vec<(u32, Option<u32>, bool, bool)> {
        vec![
            (1, None, false, false),    // R
            (2, Some(1), true, false),  // A
            (3, Some(2), false, false), // B
            (4, Some(3), true, false),  // C
            (5, Some(1), false, false), // D
            (6, Some(1), true, true),   // E
            (7, Some(6), false, true),  // F
        ]
    }

    /// What [`party_txn_revocations`] finds in `shape` given in `order`, and the tokens
    /// whose records it read.
    fn plan(order: &[usize]) -> (BTreeSet<(TokenId, TokenId)>, BTreeSet<TokenId>) {
        let shape = shape();
        let t = txn(1);
        let tree = order
            .iter()
            .map(|&i| {
                let (id, parent, _, _) = shape[i];
                TreeEntry {
                    id: tid(id),
                    parent: parent.map(tid),
                    issued_at: UnixMillis(0),
                }
            })
            .collect();
        let find = |id: TokenId| shape.iter().find(|n| tid(n.0) == id).copied().unwrap();
        let mut read = BTreeSet::new();
        let (todo, any) = party_txn_revocations(
            tree,
            ROGUE,
            |id| {
                let mut state = TokenState::default();
                if find(id).3 {
                    state.revoked = Some(Revocation {
                        at: UnixMillis(1),
                        by: "op".into(),
                        reason: "earlier".into(),
                        cause: tid(6),
                    });
                }
                Ok(state)
            },
            |id| {
                read.insert(id);
                let (n, parent, rogue, _) = find(id);
                let mut r = record(t, tid(n), parent.map(tid));
                if rogue {
                    r.audience.id = ROGUE.into();
                }
                Ok(Some(r))
            },
        )
        .unwrap()
        .expect("live tokens");
        assert_eq!(any.txn, t);
        assert!(todo.iter().all(|(_, s, _)| s.revoked.is_none()));
        let todo = todo.into_iter().map(|(id, _, cause)| (id, cause)).collect();
        (todo, read)
    }

    /// The walk follows the parent links, so a child listed before its parent (as key
    /// order may list it) changes nothing; a revoked token's record is never read.
    #[test]
    fn a_party_transaction_is_planned_the_same_in_any_order() {
        let expected: BTreeSet<(TokenId, TokenId)> = [(2, 2), (3, 2), (4, 2)]
            .map(|(t, c)| (tid(t), tid(c)))
            .into();
        let live: BTreeSet<TokenId> = [1, 2, 3, 4, 5].map(tid).into();
        let n = shape().len();
        let forward: Vec<usize> = (0..n).collect();
        let backward: Vec<usize> = (0..n).rev().collect();
        let mixed = [3, 6, 0, 2, 5, 1, 4];
        for order in [&forward[..], &backward[..], &mixed[..]] {
            assert_eq!(plan(order), (expected.clone(), live.clone()), "{order:?}");
        }
    }

    #[test]
    fn a_party_transaction_with_nothing_live_is_nothing_to_do() {
        let tree = vec![TreeEntry::of(&record(txn(1), tid(1), None))];
        let revoked = TokenState {
            revoked: Some(Revocation {
                at: UnixMillis(1),
                by: "op".into(),
                reason: "r".into(),
                cause: tid(1),
            }),
            ..TokenState::default()
        };
        let found = party_txn_revocations::<TokenRecord>(
            tree,
            ROGUE,
            |_| Ok(revoked.clone()),
            |_| panic!("a revoked token's record is not read"),
        )
        .unwrap();
        assert!(found.is_none());
    }

    /// An event id is issued only for a write, reported stored once it landed, and
    /// abandoned (never stored) when the write failed.
    #[test]
    fn a_party_transaction_settles_its_event_id_either_way() {
        let any = record(txn(1), tid(1), None);
        let op = by("op");
        let issued = Issued::at(UnixMillis(70));
        let nothing = commit_party_txn(Vec::new(), &any, &op, "r", &*issued, |_, _| {
            panic!("nothing to write")
        });
        assert_eq!(nothing, Ok(Vec::new()));
        assert!(issued.issued().is_empty());

        let todo = || {
            vec![
                (tid(2), TokenState::default(), tid(2)),
                (tid(3), TokenState::default(), tid(3)),
            ]
        };
        let failed = commit_party_txn(todo(), &any, &op, "r", &*issued, |_, _| {
            Err(StoreError::Backend("disk full".into()))
        });
        assert_eq!(failed, Err(StoreError::Backend("disk full".into())));
        assert_eq!(*issued.abandoned.lock().unwrap(), issued.issued());
        assert!(issued.stored().is_empty());

        let mut written = None;
        let ids = commit_party_txn(todo(), &any, &op, "r", &*issued, |states, event| {
            written = Some((states.to_vec(), event.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, vec![tid(2), tid(3)]);
        let (states, event) = written.unwrap();
        assert_eq!(issued.stored(), vec![event.clone()]);
        assert_eq!(issued.abandoned.lock().unwrap().len(), 1);
        assert_eq!(event.token, None, "two subtrees");
        assert_eq!(
            event.kind,
            writ_core::EventKind::Revoked {
                reason: "r".into(),
                revoked: 2
            }
        );
        for (id, state) in states {
            let r = state.revoked.unwrap();
            assert_eq!((r.at, r.by.as_str(), r.cause), (UnixMillis(70), "op", id));
        }
    }
}
