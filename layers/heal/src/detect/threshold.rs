//! Threshold with a window: "N consecutive breaches within W", latched until its recovery twin holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::guard::{engine_detector, guard_setters, Engine, Guards, Judgement, Outcome, Rule};
use super::stats::Ring;
use super::{BuildError, Sample, Window, MAX_WINDOW};

const NAME: &str = "threshold detector";

/// Which side of the bound is a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// A value strictly above the bound breaches (latency, error rate).
    Above,
    /// A value strictly below the bound breaches (a health check reported as 1 = pass, 0 = fail;
    /// throughput; free capacity).
    Below,
}

impl Direction {
    fn beyond(self, x: f64, bound: f64) -> bool {
        match self {
            Direction::Above => x > bound,
            Direction::Below => x < bound,
        }
    }
}

/// When a tripped [`Threshold`] clears: the "recovery twin" of its trigger.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recovery {
    /// This many consecutive samples not beyond the trigger bound ("M consecutive greens").
    Greens(usize),
    /// Every sample on the healthy side of `bound` (strictly below it for an
    /// [`above`](ThresholdBuilder::above) trigger, above it for a [`below`](ThresholdBuilder::below) one)
    /// from one sample to another `held_for` later ("below 2 s for 10 min").
    /// A sample that is not resets the clock.
    Healthy {
        /// The recovery bound, on the healthy side of the trigger bound (or equal to it).
        bound: f64,
        /// How long the signal must stay on the healthy side.
        held_for: Duration,
    },
}

/// "N consecutive breaches within W": anomalous once the last `count` samples were all beyond the bound
/// and the first of them is at most `within` before the last; then anomalous until its [`Recovery`]
/// holds (default: one sample not beyond the bound).
///
/// The design's defaults, each one builder:
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, Status, Threshold};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// const MIN: Duration = Duration::from_secs(60);
/// // /healthz reported as 1 (pass) or 0 (fail): fails 3 times within 15 min.
/// let healthz = Threshold::builder("/healthz").below(0.5).count(3).within(15 * MIN).build().unwrap();
/// // /readyz: 2 times within 10 min.
/// let readyz = Threshold::builder("/readyz").below(0.5).count(2).within(10 * MIN).build().unwrap();
/// // Response time > 3 s for 5 consecutive checks; recovered once < 2 s for 10 min.
/// let mut slow = Threshold::builder("GET / p99")
///     .above(3.0)
///     .count(5)
///     .recover_below(2.0, 10 * MIN)
///     .build()
///     .unwrap();
///
/// let t0 = Instant::now();
/// let at = |m: u32| t0 + m * MIN;
/// for m in 0..4 {
///     assert_eq!(slow.observe(Sample::new(3.5, at(m))).status, Status::Normal);
/// }
/// let tripped = slow.observe(Sample::new(3.5, at(4)));
/// assert_eq!(tripped.status, Status::Anomalous);
/// assert_eq!(tripped.since, Some(at(0)));
/// // 2.5 s is no longer a breach, but not yet a recovery: the alarm holds.
/// assert_eq!(slow.observe(Sample::new(2.5, at(5))).status, Status::Anomalous);
/// assert_eq!(slow.observe(Sample::new(1.0, at(6))).status, Status::Anomalous);
/// assert_eq!(slow.observe(Sample::new(1.0, at(15))).status, Status::Anomalous);
/// assert_eq!(slow.observe(Sample::new(1.0, at(16))).status, Status::Normal); // < 2 s for 10 min
/// # drop((healthz, readyz));
/// ```
#[derive(Debug)]
pub struct Threshold {
    engine: Engine<ThresholdRule>,
}

impl Threshold {
    /// A builder for a threshold on `signal`. Call [`above`](ThresholdBuilder::above) or
    /// [`below`](ThresholdBuilder::below).
    pub fn builder(signal: impl Into<Arc<str>>) -> ThresholdBuilder {
        ThresholdBuilder {
            signal: signal.into(),
            bound: None,
            count: 1,
            within: None,
            recovery: Recovery::Greens(1),
            recovery_setter: None,
            guards: Guards::with_warm_up(0),
        }
    }
}

engine_detector!(Threshold);

