//! Health: components, checks, and liveness and readiness reports.
//!
//! One [`Health`] handle is shared by every layer of a stack and by user code. It is a cheap
//! [`Clone`] (an [`Arc`] inside) and all its methods are synchronous; only the checks it runs are
//! asynchronous, in tasks of their own.
//!
//! # Components
//!
//! A *component* is one named thing whose health is known: a circuit breaker, a bulkhead, a database
//! pool. Each has a [`ComponentKind`] saying whether it counts towards **liveness** (should the process
//! be restarted?), **readiness** (should it receive traffic?) or both, and a [`HealthState`]:
//! `Healthy`, `Degraded` or `Unhealthy`, with an optional reason and the time since which the state
//! has held.
//!
//! Components are either *pushed* or *polled*:
//!
//! - [`Health::register`] returns a [`Component`] handle whose owner sets the state itself
//!   ([`Component::healthy`], [`Component::degraded`], [`Component::unhealthy`]). Layers do this:
//!   a breaker that opens marks its component degraded.
//! - [`Health::add_check`] runs a [`Check`] (usually an async closure) every
//!   [`interval`](CheckConfig::interval) in a background task, with a
//!   [`timeout`](CheckConfig::timeout), and flips the component to `Unhealthy` after
//!   [`failure_threshold`](CheckConfig::failure_threshold) consecutive failures and back to `Healthy`
//!   after [`success_threshold`](CheckConfig::success_threshold) consecutive successes.
//!
//! # Reports
//!
//! [`Health::liveness`], [`Health::readiness`] and [`Health::report`] take a [`Report`]: the
//! components of that kind sorted by name, and their aggregated status, which is the worst of their
//! states (`Unhealthy` > `Degraded` > `Healthy`; no components is `Healthy`). A report serializes to
//! a stable JSON shape:
//!
//! ```json
//! {
//!   "status": "degraded",
//!   "components": [
//!     {
//!       "name": "breaker.payments",
//!       "kind": "readiness",
//!       "state": "degraded",
//!       "reason": "circuit open",
//!       "since": "2026-11-22T15:46:12.345Z",
//!       "for_ms": 1234,
//!       "check": null
//!     },
//!     {
//!       "name": "db",
//!       "kind": "both",
//!       "state": "healthy",
//!       "reason": null,
//!       "since": "2026-11-22T15:40:00.000Z",
//!       "for_ms": 372345,
//!       "check": {
//!         "depth": "deep",
//!         "consecutive_failures": 0,
//!         "consecutive_successes": 3,
//!         "last_error": null
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! An HTTP endpoint answers `200` when [`Report::is_available`] (healthy or degraded) and `503`
//! otherwise, with [`Report::to_json`] as the body.
//!
//! # Tiers
//!
//! Every check has a tier, its [`CheckDepth`]: **shallow** (the process itself: fast, no
//! dependencies; every 5–10 s, under 100 ms), **deep** (its dependencies; every 30–60 s,
//! 100 ms–5 s) or **comprehensive** (end to end; every 5–15 min, 5–30 s).
//! [`CheckConfig::for_depth`] gives a check its tier's default interval and timeout. Each check
//! keeps its own "N failures to fail, M successes to recover"
//! ([`failure_threshold`](CheckConfig::failure_threshold),
//! [`success_threshold`](CheckConfig::success_threshold)); a check is *failing* while its component
//! is `Unhealthy`.
//!
//! [`Report::tiers`] (and [`Health::tiers`]) aggregates the failing checks of a report into a
//! [`TierState`]:
//!
//! | failing checks | verdict |
//! |---|---|
//! | none | [`TierState::Healthy`] |
//! | 1–2 shallow | [`TierState::Degraded`] |
//! | 3 or more shallow, or any deep | [`TierState::Unhealthy`] |
//! | any comprehensive | [`TierState::Critical`] |
//!
//! The first row that matches from the bottom wins (a failing comprehensive check is critical
//! whatever else fails). When a shallow check starts failing (its component turns `Unhealthy`),
//! every **deep** check of the same [`Health`] runs at once instead of at its next interval, so
//! the verdict learns quickly whether a dependency is the cause; a woken check's next run is an
//! interval after that one. (A deep check whose run is already in progress is not run again.)
//! Wake-ups are rate limited, so that a shallow check flapping between failing and passing does not
//! hammer the dependencies: a woken run starts no sooner than `max(interval / 4, timeout)` (at most
//! the interval) after the deep check's previous run started — a wake-up sooner than that is
//! deferred to then, and the wake-ups meanwhile coalesce into that one run. A deep check therefore
//! runs at most about four times as often as its interval says, however fast the shallow one flaps.
//!
//! The tier verdict is **beside** the liveness and readiness status, not in it: [`HealthState`]
//! has no "critical", `/healthz` and `/readyz` answer `200` or `503` exactly as before, and their
//! verbose JSON shows the tiers of their own checks.
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::health::{CheckConfig, CheckDepth, ComponentKind, Health, TierState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::new();
//! let _loop = health.add_check("event_loop", ComponentKind::Liveness,
//!     CheckConfig::shallow().failure_threshold(1), || async { Err::<(), _>("stalled") })?;
//! let _db = health.add_check("db", ComponentKind::Readiness,
//!     CheckConfig::deep(), || async { Ok::<(), std::io::Error>(()) })?;
//! tokio::time::sleep(Duration::from_millis(1)).await; // let the first runs finish
//!
//! let tiers = health.tiers();
//! assert_eq!(tiers.status(), TierState::Degraded); // one shallow check fails
//! assert_eq!(tiers.tier(CheckDepth::Shallow).failing(), ["event_loop"]);
//! assert_eq!(tiers.tier(CheckDepth::Deep).checks(), 1);
//! assert_eq!(health.readiness().tiers().status(), TierState::Healthy); // only `db` is readiness
//! # Ok(())
//! # }
//! ```
//!
//! # Lifetimes
//!
//! - Components never alias: [`Health::register`] on a name that is already registered registers
//!   a **new** component under the first free name of `name#2`, `name#3`, ... (so two layers of the
//!   same name each show their own state); use [`Health::try_register`] to get an error instead,
//!   and [`Health::component`] to get a handle to an existing component.
//!   [`Health::add_check`] on a taken name is always an error.
//! - A component stays registered until it is deregistered: [`Component::deregister`],
//!   [`Health::deregister`], [`CheckHandle::stop`], or dropping a [`ComponentGuard`]
//!   (see [`Component::deregister_on_drop`]). Dropping a plain [`Component`] handle does **not**
//!   deregister it, so `health.register("db", kind).unhealthy("down")` in one statement works.
//! - A check runs until it is stopped with [`CheckHandle::stop`], its component is deregistered,
//!   or the last clone of the [`Health`] is dropped. Dropping the [`CheckHandle`] detaches it (like
//!   dropping a `JoinHandle`); the check keeps running.
//!
//! State changes emit `tracing` events: `info` when a component gets better, `warn` when it gets
//! worse. Taking a report emits nothing.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::health::{CheckConfig, CheckDepth, ComponentKind, Health, HealthState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::new();
//!
//! // A layer registers itself and pushes its state.
//! let breaker = health.register("breaker.payments", ComponentKind::Readiness);
//! breaker.degraded("circuit open");
//!
//! // User code adds a polled check.
//! let config = CheckConfig::new()
//!     .depth(CheckDepth::Deep)
//!     .interval(Duration::from_secs(5))
//!     .timeout(Duration::from_secs(1))
//!     .failure_threshold(3);
//! let _db = health.add_check("db", ComponentKind::Both, config, || async {
//!     // ping the database here
//!     Ok::<(), std::io::Error>(())
//! })?;
//! tokio::time::sleep(Duration::from_millis(1)).await; // let the first check run
//!
//! let liveness = health.liveness();
//! assert_eq!(liveness.status(), HealthState::Healthy); // the breaker is readiness-only
//!
//! let readiness = health.readiness();
//! assert_eq!(readiness.status(), HealthState::Degraded);
//! assert!(readiness.is_available()); // degraded still serves: 200, not 503
//! assert_eq!(readiness.components()[0].reason(), Some("circuit open"));
//!
//! let json: serde_json::Value = serde_json::from_str(&readiness.to_json())?;
//! assert_eq!(json["status"], "degraded");
//! assert_eq!(json["components"][1]["name"], "db");
//! assert_eq!(json["components"][1]["check"]["depth"], "deep");
//!
//! breaker.healthy();
//! assert!(health.readiness().is_healthy());
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};

