//! The client-side trio around a real tonic `Channel` over loopback HTTP/2: total timeout → retry →
//! breaker → per-try timeout → channel, with `StatusLayer` outermost so the client sees `tonic::Status`.
//!
//! Real time (the network does not run on paused time); every wait is bounded and short.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{call, channel, Echo};
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::rescue::grpc::StatusLayer;
use palisade::retry::{Backoff, RetryBody, RetryLayer};
use palisade::timeout::TimeoutLayer;
use tonic::body::Body;
use tonic::transport::Server;
use tonic::Code;
use tower::ServiceBuilder;

async fn serve(echo: Echo) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn flaky_calls_are_retried_to_success_and_a_down_backend_opens_the_breaker() {
    let echo = Echo::default();
    let addr = serve(echo.clone()).await;
    let breaker = CircuitBreakerLayer::builder()
        .name("echo")
        .no_failure_rate()
        .consecutive_failures(3)
        .open_wait(Duration::from_secs(30), Duration::from_secs(60))
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(ms(5), ms(20)))
        // Every gRPC call is a POST: say which are safe to repeat (here, all of this test's methods).
        .retry_if(|_parts| true)
        .build()
        .unwrap();
    let retry_handle = retry.handle();
    let client = ServiceBuilder::new()
        .layer(StatusLayer::new())
        .layer(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(5))
                .propagate_grpc_timeout(true)
                .build()
                .unwrap(),
        )
        .layer(retry)
        .map_request(|req: http::Request<RetryBody<Body>>| req.map(Body::new))
        .layer(breaker)
        .layer(TimeoutLayer::new(ms(500)).unwrap())
        .service(channel(addr).await);

    // Flaky: UNAVAILABLE twice, then an answer. The caller only sees the answer.
    assert_eq!(&call(client.clone(), "Flaky").await.unwrap()[..], b"ping");
    assert_eq!(echo.calls(), 3);
    assert_eq!(retry_handle.retries(), 2);
    assert_eq!(
        breaker_handle.state(),
        CircuitState::Closed,
        "the success reset the streak"
    );

    // Down: three attempts fail, the third trips the breaker, the caller gets the backend's status.
    let status = call(client.clone(), "Down").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "backend down");
    assert_eq!(echo.calls(), 6);
    assert_eq!(breaker_handle.state(), CircuitState::Open);

    // Now calls are refused before the network, and retry does not hammer an open circuit.
    let retries = retry_handle.retries();
    let status = call(client.clone(), "Hello").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("circuit open"),
        "{}",
        status.message()
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    assert_eq!(
        echo.calls(),
        6,
        "the open circuit kept the call off the wire"
    );
    assert_eq!(retry_handle.retries(), retries);
}

#[tokio::test]
async fn a_hanging_backend_meets_the_per_try_and_total_timeouts() {
    let echo = Echo::default();
    let addr = serve(echo.clone()).await;
    let per_try = |attempts: u32, total: Duration| {
        let ch = channel(addr);
        async move {
            ServiceBuilder::new()
                .layer(StatusLayer::new())
                .layer(TimeoutLayer::new(total).unwrap())
                .layer(
                    RetryLayer::builder()
                        .max_attempts(attempts)
                        .backoff(Backoff::exponential(ms(5), ms(5)))
                        .retry_if(|_| true)
                        .build()
                        .unwrap(),
                )
                .map_request(|req: http::Request<RetryBody<Body>>| req.map(Body::new))
                .layer(TimeoutLayer::new(ms(150)).unwrap())
                .service(ch.await)
        }
    };

    // Two attempts of 150 ms each, well inside the 5 s total: DEADLINE_EXCEEDED from the per-try timeout.
    let started = tokio::time::Instant::now();
    let status = call(per_try(2, Duration::from_secs(5)).await, "Hang")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "request timed out after 150ms");
    assert_eq!(echo.calls(), 2);
    assert!(started.elapsed() < Duration::from_secs(3));

    // Many attempts, a 400 ms total: the total timeout ends it.
    let started = tokio::time::Instant::now();
    let status = call(per_try(50, ms(400)).await, "Hang").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "request timed out after 400ms");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        echo.calls() <= 2 + 3,
        "at most three 150 ms tries fit in 400 ms"
    );
}
