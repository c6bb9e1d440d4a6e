//! The verified transaction a request is handled in: what the inbound layer puts in the
//! request's extensions and in a task-local scope, and what the outbound layer narrows.

use crate::header::TokenSecret;
use crate::proto as pb;
use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CURRENT: TxnContext;
}

/// A token Writ answered active for this service, with what it said about it. `Debug`
/// shows the token's id, never its secret. Cheap to clone.
#[derive(Clone)]
pub struct TxnContext {
    token: TokenSecret,
    info: Arc<pb::TokenInfo>,
    decision: Option<Arc<pb::ActionDecision>>,
}

impl std::fmt::Debug for TxnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnContext")
            .field("token_id", &self.info.token_id)
            .field("txn", &self.info.txn)
            .field("audience", &self.info.audience.as_ref().map(|a| &a.id))
            .field("scopes", &self.info.scopes)
            .finish_non_exhaustive()
    }
}

impl TxnContext {
    /// A context for `token` described by `info` (as Validate or Downscope answered it).
    pub fn new(
        token: TokenSecret,
        info: pb::TokenInfo,
        decision: Option<pb::ActionDecision>,
    ) -> TxnContext {
        TxnContext {
            token,
            info: Arc::new(info),
            decision: decision.map(Arc::new),
        }
    }

    /// The token itself (redacted in `Debug`): to be narrowed, never forwarded.
    pub fn token(&self) -> &TokenSecret {
        &self.token
    }

    /// What the token grants: subject, audience, scopes, claims, actors, expiry.
    pub fn info(&self) -> &pb::TokenInfo {
        &self.info
    }

    /// The verdict on the action the inbound layer checked, if it checked one.
    pub fn decision(&self) -> Option<&pb::ActionDecision> {
        self.decision.as_deref()
    }

    /// The transaction id.
    pub fn txn(&self) -> &str {
        &self.info.txn
    }

    /// The user the transaction is for.
    pub fn subject(&self) -> &str {
        &self.info.subject
    }

    /// The token's scopes.
    pub fn scopes(&self) -> &[String] {
        &self.info.scopes
    }
}

/// The transaction the current task is handling: the one the inbound layer verified for
/// the request being served, or one set with [`scope`]. `None` outside of both (a task
/// spawned by a handler does not inherit it: pass the [`TxnContext`] along and use
/// [`scope`]).
pub fn current() -> Option<TxnContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `f` with `ctx` as the [`current`] transaction.
pub async fn scope<F: Future>(ctx: TxnContext, f: F) -> F::Output {
    CURRENT.scope(ctx, f).await
}
