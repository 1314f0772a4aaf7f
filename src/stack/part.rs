//! How a layer's builder becomes one slot of a stack: [`Part`], with the shared handles injected.

use palisade_core::audit::Audit;
use palisade_core::health::Health;
use tower_layer::Identity;

use super::{Handles, Maybe, StackError};

/// The positions of a stack. Each is a marker type; a builder fits a slot when it implements
/// [`Part`] for it, so a breaker builder cannot be put where the gate goes.
pub mod slot {
    /// A position in a stack, with the name errors and status reports use.
    pub trait Slot {
        /// The slot's name, e.g. `"rate_limit"`.
        const NAME: &'static str;
    }

    macro_rules! slots {
        ($($(#[$doc:meta])* $ty:ident => $name:literal;)*) => {$(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub enum $ty {}
            impl Slot for $ty {
                const NAME: &'static str = $name;
            }
        )*};
    }

    slots! {
        /// The degradation gate (server).
        Gate => "gate";
        /// The per-tenant rate limit (server).
        RateLimit => "rate_limit";
        /// The bulkhead (server and client).
        Bulkhead => "bulkhead";
        /// The request timeout (server).
        Timeout => "timeout";
        /// The fallback (server).
        Fallback => "fallback";
        /// The circuit breaker (server and client).
        Breaker => "breaker";
        /// Fault injection (server and client).
        Chaos => "chaos";
        /// The timeout over all attempts (client).
        TotalTimeout => "total_timeout";
        /// Retry with backoff (client).
        Retry => "retry";
        /// The timeout of each attempt (client).
        PerTryTimeout => "per_try_timeout";
        /// The adaptive concurrency limit (server and client).
        Adaptive => "adaptive";
        /// Hedged requests (client).
        Hedge => "hedge";
    }
}

/// What a stack builder hands every part: the one [`Health`] and the one [`Audit`] they share, and
/// the [`Handles`] being collected.
#[derive(Debug)]
pub struct BuildContext {
    pub(crate) health: Health,
    pub(crate) audit: Audit,
    pub(crate) handles: Handles,
}

impl BuildContext {
    pub(crate) fn new(health: Health, audit: Audit) -> Self {
        BuildContext {
            handles: Handles::new(health.clone(), audit.clone()),
            health,
            audit,
        }
    }

    /// The shared health handle.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The shared audit handle.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The handles collected so far (a part adds its own).
    pub fn handles_mut(&mut self) -> &mut Handles {
        &mut self.handles
    }
}

/// Something that becomes the layer in slot `S` of a stack: a layer's builder (the stack gives it the
/// shared [`Health`] and [`Audit`] and builds it), `Option<builder>` (a layer a config file may leave
/// out: [`Maybe`]), or [`Identity`] (the slot is empty).
pub trait Part<S: slot::Slot> {
    /// The layer built.
    type Layer;

    /// Builds the layer, records its handle in `cx`, and names the slot in any error.
    ///
    /// # Errors
    ///
    /// The builder refused its settings.
    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError>;
}

impl<S: slot::Slot> Part<S> for Identity {
    type Layer = Identity;

    fn build_part(self, _cx: &mut BuildContext) -> Result<Identity, StackError> {
        Ok(Identity::new())
    }
}

impl<S: slot::Slot, P: Part<S>> Part<S> for Option<P> {
    type Layer = Maybe<P::Layer>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        match self {
            Some(part) => Ok(Maybe(Some(part.build_part(cx)?))),
            None => Ok(Maybe(None)),
        }
    }
}

#[allow(dead_code)] // unused when no layer feature is on
fn err<S: slot::Slot, E>(e: E) -> StackError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StackError::new(S::NAME, e)
}

#[cfg(feature = "degrade")]
impl<C: Send + Sync + 'static> Part<slot::Gate> for palisade_degrade::Builder<C> {
    type Layer = palisade_degrade::GateLayer<C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .health(&cx.health)
            .audit(&cx.audit)
            .build()
            .map_err(err::<slot::Gate, _>)?;
        cx.handles.gate = Some(layer.handle());
        Ok(layer)
    }
}

#[cfg(feature = "ratelimit")]
impl<E: Send + Sync + 'static> Part<slot::RateLimit> for palisade_ratelimit::Builder<E> {
    type Layer = palisade_ratelimit::RateLimitLayer<E>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .audit(&cx.audit)
            .build()
            .map_err(err::<slot::RateLimit, _>)?;
        cx.handles.rate_limit = Some(layer.handle());
        Ok(layer)
    }
}

