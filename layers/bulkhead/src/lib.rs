//! # palisade-bulkhead
//!
//! A bulkhead for Tower services: a limit on how many requests run at once, globally and per tenant,
//! so that one slow dependency or one noisy tenant cannot take every worker, connection or byte of
//! memory.
//!
//! - **Limits**: a global maximum in flight, and with [`keyed`](Builder::keyed) a per-tenant share
//!   ([`max_per_tenant`](Builder::max_per_tenant)): a tenant at its share is refused while others still
//!   get in. Tenants live in a bounded key map with idle eviction; a tenant with requests in flight or
//!   queued is never evicted.
//! - **Reject when full** (the default): a request that finds no free slot is refused at once with
//!   [`Overloaded`] carrying a short `Retry-After` hint; the rescue layer answers `503`.
//! - **Opt-in bounded queue** ([`queue`](Builder::queue)): at most `max_len` requests wait, each at most
//!   `max_wait` (then `Overloaded`, exactly at the deadline). The queue is fair: priority classes
//!   ([`Priority`]: critical, normal, background) with [aging](Builder::aging) — one class up per
//!   aging interval waited, so background work is never starved, yet never ahead of an older request —
//!   and deficit round robin across tenants within a class, so a tenant with 1,000 waiters does not
//!   delay a tenant with one, however long they have waited. A released slot is handed straight to the
//!   next waiter the scheduler picks.
//! - **Permits are drop guards**, owned by the response future or, with
//!   [`hold_until_body_end`](Builder::hold_until_body_end), by the response body until it ends. A
//!   cancelled request, a dropped queued request and a panicking handler all give their slot back.
//! - **Handle** ([`BulkheadHandle`]): in-flight and queued counts, per tenant too; resize the limits at
//!   runtime (growing wakes waiters, shrinking lets in-flight requests drain).
//! - **Health and audit**: a readiness component `bulkhead.<name>`, degraded while the bulkhead is
//!   saturated (state changes only); saturation, recovery and resizes go to the audit log.
//!
//! Admission is decided in `call`; `poll_ready` is the inner service's, so nothing waits there. The
//! unkeyed reject-when-full path is a compare-and-swap to admit and an atomic decrement to release: no
//! lock, no allocation, no clock read.
//!
//! ```
//! use palisade_bulkhead::BulkheadLayer;
//! use palisade_core::error::{BoxError, Overloaded};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::builder()
//!     .name("reports")
//!     .max_concurrent(2)
//!     .retry_after(Duration::from_secs(1))
//!     .build()
//!     .expect("valid config");
//! let handle = bulkhead.handle();
//! let mut svc = bulkhead.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, BoxError>(http::Response::new(String::from("done")))
//! }));
//!
//! // Two requests take both slots (their futures hold the permits)...
//! let first = svc.ready().await.unwrap().call(http::Request::new(()));
//! let second = svc.ready().await.unwrap().call(http::Request::new(()));
//! assert_eq!(handle.in_flight(), 2);
//! // ...so a third is refused at once.
//! let err = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
//! let overloaded = err.downcast_ref::<Overloaded>().expect("an Overloaded rejection");
//! assert_eq!(overloaded.retry_after, Some(Duration::from_secs(1)));
//!
//! // Finishing (or dropping) a request gives its slot back.
//! first.await.unwrap();
//! drop(second);
//! assert_eq!(handle.in_flight(), 0);
//! # }
//! ```
//!
//! Per tenant, with a fair queue:
//!
//! ```
//! use palisade_bulkhead::{BulkheadLayer, MissingKey, Priority, PriorityHeader};
//! use palisade_core::error::BoxError;
//! use palisade_core::health::Health;
//! use palisade_core::key::HeaderKey;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let health = Health::new();
//! let bulkhead = BulkheadLayer::builder()
//!     .name("api")
//!     .max_concurrent(64)
//!     .max_per_tenant(16)                                   // one tenant: at most 16 slots...
//!     .queue(256, Duration::from_millis(500))               // ...then wait, at most 500 ms
//!     .aging(Duration::from_millis(100))                    // one class up per 100 ms waited
//!     .missing_key(MissingKey::Reject)                      // no tenant header: 400
//!     .health(&health)                                      // readiness `bulkhead.api`
//!     .priority(PriorityHeader::from_static("x-priority"))  // set by a trusted layer
//!     .keyed(HeaderKey::from_static("x-tenant-id"))
//!     .build()
//!     .expect("valid config");
//! let handle = bulkhead.handle();
//!
//! let svc = bulkhead.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, BoxError>(http::Response::new(String::new()))
//! }));
//! let req = http::Request::get("/").header("x-tenant-id", "acme").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! let acme = handle.tenant(&http::HeaderValue::from_static("acme")).unwrap();
//! assert_eq!((acme.in_flight, acme.queued), (0, 0));
//! handle.set_max_concurrent(128); // resize at runtime
//! # let _ = Priority::Critical;
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod handle;
mod priority;
mod queue;
mod service;
mod shared;

pub use config::{BuildError, Builder, MAX_CONCURRENT, MAX_QUEUE_LEN, MAX_RETRY_AFTER, MAX_WAIT};
pub use handle::{BulkheadHandle, TenantCounts};
pub use palisade_core::error::Overloaded;
pub use palisade_core::key::MalformedKey;
pub use priority::{
    priority_fn, NoPriority, Priority, PriorityExtractor, PriorityFn, PriorityHeader,
};
pub use service::{Bulkhead, BulkheadLayer, ResponseBody, ResponseFuture, Unkeyed};
pub use shared::{MissingKey, Permit};
