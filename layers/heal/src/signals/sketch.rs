//! A mergeable relative-error latency histogram (DDSketch-style), in atomics.
//!
//! Values are sorted into logarithmic buckets: with relative accuracy `α` and `γ = (1 + α) / (1 − α)`,
//! bucket `i` holds the values in `(min·γ^(i−1), min·γ^i]`, i.e. `i = ⌈log_γ(x / min)⌉`, and is
//! represented by `min·2γ^i / (γ + 1)`. Every value of a bucket is within a relative `α` of that
//! representative, so:
//!
//! **Guarantee.** For a set of `n` values in the sketch's range and any `q` in `[0, 1]`,
//! [`Histogram::quantile`] returns `x̂` with `|x̂ − x| ≤ α·x`, where `x` is the exact quantile: the
//! value of rank `⌊q·(n − 1)⌋` (0-based) in the sorted values. Values outside the range are clamped
//! into the edge buckets — their quantiles are only as good as the clamp (a value above the range
//! reads as the top of the range) — and counted ([`Histogram::below`], [`Histogram::above`]).
//!
//! The bucket range is fixed by the [`Mapping`] (default: `α` = 1 %, 1 µs to 1 h, 1,102 buckets),
//! so memory is bounded and known up front: an [`AtomicSketch`] is 4 bytes per bucket plus a few
//! words (4.4 KB by default, [`Mapping::sketch_bytes`]). Recording is one relaxed atomic add on
//! the bucket (a second one, on a cold path, only for a value out of range) and never allocates.
//! Sketches with the same mapping merge exactly (bucket counts add), which is how a sliding window
//! is summed from its time slots.
//!
//! Bad input never panics: zero and values below the range land in the lowest bucket (counted as
//! below), `+∞` and values above it in the highest (counted as above), negative values count as
//! below, and `NaN` is not recorded but counted ([`Histogram::invalid`]).
//!
//! ```
//! use std::time::Duration;
//! use palisade_heal::signals::sketch::{AtomicSketch, Mapping};
//!
//! let sketch = AtomicSketch::new(Mapping::default());
//! for ms in 1..=1000u64 {
//!     sketch.record(Duration::from_millis(ms));
//! }
//! let h = sketch.snapshot();
//! assert_eq!(h.count(), 1000);
//! let p99 = h.quantile(0.99).unwrap().as_secs_f64();
//! // The exact p99 of 1..=1000 ms is the value of rank ⌊0.99 × 999⌋ = 989: 990 ms.
//! assert!((p99 - 0.990).abs() <= 0.01 * 0.990);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::config::BuildError;

const LAYER: &str = "latency recorder";

/// The bucket layout of a sketch: relative accuracy and value range. Cheap to clone (clones share
/// the lookup tables); sketches merge only with sketches of an equal mapping.
///
/// Integer nanoseconds ([`index_nanos`](Self::index_nanos), what the recorder uses) are bucketed
/// without a logarithm: bucket `i` holds the integers in `(⌊min·γ^(i−1)⌋, ⌊min·γ^i⌋]` (the same
/// guarantee), found from the value's leading bit and next 7 bits in a table, then at most a step or
/// two along the bucket bounds. The tables take `8 × buckets + 256 × octaves` bytes per mapping
/// (about 17 KB by default), shared by every sketch of the mapping.
#[derive(Clone)]
pub struct Mapping {
    alpha: f64,
    gamma: f64,
    /// `1 / ln γ`.
    inv_ln_gamma: f64,
    /// The lowest in-range value, in nanoseconds (≥ 1).
    min_nanos: u64,
    /// The number of buckets.
    buckets: u32,
    tables: Arc<Tables>,
}

/// Sub-octave bits of the lookup table.
const SUB_BITS: u32 = 7;

/// The integer-nanosecond lookup tables of a mapping.
struct Tables {
    /// `bounds[i]` = ⌊min·γ^i⌋: the largest integer of bucket `i`.
    bounds: Box<[u64]>,
    /// The lowest octave in `start` (⌊log2 min⌋).
    first_octave: u32,
    /// For octave `k` and the 7 bits after the leading one, `start[(k − first_octave) << 7 | sub]`:
    /// the bucket of the smallest integer with that prefix.
    start: Box<[u16]>,
}