#[cfg(feature = "bulkhead")]
impl<K, P, S> Part<S> for palisade_bulkhead::Builder<K, P>
where
    S: slot::Slot + BulkheadSlot,
{
    type Layer = palisade_bulkhead::BulkheadLayer<K, P>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .health(&cx.health)
            .audit(&cx.audit)
            .build()
            .map_err(err::<S, _>)?;
        cx.handles.bulkhead = Some(layer.handle());
        Ok(layer)
    }
}

/// The slots a bulkhead may fill.
#[cfg(feature = "bulkhead")]
pub trait BulkheadSlot {}
#[cfg(feature = "bulkhead")]
impl BulkheadSlot for slot::Bulkhead {}

#[cfg(feature = "timeout")]
impl<O, S> Part<S> for palisade_timeout::TimeoutBuilder<O>
where
    S: slot::Slot + TimeoutSlot,
{
    type Layer = palisade_timeout::TimeoutLayer<O>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self.build().map_err(err::<S, _>)?;
        S::record(&mut cx.handles, layer.timeout());
        Ok(layer)
    }
}

/// The slots a timeout may fill, and where its duration is recorded.
#[cfg(feature = "timeout")]
pub trait TimeoutSlot {
    /// Records the configured duration in the handles.
    fn record(handles: &mut Handles, timeout: std::time::Duration);
}
#[cfg(feature = "timeout")]
impl TimeoutSlot for slot::Timeout {
    fn record(handles: &mut Handles, timeout: std::time::Duration) {
        handles.timeout = Some(timeout);
    }
}
#[cfg(feature = "timeout")]
impl TimeoutSlot for slot::TotalTimeout {
    fn record(handles: &mut Handles, timeout: std::time::Duration) {
        handles.timeout = Some(timeout);
    }
}
#[cfg(feature = "timeout")]
impl TimeoutSlot for slot::PerTryTimeout {
    fn record(handles: &mut Handles, timeout: std::time::Duration) {
        handles.per_try_timeout = Some(timeout);
    }
}

#[cfg(feature = "fallback")]
impl<K, C, L> Part<slot::Fallback> for palisade_fallback::Builder<K, C>
where
    palisade_fallback::Builder<K, C>: FallbackBuild<Layer = palisade_fallback::FallbackLayer<L, C>>,
{
    type Layer = palisade_fallback::FallbackLayer<L, C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .audit(&cx.audit)
            .build_fallback()
            .map_err(err::<slot::Fallback, _>)?;
        cx.handles.fallback = Some(layer.handle());
        Ok(layer)
    }
}

/// The fallback builders' `build`, as one trait (each fallback kind has its own `build`).
#[cfg(feature = "fallback")]
pub trait FallbackBuild {
    /// The layer built.
    type Layer;
    /// Calls the builder's `build`.
    ///
    /// # Errors
    ///
    /// The builder refused its settings.
    fn build_fallback(self) -> Result<Self::Layer, palisade_fallback::BuildError>;
}

#[cfg(feature = "fallback")]
impl<C> FallbackBuild for palisade_fallback::Builder<palisade_fallback::StaticResponse, C> {
    type Layer = palisade_fallback::FallbackLayer<palisade_fallback::StaticResponse, C>;
    fn build_fallback(self) -> Result<Self::Layer, palisade_fallback::BuildError> {
        self.build()
    }
}

#[cfg(feature = "fallback")]
impl<F, C> FallbackBuild for palisade_fallback::Builder<palisade_fallback::RespondWith<F>, C>
where
    palisade_fallback::RespondWith<F>: palisade_fallback::Kind,
{
    type Layer = palisade_fallback::FallbackLayer<palisade_fallback::RespondWith<F>, C>;
    fn build_fallback(self) -> Result<Self::Layer, palisade_fallback::BuildError> {
        self.build()
    }
}

#[cfg(feature = "fallback")]
impl<KF: palisade_fallback::StaleKey, C> FallbackBuild
    for palisade_fallback::Builder<palisade_fallback::StaleIfError<KF>, C>
{
    type Layer = palisade_fallback::FallbackLayer<palisade_fallback::Stale<KF>, C>;
    fn build_fallback(self) -> Result<Self::Layer, palisade_fallback::BuildError> {
        self.build()
    }
}

#[cfg(feature = "breaker")]
impl<C, S> Part<S> for palisade_breaker::Builder<C>
where
    C: Send + Sync + 'static,
    S: slot::Slot + BreakerSlot,
{
    type Layer = palisade_breaker::CircuitBreakerLayer<C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .health(&cx.health)
            .audit(&cx.audit)
            .build()
            .map_err(err::<S, _>)?;
        cx.handles.breaker = Some(layer.handle());
        Ok(layer)
    }
}

