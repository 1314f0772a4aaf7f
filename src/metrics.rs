//! Metrics: every layer's counters and gauges, read from the stack's [`Handles`] when they are scraped.
//!
//! The layers already count what they do (atomics on their handles); nothing here touches the request
//! path. A [`Metrics`] collector holds the [`Handles`] of one or more stacks and, on demand:
//!
//! - [`render_prometheus`](Metrics::render_prometheus) writes the Prometheus text exposition format
//!   (version 0.0.4) with `# HELP` and `# TYPE` lines — serve it with [`MetricsEndpoint`];
//! - [`publish`](Metrics::publish) hands the same values to the [`metrics`] facade (counters as
//!   absolute values, gauges set; the facade has no summary, so a summary's quantiles, `_sum` and
//!   `_count` are gauges), for whatever exporter the application installed. Call it from a
//!   timer or just before the exporter is scraped.
//!
//! Every sample carries a `stack` label: the name given to [`register`](Metrics::register)
//! (`"server"`, `"client"`, ...). Stacks that share one `Health` or one `Audit` report the same health
//! and audit numbers under each of their names.
//!
//! ```
//! use palisade::health::{ComponentKind, Health};
//! use palisade::metrics::Metrics;
//! use palisade::stack::ServerStack;
//!
//! let health = Health::new();
//! let db = health.register("db", ComponentKind::Readiness);
//! let stack = ServerStack::builder().health(&health).build().unwrap();
//! let metrics = Metrics::new();
//! metrics.register("server", stack.handles());
//!
//! db.unhealthy("connection refused");
//! let text = metrics.render_prometheus();
//! assert!(text.contains("# TYPE palisade_health_ready gauge\n"));
//! assert!(text.contains("palisade_health_ready{stack=\"server\"} 0\n"));
//! assert!(text.contains("palisade_health_component_state{stack=\"server\",component=\"db\"} 2\n"));
//! ```
//!
//! In axum: `.route_service("/metrics", MetricsEndpoint::new(metrics.clone()))`.
//!
//! # The metrics
//!
//! This table is the stability promise: names, types, labels and meanings change only with a major
//! version. A metric appears when the stack has the layer it describes (and, where noted, the
//! feature of that layer); counters named `_total` are monotonic except where the table says an
//! operator action resets them (Prometheus treats a drop as a counter reset).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_rate_limit_admitted_total` | counter | `stack`, `tier` | Requests a rate-limit tier admitted (not reported for the `global` limit, which only refuses). |
//! | `palisade_rate_limit_rejected_total` | counter | `stack`, `tier` | Requests a tier refused with 429; `tier="global"` for the global limit. |
//! | `palisade_rate_limit_rate_per_second` | gauge | `stack`, `tier` | The tier's current sustained rate, in requests per second. |
//! | `palisade_rate_limit_burst` | gauge | `stack`, `tier` | The tier's current burst size, in requests. |
//! | `palisade_rate_limit_tracked_tenants` | gauge | `stack` | Tenants with a bucket of their own. |
//! | `palisade_rate_limit_overflowed_total` | counter | `stack` | Requests of new tenants that found the key store full and used the shared overflow bucket. |
//! | `palisade_rate_limit_load` | gauge | `stack` | The adaptive mode's load signal, 0.0–1.0 (only with adaptive mode). |
//! | `palisade_gate_level` | gauge | `stack` | The degradation level: 0 `normal`, 1 `degraded`, 2 `critical`, 3 `read_only`, 4 `maintenance`. |
//! | `palisade_gate_shed_total` | counter | `stack` | Requests the gate shed (503) because of the level. |
//! | `palisade_gate_read_only_refused_total` | counter | `stack` | Writes the gate refused in read-only mode. |
//! | `palisade_gate_load` | gauge | `stack` | The load signal the gate publishes for its level, 0.0–1.0. |
//! | `palisade_bulkhead_in_flight` | gauge | `stack` | Requests holding a bulkhead slot now. |
//! | `palisade_bulkhead_queued` | gauge | `stack` | Requests waiting in the bulkhead's queue now. |
//! | `palisade_bulkhead_max_concurrent` | gauge | `stack` | The bulkhead's current concurrency limit. |
//! | `palisade_bulkhead_rejected_total` | counter | `stack` | Requests the bulkhead refused (full, queue full, or waited too long). |
//! | `palisade_bulkhead_saturated` | gauge | `stack` | 1 while the bulkhead is saturated (its health component is degraded), else 0. |
//! | `palisade_bulkhead_tenants` | gauge | `stack` | Tenant keys a keyed bulkhead tracks (0 for an unkeyed one). |
//! | `palisade_bulkhead_overflowed_total` | counter | `stack` | Requests of new tenant keys sent to the shared overflow tenant because the key map was full. |
//! | `palisade_adaptive_limit` | gauge | `stack` | The adaptive concurrency limit now (it follows the backend's latency). |
//! | `palisade_adaptive_in_flight` | gauge | `stack` | Requests holding an adaptive-limit slot now. |
//! | `palisade_adaptive_rejected_total` | counter | `stack` | Requests the adaptive limit refused (503) because the limit was reached. |
//! | `palisade_adaptive_drops_total` | counter | `stack` | Drop signals the limit backed off on: calls that timed out or failed (and cancelled ones, if so configured). |
//! | `palisade_adaptive_limiting` | gauge | `stack` | 1 while the adaptive limit is refusing requests (its health component is degraded), else 0. |
//! | `palisade_timeout_seconds` | gauge | `stack` | The configured request timeout (server) or total timeout (client), in seconds. |
//! | `palisade_timeout_per_try_seconds` | gauge | `stack` | The configured per-attempt timeout (client), in seconds. |
//! | `palisade_fallback_triggered_total` | counter | `stack` | Outcomes of the inner service that fired the fallback's trigger. |
//! | `palisade_fallback_served_total` | counter | `stack` | Fallback responses served. |
//! | `palisade_fallback_unavailable_total` | counter | `stack` | Triggered, but no fallback could be served (the original outcome was returned). |
//! | `palisade_fallback_body_too_large_total` | counter | `stack` | Requests whose body was over the alternate fallback's buffer limit. |
//! | `palisade_fallback_alternate_failed_total` | counter | `stack` | Calls to the alternate service that failed. |
//! | `palisade_fallback_stale_entries` | gauge | `stack` | Responses in the stale-if-error store (only for that kind). |
//! | `palisade_fallback_stale_bytes` | gauge | `stack` | Bytes accounted in the stale-if-error store (only for that kind). |
//! | `palisade_breaker_state` | gauge | `stack` | The circuit: 0 closed, 1 half-open, 2 open (a forced-open breaker is open). |
//! | `palisade_breaker_mode` | gauge | `stack` | The operator mode: 0 normal, 1 forced open, 2 disabled, 3 metrics only. |
//! | `palisade_breaker_rejected_total` | counter | `stack` | Calls the breaker refused; reset to 0 by `BreakerHandle::reset`. |
//! | `palisade_breaker_window_calls` | gauge | `stack` | Calls in the breaker's current window. |
//! | `palisade_breaker_window_failures` | gauge | `stack` | Failures among them. |
//! | `palisade_breaker_window_slow` | gauge | `stack` | Slow calls among them. |
//! | `palisade_breaker_consecutive_failures` | gauge | `stack` | Failures in a row, as of now. |
//! | `palisade_breaker_consecutive_trips` | gauge | `stack` | Trips without a successful close since (drives the growing open wait). |
//! | `palisade_breaker_probes_in_flight` | gauge | `stack` | Half-open probe slots held now. |
//! | `palisade_chaos_active_faults` | gauge | `stack` | Injected faults active now (expired ones are removed, and audited, when read). |
//! | `palisade_retry_requests_total` | counter | `stack` | Requests the retry layer received (first attempts). |
//! | `palisade_retry_retries_total` | counter | `stack` | Retries sent (attempts after the first). |
//! | `palisade_retry_budget_refused_total` | counter | `stack` | Retryable failures returned without a retry because the budget was spent. |
//! | `palisade_retry_gave_up_total` | counter | `stack` | Requests that failed on their last allowed attempt. |
//! | `palisade_retry_body_too_large_total` | counter | `stack` | Retryable requests sent once because their body was over the buffer limit. |
//! | `palisade_retry_budget_exhausted` | gauge | `stack` | 1 if the budget refused the latest retry it was asked for, else 0. |
//! | `palisade_hedge_requests_total` | counter | `stack` | Requests the hedge layer received, hedgeable or not. |
//! | `palisade_hedge_hedges_total` | counter | `stack` | Hedges sent (attempts after the first). |
//! | `palisade_hedge_wins_total` | counter | `stack` | Requests answered by a hedge rather than by their first attempt. |
//! | `palisade_hedge_cancelled_total` | counter | `stack` | Attempts still in flight dropped because another attempt answered first. |
//! | `palisade_hedge_budget_refused_total` | counter | `stack` | Hedges not sent because the hedge budget was spent. |
//! | `palisade_hedge_suppressed_total` | counter | `stack` | Hedges not sent because the stack's breaker was not closed (or another `may_hedge` signal said no). |
//! | `palisade_hedge_budget_exhausted` | gauge | `stack` | 1 if the hedge budget refused the latest hedge it was asked for, else 0. |
//! | `palisade_idempotency_executed_total` | counter | `stack`, `layer` | Keyed requests that claimed their key and ran the handler (registered with [`register_idempotency`](Metrics::register_idempotency); `layer` is the layer's name). |
//! | `palisade_idempotency_replayed_total` | counter | `stack`, `layer` | Responses replayed from the idempotency store. |
//! | `palisade_idempotency_conflicts_total` | counter | `stack`, `layer` | Requests refused with 409: their key's first request was still in flight. |
//! | `palisade_idempotency_mismatches_total` | counter | `stack`, `layer` | Requests refused with 422: their key was used for another request (method, path, body, ...). |
//! | `palisade_idempotency_rejected_total` | counter | `stack`, `layer` | Requests refused with 400 or 413: a missing, malformed or unreplayable key, a missing tenant, a body over the limit. |
//! | `palisade_idempotency_not_stored_total` | counter | `stack`, `layer` | Responses delivered but too large to store: their keys cannot be replayed. |
//! | `palisade_idempotency_abandoned_total` | counter | `stack`, `layer` | Keyed requests abandoned (cancelled, or the handler panicked) after the handler started. |
//! | `palisade_idempotency_store_full_total` | counter | `stack`, `layer` | Requests refused with 503 because the idempotency store had no room for a new key. |
//! | `palisade_requests_total` | counter | `stack`, `signal` | Calls with a known outcome (successes and failures) through a latency recorder (registered with [`register_recorders`](Metrics::register_recorders); `signal` is the recorder's name). Calls counted apart as ignored (palisade's local refusals, cancellations) are not in it. |
//! | `palisade_request_errors_total` | counter | `stack`, `signal` | Failures among them, as the recorder's classifier judged them (default: an error, HTTP 5xx, a gRPC server-error code). |
//! | `palisade_latency_seconds` | summary | `stack`, `signal`, `quantile` | Latency from the call to the response head: the 0.5, 0.95 and 0.99 quantiles over the recorder's 1-minute window (its longest window if it has no 1-minute one), each within the sketch's relative accuracy (1 % by default); no quantile sample while the window is empty. `_count` and `_sum` are lifetime totals (`_count` equals `palisade_requests_total`; `_sum` adds latencies rounded down to microseconds). |
//! | `palisade_audit_records_total` | counter | `stack` | Audit records the sink acknowledged (only with an enabled audit log). |
//! | `palisade_audit_dropped_total` | counter | `stack` | Audit events that were not appended (queue full, writer stopped, failed batch). |
//! | `palisade_audit_failed` | gauge | `stack` | 1 once the audit writer has stopped because its sink failed, else 0. |
//! | `palisade_audit_head_sequence` | gauge | `stack` | Sequence number of the last acknowledged audit record (once there is one). |
//! | `palisade_health_live` | gauge | `stack` | 1 if liveness is available (no liveness component unhealthy), else 0. |
//! | `palisade_health_ready` | gauge | `stack` | 1 if readiness is available (no readiness component unhealthy), else 0: what `/readyz` answers by default. |
//! | `palisade_health_component_state` | gauge | `stack`, `component` | Each registered health component: 0 healthy, 1 degraded, 2 unhealthy. |
//!
//! Label values are escaped as the format requires (`\\`, `\"`, `\n`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::{ready, Ready};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use http::{Method, Request, Response, StatusCode};
use palisade_core::health::HealthState;
use tower_service::Service;

