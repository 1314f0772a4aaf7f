//! The breaker's state machine: one atomic word, lock-free windows, no clock of its own.
//!
//! Everything a call needs to be admitted lives in one `AtomicU64`:
//!
//! ```text
//! bits  0..2   circuit state   Closed = 0, Open = 1, HalfOpen = 2
//! bits  2..4   mode            Normal = 0, ForcedOpen = 1, Disabled = 2, MetricsOnly = 3
//! bits  4..32  generation      bumped by every transition (wraps; 2^28 transitions apart is no ABA risk)
//! bits 32..48  probes in flight (HalfOpen)
//! bits 48..64  probe successes (HalfOpen)
//! ```
//!
//! Admission in Closed is one load. Probe slots are taken and given back with compare-and-swap on the
//! same word, so a transition (which resets the probe fields and bumps the generation) and a probe
//! acquisition can never interleave: at most `probes` calls hold a slot in one HalfOpen generation.
//! Every admitted call remembers the generation it was admitted in; an outcome from an older generation
//! is ignored, so a slow call admitted while Closed cannot close a later HalfOpen.
//!
//! The machine takes the current time as an argument (nanoseconds since the breaker was built), which
//! keeps it free of clocks: the service reads `tokio::time::Instant` only where a state needs it, and
//! the loom tests drive it with plain numbers.

use std::fmt;
use std::time::Duration;

use crate::config::Thresholds;
use crate::sync::{fence, spin_loop, AtomicU32, AtomicU64, AtomicU8, Ordering};

pub(crate) const CLOSED: u64 = 0;
pub(crate) const OPEN: u64 = 1;
pub(crate) const HALF_OPEN: u64 = 2;

pub(crate) const NORMAL: u64 = 0;
pub(crate) const FORCED_OPEN: u64 = 1;
pub(crate) const DISABLED: u64 = 2;
pub(crate) const METRICS_ONLY: u64 = 3;

const STATE_MASK: u64 = 0b11;
const MODE_SHIFT: u32 = 2;
const MODE_MASK: u64 = 0b11 << MODE_SHIFT;
const GEN_SHIFT: u32 = 4;
const GEN_MASK: u64 = ((1 << 28) - 1) << GEN_SHIFT;
const INFLIGHT_SHIFT: u32 = 32;
const INFLIGHT_ONE: u64 = 1 << INFLIGHT_SHIFT;
const SUCC_SHIFT: u32 = 48;
const SUCC_ONE: u64 = 1 << SUCC_SHIFT;

pub(crate) fn state_of(w: u64) -> u64 {
    w & STATE_MASK
}
pub(crate) fn mode_of(w: u64) -> u64 {
    (w & MODE_MASK) >> MODE_SHIFT
}
pub(crate) fn gen_of(w: u64) -> u32 {
    ((w & GEN_MASK) >> GEN_SHIFT) as u32
}
pub(crate) fn inflight_of(w: u64) -> u32 {
    ((w >> INFLIGHT_SHIFT) & 0xFFFF) as u32
}
pub(crate) fn successes_of(w: u64) -> u32 {
    (w >> SUCC_SHIFT) as u32
}

/// A time stamped with the generation it belongs to: the top 20 bits hold the generation (mod 2^20),
/// the low 44 bits milliseconds since the epoch (557 years). Only the thread whose compare-and-swap made
/// the transition writes the stamp of the new generation; a reader that finds an older generation's stamp
/// knows the winner has not published yet, instead of trusting a value another thread raced in.
const STAMP_MS_BITS: u32 = 44;
const STAMP_MS_MASK: u64 = (1 << STAMP_MS_BITS) - 1;

fn stamp(gen: u32, ns: u64) -> u64 {
    let ms = ns.div_ceil(1_000_000).min(STAMP_MS_MASK);
    (u64::from(gen) & 0xF_FFFF) << STAMP_MS_BITS | ms
}

/// The nanoseconds of a stamp if it belongs to `gen`.
fn stamp_for(v: u64, gen: u32) -> Option<u64> {
    (v >> STAMP_MS_BITS == u64::from(gen) & 0xF_FFFF).then(|| (v & STAMP_MS_MASK) * 1_000_000)
}

/// A word in `state` and `mode`, one generation after `w`, with no probes.
fn next(w: u64, state: u64, mode: u64) -> u64 {
    let gen = (u64::from(gen_of(w)) + 1) << GEN_SHIFT & GEN_MASK;
    state | mode << MODE_SHIFT | gen
}

/// What a call is, once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A call in Closed (or any call while Disabled): its outcome feeds the windows.
    Normal,
    /// A HalfOpen probe holding a slot.
    Probe,
    /// MetricsOnly let it through although the circuit is open: counted, never a probe.
    Shadow,
}

/// The decision on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit {
        role: Role,
        gen: u32,
    },
    /// Refused; the time until the next probe when known (nanoseconds).
    Reject {
        retry_after: Option<u64>,
    },
}

/// A state change the caller must publish (tracing, health, audit).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) mode: u64,
    pub(crate) reason: Reason,
    /// For transitions to Open: how long until the next probe (nanoseconds).
    pub(crate) wait: Option<u64>,
}

