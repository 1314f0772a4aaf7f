//! The limit algorithms: their parameters (with Netflix concurrency-limits' published defaults) and the
//! state machines that turn one sample window into a new limit estimate.
//!
//! Every algorithm sees one [`Window`] at a time: the average RTT of the successful calls in it, the
//! smallest RTT, the most requests that were in flight when one of its calls started, and whether any
//! call in it was a *drop* (a timeout, an error, a call over the AIMD timeout). A drop never contributes
//! an RTT: a timeout is a congestion signal, not a fast (or slow) measurement.

use std::time::Duration;

use palisade_core::rng::Rng;

/// The algorithm that moves the limit, with its parameters. [`Gradient2`] is the default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Netflix's Gradient2: a long-term RTT average against the current one.
    Gradient2(Gradient2),
    /// Additive increase, multiplicative decrease on drops.
    Aimd(Aimd),
    /// TCP Vegas: the estimated queue `limit × (1 − rtt_noload / rtt)` kept between alpha and beta.
    Vegas(Vegas),
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Gradient2(Gradient2::default())
    }
}

impl Algorithm {
    /// The algorithm's name in logs, audit records and the handle: `gradient2`, `aimd` or `vegas`.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Gradient2(_) => "gradient2",
            Algorithm::Aimd(_) => "aimd",
            Algorithm::Vegas(_) => "vegas",
        }
    }

    /// `(initial, min, max)` limits.
    pub(crate) fn limits(&self) -> (usize, usize, usize) {
        match self {
            Algorithm::Gradient2(g) => (g.initial_limit, g.min_limit, g.max_limit),
            Algorithm::Aimd(a) => (a.initial_limit, a.min_limit, a.max_limit),
            Algorithm::Vegas(v) => (v.initial_limit, v.min_limit, v.max_limit),
        }
    }
}

impl From<Gradient2> for Algorithm {
    fn from(g: Gradient2) -> Self {
        Algorithm::Gradient2(g)
    }
}

impl From<Aimd> for Algorithm {
    fn from(a: Aimd) -> Self {
        Algorithm::Aimd(a)
    }
}

impl From<Vegas> for Algorithm {
    fn from(v: Vegas) -> Self {
        Algorithm::Vegas(v)
    }
}

/// Gradient2 (Netflix concurrency-limits `Gradient2Limit`), the default algorithm.
///
/// Each window: `gradient = clamp(rtt_tolerance × long_rtt / short_rtt, 0.5, 1.0)`, where `short_rtt`
/// is the window's average RTT and `long_rtt` an exponential average of it over `long_window` windows;
/// `new = limit × gradient + queue_size`, smoothed: `limit = limit × (1 − smoothing) + new × smoothing`,
/// clamped to `[min_limit, max_limit]`. The limit does not grow while the caller uses less than half of
/// it (app-limited). When latency falls back after a long overload (`long_rtt > 2 × short_rtt`) the
/// long average is cut by 5 % per window so the limit can recover.
///
/// Against oscillation: the tolerance is a buffer on the gradient (RTT noise below it changes
/// nothing), the gradient is clamped to `[0.5, 1]` and smoothed, so one window moves the limit by at
/// most `smoothing / 2` of itself down (10 % with the defaults) and `smoothing × queue_size` up (0.8).
///
/// palisade's changes, from the peers' bug trackers:
///
/// - **Drops**: a window with a drop (timeout or error) is not averaged into the RTTs at all and
///   multiplies the limit by `backoff_ratio`, so a backend that only times out drives the limit to
///   `min_limit` (Netflix's Gradient2 ignores drops, so a stable timeout reads as a stable RTT and the
///   limit grows without bound).
/// - **No upward drift**: the long-term average only takes windows within the tolerance
///   (`short ≤ rtt_tolerance × long`). Fed with congested windows it creeps up under a sustained
///   overload, taking the limit with it.
/// - **Jittered probing**: a baseline that no longer moves up would pin the limit low for ever once
///   the backend is permanently slower. Every `probe_windows × j` windows (`j` uniform in `[0.5, 1)`,
///   drawn anew at each probe, so a fleet does not probe in step) the limit is held at `min_limit`
///   for two windows — one to drain, one to measure — and the second window's RTT, measured at low
///   concurrency, becomes the baseline; then the limit is restored. `probe_windows` 0 never probes.
///
/// Defaults (Netflix's): initial 20, min 20, max 200, smoothing 0.2, queue size 4, RTT tolerance 1.5,
/// long window 600; palisade's backoff ratio 0.9 and a probe every 300 windows at most (5 minutes
/// with 1 s windows).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Gradient2 {
    /// The limit at start (default 20).
    pub initial_limit: usize,
    /// The limit never goes below this (default 20).
    pub min_limit: usize,
    /// The limit never goes above this (default 200).
    pub max_limit: usize,
    /// How much of each new estimate is taken, in `(0, 1]` (default 0.2).
    pub smoothing: f64,
    /// How much the limit may grow per window while latency holds, at most `max_limit` (default 4).
    pub queue_size: f64,
    /// How much the current RTT may exceed the long-term one before the limit shrinks, in `[1, 10]`
    /// (default 1.5: 50 % more latency is tolerated).
    pub rtt_tolerance: f64,
    /// The long-term average's span in windows, at most 100,000 (default 600).
    pub long_window: u32,
    /// The factor applied to the limit on a window with a drop, in `[0.5, 1)` (default 0.9).
    pub backoff_ratio: f64,
    /// Re-measure the baseline every `probe_windows` windows at most, jittered down to half that
    /// (0 to 100,000; default 300; 0 never probes).
    pub probe_windows: u32,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            smoothing: 0.2,
            queue_size: 4.0,
            rtt_tolerance: 1.5,
            long_window: 600,
            backoff_ratio: 0.9,
            probe_windows: 300,
        }
    }
}

