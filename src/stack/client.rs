//! The client preset.

use std::fmt;
use std::task::{Context, Poll};

use http::Request;
use palisade_core::audit::Audit;
use palisade_core::health::Health;
use tower_layer::{Identity, Layer};
use tower_service::Service;

use super::part::{slot, BuildContext, Part};
use super::{Handles, StackError};

/// The client preset: **total timeout → hedge → retry → breaker → adaptive → per-try timeout →
/// bulkhead → chaos → transport** (see the [module docs](super) for why).
///
/// [`ClientStack::tonic`] starts a builder for a tonic `Channel`: the stack's errors become
/// `tonic::Status` (outermost `StatusLayer`) and the hedge and retry layers' replayable request bodies
/// are turned back into tonic's body below retry, so the result is a tonic transport.
/// [`ClientStack::builder`] starts one for any other `Service<http::Request<_>>` (a hyper client, say).
///
/// ```
/// # #[cfg(feature = "full")] {
/// use palisade::breaker::CircuitBreakerLayer;
/// use palisade::retry::{Backoff, RetryLayer};
/// use palisade::stack::ClientStack;
/// use palisade::timeout::TimeoutLayer;
/// use std::time::Duration;
///
/// let stack = ClientStack::tonic()
///     .total_timeout(TimeoutLayer::builder().timeout(Duration::from_secs(5)).propagate_grpc_timeout(true))
///     .retry(RetryLayer::builder().max_attempts(3).retry_if(|_| true))
///     .breaker(CircuitBreakerLayer::builder().name("backend"))
///     .per_try_timeout(TimeoutLayer::builder().timeout(Duration::from_millis(500)))
///     .build()
///     .unwrap();
/// assert!(stack.handles().retry().is_some());
/// // let client = MyServiceClient::new(tower::ServiceBuilder::new().layer(stack).service(channel));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientStack<
    O = Identity,
    T = Identity,
    H = Identity,
    R = Identity,
    A = Identity,
    C = Identity,
    L = Identity,
    P = Identity,
    B = Identity,
    X = Identity,
> {
    outer: O,
    total_timeout: T,
    hedge: H,
    retry: R,
    adapt: A,
    breaker: C,
    adaptive: L,
    per_try_timeout: P,
    bulkhead: B,
    chaos: X,
    handles: Handles,
}

impl ClientStack {
    /// A builder for any HTTP client service, with every slot empty.
    ///
    /// Its errors are the layers' `BoxError`s. With a retry slot, the transport receives the retry
    /// layer's replayable body ([`RetryBody`](palisade_retry::RetryBody)); give the builder a
    /// [`ToBodyLayer`] with [`adapt_body`](ClientStackBuilder::adapt_body) if the transport wants another.
    pub fn builder() -> ClientStackBuilder {
        ClientStackBuilder {
            health: None,
            audit: None,
            outer: Identity::new(),
            total_timeout: Identity::new(),
            hedge: Identity::new(),
            retry: Identity::new(),
            adapt: Identity::new(),
            breaker: Identity::new(),
            adaptive: Identity::new(),
            per_try_timeout: Identity::new(),
            bulkhead: Identity::new(),
            chaos: Identity::new(),
        }
    }

    /// A builder for a tonic `Channel` (or any tonic transport): errors become `tonic::Status`, and the
    /// request body is turned back into `tonic::body::Body` below the retry layer.
    #[cfg(feature = "tonic")]
    pub fn tonic() -> ClientStackBuilder<
        crate::rescue::grpc::StatusLayer,
        Identity,
        Identity,
        Identity,
        ToBodyLayer<TonicBody>,
    > {
        ClientStack::builder()
            .outer(crate::rescue::grpc::StatusLayer::new())
            .adapt_body(ToBodyLayer::new(TonicBody))
    }
}

impl<O, T, H, R, A, C, L, P, B, X> ClientStack<O, T, H, R, A, C, L, P, B, X> {
    /// The handles of every layer in the stack, and the shared health and audit.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }
}

