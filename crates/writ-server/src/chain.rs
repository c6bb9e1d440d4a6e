//! The operators' view of call chains: a transaction's whole tree, one token with its
//! ancestry (each node with its status and what narrowed relative to its parent), the
//! transaction listing, and the audit trail, stored and live. Read-only; built from the
//! store's indexes, never a scan.
//!
//! A live watch holds a task and a buffer, so watches are bounded: [`MAX_WATCHERS`] per
//! server and [`MAX_WATCHERS_PER_OPERATOR`] per operator, and a watcher that stops
//! reading for [`WATCH_SEND_TIMEOUT`] (or falls [`crate::audit::LIVE_BUFFER`] events
//! behind) is ended with `RESOURCE_EXHAUSTED`, giving its place back.

use crate::audit::Audit;
use crate::auth::{Authenticator, Caller};
use crate::error::ServiceError;
use crate::service::{Service, now};
use crate::signing::{KeyInfo, KeyState, Signer};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use writ_api::convert::{self, status_pb};
use writ_api::pb::{self, chain_service_server::ChainService};
use writ_core::lifecycle;
use writ_core::policy::Role;
use writ_core::{TokenId, TokenRecord, TokenState, UnixMillis};
use writ_store::{ConsentQuery, TokenStore, TreeEntry, TxnQuery};

/// Most bytes of tokens one GetTransaction answer carries; a page stops before the token
/// that would pass it (and always carries at least one). With records bounded by
/// `MAX_RECORD_BYTES`, a page of even the largest tokens stays far below the service's
/// encoding limit.
pub const MAX_TREE_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most WatchEvents streams open at once, server-wide: each holds a task and a buffer.
pub const MAX_WATCHERS: usize = 64;
/// Most WatchEvents streams one operator may hold open, so that one operator (or one
/// leaked operator credential) cannot take every place.
pub const MAX_WATCHERS_PER_OPERATOR: usize = 16;
/// How long a watch waits for its watcher to make room for the next event before it ends
/// the stream: a client that keeps its connection open but stops reading would otherwise
/// hold its place forever.
pub const WATCH_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per watch, one place of which is kept for the status that ends it.
const WATCH_BUFFER: usize = 256;

/// The gRPC face of the chain queries.
#[derive(Debug)]
pub struct ChainGrpc<S> {
    /// The service logic the kill switch runs through.
    service: Arc<Service<S>>,
    store: Arc<S>,
    auth: Authenticator,
    audit: Arc<Audit>,
    /// Turns true at shutdown, ending every watch stream (which would otherwise keep
    /// graceful shutdown waiting forever).
    stop: watch::Receiver<bool>,
    /// Open watch streams.
    watchers: Arc<Mutex<Watchers>>,
    /// The JWT signing keys operators list and rotate.
    signer: Arc<Signer>,
}

/// Open watch streams, in all and per operator.
#[derive(Debug, Default)]
struct Watchers {
    total: usize,
    by_operator: HashMap<String, usize>,
}

/// Holds one of the [`MAX_WATCHERS`] places (and one of its operator's
/// [`MAX_WATCHERS_PER_OPERATOR`]) until the watch ends.
#[derive(Debug)]
struct WatchSlot {
    watchers: Arc<Mutex<Watchers>>,
    operator: String,
}

impl WatchSlot {
    fn take(watchers: &Arc<Mutex<Watchers>>, operator: &str) -> Result<WatchSlot, Status> {
        // Every critical section leaves the counts consistent: a poisoned lock is usable.
        let mut w = watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if w.total >= MAX_WATCHERS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_WATCHERS} event watches are already open on this server"
            )));
        }
        let mine = w.by_operator.entry(operator.to_owned()).or_default();
        if *mine >= MAX_WATCHERS_PER_OPERATOR {
            return Err(Status::resource_exhausted(format!(
                "operator {operator:?} already has {MAX_WATCHERS_PER_OPERATOR} event watches open"
            )));
        }
        *mine += 1;
        w.total += 1;
        Ok(WatchSlot {
            watchers: watchers.clone(),
            operator: operator.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        w.total = w.total.saturating_sub(1);
        if let Some(n) = w.by_operator.get_mut(&self.operator) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.by_operator.remove(&self.operator);
            }
        }
    }
}

