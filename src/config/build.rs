//! From typed config to the layers' builders, and validation by building them.

use std::error::Error as _;

use http::{HeaderValue, Request};
use palisade_breaker::CircuitBreakerLayer;
use palisade_bulkhead::{BulkheadLayer, PriorityExtractor, PriorityHeader, Unkeyed};
use palisade_chaos::ChaosLayer;
use palisade_core::audit::Audit;
use palisade_core::classify::{HttpStatus, StatusSet};
use palisade_core::health::Health;
use palisade_core::key::{HeaderKey, KeyError, KeyExtractor};
use palisade_core::signal::LoadSignal;
use palisade_degrade::{GateLayer, Level};
use palisade_fallback::{FallbackLayer, StaticResponse, Trigger};
use palisade_idempotency::{IdempotencyLayer, KeyRule, MemoryStore, MissingTenant, OnAbandon};
use palisade_ratelimit::RateLimitLayer;
use palisade_retry::{Backoff, Budget, RetryLayer};
use palisade_timeout::TimeoutLayer;
use tower_layer::Stack;

use super::error::{ConfigError, ConfigErrorKind};
use super::schema::{
    AdaptiveAlgorithm, AdaptiveConfig, BackoffKind, BreakerConfig, BulkheadConfig, ChaosConfig,
    FallbackTrigger, GateConfig, HedgeConfig, HedgeDelayChoice, KeyRuleChoice, MalformedKeyPolicy,
    MissingKeyPolicy, MissingTenantPolicy, OnAbandonPolicy, RateLimitConfig, RetryConfig,
    TimeoutConfig,
};
use super::Config;
use crate::rescue::grpc::StatusLayer;
use crate::stack::{
    slot, BuildContext, ClientStack, ClientStackBuilder, Maybe, Part, ServerStack,
    ServerStackBuilder, StackError, ToBodyLayer, Toggle, TonicBody,
};
use palisade_adaptive::{AdaptiveLayer, Aimd, Gradient2, Partition, Vegas};
use palisade_hedge::{HedgeBudget, HedgeLayer, LatencyPercentile};

/// The tenant key of configured layers: the `server.tenant_header` header (bounded by
/// `server.tenant_max_len`), or — without one — no tenant at all (every request is keyless).
///
/// Its key is the header's `HeaderValue`, so handles take tenants as
/// `HeaderValue::from_static("acme")`.
#[derive(Debug, Clone)]
pub struct TenantKey {
    header: Option<HeaderKey>,
}

impl TenantKey {
    /// Tenants from `header`.
    pub fn header(header: HeaderKey) -> Self {
        TenantKey {
            header: Some(header),
        }
    }

    /// No tenant header: every request is keyless.
    pub fn none() -> Self {
        TenantKey { header: None }
    }

    /// The header read, if any.
    pub fn header_key(&self) -> Option<&HeaderKey> {
        self.header.as_ref()
    }
}

impl<B> KeyExtractor<Request<B>> for TenantKey {
    type Key = HeaderValue;

    #[inline]
    fn extract(&self, req: &Request<B>) -> Result<HeaderValue, KeyError> {
        match &self.header {
            Some(h) => h.extract(req),
            None => Err(KeyError::missing(
                "tenant (no `server.tenant_header` is configured)",
            )),
        }
    }
}

/// The queue priority of a configured bulkhead: `priority_header` if set, else every request is
/// `Normal`.
#[derive(Debug, Clone, Default)]
pub struct QueuePriority {
    header: Option<PriorityHeader>,
}

impl<B> PriorityExtractor<Request<B>> for QueuePriority {
    fn priority(&self, req: &Request<B>) -> palisade_bulkhead::Priority {
        match &self.header {
            Some(h) => h.priority(req),
            None => palisade_bulkhead::Priority::Normal,
        }
    }
}

/// The gate builder a config makes.
pub type GateBuilder = palisade_degrade::Builder;
/// The rate limit builder a config makes.
pub type RateLimitBuilder = palisade_ratelimit::Builder<TenantKey>;
/// The timeout builder a config makes (server timeout, client total and per-try timeouts).
pub type TimeoutBuilder = palisade_timeout::TimeoutBuilder;
/// The fallback builder a config makes: a static response, triggered on errors and, optionally,
/// on response statuses.
pub type FallbackBuilder = palisade_fallback::Builder<StaticResponse, HttpStatus>;
/// The circuit breaker builder a config makes.
pub type BreakerBuilder = palisade_breaker::Builder;
/// The server's chaos builder (tenant faults by the tenant header).
pub type ServerChaosBuilder = palisade_chaos::Builder<TenantKey>;
/// The client's chaos builder.
pub type ClientChaosBuilder = palisade_chaos::Builder;
/// The retry builder a config makes.
pub type RetryBuilder = palisade_retry::RetryBuilder;
/// The client's bulkhead builder (unkeyed).
pub type ClientBulkheadBuilder = palisade_bulkhead::Builder;
/// The idempotency builder a config makes (in-memory store).
pub type IdempotencyBuilder = palisade_idempotency::Builder<TenantKey, MemoryStore>;
/// The idempotency layer a config makes.
pub type ConfiguredIdempotencyLayer = IdempotencyLayer<TenantKey>;

/// The adaptive limit builder a config makes (the client's, and the server's without partitions).
pub type AdaptiveBuilder = palisade_adaptive::Builder;
/// The server's adaptive limit builder: keyed by the tenant header with partitions, and by
/// [`TenantKey::none`] (every request the one anonymous tenant) without.
pub type KeyedAdaptiveBuilder = palisade_adaptive::Builder<TenantKey>;
/// The hedge builder a config makes.
pub type HedgeBuilder = palisade_hedge::HedgeBuilder;

