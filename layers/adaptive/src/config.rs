//! The builder: every knob of an adaptive limiter, validated once in `build()`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::classify::ErrorsOnly;
use palisade_core::health::{ComponentKind, Health};
use palisade_core::key::MalformedKey;
use palisade_core::keymap::KeyMap;
use palisade_core::rng::Rng;

use crate::algorithm::{Algorithm, Estimator};
use crate::service::{AdaptiveLayer, Inner, Unkeyed};
use crate::shared::{MissingKey, Shared, SharedConfig, Tenants, WindowConfig};

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "adaptive concurrency";

/// The largest `max_limit` of any algorithm: 2²⁰ = 1,048,576 requests in flight.
pub const MAX_LIMIT: usize = 1 << 20;

/// The longest sample window ([`window`](Builder::window)'s `max`): one minute.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The most samples a window may require ([`window`](Builder::window)'s `samples`): 1,000,000.
pub const MAX_WINDOW_SAMPLES: u64 = 1_000_000;

/// The largest [`min_rtt_threshold`](Builder::min_rtt_threshold): one second.
pub const MAX_RTT_THRESHOLD: Duration = Duration::from_secs(1);

/// The most [`partition`](Builder::partition)s: 64.
pub const MAX_PARTITIONS: usize = 64;

/// The longest [`retry_after`](Builder::retry_after) hint and [`audit_interval`](Builder::audit_interval):
/// one hour.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// A partition: a guaranteed share of the limit for the tenants it names.
///
/// Its name is also its first member: a request whose tenant key's label (its `Debug` form without
/// quotes, as the handle shows it) is the name, or one of the [`member`](Self::member)s, belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    name: Box<str>,
    share: f64,
    members: Vec<Box<str>>,
}

impl Partition {
    /// A partition `name` guaranteed `share` of the limit (in `(0, 1]`; the shares of all partitions
    /// add up to at most 1).
    pub fn new(name: impl Into<Box<str>>, share: f64) -> Self {
        let name = name.into();
        Partition {
            members: vec![name.clone()],
            name,
            share,
        }
    }

    /// Another tenant label that belongs to this partition.
    pub fn member(mut self, label: impl Into<Box<str>>) -> Self {
        self.members.push(label.into());
        self
    }
}

/// Builds an [`AdaptiveLayer`].
///
/// Defaults: [`Gradient2`](crate::Gradient2) with Netflix's parameters (limit 20 to 200, starting at
/// 20); windows of 1 s and at least 10 samples (Netflix's `WindowedLimit`), RTTs under 100 µs ignored;
/// over-limit requests refused with `Overloaded` and a 1 s `Retry-After` hint; errors (by the
/// classifier, [`ErrorsOnly`]) and timeouts are drops; cancelled calls are ignored; limit changes
/// audited at most once per 10 s.
///
/// Partitioned ([`keyed`](Self::keyed) + [`partition`](Self::partition)): each partition is guaranteed
/// `⌊limit × share⌋` slots; the rest of the limit is a pool anyone may use. Tenants are tracked in a
/// bounded map (10,000 keys, idle ones forgotten after 10 minutes); new keys over the cap share an
/// overflow tenant (in their partition if their label names one).
#[derive(Debug, Clone)]
pub struct Builder<K = Unkeyed, C = ErrorsOnly> {
    name: Cow<'static, str>,
    algorithm: Algorithm,
    min_window: Duration,
    max_window: Duration,
    window_samples: u64,
    min_rtt_threshold: Duration,
    retry_after: Duration,
    cancelled_as_drop: bool,
    partitions: Vec<Partition>,
    default_partition: Option<Box<str>>,
    missing_key: MissingKey,
    malformed_key: MalformedKey,
    max_keys: usize,
    idle_timeout: Duration,
    health: Option<Health>,
    audit: Audit,
    audit_interval: Duration,
    seed: Option<u64>,
    keyed: bool,
    keys: K,
    classify: C,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            algorithm: Algorithm::default(),
            min_window: Duration::from_secs(1),
            max_window: Duration::from_secs(1),
            window_samples: 10,
            min_rtt_threshold: Duration::from_micros(100),
            retry_after: Duration::from_secs(1),
            cancelled_as_drop: false,
            partitions: Vec::new(),
            default_partition: None,
            missing_key: MissingKey::Anonymous,
            malformed_key: MalformedKey::Reject,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
            health: None,
            audit: Audit::disabled(),
            audit_interval: Duration::from_secs(10),
            seed: None,
            keyed: false,
            keys: Unkeyed,
            classify: ErrorsOnly,
        }
    }
}

