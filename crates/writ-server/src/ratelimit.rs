//! Per-caller rate limits: a token bucket (GCRA, [`governor`]) per authenticated caller,
//! sized by the caller's role, checked after the caller is identified and before any
//! work. A caller over its limit is answered `RESOURCE_EXHAUSTED` with
//! `google.rpc.RetryInfo` (the delay before a request would conform) and a plain
//! `retry-after` header in whole seconds for clients without rich-error support.
//!
//! - **Keyed by identity.** The bucket belongs to the authenticated identity (a SPIFFE
//!   ID, a configured minter's or operator's id), whatever connection or address it
//!   calls from. Callers without an identity (anonymous, or whose proof failed) share
//!   the `anonymous` limit per peer address (an IPv6 peer per /64), so one peer's failed
//!   attempts do not starve another's.
//! - **By role, most generous wins.** Each role has its own limit (`[limits.<role>]`); a
//!   caller holding several roles gets the most generous of them (highest rate, then
//!   highest burst). A known caller with no role gets the `anonymous` limit under its id.
//! - **Bounded memory.** Buckets live in a table of at most `max_tracked_callers` keys
//!   per limit (8-byte keys: a keyed hash of the identity, never the identity itself).
//!   Housekeeping ([`RateLimiter::spawn_housekeeping`]) forgets buckets that have
//!   refilled (indistinguishable from a new one). While the table is full, callers it
//!   does not already track share one overflow bucket of their role's limit, so a flood
//!   of distinct identities costs no memory and cannot starve the callers already tracked;
//!   each such period is logged.
//! - **Off switch.** `[limits] enabled = false` checks nothing (benchmarks, or a proxy
//!   in front that limits instead).
//!
//! Defaults (requests per second, burst): resource servers 10 000/20 000 (they validate
//! on every request they serve), minters 500/1 000 (one Mint per user request at a
//! gateway), agents 200/400 (Downscopes are fsynced writes), operators and approvers
//! 50/500 (a steady tens a second, and a burst for an incident response that revokes or
//! reads many chains at once), anonymous 20/40 per peer address. Parties proven by certificate or assertion
//! hold both `agent` and `resource_server` until the registry says otherwise, so they get
//! the resource server's limit.

use crate::auth::Caller;
use crate::error::MAX_STATUS_MESSAGE;
use crate::flood::FloodConfig;
use crate::tls::PeerInfo;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{NotUntil, Quota};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};
use writ_core::policy::{Role, Roles};
use writ_core::text::truncate;

/// Metadata header with the seconds to wait before retrying (rounded up, at least 1).
pub const RETRY_AFTER: &str = "retry-after";
/// How often housekeeping forgets refilled buckets.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);
/// Most requests per second or burst any limit may be configured with.
pub const MAX_RATE: u32 = 1_000_000;
/// Most callers one limit may track (each costs a few dozen bytes).
pub const MAX_TRACKED_CALLERS: usize = 10_000_000;

/// One role's limit: a bucket of `burst` requests refilled at `requests_per_second`.
/// A role's table sets both (no field falls back to another role's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimit {
    /// Sustained requests per second (1..=1 000 000).
    pub requests_per_second: u32,
    /// Requests that may arrive at once after a quiet period (1..=1 000 000).
    pub burst: u32,
}

impl RoleLimit {
    const fn new(requests_per_second: u32, burst: u32) -> RoleLimit {
        RoleLimit {
            requests_per_second,
            burst,
        }
    }

    fn quota(self) -> Quota {
        let rate = u64::from(self.requests_per_second.max(1));
        let period = Duration::from_nanos((1_000_000_000 / rate).max(1));
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        // `period` is never zero, so `with_period` always answers.
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }

    /// Most generous first: the higher rate, then the higher burst.
    fn generosity(self) -> (u32, u32) {
        (self.requests_per_second, self.burst)
    }
}

