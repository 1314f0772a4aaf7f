//! The supervisor: decides, acts, restores, escalates — and audits every decision.
//!
//! A [`Supervisor`] holds [`Rule`]s. Each [`tick`](Supervisor::tick) it is given the verdicts of the
//! detectors by name (whoever drives it — a task on a tokio interval, a test — runs the signals and
//! detectors); it has no clock of its own and does no I/O besides the audit log and the actions, so
//! the same verdicts at the same times always give the same decisions.
//!
//! # States
//!
//! Each rule is a state machine over its trigger detector's verdicts ([`RuleState`]):
//!
//! ```text
//! Monitoring ──anomalous──▶ Detecting ──anomalous──▶ Confirming ──confirm_checks reached──▶ Executing
//!     ▲  ▲                      │ normal (false alarm)     │ normal                          │
//!     │  └──────────────────────┴──────────────────────────┘                                 │
//!     │                                         all applied, with restore criteria          │
//!     ├──── M normal verdicts or T elapsed: undo in reverse ◀── Restoring ◀────────────────┤
//!     ├──── all applied, no restore criteria ◀──────────────────────────────────────────────┤
//!     │                                                                                      │ failed
//!     └── reset ── ManualIntervention ◀── Escalating ◀── max_attempts failed attempts ◀──────┘
//! ```
//!
//! Warming verdicts and ignored samples ([`Verdict::ignored`]) are no evidence either way. A failed
//! attempt first rolls back the actions of that attempt already applied (in reverse), then waits in
//! `Executing` for the next anomalous verdict to retry (a normal one ends it); after
//! [`max_attempts`](RuleBuilder::max_attempts) failures, or an action that could not be undone, the
//! rule escalates and stays in `ManualIntervention` until [`SupervisorHandle::reset`].
//!
//! # Modes
//!
//! - [`Mode::DryRun`] (the default) runs the same state machine, but instead of calling `apply` it
//!   audits each action it would have applied with outcome `dry_run`, then waits in `Restoring` as
//!   if it had (and audits the undo it would do, `dry_run` again). Dry runs neither count against
//!   budgets nor containment. Actions really applied before a switch to DRY-RUN are still really
//!   undone on restore.
//! - [`Mode::Active`] applies.
//! - [`Mode::Disabled`] makes a tick do nothing at all: no state changes, no decisions, no undo.
//!
//! Switching ([`SupervisorHandle::set_mode`]) is audited (`heal.mode_changed`).
//!
//! # Safeguards
//!
//! - **Blast radius**: before anything is applied, each action's [`Scope`] is checked against the
//!   rule's [`max_scope`](RuleBuilder::max_scope); a wider one refuses the whole execution
//!   (`refused_by_scope`) and escalates.
//! - **Budgets**: applications are counted per action name over a sliding hour (every `apply` call
//!   counts, failed or not); an execution that would exceed an action's
//!   [`budget`](RuleBuilder::budget) is refused as a whole (`refused_by_budget`) and escalates — a
//!   budget is never silently exceeded. The rule goes back to `Monitoring` and may try again when the
//!   hour has slid.
//! - **Containment**: if more than half of the last 10 remediations (attempts, across rules) failed,
//!   or the last 3 did, auto-remediation pauses for the
//!   [cooldown](SupervisorBuilder::containment_cooldown) (default 1 h) and escalates; meanwhile an
//!   execution is audited `contained`, nothing is applied and the rule returns to `Monitoring`.
//!   [`SupervisorHandle::reset_containment`] lifts it.
//!
//! # Audit
//!
//! Every [`Decision`] — one action of one rule, applied, undone, dry-run or refused — is exactly one
//! [`heal.decision`](DECISION_KIND) record (see [`Decision::to_event`]); refusals of an execution are
//! one record, naming the action refused (for containment, the first action). Escalations are
//! [`heal.escalated`](ESCALATED_KIND) records and go to the [`Escalate`] hook (by default a
//! `tracing` error), operator resets [`heal.reset`](RESET_KIND).
//!
//! Actions are synchronous and must not block ([`Action`]); async actions with timeouts, the task
//! that drives the tick, verification and the scored dry run are not part of this module yet.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use palisade_core::audit::Audit;
//! use palisade_heal::detect::{Detector, Threshold};
//! use palisade_heal::signals::Sample;
//! use palisade_heal::supervisor::{action_fn, Mode, Rule, RuleState, Scope, Supervisor};
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (audit, log) = Audit::memory(100);
//! let fallback = Arc::new(AtomicBool::new(false));
//! let (on, off) = (fallback.clone(), fallback.clone());
//! let mut supervisor = Supervisor::builder()
//!     .mode(Mode::Active)
//!     .audit(&audit)
//!     .rule(
//!         Rule::builder("payments-fallback")
//!             .trigger("payments-errors")
//!             .confirm_checks(1)
//!             .action(action_fn(
//!                 "fallback.payments",
//!                 Scope::Dependency("payments".into()),
//!                 move || Ok(on.store(true, Ordering::Relaxed)),
//!                 move || Ok(off.store(false, Ordering::Relaxed)),
//!             ))
//!             .restore_after_normal(2)
//!             .build()
//!             .unwrap(),
//!     )
//!     .build()
//!     .unwrap();
//! let handle = supervisor.handle();
//!
//! let mut errors = Threshold::builder("payments.error_rate").above(0.5).build().unwrap();
//! let t0 = Instant::now();
//! for (i, rate) in [0.9, 0.9, 0.0, 0.0].into_iter().enumerate() {
//!     let now = t0 + Duration::from_secs(10 * i as u64);
//!     let verdict = errors.observe(Sample::new(rate, now));
//!     supervisor.tick(now, &[("payments-errors", &verdict)]);
//!     if i == 1 {
//!         assert!(fallback.load(Ordering::Relaxed));
//!         assert_eq!(handle.rule_state("payments-fallback"), Some(RuleState::Restoring));
//!     }
//! }
//! assert!(!fallback.load(Ordering::Relaxed), "restored after 2 normal verdicts");
//! let outcomes: Vec<_> = handle.recent_decisions().iter().map(|d| d.outcome.as_str()).collect();
//! assert_eq!(outcomes, ["success", "rolled_back"]);
//! audit.flush().await.unwrap();
//! assert_eq!(log.records().iter().filter(|r| r.kind == "heal.decision").count(), 2);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::config::BuildError;
use tokio::time::Instant;

