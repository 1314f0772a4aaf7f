//! The typed config: one struct per section, every field named like the builder method it feeds.
//!
//! An `Option` field that is `None` (the key is absent) leaves the builder's default in place.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use palisade_degrade::{Level, Priority};
use serde::Deserialize;

use super::duration;
use super::parse::{self, Secret, TenantId};

/// The server stack: `[server]` and its sections. A section present puts that layer in the stack.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The request header naming the tenant (e.g. `"x-tenant-id"`), used by the rate limit, a keyed
    /// bulkhead, idempotency scopes and tenant-targeted chaos faults.
    #[serde(default, deserialize_with = "parse::optional")]
    pub tenant_header: Option<HeaderName>,
    /// The longest tenant header value accepted (default `HeaderKey::DEFAULT_MAX_LEN`, 128).
    #[serde(default)]
    pub tenant_max_len: Option<usize>,
    /// `[server.gate]`: the degradation gate.
    #[serde(default)]
    pub gate: Option<GateConfig>,
    /// `[server.rate_limit]`: the per-tenant rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// `[server.bulkhead]`: the bulkhead.
    #[serde(default)]
    pub bulkhead: Option<BulkheadConfig>,
    /// `[server.adaptive]`: the adaptive concurrency limit (inside the bulkhead, outside the timeout).
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
    /// `[server.timeout]`: the request timeout.
    #[serde(default)]
    pub timeout: Option<TimeoutConfig>,
    /// `[server.fallback]`: a static fallback response.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// `[server.breaker]`: the circuit breaker.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// `[server.chaos]`: fault injection (faults are injected at run time through the handle).
    #[serde(default)]
    pub chaos: Option<ChaosConfig>,
    /// `[server.idempotency]`: the Idempotency-Key layer, for the routes that create things.
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
}

/// The client stack: `[client]` and its sections (a tonic client: `ClientStack::tonic()`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `[client.total_timeout]`: the timeout over every attempt and backoff.
    #[serde(default)]
    pub total_timeout: Option<TimeoutConfig>,
    /// `[client.hedge]`: hedged requests (outside retry).
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
    /// `[client.retry]`: retry with backoff and a budget.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// `[client.breaker]`: the circuit breaker.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// `[client.adaptive]`: the adaptive concurrency limit (inside the breaker, outside the per-try
    /// timeout; unpartitioned).
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
    /// `[client.per_try_timeout]`: the timeout of one attempt.
    #[serde(default)]
    pub per_try_timeout: Option<TimeoutConfig>,
    /// `[client.bulkhead]`: calls in flight to the backend (unkeyed).
    #[serde(default)]
    pub bulkhead: Option<BulkheadConfig>,
    /// `[client.chaos]`: fault injection next to the transport.
    #[serde(default)]
    pub chaos: Option<ChaosConfig>,
}

/// `[server.gate]`: `palisade::degrade::Builder`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GateConfig {
    /// `name`: the health component is `gate.<name>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `initial_level`: `normal`, `degraded`, `critical`, `read_only` or `maintenance`. Changing it
    /// and reloading sets the live level.
    #[serde(default, deserialize_with = "parse::optional")]
    pub initial_level: Option<Level>,
    /// `level_from_env`: also read `PALISADE_READ_ONLY` and `PALISADE_GATE_LEVEL` (read when the
    /// config is loaded, from the same environment as the overrides).
    #[serde(default)]
    pub level_from_env: bool,
    /// `floor`: the lowest class each level admits.
    #[serde(default)]
    pub floor: Option<FloorConfig>,
    /// `default_priority`: `background`, `normal` or `critical`.
    #[serde(default, deserialize_with = "parse::optional")]
    pub default_priority: Option<Priority>,
    /// `routes`: path prefix → priority class (the builder's `route`).
    #[serde(default, deserialize_with = "parse::map_values")]
    pub routes: BTreeMap<String, Priority>,
    /// `priority_header`: read the class from this header.
    #[serde(default, deserialize_with = "parse::optional")]
    pub priority_header: Option<HeaderName>,
    /// `priority_header_max`: the highest class the header may claim.
    #[serde(default, deserialize_with = "parse::optional")]
    pub priority_header_max: Option<Priority>,
    /// `retry_after`: the `Retry-After` hint on refusals.
    #[serde(default, deserialize_with = "duration::optional")]
    pub retry_after: Option<Duration>,
    /// `no_retry_after = true`: refusals carry no hint.
    #[serde(default)]
    pub no_retry_after: bool,
    /// `health_levels`: `{ degraded_at = "degraded", unhealthy_at = "maintenance" }`.
    #[serde(default)]
    pub health_levels: Option<HealthLevelsConfig>,
    /// `load_at`: the load published at each level, in `[0, 1]`.
    #[serde(default)]
    pub load_at: Option<LoadAtConfig>,
    /// `auto_in_flight`: `{ level, enter, leave }` in requests in flight.
    #[serde(default)]
    pub auto_in_flight: Option<InFlightTrigger>,
    /// `auto_latency_p95`: `{ level, enter, leave }` as durations.
    #[serde(default)]
    pub auto_latency_p95: Option<LatencyTrigger>,
    /// `auto_error_rate`: `{ level, enter, leave }` as rates in `(0, 1]`.
    #[serde(default)]
    pub auto_error_rate: Option<ErrorRateTrigger>,
    /// `auto_dwell`: how long the signals must stay below their leave thresholds, continuously, before
    /// stepping down.
    #[serde(default, deserialize_with = "duration::optional")]
    pub auto_dwell: Option<Duration>,
    /// `auto_interval`: how often the request path evaluates the signals.
    #[serde(default, deserialize_with = "duration::optional")]
    pub auto_interval: Option<Duration>,
    /// `auto_window`: the window of the latency and error-rate signals.
    #[serde(default, deserialize_with = "duration::optional")]
    pub auto_window: Option<Duration>,
    /// `auto_min_samples`: calls needed in the window before the rates count.
    #[serde(default)]
    pub auto_min_samples: Option<u32>,
    /// `auto_samples`: how many recent calls are kept.
    #[serde(default)]
    pub auto_samples: Option<usize>,
    /// `manual_hold`: how long an operator's level holds in automatic mode.
    #[serde(default, deserialize_with = "duration::optional")]
    pub manual_hold: Option<Duration>,
}

