//! Tests of the `Health` handle: components, checks (thresholds, timeouts, panics, lifetimes),
//! aggregation and the JSON report. All time is Tokio's paused clock.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::health::{
    CheckConfig, CheckDepth, CheckHandle, ComponentKind, Health, HealthError, HealthState,
};
use tokio::time::{advance, sleep};

const INTERVAL: Duration = Duration::from_secs(10);

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What one run of a scripted check does.
#[derive(Debug, Clone, Copy)]
enum Step {
    Pass,
    Fail(&'static str),
    /// Never finishes; sets the flag when the run's future is dropped (cancelled).
    Hang,
    /// Panics while the future is polled.
    Panic,
    /// Panics while the check is called, before any future exists.
    PanicOnCall,
}

/// Sets a flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Script {
    calls: Arc<AtomicUsize>,
    hung_run_dropped: Arc<AtomicBool>,
}

/// A check that plays `steps` in order, then passes forever; counts its calls.
fn scripted(
    steps: impl IntoIterator<Item = Step>,
) -> (impl Fn() -> BoxFuture + Send + Sync + 'static, Script) {
    let calls = Arc::new(AtomicUsize::new(0));
    let hung_run_dropped = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(Mutex::new(steps.into_iter().collect::<VecDeque<_>>()));
    let script = Script {
        calls: Arc::clone(&calls),
        hung_run_dropped: Arc::clone(&hung_run_dropped),
    };
    let check = move || -> BoxFuture {
        calls.fetch_add(1, Ordering::SeqCst);
        let step = steps.lock().unwrap().pop_front().unwrap_or(Step::Pass);
        if let Step::PanicOnCall = step {
            panic!("exploded on call");
        }
        let flag = matches!(step, Step::Hang).then(|| DropFlag(Arc::clone(&hung_run_dropped)));
        Box::pin(async move {
            match step {
                Step::Pass | Step::PanicOnCall => Ok(()),
                Step::Fail(error) => Err(error.to_owned()),
                Step::Hang => {
                    let _flag = flag;
                    sleep(Duration::from_secs(24 * 3600)).await;
                    Ok(())
                }
                Step::Panic => panic!("boom"),
            }
        })
    };
    (check, script)
}

fn config(failure_threshold: u32, success_threshold: u32) -> CheckConfig {
    CheckConfig::new()
        .interval(INTERVAL)
        .timeout(Duration::from_secs(2))
        .failure_threshold(failure_threshold)
        .success_threshold(success_threshold)
}

/// Lets the first run (started at once by `add_check`) finish.
async fn first_run() {
    sleep(Duration::from_millis(1)).await;
}

/// Lets exactly one more run finish.
async fn next_run() {
    sleep(INTERVAL).await;
}

fn state_of(health: &Health, name: &str) -> (HealthState, Option<String>) {
    let report = health.report();
    let component = report.component(name).expect("component in report");
    (component.state(), component.reason().map(str::to_owned))
}

fn calls(script: &Script) -> usize {
    script.calls.load(Ordering::SeqCst)
}

mod health_checks {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_below_threshold_do_not_flip_and_a_success_resets_them() {
        let health = Health::new();
        let (check, script) = scripted([
            Step::Fail("e1"),
            Step::Fail("e2"),
            Step::Pass,
            Step::Fail("e3"),
            Step::Fail("e4"),
        ]);
        let _handle = health
            .add_check("db", ComponentKind::Readiness, config(3, 1), check)
            .unwrap();

        first_run().await;
        assert_eq!(calls(&script), 1);
        assert_eq!(state_of(&health, "db"), (HealthState::Healthy, None));
        let report = health.report();
        let check = report.component("db").unwrap().check().unwrap();
        assert_eq!(check.consecutive_failures(), 1);
        assert_eq!(check.last_error(), Some("e1"));

        next_run().await;
        assert_eq!(state_of(&health, "db"), (HealthState::Healthy, None));

        next_run().await; // success: the count of failures starts again
        let report = health.report();
        let check = report.component("db").unwrap().check().unwrap();
        assert_eq!(check.consecutive_failures(), 0);
        assert_eq!(check.consecutive_successes(), 1);
        assert_eq!(check.last_error(), None);

