//! The service logic of Mint, Downscope, Validate and Revoke, independent of gRPC: it
//! takes validated core values and an identified caller, applies the core's rules, talks
//! to the store and records each step in the audit trail. The tonic layer in
//! [`crate::grpc`] only converts and maps errors.
//!
//! Mint and Downscope are idempotent under a caller's key: the new token's entropy is
//! derived from the server key and (caller, parent, key, window epoch) instead of drawn at
//! random, and its record keeps a digest of the request. A retry (after a lost answer or a
//! deadline) derives the ids of this epoch and the last, finds the stored record and
//! returns it with the re-derived secret: nothing is written again, no second use or
//! fan-out slot is spent, and no secret is ever stored. A retry with another request is
//! refused. Attempts under one key are serialised, so racing retries find each other even
//! across an epoch boundary; the epoch makes a key used again after the window derive a
//! new token, never the string of an old one (the configuration keeps every keyed token
//! stored for at least two windows, so none is reclaimed while it can still be found).

pub mod consent;

use crate::audit::{Audit, Pending};
use crate::auth::Caller;
use crate::config::ValidationEvents;
use crate::error::{ParentProblem, ServiceError};
use crate::flood::{Admit, FloodGuard, FloodKind};
use crate::metrics::{Metrics, Operation};
use crate::parties::{Disabled, WalkEvents};
use crate::policy::PolicyHandle;
use crate::telemetry::record_txn;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use writ_api::convert::{Action, RevokeTarget};
use writ_core::PartyDisable;
use writ_core::lifecycle::{self, Status};
use writ_core::narrow::NarrowingError;
use writ_core::narrow::{self, ChildRequest, MintRequest, NewToken, Policy};
use writ_core::policy::{HOLDER_ROLES, PartyDef, Registry, ResolvedParty, Role, Roles};
use writ_core::{
    Actor, ActorKind, ClientType, Denial, Event, EventId, KeyRing, Party, TokenError, TokenId,
    TokenRecord, TokenSecret, TokenState, TxnId, UnixMillis, VerifiedToken,
};
use writ_store::{PartyRevoked, RevokeTarget as StoreTarget, StoreError, TokenStore, UseOutcome};

/// Why Validate answers "inactive". Machine-readable, and deliberately all it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inactive {
    /// Past its expiry.
    Expired,
    /// Revoked, or an ancestor was.
    Revoked,
    /// Well-formed and correctly tagged, but not in the store.
    Unknown,
    /// Presented to a party that is not its audience.
    WrongAudience,
    /// Not a token this server issued (bad format or integrity tag).
    Malformed,
    /// Every use it carried is consumed or passed on to children.
    Exhausted,
    /// The token answers only action checks, and none was asked.
    ActionRequired,
}

impl Inactive {
    /// Stable lower-case name, as audit events record it.
    pub fn as_str(self) -> &'static str {
        match self {
            Inactive::Expired => "expired",
            Inactive::Revoked => "revoked",
            Inactive::Unknown => "unknown",
            Inactive::WrongAudience => "wrong_audience",
            Inactive::Malformed => "malformed",
            Inactive::Exhausted => "exhausted",
            Inactive::ActionRequired => "action_required",
        }
    }
}

/// Why a presented token names no usable record.
enum Miss {
    Malformed,
    Forged,
    Unknown,
}

/// Validate's answer.
#[derive(Clone, Debug)]
pub enum Validation {
    /// The token is active; `decision` is set when an action was asked about.
    Active {
        /// The stored record.
        record: Arc<TokenRecord>,
        /// The action verdict, if one was asked.
        decision: Option<Result<(), Denial>>,
        /// The action was denied only because its scope is high-privilege and the token
        /// carries no consent to it (`CONSENT_REQUIRED`).
        consent: Option<ConsentRequired>,
    },
    /// The token is not active.
    Inactive(Inactive),
}

/// A `CONSENT_REQUIRED` answer: the grant allows the action, but its scope is latent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsentRequired {
    /// The open (pending or approved) request for exactly this action, if there is one.
    pub request: Option<writ_core::ConsentId>,
}

/// The service state shared by every request.
#[derive(Debug)]
pub struct Service<S> {
    store: Arc<S>,
    keys: KeyRing,
    policy: Policy,
    trust_domain: String,
    max_children: u32,
    audit: Arc<Audit>,
    validations: ValidationEvents,
    /// How long a retry under an idempotency key gets its token back, in milliseconds
    /// (at least this long, at most twice).
    idempotency_window_ms: u64,
    /// Serialise the attempts under one idempotency key (striped by the key's scope).
    retry_locks: Vec<tokio::sync::Mutex<()>>,
    /// The registry of parties and scopes every new token's audience is checked against.
    registry: PolicyHandle,
    /// Development mode: a party the registry cannot resolve (an asserted name that is no
    /// SPIFFE ID) is taken as the request describes it.
    asserted: bool,
    /// Parties disabled by an operator (the kill switch), and the admission gate.
    disabled: Arc<Disabled>,
    /// Beyond a caller's budget, refused and validated events are counted, not stored.
    flood: Arc<FloodGuard>,
    /// Counts tokens issued, refusals, validations and revocations.
    metrics: Arc<Metrics>,
    /// `[consent]` and the issuer consent URLs are under.
    consent: consent::ConsentSettings,
}

/// Stripes of [`Service::retry_locks`].
const RETRY_STRIPES: usize = 64;

/// A Mint or Downscope made under an idempotency key: what the key names (who asks, from
/// which parent, under which key) and the digest of what was asked.
#[derive(Debug)]
struct Retry {
    scope: Vec<u8>,
    digest: [u8; 32],
}