/// `floor = { degraded = "normal", critical = "critical", read_only = "background" }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FloorConfig {
    /// The lowest class `degraded` admits.
    #[serde(default, deserialize_with = "parse::optional")]
    pub degraded: Option<Priority>,
    /// The lowest class `critical` admits.
    #[serde(default, deserialize_with = "parse::optional")]
    pub critical: Option<Priority>,
    /// The lowest class `read_only` admits.
    #[serde(default, deserialize_with = "parse::optional")]
    pub read_only: Option<Priority>,
}

/// `health_levels = { degraded_at = .., unhealthy_at = .. }` (both required).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthLevelsConfig {
    /// From this level the health component is degraded.
    #[serde(deserialize_with = "parse::required")]
    pub degraded_at: Level,
    /// From this level the health component is unhealthy.
    #[serde(deserialize_with = "parse::required")]
    pub unhealthy_at: Level,
}

/// `load_at = { degraded = 0.5, critical = 0.8, ... }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LoadAtConfig {
    /// Load published at `normal`.
    #[serde(default)]
    pub normal: Option<f64>,
    /// Load published at `degraded`.
    #[serde(default)]
    pub degraded: Option<f64>,
    /// Load published at `critical`.
    #[serde(default)]
    pub critical: Option<f64>,
    /// Load published at `read_only`.
    #[serde(default)]
    pub read_only: Option<f64>,
    /// Load published at `maintenance`.
    #[serde(default)]
    pub maintenance: Option<f64>,
}

/// `auto_in_flight = { level = "degraded", enter = 200, leave = 100 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct InFlightTrigger {
    /// The level to go to.
    #[serde(deserialize_with = "parse::required")]
    pub level: Level,
    /// Enter at this many requests in flight.
    pub enter: u64,
    /// Leave below this many.
    pub leave: u64,
}

/// `auto_latency_p95 = { level = "critical", enter = "800ms", leave = "300ms" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LatencyTrigger {
    /// The level to go to.
    #[serde(deserialize_with = "parse::required")]
    pub level: Level,
    /// Enter at this p95 latency.
    #[serde(deserialize_with = "duration::required")]
    pub enter: Duration,
    /// Leave below this p95 latency.
    #[serde(deserialize_with = "duration::required")]
    pub leave: Duration,
}

/// `auto_error_rate = { level = "degraded", enter = 0.5, leave = 0.2 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ErrorRateTrigger {
    /// The level to go to.
    #[serde(deserialize_with = "parse::required")]
    pub level: Level,
    /// Enter at this error rate.
    pub enter: f64,
    /// Leave below this error rate.
    pub leave: f64,
}

/// A rate: `{ limit = 100, per = "1s", burst = 200 }` — `limit` requests per `per`, bursts of
/// `burst` (default: `limit`). `palisade::ratelimit::Rate::new(limit, per).burst(burst)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateConfig {
    /// Requests per `per`.
    pub limit: u32,
    /// The period.
    #[serde(deserialize_with = "duration::required")]
    pub per: Duration,
    /// The largest burst (default `limit`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateConfig {
    /// The rate limiter's `Rate`.
    pub fn rate(&self) -> palisade_ratelimit::Rate {
        let rate = palisade_ratelimit::Rate::new(self.limit, self.per);
        match self.burst {
            Some(b) => rate.burst(b),
            None => rate,
        }
    }
}

