//! The hedging service.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http_body::Body;
use palisade_core::body::Collect;
use palisade_core::classify::{Classify, Grpc};
use palisade_core::error::BoxError;
use tower_service::Service;

use crate::future::{Buffering, ResponseFuture};
use crate::layer::Shared;
use crate::HedgeBody;

/// A service that hedges slow, safe requests; made by [`HedgeLayer`](crate::HedgeLayer).
///
/// It serves `http::Request<B>` and sends its inner service `http::Request<`[`HedgeBody<B>`](HedgeBody)`>`
/// (over a tonic `Channel`, map it back with `.map_request(|r: Request<HedgeBody<Body>>| r.map(Body::new))`).
///
/// `poll_ready` is the inner service's. Each hedgeable request takes a clone of the inner service into
/// its response future and drives `poll_ready` on it before each hedge.
pub struct Hedge<S, C = Grpc> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C> Hedge<S, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<C>>) -> Self {
        Hedge { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for Hedge<S, C> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Hedge<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish()
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Hedge<S, C>
where
    S: Service<Request<HedgeBody<B>>, Response = http::Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classify<http::Response<ResB>>,
{
    type Response = http::Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        shared.stats.count_request();
        let (parts, body) = req.into_parts();
        if shared.max_hedges == 0 || !shared.is_hedgeable(&parts) {
            let req = Request::from_parts(parts, HedgeBody::new(body));
            return ResponseFuture::once(self.inner.call(req));
        }
        let Some(delay) = shared.delay.delay() else {
            // No delay yet (an estimator short of samples): sent once, measured for the estimator.
            let req = Request::from_parts(parts, HedgeBody::new(body));
            return ResponseFuture::single(self.inner.call(req), shared);
        };
        if body.is_end_stream() {
            // Nothing to buffer: send now, keep the head and a service clone for the hedges.
            let first = Request::from_parts(parts.clone(), HedgeBody::empty());
            let fut = self.inner.call(first);
            return ResponseFuture::hedging(fut, self.inner.clone(), parts, delay, shared.clone());
        }
        if body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper > shared.max_body)
        {
            shared.stats.body_too_large.fetch_add(1, Relaxed);
            tracing::debug!(
                limit = shared.max_body,
                "hedge: request body over the buffer limit; sent once, not hedged"
            );
            let req = Request::from_parts(parts, HedgeBody::new(body));
            return ResponseFuture::single(self.inner.call(req), shared);
        }
        // Buffer in the response future; it owns the service that was made ready, and a clone stays
        // here for the next `poll_ready`.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::buffering(Buffering {
            body: Box::pin(body),
            collect: Collect::default(),
            parts,
            svc,
            delay,
            shared: shared.clone(),
        })
    }
}