impl Retry {
    fn new<T: serde::Serialize + std::fmt::Debug>(
        op: &str,
        caller: &str,
        parent: Option<TokenId>,
        key: &str,
        req: &T,
    ) -> Retry {
        // Length-prefixed, so no two (op, caller, parent, key) encode alike.
        let mut scope = Vec::new();
        for part in [
            op.as_bytes(),
            caller.as_bytes(),
            &parent.map_or([0; 16], |p| p.0),
            key.as_bytes(),
        ] {
            scope.extend_from_slice(&(part.len() as u32).to_be_bytes());
            scope.extend_from_slice(part);
        }
        let digest = narrow::request_digest(&scope, req);
        Retry { scope, digest }
    }

    /// What the token of window epoch `epoch` is derived from.
    fn scope_at(&self, epoch: u64) -> Vec<u8> {
        [self.scope.as_slice(), &epoch.to_be_bytes()].concat()
    }

    fn stripe(&self) -> usize {
        usize::from(blake3::hash(&self.scope).as_bytes()[0]) % RETRY_STRIPES
    }
}

/// Validate's answer on a known token: active with the action's decision (if one was
/// asked), or why it is inactive.
type Verdict = Result<Option<Result<(), Denial>>, Inactive>;

/// Who validates which token, about which action, under which event id.
type ValidationContext<'a> = (&'a Actor, &'a TokenRecord, &'a Option<String>, EventId);

/// The `validated` event of a verdict.
fn validated_event(
    (service, record, scope, id): ValidationContext<'_>,
    verdict: &Verdict,
) -> Event {
    let (result, detail) = match verdict {
        Err(why) => ("inactive", why.as_str().to_owned()),
        Ok(None) => ("active", String::new()),
        Ok(Some(Ok(()))) => ("allowed", String::new()),
        Ok(Some(Err(d))) => ("denied", format!("{}: {}", d.denied_by, d.reason)),
    };
    Event::validated(id, record, service, scope.clone(), result, detail)
}

/// The party behind a caller that holds or checks tokens. Minters mint and operators
/// operate; neither holds nor validates tokens unless the registry also gives it the role.
fn holder<'a>(caller: &'a Caller, needed: &str) -> Result<&'a Actor, ServiceError> {
    caller.require(&HOLDER_ROLES, needed).map(|i| &i.actor)
}

/// The wall clock in microseconds, read in exactly one place.
#[allow(clippy::disallowed_methods)]
pub fn now_micros() -> u64 {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    u64::try_from(us).unwrap_or(u64::MAX)
}

/// The wall clock in whole seconds (what certificates and JWTs date by).
pub fn now_secs() -> u64 {
    now_micros() / 1_000_000
}

/// The wall clock.
pub fn now() -> UnixMillis {
    UnixMillis(now_micros() / 1000)
}

