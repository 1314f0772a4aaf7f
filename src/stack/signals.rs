//! The layer signals of a stack, as gauges for the control plane ([`palisade_heal`]).
//!
//! [`Handles::signals`] turns the handles of a stack into a [`Gauges`] registry: each gauge reads a
//! handle (an atomic load or a short snapshot) when the control plane ticks, so nothing is added to
//! the request path. See [`Handles::signals`] for the names.
#![cfg(feature = "heal")]

use palisade_heal::signals::gauge::{Gauge, GaugeError, Gauges};

use super::Handles;

/// `true` as 1.0, `false` as 0.0.
#[cfg(any(feature = "bulkhead", feature = "retry"))]
fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

impl Handles {
    /// The stack's layer signals as gauges named `<layer>.<stack>.<signal>`, where `<stack>` is the
    /// name you give (as the `stack` label of `palisade::metrics` is): add them to
    /// the control plane next to your own gauges (or use [`Handles::add_signals`]).
    ///
    /// A gauge exists when the stack has its layer (and the crate the layer's feature):
    ///
    /// | name | kind | value |
    /// |---|---|---|
    /// | `breaker.<stack>.state` | level | 0 closed, 0.5 half-open, 1 open (a forced-open breaker is open) |
    /// | `breaker.<stack>.trips` | level | consecutive trips without a successful close (0 once a probe closes it) |
    /// | `breaker.<stack>.rejected` | level | calls refused so far (a counter; `BreakerHandle::reset` zeroes it) |
    /// | `breaker.<stack>.rejected_per_second` | rate | calls refused per second |
    /// | `bulkhead.<stack>.in_flight` | level | requests holding a slot now |
    /// | `bulkhead.<stack>.queued` | level | requests waiting in the queue now |
    /// | `bulkhead.<stack>.saturated` | level | 1 while saturated (its health component degraded), else 0 |
    /// | `bulkhead.<stack>.utilization` | level | in flight ÷ the concurrency limit, 0–1 (0 with a limit of 0) |
    /// | `bulkhead.<stack>.rejected` | level | requests refused so far (a counter) |
    /// | `bulkhead.<stack>.rejected_per_second` | rate | requests refused per second |
    /// | `ratelimit.<stack>.rejected` | level | requests refused so far, every tier and the global limit (a counter) |
    /// | `ratelimit.<stack>.rejected_per_second` | rate | requests refused per second |
    /// | `ratelimit.<stack>.load` | level | the adaptive mode's load signal, 0–1 (only with adaptive mode) |
    /// | `gate.<stack>.level` | level | the degradation level: 0 normal, 1 degraded, 2 critical, 3 read-only, 4 maintenance |
    /// | `gate.<stack>.load` | level | the load signal the gate publishes for its level, 0–1 |
    /// | `gate.<stack>.shed_per_second` | rate | requests the gate shed per second |
    /// | `retry.<stack>.budget_exhausted` | level | 1 if the budget refused the latest retry it was asked for, else 0 |
    /// | `retry.<stack>.budget_refused` | level | retryable failures not retried because the budget was spent (a counter) |
    /// | `retry.<stack>.budget_refused_per_second` | rate | the same, per second |
    /// | `retry.<stack>.retries_per_second` | rate | retries sent per second |
    ///
    /// A *rate* gauge yields its first sample at the second tick (see
    /// [`Gauge::rate`](palisade_heal::signals::gauge::Gauge::rate)).
    ///
    /// ```
    /// use palisade::breaker::CircuitBreakerLayer;
    /// use palisade::stack::ServerStack;
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let stack = ServerStack::builder()
    ///     .breaker(CircuitBreakerLayer::builder().name("app"))
    ///     .build()
    ///     .unwrap();
    /// let gauges = stack.handles().signals("server").unwrap();
    /// let state = gauges.read("breaker.server.state", Instant::now()).unwrap();
    /// assert_eq!(state.value, 0.0); // closed
    ///
    /// stack.handles().breaker().unwrap().force_open();
    /// assert_eq!(gauges.read("breaker.server.state", Instant::now()).unwrap().value, 1.0);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`GaugeError::InvalidName`] if `stack` makes an invalid gauge name (empty, whitespace or
    /// control characters, or a name over [`Gauges::MAX_NAME_LEN`] bytes).
    pub fn signals(&self, stack: &str) -> Result<Gauges, GaugeError> {
        let mut gauges = Gauges::new();
        if stack.is_empty() {
            // `breaker..state` would be a valid name; an empty stack name is a mistake.
            return Err(GaugeError::InvalidName {
                name: String::new(),
                reason: "the stack name must not be empty",
            });
        }
        #[allow(unused_variables, unused_mut)]
        let mut add = |gauge: Gauge| gauges.add(gauge);

        #[cfg(feature = "breaker")]
        if let Some(breaker) = &self.breaker {
            use palisade_breaker::CircuitState;
            let b = breaker.clone();
            add(Gauge::new(
                format!("breaker.{stack}.state"),
                move || match b.state() {
                    CircuitState::Closed => 0.0,
                    CircuitState::HalfOpen => 0.5,
                    CircuitState::Open => 1.0,
                },
            ))?;
            let b = breaker.clone();
            add(Gauge::new(format!("breaker.{stack}.trips"), move || {
                f64::from(b.counts().trips)
            }))?;
            let b = breaker.clone();
            add(Gauge::new(format!("breaker.{stack}.rejected"), move || {
                b.counts().rejected as f64
            }))?;
            let b = breaker.clone();
            add(Gauge::rate(
                format!("breaker.{stack}.rejected_per_second"),
                move || b.counts().rejected as f64,
            ))?;
        }

        #[cfg(feature = "bulkhead")]
        if let Some(bulkhead) = &self.bulkhead {
            let b = bulkhead.clone();
            add(Gauge::new(
                format!("bulkhead.{stack}.in_flight"),
                move || b.in_flight() as f64,
            ))?;
            let b = bulkhead.clone();
            add(Gauge::new(format!("bulkhead.{stack}.queued"), move || {
                b.queued() as f64
            }))?;
            let b = bulkhead.clone();
            add(Gauge::new(
                format!("bulkhead.{stack}.saturated"),
                move || flag(b.is_saturated()),
            ))?;
            let b = bulkhead.clone();
            add(Gauge::new(
                format!("bulkhead.{stack}.utilization"),
                move || match b.max_concurrent() {
                    0 => 0.0,
                    max => (b.in_flight() as f64 / max as f64).min(1.0),
                },
            ))?;
            let b = bulkhead.clone();
            add(Gauge::new(
                format!("bulkhead.{stack}.rejected"),
                move || b.rejected() as f64,
            ))?;
            let b = bulkhead.clone();
            add(Gauge::rate(
                format!("bulkhead.{stack}.rejected_per_second"),
                move || b.rejected() as f64,
            ))?;
        }

        #[cfg(feature = "ratelimit")]
        if let Some(rate_limit) = &self.rate_limit {
            let rejected = |r: &palisade_ratelimit::RateLimitHandle| {
                r.metrics()
                    .iter()
                    .map(|tier| tier.rejected)
                    .fold(0u64, u64::saturating_add) as f64
            };
            let r = rate_limit.clone();
            add(Gauge::new(
                format!("ratelimit.{stack}.rejected"),
                move || rejected(&r),
            ))?;
            let r = rate_limit.clone();
            add(Gauge::rate(
                format!("ratelimit.{stack}.rejected_per_second"),
                move || rejected(&r),
            ))?;
            if let Some(load) = rate_limit.load_signal() {
                add(Gauge::new(format!("ratelimit.{stack}.load"), move || {
                    load.get()
                }))?;
            }
        }

        #[cfg(feature = "degrade")]
        if let Some(gate) = &self.gate {
            let g = gate.clone();
            add(Gauge::new(format!("gate.{stack}.level"), move || {
                f64::from(g.level() as u8)
            }))?;
            let load = gate.load_signal();
            add(Gauge::new(format!("gate.{stack}.load"), move || load.get()))?;
            let g = gate.clone();
            add(Gauge::rate(
                format!("gate.{stack}.shed_per_second"),
                move || g.shed_total() as f64,
            ))?;
        }

        #[cfg(feature = "retry")]
        if let Some(retry) = &self.retry {
            let r = retry.clone();
            add(Gauge::new(
                format!("retry.{stack}.budget_exhausted"),
                move || flag(r.budget_exhausted()),
            ))?;
            let r = retry.clone();
            add(Gauge::new(
                format!("retry.{stack}.budget_refused"),
                move || r.budget_refused() as f64,
            ))?;
            let r = retry.clone();
            add(Gauge::rate(
                format!("retry.{stack}.budget_refused_per_second"),
                move || r.budget_refused() as f64,
            ))?;
            let r = retry.clone();
            add(Gauge::rate(
                format!("retry.{stack}.retries_per_second"),
                move || r.retries() as f64,
            ))?;
        }

        Ok(gauges)
    }