use crate::time::{rfc3339_ms, unix_ms};

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

/// The health of one component, or the aggregate of several.
///
/// States are ordered from best to worst (`Healthy < Degraded < Unhealthy`), so the aggregate of
/// several states is their maximum (see [`HealthState::worst`]). Serializes as `"healthy"`,
/// `"degraded"` or `"unhealthy"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Working normally.
    #[default]
    Healthy,
    /// Working, with reduced capacity or quality (a breaker open on one dependency, read-only mode).
    Degraded,
    /// Not working.
    Unhealthy,
}

impl HealthState {
    /// The lowercase name, as in JSON: `"healthy"`, `"degraded"` or `"unhealthy"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// `true` for [`HealthState::Healthy`].
    pub const fn is_healthy(self) -> bool {
        matches!(self, Self::Healthy)
    }

    /// `true` unless [`HealthState::Unhealthy`]: a degraded service still serves (HTTP 200).
    pub const fn is_available(self) -> bool {
        !matches!(self, Self::Unhealthy)
    }

    /// The worse of two states.
    #[must_use]
    pub fn worst(self, other: Self) -> Self {
        self.max(other)
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which reports a component counts in. Serializes as `"liveness"`, `"readiness"` or `"both"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// Counts in [`Health::liveness`] only: a failure means the process should be restarted.
    Liveness,
    /// Counts in [`Health::readiness`] only: a failure means the process should get no traffic.
    Readiness,
    /// Counts in both liveness and readiness.
    Both,
}

impl ComponentKind {
    /// The lowercase name, as in JSON: `"liveness"`, `"readiness"` or `"both"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Liveness => "liveness",
            Self::Readiness => "readiness",
            Self::Both => "both",
        }
    }

    /// `true` for [`ComponentKind::Liveness`] and [`ComponentKind::Both`].
    pub const fn includes_liveness(self) -> bool {
        matches!(self, Self::Liveness | Self::Both)
    }

    /// `true` for [`ComponentKind::Readiness`] and [`ComponentKind::Both`].
    pub const fn includes_readiness(self) -> bool {
        matches!(self, Self::Readiness | Self::Both)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How deep a check looks: its *tier*. Recorded in the report, counted by the tier verdict
/// ([`Report::tiers`]), and it decides one thing about how a check runs: a shallow check that
/// starts failing (turns its component `Unhealthy`) runs every deep check of its [`Health`] at
/// once (see [Tiers](self#tiers)).
///
/// By convention, shallow checks test the process itself (an event loop is turning, a pool exists),
/// deep checks test its dependencies (the database answers) and comprehensive checks test the
/// service end to end (a synthetic order goes through). Deep and comprehensive checks usually
/// belong to readiness, not liveness: a database outage should not restart every replica.
/// Serializes as `"shallow"`, `"deep"` or `"comprehensive"`.
///
/// Each tier has a recommended cadence, which [`CheckConfig::for_depth`] applies:
///
/// | tier | recommended | [`default_interval`](Self::default_interval) | [`default_timeout`](Self::default_timeout) |
/// |---|---|---|---|
/// | [`Shallow`](Self::Shallow) | every 5–10 s, under 100 ms | 10 s | 100 ms |
/// | [`Deep`](Self::Deep) | every 30–60 s, 100 ms–5 s | 30 s | 5 s |
/// | [`Comprehensive`](Self::Comprehensive) | every 5–15 min, 5–30 s | 10 min | 30 s |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckDepth {
    /// Tests the process itself: fast, no dependencies.
    #[default]
    Shallow,
    /// Tests a dependency of the process.
    Deep,
    /// Tests the service end to end.
    Comprehensive,
}

impl CheckDepth {
    /// Every tier, shallowest first.
    pub const ALL: [CheckDepth; 3] = [Self::Shallow, Self::Deep, Self::Comprehensive];

    /// The lowercase name, as in JSON: `"shallow"`, `"deep"` or `"comprehensive"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Shallow => "shallow",
            Self::Deep => "deep",
            Self::Comprehensive => "comprehensive",
        }
    }

    /// The tier's default interval between runs: 10 s (shallow), 30 s (deep), 10 min
    /// (comprehensive).
    pub const fn default_interval(self) -> Duration {
        match self {
            Self::Shallow => Duration::from_secs(10),
            Self::Deep => Duration::from_secs(30),
            Self::Comprehensive => Duration::from_secs(600),
        }
    }

    /// The tier's default timeout of one run: 100 ms (shallow), 5 s (deep), 30 s (comprehensive).
    pub const fn default_timeout(self) -> Duration {
        match self {
            Self::Shallow => Duration::from_millis(100),
            Self::Deep => Duration::from_secs(5),
            Self::Comprehensive => Duration::from_secs(30),
        }
    }
}

impl fmt::Display for CheckDepth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from registering a component or adding a check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthError {
    /// A [`CheckConfig`] value cannot work.
    InvalidConfig {
        /// The offending setting, e.g. `"interval"` or `"failure_threshold"`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A component of this name is already registered.
    AlreadyRegistered {
        /// The name that is taken.
        name: String,
    },
    /// [`Health::add_check`] was called outside a Tokio runtime, so there is nowhere to run the check.
    NoRuntime,
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig { field, reason } => {
                write!(f, "invalid health check config: `{field}` {reason}")
            }
            Self::AlreadyRegistered { name } => {
                write!(f, "a health component named `{name}` is already registered")
            }
            Self::NoRuntime => f.write_str(
                "health checks must be added from inside a Tokio runtime (no runtime is running)",
            ),
        }
    }
}

impl std::error::Error for HealthError {}

// ---------------------------------------------------------------------------------------------
// Check configuration and the Check trait
// ---------------------------------------------------------------------------------------------

