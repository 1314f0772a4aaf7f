//! The presets: the whole stack in the right order, sharing one [`Health`] and one [`Audit`].
//!
//! - [`ServerStack`] — for axum and hyper servers:
//!   **rescue → gate → rate limit → bulkhead → adaptive → timeout → fallback → breaker → chaos →
//!   handler**.
//!   Its service is `Error = Infallible`, so it goes straight into `axum::Router::layer`.
//!   Idempotency is per route (it needs to know which routes create things): build it with
//!   [`ServerStack::idempotency`] (which wraps it in the stack's rescue) and put it on those routes with
//!   `route_layer`.
//! - [`ClientStack`] — for tonic channels and hyper clients:
//!   **total timeout → hedge → retry → breaker → adaptive → per-try timeout → bulkhead → chaos →
//!   transport**; with
//!   [`ClientStack::tonic`], errors become `tonic::Status` and the stack is a tonic transport.
//!
//! Every slot is optional and takes the layer's own builder; the stack hands each builder the shared
//! `Health` and `Audit`, builds it, and keeps its handle in [`Handles`] for admin endpoints. A slot given
//! `Option<builder>` is a [`Maybe`]: present or absent at run time. For the adaptive limit and hedging,
//! which keep the response type, prefer [`Toggle::new`]`(option)`: the same choice without doubling the
//! stack's type names (what a config file uses).
//!
//! ## Why this order (server)
//!
//! - **rescue** is outermost so every refusal below becomes a response and the stack is infallible.
//! - **gate** next: in read-only mode or while shedding, a refused request costs nothing else — no token,
//!   no slot.
//! - **rate limit** before the bulkhead: a tenant over its quota must not take a concurrency slot, and a
//!   flood from one tenant is refused at the cheapest point.
//! - **bulkhead** before the timeout: time spent queueing for a slot counts against the request's own
//!   deadline only once it runs — the queue has its own `max_wait`.
//! - **adaptive** (the adaptive concurrency limit) inside the bulkhead — the fixed cap, and its queue if
//!   waiting is wanted, stay in front — and outside the timeout, so a request that times out reaches it
//!   as `Elapsed`, a drop that lowers the limit, rather than as a fast RTT.
//! - **timeout** outside fallback and breaker: a slow handler's elapsed request is a failure the breaker
//!   never sees as a success, and fallback can answer for it within the deadline.
//! - **fallback** outside the breaker, so an open circuit (and anything below it) is served by the
//!   fallback instead of failing.
//! - **breaker** sees the handler's real outcomes (and chaos's injected ones) and nothing the layers
//!   above decided.
//! - **chaos** innermost: an injected fault looks exactly like the handler failing, so every layer above
//!   reacts to it as it would in an incident.
//!
//! ## Why this order (client)
//!
//! The total timeout bounds everything the caller waits for, hedges, retries and backoff included; the
//! hedge sits outside retry, so each hedged attempt is retried on its own and a hedge is not spent on a
//! failure retry handles; when the stack has a breaker, no hedge is sent unless it is closed (the hedge's
//! `may_hedge` signal is wired to it). Retry sits outside the breaker so each attempt asks the breaker
//! (an open circuit fails the attempt fast and the retry policy decides); the adaptive limit inside the
//! breaker and outside the per-try timeout learns from attempts, a timed-out attempt being a drop; the
//! per-try timeout bounds one attempt; the bulkhead caps calls in flight to the backend; chaos is next
//! to the transport so a fault looks like the network failing.
//!
//! ```
//! use palisade::audit::Audit;
//! use palisade::breaker::CircuitBreakerLayer;
//! use palisade::degrade::GateLayer;
//! use palisade::health::Health;
//! use palisade::key::HeaderKey;
//! use palisade::ratelimit::{Rate, RateLimitLayer};
//! use palisade::stack::ServerStack;
//! use palisade::timeout::TimeoutLayer;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let health = Health::new();
//! let (audit, _log) = Audit::memory(1024);
//! let stack = ServerStack::builder()
//!     .health(&health)
//!     .audit(&audit)
//!     .gate(GateLayer::builder().name("api"))
//!     .rate_limit(RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
//!         .default_rate(Rate::per_second(100).burst(200)))
//!     .timeout(TimeoutLayer::builder().timeout(Duration::from_secs(2)))
//!     .breaker(CircuitBreakerLayer::builder().name("app"))
//!     .build()
//!     .unwrap();
//! let handles = stack.handles().clone();
//! assert!(handles.gate().is_some() && handles.bulkhead().is_none());
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(stack);
//! # drop(app);
//! # }
//! ```
//!
//! [`Health`]: palisade_core::health::Health
//! [`Audit`]: palisade_core::audit::Audit