use crate::detect::{Status, Verdict};

mod action;
mod decision;
mod escalate;
mod ledger;
mod mode;
mod rule;

pub use action::{action_fn, Action, ActionError, FnAction, Scope, ScopeKind};
pub use decision::{
    Decision, Outcome, Phase, Trigger, DECISION_KIND, ESCALATED_KIND, MODE_CHANGED_KIND, RESET_KIND,
};
pub use escalate::{Escalate, Escalation, EscalationReason, LogEscalate};
pub use mode::{Mode, ParseModeError, MODE_ENV};
pub use rule::{
    Rule, RuleBuilder, RuleState, DEFAULT_BUDGET, DEFAULT_CONFIRM_CHECKS, DEFAULT_MAX_ATTEMPTS,
};

use ledger::{Budgets, Containment};

/// The default [`containment_cooldown`](SupervisorBuilder::containment_cooldown): 1 hour.
pub const DEFAULT_CONTAINMENT_COOLDOWN: Duration = Duration::from_secs(3600);

/// The default [`decision_capacity`](SupervisorBuilder::decision_capacity): the last 256 decisions.
pub const DEFAULT_DECISION_CAPACITY: usize = 256;

/// The supervisor: owns the rules' state machines, the mode, budgets and containment. Stepped by
/// [`tick`](Self::tick); observed and steered through its [`SupervisorHandle`]. See the
/// [module docs](self).
pub struct Supervisor {
    shared: Arc<Shared>,
}

/// A cheap `Clone` handle to a [`Supervisor`]: its mode, rule states, budgets and recent decisions,
/// and the operator's switches.
#[derive(Clone)]
pub struct SupervisorHandle {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    audit: Audit,
    escalate: Box<dyn Escalate>,
}

