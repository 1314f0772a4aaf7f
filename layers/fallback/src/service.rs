//! The layer, the services and their shared state.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use palisade_core::classify::Classify;
use palisade_core::error::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{FallbackBody, ReplayBody};
use crate::config::Builder;
use crate::future::{AlternateFuture, Replay, ResponseFuture};
use crate::handle::{Activity, FallbackHandle};
use crate::kind::{Alternate, Kind, StaticResponse};
use crate::stale::Store;
use crate::trigger::{FallbackCause, NoResponses, Trigger};

/// State built once in `build()`, shared by the layer, its services and their futures.
pub(crate) struct Shared<K, C> {
    pub(crate) kind: K,
    pub(crate) trigger: Trigger<C>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) max_body: u64,
    pub(crate) store: Option<Arc<Store>>,
}

impl<K, C> fmt::Debug for Shared<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("activity", &self.activity)
            .finish_non_exhaustive()
    }
}

impl<K: Kind, C> Shared<K, C> {
    /// The trigger fired: serve the fallback, or give the original outcome back.
    pub(crate) fn fall_back<B>(
        &self,
        capture: K::Capture,
        cause: FallbackCause,
        body: Option<B>,
    ) -> Result<Response<FallbackBody<B>>, BoxError> {
        self.activity.triggered();
        let slug = cause.slug();
        match self.kind.fallback(capture, &cause) {
            Some(res) => {
                self.activity.served(slug);
                Ok(res.map(FallbackBody::full))
            }
            None => {
                self.activity
                    .unavailable(slug, "no fallback for this request");
                match (cause, body) {
                    (FallbackCause::Response { parts, .. }, Some(body)) => {
                        Ok(Response::from_parts(parts, FallbackBody::inner(body)))
                    }
                    (FallbackCause::Error(e), _) => Err(e),
                    (FallbackCause::Response { .. }, None) => {
                        unreachable!("a response cause comes with its body")
                    }
                }
            }
        }
    }
}

/// A [`Layer`] that serves a fallback when the inner service fails in a chosen way. Built with
/// [`FallbackLayer::builder`].
///
/// `K` is the fallback kind ([`StaticResponse`], [`RespondWith`](crate::RespondWith),
/// [`Alternate`], [`Stale`](crate::Stale)); `C` the classifier of the [`Trigger`] for responses.
/// All services made by one layer share one state (counters, stale store): `layer()` only clones an
/// `Arc`.
pub struct FallbackLayer<K = StaticResponse, C = NoResponses> {
    shared: Arc<Shared<K, C>>,
}

impl FallbackLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<K, C> FallbackLayer<K, C> {
    pub(crate) fn from_shared(shared: Arc<Shared<K, C>>) -> Self {
        FallbackLayer { shared }
    }

    /// A handle to the counters (and the stale store). Synchronous; cheap to clone.
    pub fn handle(&self) -> FallbackHandle {
        FallbackHandle::new(self.shared.activity.clone(), self.shared.store.clone())
    }
}

impl<K, C> Clone for FallbackLayer<K, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<K, C> fmt::Debug for FallbackLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, K, C> Layer<S> for FallbackLayer<K, C> {
    type Service = Fallback<S, K, C>;

    fn layer(&self, inner: S) -> Fallback<S, K, C> {
        Fallback {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service with a fallback. Made by [`FallbackLayer`].
///
/// - With [`StaticResponse`], [`RespondWith`](crate::RespondWith) and [`Stale`](crate::Stale) it
///   serves `http::Request<B>` and passes the request to its inner service unchanged.
/// - With [`Alternate`] it serves `http::Request<B>` and sends its inner service (and the alternate)
///   `http::Request<ReplayBody<B>>`, the body read into memory first.
///
/// Responses are `http::Response<FallbackBody<..>>`; errors are [`BoxError`], the inner error itself
/// when no fallback is served (so rejection markers are found as before).
pub struct Fallback<S, K = StaticResponse, C = NoResponses> {
    inner: S,
    shared: Arc<Shared<K, C>>,
}

impl<S: Clone, K, C> Clone for Fallback<S, K, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for Fallback<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, K, C> Fallback<S, K, C> {
    /// A handle to the counters (and the stale store).
    pub fn handle(&self) -> FallbackHandle {
        FallbackHandle::new(self.shared.activity.clone(), self.shared.store.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, K, C, ReqB, ResB> Service<Request<ReqB>> for Fallback<S, K, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    K: Kind,
    C: Classify<Response<ResB>>,
{
    type Response = Response<FallbackBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (req, capture) = self.shared.kind.capture(req);
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), capture)
    }
}

impl<S, A, C, B, ResB, AltB> Service<Request<B>> for Fallback<S, Alternate<A>, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    A: Service<Request<ReplayBody<B>>, Response = Response<AltB>> + Clone,
    A::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classify<Response<ResB>>,
{
    type Response = Response<FallbackBody<ResB, AltB>>;
    type Error = BoxError;
    type Future = AlternateFuture<S, A, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            let first =
                Request::from_parts(parts.clone(), ReplayBody::replayed(Bytes::new(), None));
            let fut = self.inner.call(first);
            return AlternateFuture::primary(
                fut,
                Some(Replay {
                    parts,
                    data: Bytes::new(),
                    trailers: None,
                }),
                shared.clone(),
            );
        }
        if body.size_hint().lower() > shared.max_body {
            shared
                .activity
                .body_too_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                fallback = %shared.activity.name,
                limit = shared.max_body,
                "fallback: request body over the buffer limit; sent unbuffered, no fallback"
            );
            let fut = self
                .inner
                .call(Request::from_parts(parts, ReplayBody::streamed(body)));
            return AlternateFuture::primary(fut, None, shared.clone());
        }
        // Read the body in the response future; it owns the service that was made ready, and a clone
        // stays here for the next `poll_ready`.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        AlternateFuture::buffering(svc, parts, body, shared.clone())
    }
}