impl<S> ChainGrpc<S> {
    /// Queries over `store` and `audit`, for operators identified by `auth`, who also
    /// list and rotate `signer`'s keys.
    pub fn new(
        service: Arc<Service<S>>,
        store: Arc<S>,
        auth: Authenticator,
        audit: Arc<Audit>,
        stop: watch::Receiver<bool>,
        signer: Arc<Signer>,
    ) -> Self {
        ChainGrpc {
            service,
            store,
            auth,
            audit,
            stop,
            watchers: Arc::default(),
            signer,
        }
    }
}

/// The stream WatchEvents answers with.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

/// Forwards live events that pass `filter` to `out` until the watcher goes away, falls
/// behind or stops reading for [`WATCH_SEND_TIMEOUT`] (both ended with
/// RESOURCE_EXHAUSTED), or the server stops (UNAVAILABLE).
async fn forward(
    _slot: WatchSlot,
    mut live: broadcast::Receiver<Arc<writ_core::Event>>,
    mut gaps: watch::Receiver<u64>,
    filter: convert::WatchFilter,
    out: mpsc::Sender<Result<pb::AuditEvent, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    // One place is kept for the status that ends the stream, so it is delivered even
    // to a watcher whose buffer is full.
    let Ok(last) = out.clone().reserve_owned().await else {
        return;
    };
    let shutting_down = || Status::unavailable("the server is shutting down");
    let end = loop {
        let event = tokio::select! {
            e = live.recv() => e,
            _ = stop.wait_for(|s| *s) => break Some(shutting_down()),
            Ok(()) = gaps.changed() => break Some(Status::resource_exhausted(
                "events other Writ nodes stored were lost before this node read them; \
                 read the gap with ListEvents and watch again",
            )),
            () = out.closed() => break None,
        };
        let item = match event {
            Ok(e) if filter.matches(&e) => convert::event_pb(&e),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                break Some(Status::resource_exhausted(format!(
                    "watcher fell {n} events behind and was dropped; \
                     read the gap with ListEvents and watch again"
                )));
            }
            Err(broadcast::error::RecvError::Closed) => break None,
        };
        // A watcher that stops reading must neither hold its place nor hold up shutdown.
        tokio::select! {
            sent = tokio::time::timeout(WATCH_SEND_TIMEOUT, out.send(Ok(item))) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break None,
                Err(_) => break Some(Status::resource_exhausted(format!(
                    "watcher stopped reading for {} s and was dropped; \
                     read the gap with ListEvents and watch again",
                    WATCH_SEND_TIMEOUT.as_secs()
                ))),
            },
            _ = stop.wait_for(|s| *s) => break Some(shutting_down()),
        }
    };
    if let Some(status) = end {
        let _ = last.send(Err(status));
    }
}

/// The operator behind a chain query, or why the caller may not make one.
async fn operator_only<T>(auth: &Authenticator, request: &Request<T>) -> Result<String, Status> {
    let caller: Caller = auth.identify(request).await.map_err(ServiceError::from)?;
    let operator = caller.require(
        &[Role::Operator],
        "chain queries require an operator's identity",
    )?;
    Ok(operator.actor.id.clone())
}

/// One signing key as operators see it (times in Unix milliseconds, 0 for none).
fn signing_key_pb(k: &KeyInfo) -> pb::SigningKey {
    let ms = |s: Option<u64>| s.map_or(0, |s| s.saturating_mul(1000));
    pb::SigningKey {
        kid: k.kid.clone(),
        alg: k.alg.as_str().to_owned(),
        state: match k.state {
            KeyState::Next => pb::SigningKeyState::Next,
            KeyState::Current => pb::SigningKeyState::Current,
            KeyState::Retired => pb::SigningKeyState::Retired,
        }
        .into(),
        signing: k.signing,
        created_at_unix_ms: ms(Some(k.created_at)),
        activated_at_unix_ms: ms(k.activated_at),
        retired_at_unix_ms: ms(k.retired_at),
        rotates_at_unix_ms: ms(k.rotates_at),
        removed_at_unix_ms: ms(k.removed_at),
    }
}

