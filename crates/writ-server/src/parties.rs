//! The kill switch for a compromised party. An operator disables a party: the disablement
//! is stored first (durable, fsynced), then every new admission is refused and the
//! admissions already in flight are waited for, and only then does the store walk the
//! party's transactions and revoke every token it holds or presents, with their
//! descendants. That order closes the race with a concurrent Mint or Downscope: one that
//! checked the party before the flag was set has finished writing (its index entries with
//! it) before the walk starts, and one after it is refused. Enabling a party again restores
//! nothing that was revoked.
//!
//! On a store several Writ nodes share, each node re-reads the set every `interval`
//! ([`Disabled::share`]). A node that could not read it for two intervals refuses every
//! admission (it cannot tell whether a party was disabled elsewhere) until it reads it
//! again; a walk that failed is retried on each read; and a party enabled within two
//! intervals (plus a grace for writes in flight) of its disablement is walked once more
//! before it acts again, so what a node admitted before it learned is revoked even when
//! it never saw the party disabled.

use crate::audit::{Audit, Pending};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use writ_core::{Event, EventId, PartyDisable};
use writ_store::EventIssuer;

/// The parties disabled now, and the gate every token admission passes.
#[derive(Debug, Default)]
pub struct Disabled {
    parties: RwLock<HashMap<String, PartyDisable>>,
    /// Held shared by each Mint and Downscope from its check of the audience until its
    /// write is done; held exclusively (briefly) by [`Disabled::disable`].
    gate: Arc<tokio::sync::RwLock<()>>,
    /// One disable or enable at a time, so the stored and the in-memory sets agree.
    switch: tokio::sync::Mutex<()>,
    /// On a shared store: how often the set is re-read, and when it last was.
    shared: Mutex<Option<Shared>>,
    /// Parties whose walk on this node failed, to walk again.
    unwalked: Mutex<HashMap<String, PartyDisable>>,
}

#[derive(Debug, Clone, Copy)]
struct Shared {
    interval: Duration,
    grace: Duration,
    synced: Instant,
}

/// This node has not read the disabled parties for too long to admit anything.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "this node has not been able to read which parties are disabled for {0} ms (the store is unreachable); retry (another node may answer)"
)]
pub struct Stale(u128);

impl Disabled {
    /// The set as the store keeps it.
    pub fn new(parties: Vec<(String, PartyDisable)>) -> Arc<Disabled> {
        Arc::new(Disabled {
            parties: RwLock::new(parties.into_iter().collect()),
            gate: Arc::default(),
            switch: tokio::sync::Mutex::new(()),
            shared: Mutex::default(),
            unwalked: Mutex::default(),
        })
    }

    /// The set lives in a store other nodes change too, re-read every `interval`: from
    /// now on admissions need a read within two intervals. `grace` bounds how long an
    /// admission's write may take.
    pub fn share(&self, interval: Duration, grace: Duration) {
        *lock(&self.shared) = Some(Shared {
            interval,
            grace,
            synced: Instant::now(),
        });
    }

    /// On a shared store: how long after a party's disablement every node has read it
    /// (or admits nothing) and every admission that let the party in before has
    /// finished writing.
    pub fn settled_after(&self) -> Option<Duration> {
        lock(&self.shared).map(|s| s.interval * 2 + s.grace)
    }

    /// The set was just read from the store whole.
    pub fn synced(&self) {
        if let Some(s) = lock(&self.shared).as_mut() {
            s.synced = Instant::now();
        }
    }

    /// Remembers that `party`'s walk failed here, for [`unwalked`](Self::unwalked).
    pub fn walk_failed(&self, party: String, why: PartyDisable) {
        lock(&self.unwalked).insert(party, why);
    }

    /// Takes the parties whose walk failed here and that are still disabled (each is
    /// handed out once per failure).
    pub fn unwalked(&self) -> Vec<(String, PartyDisable)> {
        let unwalked = std::mem::take(&mut *lock(&self.unwalked));
        unwalked
            .into_iter()
            .filter(|(p, _)| self.contains(p))
            .collect()
    }

    /// Held across one disable or enable (its stored and in-memory halves).
    pub async fn switch(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.switch.lock().await
    }

    /// Every disabled party.
    pub fn all(&self) -> Vec<(String, PartyDisable)> {
        self.parties
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect()
    }

