//! Failure classification: was this outcome a failure?
//!
//! Classification is separate from policy. A [`Classify`] implementation only says whether a call
//! succeeded, failed or should be ignored; the circuit breaker, retry and fallback layers decide what to do
//! about it. The same classifier therefore means the same thing in every layer of a stack.
//!
//! Ready classifiers:
//!
//! - [`ErrorsOnly`]: an `Err` is a failure, any response a success. Works for any response type.
//! - [`HttpStatus`]: an `Err`, or an HTTP status in a configurable [`StatusSet`] (default: every 5xx).
//! - [`Grpc`]: gRPC-aware. A gRPC failure usually arrives as HTTP `200` with `grpc-status` in the
//!   *trailers* at the end of the stream, so unless the status is in the headers (a trailers-only
//!   response) the verdict is deferred to the end of the body: [`Classified::AtEndOfStream`]. Non-gRPC
//!   responses are judged by HTTP status, so one classifier serves a mixed HTTP/gRPC stack.
//! - [`SlowCalls`]: wraps any classifier and also counts successful calls slower than a threshold as
//!   failures ([`Failure::Slow`]).
//!
//! Every ready classifier ignores palisade's own local refusals (a full bulkhead, a rate limit, an open
//! breaker further in, ...): the backend never saw those calls. See
//! [`Classify`](Classify#local-refusals-are-not-backend-failures).
//!
//! A layer that needs the end-of-stream verdict wraps the response body in [`ClassifyBody`], which reports
//! the outcome exactly once: at the trailers, at the end of the body, on a body error, or — if the body is
//! dropped before its end — as [`Outcome::Ignored`] (a cancelled call says nothing about the service).
//!
//! ```
//! use http::{Response, StatusCode};
//! use palisade_core::classify::{Classified, Classify, Failure, HttpStatus, Outcome};
//!
//! let classifier = HttpStatus::server_errors();
//! let res = Response::builder().status(503).body(()).unwrap();
//! assert!(matches!(
//!     classifier.classify_response(&res),
//!     Classified::Ready(Outcome::Failure(Failure::Status(StatusCode::SERVICE_UNAVAILABLE)))
//! ));
//! let res = Response::builder().status(404).body(()).unwrap();
//! assert!(matches!(classifier.classify_response(&res), Classified::Ready(Outcome::Success)));
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::Rejection;
use crate::grpc::{GrpcCode, GrpcCodes};

/// The verdict on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed, for this reason.
    Failure(Failure),
    /// The call says nothing about the service's health (e.g. it was cancelled, or a user rule ignores it):
    /// counted neither as a success nor as a failure.
    Ignored,
}

impl Outcome {
    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure(_))
    }

    /// Applies a latency verdict: a success that was slow becomes `Failure(slow)`; failures and ignored
    /// outcomes stay as they are.
    pub fn with_latency(self, slow: Option<Failure>) -> Outcome {
        match (self, slow) {
            (Outcome::Success, Some(f)) => Outcome::Failure(f),
            (o, _) => o,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The service returned an error (or the body failed mid-stream).
    Error,
    /// The HTTP status is in the classifier's failure set.
    Status(StatusCode),
    /// The gRPC status (from headers or trailers) is in the classifier's failure set.
    Grpc(GrpcCode),
    /// The call succeeded but took at least this long (the threshold that was crossed is in the classifier).
    Slow(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error => f.write_str("error"),
            Failure::Status(s) => write!(f, "HTTP {}", s.as_u16()),
            Failure::Grpc(c) => write!(f, "gRPC {c}"),
            Failure::Slow(d) => write!(f, "slow call ({d:?})"),
        }
    }
}

/// The verdict on a response: ready now, or only known at the end of its body.
#[derive(Debug)]
pub enum Classified<E> {
    /// The outcome is known from the response head.
    Ready(Outcome),
    /// The outcome depends on the end of the body (e.g. gRPC trailers); finish it with `E`.
    AtEndOfStream(E),
}