/// How a check runs and how its results become a [`HealthState`].
///
/// Built with [`CheckConfig::new`] (or [`Default`]), or with a tier's preset
/// ([`CheckConfig::shallow`], [`CheckConfig::deep`], [`CheckConfig::comprehensive`]), and chained
/// setters; validated by [`Health::add_check`] (or [`CheckConfig::validate`]).
///
/// | setting | [`new`](Self::new) | [`for_depth(depth)`](Self::for_depth) |
/// |---|---|---|
/// | [`depth`](Self::depth) | [`CheckDepth::Shallow`] | `depth` |
/// | [`interval`](Self::interval) | 10 s | [`depth.default_interval()`](CheckDepth::default_interval): 10 s, 30 s, 10 min |
/// | [`timeout`](Self::timeout) | 2 s | [`depth.default_timeout()`](CheckDepth::default_timeout): 100 ms, 5 s, 30 s |
/// | [`failure_threshold`](Self::failure_threshold) | 3 | 3 |
/// | [`success_threshold`](Self::success_threshold) | 1 | 1 |
/// | [`initial`](Self::initial) | [`HealthState::Healthy`] | [`HealthState::Healthy`] |
///
/// [`new`](Self::new) keeps the settings it has always had (a shallow check with a 2 s timeout);
/// [`depth`](Self::depth) changes only the tier, never the interval or timeout. For a tier's
/// recommended cadence, start from [`for_depth`](Self::for_depth).
///
/// ```
/// use std::time::Duration;
/// use palisade_core::health::{CheckConfig, CheckDepth};
///
/// let deep = CheckConfig::deep();
/// assert_eq!(deep.get_depth(), CheckDepth::Deep);
/// assert_eq!(deep.get_interval(), Duration::from_secs(30));
/// assert_eq!(deep.get_timeout(), Duration::from_secs(5));
///
/// // `new()` is unchanged: shallow, every 10 s, 2 s timeout.
/// let plain = CheckConfig::new();
/// assert_eq!(plain.get_timeout(), Duration::from_secs(2));
/// assert_eq!(CheckConfig::shallow().get_timeout(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    depth: CheckDepth,
    interval: Duration,
    timeout: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    initial: HealthState,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            depth: CheckDepth::Shallow,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            success_threshold: Self::DEFAULT_SUCCESS_THRESHOLD,
            initial: HealthState::Healthy,
        }
    }
}

impl CheckConfig {
    /// The default [`interval`](Self::interval): 10 seconds.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// The default [`timeout`](Self::timeout): 2 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// The default [`failure_threshold`](Self::failure_threshold): 3.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    /// The default [`success_threshold`](Self::success_threshold): 1.
    pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
    /// The longest [`interval`](Self::interval): 1 day.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
    /// The longest [`timeout`](Self::timeout): 1 hour.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
    /// The largest [`failure_threshold`](Self::failure_threshold) and
    /// [`success_threshold`](Self::success_threshold): 10,000.
    pub const MAX_THRESHOLD: u32 = 10_000;

    /// The default configuration (see the table on [`CheckConfig`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A check of tier `depth` at the tier's default interval and timeout
    /// ([`CheckDepth::default_interval`], [`CheckDepth::default_timeout`]); other settings as
    /// [`new`](Self::new).
    pub fn for_depth(depth: CheckDepth) -> Self {
        Self {
            depth,
            interval: depth.default_interval(),
            timeout: depth.default_timeout(),
            ..Self::default()
        }
    }

    /// [`for_depth(CheckDepth::Shallow)`](Self::for_depth): every 10 s, 100 ms timeout.
    pub fn shallow() -> Self {
        Self::for_depth(CheckDepth::Shallow)
    }

    /// [`for_depth(CheckDepth::Deep)`](Self::for_depth): every 30 s, 5 s timeout.
    pub fn deep() -> Self {
        Self::for_depth(CheckDepth::Deep)
    }

    /// [`for_depth(CheckDepth::Comprehensive)`](Self::for_depth): every 10 min, 30 s timeout.
    pub fn comprehensive() -> Self {
        Self::for_depth(CheckDepth::Comprehensive)
    }

    /// The check's tier. It is reported, counted by [`Report::tiers`], and a deep check is run at
    /// once when a shallow check of the same [`Health`] starts failing. Changes only the tier: the
    /// interval and timeout stay as set (see [`for_depth`](Self::for_depth) for a tier's defaults).
    #[must_use]
    pub fn depth(mut self, depth: CheckDepth) -> Self {
        self.depth = depth;
        self
    }

    /// The tier set by [`depth`](Self::depth).
    pub fn get_depth(&self) -> CheckDepth {
        self.depth
    }

    /// The interval set by [`interval`](Self::interval).
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The timeout set by [`timeout`](Self::timeout).
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The threshold set by [`failure_threshold`](Self::failure_threshold).
    pub fn get_failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// The threshold set by [`success_threshold`](Self::success_threshold).
    pub fn get_success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// Time between the starts of two runs. The first run starts at once; a run that takes longer
    /// than the interval delays the next one rather than causing a burst. Must be non-zero and at
    /// most [`MAX_INTERVAL`](Self::MAX_INTERVAL).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long one run may take. A run still going after this is cancelled and counts as a failure
    /// with the reason `"timed out after {timeout:?}"`. Must be non-zero and at most
    /// [`MAX_TIMEOUT`](Self::MAX_TIMEOUT).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many consecutive failures make the component `Unhealthy`, with the last error as the
    /// reason. While it stays unhealthy, each further failure replaces the reason with its own
    /// error. From 1 to [`MAX_THRESHOLD`](Self::MAX_THRESHOLD).
    #[must_use]
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// How many consecutive successes bring a component that is not `Healthy` back to `Healthy`.
    /// A failure in between starts the count again. From 1 to [`MAX_THRESHOLD`](Self::MAX_THRESHOLD).
    #[must_use]
    pub fn success_threshold(mut self, m: u32) -> Self {
        self.success_threshold = m;
        self
    }

    /// The state before the first run has decided anything. Use [`HealthState::Unhealthy`] for a
    /// readiness check that must pass before traffic is sent.
    #[must_use]
    pub fn initial(mut self, state: HealthState) -> Self {
        self.initial = state;
        self
    }

    /// Checks that every setting can work.
    ///
    /// # Errors
    ///
    /// [`HealthError::InvalidConfig`] naming the first `interval`, `timeout`,
    /// `failure_threshold` or `success_threshold` that is zero or above its maximum
    /// ([`MAX_INTERVAL`](Self::MAX_INTERVAL), [`MAX_TIMEOUT`](Self::MAX_TIMEOUT),
    /// [`MAX_THRESHOLD`](Self::MAX_THRESHOLD)).
    pub fn validate(&self) -> Result<(), HealthError> {
        let invalid = |field, reason| Err(HealthError::InvalidConfig { field, reason });
        if self.interval.is_zero() {
            return invalid("interval", "must be greater than zero");
        }
        if self.interval > Self::MAX_INTERVAL {
            return invalid("interval", "must be at most 1 day");
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be greater than zero");
        }
        if self.timeout > Self::MAX_TIMEOUT {
            return invalid("timeout", "must be at most 1 hour");
        }
        if self.failure_threshold == 0 {
            return invalid("failure_threshold", "must be at least 1");
        }
        if self.failure_threshold > Self::MAX_THRESHOLD {
            return invalid("failure_threshold", "must be at most 10000");
        }
        if self.success_threshold == 0 {
            return invalid("success_threshold", "must be at least 1");
        }
        if self.success_threshold > Self::MAX_THRESHOLD {
            return invalid("success_threshold", "must be at most 10000");
        }
        Ok(())
    }
}

