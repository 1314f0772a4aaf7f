//! The response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use palisade_core::classify::Classify;
use palisade_core::error::{BoxError, Rejection};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{Collect, FallbackBody, ReplayBody};
use crate::kind::{Alternate, Kind};
use crate::service::Shared;
use crate::trigger::FallbackCause;

pin_project! {
    /// The response future of the [`StaticResponse`](crate::StaticResponse),
    /// [`RespondWith`](crate::RespondWith) and [`Stale`](crate::Stale) kinds: the inner future, and what
    /// the fallback needs once it is done.
    pub struct ResponseFuture<F, K, C>
    where
        K: Kind,
    {
        #[pin]
        fut: F,
        armed: Option<(Arc<Shared<K, C>>, K::Capture)>,
    }
}

impl<F, K: Kind, C> ResponseFuture<F, K, C> {
    #[inline]
    pub(crate) fn new(fut: F, shared: Arc<Shared<K, C>>, capture: K::Capture) -> Self {
        ResponseFuture {
            fut,
            armed: Some((shared, capture)),
        }
    }
}

impl<F, K: Kind, C> fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("kind", &K::NAME)
            .finish_non_exhaustive()
    }
}

impl<F, K, C, B, E> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    K: Kind,
    C: Classify<Response<B>>,
{
    type Output = Result<Response<FallbackBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let Some((shared, capture)) = this.armed.take() else {
            return Poll::Ready(Err("fallback future polled after completion".into()));
        };
        Poll::Ready(match out {
            Ok(res) => match shared.trigger.matches_response(&res) {
                None => Ok(shared.kind.success(capture, res)),
                Some(failure) => {
                    let (parts, body) = res.into_parts();
                    let cause = FallbackCause::Response { parts, failure };
                    shared.fall_back(capture, cause, Some(body))
                }
            },
            Err(e) => {
                let e = e.into();
                if shared.trigger.matches_error::<Response<B>>(&*e) {
                    shared.fall_back(capture, FallbackCause::Error(e), None)
                } else {
                    Err(e)
                }
            }
        })
    }
}

/// The request head and body kept for the alternate service.
pub(crate) struct Replay {
    pub(crate) parts: Parts,
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

/// Reading the request body before the primary call.
struct Buffering<S, B> {
    body: Pin<Box<B>>,
    collect: Collect,
    parts: Parts,
    svc: S,
}

/// The primary's outcome, kept to return if the alternate fails.
enum Original<R> {
    Error(BoxError),
    Response(R),
}

impl<R> Original<R> {
    fn into_output<B, A>(self) -> Result<Response<FallbackBody<B, A>>, BoxError>
    where
        R: Into<Response<B>>,
    {
        match self {
            Original::Error(e) => Err(e),
            Original::Response(r) => Ok(r.into().map(FallbackBody::inner)),
        }
    }
}

pin_project! {
    /// The response future of the [`Alternate`] kind: reads the request body (up to the limit), calls the
    /// primary, and on a trigger makes a clone of the alternate service ready and calls it with the same
    /// request.
    pub struct AlternateFuture<S, A, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
        A: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, A, B>,
        shared: Arc<Shared<Alternate<A>, C>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, A, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        A: Service<Request<ReplayBody<B>>>,
    {
        Buffering { buffering: Option<Buffering<S, B>> },
        Primary { #[pin] fut: S::Future, replay: Option<Replay> },
        Readying {
            alt: A,
            req: Option<Request<ReplayBody<B>>>,
            original: Option<Original<S::Response>>,
            cause: &'static str,
        },
        Calling {
            #[pin]
            fut: A::Future,
            original: Option<Original<S::Response>>,
            cause: &'static str,
        },
        Done,
    }
}

impl<S, A, B, C> AlternateFuture<S, A, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    A: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn primary(
        fut: S::Future,
        replay: Option<Replay>,
        shared: Arc<Shared<Alternate<A>, C>>,
    ) -> Self {
        AlternateFuture {
            state: State::Primary { fut, replay },
            shared,
        }
    }

    pub(crate) fn buffering(
        svc: S,
        parts: Parts,
        body: B,
        shared: Arc<Shared<Alternate<A>, C>>,
    ) -> Self {
        AlternateFuture {
            state: State::Buffering {
                buffering: Some(Buffering {
                    body: Box::pin(body),
                    collect: Collect::default(),
                    parts,
                    svc,
                }),
            },
            shared,
        }
    }
}

impl<S, A, B, C> fmt::Debug for AlternateFuture<S, A, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    A: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Buffering { .. } => "reading the request body",
            State::Primary { .. } => "calling the primary",
            State::Readying { .. } => "waiting for the alternate to be ready",
            State::Calling { .. } => "calling the alternate",
            State::Done => "done",
        };
        f.debug_struct("AlternateFuture")
            .field("state", &state)
            .finish()
    }
}

