//! The one place the harness touches the parts of Writ's API that are still changing:
//! `TokenStore::insert`/`purge_expired` and `Service::new` (with the audit trail it
//! needs) and its methods. Everything else measures stable surfaces (the gRPC server,
//! `writ_core`, `TokenStore::get`/`get_with_state`). When the store trait or the service
//! change again, adapt these few functions and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use writ_api::convert::Action;
use writ_core::AuthMethod;
use writ_core::narrow::{ChildRequest, MintRequest, Policy};
use writ_core::policy::Role;
use writ_core::{Attributes, Event, EventId, KeyRing, TokenRecord, TokenSecret, UnixMillis};
use writ_server::audit::Audit;
use writ_server::auth::Caller;
use writ_server::config::ValidationEvents;
use writ_server::error::ServiceError;
use writ_server::service::{Service, Validation};
use writ_store::{StoreError, TokenStore};

use crate::fixtures;

/// Fan-out the in-process services allow (the configuration's ceiling), so benches can
/// derive many children of one parent.
pub const MAX_CHILDREN: u32 = 1024;

/// An in-process service over `store`, as `writ_server::start` builds it, with its audit
/// trail writer running on the current runtime and recording every validation (the
/// server's default).
pub async fn service<S: TokenStore>(
    store: Arc<S>,
    keys: KeyRing,
    policy: Policy,
) -> Result<Service<S>, StoreError> {
    let (audit, _writer) = Audit::start(store.clone()).await?;
    Ok(Service::new(
        store,
        keys,
        policy,
        fixtures::TRUST_DOMAIN.to_string(),
        MAX_CHILDREN,
        audit,
        ValidationEvents::All,
    )
    .with_policy(dev_policy(), true))
}

/// The development policy with asserted names, as the benchmark parties are named.
fn dev_policy() -> writ_server::policy::PolicyHandle {
    writ_server::policy::PolicyHandle::development(fixtures::TRUST_DOMAIN)
}

/// [`service`], also returning the audit trail writer's task: it ends (and lets go of
/// the store) once the service is dropped and the queued events are stored, so a
/// measurement can close and reopen the same store.
pub async fn service_with_writer<S: TokenStore>(
    store: Arc<S>,
    keys: KeyRing,
    policy: Policy,
) -> Result<(Service<S>, tokio::task::JoinHandle<()>), StoreError> {
    let (audit, writer) = Audit::start(store.clone()).await?;
    let svc = Service::new(
        store,
        keys,
        policy,
        fixtures::TRUST_DOMAIN.to_string(),
        MAX_CHILDREN,
        audit,
        ValidationEvents::All,
    )
    .with_policy(dev_policy(), true);
    Ok((svc, writer))
}

/// Event ids for records loaded straight into a store: increasing, one per record.
static NEXT_EVENT: AtomicU64 = AtomicU64::new(0);

/// Stores a root record with its `minted` event (durable per the store's durability).
pub async fn put<S: TokenStore>(store: &S, record: TokenRecord) -> Result<(), StoreError> {
    let base = EventId::first_at(record.issued_at).0;
    let id = EventId(base + NEXT_EVENT.fetch_add(1, Ordering::Relaxed));
    let event = Event::minted(id, &record);
    store.insert(record, event).await
}

/// Deletes every token that expired before `cutoff`, in batches of `batch`, as the
/// server's cleanup task does; returns how many went.
pub async fn purge_before<S: TokenStore>(
    store: &S,
    cutoff: UnixMillis,
    batch: usize,
) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let stats = store.purge_expired(cutoff, batch).await?;
        total += stats.tokens;
        if !stats.more {
            return Ok(total);
        }
    }
}

/// A party holding and checking tokens, identified as a benchmark client is (asserted).
fn party(id: &str) -> Caller {
    Caller::known(
        id,
        AuthMethod::Asserted,
        &[Role::Agent, Role::ResourceServer],
    )
}

/// Mint as the local minter (no idempotency key: every call a new token).
pub async fn mint<S: TokenStore>(
    svc: &Service<S>,
    req: MintRequest,
) -> Result<(TokenSecret, TokenRecord), ServiceError> {
    svc.mint(
        &Caller::known(fixtures::MINTER, AuthMethod::Bearer, &[Role::Minter]),
        req,
        None,
    )
    .await
}

/// Downscope `parent_token` as its holder (no idempotency key: every call a new token).
pub async fn downscope<S: TokenStore>(
    svc: &Service<S>,
    holder: &str,
    parent_token: &str,
    req: ChildRequest,
) -> Result<(TokenSecret, TokenRecord), ServiceError> {
    svc.downscope(&party(holder), parent_token, req, None).await
}

/// Validate `token` as `audience`, checking the standard action when `with_action`.
/// Returns whether the token is active and the action (if any) allowed.
pub async fn validate<S: TokenStore>(
    svc: &Service<S>,
    audience: &str,
    token: &str,
    with_action: bool,
) -> Result<bool, ServiceError> {
    if with_action {
        return validate_action(
            svc,
            audience,
            token,
            fixtures::SCOPE,
            fixtures::attributes(),
        )
        .await;
    }
    let v = svc.validate(&party(audience), token, None).await?;
    Ok(matches!(v, Validation::Active { .. }))
}

/// Validate `token` as `audience` with an action of `scope` and `attributes` (for
/// claims-size measurements). Returns whether the token is active and the action
/// allowed.
pub async fn validate_action<S: TokenStore>(
    svc: &Service<S>,
    audience: &str,
    token: &str,
    scope: &str,
    attributes: Attributes,
) -> Result<bool, ServiceError> {
    let action = Action {
        scope: scope.into(),
        attributes,
    };
    let v = svc.validate(&party(audience), token, Some(action)).await?;
    Ok(matches!(
        v,
        Validation::Active {
            decision: Some(Ok(_)),
            ..
        }
    ))
}

/// Mints a chain of `depth` hops through the service; returns every hop's secret,
/// root first.
pub async fn mint_chain<S: TokenStore>(
    svc: &Service<S>,
    depth: u32,
) -> Result<Vec<TokenSecret>, ServiceError> {
    let (root, _) = mint(svc, fixtures::mint_request(depth)).await?;
    let mut secrets = vec![root];
    for level in 1..=depth {
        let parent = &secrets[secrets.len() - 1];
        let (child, _) = downscope(
            svc,
            &fixtures::hop(level - 1),
            parent.expose(),
            fixtures::child_request(level, depth),
        )
        .await?;
        secrets.push(child);
    }
    Ok(secrets)
}