/// A health check: something that can be asked, again and again, whether a component works.
///
/// Implemented for every closure `Fn() -> impl Future<Output = Result<(), E>>` where `E:
/// Display`, so most checks are written inline:
///
/// ```
/// # use palisade_core::health::Check;
/// fn assert_check(_: impl Check) {}
/// assert_check(|| async { Ok::<(), std::io::Error>(()) });
/// ```
///
/// `Ok(())` is a success; `Err(e)` is a failure with `e.to_string()` as the reason. A check that
/// panics (while being called or while its future is polled) counts as a failure too and does not
/// stop later runs.
pub trait Check: Send + Sync + 'static {
    /// The error of a failed check; its `Display` output becomes the component's reason.
    type Error: fmt::Display;
    /// The future of one run.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Starts one run of the check.
    fn check(&self) -> Self::Future;
}

impl<F, Fut, E> Check for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display,
{
    type Error = E;
    type Future = Fut;

    fn check(&self) -> Fut {
        self()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// Locks a mutex, ignoring poison: every critical section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Registry = BTreeMap<Cow<'static, str>, Arc<ComponentInner>>;

#[derive(Default)]
struct HealthInner {
    components: Mutex<Registry>,
    /// Wakes every deep check waiting for its next tick (a shallow check started failing). An
    /// `Arc` of its own, so a waiting check task does not keep the `HealthInner` alive.
    deep_wake: Arc<Notify>,
}

impl HealthInner {
    /// Removes `component` if it is still the one registered under its name; stops its check.
    fn remove_if_same(&self, component: &Arc<ComponentInner>) -> bool {
        let removed = {
            let mut map = lock(&self.components);
            match map.get(&*component.name) {
                Some(current) if Arc::ptr_eq(current, component) => map.remove(&*component.name),
                _ => None,
            }
        };
        match removed {
            Some(removed) => {
                removed.abort_check();
                tracing::debug!(component = %removed.name, "health component deregistered");
                true
            }
            None => false,
        }
    }

    fn is_registered(&self, component: &Arc<ComponentInner>) -> bool {
        let map = lock(&self.components);
        let registered = map
            .get(&*component.name)
            .is_some_and(|current| Arc::ptr_eq(current, component));
        registered
    }
}

impl Drop for HealthInner {
    fn drop(&mut self) {
        let map = self
            .components
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for component in map.values() {
            component.abort_check();
        }
    }
}

struct ComponentInner {
    name: Cow<'static, str>,
    kind: ComponentKind,
    check: Option<CheckMeta>,
    data: Mutex<ComponentData>,
}

struct CheckMeta {
    depth: CheckDepth,
    failure_threshold: u32,
    success_threshold: u32,
    task: OnceLock<AbortHandle>,
}

struct ComponentData {
    state: HealthState,
    reason: Option<Cow<'static, str>>,
    since: Instant,
    since_unix_ms: u64,
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_error: Option<String>,
}

/// A state change, emitted as a tracing event once the lock is released.
struct Transition {
    from: HealthState,
    to: HealthState,
    reason: Option<Cow<'static, str>>,
}

impl ComponentData {
    fn new(state: HealthState) -> Self {
        Self {
            state,
            reason: None,
            since: Instant::now(),
            since_unix_ms: unix_ms(),
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_error: None,
        }
    }

    /// Sets state and reason; `since` moves only when the state changes.
    fn set(&mut self, state: HealthState, reason: Option<Cow<'static, str>>) -> Option<Transition> {
        self.reason = reason;
        if self.state == state {
            return None;
        }
        let from = self.state;
        self.state = state;
        self.since = Instant::now();
        self.since_unix_ms = unix_ms();
        Some(Transition {
            from,
            to: state,
            reason: self.reason.clone(),
        })
    }
}

impl ComponentInner {
    fn new(
        name: Cow<'static, str>,
        kind: ComponentKind,
        check: Option<CheckMeta>,
        initial: HealthState,
    ) -> Self {
        Self {
            name,
            kind,
            check,
            data: Mutex::new(ComponentData::new(initial)),
        }
    }

    fn set(&self, state: HealthState, reason: Option<Cow<'static, str>>) {
        let transition = lock(&self.data).set(state, reason);
        if let Some(transition) = transition {
            self.emit(transition);
        }
    }

    /// Applies the outcome of one check run to the thresholds. Returns whether this run turned
    /// the component `Unhealthy` (it was not before).
    fn record(&self, outcome: Result<(), String>) -> bool {
        let Some(meta) = &self.check else {
            return false;
        };
        let mut failed = None;
        let transition = {
            let mut data = lock(&self.data);
            match outcome {
                Ok(()) => {
                    data.consecutive_failures = 0;
                    data.consecutive_successes = data.consecutive_successes.saturating_add(1);
                    data.last_error = None;
                    if data.state != HealthState::Healthy
                        && data.consecutive_successes >= meta.success_threshold
                    {
                        data.set(HealthState::Healthy, None)
                    } else {
                        None
                    }
                }
                Err(error) => {
                    data.consecutive_successes = 0;
                    data.consecutive_failures = data.consecutive_failures.saturating_add(1);
                    failed = Some((data.consecutive_failures, error.clone()));
                    data.last_error = Some(error.clone());
                    // Past the threshold, or already unhealthy: the latest error is the reason.
                    if data.consecutive_failures >= meta.failure_threshold
                        || data.state == HealthState::Unhealthy
                    {
                        data.set(HealthState::Unhealthy, Some(Cow::Owned(error)))
                    } else {
                        None
                    }
                }
            }
        };
        // Events go out with no lock held, so a subscriber may take a report.
        if let Some((consecutive_failures, error)) = failed {
            tracing::debug!(
                component = %self.name,
                consecutive_failures,
                error = %error,
                "health check failed"
            );
        }
        let became_unhealthy = transition
            .as_ref()
            .is_some_and(|t| t.to == HealthState::Unhealthy);
        if let Some(transition) = transition {
            self.emit(transition);
        }
        became_unhealthy
    }

    fn emit(&self, t: Transition) {
        let reason = t.reason.as_deref().unwrap_or("");
        if t.to < t.from {
            tracing::info!(
                component = %self.name,
                kind = %self.kind,
                from = %t.from,
                to = %t.to,
                reason,
                "health component recovered"
            );
        } else {
            tracing::warn!(
                component = %self.name,
                kind = %self.kind,
                from = %t.from,
                to = %t.to,
                reason,
                "health component degraded"
            );
        }
    }

    fn abort_check(&self) {
        if let Some(task) = self.check.as_ref().and_then(|meta| meta.task.get()) {
            task.abort();
        }
    }

    fn snapshot(&self, now: Instant) -> ComponentReport {
        let data = lock(&self.data);
        ComponentReport {
            name: self.name.clone(),
            kind: self.kind,
            state: data.state,
            reason: data.reason.clone(),
            since_unix_ms: data.since_unix_ms,
            held_for: now.saturating_duration_since(data.since),
            check: self.check.as_ref().map(|meta| CheckReport {
                depth: meta.depth,
                consecutive_failures: data.consecutive_failures,
                consecutive_successes: data.consecutive_successes,
                last_error: data.last_error.clone(),
            }),
        }
    }
}

fn reason_of(reason: Cow<'static, str>) -> Option<Cow<'static, str>> {
    if reason.is_empty() {
        None
    } else {
        Some(reason)
    }
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// The health of a process: its components and checks, and their liveness and readiness reports.
///
/// A cheap [`Clone`]: every clone shares the same components. Checks run until the last clone is
/// dropped. See the [module docs](self) for an example.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = lock(&self.inner.components);
        f.debug_struct("Health")
            .field("components", &map.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Health {
    /// A health handle with no components; its reports are `Healthy`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new component whose owner pushes its state, starting `Healthy`.
    ///
    /// Every call registers a component of its own: two owners never share (alias) one. If `name`
    /// is taken, the new component gets the first free name of `name#2`, `name#3`, ... (read it
    /// with [`Component::name`]) and a `warn` event says so; the existing component is untouched.
    /// This is what layers call, so two layers of the same name on one `Health` (two unnamed
    /// gates, say) each report their own state, and dropping one removes only its own component.
    /// Use [`Health::try_register`] to get an error for a taken name instead, and
    /// [`Health::component`] for a handle to an existing component.
    ///
    /// The component stays registered until deregistered; see [`Component::deregister`] and
    /// [`Component::deregister_on_drop`].
    pub fn register(&self, name: impl Into<Cow<'static, str>>, kind: ComponentKind) -> Component {
        let requested = name.into();
        let (inner, renamed) = {
            let mut map = lock(&self.inner.components);
            let name = if map.contains_key(&*requested) {
                // Linear in the number of clashes for this name: registration is not a hot path.
                let free = (2u64..)
                    .map(|n| format!("{requested}#{n}"))
                    .find(|candidate| !map.contains_key(candidate.as_str()))
                    .unwrap_or_else(|| format!("{requested}#"));
                Cow::Owned(free)
            } else {
                requested.clone()
            };
            let renamed = name != requested;
            let component = Arc::new(ComponentInner::new(
                name.clone(),
                kind,
                None,
                HealthState::Healthy,
            ));
            map.insert(name, Arc::clone(&component));
            (component, renamed)
        };
        if renamed {
            tracing::warn!(
                requested = %requested,
                component = %inner.name,
                "health component name already taken; registered under a distinct name"
            );
        }
        self.handle(inner)
    }

    /// Registers a component like [`Health::register`], but fails if the name is taken.
    ///
    /// # Errors
    ///
    /// [`HealthError::AlreadyRegistered`] if a component of this name exists.
    pub fn try_register(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: ComponentKind,
    ) -> Result<Component, HealthError> {
        let component = self.insert_new(name.into(), kind, None, HealthState::Healthy)?;
        Ok(self.handle(component))
    }

    /// A handle to the component registered under `name`, if any (a check's component included).
    pub fn component(&self, name: &str) -> Option<Component> {
        let found = lock(&self.inner.components).get(name).cloned();
        found.map(|inner| self.handle(inner))
    }

    /// Removes the component registered under `name` (stopping its check, if it has one). Returns
    /// whether there was one.
    pub fn deregister(&self, name: &str) -> bool {
        let found = lock(&self.inner.components).get(name).cloned();
        found.is_some_and(|component| self.inner.remove_if_same(&component))
    }

    /// Adds a component whose state a [`Check`] decides, run in a task spawned on the current Tokio
    /// runtime.
    ///
    /// The component starts in [`CheckConfig::initial`]. The first run starts at once, later runs
    /// every [`CheckConfig::interval`] (and a deep check also whenever a shallow check of this
    /// `Health` starts failing; see [Tiers](self#tiers)). Each run is its own task, so a check that panics or hangs
    /// (past [`CheckConfig::timeout`]) is a failure and nothing else. The background task holds only
    /// weak references: it ends when the check is stopped, its component is deregistered, or the
    /// last [`Health`] clone is dropped. Dropping the returned [`CheckHandle`] does not stop it.
    ///
    /// # Errors
    ///
    /// - [`HealthError::InvalidConfig`] if `config` fails [`CheckConfig::validate`];
    /// - [`HealthError::AlreadyRegistered`] if the name is taken;
    /// - [`HealthError::NoRuntime`] if called outside a Tokio runtime.
    pub fn add_check<C: Check>(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: ComponentKind,
        config: CheckConfig,
        check: C,
    ) -> Result<CheckHandle, HealthError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HealthError::NoRuntime)?;
        let meta = CheckMeta {
            depth: config.depth,
            failure_threshold: config.failure_threshold,
            success_threshold: config.success_threshold,
            task: OnceLock::new(),
        };
        let component = self.insert_new(name.into(), kind, Some(meta), config.initial)?;
        let wake = (config.depth == CheckDepth::Deep).then(|| Arc::clone(&self.inner.deep_wake));
        let task = runtime.spawn(run_check(
            Arc::new(check),
            config,
            Arc::downgrade(&component),
            Arc::downgrade(&self.inner),
            wake,
        ));
        if let Some(meta) = &component.check {
            // Set once, here, before anyone else can see the component's check.
            let _ = meta.task.set(task.abort_handle());
        }
        tracing::debug!(component = %component.name, kind = %kind, "health check added");
        Ok(CheckHandle {
            name: component.name.clone(),
            component: Arc::downgrade(&component),
            health: Arc::downgrade(&self.inner),
        })
    }

    /// The liveness report: components of kind [`ComponentKind::Liveness`] or
    /// [`ComponentKind::Both`].
    pub fn liveness(&self) -> Report {
        self.build_report(ComponentKind::includes_liveness)
    }

    /// The readiness report: components of kind [`ComponentKind::Readiness`] or
    /// [`ComponentKind::Both`].
    pub fn readiness(&self) -> Report {
        self.build_report(ComponentKind::includes_readiness)
    }

    /// A report of every component, whatever its kind.
    pub fn report(&self) -> Report {
        self.build_report(|_| true)
    }

    /// The tier verdict over every check, whatever its kind: [`Health::report`]`().tiers()`. For
    /// the checks of one probe, use [`Health::liveness`]`().tiers()` or
    /// [`Health::readiness`]`().tiers()`.
    pub fn tiers(&self) -> TierReport {
        self.report().tiers()
    }

    fn handle(&self, inner: Arc<ComponentInner>) -> Component {
        Component {
            inner,
            health: Arc::downgrade(&self.inner),
        }
    }

    fn insert_new(
        &self,
        name: Cow<'static, str>,
        kind: ComponentKind,
        check: Option<CheckMeta>,
        initial: HealthState,
    ) -> Result<Arc<ComponentInner>, HealthError> {
        let mut map = lock(&self.inner.components);
        if map.contains_key(&*name) {
            return Err(HealthError::AlreadyRegistered {
                name: name.into_owned(),
            });
        }
        let component = Arc::new(ComponentInner::new(name.clone(), kind, check, initial));
        map.insert(name, Arc::clone(&component));
        Ok(component)
    }

    fn build_report(&self, include: impl Fn(ComponentKind) -> bool) -> Report {
        let now = Instant::now();
        let selected: Vec<Arc<ComponentInner>> = lock(&self.inner.components)
            .values()
            .filter(|component| include(component.kind))
            .cloned()
            .collect();
        let components: Vec<ComponentReport> = selected
            .iter()
            .map(|component| component.snapshot(now))
            .collect();
        let status = components
            .iter()
            .map(|component| component.state)
            .max()
            .unwrap_or(HealthState::Healthy);
        Report { status, components }
    }
}

// ---------------------------------------------------------------------------------------------
// Component handles
// ---------------------------------------------------------------------------------------------

/// A handle to one registered component, used by its owner to set its state.
///
/// A cheap [`Clone`]; every clone sets the same component. Dropping handles does not deregister the
/// component: call [`Component::deregister`], or hold a [`ComponentGuard`] from
/// [`Component::deregister_on_drop`]. A handle outlives deregistration (and the [`Health`]) safely:
/// setting its state still works but no report shows it.
#[derive(Clone)]
pub struct Component {
    inner: Arc<ComponentInner>,
    health: Weak<HealthInner>,
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = lock(&self.inner.data);
        f.debug_struct("Component")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.kind)
            .field("state", &data.state)
            .field("reason", &data.reason)
            .finish()
    }
}

impl Component {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The component's kind.
    pub fn kind(&self) -> ComponentKind {
        self.inner.kind
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        lock(&self.inner.data).state
    }

