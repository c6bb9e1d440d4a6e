//! Keeps the audit trail bounded under a flood. The events that change nothing (refused
//! Downscopes, and validations that spent no use) are stored one by one only up to a
//! budget per caller, kind and window; beyond it they are only counted, and when the
//! window ends the count is stored as one [`EventKind::Aggregated`] event: "N refusals
//! by X in this window". Minted, downscoped and revoked events, and a validation that
//! spent a use, never come here: they are always stored.
//!
//! - **Windows** are fixed (tumbling), aligned on multiples of `window` since the epoch,
//!   so every caller's windows line up and an aggregate reads as a time span.
//! - **Budgets** are per caller (identity *and* how it proved it, so an aggregate never
//!   overstates what was proven) and per kind, so a flood of validations never hides the
//!   same caller's refusals.
//! - **Where an aggregate is filed.** Events are stored by transaction; an aggregate is
//!   stored under the transaction of the first event it counted (its sample). So `writ
//!   events <sample txn>` shows "N refusals by X in this window" beside that
//!   transaction's own events, and the global trail (WatchEvents, and the time-ordered
//!   log retention walks) carries it once. Its subject is empty and it names no token:
//!   the count spans every transaction the caller touched in the window.
//! - **Bounded memory.** At most `max_tracked_callers` (caller, kind) entries; an entry
//!   whose window ended is dropped by [`FloodGuard::drain`]. When the table is full, the
//!   events of callers it does not track go to a catch-all entry per kind (actor
//!   [`OTHER_CALLERS`]), which has the same budget: the table never grows, and the
//!   trail still says how many events were not stored. Windows that ended but were not
//!   drained yet are kept up to the same bound, then merged into the catch-all.
//!
//! Pure logic over a clock passed in, so it is tested without a server;
//! [`FloodGuard::spawn_drain`] stores the aggregates through [`Audit`].

use crate::audit::Audit;
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
pub use writ_core::audit::Counted as FloodKind;
use writ_core::audit::OTHER_CALLERS;
use writ_core::{Actor, Event, TxnId, UnixMillis};

/// Longest window that may be configured.
pub const MAX_WINDOW_SECONDS: u64 = 3600;
/// Most (caller, kind) pairs that may be configured (each costs about a hundred bytes
/// and its caller's id).
pub const MAX_TRACKED_CALLERS: usize = 10_000_000;
/// How often [`FloodGuard::spawn_drain`] looks for ended windows (or every window, if
/// shorter).
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(1);

/// `[limits.events]`: how many refused or validated events one caller may have stored one
/// by one per window, per kind.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodConfig {
    /// Aggregate beyond the budget (default). Off: every event is stored one by one.
    pub enabled: bool,
    /// Events of one kind (refused, validated) one caller may have stored one by one per
    /// window. Default 5 000 (500 a second over the default window).
    pub events_per_window: u32,
    /// The window, in seconds (1..=3600). Default 10.
    pub window_seconds: u64,
    /// Most (caller, kind) pairs counted one by one at once; the rest share a catch-all.
    /// Default 10 000.
    pub max_tracked_callers: usize,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            enabled: true,
            events_per_window: 5_000,
            window_seconds: 10,
            max_tracked_callers: 10_000,
        }
    }
}

impl FloodConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.events_per_window == 0 {
            return Err(
                "limits.events.events_per_window must be at least 1 (disable with enabled = false)"
                    .into(),
            );
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return Err(format!(
                "limits.events.window_seconds = {} must be in 1..={MAX_WINDOW_SECONDS}",
                self.window_seconds
            ));
        }
        if !(1..=MAX_TRACKED_CALLERS).contains(&self.max_tracked_callers) {
            return Err(format!(
                "limits.events.max_tracked_callers = {} must be in 1..={MAX_TRACKED_CALLERS}",
                self.max_tracked_callers
            ));
        }
        Ok(())
    }
}

