//! The Generic Cell Rate Algorithm on one `AtomicU64` per bucket, plus the penalty state.
//!
//! A bucket is its *theoretical arrival time* (TAT): nanoseconds since an epoch. A request at `now`
//! conforms iff `now >= TAT - tau`; an admitted request moves the TAT to `max(TAT, now) + t`. `t` is the
//! emission interval (period / limit) and `tau = t × (burst - 1)` the tolerance. A TAT of 0 is a full
//! bucket, so a fresh bucket needs no initialisation and a bucket whose TAT is in the past can be
//! forgotten without changing any decision.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A quota: `limit` requests per `period`, with bursts of up to `burst` requests.
///
/// The sustained rate is one request every `period / limit` (in whole nanoseconds, rounded down); a
/// bucket holds at most `burst` requests (default: `limit`), refilling continuously.
///
/// `build()` (and the handle's runtime changes) accept a rate whose `limit` and `burst` are at least 1,
/// whose `period` is above zero and at most a year (366 days), that is at most one request per
/// nanosecond, and whose empty bucket refills (`burst × period / limit`) within a year.
///
/// ```
/// use palisade_ratelimit::Rate;
/// use std::time::Duration;
///
/// let rate = Rate::per_second(100).burst(20); // 100 req/s sustained, bursts of 20
/// assert_eq!(rate.emission_interval(), Duration::from_millis(10));
/// assert_eq!(rate.refill_time(), Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// `limit` requests per `period`, burst `limit`. A `limit` of 0 is refused by `build()`.
    pub const fn new(limit: u32, period: Duration) -> Self {
        Rate {
            limit,
            period,
            burst: limit,
        }
    }

    /// `limit` requests per second.
    pub const fn per_second(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub const fn per_hour(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// At most `burst` requests at once (a full bucket). A `burst` of 0 is refused by `build()`.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Requests per [`period`](Self::period).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The window the limit is counted over.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The largest burst.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The time one request's worth of quota takes to refill (`period / limit`, at least 1 ns).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.gcra().t)
    }

    /// The time an empty bucket takes to refill completely (`burst × period / limit`).
    pub fn refill_time(&self) -> Duration {
        let g = self.gcra();
        Duration::from_nanos(g.t.saturating_add(g.tau))
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.limit == 0 {
            return Err("the limit must be at least 1");
        }
        if self.burst == 0 {
            return Err("the burst must be at least 1");
        }
        if self.period.is_zero() {
            return Err("the period must be above zero");
        }
        if self.period > Duration::from_secs(366 * 86_400) {
            return Err("the period must be at most a year");
        }
        // One request per nanosecond is the finest interval: beyond it, `period / limit` would be
        // rounded up to 1 ns and the rate silently be lower than asked.
        if nanos(self.period) < u64::from(self.limit) {
            return Err("the rate must be at most one request per nanosecond");
        }
        // An empty bucket takes `t × burst` to refill; beyond a year (366 days) the bucket is a ban,
        // not a limit, and no idle timeout could keep it.
        let g = self.gcra();
        if g.t.saturating_add(g.tau) > nanos(Duration::from_secs(366 * 86_400)) {
            return Err(
                "the burst must refill within a year (lower the burst or shorten the period)",
            );
        }
        Ok(())
    }

    /// The GCRA parameters of this rate.
    pub fn gcra(&self) -> Gcra {
        let t = (nanos(self.period) / u64::from(self.limit.max(1))).max(1);
        Gcra {
            t,
            tau: t.saturating_mul(u64::from(self.burst.max(1)) - 1),
        }
    }

    /// This rate scaled by `factor` in (0, 1]: the sustained rate and the burst shrink together (the
    /// burst stays at least 1). Used by adaptive mode.
    pub fn scaled(&self, factor: f64) -> Rate {
        if factor >= 1.0 || factor.is_nan() {
            return *self;
        }
        let factor = factor.max(1e-6);
        // Scale the limit through the period so that tiny limits keep their precision.
        let period = Duration::from_secs_f64((self.period.as_secs_f64() / factor).min(3.2e7));
        let burst = ((f64::from(self.burst) * factor + 1e-9).floor() as u32).max(1);
        Rate {
            limit: self.limit,
            period,
            burst,
        }
    }
}

impl From<governor::Quota> for Rate {
    /// A governor quota (one request every `replenish_interval`, bursts of `burst_size`) as a rate of
    /// `burst_size` requests per `burst_size × replenish_interval`.
    fn from(q: governor::Quota) -> Self {
        let burst = q.burst_size().get();
        Rate {
            limit: burst,
            period: q.burst_size_replenished_in(),
            burst,
        }
    }
}

