//! The response futures: buffering, attempts, backoff sleeps.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::Body;
use palisade_core::audit::AuditEvent;
use palisade_core::body::Collect;
use palisade_core::classify::Classify;
use palisade_core::deadline::refresh_grpc_timeout;
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};
use tower_service::Service;

use crate::layer::{BufferBody, CloneWith, Shared, GAVE_UP_KIND};
use crate::policy::{judge_error, judge_response, Reason, RetryHint, Retryable};
use crate::RetryBody;

/// The verdict on an attempt's outcome: why it would be retried, and the service's hint; `None` if it
/// is not to be retried.
fn verdict<C, R, Res>(shared: &Shared<C, R>, result: &Result<Res, BoxError>) -> Option<Retryable>
where
    C: Classify<Res>,
    Res: RetryHint,
{
    match result {
        Ok(res) => judge_response(&shared.classify, res),
        Err(e) => judge_error::<C, Res>(&shared.classify, &**e, shared.retry_timeouts),
    }
}

/// Counts, logs and audits a retryable failure after which the attempt limit allows no other attempt.
fn give_up<C, R>(
    shared: &Shared<C, R>,
    attempts: u32,
    reason: Reason,
    describe: impl FnOnce(AuditEvent) -> AuditEvent,
) {
    shared.stats.gave_up.fetch_add(1, Relaxed);
    tracing::warn!(attempts, last = %reason, "retry: giving up");
    shared.audit.record_with(|| {
        describe(
            AuditEvent::new(GAVE_UP_KIND)
                .detail("attempts", attempts)
                .detail("last", reason.to_string()),
        )
    });
}

/// Adds the method and path of a request to an audit event.
fn describe_http(event: AuditEvent, method: &http::Method, uri: &http::Uri) -> AuditEvent {
    event
        .detail("method", method.as_str())
        .detail("path", uri.path())
}

/// Produces the request for each retry.
pub(crate) trait Replay<Req, R> {
    /// The request for the next attempt; `last` when no attempt will follow it. `None`: cannot replay.
    fn next(&mut self, strategy: &R, last: bool) -> Option<Req>;

    /// Readies a retry's request just before it is sent (after the backoff and `poll_ready`).
    /// `Err`: do not send it; the error is the request's outcome.
    fn prepare(&self, req: &mut Req) -> Result<(), BoxError> {
        let _ = req;
        Ok(())
    }

    /// Adds what identifies the request to an audit event.
    fn describe(&self, event: AuditEvent) -> AuditEvent {
        event
    }
}

/// Replays a buffered `http::Request`.
pub(crate) struct HttpReplay<B> {
    parts: http::request::Parts,
    data: Bytes,
    trailers: Option<HeaderMap>,
    _body: PhantomData<fn() -> B>,
}

impl<B> Replay<Request<RetryBody<B>>, BufferBody> for HttpReplay<B> {
    fn next(&mut self, _: &BufferBody, _last: bool) -> Option<Request<RetryBody<B>>> {
        // The head is cloned even for the last attempt: the give-up record names the request.
        let body = RetryBody::replayed(self.data.clone(), self.trailers.clone());
        Some(Request::from_parts(self.parts.clone(), body))
    }

    /// The time left of a propagating timeout's [`Deadline`](palisade_core::deadline::Deadline) (cloned
    /// with the extensions) becomes the retry's `grpc-timeout`; past the deadline, the retry fails as
    /// [`Elapsed`](palisade_core::error::Elapsed) instead of being sent.
    fn prepare(&self, req: &mut Request<RetryBody<B>>) -> Result<(), BoxError> {
        refresh_grpc_timeout(req).map_err(|elapsed| {
            tracing::debug!(
                budget = ?elapsed.after,
                "retry: the request's deadline passed before the retry; not sent"
            );
            elapsed.into()
        })
    }

    fn describe(&self, event: AuditEvent) -> AuditEvent {
        describe_http(event, &self.parts.method, &self.parts.uri)
    }
}

/// Replays any request with the user's clone function.
pub(crate) struct CloneReplay<Req> {
    spare: Option<Req>,
}

