//! [`Rule`]s (playbooks) and their [`RuleState`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::config::BuildError;

use super::action::{Action, ScopeKind};

/// A rule's default [`confirm_checks`](RuleBuilder::confirm_checks): 2.
pub const DEFAULT_CONFIRM_CHECKS: u32 = 2;

/// A rule's default [`max_attempts`](RuleBuilder::max_attempts): 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A rule's default [`budget`](RuleBuilder::budget): 10 applications of each action per sliding hour.
pub const DEFAULT_BUDGET: u32 = 10;

/// Where a rule stands.
///
/// `Monitoring → Detecting → Confirming → Executing → (Restoring) → Monitoring`, or, after
/// [`max_attempts`](RuleBuilder::max_attempts) failed attempts (or an action that could not be
/// undone), `Escalating → ManualIntervention`, which stays until
/// [`reset`](super::SupervisorHandle::reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleState {
    /// Nothing anomalous.
    Monitoring,
    /// The trigger's detector gave one anomalous verdict.
    Detecting,
    /// The anomaly held for more verdicts, not yet [`confirm_checks`](RuleBuilder::confirm_checks).
    Confirming,
    /// An attempt failed and fewer than `max_attempts` were made: the next anomalous verdict retries
    /// (a normal one ends it, back to `Monitoring`). Executing itself happens within a tick.
    Executing,
    /// The actions are in effect; waiting for the restore criteria to undo them.
    Restoring,
    /// Being escalated: seen only while the [`Escalate`](super::Escalate) hook runs.
    Escalating,
    /// Given up: nothing happens until an operator calls [`reset`](super::SupervisorHandle::reset).
    ManualIntervention,
}

impl RuleState {
    /// `"monitoring"`, `"detecting"`, `"confirming"`, `"executing"`, `"restoring"`, `"escalating"`
    /// or `"manual_intervention"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Monitoring => "monitoring",
            RuleState::Detecting => "detecting",
            RuleState::Confirming => "confirming",
            RuleState::Executing => "executing",
            RuleState::Restoring => "restoring",
            RuleState::Escalating => "escalating",
            RuleState::ManualIntervention => "manual_intervention",
        }
    }
}

impl fmt::Display for RuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A playbook: a trigger, ordered actions, restore criteria and safeguards. Built with
/// [`Rule::builder`].
///
/// ```
/// use std::time::Duration;
/// use palisade_heal::supervisor::{action_fn, Rule, Scope, ScopeKind};
///
/// let rule = Rule::builder("payments-fallback")
///     .trigger("payments.error_rate")
///     .confirm_checks(2)
///     .action(action_fn("fallback.payments", Scope::Dependency("payments".into()), || Ok(()), || Ok(())))
///     .restore_after_normal(3)
///     .restore_after(Duration::from_secs(600))
///     .max_scope(ScopeKind::Dependency)
///     .budget(10)
///     .build()
///     .unwrap();
/// assert_eq!(rule.name(), "payments-fallback");
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) trigger: String,
    pub(crate) confirm_checks: u32,
    pub(crate) actions: Vec<Arc<dyn Action>>,
    pub(crate) restore_normal: Option<u32>,
    pub(crate) restore_after: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) max_scope: ScopeKind,
    pub(crate) budget: u32,
    pub(crate) action_budgets: Vec<(String, u32)>,
}