/// The server bulkhead's slot: unkeyed or keyed by the tenant header (a config's choice at run
/// time), or absent.
#[derive(Debug)]
pub struct ServerBulkhead {
    unkeyed: Option<palisade_bulkhead::Builder<Unkeyed, QueuePriority>>,
    keyed: Option<palisade_bulkhead::Builder<TenantKey, QueuePriority>>,
}

/// The layer of a [`ServerBulkhead`]: at most one of the two is present.
pub type ServerBulkheadLayer = Stack<
    Maybe<BulkheadLayer<Unkeyed, QueuePriority>>,
    Maybe<BulkheadLayer<TenantKey, QueuePriority>>,
>;

impl Part<slot::Bulkhead> for ServerBulkhead {
    type Layer = ServerBulkheadLayer;

    fn build_part(self, cx: &mut BuildContext) -> Result<Self::Layer, StackError> {
        let unkeyed = Part::<slot::Bulkhead>::build_part(self.unkeyed, cx)?;
        let keyed = Part::<slot::Bulkhead>::build_part(self.keyed, cx)?;
        Ok(Stack::new(unkeyed, keyed))
    }
}

/// The server stack builder a config makes; add `.health(..)` and `.audit(..)`, then `.build()`.
pub type ConfiguredServerStackBuilder = ServerStackBuilder<
    Option<GateBuilder>,
    Option<RateLimitBuilder>,
    ServerBulkhead,
    Toggle<KeyedAdaptiveBuilder>,
    Option<TimeoutBuilder>,
    Option<FallbackBuilder>,
    Option<BreakerBuilder>,
    Option<ServerChaosBuilder>,
>;

/// The server stack a config makes (a `Layer` for `axum::Router::layer`).
pub type ConfiguredServerStack = ServerStack<
    Maybe<GateLayer>,
    Maybe<RateLimitLayer<TenantKey>>,
    ServerBulkheadLayer,
    Toggle<AdaptiveLayer<TenantKey>>,
    Maybe<TimeoutLayer>,
    Maybe<FallbackLayer<StaticResponse, HttpStatus>>,
    Maybe<CircuitBreakerLayer>,
    Maybe<ChaosLayer<TenantKey>>,
>;

/// The client stack builder a config makes (for a tonic `Channel`).
pub type ConfiguredClientStackBuilder = ClientStackBuilder<
    StatusLayer,
    Option<TimeoutBuilder>,
    Toggle<HedgeBuilder>,
    Option<RetryBuilder>,
    ToBodyLayer<TonicBody>,
    Option<BreakerBuilder>,
    Toggle<AdaptiveBuilder>,
    Option<TimeoutBuilder>,
    Option<ClientBulkheadBuilder>,
    Option<ClientChaosBuilder>,
>;

/// The client stack a config makes.
pub type ConfiguredClientStack = ClientStack<
    StatusLayer,
    Maybe<TimeoutLayer>,
    Toggle<HedgeLayer>,
    Maybe<RetryLayer>,
    ToBodyLayer<TonicBody>,
    Maybe<CircuitBreakerLayer>,
    Toggle<AdaptiveLayer>,
    Maybe<TimeoutLayer>,
    Maybe<BulkheadLayer>,
    Maybe<ChaosLayer>,
>;

impl Config {
    /// The tenant key of the server's keyed layers.
    pub fn tenant_key(&self) -> TenantKey {
        match &self.server.tenant_header {
            Some(name) => {
                let key = HeaderKey::new(name.clone());
                TenantKey::header(match self.server.tenant_max_len {
                    Some(n) => key.max_len(n),
                    None => key,
                })
            }
            None => TenantKey::none(),
        }
    }

    /// The server stack's builder: every `[server.*]` section present fills its slot (a
    /// [`Maybe`] layer), every absent one leaves it empty. Add `.health(..)` and `.audit(..)`, then
    /// `.build()` (which applies every builder's own validation; [`Config::validate`] already did).
    pub fn server_stack_builder(&self) -> ConfiguredServerStackBuilder {
        let s = &self.server;
        let tenant = self.tenant_key();
        // The gate publishes its load into this signal; an adaptive rate limit follows it.
        let load = LoadSignal::new();
        ServerStack::builder()
            .gate(s.gate.as_ref().map(|g| self.gate_builder(g, &load)))
            .rate_limit(
                s.rate_limit
                    .as_ref()
                    .map(|r| rate_limit_builder(r, tenant.clone(), &load)),
            )
            .bulkhead(match &s.bulkhead {
                None => ServerBulkhead {
                    unkeyed: None,
                    keyed: None,
                },
                Some(b) if b.keyed => ServerBulkhead {
                    unkeyed: None,
                    keyed: Some(bulkhead_builder(b).keyed(tenant.clone())),
                },
                Some(b) => ServerBulkhead {
                    unkeyed: Some(bulkhead_builder(b)),
                    keyed: None,
                },
            })
            .adaptive(Toggle::new(s.adaptive.as_ref().map(|a| {
                // One slot type either way (a second would double the stack's types): keyed by the
                // tenant with partitions, else every request is the one anonymous tenant.
                let key = if a.partitions.is_empty() {
                    TenantKey::none()
                } else {
                    tenant.clone()
                };
                adaptive_builder(a).keyed(key)
            })))
            .timeout(s.timeout.as_ref().map(timeout_builder))
            .fallback(s.fallback.as_ref().map(|f| {
                let mut response = StaticResponse::new(f.status);
                for (name, value) in &f.headers {
                    response = response.header(name.clone(), value.clone());
                }
                if let Some(body) = &f.body {
                    response = response.body(body.clone());
                }
                let trigger = match f.trigger {
                    FallbackTrigger::Unavailable => Trigger::unavailable(),
                    FallbackTrigger::AnyError => Trigger::any_error(),
                    FallbackTrigger::AnyRejection => Trigger::any_rejection(),
                };
                let statuses = f
                    .trigger_statuses
                    .iter()
                    .fold(StatusSet::empty(), |set, s| set.with(*s));
                let mut b = palisade_fallback::Builder::new()
                    .trigger(trigger.or_responses(HttpStatus::new(statuses)))
                    .static_response(response);
                if let Some(n) = &f.name {
                    b = b.name(n.clone());
                }
                b
            }))
            .breaker(s.breaker.as_ref().map(breaker_builder))
            .chaos(
                s.chaos
                    .as_ref()
                    .map(|c| chaos_builder(c).tenant_key(tenant.clone())),
            )
    }