impl<S, O, T, H, R, A, C, L, P, B, X> Layer<S> for ClientStack<O, T, H, R, A, C, L, P, B, X>
where
    X: Layer<S>,
    B: Layer<X::Service>,
    P: Layer<B::Service>,
    L: Layer<P::Service>,
    C: Layer<L::Service>,
    A: Layer<C::Service>,
    R: Layer<A::Service>,
    H: Layer<R::Service>,
    T: Layer<H::Service>,
    O: Layer<T::Service>,
{
    type Service = O::Service;

    fn layer(&self, inner: S) -> Self::Service {
        let svc = self.chaos.layer(inner);
        let svc = self.bulkhead.layer(svc);
        let svc = self.per_try_timeout.layer(svc);
        let svc = self.adaptive.layer(svc);
        let svc = self.breaker.layer(svc);
        let svc = self.adapt.layer(svc);
        let svc = self.retry.layer(svc);
        let svc = self.hedge.layer(svc);
        let svc = self.total_timeout.layer(svc);
        self.outer.layer(svc)
    }
}

/// Builds a [`ClientStack`]: each slot takes that layer's builder (or `Option` of it, or nothing).
#[derive(Debug)]
pub struct ClientStackBuilder<
    O = Identity,
    T = Identity,
    H = Identity,
    R = Identity,
    A = Identity,
    C = Identity,
    L = Identity,
    P = Identity,
    B = Identity,
    X = Identity,
> {
    health: Option<Health>,
    audit: Option<Audit>,
    outer: O,
    total_timeout: T,
    hedge: H,
    retry: R,
    adapt: A,
    breaker: C,
    adaptive: L,
    per_try_timeout: P,
    bulkhead: B,
    chaos: X,
}

impl<O, T, H, R, A, C, L, P, B, X> ClientStackBuilder<O, T, H, R, A, C, L, P, B, X> {
    /// The health handle every layer registers with (default: a fresh one).
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// The audit log every layer records to (default: disabled).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = Some(audit.clone());
        self
    }

    /// The outermost layer, already built: `StatusLayer` for tonic ([`ClientStack::tonic`] sets it).
    pub fn outer<N>(self, part: N) -> ClientStackBuilder<N, T, H, R, A, C, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: part,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// The timeout over every attempt and backoff: a `palisade::timeout::TimeoutLayer::builder()`.
    pub fn total_timeout<N: Part<slot::TotalTimeout>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, N, H, R, A, C, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: part,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// Hedging, outside retry: a `palisade::hedge::HedgeLayer::builder()` (or a [`Toggle`](super::Toggle)
    /// of one; an [`OwnSignal`](super::OwnSignal) keeps the builder's own `may_hedge` signal). With a
    /// breaker slot, no hedge is sent unless the breaker is closed. The layers below receive the
    /// hedge's replayable body ([`HedgeBody`](palisade_hedge::HedgeBody)); [`ClientStack::tonic`]
    /// turns it back into tonic's body below retry.
    pub fn hedge<N: Part<slot::Hedge>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, N, R, A, C, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: part,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// Retry: a `palisade::retry::RetryLayer::builder()`.
    pub fn retry<N: Part<slot::Retry>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, N, A, C, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: part,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// A layer right below retry that turns its replayable body into the body the transport takes ([`ClientStack::tonic`] sets it to a [`ToBodyLayer`] of `TonicBody`).
    pub fn adapt_body<N>(self, part: N) -> ClientStackBuilder<O, T, H, R, N, C, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: part,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// The circuit breaker: a `palisade::breaker::CircuitBreakerLayer::builder()`.
    pub fn breaker<N: Part<slot::Breaker>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, R, A, N, L, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: part,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// The adaptive concurrency limit, inside the breaker and outside the per-try timeout (so a
    /// timed-out attempt reaches it as `Elapsed`, a drop): a
    /// `palisade::adaptive::AdaptiveLayer::builder()`, or a [`Toggle`](super::Toggle) of one.
    pub fn adaptive<N: Part<slot::Adaptive>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, R, A, C, N, P, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: part,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// The timeout of one attempt: a `palisade::timeout::TimeoutLayer::builder()`.
    pub fn per_try_timeout<N: Part<slot::PerTryTimeout>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, R, A, C, L, N, B, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: part,
            bulkhead: self.bulkhead,
            chaos: self.chaos,
        }
    }

    /// The bulkhead: a `palisade::bulkhead::BulkheadLayer::builder()`.
    pub fn bulkhead<N: Part<slot::Bulkhead>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, R, A, C, L, P, N, X> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: part,
            chaos: self.chaos,
        }
    }

    /// Fault injection next to the transport: a `palisade::chaos::ChaosLayer::builder()`.
    pub fn chaos<N: Part<slot::Chaos>>(
        self,
        part: N,
    ) -> ClientStackBuilder<O, T, H, R, A, C, L, P, B, N> {
        ClientStackBuilder {
            health: self.health,
            audit: self.audit,
            outer: self.outer,
            total_timeout: self.total_timeout,
            hedge: self.hedge,
            retry: self.retry,
            adapt: self.adapt,
            breaker: self.breaker,
            adaptive: self.adaptive,
            per_try_timeout: self.per_try_timeout,
            bulkhead: self.bulkhead,
            chaos: part,
        }
    }
}

