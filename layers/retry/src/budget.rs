//! The retry budget: retries may be at most a fraction of requests, so an outage cannot multiply load.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::BuildError;

/// A retry budget: over any `window`, retries may be at most `ratio × requests + min_per_sec × window`.
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
/// 64 (and before every retry decision), so a budget may allow up to `64 × ratio` retries more than an
/// exact count.
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
            // Integer arithmetic in thousandths of a retry.
            ratio_milli: (l.ratio * 1000.0).round() as u64,
            reserve_milli: u64::from(l.min_per_sec)
                .saturating_mul(secs)
                .saturating_mul(1000),
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
    ratio_milli: u64,
    reserve_milli: u64,
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
            let allowed = requests
                .saturating_mul(self.ratio_milli)
                .saturating_add(self.reserve_milli);
            if (retries + 1).saturating_mul(1000) > allowed {
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