impl Tables {
    fn new(min_nanos: u64, gamma: f64, buckets: u32) -> Tables {
        let bounds: Box<[u64]> = (0..buckets)
            .map(|i| (min_nanos as f64 * gamma.powi(i as i32)).floor() as u64)
            .scan(0u64, |prev, b| {
                // Monotone even with float rounding.
                *prev = (*prev).max(b);
                Some(*prev)
            })
            .collect();
        let top = bounds[bounds.len() - 1];
        let first_octave = 63 - min_nanos.leading_zeros();
        let last_octave = 63 - top.leading_zeros();
        let mut start = Vec::with_capacity(((last_octave - first_octave + 1) << SUB_BITS) as usize);
        for k in first_octave..=last_octave {
            for sub in 0..1u64 << SUB_BITS {
                let prefix = (1u64 << SUB_BITS) | sub;
                // The smallest integer with this leading bit and prefix.
                let lo = if k >= SUB_BITS {
                    prefix << (k - SUB_BITS)
                } else {
                    let shift = SUB_BITS - k;
                    (prefix + (1 << shift) - 1) >> shift
                };
                let i = bounds.partition_point(|&b| b < lo).min(bounds.len() - 1);
                start.push(i as u16);
            }
        }
        Tables {
            bounds,
            first_octave,
            start: start.into_boxed_slice(),
        }
    }

    fn bytes(&self) -> usize {
        self.bounds.len() * 8 + self.start.len() * 2
    }
}

impl Mapping {
    /// The default relative accuracy: 1 %.
    pub const DEFAULT_RELATIVE_ACCURACY: f64 = 0.01;
    /// The default lowest value: 1 µs.
    pub const DEFAULT_MIN: Duration = Duration::from_micros(1);
    /// The default highest value: 1 hour.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(3600);
    /// The most buckets a mapping may have (256 KiB per sketch).
    pub const MAX_BUCKETS: u32 = 65_536;

    /// A mapping with relative accuracy `alpha` (in `[0.0001, 0.5]`) whose buckets cover `min..=max`
    /// (`min` at least 1 ns, `max` greater than `min`; at most [`MAX_BUCKETS`](Self::MAX_BUCKETS)
    /// buckets).
    pub fn new(alpha: f64, min: Duration, max: Duration) -> Result<Self, BuildError> {
        if !(0.0001..=0.5).contains(&alpha) {
            return Err(BuildError::new(
                LAYER,
                "relative_accuracy",
                format!("{alpha} is not in [0.0001, 0.5]"),
            ));
        }
        let min_nanos = duration_nanos(min);
        let max_nanos = duration_nanos(max);
        if min_nanos == 0 {
            return Err(BuildError::new(LAYER, "min", "must be at least 1 ns"));
        }
        if max_nanos <= min_nanos {
            return Err(BuildError::new(
                LAYER,
                "max",
                format!("{max:?} is not greater than min {min:?}"),
            ));
        }
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        let inv_ln_gamma = 1.0 / gamma.ln();
        // Buckets 0..=top with min·γ^top ≥ max.
        let top = ((max_nanos as f64 / min_nanos as f64).ln() * inv_ln_gamma).ceil();
        if top + 1.0 > f64::from(Self::MAX_BUCKETS) {
            return Err(BuildError::new(
                LAYER,
                "relative_accuracy",
                format!(
                    "{alpha} over {min:?}..={max:?} needs more than {} buckets",
                    Self::MAX_BUCKETS
                ),
            ));
        }
        let buckets = top as u32 + 1;
        Ok(Mapping {
            alpha,
            gamma,
            inv_ln_gamma,
            min_nanos,
            buckets,
            tables: Arc::new(Tables::new(min_nanos, gamma, buckets)),
        })
    }

    /// The relative accuracy `α`.
    pub fn relative_accuracy(&self) -> f64 {
        self.alpha
    }

