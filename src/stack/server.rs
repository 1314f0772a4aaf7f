//! The server preset.

use palisade_core::audit::Audit;
use palisade_core::health::Health;
use tower_layer::{Identity, Layer};

use super::part::{slot, BuildContext, Part};
use super::{Handles, StackError};
use crate::rescue::{Rescue, RescueLayer};

/// The server preset: **rescue → gate → rate limit → bulkhead → adaptive → timeout → fallback →
/// breaker → chaos → handler** (see the [module docs](super) for why). A `Layer` whose service is `Error = Infallible`.
///
/// Build it with [`ServerStack::builder`]; every slot is optional.
#[derive(Debug, Clone)]
pub struct ServerStack<
    G = Identity,
    R = Identity,
    B = Identity,
    A = Identity,
    T = Identity,
    F = Identity,
    C = Identity,
    X = Identity,
> {
    rescue: RescueLayer,
    gate: G,
    rate_limit: R,
    bulkhead: B,
    adaptive: A,
    timeout: T,
    fallback: F,
    breaker: C,
    chaos: X,
    handles: Handles,
}

impl ServerStack {
    /// A builder with every slot empty, a fresh [`Health`] and a disabled [`Audit`] (give it yours with
    /// [`health`](ServerStackBuilder::health) and [`audit`](ServerStackBuilder::audit)).
    pub fn builder() -> ServerStackBuilder {
        ServerStackBuilder {
            health: None,
            audit: None,
            rescue: RescueLayer::new(),
            gate: Identity::new(),
            rate_limit: Identity::new(),
            bulkhead: Identity::new(),
            adaptive: Identity::new(),
            timeout: Identity::new(),
            fallback: Identity::new(),
            breaker: Identity::new(),
            chaos: Identity::new(),
        }
    }
}

impl<G, R, B, A, T, F, C, X> ServerStack<G, R, B, A, T, F, C, X> {
    /// The handles of every layer in the stack, and the shared health and audit.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Builds an Idempotency-Key layer that records to this stack's audit log, for the routes that
    /// create things (`MethodRouter::route_layer`). It is wrapped in this stack's rescue layer, so its
    /// refusals (missing key, conflict, mismatch) become responses and it fits axum's infallible route
    /// layers. It sits inside the stack, so a replay is still rate limited and a refused request never
    /// reaches the idempotency store. [`Rescued::inner`] gives the layer (and its handle).
    ///
    /// # Errors
    ///
    /// The builder refused its settings.
    #[cfg(feature = "idempotency")]
    pub fn idempotency<K, St>(
        &self,
        builder: palisade_idempotency::Builder<K, St>,
    ) -> Result<Rescued<palisade_idempotency::IdempotencyLayer<K>>, StackError>
    where
        St: palisade_idempotency::IdempotencyStore,
    {
        let layer = builder
            .audit(self.handles.audit())
            .build()
            .map_err(|e| StackError::new("idempotency", e))?;
        Ok(self.rescued(layer))
    }

    /// Wraps `layer` in this stack's rescue layer, for layers used per route (`route_layer` wants an
    /// infallible service).
    pub fn rescued<L>(&self, layer: L) -> Rescued<L> {
        Rescued {
            rescue: self.rescue.clone(),
            inner: layer,
        }
    }
}

/// A layer wrapped in a rescue layer: its refusals become responses (see [`ServerStack::rescued`]).
#[derive(Debug, Clone)]
pub struct Rescued<L> {
    rescue: RescueLayer,
    inner: L,
}

impl<L> Rescued<L> {
    /// The wrapped layer (e.g. for its `handle()`).
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

impl<S, L: Layer<S>> Layer<S> for Rescued<L> {
    type Service = Rescue<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        self.rescue.layer(self.inner.layer(inner))
    }
}

impl<S, G, R, B, A, T, F, C, X> Layer<S> for ServerStack<G, R, B, A, T, F, C, X>
where
    X: Layer<S>,
    C: Layer<X::Service>,
    F: Layer<C::Service>,
    T: Layer<F::Service>,
    A: Layer<T::Service>,
    B: Layer<A::Service>,
    R: Layer<B::Service>,
    G: Layer<R::Service>,
{
    type Service = Rescue<G::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        let svc = self.chaos.layer(inner);
        let svc = self.breaker.layer(svc);
        let svc = self.fallback.layer(svc);
        let svc = self.timeout.layer(svc);
        let svc = self.adaptive.layer(svc);
        let svc = self.bulkhead.layer(svc);
        let svc = self.rate_limit.layer(svc);
        let svc = self.gate.layer(svc);
        self.rescue.layer(svc)
    }
}

/// Builds a [`ServerStack`]: each slot takes that layer's builder (or `Option` of it, or nothing).
#[derive(Debug)]
pub struct ServerStackBuilder<
    G = Identity,
    R = Identity,
    B = Identity,
    A = Identity,
    T = Identity,
    F = Identity,
    C = Identity,
    X = Identity,
