//! The layer, the service and the response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use palisade_core::error::BoxError;
use palisade_core::key::KeyExtractor;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Builder;
use crate::handle::RateLimitHandle;
use crate::limiter::Limiter;
use crate::store::{MemoryStore, Store};

/// A [`Layer`] limiting the request rate per tenant. Built with [`RateLimitLayer::builder`].
///
/// All services made by one layer share its buckets: `layer()` only clones an `Arc`.
pub struct RateLimitLayer<E, S = MemoryStore> {
    limiter: Arc<Limiter<E, S>>,
}

impl<E> RateLimitLayer<E> {
    /// A builder keying tenants with `extractor` (any [`KeyExtractor`] for the requests the layer
    /// will see: a header, a request extension set by authentication, the client IP, a closure).
    pub fn builder(extractor: E) -> Builder<E> {
        Builder::new(extractor)
    }
}

impl<E, S> RateLimitLayer<E, S> {
    pub(crate) fn from_limiter(limiter: Arc<Limiter<E, S>>) -> Self {
        RateLimitLayer { limiter }
    }

    /// A handle to read counters, check tenants and change tiers at runtime.
    pub fn handle(&self) -> RateLimitHandle
    where
        E: Send + Sync + 'static,
        S: Store,
    {
        RateLimitHandle::new(self.limiter.clone())
    }
}

impl<E, S> Clone for RateLimitLayer<E, S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
        }
    }
}

impl<E, S: fmt::Debug> fmt::Debug for RateLimitLayer<E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<Svc, E, S> Layer<Svc> for RateLimitLayer<E, S> {
    type Service = RateLimit<Svc, E, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// A service behind a per-tenant rate limit. Made by [`RateLimitLayer`].
pub struct RateLimit<Svc, E, S = MemoryStore> {
    inner: Svc,
    limiter: Arc<Limiter<E, S>>,
}

impl<Svc: Clone, E, S> Clone for RateLimit<Svc, E, S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<Svc: fmt::Debug, E, S: fmt::Debug> fmt::Debug for RateLimit<Svc, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<Svc, E, S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<Svc, E, S>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>>,
    Svc::Error: Into<BoxError>,
    E: KeyExtractor<Request<ReqB>>,
    S: Store,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<Svc::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.limiter.decide(&req) {
            Ok(header) => ResponseFuture {
                state: State::Called {
                    fut: self.inner.call(req),
                    header,
                },
            },
            Err(err) => ResponseFuture {
                state: State::Rejected { err: Some(err) },
            },
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`]: the inner service's future (adding the `RateLimit`
    /// header to the response if enabled), or the rejection, ready at once.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F, header: Option<HeaderValue> },
        Rejected { err: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl<F, B, Err> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, Err>>,
    Err: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, header } => {
                let res = ready!(fut.poll(cx)).map_err(Into::into);
                Poll::Ready(match (res, header.take()) {
                    (Ok(mut res), Some(value)) => {
                        // A rate limiter further in may have set its own: the inner one is stricter
                        // news only if it is there; keep it.
                        if !res.headers().contains_key(&RATELIMIT) {
                            res.headers_mut().insert(RATELIMIT, value);
                        }
                        Ok(res)
                    }
                    (res, _) => res,
                })
            }
            StateProj::Rejected { err } => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
