//! What is retried: the verdict on one attempt.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use palisade_core::classify::{Classified, Classify, Failure, Outcome};
use palisade_core::error::{is, CircuitOpen, Rejection};

/// What a response says about retrying beyond its classification: a throttling answer, and how long the
/// service asks the caller to wait.
///
/// Implemented for `http::Response<B>`. Implement it (both methods have defaults) for the response type
/// of a service wrapped with [`RetryBuilder::clone_request`](crate::RetryBuilder::clone_request).
pub trait RetryHint {
    /// How long the service asks the caller to wait before retrying, if it says.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Whether this is a throttling answer (HTTP 429) to retry even if the classifier calls it a
    /// success.
    fn is_throttled(&self) -> bool {
        false
    }

    /// Whether the service asks the caller not to retry at all, whatever the classifier says. Checked
    /// only on a failure that would otherwise be retried; such a failure is returned at once, and is
    /// not counted as [gave up](crate::RetryHandle::gave_up).
    fn forbids_retry(&self) -> bool {
        false
    }
}

/// gRPC's retry pushback header (gRPC A6).
const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

impl<B> RetryHint for http::Response<B> {
    /// `Retry-After` as delta-seconds on a 429 or 503 (an HTTP-date is ignored: clocks of caller and
    /// server need not agree, and the backoff applies instead), or gRPC's `grpc-retry-pushback-ms` header.
    fn retry_after(&self) -> Option<Duration> {
        let s = self.status();
        if s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE {
            if let Some(secs) = header_u64(self.headers(), http::header::RETRY_AFTER) {
                return Some(Duration::from_secs(secs));
            }
        }
        header_u64(self.headers(), GRPC_RETRY_PUSHBACK_MS).map(Duration::from_millis)
    }

    fn is_throttled(&self) -> bool {
        self.status() == StatusCode::TOO_MANY_REQUESTS
    }

    /// A `grpc-retry-pushback-ms` header that is not a non-negative decimal integer (negative, empty,
    /// a fraction, garbage): gRPC A6 makes that the server's request not to retry at all.
    fn forbids_retry(&self) -> bool {
        self.headers()
            .get(GRPC_RETRY_PUSHBACK_MS)
            .is_some_and(|_| header_u64(self.headers(), GRPC_RETRY_PUSHBACK_MS).is_none())
    }
}

/// A header holding a non-negative decimal integer (surrounding whitespace allowed).
fn header_u64(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Absurdly long values saturate rather than being rejected: the cap applies anyway.
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

/// Why an attempt is retried (for logs and the audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Failure(Failure),
    Throttled,
    Rejection(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failure(x) => fmt::Display::fmt(x, f),
            Reason::Throttled => f.write_str("HTTP 429"),
            Reason::Rejection(r) => f.write_str(r),
        }
    }
}

/// A retryable outcome: why, and the service's hint.
pub(crate) type Retryable = (Reason, Option<Duration>);

/// Whether a response should be retried. Only the head is looked at: a verdict deferred to the end of
/// the body (gRPC trailers) counts as success here, since the body has not been read. A response that
/// [forbids a retry](RetryHint::forbids_retry) is not retried.
#[inline]
pub(crate) fn judge_response<C, Res>(classify: &C, res: &Res) -> Option<Retryable>
where
    C: Classify<Res>,
    Res: RetryHint,
{
    let reason = match classify.classify_response(res) {
        Classified::Ready(Outcome::Failure(f)) => Reason::Failure(f),
        _ if res.is_throttled() => Reason::Throttled,
        _ => return None,
    };
    if res.forbids_retry() {
        tracing::debug!(reason = %reason, "retry: the service asked not to retry; not retried");
        return None;
    }
    Some((reason, res.retry_after()))
}