/// `[limits]`: per-caller rate limits by role, and (`[limits.events]`) how the audit
/// trail stays bounded under a flood. See the module documentation for the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Check rate limits (default). Off: every request passes.
    pub enabled: bool,
    /// Most callers each limit tracks at once; beyond it, untracked callers share one
    /// bucket until housekeeping frees room. Default 100 000.
    pub max_tracked_callers: usize,
    /// Minters (Mint). Default 500/s, burst 1000.
    pub minter: RoleLimit,
    /// Agents (Downscope, Validate, Revoke of their tokens). Default 200/s, burst 400.
    pub agent: RoleLimit,
    /// Resource servers (Validate). Default 10 000/s, burst 20 000.
    pub resource_server: RoleLimit,
    /// Operators (chain queries, audit trail, revocations). Default 50/s, burst 500.
    pub operator: RoleLimit,
    /// Approvers (consent decisions). Default 50/s, burst 500.
    pub approver: RoleLimit,
    /// Callers without an identity, or whose proof of identity failed, per peer address
    /// (IPv6: per /64). Default 20/s, burst 40.
    pub anonymous: RoleLimit,
    /// `[limits.events]`: refused and validated events counted instead of stored one by
    /// one beyond a per-caller budget.
    pub events: FloodConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            max_tracked_callers: 100_000,
            minter: RoleLimit::new(500, 1_000),
            agent: RoleLimit::new(200, 400),
            resource_server: RoleLimit::new(10_000, 20_000),
            operator: RoleLimit::new(50, 500),
            approver: RoleLimit::new(50, 500),
            anonymous: RoleLimit::new(20, 40),
            events: FloodConfig::default(),
        }
    }
}

impl RateLimitConfig {
    /// The limits by class: the roles in [`Role::ALL`]'s order, then anonymous.
    fn classes(&self) -> [(&'static str, RoleLimit); CLASSES] {
        [
            (Role::Minter.as_str(), self.minter),
            (Role::Agent.as_str(), self.agent),
            (Role::ResourceServer.as_str(), self.resource_server),
            (Role::Operator.as_str(), self.operator),
            (Role::Approver.as_str(), self.approver),
            (ANONYMOUS, self.anonymous),
        ]
    }

    /// Checks ranges the type system cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, l) in self.classes() {
            if !(1..=MAX_RATE).contains(&l.requests_per_second)
                || !(1..=MAX_RATE).contains(&l.burst)
            {
                return Err(format!(
                    "limits.{name}: requests_per_second = {} and burst = {} must each be in 1..={MAX_RATE}",
                    l.requests_per_second, l.burst
                ));
            }
        }
        if !(1..=MAX_TRACKED_CALLERS).contains(&self.max_tracked_callers) {
            return Err(format!(
                "limits.max_tracked_callers = {} must be in 1..={MAX_TRACKED_CALLERS}",
                self.max_tracked_callers
            ));
        }
        self.events.validate()
    }
}

/// The name of the limit for callers without an identity (or without a role).
pub const ANONYMOUS: &str = "anonymous";
/// The index of the anonymous class: after every role's, which a role indexes.
const ANONYMOUS_CLASS: usize = Role::ALL.len();
/// Every role and anonymous.
const CLASSES: usize = ANONYMOUS_CLASS + 1;

/// A request refused by its caller's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// How long until a request by this caller would conform.
    pub retry_after: Duration,
    /// The limit applied: a role's name or `anonymous`.
    pub class: &'static str,
    /// Its rate and burst.
    pub limit: RoleLimit,
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests/s with a burst of {} (the {} limit); retry in {} ms",
            self.limit.requests_per_second,
            self.limit.burst,
            self.class,
            millis_up(self.retry_after)
        )
    }
}

/// `d` in milliseconds, rounded up, at least 1.
fn millis_up(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000).max(1)
}

