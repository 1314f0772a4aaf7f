//! Rejection markers: the errors palisade layers return inside the stack.
//!
//! A layer that refuses a request returns one of these small types, boxed as a [`BoxError`]. Nothing
//! else in the stack needs to know every layer's error type: errors stay `BoxError` all the way up, and
//! the one outermost rescue layer (in the `palisade` crate) finds the marker with [`Rejection::find`] and
//! turns it into an HTTP response or a gRPC status. Layers that wrap others' errors (retry, fallback)
//! keep the original as their `source()`, so the marker is found anywhere in the chain.
//!
//! | marker | HTTP | gRPC | `Retry-After` |
//! |---|---|---|---|
//! | [`RateLimited`] | 429 | `RESOURCE_EXHAUSTED` | yes |
//! | [`CircuitOpen`] | 503 | `UNAVAILABLE` | when known |
//! | [`Overloaded`] | 503 | `UNAVAILABLE` | when known |
//! | [`Shed`] | 503 | `UNAVAILABLE` | when known |
//! | [`ReadOnly`] | 503 | `UNAVAILABLE` | when known |
//! | [`Elapsed`] | 504 | `DEADLINE_EXCEEDED` | no |
//! | [`KeyError`] | 400 | `INVALID_ARGUMENT` | no |
//! | [`MissingIdempotencyKey`], [`InvalidIdempotencyKey`] | 400 | `INVALID_ARGUMENT` | no |
//! | [`IdempotencyConflict`] | 409 | `ABORTED` | when known |
//! | [`IdempotencyMismatch`] | 422 | `FAILED_PRECONDITION` | no |
//! | [`PayloadTooLarge`] | 413 | `RESOURCE_EXHAUSTED` | no |
//!
//! ```
//! use palisade_core::error::{BoxError, RateLimited, Rejection};
//! use std::time::Duration;
//!
//! let err: BoxError = RateLimited::new(Duration::from_millis(1500)).into();
//! let rejection = Rejection::find(&*err).expect("a palisade rejection");
//! assert_eq!(rejection.http_status(), 429);
//! assert_eq!(rejection.retry_after(), Some(Duration::from_millis(1500)));
//! assert_eq!(rejection.grpc_code().name(), "RESOURCE_EXHAUSTED");
//! ```

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::grpc::GrpcCode;
pub use crate::key::KeyError;

/// The error type inside a palisade stack: any error, boxed, thread-safe.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Finds the first error of type `T` in `err`'s source chain, starting with `err` itself.
///
/// ```
/// use palisade_core::error::{find, BoxError, Overloaded};
///
/// let err: BoxError = Overloaded::new().into();
/// assert!(find::<Overloaded>(&*err).is_some());
/// ```
pub fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// Whether an error of type `T` is anywhere in `err`'s source chain.
pub fn is<T: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    find::<T>(err).is_some()
}

/// `err` followed by its sources, outermost first. Bounded, so a cyclic `source()` cannot hang a caller.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    const MAX_DEPTH: usize = 32;
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| (*e).source()).take(MAX_DEPTH)
}

/// Writes ` (retry after 2s)` or ` (retry after 976ms)` when a delay is known: rounded *up* (waiting the
/// printed time is always enough), to whole milliseconds below a second and whole seconds from there.
fn fmt_retry(f: &mut fmt::Formatter<'_>, retry_after: Option<Duration>) -> fmt::Result {
    const NANOS_PER_MS: u128 = 1_000_000;
    const NANOS_PER_S: u128 = 1_000_000_000;
    let Some(d) = retry_after else {
        return Ok(());
    };
    let nanos = d.as_nanos();
    let millis = nanos.div_ceil(NANOS_PER_MS);
    if millis < 1000 {
        write!(f, " (retry after {millis}ms)")
    } else {
        write!(f, " (retry after {}s)", nanos.div_ceil(NANOS_PER_S))
    }
}

macro_rules! impl_error {
    ($($t:ty),* $(,)?) => {
        $(
            impl Error for $t {}
        )*
    };
}

/// A rate limit refused the request: the tenant (or the service as a whole) is over its quota.
///
/// `retry_after` is when the request would be admitted. The quota fields feed the IETF `RateLimit-Policy`
/// and `RateLimit` headers set by the rescue layer; they are `None` when the limiter does not report them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimited {
    /// How long until the request would be admitted.
    pub retry_after: Duration,
    /// The quota that refused the request, if the limiter reports it.
    pub quota: Option<Quota>,
}