/// Why a transition happened, with the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reason {
    ConsecutiveFailures {
        failures: u32,
    },
    FailureRate {
        window: WindowKind,
        rate: f64,
        /// The threshold it reached (the one in force when it was judged).
        threshold: f64,
        calls: u32,
        failures: u32,
    },
    SlowCallRate {
        window: WindowKind,
        rate: f64,
        threshold: f64,
        calls: u32,
        slow: u32,
    },
    WaitElapsed,
    ProbeFailed,
    ProbesSucceeded {
        successes: u32,
    },
    HalfOpenTimedOut,
    Manual(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Calls(u32),
    Seconds(u32),
}

/// An outcome as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
    pub(crate) ignored: bool,
}

impl Recorded {
    #[cfg(test)]
    pub(crate) const SUCCESS: Recorded = Recorded {
        failure: false,
        slow: false,
        ignored: false,
    };
    #[cfg(test)]
    pub(crate) const FAILURE: Recorded = Recorded {
        failure: true,
        slow: false,
        ignored: false,
    };
    pub(crate) const IGNORED: Recorded = Recorded {
        failure: false,
        slow: false,
        ignored: true,
    };

    fn bad(self) -> bool {
        self.failure || self.slow
    }
}

/// Everything the machine judges by: the trip thresholds (changeable at run time) and the rest of the
/// configuration, fixed at build time.
#[derive(Debug)]
pub(crate) struct Limits {
    /// When Closed trips to Open; read only when a failure or slow call is recorded.
    pub(crate) trip: TripCell,
    /// Probe slots in HalfOpen.
    pub(crate) probes: u32,
    /// Probe successes that close the circuit.
    pub(crate) successes_to_close: u32,
    /// Open wait: base and cap (nanoseconds); doubles with each consecutive trip.
    pub(crate) wait_base: u64,
    pub(crate) wait_max: u64,
    /// Leave HalfOpen (back to Open) when probes have not settled it after this long (nanoseconds).
    pub(crate) half_open_max_wait: u64,
}

impl Limits {
    /// The wait before the `trips`-th consecutive trip's first probe (1-based), before jitter.
    pub(crate) fn wait(&self, trips: u32) -> u64 {
        let doublings = trips.saturating_sub(1).min(63);
        self.wait_base
            .saturating_mul(1u64 << doublings)
            .min(self.wait_max)
    }
}

/// The trip thresholds, readable without a lock and replaceable while calls run: a sequence lock over
/// atomic fields.
///
/// A reader ([`load`](Self::load)) gets one consistent [`Thresholds`] value, never a mix of an old and a
/// new one: it reads the fields between two reads of `seq` and retries if a writer was active (odd
/// `seq`) or finished in between (`seq` moved). Writers are rare (a config reload) and must be
/// serialized by the caller. The data path reads only the slow-call threshold, on its own, with one
/// relaxed load ([`slow_threshold`](Self::slow_threshold)); the rest is read only when an outcome is a
/// failure or a slow call, never for a success.
pub(crate) struct TripCell {
    seq: AtomicU32,
    consecutive_failures: AtomicU32,
    minimum_calls: AtomicU32,
    /// `f64` bits; 0 (= 0.0, never a valid rate) is off.
    failure_rate: AtomicU64,
    /// `f64` bits; 0 is off.
    slow_call_rate: AtomicU64,
    /// Nanoseconds; 0 (never a valid threshold) is off. Zero whenever `slow_call_rate` is.
    slow_threshold: AtomicU64,
}

impl TripCell {
    pub(crate) fn new(t: Thresholds) -> Self {
        let cell = TripCell {
            seq: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            minimum_calls: AtomicU32::new(0),
            failure_rate: AtomicU64::new(0),
            slow_call_rate: AtomicU64::new(0),
            slow_threshold: AtomicU64::new(0),
        };
        cell.store(t);
        cell
    }

