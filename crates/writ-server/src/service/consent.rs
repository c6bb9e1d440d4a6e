//! Consent step-up in the service: requests, decisions (back-channel, page, operator),
//! redemption, and what Validate says when a high-privilege scope is latent. The rules
//! are `writ_core::consent`'s; the store applies each transition atomically, and every
//! transition's audit event is written with it.
//!
//! A request is dry-run exactly as its redemption will run (the same child request,
//! narrowing rules and admission), so the user is never asked to approve what could not
//! be redeemed. The consent page's link is a capability derived from the server key and
//! the request id ([`KeyRing::links`]): never stored (only its hash), re-derived to
//! answer an identical request again, and checked before any storage read.

use super::{Miss, Service, holder, now, stale};
use crate::audit::Written;
use crate::auth::Caller;
use crate::config::ConsentConfig;
use crate::error::{ParentProblem, ServiceError};
use std::sync::Arc;
use writ_api::FieldError;
use writ_core::consent::{action_key, exercisable};
use writ_core::lifecycle::{self, Status};
use writ_core::narrow::{self, Dimension, NarrowingError};
use writ_core::policy::{Registry, Role};
use writ_core::text::Shown;
use writ_core::token::ct_eq_32;
use writ_core::{
    Actor, ActorKind, AuthMethod, Channel, ClientType, ConsentAction, ConsentId, ConsentRequest,
    ConsentState, Decision, Denial, Event, Party, PartyView, TokenRecord, TokenSecret, UnixMillis,
};
use writ_store::{ConsentInsert, StoreError, TokenStore};

/// The key-derivation context of consent page links.
pub const CONSENT_LINK_CONTEXT: &str = "writ consent page link v1";

/// A user signed in at the consent page's OpenID Provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    /// The ID token's `iss`.
    pub issuer: String,
    /// The ID token's `sub`.
    pub subject: String,
}

/// What [`Service::request_consent`] answers.
#[derive(Clone, Debug)]
pub struct Requested {
    /// The request (new, or the identical open one).
    pub request: ConsentRequest,
    /// The consent page's link secret (the last path segment of the consent URL).
    pub link: String,
    /// An identical open request was answered instead of a new one.
    pub existing: bool,
}

/// The consent settings the service applies (`[consent]`, and the issuer whose HTTP
/// listener serves the page).
#[derive(Clone, Debug)]
pub struct ConsentSettings {
    /// `[consent]`.
    pub config: ConsentConfig,
    /// Writ's issuer identifier (`https://host[:port]`): consent URLs are under it.
    pub issuer: String,
}

impl Default for ConsentSettings {
    fn default() -> Self {
        ConsentSettings {
            config: ConsentConfig::default(),
            issuer: crate::Config::default().issuer(),
        }
    }
}

/// The scopes `record` holds that `registry` marks high-privilege and its consent mark
/// does not cover: held, but not exercisable without the user's consent. In scope order.
pub fn latent_scopes(registry: &Registry, record: &TokenRecord) -> Vec<String> {
    record
        .grant
        .scopes
        .iter()
        .filter(|s| registry.requires_consent(s))
        .filter(|s| record.consent.as_ref().is_none_or(|m| &m.scope != *s))
        .cloned()
        .collect()
}

/// Insert: only a new request wrote its event.
impl Written for ConsentInsert {
    fn written(&self) -> bool {
        matches!(self, ConsentInsert::Inserted)
    }
}

/// Decide, redeem: a success wrote the event.
impl Written for ConsentRequest {
    fn written(&self) -> bool {
        true
    }
}

/// A store refusal of a consent operation as the service reports it.
fn store_error(e: StoreError, id: ConsentId) -> ServiceError {
    match e {
        StoreError::Consent(c) => ServiceError::Consent(c),
        StoreError::NotFound => not_found(id),
        StoreError::TooManyConsents { limit } => ServiceError::TooManyConsents(limit),
        other => ServiceError::Store(other),
    }
}

