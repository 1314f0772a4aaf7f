//! An exponentially weighted moving average with a deviation band.

use std::sync::Arc;

use super::guard::{engine_detector, guard_setters, Engine, Guards, Outcome, Rule};
use super::stats::{
    check_min_relative_spread, floor, judge_band, Held, DEFAULT_MIN_RELATIVE_SPREAD,
};
use super::{BuildError, Sample, Window};

const NAME: &str = "ewma detector";

/// An EWMA with a deviation band: anomalous outside mean ± k·σ, both exponentially weighted.
///
/// The warm-up (default 20 samples) builds a plain mean and variance; after it, each sample inside the
/// band updates them as `mean += α·d`, `var = (1 − α)·(var + α·d²)` with `d = x − mean`; a sample
/// outside the band is learned as the band's edge (winsorized, see
/// [the module docs](super#baselines-learn-winsorized-samples)). α is the weight of the newest sample: 0.1 remembers about the last 20
/// samples, 0.3 about the last 6. O(1) memory and time. Defaults: α = 0.2, k = 3. Score: 0.5 at the
/// band's edge, 1 at twice k·σ from the mean.
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::detect::{Detector, Ewma, Status};
/// use palisade_heal::signals::Sample;
/// use tokio::time::Instant;
///
/// let mut d = Ewma::builder("error rate").alpha(0.2).k(3.0).warm_up(4).build().unwrap();
/// let t0 = Instant::now();
/// let at = |i: u32| t0 + i * Duration::from_secs(10);
/// // Warm-up 9, 11, 9, 11: mean 10, σ 1, band 7 ..= 13.
/// for (i, v) in [9.0, 11.0, 9.0, 11.0].into_iter().enumerate() {
///     assert_eq!(d.observe(Sample::new(v, at(i as u32))).status, Status::Warming);
/// }
/// // 12 is inside: mean 10 + 0.2·2 = 10.4, var 0.8·(1 + 0.2·4) = 1.44, σ 1.2, band 6.8 ..= 14.
/// assert_eq!(d.observe(Sample::new(12.0, at(4))).status, Status::Normal);
/// let v = d.observe(Sample::new(14.5, at(5)));
/// assert_eq!(v.status, Status::Anomalous);
/// assert!((v.threshold.unwrap() - 14.0).abs() < 1e-9);
/// ```
#[derive(Debug)]
pub struct Ewma {
    engine: Engine<EwmaRule>,
}

impl Ewma {
    /// A builder for an EWMA band on `signal`.
    pub fn builder(signal: impl Into<Arc<str>>) -> EwmaBuilder {
        EwmaBuilder {
            signal: signal.into(),
            alpha: 0.2,
            k: 3.0,
            min_spread: 0.0,
            min_relative_spread: DEFAULT_MIN_RELATIVE_SPREAD,
            guards: Guards::with_warm_up(20),
        }
    }
}

engine_detector!(Ewma);

/// Settings of an [`Ewma`]; [`build`](Self::build) validates them.
#[derive(Debug, Clone)]
pub struct EwmaBuilder {
    signal: Arc<str>,
    alpha: f64,
    k: f64,
    min_spread: f64,
    min_relative_spread: f64,
    guards: Guards,
}

impl EwmaBuilder {
    /// The weight of the newest sample, in `0.1..=0.3`: smaller is too slow to follow a baseline,
    /// larger follows the anomaly itself. Default 0.2.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The band's half-width in (EW) standard deviations, a finite number ≥ 2. Default 3.
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// The smallest σ the band uses, in the signal's units (default 0): set it to the signal's
    /// resolution so that a perfectly flat baseline does not alarm on the smallest wiggle.
    pub fn min_spread(mut self, spread: f64) -> Self {
        self.min_spread = spread;
        self
    }

    /// The smallest σ the band uses, as a fraction of the magnitude of the mean, a finite number ≥ 0.
    /// Default 0.02 (2 %), above the recorder's 1 % quantile accuracy; the larger of this and
    /// [`min_spread`](Self::min_spread) wins. See [`MeanSigmaBuilder::min_relative_spread`](super::MeanSigmaBuilder::min_relative_spread).
    pub fn min_relative_spread(mut self, fraction: f64) -> Self {
        self.min_relative_spread = fraction;
        self
    }

    guard_setters!();

    /// Validates the settings.
    pub fn build(self) -> Result<Ewma, BuildError> {
        if !(0.1..=0.3).contains(&self.alpha) {
            return Err(BuildError::new(
                NAME,
                "alpha",
                format!("{} is not in 0.1..=0.3", self.alpha),
            ));
        }
        if !(self.k.is_finite() && self.k >= 2.0) {
            return Err(BuildError::new(
                NAME,
                "k",
                format!(
                    "{} is not a finite number >= 2 (a narrower band learns only its own centre and shrinks)",
                    self.k
                ),
            ));
        }
        if !(self.min_spread.is_finite() && self.min_spread >= 0.0) {
            return Err(BuildError::new(
                NAME,
                "min_spread",
                format!("{} is not a finite number >= 0", self.min_spread),
            ));
        }
        check_min_relative_spread(NAME, self.min_relative_spread)?;
        let rule = EwmaRule {
            alpha: self.alpha,
            k: self.k,
            min_spread: self.min_spread,
            min_relative_spread: self.min_relative_spread,
            held: Held::default(),
            n: 0,
            mean: 0.0,
            var: 0.0,
        };
        Ok(Ewma {
            engine: Engine::new("ewma", self.signal, self.guards, rule),
        })
    }
}

#[derive(Debug)]
pub(crate) struct EwmaRule {
    alpha: f64,
    k: f64,
    min_spread: f64,
    min_relative_spread: f64,
    /// The band of the previous judgement, for a pending breach.
    held: Held,
    /// Samples learned.
    n: u64,
    mean: f64,
    var: f64,
}

impl Rule for EwmaRule {
    fn learn(&mut self, s: &Sample) {
        // Welford's running mean and (population) variance.
        self.n += 1;
        let d = s.value - self.mean;
        self.mean += d / self.n as f64;
        self.var += (d * (s.value - self.mean) - self.var) / self.n as f64;
    }

    fn judge(&mut self, s: &Sample, hold: bool) -> Outcome {
        if self.n < 2 {
            self.learn(s);
            return Outcome::NoBaseline;
        }
        let (mean, var) = (self.mean, self.var);
        let (k, min_spread, min_relative) = (self.k, self.min_spread, self.min_relative_spread);
        let held = self.held.band(hold, || {
            let (sd, clip) = floor(var.sqrt(), min_spread, min_relative, mean);
            (mean, k * sd, clip)
        });
        let window = Window::Ewma { alpha: self.alpha };
        let (j, learn) = judge_band(s.value, held, window);
        // Winsorized: a sample outside the band is learned as the band's edge.
        let d = learn - self.mean;
        self.mean += self.alpha * d;
        self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d);
        Outcome::Judged(j)
    }

    fn describe(&self) -> (Option<f64>, Window) {
        (None, Window::Ewma { alpha: self.alpha })
    }

    fn reset(&mut self) {
        self.held.clear();
        self.n = 0;
        self.mean = 0.0;
        self.var = 0.0;
    }
}