struct Inner {
    mode: Mode,
    rules: Vec<RuleRun>,
    budgets: Budgets,
    containment: Containment,
    cooldown: Duration,
    decisions: VecDeque<Decision>,
    capacity: usize,
}

struct RuleRun {
    rule: Rule,
    state: RuleState,
    confirmations: u32,
    attempts: u32,
    normals: u32,
    executed_at: Option<Instant>,
    applied_for_real: bool,
    trigger: Option<Trigger>,
}

impl RuleRun {
    fn back_to_monitoring(&mut self) {
        self.state = RuleState::Monitoring;
        self.confirmations = 0;
        self.attempts = 0;
        self.normals = 0;
        self.executed_at = None;
        self.applied_for_real = false;
        self.trigger = None;
    }

    fn executed(&mut self, now: Instant, for_real: bool) {
        if self.rule.restores() {
            self.state = RuleState::Restoring;
            self.attempts = 0;
            self.normals = 0;
            self.executed_at = Some(now);
            self.applied_for_real = for_real;
        } else {
            self.back_to_monitoring();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Supervisor {
    /// A builder: mode DRY-RUN, no audit, escalations logged, no rules.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder {
            mode: Mode::DryRun,
            audit: Audit::disabled(),
            escalate: Box::new(LogEscalate),
            rules: Vec::new(),
            cooldown: DEFAULT_CONTAINMENT_COOLDOWN,
            capacity: DEFAULT_DECISION_CAPACITY,
        }
    }

    /// A handle to observe and steer this supervisor.
    pub fn handle(&self) -> SupervisorHandle {
        SupervisorHandle {
            shared: self.shared.clone(),
        }
    }

    /// One step of the control loop at `now`, given this tick's detector verdicts by detector name
    /// (the name a rule's [`trigger`](RuleBuilder::trigger) refers to; when a name appears more than
    /// once, the last verdict counts). Rules whose detector has no verdict this tick keep their
    /// state, except that a rule in `Restoring` is restored once its `restore_after` has elapsed.
    ///
    /// Returns the decisions made in this tick, in order (each also audited and kept in
    /// [`recent_decisions`](SupervisorHandle::recent_decisions)). In [`Mode::Disabled`], does
    /// nothing and returns none. Escalations are handed to the [`Escalate`] hook at the end of the
    /// tick, with no lock held.
    pub fn tick(&mut self, now: Instant, verdicts: &[(&str, &Verdict)]) -> Vec<Decision> {
        let shared = &*self.shared;
        let mut cx = Cx {
            mode: Mode::Disabled,
            now,
            audit: &shared.audit,
            made: Vec::new(),
            escalations: Vec::new(),
        };
        {
            let mut guard = shared.lock();
            let inner = &mut *guard;
            if inner.mode == Mode::Disabled {
                return Vec::new();
            }
            cx.mode = inner.mode;
            inner.budgets.prune(now);
            let mut ledger = Ledger {
                budgets: &mut inner.budgets,
                containment: &mut inner.containment,
                cooldown: inner.cooldown,
            };
            for run in &mut inner.rules {
                let verdict = verdicts
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == run.rule.trigger)
                    .map(|&(_, v)| v);
                step(run, verdict, &mut cx, &mut ledger);
            }
            for d in &cx.made {
                if inner.decisions.len() == inner.capacity {
                    inner.decisions.pop_front();
                }
                inner.decisions.push_back(d.clone());
            }
        }
        if !cx.escalations.is_empty() {
            for e in &cx.escalations {
                shared.escalate.escalate(e);
            }
            let mut inner = shared.lock();
            for run in &mut inner.rules {
                if run.state == RuleState::Escalating {
                    run.state = RuleState::ManualIntervention;
                }
            }
        }
        cx.made
    }
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle().fmt(f)
    }
}

/// What a tick decides with.
struct Cx<'a> {
    mode: Mode,
    now: Instant,
    audit: &'a Audit,
    made: Vec<Decision>,
    escalations: Vec<Escalation>,
}

