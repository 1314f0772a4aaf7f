//! The retry budget: retries may be at most a fraction of requests, so an outage cannot multiply load.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::BuildError;

/// A retry budget: a retry is allowed while the retries of the last `window` (it included) stay within
/// `ratio × requests + min_per_sec × window`, counting the requests of the same seconds.
///
/// Like Finagle's and tower's `TpsBudget`, every request through the layer deposits `ratio` of a retry,
/// and every retry withdraws one; `min_per_sec` keeps a floor for services that see few requests. Once the
/// budget is spent, failures are returned at once instead of retried (counted in
/// [`RetryHandle::budget_refused`](crate::RetryHandle::budget_refused)), so during a full outage the
/// dependency sees at most `(1 + ratio) ×` the request rate plus the floor, not `max_attempts ×`.
///
/// The budget belongs to the layer: every service the layer makes (every route, every clone) draws from
/// the same one. It is lock-free: per-second buckets in atomics. To keep the clock off the success path,
/// requests are counted with one atomic increment and attributed to their second in batches of
/// 64 (and before every retry decision): at most 63 requests of an earlier second are attributed to a
/// later one, so over a window a budget may allow up to `63 × ratio` retries more than an exact count.
///
/// The ratio is used as given, in double precision, not rounded to a fixed point: `0.0015` allows 3
/// retries per 2,000 requests and `0.0001` one per 10,000. Apart from the slack above, the retries
/// granted over a window are `⌊ratio × requests + min_per_sec × window⌋`, the product rounded once (so
/// `0.3 × 1000` is 300 although the `f64` nearest to 0.3 is slightly below it).
///
/// Default: `Budget::new(0.2, 10, 10 s)` (tower's default: 20 % of requests, at least 10 retries a second).
///
/// ```
/// use palisade_retry::Budget;
/// use std::time::Duration;
///
/// // Retries at most 10 % of requests, plus 1 a second, over 10 seconds.
/// let b = Budget::new(0.1, 1, Duration::from_secs(10));
/// assert_eq!(b.ratio(), 0.1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    limits: Option<Limits>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
}

impl Budget {
    /// Retries may be `ratio` of requests (0.0 to 1000.0; 0.2 = one retry per five requests) plus
    /// `min_per_sec` per second, over a sliding `window` of 1 to 60 whole seconds. Checked by
    /// [`build`](crate::RetryBuilder::build).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        Budget {
            limits: Some(Limits {
                ratio,
                min_per_sec,
                window,
            }),
        }
    }

    /// No budget: every retryable failure is retried up to `max_attempts`. Only for inner services that
    /// cannot be overloaded (or have their own protection); an outage then multiplies load by
    /// `max_attempts`.
    pub fn unlimited() -> Self {
        Budget { limits: None }
    }

    /// The ratio of retries to requests (0 for an unlimited budget).
    pub fn ratio(&self) -> f64 {
        self.limits.map_or(0.0, |l| l.ratio)
    }

    /// The retries allowed per second regardless of traffic (0 for an unlimited budget).
    pub fn min_per_sec(&self) -> u32 {
        self.limits.map_or(0, |l| l.min_per_sec)
    }

    /// The window (zero for an unlimited budget).
    pub fn window(&self) -> Duration {
        self.limits.map_or(Duration::ZERO, |l| l.window)
    }

    /// Whether this budget limits retries at all.
    pub fn is_limited(&self) -> bool {
        self.limits.is_some()
    }

    pub(crate) fn build(&self) -> Result<Option<BudgetState>, BuildError> {
        let Some(l) = self.limits else {
            return Ok(None);
        };
        if !(l.ratio.is_finite() && (0.0..=1000.0).contains(&l.ratio)) {
            return Err(BuildError::InvalidRatio(l.ratio));
        }
        let secs = l.window.as_secs();
        if l.window.subsec_nanos() != 0 || !(1..=60).contains(&secs) {
            return Err(BuildError::InvalidWindow(l.window));
        }
        Ok(Some(BudgetState {
            slots: (0..secs)
                .map(|_| Slot {
                    requests: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                })
                .collect(),
            start: Instant::now(),
            flushed: AtomicU64::new(0),
            ratio: l.ratio,
            // At most 2^32 × 60: exact as an `f64`.
            reserve: (u64::from(l.min_per_sec) * secs) as f64,
        }))
    }
}

