//! Rejections as `tonic::Status`, for gRPC clients (feature `tonic`).
//!
//! On the server side nothing tonic-specific is needed: [`RescueLayer`](super::RescueLayer) answers
//! gRPC requests with a trailers-only response that every gRPC client reads as a status. On the client
//! side, a palisade stack around a tonic `Channel` (breaker, rate limit, timeout, ...) refuses calls with
//! marker errors; [`StatusLayer`], placed outermost around that stack, turns them into `tonic::Status`
//! with the right code, so a generated client returns `Err(Status)` with `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED` instead of `UNKNOWN`. (tonic looks for a `Status` in the
//! transport error's source chain; this layer puts one there.)
//!
//! ```
//! use palisade::error::{BoxError, CircuitOpen};
//! use palisade::rescue::grpc::to_status;
//!
//! let err: BoxError = CircuitOpen::new(None).into();
//! let status = to_status(&*err);
//! assert_eq!(status.code(), tonic::Code::Unavailable);
//! assert_eq!(status.message(), "circuit open");
//! ```

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// The `tonic::Status` for an error.
///
/// A `Status` already in the chain is returned as it is; a palisade rejection becomes its gRPC code with
/// the rejection's message and, when a retry time is known, `grpc-retry-pushback-ms` metadata; anything
/// else becomes `UNKNOWN` with a generic message (the error is logged, not sent).
pub fn to_status(err: &(dyn Error + 'static)) -> Status {
    if let Some(status) = palisade_core::error::find::<Status>(err) {
        return status.clone();
    }
    let (code, message, retry_after) = super::grpc_parts(err);
    let mut status = Status::new(Code::from_i32(code.as_i32()), message);
    if let Some(after) = retry_after {
        let ms = super::saturating_ms(after);
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", MetadataValue::from(ms));
    }
    status
}

/// Turns an owned error into a `tonic::Status`, keeping a `Status` that is already one.
pub fn into_status(err: BoxError) -> Status {
    match err.downcast::<Status>() {
        Ok(status) => *status,
        Err(err) => to_status(&*err),
    }
}

/// A [`Layer`] for gRPC client stacks: errors become `tonic::Status` (boxed, so the service still fits
/// as a tonic transport). Place it outermost.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLayer;

impl StatusLayer {
    /// The layer.
    pub fn new() -> Self {
        StatusLayer
    }
}

impl<S> Layer<S> for StatusLayer {
    type Service = ToStatus<S>;

    fn layer(&self, inner: S) -> ToStatus<S> {
        ToStatus { inner }
    }
}

/// The service built by [`StatusLayer`].
#[derive(Debug, Clone)]
pub struct ToStatus<S> {
    inner: S,
}

impl<S, Req> Service<Req> for ToStatus<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ToStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Box::new(into_status(e.into())) as BoxError)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ToStatusFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`ToStatus`].
    pub struct ToStatusFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> fmt::Debug for ToStatusFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToStatusFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ToStatusFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx));
        Poll::Ready(res.map_err(|e| Box::new(into_status(e.into())) as BoxError))
    }
}
