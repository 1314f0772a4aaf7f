//! Admission, partitions, health, audit, configuration and the in-flight invariant.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use palisade_adaptive::{
    AdaptiveLayer, Aimd, Algorithm, Gradient2, MissingKey, Partition, Vegas, MAX_LIMIT,
};
use palisade_core::audit::Audit;
use palisade_core::error::{BoxError, KeyError, Overloaded};
use palisade_core::health::{Health, HealthState};
use palisade_core::key::HeaderKey;
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::sleep;
use tower::{service_fn, Layer, Service, ServiceExt};

fn slow(
    d: Duration,
) -> impl Service<Request<()>, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |_req: Request<()>| async move {
        sleep(d).await;
        Ok::<_, BoxError>(())
    })
}

fn req(class: Option<&str>) -> Request<()> {
    let mut b = Request::get("/");
    if let Some(c) = class {
        b = b.header("x-class", c);
    }
    b.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn refuses_over_the_limit_at_once_and_reports_health() {
    let health = Health::new();
    let layer = AdaptiveLayer::builder()
        .name("db")
        .algorithm(Gradient2::new().initial_limit(2).min_limit(1))
        .retry_after(Duration::from_millis(250))
        .health(&health)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(slow(Duration::from_secs(1)));
    let a = svc.ready().await.unwrap().call(req(None));
    let b = svc.ready().await.unwrap().call(req(None));
    assert_eq!(
        health.component("adaptive.db").unwrap().state(),
        HealthState::Healthy
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req(None))
        .await
        .unwrap_err();
    let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
    assert_eq!(o.retry_after, Some(Duration::from_millis(250)));
    assert!(handle.is_limiting());
    assert_eq!(handle.rejected(), 1);
    assert_eq!(
        health.component("adaptive.db").unwrap().state(),
        HealthState::Degraded
    );
    // Cancelling one and finishing the other gives both slots back and clears the state.
    drop(a);
    assert_eq!(handle.in_flight(), 1);
    b.await.unwrap();
    assert_eq!(handle.in_flight(), 0);
    assert!(!handle.is_limiting());
    assert_eq!(
        health.component("adaptive.db").unwrap().state(),
        HealthState::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn partitions_keep_their_guaranteed_share() {
    // Limit 20: live guaranteed 18, batch 2, no pool.
    let layer = AdaptiveLayer::builder()
        .algorithm(Gradient2::new().initial_limit(20).min_limit(20))
        .partition(Partition::new("live", 0.9))
        .partition(Partition::new("batch", 0.1).member("reports"))
        .missing_key(MissingKey::Reject)
        .keyed(HeaderKey::from_static("x-class"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(slow(Duration::from_secs(10)));
    let mut held = Vec::new();
    // A batch flood gets its 2 slots and nothing more, though 18 are free.
    for _ in 0..10 {
        held.push(svc.ready().await.unwrap().call(req(Some("batch"))));
    }
    held.push(svc.ready().await.unwrap().call(req(Some("reports"))));
    let parts = handle.partitions();
    assert_eq!((parts[1].name.as_str(), parts[1].in_flight), ("batch", 2));
    assert_eq!(parts[1].rejected, 9);
    // Live still has all of its 18.
    for _ in 0..25 {
        held.push(svc.ready().await.unwrap().call(req(Some("live"))));
    }
    let parts = handle.partitions();
    assert_eq!(
        (parts[0].guaranteed, parts[0].in_flight, parts[0].rejected),
        (18, 18, 7)
    );
    assert_eq!(handle.in_flight(), 20);
    assert_eq!(handle.in_flight(), handle.limit());
    // Tenants outside every partition use only the pool (empty here) and are refused.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req(Some("other")))
        .await
        .unwrap_err();
    assert!(err.is::<Overloaded>());
    // No key: refused with the extractor's error.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req(None))
        .await
        .unwrap_err();
    assert!(err.is::<KeyError>());
    let reports = handle.tenant(&HeaderValue::from_static("reports")).unwrap();
    assert_eq!(reports.partition.as_deref(), Some("batch"));
    drop(held);
    assert_eq!(handle.in_flight(), 0);
    assert!(handle.partitions().iter().all(|p| p.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn an_idle_partition_lends_nothing_but_the_pool_is_shared() {
    // Limit 10: live 5, batch 2, pool 3.
    let layer = AdaptiveLayer::builder()
        .algorithm(Aimd::new().initial_limit(10).min_limit(10))
        .partition(Partition::new("live", 0.5))
        .partition(Partition::new("batch", 0.2))
        .default_partition("live")
        .keyed(HeaderKey::from_static("x-class"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(slow(Duration::from_secs(10)));
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(svc.ready().await.unwrap().call(req(Some("someone"))));
    }
    // The default partition's 5 and the pool's 3; batch's 2 stay reserved.
    assert_eq!(handle.in_flight(), 8);
    assert_eq!(handle.partitions()[0].in_flight, 8);
    for _ in 0..5 {
        held.push(svc.ready().await.unwrap().call(req(Some("batch"))));
    }
    assert_eq!(handle.partitions()[1].in_flight, 2);
    assert_eq!(handle.in_flight(), 10);
}

#[tokio::test(start_paused = true)]
async fn the_tenant_map_is_bounded() {
    let layer = AdaptiveLayer::builder()
        .algorithm(Gradient2::new().initial_limit(100).max_limit(100))
        .max_keys(16)
        .partition(Partition::new("live", 0.5))
        .keyed(HeaderKey::from_static("x-class"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(slow(Duration::from_millis(1)));
    for i in 0..500 {
        let _ = svc.clone().oneshot(req(Some(&format!("t{i}")))).await;
    }
    assert_eq!(handle.tenant_keys(), 16);
    assert!(handle.overflowed() >= 484);
    // A partition member arriving while the map is full keeps its partition.
    let mut s = svc.clone();
    let held = s.ready().await.unwrap().call(req(Some("live")));
    assert_eq!(handle.partitions()[0].in_flight, 1);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn limit_changes_are_audited_at_most_once_per_interval() {
    let (audit, sink) = Audit::memory(1024);
    let layer = AdaptiveLayer::builder()
        .name("api")
        .algorithm(
            Gradient2::new()
                .initial_limit(5)
                .min_limit(1)
                .max_limit(1000),
        )
        .window(Duration::from_millis(100), Duration::from_millis(100), 1)
        .audit(&audit)
        .audit_interval(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(slow(Duration::from_millis(10)));
    // 20 s of saturating load: the limit grows every 100 ms window.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..2000 {
                if svc.clone().oneshot(req(None)).await.is_err() {
                    sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    sleep(Duration::from_secs(20)).await;
    let windows = handle.windows();
    for t in tasks {
        t.abort();
    }
    audit.flush().await.unwrap();
    let changes: Vec<_> = sink
        .records()
        .into_iter()
        .filter(|r| r.kind == "adaptive.limit_changed")
        .collect();
    assert!(windows >= 100, "{windows} windows");
    // At most one record per 5 s over 20 s (plus the first), though the limit changed far more often.
    assert!(
        (2..=5).contains(&changes.len()),
        "{} records",
        changes.len()
    );
    let total: u64 = changes
        .iter()
        .map(|r| r.details["updates"].as_u64().unwrap())
        .sum();
    assert!(total > changes.len() as u64 * 5);
    assert_eq!(changes[0].details["adaptive"], "api");
    assert_eq!(changes[0].details["old"], 5);
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    fn e<K, C>(
        b: Result<AdaptiveLayer<K, C>, palisade_adaptive::BuildError>,
    ) -> palisade_adaptive::BuildError {
        b.expect_err("refused")
    }
    let cases: Vec<(palisade_adaptive::BuildError, &str)> = vec![
        (
            e(AdaptiveLayer::builder()
                .algorithm(Gradient2::new().min_limit(0))
                .build()),
            "min_limit",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Aimd::new().max_limit(MAX_LIMIT + 1))
                .build()),
            "max_limit",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Vegas::new().initial_limit(5000))
                .build()),
            "initial_limit",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Gradient2::new().smoothing(0.0))
                .build()),
            "smoothing",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Gradient2::new().rtt_tolerance(0.5))
                .build()),
            "rtt_tolerance",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Aimd::new().backoff_ratio(1.0))
                .build()),
            "backoff_ratio",
        ),
        (
            e(AdaptiveLayer::builder()
                .algorithm(Vegas::new().alpha(6.0).beta(3.0))
                .build()),
            "beta",
        ),
        (
            e(AdaptiveLayer::builder()
                .window(Duration::from_secs(2), Duration::from_secs(1), 10)
                .build()),
            "window",
        ),
        (
            e(AdaptiveLayer::builder()
                .partition(Partition::new("live", 0.5))
                .build()),
            "partition",
        ),
        (
            e(AdaptiveLayer::builder()
                .partition(Partition::new("a", 0.7))
                .partition(Partition::new("b", 0.4))
                .keyed(HeaderKey::from_static("x"))
                .build()),
            "partition",
        ),
        (
            e(AdaptiveLayer::builder()
                .partition(Partition::new("a", 0.5))
                .default_partition("b")
                .keyed(HeaderKey::from_static("x"))
                .build()),
            "default_partition",
        ),
        (
            e(AdaptiveLayer::builder()
                .audit_interval(Duration::ZERO)
                .build()),
            "audit_interval",
        ),
    ];
    for (err, setting) in cases {
        assert_eq!(err.setting(), setting, "{err}");
        assert_eq!(err.layer(), "adaptive concurrency");
    }
    assert_eq!(
        AdaptiveLayer::builder()
            .build()
            .unwrap()
            .handle()
            .algorithm(),
        "gradient2"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// Start a call of tenant class `0..3` (live, batch, other).
    Start(u8),
    /// Finish the oldest running call: success, or a timeout.
    Finish(bool),
    /// Drop the newest running call.
    Cancel,
    /// Let time pass.
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(Op::Start),
        3 => any::<bool>().prop_map(Op::Finish),
        1 => Just(Op::Cancel),
        2 => (1u16..500).prop_map(Op::Advance),
    ]
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    (0u8..3, 1usize..12).prop_map(|(k, initial)| match k {
        0 => Gradient2::new()
            .min_limit(1)
            .initial_limit(initial)
            .max_limit(16)
            .probe_windows(7)
            .into(),
        1 => Aimd::new()
            .min_limit(1)
            .initial_limit(initial)
            .max_limit(16)
            .timeout(Duration::from_millis(300))
            .into(),
        _ => Vegas::new()
            .initial_limit(initial)
            .max_limit(16)
            .probe_multiplier(1)
            .into(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the algorithm, the partitions and the order of events, no request is admitted while
    /// in-flight is at the current limit: right after every admission, in-flight ≤ limit.
    #[test]
    fn in_flight_never_exceeds_the_limit(
        algorithm in algorithm(),
        partitioned in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut b = AdaptiveLayer::builder()
                .algorithm(algorithm)
                .window(Duration::ZERO, Duration::ZERO, 1)
                .min_rtt_threshold(Duration::ZERO)
                .seed(9);
            if partitioned {
                b = b.partition(Partition::new("live", 0.6)).partition(Partition::new("batch", 0.2));
            }
            let layer = b.keyed(HeaderKey::from_static("x-class")).build().unwrap();
            let handle = layer.handle();
            // The backend answers when the test says so.
            let gate = Arc::new(std::sync::Mutex::new(Vec::<oneshot::Receiver<bool>>::new()));
            let g = gate.clone();
            let mut svc = layer.layer(service_fn(move |_req: Request<()>| {
                let rx = g.lock().unwrap().pop().expect("a pending answer");
                async move {
                    match rx.await {
                        Ok(true) => Ok(()),
                        _ => Err::<(), BoxError>(palisade_core::error::Elapsed::new(Duration::from_millis(1)).into()),
                    }
                }
            }));
            let mut running = std::collections::VecDeque::new();
            for op in ops {
                match op {
                    Op::Start(class) => {
                        let (tx, rx) = oneshot::channel();
                        gate.lock().unwrap().push(rx);
                        let limit = handle.limit();
                        let before = handle.in_flight();
                        let name = ["live", "batch", "other"][class as usize];
                        let mut fut = Box::pin(svc.ready().await.unwrap().call(req(Some(name))));
                        let after = handle.in_flight();
                        if after > before {
                            prop_assert!(after <= limit, "admitted to {after} at limit {limit}");
                            let task = tokio::spawn(async move { let _ = (&mut fut).await; });
                            running.push_back((tx, task));
                        } else {
                            gate.lock().unwrap().clear();
                            let err = fut.await.unwrap_err();
                            prop_assert!(err.is::<Overloaded>());
                            prop_assert!(before >= limit || partitioned, "refused at {before} of {limit}");
                        }
                    }
                    Op::Finish(ok) => {
                        if let Some((tx, task)) = running.pop_front() {
                            let _ = tx.send(ok);
                            task.await.unwrap();
                        }
                    }
                    Op::Cancel => {
                        if let Some((_tx, task)) = running.pop_back() {
                            task.abort();
                            let _ = task.await;
                        }
                    }
                    Op::Advance(ms) => sleep(Duration::from_millis(u64::from(ms))).await,
                }
                prop_assert!(handle.limit() >= 1 && handle.limit() <= 16);
            }
            for (tx, task) in running.drain(..) {
                let _ = tx.send(true);
                task.await.unwrap();
            }
            prop_assert_eq!(handle.in_flight(), 0);
            Ok(())
        })?;
    }
}
