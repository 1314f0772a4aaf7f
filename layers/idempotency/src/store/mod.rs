//! Where idempotency records live: the [`IdempotencyStore`] trait and the in-memory [`MemoryStore`].
//!
//! # The record's life
//!
//! ```text
//!            claim (atomic: absent → InFlight)          complete (token must match)
//!   absent ──────────────────────────────────▶ InFlight ─────────────────────────▶ Completed | Failed
//!     ▲                                           │                                      │
//!     │  release(Forget), or the lease expires    │ release(MarkFailed)                  │ TTL
//!     └───────────────────────────────────────────┴──────────▶ Failed                    ▼
//!                                                                                     absent
//! ```
//!
//! - [`claim`](IdempotencyStore::claim) is the only way in: it atomically creates an `InFlight` record
//!   with a lease (a [`LeaseToken`] and an expiry) if there is none — or if the one there is an
//!   `InFlight` whose lease expired (a crashed process) — and otherwise returns what is there. Two
//!   concurrent claims of one scope: exactly one gets the lease.
//! - [`complete`](IdempotencyStore::complete) stores the outcome, only for the lease holder (the token
//!   must match, so a request whose lease expired and was taken over cannot overwrite the new holder's
//!   record), and starts the record's TTL.
//! - [`release`](IdempotencyStore::release) gives a lease back without an outcome: the record is
//!   forgotten (the next request with the key executes) or marked failed.
//! - [`get`](IdempotencyStore::get) reads a record without changing it.
//!
//! # Why this shape
//!
//! `claim`, `complete` and `get` return a [`StoreFuture`]: either a value that is ready at once (the
//! in-memory store: no allocation, no task) or a boxed future (a network store). That keeps the
//! in-memory path as cheap as a synchronous trait while a Redis store fits the same trait:
//!
//! - `claim` → one Lua script: `GET`; if absent (or an in-flight record whose lease has passed),
//!   `SET key <in-flight, token, fingerprint> PX <lease>` and return the token, else return the record
//!   (the plain `SET NX PX` covers the absent case; the script adds the takeover).
//! - `complete` → a Lua compare-and-set: if the record's token is ours, `SET key <outcome> PX <ttl>`.
//! - `release` → a Lua compare-and-delete (or compare-and-set to a failed record).
//! - `get` → `GET`.
//!
//! `release` alone is synchronous and returns nothing: it is called from the lease's drop guard (a
//! cancelled request, a panicking handler), where nothing can be awaited. A network store spawns the
//! command (or queues it) and returns; if it is lost anyway, the lease expiry frees the key.
//!
//! Stores share records between processes only if every process hashes scopes with the same secret
//! ([`Builder::secret`](crate::Builder::secret)).

mod memory;

pub use memory::{
    MemoryStore, MemoryStoreBuilder, DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS, MAX_BYTES, MAX_RECORDS,
};

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use palisade_core::config::BuildError;
use palisade_core::error::BoxError;

use crate::hash::{Fingerprint, Scope};