    /// The reason given with the current state, if any.
    pub fn reason(&self) -> Option<Cow<'static, str>> {
        lock(&self.inner.data).reason.clone()
    }

    /// Since when the current state has held. Setting the same state again does not move it.
    pub fn since(&self) -> Instant {
        lock(&self.inner.data).since
    }

    /// Sets the state and its reason (an empty reason is no reason).
    ///
    /// Setting the state it already has only replaces the reason; `since` stays. A change of state
    /// emits a tracing event (`info` if better, `warn` if worse).
    pub fn set(&self, state: HealthState, reason: impl Into<Cow<'static, str>>) {
        self.inner.set(state, reason_of(reason.into()));
    }

    /// Sets the state to [`HealthState::Healthy`] with no reason.
    pub fn healthy(&self) {
        self.inner.set(HealthState::Healthy, None);
    }

    /// Sets the state to [`HealthState::Degraded`].
    pub fn degraded(&self, reason: impl Into<Cow<'static, str>>) {
        self.set(HealthState::Degraded, reason);
    }

    /// Sets the state to [`HealthState::Unhealthy`].
    pub fn unhealthy(&self, reason: impl Into<Cow<'static, str>>) {
        self.set(HealthState::Unhealthy, reason);
    }

    /// The component as a report would show it now.
    pub fn report(&self) -> ComponentReport {
        self.inner.snapshot(Instant::now())
    }