    /// Adds [`signals(stack)`](Self::signals) to `gauges`: all of them, or none.
    ///
    /// # Errors
    ///
    /// As [`signals`](Self::signals), and as [`Gauges::extend`]: a name `gauges` already has
    /// (the same stack name twice) or too little room.
    pub fn add_signals(&self, stack: &str, gauges: &mut Gauges) -> Result<(), GaugeError> {
        gauges.extend(self.signals(stack)?)
    }
}

/// `/palisade/status`: every recorder's windows — `{ "<signal>": { "10s": { "count", "errors",
/// "error_rate", "p50_ms", "p95_ms", "p99_ms" }, …, "requests_total", "errors_total" } }` (quantiles
/// `null` while a window is empty).
impl crate::ops::StatusSource for palisade_heal::signals::Recorders {
    fn status(&self) -> serde_json::Value {
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let mut out = serde_json::Map::new();
        for recorder in self.list() {
            let mut entry = serde_json::Map::new();
            for snap in recorder.snapshots() {
                entry.insert(
                    window_label(snap.window),
                    serde_json::json!({
                        "count": snap.count,
                        "errors": snap.errors,
                        "error_rate": snap.error_rate,
                        "p50_ms": ms(snap.p50),
                        "p95_ms": ms(snap.p95),
                        "p99_ms": ms(snap.p99),
                    }),
                );
            }
            let totals = recorder.totals();
            entry.insert("requests_total".into(), totals.requests.into());
            entry.insert("errors_total".into(), totals.errors.into());
            out.insert(recorder.name().to_owned(), serde_json::Value::Object(entry));
        }
        serde_json::Value::Object(out)
    }
}