    /// The client stack's builder (`ClientStack::tonic()`): every `[client.*]` section present fills
    /// its slot. Add `.health(..)` and `.audit(..)`, then `.build()`.
    pub fn client_stack_builder(&self) -> ConfiguredClientStackBuilder {
        let c = &self.client;
        ClientStack::tonic()
            .total_timeout(c.total_timeout.as_ref().map(timeout_builder))
            .hedge(Toggle::new(c.hedge.as_ref().map(hedge_builder)))
            .retry(c.retry.as_ref().map(retry_builder))
            .breaker(c.breaker.as_ref().map(breaker_builder))
            .adaptive(Toggle::new(c.adaptive.as_ref().map(adaptive_builder)))
            .per_try_timeout(c.per_try_timeout.as_ref().map(timeout_builder))
            .bulkhead(c.bulkhead.as_ref().map(bulkhead_builder_unkeyed))
            .chaos(c.chaos.as_ref().map(chaos_builder))
    }

    /// The Idempotency-Key layer's builder, if `[server.idempotency]` is present. Scoped by the
    /// tenant header; without one, every client shares one scope. Build it with
    /// [`ServerStack::idempotency`] so it records to the stack's audit log.
    pub fn idempotency_builder(&self) -> Option<IdempotencyBuilder> {
        let i = self.server.idempotency.as_ref()?;
        let mut store = MemoryStore::builder();
        if let Some(n) = i.max_records {
            store = store.max_records(n);
        }
        if let Some(n) = i.max_bytes {
            store = store.max_bytes(n);
        }
        let mut b = IdempotencyLayer::builder()
            .tenant(self.tenant_key())
            .store(store.build());
        if self.server.tenant_header.is_none() {
            // No tenant: one scope for every client, as with the builder's default `NoTenant`.
            b = b.missing_tenant(MissingTenant::Shared);
        }
        if let Some(n) = &i.name {
            b = b.name(n.clone());
        }
        if let Some(m) = &i.methods {
            b = b.methods(m.iter().cloned());
        }
        if let Some(r) = i.require_key {
            b = b.require_key(r);
        }
        for r in &i.routes {
            let rule = match r.rule {
                KeyRuleChoice::Off => KeyRule::Off,
                KeyRuleChoice::Optional => KeyRule::Optional,
                KeyRuleChoice::Required => KeyRule::Required,
            };
            b = b.route(r.method.clone(), r.path.clone(), rule);
        }
        for h in &i.fingerprint_headers {
            b = b.fingerprint_header(h.clone());
        }
        if let Some(n) = i.max_request_body {
            b = b.max_request_body(n);
        }
        if let Some(n) = i.max_response_body {
            b = b.max_response_body(n);
        }
        if let Some(d) = i.lease {
            b = b.lease(d);
        }
        if let Some(d) = i.ttl {
            b = b.ttl(d);
        }
        if let Some(d) = i.conflict_retry_after {
            b = b.conflict_retry_after(d);
        }
        if let Some(s) = i.store_server_errors {
            b = b.store_server_errors(s);
        }
        if let Some(p) = i.on_abandon {
            b = b.on_abandon(match p {
                OnAbandonPolicy::Release => OnAbandon::Release,
                OnAbandonPolicy::MarkFailed => OnAbandon::MarkFailed,
            });
        }
        if let Some(p) = i.missing_tenant {
            b = b.missing_tenant(match p {
                MissingTenantPolicy::Reject => MissingTenant::Reject,
                MissingTenantPolicy::Shared => MissingTenant::Shared,
                MissingTenantPolicy::Bypass => MissingTenant::Bypass,
            });
        }
        if let Some(p) = i.malformed_tenant {
            b = b.malformed_tenant(malformed(p));
        }
        if let Some(s) = &i.secret {
            b = b.secret(s.expose().as_bytes());
        }
        Some(b)
    }