fn not_found(id: ConsentId) -> ServiceError {
    ServiceError::NotFound(format!("id: no consent request {id}"))
}

/// The link among `links` whose hash is `hash` (compared in constant time).
fn link_matching(mut links: impl Iterator<Item = String>, hash: &[u8; 32]) -> Option<String> {
    links.find(|l| ct_eq_32(blake3::hash(l.as_bytes()).as_bytes(), hash))
}

impl<S: TokenStore> Service<S> {
    /// Applies `settings` (`[consent]` and the issuer).
    pub fn with_consent(mut self, settings: ConsentSettings) -> Self {
        self.consent = settings;
        self
    }

    /// The consent page's URL for `link`.
    pub fn consent_url(&self, link: &str) -> String {
        format!("{}/consent/{link}", self.consent.issuer)
    }

    /// [`latent_scopes`] under the registry in force.
    pub fn latent_scopes(&self, record: &TokenRecord) -> Vec<String> {
        latent_scopes(self.registry.current().registry(), record)
    }

    /// The policy in force, for an answer that shows latent scopes and must know which
    /// policy they were read under (Validate's encoded answers).
    pub fn policy_in_force(&self) -> Arc<crate::policy::Policy> {
        self.registry.current()
    }

    /// Validate's consent rule for an action the grant allowed: `Err` is the
    /// `CONSENT_REQUIRED` denial.
    pub(super) fn exercisable(&self, record: &TokenRecord, scope: &str) -> Result<(), Denial> {
        let high = self.registry.current().registry().requires_consent(scope);
        exercisable(record, scope, high)
    }

    /// The open (pending or approved) request for exactly the action a `CONSENT_REQUIRED`
    /// answer is about: asked by the holder of the token `record` was derived from (or of
    /// `record` itself, at the root), for `record`'s audience. `None` when there is none,
    /// or the action is not one a user can approve (an attribute with several values).
    pub(super) async fn open_consent_for(
        &self,
        record: &TokenRecord,
        scope: &str,
        attributes: &writ_core::Attributes,
    ) -> Result<Option<ConsentId>, ServiceError> {
        let Ok(action) = ConsentAction::from_attributes(scope.to_owned(), attributes.clone())
        else {
            return Ok(None);
        };
        let token = record.parent.unwrap_or(record.token_id);
        let key = action_key(token, &action, &record.audience.id);
        let found = self.store.consent_by_key(key).await?;
        let now = now();
        Ok(found.filter(|r| r.is_open(now)).map(|r| r.id))
    }