impl Builder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, C> Builder<K, C> {
    /// Names the limiter: the health component is `adaptive.<name>` and audit records carry it.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The limit algorithm and its parameters: [`Gradient2`](crate::Gradient2) (the default),
    /// [`Aimd`](crate::Aimd) or [`Vegas`](crate::Vegas). Limits must satisfy
    /// `1 ≤ min ≤ initial ≤ max ≤` [`MAX_LIMIT`].
    pub fn algorithm(mut self, algorithm: impl Into<Algorithm>) -> Self {
        self.algorithm = algorithm.into();
        self
    }

    /// Sample windows: a window closes once it holds at least `samples` calls (successes and drops)
    /// and has lasted twice the smallest RTT in it, but at least `min` and at most `max` (defaults: 1 s,
    /// 1 s, 10 samples; `max` at most [`MAX_WINDOW`], `samples` 1 to [`MAX_WINDOW_SAMPLES`]). Each
    /// window is one update of the algorithm. A window short of samples stays open (low traffic updates
    /// more slowly, never from too few samples).
    pub fn window(mut self, min: Duration, max: Duration, samples: u64) -> Self {
        self.min_window = min;
        self.max_window = max;
        self.window_samples = samples;
        self
    }

    /// Successful calls faster than this say nothing about the backend (cache hits, local answers) and
    /// are not sampled (default 100 µs; at most [`MAX_RTT_THRESHOLD`]; zero samples everything).
    pub fn min_rtt_threshold(mut self, threshold: Duration) -> Self {
        self.min_rtt_threshold = threshold;
        self
    }