/// The slots a circuit breaker may fill.
#[cfg(feature = "breaker")]
pub trait BreakerSlot {}
#[cfg(feature = "breaker")]
impl BreakerSlot for slot::Breaker {}

#[cfg(feature = "chaos")]
impl<K, S> Part<S> for palisade_chaos::Builder<K>
where
    K: Send + Sync + 'static,
    S: slot::Slot + ChaosSlot,
{
    type Layer = palisade_chaos::ChaosLayer<K>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self.audit(&cx.audit).build();
        cx.handles.chaos = Some(layer.handle());
        Ok(layer)
    }
}

/// The slots fault injection may fill.
#[cfg(feature = "chaos")]
pub trait ChaosSlot {}
#[cfg(feature = "chaos")]
impl ChaosSlot for slot::Chaos {}

#[cfg(feature = "retry")]
impl<C, R> Part<slot::Retry> for palisade_retry::RetryBuilder<C, R>
where
    C: Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    type Layer = palisade_retry::RetryLayer<C, R>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .audit(&cx.audit)
            .build()
            .map_err(err::<slot::Retry, _>)?;
        cx.handles.retry = Some(layer.handle());
        Ok(layer)
    }
}

#[cfg(feature = "adaptive")]
impl<K, C, S> Part<S> for palisade_adaptive::Builder<K, C>
where
    S: slot::Slot + AdaptiveSlot,
{
    type Layer = palisade_adaptive::AdaptiveLayer<K, C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .health(&cx.health)
            .audit(&cx.audit)
            .build()
            .map_err(err::<S, _>)?;
        cx.handles.adaptive = Some(layer.handle());
        Ok(layer)
    }
}

/// The slots an adaptive concurrency limit may fill.
#[cfg(feature = "adaptive")]
pub trait AdaptiveSlot {}
#[cfg(feature = "adaptive")]
impl AdaptiveSlot for slot::Adaptive {}

/// The stack's own "may hedge" signal: the stack's circuit breaker (if any) is closed and its
/// degradation gate (if any) is at `normal`. `None` when the stack has neither.
#[cfg(feature = "hedge")]
fn stack_may_hedge(handles: &Handles) -> Option<impl Fn() -> bool + Send + Sync + 'static> {
    #[cfg(feature = "breaker")]
    let breaker = handles.breaker.clone();
    #[cfg(feature = "degrade")]
    let gate = handles.gate.clone();
    let any = false;
    #[cfg(feature = "breaker")]
    let any = any || breaker.is_some();
    #[cfg(feature = "degrade")]
    let any = any || gate.is_some();
    let _ = handles;
    any.then_some(move || {
        #[cfg(feature = "breaker")]
        if breaker
            .as_ref()
            .is_some_and(|b| b.state() != palisade_breaker::CircuitState::Closed)
        {
            return false;
        }
        #[cfg(feature = "degrade")]
        if gate
            .as_ref()
            .is_some_and(|g| g.level() != palisade_degrade::Level::Normal)
        {
            return false;
        }
        true
    })
}

/// Hedging in a stack: the stack gives the builder its audit log and, when the stack has a circuit
/// breaker or a degradation gate, sets its [`may_hedge`](palisade_hedge::HedgeBuilder::may_hedge)
/// signal to "the breaker is closed and the gate is at `normal`" (replacing a signal set on the
/// builder; wrap the builder in [`OwnSignal`] to keep yours). The breaker is built first, whatever
/// the slot order.
#[cfg(feature = "hedge")]
impl<C: Send + Sync + 'static> Part<slot::Hedge> for palisade_hedge::HedgeBuilder<C> {
    type Layer = palisade_hedge::HedgeLayer<C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let builder = match stack_may_hedge(&cx.handles) {
            Some(signal) => self.may_hedge(signal),
            None => self,
        };
        OwnSignal(builder).build_part(cx)
    }
}

/// A hedge builder whose own [`may_hedge`](palisade_hedge::HedgeBuilder::may_hedge) signal (or none)
/// the stack keeps: the stack does not wire its breaker and gate into it.
#[cfg(feature = "hedge")]
#[derive(Debug)]
pub struct OwnSignal<B>(pub B);

#[cfg(feature = "hedge")]
impl<C: Send + Sync + 'static> Part<slot::Hedge> for OwnSignal<palisade_hedge::HedgeBuilder<C>> {
    type Layer = palisade_hedge::HedgeLayer<C>;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let layer = self
            .0
            .audit(&cx.audit)
            .build()
            .map_err(err::<slot::Hedge, _>)?;
        cx.handles.hedge = Some(layer.handle());
        Ok(layer)
    }
}