impl<Req, F> Replay<Req, CloneWith<F>> for CloneReplay<Req>
where
    F: Fn(&Req) -> Option<Req>,
{
    fn next(&mut self, strategy: &CloneWith<F>, last: bool) -> Option<Req> {
        if last {
            self.spare.take()
        } else {
            (strategy.0)(self.spare.as_ref()?)
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Req> {
        Calling { #[pin] fut: F },
        Sleeping { #[pin] sleep: Sleep, req: Option<Req> },
        Readying { req: Option<Req> },
    }
}

pin_project! {
    /// The attempt loop shared by both response futures.
    struct Attempts<S, Req, Src, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Req>,
        svc: S,
        replay: Src,
        shared: Arc<Shared<C, R>>,
        // Attempts sent so far.
        attempt: u32,
        // The previous delay (decorrelated backoff).
        prev: Duration,
    }
}

impl<S, Req, Src, C, R> Attempts<S, Req, Src, C, R>
where
    S: Service<Req>,
{
    fn new(fut: S::Future, svc: S, replay: Src, shared: Arc<Shared<C, R>>) -> Self {
        let prev = shared.backoff.base();
        Attempts {
            state: State::Calling { fut },
            svc,
            replay,
            shared,
            attempt: 1,
            prev,
        }
    }
}

impl<S, Req, Src, C, R> Future for Attempts<S, Req, Src, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: RetryHint,
    C: Classify<S::Response>,
    Src: Replay<Req, R>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let Some((reason, hint)) = verdict(shared, &result) else {
                        return Poll::Ready(result);
                    };
                    let attempt = *this.attempt;
                    if attempt >= shared.max_attempts {
                        let replay = &*this.replay;
                        give_up(shared, attempt, reason, |e| replay.describe(e));
                        return Poll::Ready(result);
                    }
                    if !shared.stats.withdraw(&shared.audit) {
                        return Poll::Ready(result);
                    }
                    let last = attempt + 1 >= shared.max_attempts;
                    let Some(req) = this.replay.next(&shared.replay, last) else {
                        tracing::debug!(attempt, "retry: request cannot be replayed");
                        return Poll::Ready(result);
                    };
                    let mut delay = shared.backoff.delay(attempt - 1, *this.prev, &shared.rng);
                    if let Some(hint) = hint {
                        delay = delay.max(hint.min(shared.retry_after_cap));
                    }
                    *this.prev = delay;
                    shared.stats.retries.fetch_add(1, Relaxed);
                    tracing::debug!(
                        attempt = attempt + 1,
                        ?delay,
                        reason = %reason,
                        "retry: retrying after a failed attempt"
                    );
                    drop(result);
                    this.state.set(State::Sleeping {
                        sleep: sleep(delay),
                        req: Some(req),
                    });
                }
                StateProj::Sleeping { sleep, req } => {
                    ready!(sleep.poll(cx));
                    let req = req.take();
                    this.state.set(State::Readying { req });
                }
                StateProj::Readying { req } => {
                    if let Err(e) = ready!(this.svc.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(mut req) = req.take() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    if let Err(e) = this.replay.prepare(&mut req) {
                        return Poll::Ready(Err(e));
                    }
                    *this.attempt += 1;
                    let fut = this.svc.call(req);
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

/// A body being read into memory before the first attempt.
pub(crate) struct Buffering<S, B, C> {
    pub(crate) body: Pin<Box<B>>,
    pub(crate) collect: Collect,
    pub(crate) parts: http::request::Parts,
    pub(crate) svc: S,
    pub(crate) shared: Arc<Shared<C, BufferBody>>,
}

pin_project! {
    /// The response future of [`Retry`](crate::Retry) for `http::Request<B>`.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        #[pin]
        kind: Kind<S, B, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B, C>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        // Sent once: not retryable, or too large to buffer.
        Once { #[pin] fut: S::Future },
        // Retryable, but `max_attempts(1)`: sent once, its failure judged for `gave_up`.
        Single {
            #[pin]
            fut: S::Future,
            shared: Arc<Shared<C, BufferBody>>,
            // The method and path for the audit record (kept only with an audit log).
            target: Option<(http::Method, http::Uri)>,
        },
        // Reading the body before the first attempt.
        Buffering { buffering: Option<Buffering<S, B, C>> },
        Attempts {
            #[pin]
            attempts: Attempts<S, Request<RetryBody<B>>, HttpReplay<B>, C, BufferBody>,
        },
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<RetryBody<B>>>,
{
    pub(crate) fn once(fut: S::Future) -> Self {
        ResponseFuture {
            kind: Kind::Once { fut },
        }
    }

    /// A retryable request under `max_attempts(1)`: sent as it came; a retryable failure gave up.
    pub(crate) fn single(
        fut: S::Future,
        target: Option<(http::Method, http::Uri)>,
        shared: Arc<Shared<C, BufferBody>>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Single {
                fut,
                shared,
                target,
            },
        }
    }

    pub(crate) fn buffering(buffering: Buffering<S, B, C>) -> Self {
        ResponseFuture {
            kind: Kind::Buffering {
                buffering: Some(buffering),
            },
        }
    }

    /// The first attempt (of an empty-bodied request) is under way.
    pub(crate) fn attempts(
        fut: S::Future,
        svc: S,
        parts: http::request::Parts,
        shared: Arc<Shared<C, BufferBody>>,
    ) -> Self {
        let replay = HttpReplay {
            parts,
            data: Bytes::new(),
            trailers: None,
            _body: PhantomData,
        };
        ResponseFuture {
            kind: Kind::Attempts {
                attempts: Attempts::new(fut, svc, replay, shared),
            },
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<RetryBody<B>>, Response = http::Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classify<http::Response<ResB>>,
{
    type Output = Result<http::Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Once { fut } => return fut.poll(cx).map_err(Into::into),
                KindProj::Single {
                    fut,
                    shared,
                    target,
                } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    if let Some((reason, _)) = verdict(shared, &result) {
                        give_up(shared, 1, reason, |e| match target {
                            Some((method, uri)) => describe_http(e, method, uri),
                            None => e,
                        });
                    }
                    return Poll::Ready(result);
                }
                KindProj::Attempts { attempts } => return attempts.poll(cx),
                KindProj::Buffering { buffering } => {
                    let Some(b) = buffering.as_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    match ready!(poll_buffer(b, cx)) {
                        Err(e) => {
                            *buffering = None;
                            return Poll::Ready(Err(e));
                        }
                        Ok(complete) => {
                            let Some(b) = buffering.take() else {
                                unreachable!("checked above")
                            };
                            start(b, complete)
                        }
                    }
                }
            };
            kind.set(next);
        }
    }
}

/// Reads frames until the body ends (`true`) or goes over the limit (`false`).
fn poll_buffer<S, B, C>(
    b: &mut Buffering<S, B, C>,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, BoxError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    b.collect
        .poll_collect(b.body.as_mut(), cx, b.shared.max_body)
        .map_err(Into::into)
}

/// Makes the first attempt once the body is read (or found too large).
fn start<S, B, C>(b: Buffering<S, B, C>, complete: bool) -> Kind<S, B, C>
where
    S: Service<Request<RetryBody<B>>>,
{
    let Buffering {
        body,
        collect,
        parts,
        mut svc,
        shared,
    } = b;
    if !complete {
        shared.stats.body_too_large.fetch_add(1, Relaxed);
        tracing::debug!(
            limit = shared.max_body,
            "retry: request body over the buffer limit; sent once, not retried"
        );
        // Trailers come last, so none were read yet.
        let req = Request::from_parts(parts, RetryBody::partial(collect.into_bytes(), body));
        return Kind::Once { fut: svc.call(req) };
    }
    drop(body);
    let (data, trailers) = collect.into_parts();
    let mut replay = HttpReplay {
        parts,
        data,
        trailers,
        _body: PhantomData,
    };
    let Some(first) = replay.next(&BufferBody, false) else {
        unreachable!("http requests always replay")
    };
    let fut = svc.call(first);
    Kind::Attempts {
        attempts: Attempts::new(fut, svc, replay, shared),
    }
}

impl<S, B, C> std::fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Once { .. } | Kind::Single { .. } => "once",
            Kind::Buffering { .. } => "buffering",
            Kind::Attempts { attempts } => match attempts.state {
                State::Calling { .. } => "calling",
                State::Sleeping { .. } => "backing off",
                State::Readying { .. } => "waiting for readiness",
            },
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    /// The response future of [`Retry`](crate::Retry) built with
    /// [`clone_request`](crate::RetryBuilder::clone_request).
    pub struct CloneResponseFuture<S, Req, C, F>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: CloneKind<S, Req, C, F>,
    }
}

pin_project! {
    #[project = CloneKindProj]
    enum CloneKind<S, Req, C, F>
    where
        S: Service<Req>,
    {
        Once { #[pin] fut: S::Future },
        // `max_attempts(1)`: sent once, its failure judged for `gave_up`.
        Single { #[pin] fut: S::Future, shared: Arc<Shared<C, CloneWith<F>>> },
        Attempts {
            #[pin]
            attempts: Attempts<S, Req, CloneReplay<Req>, C, CloneWith<F>>,
        },
    }
}

impl<S, Req, C, F> CloneResponseFuture<S, Req, C, F>
where
    S: Service<Req>,
{
    pub(crate) fn once(fut: S::Future) -> Self {
        CloneResponseFuture {
            kind: CloneKind::Once { fut },
        }
    }

    /// `max_attempts(1)`: sent once (the clone function is not called); a retryable failure gave up.
    pub(crate) fn single(fut: S::Future, shared: Arc<Shared<C, CloneWith<F>>>) -> Self {
        CloneResponseFuture {
            kind: CloneKind::Single { fut, shared },
        }
    }

    pub(crate) fn attempts(
        fut: S::Future,
        svc: S,
        spare: Req,
        shared: Arc<Shared<C, CloneWith<F>>>,
    ) -> Self {
        CloneResponseFuture {
            kind: CloneKind::Attempts {
                attempts: Attempts::new(fut, svc, CloneReplay { spare: Some(spare) }, shared),
            },
        }
    }
}

impl<S, Req, C, F> Future for CloneResponseFuture<S, Req, C, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: RetryHint,
    C: Classify<S::Response>,
    F: Fn(&Req) -> Option<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            CloneKindProj::Once { fut } => fut.poll(cx).map_err(Into::into),
            CloneKindProj::Single { fut, shared } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                if let Some((reason, _)) = verdict(shared, &result) {
                    give_up(shared, 1, reason, |e| e);
                }
                Poll::Ready(result)
            }
            CloneKindProj::Attempts { attempts } => attempts.poll(cx),
        }
    }
}

impl<S, Req, C, F> std::fmt::Debug for CloneResponseFuture<S, Req, C, F>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloneResponseFuture")
            .finish_non_exhaustive()
    }
}
