//! Gauges: signals read at each control-plane tick, never pushed from the request path.
//!
//! A [`Gauge`] is a name and a function, `Fn() -> f64`, that the control plane calls once per tick:
//! a queue depth, CPU use, a layer's in-flight count read from its handle. A [`Gauge::rate`] reads a
//! monotonic counter instead (rejections so far) and yields its rate per second between two ticks.
//! [`Gauges`] is a bounded registry of them, read all at once with [`Gauges::read_all`].
//!
//! Nothing here knows about layers: `palisade::stack` builds the gauges of a stack's layers from
//! its handles (`Handles::signals`), and user code adds its own.
//!
//! Reading is robust to the functions it calls: a function that panics yields no sample that tick
//! (the panic is counted by [`Gauge::panics`] and the first one logged at `warn`), and a value that
//! is not finite is passed on as it is (detectors ignore NaN and infinities).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use palisade_heal::signals::gauge::{Gauge, Gauges};
//! use tokio::time::Instant;
//!
//! let queue_depth = Arc::new(AtomicU64::new(7));
//! let rejected = Arc::new(AtomicU64::new(100));
//!
//! let mut gauges = Gauges::new();
//! let depth = Arc::clone(&queue_depth);
//! gauges.add(Gauge::new("app.queue_depth", move || depth.load(Ordering::Relaxed) as f64))?;
//! let total = Arc::clone(&rejected);
//! gauges.add(Gauge::rate("app.rejected_per_second", move || total.load(Ordering::Relaxed) as f64))?;
//!
//! let t0 = Instant::now();
//! // The first tick: the level, and the rate's baseline (no rate yet).
//! let first: Vec<_> = gauges.read_all(t0).collect();
//! assert_eq!(first.len(), 1);
//! assert_eq!(first[0].0, "app.queue_depth");
//! assert_eq!(first[0].1.value, 7.0);
//!
//! // Ten seconds later, 50 more rejections: 5 per second, over 50 events.
//! rejected.fetch_add(50, Ordering::Relaxed);
//! let rate = gauges.read("app.rejected_per_second", t0 + Duration::from_secs(10)).unwrap();
//! assert_eq!(rate.value, 5.0);
//! assert_eq!(rate.volume, Some(50));
//! # Ok::<(), palisade_heal::signals::gauge::GaugeError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::Sample;

type ReadFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// One named signal read at each tick: a level (`Fn() -> f64`) or the rate of a counter.
///
/// Made by [`Gauge::new`] or [`Gauge::rate`]; added to a [`Gauges`] registry, which checks its name.
pub struct Gauge {
    name: Cow<'static, str>,
    read: ReadFn,
    /// `Some` for a rate: the counter's total and time at the last read, and the last rate.
    rate: Option<Mutex<RateState>>,
    panics: AtomicU64,
}

#[derive(Debug, Default)]
struct RateState {
    last: Option<(f64, Instant)>,
    /// The last rate and its volume, given again when a read comes at the same instant.
    rate: Option<(f64, u64)>,
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauge")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("panics", &self.panics())
            .finish_non_exhaustive()
    }
}