/// `10s`, `1m`, `5m`, `1h`, `250ms`: a window's label in the status JSON.
fn window_label(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod status_tests {
    use std::time::Duration;

    use palisade_core::classify::{Failure, Outcome};
    use palisade_heal::signals::{RecorderConfig, Recorders};

    use crate::ops::StatusSource;

    #[tokio::test(start_paused = true)]
    async fn recorders_show_their_windows_in_the_status() {
        let recorders = Recorders::new(RecorderConfig::default());
        let api = recorders.recorder("GET /hello").unwrap();
        for ms in 1..=100 {
            api.record(Duration::from_millis(ms), Outcome::Success);
        }
        api.record(Duration::from_millis(5), Outcome::Failure(Failure::Error));
        recorders.recorder("idle").unwrap();
        let status = recorders.status();
        let hello = &status["GET /hello"];
        assert_eq!(hello["10s"]["count"], 101);
        assert_eq!(hello["1m"]["errors"], 1);
        let p99 = hello["5m"]["p99_ms"].as_f64().unwrap();
        assert!((p99 - 100.0).abs() <= 1.0, "{p99}");
        assert_eq!(hello["requests_total"], 101);
        assert!(status["idle"]["10s"]["p50_ms"].is_null());
        assert_eq!(super::window_label(Duration::from_millis(250)), "250ms");
        assert_eq!(super::window_label(Duration::from_secs(3600)), "1h");
    }
}