/// Settings of a [`Threshold`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct ThresholdBuilder {
    signal: Arc<str>,
    bound: Option<(Direction, f64)>,
    count: usize,
    within: Option<Duration>,
    recovery: Recovery,
    /// Which of `recover_below` / `recover_above` set `recovery` (and so which trigger it is for).
    recovery_setter: Option<RecoverySetter>,
    guards: Guards,
}

/// `recover_below` is for an `above` trigger, `recover_above` for a `below` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecoverySetter {
    Below,
    Above,
}

impl RecoverySetter {
    fn name(self) -> &'static str {
        match self {
            RecoverySetter::Below => "recover_below",
            RecoverySetter::Above => "recover_above",
        }
    }

    /// The trigger this recovery belongs to.
    fn trigger(self) -> Direction {
        match self {
            RecoverySetter::Below => Direction::Above,
            RecoverySetter::Above => Direction::Below,
        }
    }
}

impl ThresholdBuilder {
    /// A breach is a value strictly above `bound`.
    pub fn above(mut self, bound: f64) -> Self {
        self.bound = Some((Direction::Above, bound));
        self
    }

    /// A breach is a value strictly below `bound`.
    pub fn below(mut self, bound: f64) -> Self {
        self.bound = Some((Direction::Below, bound));
        self
    }

    /// How many consecutive breaches trip it, `1..=`[`MAX_WINDOW`]. Default 1.
    pub fn count(mut self, n: usize) -> Self {
        self.count = n;
        self
    }

    /// The longest time the `count` breaches may span (first to last). Default: no limit.
    pub fn within(mut self, w: Duration) -> Self {
        self.within = Some(w);
        self
    }

    /// Clear after `m` consecutive samples not beyond the trigger bound. This is the default, with 1.
    pub fn recover_after_greens(mut self, m: usize) -> Self {
        self.recovery = Recovery::Greens(m);
        self.recovery_setter = None;
        self
    }

    /// Clear once every sample stayed strictly below `bound` for `held_for`. Only for an
    /// [`above`](Self::above) trigger: [`build`](Self::build) refuses it with `below`.
    pub fn recover_below(mut self, bound: f64, held_for: Duration) -> Self {
        self.recovery = Recovery::Healthy { bound, held_for };
        self.recovery_setter = Some(RecoverySetter::Below);
        self
    }

    /// Clear once every sample stayed strictly above `bound` for `held_for`. Only for a
    /// [`below`](Self::below) trigger: [`build`](Self::build) refuses it with `above`.
    pub fn recover_above(mut self, bound: f64, held_for: Duration) -> Self {
        self.recovery = Recovery::Healthy { bound, held_for };
        self.recovery_setter = Some(RecoverySetter::Above);
        self
    }

    /// Sets the recovery condition directly ([`Recovery::Healthy`] is on the healthy side of whichever
    /// trigger is set).
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self.recovery_setter = None;
        self
    }

    guard_setters!();

    /// Validates the settings.
    pub fn build(self) -> Result<Threshold, BuildError> {
        let Some((direction, bound)) = self.bound else {
            return Err(BuildError::new(
                NAME,
                "bound",
                "no bound: call above(bound) or below(bound)",
            ));
        };
        if !bound.is_finite() {
            return Err(BuildError::new(
                NAME,
                "bound",
                format!("{bound} is not finite"),
            ));
        }
        if self.count == 0 || self.count > MAX_WINDOW {
            return Err(BuildError::new(
                NAME,
                "count",
                format!("{} is not in 1..={MAX_WINDOW}", self.count),
            ));
        }
        if self.within == Some(Duration::ZERO) && self.count > 1 {
            return Err(BuildError::new(
                NAME,
                "within",
                "0s leaves no time for more than one breach",
            ));
        }
        if let Some(setter) = self.recovery_setter {
            if setter.trigger() != direction {
                let (trigger, right) = match direction {
                    Direction::Above => ("above", RecoverySetter::Below),
                    Direction::Below => ("below", RecoverySetter::Above),
                };
                return Err(BuildError::new(
                    NAME,
                    setter.name(),
                    format!(
                        "a `{trigger}` trigger recovers on the other side of its bound: use `{}`, not `{}`",
                        right.name(),
                        setter.name()
                    ),
                ));
            }
        }
        match self.recovery {
            Recovery::Greens(m) if m == 0 || m > MAX_WINDOW => {
                return Err(BuildError::new(
                    NAME,
                    "recovery",
                    format!("{m} greens is not in 1..={MAX_WINDOW}"),
                ));
            }
            Recovery::Greens(_) => {}
            Recovery::Healthy { bound: r, .. } => {
                let ok = r.is_finite()
                    && match direction {
                        Direction::Above => r <= bound,
                        Direction::Below => r >= bound,
                    };
                if !ok {
                    let side = match direction {
                        Direction::Above => "recover_below: at most",
                        Direction::Below => "recover_above: at least",
                    };
                    return Err(BuildError::new(
                        NAME,
                        "recovery",
                        format!("recovery bound {r} must be finite and ({side}) the trigger bound {bound}"),
                    ));
                }
            }
        }
        let rule = ThresholdRule {
            direction,
            bound,
            count: self.count,
            within: self.within,
            recovery: self.recovery,
            breaches: Ring::new(self.count),
            tripped: None,
            greens: 0,
            healthy_since: None,
        };
        Ok(Threshold {
            engine: Engine::new("threshold", self.signal, self.guards, rule),
        })
    }
}