/// Reads frames until the body ends (`true`) or goes over `limit` (`false`).
fn poll_buffer<S, B>(
    b: &mut Buffering<S, B>,
    limit: u64,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, BoxError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    b.collect
        .poll_collect(b.body.as_mut(), cx, limit)
        .map_err(Into::into)
}

fn cause_slug(err: &BoxError) -> &'static str {
    Rejection::find(&**err).map_or("error", |r| r.slug())
}

impl<S, A, B, C, ResB, AltB> Future for AlternateFuture<S, A, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    A: Service<Request<ReplayBody<B>>, Response = Response<AltB>> + Clone,
    A::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classify<Response<ResB>>,
{
    type Output = Result<Response<FallbackBody<ResB, AltB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let activity = &shared.activity;
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Buffering { buffering } => {
                    let Some(b) = buffering.as_mut() else {
                        return Poll::Ready(Err("fallback future polled after completion".into()));
                    };
                    let complete = match ready!(poll_buffer(b, shared.max_body, cx)) {
                        Ok(complete) => complete,
                        Err(e) => {
                            *buffering = None;
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let Some(Buffering {
                        body,
                        collect,
                        parts,
                        mut svc,
                    }) = buffering.take()
                    else {
                        unreachable!("checked above")
                    };
                    if complete {
                        drop(body);
                        let (data, trailers) = collect.into_parts();
                        let req = Request::from_parts(
                            parts.clone(),
                            ReplayBody::replayed(data.clone(), trailers.clone()),
                        );
                        State::Primary {
                            fut: svc.call(req),
                            replay: Some(Replay {
                                parts,
                                data,
                                trailers,
                            }),
                        }
                    } else {
                        activity
                            .body_too_large
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(
                            fallback = %activity.name,
                            limit = shared.max_body,
                            "fallback: request body over the buffer limit; sent unbuffered, no fallback"
                        );
                        // Trailers come last, so none were read yet.
                        let req = Request::from_parts(
                            parts,
                            ReplayBody::partial(collect.into_bytes(), body),
                        );
                        State::Primary {
                            fut: svc.call(req),
                            replay: None,
                        }
                    }
                }
                StateProj::Primary { fut, replay } => {
                    let (original, cause) = match ready!(fut.poll(cx)) {
                        Ok(res) => match shared.trigger.matches_response(&res) {
                            None => {
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(res.map(FallbackBody::inner)));
                            }
                            Some(_) => (Original::Response(res), "response"),
                        },
                        Err(e) => {
                            let e = e.into();
                            if !shared.trigger.matches_error::<Response<ResB>>(&*e) {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(e));
                            }
                            let cause = cause_slug(&e);
                            (Original::Error(e), cause)
                        }
                    };
                    activity.triggered();
                    match replay.take() {
                        None => {
                            activity.unavailable(cause, "request body over the buffer limit");
                            this.state.set(State::Done);
                            return Poll::Ready(original.into_output());
                        }
                        Some(Replay {
                            parts,
                            data,
                            trailers,
                        }) => State::Readying {
                            alt: shared.kind.service.clone(),
                            req: Some(Request::from_parts(
                                parts,
                                ReplayBody::replayed(data, trailers),
                            )),
                            original: Some(original),
                            cause,
                        },
                    }
                }
                StateProj::Readying {
                    alt,
                    req,
                    original,
                    cause,
                } => {
                    let cause = *cause;
                    match ready!(alt.poll_ready(cx)) {
                        Ok(()) => {
                            let (Some(req), Some(original)) = (req.take(), original.take()) else {
                                unreachable!("set together")
                            };
                            State::Calling {
                                fut: alt.call(req),
                                original: Some(original),
                                cause,
                            }
                        }
                        Err(e) => {
                            let e: BoxError = e.into();
                            tracing::debug!(fallback = %activity.name, error = %e, "fallback: alternate service not ready");
                            activity.alternate_failed(cause);
                            let original = original.take();
                            this.state.set(State::Done);
                            return Poll::Ready(match original {
                                Some(o) => o.into_output(),
                                None => Err(e),
                            });
                        }
                    }
                }
                StateProj::Calling {
                    fut,
                    original,
                    cause,
                } => {
                    let cause = *cause;
                    let out = ready!(fut.poll(cx));
                    let original = original.take();
                    this.state.set(State::Done);
                    return Poll::Ready(match out {
                        Ok(res) => {
                            activity.served(cause);
                            Ok(res.map(FallbackBody::alternate))
                        }
                        Err(e) => {
                            let e: BoxError = e.into();
                            tracing::debug!(fallback = %activity.name, error = %e, "fallback: alternate service failed");
                            activity.alternate_failed(cause);
                            match original {
                                Some(o) => o.into_output(),
                                None => Err(e),
                            }
                        }
                    });
                }
                StateProj::Done => {
                    return Poll::Ready(Err("fallback future polled after completion".into()))
                }
            };
            this.state.set(next);
        }
    }
}
