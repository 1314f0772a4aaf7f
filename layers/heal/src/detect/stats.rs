//! Windowed statistical bands: mean ± k·σ, Tukey's IQR fences, median ± k·MAD.

use std::collections::VecDeque;
use std::sync::Arc;

use super::guard::{engine_detector, guard_setters, Engine, Guards, Judgement, Outcome, Rule};
use super::{band_score, BuildError, Sample, Window, MAX_WINDOW};

/// A fixed-capacity ring: allocated once, pushing onto a full ring drops the oldest.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    buf: VecDeque<T>,
    cap: usize,
}

impl<T: Copy> Ring<T> {
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Ring {
            buf: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub(crate) fn push(&mut self, x: T) {
        if self.buf.len() == self.cap {
            self.buf.pop_front();
        }
        self.buf.push_back(x);
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.buf.pop_front()
    }

    pub(crate) fn front(&self) -> Option<T> {
        self.buf.front().copied()
    }

    pub(crate) fn back(&self) -> Option<T> {
        self.buf.back().copied()
    }

    pub(crate) fn get(&self, i: usize) -> Option<T> {
        self.buf.get(i).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = T> + '_ {
        self.buf.iter().copied()
    }
}

/// Spreads below this fraction of the centre are floating-point noise (the mean of 100 copies of 0.1 is
/// not exactly 0.1): a perfectly flat baseline must not alarm on its own rounding, whatever
/// `min_relative_spread` says.
pub(crate) const REL_EPS: f64 = 1e-9;

/// The default `min_relative_spread`: 2 % of the band's centre. The recorder's quantiles are sketch
/// bucket values 1 % apart (adjacent buckets differ by a factor γ = 1.0202), so a quantile that
/// moves by one bucket moves by 2.02 %: with the spread at least 2 % of the centre, the band's
/// half-width is at least 4 % (k ≥ 2) — two buckets' worth — and a signal flickering between
/// neighbouring buckets is not an anomaly.
pub(crate) const DEFAULT_MIN_RELATIVE_SPREAD: f64 = 0.02;

/// Warm-up not set: the default is resolved in `build()`.
const UNSET: u64 = u64::MAX;

/// The default warm-up of the windowed detectors: 30 samples, or the window if smaller.
const DEFAULT_WARM_UP: u64 = 30;

/// The `p`-quantile of `buf` (linear interpolation between order statistics, as R's type 7 and numpy's
/// default), by selection: O(n), reorders `buf`. `buf` must be non-empty and hold no NaN.
pub(crate) fn quantile(buf: &mut [f64], p: f64) -> f64 {
    let n = buf.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * p;
    let lo = (h.floor() as usize).min(n - 1);
    let frac = h - lo as f64;
    let (_, x_lo, right) = buf.select_nth_unstable_by(lo, f64::total_cmp);
    let x_lo = *x_lo;
    if frac > 0.0 && !right.is_empty() {
        let x_hi = right.iter().copied().fold(f64::INFINITY, f64::min);
        x_lo + frac * (x_hi - x_lo)
    } else {
        x_lo
    }
}

/// A band: its centre, half-width, and whether it clips what it learns.
pub(crate) type Band = (f64, f64, bool);

/// Judges `x` against `center ± half`: the judgement, and the value the baseline learns —
/// winsorized: `x` itself inside the band, else `x` clipped to the band's edge. A band that does not
/// `clip` (one only as wide as rounding: a flat baseline with no spread floor) learns `x` itself:
/// clipping to it could never open it.
pub(crate) fn judge_band(x: f64, (center, half, clip): Band, window: Window) -> (Judgement, f64) {
    let lo = center - half;
    let hi = center + half;
    let breach = x < lo || x > hi;
    let edge = if x >= center { hi } else { lo };
    let learn = if clip && half > 0.0 && half.is_finite() {
        x.clamp(lo, hi)
    } else {
        x
    };
    let j = Judgement {
        breach,
        threshold: edge.is_finite().then_some(edge),
        window,
        score: band_score((x - center).abs(), half),
        since: None,
    };
    (j, if learn.is_finite() { learn } else { x })
}

/// The spread a band uses — at least `min_spread`, at least `min_relative` of the centre's magnitude,
/// and at least [`REL_EPS`] of it — and whether it is wider than that rounding floor (else the band
/// does not clip what it learns: see [`judge_band`]).
pub(crate) fn floor(spread: f64, min_spread: f64, min_relative: f64, center: f64) -> (f64, bool) {
    let s = spread.max(min_spread).max(center.abs() * min_relative);
    let rounding = center.abs() * REL_EPS;
    if s > rounding {
        (s, true)
    } else {
        (rounding, false)
    }
}

/// The band (centre, half-width) of a rule's previous judgement, kept to judge a pending breach by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Held(Option<Band>);

impl Held {
    /// The band to judge by: the held one while a breach is pending (`hold`), else `compute()`'s,
    /// which is then held.
    pub(crate) fn band(&mut self, hold: bool, compute: impl FnOnce() -> Band) -> Band {
        match self.0 {
            Some(held) if hold => held,
            _ => *self.0.insert(compute()),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

/// Validates a `min_relative_spread`.
pub(crate) fn check_min_relative_spread(layer: &'static str, r: f64) -> Result<(), BuildError> {
    if r.is_finite() && r >= 0.0 {
        Ok(())
    } else {
        Err(BuildError::new(
            layer,
            "min_relative_spread",
            format!("{r} is not a finite number >= 0"),
        ))
    }
}

/// The settings every windowed band has.
#[derive(Debug, Clone, Copy)]
struct BandSettings {
    layer: &'static str,
    window: usize,
    k: f64,
    min_spread: f64,
    min_relative_spread: f64,
}

impl BandSettings {
    fn validate(&self, k_name: &'static str, k_min: f64) -> Result<(), BuildError> {
        if self.window < 2 || self.window > MAX_WINDOW {
            return Err(BuildError::new(
                self.layer,
                "window",
                format!("{} samples is not in 2..={MAX_WINDOW}", self.window),
            ));
        }
        if !(self.k.is_finite() && self.k >= k_min) {
            return Err(BuildError::new(
                self.layer,
                k_name,
                format!(
                    "{} is not a finite number >= {k_min} (a narrower band learns only its own centre and shrinks)",
                    self.k
                ),
            ));
        }
        if !(self.min_spread.is_finite() && self.min_spread >= 0.0) {
            return Err(BuildError::new(
                self.layer,
                "min_spread",
                format!("{} is not a finite number >= 0", self.min_spread),
            ));
        }
        check_min_relative_spread(self.layer, self.min_relative_spread)
    }

    /// The band `center ± width · spread`, the spread floored.
    fn band(&self, center: f64, spread: f64, width: f64) -> Band {
        let (spread, clip) = floor(spread, self.min_spread, self.min_relative_spread, center);
        (center, width * spread, clip)
    }

    fn guards(&self, mut guards: Guards) -> Guards {
        if guards.warm_up == UNSET {
            guards.warm_up = DEFAULT_WARM_UP.min(self.window as u64);
        }
        guards
    }
}

/// The setters the windowed bands share.
macro_rules! band_setters {
    () => {
        /// How many recent samples the baseline keeps, `2..=`[`MAX_WINDOW`]. Default 100.
        pub fn window(mut self, n: usize) -> Self {
            self.band.window = n;
            self
        }

        /// The smallest spread the band uses, in the signal's units (default 0): set it to the signal's
        /// resolution so that a perfectly flat baseline does not alarm on the smallest wiggle. It is
        /// the only floor for a signal that sits at 0 (an error rate), where a relative one is 0.
        pub fn min_spread(mut self, spread: f64) -> Self {
            self.band.min_spread = spread;
            self
        }

        /// The smallest spread the band uses, as a fraction of the magnitude of its centre, a finite
        /// number ≥ 0. Default 0.02 (2 %): above the recorder's 1 % quantile accuracy, so that a
        /// quantile moving between adjacent sketch buckets (2.02 % apart) is not an anomaly. Applies
        /// with [`min_spread`](Self::min_spread) (the larger wins); 0 turns it off.
        pub fn min_relative_spread(mut self, fraction: f64) -> Self {
            self.band.min_relative_spread = fraction;
            self
        }

        guard_setters!();
    };
}

// ---------------------------------------------------------------------------------------------------

/// Moving mean ± k·σ over the last n samples (population σ): anomalous outside the band.
///
/// Defaults: n = 100, k = 3, warm-up 30 samples (or n if smaller), σ at least 2 % of |mean|
/// ([`min_relative_spread`](MeanSigmaBuilder::min_relative_spread)). Samples are learned winsorized
/// (see [the module docs](super#baselines-learn-winsorized-samples)). Score: 0.5 at the band's edge, 1
/// at twice k·σ from the mean. Fragile on heavy-tailed signals such as latency: see [`MedianMad`].
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, MeanSigma, Status};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// let mut d = MeanSigma::builder("queue depth").window(10).k(3.0).warm_up(10).build().unwrap();
/// let t0 = Instant::now();
/// let at = |i: u32| t0 + i * Duration::from_secs(10);
/// // 10 samples alternating 8, 12: mean 10, σ 2, band 4 ..= 16.
/// for i in 0..10 {
///     d.observe(Sample::new(if i % 2 == 0 { 8.0 } else { 12.0 }, at(i)));
/// }
/// let v = d.observe(Sample::new(16.5, at(10)));
/// assert_eq!(v.status, Status::Anomalous);
/// assert_eq!(v.threshold, Some(16.0));
/// // The anomaly was learned winsorized, as the edge 16 (replacing the oldest 8): mean 10.8,
/// // σ ≈ 2.561, the band now about 3.12 ..= 18.48.
/// let v = d.observe(Sample::new(18.0, at(11)));
/// assert_eq!(v.status, Status::Normal);
/// assert!((v.threshold.unwrap() - (10.8 + 3.0 * 6.56f64.sqrt())).abs() < 1e-9);
/// ```
#[derive(Debug)]
pub struct MeanSigma {
    engine: Engine<MeanSigmaRule>,
}

impl MeanSigma {
    /// A builder for a mean ± k·σ band on `signal`.
    pub fn builder(signal: impl Into<Arc<str>>) -> MeanSigmaBuilder {
        MeanSigmaBuilder {
            signal: signal.into(),
            band: BandSettings {
                layer: "mean_sigma detector",
                window: 100,
                k: 3.0,
                min_spread: 0.0,
                min_relative_spread: DEFAULT_MIN_RELATIVE_SPREAD,
            },
            guards: Guards::with_warm_up(UNSET),
        }
    }
}

engine_detector!(MeanSigma);

/// Settings of a [`MeanSigma`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct MeanSigmaBuilder {
    signal: Arc<str>,
    band: BandSettings,
    guards: Guards,
}

impl MeanSigmaBuilder {
    /// The band's half-width in standard deviations, a finite number ≥ 2. Default 3.
    pub fn k(mut self, k: f64) -> Self {
        self.band.k = k;
        self
    }

