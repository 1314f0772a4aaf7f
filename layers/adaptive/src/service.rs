//! The layer, the service and the response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use palisade_core::classify::{Classified, Classify, ErrorsOnly, Outcome};
use palisade_core::error::{self, BoxError, Elapsed, Overloaded};
use palisade_core::key::{KeyError, KeyExtractor};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Builder;
use crate::handle::AdaptiveHandle;
use crate::shared::{MissingKey, Sample, Shared, Slot, Tenant};

/// The key "extractor" of an unpartitioned limiter: every request shares the one limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

impl<Req> KeyExtractor<Req> for Unkeyed {
    type Key = ();

    #[inline]
    fn extract(&self, _req: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// What every service of one layer shares.
pub(crate) struct Inner<K, C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) keys: K,
    pub(crate) classify: C,
}

/// A [`Layer`] that puts services behind one adaptive concurrency limit. Built with
/// [`AdaptiveLayer::builder`].
///
/// Every service it makes (every route, every clone) shares one limit: `layer()` clones an `Arc`.
pub struct AdaptiveLayer<K = Unkeyed, C = ErrorsOnly> {
    inner: Arc<Inner<K, C>>,
}

impl AdaptiveLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<K, C> AdaptiveLayer<K, C> {
    pub(crate) fn from_inner(inner: Inner<K, C>) -> Self {
        AdaptiveLayer {
            inner: Arc::new(inner),
        }
    }

    /// A handle to read the limit and counts (synchronous; cheap to clone).
    pub fn handle(&self) -> AdaptiveHandle {
        AdaptiveHandle::new(self.inner.shared.clone())
    }
}

impl<K, C> Clone for AdaptiveLayer<K, C> {
    fn clone(&self) -> Self {
        AdaptiveLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<K, C> fmt::Debug for AdaptiveLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLayer")
            .field("state", &self.inner.shared)
            .finish()
    }
}

impl<S, K, C> Layer<S> for AdaptiveLayer<K, C> {
    type Service = Adaptive<S, K, C>;

    fn layer(&self, service: S) -> Self::Service {
        Adaptive {
            service,
            inner: self.inner.clone(),
        }
    }
}

/// A service behind an adaptive concurrency limit. Made by [`AdaptiveLayer`].
///
/// `poll_ready` is the inner service's; admission is decided in `call`, at once: a request within the
/// limit runs, holding its slot in the response future; one over it is refused with [`Overloaded`].
pub struct Adaptive<S, K = Unkeyed, C = ErrorsOnly> {
    service: S,
    inner: Arc<Inner<K, C>>,
}

impl<S: Clone, K, C> Clone for Adaptive<S, K, C> {
    fn clone(&self) -> Self {
        Adaptive {
            service: self.service.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for Adaptive<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adaptive")
            .field("service", &self.service)
            .field("state", &self.inner.shared)
            .finish()
    }
}

impl<S, K, C> Adaptive<S, K, C> {
    /// A handle to the limiter this service is behind.
    pub fn handle(&self) -> AdaptiveHandle {
        AdaptiveHandle::new(self.inner.shared.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S, K, C, Req> Service<Req> for Adaptive<S, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.service.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.inner.shared;
        let tenant = match &shared.tenants {
            None => None,
            Some(tenants) => match self.inner.keys.extract(&req) {
                Ok(key) => Some(tenants.get(&key, &shared.partitions)),
                Err(e) if shared.malformed_key.as_missing(&e) => match shared.missing_key {
                    MissingKey::Anonymous => Some(tenants.anonymous.clone()),
                    MissingKey::Reject => return ResponseFuture::rejected(e.into()),
                },
                Err(e) => return ResponseFuture::rejected(e.into()),
            },
        };
        let partition = tenant.as_ref().and_then(|t| t.partition);
        let Some(slot) = shared.try_acquire(partition) else {
            return self.refuse(partition);
        };
        if let Some(t) = &tenant {
            t.in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let permit = Permit {
            inner: self.inner.clone(),
            slot,
            tenant,
            started: Instant::now(),
            done: false,
        };
        ResponseFuture {
            state: State::Admitted {
                fut: self.service.call(req),
                permit: Some(permit),
            },
        }
    }
}

impl<S, K, C> Adaptive<S, K, C> {
    #[cold]
    fn refuse<F>(&self, partition: Option<usize>) -> ResponseFuture<F, K, C> {
        let shared = &self.inner.shared;
        shared.reject(partition);
        ResponseFuture::rejected(
            Overloaded::new()
                .with_retry_after(shared.retry_after)
                .into(),
        )
    }
}

/// One admitted request's slot and its start time. Dropping it gives the slot back; if the call did
/// not finish (cancelled, or a panic unwound through it) the call counts as ignored, or as a drop with
/// [`cancelled_as_drop`](crate::Builder::cancelled_as_drop).
struct Permit<K, C> {
    inner: Arc<Inner<K, C>>,
    slot: Slot,
    tenant: Option<Arc<Tenant>>,
    started: Instant,
    done: bool,
}

impl<K, C> Permit<K, C> {
    #[inline]
    fn finish(mut self, sample: Sample) {
        self.done = true;
        self.inner
            .shared
            .record(sample, self.started, self.slot.in_flight);
    }
}

impl<K, C> Drop for Permit<K, C> {
    #[inline]
    fn drop(&mut self) {
        let shared = &self.inner.shared;
        if !self.done && shared.cancelled_as_drop {
            shared.record(Sample::Drop, self.started, self.slot.in_flight);
        }
        if let Some(t) = &self.tenant {
            t.in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        shared.release(&self.slot);
    }
}

pin_project! {
    /// The response future of [`Adaptive`]: owns the request's slot while the inner future runs and
    /// reports the call's RTT (or drop) when it finishes.
    ///
    /// Dropping it at any point — a cancelled request, a panic unwinding through it — gives the slot
    /// back.
    pub struct ResponseFuture<F, K, C> {
        #[pin]
        state: State<F, K, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, K, C> {
        Admitted { #[pin] fut: F, permit: Option<Permit<K, C>> },
        Rejected { err: Option<BoxError> },
    }
}

impl<F, K, C> ResponseFuture<F, K, C> {
    fn rejected(err: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { err: Some(err) },
        }
    }
}

impl<F, K, C> fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Admitted { .. } => "admitted",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, K, C, Res, E> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { fut, permit } => {
                let res = ready!(fut.poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    let sample = match &res {
                        Ok(r) => match permit.inner.classify.classify_response(r) {
                            Classified::Ready(o) => sample_of(o),
                            // The verdict waits for the body's end: the head arrived, count its RTT.
                            Classified::AtEndOfStream(_) => Sample::Success,
                        },
                        Err(e) if error::is::<Elapsed>(&**e) => Sample::Drop,
                        Err(e) => sample_of(permit.inner.classify.classify_error(&**e)),
                    };
                    permit.finish(sample);
                }
                Poll::Ready(res)
            }
            StateProj::Rejected { err } => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

#[inline]
fn sample_of(outcome: Outcome) -> Sample {
    match outcome {
        Outcome::Success => Sample::Success,
        Outcome::Failure(_) => Sample::Drop,
        Outcome::Ignored => Sample::Ignore,
    }
}