impl<S: TokenStore> Service<S> {
    /// A service over `store`, signing with `keys` and recording into `audit`.
    pub fn new(
        store: Arc<S>,
        keys: KeyRing,
        policy: Policy,
        trust_domain: String,
        max_children: u32,
        audit: Arc<Audit>,
        validations: ValidationEvents,
    ) -> Self {
        Service {
            store,
            keys,
            policy,
            max_children,
            audit,
            validations,
            idempotency_window_ms: 300_000,
            retry_locks: (0..RETRY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            registry: PolicyHandle::development(&trust_domain),
            trust_domain,
            asserted: false,
            disabled: Arc::default(),
            flood: Arc::new(FloodGuard::from_config(&Default::default())),
            metrics: Arc::default(),
            consent: consent::ConsentSettings::default(),
        }
    }

    /// Counts into `metrics` (the server's registry).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Bounds the audit trail under a flood with `flood`.
    pub fn with_flood(mut self, flood: Arc<FloodGuard>) -> Self {
        self.flood = flood;
        self
    }

    /// Refuses new tokens to the parties in `disabled` (shared with the auth seam).
    pub fn with_disabled(mut self, disabled: Arc<Disabled>) -> Self {
        self.disabled = disabled;
        self
    }

    /// Checks every new token's audience against `registry`; `asserted`: development mode
    /// (see [`Service::resolve`]).
    pub fn with_policy(mut self, registry: PolicyHandle, asserted: bool) -> Self {
        self.registry = registry;
        self.asserted = asserted;
        self
    }

    /// The party the registry says `described` is, refused (`party`) when the request
    /// describes it otherwise (`check`) or the registry does not know it. In development
    /// mode a name the registry cannot resolve is taken as described (it is asserted).
    fn resolve<'r>(
        &self,
        registry: &'r Registry,
        described: &Party,
        check: bool,
    ) -> Result<ResolvedParty<'r>, NarrowingError> {
        match registry.resolve(&described.id) {
            Some(p) => {
                if check {
                    p.check_description(described)?;
                }
                Ok(p)
            }
            // Only names that are no SPIFFE ID: a SPIFFE ID the registry does not know is
            // refused in development mode too.
            None if self.asserted && !described.id.starts_with("spiffe://") => Ok(ResolvedParty {
                def: std::borrow::Cow::Owned(PartyDef {
                    id: described.id.clone(),
                    display_name: None,
                    kind: described.kind,
                    client_type: described.client_type,
                    roles: Roles::of(&HOLDER_ROLES),
                    ceiling: None,
                    targets: None,
                    max_ttl_secs: None,
                    enabled: true,
                    txn_token_jwt: false,
                }),
                registered: false,
            }),
            None => registry.audience(&described.id),
        }
    }

    /// May `record` (derived by `holder`, `None` at Mint) be issued to its audience, as
    /// the registry sees them?
    fn admit(&self, record: &TokenRecord, holder: Option<&Party>) -> Result<(), NarrowingError> {
        let policy = self.registry.current();
        let registry = policy.registry();
        // The audience, and the party obtaining the token (a minter or the deriving
        // holder, identified before it may have been disabled).
        for (role, id) in [
            ("audience", &record.audience.id),
            ("actor", &record.current_actor().id),
        ] {
            if self.disabled.contains(id) {
                return Err(NarrowingError {
                    dimension: writ_core::Dimension::Party,
                    detail: format!(
                        "{role} {} is disabled by an operator",
                        writ_core::text::Shown(id)
                    ),
                });
            }
        }
        let audience = self.resolve(registry, &record.audience, true)?;
        let holder = holder
            .map(|h| self.resolve(registry, h, false))
            .transpose()?;
        registry.admit(&audience, holder.as_ref(), &record.grant, record.issued_at)
    }

    /// The party `id` names in the registry now (its kind and client type as the registry
    /// records them), for faces whose requests name a party by id only (the OAuth token
    /// endpoint's `audience`). `None`: no such party.
    pub fn party(&self, id: &str) -> Option<Party> {
        let policy = self.registry.current();
        policy.registry().resolve(id).map(|p| p.party())
    }

    /// May `id` receive Txn-Token JWTs (the registry's `txn_token_jwt`, and enabled)?
    pub fn may_receive_jwt(&self, id: &str) -> bool {
        let policy = self.registry.current();
        policy
            .registry()
            .resolve(id)
            .is_some_and(|p| p.enabled && p.txn_token_jwt && !self.disabled.contains(id))
    }

    /// Sets how long a retry under an idempotency key gets its token back.
    pub fn with_idempotency_window(mut self, window: std::time::Duration) -> Self {
        self.idempotency_window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Records a refused Downscope of `parent` by `actor`.
    async fn refused(
        &self,
        parent: &TokenRecord,
        actor: &Actor,
        dimension: &'static str,
        detail: String,
    ) {
        self.metrics.refused(Operation::downscope, dimension);
        if self
            .flood
            .admit(actor, FloodKind::Refused, parent.txn, now())
            == Admit::Counted
        {
            return;
        }
        let pending = self.audit.issue();
        let event = Event::refused(pending.id(), parent, actor, dimension, detail);
        self.audit.record(pending, event).await;
    }

    /// The window epoch of `now`.
    fn epoch(&self, now: UnixMillis) -> u64 {
        now.0 / self.idempotency_window_ms.max(1)
    }

    /// A new token: derived from the retry's scope and epoch under the signing key, or
    /// random.
    fn issue(
        &self,
        retry: Option<&Retry>,
        txn: TxnId,
        now: UnixMillis,
        by: &Actor,
    ) -> (TokenSecret, NewToken) {
        let derived =
            retry.and_then(|r| self.keys.issue_derived(&r.scope_at(self.epoch(now))).next());
        let (secret, token): (TokenSecret, VerifiedToken) =
            derived.unwrap_or_else(|| self.keys.issue(rand::random()));
        let new = NewToken {
            token,
            txn,
            now,
            idempotency: retry.map(|r| r.digest),
            auth: by.auth,
        };
        (secret, new)
    }

    /// Holds the attempts under `retry`'s key one at a time (on this server).
    async fn serialise(&self, retry: Option<&Retry>) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match retry {
            Some(r) => Some(self.retry_locks[r.stripe()].lock().await),
            None => None,
        }
    }

    /// The token an earlier attempt of `retry` stored, if any, with its re-derived secret:
    /// looked up by the ids its scope derives in this window epoch and the last, under each
    /// key of the ring (so a retry finds a token issued before the signing key rotated).
    /// Refused if that attempt asked for something else.
    async fn replayed(
        &self,
        retry: &Retry,
    ) -> Result<Option<(TokenSecret, TokenRecord)>, ServiceError> {
        let epoch = self.epoch(now());
        for e in [epoch, epoch.saturating_sub(1)] {
            for (secret, token) in self.keys.issue_derived(&retry.scope_at(e)) {
                let Some(record) = self.store.get(token.token_id).await? else {
                    continue;
                };
                if record.idempotency != Some(retry.digest)
                    || record.trust_domain != self.trust_domain
                {
                    // A refusal that rests on a stored token: only once it is durable.
                    self.store.sync(record.txn).await?;
                    return Err(ServiceError::IdempotencyReused);
                }
                // The earlier attempt may have failed to be acknowledged: answer only once
                // its token is as durable as this attempt's would be.
                self.store.sync(record.txn).await?;
                tracing::info!(txn = %record.txn, token_id = %record.token_id, "answered a retry with the token it already issued");
                return Ok(Some((secret, record)));
            }
        }
        Ok(None)
    }

    /// After the store refused a token id as taken: the concurrent attempt that took it.
    async fn raced(
        &self,
        retry: Option<&Retry>,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        match retry {
            Some(r) => self
                .replayed(r)
                .await?
                .ok_or(ServiceError::Store(StoreError::Conflict)),
            None => Err(ServiceError::Store(StoreError::Conflict)),
        }
    }

    /// Starts a transaction for a minter; idempotent under `idempotency_key`.
    pub async fn mint(
        &self,
        caller: &Caller,
        req: MintRequest,
        idempotency_key: Option<&str>,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        self.mint_checked(caller, req, idempotency_key, &|_| Ok(()))
            .await
    }

    /// [`mint`](Self::mint), refused with `accept`'s error if the token it would issue,
    /// once every rule has passed, is not what the face asking can use (the token
    /// endpoint's JWT answer): checked before anything is stored.
    pub async fn mint_checked(
        &self,
        caller: &Caller,
        req: MintRequest,
        idempotency_key: Option<&str>,
        accept: &(dyn Fn(&TokenRecord) -> Result<(), ServiceError> + Sync),
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let minter = &caller
            .require(
                &[Role::Minter],
                "Mint requires a minter's identity (a client certificate, a client assertion or `authorization: Bearer <credential>`)",
            )?
            .actor;
        let retry = idempotency_key.map(|k| Retry::new("mint", &minter.id, None, k, &req));
        let _one_at_a_time = self.serialise(retry.as_ref()).await;
        if let Some(r) = &retry
            && let Some(found) = self.replayed(r).await?
        {
            return Ok(found);
        }
        // From the audience check until the write ends: a party disabled meanwhile is
        // either refused here or revoked with this token.
        let pass = self.disabled.admission().await.map_err(stale)?;
        let now = now();
        let (secret, new) =
            self.issue(retry.as_ref(), TxnId::new(now, rand::random()), now, minter);
        let minter = Party {
            id: minter.id.clone(),
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        record_txn(&new.txn);
        let record = narrow::mint(req, minter, &self.trust_domain, &self.policy, new)
            .and_then(|record| self.admit(&record, None).map(|()| record))
            .map_err(|e| {
                self.metrics.refused(Operation::mint, e.dimension.as_str());
                ServiceError::MintRefused(e)
            })?;
        accept(&record)?;
        // Pending until the insert lands: readers see nothing later meanwhile. The write,
        // its announcement and the settling finish even if this request is cancelled.
        let pending = self.audit.issue();
        let event = Event::minted(pending.id(), &record);
        let (r, e) = (record.clone(), event.clone());
        let insert = move |s: Arc<S>| async move {
            let _pass = pass;
            s.insert(r, e).await
        };
        let (inserted, _) = self
            .audit
            .commit(Some(pending), Some(event), &self.store, insert)
            .await;
        match inserted {
            Ok(()) => {}
            // A concurrent attempt under the same idempotency key stored it first.
            Err(StoreError::Conflict) => return self.raced(retry.as_ref()).await,
            Err(e) => return Err(e.into()),
        }
        self.metrics.minted();
        tracing::info!(txn = %record.txn, token_id = %record.token_id, audience = %record.audience.id, "minted");
        Ok((secret, record))
    }

    /// Looks up the record a presented token names. The integrity check runs first, so
    /// a forged or mistyped token never reaches the store.
    async fn lookup(
        &self,
        presented: &str,
    ) -> Result<Result<(Arc<TokenRecord>, TokenState), Miss>, ServiceError> {
        let verified = match self.keys.verify(presented) {
            Ok(v) => v,
            Err(TokenError::Malformed) => return Ok(Err(Miss::Malformed)),
            Err(TokenError::Forged) => return Ok(Err(Miss::Forged)),
        };
        match self.store.get_with_state(verified.token_id).await? {
            // A record of another trust domain (the configuration changed) is not ours.
            Some((r, state))
                if r.secret_hash.ct_eq(&verified.secret_hash)
                    && r.trust_domain == self.trust_domain =>
            {
                Ok(Ok((r, state)))
            }
            _ => Ok(Err(Miss::Unknown)),
        }
    }

    /// Derives a child of `parent_token` for the next hop; idempotent under
    /// `idempotency_key`.
    pub async fn downscope(
        &self,
        caller: &Caller,
        parent_token: &str,
        req: ChildRequest,
        idempotency_key: Option<&str>,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        self.downscope_checked(caller, parent_token, req, idempotency_key, &|_| Ok(()))
            .await
    }

    /// [`downscope`](Self::downscope), refused with `accept`'s error if the child it would
    /// issue, once every rule has passed, is not what the face asking can use: checked
    /// before anything is stored (so no child is stranded).
    pub async fn downscope_checked(
        &self,
        caller: &Caller,
        parent_token: &str,
        req: ChildRequest,
        idempotency_key: Option<&str>,
        accept: &(dyn Fn(&TokenRecord) -> Result<(), ServiceError> + Sync),
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let actor = holder(
            caller,
            "Downscope requires the caller's identity (the parent's audience)",
        )?;
        let caller_id = actor.id.as_str();
        let (parent, state) = match self.lookup(parent_token).await? {
            Ok(found) => found,
            Err(Miss::Malformed) => {
                return Err(ServiceError::ParentToken(ParentProblem::Malformed));
            }
            Err(Miss::Forged | Miss::Unknown) => {
                return Err(ServiceError::ParentToken(ParentProblem::Invalid));
            }
        };
        record_txn(&parent.txn);
        // The caller is part of the key's scope: another caller derives other ids and
        // meets the holder refusal below.
        let retry = idempotency_key
            .map(|k| Retry::new("downscope", caller_id, Some(parent.token_id), k, &req));
        let _one_at_a_time = self.serialise(retry.as_ref()).await;
        if let Some(r) = &retry
            && let Some(found) = self.replayed(r).await?
        {
            return Ok(found);
        }
        // Only the holder learns that its token is revoked; anyone else gets the core's
        // holder refusal below.
        if caller_id == parent.audience.id && state.revoked.is_some() {
            self.refused(
                &parent,
                actor,
                "revoked",
                "the parent token is revoked".into(),
            )
            .await;
            return Err(ServiceError::ParentToken(ParentProblem::Revoked));
        }
        let mut req = req;
        if req.max_uses.is_none()
            && let Some(max) = parent.grant.max_uses
        {
            // A child that names no limit gets what the parent has left to pass on.
            req.max_uses = Some(max.saturating_sub(state.uses).max(1));
        }
        let pass = self.disabled.admission().await.map_err(stale)?;
        let now = now();
        let (secret, new) = self.issue(retry.as_ref(), parent.txn, now, actor);
        let child = match narrow::downscope(&parent, caller_id, req, &self.policy, new)
            .and_then(|child| self.admit(&child, Some(&parent.audience)).map(|()| child))
        {
            Ok(child) => child,
            Err(e) => {
                self.refused(&parent, actor, e.dimension.as_str(), e.detail.clone())
                    .await;
                return Err(e.into());
            }
        };
        accept(&child)?;
        let pending = self.audit.issue();
        let event = Event::downscoped(pending.id(), &parent, &child);
        // The store re-checks revocation, fan-out and the use budget under the
        // transaction's lock, so a concurrent Revoke never leaves a usable child. Landed,
        // the event is announced and its id settled even if this request is cancelled;
        // refused, the id comes back and is settled here.
        let (c, e, max) = (child.clone(), event.clone(), self.max_children);
        let insert = move |s: Arc<S>| async move {
            let _pass = pass;
            s.insert_child(c, max, e).await
        };
        let (stored, pending) = self
            .audit
            .commit(Some(pending), Some(event), &self.store, insert)
            .await;
        let refusal = match stored {
            Ok(()) => None,
            Err(StoreError::ParentRevoked) => {
                Some(("revoked", ServiceError::ParentToken(ParentProblem::Revoked)))
            }
            Err(StoreError::FanOutExceeded { limit }) => {
                Some(("fan_out", ServiceError::FanOut(limit)))
            }
            Err(StoreError::UsesExhausted) => Some(("uses", ServiceError::UsesLeft)),
            Err(StoreError::TxnFull { limit }) => Some(("txn_size", ServiceError::TxnFull(limit))),
            Err(StoreError::ParentMissing) => {
                return Err(ServiceError::ParentToken(ParentProblem::Invalid));
            }
            // A concurrent attempt under the same idempotency key stored it first.
            Err(StoreError::Conflict) => {
                drop(pending);
                return self.raced(retry.as_ref()).await;
            }
            Err(other) => return Err(ServiceError::Store(other)),
        };
        drop(pending);
        if let Some((dimension, error)) = refusal {
            self.refused(&parent, actor, dimension, error.to_string())
                .await;
            return Err(error);
        }
        self.metrics.downscoped(child.depth);
        tracing::info!(
            txn = %child.txn, token_id = %child.token_id, parent = %parent.token_id,
            actor = %caller_id, audience = %child.audience.id, depth = child.depth, "downscoped"
        );
        Ok((secret, child))
    }

    /// Introspects a token for the calling party, optionally checking one action.
    pub async fn validate(
        &self,
        caller: &Caller,
        token: &str,
        action: Option<Action>,
    ) -> Result<Validation, ServiceError> {
        let actor = holder(
            caller,
            "Validate requires the identity of the validating service",
        )?;
        let (record, state) = match self.lookup(token).await? {
            Ok(found) => found,
            // Nothing to attribute to a transaction: not recorded.
            Err(Miss::Malformed | Miss::Forged) => {
                self.metrics.validated(Inactive::Malformed.as_str());
                return Ok(Validation::Inactive(Inactive::Malformed));
            }
            Err(Miss::Unknown) => {
                self.metrics.validated(Inactive::Unknown.as_str());
                return Ok(Validation::Inactive(Inactive::Unknown));
            }
        };
        record_txn(&record.txn);
        let scope = action.as_ref().map(|a| a.scope.clone());
        // Issued as the answer is decided, so the trail orders it among concurrent events;
        // not at all (no trip through the issuer's lock) when validations go unrecorded,
        // in which case no event is ever built from the placeholder id.
        let pending = (self.validations != ValidationEvents::None).then(|| self.audit.issue());
        let id = pending.as_ref().map_or(EventId(0), |p| p.id());
        let ctx = (actor, &*record, &scope, id);
        // `pending` comes back unless its event was written with a spent use.
        let (verdict, pending, latent) = self.decide(ctx, &state, action.as_ref(), pending).await?;
        if let Some(pending) = pending
            && self.wants_validation(scope.is_some(), verdict.is_err())
            && self
                .flood
                .admit(actor, FloodKind::Validated, record.txn, now())
                == Admit::Record
        {
            let event = validated_event(ctx, &verdict);
            self.audit.record(pending, event).await;
        }
        match &verdict {
            Ok(decision) => {
                self.metrics.validated("active");
                if let Some(d) = decision {
                    self.metrics.decided(d.is_ok());
                }
            }
            Err(why) => self.metrics.validated(why.as_str()),
        }
        // The rare CONSENT_REQUIRED answer names the request to use, if one is open: a
        // read only on this path, after the event is recorded.
        let consent = match (latent, &action) {
            (true, Some(a)) => Some(ConsentRequired {
                request: self
                    .open_consent_for(&record, &a.scope, &a.attributes)
                    .await?,
            }),
            _ => None,
        };
        Ok(match verdict {
            Ok(decision) => Validation::Active {
                record,
                decision,
                consent,
            },
            Err(why) => Validation::Inactive(why),
        })
    }

    /// Does the configuration record this validation?
    fn wants_validation(&self, checked_action: bool, inactive: bool) -> bool {
        match self.validations {
            ValidationEvents::All => true,
            ValidationEvents::Actions => checked_action || inactive,
            ValidationEvents::None => false,
        }
    }

    /// Validate's verdict on a known token: active (with the action's decision, if one
    /// was asked) or why not; `pending` back unless the store wrote the `validated`
    /// event with a spent use (then it is announced and settled); and whether the action
    /// was denied only for want of the user's consent (`CONSENT_REQUIRED`: the grant
    /// allows it, but its scope is latent). A scope or claim denial comes first.
    async fn decide(
        &self,
        ctx: ValidationContext<'_>,
        state: &TokenState,
        action: Option<&Action>,
        pending: Option<Pending>,
    ) -> Result<(Verdict, Option<Pending>, bool), ServiceError> {
        let (actor, record, _, _) = ctx;
        if record.audience.id != actor.id {
            return Ok((Err(Inactive::WrongAudience), pending, false));
        }
        match lifecycle::status(record, state, now()) {
            Status::Active => {}
            Status::Revoked => return Ok((Err(Inactive::Revoked), pending, false)),
            Status::Expired => return Ok((Err(Inactive::Expired), pending, false)),
            Status::Exhausted => return Ok((Err(Inactive::Exhausted), pending, false)),
        }
        // Plain introspection must not stand in for the action check such a token exists for.
        if record.grant.require_action_check && action.is_none() {
            return Ok((Err(Inactive::ActionRequired), pending, false));
        }
        let mut latent = false;
        let decision = action.map(|a| {
            record.grant.authorize(&a.scope, &a.attributes)?;
            self.exercisable(record, &a.scope)
                .inspect_err(|_| latent = true)
        });
        // An allowed action on a limited token spends one use, atomically, and the use and
        // its event are one write; losing the race for the last use makes the token
        // exhausted for this caller too. Like Mint's insert, the write and its event's
        // announcement finish even if the request is cancelled.
        if matches!(decision, Some(Ok(()))) && record.grant.max_uses.is_some() {
            let verdict = Ok(decision);
            let event = self
                .wants_validation(true, false)
                .then(|| validated_event(ctx, &verdict));
            let (id, e) = (record.token_id, event.clone());
            let spend = move |s: Arc<S>| async move { s.consume_use(id, e).await };
            let (outcome, pending) = self.audit.commit(pending, event, &self.store, spend).await;
            return Ok(match outcome? {
                UseOutcome::Consumed { .. } => (verdict, pending, false),
                UseOutcome::Exhausted => (Err(Inactive::Exhausted), pending, false),
                UseOutcome::Revoked => (Err(Inactive::Revoked), pending, false),
                UseOutcome::Unknown => (Err(Inactive::Unknown), pending, false),
            });
        }
        Ok((Ok(decision), pending, latent))
    }

    /// Revokes a token and its whole subtree, or a whole transaction. By token: whoever
    /// presents it (possession is the authority). By token id or transaction: operators.
    /// Returns the ids newly revoked: none when everything named was revoked already.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: String,
    ) -> Result<Vec<TokenId>, ServiceError> {
        let (store_target, by, unknown) = match target {
            RevokeTarget::Token(token) => {
                let (record, state) = match self.lookup(&token).await? {
                    Ok(found) => found,
                    Err(Miss::Malformed) => {
                        return Err(ServiceError::Token(ParentProblem::Malformed));
                    }
                    Err(Miss::Forged | Miss::Unknown) => {
                        return Err(ServiceError::Token(ParentProblem::Invalid));
                    }
                };
                record_txn(&record.txn);
                // Only the holder (the token's audience) or an operator; anyone else learns
                // nothing, exactly as for a token that does not exist.
                let by = match caller {
                    Caller::Known(i) if i.roles.contains(Role::Operator) => i.actor.clone(),
                    Caller::Known(i)
                        if i.actor.id == record.audience.id && i.roles.any(&HOLDER_ROLES) =>
                    {
                        i.actor.clone()
                    }
                    _ => return Err(ServiceError::Token(ParentProblem::Invalid)),
                };
                // Revoked already, and so is its whole subtree (a revocation reaches every
                // descendant at once, and a revoked token derives nothing): nothing new to
                // write. Answered once the revocation is as durable as one this call would
                // have written (an earlier attempt's may not have been acknowledged).
                if state.revoked.is_some() {
                    self.store.sync(record.txn).await?;
                    return Ok(Vec::new());
                }
                let id = record.token_id;
                (StoreTarget::Token(id), by, format!("token: no token {id}"))
            }
            RevokeTarget::TokenId(id) => (
                StoreTarget::Token(id),
                operator(caller, "revoking by token_id or txn")?,
                format!("token_id: no token {id}"),
            ),
            RevokeTarget::Txn(txn) => (
                {
                    record_txn(&txn);
                    StoreTarget::Txn(txn)
                },
                operator(caller, "revoking by token_id or txn")?,
                format!("txn: no transaction {txn}"),
            ),
        };
        // The revocation, its announcement and the settling of its event id finish even if
        // this request is cancelled once it started.
        let pending = self.audit.issue();
        let (at, who) = (pending.id(), by.clone());
        let write = move |s: Arc<S>| async move { s.revoke(store_target, who, reason, at).await };
        let (revoked, _) = self
            .audit
            .commit(Some(pending), None, &self.store, write)
            .await;
        let revoked = revoked.map_err(|e| match e {
            StoreError::NotFound => ServiceError::NotFound(unknown),
            other => ServiceError::Store(other),
        })?;
        self.metrics.revoked(revoked.ids.len());
        tracing::info!(by = %by.id, revoked = revoked.ids.len(), "revoked");
        Ok(revoked.ids)
    }
}

