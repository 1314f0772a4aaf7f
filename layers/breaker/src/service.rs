//! The layers, services and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use palisade_core::classify::{Classified, Classify, ClassifyBody, OnOutcome, Outcome};
use palisade_core::deadline::Scope;
use palisade_core::error::{BoxError, CircuitOpen};
use palisade_core::key::KeyExtractor;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Builder;
use crate::handle::{BreakerHandle, KeyedBreakerHandle};
use crate::machine::{Admission, Recorded, Role};
use crate::shared::{Circuit, Keyed};

/// A [`Layer`] that wraps services in one circuit breaker. Built with [`CircuitBreakerLayer::builder`].
///
/// All services made by one layer share one circuit: `layer()` only clones an `Arc`.
pub struct CircuitBreakerLayer<C = palisade_core::classify::Grpc> {
    circuit: Arc<Circuit<C>>,
}

impl CircuitBreakerLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<C> CircuitBreakerLayer<C> {
    pub(crate) fn from_circuit(circuit: Arc<Circuit<C>>) -> Self {
        CircuitBreakerLayer { circuit }
    }

    /// A handle to read and steer the circuit (synchronous; cheap to clone).
    pub fn handle(&self) -> BreakerHandle
    where
        C: Send + Sync + 'static,
    {
        BreakerHandle::new(self.circuit.clone())
    }
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            circuit: self.circuit.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("circuit", &self.circuit)
            .finish()
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> CircuitBreaker<S, C> {
        CircuitBreaker {
            inner,
            circuit: self.circuit.clone(),
            refusing: false,
        }
    }
}

/// A service behind a circuit breaker. Made by [`CircuitBreakerLayer`].
///
/// # Readiness
///
/// A breaker that refuses must refuse at once, even when the inner service is not ready (a saturated
/// concurrency limit, a full channel buffer): waiting for capacity only to be refused is the opposite
/// of failing fast. So `poll_ready` looks at the circuit first:
///
/// - **Refusing** (forced open; Open and its wait not over; HalfOpen with every probe slot taken):
///   `poll_ready` returns `Ready(Ok(()))` *without polling the inner service*, and the service
///   remembers that it vouched for a refusal. The next `call` refuses with [`CircuitOpen`] and never
///   calls the inner service — also if the circuit started admitting in between (its wait ended, an
///   operator closed it): the inner service was never made ready, so calling it would break its
///   contract (a `ConcurrencyLimit` panics). Such a call gets `CircuitOpen` with no `retry_after`, and
///   the next `poll_ready` waits for the inner service as usual.
/// - **Otherwise** (Closed, a probe slot free, the wait over, Disabled, MetricsOnly): `poll_ready`
///   delegates to the inner service, and `call` decides admission as always (one atomic load when
///   Closed). A caller already waiting in `poll_ready` when the circuit opens is woken by the inner
///   service, not by the breaker.
///
/// The vouched-for refusal belongs to this instance: a clone starts without it, as it starts without
/// the inner service's readiness. A readiness the inner service granted *before* the circuit began to
/// refuse stays with this instance (a `ConcurrencyLimit` permit is held by it until it is called again
/// or dropped), as it would with any caller that polls and does not call.
///
/// Behind a load balancer (`tower::balance`, a multi-endpoint tonic channel), a refusing endpoint
/// therefore looks *ready*, and a power-of-two-choices balancer may prefer it. Put the breaker where it
/// fails fast for the caller (around the balanced service, as `ClientStack` does), or take open
/// endpoints out of the balancer's set through the handle's state, rather than one breaker per endpoint
/// inside the balancer.
///
/// A [`KeyedCircuitBreaker`] cannot do the same: the key, and so the circuit, is known only in `call`.
pub struct CircuitBreaker<S, C = palisade_core::classify::Grpc> {
    inner: S,
    circuit: Arc<Circuit<C>>,
    /// `poll_ready` returned `Ready` without the inner service because the circuit refused: the next
    /// `call` refuses without calling it.
    refusing: bool,
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            circuit: self.circuit.clone(),
            refusing: false,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("circuit", &self.circuit)
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResB>>,
    ResB: http_body::Body,
{
    type Response = Response<ResponseBody<ResB, C>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Fail fast: a refusing circuit does not wait for the inner service (see "Readiness").
        if self.circuit.refuses() {
            self.refusing = true;
            return Poll::Ready(Ok(()));
        }
        self.refusing = false;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.refusing {
            self.refusing = false;
            return rejected(self.circuit.refuse());
        }
        dispatch(&mut self.inner, &self.circuit, req)
    }
}