    /// The current thresholds, as one consistent value.
    pub(crate) fn load(&self) -> Thresholds {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let t = self.read_fields();
                // Orders the field reads before the second read of `seq`: if any of them saw a value
                // a writer stored after its release fence, this read sees that writer's odd `seq`.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return t;
                }
            }
            spin_loop();
        }
    }

    fn read_fields(&self) -> Thresholds {
        let rate = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        };
        let slow_ns = self.slow_threshold.load(Ordering::Relaxed);
        Thresholds {
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            failure_rate: rate(&self.failure_rate),
            slow_call_rate: rate(&self.slow_call_rate)
                .filter(|_| slow_ns != 0)
                .map(|r| (Duration::from_nanos(slow_ns), r)),
            minimum_calls: self.minimum_calls.load(Ordering::Relaxed),
        }
    }

    /// Replaces the thresholds. Callers serialize writers (two concurrent writers could interleave
    /// their fields).
    pub(crate) fn store(&self, t: Thresholds) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // The odd `seq` is ordered before every field store below (pairs with the reader's fence).
        fence(Ordering::Release);
        let (slow_ns, slow_rate) = match t.slow_call_rate {
            Some((threshold, rate)) => (nanos(threshold).max(1), rate.to_bits()),
            None => (0, 0),
        };
        self.consecutive_failures
            .store(t.consecutive_failures, Ordering::Relaxed);
        self.minimum_calls.store(t.minimum_calls, Ordering::Relaxed);
        self.failure_rate
            .store(t.failure_rate.map_or(0, f64::to_bits), Ordering::Relaxed);
        self.slow_call_rate.store(slow_rate, Ordering::Relaxed);
        self.slow_threshold.store(slow_ns, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The slow-call threshold in nanoseconds (0 = slow calls are not tracked): one relaxed load, for
    /// the data path. Around a change a call may be judged by the old or the new threshold.
    #[inline]
    pub(crate) fn slow_threshold(&self) -> u64 {
        self.slow_threshold.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for TripCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.load(), f)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One breaker's state.
#[derive(Debug)]
pub(crate) struct Machine {
    word: AtomicU64,
    /// When Open ends: a [`stamp`] written by the thread that made the transition to Open.
    open_until: AtomicU64,
    /// When HalfOpen began: a [`stamp`] written by the thread that made the transition to HalfOpen.
    half_open_since: AtomicU64,
    /// Consecutive trips without a successful close; drives the growing wait.
    trips: AtomicU32,
    consecutive: AtomicU32,
    pub(crate) calls_window: Option<CountWindow>,
    pub(crate) time_window: Option<TimeWindow>,
}

impl Machine {
    pub(crate) fn new(calls_window: Option<u32>, time_window_secs: Option<u32>) -> Self {
        Machine {
            word: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            calls_window: calls_window.map(CountWindow::new),
            time_window: time_window_secs.map(TimeWindow::new),
        }
    }

    pub(crate) fn word(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    pub(crate) fn trips(&self) -> u32 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Time until the next probe, if Open.
    pub(crate) fn open_remaining(&self, now: u64) -> Option<u64> {
        let w = self.word();
        if state_of(w) != OPEN || mode_of(w) == FORCED_OPEN {
            return None;
        }
        stamp_for(self.open_until.load(Ordering::Acquire), gen_of(w)).map(|u| u.saturating_sub(now))
    }

    /// The hot path: Closed in Normal mode is one load and no clock.
    #[inline]
    pub(crate) fn try_fast_admit(&self) -> Option<u32> {
        let w = self.word.load(Ordering::Acquire);
        (w & (STATE_MASK | MODE_MASK) == 0).then(|| gen_of(w))
    }

    /// Whether a call would be refused now, without changing anything (no transition, no probe slot):
    /// forced open; Open with its wait not over; HalfOpen with every probe slot taken. Never in
    /// Disabled or MetricsOnly mode. Closed in Normal mode is one load and no clock; `now` is read only
    /// for Open.
    #[inline]
    pub(crate) fn refuses(&self, t: &Limits, now: impl FnOnce() -> u64) -> bool {
        let w = self.word.load(Ordering::Acquire);
        if w & (STATE_MASK | MODE_MASK) == 0 {
            return false;
        }
        match (mode_of(w), state_of(w)) {
            (FORCED_OPEN, _) => true,
            (DISABLED | METRICS_ONLY, _) | (_, CLOSED) => false,
            (_, OPEN) => stamp_for(self.open_until.load(Ordering::Acquire), gen_of(w))
                .is_none_or(|until| now() < until),
            _ => inflight_of(w) >= t.probes,
        }
    }

    /// Decides on one call. `now` is read only if the state needs it; `jitter` is asked for extra wait
    /// only when this call re-opens the circuit. Returns the transitions this call caused.
    pub(crate) fn admit(
        &self,
        t: &Limits,
        now: &mut impl FnMut() -> u64,
        jitter: &mut impl FnMut(u64) -> u64,
        transitions: &mut Vec<Transition>,
    ) -> Admission {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let mode = mode_of(w);
            match (mode, state_of(w)) {
                (FORCED_OPEN, _) => return Admission::Reject { retry_after: None },
                (DISABLED, _) | (_, CLOSED) => {
                    return Admission::Admit {
                        role: Role::Normal,
                        gen: gen_of(w),
                    }
                }
                (_, OPEN) => {
                    let now = now();
                    // Not yet published by the thread that opened the circuit: still open.
                    let until = stamp_for(self.open_until.load(Ordering::Acquire), gen_of(w));
                    if until.is_none_or(|until| now < until) {
                        return if mode == METRICS_ONLY {
                            Admission::Admit {
                                role: Role::Shadow,
                                gen: gen_of(w),
                            }
                        } else {
                            Admission::Reject {
                                retry_after: until.map(|until| until - now),
                            }
                        };
                    }
                    // The wait is over: this call may open the half-open door.
                    let new = next(w, HALF_OPEN, mode);
                    match self
                        .word
                        .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.half_open_since
                                .store(stamp(gen_of(new), now), Ordering::Release);
                            transitions.push(Transition {
                                from: OPEN,
                                to: HALF_OPEN,
                                mode,
                                reason: Reason::WaitElapsed,
                                wait: None,
                            });
                            w = new;
                        }
                        Err(actual) => w = actual,
                    }
                }
                (_, _half_open) => {
                    if inflight_of(w) < t.probes {
                        match self.word.compare_exchange(
                            w,
                            w + INFLIGHT_ONE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => {
                                return Admission::Admit {
                                    role: Role::Probe,
                                    gen: gen_of(w),
                                }
                            }
                            Err(actual) => {
                                w = actual;
                                continue;
                            }
                        }
                    }
                    // Every slot is taken. Probes that never settle must not hold HalfOpen forever.
                    let now = now();
                    // Unpublished (the transition's winner is between its CAS and its store): just begun.
                    let since = stamp_for(self.half_open_since.load(Ordering::Acquire), gen_of(w))
                        .unwrap_or(now);
                    if now.saturating_sub(since) >= t.half_open_max_wait {
                        if let Some(tr) = self.reopen(w, t, now, jitter, Reason::HalfOpenTimedOut) {
                            transitions.push(tr);
                        }
                        w = self.word.load(Ordering::Acquire);
                        continue;
                    }
                    return if mode == METRICS_ONLY {
                        Admission::Admit {
                            role: Role::Shadow,
                            gen: gen_of(w),
                        }
                    } else {
                        Admission::Reject { retry_after: None }
                    };
                }
            }
        }
    }

    /// Open (again) from word `w`; `None` if another thread changed the word first.
    fn reopen(
        &self,
        w: u64,
        t: &Limits,
        now: u64,
        jitter: &mut impl FnMut(u64) -> u64,
        reason: Reason,
    ) -> Option<Transition> {
        let trips = self.trips.load(Ordering::Relaxed).saturating_add(1);
        let wait = t.wait(trips);
        let wait = wait.saturating_add(jitter(wait));
        let mode = mode_of(w);
        let new = next(w, OPEN, mode);
        self.word
            .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // Only the winner writes the new generation's stamp, so a racing loser cannot change the wait.
        self.open_until.store(
            stamp(gen_of(new), now.saturating_add(wait)),
            Ordering::Release,
        );
        self.trips.fetch_add(1, Ordering::Relaxed);
        Some(Transition {
            from: state_of(w),
            to: OPEN,
            mode,
            reason,
            wait: Some(wait),
        })
    }

    /// Records the outcome of a call admitted as `role` in generation `gen`. `now` is read only when a
    /// time window or a transition needs it.
    pub(crate) fn record(
        &self,
        t: &Limits,
        role: Role,
        gen: u32,
        outcome: Recorded,
        now: &mut impl FnMut() -> u64,
        jitter: &mut impl FnMut(u64) -> u64,
    ) -> Option<Transition> {
        match role {
            Role::Shadow => None,
            Role::Normal => self.record_normal(t, gen, outcome, now, jitter),
            Role::Probe => self.record_probe(t, gen, outcome, now, jitter),
        }
    }

    fn record_normal(
        &self,
        t: &Limits,
        gen: u32,
        outcome: Recorded,
        now: &mut impl FnMut() -> u64,
        jitter: &mut impl FnMut(u64) -> u64,
    ) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        if gen_of(w) != gen || outcome.ignored {
            return None;
        }
        if outcome.failure {
            self.consecutive.fetch_add(1, Ordering::Relaxed);
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if let Some(win) = &self.calls_window {
            win.record(outcome);
        }
        let mut now_cache = None;
        let mut now = || *now_cache.get_or_insert_with(&mut *now);
        if let Some(win) = &self.time_window {
            win.record(outcome, now() / 1_000_000_000);
        }
        if !outcome.bad() || state_of(w) != CLOSED || mode_of(w) == DISABLED {
            return None;
        }
        let reason = self.should_trip(t, &mut now)?;
        self.reopen(w, t, now(), jitter, reason)
    }

    /// Whether the windows say the circuit must open. Only after a failure or a slow call: kept out of
    /// line, so the success path stays small.
    #[cold]
    #[inline(never)]
    fn should_trip(&self, limits: &Limits, now: &mut impl FnMut() -> u64) -> Option<Reason> {
        let t = limits.trip.load();
        let consecutive = self.consecutive.load(Ordering::Relaxed);
        if t.consecutive_failures > 0 && consecutive >= t.consecutive_failures {
            return Some(Reason::ConsecutiveFailures {
                failures: consecutive,
            });
        }
        let judge = |window: WindowKind, s: WindowStats| -> Option<Reason> {
            if s.calls == 0 || s.calls < t.minimum_calls {
                return None;
            }
            let calls = f64::from(s.calls);
            if let Some(limit) = t.failure_rate {
                let rate = f64::from(s.failures) / calls;
                if rate >= limit {
                    return Some(Reason::FailureRate {
                        window,
                        rate,
                        threshold: limit,
                        calls: s.calls,
                        failures: s.failures,
                    });
                }
            }
            if let Some((_, limit)) = t.slow_call_rate {
                let rate = f64::from(s.slow) / calls;
                if rate >= limit {
                    return Some(Reason::SlowCallRate {
                        window,
                        rate,
                        threshold: limit,
                        calls: s.calls,
                        slow: s.slow,
                    });
                }
            }
            None
        };
        if let Some(win) = &self.calls_window {
            if let Some(r) = judge(WindowKind::Calls(win.size()), win.stats()) {
                return Some(r);
            }
        }
        if let Some(win) = &self.time_window {
            let stats = win.stats(now() / 1_000_000_000);
            if let Some(r) = judge(WindowKind::Seconds(win.size()), stats) {
                return Some(r);
            }
        }
        None
    }

    fn record_probe(
        &self,
        t: &Limits,
        gen: u32,
        outcome: Recorded,
        now: &mut impl FnMut() -> u64,
        jitter: &mut impl FnMut(u64) -> u64,
    ) -> Option<Transition> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if gen_of(w) != gen || state_of(w) != HALF_OPEN || inflight_of(w) == 0 {
                return None; // a stale probe: its generation has ended
            }
            if outcome.bad() {
                match self.reopen(w, t, now(), jitter, Reason::ProbeFailed) {
                    Some(tr) => return Some(tr),
                    None => {
                        w = self.word.load(Ordering::Acquire);
                        continue;
                    }
                }
            }
            let successes = successes_of(w) + u32::from(!outcome.ignored);
            let (new, closes) = if !outcome.ignored && successes >= t.successes_to_close {
                self.clear_windows();
                (next(w, CLOSED, mode_of(w)), true)
            } else if outcome.ignored {
                (w - INFLIGHT_ONE, false)
            } else {
                (w - INFLIGHT_ONE + SUCC_ONE, false)
            };
            match self
                .word
                .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if closes => {
                    self.trips.store(0, Ordering::Relaxed);
                    return Some(Transition {
                        from: HALF_OPEN,
                        to: CLOSED,
                        mode: mode_of(w),
                        reason: Reason::ProbesSucceeded { successes },
                        wait: None,
                    });
                }
                Ok(_) => return None,
                Err(actual) => w = actual,
            }
        }
    }

    /// A manual transition: to `state` in `mode`, from whatever the breaker was in.
    pub(crate) fn force(&self, state: u64, mode: u64, why: &'static str) -> Transition {
        if state == CLOSED {
            self.clear_windows();
            self.trips.store(0, Ordering::Relaxed);
        }
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let new = next(w, state, mode);
            match self
                .word
                .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if state == OPEN {
                        // Forced open waits for no timer; an Open set by hand in another mode may
                        // probe at once.
                        self.open_until
                            .store(stamp(gen_of(new), 0), Ordering::Release);
                    }
                    return Transition {
                        from: state_of(w),
                        to: state,
                        mode,
                        reason: Reason::Manual(why),
                        wait: None,
                    };
                }
                Err(actual) => w = actual,
            }
        }
    }

    fn clear_windows(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        if let Some(w) = &self.calls_window {
            w.clear();
        }
        if let Some(w) = &self.time_window {
            w.clear();
        }
    }
}

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WindowStats {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

const PRESENT: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

fn slot_of(o: Recorded) -> u8 {
    PRESENT | if o.failure { FAILED } else { 0 } | if o.slow { SLOW } else { 0 }
}

/// The last `n` outcomes: a ring of one byte per call, with running counts. O(1) per call.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    cursor: AtomicU32,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        CountWindow {
            slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU32::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Records one outcome. The steady state (a success over a success) writes no shared cache line
    /// except the cursor, and uses no read-modify-write: the cursor moves with a plain load and store,
    /// and a slot is swapped only when its value changes. Racing calls may land in the same slot (one of
    /// them is then not in the window), but the counts always match the slots, because every count
    /// change follows the value a swap returned.
    fn record(&self, o: Recorded) {
        let c = self.cursor.load(Ordering::Relaxed);
        self.cursor.store(c.wrapping_add(1), Ordering::Relaxed);
        let slot = &self.slots[c as usize % self.slots.len()];
        let new = slot_of(o);
        if slot.load(Ordering::Relaxed) == new {
            return;
        }
        let old = slot.swap(new, Ordering::Relaxed);
        if old & PRESENT == 0 {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        adjust(&self.failures, old & FAILED != 0, new & FAILED != 0);
        adjust(&self.slow, old & SLOW != 0, new & SLOW != 0);
    }

    pub(crate) fn stats(&self) -> WindowStats {
        WindowStats {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn clear(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Relaxed);
        }
        self.calls.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            // Saturating: a concurrent `clear` may have zeroed the count after this slot was swapped.
            let _ =
                counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
        }
        _ => {}
    }
}