/// What happens to a request without a key: `"reject"` or `"anonymous"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingKeyPolicy {
    /// Refuse it (`400`).
    Reject,
    /// Share one anonymous bucket / tenant.
    Anonymous,
}

/// What happens to a request whose key is present but malformed (too long, empty, not visible ASCII,
/// repeated): `"reject"` or `"as_missing"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MalformedKeyPolicy {
    /// Refuse it (`400`), whatever the missing-key policy says. The default.
    Reject,
    /// Handle it like a missing key (under `"anonymous"`, the anonymous bucket): lets any client choose the
    /// anonymous bucket over its own, so only for keys the clients do not control.
    AsMissing,
}

/// `[server.rate_limit]`: `palisade::ratelimit::Builder`, keyed by `server.tenant_header`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// `default_rate`: the rate of tenants in no other tier. Reloadable.
    #[serde(default)]
    pub default_rate: Option<RateConfig>,
    /// `[server.rate_limit.tiers]`: named rates (the builder's `tier`). Reloadable (created, changed or removed).
    #[serde(default)]
    pub tiers: BTreeMap<String, RateConfig>,
    /// `[server.rate_limit.tenants]`: tenant → tier (the builder's `tenant`). Reloadable.
    #[serde(default)]
    pub tenants: BTreeMap<TenantId, String>,
    /// `global`: a limit on all requests together. Reloadable (if present at start).
    #[serde(default)]
    pub global: Option<RateConfig>,
    /// `missing_key`: `"reject"` (the builder's default) or `"anonymous"`: requests without a tenant.
    #[serde(default)]
    pub missing_key: Option<MissingKeyPolicy>,
    /// `malformed_key`: `"reject"` (the default: `400` even under `missing_key = "anonymous"`) or
    /// `"as_missing"`: requests whose tenant is present but malformed.
    #[serde(default)]
    pub malformed_key: Option<MalformedKeyPolicy>,
    /// `penalty = { base, max, decay }`: repeat offenders wait longer.
    #[serde(default)]
    pub penalty: Option<PenaltyConfig>,
    /// `adaptive_floor`: quotas shrink with the gate's load down to this fraction (needs
    /// `[server.gate]`, whose load signal it follows).
    #[serde(default)]
    pub adaptive_floor: Option<f64>,
    /// `headers_on_success`: add `RateLimit` headers to admitted responses.
    #[serde(default)]
    pub headers_on_success: Option<bool>,
    /// `max_keys`: the most tenants tracked at once.
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// `idle_timeout`: a full bucket unused this long may be forgotten.
    #[serde(default, deserialize_with = "duration::optional")]
    pub idle_timeout: Option<Duration>,
}

/// `penalty = { base = "1s", max = "1m", decay = "10m" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PenaltyConfig {
    /// The penalty at the second streak.
    #[serde(deserialize_with = "duration::required")]
    pub base: Duration,
    /// The largest penalty.
    #[serde(deserialize_with = "duration::required")]
    pub max: Duration,
    /// How long without a violation forgives one level.
    #[serde(deserialize_with = "duration::required")]
    pub decay: Duration,
}

/// `[server.bulkhead]` / `[client.bulkhead]`: `palisade::bulkhead::Builder`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// `name`: the health component is `bulkhead.<name>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `max_concurrent`: requests in flight. Reloadable.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// `keyed = true`: per-tenant accounting by `server.tenant_header` (server only).
    #[serde(default)]
    pub keyed: bool,
    /// `max_per_tenant`: one tenant's share (keyed). Reloadable.
    #[serde(default)]
    pub max_per_tenant: Option<usize>,
    /// `queue = { max_len, max_wait }`: wait for a slot instead of being refused at once.
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    /// `max_queued_per_tenant`: one tenant's waiters (queue).
    #[serde(default)]
    pub max_queued_per_tenant: Option<usize>,
    /// `aging`: a waiter this old is served before fresher ones of higher classes (queue).
    #[serde(default, deserialize_with = "duration::optional")]
    pub aging: Option<Duration>,
    /// `quantum`: waiters of one tenant served in a row (queue).
    #[serde(default)]
    pub quantum: Option<u32>,
    /// `priority_header`: the queue's class from this header (`critical`, `normal`, `background`;
    /// server only).
    #[serde(default, deserialize_with = "parse::optional")]
    pub priority_header: Option<HeaderName>,
    /// `retry_after`: the hint on `Overloaded`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub retry_after: Option<Duration>,
    /// `hold_until_body_end = true`: hold the slot until the response body ends.
    #[serde(default)]
    pub hold_until_body_end: bool,
    /// `missing_key`: `"anonymous"` (the builder's default) or `"reject"` (keyed): requests without a
    /// tenant.
    #[serde(default)]
    pub missing_key: Option<MissingKeyPolicy>,
    /// `malformed_key`: `"reject"` (the default: `400` even under `missing_key = "anonymous"`) or
    /// `"as_missing"` (keyed): requests whose tenant is present but malformed.
    #[serde(default)]
    pub malformed_key: Option<MalformedKeyPolicy>,
    /// `max_keys`: tenants tracked (keyed).
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// `idle_timeout`: an idle tenant is forgotten after this long (keyed).
    #[serde(default, deserialize_with = "duration::optional")]
    pub idle_timeout: Option<Duration>,
}

