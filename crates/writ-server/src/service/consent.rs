//! Consent step-up in the service: requests, decisions (back-channel, page, operator),
//! redemption, and what Validate says when a high-privilege scope is latent. The rules
//! are `writ_core::consent`'s; the store applies each transition atomically.
//!
//! SKELETON: signatures fixed for the HTTP page; bodies land with the service part of
//! issue 12.

use super::Service;
use crate::auth::Caller;
use crate::error::ServiceError;
use writ_core::{ConsentAction, ConsentId, ConsentRequest, TokenRecord, TokenSecret};
use writ_store::TokenStore;

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

impl<S: TokenStore> Service<S> {
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
        let _ = (caller, token, action, resource, reason);
        todo!("issue 12 service part")
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
        let _ = (caller, id, approve, subject);
        todo!("issue 12 service part")
    }

    /// The request a consent page link names (the link is checked before any storage
    /// read): `NotFound` for a forged or unknown link. Any status: the page says when it
    /// is decided or expired.
    pub async fn consent_by_link(&self, link: &str) -> Result<ConsentRequest, ServiceError> {
        let _ = link;
        todo!("issue 12 service part")
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
        let _ = (link, approve, signed_in);
        todo!("issue 12 service part")
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
        let _ = (caller, id, token, ttl_secs);
        todo!("issue 12 service part")
    }
}
