//! The gate's shared state: the level word read on the hot path, and everything behind the control
//! lock that changes it and tells the world (tracing, health, audit, load signal).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use http::{Method, Request};
use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::error::{BoxError, ReadOnly, Shed};
use palisade_core::health::{ComponentGuard, HealthState};
use palisade_core::signal::LoadSignal;
use tokio::time::Instant;

use crate::auto::{Auto, AutoState, Signals};
use crate::level::{Level, Priority};
use crate::priority::Rules;

/// Bit of the level word set when automatic mode is on (the request path then has work to do even at
/// `Normal`).
pub(crate) const AUTO_BIT: u8 = 0b1000;

/// Who changed the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Startup,
    Manual,
    Auto,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Startup => "startup",
            Source::Manual => "manual",
            Source::Auto => "auto",
        }
    }
}

/// An operator's level, winning over the automatic one until `until` (or until cleared).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Manual {
    pub(crate) level: Level,
    pub(crate) until: Option<Instant>,
}

/// Everything that changes only under the lock.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) level: Level,
    pub(crate) manual: Option<Manual>,
    pub(crate) auto: Option<AutoState>,
    pub(crate) last_signals: Signals,
}

/// How a level is reported to health, and what load it publishes.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) component: Option<ComponentGuard>,
    pub(crate) degraded_at: Level,
    pub(crate) unhealthy_at: Level,
    pub(crate) audit: Audit,
    pub(crate) load: LoadSignal,
    pub(crate) load_at: [f64; 5],
}

/// The state every service, future and handle of one gate shares.
pub(crate) struct Core {
    /// Level bits | [`AUTO_BIT`]. Zero means Normal without automatic mode: admit at once.
    pub(crate) word: AtomicU8,
    pub(crate) name: Cow<'static, str>,
    /// Per level, the lowest class admitted (`None`: none).
    pub(crate) floors: [Option<Priority>; 5],
    pub(crate) rules: Rules,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) manual_hold: Option<Duration>,
    pub(crate) auto: Option<Auto>,
    pub(crate) epoch: Instant,
    pub(crate) shed_total: AtomicU64,
    pub(crate) read_only_total: AtomicU64,
    pub(crate) control: Mutex<Control>,
    pub(crate) publish: Publish,
}

/// The core and the classifier (last, so that `Arc<Shared<C>>` coerces to `Arc<Shared<dyn ...>>`
/// for the type-erased handle).
pub(crate) struct Shared<C: ?Sized> {
    pub(crate) core: Core,
    pub(crate) classifier: C,
}