impl Gauge {
    /// A level: each read is `read()`, at the time of the read, with no volume.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Gauge {
            name: name.into(),
            read: Box::new(read),
            rate: None,
            panics: AtomicU64::new(0),
        }
    }

    /// The per-second rate of a monotonic counter whose total `total()` returns.
    ///
    /// Each read compares the total with the previous read's: the sample is
    /// `(total − previous) / seconds between the reads`, with the increase as its
    /// [`volume`](Sample::volume) (rounded down). The first read only sets the baseline and yields
    /// no sample. A total lower than the previous one is a counter reset (a breaker's `reset`
    /// zeroes its counters): the increase is then the new total. A read at the same instant as the
    /// previous one yields the previous rate again (if there is one) and keeps the baseline, so an
    /// increase seen then counts in the next rate. A total that is not finite (or negative) yields
    /// no sample and leaves the baseline as it was.
    pub fn rate(
        name: impl Into<Cow<'static, str>>,
        total: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Gauge {
            rate: Some(Mutex::new(RateState::default())),
            ..Gauge::new(name, total)
        }
    }

    /// The gauge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"level"` for [`Gauge::new`], `"rate"` for [`Gauge::rate`].
    pub fn kind(&self) -> &'static str {
        if self.rate.is_some() {
            "rate"
        } else {
            "level"
        }
    }

    /// How many reads panicked (and so yielded no sample).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Reads the gauge at `now`: its sample, or `None` if there is none this tick (the function
    /// panicked, or a rate has no baseline yet or a bad total).
    pub fn read(&self, now: Instant) -> Option<Sample> {
        let value = self.call()?;
        let Some(state) = &self.rate else {
            return Some(Sample::new(value, now));
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        rate_step(&mut state, value, now)
            .map(|(rate, volume)| Sample::new(rate, now).with_volume(volume))
    }

    /// Calls the function, catching a panic.
    fn call(&self) -> Option<f64> {
        match catch_unwind(AssertUnwindSafe(|| (self.read)())) {
            Ok(value) => Some(value),
            Err(_) => {
                let before = self.panics.fetch_add(1, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!(gauge = %self.name, "gauge function panicked; no sample this tick");
                } else {
                    tracing::debug!(gauge = %self.name, panics = before + 1, "gauge function panicked");
                }
                None
            }
        }
    }
}

/// One step of a rate: the new total at `now` against the state. Returns the rate and volume.
fn rate_step(state: &mut RateState, total: f64, now: Instant) -> Option<(f64, u64)> {
    if !total.is_finite() || total < 0.0 {
        return None;
    }
    // The first good total is the baseline only.
    let (previous, at) = state.last.replace((total, now))?;
    let elapsed = now.saturating_duration_since(at);
    if elapsed.is_zero() {
        // Same instant: keep the baseline, so an increase now counts in the next rate.
        state.last = Some((previous, at));
        return state.rate;
    }
    let increase = if total >= previous {
        total - previous
    } else {
        total
    };
    let rate = increase / elapsed.as_secs_f64();
    // `as` saturates: a huge increase is u64::MAX events.
    let volume = increase as u64;
    state.rate = Some((rate, volume));
    state.rate
}

/// Why a gauge could not be added to a [`Gauges`] registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaugeError {
    /// The name is empty, longer than [`Gauges::MAX_NAME_LEN`] bytes, or has whitespace or
    /// control characters.
    InvalidName {
        /// The name, cut to at most [`Gauges::MAX_NAME_LEN`] bytes.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A gauge of this name is already registered.
    Duplicate {
        /// The name.
        name: String,
    },
    /// The registry holds [`Gauges::limit`] gauges already.
    Full {
        /// The registry's limit.
        limit: usize,
    },
}

impl fmt::Display for GaugeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { name, reason } => {
                write!(f, "invalid gauge name `{name}`: {reason}")
            }
            Self::Duplicate { name } => write!(f, "a gauge named `{name}` is already registered"),
            Self::Full { limit } => write!(f, "the gauge registry is full ({limit} gauges)"),
        }
    }
}

impl std::error::Error for GaugeError {}

/// A bounded registry of [`Gauge`]s, read together at each tick. Names are unique; reads go in
/// name order.
///
/// Holds at most [`limit`](Self::limit) gauges ([`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) unless made
/// [`with_limit`](Self::with_limit)); adding one more is a [`GaugeError::Full`], so a loop that
/// adds a gauge per tenant cannot grow it without bound.
pub struct Gauges {
    gauges: BTreeMap<Cow<'static, str>, Gauge>,
    limit: usize,
}

impl fmt::Debug for Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauges")
            .field("names", &self.gauges.keys().collect::<Vec<_>>())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Default for Gauges {
    fn default() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }
}

impl Gauges {
    /// The default [`limit`](Self::limit): 1,024 gauges.
    pub const DEFAULT_LIMIT: usize = 1024;
    /// The longest gauge name, in bytes: 128.
    pub const MAX_NAME_LEN: usize = 128;

    /// An empty registry of at most [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) gauges.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry of at most `limit` gauges.
    pub fn with_limit(limit: usize) -> Self {
        Gauges {
            gauges: BTreeMap::new(),
            limit,
        }
    }