mod client;
mod maybe;
mod part;
mod server;
mod signals;
mod toggle;

use std::error::Error;
use std::fmt;
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::health::Health;
use palisade_core::BoxError;

#[cfg(feature = "tonic")]
pub use client::TonicBody;
pub use client::{ClientStack, ClientStackBuilder, ConvertBody, ToBody, ToBodyLayer};
pub use maybe::{Maybe, MaybeBody, MaybeFuture, MaybeService};
#[cfg(feature = "adaptive")]
pub use part::AdaptiveSlot;
#[cfg(feature = "breaker")]
pub use part::BreakerSlot;
#[cfg(feature = "bulkhead")]
pub use part::BulkheadSlot;
#[cfg(feature = "chaos")]
pub use part::ChaosSlot;
#[cfg(feature = "fallback")]
pub use part::FallbackBuild;
#[cfg(feature = "hedge")]
pub use part::OwnSignal;
#[cfg(feature = "timeout")]
pub use part::TimeoutSlot;
pub use part::{slot, BuildContext, Part};
pub use server::{Rescued, ServerStack, ServerStackBuilder};
pub use toggle::{Passthrough, Toggle, ToggleFuture, ToggleService};

use crate::ops::StatusRegistry;

/// A stack could not be built: which slot, and the builder's own error.
#[derive(Debug)]
pub struct StackError {
    slot: &'static str,
    source: BoxError,
}

impl StackError {
    /// `slot`'s builder refused its settings with `source`.
    pub fn new(slot: &'static str, source: impl Into<BoxError>) -> Self {
        StackError {
            slot,
            source: source.into(),
        }
    }

    /// The slot whose builder failed, e.g. `"rate_limit"`.
    pub fn slot(&self) -> &'static str {
        self.slot
    }
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot build the `{}` layer: {}", self.slot, self.source)
    }
}

impl Error for StackError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// The handles of every layer in a stack, plus the shared [`Health`] and [`Audit`]: what admin endpoints,
/// config reloads and tests use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handles {
    health: Health,
    audit: Audit,
    pub(crate) timeout: Option<Duration>,
    pub(crate) per_try_timeout: Option<Duration>,
    #[cfg(feature = "degrade")]
    pub(crate) gate: Option<palisade_degrade::GateHandle>,
    #[cfg(feature = "ratelimit")]
    pub(crate) rate_limit: Option<palisade_ratelimit::RateLimitHandle>,
    #[cfg(feature = "bulkhead")]
    pub(crate) bulkhead: Option<palisade_bulkhead::BulkheadHandle>,
    #[cfg(feature = "fallback")]
    pub(crate) fallback: Option<palisade_fallback::FallbackHandle>,
    #[cfg(feature = "breaker")]
    pub(crate) breaker: Option<palisade_breaker::BreakerHandle>,
    #[cfg(feature = "chaos")]
    pub(crate) chaos: Option<palisade_chaos::ChaosHandle>,
    #[cfg(feature = "retry")]
    pub(crate) retry: Option<palisade_retry::RetryHandle>,
    #[cfg(feature = "adaptive")]
    pub(crate) adaptive: Option<palisade_adaptive::AdaptiveHandle>,
    #[cfg(feature = "hedge")]
    pub(crate) hedge: Option<palisade_hedge::HedgeHandle>,
}