    band_setters!();

    /// Validates the settings; allocates the window.
    pub fn build(self) -> Result<MeanSigma, BuildError> {
        self.band.validate("k", 2.0)?;
        let rule = MeanSigmaRule {
            ring: Ring::new(self.band.window),
            band: self.band,
            held: Held::default(),
        };
        Ok(MeanSigma {
            engine: Engine::new(
                "mean_sigma",
                self.signal,
                self.band.guards(self.guards),
                rule,
            ),
        })
    }
}

#[derive(Debug)]
pub(crate) struct MeanSigmaRule {
    ring: Ring<f64>,
    band: BandSettings,
    held: Held,
}

impl Rule for MeanSigmaRule {
    fn learn(&mut self, s: &Sample) {
        self.ring.push(s.value);
    }

    fn judge(&mut self, s: &Sample, hold: bool) -> Outcome {
        if self.ring.len() < 2 {
            self.ring.push(s.value);
            return Outcome::NoBaseline;
        }
        let (ring, band) = (&self.ring, &self.band);
        let held = self.held.band(hold, || {
            let n = ring.len() as f64;
            let mut mean = ring.iter().sum::<f64>() / n;
            if !mean.is_finite() {
                // The sum overflowed: an incremental mean does not.
                mean = 0.0;
                for (i, x) in ring.iter().enumerate() {
                    mean += (x - mean) / (i + 1) as f64;
                }
            }
            let var = ring.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            band.band(mean, var.sqrt(), band.k)
        });
        let (j, learn) = judge_band(s.value, held, Window::Samples(band.window));
        self.ring.push(learn);
        Outcome::Judged(j)
    }

