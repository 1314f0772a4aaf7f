//! The layer, the service, the state they share and the handle.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, Method, Request, Response};
use palisade_core::audit::Audit;
use palisade_core::error::{BoxError, MissingIdempotencyKey, PayloadTooLarge};
use palisade_core::key::KeyExtractor;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::{Builder, KeyRule, MissingTenant, OnAbandon};
use crate::future::ResponseFuture;
use crate::hash::Keys;
use crate::key::{self, IDEMPOTENCY_KEY};
use crate::store::IdempotencyStore;

/// Which requests the layer applies to.
#[derive(Debug)]
pub(crate) struct Routes {
    methods: Vec<Method>,
    default_rule: KeyRule,
    exact: Vec<(Method, String, KeyRule)>,
    /// Longest prefix first.
    prefixes: Vec<(Method, String, KeyRule)>,
}

impl Routes {
    pub(crate) fn new(
        methods: Vec<Method>,
        default_rule: KeyRule,
        routes: Vec<(Method, String, KeyRule)>,
    ) -> Self {
        let (mut prefixes, exact): (Vec<_>, Vec<_>) =
            routes.into_iter().partition(|(_, p, _)| p.ends_with('*'));
        for (_, p, _) in &mut prefixes {
            p.pop();
        }
        prefixes.sort_by_key(|r| std::cmp::Reverse(r.1.len()));
        Routes {
            methods,
            default_rule,
            exact,
            prefixes,
        }
    }

    #[inline]
    pub(crate) fn rule(&self, method: &Method, path: &str) -> KeyRule {
        if !self.exact.is_empty() {
            if let Some((_, _, r)) = self
                .exact
                .iter()
                .rev()
                .find(|(m, p, _)| m == method && p == path)
            {
                return *r;
            }
        }
        if let Some((_, _, r)) = self
            .prefixes
            .iter()
            .find(|(m, p, _)| m == method && path.starts_with(p.as_str()))
        {
            return *r;
        }
        if self.methods.contains(method) {
            self.default_rule
        } else {
            KeyRule::Off
        }
    }
}

/// Counters, shared by the layer's services and read through the [`IdempotencyHandle`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) executed: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) not_stored: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) store_full: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a request needs after `call`: configuration, store, counters.
pub(crate) struct Core {
    pub(crate) name: Cow<'static, str>,
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) keys: Keys,
    pub(crate) routes: Routes,
    pub(crate) missing_tenant: MissingTenant,
    pub(crate) malformed_tenant: palisade_core::key::MalformedKey,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) max_request_body: u64,
    pub(crate) max_response_body: u64,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) conflict_retry_after: Duration,
    pub(crate) store_server_errors: bool,
    pub(crate) on_abandon: OnAbandon,
    pub(crate) audit: Audit,
    pub(crate) stats: Arc<Stats>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .field("missing_tenant", &self.missing_tenant)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("store_server_errors", &self.store_server_errors)
            .field("on_abandon", &self.on_abandon)
            .finish_non_exhaustive()
    }
}

/// The layer's state: the tenant extractor and the core.
pub(crate) struct Shared<K> {
    pub(crate) tenant: K,
    pub(crate) core: Arc<Core>,
}

/// A [`Layer`] making keyed requests execute at most once. Built with [`IdempotencyLayer::builder`].
///
/// All services made by one layer share one configuration, store and set of counters: `layer()` only
/// clones an `Arc`.
pub struct IdempotencyLayer<K = crate::NoTenant> {
    shared: Arc<Shared<K>>,
}

impl IdempotencyLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<K> IdempotencyLayer<K> {
    pub(crate) fn from_shared(shared: Arc<Shared<K>>) -> Self {
        IdempotencyLayer { shared }
    }

    /// A handle to read the layer's counters (synchronous; cheap to clone).
    pub fn handle(&self) -> IdempotencyHandle {
        IdempotencyHandle {
            core: self.shared.core.clone(),
        }
    }
}

impl<K> Clone for IdempotencyLayer<K> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for IdempotencyLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("core", &self.shared.core)
            .finish_non_exhaustive()
    }
}

impl<S, K> Layer<S> for IdempotencyLayer<K> {
    type Service = Idempotency<S, K>;

    fn layer(&self, inner: S) -> Idempotency<S, K> {
        Idempotency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service whose keyed requests execute at most once. Made by [`IdempotencyLayer`].
///
/// Requests the layer applies to have their body read before the inner service is called, so the
/// inner service is cloned per keyed request (the ready clone is moved into the response future, as
/// tower requires).
pub struct Idempotency<S, K = crate::NoTenant> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for Idempotency<S, K> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Idempotency<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("core", &self.shared.core)
            .finish()
    }
}

