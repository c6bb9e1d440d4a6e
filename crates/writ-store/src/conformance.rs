//! The behaviour every [`TokenStore`] must show, written once and run against every
//! backend, plus hand-built records for tests.

use crate::api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, MAX_OPEN_CONSENTS_PER_TXN,
    MAX_PARTY_REVOKED_IDS, PARTY_PAGE, PartyRevoked, PurgeStats, RevokeTarget, StoreError,
    StoreStats, TokenStore, UseOutcome,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use writ_core::consent::action_key;
use writ_core::{
    Actor, ActorKind, AuthMethod, Channel, Claim, ClientType, ConsentAction, ConsentError,
    ConsentId, ConsentRequest, ConsentState, ConsentStatus, Constraint, Decision, Event, EventId,
    EventKind, Grant, Party, PartyDisable, PartyView, SecretHash, TokenId, TokenRecord, TokenState,
    TxnId, UnixMillis, Value,
};

/// A revoking actor named `id` (an operator, authenticated with its credential).
pub(crate) fn by(id: &str) -> Actor {
    Actor {
        id: id.to_owned(),
        auth: AuthMethod::Bearer,
    }
}

/// Event ids handed out per millisecond (see [`event_at`]).
static ISSUED: std::sync::Mutex<BTreeMap<u64, u64>> = std::sync::Mutex::new(BTreeMap::new());

/// A fresh event id at `at`, later than the ids issued at `at` before it (as a server's
/// clock issues them), so events of one millisecond list in the order they were made
/// whatever other tests run meanwhile: counted per millisecond, not across all of them (a
/// shared count let another test's events wrap it between two of one test's). Unique up
/// to 1000 per millisecond in a test process.
pub(crate) fn event_at(at: UnixMillis) -> EventId {
    let mut issued = ISSUED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = issued.entry(at.0).or_default();
    *n += 1;
    EventId(at.0 * 1000 + (*n - 1) % 1000)
}

/// Test shorthands for the token writes, with their audit events made up.
pub(crate) trait Shorthand: TokenStore {
    /// `insert` with a `minted` event.
    fn put(&self, r: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        let e = Event::minted(event_at(r.issued_at), &r);
        self.insert(r, e)
    }

    /// `insert_child` with a `downscoped` event.
    fn put_child(
        &self,
        r: TokenRecord,
        max_children: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let e = Event::downscoped(event_at(r.issued_at), &r, &r);
        self.insert_child(r, max_children, e)
    }

    /// `revoke` at `at`, returning just the ids.
    fn revoke_at(
        &self,
        target: RevokeTarget,
        by: Actor,
        reason: String,
        at: UnixMillis,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send {
        let revoking = self.revoke(target, by, reason, event_at(at));
        async move { revoking.await.map(|r| r.ids) }
    }
}

impl<S: TokenStore> Shorthand for S {}

/// An [`EventIssuer`] that issues fresh ids at one instant and remembers what it was told.
#[derive(Debug)]
pub(crate) struct Issued {
    at: UnixMillis,
    pub(crate) issued: Mutex<Vec<EventId>>,
    pub(crate) stored: Mutex<Vec<Event>>,
    pub(crate) abandoned: Mutex<Vec<EventId>>,
}

impl Issued {
    /// Issues ids at `at`.
    pub(crate) fn at(at: UnixMillis) -> Arc<Issued> {
        Arc::new(Issued {
            at,
            issued: Mutex::default(),
            stored: Mutex::default(),
            abandoned: Mutex::default(),
        })
    }

    pub(crate) fn issued(&self) -> Vec<EventId> {
        self.issued.lock().unwrap().clone()
    }

    pub(crate) fn stored(&self) -> Vec<Event> {
        self.stored.lock().unwrap().clone()
    }
}

impl EventIssuer for Issued {
    fn issue(&self) -> EventId {
        let id = event_at(self.at);
        self.issued.lock().unwrap().push(id);
        id
    }

    fn stored(&self, event: Event) {
        self.stored.lock().unwrap().push(event);
    }