struct Ledger<'a> {
    budgets: &'a mut Budgets,
    containment: &'a mut Containment,
    cooldown: Duration,
}

impl Cx<'_> {
    fn decide(
        &mut self,
        run: &RuleRun,
        action: &str,
        phase: Phase,
        outcome: Outcome,
        attempt: u32,
        reason: Option<String>,
    ) {
        let d = Decision {
            rule: run.rule.name.clone(),
            action: action.to_owned(),
            phase,
            outcome,
            mode: self.mode,
            attempt,
            trigger: run.trigger.clone(),
            reason,
            at: self.now,
        };
        self.audit.record_with(|| d.to_event());
        self.made.push(d);
    }

    fn escalate(&mut self, rule: Option<Arc<str>>, reason: EscalationReason) {
        let e = Escalation {
            rule,
            reason,
            at: self.now,
        };
        self.audit.record_with(|| {
            AuditEvent::new(ESCALATED_KIND)
                .detail("rule", e.rule.as_deref())
                .detail("reason", e.reason.as_str())
                .detail("message", e.to_string())
        });
        self.escalations.push(e);
    }

    /// Counts a remediation; trips containment when it must.
    fn remediation(&mut self, ledger: &mut Ledger<'_>, success: bool) {
        if let Some((failed, of)) = ledger.containment.record(success) {
            if ledger.containment.until.is_none() {
                let until = self.now + ledger.cooldown;
                ledger.containment.until = Some(until);
                self.escalate(None, EscalationReason::Contained { until, failed, of });
            }
        }
    }
}

fn step(run: &mut RuleRun, verdict: Option<&Verdict>, cx: &mut Cx<'_>, ledger: &mut Ledger<'_>) {
    let evidence = verdict
        .filter(|v| v.ignored.is_none())
        .and_then(|v| match v.status {
            Status::Anomalous => Some((true, v)),
            Status::Normal => Some((false, v)),
            Status::Warming => None,
        });
    match run.state {
        RuleState::Monitoring => {
            if let Some((true, v)) = evidence {
                run.state = RuleState::Detecting;
                run.confirmations = 0;
                run.trigger = Some(v.into());
                if run.rule.confirm_checks == 0 {
                    execute(run, cx, ledger);
                }
            }
        }
        RuleState::Detecting | RuleState::Confirming => match evidence {
            Some((true, v)) => {
                run.confirmations += 1;
                run.trigger = Some(v.into());
                run.state = RuleState::Confirming;
                if run.confirmations >= run.rule.confirm_checks {
                    execute(run, cx, ledger);
                }
            }
            Some((false, _)) => run.back_to_monitoring(),
            None => {}
        },
        RuleState::Executing => match evidence {
            Some((true, v)) => {
                run.trigger = Some(v.into());
                execute(run, cx, ledger);
            }
            Some((false, _)) => run.back_to_monitoring(),
            None => {}
        },
        RuleState::Restoring => {
            match evidence {
                Some((false, _)) => run.normals += 1,
                Some((true, _)) => run.normals = 0,
                None => {}
            }
            let by_normal = run.rule.restore_normal.filter(|&m| run.normals >= m);
            let by_time = run.rule.restore_after.filter(|&t| {
                run.executed_at
                    .is_some_and(|at| cx.now.saturating_duration_since(at) >= t)
            });
            if let Some(m) = by_normal {
                restore(run, cx, format!("restored: {m} normal verdicts"));
            } else if let Some(t) = by_time {
                restore(run, cx, format!("restored: {t:?} elapsed"));
            }
        }
        RuleState::Escalating | RuleState::ManualIntervention => {}
    }
}

