//! How long to wait before hedging: the [`HedgeDelay`] trait, a fixed delay, and the built-in latency
//! estimator [`LatencyPercentile`].

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::config::BuildError;
use tokio::time::Instant;

use crate::layer::LAYER;

/// Decides how long a request's first attempt may run before a hedge is sent, and learns from the
/// latencies the layer observes.
///
/// Implemented by [`Duration`] (a fixed delay; [`Duration::ZERO`] is parallel mode) and by the
/// built-in estimator [`LatencyPercentile`]. Implement it to take the delay from elsewhere — for
/// example from a latency signal recorder that already tracks the backend's percentiles; such an
/// implementation leaves [`record`](Self::record) at its default and [`wants_samples`](Self::wants_samples)
/// at `false`.
///
/// Both methods run on the request path (`delay` once per hedgeable request, in `call`; `record` once per
/// hedgeable request when its first attempt ends): keep them to a few atomic operations.
pub trait HedgeDelay: Send + Sync + 'static {
    /// The delay before the next hedge of a request arriving now, or `None` not to hedge it (for
    /// example while an estimator has too few samples). The same delay separates each further hedge of
    /// that request.
    fn delay(&self) -> Option<Duration>;

    /// Records how long a first attempt took, finished at `now`. A first attempt cut short because a
    /// hedge answered first is recorded with the time it had run, a lower bound of its latency. Default:
    /// nothing.
    fn record(&self, latency: Duration, now: Instant) {
        let _ = (latency, now);
    }

    /// Whether [`record`](Self::record) wants samples. The layer reads the clock to measure first
    /// attempts only if it does, so a fixed delay costs no clock read on a request answered at its first
    /// poll. Read once, when the layer is built. Default: `false`.
    fn wants_samples(&self) -> bool {
        false
    }
}

impl HedgeDelay for Duration {
    fn delay(&self) -> Option<Duration> {
        Some(*self)
    }
}

impl<D: HedgeDelay + ?Sized> HedgeDelay for Arc<D> {
    fn delay(&self) -> Option<Duration> {
        (**self).delay()
    }

    fn record(&self, latency: Duration, now: Instant) {
        (**self).record(latency, now);
    }

    fn wants_samples(&self) -> bool {
        (**self).wants_samples()
    }
}

/// The default [`percentile`](LatencyPercentileBuilder::percentile): 0.95.
pub const DEFAULT_PERCENTILE: f64 = 0.95;
/// The default [`window`](LatencyPercentileBuilder::window): 10 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The default [`min_samples`](LatencyPercentileBuilder::min_samples): 100.
pub const DEFAULT_MIN_SAMPLES: u32 = 100;
/// The default lower clamp of the estimate ([`clamp`](LatencyPercentileBuilder::clamp)): 1 ms.
pub const DEFAULT_MIN_DELAY: Duration = Duration::from_millis(1);
/// The default upper clamp of the estimate ([`clamp`](LatencyPercentileBuilder::clamp)): 30 s.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest delay (fixed, or an estimator's clamp or window) a builder accepts: 1 hour.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The most [`min_samples`](LatencyPercentileBuilder::min_samples) accepted: 1,000,000.
pub const MAX_MIN_SAMPLES: u32 = 1_000_000;

/// Latencies below this many microseconds have a bucket each.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two above [`LINEAR`] (3 bits: 12.5 % resolution).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The largest latency told apart, in microseconds: 2³² µs ≈ 71 minutes; longer ones share the top
/// bucket.
const TOP_EXP: u32 = 32;
/// Buckets per window: 16 linear, then 8 per power of two from 2⁴ to 2³².
const BUCKETS: usize = (LINEAR + (TOP_EXP as u64 - 4) * SUB) as usize;
/// The estimate is recomputed once every this many samples (and at each window change).
const RECOMPUTE_EVERY: u32 = 32;

/// The bucket of a latency of `us` microseconds.
fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // ≥ 4
    if exp >= TOP_EXP {
        return BUCKETS - 1;
    }
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(exp - 4) * SUB + sub) as usize
}

/// The largest latency, in microseconds, that falls in bucket `i` (the estimate errs long, never short).
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 4;
    let sub = (i - LINEAR) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    (1u64 << exp) + (sub + 1) * width - 1
}

/// One window's counts.
struct Window {
    counts: Box<[AtomicU32]>,
}

