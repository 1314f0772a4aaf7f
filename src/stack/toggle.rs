//! [`Toggle`]: a layer present or absent at run time that, unlike [`Maybe`](super::Maybe), keeps the
//! response type and the written-out type names of the stack the same size.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::part::{slot, BuildContext, Part};
use super::StackError;

/// How a request goes past a [`Passthrough`] layer when the layer is absent: unchanged, or with its
/// body wrapped the way the layer would have wrapped it, so that the services below see one request
/// type either way.
pub trait Passthrough<Req> {
    /// The request the inner service receives, present or absent.
    type Passed;

    /// The request as it goes to the inner service when the layer is absent.
    fn pass(req: Req) -> Self::Passed;
}

/// A layer that may be absent, for layers that do not change the response type (the adaptive limit,
/// hedging): `Toggle::new(Some(layer))` wraps the service, `Toggle::new(None)` passes requests through
/// ([`Passthrough`]).
///
/// Where [`Maybe`](super::Maybe) names both branches in its service, future and body types — so each
/// level doubles the written-out size of the stack's types — a `Toggle`'s service and future name the
/// inner service once, and the response is the inner one's. A slot given `Toggle::new(Option<builder>)`
/// becomes a `Toggle` of the built layer.
///
/// The cost when absent is one branch on an enum per call.
///
/// ```
/// use palisade::adaptive::AdaptiveLayer;
/// use palisade::stack::{ServerStack, Toggle};
///
/// let configured: Option<palisade::adaptive::Builder> = Some(AdaptiveLayer::builder().name("api"));
/// let stack = ServerStack::builder().adaptive(Toggle::new(configured)).build().unwrap();
/// assert!(stack.handles().adaptive().is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Toggle<L>(Option<L>);

impl<L> Toggle<L> {
    /// Present when `layer` is `Some`.
    pub fn new(layer: Option<L>) -> Self {
        Toggle(layer)
    }

    /// Whether the layer is present.
    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }

    /// The layer, if present.
    pub fn get(&self) -> Option<&L> {
        self.0.as_ref()
    }
}

impl<S: slot::Slot, P: Part<S>> Part<S> for Toggle<P> {
    type Layer = Toggle<P::Layer>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        match self.0 {
            Some(part) => Ok(Toggle(Some(part.build_part(cx)?))),
            None => Ok(Toggle(None)),
        }
    }
}

impl<S, L: Layer<S>> Layer<S> for Toggle<L> {
    type Service = ToggleService<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        ToggleService {
            branch: match &self.0 {
                Some(layer) => Branch::On(layer.layer(inner)),
                None => Branch::Off(inner),
            },
        }
    }
}

/// The service built by [`Toggle`]: the layer's service, or the inner service with requests passed
/// through.
pub struct ToggleService<S, L: Layer<S>> {
    branch: Branch<L::Service, S>,
}

enum Branch<A, S> {
    On(A),
    Off(S),
}

impl<S: Clone, L: Layer<S>> Clone for ToggleService<S, L>
where
    L::Service: Clone,
{
    fn clone(&self) -> Self {
        ToggleService {
            branch: match &self.branch {
                Branch::On(a) => Branch::On(a.clone()),
                Branch::Off(s) => Branch::Off(s.clone()),
            },
        }
    }
}

impl<S: fmt::Debug, L: Layer<S>> fmt::Debug for ToggleService<S, L>
where
    L::Service: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.branch {
            Branch::On(a) => f.debug_tuple("ToggleService::On").field(a).finish(),
            Branch::Off(s) => f.debug_tuple("ToggleService::Off").field(s).finish(),
        }
    }
}

impl<S, L, Req> Service<Req> for ToggleService<S, L>
where
    L: Layer<S> + Passthrough<Req>,
    L::Service: Service<Req>,
    <L::Service as Service<Req>>::Error: Into<BoxError>,
    S: Service<L::Passed, Response = <L::Service as Service<Req>>::Response>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ToggleFuture<<L::Service as Service<Req>>::Future, S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.branch {
            Branch::On(a) => a.poll_ready(cx).map_err(Into::into),
            Branch::Off(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match &mut self.branch {
            Branch::On(a) => ToggleFuture {
                inner: Either::On { inner: a.call(req) },
            },
            Branch::Off(s) => ToggleFuture {
                inner: Either::Off {
                    inner: s.call(L::pass(req)),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`ToggleService`].
    pub struct ToggleFuture<FA, FS> {
        #[pin]
        inner: Either<FA, FS>,
    }
}

pin_project! {
    #[project = EitherProj]
    enum Either<FA, FS> {
        On { #[pin] inner: FA },
        Off { #[pin] inner: FS },
    }
}

impl<FA, FS> fmt::Debug for ToggleFuture<FA, FS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Either::On { .. } => "ToggleFuture::On",
            Either::Off { .. } => "ToggleFuture::Off",
        })
    }
}

impl<FA, FS, R, EA, ES> Future for ToggleFuture<FA, FS>
where
    FA: Future<Output = Result<R, EA>>,
    FS: Future<Output = Result<R, ES>>,
    EA: Into<BoxError>,
    ES: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            EitherProj::On { inner } => inner.poll(cx).map_err(Into::into),
            EitherProj::Off { inner } => inner.poll(cx).map_err(Into::into),
        }
    }
}

#[cfg(feature = "adaptive")]
impl<K, C, Req> Passthrough<Req> for palisade_adaptive::AdaptiveLayer<K, C> {
    type Passed = Req;

    #[inline]
    fn pass(req: Req) -> Req {
        req
    }
}

#[cfg(feature = "hedge")]
impl<C, B> Passthrough<http::Request<B>> for palisade_hedge::HedgeLayer<C> {
    type Passed = http::Request<palisade_hedge::HedgeBody<B>>;

    #[inline]
    fn pass(req: http::Request<B>) -> Self::Passed {
        req.map(palisade_hedge::HedgeBody::new)
    }
}