impl<S: TokenStore> Service<S> {
    /// The kill switch (operators): disables `party` durably, refuses it every new token
    /// from now on, waits for admissions in flight, then revokes every token it holds or
    /// presents, with their descendants (one `revoked` event per transaction).
    pub async fn disable_party(
        &self,
        caller: &Caller,
        party: String,
        reason: String,
    ) -> Result<PartyRevoked, ServiceError> {
        let by = operator(caller, "disabling a party")?;
        let why = PartyDisable::new(now(), by.id.clone(), reason.clone());
        let (store, disabled) = (self.store.clone(), self.disabled.clone());
        let events = WalkEvents::new(self.audit.clone());
        let who = by.id.clone();
        let target = party.clone();
        // The whole sequence in a task of its own: a cancelled request neither leaves the
        // flag stored but not in force, nor stops the walk half way (a crash mid-walk is
        // resumed at start, see `resume_disabled`).
        let walk = tokio::spawn(async move {
            {
                let _one_at_a_time = disabled.switch().await;
                store
                    .set_party_disabled(target.clone(), Some(why.clone()))
                    .await?;
                disabled.disable(target.clone(), why).await;
            }
            // In force; the walk needs no switch (which the shared set's re-read takes).
            store.revoke_party(target, by, reason, events).await
        });
        let revoked = walk
            .await
            .map_err(|e| ServiceError::Store(StoreError::Task(e.to_string())))??;
        self.metrics
            .revoked(usize::try_from(revoked.revoked).unwrap_or(usize::MAX));
        tracing::warn!(
            party = %party, by = %who, revoked = revoked.revoked, txns = revoked.txns,
            "party disabled"
        );
        Ok(revoked)
    }

