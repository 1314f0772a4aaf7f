//! State shared by every clone of a breaker layer: configuration, circuits, and how transitions are
//! published (tracing, health, audit).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::health::Component;
use palisade_core::key::KeyExtractor;
use palisade_core::keymap::KeyMap;
use palisade_core::rng::SharedRng;
use tokio::time::Instant;

use crate::config::{nanos, BuildError, Thresholds, Windows};
use crate::machine::{
    self, Admission, Limits, Machine, Reason, Recorded, Role, Transition, WindowKind,
};

/// Configuration and publishing, shared by every circuit of one layer.
pub(crate) struct Common<C> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) classifier: C,
    pub(crate) limits: Limits,
    windows: Windows,
    /// Serializes [`set_thresholds`](Self::set_thresholds) (the thresholds' writers).
    reconfigure: Mutex<()>,
    jitter: f64,
    component: Option<Component>,
    audit: Audit,
    rng: SharedRng,
    epoch: Instant,
    /// Circuits not Closed (Open or HalfOpen, forced or not).
    open_circuits: AtomicUsize,
    pub(crate) max_keys: usize,
    pub(crate) idle_timeout: Duration,
}

impl<C> Common<C> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Cow<'static, str>,
        classifier: C,
        limits: Limits,
        windows: Windows,
        jitter: f64,
        component: Option<Component>,
        audit: Audit,
        rng: SharedRng,
        max_keys: usize,
        idle_timeout: Duration,
    ) -> Self {
        Common {
            name,
            classifier,
            limits,
            windows,
            reconfigure: Mutex::new(()),
            jitter,
            component,
            audit,
            rng,
            epoch: Instant::now(),
            open_circuits: AtomicUsize::new(0),
            max_keys,
            idle_timeout,
        }
    }

    /// Nanoseconds since the layer was built.
    pub(crate) fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.epoch))
    }

    fn jitter(&self, wait: u64) -> u64 {
        if self.jitter == 0.0 {
            return 0;
        }
        (wait as f64 * self.jitter * self.rng.next_f64()) as u64
    }

    pub(crate) fn open_circuits(&self) -> usize {
        self.open_circuits.load(Ordering::Relaxed)
    }

    /// Whether calls are timed for the slow-call rate: one relaxed load, on the data path.
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.limits.trip.slow_threshold() != 0
    }

    /// The slow-call threshold, if slow calls are tracked now.
    #[inline]
    pub(crate) fn slow_threshold(&self) -> Option<Duration> {
        match self.limits.trip.slow_threshold() {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn thresholds(&self) -> Thresholds {
        self.limits.trip.load()
    }

    /// Replaces the trip thresholds of every circuit of this layer, present and future. The windows, the
    /// counts and the state are kept; the next failure or slow call is judged by the new values.
    pub(crate) fn set_thresholds(&self, new: Thresholds) -> Result<(), BuildError> {
        new.validate(self.windows)?;
        let guard = self.reconfigure.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.limits.trip.load();
        if old == new {
            return Ok(()); // a reload that changes nothing is not an event
        }
        self.limits.trip.store(new);
        // Published under the lock, so that the audit log has concurrent changes in the order they
        // were applied (recording never blocks: the audit queue is bounded and drops when full).
        tracing::info!(
            breaker = %self.name,
            old = ?old,
            new = ?new,
            "circuit breaker thresholds changed"
        );
        self.audit.record_with(|| {
            let mut ev =
                AuditEvent::new("breaker.reconfigured").detail("breaker", self.name.to_string());
            for (prefix, t) in [("old", &old), ("new", &new)] {
                let (slow_ms, slow_rate) = match t.slow_call_rate {
                    Some((d, r)) => (Some(d.as_secs_f64() * 1e3), Some(r)),
                    None => (None, None),
                };
                ev = ev
                    .detail(
                        format!("{prefix}_consecutive_failures"),
                        t.consecutive_failures,
                    )
                    .detail(format!("{prefix}_failure_rate"), t.failure_rate)
                    .detail(format!("{prefix}_slow_call_threshold_ms"), slow_ms)
                    .detail(format!("{prefix}_slow_call_rate"), slow_rate)
                    .detail(format!("{prefix}_minimum_calls"), t.minimum_calls);
            }
            ev
        });
        drop(guard);
        Ok(())
    }
}

impl<C> fmt::Debug for Common<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One circuit: the state machine plus what it needs to publish its transitions.
pub(crate) struct Circuit<C> {
    pub(crate) common: Arc<Common<C>>,
    pub(crate) machine: Machine,
    /// The key this circuit belongs to, for logs and audit (`None` for an unkeyed breaker).
    label: Option<String>,
    rejected: AtomicU64,
}

impl<C> Circuit<C> {
    pub(crate) fn new(common: Arc<Common<C>>, label: Option<String>) -> Self {
        let (calls, secs) = common.windows;
        Circuit {
            machine: Machine::new(calls, secs),
            common,
            label,
            rejected: AtomicU64::new(0),
        }
    }

    /// Decides on one call: a single atomic load when Closed.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        if let Some(gen) = self.machine.try_fast_admit() {
            return Admission::Admit {
                role: Role::Normal,
                gen,
            };
        }
        self.admit_slow()
    }

    /// Whether a call would be refused now (see [`Machine::refuses`]): one atomic load when Closed.
    #[inline]
    pub(crate) fn refuses(&self) -> bool {
        let c = &*self.common;
        self.machine.refuses(&c.limits, || c.now())
    }

    /// Refuses one call without calling the inner service, which was not made ready: the decision
    /// `poll_ready` vouched for. If the circuit has started admitting meanwhile (the wait ended, an
    /// operator closed it), the admission is given back at once (a probe slot returns) and the call is
    /// still refused, with no `retry_after`: calling a service that was never made ready would break
    /// its contract.
    #[cold]
    pub(crate) fn refuse(&self) -> Option<u64> {
        match self.admit() {
            Admission::Reject { retry_after } => retry_after,
            Admission::Admit { role, gen } => {
                self.record(role, gen, Recorded::IGNORED);
                self.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    #[cold]
    fn admit_slow(&self) -> Admission {
        let c = &*self.common;
        let mut transitions = Vec::new();
        let a = self.machine.admit(
            &c.limits,
            &mut || c.now(),
            &mut |w| c.jitter(w),
            &mut transitions,
        );
        for tr in transitions {
            self.publish(tr);
        }
        if let Admission::Reject { .. } = a {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        a
    }

    pub(crate) fn record(&self, role: Role, gen: u32, outcome: Recorded) {
        let c = &*self.common;
        if let Some(tr) =
            self.machine
                .record(&c.limits, role, gen, outcome, &mut || c.now(), &mut |w| {
                    c.jitter(w)
                })
        {
            self.publish(tr);
        }
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn clear_rejected(&self) {
        self.rejected.store(0, Ordering::Relaxed);
    }

    /// Tells the world about a transition: tracing, the health component, the audit log.
    pub(crate) fn publish(&self, tr: Transition) {
        let c = &*self.common;
        let was_open = tr.from != machine::CLOSED;
        let is_open = tr.to != machine::CLOSED;
        // Transitions of one circuit can be published out of order (the thread that won a CAS may
        // publish after later transitions did): keep the count saturating rather than wrapping.
        let delta = |c: usize| match (was_open, is_open) {
            (false, true) => Some(c.saturating_add(1)),
            (true, false) => Some(c.saturating_sub(1)),
            _ => None,
        };
        let open = match c
            .open_circuits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, delta)
        {
            Ok(prev) => delta(prev).unwrap_or(prev),
            Err(current) => current,
        };
        let kind = event_kind(&tr);
        let reason = ReasonText(&tr.reason, &c.limits).to_string();
        let key = self.label.as_deref();
        if tr.to == machine::OPEN {
            tracing::warn!(breaker = %c.name, key, reason = %reason, wait_ms = tr.wait.map(|w| w / 1_000_000), "circuit opened");
        } else {
            tracing::info!(breaker = %c.name, key, reason = %reason, event = kind, "circuit {}", state_name(tr.to));
        }
        if let Some(component) = &c.component {
            if open == 0 {
                component.healthy();
            } else if is_open {
                let text = match key {
                    Some(k) => format!("{open} circuit(s) open; latest: {k}: {reason}"),
                    None => format!("circuit {}: {reason}", state_name(tr.to)),
                };
                component.degraded(text);
            }
        }
        c.audit.record_with(|| {
            let mut ev = AuditEvent::new(kind)
                .detail("breaker", c.name.to_string())
                .detail("from", state_name(tr.from))
                .detail("to", state_name(tr.to))
                .detail("mode", mode_name(tr.mode))
                .detail("reason", reason.clone());
            if let Some(k) = key {
                ev = ev.tenant(k.to_owned());
            }
            if let Some(w) = tr.wait {
                ev = ev.detail("wait_ms", w / 1_000_000);
            }
            match tr.reason {
                Reason::ConsecutiveFailures { failures } => {
                    ev.detail("consecutive_failures", failures)
                }
                Reason::FailureRate {
                    rate,
                    threshold,
                    calls,
                    failures,
                    ..
                } => ev
                    .detail("failure_rate", rate)
                    .detail("failure_rate_threshold", threshold)
                    .detail("calls", calls)
                    .detail("failures", failures),
                Reason::SlowCallRate {
                    rate,
                    threshold,
                    calls,
                    slow,
                    ..
                } => ev
                    .detail("slow_call_rate", rate)
                    .detail("slow_call_rate_threshold", threshold)
                    .detail("calls", calls)
                    .detail("slow_calls", slow),
                Reason::ProbesSucceeded { successes } => ev.detail("probe_successes", successes),
                _ => ev,
            }
        });
    }
}

impl<C> fmt::Debug for Circuit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Circuit")
            .field("name", &self.common.name)
            .field("key", &self.label)
            .field("state", &state_name(machine::state_of(self.machine.word())))
            .finish_non_exhaustive()
    }
}

fn event_kind(tr: &Transition) -> &'static str {
    match (tr.to, tr.mode, &tr.reason) {
        (_, _, Reason::Manual("reset")) => "breaker.reset",
        (machine::OPEN, machine::FORCED_OPEN, _) => "breaker.forced_open",
        (machine::OPEN, _, _) => "breaker.opened",
        (machine::HALF_OPEN, _, _) => "breaker.half_open",
        (_, machine::DISABLED, _) => "breaker.disabled",
        (_, machine::METRICS_ONLY, Reason::Manual(_)) => "breaker.metrics_only",
        _ => "breaker.closed",
    }
}

