//! The guards every detector shares (minimum volume, warm-up, sustained-for), implemented once: an
//! [`Engine`] runs any [`Rule`] behind them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Ignored, IgnoredCounts, Sample, Status, Verdict, Window};

/// The guard settings, set through each builder's `min_volume`, `warm_up` and `sustain_for`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Guards {
    pub(crate) min_volume: u64,
    pub(crate) warm_up: u64,
    pub(crate) sustain_for: Duration,
}

impl Guards {
    pub(crate) fn with_warm_up(warm_up: u64) -> Self {
        Guards {
            min_volume: 0,
            warm_up,
            sustain_for: Duration::ZERO,
        }
    }
}

/// A rule's judgement of one sample against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Judgement {
    /// The rule's condition holds for this sample (before the sustain guard).
    pub(crate) breach: bool,
    pub(crate) threshold: Option<f64>,
    pub(crate) window: Window,
    /// The score if the verdict ends up anomalous.
    pub(crate) score: f64,
    /// When the condition began, if the rule knows better than "the first breaching sample".
    pub(crate) since: Option<Instant>,
}

/// What a rule made of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    /// No baseline (or no reference) to judge by yet: the verdict is warming.
    NoBaseline,
    /// The sample cannot be judged (a rate of change against a reference of 0): the verdict repeats
    /// the current status, without a bound, and the sustain streak is left as it is.
    NotJudged,
    /// Judged.
    Judged(Judgement),
}

/// The detector-specific part: a baseline and a condition.
pub(crate) trait Rule: Send + std::fmt::Debug {
    /// A warm-up sample: add it to the baseline, judge nothing.
    fn learn(&mut self, sample: &Sample);
    /// Judge a sample (a finite value, enough volume, past the warm-up), learning from it as the rule
    /// sees fit. `hold`: a breach is pending (it began at an earlier sample and has not yet held for
    /// the sustain time) — a band judges against the band of the previous judgement, the one the
    /// breach first crossed, so that what it learns meanwhile cannot move the goalposts.
    fn judge(&mut self, sample: &Sample, hold: bool) -> Outcome;
    /// The bound and window to report before the first judgement.
    fn describe(&self) -> (Option<f64>, Window);
    /// Forget everything.
    fn reset(&mut self);
}

/// A rule behind the guards: the state every detector has.
#[derive(Debug)]
pub(crate) struct Engine<R> {
    name: &'static str,
    signal: Arc<str>,
    guards: Guards,
    pub(crate) rule: R,
    accepted: u64,
    /// The time of the first sample of the current breach streak.
    streak: Option<Instant>,
    status: Status,
    score: f64,
    since: Option<Instant>,
    last: (Option<f64>, Window),
    counts: IgnoredCounts,
}

impl<R: Rule> Engine<R> {
    pub(crate) fn new(name: &'static str, signal: Arc<str>, guards: Guards, rule: R) -> Self {
        let last = rule.describe();
        Engine {
            name,
            signal,
            guards,
            rule,
            accepted: 0,
            streak: None,
            status: Status::Warming,
            score: 0.0,
            since: None,
            last,
            counts: IgnoredCounts::default(),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn signal(&self) -> &str {
        &self.signal
    }

    pub(crate) fn ignored(&self) -> IgnoredCounts {
        self.counts
    }

    pub(crate) fn reset(&mut self) {
        self.rule.reset();
        self.accepted = 0;
        self.streak = None;
        self.status = Status::Warming;
        self.score = 0.0;
        self.since = None;
        self.last = self.rule.describe();
        self.counts = IgnoredCounts::default();
    }

    pub(crate) fn observe(&mut self, s: Sample) -> Verdict {
        if !s.value.is_finite() {
            self.counts.non_finite += 1;
            return self.repeat(s, Ignored::NonFinite);
        }
        if let Some(volume) = s.volume {
            if volume < self.guards.min_volume {
                self.counts.low_volume += 1;
                let why = Ignored::LowVolume {
                    volume,
                    min: self.guards.min_volume,
                };
                return self.repeat(s, why);
            }
        }
        self.accepted = self.accepted.saturating_add(1);
        if self.accepted <= self.guards.warm_up {
            self.rule.learn(&s);
            return self.warming(s);
        }
        let hold = self.streak.is_some() && self.status == Status::Normal;
        let j = match self.rule.judge(&s, hold) {
            Outcome::Judged(j) => j,
            Outcome::NoBaseline => return self.warming(s),
            Outcome::NotJudged => {
                let mut v = self.verdict(s, None);
                v.threshold = None;
                return v;
            }
        };
        self.last = (j.threshold, j.window);
        if j.breach {
            let start = *self.streak.get_or_insert(s.at);
            if s.at.saturating_duration_since(start) >= self.guards.sustain_for {
                self.status = Status::Anomalous;
                self.score = j.score;
                self.since = Some(j.since.map_or(start, |since| since.min(start)));
            } else {
                self.normal();
            }
        } else {
            self.streak = None;
            self.normal();
        }
        self.verdict(s, None)
    }

    fn normal(&mut self) {
        self.status = Status::Normal;
        self.score = 0.0;
        self.since = None;
    }

    fn warming(&mut self, s: Sample) -> Verdict {
        self.streak = None;
        self.status = Status::Warming;
        self.score = 0.0;
        self.since = None;
        self.verdict(s, None)
    }

    fn repeat(&self, s: Sample, why: Ignored) -> Verdict {
        self.verdict(s, Some(why))
    }

    fn verdict(&self, s: Sample, ignored: Option<Ignored>) -> Verdict {
        Verdict {
            status: self.status,
            detector: self.name,
            signal: Arc::clone(&self.signal),
            value: s.value,
            threshold: self.last.0,
            window: self.last.1,
            score: self.score,
            since: self.since,
            at: s.at,
            ignored,
        }
    }
}

/// The guard setters, the same on every builder (which must have a `guards: Guards` field).
macro_rules! guard_setters {
    () => {
        /// Ignore samples that summarise fewer than `min` events ([`Sample::volume`](crate::signals::Sample::volume));
        /// samples without a volume pass. Default 0 (off).
        pub fn min_volume(mut self, min: u64) -> Self {
            self.guards.min_volume = min;
            self
        }

        /// The first `n` accepted samples only build the baseline, with [`Status::Warming`](crate::detect::Status::Warming)
        /// verdicts. See the builder's defaults.
        pub fn warm_up(mut self, n: u64) -> Self {
            self.guards.warm_up = n;
            self
        }

        /// Anomalous only once the condition has held for `d`, from the first sample that met it to the
        /// current one. Default `Duration::ZERO` (the first sample that meets it).
        pub fn sustain_for(mut self, d: std::time::Duration) -> Self {
            self.guards.sustain_for = d;
            self
        }
    };
}
pub(crate) use guard_setters;

/// The `Detector` impl of a newtype over an `Engine`.
macro_rules! engine_detector {
    ($ty:ty) => {
        impl $crate::detect::Detector for $ty {
            fn observe(&mut self, sample: $crate::signals::Sample) -> $crate::detect::Verdict {
                self.engine.observe(sample)
            }
            fn reset(&mut self) {
                self.engine.reset()
            }
            fn name(&self) -> &'static str {
                self.engine.name()
            }
            fn signal(&self) -> &str {
                self.engine.signal()
            }
            fn ignored(&self) -> $crate::detect::IgnoredCounts {
                self.engine.ignored()
            }
        }
    };
}
pub(crate) use engine_detector;