    /// At start: finishes the walk of every disabled party (a crash may have stopped one
    /// half way, or lost its unsynced writes); a walk with nothing left writes nothing.
    /// Recorded as the server's own doing.
    pub async fn resume_disabled(&self) {
        for (party, why) in self.disabled.all() {
            self.walk_for_server(party, why.by, why.reason).await;
        }
    }

    /// Brings this node's set of disabled parties in line with the store's, for a store
    /// other Writ nodes share: a party another node disabled is refused here from now on,
    /// and the admissions in flight here are waited for. Returns the parties this node
    /// must then walk itself ([`walk_disabled`](Self::walk_disabled)), so a token it
    /// admitted before it knew is revoked too (a walk writes nothing where there is nothing
    /// new), with those whose walk failed before. A party enabled elsewhere acts again.
    pub async fn sync_disabled(&self) -> Result<Vec<(String, PartyDisable)>, StoreError> {
        let stored = self.store.disabled_parties().await?;
        self.disabled.synced();
        let mut newly = self.disabled.unwalked();
        let _one_at_a_time = self.disabled.switch().await;
        let known: std::collections::BTreeSet<String> =
            self.disabled.all().into_iter().map(|(p, _)| p).collect();
        let now: std::collections::BTreeSet<&String> = stored.iter().map(|(p, _)| p).collect();
        for gone in known.iter().filter(|p| !now.contains(p)) {
            self.disabled.enable(gone);
            tracing::warn!(party = %gone, "party enabled through another node");
        }
        for (party, why) in stored {
            if !known.contains(&party) {
                self.disabled.disable(party.clone(), why.clone()).await;
                tracing::warn!(party = %party, by = %why.by, "party disabled through another node");
                newly.push((party, why));
            }
        }
        Ok(newly)
    }