    fn abandoned(&self, id: EventId) {
        self.abandoned.lock().unwrap().push(id);
    }
}

/// A token id whose bytes sort by `n` (big-endian in the first four bytes) with a
/// marker byte at the end, so tests can reason about key order.
pub(crate) fn tid(n: u32) -> TokenId {
    let mut b = [0xa5u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    TokenId(b)
}

/// The ids of a transaction's tree, in key order.
pub(crate) fn tree_ids(tree: Vec<crate::api::TreeEntry>) -> Vec<TokenId> {
    tree.into_iter().map(|e| e.id).collect()
}

/// A transaction id minted at `n` milliseconds.
pub(crate) fn txn(n: u64) -> TxnId {
    TxnId::new(UnixMillis(n), [0x5a; 10])
}

fn party(id: &str, kind: ActorKind) -> Party {
    Party {
        id: id.to_owned(),
        kind,
        client_type: ClientType::Confidential,
    }
}

/// A realistic record: every field populated, including typed claims.
pub(crate) fn record(txn: TxnId, id: TokenId, parent: Option<TokenId>) -> TokenRecord {
    TokenRecord {
        token_id: id,
        secret_hash: SecretHash([id.0[3]; 32]),
        txn,
        parent,
        depth: u32::from(parent.is_some()),
        subject: "user:alice".to_owned(),
        trust_domain: "example.com".to_owned(),
        actors: vec![
            party("svc:gateway", ActorKind::Workload),
            party("agent:planner", ActorKind::Agent),
        ],
        audience: party("svc:payments", ActorKind::Workload),
        grant: Grant {
            scopes: BTreeSet::from(["trips:read".to_owned(), "payments:write".to_owned()]),
            claims: BTreeMap::from([
                (
                    "amount".to_owned(),
                    Claim::on_every_scope(Constraint::Max(500)),
                ),
                (
                    "path".to_owned(),
                    Claim::on_every_scope(Constraint::Prefix("/trips/".to_owned())),
                ),
            ]),
            targets: BTreeSet::from(["svc:payments".to_owned()]),
            expires_at: UnixMillis(1_700_000_300_000 + u64::from(id.0[3])),
            max_uses: None,
            require_action_check: false,
        },
        purpose: "book a trip".to_owned(),
        tctx: BTreeMap::from([("trip".to_owned(), "42".to_owned())]),
        rctx: BTreeMap::from([("ip".to_owned(), "192.0.2.1".to_owned())]),
        issued_at: UnixMillis(1_700_000_000_000),
        idempotency: None,
        actor_auth: None,
        consent: None,
    }
}

/// How a backend disposes of what has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Through the purge calls (`purge_expired`, `purge_events`, `purge_consents`),
    /// which the suite checks.
    Purged,
    /// By the storage engine itself on real time (Redis key expiry): the purge calls
    /// delete nothing, and the backend's own tests check its expiry.
    ServerSide,
}

/// Runs every check against `store`, which must start empty.
pub(crate) async fn run<S: TokenStore>(store: S) {
    run_for(store, Expiry::Purged).await;
}

/// [`run`] for a backend that disposes of expired data as `expiry` says.
pub(crate) async fn run_for<S: TokenStore>(store: S, expiry: Expiry) {
    let store = Arc::new(store);
    round_trip(&*store).await;
    unknown_id_is_none(&*store).await;
    duplicate_insert_conflicts(&*store).await;
    txn_index_is_exact_and_ordered(&*store).await;
    concurrent_inserts_all_land(store.clone()).await;
    concurrent_duplicates_admit_exactly_one(store.clone()).await;
    child_insert_counts_children_and_enforces_fan_out(&*store).await;
    revoked_parent_refuses_children(&*store).await;
    record_and_state_read_together(&*store).await;
    uses_are_reserved_and_exhausted(&*store).await;
    concurrent_consumes_of_a_single_use_token_admit_one(store.clone()).await;
    revoking_a_node_revokes_exactly_its_subtree(&*store).await;
    revoking_a_txn_revokes_all_its_tokens(&*store).await;
    derive_racing_revoke_never_leaves_a_usable_descendant(store.clone()).await;
    disabling_a_party_revokes_what_it_holds_and_presents(&*store).await;
    a_party_revocation_walks_every_page_and_bounds_its_answer(&*store).await;
    derive_racing_party_revocation_never_leaves_a_usable_descendant(store.clone()).await;
    disablements_are_recorded_replaced_and_cleared(&*store).await;
    consents_for(store.clone(), expiry).await;
    if expiry == Expiry::Purged {
        // Last: these count every key of the store and expect no other writer.
        purge_removes_exactly_the_expired_tokens_and_all_their_entries(&*store).await;
        purge_racing_derive_leaves_no_orphan(store).await;
    }
}

/// `record` with `expires_at` set.
pub(crate) fn expiring(mut r: TokenRecord, expires_at: u64) -> TokenRecord {
    r.grant.expires_at = UnixMillis(expires_at);
    r
}

/// Below every `expires_at` the other checks use (which are around 1.7e12).
const CUTOFF: UnixMillis = UnixMillis(1_000_000);

/// `record` with `max_uses` set.
pub(crate) fn with_uses(mut r: TokenRecord, max_uses: Option<u32>) -> TokenRecord {
    r.grant.max_uses = max_uses;
    r
}

fn revoked_reason(state: &TokenState) -> Option<(&str, TokenId)> {
    state.revoked.as_ref().map(|r| (r.reason.as_str(), r.cause))
}

async fn round_trip<S: TokenStore>(store: &S) {
    let root = record(txn(1), tid(10), None);
    let child = record(txn(1), tid(11), Some(tid(10)));
    store.put(root.clone()).await.unwrap();
    store.put(child.clone()).await.unwrap();
    assert_eq!(store.get(tid(10)).await.unwrap(), Some(root));
    assert_eq!(store.get(tid(11)).await.unwrap(), Some(child));
}

async fn unknown_id_is_none<S: TokenStore>(store: &S) {
    assert_eq!(store.get(tid(999_999)).await.unwrap(), None);
    assert_eq!(
        tree_ids(store.txn_tree(txn(999_999)).await.unwrap()),
        Vec::<TokenId>::new()
    );
}

async fn duplicate_insert_conflicts<S: TokenStore>(store: &S) {
    let first = record(txn(2), tid(20), None);
    store.put(first.clone()).await.unwrap();
    // Same id, different content and transaction: refused, and nothing changes.
    let mut other = record(txn(3), tid(20), None);
    other.purpose = "something else".to_owned();
    assert_eq!(store.put(other).await, Err(StoreError::Conflict));
    assert_eq!(store.put(first.clone()).await, Err(StoreError::Conflict));
    assert_eq!(store.get(tid(20)).await.unwrap(), Some(first));
    assert_eq!(
        tree_ids(store.txn_tree(txn(2)).await.unwrap()),
        vec![tid(20)]
    );
    assert_eq!(
        tree_ids(store.txn_tree(txn(3)).await.unwrap()),
        Vec::<TokenId>::new()
    );
}

async fn txn_index_is_exact_and_ordered<S: TokenStore>(store: &S) {
    // Neighbouring transactions on both sides, including the largest possible id
    // (whose prefix has no successor), and inserts out of key order.
    let a = txn(100);
    let b = txn(101);
    let before = TxnId([0; 16]);
    let last = TxnId([0xff; 16]);
    for (t, n) in [
        (b, 305),
        (a, 302),
        (before, 300),
        (a, 301),
        (last, 306),
        (a, 303),
        (b, 304),
    ] {
        store.put(record(t, tid(n), None)).await.unwrap();
    }
    assert_eq!(
        tree_ids(store.txn_tree(a).await.unwrap()),
        vec![tid(301), tid(302), tid(303)]
    );
    assert_eq!(
        tree_ids(store.txn_tree(b).await.unwrap()),
        vec![tid(304), tid(305)]
    );
    assert_eq!(
        tree_ids(store.txn_tree(before).await.unwrap()),
        vec![tid(300)]
    );
    assert_eq!(
        tree_ids(store.txn_tree(last).await.unwrap()),
        vec![tid(306)]
    );
    // The tree's shape comes with the ids: each token's parent and issue time.
    let t = txn(102);
    let mut root = record(t, tid(310), None);
    root.issued_at = UnixMillis(1_000);
    let mut kid = record(t, tid(311), Some(tid(310)));
    kid.issued_at = UnixMillis(2_000);
    store.put(root).await.unwrap();
    store.put_child(kid, 4).await.unwrap();
    assert_eq!(
        store.txn_tree(t).await.unwrap(),
        vec![
            crate::api::TreeEntry {
                id: tid(310),
                parent: None,
                issued_at: UnixMillis(1_000),
            },
            crate::api::TreeEntry {
                id: tid(311),
                parent: Some(tid(310)),
                issued_at: UnixMillis(2_000),
            },
        ]
    );
}

async fn concurrent_inserts_all_land<S: TokenStore>(store: Arc<S>) {
    const N: u32 = 200;
    let t = txn(500);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            // Spread over several transactions, inserted in no particular order.
            tokio::spawn(async move {
                store
                    .put(record(
                        txn(500 + u64::from(i % 4)),
                        tid(10_000 + (i * 7919) % N),
                        None,
                    ))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut expected = BTreeMap::<TxnId, Vec<TokenId>>::new();
    for i in 0..N {
        let id = tid(10_000 + (i * 7919) % N);
        let r = store.get(id).await.unwrap().unwrap();
        expected.entry(r.txn).or_default().push(id);
    }
    let mut total = 0;
    for (tx, mut ids) in expected {
        ids.sort();
        total += ids.len();
        assert_eq!(tree_ids(store.txn_tree(tx).await.unwrap()), ids);
    }
    assert_eq!(total, N as usize);
    assert_eq!(
        tree_ids(store.txn_tree(t).await.unwrap()).len(),
        (N / 4) as usize
    );
}

async fn concurrent_duplicates_admit_exactly_one<S: TokenStore>(store: Arc<S>) {
    const N: usize = 32;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut r = record(txn(600), tid(20_000), None);
                r.purpose = format!("attempt {i}");
                store.put(r).await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e, StoreError::Conflict),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        tree_ids(store.txn_tree(txn(600)).await.unwrap()),
        vec![tid(20_000)]
    );
}

async fn child_insert_counts_children_and_enforces_fan_out<S: TokenStore>(store: &S) {
    let t = txn(700);
    let root = record(t, tid(40_000), None);
    store.put(root).await.unwrap();
    assert_eq!(
        store.state(tid(40_000)).await.unwrap(),
        Some(TokenState::default())
    );
    assert_eq!(store.state(tid(49_999)).await.unwrap(), None);
    for n in [40_001, 40_002] {
        store
            .put_child(record(t, tid(n), Some(tid(40_000))), 2)
            .await
            .unwrap();
    }
    let s = store.state(tid(40_000)).await.unwrap().unwrap();
    assert_eq!((s.children, s.uses, s.revoked), (2, 0, None));
    assert_eq!(
        store.state(tid(40_001)).await.unwrap(),
        Some(TokenState::default())
    );
    assert_eq!(
        store
            .put_child(record(t, tid(40_003), Some(tid(40_000))), 2)
            .await,
        Err(StoreError::FanOutExceeded { limit: 2 })
    );
    // A child's own fan-out is counted separately.
    store
        .put_child(record(t, tid(40_004), Some(tid(40_001))), 1)
        .await
        .unwrap();
    // An existing id conflicts and changes nothing.
    assert_eq!(
        store
            .put_child(record(t, tid(40_001), Some(tid(40_000))), 10)
            .await,
        Err(StoreError::Conflict)
    );
    // No parent, an unknown parent, a parent of another transaction.
    assert_eq!(
        store.put_child(record(t, tid(40_005), None), 10).await,
        Err(StoreError::ParentMissing)
    );
    assert_eq!(
        store
            .put_child(record(t, tid(40_005), Some(tid(49_999))), 10)
            .await,
        Err(StoreError::ParentMissing)
    );
    assert_eq!(
        store
            .put_child(record(txn(701), tid(40_005), Some(tid(40_000))), 10)
            .await,
        Err(StoreError::ParentMissing)
    );
    assert_eq!(store.get(tid(40_003)).await.unwrap(), None);
    assert_eq!(store.get(tid(40_005)).await.unwrap(), None);
    assert_eq!(store.state(tid(40_000)).await.unwrap().unwrap().children, 2);
    assert_eq!(store.state(tid(40_001)).await.unwrap().unwrap().children, 1);
    assert_eq!(
        tree_ids(store.txn_tree(t).await.unwrap()),
        vec![tid(40_000), tid(40_001), tid(40_002), tid(40_004)]
    );
    assert_eq!(
        store.get(tid(40_004)).await.unwrap(),
        Some(record(t, tid(40_004), Some(tid(40_001))))
    );
}

async fn revoked_parent_refuses_children<S: TokenStore>(store: &S) {
    let t = txn(710);
    store.put(record(t, tid(41_000), None)).await.unwrap();
    let revoked = store
        .revoke_at(
            RevokeTarget::Token(tid(41_000)),
            by("op"),
            "leak".to_owned(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    assert_eq!(revoked, vec![tid(41_000)]);
    assert_eq!(
        store
            .put_child(record(t, tid(41_001), Some(tid(41_000))), 10)
            .await,
        Err(StoreError::ParentRevoked)
    );
    assert_eq!(store.get(tid(41_001)).await.unwrap(), None);
    let s = store.state(tid(41_000)).await.unwrap().unwrap();
    assert_eq!(s.children, 0);
    let r = s.revoked.unwrap();
    assert_eq!(
        (r.at, r.by.as_str(), r.reason.as_str(), r.cause),
        (UnixMillis(5), "op", "leak", tid(41_000))
    );
}

async fn uses_are_reserved_and_exhausted<S: TokenStore>(store: &S) {
    let t = txn(720);
    let root = tid(42_000);
    store
        .put(with_uses(record(t, root, None), Some(3)))
        .await
        .unwrap();
    let child = |n: u32, uses: Option<u32>| with_uses(record(t, tid(n), Some(root)), uses);
    store.put_child(child(42_001, Some(2)), 10).await.unwrap();
    assert_eq!(store.state(root).await.unwrap().unwrap().uses, 2);
    assert_eq!(
        store.put_child(child(42_002, Some(2)), 10).await,
        Err(StoreError::UsesExhausted)
    );
    assert_eq!(store.get(tid(42_002)).await.unwrap(), None);
    let s = store.state(root).await.unwrap().unwrap();
    assert_eq!((s.uses, s.children), (2, 1));
    store.put_child(child(42_003, Some(1)), 10).await.unwrap();
    let s = store.state(root).await.unwrap().unwrap();
    assert_eq!((s.uses, s.children), (3, 2));
    // The root's budget is all reserved: neither it nor a new child can use more.
    assert_eq!(
        store.consume_use(root, None).await.unwrap(),
        UseOutcome::Exhausted
    );
    assert_eq!(
        store.put_child(child(42_004, Some(1)), 10).await,
        Err(StoreError::UsesExhausted)
    );
    // A child with no use limit reserves nothing.
    store.put_child(child(42_005, None), 10).await.unwrap();
    assert_eq!(store.state(root).await.unwrap().unwrap().uses, 3);

    // The child spends its reserved uses.
    let c = tid(42_001);
    assert_eq!(
        store.consume_use(c, None).await.unwrap(),
        UseOutcome::Consumed { remaining: Some(1) }
    );
    assert_eq!(
        store.consume_use(c, None).await.unwrap(),
        UseOutcome::Consumed { remaining: Some(0) }
    );
    assert_eq!(
        store.consume_use(c, None).await.unwrap(),
        UseOutcome::Exhausted
    );
    assert_eq!(store.state(c).await.unwrap().unwrap().uses, 2);

    // Unlimited: always consumed, and nothing is counted.
    let u = tid(42_005);
    for _ in 0..3 {
        assert_eq!(
            store.consume_use(u, None).await.unwrap(),
            UseOutcome::Consumed { remaining: None }
        );
    }
    assert_eq!(store.state(u).await.unwrap(), Some(TokenState::default()));
    assert_eq!(
        store.consume_use(tid(49_998), None).await.unwrap(),
        UseOutcome::Unknown
    );

    // Revocation outranks everything, for limited and unlimited tokens alike.
    let revoked = store
        .revoke_at(
            RevokeTarget::Token(tid(42_003)),
            by("op"),
            "r".to_owned(),
            UnixMillis(1),
        )
        .await
        .unwrap();
    assert_eq!(revoked, vec![tid(42_003)]);
    assert_eq!(
        store.consume_use(tid(42_003), None).await.unwrap(),
        UseOutcome::Revoked
    );
    store
        .revoke_at(
            RevokeTarget::Token(u),
            by("op"),
            "r".to_owned(),
            UnixMillis(1),
        )
        .await
        .unwrap();
    assert_eq!(
        store.consume_use(u, None).await.unwrap(),
        UseOutcome::Revoked
    );
    assert_eq!(store.state(tid(42_003)).await.unwrap().unwrap().uses, 0);
}

async fn concurrent_consumes_of_a_single_use_token_admit_one<S: TokenStore>(store: Arc<S>) {
    const N: usize = 50;
    let id = tid(43_000);
    store
        .put(with_uses(record(txn(730), id, None), Some(1)))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_use(id, None).await })
        })
        .collect();
    let mut consumed = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            UseOutcome::Consumed { remaining } => {
                assert_eq!(remaining, Some(0));
                consumed += 1;
            }
            other => assert_eq!(other, UseOutcome::Exhausted),
        }
    }
    assert_eq!(consumed, 1);
    assert_eq!(store.state(id).await.unwrap().unwrap().uses, 1);
}

async fn revoking_a_node_revokes_exactly_its_subtree<S: TokenStore>(store: &S) {
    let t = txn(740);
    // 44_000 ─┬─ 44_001 ─┬─ 44_003 ── 44_005
    //         │          └─ 44_004
    //         └─ 44_002 ── 44_006
    store.put(record(t, tid(44_000), None)).await.unwrap();
    for (n, parent) in [
        (44_001, 44_000),
        (44_002, 44_000),
        (44_003, 44_001),
        (44_004, 44_001),
        (44_005, 44_003),
        (44_006, 44_002),
    ] {
        store
            .put_child(record(t, tid(n), Some(tid(parent))), 10)
            .await
            .unwrap();
    }
    let revoke = |id: u32, reason: &str| {
        store.revoke_at(
            RevokeTarget::Token(tid(id)),
            by("op"),
            reason.to_owned(),
            UnixMillis(9),
        )
    };
    let mut first = revoke(44_001, "first").await.unwrap();
    first.sort();
    assert_eq!(
        first,
        vec![tid(44_001), tid(44_003), tid(44_004), tid(44_005)]
    );
    for n in [44_001, 44_003, 44_004, 44_005] {
        let s = store.state(tid(n)).await.unwrap().unwrap();
        assert_eq!(revoked_reason(&s), Some(("first", tid(44_001))), "{n}");
    }
    for n in [44_000, 44_002, 44_006] {
        assert_eq!(store.state(tid(n)).await.unwrap().unwrap().revoked, None);
    }
    // Nothing new to revoke, so nothing is recorded, and the first revocation stands.
    assert_eq!(revoke(44_001, "second").await.unwrap(), vec![]);
    assert_eq!(revoke(44_003, "third").await.unwrap(), vec![]);
    let again = store
        .revoke(
            RevokeTarget::Token(tid(44_005)),
            by("op"),
            "fourth".to_owned(),
            event_at(UnixMillis(9)),
        )
        .await
        .unwrap();
    assert_eq!((again.ids, again.event), (vec![], None));
    let s = store.state(tid(44_005)).await.unwrap().unwrap();
    assert_eq!(revoked_reason(&s), Some(("first", tid(44_001))));
    // Revoking the root reaches only what is left.
    let mut rest = revoke(44_000, "root").await.unwrap();
    rest.sort();
    assert_eq!(rest, vec![tid(44_000), tid(44_002), tid(44_006)]);
    let s = store.state(tid(44_006)).await.unwrap().unwrap();
    assert_eq!(revoked_reason(&s), Some(("root", tid(44_000))));
    let s = store.state(tid(44_004)).await.unwrap().unwrap();
    assert_eq!(revoked_reason(&s), Some(("first", tid(44_001))));
    assert_eq!(revoke(49_997, "nothing").await, Err(StoreError::NotFound));
}