/// One node: the record (with the scopes `latent` in it), its live state, and what it
/// narrowed relative to `parent`.
fn node(
    r: &TokenRecord,
    state: &TokenState,
    parent: Option<&TokenRecord>,
    now: UnixMillis,
    latent: Vec<String>,
) -> pb::TokenNode {
    pb::TokenNode {
        info: Some(convert::token_info(r, latent)),
        status: status_pb(lifecycle::status(r, state, now)).into(),
        uses: state.uses,
        children: state.children,
        narrowed: parent
            .map(|p| lifecycle::narrowed(p, r))
            .unwrap_or_default(),
        revocation: state.revoked.as_ref().map(|v| pb::Revocation {
            at_unix_ms: v.at.0,
            by: v.by.clone(),
            reason: v.reason.clone(),
            cause_token_id: v.cause.to_string(),
        }),
    }
}

impl<S: TokenStore> ChainGrpc<S> {
    async fn load(
        &self,
        id: TokenId,
    ) -> Result<Option<(Arc<TokenRecord>, TokenState)>, ServiceError> {
        Ok(self.store.get_with_state(id).await?)
    }
}

/// A transaction's tokens in the documented order: depth-first, each parent before its
/// children, siblings by issue time (then id); a token whose parent is no longer stored
/// starts a tree of its own, in the same order among the roots.
fn depth_first(tree: &[TreeEntry]) -> Vec<TokenId> {
    let present: std::collections::HashSet<TokenId> = tree.iter().map(|e| e.id).collect();
    let mut children: HashMap<Option<TokenId>, Vec<&TreeEntry>> = HashMap::new();
    for e in tree {
        let parent = e.parent.filter(|p| present.contains(p));
        children.entry(parent).or_default().push(e);
    }
    for list in children.values_mut() {
        list.sort_by_key(|e| (e.issued_at, e.id));
    }
    let mut out = Vec::with_capacity(tree.len());
    let mut stack: Vec<&TreeEntry> = children.get(&None).cloned().unwrap_or_default();
    stack.reverse();
    while let Some(e) = stack.pop() {
        out.push(e.id);
        if let Some(kids) = children.get(&Some(e.id)) {
            stack.extend(kids.iter().rev());
        }
    }
    out
}