    /// The party `id` names as a token audience, as Downscope would take it: the
    /// registry's, or in development mode an asserted name as a confidential workload.
    fn resource_party(&self, registry: &Registry, id: &str) -> Result<Party, NarrowingError> {
        let described = Party {
            id: id.to_owned(),
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        Ok(self.resolve(registry, &described, false)?.party())
    }

    /// A party as the consent page shows it, with the registry's display name.
    fn view(registry: &Registry, p: &Party) -> PartyView {
        PartyView {
            id: p.id.clone(),
            display_name: registry.resolve(&p.id).and_then(|r| r.display_name.clone()),
            kind: p.kind,
            client_type: p.client_type,
        }
    }

    /// The record and state `token` names, as a consent operation reports a miss.
    async fn consent_token(
        &self,
        token: &str,
    ) -> Result<(Arc<TokenRecord>, writ_core::TokenState), ServiceError> {
        match self.lookup(token).await? {
            Ok(found) => Ok(found),
            Err(Miss::Malformed) => Err(ServiceError::Token(ParentProblem::Malformed)),
            Err(Miss::Forged | Miss::Unknown) => Err(ServiceError::Token(ParentProblem::Invalid)),
        }
    }

    /// The redeemed token's lifetime: `asked` (or the configured one), never more than
    /// `consent.redeemed_ttl_seconds`.
    fn redeemed_ttl(&self, asked: Option<u64>) -> u64 {
        let most = self.consent.config.redeemed_ttl_seconds;
        asked.unwrap_or(most).min(most)
    }

    /// Records a request for the user's consent to `action` (a high-privilege scope the
    /// token holds, with one value per attribute) for `resource`, by the token's holder.
    pub async fn request_consent(
        &self,
        caller: &Caller,
        token: &str,
        action: ConsentAction,
        resource: String,
        reason: String,
    ) -> Result<Requested, ServiceError> {
        let actor = holder(
            caller,
            "RequestConsent requires the caller's identity (the token's audience)",
        )?;
        let (record, state) = self.consent_token(token).await?;
        crate::telemetry::record_txn(&record.txn);
        // Holder first, and without naming the holder or saying whether the token lives.
        if actor.id != record.audience.id {
            return Err(ServiceError::Narrowing(NarrowingError {
                dimension: Dimension::Holder,
                detail: format!("caller {} does not hold the token", Shown(&actor.id)),
            }));
        }
        let now = now();
        match lifecycle::status(&record, &state, now) {
            Status::Active => {}
            Status::Revoked => return Err(ServiceError::Token(ParentProblem::Revoked)),
            Status::Expired => {
                return Err(ServiceError::FailedPrecondition(
                    "token: the token has expired".into(),
                ));
            }
            Status::Exhausted => {
                return Err(ServiceError::FailedPrecondition(
                    "token: every use of the token is consumed or passed on".into(),
                ));
            }
        }
        let scope = action.scope.as_str();
        if !record.grant.scopes.contains(scope) {
            return Err(ServiceError::Invalid(FieldError {
                field: "action.scope".into(),
                message: format!("scope {} is not held by the token", Shown(scope)),
            }));
        }
        let policy = self.registry.current();
        let registry = policy.registry();
        if !registry.requires_consent(scope) {
            return Err(ServiceError::FailedPrecondition(format!(
                "action.scope: scope {} needs no consent (it is not high_privilege in the policy); use the token as it is",
                Shown(scope)
            )));
        }
        if let Err(d) = record.grant.authorize(scope, &action.as_attributes()) {
            return Err(ServiceError::PermissionDenied(format!(
                "action: the token does not allow this action (denied by {}: {}); there is nothing to ask the user",
                d.denied_by, d.reason
            )));
        }
        let resource = self.resource_party(registry, &resource).map_err(|mut e| {
            e.detail = format!("resource: {}", e.detail);
            ServiceError::Narrowing(e)
        })?;
        let config = &self.consent.config;
        let id = ConsentId::new(now, rand::random());
        let expires_at = UnixMillis(
            now.0
                .saturating_add(config.request_ttl_seconds.saturating_mul(1000))
                .min(record.grant.expires_at.0),
        );
        let mut chain: Vec<PartyView> = record
            .actors
            .iter()
            .map(|p| Self::view(registry, p))
            .collect();
        chain.push(Self::view(registry, &record.audience));
        let link = self
            .keys
            .links(CONSENT_LINK_CONTEXT, &id.0)
            .next()
            .ok_or_else(|| ServiceError::FailedPrecondition("the server has no key".into()))?;
        let request = ConsentRequest {
            id,
            txn: record.txn,
            token: record.token_id,
            requester: actor.clone(),
            subject: record.subject.clone(),
            key: action_key(record.token_id, &action, &resource.id),
            scope_description: registry.scope_description(scope).to_owned(),
            resource_view: Self::view(registry, &resource),
            resource,
            chain,
            purpose: record.purpose.clone(),
            reason,
            created_at: now,
            expires_at,
            link_hash: *blake3::hash(link.as_bytes()).as_bytes(),
            state: ConsentState::Pending,
            action,
        };
        drop(policy);
        // Exactly what redemption will do, so the user is never asked for what cannot be
        // redeemed: the same child, rules and admission (nothing is stored).
        self.redeemed_child(&record, actor, &request, self.redeemed_ttl(None), now)?;

        let pending = self.audit.issue();
        let event = Event::consent_requested(pending.id(), &request);
        let (r, e) = (request.clone(), event.clone());
        let insert = move |s: Arc<S>| async move { s.insert_consent(r, e).await };
        let (inserted, pending) = self
            .audit
            .commit(Some(pending), Some(event), &self.store, insert)
            .await;
        drop(pending);
        match inserted.map_err(|e| store_error(e, id))? {
            ConsentInsert::Inserted => {
                tracing::info!(
                    txn = %request.txn, consent = %id, requester = %actor.id,
                    scope = %request.action.scope, resource = %request.resource.id,
                    "consent requested"
                );
                Ok(Requested {
                    request,
                    link,
                    existing: false,
                })
            }
            ConsentInsert::Existing(found) => {
                let link = link_matching(
                    self.keys.links(CONSENT_LINK_CONTEXT, &found.id.0),
                    &found.link_hash,
                )
                .ok_or_else(|| {
                    ServiceError::FailedPrecondition(format!(
                        "an identical consent request {} is open, but its link can no longer be shown (the server key that made it was rotated away); wait until it expires",
                        found.id
                    ))
                })?;
                Ok(Requested {
                    request: *found,
                    link,
                    existing: true,
                })
            }
        }
    }

    /// The child `request` is redeemed for, derived from `record` by `actor` at `now`
    /// living `ttl_secs`, carrying the consent mark; refused as Downscope refuses.
    fn redeemed_child(
        &self,
        record: &TokenRecord,
        actor: &Actor,
        request: &ConsentRequest,
        ttl_secs: u64,
        now: UnixMillis,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let (secret, new) = self.issue(None, record.txn, now, actor);
        let mut child = narrow::downscope(
            record,
            &actor.id,
            request.child_request(ttl_secs),
            &self.policy,
            new,
        )
        .and_then(|child| self.admit(&child, Some(&record.audience)).map(|()| child))?;
        child.consent = Some(request.mark());
        Ok((secret, child))
    }

    /// The back-channel (approver role: channel back_channel) or an operator (channel
    /// operator) records the user's decision; counts only for the request's subject.
    pub async fn decide_consent(
        &self,
        caller: &Caller,
        id: ConsentId,
        approve: bool,
        subject: String,
    ) -> Result<ConsentRequest, ServiceError> {
        let identity = caller.require(
            &[Role::Approver, Role::Operator],
            "DecideConsent requires an approver's identity (or an operator's credential)",
        )?;
        let channel = if identity.roles.contains(Role::Approver) {
            Channel::BackChannel
        } else {
            Channel::Operator
        };
        let request = self.store.consent(id).await?.ok_or_else(|| not_found(id))?;
        let decision = Decision {
            approved: approve,
            at: now(),
            by: identity.actor.id.clone(),
            auth: Some(identity.actor.auth),
            channel,
            subject,
        };
        self.record_decision(request, decision, identity.actor.clone())
            .await
    }

    /// Records `decision` on `request`, conveyed by `actor`: checked by the core rule
    /// first (precise errors, nothing written), then applied atomically by the store.
    async fn record_decision(
        &self,
        request: ConsentRequest,
        decision: Decision,
        actor: Actor,
    ) -> Result<ConsentRequest, ServiceError> {
        let id = request.id;
        crate::telemetry::record_txn(&request.txn);
        request.clone().decide(decision.clone())?;
        let (approved, channel) = (decision.approved, decision.channel);
        let pending = self.audit.issue();
        let event =
            Event::consent_decided(pending.id(), &request, &actor, approved, channel.as_str());
        let e = event.clone();
        let write = move |s: Arc<S>| async move { s.decide_consent(id, decision, e).await };
        let (decided, pending) = self
            .audit
            .commit(Some(pending), Some(event), &self.store, write)
            .await;
        drop(pending);
        let decided = decided.map_err(|e| store_error(e, id))?;
        tracing::info!(
            txn = %decided.txn, consent = %id, by = %actor.id, approved,
            channel = channel.as_str(), "consent decided"
        );
        Ok(decided)
    }

    /// The request a consent page link names (the link is checked before any storage
    /// read): `NotFound` for a forged or unknown link. Any status: the page says when it
    /// is decided or expired.
    pub async fn consent_by_link(&self, link: &str) -> Result<ConsentRequest, ServiceError> {
        let unknown = || ServiceError::NotFound("link: no such consent request".into());
        let id = self
            .keys
            .open_link(CONSENT_LINK_CONTEXT, link)
            .ok_or_else(unknown)?;
        let request = self
            .store
            .consent(ConsentId(id))
            .await?
            .ok_or_else(unknown)?;
        if !ct_eq_32(blake3::hash(link.as_bytes()).as_bytes(), &request.link_hash) {
            return Err(unknown());
        }
        Ok(request)
    }

    /// The user's decision on the consent page: by the link's holder (`signed_in: None`,
    /// channel page_link, decided for the request's subject) or by a user signed in at the
    /// OpenID Provider (channel page_signed_in; refused unless the subject is the
    /// request's).
    pub async fn decide_on_page(
        &self,
        link: &str,
        approve: bool,
        signed_in: Option<SignedIn>,
    ) -> Result<ConsentRequest, ServiceError> {
        let request = self.consent_by_link(link).await?;
        let (by, auth, channel) = match signed_in {
            None => (
                request.subject.clone(),
                AuthMethod::ConsentLink,
                Channel::PageLink,
            ),
            Some(s) => (s.subject, AuthMethod::OidcSignIn, Channel::PageSignedIn),
        };
        let decision = Decision {
            approved: approve,
            at: now(),
            by: by.clone(),
            auth: Some(auth),
            channel,
            subject: by.clone(),
        };
        self.record_decision(request, decision, Actor { id: by, auth })
            .await
    }

    /// A MAC under a key derived from the server key for `context` (the page's CSRF
    /// tokens and sign-in state).
    pub fn page_mac(&self, context: &str, input: &[u8]) -> [u8; 32] {
        self.keys.mac(context, input)
    }

    /// Redeems an approved request for its single-use token, by the requester presenting
    /// the token it asked with; `ttl_secs` at most `consent.redeemed_ttl_seconds`.
    pub async fn redeem_consent(
        &self,
        caller: &Caller,
        id: ConsentId,
        token: &str,
        ttl_secs: Option<u64>,
    ) -> Result<(TokenSecret, TokenRecord), ServiceError> {
        let actor = holder(
            caller,
            "RedeemConsent requires the requester's identity (the token's audience)",
        )?;
        let (record, state) = self.consent_token(token).await?;
        crate::telemetry::record_txn(&record.txn);
        let request = self.store.consent(id).await?.ok_or_else(|| not_found(id))?;
        // The rule first, for a precise answer (the store applies it again, atomically).
        request.check_redeem(&actor.id, record.token_id, now())?;
        if state.revoked.is_some() {
            return Err(ServiceError::Token(ParentProblem::Revoked));
        }
        let ttl = self.redeemed_ttl(ttl_secs);
        // From the audience check until the write ends: a party disabled meanwhile is
        // either refused here or revoked with this token.
        let pass = self.disabled.admission().await.map_err(stale)?;
        let (secret, child) = self.redeemed_child(&record, actor, &request, ttl, now())?;
        let pending = self.audit.issue();
        let event = Event::consent_redeemed(pending.id(), &request, &child);
        let (by, c, e, max) = (
            actor.id.clone(),
            child.clone(),
            event.clone(),
            self.max_children,
        );
        let write = move |s: Arc<S>| async move {
            let _pass = pass;
            s.redeem_consent(id, by, c, max, e).await
        };
        let (redeemed, pending) = self
            .audit
            .commit(Some(pending), Some(event), &self.store, write)
            .await;
        drop(pending);
        match redeemed {
            Ok(_) => {}
            Err(StoreError::ParentRevoked) => {
                return Err(ServiceError::Token(ParentProblem::Revoked));
            }
            Err(StoreError::FanOutExceeded { limit }) => return Err(ServiceError::FanOut(limit)),
            Err(StoreError::UsesExhausted) => return Err(ServiceError::UsesLeft),
            Err(StoreError::TxnFull { limit }) => return Err(ServiceError::TxnFull(limit)),
            Err(StoreError::ParentMissing) => {
                return Err(ServiceError::Token(ParentProblem::Invalid));
            }
            Err(e) => return Err(store_error(e, id)),
        }
        self.metrics.downscoped(child.depth);
        tracing::info!(
            txn = %child.txn, token_id = %child.token_id, consent = %id,
            actor = %actor.id, audience = %child.audience.id, "consent redeemed"
        );
        Ok((secret, child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use writ_core::{ConsentMark, Grant, SecretHash, TokenId, TxnId};

    fn record(scopes: &[&str], consent: Option<&str>) -> TokenRecord {
        let party = Party {
            id: "spiffe://writ.local/api/payments".into(),
            kind: ActorKind::Workload,
            client_type: ClientType::Confidential,
        };
        TokenRecord {
            token_id: TokenId([1; 16]),
            secret_hash: SecretHash([0; 32]),
            txn: TxnId([2; 16]),
            parent: None,
            depth: 0,
            subject: "alice".into(),
            trust_domain: "writ.local".into(),
            actors: vec![party.clone()],
            audience: party,
            grant: Grant {
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                claims: Default::default(),
                targets: Default::default(),
                expires_at: UnixMillis(u64::MAX),
                max_uses: None,
                require_action_check: false,
            },
            purpose: String::new(),
            tctx: Default::default(),
            rctx: Default::default(),
            issued_at: UnixMillis(0),
            idempotency: None,
            actor_auth: None,
            consent: consent.map(|s| ConsentMark {
                request: ConsentId([3; 16]),
                scope: s.into(),
            }),
        }
    }

    /// A high-privilege scope is latent unless the token's consent mark names it; other
    /// scopes never are.
    #[test]
    fn latent_scopes_are_the_high_privilege_ones_without_consent() {
        let policy = Policy::parse(
            br#"
trust_domain = "writ.local"
[scopes."read"]
[scopes."charge"]
high_privilege = true
[scopes."refund"]
high_privilege = true
"#,
            std::path::Path::new("policy.toml"),
            Some("writ.local"),
        )
        .unwrap();
        let registry = policy.registry();
        let all = ["read", "charge", "refund"];
        assert_eq!(
            latent_scopes(registry, &record(&all, None)),
            vec!["charge".to_owned(), "refund".to_owned()]
        );
        assert_eq!(
            latent_scopes(registry, &record(&all, Some("charge"))),
            vec!["refund".to_owned()]
        );
        assert!(latent_scopes(registry, &record(&["read"], None)).is_empty());
        // The development policy marks nothing high-privilege.
        let dev = Policy::development("writ.local");
        assert!(latent_scopes(dev.registry(), &record(&all, None)).is_empty());
    }

    #[test]
    fn a_link_is_found_only_by_its_hash() {
        let links = || ["a".to_owned(), "b".to_owned()].into_iter();
        let hash = *blake3::hash(b"b").as_bytes();
        assert_eq!(link_matching(links(), &hash), Some("b".to_owned()));
        assert_eq!(link_matching(links(), &[0; 32]), None);
    }
}
