//! Retries for Tower services: exponential backoff with jitter (or decorrelated jitter), a retry budget,
//! safe-method rules, and request bodies buffered for replay.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use palisade_retry::{Backoff, RetryBody, RetryLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // An upstream that fails twice with 503, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |req: Request<RetryBody<Full<Bytes>>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             // The body is replayed identically on every attempt.
//!             let body = req.into_body().collect().await?.to_bytes();
//!             assert_eq!(body, "{\"sku\":42}");
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             Ok::<_, palisade_retry::BoxError>(Response::builder().status(status).body(()).unwrap())
//!         }
//!     }
//! });
//!
//! let layer = RetryLayer::builder()
//!     .max_attempts(4)
//!     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)))
//!     .build()
//!     .expect("valid configuration");
//! let handle = layer.handle();
//!
//! let req = Request::put("/stock/42").body(Full::new(Bytes::from("{\"sku\":42}"))).unwrap();
//! let res = layer.layer(upstream).oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! assert_eq!(handle.retries(), 2);
//! # }
//! ```
//!
//! # What is retried
//!
//! **Which requests.** By default only requests that are safe to send twice: idempotent methods (`GET`,
//! `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and requests carrying an `Idempotency-Key` header.
//! [`retry_if`](RetryBuilder::retry_if) decides for everything else — note that every gRPC call is a
//! `POST`, so gRPC methods are retried only when the predicate says so (e.g. by path). Others are sent
//! once, untouched. With [`clone_request`](RetryBuilder::clone_request) the clone function decides
//! instead.
//!
//! **Which outcomes.** Decisions are made on the response *head* (or the error):
//!
//! - a response the classifier ([`classify`](RetryBuilder::classify), default [`Grpc`]: HTTP 5xx, or a
//!   gRPC server-error code in the headers of a trailers-only response) calls a failure;
//! - HTTP 429, always;
//! - the rejections [`RateLimited`], [`Overloaded`], [`Shed`] and [`IdempotencyConflict`] from inner
//!   layers, and [`Elapsed`] (a per-attempt timeout inside the retry layer; see
//!   [`retry_timeouts`](RetryBuilder::retry_timeouts) — a total timeout belongs *outside* the retry layer,
//!   where it is never seen);
//! - any other error the classifier calls a failure (by default, every error that is not a palisade
//!   rejection).
//!
//! **Never retried:** [`CircuitOpen`] anywhere in the error's source chain (retrying would only hammer an
//! open breaker), [`ReadOnly`], and the client's own mistakes (bad tenant key, missing or invalid
//! idempotency key, mismatched idempotency key, payload too large) — the same request would fail the same
//! way.
//!
//! **gRPC trailers.** A gRPC failure usually arrives in the *trailers*, at the end of a body that is
//! already streaming to the caller; it cannot be retried, and such a response is returned as it is. Only a
//! gRPC status in the response headers (a trailers-only response, as servers send for errors before
//! any message) is retried.
//!
//! When the attempts are exhausted, the budget is spent or the request cannot be replayed, the **last**
//! response or error is returned unchanged: the error keeps its type, so an outer rescue layer still
//! finds its rejection marker.
//!
//! # How long to wait
//!
//! [`Backoff`]: by default the `n`-th retry waits `min(60 s, 100 ms × 2^(n−1)) + uniform(0, 1 s)`;
//! [`Backoff::decorrelated`] is AWS's decorrelated jitter. A service's hint — `Retry-After` in
//! delta-seconds on a 429 or 503 (an HTTP-date is ignored and the backoff applies), gRPC's
//! `grpc-retry-pushback-ms`, or a rejection's `retry_after` — lengthens the wait to the hint, capped by
//! [`retry_after_cap`](RetryBuilder::retry_after_cap) (default: the backoff's maximum); it never shortens
//! it below the backoff. A `grpc-retry-pushback-ms` that is not a non-negative decimal integer
//! (negative, a fraction, garbage) is, as gRPC A6 specifies, the server asking for no retry: the
//! failure is returned at once ([`RetryHint::forbids_retry`]). The jitter generator can be
//! [seeded](RetryBuilder::seed) for tests.
//!
//! # Deadlines
//!
//! A total timeout belongs *above* the retry layer, over every attempt and backoff. When it propagates
//! the deadline to the server (`propagate_grpc_timeout(true)` on the `TimeoutLayer` of
//! `palisade-timeout`), it writes `grpc-timeout` once and records a [`Deadline`] request extension
//! (defined in `palisade-core`, so this crate does not depend on the timeout crate). Each retry replays
//! the original request head *with its extensions*, and just before a retry is sent (after the backoff
//! and `poll_ready`) the layer calls [`refresh_grpc_timeout`]: `grpc-timeout` becomes the time left of that
//! deadline (never more than the header already said), so the server of attempt 3 is not promised the
//! budget attempt 1 had. If the deadline has already passed, the retry is not sent and the request fails
//! with [`Elapsed`] at once. Without a `Deadline` on the request, retries resend the head unchanged and
//! nothing is read but the extension map (only on retries: the first attempt is sent as it came). With
//! [`clone_request`](RetryBuilder::clone_request), the clone function builds each retry and may call
//! [`refresh_grpc_timeout`] itself.
//!
//! # Budget
//!
//! A [`Budget`] (default: 20 % of requests plus 10 a second, over 10 s) bounds retries across every
//! service the layer makes, so an outage of the dependency cannot multiply its load by `max_attempts`.
//! Refused retries are counted ([`RetryHandle::budget_refused`]).
//!
//! # Bodies
//!
//! `http::Request<B>` needs no `Clone`: the body is read into memory inside the response future (not in
//! `call`), up to [`max_body`](RetryBuilder::max_body) (64 KiB by default, at most
//! [`MAX_BODY_LIMIT`]), and replayed from there. A
//! request whose body is already at its end needs no buffering at all. A body over the limit — known
//! from its `size_hint` or found while reading — is sent once, not retried, with a `debug` event and
//! [`RetryHandle::body_too_large`] counting it. The inner service receives
//! `http::Request<`[`RetryBody<B>`](RetryBody)`>`.
//!
//! # Observability
//!
//! Each retry is a `debug` event (attempt, delay, reason); each give-up — a failure that would have
//! been retried but for the attempt limit, including every such failure under `max_attempts(1)` — a
//! `warn` event and a [`retry.gave_up`](GAVE_UP_KIND) record in the
//! [`Audit`](palisade_core::audit::Audit) given to [`audit`](RetryBuilder::audit), with the attempts,
//! the last failure, the method and the path. The budget
//! running out is a `warn` event and one [`retry.budget_exhausted`](BUDGET_EXHAUSTED_KIND) record per
//! episode. [`RetryLayer::handle`] gives the counters.
//!
//! [`Deadline`]: palisade_core::deadline::Deadline
//! [`refresh_grpc_timeout`]: palisade_core::deadline::refresh_grpc_timeout
//! [`Grpc`]: palisade_core::classify::Grpc
//! [`RateLimited`]: palisade_core::error::RateLimited
//! [`Overloaded`]: palisade_core::error::Overloaded
//! [`Shed`]: palisade_core::error::Shed
//! [`IdempotencyConflict`]: palisade_core::error::IdempotencyConflict
//! [`Elapsed`]: palisade_core::error::Elapsed
//! [`CircuitOpen`]: palisade_core::error::CircuitOpen
//! [`ReadOnly`]: palisade_core::error::ReadOnly
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod body;
mod budget;
mod future;
mod layer;
mod policy;
mod service;

pub use backoff::{Backoff, DEFAULT_BASE, DEFAULT_JITTER, DEFAULT_MAX};
pub use body::RetryBody;
pub use budget::Budget;
pub use future::{CloneResponseFuture, ResponseFuture};
pub use layer::{
    BufferBody, BuildError, CloneWith, RetryBuilder, RetryHandle, RetryLayer,
    BUDGET_EXHAUSTED_KIND, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BODY, GAVE_UP_KIND,
    MAX_ATTEMPTS_LIMIT, MAX_BODY_LIMIT, MAX_DELAY,
};
pub use palisade_core::error::BoxError;
pub use policy::RetryHint;
pub use service::Retry;