    /// Whether reports still include this component.
    pub fn is_registered(&self) -> bool {
        self.health
            .upgrade()
            .is_some_and(|health| health.is_registered(&self.inner))
    }

    /// Removes this component from its [`Health`] (stopping its check, if it has one). Returns
    /// whether it was registered.
    ///
    /// Only this component is removed: if its name has since been registered again by someone
    /// else, that newer component stays.
    pub fn deregister(&self) -> bool {
        self.health
            .upgrade()
            .is_some_and(|health| health.remove_if_same(&self.inner))
    }

    /// Turns this handle into a guard that deregisters the component when dropped: hold it in a
    /// layer's shared state and the component goes away with the layer.
    pub fn deregister_on_drop(self) -> ComponentGuard {
        ComponentGuard { component: self }
    }
}

/// A [`Component`] handle that deregisters the component when dropped. Derefs to [`Component`].
///
/// Made by [`Component::deregister_on_drop`]. Other clones of the plain handle keep working after
/// the guard is dropped, but the component no longer shows in reports.
#[derive(Debug)]
pub struct ComponentGuard {
    component: Component,
}

impl Deref for ComponentGuard {
    type Target = Component;

    fn deref(&self) -> &Component {
        &self.component
    }
}

impl Drop for ComponentGuard {
    fn drop(&mut self) {
        self.component.deregister();
    }
}

// ---------------------------------------------------------------------------------------------
// Check tasks
// ---------------------------------------------------------------------------------------------

/// A handle to a running check, returned by [`Health::add_check`].
///
/// Dropping it detaches the check, which keeps running until [`CheckHandle::stop`], deregistration
/// of its component, or the drop of the last [`Health`] clone. Holds only weak references.
#[derive(Clone)]
pub struct CheckHandle {
    name: Cow<'static, str>,
    component: Weak<ComponentInner>,
    health: Weak<HealthInner>,
}

impl fmt::Debug for CheckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckHandle")
            .field("name", &self.name)
            .field("running", &self.is_running())
            .finish()
    }
}

impl CheckHandle {
    /// The name of the check's component.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the check (cancelling a run in progress) and deregisters its component, so that a
    /// stopped check's last state does not stay in the reports. Returns whether it was still
    /// registered (and so running until now); stopping twice is harmless.
    pub fn stop(&self) -> bool {
        let Some(component) = self.component.upgrade() else {
            return false;
        };
        let removed = self
            .health
            .upgrade()
            .is_some_and(|health| health.remove_if_same(&component));
        component.abort_check();
        removed
    }

    /// Whether the check is still registered and its task has not ended.
    pub fn is_running(&self) -> bool {
        let (Some(component), Some(health)) = (self.component.upgrade(), self.health.upgrade())
        else {
            return false;
        };
        let task_alive = component
            .check
            .as_ref()
            .and_then(|meta| meta.task.get())
            .is_some_and(|task| !task.is_finished());
        task_alive && health.is_registered(&component)
    }

    /// A handle to the check's component, while it is registered and the [`Health`] is alive.
    ///
    /// Setting its state by hand is allowed; the check overrides it at its next threshold crossing.
    pub fn component(&self) -> Option<Component> {
        let (component, health) = (self.component.upgrade()?, self.health.upgrade()?);
        health.is_registered(&component).then(|| Component {
            inner: component,
            health: Arc::downgrade(&health),
        })
    }
}