/// The last `n` seconds: one bucket per second, each stamped with its second. O(1) per call; judging
/// the rate sums `n` buckets, and only happens after a failure or a slow call.
///
/// A bucket is reset by the first call of a new second (compare-and-swap on its stamp). Under
/// concurrency a count racing with that reset can land in the old or the new second: the window is
/// approximate at second boundaries, never by more than the calls of that instant.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
}

#[derive(Debug)]
struct Bucket {
    /// The second this bucket counts, plus one (0 = never used).
    second: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl TimeWindow {
    fn new(secs: u32) -> Self {
        TimeWindow {
            buckets: (0..secs.max(1))
                .map(|_| Bucket {
                    second: AtomicU64::new(0),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    fn size(&self) -> u32 {
        self.buckets.len() as u32
    }

    fn record(&self, o: Recorded, second: u64) {
        let b = &self.buckets[(second % self.buckets.len() as u64) as usize];
        let stamp = second + 1;
        let seen = b.second.load(Ordering::Acquire);
        if seen != stamp
            && b.second
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        if o.failure {
            b.failures.fetch_add(1, Ordering::Relaxed);
        }
        if o.slow {
            b.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self, second: u64) -> WindowStats {
        let n = self.buckets.len() as u64;
        // Stamps of the last n seconds; never 0, the stamp of a bucket unused since it was cleared
        // (during the first n seconds of the breaker's life, `second + 1 - (n - 1)` would reach it).
        let oldest = (second + 1).saturating_sub(n - 1).max(1);
        let mut s = WindowStats::default();
        for b in self.buckets.iter() {
            let stamp = b.second.load(Ordering::Acquire);
            if stamp >= oldest && stamp <= second + 1 {
                s.calls = s.calls.saturating_add(b.calls.load(Ordering::Relaxed));
                s.failures = s
                    .failures
                    .saturating_add(b.failures.load(Ordering::Relaxed));
                s.slow = s.slow.saturating_add(b.slow.load(Ordering::Relaxed));
            }
        }
        s
    }

    /// Empties the window: every bucket unused (stamp 0, which [`stats`](Self::stats) never counts) and
    /// zeroed, whatever the breaker's age.
    fn clear(&self) {
        for b in self.buckets.iter() {
            b.second.store(0, Ordering::Release);
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    const TRIP: Thresholds = Thresholds {
        consecutive_failures: 3,
        failure_rate: None,
        slow_call_rate: None,
        minimum_calls: 1,
    };

    fn limits(trip: Thresholds, probes: u32) -> Limits {
        Limits {
            trip: TripCell::new(trip),
            probes,
            successes_to_close: 2,
            wait_base: 2 * S,
            wait_max: 60 * S,
            half_open_max_wait: 30 * S,
        }
    }

    fn thresholds() -> Limits {
        limits(TRIP, 2)
    }

    fn admit(m: &Machine, t: &Limits, now: u64) -> (Admission, Vec<Transition>) {
        let mut tr = Vec::new();
        let a = m.admit(t, &mut || now, &mut |_| 0, &mut tr);
        (a, tr)
    }

    fn record(
        m: &Machine,
        t: &Limits,
        role: Role,
        gen: u32,
        o: Recorded,
        now: u64,
    ) -> Option<Transition> {
        m.record(t, role, gen, o, &mut || now, &mut |_| 0)
    }

    #[test]
    fn word_layout_round_trips() {
        let w = next(0, HALF_OPEN, METRICS_ONLY) + 3 * INFLIGHT_ONE + 2 * SUCC_ONE;
        assert_eq!(state_of(w), HALF_OPEN);
        assert_eq!(mode_of(w), METRICS_ONLY);
        assert_eq!(gen_of(w), 1);
        assert_eq!(inflight_of(w), 3);
        assert_eq!(successes_of(w), 2);
        // The generation wraps inside its bits without touching the others.
        let max_gen = (((1u64 << 28) - 1) << GEN_SHIFT) | OPEN;
        let wrapped = next(max_gen, CLOSED, NORMAL);
        assert_eq!(gen_of(wrapped), 0);
        assert_eq!(state_of(wrapped), CLOSED);
    }

    #[test]
    fn wait_doubles_to_the_cap() {
        let t = thresholds();
        assert_eq!(t.wait(1), 2 * S);
        assert_eq!(t.wait(2), 4 * S);
        assert_eq!(t.wait(5), 32 * S);
        assert_eq!(t.wait(6), 60 * S);
        assert_eq!(t.wait(1000), 60 * S);
    }

    #[test]
    fn full_cycle() {
        let t = thresholds();
        let m = Machine::new(None, None);
        let gen = m.try_fast_admit().unwrap();
        for _ in 0..2 {
            assert_eq!(
                record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 0),
                None
            );
        }
        let tr = record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 0).unwrap();
        assert_eq!((tr.from, tr.to, tr.wait), (CLOSED, OPEN, Some(2 * S)));
        assert_eq!(tr.reason, Reason::ConsecutiveFailures { failures: 3 });
        assert_eq!(m.try_fast_admit(), None);
        assert_eq!(
            admit(&m, &t, S).0,
            Admission::Reject {
                retry_after: Some(S)
            }
        );
        // The wait ends: the first call moves to HalfOpen and takes a probe slot.
        let (a, tr) = admit(&m, &t, 2 * S);
        assert_eq!(tr.len(), 1);
        let Admission::Admit {
            role: Role::Probe,
            gen: g1,
        } = a
        else {
            panic!("{a:?}")
        };
        let (a2, _) = admit(&m, &t, 2 * S);
        assert!(matches!(
            a2,
            Admission::Admit {
                role: Role::Probe,
                ..
            }
        ));
        assert_eq!(
            admit(&m, &t, 2 * S).0,
            Admission::Reject { retry_after: None }
        );
        // A stale outcome from the Closed generation changes nothing.
        assert_eq!(
            record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 2 * S),
            None
        );
        assert_eq!(
            record(&m, &t, Role::Probe, g1, Recorded::SUCCESS, 2 * S),
            None
        );
        let tr = record(&m, &t, Role::Probe, g1, Recorded::SUCCESS, 2 * S).unwrap();
        assert_eq!((tr.from, tr.to), (HALF_OPEN, CLOSED));
        assert!(m.try_fast_admit().is_some());
        assert_eq!(m.trips(), 0);
    }

    #[test]
    fn failed_probe_reopens_with_a_longer_wait() {
        let t = thresholds();
        let m = Machine::new(None, None);
        m.force(OPEN, NORMAL, "test");
        m.trips.store(1, Ordering::Relaxed);
        let (a, _) = admit(&m, &t, 10 * S);
        let Admission::Admit { gen, .. } = a else {
            panic!()
        };
        let tr = record(&m, &t, Role::Probe, gen, Recorded::FAILURE, 10 * S).unwrap();
        assert_eq!((tr.from, tr.to, tr.wait), (HALF_OPEN, OPEN, Some(4 * S)));
        assert_eq!(tr.reason, Reason::ProbeFailed);
    }

    #[test]
    fn a_losing_reopen_cannot_change_the_wait() {
        let t = thresholds();
        let m = Machine::new(None, None);
        let w0 = m.word();
        // Two threads saw the same Closed word; the first wins and opens for 2 s from t = 0.
        assert!(m
            .reopen(w0, &t, 0, &mut |_| 0, Reason::ProbeFailed)
            .is_some());
        // The second, late (t = 100 s) and stale, loses the CAS and must not move the end of the wait.
        assert!(m
            .reopen(w0, &t, 100 * S, &mut |_| 0, Reason::ProbeFailed)
            .is_none());
        assert_eq!(m.open_remaining(0), Some(2 * S));
        assert_eq!(m.trips(), 1);
    }

    #[test]
    fn an_unpublished_open_stamp_means_still_open() {
        let t = thresholds();
        let m = Machine::new(None, None);
        let w0 = m.word();
        // The gap between the winner's CAS and its stamp: the word says Open, the stamp is older.
        m.word.store(next(w0, OPEN, NORMAL), Ordering::Release);
        assert_eq!(
            admit(&m, &t, 1_000 * S).0,
            Admission::Reject { retry_after: None }
        );
    }

    #[test]
    fn ignored_probe_gives_its_slot_back() {
        let t = limits(TRIP, 1);
        let m = Machine::new(None, None);
        m.force(OPEN, NORMAL, "test");
        let Admission::Admit {
            gen,
            role: Role::Probe,
        } = admit(&m, &t, 0).0
        else {
            panic!()
        };
        assert_eq!(admit(&m, &t, 0).0, Admission::Reject { retry_after: None });
        assert_eq!(record(&m, &t, Role::Probe, gen, Recorded::IGNORED, 0), None);
        assert!(matches!(
            admit(&m, &t, 0).0,
            Admission::Admit {
                role: Role::Probe,
                ..
            }
        ));
    }

    #[test]
    fn count_window_rates() {
        let t = limits(
            Thresholds {
                consecutive_failures: 0,
                failure_rate: Some(0.5),
                minimum_calls: 4,
                ..TRIP
            },
            2,
        );
        let m = Machine::new(Some(4), None);
        let gen = m.try_fast_admit().unwrap();
        // F S F: 3 calls, under minimum.
        assert!(record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 0).is_none());
        assert!(record(&m, &t, Role::Normal, gen, Recorded::SUCCESS, 0).is_none());
        assert!(record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 0).is_none());
        assert_eq!(
            m.calls_window.as_ref().unwrap().stats(),
            WindowStats {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // S: 4 calls, 50 %, but a success never trips.
        assert!(record(&m, &t, Role::Normal, gen, Recorded::SUCCESS, 0).is_none());
        // F replaces the oldest F: still 2 of 4 = 50 %: trips.
        let tr = record(&m, &t, Role::Normal, gen, Recorded::FAILURE, 0).unwrap();
        assert!(
            matches!(
                tr.reason,
                Reason::FailureRate {
                    calls: 4,
                    failures: 2,
                    ..
                }
            ),
            "{tr:?}"
        );
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(3);
        w.record(Recorded::FAILURE, 10);
        w.record(Recorded::SUCCESS, 11);
        w.record(Recorded::FAILURE, 12);
        assert_eq!(
            w.stats(12),
            WindowStats {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        assert_eq!(
            w.stats(13),
            WindowStats {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        w.record(Recorded::SUCCESS, 13); // reuses second 10's bucket
        assert_eq!(
            w.stats(13),
            WindowStats {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(w.stats(100), WindowStats::default());
    }

    #[test]
    fn a_cleared_time_window_is_empty_at_any_age() {
        let w = TimeWindow::new(3600);
        for second in [0, 5, 9] {
            w.record(Recorded::FAILURE, second);
        }
        w.clear();
        // Within the first window-length of the breaker's life.
        assert_eq!(w.stats(10), WindowStats::default());
        w.record(Recorded::FAILURE, 10);
        assert_eq!(
            w.stats(10),
            WindowStats {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn thresholds(probes: u32, successes: u32) -> Limits {
        Limits {
            trip: TripCell::new(Thresholds {
                consecutive_failures: 1,
                failure_rate: None,
                slow_call_rate: None,
                minimum_calls: 1,
            }),
            probes,
            successes_to_close: successes,
            wait_base: 10,
            wait_max: 10,
            half_open_max_wait: u64::MAX,
        }
    }

    fn admit(m: &Machine, t: &Limits) -> Admission {
        m.admit(t, &mut || 100, &mut |_| 0, &mut Vec::new())
    }

    /// Two callers race at the moment the wait ends (each may perform the Open → HalfOpen transition):
    /// exactly one probe slot is handed out.
    #[test]
    fn half_open_admits_at_most_the_configured_probes() {
        loom::model(|| {
            let t = Arc::new(thresholds(1, 1));
            let m = Arc::new(Machine::new(None, None));
            m.force(OPEN, NORMAL, "test");
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (m, t) = (m.clone(), t.clone());
                    thread::spawn(move || {
                        matches!(
                            admit(&m, &t),
                            Admission::Admit {
                                role: Role::Probe,
                                ..
                            }
                        )
                    })
                })
                .collect();
            let probes = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|p| *p)
                .count();
            assert_eq!(probes, 1);
            assert_eq!(inflight_of(m.word()), 1);
        });
    }

    /// A probe finishing while another is admitted: slots and successes stay consistent and the circuit
    /// closes exactly once.
    #[test]
    fn probe_release_and_acquire_race() {
        loom::model(|| {
            let t = Arc::new(thresholds(1, 2));
            let m = Arc::new(Machine::new(None, None));
            m.force(OPEN, NORMAL, "test");
            let Admission::Admit {
                gen,
                role: Role::Probe,
            } = admit(&m, &t)
            else {
                panic!()
            };
            let (m2, t2) = (m.clone(), t.clone());
            let finisher = thread::spawn(move || {
                m2.record(
                    &t2,
                    Role::Probe,
                    gen,
                    Recorded::SUCCESS,
                    &mut || 100,
                    &mut |_| 0,
                )
            });
            let (m3, t3) = (m.clone(), t.clone());
            let second = thread::spawn(move || admit(&m3, &t3));
            assert!(
                finisher.join().unwrap().is_none(),
                "one success of two does not close"
            );
            let a = second.join().unwrap();
            let w = m.word();
            assert_eq!(state_of(w), HALF_OPEN);
            assert_eq!(successes_of(w), 1);
            match a {
                Admission::Admit {
                    role: Role::Probe, ..
                } => assert_eq!(inflight_of(w), 1),
                Admission::Reject { .. } => assert_eq!(inflight_of(w), 0),
                other => panic!("{other:?}"),
            }
        });
    }

    /// A failing probe and a succeeding probe race: whichever wins, the other is stale and the state
    /// ends in exactly one transition.
    #[test]
    fn probe_failure_and_success_race() {
        loom::model(|| {
            let t = Arc::new(thresholds(2, 1));
            let m = Arc::new(Machine::new(None, None));
            m.force(OPEN, NORMAL, "test");
            let Admission::Admit { gen, .. } = admit(&m, &t) else {
                panic!()
            };
            let Admission::Admit { .. } = admit(&m, &t) else {
                panic!()
            };
            let spawn = |o: Recorded| {
                let (m, t) = (m.clone(), t.clone());
                thread::spawn(move || m.record(&t, Role::Probe, gen, o, &mut || 100, &mut |_| 0))
            };
            let a = spawn(Recorded::FAILURE);
            let b = spawn(Recorded::SUCCESS);
            let transitions = [a.join().unwrap(), b.join().unwrap()];
            let n = transitions.iter().flatten().count();
            assert_eq!(n, 1, "{transitions:?}");
            let to = transitions.iter().flatten().next().unwrap().to;
            assert_eq!(state_of(m.word()), to);
        });
    }

    /// A reader racing a change of the thresholds sees the old value or the new one, never a mix.
    #[test]
    fn thresholds_are_read_whole() {
        use std::time::Duration;
        let a = Thresholds {
            consecutive_failures: 1,
            failure_rate: None,
            slow_call_rate: None,
            minimum_calls: 1,
        };
        let b = Thresholds {
            consecutive_failures: 0,
            failure_rate: Some(0.5),
            slow_call_rate: Some((Duration::from_nanos(7), 0.25)),
            minimum_calls: 9,
        };
        loom::model(move || {
            let cell = Arc::new(TripCell::new(a));
            let writer = {
                let cell = cell.clone();
                thread::spawn(move || cell.store(b))
            };
            let seen = cell.load();
            assert!(seen == a || seen == b, "{seen:?}");
            writer.join().unwrap();
            assert_eq!(cell.load(), b);
        });
    }

    /// Concurrent failures in Closed trip the circuit exactly once.
    #[test]
    fn closed_trips_once() {
        loom::model(|| {
            let t = Arc::new(thresholds(1, 1));
            let m = Arc::new(Machine::new(None, None));
            let gen = m.try_fast_admit().unwrap();
            // The two threads see different clocks; whichever wins, the wait it computed is the one
            // published (a loser must not overwrite it).
            let handles: Vec<_> = [0u64, 5_000_000]
                .into_iter()
                .map(|now| {
                    let (m, t) = (m.clone(), t.clone());
                    thread::spawn(move || {
                        let tr = m.record(
                            &t,
                            Role::Normal,
                            gen,
                            Recorded::FAILURE,
                            &mut || now,
                            &mut |_| 0,
                        );
                        tr.map(|tr| (tr, now))
                    })
                })
                .collect();
            let wins: Vec<_> = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect();
            assert_eq!(wins.len(), 1);
            let (tr, now) = &wins[0];
            let w = m.word();
            assert_eq!(state_of(w), OPEN);
            let until = stamp_for(m.open_until.load(Ordering::Acquire), gen_of(w));
            let expected = (now + tr.wait.unwrap()).div_ceil(1_000_000) * 1_000_000;
            assert_eq!(until, Some(expected));
        });
    }
}
