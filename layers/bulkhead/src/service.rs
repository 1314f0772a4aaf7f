//! The layer, the service, the response future and the response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use palisade_core::error::{BoxError, Overloaded};
use palisade_core::key::{KeyError, KeyExtractor};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Builder;
use crate::handle::BulkheadHandle;
use crate::priority::{NoPriority, PriorityExtractor};
use crate::shared::{Full, MissingKey, Permit, Queued, Shared, Tenant, Waiter};

/// The key "extractor" of an unkeyed bulkhead: every request belongs to the one global pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

impl<Req> KeyExtractor<Req> for Unkeyed {
    type Key = ();

    #[inline]
    fn extract(&self, _req: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// What every service of one layer shares: the state, and how to read a request's tenant and class.
pub(crate) struct Inner<K, P> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) keys: K,
    pub(crate) priority: P,
}

/// A [`Layer`] that puts services behind one bulkhead. Built with [`BulkheadLayer::builder`].
///
/// All services made by one layer (every route, every clone) share one set of limits: `layer()` only
/// clones an `Arc`.
pub struct BulkheadLayer<K = Unkeyed, P = NoPriority> {
    inner: Arc<Inner<K, P>>,
}

impl BulkheadLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<K, P> BulkheadLayer<K, P> {
    pub(crate) fn from_inner(inner: Inner<K, P>) -> Self {
        BulkheadLayer {
            inner: Arc::new(inner),
        }
    }

    /// A handle to read counts and resize limits at runtime (synchronous; cheap to clone).
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.inner.shared.clone())
    }
}

impl<K, P> Clone for BulkheadLayer<K, P> {
    fn clone(&self) -> Self {
        BulkheadLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<K, P> fmt::Debug for BulkheadLayer<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("state", &self.inner.shared)
            .finish()
    }
}

impl<S, K, P> Layer<S> for BulkheadLayer<K, P> {
    type Service = Bulkhead<S, K, P>;

    fn layer(&self, service: S) -> Self::Service {
        Bulkhead {
            service,
            inner: self.inner.clone(),
        }
    }
}

/// A service behind a bulkhead. Made by [`BulkheadLayer`].
///
/// `poll_ready` is the inner service's: admission is decided in `call`, at once — a request is admitted,
/// queued (if a queue is configured; the wait happens in the response future, bounded by the maximum
/// wait) or refused with [`Overloaded`]. The service must be `Clone`: a queued request takes the readied
/// service with it and calls it when its turn comes, leaving a fresh clone behind.
pub struct Bulkhead<S, K = Unkeyed, P = NoPriority> {
    service: S,
    inner: Arc<Inner<K, P>>,
}

impl<S: Clone, K, P> Clone for Bulkhead<S, K, P> {
    fn clone(&self) -> Self {
        Bulkhead {
            service: self.service.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, K, P> fmt::Debug for Bulkhead<S, K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("service", &self.service)
            .field("state", &self.inner.shared)
            .finish()
    }
}

impl<S, K, P> Bulkhead<S, K, P> {
    /// A handle to the bulkhead this service is behind.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.inner.shared.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S, K, P, ReqB, ResB> Service<Request<ReqB>> for Bulkhead<S, K, P>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Request<ReqB>>,
    P: PriorityExtractor<Request<ReqB>>,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Request<ReqB>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.service.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.inner.shared;
        let tenant = match &shared.tenants {
            None => None,
            Some(tenants) => match self.inner.keys.extract(&req) {
                Ok(key) => Some(tenants.get(&key)),
                Err(e) if shared.malformed_key.as_missing(&e) => match shared.missing_key {
                    MissingKey::Anonymous => Some(tenants.anonymous.clone()),
                    MissingKey::Reject => return ResponseFuture::rejected(e.into()),
                },
                Err(e) => return ResponseFuture::rejected(e.into()),
            },
        };
        let mut full = None;
        if !shared.must_queue() {
            match shared.try_acquire(tenant.as_deref()) {
                Ok(()) => {
                    let permit = Permit::new(shared.clone(), tenant);
                    return ResponseFuture::admitted(self.service.call(req), permit);
                }
                Err(f) if shared.queue.is_none() => return self.refuse(f),
                Err(f) => full = Some(f),
            }
        }
        self.enqueue(req, tenant, full)
    }
}

impl<S, K, P> Bulkhead<S, K, P> {
    #[cold]
    fn refuse<F, Req>(&self, full: Full) -> ResponseFuture<F, S, Req> {
        let shared = &self.inner.shared;
        shared.reject(full);
        ResponseFuture::rejected(overloaded(shared))
    }