/// The adaptive limit's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdaptiveAlgorithm {
    /// `palisade::adaptive::Gradient2` (the builder's default).
    #[default]
    Gradient2,
    /// `palisade::adaptive::Aimd`.
    Aimd,
    /// `palisade::adaptive::Vegas`.
    Vegas,
}

impl AdaptiveAlgorithm {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            AdaptiveAlgorithm::Gradient2 => "gradient2",
            AdaptiveAlgorithm::Aimd => "aimd",
            AdaptiveAlgorithm::Vegas => "vegas",
        }
    }
}

/// `window = { min = "1s", max = "1s", samples = 10 }` (all required): the builder's `window`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveWindowConfig {
    /// A window lasts at least this long.
    #[serde(deserialize_with = "duration::required")]
    pub min: Duration,
    /// A window lasts at most this long.
    #[serde(deserialize_with = "duration::required")]
    pub max: Duration,
    /// A window closes once it holds this many calls.
    pub samples: u64,
}

/// One `partitions` entry: `{ name = "batch", share = 0.1, members = ["reports"] }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PartitionConfig {
    /// The partition's name, also its first member (a tenant label).
    pub name: String,
    /// Its guaranteed share of the limit, in `(0, 1]`.
    pub share: f64,
    /// More tenant labels that belong to it.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `[server.adaptive]` / `[client.adaptive]`: `palisade::adaptive::Builder`, with the algorithm's
/// parameters flat in the section. A parameter that does not apply to the `algorithm` is refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveConfig {
    /// `name`: the health component is `adaptive.<name>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `algorithm`: `"gradient2"` (default), `"aimd"` or `"vegas"`.
    #[serde(default)]
    pub algorithm: Option<AdaptiveAlgorithm>,
    /// `initial_limit` (every algorithm).
    #[serde(default)]
    pub initial_limit: Option<usize>,
    /// `min_limit` (every algorithm).
    #[serde(default)]
    pub min_limit: Option<usize>,
    /// `max_limit` (every algorithm).
    #[serde(default)]
    pub max_limit: Option<usize>,
    /// `smoothing` (gradient2, vegas).
    #[serde(default)]
    pub smoothing: Option<f64>,
    /// `queue_size` (gradient2).
    #[serde(default)]
    pub queue_size: Option<f64>,
    /// `rtt_tolerance` (gradient2).
    #[serde(default)]
    pub rtt_tolerance: Option<f64>,
    /// `long_window` (gradient2), in windows.
    #[serde(default)]
    pub long_window: Option<u32>,
    /// `backoff_ratio` (gradient2, aimd).
    #[serde(default)]
    pub backoff_ratio: Option<f64>,
    /// `probe_windows` (gradient2).
    #[serde(default)]
    pub probe_windows: Option<u32>,
    /// `timeout` (aimd): an average RTT above this is a drop.
    #[serde(default, deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// `alpha` (vegas).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// `beta` (vegas).
    #[serde(default)]
    pub beta: Option<f64>,
    /// `probe_multiplier` (vegas).
    #[serde(default)]
    pub probe_multiplier: Option<u32>,
    /// `window = { min, max, samples }`: the sample windows.
    #[serde(default)]
    pub window: Option<AdaptiveWindowConfig>,
    /// `min_rtt_threshold`: faster successes are not sampled.
    #[serde(default, deserialize_with = "duration::optional")]
    pub min_rtt_threshold: Option<Duration>,
    /// `retry_after`: the hint on `Overloaded`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub retry_after: Option<Duration>,
    /// `cancelled_as_drop = true`: a cancelled call is a drop.
    #[serde(default)]
    pub cancelled_as_drop: Option<bool>,
    /// `partitions`: guaranteed shares for tenants by `server.tenant_header` (server only; the
    /// builder's `partition`).
    #[serde(default)]
    pub partitions: Vec<PartitionConfig>,
    /// `default_partition`: tenants in no partition join this one (partitions).
    #[serde(default)]
    pub default_partition: Option<String>,
    /// `missing_key`: `"anonymous"` (the builder's default) or `"reject"` (partitions).
    #[serde(default)]
    pub missing_key: Option<MissingKeyPolicy>,
    /// `malformed_key`: `"reject"` (the default) or `"as_missing"` (partitions).
    #[serde(default)]
    pub malformed_key: Option<MalformedKeyPolicy>,
    /// `max_keys`: tenants tracked (partitions).
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// `idle_timeout`: an idle tenant is forgotten after this long (partitions).
    #[serde(default, deserialize_with = "duration::optional")]
    pub idle_timeout: Option<Duration>,
    /// `audit_interval`: the least time between two audit records of one kind.
    #[serde(default, deserialize_with = "duration::optional")]
    pub audit_interval: Option<Duration>,
    /// `seed`: reproducible probe jitter.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// When a hedge is sent: `delay = "p95"` (a percentile of recent first-attempt latency, the
