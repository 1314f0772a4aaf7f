//! Every key the schema has, for environments that can only be asked by name
//! ([`Config::load_with_env`](super::Config::load_with_env)). Tested against the schema.

const GATE: &[&str] = &[
    "name",
    "initial_level",
    "level_from_env",
    "floor",
    "floor.degraded",
    "floor.critical",
    "floor.read_only",
    "default_priority",
    "routes",
    "priority_header",
    "priority_header_max",
    "retry_after",
    "no_retry_after",
    "health_levels",
    "health_levels.degraded_at",
    "health_levels.unhealthy_at",
    "load_at",
    "load_at.normal",
    "load_at.degraded",
    "load_at.critical",
    "load_at.read_only",
    "load_at.maintenance",
    "auto_in_flight",
    "auto_in_flight.level",
    "auto_in_flight.enter",
    "auto_in_flight.leave",
    "auto_latency_p95",
    "auto_latency_p95.level",
    "auto_latency_p95.enter",
    "auto_latency_p95.leave",
    "auto_error_rate",
    "auto_error_rate.level",
    "auto_error_rate.enter",
    "auto_error_rate.leave",
    "auto_dwell",
    "auto_interval",
    "auto_window",
    "auto_min_samples",
    "auto_samples",
    "manual_hold",
];

const RATE: &[&str] = &["limit", "per", "burst"];

const RATE_LIMIT: &[&str] = &[
    "default_rate",
    "tiers",
    "tenants",
    "global",
    "missing_key",
    "malformed_key",
    "penalty",
    "penalty.base",
    "penalty.max",
    "penalty.decay",
    "adaptive_floor",
    "headers_on_success",
    "max_keys",
    "idle_timeout",
];

const BULKHEAD: &[&str] = &[
    "name",
    "max_concurrent",
    "keyed",
    "max_per_tenant",
    "queue",
    "queue.max_len",
    "queue.max_wait",
    "max_queued_per_tenant",
    "aging",
    "quantum",
    "priority_header",
    "retry_after",
    "hold_until_body_end",
    "missing_key",
    "malformed_key",
    "max_keys",
    "idle_timeout",
];

const TIMEOUT: &[&str] = &[
    "timeout",
    "grpc_timeout",
    "propagate_grpc_timeout",
    "header",
];

const FALLBACK: &[&str] = &[
    "name",
    "status",
    "headers",
    "body",
    "trigger",
    "trigger_statuses",
];

const BREAKER: &[&str] = &[
    "name",
    "consecutive_failures",
    "failure_rate",
    "no_failure_rate",
    "slow_call_rate",
    "slow_call_rate.threshold",
    "slow_call_rate.rate",
    "window_calls",
    "window_time",
    "minimum_calls",
    "half_open_probes",
    "successes_to_close",
    "open_wait",
    "open_wait.base",
    "open_wait.max",
    "jitter",
    "half_open_max_wait",
    "seed",
];

const CHAOS: &[&str] = &["name", "seed"];

const IDEMPOTENCY: &[&str] = &[
    "name",
    "methods",
    "require_key",
    "routes",
    "fingerprint_headers",
    "max_request_body",
    "max_response_body",
    "lease",
    "ttl",
    "conflict_retry_after",
    "store_server_errors",
    "on_abandon",
    "missing_tenant",
    "malformed_tenant",
    "secret",
    "max_records",
    "max_bytes",
];

const RETRY: &[&str] = &[
    "max_attempts",
    "backoff",
    "backoff.kind",
    "backoff.base",
    "backoff.max",
    "backoff.jitter",
    "retry_after_cap",
    "max_body",
    "retry_timeouts",
    "budget",
    "budget.unlimited",
    "budget.ratio",
    "budget.min_per_sec",
    "budget.window",
    "seed",
    "retry_paths",
];

const ADAPTIVE: &[&str] = &[
    "name",
    "algorithm",
    "initial_limit",
    "min_limit",
    "max_limit",
    "smoothing",
    "queue_size",
    "rtt_tolerance",
    "long_window",
    "backoff_ratio",
    "probe_windows",
    "timeout",
    "alpha",
    "beta",
    "probe_multiplier",
    "window",
    "window.min",
    "window.max",
    "window.samples",
    "min_rtt_threshold",
    "retry_after",
    "cancelled_as_drop",
    "partitions",
    "default_partition",
    "missing_key",
    "malformed_key",
    "max_keys",
    "idle_timeout",
    "audit_interval",
    "seed",
];

const HEDGE: &[&str] = &[
    "delay",
    "max_hedges",
    "max_body",
    "budget",
    "budget.unlimited",
    "budget.ratio",
    "budget.burst",
    "hedge_paths",
];

const HEAL_SIGNALS: &[&str] = &[
    "windows",
    "slots",
    "relative_accuracy",
    "max_signals",
    "detect_window",
];

/// Every key path of the schema (map entries such as tier names excepted).
pub(crate) fn all() -> Vec<String> {
    let mut out = vec![
        "server.tenant_header".to_owned(),
        "server.tenant_max_len".to_owned(),
    ];
    let mut section = |prefix: &str, keys: &[&str]| {
        out.push(prefix.to_owned());
        out.extend(keys.iter().map(|k| format!("{prefix}.{k}")));
    };
    section("server.gate", GATE);
    section("server.rate_limit", RATE_LIMIT);
    section("server.rate_limit.default_rate", RATE);
    section("server.rate_limit.global", RATE);
    section("server.bulkhead", BULKHEAD);
    section("server.adaptive", ADAPTIVE);
    section("server.timeout", TIMEOUT);
    section("server.fallback", FALLBACK);
    section("server.breaker", BREAKER);
    section("server.chaos", CHAOS);
    section("server.idempotency", IDEMPOTENCY);
    section("client.total_timeout", TIMEOUT);
    section("client.hedge", HEDGE);
    section("client.retry", RETRY);
    section("client.breaker", BREAKER);
    section("client.adaptive", ADAPTIVE);
    section("client.per_try_timeout", TIMEOUT);
    section("client.bulkhead", BULKHEAD);
    section("client.chaos", CHAOS);
    section("heal.signals", HEAL_SIGNALS);
    out.push("heal.detectors".to_owned());
    out
}