impl<S, K, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S, K>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Request<ReqB>>,
    ReqB: http_body::Body,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, ReqB, ResB, K::Key>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &*self.shared;
        let core = &shared.core;
        let rule = core.routes.rule(req.method(), req.uri().path());
        if rule == KeyRule::Off {
            return self.pass(req);
        }
        let scope = {
            let key = match key::parse(req.headers().get_all(IDEMPOTENCY_KEY)) {
                Ok(Some(key)) => key,
                Ok(None) if rule == KeyRule::Required => {
                    Stats::bump(&core.stats.rejected);
                    return ResponseFuture::rejected(MissingIdempotencyKey::new().into());
                }
                Ok(None) => return self.pass(req),
                Err(e) => {
                    Stats::bump(&core.stats.rejected);
                    return ResponseFuture::rejected(e.into());
                }
            };
            let tenant = match shared.tenant.extract(&req) {
                Ok(t) => Some(t),
                Err(e) if !core.malformed_tenant.as_missing(&e) => {
                    Stats::bump(&core.stats.rejected);
                    return ResponseFuture::rejected(e.into());
                }
                Err(e) => match core.missing_tenant {
                    MissingTenant::Reject => {
                        Stats::bump(&core.stats.rejected);
                        return ResponseFuture::rejected(e.into());
                    }
                    MissingTenant::Shared => None,
                    MissingTenant::Bypass => return self.pass(req),
                },
            };
            // Tenant + key: the method and path are in the fingerprint, so a key reused on another
            // endpoint is a `422`, never a second execution.
            let scope = core.keys.scope(tenant.as_ref(), &key);
            (scope, tenant)
        };
        // A body announcing more than the limit is refused without reading it.
        if http_body::Body::size_hint(req.body()).lower() > core.max_request_body {
            Stats::bump(&core.stats.rejected);
            return ResponseFuture::rejected(PayloadTooLarge::new(core.max_request_body).into());
        }
        // The ready service goes into the future; a fresh clone stays for the next `poll_ready`.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::keyed(req, svc, core.clone(), scope.0, scope.1)
    }
}

impl<S, K> Idempotency<S, K> {
    fn pass<ReqB, ResB>(
        &mut self,
        req: Request<ReqB>,
    ) -> ResponseFuture<S, S::Future, ReqB, ResB, K::Key>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        K: KeyExtractor<Request<ReqB>>,
    {
        ResponseFuture::passthrough(self.inner.call(req.map(RequestBody::streamed)))
    }
}

/// A handle to an [`IdempotencyLayer`]'s counters. Cheap to clone; methods are synchronous.
#[derive(Clone)]
pub struct IdempotencyHandle {
    core: Arc<Core>,
}

impl fmt::Debug for IdempotencyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyHandle")
            .field("name", &self.core.name)
            .field("counts", &self.counts())
            .finish()
    }
}

impl IdempotencyHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The counters since the layer was built.
    pub fn counts(&self) -> Counts {
        let s = &self.core.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            executed: load(&s.executed),
            replayed: load(&s.replayed),
            conflicts: load(&s.conflicts),
            mismatches: load(&s.mismatches),
            rejected: load(&s.rejected),
            not_stored: load(&s.not_stored),
            abandoned: load(&s.abandoned),
            store_full: load(&s.store_full),
        }
    }

    /// The record TTL, for publishing the retention policy (e.g. in an API's documentation).
    pub fn ttl(&self) -> Duration {
        self.core.ttl
    }
}

/// An [`IdempotencyHandle`]'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counts {
    /// Keyed requests that claimed their key and were passed to the handler.
    pub executed: u64,
    /// Responses replayed from the store.
    pub replayed: u64,
    /// `409`: the key's first request was in flight.
    pub conflicts: u64,
    /// `422`: the key was used with a different request.
    pub mismatches: u64,
    /// `400` / `413` before any lookup, and `400` for keys that cannot be replayed.
    pub rejected: u64,
    /// Responses not stored (too large), so the key cannot be replayed.
    pub not_stored: u64,
    /// Keyed requests abandoned after the handler started (dropped or panicked).
    pub abandoned: u64,
    /// `503`: the store had no room for a new key (full of requests in flight); nothing was stored.
    pub store_full: u64,
}
