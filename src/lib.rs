//! # palisade
//!
//! Resilience for Rust services as a stack of [Tower](https://docs.rs/tower) middleware: circuit breaker,
//! per-tenant rate limit, bulkhead, timeout, idempotency key, fallback, degradation gate, retry and fault
//! injection, sharing one [`Health`] handle and one [`Audit`] handle.
//!
//! This crate is the umbrella: it re-exports [`palisade_core`] (the shared vocabulary every layer crate
//! speaks) and holds what sits outside the individual layers, starting with [`rescue`] — the outermost
//! layer that turns every rejection into a proper HTTP response or gRPC status, so a stack's error type
//! is `Infallible` and it goes straight into `axum::Router::layer`.
//!
//! ```
//! use palisade::rescue::RescueLayer;
//! use palisade::error::{BoxError, RateLimited};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An inner layer refused the request...
//! let inner = service_fn(|_req: http::Request<String>| async {
//!     Err::<http::Response<String>, BoxError>(RateLimited::new(Duration::from_secs(2)).into())
//! });
//! // ...and rescue answers for it.
//! let svc = RescueLayer::new().layer(inner);
//! let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "2");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! [`Health`]: health::Health
//! [`Audit`]: audit::Audit
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod ops;
pub mod rescue;
pub mod stack;

pub use palisade_core::{audit, classify, error, grpc, health, key, rng, BoxError, Rejection};

/// The adaptive concurrency limit: [`palisade_adaptive`].
#[cfg(feature = "adaptive")]
pub use palisade_adaptive as adaptive;
/// The circuit breaker layer: [`palisade_breaker`].
#[cfg(feature = "breaker")]
pub use palisade_breaker as breaker;
/// The bulkhead layer: [`palisade_bulkhead`].
#[cfg(feature = "bulkhead")]
pub use palisade_bulkhead as bulkhead;
/// The fault injection layer: [`palisade_chaos`].
#[cfg(feature = "chaos")]
pub use palisade_chaos as chaos;
/// The degradation gate: [`palisade_degrade`].
#[cfg(feature = "degrade")]
pub use palisade_degrade as degrade;
/// The fallback layer: [`palisade_fallback`].
#[cfg(feature = "fallback")]
pub use palisade_fallback as fallback;
/// The control plane's signals and anomaly detectors: [`palisade_heal`].
#[cfg(feature = "heal")]
pub use palisade_heal as heal;
/// Hedged requests: [`palisade_hedge`].
#[cfg(feature = "hedge")]
pub use palisade_hedge as hedge;
/// The Idempotency-Key layer: [`palisade_idempotency`].
#[cfg(feature = "idempotency")]
pub use palisade_idempotency as idempotency;
/// The per-tenant rate limit layer: [`palisade_ratelimit`].
#[cfg(feature = "ratelimit")]
pub use palisade_ratelimit as ratelimit;
/// The retry layer: [`palisade_retry`].
#[cfg(feature = "retry")]
pub use palisade_retry as retry;
/// The timeout layer: [`palisade_timeout`].
#[cfg(feature = "timeout")]
pub use palisade_timeout as timeout;

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "full"))]
pub struct ReadmeDoctests;