    fn describe(&self) -> (Option<f64>, Window) {
        (None, Window::Samples(self.band.window))
    }

    fn reset(&mut self) {
        self.ring.clear();
        self.held.clear();
    }
}

// ---------------------------------------------------------------------------------------------------

/// Tukey's fences over the last n samples: anomalous outside Q1 − f·IQR … Q3 + f·IQR (f = 1.5 by
/// default; 3 marks only "far out" values).
///
/// Quantiles interpolate linearly between order statistics (R's type 7, numpy's default). The IQR is
/// at least 2 % of |(Q1 + Q3) / 2| ([`min_relative_spread`](IqrBuilder::min_relative_spread)), so one
/// value holding the middle half of the window does not collapse the fences onto it. Defaults:
/// n = 100, f = 1.5, warm-up 30 samples (or n if smaller). Score: 0.5 at a fence, 1 when the distance
/// from the middle of Q1..Q3 is twice the fence's. Robust to a heavy tail like [`MedianMad`].
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, Iqr, Status};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// let mut d = Iqr::builder("p95 seconds").window(5).warm_up(5).build().unwrap();
/// let t0 = Instant::now();
/// let at = |i: u32| t0 + i * Duration::from_secs(10);
/// // 1, 2, 3, 4, 5: Q1 = 2, Q3 = 4, IQR = 2, fences -1 ..= 7.
/// for i in 0..5 {
///     d.observe(Sample::new(f64::from(i + 1), at(i)));
/// }
/// assert_eq!(d.observe(Sample::new(7.0, at(5))).status, Status::Normal);
/// // The window is now 2, 3, 4, 5, 7: Q1 = 3, Q3 = 5, upper fence 8.
/// let v = d.observe(Sample::new(8.5, at(6)));
/// assert_eq!(v.status, Status::Anomalous);
/// assert_eq!(v.threshold, Some(8.0));
/// ```
#[derive(Debug)]
pub struct Iqr {
    engine: Engine<IqrRule>,
}

impl Iqr {
    /// A builder for IQR fences on `signal`.
    pub fn builder(signal: impl Into<Arc<str>>) -> IqrBuilder {
        IqrBuilder {
            signal: signal.into(),
            band: BandSettings {
                layer: "iqr detector",
                window: 100,
                k: 1.5,
                min_spread: 0.0,
                min_relative_spread: DEFAULT_MIN_RELATIVE_SPREAD,
            },
            guards: Guards::with_warm_up(UNSET),
        }
    }
}

engine_detector!(Iqr);

/// Settings of an [`Iqr`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct IqrBuilder {
    signal: Arc<str>,
    band: BandSettings,
    guards: Guards,
}

