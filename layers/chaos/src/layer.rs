//! The builder, the layer and the service.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use palisade_core::audit::Audit;
use palisade_core::error::BoxError;
use palisade_core::key::{KeyError, KeyExtractor};
use palisade_core::rng::SharedRng;
use tower_layer::Layer;
use tower_service::Service;

use crate::fault::TenantKey;
use crate::future::ResponseFuture;
use crate::handle::{AsRegistry, ChaosHandle};
use crate::registry::Registry;

/// The tenant key of a layer built without [`Builder::tenant_key`]: no request has a tenant, so
/// tenant-targeted faults never fire.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTenant;

impl<B> KeyExtractor<Request<B>> for NoTenant {
    type Key = ();

    fn extract(&self, _: &Request<B>) -> Result<(), KeyError> {
        Err(KeyError::missing(
            "tenant (the chaos layer has no tenant key)",
        ))
    }
}

/// Builds a [`ChaosLayer`]. Defaults: named `"default"`, seeded from entropy, no audit log, no tenant
/// key. The layer starts with no fault active.
#[derive(Debug, Clone)]
pub struct Builder<K = NoTenant> {
    name: Cow<'static, str>,
    seed: Option<u64>,
    audit: Audit,
    tenant_key: K,
    has_tenant_key: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            seed: None,
            audit: Audit::disabled(),
            tenant_key: NoTenant,
            has_tenant_key: false,
        }
    }
}

impl Builder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K> Builder<K> {
    /// Names the layer in audit records and logs (useful with several chaos layers in one process).
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Seeds the generator behind probabilities and latency distributions, so that a run is
    /// reproducible: the same seed and the same requests, in the same order, get the same decisions.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Records every injection, removal and expiry in `audit`.
    #[must_use]
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Extracts the tenant that [`Fault::tenant`](crate::Fault::tenant) targets, e.g.
    /// `HeaderKey::from_static("x-tenant-id")`. The key is extracted only for requests that a
    /// tenant-targeted fault could hit.
    pub fn tenant_key<K2>(self, key: K2) -> Builder<K2> {
        Builder {
            name: self.name,
            seed: self.seed,
            audit: self.audit,
            tenant_key: key,
            has_tenant_key: true,
        }
    }

    /// Builds the layer. Every service it makes shares one fault set, controlled through
    /// [`ChaosLayer::handle`].
    pub fn build(self) -> ChaosLayer<K> {
        let rng = match self.seed {
            Some(seed) => SharedRng::seeded(seed),
            None => SharedRng::from_entropy(),
        };
        ChaosLayer {
            shared: Arc::new(Shared {
                registry: Registry::new(self.name, rng, self.audit, self.has_tenant_key),
                tenant_key: self.tenant_key,
            }),
        }
    }
}

/// State shared by a layer, its services and its handles.
pub(crate) struct Shared<K> {
    pub(crate) registry: Registry,
    pub(crate) tenant_key: K,
}

impl<K: Send + Sync> AsRegistry for Shared<K> {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl<K> fmt::Debug for Shared<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.registry.fmt(f)
    }
}

/// A [`Layer`] injecting faults into `http::Request` services. Built with [`ChaosLayer::builder`].
///
/// All services made by one layer share one fault set: `layer()` only clones an `Arc`.
pub struct ChaosLayer<K = NoTenant> {
    shared: Arc<Shared<K>>,
}

impl ChaosLayer {
    /// A builder with the defaults described on [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A layer with the defaults: no fault active until one is injected through its
    /// [`handle`](Self::handle).
    pub fn new() -> Self {
        Builder::new().build()
    }
}

impl Default for ChaosLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> ChaosLayer<K> {
    /// A handle to inject and remove faults (synchronous; cheap to clone).
    pub fn handle(&self) -> ChaosHandle
    where
        K: Send + Sync + 'static,
    {
        ChaosHandle::new(self.shared.clone())
    }
}

impl<K> Clone for ChaosLayer<K> {
    fn clone(&self) -> Self {
        ChaosLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for ChaosLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, K> Layer<S> for ChaosLayer<K> {
    type Service = Chaos<S, K>;

    fn layer(&self, inner: S) -> Chaos<S, K> {
        Chaos {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service with fault injection. Made by [`ChaosLayer`].
pub struct Chaos<S, K = NoTenant> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for Chaos<S, K> {
    fn clone(&self) -> Self {
        Chaos {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Chaos<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, K, ReqB, ResB> Service<Request<ReqB>> for Chaos<S, K>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Request<ReqB>>,
    K::Key: TenantKey,
{
    type Response = Response<crate::ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if !self.shared.registry.is_active() {
            return ResponseFuture::pass(self.inner.call(req));
        }
        self.call_with_faults(req)
    }
}

impl<S, K> Chaos<S, K> {
    /// The path taken only while a fault is active, kept out of line so that the path without one stays
    /// as small as the bare service's.
    #[cold]
    #[inline(never)]
    fn call_with_faults<ReqB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqB>>,
        K: KeyExtractor<Request<ReqB>>,
        K::Key: TenantKey,
    {
        let plan = self.shared.registry.plan(&req, &self.shared.tenant_key);
        ResponseFuture::planned(plan, |req| self.inner.call(req), req)
    }
}