    /// `γ = (1 + α) / (1 − α)`, the ratio between consecutive bucket bounds.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets as usize
    }

    /// The lowest in-range value.
    pub fn min(&self) -> Duration {
        Duration::from_nanos(self.min_nanos)
    }

    /// The highest in-range value: the upper bound of the top bucket (at least the `max` asked for).
    pub fn max(&self) -> Duration {
        Duration::from_secs_f64(self.upper_bound_secs(self.buckets as usize - 1))
    }

    /// The memory of one [`AtomicSketch`] with this mapping, in bytes (4 per bucket plus the header).
    pub fn sketch_bytes(&self) -> usize {
        self.buckets() * std::mem::size_of::<AtomicU32>() + std::mem::size_of::<AtomicSketch>()
    }

    /// The memory of the mapping's lookup tables, in bytes (shared by all its clones and sketches).
    pub fn table_bytes(&self) -> usize {
        self.tables.bytes()
    }

    /// The bucket of a value of `nanos` nanoseconds, and whether it was clamped. No logarithm: a
    /// table lookup and a comparison or two.
    #[inline]
    pub fn index_nanos(&self, nanos: u64) -> (usize, Clamp) {
        if nanos <= self.min_nanos {
            let clamp = if nanos < self.min_nanos {
                Clamp::Below
            } else {
                Clamp::InRange
            };
            return (0, clamp);
        }
        let t = &*self.tables;
        let top = t.bounds.len() - 1;
        if nanos > t.bounds[top] {
            return (top, Clamp::Above);
        }
        // nanos > min ≥ 2^first_octave, and ≤ the top bound: its octave is in the table.
        let k = 63 - nanos.leading_zeros();
        let sub = if k >= SUB_BITS {
            (nanos >> (k - SUB_BITS)) & ((1 << SUB_BITS) - 1)
        } else {
            (nanos << (SUB_BITS - k)) & ((1 << SUB_BITS) - 1)
        };
        let slot = (((k - t.first_octave) as usize) << SUB_BITS) | sub as usize;
        let mut i = t.start.get(slot).map_or(top, |&i| usize::from(i));
        while i < top && nanos > t.bounds[i] {
            i += 1;
        }
        (i, Clamp::InRange)
    }

    /// The bucket of a value of `secs` seconds and whether it was clamped; `None` for `NaN`.
    pub fn index_secs(&self, secs: f64) -> Option<(usize, Clamp)> {
        if secs.is_nan() {
            return None;
        }
        let x = secs * 1e9 / self.min_nanos as f64;
        if x <= 1.0 {
            return Some((
                0,
                if x < 1.0 {
                    Clamp::Below
                } else {
                    Clamp::InRange
                },
            ));
        }
        Some(self.checked((x.ln() * self.inv_ln_gamma).ceil()))
    }

    #[inline]
    fn checked(&self, i: f64) -> (usize, Clamp) {
        let top = self.buckets - 1;
        // `i` is ≥ 0 here (the value is above min); `as` saturates, and +∞ is above the range.
        if i <= f64::from(top) {
            (i as usize, Clamp::InRange)
        } else {
            (top as usize, Clamp::Above)
        }
    }

    /// The representative value of bucket `i`, in seconds: within a relative `α` of every value of
    /// the bucket. Indexes past the top read as the top bucket.
    pub fn value_secs(&self, i: usize) -> f64 {
        let i = i.min(self.buckets as usize - 1);
        self.upper_bound_secs(i) * 2.0 / (self.gamma + 1.0)
    }

    fn upper_bound_secs(&self, i: usize) -> f64 {
        self.min_nanos as f64 * 1e-9 * self.gamma.powi(i as i32)
    }
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.alpha == other.alpha
            && self.min_nanos == other.min_nanos
            && self.buckets == other.buckets
    }
}

impl Default for Mapping {
    /// `α` = 1 %, 1 µs to 1 h: 1,102 buckets.
    fn default() -> Self {
        Mapping::new(
            Self::DEFAULT_RELATIVE_ACCURACY,
            Self::DEFAULT_MIN,
            Self::DEFAULT_MAX,
        )
        .expect("the default mapping is valid")
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("relative_accuracy", &self.alpha)
            .field("min", &self.min())
            .field("max", &self.max())
            .field("buckets", &self.buckets)
            .finish()
    }
}

/// Whether a value fell inside the mapping's range or was clamped into an edge bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clamp {
    /// In range.
    InRange,
    /// Below the range (zero, negative, or under `min`): in the lowest bucket.
    Below,
    /// Above the range (or `+∞`): in the highest bucket.
    Above,
}

/// Nanoseconds in `d`, saturating at `u64::MAX` (584 years).
#[inline]
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// A histogram of bucket counts in atomics: recorded from any thread with relaxed adds, read with
/// [`snapshot`](Self::snapshot) (or drained with [`drain_into`](Self::drain_into)).
///
/// Each bucket counts up to 2³² − 1 values. Recording is a plain add, so the sketch is meant for a
/// bounded time slot: the [recorder](super::recorder) records only into slots of at most
/// [`MAX_SLOT`](super::recorder::RecorderConfig::MAX_SLOT) (5 min), where that is over 14 million
/// values per second into one bucket. [`drain_into`](Self::drain_into) saturates (a bucket it would
/// take past 2³² − 1 stays there), so a sketch that accumulates many drains — a recorder's coarser
/// slots, hours long — undercounts rather than wraps. Memory: [`Mapping::sketch_bytes`].
pub struct AtomicSketch {
    mapping: Mapping,
    counts: Box<[AtomicU32]>,
    below: AtomicU64,
    above: AtomicU64,
    invalid: AtomicU64,
}

