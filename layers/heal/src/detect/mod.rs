//! Detectors: what counts as an anomaly.
//!
//! A detector is a small deterministic state machine over [`Sample`]s of one signal. It has no clock of
//! its own — time is the samples' `at` — no I/O and no knowledge of layers, so the same sequence of
//! samples always gives the same sequence of [`Verdict`]s, and tests feed it by hand.
//!
//! | detector | anomalous when | recovers when |
//! |---|---|---|
//! | [`Threshold`] | N consecutive samples beyond a bound, within W | M consecutive greens, or on the healthy side of R for T |
//! | [`MeanSigma`] | outside mean ± k·σ of the last n samples | back inside the band (which learns a shift: see below) |
//! | [`Ewma`] | outside the EWMA ± k·(EW deviation) | back inside the band |
//! | [`Iqr`] | outside Q1 − f·IQR … Q3 + f·IQR of the last n samples | back inside the fences |
//! | [`MedianMad`] | outside median ± k·1.4826·MAD of the last n samples | back inside the band |
//! | [`RateOfChange`] | changed by more than a fraction over a lookback | the change is back under it |
//!
//! **Which statistical band?** [`MeanSigma`] is the classic rule and right for roughly normal signals
//! (error rates at volume, CPU, queue depth around a level). Latency is heavy-tailed: a few slow
//! requests inflate σ so much that the band widens until real regressions hide inside it, and the mean
//! moves with every outlier. [`MedianMad`] (and [`Iqr`]) take the centre and spread from the middle of
//! the data, so a tail neither widens the band nor moves it: prefer them for latency quantiles and any
//! signal with spikes. [`Ewma`] needs no window of samples (O(1) memory) and follows slow drift.
//!
//! # Guards
//!
//! Every detector's builder has the same three guards against false alarms, implemented once for all:
//!
//! - **minimum volume** (`min_volume(n)`): a sample that summarises fewer than `n` events
//!   ([`Sample::volume`]) is ignored — no verdict on 3 requests. A sample without a volume (a gauge)
//!   passes.
//! - **warm-up** (`warm_up(n)`): the first `n` accepted samples only build the baseline; the verdict is
//!   [`Status::Warming`] until then, and for as long as the detector has no baseline.
//! - **sustained-for** (`sustain_for(d)`): the condition must hold for `d` (from the first sample that
//!   met it to the current one) before the verdict is [`Status::Anomalous`]. `Duration::ZERO`, the
//!   default, alarms on the first sample that meets it.
//!
//! # Bad input
//!
//! **Non-finite values (NaN, ±∞) are ignored and counted** by every detector, threshold ones included:
//! they carry no level to compare (a NaN error rate is usually 0/0 at zero traffic) and would poison a
//! baseline. An ignored sample — non-finite or under the minimum volume — changes no state; its verdict
//! repeats the current status, with [`Verdict::ignored`] saying why, and [`Detector::ignored`] counts
//! them. A source whose failures are infinite (a timed-out probe) should report a finite value (the
//! timeout) instead. Samples whose time goes backwards are judged as if no time had passed. Nothing in a
//! detector panics on any input, and builders refuse bad settings with a [`BuildError`].
//!
//! # Baselines learn winsorized samples
//!
//! The statistical detectors judge each sample against the baseline *before* it, then learn it
//! **winsorized**: a sample inside the band as it is, a sample outside it clipped to the band's edge
//! (every sample of the warm-up as it is). An outlier therefore moves the band by no more than a
//! sample at its edge would, and a sustained shift alarms for a while — until the edge, pushed out a
//! little by every clipped sample, has reached it — and is then the new normal: the band can neither
//! freeze nor be dragged by a spike. (A band with no width at all — a baseline of exact zeros, such
//! as an error rate, with no `min_spread` — learns samples unclipped, since clipping could never open
//! it: set `min_spread` on such signals.) While a breach is *pending* (it has not yet held for the
//! sustain time) it is judged against the band it first crossed, so what is learned meanwhile cannot
//! move the goalposts: a step beyond the band alarms exactly at the sustain time, however small.
//!
//! Clipping the tails shrinks the learned spread a little on normal data: mean ± kσ over 100
//! samples learns σ̂ ≈ 0.93σ at k = 2 and 0.99σ at k = 3 (the infinite-window fixed point is 0.949σ
//! and 0.997σ; dropping out-of-band samples instead would give 0.726σ and 0.985σ); median ± k·MAD
//! and the IQR fences learn about σ; the EWMA reads 0.77σ at k = 2 and 0.87σ at k = 3, mostly its
//! own estimator's low reading (α = 0.2 remembers about 9 samples), not the clipping. Builders refuse
//! k < 2, where the shrinking would feed on itself.
//!
//! # Spread floors
//!
//! A band's spread (σ, the IQR, 1.4826·MAD, the EW σ) is at least `min_spread` (absolute, default 0)
//! and at least `min_relative_spread` of the magnitude of its centre (default 2 %, set it with the
//! builder's `min_relative_spread`). The recorder's quantiles are sketch bucket values, 1 % accurate
//! and 2.02 % apart, so they repeat exactly: a p99 flickering between two adjacent buckets has a MAD
//! (or an IQR, or a σ over a run of equal values) of 0, and without a floor every sample in the other
//! bucket would alarm. With it, the half-width is at least 4 % of the centre (k ≥ 2), two buckets.
//! [`MedianMad`] also follows Iglewicz and Hoaglin when the MAD is 0 (half the window or more at the
//! median): it uses 1.2533 × the mean absolute deviation from the median instead.

