//! # palisade-ratelimit
//!
//! A per-tenant rate limit for Tower services: every tenant gets its own
//! [GCRA](https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm) bucket, keyed by any
//! [`KeyExtractor`](palisade_core::key::KeyExtractor) (a header, the client IP behind trusted proxies,
//! an authenticated principal, a closure).
//!
//! - **Tiers and overrides**: a default rate, named tiers, tenants assigned to tiers (a per-tenant
//!   override is a tier of one) — all changeable at runtime through the [`RateLimitHandle`] (tiers
//!   created, changed or removed, `"default"` and `"anonymous"` included), without a restart and
//!   without losing any bucket's state.
//! - **A global limit** on top of the tenants' (per process), checked after the tenant's own so that
//!   a tenant refused by its own bucket uses no global quota.
//! - **Requests without a key**: rejected with the extractor's `KeyError` (the rescue layer answers
//!   `400` with a problem body), or sharing one anonymous bucket ([`MissingKey`]). A key that is
//!   present but **malformed** (empty, too long, not visible ASCII, a repeated header) is refused with
//!   `400` under either policy unless you opt in with [`MalformedKey::AsMissing`]: a client must not
//!   escape its own bucket by sending garbage.
//! - **Repeat offenders**: each violation streak (a run of rejections, not each request) raises a
//!   tenant's offence level, adds a growing, capped penalty before it is admitted again, and is
//!   audited; good behaviour decays the level ([`Penalty`]).
//! - **Adaptive mode**: quotas shrink with a [`LoadSignal`] (0.0–1.0) set by a degradation gate or the
//!   application.
//! - **Bounded memory**: at most `max_keys` tenants (16 bytes of bucket each, in palisade-core's
//!   `KeyMap`); full buckets idle for `idle_timeout` are forgotten when room is needed, but not while
//!   a repeat offender's level (2 or more) has not decayed; new tenants over the cap share one overflow bucket
//!   ([`MemoryStore`]), and a [`check`](RateLimitHandle::check) of a newcomer looks at that bucket
//!   when its request would. `build()` refuses an idle timeout shorter than any tier's refill time, so
//!   active tenants are never forgotten mid-window, and every size and duration above its documented
//!   bound.
//! - **Honest rejections**: `RateLimited { retry_after, quota }` — a request at exactly `now +
//!   retry_after` is admitted — which the rescue layer turns into `429` with `Retry-After`,
//!   `RateLimit-Policy` and `RateLimit`. The quota's window is whole seconds (as the header has it)
//!   and its limit is scaled to that window, rounded down: 10 per 100 ms is advertised as
//!   `q=100;w=1`, not `q=10;w=1`. Opt in to a `RateLimit` header on successful responses too.
//! - **Metrics** per tier (admits, rejects) and a non-consuming [`check`](RateLimitHandle::check) on
//!   the handle. There is no `metrics` crate among the dependencies; export the counters yourself.
//!
//! ```
//! use http::{HeaderValue, Request, Response};
//! use palisade_core::error::{BoxError, RateLimited};
//! use palisade_core::key::HeaderKey;
//! use palisade_ratelimit::{RateLimitLayer, Rate};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let acme = HeaderValue::from_static("acme");
//! let limit = RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
//!     .default_rate(rate(100, 20))                   // 100 req/s, bursts of 20
//!     .tier("gold", Rate::per_second(1_000))         // 1,000 req/s
//!     .tenant(acme.clone(), "gold")
//!     .build()
//!     .expect("valid config");
//! let handle = limit.handle();
//! let svc = limit.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, BoxError>(Response::new(()))
//! }));
//! let req = |tenant: &'static str| Request::get("/").header("x-tenant-id", tenant).body(()).unwrap();
//!
//! for _ in 0..20 {
//!     svc.clone().oneshot(req("globex")).await.expect("within the burst");
//! }
//! let err = svc.clone().oneshot(req("globex")).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().expect("a 429");
//! assert_eq!(limited.retry_after, std::time::Duration::from_millis(10));
//! assert_eq!(&*limited.quota.as_ref().unwrap().policy, "default");
//!
//! // acme is gold: its own bucket, its own rate.
//! svc.clone().oneshot(req("acme")).await.expect("acme is unaffected");
//! assert_eq!(&*handle.check(&acme).policy, "gold");
//! # fn rate(n: u32, b: u32) -> Rate { Rate::per_second(n).burst(b) }
//! # }
//! ```
//!
//! ## Runtime changes and state
//!
//! A bucket's state is its theoretical arrival time: the time debt of what the tenant consumed. A tier
//! changed at runtime, a tenant moved to another tier, or a quota scaled by the load signal judges the
//! same debt with the new parameters (see [`RateLimitHandle`]): no bucket is reset, so changing a rate
//! can never hand an abusive tenant a fresh burst.
//!
//! ## Why palisade's own GCRA and not governor's limiter
//!
//! The arithmetic is governor's GCRA (a theoretical arrival time per bucket in one `AtomicU64`,
//! compare-and-swap to admit), and the property tests check decision for decision that it agrees with
//! governor's `RateLimiter::direct_with_clock`. [`Rate`] converts from and to `governor::Quota`. But
//! governor's limiter bakes its quota in at construction and hides its state, which cannot express
//! what this layer must do with a bucket that exists: apply a tier changed at runtime (or scaled by the
//! load signal) to the *same* state, look without consuming ([`check`](RateLimitHandle::check)), push
//! the arrival time forward for a penalty, give quota back when the global limit refuses, and report
//! the remaining burst and reset time on every decision for the `RateLimit` headers. Rebuilding a
//! governor limiter per change would lose every tenant's state. So the bucket is a 16-byte
//! [`Cell`] the [`Store`] owns, stepped with the parameters of the moment.
#![forbid(unsafe_code)]

mod config;
mod gcra;
mod handle;
mod limiter;
mod service;
mod store;

pub use config::{BuildError, Builder, MalformedKey, MissingKey, MAX_ASSIGNMENTS, MAX_TIERS};
pub use gcra::{Cell, Decision, Gcra, Op, Penalty, Rate, Streak};
pub use handle::{Check, RateLimitHandle, TierMetrics};
pub use palisade_core::error::{Quota, RateLimited};
pub use palisade_core::signal::LoadSignal;
pub use service::{RateLimit, RateLimitLayer, ResponseFuture};
pub use store::{Bucket, MemoryGrant, MemoryStore, Store};