/// A rate-limit quota and where the caller stands in it, for the IETF `RateLimit` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quota {
    /// The policy name (e.g. the tenant's tier), written as the `RateLimit` item key. Defaults to `"default"`.
    pub policy: Arc<str>,
    /// Requests allowed per `window` (the `q` parameter).
    pub limit: u64,
    /// The quota window (the `w` parameter, whole seconds on the wire).
    pub window: Duration,
    /// Requests left in the current window (the `r` parameter).
    pub remaining: u64,
    /// Time until the quota is fully available again (the `t` parameter).
    pub reset: Duration,
}

impl Quota {
    /// A quota named `"default"`.
    pub fn new(limit: u64, window: Duration, remaining: u64, reset: Duration) -> Self {
        Quota {
            policy: Arc::from("default"),
            limit,
            window,
            remaining,
            reset,
        }
    }

    /// Names the policy (a tier or tenant class); names are shared, so this does not allocate per request.
    pub fn with_policy(mut self, policy: Arc<str>) -> Self {
        self.policy = policy;
        self
    }
}

impl RateLimited {
    /// A rate-limit rejection admitting the request again after `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        RateLimited {
            retry_after,
            quota: None,
        }
    }

    /// Attaches the quota that refused the request.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit exceeded")?;
        fmt_retry(f, Some(self.retry_after))
    }
}

/// A circuit breaker is open (or forced open) and refused the request without calling the service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CircuitOpen {
    /// Time until the breaker admits its next probe; `None` when forced open.
    pub retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// An open-circuit rejection; `retry_after` is the time until the next probe, if known.
    pub fn new(retry_after: Option<Duration>) -> Self {
        CircuitOpen { retry_after }
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")?;
        fmt_retry(f, self.retry_after)
    }
}

/// A concurrency limit (bulkhead) is full, or a queued request waited longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Overloaded {
    /// A hint for when capacity may be free again.
    pub retry_after: Option<Duration>,
}

impl Overloaded {
    /// An overload rejection without a retry hint.
    pub fn new() -> Self {
        Overloaded { retry_after: None }
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service overloaded")?;
        fmt_retry(f, self.retry_after)
    }
}

/// The request's deadline passed before the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Elapsed {
    /// The deadline that was exceeded.
    pub after: Duration,
}

impl Elapsed {
    /// A timeout after `after`.
    pub fn new(after: Duration) -> Self {
        Elapsed { after }
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?}", self.after)
    }
}

/// A degradation gate shed the request: its priority class is below what the current level admits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shed {
    /// The degradation level that shed the request (e.g. `"critical"`).
    pub level: Cow<'static, str>,
    /// A hint for when the level may drop.
    pub retry_after: Option<Duration>,
}

impl Shed {
    /// A shed rejection at `level`.
    pub fn new(level: impl Into<Cow<'static, str>>) -> Self {
        Shed {
            level: level.into(),
            retry_after: None,
        }
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request shed at degradation level {}", self.level)?;
        fmt_retry(f, self.retry_after)
    }
}

/// The service is in read-only mode and refused a state-changing (unsafe) method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReadOnly {
    /// A hint for when writes may be accepted again.
    pub retry_after: Option<Duration>,
}

impl ReadOnly {
    /// A read-only rejection without a retry hint.
    pub fn new() -> Self {
        ReadOnly { retry_after: None }
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service is read-only")?;
        fmt_retry(f, self.retry_after)
    }
}

/// A route that requires an `Idempotency-Key` got a request without one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MissingIdempotencyKey;

impl MissingIdempotencyKey {
    /// The rejection.
    pub fn new() -> Self {
        MissingIdempotencyKey
    }
}

impl fmt::Display for MissingIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this endpoint requires an Idempotency-Key header")
    }
}

/// The `Idempotency-Key` header is malformed; `reason` names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidIdempotencyKey {
    /// The rule the key broke, e.g. `"must be 1 to 255 visible ASCII characters"`.
    pub reason: Cow<'static, str>,
}

impl InvalidIdempotencyKey {
    /// The rejection, naming the broken rule.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        InvalidIdempotencyKey {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Idempotency-Key: {}", self.reason)
    }
}

