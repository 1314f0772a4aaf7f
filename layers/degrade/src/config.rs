//! The builder: every knob of a gate, validated once in `build()`.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use palisade_core::audit::Audit;
use palisade_core::classify::Grpc;
use palisade_core::health::{ComponentKind, Health};
use palisade_core::signal::LoadSignal;
use tokio::time::Instant;

use crate::auto::{Auto, AutoState, Ring, SignalKind, Signals, Trigger};
use crate::level::{Level, Priority};
use crate::priority::{PriorityFn, RequestInfo, Rules};
use crate::shared::{Control, Core, Publish, Shared, Source, AUTO_BIT};
use crate::GateLayer;

/// The variable read by [`Builder::level_from_env`]: `1`/`true`/`yes`/`on` start the gate in
/// [`Level::ReadOnly`]; `0`/`false`/`no`/`off` or empty say nothing.
pub const READ_ONLY_VAR: &str = "PALISADE_READ_ONLY";

/// The variable read by [`Builder::level_from_env`]: a level name (see [`Level`]'s `FromStr`) to start
/// the gate at; empty says nothing.
pub const LEVEL_VAR: &str = "PALISADE_GATE_LEVEL";

pub use palisade_core::config::BuildError;

/// The longest [`name`](Builder::name), in bytes: 128.
pub const MAX_NAME_BYTES: usize = 128;

/// The most [`route`](Builder::route) prefixes a gate takes: 1024 (each at most 1024 bytes).
pub const MAX_ROUTES: usize = 1024;

/// The most `auto_*` triggers a gate takes: 16. Every evaluation checks each.
pub const MAX_TRIGGERS: usize = 16;

/// The longest [`retry_after`](Builder::retry_after) hint, [`auto_dwell`](Builder::auto_dwell),
/// [`auto_interval`](Builder::auto_interval) and [`auto_window`](Builder::auto_window): 1 hour.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The longest [`manual_hold`](Builder::manual_hold): 7 days.
pub const MAX_MANUAL_HOLD: Duration = Duration::from_secs(7 * 86_400);

/// The highest enter threshold of [`auto_in_flight`](Builder::auto_in_flight): 2³².
pub const MAX_IN_FLIGHT_THRESHOLD: u64 = 1 << 32;

/// The highest enter threshold of [`auto_latency_p95`](Builder::auto_latency_p95): 268.435455 s,
/// where the sample ring's latencies saturate (a higher threshold could never be reached).
pub const MAX_LATENCY_THRESHOLD: Duration = Duration::from_micros(crate::auto::LAT_MAX);

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "degradation gate";

/// Builds a [`GateLayer`].
///
/// Defaults: starts at [`Level::Normal`]; floors as in the table on [`Level`]; every request is
/// [`Priority::Normal`] unless a rule says otherwise; rejections carry a `Retry-After` hint of 5 s;
/// load published per level as [`Level::default_load`]; no health component, no audit; automatic
/// mode off.
///
/// Automatic mode is on as soon as one `auto_*` trigger is set; see the [crate docs](crate#automatic-levels).
pub struct Builder<C = Grpc> {
    name: Cow<'static, str>,
    classifier: C,
    initial: Level,
    initial_reason: Cow<'static, str>,
    env_error: Option<BuildError>,
    floors: [Option<Priority>; 5],
    floor_error: Option<BuildError>,
    default_priority: Priority,
    routes: Vec<(String, Priority)>,
    header: Option<(HeaderName, Priority)>,
    func: Option<PriorityFn>,
    retry_after: Option<Duration>,
    health: Option<Health>,
    degraded_at: Level,
    unhealthy_at: Level,
    audit: Audit,
    load: Option<LoadSignal>,
    load_at: [f64; 5],
    triggers: Vec<(&'static str, Trigger)>,
    dwell: Duration,
    interval: Duration,
    window: Duration,
    min_samples: u32,
    samples: usize,
    manual_hold: Option<Duration>,
}

impl Default for Builder<Grpc> {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            classifier: Grpc::new(),
            initial: Level::Normal,
            initial_reason: Cow::Borrowed("initial level"),
            env_error: None,
            floors: [
                Some(Priority::Background),
                Some(Priority::Normal),
                Some(Priority::Critical),
                Some(Priority::Background),
                None,
            ],
            floor_error: None,
            default_priority: Priority::Normal,
            routes: Vec::new(),
            header: None,
            func: None,
            retry_after: Some(Duration::from_secs(5)),
            health: None,
            degraded_at: Level::Degraded,
            unhealthy_at: Level::Maintenance,
            audit: Audit::disabled(),
            load: None,
            load_at: Level::ALL.map(Level::default_load),
            triggers: Vec::new(),
            dwell: Duration::from_secs(10),
            interval: Duration::from_millis(100),
            window: Duration::from_secs(10),
            min_samples: 20,
            samples: 1024,
            manual_hold: None,
        }
    }
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("initial", &self.initial)
            .field("floors", &self.floors)
            .field("default_priority", &self.default_priority)
            .field("routes", &self.routes)
            .field("header", &self.header)
            .field("priority_fn", &self.func.as_ref().map(|_| "Fn"))
            .field("retry_after", &self.retry_after)
            .field("triggers", &self.triggers)
            .field("dwell", &self.dwell)
            .field("interval", &self.interval)
            .field("window", &self.window)
            .field("manual_hold", &self.manual_hold)
            .finish_non_exhaustive()
    }
}