use crate::ops::OpsBody;
use crate::stack::Handles;

/// The `Content-Type` of [`Metrics::render_prometheus`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Collects the metrics of registered stacks at scrape time. Cheap to clone (clones share the
/// registrations). See the [module docs](self) for the metrics and their names.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    stacks: Arc<RwLock<Vec<Registered>>>,
    #[cfg(feature = "idempotency")]
    idempotency: Arc<RwLock<Vec<RegisteredIdempotency>>>,
    #[cfg(feature = "heal")]
    recorders: Arc<RwLock<Vec<RegisteredRecorders>>>,
}

/// A registered recorder registry: the `stack` label's value and the registry.
#[cfg(feature = "heal")]
type RegisteredRecorders = (Arc<str>, palisade_heal::signals::recorder::Recorders);

/// The quantiles `palisade_latency_seconds` reports, with their label values.
#[cfg(feature = "heal")]
const LATENCY_QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")];

/// The window `palisade_latency_seconds` reports, when the recorders have it.
#[cfg(feature = "heal")]
const LATENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A registered stack: the `stack` label's value and its handles.
type Registered = (Arc<str>, Handles);

/// A registered idempotency layer: the `stack` label's value and its handle.
#[cfg(feature = "idempotency")]
type RegisteredIdempotency = (Arc<str>, palisade_idempotency::IdempotencyHandle);

impl Metrics {
    /// A collector with no stack registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a stack's handles under `stack` (the value of the `stack` label, e.g. `"server"` or
    /// `"client"`). Registering a name again replaces its handles; stacks are reported in the order
    /// they were first registered.
    pub fn register(&self, stack: &str, handles: &Handles) -> &Self {
        let mut stacks = self.stacks.write().unwrap_or_else(PoisonError::into_inner);
        match stacks.iter_mut().find(|(name, _)| &**name == stack) {
            Some(entry) => entry.1 = handles.clone(),
            None => stacks.push((Arc::from(stack), handles.clone())),
        }
        self
    }

    /// Registers an idempotency layer's handle under `stack`. Idempotency layers are per route, built
    /// with [`ServerStack::idempotency`](crate::stack::ServerStack::idempotency) outside the stack's
    /// [`Handles`], so each is registered here (from [`Rescued::inner`](crate::stack::Rescued::inner)
    /// or [`IdempotencyLayer::handle`](palisade_idempotency::IdempotencyLayer::handle)). Its samples
    /// carry the `stack` label and a `layer` label, the layer's
    /// [name](palisade_idempotency::Builder::name). Registering the same stack and layer name again
    /// replaces the handle.
    #[cfg(feature = "idempotency")]
    pub fn register_idempotency(
        &self,
        stack: &str,
        handle: &palisade_idempotency::IdempotencyHandle,
    ) -> &Self {
        let mut layers = self
            .idempotency
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match layers
            .iter_mut()
            .find(|(name, h)| &**name == stack && h.name() == handle.name())
        {
            Some(entry) => entry.1 = handle.clone(),
            None => layers.push((Arc::from(stack), handle.clone())),
        }
        self
    }