/// `d` in seconds, rounded up, at least 1: the `retry-after` header.
fn seconds_up(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The answer to a limited request by `caller` (its id, or a description such as
/// `anonymous`): `RESOURCE_EXHAUSTED` naming the caller and the limit, with
/// `google.rpc.RetryInfo` carrying the exact delay and a `retry-after` header in whole
/// seconds (rounded up).
pub fn status(limited: &Limited, caller: &str) -> tonic::Status {
    let message = truncate(
        format!("rate limit: {caller:?} is limited to {limited}"),
        MAX_STATUS_MESSAGE,
    );
    let mut metadata = MetadataMap::new();
    metadata.insert(
        RETRY_AFTER,
        MetadataValue::from(seconds_up(limited.retry_after)),
    );
    tonic::Status::with_error_details_and_metadata(
        tonic::Code::ResourceExhausted,
        message,
        {
            let mut details = ErrorDetails::with_retry_info(Some(limited.retry_after));
            details.set_error_info(
                "RATE_LIMITED",
                crate::error::ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            details
        },
        metadata,
    )
}

/// The peer address of `request`: from the TLS connection's [`PeerInfo`], or tonic's own
/// connect info on a plaintext listener.
pub fn peer_ip<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote_addr)
        .or_else(|| request.remote_addr())
        .map(|a| a.ip())
}

/// The bucket table of one limit: 64 shards of `key → theoretical arrival time`
/// (nanoseconds since the limiter started; 0: fresh), at most `cap` keys in all, and the
/// overflow bucket new keys share while the table is full.
struct Keys {
    shards: Box<[RwLock<HashMap<u64, AtomicU64>>]>,
    overflow: AtomicU64,
    len: AtomicUsize,
    cap: usize,
    /// Requests that went to the overflow bucket since housekeeping last looked.
    overflowed: Arc<AtomicU64>,
}

const SHARDS: usize = 64;

impl Keys {
    fn new(cap: usize, overflowed: Arc<AtomicU64>) -> Keys {
        Keys {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            overflow: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            cap,
            overflowed,
        }
    }

    fn shard(&self, key: u64) -> &RwLock<HashMap<u64, AtomicU64>> {
        // Keys are keyed hashes: their top bits are as good as any.
        &self.shards[(key >> 58) as usize % SHARDS]
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// One GCRA step on `cell` (governor's own compare-and-swap loop).
fn measure<T, F, E>(cell: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let read = |v: u64| NonZeroU64::new(v).map(|n| Nanos::new(n.get()));
    let mut prev = cell.load(Ordering::Acquire);
    let mut decision = f(read(prev));
    while let Ok((result, next)) = decision {
        match cell.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
        decision = f(read(prev));
    }
    decision.map(|(result, _)| result)
}

impl StateStore for Keys {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(*key);
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = map.get(key) {
                return measure(cell, f);
            }
        }
        // Racy by at most the number of threads inserting at once: still bounded.
        if self.len.load(Ordering::Relaxed) >= self.cap {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return measure(&self.overflow, f);
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let cell = map.entry(*key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        measure(cell, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for Keys {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, tat| tat.load(Ordering::Relaxed) > below);
            self.len.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }

    /// Gives memory back where a shard holds far fewer keys than it has room for.
    fn shrink_to_fit(&self) {
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            if map.capacity() > 4 * map.len() + 64 {
                map.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Buckets<C> = governor::RateLimiter<u64, Keys, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One limit and its buckets.
struct Class<C: Clock> {
    name: &'static str,
    limit: RoleLimit,
    buckets: Buckets<C>,
    /// Shared with the table: requests that went to its overflow bucket.
    overflowed: Arc<AtomicU64>,
}

/// Per-caller token buckets by role. Cheap to share (`Arc`); every method takes `&self`.
pub struct RateLimiter<C: Clock = DefaultClock> {
    enabled: bool,
    classes: Vec<Class<C>>,
    /// Keys buckets by a hash keyed at random per server, so nobody can aim identities at
    /// one shard or one bucket.
    hasher: RandomState,
    /// Counts limited requests by class.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RateLimiter");
        d.field("enabled", &self.enabled);
        for c in &self.classes {
            d.field(c.name, &(c.limit, c.buckets.len()));
        }
        d.finish()
    }
}

impl RateLimiter {
    /// The limits of `config`, on the monotonic clock.
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// The limits of `config` on `clock` (tests drive a fake one).
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> RateLimiter<C> {
        let classes = config
            .classes()
            .into_iter()
            .map(|(name, limit)| {
                let overflowed = Arc::new(AtomicU64::new(0));
                let keys = Keys::new(config.max_tracked_callers.max(1), overflowed.clone());
                Class {
                    name,
                    limit,
                    buckets: governor::RateLimiter::new(limit.quota(), keys, clock.clone()),
                    overflowed,
                }
            })
            .collect();
        RateLimiter {
            enabled: config.enabled,
            classes,
            hasher: RandomState::new(),
            metrics: None,
        }
    }

    /// Counts every limited request into `metrics` too.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> RateLimiter<C> {
        self.metrics = Some(metrics);
        self
    }

    /// Takes one request from the bucket of the caller `caller_id` holding `roles`: the
    /// most generous of its roles' limits, or `anonymous` if it holds none.
    pub fn check(&self, caller_id: &str, roles: Roles) -> Result<(), Limited> {
        if !self.enabled {
            return Ok(());
        }
        let class = roles
            .iter()
            .map(|r| r as usize)
            .max_by_key(|&i| self.classes[i].limit.generosity())
            .unwrap_or(ANONYMOUS_CLASS);
        self.take(class, self.hasher.hash_one((0u8, caller_id)))
    }

    /// Takes one request from the `anonymous` bucket of the peer at `peer` (an IPv6
    /// address counts by its /64; no address: one bucket for all such callers).
    pub fn check_anonymous(&self, peer: Option<IpAddr>) -> Result<(), Limited> {
        if !self.enabled {
            return Ok(());
        }
        let prefix = match peer.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => (4u8, u128::from(u32::from(v4))),
            Some(IpAddr::V6(v6)) => (6u8, u128::from(v6) & (u128::MAX << 64)),
            None => (0u8, 0),
        };
        self.take(ANONYMOUS_CLASS, self.hasher.hash_one((1u8, prefix)))
    }

    /// [`check`](Self::check) or [`check_anonymous`](Self::check_anonymous) for `caller`,
    /// answered as a [`status`] when limited: the one call an RPC makes after identifying
    /// its caller.
    pub fn admit(&self, caller: &Caller, peer: Option<IpAddr>) -> Result<(), tonic::Status> {
        match caller {
            Caller::Known(i) => self
                .check(&i.actor.id, i.roles)
                .map_err(|l| status(&l, &i.actor.id)),
            Caller::Anonymous => self
                .check_anonymous(peer)
                .map_err(|l| status(&l, &anonymous(peer))),
        }
    }

    /// For a request whose proof of identity failed: charges the peer's `anonymous`
    /// bucket, so a peer retrying bad proofs is slowed down like any anonymous caller.
    pub fn admit_unidentified(&self, peer: Option<IpAddr>) -> Result<(), tonic::Status> {
        self.check_anonymous(peer)
            .map_err(|l| status(&l, &anonymous(peer)))
    }

    fn take(&self, class: usize, key: u64) -> Result<(), Limited> {
        let c = &self.classes[class];
        c.buckets.check_key(&key).map_err(|not_until: NotUntil<_>| {
            if let Some(m) = &self.metrics {
                m.rate_limited(c.name);
            }
            let now = c.buckets.clock().now();
            Limited {
                retry_after: not_until.wait_time_from(now),
                class: c.name,
                limit: c.limit,
            }
        })
    }

    /// Forgets the buckets that have refilled (a new one would be the same), gives memory
    /// back, and logs each limit whose table was full since the last run.
    pub fn housekeep(&self) {
        for c in &self.classes {
            c.buckets.retain_recent();
            c.buckets.shrink_to_fit();
            let overflowed = c.overflowed.swap(0, Ordering::Relaxed);
            if overflowed > 0 {
                tracing::warn!(
                    limit = c.name,
                    requests = overflowed,
                    tracked = c.buckets.len(),
                    "rate limits: too many callers to track one by one; callers not tracked shared one bucket"
                );
            }
        }
    }

    /// Callers tracked by the `class` limit (a role's name or `anonymous`).
    pub fn tracked(&self, class: &str) -> usize {
        self.classes
            .iter()
            .find(|c| c.name == class)
            .map_or(0, |c| c.buckets.len())
    }
}

impl<C> RateLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Runs [`housekeep`](Self::housekeep) every [`HOUSEKEEPING_INTERVAL`] until `stop`
    /// turns true.
    pub fn spawn_housekeeping(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + HOUSEKEEPING_INTERVAL;
            let mut ticks = tokio::time::interval_at(start, HOUSEKEEPING_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = ticks.tick() => this.housekeep(),
                }
            }
        })
    }
}

