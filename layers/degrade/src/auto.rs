//! Automatic levels: the signals (in-flight count, p95 latency, error rate), the ring of samples they
//! are computed from, and the hysteresis that turns them into a level.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::classify::Outcome;
use tokio::time::Instant;

use crate::level::Level;

/// What the gate measured, as of an evaluation. Returned by
/// [`GateHandle::signals`](crate::GateHandle::signals).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Signals {
    /// Requests admitted by the gate whose response has not arrived yet.
    pub in_flight: u64,
    /// The 95th percentile latency of the calls that finished within the window (to the
    /// microsecond); `None` with fewer than the minimum number of samples.
    pub p95_latency: Option<Duration>,
    /// Failures / (failures + successes) of the calls that finished within the window, as judged by
    /// the classifier; `None` with fewer than the minimum number of judged calls.
    pub error_rate: Option<f64>,
    /// How many samples were within the window.
    pub samples: u32,
}

/// Which signal a trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalKind {
    InFlight,
    /// In microseconds.
    P95Latency,
    ErrorRate,
}

impl SignalKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SignalKind::InFlight => "in_flight",
            SignalKind::P95Latency => "p95_latency",
            SignalKind::ErrorRate => "error_rate",
        }
    }

    pub(crate) fn value(self, s: &Signals) -> Option<f64> {
        match self {
            SignalKind::InFlight => Some(s.in_flight as f64),
            SignalKind::P95Latency => s.p95_latency.map(|d| d.as_micros() as f64),
            SignalKind::ErrorRate => s.error_rate,
        }
    }

    /// A value of this signal, for people.
    pub(crate) fn show(self, v: f64) -> String {
        match self {
            SignalKind::InFlight => format!("{v}"),
            SignalKind::P95Latency => format!("{:?}", Duration::from_micros(v as u64)),
            SignalKind::ErrorRate => format!("{:.1}%", v * 100.0),
        }
    }
}

/// Enter `level` when the signal reaches `enter`; stay while it is at or above `leave`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trigger {
    pub(crate) kind: SignalKind,
    pub(crate) level: Level,
    pub(crate) enter: f64,
    pub(crate) leave: f64,
}

/// Fixed ring of the last N completed calls, written lock-free on the request path.
///
/// Each slot packs one call into a `u64`: latency in microseconds (28 bits, saturating at ~268 s),
/// outcome (2 bits) and completion time in milliseconds since the gate was built, plus one (34 bits;
/// 0 marks an empty slot).
pub(crate) struct Ring {
    slots: Box<[AtomicU64]>,
    next: AtomicUsize,
}