/// Decides whether a call's outcome was a failure.
///
/// Implementations must be cheap: they run on every call. `classify_error` and `classify_latency` have
/// defaults (see [`default_error_outcome`]; latency does not matter).
///
/// # Local refusals are not backend failures
///
/// The default [`classify_error`](Self::classify_error) — used by [`ErrorsOnly`], [`HttpStatus`],
/// [`Grpc`] and [`SlowCalls`] over them — counts every error as a failure **except palisade's own local
/// refusals**, found anywhere in the error's source chain: [`Overloaded`], [`RateLimited`], [`Shed`],
/// [`ReadOnly`], [`CircuitOpen`], and the client errors ([`KeyError`], [`MissingIdempotencyKey`],
/// [`InvalidIdempotencyKey`], [`IdempotencyConflict`], [`IdempotencyMismatch`], [`PayloadTooLarge`]).
/// Those are [`Outcome::Ignored`]: a layer further in refused the call before the backend saw it, so
/// the call says nothing about the backend's health. A full local bulkhead below a breaker must not
/// open the breaker while the backend is fine. [`Elapsed`] **is** a failure: a timeout is the backend
/// being slow.
///
/// What the consumers do with `Ignored`: the circuit breaker counts it neither as a success nor as a
/// failure (a half-open probe that ends ignored gives its slot back); the retry layer decides on
/// palisade's rejections by its own rules before it asks the classifier, so this changes nothing there;
/// a fallback trigger built on a classifier fires on every error the classifier does not call a
/// success, `Ignored` included (an open circuit below is exactly when a fallback is wanted).
///
/// Override `classify_error` for other rules, and call [`default_error_outcome`] to keep this one.
///
/// [`Overloaded`]: crate::error::Overloaded
/// [`RateLimited`]: crate::error::RateLimited
/// [`Shed`]: crate::error::Shed
/// [`ReadOnly`]: crate::error::ReadOnly
/// [`CircuitOpen`]: crate::error::CircuitOpen
/// [`KeyError`]: crate::error::KeyError
/// [`MissingIdempotencyKey`]: crate::error::MissingIdempotencyKey
/// [`InvalidIdempotencyKey`]: crate::error::InvalidIdempotencyKey
/// [`IdempotencyConflict`]: crate::error::IdempotencyConflict
/// [`IdempotencyMismatch`]: crate::error::IdempotencyMismatch
/// [`PayloadTooLarge`]: crate::error::PayloadTooLarge
/// [`Elapsed`]: crate::error::Elapsed
pub trait Classify<Res>: Send + Sync {
    /// Finishes the verdict at the end of a body, for classifiers that may need to (use [`NoEos`]
    /// otherwise).
    type Eos: ClassifyEos;

    /// Classifies a response.
    fn classify_response(&self, res: &Res) -> Classified<Self::Eos>;

