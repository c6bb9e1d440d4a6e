//! The outbound layer: every call to one named downstream carries a child token freshly
//! narrowed (Downscoped) from the current one to what that downstream is declared to need.
//! The parent token is never forwarded: every `txn-token` header already on the request
//! is removed, and without a current token or when Writ refuses the narrowing the call is
//! not sent at all.

use super::context::{self, TxnContext};
use crate::error::BoxError;
use crate::header::{TokenSecret, replace_txn_token_header};
use crate::proto as pb;
use crate::{ClientError, WritClient};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What one downstream is given: the child token's audience and the most it may do. Each
/// field narrows the parent (Writ refuses anything wider: `NARROWING_REFUSED`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Downstream {
    /// The next hop: the child's audience, the only party that can use it.
    pub audience: pb::Party,
    /// The child's scopes (a subset of the parent's).
    pub scopes: Vec<String>,
    /// Claims narrowed or added; the parent's other claims are inherited.
    pub claims: HashMap<String, pb::Constraint>,
    /// Parties the downstream may reach in turn (a subset of the parent's; empty: none).
    pub targets: Vec<String>,
    /// The child's lifetime (`None`: the parent's expiry; never past it).
    pub ttl: Option<Duration>,
    /// Uses reserved from the parent for the child (0: all the parent has left).
    pub max_uses: u32,
    /// Why (empty: the parent's purpose).
    pub purpose: String,
    /// Request-context entries not passed on.
    pub drop_rctx: Vec<String>,
    /// The child answers only action checks.
    pub require_action_check: bool,
}

impl Downstream {
    /// A downstream `audience` that gets no scope until given some.
    pub fn new(audience: pb::Party) -> Downstream {
        Downstream {
            audience,
            ..Downstream::default()
        }
    }

    /// With these scopes.
    pub fn scopes(mut self, scopes: &[&str]) -> Downstream {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With the claim `name` narrowed to `constraint`.
    pub fn claim(mut self, name: &str, constraint: pb::Constraint) -> Downstream {
        self.claims.insert(name.to_owned(), constraint);
        self
    }

    /// May reach these parties in turn.
    pub fn targets(mut self, targets: &[&str]) -> Downstream {
        self.targets = targets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Lives at most `ttl` (whole seconds, rounded up).
    pub fn ttl(mut self, ttl: Duration) -> Downstream {
        self.ttl = Some(ttl);
        self
    }

    /// Carries `n` uses reserved from the parent.
    pub fn max_uses(mut self, n: u32) -> Downstream {
        self.max_uses = n;
        self
    }

    /// For this purpose.
    pub fn purpose(mut self, purpose: &str) -> Downstream {
        self.purpose = purpose.to_owned();
        self
    }

    /// Without these request-context entries.
    pub fn drop_rctx(mut self, keys: &[&str]) -> Downstream {
        self.drop_rctx = keys.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Answering only action checks.
    pub fn require_action_check(mut self) -> Downstream {
        self.require_action_check = true;
        self
    }

    /// The Downscope request deriving this downstream's child from `parent` (without an
    /// idempotency key: the client adds one).
    pub fn request(&self, parent: &TokenSecret) -> pb::DownscopeRequest {
        let ttl_seconds = self.ttl.map_or(0, |t| {
            let whole = t.as_secs() + u64::from(t.subsec_nanos() > 0);
            u32::try_from(whole.max(1)).unwrap_or(u32::MAX)
        });
        pb::DownscopeRequest {
            parent_token: parent.expose().to_owned(),
            audience: Some(self.audience.clone()),
            targets: self.targets.clone(),
            scopes: self.scopes.clone(),
            claims: self.claims.clone(),
            ttl_seconds,
            purpose: self.purpose.clone(),
            max_uses: self.max_uses,
            require_action_check: self.require_action_check,
            drop_rctx: self.drop_rctx.clone(),
            idempotency_key: String::new(),
        }
    }
}

/// Why a call to a downstream was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// No transaction is being handled: neither a [`TxnContext`] in the request's
    /// extensions nor a [`context::current`] one.
    #[error("no current transaction token to narrow for {audience}: the call was not sent")]
    NoCurrentToken {
        /// The downstream's id.
        audience: String,
    },
    /// Writ refused or failed the narrowing; the status (with Writ's reason and
    /// dimension) is the source, and a tonic client reports it as the call's status.
    #[error(
        "narrowing the transaction token for {audience} failed, the call was not sent: {source}"
    )]
    Downscope {
        /// The downstream's id.
        audience: String,
        /// Writ's answer.
        #[source]
        source: ClientError,
    },
}

/// Downscopes `parent` for `to` with `client` (acting as the parent's audience): the
/// child, with what Writ says it grants. For requests built by hand: attach
/// [`TxnContext::token`] as the request's only `Txn-Token` header
/// ([`crate::replace_txn_token_header`], [`crate::attach_txn_token`]).
pub async fn downscope_from(
    client: &WritClient,
    parent: &TxnContext,
    to: &Downstream,
) -> Result<TxnContext, OutboundError> {
    let fail = |source| OutboundError::Downscope {
        audience: to.audience.id.clone(),
        source,
    };
    let answer = client
        .clone()
        .downscope(to.request(parent.token()))
        .await
        .map_err(fail)?;
    let info = answer.info.ok_or_else(|| {
        fail(ClientError::Status(tonic::Status::internal(
            "Writ answered a child without its information",
        )))
    })?;
    Ok(TxnContext::new(TokenSecret::new(answer.token), info, None))
}

