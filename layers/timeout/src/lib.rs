//! Per-request deadlines for Tower HTTP and gRPC services, the palisade way.
//!
//! [`TimeoutLayer`] fails a request with the core marker [`Elapsed`] (boxed as a [`BoxError`]) when the
//! inner service does not answer within the request's *budget*. The outermost rescue layer of a palisade
//! stack turns it into `504 Gateway Timeout`, or `DEADLINE_EXCEEDED` for gRPC.
//!
//! - **Free when fast.** The response future polls the inner future first and creates its timer only if
//!   that poll is `Pending`. A call that is ready at its first poll never reads the clock and never
//!   touches tokio's timer wheel (nor needs a tokio runtime).
//! - **Per-route and per-request budgets.** A [`TimeoutOverride`] request extension, or a closure given
//!   to [`override_with`](TimeoutBuilder::override_with), replaces the default — shorter or longer.
//! - **Deadline propagation.** Server side, [`grpc_timeout(true)`](TimeoutBuilder::grpc_timeout) honours
//!   the caller's `grpc-timeout` and [`header(..)`](TimeoutBuilder::header) a millisecond header such as
//!   `x-request-timeout`; the budget is the smaller of those and the local one. Client side,
//!   [`propagate_grpc_timeout(true)`](TimeoutBuilder::propagate_grpc_timeout) writes the effective budget
//!   as `grpc-timeout` on the requests it forwards, and records a [`Deadline`] so that retries below it
//!   send the time that is left (see [below](#retries-get-the-time-that-is-left)). Malformed headers are ignored (the local budget
//!   applies); parsing never panics or overflows (see [`headers`]).
//! - **Cancellation.** Dropping the response future drops the inner future and the timer. When the
//!   budget runs out, the inner future is dropped at once; if the budget was the layer's own (not a
//!   caller's shorter deadline), inside [`Scope::expire`](palisade_core::deadline::Scope::expire) of the request's own scope, so that a circuit breaker
//!   below counts the call as a timeout failure.
//!
//! ```
//! use palisade_core::error::{BoxError, Elapsed};
//! use palisade_core::Rejection;
//! use palisade_timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder()
//!     .timeout(Duration::from_millis(500))
//!     .build()
//!     .unwrap();
//!
//! // A slow service: answers after 2 seconds.
//! let slow = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(2)).await;
//!     Ok::<_, BoxError>(http::Response::new(()))
//! }));
//! let err = slow.oneshot(http::Request::new(())).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Elapsed>(), Some(&Elapsed::new(Duration::from_millis(500))));
//!
//! // What rescue answers for it.
//! let rejection = Rejection::find(&*err).unwrap();
//! assert_eq!(rejection.http_status(), 504);
//! assert_eq!(rejection.grpc_code().name(), "DEADLINE_EXCEEDED");
//! # }
//! ```
//!
//! # The budget of a request
//!
//! 1. the request's [`TimeoutOverride`] extension, if any; else
//! 2. the [`override_with`](TimeoutBuilder::override_with) closure's answer, if `Some`; else
//! 3. the default [`timeout`](TimeoutBuilder::timeout);
//! 4. then capped by an incoming `grpc-timeout` (if enabled) and the configured millisecond header (if
//!    any), when they are well-formed.
//!
//! A budget of zero (`grpc-timeout: 0m`, a zero override) means the deadline passed before the call: the
//! request fails with `Elapsed` at once and the inner service is not called.
//!
//! ```
//! use palisade_core::error::BoxError;
//! use palisade_timeout::{TimeoutLayer, TimeoutOverride};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder()
//!     .timeout(Duration::from_secs(1))
//!     // Exports may take a minute.
//!     .override_with(|req: &http::Request<()>| {
//!         (req.uri().path() == "/export").then_some(Duration::from_secs(60))
//!     })
//!     // Callers may ask for less.
//!     .header("x-request-timeout")
//!     .grpc_timeout(true)
//!     .build()
//!     .unwrap();
//!
//! let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, BoxError>(http::Response::new(()))
//! }));
//!
//! let req = http::Request::builder().uri("/export").body(()).unwrap();
//! assert!(svc.clone().oneshot(req).await.is_ok()); // 60 s budget: the 5 s call succeeds
//!
//! let req = http::Request::builder()
//!     .uri("/export")
//!     .header("x-request-timeout", "250")
//!     .body(())
//!     .unwrap();
//! let start = tokio::time::Instant::now();
//! assert!(svc.clone().oneshot(req).await.is_err()); // the caller gives up after 250 ms
//! assert_eq!(start.elapsed(), Duration::from_millis(250));
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(TimeoutOverride(Duration::from_secs(10)));
//! assert!(svc.oneshot(req).await.is_ok()); // the extension wins over the default
//! # }
//! ```
//!
//! # When the clock starts
//!
//! The deadline is measured from the end of the response future's *first poll*, when the timer is
//! armed, not from `call`. This is what keeps the fast path free of clock reads: the deadline is later
//! by the duration of that first poll (normally microseconds) and by any delay between `call` and the
//! first poll (none when a server or [`oneshot`](https://docs.rs/tower/latest/tower/trait.ServiceExt.html#method.oneshot)
//! polls at once). A response that is ready at the same poll as the deadline wins over the timeout.
//! Arming needs a tokio runtime with time enabled, as any tokio timer does.
//!
//! The budget covers the response future only: time waiting in `poll_ready` and the streaming of the
//! response body are not part of it.
//!
//! # Client side: deadline propagation
//!
//! ```
//! use palisade_core::error::BoxError;
//! use palisade_timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder()
//!     .timeout(Duration::from_millis(1500))
//!     .propagate_grpc_timeout(true)
//!     .build()
//!     .unwrap();
//! // Stands in for a tonic `Channel`: shows what the server would receive.
//! let channel = layer.layer(service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, BoxError>(req.headers()["grpc-timeout"].clone())
//! }));
//! let sent = channel.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(sent, "1500000u"); // 1.5 s in the finest unit that fits 8 digits
//! # }
//! ```
//!
//! ## Retries get the time that is left
//!
//! A propagating layer writes `grpc-timeout` once, as the request passes it. When it sits above a retry
//! layer (total timeout → retry → per-try timeout → channel), every retry would resend that header and
//! tell the server the full budget although part of it is gone. So a propagating layer also records its
//! deadline in the request as a [`Deadline`] extension (keeping an earlier one already there, and
//! capping its budget by it). Request extensions are cloned with each replayed request, and before each
//! retry the retry layer calls [`refresh_grpc_timeout`], which lowers `grpc-timeout` to the time left —
//! never raising it — or, once the deadline has passed, fails the attempt with [`Elapsed`] instead of
//! sending a `grpc-timeout` of zero. A propagating timeout *below* the retry layer (a per-try timeout)
//! also honours the `Deadline`, so it never grants more than the total budget has left.
//!
//! [`Deadline`], [`refresh_grpc_timeout`] and the `grpc-timeout` codec in [`headers`] are defined in
//! [`palisade_core::deadline`] and re-exported here: the retry layer uses them from there, without
//! depending on this crate.
//!
//! The cost is paid only with propagation on: one clock read and one extension lookup and insert per
//! request in the propagating layer, and one lookup, clock read and header rewrite per retry. A layer
//! without propagation never touches extensions or the clock on the fast path.
//!
//! The deadline is measured from `call` (the clock is read there anyway), while this layer's own timer
//! starts at the first poll (see [above](#when-the-clock-starts)); the two differ by the first poll's
//! duration, and the header is never later than the timer.
//!
//! # Observability
//!
//! A timeout is logged with `tracing` at `debug` level, nothing per successful request. This crate
//! emits no metrics.
//!
//! [`Elapsed`]: palisade_core::error::Elapsed
//! [`BoxError`]: palisade_core::BoxError
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod deadline;
mod future;
pub mod headers;
mod layer;
mod service;

// Defined in `palisade_core::deadline`, so that the retry layer can use them without depending on
// this crate; re-exported here, where users of the timeout layer look for them.
pub use future::ResponseFuture;
pub use layer::{
    BuildError, NoOverride, OverrideTimeout, TimeoutBuilder, TimeoutLayer, TimeoutOverride,
};
#[doc(inline)]
pub use palisade_core::deadline::{refresh_grpc_timeout, Deadline};
pub use service::Timeout;