/// builder's default estimator with another percentile) or `delay = "50ms"` (fixed; `"0s"` is
/// parallel mode).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelayChoice {
    /// `"p<percentile>"`, e.g. `"p95"`, `"p99.9"`: the fraction in `(0, 1)`.
    Percentile(f64),
    /// A fixed delay.
    Fixed(Duration),
}

impl std::str::FromStr for HedgeDelayChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix('p') {
            let p: f64 = p.parse().map_err(|_| {
                "expected a percentile such as \"p95\" or a duration such as \"50ms\"".to_owned()
            })?;
            if !(p > 0.0 && p < 100.0) {
                return Err(format!("the percentile {p} is not between 0 and 100"));
            }
            return Ok(HedgeDelayChoice::Percentile(p / 100.0));
        }
        duration::parse_duration(s)
            .map(HedgeDelayChoice::Fixed)
            .map_err(|e| format!("expected a percentile such as \"p95\" or a duration: {e}"))
    }
}

/// `budget = { ratio = 0.1, burst = 10 }` (both) or `budget = { unlimited = true }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeBudgetConfig {
    /// No budget.
    #[serde(default)]
    pub unlimited: bool,
    /// Hedges per request.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Hedges allowed on top of the ratio.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `[client.hedge]`: `palisade::hedge::HedgeBuilder`. Its `may_hedge` signal is the client stack's
/// breaker (no hedge unless it is closed).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// `delay`: `"p95"` (the builder's default) or another percentile, or a fixed duration (`"0s"`:
    /// parallel mode).
    #[serde(default, deserialize_with = "parse::optional")]
    pub delay: Option<HedgeDelayChoice>,
    /// `max_hedges`: hedges per request beyond the first attempt.
    #[serde(default)]
    pub max_hedges: Option<u32>,
    /// `max_body`: the largest request body buffered for hedging.
    #[serde(default)]
    pub max_body: Option<usize>,
    /// `budget`.
    #[serde(default)]
    pub budget: Option<HedgeBudgetConfig>,
    /// `hedge_paths`: request paths (gRPC methods, which are all `POST`) that are safe to hedge: an
    /// exact path or a prefix ending in `/`. The builder's `hedge_if`.
    #[serde(default)]
    pub hedge_paths: Vec<String>,
}

/// `queue = { max_len = 100, max_wait = "500ms" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The most waiters.
    pub max_len: usize,
    /// The longest wait.
    #[serde(deserialize_with = "duration::required")]
    pub max_wait: Duration,
}

/// `[server.timeout]`, `[client.total_timeout]`, `[client.per_try_timeout]`:
/// `palisade::timeout::TimeoutBuilder`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutConfig {
    /// `timeout` (required: the builder has no default).
    #[serde(deserialize_with = "duration::required")]
    pub timeout: Duration,
    /// `grpc_timeout = true`: honour an incoming `grpc-timeout`.
    #[serde(default)]
    pub grpc_timeout: Option<bool>,
    /// `propagate_grpc_timeout = true`: write the budget as `grpc-timeout` (clients).
    #[serde(default)]
    pub propagate_grpc_timeout: Option<bool>,
    /// `header`: also honour a millisecond deadline header, e.g. `"x-request-timeout"`.
    #[serde(default)]
    pub header: Option<String>,
}

impl TimeoutConfig {
    /// A config with just `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutConfig {
            timeout,
            grpc_timeout: None,
            propagate_grpc_timeout: None,
            header: None,
        }
    }
}

/// Which errors activate the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FallbackTrigger {
    /// `Trigger::unavailable()` (the builder's default): open circuit, overload, shed, timeout, or
    /// an error that is not a palisade rejection.
    #[default]
    Unavailable,
    /// `Trigger::any_error()`: every error.
    AnyError,
    /// `Trigger::any_rejection()`: any palisade rejection.
    AnyRejection,
}

/// `[server.fallback]`: `palisade::fallback::Builder` with a static response.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FallbackConfig {
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `status` of the static response (required).
    #[serde(deserialize_with = "parse::status")]
    pub status: StatusCode,
    /// `headers` of the static response: `{ "content-type" = "application/json" }`.
    #[serde(default, deserialize_with = "parse::headers")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `body` of the static response (default empty).
    #[serde(default)]
    pub body: Option<String>,
    /// `trigger`: `"unavailable"` (default), `"any_error"` or `"any_rejection"`.
    #[serde(default)]
    pub trigger: FallbackTrigger,
    /// `trigger_statuses`: response statuses that also activate it, e.g. `[502, 503]`.
    #[serde(default, deserialize_with = "parse::statuses")]
    pub trigger_statuses: Vec<StatusCode>,
}