    /// Walks a party [`sync_disabled`](Self::sync_disabled) named; a walk that fails is
    /// named again on its next read.
    pub async fn walk_disabled(&self, party: String, why: PartyDisable) {
        if !self
            .walk_for_server(party.clone(), why.by.clone(), why.reason.clone())
            .await
        {
            self.disabled.walk_failed(party, why);
        }
    }

    /// Revokes what `party` holds or presents on the server's own initiative (recorded as
    /// `internal`, on behalf of `by`), logging the outcome; whether it completed.
    async fn walk_for_server(&self, party: String, by: String, reason: String) -> bool {
        let by = Actor {
            id: by,
            auth: writ_core::AuthMethod::Internal,
        };
        let events = WalkEvents::new(self.audit.clone());
        match self
            .store
            .revoke_party(party.clone(), by, reason, events)
            .await
        {
            Ok(r) => {
                if r.revoked > 0 {
                    self.metrics
                        .revoked(usize::try_from(r.revoked).unwrap_or(usize::MAX));
                    tracing::warn!(party = %party, revoked = r.revoked, "revoked what a disabled party held");
                }
                true
            }
            Err(e) => {
                tracing::error!(party = %party, error = %e, "revoking what a disabled party held");
                false
            }
        }
    }

    /// Revokes everything held or presented by the parties the policy in force disables
    /// (`enabled = false`) and `previous` did not (every one, with no `previous`: at
    /// start), as the kill switch does. Admissions that read the earlier policy are
    /// waited for first.
    pub async fn disable_from_policy(&self, previous: Option<&Registry>) {
        let policy = self.registry.current();
        let newly: Vec<String> = policy
            .registry()
            .parties
            .values()
            .filter(|p| !p.enabled)
            .filter(|p| previous.is_none_or(|r| r.parties.get(&p.id).is_none_or(|q| q.enabled)))
            .map(|p| p.id.clone())
            .collect();
        if newly.is_empty() {
            return;
        }
        self.disabled.drain().await;
        for party in newly {
            self.walk_for_server(party, "policy".into(), "disabled in the policy file".into())
                .await;
        }
    }