    pub(crate) fn gate_builder(&self, g: &GateConfig, load: &LoadSignal) -> GateBuilder {
        let mut b = GateLayer::builder();
        if let Some(n) = &g.name {
            b = b.name(n.clone());
        }
        if let Some(l) = g.initial_level {
            b = b.initial_level(l);
        }
        if g.level_from_env {
            let env = self.gate_env.clone();
            b = b.level_from_env_with(move |name| env.get(name).cloned());
        }
        if let Some(f) = &g.floor {
            for (level, p) in [
                (Level::Degraded, f.degraded),
                (Level::Critical, f.critical),
                (Level::ReadOnly, f.read_only),
            ] {
                if let Some(p) = p {
                    b = b.floor(level, p);
                }
            }
        }
        if let Some(p) = g.default_priority {
            b = b.default_priority(p);
        }
        for (prefix, p) in &g.routes {
            b = b.route(prefix.clone(), *p);
        }
        if let Some(h) = &g.priority_header {
            b = b.priority_header(h.clone());
        }
        if let Some(p) = g.priority_header_max {
            b = b.priority_header_max(p);
        }
        if let Some(d) = g.retry_after {
            b = b.retry_after(d);
        }
        if g.no_retry_after {
            b = b.no_retry_after();
        }
        if let Some(h) = &g.health_levels {
            b = b.health_levels(h.degraded_at, h.unhealthy_at);
        }
        if let Some(l) = &g.load_at {
            for (level, v) in [
                (Level::Normal, l.normal),
                (Level::Degraded, l.degraded),
                (Level::Critical, l.critical),
                (Level::ReadOnly, l.read_only),
                (Level::Maintenance, l.maintenance),
            ] {
                if let Some(v) = v {
                    b = b.load_at(level, v);
                }
            }
        }
        if let Some(t) = &g.auto_in_flight {
            b = b.auto_in_flight(t.level, t.enter, t.leave);
        }
        if let Some(t) = &g.auto_latency_p95 {
            b = b.auto_latency_p95(t.level, t.enter, t.leave);
        }
        if let Some(t) = &g.auto_error_rate {
            b = b.auto_error_rate(t.level, t.enter, t.leave);
        }
        if let Some(d) = g.auto_dwell {
            b = b.auto_dwell(d);
        }
        if let Some(d) = g.auto_interval {
            b = b.auto_interval(d);
        }
        if let Some(d) = g.auto_window {
            b = b.auto_window(d);
        }
        if let Some(n) = g.auto_min_samples {
            b = b.auto_min_samples(n);
        }
        if let Some(n) = g.auto_samples {
            b = b.auto_samples(n);
        }
        if let Some(d) = g.manual_hold {
            b = b.manual_hold(d);
        }
        let adaptive = self
            .server
            .rate_limit
            .as_ref()
            .is_some_and(|r| r.adaptive_floor.is_some());
        if adaptive {
            b = b.load_signal(load);
        }
        b
    }

