//! The retrying service.

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

use crate::future::{Buffering, CloneResponseFuture, ResponseFuture};
use crate::layer::{BufferBody, CloneWith, Shared};
use crate::policy::RetryHint;
use crate::RetryBody;

/// A service that retries failed requests; made by [`RetryLayer`](crate::RetryLayer).
///
/// - With [`BufferBody`] (the default) it serves `http::Request<B>` and sends its inner service
///   `http::Request<RetryBody<B>>`.
/// - With [`CloneWith`] ([`clone_request`](crate::RetryBuilder::clone_request)) it serves any request
///   type the clone function accepts, unchanged.
///
/// `poll_ready` is the inner service's. Each request that may be retried takes a clone of the inner
/// service into its response future (as tower's `Retry` does) and drives `poll_ready` on it before every
/// retry.
pub struct Retry<S, C = Grpc, R = BufferBody> {
    inner: S,
    shared: Arc<Shared<C, R>>,
}

impl<S, C, R> Retry<S, C, R> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<C, R>>) -> Self {
        Retry { inner, shared }
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

impl<S: Clone, C, R> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, R: fmt::Debug> fmt::Debug for Retry<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish()
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Retry<S, C, BufferBody>
where
    S: Service<Request<RetryBody<B>>, Response = http::Response<ResB>> + Clone,
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
        if !shared.is_retryable(&parts) {
            let req = Request::from_parts(parts, RetryBody::new(body));
            return ResponseFuture::once(self.inner.call(req));
        }
        if shared.max_attempts == 1 {
            // Nothing to buffer: no retry will be sent. The outcome is still judged, for `gave_up`
            // (the method and path are kept for its audit record only when there is an audit log).
            let target = shared
                .audit
                .is_enabled()
                .then(|| (parts.method.clone(), parts.uri.clone()));
            let req = Request::from_parts(parts, RetryBody::new(body));
            return ResponseFuture::single(self.inner.call(req), target, shared.clone());
        }
        if body.is_end_stream() {
            // Nothing to buffer: send now, keep the head and a service clone for retries.
            let first = Request::from_parts(parts.clone(), RetryBody::empty());
            let fut = self.inner.call(first);
            return ResponseFuture::attempts(fut, self.inner.clone(), parts, shared.clone());
        }
        if body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper > shared.max_body)
        {
            shared.stats.body_too_large.fetch_add(1, Relaxed);
            tracing::debug!(
                limit = shared.max_body,
                "retry: request body over the buffer limit; sent once, not retried"
            );
            let req = Request::from_parts(parts, RetryBody::new(body));
            return ResponseFuture::once(self.inner.call(req));
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
            shared: shared.clone(),
        })
    }
}

impl<S, C, F, Req> Service<Req> for Retry<S, C, CloneWith<F>>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: RetryHint,
    C: Classify<S::Response>,
    F: Fn(&Req) -> Option<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CloneResponseFuture<S, Req, C, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        shared.stats.count_request();
        if shared.max_attempts == 1 {
            // The clone function is not called: no retry will be sent. The outcome is still judged,
            // for `gave_up`.
            return CloneResponseFuture::single(self.inner.call(req), shared.clone());
        }
        match (shared.replay.0)(&req) {
            None => CloneResponseFuture::once(self.inner.call(req)),
            Some(spare) => {
                let fut = self.inner.call(req);
                CloneResponseFuture::attempts(fut, self.inner.clone(), spare, shared.clone())
            }
        }
    }
}