    /// Classifies an error returned instead of a response. Default: [`default_error_outcome`] — a
    /// failure, unless it is a local refusal (see [above](Classify#local-refusals-are-not-backend-failures)).
    fn classify_error(&self, err: &(dyn Error + 'static)) -> Outcome {
        default_error_outcome(err)
    }

    /// Classifies the call's latency, measured by the layer from the call until the outcome is known.
    /// `Some(failure)` turns a success into that failure (see [`Outcome::with_latency`]). Default: `None`.
    fn classify_latency(&self, elapsed: Duration) -> Option<Failure> {
        let _ = elapsed;
        None
    }
}

/// The default verdict on an error: [`Outcome::Ignored`] if it is one of palisade's local refusals (see
/// [`is_local_refusal`]), else [`Outcome::Failure`]`(`[`Failure::Error`]`)`.
///
/// ```
/// use palisade_core::classify::{default_error_outcome, Failure, Outcome};
/// use palisade_core::error::{BoxError, Elapsed, Overloaded};
/// use std::time::Duration;
///
/// let full: BoxError = Overloaded::new().into();
/// assert_eq!(default_error_outcome(&*full), Outcome::Ignored);
/// let slow: BoxError = Elapsed::new(Duration::from_secs(1)).into();
/// assert_eq!(default_error_outcome(&*slow), Outcome::Failure(Failure::Error));
/// let reset: BoxError = "connection reset".into();
/// assert_eq!(default_error_outcome(&*reset), Outcome::Failure(Failure::Error));
/// ```
pub fn default_error_outcome(err: &(dyn Error + 'static)) -> Outcome {
    if is_local_refusal(err) {
        Outcome::Ignored
    } else {
        Outcome::Failure(Failure::Error)
    }
}

/// Whether `err` (or an error in its source chain) is a palisade layer refusing the call locally, before
/// the backend saw it: every [`Rejection`] but [`Elapsed`](crate::error::Elapsed). The outermost
/// rejection in the chain decides.
pub fn is_local_refusal(err: &(dyn Error + 'static)) -> bool {
    match Rejection::find(err) {
        None | Some(Rejection::Elapsed(_)) => false,
        Some(
            Rejection::RateLimited(_)
            | Rejection::CircuitOpen(_)
            | Rejection::Overloaded(_)
            | Rejection::Shed(_)
            | Rejection::ReadOnly(_)
            | Rejection::InvalidKey(_)
            | Rejection::MissingIdempotencyKey(_)
            | Rejection::InvalidIdempotencyKey(_)
            | Rejection::IdempotencyConflict(_)
            | Rejection::IdempotencyMismatch(_)
            | Rejection::PayloadTooLarge(_),
        ) => true,
    }
}

/// Finishes a deferred verdict at the end of a response body.
pub trait ClassifyEos: Send {
    /// The body ended; `trailers` are the trailers it carried, if any.
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome;

    /// The body failed mid-stream. Default: a failure.
    fn classify_body_error(self, err: &(dyn Error + 'static)) -> Outcome
    where
        Self: Sized,
    {
        let _ = err;
        Outcome::Failure(Failure::Error)
    }
}

/// The [`ClassifyEos`] of classifiers that always decide from the response head.
#[derive(Debug, Clone, Copy)]
pub enum NoEos {}

impl ClassifyEos for NoEos {
    fn classify_eos(self, _: Option<&HeaderMap>) -> Outcome {
        match self {}
    }
}

impl<Res, C: Classify<Res> + ?Sized> Classify<Res> for std::sync::Arc<C> {
    type Eos = C::Eos;

    fn classify_response(&self, res: &Res) -> Classified<Self::Eos> {
        (**self).classify_response(res)
    }

    fn classify_error(&self, err: &(dyn Error + 'static)) -> Outcome {
        (**self).classify_error(err)
    }

    fn classify_latency(&self, elapsed: Duration) -> Option<Failure> {
        (**self).classify_latency(elapsed)
    }
}

/// An `Err` is a failure (but a local refusal is ignored, see
/// [`Classify`](Classify#local-refusals-are-not-backend-failures)); every response is a success. For
/// non-HTTP services, or when the inner layers already turn bad responses into errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsOnly;

impl<Res> Classify<Res> for ErrorsOnly {
    type Eos = NoEos;

    fn classify_response(&self, _: &Res) -> Classified<NoEos> {
        Classified::Ready(Outcome::Success)
    }
}

/// A set of HTTP status codes (100–999), 128 bytes, O(1) lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// The empty set.
    pub const fn empty() -> Self {
        StatusSet([0; 16])
    }

    /// Every 5xx status.
    pub const fn server_errors() -> Self {
        Self::empty().with_range(500, 599)
    }

    /// This set plus every status from `from` to `to`, inclusive. Codes outside 100–999 are ignored.
    pub const fn with_range(mut self, from: u16, to: u16) -> Self {
        let mut c = from;
        while c <= to && c < 1000 {
            if c >= 100 {
                self.0[(c / 64) as usize] |= 1 << (c % 64);
            }
            c += 1;
        }
        self
    }

    /// This set plus `status`.
    pub fn with(self, status: StatusCode) -> Self {
        let c = status.as_u16();
        self.with_range(c, c)
    }

    /// This set minus `status`.
    pub fn without(mut self, status: StatusCode) -> Self {
        let c = status.as_u16();
        self.0[(c / 64) as usize] &= !(1 << (c % 64));
        self
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: StatusCode) -> bool {
        let c = status.as_u16();
        self.0[(c / 64) as usize] & (1 << (c % 64)) != 0
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        Self::server_errors()
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((100u16..1000).filter(|c| self.0[(c / 64) as usize] & (1 << (c % 64)) != 0))
            .finish()
    }
}

/// An `Err`, or an HTTP status in the failure set (default: every 5xx), is a failure; a local refusal
/// is ignored (see [`Classify`](Classify#local-refusals-are-not-backend-failures)).
///
/// ```
/// use http::StatusCode;
/// use palisade_core::classify::{HttpStatus, StatusSet};
///
/// // 5xx except 501, plus 429 (an upstream shedding load).
/// let c = HttpStatus::new(
///     StatusSet::server_errors()
///         .without(StatusCode::NOT_IMPLEMENTED)
///         .with(StatusCode::TOO_MANY_REQUESTS),
/// );
/// assert!(c.failures().contains(StatusCode::TOO_MANY_REQUESTS));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatus {
    failures: StatusSet,
}

impl HttpStatus {
    /// Statuses in `failures` are failures.
    pub fn new(failures: StatusSet) -> Self {
        HttpStatus { failures }
    }

    /// Every 5xx is a failure.
    pub fn server_errors() -> Self {
        Self::default()
    }

    /// The failure set.
    pub fn failures(&self) -> StatusSet {
        self.failures
    }

    fn outcome(&self, status: StatusCode) -> Outcome {
        if self.failures.contains(status) {
            Outcome::Failure(Failure::Status(status))
        } else {
            Outcome::Success
        }
    }
}

impl<B> Classify<Response<B>> for HttpStatus {
    type Eos = NoEos;

    fn classify_response(&self, res: &Response<B>) -> Classified<NoEos> {
        Classified::Ready(self.outcome(res.status()))
    }
}

/// gRPC-aware classification.
///
/// - A response that is not gRPC (its `content-type` does not start with `application/grpc`) is judged by
///   HTTP status, like [`HttpStatus`].
/// - A gRPC response with a non-`200` HTTP status is judged by HTTP status too (the server or a proxy
///   failed before gRPC began).
/// - A `grpc-status` in the response headers (a trailers-only response) decides at once.
/// - Otherwise the verdict waits for the trailers ([`GrpcEos`]); a stream that ends without a
///   `grpc-status` is a failure (`UNKNOWN`), as the gRPC spec says.
///
/// The codes counted as failures default to [`GrpcCodes::server_errors`]; a malformed `grpc-status` is
/// `UNKNOWN`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc {
    http: HttpStatus,
    failures: GrpcCodesOrDefault,
}

#[derive(Debug, Clone, Copy)]
struct GrpcCodesOrDefault(GrpcCodes);

impl Default for GrpcCodesOrDefault {
    fn default() -> Self {
        GrpcCodesOrDefault(GrpcCodes::server_errors())
    }
}

impl Grpc {
    /// gRPC codes in [`GrpcCodes::server_errors`] and HTTP 5xx are failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the gRPC codes counted as failures.
    pub fn failures(mut self, codes: GrpcCodes) -> Self {
        self.failures = GrpcCodesOrDefault(codes);
        self
    }

    /// Sets the HTTP statuses counted as failures (for non-gRPC responses and failed gRPC responses).
    pub fn http_failures(mut self, statuses: StatusSet) -> Self {
        self.http = HttpStatus::new(statuses);
        self
    }

    fn code_outcome(codes: GrpcCodes, code: GrpcCode) -> Outcome {
        if codes.contains(code) {
            Outcome::Failure(Failure::Grpc(code))
        } else {
            Outcome::Success
        }
    }
}

/// Whether a header map says the message is gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC code in a `grpc-status` header or trailer: `None` if absent, `UNKNOWN` if malformed.
pub fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    headers
        .get("grpc-status")
        .map(|v| GrpcCode::from_header(v.as_bytes()).unwrap_or(GrpcCode::Unknown))
}

impl<B> Classify<Response<B>> for Grpc {
    type Eos = GrpcEos;

    fn classify_response(&self, res: &Response<B>) -> Classified<GrpcEos> {
        if !is_grpc(res.headers()) || res.status() != StatusCode::OK {
            return Classified::Ready(self.http.outcome(res.status()));
        }
        match grpc_status(res.headers()) {
            Some(code) => Classified::Ready(Self::code_outcome(self.failures.0, code)),
            None => Classified::AtEndOfStream(GrpcEos {
                failures: self.failures.0,
            }),
        }
    }
}

/// Finishes a gRPC verdict from the trailers.
#[derive(Debug, Clone, Copy)]
pub struct GrpcEos {
    failures: GrpcCodes,
}

impl ClassifyEos for GrpcEos {
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome {
        let code = trailers.and_then(grpc_status).unwrap_or(GrpcCode::Unknown);
        Grpc::code_outcome(self.failures, code)
    }
}

/// Wraps a classifier and counts successful calls slower than `threshold` as failures.
///
/// ```
/// use palisade_core::classify::{Classify, Failure, HttpStatus, SlowCalls};
/// use std::time::Duration;
///
/// let c = SlowCalls::new(HttpStatus::server_errors(), Duration::from_millis(500));
/// let slow = <SlowCalls<HttpStatus> as Classify<http::Response<()>>>::classify_latency(
///     &c,
///     Duration::from_millis(800),
/// );
/// assert_eq!(slow, Some(Failure::Slow(Duration::from_millis(800))));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SlowCalls<C> {
    inner: C,
    threshold: Duration,
}

impl<C> SlowCalls<C> {
    /// Calls taking at least `threshold` are slow.
    pub fn new(inner: C, threshold: Duration) -> Self {
        SlowCalls { inner, threshold }
    }