impl Handles {
    pub(crate) fn new(health: Health, audit: Audit) -> Self {
        Handles {
            health,
            audit,
            timeout: None,
            per_try_timeout: None,
            #[cfg(feature = "degrade")]
            gate: None,
            #[cfg(feature = "ratelimit")]
            rate_limit: None,
            #[cfg(feature = "bulkhead")]
            bulkhead: None,
            #[cfg(feature = "fallback")]
            fallback: None,
            #[cfg(feature = "breaker")]
            breaker: None,
            #[cfg(feature = "chaos")]
            chaos: None,
            #[cfg(feature = "retry")]
            retry: None,
            #[cfg(feature = "adaptive")]
            adaptive: None,
            #[cfg(feature = "hedge")]
            hedge: None,
        }
    }

    /// The health handle every layer registered with.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The audit handle every layer records to.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The timeout (server) or total timeout (client), if that slot is filled.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The per-try timeout (client), if that slot is filled.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// The degradation gate's handle: set the level, read-only mode.
    #[cfg(feature = "degrade")]
    pub fn gate(&self) -> Option<&palisade_degrade::GateHandle> {
        self.gate.as_ref()
    }

    /// The rate limit's handle: tiers, overrides, per-tenant checks.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit(&self) -> Option<&palisade_ratelimit::RateLimitHandle> {
        self.rate_limit.as_ref()
    }

    /// The bulkhead's handle: limits and occupancy.
    #[cfg(feature = "bulkhead")]
    pub fn bulkhead(&self) -> Option<&palisade_bulkhead::BulkheadHandle> {
        self.bulkhead.as_ref()
    }

    /// The fallback's handle: activations.
    #[cfg(feature = "fallback")]
    pub fn fallback(&self) -> Option<&palisade_fallback::FallbackHandle> {
        self.fallback.as_ref()
    }

    /// The circuit breaker's handle: state, force open/closed.
    #[cfg(feature = "breaker")]
    pub fn breaker(&self) -> Option<&palisade_breaker::BreakerHandle> {
        self.breaker.as_ref()
    }

    /// The chaos layer's handle: inject and remove faults.
    #[cfg(feature = "chaos")]
    pub fn chaos(&self) -> Option<&palisade_chaos::ChaosHandle> {
        self.chaos.as_ref()
    }

    /// The retry layer's handle: attempts, budget.
    #[cfg(feature = "retry")]
    pub fn retry(&self) -> Option<&palisade_retry::RetryHandle> {
        self.retry.as_ref()
    }

    /// The adaptive concurrency limit's handle: limit, in flight, drops, partitions.
    #[cfg(feature = "adaptive")]
    pub fn adaptive(&self) -> Option<&palisade_adaptive::AdaptiveHandle> {
        self.adaptive.as_ref()
    }

    /// The hedge layer's handle: hedges sent and won, budget.
    #[cfg(feature = "hedge")]
    pub fn hedge(&self) -> Option<&palisade_hedge::HedgeHandle> {
        self.hedge.as_ref()
    }

    /// Registers every handle that reports status (and the shared health and audit) in `registry`
    /// under `prefix` (e.g. `"server."`), for [`StatusEndpoint`](crate::ops::StatusEndpoint).
    pub fn register_status(&self, registry: &StatusRegistry, prefix: &str) {
        registry.register(format!("{prefix}health"), self.health.clone());
        registry.register(format!("{prefix}audit"), self.audit.clone());
        #[cfg(feature = "degrade")]
        if let Some(h) = &self.gate {
            registry.register(format!("{prefix}gate"), h.clone());
        }
        #[cfg(feature = "ratelimit")]
        if let Some(h) = &self.rate_limit {
            registry.register(format!("{prefix}rate_limit"), h.clone());
        }
        #[cfg(feature = "bulkhead")]
        if let Some(h) = &self.bulkhead {
            registry.register(format!("{prefix}bulkhead"), h.clone());
        }
        #[cfg(feature = "adaptive")]
        if let Some(h) = &self.adaptive {
            registry.register(format!("{prefix}adaptive"), h.clone());
        }
        #[cfg(feature = "breaker")]
        if let Some(h) = &self.breaker {
            registry.register(format!("{prefix}breaker"), h.clone());
        }
        #[cfg(feature = "hedge")]
        if let Some(h) = &self.hedge {
            registry.register(format!("{prefix}hedge"), h.clone());
        }
    }
}