async fn revoking_a_txn_revokes_all_its_tokens<S: TokenStore>(store: &S) {
    let t = txn(750);
    store.put(record(t, tid(45_000), None)).await.unwrap();
    for n in [45_001, 45_002] {
        store
            .put_child(record(t, tid(n), Some(tid(45_000))), 10)
            .await
            .unwrap();
    }
    // A neighbouring transaction stays untouched.
    store
        .put(record(txn(751), tid(45_100), None))
        .await
        .unwrap();
    let revoke =
        |target, reason: &str| store.revoke_at(target, by("op"), reason.to_owned(), UnixMillis(3));
    assert_eq!(
        revoke(RevokeTarget::Token(tid(45_002)), "one")
            .await
            .unwrap(),
        vec![tid(45_002)]
    );
    let mut all = revoke(RevokeTarget::Txn(t), "all").await.unwrap();
    all.sort();
    assert_eq!(all, vec![tid(45_000), tid(45_001)]);
    for n in [45_000, 45_001] {
        let s = store.state(tid(n)).await.unwrap().unwrap();
        assert_eq!(revoked_reason(&s), Some(("all", tid(n))));
    }
    let s = store.state(tid(45_002)).await.unwrap().unwrap();
    assert_eq!(revoked_reason(&s), Some(("one", tid(45_002))));
    assert_eq!(
        store.state(tid(45_100)).await.unwrap().unwrap().revoked,
        None
    );
    // Again: nothing new, nothing recorded.
    let again = store
        .revoke(
            RevokeTarget::Txn(t),
            by("op"),
            "again".to_owned(),
            event_at(UnixMillis(3)),
        )
        .await
        .unwrap();
    assert_eq!((again.ids, again.event), (vec![], None));
    // A transaction that holds no token does not exist.
    assert_eq!(
        revoke(RevokeTarget::Txn(txn(759)), "none").await,
        Err(StoreError::NotFound)
    );
}

