//! Health tiers: shallow, deep and comprehensive checks, their aggregation into a `TierState` (every
//! row of the table), and deep checks running at once when a shallow check starts failing. All
//! time is Tokio's paused clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::health::{
    CheckConfig, CheckDepth, CheckHandle, ComponentKind, Health, HealthState, TierState,
};
use tokio::time::{sleep, Instant};

/// A check whose outcome a test flips, and which logs when each run started.
#[derive(Clone)]
struct Switch {
    failing: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<Instant>>>,
}

impl Switch {
    fn new() -> Self {
        Switch {
            failing: Arc::new(AtomicBool::new(false)),
            runs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn runs(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    /// Start times of the runs, as offsets from `t0`.
    fn run_offsets(&self, t0: Instant) -> Vec<Duration> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|at| at.duration_since(t0))
            .collect()
    }

    fn add(
        &self,
        health: &Health,
        name: &'static str,
        kind: ComponentKind,
        config: CheckConfig,
    ) -> CheckHandle {
        let me = self.clone();
        health
            .add_check(name, kind, config, move || {
                me.runs.lock().unwrap().push(Instant::now());
                let failing = me.failing.load(Ordering::SeqCst);
                async move {
                    if failing {
                        Err(format!("{name} failed"))
                    } else {
                        Ok(())
                    }
                }
            })
            .unwrap()
    }
}

/// A check of tier `depth` failing after one failure, recovering after one success, every 10 s.
fn quick(depth: CheckDepth) -> CheckConfig {
    CheckConfig::for_depth(depth)
        .interval(Duration::from_secs(10))
        .failure_threshold(1)
        .success_threshold(1)
}

/// Lets the runs due now finish.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// Moves to the next 10 s tick and lets its runs finish.
async fn tick() {
    sleep(Duration::from_secs(10)).await;
}

/// `n` shallow checks, `d` deep and `c` comprehensive, all passing, all of kind `Both`.
fn fleet(health: &Health, n: usize, d: usize, c: usize) -> (Vec<Switch>, Vec<Switch>, Vec<Switch>) {
    const SHALLOW: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];
    const DEEP: [&str; 2] = ["d1", "d2"];
    const COMPREHENSIVE: [&str; 2] = ["c1", "c2"];
    let make = |names: &[&'static str], count: usize, depth: CheckDepth| -> Vec<Switch> {
        names[..count]
            .iter()
            .map(|name| {
                let switch = Switch::new();
                // Detached: the checks run until the `Health` is dropped.
                drop(switch.add(health, name, ComponentKind::Both, quick(depth)));
                switch
            })
            .collect()
    };
    (
        make(&SHALLOW, n, CheckDepth::Shallow),
        make(&DEEP, d, CheckDepth::Deep),
        make(&COMPREHENSIVE, c, CheckDepth::Comprehensive),
    )
}

mod health_tiers {
    use super::*;

    #[test]
    fn aggregate_follows_every_row_of_the_table() {
        use TierState::*;
        // (shallow failing, deep failing, comprehensive failing) -> verdict
        let table = [
            ((0, 0, 0), Healthy),
            ((1, 0, 0), Degraded),
            ((2, 0, 0), Degraded),
            ((3, 0, 0), Unhealthy),
            ((7, 0, 0), Unhealthy),
            ((0, 1, 0), Unhealthy),
            ((2, 1, 0), Unhealthy),
            ((0, 0, 1), Critical),
            ((5, 2, 1), Critical),
            ((1, 0, 1), Critical),
        ];
        for ((s, d, c), expected) in table {
            assert_eq!(TierState::aggregate(s, d, c), expected, "({s}, {d}, {c})");
        }
        assert!(Healthy < Degraded && Degraded < Unhealthy && Unhealthy < Critical);
        assert_eq!(TierState::SHALLOW_FAILURES_UNHEALTHY, 3);
        assert_eq!(Critical.to_string(), "critical");
    }