impl Default for Budget {
    /// `Budget::new(0.2, 10, 10 s)`.
    fn default() -> Self {
        Budget::new(0.2, 10, Duration::from_secs(10))
    }
}

/// Requests are attributed to their second once every this many (a power of two).
pub(crate) const FLUSH_EVERY: u64 = 64;

/// One second of the window. Each counter packs the second it belongs to (high 32 bits, 1-based, 0 =
/// never used) with its count (low 32 bits), so a stale bucket is reset by the same compare-and-swap
/// that counts into it.
#[derive(Debug)]
struct Slot {
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The live budget, built once and shared by every service of a layer.
#[derive(Debug)]
pub(crate) struct BudgetState {
    slots: Box<[Slot]>,
    start: Instant,
    /// How many of the layer's `requests` have been attributed to a bucket.
    flushed: AtomicU64,
    /// The ratio as given: not rounded to a fixed point (see [`Budget`]).
    ratio: f64,
    /// `min_per_sec × window`, in retries.
    reserve: f64,
}

const fn pack(sec: u32, count: u32) -> u64 {
    ((sec as u64) << 32) | count as u64
}

const fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

impl BudgetState {
    /// The 1-based second of `now` since the budget was built.
    fn second(&self, now: Instant) -> u32 {
        let s = now.saturating_duration_since(self.start).as_secs();
        u32::try_from(s.saturating_add(1)).unwrap_or(u32::MAX)
    }

    fn slot(&self, sec: u32) -> &Slot {
        &self.slots[sec as usize % self.slots.len()]
    }

    fn in_window(&self, bucket: u32, sec: u32) -> bool {
        bucket != 0 && bucket <= sec && u64::from(bucket) + self.slots.len() as u64 > u64::from(sec)
    }