    /// Checks the config: the cross-section rules first, then every layer's builder, built for real
    /// with a scratch `Health` and a disabled `Audit`, so each builder's own validation applies and
    /// no rule is written twice. Loading already did this; call it after changing fields by hand.
    ///
    /// # Errors
    ///
    /// The first problem found, named by its key (or variable) and line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_cross_section()?;
        self.check_heal()?;
        let health = Health::new();
        let audit = Audit::disabled();
        self.server_stack_builder()
            .health(&health)
            .audit(&audit)
            .build()
            .map_err(|e| self.stack_error("server", &e))?;
        self.client_stack_builder()
            .health(&health)
            .audit(&audit)
            .build()
            .map_err(|e| self.stack_error("client", &e))?;
        if let Some(b) = self.idempotency_builder() {
            b.build().map_err(|e| {
                let key = format!(
                    "server.idempotency.{}",
                    setting_key("idempotency", e.setting())
                );
                self.invalid(&key, e.problem())
            })?;
        }
        Ok(())
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.provenance
            .error(ConfigErrorKind::Invalid, key, message)
    }

    /// Rules that span sections, or that a builder would clamp silently.
    fn check_cross_section(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.tenant_max_len == Some(0) {
            return Err(self.invalid("server.tenant_max_len", "must be at least 1"));
        }
        if let Some(r) = &s.rate_limit {
            if s.tenant_header.is_none() {
                return Err(self.invalid(
                    "server.rate_limit",
                    "a rate limit is per tenant: set `server.tenant_header` (e.g. \"x-tenant-id\")",
                ));
            }
            if r.adaptive_floor.is_some() && s.gate.is_none() {
                return Err(self.invalid(
                    "server.rate_limit.adaptive_floor",
                    "adaptive quotas follow the gate's load: add a `[server.gate]` section",
                ));
            }
            self.check_tiers(r)?;
            let max_len = s.tenant_max_len.unwrap_or(HeaderKey::DEFAULT_MAX_LEN);
            for (tenant, tier) in &r.tenants {
                let key = format!("server.rate_limit.tenants.{tenant}");
                if tier != "default" && !r.tiers.contains_key(tier) {
                    return Err(self.invalid(
                        &key,
                        format!(
                            "no tier named `{tier}` (define it under [server.rate_limit.tiers])"
                        ),
                    ));
                }
                if tenant.as_str().len() > max_len {
                    return Err(self.invalid(
                        &key,
                        format!(
                            "the tenant is longer than server.tenant_max_len ({max_len}): no request can carry it"
                        ),
                    ));
                }
            }
        }
        if let Some(b) = &s.bulkhead {
            if b.keyed && s.tenant_header.is_none() {
                return Err(self.invalid(
                    "server.bulkhead.keyed",
                    "a keyed bulkhead needs `server.tenant_header`",
                ));
            }
        }
        if let Some(b) = &self.client.bulkhead {
            if b.keyed {
                return Err(self.invalid(
                    "client.bulkhead.keyed",
                    "the client stack has no tenant key; only the server bulkhead can be keyed",
                ));
            }
            if b.priority_header.is_some() {
                return Err(self.invalid(
                    "client.bulkhead.priority_header",
                    "only the server bulkhead reads a priority header",
                ));
            }
        }
        if let Some(g) = &s.gate {
            if g.no_retry_after && g.retry_after.is_some() {
                return Err(self.invalid(
                    "server.gate.no_retry_after",
                    "contradicts `retry_after`: set one of them",
                ));
            }
        }
        for (section, breaker) in [("server", &s.breaker), ("client", &self.client.breaker)] {
            if let Some(b) = breaker {
                if b.no_failure_rate && b.failure_rate.is_some() {
                    return Err(self.invalid(
                        &format!("{section}.breaker.no_failure_rate"),
                        "contradicts `failure_rate`: set one of them",
                    ));
                }
            }
        }
        if let Some(r) = &self.client.retry {
            if let Some(b) = &r.budget {
                if b.unlimited
                    && (b.ratio.is_some() || b.min_per_sec.is_some() || b.window.is_some())
                {
                    return Err(self.invalid(
                        "client.retry.budget.unlimited",
                        "an unlimited budget has no ratio, min_per_sec or window",
                    ));
                }
            }
            if let Some(b) = &r.backoff {
                if b.kind == BackoffKind::Decorrelated && b.jitter.is_some() {
                    return Err(self.invalid(
                        "client.retry.backoff.jitter",
                        "decorrelated backoff has its own randomness; jitter applies to exponential backoff",
                    ));
                }
            }
            if let Some(p) = r.retry_paths.iter().find(|p| !p.starts_with('/')) {
                return Err(self.invalid(
                    "client.retry.retry_paths",
                    format!("path \"{}\" does not start with `/`", p.escape_debug()),
                ));
            }
        }
        self.check_adaptive("server", s.adaptive.as_ref())?;
        self.check_adaptive("client", self.client.adaptive.as_ref())?;
        if let Some(h) = &self.client.hedge {
            if let Some(b) = &h.budget {
                if b.unlimited && (b.ratio.is_some() || b.burst.is_some()) {
                    return Err(self.invalid(
                        "client.hedge.budget.unlimited",
                        "an unlimited budget has no ratio or burst",
                    ));
                }
                if !b.unlimited && (b.ratio.is_none() || b.burst.is_none()) {
                    return Err(self.invalid(
                        "client.hedge.budget",
                        "a budget needs both `ratio` and `burst` (or `unlimited = true`)",
                    ));
                }
            }
            if let Some(p) = h.hedge_paths.iter().find(|p| !p.starts_with('/')) {
                return Err(self.invalid(
                    "client.hedge.hedge_paths",
                    format!("path \"{}\" does not start with `/`", p.escape_debug()),
                ));
            }
        }
        if let Some(i) = &s.idempotency {
            if i.missing_tenant.is_some() && s.tenant_header.is_none() {
                return Err(self.invalid(
                    "server.idempotency.missing_tenant",
                    "there is no tenant without `server.tenant_header`",
                ));
            }
            if i.malformed_tenant.is_some() && s.tenant_header.is_none() {
                return Err(self.invalid(
                    "server.idempotency.malformed_tenant",
                    "there is no tenant without `server.tenant_header`",
                ));
            }
            // Checked here too, so the error names the config key.
            if i.max_records == Some(0) {
                return Err(self.invalid("server.idempotency.max_records", "must be at least 1"));
            }
            if i.max_bytes.is_some_and(|n| n < 1024) {
                return Err(self.invalid("server.idempotency.max_bytes", "must be at least 1024"));
            }
        }
        Ok(())
    }

    /// An adaptive section's rules: only the chosen algorithm's parameters, and the tenant settings
    /// only with partitions (which only the server, with a tenant header, can have).
    fn check_adaptive(&self, section: &str, a: Option<&AdaptiveConfig>) -> Result<(), ConfigError> {
        let Some(a) = a else { return Ok(()) };
        let algorithm = a.algorithm.unwrap_or_default();
        let params: [(&str, bool, &[AdaptiveAlgorithm]); 10] = {
            use AdaptiveAlgorithm::{Aimd, Gradient2, Vegas};
            [
                ("smoothing", a.smoothing.is_some(), &[Gradient2, Vegas]),
                ("queue_size", a.queue_size.is_some(), &[Gradient2]),
                ("rtt_tolerance", a.rtt_tolerance.is_some(), &[Gradient2]),
                ("long_window", a.long_window.is_some(), &[Gradient2]),
                (
                    "backoff_ratio",
                    a.backoff_ratio.is_some(),
                    &[Gradient2, Aimd],
                ),
                ("probe_windows", a.probe_windows.is_some(), &[Gradient2]),
                ("timeout", a.timeout.is_some(), &[Aimd]),
                ("alpha", a.alpha.is_some(), &[Vegas]),
                ("beta", a.beta.is_some(), &[Vegas]),
                ("probe_multiplier", a.probe_multiplier.is_some(), &[Vegas]),
            ]
        };
        for (key, set, applies) in params {
            if set && !applies.contains(&algorithm) {
                let names: Vec<&str> = applies.iter().map(|a| a.as_str()).collect();
                return Err(self.invalid(
                    &format!("{section}.adaptive.{key}"),
                    format!(
                        "`{key}` is a parameter of {}, not of algorithm \"{}\"",
                        names.join(" and "),
                        algorithm.as_str()
                    ),
                ));
            }
        }
        let tenant_keys = [
            ("missing_key", a.missing_key.is_some()),
            ("malformed_key", a.malformed_key.is_some()),
            ("max_keys", a.max_keys.is_some()),
            ("idle_timeout", a.idle_timeout.is_some()),
        ];
        if section == "client" {
            let partitioned = [
                ("partitions", !a.partitions.is_empty()),
                ("default_partition", a.default_partition.is_some()),
            ];
            if let Some((key, _)) = partitioned.iter().chain(&tenant_keys).find(|(_, set)| *set) {
                return Err(self.invalid(
                    &format!("client.adaptive.{key}"),
                    "the client stack has no tenant key; only the server's adaptive limit has partitions",
                ));
            }
            return Ok(());
        }
        if !a.partitions.is_empty() && self.server.tenant_header.is_none() {
            return Err(self.invalid(
                "server.adaptive.partitions",
                "partitions are by tenant: set `server.tenant_header`",
            ));
        }
        if a.partitions.is_empty() {
            if let Some((key, _)) = tenant_keys.iter().find(|(_, set)| *set) {
                return Err(self.invalid(
                    &format!("server.adaptive.{key}"),
                    "applies to tenants, which only a partitioned limit tracks: add `partitions`",
                ));
            }
        }
        Ok(())
    }

    /// Each tier on its own through the builder, so that an error names the tier.
    fn check_tiers(&self, r: &RateLimitConfig) -> Result<(), ConfigError> {
        for (name, rate) in &r.tiers {
            let mut b = RateLimitLayer::builder(TenantKey::none()).tier(name.clone(), rate.rate());
            if let Some(d) = r.idle_timeout {
                b = b.idle_timeout(d);
            }
            if let Err(e) = b.build() {
                let key = if e.setting() == "idle_timeout" {
                    "server.rate_limit.idle_timeout".to_owned()
                } else {
                    format!("server.rate_limit.tiers.{name}")
                };
                return Err(self.invalid(&key, format!("tier `{name}`: {}", e.problem())));
            }
        }
        Ok(())
    }

    /// Names the key behind a stack builder's error.
    fn stack_error(&self, section: &str, e: &StackError) -> ConfigError {
        let slot = e.slot();
        let prefix = format!("{section}.{slot}");
        let Some(source) = e.source() else {
            return self.invalid(&prefix, e.to_string());
        };
        if let Some(b) = source.downcast_ref::<palisade_core::config::BuildError>() {
            if b.setting().starts_with("PALISADE_") {
                let mut err = self.invalid(&format!("{prefix}.level_from_env"), b.problem());
                err.0.env_var = Some(b.setting().to_owned());
                err.0.position = None;
                return err;
            }
            let key = format!("{prefix}.{}", setting_key(slot, b.setting()));
            return self.invalid(&key, b.problem());
        }
        if let Some(t) = source.downcast_ref::<palisade_timeout::BuildError>() {
            let setting = match t {
                palisade_timeout::BuildError::InvalidHeader { .. } => "header",
                _ => "timeout",
            };
            return self.invalid(&format!("{prefix}.{setting}"), t.to_string());
        }
        if let Some(r) = source.downcast_ref::<palisade_retry::BuildError>() {
            let setting = match r {
                palisade_retry::BuildError::ZeroAttempts
                | palisade_retry::BuildError::TooManyAttempts(_) => "max_attempts",
                palisade_retry::BuildError::MaxBodyTooLarge(_) => "max_body",
                palisade_retry::BuildError::DelayTooLong {
                    setting: "retry_after_cap",
                    ..
                } => "retry_after_cap",
                palisade_retry::BuildError::DelayTooLong {
                    setting: "jitter", ..
                } => "backoff.jitter",
                palisade_retry::BuildError::DelayTooLong { .. }
                | palisade_retry::BuildError::BaseExceedsMax { .. }
                | palisade_retry::BuildError::ZeroDecorrelatedBase => "backoff",
                _ => "budget",
            };
            return self.invalid(&format!("{prefix}.{setting}"), r.to_string());
        }
        self.invalid(&prefix, source.to_string())
    }
}