/// What to do with one refused or validated event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Store it as usual.
    Record,
    /// Do not store it: it is counted, and the count is stored when its window ends.
    Counted,
}

/// The events of one caller and kind counted in one window: stored as one
/// [`EventKind::Aggregated`](writ_core::EventKind::Aggregated) event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// Whose events; `None`: the callers beyond the most tracked (the catch-all).
    pub caller: Option<Actor>,
    /// Refused or validated.
    pub kind: FloodKind,
    /// How many were counted (not stored).
    pub count: u32,
    /// The window's start (inclusive).
    pub window_start: UnixMillis,
    /// The window's end (exclusive); for [`FloodGuard::flush`], when it was cut short.
    pub window_end: UnixMillis,
    /// The transaction of the first event counted: where the aggregate is stored.
    pub sample_txn: TxnId,
}

impl Aggregate {
    /// The event that records it, under id `id`.
    pub fn event(&self, id: writ_core::EventId) -> Event {
        Event::aggregated(
            id,
            self.sample_txn,
            self.caller.as_ref(),
            self.kind,
            self.count,
            self.window_start,
            self.window_end,
        )
    }
}

/// One (caller, kind) in its current window.
#[derive(Clone, Debug)]
struct Entry {
    /// `None`: the catch-all.
    caller: Option<Actor>,
    kind: FloodKind,
    /// Start of the window, in Unix ms.
    window_start: u64,
    /// Events stored one by one in this window.
    recorded: u32,
    /// Events counted in this window.
    counted: u32,
    /// The first one counted's transaction.
    sample: Option<TxnId>,
}

impl Entry {
    fn new(caller: Option<Actor>, kind: FloodKind, window_start: u64) -> Entry {
        Entry {
            caller,
            kind,
            window_start,
            recorded: 0,
            counted: 0,
            sample: None,
        }
    }

    /// The aggregate of the counted events, if any, with the window cut at `end`.
    fn aggregate(&self, end: u64) -> Option<Aggregate> {
        let sample_txn = self.sample.filter(|_| self.counted > 0)?;
        Some(Aggregate {
            caller: self.caller.clone(),
            kind: self.kind,
            count: self.counted,
            window_start: UnixMillis(self.window_start),
            window_end: UnixMillis(end.max(self.window_start)),
            sample_txn,
        })
    }

    /// One event in the window starting at `start`: recorded within the budget, counted
    /// beyond it. An entry of an earlier (or, after a clock step back, later) window is
    /// closed first; its aggregate is returned.
    fn admit(
        &mut self,
        start: u64,
        window: u64,
        budget: u32,
        txn: TxnId,
    ) -> (Admit, Option<Aggregate>) {
        let mut closed = None;
        if self.window_start != start {
            closed = self.aggregate(self.window_start.saturating_add(window));
            *self = Entry::new(self.caller.take(), self.kind, start);
        }
        if self.recorded < budget {
            self.recorded += 1;
            return (Admit::Record, closed);
        }
        self.counted = self.counted.saturating_add(1);
        self.sample.get_or_insert(txn);
        (Admit::Counted, closed)
    }
}

/// One stripe of the guard's table.
#[derive(Debug, Default)]
struct Stripe {
    /// By a keyed hash of (caller, auth method, kind); the entry holds the caller, so a
    /// hash collision is detected (and counted in the catch-all) rather than merged.
    entries: HashMap<u64, Entry>,
    /// The catch-all of each kind ([`FloodKind`] order).
    others: [Option<Entry>; 2],
    /// Windows that ended (seen by `admit`) and await `drain`.
    closed: Vec<Aggregate>,
    /// The window in which the table was last pruned of ended windows (once per window,
    /// so a full table is not rescanned on every event).
    pruned: Option<u64>,
}

/// Index of a kind's catch-all.
fn slot(kind: FloodKind) -> usize {
    match kind {
        FloodKind::Refused => 0,
        FloodKind::Validated => 1,
    }
}