async fn derive_racing_revoke_never_leaves_a_usable_descendant<S: TokenStore>(store: Arc<S>) {
    const ROUNDS: u32 = 4;
    const TASKS: u32 = 48;
    const CHAIN: u32 = 4;
    for round in 0..ROUNDS {
        let t = txn(760 + u64::from(round));
        let base = 46_000 + round * 1_000;
        // A chain base → base+1 → ... → base+CHAIN-1.
        store.put(record(t, tid(base), None)).await.unwrap();
        for i in 1..CHAIN {
            store
                .put_child(record(t, tid(base + i), Some(tid(base + i - 1))), u32::MAX)
                .await
                .unwrap();
        }
        let spawn_deriver = |i: u32| {
            let store = store.clone();
            tokio::spawn(async move {
                // A child under a chain node, then a grandchild under that child.
                let child = tid(base + 100 + i);
                let parent = tid(base + i % CHAIN);
                for (id, parent) in [(child, parent), (tid(base + 500 + i), child)] {
                    match store.put_child(record(t, id, Some(parent)), u32::MAX).await {
                        Ok(()) => {}
                        Err(StoreError::ParentRevoked) => return,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut tasks: Vec<_> = (0..TASKS / 2).map(spawn_deriver).collect();
        let revoker = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .revoke_at(
                        RevokeTarget::Token(tid(base)),
                        by("op"),
                        "race".to_owned(),
                        UnixMillis(1),
                    )
                    .await
            })
        };
        tasks.extend((TASKS / 2..TASKS).map(spawn_deriver));
        for task in tasks {
            task.await.unwrap();
        }
        let newly: BTreeSet<TokenId> = revoker.await.unwrap().unwrap().into_iter().collect();
        let all = tree_ids(store.txn_tree(t).await.unwrap());
        assert!(all.len() >= CHAIN as usize);
        for id in all {
            // Every token of the transaction descends from the revoked root.
            let mut at = id;
            while let Some(parent) = store.get(at).await.unwrap().unwrap().parent {
                at = parent;
            }
            assert_eq!(at, tid(base));
            let s = store.state(id).await.unwrap().unwrap();
            assert_eq!(
                revoked_reason(&s),
                Some(("race", tid(base))),
                "round {round}: {id} survived the revocation"
            );
            assert!(newly.contains(&id), "{id} missing from the revoked ids");
        }
    }
}

async fn purge_removes_exactly_the_expired_tokens_and_all_their_entries<S: TokenStore>(store: &S) {
    let base = store.stats().await.unwrap();
    // Nothing below the cutoff yet.
    assert_eq!(
        store.purge_expired(CUTOFF, 100).await.unwrap(),
        crate::PurgeStats {
            tokens: 0,
            more: false
        }
    );
    let (a, b) = (txn(900), txn(901));
    // An expired lineage 90_000 → 90_001 → 90_002.
    store
        .put(expiring(record(a, tid(90_000), None), 5_000))
        .await
        .unwrap();
    store
        .put_child(
            expiring(record(a, tid(90_001), Some(tid(90_000))), 4_000),
            8,
        )
        .await
        .unwrap();
    store
        .put_child(
            expiring(record(a, tid(90_002), Some(tid(90_001))), 4_000),
            8,
        )
        .await
        .unwrap();
    // A live root of the same transaction, with an expired child.
    store
        .put(expiring(record(a, tid(90_003), None), 2_000_000))
        .await
        .unwrap();
    store
        .put_child(
            expiring(record(a, tid(90_004), Some(tid(90_003))), 3_000),
            8,
        )
        .await
        .unwrap();
    // Another transaction: an expired, revoked token, a live one and one expiring
    // exactly at the cutoff (not before it, so it stays).
    store
        .put(expiring(record(b, tid(90_005), None), 6_000))
        .await
        .unwrap();
    store
        .put(expiring(record(b, tid(90_006), None), 1_500_000))
        .await
        .unwrap();
    store
        .put(expiring(record(b, tid(90_009), None), CUTOFF.0))
        .await
        .unwrap();
    store
        .revoke_at(
            RevokeTarget::Token(tid(90_005)),
            by("op"),
            "r".to_owned(),
            UnixMillis(1),
        )
        .await
        .unwrap();
    let full = store.stats().await.unwrap();
    // 8 tokens: txn_tokens + expiry each, 3 children links, state rows of the three
    // parents and of the revoked token.
    assert_eq!(full.tokens, base.tokens + 8);
    assert_eq!(full.index_entries, base.index_entries + 16 + 3 + 4);

    // Expiry order: 90_004 (3000), 90_001 and 90_002 (4000), 90_000, 90_005.
    assert_eq!(
        store.purge_expired(CUTOFF, 2).await.unwrap(),
        crate::PurgeStats {
            tokens: 2,
            more: true
        }
    );
    assert_eq!(store.get(tid(90_004)).await.unwrap(), None);
    assert_eq!(store.get(tid(90_001)).await.unwrap(), None);
    assert!(store.get(tid(90_002)).await.unwrap().is_some());
    // A limit of zero deletes nothing but still reports what is left.
    assert_eq!(
        store.purge_expired(CUTOFF, 0).await.unwrap(),
        crate::PurgeStats {
            tokens: 0,
            more: true
        }
    );
    assert_eq!(
        store.purge_expired(CUTOFF, 100).await.unwrap(),
        crate::PurgeStats {
            tokens: 3,
            more: false
        }
    );
    for n in [90_000, 90_001, 90_002, 90_004, 90_005] {
        assert_eq!(store.get(tid(n)).await.unwrap(), None, "{n}");
        assert_eq!(store.state(tid(n)).await.unwrap(), None, "{n}");
    }
    assert_eq!(
        tree_ids(store.txn_tree(a).await.unwrap()),
        vec![tid(90_003)]
    );
    assert_eq!(
        tree_ids(store.txn_tree(b).await.unwrap()),
        vec![tid(90_006), tid(90_009)]
    );
    // The live parent keeps its record and state (its children count is history).
    assert!(store.get(tid(90_003)).await.unwrap().is_some());
    assert_eq!(store.state(tid(90_003)).await.unwrap().unwrap().children, 1);
    let after = store.stats().await.unwrap();
    assert_eq!(after.tokens, base.tokens + 3);
    // Three tokens' txn_tokens and expiry entries, and the live parent's state row:
    // every link to a purged child is gone.
    assert_eq!(after.index_entries, base.index_entries + 6 + 1);

    // A purged parent derives nothing, and the refusal writes nothing.
    assert_eq!(
        store
            .put_child(record(a, tid(90_007), Some(tid(90_000))), 8)
            .await,
        Err(StoreError::ParentMissing)
    );
    assert_eq!(store.get(tid(90_007)).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap(), after);
    assert_eq!(
        store.purge_expired(CUTOFF, 100).await.unwrap(),
        crate::PurgeStats {
            tokens: 0,
            more: false
        }
    );
    // Moving the cutoff past the rest purges them too, leaving the store as it was.
    let later = UnixMillis(2_000_001);
    assert_eq!(store.purge_expired(later, 100).await.unwrap().tokens, 3);
    // ... but for the audit trail, which token cleanup never touches: the events of all
    // eight tokens and of the revocation are still there.
    let end = store.stats().await.unwrap();
    assert_eq!(end.events, full.events);
    assert!(end.events >= base.events + 9);
    assert_eq!(
        StoreStats { events: 0, ..end },
        StoreStats { events: 0, ..base }
    );
}

async fn purge_racing_derive_leaves_no_orphan<S: TokenStore>(store: Arc<S>) {
    const ROUNDS: u32 = 4;
    const TASKS: u32 = 16;
    let base = store.stats().await.unwrap();
    for round in 0..ROUNDS {
        let t = txn(920 + u64::from(round));
        let root = tid(91_000 + round * 100);
        store
            .put(expiring(record(t, root, None), 10_000))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let deriver = store.clone();
            tasks.push(tokio::spawn(async move {
                let child = expiring(record(t, tid(91_001 + round * 100 + i), Some(root)), 9_000);
                match deriver.put_child(child, u32::MAX).await {
                    Ok(()) | Err(StoreError::ParentMissing) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }));
            if i == TASKS / 2 {
                let purger = store.clone();
                tasks.push(tokio::spawn(async move {
                    purger.purge_expired(CUTOFF, usize::MAX).await.unwrap();
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        // Whatever landed before the purge, or was refused after it, one more purge
        // leaves nothing behind.
        let last = store.purge_expired(CUTOFF, usize::MAX).await.unwrap();
        assert!(!last.more);
        assert_eq!(store.get(root).await.unwrap(), None);
        assert_eq!(
            tree_ids(store.txn_tree(t).await.unwrap()),
            Vec::<TokenId>::new()
        );
        let now = store.stats().await.unwrap();
        assert_eq!(
            StoreStats { events: 0, ..now },
            StoreStats { events: 0, ..base },
            "round {round}"
        );
    }
}

/// A transaction holds at most `MAX_TOKENS_PER_TXN` tokens: the next child is refused and
/// nothing is written. Separate from [`run`] because it writes thousands of tokens (run it
/// on fast stores only).
pub(crate) async fn txn_holds_at_most_max_tokens<S: TokenStore>(store: S) {
    use writ_core::limits::MAX_TOKENS_PER_TXN;
    let t = txn(990);
    let limit = u32::try_from(MAX_TOKENS_PER_TXN).unwrap();
    store.put(record(t, tid(900_000), None)).await.unwrap();
    // Refused children take no place: if they counted, the fill below would stop short.
    let first = record(t, tid(900_001), Some(tid(900_000)));
    store.put_child(first.clone(), u32::MAX).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            store.put_child(first.clone(), u32::MAX).await,
            Err(StoreError::Conflict)
        );
        assert_eq!(
            store
                .put_child(record(t, tid(899_999), Some(tid(42))), u32::MAX)
                .await,
            Err(StoreError::ParentMissing)
        );
    }
    for n in 2..limit {
        store
            .put_child(record(t, tid(900_000 + n), Some(tid(900_000))), u32::MAX)
            .await
            .unwrap();
    }
    assert_eq!(
        tree_ids(store.txn_tree(t).await.unwrap()).len(),
        MAX_TOKENS_PER_TXN
    );
    let extra = record(t, tid(900_000 + limit), Some(tid(900_000)));
    assert_eq!(
        store.put_child(extra.clone(), u32::MAX).await,
        Err(StoreError::TxnFull {
            limit: MAX_TOKENS_PER_TXN
        })
    );
    assert_eq!(
        store.get(extra.token_id).await.unwrap(),
        None,
        "nothing written"
    );
    // Other transactions are unaffected.
    let other = txn(991);
    store.put(record(other, tid(950_000), None)).await.unwrap();
    store
        .put_child(record(other, tid(950_001), Some(tid(950_000))), u32::MAX)
        .await
        .unwrap();
}

/// `get_with_state` answers exactly what `get` and `state` answer separately.
async fn record_and_state_read_together<S: TokenStore>(store: &S) {
    let t = txn(880);
    let root = record(t, tid(880_000), None);
    store.put(root.clone()).await.unwrap();
    store
        .put_child(record(t, tid(880_001), Some(tid(880_000))), 10)
        .await
        .unwrap();
    let (r, s) = store.get_with_state(root.token_id).await.unwrap().unwrap();
    assert_eq!(*r, root);
    assert_eq!(Some(s.clone()), store.state(root.token_id).await.unwrap());
    assert_eq!(s.children, 1);
    store
        .revoke_at(
            RevokeTarget::Token(root.token_id),
            by("op"),
            "why".into(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    let (_, s) = store.get_with_state(tid(880_001)).await.unwrap().unwrap();
    assert!(
        s.revoked.is_some(),
        "the descendant's state comes with its record"
    );
    assert_eq!(store.get_with_state(tid(889_999)).await.unwrap(), None);
}

/// The audit trail and the transaction listing. Run on a fresh store: it lists and purges
/// the whole trail.
pub(crate) async fn audit_and_listing<S: TokenStore>(store: S) {
    audit_and_listing_for(store, Expiry::Purged).await;
}

/// [`audit_and_listing`] for a backend that disposes of expired data as `expiry` says.
pub(crate) async fn audit_and_listing_for<S: TokenStore>(store: S, expiry: Expiry) {
    events_are_written_with_their_token_changes(&store).await;
    a_spent_use_is_written_with_its_event(&store).await;
    appended_events_page_in_id_order(&store).await;
    listing_filters_and_pages_newest_first(&store, expiry).await;
    if expiry == Expiry::Purged {
        events_outlive_tokens_and_go_with_their_own_retention(&store).await;
    }
}

fn party_of(id: &str) -> Party {
    party(id, ActorKind::Agent)
}

async fn events_are_written_with_their_token_changes<S: TokenStore>(store: &S) {
    let t = txn(3_000_000);
    let root = record(t, tid(3_000), None);
    let minted = Event::minted(EventId(10), &root);
    store.insert(root.clone(), minted.clone()).await.unwrap();
    let child = record(t, tid(3_001), Some(tid(3_000)));
    let derived = Event::downscoped(EventId(20), &root, &child);
    store
        .insert_child(child.clone(), 1, derived.clone())
        .await
        .unwrap();
    // A refused child writes no event either.
    let refused = record(t, tid(3_002), Some(tid(3_000)));
    let e = Event::downscoped(EventId(25), &root, &refused);
    assert_eq!(
        store.insert_child(refused, 1, e).await,
        Err(StoreError::FanOutExceeded { limit: 1 })
    );
    // A conflicting insert writes none.
    let dup = Event::minted(EventId(26), &root);
    assert_eq!(
        store.insert(root.clone(), dup).await,
        Err(StoreError::Conflict)
    );
    let revoked = store
        .revoke(
            RevokeTarget::Token(tid(3_001)),
            by("op"),
            "leak".into(),
            EventId(30_000),
        )
        .await
        .unwrap();
    assert_eq!(revoked.ids, vec![tid(3_001)]);
    let revocation = revoked.event.clone().unwrap();
    assert_eq!(revocation.id, EventId(30_000));
    assert_eq!(revocation.token, Some(tid(3_001)));
    assert_eq!(revocation.actor, "op");
    assert_eq!(
        revocation.kind,
        writ_core::EventKind::Revoked {
            reason: "leak".into(),
            revoked: 1
        }
    );
    // Its time is the revocation's.
    let state = store.state(tid(3_001)).await.unwrap().unwrap();
    assert_eq!(state.revoked.unwrap().at, UnixMillis(30));
    // A whole transaction: no token named.
    let all = store
        .revoke(
            RevokeTarget::Txn(t),
            by("op"),
            "all".into(),
            EventId(40_000),
        )
        .await
        .unwrap();
    assert_eq!(all.ids, vec![tid(3_000)]);
    assert_eq!(all.event.as_ref().unwrap().token, None);
    // Revoking either again revokes nothing new and records nothing.
    for (target, id) in [
        (RevokeTarget::Token(tid(3_001)), 45_000),
        (RevokeTarget::Token(tid(3_000)), 46_000),
        (RevokeTarget::Txn(t), 47_000),
    ] {
        let again = store
            .revoke(target, by("op"), "again".into(), EventId(id))
            .await
            .unwrap();
        assert_eq!((again.ids, again.event), (vec![], None), "{target:?}");
    }
    // An unknown transaction: not found, nothing recorded.
    assert_eq!(
        store
            .revoke(
                RevokeTarget::Txn(txn(3_000_001)),
                by("op"),
                "x".into(),
                EventId(50_000),
            )
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.events(t, None, 100).await.unwrap(),
        vec![minted, derived, revocation, all.event.unwrap()]
    );
    assert_eq!(
        store.events(txn(3_000_001), None, 100).await.unwrap(),
        vec![]
    );
    assert_eq!(store.last_event_id().await.unwrap(), Some(EventId(40_000)));
}

async fn a_spent_use_is_written_with_its_event<S: TokenStore>(store: &S) {
    let t = txn(3_050_000);
    let r = with_uses(record(t, tid(3_050), None), Some(1));
    store
        .insert(r.clone(), Event::minted(EventId(60_000), &r))
        .await
        .unwrap();
    let ev = |id| {
        Event::validated(
            EventId(id),
            &r,
            &by("svc:payments"),
            Some("pay".into()),
            "allowed",
            String::new(),
        )
    };
    assert_eq!(
        store
            .consume_use(r.token_id, Some(ev(60_001)))
            .await
            .unwrap(),
        UseOutcome::Consumed { remaining: Some(0) }
    );
    // Exhausted: neither the use nor the event is written.
    assert_eq!(
        store
            .consume_use(r.token_id, Some(ev(60_002)))
            .await
            .unwrap(),
        UseOutcome::Exhausted
    );
    let ids: Vec<u64> = store
        .events(t, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.0)
        .collect();
    assert_eq!(ids, vec![60_000, 60_001]);
}

async fn appended_events_page_in_id_order<S: TokenStore>(store: &S) {
    let t = txn(3_100_000);
    let r = record(t, tid(3_100), None);
    // Appended out of order and in two writes; read back in id order.
    let ev = |id: u64| {
        Event::validated(
            EventId(id),
            &r,
            &by("svc:payments"),
            None,
            "active",
            String::new(),
        )
    };
    store
        .append_events(vec![ev(1_000_005), ev(1_000_001)])
        .await
        .unwrap();
    store
        .append_events(vec![ev(1_000_003), ev(1_000_002), ev(1_000_004)])
        .await
        .unwrap();
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id.0).collect::<Vec<_>>();
    assert_eq!(
        ids(store.events(t, None, 2).await.unwrap()),
        vec![1_000_001, 1_000_002]
    );
    assert_eq!(
        ids(store.events(t, Some(EventId(1_000_002)), 2).await.unwrap()),
        vec![1_000_003, 1_000_004]
    );
    assert_eq!(
        ids(store.events(t, Some(EventId(1_000_004)), 2).await.unwrap()),
        vec![1_000_005]
    );
    assert_eq!(
        store.events(t, Some(EventId(u64::MAX)), 2).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store.last_event_id().await.unwrap(),
        Some(EventId(1_000_005))
    );
    store.append_events(Vec::new()).await.unwrap();
}

async fn listing_filters_and_pages_newest_first<S: TokenStore>(store: &S, expiry: Expiry) {
    use crate::api::TxnQuery;
    use writ_core::Status;
    // Six transactions minted at 4_000_000 + k ms: subjects alternate, k = 3 goes to
    // agent:x through a child, k = 4 is revoked, k = 5 has expired.
    let mut txns = Vec::new();
    for k in 0..6u32 {
        let t = txn(4_000_000 + u64::from(k));
        txns.push(t);
        let mut root = record(t, tid(4_000 + k), None);
        root.subject = if k % 2 == 0 { "user:bea" } else { "user:cy" }.to_owned();
        if k == 5 {
            root.grant.expires_at = UnixMillis(4_500_000);
        }
        store.put(root.clone()).await.unwrap();
        if k == 3 {
            let mut child = record(t, tid(4_100), Some(root.token_id));
            child.subject = root.subject.clone();
            child.audience = party_of("agent:x");
            store.put_child(child, 10).await.unwrap();
        }
    }
    store
        .revoke_at(
            RevokeTarget::Txn(txns[4]),
            by("op"),
            "r".into(),
            UnixMillis(9),
        )
        .await
        .unwrap();
    let now = UnixMillis(5_000_000);
    let query = |f: &dyn Fn(&mut TxnQuery)| {
        let mut q = TxnQuery {
            subject: None,
            party: None,
            since: Some(UnixMillis(4_000_000)),
            until: Some(UnixMillis(4_000_006)),
            status: None,
            now,
            before: None,
            limit: 100,
        };
        f(&mut q);
        q
    };
    let list = |q: TxnQuery| async move {
        let page = store.list_txns(q).await.unwrap();
        let ks: Vec<u64> = page
            .roots
            .iter()
            .map(|(r, _)| u64::from(r.token_id.0[3]) - u64::from(tid(4_000).0[3]))
            .collect();
        (ks, page.next)
    };
    assert_eq!(list(query(&|_| {})).await.0, vec![5, 4, 3, 2, 1, 0]);
    let bea = |q: &mut TxnQuery| q.subject = Some("user:bea".into());
    assert_eq!(list(query(&bea)).await.0, vec![4, 2, 0]);
    let x = |q: &mut TxnQuery| q.party = Some("agent:x".into());
    assert_eq!(list(query(&x)).await.0, vec![3]);
    // Party and subject together: both must match.
    let x_bea = |q: &mut TxnQuery| {
        q.party = Some("agent:x".into());
        q.subject = Some("user:bea".into());
    };
    assert_eq!(list(query(&x_bea)).await.0, Vec::<u64>::new());
    // Every root names the minter and its audience as parties.
    let gw = |q: &mut TxnQuery| q.party = Some("agent:planner".into());
    assert_eq!(list(query(&gw)).await.0, vec![5, 4, 3, 2, 1, 0]);
    let nobody = |q: &mut TxnQuery| q.party = Some("agent:nobody".into());
    assert_eq!(list(query(&nobody)).await.0, Vec::<u64>::new());
    // Time window: [since, until).
    let window = |q: &mut TxnQuery| {
        q.since = Some(UnixMillis(4_000_001));
        q.until = Some(UnixMillis(4_000_003));
    };
    assert_eq!(list(query(&window)).await.0, vec![2, 1]);
    // Status at `now`.
    let revoked = |q: &mut TxnQuery| q.status = Some(Status::Revoked);
    assert_eq!(list(query(&revoked)).await.0, vec![4]);
    let expired = |q: &mut TxnQuery| q.status = Some(Status::Expired);
    assert_eq!(list(query(&expired)).await.0, vec![5]);
    let active = |q: &mut TxnQuery| q.status = Some(Status::Active);
    assert_eq!(list(query(&active)).await.0, vec![3, 2, 1, 0]);
    // Pages of two, each continuing from the previous cursor, see everything once.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let (ks, next) = list(query(&|q| {
            q.limit = 2;
            q.before = before;
        }))
        .await;
        assert!(ks.len() <= 2);
        seen.extend(ks);
        match next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1, 0]);
    if expiry == Expiry::ServerSide {
        return;
    }
    // A purged root takes its transaction out of every listing index.
    let purged = store
        .purge_expired(UnixMillis(4_500_001), usize::MAX)
        .await
        .unwrap();
    assert_eq!(purged.tokens, 1);
    assert_eq!(list(query(&|_| {})).await.0, vec![4, 3, 2, 1, 0]);
    assert_eq!(list(query(&gw)).await.0, vec![4, 3, 2, 1, 0]);
    assert_eq!(list(query(&expired)).await.0, Vec::<u64>::new());
}

async fn events_outlive_tokens_and_go_with_their_own_retention<S: TokenStore>(store: &S) {
    let before = store.stats().await.unwrap();
    assert!(before.events > 0);
    // Every token is purged; the trail stays.
    store
        .purge_expired(UnixMillis(u64::MAX), usize::MAX)
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(
        (after.tokens, after.index_entries, after.txn_index_entries),
        (0, 0, 0)
    );
    assert_eq!(after.events, before.events);
    // Events before 1 s (1_000_000 µs) go: the four of the first test (at 10, 20, 30_000
    // and 40_000 µs), the two of the use test (60_000 and 60_001) and the listing test's
    // revocation (at 9 ms); the rest stay.
    let purged = store.purge_events(UnixMillis(1_000), 2).await.unwrap();
    assert_eq!((purged.tokens, purged.more), (2, true));
    let purged = store.purge_events(UnixMillis(1_000), 100).await.unwrap();
    assert_eq!((purged.tokens, purged.more), (5, false));
    let t = txn(3_100_000);
    let left: Vec<u64> = store
        .events(t, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.0)
        .collect();
    assert_eq!(left, (1_000_001..=1_000_005).collect::<Vec<u64>>());
    assert_eq!(
        store.events(txn(3_000_000), None, 100).await.unwrap(),
        vec![]
    );
    let everything = store
        .purge_events(UnixMillis(u64::MAX / 1000), usize::MAX)
        .await
        .unwrap();
    assert!(!everything.more);
    assert_eq!(store.stats().await.unwrap(), StoreStats::default());
    assert_eq!(
        store.last_event_id().await.unwrap(),
        None,
        "the log is empty"
    );
}

/// The party the kill-switch checks disable.
const ROGUE: &str = "agent:rogue";

/// The operator who disables it, proven by mTLS.
fn operator() -> Actor {
    Actor {
        id: "op:alice".to_owned(),
        auth: AuthMethod::Mtls,
    }
}

/// `record` with its audience and its chain of actors (first to current) named.
fn hop(txn: TxnId, id: u32, parent: Option<u32>, actors: &[&str], audience: &str) -> TokenRecord {
    let mut r = record(txn, tid(id), parent.map(tid));
    r.depth = u32::try_from(actors.len()).unwrap() - 1;
    r.actors = actors.iter().map(|a| party_of(a)).collect();
    r.audience = party_of(audience);
    r
}

/// Stores `records` in order: roots with `insert`, the rest with `insert_child`.
async fn put_all<S: TokenStore>(store: &S, records: Vec<TokenRecord>) {
    for r in records {
        if r.parent.is_some() {
            store.put_child(r, u32::MAX).await.unwrap();
        } else {
            store.put(r).await.unwrap();
        }
    }
}

/// The revoked events of a transaction.
async fn revoked_events<S: TokenStore>(store: &S, t: TxnId) -> Vec<Event> {
    let all = store.events(t, None, usize::MAX).await.unwrap();
    all.into_iter()
        .filter(|e| matches!(e.kind, EventKind::Revoked { .. }))
        .collect()
}

async fn disabling_a_party_revokes_what_it_holds_and_presents<S: TokenStore>(store: &S) {
    let (a, b, c, d, e) = (txn(800), txn(801), txn(802), txn(803), txn(804));
    let (gw, planner, pay) = ("svc:gateway", "agent:planner", "svc:payments");
    put_all(
        store,
        vec![
            // A: the rogue holds 80_001 (audience), derived 80_002 (current actor) and is
            // only an earlier actor of 80_003; 80_004 and 80_005 are a sibling branch.
            hop(a, 80_000, None, &[gw], planner),
            hop(a, 80_001, Some(80_000), &[gw, planner], ROGUE),
            hop(a, 80_002, Some(80_001), &[gw, planner, ROGUE], pay),
            hop(
                a,
                80_003,
                Some(80_002),
                &[gw, planner, ROGUE, pay],
                "svc:ledger",
            ),
            hop(a, 80_004, Some(80_000), &[gw, planner], "agent:other"),
            hop(a, 80_005, Some(80_004), &[gw, planner, "agent:other"], pay),
            // B: the rogue minted the root (its current actor): the whole tree goes.
            hop(b, 80_100, None, &[ROGUE], pay),
            hop(b, 80_101, Some(80_100), &[ROGUE, pay], "agent:other"),
            // C: two tokens held apart, a third already revoked, an unrelated sibling.
            hop(c, 80_200, None, &[gw], planner),
            hop(c, 80_201, Some(80_200), &[gw, planner], ROGUE),
            hop(c, 80_202, Some(80_200), &[gw, planner], ROGUE),
            hop(c, 80_203, Some(80_200), &[gw, planner], "agent:other"),
            hop(c, 80_204, Some(80_200), &[gw, planner], ROGUE),
            // D: the rogue is nowhere.
            hop(d, 80_300, None, &[gw], planner),
            hop(d, 80_301, Some(80_300), &[gw, planner], pay),
            // E: the rogue's, revoked whole already.
            hop(e, 80_400, None, &[gw], ROGUE),
            // Expired long ago (in 1970, past the cutoffs the purge checks use) but still
            // stored: revoked too.
            expiring(hop(e, 80_401, None, &[ROGUE], pay), 3_000_000),
        ],
    )
    .await;
    let earlier = |target| store.revoke_at(target, by("op"), "earlier".into(), UnixMillis(3));
    earlier(RevokeTarget::Token(tid(80_204))).await.unwrap();
    earlier(RevokeTarget::Token(tid(80_400))).await.unwrap();
    let events_before = store.stats().await.unwrap().events;

    let issued = Issued::at(UnixMillis(7_000));
    let done = store
        .revoke_party(
            ROGUE.into(),
            operator(),
            "compromised".into(),
            issued.clone(),
        )
        .await
        .unwrap();
    let mut ids = done.ids.clone();
    ids.sort();
    let expected: Vec<TokenId> = [
        80_001, 80_002, 80_003, 80_100, 80_101, 80_201, 80_202, 80_401,
    ]
    .map(tid)
    .to_vec();
    assert_eq!(ids, expected);
    assert_eq!(
        (done.revoked, done.txns, done.scanned),
        (8, 4, 4),
        "A, B, C and E touched; D not listed"
    );
    // Each token revoked by the operator, at its event's time, for the party's reason,
    // caused by the topmost token of the party above it.
    let reason = "party agent:rogue disabled: compromised";
    for (token, cause) in [
        (80_001, 80_001),
        (80_002, 80_001),
        (80_003, 80_001),
        (80_100, 80_100),
        (80_101, 80_100),
        (80_201, 80_201),
        (80_202, 80_202),
        (80_401, 80_401),
    ] {
        let r = store
            .state(tid(token))
            .await
            .unwrap()
            .unwrap()
            .revoked
            .unwrap();
        assert_eq!(
            (r.by.as_str(), r.reason.as_str(), r.cause, r.at),
            ("op:alice", reason, tid(cause), UnixMillis(7_000)),
            "{token}"
        );
    }
    // Unrelated tokens, siblings and the earlier revocations are untouched.
    for n in [80_000, 80_004, 80_005, 80_200, 80_203, 80_300, 80_301] {
        assert_eq!(
            store.state(tid(n)).await.unwrap().unwrap().revoked,
            None,
            "{n}"
        );
    }
    for n in [80_204, 80_400] {
        let s = store.state(tid(n)).await.unwrap().unwrap();
        assert_eq!(revoked_reason(&s), Some(("earlier", tid(n))));
    }
    // One revoked event per touched transaction, by the operator as it authenticated,
    // written with the change and reported to the issuer.
    let event_of = |t| async move {
        let mut events = revoked_events(store, t).await;
        events.retain(|e| e.actor == "op:alice");
        assert_eq!(events.len(), 1, "{t}");
        events.remove(0)
    };
    let mut written = Vec::new();
    for (t, token, count) in [
        (a, Some(tid(80_001)), 3),
        (b, Some(tid(80_100)), 2),
        (c, None, 2),
        (e, Some(tid(80_401)), 1),
    ] {
        let ev = event_of(t).await;
        assert_eq!(
            (ev.txn, ev.token, ev.auth, &ev.subject),
            (t, token, Some(AuthMethod::Mtls), &"user:alice".to_owned())
        );
        assert_eq!(
            ev.kind,
            EventKind::Revoked {
                reason: reason.into(),
                revoked: count
            }
        );
        assert_eq!(ev.id.at(), UnixMillis(7_000));
        written.push(ev);
    }
    assert!(revoked_events(store, d).await.is_empty());
    let mut stored = issued.stored();
    stored.sort_by_key(|e| e.id);
    written.sort_by_key(|e| e.id);
    assert_eq!(stored, written, "every stored event reported, once");
    assert_eq!(issued.issued().len(), 4, "an id only for a write");
    assert!(issued.abandoned.lock().unwrap().is_empty());
    assert_eq!(store.stats().await.unwrap().events, events_before + 4);

    // Again: nothing new, no id, no event.
    let again = Issued::at(UnixMillis(8_000));
    let done = store
        .revoke_party(ROGUE.into(), operator(), "again".into(), again.clone())
        .await
        .unwrap();
    assert_eq!(
        done,
        PartyRevoked {
            scanned: 4,
            ..PartyRevoked::default()
        }
    );
    assert!(again.issued().is_empty());
    assert_eq!(store.stats().await.unwrap().events, events_before + 4);
    // A party nobody has heard of: nothing at all.
    let nobody = store
        .revoke_party("agent:nobody".into(), operator(), "x".into(), again.clone())
        .await
        .unwrap();
    assert_eq!(nobody, PartyRevoked::default());

    // Enabling the party again restores nothing that was revoked.
    let disabled = PartyDisable::new(UnixMillis(7_000), "op:alice".into(), "compromised".into());
    store
        .set_party_disabled(ROGUE.into(), Some(disabled))
        .await
        .unwrap();
    store.set_party_disabled(ROGUE.into(), None).await.unwrap();
    for id in &expected {
        let s = store.state(*id).await.unwrap().unwrap();
        assert_eq!(revoked_reason(&s).map(|(r, _)| r), Some(reason));
    }
    // And a revoked token of the party derives nothing.
    assert_eq!(
        store
            .put_child(
                hop(a, 80_006, Some(80_002), &[gw, planner, ROGUE, pay], "x"),
                8
            )
            .await,
        Err(StoreError::ParentRevoked)
    );
}

/// More transactions than one page of the walk, and more tokens than the answer lists.
async fn a_party_revocation_walks_every_page_and_bounds_its_answer<S: TokenStore>(store: &S) {
    const PARTY: &str = "agent:busy";
    // A page and then some (300).
    const TXNS: u32 = PARTY_PAGE as u32 + 44;
    const CHILDREN: u32 = MAX_PARTY_REVOKED_IDS as u32;
    let mut records = Vec::new();
    for i in 0..TXNS {
        records.push(hop(
            txn(81_000 + u64::from(i)),
            810_000 + i,
            None,
            &["svc:gw"],
            PARTY,
        ));
    }
    // One transaction where the party holds a thousand tokens apart.
    let big = txn(82_000);
    records.push(hop(big, 820_000, None, &["svc:gw"], "agent:planner"));
    for i in 1..=CHILDREN {
        records.push(hop(
            big,
            820_000 + i,
            Some(820_000),
            &["svc:gw", "agent:planner"],
            PARTY,
        ));
    }
    put_all(store, records).await;
    let issued = Issued::at(UnixMillis(9_000));
    let done = store
        .revoke_party(PARTY.into(), operator(), "r".into(), issued.clone())
        .await
        .unwrap();
    let total = u64::from(TXNS + CHILDREN);
    assert_eq!(
        (done.revoked, done.txns, done.scanned),
        (total, u64::from(TXNS) + 1, u64::from(TXNS) + 1)
    );
    assert_eq!(
        done.ids.len(),
        MAX_PARTY_REVOKED_IDS,
        "listed up to the bound"
    );
    assert_eq!(
        done.ids.iter().collect::<BTreeSet<_>>().len(),
        done.ids.len()
    );
    assert_eq!(issued.issued().len(), TXNS as usize + 1);
    for i in [0, PARTY_PAGE as u32 - 1, PARTY_PAGE as u32, TXNS - 1] {
        let s = store.state(tid(810_000 + i)).await.unwrap().unwrap();
        assert!(s.revoked.is_some(), "transaction {i}");
    }
    let ev = revoked_events(store, big).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].token, None, "a thousand subtrees");
    assert_eq!(
        ev[0].kind,
        EventKind::Revoked {
            reason: "party agent:busy disabled: r".into(),
            revoked: CHILDREN
        }
    );
    assert_eq!(
        store.state(tid(820_000)).await.unwrap().unwrap().revoked,
        None
    );
}

