//! Hedged requests for Tower services: when a safe request's first attempt has not answered after a
//! delay, send the same request again; the first good answer wins and the other attempts are dropped.
//!
//! A tail-latency outlier — one slow replica, one GC pause, one lost packet — then costs the caller a
//! delay instead of its whole deadline, for a bounded amount of extra load.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use http::{Request, Response};
//! use palisade_hedge::{HedgeBody, HedgeLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // The first call lands on a replica that takes 10 s; the next one answers in 5 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<HedgeBody<String>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let ms = if n == 0 { 10_000 } else { 5 };
//!             tokio::time::sleep(Duration::from_millis(ms)).await;
//!             Ok::<_, palisade_hedge::BoxError>(Response::new(format!("attempt {n}")))
//!         }
//!     }
//! });
//!
//! let layer = HedgeLayer::builder()
//!     .delay(Duration::from_millis(50)) // or the default: p95 of recent latency
//!     .build()
//!     .expect("valid configuration");
//! let handle = layer.handle();
//!
//! let started = tokio::time::Instant::now();
//! let res = layer.layer(upstream).oneshot(Request::get("/item/7").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.body(), "attempt 1");
//! assert_eq!(started.elapsed(), Duration::from_millis(55)); // 50 ms delay + 5 ms, not 10 s
//! assert_eq!((handle.hedges(), handle.hedge_wins(), handle.cancelled()), (1, 1, 1));
//! # }
//! ```
//!
//! # What is hedged
//!
//! Only requests that are safe to send more than once — the retry layer's rules: idempotent methods
//! (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`), requests carrying an `Idempotency-Key` header
//! (every attempt carries the same key, so a server with an idempotency layer runs the handler once),
//! and whatever [`hedge_if`](HedgeBuilder::hedge_if) accepts. Every gRPC call is a `POST`: gRPC methods
//! are hedged only when the predicate says so. Everything else is sent once, untouched.
//!
//! # When
//!
//! A [`HedgeDelay`] gives the delay when the request arrives:
//!
//! - a fixed [`delay`](HedgeBuilder::delay); zero is **parallel mode**
//!   ([`parallel`](HedgeBuilder::parallel)): all hedges go out as soon as the first attempt is found
//!   not to be answered at its first poll;
//! - by default, the built-in [`LatencyPercentile`]: the p95 of recent first-attempt latencies (two
//!   10 s windows), clamped to 1 ms – 30 s. Until it holds 100 samples there is no estimate and nothing
//!   is hedged (requests are sent once and measured);
//! - or your own implementation, e.g. a percentile read from the self-healing signal recorder
//!   ([`delay_from`](HedgeBuilder::delay_from)).
//!
//! The first hedge is sent one delay after the first attempt was found pending; each further one
//! (up to [`max_hedges`](HedgeBuilder::max_hedges), default 1) one delay after the previous.
//!
//! # Who wins
//!
//! The first **good** answer: a response the classifier ([`classify`](HedgeBuilder::classify),
//! default [`Grpc`]) does not call a failure, and not HTTP 429. The moment it arrives every other
//! attempt is dropped — their futures, and with them every drop guard below (a bulkhead permit, a
//! breaker's probe slot, a connection), give back what they held — and counted in
//! [`HedgeHandle::cancelled`]. A failed answer or an error does not win while another attempt is still
//! in flight; if every attempt sent fails, the last failure is returned unchanged (its rejection marker
//! intact for an outer rescue layer). A hedge is not a retry: once nothing is in flight, nothing more is
//! sent — put a retry layer next to it for that.
//!
//! # Limits
//!
//! - **Budget** ([`HedgeBudget`], default 10 % of requests plus a burst of 10): over any stretch of
//!   time, `hedges ≤ ratio × requests + burst`, so a backend that slows down for everyone is not sent
//!   `1 + max_hedges` times its load. Refusals are counted ([`HedgeHandle::budget_refused`]) and
//!   reported — a `warn` event and a [`hedge.budget_exhausted`](BUDGET_EXHAUSTED_KIND) audit record —
//!   at most once every [`REPORT_EVERY`] (10 s).
//! - **A "may hedge" signal** ([`may_hedge`](HedgeBuilder::may_hedge)), read when a hedge is due: wire
//!   it to "the breaker is closed and the gate is at its normal level", and no hedge adds load to a
//!   backend the stack is already protecting.
//! - **Deadlines**: a propagating timeout above (`palisade-timeout` with `propagate_grpc_timeout(true)`)
//!   leaves a [`Deadline`] extension on the request. The first attempt goes out as it came; every hedge
//!   carries the *remaining* time in `grpc-timeout` ([`refresh_grpc_timeout`]), and no hedge is sent once
//!   the deadline has passed ([`HedgeHandle::deadline_passed`]).
//! - **Bodies** are read once into memory (up to [`max_body`](HedgeBuilder::max_body), 64 KiB by
//!   default) in the response future, and each attempt replays them from there; a larger body is sent
//!   once, not hedged. The inner service receives `http::Request<`[`HedgeBody<B>`](HedgeBody)`>`.
//!
//! # Cost
//!
//! `call` decides at once; `poll_ready` is the inner service's. A request that is not hedgeable costs
//! two atomic operations. A hedgeable one clones its head and the inner service for later hedges; if the
//! first attempt answers at its first poll no clock is read and no timer is armed (with a fixed delay).
//! Otherwise one clock read and one timer per request; each hedge actually sent is one allocation.
//! Events: a `warn` when the budget refuses (at most one per 10 s), nothing per request.
//!
//! [`Deadline`]: palisade_core::deadline::Deadline
//! [`refresh_grpc_timeout`]: palisade_core::deadline::refresh_grpc_timeout
//! [`Grpc`]: palisade_core::classify::Grpc
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod budget;
mod delay;
mod future;
mod layer;
mod service;

pub use body::HedgeBody;
pub use budget::{HedgeBudget, MAX_BURST};
pub use delay::{
    HedgeDelay, LatencyPercentile, LatencyPercentileBuilder, DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY,
    DEFAULT_MIN_SAMPLES, DEFAULT_PERCENTILE, DEFAULT_WINDOW, MAX_DELAY, MAX_MIN_SAMPLES,
};
pub use future::ResponseFuture;
pub use layer::{
    HedgeBuilder, HedgeHandle, HedgeLayer, BUDGET_EXHAUSTED_KIND, DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEDGES, MAX_BODY_LIMIT, MAX_HEDGES, REPORT_EVERY,
};
pub use palisade_core::config::BuildError;
pub use palisade_core::error::BoxError;
pub use service::Hedge;