/// `[server.breaker]` / `[client.breaker]`: `palisade::breaker::Builder`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// `name`: the health component is `breaker.<name>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `consecutive_failures`: trip after this many in a row (0: off).
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// `failure_rate`: trip at this failure rate in `(0, 1]`.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// `no_failure_rate = true`: judge no failure rate.
    #[serde(default)]
    pub no_failure_rate: bool,
    /// `slow_call_rate = { threshold = "1s", rate = 0.5 }`.
    #[serde(default)]
    pub slow_call_rate: Option<SlowCallConfig>,
    /// `window_calls`: judge the rates over the last n calls.
    #[serde(default)]
    pub window_calls: Option<u32>,
    /// `window_time`: judge the rates over this long.
    #[serde(default, deserialize_with = "duration::optional")]
    pub window_time: Option<Duration>,
    /// `minimum_calls`: rates count once a window holds this many calls.
    #[serde(default)]
    pub minimum_calls: Option<u32>,
    /// `half_open_probes`: probes let through at once.
    #[serde(default)]
    pub half_open_probes: Option<u32>,
    /// `successes_to_close`: successful probes that close the circuit.
    #[serde(default)]
    pub successes_to_close: Option<u32>,
    /// `open_wait = { base = "2s", max = "60s" }` (both required).
    #[serde(default)]
    pub open_wait: Option<OpenWaitConfig>,
    /// `jitter`: up to this fraction of the wait added at random.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// `half_open_max_wait`: how long HalfOpen waits for its probes.
    #[serde(default, deserialize_with = "duration::optional")]
    pub half_open_max_wait: Option<Duration>,
    /// `seed`: seeds the jitter.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `slow_call_rate = { threshold = "1s", rate = 0.5 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowCallConfig {
    /// A call at least this long is slow.
    #[serde(deserialize_with = "duration::required")]
    pub threshold: Duration,
    /// Trip at this slow-call rate.
    pub rate: f64,
}

/// `open_wait = { base = "2s", max = "60s" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OpenWaitConfig {
    /// The first wait.
    #[serde(deserialize_with = "duration::required")]
    pub base: Duration,
    /// The longest wait.
    #[serde(deserialize_with = "duration::required")]
    pub max: Duration,
}

/// `[server.chaos]` / `[client.chaos]`: `palisade::chaos::Builder`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChaosConfig {
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `seed`: reproducible decisions.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// When a request must carry an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyRuleChoice {
    /// The layer does not apply.
    Off,
    /// Requests with a key are executed at most once.
    Optional,
    /// A request without a key is refused.
    Required,
}

/// A keyed request without a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingTenantPolicy {
    /// Refuse it (the builder's default).
    Reject,
    /// One shared anonymous scope.
    Shared,
    /// Pass it on without idempotency.
    Bypass,
}

/// An abandoned request's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnAbandonPolicy {
    /// Forget the record (the builder's default).
    Release,
    /// Keep a failed record for the ttl.
    MarkFailed,
}

/// One `[[server.idempotency.routes]]` entry: `{ method = "POST", path = "/payments/*", rule = "required" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdempotencyRoute {
    /// The method.
    #[serde(deserialize_with = "parse::required")]
    pub method: Method,
    /// An exact path, or a prefix ending in `*`.
    pub path: String,
    /// `"off"`, `"optional"` or `"required"`.
    pub rule: KeyRuleChoice,
}