    /// Registers the latency recorders of a stack under `stack`: each recorder's request and error
    /// totals and its latency summary (see the [table](self#the-metrics)), labelled by `signal`, the
    /// recorder's name. Recorders added to the registry later are reported too. Registering a
    /// registry again under the same name replaces it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade::heal::signals::recorder::{RecorderConfig, Recorders};
    /// use palisade::metrics::Metrics;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let recorders = Recorders::new(RecorderConfig::default());
    /// let orders = recorders.recorder("GET /orders").unwrap();
    /// for ms in 1..=100 {
    ///     orders.record_success(Duration::from_millis(ms));
    /// }
    /// orders.record_failure(Duration::from_millis(250));
    ///
    /// let metrics = Metrics::new();
    /// metrics.register_recorders("server", &recorders);
    /// let text = metrics.render_prometheus();
    /// assert!(text.contains("palisade_requests_total{stack=\"server\",signal=\"GET /orders\"} 101\n"));
    /// assert!(text.contains("palisade_request_errors_total{stack=\"server\",signal=\"GET /orders\"} 1\n"));
    /// assert!(text.contains("# TYPE palisade_latency_seconds summary\n"));
    /// let p99: f64 = text
    ///     .lines()
    ///     .find_map(|l| {
    ///         l.strip_prefix(r#"palisade_latency_seconds{stack="server",signal="GET /orders",quantile="0.99"} "#)
    ///     })
    ///     .unwrap()
    ///     .parse()
    ///     .unwrap();
    /// // The exact p99 (rank ⌊0.99 × 100⌋ of the 101 latencies) is 100 ms; the sketch is within 1 %.
    /// assert!((p99 - 0.100).abs() <= 0.01 * 0.100);
    /// assert!(text.contains("palisade_latency_seconds_count{stack=\"server\",signal=\"GET /orders\"} 101\n"));
    /// # }
    /// ```
    #[cfg(feature = "heal")]
    pub fn register_recorders(
        &self,
        stack: &str,
        recorders: &palisade_heal::signals::recorder::Recorders,
    ) -> &Self {
        let mut registered = self
            .recorders
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match registered.iter_mut().find(|(name, _)| &**name == stack) {
            Some(entry) => entry.1 = recorders.clone(),
            None => registered.push((Arc::from(stack), recorders.clone())),
        }
        self
    }

    /// Every metric of every registered stack, as Prometheus text exposition format 0.0.4 (serve it
    /// with [`CONTENT_TYPE`]): for each metric, a `# HELP` and a `# TYPE` line, then its samples.
    pub fn render_prometheus(&self) -> String {
        let samples = self.collect();
        let mut out = String::with_capacity(64 * samples.len() + 1024);
        for group in samples.chunk_by(|a, b| a.metric == b.metric) {
            let metric = group[0].metric;
            out.push_str("# HELP ");
            out.push_str(metric.name());
            out.push(' ');
            escape_help(&mut out, metric.help());
            out.push_str("\n# TYPE ");
            out.push_str(metric.name());
            out.push_str(match metric.kind() {
                Kind::Counter => " counter\n",
                Kind::Gauge => " gauge\n",
                Kind::Summary => " summary\n",
            });
            for s in group {
                out.push_str(metric.name());
                out.push_str(s.suffix);
                out.push_str("{stack=\"");
                escape_label_value(&mut out, &s.stack);
                out.push('"');
                if let Some((name, value)) = &s.label {
                    out.push(',');
                    out.push_str(name);
                    out.push_str("=\"");
                    escape_label_value(&mut out, value);
                    out.push('"');
                }
                if let Some(q) = s.quantile {
                    out.push_str(",quantile=\"");
                    out.push_str(q);
                    out.push('"');
                }
                out.push_str("} ");
                s.value.write(&mut out);
                out.push('\n');
            }
        }
        out
    }

    /// Hands every metric to the [`metrics`] facade's current recorder (the global one, or a local
    /// one set with `metrics::with_local_recorder`): counters with
    /// [`absolute`](::metrics::Counter::absolute), gauges with [`set`](::metrics::Gauge::set), each with
    /// its description. Without a recorder installed this does nothing.
    ///
    /// Call it periodically (or before the exporter renders): the layers' counters live on their
    /// handles, and this copies their current values.
    pub fn publish(&self) {
        static METADATA: ::metrics::Metadata<'static> =
            ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));
        let samples = self.collect();
        ::metrics::with_recorder(|recorder| {
            for metric in Metric::ALL {
                let name = ::metrics::KeyName::from_const_str(metric.name());
                let help = ::metrics::SharedString::const_str(metric.help());
                match metric.kind() {
                    Kind::Counter => recorder.describe_counter(name, None, help),
                    Kind::Gauge | Kind::Summary => recorder.describe_gauge(name, None, help),
                }
            }
            for s in samples {
                let mut labels = Vec::with_capacity(3);
                labels.push(::metrics::Label::new("stack", s.stack.to_string()));
                if let Some((name, value)) = s.label {
                    labels.push(::metrics::Label::new(name, value));
                }
                if let Some(q) = s.quantile {
                    labels.push(::metrics::Label::new("quantile", q));
                }
                let key = if s.suffix.is_empty() {
                    ::metrics::Key::from_parts(s.metric.name(), labels)
                } else {
                    ::metrics::Key::from_parts(format!("{}{}", s.metric.name(), s.suffix), labels)
                };
                match (s.metric.kind(), s.value) {
                    (Kind::Counter, Value::Int(v)) => {
                        recorder.register_counter(&key, &METADATA).absolute(v);
                    }
                    (Kind::Counter, Value::Float(v)) => {
                        // Not produced: every counter is an integer. Keep the value rather than lose it.
                        recorder
                            .register_counter(&key, &METADATA)
                            .absolute(v as u64);
                    }
                    // The facade has no summary: its quantiles, `_sum` and `_count` are gauges.
                    (Kind::Gauge | Kind::Summary, v) => {
                        recorder.register_gauge(&key, &METADATA).set(v.as_f64())
                    }
                }
            }
        });
    }

    /// Reads every registered stack's handles now; samples sorted by metric (table order), then in
    /// stack registration order.
    fn collect(&self) -> Vec<Sample> {
        let stacks = self.stacks.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(64 * stacks.len());
        for (name, handles) in stacks.iter() {
            let mut c = Collector {
                stack: name,
                out: &mut out,
            };
            c.handles(handles);
        }
        drop(stacks);
        #[cfg(feature = "idempotency")]
        {
            let layers = self
                .idempotency
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, handle) in layers.iter() {
                let mut c = Collector {
                    stack: name,
                    out: &mut out,
                };
                c.idempotency(handle);
            }
        }
        #[cfg(feature = "heal")]
        {
            let registries = self
                .recorders
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, recorders) in registries.iter() {
                let mut c = Collector {
                    stack: name,
                    out: &mut out,
                };
                c.recorders(recorders);
            }
        }
        out.sort_by_key(|s| s.metric);
        out
    }
}

