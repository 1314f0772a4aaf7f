//! The handle: read and steer a gate from admin code, tests and supervisors. Synchronous, cheap to
//! clone.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::signal::LoadSignal;
use tokio::time::Instant;

use crate::auto::Signals;
use crate::level::Level;
use crate::shared::{Shared, Source};

/// A handle to one gate. Made by [`GateLayer::handle`](crate::GateLayer::handle).
///
/// Every method is synchronous and safe to call from any thread; none waits on the request path.
#[derive(Clone)]
pub struct GateHandle {
    shared: Arc<Shared<dyn Send + Sync>>,
}

impl fmt::Debug for GateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateHandle")
            .field("name", &self.name())
            .field("level", &self.level())
            .finish()
    }
}

impl GateHandle {
    pub(crate) fn new(shared: Arc<Shared<dyn Send + Sync>>) -> Self {
        GateHandle { shared }
    }

    /// The gate's name.
    pub fn name(&self) -> &str {
        &self.shared.core.name
    }

    /// The level in force now.
    pub fn level(&self) -> Level {
        self.shared.core.level()
    }

    /// Sets the level, for `reason` (audited and shown in health). Returns the previous level.
    ///
    /// In automatic mode the operator's level wins over the automatic one until
    /// [`clear_manual`](Self::clear_manual), or for the [`manual_hold`](crate::Builder::manual_hold)
    /// if one is configured. Setting the level it already has changes nothing visible, but still
    /// takes manual control.
    pub fn set_level(&self, level: Level, reason: impl Into<Cow<'static, str>>) -> Level {
        let core = &self.shared.core;
        core.set_manual(level, core.manual_hold, Source::Manual, reason.into())
    }

    /// Like [`set_level`](Self::set_level), with a hold of its own: in automatic mode the automatic
    /// level takes over again after `hold` (a hold too long to represent, such as `Duration::MAX`,
    /// holds until [cleared](Self::clear_manual)). Without automatic mode the level simply stays.
    pub fn set_level_for(
        &self,
        level: Level,
        hold: Duration,
        reason: impl Into<Cow<'static, str>>,
    ) -> Level {
        self.shared
            .core
            .set_manual(level, Some(hold), Source::Manual, reason.into())
    }

    /// Hands control back to automatic mode: evaluates the signals now and applies the automatic
    /// level. Returns whether a manual level was in force. Without automatic mode this does nothing
    /// (use [`set_level`](Self::set_level)).
    pub fn clear_manual(&self, reason: impl Into<Cow<'static, str>>) -> bool {
        let core = &self.shared.core;
        let mut ctl = core.lock();
        let Some(manual) = ctl.manual.take() else {
            return false;
        };
        let note = format!("manual {} cleared: {}", manual.level, reason.into());
        core.evaluate_locked(&mut ctl, Instant::now(), Some(&note));
        true
    }

    /// The operator's level, while it wins over the automatic one (automatic mode only).
    pub fn manual_level(&self) -> Option<Level> {
        self.shared.core.lock().manual.map(|m| m.level)
    }

    /// The level the signals ask for, whether or not a manual level is in force; `None` without
    /// automatic mode.
    pub fn auto_level(&self) -> Option<Level> {
        self.shared.core.lock().auto.as_ref().map(|a| a.level)
    }

    /// Whether automatic mode is on.
    pub fn is_auto(&self) -> bool {
        self.shared.core.auto.is_some()
    }

    /// Evaluates the signals as of `now` and applies the result (automatic mode; otherwise returns the
    /// level unchanged). The request path does this on its own at most every
    /// [`auto_interval`](crate::Builder::auto_interval); call it from a timer or a supervisor when
    /// traffic may stop altogether, or in tests. Returns the level in force afterwards.
    pub fn evaluate(&self, now: Instant) -> Level {
        let core = &self.shared.core;
        let mut ctl = core.lock();
        core.evaluate_locked(&mut ctl, now, None);
        ctl.level
    }

    /// The signals as of the last evaluation (in-flight count as of now). All zero without automatic
    /// mode.
    pub fn signals(&self) -> Signals {
        let core = &self.shared.core;
        let mut signals = core.lock().last_signals;
        if let Some(auto) = &core.auto {
            signals.in_flight = auto.in_flight.load(Ordering::Relaxed);
        }
        signals
    }

    /// The load signal the gate publishes (a clone sharing the value): the load of the current level,
    /// see [`Builder::load_at`](crate::Builder::load_at).
    pub fn load_signal(&self) -> LoadSignal {
        self.shared.core.publish.load.clone()
    }

    /// Requests shed (refused with [`Shed`](crate::Shed)) since the gate was built.
    pub fn shed_total(&self) -> u64 {
        self.shared.core.shed_total.load(Ordering::Relaxed)
    }

    /// Writes refused in read-only mode (with [`ReadOnly`](crate::ReadOnly)) since the gate was built.
    pub fn read_only_total(&self) -> u64 {
        self.shared.core.read_only_total.load(Ordering::Relaxed)
    }
}
