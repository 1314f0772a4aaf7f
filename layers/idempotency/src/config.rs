//! The builder: every knob of the layer, validated once in `build()`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Request};
use palisade_core::audit::Audit;
use palisade_core::key::{KeyError, KeyExtractor, MalformedKey};

use crate::hash::Keys;
use crate::service::{Core, Routes, Shared, Stats};
use crate::store::{IdempotencyStore, MemoryStore};
use crate::IdempotencyLayer;

/// The default [`max_request_body`](Builder::max_request_body): 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 20;
/// The default [`max_response_body`](Builder::max_response_body): 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 1 << 20;
/// The default [`ttl`](Builder::ttl): 24 hours, as Stripe keeps keys.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default [`lease`](Builder::lease): 60 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// The default [`conflict_retry_after`](Builder::conflict_retry_after): 1 second.
pub const DEFAULT_CONFLICT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The largest [`max_request_body`](Builder::max_request_body) and
/// [`max_response_body`](Builder::max_response_body): 1 GiB. Bodies under the limit are held in memory
/// whole, one per request in flight.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;
/// The longest [`lease`](Builder::lease) and [`conflict_retry_after`](Builder::conflict_retry_after):
/// 24 hours.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest [`ttl`](Builder::ttl): 366 days.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// The shortest [`lease`](Builder::lease), [`ttl`](Builder::ttl) and
/// [`conflict_retry_after`](Builder::conflict_retry_after): 1 ms, the unit of stores that keep
/// expiries in milliseconds (Redis `PX`), which would round a shorter one to nothing.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The longest [`secret`](Builder::secret): 1024 bytes (it is hashed into 32-byte keys).
pub const MAX_SECRET_LEN: usize = 1024;
/// The most [`route`](Builder::route) rules: 1024 (each keyed request scans them).
pub const MAX_ROUTES: usize = 1024;
/// The most [`fingerprint_header`](Builder::fingerprint_header)s: 64.
pub const MAX_FINGERPRINT_HEADERS: usize = 64;
/// The most [`methods`](Builder::methods): 32.
pub const MAX_METHODS: usize = 32;

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "idempotency";

/// Whether the layer applies to a request, and whether the key is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRule {
    /// The layer does not apply: the request passes untouched, with or without a key.
    Off,
    /// Requests with a key are executed at most once; requests without one pass untouched.
    Optional,
    /// A request without a key is refused with `400` ([`MissingIdempotencyKey`]).
    ///
    /// [`MissingIdempotencyKey`]: palisade_core::error::MissingIdempotencyKey
    Required,
}

/// What happens to a request with an idempotency key but no tenant (the tenant's source is absent).
///
/// A tenant that is present but malformed is a separate decision,
/// [`malformed_tenant`](Builder::malformed_tenant): refused with `400` by default whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingTenant {
    /// Refuse it with the extractor's [`KeyError`] (`400`). The default: no tenant, no record.
    #[default]
    Reject,
    /// Use one shared anonymous scope for every request without a tenant. Anonymous clients can then
    /// replay (and pre-claim) each other's keys: use it only when they are one party.
    Shared,
    /// Pass the request on without idempotency.
    Bypass,
}

/// What happens to a key whose request was abandoned after its handler started: the response future
/// was dropped (client gone, timeout) or the handler panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnAbandon {
    /// Forget the record: the next request with the key executes again. The default: a retry after a
    /// cancellation is what clients expect, and a handler that did not finish usually did not commit.
    #[default]
    Release,
    /// Keep a failed record for the [`ttl`](Builder::ttl): requests with the key get `400` naming the
    /// reason. For handlers whose side effects may have happened before they were abandoned. A full
    /// [`MemoryStore`] evicts such records last, but it can evict them (see there); a retry of an
    /// evicted key executes again.
    MarkFailed,
}

/// A tenant extractor for layers without tenants: every request is in one scope.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTenant;

impl<B> KeyExtractor<Request<B>> for NoTenant {
    type Key = ();