/// A store of idempotency records. See the [module docs](self) for the contract.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Takes the lease on `scope` if it has no record (or only an in-flight one whose lease expired):
    /// the new record is in flight, with `fingerprint`, for at most `lease`. Otherwise returns the
    /// record that is there. Atomic: of concurrent claims of one scope, exactly one gets the lease.
    fn claim(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> StoreFuture<Result<Claim, StoreError>>;

    /// Stores the outcome of the request holding the lease `token`, kept for `ttl`.
    ///
    /// [`StoreError::LeaseLost`] if `scope` is no longer in flight under `token` (the lease expired and
    /// another request took it, or the record was evicted).
    fn complete(
        &self,
        scope: Scope,
        token: LeaseToken,
        outcome: Completion,
        ttl: Duration,
    ) -> StoreFuture<Result<(), StoreError>>;

    /// Gives the lease `token` back without an outcome. Does nothing if `scope` is no longer in flight
    /// under `token`. Called from a drop guard: must not block, cannot be awaited (see the
    /// [module docs](self)).
    fn release(&self, scope: Scope, token: LeaseToken, how: Release);

    /// The record of `scope`, if there is one that has not expired.
    fn get(&self, scope: Scope) -> StoreFuture<Result<Option<Record>, StoreError>>;

    /// Checks the store's own configuration; called once by
    /// [`Builder::build`](crate::Builder::build), whose error it becomes. The default accepts it.
    ///
    /// # Errors
    ///
    /// A setting of the store is out of range.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

impl<St: IdempotencyStore + ?Sized> IdempotencyStore for Arc<St> {
    fn claim(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> StoreFuture<Result<Claim, StoreError>> {
        (**self).claim(scope, fingerprint, lease)
    }

    fn complete(
        &self,
        scope: Scope,
        token: LeaseToken,
        outcome: Completion,
        ttl: Duration,
    ) -> StoreFuture<Result<(), StoreError>> {
        (**self).complete(scope, token, outcome, ttl)
    }

    fn release(&self, scope: Scope, token: LeaseToken, how: Release) {
        (**self).release(scope, token, how);
    }

    fn get(&self, scope: Scope) -> StoreFuture<Result<Option<Record>, StoreError>> {
        (**self).get(scope)
    }

    fn validate(&self) -> Result<(), BuildError> {
        (**self).validate()
    }
}

/// Identifies one lease: the holder proves it holds the lease with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(u64);

impl LeaseToken {
    /// A token (a store picks unique or random values).
    pub const fn new(token: u64) -> Self {
        LeaseToken(token)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// What [`claim`](IdempotencyStore::claim) found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Claim {
    /// There was no record: the caller holds the lease and must `complete` or `release` it.
    Acquired(LeaseToken),
    /// There is a record; nothing was changed.
    Existing(Record),
}

/// A record in a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Record {
    /// The first request is still being processed.
    InFlight {
        /// Its fingerprint.
        fingerprint: Fingerprint,
        /// Time left on its lease.
        expires_in: Duration,
    },
    /// The first request's response, to replay.
    Completed {
        /// Its fingerprint.
        fingerprint: Fingerprint,
        /// The response.
        response: Arc<StoredResponse>,
    },
    /// The first request ran but its outcome was not stored; the key cannot be replayed.
    Failed {
        /// Its fingerprint.
        fingerprint: Fingerprint,
        /// Why.
        reason: NotStored,
    },
}

impl Record {
    /// The fingerprint of the request that created the record.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Record::InFlight { fingerprint, .. }
            | Record::Completed { fingerprint, .. }
            | Record::Failed { fingerprint, .. } => *fingerprint,
        }
    }
}

/// The outcome passed to [`complete`](IdempotencyStore::complete).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Completion {
    /// The response, to replay.
    Response(Arc<StoredResponse>),
    /// The request ran, but its response is not kept.
    Failed(NotStored),
}

/// How [`release`](IdempotencyStore::release) gives a lease back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// Forget the record: the next request with the key executes.
    Forget,
    /// Keep a failed record for `ttl`: requests with the key get an error until it expires.
    MarkFailed {
        /// Why.
        reason: NotStored,
        /// How long to keep it.
        ttl: Duration,
    },
}

/// Why a record holds no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStored {
    /// The response was larger than the store's limit.
    TooLarge,
    /// The first request was abandoned (cancelled, or its handler panicked) and the layer is set to
    /// mark such keys failed ([`OnAbandon::MarkFailed`](crate::OnAbandon::MarkFailed)).
    Abandoned,
}

impl NotStored {
    /// What a client retrying the key is told.
    pub fn reason(self) -> &'static str {
        match self {
            NotStored::TooLarge => {
                "this key was already used, but its first response was too large to store and cannot be replayed; send a new key"
            }
            NotStored::Abandoned => {
                "this key was already used, but its first request did not finish and its outcome is unknown; send a new key"
            }
        }
    }
}

/// A response kept for replay: status, headers (without hop-by-hop headers and `Date`), body and
/// trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers to replay.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, if the body had any.
    pub trailers: Option<HeaderMap>,
}