/// How an anonymous caller is named in a refusal.
fn anonymous(peer: Option<IpAddr>) -> String {
    match peer {
        Some(ip) => format!("{ANONYMOUS} ({ip})"),
        None => ANONYMOUS.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;
    use governor::clock::FakeRelativeClock;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use writ_core::AuthMethod;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            minter: RoleLimit::new(20, 10),
            agent: RoleLimit::new(10, 5),
            resource_server: RoleLimit::new(100, 50),
            operator: RoleLimit::new(2, 3),
            ..RateLimitConfig::default()
        }
    }

    fn limiter(config: &RateLimitConfig) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimiter::with_clock(config, clock.clone()), clock)
    }

    fn roles(r: &[Role]) -> Roles {
        Roles::of(r)
    }

    /// How many requests `caller` gets through before the first refusal (at most 10 000).
    fn passes(l: &RateLimiter<FakeRelativeClock>, caller: &str, r: Roles) -> usize {
        (0..10_000)
            .take_while(|_| l.check(caller, r).is_ok())
            .count()
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_refills_at_its_rate() {
        let (l, clock) = limiter(&config());
        let agent = roles(&[Role::Agent]);
        assert_eq!(passes(&l, "planner", agent), 5, "the burst");
        assert_eq!(
            l.check("planner", agent),
            Err(Limited {
                retry_after: 100 * MS,
                class: "agent",
                limit: RoleLimit::new(10, 5),
            }),
            "one request every 100 ms"
        );
        clock.advance(40 * MS);
        assert_eq!(l.check("planner", agent).unwrap_err().retry_after, 60 * MS);
        clock.advance(60 * MS);
        assert_eq!(passes(&l, "planner", agent), 1, "one request refilled");
        clock.advance(500 * MS);
        assert_eq!(passes(&l, "planner", agent), 5, "refilled to the burst");
        clock.advance(Duration::from_secs(3600));
        assert_eq!(passes(&l, "planner", agent), 5, "never more than the burst");
    }

    #[test]
    fn every_caller_has_its_own_bucket() {
        let (l, _) = limiter(&config());
        let agent = roles(&[Role::Agent]);
        assert_eq!(passes(&l, "planner", agent), 5);
        assert_eq!(
            passes(&l, "booking", agent),
            5,
            "untouched by planner's flood"
        );
        assert!(l.check("planner", agent).is_err());
    }

    #[test]
    fn each_role_has_its_limit_and_the_most_generous_role_wins() {
        let (l, _) = limiter(&config());
        // A role indexes its own limit.
        for r in Role::ALL {
            assert_eq!(l.classes[r as usize].name, r.as_str());
        }
        assert_eq!(l.classes[ANONYMOUS_CLASS].name, ANONYMOUS);
        assert_eq!(passes(&l, "ops", roles(&[Role::Operator])), 3);
        assert_eq!(
            l.check("ops", roles(&[Role::Operator])).unwrap_err().class,
            "operator"
        );
        assert_eq!(passes(&l, "gw", roles(&[Role::Minter])), 10);
        // An operator that is also a resource server gets the resource server's limit.
        let both = roles(&[Role::Operator, Role::ResourceServer]);
        assert_eq!(passes(&l, "svc", both), 50);
        assert_eq!(l.check("svc", both).unwrap_err().class, "resource_server");
        // Minter (20/s) is more generous than agent (10/s).
        assert_eq!(passes(&l, "gw2", roles(&[Role::Agent, Role::Minter])), 10);
        // Equal rates: the higher burst wins.
        let tie = RateLimitConfig {
            operator: RoleLimit::new(10, 7),
            ..config()
        };
        let (l, _) = limiter(&tie);
        assert_eq!(passes(&l, "x", roles(&[Role::Agent, Role::Operator])), 7);
        // A known caller without a role: the anonymous limit (default 20/s, burst 40).
        assert_eq!(passes(&l, "nobody", Roles::NONE), 40);
        assert_eq!(l.check("nobody", Roles::NONE).unwrap_err().class, ANONYMOUS);
    }

    #[test]
    fn anonymous_callers_share_a_bucket_per_address() {
        let (l, _) = limiter(&config());
        let take = |ip: Option<IpAddr>| {
            (0..100)
                .take_while(|_| l.check_anonymous(ip).is_ok())
                .count()
        };
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(take(Some(a)), 40);
        assert_eq!(take(Some(b)), 40, "another address, another bucket");
        // The same address mapped into IPv6 is the same peer.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(take(Some(mapped)), 0);
        // IPv6 peers count by /64: hopping addresses inside one prefix does not help.
        let v6 =
            |last: u16, net: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, last));
        assert_eq!(take(Some(v6(1, 0))), 40);
        assert_eq!(take(Some(v6(2, 0))), 0);
        assert_eq!(take(Some(v6(1, 1))), 40);
        assert_eq!(take(None), 40);
        // An identity named like an address is not that address's bucket.
        assert_eq!(passes(&l, "192.0.2.1", Roles::NONE), 40);
    }

    #[test]
    fn tracked_callers_are_capped_and_housekeeping_frees_room() {
        let capped = RateLimitConfig {
            max_tracked_callers: 3,
            ..config()
        };
        let (l, clock) = limiter(&capped);
        let agent = roles(&[Role::Agent]);
        for c in ["a", "b", "c"] {
            assert!(l.check(c, agent).is_ok());
        }
        assert_eq!(l.tracked("agent"), 3);
        // The table is full: new callers share one bucket, and the table does not grow.
        assert_eq!(passes(&l, "d", agent), 5);
        assert_eq!(passes(&l, "e", agent), 0, "e shares d's (overflow) bucket");
        assert_eq!(l.tracked("agent"), 3);
        // Callers already tracked are untouched by the overflow.
        assert_eq!(passes(&l, "a", agent), 4);
        // Other limits have their own table.
        assert!(l.check("ops", roles(&[Role::Operator])).is_ok());
        assert_eq!(l.tracked("operator"), 1);
        // Housekeeping forgets refilled buckets and counts (then resets) the overflow.
        assert!(
            l.classes[Role::Agent as usize]
                .overflowed
                .load(Ordering::Relaxed)
                > 0
        );
        clock.advance(Duration::from_secs(1));
        l.housekeep();
        assert_eq!(l.tracked("agent"), 0);
        assert_eq!(l.tracked("operator"), 0);
        assert_eq!(
            l.classes[Role::Agent as usize]
                .overflowed
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(passes(&l, "e", agent), 5, "e has a bucket of its own now");
        assert_eq!(l.tracked("agent"), 1);
        // A bucket still draining is kept: forgetting it would hand out a fresh burst.
        l.housekeep();
        assert_eq!(l.tracked("agent"), 1);
        assert!(l.check("e", agent).is_err());
    }

    #[test]
    fn disabled_limits_pass_everything() {
        let off = RateLimitConfig {
            enabled: false,
            ..config()
        };
        let (l, _) = limiter(&off);
        assert_eq!(passes(&l, "ops", roles(&[Role::Operator])), 10_000);
        assert!((0..1000).all(|_| l.check_anonymous(None).is_ok()));
        assert_eq!(l.tracked("operator"), 0);
    }

    #[test]
    fn a_limited_request_is_resource_exhausted_with_retry_info_and_retry_after() {
        let limited = Limited {
            retry_after: Duration::from_millis(2_500),
            class: "agent",
            limit: RoleLimit::new(10, 5),
        };
        let s = status(&limited, "spiffe://example.org/planner");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        for part in [
            "\"spiffe://example.org/planner\"",
            "is limited to 10 requests/s",
            "a burst of 5",
            "the agent limit",
            "2500 ms",
        ] {
            assert!(s.message().contains(part), "{part:?} in {:?}", s.message());
        }
        let retry = s.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(2_500)));
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("RATE_LIMITED", crate::error::ERROR_DOMAIN)
        );
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "3", "rounded up");
        // Below a second: RetryInfo is exact, the header says one second.
        let short = Limited {
            retry_after: Duration::from_micros(100),
            ..limited
        };
        let s = status(&short, "x");
        assert_eq!(
            s.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_micros(100))
        );
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "1");
        // A caller's id of any length leaves a bounded message.
        let s = status(&limited, &"x".repeat(100_000));
        assert!(s.message().len() <= MAX_STATUS_MESSAGE);
    }

    #[test]
    fn admit_answers_for_known_and_anonymous_callers() {
        let (l, _) = limiter(&config());
        let ops = Caller::known("ops", AuthMethod::Bearer, &[Role::Operator]);
        assert!((0..3).all(|_| l.admit(&ops, None).is_ok()));
        let s = l.admit(&ops, None).unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("\"ops\"") && s.message().contains("operator"));
        let peer = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
        assert!((0..40).all(|_| l.admit(&Caller::Anonymous, peer).is_ok()));
        let s = l.admit(&Caller::Anonymous, peer).unwrap_err();
        assert!(
            s.message().contains("anonymous (198.51.100.7)"),
            "{}",
            s.message()
        );
        // Failed proofs draw on the same bucket.
        assert!(l.admit_unidentified(peer).is_err());
        assert!(l.admit_unidentified(None).is_ok());
    }

    #[test]
    fn configuration_has_documented_defaults_and_checked_ranges() {
        let parsed: RateLimitConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, RateLimitConfig::default());
        assert!(parsed.validate().is_ok());
        assert!(parsed.enabled);
        assert_eq!(parsed.resource_server, RoleLimit::new(10_000, 20_000));
        assert_eq!(parsed.agent, RoleLimit::new(200, 400));
        assert_eq!(parsed.minter, RoleLimit::new(500, 1_000));
        assert_eq!(parsed.operator, RoleLimit::new(50, 500));
        assert_eq!(parsed.approver, RoleLimit::new(50, 500));
        assert_eq!(parsed.anonymous, RoleLimit::new(20, 40));
        let custom: RateLimitConfig = toml::from_str(
            "max_tracked_callers = 50\n[agent]\nrequests_per_second = 5\nburst = 9\n[events]\nwindow_seconds = 60\n",
        )
        .unwrap();
        assert_eq!(custom.agent, RoleLimit::new(5, 9));
        assert_eq!(
            custom.minter,
            RoleLimit::new(500, 1_000),
            "others keep theirs"
        );
        assert_eq!(custom.events.window_seconds, 60);
        assert!(custom.validate().is_ok());
        // A role's table sets both fields; unknown fields are refused.
        assert!(toml::from_str::<RateLimitConfig>("[agent]\nrequests_per_second = 5\n").is_err());
        assert!(toml::from_str::<RateLimitConfig>("rate = 5\n").is_err());
        assert!(
            toml::from_str::<RateLimitConfig>("[admin]\nrequests_per_second = 5\nburst = 5\n")
                .is_err()
        );
        for (text, field) in [
            (
                "[agent]\nrequests_per_second = 0\nburst = 1\n",
                "limits.agent",
            ),
            (
                "[anonymous]\nrequests_per_second = 1\nburst = 2000000\n",
                "limits.anonymous",
            ),
            ("max_tracked_callers = 0\n", "limits.max_tracked_callers"),
            (
                "[events]\nwindow_seconds = 0\n",
                "limits.events.window_seconds",
            ),
            (
                "[events]\nevents_per_window = 0\n",
                "limits.events.events_per_window",
            ),
        ] {
            let c: RateLimitConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }

    /// The production clock: a real limiter refuses past its burst too (no timing).
    #[test]
    fn the_monotonic_clock_limiter_refuses_past_the_burst() {
        let l = RateLimiter::new(&RateLimitConfig {
            operator: RoleLimit::new(1, 2),
            ..RateLimitConfig::default()
        });
        let ops = roles(&[Role::Operator]);
        // However slowly this runs, a thousand requests do not all fit in 1/s, burst 2.
        let limited = (0..1000)
            .find_map(|_| l.check("ops", ops).err())
            .expect("refused");
        assert!(limited.retry_after <= Duration::from_secs(1));
    }
}