#[cold]
fn rejected<F, C>(retry_after: Option<u64>) -> ResponseFuture<F, C> {
    ResponseFuture {
        state: State::Rejected {
            err: Some(CircuitOpen::new(
                retry_after.map(std::time::Duration::from_nanos),
            )),
        },
    }
}

#[inline]
fn dispatch<S, C, Req>(
    inner: &mut S,
    circuit: &Arc<Circuit<C>>,
    req: Req,
) -> ResponseFuture<S::Future, C>
where
    S: Service<Req>,
{
    match circuit.admit() {
        Admission::Admit { role, gen } => {
            // Take the reference before the request is moved: a locked increment waits for pending
            // stores to drain, and there are fewer of them now.
            let armed = Armed {
                circuit: circuit.clone(),
                role,
                gen,
                start: circuit.common.times_calls().then(Instant::now),
                scope: Scope::current(),
            };
            ResponseFuture {
                state: State::Called {
                    fut: inner.call(req),
                    recorder: Some(Recorder { armed: Some(armed) }),
                },
            }
        }
        Admission::Reject { retry_after } => rejected(retry_after),
    }
}

/// A [`Layer`] with one circuit per key. Built with [`Builder::keyed`].
pub struct KeyedCircuitBreakerLayer<C, K> {
    keyed: Arc<Keyed<C, K>>,
}

impl<C, K> KeyedCircuitBreakerLayer<C, K> {
    pub(crate) fn from_keyed(keyed: Arc<Keyed<C, K>>) -> Self {
        KeyedCircuitBreakerLayer { keyed }
    }

    /// A handle to read and steer the circuits (synchronous; cheap to clone).
    pub fn handle(&self) -> KeyedBreakerHandle
    where
        C: Send + Sync + 'static,
        K: Send + Sync + 'static,
    {
        KeyedBreakerHandle::new(self.keyed.clone())
    }
}

impl<C, K> Clone for KeyedCircuitBreakerLayer<C, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed.clone(),
        }
    }
}

impl<C, K> fmt::Debug for KeyedCircuitBreakerLayer<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("keyed", &self.keyed)
            .finish()
    }
}

impl<S, C, K> Layer<S> for KeyedCircuitBreakerLayer<C, K> {
    type Service = KeyedCircuitBreaker<S, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            keyed: self.keyed.clone(),
        }
    }
}

/// A service behind keyed circuit breakers. Made by [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, C, K> {
    inner: S,
    keyed: Arc<Keyed<C, K>>,
}

impl<S: Clone, C, K> Clone for KeyedCircuitBreaker<S, C, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            keyed: self.keyed.clone(),
        }
    }
}

impl<S: fmt::Debug, C, K> fmt::Debug for KeyedCircuitBreaker<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("keyed", &self.keyed)
            .finish()
    }
}

impl<S, C, K, ReqB, ResB> Service<Request<ReqB>> for KeyedCircuitBreaker<S, C, K>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResB>>,
    K: KeyExtractor<Request<ReqB>>,
    ResB: http_body::Body,
{
    type Response = Response<ResponseBody<ResB, C>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    /// Delegates to the inner service: the circuit is known only in `call`, from the request's key, so
    /// an open key's calls wait for the inner service like any other, then are refused at once in
    /// `call` without reaching it (unlike the unkeyed [`CircuitBreaker`], see its "Readiness").
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let circuit = self.keyed.circuit(&req);
        dispatch(&mut self.inner, &circuit, req)
    }
}

/// The response body: the inner body, reporting the call's outcome when it ends if the verdict needs the
/// end of the stream (gRPC trailers).
pub type ResponseBody<B, C> = ClassifyBody<B, <C as ClassifyEosOf<B>>::Eos, Recorder<C>>;

/// Names a classifier's end-of-stream type for a body type (a helper for [`ResponseBody`]).
pub trait ClassifyEosOf<B> {
    /// The classifier's end-of-stream verdict type.
    type Eos: palisade_core::classify::ClassifyEos;
}