impl<O, T, H, R, A, C, L, P, B, X> ClientStackBuilder<O, T, H, R, A, C, L, P, B, X>
where
    T: Part<slot::TotalTimeout>,
    H: Part<slot::Hedge>,
    R: Part<slot::Retry>,
    C: Part<slot::Breaker>,
    L: Part<slot::Adaptive>,
    P: Part<slot::PerTryTimeout>,
    B: Part<slot::Bulkhead>,
    X: Part<slot::Chaos>,
{
    /// Gives every builder the shared health and audit, builds them (the hedge after the breaker, whose
    /// state it reads), and collects their handles.
    ///
    /// # Errors
    ///
    /// The first builder that refused its settings, named by its slot.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<
        ClientStack<
            O,
            T::Layer,
            H::Layer,
            R::Layer,
            A,
            C::Layer,
            L::Layer,
            P::Layer,
            B::Layer,
            X::Layer,
        >,
        StackError,
    > {
        let mut cx = BuildContext::new(
            self.health.unwrap_or_default(),
            self.audit.unwrap_or_else(Audit::disabled),
        );
        let total_timeout = self.total_timeout.build_part(&mut cx)?;
        let retry = self.retry.build_part(&mut cx)?;
        let breaker = self.breaker.build_part(&mut cx)?;
        let adaptive = self.adaptive.build_part(&mut cx)?;
        let per_try_timeout = self.per_try_timeout.build_part(&mut cx)?;
        let bulkhead = self.bulkhead.build_part(&mut cx)?;
        let chaos = self.chaos.build_part(&mut cx)?;
        let hedge = self.hedge.build_part(&mut cx)?;
        tracing::debug!(target: "palisade::stack", handles = ?cx.handles, "client stack built");
        Ok(ClientStack {
            outer: self.outer,
            total_timeout,
            hedge,
            retry,
            adapt: self.adapt,
            breaker,
            adaptive,
            per_try_timeout,
            bulkhead,
            chaos,
            handles: cx.handles,
        })
    }
}

/// Turns a request body of type `B` into the body a transport takes.
pub trait ConvertBody<B> {
    /// The body the transport takes.
    type Body;
    /// Converts one body.
    fn convert(&self, body: B) -> Self::Body;
}

/// Boxes any body into `tonic::body::Body`, the body a tonic `Channel` takes.
#[cfg(feature = "tonic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TonicBody;

#[cfg(feature = "tonic")]
impl<B> ConvertBody<B> for TonicBody
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<palisade_core::BoxError>,
{
    type Body = tonic::body::Body;

    fn convert(&self, body: B) -> tonic::body::Body {
        tonic::body::Body::new(body)
    }
}

/// A [`Layer`] that converts request bodies with a [`ConvertBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ToBodyLayer<Cv> {
    convert: Cv,
}

impl<Cv> ToBodyLayer<Cv> {
    /// Converts with `convert`.
    pub fn new(convert: Cv) -> Self {
        ToBodyLayer { convert }
    }
}

impl<S, Cv: Clone> Layer<S> for ToBodyLayer<Cv> {
    type Service = ToBody<S, Cv>;

    fn layer(&self, inner: S) -> ToBody<S, Cv> {
        ToBody {
            inner,
            convert: self.convert.clone(),
        }
    }
}

/// The service built by [`ToBodyLayer`].
#[derive(Clone)]
pub struct ToBody<S, Cv> {
    inner: S,
    convert: Cv,
}

impl<S: fmt::Debug, Cv> fmt::Debug for ToBody<S, Cv> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToBody")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, Cv, B> Service<Request<B>> for ToBody<S, Cv>
where
    Cv: ConvertBody<B>,
    S: Service<Request<Cv::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> S::Future {
        let (parts, body) = req.into_parts();
        self.inner
            .call(Request::from_parts(parts, self.convert.convert(body)))
    }
}