    /// How many parties are disabled (metrics).
    pub fn count(&self) -> usize {
        self.parties
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Is `party` disabled? (Every request asks: no copy of the record.)
    pub fn contains(&self, party: &str) -> bool {
        self.parties
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(party)
    }

    /// A pass for one admission: hold it from the audience check until the write ends
    /// (move it into the write's task, so a cancelled request does not release it early).
    /// Refused on a shared store not read for two intervals.
    pub async fn admission(&self) -> Result<tokio::sync::OwnedRwLockReadGuard<()>, Stale> {
        if let Some(s) = *lock(&self.shared) {
            let age = s.synced.elapsed();
            if age > s.interval * 2 {
                return Err(Stale(age.as_millis()));
            }
        }
        Ok(self.gate.clone().read_owned().await)
    }

    /// Marks `party` disabled, then waits until no admission that may have checked it
    /// before is still writing.
    pub async fn disable(&self, party: String, why: PartyDisable) {
        self.parties
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(party, why);
        drop(self.gate.write().await);
    }

    /// Waits until no admission in flight may still be writing (after the policy disabled
    /// a party: admissions that read the policy before are done).
    pub async fn drain(&self) {
        drop(self.gate.write().await);
    }

    /// Lets `party` act again; whether it was disabled.
    pub fn enable(&self, party: &str) -> bool {
        self.parties
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(party)
            .is_some()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Event ids for a store walk that writes one event per transaction: each id stays
/// pending (hiding later events from readers) until its write lands, is announced, or
/// fails.
#[derive(Debug)]
pub struct WalkEvents {
    audit: Arc<Audit>,
    pending: Mutex<HashMap<u64, Pending>>,
}

impl WalkEvents {
    /// Issues from `audit`.
    pub fn new(audit: Arc<Audit>) -> Arc<WalkEvents> {
        Arc::new(WalkEvents {
            audit,
            pending: Mutex::default(),
        })
    }

    fn settle(&self, id: EventId) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id.0);
        drop(pending);
    }
}

impl EventIssuer for WalkEvents {
    fn issue(&self) -> EventId {
        let pending = self.audit.issue();
        let id = pending.id();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.0, pending);
        id
    }

    fn stored(&self, event: Event) {
        let id = event.id;
        self.audit.publish(event);
        self.settle(id);
    }

    fn abandoned(&self, id: EventId) {
        self.settle(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::UnixMillis;

    /// On a shared store, a node that has not read the set for two intervals admits
    /// nothing until it reads it again.
    #[tokio::test(start_paused = true)]
    async fn a_node_that_cannot_read_the_shared_set_admits_nothing() {
        let d = Disabled::new(vec![]);
        d.share(Duration::from_secs(1), Duration::from_secs(1));
        drop(d.admission().await.unwrap());
        tokio::time::advance(Duration::from_millis(1900)).await;
        drop(d.admission().await.unwrap());
        tokio::time::advance(Duration::from_millis(200)).await;
        let stale = d.admission().await.unwrap_err();
        assert!(stale.to_string().contains("2100 ms"), "{stale}");
        d.synced();
        drop(d.admission().await.unwrap());
        // A store no other node shares has nothing to re-read.
        let alone = Disabled::new(vec![]);
        tokio::time::advance(Duration::from_secs(3600)).await;
        drop(alone.admission().await.unwrap());
    }

    /// `disable` waits for an admission already in flight, and a disabled party is seen
    /// by every later check.
    #[tokio::test]
    async fn disabling_waits_for_admissions_in_flight() {
        let d = Disabled::new(vec![]);
        let pass = d.admission().await.unwrap();
        let why = PartyDisable::new(UnixMillis(1), "ops".into(), "leak".into());
        let disabling = {
            let d = d.clone();
            tokio::spawn(async move { d.disable("spiffe://td/agent/x".into(), why).await })
        };
        // The flag is set at once; the call returns only once the pass is given back.
        while !d.contains("spiffe://td/agent/x") {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(
            !disabling.is_finished(),
            "disable returned with an admission in flight"
        );
        drop(pass);
        disabling.await.unwrap();
        assert!(d.enable("spiffe://td/agent/x"));
        assert!(!d.enable("spiffe://td/agent/x"));
        assert!(!d.contains("spiffe://td/agent/x"));
    }
}
