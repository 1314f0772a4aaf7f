//! How long to wait before each retry.

use std::fmt;
use std::time::Duration;

use palisade_core::rng::SharedRng;

/// Default base delay of [`Backoff::default`]: 100 ms.
pub const DEFAULT_BASE: Duration = Duration::from_millis(100);
/// Default maximum delay of [`Backoff::default`]: 60 s.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Default jitter of [`Backoff::default`]: 1 s.
pub const DEFAULT_JITTER: Duration = Duration::from_secs(1);

/// The delay before each retry.
///
/// - [`Backoff::exponential`]: the `n`-th retry (`n` = 1, 2, ...) waits
///   `min(max, base × 2^(n−1)) + uniform(0, jitter)`, the jitter drawn at nanosecond resolution from the
///   layer's random generator (seed it with [`RetryBuilder::seed`](crate::RetryBuilder::seed) for
///   reproducible tests). [`Backoff::default`] is `exponential(100 ms, 60 s).jitter(1 s)`.
/// - [`Backoff::decorrelated`]: AWS's "decorrelated jitter": `sleep = min(cap, uniform(base, sleep × 3))`,
///   starting from `sleep = base`. Spreads a herd of clients better than full jitter at a similar total
///   wait.
///
/// A retry hint from the service (`Retry-After`, [`RateLimited::retry_after`], ...) can lengthen a delay
/// but never shortens it below the backoff.
///
/// The maximum (or cap) and the jitter may be at most [`MAX_DELAY`](crate::MAX_DELAY) (1 hour), and
/// the base at most the maximum; [`RetryBuilder::build`](crate::RetryBuilder::build) refuses others.
///
/// [`RateLimited::retry_after`]: palisade_core::error::RateLimited::retry_after
///
/// ```
/// use palisade_retry::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
///     .jitter(Duration::from_millis(20));
/// assert_eq!(b.max(), Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exponential {
        base: Duration,
        max: Duration,
        jitter: Duration,
    },
    Decorrelated {
        base: Duration,
        cap: Duration,
    },
}

impl Backoff {
    /// Exponential backoff from `base`, doubling per retry, never above `max` (before jitter), without
    /// jitter until [`jitter`](Self::jitter) adds some.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff {
            kind: Kind::Exponential {
                base,
                max,
                jitter: Duration::ZERO,
            },
        }
    }

    /// Adds `uniform(0, jitter)` to every exponential delay. No effect on decorrelated backoff, which is
    /// random by construction.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        if let Kind::Exponential { jitter: j, .. } = &mut self.kind {
            *j = jitter;
        }
        self
    }

    /// Decorrelated jitter: each delay is uniform between `base` and three times the previous delay
    /// (the first between `base` and `3 × base`), never above `cap`. `base` must not be zero.
    pub fn decorrelated(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Decorrelated { base, cap },
        }
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        match self.kind {
            Kind::Exponential { base, .. } | Kind::Decorrelated { base, .. } => base,
        }
    }

    /// The largest delay before jitter (exponential) or at all (decorrelated).
    pub fn max(&self) -> Duration {
        match self.kind {
            Kind::Exponential { max, .. } => max,
            Kind::Decorrelated { cap, .. } => cap,
        }
    }

    /// The jitter bound of exponential backoff (zero for decorrelated).
    pub fn jitter_bound(&self) -> Duration {
        match self.kind {
            Kind::Exponential { jitter, .. } => jitter,
            Kind::Decorrelated { .. } => Duration::ZERO,
        }
    }

    /// Checks the parameters (used by the builder).
    pub(crate) fn validate(&self) -> Result<(), crate::BuildError> {
        match self.kind {
            Kind::Exponential { base, max, .. } | Kind::Decorrelated { base, cap: max } => {
                if base > max {
                    return Err(crate::BuildError::BaseExceedsMax { base, max });
                }
            }
        }
        if let Kind::Decorrelated { base, .. } = self.kind {
            if base.is_zero() {
                return Err(crate::BuildError::ZeroDecorrelatedBase);
            }
        }
        let too_long = |setting, delay: Duration| {
            if delay > crate::MAX_DELAY {
                Err(crate::BuildError::DelayTooLong { setting, delay })
            } else {
                Ok(())
            }
        };
        too_long("backoff", self.max())?;
        too_long("jitter", self.jitter_bound())
    }

    /// The delay before retry number `retry` (0 for the first retry); `prev` is the previous delay
    /// (decorrelated only; the first retry passes [`base`](Self::base)).
    pub(crate) fn delay(&self, retry: u32, prev: Duration, rng: &SharedRng) -> Duration {
        match self.kind {
            Kind::Exponential { base, max, jitter } => {
                let exp = base.saturating_mul(2u32.saturating_pow(retry)).min(max);
                if jitter.is_zero() {
                    exp
                } else {
                    exp.saturating_add(rng.duration_up_to(jitter))
                }
            }
            Kind::Decorrelated { base, cap } => {
                let upper = prev.saturating_mul(3).max(base);
                base.saturating_add(rng.duration_up_to(upper - base))
                    .min(cap)
            }
        }
    }
}

impl Default for Backoff {
    /// `exponential(100 ms, 60 s).jitter(1 s)`.
    fn default() -> Self {
        Backoff::exponential(DEFAULT_BASE, DEFAULT_MAX).jitter(DEFAULT_JITTER)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Exponential { base, max, jitter } => f
                .debug_struct("Exponential")
                .field("base", &base)
                .field("max", &max)
                .field("jitter", &jitter)
                .finish(),
            Kind::Decorrelated { base, cap } => f
                .debug_struct("Decorrelated")
                .field("base", &base)
                .field("cap", &cap)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_without_jitter_doubles_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let rng = SharedRng::seeded(1);
        let got: Vec<_> = (0..6).map(|n| b.delay(n, Duration::ZERO, &rng)).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // Huge retry numbers saturate instead of overflowing.
        assert_eq!(b.delay(200, Duration::ZERO, &rng), ms(1000));
    }

    #[test]
    fn exponential_jitter_is_the_seeded_draw() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(60))
            .jitter(Duration::from_secs(1));
        let rng = SharedRng::seeded(9);
        let reference = SharedRng::seeded(9);
        for n in 0..5 {
            let expected =
                Duration::from_millis(100 << n) + reference.duration_up_to(Duration::from_secs(1));
            assert_eq!(b.delay(n, Duration::ZERO, &rng), expected);
        }
    }

    #[test]
    fn decorrelated_stays_within_bounds() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_secs(2);
        let b = Backoff::decorrelated(base, cap);
        let rng = SharedRng::seeded(3);
        let mut prev = base;
        let mut saw_cap_region = false;
        for n in 0..10_000 {
            let d = b.delay(n, prev, &rng);
            assert!(d >= base, "{d:?} below base");
            assert!(d <= cap, "{d:?} above cap");
            assert!(d <= prev * 3, "{d:?} above 3 × {prev:?}");
            saw_cap_region |= d > cap / 2;
            prev = d;
        }
        assert!(saw_cap_region, "the walk never grew towards the cap");
    }

    #[test]
    fn validation() {
        let s = Duration::from_secs;
        assert!(Backoff::exponential(s(2), s(1)).validate().is_err());
        assert!(Backoff::decorrelated(Duration::ZERO, s(1))
            .validate()
            .is_err());
        assert!(Backoff::exponential(Duration::ZERO, s(1))
            .validate()
            .is_ok());
        assert!(Backoff::default().validate().is_ok());
    }
}