//! # Memory and cost
//!
//! Windowed detectors keep a ring of at most [`MAX_WINDOW`] samples, allocated once in `build()`;
//! observing a sample allocates nothing. [`MeanSigma`], [`Iqr`] and [`MedianMad`] cost O(n) per sample
//! (quantiles by selection, not sorting), [`Ewma`] and [`Threshold`] O(1), [`RateOfChange`] O(resolution).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_heal::detect::{Composite, Detector, MeanSigma, Severity, Status};
//! use palisade_heal::signals::Sample;
//! use tokio::time::Instant;
//!
//! let mut latency = MeanSigma::builder("GET /users p99")
//!     .window(100)
//!     .k(3.0)
//!     .warm_up(20)
//!     .min_volume(50)
//!     .build()
//!     .expect("valid settings");
//! let t0 = Instant::now();
//! for i in 0..20u64 {
//!     let v = if i % 2 == 0 { 0.09 } else { 0.11 }; // mean 0.1 s, σ 0.01 s
//!     let verdict = latency.observe(Sample::new(v, t0 + Duration::from_secs(i)).with_volume(500));
//!     assert_eq!(verdict.status, Status::Warming);
//! }
//! let verdict = latency.observe(Sample::new(0.5, t0 + Duration::from_secs(20)).with_volume(500));
//! assert_eq!(verdict.status, Status::Anomalous);
//! assert!((verdict.threshold.unwrap() - 0.13).abs() < 1e-9); // 0.1 + 3 × 0.01
//! println!("{verdict}"); // mean_sigma on GET /users p99: anomalous value=0.5 threshold=0.13 ...
//!
//! // Too few requests: ignored, whatever the value.
//! let quiet = latency.observe(Sample::new(9.0, t0 + Duration::from_secs(21)).with_volume(3));
//! assert!(quiet.ignored.is_some());
//!
//! let overall = Composite::from_verdicts([(1.0, &verdict)]);
//! assert_eq!(overall.severity, Severity::Critical);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use palisade_core::config::BuildError;

pub use crate::signals::Sample;

mod ewma;
mod guard;
mod rate;
mod score;
mod stats;
mod threshold;

pub use ewma::{Ewma, EwmaBuilder};
pub use rate::{RateOfChange, RateOfChangeBuilder};
pub use score::{Composite, Sev, Severity};
pub use stats::{Iqr, IqrBuilder, MeanSigma, MeanSigmaBuilder, MedianMad, MedianMadBuilder};
pub use threshold::{Recovery, Threshold, ThresholdBuilder};

/// The largest window (in samples) any detector keeps, and the largest count or resolution: at most
/// about 240 KB per detector. At this size the O(n) detectors cost about 12 µs ([`MeanSigma`]) to 30 µs
/// ([`MedianMad`], [`Iqr`]) per sample in a release build here; at the default n = 100, under 1 µs.
pub const MAX_WINDOW: usize = 10_000;

/// A deterministic anomaly detector over the samples of one signal.
///
/// Object safe: a supervisor holds `Box<dyn Detector>`s.
pub trait Detector: Send + fmt::Debug {
    /// Judges one sample (and learns from it, if the detector has a baseline).
    fn observe(&mut self, sample: Sample) -> Verdict;

    /// Forgets everything observed: back to the state `build()` returned (warming, no baseline, no
    /// streak, counters at zero).
    fn reset(&mut self);

    /// The detector's name in verdicts, e.g. `"mean_sigma"`.
    fn name(&self) -> &'static str;

    /// The signal this detector watches.
    fn signal(&self) -> &str;

    /// How many samples were ignored since build or the last reset, and why.
    fn ignored(&self) -> IgnoredCounts;
}