/// `[server.idempotency]`: `palisade::idempotency::Builder` on a `MemoryStore`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `methods`: the methods it applies to (default `POST`, `PATCH`).
    #[serde(default, deserialize_with = "parse::optional_list")]
    pub methods: Option<Vec<Method>>,
    /// `require_key`: requests with those methods must carry a key.
    #[serde(default)]
    pub require_key: Option<bool>,
    /// `routes`: per-route rules (the builder's `route`).
    #[serde(default)]
    pub routes: Vec<IdempotencyRoute>,
    /// `fingerprint_headers`: headers included in the fingerprint.
    #[serde(default, deserialize_with = "parse::list")]
    pub fingerprint_headers: Vec<HeaderName>,
    /// `max_request_body`: bytes read from a keyed request.
    #[serde(default)]
    pub max_request_body: Option<u64>,
    /// `max_response_body`: bytes of a response stored.
    #[serde(default)]
    pub max_response_body: Option<u64>,
    /// `lease`: how long an in-flight request holds its key.
    #[serde(default, deserialize_with = "duration::optional")]
    pub lease: Option<Duration>,
    /// `ttl`: how long a completed record is kept.
    #[serde(default, deserialize_with = "duration::optional")]
    pub ttl: Option<Duration>,
    /// `conflict_retry_after`: the `Retry-After` of a `409`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub conflict_retry_after: Option<Duration>,
    /// `store_server_errors`: store and replay 5xx responses.
    #[serde(default)]
    pub store_server_errors: Option<bool>,
    /// `on_abandon`: `"release"` or `"mark_failed"`.
    #[serde(default)]
    pub on_abandon: Option<OnAbandonPolicy>,
    /// `missing_tenant`: `"reject"`, `"shared"` or `"bypass"` (needs `server.tenant_header`).
    #[serde(default)]
    pub missing_tenant: Option<MissingTenantPolicy>,
    /// `malformed_tenant`: `"reject"` (the default: `400` whatever `missing_tenant` says) or
    /// `"as_missing"` (needs `server.tenant_header`): keyed requests whose tenant is malformed.
    #[serde(default)]
    pub malformed_tenant: Option<MalformedKeyPolicy>,
    /// `secret`: the hashing secret (at least 16 bytes; better set from the environment:
    /// `PALISADE_SERVER__IDEMPOTENCY__SECRET`).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// `max_records`: the memory store's record cap.
    #[serde(default)]
    pub max_records: Option<usize>,
    /// `max_bytes`: the memory store's byte cap (at least 1024).
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// The kind of backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackoffKind {
    /// `Backoff::exponential(base, max).jitter(jitter)`.
    #[default]
    Exponential,
    /// `Backoff::decorrelated(base, max)`.
    Decorrelated,
}

/// `backoff = { kind = "exponential", base = "100ms", max = "60s", jitter = "1s" }`; an absent
/// `base`, `max` or `jitter` is the default backoff's (`palisade::retry::DEFAULT_BASE`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// `"exponential"` (default) or `"decorrelated"`.
    #[serde(default)]
    pub kind: BackoffKind,
    /// The first delay.
    #[serde(default, deserialize_with = "duration::optional")]
    pub base: Option<Duration>,
    /// The largest delay (the cap of decorrelated backoff).
    #[serde(default, deserialize_with = "duration::optional")]
    pub max: Option<Duration>,
    /// Exponential only: up to this much added at random.
    #[serde(default, deserialize_with = "duration::optional")]
    pub jitter: Option<Duration>,
}

/// `budget = { ratio = 0.2, min_per_sec = 10, window = "10s" }` or `budget = { unlimited = true }`;
/// an absent part is the default budget's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// No budget.
    #[serde(default)]
    pub unlimited: bool,
    /// Retries as a fraction of requests.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// A floor of retries per second.
    #[serde(default)]
    pub min_per_sec: Option<u32>,
    /// The sliding window (1 to 60 whole seconds).
    #[serde(default, deserialize_with = "duration::optional")]
    pub window: Option<Duration>,
}

/// `[client.retry]`: `palisade::retry::RetryBuilder`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// `max_attempts`: attempts, the first included.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// `backoff`.
    #[serde(default)]
    pub backoff: Option<BackoffConfig>,
    /// `retry_after_cap`: the longest a service's retry hint may make it wait.
    #[serde(default, deserialize_with = "duration::optional")]
    pub retry_after_cap: Option<Duration>,
    /// `max_body`: the largest request body buffered for replay.
    #[serde(default)]
    pub max_body: Option<usize>,
    /// `retry_timeouts`: retry `Elapsed`.
    #[serde(default)]
    pub retry_timeouts: Option<bool>,
    /// `budget`.
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// `seed`: reproducible jitter.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `retry_paths`: request paths (gRPC methods, which are all `POST`) that are safe to retry: an
    /// exact path (`"/inventory.v1.Stock/Get"`) or a prefix ending in `/` (`"/inventory.v1.Stock/"`).
    /// The builder's `retry_if`.
    #[serde(default)]
    pub retry_paths: Vec<String>,
}

/// `[heal]`: the control plane's eyes — the latency recorders and the anomaly detectors
/// (`palisade::heal`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealConfig {
    /// `[heal.signals]`: the latency and outcome recorders' windows and limits.
    #[serde(default)]
    pub signals: Option<HealSignalsConfig>,
    /// `[heal.detectors.<name>]`: one detector per entry, each on one signal.
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorConfig>,
}

/// `[heal.signals]`: `palisade::heal::signals::RecorderConfig` and the `Recorders` registry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealSignalsConfig {
    /// `windows`: the sliding windows, e.g. `["10s", "1m", "5m"]` (the default).
    #[serde(default, deserialize_with = "duration::optional_list")]
    pub windows: Option<Vec<Duration>>,
    /// `slots`: time slots per window (default 10).
    #[serde(default)]
    pub slots: Option<u32>,
    /// `relative_accuracy`: the latency sketch's relative error, in `(0, 1)` (default 0.01).
    #[serde(default)]
    pub relative_accuracy: Option<f64>,
    /// `max_signals`: the most recorders (named signals) at once (default 64).
    #[serde(default)]
    pub max_signals: Option<usize>,
    /// `detect_window`: the window detectors read recorder signals over (default: the shortest). Must be
    /// one of `windows`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub detect_window: Option<Duration>,
}

