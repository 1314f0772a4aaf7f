//! # palisade-idempotency
//!
//! An `Idempotency-Key` layer for Tower: a client that retries a `POST` with the same key gets the
//! first response again instead of a second charge, following
//! [draft-ietf-httpapi-idempotency-key-header-06] and what Stripe documents (safer where they are
//! silent).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use palisade_core::error::{BoxError, IdempotencyMismatch};
//! use palisade_idempotency::IdempotencyLayer;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let charges = Arc::new(AtomicUsize::new(0));
//! let layer = IdempotencyLayer::builder().build().expect("valid config");
//! let svc = layer.layer(service_fn({
//!     let charges = charges.clone();
//!     move |_req: Request<_>| {
//!         let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!("charge #{n}"))))) }
//!     }
//! }));
//! let charge = |body: &'static str| {
//!     Request::post("/charges")
//!         .header("idempotency-key", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
//!         .body(Full::new(Bytes::from_static(body.as_bytes())))
//!         .unwrap()
//! };
//!
//! let first = svc.clone().oneshot(charge("amount=100")).await.unwrap();
//! assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "charge #1");
//!
//! // The retry is answered from the store: the handler does not run again.
//! let retry = svc.clone().oneshot(charge("amount=100")).await.unwrap();
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "charge #1");
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//!
//! // The same key for another request is refused (422 through the rescue layer).
//! let err = svc.oneshot(charge("amount=999")).await.unwrap_err();
//! assert!(err.downcast_ref::<IdempotencyMismatch>().is_some());
//! # }
//! ```
//!
//! # What it does
//!
//! **The key** is the `Idempotency-Key` request header, an RFC 8941 sf-string
//! (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`, quotes removed, `\"` and `\\`
//! unescaped). A bare value (`Idempotency-Key: 8e03978e-...`) is accepted too and taken literally;
//! quoted and bare forms of the same characters are the same key. The key is validated before any
//! lookup: sent at most once, 1 to 255 characters, visible ASCII only (`0x21`–`0x7E`). Anything else is
//! refused with `400` naming the rule broken.
//!
//! **Which requests**: by default `POST` and `PATCH` that carry a key; requests without one pass
//! untouched. [`Builder::methods`], [`Builder::require_key`] and [`Builder::route`] (exact paths or
//! `/prefix/*`, per method, [`KeyRule::Off`] / [`Optional`](KeyRule::Optional) /
//! [`Required`](KeyRule::Required)) change that; a route that requires a key refuses a request without
//! one with `400`.
//!
//! **Scope.** A record belongs to tenant + client key. The tenant comes from a
//! [`KeyExtractor`](palisade_core::key::KeyExtractor) ([`Builder::tenant`]; by default there is none
//! and every client shares one scope); [`MissingTenant`] says what happens when it is missing
//! (default: `400`). The same client key from another tenant is another record: no cross-tenant
//! replay, no pre-claiming another tenant's keys. The method and the path are not part of the
//! scope but of the fingerprint: a key names one request, so the same key sent to another endpoint
//! (another path or method) is refused with `422`, in flight or completed, and never executes twice —
//! as Stripe refuses a key reused on another endpoint, and as the draft says a key must not be reused
//! for a different request. The scope is stored as a keyed BLAKE3 hash ([`Scope`]): the raw key never
//! reaches the store, the logs or the audit log.
//!
//! **Fingerprint.** A keyed BLAKE3 hash ([`Fingerprint`]) of the method, the path and query, the
//! [configured headers](Builder::fingerprint_header), the body and its trailers. The request body is
//! read first (up to [`max_request_body`](Builder::max_request_body), default 1 MiB; over it: `413`
//! before the handler runs) and handed to the handler from memory ([`RequestBody`]).
//!
//! **Claim, execute, complete.** Claiming a key is atomic: of concurrent requests with one key exactly
//! one runs the handler. The others get `409` while it is in flight (with `Retry-After`), then the
//! stored response: status, headers (minus hop-by-hop headers and `Date`), body byte for byte and
//! trailers, plus `Idempotent-Replayed: true`. A key reused with a different fingerprint gets `422`,
//! in flight or completed.
//!
//! **What is stored** is the handler's outcome once it started — any response, 5xx included, as
//! Stripe does; [`store_server_errors(false)`](Builder::store_server_errors) releases the key on 5xx
//! instead, so a retry executes again. When the handler (or a layer inside this one) returns an
//! `Err` there is no response to store: the key is released. Nothing is stored for requests refused
//! before the handler (bad key, `409`, `413`, a rate limit outside this layer), so those are safe to
//! retry. (So put the rescue layer *outside* this one, as below: inside it, a rejection would already
//! be a response, and would be stored.) A response body larger than [`max_response_body`](Builder::max_response_body) (default
//! 1 MiB) still reaches the client in full, but is not stored: the key is marked
//! [`NotStored::TooLarge`] and a retry gets `400` saying so — it is neither replayed wrongly nor
//! executed twice (for as long as the record is kept: see *Retention*).
//!
//! **The lease** is a drop guard owned by the response future. A cancelled request (the future is
//! dropped) or a panicking handler gives the key back ([`OnAbandon::Release`], the default: the next
//! retry executes) or marks it failed ([`OnAbandon::MarkFailed`]: retries get `400`). Leases also
//! expire ([`lease`](Builder::lease), default 60 s) so a crashed process cannot hold a key forever;
//! set the lease above the handler's timeout.
//!
//! **Retention.** Records are kept for the [`ttl`](Builder::ttl) after completion: **24 hours** by
//! default. The draft asks resources to publish their expiry policy; this layer publishes it here and
//! through [`IdempotencyHandle::ttl`] (for an API's own docs) rather than in a response header. The
//! in-memory store is bounded by records and bytes ([`MemoryStore`]): under memory pressure it evicts
//! completed records before their TTL, oldest expiry first, and a retry of an evicted key executes
//! again. Records of keys that cannot be replayed (too large, abandoned with
//! [`OnAbandon::MarkFailed`]) are evicted last — only for a new key, and only once no completed record
//! is left — so they outlive ordinary pressure, but they are not kept at any price: a store full of
//! them would refuse every new key for the whole TTL. Evictions are counted
//! ([`MemoryStore::evicted`]); size the store so that they stay at zero.
//!
//! **Audit.** With [`Builder::audit`], conflicts (`idempotency.conflict`), mismatches
//! (`idempotency.mismatch`), replays (`idempotency.replayed`), refusals of unreplayable keys
//! (`idempotency.not_replayable`) and unstored responses (`idempotency.not_stored`) are recorded with
//! the tenant, the method, the path and the scope hash (`key_hash`) — never the raw key or the body.
//!
//! # Status codes
//!
//! Rejections are `BoxError`s carrying palisade-core markers; the rescue layer of the `palisade`
//! crate turns them into `application/problem+json` responses.
//!
//! | situation | marker | HTTP |
//! |---|---|---|
//! | first request with a key | — | the handler's response, stored |
//! | same key, same request, completed | — | the stored response + `Idempotent-Replayed: true` |
//! | required key missing | [`MissingIdempotencyKey`] | 400 |
//! | key empty, over 255 characters, not visible ASCII, malformed sf-string, sent twice | [`InvalidIdempotencyKey`] | 400 |
//! | tenant missing ([`MissingTenant::Reject`]) | [`KeyError`] | 400 |
//! | tenant present but malformed, whatever [`MissingTenant`] says (opt out: [`Builder::malformed_tenant`]) | [`KeyError`] | 400 |
//! | key whose first response was not stored (too large, or abandoned with [`OnAbandon::MarkFailed`]) | [`InvalidIdempotencyKey`] | 400 |
//! | same key, first request still in flight | [`IdempotencyConflict`] | 409 + `Retry-After` |
//! | request body over [`max_request_body`](Builder::max_request_body) | [`PayloadTooLarge`] | 413 |
//! | same key, different request (another method, path, query, body, trailers or fingerprinted header) | [`IdempotencyMismatch`] | 422 |
//! | store full of in-flight requests | [`Overloaded`] | 503 + `Retry-After` |
//!
//! # Stores
//!
//! [`IdempotencyStore`] has four methods — `claim`, `complete`, `release`, `get`, plus `validate`
//! (checked by `build()`, accepting by default) — shaped so that a
//! Redis store fits with `SET NX PX` and small Lua compare-and-set scripts; see the [`store`] module.
//! [`MemoryStore`] is the default. Layers (and processes) sharing a store must share the hashing
//! [`secret`](Builder::secret).
//!
//! # In an axum router
//!
//! ```rust,ignore
//! let idempotency = IdempotencyLayer::builder()
//!     .tenant(HeaderKey::from_static("x-tenant-id"))
//!     .route(Method::POST, "/payments/*", KeyRule::Required)
//!     .audit(&audit)
//!     .build()?;
//! let app = Router::new()
//!     .route("/payments/charge", post(charge))
//!     .layer(ServiceBuilder::new().layer(RescueLayer::new()).layer(idempotency));
//! ```
//!
//! [draft-ietf-httpapi-idempotency-key-header-06]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/06/
//! [`MissingIdempotencyKey`]: palisade_core::error::MissingIdempotencyKey
//! [`InvalidIdempotencyKey`]: palisade_core::error::InvalidIdempotencyKey
//! [`IdempotencyConflict`]: palisade_core::error::IdempotencyConflict
//! [`IdempotencyMismatch`]: palisade_core::error::IdempotencyMismatch
//! [`PayloadTooLarge`]: palisade_core::error::PayloadTooLarge
//! [`Overloaded`]: palisade_core::error::Overloaded
//! [`KeyError`]: palisade_core::key::KeyError
#![forbid(unsafe_code)]

mod body;
mod config;
mod future;
mod hash;
mod key;
mod service;
pub mod store;

pub use body::{RequestBody, ResponseBody};
pub use config::{
    BuildError, Builder, KeyRule, MissingTenant, NoTenant, OnAbandon, DEFAULT_CONFLICT_RETRY_AFTER,
    DEFAULT_LEASE, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_TTL,
    MAX_BODY_LIMIT, MAX_FINGERPRINT_HEADERS, MAX_LEASE, MAX_METHODS, MAX_ROUTES, MAX_SECRET_LEN,
    MAX_TTL, MIN_DURATION,
};
pub use future::ResponseFuture;
pub use hash::{Fingerprint, Scope};
pub use key::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, MAX_KEY_LEN};
pub use palisade_core::key::MalformedKey;
pub use service::{Counts, Idempotency, IdempotencyHandle, IdempotencyLayer};
pub use store::{IdempotencyStore, MemoryStore, NotStored};