impl IqrBuilder {
    /// The fences' distance beyond Q1 and Q3 in IQRs, a finite number ≥ 1. Default 1.5.
    pub fn fence(mut self, f: f64) -> Self {
        self.band.k = f;
        self
    }

    band_setters!();

    /// Validates the settings; allocates the window.
    pub fn build(self) -> Result<Iqr, BuildError> {
        self.band.validate("fence", 1.0)?;
        let rule = IqrRule {
            ring: Ring::new(self.band.window),
            scratch: Vec::with_capacity(self.band.window),
            band: self.band,
            held: Held::default(),
        };
        Ok(Iqr {
            engine: Engine::new("iqr", self.signal, self.band.guards(self.guards), rule),
        })
    }
}

#[derive(Debug)]
pub(crate) struct IqrRule {
    ring: Ring<f64>,
    scratch: Vec<f64>,
    band: BandSettings,
    held: Held,
}

impl Rule for IqrRule {
    fn learn(&mut self, s: &Sample) {
        self.ring.push(s.value);
    }

    fn judge(&mut self, s: &Sample, hold: bool) -> Outcome {
        if self.ring.len() < 2 {
            self.ring.push(s.value);
            return Outcome::NoBaseline;
        }
        let (ring, scratch, band) = (&self.ring, &mut self.scratch, &self.band);
        let held = self.held.band(hold, || {
            scratch.clear();
            scratch.extend(ring.iter());
            let q1 = quantile(scratch, 0.25);
            let q3 = quantile(scratch, 0.75);
            let center = q1 / 2.0 + q3 / 2.0;
            // An IQR of 0 (a value holding half the window or more) is floored like any spread.
            band.band(center, q3 - q1, 0.5 + band.k)
        });
        let (j, learn) = judge_band(s.value, held, Window::Samples(band.window));
        self.ring.push(learn);
        Outcome::Judged(j)
    }

    fn describe(&self) -> (Option<f64>, Window) {
        (None, Window::Samples(self.band.window))
    }

    fn reset(&mut self) {
        self.ring.clear();
        self.held.clear();
    }
}

// ---------------------------------------------------------------------------------------------------

/// The consistency constant that makes the MAD estimate σ on normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// The same for the mean absolute deviation (√(π/2)), used when the MAD is 0.
const MEAN_AD_TO_SIGMA: f64 = 1.253_314;