    /// The `Retry-After` hint carried by `Overloaded` (default 1 s; at most [`MAX_INTERVAL`]).
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = hint;
        self
    }

    /// Counts a call whose response future was dropped before it finished as a drop (default: ignored).
    ///
    /// Turn it on when the timeout that bounds these calls sits *outside* this layer (it cancels rather
    /// than returning [`Elapsed`](palisade_core::error::Elapsed) through it), so that a backend that
    /// only times out still lowers the limit.
    pub fn cancelled_as_drop(mut self, yes: bool) -> Self {
        self.cancelled_as_drop = yes;
        self
    }

    /// Adds a partition with a guaranteed share (needs [`keyed`](Self::keyed); at most
    /// [`MAX_PARTITIONS`]; the shares add up to at most 1).
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partitions.push(partition);
        self
    }

    /// Tenants that belong to no partition (and requests without a key, under
    /// [`MissingKey::Anonymous`]) join partition `name` (default: none; they use only the pool, the
    /// part of the limit no partition is guaranteed).
    pub fn default_partition(mut self, name: impl Into<Box<str>>) -> Self {
        self.default_partition = Some(name.into());
        self
    }

    /// Keyed: what happens to requests without a key (default [`MissingKey::Anonymous`]).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// Keyed: what happens to requests with a malformed key (default [`MalformedKey::Reject`]: `400`).
    pub fn malformed_key(mut self, policy: MalformedKey) -> Self {
        self.malformed_key = policy;
        self
    }

    /// Keyed: the most tenants tracked (default 10,000; 1 to
    /// [`MAX_KEYS`](palisade_core::keymap::MAX_KEYS)).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Keyed: a tenant with nothing in flight is forgotten after this long unused (default 10 min).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Reports to `health`: a readiness component `adaptive.<name>`, degraded while the limiter refuses
    /// requests (from the first refusal until in-flight is back to 3/4 of the limit).
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// Records limit changes and limiting/recovered transitions in `audit`, each kind at most once per
    /// [`audit_interval`](Self::audit_interval).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// The least time between two audit records of one kind (default 10 s; 1 ms to
    /// [`MAX_INTERVAL`]). A limit change inside the interval is folded into the next record, which
    /// carries the limit last recorded as `old` and how many updates it covers.
    pub fn audit_interval(mut self, interval: Duration) -> Self {
        self.audit_interval = interval;
        self
    }

    /// Seeds the probe jitter (Vegas) for reproducible tests (default: from entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Per-tenant partitions: the tenant of a request is `extractor`'s key (a
    /// [`KeyExtractor`](palisade_core::key::KeyExtractor) such as `HeaderKey`).
    pub fn keyed<K2>(self, extractor: K2) -> Builder<K2, C> {
        Builder {
            name: self.name,
            algorithm: self.algorithm,
            min_window: self.min_window,
            max_window: self.max_window,
            window_samples: self.window_samples,
            min_rtt_threshold: self.min_rtt_threshold,
            retry_after: self.retry_after,
            cancelled_as_drop: self.cancelled_as_drop,
            partitions: self.partitions,
            default_partition: self.default_partition,
            missing_key: self.missing_key,
            malformed_key: self.malformed_key,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            health: self.health,
            audit: self.audit,
            audit_interval: self.audit_interval,
            seed: self.seed,
            keyed: true,
            keys: extractor,
            classify: self.classify,
        }
    }

    /// Decides which outcomes are drops: a [`Classify`](palisade_core::classify::Classify) failure
    /// (an error, an HTTP 5xx with `HttpStatus`, a slow call with `SlowCalls`) is a drop, a success an
    /// RTT sample, an ignored outcome (a refusal further in) nothing. Default [`ErrorsOnly`]. Whatever
    /// the classifier says, an error carrying [`Elapsed`](palisade_core::error::Elapsed) (a timeout)
    /// is a drop. A verdict deferred to the end of the body counts the head's RTT as a success.
    pub fn classify<C2>(self, classifier: C2) -> Builder<K, C2> {
        Builder {
            name: self.name,
            algorithm: self.algorithm,
            min_window: self.min_window,
            max_window: self.max_window,
            window_samples: self.window_samples,
            min_rtt_threshold: self.min_rtt_threshold,
            retry_after: self.retry_after,
            cancelled_as_drop: self.cancelled_as_drop,
            partitions: self.partitions,
            default_partition: self.default_partition,
            missing_key: self.missing_key,
            malformed_key: self.malformed_key,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            health: self.health,
            audit: self.audit,
            audit_interval: self.audit_interval,
            seed: self.seed,
            keyed: self.keyed,
            keys: self.keys,
            classify: classifier,
        }
    }

    fn validate(&self) -> Result<(), BuildError> {
        let err = |setting, problem: String| Err(BuildError::new(LAYER, setting, problem));
        let (initial, min, max) = self.algorithm.limits();
        if min == 0 {
            return err("min_limit", "must be at least 1".into());
        }
        if max > MAX_LIMIT {
            return err(
                "max_limit",
                format!("{max} is more than the largest limit, {MAX_LIMIT}"),
            );
        }
        if min > max {
            return err("min_limit", format!("{min} is above max_limit ({max})"));
        }
        if initial < min || initial > max {
            return err(
                "initial_limit",
                format!("{initial} is not between min_limit ({min}) and max_limit ({max})"),
            );
        }
        let unit = |setting, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                err(setting, format!("{v} is not in (0, 1]"))
            }
        };
        let backoff = |v: f64| {
            if (0.5..1.0).contains(&v) {
                Ok(())
            } else {
                err("backoff_ratio", format!("{v} is not in [0.5, 1)"))
            }
        };
        match &self.algorithm {
            Algorithm::Gradient2(g) => {
                unit("smoothing", g.smoothing)?;
                backoff(g.backoff_ratio)?;
                if !(g.queue_size.is_finite() && g.queue_size >= 0.0 && g.queue_size <= max as f64)
                {
                    return err(
                        "queue_size",
                        format!("{} is not between 0 and max_limit ({max})", g.queue_size),
                    );
                }
                if !(1.0..=10.0).contains(&g.rtt_tolerance) {
                    return err(
                        "rtt_tolerance",
                        format!("{} is not in [1, 10]", g.rtt_tolerance),
                    );
                }
                if g.probe_windows > 100_000 {
                    return err(
                        "probe_windows",
                        format!("{} is more than 100000 windows", g.probe_windows),
                    );
                }
                if g.long_window == 0 || g.long_window > 100_000 {
                    return err(
                        "long_window",
                        format!("{} is not between 1 and 100000 windows", g.long_window),
                    );
                }
            }
            Algorithm::Aimd(a) => {
                backoff(a.backoff_ratio)?;
                if a.timeout.is_zero() || a.timeout > MAX_INTERVAL {
                    return err(
                        "timeout",
                        format!("{:?} is not above zero and at most one hour", a.timeout),
                    );
                }
            }
            Algorithm::Vegas(v) => {
                unit("smoothing", v.smoothing)?;
                if !(v.alpha.is_finite() && v.alpha > 0.0) {
                    return err("alpha", format!("{} is not above zero", v.alpha));
                }
                if !(v.beta.is_finite() && v.beta > v.alpha && v.beta <= 1000.0) {
                    return err(
                        "beta",
                        format!(
                            "{} is not above alpha ({}) and at most 1000",
                            v.beta, v.alpha
                        ),
                    );
                }
                if v.probe_multiplier == 0 || v.probe_multiplier > 10_000 {
                    return err(
                        "probe_multiplier",
                        format!("{} is not between 1 and 10000", v.probe_multiplier),
                    );
                }
            }
        }
        if self.max_window > MAX_WINDOW {
            return err(
                "window",
                format!(
                    "max {:?} is longer than the longest window, {MAX_WINDOW:?}",
                    self.max_window
                ),
            );
        }
        if self.min_window > self.max_window {
            return err(
                "window",
                format!(
                    "min {:?} is above max {:?}",
                    self.min_window, self.max_window
                ),
            );
        }
        if self.window_samples == 0 || self.window_samples > MAX_WINDOW_SAMPLES {
            return err(
                "window",
                format!(
                    "samples {} is not between 1 and {MAX_WINDOW_SAMPLES}",
                    self.window_samples
                ),
            );
        }
        if self.min_rtt_threshold > MAX_RTT_THRESHOLD {
            return err(
                "min_rtt_threshold",
                format!(
                    "{:?} is above {MAX_RTT_THRESHOLD:?}",
                    self.min_rtt_threshold
                ),
            );
        }
        if self.retry_after > MAX_INTERVAL {
            return err(
                "retry_after",
                format!(
                    "{:?} is longer than the longest hint, one hour",
                    self.retry_after
                ),
            );
        }
        if self.audit_interval < Duration::from_millis(1) || self.audit_interval > MAX_INTERVAL {
            return err(
                "audit_interval",
                format!("{:?} is not between 1ms and one hour", self.audit_interval),
            );
        }
        if !self.keyed {
            if !self.partitions.is_empty() {
                return err(
                    "partition",
                    "partitions need a keyed limiter: call keyed(extractor)".into(),
                );
            }
            if self.default_partition.is_some() {
                return err(
                    "default_partition",
                    "partitions need a keyed limiter: call keyed(extractor)".into(),
                );
            }
        }
        if self.partitions.len() > MAX_PARTITIONS {
            return err(
                "partition",
                format!(
                    "{} partitions are more than the most, {MAX_PARTITIONS}",
                    self.partitions.len()
                ),
            );
        }
        let mut total = 0.0;
        let mut seen = HashMap::new();
        for p in &self.partitions {
            unit("partition", p.share).map_err(|_| {
                BuildError::new(
                    LAYER,
                    "partition",
                    format!("the share of `{}`, {}, is not in (0, 1]", p.name, p.share),
                )
            })?;
            total += p.share;
            for m in &p.members {
                if let Some(other) = seen.insert(m.clone(), p.name.clone()) {
                    return err(
                        "partition",
                        format!("tenant `{m}` is in both `{other}` and `{}`", p.name),
                    );
                }
            }
        }
        if total > 1.0 + 1e-9 {
            return err(
                "partition",
                format!("the shares add up to {total}, more than 1"),
            );
        }
        if let Some(d) = &self.default_partition {
            if !self.partitions.iter().any(|p| &p.name == d) {
                return err(
                    "default_partition",
                    format!("`{d}` is not a configured partition"),
                );
            }
        }
        KeyMap::<()>::check(LAYER, self.max_keys, self.idle_timeout)?;
        Ok(())
    }

    /// Builds the layer. Its state is shared by every service it wraps (every route, every clone).
    pub fn build(self) -> Result<AdaptiveLayer<K, C>, BuildError> {
        self.validate()?;
        let rng = self.seed.map_or_else(Rng::from_entropy, Rng::seeded);
        let component = self
            .health
            .as_ref()
            .map(|h| h.register(format!("adaptive.{}", self.name), ComponentKind::Readiness));
        let index = |name: &str| self.partitions.iter().position(|p| &*p.name == name);
        let tenants = self.keyed.then(|| {
            let mut members = HashMap::new();
            for (i, p) in self.partitions.iter().enumerate() {
                for m in &p.members {
                    members.insert(m.clone(), i);
                }
            }
            Tenants::new(
                self.max_keys,
                self.idle_timeout,
                members,
                self.default_partition.as_deref().and_then(index),
            )
        });
        let shared = Shared::new(SharedConfig {
            name: self.name,
            algorithm: self.algorithm.name(),
            estimator: Estimator::new(&self.algorithm, rng),
            window: WindowConfig {
                min_time: self.min_window,
                max_time: self.max_window,
                samples: self.window_samples,
                min_rtt_threshold: self.min_rtt_threshold,
            },
            partitions: self
                .partitions
                .iter()
                .map(|p| (p.name.clone(), p.share))
                .collect(),
            tenants,
            retry_after: self.retry_after,
            cancelled_as_drop: self.cancelled_as_drop,
            missing_key: self.missing_key,
            malformed_key: self.malformed_key,
            component,
            audit: self.audit,
            audit_interval: self.audit_interval,
        });
        Ok(AdaptiveLayer::from_inner(Inner {
            shared: Arc::new(shared),
            keys: self.keys,
            classify: self.classify,
        }))
    }
}
