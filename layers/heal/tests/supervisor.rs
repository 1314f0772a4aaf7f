//! The supervisor core: state machine, modes, budgets, containment, blast radius and audit, on
//! scripted verdict sequences (no clock: each tick is given its time).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::audit::{Audit, AuditRecord, MemorySink};
use palisade_heal::detect::{Ignored, Status, Verdict, Window};
use palisade_heal::supervisor::{
    Action, ActionError, Escalation, Mode, Outcome, Phase, Rule, RuleBuilder, RuleState, Scope,
    ScopeKind, Supervisor, SupervisorHandle,
};
use proptest::prelude::*;
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A verdict of the `threshold` detector on `sig` with the given status.
fn verdict(status: Status, at: Instant) -> Verdict {
    Verdict {
        status,
        detector: "threshold",
        signal: "api.error_rate".into(),
        value: if status == Status::Anomalous {
            0.9
        } else {
            0.0
        },
        threshold: Some(0.5),
        window: Window::Consecutive {
            count: 3,
            within: Some(15 * MIN),
        },
        score: if status == Status::Anomalous {
            1.0
        } else {
            0.0
        },
        since: None,
        at,
        ignored: None,
    }
}

const A: Status = Status::Anomalous;
const N: Status = Status::Normal;
const W: Status = Status::Warming;

/// An action counting its calls, failing while `fail` is set, with its apply times.
#[derive(Debug, Clone)]
struct Probe {
    name: String,
    scope: Scope,
    applies: Arc<AtomicU32>,
    undos: Arc<AtomicU32>,
    fail: Arc<AtomicBool>,
    fail_undo: Arc<AtomicBool>,
}

impl Probe {
    fn new(name: &str) -> Self {
        Probe {
            name: name.to_owned(),
            scope: Scope::Feature("recommendations".into()),
            applies: Arc::default(),
            undos: Arc::default(),
            fail: Arc::default(),
            fail_undo: Arc::default(),
        }
    }

    fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    fn applies(&self) -> u32 {
        self.applies.load(Ordering::SeqCst)
    }

    fn undos(&self) -> u32 {
        self.undos.load(Ordering::SeqCst)
    }

    fn failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

impl Action for Probe {
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> Scope {
        self.scope.clone()
    }

    fn apply(&self) -> Result<(), ActionError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            Err(ActionError::new("boom"))
        } else {
            Ok(())
        }
    }

    fn undo(&self) -> Result<(), ActionError> {
        self.undos.fetch_add(1, Ordering::SeqCst);
        if self.fail_undo.load(Ordering::SeqCst) {
            Err(ActionError::new("undo boom"))
        } else {
            Ok(())
        }
    }
}

type Escalations = Arc<Mutex<Vec<Escalation>>>;

struct Rig {
    sup: Supervisor,
    handle: SupervisorHandle,
    audit: Audit,
    log: MemorySink,
    escalations: Escalations,
    t0: Instant,
}

impl Rig {
    fn new(mode: Mode, rules: impl IntoIterator<Item = Rule>) -> Self {
        Self::with(mode, rules, |b| b)
    }

    fn with(
        mode: Mode,
        rules: impl IntoIterator<Item = Rule>,
        f: impl FnOnce(
            palisade_heal::supervisor::SupervisorBuilder,
        ) -> palisade_heal::supervisor::SupervisorBuilder,
    ) -> Self {
        let (audit, log) = Audit::memory(100_000);
        let escalations: Escalations = Arc::default();
        let sink = escalations.clone();
        let mut b = Supervisor::builder()
            .mode(mode)
            .audit(&audit)
            .escalate(move |e: &Escalation| sink.lock().unwrap().push(e.clone()));
        for r in rules {
            b = b.rule(r);
        }
        let sup = f(b).build().unwrap();
        let handle = sup.handle();
        Rig {
            sup,
            handle,
            audit,
            log,
            escalations,
            t0: Instant::now(),
        }
    }

    /// Ticks at `t0 + at` with one verdict of `status` from detector `det`.
    fn tick(&mut self, at: Duration, det: &str, status: Status) -> Vec<Outcome> {
        let now = self.t0 + at;
        let v = verdict(status, now);
        self.sup
            .tick(now, &[(det, &v)])
            .into_iter()
            .map(|d| d.outcome)
            .collect()
    }

