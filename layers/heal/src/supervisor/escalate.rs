//! Escalation: telling a person.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::action::{Scope, ScopeKind};

/// Why the supervisor escalated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscalationReason {
    /// A rule failed `attempts` attempts in a row: it is now in `ManualIntervention`.
    AttemptsExhausted {
        /// How many attempts failed.
        attempts: u32,
    },
    /// An action's budget for the sliding hour was used up: the execution was refused.
    BudgetExhausted {
        /// The action.
        action: String,
        /// Its limit per hour.
        limit: u32,
    },
    /// An action's scope is wider than its rule allows: the execution was refused.
    ScopeRefused {
        /// The action.
        action: String,
        /// Its scope.
        scope: Scope,
        /// The rule's widest allowed scope.
        max: ScopeKind,
    },
    /// An action could not be undone: the rule is now in `ManualIntervention`.
    UndoFailed {
        /// The action.
        action: String,
    },
    /// Too many remediations failed: auto-remediation is paused until `until`.
    Contained {
        /// When it resumes.
        until: Instant,
        /// Failed remediations among the last (at most 10).
        failed: usize,
        /// How many remediations that was out of.
        of: usize,
    },
}

impl EscalationReason {
    /// A short name: `"attempts_exhausted"`, `"budget_exhausted"`, `"scope_refused"`,
    /// `"undo_failed"` or `"contained"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EscalationReason::AttemptsExhausted { .. } => "attempts_exhausted",
            EscalationReason::BudgetExhausted { .. } => "budget_exhausted",
            EscalationReason::ScopeRefused { .. } => "scope_refused",
            EscalationReason::UndoFailed { .. } => "undo_failed",
            EscalationReason::Contained { .. } => "contained",
        }
    }
}

impl fmt::Display for EscalationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EscalationReason::AttemptsExhausted { attempts } => {
                write!(
                    f,
                    "{attempts} attempts failed; manual intervention required"
                )
            }
            EscalationReason::BudgetExhausted { action, limit } => {
                write!(f, "budget of {limit} per hour for {action} exhausted")
            }
            EscalationReason::ScopeRefused { action, scope, max } => {
                write!(f, "{action} touches {scope}, wider than the rule's {max}")
            }
            EscalationReason::UndoFailed { action } => {
                write!(
                    f,
                    "{action} could not be undone; manual intervention required"
                )
            }
            EscalationReason::Contained { failed, of, .. } => write!(
                f,
                "{failed} of the last {of} remediations failed; auto-remediation paused"
            ),
        }
    }
}

/// One escalation: which rule (none for containment), why, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// The rule, or `None` when the whole supervisor is concerned (containment).
    pub rule: Option<Arc<str>>,
    /// Why.
    pub reason: EscalationReason,
    /// The tick's time.
    pub at: Instant,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "heal rule {rule}: {}", self.reason),
            None => write!(f, "heal: {}", self.reason),
        }
    }
}

/// Where escalations go: a pager, a ticket, a chat message.
///
/// Synchronous and **never blocking** (called from the supervisor's tick, after its state is
/// updated and with no lock held, so it may read the [`SupervisorHandle`](super::SupervisorHandle)):
/// queue the message and return. Every escalation is also an `heal.escalated` audit record.
pub trait Escalate: Send + Sync + 'static {
    /// Handles one escalation. The default logs it with `tracing::error!`.
    fn escalate(&self, escalation: &Escalation) {
        tracing::error!(
            rule = escalation.rule.as_deref().unwrap_or(""),
            reason = escalation.reason.as_str(),
            "{escalation}"
        );
    }
}

/// The default [`Escalate`]: logs each escalation with `tracing::error!`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogEscalate;

impl Escalate for LogEscalate {}

impl<F> Escalate for F
where
    F: Fn(&Escalation) + Send + Sync + 'static,
{
    fn escalate(&self, escalation: &Escalation) {
        self(escalation);
    }
}