/// AIMD (Netflix concurrency-limits `AIMDLimit`).
///
/// Each window: a drop, or an average RTT above `timeout`, multiplies the limit by `backoff_ratio`;
/// otherwise, if at least half the limit was in use, the limit grows by 1. Clamped to
/// `[min_limit, max_limit]`.
///
/// Defaults (Netflix's): initial 20, min 20, max 200, backoff ratio 0.9, timeout 5 s.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Aimd {
    /// The limit at start (default 20).
    pub initial_limit: usize,
    /// The limit never goes below this (default 20).
    pub min_limit: usize,
    /// The limit never goes above this (default 200).
    pub max_limit: usize,
    /// The factor applied on a drop, in `[0.5, 1)` (default 0.9).
    pub backoff_ratio: f64,
    /// An average RTT above this counts as a drop (default 5 s; at most one hour).
    pub timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Vegas (Netflix concurrency-limits `VegasLimit`).
///
/// `queue = ceil(limit × (1 − rtt_noload / rtt))`, with `rtt_noload` the smallest window RTT seen since
/// the last probe and `log = max(1, ⌊log10 limit⌋)`: a drop lowers the limit by `log`; otherwise (not
/// app-limited) a queue of at most `log` raises it by `beta × log`, one below `alpha × log` raises it
/// by `log`, one above `beta × log` lowers it by `log`. Then clamped and smoothed.
///
/// **Probing**: a `rtt_noload` measured when the backend was fast would pin the limit low for ever
/// once the backend is permanently slower. Every `probe_multiplier × limit × j` windows, with `j`
/// drawn uniformly from `[0.5, 1)` at each probe (jitter, so a fleet does not probe in step),
/// `rtt_noload` is re-measured from the current window.
///
/// Defaults (Netflix's): initial 20, max 1000, smoothing 1.0, alpha 3, beta 6, probe multiplier 30;
/// min 1.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Vegas {
    /// The limit at start (default 20).
    pub initial_limit: usize,
    /// The limit never goes below this (default 1).
    pub min_limit: usize,
    /// The limit never goes above this (default 1000).
    pub max_limit: usize,
    /// How much of each new estimate is taken, in `(0, 1]` (default 1.0).
    pub smoothing: f64,
    /// Grow while the queue is below `alpha × log10(limit)` (default 3).
    pub alpha: f64,
    /// Shrink while the queue is above `beta × log10(limit)`; above `alpha` (default 6).
    pub beta: f64,
    /// Probe for a new no-load RTT every `probe_multiplier × limit` windows, jittered; 1 to 10,000
    /// (default 30).
    pub probe_multiplier: u32,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            smoothing: 1.0,
            alpha: 3.0,
            beta: 6.0,
            probe_multiplier: 30,
        }
    }
}