/// The first request with this `Idempotency-Key` is still being processed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IdempotencyConflict {
    /// A hint for when the first request may have finished.
    pub retry_after: Option<Duration>,
}

impl IdempotencyConflict {
    /// The rejection, with an optional retry hint.
    pub fn new(retry_after: Option<Duration>) -> Self {
        IdempotencyConflict { retry_after }
    }
}

impl fmt::Display for IdempotencyConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request with this Idempotency-Key is still in progress")?;
        fmt_retry(f, self.retry_after)
    }
}

/// The `Idempotency-Key` was used before for a different request (its fingerprint differs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IdempotencyMismatch;

impl IdempotencyMismatch {
    /// The rejection.
    pub fn new() -> Self {
        IdempotencyMismatch
    }
}

impl fmt::Display for IdempotencyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this Idempotency-Key was already used with a different request")
    }
}

/// The request body is larger than a layer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PayloadTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

impl PayloadTooLarge {
    /// The rejection for a body over `limit` bytes.
    pub fn new(limit: u64) -> Self {
        PayloadTooLarge { limit }
    }
}

impl fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl_error!(
    RateLimited,
    CircuitOpen,
    Overloaded,
    Elapsed,
    Shed,
    ReadOnly,
    MissingIdempotencyKey,
    InvalidIdempotencyKey,
    IdempotencyConflict,
    IdempotencyMismatch,
    PayloadTooLarge,
);