    /// Ticks `statuses`, one every 10 s from `start`.
    fn script(&mut self, start: Duration, det: &str, statuses: &[Status]) -> Vec<RuleState> {
        statuses
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                self.tick(start + 10 * SEC * i as u32, det, s);
                self.handle.rules()[0].state
            })
            .collect()
    }

    async fn records(&self, kind: &str) -> Vec<AuditRecord> {
        self.audit.flush().await.unwrap();
        self.log
            .records()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    fn escalations(&self) -> Vec<String> {
        self.escalations
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.reason.as_str().to_owned())
            .collect()
    }
}

fn rule(name: &str, probe: &Probe) -> RuleBuilder {
    Rule::builder(name).trigger("errors").action(probe.clone())
}

fn outcomes(records: &[AuditRecord]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r.details["outcome"].as_str().unwrap())
        .collect()
}

#[test]
fn mode_parses_strictly_and_reads_the_environment() {
    for m in [Mode::DryRun, Mode::Active, Mode::Disabled] {
        assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
    }
    assert_eq!(Mode::default(), Mode::DryRun);
    for bad in ["", "Active", "dry-run", "dryrun", " active", "on"] {
        let err = bad.parse::<Mode>().unwrap_err();
        assert_eq!(err.value(), bad);
        assert!(
            err.to_string().contains("dry_run, active, disabled"),
            "{err}"
        );
    }
    // The only test that touches the environment.
    std::env::remove_var("PALISADE_HEAL_MODE");
    assert_eq!(Mode::from_env().unwrap(), Mode::DryRun);
    std::env::set_var("PALISADE_HEAL_MODE", "active");
    assert_eq!(Mode::from_env().unwrap(), Mode::Active);
    std::env::set_var("PALISADE_HEAL_MODE", "disabled");
    assert_eq!(Mode::from_env().unwrap(), Mode::Disabled);
    std::env::set_var("PALISADE_HEAL_MODE", "ACTIVE");
    let err = Mode::from_env().unwrap_err();
    assert_eq!(err.setting(), "PALISADE_HEAL_MODE");
    assert!(
        err.to_string().contains("dry_run, active, disabled"),
        "{err}"
    );
    std::env::remove_var("PALISADE_HEAL_MODE");
}

#[test]
fn builders_refuse_bad_settings() {
    let p = Probe::new("p");
    assert!(
        Rule::builder("r").action(p.clone()).build().is_err(),
        "no trigger"
    );
    assert!(
        Rule::builder("r").trigger("d").build().is_err(),
        "no action"
    );
    assert!(rule("", &p).build().is_err());
    assert!(rule("r", &p).max_attempts(0).build().is_err());
    assert!(rule("r", &p).budget(0).build().is_err());
    assert!(rule("r", &p).action_budget("p", 0).build().is_err());
    assert!(rule("r", &p).restore_after_normal(0).build().is_err());
    assert!(rule("r", &p).restore_after(Duration::ZERO).build().is_err());
    let r = rule("r", &p).action_budget("p", 2).build().unwrap();
    assert_eq!((r.budget_for("p"), r.budget_for("other")), (2, 10));
    let dup = Supervisor::builder()
        .rule(rule("r", &p).build().unwrap())
        .rule(rule("r", &p).build().unwrap())
        .build();
    assert!(dup.is_err(), "two rules with one name");
    assert!(Supervisor::builder()
        .containment_cooldown(Duration::ZERO)
        .build()
        .is_err());
    assert!(Supervisor::builder().decision_capacity(0).build().is_err());
}

