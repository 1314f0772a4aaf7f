//! The builder: every knob of a breaker, validated once in `build()`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::classify::Grpc;
use palisade_core::health::{ComponentKind, Health};
use palisade_core::rng::SharedRng;

use crate::machine::{Limits, TripCell};
use crate::shared::{Circuit, Common, Keyed};
use crate::{CircuitBreakerLayer, KeyedCircuitBreakerLayer};

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "circuit breaker";

/// The largest count window, [`Builder::window_calls`]: one byte per call, per circuit.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

/// The longest time window, [`Builder::window_time`], in seconds (one hour): 24 bytes per second, per
/// circuit.
pub const MAX_WINDOW_SECS: u32 = 3600;

/// The most keys a keyed breaker may track, [`Builder::max_keys`].
pub const MAX_KEYS: usize = 1_000_000;

/// The most memory a keyed breaker's windows may take at `max_keys` keys (1 GiB): `max_keys` × the
/// windows of one circuit.
pub const MAX_KEYED_WINDOW_BYTES: u64 = 1 << 30;

/// Bytes of one time-window bucket.
const BUCKET_BYTES: u64 = 24;

/// The windows a breaker judges rates over: the last N calls, the last N seconds (either or both).
pub(crate) type Windows = (Option<u32>, Option<u32>);

/// When a closed circuit trips: the thresholds set by the [`Builder`] and changeable while the breaker
/// runs with [`BreakerHandle::set_thresholds`](crate::BreakerHandle::set_thresholds).
///
/// The strategies combine: the circuit opens when any one that is on is reached. At least one must be
/// on.
///
/// ```
/// use palisade_breaker::{CircuitBreakerLayer, Thresholds};
///
/// let breaker = CircuitBreakerLayer::builder().build().expect("valid config");
/// let handle = breaker.handle();
/// // A config reload: trip on 5 failures in a row as well, and only at a 60 % failure rate.
/// handle
///     .set_thresholds(Thresholds {
///         consecutive_failures: 5,
///         failure_rate: Some(0.6),
///         ..handle.thresholds()
///     })
///     .expect("valid thresholds");
/// assert_eq!(handle.thresholds().failure_rate, Some(0.6));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Trip after this many failures in a row (0 = off); as
    /// [`Builder::consecutive_failures`].
    pub consecutive_failures: u32,
    /// Trip when the failure rate in a window reaches this, in (0, 1] (`None` = off); as
    /// [`Builder::failure_rate`] / [`Builder::no_failure_rate`].
    pub failure_rate: Option<f64>,
    /// Count calls taking at least the duration (above zero) as slow, and trip when the slow-call rate
    /// in a window reaches the rate, in (0, 1] (`None` = off); as [`Builder::slow_call_rate`]. A
    /// threshold beyond `u64::MAX` nanoseconds (584 years) is kept as that.
    pub slow_call_rate: Option<(Duration, f64)>,
    /// Judge the rates only once a window holds at least this many calls; as
    /// [`Builder::minimum_calls`]. When a rate is on: at least 1, and no more than the count window
    /// if that is the only window (or the rate could never be judged).
    pub minimum_calls: u32,
}

