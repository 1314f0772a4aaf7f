//! [`Maybe`]: a layer that is present or absent at run time (a config file's choice), with one type.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// A layer that may be absent: `Maybe(Some(layer))` wraps the service, `Maybe(None)` passes it
/// through. Unlike tower's `Option<L>`, the two branches may answer with different body types
/// (every palisade layer wraps the body it returns); they meet in [`MaybeBody`].
///
/// The cost when absent is one branch on an enum per call and per body frame.
///
/// The price is paid at compile time: a `MaybeBody` names both branches' body types, and the layer's
/// branch contains the inner one, so each `Maybe` doubles the written-out size of the response body type.
/// The seven slots of a configured [`ServerStack`](super::ServerStack) build comfortably; nesting further
/// `Maybe`s around a configured stack (one per route, say) can make rustc's debug info for those names
/// very large — prefer a layer configured to do nothing (e.g. an idempotency layer for no methods) there.
///
/// ```
/// use palisade::stack::Maybe;
/// use palisade::timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
/// });
/// let configured = Some(TimeoutLayer::new(Duration::from_secs(1)).unwrap());
/// let svc = Maybe::new(configured).layer(inner);
/// let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Maybe<L>(pub Option<L>);

impl<L> Maybe<L> {
    /// Present when `layer` is `Some`.
    pub fn new(layer: Option<L>) -> Self {
        Maybe(layer)
    }

    /// Whether the layer is present.
    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }
}

impl<L: Layer<S>, S> Layer<S> for Maybe<L> {
    type Service = MaybeService<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => MaybeService::On(layer.layer(inner)),
            None => MaybeService::Off(inner),
        }
    }
}

/// The service built by [`Maybe`]: the layer's service, or the inner service unchanged.
#[derive(Clone, Debug)]
pub enum MaybeService<A, S> {
    /// The layer is present.
    On(A),
    /// The layer is absent.
    Off(S),
}

impl<A, S, ReqB, BA, BS> Service<Request<ReqB>> for MaybeService<A, S>
where
    A: Service<Request<ReqB>, Response = Response<BA>>,
    A::Error: Into<BoxError>,
    S: Service<Request<ReqB>, Response = Response<BS>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<MaybeBody<BA, BS>>;
    type Error = BoxError;
    type Future = MaybeFuture<A::Future, S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            MaybeService::On(a) => a.poll_ready(cx).map_err(Into::into),
            MaybeService::Off(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self {
            MaybeService::On(a) => MaybeFuture {
                inner: Either::On { inner: a.call(req) },
            },
            MaybeService::Off(s) => MaybeFuture {
                inner: Either::Off { inner: s.call(req) },
            },
        }
    }
}

pin_project! {
    /// The response future of [`MaybeService`].
    pub struct MaybeFuture<FA, FS> {
        #[pin]
        inner: Either<FA, FS>,
    }
}

pin_project! {
    #[project = EitherProj]
    enum Either<A, B> {
        On { #[pin] inner: A },
        Off { #[pin] inner: B },
    }
}

impl<FA, FS> fmt::Debug for MaybeFuture<FA, FS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Either::On { .. } => "MaybeFuture::On",
            Either::Off { .. } => "MaybeFuture::Off",
        })
    }
}

impl<FA, FS, BA, BS, EA, ES> Future for MaybeFuture<FA, FS>
where
    FA: Future<Output = Result<Response<BA>, EA>>,
    FS: Future<Output = Result<Response<BS>, ES>>,
    EA: Into<BoxError>,
    ES: Into<BoxError>,
{
    type Output = Result<Response<MaybeBody<BA, BS>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            EitherProj::On { inner } => inner.poll(cx).map(|r| match r {
                Ok(res) => Ok(res.map(|body| MaybeBody {
                    inner: Either::On { inner: body },
                })),
                Err(e) => Err(e.into()),
            }),
            EitherProj::Off { inner } => inner.poll(cx).map(|r| match r {
                Ok(res) => Ok(res.map(|body| MaybeBody {
                    inner: Either::Off { inner: body },
                })),
                Err(e) => Err(e.into()),
            }),
        }
    }
}

pin_project! {
    /// The response body of [`MaybeService`]: the layer's body or the inner service's.
    pub struct MaybeBody<BA, BS> {
        #[pin]
        inner: Either<BA, BS>,
    }
}

impl<BA, BS> MaybeBody<BA, BS> {
    /// Whether the body came from the layer (rather than the inner service directly).
    pub fn is_from_layer(&self) -> bool {
        matches!(self.inner, Either::On { .. })
    }
}

impl<BA, BS> fmt::Debug for MaybeBody<BA, BS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Either::On { .. } => "MaybeBody::On",
            Either::Off { .. } => "MaybeBody::Off",
        })
    }
}

/// The error is the layer's body's: every palisade layer passes its inner body's error through (or
/// boxes it), so the inner service's error converts into it. Keeping a concrete error type (rather than
/// boxing it) lets layers further out that need `Body::Error: Error` — the breaker's classifying body —
/// wrap a `MaybeBody`.
impl<BA, BS> Body for MaybeBody<BA, BS>
where
    BA: Body<Data = Bytes>,
    BA::Error: Into<BoxError>,
    BS: Body<Data = Bytes>,
    BS::Error: Into<BA::Error>,
{
    type Data = Bytes;
    type Error = BA::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BA::Error>>> {
        match self.project().inner.project() {
            EitherProj::On { inner } => inner.poll_frame(cx),
            EitherProj::Off { inner } => inner
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Either::On { inner } => inner.is_end_stream(),
            Either::Off { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Either::On { inner } => inner.size_hint(),
            Either::Off { inner } => inner.size_hint(),
        }
    }
}