    fn extract(&self, _req: &Request<B>) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Builds an [`IdempotencyLayer`]. From [`IdempotencyLayer::builder`].
///
/// Defaults: applies to `POST` and `PATCH` requests that carry a key ([`KeyRule::Optional`]); no
/// tenant ([`NoTenant`]: one scope for all clients — set [`tenant`](Self::tenant) in multi-tenant
/// services); the in-memory store ([`MemoryStore::new`]); request bodies up to 1 MiB; responses stored
/// up to 1 MiB; records kept 24 h; leases of 60 s; 5xx responses stored; abandoned keys released; a
/// random hashing secret (records are meaningful to this process only).
#[derive(Clone)]
pub struct Builder<K = NoTenant, St = MemoryStore> {
    tenant: K,
    store: St,
    missing_tenant: MissingTenant,
    malformed_tenant: MalformedKey,
    methods: Vec<Method>,
    default_rule: KeyRule,
    routes: Vec<(Method, String, KeyRule)>,
    fingerprint_headers: Vec<HeaderName>,
    max_request_body: u64,
    max_response_body: u64,
    lease: Duration,
    ttl: Duration,
    conflict_retry_after: Duration,
    store_server_errors: bool,
    on_abandon: OnAbandon,
    secret: Option<Vec<u8>>,
    audit: Audit,
    name: Cow<'static, str>,
}

impl<K: fmt::Debug, St: fmt::Debug> fmt::Debug for Builder<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("store", &self.store)
            .field("missing_tenant", &self.missing_tenant)
            .field("malformed_tenant", &self.malformed_tenant)
            .field("methods", &self.methods)
            .field("default_rule", &self.default_rule)
            .field("routes", &self.routes)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("store_server_errors", &self.store_server_errors)
            .field("on_abandon", &self.on_abandon)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            tenant: NoTenant,
            store: MemoryStore::new(),
            missing_tenant: MissingTenant::Reject,
            malformed_tenant: MalformedKey::Reject,
            methods: vec![Method::POST, Method::PATCH],
            default_rule: KeyRule::Optional,
            routes: Vec::new(),
            fingerprint_headers: Vec::new(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            lease: DEFAULT_LEASE,
            ttl: DEFAULT_TTL,
            conflict_retry_after: DEFAULT_CONFLICT_RETRY_AFTER,
            store_server_errors: true,
            on_abandon: OnAbandon::Release,
            secret: None,
            audit: Audit::disabled(),
            name: Cow::Borrowed("default"),
        }
    }
}

impl Builder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, St> Builder<K, St> {
    /// Names the layer (in logs and audit records).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Scopes records by tenant, as extracted by `extractor` (e.g.
    /// `HeaderKey::from_static("x-tenant-id")`, or an `ExtensionKey` set by authentication). The same
    /// client key from two tenants is two records: no cross-tenant replay or pre-claiming.
    pub fn tenant<K2>(self, extractor: K2) -> Builder<K2, St> {
        Builder {
            tenant: extractor,
            store: self.store,
            missing_tenant: self.missing_tenant,
            malformed_tenant: self.malformed_tenant,
            methods: self.methods,
            default_rule: self.default_rule,
            routes: self.routes,
            fingerprint_headers: self.fingerprint_headers,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            lease: self.lease,
            ttl: self.ttl,
            conflict_retry_after: self.conflict_retry_after,
            store_server_errors: self.store_server_errors,
            on_abandon: self.on_abandon,
            secret: self.secret,
            audit: self.audit,
            name: self.name,
        }
    }

    /// What to do with a keyed request that carries no tenant (default [`MissingTenant::Reject`]).
    pub fn missing_tenant(mut self, policy: MissingTenant) -> Self {
        self.missing_tenant = policy;
        self
    }

    /// What to do with a keyed request whose tenant is present but malformed (default
    /// [`MalformedKey::Reject`]: `400` whatever [`missing_tenant`](Self::missing_tenant) says, so a
    /// client cannot move into the shared scope, or around idempotency, by sending a garbage tenant).
    /// [`MalformedKey::AsMissing`] hands such requests to the missing-tenant policy instead.
    pub fn malformed_tenant(mut self, policy: MalformedKey) -> Self {
        self.malformed_tenant = policy;
        self
    }