impl Thresholds {
    /// Checks these thresholds for a breaker with `windows`: the rules of [`Builder::build`] and of
    /// [`set_thresholds`](crate::BreakerHandle::set_thresholds), kept in this one place.
    pub(crate) fn validate(&self, windows: Windows) -> Result<(), BuildError> {
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if let Some(r) = self.failure_rate {
            if !rate_ok(r) {
                return Err(BuildError::new(
                    LAYER,
                    "failure_rate",
                    format!("{r} is not in (0, 1]"),
                ));
            }
        }
        if let Some((threshold, r)) = self.slow_call_rate {
            if !rate_ok(r) {
                return Err(BuildError::new(
                    LAYER,
                    "slow_call_rate",
                    format!("rate {r} is not in (0, 1]"),
                ));
            }
            if threshold.is_zero() {
                return Err(BuildError::new(
                    LAYER,
                    "slow_call_rate",
                    "the slow-call threshold must be above zero",
                ));
            }
        }
        let rate_on = self.failure_rate.is_some() || self.slow_call_rate.is_some();
        if self.consecutive_failures == 0 && !rate_on {
            return Err(BuildError::new(
                LAYER,
                "consecutive_failures",
                "no trip strategy: set consecutive_failures, failure_rate or slow_call_rate",
            ));
        }
        if rate_on {
            if self.minimum_calls == 0 {
                return Err(BuildError::new(
                    LAYER,
                    "minimum_calls",
                    "must be at least 1 when a failure or slow-call rate is on",
                ));
            }
            match windows {
                (None, None) => {
                    return Err(BuildError::new(
                        LAYER,
                        if self.failure_rate.is_some() {
                            "failure_rate"
                        } else {
                            "slow_call_rate"
                        },
                        "this breaker has no window to judge a rate over: build it with a rate, \
                         window_calls or window_time to turn rates on at run time",
                    ))
                }
                (Some(calls), None) if self.minimum_calls > calls => {
                    return Err(BuildError::new(
                        LAYER,
                        "minimum_calls",
                        format!(
                            "{} is more than the window of {calls} calls: the rate would never be judged",
                            self.minimum_calls
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Builds a [`CircuitBreakerLayer`] (or, with [`keyed`](Builder::keyed), a keyed one).
///
/// Defaults: trip at a 50 % failure rate over the last 100 calls once at least 20 calls were seen; wait
/// 2 s before probing, doubling with each consecutive trip up to 60 s, plus up to 10 % jitter; 1 probe,
/// which closes the circuit when it succeeds; leave HalfOpen after 30 s if the probes never finish;
/// classify with [`Grpc`] (HTTP 5xx, gRPC server-error codes in headers or trailers, every `Err`).
#[derive(Debug, Clone)]
pub struct Builder<C = Grpc> {
    name: Cow<'static, str>,
    classifier: C,
    consecutive_failures: u32,
    failure_rate: Option<f64>,
    slow: Option<(Duration, f64)>,
    window_calls: Option<u32>,
    window_time: Option<Duration>,
    minimum_calls: u32,
    probes: u32,
    successes_to_close: Option<u32>,
    wait_base: Duration,
    wait_max: Duration,
    jitter: f64,
    half_open_max_wait: Duration,
    health: Option<Health>,
    audit: Audit,
    seed: Option<u64>,
    max_keys: usize,
    idle_timeout: Duration,
}

impl Default for Builder<Grpc> {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            classifier: Grpc::new(),
            consecutive_failures: 0,
            failure_rate: Some(0.5),
            slow: None,
            window_calls: None,
            window_time: None,
            minimum_calls: 20,
            probes: 1,
            successes_to_close: None,
            wait_base: Duration::from_secs(2),
            wait_max: Duration::from_secs(60),
            jitter: 0.1,
            half_open_max_wait: Duration::from_secs(30),
            health: None,
            audit: Audit::disabled(),
            seed: None,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl Builder<Grpc> {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C> Builder<C> {
    /// Names the breaker: the health component is `breaker.<name>` and audit records carry it.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Classifies outcomes with `classifier` (see `palisade_core::classify`).
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            classifier,
            consecutive_failures: self.consecutive_failures,
            failure_rate: self.failure_rate,
            slow: self.slow,
            window_calls: self.window_calls,
            window_time: self.window_time,
            minimum_calls: self.minimum_calls,
            probes: self.probes,
            successes_to_close: self.successes_to_close,
            wait_base: self.wait_base,
            wait_max: self.wait_max,
            jitter: self.jitter,
            half_open_max_wait: self.half_open_max_wait,
            health: self.health,
            audit: self.audit,
            seed: self.seed,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
        }
    }

    /// Trips after `n` consecutive failures (0 turns this strategy off). Combines with the rates.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Trips when the failure rate in a window reaches `rate` (0.0–1.0].
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Judges no failure rate (use with [`consecutive_failures`](Self::consecutive_failures) or the
    /// slow-call rate alone).
    pub fn no_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Counts calls taking at least `threshold` as slow, and trips when the slow-call rate in a window
    /// reaches `rate`. Measuring latency costs two clock reads per call.
    pub fn slow_call_rate(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow = Some((threshold, rate));
        self
    }

    /// Judges the rates over the last `n` calls (count-based sliding window): 1 to
    /// [`MAX_WINDOW_CALLS`] (10,000), one byte per call per circuit; `build()` refuses others.
    pub fn window_calls(mut self, n: u32) -> Self {
        self.window_calls = Some(n);
        self
    }

    /// Judges the rates over the last `window` (time-based sliding window of one-second buckets): a
    /// whole number of seconds from 1 s to 1 h ([`MAX_WINDOW_SECS`]); `build()` refuses others, such as
    /// 1.5 s, rather than round them. Costs a clock read per call.
    pub fn window_time(mut self, window: Duration) -> Self {
        self.window_time = Some(window);
        self
    }

    /// Rates are judged only once a window holds at least `n` calls. With a rate on, `build()`
    /// refuses 0, and more than [`window_calls`](Self::window_calls) when there is no time window.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// How many probe calls HalfOpen lets through at once.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.probes = n;
        self
    }

    /// How many successful probes close the circuit (default: [`half_open_probes`](Self::half_open_probes)).
    pub fn successes_to_close(mut self, n: u32) -> Self {
        self.successes_to_close = Some(n);
        self
    }

    /// The wait in Open before the first probe: `base`, doubling with each consecutive trip, up to `max`.
    /// `base` above zero and `max` at least `base`. The end of the wait is kept to the millisecond,
    /// rounded up (a wait of 100 µs lasts 1 ms); waits beyond 557 years are kept as that.
    pub fn open_wait(mut self, base: Duration, max: Duration) -> Self {
        self.wait_base = base;
        self.wait_max = max;
        self
    }

    /// Adds up to `fraction` × the wait at random (0.0–1.0; default 0.1), so many breakers that opened
    /// together do not all probe at once.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// How long HalfOpen waits for its probes before giving up and opening again.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = wait;
        self
    }

    /// Reports to `health`: a readiness component `breaker.<name>`, degraded while open.
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// Records every transition, with the numbers that caused it, in `audit`.
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Seeds the jitter (for reproducible tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Keyed mode: the most keys tracked at once (default 10,000): 1 to [`MAX_KEYS`] (1,000,000),
    /// and with the windows of one circuit × `max_keys` at most [`MAX_KEYED_WINDOW_BYTES`] (1 GiB; a
    /// count window takes a byte per call, a time window 24 bytes per second). See
    /// [`keyed`](Self::keyed).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Keyed mode: a key's breaker is forgotten after this long unused, if it is closed (default 10 min).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The trip thresholds as set.
    fn trip(&self) -> Thresholds {
        Thresholds {
            consecutive_failures: self.consecutive_failures,
            failure_rate: self.failure_rate,
            slow_call_rate: self.slow,
            minimum_calls: self.minimum_calls,
        }
    }

    fn limits(&self) -> Result<Limits, BuildError> {
        if let Some(n) = self.window_calls {
            if n == 0 || n > MAX_WINDOW_CALLS {
                return Err(BuildError::new(
                    LAYER,
                    "window_calls",
                    format!("{n} is not between 1 and {MAX_WINDOW_CALLS} calls"),
                ));
            }
        }
        if let Some(w) = self.window_time {
            if w < Duration::from_secs(1) || w > Duration::from_secs(u64::from(MAX_WINDOW_SECS)) {
                return Err(BuildError::new(
                    LAYER,
                    "window_time",
                    format!("{w:?} is not between 1 s and 1 h"),
                ));
            }
            if w.subsec_nanos() != 0 {
                return Err(BuildError::new(
                    LAYER,
                    "window_time",
                    format!("{w:?} is not a whole number of seconds (the buckets are 1 s)"),
                ));
            }
        }
        if self.probes == 0 || self.probes > 1000 {
            return Err(BuildError::new(
                LAYER,
                "half_open_probes",
                "must be between 1 and 1000",
            ));
        }
        let successes = self.successes_to_close.unwrap_or(self.probes);
        if successes == 0 || successes > 60_000 {
            return Err(BuildError::new(
                LAYER,
                "successes_to_close",
                "must be between 1 and 60000",
            ));
        }
        if self.wait_base.is_zero() || self.wait_max < self.wait_base {
            return Err(BuildError::new(
                LAYER,
                "open_wait",
                "base must be above zero and max at least base",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(BuildError::new(
                LAYER,
                "jitter",
                format!("{} is not in [0, 1]", self.jitter),
            ));
        }
        if self.half_open_max_wait.is_zero() {
            return Err(BuildError::new(
                LAYER,
                "half_open_max_wait",
                "must be above zero",
            ));
        }
        let trip = self.trip();
        trip.validate(self.windows())?;
        Ok(Limits {
            trip: TripCell::new(trip),
            probes: self.probes,
            successes_to_close: successes,
            wait_base: nanos(self.wait_base),
            wait_max: nanos(self.wait_max),
            half_open_max_wait: nanos(self.half_open_max_wait),
        })
    }

    /// The windows the rates are judged over: the ones set, or the last 100 calls if a rate needs one.
    fn windows(&self) -> Windows {
        let needs = self.failure_rate.is_some() || self.slow.is_some();
        let time = self.window_time.map(|w| w.as_secs() as u32);
        let calls = match (self.window_calls, time) {
            (Some(n), _) => Some(n),
            (None, None) if needs => Some(100),
            _ => None,
        };
        (calls, time)
    }

    fn common(self, keyed: bool) -> Result<Arc<Common<C>>, BuildError> {
        let limits = self.limits()?;
        let windows = self.windows();
        if keyed {
            if self.max_keys == 0 || self.max_keys > MAX_KEYS {
                return Err(BuildError::new(
                    LAYER,
                    "max_keys",
                    format!("{} is not between 1 and {MAX_KEYS}", self.max_keys),
                ));
            }
            let (calls, secs) = windows;
            let per_circuit =
                u64::from(calls.unwrap_or(0)) + u64::from(secs.unwrap_or(0)) * BUCKET_BYTES;
            let total = per_circuit.saturating_mul(self.max_keys as u64);
            if total > MAX_KEYED_WINDOW_BYTES {
                return Err(BuildError::new(
                    LAYER,
                    "max_keys",
                    format!(
                        "{} keys with windows of {per_circuit} bytes each would take {total} bytes, \
                         over the {MAX_KEYED_WINDOW_BYTES}-byte bound: lower max_keys or the windows",
                        self.max_keys
                    ),
                ));
            }
        }
        let component = self
            .health
            .as_ref()
            .map(|h| h.register(format!("breaker.{}", self.name), ComponentKind::Readiness));
        Ok(Arc::new(Common::new(
            self.name,
            self.classifier,
            limits,
            windows,
            self.jitter,
            component,
            self.audit,
            self.seed
                .map_or_else(SharedRng::from_entropy, SharedRng::seeded),
            self.max_keys,
            self.idle_timeout,
        )))
    }

    /// Builds the layer. Its state is shared by every service it wraps (every route, every clone).
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, BuildError> {
        let common = self.common(false)?;
        Ok(CircuitBreakerLayer::from_circuit(Arc::new(Circuit::new(
            common, None,
        ))))
    }

    /// Builds a keyed layer: one breaker per key from `extractor` (per downstream host, per tenant), so
    /// one key's failures open only its own circuit.
    ///
    /// Memory is bounded: at most [`max_keys`](Self::max_keys) breakers; closed breakers unused for
    /// [`idle_timeout`](Self::idle_timeout) are evicted when room is needed. When every slot holds a
    /// breaker that is open or recently used, new keys share one **overflow** breaker (documented,
    /// counted in [`KeyedBreakerHandle::overflowed`](crate::KeyedBreakerHandle::overflowed)). Requests
    /// whose key cannot be extracted use a shared **default** breaker.
    ///
    /// `extractor` is a [`KeyExtractor`](palisade_core::key::KeyExtractor) for the requests the layer
    /// will see.
    pub fn keyed<K>(self, extractor: K) -> Result<KeyedCircuitBreakerLayer<C, K>, BuildError> {
        let common = self.common(true)?;
        Ok(KeyedCircuitBreakerLayer::from_keyed(Arc::new(Keyed::new(
            common, extractor,
        ))))
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
