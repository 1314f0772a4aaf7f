//! Rate of change: "> 50 % drop in 5 min", "> 30 % rise in 1 min".

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::guard::{engine_detector, guard_setters, Engine, Guards, Judgement, Outcome, Rule};
use super::stats::Ring;
use super::{band_score, BuildError, Sample, Window, MAX_WINDOW};

const NAME: &str = "rate_of_change detector";

/// Anomalous when the value changed by more than a fraction of itself over a lookback.
///
/// The reference is the newest sample at least `over` old; the change is `(value − reference) /
/// |reference|`. A drop of `d` alarms below `reference − d·|reference|`, a rise of `r` above `reference +
/// r·|reference|` (set either or both). The verdict is [`Status::Warming`](super::Status::Warming) while
/// there is no reference — at the start, or after a gap: a reference more than twice `over` old is
/// stale. A reference of exactly 0 is not judged (a relative change from 0 is undefined: use a
/// [`Threshold`](super::Threshold) on the value): the verdict repeats the current status with no
/// bound, and a pending or holding condition's streak is neither extended nor broken. Score: 0.5 at
/// the limit, 1 at twice the limit.
///
/// A step leaves the lookback `over` after it happened (the reference catches up with it), so a
/// condition holds for less than `over`: [`build`](RateOfChangeBuilder::build) refuses a
/// `sustain_for` of `over` or more, which could never alarm on a step.
///
/// Memory is bounded: the history keeps at most one sample per `over / resolution` (default
/// resolution 64), so the reference is at most that much older than `over`.
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, RateOfChange, Status};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// const MIN: Duration = Duration::from_secs(60);
/// // Throughput: a drop of more than 50 % in 5 min.
/// let mut rps = RateOfChange::builder("requests/s").drop(0.5).over(5 * MIN).build().unwrap();
/// let t0 = Instant::now();
/// for m in 0..5 {
///     assert_eq!(rps.observe(Sample::new(1000.0, t0 + m * MIN)).status, Status::Warming);
/// }
/// assert_eq!(rps.observe(Sample::new(600.0, t0 + 5 * MIN)).status, Status::Normal); // -40 %
/// let v = rps.observe(Sample::new(400.0, t0 + 6 * MIN)); // -60 % from 1000 at t0 + 1 min
/// assert_eq!(v.status, Status::Anomalous);
/// assert_eq!(v.threshold, Some(500.0));
///
/// // Latency: a rise of more than 30 % in 1 min.
/// let rise = RateOfChange::builder("p99").rise(0.3).over(MIN).build().unwrap();
/// # drop(rise);
/// ```
#[derive(Debug)]
pub struct RateOfChange {
    engine: Engine<RateRule>,
}

impl RateOfChange {
    /// A builder for a rate of change on `signal`. Set [`drop`](RateOfChangeBuilder::drop) or
    /// [`rise`](RateOfChangeBuilder::rise) (or both) and [`over`](RateOfChangeBuilder::over).
    pub fn builder(signal: impl Into<Arc<str>>) -> RateOfChangeBuilder {
        RateOfChangeBuilder {
            signal: signal.into(),
            drop: None,
            rise: None,
            over: None,
            resolution: 64,
            guards: Guards::with_warm_up(0),
        }
    }
}

engine_detector!(RateOfChange);

/// Settings of a [`RateOfChange`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct RateOfChangeBuilder {
    signal: Arc<str>,
    drop: Option<f64>,
    rise: Option<f64>,
    over: Option<Duration>,
    resolution: usize,
    guards: Guards,
}

impl RateOfChangeBuilder {
    /// Alarm on a drop of more than `fraction` of the reference, in `(0, 1]` (0.5: "more than 50 %").
    pub fn drop(mut self, fraction: f64) -> Self {
        self.drop = Some(fraction);
        self
    }

    /// Alarm on a rise of more than `fraction` of the reference, a finite number > 0 (0.3: "more than
    /// 30 %").
    pub fn rise(mut self, fraction: f64) -> Self {
        self.rise = Some(fraction);
        self
    }

    /// The lookback, more than zero. Required.
    pub fn over(mut self, lookback: Duration) -> Self {
        self.over = Some(lookback);
        self
    }

    /// How many history samples per lookback to keep, `1..=`[`MAX_WINDOW`]. Default 64.
    pub fn resolution(mut self, n: usize) -> Self {
        self.resolution = n;
        self
    }

    guard_setters!();