#[tonic::async_trait]
impl<S: TokenStore> ChainService for ChainGrpc<S> {
    type WatchEventsStream = EventStream;

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        operator_only(&self.auth, &request).await?;
        let l = convert::list_transactions_request(request.into_inner())?;
        let now = now();
        let page = self
            .store
            .list_txns(TxnQuery {
                subject: l.subject,
                party: l.actor,
                since: l.since,
                until: l.until,
                status: l.status,
                now,
                before: l.before,
                limit: l.page_size,
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: page
                .roots
                .iter()
                .map(|(r, s)| convert::txn_summary(r, s, now))
                .collect(),
            next_cursor: page.next.map(|t| t.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        operator_only(&self.auth, &request).await?;
        let (txn, after, limit) = convert::list_events_request(request.into_inner())?;
        // Everything this server has answered is in the trail before it is read, and
        // nothing is shown past an event still being written (so a reader paging by id
        // never skips one that commits late).
        self.audit
            .flush()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let visible = self.audit.visible_before();
        let mut events = self
            .store
            .events(txn, after, limit)
            .await
            .map_err(ServiceError::from)?;
        events.retain(|e| e.id < visible);
        let next_cursor = events.last().map(|e| e.id.to_string()).unwrap_or_default();
        Ok(Response::new(pb::ListEventsResponse {
            events: events.iter().map(convert::event_pb).collect(),
            next_cursor,
        }))
    }

    async fn disable_party(
        &self,
        request: Request<pb::DisablePartyRequest>,
    ) -> Result<Response<pb::DisablePartyResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let (party, reason) = convert::disable_party_request(request.into_inner())?;
        let revoked = self.service.disable_party(&caller, party, reason).await?;
        Ok(Response::new(pb::DisablePartyResponse {
            revoked: revoked.revoked,
            txns: revoked.txns,
            revoked_token_ids: revoked.ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn enable_party(
        &self,
        request: Request<pb::EnablePartyRequest>,
    ) -> Result<Response<pb::EnablePartyResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let party = convert::id("party", &request.into_inner().party)?;
        let was_disabled = self.service.enable_party(&caller, party).await?;
        Ok(Response::new(pb::EnablePartyResponse { was_disabled }))
    }

    async fn list_signing_keys(
        &self,
        request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        operator_only(&self.auth, &request).await?;
        Ok(Response::new(pb::ListSigningKeysResponse {
            keys: self.signer.keys_at().iter().map(signing_key_pb).collect(),
            jwks_json: self.signer.jwks().to_string(),
            algorithm: self.signer.algorithm().as_str().to_owned(),
        }))
    }

    async fn rotate_signing_keys(
        &self,
        request: Request<pb::RotateSigningKeysRequest>,
    ) -> Result<Response<pb::RotateSigningKeysResponse>, Status> {
        let operator = operator_only(&self.auth, &request).await?;
        tracing::info!(by = %operator, "signing key rotation requested");
        let keys = self.signer.rotate().await.map_err(ServiceError::from)?;
        Ok(Response::new(pb::RotateSigningKeysResponse {
            keys: keys.iter().map(signing_key_pb).collect(),
        }))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        operator_only(&self.auth, &request).await?;
        let l = convert::list_consents_request(request.into_inner())?;
        let now = now();
        let page = self
            .store
            .list_consents(ConsentQuery {
                status: l.status,
                subject: l.subject,
                txn: l.txn,
                now,
                before: l.before,
                limit: l.page_size,
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListConsentsResponse {
            requests: page
                .requests
                .iter()
                .map(|r| convert::consent_info(r, now))
                .collect(),
            next_cursor: page.next.map(|c| c.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::ConsentRequestInfo>, Status> {
        operator_only(&self.auth, &request).await?;
        let id = convert::get_consent_request(request.into_inner())?;
        let found = self
            .store
            .consent(id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("id: no consent request {id}")))?;
        Ok(Response::new(convert::consent_info(&found, now())))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let operator = operator_only(&self.auth, &request).await?;
        let filter = convert::watch_events_request(request.into_inner())?;
        let slot = WatchSlot::take(&self.watchers, &operator)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward(
            slot,
            self.audit.subscribe(),
            self.audit.gaps(),
            filter,
            tx,
            self.stop.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        use prost::Message;
        operator_only(&self.auth, &request).await?;
        let (txn, after, page_size) = convert::get_transaction_request(request.into_inner())?;
        // The tree's shape comes from the transaction index alone; records are read only
        // for the page answered.
        let tree = self.store.txn_tree(txn).await.map_err(ServiceError::from)?;
        if tree.is_empty() {
            return Err(ServiceError::NotFound(format!("txn: no transaction {txn}")).into());
        }
        let order = depth_first(&tree);
        let start = match after {
            None => 0,
            Some(id) => match order.iter().position(|t| *t == id) {
                Some(i) => i + 1,
                None => {
                    return Err(Status::invalid_argument(format!(
                        "cursor: {id} is not a token of {txn} (cleanup may have reclaimed it); read the transaction again from the start"
                    )));
                }
            },
        };
        let now = now();
        let mut records: HashMap<TokenId, Arc<TokenRecord>> = HashMap::new();
        let mut tokens = Vec::new();
        // `next`: where the following page starts; `last`: the last token answered (the
        // cursor names it, never one skipped as reclaimed).
        let (mut bytes, mut next, mut last) = (0, start, after);
        for &id in &order[start..] {
            if tokens.len() == page_size {
                break;
            }
            next += 1;
            let Some((record, state)) = self.load(id).await? else {
                continue; // reclaimed since the index was read
            };
            let parent = match record.parent {
                Some(p) if !records.contains_key(&p) => self.load(p).await?.map(|(r, _)| r),
                _ => None,
            };
            let parent = parent
                .as_ref()
                .or_else(|| record.parent.and_then(|p| records.get(&p)))
                .map(|p| &**p);
            let n = node(
                &record,
                &state,
                parent,
                now,
                self.service.latent_scopes(&record),
            );
            let size = n.encoded_len();
            if !tokens.is_empty() && bytes + size > MAX_TREE_PAGE_BYTES {
                next -= 1;
                break;
            }
            bytes += size;
            tokens.push(n);
            records.insert(id, record);
            last = Some(id);
        }
        let truncated = next < order.len();
        // Every token of a transaction has its subject.
        let subject = records
            .values()
            .next()
            .map(|r| r.subject.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::Transaction {
            txn: txn.to_string(),
            subject,
            tokens,
            truncated,
            next_cursor: match last {
                Some(id) if truncated => id.to_string(),
                _ => String::new(),
            },
        }))
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        operator_only(&self.auth, &request).await?;
        let id: TokenId = convert::parsed("token_id", &request.into_inner().token_id)?;
        let Some((record, state)) = self.load(id).await? else {
            return Err(ServiceError::NotFound(format!("token_id: no token {id}")).into());
        };
        // Walk up; depth is bounded by configuration, and by the ceiling in any case.
        let mut chain = vec![(record, state)];
        while let Some(parent) = chain.last().and_then(|(r, _)| r.parent) {
            if chain.len() > writ_core::limits::MAX_DEPTH_CEILING as usize {
                break;
            }
            match self.load(parent).await? {
                Some(p) => chain.push(p),
                None => break, // reclaimed by cleanup
            }
        }
        chain.reverse(); // root first
        let now = now();
        let mut nodes: Vec<pb::TokenNode> = chain
            .iter()
            .enumerate()
            .map(|(i, (r, s))| {
                let parent = i.checked_sub(1).map(|j| &*chain[j].0);
                node(r, s, parent, now, self.service.latent_scopes(r))
            })
            .collect();
        let token = nodes.pop();
        Ok(Response::new(pb::GetTokenResponse {
            token,
            ancestors: nodes,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use writ_core::{Event, EventId, TxnId, UnixMillis};

    fn event(n: u64) -> Arc<Event> {
        let txn = TxnId::new(UnixMillis(n), [0; 10]);
        Arc::new(Event {
            id: EventId(n),
            txn,
            subject: "alice".into(),
            token: None,
            actor: "op".into(),
            kind: writ_core::EventKind::Revoked {
                reason: "r".into(),
                revoked: 0,
            },
            auth: None,
        })
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_so_and_ended() {
        let (live, rx) = broadcast::channel(4);
        for n in 0..10 {
            live.send(event(n)).unwrap();
        }
        let (tx, mut out) = mpsc::channel(16);
        let (_stop_tx, stop) = watch::channel(false);
        let watchers = Arc::default();
        let slot = WatchSlot::take(&watchers, "ops").unwrap();
        tokio::spawn(forward_all(slot, rx, tx, stop));
        let first = out.recv().await.unwrap();
        let status = first.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("6 events behind"), "{status:?}");
        // The stream ends there, and the watch gives its place back.
        assert!(out.recv().await.is_none());
        assert_eq!(open(&watchers), 0);
    }

    /// Events other nodes stored were lost before this node read them: every watch ends,
    /// told to read the gap.
    #[tokio::test]
    async fn a_gap_in_the_feed_across_nodes_ends_a_watch() {
        let (live, rx) = broadcast::channel(4);
        let (tx, mut out) = mpsc::channel(16);
        let (_stop_tx, stop) = watch::channel(false);
        let (gaps_tx, gaps) = watch::channel(0);
        let watchers = Arc::default();
        let slot = WatchSlot::take(&watchers, "ops").unwrap();
        let task = tokio::spawn(forward(
            slot,
            rx,
            gaps,
            convert::WatchFilter::default(),
            tx,
            stop,
        ));
        live.send(event(1)).unwrap();
        assert!(out.recv().await.unwrap().is_ok());
        gaps_tx.send_modify(|n| *n += 1);
        task.await.unwrap();
        let end = out.recv().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("ListEvents"), "{end:?}");
        assert!(out.recv().await.is_none());
        assert_eq!(open(&watchers), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_a_watch_with_unavailable() {
        let (live, rx) = broadcast::channel(4);
        let (tx, mut out) = mpsc::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let watchers = Arc::default();
        let slot = WatchSlot::take(&watchers, "ops").unwrap();
        let task = tokio::spawn(forward_all(slot, rx, tx, stop));
        live.send(event(1)).unwrap();
        assert!(out.recv().await.unwrap().is_ok());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let end = out.recv().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(out.recv().await.is_none());
    }

    /// `forward` with no filter, on a node whose feed across nodes never loses events.
    fn forward_all(
        slot: WatchSlot,
        live: broadcast::Receiver<Arc<writ_core::Event>>,
        out: mpsc::Sender<Result<pb::AuditEvent, Status>>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> {
        forward(
            slot,
            live,
            watch::channel(0).1,
            convert::WatchFilter::default(),
            out,
            stop,
        )
    }

    fn open(watchers: &Arc<Mutex<Watchers>>) -> usize {
        let w = watchers.lock().unwrap();
        assert_eq!(w.total, w.by_operator.values().sum::<usize>());
        w.total
    }

    /// Finding 12: a watcher that keeps its connection but stops reading is ended after
    /// WATCH_SEND_TIMEOUT (it used to hold its place forever), and is told why even
    /// though its buffer is full.
    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_stops_reading_is_ended_and_gives_its_place_back() {
        let (live, rx) = broadcast::channel(16);
        // One place for an event, one kept for the final status.
        let (tx, mut out) = mpsc::channel(2);
        let (_stop_tx, stop) = watch::channel(false);
        let watchers = Arc::default();
        let slot = WatchSlot::take(&watchers, "ops").unwrap();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(forward_all(slot, rx, tx, stop));
        for n in 0..3 {
            live.send(event(n)).unwrap();
        }
        // Nobody reads: the buffer fills and the watch waits, then gives up.
        tokio::time::timeout(2 * WATCH_SEND_TIMEOUT, task)
            .await
            .expect("the watch ended on its own")
            .unwrap();
        assert!(
            started.elapsed() >= WATCH_SEND_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(open(&watchers), 0, "its place is free again");
        assert!(
            out.recv().await.unwrap().is_ok(),
            "what fitted is delivered"
        );
        let end = out.recv().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("stopped reading"), "{end:?}");
        assert!(out.recv().await.is_none());
    }

    /// A watcher that reads, however slowly, within the timeout keeps its stream.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_within_the_timeout_keeps_its_watch() {
        let (live, rx) = broadcast::channel(16);
        let (tx, mut out) = mpsc::channel(2);
        let (_stop_tx, stop) = watch::channel(false);
        let watchers = Arc::default();
        let slot = WatchSlot::take(&watchers, "ops").unwrap();
        tokio::spawn(forward_all(slot, rx, tx, stop));
        for n in 0..4 {
            live.send(event(n)).unwrap();
        }
        for n in 0..4 {
            tokio::time::sleep(WATCH_SEND_TIMEOUT - Duration::from_secs(1)).await;
            let e = out.recv().await.unwrap().unwrap();
            assert_eq!(e.id, EventId(n).to_string());
        }
        assert_eq!(open(&watchers), 1);
    }

    /// Finding 12: one operator cannot take every server-wide place.
    #[test]
    fn watches_are_capped_per_operator_and_per_server() {
        let watchers = Arc::default();
        let mut alice: Vec<WatchSlot> = (0..MAX_WATCHERS_PER_OPERATOR)
            .map(|_| WatchSlot::take(&watchers, "alice").unwrap())
            .collect();
        let refused = WatchSlot::take(&watchers, "alice").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("alice"), "{refused:?}");
        // Others are unaffected, and a place given back can be taken again.
        let bob = WatchSlot::take(&watchers, "bob").unwrap();
        alice.pop();
        alice.push(WatchSlot::take(&watchers, "alice").unwrap());
        assert_eq!(open(&watchers), MAX_WATCHERS_PER_OPERATOR + 1);
        drop(bob);
        // The server-wide cap still holds across operators.
        let mut others = Vec::new();
        for i in 0.. {
            match WatchSlot::take(&watchers, &format!("op{}", i / MAX_WATCHERS_PER_OPERATOR)) {
                Ok(slot) => others.push(slot),
                Err(status) => {
                    assert!(status.message().contains("on this server"), "{status:?}");
                    break;
                }
            }
        }
        assert_eq!(open(&watchers), MAX_WATCHERS);
        drop(alice);
        drop(others);
        assert_eq!(open(&watchers), 0);
        assert!(watchers.lock().unwrap().by_operator.is_empty());
    }
}