/// One sample: a metric (and a suffix of its name: a summary's `_sum` and `_count`), its labels
/// (`stack`, at most one more, and a summary's `quantile`) and its value.
#[derive(Debug)]
struct Sample {
    metric: Metric,
    suffix: &'static str,
    stack: Arc<str>,
    label: Option<(&'static str, String)>,
    quantile: Option<&'static str>,
    value: Value,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
        }
    }

    fn write(self, out: &mut String) {
        match self {
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Float(v) if v.is_nan() => out.push_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => out.push_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => out.push_str("-Inf"),
            Value::Float(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

struct Collector<'a> {
    stack: &'a Arc<str>,
    out: &'a mut Vec<Sample>,
}

impl Collector<'_> {
    fn push(&mut self, metric: Metric, value: impl Into<Value>) {
        self.out.push(Sample {
            metric,
            suffix: "",
            stack: self.stack.clone(),
            label: None,
            quantile: None,
            value: value.into(),
        });
    }

    fn push_labeled(
        &mut self,
        metric: Metric,
        label: &'static str,
        label_value: impl Into<String>,
        value: impl Into<Value>,
    ) {
        self.out.push(Sample {
            metric,
            suffix: "",
            stack: self.stack.clone(),
            label: Some((label, label_value.into())),
            quantile: None,
            value: value.into(),
        });
    }

    #[cfg(feature = "heal")]
    fn recorders(&mut self, recorders: &palisade_heal::signals::recorder::Recorders) {
        use Metric as M;
        for r in recorders.list() {
            let totals = r.totals();
            let signal = r.name();
            self.push_labeled(M::Requests, "signal", signal, totals.requests);
            self.push_labeled(M::RequestErrors, "signal", signal, totals.errors);
            let window = if r.windows().contains(&LATENCY_WINDOW) {
                LATENCY_WINDOW
            } else {
                r.windows().last().copied().unwrap_or(LATENCY_WINDOW)
            };
            if let Some(w) = r.snapshot(window) {
                for (q, label) in LATENCY_QUANTILES {
                    if let Some(v) = w.quantile(q) {
                        self.out.push(Sample {
                            metric: M::LatencySeconds,
                            suffix: "",
                            stack: self.stack.clone(),
                            label: Some(("signal", signal.to_owned())),
                            quantile: Some(label),
                            value: v.as_secs_f64().into(),
                        });
                    }
                }
            }
            for (suffix, value) in [
                ("_sum", Value::Float(totals.latency_sum.as_secs_f64())),
                ("_count", Value::Int(totals.requests)),
            ] {
                self.out.push(Sample {
                    metric: M::LatencySeconds,
                    suffix,
                    stack: self.stack.clone(),
                    label: Some(("signal", signal.to_owned())),
                    quantile: None,
                    value,
                });
            }
        }
    }

    #[cfg(feature = "idempotency")]
    fn idempotency(&mut self, h: &palisade_idempotency::IdempotencyHandle) {
        use Metric as M;
        let c = h.counts();
        let layer = h.name();
        for (metric, value) in [
            (M::IdempotencyExecuted, c.executed),
            (M::IdempotencyReplayed, c.replayed),
            (M::IdempotencyConflicts, c.conflicts),
            (M::IdempotencyMismatches, c.mismatches),
            (M::IdempotencyRejected, c.rejected),
            (M::IdempotencyNotStored, c.not_stored),
            (M::IdempotencyAbandoned, c.abandoned),
            (M::IdempotencyStoreFull, c.store_full),
        ] {
            self.push_labeled(metric, "layer", layer, value);
        }
    }

    fn handles(&mut self, h: &Handles) {
        use Metric as M;

        #[cfg(feature = "ratelimit")]
        if let Some(rl) = h.rate_limit() {
            for tier in rl.metrics() {
                if &*tier.name != "global" {
                    self.push_labeled(M::RateLimitAdmitted, "tier", &*tier.name, tier.admitted);
                }
                self.push_labeled(M::RateLimitRejected, "tier", &*tier.name, tier.rejected);
                let period = tier.rate.period().as_secs_f64();
                if period > 0.0 {
                    let per_second = f64::from(tier.rate.limit()) / period;
                    self.push_labeled(M::RateLimitRatePerSecond, "tier", &*tier.name, per_second);
                }
                self.push_labeled(
                    M::RateLimitBurst,
                    "tier",
                    &*tier.name,
                    tier.rate.burst_size(),
                );
            }
            self.push(M::RateLimitTrackedTenants, rl.tracked_tenants());
            self.push(M::RateLimitOverflowed, rl.overflowed());
            if let Some(load) = rl.load_signal() {
                self.push(M::RateLimitLoad, load.get());
            }
        }

        #[cfg(feature = "degrade")]
        if let Some(gate) = h.gate() {
            self.push(M::GateLevel, gate.level() as u8 as u64);
            self.push(M::GateShed, gate.shed_total());
            self.push(M::GateReadOnlyRefused, gate.read_only_total());
            self.push(M::GateLoad, gate.load_signal().get());
        }

        #[cfg(feature = "bulkhead")]
        if let Some(b) = h.bulkhead() {
            self.push(M::BulkheadInFlight, b.in_flight());
            self.push(M::BulkheadQueued, b.queued());
            self.push(M::BulkheadMaxConcurrent, b.max_concurrent());
            self.push(M::BulkheadRejected, b.rejected());
            self.push(M::BulkheadSaturated, b.is_saturated());
            self.push(M::BulkheadTenants, b.tenant_keys());
            self.push(M::BulkheadOverflowed, b.overflowed());
        }

        #[cfg(feature = "adaptive")]
        if let Some(a) = h.adaptive() {
            self.push(M::AdaptiveLimit, a.limit());
            self.push(M::AdaptiveInFlight, a.in_flight());
            self.push(M::AdaptiveRejected, a.rejected());
            self.push(M::AdaptiveDrops, a.drops());
            self.push(M::AdaptiveLimiting, a.is_limiting());
        }

        if let Some(t) = h.timeout() {
            self.push(M::TimeoutSeconds, t.as_secs_f64());
        }
        if let Some(t) = h.per_try_timeout() {
            self.push(M::TimeoutPerTrySeconds, t.as_secs_f64());
        }

        #[cfg(feature = "fallback")]
        if let Some(f) = h.fallback() {
            let c = f.counts();
            self.push(M::FallbackTriggered, c.triggered);
            self.push(M::FallbackServed, c.served);
            self.push(M::FallbackUnavailable, c.unavailable);
            self.push(M::FallbackBodyTooLarge, c.body_too_large);
            self.push(M::FallbackAlternateFailed, c.alternate_failed);
            if f.kind() == "stale" {
                self.push(M::FallbackStaleEntries, f.stale_entries());
                self.push(M::FallbackStaleBytes, f.stale_bytes());
            }
        }

        #[cfg(feature = "breaker")]
        if let Some(b) = h.breaker() {
            use palisade_breaker::{CircuitState, Mode};
            let state: u64 = match b.state() {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            let mode: u64 = match b.mode() {
                Mode::Normal => 0,
                Mode::ForcedOpen => 1,
                Mode::Disabled => 2,
                Mode::MetricsOnly => 3,
            };
            let c = b.counts();
            self.push(M::BreakerState, state);
            self.push(M::BreakerMode, mode);
            self.push(M::BreakerRejected, c.rejected);
            self.push(M::BreakerWindowCalls, c.window_calls);
            self.push(M::BreakerWindowFailures, c.window_failures);
            self.push(M::BreakerWindowSlow, c.window_slow);
            self.push(M::BreakerConsecutiveFailures, c.consecutive_failures);
            self.push(M::BreakerConsecutiveTrips, c.trips);
            self.push(M::BreakerProbesInFlight, c.probes_in_flight);
        }

        #[cfg(feature = "chaos")]
        if let Some(chaos) = h.chaos() {
            self.push(M::ChaosActiveFaults, chaos.active().len());
        }

        #[cfg(feature = "retry")]
        if let Some(r) = h.retry() {
            self.push(M::RetryRequests, r.requests());
            self.push(M::RetryRetries, r.retries());
            self.push(M::RetryBudgetRefused, r.budget_refused());
            self.push(M::RetryGaveUp, r.gave_up());
            self.push(M::RetryBodyTooLarge, r.body_too_large());
            self.push(M::RetryBudgetExhausted, r.budget_exhausted());
        }

        #[cfg(feature = "hedge")]
        if let Some(hg) = h.hedge() {
            self.push(M::HedgeRequests, hg.requests());
            self.push(M::HedgeHedges, hg.hedges());
            self.push(M::HedgeWins, hg.hedge_wins());
            self.push(M::HedgeCancelled, hg.cancelled());
            self.push(M::HedgeBudgetRefused, hg.budget_refused());
            self.push(M::HedgeSuppressed, hg.suppressed());
            self.push(M::HedgeBudgetExhausted, hg.budget_exhausted());
        }

        let audit = h.audit();
        if audit.is_enabled() {
            self.push(M::AuditRecords, audit.appended_total());
            self.push(M::AuditDropped, audit.dropped_total());
            self.push(M::AuditFailed, audit.failed());
            if let Some(head) = audit.head() {
                self.push(M::AuditHeadSequence, head.seq);
            }
        }

        let health = h.health();
        self.push(M::HealthLive, health.liveness().is_available());
        self.push(M::HealthReady, health.readiness().is_available());
        for component in health.report().components() {
            let state: u64 = match component.state() {
                HealthState::Healthy => 0,
                HealthState::Degraded => 1,
                HealthState::Unhealthy => 2,
            };
            self.push_labeled(
                M::HealthComponentState,
                "component",
                component.name(),
                state,
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Summary,
}

macro_rules! metrics_table {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// Every metric, in the order of the table in the module docs (and of the rendered output).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Metric {
            $($variant,)*
        }

        impl Metric {
            const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            const fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            const fn kind(self) -> Kind {
                match self {
                    $(Metric::$variant => Kind::$kind,)*
                }
            }

            const fn help(self) -> &'static str {
                match self {
                    $(Metric::$variant => $help,)*
                }
            }
        }
    };
}

metrics_table! {
    RateLimitAdmitted => "palisade_rate_limit_admitted_total", Counter,
        "Requests a rate-limit tier admitted.";
    RateLimitRejected => "palisade_rate_limit_rejected_total", Counter,
        "Requests a rate-limit tier (or the global limit, tier=\"global\") refused.";
    RateLimitRatePerSecond => "palisade_rate_limit_rate_per_second", Gauge,
        "The tier's current sustained rate, in requests per second.";
    RateLimitBurst => "palisade_rate_limit_burst", Gauge,
        "The tier's current burst size, in requests.";
    RateLimitTrackedTenants => "palisade_rate_limit_tracked_tenants", Gauge,
        "Tenants with a rate-limit bucket of their own.";
    RateLimitOverflowed => "palisade_rate_limit_overflowed_total", Counter,
        "Requests of new tenants that used the overflow bucket because the key store was full.";
    RateLimitLoad => "palisade_rate_limit_load", Gauge,
        "The rate limit's adaptive load signal (0 to 1).";
    GateLevel => "palisade_gate_level", Gauge,
        "Degradation level: 0 normal, 1 degraded, 2 critical, 3 read_only, 4 maintenance.";
    GateShed => "palisade_gate_shed_total", Counter,
        "Requests the degradation gate shed.";
    GateReadOnlyRefused => "palisade_gate_read_only_refused_total", Counter,
        "Writes the degradation gate refused in read-only mode.";
    GateLoad => "palisade_gate_load", Gauge,
        "The load signal the degradation gate publishes (0 to 1).";
    BulkheadInFlight => "palisade_bulkhead_in_flight", Gauge,
        "Requests holding a bulkhead slot.";
    BulkheadQueued => "palisade_bulkhead_queued", Gauge,
        "Requests waiting in the bulkhead queue.";
    BulkheadMaxConcurrent => "palisade_bulkhead_max_concurrent", Gauge,
        "The bulkhead's concurrency limit.";
    BulkheadRejected => "palisade_bulkhead_rejected_total", Counter,
        "Requests the bulkhead refused.";
    BulkheadSaturated => "palisade_bulkhead_saturated", Gauge,
        "1 while the bulkhead is saturated, else 0.";
    BulkheadTenants => "palisade_bulkhead_tenants", Gauge,
        "Tenant keys the bulkhead tracks.";
    BulkheadOverflowed => "palisade_bulkhead_overflowed_total", Counter,
        "Requests of new tenant keys sent to the bulkhead's overflow tenant.";
    AdaptiveLimit => "palisade_adaptive_limit", Gauge,
        "The adaptive concurrency limit.";
    AdaptiveInFlight => "palisade_adaptive_in_flight", Gauge,
        "Requests holding an adaptive-limit slot.";
    AdaptiveRejected => "palisade_adaptive_rejected_total", Counter,
        "Requests the adaptive limit refused.";
    AdaptiveDrops => "palisade_adaptive_drops_total", Counter,
        "Timeouts and failures the adaptive limit backed off on.";
    AdaptiveLimiting => "palisade_adaptive_limiting", Gauge,
        "1 while the adaptive limit refuses requests, else 0.";
    TimeoutSeconds => "palisade_timeout_seconds", Gauge,
        "The configured request (or total) timeout, in seconds.";
    TimeoutPerTrySeconds => "palisade_timeout_per_try_seconds", Gauge,
        "The configured per-attempt timeout, in seconds.";
    FallbackTriggered => "palisade_fallback_triggered_total", Counter,
        "Outcomes that fired the fallback's trigger.";
    FallbackServed => "palisade_fallback_served_total", Counter,
        "Fallback responses served.";
    FallbackUnavailable => "palisade_fallback_unavailable_total", Counter,
        "Triggered fallbacks that could not be served.";
    FallbackBodyTooLarge => "palisade_fallback_body_too_large_total", Counter,
        "Requests over the alternate fallback's body buffer limit.";
    FallbackAlternateFailed => "palisade_fallback_alternate_failed_total", Counter,
        "Calls to the alternate fallback service that failed.";
    FallbackStaleEntries => "palisade_fallback_stale_entries", Gauge,
        "Responses in the stale-if-error store.";
    FallbackStaleBytes => "palisade_fallback_stale_bytes", Gauge,
        "Bytes accounted in the stale-if-error store.";
    BreakerState => "palisade_breaker_state", Gauge,
        "Circuit state: 0 closed, 1 half-open, 2 open.";
    BreakerMode => "palisade_breaker_mode", Gauge,
        "Breaker mode: 0 normal, 1 forced open, 2 disabled, 3 metrics only.";
    BreakerRejected => "palisade_breaker_rejected_total", Counter,
        "Calls the circuit breaker refused.";
    BreakerWindowCalls => "palisade_breaker_window_calls", Gauge,
        "Calls in the breaker's window.";
    BreakerWindowFailures => "palisade_breaker_window_failures", Gauge,
        "Failures in the breaker's window.";
    BreakerWindowSlow => "palisade_breaker_window_slow", Gauge,
        "Slow calls in the breaker's window.";
    BreakerConsecutiveFailures => "palisade_breaker_consecutive_failures", Gauge,
        "Failures in a row.";
    BreakerConsecutiveTrips => "palisade_breaker_consecutive_trips", Gauge,
        "Trips without a successful close.";
    BreakerProbesInFlight => "palisade_breaker_probes_in_flight", Gauge,
        "Half-open probes in flight.";
    ChaosActiveFaults => "palisade_chaos_active_faults", Gauge,
        "Injected faults active.";
    RetryRequests => "palisade_retry_requests_total", Counter,
        "Requests the retry layer received.";
    RetryRetries => "palisade_retry_retries_total", Counter,
        "Retries sent.";
    RetryBudgetRefused => "palisade_retry_budget_refused_total", Counter,
        "Retries refused because the retry budget was spent.";
    RetryGaveUp => "palisade_retry_gave_up_total", Counter,
        "Requests that failed on their last allowed attempt.";
    RetryBodyTooLarge => "palisade_retry_body_too_large_total", Counter,
        "Retryable requests sent once because their body was too large to buffer.";
    RetryBudgetExhausted => "palisade_retry_budget_exhausted", Gauge,
        "1 if the retry budget refused the latest retry, else 0.";
    HedgeRequests => "palisade_hedge_requests_total", Counter,
        "Requests the hedge layer received.";
    HedgeHedges => "palisade_hedge_hedges_total", Counter,
        "Hedges sent.";
    HedgeWins => "palisade_hedge_wins_total", Counter,
        "Requests answered by a hedge.";
    HedgeCancelled => "palisade_hedge_cancelled_total", Counter,
        "Attempts dropped because another attempt answered first.";
    HedgeBudgetRefused => "palisade_hedge_budget_refused_total", Counter,
        "Hedges refused because the hedge budget was spent.";
    HedgeSuppressed => "palisade_hedge_suppressed_total", Counter,
        "Hedges not sent because the may-hedge signal (the breaker) said no.";
    HedgeBudgetExhausted => "palisade_hedge_budget_exhausted", Gauge,
        "1 if the hedge budget refused the latest hedge, else 0.";
    IdempotencyExecuted => "palisade_idempotency_executed_total", Counter,
        "Keyed requests that claimed their idempotency key and ran the handler.";
    IdempotencyReplayed => "palisade_idempotency_replayed_total", Counter,
        "Responses replayed from the idempotency store.";
    IdempotencyConflicts => "palisade_idempotency_conflicts_total", Counter,
        "Requests refused with 409: their key's first request was in flight.";
    IdempotencyMismatches => "palisade_idempotency_mismatches_total", Counter,
        "Requests refused with 422: their key was used for another request.";
    IdempotencyRejected => "palisade_idempotency_rejected_total", Counter,
        "Requests refused with 400 or 413 by the idempotency layer.";
    IdempotencyNotStored => "palisade_idempotency_not_stored_total", Counter,
        "Responses too large to store: their keys cannot be replayed.";
    IdempotencyAbandoned => "palisade_idempotency_abandoned_total", Counter,
        "Keyed requests abandoned after the handler started.";
    IdempotencyStoreFull => "palisade_idempotency_store_full_total", Counter,
        "Requests refused with 503: the idempotency store had no room for a new key.";
    Requests => "palisade_requests_total", Counter,
        "Calls with a known outcome through a latency recorder.";
    RequestErrors => "palisade_request_errors_total", Counter,
        "Failures among the calls through a latency recorder.";
    LatencySeconds => "palisade_latency_seconds", Summary,
        "Latency to the response head: quantiles over the recorder's 1-minute window; lifetime sum and count.";
    AuditRecords => "palisade_audit_records_total", Counter,
        "Audit records the sink acknowledged.";
    AuditDropped => "palisade_audit_dropped_total", Counter,
        "Audit events that were not appended.";
    AuditFailed => "palisade_audit_failed", Gauge,
        "1 once the audit writer has stopped because its sink failed, else 0.";
    AuditHeadSequence => "palisade_audit_head_sequence", Gauge,
        "Sequence number of the last acknowledged audit record.";
    HealthLive => "palisade_health_live", Gauge,
        "1 if liveness is available, else 0.";
    HealthReady => "palisade_health_ready", Gauge,
        "1 if readiness is available, else 0.";
    HealthComponentState => "palisade_health_component_state", Gauge,
        "Health component state: 0 healthy, 1 degraded, 2 unhealthy.";
}

/// `# HELP` text: backslash and newline escaped.
fn escape_help(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `GET /metrics`: [`Metrics::render_prometheus`] with [`CONTENT_TYPE`]. `HEAD` answers the headers
/// without the body; other methods get `405`. Never fails; mount it with axum's `route_service`.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    metrics: Metrics,
}

impl MetricsEndpoint {
    /// Serves `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        MetricsEndpoint { metrics }
    }

    /// The response for a request with `method`.
    pub fn respond(&self, method: &Method) -> Response<OpsBody> {
        let (status, body, content_type) = match *method {
            Method::GET => (
                StatusCode::OK,
                self.metrics.render_prometheus(),
                CONTENT_TYPE,
            ),
            Method::HEAD => (StatusCode::OK, String::new(), CONTENT_TYPE),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed; use GET or HEAD\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut res = Response::new(OpsBody::new(body));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        res
    }
}

impl<B> Service<Request<B>> for MetricsEndpoint {
    type Response = Response<OpsBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<OpsBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use palisade_core::audit::Audit;
    use palisade_core::health::{ComponentKind, Health};
    use tower::ServiceExt;

    use crate::stack::ServerStack;

    /// The value of the sample line `series` (name and labels, exactly as rendered).
    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    /// Checks the text is well-formed exposition format: every family once, `# HELP` then `# TYPE`
    /// then samples of that family only, every name documented.
    fn check_format(text: &str) {
        let mut seen = BTreeSet::new();
        let mut current: Option<Metric> = None;
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                let metric = *Metric::ALL
                    .iter()
                    .find(|m| m.name() == name)
                    .unwrap_or_else(|| panic!("undocumented metric {name}"));
                assert!(seen.insert(name.to_owned()), "{name} rendered twice");
                let ty = lines.next().expect("a TYPE line after HELP");
                let kind = match metric.kind() {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Summary => "summary",
                };
                assert_eq!(ty, format!("# TYPE {name} {kind}"));
                current = Some(metric);
            } else {
                let metric = current.expect("a sample after HELP and TYPE");
                let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
                let suffixes: &[&str] = match metric.kind() {
                    Kind::Summary => &["", "_sum", "_count"],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|suffix| series
                        .starts_with(&format!("{}{suffix}{{stack=\"", metric.name()))),
                    "{line} under {}",
                    metric.name()
                );
                assert!(series.ends_with('}'), "{line}");
                assert!(
                    value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                    "{line}"
                );
            }
        }
    }

    async fn get(
        svc: impl Service<
            Request<Full<Bytes>>,
            Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
            Error = Infallible,
        >,
        method: Method,
        tenant: &str,
    ) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header("x-tenant-id", tenant)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    }

    fn ok_service() -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = palisade_core::BoxError,
        Future = impl Send,
    > + Clone
           + Send {
        tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, palisade_core::BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }

    #[test]
    fn every_metric_is_in_the_documented_table() {
        let source = include_str!("metrics.rs");
        let mut names = BTreeSet::new();
        for m in Metric::ALL {
            assert!(names.insert(m.name()), "{} twice", m.name());
            assert!(m.name().starts_with("palisade_"));
            let kind = match m.kind() {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Summary => "summary",
            };
            assert_eq!(
                m.name().ends_with("_total"),
                m.kind() == Kind::Counter,
                "{}: counters and only counters end in _total",
                m.name()
            );
            let row = format!("//! | `{}` | {kind} | `stack`", m.name());
            assert!(source.contains(&row), "no doc row for {}", m.name());
            assert!(!m.help().contains('\n'));
        }
        let documented = source
            .lines()
            .filter(|l| l.starts_with("//! | `palisade_"))
            .count();
        assert_eq!(documented, Metric::ALL.len(), "a doc row without a metric");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
        let mut out = String::new();
        escape_help(&mut out, "x \"y\" \\ \n");
        assert_eq!(out, r#"x "y" \\ \n"#);

        let health = Health::new();
        let _c = health.register("db \"primary\"", ComponentKind::Readiness);
        let stack = ServerStack::builder().health(&health).build().unwrap();
        let metrics = Metrics::new();
        metrics.register("we\"ird\\name\nx", stack.handles());
        let text = metrics.render_prometheus();
        check_format(&text);
        assert_eq!(
            value(&text, r#"palisade_health_ready{stack="we\"ird\\name\nx"}"#),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                r#"palisade_health_component_state{stack="we\"ird\\name\nx",component="db \"primary\""}"#
            ),
            Some("0")
        );
    }

    #[test]
    fn floats_render_in_exposition_syntax() {
        let render = |v: f64| {
            let mut s = String::new();
            Value::Float(v).write(&mut s);
            s
        };
        assert_eq!(render(0.5), "0.5");
        assert_eq!(render(2.0), "2");
        assert_eq!(render(f64::NAN), "NaN");
        assert_eq!(render(f64::INFINITY), "+Inf");
        assert_eq!(render(f64::NEG_INFINITY), "-Inf");
    }

    #[cfg(feature = "heal")]
    #[tokio::test(start_paused = true)]
    async fn recorders_report_totals_and_a_latency_summary() {
        use palisade_core::classify::Outcome;
        use palisade_heal::signals::recorder::{RecorderConfig, Recorders};
        use std::time::Duration;

        let recorders = Recorders::new(RecorderConfig::default());
        let orders = recorders.recorder("GET /orders").unwrap();
        for ms in 1..=100u64 {
            orders.record_success(Duration::from_millis(ms));
        }
        orders.record_failure(Duration::from_millis(500));
        orders.record(Duration::from_millis(1), Outcome::Ignored);
        let idle = recorders.recorder("idle \"route\"").unwrap();
        let metrics = Metrics::new();
        metrics.register_recorders("server", &recorders);
        // Registering again replaces: one series each.
        metrics.register_recorders("server", &recorders);
        let text = metrics.render_prometheus();
        check_format(&text);
        let series = |name: &str, labels: &str| {
            let s = format!("{name}{{stack=\"server\",signal=\"GET /orders\"{labels}}}");
            value(&text, &s)
                .unwrap_or_else(|| panic!("{s}\n{text}"))
                .to_owned()
        };
        assert_eq!(series("palisade_requests_total", ""), "101");
        assert_eq!(series("palisade_request_errors_total", ""), "1");
        assert_eq!(series("palisade_latency_seconds_count", ""), "101");
        let sum: f64 = series("palisade_latency_seconds_sum", "").parse().unwrap();
        assert!((sum - 5.55).abs() < 1e-9, "{sum}");
        // Ranks ⌊q × 100⌋ of 1..=100 ms and 500 ms, within 1 %.
        for (q, want) in [("0.5", 0.051), ("0.95", 0.096), ("0.99", 0.100)] {
            let got: f64 = series("palisade_latency_seconds", &format!(",quantile=\"{q}\""))
                .parse()
                .unwrap();
            assert!((got - want).abs() <= 0.01 * want, "p{q}: {got} vs {want}");
        }
        assert_eq!(text.matches("palisade_requests_total{").count(), 2);
        assert_eq!(
            text.matches("# TYPE palisade_latency_seconds summary")
                .count(),
            1
        );
        // An idle signal has totals but no quantile samples; its name is escaped.
        assert_eq!(
            value(
                &text,
                r#"palisade_requests_total{stack="server",signal="idle \"route\""}"#
            ),
            Some("0")
        );
        assert!(!text.contains(r#"signal="idle \"route\"",quantile"#));
        drop(idle);

        // Past the minute, the quantiles are gone; the totals stay.
        tokio::time::advance(Duration::from_secs(61)).await;
        let text = metrics.render_prometheus();
        assert!(!text.contains("quantile="), "{text}");
        assert!(
            text.contains("palisade_requests_total{stack=\"server\",signal=\"GET /orders\"} 101\n")
        );
    }

    #[tokio::test]
    async fn stacks_are_labelled_and_registering_again_replaces() {
        let (server_health, client_health) = (Health::new(), Health::new());
        let down = client_health.register("upstream", ComponentKind::Readiness);
        down.unhealthy("refused");
        let server = ServerStack::builder()
            .health(&server_health)
            .build()
            .unwrap();
        let client = ServerStack::builder()
            .health(&client_health)
            .build()
            .unwrap();
        let metrics = Metrics::new();
        metrics
            .register("server", server.handles())
            .register("client", client.handles());
        let text = metrics.render_prometheus();
        check_format(&text);
        assert_eq!(
            value(&text, r#"palisade_health_ready{stack="server"}"#),
            Some("1")
        );
        assert_eq!(
            value(&text, r#"palisade_health_ready{stack="client"}"#),
            Some("0")
        );
        // One family, stacks in registration order.
        let server_at = text
            .find(r#"palisade_health_ready{stack="server"}"#)
            .unwrap();
        let client_at = text
            .find(r#"palisade_health_ready{stack="client"}"#)
            .unwrap();
        assert!(server_at < client_at);
        assert_eq!(
            text.matches("# TYPE palisade_health_ready gauge").count(),
            1
        );
        // No audit was given: a disabled audit log reports nothing.
        assert!(!text.contains("palisade_audit_"));

        // "client" now names the healthy stack.
        metrics.register("client", server.handles());
        let text = metrics.render_prometheus();
        assert_eq!(
            value(&text, r#"palisade_health_ready{stack="client"}"#),
            Some("1")
        );
        assert_eq!(text.matches("palisade_health_ready{").count(), 2);
    }

    #[cfg(feature = "idempotency")]
    #[tokio::test]
    async fn idempotency_counters_are_exported_per_layer() {
        use palisade_idempotency::{IdempotencyLayer, MemoryStore};
        use tower_layer::Layer;

        let store = MemoryStore::builder().max_records(1).build();
        let layer = IdempotencyLayer::builder()
            .name("orders")
            .store(store)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(
            |req: Request<palisade_idempotency::RequestBody<Full<Bytes>>>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, palisade_core::BoxError>(Response::new(Full::new(body)))
            },
        ));
        let post = |key: &str, body: &'static str| {
            Request::post("/orders")
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        };
        svc.clone().oneshot(post("k1", "a")).await.unwrap();
        svc.clone().oneshot(post("k1", "a")).await.unwrap();
        svc.clone().oneshot(post("k1", "b")).await.unwrap_err();
        let metrics = Metrics::new();
        metrics.register_idempotency("server", &layer.handle());
        // Registering the same layer again replaces it: one series each.
        metrics.register_idempotency("server", &layer.handle());
        let text = metrics.render_prometheus();
        check_format(&text);
        let v = |name: &str| {
            let series =
                format!("palisade_idempotency_{name}_total{{stack=\"server\",layer=\"orders\"}}");
            value(&text, &series)
                .unwrap_or_else(|| panic!("{series}\n{text}"))
                .to_owned()
        };
        assert_eq!(v("executed"), "1");
        assert_eq!(v("replayed"), "1");
        assert_eq!(v("mismatches"), "1");
        assert_eq!(v("conflicts"), "0");
        assert_eq!(v("rejected"), "0");
        assert_eq!(v("not_stored"), "0");
        assert_eq!(v("abandoned"), "0");
        assert_eq!(v("store_full"), "0");
        assert_eq!(
            text.matches("palisade_idempotency_executed_total{").count(),
            1
        );
    }

    #[cfg(feature = "ratelimit")]
    mod ratelimit {
        use super::*;
        use http::HeaderValue;
        use palisade_core::key::HeaderKey;
        use palisade_ratelimit::{Rate, RateLimitLayer};
        use tower_layer::Layer;

        /// A stack whose rate limit refused 3 of globex's 5 requests and admitted acme's 1.
        pub(super) async fn driven() -> (Metrics, Audit) {
            let health = Health::new();
            let (audit, _log) = Audit::memory(1024);
            let stack = ServerStack::builder()
                .health(&health)
                .audit(&audit)
                .rate_limit(
                    RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
                        .default_rate(Rate::per_second(1).burst(2))
                        .tier("gold", Rate::per_second(10).burst(10))
                        .tenant(HeaderValue::from_static("acme"), "gold"),
                )
                .build()
                .unwrap();
            let metrics = Metrics::new();
            metrics.register("server", stack.handles());
            let svc = stack.layer(ok_service());
            let mut statuses = Vec::new();
            for _ in 0..5 {
                statuses.push(get(svc.clone(), Method::GET, "globex").await.0);
            }
            assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2);
            assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
            assert_eq!(get(svc, Method::GET, "acme").await.0, 200);
            audit.flush().await.unwrap();
            (metrics, audit)
        }

        #[tokio::test(start_paused = true)]
        async fn rate_limit_counters_rates_and_audit() {
            let (metrics, audit) = driven().await;
            let text = metrics.render_prometheus();
            check_format(&text);
            let v =
                |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
            assert_eq!(
                v(r#"palisade_rate_limit_rejected_total{stack="server",tier="default"}"#),
                "3"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_admitted_total{stack="server",tier="default"}"#),
                "2"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_admitted_total{stack="server",tier="gold"}"#),
                "1"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_rejected_total{stack="server",tier="gold"}"#),
                "0"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_burst{stack="server",tier="default"}"#),
                "2"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_rate_per_second{stack="server",tier="gold"}"#),
                "10"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_tracked_tenants{stack="server"}"#),
                "2"
            );
            assert_eq!(
                v(r#"palisade_rate_limit_overflowed_total{stack="server"}"#),
                "0"
            );
            assert!(text.contains("# TYPE palisade_rate_limit_rejected_total counter\n"));
            // The violation streak was audited; the metric is the audit log's own count.
            let appended = audit.appended_total();
            assert!(appended > 0);
            assert_eq!(
                v(r#"palisade_audit_records_total{stack="server"}"#),
                appended.to_string()
            );
            assert_eq!(v(r#"palisade_audit_dropped_total{stack="server"}"#), "0");
            assert_eq!(
                v(r#"palisade_audit_head_sequence{stack="server"}"#),
                audit.head().unwrap().seq.to_string()
            );
            // No gate, no breaker: nothing made up for them.
            assert!(!text.contains("palisade_gate_"));
            assert!(!text.contains("palisade_breaker_"));
        }

        /// A recorder that keeps the last operation on every series.
        #[derive(Default)]
        struct Capture {
            ops: Mutex<BTreeMap<String, (&'static str, f64)>>,
            described: Mutex<BTreeSet<String>>,
        }

        struct Cell {
            series: String,
            capture: Arc<Capture>,
        }

        impl Cell {
            fn put(&self, op: &'static str, v: f64) {
                self.capture
                    .ops
                    .lock()
                    .unwrap()
                    .insert(self.series.clone(), (op, v));
            }
        }

        impl ::metrics::CounterFn for Cell {
            fn increment(&self, v: u64) {
                self.put("increment", v as f64);
            }
            fn absolute(&self, v: u64) {
                self.put("absolute", v as f64);
            }
        }

        impl ::metrics::GaugeFn for Cell {
            fn increment(&self, v: f64) {
                self.put("gauge_increment", v);
            }
            fn decrement(&self, v: f64) {
                self.put("gauge_decrement", v);
            }
            fn set(&self, v: f64) {
                self.put("set", v);
            }
        }

        struct TestRecorder(Arc<Capture>);

        impl TestRecorder {
            fn cell(&self, key: &::metrics::Key) -> Arc<Cell> {
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                Arc::new(Cell {
                    series: format!("{}{{{}}}", key.name(), labels.join(",")),
                    capture: self.0.clone(),
                })
            }
        }

        impl ::metrics::Recorder for TestRecorder {
            fn describe_counter(
                &self,
                key: ::metrics::KeyName,
                _: Option<::metrics::Unit>,
                _: ::metrics::SharedString,
            ) {
                self.0
                    .described
                    .lock()
                    .unwrap()
                    .insert(key.as_str().to_owned());
            }
            fn describe_gauge(
                &self,
                key: ::metrics::KeyName,
                _: Option<::metrics::Unit>,
                _: ::metrics::SharedString,
            ) {
                self.0
                    .described
                    .lock()
                    .unwrap()
                    .insert(key.as_str().to_owned());
            }
            fn describe_histogram(
                &self,
                _: ::metrics::KeyName,
                _: Option<::metrics::Unit>,
                _: ::metrics::SharedString,
            ) {
            }
            fn register_counter(
                &self,
                key: &::metrics::Key,
                _: &::metrics::Metadata<'_>,
            ) -> ::metrics::Counter {
                ::metrics::Counter::from_arc(self.cell(key))
            }
            fn register_gauge(
                &self,
                key: &::metrics::Key,
                _: &::metrics::Metadata<'_>,
            ) -> ::metrics::Gauge {
                ::metrics::Gauge::from_arc(self.cell(key))
            }
            fn register_histogram(
                &self,
                _: &::metrics::Key,
                _: &::metrics::Metadata<'_>,
            ) -> ::metrics::Histogram {
                ::metrics::Histogram::noop()
            }
        }

        #[tokio::test(start_paused = true)]
        async fn publish_pushes_absolute_counters_and_gauges() {
            let (metrics, audit) = driven().await;
            let capture = Arc::new(Capture::default());
            let recorder = TestRecorder(capture.clone());
            ::metrics::with_local_recorder(&recorder, || metrics.publish());

            let ops = capture.ops.lock().unwrap();
            let op = |series: &str| {
                *ops.get(series)
                    .unwrap_or_else(|| panic!("{series}: {ops:?}"))
            };
            assert_eq!(
                op("palisade_rate_limit_rejected_total{stack=server,tier=default}"),
                ("absolute", 3.0)
            );
            assert_eq!(
                op("palisade_rate_limit_admitted_total{stack=server,tier=gold}"),
                ("absolute", 1.0)
            );
            assert_eq!(
                op("palisade_rate_limit_burst{stack=server,tier=default}"),
                ("set", 2.0)
            );
            assert_eq!(op("palisade_health_ready{stack=server}"), ("set", 1.0));
            assert_eq!(
                op("palisade_audit_records_total{stack=server}"),
                ("absolute", audit.appended_total() as f64)
            );
            // The same series as the text rendering, one for one.
            let rendered = metrics
                .render_prometheus()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count();
            assert_eq!(ops.len(), rendered);
            let described = capture.described.lock().unwrap();
            for m in Metric::ALL {
                assert!(described.contains(m.name()), "{} not described", m.name());
            }
            drop((ops, described));

            // Without a recorder, publishing is a no-op (and does not panic).
            metrics.publish();
        }
    }

    #[cfg(all(
        feature = "degrade",
        feature = "bulkhead",
        feature = "timeout",
        feature = "fallback",
        feature = "breaker",
        feature = "chaos"
    ))]
    #[tokio::test(start_paused = true)]
    async fn every_server_layer_reports() {
        use palisade_breaker::{CircuitBreakerLayer, CircuitState};
        use palisade_bulkhead::BulkheadLayer;
        use palisade_chaos::{ChaosLayer, Fault};
        use palisade_degrade::{GateLayer, Level};
        use palisade_fallback::{FallbackLayer, StaticResponse};
        use palisade_timeout::TimeoutLayer;
        use std::time::Duration;
        use tower_layer::Layer;

        let health = Health::new();
        let (audit, _log) = Audit::memory(1024);
        let stack = ServerStack::builder()
            .health(&health)
            .audit(&audit)
            .gate(GateLayer::builder().name("api"))
            .bulkhead(BulkheadLayer::builder().name("api").max_concurrent(4))
            .timeout(TimeoutLayer::builder().timeout(Duration::from_millis(1500)))
            .fallback(
                FallbackLayer::builder()
                    .static_response(StaticResponse::new(StatusCode::OK).body("fallback")),
            )
            .breaker(
                CircuitBreakerLayer::builder()
                    .name("app")
                    .consecutive_failures(2)
                    .open_wait(Duration::from_secs(60), Duration::from_secs(60)),
            )
            .chaos(ChaosLayer::builder().name("app").seed(1))
            .build()
            .unwrap();
        let h = stack.handles().clone();
        let metrics = Metrics::new();
        metrics.register("server", &h);
        let svc = stack.layer(ok_service());

        let gate = h.gate().unwrap();
        gate.set_level(Level::ReadOnly, "test");
        assert_eq!(get(svc.clone(), Method::POST, "t").await.0, 503);
        assert_eq!(get(svc.clone(), Method::GET, "t").await.0, 200);
        gate.set_level(Level::Normal, "test");

        h.chaos()
            .unwrap()
            .inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(get(svc.clone(), Method::GET, "t").await.0, 503);
        assert_eq!(get(svc.clone(), Method::GET, "t").await.0, 503);
        assert_eq!(h.breaker().unwrap().state(), CircuitState::Open);
        assert_eq!(
            get(svc.clone(), Method::GET, "t").await,
            (StatusCode::OK, Bytes::from_static(b"fallback"))
        );

        let text = metrics.render_prometheus();
        check_format(&text);
        let v = |series: &str| {
            value(&text, series)
                .unwrap_or_else(|| panic!("{series}\n{text}"))
                .to_owned()
        };
        let s = |name: &str| format!("{name}{{stack=\"server\"}}");
        assert_eq!(v(&s("palisade_gate_level")), "0");
        assert_eq!(v(&s("palisade_gate_read_only_refused_total")), "1");
        assert_eq!(v(&s("palisade_gate_shed_total")), "0");
        assert_eq!(v(&s("palisade_gate_load")), "0");
        assert_eq!(v(&s("palisade_bulkhead_in_flight")), "0");
        assert_eq!(v(&s("palisade_bulkhead_max_concurrent")), "4");
        assert_eq!(v(&s("palisade_bulkhead_rejected_total")), "0");
        assert_eq!(v(&s("palisade_bulkhead_saturated")), "0");
        assert_eq!(v(&s("palisade_timeout_seconds")), "1.5");
        assert_eq!(v(&s("palisade_fallback_served_total")), "1");
        assert_eq!(v(&s("palisade_fallback_triggered_total")), "1");
        assert_eq!(v(&s("palisade_breaker_state")), "2");
        assert_eq!(v(&s("palisade_breaker_mode")), "0");
        assert_eq!(v(&s("palisade_breaker_rejected_total")), "1");
        assert_eq!(v(&s("palisade_breaker_consecutive_trips")), "1");
        assert_eq!(v(&s("palisade_chaos_active_faults")), "1");
        assert_eq!(
            v(r#"palisade_health_component_state{stack="server",component="breaker.app"}"#),
            "1"
        );
        // An open breaker degrades readiness; degraded still serves.
        assert_eq!(v(&s("palisade_health_ready")), "1");
        assert!(!text.contains("palisade_fallback_stale_"));
        assert!(!text.contains("palisade_timeout_per_try_seconds"));

        gate.set_level(Level::Maintenance, "test");
        h.breaker().unwrap().force_open();
        h.chaos().unwrap().clear();
        let text = metrics.render_prometheus();
        assert_eq!(value(&text, &s("palisade_gate_level")), Some("4"));
        assert_eq!(value(&text, &s("palisade_health_ready")), Some("0"));
        assert_eq!(value(&text, &s("palisade_breaker_mode")), Some("1"));
        assert_eq!(value(&text, &s("palisade_chaos_active_faults")), Some("0"));
    }

    #[tokio::test]
    async fn endpoint_serves_get_and_head_and_refuses_the_rest() {
        let health = Health::new();
        let stack = ServerStack::builder().health(&health).build().unwrap();
        let metrics = Metrics::new();
        metrics.register("server", stack.handles());
        let endpoint = MetricsEndpoint::new(metrics.clone());
        let call = |method: Method| {
            let endpoint = endpoint.clone();
            async move {
                let req = Request::builder()
                    .method(method)
                    .uri("/metrics")
                    .body(())
                    .unwrap();
                let res = endpoint.oneshot(req).await.unwrap();
                let (parts, body) = res.into_parts();
                (parts, body.collect().await.unwrap().to_bytes())
            }
        };

        let (parts, body) = call(Method::GET).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers[CONTENT_TYPE_HEADER], CONTENT_TYPE);
        assert_eq!(body, metrics.render_prometheus());
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains("palisade_health_ready{stack=\"server\"} 1\n"));

        let (parts, body) = call(Method::HEAD).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers[CONTENT_TYPE_HEADER], CONTENT_TYPE);
        assert!(body.is_empty());

        for method in [Method::POST, Method::DELETE] {
            let (parts, _) = call(method).await;
            assert_eq!(parts.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(parts.headers[ALLOW], "GET, HEAD");
        }
    }
}