> {
    health: Option<Health>,
    audit: Option<Audit>,
    rescue: RescueLayer,
    gate: G,
    rate_limit: R,
    bulkhead: B,
    adaptive: A,
    timeout: T,
    fallback: F,
    breaker: C,
    chaos: X,
}

impl<G, R, B, A, T, F, C, X> ServerStackBuilder<G, R, B, A, T, F, C, X> {
    /// The health handle every layer registers with (default: a fresh one).
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// The audit log every layer records to (default: disabled).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = Some(audit.clone());
        self
    }

    /// The outermost rescue layer (default: [`RescueLayer::new`]).
    pub fn rescue(mut self, rescue: RescueLayer) -> Self {
        self.rescue = rescue;
        self
    }

    /// The degradation gate: a `palisade::degrade::GateLayer::builder()`.
    pub fn gate<N: Part<slot::Gate>>(self, part: N) -> ServerStackBuilder<N, R, B, A, T, F, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: part,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The rate limit: a `palisade::ratelimit::RateLimitLayer::builder(..)`.
    pub fn rate_limit<N: Part<slot::RateLimit>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, N, B, A, T, F, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: part,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The bulkhead: a `palisade::bulkhead::BulkheadLayer::builder()`.
    pub fn bulkhead<N: Part<slot::Bulkhead>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, N, A, T, F, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: part,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The adaptive concurrency limit, inside the bulkhead and outside the timeout (so a timed-out
    /// request reaches it as `Elapsed`, a drop): a `palisade::adaptive::AdaptiveLayer::builder()`, or
    /// a [`Toggle`](super::Toggle) of one.
    pub fn adaptive<N: Part<slot::Adaptive>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, B, N, T, F, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: part,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The timeout: a `palisade::timeout::TimeoutLayer::builder()`.
    pub fn timeout<N: Part<slot::Timeout>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, B, A, N, F, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: part,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The fallback: a `palisade::fallback::FallbackLayer::builder()` with its kind chosen.
    pub fn fallback<N: Part<slot::Fallback>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, B, A, T, N, C, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: part,
            breaker: self.breaker,
            chaos: self.chaos,
        }
    }

    /// The circuit breaker: a `palisade::breaker::CircuitBreakerLayer::builder()`.
    pub fn breaker<N: Part<slot::Breaker>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, B, A, T, F, N, X> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: part,
            chaos: self.chaos,
        }
    }

    /// Fault injection: a `palisade::chaos::ChaosLayer::builder()`.
    pub fn chaos<N: Part<slot::Chaos>>(
        self,
        part: N,
    ) -> ServerStackBuilder<G, R, B, A, T, F, C, N> {
        ServerStackBuilder {
            health: self.health,
            audit: self.audit,
            rescue: self.rescue,
            gate: self.gate,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            timeout: self.timeout,
            fallback: self.fallback,
            breaker: self.breaker,
            chaos: part,
        }
    }
}

impl<G, R, B, A, T, F, C, X> ServerStackBuilder<G, R, B, A, T, F, C, X>
where
    G: Part<slot::Gate>,
    R: Part<slot::RateLimit>,
    B: Part<slot::Bulkhead>,
    A: Part<slot::Adaptive>,
    T: Part<slot::Timeout>,
    F: Part<slot::Fallback>,
    C: Part<slot::Breaker>,
    X: Part<slot::Chaos>,
{
    /// Gives every builder the shared health and audit, builds them in order, and collects their handles.
    ///
    /// # Errors
    ///
    /// The first builder that refused its settings, named by its slot.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<
        ServerStack<G::Layer, R::Layer, B::Layer, A::Layer, T::Layer, F::Layer, C::Layer, X::Layer>,
        StackError,
    > {
        let mut cx = BuildContext::new(
            self.health.unwrap_or_default(),
            self.audit.unwrap_or_else(Audit::disabled),
        );
        let gate = self.gate.build_part(&mut cx)?;
        let rate_limit = self.rate_limit.build_part(&mut cx)?;
        let bulkhead = self.bulkhead.build_part(&mut cx)?;
        let adaptive = self.adaptive.build_part(&mut cx)?;
        let timeout = self.timeout.build_part(&mut cx)?;
        let fallback = self.fallback.build_part(&mut cx)?;
        let breaker = self.breaker.build_part(&mut cx)?;
        let chaos = self.chaos.build_part(&mut cx)?;
        tracing::debug!(target: "palisade::stack", handles = ?cx.handles, "server stack built");
        Ok(ServerStack {
            rescue: self.rescue,
            gate,
            rate_limit,
            bulkhead,
            adaptive,
            timeout,
            fallback,
            breaker,
            chaos,
            handles: cx.handles,
        })
    }
}