    /// Adds `n` to `counter` for second `sec`, resetting it if it holds an older second.
    fn add(counter: &AtomicU64, sec: u32, n: u32) {
        let mut cur = counter.load(Relaxed);
        loop {
            let (bucket, count) = unpack(cur);
            let new = if bucket >= sec {
                // Current second, or a newer one a slow thread arrives late to: count it there.
                pack(bucket, count.saturating_add(n))
            } else {
                pack(sec, n)
            };
            match counter.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Attributes requests counted in `requests_total` (the layer's request counter) but not yet in a
    /// bucket to the current second.
    pub(crate) fn flush(&self, requests_total: &AtomicU64, now: Instant) {
        let total = requests_total.load(Relaxed);
        let before = self.flushed.fetch_max(total, Relaxed);
        if total > before {
            let n = u32::try_from(total - before).unwrap_or(u32::MAX);
            let sec = self.second(now);
            Self::add(&self.slot(sec).requests, sec, n);
        }
    }

    /// Takes one retry from the budget, or says no.
    pub(crate) fn try_withdraw(&self, requests_total: &AtomicU64, now: Instant) -> bool {
        self.flush(requests_total, now);
        let sec = self.second(now);
        let own = self.slot(sec);
        loop {
            let own_retries = own.retries.load(Relaxed);
            let (mut requests, mut retries) = (0u64, 0u64);
            for slot in self.slots.iter() {
                let (b, n) = unpack(slot.requests.load(Relaxed));
                if self.in_window(b, sec) {
                    requests += u64::from(n);
                }
                let r = if std::ptr::eq(slot, own) {
                    own_retries
                } else {
                    slot.retries.load(Relaxed)
                };
                let (b, n) = unpack(r);
                if self.in_window(b, sec) {
                    retries += u64::from(n);
                }
            }
            // Both counts are below 2^53 (60 buckets of at most 2^32), so they are exact as `f64`, and
            // the product is the exact one correctly rounded: a retry is allowed only while
            // `retries + 1 ≤ ratio × requests + reserve`.
            let allowed = self.ratio.mul_add(requests as f64, self.reserve);
            if (retries + 1) as f64 > allowed {
                return false;
            }
            let (b, n) = unpack(own_retries);
            let new = if b >= sec {
                pack(b, n.saturating_add(1))
            } else {
                pack(sec, 1)
            };
            // Concurrent withdrawals on this bucket serialize here; on a race, recount.
            if own
                .retries
                .compare_exchange(own_retries, new, Relaxed, Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn validation() {
        assert!(Budget::new(-0.1, 1, secs(10)).build().is_err());
        assert!(Budget::new(f64::NAN, 1, secs(10)).build().is_err());
        assert!(Budget::new(1000.1, 1, secs(10)).build().is_err());
        assert!(Budget::new(0.2, 1, secs(0)).build().is_err());
        assert!(Budget::new(0.2, 1, secs(61)).build().is_err());
        assert!(Budget::new(0.2, 1, Duration::from_millis(1500))
            .build()
            .is_err());
        assert!(Budget::new(0.0, 0, secs(1)).build().unwrap().is_some());
        assert!(Budget::unlimited().build().unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_and_reserve_bound_withdrawals() {
        let b = Budget::new(0.25, 2, secs(5)).build().unwrap().unwrap();
        let requests = AtomicU64::new(100);
        let mut granted = 0;
        while b.try_withdraw(&requests, Instant::now()) {
            granted += 1;
        }
        // 25 % of 100 plus 2/s over 5 s.
        assert_eq!(granted, 25 + 10);
        // More requests deposit more.
        requests.fetch_add(8, Relaxed);
        assert!(b.try_withdraw(&requests, Instant::now()));
        assert!(b.try_withdraw(&requests, Instant::now()));
        assert!(!b.try_withdraw(&requests, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides() {
        let b = Budget::new(0.0, 1, secs(3)).build().unwrap().unwrap();
        let requests = AtomicU64::new(0);
        let mut granted = 0;
        while b.try_withdraw(&requests, Instant::now()) {
            granted += 1;
        }
        assert_eq!(granted, 3);
        // Still in the window two seconds later.
        tokio::time::advance(secs(2)).await;
        assert!(!b.try_withdraw(&requests, Instant::now()));
        // The spent bucket leaves the window after three seconds.
        tokio::time::advance(secs(1)).await;
        assert!(b.try_withdraw(&requests, Instant::now()));
        assert!(b.try_withdraw(&requests, Instant::now()));
        assert!(b.try_withdraw(&requests, Instant::now()));
        assert!(!b.try_withdraw(&requests, Instant::now()));
        // Old requests leave the window too.
        let b = Budget::new(1.0, 0, secs(2)).build().unwrap().unwrap();
        let requests = AtomicU64::new(3);
        b.flush(&requests, Instant::now());
        tokio::time::advance(secs(2)).await;
        assert!(!b.try_withdraw(&requests, Instant::now()));
    }

    /// The ratios of the sweeps: decimal ones as users write them (`0.0015` was rounded to `0.002`,
    /// anything under `0.0005` to zero), thirds, the extremes, and pseudo-random ones over nine orders
    /// of magnitude.
    fn ratios() -> Vec<f64> {
        let mut ratios = vec![
            0.0,
            1e-6,
            0.0001,
            0.0004,
            0.000_499,
            0.0005,
            0.001,
            0.0015,
            0.0025,
            0.01,
            0.1,
            0.2,
            0.25,
            0.3,
            1.0 / 3.0,
            2.0 / 3.0,
            0.7,
            1.0,
            1.5,
            3.999,
            999.9999,
            1000.0,
        ];
        let rng = palisade_core::rng::SharedRng::seeded(8);
        ratios.extend((0..40).map(|_| 10f64.powf(rng.next_f64() * 9.0 - 6.0)));
        ratios
    }

    /// The most a budget may grant for `requests` (exact arithmetic would give this; `slack` requests
    /// are the documented batching allowance).
    fn bound(ratio: f64, requests: u64, reserve: u64) -> f64 {
        ratio * requests as f64 + reserve as f64
    }

    /// Deterministic sweep (the crate has no proptest): with every request attributed, a budget grants
    /// exactly `⌊ratio × requests + min_per_sec × window⌋` retries — never more, and not fewer.
    #[tokio::test(start_paused = true)]
    async fn ratio_is_kept_exactly() {
        let rng = palisade_core::rng::SharedRng::seeded(3);
        for ratio in ratios() {
            for requests in [
                0u64, 1, 7, 63, 64, 999, 1000, 1001, 12_345, 100_000, 1_000_000,
            ] {
                let min_per_sec = rng.below(3) as u32;
                let window = 1 + rng.below(60);
                let reserve = u64::from(min_per_sec) * window;
                let exact = bound(ratio, requests, reserve);
                if exact > 5_000.0 {
                    continue;
                }
                let b = Budget::new(ratio, min_per_sec, secs(window))
                    .build()
                    .unwrap()
                    .unwrap();
                let counter = AtomicU64::new(requests);
                let mut granted = 0u64;
                while b.try_withdraw(&counter, Instant::now()) {
                    granted += 1;
                }
                let case = format!(
                    "ratio {ratio}, {requests} requests, {min_per_sec}/s over {window} s: \
                     granted {granted}, exact bound {exact}"
                );
                assert!(granted as f64 <= exact * (1.0 + 1e-12), "over: {case}");
                assert!(
                    granted as f64 > exact * (1.0 - 1e-12) - 1.0,
                    "under: {case}"
                );
            }
        }
    }

    /// Deterministic sweep through the layer's own counting (batched flushes): whenever a retry is
    /// granted, the retries of the last `window` seconds (it included) are within `ratio × (requests +
    /// 63) + min_per_sec × window` of the requests counted in those seconds so far — the slack being the
    /// at most 63 requests of an earlier second attributed to a later one.
    #[tokio::test(start_paused = true)]
    async fn windows_never_exceed_ratio_plus_slack() {
        use crate::layer::Stats;
        use palisade_core::audit::Audit;

        let rng = palisade_core::rng::SharedRng::seeded(11);
        let audit = Audit::disabled();
        for ratio in ratios().into_iter().filter(|r| *r <= 5.0) {
            let min_per_sec = rng.below(2) as u32;
            let window = 1 + rng.below(5);
            let w = window as usize;
            let reserve = u64::from(min_per_sec) * window;
            let stats = Stats {
                budget: Budget::new(ratio, min_per_sec, secs(window))
                    .build()
                    .unwrap(),
                ..Stats::default()
            };
            let start = Instant::now();
            // Per whole second since start: requests counted, retries granted.
            let (mut counted, mut granted) = (vec![0u64; 20], vec![0u64; 20]);
            let mut total = 0;
            for tick in 0..200u64 {
                let sec = (Instant::now() - start).as_secs() as usize;
                for _ in 0..rng.below(150) {
                    stats.count_request();
                    counted[sec] += 1;
                }
                // Failure storms in some ticks, quiet in others.
                let asks = if tick % 7 < 3 { rng.below(40) } else { 0 };
                for _ in 0..asks {
                    if !stats.withdraw(&audit) {
                        continue;
                    }
                    granted[sec] += 1;
                    total += 1;
                    let from = (sec + 1).saturating_sub(w);
                    let requests: u64 = counted[from..=sec].iter().sum();
                    let retries: u64 = granted[from..=sec].iter().sum();
                    let allowed = bound(ratio, requests + 63, reserve);
                    assert!(
                        retries as f64 <= allowed * (1.0 + 1e-12),
                        "ratio {ratio}, {window} s window at second {sec}: {retries} retries \
                         for {requests} requests (allowed {allowed})"
                    );
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            assert!(ratio < 0.001 || total > 0, "ratio {ratio}: nothing granted");
        }
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _guard = rt.enter();
        let b = std::sync::Arc::new(Budget::new(0.5, 0, secs(10)).build().unwrap().unwrap());
        let requests = std::sync::Arc::new(AtomicU64::new(1000));
        let now = Instant::now();
        let granted = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (b, requests, granted) = (&b, &requests, &granted);
                s.spawn(move || {
                    for _ in 0..1000 {
                        if b.try_withdraw(requests, now) {
                            granted.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Relaxed), 500);
    }
}
