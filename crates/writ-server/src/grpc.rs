//! The tonic `TokenService`: identify the caller, convert the request (validating it),
//! call the [`Service`], convert the answer. No rules live here.
//!
//! Validate answers through [`writ_api::answer`]'s stub, with the token's `TokenInfo`
//! encoded once ([`Answers`]).

use crate::answers::Answers;
use crate::auth::Authenticator;
use crate::error::ServiceError;
use crate::service::{Inactive, Service, Validation, now, now_secs};
use crate::signing::Signer;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use writ_api::answer::{self, ValidateAnswer, server::token_service_server::TokenService};
use writ_api::convert;
use writ_api::pb;
use writ_store::TokenStore;

/// The gRPC face of a [`Service`].
#[derive(Debug)]
pub struct GrpcService<S> {
    service: Arc<Service<S>>,
    auth: Authenticator,
    /// Signs the Txn-Token JWTs Validate answers on request.
    signer: Arc<Signer>,
    /// Validate's answers, encoded once per token.
    answers: Arc<Answers>,
}

impl<S> GrpcService<S> {
    /// Wraps a service; `signer` signs the Txn-Token JWTs Validate returns; `answers`
    /// keeps Validate's encoded answers.
    pub fn new(
        service: Arc<Service<S>>,
        auth: Authenticator,
        signer: Arc<Signer>,
        answers: Arc<Answers>,
    ) -> Self {
        GrpcService {
            service,
            auth,
            signer,
            answers,
        }
    }
}

impl<S: TokenStore> GrpcService<S> {
    /// A record as every answer shows it, with its latent scopes under the registry in
    /// force.
    fn info(&self, record: &writ_core::TokenRecord) -> pb::TokenInfo {
        convert::token_info(record, self.service.latent_scopes(record))
    }

    /// [`info`](Self::info) encoded, as Validate answers it: kept per token under the
    /// policy it was made under.
    fn encoded_info(&self, record: &writ_core::TokenRecord) -> prost::bytes::Bytes {
        let policy = self.service.policy_in_force();
        self.answers.info(record.token_id, policy.digest(), || {
            let latent = crate::service::consent::latent_scopes(policy.registry(), record);
            answer::encode_info(&convert::token_info(record, latent))
        })
    }
}

fn inactive_pb(i: Inactive) -> pb::InactiveReason {
    match i {
        Inactive::Expired => pb::InactiveReason::Expired,
        Inactive::Revoked => pb::InactiveReason::Revoked,
        Inactive::Unknown => pb::InactiveReason::Unknown,
        Inactive::WrongAudience => pb::InactiveReason::WrongAudience,
        Inactive::Malformed => pb::InactiveReason::Malformed,
        Inactive::Exhausted => pb::InactiveReason::Exhausted,
        Inactive::ActionRequired => pb::InactiveReason::ActionRequired,
    }
}