/// Aborts the task when dropped, so that a run abandoned by its timeout (or by a stopped check)
/// does not keep going.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background loop of one check. Holds only weak references to the health state.
///
/// `wake` is `Some` for a deep check: a notification runs it at once, or [`wake_spacing`] after its
/// previous run started if that is later (and its next run is an interval after the woken one). A
/// shallow check that turns its component unhealthy notifies every deep check.
async fn run_check<C: Check>(
    check: Arc<C>,
    config: CheckConfig,
    component: Weak<ComponentInner>,
    health: Weak<HealthInner>,
    wake: Option<Arc<Notify>>,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let spacing = wake_spacing(&config);
    let mut last_start: Option<Instant> = None;
    loop {
        match &wake {
            None => {
                ticker.tick().await;
            }
            Some(wake) => {
                if next_tick_or_wake(&mut ticker, wake).await {
                    // Rate limit: no sooner than `spacing` after the previous run started. Wake-ups
                    // while this waits are not seen: they coalesce into this one deferred run.
                    if let Some(earliest) = last_start.map(|at| at + spacing) {
                        tokio::time::sleep_until(earliest).await;
                    }
                    // Run now; the next scheduled run is a full interval after this one.
                    ticker.reset();
                }
            }
        }
        if !still_registered(&component, &health) {
            return;
        }
        last_start = Some(Instant::now());
        let outcome = run_once(&check, config.timeout).await;
        let Some(component) = component.upgrade() else {
            return;
        };
        let became_unhealthy = component.record(outcome);
        drop(component);
        if became_unhealthy && config.depth == CheckDepth::Shallow {
            if let Some(health) = health.upgrade() {
                tracing::debug!("shallow health check failing: running deep checks now");
                health.deep_wake.notify_waiters();
            }
        }
    }
}

/// The least time between the start of a deep check's run and a woken run after it:
/// `max(interval / 4, timeout)`, at most the interval. A shallow check flapping between failing and
/// passing wakes the deep checks at every failure; this bounds a woken check to about four times its
/// scheduled rate (and never starts a run sooner than one run's timeout after the last).
fn wake_spacing(config: &CheckConfig) -> Duration {
    (config.interval / 4)
        .max(config.timeout)
        .min(config.interval)
}

/// Waits for the ticker's next tick (`false`) or a wake-up (`true`), whichever comes first.
async fn next_tick_or_wake(ticker: &mut tokio::time::Interval, wake: &Notify) -> bool {
    // Registered from its creation: a `notify_waiters` after this line reaches it.
    let mut notified = std::pin::pin!(wake.notified());
    std::future::poll_fn(|cx| {
        if ticker.poll_tick(cx).is_ready() {
            return Poll::Ready(false);
        }
        notified.as_mut().poll(cx).map(|()| true)
    })
    .await
}

fn still_registered(component: &Weak<ComponentInner>, health: &Weak<HealthInner>) -> bool {
    match (component.upgrade(), health.upgrade()) {
        (Some(component), Some(health)) => health.is_registered(&component),
        _ => false,
    }
}

/// One run: in a task of its own (so a panic is a `JoinError`), bounded by the timeout.
async fn run_once<C: Check>(check: &Arc<C>, timeout: Duration) -> Result<(), String> {
    let check = Arc::clone(check);
    let mut run = AbortOnDrop(tokio::spawn(async move {
        let outcome = check.check().await;
        outcome.map_err(|error| error.to_string())
    }));
    match tokio::time::timeout(timeout, &mut run.0).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) if error.is_panic() => Err(format!(
            "check panicked: {}",
            panic_message(&*error.into_panic())
        )),
        Ok(Err(_)) => Err("check was cancelled".to_owned()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// A snapshot of some components and their aggregated status.
///
/// Made by [`Health::liveness`], [`Health::readiness`] and [`Health::report`]. Serializes to the JSON
/// shape shown in the [module docs](self): `{"status": ..., "components": [...]}`, components sorted
/// by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    status: HealthState,
    components: Vec<ComponentReport>,
}

impl Report {
    /// The worst state of the components (`Healthy` if there are none).
    pub fn status(&self) -> HealthState {
        self.status
    }

    /// `true` if every component is `Healthy`.
    pub fn is_healthy(&self) -> bool {
        self.status.is_healthy()
    }

    /// `true` unless some component is `Unhealthy`: the answer to "HTTP 200 or 503?".
    pub fn is_available(&self) -> bool {
        self.status.is_available()
    }

    /// The components, sorted by name.
    pub fn components(&self) -> &[ComponentReport] {
        &self.components
    }

    /// The component named `name`, if the report has it.
    pub fn component(&self, name: &str) -> Option<&ComponentReport> {
        self.components
            .binary_search_by(|component| (*component.name).cmp(name))
            .ok()
            .map(|index| &self.components[index])
    }

    /// The tier verdict over this report's checks: how many shallow, deep and comprehensive checks
    /// it has, which of them are failing, and the aggregated [`TierState`] (see
    /// [Tiers](self#tiers)). Pushed components (those without a check) count in no tier.
    pub fn tiers(&self) -> TierReport {
        TierReport::from_components(&self.components)
    }

    /// The report as compact JSON.
    pub fn to_json(&self) -> String {
        // Nothing in a report can fail to serialize; fall back to the bare status regardless.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"status":"{}","components":[]}}"#, self.status))
    }
}

/// One component in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentReport {
    name: Cow<'static, str>,
    kind: ComponentKind,
    state: HealthState,
    reason: Option<Cow<'static, str>>,
    #[serde(rename = "since", serialize_with = "serialize_rfc3339")]
    since_unix_ms: u64,
    #[serde(rename = "for_ms", serialize_with = "serialize_millis")]
    held_for: Duration,
    check: Option<CheckReport>,
}

impl ComponentReport {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component's kind.
    pub fn kind(&self) -> ComponentKind {
        self.kind
    }

    /// The component's state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Why it is in this state, if a reason was given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Wall-clock time, in milliseconds since the Unix epoch, since which the state has held
    /// (`"since"` in JSON, as RFC 3339).
    pub fn since_unix_ms(&self) -> u64 {
        self.since_unix_ms
    }

    /// How long the state had held when the report was taken (`"for_ms"` in JSON).
    pub fn held_for(&self) -> Duration {
        self.held_for
    }

    /// The check's counters, if the component is a check (`null` in JSON otherwise).
    pub fn check(&self) -> Option<&CheckReport> {
        self.check.as_ref()
    }
}

/// The check part of a [`ComponentReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    depth: CheckDepth,
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_error: Option<String>,
}

impl CheckReport {
    /// Whether the check is shallow or deep.
    pub fn depth(&self) -> CheckDepth {
        self.depth
    }

    /// Failures in a row, up to and including the last run.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Successes in a row, up to and including the last run.
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// The error of the last run, if it failed (even below the failure threshold).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------
// Tiers
// ---------------------------------------------------------------------------------------------

/// The tier verdict: the health of a service judged by its shallow, deep and comprehensive checks.
///
/// Ordered from best to worst (`Healthy < Degraded < Unhealthy < Critical`). It sits beside
/// [`HealthState`], not in it: the liveness and readiness status (and so `/healthz` and `/readyz`)
/// keep their meaning, and this is the finer verdict the control plane reads. Serializes as
/// `"healthy"`, `"degraded"`, `"unhealthy"` or `"critical"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TierState {
    /// Every check passes.
    #[default]
    Healthy,
    /// One or two shallow checks fail.
    Degraded,
    /// Three or more shallow checks fail, or a deep check fails.
    Unhealthy,
    /// A comprehensive (end-to-end) check fails.
    Critical,
}

impl TierState {
    /// Shallow checks failing at once that make the verdict [`TierState::Unhealthy`]: 3.
    pub const SHALLOW_FAILURES_UNHEALTHY: usize = 3;

