//! Rescue: the outermost layer, turning every rejection into a response.
//!
//! Inside a palisade stack, layers refuse requests by returning small marker errors
//! ([`RateLimited`](crate::error::RateLimited), [`CircuitOpen`](crate::error::CircuitOpen), ...) as a
//! `BoxError`. [`RescueLayer`] sits outside all of them and answers for them:
//!
//! - **HTTP**: the status from [`Rejection::http_status`] (429, 503, 504, 400, 409, 413, 422), a
//!   `Retry-After` header in whole seconds (rounded up) when the rejecting layer knows when to come back,
//!   the IETF `RateLimit-Policy` / `RateLimit` headers when a rate limiter reports its quota, and an
//!   RFC 9457 `application/problem+json` body with `type`, `title`, `status` and `detail`.
//! - **gRPC** (requests whose `content-type` is `application/grpc...`): a *trailers-only* response — HTTP
//!   200 with `grpc-status` from [`Rejection::grpc_code`] (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`,
//!   `DEADLINE_EXCEEDED`, ...), a percent-encoded `grpc-message`, and `grpc-retry-pushback-ms` when a retry
//!   time is known (the gRPC retry design's server pushback).
//! - **Anything else** (a bug, a dependency's error): `500` / `UNKNOWN` with a generic message. The error
//!   itself is logged with `tracing` and never sent to the client.
//!
//! The rescued service's error type is [`Infallible`], so it goes straight into `axum::Router::layer`.
//! Errors from the inner service's `poll_ready` are rescued too: they are held and answered on the next
//! `call`, so `poll_ready` never fails.
//!
//! With the `tonic` feature, [`grpc`] converts the same rejections into `tonic::Status` for gRPC *clients*.
//!
//! [`Rejection::http_status`]: crate::Rejection::http_status
//! [`Rejection::grpc_code`]: crate::Rejection::grpc_code

use std::convert::Infallible;
use std::error::Error;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use palisade_core::classify::is_grpc;
use palisade_core::error::{BoxError, Quota};
use palisade_core::grpc::GrpcCode;
use palisade_core::Rejection;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "tonic")]
pub mod grpc;

/// The default base of problem `type` URIs: `urn:palisade:problem:rate-limited`, ...
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:palisade:problem:";

/// How rescue decides between an HTTP problem response and a gRPC trailers-only response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Look at each request's `content-type`: `application/grpc...` gets gRPC, everything else HTTP.
    #[default]
    Auto,
    /// Always answer with an HTTP problem response (skips the per-request header lookup).
    Http,
    /// Always answer with a gRPC trailers-only response.
    Grpc,
}

/// A [`Layer`] that turns rejections and errors into responses. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RescueLayer {
    protocol: Protocol,
    problem_base: Option<Arc<str>>,
}

impl RescueLayer {
    /// Rescue with [`Protocol::Auto`] and the default problem `type` URIs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses how the protocol of a response is decided.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the base of problem `type` URIs; the rejection's slug is appended (e.g. with
    /// `"https://errors.example.com/"`, a rate limit is `https://errors.example.com/rate-limited`).
    pub fn problem_type_base(mut self, base: impl Into<String>) -> Self {
        self.problem_base = Some(Arc::from(base.into()));
        self
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue {
            inner,
            protocol: self.protocol,
            problem_base: self.problem_base.clone(),
            ready_error: None,
        }
    }
}

/// The service built by [`RescueLayer`].
#[derive(Debug)]
pub struct Rescue<S> {
    inner: S,
    protocol: Protocol,
    problem_base: Option<Arc<str>>,
    /// An error from the inner `poll_ready`, answered by the next `call`.
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Rescue {
            inner: self.inner.clone(),
            protocol: self.protocol,
            problem_base: self.problem_base.clone(),
            // A held readiness error belongs to this instance's next call, not to its clones.
            ready_error: None,
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Rescue<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<RescueBody<ResB>>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_none() {
            if let Err(e) = ready!(self.inner.poll_ready(cx)) {
                self.ready_error = Some(e.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc = match self.protocol {
            Protocol::Auto => is_grpc(req.headers()),
            Protocol::Http => false,
            Protocol::Grpc => true,
        };
        let problem_base = self.problem_base.clone();
        let state = match self.ready_error.take() {
            Some(err) => State::Failed { err: Some(err) },
            None => State::Pending {
                fut: self.inner.call(req),
            },
        };
        RescueFuture {
            state,
            grpc,
            problem_base,
        }
    }
}

pin_project! {
    /// The response future of [`Rescue`].
    pub struct RescueFuture<F> {
        #[pin]
        state: State<F>,
        grpc: bool,
        problem_base: Option<Arc<str>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Pending { #[pin] fut: F },
        Failed { err: Option<BoxError> },
    }
}

impl<F> fmt::Debug for RescueFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RescueFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<RescueBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err = match this.state.project() {
            StateProj::Pending { fut } => match ready!(fut.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(RescueBody::inner))),
                Err(e) => e.into(),
            },
            StateProj::Failed { err } => err.take().expect("RescueFuture polled after completion"),
        };
        let base = this
            .problem_base
            .as_deref()
            .unwrap_or(DEFAULT_PROBLEM_TYPE_BASE);
        let res = if *this.grpc {
            grpc_response(&*err)
        } else {
            problem_response(&*err, base)
        };
        Poll::Ready(Ok(res))
    }
}

