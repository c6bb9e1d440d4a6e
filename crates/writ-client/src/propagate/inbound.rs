//! The inbound layer: a service that receives transaction tokens lets through only
//! requests carrying exactly one token Writ answers active for *this* service (and, if
//! asked, allowing one action). Everything else is answered here, fail closed: the inner
//! service never runs for a missing, repeated, forged, expired, revoked, exhausted or
//! wrong-audience token, nor when Writ cannot be asked.

use super::context::{self, TxnContext};
use crate::header::{TXN_TOKEN_METADATA, TokenSecret, txn_token_header};
use crate::proto as pb;
use crate::{ClientError, WritClient};
use bytes::Bytes;
use http_body_util::{Either, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Code;

type ActionFn = dyn Fn(&http::request::Parts) -> Option<pb::Action> + Send + Sync;

#[derive(Clone)]
enum Check {
    Introspect,
    Scope(Arc<str>),
    Action(Arc<ActionFn>),
}

/// A tower [`Layer`](tower::Layer) for tonic servers (`Server::builder().layer(…)`) and
/// axum routers (`Router::layer(…)`) that verifies the `txn-token` of every request with
/// Writ as this service (the identity of the [`WritClient`] it holds).
///
/// An accepted request reaches the inner service with a [`TxnContext`] in its extensions
/// and as [`context::current`] while it is handled, and without its `txn-token` header (the
/// context is the way to the token, so nothing forwards the header by accident). A refused
/// one is answered here: a gRPC request (`content-type: application/grpc…`) with a
/// trailers-only status (`UNAUTHENTICATED` for a missing or inactive token,
/// `PERMISSION_DENIED` for a denied action, `UNAVAILABLE` when Writ cannot answer), an
/// HTTP request with 401, 403 or 503 and a JSON body
/// `{"error": "invalid_token" | "insufficient_scope" | "temporarily_unavailable",
/// "error_description": …}`. Neither ever contains the token.
#[derive(Clone)]
pub struct TxnTokenLayer {
    client: WritClient,
    check: Check,
}

impl std::fmt::Debug for TxnTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let check = match &self.check {
            Check::Introspect => "introspect".to_owned(),
            Check::Scope(s) => format!("scope {s}"),
            Check::Action(_) => "action from the request".to_owned(),
        };
        f.debug_struct("TxnTokenLayer")
            .field("client", &self.client)
            .field("check", &check)
            .finish()
    }
}

impl TxnTokenLayer {
    /// Verifies tokens with `client`, which acts as this service: a token meant for
    /// anyone else answers inactive (`WRONG_AUDIENCE`). Plain introspection: no action
    /// is checked, no use is spent.
    pub fn new(client: WritClient) -> TxnTokenLayer {
        TxnTokenLayer {
            client,
            check: Check::Introspect,
        }
    }

    /// Also requires the token to allow an action of `scope` (no attributes): denied →
    /// `PERMISSION_DENIED` / 403. An action check spends a use of a use-limited token.
    pub fn require_scope(mut self, scope: impl Into<String>) -> TxnTokenLayer {
        self.check = Check::Scope(scope.into().into());
        self
    }

    /// Checks the action `action` computes from the request's head (method, path,
    /// headers), or plainly introspects when it answers `None`.
    pub fn action<F>(mut self, action: F) -> TxnTokenLayer
    where
        F: Fn(&http::request::Parts) -> Option<pb::Action> + Send + Sync + 'static,
    {
        self.check = Check::Action(Arc::new(action));
        self
    }
}

impl<S> tower::Layer<S> for TxnTokenLayer {
    type Service = RequireTxnToken<S>;

    fn layer(&self, inner: S) -> RequireTxnToken<S> {
        RequireTxnToken {
            inner,
            client: self.client.clone(),
            check: self.check.clone(),
        }
    }
}

/// The service [`TxnTokenLayer`] wraps around another.
#[derive(Clone)]
pub struct RequireTxnToken<S> {
    inner: S,
    client: WritClient,
    check: Check,
}