impl AtomicSketch {
    /// An empty sketch with `mapping`'s buckets.
    pub fn new(mapping: Mapping) -> Self {
        AtomicSketch {
            counts: (0..mapping.buckets()).map(|_| AtomicU32::new(0)).collect(),
            mapping,
            below: AtomicU64::new(0),
            above: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        }
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Records a latency.
    #[inline]
    pub fn record(&self, latency: Duration) {
        self.record_nanos(duration_nanos(latency));
    }

    /// Records a value of `nanos` nanoseconds.
    #[inline]
    pub fn record_nanos(&self, nanos: u64) {
        let (i, clamp) = self.mapping.index_nanos(nanos);
        self.record_index(i, clamp);
    }

    /// Records a value of `secs` seconds (`NaN` is counted as invalid and not recorded).
    pub fn record_secs(&self, secs: f64) {
        match self.mapping.index_secs(secs) {
            Some((i, clamp)) => self.record_index(i, clamp),
            None => {
                self.invalid.fetch_add(1, Relaxed);
            }
        }
    }

    #[inline]
    fn record_index(&self, i: usize, clamp: Clamp) {
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        if clamp != Clamp::InRange {
            self.clamped(clamp);
        }
    }

    #[cold]
    fn clamped(&self, clamp: Clamp) {
        match clamp {
            Clamp::Below => self.below.fetch_add(1, Relaxed),
            _ => self.above.fetch_add(1, Relaxed),
        };
    }

    /// The counts now, as a plain [`Histogram`] (concurrent records may or may not be in it).
    pub fn snapshot(&self) -> Histogram {
        let mut h = Histogram::new(self.mapping.clone());
        self.add_to(&mut h);
        h
    }

    /// Adds this sketch's counts to `h`. Does nothing if `h` has another mapping (returns `false`).
    pub fn add_to(&self, h: &mut Histogram) -> bool {
        if h.mapping != self.mapping {
            return false;
        }
        for (dst, src) in h.counts.iter_mut().zip(self.counts.iter()) {
            let v = u64::from(src.load(Relaxed));
            *dst += v;
            h.total += v;
        }
        h.below += self.below.load(Relaxed);
        h.above += self.above.load(Relaxed);
        h.invalid += self.invalid.load(Relaxed);
        true
    }

    /// Moves every count into `dst` (or, with `None`, discards them), leaving this sketch empty. Each
    /// bucket is taken with an atomic swap, so a value recorded concurrently ends up in exactly one
    /// of the two sketches; `dst`'s buckets saturate at 2³² − 1. Does nothing if the mappings differ
    /// (returns `false`).
    pub fn drain_into(&self, dst: Option<&AtomicSketch>) -> bool {
        self.drain_into_pausing(dst, None)
    }

    /// [`drain_into`](Self::drain_into), calling `pause` (a test hook) halfway through the buckets.
    pub(crate) fn drain_into_pausing(
        &self,
        dst: Option<&AtomicSketch>,
        pause: Option<&dyn Fn()>,
    ) -> bool {
        if dst.is_some_and(|d| d.mapping != self.mapping) {
            return false;
        }
        let move_u64 = |src: &AtomicU64, dst: Option<&AtomicU64>| {
            if src.load(Relaxed) != 0 {
                let v = src.swap(0, Relaxed);
                if let Some(d) = dst {
                    d.fetch_add(v, Relaxed);
                }
            }
        };
        match dst {
            Some(d) => {
                let half = self.counts.len() / 2;
                for (i, (s, t)) in self.counts.iter().zip(d.counts.iter()).enumerate() {
                    if i == half {
                        if let Some(pause) = pause {
                            pause();
                        }
                    }
                    if s.load(Relaxed) != 0 {
                        add_saturating(t, s.swap(0, Relaxed));
                    }
                }
                move_u64(&self.below, Some(&d.below));
                move_u64(&self.above, Some(&d.above));
                move_u64(&self.invalid, Some(&d.invalid));
            }
            None => {
                let half = self.counts.len() / 2;
                for (i, s) in self.counts.iter().enumerate() {
                    if i == half {
                        if let Some(pause) = pause {
                            pause();
                        }
                    }
                    if s.load(Relaxed) != 0 {
                        s.swap(0, Relaxed);
                    }
                }
                move_u64(&self.below, None);
                move_u64(&self.above, None);
                move_u64(&self.invalid, None);
            }
        }
        true
    }
}

/// Adds `v` to a bucket, saturating at 2³² − 1 (a compare-and-swap loop: drains only, off the
/// request path).
fn add_saturating(bucket: &AtomicU32, v: u32) {
    let mut c = bucket.load(Relaxed);
    while let Err(now) = bucket.compare_exchange_weak(c, c.saturating_add(v), Relaxed, Relaxed) {
        c = now;
    }
}

impl fmt::Debug for AtomicSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicSketch")
            .field("mapping", &self.mapping)
            .finish_non_exhaustive()
    }
}