fn execute(run: &mut RuleRun, cx: &mut Cx<'_>, ledger: &mut Ledger<'_>) {
    let actions = run.rule.actions.clone();
    if ledger.containment.paused(cx.now) {
        let reason = "auto-remediation paused by containment".to_owned();
        cx.decide(
            run,
            actions[0].name(),
            Phase::Apply,
            Outcome::Contained,
            0,
            Some(reason),
        );
        run.back_to_monitoring();
        return;
    }
    for a in &actions {
        let scope = a.scope();
        let max = run.rule.max_scope;
        if scope.kind() > max {
            let reason = format!("touches {scope}, wider than the rule's {max}");
            cx.decide(
                run,
                a.name(),
                Phase::Apply,
                Outcome::RefusedByScope,
                0,
                Some(reason),
            );
            let reason = EscalationReason::ScopeRefused {
                action: a.name().to_owned(),
                scope,
                max,
            };
            cx.escalate(Some(run.rule.name.clone()), reason);
            run.back_to_monitoring();
            return;
        }
    }
    if cx.mode == Mode::DryRun {
        for a in &actions {
            cx.decide(run, a.name(), Phase::Apply, Outcome::DryRun, 0, None);
        }
        run.executed(cx.now, false);
        return;
    }
    for (i, a) in actions.iter().enumerate() {
        let name = a.name();
        if actions[..i].iter().any(|b| b.name() == name) {
            continue; // counted with its first occurrence
        }
        let needed = actions.iter().filter(|b| b.name() == name).count();
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        let used = ledger.budgets.used(name);
        let limit = run.rule.budget_for(name);
        if used.saturating_add(needed) > limit {
            let reason = format!("{used} of {limit} applications in the last hour");
            cx.decide(
                run,
                name,
                Phase::Apply,
                Outcome::RefusedByBudget,
                0,
                Some(reason),
            );
            let reason = EscalationReason::BudgetExhausted {
                action: name.to_owned(),
                limit,
            };
            cx.escalate(Some(run.rule.name.clone()), reason);
            run.back_to_monitoring();
            return;
        }
    }
    run.attempts += 1;
    let attempt = run.attempts;
    for (i, a) in actions.iter().enumerate() {
        ledger.budgets.record(a.name(), cx.now);
        if let Err(e) = a.apply() {
            cx.decide(
                run,
                a.name(),
                Phase::Apply,
                Outcome::Failed,
                attempt,
                Some(e.to_string()),
            );
            let mut undo_failed = None;
            for b in actions[..i].iter().rev() {
                match b.undo() {
                    Ok(()) => {
                        let reason = format!("rollback: {} failed", a.name());
                        cx.decide(
                            run,
                            b.name(),
                            Phase::Undo,
                            Outcome::RolledBack,
                            attempt,
                            Some(reason),
                        );
                    }
                    Err(e) => {
                        cx.decide(
                            run,
                            b.name(),
                            Phase::Undo,
                            Outcome::Failed,
                            attempt,
                            Some(e.to_string()),
                        );
                        undo_failed.get_or_insert_with(|| b.name().to_owned());
                    }
                }
            }
            cx.remediation(ledger, false);
            let name = run.rule.name.clone();
            if let Some(action) = undo_failed {
                cx.escalate(Some(name), EscalationReason::UndoFailed { action });
                run.state = RuleState::Escalating;
            } else if attempt >= run.rule.max_attempts {
                cx.escalate(
                    Some(name),
                    EscalationReason::AttemptsExhausted { attempts: attempt },
                );
                run.state = RuleState::Escalating;
            } else {
                run.state = RuleState::Executing;
            }
            return;
        }
        cx.decide(run, a.name(), Phase::Apply, Outcome::Success, attempt, None);
    }
    cx.remediation(ledger, true);
    run.executed(cx.now, true);
}

fn restore(run: &mut RuleRun, cx: &mut Cx<'_>, reason: String) {
    let actions = run.rule.actions.clone();
    let mut undo_failed = None;
    for a in actions.iter().rev() {
        if !run.applied_for_real {
            cx.decide(
                run,
                a.name(),
                Phase::Undo,
                Outcome::DryRun,
                0,
                Some(reason.clone()),
            );
            continue;
        }
        match a.undo() {
            Ok(()) => cx.decide(
                run,
                a.name(),
                Phase::Undo,
                Outcome::RolledBack,
                0,
                Some(reason.clone()),
            ),
            Err(e) => {
                cx.decide(
                    run,
                    a.name(),
                    Phase::Undo,
                    Outcome::Failed,
                    0,
                    Some(e.to_string()),
                );
                undo_failed.get_or_insert_with(|| a.name().to_owned());
            }
        }
    }
    if let Some(action) = undo_failed {
        cx.escalate(
            Some(run.rule.name.clone()),
            EscalationReason::UndoFailed { action },
        );
        run.state = RuleState::Escalating;
    } else {
        run.back_to_monitoring();
    }
}