impl<S> std::fmt::Debug for RequireTxnToken<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireTxnToken")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The body of a response: the inner service's, or a refusal's.
pub type InboundBody<B> = Either<B, Full<Bytes>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for RequireTxnToken<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<InboundBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        let check = self.check.clone();
        Box::pin(async move {
            let grpc = is_grpc(req.headers());
            let (mut parts, body) = req.into_parts();
            match verify(client, check, &parts).await {
                Ok(ctx) => {
                    parts.headers.remove(TXN_TOKEN_METADATA);
                    parts.extensions.insert(ctx.clone());
                    let req = http::Request::from_parts(parts, body);
                    // Inside the scope from the start: the inner service's `call` sees the
                    // current transaction too, not only its future.
                    let answer = context::scope(ctx, async move { inner.call(req).await }).await?;
                    Ok(answer.map(Either::Left))
                }
                Err(refusal) => {
                    tracing::debug!(
                        path = parts.uri.path(),
                        refusal = %refusal.description,
                        "refused a request before its handler"
                    );
                    Ok(refusal.into_response(grpc).map(Either::Right))
                }
            }
        })
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Why a request does not reach its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: RefusalKind,
    pub(crate) description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// Missing, malformed or inactive: 401, `UNAUTHENTICATED`.
    InvalidToken,
    /// Active, but the action is denied: 403, `PERMISSION_DENIED`.
    Denied,
    /// Writ could not be asked or did not answer: 503, `UNAVAILABLE`.
    Unavailable,
}

impl Refusal {
    fn new(kind: RefusalKind, description: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            description: description.into(),
        }
    }

    pub(crate) fn into_response(self, grpc: bool) -> http::Response<Full<Bytes>> {
        let (code, status, error) = match self.kind {
            RefusalKind::InvalidToken => (
                Code::Unauthenticated,
                http::StatusCode::UNAUTHORIZED,
                "invalid_token",
            ),
            RefusalKind::Denied => (
                Code::PermissionDenied,
                http::StatusCode::FORBIDDEN,
                "insufficient_scope",
            ),
            RefusalKind::Unavailable => (
                Code::Unavailable,
                http::StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
            ),
        };
        if grpc {
            return tonic::Status::new(code, self.description).into_http();
        }
        let body = serde_json::json!({ "error": error, "error_description": self.description });
        let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

/// Asks Writ about the request's one `txn-token`.
async fn verify(
    mut client: WritClient,
    check: Check,
    parts: &http::request::Parts,
) -> Result<TxnContext, Refusal> {
    use RefusalKind::*;
    let token = match txn_token_header(&parts.headers) {
        Ok(Some(t)) => t.to_owned(),
        Ok(None) => {
            return Err(Refusal::new(
                InvalidToken,
                "txn-token: missing (this service requires a transaction token)",
            ));
        }
        Err(ClientError::TxnTokenRepeated) => {
            return Err(Refusal::new(
                InvalidToken,
                "txn-token: sent more than once (a request carries exactly one)",
            ));
        }
        Err(_) => {
            return Err(Refusal::new(
                InvalidToken,
                "txn-token: malformed (not visible ASCII)",
            ));
        }
    };
    let action = match &check {
        Check::Introspect => None,
        Check::Scope(scope) => Some(pb::Action {
            scope: scope.to_string(),
            attributes: Default::default(),
        }),
        Check::Action(f) => f(parts),
    };
    let scope = action.as_ref().map(|a| a.scope.clone());
    let answer = client
        .validate(pb::ValidateRequest {
            token: token.clone(),
            action,
            decision_only: false,
            txn_token_jwt: false,
        })
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) if e.code() == Some(Code::InvalidArgument) => {
            return Err(Refusal::new(InvalidToken, "txn-token: malformed"));
        }
        Err(e) => {
            // Writ's own words stay in this service's log; the caller learns only that
            // its token could not be verified.
            tracing::warn!(error = %e, "Writ could not verify a transaction token");
            return Err(Refusal::new(
                Unavailable,
                "txn-token: could not be verified now (Writ is unavailable)",
            ));
        }
    };
    if !answer.active {
        return Err(Refusal::new(
            InvalidToken,
            format!(
                "txn-token: inactive ({})",
                inactive_reason(answer.inactive_reason())
            ),
        ));
    }
    let Some(info) = answer.info else {
        return Err(Refusal::new(
            Unavailable,
            "txn-token: Writ answered without the token's information",
        ));
    };
    judge_action(scope.as_deref(), answer.decision.as_ref())?;
    Ok(TxnContext::new(
        TokenSecret::new(token),
        info,
        answer.decision,
    ))
}

/// The verdict on an action check: when an action was asked (`scope`), only a decision
/// that allows it lets the request through; no decision at all fails closed, whatever
/// answered.
fn judge_action(scope: Option<&str>, decision: Option<&pb::ActionDecision>) -> Result<(), Refusal> {
    let Some(scope) = scope else {
        return Ok(());
    };
    match decision {
        Some(d) if d.allowed => Ok(()),
        Some(d) => {
            let mut why = format!(
                "txn-token: action {scope} denied by {}: {}",
                d.denied_by, d.reason
            );
            if d.consent_required && !d.consent_request_id.is_empty() {
                why.push_str(&format!(" (consent request {})", d.consent_request_id));
            }
            Err(Refusal::new(RefusalKind::Denied, why))
        }
        None => Err(Refusal::new(
            RefusalKind::Unavailable,
            "txn-token: Writ answered the action check without a decision",
        )),
    }
}