impl Builder<Grpc> {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Parses a boolean-ish variable strictly.
fn parse_flag(name: &'static str, value: &str) -> Result<bool, BuildError> {
    const TRUE: [&str; 4] = ["1", "true", "yes", "on"];
    const FALSE: [&str; 4] = ["0", "false", "no", "off"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(value)) {
        Ok(true)
    } else if FALSE.iter().any(|t| t.eq_ignore_ascii_case(value)) {
        Ok(false)
    } else {
        let shown: String = value
            .chars()
            .take(40)
            .flat_map(char::escape_debug)
            .collect();
        Err(BuildError::new(
            LAYER,
            name,
            format!("\"{shown}\" is not one of 1, true, yes, on, 0, false, no, off"),
        ))
    }
}

impl<C> Builder<C> {
    /// Names the gate: the health component is `gate.<name>`, and audit records and traces carry it.
    /// At most [`MAX_NAME_BYTES`] bytes. Two gates of one name on one [`Health`] get distinct
    /// components (`gate.<name>`, `gate.<name>#2`, ...; see [`Health::register`]).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Classifies outcomes with `classifier` for the error-rate signal (default [`Grpc`]: HTTP 5xx,
    /// gRPC server-error codes in the headers, every `Err`). Verdicts that need the end of the body
    /// (gRPC trailers) are not counted: the gate does not wrap response bodies.
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            classifier,
            initial: self.initial,
            initial_reason: self.initial_reason,
            env_error: self.env_error,
            floors: self.floors,
            floor_error: self.floor_error,
            default_priority: self.default_priority,
            routes: self.routes,
            header: self.header,
            func: self.func,
            retry_after: self.retry_after,
            health: self.health,
            degraded_at: self.degraded_at,
            unhealthy_at: self.unhealthy_at,
            audit: self.audit,
            load: self.load,
            load_at: self.load_at,
            triggers: self.triggers,
            dwell: self.dwell,
            interval: self.interval,
            window: self.window,
            min_samples: self.min_samples,
            samples: self.samples,
            manual_hold: self.manual_hold,
        }
    }

    /// The level the gate starts at (default `Normal`). In automatic mode a starting level other than
    /// `Normal` is an operator's level: it holds until [cleared](crate::GateHandle::clear_manual).
    pub fn initial_level(mut self, level: Level) -> Self {
        self.initial = level;
        self.initial_reason = Cow::Borrowed("initial level");
        self
    }

    /// Reads the starting level from the process environment: see
    /// [`level_from_env_with`](Self::level_from_env_with).
    pub fn level_from_env(self) -> Self {
        self.level_from_env_with(|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Reads the starting level from `env` (called with a variable name; `None` when unset), so tests
    /// need not touch the process environment.
    ///
    /// - [`PALISADE_READ_ONLY`](READ_ONLY_VAR): `1`, `true`, `yes`, `on` → [`Level::ReadOnly`];
    ///   `0`, `false`, `no`, `off` → no opinion (ASCII case-insensitive).
    /// - [`PALISADE_GATE_LEVEL`](LEVEL_VAR): a level name (`normal`, `degraded`, `critical`,
    ///   `read_only`, `maintenance`, ...).
    ///
    /// An empty variable counts as unset. When both give a level, the more severe wins; when
    /// neither does, the level set so far (default `Normal`) stays. Anything else — a typo, spaces,
    /// a value that is not valid unicode — makes [`build`](Self::build) fail with a [`BuildError`]
    /// naming the variable.
    pub fn level_from_env_with(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        let read = |name: &'static str| env(name).filter(|v| !v.is_empty());
        let mut level: Option<(Level, String)> = None;
        if let Some(v) = read(READ_ONLY_VAR) {
            match parse_flag(READ_ONLY_VAR, &v) {
                Ok(true) => level = Some((Level::ReadOnly, format!("{READ_ONLY_VAR}={v}"))),
                Ok(false) => {}
                Err(e) => {
                    self.env_error.get_or_insert(e);
                }
            }
        }
        if let Some(v) = read(LEVEL_VAR) {
            match v.parse::<Level>() {
                Ok(l) if level.as_ref().is_none_or(|(cur, _)| l > *cur) => {
                    level = Some((l, format!("{LEVEL_VAR}={v}")));
                }
                Ok(_) => {}
                Err(e) => {
                    self.env_error
                        .get_or_insert(BuildError::new(LAYER, LEVEL_VAR, e.to_string()));
                }
            }
        }
        if let Some((l, why)) = level {
            self.initial = l;
            self.initial_reason = Cow::Owned(format!("set from the environment: {why}"));
        }
        self
    }

    /// Sets the lowest class `level` admits (see the table on [`Level`]). `Normal` always admits
    /// everything and `Maintenance` nothing; setting either is a build error.
    pub fn floor(mut self, level: Level, lowest_admitted: Priority) -> Self {
        if matches!(level, Level::Normal | Level::Maintenance) {
            self.floor_error.get_or_insert(BuildError::new(
                LAYER,
                "floor",
                format!("the floor of {level} cannot be changed"),
            ));
        } else {
            self.floors[level.index()] = Some(lowest_admitted);
        }
        self
    }

    /// The class of requests no rule classifies (default [`Priority::Normal`]).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default_priority = priority;
        self
    }

    /// Requests whose path starts with `prefix`, on a segment boundary, are of class `priority`:
    /// `/api` matches `/api` and `/api/orders` but not `/apis`; `/api/` matches everything under it.
    /// The longest matching prefix wins. Prefixes must start with `/`; at most [`MAX_ROUTES`]
    /// prefixes of at most 1024 bytes each.
    pub fn route(mut self, prefix: impl Into<String>, priority: Priority) -> Self {
        self.routes.push((prefix.into(), priority));
        self
    }

    /// Reads the class from the header `name` (e.g. `x-priority`): `critical`, `normal` or
    /// `background`, ASCII case-insensitive, surrounding spaces allowed. An unknown or malformed value
    /// is ignored, as if the header were absent (the route table, then the default class decide);
    /// it is never an error.
    ///
    /// The header is set by the client: behind a public edge, cap what it may claim with
    /// [`priority_header_max`](Self::priority_header_max).
    pub fn priority_header(mut self, name: HeaderName) -> Self {
        let cap = self.header.as_ref().map_or(Priority::Critical, |h| h.1);
        self.header = Some((name, cap));
        self
    }

    /// The highest class the priority header may claim (default `Critical`); higher claims are
    /// lowered to it. Reads `x-priority` if no [`priority_header`](Self::priority_header) was set.
    pub fn priority_header_max(mut self, max: Priority) -> Self {
        if let Some(h) = &mut self.header {
            h.1 = max;
        } else {
            self.header = Some((HeaderName::from_static("x-priority"), max));
        }
        self
    }

    /// Classifies requests with a closure; `None` defers to the header, the route table and the
    /// default class. Runs only when the level is not `Normal`.
    pub fn priority_fn(
        mut self,
        f: impl Fn(&RequestInfo<'_>) -> Option<Priority> + Send + Sync + 'static,
    ) -> Self {
        self.func = Some(Arc::new(f));
        self
    }

    /// The `Retry-After` hint on [`Shed`](crate::Shed) and [`ReadOnly`](crate::ReadOnly) rejections
    /// (default 5 s, at most [`MAX_DURATION`]).
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = Some(hint);
        self
    }

    /// Rejections carry no `Retry-After` hint.
    pub fn no_retry_after(mut self) -> Self {
        self.retry_after = None;
        self
    }

    /// Reports to `health`: a readiness component `gate.<name>`, healthy below `Degraded`, degraded
    /// from `Degraded`, unhealthy at `Maintenance` (change with [`health_levels`](Self::health_levels)).
    /// The component goes away when the layer and every handle are dropped.
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// The levels from which the health component is degraded and unhealthy (defaults `Degraded` and
    /// `Maintenance`). `degraded_at` must not be above `unhealthy_at`; `degraded_at` of `Normal` makes
    /// the component never healthy.
    pub fn health_levels(mut self, degraded_at: Level, unhealthy_at: Level) -> Self {
        self.degraded_at = degraded_at;
        self.unhealthy_at = unhealthy_at;
        self
    }

    /// Records every level change (`gate.level_changed`, with from, to, reason, source and the signals
    /// that caused it) in `audit`.
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Publishes the load into `signal` (a clone shares the value) instead of a signal of its own.
    pub fn load_signal(mut self, signal: &LoadSignal) -> Self {
        self.load = Some(signal.clone());
        self
    }

    /// The load published at `level` (default [`Level::default_load`]), in `[0, 1]`.
    pub fn load_at(mut self, level: Level, load: f64) -> Self {
        self.load_at[level.index()] = load;
        self
    }

    fn trigger(
        mut self,
        setting: &'static str,
        kind: SignalKind,
        level: Level,
        enter: f64,
        leave: f64,
    ) -> Self {
        self.triggers.push((
            setting,
            Trigger {
                kind,
                level,
                enter,
                leave,
            },
        ));
        self
    }

    /// Automatic mode: go to `level` when `enter` or more requests are in flight through the gate; leave
    /// when fewer than `leave` have been for the dwell time. `enter` is at most
    /// [`MAX_IN_FLIGHT_THRESHOLD`]. At most [`MAX_TRIGGERS`] triggers in all.
    pub fn auto_in_flight(self, level: Level, enter: u64, leave: u64) -> Self {
        self.trigger(
            "auto_in_flight",
            SignalKind::InFlight,
            level,
            enter as f64,
            leave as f64,
        )
    }

    /// Automatic mode: go to `level` when the p95 latency over the window reaches `enter`; leave when it
    /// has been below `leave` for the dwell time. Thresholds are counted in whole microseconds
    /// (sub-microsecond parts are dropped; `enter` must be at least 1 µs) and `enter` is at most
    /// [`MAX_LATENCY_THRESHOLD`].
    pub fn auto_latency_p95(self, level: Level, enter: Duration, leave: Duration) -> Self {
        self.trigger(
            "auto_latency_p95",
            SignalKind::P95Latency,
            level,
            enter.as_micros() as f64,
            leave.as_micros() as f64,
        )
    }

    /// Automatic mode: go to `level` when the error rate over the window reaches `enter` (0–1]; leave
    /// when it has been below `leave` for the dwell time.
    pub fn auto_error_rate(self, level: Level, enter: f64, leave: f64) -> Self {
        self.trigger(
            "auto_error_rate",
            SignalKind::ErrorRate,
            level,
            enter,
            leave,
        )
    }

    /// Automatic mode: how long the signals holding a level must stay below their leave thresholds,
    /// continuously, before the gate steps down (default 10 s): `auto_dwell(30 s)` with a latency
    /// trigger leaving at 300 ms leaves only after 30 s below 300 ms. Time at the level before the
    /// signals dropped does not count; a signal back at or above its leave threshold restarts it.
    /// Stepping up is immediate. See the [crate docs](crate#automatic-levels).
    pub fn auto_dwell(mut self, dwell: Duration) -> Self {
        self.dwell = dwell;
        self
    }

    /// Automatic mode: the request path evaluates the signals at most this often (default 100 ms; zero
    /// evaluates on every request; at most [`MAX_DURATION`]).
    pub fn auto_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Automatic mode: the p95 latency and the error rate are over calls that finished in the last
    /// `window` (default 10 s; above zero and at most [`MAX_DURATION`]; counted in whole milliseconds,
    /// rounded up).
    pub fn auto_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Automatic mode: the p95 latency and the error rate count only with at least `n` calls in the
    /// window (default 20); below that they neither enter nor hold a level.
    pub fn auto_min_samples(mut self, n: u32) -> Self {
        self.min_samples = n;
        self
    }

    /// Automatic mode: how many of the most recent calls are kept for the p95 latency and the error
    /// rate (default 1024, from 16 to 65 536). Under heavy traffic the window is effectively the last
    /// `n` calls.
    pub fn auto_samples(mut self, n: usize) -> Self {
        self.samples = n;
        self
    }

    /// Automatic mode: an operator's level ([`GateHandle::set_level`](crate::GateHandle::set_level))
    /// holds for `hold` (at most [`MAX_MANUAL_HOLD`]), then the automatic level takes over again.
    /// Default: it holds until [cleared](crate::GateHandle::clear_manual).
    pub fn manual_hold(mut self, hold: Duration) -> Self {
        self.manual_hold = Some(hold);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        if let Some(e) = &self.env_error {
            return Err(e.clone());
        }
        if let Some(e) = &self.floor_error {
            return Err(e.clone());
        }
        if self.name.len() > MAX_NAME_BYTES {
            return Err(BuildError::new(
                LAYER,
                "name",
                format!("must be at most {MAX_NAME_BYTES} bytes"),
            ));
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(BuildError::new(
                LAYER,
                "route",
                format!("at most {MAX_ROUTES} prefixes"),
            ));
        }
        if self.triggers.len() > MAX_TRIGGERS {
            return Err(BuildError::new(
                LAYER,
                "auto_*",
                format!("at most {MAX_TRIGGERS} automatic triggers"),
            ));
        }
        if self.retry_after.is_some_and(|d| d > MAX_DURATION) {
            return Err(BuildError::new(LAYER, "retry_after", "must be at most 1 h"));
        }
        if self.manual_hold.is_some_and(|d| d > MAX_MANUAL_HOLD) {
            return Err(BuildError::new(
                LAYER,
                "manual_hold",
                "must be at most 7 days",
            ));
        }
        if self.floors[Level::Degraded.index()] > self.floors[Level::Critical.index()] {
            return Err(BuildError::new(
                LAYER,
                "floor",
                "Critical must admit no more than Degraded",
            ));
        }
        for (i, (prefix, _)) in self.routes.iter().enumerate() {
            if !prefix.starts_with('/') || prefix.len() > 1024 {
                return Err(BuildError::new(
                    LAYER,
                    "route",
                    format!(
                        "prefix \"{}\" must start with `/` and be at most 1024 bytes",
                        prefix.escape_debug()
                    ),
                ));
            }
            if self.routes[..i].iter().any(|(p, _)| p == prefix) {
                return Err(BuildError::new(
                    LAYER,
                    "route",
                    format!("prefix \"{}\" is given twice", prefix.escape_debug()),
                ));
            }
        }
        if self.degraded_at > self.unhealthy_at {
            return Err(BuildError::new(
                LAYER,
                "health_levels",
                "degraded_at must not be above unhealthy_at",
            ));
        }
        if let Some(&l) = self.load_at.iter().find(|l| !(0.0..=1.0).contains(*l)) {
            return Err(BuildError::new(
                LAYER,
                "load_at",
                format!("{l} is not in [0, 1]"),
            ));
        }
        for (setting, t) in &self.triggers {
            if !matches!(t.level, Level::Degraded | Level::Critical | Level::ReadOnly) {
                return Err(BuildError::new(LAYER,
                    setting,
                    format!(
                        "automatic mode goes to degraded, critical or read_only, not {}; set {} by hand",
                        t.level, t.level
                    ),
                ));
            }
            if t.enter.is_nan() || t.leave.is_nan() || t.enter <= 0.0 || t.leave < 0.0 {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    if t.kind == SignalKind::P95Latency {
                        "thresholds are counted in whole microseconds; enter must be at least 1 µs"
                    } else {
                        "thresholds must be numbers, enter above zero"
                    },
                ));
            }
            if t.leave >= t.enter {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    "the leave threshold must be below the enter threshold",
                ));
            }
            if t.kind == SignalKind::ErrorRate && t.enter > 1.0 {
                return Err(BuildError::new(LAYER, setting, "error rates are in (0, 1]"));
            }
            if t.kind == SignalKind::InFlight && t.enter > MAX_IN_FLIGHT_THRESHOLD as f64 {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("the enter threshold must be at most {MAX_IN_FLIGHT_THRESHOLD}"),
                ));
            }
            if t.kind == SignalKind::P95Latency && t.enter > crate::auto::LAT_MAX as f64 {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!(
                        "the enter threshold must be at most {MAX_LATENCY_THRESHOLD:?} (latencies saturate there)"
                    ),
                ));
            }
        }
        if !self.triggers.is_empty() {
            for (setting, d) in [("auto_dwell", self.dwell), ("auto_interval", self.interval)] {
                if d > MAX_DURATION {
                    return Err(BuildError::new(LAYER, setting, "must be at most 1 h"));
                }
            }
            if self.window.is_zero() || self.window > MAX_DURATION {
                return Err(BuildError::new(
                    LAYER,
                    "auto_window",
                    "must be above zero and at most 1 h",
                ));
            }
            if self.min_samples == 0 {
                return Err(BuildError::new(
                    LAYER,
                    "auto_min_samples",
                    "must be at least 1",
                ));
            }
            if !(16..=65_536).contains(&self.samples) {
                return Err(BuildError::new(
                    LAYER,
                    "auto_samples",
                    "must be between 16 and 65536",
                ));
            }
            if self.min_samples as usize > self.samples {
                return Err(BuildError::new(
                    LAYER,
                    "auto_min_samples",
                    "must not exceed auto_samples",
                ));
            }
        }
        Ok(())
    }

    /// Builds the layer. Its state is shared by every service it wraps (every route, every clone) and
    /// by every handle.
    ///
    /// # Errors
    ///
    /// A setting that cannot work, or a bad environment variable read by
    /// [`level_from_env_with`](Self::level_from_env_with); the error names it.
    pub fn build(self) -> Result<GateLayer<C>, BuildError> {
        self.validate()?;
        let now = Instant::now();
        let mut routes: Vec<(Box<str>, Priority)> = self
            .routes
            .into_iter()
            .map(|(p, c)| (p.into_boxed_str(), c))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        let auto = (!self.triggers.is_empty()).then(|| Auto {
            sampling: self
                .triggers
                .iter()
                .any(|(_, t)| t.kind != SignalKind::InFlight),
            triggers: self.triggers.iter().map(|&(_, t)| t).collect(),
            dwell: self.dwell,
            interval_ns: u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX),
            // Whole milliseconds, rounded up: a window is never shorter than configured.
            window_ms: u64::try_from(self.window.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX),
            min_samples: self.min_samples,
            ring: Ring::new(self.samples),
            in_flight: AtomicU64::new(0),
            next_eval: AtomicU64::new(0),
        });
        let auto_state = auto.as_ref().map(|a| AutoState {
            level: Level::Normal,
            held_at: [None; 5],
            scratch: Vec::with_capacity(a.ring.capacity()),
        });
        let component = self.health.as_ref().map(|h| {
            h.register(format!("gate.{}", self.name), ComponentKind::Readiness)
                .deregister_on_drop()
        });
        if let Some(c) = &component {
            // The state of the level the gate is at before any change: `Normal` (a different
            // starting level is applied below, as a change). With `health_levels(Normal, _)` the
            // component is degraded (or unhealthy) from the start, not healthy until a first change.
            if Level::Normal >= self.unhealthy_at {
                c.unhealthy("level normal: initial level");
            } else if Level::Normal >= self.degraded_at {
                c.degraded("level normal: initial level");
            } else {
                c.healthy();
            }
        }
        let load = self.load.unwrap_or_default();
        load.set(self.load_at[Level::Normal.index()]);
        let auto_bit = if auto.is_some() { AUTO_BIT } else { 0 };
        let core = Core {
            word: AtomicU8::new(auto_bit),
            name: self.name,
            floors: self.floors,
            rules: Rules {
                default: self.default_priority,
                routes: routes.into_boxed_slice(),
                header: self.header,
                func: self.func,
            },
            retry_after: self.retry_after,
            manual_hold: self.manual_hold,
            auto,
            epoch: now,
            shed_total: AtomicU64::new(0),
            read_only_total: AtomicU64::new(0),
            control: Mutex::new(Control {
                level: Level::Normal,
                manual: None,
                auto: auto_state,
                last_signals: Signals::default(),
            }),
            publish: Publish {
                component,
                degraded_at: self.degraded_at,
                unhealthy_at: self.unhealthy_at,
                audit: self.audit,
                load,
                load_at: self.load_at,
            },
        };
        if self.initial != Level::Normal {
            core.set_manual(self.initial, None, Source::Startup, self.initial_reason);
        }
        Ok(GateLayer::from_shared(Arc::new(Shared {
            core,
            classifier: self.classifier,
        })))
    }
}