/// Where a detector stands after a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// No verdict yet: the warm-up is not over, or there is no baseline (or no reference) to judge by.
    Warming,
    /// Judged, and not anomalous (including a condition that holds but not yet for the sustain time).
    Normal,
    /// Judged anomalous, after the guards.
    Anomalous,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Warming => "warming",
            Status::Normal => "normal",
            Status::Anomalous => "anomalous",
        })
    }
}

/// What a verdict was judged over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last `n` samples (statistical bands).
    Samples(usize),
    /// `count` consecutive samples, all within `within` of each other when set (threshold streaks and
    /// "M consecutive greens").
    Consecutive {
        /// How many in a row.
        count: usize,
        /// The longest time the streak may span.
        within: Option<Duration>,
    },
    /// A span of time: a rate of change's lookback, or how long a recovery condition must hold.
    Span(Duration),
    /// An exponentially weighted moving average with this smoothing factor.
    Ewma {
        /// The weight of the newest sample.
        alpha: f64,
    },
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Window::Samples(n) => write!(f, "last {n} samples"),
            Window::Consecutive {
                count,
                within: None,
            } => write!(f, "{count} consecutive"),
            Window::Consecutive {
                count,
                within: Some(w),
            } => write!(f, "{count} consecutive within {}", Human(w)),
            Window::Span(d) => write!(f, "{}", Human(d)),
            Window::Ewma { alpha } => write!(f, "EWMA alpha={alpha}"),
        }
    }
}

/// Why a sample was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// The value was NaN or infinite.
    NonFinite,
    /// The sample summarised fewer events than the detector's minimum volume.
    LowVolume {
        /// The sample's volume.
        volume: u64,
        /// The detector's minimum.
        min: u64,
    },
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Ignored::NonFinite => f.write_str("value not finite"),
            Ignored::LowVolume { volume, min } => write!(f, "volume {volume} < {min}"),
        }
    }
}

/// How many samples a detector ignored, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IgnoredCounts {
    /// Samples whose value was NaN or infinite.
    pub non_finite: u64,
    /// Samples under the minimum volume.
    pub low_volume: u64,
}

/// One detector's judgement of one sample, with its evidence — what the supervisor puts in the audit log.
///
/// Its `Display` is that audit line:
/// `threshold on /healthz: anomalous value=0 threshold=0.5 window=3 consecutive within 15m score=1.00 for 10m`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Where the detector stands.
    pub status: Status,
    /// Which detector, e.g. `"threshold"`, `"mean_sigma"`.
    pub detector: &'static str,
    /// On which signal.
    pub signal: Arc<str>,
    /// The sample's value (as observed, even when ignored).
    pub value: f64,
    /// The bound the value crossed, or the nearest one when it crossed none; `None` while there is no
    /// baseline. While a [`Threshold`] alarm holds, the bound of its recovery condition.
    pub threshold: Option<f64>,
    /// What the bound was computed or counted over. While a [`Threshold`] alarm holds, the window of its
    /// recovery condition.
    pub window: Window,
    /// How anomalous, in `0..=1`: `0` unless [`Status::Anomalous`]; for a band or a rate of change,
    /// from `0.5` at its edge (limit) rising linearly to `1` at twice its half-width (limit) or more;
    /// `1` for a tripped threshold.
    pub score: f64,
    /// When the condition behind an anomalous verdict began (for a [`Threshold`], the first breach of
    /// the streak that tripped it); `None` unless anomalous.
    pub since: Option<Instant>,
    /// The sample's time.
    pub at: Instant,
    /// Set when the sample was ignored: the status is then the detector's current one, unchanged.
    pub ignored: Option<Ignored>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {}: {} value={} threshold=",
            self.detector, self.signal, self.status, self.value
        )?;
        match self.threshold {
            Some(t) => write!(f, "{t}")?,
            None => f.write_str("none")?,
        }
        write!(f, " window={} score={:.2}", self.window, self.score)?;
        if let Some(since) = self.since {
            write!(
                f,
                " for {}",
                Human(self.at.saturating_duration_since(since))
            )?;
        }
        if let Some(why) = self.ignored {
            write!(f, " (sample ignored: {why})")?;
        }
        Ok(())
    }
}

/// A duration as an operator writes it: `15m`, `90s`, `1h`, `250ms`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{d:?}");
        }
        let s = d.as_secs();
        if s == 0 {
            f.write_str("0s")
        } else if s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// The score of a value `distance` from a band's centre whose edge is `half_width` away: `0.5` at the
/// edge, rising linearly to `1` at twice the half-width.
pub(crate) fn band_score(distance: f64, half_width: f64) -> f64 {
    if half_width <= 0.0 {
        return 1.0;
    }
    let s = 0.5 + 0.5 * (distance / half_width - 1.0);
    if s.is_nan() {
        1.0
    } else {
        s.clamp(0.5, 1.0)
    }
}