impl StoredResponse {
    /// A response with no trailers.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        StoredResponse {
            status,
            headers,
            body,
            trailers: None,
        }
    }

    /// Adds trailers.
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers;
        self
    }

    /// A copy that owns exactly its bytes: the body, every header value and every trailer value copied
    /// into buffers of their own size. [`Bytes`] and [`HeaderValue`](http::HeaderValue)s can be views
    /// into a larger buffer (a slice of a read buffer) and keep all of it alive; a store that holds
    /// responses in memory and counts [`size`](Self::size) against a limit stores this copy, so what
    /// it counts is what it holds. (Header names are always owned or static.) Sensitive header values
    /// stay sensitive.
    pub fn to_owned_exact(&self) -> StoredResponse {
        fn headers(h: &HeaderMap) -> HeaderMap {
            let mut out = HeaderMap::with_capacity(h.len());
            for (name, value) in h {
                let mut copy = http::HeaderValue::from_bytes(value.as_bytes())
                    .expect("a header value's bytes are a valid header value");
                copy.set_sensitive(value.is_sensitive());
                out.append(name.clone(), copy);
            }
            out
        }
        StoredResponse {
            status: self.status,
            headers: headers(&self.headers),
            body: Bytes::copy_from_slice(&self.body),
            trailers: self.trailers.as_ref().map(headers),
        }
    }

    /// An estimate of the memory it takes, in bytes: the body, every header name and value, and a fixed
    /// overhead per header and per response. Stores count it against their byte limits.
    pub fn size(&self) -> usize {
        const PER_HEADER: usize = 32;
        const PER_RESPONSE: usize = 160;
        let headers = |h: &HeaderMap| {
            h.iter()
                .map(|(k, v)| k.as_str().len() + v.len() + PER_HEADER)
                .sum::<usize>()
        };
        PER_RESPONSE
            + self.body.len()
            + headers(&self.headers)
            + self.trailers.as_ref().map_or(0, headers)
    }
}

/// A store failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store has no room for a new record: it is full of requests in flight. The layer answers
    /// `503` ([`Overloaded`](palisade_core::error::Overloaded)); nothing was stored, so a retry is safe.
    Full,
    /// The lease is no longer held under this token (see [`IdempotencyStore::complete`]).
    LeaseLost,
    /// The backend failed (a network store's connection, ...).
    Backend(BoxError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str("idempotency store is full of requests in flight"),
            StoreError::LeaseLost => f.write_str("idempotency lease was lost (expired or evicted)"),
            StoreError::Backend(e) => write!(f, "idempotency store failed: {e}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

/// The future a store method returns: a value ready at once, or a boxed future.
///
/// The in-memory store answers synchronously with [`StoreFuture::ready`] (no allocation); a network
/// store returns [`StoreFuture::boxed`].
#[must_use = "futures do nothing unless polled"]
pub struct StoreFuture<T> {
    repr: Repr<T>,
}

enum Repr<T> {
    Ready(Option<T>),
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'static>>),
}

impl<T> StoreFuture<T> {
    /// A future that is ready with `value`.
    pub fn ready(value: T) -> Self {
        StoreFuture {
            repr: Repr::Ready(Some(value)),
        }
    }

    /// Wraps a future.
    pub fn boxed(fut: impl Future<Output = T> + Send + 'static) -> Self {
        StoreFuture {
            repr: Repr::Boxed(Box::pin(fut)),
        }
    }
}

// Both representations are movable: the boxed future is pinned on the heap.
impl<T> Unpin for StoreFuture<T> {}

impl<T> Future for StoreFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().repr {
            Repr::Ready(v) => Poll::Ready(v.take().expect("StoreFuture polled after completion")),
            Repr::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Ready(v) => f
                .debug_struct("StoreFuture::Ready")
                .field("taken", &v.is_none())
                .finish(),
            Repr::Boxed(_) => f.write_str("StoreFuture::Boxed"),
        }
    }
}