/// `expired`, `revoked`, `wrong_audience`, …
fn inactive_reason(r: pb::InactiveReason) -> String {
    r.as_str_name()
        .trim_start_matches("INACTIVE_REASON_")
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: http::Response<Full<Bytes>>) -> (http::response::Parts, String) {
        let (parts, b) = r.into_parts();
        let b = b.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8(b.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn refusals_answer_grpc_trailers_only_and_http_json() {
        let r = Refusal::new(RefusalKind::InvalidToken, "txn-token: inactive (expired)");
        let (parts, b) = body(r.clone().into_response(true)).await;
        assert_eq!(parts.status, http::StatusCode::OK);
        assert_eq!(parts.headers["grpc-status"], "16");
        assert!(
            parts.headers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("txn-token")
        );
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert!(b.is_empty());

        let (parts, b) = body(r.into_response(false)).await;
        assert_eq!(parts.status, http::StatusCode::UNAUTHORIZED);
        assert_eq!(parts.headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(json["error"], "invalid_token");
        assert_eq!(json["error_description"], "txn-token: inactive (expired)");

        let (parts, _) = body(Refusal::new(RefusalKind::Denied, "d").into_response(true)).await;
        assert_eq!(parts.headers["grpc-status"], "7");
        let (parts, b) =
            body(Refusal::new(RefusalKind::Unavailable, "u").into_response(false)).await;
        assert_eq!(parts.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("temporarily_unavailable"));
    }

    /// An action check lets a request through only on a decision that allows it; an
    /// answer without one (a tampered or older peer) fails closed.
    #[test]
    fn an_action_check_passes_only_on_an_allowing_decision() {
        let allowed = pb::ActionDecision {
            allowed: true,
            ..Default::default()
        };
        let denied = pb::ActionDecision {
            allowed: false,
            denied_by: "consent".into(),
            reason: "CONSENT_REQUIRED".into(),
            consent_required: true,
            consent_request_id: "cns_1".into(),
        };
        assert!(judge_action(None, None).is_ok());
        assert!(judge_action(Some("pay"), Some(&allowed)).is_ok());
        let r = judge_action(Some("pay"), Some(&denied)).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Denied);
        assert!(r.description.contains("cns_1"), "{}", r.description);
        let r = judge_action(Some("pay"), None).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Unavailable);
    }

    #[test]
    fn grpc_requests_are_told_apart_by_content_type() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(!is_grpc(&h));
        assert_eq!(
            inactive_reason(pb::InactiveReason::WrongAudience),
            "wrong_audience"
        );
    }

    /// A client of no server: Writ cannot be asked.
    fn unreachable_client() -> WritClient {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        WritClient::from_channel(channel).with_retry(crate::RetryPolicy::none())
    }

    #[tokio::test]
    async fn missing_repeated_and_malformed_headers_never_reach_writ_or_the_handler() {
        let parts = |headers: &[(&str, &[u8])]| {
            let mut b = http::Request::builder().uri("/x");
            for (k, v) in headers {
                b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
            }
            b.body(()).unwrap().into_parts().0
        };
        let c = unreachable_client();
        for (headers, needle) in [
            (vec![], "missing"),
            (
                vec![("txn-token", &b"writ_a"[..]), ("Txn-Token", &b"writ_b"[..])],
                "more than once",
            ),
            (vec![("txn-token", &b"\xffwrit"[..])], "malformed"),
            // A token in Authorization is not a transaction token.
            (vec![("authorization", &b"Bearer writ_a"[..])], "missing"),
        ] {
            let r = verify(c.clone(), Check::Introspect, &parts(&headers))
                .await
                .unwrap_err();
            assert_eq!(r.kind, RefusalKind::InvalidToken, "{headers:?}");
            assert!(r.description.contains(needle), "{r:?}");
        }
        // Writ unreachable: unavailable, never let through.
        let r = verify(c, Check::Introspect, &parts(&[("txn-token", b"writ_a")]))
            .await
            .unwrap_err();
        assert_eq!(r.kind, RefusalKind::Unavailable, "{r:?}");
        assert!(!r.description.contains("writ_a"));
    }
}