    /// The threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }
}

impl<Res, C: Classify<Res>> Classify<Res> for SlowCalls<C> {
    type Eos = C::Eos;

    fn classify_response(&self, res: &Res) -> Classified<C::Eos> {
        self.inner.classify_response(res)
    }

    fn classify_error(&self, err: &(dyn Error + 'static)) -> Outcome {
        self.inner.classify_error(err)
    }

    fn classify_latency(&self, elapsed: Duration) -> Option<Failure> {
        if elapsed >= self.threshold {
            Some(Failure::Slow(elapsed))
        } else {
            self.inner.classify_latency(elapsed)
        }
    }
}

/// Receives a call's [`Outcome`] once it is known; implemented by every `FnOnce(Outcome)` closure.
///
/// Layers implement it on a named type (closures cannot be named in a response body type) that
/// holds what they need to record the outcome.
pub trait OnOutcome {
    /// The call's outcome, reported exactly once.
    fn on_outcome(self, outcome: Outcome);
}

impl<F: FnOnce(Outcome)> OnOutcome for F {
    fn on_outcome(self, outcome: Outcome) {
        self(outcome)
    }
}

pin_project! {
    /// A response body that reports the call's [`Outcome`] exactly once, when it is known.
    ///
    /// Built with [`ClassifyBody::deferred`] when a classifier returned
    /// [`Classified::AtEndOfStream`], or [`ClassifyBody::ready`] when the verdict was already reported (the
    /// body is then passed through untouched). The callback runs at the trailers frame, at the end of the
    /// body, on a body error, or when the body is dropped: `Ignored` if it was dropped before its end,
    /// the end-of-stream verdict if it was already at its end (a body nobody needed to poll).
    pub struct ClassifyBody<B, E, F>
    where
        B: Body,
        E: ClassifyEos,
        F: OnOutcome,
    {
        #[pin]
        inner: B,
        pending: Option<(E, F)>,
    }

    impl<B, E, F> PinnedDrop for ClassifyBody<B, E, F>
    where
        B: Body,
        E: ClassifyEos,
        F: OnOutcome,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((eos, report)) = this.pending.take() {
                if this.inner.is_end_stream() {
                    report.on_outcome(eos.classify_eos(None));
                } else {
                    report.on_outcome(Outcome::Ignored);
                }
            }
        }
    }
}