/// Stripes of the table, each behind its own lock: Validate's hot path takes one.
const STRIPES: usize = 16;

/// Decides which refused and validated events are stored one by one and counts the rest.
/// Share it (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct FloodGuard {
    enabled: bool,
    budget: u32,
    window_ms: u64,
    /// Entries per stripe (the configured most, spread over the stripes).
    stripe_cap: usize,
    stripes: Box<[Mutex<Stripe>]>,
    hasher: RandomState,
    /// Counts the events counted instead of stored.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn lock(stripe: &Mutex<Stripe>) -> MutexGuard<'_, Stripe> {
    // Each critical section leaves the stripe consistent: a poisoned lock is still usable.
    stripe.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FloodGuard {
    /// A guard that stores up to `per_caller_events_per_window` events of each kind per
    /// caller and `window`, tracking at most 10 000 (caller, kind) pairs.
    pub fn new(per_caller_events_per_window: u32, window: Duration) -> FloodGuard {
        FloodGuard::with_capacity(
            per_caller_events_per_window,
            window,
            FloodConfig::default().max_tracked_callers,
        )
    }

    /// [`new`](Self::new) tracking at most `max_tracked_callers` pairs (rounded up to a
    /// multiple of the 16 stripes).
    pub fn with_capacity(
        per_caller_events_per_window: u32,
        window: Duration,
        max_tracked_callers: usize,
    ) -> FloodGuard {
        FloodGuard {
            enabled: true,
            budget: per_caller_events_per_window.max(1),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            stripe_cap: max_tracked_callers.div_ceil(STRIPES).max(1),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            metrics: None,
        }
    }

    /// The guard `config` describes (one that records everything if disabled).
    pub fn from_config(config: &FloodConfig) -> FloodGuard {
        let mut guard = FloodGuard::with_capacity(
            config.events_per_window,
            Duration::from_secs(config.window_seconds),
            config.max_tracked_callers,
        );
        guard.enabled = config.enabled;
        guard
    }

    /// Counts every event it only counts into `metrics` too.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> FloodGuard {
        self.metrics = Some(metrics);
        self
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    fn window_start(&self, now: UnixMillis) -> u64 {
        now.0 - now.0 % self.window_ms
    }

    /// Whether to store an event of `kind` by `caller` in `txn`, happening at `now`, or
    /// only count it.
    pub fn admit(&self, caller: &Actor, kind: FloodKind, txn: TxnId, now: UnixMillis) -> Admit {
        let admit = self.decide(caller, kind, txn, now);
        if admit == Admit::Counted
            && let Some(m) = &self.metrics
        {
            m.aggregated(kind.as_str());
        }
        admit
    }

    /// See [`admit`](Self::admit).
    fn decide(&self, caller: &Actor, kind: FloodKind, txn: TxnId, now: UnixMillis) -> Admit {
        if !self.enabled {
            return Admit::Record;
        }
        let start = self.window_start(now);
        let key = self
            .hasher
            .hash_one((caller.id.as_str(), caller.auth, kind));
        let mut guard = lock(&self.stripes[(key >> 60) as usize % STRIPES]);
        let stripe = &mut *guard;
        let entry = match stripe.entries.get(&key) {
            Some(e) if e.caller.as_ref() == Some(caller) && e.kind == kind => {
                stripe.entries.get_mut(&key)
            }
            // Another caller under the same hash: counted with the untracked.
            Some(_) => None,
            None => {
                if stripe.entries.len() >= self.stripe_cap && stripe.pruned != Some(start) {
                    stripe.pruned = Some(start);
                    self.prune(stripe, start);
                }
                if stripe.entries.len() < self.stripe_cap {
                    let fresh = Entry::new(Some(caller.clone()), kind, start);
                    Some(stripe.entries.entry(key).or_insert(fresh))
                } else {
                    None
                }
            }
        };
        let entry = match entry {
            Some(e) => e,
            None => stripe.others[slot(kind)].get_or_insert_with(|| Entry::new(None, kind, start)),
        };
        let (admit, closed) = entry.admit(start, self.window_ms, self.budget, txn);
        if let Some(a) = closed {
            self.keep_closed(stripe, a);
        }
        admit
    }

    /// Drops the entries whose window ended before `start`, keeping their aggregates.
    fn prune(&self, stripe: &mut Stripe, start: u64) {
        let mut closed = Vec::new();
        stripe.entries.retain(|_, e| {
            if e.window_start == start {
                return true;
            }
            closed.extend(e.aggregate(e.window_start.saturating_add(self.window_ms)));
            false
        });
        for a in closed {
            self.keep_closed(stripe, a);
        }
    }

    /// Keeps an ended window's aggregate for `drain`: one by one up to the stripe's
    /// bound, then merged into one catch-all aggregate per kind.
    fn keep_closed(&self, stripe: &mut Stripe, mut a: Aggregate) {
        if stripe.closed.len() >= self.stripe_cap {
            a.caller = None;
        }
        if a.caller.is_none()
            && let Some(other) = stripe
                .closed
                .iter_mut()
                .find(|o| o.caller.is_none() && o.kind == a.kind)
        {
            merge(other, &a);
            return;
        }
        stripe.closed.push(a);
    }

    /// The aggregates of every window that ended by `now`, for storing; forgets those
    /// windows' entries. Catch-all aggregates come merged, one per kind.
    pub fn drain(&self, now: UnixMillis) -> Vec<Aggregate> {
        self.collect(now, false)
    }

    /// [`drain`](Self::drain), and also the counts of the windows still open, cut at `now`
    /// (at shutdown, so nothing counted is lost).
    pub fn flush(&self, now: UnixMillis) -> Vec<Aggregate> {
        self.collect(now, true)
    }

    fn collect(&self, now: UnixMillis, everything: bool) -> Vec<Aggregate> {
        let start = self.window_start(now);
        let mut out = Vec::new();
        let mut others: Vec<Aggregate> = Vec::new();
        for stripe in &self.stripes {
            let mut stripe = lock(stripe);
            let stripe = &mut *stripe;
            let mut found = std::mem::take(&mut stripe.closed);
            let window = self.window_ms;
            let close = |e: &Entry, found: &mut Vec<Aggregate>| {
                let end = if e.window_start == start {
                    now.0
                } else {
                    e.window_start.saturating_add(window)
                };
                found.extend(e.aggregate(end));
            };
            stripe.entries.retain(|_, e| {
                let ended = e.window_start != start;
                if ended || everything {
                    close(e, &mut found);
                }
                !(ended || everything)
            });
            for other in &mut stripe.others {
                if let Some(e) = other
                    && (e.window_start != start || everything)
                {
                    close(e, &mut found);
                    *other = None;
                }
            }
            for a in found {
                if a.caller.is_some() {
                    out.push(a);
                } else if let Some(o) = others.iter_mut().find(|o| o.kind == a.kind) {
                    merge(o, &a);
                } else {
                    others.push(a);
                }
            }
        }
        out.extend(others);
        out.sort_by_key(|a| {
            (
                a.window_start,
                a.kind,
                a.caller.as_ref().map(|c| c.id.clone()),
            )
        });
        out
    }

    /// Entries tracked now (callers and kinds, catch-alls excluded).
    pub fn tracked(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// Stores the aggregates of ended windows through `audit` every [`DRAIN_INTERVAL`]
    /// (or every window, if shorter) until `stop` turns true; then stores the counts of the
    /// windows still open too, and ends. It holds an `Audit` handle until then, so the
    /// audit writer, which stops when every handle is gone, stores them before it stops.
    pub fn spawn_drain(
        self: &Arc<Self>,
        audit: Arc<Audit>,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        let every = DRAIN_INTERVAL.min(self.window());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let last = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => true,
                    _ = ticks.tick() => false,
                };
                let now = crate::service::now();
                let found = if last {
                    this.flush(now)
                } else {
                    this.drain(now)
                };
                for a in found {
                    tracing::info!(
                        caller = a.caller.as_ref().map_or(OTHER_CALLERS, |c| c.id.as_str()),
                        kind = a.kind.as_str(),
                        count = a.count,
                        "audit: events counted instead of stored one by one"
                    );
                    let pending = audit.issue();
                    let event = a.event(pending.id());
                    audit.record(pending, event).await;
                }
                if last {
                    return;
                }
            }
        })
    }
}