/// A palisade rejection found in an error chain, with its mapping to HTTP and gRPC.
///
/// This is the one place that decides what each marker means on the wire; the rescue layer and any
/// user code that builds its own responses read it from here.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// See [`RateLimited`].
    RateLimited(&'a RateLimited),
    /// See [`CircuitOpen`].
    CircuitOpen(&'a CircuitOpen),
    /// See [`Overloaded`].
    Overloaded(&'a Overloaded),
    /// See [`Elapsed`].
    Elapsed(&'a Elapsed),
    /// See [`Shed`].
    Shed(&'a Shed),
    /// See [`ReadOnly`].
    ReadOnly(&'a ReadOnly),
    /// A key extractor refused the request (missing or malformed tenant key). See [`KeyError`].
    InvalidKey(&'a KeyError),
    /// See [`MissingIdempotencyKey`].
    MissingIdempotencyKey(&'a MissingIdempotencyKey),
    /// See [`InvalidIdempotencyKey`].
    InvalidIdempotencyKey(&'a InvalidIdempotencyKey),
    /// See [`IdempotencyConflict`].
    IdempotencyConflict(&'a IdempotencyConflict),
    /// See [`IdempotencyMismatch`].
    IdempotencyMismatch(&'a IdempotencyMismatch),
    /// See [`PayloadTooLarge`].
    PayloadTooLarge(&'a PayloadTooLarge),
}

impl<'a> Rejection<'a> {
    /// Finds the outermost palisade rejection in `err`'s source chain (starting with `err` itself).
    pub fn find(err: &'a (dyn Error + 'static)) -> Option<Rejection<'a>> {
        chain(err).find_map(Self::of)
    }

    /// `err` itself as a rejection, without looking at its sources.
    fn of(e: &'a (dyn Error + 'static)) -> Option<Rejection<'a>> {
        macro_rules! try_as {
            ($($variant:ident),*) => {
                $(if let Some(r) = e.downcast_ref::<$variant>() {
                    return Some(Rejection::$variant(r));
                })*
            };
        }
        try_as!(
            RateLimited,
            CircuitOpen,
            Overloaded,
            Elapsed,
            Shed,
            ReadOnly,
            MissingIdempotencyKey,
            InvalidIdempotencyKey,
            IdempotencyConflict,
            IdempotencyMismatch,
            PayloadTooLarge
        );
        e.downcast_ref::<KeyError>().map(Rejection::InvalidKey)
    }

    /// The HTTP status this rejection maps to.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Rejection::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::CircuitOpen(_)
            | Rejection::Overloaded(_)
            | Rejection::Shed(_)
            | Rejection::ReadOnly(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Elapsed(_) => StatusCode::GATEWAY_TIMEOUT,
            Rejection::InvalidKey(_)
            | Rejection::MissingIdempotencyKey(_)
            | Rejection::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            Rejection::IdempotencyConflict(_) => StatusCode::CONFLICT,
            Rejection::IdempotencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The gRPC status code this rejection maps to.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            Rejection::RateLimited(_) | Rejection::PayloadTooLarge(_) => {
                GrpcCode::ResourceExhausted
            }
            Rejection::CircuitOpen(_)
            | Rejection::Overloaded(_)
            | Rejection::Shed(_)
            | Rejection::ReadOnly(_) => GrpcCode::Unavailable,
            Rejection::Elapsed(_) => GrpcCode::DeadlineExceeded,
            Rejection::InvalidKey(_)
            | Rejection::MissingIdempotencyKey(_)
            | Rejection::InvalidIdempotencyKey(_) => GrpcCode::InvalidArgument,
            Rejection::IdempotencyConflict(_) => GrpcCode::Aborted,
            Rejection::IdempotencyMismatch(_) => GrpcCode::FailedPrecondition,
        }
    }

    /// When the client may retry, if the rejecting layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::RateLimited(r) => Some(r.retry_after),
            Rejection::CircuitOpen(r) => r.retry_after,
            Rejection::Overloaded(r) => r.retry_after,
            Rejection::Shed(r) => r.retry_after,
            Rejection::ReadOnly(r) => r.retry_after,
            Rejection::IdempotencyConflict(r) => r.retry_after,
            Rejection::Elapsed(_)
            | Rejection::InvalidKey(_)
            | Rejection::MissingIdempotencyKey(_)
            | Rejection::InvalidIdempotencyKey(_)
            | Rejection::IdempotencyMismatch(_)
            | Rejection::PayloadTooLarge(_) => None,
        }
    }

    /// A stable, machine-readable name, e.g. `"rate-limited"`; used in the problem `type` URI and metrics.
    pub fn slug(&self) -> &'static str {
        match self {
            Rejection::RateLimited(_) => "rate-limited",
            Rejection::CircuitOpen(_) => "circuit-open",
            Rejection::Overloaded(_) => "overloaded",
            Rejection::Elapsed(_) => "timeout",
            Rejection::Shed(_) => "shed",
            Rejection::ReadOnly(_) => "read-only",
            Rejection::InvalidKey(_) => "invalid-key",
            Rejection::MissingIdempotencyKey(_) => "idempotency-key-missing",
            Rejection::InvalidIdempotencyKey(_) => "idempotency-key-invalid",
            Rejection::IdempotencyConflict(_) => "idempotency-conflict",
            Rejection::IdempotencyMismatch(_) => "idempotency-mismatch",
            Rejection::PayloadTooLarge(_) => "payload-too-large",
        }
    }

    /// A short, human-readable summary that does not change between occurrences (the problem `title`).
    pub fn title(&self) -> &'static str {
        match self {
            Rejection::RateLimited(_) => "Too many requests",
            Rejection::CircuitOpen(_) => "Dependency unavailable",
            Rejection::Overloaded(_) => "Service overloaded",
            Rejection::Elapsed(_) => "Request timed out",
            Rejection::Shed(_) => "Request shed under load",
            Rejection::ReadOnly(_) => "Service is read-only",
            Rejection::InvalidKey(_) => "Invalid request key",
            Rejection::MissingIdempotencyKey(_) => "Idempotency-Key required",
            Rejection::InvalidIdempotencyKey(_) => "Invalid Idempotency-Key",
            Rejection::IdempotencyConflict(_) => "Request in progress",
            Rejection::IdempotencyMismatch(_) => "Idempotency-Key reused",
            Rejection::PayloadTooLarge(_) => "Payload too large",
        }
    }

    /// The marker as an error, for its `Display` (the problem `detail`).
    pub fn as_error(&self) -> &'a (dyn Error + 'static) {
        match *self {
            Rejection::RateLimited(r) => r,
            Rejection::CircuitOpen(r) => r,
            Rejection::Overloaded(r) => r,
            Rejection::Elapsed(r) => r,
            Rejection::Shed(r) => r,
            Rejection::ReadOnly(r) => r,
            Rejection::InvalidKey(r) => r,
            Rejection::MissingIdempotencyKey(r) => r,
            Rejection::InvalidIdempotencyKey(r) => r,
            Rejection::IdempotencyConflict(r) => r,
            Rejection::IdempotencyMismatch(r) => r,
            Rejection::PayloadTooLarge(r) => r,
        }
    }
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_error(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as retry or fallback do.
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
    fn finds_markers_deep_in_the_chain() {
        let inner: BoxError = CircuitOpen::new(Some(Duration::from_secs(2))).into();
        let err: BoxError = Box::new(Wrapper(Box::new(Wrapper(inner))));
        let r = Rejection::find(&*err).unwrap();
        assert!(matches!(r, Rejection::CircuitOpen(_)));
        assert_eq!(r.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.grpc_code(), GrpcCode::Unavailable);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(2)));
        assert!(is::<CircuitOpen>(&*err));
        assert!(!is::<Overloaded>(&*err));
    }

    #[test]
    fn unknown_errors_are_not_rejections() {
        let err: BoxError = "boom".into();
        assert!(Rejection::find(&*err).is_none());
        let io: BoxError = Box::new(std::io::Error::other("disk"));
        assert!(Rejection::find(&*io).is_none());
    }

    #[test]
    fn every_marker_maps() {
        let cases: Vec<(BoxError, u16, GrpcCode, &str)> = vec![
            (
                RateLimited::new(Duration::ZERO).into(),
                429,
                GrpcCode::ResourceExhausted,
                "rate-limited",
            ),
            (
                CircuitOpen::new(None).into(),
                503,
                GrpcCode::Unavailable,
                "circuit-open",
            ),
            (
                Overloaded::new().into(),
                503,
                GrpcCode::Unavailable,
                "overloaded",
            ),
            (
                Elapsed::new(Duration::from_secs(1)).into(),
                504,
                GrpcCode::DeadlineExceeded,
                "timeout",
            ),
            (
                Shed::new("critical").into(),
                503,
                GrpcCode::Unavailable,
                "shed",
            ),
            (
                ReadOnly::new().into(),
                503,
                GrpcCode::Unavailable,
                "read-only",
            ),
            (
                MissingIdempotencyKey::new().into(),
                400,
                GrpcCode::InvalidArgument,
                "idempotency-key-missing",
            ),
            (
                InvalidIdempotencyKey::new("too long").into(),
                400,
                GrpcCode::InvalidArgument,
                "idempotency-key-invalid",
            ),
            (
                IdempotencyConflict::new(None).into(),
                409,
                GrpcCode::Aborted,
                "idempotency-conflict",
            ),
            (
                IdempotencyMismatch::new().into(),
                422,
                GrpcCode::FailedPrecondition,
                "idempotency-mismatch",
            ),
            (
                PayloadTooLarge::new(1024).into(),
                413,
                GrpcCode::ResourceExhausted,
                "payload-too-large",
            ),
            (
                KeyError::missing("header x-tenant-id").into(),
                400,
                GrpcCode::InvalidArgument,
                "invalid-key",
            ),
        ];
        for (err, status, code, slug) in cases {
            let r = Rejection::find(&*err).unwrap_or_else(|| panic!("{err} not found"));
            assert_eq!(r.http_status().as_u16(), status, "{slug}");
            assert_eq!(r.grpc_code(), code, "{slug}");
            assert_eq!(r.slug(), slug);
            assert!(!r.title().is_empty());
            assert_eq!(r.to_string(), err.to_string());
        }
    }

    #[test]
    fn display_mentions_the_retry_hint() {
        let e = Shed::new("degraded").with_retry_after(Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            "request shed at degradation level degraded (retry after 5s)"
        );
        assert_eq!(ReadOnly::new().to_string(), "service is read-only");
    }

    #[test]
    fn retry_hints_are_rounded_up_to_whole_units() {
        let cases = [
            (Duration::ZERO, "0ms"),
            (Duration::from_nanos(1), "1ms"),
            (Duration::from_micros(1500), "2ms"),
            (Duration::from_nanos(975_695_206), "976ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_nanos(999_000_001), "1s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1001), "2s"),
            (Duration::from_millis(1500), "2s"),
            (Duration::from_secs(30), "30s"),
            (Duration::MAX, "18446744073709551616s"),
        ];
        for (d, want) in cases {
            assert_eq!(
                RateLimited::new(d).to_string(),
                format!("rate limit exceeded (retry after {want})"),
                "{d:?}"
            );
        }
        assert_eq!(
            CircuitOpen::new(Some(Duration::from_nanos(975_695_206))).to_string(),
            "circuit open (retry after 976ms)"
        );
        assert_eq!(CircuitOpen::new(None).to_string(), "circuit open");
    }
}
