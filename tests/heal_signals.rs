//! The layer signals of real stacks as control-plane gauges (`Handles::signals`): each gauge follows
//! its layer's handle as requests go through a `ServerStack` and a `ClientStack`. Paused time, no
//! sockets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade::audit::Audit;
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::bulkhead::BulkheadLayer;
use palisade::degrade::{GateLayer, Level};
use palisade::error::BoxError;
use palisade::heal::signals::gauge::{Gauge, GaugeError, Gauges};
use palisade::health::Health;
use palisade::key::HeaderKey;
use palisade::ratelimit::{Rate, RateLimitLayer};
use palisade::retry::{Budget, RetryBody, RetryLayer};
use palisade::stack::{ClientStack, ServerStack};
use tokio::sync::Semaphore;
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, ServiceExt};

const TENANT: &str = "x-tenant-id";

fn request(path: &str, tenant: &str) -> Request<String> {
    Request::builder()
        .uri(path)
        .header(TENANT, tenant)
        .body(String::new())
        .unwrap()
}

/// Every gauge that has a sample now, by name.
fn read(gauges: &Gauges, now: Instant) -> BTreeMap<String, f64> {
    gauges
        .read_all(now)
        .map(|(name, sample)| {
            assert_eq!(sample.at, now);
            (name.to_owned(), sample.value)
        })
        .collect()
}

