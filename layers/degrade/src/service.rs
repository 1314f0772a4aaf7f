//! The layer, the service and the response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Request;
use palisade_core::classify::{Classified, Classify, Grpc, Outcome};
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Builder;
use crate::handle::GateHandle;
use crate::level::Level;
use crate::shared::Shared;

/// A [`Layer`] that puts services behind one degradation gate. Built with [`GateLayer::builder`].
///
/// All services made by one layer share one gate: `layer()` only clones an `Arc`.
pub struct GateLayer<C = Grpc> {
    shared: Arc<Shared<C>>,
}

impl GateLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<C> GateLayer<C> {
    pub(crate) fn from_shared(shared: Arc<Shared<C>>) -> Self {
        GateLayer { shared }
    }

    /// A handle to read and steer the gate (synchronous; cheap to clone).
    pub fn handle(&self) -> GateHandle
    where
        C: Send + Sync + 'static,
    {
        GateHandle::new(self.shared.clone())
    }
}

impl<C> Clone for GateLayer<C> {
    fn clone(&self) -> Self {
        GateLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for GateLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateLayer")
            .field("gate", &self.shared)
            .finish()
    }
}

impl<S, C> Layer<S> for GateLayer<C> {
    type Service = Gate<S, C>;

    fn layer(&self, inner: S) -> Gate<S, C> {
        Gate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service behind a degradation gate. Made by [`GateLayer`].
pub struct Gate<S, C = Grpc> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Gate<S, C> {
    fn clone(&self) -> Self {
        Gate {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Gate<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("inner", &self.inner)
            .field("gate", &self.shared)
            .finish()
    }
}

impl<S, C, ReqB> Service<Request<ReqB>> for Gate<S, C>
where
    S: Service<Request<ReqB>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Normal without automatic mode: one load, then straight through.
        let word = self.shared.core.word.load(Ordering::Relaxed);
        if word == 0 {
            return ResponseFuture {
                state: State::Passed {
                    fut: self.inner.call(req),
                },
            };
        }
        self.call_gated(word, req)
    }
}

impl<S, C> Gate<S, C> {
    fn call_gated<ReqB>(&mut self, word: u8, req: Request<ReqB>) -> ResponseFuture<S::Future, C>
    where
        S: Service<Request<ReqB>>,
    {
        let core = &self.shared.core;
        let Some(auto) = &core.auto else {
            return match core.admit(Level::from_bits(word), &req) {
                Ok(()) => ResponseFuture {
                    state: State::Passed {
                        fut: self.inner.call(req),
                    },
                },
                Err(err) => ResponseFuture {
                    state: State::Rejected { err: Some(err) },
                },
            };
        };
        let now = Instant::now();
        core.maybe_evaluate(auto, now);
        if let Err(err) = core.admit(core.level(), &req) {
            return ResponseFuture {
                state: State::Rejected { err: Some(err) },
            };
        }
        // Count it before calling, so a service that is slow to return its future still counts.
        auto.in_flight.fetch_add(1, Ordering::Relaxed);
        let tracker = Tracker {
            shared: Some(self.shared.clone()),
            start: now,
        };
        ResponseFuture {
            state: State::Tracked {
                fut: self.inner.call(req),
                tracker,
            },
        }
    }
}

/// Holds one admitted request's place in the in-flight count (automatic mode), and records its
/// latency and outcome when it finishes. Dropped unfinished (a cancelled request), it gives the place
/// back and records nothing.
struct Tracker<C> {
    shared: Option<Arc<Shared<C>>>,
    start: Instant,
}

impl<C> Tracker<C> {
    fn finish(&mut self, outcome: impl FnOnce(&C) -> Outcome) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let core = &shared.core;
        if let Some(auto) = &core.auto {
            if auto.sampling {
                let now = Instant::now();
                let outcome = outcome(&shared.classifier);
                auto.ring.push(
                    core.nanos_since_epoch(now) / 1_000_000,
                    now.saturating_duration_since(self.start),
                    outcome,
                );
            }
            auto.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<C> Drop for Tracker<C> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            if let Some(auto) = &shared.core.auto {
                auto.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

pin_project! {
    /// The response future of [`Gate`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Passed { #[pin] fut: F },
        Tracked { #[pin] fut: F, tracker: Tracker<C> },
        Rejected { err: Option<BoxError> },
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passed { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Tracked { fut, tracker } => {
                let res = ready!(fut.poll(cx)).map_err(Into::into);
                tracker.finish(|classifier| match &res {
                    Ok(res) => match classifier.classify_response(res) {
                        Classified::Ready(outcome) => outcome,
                        Classified::AtEndOfStream(_) => Outcome::Ignored,
                    },
                    Err(e) => classifier.classify_error(&**e),
                });
                Poll::Ready(res)
            }
            StateProj::Rejected { err } => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