impl Rule {
    /// A builder for a rule named `name` (unique within a supervisor).
    pub fn builder(name: impl Into<String>) -> RuleBuilder {
        RuleBuilder {
            name: name.into(),
            trigger: None,
            confirm_checks: DEFAULT_CONFIRM_CHECKS,
            actions: Vec::new(),
            restore_normal: None,
            restore_after: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_scope: ScopeKind::Process,
            budget: DEFAULT_BUDGET,
            action_budgets: Vec::new(),
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the detector whose verdicts trigger it.
    pub fn trigger(&self) -> &str {
        &self.trigger
    }

    /// Whether the rule has restore criteria (otherwise a successful execution goes straight back to
    /// `Monitoring` and nothing is undone).
    pub fn restores(&self) -> bool {
        self.restore_normal.is_some() || self.restore_after.is_some()
    }

    /// How many applications per sliding hour the action named `action` may have under this rule.
    pub fn budget_for(&self, action: &str) -> u32 {
        self.action_budgets
            .iter()
            .find(|(n, _)| n == action)
            .map_or(self.budget, |&(_, b)| b)
    }
}

/// Builds a [`Rule`]; see [`Rule::builder`].
#[derive(Debug)]
pub struct RuleBuilder {
    name: String,
    trigger: Option<String>,
    confirm_checks: u32,
    actions: Vec<Arc<dyn Action>>,
    restore_normal: Option<u32>,
    restore_after: Option<Duration>,
    max_attempts: u32,
    max_scope: ScopeKind,
    budget: u32,
    action_budgets: Vec<(String, u32)>,
}

impl RuleBuilder {
    /// The detector whose verdicts trigger the rule: the name it is given in
    /// [`Supervisor::tick`](super::Supervisor::tick)'s verdicts. Required.
    pub fn trigger(mut self, detector: impl Into<String>) -> Self {
        self.trigger = Some(detector.into());
        self
    }

    /// How many more consecutive anomalous verdicts, after the first (which starts `Detecting`),
    /// confirm the anomaly; default [`DEFAULT_CONFIRM_CHECKS`]. `0` acts on the first. A normal
    /// verdict before that is a false alarm: back to `Monitoring`. Warming and ignored verdicts
    /// count neither way.
    pub fn confirm_checks(mut self, n: u32) -> Self {
        self.confirm_checks = n;
        self
    }

    /// Appends an action: applied in order, undone in reverse. At least one is required.
    pub fn action(mut self, action: impl Action) -> Self {
        self.actions.push(Arc::new(action));
        self
    }

    /// Appends a shared action.
    pub fn action_arc(mut self, action: Arc<dyn Action>) -> Self {
        self.actions.push(action);
        self
    }

    /// Restore (undo the actions, back to `Monitoring`) after `m` consecutive normal verdicts once
    /// the actions are in effect. With [`restore_after`](Self::restore_after), whichever comes
    /// first. Without either, nothing is ever undone.
    pub fn restore_after_normal(mut self, m: u32) -> Self {
        self.restore_normal = Some(m);
        self
    }

    /// Restore once `t` has elapsed since the actions were applied, whatever the verdicts.
    pub fn restore_after(mut self, t: Duration) -> Self {
        self.restore_after = Some(t);
        self
    }

    /// Failed attempts before the rule escalates and waits for an operator; default
    /// [`DEFAULT_MAX_ATTEMPTS`]. At least 1.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The widest scope the rule may touch; an action whose scope is wider is refused (audited
    /// `refused_by_scope`) and nothing of that execution is applied. Default [`ScopeKind::Process`]
    /// (no limit).
    pub fn max_scope(mut self, kind: ScopeKind) -> Self {
        self.max_scope = kind;
        self
    }

    /// Applications per sliding hour allowed to each of the rule's actions (counted per action
    /// name, across rules); default [`DEFAULT_BUDGET`]. At least 1.
    pub fn budget(mut self, per_hour: u32) -> Self {
        self.budget = per_hour;
        self
    }

    /// Applications per sliding hour allowed to the action named `action`, overriding
    /// [`budget`](Self::budget). At least 1.
    pub fn action_budget(mut self, action: impl Into<String>, per_hour: u32) -> Self {
        let action = action.into();
        self.action_budgets.retain(|(n, _)| *n != action);
        self.action_budgets.push((action, per_hour));
        self
    }

    /// The rule.
    ///
    /// # Errors
    ///
    /// An empty name, no trigger, no action, `max_attempts`, a budget or `restore_after_normal` of
    /// 0, or a zero `restore_after`.
    pub fn build(self) -> Result<Rule, BuildError> {
        let bad =
            |setting, problem: &'static str| Err(BuildError::new("heal rule", setting, problem));
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        let Some(trigger) = self.trigger else {
            return bad("trigger", "a rule needs a trigger detector");
        };
        if self.actions.is_empty() {
            return bad("action", "a rule needs at least one action");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.budget == 0 || self.action_budgets.iter().any(|&(_, b)| b == 0) {
            return bad("budget", "must be at least 1 per hour");
        }
        if self.restore_normal == Some(0) {
            return bad("restore_after_normal", "must be at least 1");
        }
        if self.restore_after == Some(Duration::ZERO) {
            return bad("restore_after", "must be more than zero");
        }
        Ok(Rule {
            name: self.name.into(),
            trigger,
            confirm_checks: self.confirm_checks,
            actions: self.actions,
            restore_normal: self.restore_normal,
            restore_after: self.restore_after,
            max_attempts: self.max_attempts,
            max_scope: self.max_scope,
            budget: self.budget,
            action_budgets: self.action_budgets,
        })
    }
}
