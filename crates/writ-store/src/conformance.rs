//! The behaviour every [`TokenStore`] must show, written once and run against every
//! backend, plus hand-built records for tests.

use crate::api::{StoreError, TokenStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use writ_core::{
    ActorKind, ClientType, Constraint, Grant, Party, SecretHash, TokenId, TokenRecord, TxnId,
    UnixMillis,
};

/// A token id whose bytes sort by `n` (big-endian in the first four bytes) with a
/// marker byte at the end, so tests can reason about key order.
pub(crate) fn tid(n: u32) -> TokenId {
    let mut b = [0xa5u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    TokenId(b)
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
                ("amount".to_owned(), Constraint::Max(500)),
                ("path".to_owned(), Constraint::Prefix("/trips/".to_owned())),
            ]),
            targets: BTreeSet::from(["svc:payments".to_owned()]),
            expires_at: UnixMillis(1_700_000_300_000 + u64::from(id.0[3])),
            max_uses: None,
        },
        purpose: "book a trip".to_owned(),
        tctx: BTreeMap::from([("trip".to_owned(), "42".to_owned())]),
        rctx: BTreeMap::from([("ip".to_owned(), "192.0.2.1".to_owned())]),
        issued_at: UnixMillis(1_700_000_000_000),
    }
}

/// Runs every check against `store`, which must start empty.
pub(crate) async fn run<S: TokenStore>(store: S) {
    let store = Arc::new(store);
    round_trip(&*store).await;
    unknown_id_is_none(&*store).await;
    duplicate_insert_conflicts(&*store).await;
    txn_index_is_exact_and_ordered(&*store).await;
    concurrent_inserts_all_land(store.clone()).await;
    concurrent_duplicates_admit_exactly_one(store).await;
}

async fn round_trip<S: TokenStore>(store: &S) {
    let root = record(txn(1), tid(10), None);
    let child = record(txn(1), tid(11), Some(tid(10)));
    store.insert(root.clone()).await.unwrap();
    store.insert(child.clone()).await.unwrap();
    assert_eq!(store.get(tid(10)).await.unwrap(), Some(root));
    assert_eq!(store.get(tid(11)).await.unwrap(), Some(child));
}

async fn unknown_id_is_none<S: TokenStore>(store: &S) {
    assert_eq!(store.get(tid(999_999)).await.unwrap(), None);
    assert_eq!(
        store.txn_tokens(txn(999_999)).await.unwrap(),
        Vec::<TokenId>::new()
    );
}

async fn duplicate_insert_conflicts<S: TokenStore>(store: &S) {
    let first = record(txn(2), tid(20), None);
    store.insert(first.clone()).await.unwrap();
    // Same id, different content and transaction: refused, and nothing changes.
    let mut other = record(txn(3), tid(20), None);
    other.purpose = "something else".to_owned();
    assert_eq!(store.insert(other).await, Err(StoreError::Conflict));
    assert_eq!(store.insert(first.clone()).await, Err(StoreError::Conflict));
    assert_eq!(store.get(tid(20)).await.unwrap(), Some(first));
    assert_eq!(store.txn_tokens(txn(2)).await.unwrap(), vec![tid(20)]);
    assert_eq!(
        store.txn_tokens(txn(3)).await.unwrap(),
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
        store.insert(record(t, tid(n), None)).await.unwrap();
    }
    assert_eq!(
        store.txn_tokens(a).await.unwrap(),
        vec![tid(301), tid(302), tid(303)]
    );
    assert_eq!(store.txn_tokens(b).await.unwrap(), vec![tid(304), tid(305)]);
    assert_eq!(store.txn_tokens(before).await.unwrap(), vec![tid(300)]);
    assert_eq!(store.txn_tokens(last).await.unwrap(), vec![tid(306)]);
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
                    .insert(record(
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
        assert_eq!(store.txn_tokens(tx).await.unwrap(), ids);
    }
    assert_eq!(total, N as usize);
    assert_eq!(store.txn_tokens(t).await.unwrap().len(), (N / 4) as usize);
}

async fn concurrent_duplicates_admit_exactly_one<S: TokenStore>(store: Arc<S>) {
    const N: usize = 32;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut r = record(txn(600), tid(20_000), None);
                r.purpose = format!("attempt {i}");
                store.insert(r).await
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
    assert_eq!(store.txn_tokens(txn(600)).await.unwrap(), vec![tid(20_000)]);
}