#[tokio::test(start_paused = true)]
async fn flapping_verdicts_take_no_action() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p).confirm_checks(2).build().unwrap()],
    );
    use RuleState::*;
    let states = rig.script(Duration::ZERO, "errors", &[A, N, A, A, N, A, N, A, A, N]);
    assert_eq!(
        states,
        [
            Detecting, Monitoring, Detecting, Confirming, Monitoring, Detecting, Monitoring,
            Detecting, Confirming, Monitoring
        ]
    );
    assert_eq!(p.applies(), 0);
    assert!(rig.handle.recent_decisions().is_empty());
    assert!(rig.records("heal.decision").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn warming_ignored_and_missing_verdicts_are_no_evidence() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p).confirm_checks(1).build().unwrap()],
    );
    rig.tick(Duration::ZERO, "errors", A);
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::Detecting)
    );
    rig.tick(10 * SEC, "errors", W);
    rig.tick(20 * SEC, "other-detector", N);
    let now = rig.t0 + 30 * SEC;
    let mut ignored = verdict(N, now);
    ignored.ignored = Some(Ignored::NonFinite);
    rig.sup.tick(now, &[("errors", &ignored)]);
    rig.sup.tick(rig.t0 + 40 * SEC, &[]);
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::Detecting)
    );
    assert_eq!(p.applies(), 0);
    // The last verdict of a name counts.
    let (n, a) = (verdict(N, rig.t0 + 50 * SEC), verdict(A, rig.t0 + 50 * SEC));
    rig.sup
        .tick(rig.t0 + 50 * SEC, &[("errors", &n), ("errors", &a)]);
    assert_eq!(p.applies(), 1);
}

#[tokio::test(start_paused = true)]
async fn confirmed_trigger_applies_once_and_restores_after_m_normal_verdicts() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p)
            .confirm_checks(2)
            .restore_after_normal(3)
            .build()
            .unwrap()],
    );
    use RuleState::*;
    let states = rig.script(Duration::ZERO, "errors", &[A, A, A, A, A, N, N, A, N, N]);
    assert_eq!(
        states,
        [
            Detecting, Confirming, Restoring, Restoring, Restoring, Restoring, Restoring,
            Restoring, Restoring, Restoring
        ]
    );
    assert_eq!(
        (p.applies(), p.undos()),
        (1, 0),
        "applied once, held while anomalous"
    );
    assert_eq!(rig.tick(100 * SEC, "errors", N), [Outcome::RolledBack]);
    assert_eq!(rig.handle.rule_state("readiness"), Some(Monitoring));
    assert_eq!((p.applies(), p.undos()), (1, 1));

    let records = rig.records("heal.decision").await;
    assert_eq!(outcomes(&records), ["success", "rolled_back"]);
    let d = &records[0].details;
    assert_eq!(d["rule"], "readiness");
    assert_eq!(d["action"], "disable.recs");
    assert_eq!(d["phase"], "apply");
    assert_eq!(d["mode"], "active");
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["trigger"]["detector"], "threshold");
    assert_eq!(d["trigger"]["signal"], "api.error_rate");
    assert_eq!(d["trigger"]["value"], 0.9);
    assert_eq!(d["trigger"]["threshold"], 0.5);
    assert_eq!(d["trigger"]["window"], "3 consecutive within 15m");
    assert_eq!(records[1].details["phase"], "undo");
    assert_eq!(records[1].details["reason"], "restored: 3 normal verdicts");
    let recent = rig.handle.recent_decisions();
    assert_eq!(recent.len(), 2);
    assert_eq!(
        (recent[1].phase, recent[1].outcome),
        (Phase::Undo, Outcome::RolledBack)
    );
    assert!(rig.escalations().is_empty());
}