impl From<Rate> for Option<governor::Quota> {
    /// The same rate as a governor quota (`None` if the rate is invalid).
    fn from(r: Rate) -> Self {
        r.validate().ok()?;
        let burst = NonZeroU32::new(r.burst)?;
        governor::Quota::with_period(r.emission_interval()).map(|q| q.allow_burst(burst))
    }
}

/// GCRA parameters in nanoseconds: emission interval `t` and tolerance `tau = t × (burst - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// The emission interval: one request's worth of time.
    pub t: u64,
    /// The tolerance: how far ahead of `now` the TAT may run and still admit.
    pub tau: u64,
}

/// The repeat-offender policy: a growing extra wait added when a new violation streak starts.
///
/// A *violation streak* is a run of rejections of one bucket with no admission in between. Every
/// streak raises the bucket's offence level by one; each `decay` without a violation lowers it by
/// one. The first streak (level 1) costs nothing beyond the normal wait; from level 2 on, the streak
/// adds `base × 2^(level - 2)`, capped at `max`, to the time before the bucket admits again. Levels
/// stop rising at 127; the decay is counted in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// The penalty at level 2.
    pub base: Duration,
    /// The largest penalty.
    pub max: Duration,
    /// How long without a violation lowers the level by one.
    pub decay: Duration,
}

/// Apply a request (`Consume`) or only look (`Peek`: never changes state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Take one request's worth of quota if the request conforms.
    Consume,
    /// Say what `Consume` would decide, without changing anything.
    Peek,
}

/// The outcome of one GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    admitted: bool,
    retry_after: u64,
    remaining: u64,
    reset: u64,
    streak: Option<Streak>,
    /// This admission ended a violation streak (a refund must resume it).
    ended_streak: bool,
}

/// A violation streak that began with this rejection (see [`Penalty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// The bucket's offence level after this streak (1 for a first offence).
    pub level: u32,
    /// The penalty this streak added (zero at level 1 or without a penalty policy).
    pub penalty: Duration,
}

impl Decision {
    /// An admission with `remaining` requests left at once and `reset` until the bucket is full.
    pub fn admit(remaining: u64, reset: Duration) -> Self {
        Decision {
            admitted: true,
            retry_after: 0,
            remaining,
            reset: nanos(reset),
            streak: None,
            ended_streak: false,
        }
    }

    /// A rejection: admitted again after `retry_after`, full after `reset`.
    pub fn reject(retry_after: Duration, reset: Duration) -> Self {
        Decision {
            admitted: false,
            retry_after: nanos(retry_after),
            remaining: 0,
            reset: nanos(reset),
            streak: None,
            ended_streak: false,
        }
    }

    /// Marks the rejection as the start of a violation streak.
    #[must_use]
    pub fn with_streak(mut self, streak: Streak) -> Self {
        self.streak = Some(streak);
        self
    }

    /// Marks the admission as the end of a violation streak (so that a refund of it resumes the
    /// streak).
    #[must_use]
    pub fn with_ended_streak(mut self) -> Self {
        self.ended_streak = true;
        self
    }

    /// Whether the request conforms (for `Peek`: would conform).
    pub fn is_admitted(&self) -> bool {
        self.admitted
    }

    /// For a rejection, the wait until a request would be admitted; zero for an admission.
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after)
    }

    /// Requests that would still be admitted right now, after this one.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The time until the bucket is full again.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// The violation streak this rejection started, if it started one.
    pub fn streak(&self) -> Option<Streak> {
        self.streak
    }

    /// Whether this admission ended a violation streak: the bucket had been refusing since its last
    /// admission. [`Cell::refund`] resumes the streak.
    pub fn ended_streak(&self) -> bool {
        self.ended_streak
    }
}

/// Penalty word layout: bit 63 = in a streak, bits 56..63 = level, bits 0..56 = last violation (ms).
const IN_STREAK: u64 = 1 << 63;
const LEVEL_SHIFT: u32 = 56;
const LEVEL_MASK: u64 = 0x7F;
const MS_MASK: u64 = (1 << LEVEL_SHIFT) - 1;

/// One bucket's state: the TAT and the offence level, two atomics, 16 bytes.
///
/// The in-memory store keeps one per tenant; the layer keeps one for the global limit. A store for
/// another backend can keep these as a local cache or port [`Cell::acquire`]'s arithmetic (it is a pure
/// function of the TAT, the penalty word, the parameters and `now`).
#[derive(Default)]
pub struct Cell {
    tat: AtomicU64,
    penalty: AtomicU64,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cell")
            .field(
                "tat",
                &Duration::from_nanos(self.tat.load(Ordering::Relaxed)),
            )
            .field("level", &self.level())
            .finish()
    }
}