const LAT_BITS: u32 = 28;
pub(crate) const LAT_MAX: u64 = (1 << LAT_BITS) - 1;
const OUT_SHIFT: u32 = LAT_BITS;
const TS_SHIFT: u32 = LAT_BITS + 2;
const TS_MASK: u64 = (1 << (64 - TS_SHIFT)) - 1;
const SUCCESS: u64 = 0;
const FAILURE: u64 = 1;
const IGNORED: u64 = 2;

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        Ring {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn push(&self, at_ms: u64, latency: Duration, outcome: Outcome) {
        let lat = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(LAT_MAX);
        let out = match outcome {
            Outcome::Success => SUCCESS,
            Outcome::Failure(_) => FAILURE,
            Outcome::Ignored => IGNORED,
        };
        let ts = (at_ms.wrapping_add(1) & TS_MASK).max(1);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].store(
            lat | (out << OUT_SHIFT) | (ts << TS_SHIFT),
            Ordering::Relaxed,
        );
    }

    /// Fills `latencies` with the latencies (µs) of the calls that finished in the last `window_ms`
    /// before `now_ms`; returns (failures, judged calls).
    pub(crate) fn collect(
        &self,
        now_ms: u64,
        window_ms: u64,
        latencies: &mut Vec<u32>,
    ) -> (u32, u32) {
        latencies.clear();
        let now = now_ms.wrapping_add(1) & TS_MASK;
        let (mut failures, mut judged) = (0, 0);
        for slot in self.slots.iter() {
            let v = slot.load(Ordering::Relaxed);
            let ts = v >> TS_SHIFT;
            let age = now.wrapping_sub(ts) & TS_MASK;
            // A sample from after `now` (an evaluation given an earlier instant) counts as fresh.
            let future = age > TS_MASK / 2;
            if ts == 0 || (age > window_ms && !future) {
                continue;
            }
            latencies.push((v & LAT_MAX) as u32);
            match (v >> OUT_SHIFT) & 0b11 {
                SUCCESS => judged += 1,
                FAILURE => {
                    failures += 1;
                    judged += 1;
                }
                _ => {}
            }
        }
        (failures, judged)
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The automatic mode's configuration and lock-free counters.
#[derive(Debug)]
pub(crate) struct Auto {
    pub(crate) triggers: Box<[Trigger]>,
    pub(crate) dwell: Duration,
    pub(crate) interval_ns: u64,
    pub(crate) window_ms: u64,
    pub(crate) min_samples: u32,
    /// Whether any trigger needs latency or outcome samples (otherwise the ring is not written).
    pub(crate) sampling: bool,
    pub(crate) ring: Ring,
    pub(crate) in_flight: AtomicU64,
    /// Nanoseconds since the epoch at which the request path evaluates next.
    pub(crate) next_eval: AtomicU64,
}

/// The automatic level and what it needs between evaluations (behind the control lock).
#[derive(Debug)]
pub(crate) struct AutoState {
    pub(crate) level: Level,
    /// Per level (by [`Level::index`]), the last evaluation at which the signals held it (asked for
    /// it or a higher level); `None` if none has yet. Stepping down is measured from these.
    pub(crate) held_at: [Option<Instant>; 5],
    /// Reused buffer for the latencies of one evaluation.
    pub(crate) scratch: Vec<u32>,
}

/// Why the automatic level is what it is.
pub(crate) struct Cause {
    pub(crate) trigger: Option<(Trigger, f64)>,
}

impl Auto {
    pub(crate) fn signals(&self, now_ms: u64, scratch: &mut Vec<u32>) -> Signals {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if !self.sampling {
            return Signals {
                in_flight,
                ..Signals::default()
            };
        }
        let (failures, judged) = self.ring.collect(now_ms, self.window_ms, scratch);
        let n = scratch.len();
        let p95_latency = (n >= self.min_samples as usize).then(|| {
            // Nearest rank: the smallest value with at least 95 % of the samples at or below it.
            let rank = (n * 95).div_ceil(100).max(1) - 1;
            let (_, v, _) = scratch.select_nth_unstable(rank);
            Duration::from_micros(u64::from(*v))
        });
        let error_rate =
            (judged >= self.min_samples).then(|| f64::from(failures) / f64::from(judged));
        Signals {
            in_flight,
            p95_latency,
            error_rate,
            samples: n as u32,
        }
    }

    /// The level the signals ask for, given the current automatic level: a trigger is active if its
    /// level is above the current one and its signal reached `enter`, or its level is at or below the
    /// current one and its signal is still at or above `leave`. The most severe active trigger wins.
    pub(crate) fn wanted(&self, signals: &Signals, current: Level) -> (Level, Cause) {
        let mut want = Level::Normal;
        let mut cause = None;
        for t in self.triggers.iter() {
            let Some(v) = t.kind.value(signals) else {
                continue;
            };
            let active = if current >= t.level {
                v >= t.leave
            } else {
                v >= t.enter
            };
            if active && (t.level > want || cause.is_none()) {
                want = want.max(t.level);
                cause = Some((*t, v));
            }
        }
        (want, Cause { trigger: cause })
    }

    /// Moves the automatic level: up at once; down only once no evaluation in the last dwell time
    /// has held the level, i.e. after the signals holding it have been below their leave thresholds
    /// for the dwell time, continuously (as seen by the evaluations), however long the gate has been
    /// at the level. It steps down to the highest level an evaluation within the dwell time still
    /// held (the level the signals ask for now, or above). Returns the reason when it moved.
    pub(crate) fn step(
        &self,
        state: &mut AutoState,
        signals: &Signals,
        now: Instant,
    ) -> Option<String> {
        let (want, cause) = self.wanted(signals, state.level);
        for held in &mut state.held_at[..=want.index()] {
            *held = Some(now);
        }
        let from = state.level;
        let to = if want >= from {
            want
        } else {
            // `held_at` only gets older going up, so the first level (from the top) held within
            // the dwell is where to stop; `want` itself was held just now.
            Level::ALL[..=from.index()]
                .iter()
                .rev()
                .copied()
                .find(|l| {
                    *l == Level::Normal
                        || state.held_at[l.index()]
                            .is_some_and(|t| now.saturating_duration_since(t) < self.dwell)
                })
                .unwrap_or(Level::Normal)
        };
        if to == from {
            return None;
        }
        state.level = to;
        Some(match cause.trigger {
            Some((t, v)) if to > from => format!(
                "{} {} reached {} (enter threshold for {})",
                t.kind.name(),
                t.kind.show(v),
                t.kind.show(t.enter),
                t.level
            ),
            Some((t, v)) if to == want => format!(
                "{} {} is still at or above {} (leave threshold for {})",
                t.kind.name(),
                t.kind.show(v),
                t.kind.show(t.leave),
                t.level
            ),
            _ if to == Level::Normal => format!(
                "every signal below its leave threshold for at least {:?}",
                self.dwell
            ),
            _ => format!(
                "signals below the leave thresholds above {to} for at least {:?}; {to} was held within it",
                self.dwell
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_window_and_outcomes() {
        let ring = Ring::new(8);
        ring.push(100, Duration::from_millis(5), Outcome::Success);
        ring.push(
            1_000,
            Duration::from_millis(7),
            Outcome::Failure(palisade_core::classify::Failure::Error),
        );
        ring.push(1_500, Duration::from_secs(3600), Outcome::Ignored);
        let mut buf = Vec::new();
        let (failures, judged) = ring.collect(2_000, 1_000, &mut buf);
        assert_eq!((failures, judged), (1, 1));
        buf.sort_unstable();
        assert_eq!(buf, vec![7_000, LAT_MAX as u32]);
        // Overwrites the oldest once full.
        for i in 0..8 {
            ring.push(2_000 + i, Duration::from_millis(1), Outcome::Success);
        }
        let (failures, judged) = ring.collect(2_010, 1_000, &mut buf);
        assert_eq!((failures, judged, buf.len()), (0, 8, 8));
        // A sample newer than the evaluation's instant is fresh, not ancient.
        ring.push(5_000, Duration::from_millis(1), Outcome::Success);
        assert_eq!(ring.collect(2_010, 1_000, &mut buf), (0, 8));
        assert_eq!(ring.collect(9_000, 1_000, &mut buf), (0, 0));
    }
}