pub(crate) fn state_name(s: u64) -> &'static str {
    match s {
        machine::CLOSED => "closed",
        machine::OPEN => "open",
        _ => "half_open",
    }
}

pub(crate) fn mode_name(m: u64) -> &'static str {
    match m {
        machine::NORMAL => "normal",
        machine::FORCED_OPEN => "forced_open",
        machine::DISABLED => "disabled",
        _ => "metrics_only",
    }
}

struct ReasonText<'a>(&'a Reason, &'a Limits);

impl fmt::Display for ReasonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = |f: &mut fmt::Formatter<'_>, w: &WindowKind| match w {
            WindowKind::Calls(n) => write!(f, "the last {n} calls"),
            WindowKind::Seconds(n) => write!(f, "the last {n} s"),
        };
        match self.0 {
            Reason::ConsecutiveFailures { failures: 1 } => f.write_str("1 failure"),
            Reason::ConsecutiveFailures { failures } => {
                write!(f, "{failures} consecutive failures")
            }
            Reason::FailureRate {
                window: w,
                rate,
                threshold,
                calls,
                failures,
            } => {
                write!(
                    f,
                    "failure rate {:.1}% ({failures} of {calls}) over ",
                    rate * 100.0
                )?;
                window(f, w)?;
                write!(f, ", threshold {:.1}%", threshold * 100.0)
            }
            Reason::SlowCallRate {
                window: w,
                rate,
                threshold,
                calls,
                slow,
            } => {
                write!(
                    f,
                    "slow-call rate {:.1}% ({slow} of {calls}) over ",
                    rate * 100.0
                )?;
                window(f, w)?;
                write!(f, ", threshold {:.1}%", threshold * 100.0)
            }
            Reason::WaitElapsed => f.write_str("open wait elapsed; probing"),
            Reason::ProbeFailed => f.write_str("a half-open probe failed"),
            Reason::ProbesSucceeded { successes } => write!(f, "{successes} probe(s) succeeded"),
            Reason::HalfOpenTimedOut => write!(
                f,
                "half-open probes did not finish within {:?}",
                Duration::from_nanos(self.1.half_open_max_wait)
            ),
            Reason::Manual(what) => write!(f, "set by an operator ({what})"),
        }
    }
}