/// The kind of a `[heal.detectors.<name>]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DetectorKind {
    /// `Threshold`: N consecutive breaches within W, with a recovery twin.
    Threshold,
    /// `MeanSigma`: outside mean ± k·σ of the last n samples.
    MeanSigma,
    /// `Ewma`: outside the EWMA ± k·deviation.
    Ewma,
    /// `Iqr`: outside the interquartile fences.
    Iqr,
    /// `MedianMad`: outside median ± k·MAD (robust; prefer it for latency).
    MedianMad,
    /// `RateOfChange`: a drop or rise by more than a fraction over a lookback.
    RateOfChange,
}

impl DetectorKind {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Threshold => "threshold",
            DetectorKind::MeanSigma => "mean_sigma",
            DetectorKind::Ewma => "ewma",
            DetectorKind::Iqr => "iqr",
            DetectorKind::MedianMad => "median_mad",
            DetectorKind::RateOfChange => "rate_of_change",
        }
    }
}

/// `recover_below = { value = 2.0, for = "10m" }`: the threshold detector's recovery twin.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RecoverConfig {
    /// The bound the signal must stay on the healthy side of.
    pub value: f64,
    /// For how long, continuously.
    #[serde(rename = "for", deserialize_with = "duration::required")]
    pub held_for: Duration,
}

/// `[heal.detectors.<name>]`: one detector (`palisade::heal::detect`), each key named like its builder
/// method. Keys that do not apply to the `kind` are refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DetectorConfig {
    /// `kind`: `"threshold"`, `"mean_sigma"`, `"ewma"`, `"iqr"`, `"median_mad"` or `"rate_of_change"`.
    pub kind: DetectorKind,
    /// `signal`: the signal it watches, e.g. `"api.p99"` (a recorder's `<name>.<stat>`) or a gauge's name.
    pub signal: String,
    /// `above` (threshold): breach when the value is above this bound.
    #[serde(default)]
    pub above: Option<f64>,
    /// `below` (threshold): breach when the value is below this bound.
    #[serde(default)]
    pub below: Option<f64>,
    /// `count` (threshold): consecutive breaches needed.
    #[serde(default)]
    pub count: Option<usize>,
    /// `within` (threshold): the breaches must fall within this time.
    #[serde(default, deserialize_with = "duration::optional")]
    pub within: Option<Duration>,
    /// `recover_after_greens` (threshold): consecutive healthy samples to recover.
    #[serde(default)]
    pub recover_after_greens: Option<usize>,
    /// `recover_below = { value, for }` (threshold): recover once below `value` for `for`.
    #[serde(default)]
    pub recover_below: Option<RecoverConfig>,
    /// `recover_above = { value, for }` (threshold): recover once above `value` for `for`.
    #[serde(default)]
    pub recover_above: Option<RecoverConfig>,
    /// `window` (mean_sigma, iqr, median_mad): samples in the baseline.
    #[serde(default)]
    pub window: Option<usize>,
    /// `k` (mean_sigma, ewma, median_mad): the band's width in deviations.
    #[serde(default)]
    pub k: Option<f64>,
    /// `alpha` (ewma): the smoothing factor, 0.1 to 0.3.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// `fence` (iqr): the fences' distance in IQRs.
    #[serde(default)]
    pub fence: Option<f64>,
    /// `min_spread` (mean_sigma, ewma, iqr, median_mad): the least spread the band assumes.
    #[serde(default)]
    pub min_spread: Option<f64>,
    /// `min_relative_spread` (mean_sigma, ewma, iqr, median_mad): the least spread as a fraction of the
    /// centre (the builders' default 0.02; 0 turns it off).
    #[serde(default)]
    pub min_relative_spread: Option<f64>,
    /// `drop` (rate_of_change): alarm on a fall by more than this fraction.
    #[serde(default)]
    pub drop: Option<f64>,
    /// `rise` (rate_of_change): alarm on a rise by more than this fraction.
    #[serde(default)]
    pub rise: Option<f64>,
    /// `over` (rate_of_change): the lookback.
    #[serde(default, deserialize_with = "duration::optional")]
    pub over: Option<Duration>,
    /// `resolution` (rate_of_change): samples kept over the lookback.
    #[serde(default)]
    pub resolution: Option<usize>,
    /// `min_volume` (every kind): ignore samples summarising fewer events.
    #[serde(default)]
    pub min_volume: Option<u64>,
    /// `warm_up` (every kind): samples that only build the baseline.
    #[serde(default)]
    pub warm_up: Option<u64>,
    /// `sustain_for` (every kind): how long the condition must hold before it is an anomaly.
    #[serde(default, deserialize_with = "duration::optional")]
    pub sustain_for: Option<Duration>,
}
