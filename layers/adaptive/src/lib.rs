//! # palisade-adaptive
//!
//! An adaptive concurrency limit for Tower services: a limit on requests in flight that follows the
//! backend's measured latency, instead of a fixed bulkhead size that is too high when the backend
//! slows and too low when it is fast.
//!
//! - **Algorithms** ([`Algorithm`]), with the parameters and defaults of Netflix's
//!   concurrency-limits: [`Gradient2`] (the default: a long-term RTT average against the current
//!   one), [`Aimd`] and [`Vegas`]. Each sees one sample *window* at a time (Netflix's `WindowedLimit`:
//!   1 s and at least 10 calls by default), so the per-request cost is a few atomic operations.
//! - **Over the limit, refused at once** with [`Overloaded`] (`503` through the rescue layer) and a
//!   `Retry-After` hint. There is no wait queue: put the bulkhead's bounded queue in front if
//!   waiting is wanted.
//! - **Timeouts are drops, never fast RTTs**: an error carrying [`Elapsed`] (and any failure by the
//!   [classifier](Builder::classify)) contributes no RTT and backs the limit off, so a backend that
//!   only times out drives the limit to its minimum. Calls cancelled from outside can count as drops
//!   too ([`cancelled_as_drop`](Builder::cancelled_as_drop)).
//! - **No pinning, no oscillation**: Vegas re-measures its no-load RTT by jittered probing;
//!   Gradient2's baseline is a decaying average with a tolerance buffer on the gradient, and each
//!   update's change is clamped (at most 10 % down, +0.8 up with the defaults).
//! - **Partitions** ([`Partition`]): with [`keyed`](Builder::keyed), tenants (by any
//!   [`KeyExtractor`](palisade_core::key::KeyExtractor)) belong to partitions guaranteed a share of the
//!   limit (e.g. live 90 %, batch 10 %); tenants live in a bounded key map.
//! - **Handle** ([`AdaptiveHandle`]: limit, in-flight, drops, refusals, RTT estimates, partitions and
//!   tenants), a readiness component `adaptive.<name>` degraded while limiting, and audit records of
//!   limit changes at most once per interval.
//!
//! Admission is decided in `call`; `poll_ready` is the inner service's. Slots are drop guards owned
//! by the response future: a cancelled request or a panicking handler gives its slot back.
//!
//! ```
//! use palisade_adaptive::{AdaptiveLayer, Gradient2};
//! use palisade_core::error::{BoxError, Overloaded};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let adaptive = AdaptiveLayer::builder()
//!     .name("backend")
//!     .algorithm(Gradient2::new().initial_limit(2).min_limit(1).max_limit(100))
//!     .build()
//!     .expect("valid config");
//! let handle = adaptive.handle();
//! let mut svc = adaptive.layer(service_fn(|_req: &'static str| async {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//!     Ok::<_, BoxError>("done")
//! }));
//!
//! // Two calls take the two slots the limit allows...
//! let first = svc.ready().await.unwrap().call("a");
//! let second = svc.ready().await.unwrap().call("b");
//! assert_eq!((handle.limit(), handle.in_flight()), (2, 2));
//! // ...so a third is refused at once.
//! let err = svc.ready().await.unwrap().call("c").await.unwrap_err();
//! assert!(err.downcast_ref::<Overloaded>().is_some());
//! assert_eq!(first.await.unwrap(), "done");
//! drop(second); // a dropped call gives its slot back
//! assert_eq!(handle.in_flight(), 0);
//! # }
//! ```
//!
//! Partitioned by a tenant header, live traffic guaranteed 90 % of the limit:
//!
//! ```
//! use palisade_adaptive::{AdaptiveLayer, Partition};
//! use palisade_core::key::HeaderKey;
//!
//! let adaptive = AdaptiveLayer::builder()
//!     .name("api")
//!     .partition(Partition::new("live", 0.9))
//!     .partition(Partition::new("batch", 0.1).member("reports"))
//!     .default_partition("live")
//!     .keyed(HeaderKey::from_static("x-traffic-class"))
//!     .build()
//!     .expect("valid config");
//! let parts = adaptive.handle().partitions();
//! assert_eq!((parts[0].guaranteed, parts[1].guaranteed), (18, 2)); // of the initial limit, 20
//! ```
//!
//! [`Overloaded`]: palisade_core::error::Overloaded
//! [`Elapsed`]: palisade_core::error::Elapsed
#![forbid(unsafe_code)]

mod algorithm;
mod config;
mod handle;
mod service;
mod shared;

pub use algorithm::{Aimd, Algorithm, Gradient2, Vegas};
pub use config::{
    BuildError, Builder, Partition, MAX_INTERVAL, MAX_LIMIT, MAX_PARTITIONS, MAX_RTT_THRESHOLD,
    MAX_WINDOW, MAX_WINDOW_SAMPLES,
};
pub use handle::{AdaptiveHandle, PartitionCounts, RttEstimates, TenantCounts};
pub use palisade_core::error::Overloaded;
pub use palisade_core::key::MalformedKey;
pub use service::{Adaptive, AdaptiveLayer, ResponseFuture, Unkeyed};
pub use shared::MissingKey;
