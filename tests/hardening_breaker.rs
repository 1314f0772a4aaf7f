//! The breaker inside the presets' timeouts: a hung handler (server) or a hung backend (client) cut
//! off by the stack's own timeout is a failure the breaker counts, so it trips. Paused time, no sockets.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade::breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use palisade::error::{BoxError, Elapsed};
use palisade::stack::{ClientStack, ServerStack};
use palisade::timeout::TimeoutLayer;
use tower::{service_fn, Layer, ServiceExt};

async fn handler(req: Request<String>) -> Result<Response<String>, BoxError> {
    if req.uri().path() == "/hang" {
        std::future::pending::<()>().await;
    }
    Ok(Response::new("ok".into()))
}

fn get(path: &str) -> Request<String> {
    Request::builder().uri(path).body(String::new()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn server_stack_a_hung_handler_trips_the_breaker() {
    let stack = ServerStack::builder()
        .timeout(TimeoutLayer::builder().timeout(Duration::from_secs(1)))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("api")
                .consecutive_failures(2)
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let breaker = stack.handles().breaker().unwrap().clone();
    let svc = stack.layer(service_fn(handler));
    for _ in 0..2 {
        let start = tokio::time::Instant::now();
        let res = svc.clone().oneshot(get("/hang")).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "two hung calls trip it"
    );
    // Refused at once, without waiting for the handler.
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn client_stack_total_timeout_around_the_breaker_counts_a_hung_backend() {
    let stack = ClientStack::builder()
        .total_timeout(TimeoutLayer::builder().timeout(Duration::from_secs(1)))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("backend")
                .consecutive_failures(1)
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let breaker = stack.handles().breaker().unwrap().clone();
    let svc = stack.layer(service_fn(handler));
    let err = svc.clone().oneshot(get("/hang")).await.unwrap_err();
    let err: BoxError = err;
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    assert_eq!(breaker.state(), CircuitState::Open);
    let err: BoxError = svc.oneshot(get("/")).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
}