    #[cold]
    fn enqueue<Req>(
        &mut self,
        req: Req,
        tenant: Option<Arc<Tenant>>,
        full: Option<Full>,
    ) -> ResponseFuture<S::Future, S, Req>
    where
        S: Service<Req> + Clone,
        P: PriorityExtractor<Req>,
    {
        let shared = &self.inner.shared;
        let class = self.inner.priority.priority(&req);
        match shared.enqueue(tenant, class, full) {
            Ok(Queued::Now(tenant)) => {
                let permit = Permit::new(shared.clone(), tenant);
                ResponseFuture::admitted(self.service.call(req), permit)
            }
            Ok(Queued::Wait(waiter)) => {
                // The readied service goes with the request; a fresh clone stays behind.
                let fresh = self.service.clone();
                let service = std::mem::replace(&mut self.service, fresh);
                let sleep = tokio::time::sleep(waiter.max_wait());
                ResponseFuture {
                    state: State::Waiting {
                        wait: Box::pin(Wait {
                            sleep,
                            waiter,
                            service: Some(service),
                            req: Some(req),
                        }),
                    },
                }
            }
            Err(_) => ResponseFuture::rejected(overloaded(shared)),
        }
    }
}

fn overloaded(shared: &Shared) -> BoxError {
    Overloaded::new()
        .with_retry_after(shared.retry_after)
        .into()
}

pin_project! {
    /// The response future of [`Bulkhead`]: owns the request's [`Permit`] while the inner future runs,
    /// or its place in the queue while it waits (at most the maximum wait).
    ///
    /// Dropping it at any point — while queued, while running, or by a panic unwinding through it —
    /// gives the slot (or the place in line) back.
    pub struct ResponseFuture<F, S, Req> {
        #[pin]
        state: State<F, S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req> {
        Admitted { #[pin] fut: F, permit: Option<Permit> },
        Waiting { wait: Pin<Box<Wait<S, Req>>> },
        Rejected { err: Option<BoxError> },
    }
}

pin_project! {
    struct Wait<S, Req> {
        #[pin]
        sleep: Sleep,
        waiter: Waiter,
        service: Option<S>,
        req: Option<Req>,
    }
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    #[inline]
    fn admitted(fut: F, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Admitted {
                fut,
                permit: Some(permit),
            },
        }
    }

    fn rejected(err: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { err: Some(err) },
        }
    }
}

impl<F, S, Req> fmt::Debug for ResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Admitted { .. } => "admitted",
            State::Waiting { .. } => "queued",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, S, Req, ResB, E> Future for ResponseFuture<F, S, Req>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    S: Service<Req, Future = F>,
    E: Into<BoxError>,
    ResB: Body,
{
    type Output = Result<Response<ResponseBody<ResB>>, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let permit = match state.as_mut().project() {
                StateProj::Admitted { fut, permit } => {
                    let res = ready!(fut.poll(cx));
                    return Poll::Ready(finish(res, permit.take()));
                }
                StateProj::Rejected { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
                StateProj::Waiting { wait } => {
                    let w = wait.as_mut().project();
                    match w.waiter.poll_permit(cx) {
                        Poll::Ready(Some(permit)) => permit,
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(overloaded(w.waiter.shared())))
                        }
                        Poll::Pending => {
                            ready!(w.sleep.poll(cx));
                            // The deadline: leave the queue, unless a permit arrived meanwhile.
                            match w.waiter.cancel() {
                                Some(permit) => permit,
                                None => {
                                    let shared = w.waiter.shared();
                                    shared.count_rejected();
                                    return Poll::Ready(Err(overloaded(shared)));
                                }
                            }
                        }
                    }
                }
            };
            // Our turn: call the service we kept ready, holding the permit.
            let StateProj::Waiting { wait } = state.as_mut().project() else {
                unreachable!("only a queued request receives a permit here")
            };
            let w = wait.as_mut().project();
            let mut service = w
                .service
                .take()
                .expect("a queued request keeps its service");
            let req = w.req.take().expect("a queued request keeps its request");
            let fut = service.call(req);
            state.set(State::Admitted {
                fut,
                permit: Some(permit),
            });
        }
    }
}

#[inline]
fn finish<B: Body, E: Into<BoxError>>(
    res: Result<Response<B>, E>,
    permit: Option<Permit>,
) -> Result<Response<ResponseBody<B>>, BoxError> {
    match res {
        Ok(res) => {
            let hold = permit
                .as_ref()
                .and_then(Permit::shared)
                .is_some_and(|s| s.hold_body);
            let permit = if hold && !res.body().is_end_stream() {
                permit
            } else {
                drop(permit);
                None
            };
            Ok(res.map(|inner| ResponseBody { inner, permit }))
        }
        Err(e) => {
            drop(permit);
            Err(e.into())
        }
    }
}

pin_project! {
    /// The response body: the inner body, holding the request's [`Permit`] until it ends (its last
    /// frame, an error, or being dropped) when the bulkhead is built with
    /// [`hold_until_body_end`](crate::Builder::hold_until_body_end). Otherwise it holds nothing and only
    /// passes frames through.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> ResponseBody<B> {
    /// Whether the body still holds a bulkhead slot.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// The inner body, giving up the slot if it holds one.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        if this.permit.is_some() {
            let ended = match &frame {
                None | Some(Err(_)) => true,
                Some(Ok(_)) => inner.is_end_stream(),
            };
            if ended {
                drop(this.permit.take());
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