impl Window {
    fn new() -> Self {
        Window {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn clear(&self) {
        for c in self.counts.iter() {
            c.store(0, Relaxed);
        }
    }
}

struct Estimator {
    percentile: f64,
    window: Duration,
    min_samples: u64,
    min_delay: Duration,
    max_delay: Duration,
    start: Instant,
    /// The current window's number since `start` (windows alternate between the two slots).
    epoch: AtomicU64,
    windows: [Window; 2],
    /// Samples since the last recomputation.
    since: AtomicU32,
    /// The estimate in nanoseconds plus one; 0 = none (too few samples).
    estimate: AtomicU64,
}

/// The built-in latency estimator: a chosen percentile (default p95) of the first-attempt latencies of
/// the last one to two [windows](LatencyPercentileBuilder::window) (default 10 s each), clamped to a
/// range (default 1 ms – 30 s), and no estimate — so no hedging — until it holds
/// [`min_samples`](LatencyPercentileBuilder::min_samples) (default 100).
///
/// Memory is fixed: two windows of 240 log-linear buckets (exact below 16 µs, then 12.5 % wide, up to
/// about 71 minutes), about 2 KiB. Recording is one atomic increment (plus, once every 32 samples or
/// at a window change, a scan of the buckets to refresh the cached estimate); [`delay`](HedgeDelay::delay)
/// is one atomic load. The estimate is a bucket's upper edge, so it errs long by at most 12.5 %.
/// Samples recorded while a window is being cleared may be lost: it is an estimate.
///
/// It is a cheap `Clone` sharing one state: keep a clone to read [`estimate`](Self::estimate) or feed it
/// with [`record`](HedgeDelay::record) yourself.
///
/// ```
/// use palisade_hedge::{HedgeDelay, LatencyPercentile};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let p95 = LatencyPercentile::builder().min_samples(10).build().unwrap();
/// assert_eq!(p95.estimate(), None); // too few samples: no hedging yet
/// // Latencies spread evenly over 1–100 ms.
/// for i in 0..1000 {
///     p95.record(Duration::from_millis(1 + i % 100), Instant::now());
/// }
/// let d = p95.estimate().unwrap();
/// assert!(d >= Duration::from_millis(95) && d <= Duration::from_millis(108), "{d:?}");
/// # }
/// ```
#[derive(Clone)]
pub struct LatencyPercentile {
    inner: Arc<Estimator>,
}

impl LatencyPercentile {
    /// A builder with the defaults.
    pub fn builder() -> LatencyPercentileBuilder {
        LatencyPercentileBuilder::default()
    }

    /// An estimator with the defaults: p95 over 10 s windows, at least 100 samples, clamped to
    /// 1 ms – 30 s.
    pub fn new() -> Self {
        match Self::builder().build() {
            Ok(e) => e,
            Err(e) => unreachable!("the defaults are valid: {e}"),
        }
    }

    /// The current estimate (the delay a request arriving now would be hedged after), or `None` while
    /// there are fewer than `min_samples` samples in the last two windows.
    pub fn estimate(&self) -> Option<Duration> {
        match self.inner.estimate.load(Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// The samples in the current and the previous window (an approximation while samples arrive).
    pub fn samples(&self) -> u64 {
        self.inner
            .windows
            .iter()
            .flat_map(|w| w.counts.iter())
            .map(|c| u64::from(c.load(Relaxed)))
            .sum()
    }
}

impl Default for LatencyPercentile {
    fn default() -> Self {
        Self::new()
    }
}

impl Estimator {
    /// Moves to the window of `now` if it is a later one, clearing the slots that fell out of range.
    /// Returns the current epoch and whether it changed.
    fn advance(&self, now: Instant) -> (u64, bool) {
        let elapsed = now.saturating_duration_since(self.start);
        let epoch = (elapsed.as_nanos() / self.window.as_nanos()) as u64;
        let mut cur = self.epoch.load(Relaxed);
        while epoch > cur {
            match self
                .epoch
                .compare_exchange_weak(cur, epoch, Relaxed, Relaxed)
            {
                Ok(_) => {
                    // The slot of the new window held `epoch - 2` (or older): clear it. If more than one
                    // window passed, the previous slot is stale too.
                    self.windows[(epoch % 2) as usize].clear();
                    if epoch > cur + 1 {
                        self.windows[((epoch + 1) % 2) as usize].clear();
                    }
                    return (epoch, true);
                }
                Err(actual) => cur = actual,
            }
        }
        (cur.max(epoch), false)
    }

    fn record(&self, latency: Duration, now: Instant) {
        let (epoch, changed) = self.advance(now);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = &self.windows[(epoch % 2) as usize];
        let c = &slot.counts[bucket_of(us)];
        // Saturate rather than wrap (4 billion samples in one bucket of one window).
        if c.load(Relaxed) < u32::MAX {
            c.fetch_add(1, Relaxed);
        }
        let n = self.since.fetch_add(1, Relaxed);
        if changed || n + 1 >= RECOMPUTE_EVERY || self.estimate.load(Relaxed) == 0 {
            self.since.store(0, Relaxed);
            self.recompute();
        }
    }

    /// Recomputes the cached estimate from both windows.
    fn recompute(&self) {
        let mut merged = [0u64; BUCKETS];
        let mut total = 0u64;
        for w in &self.windows {
            for (m, c) in merged.iter_mut().zip(w.counts.iter()) {
                let n = u64::from(c.load(Relaxed));
                *m += n;
                total += n;
            }
        }
        if total < self.min_samples || total == 0 {
            self.estimate.store(0, Relaxed);
            return;
        }
        // The smallest bucket whose cumulative count reaches ⌈percentile × total⌉.
        let rank = ((self.percentile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        let mut idx = BUCKETS - 1;
        for (i, n) in merged.iter().enumerate() {
            seen += n;
            if seen >= rank {
                idx = i;
                break;
            }
        }
        let d = Duration::from_micros(bucket_upper(idx)).clamp(self.min_delay, self.max_delay);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1);
        self.estimate.store(nanos + 1, Relaxed);
    }
}

impl HedgeDelay for LatencyPercentile {
    fn delay(&self) -> Option<Duration> {
        self.estimate()
    }

    fn record(&self, latency: Duration, now: Instant) {
        self.inner.record(latency, now);
    }

    fn wants_samples(&self) -> bool {
        true
    }
}

impl fmt::Debug for LatencyPercentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.inner;
        f.debug_struct("LatencyPercentile")
            .field("percentile", &e.percentile)
            .field("window", &e.window)
            .field("min_samples", &e.min_samples)
            .field("min_delay", &e.min_delay)
            .field("max_delay", &e.max_delay)
            .field("estimate", &self.estimate())
            .finish()
    }
}

/// Builds a [`LatencyPercentile`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct LatencyPercentileBuilder {
    percentile: f64,
    window: Duration,
    min_samples: u32,
    min_delay: Duration,
    max_delay: Duration,
}

impl Default for LatencyPercentileBuilder {
    fn default() -> Self {
        LatencyPercentileBuilder {
            percentile: DEFAULT_PERCENTILE,
            window: DEFAULT_WINDOW,
            min_samples: DEFAULT_MIN_SAMPLES,
            min_delay: DEFAULT_MIN_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl LatencyPercentileBuilder {
    /// The percentile of first-attempt latency to hedge after, in `(0, 1)` (default
    /// [`DEFAULT_PERCENTILE`], 0.95: about one request in twenty is hedged when latency is steady).
    pub fn percentile(mut self, p: f64) -> Self {
        self.percentile = p;
        self
    }

    /// How long one window lasts (default 10 s; 1 ms to [`MAX_DELAY`]). The estimate covers the
    /// current window and the one before it, so it follows a change of latency within two windows.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How many samples the two windows must hold before there is an estimate (default 100, at most
    /// [`MAX_MIN_SAMPLES`]). Until then requests are not hedged.
    pub fn min_samples(mut self, n: u32) -> Self {
        self.min_samples = n;
        self
    }

    /// Clamps the estimate to `min ..= max` (default 1 ms – 30 s; `max` at most [`MAX_DELAY`]).
    pub fn clamp(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max;
        self
    }

    /// Checks the settings and builds the estimator.
    ///
    /// # Errors
    ///
    /// A percentile outside `(0, 1)`, a window shorter than 1 ms or longer than [`MAX_DELAY`],
    /// `min_samples` above [`MAX_MIN_SAMPLES`], or a clamp whose minimum exceeds its maximum or whose
    /// maximum exceeds [`MAX_DELAY`].
    pub fn build(self) -> Result<LatencyPercentile, BuildError> {
        if !(self.percentile > 0.0 && self.percentile < 1.0) {
            return Err(BuildError::new(
                LAYER,
                "percentile",
                format!("{} is not in (0, 1)", self.percentile),
            ));
        }
        if self.window < Duration::from_millis(1) || self.window > MAX_DELAY {
            return Err(BuildError::new(
                LAYER,
                "window",
                format!("{:?} is not in 1 ms ..= {MAX_DELAY:?}", self.window),
            ));
        }
        if self.min_samples > MAX_MIN_SAMPLES {
            return Err(BuildError::new(
                LAYER,
                "min_samples",
                format!("{} is above {MAX_MIN_SAMPLES}", self.min_samples),
            ));
        }
        if self.max_delay > MAX_DELAY || self.min_delay > self.max_delay {
            return Err(BuildError::new(
                LAYER,
                "clamp",
                format!(
                    "{:?} ..= {:?} is not a range within {MAX_DELAY:?}",
                    self.min_delay, self.max_delay
                ),
            ));
        }
        Ok(LatencyPercentile {
            inner: Arc::new(Estimator {
                percentile: self.percentile,
                window: self.window,
                min_samples: u64::from(self.min_samples),
                min_delay: self.min_delay,
                max_delay: self.max_delay,
                start: Instant::now(),
                epoch: AtomicU64::new(0),
                windows: [Window::new(), Window::new()],
                since: AtomicU32::new(0),
                estimate: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        let mut prev = None;
        for i in 0..BUCKETS {
            let up = bucket_upper(i);
            if let Some(p) = prev {
                assert!(up > p, "bucket {i}");
            }
            assert_eq!(bucket_of(up), i, "upper edge of {i} falls in it");
            if i > 0 {
                assert_eq!(
                    bucket_of(bucket_upper(i - 1) + 1),
                    i,
                    "bucket {i} starts after {}",
                    i - 1
                );
            }
            prev = Some(up);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for us in [16u64, 17, 100, 1000, 12_345, 1 << 20, (1 << 32) - 1] {
            let up = bucket_upper(bucket_of(us));
            assert!(
                up >= us && (up - us) as f64 <= us as f64 * 0.125,
                "{us} -> {up}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn estimate_needs_min_samples_and_follows_windows() {
        let e = LatencyPercentile::builder()
            .min_samples(10)
            .window(Duration::from_secs(1))
            .clamp(Duration::ZERO, Duration::from_secs(10))
            .build()
            .unwrap();
        for _ in 0..9 {
            e.record(Duration::from_millis(10), Instant::now());
        }
        assert_eq!(e.estimate(), None);
        e.record(Duration::from_millis(10), Instant::now());
        let d = e.estimate().unwrap();
        assert!(
            d >= Duration::from_millis(10) && d < Duration::from_millis(12),
            "{d:?}"
        );
        // Latency rises: after one window the new samples dominate the p95 of both windows...
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            e.record(Duration::from_millis(200), Instant::now());
        }
        assert!(e.estimate().unwrap() >= Duration::from_millis(200));
        // ...and after two more quiet windows the old ones are gone.
        tokio::time::advance(Duration::from_secs(2)).await;
        e.record(Duration::from_millis(50), Instant::now());
        assert_eq!(e.samples(), 1);
        assert_eq!(e.estimate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn estimate_is_clamped() {
        let e = LatencyPercentile::builder()
            .min_samples(1)
            .clamp(Duration::from_millis(5), Duration::from_millis(50))
            .build()
            .unwrap();
        e.record(Duration::from_micros(3), Instant::now());
        assert_eq!(e.estimate(), Some(Duration::from_millis(5)));
        e.record(Duration::from_secs(9), Instant::now());
        e.record(Duration::from_secs(9), Instant::now());
        // The estimate refreshes every 32 samples; force it.
        e.inner.recompute();
        assert_eq!(e.estimate(), Some(Duration::from_millis(50)));
    }

    #[test]
    fn validation() {
        let b = LatencyPercentile::builder;
        assert_eq!(
            b().percentile(1.0).build().unwrap_err().setting(),
            "percentile"
        );
        assert_eq!(
            b().percentile(0.0).build().unwrap_err().setting(),
            "percentile"
        );
        assert_eq!(
            b().percentile(f64::NAN).build().unwrap_err().setting(),
            "percentile"
        );
        assert_eq!(
            b().window(Duration::ZERO).build().unwrap_err().setting(),
            "window"
        );
        assert_eq!(
            b().min_samples(MAX_MIN_SAMPLES + 1)
                .build()
                .unwrap_err()
                .setting(),
            "min_samples"
        );
        assert_eq!(
            b().clamp(Duration::from_secs(2), Duration::from_secs(1))
                .build()
                .unwrap_err()
                .setting(),
            "clamp"
        );
        assert!(b().build().is_ok());
    }
}