/// Adds `b`'s count and span to `a` (the same kind).
fn merge(a: &mut Aggregate, b: &Aggregate) {
    a.count = a.count.saturating_add(b.count);
    a.window_start = a.window_start.min(b.window_start);
    a.window_end = a.window_end.max(b.window_end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::AuthMethod;

    /// A window start (a multiple of 10 s).
    const T: u64 = 1_700_000_000_000;
    const W: Duration = Duration::from_secs(10);

    fn actor(id: &str) -> Actor {
        Actor {
            id: id.into(),
            auth: AuthMethod::Mtls,
        }
    }

    fn txn(n: u32) -> TxnId {
        let mut random = [0; 10];
        random[..4].copy_from_slice(&n.to_be_bytes());
        TxnId::new(UnixMillis(T), random)
    }

    fn at(ms: u64) -> UnixMillis {
        UnixMillis(T + ms)
    }

    /// Admits `n` events of `kind` by `who` at `ms`, in transactions `first..`: how many
    /// were recorded.
    fn flood(g: &FloodGuard, who: &Actor, kind: FloodKind, first: u32, n: u32, ms: u64) -> u32 {
        (first..first + n)
            .filter(|i| g.admit(who, kind, txn(*i), at(ms)) == Admit::Record)
            .count() as u32
    }

    fn total(found: &[Aggregate]) -> u64 {
        found.iter().map(|a| u64::from(a.count)).sum()
    }

    #[test]
    fn records_up_to_the_budget_then_counts_and_drains_when_the_window_ends() {
        let g = FloodGuard::new(3, W);
        let x = actor("spiffe://example.org/x");
        let y = actor("spiffe://example.org/y");
        let got: Vec<Admit> = (0..8)
            .map(|i| g.admit(&x, FloodKind::Validated, txn(i), at(u64::from(i))))
            .collect();
        assert_eq!(got[..3], [Admit::Record; 3]);
        assert_eq!(got[3..], [Admit::Counted; 5]);
        // Each kind, and each caller, has its own budget.
        assert_eq!(flood(&g, &x, FloodKind::Refused, 100, 3, 50), 3);
        assert_eq!(flood(&g, &y, FloodKind::Validated, 200, 3, 50), 3);
        assert_eq!(g.drain(at(9_999)), [], "the window is still open");
        let found = g.drain(at(10_000));
        assert_eq!(
            found,
            [Aggregate {
                caller: Some(x.clone()),
                kind: FloodKind::Validated,
                count: 5,
                window_start: UnixMillis(T),
                window_end: UnixMillis(T + 10_000),
                sample_txn: txn(3),
            }],
            "only what was counted; the first counted is the sample"
        );
        assert_eq!(g.tracked(), 0, "ended windows are forgotten");
        assert_eq!(g.drain(at(20_000)), [], "drained once");
        // A new window, a new budget.
        assert_eq!(flood(&g, &x, FloodKind::Validated, 300, 4, 10_001), 3);
    }

    #[test]
    fn each_window_and_caller_gets_its_own_aggregate() {
        let g = FloodGuard::new(1, W);
        let x = actor("x");
        let y = actor("y");
        assert_eq!(flood(&g, &x, FloodKind::Refused, 0, 3, 0), 1);
        assert_eq!(flood(&g, &y, FloodKind::Refused, 10, 5, 9_000), 1);
        // x's next window begins before anything is drained: its first window is closed
        // and kept for the drain.
        assert_eq!(flood(&g, &x, FloodKind::Refused, 20, 2, 10_500), 1);
        let found = g.drain(at(20_000));
        let view: Vec<(String, u32, u64, u64, TxnId)> = found
            .iter()
            .map(|a| {
                (
                    a.caller.as_ref().unwrap().id.clone(),
                    a.count,
                    a.window_start.0 - T,
                    a.window_end.0 - T,
                    a.sample_txn,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("x".into(), 2, 0, 10_000, txn(1)),
                ("y".into(), 4, 0, 10_000, txn(11)),
                ("x".into(), 1, 10_000, 20_000, txn(21)),
            ]
        );
    }

    /// An aggregate never overstates what was proven: the same id proven two ways is two
    /// callers.
    #[test]
    fn callers_are_told_apart_by_how_they_proved_their_identity() {
        let g = FloodGuard::new(1, W);
        let mtls = actor("planner");
        let jwt = Actor {
            auth: AuthMethod::JwtSvid,
            ..mtls.clone()
        };
        assert_eq!(flood(&g, &mtls, FloodKind::Validated, 0, 2, 0), 1);
        assert_eq!(flood(&g, &jwt, FloodKind::Validated, 10, 3, 0), 1);
        let found = g.drain(at(10_000));
        assert_eq!(found.len(), 2);
        let auths: Vec<(AuthMethod, u32)> = found
            .iter()
            .map(|a| (a.caller.as_ref().unwrap().auth, a.count))
            .collect();
        assert!(
            auths.contains(&(AuthMethod::Mtls, 1)) && auths.contains(&(AuthMethod::JwtSvid, 2))
        );
    }

    #[test]
    fn too_many_callers_share_a_catch_all_and_nothing_counted_is_lost() {
        // At most 16 (caller, kind) pairs: one per stripe.
        let g = FloodGuard::with_capacity(1, W, 16);
        let mut counted = 0u64;
        for c in 0..1000 {
            let who = actor(&format!("caller-{c}"));
            counted += u64::from(3 - flood(&g, &who, FloodKind::Refused, c * 3, 3, 0));
            assert!(g.tracked() <= 16);
        }
        let found = g.drain(at(10_000));
        assert_eq!(
            total(&found),
            counted,
            "every counted event is in an aggregate"
        );
        let others: Vec<&Aggregate> = found.iter().filter(|a| a.caller.is_none()).collect();
        assert_eq!(
            others.len(),
            1,
            "one catch-all per kind, merged across stripes"
        );
        assert!(found.len() <= 16 + 1);
        assert_eq!(others[0].kind, FloodKind::Refused);
        assert_eq!(
            (others[0].window_start, others[0].window_end),
            (UnixMillis(T), UnixMillis(T + 10_000))
        );
        let e = others[0].event(writ_core::EventId(1));
        assert_eq!(e.actor, OTHER_CALLERS);
    }

    #[test]
    fn a_full_table_makes_room_once_windows_end() {
        let g = FloodGuard::with_capacity(1, W, 16);
        let mut counted = 0;
        for c in 0..200 {
            counted += 2 - flood(
                &g,
                &actor(&format!("old-{c}")),
                FloodKind::Validated,
                c,
                2,
                0,
            );
        }
        assert_eq!(g.tracked(), 16);
        // The next window, nothing drained yet: a new caller is tracked by name, because
        // the ended windows are pruned (their counts kept for the drain).
        let z = actor("z");
        assert_eq!(flood(&g, &z, FloodKind::Validated, 1000, 4, 10_000), 1);
        let found = g.drain(at(20_000));
        assert!(
            found
                .iter()
                .any(|a| a.caller.as_ref() == Some(&z) && a.count == 3),
            "{found:?}"
        );
        assert_eq!(total(&found), u64::from(counted) + 3);
    }

    #[test]
    fn ended_windows_waiting_for_a_drain_stay_bounded() {
        // One-millisecond windows and no drain for a thousand of them.
        let g = FloodGuard::with_capacity(1, Duration::from_millis(1), 16);
        let mut counted = 0u64;
        for w in 0..1000u64 {
            for c in 0..64u32 {
                let who = actor(&format!("c{c}"));
                for _ in 0..2 {
                    if g.admit(&who, FloodKind::Refused, txn(c), at(w)) == Admit::Counted {
                        counted += 1;
                    }
                }
            }
        }
        for s in g.stripes.iter() {
            let s = lock(s);
            assert!(s.entries.len() <= 1);
            assert!(s.closed.len() <= 1 + 2, "{}", s.closed.len());
        }
        let found = g.drain(at(2_000));
        assert_eq!(total(&found), counted);
        assert!(found.len() <= STRIPES * 2 + 1);
    }

    #[test]
    fn flush_reports_the_windows_still_open() {
        let g = FloodGuard::new(1, W);
        let x = actor("x");
        flood(&g, &x, FloodKind::Validated, 0, 4, 100);
        assert_eq!(g.drain(at(5_000)), []);
        let found = g.flush(at(5_000));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].count, 3);
        assert_eq!(
            (found[0].window_start, found[0].window_end),
            (UnixMillis(T), UnixMillis(T + 5_000)),
            "cut at now"
        );
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn a_disabled_guard_records_everything() {
        let g = FloodGuard::from_config(&FloodConfig {
            enabled: false,
            events_per_window: 1,
            ..FloodConfig::default()
        });
        assert_eq!(flood(&g, &actor("x"), FloodKind::Refused, 0, 1000, 0), 1000);
        assert_eq!(g.flush(at(1)), []);
    }

    #[test]
    fn an_aggregate_is_filed_under_its_sample_transaction() {
        let a = Aggregate {
            caller: Some(actor("x")),
            kind: FloodKind::Refused,
            count: 7,
            window_start: UnixMillis(T),
            window_end: UnixMillis(T + 10_000),
            sample_txn: txn(9),
        };
        let e = a.event(writ_core::EventId(42));
        assert_eq!((e.txn, e.actor.as_str(), e.token), (txn(9), "x", None));
        assert_eq!(
            e.kind,
            writ_core::EventKind::Aggregated {
                kind: "refused".into(),
                count: 7,
                window_start: UnixMillis(T),
                window_end: UnixMillis(T + 10_000),
            }
        );
    }

    /// The drain task stores what it finds through the audit writer, and at stop what is
    /// still open, before the writer stops.
    #[tokio::test]
    async fn the_drain_task_stores_aggregates_before_the_writer_stops() {
        use writ_store::TokenStore;
        let store = Arc::new(writ_store::MemoryStore::new());
        let (audit, writer) = Audit::start(store.clone()).await.unwrap();
        let g = Arc::new(FloodGuard::new(1, Duration::from_secs(3600)));
        let now = crate::service::now();
        let x = actor("x");
        let sample = TxnId::new(now, [5; 10]);
        assert_eq!(g.admit(&x, FloodKind::Refused, sample, now), Admit::Record);
        for _ in 0..4 {
            assert_eq!(g.admit(&x, FloodKind::Refused, sample, now), Admit::Counted);
        }
        let (stop, stopped) = watch::channel(false);
        let task = g.spawn_drain(audit.clone(), stopped);
        stop.send_replace(true);
        task.await.unwrap();
        drop(audit);
        writer.await.unwrap();
        let events = store.events(sample, None, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(
            &events[0].kind,
            writ_core::EventKind::Aggregated { kind, count: 4, .. } if kind == "refused"
        ));
        assert_eq!(events[0].actor, "x");
    }
}