/// [`downscope_from`] the [`context::current`] transaction.
pub async fn downscope_for(
    client: &WritClient,
    to: &Downstream,
) -> Result<TxnContext, OutboundError> {
    let parent = context::current().ok_or_else(|| OutboundError::NoCurrentToken {
        audience: to.audience.id.clone(),
    })?;
    downscope_from(client, &parent, to).await
}

/// A tower [`Layer`](tower::Layer) for a client of one downstream (a tonic `Channel`, or
/// any tower HTTP client): each request gets a child token narrowed for that downstream
/// from the current one (a [`TxnContext`] in the request's extensions, else
/// [`context::current`]), in its only `txn-token` header.
///
/// One child per call: a chain that calls a downstream many times per request spends one
/// of the parent's fan-out slots (and, if use-limited, its uses) per call.
#[derive(Clone, Debug)]
pub struct DownscopeLayer {
    client: WritClient,
    downstream: Arc<Downstream>,
}

impl DownscopeLayer {
    /// Narrows for `downstream` with `client`, which acts as this service (the audience of
    /// the tokens it receives).
    pub fn new(client: WritClient, downstream: Downstream) -> DownscopeLayer {
        DownscopeLayer {
            client,
            downstream: Arc::new(downstream),
        }
    }
}

impl<S> tower::Layer<S> for DownscopeLayer {
    type Service = Downscoping<S>;

    fn layer(&self, inner: S) -> Downscoping<S> {
        Downscoping {
            inner,
            client: self.client.clone(),
            downstream: self.downstream.clone(),
        }
    }
}

/// The service [`DownscopeLayer`] wraps around a client. Its errors are boxed: the inner
/// client's own, or an [`OutboundError`] when the call was not sent.
#[derive(Clone, Debug)]
pub struct Downscoping<S> {
    inner: S,
    client: WritClient,
    downstream: Arc<Downstream>,
}

impl<S, B> tower::Service<http::Request<B>> for Downscoping<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        let downstream = self.downstream.clone();
        // Read here, in the caller's task, where the current transaction is set.
        let parent = req
            .extensions_mut()
            .remove::<TxnContext>()
            .or_else(context::current);
        Box::pin(async move {
            let Some(parent) = parent else {
                let e = OutboundError::NoCurrentToken {
                    audience: downstream.audience.id.clone(),
                };
                return Err(BoxError::from(e));
            };
            let child = match downscope_from(&client, &parent, &downstream).await {
                Ok(c) => c,
                Err(e) => return Err(BoxError::from(e)),
            };
            if let Err(e) = replace_txn_token_header(req.headers_mut(), child.token()) {
                return Err(BoxError::from(e));
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::build;

    #[test]
    fn a_declaration_becomes_a_narrowing_request() {
        let d = Downstream::new(build::workload("spiffe://writ.local/workload/payments"))
            .scopes(&["payments:charge"])
            .claim("amount", build::max(100))
            .ttl(Duration::from_millis(1500))
            .max_uses(2)
            .purpose("pay")
            .drop_rctx(&["req_ip"]);
        let r = d.request(&TokenSecret::new("writ_parent"));
        assert_eq!(r.parent_token, "writ_parent");
        assert_eq!(
            r.audience.unwrap().id,
            "spiffe://writ.local/workload/payments"
        );
        assert_eq!(r.scopes, vec!["payments:charge"]);
        assert_eq!(r.claims["amount"], build::max(100));
        assert_eq!(r.ttl_seconds, 2, "rounded up");
        assert_eq!(r.max_uses, 2);
        assert_eq!(r.drop_rctx, vec!["req_ip"]);
        assert!(r.targets.is_empty());
        assert!(r.idempotency_key.is_empty(), "the client adds one per call");
        assert_eq!(
            Downstream::new(build::agent("a"))
                .request(&TokenSecret::new("t"))
                .ttl_seconds,
            0
        );
    }

    #[tokio::test]
    async fn without_a_current_token_the_call_is_not_sent() {
        use tower::{Layer, ServiceExt};
        let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = sent.clone();
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, BoxError>(http::Response::new(())) }
        });
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = WritClient::from_channel(channel).with_retry(crate::RetryPolicy::none());
        let svc = DownscopeLayer::new(client, Downstream::new(build::agent("next"))).layer(inner);
        let e = svc
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
        let e = e.downcast::<OutboundError>().unwrap();
        assert!(matches!(*e, OutboundError::NoCurrentToken { .. }), "{e}");
        // With a parent but Writ unreachable: the narrowing fails, nothing is sent.
        let parent = TxnContext::new(
            TokenSecret::new("writ_parent"),
            pb::TokenInfo::default(),
            None,
        );
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert("txn-token", "writ_parent".parse().unwrap());
        let e = context::scope(parent, svc.oneshot(req)).await.unwrap_err();
        assert!(!e.to_string().contains("writ_parent"), "{e}");
        let e = e.downcast::<OutboundError>().unwrap();
        assert!(matches!(*e, OutboundError::Downscope { .. }), "{e}");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