        next_run().await;
        next_run().await; // two failures again: still below three
        assert_eq!(calls(&script), 5);
        assert_eq!(state_of(&health, "db"), (HealthState::Healthy, None));
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_flip_to_unhealthy_and_successes_recover() {
        let health = Health::new();
        let (check, script) = scripted([
            Step::Fail("e1"),
            Step::Fail("e2"),
            Step::Fail("connection refused"),
            Step::Pass,
            Step::Fail("e4"),
            Step::Pass,
            Step::Pass,
        ]);
        let _handle = health
            .add_check("db", ComponentKind::Readiness, config(3, 2), check)
            .unwrap();

        first_run().await;
        next_run().await;
        assert_eq!(state_of(&health, "db").0, HealthState::Healthy);
        next_run().await;
        assert_eq!(
            state_of(&health, "db"),
            (
                HealthState::Unhealthy,
                Some("connection refused".to_owned())
            )
        );
        assert_eq!(
            health
                .report()
                .component("db")
                .unwrap()
                .check()
                .unwrap()
                .consecutive_failures(),
            3
        );

        next_run().await; // one success of the two needed
        assert_eq!(state_of(&health, "db").0, HealthState::Unhealthy);
        next_run().await; // a failure resets the successes; the reason follows the last error
        assert_eq!(
            state_of(&health, "db"),
            (HealthState::Unhealthy, Some("e4".to_owned()))
        );
        next_run().await; // one success again
        assert_eq!(state_of(&health, "db").0, HealthState::Unhealthy);
        next_run().await; // two in a row: recovered
        assert_eq!(state_of(&health, "db"), (HealthState::Healthy, None));
        assert_eq!(calls(&script), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_state_holds_until_the_check_decides() {
        let health = Health::new();
        let (check, _script) = scripted([Step::Pass]);
        let _handle = health
            .add_check(
                "warmup",
                ComponentKind::Readiness,
                config(1, 1).initial(HealthState::Unhealthy),
                check,
            )
            .unwrap();
        assert_eq!(state_of(&health, "warmup").0, HealthState::Unhealthy);
        assert!(!health.readiness().is_available());
        first_run().await;
        assert_eq!(state_of(&health, "warmup").0, HealthState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_times_out_as_a_failure_and_is_cancelled() {
        let health = Health::new();
        let (check, script) = scripted([Step::Hang]);
        let _handle = health
            .add_check("slow", ComponentKind::Both, config(1, 1), check)
            .unwrap();

        first_run().await;
        assert_eq!(calls(&script), 1);
        assert_eq!(
            state_of(&health, "slow").0,
            HealthState::Healthy,
            "still running"
        );

        sleep(Duration::from_secs(3)).await; // past the 2 s timeout
        let (state, reason) = state_of(&health, "slow");
        assert_eq!(state, HealthState::Unhealthy);
        let reason = reason.unwrap();
        assert!(reason.starts_with("timed out"), "{reason}");
        assert!(reason.contains("2s"), "{reason}");
        assert!(
            script.hung_run_dropped.load(Ordering::SeqCst),
            "the timed-out run is cancelled"
        );

        sleep(INTERVAL).await; // the next run passes
        assert_eq!(calls(&script), 2);
        assert_eq!(state_of(&health, "slow").0, HealthState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_check_is_a_failure_and_checking_continues() {
        let health = Health::new();
        let (check, script) = scripted([Step::Panic, Step::Pass, Step::PanicOnCall, Step::Pass]);
        let handle = health
            .add_check("flaky", ComponentKind::Readiness, config(1, 1), check)
            .unwrap();

        first_run().await;
        let (state, reason) = state_of(&health, "flaky");
        assert_eq!(state, HealthState::Unhealthy);
        let reason = reason.unwrap();
        assert!(
            reason.contains("panicked") && reason.contains("boom"),
            "{reason}"
        );
        assert!(handle.is_running());

        next_run().await;
        assert_eq!(state_of(&health, "flaky").0, HealthState::Healthy);

        next_run().await; // a panic in the call itself, before any future
        let reason = state_of(&health, "flaky").1.unwrap();
        assert!(reason.contains("exploded on call"), "{reason}");

        next_run().await;
        assert_eq!(state_of(&health, "flaky").0, HealthState::Healthy);
        assert_eq!(calls(&script), 4);
        assert!(handle.is_running());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_check_and_removes_its_component() {
        let health = Health::new();
        let (check, script) = scripted([]);
        let handle = health
            .add_check("db", ComponentKind::Readiness, config(3, 1), check)
            .unwrap();
        first_run().await;
        next_run().await;
        assert_eq!(calls(&script), 2);
        assert!(handle.is_running());

        assert!(handle.stop());
        assert!(!handle.is_running());
        assert!(health.report().component("db").is_none());
        assert!(handle.component().is_none());

        sleep(INTERVAL * 10).await;
        assert_eq!(calls(&script), 2, "no runs after stop");
        assert!(!handle.stop(), "stopping twice is harmless");

        // The name is free again.
        let (check, _script) = scripted([]);
        health
            .add_check("db", ComponentKind::Readiness, config(3, 1), check)
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_a_run_in_progress() {
        let health = Health::new();
        let (check, script) = scripted([Step::Hang]);
        let handle = health
            .add_check("slow", ComponentKind::Readiness, config(1, 1), check)
            .unwrap();
        first_run().await;
        assert!(!script.hung_run_dropped.load(Ordering::SeqCst));
        handle.stop();
        first_run().await;
        assert!(script.hung_run_dropped.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_detaches_the_check() {
        let health = Health::new();
        let (check, script) = scripted([]);
        drop(
            health
                .add_check("db", ComponentKind::Readiness, config(3, 1), check)
                .unwrap(),
        );
        first_run().await;
        next_run().await;
        next_run().await;
        assert_eq!(calls(&script), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_health_stops_its_checks() {
        let health = Health::new();
        let (check, script) = scripted([]);
        let (hanging, hanging_script) = scripted([Step::Pass, Step::Hang]);
        let handle = health
            .add_check("db", ComponentKind::Readiness, config(3, 1), check)
            .unwrap();
        let _hanging = health
            .add_check(
                "slow",
                ComponentKind::Readiness,
                config(3, 1).timeout(Duration::from_secs(60)),
                hanging,
            )
            .unwrap();
        first_run().await;
        next_run().await;
        assert_eq!(calls(&script), 2);
        assert_eq!(calls(&hanging_script), 2, "the second run is hanging");
        assert!(!hanging_script.hung_run_dropped.load(Ordering::SeqCst));

        let clone = health.clone();
        drop(health);
        next_run().await;
        assert_eq!(calls(&script), 3, "a clone keeps the checks alive");

        drop(clone);
        first_run().await;
        assert!(!handle.is_running());
        assert!(
            hanging_script.hung_run_dropped.load(Ordering::SeqCst),
            "a run in progress is cancelled"
        );
        sleep(INTERVAL * 10).await;
        assert_eq!(calls(&script), 3, "no runs after the Health is gone");
        assert_eq!(calls(&hanging_script), 2);
        assert!(!handle.stop());
    }

    #[tokio::test(start_paused = true)]
    async fn deregistering_a_check_component_stops_the_check() {
        let health = Health::new();
        let (check, script) = scripted([]);
        let handle = health
            .add_check("db", ComponentKind::Readiness, config(3, 1), check)
            .unwrap();
        first_run().await;
        assert!(health.deregister("db"));
        assert!(!handle.is_running());
        sleep(INTERVAL * 5).await;
        assert_eq!(calls(&script), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_config_is_a_clear_error() {
        let health = Health::new();
        let cases = [
            (CheckConfig::new().interval(Duration::ZERO), "interval"),
            (CheckConfig::new().timeout(Duration::ZERO), "timeout"),
            (CheckConfig::new().failure_threshold(0), "failure_threshold"),
            (CheckConfig::new().success_threshold(0), "success_threshold"),
        ];
        for (config, field) in cases {
            assert_eq!(
                config.validate(),
                Err(HealthError::InvalidConfig {
                    field,
                    reason: match field {
                        "interval" | "timeout" => "must be greater than zero",
                        _ => "must be at least 1",
                    },
                })
            );
            let (check, script) = scripted([]);
            let error = health
                .add_check("db", ComponentKind::Readiness, config, check)
                .unwrap_err();
            assert!(matches!(error, HealthError::InvalidConfig { field: f, .. } if f == field));
            let message = error.to_string();
            assert!(message.contains(field), "{message}");
            assert!(message.contains("invalid health check config"), "{message}");
            first_run().await;
            assert_eq!(calls(&script), 0, "an invalid check never runs");
            assert!(health.report().components().is_empty());
        }
        assert_eq!(CheckConfig::default().validate(), Ok(()));
    }

    #[test]
    fn adding_a_check_outside_a_runtime_is_an_error() {
        let health = Health::new();
        let (check, _script) = scripted([]);
        let error = health
            .add_check("db", ComponentKind::Readiness, CheckConfig::new(), check)
            .unwrap_err();
        assert_eq!(error, HealthError::NoRuntime);
        assert!(health.report().components().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_name_cannot_get_a_check() {
        let health = Health::new();
        let _db = health.register("db", ComponentKind::Readiness);
        let (check, script) = scripted([]);
        let error = health
            .add_check("db", ComponentKind::Readiness, CheckConfig::new(), check)
            .unwrap_err();
        assert_eq!(
            error,
            HealthError::AlreadyRegistered {
                name: "db".to_owned()
            }
        );
        first_run().await;
        assert_eq!(calls(&script), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn checks_accept_plain_async_closures() {
        let health = Health::new();
        let up = Arc::new(AtomicBool::new(false));
        let probe = Arc::clone(&up);
        let handle: CheckHandle = health
            .add_check(
                "cache",
                ComponentKind::Liveness,
                CheckConfig::new().failure_threshold(1),
                move || {
                    let up = probe.load(Ordering::SeqCst);
                    async move {
                        if up {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("cache unreachable"))
                        }
                    }
                },
            )
            .unwrap();
        assert_eq!(handle.name(), "cache");
        first_run().await;
        assert_eq!(
            state_of(&health, "cache"),
            (HealthState::Unhealthy, Some("cache unreachable".to_owned()))
        );
        up.store(true, Ordering::SeqCst);
        sleep(CheckConfig::DEFAULT_INTERVAL).await;
        assert_eq!(state_of(&health, "cache").0, HealthState::Healthy);
    }
}

mod health_components {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_and_liveness_aggregate_their_own_components() {
        let health = Health::new();
        assert!(health.liveness().is_healthy());
        assert!(health.readiness().components().is_empty());
        assert_eq!(health.report().status(), HealthState::Healthy);

        let breaker = health.register("breaker", ComponentKind::Readiness);
        let process = health.register("process", ComponentKind::Liveness);
        let pool = health.register("pool", ComponentKind::Both);

        breaker.unhealthy("circuit open");
        assert!(
            health.liveness().is_healthy(),
            "readiness-only does not fail liveness"
        );
        assert_eq!(health.readiness().status(), HealthState::Unhealthy);
        assert!(!health.readiness().is_available());

        pool.degraded("slow");
        let liveness = health.liveness();
        assert_eq!(
            liveness.status(),
            HealthState::Degraded,
            "Both counts in liveness"
        );
        assert!(liveness.is_available());
        assert!(!liveness.is_healthy());
        assert_eq!(
            health.readiness().status(),
            HealthState::Unhealthy,
            "unhealthy is worse than degraded"
        );

        breaker.healthy();
        assert_eq!(
            health.readiness().status(),
            HealthState::Degraded,
            "Both counts in readiness"
        );

        process.unhealthy("deadlocked");
        assert_eq!(health.liveness().status(), HealthState::Unhealthy);
        assert_eq!(health.readiness().status(), HealthState::Degraded);

        let names = |report: palisade_core::health::Report| {
            report
                .components()
                .iter()
                .map(|c| c.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(health.liveness()), ["pool", "process"]);
        assert_eq!(names(health.readiness()), ["breaker", "pool"]);
        assert_eq!(names(health.report()), ["breaker", "pool", "process"]);
        assert_eq!(health.report().status(), HealthState::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn since_advances_and_survives_setting_the_same_state() {
        let health = Health::new();
        let pool = health.register("pool", ComponentKind::Readiness);
        let start = pool.since();

        advance(Duration::from_secs(3)).await;
        assert_eq!(
            health.report().components()[0].held_for(),
            Duration::from_secs(3)
        );
        pool.healthy(); // same state: since stays
        assert_eq!(pool.since(), start);

        pool.degraded("half the connections are gone");
        let degraded_at = pool.since();
        assert_eq!(degraded_at - start, Duration::from_secs(3));
        let wall_since = health.report().components()[0].since_unix_ms();

        advance(Duration::from_secs(5)).await;
        let report = health.report();
        assert_eq!(report.components()[0].held_for(), Duration::from_secs(5));
        assert_eq!(report.components()[0].held_for().as_millis(), 5000);

        pool.degraded("most connections are gone");
        assert_eq!(pool.since(), degraded_at, "same state again keeps since");
        assert_eq!(pool.reason().as_deref(), Some("most connections are gone"));
        let report = health.report();
        assert_eq!(report.components()[0].held_for(), Duration::from_secs(5));
        assert_eq!(report.components()[0].since_unix_ms(), wall_since);
        assert_eq!(
            report.components()[0].reason(),
            Some("most connections are gone")
        );

        advance(Duration::from_millis(1500)).await;
        assert_eq!(
            health.report().components()[0].held_for(),
            Duration::from_millis(6500)
        );

        pool.unhealthy("no connections");
        assert_eq!(health.report().components()[0].held_for(), Duration::ZERO);
        assert!(pool.since() > degraded_at);
    }

    #[tokio::test(start_paused = true)]
    async fn component_handles_set_and_read_state() {
        let health = Health::new();
        let gate = health.register(String::from("gate"), ComponentKind::Both);
        assert_eq!(gate.name(), "gate");
        assert_eq!(gate.kind(), ComponentKind::Both);
        assert_eq!(gate.state(), HealthState::Healthy);
        assert_eq!(gate.reason(), None);

        gate.set(HealthState::Degraded, "read-only mode");
        assert_eq!(gate.state(), HealthState::Degraded);
        assert_eq!(gate.reason().as_deref(), Some("read-only mode"));
        gate.set(HealthState::Degraded, "");
        assert_eq!(gate.reason(), None, "an empty reason is no reason");
        gate.unhealthy("closed");
        assert_eq!(gate.report().state(), HealthState::Unhealthy);
        gate.healthy();
        assert_eq!((gate.state(), gate.reason()), (HealthState::Healthy, None));

        let clone = gate.clone();
        clone.degraded("shared");
        assert_eq!(gate.state(), HealthState::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn registering_a_taken_name_gets_a_distinct_component() {
        let health = Health::new();
        let first = health.register("breaker", ComponentKind::Readiness);
        first.degraded("open");
        let second = health.register("breaker", ComponentKind::Liveness);
        assert_eq!(
            second.name(),
            "breaker#2",
            "a distinct name, never an alias"
        );
        assert_eq!(second.kind(), ComponentKind::Liveness, "its own kind");
        assert_eq!(second.state(), HealthState::Healthy, "its own state");
        second.unhealthy("down");
        assert_eq!(
            first.state(),
            HealthState::Degraded,
            "the first is untouched"
        );
        let third = health.register("breaker", ComponentKind::Readiness);
        assert_eq!(third.name(), "breaker#3");
        let names: Vec<String> = health
            .report()
            .components()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        assert_eq!(names, ["breaker", "breaker#2", "breaker#3"]);

        // Deregistering one removes only that one, whichever it is.
        assert!(second.deregister());
        assert!(first.is_registered() && third.is_registered());
        assert!(first.deregister());
        assert!(third.is_registered());
        // The freed name is reused, and a name that is taken literally is skipped.
        assert_eq!(
            health.register("breaker", ComponentKind::Readiness).name(),
            "breaker"
        );
        health.register("x#2", ComponentKind::Readiness);
        health.register("x", ComponentKind::Readiness);
        assert_eq!(health.register("x", ComponentKind::Readiness).name(), "x#3");

        let error = health
            .try_register("breaker", ComponentKind::Readiness)
            .unwrap_err();
        assert_eq!(
            error,
            HealthError::AlreadyRegistered {
                name: "breaker".to_owned()
            }
        );
        assert!(error.to_string().contains("breaker"));
        assert!(health
            .try_register("other", ComponentKind::Readiness)
            .is_ok());
        assert_eq!(health.component("other").unwrap().name(), "other");
        assert!(health.component("missing").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn two_guards_of_one_name_never_alias() {
        // Two layers of the same kind and name (two unnamed gates) on one Health.
        let health = Health::new();
        let a = health
            .register("gate.default", ComponentKind::Readiness)
            .deregister_on_drop();
        let b = health
            .register("gate.default", ComponentKind::Readiness)
            .deregister_on_drop();
        b.unhealthy("level maintenance");
        a.healthy();
        assert!(
            !health.readiness().is_available(),
            "b stays out of rotation"
        );
        drop(b);
        assert!(health.readiness().is_available());
        assert!(
            health.readiness().component("gate.default").is_some(),
            "dropping b removes only b"
        );
        drop(a);
        assert!(health.readiness().components().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn deregistering_removes_only_this_component() {
        let health = Health::new();
        let old = health.register("bulkhead", ComponentKind::Readiness);
        old.unhealthy("full");
        assert!(old.is_registered());
        assert!(old.deregister());
        assert!(!old.is_registered());
        assert!(!old.deregister());
        assert!(health.readiness().is_healthy());

        let new = health.register("bulkhead", ComponentKind::Readiness);
        assert_eq!(new.state(), HealthState::Healthy, "a fresh component");
        assert!(
            !old.deregister(),
            "a stale handle does not remove the new component"
        );
        assert!(new.is_registered());
        old.unhealthy("stale");
        assert!(
            health.readiness().is_healthy(),
            "a stale handle does not show"
        );

        drop(new);
        assert_eq!(
            health.readiness().components().len(),
            1,
            "dropping a handle keeps it"
        );
        assert!(health.deregister("bulkhead"));
        assert!(!health.deregister("bulkhead"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guard_deregisters_on_drop() {
        let health = Health::new();
        let guard = health
            .register("breaker.payments", ComponentKind::Readiness)
            .deregister_on_drop();
        guard.unhealthy("open");
        let plain = health.component("breaker.payments").unwrap();
        assert_eq!(health.readiness().status(), HealthState::Unhealthy);
        drop(guard);
        assert!(health.readiness().components().is_empty());
        assert!(health.readiness().is_healthy());
        assert!(!plain.is_registered());
    }

    #[tokio::test(start_paused = true)]
    async fn handles_outlive_the_health() {
        let health = Health::new();
        let component = health.register("x", ComponentKind::Both);
        drop(health);
        component.unhealthy("nobody is listening");
        assert_eq!(component.state(), HealthState::Unhealthy);
        assert!(!component.is_registered());
        assert!(!component.deregister());
    }
}

mod health_reports {
    use super::*;
    use serde_json::Value;

    #[tokio::test(start_paused = true)]
    async fn json_has_the_documented_shape() {
        let health = Health::new();
        let breaker = health.register("breaker.payments", ComponentKind::Readiness);
        breaker.degraded("circuit open");
        let (check, _script) = scripted([Step::Fail("refused")]);
        let _db = health
            .add_check(
                "db",
                ComponentKind::Both,
                config(3, 1).depth(CheckDepth::Deep),
                check,
            )
            .unwrap();
        let _live = health.register("alive", ComponentKind::Liveness);
        first_run().await;
        advance(Duration::from_millis(1234)).await;

        let report = health.readiness();
        let json: Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["status"], "degraded");
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 2, "{json}");

        let components = json["components"].as_array().unwrap();
        assert_eq!(components.len(), 2);
        let breaker = &components[0];
        assert_eq!(breaker["name"], "breaker.payments");
        assert_eq!(breaker["kind"], "readiness");
        assert_eq!(breaker["state"], "degraded");
        assert_eq!(breaker["reason"], "circuit open");
        assert_eq!(breaker["for_ms"], 1235);
        assert!(breaker["check"].is_null());
        let since = breaker["since"].as_str().unwrap();
        assert_eq!(since.len(), "2026-11-22T15:46:12.345Z".len(), "{since}");
        assert!(
            since.ends_with('Z') && since.as_bytes()[10] == b'T',
            "{since}"
        );
        let mut keys: Vec<_> = breaker.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["check", "for_ms", "kind", "name", "reason", "since", "state"]
        );

        let db = &components[1];
        assert_eq!(db["name"], "db");
        assert_eq!(db["kind"], "both");
        assert_eq!(db["state"], "healthy");
        assert!(db["reason"].is_null());
        assert_eq!(db["check"]["depth"], "deep");
        assert_eq!(db["check"]["consecutive_failures"], 1);
        assert_eq!(db["check"]["consecutive_successes"], 0);
        assert_eq!(db["check"]["last_error"], "refused");

        let all: Value = serde_json::from_str(&health.report().to_json()).unwrap();
        assert_eq!(all["components"][0]["name"], "alive");
        assert_eq!(all["components"][0]["kind"], "liveness");

        let empty: Value = serde_json::from_str(&Health::new().liveness().to_json()).unwrap();
        assert_eq!(
            empty,
            serde_json::json!({"status": "healthy", "components": []})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn report_lookups_and_status_helpers() {
        let health = Health::new();
        health
            .register("b", ComponentKind::Readiness)
            .unhealthy("down");
        health.register("a", ComponentKind::Readiness);
        health
            .register("c", ComponentKind::Readiness)
            .degraded("slow");
        let report = health.readiness();
        assert_eq!(report.status(), HealthState::Unhealthy);
        assert!(!report.is_healthy() && !report.is_available());
        assert_eq!(report.component("b").unwrap().reason(), Some("down"));
        assert_eq!(
            report.component("c").unwrap().state(),
            HealthState::Degraded
        );
        assert_eq!(
            report.component("a").unwrap().kind(),
            ComponentKind::Readiness
        );
        assert!(report.component("d").is_none());
        assert!(report.component("a").unwrap().check().is_none());
    }
}

mod health_events {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// Records (level, message, component) of every event.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(Level, String, String)>>>);

    struct Fields {
        message: String,
        component: String,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "component" => self.component = format!("{value:?}"),
                _ => {}
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields {
                message: String::new(),
                component: String::new(),
            };
            event.record(&mut fields);
            self.0.lock().unwrap().push((
                *event.metadata().level(),
                fields.message,
                fields.component,
            ));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn state_changes_emit_events_and_reports_do_not() {
        let recorder = Recorder::default();
        let events = Arc::clone(&recorder.0);
        tracing::subscriber::with_default(recorder, || {
            let health = Health::new();
            let pool = health.register("pool", ComponentKind::Readiness);
            let changes = |events: &Mutex<Vec<(Level, String, String)>>| {
                events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(level, ..)| *level <= Level::INFO)
                    .cloned()
                    .collect::<Vec<_>>()
            };

            pool.degraded("slow");
            pool.degraded("slower"); // same state: no event
            pool.unhealthy("gone");
            let _ = health.readiness();
            let _ = health.report().to_json();
            pool.healthy();
            pool.healthy();

            let got = changes(&events);
            let levels: Vec<Level> = got.iter().map(|(level, ..)| *level).collect();
            assert_eq!(levels, [Level::WARN, Level::WARN, Level::INFO]);
            assert!(got.iter().all(|(_, _, component)| component == "pool"));
            assert!(got[0].1.contains("degraded"), "{:?}", got[0]);
            assert!(got[2].1.contains("recovered"), "{:?}", got[2]);
        });
    }
}

#[test]
fn check_config_sizes_are_bounded() {
    let max = CheckConfig::new()
        .interval(CheckConfig::MAX_INTERVAL)
        .timeout(CheckConfig::MAX_TIMEOUT)
        .failure_threshold(CheckConfig::MAX_THRESHOLD)
        .success_threshold(CheckConfig::MAX_THRESHOLD);
    assert_eq!(max.validate(), Ok(()));
    let over = [
        (
            max.interval(CheckConfig::MAX_INTERVAL + Duration::from_secs(1)),
            "interval",
        ),
        (max.interval(Duration::MAX), "interval"),
        (
            max.timeout(CheckConfig::MAX_TIMEOUT + Duration::from_secs(1)),
            "timeout",
        ),
        (
            max.failure_threshold(CheckConfig::MAX_THRESHOLD + 1),
            "failure_threshold",
        ),
        (max.success_threshold(u32::MAX), "success_threshold"),
    ];
    for (config, setting) in over {
        match config.validate() {
            Err(HealthError::InvalidConfig { field, reason }) => {
                assert_eq!(field, setting);
                assert!(reason.contains("at most"), "{reason}");
            }
            other => panic!("{setting}: {other:?}"),
        }
    }
}
