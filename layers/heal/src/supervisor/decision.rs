//! [`Decision`]s: what the supervisor decided, one audit record each.

use std::fmt;
use std::sync::Arc;

use palisade_core::audit::AuditEvent;
use tokio::time::Instant;

use super::mode::Mode;
use crate::detect::{Verdict, Window};

/// The `kind` of the audit record of every decision.
pub const DECISION_KIND: &str = "heal.decision";
/// The `kind` of the audit record of a mode switch: `{from, to}`.
pub const MODE_CHANGED_KIND: &str = "heal.mode_changed";
/// The `kind` of the audit record of an escalation: `{rule, reason, message}`.
pub const ESCALATED_KIND: &str = "heal.escalated";
/// The `kind` of the audit record of an operator's reset of a rule (`{rule, from}`) or of the
/// containment (`{rule: null, from: "contained"}`).
pub const RESET_KIND: &str = "heal.reset";

/// What came of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `apply` succeeded.
    Success,
    /// `apply` (or `undo`) returned an error.
    Failed,
    /// DRY-RUN: this is what ACTIVE would have done; nothing was called.
    DryRun,
    /// `undo` succeeded (on restore, or rolling back an attempt that failed further on).
    RolledBack,
    /// Not applied: the action's budget for the sliding hour was used up.
    RefusedByBudget,
    /// Not applied: the action's scope is wider than the rule allows.
    RefusedByScope,
    /// Not applied: auto-remediation is paused by containment.
    Contained,
}

impl Outcome {
    /// `"success"`, `"failed"`, `"dry_run"`, `"rolled_back"`, `"refused_by_budget"`,
    /// `"refused_by_scope"` or `"contained"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::DryRun => "dry_run",
            Outcome::RolledBack => "rolled_back",
            Outcome::RefusedByBudget => "refused_by_budget",
            Outcome::RefusedByScope => "refused_by_scope",
            Outcome::Contained => "contained",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a decision was to do or to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Applying an action (or refusing to).
    Apply,
    /// Undoing it.
    Undo,
}

impl Phase {
    /// `"apply"` or `"undo"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Apply => "apply",
            Phase::Undo => "undo",
        }
    }
}

/// The evidence behind a decision: the verdict that confirmed the anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The detector's kind, e.g. `"threshold"`.
    pub detector: &'static str,
    /// The signal.
    pub signal: Arc<str>,
    /// The value judged.
    pub value: f64,
    /// The bound it crossed.
    pub threshold: Option<f64>,
    /// What the bound was computed over.
    pub window: Window,
}

impl From<&Verdict> for Trigger {
    fn from(v: &Verdict) -> Self {
        Trigger {
            detector: v.detector,
            signal: v.signal.clone(),
            value: v.value,
            threshold: v.threshold,
            window: v.window,
        }
    }
}

/// One decision of the supervisor about one action of one rule; each is exactly one
/// [`heal.decision`](DECISION_KIND) audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The rule.
    pub rule: Arc<str>,
    /// The action.
    pub action: String,
    /// Doing or undoing.
    pub phase: Phase,
    /// What came of it.
    pub outcome: Outcome,
    /// The supervisor's mode when it was decided.
    pub mode: Mode,
    /// The attempt (1 for the first) this decision belongs to; 0 when no attempt was made (refusals,
    /// dry runs).
    pub attempt: u32,
    /// The evidence.
    pub trigger: Option<Trigger>,
    /// Why: the action's error, the restore criterion met, the refusal's reason.
    pub reason: Option<String>,
    /// The tick's time.
    pub at: Instant,
}

impl Decision {
    /// The audit event: kind [`heal.decision`](DECISION_KIND), details `{rule, action, phase,
    /// attempt, trigger: {detector, signal, value, threshold, window}, mode, outcome, reason}`
    /// (`trigger` and `reason` are `null` when absent; `window` as an operator reads it, e.g. `"3
    /// consecutive within 15m"`).
    pub fn to_event(&self) -> AuditEvent {
        let trigger = match &self.trigger {
            Some(t) => {
                AuditEvent::new("")
                    .detail("detector", t.detector)
                    .detail("signal", &*t.signal)
                    .detail("value", t.value)
                    .detail("threshold", t.threshold)
                    .detail("window", t.window.to_string())
                    .details
            }
            None => AuditEvent::new("").details(Default::default()).details,
        };
        AuditEvent::new(DECISION_KIND)
            .detail("rule", &*self.rule)
            .detail("action", self.action.as_str())
            .detail("phase", self.phase.as_str())
            .detail("attempt", self.attempt)
            .detail("trigger", trigger)
            .detail("mode", self.mode.as_str())
            .detail("outcome", self.outcome.as_str())
            .detail("reason", self.reason.clone())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {} ({})",
            self.rule,
            self.phase.as_str(),
            self.action,
            self.outcome,
            self.mode
        )?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}