impl Cell {
    /// A full bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// The theoretical arrival time, nanoseconds since the owner's epoch (0: never used).
    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }

    /// The current offence level (before decay).
    pub fn level(&self) -> u32 {
        ((self.penalty.load(Ordering::Relaxed) >> LEVEL_SHIFT) & LEVEL_MASK) as u32
    }

    /// The offence level at `now` (nanoseconds since the owner's epoch) after the decay of one level
    /// per `decay_ms` milliseconds since the last violation: what the next streak would build on.
    pub(crate) fn decayed_level(&self, decay_ms: u64, now: u64) -> u64 {
        let word = self.penalty.load(Ordering::Relaxed);
        let level = (word >> LEVEL_SHIFT) & LEVEL_MASK;
        if level == 0 || decay_ms == 0 {
            return level;
        }
        let now_ms = (now / 1_000_000) & MS_MASK;
        level.saturating_sub(now_ms.saturating_sub(word & MS_MASK) / decay_ms)
    }

    /// Runs one GCRA step at `now` (nanoseconds since the owner's epoch).
    #[inline]
    pub fn acquire(&self, g: Gcra, penalty: Option<&Penalty>, now: u64, op: Op) -> Decision {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let earliest = tat.saturating_sub(g.tau);
            if now < earliest {
                return self.reject(g, penalty, now, tat, op);
            }
            let next = tat.max(now).saturating_add(g.t);
            if op == Op::Peek {
                return admitted(g, now, next);
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let mut d = admitted(g, now, next);
                    // Ends a violation streak: one relaxed load on the happy path.
                    if self.penalty.load(Ordering::Relaxed) & IN_STREAK != 0 {
                        let before = self.penalty.fetch_and(!IN_STREAK, Ordering::Relaxed);
                        d.ended_streak = before & IN_STREAK != 0;
                    }
                    return d;
                }
                Err(actual) => tat = actual,
            }
        }
    }

    #[cold]
    fn reject(&self, g: Gcra, penalty: Option<&Penalty>, now: u64, tat: u64, op: Op) -> Decision {
        let earliest = tat.saturating_sub(g.tau);
        let plain = Decision {
            admitted: false,
            retry_after: earliest - now,
            remaining: 0,
            reset: tat - now,
            streak: None,
            ended_streak: false,
        };
        if op == Op::Peek {
            return plain;
        }
        let now_ms = (now / 1_000_000) & MS_MASK;
        let mut word = self.penalty.load(Ordering::Relaxed);
        loop {
            if word & IN_STREAK != 0 {
                // Same streak: only remember when the latest violation was, for the decay.
                let new = (word & !MS_MASK) | now_ms;
                if new != word {
                    let _ = self.penalty.compare_exchange(
                        word,
                        new,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return plain;
            }
            let level = (word >> LEVEL_SHIFT) & LEVEL_MASK;
            let last_ms = word & MS_MASK;
            let decayed = match penalty {
                Some(p) if !p.decay.is_zero() => {
                    let steps = now_ms.saturating_sub(last_ms) / (millis(p.decay).max(1));
                    level.saturating_sub(steps)
                }
                _ => level,
            };
            let level = (decayed + 1).min(LEVEL_MASK);
            let new = IN_STREAK | (level << LEVEL_SHIFT) | now_ms;
            match self
                .penalty
                .compare_exchange(word, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let extra = penalty.map_or(0, |p| penalty_for(p, level as u32));
                    let mut d = plain;
                    if extra > 0 {
                        // Push the TAT so nothing is admitted before the penalty has been served.
                        let pushed = tat.max(now.saturating_add(g.tau)).saturating_add(extra);
                        let prev = self.tat.fetch_max(pushed, Ordering::AcqRel);
                        let tat = prev.max(pushed);
                        d.retry_after = tat.saturating_sub(g.tau).saturating_sub(now);
                        d.reset = tat - now;
                    }
                    return d.with_streak(Streak {
                        level: level as u32,
                        penalty: Duration::from_nanos(extra),
                    });
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Undoes the admission `admitted` (a `Consume` decision of this cell with parameters `g`) after a
    /// later check refused the request: gives back its request's worth of quota and, if it ended a
    /// violation streak, resumes the streak — the request was not served, so the bucket is not
    /// in good standing again.
    ///
    /// Under concurrency on the same bucket the undo is approximate, never harsher: a rejection racing
    /// between the admission and the refund may already have started a new streak, and an admission
    /// racing it may see the streak resumed (its next violation then continues the streak).
    pub fn refund(&self, g: Gcra, admitted: &Decision) {
        if !admitted.admitted {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(g.t))
            });
        if admitted.ended_streak {
            self.penalty.fetch_or(IN_STREAK, Ordering::Relaxed);
        }
    }
}

#[inline]
fn admitted(g: Gcra, now: u64, next: u64) -> Decision {
    let horizon = now.saturating_add(g.tau);
    let remaining = if horizon >= next {
        (horizon - next) / g.t + 1
    } else {
        0
    };
    Decision {
        admitted: true,
        retry_after: 0,
        remaining,
        reset: next - now,
        streak: None,
        ended_streak: false,
    }
}

/// The extra wait at offence `level`: nothing at level 1, then `base × 2^(level - 2)` up to `max`.
pub(crate) fn penalty_for(p: &Penalty, level: u32) -> u64 {
    if level < 2 || p.base.is_zero() {
        return 0;
    }
    let shift = (level - 2).min(62);
    nanos(p.base)
        .saturating_mul(1u64 << shift)
        .min(nanos(p.max))
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let g = Rate::per_second(10).burst(3).gcra();
        assert_eq!(
            g,
            Gcra {
                t: 100 * MS,
                tau: 200 * MS
            }
        );
        let c = Cell::new();
        let now = 1_000 * MS;
        let d: Vec<_> = (0..4)
            .map(|_| c.acquire(g, None, now, Op::Consume))
            .collect();
        assert_eq!(d.iter().filter(|d| d.is_admitted()).count(), 3);
        assert_eq!(d[0].remaining(), 2);
        assert_eq!(d[2].remaining(), 0);
        assert_eq!(d[3].retry_after(), Duration::from_millis(100));
        assert!(c
            .acquire(g, None, now + 100 * MS, Op::Consume)
            .is_admitted());
    }

    #[test]
    fn peek_never_changes_state() {
        let g = Rate::per_second(1).gcra();
        let c = Cell::new();
        for _ in 0..10 {
            assert!(c.acquire(g, None, 5, Op::Peek).is_admitted());
        }
        assert_eq!(c.tat(), 0);
        assert!(c.acquire(g, None, 5, Op::Consume).is_admitted());
        let peek = c.acquire(g, None, 5, Op::Peek);
        assert!(!peek.is_admitted());
        assert!(peek.streak().is_none());
        assert_eq!(c.level(), 0);
    }

    #[test]
    fn refund_resumes_the_streak_the_admission_ended() {
        let burst2 = Rate::per_second(1).burst(2).gcra();
        let burst1 = Rate::per_second(1).burst(1).gcra();
        let penalty = Penalty {
            base: Duration::from_secs(10),
            max: Duration::from_secs(10),
            decay: Duration::from_secs(3600),
        };
        let p = Some(&penalty);
        let c = Cell::new();
        let now = 1_000 * MS;
        for _ in 0..2 {
            let d = c.acquire(burst2, p, now, Op::Consume);
            assert!(d.is_admitted() && !d.ended_streak());
        }
        let refused = c.acquire(burst2, p, now, Op::Consume);
        assert_eq!(refused.streak().map(|s| s.level), Some(1));
        // A second later the bucket admits: that ends the streak...
        let later = now + 1_000 * MS;
        let d = c.acquire(burst2, p, later, Op::Consume);
        assert!(d.is_admitted() && d.ended_streak());
        let tat = c.tat();
        // ...but a later check refuses the request: undo it, quota and streak.
        c.refund(burst2, &d);
        assert_eq!(c.tat(), tat - burst2.t);
        assert_eq!(c.level(), 1);
        // Judged by a tighter rate, the bucket refuses now: the streak goes on (no new level, no
        // penalty), as if the refunded request had never been admitted.
        let refused = c.acquire(burst1, p, later, Op::Consume);
        assert!(!refused.is_admitted());
        assert_eq!(refused.streak(), None);
        assert_eq!(refused.retry_after(), Duration::from_secs(1));
        assert_eq!(c.level(), 1);
        // Refunding a rejection changes nothing.
        let tat = c.tat();
        c.refund(burst1, &refused);
        assert_eq!(c.tat(), tat);
    }

    #[test]
    fn scaled_rate_is_slower_and_smaller() {
        let r = Rate::per_second(100).burst(20).scaled(0.5);
        assert_eq!(r.emission_interval(), Duration::from_millis(20));
        assert_eq!(r.burst_size(), 10);
        assert_eq!(Rate::per_second(1).burst(1).scaled(0.01).burst_size(), 1);
    }

    #[test]
    fn governor_quota_round_trip() {
        let q = governor::Quota::per_second(NonZeroU32::new(50).unwrap());
        let r = Rate::from(q);
        assert_eq!(r.emission_interval(), Duration::from_millis(20));
        assert_eq!(r.burst_size(), 50);
        let back: Option<governor::Quota> = r.into();
        assert_eq!(back, Some(q));
    }
}