/// A robust band over the last n samples: anomalous outside median ± k·1.4826·MAD (the MAD being the
/// median of the absolute deviations from the median).
///
/// `(x − median) / (1.4826·MAD)` is Iglewicz and Hoaglin's modified z-score, and their suggested cut-off
/// of 3.5 is the default k. Prefer it to [`MeanSigma`] on heavy-tailed signals (latency): up to half of
/// the window can be outliers before the median or the MAD move much. When the MAD is 0 (half the
/// window or more at the median, as with quantized sketch quantiles) σ is 1.2533 × the mean absolute
/// deviation from the median instead, as Iglewicz and Hoaglin suggest; and it is at least 2 % of
/// |median| ([`min_relative_spread`](MedianMadBuilder::min_relative_spread)). Defaults: n = 100,
/// k = 3.5, warm-up 30 samples (or n if smaller). Score: 0.5 at the band's edge, 1 at twice its
/// half-width.
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, MedianMad, Status};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// let mut d = MedianMad::builder("GET / p99").window(5).k(3.5).warm_up(5).build().unwrap();
/// let t0 = Instant::now();
/// let at = |i: u32| t0 + i * Duration::from_secs(10);
/// // 1, 2, 3, 4, 100: median 3, MAD 1 — the outlier 100 does not widen the band 3 ± 5.1891.
/// for (i, v) in [1.0, 2.0, 3.0, 4.0, 100.0].into_iter().enumerate() {
///     d.observe(Sample::new(v, at(i as u32)));
/// }
/// let v = d.observe(Sample::new(9.0, at(5)));
/// assert_eq!(v.status, Status::Anomalous);
/// assert!((v.threshold.unwrap() - 8.1891).abs() < 1e-9);
/// ```
#[derive(Debug)]
pub struct MedianMad {
    engine: Engine<MadRule>,
}

impl MedianMad {
    /// A builder for a median ± k·MAD band on `signal`.
    pub fn builder(signal: impl Into<Arc<str>>) -> MedianMadBuilder {
        MedianMadBuilder {
            signal: signal.into(),
            band: BandSettings {
                layer: "median_mad detector",
                window: 100,
                k: 3.5,
                min_spread: 0.0,
                min_relative_spread: DEFAULT_MIN_RELATIVE_SPREAD,
            },
            guards: Guards::with_warm_up(UNSET),
        }
    }
}

engine_detector!(MedianMad);

/// Settings of a [`MedianMad`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct MedianMadBuilder {
    signal: Arc<str>,
    band: BandSettings,
    guards: Guards,
}

impl MedianMadBuilder {
    /// The band's half-width in σ-equivalents (1.4826·MAD), a finite number ≥ 2. Default 3.5.
    pub fn k(mut self, k: f64) -> Self {
        self.band.k = k;
        self
    }

    band_setters!();

    /// Validates the settings; allocates the window.
    pub fn build(self) -> Result<MedianMad, BuildError> {
        self.band.validate("k", 2.0)?;
        let rule = MadRule {
            ring: Ring::new(self.band.window),
            scratch: Vec::with_capacity(self.band.window),
            band: self.band,
            held: Held::default(),
        };
        Ok(MedianMad {
            engine: Engine::new(
                "median_mad",
                self.signal,
                self.band.guards(self.guards),
                rule,
            ),
        })
    }
}

#[derive(Debug)]
pub(crate) struct MadRule {
    ring: Ring<f64>,
    scratch: Vec<f64>,
    band: BandSettings,
    held: Held,
}

impl Rule for MadRule {
    fn learn(&mut self, s: &Sample) {
        self.ring.push(s.value);
    }

    fn judge(&mut self, s: &Sample, hold: bool) -> Outcome {
        if self.ring.len() < 2 {
            self.ring.push(s.value);
            return Outcome::NoBaseline;
        }
        let (ring, scratch, band) = (&self.ring, &mut self.scratch, &self.band);
        let held = self.held.band(hold, || {
            scratch.clear();
            scratch.extend(ring.iter());
            let median = quantile(scratch, 0.5);
            for v in scratch.iter_mut() {
                *v = (*v - median).abs();
            }
            let mad = quantile(scratch, 0.5);
            let sigma = if mad > 0.0 {
                MAD_TO_SIGMA * mad
            } else {
                // Half the window or more at the median: Iglewicz and Hoaglin's fallback.
                MEAN_AD_TO_SIGMA * scratch.iter().sum::<f64>() / scratch.len() as f64
            };
            band.band(median, sigma, band.k)
        });
        let (j, learn) = judge_band(s.value, held, Window::Samples(band.window));
        self.ring.push(learn);
        Outcome::Judged(j)
    }

    fn describe(&self) -> (Option<f64>, Window) {
        (None, Window::Samples(self.band.window))
    }

    fn reset(&mut self) {
        self.ring.clear();
        self.held.clear();
    }
}