/// The circuits of a keyed breaker, in a bounded [`KeyMap`]: closed circuits unused for the idle timeout
/// are evicted when room is needed; open ones and ones in use never are.
pub(crate) struct Keyed<C, K> {
    pub(crate) common: Arc<Common<C>>,
    pub(crate) extractor: K,
    pub(crate) map: KeyMap<Circuit<C>>,
    /// Requests whose key could not be extracted.
    pub(crate) default: Arc<Circuit<C>>,
    /// New keys when the map is full of busy or open circuits.
    pub(crate) overflow: Arc<Circuit<C>>,
}

const LABEL_MAX: usize = 64;

impl<C, K> Keyed<C, K> {
    pub(crate) fn new(common: Arc<Common<C>>, extractor: K) -> Self {
        let map = KeyMap::new(common.max_keys, common.idle_timeout).evict_if(|c: &Circuit<C>| {
            let w = c.machine.word();
            machine::state_of(w) == machine::CLOSED && machine::mode_of(w) == machine::NORMAL
        });
        Keyed {
            default: Arc::new(Circuit::new(common.clone(), Some("(no key)".into()))),
            overflow: Arc::new(Circuit::new(common.clone(), Some("(overflow)".into()))),
            common,
            extractor,
            map,
        }
    }

    /// The circuit for a request.
    pub(crate) fn circuit<Req>(&self, req: &Req) -> Arc<Circuit<C>>
    where
        K: KeyExtractor<Req>,
    {
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(_) => return self.default.clone(),
        };
        // The canonical hash, by which the handle finds keys (`KeyedBreakerHandle::get`).
        let hash = self.map.hash(&crate::handle::Canonical(&key));
        self.map
            .get_or_insert_with(hash, Instant::now(), || {
                let mut label = format!("{key:?}");
                truncate(&mut label, LABEL_MAX);
                Circuit::new(self.common.clone(), Some(label))
            })
            .unwrap_or_else(|| self.overflow.clone())
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Circuit<C>>)) {
        self.map.for_each(|_, c| f(c));
        f(&self.default);
        f(&self.overflow);
    }
}

impl<C, K> fmt::Debug for Keyed<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("name", &self.common.name)
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}