impl<C: ?Sized> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.core, f)
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.name)
            .field("level", &self.level())
            .field("auto", &self.auto.is_some())
            .field("floors", &self.floors)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// Safe methods (RFC 9110 §9.2.1) pass in read-only mode; every other method is a write.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl Core {
    pub(crate) fn level(&self) -> Level {
        Level::from_bits(self.word.load(Ordering::Relaxed))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admission at a level other than plain Normal: `Err` is the rejection to return.
    pub(crate) fn admit<B>(&self, level: Level, req: &Request<B>) -> Result<(), BoxError> {
        if level == Level::Normal {
            return Ok(());
        }
        let admitted = match self.floors[level.index()] {
            None => false,
            Some(Priority::Background) => true,
            Some(floor) => self.rules.classify(req) >= floor,
        };
        if !admitted {
            self.shed_total.fetch_add(1, Ordering::Relaxed);
            let shed = Shed::new(level.as_str());
            return Err(match self.retry_after {
                Some(d) => shed.with_retry_after(d),
                None => shed,
            }
            .into());
        }
        if level == Level::ReadOnly && !is_safe(req.method()) {
            self.read_only_total.fetch_add(1, Ordering::Relaxed);
            let ro = ReadOnly::new();
            return Err(match self.retry_after {
                Some(d) => ro.with_retry_after(d),
                None => ro,
            }
            .into());
        }
        Ok(())
    }

    /// On the request path in automatic mode: evaluates if the interval has passed and nobody else is
    /// evaluating right now.
    pub(crate) fn maybe_evaluate(&self, auto: &Auto, now: Instant) {
        let t = self.nanos_since_epoch(now);
        if t < auto.next_eval.load(Ordering::Relaxed) {
            return;
        }
        let mut ctl = match self.control.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if t < auto.next_eval.load(Ordering::Relaxed) {
            return;
        }
        self.evaluate_locked(&mut ctl, now, None);
    }

    /// Evaluates the signals now: moves the automatic level, expires a manual hold, and applies the
    /// resulting level. `note` is prefixed to the reason of a change (e.g. why a manual level was
    /// cleared).
    pub(crate) fn evaluate_locked(&self, ctl: &mut Control, now: Instant, note: Option<&str>) {
        let Some(auto) = &self.auto else { return };
        let t = self.nanos_since_epoch(now);
        auto.next_eval
            .store(t.saturating_add(auto.interval_ns), Ordering::Relaxed);
        let Some(state) = ctl.auto.as_mut() else {
            return;
        };
        let signals = auto.signals(t / 1_000_000, &mut state.scratch);
        ctl.last_signals = signals;
        let moved = auto.step(state, &signals, now);
        let auto_level = state.level;
        let mut note = note.map(str::to_owned);
        if let Some(m) = ctl.manual {
            if m.until.is_some_and(|until| now >= until) {
                ctl.manual = None;
                note = Some(format!("manual {} hold expired", m.level));
            }
        }
        if ctl.manual.is_some() {
            return;
        }
        if auto_level == ctl.level {
            return;
        }
        let reason = match (note, moved) {
            (Some(n), Some(m)) => format!("{n}; {m}"),
            (Some(n), None) => n,
            (None, Some(m)) => m,
            (None, None) => "automatic level".to_owned(),
        };
        self.apply(
            ctl,
            auto_level,
            Source::Auto,
            Cow::Owned(reason),
            Some(&signals),
        );
    }

    /// Sets the effective level and tells the world, if it changed. Returns the previous level.
    pub(crate) fn apply(
        &self,
        ctl: &mut Control,
        to: Level,
        source: Source,
        reason: Cow<'static, str>,
        signals: Option<&Signals>,
    ) -> Level {
        let from = ctl.level;
        if from == to {
            return from;
        }
        ctl.level = to;
        let auto_bit = if self.auto.is_some() { AUTO_BIT } else { 0 };
        self.word.store(to as u8 | auto_bit, Ordering::Relaxed);
        let p = &self.publish;
        p.load.set(p.load_at[to.index()]);
        if to > from {
            tracing::warn!(gate = %self.name, from = %from, to = %to, source = source.as_str(), reason = %reason, "degradation level raised");
        } else {
            tracing::info!(gate = %self.name, from = %from, to = %to, source = source.as_str(), reason = %reason, "degradation level lowered");
        }
        if let Some(component) = &p.component {
            match self.health_state(to) {
                HealthState::Healthy => component.healthy(),
                state => component.set(state, format!("level {to}: {reason}")),
            }
        }
        p.audit.record_with(|| {
            let mut ev = AuditEvent::new("gate.level_changed")
                .detail("gate", self.name.to_string())
                .detail("from", from.as_str())
                .detail("to", to.as_str())
                .detail("reason", reason.to_string())
                .detail("source", source.as_str());
            if let Some(s) = signals {
                ev = ev.detail("in_flight", s.in_flight);
                if let Some(p95) = s.p95_latency {
                    ev = ev.detail("p95_latency_ms", p95.as_secs_f64() * 1000.0);
                }
                if let Some(rate) = s.error_rate {
                    ev = ev.detail("error_rate", rate);
                }
                ev = ev.detail("samples", s.samples);
            }
            ev
        });
        from
    }

    pub(crate) fn health_state(&self, level: Level) -> HealthState {
        if level >= self.publish.unhealthy_at {
            HealthState::Unhealthy
        } else if level >= self.publish.degraded_at {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
    }

    /// An operator sets the level. With automatic mode on, it wins until `hold` passes (or until
    /// cleared when `hold` is `None`).
    pub(crate) fn set_manual(
        &self,
        level: Level,
        hold: Option<Duration>,
        source: Source,
        reason: Cow<'static, str>,
    ) -> Level {
        let mut ctl = self.lock();
        if self.auto.is_some() {
            let now = Instant::now();
            ctl.manual = Some(Manual {
                level,
                // A hold too long to represent holds until cleared.
                until: hold.and_then(|h| now.checked_add(h)),
            });
        }
        self.apply(&mut ctl, level, source, reason, None)
    }
}