/// Logs an error that is not a palisade rejection: it becomes a 500 / `UNKNOWN`, and the client is
/// told nothing about it.
fn log_unknown(err: &(dyn Error + 'static)) {
    tracing::error!(error = %err, "unhandled error in the service stack; answering 500 / UNKNOWN");
}

/// The HTTP problem response for `err` (RFC 9457), with `Retry-After` and rate-limit headers where
/// they apply. `type_base` prefixes the rejection's slug in the `type` member.
pub fn problem_response<B>(
    err: &(dyn Error + 'static),
    type_base: &str,
) -> Response<RescueBody<B>> {
    let rejection = Rejection::find(err);
    let status = match &rejection {
        Some(r) => r.http_status(),
        None => {
            log_unknown(err);
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let body = problem_json(type_base, status, rejection.as_ref());
    let mut res = Response::new(RescueBody::full(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(r) = rejection {
        if let Some(after) = r.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
        }
        if let Rejection::RateLimited(rl) = r {
            if let Some((policy, state)) = rl.quota.as_ref().and_then(ratelimit_headers) {
                headers.insert(HeaderName::from_static("ratelimit-policy"), policy);
                headers.insert(HeaderName::from_static("ratelimit"), state);
            }
        }
    }
    res
}

/// The problem body, written straight into one buffer (a rate-limited flood makes this a hot path).
/// `detail` is the rejection's message; unknown errors get `about:blank` and no detail.
fn problem_json(type_base: &str, status: StatusCode, r: Option<&Rejection<'_>>) -> Bytes {
    let mut out = String::with_capacity(224);
    out.push_str("{\"type\":\"");
    match r {
        Some(r) => {
            let _ = write!(JsonStr(&mut out), "{type_base}{}", r.slug());
        }
        None => out.push_str("about:blank"),
    }
    out.push_str("\",\"title\":\"");
    let title = r.map_or("Internal Server Error", Rejection::title);
    let _ = JsonStr(&mut out).write_str(title);
    let _ = write!(out, "\",\"status\":{}", status.as_u16());
    if let Some(r) = r {
        out.push_str(",\"detail\":\"");
        let _ = write!(JsonStr(&mut out), "{r}");
        out.push('"');
        if let Some(after) = r.retry_after() {
            let _ = write!(out, ",\"retry_after_ms\":{}", saturating_ms(after));
        }
    }
    out.push('}');
    Bytes::from(out)
}

/// Writes into a JSON string literal (without the quotes), escaping as RFC 8259 requires.
struct JsonStr<'a>(&'a mut String);

impl fmt::Write for JsonStr<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Whole seconds, rounded up: a client told `Retry-After: 0` for 300 ms would retry too early.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole milliseconds, rounded up (a wait of 77 µs is 1 ms, not 0), saturating.
pub(crate) fn saturating_ms(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=0;t=12`
/// (draft-ietf-httpapi-ratelimit-headers). `None` if the policy name cannot be an sf-string.
fn ratelimit_headers(q: &Quota) -> Option<(HeaderValue, HeaderValue)> {
    let name = sf_string(&q.policy)?;
    let (limit, window) = whole_second_quota(q.limit, q.window);
    let policy = format!("{name};q={limit};w={window}");
    let state = format!("{name};r={};t={}", q.remaining, ceil_secs(q.reset));
    Some((
        HeaderValue::try_from(policy).ok()?,
        HeaderValue::try_from(state).ok()?,
    ))
}

/// The quota as the header can carry it: `w` is whole seconds (at least 1), so a window that is not is
/// rounded up and the limit scaled to the rounded window, rounding down: 10 per 100 ms is advertised as
/// `q=100;w=1`, not the false `q=10;w=1`, and the advertised quota is never more than the real one.
fn whole_second_quota(limit: u64, window: Duration) -> (u64, u64) {
    let secs = ceil_secs(window).max(1);
    let nanos = window.as_nanos();
    if nanos == 0 || nanos == u128::from(secs) * 1_000_000_000 {
        return (limit, secs);
    }
    let scaled = u128::from(limit) * u128::from(secs) * 1_000_000_000 / nanos;
    (u64::try_from(scaled).unwrap_or(u64::MAX), secs)
}

/// An RFC 8941 sf-string: printable ASCII, with `"` and `\` escaped.
fn sf_string(s: &str) -> Option<String> {
    if !s.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(out)
}

/// The gRPC trailers-only response for `err`: HTTP 200, `grpc-status`, `grpc-message`, and
/// `grpc-retry-pushback-ms` when a retry time is known.
pub fn grpc_response<B>(err: &(dyn Error + 'static)) -> Response<RescueBody<B>> {
    let (code, message, retry_after) = grpc_parts(err);
    let mut res = Response::new(RescueBody::empty());
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from_static(code.as_header_str()),
    );
    if let Ok(v) = HeaderValue::try_from(percent_encode(&message)) {
        headers.insert(HeaderName::from_static("grpc-message"), v);
    }
    if let Some(after) = retry_after {
        headers.insert(
            HeaderName::from_static("grpc-retry-pushback-ms"),
            HeaderValue::from(saturating_ms(after)),
        );
    }
    res
}

/// The gRPC code, message and retry time for an error; unknown errors are `UNKNOWN` with a generic message.
pub(crate) fn grpc_parts(err: &(dyn Error + 'static)) -> (GrpcCode, String, Option<Duration>) {
    match Rejection::find(err) {
        Some(r) => (r.grpc_code(), r.to_string(), r.retry_after()),
        None => {
            log_unknown(err);
            (GrpcCode::Unknown, "internal error".to_owned(), None)
        }
    }
}

/// Percent-encodes a `grpc-message`: bytes outside `0x20..=0x7E`, and `%`, become `%XX`.
fn percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pin_project! {
    /// The response body of [`Rescue`]: the inner service's body, or the rescued response's.
    pub struct RescueBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rescued { data: Option<Bytes> },
    }
}

impl<B> RescueBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        RescueBody {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body of `data`.
    pub fn full(data: Bytes) -> Self {
        RescueBody {
            kind: Kind::Rescued {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RescueBody {
            kind: Kind::Rescued { data: None },
        }
    }

    /// Whether rescue wrote this body (the inner service failed or refused).
    pub fn is_rescued(&self) -> bool {
        matches!(self.kind, Kind::Rescued { .. })
    }
}

impl<B> fmt::Debug for RescueBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("RescueBody::Inner"),
            Kind::Rescued { data } => f
                .debug_struct("RescueBody::Rescued")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RescueBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rescued { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rescued { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rescued { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn the_advertised_quota_is_true_in_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(whole_second_quota(10, ms(100)), (100, 1));
        assert_eq!(whole_second_quota(10, ms(1500)), (13, 2));
        assert_eq!(
            whole_second_quota(20, Duration::from_secs(3600)),
            (20, 3600)
        );
        assert_eq!(whole_second_quota(5, Duration::ZERO), (5, 1));
        assert_eq!(
            whole_second_quota(u64::MAX, Duration::from_nanos(1)),
            (u64::MAX, 1)
        );
        let q = Quota::new(10, ms(100), 3, ms(50));
        let (policy, _) = ratelimit_headers(&q).unwrap();
        assert_eq!(policy, "\"default\";q=100;w=1");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("rate limit 100%"), "rate limit 100%25");
        assert_eq!(percent_encode("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn problem_json_escapes_and_parses() {
        let err = palisade_core::error::InvalidIdempotencyKey::new(
            "no \"quotes\", \\, \n or \u{1} allowed: caf\u{e9}",
        );
        let res = problem_response::<()>(&err, "urn:x:");
        let RescueBody {
            kind: Kind::Rescued { data: Some(body) },
        } = res.into_body()
        else {
            panic!("a rescued body");
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:x:idempotency-key-invalid");
        assert_eq!(json["title"], "Invalid Idempotency-Key");
        assert_eq!(json["status"], 400);
        assert_eq!(json["detail"], format!("{err}"));
        assert!(json.get("retry_after_ms").is_none());
        assert_eq!(json.as_object().unwrap().len(), 4);
    }

    #[test]
    fn retry_after_milliseconds_round_up() {
        assert_eq!(saturating_ms(Duration::from_micros(78)), 1);
        assert_eq!(saturating_ms(Duration::from_millis(5)), 5);
        assert_eq!(saturating_ms(Duration::from_nanos(5_000_001)), 6);
        assert_eq!(saturating_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn sf_strings_escape_and_refuse() {
        assert_eq!(sf_string("gold").as_deref(), Some("\"gold\""));
        assert_eq!(sf_string("a\"b\\c").as_deref(), Some("\"a\\\"b\\\\c\""));
        assert_eq!(sf_string("t\u{e9}"), None);
        assert_eq!(sf_string("tab\t"), None);
    }
}