impl<B: Body, E: ClassifyEos, F: OnOutcome> ClassifyBody<B, E, F> {
    /// A body whose verdict is finished by `eos` and reported to `report`.
    pub fn deferred(inner: B, eos: E, report: F) -> Self {
        ClassifyBody {
            inner,
            pending: Some((eos, report)),
        }
    }

    /// A body whose verdict was already reported: passed through untouched.
    pub fn ready(inner: B) -> Self {
        ClassifyBody {
            inner,
            pending: None,
        }
    }

    /// Whether the verdict is still to come.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

impl<B, E, F> fmt::Debug for ClassifyBody<B, E, F>
where
    B: Body + fmt::Debug,
    E: ClassifyEos,
    F: OnOutcome,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyBody")
            .field("inner", &self.inner)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<B, E, F> Body for ClassifyBody<B, E, F>
where
    B: Body,
    B::Error: Error + 'static,
    E: ClassifyEos,
    F: OnOutcome,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let finished = match frame {
                Some(Ok(frame)) => frame.trailers_ref().map(Some),
                None => Some(None),
                Some(Err(_)) => None,
            };
            if let Some(trailers) = finished {
                if let Some((eos, report)) = this.pending.take() {
                    report.on_outcome(eos.classify_eos(trailers));
                }
            } else if let Some(Err(err)) = frame {
                if let Some((eos, report)) = this.pending.take() {
                    report.on_outcome(eos.classify_body_error(err));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`ClassifyEos`] for [`Infallible`] never runs; this lets generic code name it.
impl ClassifyEos for Infallible {
    fn classify_eos(self, _: Option<&HeaderMap>) -> Outcome {
        match self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{
        BoxError, CircuitOpen, Elapsed, IdempotencyConflict, IdempotencyMismatch,
        InvalidIdempotencyKey, KeyError, MissingIdempotencyKey, Overloaded, PayloadTooLarge,
        RateLimited, ReadOnly, Shed,
    };

    /// An error wrapping another, as a transport or a user's layer might.
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

    fn refusals() -> Vec<BoxError> {
        vec![
            Overloaded::new().into(),
            RateLimited::new(Duration::from_secs(1)).into(),
            Shed::new("critical").into(),
            ReadOnly::new().into(),
            CircuitOpen::new(None).into(),
            KeyError::missing("header x-tenant-id").into(),
            MissingIdempotencyKey::new().into(),
            InvalidIdempotencyKey::new("too long").into(),
            IdempotencyConflict::new(None).into(),
            IdempotencyMismatch::new().into(),
            PayloadTooLarge::new(1024).into(),
        ]
    }

    /// The verdict of every ready classifier on `err`, all of which must agree.
    fn verdicts(err: &BoxError) -> [Outcome; 4] {
        type Res = Response<()>;
        let e: &(dyn Error + 'static) = &**err;
        [
            <ErrorsOnly as Classify<Res>>::classify_error(&ErrorsOnly, e),
            <HttpStatus as Classify<Res>>::classify_error(&HttpStatus::server_errors(), e),
            <Grpc as Classify<Res>>::classify_error(&Grpc::new(), e),
            <SlowCalls<Grpc> as Classify<Res>>::classify_error(
                &SlowCalls::new(Grpc::new(), Duration::from_millis(100)),
                e,
            ),
        ]
    }

    #[test]
    fn local_refusals_are_ignored_by_every_ready_classifier() {
        for err in refusals() {
            assert!(is_local_refusal(&*err), "{err}");
            assert_eq!(verdicts(&err), [Outcome::Ignored; 4], "{err}");
        }
    }

    #[test]
    fn local_refusals_are_found_deep_in_the_chain() {
        for err in refusals() {
            let label = err.to_string();
            let wrapped: BoxError = Box::new(Wrapper(Box::new(Wrapper(err))));
            assert_eq!(verdicts(&wrapped), [Outcome::Ignored; 4], "{label}");
        }
    }

    #[test]
    fn a_timeout_is_a_failure() {
        let failed = [Outcome::Failure(Failure::Error); 4];
        let err: BoxError = Elapsed::new(Duration::from_secs(1)).into();
        assert!(!is_local_refusal(&*err));
        assert_eq!(verdicts(&err), failed);
        let wrapped: BoxError = Box::new(Wrapper(err));
        assert_eq!(verdicts(&wrapped), failed);
    }

    #[test]
    fn other_errors_are_failures() {
        let failed = [Outcome::Failure(Failure::Error); 4];
        let err: BoxError = "connection reset".into();
        assert!(!is_local_refusal(&*err));
        assert_eq!(verdicts(&err), failed);
        let err: BoxError = Box::new(std::io::Error::other("broken pipe"));
        assert_eq!(verdicts(&err), failed);
    }

    #[test]
    fn an_arc_keeps_the_rule() {
        let c = std::sync::Arc::new(Grpc::new());
        let err: BoxError = Overloaded::new().into();
        assert_eq!(
            <std::sync::Arc<Grpc> as Classify<Response<()>>>::classify_error(&c, &*err),
            Outcome::Ignored
        );
    }
}