impl<B, C: Classify<Response<B>>> ClassifyEosOf<B> for C {
    type Eos = C::Eos;
}

/// Records one admitted call's outcome in its circuit, exactly once: when the outcome is known, or when
/// it is dropped first — as a failure if the stack's own timeout cut it off, as slow if it had run past
/// the slow-call threshold, otherwise as `Ignored` (a cancelled call gives a probe slot back).
pub struct Recorder<C> {
    armed: Option<Armed<C>>,
}

struct Armed<C> {
    circuit: Arc<Circuit<C>>,
    role: Role,
    gen: u32,
    start: Option<Instant>,
    /// The deadline scope the call was made under (the nearest palisade timeout above, if any).
    scope: Option<Scope>,
}

impl<C> Recorder<C> {
    fn classifier(&self) -> &C {
        &self
            .armed
            .as_ref()
            .expect("an admitted call has an armed recorder")
            .circuit
            .common
            .classifier
    }

    #[inline]
    fn finish(&mut self, outcome: Outcome) {
        let Some(a) = self.armed.take() else { return };
        let recorded = match outcome {
            Outcome::Ignored => Recorded::IGNORED,
            _ => {
                // Timed if slow calls were tracked when the call began; judged by the threshold of
                // now (none if slow-call tracking was turned off meanwhile).
                let slow = a.start.is_some_and(|start| {
                    a.circuit
                        .common
                        .slow_threshold()
                        .is_some_and(|threshold| start.elapsed() >= threshold)
                });
                Recorded {
                    failure: outcome.is_failure(),
                    slow,
                    ignored: false,
                }
            }
        };
        a.circuit.record(a.role, a.gen, recorded);
    }
}

impl<C> OnOutcome for Recorder<C> {
    fn on_outcome(mut self, outcome: Outcome) {
        self.finish(outcome);
    }
}

impl<C> Drop for Recorder<C> {
    fn drop(&mut self) {
        if self.armed.is_some() {
            self.dropped();
        }
    }
}

impl<C> Recorder<C> {
    /// The call was dropped before its outcome was known. It counts for nothing (a probe slot comes
    /// back) unless it says something about the dependency:
    ///
    /// - dropped by the stack's own deadline (the palisade timeout the call was made under fired:
    ///   [`Scope::is_expiring`]; a timeout of another stack, e.g. a server's around the handler that
    ///   called this client stack, does not count when this stack has a timeout of its own): a
    ///   **failure**, and slow if slow calls are timed and it ran past the threshold;
    /// - dropped for another reason (the client went away) after running at least the slow-call
    ///   threshold: **slow** (not a failure: it might have succeeded).
    #[cold]
    fn dropped(&mut self) {
        let Some(a) = self.armed.take() else { return };
        let timed_out = a.scope.is_some_and(Scope::is_expiring);
        let slow = a.start.is_some_and(|start| {
            a.circuit
                .common
                .slow_threshold()
                .is_some_and(|threshold| start.elapsed() >= threshold)
        });
        let recorded = if timed_out || slow {
            Recorded {
                failure: timed_out,
                slow,
                ignored: false,
            }
        } else {
            Recorded::IGNORED
        };
        a.circuit.record(a.role, a.gen, recorded);
    }
}

impl<C> fmt::Debug for Recorder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("armed", &self.armed.is_some())
            .finish()
    }
}

pin_project! {
    /// The response future of the breaker services.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called { #[pin] fut: F, recorder: Option<Recorder<C>> },
        Rejected { err: Option<CircuitOpen> },
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classify<Response<B>>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B, C>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { err } => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
            StateProj::Called { fut, recorder } => {
                let res = ready!(fut.poll(cx));
                let mut rec = recorder
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(match res {
                    Ok(res) => match rec.classifier().classify_response(&res) {
                        Classified::Ready(outcome) => {
                            rec.finish(outcome);
                            Ok(res.map(ClassifyBody::ready))
                        }
                        Classified::AtEndOfStream(eos) => {
                            Ok(res.map(|body| ClassifyBody::deferred(body, eos, rec)))
                        }
                    },
                    Err(e) => {
                        let e = e.into();
                        let outcome = rec.classifier().classify_error(&*e);
                        rec.finish(outcome);
                        Err(e)
                    }
                })
            }
        }
    }
}