    /// Validates the settings; allocates the history.
    pub fn build(self) -> Result<RateOfChange, BuildError> {
        if self.drop.is_none() && self.rise.is_none() {
            return Err(BuildError::new(
                NAME,
                "drop",
                "no change to detect: set drop(fraction), rise(fraction) or both",
            ));
        }
        if let Some(d) = self.drop {
            if !(d > 0.0 && d <= 1.0) {
                return Err(BuildError::new(
                    NAME,
                    "drop",
                    format!("{d} is not in (0, 1]"),
                ));
            }
        }
        if let Some(r) = self.rise {
            if !(r.is_finite() && r > 0.0) {
                return Err(BuildError::new(
                    NAME,
                    "rise",
                    format!("{r} is not a finite number > 0"),
                ));
            }
        }
        let over = match self.over {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(BuildError::new(
                    NAME,
                    "over",
                    "no lookback: set over(duration), more than zero",
                ))
            }
        };
        if self.resolution == 0 || self.resolution > MAX_WINDOW {
            return Err(BuildError::new(
                NAME,
                "resolution",
                format!("{} is not in 1..={MAX_WINDOW}", self.resolution),
            ));
        }
        if self.guards.sustain_for >= over {
            return Err(BuildError::new(
                NAME,
                "sustain_for",
                format!(
                    "{:?} is not shorter than the lookback `over` ({over:?}): a change leaves the \
                     lookback `over` after it happened, so the condition could never hold that long",
                    self.guards.sustain_for
                ),
            ));
        }
        let rule = RateRule {
            drop: self.drop,
            rise: self.rise,
            over,
            spacing: over / self.resolution as u32,
            history: Ring::new(self.resolution + 3),
        };
        Ok(RateOfChange {
            engine: Engine::new("rate_of_change", self.signal, self.guards, rule),
        })
    }
}

#[derive(Debug)]
pub(crate) struct RateRule {
    drop: Option<f64>,
    rise: Option<f64>,
    over: Duration,
    spacing: Duration,
    /// `(at, value)`, oldest first, one per `spacing`; the front is the newest sample at least `over` old
    /// (once there is one).
    history: Ring<(Instant, f64)>,
}

impl RateRule {
    fn keep(&mut self, s: &Sample) {
        let keep = match self.history.back() {
            None => true,
            Some((last, _)) => s.at > last && s.at.saturating_duration_since(last) >= self.spacing,
        };
        if keep {
            self.history.push((s.at, s.value));
        }
        // Drop references that a younger one (still old enough) replaces.
        while let Some((next, _)) = self.history.get(1) {
            if s.at.saturating_duration_since(next) >= self.over {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn limit(&self) -> Option<f64> {
        match (self.drop, self.rise) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        }
    }
}

impl Rule for RateRule {
    fn learn(&mut self, s: &Sample) {
        self.keep(s);
    }

    fn judge(&mut self, s: &Sample, _hold: bool) -> Outcome {
        let reference = self
            .history
            .iter()
            .rev()
            .find(|(at, _)| s.at.saturating_duration_since(*at) >= self.over);
        let Some((ref_at, r)) = reference else {
            self.keep(s);
            return Outcome::NoBaseline;
        };
        if s.at.saturating_duration_since(ref_at) > self.over.saturating_mul(2) {
            self.keep(s);
            return Outcome::NoBaseline;
        }
        self.keep(s);
        let window = Window::Span(self.over);
        let x = s.value;
        if r == 0.0 {
            // A relative change from 0 is undefined: neither a breach nor the end of one.
            return Outcome::NotJudged;
        }
        let scale = r.abs();
        let low = self.drop.map(|d| r - d * scale);
        let high = self.rise.map(|u| r + u * scale);
        let (breach, threshold, limit) = match (low, high) {
            (Some(lo), _) if x < lo => (true, lo, self.drop),
            (_, Some(hi)) if x > hi => (true, hi, self.rise),
            (Some(lo), Some(hi)) => (false, if x >= r { hi } else { lo }, self.limit()),
            (Some(lo), None) => (false, lo, self.drop),
            (None, Some(hi)) => (false, hi, self.rise),
            (None, None) => (false, r, None),
        };
        let change = (x - r).abs() / scale;
        let score = limit.map_or(0.0, |l| band_score(change, l));
        Outcome::Judged(Judgement {
            breach,
            threshold: threshold.is_finite().then_some(threshold),
            window,
            score,
            since: None,
        })
    }

    fn describe(&self) -> (Option<f64>, Window) {
        (None, Window::Span(self.over))
    }

    fn reset(&mut self) {
        self.history.clear();
    }
}