/// Yields until `done()` holds (other tasks make progress; paused time does not move).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn server_stack_signals_follow_breaker_bulkhead_rate_limit_and_gate() {
    let health = Health::new();
    let (audit, _log) = Audit::memory(1024);
    let stack = ServerStack::builder()
        .health(&health)
        .audit(&audit)
        .gate(GateLayer::builder().name("api"))
        .rate_limit(
            RateLimitLayer::builder(HeaderKey::from_static(TENANT))
                .default_rate(Rate::per_second(1).burst(2)),
        )
        .bulkhead(BulkheadLayer::builder().name("api").max_concurrent(1))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("app")
                .no_failure_rate()
                .consecutive_failures(2)
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let handles = stack.handles().clone();
    let hold = Arc::new(Semaphore::new(0));
    let held_by_handler = Arc::clone(&hold);
    let svc = stack.layer(service_fn(move |req: Request<String>| {
        let hold = Arc::clone(&held_by_handler);
        async move {
            let status = match req.uri().path() {
                "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
                "/hold" => {
                    let _permit = hold.acquire().await.unwrap();
                    StatusCode::OK
                }
                _ => StatusCode::OK,
            };
            let mut res = Response::new(String::new());
            *res.status_mut() = status;
            Ok::<_, BoxError>(res)
        }
    }));

    let gauges = handles.signals("server").unwrap();
    let names: Vec<_> = gauges.names().collect();
    assert_eq!(
        names,
        [
            "breaker.server.rejected",
            "breaker.server.rejected_per_second",
            "breaker.server.state",
            "breaker.server.trips",
            "bulkhead.server.in_flight",
            "bulkhead.server.queued",
            "bulkhead.server.rejected",
            "bulkhead.server.rejected_per_second",
            "bulkhead.server.saturated",
            "bulkhead.server.utilization",
            "gate.server.level",
            "gate.server.load",
            "gate.server.shed_per_second",
            "ratelimit.server.rejected",
            "ratelimit.server.rejected_per_second",
        ],
        "no retry in a server stack, no load gauge without adaptive rate limiting"
    );

    // The first tick: every level at rest; the rates only take their baseline.
    let t0 = Instant::now();
    let first = read(&gauges, t0);
    assert_eq!(first.len(), 11, "{first:?}");
    assert!(first.values().all(|v| *v == 0.0), "{first:?}");
    assert!(!first.contains_key("ratelimit.server.rejected_per_second"));

    // Rate limit: a burst of 2, the third request of the tenant is refused.
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let res = svc.clone().oneshot(request("/", "flood")).await.unwrap();
        assert_eq!(res.status(), expected);
    }
    let now = read(&gauges, t0);
    assert_eq!(now["ratelimit.server.rejected"], 1.0);

    // Bulkhead: one request holds the only slot; the next is refused.
    let held = tokio::spawn(svc.clone().oneshot(request("/hold", "holder")));
    let bulkhead = handles.bulkhead().unwrap().clone();
    until(|| bulkhead.in_flight() == 1).await;
    let now = read(&gauges, t0);
    assert_eq!(now["bulkhead.server.in_flight"], 1.0);
    assert_eq!(now["bulkhead.server.utilization"], 1.0);
    let res = svc.clone().oneshot(request("/", "other")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let now = read(&gauges, t0);
    assert_eq!(now["bulkhead.server.rejected"], 1.0);
    assert_eq!(now["bulkhead.server.saturated"], 1.0);
    hold.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    let now = read(&gauges, t0);
    assert_eq!(now["bulkhead.server.in_flight"], 0.0);
    assert_eq!(now["bulkhead.server.saturated"], 0.0, "drained");

    // Breaker: two failures open it; the next call is refused.
    for tenant in ["f1", "f2"] {
        let res = svc.clone().oneshot(request("/fail", tenant)).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let breaker = handles.breaker().unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    let res = svc.clone().oneshot(request("/", "f3")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let now = read(&gauges, t0);
    assert_eq!(now["breaker.server.state"], 1.0);
    assert_eq!(now["breaker.server.trips"], 1.0);
    assert_eq!(now["breaker.server.rejected"], 1.0);

    // Gate: at `critical`, normal traffic is shed.
    let gate = handles.gate().unwrap();
    gate.set_level(Level::Critical, "test");
    for tenant in ["g1", "g2"] {
        let res = svc.clone().oneshot(request("/", tenant)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(gate.shed_total(), 2);
    let now = read(&gauges, t0);
    assert_eq!(now["gate.server.level"], 2.0);
    assert_eq!(now["gate.server.load"], gate.load_signal().get());
    assert!(now["gate.server.load"] > 0.0);

    // Ten seconds after the baseline: each counter's increase over 10 s, with its volume.
    advance(Duration::from_secs(10)).await;
    let t1 = Instant::now();
    let rates: BTreeMap<_, _> = gauges
        .read_all(t1)
        .filter(|(name, _)| name.ends_with("_per_second"))
        .map(|(name, sample)| (name.to_owned(), (sample.value, sample.volume)))
        .collect();
    assert_eq!(
        rates["ratelimit.server.rejected_per_second"],
        (0.1, Some(1))
    );
    assert_eq!(rates["bulkhead.server.rejected_per_second"], (0.1, Some(1)));
    assert_eq!(rates["breaker.server.rejected_per_second"], (0.1, Some(1)));
    assert_eq!(rates["gate.server.shed_per_second"], (0.2, Some(2)));

    // Levels carry no volume; the gauges only read: reading changed no layer.
    let level = gauges.read("gate.server.level", t1).unwrap();
    assert_eq!(level.volume, None);
    assert_eq!(breaker.counts().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn client_stack_signals_show_retry_budget_exhaustion_and_a_half_open_breaker() {
    let stack = ClientStack::builder()
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                // No retries at all: every retryable failure finds the budget spent.
                .budget(Budget::new(0.0, 0, Duration::from_secs(1))),
        )
        .breaker(
            CircuitBreakerLayer::builder()
                .name("backend")
                .no_failure_rate()
                .consecutive_failures(2)
                .open_wait(Duration::from_secs(1), Duration::from_secs(1))
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let handles = stack.handles().clone();
    let hold = Arc::new(Semaphore::new(0));
    let held_by_handler = Arc::clone(&hold);
    let svc = stack.layer(service_fn(move |req: Request<RetryBody<String>>| {
        let hold = Arc::clone(&held_by_handler);
        async move {
            let mut res = Response::new(String::new());
            if req.uri().path() == "/hold" {
                let _permit = hold.acquire().await.unwrap();
            } else {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, BoxError>(res)
        }
    }));

    let gauges = handles.signals("client").unwrap();
    let names: Vec<_> = gauges.names().filter(|n| n.starts_with("retry.")).collect();
    assert_eq!(
        names,
        [
            "retry.client.budget_exhausted",
            "retry.client.budget_refused",
            "retry.client.budget_refused_per_second",
            "retry.client.retries_per_second",
        ]
    );
    let t0 = Instant::now();
    let first = read(&gauges, t0);
    assert_eq!(first["retry.client.budget_exhausted"], 0.0);
    assert_eq!(first["breaker.client.state"], 0.0);

    // Two failing GETs: each would be retried, the budget refuses; they open the breaker.
    for _ in 0..2 {
        let res = svc.clone().oneshot(request("/", "t")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let retry = handles.retry().unwrap();
    assert_eq!((retry.budget_refused(), retry.retries()), (2, 0));
    let now = read(&gauges, t0);
    assert_eq!(now["retry.client.budget_exhausted"], 1.0);
    assert_eq!(now["retry.client.budget_refused"], 2.0);
    assert_eq!(now["breaker.client.state"], 1.0);

    // After the open wait, one probe is let through: half-open while it is in flight.
    advance(Duration::from_secs(1)).await;
    let probe = tokio::spawn(svc.clone().oneshot(request("/hold", "t")));
    let breaker = handles.breaker().unwrap().clone();
    until(|| breaker.state() == CircuitState::HalfOpen).await;
    let t1 = Instant::now();
    let now = read(&gauges, t1);
    assert_eq!(now["breaker.client.state"], 0.5);
    let refused = gauges
        .read("retry.client.budget_refused_per_second", t1)
        .unwrap();
    assert_eq!((refused.value, refused.volume), (2.0, Some(2)), "2 in 1 s");
    let retries = gauges.read("retry.client.retries_per_second", t1).unwrap();
    assert_eq!(retries.value, 0.0);

    hold.add_permits(1);
    assert_eq!(probe.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(read(&gauges, t1)["breaker.client.state"], 0.0, "closed");
}

#[tokio::test(start_paused = true)]
async fn stack_signals_join_user_gauges_in_one_bounded_registry() {
    let stack = ServerStack::builder()
        .breaker(CircuitBreakerLayer::builder().name("app"))
        .build()
        .unwrap();
    let handles = stack.handles();

    let mut gauges = Gauges::with_limit(6);
    gauges.add(Gauge::new("app.queue_depth", || 3.0)).unwrap();
    handles.add_signals("server", &mut gauges).unwrap();
    assert_eq!(gauges.len(), 5);
    assert_eq!(
        gauges
            .read("app.queue_depth", Instant::now())
            .unwrap()
            .value,
        3.0
    );

    // The same stack name twice is refused, all or nothing.
    assert!(matches!(
        handles.add_signals("server", &mut gauges),
        Err(GaugeError::Duplicate { .. })
    ));
    // Another stack does not fit in the limit: refused, nothing added.
    assert_eq!(
        handles.add_signals("second", &mut gauges),
        Err(GaugeError::Full { limit: 6 })
    );
    assert_eq!(gauges.len(), 5);

    for bad in ["", "has space", &"x".repeat(200)] {
        assert!(
            matches!(handles.signals(bad), Err(GaugeError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    // A stack with no layers has no signals.
    let bare = ServerStack::builder().build().unwrap();
    assert!(bare.handles().signals("bare").unwrap().is_empty());
}