/// Builds a [`Supervisor`]; see [`Supervisor::builder`].
pub struct SupervisorBuilder {
    mode: Mode,
    audit: Audit,
    escalate: Box<dyn Escalate>,
    rules: Vec<Rule>,
    cooldown: Duration,
    capacity: usize,
}

impl fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("mode", &self.mode)
            .field("rules", &self.rules)
            .field("containment_cooldown", &self.cooldown)
            .field("decision_capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SupervisorBuilder {
    /// The start-up mode; default [`Mode::DryRun`] (see [`Mode::from_env`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The audit log decisions, mode switches and escalations are recorded in; default none.
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Where escalations go; default [`LogEscalate`]. A closure `Fn(&Escalation)` is an
    /// [`Escalate`].
    pub fn escalate(mut self, escalate: impl Escalate) -> Self {
        self.escalate = Box::new(escalate);
        self
    }

    /// Adds a rule (rules are stepped in the order they were added).
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// How long containment pauses auto-remediation; default [`DEFAULT_CONTAINMENT_COOLDOWN`].
    pub fn containment_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// How many recent decisions the handle keeps; default [`DEFAULT_DECISION_CAPACITY`].
    pub fn decision_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The supervisor.
    ///
    /// # Errors
    ///
    /// Two rules with the same name, a zero cooldown or a zero decision capacity.
    pub fn build(self) -> Result<Supervisor, BuildError> {
        for (i, r) in self.rules.iter().enumerate() {
            if self.rules[..i].iter().any(|o| o.name == r.name) {
                return Err(BuildError::new(
                    "heal",
                    "rules",
                    format!("two rules are named {:?}", r.name()),
                ));
            }
        }
        if self.cooldown.is_zero() {
            return Err(BuildError::new(
                "heal",
                "containment_cooldown",
                "must be more than zero",
            ));
        }
        if self.capacity == 0 {
            return Err(BuildError::new(
                "heal",
                "decision_capacity",
                "must be at least 1",
            ));
        }
        let rules = self
            .rules
            .into_iter()
            .map(|rule| RuleRun {
                rule,
                state: RuleState::Monitoring,
                confirmations: 0,
                attempts: 0,
                normals: 0,
                executed_at: None,
                applied_for_real: false,
                trigger: None,
            })
            .collect();
        Ok(Supervisor {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    mode: self.mode,
                    rules,
                    budgets: Budgets::default(),
                    containment: Containment::default(),
                    cooldown: self.cooldown,
                    decisions: VecDeque::with_capacity(self.capacity.min(1024)),
                    capacity: self.capacity,
                }),
                audit: self.audit,
                escalate: self.escalate,
            }),
        })
    }
}

/// One rule as the handle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSnapshot {
    /// The rule's name.
    pub name: Arc<str>,
    /// Its state.
    pub state: RuleState,
    /// Failed attempts since it last left `Monitoring` or succeeded.
    pub attempts: u32,
    /// Anomalous verdicts counted towards `confirm_checks` so far.
    pub confirmations: u32,
    /// Each of its actions' budgets (one entry per action name).
    pub budgets: Vec<BudgetSnapshot>,
}

/// An action's budget, as of the last tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// The action's name.
    pub action: String,
    /// Applications allowed per sliding hour (under this rule).
    pub limit: u32,
    /// Applications in the last hour (by any rule).
    pub used: u32,
    /// `limit − used`, at least 0.
    pub left: u32,
}

