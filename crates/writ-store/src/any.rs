//! [`AnyStore`]: the backend a configuration selects, as one type, so the server is built
//! once whatever the store. Each call is passed to the backend as it is.

use crate::api::{
    ConsentInsert, ConsentPage, ConsentQuery, EventIssuer, PartyRevoked, PurgeStats, RevokeTarget,
    Revoked, StoreError, StoreStats, TokenStore, TreeEntry, TxnPage, TxnQuery, UseOutcome,
};
use crate::{RedisStore, RocksStore};
use std::sync::Arc;
use writ_core::{
    Actor, ConsentId, ConsentRequest, Decision, Event, EventId, PartyDisable, TokenId, TokenRecord,
    TokenState, TxnId, UnixMillis,
};

/// One of Writ's durable backends.
#[derive(Debug)]
pub enum AnyStore {
    /// Embedded RocksDB: one Writ node (the default).
    Rocks(RocksStore),
    /// A Redis Cluster shared by several stateless Writ nodes.
    Redis(RedisStore),
}

impl AnyStore {
    /// The RocksDB store, if that is the backend (for its size estimates).
    pub fn rocks(&self) -> Option<&RocksStore> {
        match self {
            AnyStore::Rocks(s) => Some(s),
            AnyStore::Redis(_) => None,
        }
    }

    /// The Redis store, if that is the backend: a store other Writ nodes share.
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            AnyStore::Redis(s) => Some(s),
            AnyStore::Rocks(_) => None,
        }
    }
}

macro_rules! dispatch {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl TokenStore for AnyStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    match self {
                        AnyStore::Rocks(s) => s.$name($($arg),*).await,
                        AnyStore::Redis(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

dispatch! {
    fn insert(&self, record: TokenRecord, event: Event) -> ();
    fn get(&self, id: TokenId) -> Option<TokenRecord>;
    fn sync(&self, txn: TxnId) -> ();
    fn txn_tree(&self, txn: TxnId) -> Vec<TreeEntry>;
    fn state(&self, id: TokenId) -> Option<TokenState>;
    fn get_with_state(&self, id: TokenId) -> Option<(Arc<TokenRecord>, TokenState)>;
    fn insert_child(&self, record: TokenRecord, max_children: u32, event: Event) -> ();
    fn revoke(&self, target: RevokeTarget, by: Actor, reason: String, event: EventId) -> Revoked;
    fn revoke_party(
        &self,
        party: String,
        by: Actor,
        reason: String,
        events: Arc<dyn EventIssuer>
    ) -> PartyRevoked;
    fn set_party_disabled(&self, party: String, disabled: Option<PartyDisable>) -> ();
    fn disabled_parties(&self) -> Vec<(String, PartyDisable)>;
    fn consume_use(&self, id: TokenId, event: Option<Event>) -> UseOutcome;
    fn purge_expired(&self, cutoff: UnixMillis, max_tokens: usize) -> PurgeStats;
    fn stats(&self) -> StoreStats;
    fn list_txns(&self, query: TxnQuery) -> TxnPage;
    fn append_events(&self, events: Vec<Event>) -> ();
    fn events(&self, txn: TxnId, after: Option<EventId>, limit: usize) -> Vec<Event>;
    fn last_event_id(&self) -> Option<EventId>;
    fn purge_events(&self, cutoff: UnixMillis, max_events: usize) -> PurgeStats;
    fn insert_consent(&self, request: ConsentRequest, event: Event) -> ConsentInsert;
    fn consent(&self, id: ConsentId) -> Option<ConsentRequest>;
    fn consent_by_key(&self, key: [u8; 32]) -> Option<ConsentRequest>;
    fn decide_consent(&self, id: ConsentId, decision: Decision, event: Event) -> ConsentRequest;
    fn redeem_consent(
        &self,
        id: ConsentId,
        by: String,
        child: TokenRecord,
        max_children: u32,
        event: Event
    ) -> ConsentRequest;
    fn expire_consents(
        &self,
        now: UnixMillis,
        max: usize,
        by: Actor,
        events: Arc<dyn EventIssuer>
    ) -> (usize, bool);
    fn purge_consents(&self, cutoff: UnixMillis, max: usize) -> PurgeStats;
    fn list_consents(&self, query: ConsentQuery) -> ConsentPage;
}