    /// Keeps records in `store` (default: a [`MemoryStore`] with its default limits). Pass a clone of a
    /// store to share its records between layers.
    pub fn store<St2>(self, store: St2) -> Builder<K, St2> {
        Builder {
            tenant: self.tenant,
            store,
            missing_tenant: self.missing_tenant,
            malformed_tenant: self.malformed_tenant,
            methods: self.methods,
            default_rule: self.default_rule,
            routes: self.routes,
            fingerprint_headers: self.fingerprint_headers,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            lease: self.lease,
            ttl: self.ttl,
            conflict_retry_after: self.conflict_retry_after,
            store_server_errors: self.store_server_errors,
            on_abandon: self.on_abandon,
            secret: self.secret,
            audit: self.audit,
            name: self.name,
        }
    }

    /// The methods the layer applies to on every route without its own [`route`](Self::route) rule
    /// (default `POST` and `PATCH`; `PUT` and `DELETE` are idempotent by definition). At most
    /// [`MAX_METHODS`].
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Whether requests with those [`methods`](Self::methods) must carry a key (default `false`:
    /// [`KeyRule::Optional`]; `true`: [`KeyRule::Required`]).
    pub fn require_key(mut self, required: bool) -> Self {
        self.default_rule = if required {
            KeyRule::Required
        } else {
            KeyRule::Optional
        };
        self
    }

    /// The rule for `method` on `path`, overriding the defaults. `path` is exact (`/orders`), or a
    /// prefix when it ends in `*` (`/payments/*` matches `/payments/` and everything under it); an exact
    /// rule beats a prefix, and a longer prefix a shorter one.
    ///
    /// Paths are the request's URI path as this layer sees it: behind axum's `Router::layer` the full
    /// path; behind `Router::nest` the path inside the nest. At most [`MAX_ROUTES`] rules.
    pub fn route(mut self, method: Method, path: impl Into<String>, rule: KeyRule) -> Self {
        self.routes.push((method, path.into(), rule));
        self
    }

    /// Includes `header` in the fingerprint: the same key with a different value of this header is a
    /// different request (`422`). The method, the path and query and the body are always included.
    /// At most [`MAX_FINGERPRINT_HEADERS`].
    pub fn fingerprint_header(mut self, header: HeaderName) -> Self {
        self.fingerprint_headers.push(header);
        self
    }

    /// The largest request body read, in bytes (default [`DEFAULT_MAX_REQUEST_BODY`], at most
    /// [`MAX_BODY_LIMIT`]). A keyed request with a larger body is refused with `413` before its
    /// handler runs, and nothing is stored.
    pub fn max_request_body(mut self, bytes: u64) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// The largest response body stored, in bytes (default [`DEFAULT_MAX_RESPONSE_BODY`], at most
    /// [`MAX_BODY_LIMIT`]; the store's own byte limit applies too). A larger
    /// response still goes to the client in full, but the key is recorded as
    /// [`NotStored::TooLarge`](crate::NotStored::TooLarge): a retry gets `400` saying so, and the
    /// handler does not run again — while the record is kept (its TTL; a full [`MemoryStore`] evicts
    /// such records last, see there).
    pub fn max_response_body(mut self, bytes: u64) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// How long a request holds its key while in flight (default [`DEFAULT_LEASE`]). The lease is
    /// given back when the request ends; the expiry is for crashes. Set it above the handler's timeout:
    /// a request still running when its lease expires can run a second time. From [`MIN_DURATION`] to
    /// [`MAX_LEASE`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a completed record is kept, from completion (default [`DEFAULT_TTL`], 24 h; from
    /// [`MIN_DURATION`] to [`MAX_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The `Retry-After` of a `409` (capped by the time left on the lease; default 1 s; from
    /// [`MIN_DURATION`] to [`MAX_LEASE`]). `Retry-After` is in whole seconds: the rescue layer rounds
    /// up.
    pub fn conflict_retry_after(mut self, after: Duration) -> Self {
        self.conflict_retry_after = after;
        self
    }

    /// Whether 5xx responses are stored and replayed like any other (default `true`, as Stripe does).
    /// With `false`, a 5xx releases the key so that a retry executes again.
    pub fn store_server_errors(mut self, store: bool) -> Self {
        self.store_server_errors = store;
        self
    }

    /// What happens to a key whose request was abandoned (default [`OnAbandon::Release`]).
    pub fn on_abandon(mut self, policy: OnAbandon) -> Self {
        self.on_abandon = policy;
        self
    }

    /// The secret the scope and fingerprint hashes are keyed with (16 to [`MAX_SECRET_LEN`] bytes).
    /// Processes that
    /// share a store must share it; by default every layer draws a random one.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// Records conflicts, mismatches, replays and unstored responses in `audit`, with the tenant and a
    /// hash of the scope (never the raw key or the body).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A `lease`, `ttl` or `conflict_retry_after` under [`MIN_DURATION`] or over its maximum
    /// ([`MAX_LEASE`], [`MAX_TTL`]); a `max_request_body` or `max_response_body` over
    /// [`MAX_BODY_LIMIT`]; more than [`MAX_ROUTES`] routes, [`MAX_FINGERPRINT_HEADERS`] fingerprint
    /// headers or [`MAX_METHODS`] methods; a `route` path not starting with `/`; a `secret` shorter than
    /// 16 or longer than [`MAX_SECRET_LEN`] bytes; or a store that refuses its own limits
    /// ([`IdempotencyStore::validate`]: a [`MemoryStore`] with `max_records` or `max_bytes` out of
    /// range).
    pub fn build(self) -> Result<IdempotencyLayer<K>, BuildError>
    where
        St: IdempotencyStore,
    {
        for (setting, value, max) in [
            ("lease", self.lease, MAX_LEASE),
            ("ttl", self.ttl, MAX_TTL),
            ("conflict_retry_after", self.conflict_retry_after, MAX_LEASE),
        ] {
            if value < MIN_DURATION {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("{value:?} is under the minimum of {MIN_DURATION:?}"),
                ));
            }
            if value > max {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("{value:?} is over the maximum of {max:?}"),
                ));
            }
        }
        for (setting, value) in [
            ("max_request_body", self.max_request_body),
            ("max_response_body", self.max_response_body),
        ] {
            if value > MAX_BODY_LIMIT {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("{value} bytes is over the maximum of {MAX_BODY_LIMIT} (1 GiB)"),
                ));
            }
        }
        for (setting, len, max) in [
            ("route", self.routes.len(), MAX_ROUTES),
            (
                "fingerprint_header",
                self.fingerprint_headers.len(),
                MAX_FINGERPRINT_HEADERS,
            ),
            ("methods", self.methods.len(), MAX_METHODS),
        ] {
            if len > max {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("{len} given, at most {max}"),
                ));
            }
        }
        self.store.validate()?;
        for (_, path, _) in &self.routes {
            if !path.starts_with('/') {
                return Err(BuildError::new(
                    LAYER,
                    "route",
                    format!("path {path:?} does not start with `/`"),
                ));
            }
        }
        let keys = match &self.secret {
            Some(s) if s.len() < 16 => {
                return Err(BuildError::new(
                    LAYER,
                    "secret",
                    "must be at least 16 bytes",
                ))
            }
            Some(s) if s.len() > MAX_SECRET_LEN => {
                return Err(BuildError::new(
                    LAYER,
                    "secret",
                    format!("must be at most {MAX_SECRET_LEN} bytes"),
                ))
            }
            Some(s) => Keys::derive(s),
            None => Keys::random(),
        };
        let core = Core {
            name: self.name,
            store: Arc::new(self.store),
            keys,
            routes: Routes::new(self.methods, self.default_rule, self.routes),
            missing_tenant: self.missing_tenant,
            malformed_tenant: self.malformed_tenant,
            fingerprint_headers: self.fingerprint_headers,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            lease: self.lease,
            ttl: self.ttl,
            conflict_retry_after: self.conflict_retry_after,
            store_server_errors: self.store_server_errors,
            on_abandon: self.on_abandon,
            audit: self.audit,
            stats: Arc::new(Stats::default()),
        };
        Ok(IdempotencyLayer::from_shared(Arc::new(Shared {
            tenant: self.tenant,
            core: Arc::new(core),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_named() {
        let cases = [
            (Builder::new().lease(Duration::ZERO), "lease"),
            (Builder::new().ttl(Duration::ZERO), "ttl"),
            (
                Builder::new().conflict_retry_after(Duration::ZERO),
                "conflict_retry_after",
            ),
            (
                Builder::new().route(Method::POST, "orders", KeyRule::Required),
                "route",
            ),
            (Builder::new().secret(b"short"), "secret"),
        ];
        for (builder, setting) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.setting(), setting, "{err}");
            assert!(err.to_string().contains(setting));
        }
        assert!(Builder::new().secret(b"0123456789abcdef").build().is_ok());
        assert!(format!("{:?}", Builder::new().secret(b"0123456789abcdef")).contains("\"..\""));
    }

    /// Every size and duration has a documented maximum (and durations a 1 ms minimum, the unit of
    /// a store that keeps them in milliseconds); values outside are refused, never clamped or
    /// truncated — and never reach the request path, where `now + Duration::MAX` would panic.
    #[test]
    fn sizes_and_durations_are_bounded() {
        let too_long = MAX_TTL + Duration::from_secs(1);
        let many_routes = (0..=MAX_ROUTES).fold(Builder::new(), |b, i| {
            b.route(Method::POST, format!("/r{i}"), KeyRule::Required)
        });
        let many_headers = (0..=MAX_FINGERPRINT_HEADERS).fold(Builder::new(), |b, i| {
            b.fingerprint_header(HeaderName::try_from(format!("x-h{i}")).unwrap())
        });
        let many_methods = Builder::new().methods(
            (0..=MAX_METHODS).map(|i| Method::from_bytes(format!("M{i}").as_bytes()).unwrap()),
        );
        let cases = [
            (
                Builder::new().max_request_body(MAX_BODY_LIMIT + 1),
                "max_request_body",
            ),
            (
                Builder::new().max_request_body(u64::MAX),
                "max_request_body",
            ),
            (
                Builder::new().max_response_body(MAX_BODY_LIMIT + 1),
                "max_response_body",
            ),
            (
                Builder::new().lease(MAX_LEASE + Duration::from_millis(1)),
                "lease",
            ),
            (Builder::new().lease(Duration::MAX), "lease"),
            (Builder::new().lease(Duration::from_micros(999)), "lease"),
            (Builder::new().ttl(too_long), "ttl"),
            (Builder::new().ttl(Duration::MAX), "ttl"),
            (Builder::new().ttl(Duration::from_nanos(1)), "ttl"),
            (
                Builder::new().conflict_retry_after(MAX_LEASE + Duration::from_secs(1)),
                "conflict_retry_after",
            ),
            (
                Builder::new().conflict_retry_after(Duration::from_micros(1)),
                "conflict_retry_after",
            ),
            (
                Builder::new().secret(vec![7u8; MAX_SECRET_LEN + 1]),
                "secret",
            ),
            (many_routes, "route"),
            (many_headers, "fingerprint_header"),
            (many_methods, "methods"),
        ];
        for (builder, setting) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.setting(), setting, "{err}");
        }
        // The maxima themselves are accepted.
        Builder::new()
            .max_request_body(MAX_BODY_LIMIT)
            .max_response_body(MAX_BODY_LIMIT)
            .lease(MAX_LEASE)
            .ttl(MAX_TTL)
            .conflict_retry_after(MAX_LEASE)
            .secret(vec![7u8; MAX_SECRET_LEN])
            .lease(Duration::from_millis(1))
            .build()
            .unwrap();
    }

    /// The in-memory store's limits are checked when the layer using it is built.
    #[test]
    fn memory_store_limits_are_bounded() {
        let cases = [
            (MemoryStore::builder().max_records(0), "max_records"),
            (
                MemoryStore::builder().max_records(crate::store::MAX_RECORDS + 1),
                "max_records",
            ),
            (MemoryStore::builder().max_bytes(1023), "max_bytes"),
            (MemoryStore::builder().max_bytes(usize::MAX), "max_bytes"),
        ];
        for (store, setting) in cases {
            let err = Builder::new().store(store.build()).build().unwrap_err();
            assert_eq!(err.setting(), setting, "{err}");
        }
        let ok = MemoryStore::builder()
            .max_records(crate::store::MAX_RECORDS)
            .max_bytes(crate::store::MAX_BYTES)
            .build();
        Builder::new().store(ok).build().unwrap();
    }
}
