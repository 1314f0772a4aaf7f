//! The response future: buffering, the first attempt, the hedge timer and the race.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::Body;
use palisade_core::body::Collect;
use palisade_core::classify::Classify;
use palisade_core::deadline::refresh_grpc_timeout;
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use crate::layer::Shared;
use crate::HedgeBody;

/// The buffered request every hedge is made from.
pub(crate) struct Replay {
    pub(crate) parts: http::request::Parts,
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Replay {
    fn request<B>(&self) -> Request<HedgeBody<B>> {
        // Cloning `Bytes` is a reference count; the head (with its extensions, e.g. a `Deadline`) is
        // cloned as it came, `Idempotency-Key` included.
        let body = HedgeBody::buffered(self.data.clone(), self.trailers.clone());
        Request::from_parts(self.parts.clone(), body)
    }
}

pin_project! {
    #[project = PrimaryProj]
    enum Primary<F> {
        Running { #[pin] fut: F },
        Done,
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        // The first attempt has not been found pending yet: no clock read, no timer.
        Unarmed,
        Waiting { #[pin] sleep: Sleep },
        // A hedge is due; `admitted` once the signal and the budget said yes (waiting for readiness).
        Due { admitted: bool },
        // No more hedges for this request.
        Off,
    }
}

pin_project! {
    /// The race between the first attempt and its hedges.
    struct Hedging<S, B, C>
    where
        S: Service<Request<HedgeBody<B>>>,
    {
        #[pin]
        primary: Primary<S::Future>,
        #[pin]
        timer: Timer,
        // Hedges in flight: boxed, one allocation per hedge sent (never on the happy path).
        hedges: Vec<Pin<Box<S::Future>>>,
        // The last failed answer, returned if every attempt fails.
        failure: Option<Result<S::Response, BoxError>>,
        replay: Replay,
        svc: S,
        shared: Arc<Shared<C>>,
        delay: Duration,
        // When the first attempt was found pending (its latency is measured from there).
        started: Option<Instant>,
        sent: u32,
    }
}

impl<S, B, C> Hedging<S, B, C>
where
    S: Service<Request<HedgeBody<B>>>,
{
    fn new(
        fut: S::Future,
        svc: S,
        replay: Replay,
        delay: Duration,
        shared: Arc<Shared<C>>,
    ) -> Self {
        Hedging {
            primary: Primary::Running { fut },
            timer: Timer::Unarmed,
            hedges: Vec::new(),
            failure: None,
            replay,
            svc,
            shared,
            delay,
            started: None,
            sent: 0,
        }
    }
}

/// Records a first attempt's latency with the delay estimator (when it wants samples).
fn record<C>(shared: &Shared<C>, started: Option<Instant>) {
    if shared.samples {
        let now = Instant::now();
        let latency = started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        shared.delay.record(latency, now);
    }
}

impl<S, B, C, ResB> Future for Hedging<S, B, C>
where
    S: Service<Request<HedgeBody<B>>, Response = http::Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify<http::Response<ResB>>,
{
    type Output = Result<http::Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared<C> = this.shared;
        let stats = &shared.stats;
        loop {
            // The first attempt.
            if let PrimaryProj::Running { fut } = this.primary.as_mut().project() {
                if let Poll::Ready(r) = fut.poll(cx) {
                    let r = r.map_err(Into::into);
                    this.primary.set(Primary::Done);
                    record(shared, *this.started);
                    if shared.is_good(&r) {
                        if !this.hedges.is_empty() {
                            stats.cancelled.fetch_add(this.hedges.len() as u64, Relaxed);
                            this.hedges.clear();
                        }
                        this.timer.set(Timer::Off);
                        return Poll::Ready(r);
                    }
                    *this.failure = Some(r);
                }
            }
            // The hedges.
            let mut i = 0;
            while i < this.hedges.len() {
                let Poll::Ready(r) = this.hedges[i].as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                let r = r.map_err(Into::into);
                drop(this.hedges.swap_remove(i));
                if !shared.is_good(&r) {
                    *this.failure = Some(r);
                    continue;
                }
                // A hedge won: drop every other attempt now, so their guards give everything back.
                let mut losers = this.hedges.len() as u64;
                this.hedges.clear();
                if matches!(this.primary.as_ref().get_ref(), Primary::Running { .. }) {
                    losers += 1;
                    this.primary.set(Primary::Done);
                    // Cut short: the time it had run is a lower bound of its latency.
                    record(shared, *this.started);
                }
                stats.cancelled.fetch_add(losers, Relaxed);
                stats.hedge_wins.fetch_add(1, Relaxed);
                this.timer.set(Timer::Off);
                return Poll::Ready(r);
            }
            let primary_running =
                matches!(this.primary.as_ref().get_ref(), Primary::Running { .. });
            if !primary_running && this.hedges.is_empty() {
                // Every attempt failed (a hedge is not a retry: none is sent after that).
                this.timer.set(Timer::Off);
                return Poll::Ready(
                    this.failure
                        .take()
                        .unwrap_or_else(|| Err("hedge future polled after completion".into())),
                );
            }
            // The next hedge.
            match this.timer.as_mut().project() {
                TimerProj::Off => return Poll::Pending,
                TimerProj::Unarmed => {
                    let now = Instant::now();
                    *this.started = Some(now);
                    if this.delay.is_zero() {
                        this.timer.set(Timer::Due { admitted: false });
                    } else {
                        this.timer.set(Timer::Waiting {
                            sleep: sleep_until(now + *this.delay),
                        });
                    }
                }
                TimerProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.timer.set(Timer::Due { admitted: false });
                }
                TimerProj::Due { admitted } => {
                    if !*admitted {
                        if !shared.admit_hedge() {
                            this.timer.set(Timer::Off);
                            return Poll::Pending;
                        }
                        *admitted = true;
                    }
                    match this.svc.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let e: BoxError = e.into();
                            tracing::debug!(error = %e, "hedge: the service cannot take a hedge");
                            stats.refund();
                            this.timer.set(Timer::Off);
                            continue;
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    let mut req = this.replay.request::<B>();
                    // The time left of a propagating timeout's deadline becomes its `grpc-timeout`;
                    // past the deadline, no hedge is sent.
                    if refresh_grpc_timeout(&mut req).is_err() {
                        stats.refund();
                        stats.deadline_passed.fetch_add(1, Relaxed);
                        this.timer.set(Timer::Off);
                        continue;
                    }
                    let fut = this.svc.call(req);
                    this.hedges.push(Box::pin(fut));
                    stats.hedges.fetch_add(1, Relaxed);
                    *this.sent += 1;
                    if *this.sent >= shared.max_hedges {
                        this.timer.set(Timer::Off);
                    } else if this.delay.is_zero() {
                        this.timer.set(Timer::Due { admitted: false });
                    } else {
                        this.timer.set(Timer::Waiting {
                            sleep: sleep_until(Instant::now() + *this.delay),
                        });
                    }
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
    pub(crate) delay: Duration,
    pub(crate) shared: Arc<Shared<C>>,
}

pin_project! {
    /// The response future of [`Hedge`](crate::Hedge).
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<HedgeBody<B>>>,
    {
        #[pin]
        kind: Kind<S, B, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B, C>
    where
        S: Service<Request<HedgeBody<B>>>,
    {
        // Sent once: not hedgeable, or too large to buffer.
        Once { #[pin] fut: S::Future },
        // Sent once, its latency measured for the delay estimator (which has no estimate yet).
        Measured {
            #[pin]
            fut: S::Future,
            started: Option<Instant>,
            shared: Arc<Shared<C>>,
        },
        // Reading the body before the first attempt.
        Buffering { buffering: Option<Buffering<S, B, C>> },
        Hedging { #[pin] hedging: Hedging<S, B, C> },
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<HedgeBody<B>>>,
{
    /// Sent once; measured if the estimator wants samples.
    pub(crate) fn single(fut: S::Future, shared: &Arc<Shared<C>>) -> Self {
        let kind = if shared.samples {
            Kind::Measured {
                fut,
                started: None,
                shared: shared.clone(),
            }
        } else {
            Kind::Once { fut }
        };
        ResponseFuture { kind }
    }

    pub(crate) fn once(fut: S::Future) -> Self {
        ResponseFuture {
            kind: Kind::Once { fut },
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
    pub(crate) fn hedging(
        fut: S::Future,
        svc: S,
        parts: http::request::Parts,
        delay: Duration,
        shared: Arc<Shared<C>>,
    ) -> Self {
        let replay = Replay {
            parts,
            data: Bytes::new(),
            trailers: None,
        };
        ResponseFuture {
            kind: Kind::Hedging {
                hedging: Hedging::new(fut, svc, replay, delay, shared),
            },
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<HedgeBody<B>>, Response = http::Response<ResB>>,
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
                KindProj::Hedging { hedging } => return hedging.poll(cx),
                KindProj::Measured {
                    fut,
                    started,
                    shared,
                } => {
                    return match fut.poll(cx) {
                        Poll::Ready(r) => {
                            record(shared, *started);
                            Poll::Ready(r.map_err(Into::into))
                        }
                        Poll::Pending => {
                            if started.is_none() {
                                *started = Some(Instant::now());
                            }
                            Poll::Pending
                        }
                    };
                }
                KindProj::Buffering { buffering } => {
                    let Some(b) = buffering.as_mut() else {
                        return Poll::Ready(Err("hedge future polled after completion".into()));
                    };
                    let complete = b
                        .collect
                        .poll_collect(b.body.as_mut(), cx, b.shared.max_body);
                    match ready!(complete) {
                        Err(e) => {
                            *buffering = None;
                            return Poll::Ready(Err(e.into()));
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

/// Makes the first attempt once the body is read (or found too large).
fn start<S, B, C>(b: Buffering<S, B, C>, complete: bool) -> Kind<S, B, C>
where
    S: Service<Request<HedgeBody<B>>>,
{
    let Buffering {
        body,
        collect,
        parts,
        mut svc,
        delay,
        shared,
    } = b;
    if !complete {
        shared.stats.body_too_large.fetch_add(1, Relaxed);
        tracing::debug!(
            limit = shared.max_body,
            "hedge: request body over the buffer limit; sent once, not hedged"
        );
        // Trailers come last, so none were read yet.
        let req = Request::from_parts(parts, HedgeBody::partial(collect.into_bytes(), body));
        return ResponseFuture::single(svc.call(req), &shared).kind;
    }
    drop(body);
    let (data, trailers) = collect.into_parts();
    let replay = Replay {
        parts,
        data,
        trailers,
    };
    let fut = svc.call(replay.request());
    Kind::Hedging {
        hedging: Hedging::new(fut, svc, replay, delay, shared),
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<HedgeBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Once { .. } | Kind::Measured { .. } => "once",
            Kind::Buffering { .. } => "buffering",
            Kind::Hedging { hedging } => match hedging.timer {
                Timer::Unarmed | Timer::Waiting { .. } => "first attempt",
                Timer::Due { .. } => "waiting for readiness",
                Timer::Off => "racing",
            },
        };
        let hedges = match &self.kind {
            Kind::Hedging { hedging } => hedging.hedges.len(),
            _ => 0,
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("hedges_in_flight", &hedges)
            .finish()
    }
}