/// The handle of a scratch rate limit built from `c` (no tenants needed), for its live values.
pub(crate) fn scratch_rate_limit(
    c: &RateLimitConfig,
) -> Option<palisade_ratelimit::RateLimitHandle> {
    let mut c = c.clone();
    c.tenants.clear();
    rate_limit_builder(&c, TenantKey::none(), &LoadSignal::new())
        .build()
        .ok()
        .map(|l| l.handle())
}

/// `max_concurrent` and `max_per_tenant` of a scratch bulkhead built from `c` (defaults included).
pub(crate) fn scratch_bulkhead_limits(c: &BulkheadConfig) -> Option<(usize, Option<usize>)> {
    let b = bulkhead_builder(c);
    let handle = if c.keyed {
        b.keyed(TenantKey::none()).build().ok()?.handle()
    } else {
        b.build().ok()?.handle()
    };
    Some((handle.max_concurrent(), handle.max_per_tenant()))
}

/// The config key of a builder setting whose name differs from the method's.
fn setting_key<'a>(slot: &str, setting: &'a str) -> &'a str {
    match (slot, setting) {
        ("gate" | "idempotency", "route") => "routes",
        ("idempotency", "fingerprint_header") => "fingerprint_headers",
        ("rate_limit", "tier") => "tiers",
        ("rate_limit", "adaptive") => "adaptive_floor",
        ("adaptive", "partition") => "partitions",
        _ => setting,
    }
}