#[derive(Debug)]
pub(crate) struct ThresholdRule {
    direction: Direction,
    bound: f64,
    count: usize,
    within: Option<Duration>,
    recovery: Recovery,
    /// Times of the current streak's breaches, the last `count` of them.
    breaches: Ring<Instant>,
    /// When tripped: the first breach of the tripping streak.
    tripped: Option<Instant>,
    greens: usize,
    healthy_since: Option<Instant>,
}

impl ThresholdRule {
    fn trigger(&self) -> (Option<f64>, Window) {
        (
            Some(self.bound),
            Window::Consecutive {
                count: self.count,
                within: self.within,
            },
        )
    }

    fn recovery(&self) -> (Option<f64>, Window) {
        match self.recovery {
            Recovery::Greens(m) => (
                Some(self.bound),
                Window::Consecutive {
                    count: m,
                    within: None,
                },
            ),
            Recovery::Healthy { bound, held_for } => (Some(bound), Window::Span(held_for)),
        }
    }

    fn judgement(&self, breach: bool, (threshold, window): (Option<f64>, Window)) -> Judgement {
        Judgement {
            breach,
            threshold,
            window,
            score: 1.0,
            since: self.tripped,
        }
    }
}

impl Rule for ThresholdRule {
    fn learn(&mut self, _sample: &Sample) {}

    fn judge(&mut self, s: &Sample, _hold: bool) -> Outcome {
        Outcome::Judged(self.judge_threshold(s))
    }

    fn describe(&self) -> (Option<f64>, Window) {
        self.trigger()
    }

    fn reset(&mut self) {
        self.breaches.clear();
        self.tripped = None;
        self.greens = 0;
        self.healthy_since = None;
    }
}

impl ThresholdRule {
    fn judge_threshold(&mut self, s: &Sample) -> Judgement {
        let breach = self.direction.beyond(s.value, self.bound);
        if self.tripped.is_some() {
            let recovered = match self.recovery {
                Recovery::Greens(m) => {
                    self.greens = if breach { 0 } else { self.greens + 1 };
                    self.greens >= m
                }
                Recovery::Healthy { bound, held_for } => {
                    let healthy = match self.direction {
                        Direction::Above => s.value < bound,
                        Direction::Below => s.value > bound,
                    };
                    if healthy {
                        let from = *self.healthy_since.get_or_insert(s.at);
                        s.at.saturating_duration_since(from) >= held_for
                    } else {
                        self.healthy_since = None;
                        false
                    }
                }
            };
            if recovered {
                self.reset();
                return self.judgement(false, self.trigger());
            }
            return self.judgement(true, self.recovery());
        }
        if !breach {
            self.breaches.clear();
            return self.judgement(false, self.trigger());
        }
        self.breaches.push(s.at);
        if self.breaches.len() == self.count {
            let first = self.breaches.front().unwrap_or(s.at);
            let in_time = self
                .within
                .is_none_or(|w| s.at.saturating_duration_since(first) <= w);
            if in_time {
                self.tripped = Some(first);
                self.greens = 0;
                self.healthy_since = None;
                return self.judgement(true, self.trigger());
            }
        }
        self.judgement(false, self.trigger())
    }
}
