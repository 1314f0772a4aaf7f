//! # palisade-breaker
//!
//! A circuit breaker for Tower services: stop calling a dependency that is failing, give it time to
//! recover, and probe carefully before trusting it again.
//!
//! - **States**: Closed (calls pass, outcomes are counted), Open (calls are refused at once with
//!   [`CircuitOpen`] carrying the time until the next probe), HalfOpen (a configured number of probe
//!   calls pass; enough successes close the circuit, a failure opens it again). Operator modes set through
//!   the [`BreakerHandle`]: forced open, disabled (always pass, still counting) and metrics-only (counts and
//!   reports transitions but never refuses).
//! - **Trip strategies**, combinable: N consecutive failures; failure rate over the last N calls; failure
//!   rate over the last N seconds (one-second buckets, O(1) per call); slow-call rate. Rates are judged
//!   only after `minimum_calls`.
//! - **Classification** through `palisade_core::classify`: `Err`, HTTP 5xx, gRPC status in headers or
//!   **trailers** (the breaker waits for the end of the body), slow calls; `Ignored` outcomes (a cancelled
//!   call, a dropped body) count for nothing and give a probe slot back — except a call cut off by the
//!   stack's own timeout (a palisade `TimeoutLayer` above, on its own budget), which is a failure, and
//!   a call dropped after running past the slow-call threshold, which is slow. So a hung handler trips
//!   the breaker even with the timeout outside it.
//! - **Fail fast**: a refusing circuit makes `poll_ready` ready without waiting for the inner service,
//!   and the call is refused at once (see [`CircuitBreaker`]'s "Readiness").
//! - **Bounded**: every size the builder takes has a documented maximum ([`MAX_WINDOW_CALLS`],
//!   [`MAX_WINDOW_SECS`], [`MAX_KEYS`], [`MAX_KEYED_WINDOW_BYTES`]) and is refused above it.
//! - **Waits grow**: the wait in Open doubles with each consecutive trip (2 s → 60 s by default) plus
//!   jitter; HalfOpen that never settles (probes that hang) opens again after a maximum wait.
//! - **Live thresholds**: [`BreakerHandle::set_thresholds`] changes the trip [`Thresholds`] while the
//!   breaker runs (a config reload), with the builder's validation; the state and the windows are
//!   kept. A keyed breaker's [`KeyedBreakerHandle::set_thresholds`] changes them for every key.
//! - **Keyed mode**: one circuit per key (downstream host, tenant) with a bound on keys and idle eviction.
//! - **Health and audit**: a readiness component `breaker.<name>`, degraded while open; every transition
//!   goes to the audit log with the numbers that caused it.
//!
//! The Closed path is one atomic load to admit and, with the default count window, a few relaxed atomic
//! updates to record: no lock, no allocation, no clock read.
//!
//! ```
//! use palisade_breaker::CircuitBreakerLayer;
//! use palisade_core::error::{BoxError, CircuitOpen};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .consecutive_failures(3)
//!     .open_wait(Duration::from_secs(2), Duration::from_secs(60))
//!     .build()
//!     .expect("valid config");
//! let handle = breaker.handle();
//!
//! let svc = breaker.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, BoxError>(http::Response::builder().status(503).body(String::new()).unwrap())
//! }));
//! for _ in 0..3 {
//!     let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), 503); // failures pass through while Closed...
//! }
//! // ...until the third trips the circuit: now calls are refused without reaching the service.
//! let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(err.downcast_ref::<CircuitOpen>().is_some());
//! assert_eq!(handle.state(), palisade_breaker::CircuitState::Open);
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod handle;
mod machine;
mod service;
mod shared;

pub use config::{
    BuildError, Builder, Thresholds, MAX_KEYED_WINDOW_BYTES, MAX_KEYS, MAX_WINDOW_CALLS,
    MAX_WINDOW_SECS,
};
pub use handle::{BreakerHandle, CircuitState, Counts, KeyedBreakerHandle, LookupKey, Mode};
pub use palisade_core::error::CircuitOpen;
pub use service::{
    CircuitBreaker, CircuitBreakerLayer, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, Recorder,
    ResponseBody, ResponseFuture,
};

/// Atomics: std's, or loom's when model-checking (`--cfg palisade_loom`).
mod sync {
    #[cfg(palisade_loom)]
    pub(crate) use loom::hint::spin_loop;
    #[cfg(palisade_loom)]
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
    #[cfg(not(palisade_loom))]
    pub(crate) use std::hint::spin_loop;
    #[cfg(not(palisade_loom))]
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
}