macro_rules! setters {
    ($ty:ident { $($(#[$m:meta])* $field:ident: $t:ty,)* }) => {
        impl $ty {
            /// The defaults listed above.
            pub fn new() -> Self {
                Self::default()
            }
            $(
                $(#[$m])*
                pub fn $field(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(Gradient2 {
    /// Sets [`initial_limit`](Gradient2#structfield.initial_limit).
    initial_limit: usize,
    /// Sets [`min_limit`](Gradient2#structfield.min_limit).
    min_limit: usize,
    /// Sets [`max_limit`](Gradient2#structfield.max_limit).
    max_limit: usize,
    /// Sets [`smoothing`](Gradient2#structfield.smoothing).
    smoothing: f64,
    /// Sets [`queue_size`](Gradient2#structfield.queue_size).
    queue_size: f64,
    /// Sets [`rtt_tolerance`](Gradient2#structfield.rtt_tolerance).
    rtt_tolerance: f64,
    /// Sets [`long_window`](Gradient2#structfield.long_window).
    long_window: u32,
    /// Sets [`backoff_ratio`](Gradient2#structfield.backoff_ratio).
    backoff_ratio: f64,
    /// Sets [`probe_windows`](Gradient2#structfield.probe_windows).
    probe_windows: u32,
});

setters!(Aimd {
    /// Sets [`initial_limit`](Aimd#structfield.initial_limit).
    initial_limit: usize,
    /// Sets [`min_limit`](Aimd#structfield.min_limit).
    min_limit: usize,
    /// Sets [`max_limit`](Aimd#structfield.max_limit).
    max_limit: usize,
    /// Sets [`backoff_ratio`](Aimd#structfield.backoff_ratio).
    backoff_ratio: f64,
    /// Sets [`timeout`](Aimd#structfield.timeout).
    timeout: Duration,
});

setters!(Vegas {
    /// Sets [`initial_limit`](Vegas#structfield.initial_limit).
    initial_limit: usize,
    /// Sets [`min_limit`](Vegas#structfield.min_limit).
    min_limit: usize,
    /// Sets [`max_limit`](Vegas#structfield.max_limit).
    max_limit: usize,
    /// Sets [`smoothing`](Vegas#structfield.smoothing).
    smoothing: f64,
    /// Sets [`alpha`](Vegas#structfield.alpha).
    alpha: f64,
    /// Sets [`beta`](Vegas#structfield.beta).
    beta: f64,
    /// Sets [`probe_multiplier`](Vegas#structfield.probe_multiplier).
    probe_multiplier: u32,
});

/// One closed sample window, as an algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    /// Average RTT of the successful calls, in nanoseconds (`None`: none succeeded).
    pub(crate) avg_rtt: Option<f64>,
    /// Most requests in flight when one of the window's calls started.
    pub(crate) max_in_flight: usize,
    /// Whether any call was a drop.
    pub(crate) dropped: bool,
}

/// An algorithm's running state.
#[derive(Debug)]
pub(crate) enum Estimator {
    Gradient2 {
        p: Gradient2,
        limit: f64,
        long: ExpAvg,
        last_rtt: f64,
        probe: Probe,
    },
    Aimd {
        p: Aimd,
        limit: f64,
    },
    Vegas {
        p: Vegas,
        limit: f64,
        rtt_noload: f64,
        probe_count: u64,
        probe_jitter: f64,
        rng: Rng,
    },
}

impl Estimator {
    pub(crate) fn new(algorithm: &Algorithm, mut rng: Rng) -> Self {
        match algorithm {
            Algorithm::Gradient2(p) => Estimator::Gradient2 {
                limit: p.initial_limit as f64,
                long: ExpAvg::new(p.long_window, 10),
                last_rtt: 0.0,
                probe: Probe::new(p.probe_windows, rng),
                p: p.clone(),
            },
            Algorithm::Aimd(p) => Estimator::Aimd {
                limit: p.initial_limit as f64,
                p: p.clone(),
            },
            Algorithm::Vegas(p) => Estimator::Vegas {
                limit: p.initial_limit as f64,
                rtt_noload: 0.0,
                probe_count: 0,
                probe_jitter: 0.5 + rng.next_f64() / 2.0,
                rng,
                p: p.clone(),
            },
        }
    }

    /// The current estimate (fractional).
    pub(crate) fn estimate(&self) -> f64 {
        match self {
            Estimator::Gradient2 { limit, .. }
            | Estimator::Aimd { limit, .. }
            | Estimator::Vegas { limit, .. } => *limit,
        }
    }

    /// The published (whole) limit.
    pub(crate) fn limit(&self) -> usize {
        match self {
            Estimator::Gradient2 { p, probe, .. } if probe.running.is_some() => p.min_limit,
            _ => self.estimate() as usize,
        }
    }

    /// `(short, baseline)` RTTs in nanoseconds: the last window's, and the long-term average
    /// (Gradient2) or the no-load RTT (Vegas). AIMD tracks neither baseline.
    pub(crate) fn rtts(&self) -> (f64, f64) {
        match self {
            Estimator::Gradient2 { long, last_rtt, .. } => (*last_rtt, long.value),
            Estimator::Aimd { .. } => (0.0, 0.0),
            Estimator::Vegas { rtt_noload, .. } => (0.0, *rtt_noload),
        }
    }

    /// Feeds one window; returns the new whole limit.
    pub(crate) fn update(&mut self, w: &Window) -> usize {
        match self {
            Estimator::Gradient2 {
                p,
                limit,
                long,
                last_rtt,
                probe,
            } => {
                let (min, max) = (p.min_limit as f64, p.max_limit as f64);
                if let Some((saved, measuring)) = probe.running {
                    // Holding the limit at the minimum: drain one window, measure the next.
                    if w.dropped {
                        probe.running = None;
                        *limit = (saved * p.backoff_ratio).clamp(min, max);
                    } else if !measuring {
                        probe.running = Some((saved, true));
                        return p.min_limit;
                    } else if let Some(rtt) = w.avg_rtt.filter(|&r| r > 0.0) {
                        probe.running = None;
                        long.reset(rtt);
                        *last_rtt = rtt;
                        *limit = saved;
                    } else {
                        return p.min_limit;
                    }
                    return *limit as usize;
                }
                if w.dropped {
                    *limit = (*limit * p.backoff_ratio).clamp(min, max);
                    return *limit as usize;
                }
                let Some(short) = w.avg_rtt.filter(|&r| r > 0.0) else {
                    return *limit as usize;
                };
                *last_rtt = short;
                if probe.due() {
                    probe.running = Some((*limit, false));
                    return p.min_limit;
                }
                let long_rtt = if long.is_warm() && short > p.rtt_tolerance * long.value {
                    long.value
                } else {
                    long.add(short)
                };
                if long_rtt / short > 2.0 {
                    long.value *= 0.95;
                }
                if (w.max_in_flight as f64) < *limit / 2.0 {
                    return *limit as usize;
                }
                let gradient = (p.rtt_tolerance * long_rtt / short).clamp(0.5, 1.0);
                let new = *limit * gradient + p.queue_size;
                let new = *limit * (1.0 - p.smoothing) + new * p.smoothing;
                *limit = new.clamp(min, max);
                *limit as usize
            }
            Estimator::Aimd { p, limit } => {
                let (min, max) = (p.min_limit as f64, p.max_limit as f64);
                let slow = w.avg_rtt.is_some_and(|r| r > p.timeout.as_nanos() as f64);
                if w.dropped || slow {
                    *limit = (*limit * p.backoff_ratio).floor().clamp(min, max);
                } else if w.avg_rtt.is_some() && w.max_in_flight as f64 * 2.0 >= *limit {
                    *limit = (*limit + 1.0).clamp(min, max);
                }
                *limit as usize
            }
            Estimator::Vegas {
                p,
                limit,
                rtt_noload,
                probe_count,
                probe_jitter,
                rng,
            } => {
                let (min, max) = (p.min_limit as f64, p.max_limit as f64);
                let log = log10_root(*limit);
                let target = if w.dropped {
                    *limit - log
                } else {
                    let Some(rtt) = w.avg_rtt.filter(|&r| r > 0.0) else {
                        return *limit as usize;
                    };
                    *probe_count += 1;
                    if *probe_jitter * f64::from(p.probe_multiplier) * *limit <= *probe_count as f64
                    {
                        *probe_jitter = 0.5 + rng.next_f64() / 2.0;
                        *probe_count = 0;
                        *rtt_noload = rtt;
                        return *limit as usize;
                    }
                    if *rtt_noload == 0.0 || rtt < *rtt_noload {
                        *rtt_noload = rtt;
                        return *limit as usize;
                    }
                    if (w.max_in_flight as f64) * 2.0 < *limit {
                        return *limit as usize;
                    }
                    let queue = (*limit * (1.0 - *rtt_noload / rtt)).ceil();
                    if queue <= log {
                        *limit + p.beta * log
                    } else if queue < p.alpha * log {
                        *limit + log
                    } else if queue > p.beta * log {
                        *limit - log
                    } else {
                        return *limit as usize;
                    }
                };
                let target = target.clamp(min, max);
                *limit = ((1.0 - p.smoothing) * *limit + p.smoothing * target).clamp(min, max);
                *limit as usize
            }
        }
    }
}

/// Gradient2's jittered probe schedule.
#[derive(Debug)]
pub(crate) struct Probe {
    every: u32,
    count: u64,
    next: u64,
    rng: Rng,
    /// `(limit to restore, measuring)` while a probe runs.
    running: Option<(f64, bool)>,
}

impl Probe {
    fn new(every: u32, rng: Rng) -> Self {
        let mut p = Probe {
            every,
            count: 0,
            next: 0,
            rng,
            running: None,
        };
        p.schedule();
        p
    }

    fn schedule(&mut self) {
        self.count = 0;
        let j = 0.5 + self.rng.next_f64() / 2.0;
        self.next = ((f64::from(self.every) * j).ceil() as u64).max(1);
    }

    /// Counts a window; whether a probe starts now.
    fn due(&mut self) -> bool {
        if self.every == 0 {
            return false;
        }
        self.count += 1;
        if self.count >= self.next {
            self.schedule();
            return true;
        }
        false
    }
}

/// Netflix's `Log10RootFunction`: `max(1, ⌊log10 n⌋)`.
fn log10_root(n: f64) -> f64 {
    n.max(1.0).log10().floor().max(1.0)
}

/// Netflix's `ExpAvgMeasurement`: a plain average over the first `warmup` samples, then an exponential
/// average with factor `2 / (window + 1)`.
#[derive(Debug, Clone)]
pub(crate) struct ExpAvg {
    pub(crate) value: f64,
    count: u32,
    warmup: u32,
    factor: f64,
}

impl ExpAvg {
    fn new(window: u32, warmup: u32) -> Self {
        ExpAvg {
            value: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (f64::from(window) + 1.0),
        }
    }

    fn is_warm(&self) -> bool {
        self.count >= self.warmup
    }

    /// Restarts the average at `value`, as if warmed up on it.
    fn reset(&mut self, value: f64) {
        self.value = value;
        self.count = self.warmup;
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.value += (sample - self.value) / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rtt_ms: f64, in_flight: usize) -> Window {
        Window {
            avg_rtt: Some(rtt_ms * 1e6),
            max_in_flight: in_flight,
            dropped: false,
        }
    }

    const DROP: Window = Window {
        avg_rtt: None,
        max_in_flight: 100,
        dropped: true,
    };

    #[test]
    fn gradient2_grows_while_latency_holds_and_backs_off_on_drops() {
        let mut e = Estimator::new(&Gradient2::new().into(), Rng::seeded(1));
        for _ in 0..20 {
            e.update(&window(10.0, 200));
        }
        // 20 windows of +0.8 each.
        assert_eq!(e.limit(), 36);
        // App-limited: no growth.
        let before = e.estimate();
        e.update(&window(10.0, 5));
        assert_eq!(e.estimate(), before);
        // A drop: ×0.9.
        e.update(&DROP);
        assert!((e.estimate() - before * 0.9).abs() < 1e-9);
        // Only drops: down to the minimum, never below.
        for _ in 0..100 {
            e.update(&DROP);
        }
        assert_eq!(e.limit(), 20);
    }

    #[test]
    fn gradient2_shrinks_when_latency_rises_past_the_tolerance() {
        let p = Gradient2::new().min_limit(1).initial_limit(100);
        let mut e = Estimator::new(&p.into(), Rng::seeded(1));
        for _ in 0..10 {
            e.update(&window(10.0, 100));
        }
        let l0 = e.estimate();
        // 40 % slower: inside the 1.5 tolerance, still growing.
        e.update(&window(14.0, 100));
        assert!(e.estimate() > l0);
        // 4x slower: gradient clamped to 0.5, so the limit drops by at most smoothing/2 = 10 %.
        let l1 = e.estimate();
        e.update(&window(40.0, 100));
        let l2 = e.estimate();
        assert!(l2 < l1);
        assert!(l2 >= l1 * 0.9 + 0.8 - 1e-9, "{l1} -> {l2}");
    }

    #[test]
    fn aimd_follows_the_published_rules() {
        let p = Aimd::new().min_limit(5).initial_limit(10);
        let mut e = Estimator::new(&p.into(), Rng::seeded(1));
        e.update(&window(10.0, 10));
        assert_eq!(e.limit(), 11);
        e.update(&window(10.0, 2)); // app-limited
        assert_eq!(e.limit(), 11);
        e.update(&window(6_000.0, 11)); // over the 5 s timeout: a drop
        assert_eq!(e.limit(), 9);
        e.update(&DROP);
        assert_eq!(e.limit(), 8);
        for _ in 0..50 {
            e.update(&DROP);
        }
        assert_eq!(e.limit(), 5);
    }

    #[test]
    fn vegas_grows_without_queue_and_shrinks_with_one() {
        let p = Vegas::new().initial_limit(20).probe_multiplier(10_000);
        let mut e = Estimator::new(&p.into(), Rng::seeded(1));
        e.update(&window(10.0, 20)); // first sample: the no-load RTT
        assert_eq!(e.limit(), 20);
        e.update(&window(10.0, 20)); // no queue: + beta × log = +6
        assert_eq!(e.limit(), 26);
        e.update(&window(20.0, 26)); // queue 13 > beta: −1
        assert_eq!(e.limit(), 25);
        e.update(&DROP);
        assert_eq!(e.limit(), 24);
    }

    #[test]
    fn vegas_probes_for_a_new_noload_rtt() {
        let p = Vegas::new()
            .initial_limit(10)
            .min_limit(10)
            .probe_multiplier(1);
        let mut e = Estimator::new(&p.into(), Rng::seeded(3));
        e.update(&window(10.0, 10));
        // The backend is permanently 4x slower: without a probe the limit is pinned at the minimum.
        let mut probed = false;
        for _ in 0..40 {
            e.update(&window(40.0, 10));
            if let Estimator::Vegas { rtt_noload, .. } = &e {
                probed |= *rtt_noload == 40e6;
            }
        }
        assert!(probed, "the no-load RTT was re-measured");
        assert!(e.limit() > 10, "limit {}", e.limit());
    }

    #[test]
    fn exp_avg_warms_up_then_decays() {
        let mut a = ExpAvg::new(9, 2);
        assert_eq!(a.add(10.0), 10.0);
        assert_eq!(a.add(20.0), 15.0);
        assert!((a.add(25.0) - 17.0).abs() < 1e-9); // factor 0.2
    }
}