#[tokio::test(start_paused = true)]
async fn restores_after_t_elapsed_without_verdicts() {
    let p = Probe::new("shed.background");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("latency", &p)
            .confirm_checks(0)
            .restore_after_normal(100)
            .restore_after(10 * MIN)
            .build()
            .unwrap()],
    );
    assert_eq!(rig.tick(Duration::ZERO, "errors", A), [Outcome::Success]);
    rig.sup.tick(rig.t0 + 9 * MIN, &[]);
    assert_eq!(rig.handle.rule_state("latency"), Some(RuleState::Restoring));
    assert_eq!(rig.sup.tick(rig.t0 + 10 * MIN, &[]).len(), 1);
    assert_eq!(
        rig.handle.rule_state("latency"),
        Some(RuleState::Monitoring)
    );
    assert_eq!(p.undos(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rule_without_restore_criteria_returns_to_monitoring() {
    let p = Probe::new("restart");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("liveness", &p).confirm_checks(0).build().unwrap()],
    );
    rig.tick(Duration::ZERO, "errors", A);
    assert_eq!(
        rig.handle.rule_state("liveness"),
        Some(RuleState::Monitoring)
    );
    assert_eq!((p.applies(), p.undos()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn dry_run_never_applies_but_audits_what_it_would_do() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::DryRun,
        [rule("readiness", &p)
            .confirm_checks(1)
            .restore_after_normal(2)
            .build()
            .unwrap()],
    );
    let states = rig.script(Duration::ZERO, "errors", &[A, A, A, N, N]);
    use RuleState::*;
    assert_eq!(
        states,
        [Detecting, Restoring, Restoring, Restoring, Monitoring]
    );
    assert_eq!((p.applies(), p.undos()), (0, 0));
    let records = rig.records("heal.decision").await;
    assert_eq!(outcomes(&records), ["dry_run", "dry_run"]);
    assert_eq!(records[0].details["phase"], "apply");
    assert_eq!(records[1].details["phase"], "undo");
    assert!(records.iter().all(|r| r.details["mode"] == "dry_run"));
    // Dry runs use no budget.
    assert_eq!(rig.handle.rules()[0].budgets[0].used, 0);
}

#[tokio::test(start_paused = true)]
async fn disabled_changes_no_state_and_switching_is_audited() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Disabled,
        [rule("readiness", &p).confirm_checks(0).build().unwrap()],
    );
    for i in 0..5 {
        assert!(rig.tick(i * 10 * SEC, "errors", A).is_empty());
        assert_eq!(
            rig.handle.rule_state("readiness"),
            Some(RuleState::Monitoring)
        );
    }
    assert_eq!(p.applies(), 0);
    assert_eq!(rig.handle.set_mode(Mode::Active), Mode::Disabled);
    assert_eq!(rig.handle.mode(), Mode::Active);
    assert_eq!(
        rig.handle.set_mode(Mode::Active),
        Mode::Active,
        "no change, no record"
    );
    assert_eq!(rig.tick(MIN, "errors", A), [Outcome::Success]);
    rig.handle.set_mode(Mode::Disabled);
    assert_eq!(rig.records("heal.decision").await.len(), 1);
    let switches = rig.records("heal.mode_changed").await;
    let pairs: Vec<_> = switches
        .iter()
        .map(|r| {
            (
                r.details["from"].as_str().unwrap(),
                r.details["to"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs, [("disabled", "active"), ("active", "disabled")]);
}

#[tokio::test(start_paused = true)]
async fn disabled_freezes_a_rule_in_progress() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p)
            .confirm_checks(0)
            .restore_after_normal(1)
            .build()
            .unwrap()],
    );
    rig.tick(Duration::ZERO, "errors", A);
    rig.handle.set_mode(Mode::Disabled);
    rig.tick(10 * SEC, "errors", N);
    rig.sup.tick(rig.t0 + 10 * HOUR, &[]);
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::Restoring)
    );
    assert_eq!(p.undos(), 0);
    rig.handle.set_mode(Mode::DryRun);
    // Applied for real, so undone for real even in DRY-RUN.
    assert_eq!(rig.tick(11 * HOUR, "errors", N), [Outcome::RolledBack]);
    assert_eq!(p.undos(), 1);
}