    #[tokio::test(start_paused = true)]
    async fn all_shallow_passing_is_healthy() {
        let health = Health::new();
        let (_s, _d, _c) = fleet(&health, 3, 1, 1);
        settle().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Healthy);
        assert_eq!(tiers.tier(CheckDepth::Shallow).checks(), 3);
        assert_eq!(tiers.tier(CheckDepth::Deep).checks(), 1);
        assert_eq!(tiers.tier(CheckDepth::Comprehensive).checks(), 1);
        assert!(tiers.tier(CheckDepth::Shallow).failing().is_empty());
        // No checks at all is healthy too.
        assert_eq!(Health::new().tiers().status(), TierState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn one_or_two_shallow_failures_are_degraded() {
        let health = Health::new();
        let (shallow, _d, _c) = fleet(&health, 4, 1, 1);
        settle().await;

        shallow[0].fail(true);
        tick().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Degraded);
        assert_eq!(tiers.tier(CheckDepth::Shallow).failing(), ["s1"]);

        shallow[2].fail(true);
        tick().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Degraded);
        assert_eq!(tiers.tier(CheckDepth::Shallow).failing(), ["s1", "s3"]);
        // The probes keep their meaning: an unhealthy component is still a 503 on readiness.
        assert_eq!(health.readiness().status(), HealthState::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn three_shallow_failures_are_unhealthy() {
        let health = Health::new();
        let (shallow, _d, _c) = fleet(&health, 5, 1, 0);
        settle().await;
        for switch in &shallow[..3] {
            switch.fail(true);
        }
        tick().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Unhealthy);
        assert_eq!(tiers.tier(CheckDepth::Shallow).failing_count(), 3);
        assert!(tiers.tier(CheckDepth::Deep).failing().is_empty());

        // One recovers: back to two failures, degraded.
        shallow[1].fail(false);
        tick().await;
        assert_eq!(health.tiers().status(), TierState::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn one_deep_failure_is_unhealthy() {
        let health = Health::new();
        let (_s, deep, _c) = fleet(&health, 3, 2, 1);
        settle().await;
        deep[1].fail(true);
        tick().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Unhealthy);
        assert_eq!(tiers.tier(CheckDepth::Deep).failing(), ["d2"]);
        assert!(tiers.tier(CheckDepth::Shallow).failing().is_empty());

        deep[1].fail(false);
        tick().await;
        assert_eq!(health.tiers().status(), TierState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_comprehensive_failure_is_critical() {
        let health = Health::new();
        let (shallow, deep, comprehensive) = fleet(&health, 3, 1, 2);
        settle().await;
        comprehensive[0].fail(true);
        tick().await;
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Critical);
        assert_eq!(tiers.tier(CheckDepth::Comprehensive).failing(), ["c1"]);

        // Whatever else fails, it stays critical.
        deep[0].fail(true);
        for switch in &shallow {
            switch.fail(true);
        }
        tick().await;
        assert_eq!(health.tiers().status(), TierState::Critical);

        // Once the end-to-end check passes again, the rest decides.
        comprehensive[0].fail(false);
        tick().await;
        assert_eq!(health.tiers().status(), TierState::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn deep_checks_run_now_when_a_shallow_check_starts_failing() {
        let t0 = Instant::now();
        let health = Health::new();
        let shallow = Switch::new();
        let deep = Switch::new();
        let other_deep = Switch::new();
        let comprehensive = Switch::new();
        let _s = shallow.add(
            &health,
            "event_loop",
            ComponentKind::Liveness,
            CheckConfig::shallow().failure_threshold(1),
        );
        let _d = deep.add(
            &health,
            "db",
            ComponentKind::Readiness,
            CheckConfig::deep()
                .interval(Duration::from_secs(60))
                .failure_threshold(1),
        );
        let _d2 = other_deep.add(
            &health,
            "cache",
            ComponentKind::Readiness,
            CheckConfig::deep().interval(Duration::from_secs(45)),
        );
        let _c = comprehensive.add(
            &health,
            "checkout",
            ComponentKind::Readiness,
            CheckConfig::comprehensive(),
        );
        settle().await;
        assert_eq!(deep.runs(), 1);
        assert_eq!(comprehensive.runs(), 1);

        // The shallow check runs at 10 s (passes); it fails from its run at 20 s on. The deep
        // dependency fails too, but nothing would see it before 60 s without the wake-up.
        sleep(Duration::from_secs(15)).await;
        shallow.fail(true);
        deep.fail(true);
        sleep(Duration::from_secs(5)).await; // t = 20 s: the failing shallow run
        settle().await;

        let s = Duration::from_secs;
        assert_eq!(
            deep.run_offsets(t0),
            [s(0), s(20)],
            "the deep check ran at once"
        );
        assert_eq!(other_deep.run_offsets(t0), [s(0), s(20)]);
        assert_eq!(comprehensive.runs(), 1, "only deep checks are woken");
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Unhealthy, "{tiers:?}");
        assert_eq!(tiers.tier(CheckDepth::Deep).failing(), ["db"]);

        // A woken check's next run is a full interval after the wake-up (80 s, not 60 s), and
        // further shallow failures (already failing) do not wake it again.
        sleep(Duration::from_secs(70)).await; // t ≈ 90 s
        assert_eq!(deep.run_offsets(t0), [s(0), s(20), s(80)]);
        assert_eq!(other_deep.run_offsets(t0), [s(0), s(20), s(65)]);

        // Recovering and failing again wakes it again.
        shallow.fail(false);
        sleep(Duration::from_secs(10)).await; // t ≈ 100 s: shallow passes
        shallow.fail(true);
        sleep(Duration::from_secs(10)).await; // t ≈ 110 s: shallow fails again
        assert_eq!(deep.run_offsets(t0), [s(0), s(20), s(80), s(110)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shallow_failure_below_its_threshold_wakes_nothing() {
        let t0 = Instant::now();
        let health = Health::new();
        let shallow = Switch::new();
        let deep = Switch::new();
        let _s = shallow.add(
            &health,
            "event_loop",
            ComponentKind::Both,
            quick(CheckDepth::Shallow).failure_threshold(2),
        );
        let _d = deep.add(
            &health,
            "db",
            ComponentKind::Both,
            CheckConfig::deep().interval(Duration::from_secs(60)),
        );
        settle().await;
        sleep(Duration::from_secs(5)).await;
        shallow.fail(true);
        sleep(Duration::from_secs(5)).await; // t = 10 s: first failure, below the threshold
        settle().await;
        assert_eq!(health.tiers().status(), TierState::Healthy);
        assert_eq!(deep.runs(), 1, "no wake-up below the threshold");

        sleep(Duration::from_secs(10)).await; // t = 20 s: second failure, the check fails
        settle().await;
        assert_eq!(health.tiers().status(), TierState::Degraded);
        assert_eq!(
            deep.run_offsets(t0),
            [Duration::ZERO, Duration::from_secs(20)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_tier_keeps_n_failures_to_fail_and_m_successes_to_recover() {
        let health = Health::new();
        let deep = Switch::new();
        let comprehensive = Switch::new();
        let _d = deep.add(
            &health,
            "db",
            ComponentKind::Readiness,
            quick(CheckDepth::Deep)
                .failure_threshold(3)
                .success_threshold(2),
        );
        let _c = comprehensive.add(
            &health,
            "checkout",
            ComponentKind::Readiness,
            quick(CheckDepth::Comprehensive)
                .failure_threshold(2)
                .success_threshold(3),
        );
        settle().await;
        deep.fail(true);
        comprehensive.fail(true);
        tick().await; // 1 failure each
        assert_eq!(health.tiers().status(), TierState::Healthy);
        tick().await; // 2: the comprehensive check fails
        assert_eq!(health.tiers().status(), TierState::Critical);
        comprehensive.fail(false);
        tick().await; // deep: 3 failures; comprehensive: 1 success
        let tiers = health.tiers();
        assert_eq!(tiers.status(), TierState::Critical);
        assert_eq!(tiers.tier(CheckDepth::Deep).failing(), ["db"]);
        tick().await; // comprehensive: 2 successes
        assert_eq!(health.tiers().status(), TierState::Critical);
        tick().await; // comprehensive: 3 successes, recovered; the deep check still fails
        assert_eq!(health.tiers().status(), TierState::Unhealthy);
        deep.fail(false);
        tick().await; // deep: 1 success
        assert_eq!(health.tiers().status(), TierState::Unhealthy);
        tick().await; // deep: 2 successes
        assert_eq!(health.tiers().status(), TierState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_count_only_their_own_checks_and_pushed_components_have_no_tier() {
        let health = Health::new();
        let shallow = Switch::new();
        let deep = Switch::new();
        let _s = shallow.add(
            &health,
            "event_loop",
            ComponentKind::Liveness,
            quick(CheckDepth::Shallow),
        );
        let _d = deep.add(
            &health,
            "db",
            ComponentKind::Readiness,
            quick(CheckDepth::Deep),
        );
        health
            .register("breaker.payments", ComponentKind::Both)
            .unhealthy("circuit open");
        deep.fail(true);
        settle().await;

        let live = health.liveness().tiers();
        assert_eq!(live.status(), TierState::Healthy);
        assert_eq!(live.tier(CheckDepth::Shallow).checks(), 1);
        assert_eq!(live.tier(CheckDepth::Deep).checks(), 0);
        let ready = health.readiness().tiers();
        assert_eq!(ready.status(), TierState::Unhealthy);
        assert_eq!(ready.tier(CheckDepth::Shallow).checks(), 0);
        assert_eq!(ready.tier(CheckDepth::Deep).failing(), ["db"]);
        // The unhealthy breaker is in both probes' status, in no tier.
        assert_eq!(health.liveness().status(), HealthState::Unhealthy);
        assert_eq!(health.tiers().tier(CheckDepth::Shallow).checks(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tier_json_has_the_documented_shape() {
        let health = Health::new();
        let (shallow, _d, _c) = fleet(&health, 2, 1, 1);
        shallow[1].fail(true);
        settle().await;
        let json = serde_json::to_value(health.tiers()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "status": "degraded",
                "shallow": {"checks": 2, "failing": ["s2"]},
                "deep": {"checks": 1, "failing": []},
                "comprehensive": {"checks": 1, "failing": []},
            })
        );
        let report: serde_json::Value = serde_json::from_str(&health.report().to_json()).unwrap();
        let depths: Vec<_> = report["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["check"]["depth"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(depths, ["comprehensive", "deep", "shallow", "shallow"]);
    }

    #[tokio::test(start_paused = true)]
    async fn tier_presets_and_compatible_defaults() {
        let s = Duration::from_secs;
        let cases = [
            (
                CheckConfig::shallow(),
                CheckDepth::Shallow,
                s(10),
                Duration::from_millis(100),
            ),
            (CheckConfig::deep(), CheckDepth::Deep, s(30), s(5)),
            (
                CheckConfig::comprehensive(),
                CheckDepth::Comprehensive,
                s(600),
                s(30),
            ),
        ];
        for (config, depth, interval, timeout) in cases {
            assert_eq!(config, CheckConfig::for_depth(depth));
            assert_eq!(config.get_depth(), depth);
            assert_eq!(config.get_interval(), interval);
            assert_eq!(config.get_timeout(), timeout);
            assert_eq!(config.get_failure_threshold(), 3);
            assert_eq!(config.get_success_threshold(), 1);
            assert!(config.validate().is_ok());
            // The recommended ranges of the design.
            assert_eq!(
                (depth.default_interval(), depth.default_timeout()),
                (interval, timeout)
            );
        }
        assert!((s(5)..=s(10)).contains(&CheckDepth::Shallow.default_interval()));
        assert!(CheckDepth::Shallow.default_timeout() <= Duration::from_millis(100));
        assert!((s(30)..=s(60)).contains(&CheckDepth::Deep.default_interval()));
        assert!((s(5 * 60)..=s(15 * 60)).contains(&CheckDepth::Comprehensive.default_interval()));
        assert!((s(5)..=s(30)).contains(&CheckDepth::Comprehensive.default_timeout()));

        // `new()` is what it always was, and `depth` changes only the tier.
        let plain = CheckConfig::new();
        assert_eq!(plain, CheckConfig::default());
        assert_eq!(plain.get_depth(), CheckDepth::Shallow);
        assert_eq!(plain.get_interval(), CheckConfig::DEFAULT_INTERVAL);
        assert_eq!(plain.get_timeout(), s(2));
        let deep = plain.depth(CheckDepth::Deep);
        assert_eq!(deep.get_interval(), s(10));
        assert_eq!(deep.get_timeout(), s(2));
        assert_eq!(
            CheckDepth::ALL.map(CheckDepth::as_str),
            ["shallow", "deep", "comprehensive"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_comprehensive_check_times_out_at_its_tier_default() {
        let t0 = Instant::now();
        let health = Health::new();
        let _c = health
            .add_check(
                "checkout",
                ComponentKind::Readiness,
                CheckConfig::comprehensive().failure_threshold(1),
                || async {
                    sleep(Duration::from_secs(31)).await;
                    Ok::<(), std::io::Error>(())
                },
            )
            .unwrap();
        sleep(Duration::from_secs(29)).await;
        assert_eq!(health.tiers().status(), TierState::Healthy);
        sleep(Duration::from_secs(2)).await;
        let report = health.readiness();
        let checkout = report.component("checkout").unwrap();
        assert_eq!(checkout.reason(), Some("timed out after 30s"));
        assert_eq!(report.tiers().status(), TierState::Critical);
        assert!(Instant::now().duration_since(t0) < Duration::from_secs(32));
    }
}