    /// The most gauges the registry holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many gauges it holds.
    pub fn len(&self) -> usize {
        self.gauges.len()
    }

    /// `true` if it holds none.
    pub fn is_empty(&self) -> bool {
        self.gauges.is_empty()
    }

    /// Adds a gauge.
    ///
    /// # Errors
    ///
    /// [`GaugeError::InvalidName`], [`GaugeError::Duplicate`] or [`GaugeError::Full`]; the
    /// registry is unchanged.
    pub fn add(&mut self, gauge: Gauge) -> Result<(), GaugeError> {
        self.check(&gauge.name, 1)?;
        self.gauges.insert(gauge.name.clone(), gauge);
        Ok(())
    }

    /// Adds every gauge of `other`, or none of them.
    ///
    /// # Errors
    ///
    /// The first [`GaugeError`] [`add`](Self::add) would give (a name already here counts as a
    /// duplicate, and the registry must have room for all of them); the registry is unchanged.
    pub fn extend(&mut self, other: Gauges) -> Result<(), GaugeError> {
        for name in other.gauges.keys() {
            self.check(name, other.len())?;
        }
        self.gauges.extend(other.gauges);
        Ok(())
    }

    fn check(&self, name: &str, adding: usize) -> Result<(), GaugeError> {
        validate_name(name)?;
        if self.gauges.contains_key(name) {
            return Err(GaugeError::Duplicate {
                name: name.to_owned(),
            });
        }
        if self.gauges.len().saturating_add(adding) > self.limit {
            return Err(GaugeError::Full { limit: self.limit });
        }
        Ok(())
    }

    /// Removes the gauge named `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<Gauge> {
        self.gauges.remove(name)
    }

    /// The gauge named `name`.
    pub fn get(&self, name: &str) -> Option<&Gauge> {
        self.gauges.get(name)
    }

    /// The gauges' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.gauges.keys().map(|name| &**name)
    }

    /// Reads the gauge named `name` at `now` (see [`Gauge::read`]).
    pub fn read(&self, name: &str, now: Instant) -> Option<Sample> {
        self.gauges.get(name)?.read(now)
    }

    /// Reads every gauge at `now`, in name order: `(name, sample)` for each gauge that has a
    /// sample this tick (see [`Gauge::read`] for those that have none). Lazy: each gauge is read
    /// when the iterator reaches it.
    pub fn read_all(&self, now: Instant) -> impl Iterator<Item = (&str, Sample)> + '_ {
        self.gauges
            .iter()
            .filter_map(move |(name, gauge)| gauge.read(now).map(|sample| (&**name, sample)))
    }
}