#[tokio::test(start_paused = true)]
async fn three_failed_attempts_escalate_to_manual_intervention_until_reset() {
    let p = Probe::new("fallback.payments").scope(Scope::Dependency("payments".into()));
    p.failing(true);
    let mut rig = Rig::new(
        Mode::Active,
        [rule("breaker", &p).confirm_checks(0).build().unwrap()],
    );
    use RuleState::*;
    let states = rig.script(Duration::ZERO, "errors", &[A, A, A, A]);
    assert_eq!(
        states,
        [Executing, Executing, ManualIntervention, ManualIntervention]
    );
    assert_eq!(p.applies(), 3);
    let snap = &rig.handle.rules()[0];
    assert_eq!(snap.attempts, 3);
    // The third failure in a row also trips containment.
    assert_eq!(rig.escalations(), ["contained", "attempts_exhausted"]);
    let esc = rig.escalations();
    let escalated = rig.records("heal.escalated").await;
    assert_eq!(escalated.len(), esc.len(), "each escalation audited once");
    assert!(escalated
        .iter()
        .any(|r| r.details["rule"] == "breaker" && r.details["reason"] == "attempts_exhausted"));
    // Stays until reset.
    rig.tick(2 * HOUR, "errors", A);
    assert_eq!(rig.handle.rule_state("breaker"), Some(ManualIntervention));
    assert_eq!(rig.handle.reset("breaker"), Some(ManualIntervention));
    assert_eq!(rig.handle.reset("nope"), None);
    assert_eq!(rig.handle.rule_state("breaker"), Some(Monitoring));
    assert_eq!(rig.handle.rules()[0].attempts, 0);
    assert_eq!(rig.records("heal.reset").await.len(), 1);
    let records = rig.records("heal.decision").await;
    assert_eq!(records.len(), 3);
    assert!(outcomes(&records).iter().all(|o| *o == "failed"));
    assert_eq!(records[2].details["attempt"], 3);
    assert_eq!(records[2].details["reason"], "boom");
    // A normal verdict after a failed attempt ends it: attempts start again.
    assert!(rig.handle.reset_containment());
    let states = rig.script(3 * HOUR, "errors", &[A, A, N]);
    assert_eq!(states, [Executing, Executing, Monitoring]);
    assert_eq!(rig.handle.rules()[0].attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn escalation_hook_sees_the_escalating_state() {
    let p = Probe::new("fallback.payments");
    p.failing(true);
    let seen: Arc<Mutex<Vec<Option<RuleState>>>> = Arc::default();
    let slot: Arc<Mutex<Option<SupervisorHandle>>> = Arc::default();
    let (seen2, slot2) = (seen.clone(), slot.clone());
    let mut sup = Supervisor::builder()
        .mode(Mode::Active)
        .escalate(move |e: &Escalation| {
            let handle = slot2.lock().unwrap().clone().unwrap();
            seen2
                .lock()
                .unwrap()
                .push(e.rule.as_deref().and_then(|r| handle.rule_state(r)));
        })
        .rule(
            rule("breaker", &p)
                .confirm_checks(0)
                .max_attempts(1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(sup.handle());
    let now = Instant::now();
    sup.tick(now, &[("errors", &verdict(A, now))]);
    assert_eq!(*seen.lock().unwrap(), [Some(RuleState::Escalating)]);
    assert_eq!(
        sup.handle().rule_state("breaker"),
        Some(RuleState::ManualIntervention)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_rolls_back_what_it_applied() {
    let first = Probe::new("first");
    let second = Probe::new("second");
    second.failing(true);
    let mut rig = Rig::new(
        Mode::Active,
        [Rule::builder("two")
            .trigger("errors")
            .confirm_checks(0)
            .action(first.clone())
            .action(second.clone())
            .build()
            .unwrap()],
    );
    assert_eq!(
        rig.tick(Duration::ZERO, "errors", A),
        [Outcome::Success, Outcome::Failed, Outcome::RolledBack]
    );
    assert_eq!(
        (
            first.applies(),
            first.undos(),
            second.applies(),
            second.undos()
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(rig.handle.rule_state("two"), Some(RuleState::Executing));
}

#[tokio::test(start_paused = true)]
async fn an_undo_that_fails_escalates() {
    let p = Probe::new("disable.recs");
    p.fail_undo.store(true, Ordering::SeqCst);
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p)
            .confirm_checks(0)
            .restore_after_normal(1)
            .build()
            .unwrap()],
    );
    rig.tick(Duration::ZERO, "errors", A);
    assert_eq!(rig.tick(10 * SEC, "errors", N), [Outcome::Failed]);
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::ManualIntervention)
    );
    assert_eq!(rig.escalations(), ["undo_failed"]);
}

#[tokio::test(start_paused = true)]
async fn budget_refuses_the_n_plus_first_application_until_the_hour_slides() {
    let p = Probe::new("disable.recs");
    let mut rig = Rig::new(
        Mode::Active,
        [rule("readiness", &p)
            .confirm_checks(0)
            .restore_after_normal(1)
            .action_budget("disable.recs", 2)
            .build()
            .unwrap()],
    );
    let at = |m: u32| m * MIN;
    assert_eq!(rig.tick(at(0), "errors", A), [Outcome::Success]);
    rig.tick(at(1), "errors", N);
    assert_eq!(rig.tick(at(10), "errors", A), [Outcome::Success]);
    rig.tick(at(11), "errors", N);
    let b = &rig.handle.rules()[0].budgets[0];
    assert_eq!(
        (b.action.as_str(), b.limit, b.used, b.left),
        ("disable.recs", 2, 2, 0)
    );
    assert_eq!(rig.tick(at(20), "errors", A), [Outcome::RefusedByBudget]);
    assert_eq!(p.applies(), 2, "never silently exceeded");
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::Monitoring)
    );
    assert_eq!(rig.escalations(), ["budget_exhausted"]);
    // 59 min after the first application it still counts; at 60 min it has slid out.
    assert_eq!(rig.tick(at(59), "errors", A), [Outcome::RefusedByBudget]);
    assert_eq!(rig.tick(at(60), "errors", A), [Outcome::Success]);
    assert_eq!(p.applies(), 3);
    let records = rig.records("heal.decision").await;
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.details["outcome"] == "refused_by_budget")
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].details["action"], "disable.recs");
    assert_eq!(
        refused[0].details["reason"],
        "2 of 2 applications in the last hour"
    );
    assert_eq!(rig.records("heal.escalated").await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn budgets_are_per_action_name_across_rules() {
    let p = Probe::new("restart");
    let q = Probe::new("restart");
    let mut rig = Rig::new(
        Mode::Active,
        [
            rule("liveness", &p)
                .confirm_checks(0)
                .budget(1)
                .build()
                .unwrap(),
            Rule::builder("stuck")
                .trigger("progress")
                .confirm_checks(0)
                .action(q.clone())
                .budget(1)
                .build()
                .unwrap(),
        ],
    );
    assert_eq!(rig.tick(Duration::ZERO, "errors", A), [Outcome::Success]);
    assert_eq!(rig.tick(MIN, "progress", A), [Outcome::RefusedByBudget]);
    assert_eq!((p.applies(), q.applies()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn containment_after_three_failures_in_a_row() {
    let p = Probe::new("fallback.payments");
    p.failing(true);
    let mut rig = Rig::with(
        Mode::Active,
        [rule("breaker", &p)
            .confirm_checks(0)
            .max_attempts(10)
            .build()
            .unwrap()],
        |b| b.containment_cooldown(30 * MIN),
    );
    for i in 0..3 {
        assert_eq!(rig.tick(i * MIN, "errors", A), [Outcome::Failed]);
    }
    assert_eq!(
        rig.handle.contained_until(),
        Some(rig.t0 + 2 * MIN + 30 * MIN)
    );
    assert_eq!(rig.escalations(), ["contained"]);
    p.failing(false);
    assert_eq!(rig.tick(3 * MIN, "errors", A), [Outcome::Contained]);
    assert_eq!(p.applies(), 3, "nothing applied while contained");
    assert_eq!(
        rig.handle.rule_state("breaker"),
        Some(RuleState::Monitoring)
    );
    // After the cooldown, it acts again.
    assert_eq!(rig.tick(32 * MIN, "errors", A), [Outcome::Success]);
    assert_eq!(rig.handle.contained_until(), None);
    let escalated = rig.records("heal.escalated").await;
    assert_eq!(escalated.len(), 1);
    assert!(escalated[0].details["rule"].is_null());
    assert_eq!(escalated[0].details["reason"], "contained");
}

/// An action whose outcomes follow a script (true = success).
#[derive(Debug)]
struct Scripted {
    outcomes: Mutex<Vec<bool>>,
    applies: Arc<AtomicU32>,
}

impl Action for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn scope(&self) -> Scope {
        Scope::Process
    }
    fn apply(&self) -> Result<(), ActionError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        let ok = self.outcomes.lock().unwrap().remove(0);
        ok.then_some(())
            .ok_or_else(|| ActionError::new("scripted failure"))
    }
    fn undo(&self) -> Result<(), ActionError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn containment_when_more_than_half_of_the_last_ten_failed() {
    // S F F S F F S F F: never 3 in a row, but 6 of 9 failed.
    let script = [true, false, false, true, false, false, true, false, false];
    let applies = Arc::new(AtomicU32::new(0));
    let action = Scripted {
        outcomes: Mutex::new(script.to_vec()),
        applies: applies.clone(),
    };
    let mut rig = Rig::new(
        Mode::Active,
        [Rule::builder("r")
            .trigger("errors")
            .confirm_checks(0)
            .max_attempts(100)
            .budget(100)
            .action(action)
            .build()
            .unwrap()],
    );
    for (i, ok) in script.iter().enumerate() {
        let at = i as u32 * MIN;
        assert_eq!(rig.handle.contained_until(), None, "not yet at {i}");
        let expected = if *ok {
            Outcome::Success
        } else {
            Outcome::Failed
        };
        assert_eq!(rig.tick(at, "errors", A), [expected]);
    }
    assert_eq!(rig.handle.contained_until(), Some(rig.t0 + 8 * MIN + HOUR));
    assert_eq!(rig.escalations(), ["contained"]);
    // An operator lifts it.
    assert!(rig.handle.reset_containment());
    assert!(!rig.handle.reset_containment());
    assert_eq!(rig.handle.contained_until(), None);
    assert_eq!(rig.records("heal.reset").await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_action_wider_than_the_rule_allows_is_refused_and_audited() {
    let narrow = Probe::new("disable.recs");
    let wide = Probe::new("restart").scope(Scope::Process);
    let mut rig = Rig::new(
        Mode::Active,
        [Rule::builder("readiness")
            .trigger("errors")
            .confirm_checks(0)
            .max_scope(ScopeKind::Feature)
            .action(narrow.clone())
            .action(wide.clone())
            .build()
            .unwrap()],
    );
    assert_eq!(
        rig.tick(Duration::ZERO, "errors", A),
        [Outcome::RefusedByScope]
    );
    assert_eq!(
        (narrow.applies(), wide.applies()),
        (0, 0),
        "nothing of the execution applied"
    );
    assert_eq!(
        rig.handle.rule_state("readiness"),
        Some(RuleState::Monitoring)
    );
    assert_eq!(rig.escalations(), ["scope_refused"]);
    let records = rig.records("heal.decision").await;
    assert_eq!(outcomes(&records), ["refused_by_scope"]);
    assert_eq!(records[0].details["action"], "restart");
    assert_eq!(
        records[0].details["reason"],
        "touches process, wider than the rule's feature"
    );
    // DRY-RUN refuses it too: it is what ACTIVE would do.
    rig.handle.set_mode(Mode::DryRun);
    assert_eq!(rig.tick(MIN, "errors", A), [Outcome::RefusedByScope]);
    assert!(ScopeKind::Feature < ScopeKind::Tenant);
    assert!(ScopeKind::Tenant < ScopeKind::Dependency);
    assert!(ScopeKind::Dependency < ScopeKind::Process);
    assert_eq!(Scope::Tenant("acme".into()).to_string(), "tenant:acme");
}

#[tokio::test(start_paused = true)]
async fn recent_decisions_are_a_bounded_ring_newest_last() {
    let p = Probe::new("restart");
    let mut rig = Rig::with(
        Mode::DryRun,
        [rule("liveness", &p).confirm_checks(0).build().unwrap()],
        |b| b.decision_capacity(3),
    );
    for i in 0..5 {
        rig.tick(i * MIN, "errors", A);
    }
    let recent = rig.handle.recent_decisions();
    assert_eq!(recent.len(), 3);
    let ats: Vec<_> = recent.iter().map(|d| d.at - rig.t0).collect();
    assert_eq!(ats, [2 * MIN, 3 * MIN, 4 * MIN]);
    assert_eq!(rig.records("heal.decision").await.len(), 5);
    assert!(format!("{:?}", rig.handle).contains("liveness"));
}

// Random traces: two rules sharing an action name, random verdicts, gaps, failures, mode switches
// and resets. Budgets are never exceeded over any sliding hour, and every decision — in particular
// every `apply` call — is exactly one `heal.decision` record.

#[derive(Debug, Clone)]
struct Step {
    errors: u8,
    latency: u8,
    gap_secs: u64,
    fail: bool,
    mode: u8,
    reset: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..3, 0u8..3, 1u64..1200, any::<bool>(), 0u8..20, 0u8..10).prop_map(
        |(errors, latency, gap_secs, fail, mode, reset)| Step {
            errors,
            latency,
            gap_secs,
            fail,
            mode,
            reset: reset == 0,
        },
    )
}

fn status(n: u8) -> Status {
    [A, N, W][usize::from(n)]
}

/// An action logging the time of every `apply` call.
#[derive(Debug, Clone)]
struct Logged {
    name: &'static str,
    times: Arc<Mutex<Vec<Instant>>>,
    now: Arc<Mutex<Instant>>,
    fail: Arc<AtomicBool>,
    undos: Arc<AtomicU32>,
}

impl Action for Logged {
    fn name(&self) -> &str {
        self.name
    }
    fn scope(&self) -> Scope {
        Scope::Dependency("db".into())
    }
    fn apply(&self) -> Result<(), ActionError> {
        self.times.lock().unwrap().push(*self.now.lock().unwrap());
        if self.fail.load(Ordering::SeqCst) {
            Err(ActionError::new("fail"))
        } else {
            Ok(())
        }
    }
    fn undo(&self) -> Result<(), ActionError> {
        self.undos.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn run_trace(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let t0 = Instant::now();
        let now = Arc::new(Mutex::new(t0));
        let fail = Arc::new(AtomicBool::new(false));
        let undos = Arc::new(AtomicU32::new(0));
        let logged = |name| Logged {
            name,
            times: Arc::default(),
            now: now.clone(),
            fail: fail.clone(),
            undos: undos.clone(),
        };
        let shared = logged("fallback.db");
        let own = logged("shed.jobs");
        let (audit, log) = Audit::memory(1_000_000);
        let mut sup = Supervisor::builder()
            .mode(Mode::Active)
            .audit(&audit)
            .escalate(|_: &Escalation| {})
            .containment_cooldown(20 * MIN)
            .rule(
                Rule::builder("errors")
                    .trigger("errors")
                    .confirm_checks(1)
                    .action(shared.clone())
                    .action(own.clone())
                    .restore_after_normal(2)
                    .restore_after(15 * MIN)
                    .budget(3)
                    .build()
                    .unwrap(),
            )
            .rule(
                Rule::builder("latency")
                    .trigger("latency")
                    .confirm_checks(0)
                    .max_attempts(2)
                    .action(shared.clone())
                    .restore_after_normal(1)
                    .budget(3)
                    .action_budget("fallback.db", 3)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let handle = sup.handle();
        let mut t = t0;
        let mut decisions = 0usize;
        for s in &steps {
            t += Duration::from_secs(s.gap_secs);
            *now.lock().unwrap() = t;
            fail.store(s.fail, Ordering::SeqCst);
            match s.mode {
                0 => {
                    handle.set_mode(Mode::DryRun);
                }
                1 => {
                    handle.set_mode(Mode::Disabled);
                }
                2..=4 => {
                    handle.set_mode(Mode::Active);
                }
                _ => {}
            }
            if s.reset {
                handle.reset("errors");
                handle.reset("latency");
                handle.reset_containment();
            }
            let e = verdict(status(s.errors), t);
            let l = verdict(status(s.latency), t);
            let made = sup.tick(t, &[("errors", &e), ("latency", &l)]);
            for d in &made {
                prop_assert_eq!(d.at, t);
            }
            decisions += made.len();
        }
        audit.flush().await.unwrap();
        let records: Vec<_> = log
            .records()
            .into_iter()
            .filter(|r| r.kind == "heal.decision")
            .collect();
        prop_assert_eq!(records.len(), decisions, "one record per decision");
        for action in [&shared, &own] {
            let times = action.times.lock().unwrap().clone();
            for (i, &ti) in times.iter().enumerate() {
                let in_hour = times[..=i]
                    .iter()
                    .filter(|&&tj| ti.duration_since(tj) < HOUR)
                    .count();
                prop_assert!(
                    in_hour <= 3,
                    "{} applied {in_hour} times in an hour",
                    action.name
                );
            }
            let applied = records
                .iter()
                .filter(|r| {
                    r.details["action"] == action.name
                        && r.details["phase"] == "apply"
                        && (r.details["outcome"] == "success" || r.details["outcome"] == "failed")
                })
                .count();
            prop_assert_eq!(
                applied,
                times.len(),
                "one record per apply of {}",
                action.name
            );
        }
        let undone = records
            .iter()
            .filter(|r| {
                r.details["phase"] == "undo"
                    && (r.details["outcome"] == "rolled_back" || r.details["outcome"] == "failed")
            })
            .count();
        prop_assert_eq!(
            undone as u32,
            undos.load(Ordering::SeqCst),
            "one record per undo"
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn budgets_hold_and_every_decision_is_one_record(steps in prop::collection::vec(step(), 1..300)) {
        run_trace(steps)?;
    }
}
