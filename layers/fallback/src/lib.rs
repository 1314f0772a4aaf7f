//! # palisade-fallback
//!
//! A fallback for Tower HTTP services: when the inner service fails in a way you chose, answer with
//! something useful instead of the error.
//!
//! - **Trigger** ([`Trigger`]): which failures activate the fallback — chosen rejection markers from
//!   layers further in (`Trigger::rejections::<(CircuitOpen, Elapsed)>()`), any error, or whatever a
//!   classifier judges a failure from the response head (`Trigger::classified(HttpStatus::server_errors())`
//!   for every 5xx, and every error the classifier does not call a success — the local refusals it
//!   ignores, such as `CircuitOpen`, included). The default, [`Trigger::unavailable`], fires when the dependency is unavailable
//!   (`CircuitOpen`, `Overloaded`, `Shed`, `Elapsed`, transport errors) and never on rejections that are
//!   the client's to see (`RateLimited`, ...). Anything else is returned untouched: the original error
//!   (markers intact) or response.
//! - **Kinds** — one per layer, each with its cost on the success path documented:
//!   - [`StaticResponse`]: a fixed status, headers and body. Captures nothing from the request.
//!   - [`respond_with`](Builder::respond_with): `Fn(&http::request::Parts, &FallbackCause) -> Response<Bytes>`.
//!     Clones the request's method, URI, version and headers before the call.
//!   - [`alternate`](Builder::alternate): the same request (method, URI, headers, body) sent to a second
//!     service (another region, a replica). Reads the request body into memory first, up to
//!     [`max_body`](Builder::max_body) (at most [`MAX_BODY_LIMIT`]); a larger body gets no fallback.
//!   - [`stale_if_error`](Builder::stale_if_error): for `GET`, the last good response to the same key,
//!     with `Age`, `Warning: 110 - "Response is Stale"` and `x-palisade-stale: true`, from a store bounded
//!     in entries, bytes and age. Copies successful `GET` response bodies into the store as they stream.
//! - **Never `Req: Clone`**: what a kind needs is captured before the call.
//! - **Responses** are `http::Response<`[`FallbackBody`]`>`: the inner body, the fallback's bytes or the
//!   alternate's body, with `Bytes` data frames.
//!
//! ```
//! use http::{header, HeaderValue, Request, Response, StatusCode};
//! use palisade_core::error::{BoxError, CircuitOpen, Elapsed};
//! use palisade_fallback::{FallbackLayer, StaticResponse, Trigger};
//! use tower::{service_fn, Layer, ServiceExt};
//! use http_body_util::BodyExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let fallback = FallbackLayer::builder()
//!     .name("recommendations")
//!     .trigger(Trigger::rejections::<(CircuitOpen, Elapsed)>())
//!     .static_response(
//!         StaticResponse::new(StatusCode::OK)
//!             .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
//!             .body(r#"{"items":[]}"#),
//!     )
//!     .build()
//!     .expect("valid config");
//! let handle = fallback.handle();
//!
//! // Further in, a breaker has opened:
//! let svc = fallback.layer(service_fn(|_req: Request<String>| async {
//!     Err::<Response<String>, BoxError>(CircuitOpen::new(None).into())
//! }));
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), r#"{"items":[]}"#);
//! assert_eq!(handle.activations(), 1);
//! # }
//! ```
//!
//! Stale-if-error, serving the last good `GET` when the service answers 5xx or fails:
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use palisade_core::classify::HttpStatus;
//! use palisade_core::error::BoxError;
//! use palisade_fallback::{FallbackLayer, StaleIfError, Trigger};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let fallback = FallbackLayer::builder()
//!     .trigger(Trigger::classified(HttpStatus::server_errors()))
//!     .stale_if_error(StaleIfError::new().max_entries(1_000).max_age(Duration::from_secs(600)))
//!     .build()
//!     .expect("valid config");
//!
//! let down = Arc::new(AtomicBool::new(false));
//! let flag = down.clone();
//! let svc = fallback.layer(service_fn(move |_req: Request<String>| {
//!     let status = if flag.load(Ordering::Relaxed) { 500 } else { 200 };
//!     async move {
//!         let mut res = Response::new(Full::new(bytes::Bytes::from_static(b"price: 10")));
//!         *res.status_mut() = StatusCode::from_u16(status).unwrap();
//!         Ok::<_, BoxError>(res)
//!     }
//! }));
//!
//! let get = || Request::get("/price/7").body(String::new()).unwrap();
//! let fresh = svc.clone().oneshot(get()).await.unwrap();
//! fresh.into_body().collect().await.unwrap(); // stored when its body ends
//!
//! down.store(true, Ordering::Relaxed);
//! let stale = svc.oneshot(get()).await.unwrap();
//! assert_eq!(stale.status(), StatusCode::OK);
//! assert_eq!(stale.headers()["x-palisade-stale"], "true");
//! assert_eq!(stale.headers()["age"], "0");
//! assert_eq!(stale.into_body().collect().await.unwrap().to_bytes(), "price: 10");
//! # }
//! ```
//!
//! # Cost on the success path
//!
//! Every kind holds one reference to the layer's shared state in the response future (an `Arc`
//! increment and decrement per request) and wraps the response body in [`FallbackBody`] (a tag; the
//! inner body's frames pass through). A trigger with a response classifier classifies each response
//! head. Beyond that: the static kind nothing; the function kind clones the request head; the alternate
//! kind buffers the request body and clones the head; the stale kind builds a key for each `GET` and
//! copies storable `GET` responses into the store.
//!
//! # Audit
//!
//! Every activation (a fallback response served) is counted on the [`FallbackHandle`] and traced at
//! `debug`. Audit gets a **rate**, not one record per request: the first activation in each minute
//! (minutes counted from `build()`) writes one [`fallback.activated`](ACTIVATED_KIND) record with
//! `{"fallback", "kind", "cause", "count"}`, where `count` is the number of activations since the
//! previous record, this one included — so under a flood there is one record a minute carrying the
//! previous minute's count, and the counts of all records add up to the activations (those after the
//! last record are carried by the next one). An atomic minute and one compare-and-swap decide which
//! request writes the record; the others add to a counter. Recording never blocks (see
//! `palisade_core::audit`).
#![forbid(unsafe_code)]

mod body;
mod config;
mod future;
mod handle;
mod kind;
mod service;
mod stale;
mod trigger;

pub use body::{FallbackBody, NoBody, ReplayBody};
pub use config::{BuildError, Builder, NoKind, DEFAULT_MAX_BODY, MAX_BODY_LIMIT};
pub use future::{AlternateFuture, ResponseFuture};
pub use handle::{Counts, FallbackHandle, ACTIVATED_KIND};
pub use kind::{Alternate, Kind, RespondWith, Stale, StaticResponse};
pub use palisade_core::error::BoxError;
pub use service::{Fallback, FallbackLayer};
pub use stale::{
    DefaultKey, StaleIfError, StaleKey, MAX_STALE_BYTES, MAX_STALE_ENTRIES, MAX_STALE_ENTRY_BYTES,
    STALE_HEADER, STALE_WARNING,
};
pub use trigger::{FallbackCause, Markers, NoResponses, Trigger};