fn rate_limit_builder(
    r: &RateLimitConfig,
    tenant: TenantKey,
    load: &LoadSignal,
) -> RateLimitBuilder {
    let mut b = RateLimitLayer::builder(tenant);
    if let Some(rate) = &r.default_rate {
        b = b.default_rate(rate.rate());
    }
    for (name, rate) in &r.tiers {
        b = b.tier(name.clone(), rate.rate());
    }
    for (tenant, tier) in &r.tenants {
        b = b.tenant(tenant.as_header_value().clone(), tier.clone());
    }
    if let Some(rate) = &r.global {
        b = b.global(rate.rate());
    }
    if let Some(m) = r.missing_key {
        b = b.missing_key(match m {
            MissingKeyPolicy::Reject => palisade_ratelimit::MissingKey::Reject,
            MissingKeyPolicy::Anonymous => palisade_ratelimit::MissingKey::Anonymous,
        });
    }
    if let Some(m) = r.malformed_key {
        b = b.malformed_key(malformed(m));
    }
    if let Some(p) = &r.penalty {
        b = b.penalty(p.base, p.max, p.decay);
    }
    if let Some(floor) = r.adaptive_floor {
        b = b.adaptive(load, floor);
    }
    if let Some(on) = r.headers_on_success {
        b = b.headers_on_success(on);
    }
    if let Some(n) = r.max_keys {
        b = b.max_keys(n);
    }
    if let Some(d) = r.idle_timeout {
        b = b.idle_timeout(d);
    }
    b
}

/// The settings every bulkhead takes (keyed or not), with the queue's priority header.
fn bulkhead_builder(c: &BulkheadConfig) -> palisade_bulkhead::Builder<Unkeyed, QueuePriority> {
    let b = bulkhead_builder_unkeyed(c);
    b.priority(QueuePriority {
        header: c.priority_header.clone().map(PriorityHeader::new),
    })
}

fn bulkhead_builder_unkeyed(c: &BulkheadConfig) -> ClientBulkheadBuilder {
    let mut b = BulkheadLayer::builder();
    if let Some(n) = &c.name {
        b = b.name(n.clone());
    }
    if let Some(n) = c.max_concurrent {
        b = b.max_concurrent(n);
    }
    if let Some(n) = c.max_per_tenant {
        b = b.max_per_tenant(n);
    }
    if let Some(q) = &c.queue {
        b = b.queue(q.max_len, q.max_wait);
    }
    if let Some(n) = c.max_queued_per_tenant {
        b = b.max_queued_per_tenant(n);
    }
    if let Some(d) = c.aging {
        b = b.aging(d);
    }
    if let Some(n) = c.quantum {
        b = b.quantum(n);
    }
    if let Some(d) = c.retry_after {
        b = b.retry_after(d);
    }
    if c.hold_until_body_end {
        b = b.hold_until_body_end();
    }
    if let Some(m) = c.missing_key {
        b = b.missing_key(match m {
            MissingKeyPolicy::Reject => palisade_bulkhead::MissingKey::Reject,
            MissingKeyPolicy::Anonymous => palisade_bulkhead::MissingKey::Anonymous,
        });
    }
    if let Some(m) = c.malformed_key {
        b = b.malformed_key(malformed(m));
    }
    if let Some(n) = c.max_keys {
        b = b.max_keys(n);
    }
    if let Some(d) = c.idle_timeout {
        b = b.idle_timeout(d);
    }
    b
}

fn timeout_builder(c: &TimeoutConfig) -> TimeoutBuilder {
    let mut b = TimeoutLayer::builder().timeout(c.timeout);
    if let Some(on) = c.grpc_timeout {
        b = b.grpc_timeout(on);
    }
    if let Some(on) = c.propagate_grpc_timeout {
        b = b.propagate_grpc_timeout(on);
    }
    if let Some(h) = &c.header {
        b = b.header(h.clone());
    }
    b
}

pub(crate) fn breaker_builder(c: &BreakerConfig) -> BreakerBuilder {
    let mut b = CircuitBreakerLayer::builder();
    if let Some(n) = &c.name {
        b = b.name(n.clone());
    }
    if let Some(n) = c.consecutive_failures {
        b = b.consecutive_failures(n);
    }
    if let Some(r) = c.failure_rate {
        b = b.failure_rate(r);
    }
    if c.no_failure_rate {
        b = b.no_failure_rate();
    }
    if let Some(s) = &c.slow_call_rate {
        b = b.slow_call_rate(s.threshold, s.rate);
    }
    if let Some(n) = c.window_calls {
        b = b.window_calls(n);
    }
    if let Some(d) = c.window_time {
        b = b.window_time(d);
    }
    if let Some(n) = c.minimum_calls {
        b = b.minimum_calls(n);
    }
    if let Some(n) = c.half_open_probes {
        b = b.half_open_probes(n);
    }
    if let Some(n) = c.successes_to_close {
        b = b.successes_to_close(n);
    }
    if let Some(w) = &c.open_wait {
        b = b.open_wait(w.base, w.max);
    }
    if let Some(j) = c.jitter {
        b = b.jitter(j);
    }
    if let Some(d) = c.half_open_max_wait {
        b = b.half_open_max_wait(d);
    }
    if let Some(s) = c.seed {
        b = b.seed(s);
    }
    b
}

fn chaos_builder(c: &ChaosConfig) -> ClientChaosBuilder {
    let mut b = ChaosLayer::builder();
    if let Some(n) = &c.name {
        b = b.name(n.clone());
    }
    if let Some(s) = c.seed {
        b = b.seed(s);
    }
    b
}

