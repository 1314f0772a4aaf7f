//! The limiter against a simulated backend on paused time: latency rises with concurrency past a
//! knee; a backend that only times out.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_adaptive::{Adaptive, AdaptiveHandle, AdaptiveLayer, Aimd, Gradient2, Vegas};
use palisade_core::error::{BoxError, Elapsed, Overloaded};
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

/// The backend's capacity: `knee` requests at `base` latency; past the knee, requests queue and
/// latency grows in proportion (`base × in_flight / knee`).
#[derive(Debug, Clone, Copy)]
struct Capacity {
    base: Duration,
    knee: usize,
}

#[derive(Clone)]
struct Backend {
    capacity: Arc<Mutex<Capacity>>,
    in_flight: Arc<AtomicUsize>,
    max_seen: Arc<AtomicUsize>,
}

impl Backend {
    fn new(base: Duration, knee: usize) -> Self {
        Backend {
            capacity: Arc::new(Mutex::new(Capacity { base, knee })),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_seen: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn set(&self, base: Duration, knee: usize) {
        *self.capacity.lock().unwrap() = Capacity { base, knee };
    }

    fn service(
        &self,
    ) -> impl Service<(), Response = (), Error = BoxError, Future = impl Send> + Clone + Send {
        let b = self.clone();
        service_fn(move |()| {
            let b = b.clone();
            async move {
                let c = b.in_flight.fetch_add(1, SeqCst) + 1;
                b.max_seen.fetch_max(c, SeqCst);
                let cap = *b.capacity.lock().unwrap();
                let factor = (c as f64 / cap.knee as f64).max(1.0);
                sleep(cap.base.mul_f64(factor)).await;
                b.in_flight.fetch_sub(1, SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    }
}

/// `workers` clients in a closed loop until `until`: each calls, and after a refusal waits `backoff`.
async fn load<S>(svc: S, workers: usize, until: Instant, backoff: Duration)
where
    S: Service<(), Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match svc.clone().oneshot(()).await {
                    Ok(()) => {}
                    Err(e) if e.is::<Overloaded>() => sleep(backoff).await,
                    Err(e) => {
                        assert!(e.is::<Elapsed>(), "unexpected error {e}");
                        sleep(backoff).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The limit once a second while `f` runs.
async fn limits_during(
    handle: &AdaptiveHandle,
    secs: u64,
    f: impl std::future::Future,
) -> Vec<usize> {
    let h = handle.clone();
    let monitor = tokio::spawn(async move {
        let mut v = Vec::new();
        for _ in 0..secs {
            sleep(Duration::from_secs(1)).await;
            v.push(h.limit());
        }
        v
    });
    f.await;
    monitor.await.unwrap()
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len() as f64
}

fn layered<S>(layer: &AdaptiveLayer, svc: S) -> Adaptive<S> {
    layer.layer(svc)
}

#[tokio::test(start_paused = true)]
async fn gradient2_converges_near_the_knee_follows_a_slowdown_and_recovers() {
    let backend = Backend::new(Duration::from_millis(50), 20);
    let layer = AdaptiveLayer::builder()
        .algorithm(
            Gradient2::new()
                .initial_limit(10)
                .min_limit(4)
                .max_limit(400),
        )
        // The probe jitter is seeded so the run is the same every time.
        .seed(42)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layered(&layer, backend.service());
    let backoff = Duration::from_millis(50);

    // Phase 1: knee at 20. From 10, the limit climbs and settles within Gradient2's 1.5x RTT
    // tolerance of the knee, never running away.
    let until = Instant::now() + Duration::from_secs(120);
    let p1 = limits_during(&handle, 119, load(svc.clone(), 80, until, backoff)).await;
    let settled = &p1[90..];
    let m1 = mean(settled);
    assert!(
        (18.0..=40.0).contains(&m1),
        "phase 1 mean limit {m1}: {p1:?}"
    );
    assert!(settled.iter().all(|&l| l <= 45), "{p1:?}");

    // Phase 2: the backend loses capacity (knee 8): the limit comes down near the new knee.
    backend.set(Duration::from_millis(50), 8);
    let until = Instant::now() + Duration::from_secs(120);
    let p2 = limits_during(&handle, 119, load(svc.clone(), 80, until, backoff)).await;
    let m2 = mean(&p2[90..]);
    assert!(m2 < m1 * 0.75, "phase 2 mean {m2} vs phase 1 {m1}: {p2:?}");
    assert!(
        (5.0..=20.0).contains(&m2),
        "phase 2 mean limit {m2}: {p2:?}"
    );

    // Phase 3: it speeds up again (knee 20, base 25 ms): the limit recovers. Known limitation: the long
    // RTT average still remembers the slow phase, so the recovered limit can overshoot the knee (up to
    // ~3x, seen with other probe timings) until a probe re-measures the baseline; the bound says so.
    backend.set(Duration::from_millis(25), 20);
    let until = Instant::now() + Duration::from_secs(120);
    let p3 = limits_during(&handle, 119, load(svc.clone(), 80, until, backoff)).await;
    let m3 = mean(&p3[90..]);
    assert!(m3 > m2 * 1.5, "phase 3 mean {m3} vs phase 2 {m2}: {p3:?}");
    assert!(
        (18.0..=70.0).contains(&m3),
        "phase 3 mean limit {m3}: {p3:?}"
    );
    let peak = backend.max_seen.load(SeqCst);
    eprintln!(
        "gradient2 mean limits (knee 20, 8, 20): {m1:.1}, {m2:.1}, {m3:.1}; peak in flight {peak}"
    );
    // Throughout, the backend never saw a runaway: the peak stays within the settled limits' band plus
    // the transient of one window (the exact in-flight <= limit invariant is the proptest's).
    assert!(peak <= 80, "peak in flight {peak}");
    assert!(handle.rejected() > 0 && handle.samples() > 1000);
}

#[tokio::test(start_paused = true)]
async fn vegas_and_aimd_also_settle_below_the_runaway() {
    for (name, layer) in [
        (
            "vegas",
            AdaptiveLayer::builder()
                .algorithm(Vegas::new().initial_limit(10).max_limit(400))
                .seed(7)
                .build()
                .unwrap(),
        ),
        (
            "aimd",
            AdaptiveLayer::builder()
                .algorithm(
                    Aimd::new()
                        .initial_limit(10)
                        .min_limit(4)
                        .max_limit(400)
                        .timeout(Duration::from_millis(100)),
                )
                .build()
                .unwrap(),
        ),
    ] {
        let backend = Backend::new(Duration::from_millis(50), 20);
        let handle = layer.handle();
        let svc = layered(&layer, backend.service());
        let until = Instant::now() + Duration::from_secs(150);
        let v = limits_during(
            &handle,
            149,
            load(svc, 80, until, Duration::from_millis(50)),
        )
        .await;
        let m = mean(&v[100..]);
        // AIMD backs off only when the average RTT passes its timeout (100 ms = 2x the base at 40 in
        // flight); Vegas keeps the queue between alpha and beta.
        assert!((12.0..=48.0).contains(&m), "{name}: mean {m}: {v:?}");
    }
}

/// A backend whose every call ends in a timeout (returned through the layer as `Elapsed`).
fn timing_out(
) -> impl Service<(), Response = (), Error = BoxError, Future = impl Send> + Clone + Send {
    service_fn(|()| async {
        sleep(Duration::from_secs(1)).await;
        Err::<(), BoxError>(Elapsed::new(Duration::from_secs(1)).into())
    })
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_only_times_out_drives_every_algorithm_to_its_minimum() {
    for algorithm in [
        palisade_adaptive::Algorithm::from(Gradient2::new().initial_limit(50).min_limit(3)),
        Aimd::new().initial_limit(50).min_limit(3).into(),
        Vegas::new().initial_limit(50).min_limit(3).into(),
    ] {
        let name = algorithm.name();
        let layer = AdaptiveLayer::builder()
            .algorithm(algorithm)
            .seed(1)
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layered(&layer, timing_out());
        let until = Instant::now() + Duration::from_secs(120);
        let v = limits_during(
            &handle,
            119,
            load(svc, 100, until, Duration::from_millis(100)),
        )
        .await;
        // The limit never grows, and ends at the minimum.
        assert!(v.windows(2).all(|w| w[1] <= w[0]), "{name}: {v:?}");
        assert_eq!(handle.limit(), 3, "{name}: {v:?}");
        assert!(handle.drops() > 0 && handle.samples() == 0, "{name}");
    }
}

/// A backend that never answers.
fn hanging() -> impl Service<(), Response = (), Error = BoxError, Future = impl Send> + Clone + Send
{
    service_fn(|()| async {
        std::future::pending::<()>().await;
        Ok::<(), BoxError>(())
    })
}

#[tokio::test(start_paused = true)]
async fn cancellations_from_an_outer_timeout_can_count_as_drops() {
    // The backend hangs; a timeout outside the layer cancels every call after 1 s.
    for (as_drop, expect_min) in [(true, true), (false, false)] {
        let layer = AdaptiveLayer::builder()
            .algorithm(Gradient2::new().initial_limit(30).min_limit(2))
            .cancelled_as_drop(as_drop)
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layered(&layer, hanging());
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..60 {
                    let r =
                        tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(())).await;
                    if let Ok(Err(_)) = r {
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(handle.in_flight(), 0);
        if expect_min {
            assert_eq!(handle.limit(), 2);
            assert!(handle.drops() > 0);
        } else {
            // Ignored: nothing measured, the limit stays where it was.
            assert_eq!(handle.limit(), 30);
            assert_eq!(handle.drops(), 0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gradient2_probing_re_measures_the_baseline_after_a_permanent_slowdown() {
    let mut ends = Vec::new();
    for probe_windows in [20, 0] {
        let backend = Backend::new(Duration::from_millis(20), 20);
        let layer = AdaptiveLayer::builder()
            .algorithm(
                Gradient2::new()
                    .initial_limit(20)
                    .min_limit(2)
                    .max_limit(400)
                    .probe_windows(probe_windows),
            )
            .seed(5)
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layered(&layer, backend.service());
        let until = Instant::now() + Duration::from_secs(60);
        load(svc.clone(), 80, until, Duration::from_millis(50)).await;
        // The backend becomes 5x slower for good, at the same capacity.
        backend.set(Duration::from_millis(100), 20);
        let until = Instant::now() + Duration::from_secs(150);
        let v = limits_during(
            &handle,
            149,
            load(svc, 80, until, Duration::from_millis(50)),
        )
        .await;
        ends.push((mean(&v[120..]), v));
    }
    let (probed, ref pv) = ends[0];
    let (pinned, ref nv) = ends[1];
    // Without probing the old, fast baseline pins the limit where the gradient floor (0.5) balances
    // the queue allowance (4): 8, well under the knee; with it, the limit comes back near the knee.
    assert!(pinned <= 9.0, "no probe: {pinned} {nv:?}");
    assert!(probed >= 15.0, "probe: {probed} {pv:?}");
}