#[tonic::async_trait]
impl<S: TokenStore> TokenService for GrpcService<S> {
    async fn mint(
        &self,
        request: Request<pb::MintRequest>,
    ) -> Result<Response<pb::MintResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let (req, key) = convert::mint_request(request.into_inner())?;
        let (secret, record) = self.service.mint(&caller, req, key.as_deref()).await?;
        Ok(Response::new(pb::MintResponse {
            token: secret.expose().to_string(),
            info: Some(self.info(&record)),
        }))
    }

    async fn downscope(
        &self,
        request: Request<pb::DownscopeRequest>,
    ) -> Result<Response<pb::DownscopeResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let d = convert::downscope_request(request.into_inner())?;
        let (secret, record) = self
            .service
            .downscope(
                &caller,
                &d.parent_token,
                d.child,
                d.idempotency_key.as_deref(),
            )
            .await?;
        Ok(Response::new(pb::DownscopeResponse {
            token: secret.expose().to_string(),
            info: Some(self.info(&record)),
        }))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<ValidateAnswer>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let req = request.into_inner();
        let action = convert::action(req.action)?;
        // Asked before anything is looked up or spent: a JWT cannot be recalled, so only
        // the parties the policy names receive one. (Nobody at all: Validate refuses.)
        let jwt_for = match (req.txn_token_jwt, caller.id()) {
            (true, Some(id)) if !self.service.may_receive_jwt(id) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "txn_token_jwt: {} may not receive Txn-Token JWTs (the policy's \
                     txn_token_jwt is off for it; agents and public clients never may)",
                    writ_core::text::Shown(id)
                ))
                .into());
            }
            (true, Some(id)) => Some(id.to_owned()),
            _ => None,
        };
        let answer = match self.service.validate(&caller, &req.token, action).await? {
            Validation::Inactive(why) => ValidateAnswer {
                inactive_reason: inactive_pb(why).into(),
                ..Default::default()
            },
            Validation::Active {
                record,
                decision,
                consent,
            } => ValidateAnswer {
                // Only for an active token whose action check (if any) allowed: never for
                // a revoked, expired or exhausted one.
                // Nor for a use-limited or action-check-only token (`jwt_refusal`): the
                // answer stands, without a JWT.
                txn_token_jwt: match (&jwt_for, &decision) {
                    (Some(id), None | Some(Ok(())))
                        if crate::signing::jwt_refusal(&record.grant).is_none() =>
                    {
                        let (jwt, _) = self
                            .signer
                            .txn_token(&record, id, now_secs())
                            .map_err(ServiceError::from)?;
                        jwt
                    }
                    _ => String::new(),
                },
                active: true,
                inactive_reason: pb::InactiveReason::Unspecified.into(),
                info: (!req.decision_only).then(|| self.encoded_info(&record)),
                decision: decision.map(|d| match d {
                    Ok(()) => pb::ActionDecision {
                        allowed: true,
                        ..Default::default()
                    },
                    Err(denial) => pb::ActionDecision {
                        allowed: false,
                        denied_by: denial.denied_by,
                        reason: denial.reason,
                        consent_required: consent.is_some(),
                        consent_request_id: consent
                            .and_then(|c| c.request)
                            .map(|id| id.to_string())
                            .unwrap_or_default(),
                    },
                }),
            },
        };
        Ok(Response::new(answer))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let (target, reason) = convert::revoke_request(request.into_inner())?;
        let ids = self.service.revoke(&caller, target, reason).await?;
        Ok(Response::new(pb::RevokeResponse {
            revoked_token_ids: ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn request_consent(
        &self,
        request: Request<pb::RequestConsentRequest>,
    ) -> Result<Response<pb::RequestConsentResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let ask = convert::request_consent_request(request.into_inner())?;
        let requested = self
            .service
            .request_consent(&caller, &ask.token, ask.action, ask.resource, ask.reason)
            .await?;
        Ok(Response::new(pb::RequestConsentResponse {
            request: Some(convert::consent_info(&requested.request, now())),
            consent_url: self.service.consent_url(&requested.link),
            existing: requested.existing,
        }))
    }

    async fn decide_consent(
        &self,
        request: Request<pb::DecideConsentRequest>,
    ) -> Result<Response<pb::DecideConsentResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let (id, approve, subject) = convert::decide_consent_request(request.into_inner())?;
        let decided = self
            .service
            .decide_consent(&caller, id, approve, subject)
            .await?;
        Ok(Response::new(pb::DecideConsentResponse {
            request: Some(convert::consent_info(&decided, now())),
        }))
    }

    async fn redeem_consent(
        &self,
        request: Request<pb::RedeemConsentRequest>,
    ) -> Result<Response<pb::RedeemConsentResponse>, Status> {
        let caller = self
            .auth
            .identify(&request)
            .await
            .map_err(ServiceError::from)?;
        let (id, token, ttl) = convert::redeem_consent_request(request.into_inner())?;
        let (secret, record) = self
            .service
            .redeem_consent(&caller, id, &token, ttl)
            .await?;
        Ok(Response::new(pb::RedeemConsentResponse {
            token: secret.expose().to_string(),
            info: Some(self.info(&record)),
        }))
    }
}