impl SupervisorHandle {
    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.lock().mode
    }

    /// Switches the mode and returns the previous one; a change is audited
    /// ([`heal.mode_changed`](MODE_CHANGED_KIND) `{from, to}`). Rule states are kept: switching to
    /// [`Mode::Disabled`] freezes them, and nothing already applied is undone.
    pub fn set_mode(&self, mode: Mode) -> Mode {
        let mut inner = self.shared.lock();
        let from = std::mem::replace(&mut inner.mode, mode);
        if from != mode {
            self.shared.audit.record_with(|| {
                AuditEvent::new(MODE_CHANGED_KIND)
                    .detail("from", from.as_str())
                    .detail("to", mode.as_str())
            });
        }
        from
    }

    /// The state of the rule named `name`, if there is one.
    pub fn rule_state(&self, name: &str) -> Option<RuleState> {
        let inner = self.shared.lock();
        inner
            .rules
            .iter()
            .find(|r| &*r.rule.name == name)
            .map(|r| r.state)
    }

    /// Every rule's state, attempts and budgets, in the order they were added.
    pub fn rules(&self) -> Vec<RuleSnapshot> {
        let inner = self.shared.lock();
        inner
            .rules
            .iter()
            .map(|r| {
                let mut budgets: Vec<BudgetSnapshot> = Vec::new();
                for a in &r.rule.actions {
                    let action = a.name();
                    if budgets.iter().any(|b| b.action == action) {
                        continue;
                    }
                    let limit = r.rule.budget_for(action);
                    let used = inner.budgets.used(action);
                    budgets.push(BudgetSnapshot {
                        action: action.to_owned(),
                        limit,
                        used,
                        left: limit.saturating_sub(used),
                    });
                }
                RuleSnapshot {
                    name: r.rule.name.clone(),
                    state: r.state,
                    attempts: r.attempts,
                    confirmations: r.confirmations,
                    budgets,
                }
            })
            .collect()
    }

    /// The most recent decisions, oldest first (newest last), at most the
    /// [decision capacity](SupervisorBuilder::decision_capacity).
    pub fn recent_decisions(&self) -> Vec<Decision> {
        self.shared.lock().decisions.iter().cloned().collect()
    }

    /// Puts the rule named `name` back to `Monitoring` (attempts and counters cleared) and returns
    /// its previous state, or `None` when there is no such rule. Audited
    /// ([`heal.reset`](RESET_KIND) `{rule, from}`). Undoes nothing: whoever resets a rule in
    /// `ManualIntervention` has taken over.
    pub fn reset(&self, name: &str) -> Option<RuleState> {
        let mut inner = self.shared.lock();
        let run = inner.rules.iter_mut().find(|r| &*r.rule.name == name)?;
        let from = run.state;
        run.back_to_monitoring();
        self.shared.audit.record_with(|| {
            AuditEvent::new(RESET_KIND)
                .detail("rule", name)
                .detail("from", from.as_str())
        });
        Some(from)
    }

    /// Until when containment pauses auto-remediation, if it does (an expired pause is cleared at the
    /// next tick).
    pub fn contained_until(&self) -> Option<Instant> {
        self.shared.lock().containment.until
    }

    /// Lifts containment and forgets the remediation history it counts; returns whether it was
    /// paused. Audited ([`heal.reset`](RESET_KIND) `{rule: null, from: "contained"}`) when it was.
    pub fn reset_containment(&self) -> bool {
        let mut inner = self.shared.lock();
        let was = inner.containment.until.is_some();
        inner.containment.reset();
        if was {
            self.shared.audit.record_with(|| {
                AuditEvent::new(RESET_KIND)
                    .detail("rule", Option::<&str>::None)
                    .detail("from", "contained")
            });
        }
        was
    }
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.shared.lock();
        let states: Vec<(&str, RuleState)> = inner
            .rules
            .iter()
            .map(|r| (&*r.rule.name, r.state))
            .collect();
        f.debug_struct("Supervisor")
            .field("mode", &inner.mode)
            .field("rules", &states)
            .field("contained_until", &inner.containment.until)
            .finish_non_exhaustive()
    }
}