/// Other parties deriving under the disabled party's tokens while it is revoked: each child
/// lands first and is revoked with the subtree, or finds its parent revoked.
async fn derive_racing_party_revocation_never_leaves_a_usable_descendant<S: TokenStore>(
    store: Arc<S>,
) {
    const PARTY: &str = "agent:racing";
    const TASKS: u32 = 32;
    for round in 0..3u32 {
        let t = txn(83_000 + u64::from(round));
        let base = 830_000 + round * 1_000;
        put_all(
            &*store,
            vec![
                hop(t, base, None, &["svc:gw"], "agent:planner"),
                hop(t, base + 1, Some(base), &["svc:gw", "agent:planner"], PARTY),
                hop(
                    t,
                    base + 2,
                    Some(base + 1),
                    &["svc:gw", "agent:planner", PARTY],
                    "agent:helper",
                ),
            ],
        )
        .await;
        let spawn_deriver = |i: u32| {
            let store = store.clone();
            tokio::spawn(async move {
                // The helper derives a child, which derives a grandchild.
                let (child, grandchild) = (base + 100 + i, base + 500 + i);
                let chain = ["svc:gw", "agent:planner", PARTY, "agent:helper"];
                let steps = [
                    hop(t, child, Some(base + 2), &chain, "svc:z"),
                    hop(
                        t,
                        grandchild,
                        Some(child),
                        &[&chain[..], &["svc:z"]].concat(),
                        "svc:y",
                    ),
                ];
                for r in steps {
                    match store.put_child(r, u32::MAX).await {
                        Ok(()) => {}
                        Err(StoreError::ParentRevoked) => return,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut tasks: Vec<_> = (0..TASKS / 2).map(spawn_deriver).collect();
        let revoker = {
            let store = store.clone();
            tokio::spawn(async move {
                let issued = Issued::at(UnixMillis(10_000));
                store
                    .revoke_party(PARTY.into(), operator(), "race".into(), issued)
                    .await
            })
        };
        tasks.extend((TASKS / 2..TASKS).map(spawn_deriver));
        for task in tasks {
            task.await.unwrap();
        }
        let done = revoker.await.unwrap().unwrap();
        let newly: BTreeSet<TokenId> = done.ids.into_iter().collect();
        for id in tree_ids(store.txn_tree(t).await.unwrap()) {
            let s = store.state(id).await.unwrap().unwrap();
            if id == tid(base) {
                assert_eq!(s.revoked, None, "the root is not the party's");
                continue;
            }
            let r = s
                .revoked
                .unwrap_or_else(|| panic!("round {round}: {id} survived"));
            assert_eq!(r.cause, tid(base + 1));
            assert!(newly.contains(&id), "{id} missing from the revoked ids");
        }
    }
}

async fn disablements_are_recorded_replaced_and_cleared<S: TokenStore>(store: &S) {
    let before = store.disabled_parties().await.unwrap();
    assert!(before.iter().all(|(p, _)| !p.starts_with("agent:d")));
    let first = PartyDisable::new(UnixMillis(1), "op:alice".into(), "leaked key".into());
    let second = PartyDisable::new(UnixMillis(2), "op:bob".into(), "still leaking".into());
    let long = PartyDisable {
        at: UnixMillis(3),
        by: "op:bob".into(),
        reason: "x".repeat(10_000),
    };
    store
        .set_party_disabled("agent:d2".into(), Some(long))
        .await
        .unwrap();
    store
        .set_party_disabled("agent:d1".into(), Some(first))
        .await
        .unwrap();
    store
        .set_party_disabled("agent:d1".into(), Some(second.clone()))
        .await
        .unwrap();
    let listed = || {
        let listing = store.disabled_parties();
        async move {
            let mut all = listing.await.unwrap();
            all.retain(|(p, _)| p.starts_with("agent:d"));
            all
        }
    };
    let all = listed().await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0],
        ("agent:d1".to_owned(), second),
        "replaced, in id order"
    );
    assert_eq!(all[1].0, "agent:d2");
    assert!(
        all[1].1.reason.len() <= writ_core::limits::MAX_DETAIL_BYTES,
        "a reason stored bounded however it was built"
    );
    store
        .set_party_disabled("agent:d1".into(), None)
        .await
        .unwrap();
    store
        .set_party_disabled("agent:d9".into(), None)
        .await
        .unwrap();
    let all = listed().await;
    assert_eq!(
        all.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["agent:d2"]
    );
    store
        .set_party_disabled("agent:d2".into(), None)
        .await
        .unwrap();
    assert_eq!(listed().await, vec![]);
}

// ---- Consent requests ----

/// When the consent checks' requests are made (transactions of their own keep them apart;
/// the expiry and purge checks use early times of their own, far below this).
const CONSENT_T: u64 = 1_700_000_000_000;
/// How long a consent request lives in these checks.
const CONSENT_TTL: u64 = 300_000;
/// The party the redeemed tokens are for.
const RESOURCE: &str = "svc:ledger";

/// A pending request made at `at` with `token` (a token of `txn` held by `svc:payments`,
/// as [`record`] builds it) to pay `n`: requests with different `n` are different actions.
/// The id's random part is the transaction's time and `n`, so ids made at one instant
/// differ too.
pub(crate) fn consent_request(txn: TxnId, token: TokenId, n: u64, at: u64) -> ConsentRequest {
    let mut entropy = [0u8; 8];
    entropy[..4].copy_from_slice(&txn.0[4..8]);
    entropy[4..].copy_from_slice(&(n as u32).to_be_bytes());
    let action = ConsentAction {
        scope: "payments:write".into(),
        attributes: BTreeMap::from([("amount".to_owned(), Value::Int(n as i64))]),
    };
    let view = |id: &str, kind| PartyView {
        id: id.to_owned(),
        display_name: None,
        kind,
        client_type: ClientType::Confidential,
    };
    ConsentRequest {
        id: ConsentId::new(UnixMillis(at), entropy),
        txn,
        token,
        requester: Actor {
            id: "svc:payments".into(),
            auth: AuthMethod::Mtls,
        },
        subject: "user:alice".into(),
        key: action_key(token, &action, RESOURCE),
        action,
        scope_description: "move money".into(),
        resource: party(RESOURCE, ActorKind::Workload),
        chain: vec![
            view("svc:gateway", ActorKind::Workload),
            view("agent:planner", ActorKind::Agent),
            view("svc:payments", ActorKind::Workload),
        ],
        resource_view: view(RESOURCE, ActorKind::Workload),
        purpose: "book a trip".into(),
        reason: "pay the hotel".into(),
        created_at: UnixMillis(at),
        expires_at: UnixMillis(at + CONSENT_TTL),
        link_hash: [n as u8; 32],
        state: ConsentState::Pending,
    }
}

/// The single-use child `r` is redeemed for, issued at `at`.
fn consent_child(r: &ConsentRequest, id: TokenId, at: u64) -> TokenRecord {
    let mut c = record(r.txn, id, Some(r.token));
    c.audience = party(RESOURCE, ActorKind::Workload);
    c.grant.max_uses = Some(1);
    c.issued_at = UnixMillis(at);
    c.consent = Some(r.mark());
    c
}

/// The user's decision, by the wallet app through the back-channel.
fn decision(approved: bool, at: u64, subject: &str) -> Decision {
    Decision {
        approved,
        at: UnixMillis(at),
        by: "app:wallet".into(),
        auth: Some(AuthMethod::Mtls),
        channel: Channel::BackChannel,
        subject: subject.into(),
    }
}

fn wallet() -> Actor {
    Actor {
        id: "app:wallet".into(),
        auth: AuthMethod::Mtls,
    }
}

/// Shorthands for the consent writes, with their events made up.
pub(crate) trait ConsentShorthand: TokenStore {
    /// `insert_consent` with its `consent_requested` event.
    fn ask(
        &self,
        r: ConsentRequest,
    ) -> impl Future<Output = Result<ConsentInsert, StoreError>> + Send {
        let e = Event::consent_requested(event_at(r.created_at), &r);
        self.insert_consent(r, e)
    }

    /// `decide_consent` of `r` with its event.
    fn decide(
        &self,
        r: &ConsentRequest,
        d: Decision,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let e = Event::consent_decided(event_at(d.at), r, &wallet(), d.approved, "back_channel");
        self.decide_consent(r.id, d, e)
    }

    /// `redeem_consent` of `r` by `by` for `child`, allowing 8 children.
    fn redeem(
        &self,
        r: &ConsentRequest,
        by: &str,
        child: TokenRecord,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        self.redeem_with(r, by, child, 8)
    }

    /// `redeem_consent` with a fan-out limit.
    fn redeem_with(
        &self,
        r: &ConsentRequest,
        by: &str,
        child: TokenRecord,
        max_children: u32,
    ) -> impl Future<Output = Result<ConsentRequest, StoreError>> + Send {
        let e = Event::consent_redeemed(event_at(child.issued_at), r, &child);
        self.redeem_consent(r.id, by.to_owned(), child, max_children, e)
    }
}

impl<S: TokenStore> ConsentShorthand for S {}

/// The consent events of a transaction, in order.
async fn consent_events<S: TokenStore>(store: &S, t: TxnId) -> Vec<EventKind> {
    store
        .events(t, None, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| {
            matches!(
                k,
                EventKind::ConsentRequested { .. }
                    | EventKind::ConsentApproved { .. }
                    | EventKind::ConsentDenied { .. }
                    | EventKind::ConsentRedeemed { .. }
                    | EventKind::ConsentExpired { .. }
            )
        })
        .collect()
}

/// Stores a root token for consent requests: held by `svc:payments`.
async fn consent_token<S: TokenStore>(store: &S, t: TxnId, id: TokenId) {
    store.put(record(t, id, None)).await.unwrap();
}

fn status_at(r: &ConsentRequest, at: u64) -> ConsentStatus {
    r.status(UnixMillis(at))
}

/// Every consent check; part of [`run`].
/// The consent requests' checks, for a backend that disposes of expired data as `expiry`
/// says.
pub(crate) async fn consents_for<S: TokenStore>(store: Arc<S>, expiry: Expiry) {
    consent_requests_are_stored_once_per_open_action(&*store).await;
    a_transaction_has_a_bounded_number_of_open_requests(&*store).await;
    decisions_count_once_for_the_subject_while_pending(&*store).await;
    redeeming_writes_the_child_and_the_request_together(&*store).await;
    redeeming_respects_the_parent_and_its_limits(&*store).await;
    concurrent_redeems_of_one_request_admit_one(store.clone()).await;
    consent_listing_filters_and_pages(&*store).await;
    expiry_marks_open_requests_once(&*store).await;
    if expiry == Expiry::Purged {
        // Last: counts keys.
        the_consent_purge_deletes_only_old_closed_requests(&*store).await;
    }
}

async fn consent_requests_are_stored_once_per_open_action<S: TokenStore>(store: &S) {
    let t = txn(40_000);
    let token = tid(400_000);
    consent_token(store, t, token).await;
    let r = consent_request(t, token, 1, CONSENT_T);
    assert_eq!(store.ask(r.clone()).await, Ok(ConsentInsert::Inserted));
    assert_eq!(store.consent(r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(store.consent_by_key(r.key).await.unwrap(), Some(r.clone()));
    let unknown = ConsentId::new(UnixMillis(CONSENT_T), [0xee; 8]);
    assert_eq!(store.consent(unknown).await.unwrap(), None);
    assert_eq!(store.consent_by_key([0xee; 32]).await.unwrap(), None);
    assert!(matches!(
        consent_events(store, t).await[..],
        [EventKind::ConsentRequested { request, .. }] if request == r.id
    ));

    // The same action again while the first is open: that one, and nothing written.
    let mut again = consent_request(t, token, 1, CONSENT_T + 10);
    again.id = ConsentId::new(UnixMillis(CONSENT_T + 10), [0xaa; 8]);
    again.reason = "pay the hotel, please".into();
    assert_eq!(again.key, r.key, "the reason is not part of the action");
    assert_eq!(
        store.ask(again.clone()).await,
        Ok(ConsentInsert::Existing(Box::new(r.clone())))
    );
    assert_eq!(store.consent(again.id).await.unwrap(), None);
    assert_eq!(consent_events(store, t).await.len(), 1, "no second event");
    // The same id again: refused.
    let mut twin = consent_request(t, token, 2, CONSENT_T);
    twin.id = r.id;
    assert_eq!(store.ask(twin).await, Err(StoreError::Conflict));
    assert_eq!(store.consent(r.id).await.unwrap(), Some(r.clone()));

    // Once it is closed (denied, redeemed, or past its expiry), the same action is asked
    // anew, and the key names the newest request.
    let denied = store
        .decide(&r, decision(false, CONSENT_T + 20, "user:alice"))
        .await
        .unwrap();
    assert_eq!(status_at(&denied, CONSENT_T + 20), ConsentStatus::Denied);
    let mut after_denial = consent_request(t, token, 1, CONSENT_T + 30);
    after_denial.id = ConsentId::new(UnixMillis(CONSENT_T + 30), [0xab; 8]);
    assert_eq!(
        store.ask(after_denial.clone()).await,
        Ok(ConsentInsert::Inserted)
    );
    assert_eq!(
        store.consent_by_key(r.key).await.unwrap(),
        Some(after_denial.clone())
    );
    store
        .decide(&after_denial, decision(true, CONSENT_T + 40, "user:alice"))
        .await
        .unwrap();
    let child = consent_child(&after_denial, tid(400_001), CONSENT_T + 50);
    store
        .redeem(&after_denial, "svc:payments", child)
        .await
        .unwrap();
    let mut after_redemption = consent_request(t, token, 1, CONSENT_T + 60);
    after_redemption.id = ConsentId::new(UnixMillis(CONSENT_T + 60), [0xac; 8]);
    assert_eq!(
        store.ask(after_redemption.clone()).await,
        Ok(ConsentInsert::Inserted)
    );
    let expiry = after_redemption.expires_at.0;
    let mut after_expiry = consent_request(t, token, 1, expiry);
    after_expiry.id = ConsentId::new(UnixMillis(expiry), [0xad; 8]);
    assert_eq!(
        store.ask(after_expiry.clone()).await,
        Ok(ConsentInsert::Inserted),
        "a pending request past its expiry is not open"
    );
    assert_eq!(
        store.consent_by_key(r.key).await.unwrap(),
        Some(after_expiry)
    );
    assert_eq!(
        store.consent(after_redemption.id).await.unwrap(),
        Some(after_redemption),
        "the older request is kept"
    );
    let kinds: Vec<&str> = consent_events(store, t)
        .await
        .iter()
        .map(EventKind::name)
        .collect();
    assert_eq!(
        kinds,
        [
            "consent_requested",
            "consent_denied",
            "consent_requested",
            "consent_approved",
            "consent_redeemed",
            "consent_requested",
            "consent_requested"
        ]
    );
}

async fn a_transaction_has_a_bounded_number_of_open_requests<S: TokenStore>(store: &S) {
    let t = txn(40_100);
    let token = tid(401_000);
    consent_token(store, t, token).await;
    let mut open = Vec::new();
    for n in 0..MAX_OPEN_CONSENTS_PER_TXN as u64 {
        let r = consent_request(t, token, n, CONSENT_T + n);
        assert_eq!(store.ask(r.clone()).await, Ok(ConsentInsert::Inserted));
        open.push(r);
    }
    let at = CONSENT_T + 100;
    let one_more = consent_request(t, token, 100, at);
    let events = consent_events(store, t).await.len();
    assert_eq!(
        store.ask(one_more.clone()).await,
        Err(StoreError::TooManyConsents {
            limit: MAX_OPEN_CONSENTS_PER_TXN
        })
    );
    assert_eq!(store.consent(one_more.id).await.unwrap(), None);
    assert_eq!(consent_events(store, t).await.len(), events);
    // An identical request is still answered with the open one.
    let mut same = consent_request(t, token, 3, at);
    same.id = ConsentId::new(UnixMillis(at), [0xbb; 8]);
    assert_eq!(
        store.ask(same).await,
        Ok(ConsentInsert::Existing(Box::new(open[3].clone())))
    );
    // Another transaction is not held up.
    let other = txn(40_101);
    consent_token(store, other, tid(401_100)).await;
    let elsewhere = consent_request(other, tid(401_100), 100, at);
    assert_eq!(store.ask(elsewhere).await, Ok(ConsentInsert::Inserted));
    // A denial closes one: room for one more, and no more than that.
    store
        .decide(&open[0], decision(false, at, "user:alice"))
        .await
        .unwrap();
    assert_eq!(store.ask(one_more).await, Ok(ConsentInsert::Inserted));
    let refused = consent_request(t, token, 101, at + 1);
    assert!(matches!(
        store.ask(refused).await,
        Err(StoreError::TooManyConsents { .. })
    ));
    // Past their expiry none is open any more (approved ones neither).
    store
        .decide(&open[1], decision(true, at, "user:alice"))
        .await
        .unwrap();
    let later = open[MAX_OPEN_CONSENTS_PER_TXN - 1].expires_at.0 + 100;
    let late = consent_request(t, token, 102, later);
    assert_eq!(store.ask(late).await, Ok(ConsentInsert::Inserted));
}

async fn decisions_count_once_for_the_subject_while_pending<S: TokenStore>(store: &S) {
    let t = txn(40_200);
    let token = tid(402_000);
    consent_token(store, t, token).await;
    let (a, b, c) = (
        consent_request(t, token, 1, CONSENT_T),
        consent_request(t, token, 2, CONSENT_T),
        consent_request(t, token, 3, CONSENT_T),
    );
    for r in [&a, &b, &c] {
        store.ask(r.clone()).await.unwrap();
    }
    let at = CONSENT_T + 1_000;
    let approved = store
        .decide(&a, decision(true, at, "user:alice"))
        .await
        .unwrap();
    assert_eq!(status_at(&approved, at), ConsentStatus::Approved);
    assert_eq!(approved.decision(), Some(&decision(true, at, "user:alice")));
    assert_eq!(store.consent(a.id).await.unwrap(), Some(approved.clone()));
    let denied = store
        .decide(&b, decision(false, at, "user:alice"))
        .await
        .unwrap();
    assert_eq!(status_at(&denied, at), ConsentStatus::Denied);
    assert_eq!(store.consent(b.id).await.unwrap(), Some(denied.clone()));

    // Refusals write nothing.
    let events = consent_events(store, t).await;
    let refusals = [
        (
            &c,
            decision(true, at, "user:mallory"),
            ConsentError::WrongSubject(c.id),
        ),
        (
            &a,
            decision(false, at + 1, "user:alice"),
            ConsentError::Decided(a.id),
        ),
        (
            &b,
            decision(true, at + 1, "user:alice"),
            ConsentError::Decided(b.id),
        ),
        (
            &c,
            decision(true, c.expires_at.0, "user:alice"),
            ConsentError::Expired(c.id),
        ),
    ];
    for (r, d, e) in refusals {
        assert_eq!(store.decide(r, d).await, Err(StoreError::Consent(e)));
    }
    assert_eq!(store.consent(a.id).await.unwrap(), Some(approved));
    assert_eq!(store.consent(b.id).await.unwrap(), Some(denied));
    assert_eq!(store.consent(c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(consent_events(store, t).await, events);
    let kinds: Vec<&str> = events.iter().map(EventKind::name).collect();
    assert_eq!(
        kinds,
        [
            "consent_requested",
            "consent_requested",
            "consent_requested",
            "consent_approved",
            "consent_denied"
        ]
    );
    let mut ghost = c.clone();
    ghost.id = ConsentId::new(UnixMillis(CONSENT_T), [0xcc; 8]);
    assert_eq!(
        store.decide(&ghost, decision(true, at, "user:alice")).await,
        Err(StoreError::NotFound)
    );
}

async fn redeeming_writes_the_child_and_the_request_together<S: TokenStore>(store: &S) {
    let t = txn(40_300);
    let (token, other_token) = (tid(403_000), tid(403_001));
    consent_token(store, t, token).await;
    store
        .put_child(record(t, other_token, Some(token)), 8)
        .await
        .unwrap();
    let r = consent_request(t, token, 1, CONSENT_T);
    let pending = consent_request(t, token, 2, CONSENT_T);
    store.ask(r.clone()).await.unwrap();
    store.ask(pending.clone()).await.unwrap();
    let at = CONSENT_T + 1_000;
    store
        .decide(&r, decision(true, at, "user:alice"))
        .await
        .unwrap();
    let before = store.state(token).await.unwrap().unwrap();
    let events = consent_events(store, t).await.len();

    // Refusals by the rule write nothing: no child, no state, no event.
    let attempts = [
        (
            &r,
            "agent:other",
            consent_child(&r, tid(403_010), at + 1),
            ConsentError::WrongParty(r.id),
        ),
        (
            &r,
            "svc:payments",
            {
                let mut c = consent_child(&r, tid(403_011), at + 1);
                c.parent = Some(other_token);
                c
            },
            ConsentError::WrongToken(r.id),
        ),
        (
            &r,
            "svc:payments",
            consent_child(&r, tid(403_012), r.expires_at.0),
            ConsentError::Expired(r.id),
        ),
        (
            &pending,
            "svc:payments",
            consent_child(&pending, tid(403_013), at + 1),
            ConsentError::Pending(pending.id),
        ),
    ];
    for (req, by, child, e) in attempts {
        let id = child.token_id;
        assert_eq!(
            store.redeem(req, by, child).await,
            Err(StoreError::Consent(e))
        );
        assert_eq!(store.get(id).await.unwrap(), None);
    }
    let mut ghost = r.clone();
    ghost.id = ConsentId::new(UnixMillis(CONSENT_T), [0xdd; 8]);
    assert_eq!(
        store
            .redeem(
                &ghost,
                "svc:payments",
                consent_child(&r, tid(403_014), at + 1)
            )
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.state(token).await.unwrap().unwrap(), before);
    assert_eq!(consent_events(store, t).await.len(), events);

    // The redemption: the child with its indexes, the parent's count, the request and
    // the event, together.
    let child = consent_child(&r, tid(403_020), at + 2);
    let redeemed = store
        .redeem(&r, "svc:payments", child.clone())
        .await
        .unwrap();
    assert_eq!(status_at(&redeemed, at + 3), ConsentStatus::Redeemed);
    assert!(matches!(
        redeemed.state,
        ConsentState::Redeemed { token, at: when, .. } if token == child.token_id && when == UnixMillis(at + 2)
    ));
    assert_eq!(store.consent(r.id).await.unwrap(), Some(redeemed.clone()));
    assert_eq!(
        store.get(child.token_id).await.unwrap(),
        Some(child.clone())
    );
    assert_eq!(
        store.state(token).await.unwrap().unwrap().children,
        before.children + 1
    );
    assert!(tree_ids(store.txn_tree(t).await.unwrap()).contains(&child.token_id));
    assert_eq!(
        store.consume_use(child.token_id, None).await.unwrap(),
        UseOutcome::Consumed { remaining: Some(0) }
    );
    let events_now = consent_events(store, t).await;
    assert!(matches!(
        events_now.last(),
        Some(EventKind::ConsentRedeemed { request, parent, .. }) if *request == r.id && *parent == token
    ));
    let redeemed_event = store
        .events(t, None, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .find(|e| matches!(e.kind, EventKind::ConsentRedeemed { .. }))
        .unwrap();
    assert_eq!(redeemed_event.token, Some(child.token_id));

    // Once only.
    let second = consent_child(&r, tid(403_021), at + 3);
    assert_eq!(
        store.redeem(&r, "svc:payments", second.clone()).await,
        Err(StoreError::Consent(ConsentError::Redeemed(r.id)))
    );
    assert_eq!(store.get(second.token_id).await.unwrap(), None);
    assert_eq!(store.consent(r.id).await.unwrap(), Some(redeemed));
    assert_eq!(consent_events(store, t).await.len(), events + 1);
    // Revoking the requester's token reaches the child: it is linked under it.
    let revoked = store
        .revoke_at(
            RevokeTarget::Token(token),
            by("op"),
            "r".into(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    assert!(revoked.contains(&child.token_id));
}

async fn redeeming_respects_the_parent_and_its_limits<S: TokenStore>(store: &S) {
    let at = CONSENT_T + 1_000;
    let approved = |t: TxnId, token: TokenId, n: u64| {
        let r = consent_request(t, token, n, CONSENT_T);
        async move {
            store.ask(r.clone()).await.unwrap();
            store
                .decide(&r, decision(true, at, "user:alice"))
                .await
                .unwrap()
        }
    };
    // A revoked parent: refused, and the approval stands.
    let t = txn(40_400);
    let token = tid(404_000);
    consent_token(store, t, token).await;
    let r = approved(t, token, 1).await;
    store
        .revoke_at(
            RevokeTarget::Token(token),
            by("op"),
            "r".into(),
            UnixMillis(5),
        )
        .await
        .unwrap();
    let child = consent_child(&r, tid(404_001), at + 1);
    assert_eq!(
        store.redeem(&r, "svc:payments", child).await,
        Err(StoreError::ParentRevoked)
    );
    let kept = store.consent(r.id).await.unwrap().unwrap();
    assert_eq!(status_at(&kept, at + 1), ConsentStatus::Approved);
    assert_eq!(store.get(tid(404_001)).await.unwrap(), None);

    // Fan-out: the parent has its children already.
    let t = txn(40_401);
    let token = tid(404_100);
    consent_token(store, t, token).await;
    store
        .put_child(record(t, tid(404_101), Some(token)), 1)
        .await
        .unwrap();
    let r = approved(t, token, 1).await;
    let child = consent_child(&r, tid(404_102), at + 1);
    assert_eq!(
        store
            .redeem_with(&r, "svc:payments", child.clone(), 1)
            .await,
        Err(StoreError::FanOutExceeded { limit: 1 })
    );
    assert_eq!(
        status_at(&store.consent(r.id).await.unwrap().unwrap(), at + 1),
        ConsentStatus::Approved
    );
    // An id that exists already.
    let mut taken = child.clone();
    taken.token_id = tid(404_101);
    assert_eq!(
        store.redeem(&r, "svc:payments", taken).await,
        Err(StoreError::Conflict)
    );
    assert!(
        store
            .redeem_with(&r, "svc:payments", child, 2)
            .await
            .is_ok()
    );

    // Uses: a parent with one use, spent, cannot reserve the child's.
    let t = txn(40_402);
    let token = tid(404_200);
    store
        .put(with_uses(record(t, token, None), Some(1)))
        .await
        .unwrap();
    store.consume_use(token, None).await.unwrap();
    let r = approved(t, token, 1).await;
    let child = consent_child(&r, tid(404_201), at + 1);
    assert_eq!(
        store.redeem(&r, "svc:payments", child).await,
        Err(StoreError::UsesExhausted)
    );
    assert_eq!(store.state(token).await.unwrap().unwrap().uses, 1);
    assert_eq!(
        status_at(&store.consent(r.id).await.unwrap().unwrap(), at + 1),
        ConsentStatus::Approved
    );
}

async fn concurrent_redeems_of_one_request_admit_one<S: TokenStore>(store: Arc<S>) {
    const N: u32 = 32;
    let t = txn(40_500);
    let token = tid(405_000);
    consent_token(&*store, t, token).await;
    let r = consent_request(t, token, 1, CONSENT_T);
    store.ask(r.clone()).await.unwrap();
    let at = CONSENT_T + 1_000;
    store
        .decide(&r, decision(true, at, "user:alice"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (store, r) = (store.clone(), r.clone());
            tokio::spawn(async move {
                let child = consent_child(&r, tid(405_001 + i), at + 1);
                store.redeem(&r, "svc:payments", child).await
            })
        })
        .collect();
    let mut redeemed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => redeemed.push(r),
            Err(e) => assert_eq!(e, StoreError::Consent(ConsentError::Redeemed(r.id))),
        }
    }
    assert_eq!(redeemed.len(), 1);
    let ConsentState::Redeemed { token: child, .. } = redeemed[0].state else {
        panic!("not redeemed: {:?}", redeemed[0].state);
    };
    assert_eq!(
        tree_ids(store.txn_tree(t).await.unwrap()),
        vec![token, child]
    );
    assert_eq!(store.state(token).await.unwrap().unwrap().children, 1);
    let redemptions = consent_events(&*store, t)
        .await
        .into_iter()
        .filter(|k| matches!(k, EventKind::ConsentRedeemed { .. }))
        .count();
    assert_eq!(redemptions, 1);
}

async fn consent_listing_filters_and_pages<S: TokenStore>(store: &S) {
    let t = txn(40_600);
    let token = tid(406_000);
    consent_token(store, t, token).await;
    let mut made = Vec::new();
    for n in 0..5u64 {
        let mut r = consent_request(t, token, n, CONSENT_T + n);
        if n % 2 == 1 {
            r.subject = "user:bob-listed".into();
        }
        store.ask(r.clone()).await.unwrap();
        made.push(r);
    }
    // Another transaction's request, for bob too.
    let other = txn(40_601);
    consent_token(store, other, tid(406_100)).await;
    let mut elsewhere = consent_request(other, tid(406_100), 9, CONSENT_T + 9);
    elsewhere.subject = "user:bob-listed".into();
    store.ask(elsewhere.clone()).await.unwrap();
    let at = CONSENT_T + 100;
    let approved = store
        .decide(&made[2], decision(true, at, "user:alice"))
        .await
        .unwrap();
    let query = |txn, subject: Option<&str>, status, before, limit| ConsentQuery {
        status,
        subject: subject.map(Into::into),
        txn,
        now: UnixMillis(at),
        before,
        limit,
    };
    let ids = |p: &ConsentPage| p.requests.iter().map(|r| r.id).collect::<Vec<_>>();

    // A transaction's requests, newest first, two at a time.
    let first = store
        .list_consents(query(Some(t), None, None, None, 2))
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![made[4].id, made[3].id]);
    assert_eq!(first.next, Some(made[3].id));
    let second = store
        .list_consents(query(Some(t), None, None, first.next, 2))
        .await
        .unwrap();
    assert_eq!(ids(&second), vec![made[2].id, made[1].id]);
    assert_eq!(second.requests[0], approved);
    let third = store
        .list_consents(query(Some(t), None, None, second.next, 2))
        .await
        .unwrap();
    assert_eq!((ids(&third), third.next), (vec![made[0].id], None));

    // By status at `now`.
    let page = store
        .list_consents(query(
            Some(t),
            None,
            Some(ConsentStatus::Approved),
            None,
            10,
        ))
        .await
        .unwrap();
    assert_eq!((ids(&page), page.next), (vec![made[2].id], None));
    let late = ConsentQuery {
        now: made[4].expires_at,
        ..query(Some(t), None, Some(ConsentStatus::Expired), None, 10)
    };
    assert_eq!(store.list_consents(late).await.unwrap().requests.len(), 5);

    // By subject, across transactions, one at a time.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_consents(query(None, Some("user:bob-listed"), None, before, 1))
            .await
            .unwrap();
        seen.extend(ids(&page));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, vec![elsewhere.id, made[3].id, made[1].id]);
    // Both filters.
    let both = store
        .list_consents(query(Some(t), Some("user:bob-listed"), None, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&both), vec![made[3].id, made[1].id]);
    // A cursor below everything: an empty page, the end.
    let none = store
        .list_consents(query(
            Some(t),
            None,
            None,
            Some(ConsentId::new(UnixMillis(0), [0; 8])),
            10,
        ))
        .await
        .unwrap();
    assert_eq!((none.requests.len(), none.next), (0, None));
}

async fn expiry_marks_open_requests_once<S: TokenStore>(store: &S) {
    // Early times of their own: nothing else in the store expires by `now`.
    let t = txn(40_700);
    let token = tid(407_000);
    consent_token(store, t, token).await;
    let base = 2_000_000;
    let mk = |n: u64| consent_request(t, token, n, base + n);
    let (pending, approved, denied, redeemed, later) = (mk(1), mk(2), mk(3), mk(4), {
        let mut r = mk(5);
        r.expires_at = UnixMillis(base + 10 * CONSENT_TTL);
        r
    });
    for r in [&pending, &approved, &denied, &redeemed, &later] {
        store.ask(r.clone()).await.unwrap();
    }
    let at = base + 1_000;
    store
        .decide(&approved, decision(true, at, "user:alice"))
        .await
        .unwrap();
    store
        .decide(&denied, decision(false, at, "user:alice"))
        .await
        .unwrap();
    store
        .decide(&redeemed, decision(true, at, "user:alice"))
        .await
        .unwrap();
    store
        .redeem(
            &redeemed,
            "svc:payments",
            consent_child(&redeemed, tid(407_001), at + 1),
        )
        .await
        .unwrap();
    let now = UnixMillis(base + 2 * CONSENT_TTL);
    let issued = Issued::at(now);
    let sweep = |max| store.expire_consents(now, max, by("writ"), issued.clone());
    assert_eq!(sweep(0).await, Ok((0, true)), "nothing done, more to do");
    assert_eq!(sweep(1).await, Ok((1, true)));
    assert_eq!(sweep(100).await, Ok((1, false)));
    assert_eq!(sweep(100).await, Ok((0, false)), "not twice");
    assert_eq!(issued.stored().len(), 2);
    assert!(issued.abandoned.lock().unwrap().is_empty());
    for (r, was) in [(&pending, "pending"), (&approved, "approved")] {
        let now_r = store.consent(r.id).await.unwrap().unwrap();
        assert_eq!(now_r.state, ConsentState::Expired { at: r.expires_at });
        let event = issued
            .stored()
            .into_iter()
            .find(|e| matches!(&e.kind, EventKind::ConsentExpired { request, .. } if *request == r.id))
            .unwrap();
        assert_eq!(
            event.kind,
            EventKind::ConsentExpired {
                request: r.id,
                was: was.into()
            }
        );
        assert_eq!(event.actor, "writ");
    }
    // The trail holds each expiry once, with the events the store was given.
    let expired: Vec<EventKind> = consent_events(store, t)
        .await
        .into_iter()
        .filter(|k| matches!(k, EventKind::ConsentExpired { .. }))
        .collect();
    assert_eq!(expired.len(), 2);
    assert_eq!(
        status_at(&store.consent(denied.id).await.unwrap().unwrap(), now.0),
        ConsentStatus::Denied
    );
    assert_eq!(
        status_at(&store.consent(redeemed.id).await.unwrap().unwrap(), now.0),
        ConsentStatus::Redeemed
    );
    assert_eq!(store.consent(later.id).await.unwrap(), Some(later.clone()));
    // An expired request is decided no more, and its action may be asked anew.
    assert_eq!(
        store
            .decide(&pending, decision(true, now.0, "user:alice"))
            .await,
        Err(StoreError::Consent(ConsentError::Expired(pending.id)))
    );
    let mut anew = mk(1);
    anew.id = ConsentId::new(now, [0xef; 8]);
    anew.created_at = now;
    anew.expires_at = UnixMillis(now.0 + CONSENT_TTL);
    assert_eq!(store.ask(anew.clone()).await, Ok(ConsentInsert::Inserted));
    // The last open ones expire in their turn.
    let end = UnixMillis(base + 20 * CONSENT_TTL);
    let issued = Issued::at(end);
    assert_eq!(
        store
            .expire_consents(end, 100, by("writ"), issued.clone())
            .await,
        Ok((2, false))
    );
    assert_eq!(issued.stored().len(), 2);
}

async fn the_consent_purge_deletes_only_old_closed_requests<S: TokenStore>(store: &S) {
    // Created before the cutoff (1_000_000), below every other check's requests.
    let t = txn(40_800);
    let token = tid(408_000);
    consent_token(store, t, token).await;
    let base = store.stats().await.unwrap();
    let mk = |n: u64, at: u64| consent_request(t, token, n, at);
    let denied = mk(1, 100_000);
    let redeemed = mk(2, 200_000);
    let mut pending = mk(3, 300_000);
    pending.expires_at = UnixMillis(CONSENT_T);
    let expired = mk(4, 400_000);
    let at_cutoff = mk(5, CUTOFF.0);
    for r in [&denied, &redeemed, &pending, &expired, &at_cutoff] {
        store.ask(r.clone()).await.unwrap();
    }
    store
        .decide(&denied, decision(false, 100_001, "user:alice"))
        .await
        .unwrap();
    store
        .decide(&redeemed, decision(true, 200_001, "user:alice"))
        .await
        .unwrap();
    store
        .redeem(
            &redeemed,
            "svc:payments",
            consent_child(&redeemed, tid(408_001), 200_002),
        )
        .await
        .unwrap();
    store
        .decide(&at_cutoff, decision(false, CUTOFF.0 + 1, "user:alice"))
        .await
        .unwrap();
    let issued = Issued::at(UnixMillis(900_000));
    assert_eq!(
        store
            .expire_consents(UnixMillis(900_000), 100, by("writ"), issued)
            .await,
        Ok((1, false))
    );
    // Past its expiry but not marked yet: it will still change (its expiry is recorded).
    let unmarked = mk(6, 450_000);
    store.ask(unmarked.clone()).await.unwrap();
    // A newer request under the denied one's key (made after the cutoff).
    let mut newer = mk(1, 1_200_000);
    newer.id = ConsentId::new(UnixMillis(1_200_000), [0xfe; 8]);
    store.ask(newer.clone()).await.unwrap();

    let full = store.stats().await.unwrap();
    assert_eq!(full.consents, base.consents + 7);
    // Six keys (the newer request took over the first), seven transaction entries, and
    // the three requests that may still change in the open index.
    assert_eq!(
        full.consent_index_entries,
        base.consent_index_entries + 6 + 7 + 3
    );

    assert_eq!(
        store.purge_consents(CUTOFF, 1).await,
        Ok(PurgeStats {
            tokens: 1,
            more: true
        })
    );
    assert_eq!(store.consent(denied.id).await.unwrap(), None);
    assert_eq!(
        store.consent_by_key(denied.key).await.unwrap(),
        Some(newer.clone()),
        "a newer request keeps its key"
    );
    assert_eq!(
        store.purge_consents(CUTOFF, 100).await,
        Ok(PurgeStats {
            tokens: 2,
            more: false
        })
    );
    for gone in [&denied, &redeemed, &expired] {
        assert_eq!(store.consent(gone.id).await.unwrap(), None);
    }
    assert_eq!(store.consent_by_key(redeemed.key).await.unwrap(), None);
    assert_eq!(store.consent_by_key(expired.key).await.unwrap(), None);
    for kept in [&pending, &at_cutoff, &unmarked, &newer] {
        assert!(store.consent(kept.id).await.unwrap().is_some());
    }
    let after = store.stats().await.unwrap();
    assert_eq!(after.consents, base.consents + 4);
    assert_eq!(
        after.consent_index_entries,
        base.consent_index_entries + 4 + 4 + 3
    );
    let listed = store
        .list_consents(ConsentQuery {
            status: None,
            subject: None,
            txn: Some(t),
            now: UnixMillis(0),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.requests.len(), 4);
    assert_eq!(
        store.purge_consents(CUTOFF, 100).await,
        Ok(PurgeStats {
            tokens: 0,
            more: false
        })
    );
    // Its token and events are not the purge's business.
    assert!(store.get(tid(408_001)).await.unwrap().is_some());
    assert_eq!(after.events, full.events);
}
