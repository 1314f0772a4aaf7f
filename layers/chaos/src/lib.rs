//! # palisade-chaos
//!
//! Fault injection for Tower HTTP services: make a dependency fail, slow down, hang or cut its
//! responses short — on purpose, for some requests, for a while — and watch how the rest of the stack
//! (breakers, retries, timeouts, fallbacks) copes.
//!
//! - **Faults** ([`Fault`]): an HTTP [status](Fault::status) with an empty body, an
//!   [error](Fault::error) (or [any error value](Fault::error_with), e.g. a palisade rejection marker),
//!   [latency](Fault::latency) (fixed, or a [`Latency`] distribution: uniform, exponential,
//!   normal), an [abort](Fault::abort) (the response never comes: a hung dependency) and a
//!   [body stall](Fault::body_stall) (the response head arrives, the body stops and never ends).
//! - **Targeting**: [probability](Fault::probability), [tenant](Fault::tenant) (through the layer's
//!   [tenant key](Builder::tenant_key), any `palisade_core::key::KeyExtractor`), [path
//!   prefix](Fault::path_prefix), [method](Fault::method), [header](Fault::header). Probabilities and
//!   latency distributions draw from a [seeded](Builder::seed) generator: the same seed and the same
//!   requests give the same decisions, so a failing test run can be replayed.
//! - **Runtime control** through a [`ChaosHandle`]: [`inject`](ChaosHandle::inject) returns a
//!   [`FaultId`]; [`remove`](ChaosHandle::remove), [`active`](ChaosHandle::active),
//!   [`clear`](ChaosHandle::clear). A fault can [expire](Fault::expires_after) on its own; expiry is
//!   checked lazily, by requests and handle calls (no background task). Every injection, removal and
//!   expiry is logged and recorded in the [audit log](Builder::audit) (`chaos.injected`,
//!   `chaos.removed`, `chaos.expired`).
//!
//! When several faults fire on one request, their delays add up, the first (in injection order)
//! status, error or abort fault decides the outcome, and a body stall applies if none did. Status,
//! error and abort faults answer without calling the inner service.
//!
//! ## Off by default, and removable
//!
//! A layer starts with no fault active. Then a request costs one relaxed atomic load more than the bare
//! service (plus wrapping the response body in [`ResponseBody`], a pass-through). With a fault active,
//! requests evaluate the fault set under a read lock (one uncontended atomic operation to take it,
//! one to release it); the tenant key is extracted first, and only while a fault targets tenants.
//!
//! To leave fault injection out of a production binary entirely, put it behind a cargo feature: the
//! `palisade` umbrella crate compiles this crate only with its `chaos` feature (`palisade::chaos`),
//! so a build without that feature does not contain it. Do the same in your own crate:
//!
//! ```toml
//! [features]
//! chaos = ["palisade/chaos"]
//! ```
//!
//! and add the layer under `#[cfg(feature = "chaos")]`.
//!
//! ## Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use palisade_chaos::{ChaosLayer, Fault, Latency};
//! use palisade_core::error::BoxError;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = ChaosLayer::builder().name("orders-db").seed(42).build();
//! let handle = chaos.handle();
//! let svc = chaos.layer(service_fn(|_req: Request<String>| async {
//!     Ok::<_, BoxError>(Response::new(String::from("ok")))
//! }));
//!
//! // No fault: requests pass.
//! let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! // Half of the requests under /orders get a 503, for the next five minutes.
//! let id = handle.inject(
//!     Fault::status(StatusCode::SERVICE_UNAVAILABLE)
//!         .path_prefix("/orders")
//!         .probability(0.5)
//!         .expires_after(Duration::from_secs(300)),
//! );
//! // Every request is 100–300 ms slower.
//! handle.inject(Fault::latency(Latency::uniform(
//!     Duration::from_millis(100),
//!     Duration::from_millis(300),
//! )));
//! let mut unavailable = 0;
//! for _ in 0..100 {
//!     let req = Request::get("/orders/7").body(String::new()).unwrap();
//!     let res = svc.clone().oneshot(req).await.unwrap();
//!     unavailable += usize::from(res.status() == StatusCode::SERVICE_UNAVAILABLE);
//! }
//! assert!((30..70).contains(&unavailable));
//!
//! assert!(handle.remove(id));
//! assert_eq!(handle.clear(), 1); // the latency fault
//! assert!(!handle.is_active());
//! # }
//! ```
#![forbid(unsafe_code)]

mod body;
mod fault;
mod future;
mod handle;
mod layer;
mod registry;

pub use body::ResponseBody;
pub use fault::{ErrorFn, Fault, FaultId, FaultKind, InjectedFault, Latency, TenantKey};
pub use future::ResponseFuture;
pub use handle::{ActiveFault, ChaosHandle};
pub use layer::{Builder, Chaos, ChaosLayer, NoTenant};