/// Whether an error should be retried.
pub(crate) fn judge_error<C, Res>(
    classify: &C,
    err: &(dyn Error + 'static),
    retry_timeouts: bool,
) -> Option<Retryable>
where
    C: Classify<Res>,
{
    // An open breaker anywhere in the chain: retrying would only hammer it.
    if is::<CircuitOpen>(err) {
        return None;
    }
    match Rejection::find(err) {
        Some(Rejection::RateLimited(r)) => {
            Some((Reason::Rejection("rate limited"), Some(r.retry_after)))
        }
        Some(Rejection::Overloaded(r)) => Some((Reason::Rejection("overloaded"), r.retry_after)),
        Some(Rejection::Shed(r)) => Some((Reason::Rejection("shed"), r.retry_after)),
        Some(Rejection::IdempotencyConflict(r)) => {
            Some((Reason::Rejection("idempotency conflict"), r.retry_after))
        }
        Some(Rejection::Elapsed(_)) => {
            retry_timeouts.then_some((Reason::Rejection("timed out"), None))
        }
        // Circuit open, read-only, and the client's own mistakes (bad key, body too large, ...):
        // the same request would fail the same way.
        Some(_) => None,
        None => match classify.classify_error(err) {
            Outcome::Failure(f) => Some((Reason::Failure(f), None)),
            Outcome::Success | Outcome::Ignored => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::classify::{ErrorsOnly, HttpStatus};
    use palisade_core::error::{BoxError, Elapsed, Overloaded, RateLimited, ReadOnly};

    fn res(status: u16, headers: &[(&str, &str)]) -> http::Response<()> {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(
            res(503, &[("retry-after", "7")]).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            res(429, &[("retry-after", " 2 ")]).retry_after(),
            Some(Duration::from_secs(2))
        );
        // HTTP-date, negative, garbage: ignored.
        assert_eq!(
            res(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]).retry_after(),
            None
        );
        assert_eq!(res(503, &[("retry-after", "-1")]).retry_after(), None);
        assert_eq!(res(503, &[("retry-after", "")]).retry_after(), None);
        // Only meaningful on 429 and 503.
        assert_eq!(res(500, &[("retry-after", "7")]).retry_after(), None);
        assert_eq!(
            res(200, &[("grpc-retry-pushback-ms", "250")]).retry_after(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            res(503, &[("retry-after", "99999999999999999999999")]).retry_after(),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn bad_grpc_pushback_forbids_a_retry() {
        for bad in ["-1", "-0", "abc", "", " ", "1.5", "+3", "1e3"] {
            let r = res(503, &[("grpc-retry-pushback-ms", bad)]);
            assert!(r.forbids_retry(), "{bad:?}");
            assert_eq!(r.retry_after(), None);
            assert!(
                judge_response(&HttpStatus::server_errors(), &r).is_none(),
                "{bad:?}"
            );
        }
        for good in ["0", "250", " 7 ", "99999999999999999999999"] {
            assert!(!res(503, &[("grpc-retry-pushback-ms", good)]).forbids_retry());
        }
        assert!(!res(503, &[]).forbids_retry());
        // Not a pushback header: a bad Retry-After is ignored, not a refusal.
        assert!(!res(503, &[("retry-after", "-1")]).forbids_retry());
        // A throttling answer with a bad pushback is not retried either.
        let r = res(429, &[("grpc-retry-pushback-ms", "-5")]);
        assert!(judge_response(&HttpStatus::server_errors(), &r).is_none());
    }

    #[test]
    fn responses() {
        let c = HttpStatus::server_errors();
        assert!(judge_response(&c, &res(200, &[])).is_none());
        assert!(judge_response(&c, &res(404, &[])).is_none());
        assert_eq!(
            judge_response(&c, &res(503, &[("retry-after", "3")])),
            Some((
                Reason::Failure(Failure::Status(StatusCode::SERVICE_UNAVAILABLE)),
                Some(Duration::from_secs(3))
            ))
        );
        // 429 is retried although the classifier does not count it as a failure.
        assert_eq!(
            judge_response(&c, &res(429, &[])),
            Some((Reason::Throttled, None))
        );
    }

    fn judge(err: BoxError, retry_timeouts: bool) -> Option<Retryable> {
        judge_error::<_, http::Response<()>>(&ErrorsOnly, &*err, retry_timeouts)
    }

    #[test]
    fn errors() {
        assert!(judge(CircuitOpen::new(Some(Duration::from_secs(1))).into(), true).is_none());
        assert!(judge(ReadOnly::new().into(), true).is_none());
        assert_eq!(
            judge(RateLimited::new(Duration::from_secs(2)).into(), true)
                .unwrap()
                .1,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            judge(
                Overloaded::new()
                    .with_retry_after(Duration::from_secs(4))
                    .into(),
                true
            )
            .unwrap()
            .1,
            Some(Duration::from_secs(4))
        );
        assert!(judge(Elapsed::new(Duration::from_secs(1)).into(), true).is_some());
        assert!(judge(Elapsed::new(Duration::from_secs(1)).into(), false).is_none());
        assert_eq!(
            judge("boom".into(), true),
            Some((Reason::Failure(Failure::Error), None))
        );
    }

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn circuit_open_deep_in_the_chain_is_never_retried() {
        // Wrapped twice by an error type the classifier would retry.
        let err = Wrapper(Box::new(Wrapper(CircuitOpen::new(None).into())));
        assert!(judge(Box::new(err), true).is_none());
    }
}