fn validate_name(name: &str) -> Result<(), GaugeError> {
    let invalid = |reason| {
        let mut end = name.len().min(Gauges::MAX_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Err(GaugeError::InvalidName {
            name: name[..end].to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > Gauges::MAX_NAME_LEN {
        return invalid("must be at most 128 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("must have no whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn counter() -> (Arc<AtomicU64>, impl Fn() -> f64 + Send + Sync + 'static) {
        let total = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&total);
        (total, move || read.load(Ordering::Relaxed) as f64)
    }

    #[tokio::test(start_paused = true)]
    async fn a_level_reads_its_function_each_time() {
        let (value, read) = counter();
        let gauge = Gauge::new("q.depth", read);
        let now = Instant::now();
        assert_eq!(gauge.read(now), Some(Sample::new(0.0, now)));
        value.store(42, Ordering::Relaxed);
        let later = now + Duration::from_secs(1);
        let sample = gauge.read(later).unwrap();
        assert_eq!(
            (sample.value, sample.at, sample.volume),
            (42.0, later, None)
        );
        assert_eq!(gauge.kind(), "level");
        assert_eq!(gauge.name(), "q.depth");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_is_the_increase_per_second_with_its_volume() {
        let (total, read) = counter();
        let gauge = Gauge::rate("r", read);
        assert_eq!(gauge.kind(), "rate");
        let t0 = Instant::now();
        total.store(1000, Ordering::Relaxed);
        assert_eq!(gauge.read(t0), None, "the first read is the baseline");

        total.store(1030, Ordering::Relaxed);
        let s = gauge.read(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((s.value, s.volume), (3.0, Some(30)));

        // Same instant: the same rate again, baseline unchanged.
        total.store(1040, Ordering::Relaxed);
        let again = gauge.read(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((again.value, again.volume), (3.0, Some(30)));

        // No increase: 0 per second over 0 events.
        let s = gauge.read(t0 + Duration::from_millis(10_500)).unwrap();
        assert_eq!(
            (s.value, s.volume),
            (20.0, Some(10)),
            "1030 → 1040 in 0.5 s"
        );
        let s = gauge.read(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!((s.value, s.volume), (0.0, Some(0)));

        // A reset (the counter went down): the increase is the new total.
        total.store(4, Ordering::Relaxed);
        let s = gauge.read(t0 + Duration::from_secs(13)).unwrap();
        assert_eq!((s.value, s.volume), (2.0, Some(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_total_yields_nothing_and_keeps_the_baseline() {
        let bad = Arc::new(AtomicBool::new(false));
        let (total, read) = counter();
        let flag = Arc::clone(&bad);
        let gauge = Gauge::rate("r", move || {
            if flag.load(Ordering::Relaxed) {
                f64::NAN
            } else {
                read()
            }
        });
        let t0 = Instant::now();
        assert_eq!(gauge.read(t0), None);
        bad.store(true, Ordering::Relaxed);
        assert_eq!(gauge.read(t0 + Duration::from_secs(1)), None);
        bad.store(false, Ordering::Relaxed);
        total.store(20, Ordering::Relaxed);
        let s = gauge.read(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(s.value, 10.0, "20 over the 2 s since the last good total");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_gauge_yields_no_sample_and_the_others_still_read() {
        let mut gauges = Gauges::new();
        gauges
            .add(Gauge::new("a.boom", || panic!("gauge exploded")))
            .unwrap();
        gauges.add(Gauge::new("b.fine", || 1.5)).unwrap();
        let now = Instant::now();
        for round in 1..=3 {
            let read: Vec<_> = gauges.read_all(now).collect();
            assert_eq!(read, [("b.fine", Sample::new(1.5, now))]);
            assert_eq!(gauges.get("a.boom").unwrap().panics(), round);
        }
        assert_eq!(gauges.read("a.boom", now), None);
        assert_eq!(gauges.read("missing", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn read_all_goes_in_name_order_and_non_finite_levels_pass_through() {
        let mut gauges = Gauges::new();
        gauges.add(Gauge::new("z", || f64::INFINITY)).unwrap();
        gauges.add(Gauge::new("a", || f64::NAN)).unwrap();
        gauges.add(Gauge::new("m", || -3.0)).unwrap();
        let now = Instant::now();
        let read: Vec<_> = gauges.read_all(now).collect();
        let names: Vec<_> = read.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["a", "m", "z"]);
        assert!(read[0].1.value.is_nan());
        assert_eq!(read[1].1.value, -3.0);
        assert_eq!(read[2].1.value, f64::INFINITY);
        assert_eq!(gauges.names().collect::<Vec<_>>(), ["a", "m", "z"]);
    }

    #[test]
    fn names_are_checked_unique_and_the_registry_is_bounded() {
        let mut gauges = Gauges::with_limit(2);
        assert_eq!(gauges.limit(), 2);
        assert!(gauges.is_empty());
        for (name, reason) in [
            ("", "must not be empty"),
            ("has space", "must have no whitespace or control characters"),
            ("tab\there", "must have no whitespace or control characters"),
            ("nul\0", "must have no whitespace or control characters"),
        ] {
            match gauges.add(Gauge::new(name, || 0.0)) {
                Err(GaugeError::InvalidName { reason: r, .. }) => assert_eq!(r, reason, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long = "é".repeat(100); // 200 bytes
        match gauges.add(Gauge::new(long, || 0.0)) {
            Err(GaugeError::InvalidName { name, reason }) => {
                assert_eq!(reason, "must be at most 128 bytes");
                assert_eq!(name.len(), 128, "cut at a char boundary");
            }
            other => panic!("{other:?}"),
        }
        assert!(gauges.add(Gauge::new("x".repeat(128), || 0.0)).is_ok());
        assert!(!gauges.is_empty() && gauges.len() == 1);

        gauges.add(Gauge::new("a", || 0.0)).unwrap();
        assert_eq!(
            gauges.add(Gauge::new("a", || 1.0)),
            Err(GaugeError::Duplicate { name: "a".into() })
        );
        assert_eq!(
            gauges.add(Gauge::new("b", || 1.0)),
            Err(GaugeError::Full { limit: 2 })
        );
        assert!(gauges.remove("a").is_some());
        gauges.add(Gauge::new("b", || 1.0)).unwrap();
        assert_eq!(gauges.len(), 2);
        assert_eq!(
            GaugeError::Full { limit: 2 }.to_string(),
            "the gauge registry is full (2 gauges)"
        );
    }

    #[test]
    fn extend_adds_all_or_nothing() {
        let mut mine = Gauges::with_limit(3);
        mine.add(Gauge::new("user.cpu", || 0.5)).unwrap();
        let mut clash = Gauges::new();
        clash.add(Gauge::new("stack.a", || 1.0)).unwrap();
        clash.add(Gauge::new("user.cpu", || 1.0)).unwrap();
        assert!(matches!(
            mine.extend(clash),
            Err(GaugeError::Duplicate { .. })
        ));
        assert_eq!(mine.names().collect::<Vec<_>>(), ["user.cpu"]);

        let mut too_many = Gauges::new();
        for name in ["s.a", "s.b", "s.c"] {
            too_many.add(Gauge::new(name, || 1.0)).unwrap();
        }
        assert_eq!(mine.extend(too_many), Err(GaugeError::Full { limit: 3 }));
        assert_eq!(mine.len(), 1);

        let mut fits = Gauges::new();
        fits.add(Gauge::new("s.a", || 1.0)).unwrap();
        fits.add(Gauge::new("s.b", || 2.0)).unwrap();
        mine.extend(fits).unwrap();
        assert_eq!(mine.names().collect::<Vec<_>>(), ["s.a", "s.b", "user.cpu"]);
        let debug = format!("{mine:?}");
        assert!(
            debug.contains("s.a") && debug.contains("limit: 3"),
            "{debug}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// For a counter read at increasing times, each rate is the increase (or the new total
        /// after a reset) over the time between reads; any total, NaN and infinities included,
        /// never panics and never yields a non-finite or negative rate.
        #[test]
        fn rate_matches_increase_over_elapsed(
            steps in proptest::collection::vec(
                (
                    prop_oneof![
                        8 => (0u32..1_000_000).prop_map(f64::from),
                        1 => Just(f64::NAN),
                        1 => Just(f64::INFINITY),
                        1 => Just(-1.0),
                    ],
                    0u64..5_000,
                ),
                1..40,
            )
        ) {
            let mut state = RateState::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut last: Option<(f64, Instant)> = None;
            let mut last_rate: Option<(f64, u64)> = None;
            for (total, dt_ms) in steps {
                now += Duration::from_millis(dt_ms);
                let out = rate_step(&mut state, total, now);
                let good = total.is_finite() && total >= 0.0;
                match (good, last) {
                    (false, _) => prop_assert_eq!(out, None),
                    (true, None) => {
                        prop_assert_eq!(out, None);
                        last = Some((total, now));
                    }
                    (true, Some((previous, at))) => {
                        let elapsed = now.duration_since(at);
                        if elapsed.is_zero() {
                            prop_assert_eq!(out, last_rate, "the same instant repeats the rate");
                        } else {
                            let increase = if total >= previous { total - previous } else { total };
                            let (rate, volume) = out.expect("a rate");
                            prop_assert!((rate - increase / elapsed.as_secs_f64()).abs() < 1e-9);
                            prop_assert_eq!(volume, increase as u64);
                            last = Some((total, now));
                            last_rate = out;
                        }
                    }
                }
                if let Some((rate, _)) = out {
                    prop_assert!(rate.is_finite() && rate >= 0.0);
                }
            }
        }
    }
}