    /// Lets a disabled party act again (operators); whether it was disabled. Restores
    /// nothing that was revoked.
    pub async fn enable_party(&self, caller: &Caller, party: String) -> Result<bool, ServiceError> {
        let by = operator(caller, "enabling a party")?;
        let (store, disabled, target) = (self.store.clone(), self.disabled.clone(), party.clone());
        let events = WalkEvents::new(self.audit.clone());
        let was = tokio::spawn(async move {
            // On a shared store, another node may have admitted a token for the party
            // before it read the disablement, and may never read it if the party acts
            // again first. Every node has read it (or admits nothing), and its admissions
            // have landed, `settled_after` it was stored: from then on, one more walk
            // finds what they admitted. (No switch held meanwhile: the re-read takes it.)
            if let Some(settle) = disabled.settled_after()
                && let Some((_, why)) = store
                    .disabled_parties()
                    .await?
                    .into_iter()
                    .find(|(p, _)| *p == target)
            {
                let settled = why.at.0.saturating_add(ms(settle));
                let wait = settled.saturating_sub(now().0);
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                let by = Actor {
                    id: why.by,
                    auth: writ_core::AuthMethod::Internal,
                };
                store
                    .revoke_party(target.clone(), by, why.reason, events)
                    .await?;
            }
            let _one_at_a_time = disabled.switch().await;
            store.set_party_disabled(target.clone(), None).await?;
            Ok::<_, StoreError>(disabled.enable(&target))
        })
        .await
        .map_err(|e| ServiceError::Store(StoreError::Task(e.to_string())))??;
        tracing::warn!(party = %party, by = %by.id, was_disabled = was, "party enabled");
        Ok(was)
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An admission refused because this node cannot tell which parties are disabled.
fn stale(e: crate::parties::Stale) -> ServiceError {
    ServiceError::Store(StoreError::Backend(e.to_string()))
}

/// The operator behind a caller, or why it is not one (`what` it wanted to do).
fn operator(caller: &Caller, what: &str) -> Result<Actor, ServiceError> {
    caller
        .require(
            &[Role::Operator],
            &format!("{what} requires an operator's identity"),
        )
        .map(|i| i.actor.clone())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use writ_core::{AuthMethod, Dimension, ServerKey};
    use writ_store::MemoryStore;

    async fn service(
        asserted: bool,
        disabled: Vec<(String, PartyDisable)>,
    ) -> Service<MemoryStore> {
        let store = Arc::new(MemoryStore::new());
        let (audit, _writer) = Audit::start(store.clone()).await.unwrap();
        let keys = KeyRing::new(vec![ServerKey {
            id: 1,
            key: [7; 32],
        }])
        .unwrap();
        Service::new(
            store,
            keys,
            Policy::default(),
            "example.org".into(),
            16,
            audit,
            ValidationEvents::All,
        )
        .with_policy(PolicyHandle::development("example.org"), asserted)
        .with_disabled(Disabled::new(disabled))
    }

    /// alice's transaction for `audience`, with one scope and nothing else.
    pub(crate) fn mint_to(audience: &str) -> MintRequest {
        MintRequest {
            subject: "alice".into(),
            audience: Party {
                id: audience.into(),
                kind: ActorKind::Agent,
                client_type: ClientType::Confidential,
            },
            targets: Default::default(),
            scopes: ["trips:book".to_string()].into(),
            claims: Default::default(),
            purpose: String::new(),
            tctx: Default::default(),
            rctx: Default::default(),
            ttl_secs: None,
            max_uses: None,
            require_action_check: false,
        }
    }

    fn refused(r: Result<(TokenSecret, TokenRecord), ServiceError>) -> NarrowingError {
        match r {
            Err(ServiceError::MintRefused(e)) => e,
            other => panic!("expected a refused mint, got {other:?}"),
        }
    }

    /// Development mode takes an unresolvable name as the request describes it only when
    /// it is no SPIFFE ID; a SPIFFE ID the registry does not know is refused there too,
    /// and outside development mode a short name is no party at all.
    #[tokio::test]
    async fn only_names_that_are_no_spiffe_id_are_taken_as_described() {
        let minter = Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]);
        let dev = service(true, vec![]).await;
        dev.mint(&minter, mint_to("planner"), None).await.unwrap();
        let e = refused(
            dev.mint(&minter, mint_to("spiffe://other.example/agent/x"), None)
                .await,
        );
        assert_eq!(e.dimension, Dimension::Party, "{e}");
        let proven = service(false, vec![]).await;
        let e = refused(proven.mint(&minter, mint_to("planner"), None).await);
        assert_eq!(e.dimension, Dimension::Party, "{e}");
        proven
            .mint(&minter, mint_to("spiffe://example.org/agent/planner"), None)
            .await
            .unwrap();
    }

    /// A minter identified just before it was disabled obtains no token: the admission
    /// check refuses the disabled actor, not only a disabled audience.
    #[tokio::test]
    async fn a_disabled_minter_obtains_no_token_even_once_identified() {
        let why = PartyDisable::new(UnixMillis(1), "ops".into(), "leak".into());
        let s = service(false, vec![("gw".into(), why)]).await;
        let minter = Caller::known("gw", AuthMethod::Bearer, &[Role::Minter]);
        let e = refused(
            s.mint(&minter, mint_to("spiffe://example.org/agent/planner"), None)
                .await,
        );
        assert_eq!(e.dimension, Dimension::Party, "{e}");
        assert!(e.detail.contains("actor"), "{e}");
    }
}
