//! Chaos drives another layer: a circuit breaker opens under injected 5xx responses and closes again
//! once the fault is removed. Stack: breaker (outside) → chaos → a healthy backend. Paused time.
#![cfg(all(feature = "chaos", feature = "breaker"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade::audit::Audit;
use palisade::breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use palisade::chaos::{ChaosLayer, Fault};
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service, ServiceExt};

/// What a call through the stack gave: a status, or the breaker's refusal.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Status(u16),
    CircuitOpen,
}

async fn call<S, B>(svc: &S) -> Got
where
    S: Service<Request<()>, Response = Response<B>, Error = BoxError> + Clone,
{
    match svc
        .clone()
        .oneshot(Request::get("/orders").body(()).unwrap())
        .await
    {
        Ok(res) => Got::Status(res.status().as_u16()),
        Err(e) if e.downcast_ref::<CircuitOpen>().is_some() => Got::CircuitOpen,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_under_injected_5xx_and_closes_after_removal() {
    let (audit, ring) = Audit::memory(64);
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = {
        let calls = calls.clone();
        service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(String::from("ok"))) }
        })
    };
    let chaos = ChaosLayer::builder()
        .name("orders-db")
        .seed(1)
        .audit(&audit)
        .build();
    let faults = chaos.handle();
    let breaker = CircuitBreakerLayer::builder()
        .name("orders-db")
        .no_failure_rate()
        .consecutive_failures(3)
        .open_wait(Duration::from_secs(5), Duration::from_secs(5))
        .jitter(0.0)
        .audit(&audit)
        .build()
        .expect("valid breaker config");
    let circuit = breaker.handle();
    let svc = breaker.layer(chaos.layer(backend));

    // Healthy.
    assert_eq!(call(&svc).await, Got::Status(200));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The dependency starts failing: three 503s in a row open the circuit.
    let outage = faults.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    for _ in 0..3 {
        assert_eq!(call(&svc).await, Got::Status(503));
    }
    assert_eq!(circuit.state(), CircuitState::Open);
    assert_eq!(call(&svc).await, Got::CircuitOpen);

    // The wait ends while the fault is still there: the probe fails and the circuit opens again.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(call(&svc).await, Got::Status(503));
    assert_eq!(circuit.state(), CircuitState::Open);
    assert_eq!(call(&svc).await, Got::CircuitOpen);

    // The fault is removed; the breaker still refuses until its wait ends...
    assert!(faults.remove(outage));
    assert_eq!(call(&svc).await, Got::CircuitOpen);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "injected failures never reached the backend"
    );

    // ...then the probe succeeds and the circuit closes.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(call(&svc).await, Got::Status(200));
    assert_eq!(circuit.state(), CircuitState::Closed);
    assert_eq!(call(&svc).await, Got::Status(200));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // One audit log tells the story, in order.
    audit.flush().await.unwrap();
    let kinds: Vec<String> = ring.records().into_iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            "chaos.injected",
            "breaker.opened",
            "breaker.half_open",
            "breaker.opened",
            "chaos.removed",
            "breaker.half_open",
            "breaker.closed",
        ]
    );
}