/// Bucket counts read from one or more sketches: merge, count and ask for quantiles. See the
/// [module docs](self) for the error guarantee.
#[derive(Clone, PartialEq)]
pub struct Histogram {
    mapping: Mapping,
    counts: Vec<u64>,
    total: u64,
    below: u64,
    above: u64,
    invalid: u64,
}

impl Histogram {
    /// An empty histogram with `mapping`'s buckets.
    pub fn new(mapping: Mapping) -> Self {
        Histogram {
            counts: vec![0; mapping.buckets()],
            mapping,
            total: 0,
            below: 0,
            above: 0,
            invalid: 0,
        }
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Records a value of `secs` seconds (`NaN` is counted as invalid and not recorded).
    pub fn record_secs(&mut self, secs: f64) {
        match self.mapping.index_secs(secs) {
            Some((i, clamp)) => {
                self.counts[i] += 1;
                self.total += 1;
                match clamp {
                    Clamp::InRange => {}
                    Clamp::Below => self.below += 1,
                    Clamp::Above => self.above += 1,
                }
            }
            None => self.invalid += 1,
        }
    }

    /// Adds `other`'s counts to this one. Returns `false` and does nothing if the mappings differ.
    pub fn merge(&mut self, other: &Histogram) -> bool {
        if self.mapping != other.mapping {
            return false;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.below += other.below;
        self.above += other.above;
        self.invalid += other.invalid;
        true
    }

    /// The number of values recorded (clamped ones included, `NaN` not).
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Whether no value was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Values below the range, recorded in the lowest bucket.
    pub fn below(&self) -> u64 {
        self.below
    }

    /// Values above the range, recorded in the highest bucket.
    pub fn above(&self) -> u64 {
        self.above
    }

    /// `NaN` values, not recorded.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// The `q`-quantile in seconds (`q` clamped to `[0, 1]`): within a relative `α` of the value of
    /// rank `⌊q·(n − 1)⌋` for in-range data. `None` if the histogram is empty or `q` is `NaN`.
    pub fn quantile_secs(&self, q: f64) -> Option<f64> {
        if self.total == 0 || q.is_nan() {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.total - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Some(self.mapping.value_secs(i));
            }
        }
        // Unreachable when `total` is the sum of `counts`; answer the top rather than panic.
        Some(self.mapping.value_secs(self.counts.len() - 1))
    }

    /// The `q`-quantile as a [`Duration`]; see [`quantile_secs`](Self::quantile_secs).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_secs(q).map(Duration::from_secs_f64)
    }

