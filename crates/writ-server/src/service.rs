//! The service logic of Mint, Downscope and Validate, independent of gRPC: it takes
//! validated core values and an identified caller, applies the core's rules and talks
//! to the store. The tonic layer in [`crate::grpc`] only converts and maps errors.

use crate::auth::Caller;
use crate::error::{ParentProblem, ServiceError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use writ_api::convert::{Action, RevokeTarget};
use writ_core::lifecycle::{self, Status};
use writ_core::narrow::{self, ChildRequest, MintRequest, NewToken, Policy};
use writ_core::{
    ActorKind, ClientType, Denial, KeyRing, Party, TokenError, TokenId, TokenRecord, TokenSecret,
    TokenState, TxnId, UnixMillis,
};
use writ_store::{RevokeTarget as StoreTarget, StoreError, TokenStore, UseOutcome};

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
        record: Box<TokenRecord>,
        /// The action verdict, if one was asked.
        decision: Option<Result<(), Denial>>,
    },
    /// The token is not active.
    Inactive(Inactive),
}

/// The service state shared by every request.
#[derive(Debug)]
pub struct Service<S> {
    store: Arc<S>,
    keys: KeyRing,
    policy: Policy,
    trust_domain: String,
    max_children: u32,
}

/// The identity of a party caller. Minters mint; they neither hold nor validate tokens.
fn party_id<'a>(caller: &'a Caller, needed: &str) -> Result<&'a str, ServiceError> {
    match caller {
        Caller::Party(id) => Ok(id),
        Caller::Minter(id) | Caller::Operator(id) => Err(ServiceError::PermissionDenied(format!(
            "{id:?} holds a minter or operator credential; send the caller's own identity in x-writ-caller"
        ))),
        Caller::Anonymous => Err(ServiceError::Unauthenticated(format!(
            "x-writ-caller: {needed}"
        ))),
    }
}