    /// The verdict for these numbers of failing checks per tier (the table in
    /// [Tiers](self#tiers)):
    ///
    /// ```
    /// use palisade_core::health::TierState;
    ///
    /// assert_eq!(TierState::aggregate(0, 0, 0), TierState::Healthy);
    /// assert_eq!(TierState::aggregate(2, 0, 0), TierState::Degraded);
    /// assert_eq!(TierState::aggregate(3, 0, 0), TierState::Unhealthy);
    /// assert_eq!(TierState::aggregate(0, 1, 0), TierState::Unhealthy);
    /// assert_eq!(TierState::aggregate(0, 0, 1), TierState::Critical);
    /// ```
    pub const fn aggregate(
        shallow_failing: usize,
        deep_failing: usize,
        comprehensive_failing: usize,
    ) -> Self {
        if comprehensive_failing > 0 {
            Self::Critical
        } else if deep_failing > 0 || shallow_failing >= Self::SHALLOW_FAILURES_UNHEALTHY {
            Self::Unhealthy
        } else if shallow_failing > 0 {
            Self::Degraded
        } else {
            Self::Healthy
        }
    }

    /// The lowercase name, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for TierState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The checks of one tier in a [`TierReport`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TierSummary {
    checks: usize,
    failing: Vec<Cow<'static, str>>,
}

impl TierSummary {
    /// How many checks of this tier the report has.
    pub fn checks(&self) -> usize {
        self.checks
    }

    /// The names of the failing ones (their component is `Unhealthy`), sorted.
    pub fn failing(&self) -> &[Cow<'static, str>] {
        &self.failing
    }

    /// How many are failing.
    pub fn failing_count(&self) -> usize {
        self.failing.len()
    }
}

/// The tier verdict of a [`Report`], from [`Report::tiers`] or [`Health::tiers`].
///
/// Serializes as
/// `{"status": "degraded", "shallow": {"checks": 2, "failing": ["cache"]}, "deep": {...},
/// "comprehensive": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TierReport {
    status: TierState,
    shallow: TierSummary,
    deep: TierSummary,
    comprehensive: TierSummary,
}

impl TierReport {
    fn from_components(components: &[ComponentReport]) -> Self {
        let mut report = TierReport::default();
        for component in components {
            let Some(check) = &component.check else {
                continue;
            };
            let tier = report.tier_mut(check.depth);
            tier.checks += 1;
            if component.state == HealthState::Unhealthy {
                // Components are sorted by name, so each list is too.
                tier.failing.push(component.name.clone());
            }
        }
        report.status = TierState::aggregate(
            report.shallow.failing_count(),
            report.deep.failing_count(),
            report.comprehensive.failing_count(),
        );
        report
    }

    fn tier_mut(&mut self, depth: CheckDepth) -> &mut TierSummary {
        match depth {
            CheckDepth::Shallow => &mut self.shallow,
            CheckDepth::Deep => &mut self.deep,
            CheckDepth::Comprehensive => &mut self.comprehensive,
        }
    }

    /// The aggregated verdict.
    pub fn status(&self) -> TierState {
        self.status
    }

    /// The checks of one tier.
    pub fn tier(&self, depth: CheckDepth) -> &TierSummary {
        match depth {
            CheckDepth::Shallow => &self.shallow,
            CheckDepth::Deep => &self.deep,
            CheckDepth::Comprehensive => &self.comprehensive,
        }
    }
}

fn serialize_rfc3339<S: Serializer>(ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_ms(*ms))
}

fn serialize_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_component(failure_threshold: u32, success_threshold: u32) -> ComponentInner {
        ComponentInner::new(
            Cow::Borrowed("c"),
            ComponentKind::Readiness,
            Some(CheckMeta {
                depth: CheckDepth::Shallow,
                failure_threshold,
                success_threshold,
                task: OnceLock::new(),
            }),
            HealthState::Healthy,
        )
    }

    fn state(c: &ComponentInner) -> (HealthState, Option<String>) {
        let data = lock(&c.data);
        (data.state, data.reason.as_deref().map(str::to_owned))
    }

    #[tokio::test(start_paused = true)]
    async fn health_record_applies_thresholds() {
        let c = check_component(2, 2);
        c.record(Err("a".into()));
        assert_eq!(state(&c), (HealthState::Healthy, None));
        c.record(Err("b".into()));
        assert_eq!(state(&c), (HealthState::Unhealthy, Some("b".into())));
        c.record(Err("c".into()));
        assert_eq!(state(&c), (HealthState::Unhealthy, Some("c".into())));
        c.record(Ok(()));
        assert_eq!(state(&c).0, HealthState::Unhealthy);
        c.record(Ok(()));
        assert_eq!(state(&c), (HealthState::Healthy, None));
    }

    /// A shallow check flapping every run (fails, passes, fails …, each failure turning it
    /// unhealthy) wakes the deep checks every 2 s; each deep check still runs at most once per
    /// `max(interval / 4, timeout)`, the wake-ups meanwhile coalesced into one deferred run.
    #[tokio::test(start_paused = true)]
    async fn health_a_flapping_shallow_check_does_not_hammer_the_deep_checks() {
        use std::sync::atomic::{AtomicU32, Ordering};

        let t0 = Instant::now();
        let health = Health::new();
        let flips = Arc::new(AtomicU32::new(0));
        let shallow = CheckConfig::shallow()
            .interval(Duration::from_secs(1))
            .failure_threshold(1)
            .success_threshold(1);
        let _s = health
            .add_check("event_loop", ComponentKind::Liveness, shallow, move || {
                let failing = flips.fetch_add(1, Ordering::SeqCst) % 2 == 1;
                async move {
                    if failing {
                        Err("flap".to_owned())
                    } else {
                        Ok(())
                    }
                }
            })
            .unwrap();
        let deep = |name: &'static str, config: CheckConfig| {
            let runs = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&runs);
            let handle = health
                .add_check(name, ComponentKind::Readiness, config, move || {
                    lock(&log).push(Instant::now().duration_since(t0).as_secs());
                    async { Ok::<(), String>(()) }
                })
                .unwrap();
            (runs, handle)
        };
        // Interval 60 s, timeout 5 s: at most one run per 15 s (interval / 4).
        let (db, _d) = deep("db", CheckConfig::deep().interval(Duration::from_secs(60)));
        // Interval 8 s, timeout 5 s: at most one run per 5 s (its timeout).
        let (cache, _c) = deep(
            "cache",
            CheckConfig::deep().interval(Duration::from_secs(8)),
        );
        tokio::time::sleep(Duration::from_millis(120_500)).await;

        let every = |step: u64| (0..=120 / step).map(|i| i * step).collect::<Vec<_>>();
        assert_eq!(*lock(&db), every(15));
        assert_eq!(*lock(&cache), every(5));
    }

    #[test]
    fn health_states_order_worst_last() {
        assert!(HealthState::Healthy < HealthState::Degraded);
        assert!(HealthState::Degraded < HealthState::Unhealthy);
        assert_eq!(
            HealthState::Degraded.worst(HealthState::Unhealthy),
            HealthState::Unhealthy
        );
        assert!(HealthState::Degraded.is_available());
        assert!(!HealthState::Unhealthy.is_available());
    }

    #[test]
    fn health_panic_message_reads_common_payloads() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42_u32), "non-string panic payload");
    }
}
