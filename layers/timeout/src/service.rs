//! The timeout service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use palisade_core::deadline::Scope;
use palisade_core::error::BoxError;
use tower_service::Service;

use crate::deadline::propagate;
use crate::future::ResponseFuture;
use crate::layer::{Config, NoOverride, OverrideTimeout};

/// A service that fails requests with [`Elapsed`](palisade_core::error::Elapsed) when the inner service
/// does not answer within the request's budget. Made by [`TimeoutLayer`](crate::TimeoutLayer).
///
/// `poll_ready` delegates to the inner service (readiness is not part of the budget); the budget is
/// decided in `call`.
pub struct Timeout<S, O = NoOverride> {
    inner: S,
    config: Arc<Config<O>>,
}

impl<S, O> Timeout<S, O> {
    pub(crate) fn new(inner: S, config: Arc<Config<O>>) -> Self {
        Timeout { inner, config }
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

    #[cfg(test)]
    pub(crate) fn config(&self) -> &Arc<Config<O>> {
        &self.config
    }
}

impl<S: Clone, O> Clone for Timeout<S, O> {
    fn clone(&self) -> Self {
        Timeout {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, O> fmt::Debug for Timeout<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, O, B> Service<Request<B>> for Timeout<S, O>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    O: OverrideTimeout<Request<B>>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &*self.config;
        let (mut budget, mut own) = config.budget(&req);
        if config.propagate_grpc && !budget.is_zero() {
            // The only extension work and clock read of this layer, and only when propagating: cap by a
            // deadline already on the request, record ours, write `grpc-timeout`.
            let capped = propagate(&mut req, budget);
            own &= capped == budget;
            budget = capped;
        }
        if budget.is_zero() {
            // The deadline passed before the call (`grpc-timeout: 0m`, a zero override, an outer
            // deadline already gone): starting work nobody waits for would only add load.
            return ResponseFuture::expired();
        }
        let scope = Scope::new();
        let inner = scope.enter(|| self.inner.call(req));
        ResponseFuture::new(inner, budget, own, scope)
    }
}
