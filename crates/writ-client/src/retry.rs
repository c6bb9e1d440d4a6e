//! When a call may be sent again. Only calls whose repetition cannot do anything twice are
//! retried: Mint and Downscope (always sent with an idempotency key, reused by every attempt
//! of one call, so the server answers the token it already issued), Validate without an
//! action (an action check on a use-limited token spends a use), Revoke, RequestConsent
//! (an identical open request is answered again) and the operators' read-only queries.
//! DecideConsent, RedeemConsent, the kill switch and key rotation are never retried.
//! Only UNAVAILABLE and DEADLINE_EXCEEDED are retried: every other code is an answer.

use rand::Rng;
use std::time::Duration;
use tonic::Code;

/// How a client retries the calls that are safe to repeat: bounded attempts, exponential
/// backoff with jitter. On by default (3 attempts); [`RetryPolicy::none`] turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry). At most 10 are made.
    pub max_attempts: u32,
    /// The backoff before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

/// The most attempts one call makes, whatever the policy says.
pub const MAX_ATTEMPTS: u32 = 10;

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt per call.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Attempts one call makes, between 1 and [`MAX_ATTEMPTS`].
    pub fn attempts(&self) -> u32 {
        self.max_attempts.clamp(1, MAX_ATTEMPTS)
    }

    /// The wait before retry number `retry` (1 for the first): uniformly drawn between
    /// half and all of `initial_backoff · 2^(retry-1)`, capped at `max_backoff` ("equal
    /// jitter": clients that failed together do not retry together).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(16);
        let full = self
            .initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff);
        let half = full / 2;
        let nanos = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Whether repeating a call is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Safety {
    /// The same request may reach the server twice without doing anything twice.
    Idempotent,
    /// Never sent twice automatically.
    Once,
}

/// Is a call of this safety that failed with `code` worth another attempt?
pub(crate) fn retryable(safety: Safety, code: Code) -> bool {
    safety == Safety::Idempotent && matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// A fresh idempotency key: 128 random bits, 32 lowercase hex digits.
pub fn idempotency_key() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_calls_retry_and_only_on_unavailable_or_deadline() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            assert!(retryable(Safety::Idempotent, code));
            assert!(!retryable(Safety::Once, code));
        }
        for code in [
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::Internal,
            Code::Unknown,
            Code::Aborted,
        ] {
            assert!(!retryable(Safety::Idempotent, code), "{code:?}");
        }
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        for _ in 0..200 {
            let b1 = p.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&b1));
            let b2 = p.backoff(2);
            assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&b2));
            let b9 = p.backoff(40);
            assert!((Duration::from_millis(150)..=Duration::from_millis(300)).contains(&b9));
        }
        let draws: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(2)).collect();
        assert!(draws.len() > 1, "jittered");
        assert_eq!(RetryPolicy::none().attempts(), 1);
        assert_eq!(RetryPolicy::default().attempts(), 3);
        let huge = RetryPolicy {
            max_attempts: 1000,
            ..RetryPolicy::default()
        };
        assert_eq!(huge.attempts(), MAX_ATTEMPTS);
        let zero = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.attempts(), 1);
    }

    #[test]
    fn idempotency_keys_are_128_random_bits_in_hex() {
        let a = idempotency_key();
        let b = idempotency_key();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