fn retry_builder(c: &RetryConfig) -> RetryBuilder {
    let mut b = RetryLayer::builder();
    if let Some(n) = c.max_attempts {
        b = b.max_attempts(n);
    }
    if let Some(k) = &c.backoff {
        let base = k.base.unwrap_or(palisade_retry::DEFAULT_BASE);
        let max = k.max.unwrap_or(palisade_retry::DEFAULT_MAX);
        b = b.backoff(match k.kind {
            BackoffKind::Exponential => Backoff::exponential(base, max)
                .jitter(k.jitter.unwrap_or(palisade_retry::DEFAULT_JITTER)),
            BackoffKind::Decorrelated => Backoff::decorrelated(base, max),
        });
    }
    if let Some(d) = c.retry_after_cap {
        b = b.retry_after_cap(d);
    }
    if let Some(n) = c.max_body {
        b = b.max_body(n);
    }
    if let Some(on) = c.retry_timeouts {
        b = b.retry_timeouts(on);
    }
    if let Some(budget) = &c.budget {
        let default = Budget::default();
        b = b.budget(if budget.unlimited {
            Budget::unlimited()
        } else {
            Budget::new(
                budget.ratio.unwrap_or(default.ratio()),
                budget.min_per_sec.unwrap_or(default.min_per_sec()),
                budget.window.unwrap_or(default.window()),
            )
        });
    }
    if let Some(s) = c.seed {
        b = b.seed(s);
    }
    if !c.retry_paths.is_empty() {
        let paths: Vec<String> = c.retry_paths.clone();
        b = b.retry_if(move |parts| {
            let path = parts.uri.path();
            paths
                .iter()
                .any(|p| p == path || (p.ends_with('/') && path.starts_with(p.as_str())))
        });
    }
    b
}

pub(crate) fn adaptive_builder(c: &AdaptiveConfig) -> AdaptiveBuilder {
    let mut b = AdaptiveLayer::builder();
    if let Some(n) = &c.name {
        b = b.name(n.clone());
    }
    macro_rules! set {
        ($alg:ident, $($field:ident),*) => {{
            $(if let Some(v) = c.$field {
                $alg = $alg.$field(v);
            })*
        }};
    }
    b = match c.algorithm.unwrap_or_default() {
        AdaptiveAlgorithm::Gradient2 => {
            let mut g = Gradient2::new();
            set!(
                g,
                initial_limit,
                min_limit,
                max_limit,
                smoothing,
                queue_size,
                rtt_tolerance
            );
            set!(g, long_window, backoff_ratio, probe_windows);
            b.algorithm(g)
        }
        AdaptiveAlgorithm::Aimd => {
            let mut a = Aimd::new();
            set!(
                a,
                initial_limit,
                min_limit,
                max_limit,
                backoff_ratio,
                timeout
            );
            b.algorithm(a)
        }
        AdaptiveAlgorithm::Vegas => {
            let mut v = Vegas::new();
            set!(
                v,
                initial_limit,
                min_limit,
                max_limit,
                smoothing,
                alpha,
                beta,
                probe_multiplier
            );
            b.algorithm(v)
        }
    };
    if let Some(w) = &c.window {
        b = b.window(w.min, w.max, w.samples);
    }
    if let Some(d) = c.min_rtt_threshold {
        b = b.min_rtt_threshold(d);
    }
    if let Some(d) = c.retry_after {
        b = b.retry_after(d);
    }
    if let Some(on) = c.cancelled_as_drop {
        b = b.cancelled_as_drop(on);
    }
    for p in &c.partitions {
        let mut partition = Partition::new(p.name.clone(), p.share);
        for m in &p.members {
            partition = partition.member(m.clone());
        }
        b = b.partition(partition);
    }
    if let Some(d) = &c.default_partition {
        b = b.default_partition(d.clone());
    }
    if let Some(m) = c.missing_key {
        b = b.missing_key(match m {
            MissingKeyPolicy::Reject => palisade_adaptive::MissingKey::Reject,
            MissingKeyPolicy::Anonymous => palisade_adaptive::MissingKey::Anonymous,
        });
    }
    if let Some(m) = c.malformed_key {
        b = b.malformed_key(malformed(m));
    }
    if let Some(n) = c.max_keys {
        b = b.max_keys(n);
    }
    if let Some(d) = c.idle_timeout {
        b = b.idle_timeout(d);
    }
    if let Some(d) = c.audit_interval {
        b = b.audit_interval(d);
    }
    if let Some(s) = c.seed {
        b = b.seed(s);
    }
    b
}

fn hedge_builder(c: &HedgeConfig) -> HedgeBuilder {
    let mut b = HedgeLayer::builder();
    match c.delay {
        Some(HedgeDelayChoice::Fixed(d)) => b = b.delay(d),
        Some(HedgeDelayChoice::Percentile(p)) => {
            // The percentile was checked to be in (0, 1) when the file was read: the only setting here.
            if let Ok(estimator) = LatencyPercentile::builder().percentile(p).build() {
                b = b.delay_from(estimator);
            }
        }
        None => {}
    }
    if let Some(n) = c.max_hedges {
        b = b.max_hedges(n);
    }
    if let Some(n) = c.max_body {
        b = b.max_body(n);
    }
    if let Some(budget) = &c.budget {
        match (budget.unlimited, budget.ratio, budget.burst) {
            (true, _, _) => b = b.budget(HedgeBudget::unlimited()),
            (false, Some(ratio), Some(burst)) => b = b.budget(HedgeBudget::new(ratio, burst)),
            // Refused by the cross-section check.
            _ => {}
        }
    }
    if !c.hedge_paths.is_empty() {
        let paths: Vec<String> = c.hedge_paths.clone();
        b = b.hedge_if(move |parts| {
            let path = parts.uri.path();
            paths
                .iter()
                .any(|p| p == path || (p.ends_with('/') && path.starts_with(p.as_str())))
        });
    }
    b
}

/// The key layers' policy for a key that is present but malformed.
fn malformed(p: MalformedKeyPolicy) -> palisade_core::key::MalformedKey {
    match p {
        MalformedKeyPolicy::Reject => palisade_core::key::MalformedKey::Reject,
        MalformedKeyPolicy::AsMissing => palisade_core::key::MalformedKey::AsMissing,
    }
}