    /// An estimate of the sum of the values, in seconds (each value counted at its bucket's
    /// representative: within a relative `α` for in-range data).
    pub fn sum_secs(&self) -> f64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c != 0)
            .map(|(i, &c)| c as f64 * self.mapping.value_secs(i))
            .sum()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("below", &self.below)
            .field("above", &self.above)
            .field("invalid", &self.invalid)
            .field("p50", &self.quantile_secs(0.5))
            .field("p99", &self.quantile_secs(0.99))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mapping_layout() {
        let m = Mapping::default();
        assert_eq!(m.buckets(), 1102);
        assert!(m.max() >= Duration::from_secs(3600));
        assert!(m.max() < Duration::from_secs(3700));
        assert!(m.sketch_bytes() < 4600, "{}", m.sketch_bytes());
    }

    #[test]
    fn bad_mappings_are_refused() {
        let us = Duration::from_micros(1);
        assert!(Mapping::new(0.0, us, Duration::from_secs(1)).is_err());
        assert!(Mapping::new(f64::NAN, us, Duration::from_secs(1)).is_err());
        assert!(Mapping::new(0.9, us, Duration::from_secs(1)).is_err());
        assert!(Mapping::new(0.01, Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Mapping::new(0.01, us, us).is_err());
        assert!(Mapping::new(0.0001, Duration::from_nanos(1), Duration::MAX).is_err());
    }

    #[test]
    fn edges_and_bad_values_do_not_panic() {
        let m = Mapping::default();
        assert_eq!(m.index_nanos(0), (0, Clamp::Below));
        assert_eq!(m.index_nanos(1000), (0, Clamp::InRange));
        assert_eq!(m.index_nanos(u64::MAX), (1101, Clamp::Above));
        assert_eq!(m.index_secs(f64::NAN), None);
        assert_eq!(m.index_secs(-1.0), Some((0, Clamp::Below)));
        assert_eq!(m.index_secs(f64::NEG_INFINITY), Some((0, Clamp::Below)));
        assert_eq!(m.index_secs(f64::INFINITY), Some((1101, Clamp::Above)));
        let s = AtomicSketch::new(m.clone());
        for v in [f64::NAN, -1.0, 0.0, f64::INFINITY, 1e300, -0.0] {
            s.record_secs(v);
        }
        let h = s.snapshot();
        assert_eq!((h.count(), h.invalid(), h.below(), h.above()), (5, 1, 3, 2));
        assert!(h.quantile_secs(f64::NAN).is_none());
        assert!(h.quantile_secs(2.0).unwrap() >= 3600.0);
    }

    /// The table lookup finds exactly the bucket the bounds define, for every mapping shape.
    #[test]
    fn table_index_matches_the_bounds() {
        for (alpha, min, max) in [
            (0.01, 1_000u64, 3_600_000_000_000u64),
            (0.0001, 1_000, 10_000_000),
            (0.3, 1, 1 << 40),
            (0.01, 1, 100_000),
            (0.05, 7, u64::MAX),
        ] {
            let m =
                Mapping::new(alpha, Duration::from_nanos(min), Duration::from_nanos(max)).unwrap();
            let bounds = &m.tables.bounds;
            let exact = |x: u64| {
                if x <= min {
                    0
                } else {
                    bounds.partition_point(|&b| b < x).min(bounds.len() - 1)
                }
            };
            let mut x = 0u64;
            while x < u64::MAX / 2 {
                for v in [x, x + 1, x.saturating_sub(1)] {
                    assert_eq!(m.index_nanos(v).0, exact(v), "{alpha} {min} {v}");
                }
                x = x + 1 + x / 97;
            }
            for &b in bounds.iter() {
                for v in [b, b.saturating_add(1), b.saturating_sub(1)] {
                    assert_eq!(m.index_nanos(v).0, exact(v), "{alpha} {min} bound {v}");
                }
            }
        }
    }

    /// Draining into a bucket near 2³² saturates rather than wraps (coarse slots accumulate many
    /// drains).
    #[test]
    fn drains_saturate_full_buckets() {
        let m = Mapping::default();
        let (a, b) = (AtomicSketch::new(m.clone()), AtomicSketch::new(m.clone()));
        a.counts[3].store(u32::MAX - 5, Relaxed);
        b.counts[3].store(10, Relaxed);
        a.counts[900].store(7, Relaxed);
        b.counts[900].store(u32::MAX, Relaxed);
        assert!(b.drain_into(Some(&a)));
        assert_eq!(a.counts[3].load(Relaxed), u32::MAX);
        assert_eq!(a.counts[900].load(Relaxed), u32::MAX);
        assert_eq!(b.snapshot().count(), 0);
        assert_eq!(a.snapshot().count(), 2 * u64::from(u32::MAX));
    }

    #[test]
    fn drain_moves_every_count() {
        let m = Mapping::default();
        let (a, b) = (AtomicSketch::new(m.clone()), AtomicSketch::new(m.clone()));
        for ns in [0, 5_000, 5_000, 1 << 50] {
            a.record_nanos(ns);
        }
        b.record_nanos(7_000);
        assert!(a.drain_into(Some(&b)));
        assert!(a.snapshot().is_empty());
        let h = b.snapshot();
        assert_eq!((h.count(), h.below(), h.above()), (5, 1, 1));
        assert!(b.drain_into(None));
        assert_eq!(b.snapshot().count(), 0);
        let other = AtomicSketch::new(Mapping::new(0.02, m.min(), m.max()).unwrap());
        assert!(!other.drain_into(Some(&a)));
        assert!(!other.add_to(&mut a.snapshot()));
    }
}