/// The wall clock, read in exactly one place.
#[allow(clippy::disallowed_methods)]
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMillis(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl<S: TokenStore> Service<S> {
    /// A service over `store`, signing with `keys`.
    pub fn new(
        store: Arc<S>,
        keys: KeyRing,
        policy: Policy,
        trust_domain: String,
        max_children: u32,
    ) -> Self {
        Service {
            store,
            keys,
            policy,
            trust_domain,
            max_children,
        }
    }

    fn issue(&self, txn: TxnId, now: UnixMillis) -> (TokenSecret, NewToken) {
        let (secret, token) = self.keys.issue(rand::random());
        (secret, NewToken { token, txn, now })
    }

    /// Starts a transaction for a minter.
    pub async fn mint(
        &self,
        caller: &Caller,
        req: MintRequest,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let minter = match caller {
            Caller::Minter(id) => id.clone(),
            Caller::Party(id) | Caller::Operator(id) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "caller {id:?} is not a configured minter"
                )));
            }
            Caller::Anonymous => {
                return Err(ServiceError::Unauthenticated(
                    "authorization: Mint requires a minter credential (`authorization: Bearer <credential>`)".into(),
                ));
            }
        };
        let now = now();
        let (secret, new) = self.issue(TxnId::new(now, rand::random()), now);
        let minter = Party {
            id: minter,
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        let record = narrow::mint(req, minter, &self.trust_domain, &self.policy, new)
            .map_err(ServiceError::MintRefused)?;
        self.store.insert(record.clone()).await?;
        tracing::info!(txn = %record.txn, token_id = %record.token_id, audience = %record.audience.id, "minted");
        Ok((secret, record))
    }

    /// Looks up the record a presented token names. The integrity check runs first, so
    /// a forged or mistyped token never reaches the store.
    async fn lookup(
        &self,
        presented: &str,
    ) -> Result<Result<(TokenRecord, TokenState), Miss>, ServiceError> {
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

    /// Derives a child of `parent_token` for the next hop.
    pub async fn downscope(
        &self,
        caller: &Caller,
        parent_token: &str,
        req: ChildRequest,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let caller_id = party_id(
            caller,
            "Downscope requires the caller's identity (the parent's audience)",
        )?;
        let (parent, state) = match self.lookup(parent_token).await? {
            Ok(found) => found,
            Err(Miss::Malformed) => {
                return Err(ServiceError::ParentToken(ParentProblem::Malformed));
            }
            Err(Miss::Forged | Miss::Unknown) => {
                return Err(ServiceError::ParentToken(ParentProblem::Invalid));
            }
        };
        // Only the holder learns that its token is revoked; anyone else gets the core's
        // holder refusal below.
        if caller_id == parent.audience.id && state.revoked.is_some() {
            return Err(ServiceError::ParentToken(ParentProblem::Revoked));
        }
        let mut req = req;
        if req.max_uses.is_none()
            && let Some(max) = parent.grant.max_uses
        {
            // A child that names no limit gets what the parent has left to pass on.
            req.max_uses = Some(max.saturating_sub(state.uses).max(1));
        }
        let now = now();
        let (secret, new) = self.issue(parent.txn, now);
        let child = narrow::downscope(&parent, caller_id, req, &self.policy, new)?;
        // The store re-checks revocation, fan-out and the use budget under the
        // transaction's lock, so a concurrent Revoke never leaves a usable child.
        self.store
            .insert_child(child.clone(), self.max_children)
            .await
            .map_err(|e| match e {
                StoreError::ParentRevoked => ServiceError::ParentToken(ParentProblem::Revoked),
                StoreError::ParentMissing => ServiceError::ParentToken(ParentProblem::Invalid),
                StoreError::FanOutExceeded { limit } => ServiceError::FanOut(limit),
                StoreError::UsesExhausted => ServiceError::UsesLeft,
                StoreError::TxnFull { limit } => ServiceError::TxnFull(limit),
                other => ServiceError::Store(other),
            })?;
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
        let caller_id = party_id(
            caller,
            "Validate requires the identity of the validating service",
        )?;
        let (record, state) = match self.lookup(token).await? {
            Ok(found) => found,
            Err(Miss::Malformed | Miss::Forged) => {
                return Ok(Validation::Inactive(Inactive::Malformed));
            }
            Err(Miss::Unknown) => return Ok(Validation::Inactive(Inactive::Unknown)),
        };
        if record.audience.id != caller_id {
            return Ok(Validation::Inactive(Inactive::WrongAudience));
        }
        match lifecycle::status(&record, &state, now()) {
            Status::Active => {}
            Status::Revoked => return Ok(Validation::Inactive(Inactive::Revoked)),
            Status::Expired => return Ok(Validation::Inactive(Inactive::Expired)),
            Status::Exhausted => return Ok(Validation::Inactive(Inactive::Exhausted)),
        }
        let decision = action.map(|a| record.grant.authorize(&a.scope, &a.attributes));
        // An allowed action on a limited token spends one use, atomically; losing the
        // race for the last use makes the token exhausted for this caller too.
        if matches!(decision, Some(Ok(()))) && record.grant.max_uses.is_some() {
            match self.store.consume_use(record.token_id).await? {
                UseOutcome::Consumed { .. } => {}
                UseOutcome::Exhausted => return Ok(Validation::Inactive(Inactive::Exhausted)),
                UseOutcome::Revoked => return Ok(Validation::Inactive(Inactive::Revoked)),
                UseOutcome::Unknown => return Ok(Validation::Inactive(Inactive::Unknown)),
            }
        }
        Ok(Validation::Active {
            record: Box::new(record),
            decision,
        })
    }

    /// Revokes a token and its whole subtree, or a whole transaction. By token: whoever
    /// presents it (possession is the authority). By token id or transaction: operators.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: String,
    ) -> Result<Vec<TokenId>, ServiceError> {
        let now = now();
        let (revoked, by) = match target {
            RevokeTarget::Token(token) => {
                let record = match self.lookup(&token).await? {
                    Ok((r, _)) => r,
                    Err(Miss::Malformed) => {
                        return Err(ServiceError::Token(ParentProblem::Malformed));
                    }
                    Err(Miss::Forged | Miss::Unknown) => {
                        return Err(ServiceError::Token(ParentProblem::Invalid));
                    }
                };
                // Only the holder (the token's audience) or an operator; anyone else learns
                // nothing, exactly as for a token that does not exist.
                let by = match caller {
                    Caller::Operator(id) => id.clone(),
                    Caller::Party(id) if *id == record.audience.id => id.clone(),
                    _ => return Err(ServiceError::Token(ParentProblem::Invalid)),
                };
                let ids = self
                    .store
                    .revoke(StoreTarget::Token(record.token_id), by.clone(), reason, now)
                    .await?;
                (ids, by)
            }
            RevokeTarget::TokenId(id) => {
                let by = operator(caller)?;
                let ids = self
                    .store
                    .revoke(StoreTarget::Token(id), by.clone(), reason, now)
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => {
                            ServiceError::NotFound(format!("token_id: no token {id}"))
                        }
                        other => ServiceError::Store(other),
                    })?;
                (ids, by)
            }
            RevokeTarget::Txn(txn) => {
                let by = operator(caller)?;
                let ids = self
                    .store
                    .revoke(StoreTarget::Txn(txn), by.clone(), reason, now)
                    .await?;
                if ids.is_empty() && self.store.txn_tokens(txn).await?.is_empty() {
                    return Err(ServiceError::NotFound(format!("txn: no transaction {txn}")));
                }
                (ids, by)
            }
        };
        tracing::info!(by = %by, revoked = revoked.len(), "revoked");
        Ok(revoked)
    }
}

/// The operator behind a caller, or why it is not one.
fn operator(caller: &Caller) -> Result<String, ServiceError> {
    match caller {
        Caller::Operator(id) => Ok(id.clone()),
        Caller::Anonymous => Err(ServiceError::Unauthenticated(
            "authorization: revoking by token_id or txn requires an operator credential".into(),
        )),
        Caller::Minter(id) | Caller::Party(id) => Err(ServiceError::PermissionDenied(format!(
            "{id:?} is not an operator; only operators revoke by token_id or txn"
        ))),
    }
}
